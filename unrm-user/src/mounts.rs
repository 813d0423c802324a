//! Where filesystems are mounted, in the daemon's mount namespace and in
//! the deleters'. A filesystem hook sees a dentry, not the mount it was
//! reached through, so the probe reports a path from the filesystem's root;
//! a syscall probe reports the path as the deleter named it, which inside a
//! container is not where the file lives on the host. These tables turn
//! either into the host's path, and into the deleter's.

use std::{
    collections::HashMap,
    ffi::OsString,
    os::unix::{ffi::OsStringExt, fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

struct Mount {
    /// The mount's id (statx `STATX_MNT_ID` gives a descriptor's).
    id: u64,
    dev: u64,
    /// The directory of the filesystem this mount shows (`/` unless a bind).
    root: PathBuf,
    point: PathBuf,
    /// overlayfs: its files' inodes belong to the layers below.
    stacked: bool,
    /// The filesystem's type, as mountinfo names it (`ext4`, `tmpfs`...).
    fstype: String,
}

impl Mount {
    fn filesystem(&self) -> Filesystem<'_> {
        Filesystem { dev: self.dev, point: &self.point, root: &self.root, fstype: &self.fstype }
    }
}

/// Where a path leads: the filesystem, the path inside it, and whether it
/// was reached through overlayfs.
#[derive(Debug, PartialEq)]
pub struct Located {
    pub dev: u64,
    pub fs_path: PathBuf,
    pub stacked: bool,
}

/// A filesystem, and one mount of it.
pub struct Filesystem<'a> {
    pub dev: u64,
    pub point: &'a Path,
    /// The directory of the filesystem the mount shows.
    pub root: &'a Path,
    /// As mountinfo names it (`ext4`, `tmpfs`...).
    pub fstype: &'a str,
}

#[derive(Default)]
pub struct Mounts {
    mounts: Vec<Mount>,
}

impl Mounts {
    /// A table as mountinfo(5) lists it.
    pub fn parse(text: &str) -> Self {
        let mounts = text
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let (major, minor) = fields.get(2)?.split_once(':')?;
                let fstype = fields.iter().skip_while(|f| **f != "-").nth(1)?;
                Some(Mount {
                    id: fields.first()?.parse().ok()?,
                    dev: libc::makedev(major.parse().ok()?, minor.parse().ok()?),
                    root: unescape(fields.get(3)?),
                    point: unescape(fields.get(4)?),
                    stacked: *fstype == "overlay",
                    fstype: fstype.to_string(),
                })
            })
            .collect();
        Mounts { mounts }
    }

    /// The mounts' ids.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.mounts.iter().map(|m| m.id)
    }

    /// The filesystem mount `id` shows, through that mount.
    pub fn by_id(&self, id: u64) -> Option<Filesystem<'_>> {
        self.mounts.iter().find(|m| m.id == id).map(Mount::filesystem)
    }

    /// The absolute path of `fs_path` (relative to the root of filesystem
    /// `dev`): through the mount that shows the most of it, and of those
    /// the one nearest `/`.
    pub fn resolve(&self, dev: u64, fs_path: &Path) -> Option<PathBuf> {
        let best = self
            .mounts
            .iter()
            .filter(|m| m.dev == dev && fs_path.starts_with(&m.root))
            .max_by_key(|m| (m.root.as_os_str().len(), std::cmp::Reverse(m.point.as_os_str().len())))?;
        Some(best.point.join(fs_path.strip_prefix(&best.root).ok()?))
    }

    /// Every filesystem once, through one of its mounts: one of its whole
    /// tree if there is one, the first listed of those.
    pub fn filesystems<'a>(&'a self) -> Vec<Filesystem<'a>> {
        let mut best: HashMap<u64, &'a Mount> = HashMap::new();
        for m in &self.mounts {
            let whole = m.root == Path::new("/");
            best.entry(m.dev)
                .and_modify(|b| {
                    if whole && b.root != Path::new("/") {
                        *b = m
                    }
                })
                .or_insert(m);
        }
        best.into_values().map(Mount::filesystem).collect()
    }

    /// What `path` names: through the mount at the longest matching mount
    /// point, the last mounted of those (it hides the ones below).
    pub fn locate(&self, path: &Path) -> Option<Located> {
        let best = self
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| path.starts_with(&m.point))
            .max_by_key(|(i, m)| (m.point.as_os_str().len(), *i))?
            .1;
        Some(Located {
            dev: best.dev,
            fs_path: best.root.join(path.strip_prefix(&best.point).ok()?),
            stacked: best.stacked,
        })
    }
}

