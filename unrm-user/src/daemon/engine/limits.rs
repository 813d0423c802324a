//! Who may have more. The descriptor budget (`budget`) bounds pins; here,
//! how many records of deletions unrm has no content for (unheld, missed,
//! not pinned) each user may add per minute: a token bucket per deleting
//! user, so that one user's `rm -rf` storms (or a loop made to flood the
//! index) cannot bury everyone else's records. Root has no per-user limits;
//! pinned deletions are bounded by pins instead.

use std::{collections::HashMap, sync::Arc, time::Instant};

use crate::budget::Budget;

/// Who may have more: the machine's descriptor budget for pins, and each
/// user's rate of records without content.
pub struct Admission {
    pub budget: Arc<Budget>,
    pub rate: RateLimiter,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: HashMap<u32, Bucket>,
    /// Records not written, ever.
    pub refused: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    /// Whether `uid` may add one more record, at `per_minute` records a
    /// minute with a burst of a minute's worth.
    pub fn allow(&mut self, uid: u32, per_minute: u64) -> bool {
        if uid == 0 {
            return true;
        }
        let now = Instant::now();
        let full = per_minute as f64;
        let bucket = self.buckets.entry(uid).or_insert(Bucket { tokens: full, at: now });
        bucket.tokens = (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * full / 60.0).min(full);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return true;
        }
        self.refused += 1;
        if self.refused == 1 || self.refused.is_power_of_two() {
            log::warn!(
                "uid {uid} deletes faster than per_user.records_per_minute ({per_minute}); records of \
                 deletions with no content are dropped ({} so far)",
                self.refused
            );
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_nothing_and_root_is_never_limited() {
        let mut rate = RateLimiter::default();
        assert!((0..10).all(|_| rate.allow(1000, 10)));
        assert!(!rate.allow(1000, 10));
        assert!(rate.allow(1001, 10), "each user has a bucket of its own");
        assert!((0..1000).all(|_| rate.allow(0, 10)));
        assert_eq!(rate.refused, 1);
    }
}
