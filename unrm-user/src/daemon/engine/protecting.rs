//! Protected trees, as the engine sees them: it forwards `unrm protect`
//! to the protector's thread (which walks; the engine never waits for it),
//! lets go of unrm's reference once a protected file is pinned, defers a
//! protected deletion the descriptor budget cannot pin yet (the reference
//! keeps it meanwhile, so it waits instead of being skipped), records the
//! deletions only a sweep found, and keeps the versions of each path within
//! `versions` and `min_interval`.

use std::{
    collections::{HashMap, VecDeque},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::{Arc, mpsc::Sender},
    time::{Duration, Instant},
};

use anyhow::Result;
use tokio::sync::oneshot;

use super::{Engine, Msg, Pending};
use crate::{
    access::Caller,
    api::{
        proto::{Request, Response},
        server::Reply,
    },
    clock::monotonic_ns,
    holders::{HeldFile, InodeId},
    ingest::Grab,
    pins::{self, Refused},
    policy::Policy,
    protect::{Ask, Gone, Protector, Settings, TreeView},
    record::Status,
};

/// Deletions waiting for a tracepoint-tier sweep to name their inode, at most.
const AWAITING_SWEEP: usize = 4096;

/// A protected deletion waiting for a descriptor.
pub(super) enum Waiting {
    Deletion(Pending),
    Swept(Gone),
}

pub(super) struct Protection {
    pub protector: Protector,
    pub waiting: VecDeque<Waiting>,
    /// Deletions in protected trees whose inode no probe named (the
    /// tracepoint tier), by path: a sweep finds the inode.
    pub by_path: HashMap<PathBuf, (Pending, Instant)>,
}

impl Protection {
    pub fn start(state_dir: &Path, policy: &Policy, sweep_every: Duration, tx: Sender<Msg>) -> Result<Self> {
        let protector = Protector::start(state_dir, settings(policy), sweep_every, move |gone| {
            let _ = tx.send(Msg::Swept(gone));
        })?;
        Ok(Protection { protector, waiting: VecDeque::new(), by_path: HashMap::new() })
    }

    pub fn is_protected(&self, inode: &InodeId) -> bool {
        self.protector.shared.link(inode).is_some()
    }
}

/// What the protector takes from the policy.
pub(super) fn settings(policy: &Policy) -> Settings {
    let p = &policy.protect;
    let filter = policy.clone();
    Settings {
        trees: p.trees.clone(),
        max_files: p.max_files as usize,
        max_tree_files: p.max_tree_files as usize,
        per_user_files: policy.per_user.protected_files.of(p.max_files) as usize,
        excluded: Arc::new(move |path: &Path| !filter.wants(path, None)),
    }
}

impl Engine {
    /// `unrm protect`, `unprotect` and `protect --list`: answered by the
    /// protector's thread, straight to the caller.
    pub(super) fn ask_protector(&mut self, request: Request, caller: &Caller, reply: oneshot::Sender<Reply>) {
        let uid = caller.uid;
        let one = |reply: oneshot::Sender<Reply>| -> Box<dyn FnOnce(Result<TreeView, String>) + Send> {
            Box::new(move |result| {
                let _ = reply.send(match result {
                    Ok(tree) => Reply::new(Response::Trees { trees: vec![tree] }),
                    Err(message) => Reply::error(message),
                });
            })
        };
        let ask = match request {
            Request::Protect { path, any_fs } => {
                Ask::Protect { path: path.into(), uid, any_fs, reply: one(reply) }
            }
            Request::Unprotect { path } => Ask::Unprotect { path: path.into(), uid, reply: one(reply) },
            Request::Protected => Ask::List {
                uid,
                reply: Box::new(move |trees| {
                    let _ = reply.send(Reply::new(Response::Trees { trees }));
                }),
            },
            _ => unreachable!("not a protector's request"),
        };
        self.protection.protector.ask(ask);
    }

    /// A protected file no probe reported lost its last name (a sweep).
    pub(super) fn on_swept(&mut self, gone: Gone) {
        if self.pins.contains(&gone.inode) {
            self.protection.protector.shared.release(&gone.inode);
            return;
        }
        // Its event came too, and waits for the next snapshot.
        if self.pending.iter().any(|p| p.deletion.victim.is_some_and(|v| v.inode == gone.inode)) {
            return;
        }
        self.pin_swept(gone);
    }

    fn pin_swept(&mut self, gone: Gone) {
        match pins::grab(&gone.link, gone.inode, &self.admission.budget) {
            Ok((pin, meta)) => {
                let held = HeldFile {
                    inode: gone.inode,
                    path: gone.path.clone(),
                    size: meta.size,
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    holds: Vec::new(),
                    parent: None,
                };
                let pending = self.protection.by_path.remove(&gone.path).map(|(p, _)| p);
                let grab = Box::new(Grab { pin, meta, at_ns: monotonic_ns() });
                self.pin(&held, pending.as_ref(), Some(grab));
                self.timers.recheck(Duration::ZERO);
            }
            Err(Refused::Budget) => {
                // Sweeps leave it out from now on: it waits here.
                self.protection.protector.shared.claim(&gone.inode);
                self.protection.waiting.push_back(Waiting::Swept(gone));
            }
            Err(Refused::Gone(err)) => {
                log::debug!("protect: {} went before unrm pinned it: {err}", gone.path.display())
            }
        }
    }

