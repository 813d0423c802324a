//! Keeping up with a protected tree: walking it, taking in the names that
//! appear in it, and sweeping for files that lost their last name while no
//! probe looked (a filesystem the probes cover only by snapshots, or an
//! event lost): a kept reference whose link count is 0 is a deletion.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::{
        fd::{AsFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
};

use super::{Gone, Worker, name_of, path_of};
use crate::{
    handle,
    holders::InodeId,
    notify::Notice,
    protect::walk::{Counts, Walker},
};

/// Bytes read from a tree's fanotify group at once, and reads per turn.
const READ_BUF: usize = 64 * 1024;
const READS_PER_TURN: usize = 8;

impl Worker {
    /// Walks the directory at `rel` in tree `id`. A `full` walk starts the
    /// tree's counts afresh.
    pub(super) fn walk(&mut self, id: u64, rel: PathBuf, full: bool) {
        let counts = self.walk_counting(id, |walker| walker.walk(rel, None));
        let tree = self.trees.get_mut(&id).expect("a known tree");
        if full {
            tree.counts = counts;
        } else {
            tree.counts.excluded += counts.excluded;
            tree.counts.not_protected += counts.not_protected;
            tree.counts.why = counts.why.or(tree.counts.why.take());
        }
    }

    /// Runs `f` with a walker for tree `id`; what it counted.
    fn walk_counting(&self, id: u64, f: impl FnOnce(&mut Walker)) -> Counts {
        let tree = &self.trees[&id];
        let Some(live) = tree.live.as_ref() else { return Counts::default() };
        let (uid, settings, shared) = (tree.uid, &self.settings, &self.shared);
        let root_path = tree.path.as_path();
        let room = || {
            let (all, mine) = shared.counts(uid);
            let this = shared.lock().trees.get(&id).map_or(0, |c| c.files);
            let mut limits = vec![
                (
                    settings.max_files.saturating_sub(all),
                    format!("protect_max_files ({})", settings.max_files),
                ),
                (
                    settings.max_tree_files.saturating_sub(this),
                    format!("protect_max_tree_files ({})", settings.max_tree_files),
                ),
            ];
            if uid != 0 {
                let cap = settings.per_user_files;
                limits.push((
                    cap.saturating_sub(mine),
                    format!("per_user.protected_files ({cap}) of uid {uid}"),
                ));
            }
            let (room, what) = limits.into_iter().min_by_key(|(room, _)| *room).expect("limits");
            (room, format!("over the limit of {what}"))
        };
        let mut walker = Walker {
            shared,
            tree: id,
            root: live.root.as_fd(),
            root_path,
            sb_dev: live.sb_dev,
            group: &live.group,
            owner: (uid != 0).then_some(uid),
            excluded: &*settings.excluded,
            room: &room,
            counts: Counts::default(),
        };
        f(&mut walker);
        walker.counts
    }

    /// Takes in the names that appeared in tree `id`'s directories, a
    /// bounded number of reads at a time: the other trees get their turn.
    pub(super) fn read_names(&mut self, id: u64) {
        let mut buf = vec![0u8; READ_BUF];
        for _ in 0..READS_PER_TURN {
            let Some(live) = self.trees.get(&id).and_then(|t| t.live.as_ref()) else { return };
            let notices = match live.group.read(&mut buf) {
                Ok(notices) if notices.is_empty() => return,
                Ok(notices) => notices,
                Err(err) => {
                    log::error!("protect: reading fanotify: {err}");
                    return;
                }
            };
            for notice in notices {
                match notice {
                    Notice::Appeared(a) => self.appeared(id, &a.dir, &a.name, a.is_dir),
                    // Names were missed: walk the whole tree again (what is
                    // kept already is kept once).
                    Notice::Lost => self.rewalk(id),
                    Notice::Deleted(_) => {}
                }
            }
        }
    }

    fn rewalk(&mut self, id: u64) {
        let tree = self.trees.get_mut(&id).expect("a known tree");
        // A storm of names that keeps overflowing the queue gets one walk
        // per sweep period, not one per read.
        if tree.rewalked.is_some_and(|at| at.elapsed() < self.sweep_every) {
            tree.rewalk_due = true;
            return;
        }
        tree.rewalk_due = false;
        tree.rewalked = Some(std::time::Instant::now());
        log::warn!("protect: fanotify's queue overflowed; walking {} again", tree.path.display());
        self.walk(id, PathBuf::new(), true);
    }

    /// A name appeared in directory `dir` (a handle) of tree `id`.
    fn appeared(&mut self, id: u64, dir: &[u8], name: &[u8], is_dir: bool) {
        let tree = &self.trees[&id];
        let Some(live) = tree.live.as_ref() else { return };
        let Ok(dir_fd) = handle::open_encoded(live.root.as_fd(), dir) else { return };
        let dir_path =
            path_of(&PathBuf::from(format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&dir_fd))));
        // A directory moved out of the tree keeps its mark for a while.
        let (Some(name), true) = (name_of(name), dir_path.starts_with(&tree.path)) else { return };
        let child = dir_path.join(OsStr::from_bytes(name.as_bytes()));
        let tree_path = tree.path.clone();
        let counts = self.walk_counting(id, |walker| {
            if (walker.excluded)(&child) {
                walker.counts.excluded += 1;
            } else if is_dir {
                let parent = rustix::fs::fstat(&dir_fd).map(|st| st.st_ino).ok();
                if let (Ok(rel), Some(parent)) = (child.strip_prefix(walker.root_path), parent) {
                    walker.walk(rel.to_path_buf(), Some(parent));
                }
            } else {
                walker.keep(dir_fd.as_fd(), &dir_path, vec![name]);
            }
        });
        let tree = self.trees.get_mut(&id).expect("a known tree");
        tree.counts.excluded += counts.excluded;
        tree.counts.not_protected += counts.not_protected;
        if counts.why.is_some() {
            tree.counts.why = counts.why;
        }
        log::trace!("protect: {} appeared in {}", child.display(), tree_path.display());
    }

    /// Asks each keeper which of its files lost their last name, and tells
    /// the engine.
    pub(super) fn sweep(&mut self) {
        let due: Vec<u64> = self.trees.iter().filter(|(_, t)| t.rewalk_due).map(|(id, _)| *id).collect();
        for id in due {
            self.rewalk(id);
        }
        let by_keeper: Vec<(crate::protect::Keeper, HashMap<RawFd, InodeId>)> = {
            let table = self.shared.lock();
            let mut fds: Vec<HashMap<RawFd, InodeId>> = vec![HashMap::new(); table.keepers.len()];
            for (inode, slot) in table.files.iter().filter(|(_, slot)| !slot.claimed) {
                fds[slot.keeper].insert(slot.fd, *inode);
            }
            table.keepers.iter().map(|h| h.keeper.clone()).zip(fds).collect()
        };
        for (keeper, fds) in by_keeper {
            if fds.is_empty() {
                continue;
            }
            for (fd, _) in keeper.sweep(fds.keys().copied().collect()) {
                let inode = fds[&fd];
                let link = keeper.link(fd);
                let path = path_of(&link);
                log::debug!("protect: {} lost its last name (found by a sweep)", path.display());
                (self.gone)(Gone { inode, link, path });
            }
        }
    }
}
