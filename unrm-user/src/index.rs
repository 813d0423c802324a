//! The index: every deletion unrm saw, in SQLite under the state directory.
//!
//! One writer (the engine), WAL journal so that a crash never leaves a torn
//! database, statements prepared once. A record's status moves forward only
//! through the methods here; `captured` is written only after the content is
//! durable in the store (principle 6).

use std::{
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::Path,
    time::SystemTime,
};

use anyhow::{Context, Result};
use globset::GlobMatcher;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::{
    record::{Deleter, Holder, Record, Status, from_nanos, nanos},
    xattrs::Xattr,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    id             INTEGER PRIMARY KEY,
    path           BLOB NOT NULL,
    dev            INTEGER,
    ino            INTEGER,
    size           INTEGER,
    mode           INTEGER,
    uid            INTEGER,
    gid            INTEGER,
    atime_ns       INTEGER,
    mtime_ns       INTEGER,
    deleted_at_ns  INTEGER NOT NULL,
    deleter_pid    INTEGER,
    deleter_uid    INTEGER,
    deleter_comm   TEXT,
    op             TEXT NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    holders        TEXT NOT NULL DEFAULT '[]',
    captured_at_ns INTEGER,
    checksum       TEXT,
    xattrs         TEXT,
    deleter_path   BLOB
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (deleted_at_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS records_held ON records (dev, ino) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, deleted_at_ns DESC, id DESC);
";

const COLUMNS: &str = "id, path, dev, ino, size, mode, uid, gid, deleted_at_ns, deleter_pid, \
     deleter_uid, deleter_comm, op, status, reason, holders, captured_at_ns, checksum, deleter_path";

/// What the engine knows when it first records a deletion.
#[derive(Clone, Debug, Default)]
pub struct NewRecord {
    pub path: Vec<u8>,
    pub dev: Option<u64>,
    pub ino: Option<u64>,
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    pub deleted_at: Option<SystemTime>,
    pub deleted_by: Option<Deleter>,
    pub op: &'static str,
    pub status: Option<Status>,
    pub reason: Option<String>,
    pub holders: Vec<Holder>,
    pub xattrs: Vec<Xattr>,
}

/// What a restore needs beyond the JSON record: the exact path bytes and
/// the times to put back.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RestoreMeta {
    pub path: Vec<u8>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    #[serde(default)]
    pub xattrs: Vec<Xattr>,
}

pub type HeldRecord = (i64, Option<u64>, Option<u64>);

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub since: Option<SystemTime>,
    pub status: Option<Status>,
    pub path: Option<GlobMatcher>,
    /// 0 for no limit.
    pub limit: usize,
}

pub struct Index {
    conn: Connection,
    /// Rows in `records`, counted once at open and kept up to date, so that
    /// `unrm status` does not scan a million rows.
    rows: u64,
}

impl Index {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening index {}", path.display()))?;
        // The index names other people's deleted files: root only.
        for suffix in ["", "-wal", "-shm"] {
            let file =
                path.with_file_name(format!("{}{suffix}", path.file_name().unwrap().to_string_lossy()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // In WAL mode NORMAL never corrupts and survives a crash of the
        // daemon; a power cut may roll back the newest transactions. The
        // one fact that must survive, a capture, is durable in the store
        // before the index hears of it, and a restart re-adopts it.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // A million records' indexes stay in memory: inserts and newest-first
        // queries touch pages near the end of each index.
        conn.pragma_update(None, "cache_size", -65536)?;
        conn.execute_batch(SCHEMA).context("creating the index schema")?;
        migrate(&conn)?;
        let rows = conn.query_row("SELECT COUNT(*) FROM records", [], |row| row.get::<_, i64>(0))? as u64;
        Ok(Self { conn, rows })
    }

    pub fn begin(&self) -> Result<()> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT")?;
        Ok(())
    }

    pub fn insert(&mut self, r: &NewRecord) -> Result<i64> {
        let holders = serde_json::to_string(&r.holders)?;
        let deleted_at = nanos(r.deleted_at.unwrap_or_else(SystemTime::now));
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO records (path, dev, ino, size, mode, uid, gid, atime_ns, mtime_ns,
                deleted_at_ns, deleter_pid, deleter_uid, deleter_comm, op, status, reason, holders, xattrs,
                deleter_path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )?;
        stmt.execute(params![
            r.path,
            r.dev.map(|d| d as i64),
            r.ino.map(|i| i as i64),
            r.size.map(|s| s as i64),
            r.mode,
            r.uid,
            r.gid,
            r.atime_ns,
            r.mtime_ns,
            deleted_at,
            r.deleted_by.as_ref().map(|d| d.pid),
            r.deleted_by.as_ref().map(|d| d.uid),
            r.deleted_by.as_ref().map(|d| d.comm.as_str()),
            r.op,
            r.status.unwrap_or(Status::Unheld).as_str(),
            r.reason,
            holders,
            (!r.xattrs.is_empty()).then(|| serde_json::to_string(&r.xattrs)).transpose()?,
            r.deleted_by.as_ref().and_then(|d| d.path.as_deref()).map(str::as_bytes),
        ])?;
        self.rows += 1;
        Ok(self.conn.last_insert_rowid())
    }

    pub fn set_status(&self, id: i64, status: Status, reason: Option<&str>) -> Result<()> {
        let mut stmt =
            self.conn.prepare_cached("UPDATE records SET status = ?2, reason = ?3 WHERE id = ?1")?;
        stmt.execute(params![id, status.as_str(), reason])?;
        Ok(())
    }

    pub fn set_holders(&self, id: i64, holders: &[Holder]) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("UPDATE records SET holders = ?2 WHERE id = ?1")?;
        stmt.execute(params![id, serde_json::to_string(holders)?])?;
        Ok(())
    }

