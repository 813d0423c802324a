//! The decisions: what a deletion was, when to pin, when only our pin is
//! left and the content can be captured. Every one of them is taken against
//! a snapshot of the kernel's state or through a descriptor the probe named.

use std::{
    collections::HashSet,
    os::{fd::AsFd, unix::ffi::OsStrExt},
    path::PathBuf,
    sync::Arc,
    time::SystemTime,
};

use anyhow::Result;

use super::{Engine, Pending, RECHECK_DELAY};
use crate::{
    access::Parent,
    clock::{monotonic_ns, wall_time_of},
    daemon::{
        jobs::{self, Done},
        lanes,
    },
    holders::{HeldFile, Hold, InodeId, Snapshot},
    ingest::{Deletion, Grab},
    pins::{self, AclCache, Holding, Meta, Pin, PinFd, Place, Refused},
    policy::Scratch,
    record::{Deleter, Op, Record, Status, holders_of, nanos},
};

/// Why a held file was not pinned, as its record says.
enum NotPinned {
    Budget,
    UserPins(String),
}

impl Engine {
    pub(super) fn on_deletion(&mut self, d: Deletion) -> Result<()> {
        if d.ret != 0 {
            return Ok(());
        }
        let held_hint = match &d.victim {
            Some(v) if !v.lost_content(d.op) => return Ok(()),
            // The deleter's own lookup holds one dentry reference.
            Some(v) => v.refs.map(|refs| refs > 1),
            // The filesystem reported no inode losing its last name.
            None if d.fs_hooked => return Ok(()),
            None if d.nothing_held => Some(false),
            None => None,
        };
        self.figures.counters.deletions += 1;
        if !self.cfg.policy.wants(&d.path, d.victim.map(|v| v.uid)) {
            self.figures.counters.ignored += 1;
            return Ok(());
        }
        if !d.path_complete {
            log::warn!(
                "{} by {}: the directory walk stopped early; the path may be partial",
                d.path.display(),
                d.comm
            );
        }
        let deleted_at = wall_time_of(d.ktime_ns);
        if held_hint == Some(false) {
            if !self.admission.rate.allow(d.uid, self.cfg.policy.per_user.records_per_minute) {
                return Ok(());
            }
            self.figures.counters.unheld += 1;
            self.index.insert(deletion_record(&d, deleted_at, Status::Unheld, None));
            return Ok(());
        }
        if let Some(v) = &d.victim {
            self.anchor_wanted(v.inode.dev);
        }
        let pending = Pending { deletion: d, deleted_at, held_hint };
        if let Some(victim) = pending.deletion.victim
            && self.pins.contains(&victim.inode)
        {
            self.adopt(victim.inode, &pending);
            return Ok(());
        }
        // A protected file past its share of the budget waits its turn.
        let pending = if pending.deletion.grabbed.is_some() && self.protected_share_spent() {
            let Some(pending) = self.defer_protected(pending) else { return Ok(()) };
            pending
        } else {
            pending
        };
        let grabbed = pending.deletion.grabbed.is_some();
        if !grabbed && (pending.deletion.over_budget || self.admission.budget.exhausted()) {
            // No snapshot can help: there is no descriptor to pin with
            // (unless unrm's reference keeps a protected file meanwhile).
            if let Some(pending) = self.defer_protected(pending) {
                self.not_pinned(None, Some(&pending), NotPinned::Budget);
            }
            return Ok(());
        }
        log::debug!(
            "{}: held {:?} (refs {:?}), pinned by handle: {grabbed}; waiting for a snapshot",
            pending.deletion.path.display(),
            held_hint,
            pending.deletion.victim.and_then(|v| v.refs),
        );
        self.pending.push(pending);
        Ok(())
    }

    pub(super) fn reconcile(&mut self) -> Result<()> {
        let snapshot = self.kernel.snapshot()?;
        self.figures.counters.scans += 1;
        self.reconcile_with(snapshot);
        Ok(())
    }

