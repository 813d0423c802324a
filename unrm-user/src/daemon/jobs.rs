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
    access::{ACL_XATTR, AclEntry, Parent, PathFacts, Perms, parse_acl},
    api::{proto::Response, server::Reply},
    budget::Budget,
    holders::InodeId,
    pins::{Meta, PinFd, Pinned},
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
    /// Its owner, mode and ACL when captured.
    pub perms: Perms,
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

/// A pinned file, as a file worker inspects it.
pub struct Subject {
    pub record: i64,
    pub inode: InodeId,
    /// Where it was, as recorded.
    pub path: PathBuf,
    /// The probes said `path` is the host's.
    pub host_path: bool,
    /// The directory it was deleted from, as the probes saw it.
    pub parent: Option<Parent>,
    /// Its device, as stat(2) reports it.
    pub dev: u64,
}

/// Opens the pinned file for reading, for the pin to become that
/// descriptor (see `pins`): urgent, since on some filesystems the content
/// goes with the last holder's close.
pub fn open_pin<M: From<Done> + Send + 'static>(
    pin: Pinned,
    budget: Arc<Budget>,
    record: i64,
    inode: InodeId,
    done: Sender<M>,
) -> Job {
    Box::new(move || match pin.opened(&budget) {
        Some(Ok(opened)) => {
            let _ = done.send(Done::Opened { record, inode, pin: opened }.into());
        }
        Some(Err(err)) => log::debug!("record {record}: pin not opened for reading: {err}"),
        None => {}
    })
}

/// Learns the pinned file's ACL, the directories on its path, and whether
/// the recorded path really leads to where it was.
pub fn inspect<M: From<Done> + Send + 'static>(pin: Pinned, it: Subject, done: Sender<M>) -> Job {
    Box::new(move || {
        let home = it.parent.map(|parent| Home { parent, dev: it.dev });
        let path_resolved = it.host_path && home.is_some_and(|home| leads_to(&pin, &it.path, home));
        let found = Inspection {
            acl: read_acl(&pin),
            // What another path's directories allow says nothing of this file.
            dirs: home.filter(|_| path_resolved).and_then(|home| dirs_of(&it.path, home)),
            path_resolved,
        };
        let _ = done.send(Done::Inspected { record: it.record, inode: it.inode, found }.into());
    })
}

/// Reads a pinned file's ACL again.
pub fn reread_acl<M: From<Done> + Send + 'static>(pin: Pinned, inode: InodeId, done: Sender<M>) -> Job {
    Box::new(move || {
        let _ = done.send(Done::AclRead { inode, acl: read_acl(&pin) }.into());
    })
}

/// One file a capture job copies.
pub struct ToCapture {
    pub pin: Pinned,
    pub record: i64,
    pub inode: InodeId,
    /// The size room was made for.
    pub admitted: u64,
}

/// Copies pinned files into the store, each with the attributes it has
/// now if it is still no larger than admitted; then makes them durable
/// together (`Store::commit`), and reports each.
pub fn capture<M: From<Done> + Send + 'static>(
    store: Arc<Store>,
    files: Vec<ToCapture>,
    done: Sender<M>,
) -> Job {
    Box::new(move || {
        let started = Instant::now();
        let written: Vec<(ToCapture, Result<Captured, String>)> = files
            .into_iter()
            .map(|f| {
                let result = write(&store, &f).map_err(|e| format!("{e:#}"));
                (f, result)
            })
            .collect();
        let ids: Vec<i64> = written.iter().filter(|(_, r)| r.is_ok()).map(|(f, _)| f.record).collect();
        let mut committed = store.commit(&ids).into_iter();
        for (f, result) in written {
            let result = result.and_then(|mut captured| {
                committed.next().expect("one result per id").map_err(|e| format!("{e:#}"))?;
                captured.cost = store.cost(f.record).map_err(|e| format!("{e:#}"))?;
                Ok(captured)
            });
            let (record, inode) = (f.record, f.inode);
            drop(f);
            let captured =
                Done::Captured { record, inode, result, took: started.elapsed(), at: SystemTime::now() };
            let _ = done.send(captured.into());
        }
    })
}