    /// A scan pinned the file before its deletion event was handled: the
    /// event knows better who deleted it, when, and under which path.
    pub fn set_deletion(&self, id: i64, path: &[u8], at: SystemTime, by: &Deleter, op: &str) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE records SET path = ?2, deleted_at_ns = ?3, deleter_pid = ?4, deleter_uid = ?5,
                deleter_comm = ?6, op = ?7 WHERE id = ?1",
        )?;
        stmt.execute(params![id, path, nanos(at), by.pid, by.uid, by.comm, op])?;
        Ok(())
    }

    pub fn mark_captured(&self, id: i64, size: u64, at: SystemTime) -> Result<()> {
        let mut stmt = self.conn.prepare_cached(
            "UPDATE records SET status = 'captured', reason = NULL, size = ?2, captured_at_ns = ?3 WHERE id = ?1",
        )?;
        stmt.execute(params![id, size as i64, nanos(at)])?;
        Ok(())
    }

    pub fn set_checksum(&self, id: i64, checksum: &str) -> Result<()> {
        let mut stmt = self.conn.prepare_cached("UPDATE records SET checksum = ?2 WHERE id = ?1")?;
        stmt.execute(params![id, checksum])?;
        Ok(())
    }

    pub fn get(&self, id: i64) -> Result<Option<Record>> {
        let mut stmt = self.conn.prepare_cached(&format!("SELECT {COLUMNS} FROM records WHERE id = ?1"))?;
        Ok(stmt.query_row([id], record_from_row).optional()?)
    }

    pub fn restore_meta(&self, id: i64) -> Result<Option<RestoreMeta>> {
        let mut stmt =
            self.conn.prepare_cached("SELECT path, atime_ns, mtime_ns, xattrs FROM records WHERE id = ?1")?;
        Ok(stmt
            .query_row([id], |row| {
                let xattrs: Option<String> = row.get(3)?;
                Ok(RestoreMeta {
                    path: row.get(0)?,
                    atime_ns: row.get(1)?,
                    mtime_ns: row.get(2)?,
                    xattrs: xattrs.and_then(|x| serde_json::from_str(&x).ok()).unwrap_or_default(),
                })
            })
            .optional()?)
    }

    /// Newest first, among the records `visible` admits.
    pub fn list(&self, q: &ListQuery, visible: impl Fn(&Record) -> bool) -> Result<Vec<Record>> {
        // Two statements, so that each can walk its own index in order.
        let since = q.since.map(nanos).unwrap_or(i64::MIN);
        let (mut stmt, status) = match q.status {
            Some(status) => (
                self.conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM records WHERE status = ?2 AND deleted_at_ns >= ?1
                     ORDER BY deleted_at_ns DESC, id DESC"
                ))?,
                Some(status.as_str()),
            ),
            None => (
                self.conn.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM records WHERE deleted_at_ns >= ?1 AND ?2 IS NULL
                     ORDER BY deleted_at_ns DESC, id DESC"
                ))?,
                None,
            ),
        };
        let mut rows = stmt.query(params![since, status])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            if let Some(glob) = &q.path {
                let path: Vec<u8> = row.get(1)?;
                if !glob.is_match(Path::new(std::ffi::OsStr::from_bytes(&path))) {
                    continue;
                }
            }
            let record = record_from_row(row)?;
            if !visible(&record) {
                continue;
            }
            out.push(record);
            if q.limit != 0 && out.len() >= q.limit {
                break;
            }
        }
        Ok(out)
    }

    /// Records that were `held` when the daemon last stopped: id, dev, ino.
    pub fn held(&self) -> Result<Vec<HeldRecord>> {
        let mut stmt = self.conn.prepare_cached("SELECT id, dev, ino FROM records WHERE status = 'held'")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get(0)?,
                row.get::<_, Option<i64>>(1)?.map(|d| d as u64),
                row.get::<_, Option<i64>>(2)?.map(|i| i as u64),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The capture that has been in the store longest.
    pub fn oldest_capture(&self) -> Result<Option<i64>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id FROM records WHERE status = 'captured' ORDER BY captured_at_ns, id LIMIT 1",
        )?;
        Ok(stmt.query_row([], |row| row.get(0)).optional()?)
    }

    /// Forgets records of deletions before `cutoff` (but never one still
    /// held); returns the ids whose captures are to be removed too.
    pub fn expire(&mut self, cutoff: SystemTime) -> Result<Vec<i64>> {
        let cutoff = nanos(cutoff);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM records WHERE deleted_at_ns < ?1 AND status = 'captured'")?;
        let captured = stmt.query_map([cutoff], |row| row.get(0))?.collect::<Result<Vec<i64>, _>>()?;
        let gone = self
            .conn
            .prepare_cached("DELETE FROM records WHERE deleted_at_ns < ?1 AND status != 'held'")?
            .execute([cutoff])?;
        self.rows = self.rows.saturating_sub(gone as u64);
        Ok(captured)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }
}

