//! The daemon's descriptor budget. Every pin is one open descriptor, and so
//! is every grab the ring-buffer reader takes before the engine decides on
//! it; a flood of held deletions must never run the process out of
//! descriptors, or the next iterator, link, connection or capture fails
//! with EMFILE and unrm stops protecting anyone.
//!
//! So the budget is derived once from the process's descriptor limit, less
//! a reserve for the daemon's own work, and every pin descriptor carries a
//! `Ticket` that returns its share when dropped. Beyond the budget, a held
//! deletion is recorded as `skipped` with the reason instead.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

/// Descriptors kept for everything that is not a pin: the probes' maps,
/// programs and links (~80), the index (4), iterator runs, client
/// connections (`api::server::MAX_CONNECTIONS`), restores in flight, mount
/// tables of other namespaces (`mounts::MAX_FOREIGN`), file workers'
/// copies, logs and the async runtime.
pub const RESERVE: usize = 768;

/// How the descriptor limit is shared out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    pub pins: usize,
    /// Holder processes watched by pidfd at once; others are noticed by
    /// probes and snapshots.
    pub pidfds: usize,
}

impl Shares {
    /// The shares of a process allowed `limit` descriptors.
    pub fn of(limit: u64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(1 << 24);
        let pidfds = (limit / 16).clamp(64, 4096);
        let pins = limit.saturating_sub(RESERVE + pidfds);
        Shares { pins, pidfds }
    }

    /// The shares this process may use now (RLIMIT_NOFILE's soft limit).
    pub fn current() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        Self::of(limit.current.unwrap_or(1 << 20))
    }
}

/// A count of descriptors in use against a fixed allowance, shared by the
/// threads that open them.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Budget { limit, used: AtomicUsize::new(0) })
    }

    /// A share of the budget, or None when it is spent.
    pub fn take(self: &Arc<Self>) -> Option<Ticket> {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used >= self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(used, used + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Ticket(self.clone())),
                Err(now) => used = now,
            }
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn exhausted(&self) -> bool {
        self.used() >= self.limit
    }
}

/// One descriptor's share; given back when dropped.
#[derive(Debug)]
pub struct Ticket(Arc<Budget>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_come_back_when_dropped() {
        let budget = Budget::new(2);
        let a = budget.take().unwrap();
        let _b = budget.take().unwrap();
        assert!(budget.take().is_none());
        assert!(budget.exhausted());
        drop(a);
        assert_eq!(budget.used(), 1);
        assert!(budget.take().is_some());
    }

    #[test]
    fn shares_keep_a_reserve() {
        let s = Shares::of(20_000);
        assert_eq!(s.pidfds, 1250);
        assert_eq!(s.pins, 20_000 - RESERVE - 1250);
        // A tiny limit leaves no pins rather than underflowing.
        assert_eq!(Shares::of(256).pins, 0);
        assert_eq!(Shares::of(1 << 20).pidfds, 4096);
    }
}
