//! Keeping the store within its bounds, fairly. unrm must never fill a
//! disk someone is trying to free, and no user may push everyone else's
//! captures out:
//!
//! Captures are charged as their pins were: to the file's owner, or to the
//! user whose processes alone kept the file alive (`decide::charged_to`);
//! "U's captures" below are those charged to U.
//!
//! 1. A capture charged to U never takes U past `per_user.store`: U's own
//!    oldest captures make room, never anyone else's (root has no per-user
//!    limit).
//! 2. The store never exceeds `max_store_size`: U's own oldest captures go
//!    first, then the oldest of whoever is charged more than U will be.
//! 3. A capture that would take the store's filesystem below `min_free`
//!    may evict U's own older captures, and is otherwise skipped, unless the
//!    whole store stays within `store_reserve`.
//! 4. When something else fills the filesystem below `min_free`, captures
//!    are given back, the biggest consumer's oldest first, but never below
//!    `store_reserve`: filling a disk cannot wipe everyone's captures.
//!
//! Sizes are what captures cost on disk, reflinked extents counted once
//! (`store::usage`). Each eviction is recorded as `evicted` with its reason.

use std::time::SystemTime;

use anyhow::Result;

use super::Engine;
use crate::record::Status;

impl Engine {
    /// Counts what the store holds, at start.
    pub(super) fn count_store(&mut self) -> Result<()> {
        for (id, owner, at) in self.index.captures()? {
            match self.storage.files.cost(id) {
                Ok(cost) => self.storage.usage.add(id, owner.unwrap_or(0), at, cost),
                Err(err) => log::warn!("capture {id} is not in the store: {err:#}"),
            }
        }
        Ok(())
    }

    /// Makes room for a capture of `size` bytes charged to `owner` (see
    /// `decide::charged_to`), evicting what the rules allow. Returns why
    /// not, when it cannot.
    pub(super) fn make_room(&mut self, size: u64, owner: u32) -> Result<Option<String>> {
        let policy = self.cfg.policy.clone();
        if size > policy.max_store_size {
            return Ok(Some(format!(
                "{size} bytes is over the store's cap of {} (max_store_size)",
                policy.max_store_size
            )));
        }
        if owner != 0 {
            let share = policy.per_user.store.of(policy.max_store_size);
            while self.storage.usage.of(owner) + size > share {
                let Some(id) = self.storage.usage.oldest_of(owner) else { break };
                self.evict(id, "to make room for a newer capture of its owner's (per_user.store)");
            }
            if self.storage.usage.of(owner) + size > share {
                self.figures.guards.over_user_store += 1;
                return Ok(Some(format!(
                    "{size} bytes would take uid {owner} over its share of the store ({share} bytes, per_user.store)"
                )));
            }
        }
        while self.storage.usage.total() + size > policy.max_store_size {
            let after = self.storage.usage.of(owner) + size;
            let victim = self.storage.usage.oldest_of(owner).or_else(|| {
                self.storage
                    .usage
                    .biggest_above(after)
                    .and_then(|biggest| self.storage.usage.oldest_of(biggest))
            });
            let Some(id) = victim else {
                return Ok(Some("the store is full of other users' captures (max_store_size)".into()));
            };
            self.evict(id, "to make room for a newer capture");
        }
        let (total, _) = self.storage.files.space()?;
        let floor = policy.min_free.bytes(total);
        if size > total.saturating_sub(floor) {
            return Ok(Some(format!(
                "{size} bytes would leave the store's filesystem below its free-space floor (min_free)"
            )));
        }
        let reserve = policy.store_reserve.bytes(total);
        loop {
            let (_, avail) = self.storage.files.space()?;
            if avail.saturating_sub(size) >= floor
                || (self.storage.usage.total() + size <= reserve && size < avail)
            {
                return Ok(None);
            }
            let Some(id) = self.storage.usage.oldest_of(owner) else {
                return Ok(Some(
                    "the store's filesystem is below its free-space floor (min_free), and the store is \
                     past its reserve (store_reserve)"
                        .into(),
                ));
            };
            self.evict(id, "to make room for a newer capture of its owner's (min_free)");
        }
    }

    /// Periodically: records older than `keep_for` go; then the store is
    /// brought back within its bounds (which a reload may have lowered),
    /// and, if something else has filled its filesystem below the floor,
    /// gives back captures down to its reserve.
    pub(super) fn keep_within_bounds(&mut self) -> Result<()> {
        let policy = self.cfg.policy.clone();
        // What to forget is read from the database: not while writes wait
        // for it (they would be forgotten blind, and again at each replay).
        if self.index.healthy() {
            if let Some(cutoff) = SystemTime::now().checked_sub(policy.keep_for) {
                for id in self.index.expire(cutoff)? {
                    self.storage.usage.remove(id);
                    self.storage.files.remove(id)?;
                }
            }
            self.keep_index_within(policy.max_index_size)?;
        }
        while self.storage.usage.total() > policy.max_store_size {
            let Some(id) = self.biggest_oldest() else { break };
            self.evict(id, "the store is over its cap (max_store_size)");
        }
        let (total, _) = self.storage.files.space()?;
        let (floor, reserve) = (policy.min_free.bytes(total), policy.store_reserve.bytes(total));
        while self.storage.files.space()?.1 < floor && self.storage.usage.total() > reserve {
            let Some(id) = self.biggest_oldest() else { break };
            self.figures.guards.evicted_for_space += 1;
            self.evict(id, "the store's filesystem fell below its free-space floor (min_free)");
        }
        Ok(())
    }

    /// Records are small, but anyone may make many (within
    /// `per_user.records_per_minute`), each with a long path: past
    /// `max_index_size`, records without content go, oldest first, of
    /// whoever deleted the most. A pass forgets the share of rows the index
    /// is over by, and one more thousand.
    fn keep_index_within(&mut self, max: u64) -> Result<()> {
        let size = self.index.size()?;
        if size <= max {
            return Ok(());
        }
        let rows = self.index.rows();
        let over = (rows as f64 * (size - max) as f64 / size as f64) as usize + 1000;
        let forgotten = self.index.prune(over)?;
        self.figures.guards.records_pruned += forgotten as u64;
        log::warn!(
            "the index is over max_index_size ({size} > {max} bytes): {forgotten} records without content forgotten"
        );
        Ok(())
    }

    /// The oldest capture of the user charged the most.
    fn biggest_oldest(&self) -> Option<i64> {
        self.storage.usage.biggest_above(0).and_then(|uid| self.storage.usage.oldest_of(uid))
    }

    pub(super) fn evict(&mut self, id: i64, why: &str) {
        self.storage.usage.remove(id);
        if let Err(err) = self.storage.files.remove(id) {
            log::warn!("removing capture {id}: {err:#}");
        }
        self.index.set_status(id, Status::Evicted, Some(why));
        self.figures.counters.evicted += 1;
        log::info!(unrm_record = id, unrm_status = "evicted", unrm_reason = why; "evicted capture {id}: {why}");
    }
}