/// The inode number of a process's mount namespace, as the probes report it.
fn mnt_ns_of(pid: &str) -> Option<u32> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).ok().map(|m| m.ino() as u32)
}

/// A namespace's mount table, kept current: the kernel flags an open
/// mountinfo for poll(2) whenever a mount or unmount changes it, so one
/// non-blocking poll tells whether the table read last is still the truth.
struct Watched {
    source: std::fs::File,
    mounts: Mounts,
    used: Instant,
}

impl Watched {
    /// Mount points are relative to `pid`'s root, as it sees them.
    fn open(pid: &str) -> Option<Self> {
        let source = std::fs::File::open(format!("/proc/{pid}/mountinfo")).ok()?;
        let mut table = Watched { source, mounts: Mounts::default(), used: Instant::now() };
        table.reread().then_some(table)
    }

    fn reread(&mut self) -> bool {
        use std::io::{Read, Seek};
        let mut text = String::new();
        let read = self.source.rewind().is_ok() && self.source.read_to_string(&mut text).is_ok();
        self.mounts = Mounts::parse(&text);
        read && !text.is_empty()
    }

    /// The table, re-read first if it changed; None once unreadable (every
    /// process of the namespace is gone).
    fn current(&mut self) -> Option<&Mounts> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let mut fds = [PollFd::new(&self.source, PollFlags::PRI)];
        let changed = poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })).is_ok_and(|n| n > 0);
        (!changed || self.reread()).then_some(&self.mounts)
    }
}

/// Mount tables by namespace: the daemon's (the host's), and those of other
/// namespaces deletions came from, each read through a process inside.
/// An open mountinfo keeps its namespace, and every mount in it, alive:
/// other namespaces' are let go once unused for `KEEP_UNUSED`, so that a
/// container that ended does not stay mounted on unrm's account.
pub struct Views {
    own_ns: u32,
    own: Option<Watched>,
    others: HashMap<u32, Watched>,
}

impl Views {
    /// The host's table is the init system's (pid 1): a service manager
    /// may run the daemon in a private copy of it (systemd's
    /// `ProtectSystem=` and friends remount parts read-only there), with
    /// the same mount points but a namespace and mount ids of its own,
    /// which would make every host deletion look foreign. The daemon's own
    /// table serves where pid 1's cannot be read or pid 1 has another root
    /// (the daemon in a chroot: mountinfo shows mount points relative to
    /// the root of the process read through).
    pub fn new() -> Self {
        let root =
            |pid: &str| std::fs::metadata(format!("/proc/{pid}/root")).ok().map(|m| (m.dev(), m.ino()));
        let init = root("1").filter(|r| Some(*r) == root("self")).and_then(|_| Watched::open("1"));
        let (host, own) = match init {
            Some(table) => ("1", Some(table)),
            None => ("self", Watched::open("self")),
        };
        Views { own_ns: mnt_ns_of(host).unwrap_or(0), own, others: HashMap::new() }
    }

    /// The host's table.
    pub fn host(&mut self) -> Option<&Mounts> {
        self.own.as_mut()?.current()
    }

    /// Whether `ns` is the daemon's own mount namespace (0: unknown, taken
    /// to be).
    pub fn is_own(&self, ns: u32) -> bool {
        ns == 0 || ns == self.own_ns
    }

