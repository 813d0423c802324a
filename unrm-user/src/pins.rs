//! Taking unrm's own reference to a deleted inode: the pin that saves data.
//! While unrm holds it, no close by anyone else can free the inode, and its
//! content can be copied or handed to a restore at leisure.
//!
//! A pin is one descriptor. It is first taken as `O_PATH`: that opens
//! nothing (no `->open`, so it cannot block on a FUSE server or trigger a
//! device's open), and its metadata is read with `AT_STATX_DONT_SYNC`, the
//! kernel's cached view, which never waits for a FUSE server or a network
//! filesystem either. So the ring-buffer reader and the engine take pins
//! without ever blocking. On a local filesystem that reference alone keeps
//! the content. A FUSE server or an NFS client, though, discards a deleted
//! file once its last *open* goes (libfuse's hidden files, NFS's
//! silly-renamed ones), so a file worker (`daemon::lanes`) then trades the
//! `O_PATH` pin for a reading descriptor, opened through it, as soon as it
//! can; it does the same everywhere, so that a pin is the same thing on
//! every filesystem. Whatever else must talk to the filesystem (extended
//! attributes, copying) is the file workers' too.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags, open, statx};

use crate::{
    access::{AclEntry, Parent},
    budget::{Budget, Ticket},
    handle::{self, Layout},
    holders::{HeldFile, Hold, InodeId},
};

/// A file's metadata as the kernel has it cached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// As stat(2) reports it (on btrfs, the subvolume's device).
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    /// Changes with every chmod, chown, ACL change and write: a permission
    /// check made against an older ctime may no longer hold.
    pub ctime_ns: i64,
}

impl Meta {
    /// Without waiting for the filesystem (`AT_STATX_DONT_SYNC`).
    pub fn of(fd: BorrowedFd) -> io::Result<Self> {
        let flags = AtFlags::EMPTY_PATH | AtFlags::STATX_DONT_SYNC;
        let st = statx(fd, "", flags, StatxFlags::BASIC_STATS)?;
        // Saturating: anyone may set a time past 2262 on their own file.
        let ns = |t: rustix::fs::StatxTimestamp| {
            t.tv_sec.saturating_mul(1_000_000_000).saturating_add(i64::from(t.tv_nsec))
        };
        Ok(Meta {
            dev: libc::makedev(st.stx_dev_major, st.stx_dev_minor),
            ino: st.stx_ino,
            size: st.stx_size,
            mode: u32::from(st.stx_mode),
            nlink: st.stx_nlink,
            uid: st.stx_uid,
            gid: st.stx_gid,
            atime_ns: ns(st.stx_atime),
            mtime_ns: ns(st.stx_mtime),
            ctime_ns: ns(st.stx_ctime),
        })
    }

    pub fn is_regular(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }
}

/// unrm's reference to a deleted inode: an `O_PATH` descriptor and its
/// share of the descriptor budget, both let go together.
#[derive(Debug)]
pub struct PinFd {
    fd: OwnedFd,
    _ticket: Ticket,
    /// Open for reading (not just `O_PATH`).
    reading: bool,
}

/// A pin shared between the engine and the file workers using it: the
/// descriptor closes when the last of them lets go.
pub type Pinned = Arc<PinFd>;

impl AsFd for PinFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl PinFd {
    /// The /proc link that reopens the pinned inode.
    pub fn proc_path(&self) -> PathBuf {
        format!("/proc/self/fd/{}", self.fd.as_raw_fd()).into()
    }

    /// A reading descriptor on the pinned inode. This calls the
    /// filesystem's `->open`, which may block (FUSE, NFS): file workers only.
    pub fn open_for_reading(&self) -> io::Result<File> {
        reopen(&self.proc_path())
    }

    /// This pin as an open file, with a budget share of its own (None when
    /// it already is one). May block like `open_for_reading`.
    pub fn opened(&self, budget: &Arc<Budget>) -> Option<io::Result<PinFd>> {
        if self.reading {
            return None;
        }
        let Some(ticket) = budget.take() else { return Some(Err(io::Error::other("budget spent"))) };
        Some(self.open_for_reading().and_then(|file| {
            let (was, now) = (Meta::of(self.as_fd())?, Meta::of(file.as_fd())?);
            if (was.dev, was.ino) != (now.dev, now.ino) {
                return Err(io::Error::other("reopened a different file"));
            }
            Ok(PinFd { fd: OwnedFd::from(file), _ticket: ticket, reading: true })
        }))
    }
}