    /// A protected deletion the budget could not pin: it waits for a
    /// descriptor (unrm's reference keeps the file meanwhile). Given back
    /// if it is not a protected file's.
    pub(super) fn defer_protected(&mut self, mut pending: Pending) -> Option<Pending> {
        match pending.deletion.victim {
            Some(v) if self.protection.protector.shared.claim(&v.inode) => {
                // Its descriptor goes back to the budget; unrm's reference
                // keeps the file.
                pending.deletion.grabbed = None;
                self.protection.waiting.push_back(Waiting::Deletion(pending));
                None
            }
            _ => Some(pending),
        }
    }

    /// Pins a protected file's deletion through unrm's own reference (the
    /// reader's pin by handle failed); given back with its grab, or as it
    /// was if it is not protected; kept waiting if the budget is spent.
    pub(super) fn grab_protected(&mut self, mut p: Pending) -> Option<Pending> {
        let Some(v) = p.deletion.victim else { return Some(p) };
        let Some(link) = self.protection.protector.shared.link(&v.inode) else { return Some(p) };
        if self.protected_share_spent() {
            return self.defer_protected(p);
        }
        match pins::grab(&link, v.inode, &self.admission.budget) {
            Ok((pin, meta)) => p.deletion.grabbed = Some(Box::new(Grab { pin, meta, at_ns: monotonic_ns() })),
            Err(Refused::Budget) => return self.defer_protected(p),
            Err(Refused::Gone(err)) => log::debug!("protect: no pin through {}: {err}", link.display()),
        }
        Some(p)
    }

    /// A deletion in a protected tree whose inode no probe named: a sweep
    /// will find it (and its record will say who deleted it). Given back
    /// if its path is in no protected tree.
    pub(super) fn await_sweep(&mut self, pending: Pending) -> Option<Pending> {
        let path = &pending.deletion.path;
        if pending.deletion.victim.is_some() || self.protection.protector.shared.tree_of(path).is_none() {
            return Some(pending);
        }
        if self.protection.by_path.len() >= AWAITING_SWEEP {
            return Some(pending);
        }
        self.protection.by_path.insert(path.clone(), (pending, Instant::now()));
        self.protection.protector.ask(Ask::Sweep);
        None
    }

    /// Deletions no sweep matched within `stale` (two rescans): none of a
    /// kept file (a symbolic link, an excluded file, a file over a limit),
    /// recorded as unheld, as they would have been outside a protected tree.
    pub(super) fn record_unmatched(&mut self, stale: Duration) {
        let old: Vec<PathBuf> = self
            .protection
            .by_path
            .iter()
            .filter(|(_, (_, at))| at.elapsed() > stale)
            .map(|(p, _)| p.clone())
            .collect();
        for path in old {
            let Some((p, _)) = self.protection.by_path.remove(&path) else { continue };
            if self.admission.rate.allow(p.deletion.uid, self.cfg.policy.per_user.records_per_minute) {
                self.figures.counters.unheld += 1;
                self.index.insert(super::decide::deletion_record(
                    &p.deletion,
                    p.deleted_at,
                    Status::Unheld,
                    None,
                ));
            }
        }
    }

    /// Protected deletions may wait, held files of everyone else may not:
    /// the former take at most three quarters of the descriptor budget.
    /// While stopping, no held file needs room any more (the next start pins
    /// them again): protected deletions may take what there is.
    pub(super) fn protected_share_spent(&self) -> bool {
        let limit = if self.stopping() { 4 } else { 3 };
        self.admission.budget.used() * 4 >= self.admission.budget.limit() * limit
    }

    /// Pins what waited for a descriptor, as far as the budget allows now.
    pub(super) fn retry_protected(&mut self) {
        while !self.protected_share_spent() {
            let Some(waiting) = self.protection.waiting.pop_front() else { return };
            match waiting {
                Waiting::Swept(gone) => self.pin_swept(gone),
                Waiting::Deletion(mut p) => {
                    let inode = p.deletion.victim.expect("a protected deletion names its inode").inode;
                    let Some(link) = self.protection.protector.shared.link(&inode) else {
                        self.pending.push(p);
                        continue;
                    };
                    match pins::grab(&link, inode, &self.admission.budget) {
                        Ok((pin, meta)) => {
                            p.deletion.grabbed = Some(Box::new(Grab { pin, meta, at_ns: monotonic_ns() }));
                            self.pending.push(p);
                        }
                        Err(Refused::Budget) => {
                            self.protection.waiting.push_front(Waiting::Deletion(p));
                            return;
                        }
                        Err(Refused::Gone(_)) => self.pending.push(p),
                    }
                    self.timers.recheck(Duration::ZERO);
                }
            }
        }
    }

    /// After a capture of a protected file at `path`: the versions of that
    /// path beyond `versions` go, oldest first, and the one it replaced goes
    /// if it lived less than `min_interval`.
    pub(super) fn keep_versions(&mut self, record: i64, path: &Path) -> Result<()> {
        let policy = self.cfg.policy.protect.clone();
        // Only a path verified on this host, and only the owner's own files.
        let Some(new) = self.index.get(record)?.filter(|r| r.path_resolved) else { return Ok(()) };
        let Some(owner) = new.uid else { return Ok(()) };
        let mut versions = self.index.versions_of(path.as_os_str().as_bytes(), owner)?;
        if let [newest, previous, ..] = versions.as_slice()
            && newest.id == record
            && previous.mtime_ns.is_some_and(|m| {
                previous.deleted_at_ns.saturating_sub(m) < policy.min_interval.as_nanos() as i64
            })
        {
            let id = previous.id;
            versions.remove(1);
            self.evict(id, "a newer version replaced it, and it had lived less than min_interval");
        }
        for old in versions.iter().skip(policy.versions as usize) {
            self.evict(old.id, "more versions of its path than `versions` keeps");
        }
        Ok(())
    }
}
