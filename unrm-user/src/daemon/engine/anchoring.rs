//! Keeps one anchor (`anchors`) per filesystem that unrm can pin by file
//! handle, as filesystems come and go: opened on the filesystem's file
//! worker, published for the reader, let go (also on the worker) once the
//! filesystem has left the host's mount table. With a fanotify group (the
//! fs tier), the filesystems its hooks do not see are marked through their
//! anchors as they are opened.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use super::Engine;
use crate::{
    anchors::{Anchor, Anchors},
    handle::Layout,
    mounts::Views,
    notify::Group,
};

/// Filesystems whose deletions fanotify reports to the fs tier (its own
/// hooks are ext4's): those that can encode a file handle, so that each
/// report names the inode, and that a user cannot mount (FUSE could make a
/// mark or an open wait). Not btrfs: stat(2) gives each subvolume a device
/// of its own, unlike mountinfo, and inode numbers repeat across them, so
/// unrm's (device, inode) identity does not hold there.
const NOTIFIED: &[&str] = &["tmpfs", "xfs"];

/// Filesystems anchored at most (each anchor is a descriptor, inside the
/// budget's reserve); past it, the rest are pinned by snapshot.
pub const MAX_ANCHORS: usize = 64;
/// How long before a filesystem whose anchor could not be opened is tried
/// again.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long the start waits for the first anchors before it reports ready:
/// a deletion right after that is pinned by handle, not left to a snapshot.
/// A filesystem that does not answer by then is anchored when it does.
const FIRST_ANCHORS_WAIT: Duration = Duration::from_secs(3);

pub struct Anchoring {
    pub anchors: Arc<Anchors>,
    /// The host's mount table, re-read when the kernel says it changed.
    views: Views,
    /// Filesystems asked for, and when: not asked again within
    /// `RETRY_AFTER` of an open that failed.
    asked: HashMap<u64, Instant>,
    /// Opens queued or running on a worker: never asked again meanwhile
    /// (a worker stuck on a filesystem would otherwise collect one more
    /// every `RETRY_AFTER`).
    opening: Arc<Opening>,
    group: Option<Arc<Group>>,
    /// When the mount table was last looked at.
    looked: Instant,
}

impl Anchoring {
    pub fn new(anchors: Arc<Anchors>, group: Option<Arc<Group>>) -> Self {
        Anchoring {
            anchors,
            views: Views::new(),
            asked: HashMap::new(),
            opening: Arc::default(),
            group,
            looked: Instant::now(),
        }
    }
}

/// How often a deletion on a filesystem without an anchor makes the engine
/// look at the mount table (it looks anyway at every rescan).
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(1);

impl Engine {
    /// A deletion came from filesystem `dev`: if it has no anchor, it may
    /// have been mounted since the last look.
    pub(super) fn anchor_wanted(&mut self, dev: u64) {
        if !self.anchoring.anchors.contains(dev) && self.anchoring.looked.elapsed() >= LOOK_AGAIN_AFTER {
            self.refresh_anchors();
        }
    }

    /// Opens the anchors of the filesystems mounted now, and waits (a
    /// bounded time) until they are open.
    pub(super) fn first_anchors(&mut self) {
        self.refresh_anchors();
        if !self.anchoring.opening.wait_all(FIRST_ANCHORS_WAIT) {
            log::warn!(
                "some filesystems did not answer within {FIRST_ANCHORS_WAIT:?}; \
                 their deletions are pinned by snapshot until they do"
            );
        }
    }

    /// Opens anchors for filesystems that have none and lets go of those of
    /// filesystems no longer mounted. Cheap when nothing changed: a poll of
    /// the mount table and a lookup per filesystem.
    pub(super) fn refresh_anchors(&mut self) {
        self.anchoring.looked = Instant::now();
        let Anchoring { anchors, views, asked, opening, group, .. } = &mut self.anchoring;
        let Some(host) = views.host() else { return };
        let wanted: Vec<Wanted> = host
            .filesystems()
            .into_iter()
            .filter_map(|fs| {
                let notified = group.is_some() && NOTIFIED.contains(&fs.fstype);
                let layout = Layout::of(fs.fstype);
                (layout.is_some() || notified).then(|| Wanted {
                    dev: fs.dev,
                    point: fs.point.to_path_buf(),
                    root: fs.root.to_path_buf(),
                    layout,
                    notified,
                })
            })
            .collect();
        for (dev, anchor) in anchors.remove_unless(|dev| wanted.iter().any(|w| w.dev == dev)) {
            // Closed on its worker: the last close of a detached mount can
            // write the filesystem back, which the reader must not be the
            // one to wait for (it may hold the anchor for a moment still).
            self.workers.lanes.run(dev, Box::new(move || close_last(anchor)));
        }
        asked.retain(|_, at| at.elapsed() < RETRY_AFTER);
        let lanes = &mut self.workers.lanes;
        for w in wanted {
            if anchors.len() >= MAX_ANCHORS || anchors.contains(w.dev) || asked.contains_key(&w.dev) {
                continue;
            }
            if !opening.begin(w.dev) {
                continue;
            }
            asked.insert(w.dev, Instant::now());
            let (anchors, group, opening) =
                (anchors.clone(), group.clone().filter(|_| w.notified), opening.clone());
            lanes.run_first(
                w.dev,
                Box::new(move || {
                    let dev = w.dev;
                    w.open(&anchors, group.as_deref());
                    opening.end(dev);
                }),
            );
        }
    }
}

/// The filesystems whose anchors are being opened, and a signal when one is.
#[derive(Default)]
struct Opening {
    devs: Mutex<HashSet<u64>>,
    ended: Condvar,
}

impl Opening {
    /// False if `dev` is being opened already.
    fn begin(&self, dev: u64) -> bool {
        self.devs.lock().unwrap().insert(dev)
    }

    fn end(&self, dev: u64) {
        self.devs.lock().unwrap().remove(&dev);
        self.ended.notify_all();
    }

    /// Waits until no open is under way, or `limit` has passed; says which.
    fn wait_all(&self, limit: Duration) -> bool {
        let devs = self.devs.lock().unwrap();
        let (devs, _) = self.ended.wait_timeout_while(devs, limit, |devs| !devs.is_empty()).unwrap();
        devs.is_empty()
    }
}

/// A filesystem to anchor, and one of its mounts.
struct Wanted {
    dev: u64,
    point: PathBuf,
    root: PathBuf,
    layout: Option<Layout>,
    /// Its deletions come from fanotify.
    notified: bool,
}

impl Wanted {
    /// On the filesystem's worker: opens the anchor, marks the filesystem
    /// for `group` if given, publishes the anchor.
    fn open(self, anchors: &Anchors, group: Option<&Group>) {
        let mut anchor = match Anchor::open(&self.point, &self.root, self.dev, self.layout) {
            Ok(anchor) => anchor,
            Err(err) => return log::debug!("no handle anchor on {}: {err}", self.point.display()),
        };
        if let Some(group) = group {
            match group.watch(anchor.fd()) {
                Ok(()) => anchor.notified = true,
                Err(err) => {
                    log::warn!(
                        "deletions on {} are found by snapshots only: fanotify: {err}",
                        self.point.display()
                    )
                }
            }
        }
        anchors.insert(self.dev, anchor);
    }
}

/// Drops `anchor` once nobody else holds it (the reader keeps a clone for
/// the length of one `open_by_handle_at`).
fn close_last(mut anchor: Arc<Anchor>) {
    loop {
        match Arc::try_unwrap(anchor) {
            Ok(last) => return drop(last),
            Err(shared) => anchor = shared,
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
