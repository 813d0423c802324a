//! The decisions: what a deletion was, when to pin, when only our pin is
//! left and the content can be captured. Every one of them is taken against
//! a snapshot of the kernel's state or through a descriptor the probe named.

use std::{
    fs::File,
    os::unix::ffi::OsStrExt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use super::{Engine, LATENCY_SAMPLES, Pending, Pin, capture, monotonic_ns};
use crate::{
    holders::{HeldFile, Hold, HolderKind, InodeId, Snapshot},
    index::NewRecord,
    ingest::{DeleteOp, Deletion},
    pins::{self, Meta},
    policy::Scratch,
    record::{Deleter, Status, holders_of},
};

impl Engine {
    pub(super) fn on_deletion(&mut self, d: Deletion) -> Result<()> {
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
        if !self.cfg.policy.wants(&d.path, d.victim.map(|v| v.uid)) {
            self.counters.ignored += 1;
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
    /// snapshot follows once fast pins pause, to learn every holder.
    pub(super) fn pin_through_probe_holder(&mut self, p: &mut Pending) -> Result<bool> {
        let Some(grab) = p.deletion.grabbed.take() else { return Ok(false) };
        let Some(victim) = p.deletion.victim else { return Ok(false) };
        let Some((pid, fd)) = victim.holder else { return Ok(false) };
        if self.pins.contains_key(&victim.inode) {
            self.adopt(victim.inode, p)?;
            return Ok(true);
        }
        let Ok((file, meta)) = pins::open_grabbed(&grab.handle) else { return Ok(false) };
        self.record_latency(grab.at_ns.saturating_sub(p.deletion.ktime_ns));
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let hold =
            Hold { kind: HolderKind::Fd, pid, comm: comm.trim_end().to_owned(), fd, vm_start: 0, vm_end: 0 };
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
        self.want_holders();
        Ok(true)
    }

    pub(super) fn reconcile(&mut self) -> Result<()> {
        let snapshot = Snapshot::take(&mut self.probes)?;
        self.counters.scans += 1;
        self.reconcile_with(snapshot)
    }

    pub(super) fn reconcile_with(&mut self, snapshot: Snapshot) -> Result<()> {
        for pending in std::mem::take(&mut self.pending) {
            self.resolve(pending, &snapshot)?;
        }
        // Held files no event told us about: deleted before the daemon
        // started, on paths no probe covers, or lost events.
        for held in snapshot.files.values() {
            if !self.pins.contains_key(&held.inode) && self.cfg.policy.wants(&held.path, Some(held.uid)) {
                self.pin(held, None)?;
            }
        }
        let mut finished = Vec::new();
        for (inode, pin) in &mut self.pins {
            match snapshot.files.get(inode) {
                Some(held) if held.holds != pin.holds => {
                    pin.holds = held.holds.clone();
                    pin.others_held |= pin.holds.iter().any(|h| Some(h.pid) != pin.deleter);
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
    pub(super) fn resolve(&mut self, p: Pending, snapshot: &Snapshot) -> Result<()> {
        let found = match &p.deletion.victim {
            Some(v) => snapshot.files.get(&v.inode),
            None => snapshot.by_path(&p.deletion.path, |inode| {
                self.pins.contains_key(inode) && !self.pins[inode].from_scan
            }),
        };
        if let Some(held) = found {
            if self.pins.contains_key(&held.inode) {
                return self.adopt(held.inode, &p);
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

    /// A deletion whose inode is pinned already: if a scan pinned it first,
    /// the event tells the record who deleted it, when, and under what name.
    fn adopt(&mut self, inode: InodeId, p: &Pending) -> Result<()> {
        let Some(pin) = self.pins.get_mut(&inode).filter(|pin| pin.from_scan) else { return Ok(()) };
        let d = &p.deletion;
        pin.from_scan = false;
        pin.path = d.path.clone();
        pin.deleter = Some(d.pid);
        pin.others_held = pin.holds.iter().any(|h| h.pid != d.pid);
        self.index.set_deletion(
            pin.record,
            d.path.as_os_str().as_bytes(),
            p.deleted_at,
            &deleter(d),
            op_name(d.op),
        )
    }

    /// Takes a pin on `held` and records it. Returns false if every hold had
    /// gone by the time unrm reached for it.
    pub(super) fn pin(&mut self, held: &HeldFile, pending: Option<&Pending>) -> Result<bool> {
        let Some((file, meta)) = pins::take(held) else { return Ok(false) };
        if let Some(p) = pending {
            self.record_latency(monotonic_ns().saturating_sub(p.deletion.ktime_ns));
        }
        self.add_pin(held, file, &meta, pending)?;
        Ok(true)
    }

    pub(super) fn record_latency(&mut self, ns: u64) {
        if self.latencies_ns.len() == LATENCY_SAMPLES {
            self.latencies_ns.pop_front();
        }
        self.latencies_ns.push_back(ns);
    }

    /// Records a new pin: from a deletion event, or (`pending` None) found
    /// by a scan at `held.path`.
    pub(super) fn add_pin(
        &mut self,
        held: &HeldFile,
        file: File,
        meta: &Meta,
        pending: Option<&Pending>,
    ) -> Result<()> {
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
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&record.path));
        let deleter = pending.map(|p| p.deletion.pid);
        let others_held = holds.iter().any(|h| Some(h.pid) != deleter);
        let pin = Pin {
            file,
            record: id,
            path,
            deleter,
            others_held,
            holds,
            from_scan: pending.is_none(),
            capturing: false,
        };
        self.pins.insert(inode, pin);
        Ok(())
    }

    /// Only our pin is left: the content is final. Copy it, then let go.
    pub(super) fn capture(&mut self, inode: InodeId) -> Result<()> {
        let pin = self.pins.get(&inode).expect("capturing a pinned inode");
        let (record, size) = (pin.record, pin.file.metadata()?.len());
        let policy = &self.cfg.policy;
        let refused = if policy.scratch == Scratch::Ignore && !pin.others_held && pin.deleter.is_some() {
            Some(
                "a scratch file: only the process that deleted it ever held it (scratch_files = \"ignore\")"
                    .into(),
            )
        } else if size > policy.max_file_size {
            Some(format!("{size} bytes is over the per-file cap of {} (max_file_size)", policy.max_file_size))
        } else {
            self.make_room(size)?
        };
        if let Some(reason) = refused {
            self.counters.skipped += 1;
            self.index.set_status(record, Status::Skipped, Some(&reason))?;
            self.unpin(&inode);
            return Ok(());
        }
        let pin = self.pins.get_mut(&inode).expect("still pinned");
        let job = capture::Job { record, inode, file: pin.file.try_clone()?, size };
        pin.capturing = true;
        self.captures.send(job).context("the capture worker stopped")?;
        Ok(())
    }

    pub(super) fn on_captured(&mut self, done: capture::Done) -> Result<()> {
        match done {
            capture::Done::Captured { record, inode, result, took, at } => {
                self.unpin(&inode);
                match result {
                    Ok(stored) => {
                        self.counters.captured += 1;
                        log::info!(
                            "captured record {record} ({} bytes, {:?}, {took:?})",
                            stored.size,
                            stored.method
                        );
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
}

fn deleter(d: &Deletion) -> Deleter {
    Deleter {
        pid: d.pid,
        uid: d.uid,
        comm: d.comm.clone(),
        path: d.seen_path.as_ref().map(|p| p.to_string_lossy().into_owned()),
    }
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
    record.xattrs.clone_from(&meta.xattrs);
}

/// The wall-clock time of a kernel monotonic timestamp.
fn wall_time_of(ktime_ns: u64) -> SystemTime {
    let ago = monotonic_ns().saturating_sub(ktime_ns);
    SystemTime::now() - Duration::from_nanos(ago)
}
