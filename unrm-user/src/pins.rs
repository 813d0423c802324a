//! Taking unrm's own reference to a deleted inode: the pin that saves data
//! (principle 1). While unrm holds it, no close by anyone else can free the
//! inode, and its content can be copied or handed to a restore at leisure.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use rustix::fs::{Mode, OFlags, fstat, open};

use crate::holders::{HeldFile, InodeId};

/// The file's metadata at the moment it was pinned.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

impl Meta {
    pub fn of(file: &File) -> io::Result<Self> {
        let st = file.metadata()?;
        Ok(Meta {
            size: st.size(),
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            atime_ns: st.atime() * 1_000_000_000 + st.atime_nsec(),
            mtime_ns: st.mtime() * 1_000_000_000 + st.mtime_nsec(),
        })
    }
}

/// Opens a reference to `held` through the first of its holds that still
/// leads to the same deleted inode.
pub fn take(held: &HeldFile) -> Option<(File, Meta)> {
    held.holds.iter().find_map(|hold| {
        let file = open_verified(&hold.proc_path(), held.inode).ok()?;
        let meta = Meta::of(&file).ok()?;
        Some((file, meta))
    })
}

/// Between the scan and this open, the holder may have closed the fd and
/// opened something else under the same number, possibly a FIFO or a
/// device whose open has side effects. So: an `O_PATH` handle first, which
/// opens nothing; check it is the same deleted regular file; then reopen
/// that exact inode for reading through our own handle.
fn open_verified(link: &Path, want: InodeId) -> io::Result<File> {
    let handle = open(link, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let st = fstat(&handle)?;
    let same = st.st_dev == want.dev && st.st_ino == want.ino;
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if !same || !regular || st.st_nlink != 0 {
        return Err(io::Error::other(format!("{} is no longer the deleted file", link.display())));
    }
    reopen(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())))
}

/// Opens for reading without touching the access time where allowed.
pub fn reopen(path: &Path) -> io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    match open(libc::O_NOATIME | libc::O_NONBLOCK) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => open(libc::O_NONBLOCK),
        other => other,
    }
}

/// A fresh, independent reading handle on a pinned file (for a restore).
pub fn reopen_pin(pin: &File) -> io::Result<File> {
    reopen(Path::new(&format!("/proc/self/fd/{}", pin.as_raw_fd())))
}
