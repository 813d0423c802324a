//! Taking unrm's own reference to a deleted inode: the pin that saves data
//! (principle 1). While unrm holds it, no close by anyone else can free the
//! inode, and its content can be copied or handed to a restore at leisure.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use rustix::fs::{Mode, OFlags, fstat, open};

use crate::{
    holders::{HeldFile, InodeId},
    xattrs::Xattr,
};

/// The file's metadata at the moment it was pinned.
#[derive(Clone, Debug)]
pub struct Meta {
    /// As stat(2) reports it (on btrfs, the subvolume's device).
    pub dev: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub xattrs: Vec<Xattr>,
}

impl Meta {
    pub fn of(file: &File) -> io::Result<Self> {
        let st = file.metadata()?;
        Ok(Meta {
            dev: st.dev(),
            size: st.size(),
            mode: st.mode(),
            uid: st.uid(),
            gid: st.gid(),
            atime_ns: st.atime() * 1_000_000_000 + st.atime_nsec(),
            mtime_ns: st.mtime() * 1_000_000_000 + st.mtime_nsec(),
            xattrs: crate::xattrs::read(file),
        })
    }
}

/// Opens a reference to `held` through the first of its holds that still
/// leads to the same deleted inode.
pub fn take(held: &HeldFile) -> Option<(File, Meta)> {
    held.holds.iter().find_map(|hold| {
        let link = hold.proc_path();
        match grab(&link, held.inode).and_then(|handle| open_grabbed(&handle)) {
            Ok(pinned) => Some(pinned),
            Err(err) => {
                log::debug!("no pin through {}: {err}", link.display());
                None
            }
        }
    })
}

/// Takes an `O_PATH` handle on the deleted inode behind a /proc link. The
/// handle holds the dentry, so the inode and its data live as long as it
/// does: this alone is a pin. It opens nothing (no `->open`, so it cannot
/// block on a FUSE server or trigger a device's open), which is why the
/// ring-buffer reader may take it the moment an event names a holder.
///
/// Between the event (or scan) and now, the holder may have closed the fd
/// and opened something else under the same number: the handle is kept
/// only if it is still the same deleted regular file.
pub fn grab(link: &Path, want: InodeId) -> io::Result<OwnedFd> {
    let handle = open(link, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())?;
    let st = fstat(&handle)?;
    let same = st.st_ino == want.ino && (st.st_dev == want.dev || mount_device(&handle) == Some(want.dev));
    let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
    if !same || !regular || st.st_nlink != 0 {
        return Err(io::Error::other(format!(
            "{} is no longer the deleted file (dev {:x} ino {} nlink {}, wanted dev {:x} ino {})",
            link.display(),
            st.st_dev,
            st.st_ino,
            st.st_nlink,
            want.dev,
            want.ino
        )));
    }
    Ok(handle)
}

/// The device of the filesystem a descriptor lives on, as the kernel's
/// `super_block` has it. The probes identify inodes by that device; stat(2)
/// reports another one on btrfs (each subvolume has an anonymous device).
fn mount_device(fd: &OwnedFd) -> Option<u64> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    let mnt_id = fdinfo.lines().find_map(|l| l.strip_prefix("mnt_id:"))?.trim();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let line = mountinfo.lines().find(|l| l.split(' ').next() == Some(mnt_id))?;
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Opens a grabbed inode for reading, through our own handle.
pub fn open_grabbed(handle: &OwnedFd) -> io::Result<(File, Meta)> {
    let file = reopen(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())))?;
    let meta = Meta::of(&file)?;
    Ok((file, meta))
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