/// One pinned file, as the engine keeps it: the pin, its record, and what
/// the engine decides by.
pub struct Pin {
    pub fd: Pinned,
    pub record: i64,
    /// Whose per-user limits it counts against: its owner if the owner
    /// holds it, else a holder's user (the engine's `charged_to`).
    pub charged: u32,
    /// Last known size (snapshots refresh it).
    pub size: u64,
    pub capturing: bool,
    pub place: Place,
    pub holding: Holding,
    pub acl: AclCache,
    /// Its file was in a protected tree (unrm held it before its deletion).
    pub protected: bool,
}

/// Where a pinned file was.
pub struct Place {
    /// Snapshots leave pinned files' paths out: this is the one recorded.
    pub path: PathBuf,
    /// Its device as stat(2) reports it.
    pub dev: u64,
    /// The directory it was deleted from, as the probes saw it.
    pub parent: Option<Parent>,
}

/// Who held a pinned file, as far as unrm knows.
pub struct Holding {
    pub holds: Vec<Hold>,
    /// The process that deleted it, when an event said so.
    pub deleter: Option<u32>,
    /// Some process other than the deleter held it at some point: not a
    /// scratch file.
    pub others_held: bool,
    /// Found by a scan before (or without) its deletion event.
    pub from_scan: bool,
}

/// A pinned file's access ACL, as a file worker last read it.
#[derive(Default)]
pub struct AclCache {
    /// The ACL as read when the file's ctime was the first value (inner
    /// None: it has none); None until a file worker has read it.
    pub entries: Option<(i64, Option<Vec<AclEntry>>)>,
    /// A file worker is reading it again.
    pub asked: bool,
}

/// Why no pin was taken.
#[derive(Debug)]
pub enum Refused {
    /// The descriptor budget is spent.
    Budget,
    /// The holder let go, or its descriptor now names something else.
    Gone(io::Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Budget => f.write_str("the descriptor budget is spent"),
            Refused::Gone(err) => err.fmt(f),
        }
    }
}

/// Pins `held` through the first of its holds that still leads to the same
/// deleted inode.
pub fn take(held: &HeldFile, budget: &Arc<Budget>) -> Result<(PinFd, Meta), Refused> {
    let mut last = Refused::Gone(io::Error::other("no holds"));
    for hold in &held.holds {
        let link = hold.proc_path();
        match grab(&link, held.inode, budget) {
            Ok(pinned) => return Ok(pinned),
            Err(Refused::Budget) => return Err(Refused::Budget),
            Err(err) => {
                log::debug!("no pin through {}: {err}", link.display());
                last = err;
            }
        }
    }
    Err(last)
}

/// Takes an `O_PATH` handle on the deleted inode behind a /proc link. The
/// handle holds the dentry, so the inode and its data live as long as it
/// does: this alone is a pin.
///
/// Between the event (or scan) and now, the holder may have closed the fd
/// and opened something else under the same number: the handle is kept
/// only if it is still the same deleted regular file.
pub fn grab(link: &Path, want: InodeId, budget: &Arc<Budget>) -> Result<(PinFd, Meta), Refused> {
    let ticket = budget.take().ok_or(Refused::Budget)?;
    let fd =
        open(link, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).map_err(|e| Refused::Gone(e.into()))?;
    verified(fd, ticket, want, || link.display().to_string())
}

/// Pins the deleted inode `want` of generation `generation` by its file
/// handle, on the filesystem `mount` is a descriptor on (see `handle`):
/// no holder needed, O(1). Fails with `ESTALE` once nothing holds it.
pub fn by_handle(
    mount: BorrowedFd,
    layout: Layout,
    want: InodeId,
    generation: u32,
    budget: &Arc<Budget>,
) -> Result<(PinFd, Meta), Refused> {
    let ticket = budget.take().ok_or(Refused::Budget)?;
    let fd = handle::open(mount, layout, want.ino, generation).map_err(Refused::Gone)?;
    verified(fd, ticket, want, || format!("the handle of inode {}", want.ino))
}

