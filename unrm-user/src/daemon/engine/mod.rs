//! The engine: one thread that owns the pins, the index and the probes'
//! maps, and turns hints into decisions.
//!
//! Deletion and release events only say *where to look*; every decision
//! ("pin this", "only our pin is left: capture", "nobody held it") is taken
//! against a fresh `Snapshot` of the kernel's state (principle 2). Events
//! that arrive together are handled in one batch: one snapshot, one index
//! transaction. API requests are answered at the end of the batch they
//! arrived in, after its writes are committed.
//!
//! Here: the loop. `decide` holds the decisions, `watch` the kernel-side
//! filters, `answer` the API.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use tokio::sync::{mpsc::UnboundedSender, oneshot};

mod answer;
mod decide;
mod keep;
mod watch;

use super::{capture, exits::Exited};
use crate::{
    access::Caller,
    api::{
        proto::{Counters, Request},
        server::Reply,
    },
    holders::{Hold, InodeId, Snapshot},
    index::Index,
    ingest::{Deletion, Event},
    pins,
    policy::Policy,
    probe::{ProbeStats, Probes, WatchMaps},
    record::{Status, holders_of},
    store::Store,
};

pub enum Msg {
    Event(Event),
    HolderExited(u32),
    Captured(capture::Done),
    Api(Request, Caller, oneshot::Sender<Reply>),
    /// A new policy, validated, from SIGHUP.
    Reload(Box<Policy>),
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

impl From<capture::Done> for Msg {
    fn from(done: capture::Done) -> Self {
        Msg::Captured(done)
    }
}

pub struct Config {
    pub state_dir: PathBuf,
    /// What to keep and how much (reloaded on SIGHUP).
    pub policy: Policy,
    /// How often to reconcile with the kernel even without events.
    pub rescan_every: Duration,
}

/// unrm's own reference to a deleted inode.
struct Pin {
    file: File,
    record: i64,
    /// Where it was; snapshots leave pinned files' paths out.
    path: PathBuf,
    /// The process that deleted it, when an event said so.
    deleter: Option<u32>,
    /// Some process other than the deleter held it at some point: not a
    /// scratch file.
    others_held: bool,
    holds: Vec<Hold>,
    /// Found by a scan before (or without) its deletion event.
    from_scan: bool,
    capturing: bool,
}

/// A deletion waiting for the next snapshot to say whether it is held.
struct Pending {
    deletion: Deletion,
    deleted_at: SystemTime,
    /// The filesystem hook's view when the name was removed; None if unknown.
    held_hint: Option<bool>,
}

/// Messages handled per batch before the engine reconciles and commits.
const BATCH: usize = 4096;
/// How long index writes may wait to share one commit.
const COMMIT_EVERY: Duration = Duration::from_millis(10);
/// How long the release probes stay attached with nothing to watch, so
/// that pins coming and going do not attach and detach them each time.
const RELEASE_LINGER: Duration = Duration::from_secs(5);
/// How long a re-check may wait so that hints close together share one
/// snapshot. The pin already protects the content meanwhile.
const RECHECK_DELAY: Duration = Duration::from_millis(10);
/// Learning a fast pin's other holders waits for a lull in fast pins of this
/// long, or at most `HOLDERS_MAX_WAIT`. The pin is taken and its known
/// holder watched; a snapshot walks every process's descriptors, and during
/// a burst of deletions it would only slow the pins themselves (a reader's
/// open of /proc/PID/fd/N was seen waiting milliseconds behind one).
const HOLDERS_QUIET: Duration = Duration::from_millis(250);
const HOLDERS_MAX_WAIT: Duration = Duration::from_secs(2);
/// Pin latencies kept for `unrm status`.
const LATENCY_SAMPLES: usize = 8192;

pub struct Engine {
    cfg: Config,
    probes: Probes,
    watch: WatchMaps,
    probe_stats: ProbeStats,
    index: Index,
    store: Arc<Store>,
    pins: HashMap<InodeId, Pin>,
    pending: Vec<Pending>,
    /// When the next snapshot is due, beyond the periodic one.
    recheck_at: Option<Instant>,
    /// First and latest fast pin whose other holders are not known yet.
    holders_wanted: Option<(Instant, Instant)>,
    /// When the open index transaction began.
    txn_since: Option<Instant>,
    /// Pins changed since the kernel-side filters were last updated.
    watches_stale: bool,
    /// Since when no pinned file has had holders (release probes idle).
    release_idle_since: Option<Instant>,
    watched_inodes: HashSet<InodeId>,
    watched_tgids: HashSet<u32>,
    exit_watch: UnboundedSender<u32>,
    captures: Sender<capture::Job>,
    counters: Counters,
    /// Probe-side losses already acted on.
    lost_seen: u64,
    latencies_ns: VecDeque<u64>,
    started: Instant,
}

impl Engine {
    pub fn new(
        cfg: Config,
        mut probes: Probes,
        index: Index,
        store: Arc<Store>,
        exit_watch: UnboundedSender<u32>,
        captures: Sender<capture::Job>,
    ) -> Result<Self> {
        let watch = probes.take_watch_maps()?;
        let probe_stats = probes.take_stats()?;
        Ok(Self {
            cfg,
            probes,
            watch,
            probe_stats,
            index,
            store,
            pins: HashMap::new(),
            pending: Vec::new(),
            recheck_at: None,
            holders_wanted: None,
            txn_since: None,
            watches_stale: false,
            release_idle_since: None,
            watched_inodes: HashSet::new(),
            watched_tgids: HashSet::new(),
            exit_watch,
            captures,
            counters: Counters::default(),
            lost_seen: 0,
            latencies_ns: VecDeque::new(),
            started: Instant::now(),
        })
    }

