//! Keeping the store within its bounds (principle 8): a total size, a floor
//! of free space on its filesystem, and an age past which records and their
//! captures go. When room runs short, the oldest captures are let go first,
//! each recorded as `evicted` with the reason.

use std::time::SystemTime;

use anyhow::Result;

use super::Engine;
use crate::record::Status;

impl Engine {
    /// Makes room for a capture of `size` bytes, evicting older captures if
    /// that suffices. Returns why not, when it cannot.
    pub(super) fn make_room(&mut self, size: u64) -> Result<Option<String>> {
        let policy = self.cfg.policy.clone();
        if size > policy.max_store_size {
            return Ok(Some(format!(
                "{size} bytes is over the store's cap of {} (max_store_size)",
                policy.max_store_size
            )));
        }
        let (total, _) = self.store.space()?;
        if size > total.saturating_sub(policy.min_free.bytes(total)) {
            return Ok(Some(format!(
                "{size} bytes would leave the store's filesystem below its free-space floor (min_free)"
            )));
        }
        let fits = |engine: &Self| -> Result<bool> {
            let (total, avail) = engine.store.space()?;
            let over_cap = engine.store.bytes() + size > policy.max_store_size;
            let under_floor = avail.saturating_sub(size) < policy.min_free.bytes(total);
            Ok(!over_cap && !under_floor)
        };
        self.evict_until(fits, "to make room for a newer capture")?;
        Ok((!fits(self)?).then(|| "no room in the store, even after evicting older captures".into()))
    }

    /// Periodically: records older than `keep_for` go, and if the store's
    /// filesystem has dropped below its floor (someone else filled it), the
    /// oldest captures are let go until it is back above.
    pub(super) fn keep_within_bounds(&mut self) -> Result<()> {
        let policy = self.cfg.policy.clone();
        if let Some(cutoff) = SystemTime::now().checked_sub(policy.keep_for) {
            for id in self.index.expire(cutoff)? {
                self.store.remove(id)?;
            }
        }
        let above_floor = |engine: &Self| -> Result<bool> {
            let (total, avail) = engine.store.space()?;
            Ok(avail >= policy.min_free.bytes(total) && engine.store.bytes() <= policy.max_store_size)
        };
        self.evict_until(above_floor, "the store's filesystem fell below its free-space floor")
    }

    fn evict_until(&mut self, done: impl Fn(&Self) -> Result<bool>, why: &str) -> Result<()> {
        while !done(self)? {
            let Some(id) = self.index.oldest_capture()? else { return Ok(()) };
            self.store.remove(id)?;
            self.index.set_status(id, Status::Evicted, Some(why))?;
            self.counters.evicted += 1;
            log::info!("evicted capture {id}: {why}");
        }
        Ok(())
    }
}
