//! Who holds deleted files right now: the iterators' output, parsed.
//!
//! This is the daemon's source of truth (docs/design.md: events are hints).
//! Events say where to look and when; a `Snapshot` says what is actually held, by whom, and how
//! to take a reference to it.

use std::{
    collections::HashMap,
    ffi::OsStr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use unrm_abi::{HeldRecord, holder_kind};

use crate::{access::Parent, probe::Probes};

/// An inode, identified as `stat(2)` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct InodeId {
    pub dev: u64,
    pub ino: u64,
}

impl InodeId {
    /// From the kernel's `s_dev` encoding (`major << 20 | minor`).
    pub fn from_kernel(dev: u32, ino: u64) -> Self {
        Self { dev: libc::makedev(dev >> 20, dev & 0xfffff), ino }
    }

    /// Back to the kernel's encoding, for the probes' maps.
    pub fn kernel_dev(&self) -> u32 {
        (libc::major(self.dev) << 20) | libc::minor(self.dev)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderKind {
    Fd,
    Mmap,
    Exe,
}

/// One process's hold on a deleted file, and how to reach it through /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub kind: HolderKind,
    pub pid: u32,
    /// The process's real uid.
    pub uid: u32,
    pub comm: String,
    pub fd: u32,
    pub vm_start: u64,
    pub vm_end: u64,
}

impl Hold {
    /// The /proc link that opens this hold's inode.
    pub fn proc_path(&self) -> PathBuf {
        match self.kind {
            HolderKind::Fd => format!("/proc/{}/fd/{}", self.pid, self.fd).into(),
            HolderKind::Mmap => {
                format!("/proc/{}/map_files/{:x}-{:x}", self.pid, self.vm_start, self.vm_end).into()
            }
            HolderKind::Exe => format!("/proc/{}/exe", self.pid).into(),
        }
    }
}

/// A deleted regular file and everyone who holds it.
#[derive(Clone, Debug)]
pub struct HeldFile {
    pub inode: InodeId,
    /// Where it lived, as `d_path` saw it, without " (deleted)".
    pub path: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub holds: Vec<Hold>,
    /// The directory it was deleted from.
    pub parent: Option<Parent>,
}

/// Every deleted-but-held file at one moment.
#[derive(Default, Debug)]
pub struct Snapshot {
    pub files: HashMap<InodeId, HeldFile>,
}

impl Snapshot {
    pub fn take(probes: &mut Probes) -> Result<Self> {
        let mut snapshot = Snapshot::default();
        for name in Probes::iterator_names() {
            snapshot.add(&probes.run_iterator(name)?)?;
        }
        Ok(snapshot)
    }

    /// Adds the records of one iterator run.
    pub fn add(&mut self, mut bytes: &[u8]) -> Result<()> {
        const HEADER: usize = size_of::<HeldRecord>();
        while !bytes.is_empty() {
            if bytes.len() < HEADER {
                bail!("iterator output ends inside a record");
            }
            // SAFETY: HeldRecord is plain integers; read_unaligned copies.
            let rec: HeldRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
            let path_len = rec.path_len as usize;
            if bytes.len() < HEADER + path_len {
                bail!("iterator output ends inside a path");
            }
            let path = &bytes[HEADER..HEADER + path_len];
            bytes = &bytes[HEADER + path_len..];
            self.insert(&rec, path);
        }
        Ok(())
    }

    fn insert(&mut self, rec: &HeldRecord, raw_path: &[u8]) {
        let inode = InodeId::from_kernel(rec.dev, rec.ino);
        let path = strip_deleted(raw_path);
        if is_unnamed_tmpfile(&path, inode.ino) {
            return;
        }
        let kind = match rec.holder {
            holder_kind::FD => HolderKind::Fd,
            holder_kind::EXE => HolderKind::Exe,
            _ => HolderKind::Mmap,
        };
        let hold = Hold {
            kind,
            pid: rec.tgid,
            uid: rec.holder_uid,
            comm: comm_string(&rec.comm),
            fd: rec.fd,
            vm_start: rec.vm_start,
            vm_end: rec.vm_end,
        };
        let file = self.files.entry(inode).or_insert_with(|| HeldFile {
            inode,
            path,
            size: rec.size,
            mode: rec.mode,
            uid: rec.uid,
            gid: rec.gid,
            holds: Vec::new(),
            parent: Parent::of(&rec.parent),
        });
        // Threads share tables and mappings: one hold per process and kind
        // (and fd); one mapping per process is enough to reach the inode.
        let duplicate = file
            .holds
            .iter()
            .any(|h| h.pid == hold.pid && h.kind == hold.kind && (kind != HolderKind::Fd || h.fd == hold.fd));
        if !duplicate {
            file.holds.push(hold);
        }
    }

    /// The held file whose former path is `path`, if exactly one matches
    /// and it is not in `exclude`.
    pub fn by_path(&self, path: &Path, exclude: impl Fn(&InodeId) -> bool) -> Option<&HeldFile> {
        let mut found = self.files.values().filter(|f| f.path == path && !exclude(&f.inode));
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }
}

/// A held file as `unrm scan` shows it (and the daemon sends it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldView {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub holders: Vec<HoldView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HoldView {
    pub pid: u32,
    pub comm: String,
    pub kind: HolderKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fd: Option<u32>,
    /// `start-end` of the mapping, for `mmap` and `exe`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub map: Option<String>,
}

