//! The kernel-side watches: which inodes and holder processes the release
//! probes filter on, the holders' pidfds, and whether the release probes
//! are attached at all (only while some pinned file still has holders).
//!
//! A watch is a hint, never the truth: when a map is full (any user can
//! make many processes hold many files) the inode or process goes
//! unwatched, which is counted and logged, and its release is noticed by
//! the next snapshot instead.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;
use unrm_abi::InodeKey;

use crate::{
    daemon::exits::Watch,
    holders::InodeId,
    probe::{Probes, Tier, WatchMaps},
};

/// How long the release probes stay attached with nothing to watch, so
/// that pins coming and going do not attach and detach them each time.
const RELEASE_LINGER: Duration = Duration::from_secs(5);

pub struct Watches {
    maps: WatchMaps,
    /// What the probes' maps hold.
    inodes: HashSet<InodeId>,
    tgids: HashSet<u32>,
    /// Holders whose exit is watched (by pidfd, within its share).
    exit_watched: HashSet<u32>,
    /// Pins changed since the kernel-side filters were last updated.
    pub stale: bool,
    /// Since when no pinned file has had holders (release probes idle).
    release_idle_since: Option<Instant>,
    exits: UnboundedSender<Watch>,
    /// Inserts a full map refused.
    pub full: u64,
    /// Release probes that could not be attached or detached.
    pub attach_errors: u64,
}

impl Watches {
    pub fn new(maps: WatchMaps, exits: UnboundedSender<Watch>) -> Self {
        Watches {
            maps,
            inodes: HashSet::new(),
            tgids: HashSet::new(),
            exit_watched: HashSet::new(),
            stale: false,
            release_idle_since: None,
            exits,
            full: 0,
            attach_errors: 0,
        }
    }

    /// Points the kernel-side filters at `inodes` and `tgids`, watches every
    /// holder's exit, and keeps the release probes attached only while some
    /// pinned file still has holders. Returns true when the release probes
    /// were just attached: a release since the last snapshot went unseen.
    pub fn sync(&mut self, inodes: HashSet<InodeId>, tgids: HashSet<u32>, probes: &mut Probes) -> bool {
        self.stale = false;
        for gone in self.inodes.difference(&inodes) {
            let _ = self.maps.inodes.remove(&inode_key(gone));
        }
        let mut watched = HashSet::with_capacity(inodes.len());
        let mut refused = 0;
        for inode in inodes {
            if self.inodes.contains(&inode) || self.maps.inodes.insert(inode_key(&inode), 1, 0).is_ok() {
                watched.insert(inode);
            } else {
                refused += 1;
            }
        }
        self.inodes = watched;
        for gone in self.exit_watched.difference(&tgids) {
            let _ = self.exits.send(Watch::Stop(*gone));
        }
        for new in tgids.difference(&self.exit_watched) {
            let _ = self.exits.send(Watch::Start(*new));
        }
        self.exit_watched.clone_from(&tgids);
        for gone in self.tgids.difference(&tgids) {
            let _ = self.maps.tgids.remove(gone);
        }
        let mut watched = HashSet::with_capacity(tgids.len());
        for tgid in tgids {
            if self.tgids.contains(&tgid) || self.maps.tgids.insert(tgid, 1, 0).is_ok() {
                watched.insert(tgid);
            } else {
                refused += 1;
            }
        }
        let had_holders = !watched.is_empty() || refused > 0;
        self.tgids = watched;
        if refused > 0 {
            if self.full == 0 {
                log::warn!(
                    "the probes' watch tables are full: {refused} pinned files or holders are watched by \
                     snapshots only (every --rescan-interval)"
                );
            }
            self.full += refused;
        }
        if had_holders {
            self.release_idle_since = None;
        } else if self.release_idle_since.get_or_insert_with(Instant::now).elapsed() >= RELEASE_LINGER
            && let Err(err) = probes.detach_release()
        {
            self.attach_errors += 1;
            log::warn!("detaching the release probes: {err:#}");
        }
        // Attached only while something is watched: every close on the
        // machine runs them. The fs tier has none (they would be syscall
        // tracepoints, putting every task back on the slow path): there,
        // exits (pidfds) and snapshots decide alone; a close is noticed by
        // the next snapshot, and the pin keeps the content safe until then.
        if had_holders && probes.tier() != Tier::Fs && !probes.release_attached() {
            return match probes.attach_release() {
                Ok(attached) => attached,
                Err(err) => {
                    self.attach_errors += 1;
                    log::warn!("attaching the release probes: {err:#}; releases are noticed by snapshots");
                    false
                }
            };
        }
        false
    }

    /// Stops watching `inode` at once. Once unrm's reference is dropped the
    /// inode may be freed and its number given to a new file, which a stale
    /// watch would hide from the iterators' paths and the release probes'
    /// filters: so this goes first, before the pin.
    pub fn forget_inode(&mut self, inode: &InodeId) {
        if self.inodes.remove(inode) {
            let _ = self.maps.inodes.remove(&inode_key(inode));
        }
        self.stale = true;
    }
}

fn inode_key(inode: &InodeId) -> InodeKey {
    InodeKey { dev: inode.kernel_dev(), _pad: 0, ino: inode.ino }
}
