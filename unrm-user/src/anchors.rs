//! One open directory per filesystem, for pinning by file handle.
//!
//! `open_by_handle_at(2)` needs a descriptor on the filesystem the handle
//! belongs to. The reader must take the pin in microseconds and must never
//! wait on a filesystem, so it may not open one itself: walking a mount
//! point's path can wait on anything that path crosses (a hung FUSE server,
//! a network mount). The engine opens these anchors on the filesystem's own
//! file worker (`daemon::lanes`), once per filesystem, and the reader only
//! looks them up.
//!
//! An anchor is a *detached copy* of one mount (`open_tree` with
//! `OPEN_TREE_CLONE`): the administrator's `umount` still succeeds (the copy
//! keeps the superblock alive, like a lazy unmount), and the engine lets the
//! copy go once the filesystem has left the mount table.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustix::{
    fs::{CWD, Mode, OFlags, ResolveFlags},
    mount::{OpenTreeFlags, open_tree},
};

use crate::handle::Layout;

/// A descriptor on the root of a detached copy of one of the filesystem's
/// mounts, and what handles on that filesystem need.
#[derive(Debug)]
pub struct Anchor {
    fd: OwnedFd,
    pub dev: u64,
    /// How unrm builds a handle from an inode number and generation; None
    /// where only handles the kernel encoded work (fanotify's, `notify`).
    pub layout: Option<Layout>,
    /// The filesystem's id (statfs `f_fsid`), by which fanotify names it.
    pub fsid: [i32; 2],
    /// The directory of the filesystem the copied mount shows (`/` unless
    /// a bind mount of a subtree): paths read through the anchor start there.
    pub root: PathBuf,
    /// fanotify reports deletions on this filesystem (`notify`).
    pub notified: bool,
}

impl Anchor {
    /// Opens an anchor on the filesystem `dev` mounted at `point`, a mount
    /// of its directory `root`. May wait on that filesystem and any on the
    /// way: only on its file worker.
    pub fn open(point: &Path, root: &Path, dev: u64, layout: Option<Layout>) -> io::Result<Anchor> {
        // The mount point as mountinfo names it, through no symbolic link
        // (a user may own a directory on the way); then a copy of the mount
        // found there.
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = rustix::fs::openat2(CWD, point, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS)?;
        let clone =
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_EMPTY_PATH;
        let tree = open_tree(&dir, "", clone)?;
        // `open_tree` gives an `O_PATH` descriptor, which open_by_handle_at
        // refuses as its mount descriptor: open the copy's root for real.
        let fd = rustix::fs::openat(
            &tree,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        if st.st_dev != dev {
            return Err(io::Error::other(format!("{} is no longer filesystem {dev:x}", point.display())));
        }
        let fsid = fsid_of(fd.as_fd())?;
        Ok(Anchor { fd, dev, layout, fsid, root: root.to_path_buf(), notified: false })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The anchors, by filesystem: the engine adds and removes, the reader looks
/// up (a read lock held for a map lookup and a reference count).
#[derive(Default)]
pub struct Anchors {
    by_dev: RwLock<HashMap<u64, Arc<Anchor>>>,
}

impl Anchors {
    pub fn get(&self, dev: u64) -> Option<Arc<Anchor>> {
        self.by_dev.read().unwrap().get(&dev).cloned()
    }

    /// The anchor of the fanotify-reported filesystem whose statfs id is
    /// `fsid`. None if two share it: an id comes from a filesystem's UUID,
    /// which whoever made an image chose, and a report must never be read
    /// against another filesystem than its own.
    pub fn by_fsid(&self, fsid: [i32; 2]) -> Option<Arc<Anchor>> {
        let map = self.by_dev.read().unwrap();
        let mut found = map.values().filter(|a| a.notified && a.fsid == fsid);
        let first = found.next()?;
        found.next().is_none().then(|| first.clone())
    }

    pub fn contains(&self, dev: u64) -> bool {
        self.by_dev.read().unwrap().contains_key(&dev)
    }

    pub fn insert(&self, dev: u64, anchor: Anchor) {
        self.by_dev.write().unwrap().insert(dev, Arc::new(anchor));
    }

    /// Removes the anchors of filesystems `keep` says no to, and returns
    /// them: closing the last descriptor on a detached mount can write the
    /// filesystem back, so the caller drops them where waiting is allowed.
    pub fn remove_unless(&self, keep: impl Fn(u64) -> bool) -> Vec<(u64, Arc<Anchor>)> {
        let mut map = self.by_dev.write().unwrap();
        let gone: Vec<u64> = map.keys().copied().filter(|dev| !keep(*dev)).collect();
        gone.into_iter().filter_map(|dev| Some((dev, map.remove(&dev)?))).collect()
    }

    pub fn len(&self) -> usize {
        self.by_dev.read().unwrap().len()
    }
}

fn fsid_of(fd: BorrowedFd) -> io::Result<[i32; 2]> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs(2) fills `st` on success.
    if unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&fd), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled above; `fsid_t` is two C ints, whose fields libc hides.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, [i32; 2]>(st.assume_init().f_fsid) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(fsid: [i32; 2], notified: bool) -> Anchor {
        let fd = std::fs::File::open("/").unwrap().into();
        Anchor { fd, dev: 0, layout: None, fsid, root: PathBuf::from("/"), notified }
    }

    #[test]
    fn a_report_is_read_only_against_the_one_notified_filesystem_of_its_id() {
        let anchors = Anchors::default();
        anchors.insert(1, anchor([1, 1], true));
        anchors.insert(2, anchor([2, 2], false));
        assert!(anchors.by_fsid([1, 1]).is_some());
        assert!(anchors.by_fsid([2, 2]).is_none(), "not marked: its reports are not ours");
        // Another filesystem made with the same id: neither is trusted.
        anchors.insert(3, anchor([1, 1], true));
        assert!(anchors.by_fsid([1, 1]).is_none());
    }
}
