//! Keepers: threads with a descriptor table of their own, each holding up
//! to a table's worth of `O_PATH` references to protected files.
//!
//! `RLIMIT_NOFILE` bounds each descriptor table, not the process, and a
//! daemon without `CAP_SYS_RESOURCE` cannot raise it past its hard limit
//! (often 20,000 or less), while a protected tree may hold hundreds of
//! thousands of files. A thread that calls `unshare(CLONE_FILES)` gets a
//! table of its own with the same limit; a few such threads hold any number
//! of references, and every one of them stays in unrm's process, which the
//! probes and iterators already leave out of "who holds this file". So a
//! protected file whose last name goes is held by unrm alone, and is
//! captured at once.
//!
//! A keeper never reads a path a user chose: it opens names inside a
//! directory the walker opened (through `/proc/self/fd`, the leader's
//! table), never following a symbolic link, and keeps only regular files.
//! Any other thread reaches a kept file through
//! `/proc/self/task/TID/fd/N`, which is how the engine pins one.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    sync::mpsc::{Receiver, Sender, channel},
    thread,
};

use rustix::fs::{CWD, Mode, OFlags, openat, openat2};

use super::walk::BENEATH;
use crate::pins::Meta;

/// Descriptors a keeper keeps for itself (0-2, and the directory it is
/// opening names in).
const OWN: usize = 8;

/// What a keeper did with one name it was asked to keep.
pub struct Kept {
    pub fd: RawFd,
    pub meta: Meta,
}

enum Cmd {
    /// Opens `names` in the directory `dir` (a descriptor of the process's
    /// main table, open until the reply) and keeps the regular files.
    Keep { dir: RawFd, names: Vec<CString>, reply: Sender<io::Result<Vec<Kept>>> },
    /// Lets go of these.
    Close(Vec<RawFd>),
    /// Which kept descriptors lead to an inode with no name left.
    Sweep { fds: Vec<RawFd>, reply: Sender<Vec<(RawFd, Meta)>> },
}

/// One keeper thread. Once every handle to it is dropped the thread ends,
/// and its table (every reference it kept) goes with it.
#[derive(Clone)]
pub struct Keeper {
    tx: Sender<Cmd>,
    /// The thread's id, for `/proc/self/task/TID/fd/N`.
    pub tid: i32,
    /// How many references it may keep.
    pub capacity: usize,
}

impl Keeper {
    pub fn spawn(n: usize) -> io::Result<Keeper> {
        let (tx, rx) = channel();
        let (ready_tx, ready_rx) = channel();
        thread::Builder::new().name(format!("unrm-keeper-{n}")).spawn(move || match own_table() {
            Ok(()) => {
                let _ = ready_tx.send(Ok(rustix::thread::gettid().as_raw_nonzero().get()));
                serve(&rx);
            }
            Err(err) => {
                let _ = ready_tx.send(Err(err));
            }
        })?;
        let tid = ready_rx.recv().map_err(|_| io::Error::other("the keeper thread died at start"))??;
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(1 << 20);
        let capacity = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 20).saturating_sub(OWN);
        Ok(Keeper { tx, tid, capacity })
    }

    /// Opens and keeps the regular files among `names` in `dir`.
    pub fn keep(&self, dir: BorrowedFd, names: Vec<CString>) -> io::Result<Vec<Kept>> {
        let (reply, answer) = channel();
        let dir = rustix::fd::AsRawFd::as_raw_fd(&dir);
        self.tx.send(Cmd::Keep { dir, names, reply }).map_err(|_| gone())?;
        // `dir` stays open: the caller borrows it until this returns.
        answer.recv().map_err(|_| gone())?
    }

    pub fn close(&self, fds: Vec<RawFd>) {
        if !fds.is_empty() {
            let _ = self.tx.send(Cmd::Close(fds));
        }
    }

    /// Of `fds`, those whose inode has no name left.
    pub fn sweep(&self, fds: Vec<RawFd>) -> Vec<(RawFd, Meta)> {
        let (reply, answer) = channel();
        if self.tx.send(Cmd::Sweep { fds, reply }).is_err() {
            return Vec::new();
        }
        answer.recv().unwrap_or_default()
    }

    /// The /proc link through which another thread reaches a kept file.
    pub fn link(&self, fd: RawFd) -> std::path::PathBuf {
        format!("/proc/self/task/{}/fd/{fd}", self.tid).into()
    }
}

fn gone() -> io::Error {
    io::Error::other("a keeper thread is gone")
}

/// Gives this thread a descriptor table of its own, holding only 0-2: the
/// copy `unshare` makes of the process's would otherwise keep every pin
/// and socket of the daemon alive after the daemon closes it.
fn own_table() -> io::Result<()> {
    // SAFETY: unshare(2) of the descriptor table affects this thread only.
    if unsafe { libc::unshare(libc::CLONE_FILES) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: close_range(2) on this thread's private table only.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn serve(rx: &Receiver<Cmd>) {
    for cmd in rx {
        match cmd {
            Cmd::Keep { dir, names, reply } => {
                let _ = reply.send(keep(dir, &names));
            }
            Cmd::Close(fds) => {
                for fd in fds {
                    // SAFETY: a descriptor this keeper opened and still owns.
                    drop(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
            Cmd::Sweep { fds, reply } => {
                let gone = fds
                    .into_iter()
                    .filter_map(|fd| {
                        // SAFETY: a descriptor this keeper owns, borrowed for one call.
                        let meta = Meta::of(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
                        (meta.nlink == 0).then_some((fd, meta))
                    })
                    .collect();
                let _ = reply.send(gone);
            }
        }
    }
}

fn keep(dir: RawFd, names: &[CString]) -> io::Result<Vec<Kept>> {
    // The walker's directory, reopened into this table.
    let link = format!("/proc/self/fd/{dir}");
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let own = openat(CWD, link.as_str(), flags, Mode::empty())?;
    let mut kept = Vec::with_capacity(names.len());
    for name in names {
        // Nor across a mount (a file bind-mounted over a name, a FUSE one).
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let Ok(fd) = openat2(&own, name.as_c_str(), flags, Mode::empty(), BENEATH) else { continue };
        match Meta::of(fd.as_fd()) {
            Ok(meta) if meta.is_regular() => kept.push(Kept { fd: fd.into_raw_fd(), meta }),
            _ => {}
        }
    }
    Ok(kept)
}
