//! The engine: one thread that owns the pins, the index and the probes'
//! maps, and turns hints into decisions.
//!
//! Deletion and release events only say *where to look*; every decision
//! ("pin this", "only our pin is left: capture", "nobody held it") is taken
//! against a fresh `Snapshot` of the kernel's state. Events that arrive
//! together are handled in one batch: one snapshot, one index transaction.
//! API requests are answered at the end of the batch they arrived in, after
//! its writes are committed.
//!
//! Nothing a user can cause stops the loop: an error while handling one
//! message is logged and counted, and the loop goes on with the next. The
//! engine never touches a file's filesystem itself (that may block); file
//! workers do (`lanes`, `jobs`).
//!
//! Here: the loop, and the parts the engine coordinates. `resume` picks up
//! after a restart, `decide` holds the decisions, `table` the pins,
//! `kernel` the probes (with `watch`, their kernel-side filters), `limits`
//! who may have more, `keep` the store's bounds, `figures` what `status`
//! reports, `answer` the API, `follow` who hears of each change.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

mod anchoring;
mod answer;
mod batches;
mod decide;
mod figures;
mod follow;
mod keep;
mod kernel;
mod limits;
mod protecting;
mod resume;
mod stopping;
mod table;
mod watch;

use super::{
    exits::{ExitStats, Exited, Watch},
    jobs::Done,
    lanes::Lanes,
    systemd::Watchdog,
};
use crate::{
    access::Caller,
    anchors::Anchors,
    api::{
        proto::Request,
        server::{Reply, ServerStats},
    },
    budget::Budget,
    cgroups::Resolver,
    events::sink::EventLog,
    index::Index,
    ingest::{Deletion, Event},
    notify::Group,
    policy::Policy,
    probe::Probes,
    store::{Store, usage::Usage},
};
use anchoring::Anchoring;
use figures::Figures;
use follow::Feed;
use kernel::Kernel;
use limits::{Admission, RateLimiter};
use table::PinTable;

pub enum Msg {
    Event(Event),
    HolderExited(u32),
    Done(Done),
    Api(Request, Caller, oneshot::Sender<Reply>),
    /// A new policy, validated, from SIGHUP.
    Reload(Box<Policy>),
    /// A protected file lost its last name, as a sweep found.
    Swept(crate::protect::Gone),
    Shutdown,
}

impl From<Event> for Msg {
    fn from(event: Event) -> Self {
        Msg::Event(event)
    }
}

impl From<Exited> for Msg {
    fn from(Exited(pid): Exited) -> Self {
        Msg::HolderExited(pid)
    }
}

impl From<Done> for Msg {
    fn from(done: Done) -> Self {
        Msg::Done(done)
    }
}

pub struct Config {
    pub state_dir: PathBuf,
    /// What to keep and how much (reloaded on SIGHUP).
    pub policy: Policy,
    /// How often to reconcile with the kernel even without events.
    pub rescan_every: Duration,
}

/// What the engine is given to work with.
pub struct Parts {
    pub probes: Probes,
    pub index: Index,
    pub store: Arc<Store>,
    pub budget: Arc<Budget>,
    /// Where file workers and the exit watcher report back.
    pub tx: Sender<Msg>,
    pub exits: UnboundedSender<Watch>,
    pub exit_stats: Arc<ExitStats>,
    pub pidfd_budget: usize,
    pub server_stats: Arc<ServerStats>,
    /// Shared with the reader, which pins through them.
    pub anchors: Arc<Anchors>,
    /// The fs tier's fanotify group, which anchoring marks filesystems for.
    pub group: Option<Arc<Group>>,
    /// Where committed changes are written for log shippers.
    pub events: EventLog,
}

/// A deletion waiting for the next snapshot to say whether it is held.
struct Pending {
    deletion: Deletion,
    deleted_at: std::time::SystemTime,
    /// The filesystem hook's view when the name was removed; None if unknown.
    held_hint: Option<bool>,
}

/// Messages handled per batch before the engine reconciles and commits.
const BATCH: usize = 4096;
/// API requests answered per batch: events come first, and no caller can
/// keep the engine from them for long.
const REQUESTS_PER_BATCH: usize = 8;
/// How long index writes may wait to share one commit.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How long a re-check may wait so that hints close together share one
/// snapshot. The pin already protects the content meanwhile.
const RECHECK_DELAY: Duration = Duration::from_millis(10);

