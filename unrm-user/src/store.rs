//! The store: captured content, one file per record, under the state
//! directory. Root-only (0700 directories, 0600 files). A capture is written
//! to a temporary name, fsynced, renamed into place and the directory
//! fsynced; only then may the index call it captured. Temporaries left by a
//! crash are removed at start.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    os::{
        fd::{AsFd, BorrowedFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::copy;

pub struct Store {
    dir: PathBuf,
}

/// A capture that is durable in the store.
pub struct Stored {
    pub size: u64,
    pub method: copy::Method,
}

impl Store {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("store");
        for d in [state_dir, &dir] {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
        }
        let store = Self { dir };
        store.remove_temporaries()?;
        Ok(store)
    }

    fn final_path(&self, id: i64) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn temp_path(&self, id: i64) -> PathBuf {
        self.dir.join(format!(".{id}.partial"))
    }

    fn remove_temporaries(&self) -> Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".partial") {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Copies `size` bytes of `src` into the store as record `id`.
    pub fn capture(&self, id: i64, src: BorrowedFd, size: u64) -> Result<Stored> {
        let temp = self.temp_path(id);
        let result = self.write(id, &temp, src, size);
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn write(&self, id: i64, temp: &Path, src: BorrowedFd, size: u64) -> Result<Stored> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        let method = copy::copy(src, file.as_fd(), size).context("copying into the store")?;
        file.sync_all().context("syncing the capture")?;
        fs::rename(temp, self.final_path(id))?;
        File::open(&self.dir)?.sync_all()?;
        Ok(Stored { size, method })
    }

    /// BLAKE3 of a capture, computed after the fact so that a capture (a
    /// reflink especially) does not wait for a pass over every byte.
    pub fn checksum(&self, id: i64) -> Result<String> {
        Ok(copy::checksum(self.open_capture(id)?)?)
    }

    /// Whether a complete capture for `id` exists (it was renamed into place).
    pub fn has(&self, id: i64) -> bool {
        self.final_path(id).is_file()
    }

    pub fn open_capture(&self, id: i64) -> Result<File> {
        let path = self.final_path(id);
        File::open(&path).with_context(|| format!("opening {}", path.display()))
    }

    /// Removes a capture (evicted or expired); a missing one is fine.
    pub fn remove(&self, id: i64) -> Result<()> {
        match fs::remove_file(self.final_path(id)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
            _ => Ok(()),
        }
    }

    /// Size and available bytes of the store's filesystem.
    pub fn space(&self) -> Result<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.dir)?;
        Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
    }

    /// Bytes on disk held by captures.
    pub fn bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn capture_is_all_or_nothing_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let src_path = dir.path().join("src");
        File::create(&src_path).unwrap().write_all(b"payload").unwrap();
        let src = File::open(&src_path).unwrap();
        let stored = store.capture(1, src.as_fd(), 7).unwrap();
        assert_eq!(stored.size, 7);
        assert!(store.has(1));
        assert_eq!(fs::read(state.join("store/1")).unwrap(), b"payload");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("store")), 0o700);
        assert_eq!(mode(&state.join("store/1")), 0o600);

        // A leftover temporary from a crash is gone after reopening, and a
        // failed capture leaves no file behind.
        fs::write(state.join("store/.2.partial"), b"half").unwrap();
        let store = Store::open(&state).unwrap();
        assert!(!state.join("store/.2.partial").exists());
        assert!(!store.has(2));
        let dir_fd = File::open(dir.path()).unwrap();
        assert!(store.capture(3, dir_fd.as_fd(), 10).is_err());
        assert!(!store.has(3));
        assert!(!state.join("store/.3.partial").exists());
    }
}
