//! Captures handed to file workers in batches, so that one journal commit
//! makes many durable (`Store::commit`): an `rm -rf` of a protected tree
//! pays a commit per batch, not two per file.
//!
//! A protected file's replaced version waits a moment for others to join
//! it: unrm's own pin keeps its content meanwhile, and an editor saving
//! in a loop then shares its commits with its own instead of meeting one
//! of unrm's on every save.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::Engine;
use crate::daemon::jobs::{self, ToCapture};

/// How long a protected file's capture may wait for others.
const SETTLE: Duration = Duration::from_millis(200);
/// Files per capture job at most: one slow file holds up no more.
const PER_JOB: usize = 256;

#[derive(Default)]
pub(super) struct Batches {
    by_dev: HashMap<u64, Vec<ToCapture>>,
    /// When the waiting captures are handed over.
    pub due: Option<Instant>,
}

impl Batches {
    /// Queues a capture; a protected file's may wait up to `SETTLE`.
    pub fn add(&mut self, dev: u64, file: ToCapture, protected: bool) {
        self.by_dev.entry(dev).or_default().push(file);
        let at = Instant::now() + if protected { SETTLE } else { Duration::ZERO };
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
    }

    /// What waits is due now (the daemon is stopping).
    pub fn hurry(&mut self) {
        if self.due.is_some() {
            self.due = Some(Instant::now());
        }
    }
}

impl Engine {
    /// Hands the queued captures to their filesystems' workers, if due.
    pub(super) fn flush_captures(&mut self) {
        if self.batches.due.is_none_or(|due| Instant::now() < due) {
            return;
        }
        self.batches.due = None;
        for (dev, files) in std::mem::take(&mut self.batches.by_dev) {
            let mut files = files.into_iter().peekable();
            while files.peek().is_some() {
                let chunk: Vec<ToCapture> = files.by_ref().take(PER_JOB).collect();
                let job = jobs::capture(self.storage.files.clone(), chunk, self.workers.tx.clone());
                self.workers.lanes.run(dev, job);
            }
        }
    }
}