    pub(super) fn reconcile_with(&mut self, snapshot: Snapshot) {
        for pending in std::mem::take(&mut self.pending) {
            self.resolve(pending, &snapshot);
        }
        // Held files no event told us about: deleted before the daemon
        // started, on paths no probe covers, or lost events.
        for held in snapshot.files.values() {
            let known = self.pins.contains(&held.inode) || self.pins.refused(&held.inode).is_some();
            if !known && self.cfg.policy.wants(&held.path, Some(held.uid)) {
                self.pin(held, None, None);
            }
        }
        self.pins.retain_refused(|inode| snapshot.files.contains_key(inode));
        let mut finished = Vec::new();
        let mut changed = Vec::new();
        for (inode, pin) in self.pins.iter_mut() {
            match snapshot.files.get(inode) {
                Some(held) => {
                    pin.size = held.size;
                    if held.holds != pin.holding.holds {
                        pin.holding.holds = held.holds.clone();
                        pin.holding.others_held |=
                            pin.holding.holds.iter().any(|h| Some(h.pid) != pin.holding.deleter);
                        changed.push((
                            *inode,
                            pin.record,
                            holders_of(&pin.holding.holds),
                            charged_to(held.uid, &held.holds),
                        ));
                    }
                }
                None if !pin.capturing => finished.push(*inode),
                None => {}
            }
        }
        for (inode, record, holders, charged) in changed {
            self.index.set_holders(record, &holders);
            // Whoever keeps it alive now pays for it.
            if self.pins.recharge(&inode, charged) {
                self.index.set_charged_to(record, charged);
            }
        }
        for inode in finished {
            if let Err(err) = self.capture(inode) {
                self.fault("starting a capture", &err);
            }
        }
        self.retry_protected();
        self.sync_watches();
    }

    /// Decides what a deletion was, now that the snapshot says who holds what.
    fn resolve(&mut self, mut p: Pending, snapshot: &Snapshot) {
        if let Some(v) = p.deletion.victim
            && self.pins.contains(&v.inode)
        {
            // A sweep pinned it first.
            return self.adopt(v.inode, &p);
        }
        if p.deletion.grabbed.is_none() {
            // A protected file the reader could not pin by handle (tmpfs
            // opens only handles someone asked for): through unrm's own
            // reference instead, or it waits for a descriptor.
            p = match self.grab_protected(p) {
                Some(p) => p,
                None => return,
            };
        }
        let grab = p.deletion.grabbed.take();
        let found = match &p.deletion.victim {
            Some(v) => snapshot.files.get(&v.inode),
            None => snapshot
                .by_path(&p.deletion.path, |inode| {
                    self.pins.get(inode).is_some_and(|pin| !pin.holding.from_scan)
                })
                .or_else(|| snapshot.files.get(&self.pins.scanned_at(&p.deletion.path)?))
                .filter(|held| may_claim(p.deletion.uid, held)),
        };
        if let Some(held) = found {
            if self.pins.contains(&held.inode) {
                return self.adopt(held.inode, &p);
            }
            if self.pin(held, Some(&p), grab) {
                return;
            }
        } else if let (Some(grab), Some(v)) = (grab, p.deletion.victim) {
            // Its holders let go before the snapshot: unrm's pin is all
            // that is left of it, and the content is final. Who held it is
            // unknown, so it is not judged a scratch file, and the deleter
            // pays for it (`payer`).
            let held = held_file(v.inode, p.deletion.path.clone(), &grab.meta, Vec::new(), v.parent);
            if self.pin(&held, Some(&p), Some(grab)) {
                if let Some(pin) = self.pins.get_mut(&v.inode) {
                    pin.holding.others_held = true;
                }
                return;
            }
        }
        let found = found.is_some();
        let Some(p) = self.await_sweep(p) else { return };
        let d = &p.deletion;
        let status = match (&d.victim, p.held_hint, found) {
            (_, Some(true), _) | (_, _, true) => Status::Missed,
            (Some(_), _, _) => Status::Unheld,
            (None, _, _) if d.op == Op::Unlink => Status::Unheld,
            // A rename on a filesystem without hooks, over nothing held:
            // there is no telling whether it replaced a file at all.
            (None, _, _) => return,
        };
        let reason = (status == Status::Missed).then_some("released before unrm could pin it");
        if !self.admission.rate.allow(d.uid, self.cfg.policy.per_user.records_per_minute) {
            return;
        }
        match status {
            Status::Missed => self.figures.counters.missed += 1,
            _ => self.figures.counters.unheld += 1,
        }
        self.index.insert(deletion_record(d, p.deleted_at, status, reason));
    }

