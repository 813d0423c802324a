//! Answers to the socket API, given after the batch they arrived in is
//! committed: a client that saw a deletion return also sees its record.
//!
//! Each answer is bounded: a listing looks at `SCAN_ROWS` rows at most and
//! says where to go on; a scan reuses a recent snapshot (`kernel::SCAN_REUSE`);
//! a held file's restore is opened by its filesystem's file worker, since
//! opening may block. Records a caller may not see (see `access`) do not
//! exist as far as it can tell.

use std::{
    collections::VecDeque,
    os::{fd::AsFd, fd::OwnedFd, unix::fs::MetadataExt},
    sync::atomic::Ordering,
};

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::{Engine, follow::Filter, table::PinTable};
use crate::{
    access::{Caller, PathFacts, Seen, Visibility},
    api::{
        proto::{DaemonStatus, Latency, ProbeStatus, Request, Response, Safety},
        server::Reply,
    },
    daemon::jobs,
    holders::{HeldView, InodeId, Snapshot},
    index::ListQuery,
    pins::Meta,
    record::{Record, Status, from_nanos},
    xattrs,
};

/// Rows one listing request looks at before answering with a page, and
/// about how large a page may be.
const SCAN_ROWS: usize = 20_000;
const PAGE_BYTES: usize = 4 << 20;

impl Engine {
    pub(super) fn answer(&mut self, request: Request, caller: &Caller, reply: oneshot::Sender<Reply>) {
        if matches!(request, Request::Protect { .. } | Request::Unprotect { .. } | Request::Protected) {
            return self.ask_protector(request, caller, reply);
        }
        if let Request::Open { id } = request {
            if let Err(err) = self.open(id, caller, reply) {
                log::debug!("open of record {id}: {err:#}");
            }
            return;
        }
        let answer = self.answer_now(request, caller).unwrap_or_else(|err| Reply::error(format!("{err:#}")));
        let _ = reply.send(answer);
    }

    fn answer_now(&mut self, request: Request, caller: &Caller) -> Result<Reply> {
        let response = match request {
            Request::List { since_ns, status, path, limit, after, container } => {
                let path = path_glob(path)?;
                let since = since_ns.map(from_nanos);
                let query =
                    ListQuery { since, status, path, limit, after, scan: SCAN_ROWS, bytes: PAGE_BYTES };
                let visibility = self.cfg.policy.visible_to;
                let mut stale = Vec::new();
                let in_container = |r: &Record| container.as_deref().is_none_or(|c| r.in_container(c));
                let page = self.index.list(&query, |r| {
                    in_container(r) && may_see(&self.pins, visibility, caller, r, &mut stale)
                })?;
                self.reread_acls(stale);
                Response::Records { records: page.records, next: page.next }
            }
            Request::Show { id } => Response::Record { record: self.record(id, caller)? },
            Request::Open { .. }
            | Request::Protect { .. }
            | Request::Unprotect { .. }
            | Request::Protected => {
                unreachable!("answered by open or the protector")
            }
            Request::Status => Response::Status { status: self.status()? },
            Request::Scan => Response::Scan { files: self.scan(caller)? },
            Request::Follow { status, path, container } => {
                return Ok(self.follow(Filter::new(status, path, container)?, caller));
            }
        };
        Ok(Reply::new(response))
    }

    /// A record the caller may see; others do not exist, as far as it can tell.
    fn record(&mut self, id: i64, caller: &Caller) -> Result<Record> {
        let mut stale = Vec::new();
        let visibility = self.cfg.policy.visible_to;
        let record = self.index.get(id)?.filter(|r| may_see(&self.pins, visibility, caller, r, &mut stale));
        self.reread_acls(stale);
        record.with_context(|| format!("no record with id {id}"))
    }

    /// Has file workers read the ACLs of held files whose ctime moved.
    pub(super) fn reread_acls(&mut self, inodes: Vec<InodeId>) {
        for inode in inodes {
            let Some(pin) = self.pins.get_mut(&inode).filter(|pin| !pin.acl.asked) else { continue };
            pin.acl.asked = true;
            let job = jobs::reread_acl(pin.fd.clone(), inode, self.workers.tx.clone());
            self.workers.lanes.run(inode.dev, job);
        }
    }

