//! From ring-buffer bytes to typed events.
//!
//! The reader thread decodes, takes the pins (`pins::by_handle`) and forwards;
//! it never waits on a disk, a filesystem or the index (docs/design.md:
//! never block the reader), so the ring buffer drains as fast as it fills.

mod notified;

use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
    sync::{Arc, mpsc::Sender},
};

use anyhow::{Result, bail};
use aya::maps::{MapData, RingBuf};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use unrm_abi::{
    DeleteEvent, ReleaseEvent, S_IFMT, S_IFREG, delete_op, event_kind, path_flags, release_reason,
    victim_flags,
};

use crate::{
    access::Parent,
    anchors::Anchors,
    budget::Budget,
    clock::monotonic_ns,
    holders::{InodeId, comm_string},
    mounts::{Located, Views},
    notify::{Group, Notice},
    pins::{self, Meta, PinFd, Refused},
    record::Op,
};

/// The inode a deletion removed, when a filesystem hook saw it.
#[derive(Clone, Copy, Debug)]
pub struct Victim {
    pub inode: InodeId,
    pub size: u64,
    pub mode: u32,
    /// Links before the call; above 1, the file lives on under another name.
    pub nlink: u32,
    /// Dentry references when unlinked, when known.
    pub refs: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    /// `i_generation`: with the inode number, its file handle.
    pub generation: u32,
    /// The directory its name was removed from.
    pub parent: Option<Parent>,
}

impl Victim {
    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// A regular file that lost its last name in `op`: content unrm could
    /// save. (A symlink, device or FIFO has none; a file unlinked while it
    /// has other links lives on under them.)
    pub fn lost_content(&self, op: Op) -> bool {
        self.is_regular() && !(op == Op::Unlink && self.nlink > 1)
    }
}

/// unrm's first hold on a deleted inode, taken by the reader by its file
/// handle the moment the event arrived (see `pins::by_handle`).
#[derive(Debug)]
pub struct Grab {
    pub pin: PinFd,
    pub meta: Meta,
    /// CLOCK_MONOTONIC when the handle was taken.
    pub at_ns: u64,
}

/// A deleter's uid nobody could read (fanotify names only the pid, and the
/// process may be gone by then).
pub const UNKNOWN_UID: u32 = u32::MAX;

#[derive(Debug)]
pub struct Deletion {
    /// `Unlink` or `Rename`.
    pub op: Op,
    pub ktime_ns: u64,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// 0 on success, -errno otherwise.
    pub ret: i32,
    /// Absolute and lexically normalised: as the deleting process saw it
    /// when decoded, as the host sees it once placed (see `place`).
    pub path: PathBuf,
    /// `path` is the host's: the deletion came from the host's mount
    /// namespace, or its path was carried through the host's mount table.
    pub host_path: bool,
    /// The path as the deleter saw it, when that is not `path` (a process
    /// in another mount namespace).
    pub seen_path: Option<PathBuf>,
    /// The deleter's mount namespace (0: unknown).
    pub mnt_ns: u32,
    /// The deleter's cgroup v2 id (0: unknown), and its path once the
    /// engine has looked it up (`cgroups`).
    pub cgroup_id: u64,
    pub cgroup: Option<Box<str>>,
    /// False when the base directory of a relative path could not be fully
    /// resolved; `path` is then the best the probe could tell.
    pub path_complete: bool,
    pub victim: Option<Victim>,
    /// A filesystem hook fired during the call: no `victim` then means no
    /// inode lost its last name.
    pub fs_hooked: bool,
    /// `path` is relative to the victim's filesystem (fs tier) until the
    /// reader finds where that filesystem is mounted.
    pub fs_relative: bool,
    /// The filesystem an `fs_relative` path is on, where no `victim` says
    /// (a fanotify report of an inode already gone).
    pub fs_dev: Option<u64>,
    /// Boxed: most deletions have none, and events travel by value.
    pub grabbed: Option<Box<Grab>>,
    /// The reader found the descriptor budget spent when it tried to grab.
    pub over_budget: bool,
    /// The inode was already gone when the reader looked (fanotify's
    /// handle no longer opened): nothing held it, whatever it was.
    pub nothing_held: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Release {
    pub reason: u32,
    pub pid: u32,
    pub ktime_ns: u64,
    pub inode: Option<InodeId>,
}

impl Release {
    pub fn reason_name(&self) -> &'static str {
        match self.reason {
            release_reason::CLOSE => "close",
            release_reason::CLOSE_RANGE => "close_range",
            release_reason::DUP2 => "dup2",
            release_reason::MUNMAP => "munmap",
            release_reason::MREMAP => "mremap",
            release_reason::EXEC => "exec",
            release_reason::EXIT => "exit",
            release_reason::FPUT => "final fput",
            _ => "unknown",
        }
    }
}

