//! The engine's side of the kernel: the probes, their watch tables and
//! counters, and the snapshots of who holds what.

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::mpsc::UnboundedSender;

use super::watch::Watches;
use crate::{
    daemon::exits::Watch,
    holders::Snapshot,
    probe::{ProbeStats, Probes},
};

/// How long a snapshot answers `unrm scan` again: a loop of scans by any
/// user costs one snapshot per this long.
pub(super) const SCAN_REUSE: Duration = Duration::from_millis(250);

pub struct Kernel {
    pub probes: Probes,
    pub watches: Watches,
    pub stats: ProbeStats,
    /// Times fanotify's queue overflowed (the fs tier's other filesystems).
    pub notify_lost: u64,
    /// Probe-side losses already acted on.
    lost_seen: u64,
    /// The snapshot the last `unrm scan` was answered from.
    last_scan: Option<(Instant, Snapshot)>,
}

impl Kernel {
    pub fn new(mut probes: Probes, exits: UnboundedSender<Watch>) -> Result<Self> {
        let watches = Watches::new(probes.take_watch_maps()?, exits);
        let stats = probes.take_stats()?;
        Ok(Kernel { probes, watches, stats, notify_lost: 0, lost_seen: 0, last_scan: None })
    }

    /// Who holds which deleted file, now.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        Snapshot::take(&mut self.probes)
    }

    /// A snapshot for `unrm scan`: the last one if it is recent enough;
    /// whether it was taken now.
    pub fn scan(&mut self) -> Result<(bool, &Snapshot)> {
        let fresh = self.last_scan.as_ref().is_some_and(|(at, _)| at.elapsed() < SCAN_REUSE);
        if !fresh {
            let snapshot = Snapshot::take(&mut self.probes)?;
            self.last_scan = Some((Instant::now(), snapshot));
        }
        Ok((!fresh, &self.last_scan.as_ref().expect("just taken").1))
    }

    /// Events dropped in all: by the probes (ring buffer or in-flight table
    /// full) and by fanotify (each overflow counts one).
    pub fn lost_events(&self) -> u64 {
        self.stats.lost_events() + self.stats.lost_inflight() + self.notify_lost
    }

    /// Whether the probes dropped events since last asked (logged).
    pub fn new_losses(&mut self) -> bool {
        let lost = self.lost_events();
        if lost <= self.lost_seen {
            return false;
        }
        log::warn!(
            "{} events lost in the kernel (ring buffer full: a larger --ring-size helps; or fanotify's queue); \
             reconciling",
            lost - self.lost_seen
        );
        self.lost_seen = lost;
        true
    }
}