    /// Sends a readable descriptor of record `id`'s content with the record.
    fn open(&mut self, id: i64, caller: &Caller, reply: oneshot::Sender<Reply>) -> Result<()> {
        let mut record = match self.record(id, caller) {
            Ok(record) => record,
            Err(err) => {
                let _ = reply.send(Reply::error(format!("{err:#}")));
                return Ok(());
            }
        };
        let mut meta = std::mem::take(&mut record.restore);
        match record.status {
            Status::Held => {
                let Some((inode, pin)) = self.pins.of_record(id) else {
                    let _ = reply
                        .send(Reply::error(format!("record {id} is held but not pinned by this daemon")));
                    return Ok(());
                };
                let job = jobs::open_held(pin.fd.clone(), record, meta, caller.is_root(), reply);
                self.workers.lanes.run(inode.dev, job);
            }
            Status::Captured => {
                let answer = self.storage.files.open_capture(id).map(|file| {
                    if !caller.is_root() {
                        xattrs::keep_unprivileged(&mut meta.xattrs);
                    }
                    Reply::with_fd(Response::Opened { record, meta }, OwnedFd::from(file))
                });
                let _ = reply.send(answer.unwrap_or_else(|err| Reply::error(format!("{err:#}"))));
            }
            status => {
                let why = record.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                let _ = reply.send(Reply::error(format!(
                    "record {id} is {status}{why}: unrm has no content to restore"
                )));
            }
        }
        Ok(())
    }

    /// Deleted files held right now that the caller may see. Holders'
    /// descriptor numbers and mapping addresses are shown only for the
    /// caller's own processes (they would tell anyone else where a process
    /// keeps its memory).
    fn scan(&mut self, caller: &Caller) -> Result<Vec<HeldView>> {
        let (taken, snapshot) = self.kernel.scan()?;
        self.figures.counters.scans += taken as u64;
        let visibility = self.cfg.policy.visible_to;
        let mut files = Vec::new();
        let mut stale = Vec::new();
        for file in snapshot.files.values() {
            let record = self.pins.get(&file.inode).and_then(|pin| self.index.get(pin.record).ok().flatten());
            let visible = match record {
                Some(r) => may_see(&self.pins, visibility, caller, &r, &mut stale),
                // Not pinned (or its record not written yet): what its
                // directories allowed is not known.
                None => caller.may_see(
                    &Seen { uid: Some(file.uid), gid: Some(file.gid), mode: Some(file.mode), facts: None },
                    visibility,
                ),
            };
            if visible {
                let mut file = file.clone();
                if let Some(pin) = self.pins.get(&file.inode) {
                    file.path.clone_from(&pin.place.path);
                }
                files.push(file);
            }
        }
        self.reread_acls(stale);
        let mut views = Snapshot::views_of(files);
        if !caller.is_root() {
            for hold in views.iter_mut().flat_map(|v| v.holders.iter_mut()) {
                if !owns_process(caller, hold.pid) {
                    hold.fd = None;
                    hold.map = None;
                }
            }
        }
        Ok(views)
    }

    pub(super) fn status(&mut self) -> Result<DaemonStatus> {
        let mut counters = self.figures.counters.clone();
        counters.lost_events = self.kernel.lost_events();
        let held_bytes = self.pins.iter().map(|(_, p)| p.size).sum();
        let stuck = self.workers.lanes.tick();
        let index = self.index.health();
        let server = &self.figures.server_stats;
        let safety = Safety {
            pin_budget: self.admission.budget.limit() as u64,
            pins_open: self.admission.budget.used() as u64,
            over_budget: self.figures.guards.over_budget,
            over_user_pins: self.figures.guards.over_user_pins,
            over_user_store: self.figures.guards.over_user_store,
            rate_limited: self.admission.rate.refused,
            failed_calls: self.kernel.stats.failed_calls(),
            failed_reads: self.kernel.stats.failed_reads(),
            watch_full: self.kernel.watches.full,
            pidfds: self.figures.exit_stats.watched.load(Ordering::Relaxed),
            pidfd_budget: self.figures.pidfd_budget as u64,
            pidfds_refused: self.figures.exit_stats.refused.load(Ordering::Relaxed),
            index_errors: index.errors,
            index_waiting: index.waiting as u64,
            index_dropped: index.dropped,
            engine_errors: self.figures.guards.engine_errors,
            connections: server.open.load(Ordering::Relaxed),
            connections_refused: server.refused.load(Ordering::Relaxed),
            clients_dropped: server.dropped.load(Ordering::Relaxed),
            accept_errors: server.accept_errors.load(Ordering::Relaxed),
            stuck_filesystems: stuck as u64,
            stuck_total: self.workers.lanes.stuck_total(),
            evicted_for_space: self.figures.guards.evicted_for_space,
            records_pruned: self.figures.guards.records_pruned,
            events_written: self.feed.log.stats.written.load(Ordering::Relaxed),
            events_dropped: self.feed.log.stats.dropped.load(Ordering::Relaxed) + index.changes_dropped,
            followers_dropped: self.feed.dropped,
        };
        let (protected_files, protected_trees) = self.protection.protector.shared.totals();
        Ok(DaemonStatus {
            pid: std::process::id(),
            uptime_secs: self.figures.started.elapsed().as_secs(),
            state_dir: self.cfg.state_dir.display().to_string(),
            probes: ProbeStatus {
                tier: self.kernel.probes.tier().name().into(),
                fallback: self.kernel.probes.fallback().map(str::to_owned),
                attached: true,
                fs_hooks: self.kernel.probes.fs_hooks().iter().map(|h| h.to_string()).collect(),
                release_attached: self.kernel.probes.release_attached(),
            },
            counters,
            held_files: self.pins.len() as u64,
            held_bytes,
            store_bytes: self.storage.usage.total(),
            store_files: self.storage.usage.captures() as u64,
            protected_files,
            protected_trees,
            records: self.index.rows(),
            pin_latency_us: Latency {
                histogram: self.figures.latency_counts.histogram(),
                ..latency(&self.figures.latencies_ns)
            },
            safety,
        })
    }
}