    /// A deletion whose inode is pinned already: if a scan pinned it first,
    /// the event tells the record who deleted it, when, and under what name.
    fn adopt(&mut self, inode: InodeId, p: &Pending) {
        let Some(pin) = self.pins.get_mut(&inode).filter(|pin| pin.holding.from_scan) else { return };
        let d = &p.deletion;
        pin.holding.from_scan = false;
        pin.place.path = d.path.clone();
        pin.holding.deleter = Some(d.pid);
        pin.holding.others_held = pin.holding.holds.iter().any(|h| h.pid != d.pid);
        let record = pin.record;
        self.index.set_deletion(record, &deletion_record(d, p.deleted_at, Status::Held, None));
    }

    /// Takes a pin on `held` (or keeps the one the reader took by handle,
    /// `grab`) and records it. Returns false if every hold had gone by the
    /// time unrm reached for it (true when it was recorded as not pinned,
    /// over a limit). Whom it is charged to is decided here, now that the
    /// snapshot names its holders.
    pub(super) fn pin(
        &mut self,
        held: &HeldFile,
        pending: Option<&Pending>,
        grab: Option<Box<Grab>>,
    ) -> bool {
        // A protected file's pin lasts only until its capture, and its tree
        // is bounded by the protect limits already.
        let protected = self.protection.is_protected(&held.inode);
        if let Some(why) = self
            .over_user_pins(payer(held.uid, &held.holds, pending.map(|p| p.deletion.uid)))
            .filter(|_| !protected)
        {
            self.not_pinned(Some(held), pending, why);
            return true;
        }
        let taken = match grab.filter(|g| g.meta.ino == held.inode.ino) {
            Some(grab) => {
                self.figures.counters.fast_pins += 1;
                Ok((grab.pin, grab.meta, grab.at_ns))
            }
            None => pins::take(held, &self.admission.budget).map(|(fd, meta)| (fd, meta, monotonic_ns())),
        };
        match taken {
            Ok((fd, meta, at_ns)) => {
                if let Some(p) = pending {
                    self.figures.pin_latency(at_ns.saturating_sub(p.deletion.ktime_ns));
                }
                self.add_pin(held, fd, &meta, pending);
                true
            }
            Err(Refused::Budget) => {
                self.not_pinned(Some(held), pending, NotPinned::Budget);
                true
            }
            Err(Refused::Gone(_)) => false,
        }
    }

    /// Why `uid` may not be charged another pin, if so (`per_user.pins`;
    /// root has no per-user limits).
    fn over_user_pins(&self, uid: u32) -> Option<NotPinned> {
        let cap = self.cfg.policy.per_user.pins.of(self.admission.budget.limit() as u64) as usize;
        let has = self.pins.charged_to(uid);
        (uid != 0 && has >= cap).then(|| {
            NotPinned::UserPins(format!(
                "uid {uid} is charged with {has} pinned files already (per_user.pins allows {cap})"
            ))
        })
    }

