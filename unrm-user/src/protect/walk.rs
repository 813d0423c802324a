//! Finding the files of a protected tree: every directory under its root
//! on the same mount (as `find -xdev`: a mount inside the tree is another
//! filesystem's business), each marked for new names before it is read,
//! so a file created while the walk goes is seen by one or the other.
//!
//! Nothing is followed: directories are opened with `O_NOFOLLOW` relative
//! to their parent's descriptor, files by the keeper likewise, so a user
//! who swaps a name for a symbolic link mid-walk leads unrm nowhere else.

use std::{
    ffi::{CString, OsStr},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, StatxFlags, openat, statx};

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

/// A directory's file names, and its subdirectories opened.
type Listing = (Vec<CString>, Vec<(OwnedFd, PathBuf)>);

/// How many more files may be protected, and what says so.
pub type Room<'a> = &'a dyn Fn() -> (usize, String);

pub struct Walker<'a> {
    pub shared: &'a Shared,
    pub tree: u64,
    /// The tree's mount: the walk does not leave it.
    pub mnt_id: u64,
    /// Its filesystem's device, as the kernel names its inodes.
    pub sb_dev: u64,
    pub group: &'a Group,
    pub excluded: &'a dyn Fn(&Path) -> bool,
    pub room: Room<'a>,
    pub counts: Counts,
}

/// The mount a descriptor is on.
pub fn mount_of(fd: BorrowedFd) -> Option<u64> {
    statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok().map(|st| st.stx_mnt_id)
}

impl Walker<'_> {
    /// Walks the directory `dir`, at `path`, and everything under it.
    pub fn walk(&mut self, dir: OwnedFd, path: PathBuf) {
        let mut todo = vec![(dir, path)];
        while let Some((dir, path)) = todo.pop() {
            self.counts.dirs += 1;
            if let Err(err) = self.group.mark_names(dir.as_fd()) {
                self.left_out(0, format!("new files in {} are not seen: {err}", path.display()));
            }
            let (files, subdirs) = match self.read(&dir, &path) {
                Ok(found) => found,
                Err(err) => {
                    log::warn!("protect: reading {}: {err}", path.display());
                    continue;
                }
            };
            self.keep(dir.as_fd(), &path, files);
            todo.extend(subdirs);
        }
    }

    /// The names of `dir`'s files, and its subdirectories on the same
    /// mount, opened; the excluded left out.
    fn read(&mut self, dir: &OwnedFd, path: &Path) -> rustix::io::Result<Listing> {
        let (mut files, mut subdirs) = (Vec::new(), Vec::new());
        for entry in Dir::read_from(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let child = path.join(OsStr::from_bytes(name.to_bytes()));
            if (self.excluded)(&child) {
                self.counts.excluded += 1;
                continue;
            }
            match entry.file_type() {
                FileType::Directory => subdirs.extend(self.open_subdir(dir.as_fd(), name, child)),
                FileType::RegularFile | FileType::Unknown => files.push(name.to_owned()),
                _ => {}
            }
        }
        Ok((files, subdirs))
    }

    /// Opens a subdirectory, if it is on the tree's mount.
    pub fn open_subdir(
        &self,
        parent: BorrowedFd,
        name: &std::ffi::CStr,
        path: PathBuf,
    ) -> Option<(OwnedFd, PathBuf)> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(parent, name, flags, Mode::empty()).ok()?;
        (mount_of(fd.as_fd()) == Some(self.mnt_id)).then_some((fd, path))
    }

    /// Has keepers protect `names` in `dir`, as far as the limits allow.
    pub fn keep(&mut self, dir: BorrowedFd, path: &Path, mut names: Vec<CString>) {
        if names.is_empty() {
            return;
        }
        let (room, why) = (self.room)();
        if names.len() > room {
            self.left_out((names.len() - room) as u64, why);
            names.truncate(room);
        }
        if let Err(err) = self.shared.keep(dir, names, self.tree, self.sb_dev) {
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