impl Snapshot {
    /// Every held file, by path then inode.
    pub fn views(&self) -> Vec<HeldView> {
        Self::views_of(self.files.values().cloned().collect())
    }

    /// These held files, by path (its bytes: comparing by components costs
    /// a tenth of a large scan) then inode.
    pub fn views_of(mut files: Vec<HeldFile>) -> Vec<HeldView> {
        use std::os::unix::ffi::OsStrExt;
        files.sort_unstable_by(|a, b| {
            a.path.as_os_str().as_bytes().cmp(b.path.as_os_str().as_bytes()).then(a.inode.cmp(&b.inode))
        });
        files
            .into_iter()
            .map(|f| HeldView {
                path: f.path.display().to_string(),
                dev: f.inode.dev,
                ino: f.inode.ino,
                size: f.size,
                mode: f.mode,
                uid: f.uid,
                gid: f.gid,
                holders: f
                    .holds
                    .iter()
                    .map(|h| HoldView {
                        pid: h.pid,
                        comm: h.comm.clone(),
                        kind: h.kind,
                        fd: (h.kind == HolderKind::Fd).then_some(h.fd),
                        map: (h.kind != HolderKind::Fd).then(|| format!("{:x}-{:x}", h.vm_start, h.vm_end)),
                    })
                    .collect(),
            })
            .collect()
    }
}

/// `d_path` appends " (deleted)" to unlinked files.
fn strip_deleted(raw: &[u8]) -> PathBuf {
    let raw = raw.strip_suffix(b" (deleted)").unwrap_or(raw);
    PathBuf::from(OsStr::from_bytes(raw))
}

/// `O_TMPFILE` files never had a name; the kernel calls them `#<ino>`.
fn is_unnamed_tmpfile(path: &Path, ino: u64) -> bool {
    path.file_name().is_some_and(|name| name.as_bytes() == format!("#{ino}").as_bytes())
}

pub fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(holder: u32, tgid: u32, fd: u32, ino: u64, path: &[u8]) -> Vec<u8> {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"cat\0");
        let rec = HeldRecord {
            holder,
            tgid,
            fd,
            path_len: path.len() as u32,
            comm,
            dev: (8 << 20) | 1,
            mode: 0o100644,
            ino,
            size: 5,
            uid: 1000,
            gid: 1000,
            vm_start: 0x1000,
            vm_end: 0x2000,
            parent: unrm_abi::DirFacts::default(),
            holder_uid: 1000,
            _pad: 0,
        };
        let mut out =
            unsafe { std::slice::from_raw_parts(&rec as *const _ as *const u8, size_of::<HeldRecord>()) }
                .to_vec();
        out.extend_from_slice(path);
        out
    }

    #[test]
    fn parses_groups_and_deduplicates() {
        let mut bytes = record(holder_kind::FD, 10, 3, 42, b"/tmp/a (deleted)");
        bytes.extend(record(holder_kind::FD, 10, 3, 42, b"/tmp/a (deleted)")); // a thread
        bytes.extend(record(holder_kind::MMAP, 11, 0, 42, b"/tmp/a (deleted)"));
        bytes.extend(record(holder_kind::FD, 12, 7, 43, b"/tmp/b"));
        let mut snap = Snapshot::default();
        snap.add(&bytes).unwrap();
        assert_eq!(snap.files.len(), 2);
        let a = &snap.files[&InodeId::from_kernel((8 << 20) | 1, 42)];
        assert_eq!(a.path, Path::new("/tmp/a"));
        assert_eq!(a.holds.len(), 2);
        assert_eq!(a.holds[0].comm, "cat");
        assert_eq!(a.holds[0].proc_path(), Path::new("/proc/10/fd/3"));
        assert_eq!(a.holds[1].proc_path(), Path::new("/proc/11/map_files/1000-2000"));
        assert_eq!(a.inode.dev, libc::makedev(8, 1));
        assert_eq!(a.inode.kernel_dev(), (8 << 20) | 1);
    }

    #[test]
    fn skips_o_tmpfile_and_rejects_truncation() {
        let mut snap = Snapshot::default();
        snap.add(&record(holder_kind::FD, 10, 3, 99, b"/tmp/#99 (deleted)")).unwrap();
        assert!(snap.files.is_empty());
        let bytes = record(holder_kind::FD, 10, 3, 42, b"/tmp/a");
        assert!(snap.add(&bytes[..bytes.len() - 1]).is_err());
        assert!(snap.add(&bytes[..10]).is_err());
    }

    #[test]
    fn by_path_needs_a_unique_unexcluded_match() {
        let mut snap = Snapshot::default();
        snap.add(&record(holder_kind::FD, 10, 3, 1, b"/tmp/a (deleted)")).unwrap();
        snap.add(&record(holder_kind::FD, 10, 4, 2, b"/tmp/a (deleted)")).unwrap();
        assert!(snap.by_path(Path::new("/tmp/a"), |_| false).is_none());
        let found = snap.by_path(Path::new("/tmp/a"), |id| id.ino == 1).unwrap();
        assert_eq!(found.inode.ino, 2);
    }
}