#[derive(Debug)]
pub enum Event {
    Delete(Deletion),
    Release(Release),
    /// fanotify's queue overflowed: deletions went unreported.
    Lost,
}

pub fn decode(bytes: &[u8]) -> Result<Event> {
    let Some(kind) = bytes.get(..4) else { bail!("event shorter than its kind") };
    match u32::from_ne_bytes(kind.try_into().unwrap()) {
        event_kind::DELETE => decode_delete(bytes).map(Event::Delete),
        event_kind::RELEASE => decode_release(bytes).map(Event::Release),
        other => bail!("unknown event kind {other}"),
    }
}

fn decode_delete(bytes: &[u8]) -> Result<Deletion> {
    const HEADER: usize = size_of::<DeleteEvent>();
    if bytes.len() < HEADER {
        bail!("deletion event of {} bytes", bytes.len());
    }
    // SAFETY: DeleteEvent is plain integers; read_unaligned copies.
    let ev: DeleteEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let (path_len, dir_len) = (ev.path_len as usize, ev.dir_len as usize);
    if bytes.len() < HEADER + path_len + dir_len {
        bail!("deletion event shorter than its path");
    }
    let user_path = &bytes[HEADER..HEADER + path_len];
    let dir = &bytes[HEADER + path_len..HEADER + path_len + dir_len];
    let flags = ev.path_flags;
    let fs_relative = flags & path_flags::FS_RELATIVE != 0;
    let path = if flags & path_flags::ABSOLUTE != 0 {
        normalize(Path::new(OsStr::from_bytes(user_path)))
    } else {
        normalize(&dir_from_components(dir).join(OsStr::from_bytes(user_path)))
    };
    let v = ev.victim;
    let victim = (v.flags & victim_flags::KNOWN != 0).then(|| Victim {
        inode: InodeId::from_kernel(v.dev, v.ino),
        size: v.size,
        mode: v.mode,
        nlink: v.nlink,
        refs: (v.flags & victim_flags::REFS_VALID != 0).then_some(v.refs),
        uid: v.uid,
        gid: v.gid,
        generation: v.generation,
        parent: (v.flags & victim_flags::PARENT != 0).then(|| Parent::of(&v.parent)).flatten(),
    });
    Ok(Deletion {
        op: if ev.op == delete_op::RENAME { Op::Rename } else { Op::Unlink },
        ktime_ns: ev.ktime_ns,
        pid: ev.tgid,
        uid: ev.uid,
        comm: comm_string(&ev.comm),
        ret: ev.ret,
        path,
        host_path: true,
        seen_path: None,
        mnt_ns: ev.mnt_ns,
        cgroup_id: ev.cgroup_id,
        cgroup: None,
        path_complete: flags & (path_flags::DIR_TRUNCATED | path_flags::DIR_UNKNOWN) == 0,
        victim,
        fs_hooked: v.flags & victim_flags::FS_HOOKED != 0,
        fs_relative,
        fs_dev: None,
        grabbed: None,
        over_budget: false,
        nothing_held: false,
    })
}

fn decode_release(bytes: &[u8]) -> Result<Release> {
    if bytes.len() < size_of::<ReleaseEvent>() {
        bail!("release event of {} bytes", bytes.len());
    }
    // SAFETY: as above.
    let ev: ReleaseEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    Ok(Release {
        reason: ev.reason,
        pid: ev.tgid,
        ktime_ns: ev.ktime_ns,
        inode: (ev.ino != 0).then(|| InodeId::from_kernel(ev.dev, ev.ino)),
    })
}

/// The probe writes a directory's names leaf first, each ended by a NUL.
fn dir_from_components(dir: &[u8]) -> PathBuf {
    let mut path = PathBuf::from("/");
    let names: Vec<&[u8]> = dir.split(|&b| b == 0).filter(|n| !n.is_empty()).collect();
    for name in names.iter().rev() {
        path.push(OsStr::from_bytes(name));
    }
    path
}