/// Whether `caller` may see record `r`: as the file was when deleted, and,
/// for a file still held, as it is now (a chmod after the deletion counts).
/// A held file whose ACL changed since it was last read is seen by its
/// owner only until a file worker has read it again (`stale` asks for it).
/// A request's `--path` glob, compiled.
pub(super) fn path_glob(path: Option<String>) -> Result<Option<globset::GlobMatcher>> {
    path.map(|glob| {
        Ok(globset::Glob::new(&glob).with_context(|| format!("bad --path glob {glob:?}"))?.compile_matcher())
    })
    .transpose()
}

pub(super) fn may_see(
    pins: &PinTable,
    visibility: Visibility,
    caller: &Caller,
    r: &Record,
    stale: &mut Vec<InodeId>,
) -> bool {
    let then = Seen { uid: r.uid, gid: r.gid, mode: r.mode, facts: r.access.as_ref() };
    if !caller.may_see(&then, visibility) {
        return false;
    }
    if caller.is_root() {
        return true;
    }
    if r.status != Status::Held {
        // As it was when its content became final, too.
        let Some(last) = &r.final_perms else { return true };
        let dirs = r.access.as_ref().map(|facts| facts.dirs.clone());
        let facts = dirs.map(|dirs| PathFacts { acl: last.acl.clone(), dirs });
        let seen =
            Seen { uid: Some(last.uid), gid: Some(last.gid), mode: Some(last.mode), facts: facts.as_ref() };
        return caller.may_see(&seen, visibility);
    }
    let Some((inode, pin)) = pins.of_record(r.id) else { return true };
    let Ok(now) = Meta::of(pin.fd.as_fd()) else { return false };
    let acl = match &pin.acl.entries {
        Some((ctime, acl)) if *ctime == now.ctime_ns => Some(acl.clone()),
        _ => {
            if visibility == Visibility::Readers && now.uid != caller.uid {
                stale.push(inode);
            }
            None
        }
    };
    let dirs = r.access.as_ref().map(|facts| facts.dirs.clone());
    let facts = acl.zip(dirs).map(|(acl, dirs)| PathFacts { acl, dirs });
    let seen = Seen { uid: Some(now.uid), gid: Some(now.gid), mode: Some(now.mode), facts: facts.as_ref() };
    caller.may_see(&seen, visibility)
}

/// Whether `pid` runs as `caller` (its /proc directory is the caller's: a
/// process that is not dumpable has a root-owned one, and stays hidden).
fn owns_process(caller: &Caller, pid: u32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == caller.uid)
}

fn latency(samples_ns: &VecDeque<u64>) -> Latency {
    let mut sorted: Vec<u64> = samples_ns.iter().copied().collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).map(|ns| ns / 1000);
    Latency {
        samples: sorted.len() as u64,
        p50: at(0.5),
        p99: at(0.99),
        max: sorted.last().map(|ns| ns / 1000),
        histogram: Default::default(),
    }
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
