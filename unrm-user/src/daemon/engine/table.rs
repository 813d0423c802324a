//! The engine's pins: unrm's references to deleted inodes, by inode and by
//! record, and how many each user is charged with (per-user limits count
//! them).

use std::collections::HashMap;

use crate::{holders::InodeId, pins::Pin};

#[derive(Default)]
pub struct PinTable {
    by_inode: HashMap<InodeId, Pin>,
    by_record: HashMap<i64, InodeId>,
    per_user: HashMap<u32, usize>,
    /// Held files a scan found and unrm recorded as not pinned (over a
    /// limit): recorded once, not at every scan while they stay held.
    refused: HashMap<InodeId, i64>,
}

impl PinTable {
    pub fn insert(&mut self, inode: InodeId, pin: Pin) {
        *self.per_user.entry(pin.charged).or_default() += 1;
        self.by_record.insert(pin.record, inode);
        if let Some(old) = self.by_inode.insert(inode, pin) {
            self.forget(&old);
        }
    }

    /// Charges `inode`'s pin to `uid` from now on; whether that changed it.
    pub fn recharge(&mut self, inode: &InodeId, uid: u32) -> bool {
        let Some(pin) = self.by_inode.get_mut(inode) else { return false };
        if pin.charged == uid {
            return false;
        }
        let was = std::mem::replace(&mut pin.charged, uid);
        *self.per_user.entry(uid).or_default() += 1;
        if let Some(n) = self.per_user.get_mut(&was) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&was);
            }
        }
        true
    }

    pub fn remove(&mut self, inode: &InodeId) -> Option<Pin> {
        let pin = self.by_inode.remove(inode)?;
        self.forget(&pin);
        Some(pin)
    }

    fn forget(&mut self, pin: &Pin) {
        self.by_record.remove(&pin.record);
        if let Some(n) = self.per_user.get_mut(&pin.charged) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&pin.charged);
            }
        }
    }

    pub fn get(&self, inode: &InodeId) -> Option<&Pin> {
        self.by_inode.get(inode)
    }

    pub fn get_mut(&mut self, inode: &InodeId) -> Option<&mut Pin> {
        self.by_inode.get_mut(inode)
    }

    pub fn contains(&self, inode: &InodeId) -> bool {
        self.by_inode.contains_key(inode)
    }

    /// The pin of record `id`, and its inode.
    pub fn of_record(&self, id: i64) -> Option<(InodeId, &Pin)> {
        let inode = self.by_record.get(&id)?;
        Some((*inode, &self.by_inode[inode]))
    }

    /// Pins charged to `uid`.
    pub fn charged_to(&self, uid: u32) -> usize {
        self.per_user.get(&uid).copied().unwrap_or(0)
    }

    /// The one pin a snapshot took (no event yet) of a file last seen at
    /// `path`. Snapshots leave the paths of pinned files out (the daemon
    /// knows them), so an event that names only a path is matched here.
    pub fn scanned_at(&self, path: &std::path::Path) -> Option<InodeId> {
        let mut found =
            self.by_inode.iter().filter(|(_, pin)| pin.holding.from_scan && pin.place.path == path);
        let (inode, _) = found.next()?;
        found.next().is_none().then_some(*inode)
    }

    pub fn len(&self) -> usize {
        self.by_inode.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InodeId, &Pin)> {
        self.by_inode.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&InodeId, &mut Pin)> {
        self.by_inode.iter_mut()
    }

    pub fn inodes(&self) -> impl Iterator<Item = &InodeId> {
        self.by_inode.keys()
    }

    /// The record of `inode` if it was already recorded as refused.
    pub fn refused(&self, inode: &InodeId) -> Option<i64> {
        self.refused.get(inode).copied()
    }

    pub fn refuse(&mut self, inode: InodeId, record: i64) {
        self.refused.insert(inode, record);
    }

    /// Keeps refusals only for files still held.
    pub fn retain_refused(&mut self, still_held: impl Fn(&InodeId) -> bool) {
        self.refused.retain(|inode, _| still_held(inode));
    }
}
