//! Deletions on filesystems the fs tier has no tracepoints for, from
//! fanotify (Linux 5.17+).
//!
//! A filesystem-wide mark for `FAN_DELETE`, with the deleted inode's own
//! file handle in each report (`FAN_REPORT_TARGET_FID`), tells of every
//! name removed on that filesystem: who removed it, the directory's handle
//! and the name, and the handle of the inode the name led to. Encoding that
//! handle, in the deleter's call, is also what lets tmpfs find the inode by
//! it later (`handle`: tmpfs only looks up inodes someone asked the handle
//! of). No system call tracepoint is involved, so nothing else pays.
//!
//! This module only owns the group and parses its reports; `ingest` turns a
//! report into a deletion (and a pin) through the filesystem's anchor.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// What one `FAN_DELETE` report says.
#[derive(Debug)]
pub struct Report {
    pub pid: u32,
    /// The filesystem's id, as statfs(2) gives it (`f_fsid`).
    pub fsid: [i32; 2],
    /// The handle of the directory the name was removed from, as
    /// `struct file_handle` (its size, type, bytes).
    pub dir: Vec<u8>,
    pub name: Vec<u8>,
    /// The handle of the inode the name led to.
    pub target: Vec<u8>,
}

pub enum Notice {
    Deleted(Report),
    /// A name appeared in a marked directory (`Group::for_names`).
    Appeared(Appeared),
    /// The queue overflowed: some deletions were not reported.
    Lost,
}

/// What one `FAN_CREATE` or `FAN_MOVED_TO` report says.
#[derive(Debug)]
pub struct Appeared {
    /// The handle of the directory the name appeared in (see `Report::dir`).
    pub dir: Vec<u8>,
    pub name: Vec<u8>,
    /// The name is a directory's.
    pub is_dir: bool,
}

pub struct Group {
    fd: OwnedFd,
}

/// What a group made by `Group::for_names` reports of a marked directory.
const NAMES: u64 = libc::FAN_CREATE | libc::FAN_MOVED_TO | libc::FAN_ONDIR;

impl Group {
    pub fn new() -> io::Result<Group> {
        Self::init(libc::FAN_REPORT_DFID_NAME_TARGET)
    }

    /// A group that reports names created in, or moved into, directories
    /// it marks (`mark_names`), and nothing else (Linux 5.9+).
    pub fn for_names() -> io::Result<Group> {
        Self::init(libc::FAN_REPORT_DFID_NAME)
    }

