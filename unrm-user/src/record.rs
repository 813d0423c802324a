//! A deletion record: what the index stores, the API sends and the CLI
//! shows. Its fields are defined here once; `index` maps them to columns,
//! `api` sends them as JSON.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::{
    access::{Parent, PathFacts, Perms},
    cgroups::{Container, container_of},
    holders::{Hold, HolderKind},
    xattrs::Xattr,
};

/// Where a deleted file's content stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Still held by some process and pinned by unrm: restorable now.
    Held,
    /// Saved to the store when the last holder let go: restorable.
    Captured,
    /// Held when deleted, but let go before unrm could pin it.
    Missed,
    /// Nobody held it when it was deleted: a record only.
    Unheld,
    /// Deliberately not captured (e.g. larger than the size cap); see `reason`.
    Skipped,
    /// Capture was attempted and failed; see `reason`.
    Failed,
    /// Captured, then let go to keep the store within its bounds; see `reason`.
    Evicted,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Held,
        Status::Captured,
        Status::Missed,
        Status::Unheld,
        Status::Skipped,
        Status::Failed,
        Status::Evicted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Held => "held",
            Status::Captured => "captured",
            Status::Missed => "missed",
            Status::Unheld => "unheld",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
            Status::Evicted => "evicted",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        by_name("status", &Status::ALL, Status::as_str, s)
    }
}

/// The one of `all` whose name is `s`, or an error naming them all.
fn by_name<T: Copy>(what: &str, all: &[T], name: fn(T) -> &'static str, s: &str) -> anyhow::Result<T> {
    match all.iter().copied().find(|&v| name(v) == s) {
        Some(v) => Ok(v),
        None => {
            let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
            bail!("unknown {what} {s:?} (one of: {})", names.join(", "))
        }
    }
}

/// How the name went away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `unlink(2)` or `unlinkat(2)`.
    #[default]
    Unlink,
    /// Replaced by a `rename(2)` onto its name.
    Rename,
    /// Found held by a scan, its deletion unseen.
    Scan,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Unlink, Op::Rename, Op::Scan];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Scan => "scan",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        by_name("operation", &Op::ALL, Op::as_str, s)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleter {
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    /// The path as the deleter named it, when that is not the record's
    /// `path`: a process in another mount namespace (a container) sees a
    /// tree of its own. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Its cgroup (v2), from the hierarchy's root; absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container that cgroup names, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
}

