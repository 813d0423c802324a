//! Finding the files of a protected tree: every directory under its root
//! on the same mount (as `find -xdev`: a mount inside the tree is another
//! filesystem's business), each marked for new names before it is read,
//! so a file created while the walk goes is seen by one or the other.
//!
//! Nothing is followed and nothing piles up: each directory is opened from
//! the tree's root by its path inside the tree (`openat2` beneath the root,
//! through no symbolic link and across no mount), one at a time, so a user
//! who swaps a name for a link mid-walk leads unrm nowhere else, a FUSE
//! mount inside the tree is never entered, and a tree of a million
//! directories costs one descriptor, not a million. Each directory opened
//! is checked to be a child of the one it was found in, and in a user's
//! tree, to be that user's.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, StatxFlags, openat2, statx};

use super::Shared;
use crate::notify::Group;

/// What one walk found.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub dirs: u64,
    pub excluded: u64,
    pub not_protected: u64,
    /// Why files were not protected, when some were not.
    pub why: Option<String>,
}

/// A directory's file names, and its subdirectories (paths in the tree).
type Listing = (Vec<CString>, Vec<PathBuf>);

/// How many more files may be protected, and what says so.
pub type Room<'a> = &'a dyn Fn() -> (usize, String);

pub struct Walker<'a> {
    pub shared: &'a Shared,
    pub tree: u64,
    /// The tree's root, and where it is.
    pub root: BorrowedFd<'a>,
    pub root_path: &'a Path,
    /// Its filesystem's device, as the kernel names its inodes.
    pub sb_dev: u64,
    pub group: &'a Group,
    /// A user's tree: only their own directories are entered and only
    /// their own files kept (see `Shared::keep`): another user's directory
    /// may be one its owner cannot read, and what is in it, and how much,
    /// is not theirs to learn or to have unrm keep. None for root's.
    pub owner: Option<u32>,
    pub excluded: &'a dyn Fn(&Path) -> bool,
    pub room: Room<'a>,
    pub counts: Counts,
}

/// The mount a descriptor is on.
pub fn mount_of(fd: BorrowedFd) -> Option<u64> {
    statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok().map(|st| st.stx_mnt_id)
}

/// `dir`'s parent is the directory `ino` (on the same filesystem).
fn child_of(dir: &OwnedFd, ino: u64) -> bool {
    statx(dir, "..", AtFlags::SYMLINK_NOFOLLOW, StatxFlags::INO).is_ok_and(|st| st.stx_ino == ino)
}

/// How anything inside a tree is reached from its root.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_XDEV);

impl Walker<'_> {
    /// Walks the directory at `rel` inside the tree, and everything under
    /// it; `parent` is the inode of the directory it was found in, if known.
    pub fn walk(&mut self, rel: PathBuf, parent: Option<u64>) {
        let mut todo = vec![(rel, parent)];
        while let Some((rel, parent)) = todo.pop() {
            let path = self.root_path.join(&rel);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let at = if rel.as_os_str().is_empty() { Path::new(".") } else { rel.as_path() };
            let dir = match openat2(self.root, at, flags, Mode::empty(), BENEATH) {
                Ok(dir) => dir,
                // Gone since, or another mount inside the tree (not
                // entered): silently.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::XDEV) => continue,
                Err(err) => {
                    self.left_out(1, format!("{} could not be opened: {err}", path.display()));
                    continue;
                }
            };
            let Ok(st) = rustix::fs::fstat(&dir) else { continue };
            // Still in the directory it was found in: one renamed in since
            // (another user's, from beside the tree) is not walked by a
            // path that was never its own.
            if parent.is_some_and(|ino| !child_of(&dir, ino)) {
                continue;
            }
            if self.owner.is_some_and(|uid| uid != st.st_uid) {
                self.left_out(0, format!("{} is another user's: not entered", path.display()));
                continue;
            }
            self.counts.dirs += 1;
            if let Err(err) = self.group.mark_names(dir.as_fd()) {
                self.left_out(0, format!("new files in {} are not seen: {err}", path.display()));
            }
            match self.read(&dir, &rel, &path) {
                Ok((files, subdirs)) => {
                    self.keep(dir.as_fd(), &path, files);
                    todo.extend(subdirs.into_iter().map(|sub| (sub, Some(st.st_ino))));
                }
                Err(err) => self.left_out(1, format!("reading {}: {err}", path.display())),
            }
        }
    }

    /// The names of `dir`'s files, and its subdirectories; the excluded
    /// left out.
    fn read(&mut self, dir: &OwnedFd, rel: &Path, path: &Path) -> rustix::io::Result<Listing> {
        let (mut files, mut subdirs) = (Vec::new(), Vec::new());
        for entry in Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let name_os = OsStr::from_bytes(name.to_bytes());
            if (self.excluded)(&path.join(name_os)) {
                self.counts.excluded += 1;
                continue;
            }
            match entry.file_type() {
                FileType::Directory => subdirs.push(rel.join(name_os)),
                FileType::RegularFile | FileType::Unknown => files.push(name.to_owned()),
                _ => {}
            }
        }
        Ok((files, subdirs))
    }

    /// Has keepers protect `names` in `dir`, as far as the limits allow.
    pub fn keep(&mut self, dir: BorrowedFd, path: &Path, mut names: Vec<CString>) {
        // Another user's files take none of the owner's room (`Shared::keep`
        // checks again what it opened).
        if let Some(uid) = self.owner {
            names.retain(|name| {
                statx(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW, StatxFlags::UID)
                    .is_ok_and(|st| st.stx_uid == uid)
            });
        }
        if names.is_empty() {
            return;
        }
        let (room, why) = (self.room)();
        if names.len() > room {
            self.left_out((names.len() - room) as u64, why);
            names.truncate(room);
        }
        if let Err(err) = self.shared.keep(dir, names, self.tree, self.sb_dev, self.owner) {
            self.left_out(0, format!("keeping the files of {}: {err}", path.display()));
        }
    }

    fn left_out(&mut self, n: u64, why: String) {
        if self.counts.why.is_none() {
            log::warn!("protect: {why}");
        }
        self.counts.not_protected += n;
        self.counts.why = Some(why);
    }
}
