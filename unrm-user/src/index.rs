//! The index: every deletion unrm saw, in SQLite under the state directory.
//!
//! One writer (the engine), WAL journal so that a crash never leaves a torn
//! database, statements prepared once. A record's status moves forward only
//! through the methods here; `captured` is written only after the content is
//! durable in the store.
//!
//! Writes never fail the caller. A full disk or an I/O error must not stop
//! the engine (it holds pins other users rely on), so every write of the
//! open transaction is also kept in a journal; if one fails, the
//! transaction is rolled back at commit and the whole journal replayed in a
//! new one, at every commit until it succeeds. Record ids are handed out
//! here, not by SQLite, so a replay writes the very ids the engine already
//! uses, and an id is never given twice, not even after a rollback (a
//! store file left by a lost record can never be mistaken for a new one's).

use std::{
    collections::VecDeque,
    os::unix::ffi::OsStrExt,
    path::Path,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use globset::GlobMatcher;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, named_params, params, types::Value};

use crate::{
    access::{PathFacts, Perms},
    record::{Deleter, Holder, Op, Record, Status, from_nanos, nanos},
    xattrs::Xattr,
};

/// The records table, one row per record: each column with its SQL type,
/// in the order `record_from_row` and `insert` name them. Columns added
/// since the first index are added to older ones at open (`migrate`).
const RECORD_COLUMNS: &[(&str, &str)] = &[
    ("id", "INTEGER PRIMARY KEY"),
    ("path", "BLOB NOT NULL"),
    ("dev", "INTEGER"),
    ("ino", "INTEGER"),
    ("size", "INTEGER"),
    ("mode", "INTEGER"),
    ("uid", "INTEGER"),
    ("gid", "INTEGER"),
    ("atime_ns", "INTEGER"),
    ("mtime_ns", "INTEGER"),
    ("deleted_at_ns", "INTEGER NOT NULL"),
    ("deleter_pid", "INTEGER"),
    ("deleter_uid", "INTEGER"),
    ("deleter_comm", "TEXT"),
    ("op", "TEXT NOT NULL"),
    ("status", "TEXT NOT NULL"),
    ("reason", "TEXT"),
    ("holders", "TEXT NOT NULL DEFAULT '[]'"),
    ("captured_at_ns", "INTEGER"),
    ("checksum", "TEXT"),
    ("xattrs", "TEXT"),
    ("deleter_path", "BLOB"),
    ("access", "TEXT"),
    ("path_resolved", "INTEGER"),
    ("parent", "TEXT"),
    ("charged_uid", "INTEGER"),
    ("final_perms", "TEXT"),
    ("deleter_cgroup", "TEXT"),
];

/// Added after the first release: an index made before lacks them.
const LATER_COLUMNS: &[&str] = &[
    "xattrs",
    "deleter_path",
    "access",
    "path_resolved",
    "parent",
    "charged_uid",
    "final_perms",
    "deleter_cgroup",
];

const OTHER_TABLES: &str = "
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (deleted_at_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS records_held ON records (dev, ino) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, deleted_at_ns DESC, id DESC);
CREATE INDEX IF NOT EXISTS records_versions ON records (path, deleted_at_ns DESC, id DESC)
    WHERE status = 'captured';
";

/// The position of column `name` in `RECORD_COLUMNS`, found while
/// compiling (a name that is not there does not build).
const fn column_index(name: &str) -> usize {
    let mut i = 0;
    while i < RECORD_COLUMNS.len() {
        let (have, want) = (RECORD_COLUMNS[i].0.as_bytes(), name.as_bytes());
        if have.len() == want.len() {
            let mut j = 0;
            while j < have.len() && have[j] == want[j] {
                j += 1;
            }
            if j == have.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("no such column")
}

/// A record column's position in a row selected with `columns()`.
macro_rules! col {
    ($name:literal) => {
        const { column_index($name) }
    };
}

fn schema() -> String {
    let columns: Vec<String> = RECORD_COLUMNS.iter().map(|(name, kind)| format!("{name} {kind}")).collect();
    format!("CREATE TABLE IF NOT EXISTS records ({});{OTHER_TABLES}", columns.join(", "))
}

/// Every column, for `SELECT`.
static COLUMNS: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| RECORD_COLUMNS.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", "));

fn columns() -> &'static str {
    &COLUMNS
}

/// One captured version of a path.
#[derive(Debug)]
pub struct Version {
    pub id: i64,
    pub deleted_at_ns: i64,
    /// When its content was last written.
    pub mtime_ns: Option<i64>,
}

/// A column a single write changes.
#[derive(Clone, Copy, Debug)]
enum Column {
    Holders,
    Checksum,
    Xattrs,
    Access,
    FinalPerms,
    ChargedUid,
    PathResolved,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::Holders => "holders",
            Column::Checksum => "checksum",
            Column::Xattrs => "xattrs",
            Column::Access => "access",
            Column::FinalPerms => "final_perms",
            Column::ChargedUid => "charged_uid",
            Column::PathResolved => "path_resolved",
        }
    }
}

