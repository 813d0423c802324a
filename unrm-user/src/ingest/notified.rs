//! A deletion from a fanotify report (`notify`): pinned first, through the
//! filesystem's anchor and the handle the kernel encoded for the deleted
//! inode, then named from the directory's handle.
//!
//! A regular file that lost its last name and that something still held
//! when the reader got to it is pinned. A handle that no longer opens
//! (`ESTALE`) means the inode is gone: nothing held it, and the name is
//! recorded as an unheld deletion, without inode, size or type (it may have
//! been a symlink), as the tracepoint tier records one on such filesystems.

use std::{
    ffi::OsStr,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::Arc,
};

use super::{Deletion, Grab, UNKNOWN_UID, Victim, normalize};
use crate::{
    access::Parent,
    anchors::Anchors,
    budget::Budget,
    clock::monotonic_ns,
    handle,
    holders::InodeId,
    notify::Report,
    pins::{self, Meta, Refused},
    record::Op,
};

/// Links before the deletion, as far as anyone can tell now: the name just
/// removed was the last one.
const LAST_LINK: u32 = 1;

pub fn deletion(r: &Report, anchors: &Anchors, budget: &Arc<Budget>) -> Option<Deletion> {
    // When the deletion happened is not reported: pin latency counts from
    // here, when the reader got to it.
    let read_ns = monotonic_ns();
    let anchor = anchors.by_fsid(r.fsid)?;
    let (grabbed, over_budget, nothing_held) = match pins::by_encoded_handle(anchor.fd(), &r.target, budget) {
        Ok((pin, meta)) if meta.is_regular() && meta.nlink == 0 => {
            (Some(Box::new(Grab { pin, meta, at_ns: monotonic_ns() })), false, false)
        }
        // Not a file, or it lives on under another name: nothing lost.
        Ok(_) => return None,
        Err(Refused::Gone(_)) => (None, false, true),
        Err(Refused::Budget) => (None, true, false),
    };
    let dir = handle::open_encoded(anchor.fd(), &r.dir)
        .inspect_err(|err| {
            log::debug!("fanotify: the directory of {:?} does not open: {err}", OsStr::from_bytes(&r.name))
        })
        .ok();
    let parent = dir.as_ref().and_then(|fd| Meta::of(fd.as_fd()).ok()).map(|m| Parent {
        ino: m.ino,
        uid: m.uid,
        gid: m.gid,
        mode: m.mode,
    });
    let (path, path_complete) = place_in(&anchor.root, dir, &r.name);
    let (uid, comm) = deleter(r.pid);
    let victim = grabbed.as_ref().map(|g| Victim {
        inode: InodeId { dev: anchor.dev, ino: g.meta.ino },
        size: g.meta.size,
        mode: g.meta.mode,
        nlink: LAST_LINK,
        // Held by something: its handle still opened.
        refs: Some(2),
        uid: g.meta.uid,
        gid: g.meta.gid,
        generation: 0,
        parent,
    });
    Some(Deletion {
        op: Op::Unlink,
        ktime_ns: read_ns,
        pid: r.pid,
        uid,
        comm,
        ret: 0,
        path: normalize(&path),
        host_path: false,
        seen_path: None,
        mnt_ns: 0,
        cgroup_id: 0,
        cgroup: None,
        path_complete,
        fs_hooked: victim.is_some(),
        victim,
        fs_relative: true,
        fs_dev: Some(anchor.dev),
        grabbed,
        over_budget,
        nothing_held,
    })
}

/// The path of `name` in directory `dir`, from the root of the filesystem,
/// and whether it can be trusted whole. The directory's path is read
/// through the anchor, relative to the root of the mount it copied
/// (`root` in the filesystem): right when that mount shows the whole
/// filesystem; through a bind mount of a subtree a directory outside it
/// would be misplaced, and a directory removed since reads "… (deleted)":
/// either makes the path incomplete.
fn place_in(root: &Path, dir: Option<OwnedFd>, name: &[u8]) -> (PathBuf, bool) {
    let read = dir.and_then(|fd| std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok());
    let complete = read.as_ref().is_some_and(|p| !p.as_os_str().as_bytes().ends_with(b" (deleted)"))
        && root == Path::new("/");
    let inside = read.unwrap_or_default();
    let mut path = root.join(inside.strip_prefix("/").unwrap_or(&inside));
    path.push(OsStr::from_bytes(name));
    (path, complete)
}

/// The deleter's real uid and name, if it is still there to ask; fanotify
/// reports only its pid.
fn deleter(pid: u32) -> (u32, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let uid = field("Uid:").and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(UNKNOWN_UID);
    (uid, field("Name:").unwrap_or("?").to_owned())
}
