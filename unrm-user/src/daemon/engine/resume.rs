//! Picking up where the last run stopped: `held` records are attached to
//! their still-held inodes again (or marked `missed`), captures the index
//! had not heard of are adopted, and captures no record speaks for go.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use anyhow::Result;

use super::Engine;
use crate::{
    holders::{InodeId, Snapshot},
    pins::{self, AclCache, Holding, Pin, Place},
    record::{Status, holders_of, nanos},
};

impl Engine {
    /// Picks up where the last run stopped, then pins everything deleted
    /// and still held, whenever it was deleted.
    pub fn start(&mut self) -> Result<()> {
        self.first_anchors();
        self.count_store()?;
        self.index.begin();
        let snapshot = self.kernel.snapshot()?;
        self.figures.counters.scans += 1;
        for (id, dev, ino) in self.index.held()? {
            self.resume(id, dev.zip(ino).map(|(dev, ino)| InodeId { dev, ino }), &snapshot)?;
        }
        self.reconcile_with(snapshot);
        if self.index.commit() {
            self.remove_orphans()?;
        }
        Ok(())
    }

    /// Captures no record speaks for (left by writes an earlier run's index
    /// could not take) go: nothing could restore them, and they hold space.
    fn remove_orphans(&mut self) -> Result<()> {
        let captured: HashSet<i64> = self.index.captures()?.iter().map(|c| c.0).collect();
        for id in self.storage.files.ids()?.into_iter().filter(|id| !captured.contains(id)) {
            log::info!("removing capture {id}: no record of it");
            self.storage.files.remove(id)?;
        }
        Ok(())
    }

    /// A record that was `held` when the daemon stopped.
    fn resume(&mut self, id: i64, inode: Option<InodeId>, snapshot: &Snapshot) -> Result<()> {
        if self.storage.files.has(id) {
            // The copy was durable but the index had not been told.
            let size = self.storage.files.open_capture(id)?.metadata()?.len();
            self.index.mark_captured(id, size, SystemTime::now());
            let sum = self.storage.files.checksum(id)?;
            self.index.set_checksum(id, &sum);
            if let Some(record) = self.index.get(id)? {
                let charged = record.charged_to.or(record.uid).unwrap_or(0);
                self.storage.usage.add(id, charged, nanos(SystemTime::now()), self.storage.files.cost(id)?);
            }
            return Ok(());
        }
        let held = inode.and_then(|inode| snapshot.files.get(&inode));
        let pinned = held.and_then(|held| pins::take(held, &self.admission.budget).ok().map(|p| (held, p)));
        match pinned {
            Some((held, (fd, meta))) if !self.pins.contains(&held.inode) => {
                self.index.set_holders(id, &holders_of(&held.holds));
                // Who deleted it is no longer known: not judged a scratch file.
                let pin = Pin {
                    fd: Arc::new(fd),
                    record: id,
                    charged: self.index.get(id)?.and_then(|r| r.charged_to).unwrap_or(meta.uid),
                    size: meta.size,
                    capturing: false,
                    place: Place { path: held.path.clone(), dev: meta.dev, parent: held.parent },
                    holding: Holding {
                        holds: held.holds.clone(),
                        deleter: None,
                        others_held: true,
                        from_scan: false,
                    },
                    acl: AclCache::default(),
                    // A previous run's: protected or not, its version is kept.
                    protected: false,
                };
                self.inspect(held.inode, &pin, self.index.get(id)?.is_some_and(|r| r.path_resolved));
                self.pins.insert(held.inode, pin);
            }
            _ => {
                self.figures.counters.missed += 1;
                self.index.set_status(id, Status::Missed, Some("released while unrm was not running"));
            }
        }
        Ok(())
    }
}
