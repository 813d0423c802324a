//! The protector's thread: it protects and unprotects trees as asked,
//! follows the names that appear in them, notices when a tree's filesystem
//! leaves the mount table, and sweeps the kept references for files whose
//! last name went without a probe saying so.
//!
//! It is the only thread that walks a protected tree; the engine never
//! waits for it (`Ask`s carry a reply callback), and it never holds the
//! shared table's lock while it touches a filesystem.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fs::File,
    io::Read,
    os::{
        fd::{AsFd, AsRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
    sync::{
        Arc,
        mpsc::{Receiver, Sender, TryRecvError, channel},
    },
    time::{Duration, Instant},
};

use rustix::{
    event::{EventfdFlags, PollFd, PollFlags, Timespec, eventfd, poll},
    fs::{CWD, Mode, OFlags, ResolveFlags},
};

mod follow;
mod lifecycle;

use super::{
    Protected, Shared, TreeView,
    trees::{Asked, Registry},
    walk::Counts,
};
use crate::{holders::InodeId, mounts::Mounts, notify::Group};

/// Trees in all, and per user other than root.
const MAX_TREES: usize = 64;
const MAX_TREES_PER_USER: usize = 8;

pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// What the protector's limits and filters are (from the policy).
pub struct Settings {
    /// The config file's `protect` list.
    pub trees: Vec<PathBuf>,
    pub max_files: usize,
    pub max_tree_files: usize,
    /// For each user other than root.
    pub per_user_files: usize,
    /// The policy's exclude (and include) globs say no.
    pub excluded: Arc<dyn Fn(&Path) -> bool + Send + Sync>,
}

pub enum Ask {
    Protect {
        path: PathBuf,
        uid: u32,
        any_fs: bool,
        reply: Reply<Result<TreeView, String>>,
    },
    Unprotect {
        path: PathBuf,
        uid: u32,
        reply: Reply<Result<TreeView, String>>,
    },
    /// The trees `uid` may see (root: all).
    List {
        uid: u32,
        reply: Reply<Vec<TreeView>>,
    },
    Configure(Settings),
    /// Sweep now: a deletion in a protected tree named no inode.
    Sweep,
}

/// A protected file that lost its last name, found by a sweep.
pub struct Gone {
    pub inode: InodeId,
    /// Where its reference can be pinned from.
    pub link: PathBuf,
    /// Where it was, as the kernel last named it.
    pub path: PathBuf,
}

/// The engine's handle on the protector's thread.
pub struct Protector {
    tx: Sender<Ask>,
    wake: Arc<OwnedFd>,
    pub shared: Protected,
}

impl Protector {
    /// Starts the thread; the trees the config and the registry name are
    /// protected in the background. `gone` hears of each swept deletion.
    pub fn start(
        state_dir: &Path,
        settings: Settings,
        sweep_every: Duration,
        gone: impl Fn(Gone) + Send + 'static,
    ) -> std::io::Result<Protector> {
        let (tx, rx) = channel();
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let shared = Arc::new(Shared::default());
        let mountinfo = File::open("/proc/self/mountinfo")?;
        let registry = Registry::new(state_dir);
        let worker = Worker {
            shared: shared.clone(),
            rx,
            wake: wake.clone(),
            asked: registry.load(),
            registry,
            settings,
            trees: BTreeMap::new(),
            next_id: 1,
            gone: Box::new(gone),
            sweep_every,
            next_sweep: Instant::now() + sweep_every,
            mountinfo,
        };
        std::thread::Builder::new().name("unrm-protect".into()).spawn(move || worker.run())?;
        Ok(Protector { tx, wake, shared })
    }

    pub fn ask(&self, ask: Ask) {
        if self.tx.send(ask).is_ok() {
            let _ = rustix::io::write(&*self.wake, &1u64.to_ne_bytes());
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Config,
    User,
}

struct Tree {
    path: PathBuf,
    uid: u32,
    source: Source,
    any_fs: bool,
    /// The filesystem it was protected on (st_dev): it is protected again
    /// only once that filesystem is back at its path.
    dev: Option<u64>,
    live: Option<Live>,
    counts: Counts,
    /// When its queue last overflowed (a walk again, at most once a sweep),
    /// and whether a walk waits for the next sweep.
    rewalked: Option<Instant>,
    rewalk_due: bool,
    fstype: String,
    refused: Option<String>,
}

impl Tree {
    /// A tree not yet walked (nor live, nor refused).
    fn new(path: PathBuf, uid: u32, source: Source, any_fs: bool, dev: Option<u64>) -> Self {
        Tree {
            path,
            uid,
            source,
            any_fs,
            dev,
            live: None,
            counts: Counts::default(),
            rewalked: None,
            rewalk_due: false,
            fstype: String::new(),
            refused: None,
        }
    }
}

/// A tree being protected now.
struct Live {
    /// Its root, opened for reading: the anchor its directories' handles
    /// are opened through.
    root: OwnedFd,
    mnt_id: u64,
    /// Its filesystem's device, as the kernel names its inodes.
    sb_dev: u64,
    group: Group,
}

struct Worker {
    shared: Protected,
    rx: Receiver<Ask>,
    wake: Arc<OwnedFd>,
    registry: Registry,
    asked: Vec<Asked>,
    settings: Settings,
    trees: BTreeMap<u64, Tree>,
    next_id: u64,
    gone: Box<dyn Fn(Gone) + Send>,
    sweep_every: Duration,
    /// When the next sweep is due (an `Ask::Sweep` brings it forward).
    next_sweep: Instant,
    mountinfo: File,
}

/// Sweeps asked for come at most this often: they are merged.
const SWEEP_GAP: Duration = Duration::from_millis(200);

impl Worker {
    fn run(mut self) {
        self.adopt_trees();
        loop {
            let next_sweep = self.next_sweep;
            let live: Vec<(u64, RawFd)> = self
                .trees
                .iter()
                .filter_map(|(id, t)| t.live.as_ref().map(|l| (*id, l.group.as_fd().as_raw_fd())))
                .collect();
            let ready = self.wait(&live, next_sweep);
            let Some((asked, mounts, groups)) = ready else { return };
            if asked && !self.take_asks() {
                return;
            }
            if mounts {
                self.mounts_changed();
            }
            for id in groups {
                self.read_names(id);
            }
            if Instant::now() >= self.next_sweep {
                self.sweep();
                self.next_sweep = Instant::now() + self.sweep_every;
            }
        }
    }

    /// Waits for an ask, a mount change or a tree's names, until `until`.
    /// None once the poll itself fails for good.
    fn wait(&self, live: &[(u64, RawFd)], until: Instant) -> Option<(bool, bool, Vec<u64>)> {
        // SAFETY: each raw descriptor is a live tree's group, open while
        // `self.trees` is not changed, which it is not during this call.
        let groups: Vec<_> =
            live.iter().map(|(_, fd)| unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) }).collect();
        let mut fds = vec![
            PollFd::new(&*self.wake, PollFlags::IN),
            PollFd::new(&self.mountinfo, PollFlags::PRI | PollFlags::ERR),
        ];
        fds.extend(groups.iter().map(|g| PollFd::new(g, PollFlags::IN)));
        let left = until.saturating_duration_since(Instant::now());
        let timeout = Timespec { tv_sec: left.as_secs() as i64, tv_nsec: i64::from(left.subsec_nanos()) };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(err) => {
                log::error!("protect: poll: {err}; protected trees are no longer followed");
                return None;
            }
        }
        let asked = !fds[0].revents().is_empty();
        let mounts = !fds[1].revents().is_empty();
        let ready = live.iter().zip(&fds[2..]).filter(|(_, p)| !p.revents().is_empty()).map(|(l, _)| l.0);
        Some((asked, mounts, ready.collect()))
    }

    /// Handles what was asked; false once the engine is gone.
    fn take_asks(&mut self) -> bool {
        let mut count = [0u8; 8];
        let _ = rustix::io::read(&*self.wake, &mut count);
        loop {
            match self.rx.try_recv() {
                Ok(ask) => self.answer(ask),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn answer(&mut self, ask: Ask) {
        match ask {
            Ask::Protect { path, uid, any_fs, reply } => {
                let result = self.protect(&path, uid, any_fs, Source::User);
                if result.is_ok() {
                    self.remember();
                }
                reply(result.map(|id| self.view(id)));
            }
            Ask::Unprotect { path, uid, reply } => reply(self.unprotect(&path, uid)),
            Ask::List { uid, reply } => {
                let ids = self.trees.iter().filter(|(_, t)| uid == 0 || t.uid == uid).map(|(id, _)| *id);
                reply(ids.collect::<Vec<_>>().into_iter().map(|id| self.view(id)).collect());
            }
            Ask::Configure(settings) => {
                self.settings = settings;
                self.sync_config_trees();
            }
            Ask::Sweep => self.next_sweep = self.next_sweep.min(Instant::now() + SWEEP_GAP),
        }
    }
}

/// `path` as a tree is named: absolute, without `.`, `..` or a trailing `/`.
fn tree_path(path: &Path) -> Result<PathBuf, String> {
    if !path.is_absolute() {
        return Err(format!("{}: not an absolute path", path.display()));
    }
    let mut clean = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::Normal(name) => clean.push(name),
            Component::ParentDir => return Err(format!("{}: a path with `..`", path.display())),
            _ => {}
        }
    }
    Ok(clean)
}

/// The tree's root, reached through no symbolic link.
fn open_root(path: &Path) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    Ok(rustix::fs::openat2(CWD, path, flags, Mode::empty(), resolve)?)
}

/// The mount ids in this namespace's mount table.
fn mount_ids(mountinfo: &mut File) -> HashSet<u64> {
    use std::io::Seek;
    let mut text = String::new();
    let _ = mountinfo.seek(std::io::SeekFrom::Start(0));
    let _ = mountinfo.read_to_string(&mut text);
    Mounts::parse(&text).ids().collect()
}

/// Mount `id`'s filesystem type and device, as mountinfo names them: the
/// superblock's device, which the probes name inodes by (stat(2) gives
/// each btrfs subvolume a device of its own).
fn mount_facts(id: u64) -> (String, Option<u64>) {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = Mounts::parse(&text);
    mounts.by_id(id).map_or((String::new(), None), |fs| (fs.fstype.to_owned(), Some(fs.dev)))
}

/// Where a kept descriptor's file was, without the kernel's " (deleted)".
fn path_of(link: &Path) -> PathBuf {
    let target = std::fs::read_link(link).unwrap_or_default();
    let bytes = target.as_os_str().as_bytes();
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes.strip_suffix(b" (deleted)").unwrap_or(bytes)))
}

fn name_of(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok().filter(|n| !n.as_bytes().contains(&b'/'))
}
