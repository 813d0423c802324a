//! Stopping without losing what only unrm still holds (docs/design.md,
//! "Stop only when no content depends on unrm alone").
//!
//! When the daemon is asked to stop, some deleted files may have no holder
//! left but unrm: their last holder let go a moment ago, or they are
//! protected files unrm held alone from the start, and their copies are
//! queued or under way. Exiting then would free their content for good (a
//! restart finds nothing to pin, and records them missed). So the engine
//! keeps going until those copies are durable, for `STOP_WITHIN` at most
//! (the unit gives it `TimeoutStopSec=60s`), and says what it could not
//! finish. Files some process still holds need nothing: the next start pins
//! them again. Asked a second time, it stops at once.

use std::time::{Duration, Instant};

use super::Engine;

/// How long the engine keeps copying after it was asked to stop.
const STOP_WITHIN: Duration = Duration::from_secs(30);
/// A protected deletion whose inode no probe named waits this long for the
/// sweep it asked for (due within 200 ms): past it, it is none of a kept
/// file (a symbolic link, an excluded one) and holds no stop up.
const SWEEP_WITHIN: Duration = Duration::from_secs(2);

impl Engine {
    pub(super) fn stopping(&self) -> bool {
        self.timers.stop_by.is_some()
    }

    /// SIGTERM or SIGINT: stop once the copies only unrm can make are done;
    /// at once if asked again.
    pub(super) fn asked_to_stop(&mut self) {
        if self.stopping() {
            log::info!("asked again: stopping now");
            self.timers.stop_by = Some(Instant::now());
            return;
        }
        // A holder that let go a moment ago is found by a snapshot now,
        // and its copy started, rather than after the usual short delay.
        self.timers.recheck(Duration::ZERO);
        self.timers.stop_by = Some(Instant::now() + STOP_WITHIN);
        // Protected deletions may now have the held files' share too.
        self.retry_protected();
        let copies = self.copies_left();
        if copies > 0 {
            log::info!("stopping once {copies} files only unrm holds are copied (within {STOP_WITHIN:?})");
        }
    }

    /// The engine may stop: nothing only it can copy is left, or its time
    /// is up. What no sweep matched is recorded on the way out.
    pub(super) fn may_stop(&mut self) -> bool {
        let undecided = self.pending.len() + usize::from(self.timers.recheck_at.is_some());
        let copies = self.copies_left();
        if copies + undecided > 0 && self.timers.stop_by.is_some_and(|by| Instant::now() < by) {
            return false;
        }
        if copies > 0 {
            log::warn!("stopping with {copies} files only unrm held not copied: they are lost");
        }
        self.record_unmatched(Duration::ZERO);
        self.commit();
        log::info!("shutting down; {} pinned files stay held by their processes", self.pins.len());
        true
    }

    /// Deleted files whose content depends on this process alone: copies
    /// queued or under way, protected deletions waiting for a descriptor or
    /// for a sweep to name their inode. (Deletions not yet decided on, and a
    /// snapshot asked for, which may find a holder gone, hold a stop up too.)
    fn copies_left(&self) -> usize {
        let awaiting_sweep =
            self.protection.by_path.values().filter(|(_, at)| at.elapsed() < SWEEP_WITHIN).count();
        self.pins.iter().filter(|(_, pin)| pin.capturing).count()
            + self.protection.waiting.len()
            + awaiting_sweep
    }
}