pub type HeldRecord = (i64, Option<u64>, Option<u64>);

#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    pub since: Option<SystemTime>,
    pub status: Option<Status>,
    pub path: Option<GlobMatcher>,
    /// 0 for no limit.
    pub limit: usize,
    /// Continue after this record (its deletion time and id), newest first.
    pub after: Option<(i64, i64)>,
    /// Rows to look at before answering with what was found so far (0: no
    /// bound): a query one caller may see little of must not keep the
    /// engine from its work.
    pub scan: usize,
    /// About how many bytes of records to answer with at most (0: no bound).
    pub bytes: usize,
}

/// Statuses of records with no content: what goes first when the index
/// is over its size.
const NO_CONTENT: &str = "'unheld', 'missed', 'skipped', 'failed', 'evicted'";

/// About what a record takes in JSON besides its path and reason.
const RECORD_BYTES: usize = 400;

/// One page of a listing: the records, and where the next page starts when
/// the scan stopped before the end.
pub struct Page {
    pub records: Vec<Record>,
    pub next: Option<(i64, i64)>,
}

/// A write to the index, kept until its transaction commits.
#[derive(Debug)]
enum Write {
    /// A new record (its id set).
    Insert(Arc<Record>),
    Status(i64, Status, Option<String>),
    Set(i64, Column, Value),
    /// A record's deletion facts, from an event handled after a scan
    /// recorded the file (see `set_deletion`).
    Deletion(Box<Record>),
    Captured(i64, u64, i64),
    Expire(i64),
    /// Forget this many of the oldest records without content of one deleter.
    Prune(Option<u32>, usize),
    /// The next id to hand out, kept so that no id is ever given twice,
    /// not even after the records with the highest ids were forgotten.
    NextId(i64),
}

impl Write {
    /// Whether the write only records what nobody can restore, or what the
    /// next snapshot writes again (holders): the first to go when the
    /// journal is over its bound.
    fn is_expendable(&self) -> bool {
        matches!(self, Write::Insert(r) if r.status != Status::Held)
            || matches!(self, Write::Set(_, Column::Holders, _))
    }
}

/// Writes kept while the index cannot take them, at most; beyond it the
/// expendable ones are dropped (and counted).
const MAX_JOURNAL: usize = 200_000;
/// How soon a failed index is tried again, doubling up to `RETRY_AT_MOST`
/// while it keeps failing (a replay rewrites the whole journal).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

/// How the index has fared, for `unrm status`.
#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Failed writes and commits.
    pub errors: u64,
    /// Records of unheld deletions dropped while the index could not be written.
    pub dropped: u64,
    /// Writes waiting to be replayed.
    pub waiting: usize,
    /// Changes not reported to followers: more waited for a failing index
    /// than `MAX_CHANGES`.
    pub changes_dropped: u64,
    pub last_error: Option<String>,
}

pub struct Index {
    conn: Connection,
    /// Rows in `records`, counted once at open and kept up to date, so that
    /// `unrm status` does not scan a million rows.
    rows: u64,
    next_id: i64,
    /// `next_id` as last written to the `counters` table.
    saved_next_id: i64,
    /// Between `begin` and `commit`.
    in_txn: bool,
    /// An SQL transaction is open (BEGIN succeeded).
    sql_open: bool,
    /// Writes since the last durable commit.
    journal: Vec<Write>,
    /// A write failed: the rest wait in the journal for a replay.
    failed: bool,
    retry_at: Option<Instant>,
    retry_after: Duration,
    health: Health,
    /// New records and status changes since `take_changes`, in order.
    changes: VecDeque<Change>,
}

/// A new record or a status change, for those who follow the index
/// (`unrm list --follow`, the event log).
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub id: i64,
    /// A new record (as written), rather than a change of an existing
    /// one's status (which is read back from the index).
    pub new: Option<Arc<Record>>,
    pub status: Status,
    pub reason: Option<String>,
}

/// Changes kept while the index cannot be written, at most (like the
/// journal's bound); beyond it the oldest are dropped and counted.
const MAX_CHANGES: usize = MAX_JOURNAL;

