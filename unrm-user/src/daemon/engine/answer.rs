//! Answers to the socket API, given after the batch they arrived in is
//! committed: a client that saw a deletion return also sees its record.

use std::{collections::VecDeque, os::fd::OwnedFd};

use anyhow::{Context, Result};

use super::Engine;
use crate::{
    access::Caller,
    api::{
        proto::{DaemonStatus, Latency, ProbeStatus, Request, Response},
        server::Reply,
    },
    holders::Snapshot,
    index::ListQuery,
    pins,
    record::{Record, Status, from_nanos},
};

impl Engine {
    pub(super) fn answer(&mut self, request: Request, caller: &Caller) -> Result<Reply> {
        let response = match request {
            Request::List { since_ns, status, path, limit } => {
                let path = match path {
                    Some(glob) => Some(
                        globset::Glob::new(&glob)
                            .with_context(|| format!("bad --path glob {glob:?}"))?
                            .compile_matcher(),
                    ),
                    None => None,
                };
                let query = ListQuery { since: since_ns.map(from_nanos), status, path, limit };
                let visible = |r: &Record| caller.may_read(r.uid, r.gid, r.mode);
                Response::Records { records: self.index.list(&query, visible)? }
            }
            Request::Show { id } => Response::Record { record: self.record(id, caller)? },
            Request::Open { id } => return self.open(id, caller),
            Request::Status => Response::Status { status: self.status()? },
            Request::Scan => {
                let mut snapshot = Snapshot::take(&mut self.probes)?;
                for file in snapshot.files.values_mut() {
                    if let Some(pin) = self.pins.get(&file.inode) {
                        file.path.clone_from(&pin.path);
                    }
                }
                snapshot.files.retain(|_, f| caller.may_read(Some(f.uid), Some(f.gid), Some(f.mode)));
                Response::Scan { files: snapshot.views() }
            }
        };
        Ok(Reply { response, fd: None })
    }

    /// A record the caller may see; others do not exist, as far as it can tell.
    pub(super) fn record(&self, id: i64, caller: &Caller) -> Result<Record> {
        self.index
            .get(id)?
            .filter(|r| caller.may_read(r.uid, r.gid, r.mode))
            .with_context(|| format!("no record with id {id}"))
    }

    pub(super) fn open(&mut self, id: i64, caller: &Caller) -> Result<Reply> {
        let record = self.record(id, caller)?;
        let file = match record.status {
            Status::Held => {
                let pin = self
                    .pins
                    .values()
                    .find(|p| p.record == id)
                    .with_context(|| format!("record {id} is held but not pinned by this daemon"))?;
                pins::reopen_pin(&pin.file)?
            }
            Status::Captured => self.store.open_capture(id)?,
            status => {
                let why = record.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
                anyhow::bail!("record {id} is {status}{why}: unrm has no content to restore");
            }
        };
        let meta = self.index.restore_meta(id)?.unwrap_or_default();
        Ok(Reply { response: Response::Opened { record, meta }, fd: Some(OwnedFd::from(file)) })
    }

    pub(super) fn lost_events(&self) -> u64 {
        self.probe_stats.lost_events() + self.probe_stats.lost_inflight()
    }

    pub(super) fn status(&self) -> Result<DaemonStatus> {
        let mut counters = self.counters.clone();
        counters.lost_events = self.lost_events();
        let held_bytes = self.pins.values().filter_map(|p| p.file.metadata().ok()).map(|m| m.len()).sum();
        Ok(DaemonStatus {
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            state_dir: self.cfg.state_dir.display().to_string(),
            probes: ProbeStatus {
                tier: self.probes.tier().name().into(),
                fallback: self.probes.fallback().map(str::to_owned),
                attached: true,
                fs_hooks: self.probes.fs_hooks().iter().map(|h| h.to_string()).collect(),
                release_attached: self.probes.release_attached(),
            },
            counters,
            held_files: self.pins.len() as u64,
            held_bytes,
            store_bytes: self.store.bytes(),
            records: self.index.rows(),
            pin_latency_us: latency(&self.latencies_ns),
        })
    }
}

fn latency(samples_ns: &VecDeque<u64>) -> Latency {
    let mut sorted: Vec<u64> = samples_ns.iter().copied().collect();
    sorted.sort_unstable();
    let at = |q: f64| sorted.get(((sorted.len() as f64 - 1.0) * q).round() as usize).map(|ns| ns / 1000);
    Latency {
        samples: sorted.len() as u64,
        p50: at(0.5),
        p99: at(0.99),
        max: sorted.last().map(|ns| ns / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn latency_percentiles() {
        let samples: VecDeque<u64> = (1..=100).map(|us| us * 1000).collect();
        let l = latency(&samples);
        assert_eq!((l.samples, l.p50, l.p99, l.max), (100, Some(51), Some(99), Some(100)));
        assert_eq!(latency(&VecDeque::new()).p50, None);
    }
}