    fn init(report: u32) -> io::Result<Group> {
        let flags = libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK | report;
        // SAFETY: plain system call; the descriptor it returns is ours.
        let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as u32) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just opened, owned by nothing else.
        Ok(Group { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Reports deletions on the whole filesystem `dir` is on.
    pub fn watch(&self, dir: BorrowedFd) -> io::Result<()> {
        let flags = libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM;
        // SAFETY: a null path names `dir` itself.
        let ret = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                flags,
                libc::FAN_DELETE,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Reports names that appear in the directory `dir` (an inode mark:
    /// nothing else on the filesystem pays for it).
    pub fn mark_names(&self, dir: BorrowedFd) -> io::Result<()> {
        // SAFETY: a null path names `dir` itself.
        let ret = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD,
                NAMES,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// What is queued now (empty when nothing is).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<Vec<Notice>> {
        let n = match rustix::io::read(&self.fd, &mut *buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::AGAIN) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        };
        Ok(parse(&buf[..n]))
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `struct fanotify_event_metadata`: event_len, vers, reserved,
/// metadata_len, mask, fd, pid.
const METADATA_LEN: usize = 24;

/// Splits a read into reports; anything malformed is skipped, not trusted.
fn parse(bytes: &[u8]) -> Vec<Notice> {
    let mut notices = Vec::new();
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + METADATA_LEN) {
        let event_len = u32::from_ne_bytes(head[0..4].try_into().unwrap()) as usize;
        let meta_len = u16::from_ne_bytes(head[6..8].try_into().unwrap()) as usize;
        let mask = u64::from_ne_bytes(head[8..16].try_into().unwrap());
        let pid = i32::from_ne_bytes(head[20..24].try_into().unwrap());
        let Some(event) = bytes.get(at..at + event_len).filter(|_| event_len >= meta_len.max(METADATA_LEN))
        else {
            break;
        };
        if mask & libc::FAN_Q_OVERFLOW != 0 {
            notices.push(Notice::Lost);
        } else if mask & libc::FAN_DELETE != 0
            && let Some(report) = report(&event[meta_len..], pid as u32).filter(|r| !r.target.is_empty())
        {
            notices.push(Notice::Deleted(report));
        } else if mask & (libc::FAN_CREATE | libc::FAN_MOVED_TO) != 0
            && let Some(report) = report(&event[meta_len..], pid as u32)
        {
            let is_dir = mask & libc::FAN_ONDIR != 0;
            notices.push(Notice::Appeared(Appeared { dir: report.dir, name: report.name, is_dir }));
        }
        at += event_len;
    }
    notices
}

/// The info records of a `FAN_DELETE`: the directory's (with the name),
/// then the target's.
fn report(mut infos: &[u8], pid: u32) -> Option<Report> {
    let (mut dir, mut target) = (None, None);
    while infos.len() >= 4 {
        let (kind, len) = (infos[0], u16::from_ne_bytes([infos[2], infos[3]]) as usize);
        let info = infos.get(4..len.max(4))?;
        infos = &infos[len.max(4)..];
        // fsid (8 bytes), then `struct file_handle`: 4-byte size, 4-byte type.
        let fsid = [
            i32::from_ne_bytes(info.get(0..4)?.try_into().ok()?),
            i32::from_ne_bytes(info.get(4..8)?.try_into().ok()?),
        ];
        let size = u32::from_ne_bytes(info.get(8..12)?.try_into().ok()?) as usize;
        let handle = info.get(8..16 + size)?.to_vec();
        let rest = &info[16 + size..];
        match kind {
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME => {
                let name = rest.split(|&b| b == 0).next()?.to_vec();
                dir = Some((fsid, handle, name));
            }
            libc::FAN_EVENT_INFO_TYPE_FID => target = Some(handle),
            _ => {}
        }
    }
    // A `FAN_DELETE` report carries the target's handle; a name's
    // appearance only the directory's.
    let (fsid, dir, name) = dir?;
    Some(Report { pid, fsid, dir, name, target: target.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: u8, fsid: [i32; 2], handle: &[u8], name: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend(fsid[0].to_ne_bytes());
        body.extend(fsid[1].to_ne_bytes());
        body.extend((handle.len() as u32).to_ne_bytes());
        body.extend(1i32.to_ne_bytes());
        body.extend(handle);
        body.extend(name);
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut out = vec![kind, 0];
        out.extend(((body.len() + 4) as u16).to_ne_bytes());
        out.extend(body);
        out
    }

    fn event(mask: u64, pid: i32, infos: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(((METADATA_LEN + infos.len()) as u32).to_ne_bytes());
        out.extend([3u8, 0]);
        out.extend((METADATA_LEN as u16).to_ne_bytes());
        out.extend(mask.to_ne_bytes());
        out.extend((-1i32).to_ne_bytes());
        out.extend(pid.to_ne_bytes());
        out.extend(infos);
        out
    }

    #[test]
    fn a_delete_report_gives_directory_name_and_target_and_overflow_is_a_loss() {
        let mut infos =
            info(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, [7, 8], &[1, 2, 3, 4, 5, 6, 7, 8], b"gone.txt\0");
        infos.extend(info(libc::FAN_EVENT_INFO_TYPE_FID, [7, 8], &[9; 12], b""));
        let mut bytes = event(libc::FAN_DELETE, 42, &infos);
        bytes.extend(event(libc::FAN_Q_OVERFLOW, -1, &[]));
        // A truncated tail is ignored, not read past.
        bytes.extend(&event(libc::FAN_DELETE, 1, &infos)[..30]);
        let notices = parse(&bytes);
        assert_eq!(notices.len(), 2);
        let Notice::Deleted(r) = &notices[0] else { panic!("not a deletion") };
        assert_eq!((r.pid, r.fsid, r.name.as_slice()), (42, [7, 8], &b"gone.txt"[..]));
        assert_eq!(&r.dir[..4], &8u32.to_ne_bytes());
        assert_eq!(r.target.len(), 8 + 12);
        assert!(matches!(notices[1], Notice::Lost));
    }
}
