//! Keeps one anchor (`anchors`) per filesystem that unrm can pin by file
//! handle, as filesystems come and go: opened on the filesystem's file
//! worker, published for the reader, let go (also on the worker) once the
//! filesystem has left the host's mount table.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use super::Engine;
use crate::{
    anchors::{Anchor, Anchors},
    handle::Layout,
    mounts::Views,
};

/// Filesystems anchored at most (each anchor is a descriptor, inside the
/// budget's reserve); past it, the rest are pinned by snapshot.
pub const MAX_ANCHORS: usize = 64;
/// How long before a filesystem whose anchor could not be opened is tried
/// again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

pub struct Anchoring {
    pub anchors: Arc<Anchors>,
    /// The host's mount table, re-read when the kernel says it changed.
    views: Views,
    /// Filesystems asked for, and when: not asked again within
    /// `RETRY_AFTER` (an open that failed or still waits on its worker).
    asked: HashMap<u64, Instant>,
}

impl Anchoring {
    pub fn new(anchors: Arc<Anchors>) -> Self {
        Anchoring { anchors, views: Views::new(), asked: HashMap::new() }
    }
}

impl Engine {
    /// Opens anchors for filesystems that have none and lets go of those of
    /// filesystems no longer mounted. Cheap when nothing changed: a poll of
    /// the mount table and a lookup per filesystem.
    pub(super) fn refresh_anchors(&mut self) {
        let Anchoring { anchors, views, asked } = &mut self.anchoring;
        let Some(host) = views.host() else { return };
        let wanted: Vec<(u64, std::path::PathBuf, Layout)> = host
            .filesystems()
            .into_iter()
            .filter_map(|(dev, point, fstype)| Some((dev, point.to_path_buf(), Layout::of(fstype)?)))
            .collect();
        for (dev, anchor) in anchors.remove_unless(|dev| wanted.iter().any(|w| w.0 == dev)) {
            // Dropped on its worker: the last close of a detached mount can
            // write the filesystem back.
            self.workers.lanes.run(dev, Box::new(move || drop(anchor)));
        }
        asked.retain(|_, at| at.elapsed() < RETRY_AFTER);
        let lanes = &mut self.workers.lanes;
        for (dev, point, layout) in wanted {
            if anchors.len() >= MAX_ANCHORS || anchors.contains(dev) || asked.contains_key(&dev) {
                continue;
            }
            asked.insert(dev, Instant::now());
            let anchors = anchors.clone();
            lanes.run_first(
                dev,
                Box::new(move || match Anchor::open(&point, dev, layout) {
                    Ok(anchor) => anchors.insert(dev, anchor),
                    Err(err) => log::debug!("no handle anchor on {}: {err}", point.display()),
                }),
            );
        }
    }
}