/// Pins whatever inode `handle`, as the kernel encoded it (`notify`),
/// names on the filesystem `mount` is on; the caller judges what it is.
pub fn by_encoded_handle(
    mount: BorrowedFd,
    handle: &[u8],
    budget: &Arc<Budget>,
) -> Result<(PinFd, Meta), Refused> {
    let ticket = budget.take().ok_or(Refused::Budget)?;
    let fd = handle::open_encoded(mount, handle).map_err(Refused::Gone)?;
    let meta = Meta::of(fd.as_fd()).map_err(Refused::Gone)?;
    Ok((PinFd { fd, _ticket: ticket, reading: false }, meta))
}

/// Keeps `fd` as a pin if it is the deleted regular file `want`.
fn verified(
    fd: OwnedFd,
    ticket: Ticket,
    want: InodeId,
    what: impl Fn() -> String,
) -> Result<(PinFd, Meta), Refused> {
    let meta = Meta::of(fd.as_fd()).map_err(Refused::Gone)?;
    let same = meta.ino == want.ino && (meta.dev == want.dev || mount_device(&fd) == Some(want.dev));
    if !same || !meta.is_regular() || meta.nlink != 0 {
        return Err(Refused::Gone(io::Error::other(format!(
            "{} is no longer the deleted file (dev {:x} ino {} nlink {}, wanted dev {:x} ino {})",
            what(),
            meta.dev,
            meta.ino,
            meta.nlink,
            want.dev,
            want.ino
        ))));
    }
    Ok((PinFd { fd, _ticket: ticket, reading: false }, meta))
}

/// The mount a descriptor was reached through, by its id in mountinfo.
pub fn mount_id(fd: &impl AsRawFd) -> Option<String> {
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).ok()?;
    Some(fdinfo.lines().find_map(|l| l.strip_prefix("mnt_id:"))?.trim().to_owned())
}

/// The device of the filesystem a descriptor lives on, as the kernel's
/// `super_block` has it. The probes identify inodes by that device; stat(2)
/// reports another one on btrfs (each subvolume has an anonymous device).
fn mount_device(fd: &OwnedFd) -> Option<u64> {
    let mnt_id = mount_id(fd)?;
    // Mount ids are global: a holder's mount is in the host's table (pid
    // 1's) even when the daemon runs in a private copy of it.
    let line = ["/proc/self/mountinfo", "/proc/1/mountinfo"].iter().find_map(|table| {
        let mountinfo = std::fs::read_to_string(table).ok()?;
        mountinfo.lines().find(|l| l.split(' ').next() == Some(mnt_id.as_str())).map(str::to_owned)
    })?;
    let (major, minor) = line.split(' ').nth(2)?.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Opens for reading without touching the access time where allowed.
pub fn reopen(path: &Path) -> io::Result<File> {
    let open = |flags| OpenOptions::new().read(true).custom_flags(flags).open(path);
    match open(libc::O_NOATIME | libc::O_NONBLOCK) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => open(libc::O_NONBLOCK),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_holds_a_deleted_file_and_its_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"kept").unwrap();
        let holder = File::open(&path).unwrap();
        let st = Meta::of(holder.as_fd()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let link = PathBuf::from(format!("/proc/self/fd/{}", holder.as_raw_fd()));
        let budget = Budget::new(1);
        let want = InodeId { dev: st.dev, ino: st.ino };
        let (first, meta) = grab(&link, want, &budget).unwrap();
        assert_eq!((meta.size, meta.nlink), (4, 0));
        assert!(matches!(grab(&link, want, &budget), Err(Refused::Budget)), "one ticket only");
        drop(holder);
        assert_eq!(std::fs::read(first.proc_path()).unwrap(), b"kept");
        // Traded for a reading descriptor, the pin still holds the file.
        let bigger = Budget::new(2);
        let (pin, _) = grab(&first.proc_path(), want, &bigger).unwrap();
        drop(first);
        assert_eq!(budget.used(), 0);
        let opened = pin.opened(&bigger).unwrap().unwrap();
        assert!(opened.opened(&bigger).is_none(), "already open");
        drop(pin);
        assert_eq!(std::fs::read(opened.proc_path()).unwrap(), b"kept");
        drop(opened);
        assert_eq!(bigger.used(), 0);
        // A different inode behind the link is refused.
        let other = InodeId { dev: st.dev, ino: st.ino + 1 };
        let f = File::open(dir.path()).unwrap();
        let link = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
        assert!(matches!(grab(&link, other, &budget), Err(Refused::Gone(_))));
    }
}