    /// The table of another namespace `ns` as its processes see it: read
    /// through `pid` (the deleter) if it is still inside, else through any
    /// process inside; None when nobody is left in it.
    pub fn foreign(&mut self, ns: u32, pid: u32) -> Option<&Mounts> {
        if self.others.get_mut(&ns).and_then(Watched::current).is_none() {
            self.others.remove(&ns);
            if self.others.len() >= MAX_FOREIGN {
                // Each table is an open descriptor: the least used goes.
                let oldest = self.others.iter().min_by_key(|(_, t)| t.used).map(|(ns, _)| *ns);
                self.others.retain(|ns, _| Some(*ns) != oldest);
            }
            let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
            let found = std::iter::once(pid.to_string())
                .chain(procs.map(|e| e.file_name().to_string_lossy().into_owned()))
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && mnt_ns_of(p) == Some(ns))
                // Checked again after the open: the process may have moved.
                .find_map(|p| Watched::open(&p).filter(|_| mnt_ns_of(&p) == Some(ns)))?;
            self.others.insert(ns, found);
        }
        let table = self.others.get_mut(&ns)?;
        table.used = Instant::now();
        Some(&table.mounts)
    }

    /// Lets go of other namespaces' tables not used lately.
    pub fn expire(&mut self) {
        if !self.others.is_empty() {
            self.others.retain(|_, table| table.used.elapsed() < KEEP_UNUSED);
        }
    }
}

const KEEP_UNUSED: Duration = Duration::from_secs(5);
/// Other namespaces' tables kept open at once (each is a descriptor; any
/// user can make namespaces).
pub const MAX_FOREIGN: usize = 32;

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 254:0 /srv/data /data rw - ext4 /dev/vda rw
31 22 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw
32 22 254:0 / /chroot/root rw - ext4 /dev/vda rw";

    #[test]
    fn resolves_through_the_most_specific_mount() {
        let m = Mounts::parse(INFO);
        let vda = libc::makedev(254, 0);
        assert_eq!(m.resolve(vda, Path::new("/home/a/f")).unwrap(), Path::new("/home/a/f"));
        assert_eq!(m.resolve(vda, Path::new("/srv/data/x")).unwrap(), Path::new("/data/x"));
        let tmp = libc::makedev(0, 40);
        assert_eq!(m.resolve(tmp, Path::new("/f")).unwrap(), Path::new("/mnt/with space/f"));
        assert!(m.resolve(libc::makedev(8, 1), Path::new("/f")).is_none());
    }

    #[test]
    fn locates_a_path_through_the_mount_on_top() {
        let m = Mounts::parse(INFO);
        let vda = libc::makedev(254, 0);
        let data = m.locate(Path::new("/data/x")).unwrap();
        assert_eq!(data, Located { dev: vda, fs_path: PathBuf::from("/srv/data/x"), stacked: false });
        assert_eq!(m.locate(Path::new("/etc/passwd")).unwrap().fs_path, Path::new("/etc/passwd"));
        let stacked = format!("{INFO}\n40 31 0:41 / /mnt/with\\040space rw - overlay overlay rw");
        let m = Mounts::parse(&stacked);
        let on_top = m.locate(Path::new("/mnt/with space/f")).unwrap();
        assert_eq!(
            on_top,
            Located { dev: libc::makedev(0, 41), fs_path: PathBuf::from("/f"), stacked: true }
        );
    }

    #[test]
    fn a_mount_is_found_by_its_id() {
        let m = Mounts::parse(INFO);
        assert_eq!(m.ids().collect::<Vec<_>>(), [22, 30, 31, 32]);
        let tmp = m.by_id(31).unwrap();
        assert_eq!(
            (tmp.dev, tmp.fstype, tmp.point),
            (libc::makedev(0, 40), "tmpfs", Path::new("/mnt/with space"))
        );
        assert!(m.by_id(99).is_none());
    }
}