    /// Records a held file unrm would not pin, and why (within its
    /// deleter's `records_per_minute`).
    fn not_pinned(&mut self, held: Option<&HeldFile>, pending: Option<&Pending>, why: NotPinned) {
        let inode =
            held.map(|h| h.inode).or_else(|| pending.and_then(|p| p.deletion.victim.map(|v| v.inode)));
        // A snapshot recorded it first, while its event was on the way:
        // the event tells that record who deleted it, and where.
        if let (Some(record), Some(p)) = (inode.and_then(|i| self.pins.refused(&i)), pending) {
            let d = &p.deletion;
            self.index.set_deletion(record, &deletion_record(d, p.deleted_at, Status::Skipped, None));
            return;
        }
        if let Some(p) = pending
            && !self.admission.rate.allow(p.deletion.uid, self.cfg.policy.per_user.records_per_minute)
        {
            return;
        }
        let reason = match why {
            NotPinned::Budget => {
                self.figures.guards.over_budget += 1;
                if self.figures.guards.over_budget == 1 {
                    log::warn!(
                        "the descriptor budget ({} pins) is spent: held files are recorded as skipped \
                         until pins are let go (raise LimitNOFILE for more)",
                        self.admission.budget.limit()
                    );
                }
                format!(
                    "not pinned: unrm's descriptor budget ({} pins) is spent",
                    self.admission.budget.limit()
                )
            }
            NotPinned::UserPins(why) => {
                self.figures.guards.over_user_pins += 1;
                format!("not pinned: {why}")
            }
        };
        self.figures.counters.skipped += 1;
        let mut record = match pending {
            Some(p) => deletion_record(&p.deletion, p.deleted_at, Status::Skipped, Some(&reason)),
            None => {
                let path = held.map(|h| h.path.as_os_str().as_bytes().to_vec()).unwrap_or_default();
                Record { reason: Some(reason), ..Record::new(path, Op::Scan, Status::Skipped) }
            }
        };
        if let Some(held) = held {
            record.holders = holders_of(&held.holds);
            record.dev = Some(held.inode.dev);
            record.ino = Some(held.inode.ino);
            record.size = Some(held.size);
            record.mode = Some(held.mode);
            record.uid = Some(held.uid);
            record.gid = Some(held.gid);
            record.restore.parent = record.restore.parent.or(held.parent);
        }
        // Recorded once: later snapshots leave it be while it stays held
        // (first come, first kept).
        let id = self.index.insert(record);
        if let Some(inode) = inode {
            self.pins.refuse(inode, id);
        }
    }