/// When the engine next has something to do without being asked.
#[derive(Default)]
struct Timers {
    /// When the next snapshot is due, beyond the periodic one.
    recheck_at: Option<Instant>,
    /// When the open index transaction began.
    txn_since: Option<Instant>,
    /// Events counted at the last rescan: none since means idle.
    events_at_rescan: u64,
    /// Once asked to stop: the latest the engine stops (see `stopping`).
    stop_by: Option<Instant>,
}

impl Timers {
    /// Asks for a snapshot within `delay`; requests close together share one.
    fn recheck(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.recheck_at = Some(self.recheck_at.map_or(at, |old| old.min(at)));
    }
}

/// The store's files and what each user is charged for them.
struct Storage {
    files: Arc<Store>,
    usage: Usage,
}

/// Where the engine sends work that touches a filesystem, and where that
/// work reports back.
struct Workers {
    lanes: Lanes,
    tx: Sender<Msg>,
}

/// The engine coordinates; each part owns its own state.
pub struct Engine {
    cfg: Config,
    /// The probes, their watch tables and their counters.
    kernel: Kernel,
    index: Index,
    storage: Storage,
    pins: PinTable,
    /// Deletions waiting for the next snapshot to say whether they are held.
    pending: Vec<Pending>,
    /// Who may have more: the descriptor budget and per-user rates.
    admission: Admission,
    timers: Timers,
    workers: Workers,
    /// What `unrm status` reports.
    figures: Figures,
    /// Where the reader's pins by file handle go through.
    anchoring: Anchoring,
    /// Who hears of committed changes.
    feed: Feed,
    /// Names deleters' cgroups (and so their containers).
    cgroups: Resolver,
    /// Protected trees, and their deletions waiting for a descriptor.
    protection: protecting::Protection,
    /// Captures waiting to be handed over together.
    batches: batches::Batches,
}

impl Engine {
    pub fn new(cfg: Config, parts: Parts) -> Result<Self> {
        let Parts {
            probes,
            index,
            store,
            budget,
            tx,
            exits,
            exit_stats,
            pidfd_budget,
            server_stats,
            anchors,
            group,
            events,
        } = parts;
        let protection =
            protecting::Protection::start(&cfg.state_dir, &cfg.policy, cfg.rescan_every, tx.clone())?;
        Ok(Self {
            batches: batches::Batches::default(),
            protection,
            cfg,
            kernel: Kernel::new(probes, exits)?,
            index,
            storage: Storage { files: store, usage: Usage::default() },
            pins: PinTable::default(),
            pending: Vec::new(),
            admission: Admission { budget, rate: RateLimiter::default() },
            timers: Timers::default(),
            workers: Workers { lanes: Lanes::new(), tx },
            figures: Figures::new(exit_stats, pidfd_budget, server_stats),
            anchoring: Anchoring::new(anchors, group),
            feed: Feed::new(events, crate::events::host_name()),
            cgroups: Resolver::new(),
        })
    }