impl Index {
    /// Opens the index at `path`, handing out ids from at least `first_id`
    /// (the store may hold captures of records an earlier run lost).
    pub fn open(path: &Path, first_id: i64) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)
            .with_context(|| format!("opening index {}", path.display()))?;
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
        conn.execute_batch(&schema()).context("creating the index schema")?;
        migrate(&conn)?;
        let rows = conn.query_row("SELECT COUNT(*) FROM records", [], |row| row.get::<_, i64>(0))? as u64;
        let max =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM records", [], |row| row.get::<_, i64>(0))?;
        let kept = conn
            .query_row("SELECT value FROM counters WHERE name = 'next_id'", [], |row| row.get::<_, i64>(0))
            .optional()?
            .unwrap_or(0);
        Ok(Self {
            conn,
            rows,
            next_id: (max + 1).max(first_id).max(kept),
            saved_next_id: kept,
            in_txn: false,
            sql_open: false,
            journal: Vec::new(),
            failed: false,
            retry_at: None,
            retry_after: RETRY_FIRST,
            health: Health::default(),
            changes: VecDeque::new(),
        })
    }

    /// Gives back the page cache (`cache_size` lets it grow to 64 MiB under
    /// a burst of writes) while nothing is being written; it refills from
    /// the file as queries need it.
    pub fn shrink(&mut self) {
        if !self.in_txn {
            let _ = self.conn.execute_batch("PRAGMA shrink_memory");
        }
    }

    pub fn begin(&mut self) {
        if self.in_txn {
            return;
        }
        self.in_txn = true;
        if !self.failed {
            match self.conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => self.sql_open = true,
                Err(err) => self.fail("beginning a transaction", &err.into()),
            }
        }
    }

    /// Commits the open transaction. If any of its writes failed, or the
    /// commit does, rolls back and replays every write not yet durable (at
    /// most once per retry delay). Returns whether they all are now.
    pub fn commit(&mut self) -> bool {
        if self.in_txn && self.next_id != self.saved_next_id {
            self.saved_next_id = self.next_id;
            self.write(Write::NextId(self.next_id));
        }
        let in_txn = std::mem::take(&mut self.in_txn);
        if !self.failed {
            if !in_txn {
                return true;
            }
            self.sql_open = false;
            match self.conn.execute_batch("COMMIT") {
                Ok(()) => {
                    self.journal.clear();
                    return true;
                }
                Err(err) => self.fail("committing", &err.into()),
            }
        }
        if std::mem::take(&mut self.sql_open) {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        self.replay()
    }

    /// Writes the journal again in a transaction of its own.
    fn replay(&mut self) -> bool {
        let journal = std::mem::take(&mut self.journal);
        let done = self.conn.execute_batch("BEGIN IMMEDIATE").is_ok()
            && journal.iter().all(|w| self.execute(w).is_ok())
            && self.conn.execute_batch("COMMIT").is_ok();
        if done {
            log::info!("the index took {} delayed writes", journal.len());
            self.failed = false;
            self.retry_at = None;
            self.retry_after = RETRY_FIRST;
            self.recount();
            self.health.waiting = 0;
            return true;
        }
        let _ = self.conn.execute_batch("ROLLBACK");
        self.journal = journal;
        self.health.errors += 1;
        self.retry_at = Some(Instant::now() + self.retry_after);
        self.retry_after = (self.retry_after * 2).min(RETRY_AT_MOST);
        self.bound_journal();
        false
    }

    fn bound_journal(&mut self) {
        if self.journal.len() > MAX_JOURNAL {
            let before = self.journal.len();
            self.journal.retain(|w| !w.is_expendable());
            self.health.dropped += (before - self.journal.len()) as u64;
            // Nobody hears of the records just dropped.
            self.changes.retain(|c| c.new.as_ref().is_none_or(|r| r.status == Status::Held));
        }
        self.health.waiting = self.journal.len();
    }

    fn recount(&mut self) {
        if let Ok(rows) = self.conn.query_row("SELECT COUNT(*) FROM records", [], |row| row.get::<_, i64>(0))
        {
            self.rows = rows as u64;
        }
    }

    fn fail(&mut self, what: &str, err: &anyhow::Error) {
        if !self.failed {
            log::error!("the index could not be written ({what}: {err:#}); writes wait and are retried");
        }
        self.failed = true;
        self.health.errors += 1;
        self.health.last_error = Some(format!("{what}: {err:#}"));
    }

    /// Runs a write now (unless the transaction already failed) and keeps it
    /// until the transaction commits.
    fn write(&mut self, w: Write) {
        if !self.failed
            && let Err(err) = self.execute(&w)
        {
            self.fail("writing", &err);
        }
        if self.in_txn || self.failed {
            self.journal.push(w);
            if self.failed {
                self.bound_journal();
            }
        }
    }

    fn execute(&mut self, w: &Write) -> Result<()> {
        let c = &self.conn;
        match w {
            Write::Insert(r) => {
                insert(c, r)?;
                self.rows += 1;
            }
            Write::Status(id, status, reason) => {
                c.prepare_cached("UPDATE records SET status = ?2, reason = ?3 WHERE id = ?1")?
                    .execute(params![id, status.as_str(), reason])?;
            }
            Write::Set(id, column, value) => {
                c.prepare_cached(&format!("UPDATE records SET {} = ?2 WHERE id = ?1", column.name()))?
                    .execute(params![id, value])?;
            }
            Write::Deletion(r) => {
                let by = r.deleted_by.as_ref();
                c.prepare_cached(
                    "UPDATE records SET path = :path, deleted_at_ns = :deleted_at_ns,
                        deleter_pid = :deleter_pid, deleter_uid = :deleter_uid, deleter_comm = :deleter_comm,
                        op = :op, deleter_path = :deleter_path, path_resolved = :path_resolved,
                        deleter_cgroup = :deleter_cgroup,
                        parent = COALESCE(:parent, parent) WHERE id = :id",
                )?
                .execute(named_params! {
                    ":id": r.id,
                    ":path": r.path_bytes(),
                    ":deleted_at_ns": nanos(r.deleted_at),
                    ":deleter_pid": by.map(|d| d.pid),
                    ":deleter_uid": by.map(|d| d.uid),
                    ":deleter_comm": by.map(|d| d.comm.as_str()),
                    ":op": r.op.as_str(),
                    ":deleter_path": by.and_then(|d| d.path.as_deref()).map(str::as_bytes),
                    ":deleter_cgroup": by.and_then(|d| d.cgroup.as_deref()),
                    ":path_resolved": r.path_resolved,
                    ":parent": json_opt(&r.restore.parent),
                })?;
            }
            Write::Captured(id, size, at) => {
                c.prepare_cached(
                    "UPDATE records SET status = 'captured', reason = NULL, size = ?2, captured_at_ns = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, *size as i64, at])?;
            }
            Write::Prune(uid, n) => {
                let gone = c
                    .prepare_cached(&format!(
                        "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE deleter_uid IS ?1
                         AND status IN ({NO_CONTENT}) ORDER BY deleted_at_ns LIMIT ?2)"
                    ))?
                    .execute(params![uid, *n as i64])?;
                self.rows = self.rows.saturating_sub(gone as u64);
            }
            Write::NextId(next) => {
                c.prepare_cached("INSERT OR REPLACE INTO counters (name, value) VALUES ('next_id', ?1)")?
                    .execute([next])?;
            }
            Write::Expire(cutoff) => {
                let gone = c
                    .prepare_cached("DELETE FROM records WHERE deleted_at_ns < ?1 AND status != 'held'")?
                    .execute([cutoff])?;
                self.rows = self.rows.saturating_sub(gone as u64);
            }
        }
        Ok(())
    }

    /// Records a new deletion; returns the id it gave it.
    pub fn insert(&mut self, mut r: Record) -> i64 {
        let id = self.next_id;
        self.next_id += 1;
        r.id = id;
        let r = Arc::new(r);
        self.changed(Change { id, new: Some(r.clone()), status: r.status, reason: r.reason.clone() });
        self.write(Write::Insert(r));
        id
    }

    pub fn set_status(&mut self, id: i64, status: Status, reason: Option<&str>) {
        self.changed(Change { id, new: None, status, reason: reason.map(str::to_owned) });
        self.write(Write::Status(id, status, reason.map(str::to_owned)));
    }

    fn changed(&mut self, change: Change) {
        if self.changes.len() >= MAX_CHANGES {
            self.changes.pop_front();
            self.health.changes_dropped += 1;
        }
        self.changes.push_back(change);
    }

    /// The changes written durably since the last call, in order; none
    /// while writes wait for a replay (they come once it succeeds).
    pub fn take_changes(&mut self) -> VecDeque<Change> {
        if self.in_txn || self.failed {
            return VecDeque::new();
        }
        std::mem::take(&mut self.changes)
    }

    fn set(&mut self, id: i64, column: Column, value: impl Into<Value>) {
        self.write(Write::Set(id, column, value.into()));
    }

    pub fn set_holders(&mut self, id: i64, holders: &[Holder]) {
        self.set(id, Column::Holders, json(holders));
    }

    /// A scan pinned the file before its deletion event was handled: the
    /// event (`r`) knows better who deleted it, when, and under which path.
    pub fn set_deletion(&mut self, id: i64, r: &Record) {
        if r.deleted_by.is_none() {
            return;
        }
        let mut r = r.clone();
        r.id = id;
        self.write(Write::Deletion(Box::new(r)));
    }

    pub fn mark_captured(&mut self, id: i64, size: u64, at: SystemTime) {
        self.changed(Change { id, new: None, status: Status::Captured, reason: None });
        self.write(Write::Captured(id, size, nanos(at)));
    }

    pub fn set_checksum(&mut self, id: i64, checksum: &str) {
        self.set(id, Column::Checksum, checksum.to_owned());
    }

    /// The extended attributes that go with a capture's content.
    pub fn set_xattrs(&mut self, id: i64, xattrs: &[Xattr]) {
        self.set(id, Column::Xattrs, (!xattrs.is_empty()).then(|| json(xattrs)));
    }

    pub fn set_access(&mut self, id: i64, facts: &PathFacts) {
        self.set(id, Column::Access, json(facts));
    }

    /// The owner, mode and ACL a captured file had when its content became
    /// final.
    pub fn set_final_perms(&mut self, id: i64, perms: &Perms) {
        self.set(id, Column::FinalPerms, json(perms));
    }

    /// Whose per-user limits a pin (and its capture) counts against now.
    pub fn set_charged_to(&mut self, id: i64, uid: u32) {
        self.set(id, Column::ChargedUid, uid);
    }

    pub fn set_path_resolved(&mut self, id: i64, resolved: bool) {
        self.set(id, Column::PathResolved, resolved);
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Whether writes reach the database now (none wait for a replay).
    pub fn healthy(&self) -> bool {
        !self.failed
    }

    pub fn get(&self, id: i64) -> Result<Option<Record>> {
        let mut stmt =
            self.conn.prepare_cached(&format!("SELECT {} FROM records WHERE id = ?1", columns()))?;
        Ok(stmt.query_row([id], record_from_row).optional()?)
    }

    /// Newest first, among the records `visible` admits.
    pub fn list(&self, q: &ListQuery, mut visible: impl FnMut(&Record) -> bool) -> Result<Page> {
        // Two statements, so that each can walk its own index in order.
        let since = q.since.map(nanos).unwrap_or(i64::MIN);
        let (after_ns, after_id) = q.after.unwrap_or((i64::MAX, i64::MAX));
        let columns = columns();
        let (mut stmt, status) = match q.status {
            Some(status) => (
                self.conn.prepare_cached(&format!(
                    "SELECT {columns} FROM records WHERE status = ?2 AND deleted_at_ns >= ?1
                     AND (deleted_at_ns, id) < (?3, ?4) ORDER BY deleted_at_ns DESC, id DESC"
                ))?,
                Some(status.as_str()),
            ),
            None => (
                self.conn.prepare_cached(&format!(
                    "SELECT {columns} FROM records WHERE deleted_at_ns >= ?1 AND ?2 IS NULL
                     AND (deleted_at_ns, id) < (?3, ?4) ORDER BY deleted_at_ns DESC, id DESC"
                ))?,
                None,
            ),
        };
        let mut rows = stmt.query(params![since, status, after_ns, after_id])?;
        let mut page = Page { records: Vec::new(), next: None };
        let (mut scanned, mut bytes) = (0, 0);
        while let Some(row) = rows.next()? {
            scanned += 1;
            let at = (row.get::<_, i64>(col!("deleted_at_ns"))?, row.get::<_, i64>(col!("id"))?);
            let matched = match &q.path {
                Some(glob) => {
                    let path: Vec<u8> = row.get(col!("path"))?;
                    glob.is_match(Path::new(std::ffi::OsStr::from_bytes(&path)))
                }
                None => true,
            };
            if matched {
                let record = record_from_row(row)?;
                if visible(&record) {
                    bytes += record.path.len() + record.reason.as_ref().map_or(0, String::len) + RECORD_BYTES;
                    page.records.push(record);
                    if q.limit != 0 && page.records.len() >= q.limit {
                        break;
                    }
                }
            }
            if (q.scan != 0 && scanned >= q.scan) || (q.bytes != 0 && bytes >= q.bytes) {
                page.next = Some(at);
                break;
            }
        }
        Ok(page)
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

    /// The captured versions of `path` whose file `uid` owned, newest first
    /// (another user's file of the same name is not a version of this one:
    /// anyone may make one, in a directory of their own or a namespace).
    pub fn versions_of(&self, path: &[u8], uid: u32) -> Result<Vec<Version>> {
        let mut stmt = self.conn.prepare_cached(
            // Named: by status, the planner's own pick, walks every capture.
            "SELECT id, deleted_at_ns, mtime_ns FROM records INDEXED BY records_versions
             WHERE status = 'captured' AND path = ?1 AND uid = ?2 AND path_resolved = 1
             ORDER BY deleted_at_ns DESC, id DESC",
        )?;
        let rows = stmt.query_map(params![path, uid], |row| {
            Ok(Version { id: row.get(0)?, deleted_at_ns: row.get(1)?, mtime_ns: row.get(2)? })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every capture in the store: id, whom it is charged to, when captured.
    pub fn captures(&self) -> Result<Vec<(i64, Option<u32>, i64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, COALESCE(charged_uid, uid), COALESCE(captured_at_ns, 0) FROM records
             WHERE status = 'captured'",
        )?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets records of deletions before `cutoff` (but never one still
    /// held); returns the ids whose captures are to be removed too.
    pub fn expire(&mut self, cutoff: SystemTime) -> Result<Vec<i64>> {
        let cutoff = nanos(cutoff);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM records WHERE deleted_at_ns < ?1 AND status = 'captured'")?;
        let captured = stmt.query_map([cutoff], |row| row.get(0))?.collect::<Result<Vec<i64>, _>>()?;
        drop(stmt);
        self.write(Write::Expire(cutoff));
        Ok(captured)
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Bytes the index's pages in use take.
    pub fn size(&self) -> Result<u64> {
        let pragma =
            |name: &str| self.conn.query_row(&format!("PRAGMA {name}"), [], |row| row.get::<_, i64>(0));
        let live = pragma("page_count")? - pragma("freelist_count")?;
        Ok((live.max(0) * pragma("page_size")?) as u64)
    }

    /// Forgets about `n` records without content, oldest first, of the
    /// deleters with the most of them first; returns how many it chose.
    pub fn prune(&mut self, n: usize) -> Result<usize> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT deleter_uid, COUNT(*) FROM records WHERE status IN ({NO_CONTENT})
             GROUP BY deleter_uid ORDER BY 2 DESC"
        ))?;
        let heaviest: Vec<(Option<u32>, i64)> =
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<Result<_, _>>()?;
        drop(stmt);
        let mut chosen = 0;
        for (uid, count) in heaviest {
            if chosen >= n {
                break;
            }
            let take = (count as usize).min(n - chosen);
            self.write(Write::Prune(uid, take));
            chosen += take;
        }
        Ok(chosen)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

fn json_opt<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    value.as_ref().map(json)
}

fn from_json<T: serde::de::DeserializeOwned>(text: Option<String>) -> Option<T> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// `INSERT` of every column, by name; made once (an `rm -rf` inserts
/// hundreds of thousands).
static INSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let names: Vec<&str> = RECORD_COLUMNS.iter().map(|(name, _)| *name).collect();
    let values: Vec<String> = names.iter().map(|name| format!(":{name}")).collect();
    format!("INSERT INTO records ({}) VALUES ({})", names.join(", "), values.join(", "))
});

fn insert(c: &Connection, r: &Record) -> Result<()> {
    let mut stmt = c.prepare_cached(&INSERT)?;
    let by = r.deleted_by.as_ref();
    stmt.execute(named_params! {
        ":id": r.id,
        ":path": r.path_bytes(),
        ":dev": r.dev.map(|d| d as i64),
        ":ino": r.ino.map(|i| i as i64),
        ":size": r.size.map(|s| s as i64),
        ":mode": r.mode,
        ":uid": r.uid,
        ":gid": r.gid,
        ":atime_ns": r.restore.atime_ns,
        ":mtime_ns": r.restore.mtime_ns,
        ":deleted_at_ns": nanos(r.deleted_at),
        ":deleter_pid": by.map(|d| d.pid),
        ":deleter_uid": by.map(|d| d.uid),
        ":deleter_comm": by.map(|d| d.comm.as_str()),
        ":op": r.op.as_str(),
        ":status": r.status.as_str(),
        ":reason": r.reason,
        ":holders": json(&r.holders),
        ":captured_at_ns": r.captured_at.map(nanos),
        ":checksum": r.checksum,
        ":xattrs": (!r.restore.xattrs.is_empty()).then(|| json(&r.restore.xattrs)),
        ":deleter_path": by.and_then(|d| d.path.as_deref()).map(str::as_bytes),
        ":deleter_cgroup": by.and_then(|d| d.cgroup.as_deref()),
        ":access": json_opt(&r.access),
        ":path_resolved": r.path_resolved,
        ":parent": json_opt(&r.restore.parent),
        ":charged_uid": r.charged_to,
        ":final_perms": json_opt(&r.final_perms),
    })?;
    Ok(())
}

/// Brings an index made by an older unrm up to this schema. Records from
/// before `path_resolved` existed have it unset: not verified.
fn migrate(conn: &Connection) -> Result<()> {
    let present: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('records')")?
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, kind) in RECORD_COLUMNS.iter().filter(|(name, _)| LATER_COLUMNS.contains(name)) {
        if !present.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE records ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

fn record_from_row(row: &Row) -> rusqlite::Result<Record> {
    let path: Vec<u8> = row.get(col!("path"))?;
    let status: String = row.get(col!("status"))?;
    let op: String = row.get(col!("op"))?;
    let deleted_by = match row.get::<_, Option<u32>>(col!("deleter_pid"))? {
        Some(pid) => Some(
            Deleter {
                pid,
                uid: row.get(col!("deleter_uid"))?,
                comm: row.get(col!("deleter_comm"))?,
                path: row
                    .get::<_, Option<Vec<u8>>>(col!("deleter_path"))?
                    .map(|p| String::from_utf8_lossy(&p).into_owned()),
                cgroup: None,
                container: None,
            }
            .in_cgroup(row.get(col!("deleter_cgroup"))?),
        ),
        None => None,
    };
    let mut record =
        Record::new(path, op.parse().unwrap_or(Op::Scan), status.parse().unwrap_or(Status::Failed));
    record.id = row.get(col!("id"))?;
    record.path_resolved = row.get::<_, Option<bool>>(col!("path_resolved"))?.unwrap_or(false);
    record.dev = row.get::<_, Option<i64>>(col!("dev"))?.map(|v| v as u64);
    record.ino = row.get::<_, Option<i64>>(col!("ino"))?.map(|v| v as u64);
    record.size = row.get::<_, Option<i64>>(col!("size"))?.map(|v| v as u64);
    record.mode = row.get(col!("mode"))?;
    record.uid = row.get(col!("uid"))?;
    record.gid = row.get(col!("gid"))?;
    record.deleted_at = from_nanos(row.get(col!("deleted_at_ns"))?);
    record.deleted_by = deleted_by;
    record.reason = row.get(col!("reason"))?;
    record.holders = from_json(row.get(col!("holders"))?).unwrap_or_default();
    record.captured_at = row.get::<_, Option<i64>>(col!("captured_at_ns"))?.map(from_nanos);
    record.checksum = row.get(col!("checksum"))?;
    record.access = from_json(row.get(col!("access"))?);
    record.charged_to = row.get(col!("charged_uid"))?;
    record.final_perms = from_json(row.get(col!("final_perms"))?);
    record.restore.atime_ns = row.get(col!("atime_ns"))?;
    record.restore.mtime_ns = row.get(col!("mtime_ns"))?;
    record.restore.xattrs = from_json(row.get(col!("xattrs"))?).unwrap_or_default();
    record.restore.parent = from_json(row.get(col!("parent"))?);
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holders::HolderKind;

    fn index() -> (tempfile::TempDir, Index) {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite"), 1).unwrap();
        (dir, index)
    }

    fn new(path: &str, status: Status, at_s: u64) -> Record {
        let mut r = Record::new(path.as_bytes().to_vec(), Op::Unlink, status);
        r.path_resolved = true;
        r.dev = Some(7);
        r.ino = Some(at_s);
        r.deleted_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(at_s);
        r.deleted_by = Some(
            Deleter { pid: 1, uid: 0, comm: "rm".into(), path: None, cgroup: None, container: None }
                .in_cgroup(Some(
                    "/libpod_parent/libpod-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
                        .into(),
                )),
        );
        r.holders = vec![Holder { pid: 5, comm: "less".into(), kind: HolderKind::Fd }];
        r
    }

    fn all(idx: &Index, q: &ListQuery) -> Vec<Record> {
        idx.list(q, |_| true).unwrap().records
    }

    #[test]
    fn lists_newest_first_with_filters_and_pages() {
        let (_dir, mut idx) = index();
        idx.insert(new("/a/x.log", Status::Unheld, 10));
        idx.insert(new("/a/y.txt", Status::Held, 20));
        idx.insert(new("/b/z.log", Status::Held, 30));
        let paths = |records: &[Record]| records.iter().map(|r| r.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&all(&idx, &ListQuery::default())), ["/b/z.log", "/a/y.txt", "/a/x.log"]);
        let held = all(&idx, &ListQuery { status: Some(Status::Held), ..Default::default() });
        assert_eq!(held.len(), 2);
        let glob = globset::Glob::new("*.log").unwrap().compile_matcher();
        let logs = all(&idx, &ListQuery { path: Some(glob), limit: 1, ..Default::default() });
        assert_eq!(paths(&logs), ["/b/z.log"]);
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(15);
        assert_eq!(all(&idx, &ListQuery { since: Some(since), ..Default::default() }).len(), 2);
        // A bounded scan answers in pages that join up.
        let mut q = ListQuery { scan: 2, ..Default::default() };
        let first = idx.list(&q, |_| true).unwrap();
        assert_eq!(paths(&first.records), ["/b/z.log", "/a/y.txt"]);
        q.after = first.next;
        let second = idx.list(&q, |_| true).unwrap();
        assert_eq!(paths(&second.records), ["/a/x.log"]);
        assert!(second.next.is_none());
    }

    #[test]
    fn every_field_of_a_record_comes_back_as_written() {
        let (_dir, mut idx) = index();
        let mut r = new("/d/\u{e9}t\u{e9}", Status::Held, 9);
        r.path_resolved = false;
        (r.size, r.mode, r.uid, r.gid) = (Some(5), Some(0o100640), Some(1000), Some(100));
        r.deleted_by.as_mut().unwrap().path = Some("/in/container".into());
        r.op = Op::Rename;
        r.reason = Some("why".into());
        r.captured_at = Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(11));
        r.checksum = Some("sum".into());
        r.charged_to = Some(1001);
        r.access = Some(PathFacts::default());
        r.final_perms = Some(Perms { uid: 1, gid: 2, mode: 0o600, acl: None });
        r.restore.atime_ns = Some(3);
        r.restore.mtime_ns = Some(4);
        r.restore.xattrs = vec![Xattr { name: "user.a".into(), value: vec![1, 2] }];
        r.restore.parent = Some(crate::access::Parent { ino: 2, uid: 0, gid: 0, mode: 0o40755 });
        let id = idx.insert(r.clone());
        r.id = id;
        assert_eq!(idx.get(id).unwrap().unwrap(), r);
    }

    #[test]
    fn a_deletion_event_rewrites_what_a_scan_recorded() {
        let (_dir, mut idx) = index();
        let mut scan = new("/found", Status::Held, 1);
        (scan.op, scan.deleted_by, scan.path_resolved) = (Op::Scan, None, true);
        let id = idx.insert(scan);
        let mut event = new("/deleted/here", Status::Held, 2);
        event.path_resolved = false;
        idx.set_deletion(id, &event);
        let got = idx.get(id).unwrap().unwrap();
        assert_eq!((got.path.as_str(), got.op, got.path_resolved), ("/deleted/here", Op::Unlink, false));
        assert_eq!(got.deleted_by, event.deleted_by);
    }

    #[test]
    fn status_moves_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let id = {
            let mut idx = Index::open(&path, 1).unwrap();
            idx.begin();
            let id = idx.insert(new("/f", Status::Held, 1));
            assert!(idx.commit());
            assert_eq!(idx.held().unwrap(), vec![(id, Some(7), Some(1))]);
            idx.mark_captured(id, 5, SystemTime::now());
            idx.set_checksum(id, "abc");
            id
        };
        let idx = Index::open(&path, 1).unwrap();
        let rec = idx.get(id).unwrap().unwrap();
        assert_eq!(rec.status, Status::Captured);
        assert_eq!(rec.checksum.as_deref(), Some("abc"));
        assert_eq!(rec.holders[0].comm, "less");
        assert!(rec.path_resolved);
        assert!(idx.held().unwrap().is_empty());
        assert_eq!(idx.rows(), 1, "counted at open");
        assert!(idx.get(id + 1).unwrap().is_none());
    }

    #[test]
    fn ids_are_never_given_twice_and_start_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let mut idx = Index::open(&path, 40).unwrap();
        idx.begin();
        assert_eq!(idx.insert(new("/a", Status::Unheld, 1)), 40);
        assert_eq!(idx.insert(new("/b", Status::Unheld, 1)), 41);
        assert!(idx.commit());
        drop(idx);
        let mut idx = Index::open(&path, 1).unwrap();
        idx.begin();
        assert_eq!(idx.insert(new("/c", Status::Unheld, 2)), 42);
        // Forgotten, the newest record's id still is not given again.
        idx.expire(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10)).unwrap();
        assert!(idx.commit());
        drop(idx);
        let mut idx = Index::open(&path, 1).unwrap();
        assert_eq!(idx.insert(new("/d", Status::Unheld, 3)), 43);
    }

    #[test]
    fn pruning_takes_the_heaviest_deleters_oldest_records_without_content() {
        let (_dir, mut idx) = index();
        let by = |uid: u32, path: &str, status: Status, at: u64| {
            let mut r = new(path, status, at);
            r.deleted_by =
                Some(Deleter { pid: 1, uid, comm: "rm".into(), path: None, cgroup: None, container: None });
            r
        };
        for i in 0..6 {
            idx.insert(by(1001, &format!("/flood/{i}"), Status::Unheld, 100 + i));
        }
        idx.insert(by(1000, "/alice/old", Status::Unheld, 1));
        let kept = idx.insert(by(1001, "/flood/captured", Status::Captured, 0));
        assert!(idx.size().unwrap() > 0);
        assert_eq!(idx.prune(4).unwrap(), 4);
        let left: Vec<String> = all(&idx, &ListQuery::default()).into_iter().map(|r| r.path).collect();
        assert_eq!(left, ["/flood/5", "/flood/4", "/alice/old", "/flood/captured"]);
        assert!(idx.get(kept).unwrap().is_some(), "records with content are never pruned");
    }

    #[test]
    fn failed_writes_are_replayed_at_the_next_commit() {
        let (_dir, mut idx) = index();
        idx.begin();
        let a = idx.insert(new("/a", Status::Held, 1));
        // Make the next write fail as a full disk would: a table it needs
        // is gone for the length of one transaction.
        idx.conn.execute_batch("ALTER TABLE records RENAME TO hidden").unwrap();
        idx.set_status(a, Status::Captured, None);
        let b = idx.insert(new("/b", Status::Held, 2));
        idx.conn.execute_batch("ALTER TABLE hidden RENAME TO records").unwrap();
        assert_eq!(idx.health().errors, 1);
        assert!(idx.commit(), "replayed in a new transaction");
        assert_eq!(idx.get(a).unwrap().unwrap().status, Status::Captured);
        assert_eq!(idx.get(b).unwrap().unwrap().path, "/b");
        assert_eq!(idx.health().waiting, 0);
    }
}