    /// Records a new pin: from a deletion event, or (`pending` None) found
    /// by a scan at `held.path`; then has a file worker inspect it.
    fn add_pin(&mut self, held: &HeldFile, fd: PinFd, meta: &Meta, pending: Option<&Pending>) {
        let (inode, holds) = (held.inode, held.holds.clone());
        let mut record = match pending {
            Some(p) => deletion_record(&p.deletion, p.deleted_at, Status::Held, None),
            None => Record {
                // Checked by the file worker's inspection, as every pin's is.
                path_resolved: true,
                ..Record::new(held.path.as_os_str().as_bytes().to_vec(), Op::Scan, Status::Held)
            },
        };
        fill_meta(&mut record, inode, meta);
        record.holders = holders_of(&holds);
        let charged = payer(meta.uid, &holds, pending.map(|p| p.deletion.uid));
        record.charged_to = Some(charged);
        // A snapshot knows the directory where an event could not say.
        record.restore.parent = record.restore.parent.or(held.parent);
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(record.path_bytes()));
        let (path_resolved, parent) = (record.path_resolved, record.restore.parent);
        let id = self.index.insert(record);
        // A capture an earlier run made under this id belongs to a record
        // the index lost: it must not pass for this one's.
        let _ = self.storage.files.remove(id);
        self.figures.counters.pins += 1;
        log::info!(
            unrm_record = id, unrm_path:% = path.display(), unrm_status = "held", unrm_size = meta.size;
            "pinned {} ({} bytes) as record {id}", path.display(), meta.size
        );
        let deleter = pending.map(|p| p.deletion.pid);
        let others_held = holds.iter().any(|h| Some(h.pid) != deleter);
        let pin = Pin {
            fd: Arc::new(fd),
            record: id,
            charged,
            size: meta.size,
            capturing: false,
            place: Place { path, dev: meta.dev, parent },
            holding: Holding { holds, deleter, others_held, from_scan: pending.is_none() },
            acl: AclCache::default(),
            // unrm's own pin holds it now: the tree's reference can go.
            protected: self.protection.protector.shared.release(&inode).is_some(),
        };
        self.inspect(inode, &pin, path_resolved);
        self.pins.insert(inode, pin);
    }

    /// Has a file worker learn what the access check and a restore need.
    pub(super) fn inspect(&mut self, inode: InodeId, pin: &Pin, host_path: bool) {
        let (fd, budget, tx) = (pin.fd.clone(), self.admission.budget.clone(), self.workers.tx.clone());
        self.workers
            .lanes
            .run_first(inode.dev, jobs::open_pin(fd.clone(), budget, pin.record, inode, tx.clone()));
        let subject = jobs::Subject {
            record: pin.record,
            inode,
            path: pin.place.path.clone(),
            host_path,
            parent: pin.place.parent,
            dev: pin.place.dev,
        };
        let job = jobs::inspect(fd, subject, tx);
        self.workers.lanes.run(inode.dev, job);
    }

    /// Only our pin is left: the content is final. Copy it, then let go.
    pub(super) fn capture(&mut self, inode: InodeId) -> Result<()> {
        let pin = self.pins.get(&inode).expect("capturing a pinned inode");
        let (record, charged) = (pin.record, pin.charged);
        let size = Meta::of(pin.fd.as_fd()).map_or(pin.size, |m| m.size);
        let policy = &self.cfg.policy;
        // unrm held a protected file before its deletion: never a scratch file.
        let refused = if policy.scratch == Scratch::Ignore
            && !pin.holding.others_held
            && pin.holding.deleter.is_some()
            && !pin.protected
        {
            Some(
                "a scratch file: only the process that deleted it ever held it (scratch_files = \"ignore\")"
                    .into(),
            )
        } else if size > policy.max_file_size {
            Some(format!("{size} bytes is over the per-file cap of {} (max_file_size)", policy.max_file_size))
        } else {
            self.make_room(size, charged)?
        };
        if let Some(reason) = refused {
            self.figures.counters.skipped += 1;
            self.index.set_status(record, Status::Skipped, Some(&reason));
            self.unpin(&inode);
            return Ok(());
        }
        let pin = self.pins.get_mut(&inode).expect("still pinned");
        pin.capturing = true;
        let file = jobs::ToCapture { pin: pin.fd.clone(), record, inode, admitted: size };
        self.batches.add(inode.dev, file, pin.protected);
        Ok(())
    }

    pub(super) fn on_done(&mut self, done: Done) -> Result<()> {
        match done {
            Done::Opened { record, inode, pin: opened } => {
                if let Some(pin) = self.pins.get_mut(&inode).filter(|pin| pin.record == record) {
                    // The O_PATH descriptor goes once no file worker uses it.
                    pin.fd = Arc::new(opened);
                }
            }
            Done::Inspected { record, inode, found } => {
                if let Some(facts) = found.facts() {
                    self.index.set_access(record, &facts);
                }
                if !found.path_resolved {
                    self.index.set_path_resolved(record, false);
                }
                if let Some(pin) = self.pins.get_mut(&inode).filter(|pin| pin.record == record) {
                    pin.acl.entries = found.acl;
                }
            }
            Done::AclRead { inode, acl } => {
                if let Some(pin) = self.pins.get_mut(&inode) {
                    pin.acl.entries = acl;
                    pin.acl.asked = false;
                }
            }
            Done::Captured { record, inode, result, took, at } => {
                let pin = self.pins.get(&inode);
                let charged = pin.map_or(0, |pin| pin.charged);
                let protected = pin.filter(|pin| pin.protected).map(|pin| pin.place.path.clone());
                self.unpin(&inode);
                if !self.protection.waiting.is_empty() {
                    self.timers.recheck(std::time::Duration::ZERO);
                }
                match result {
                    Ok(captured) => {
                        self.figures.counters.captured += 1;
                        let stored = &captured.stored;
                        log::info!(
                            unrm_record = record, unrm_status = "captured", unrm_size = stored.size;
                            "captured record {record} ({} bytes, {:?}, {took:?})",
                            stored.size,
                            stored.method
                        );
                        self.index.mark_captured(record, stored.size, at);
                        self.index.set_xattrs(record, &captured.xattrs);
                        self.index.set_final_perms(record, &captured.perms);
                        self.storage.usage.add(record, charged, nanos(at), captured.cost);
                        let job = jobs::checksum(self.storage.files.clone(), record, self.workers.tx.clone());
                        self.workers.lanes.run(lanes::STORE, job);
                        if let Some(path) = protected {
                            self.keep_versions(record, &path)?;
                        }
                    }
                    Err(reason) => {
                        self.figures.counters.failed += 1;
                        log::warn!(
                            unrm_record = record, unrm_status = "failed", unrm_reason:% = reason;
                            "capture of record {record} failed: {reason}"
                        );
                        self.index.set_status(record, Status::Failed, Some(&reason));
                    }
                }
            }
            Done::Checksummed { record, checksum: Ok(sum) } => self.index.set_checksum(record, &sum),
            Done::Checksummed { record, checksum: Err(err) } => {
                log::warn!("checksumming record {record}: {err}");
            }
        }
        Ok(())
    }

    /// Points the kernel-side filters at what is pinned now.
    pub(super) fn sync_watches(&mut self) {
        let inodes: HashSet<InodeId> = self.pins.inodes().copied().collect();
        let tgids: HashSet<u32> = self
            .pins
            .iter()
            .filter(|(_, p)| !p.capturing)
            .flat_map(|(_, p)| p.holding.holds.iter().map(|h| h.pid))
            .collect();
        if self.kernel.watches.sync(inodes, tgids, &mut self.kernel.probes) {
            self.timers.recheck(RECHECK_DELAY);
        }
    }

    /// Lets go of a pin, the kernel-side watch first (see `Watches::forget_inode`).
    pub(super) fn unpin(&mut self, inode: &InodeId) {
        self.kernel.watches.forget_inode(inode);
        self.pins.remove(inode);
    }
}