/// Drops `.` and empty components and applies `..` lexically. Symlinks in
/// the caller's path are not followed: the path is what the caller named.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Pin first: when the dentry count says something else may hold the
/// deleted inode, take a descriptor on it right here, by its file handle
/// (see `handle`), before the event queues behind anything. No holder is
/// needed: one `open_by_handle_at` through the filesystem's anchor (see
/// `anchors`; the reader never opens a path), within the descriptor
/// budget. A filesystem without an anchor waits for the engine's snapshot.
fn grab(d: &mut Deletion, budget: &Arc<Budget>, anchors: &Anchors) {
    let Some(victim) = &d.victim else { return };
    // Generation 0 is a wildcard to ext4's handle lookup, which could then
    // open another file that took the number since: left to the snapshot.
    if d.ret != 0
        || !victim.lost_content(d.op)
        || victim.generation == 0
        || victim.refs.is_some_and(|refs| refs <= 1)
    {
        return;
    }
    let Some(anchor) = anchors.get(victim.inode.dev) else { return };
    let Some(layout) = anchor.layout else { return };
    match pins::by_handle(anchor.fd(), layout, victim.inode, victim.generation, budget) {
        Ok((pin, meta)) => d.grabbed = Some(Box::new(Grab { pin, meta, at_ns: monotonic_ns() })),
        Err(Refused::Budget) => d.over_budget = true,
        Err(err) => {
            let late_us = monotonic_ns().saturating_sub(d.ktime_ns) / 1000;
            log::debug!("{}: no pin by handle after {late_us} µs: {err}", d.path.display());
        }
    }
}

/// Gives the deletion the host's path, and keeps the deleter's own view
/// when it differs. A filesystem hook's path is relative to the filesystem;
/// a syscall probe's is the deleter's, which is carried through the
/// deleter's mount table to the filesystem, then through the host's.
fn place(d: &mut Deletion, views: &mut Views) {
    let located = if d.fs_relative {
        let dev = d.victim.map(|v| v.inode.dev).or(d.fs_dev);
        dev.map(|dev| Located { dev, fs_path: d.path.clone(), stacked: false })
    } else if views.is_own(d.mnt_ns) {
        // Already the host's path. Only a deletion that looks held can be
        // overlayfs' doing: the rest pay nothing here.
        if d.victim.is_some_and(|v| v.refs.is_some_and(|r| r > 1)) {
            let located = views.host().and_then(|host| host.locate(&d.path));
            unstack(d, located.as_ref());
        }
        return;
    } else {
        d.host_path = false;
        let Some(theirs) = views.foreign(d.mnt_ns, d.pid) else {
            log::warn!(
                "{}: deleted in mount namespace {} with nobody left in it; the path is as {} saw it",
                d.path.display(),
                d.mnt_ns,
                d.comm
            );
            return;
        };
        let located = theirs.locate(&d.path);
        unstack(d, located.as_ref());
        d.seen_path = Some(d.path.clone());
        located
    };
    let Some(at) = located else {
        d.path_complete = false;
        d.host_path = false;
        return;
    };
    if d.fs_relative && !views.is_own(d.mnt_ns) {
        d.seen_path = views.foreign(d.mnt_ns, d.pid).and_then(|theirs| theirs.resolve(at.dev, &at.fs_path));
    }
    match views.host().and_then(|host| host.resolve(at.dev, &at.fs_path)) {
        Some(host) => {
            d.path = host;
            d.fs_relative = false;
            d.host_path = true;
        }
        // Not visible from the host's namespace at all: the deleter's view
        // is the best name there is, and it is not a path on this host.
        None => {
            d.host_path = false;
            match d.seen_path.take() {
                Some(seen) => d.path = seen,
                None => d.path_complete = false,
            }
        }
    }
    if d.seen_path.as_ref() == Some(&d.path) {
        d.seen_path = None;
    }
}

/// A deletion through overlayfs reaches the upper layer's filesystem hook,
/// which names the upper inode, with one dentry reference more than a plain
/// unlink has (the overlay's dentry holds the upper one). Holders see the
/// overlay's inode: the upper inode's number on the overlay's device.
fn unstack(d: &mut Deletion, located: Option<&Located>) {
    let Some(v) = d.victim.as_mut() else { return };
    let Some(at) = located.filter(|at| at.stacked && at.dev != v.inode.dev) else { return };
    v.refs = v.refs.map(|r| r.saturating_sub(1));
    v.inode.dev = at.dev;
}

/// Where the reader's events come from, and what it pins with.
pub struct Sources {
    pub ring: RingBuf<MapData>,
    /// The fs tier's fanotify group, for filesystems without its hooks.
    pub group: Option<Arc<Group>>,
    pub budget: Arc<Budget>,
    pub anchors: Arc<Anchors>,
}

