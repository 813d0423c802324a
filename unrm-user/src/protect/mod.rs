//! Protected trees: unrm's own reference to every regular file under a
//! directory a user chose, so that a deletion there is the deletion of a
//! held file, and the content outlives `rm` even when nothing else held it.
//!
//! Each reference is an `O_PATH` descriptor: it opens nothing (no device
//! or FUSE `->open`, no access time), costs a `struct file` of kernel
//! memory, and holds the file's dentry, so the probes see the deletion as
//! held and the reader pins it by handle. Because the references live in
//! unrm's own process (`keeper`), no snapshot counts them as holders: the
//! engine finds unrm alone holding the file and captures it at once, then
//! lets the reference go (`Shared::release`).
//!
//! The parts: `keeper` holds the descriptors, `walk` finds the files of a
//! tree, `trees` says which trees may be protected and remembers them,
//! `worker` is the thread that walks, follows new names (fanotify inode
//! marks on the tree's directories: a creation elsewhere costs nothing)
//! and sweeps for deletions no probe reported (the link count is the
//! truth). This module owns what the engine asks of them.

mod keeper;
mod trees;
mod walk;
mod worker;

use std::{
    collections::HashMap,
    ffi::CString,
    os::fd::{BorrowedFd, RawFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use serde::{Deserialize, Serialize};

pub(crate) use self::keeper::Keeper;
pub use self::worker::{Ask, Gone, Protector, Settings};
use crate::holders::InodeId;

/// What `unrm protect --list` shows of one tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeView {
    pub path: String,
    /// Who asked for it (0 for the config file's).
    pub uid: u32,
    /// `config` (the policy's `protect`) or `user` (`unrm protect`).
    pub source: String,
    /// `protected`, `not mounted` (it will be again once its filesystem is
    /// back), or `refused` (see `why`).
    pub state: String,
    /// Files referenced now.
    pub files: u64,
    /// Files left out by the policy's exclude globs at the last walk.
    pub excluded: u64,
    /// Files unrm could not protect, and why (a limit, usually).
    pub not_protected: u64,
    #[serde(default)]
    pub why: Option<String>,
    /// The filesystem's type.
    #[serde(default)]
    pub fstype: String,
}

/// Where one protected file's reference is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    keeper: usize,
    fd: RawFd,
    tree: u64,
    /// Deleted, and the engine knows: sweeps leave it out.
    claimed: bool,
}

/// A keeper and how many references it holds.
struct Held {
    keeper: Keeper,
    used: usize,
}

/// What the engine and the worker share: which inodes are protected and
/// where their references are. Locked briefly; never across a call that
/// may wait on a filesystem.
#[derive(Default)]
pub struct Shared {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    files: HashMap<InodeId, Slot>,
    keepers: Vec<Held>,
    /// Per tree: its path and owner, and how many files it has.
    trees: HashMap<u64, Covered>,
}

struct Covered {
    path: PathBuf,
    uid: u32,
    files: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lets go of unrm's reference to `inode` (unrm has pinned it, or it is
    /// gone); returns the path of the tree it was protected under.
    pub fn release(&self, inode: &InodeId) -> Option<PathBuf> {
        let mut table = self.lock();
        let slot = table.files.remove(inode)?;
        table.drop_slot(slot);
        table.trees.get(&slot.tree).map(|t| t.path.clone())
    }

    /// The /proc link through which `inode`'s reference can be pinned.
    pub fn link(&self, inode: &InodeId) -> Option<PathBuf> {
        let table = self.lock();
        let slot = table.files.get(inode)?;
        Some(table.keepers[slot.keeper].keeper.link(slot.fd))
    }

    /// Marks `inode`'s deletion as known to the engine (it waits for a
    /// descriptor): sweeps no longer report it. False if not protected.
    pub fn claim(&self, inode: &InodeId) -> bool {
        self.lock().files.get_mut(inode).map(|slot| slot.claimed = true).is_some()
    }

