//! The engine: one thread that owns the pins, the index and the probes'
//! maps, and turns hints into decisions.
//!
//! Deletion and release events only say *where to look*; every decision
//! ("pin this", "only our pin is left: capture", "nobody held it") is taken
//! against a fresh `Snapshot` of the kernel's state (principle 2). Events
//! that arrive together are handled in one batch: one snapshot, one index
//! transaction. API requests are answered at the end of the batch they
//! arrived in, after its writes are committed.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs::File,
    os::{fd::OwnedFd, unix::ffi::OsStrExt},
    path::PathBuf,
    sync::{Arc, mpsc::{Receiver, RecvTimeoutError, Sender}},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use tokio::sync::{mpsc::UnboundedSender, oneshot};
use unrm_abi::InodeKey;

use super::{capture, exits::Exited};
use crate::{
    api::{
        proto::{Counters, DaemonStatus, Latency, ProbeStatus, Request, Response},
        server::Reply,
    },
    holders::{HeldFile, Hold, HolderKind, InodeId, Snapshot},
    index::{Index, ListQuery, NewRecord},
    ingest::{DeleteOp, Deletion, Event},
    pins::{self, Meta},
    probe::{ProbeStats, Probes, WatchMaps},
    record::{Deleter, Status, from_nanos, holders_of},
    store::Store,
};

pub enum Msg {
    Event(Event),
    HolderExited(u32),
    Captured(capture::Done),
    Api(Request, oneshot::Sender<Reply>),
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
    /// Files larger than this are pinned while held but not copied.
    pub max_file_size: u64,
    /// How often to reconcile with the kernel even without events.
    pub rescan_every: Duration,
}

