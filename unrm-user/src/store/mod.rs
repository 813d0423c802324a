//! The store: captured content, one file per record, in the state
//! directory's `store/`. Root-only (0700 directories, 0600 files), and every
//! file in it is reached through the directory's descriptor without
//! following symbolic links. A capture is written to a temporary name,
//! fsynced, renamed into place and the directory fsynced; only then may the
//! index call it captured. Temporaries left by a crash are removed at start.

mod state;
pub mod usage;

use std::{
    fs::File,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rustix::{
    fs::{AtFlags, FileType, Mode, OFlags, fstatvfs, fsync, mkdirat, openat, renameat, statat, unlinkat},
    io::Errno,
};
pub use state::StateDir;

use crate::copy;

pub struct Store {
    dir: OwnedFd,
    /// For messages.
    path: PathBuf,
}

/// A capture that is durable in the store.
pub struct Stored {
    pub size: u64,
    pub method: copy::Method,
}

impl Store {
    pub fn open(state: &StateDir) -> Result<Self> {
        match mkdirat(&state.fd, "store", Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(err) => return Err(err).context("creating the store directory"),
        }
        let dir = state::open_private_dir(&state.fd, Path::new("store"))
            .with_context(|| format!("the store in {}", state.path.display()))?;
        let store = Self { dir, path: state.path.join("store") };
        store.remove_temporaries()?;
        Ok(store)
    }

    fn temp_name(id: i64) -> String {
        format!(".{id}.partial")
    }

    /// Names in the store: captures by id, and anything else.
    fn names(&self) -> Result<Vec<String>> {
        let dir =
            openat(&self.dir, ".", OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::new(dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn remove_temporaries(&self) -> Result<()> {
        for name in self.names()?.into_iter().filter(|n| n.ends_with(".partial")) {
            unlinkat(&self.dir, name.as_str(), AtFlags::empty())?;
        }
        Ok(())
    }

    /// The captures in the store, by id.
    pub fn ids(&self) -> Result<Vec<i64>> {
        Ok(self.names()?.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Copies `size` bytes of `src` into the store as record `id`, durably
    /// (the daemon batches `write` and `commit` instead).
    #[cfg(test)]
    pub fn capture(&self, id: i64, src: BorrowedFd, size: u64) -> Result<Stored> {
        let stored = self.write(id, src, size)?;
        self.commit(&[id]).remove(0)?;
        Ok(stored)
    }

    /// Copies `size` bytes of `src` under record `id`'s temporary name; not
    /// a capture until `commit`: several are written, then made durable
    /// together (one journal commit serves them all, not one each).
    pub fn write(&self, id: i64, src: BorrowedFd, size: u64) -> Result<Stored> {
        let temp = Self::temp_name(id);
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let result = openat(&self.dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))
            .with_context(|| format!("creating {}", self.path.join(&temp).display()))
            .and_then(|file| copy::copy(src, file.as_fd(), size).context("copying into the store"));
        match result {
            Ok(method) => Ok(Stored { size, method }),
            Err(err) => {
                let _ = unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
                Err(err)
            }
        }
    }

    /// Makes what `write` wrote for `ids` durable captures: each synced,
    /// renamed into place, then the directory synced once. One result per
    /// id; a failed one leaves no file behind.
    pub fn commit(&self, ids: &[i64]) -> Vec<Result<()>> {
        let mut results: Vec<Result<()>> = ids.iter().map(|&id| self.sync_and_rename(id)).collect();
        if let Err(err) = fsync(&self.dir) {
            for (id, result) in ids.iter().zip(&mut results) {
                if result.is_ok() {
                    let _ = unlinkat(&self.dir, id.to_string().as_str(), AtFlags::empty());
                    *result = Err(anyhow::anyhow!("syncing the store's directory: {err}"));
                }
            }
        }
        results
    }

    fn sync_and_rename(&self, id: i64) -> Result<()> {
        let temp = Self::temp_name(id);
        let result = (|| -> Result<()> {
            let file = openat(
                &self.dir,
                temp.as_str(),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            fsync(&file).context("syncing the capture")?;
            renameat(&self.dir, temp.as_str(), &self.dir, id.to_string().as_str())?;
            Ok(())
        })();
        if result.is_err() {
            let _ = unlinkat(&self.dir, temp.as_str(), AtFlags::empty());
        }
        result
    }

    /// BLAKE3 of a capture, computed after the fact so that a capture (a
    /// reflink especially) does not wait for a pass over every byte.
    pub fn checksum(&self, id: i64) -> Result<String> {
        Ok(copy::checksum(self.open_capture(id)?)?)
    }

    /// Whether a complete capture for `id` exists (it was renamed into place).
    pub fn has(&self, id: i64) -> bool {
        statat(&self.dir, id.to_string().as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
    }

    pub fn open_capture(&self, id: i64) -> Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&self.dir, id.to_string().as_str(), flags, Mode::empty())
            .with_context(|| format!("opening {}", self.path.join(id.to_string()).display()))?;
        Ok(File::from(fd))
    }

    /// Removes a capture (evicted or expired); a missing one is fine. Its
    /// content is cut to nothing first: a client may still hold it open (a
    /// restore hands out a descriptor), and its blocks must go now, not when
    /// that client lets go (a restore in flight then fails its checksum).
    pub fn remove(&self, id: i64) -> Result<()> {
        let name = id.to_string();
        let flags = OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if let Ok(file) = openat(&self.dir, name.as_str(), flags, Mode::empty()) {
            rustix::fs::ftruncate(&file, 0)?;
        }
        match unlinkat(&self.dir, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Size and available bytes of the store's filesystem.
    pub fn space(&self) -> Result<(u64, u64)> {
        let st = fstatvfs(&self.dir)?;
        Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
    }

    /// What capture `id` costs on disk (see `usage`).
    pub fn cost(&self, id: i64) -> Result<usage::Cost> {
        Ok(usage::Cost::of(self.open_capture(id)?.as_fd())?)
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::fs::PermissionsExt};

    use super::*;

    #[test]
    fn capture_is_all_or_nothing_and_private() {
        if !rustix::process::geteuid().is_root() {
            return; // the state directory must be root's
        }
        let dir = tempfile::tempdir().unwrap();
        let state_path = dir.path().join("state");
        let store = Store::open(&StateDir::open(&state_path).unwrap()).unwrap();
        let src_path = dir.path().join("src");
        File::create(&src_path).unwrap().write_all(b"payload").unwrap();
        let src = File::open(&src_path).unwrap();
        let stored = store.capture(1, src.as_fd(), 7).unwrap();
        assert_eq!(stored.size, 7);
        assert!(store.has(1));
        assert_eq!(store.ids().unwrap(), [1]);
        assert_eq!(std::fs::read(state_path.join("store/1")).unwrap(), b"payload");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state_path), 0o700);
        assert_eq!(mode(&state_path.join("store")), 0o700);
        assert_eq!(mode(&state_path.join("store/1")), 0o600);
        assert!(store.cost(1).unwrap().exclusive > 0);

        // A leftover temporary from a crash is gone after reopening, and a
        // failed capture leaves no file behind.
        std::fs::write(state_path.join("store/.2.partial"), b"half").unwrap();
        let store = Store::open(&StateDir::open(&state_path).unwrap()).unwrap();
        assert!(!state_path.join("store/.2.partial").exists());
        assert!(!store.has(2));
        let dir_fd = File::open(dir.path()).unwrap();
        assert!(store.capture(3, dir_fd.as_fd(), 10).is_err());
        assert!(!store.has(3));
        assert!(!state_path.join("store/.3.partial").exists());

        // A capture someone still has open gives its blocks back when it goes.
        let held = store.open_capture(1).unwrap();
        store.remove(1).unwrap();
        assert!(!store.has(1));
        assert_eq!(held.metadata().unwrap().len(), 0, "an evicted capture kept its content");

        // A symbolic link planted in the store is never followed.
        std::os::unix::fs::symlink(&src_path, state_path.join("store/4")).unwrap();
        assert!(!store.has(4));
        assert!(store.open_capture(4).is_err());
    }
}
