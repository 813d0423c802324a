//! The work file workers do for the engine (see `lanes`): everything that
//! must talk to a pinned file's filesystem and so may block. Each job runs
//! on its filesystem's lane and reports back to the engine with a `Done`,
//! or answers a client directly.

use std::{
    ffi::OsStr,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    sync::{Arc, mpsc::Sender},
    time::{Duration, Instant, SystemTime},
};

use rustix::fs::{CWD, Mode, OFlags, ResolveFlags, open, openat, openat2};
use tokio::sync::oneshot;

use super::lanes::Job;
use crate::{
    access::{ACL_XATTR, AclEntry, PathFacts, Perms, parse_acl},
    budget::Budget,
    api::{proto::Response, server::Reply},
    holders::InodeId,
    pins::{Meta, PinFd, Pinned, mount_id},
    record::{Record, RestoreMeta},
    store::{Store, Stored, usage::Cost},
    xattrs::{self, Xattr},
};

pub enum Done {
    /// The pin as a reading descriptor, to replace its `O_PATH` one.
    Opened { record: i64, inode: InodeId, pin: PinFd },
    /// What the access check and a restore need to know about a pin.
    Inspected { record: i64, inode: InodeId, found: Inspection },
    /// A pinned file's ACL, read again because its ctime moved.
    AclRead { inode: InodeId, acl: Option<(i64, Option<Vec<AclEntry>>)> },
    /// The content is durable in the store (or the capture failed).
    Captured { record: i64, inode: InodeId, result: Result<Captured, String>, took: Duration, at: SystemTime },
    /// A capture's checksum, computed afterwards.
    Checksummed { record: i64, checksum: Result<String, String> },
}

pub struct Captured {
    pub stored: Stored,
    /// The attributes that go with this content.
    pub xattrs: Vec<Xattr>,
    pub cost: Cost,
}

/// What a file worker learned about a pinned file, shortly after the pin.
pub struct Inspection {
    /// The file's access ACL when its ctime was the first value; None if it
    /// could not be read.
    pub acl: Option<(i64, Option<Vec<AclEntry>>)>,
    /// The directories from `/` to the file's, None if any could not be read.
    pub dirs: Option<Vec<Perms>>,
    /// The recorded path is where the file lived on this host.
    pub path_resolved: bool,
}

impl Inspection {
    /// The facts the access check keeps, when all are known.
    pub fn facts(&self) -> Option<PathFacts> {
        let (_, acl) = self.acl.clone()?;
        Some(PathFacts { acl, dirs: self.dirs.clone()? })
    }
}

/// Opens the pinned file (see `pins`), then learns its ACL, the
/// directories on its path, and whether the recorded path (`host_path`:
/// the probes said it is the host's) really leads to where it was.
pub fn inspect<M: From<Done> + Send + 'static>(
    pin: Pinned,
    budget: Arc<Budget>,
    record: i64,
    inode: InodeId,
    path: PathBuf,
    host_path: bool,
    done: Sender<M>,
) -> Job {
    Box::new(move || {
        match pin.opened(&budget) {
            Some(Ok(opened)) => {
                let _ = done.send(Done::Opened { record, inode, pin: opened }.into());
            }
            Some(Err(err)) => log::debug!("record {record}: pin not opened for reading: {err}"),
            None => {}
        }
        let found = Inspection {
            acl: read_acl(&pin),
            dirs: dirs_of(&path),
            path_resolved: host_path && leads_to(&pin, &path),
        };
        let _ = done.send(Done::Inspected { record, inode, found }.into());
    })
}

/// Reads a pinned file's ACL again.
pub fn reread_acl<M: From<Done> + Send + 'static>(pin: Pinned, inode: InodeId, done: Sender<M>) -> Job {
    Box::new(move || {
        let _ = done.send(Done::AclRead { inode, acl: read_acl(&pin) }.into());
    })
}

/// Copies a pinned file into the store as record `record`, with the
/// attributes it has now; then its checksum.
pub fn capture<M: From<Done> + Send + 'static>(
    store: Arc<Store>,
    pin: Pinned,
    record: i64,
    inode: InodeId,
    done: Sender<M>,
) -> Job {
    Box::new(move || {
        let started = Instant::now();
        let result = (|| -> anyhow::Result<Captured> {
            let file = pin.open_for_reading()?;
            let xattrs = xattrs::read(&file);
            let size = file.metadata()?.len();
            let stored = store.capture(record, file.as_fd(), size)?;
            let cost = store.cost(record)?;
            Ok(Captured { stored, xattrs, cost })
        })()
        .map_err(|e| format!("{e:#}"));
        drop(pin);
        let ok = result.is_ok();
        let captured =
            Done::Captured { record, inode, result, took: started.elapsed(), at: SystemTime::now() };
        if done.send(captured.into()).is_err() || !ok {
            return;
        }
        let checksum = store.checksum(record).map_err(|e| format!("{e:#}"));
        let _ = done.send(Done::Checksummed { record, checksum }.into());
    })
}

