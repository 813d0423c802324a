//! Where events go besides followers: a JSON-lines file that log shippers
//! tail (rotated by size, a bounded number of old files kept), standard
//! output (a container's log), or the journal.
//!
//! The engine never waits for it: events queue for a writer thread of
//! their own, and when the queue is full (a slow disk, a shipper's pipe
//! nobody drains) they are dropped and counted, never the engine held up.
//! A write that fails halfway is cut back, so the file only ever holds
//! whole lines.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Where the event log is written.
#[derive(Clone, Debug, PartialEq)]
pub enum Sink {
    Off,
    File(Rotation),
    Stdout,
    Journal,
}

/// The event file, and when and how far it is rotated.
#[derive(Clone, Debug, PartialEq)]
pub struct Rotation {
    pub path: PathBuf,
    /// Past this size the file becomes `PATH.1` (and `PATH.1` `PATH.2`, …).
    pub max_bytes: u64,
    /// Old files kept; 0 starts the file afresh instead.
    pub keep: u32,
}

/// Events queued for the writer at most; past it they are dropped.
pub const QUEUE: usize = 16_384;
/// Bytes written in one go at most.
const BATCH_BYTES: usize = 1 << 20;
/// After a small batch, how long the writer lets events gather: a storm
/// of deletions is written in large batches, a few system calls per
/// thousand events instead of several per event.
const GATHER: Duration = Duration::from_millis(20);
const SMALL_BATCH: usize = 64 << 10;

/// What became of the events, for `unrm status` and the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub written: AtomicU64,
    /// Not written: the queue was full, or the write failed.
    pub dropped: AtomicU64,
    /// Writes that failed (each is logged the first time, then counted).
    pub errors: AtomicU64,
}

/// The engine's end of the event log. Dropped (the engine stopping), it
/// lets the writer finish what is queued, for a short while at most.
pub struct EventLog {
    tx: Option<SyncSender<Arc<str>>>,
    /// Hears from the writer when it has written everything and ended.
    done: Option<Receiver<()>>,
    pub stats: Arc<Stats>,
}

/// How long a stopping daemon waits for the event log's last lines.
const FINISH_WITHIN: Duration = Duration::from_secs(2);

impl Drop for EventLog {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(done) = self.done.take() {
            let _ = done.recv_timeout(FINISH_WITHIN);
        }
    }
}

impl EventLog {
    /// Starts the writer for `sink`, with room for `queue` events. A file
    /// sink's directory is checked now, so that a bad one stops the start
    /// with one clear error.
    pub fn start(sink: Sink, queue: usize) -> Result<EventLog> {
        let stats = Arc::new(Stats::default());
        if sink == Sink::Off {
            return Ok(EventLog { tx: None, done: None, stats });
        }
        if let Sink::File(rotation) = &sink {
            check_dir(&rotation.path)?;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(queue.max(1));
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let writer_stats = stats.clone();
        std::thread::Builder::new()
            .name("unrm-events".into())
            .spawn(move || {
                write_loop(rx, sink, &writer_stats);
                let _ = done_tx.send(());
            })
            .context("starting the event log's writer")?;
        Ok(EventLog { tx: Some(tx), done: Some(done), stats })
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues one event's line, or drops it when the writer is behind.
    pub fn send(&self, line: Arc<str>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    log::warn!("the event log is behind its sink; {dropped} events dropped so far");
                }
            }
        }
    }
}

/// The event file's directory: made if missing (searchable by all, so a
/// shipper running as another user can be let in to the file), and
/// refused if anyone but root could change it: there, rotation's renames
/// and the file's creation could be turned against root.
fn check_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        bail!("event log {}: give a path in a directory", path.display());
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        // Past the daemon's umask (077).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("event log directory {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        bail!(
            "event log directory {} is not one only root can change; refusing to write there",
            dir.display()
        );
    }
    Ok(())
}

fn write_loop(rx: Receiver<Arc<str>>, sink: Sink, stats: &Stats) {
    let mut out = Output::new(sink);
    let mut pending = None;
    while let Some(first) = pending.take().or_else(|| rx.recv().ok()) {
        let mut batch = Vec::with_capacity(BATCH_BYTES.min(first.len() * 64));
        batch.extend_from_slice(first.as_bytes());
        batch.push(b'\n');
        let mut lines = 1;
        while batch.len() < BATCH_BYTES {
            let Ok(line) = rx.try_recv() else { break };
            batch.extend_from_slice(line.as_bytes());
            batch.push(b'\n');
            lines += 1;
        }
        match out.write(&batch) {
            Ok(()) => stats.written.fetch_add(lines, Ordering::Relaxed),
            Err(err) => {
                if stats.errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::error!(
                        "writing the event log: {err}; events are dropped and counted until it works"
                    );
                }
                stats.dropped.fetch_add(lines, Ordering::Relaxed)
            }
        };
        // Unless the daemon is stopping (the queue closed and drained).
        if batch.len() < SMALL_BATCH {
            match rx.recv_timeout(GATHER) {
                Ok(line) => pending = Some(line),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

enum Output {
    File(Rotating),
    Stdout,
    Journal,
}

impl Output {
    fn new(sink: Sink) -> Self {
        match sink {
            Sink::File(rotation) => Output::File(Rotating { rotation, file: None }),
            Sink::Stdout => Output::Stdout,
            Sink::Journal | Sink::Off => Output::Journal,
        }
    }

    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        match self {
            Output::File(file) => file.write(batch),
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch)?;
                out.flush()
            }
            Output::Journal => {
                for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    log::info!(target: "unrm::events", "{}", String::from_utf8_lossy(line));
                }
                Ok(())
            }
        }
    }
}