    /// Picks up where the last run stopped, then pins everything deleted
    /// and still held, whenever it was deleted.
    pub fn start(&mut self) -> Result<()> {
        self.index.begin()?;
        let snapshot = Snapshot::take(&mut self.probes)?;
        self.counters.scans += 1;
        for (id, dev, ino) in self.index.held()? {
            self.resume(id, dev.zip(ino).map(|(dev, ino)| InodeId { dev, ino }), &snapshot)?;
        }
        self.reconcile_with(snapshot)?;
        self.index.commit()
    }

    /// A record that was `held` when the daemon stopped.
    fn resume(&mut self, id: i64, inode: Option<InodeId>, snapshot: &Snapshot) -> Result<()> {
        if self.store.has(id) {
            // The copy was durable but the index had not been told.
            let size = self.store.open_capture(id)?.metadata()?.len();
            self.index.mark_captured(id, size, SystemTime::now())?;
            return self.index.set_checksum(id, &self.store.checksum(id)?);
        }
        let held = inode.and_then(|inode| snapshot.files.get(&inode));
        match held.and_then(|held| pins::take(held).map(|(file, _)| (held, file))) {
            Some((held, file)) if !self.pins.contains_key(&held.inode) => {
                self.index.set_holders(id, &holders_of(&held.holds))?;
                // Who deleted it is no longer known: not judged a scratch file.
                let pin = Pin {
                    file,
                    record: id,
                    path: held.path.clone(),
                    deleter: None,
                    others_held: true,
                    holds: held.holds.clone(),
                    from_scan: false,
                    capturing: false,
                };
                self.pins.insert(held.inode, pin);
                Ok(())
            }
            _ => {
                self.counters.missed += 1;
                self.index.set_status(id, Status::Missed, Some("released while unrm was not running"))
            }
        }
    }