/// Whom a pin of a file owned by `owner`, held through `holds`, counts
/// against: the owner, if one of its own processes holds the file; else the
/// user of a process that does (by real uid, as the probes read it: a
/// setuid program a user runs holds the file for that user). A user who
/// keeps someone else's deleted files alive pays for them, not their owner:
/// otherwise anyone able to read another user's files could use up that
/// user's pins, and with them evict that user's captures.
/// Whether a deletion that names only a path (no hook saw its inode) may be
/// taken for the deletion of `held`, found at that path: only if its
/// deleter is root, the owner or a holder. Anyone may create and delete a
/// file of the same name in `/tmp`; that must not rewrite who deleted
/// another user's file, nor when.
fn may_claim(deleter: u32, held: &HeldFile) -> bool {
    deleter == 0 || deleter == held.uid || held.holds.iter().any(|h| h.uid == deleter)
}

/// Whom a new pin counts against: as `charged_to` while anything holds the
/// file; once every holder let go before a snapshot could name them, the
/// deleter (whose uid the probes read), so that deleting someone else's
/// file and letting go of it at once charges oneself, not its owner. A
/// deleter nobody could name (fanotify gives a pid, and it may be gone) is
/// charged as `UNKNOWN_UID`, an account of its own with the per-user
/// limits of anyone: never the owner, whom that would let anyone charge.
fn payer(owner: u32, holds: &[Hold], deleter: Option<u32>) -> u32 {
    match deleter {
        Some(deleter) if holds.is_empty() => deleter,
        _ => charged_to(owner, holds),
    }
}