    /// The protected tree `path` is in, if any.
    pub fn tree_of(&self, path: &Path) -> Option<PathBuf> {
        let table = self.lock();
        table.trees.values().find(|t| path.starts_with(&t.path)).map(|t| t.path.clone())
    }

    /// Has keepers open and keep the regular files among `names` in `dir`
    /// for `tree`, on the filesystem the kernel calls `dev`; an inode kept
    /// already (another name of it) is kept once; in a user's tree (`owner`)
    /// only that user's files.
    fn keep(
        &self,
        dir: BorrowedFd,
        mut names: Vec<CString>,
        tree: u64,
        dev: u64,
        owner: Option<u32>,
    ) -> std::io::Result<()> {
        while !names.is_empty() {
            let (k, keeper, room) = self.keeper_with_room()?;
            let rest = names.split_off(room.min(names.len()));
            let kept = keeper.keep(dir, std::mem::replace(&mut names, rest))?;
            let mut table = self.lock();
            let mut unwanted = Vec::new();
            for kept in kept {
                let inode = InodeId { dev, ino: kept.meta.ino };
                // Another user's file in a user's tree is not the tree
                // owner's to keep: its captures would count against its
                // own owner's share of the store.
                if table.files.contains_key(&inode) || owner.is_some_and(|uid| uid != kept.meta.uid) {
                    unwanted.push(kept.fd);
                    continue;
                }
                table.files.insert(inode, Slot { keeper: k, fd: kept.fd, tree, claimed: false });
                table.keepers[k].used += 1;
                if let Some(t) = table.trees.get_mut(&tree) {
                    t.files += 1;
                }
            }
            keeper.close(unwanted);
        }
        Ok(())
    }

    /// A keeper with room for more, started if none has; and how much.
    fn keeper_with_room(&self) -> std::io::Result<(usize, Keeper, usize)> {
        let mut table = self.lock();
        if let Some((k, held)) = table.keepers.iter().enumerate().find(|(_, h)| h.used < h.keeper.capacity) {
            return Ok((k, held.keeper.clone(), held.keeper.capacity - held.used));
        }
        let keeper = Keeper::spawn(table.keepers.len())?;
        let room = keeper.capacity;
        table.keepers.push(Held { keeper: keeper.clone(), used: 0 });
        Ok((table.keepers.len() - 1, keeper, room))
    }

    /// Files protected now, and trees being protected.
    pub fn totals(&self) -> (u64, u64) {
        let table = self.lock();
        (table.files.len() as u64, table.trees.len() as u64)
    }

    /// Files protected now, in all and for `uid`.
    fn counts(&self, uid: u32) -> (usize, usize) {
        let table = self.lock();
        let mine = table.trees.values().filter(|t| t.uid == uid).map(|t| t.files).sum();
        (table.files.len(), mine)
    }
}

impl Table {
    fn drop_slot(&mut self, slot: Slot) {
        let held = &mut self.keepers[slot.keeper];
        held.used -= 1;
        held.keeper.close(vec![slot.fd]);
        if let Some(tree) = self.trees.get_mut(&slot.tree) {
            tree.files -= 1;
        }
    }

    /// Lets go of every reference of `tree`, and forgets it.
    fn drop_tree(&mut self, tree: u64) {
        let slots: Vec<(InodeId, Slot)> =
            self.files.iter().filter(|(_, s)| s.tree == tree).map(|(i, s)| (*i, *s)).collect();
        let mut by_keeper: HashMap<usize, Vec<RawFd>> = HashMap::new();
        for (inode, slot) in slots {
            self.files.remove(&inode);
            self.keepers[slot.keeper].used -= 1;
            by_keeper.entry(slot.keeper).or_default().push(slot.fd);
        }
        for (k, fds) in by_keeper {
            self.keepers[k].keeper.close(fds);
        }
        self.trees.remove(&tree);
    }
}

/// The shared table as the engine sees it.
pub type Protected = Arc<Shared>;