/// unrm's own reference to a deleted inode.
struct Pin {
    file: File,
    record: i64,
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
                let pin = Pin { file, record: id, holds: held.holds.clone(), from_scan: false, capturing: false };
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
                    Msg::Api(request, reply) => requests.push((request, reply)),
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
            if rescan || self.recheck_at.is_some_and(|at| now >= at) || !self.pending.is_empty() {
                self.recheck_at = None;
                self.begin()?;
                if let Err(err) = self.reconcile() {
                    log::error!("reconciling with the kernel: {err:#}");
                }
                if rescan {
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
            for (request, reply) in requests {
                let answer = self.answer(request).unwrap_or_else(|err| Reply::error(format!("{err:#}")));
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
            Msg::Api(..) | Msg::Shutdown => unreachable!("handled by run"),
        }
    }

    fn on_deletion(&mut self, d: Deletion) -> Result<()> {
        if d.ret != 0 {
            return Ok(());
        }
        let held_hint = match &d.victim {
            // A symlink, device or FIFO: no content to save.
            Some(v) if !v.is_regular() => return Ok(()),
            // The file lives on under another name.
            Some(v) if d.op == DeleteOp::Unlink && v.nlink > 1 => return Ok(()),
            // The deleter's own lookup holds one dentry reference.
            Some(v) => v.refs.map(|refs| refs > 1),
            // The filesystem reported no inode losing its last name.
            None if d.fs_hooked => return Ok(()),
            None => None,
        };
        self.counters.deletions += 1;
        if !d.path_complete {
            log::warn!("{} by {}: the directory walk stopped early; the path may be partial", d.path.display(), d.comm);
        }
        let deleted_at = wall_time_of(d.ktime_ns);
        if held_hint == Some(false) {
            self.counters.unheld += 1;
            let record = deletion_record(&d, deleted_at, Status::Unheld, None);
            self.index.insert(&record)?;
            return Ok(());
        }
        let mut pending = Pending { deletion: d, deleted_at, held_hint };
        if self.pin_through_probe_holder(&mut pending)? {
            return Ok(());
        }
        log::debug!(
            "{}: held {:?} (refs {:?}), probe holder {:?}, waiting for a snapshot",
            pending.deletion.path.display(),
            held_hint,
            pending.deletion.victim.and_then(|v| v.refs),
            pending.deletion.victim.and_then(|v| v.holder)
        );
        self.pending.push(pending);
        Ok(())
    }

    /// The fast path: the reader already holds the inode through the
    /// descriptor the probe named. Open it for reading and record it; a
    /// snapshot still follows in this batch to learn every holder.
    fn pin_through_probe_holder(&mut self, p: &mut Pending) -> Result<bool> {
        let Some(grab) = p.deletion.grabbed.take() else { return Ok(false) };
        let Some(victim) = p.deletion.victim else { return Ok(false) };
        let Some((pid, fd)) = victim.holder else { return Ok(false) };
        if self.pins.contains_key(&victim.inode) {
            return Ok(true);
        }
        let Ok((file, meta)) = pins::open_grabbed(&grab.handle) else { return Ok(false) };
        self.record_latency(grab.at_ns.saturating_sub(p.deletion.ktime_ns));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let hold = Hold { kind: HolderKind::Fd, pid, comm: comm.trim_end().to_owned(), fd, vm_start: 0, vm_end: 0 };
        let held = HeldFile {
            inode: victim.inode,
            path: p.deletion.path.clone(),
            size: meta.size,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            holds: vec![hold],
        };
        self.add_pin(&held, file, &meta, Some(p))?;
        self.counters.fast_pins += 1;
        // Watch the holder we know now; the snapshot adds the others.
        self.watches_stale = true;
        self.schedule_recheck(RECHECK_DELAY);
        Ok(true)
    }

    fn reconcile(&mut self) -> Result<()> {
        let snapshot = Snapshot::take(&mut self.probes)?;
        self.counters.scans += 1;
        self.reconcile_with(snapshot)
    }

    fn reconcile_with(&mut self, snapshot: Snapshot) -> Result<()> {
        for pending in std::mem::take(&mut self.pending) {
            self.resolve(pending, &snapshot)?;
        }
        // Held files no event told us about: deleted before the daemon
        // started, on paths no probe covers, or lost events.
        for held in snapshot.files.values() {
            if !self.pins.contains_key(&held.inode) {
                self.pin(held, None)?;
            }
        }
        let mut finished = Vec::new();
        for (inode, pin) in &mut self.pins {
            match snapshot.files.get(inode) {
                Some(held) if held.holds != pin.holds => {
                    pin.holds = held.holds.clone();
                    self.index.set_holders(pin.record, &holders_of(&pin.holds))?;
                }
                Some(_) => {}
                None if !pin.capturing => finished.push(*inode),
                None => {}
            }
        }
        for inode in finished {
            self.capture(inode)?;
        }
        self.sync_watches()
    }

    /// Decides what a deletion was, now that the snapshot says who holds what.
    fn resolve(&mut self, p: Pending, snapshot: &Snapshot) -> Result<()> {
        let found = match &p.deletion.victim {
            Some(v) => snapshot.files.get(&v.inode),
            None => snapshot.by_path(&p.deletion.path, |inode| self.pins.contains_key(inode) && !self.pins[inode].from_scan),
        };
        if let Some(held) = found {
            if let Some(pin) = self.pins.get_mut(&held.inode) {
                // A scan pinned it first; the event knows who and when.
                if pin.from_scan {
                    pin.from_scan = false;
                    let d = &p.deletion;
                    let by = deleter(d);
                    self.index.set_deletion(pin.record, d.path.as_os_str().as_bytes(), p.deleted_at, &by, op_name(d.op))?;
                }
                return Ok(());
            }
            if self.pin(held, Some(&p))? {
                return Ok(());
            }
        }
        let d = &p.deletion;
        let status = match (&d.victim, p.held_hint, found.is_some()) {
            (_, Some(true), _) | (_, _, true) => Status::Missed,
            (Some(_), _, _) => Status::Unheld,
            (None, _, _) if d.op == DeleteOp::Unlink => Status::Unheld,
            // A rename on a filesystem without hooks, over nothing held:
            // there is no telling whether it replaced a file at all.
            (None, _, _) => return Ok(()),
        };
        let reason = (status == Status::Missed).then_some("released before unrm could pin it");
        match status {
            Status::Missed => self.counters.missed += 1,
            _ => self.counters.unheld += 1,
        }
        self.index.insert(&deletion_record(d, p.deleted_at, status, reason))?;
        Ok(())
    }

    /// Takes a pin on `held` and records it. Returns false if every hold had
    /// gone by the time unrm reached for it.
    fn pin(&mut self, held: &HeldFile, pending: Option<&Pending>) -> Result<bool> {
        let Some((file, meta)) = pins::take(held) else { return Ok(false) };
        if let Some(p) = pending {
            self.record_latency(monotonic_ns().saturating_sub(p.deletion.ktime_ns));
        }
        self.add_pin(held, file, &meta, pending)?;
        Ok(true)
    }

    fn record_latency(&mut self, ns: u64) {
        if self.latencies_ns.len() == LATENCY_SAMPLES {
            self.latencies_ns.pop_front();
        }
        self.latencies_ns.push_back(ns);
    }

    /// Records a new pin: from a deletion event, or (`pending` None) found
    /// by a scan at `held.path`.
    fn add_pin(&mut self, held: &HeldFile, file: File, meta: &Meta, pending: Option<&Pending>) -> Result<()> {
        let (inode, holds) = (held.inode, held.holds.clone());
        let mut record = match pending {
            Some(p) => deletion_record(&p.deletion, p.deleted_at, Status::Held, None),
            None => NewRecord {
                path: held.path.as_os_str().as_bytes().to_vec(),
                op: "scan",
                status: Some(Status::Held),
                ..Default::default()
            },
        };
        fill_meta(&mut record, inode, meta);
        record.holders = holders_of(&holds);
        let id = self.index.insert(&record)?;
        self.counters.pins += 1;
        log::info!("pinned {} ({} bytes) as record {id}", String::from_utf8_lossy(&record.path), meta.size);
        let pin = Pin { file, record: id, holds, from_scan: pending.is_none(), capturing: false };
        self.pins.insert(inode, pin);
        Ok(())
    }

    /// Only our pin is left: the content is final. Copy it, then let go.
    fn capture(&mut self, inode: InodeId) -> Result<()> {
        let pin = self.pins.get_mut(&inode).expect("capturing a pinned inode");
        let size = pin.file.metadata()?.len();
        if size > self.cfg.max_file_size {
            let reason = format!(
                "{size} bytes is over the per-file cap of {} (--max-file-size)",
                self.cfg.max_file_size
            );
            self.counters.skipped += 1;
            self.index.set_status(pin.record, Status::Skipped, Some(&reason))?;
            self.pins.remove(&inode);
            return Ok(());
        }
        let job = capture::Job { record: pin.record, inode, file: pin.file.try_clone()?, size };
        pin.capturing = true;
        self.captures.send(job).context("the capture worker stopped")?;
        Ok(())
    }

    fn on_captured(&mut self, done: capture::Done) -> Result<()> {
        match done {
            capture::Done::Captured { record, inode, result, took, at } => {
                self.pins.remove(&inode);
                match result {
                    Ok(stored) => {
                        self.counters.captured += 1;
                        log::info!("captured record {record} ({} bytes, {:?}, {took:?})", stored.size, stored.method);
                        self.index.mark_captured(record, stored.size, at)
                    }
                    Err(reason) => {
                        self.counters.failed += 1;
                        log::warn!("capture of record {record} failed: {reason}");
                        self.index.set_status(record, Status::Failed, Some(&reason))
                    }
                }
            }
            capture::Done::Checksummed { record, checksum: Ok(sum) } => self.index.set_checksum(record, &sum),
            capture::Done::Checksummed { record, checksum: Err(err) } => {
                log::warn!("checksumming record {record}: {err}");
                Ok(())
            }
        }
    }

    /// Points the kernel-side filters at what is pinned now, watches every
    /// holder's exit, and keeps the release probes attached only while some
    /// pinned file still has holders.
    fn sync_watches(&mut self) -> Result<()> {
        self.watches_stale = false;
        let inodes: HashSet<InodeId> = self.pins.keys().copied().collect();
        let tgids: HashSet<u32> =
            self.pins.values().filter(|p| !p.capturing).flat_map(|p| p.holds.iter().map(|h| h.pid)).collect();
        for gone in self.watched_inodes.difference(&inodes) {
            let _ = self.watch.inodes.remove(&inode_key(gone));
        }
        for new in inodes.difference(&self.watched_inodes) {
            self.watch.inodes.insert(inode_key(new), 1, 0)?;
        }
        for gone in self.watched_tgids.difference(&tgids) {
            let _ = self.watch.tgids.remove(gone);
        }
        for new in tgids.difference(&self.watched_tgids) {
            self.watch.tgids.insert(*new, 1, 0)?;
            let _ = self.exit_watch.send(*new);
        }
        self.watched_inodes = inodes;
        if !tgids.is_empty() {
            self.release_idle_since = None;
        } else if self.release_idle_since.get_or_insert_with(Instant::now).elapsed() >= RELEASE_LINGER {
            self.probes.detach_release()?;
        }
        if !tgids.is_empty() && !self.probes.release_attached() {
            self.probes.attach_release()?;
            // A release between the snapshot and now went unseen: look again.
            self.schedule_recheck(RECHECK_DELAY);
        }
        self.watched_tgids = tgids;
        Ok(())
    }

    fn answer(&mut self, request: Request) -> Result<Reply> {
        let response = match request {
            Request::List { since_ns, status, path, limit } => {
                let path = match path {
                    Some(glob) => Some(
                        globset::Glob::new(&glob)
                            .with_context(|| format!("bad --path glob {glob:?}"))?
                            .compile_matcher(),
                    ),
                    None => None,
                };
                let query = ListQuery { since: since_ns.map(from_nanos), status, path, limit };
                Response::Records { records: self.index.list(&query)? }
            }
            Request::Show { id } => Response::Record { record: self.record(id)? },
            Request::Open { id } => return self.open(id),
            Request::Status => Response::Status { status: self.status()? },
            Request::Scan => Response::Scan { files: Snapshot::take(&mut self.probes)?.views() },
        };
        Ok(Reply { response, fd: None })
    }

    fn record(&self, id: i64) -> Result<crate::record::Record> {
        self.index.get(id)?.with_context(|| format!("no record with id {id}"))
    }

    fn open(&mut self, id: i64) -> Result<Reply> {
        let record = self.record(id)?;
        let file = match record.status {
            Status::Held => {
                let pin = self.pins.values().find(|p| p.record == id).with_context(|| {
                    format!("record {id} is held but not pinned by this daemon")
                })?;
                pins::reopen_pin(&pin.file)?
            }
            Status::Captured => self.store.open_capture(id)?,
            status => {
                let why = record.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                anyhow::bail!("record {id} is {status}{why}: unrm has no content to restore");
            }
        };
        let meta = self.index.restore_meta(id)?.unwrap_or_default();
        Ok(Reply { response: Response::Opened { record, meta }, fd: Some(OwnedFd::from(file)) })
    }

    fn lost_events(&self) -> u64 {
        self.probe_stats.lost_events() + self.probe_stats.lost_inflight()
    }

    fn status(&self) -> Result<DaemonStatus> {
        let mut counters = self.counters.clone();
        counters.lost_events = self.lost_events();
        let held_bytes = self.pins.values().filter_map(|p| p.file.metadata().ok()).map(|m| m.len()).sum();
        Ok(DaemonStatus {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            state_dir: self.cfg.state_dir.display().to_string(),
            probes: ProbeStatus {
                tier: self.probes.tier().name().into(),
                attached: true,
                fs_hooks: self.probes.fs_hooks().iter().map(|h| h.to_string()).collect(),
                release_attached: self.probes.release_attached(),
            },
            counters,
            held_files: self.pins.len() as u64,
            held_bytes,
            store_bytes: self.store.bytes(),
            records: self.index.rows(),
            pin_latency_us: latency(&self.latencies_ns),
        })
    }
}

fn inode_key(inode: &InodeId) -> InodeKey {
    InodeKey { dev: inode.kernel_dev(), _pad: 0, ino: inode.ino }
}

fn deleter(d: &Deletion) -> Deleter {
    Deleter { pid: d.pid, uid: d.uid, comm: d.comm.clone() }
}

fn op_name(op: DeleteOp) -> &'static str {
    match op {
        DeleteOp::Unlink => "unlink",
        DeleteOp::Rename => "rename",
    }
}