/// Brings an index made by an older unrm up to this schema.
fn migrate(conn: &Connection) -> Result<()> {
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('records')")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in [("xattrs", "TEXT"), ("deleter_path", "BLOB")] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE records ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn record_from_row(row: &Row) -> rusqlite::Result<Record> {
    let path: Vec<u8> = row.get(1)?;
    let deleter_pid: Option<u32> = row.get(9)?;
    let status: String = row.get(13)?;
    let holders: String = row.get(15)?;
    Ok(Record {
        id: row.get(0)?,
        path: String::from_utf8_lossy(&path).into_owned(),
        dev: row.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        ino: row.get::<_, Option<i64>>(3)?.map(|v| v as u64),
        size: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        mode: row.get(5)?,
        uid: row.get(6)?,
        gid: row.get(7)?,
        deleted_at: from_nanos(row.get(8)?),
        deleted_by: match deleter_pid {
            Some(pid) => Some(Deleter {
                pid,
                uid: row.get(10)?,
                comm: row.get(11)?,
                path: row.get::<_, Option<Vec<u8>>>(18)?.map(|p| String::from_utf8_lossy(&p).into_owned()),
            }),
            None => None,
        },
        op: row.get(12)?,
        status: status.parse().unwrap_or(Status::Failed),
        reason: row.get(14)?,
        holders: serde_json::from_str(&holders).unwrap_or_default(),
        captured_at: row.get::<_, Option<i64>>(16)?.map(from_nanos),
        checksum: row.get(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holders::HolderKind;

    fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite")).unwrap();
        (dir, index)
    }

    fn new(path: &str, status: Status, at_s: u64) -> NewRecord {
        NewRecord {
            path: path.as_bytes().to_vec(),
            dev: Some(7),
            ino: Some(at_s),
            deleted_at: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at_s)),
            deleted_by: Some(Deleter { pid: 1, uid: 0, comm: "rm".into(), path: None }),
            op: "unlink",
            status: Some(status),
            holders: vec![Holder { pid: 5, comm: "less".into(), kind: HolderKind::Fd }],
            ..Default::default()
        }
    }

    #[test]
    fn lists_newest_first_with_filters() {
        let (_dir, mut idx) = index();
        idx.insert(&new("/a/x.log", Status::Unheld, 10)).unwrap();
        idx.insert(&new("/a/y.txt", Status::Held, 20)).unwrap();
        idx.insert(&new("/b/z.log", Status::Held, 30)).unwrap();
        let all = idx.list(&ListQuery::default(), |_| true).unwrap();
        assert_eq!(
            all.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/b/z.log", "/a/y.txt", "/a/x.log"]
        );
        let held =
            idx.list(&ListQuery { status: Some(Status::Held), ..Default::default() }, |_| true).unwrap();
        assert_eq!(held.len(), 2);
        let glob = globset::Glob::new("*.log").unwrap().compile_matcher();
        let logs =
            idx.list(&ListQuery { path: Some(glob), limit: 1, ..Default::default() }, |_| true).unwrap();
        assert_eq!(logs.len(), 1);
        assert_eq!(logs[0].path, "/b/z.log");
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(15);
        assert_eq!(
            idx.list(&ListQuery { since: Some(since), ..Default::default() }, |_| true).unwrap().len(),
            2
        );
    }

    #[test]
    fn status_moves_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let id = {
            let mut idx = Index::open(&path).unwrap();
            let id = idx.insert(&new("/f", Status::Held, 1)).unwrap();
            assert_eq!(idx.held().unwrap(), vec![(id, Some(7), Some(1))]);
            idx.mark_captured(id, 5, SystemTime::now()).unwrap();
            idx.set_checksum(id, "abc").unwrap();
            id
        };
        let idx = Index::open(&path).unwrap();
        let rec = idx.get(id).unwrap().unwrap();
        assert_eq!(rec.status, Status::Captured);
        assert_eq!(rec.checksum.as_deref(), Some("abc"));
        assert_eq!(rec.holders[0].comm, "less");
        assert!(idx.held().unwrap().is_empty());
        assert_eq!(idx.rows(), 1, "counted at open");
        assert!(idx.get(id + 1).unwrap().is_none());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