/// Answers a restore of a held file: a reading descriptor, and the times
/// and attributes it has now (only those its caller may see).
pub fn open_held(
    pin: Pinned,
    mut record: Record,
    mut meta: RestoreMeta,
    for_root: bool,
    reply: oneshot::Sender<Reply>,
) -> Job {
    Box::new(move || {
        let answer = (|| -> anyhow::Result<Reply> {
            let file = pin.open_for_reading()?;
            let now = Meta::of(file.as_fd())?;
            meta.xattrs = xattrs::read(&file);
            if !for_root {
                xattrs::keep_unprivileged(&mut meta.xattrs);
            }
            meta.atime_ns = Some(now.atime_ns);
            meta.mtime_ns = Some(now.mtime_ns);
            let path = PathBuf::from(OsStr::from_bytes(&meta.path));
            record.path_resolved = record.path_resolved && leads_to(&pin, &path);
            Ok(Reply { response: Response::Opened { record, meta }, fd: Some(OwnedFd::from(file)) })
        })();
        let _ = reply.send(answer.unwrap_or_else(|err| Reply::error(format!("opening the held file: {err:#}"))));
    })
}

/// The access ACL of the pinned file and the ctime it was read at.
fn read_acl(pin: &PinFd) -> Option<(i64, Option<Vec<AclEntry>>)> {
    let ctime = Meta::of(pin.as_fd()).ok()?.ctime_ns;
    Some((ctime, acl_at(&pin.proc_path())?))
}

/// The ACL at `path` (a /proc/self/fd link): Some(None) if it has none.
fn acl_at(path: &Path) -> Option<Option<Vec<AclEntry>>> {
    let mut buf = vec![0u8; 4096];
    match rustix::fs::getxattr(path, ACL_XATTR, &mut buf[..]) {
        Ok(n) => parse_acl(&buf[..n]).map(Some),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::OPNOTSUPP) => Some(None),
        Err(_) => None,
    }
}

/// The directories from `/` down to `path`'s, walked without following a
/// symbolic link; None if any step fails (a directory already removed, a
/// link on the way: the access check then knows nothing of them).
fn dirs_of(path: &Path) -> Option<Vec<Perms>> {
    let parent = path.parent()?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = open("/", flags, Mode::empty()).ok()?;
    let mut out = vec![perms_of(&dir)?];
    for part in parent.components() {
        match part {
            Component::RootDir => {}
            Component::Normal(name) => {
                dir = openat(&dir, name, flags, Mode::empty()).ok()?;
                out.push(perms_of(&dir)?);
            }
            _ => return None,
        }
    }
    Some(out)
}

fn perms_of(dir: &OwnedFd) -> Option<Perms> {
    use std::os::fd::AsRawFd;
    let meta = Meta::of(dir.as_fd()).ok()?;
    let acl = acl_at(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())))?;
    Some(Perms { uid: meta.uid, gid: meta.gid, mode: meta.mode, acl })
}

/// Whether `path` names where the pinned file was: its name, in the very
/// directory it was removed from, reached from the host's root without a
/// symbolic link, through a mount the host can see. A path made up in
/// another mount namespace, or spelt through a link and `..`, is not.
fn leads_to(pin: &PinFd, path: &Path) -> bool {
    let Ok(link) = std::fs::read_link(pin.proc_path()) else { return false };
    let link = link.as_os_str().as_bytes();
    let real = Path::new(OsStr::from_bytes(link.strip_suffix(b" (deleted)").unwrap_or(link)));
    if real.file_name() != path.file_name() || !mount_visible(pin) {
        return false;
    }
    match (real.parent().and_then(dir_id), path.parent().and_then(dir_id)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A directory's identity, reached without following symbolic links.
fn dir_id(path: &Path) -> Option<(u64, u64)> {
    let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = openat2(CWD, path, how, Mode::empty(), ResolveFlags::NO_SYMLINKS).ok()?;
    let meta = Meta::of(fd.as_fd()).ok()?;
    Some((meta.dev, meta.ino))
}

/// Whether the mount the pin was reached through is one of the host's.
fn mount_visible(pin: &PinFd) -> bool {
    let Some(id) = mount_id(&pin.as_fd()) else { return false };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    mountinfo.lines().any(|line| line.split(' ').next() == Some(id.as_str()))
}