fn deletion_record(d: &Deletion, at: SystemTime, status: Status, reason: Option<&str>) -> NewRecord {
    let v = d.victim.as_ref();
    NewRecord {
        path: d.path.as_os_str().as_bytes().to_vec(),
        dev: v.map(|v| v.inode.dev),
        ino: v.map(|v| v.inode.ino),
        size: v.map(|v| v.size),
        mode: v.map(|v| v.mode),
        uid: v.map(|v| v.uid),
        gid: v.map(|v| v.gid),
        deleted_at: Some(at),
        deleted_by: Some(deleter(d)),
        op: op_name(d.op),
        status: Some(status),
        reason: reason.map(str::to_owned),
        ..Default::default()
    }
}

fn fill_meta(record: &mut NewRecord, inode: InodeId, meta: &Meta) {
    record.dev = Some(meta.dev);
    record.ino = Some(inode.ino);
    record.size = Some(meta.size);
    record.mode = Some(meta.mode);
    record.uid = Some(meta.uid);
    record.gid = Some(meta.gid);
    record.atime_ns = Some(meta.atime_ns);
    record.mtime_ns = Some(meta.mtime_ns);
}

pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The wall-clock time of a kernel monotonic timestamp.
fn wall_time_of(ktime_ns: u64) -> SystemTime {
    let ago = monotonic_ns().saturating_sub(ktime_ns);
    SystemTime::now() - Duration::from_nanos(ago)
}

fn latency(samples_ns: &VecDeque<u64>) -> Latency {
    let mut sorted: Vec<u64> = samples_ns.iter().copied().collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).map(|ns| ns / 1000);
    Latency { samples: sorted.len() as u64, p50: at(0.5), p99: at(0.99), max: sorted.last().map(|ns| ns / 1000) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles() {
        let samples: VecDeque<u64> = (1..=100).map(|us| us * 1000).collect();
        let l = latency(&samples);
        assert_eq!((l.samples, l.p50, l.p99, l.max), (100, Some(51), Some(99), Some(100)));
        assert_eq!(latency(&VecDeque::new()).p50, None);
    }
}