impl Deleter {
    /// A deleter in cgroup `cgroup`, and so in the container it names.
    pub fn in_cgroup(mut self, cgroup: Option<String>) -> Self {
        self.container = cgroup.as_deref().and_then(container_of);
        self.cgroup = cgroup;
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub comm: String,
    pub kind: HolderKind,
}

impl From<&Hold> for Holder {
    fn from(h: &Hold) -> Self {
        Holder { pid: h.pid, comm: h.comm.clone(), kind: h.kind }
    }
}

/// Holders as a record lists them: one per process and kind.
pub fn holders_of(holds: &[Hold]) -> Vec<Holder> {
    let mut out: Vec<Holder> = Vec::new();
    for hold in holds {
        let holder = Holder::from(hold);
        if !out.contains(&holder) {
            out.push(holder);
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: i64,
    /// Where the file lived, as the daemon's mount namespace (the host)
    /// sees it; lossy where not UTF-8. See `deleted_by.path` for the
    /// deleter's own view.
    pub path: String,
    /// Whether `path` is verified to be where the file lived on this host.
    /// False when the host could not resolve it (a deleter in another mount
    /// namespace whose mounts the host cannot see, a path that ran through a
    /// symbolic link, a directory walk cut short): a restore then needs
    /// `--to`.
    #[serde(default)]
    pub path_resolved: bool,
    /// `st_dev` and `st_ino` as `stat(2)` reports them; null when the
    /// filesystem has no hook and nothing held the file.
    pub dev: Option<u64>,
    pub ino: Option<u64>,
    pub size: Option<u64>,
    /// File mode and owner when deleted (null when unknown).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    #[serde(with = "rfc3339")]
    pub deleted_at: SystemTime,
    /// Null for files found held by a scan, whose deleter is unknown.
    pub deleted_by: Option<Deleter>,
    pub op: Op,
    pub status: Status,
    pub reason: Option<String>,
    pub holders: Vec<Holder>,
    #[serde(with = "rfc3339_opt", default)]
    pub captured_at: Option<SystemTime>,
    /// BLAKE3 of the captured content.
    pub checksum: Option<String>,
    /// What the access check needs beyond owner and mode (the daemon's own).
    #[serde(skip)]
    pub access: Option<PathFacts>,
    /// Whose per-user limits its pin and capture count against (the daemon's own).
    #[serde(skip)]
    pub charged_to: Option<u32>,
    /// Owner, mode and ACL when captured (the daemon's own): a chmod after
    /// the deletion counts.
    #[serde(skip)]
    pub final_perms: Option<Perms>,
    /// What only a restore needs (the daemon's own; the API sends it
    /// apart, for a restore only).
    #[serde(skip)]
    pub restore: RestoreMeta,
}

impl Record {
    /// Whether a process in container `wanted` deleted it: `wanted` is the
    /// start of the container's id (or an nspawn machine's name), or its
    /// runtime's name (`docker`, `podman`, …).
    pub fn in_container(&self, wanted: &str) -> bool {
        let Some(c) = self.deleted_by.as_ref().and_then(|d| d.container.as_ref()) else { return false };
        !wanted.is_empty() && (c.id.starts_with(wanted) || c.runtime == wanted)
    }

    /// A record of `path` (its exact bytes), deleted now unless said
    /// otherwise; the id is the index's to give.
    pub fn new(path: Vec<u8>, op: Op, status: Status) -> Self {
        Record {
            id: 0,
            path: String::from_utf8_lossy(&path).into_owned(),
            path_resolved: false,
            dev: None,
            ino: None,
            size: None,
            mode: None,
            uid: None,
            gid: None,
            deleted_at: SystemTime::now(),
            deleted_by: None,
            op,
            status,
            reason: None,
            holders: Vec::new(),
            captured_at: None,
            checksum: None,
            access: None,
            charged_to: None,
            final_perms: None,
            restore: RestoreMeta { path, ..Default::default() },
        }
    }

    /// The exact bytes of `path`.
    pub fn path_bytes(&self) -> &[u8] {
        &self.restore.path
    }
}

/// What a restore needs beyond the JSON record: the exact path bytes, and
/// the times and attributes to put back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMeta {
    pub path: Vec<u8>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    #[serde(default)]
    pub xattrs: Vec<Xattr>,
    /// The directory it was deleted from, when known: a restore to the
    /// recorded path writes only into that very directory.
    #[serde(default)]
    pub parent: Option<Parent>,
}

pub fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

pub fn from_nanos(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

pub mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(D::Error::custom)
    }
}

mod rfc3339_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_micros(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_rfc3339(&t).map_err(D::Error::custom)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_rejects_unknown() {
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{st}\""));
        }
        let err = "gone".parse::<Status>().unwrap_err().to_string();
        assert!(err.contains("held, captured"), "{err}");
    }

    #[test]
    fn record_json_has_the_documented_shape() {
        let rec = Record {
            id: 3,
            path: "/tmp/f".into(),
            path_resolved: true,
            dev: Some(2049),
            ino: Some(12),
            size: Some(5),
            mode: Some(0o100644),
            uid: Some(1000),
            gid: Some(1000),
            deleted_at: from_nanos(1_700_000_000_123_456_000),
            deleted_by: Some(Deleter {
                pid: 9,
                uid: 1000,
                comm: "rm".into(),
                path: None,
                cgroup: None,
                container: None,
            }),
            op: Op::Unlink,
            status: Status::Held,
            reason: None,
            holders: vec![Holder { pid: 8, comm: "sleep".into(), kind: HolderKind::Fd }],
            captured_at: None,
            checksum: None,
            access: None,
            charged_to: None,
            final_perms: None,
            restore: RestoreMeta::default(),
        };
        let v: serde_json::Value = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["deleted_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["deleted_by"]["comm"], "rm");
        assert_eq!(v["holders"][0]["kind"], "fd");
        assert_eq!(v["status"], "held");
        assert_eq!(v["op"], "unlink");
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn holders_are_one_per_process_and_kind() {
        let hold = |pid, kind, fd| Hold { kind, pid, uid: 0, comm: "x".into(), fd, vm_start: 0, vm_end: 0 };
        let holds = [
            hold(1, HolderKind::Fd, 3),
            hold(1, HolderKind::Fd, 4),
            hold(1, HolderKind::Mmap, 0),
            hold(2, HolderKind::Fd, 3),
        ];
        assert_eq!(holders_of(&holds).len(), 3);
    }
}
