//! Which records a command is about: a listing's filters, paged through
//! the daemon; the newest record of a path that still has its content; all
//! the restorable records a set of filters selects.

use std::{collections::HashSet, path::Path};

use anyhow::{Result, bail};

use super::{format, when};
use crate::{
    api::{
        client::Client,
        proto::{Request, Response},
    },
    record::{Record, Status},
};

/// What a listing selects.
pub struct Filters {
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    pub status: Option<Status>,
    /// An absolute glob.
    pub path: Option<String>,
    /// The start of a container's id, or a runtime's name.
    pub container: Option<String>,
}

/// Every record the filters select, newest first, up to `limit` (0: all),
/// page by page: the daemon answers a listing in bounded pages.
pub fn list(socket: &Path, f: &Filters, limit: usize) -> Result<Vec<Record>> {
    let mut client = Client::connect(socket)?;
    let mut records = Vec::new();
    // The listing walks back in time from its cursor: starting it just
    // after `until` leaves out what came later.
    let mut after = f.until_ns.map(|until| (until.saturating_add(1), i64::MIN));
    loop {
        let want = if limit == 0 { 0 } else { limit - records.len() };
        let request = Request::List {
            since_ns: f.since_ns,
            status: f.status,
            path: f.path.clone(),
            limit: want,
            after,
            container: f.container.clone(),
        };
        let Response::Records { records: page, next } = client.call(&request)?.0 else {
            bail!("unexpected answer")
        };
        records.extend(page);
        match next {
            Some(at) if limit == 0 || records.len() < limit => after = Some(at),
            _ => return Ok(records),
        }
    }
}

fn restorable(record: &Record) -> bool {
    matches!(record.status, Status::Held | Status::Captured)
}

/// The `n`th newest record of `path` (1: the newest) that a restore can
/// bring back (held or captured), among those the caller may see.
pub fn version_of(socket: &Path, path: &Path, n: usize) -> Result<i64> {
    let path = when::absolute_path(path, &std::env::current_dir()?);
    let glob = globset::escape(&path.to_string_lossy());
    let filters = Filters { since_ns: None, until_ns: None, status: None, path: Some(glob), container: None };
    let records = list(socket, &filters, 0)?;
    let shown = format::clean(&path.to_string_lossy()).into_owned();
    let versions: Vec<&Record> = records.iter().filter(|r| restorable(r)).collect();
    if n == 0 {
        bail!("--version counts from 1 (the newest)");
    }
    match (versions.get(n - 1), records.first()) {
        (Some(r), _) => Ok(r.id),
        (None, _) if !versions.is_empty() => {
            bail!("{shown}: {} versions with their content, no version {n}", versions.len())
        }
        (None, Some(newest)) => bail!(
            "{shown}: no record with its content ({} records; the newest, {}, is {})",
            records.len(),
            newest.id,
            newest.status.as_str()
        ),
        (None, None) => bail!("{shown}: no deletion of this path is recorded"),
    }
}

/// Every restorable record the filters select (and, with `pid`, that this
/// process deleted): for each path, its newest, newest first.
pub fn all_of(socket: &Path, filters: &Filters, pid: Option<u32>) -> Result<Vec<Record>> {
    let mut seen = HashSet::new();
    let records = list(socket, filters, 0)?;
    Ok(records
        .into_iter()
        .filter(|r| pid.is_none_or(|pid| r.deleted_by.as_ref().is_some_and(|d| d.pid == pid)))
        .filter(|r| restorable(r) && seen.insert(r.path.clone()))
        .collect())
}