    /// What `systemctl status` shows: the tier and the counts that say
    /// whether unrm is doing its job.
    fn status_line(&self) -> String {
        let c = &self.figures.counters;
        format!(
            "{} tier; {} held, {} captured, {} missed, {} failed, {} lost events",
            self.kernel.probes.tier().name(),
            self.pins.len(),
            c.captured,
            c.missed,
            c.failed,
            c.lost_events
        )
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        let mut next_rescan = Instant::now() + self.cfg.rescan_every;
        let mut requests = VecDeque::new();
        // Pinged once per turn of this loop: a stuck engine stops the pings.
        let mut watchdog = Watchdog::from_env();
        loop {
            watchdog.ping();
            let deadline =
                if requests.is_empty() { self.next_wakeup(next_rescan, &watchdog) } else { Instant::now() };
            let first = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()).take(BATCH)) {
                match msg {
                    Msg::Api(request, caller, reply) => requests.push_back((request, caller, reply)),
                    Msg::Shutdown => self.asked_to_stop(),
                    other => {
                        self.begin();
                        if let Err(err) = self.handle(other) {
                            self.fault("handling an event", &err);
                        }
                    }
                }
            }
            self.notice_losses();
            let now = Instant::now();
            let rescan = now >= next_rescan;
            let recheck = self.timers.recheck_at.is_some_and(|at| now >= at);
            if rescan || recheck || !self.pending.is_empty() {
                self.timers.recheck_at = None;
                self.begin();
                if let Err(err) = self.reconcile() {
                    self.fault("reconciling with the kernel", &err);
                }
                if rescan {
                    self.periodic();
                    watchdog.status(self.status_line());
                    next_rescan = Instant::now() + self.cfg.rescan_every;
                }
            }
            if self.stopping() {
                self.batches.hurry();
            }
            self.flush_captures();
            if self.kernel.watches.stale {
                self.sync_watches();
            }
            // Writes share a commit for a few milliseconds; a reader sees
            // them all before it gets its answer.
            let stale = self.timers.txn_since.is_some_and(|since| since.elapsed() >= COMMIT_EVERY);
            if stale || !requests.is_empty() || self.stopping() || self.index.health().waiting > 0 {
                self.commit();
            }
            for (request, caller, reply) in requests.drain(..requests.len().min(REQUESTS_PER_BATCH)) {
                self.answer(request, &caller, reply);
            }
            if self.stopping() && self.may_stop() {
                return;
            }
        }
    }

    /// When the loop must next look up from its queue.
    fn next_wakeup(&self, next_rescan: Instant, watchdog: &Watchdog) -> Instant {
        let due = [
            watchdog.due_in().map(|due| Instant::now() + due),
            self.timers.recheck_at,
            self.timers.txn_since.map(|since| since + COMMIT_EVERY),
            self.batches.due,
            self.timers.stop_by,
        ];
        due.into_iter().flatten().fold(next_rescan, Instant::min)
    }

    /// What each rescan period brings besides the reconcile.
    fn periodic(&mut self) {
        if let Err(err) = self.keep_within_bounds() {
            self.fault("enforcing the store's bounds", &err);
        }
        self.workers.lanes.tick();
        self.record_unmatched(self.cfg.rescan_every * 2);
        self.refresh_anchors();
        self.release_memory_if_idle();
    }

    /// After a quiet rescan period, gives the memory a burst used back to
    /// the system: the index's page cache, and what the allocator keeps of
    /// what was freed (a million events leave tens of MiB behind).
    fn release_memory_if_idle(&mut self) {
        let events = self.figures.counters.events;
        if std::mem::replace(&mut self.timers.events_at_rescan, events) != events {
            return;
        }
        // The rescan's own writes (usually none) are committed first.
        self.commit();
        self.index.shrink();
        // SAFETY: malloc_trim(3) only returns free heap pages to the system.
        unsafe { libc::malloc_trim(0) };
    }

    /// An error the engine logs, counts and goes on from.
    fn fault(&mut self, doing: &str, err: &anyhow::Error) {
        self.figures.guards.engine_errors += 1;
        log::error!("{doing}: {err:#}");
    }

    /// Events the probes had to drop: whatever they said, a snapshot finds.
    fn notice_losses(&mut self) {
        if self.kernel.new_losses() {
            self.timers.recheck(Duration::ZERO);
        }
    }

    fn begin(&mut self) {
        if self.timers.txn_since.is_none() {
            self.index.begin();
            self.timers.txn_since = Some(Instant::now());
        }
    }

    fn commit(&mut self) {
        self.timers.txn_since = None;
        self.index.commit();
        self.publish();
    }

    fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Event(Event::Delete(mut deletion)) => {
                self.figures.counters.events += 1;
                deletion.cgroup =
                    self.cgroups.path_of(deletion.cgroup_id, deletion.pid).map(String::into_boxed_str);
                self.on_deletion(deletion)
            }
            Msg::Event(Event::Release(release)) => {
                self.figures.counters.events += 1;
                self.figures.counters.releases += 1;
                log::debug!(
                    "release hint: {} by {} of {:?} at {}",
                    release.reason_name(),
                    release.pid,
                    release.inode,
                    release.ktime_ns
                );
                self.timers.recheck(RECHECK_DELAY);
                Ok(())
            }
            Msg::Event(Event::Lost) => {
                // Counted with the probes' losses, and reconciled the same way.
                self.kernel.notify_lost += 1;
                Ok(())
            }
            Msg::HolderExited(pid) => {
                log::debug!("holder {pid} exited");
                self.timers.recheck(RECHECK_DELAY);
                Ok(())
            }
            Msg::Done(done) => self.on_done(done),
            Msg::Reload(policy) => {
                self.protection.protector.ask(crate::protect::Ask::Configure(protecting::settings(&policy)));
                self.cfg.policy = *policy;
                Ok(())
            }
            Msg::Swept(gone) => {
                self.on_swept(gone);
                Ok(())
            }
            Msg::Api(..) | Msg::Shutdown => unreachable!("handled by run"),
        }
    }
}