pub(super) fn charged_to(owner: u32, holds: &[Hold]) -> u32 {
    if holds.iter().any(|h| h.uid == owner) {
        return owner;
    }
    holds.first().map_or(owner, |h| h.uid)
}

fn held_file(
    inode: InodeId,
    path: PathBuf,
    meta: &Meta,
    holds: Vec<Hold>,
    parent: Option<Parent>,
) -> HeldFile {
    HeldFile { inode, path, size: meta.size, mode: meta.mode, uid: meta.uid, gid: meta.gid, holds, parent }
}

fn deleter(d: &Deletion) -> Deleter {
    Deleter {
        pid: d.pid,
        uid: d.uid,
        comm: d.comm.clone(),
        path: d.seen_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
        cgroup: None,
        container: None,
    }
    .in_cgroup(d.cgroup.as_deref().map(str::to_owned))
}

pub(super) fn deletion_record(d: &Deletion, at: SystemTime, status: Status, reason: Option<&str>) -> Record {
    let v = d.victim.as_ref();
    let mut record = Record::new(d.path.as_os_str().as_bytes().to_vec(), d.op, status);
    record.path_resolved = d.host_path && d.path_complete;
    // Only a record with content is ever restored into its directory.
    record.restore.parent = v.and_then(|v| v.parent).filter(|_| status == Status::Held);
    record.dev = v.map(|v| v.inode.dev);
    record.ino = v.map(|v| v.inode.ino);
    record.size = v.map(|v| v.size);
    record.mode = v.map(|v| v.mode);
    record.uid = v.map(|v| v.uid);
    record.gid = v.map(|v| v.gid);
    record.deleted_at = at;
    record.deleted_by = Some(deleter(d));
    record.reason = reason.map(str::to_owned);
    record
}

fn fill_meta(record: &mut Record, inode: InodeId, meta: &Meta) {
    record.dev = Some(meta.dev);
    record.ino = Some(inode.ino);
    record.size = Some(meta.size);
    record.mode = Some(meta.mode);
    record.uid = Some(meta.uid);
    record.gid = Some(meta.gid);
    record.restore.atime_ns = Some(meta.atime_ns);
    record.restore.mtime_ns = Some(meta.mtime_ns);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{holders::HolderKind, ingest::UNKNOWN_UID};

    fn hold(uid: u32) -> Hold {
        Hold { kind: HolderKind::Fd, pid: 7, uid, comm: "holder".into(), fd: 3, vm_start: 0, vm_end: 0 }
    }

    #[test]
    fn a_pin_is_paid_by_its_holders_then_its_deleter_then_its_owner() {
        let (owner, reader, deleter) = (1000, 1001, 1002);
        // The owner's own process holds it: the owner pays.
        assert_eq!(payer(owner, &[hold(reader), hold(owner)], Some(deleter)), owner);
        // Only someone else holds it: that someone.
        assert_eq!(payer(owner, &[hold(reader)], Some(deleter)), reader);
        // Every holder let go before a snapshot named them: the deleter,
        // never the owner (deleting and closing another's file at once).
        assert_eq!(payer(owner, &[], Some(deleter)), deleter);
        // A deleter nobody could name pays as the unknown account.
        assert_eq!(payer(owner, &[], Some(UNKNOWN_UID)), UNKNOWN_UID);
        // A file a snapshot found, with no deletion known.
        assert_eq!(payer(owner, &[], None), owner);
    }

    #[test]
    fn only_root_the_owner_or_a_holder_may_claim_a_file_by_its_path() {
        let (owner, reader, stranger) = (1000, 1001, 1002);
        let held = HeldFile {
            inode: InodeId { dev: 1, ino: 2 },
            path: "/tmp/x".into(),
            size: 1,
            mode: 0o100644,
            uid: owner,
            gid: owner,
            holds: vec![hold(reader)],
            parent: None,
        };
        assert!(may_claim(0, &held) && may_claim(owner, &held) && may_claim(reader, &held));
        assert!(!may_claim(stranger, &held), "anyone can delete a file of that name in /tmp");
    }
}