/// The event file, reopened when it went away or was rotated by someone
/// else (logrotate), rotated by size itself.
struct Rotating {
    rotation: Rotation,
    file: Option<File>,
}

impl Rotating {
    /// Writes whole lines, rotating before one that would take the file
    /// past its size.
    fn write(&mut self, batch: &[u8]) -> io::Result<()> {
        let mut rest = batch;
        let (mut len, regular) = self.current()?.metadata().map(|m| (m.len(), m.is_file()))?;
        while !rest.is_empty() {
            let room = self.rotation.max_bytes.saturating_sub(len) as usize;
            let mut take = rest.len();
            if regular && take > room {
                // The lines that fit; a line longer than a whole file goes alone.
                take = match rest[..room.min(rest.len())].iter().rposition(|&b| b == b'\n') {
                    Some(end) => end + 1,
                    None if len == 0 => {
                        rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |end| end + 1)
                    }
                    None => {
                        self.rotate()?;
                        len = 0;
                        continue;
                    }
                };
            }
            self.append(&rest[..take], len, regular)?;
            len += take as u64;
            rest = &rest[take..];
        }
        Ok(())
    }

    fn append(&mut self, lines: &[u8], len: u64, regular: bool) -> io::Result<()> {
        let file = self.file.as_mut().expect("opened by write");
        if let Err(err) = file.write_all(lines) {
            // Whole lines only: cut back what part of the batch went in.
            if regular {
                let _ = file.set_len(len);
            }
            self.file = None;
            return Err(err);
        }
        Ok(())
    }

    /// The open file, if it is still the one at the path; else the path's.
    fn current(&mut self) -> io::Result<&mut File> {
        let path = &self.rotation.path;
        let moved = match (&self.file, std::fs::symlink_metadata(path)) {
            (Some(file), Ok(now)) => file.metadata().map(|m| (m.dev(), m.ino()) != (now.dev(), now.ino()))?,
            (Some(_), Err(_)) => true,
            (None, _) => true,
        };
        if moved {
            self.file = Some(open(path)?);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// PATH → PATH.1 → PATH.2 … → PATH.keep (the oldest goes).
    fn rotate(&mut self) -> io::Result<()> {
        let path = &self.rotation.path;
        let numbered = |n: u32| {
            let mut name = path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let keep = self.rotation.keep;
        if keep == 0 {
            std::fs::remove_file(path)?;
        } else {
            for n in (1..keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
            std::fs::rename(path, numbered(1))?;
        }
        self.file = Some(open(path)?);
        Ok(())
    }
}

/// Opens the event file for appending, never through a symbolic link. A
/// new one is root's, mode 0640 (a shipper running as another user is let
/// in by an ACL or the file's group, which the administrator chooses: the
/// daemon has no CAP_CHOWN under its unit). A pipe is fine too (a shipper
/// reading one).
fn open(path: &Path) -> io::Result<File> {
    let flags = libc::O_NOFOLLOW | libc::O_CLOEXEC;
    let created = OpenOptions::new().append(true).create_new(true).mode(0o640).custom_flags(flags).open(path);
    let file = match created {
        Ok(file) => {
            // Past the daemon's umask (077).
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o640))?;
            file
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).custom_flags(flags).open(path)?
        }
        Err(err) => return Err(err),
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() && !kind.is_fifo() {
        return Err(io::Error::other(format!("{} is neither a regular file nor a pipe", path.display())));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    #[test]
    fn rotation_keeps_whole_lines_and_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out =
            Rotating { rotation: Rotation { path: path.clone(), max_bytes: 100, keep: 2 }, file: None };
        for n in 0..20 {
            out.write(format!("{{\"n\":{n:03},\"pad\":\"{}\"}}\n", "x".repeat(20)).as_bytes()).unwrap();
        }
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let (now, one, two) = (
            lines_of(&path),
            lines_of(&dir.path().join("events.jsonl.1")),
            lines_of(&dir.path().join("events.jsonl.2")),
        );
        for file in [&now, &one, &two] {
            assert!(!file.is_empty() && file.join("\n").len() <= 100);
        }
        // Newest in the file, older in .1, older still in .2; nothing lost in between.
        let all: Vec<String> = two.iter().chain(&one).chain(&now).cloned().collect();
        let numbers: Vec<u32> = all.iter().map(|l| l[5..8].parse().unwrap()).collect();
        assert_eq!(numbers, (20 - numbers.len() as u32..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_file_moved_away_is_followed_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut out =
            Rotating { rotation: Rotation { path: path.clone(), max_bytes: 1 << 20, keep: 1 }, file: None };
        out.write(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("moved")).unwrap();
        out.write(b"two\n").unwrap();
        assert_eq!(lines_of(&path), ["two"]);
        assert_eq!(lines_of(&dir.path().join("moved")), ["one"]);
    }

    #[test]
    fn a_symbolic_link_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "").unwrap();
        let path = dir.path().join("events.jsonl");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(open(&path).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"");
    }

    #[test]
    fn a_directory_others_may_change_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = EventLog::start(
            Sink::File(Rotation { path: dir.path().join("e.jsonl"), max_bytes: 1, keep: 1 }),
            4,
        );
        // Only root's directories pass; as another user, the owner check refuses too.
        assert!(err.is_err());
    }
}
