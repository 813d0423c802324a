//! Pointing the kernel-side filters at what is pinned: the inodes and
//! holder processes the release probes watch, the holders' pidfds, and the
//! release probes themselves, attached only while there is something to
//! watch.

use std::{collections::HashSet, time::Instant};

use anyhow::Result;
use unrm_abi::InodeKey;

use super::{Engine, RECHECK_DELAY, RELEASE_LINGER};
use crate::{holders::InodeId, probe::Tier};

impl Engine {
    /// Points the kernel-side filters at what is pinned now, watches every
    /// holder's exit, and keeps the release probes attached only while some
    /// pinned file still has holders.
    pub(super) fn sync_watches(&mut self) -> Result<()> {
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
        // The release probes are syscall tracepoints: in the fs tier they
        // would put every task back on the slow path whenever anything is
        // pinned. There, exits (pidfds) and snapshots decide alone; a close
        // is noticed by the next snapshot, and the pin keeps the content
        // safe until then.
        if !tgids.is_empty() && self.probes.tier() == Tier::Tracepoint && !self.probes.release_attached() {
            self.probes.attach_release()?;
            // A release between the snapshot and now went unseen: look again.
            self.schedule_recheck(RECHECK_DELAY);
        }
        self.watched_tgids = tgids;
        Ok(())
    }
}

impl Engine {
    /// Lets go of a pin. The kernel-side watch goes first: once unrm's
    /// reference is dropped the inode may be freed and its number given to
    /// a new file at once, which a stale watch would hide from the
    /// iterators' paths and the release probes' filters.
    pub(super) fn unpin(&mut self, inode: &InodeId) {
        if self.watched_inodes.remove(inode) {
            let _ = self.watch.inodes.remove(&inode_key(inode));
        }
        self.pins.remove(inode);
        self.watches_stale = true;
    }
}

fn inode_key(inode: &InodeId) -> InodeKey {
    InodeKey { dev: inode.kernel_dev(), _pad: 0, ino: inode.ino }
}