/// Drains the ring buffer (and the fanotify group) for as long as the
/// daemon runs, forwarding every event. Undecodable records are logged,
/// never fatal.
///
/// A thread of its own blocked in poll(2), rather than a task on the async
/// runtime: one wake-up between the kernel's notification and the first
/// pin, instead of the reactor's and then a worker's.
pub fn forward<M: From<Event>>(mut src: Sources, tx: Sender<M>) -> Result<()> {
    let mut views = Views::new();
    // One read of fanotify per pass, after the ring buffer: reports on
    // tmpfs or xfs (a hundred or so) cannot hold up the pins of the rest.
    let mut buf = vec![0u8; 16 << 10];
    // Events that are not urgent are written without waking us; this is
    // the longest they wait.
    let patience = Timespec { tv_sec: 0, tv_nsec: 20_000_000 };
    loop {
        let mut fds = vec![PollFd::new(&src.ring, PollFlags::IN)];
        fds.extend(src.group.as_deref().map(|group| PollFd::new(group, PollFlags::IN)));
        match poll(&mut fds, Some(&patience)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
        drop(fds);
        let mut events = Vec::new();
        while let Some(item) = src.ring.next() {
            match decode(&item) {
                Ok(mut event) => {
                    if let Event::Delete(d) = &mut event {
                        grab(d, &src.budget, &src.anchors);
                    }
                    events.push(event);
                }
                Err(err) => log::warn!("dropping an undecodable event: {err:#}"),
            }
        }
        match src.group.as_ref().map(|group| group.read(&mut buf)) {
            Some(Ok(notices)) => events.extend(notices.into_iter().filter_map(|notice| match notice {
                Notice::Deleted(report) => {
                    notified::deletion(&report, &src.anchors, &src.budget).map(Event::Delete)
                }
                Notice::Lost => Some(Event::Lost),
                // This group marks no directory for names.
                Notice::Appeared(_) => None,
            })),
            Some(Err(err)) => {
                log::error!(
                    "reading fanotify: {err}; deletions it reported are found by snapshots from now on"
                );
                src.group = None;
                events.push(Event::Lost);
            }
            None => {}
        }
        for mut event in events {
            if let Event::Delete(d) = &mut event {
                place(d, &mut views);
            }
            if tx.send(event.into()).is_err() {
                return Ok(());
            }
        }
        views.expire();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(flags: u32, path: &[u8], dir: &[u8]) -> Vec<u8> {
        let ev = DeleteEvent {
            kind: event_kind::DELETE,
            op: delete_op::UNLINK,
            ktime_ns: 7,
            tid: 11,
            tgid: 10,
            uid: 1000,
            ret: 0,
            comm: *b"rm\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            victim: unrm_abi::Victim {
                flags: victim_flags::KNOWN | victim_flags::FS_HOOKED,
                dev: (254 << 20) | 3,
                ino: 99,
                size: 5,
                mode: 0o100600,
                nlink: 1,
                refs: 2,
                uid: 1000,
                gid: 1000,
                generation: 0,
                _pad: [0; 2],
                parent: unrm_abi::DirFacts::default(),
            },
            path_len: path.len() as u32,
            dir_len: dir.len() as u32,
            path_flags: flags,
            mnt_ns: 0,
            cgroup_id: 0,
        };
        let mut out =
            unsafe { std::slice::from_raw_parts(&ev as *const _ as *const u8, size_of::<DeleteEvent>()) }
                .to_vec();
        out.extend_from_slice(path);
        out.extend_from_slice(dir);
        out
    }

    fn deletion(bytes: &[u8]) -> Deletion {
        match decode(bytes).unwrap() {
            Event::Delete(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_paths_join_the_reversed_directory() {
        let d = deletion(&event(0, b"../x/./f", b"sub\0home\0"));
        assert_eq!(d.path, Path::new("/home/x/f"));
        assert!(d.path_complete);
        assert_eq!((d.pid, d.uid, d.comm.as_str()), (10, 1000, "rm"));
        let v = d.victim.unwrap();
        assert_eq!(v.inode, InodeId { dev: libc::makedev(254, 3), ino: 99 });
        assert!(v.refs.is_none(), "REFS_VALID was not set");
        assert!(v.is_regular());
    }

    #[test]
    fn absolute_paths_ignore_the_directory_and_normalise() {
        let d = deletion(&event(path_flags::ABSOLUTE, b"//tmp/../var//f", b""));
        assert_eq!(d.path, Path::new("/var/f"));
        let d = deletion(&event(path_flags::DIR_TRUNCATED, b"f", b"c\0b\0"));
        assert_eq!(d.path, Path::new("/b/c/f"));
        assert!(!d.path_complete);
        assert_eq!(deletion(&event(0, b"f", b"")).path, Path::new("/f"));
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        let bytes = event(0, b"abc", b"d\0");
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode(&bytes[..8]).is_err());
        assert!(decode(&[9, 0, 0, 0]).is_err());
        assert!(decode(&[]).is_err());
    }
}
