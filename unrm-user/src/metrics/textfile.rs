//! `DIR/unrm.prom` for node_exporter's textfile collector, replaced whole
//! each time: the metrics go to a new file in DIR, which is then renamed
//! over the old one, so a scrape reads either the old figures or the new,
//! never half of them.
//!
//! The daemon is root and DIR usually is not root's alone (Debian's
//! `/var/lib/prometheus/node-exporter` sits in a directory the `prometheus`
//! user owns, who could swap it for a symbolic link). So DIR is opened
//! anew for each write with no symbolic link anywhere in its path, the new
//! file is created there with O_CREAT|O_EXCL|O_NOFOLLOW under a name of
//! its own (one planted in advance makes that write fail, not follow it),
//! and rename(2) replaces the entry `unrm.prom`, never writing through it:
//! root writes nowhere but in DIR, and nothing but files it just created.
//!
//! The temporary file's name starts with a dot and does not end in `.prom`,
//! so node_exporter never reads it. No fsync: the file is rewritten every
//! few seconds and again at start, so a crash costs nothing worth the disk
//! writes of syncing a file that changes so often.

use std::{
    io::Write,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, bail};
use rustix::{
    fs::{
        Access, AtFlags, CWD, Mode, OFlags, ResolveFlags, accessat, fchmod, openat, openat2, renameat,
        unlinkat,
    },
    io::Errno,
};

use super::{Source, families, render};

/// The file node_exporter reads; it reads only `*.prom`.
pub const NAME: &str = "unrm.prom";

/// The textfile directory, as given.
pub struct Dir {
    path: PathBuf,
    /// The last write failed (so the next success is told, and repeated
    /// failures are not logged every few seconds).
    failing: std::sync::atomic::AtomicBool,
}

impl Dir {
    /// DIR, refused at start unless it is a directory reached without
    /// symbolic links.
    pub fn check(path: &Path) -> Result<Self> {
        if !path.is_absolute() {
            bail!("metrics textfile directory {}: give an absolute path", path.display());
        }
        let dir = Dir { path: path.to_path_buf(), failing: Default::default() };
        let fd = dir
            .open()
            .map_err(|err| anyhow::anyhow!("metrics textfile directory {}: {err}", path.display()))?;
        // Root may write anywhere but on a read-only file system (a unit's
        // ProtectSystem= makes one of every path it does not list).
        accessat(&fd, ".", Access::WRITE_OK, AtFlags::empty()).map_err(|err| {
            anyhow::anyhow!(
                "metrics textfile directory {}: not writable: {}",
                path.display(),
                std::io::Error::from(err)
            )
        })?;
        Ok(dir)
    }

    pub fn target(&self) -> PathBuf {
        self.path.join(NAME)
    }

    fn open(&self) -> Result<OwnedFd, String> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        openat2(CWD, &self.path, flags, Mode::empty(), ResolveFlags::NO_SYMLINKS).map_err(|err| match err {
            Errno::NOTDIR => "not a directory".to_owned(),
            Errno::LOOP => "its path has a symbolic link in it; give the real path".to_owned(),
            err => std::io::Error::from(err).to_string(),
        })
    }

    /// Replaces `DIR/unrm.prom` with `text` (blocking: file system calls).
    pub fn write(&self, text: &str) -> Result<()> {
        let dir = self.open().map_err(|err| anyhow::anyhow!("{err}"))?;
        let (temp, file) = create_temp(&dir)?;
        let written = (|| -> Result<()> {
            // The daemon's umask keeps what it creates to root; node_exporter runs as prometheus.
            fchmod(&file, Mode::from_raw_mode(0o644))?;
            std::fs::File::from(file).write_all(text.as_bytes())?;
            renameat(&dir, &temp, &dir, NAME).with_context(|| format!("renaming it over {NAME}"))?;
            Ok(())
        })();
        if written.is_err() {
            let _ = unlinkat(&dir, &temp, AtFlags::empty());
        }
        written
    }
}

/// A new file in `dir` under a name nobody else chose.
fn create_temp(dir: &OwnedFd) -> Result<(String, OwnedFd)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        let nonce = NEXT.fetch_add(1, Ordering::Relaxed) ^ crate::clock::monotonic_ns();
        let name = format!(".{NAME}.{}.{nonce:x}.tmp", std::process::id());
        match openat(dir, &name, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => return Ok((name, fd)),
            Err(Errno::EXIST) if tries < 8 => tries += 1,
            Err(err) => return Err(std::io::Error::from(err)).context("creating a new file"),
        }
    }
}

/// Writes the metrics now, then every `every`, until the daemon stops.
pub async fn keep_writing(dir: Arc<Dir>, source: Arc<Source>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        write_once(&dir, &source).await;
    }
}

/// One write, on a blocking thread; a failure is logged once until a write succeeds again.
pub async fn write_once(dir: &Arc<Dir>, source: &Source) {
    let written = match source.status().await {
        Ok(status) => {
            let text = render::render(&families(&status), render::Format::Text);
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || dir.write(&text))
                .await
                .unwrap_or_else(|err| Err(anyhow::anyhow!("the writer panicked: {err}")))
        }
        Err(err) => Err(err),
    };
    match written {
        Ok(()) => {
            if dir.failing.swap(false, Ordering::Relaxed) {
                log::info!("metrics written to {} again", dir.target().display());
            }
        }
        Err(err) => {
            if !dir.failing.swap(true, Ordering::Relaxed) {
                log::warn!("metrics not written to {}: {err:#}", dir.target().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn writes_replace_the_file_whole_and_leave_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::check(tmp.path()).unwrap();
        dir.write("a 1\n").unwrap();
        dir.write("b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(tmp.path().join(NAME)).unwrap(), "b 2\n");
        let mode = std::fs::metadata(tmp.path().join(NAME)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [NAME]);
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let dir_path = tmp.path().join("textfiles");
        std::fs::create_dir(&dir_path).unwrap();
        std::os::unix::fs::symlink(&victim, dir_path.join(NAME)).unwrap();
        let dir = Dir::check(&dir_path).unwrap();
        dir.write("x 1\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        let meta = std::fs::symlink_metadata(dir_path.join(NAME)).unwrap();
        assert!(meta.is_file() && meta.nlink() == 1);
    }

    #[test]
    fn bad_directories_are_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, "").unwrap();
        let err = Dir::check(&file).err().unwrap().to_string();
        assert!(err.contains("not a directory"), "{err}");
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path(), &link).unwrap();
        let err = Dir::check(&link).err().unwrap().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let err = Dir::check(&tmp.path().join("missing")).err().unwrap().to_string();
        assert!(err.contains("No such file"), "{err}");
        assert!(Dir::check(Path::new("relative")).is_err());
    }
}