    pub fn run(mut self, rx: Receiver<Msg>) -> Result<()> {
        let mut next_rescan = Instant::now() + self.cfg.rescan_every;
        loop {
            let mut deadline = next_rescan;
            if let Some(at) = self.recheck_at {
                deadline = deadline.min(at);
            }
            if let Some(at) = self.holders_due() {
                deadline = deadline.min(at);
            }
            if let Some(since) = self.txn_since {
                deadline = deadline.min(since + COMMIT_EVERY);
            }
            let first = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut requests = Vec::new();
            let mut shutdown = false;
            for msg in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok()).take(BATCH)) {
                match msg {
                    Msg::Api(request, caller, reply) => requests.push((request, caller, reply)),
                    Msg::Shutdown => shutdown = true,
                    other => {
                        self.begin()?;
                        if let Err(err) = self.handle(other) {
                            log::error!("{err:#}");
                        }
                    }
                }
            }
            let lost = self.lost_events();
            if lost > self.lost_seen {
                // Whatever the lost events said, a snapshot will find.
                log::warn!("{} events lost in the kernel; reconciling", lost - self.lost_seen);
                self.lost_seen = lost;
                self.schedule_recheck(Duration::ZERO);
            }
            let now = Instant::now();
            let rescan = now >= next_rescan;
            let holders = self.holders_due().is_some_and(|at| now >= at);
            if rescan || holders || self.recheck_at.is_some_and(|at| now >= at) || !self.pending.is_empty() {
                self.recheck_at = None;
                self.holders_wanted = None;
                self.begin()?;
                if let Err(err) = self.reconcile() {
                    log::error!("reconciling with the kernel: {err:#}");
                }
                if rescan {
                    if let Err(err) = self.keep_within_bounds() {
                        log::error!("enforcing the store's bounds: {err:#}");
                    }
                    next_rescan = Instant::now() + self.cfg.rescan_every;
                }
            }
            if self.watches_stale {
                self.sync_watches()?;
            }
            // Writes share a commit for a few milliseconds; a reader sees
            // them all before it gets its answer.
            let stale = self.txn_since.is_some_and(|since| since.elapsed() >= COMMIT_EVERY);
            if stale || !requests.is_empty() || shutdown {
                self.commit()?;
            }
            for (request, caller, reply) in requests {
                let answer =
                    self.answer(request, &caller).unwrap_or_else(|err| Reply::error(format!("{err:#}")));
                let _ = reply.send(answer);
            }
            if shutdown {
                log::info!("shutting down; {} pinned files stay held by their processes", self.pins.len());
                return Ok(());
            }
        }
    }

    fn begin(&mut self) -> Result<()> {
        if self.txn_since.is_none() {
            self.index.begin()?;
            self.txn_since = Some(Instant::now());
        }
        Ok(())
    }

    fn commit(&mut self) -> Result<()> {
        if self.txn_since.take().is_some() {
            self.index.commit()?;
        }
        Ok(())
    }

    /// A fast pin's other holders are wanted (see `HOLDERS_QUIET`).
    fn want_holders(&mut self) {
        let now = Instant::now();
        self.holders_wanted = Some(self.holders_wanted.map_or((now, now), |(first, _)| (first, now)));
    }

    fn holders_due(&self) -> Option<Instant> {
        self.holders_wanted.map(|(first, last)| (last + HOLDERS_QUIET).min(first + HOLDERS_MAX_WAIT))
    }

    /// Asks for a snapshot within `delay`; requests close together share one.
    fn schedule_recheck(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.recheck_at = Some(self.recheck_at.map_or(at, |old| old.min(at)));
    }

    fn handle(&mut self, msg: Msg) -> Result<()> {
        match msg {
            Msg::Event(Event::Delete(deletion)) => {
                self.counters.events += 1;
                self.on_deletion(deletion)
            }
            Msg::Event(Event::Release(release)) => {
                self.counters.events += 1;
                self.counters.releases += 1;
                log::debug!(
                    "release hint: {} by {} of {:?} at {}",
                    release.reason_name(),
                    release.pid,
                    release.inode,
                    release.ktime_ns
                );
                self.schedule_recheck(RECHECK_DELAY);
                Ok(())
            }
            Msg::HolderExited(pid) => {
                log::debug!("holder {pid} exited");
                self.schedule_recheck(RECHECK_DELAY);
                Ok(())
            }
            Msg::Captured(done) => self.on_captured(done),
            Msg::Reload(policy) => {
                self.cfg.policy = *policy;
                Ok(())
            }
            Msg::Api(..) | Msg::Shutdown => unreachable!("handled by run"),
        }
    }
}

pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