/// One file's copy, not yet durable.
fn write(store: &Store, f: &ToCapture) -> anyhow::Result<Captured> {
    let file = f.pin.open_for_reading()?;
    let xattrs = xattrs::read(&file);
    let now = Meta::of(file.as_fd())?;
    // Room was made for `admitted` bytes (by its limits and the store's): a
    // file grown since, through a holder no snapshot sees, is not copied
    // past them.
    if now.size > f.admitted {
        anyhow::bail!(
            "it grew to {} bytes after unrm made room for {} (a holder unrm cannot see?)",
            now.size,
            f.admitted
        );
    }
    let acl = xattrs.iter().find(|x| x.name == ACL_XATTR).and_then(|x| parse_acl(&x.value));
    let perms = Perms { uid: now.uid, gid: now.gid, mode: now.mode, acl };
    let stored = store.write(f.record, file.as_fd(), now.size)?;
    Ok(Captured { stored, xattrs, cost: Cost::default(), perms })
}

/// A capture's checksum, computed after the fact so that a capture (a
/// reflink especially) does not wait for a pass over every byte.
pub fn checksum<M: From<Done> + Send + 'static>(store: Arc<Store>, record: i64, done: Sender<M>) -> Job {
    Box::new(move || {
        let checksum = store.checksum(record).map_err(|e| format!("{e:#}"));
        let _ = done.send(Done::Checksummed { record, checksum }.into());
    })
}

/// Answers a restore of a held file: a reading descriptor, and the times
/// and attributes it has now (only those its caller may see), and whether
/// its recorded path still leads to its directory.
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
            let home = meta.parent.zip(record.dev).map(|(parent, dev)| Home { parent, dev });
            record.path_resolved =
                record.path_resolved && home.is_some_and(|home| leads_to(&pin, &path, home));
            Ok(Reply::with_fd(Response::Opened { record, meta }, OwnedFd::from(file)))
        })();
        let _ =
            reply.send(answer.unwrap_or_else(|err| Reply::error(format!("opening the held file: {err:#}"))));
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

/// The directory a file was deleted from, and the filesystem it is on.
#[derive(Clone, Copy)]
struct Home {
    parent: Parent,
    dev: u64,
}

impl Home {
    fn is(&self, dir: &Meta) -> bool {
        dir.dev == self.dev && self.parent.is(dir.ino, dir.uid, dir.gid)
    }
}

/// The directories from `/` down to `path`'s, walked without following a
/// symbolic link; None if any step fails, or if the last is not the very
/// directory the file was deleted from (one removed and made again since,
/// by anyone, says nothing of who could reach the file). That last one is
/// judged by its owner and mode when the file was deleted.
fn dirs_of(path: &Path, home: Home) -> Option<Vec<Perms>> {
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
    if !home.is(&Meta::of(dir.as_fd()).ok()?) {
        return None;
    }
    let last = out.last_mut()?;
    (last.uid, last.gid, last.mode) = (home.parent.uid, home.parent.gid, home.parent.mode);
    Some(out)
}

fn perms_of(dir: &OwnedFd) -> Option<Perms> {
    use std::os::fd::AsRawFd;
    let meta = Meta::of(dir.as_fd()).ok()?;
    let acl = acl_at(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())))?;
    Some(Perms { uid: meta.uid, gid: meta.gid, mode: meta.mode, acl })
}

/// Whether `path` names where the pinned file was: its name, in the very
/// directory it was deleted from, reached from the host's root without a
/// symbolic link. A path made up in another mount namespace, spelt through
/// a link and `..`, or into a directory made again since, is not.
fn leads_to(pin: &PinFd, path: &Path, home: Home) -> bool {
    let Ok(link) = std::fs::read_link(pin.proc_path()) else { return false };
    let link = link.as_os_str().as_bytes();
    let real = Path::new(OsStr::from_bytes(link.strip_suffix(b" (deleted)").unwrap_or(link)));
    if real.file_name() != path.file_name() {
        return false;
    }
    path.parent().and_then(dir_meta).is_some_and(|dir| home.is(&dir))
}

/// A directory, reached without following symbolic links.
fn dir_meta(path: &Path) -> Option<Meta> {
    let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = openat2(CWD, path, how, Mode::empty(), ResolveFlags::NO_SYMLINKS).ok()?;
    Meta::of(fd.as_fd()).ok()
}
