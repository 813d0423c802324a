//! Which trees may be protected, and the trees users asked for, kept
//! across restarts.
//!
//! Holding references on a filesystem makes a plain `umount` of it fail
//! with `EBUSY`, and a network or FUSE filesystem may make the walker wait
//! on a server: such filesystems, and removable disks, are protected only
//! when root asks explicitly (`--any-fs`).

use std::{
    io::Write,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A tree a user asked for with `unrm protect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub path: PathBuf,
    pub uid: u32,
    #[serde(default)]
    pub any_fs: bool,
}

/// `statfs` magic numbers of filesystems whose files live elsewhere
/// (network) or behind a userspace server (FUSE).
const REMOTE: &[(i64, &str)] = &[
    (0x6969, "nfs"),
    (0x517b, "smb"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x6573_5546, "fuse"),
    (0x00c3_6400, "ceph"),
    (0x5346_414f, "afs"),
    (0x6b41_4653, "afs"),
    (0x0102_1997, "9p"),
    (0x7375_7245, "coda"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
];

/// Why the filesystem `dir` is on is not protected unless asked
/// explicitly, if it is one of those: network, FUSE or removable.
pub fn unsafe_filesystem(dir: impl AsFd, dev: u64) -> Option<String> {
    let fs = rustix::fs::fstatfs(dir).ok()?;
    if let Some((_, name)) = REMOTE.iter().find(|(magic, _)| *magic == fs.f_type as i64) {
        return Some(format!("a {name} filesystem (network or userspace)"));
    }
    removable(dev).then(|| "on a removable disk".into())
}

/// Whether the block device `dev` (or the disk it is a partition of) is
/// removable or on USB.
fn removable(dev: u64) -> bool {
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev)));
    let Ok(real) = std::fs::canonicalize(&sys) else { return false };
    let flag = |dir: &Path| std::fs::read_to_string(dir.join("removable")).is_ok_and(|v| v.trim() == "1");
    real.to_string_lossy().contains("/usb") || flag(&real) || real.parent().is_some_and(flag)
}

/// The file under the state directory that remembers asked-for trees.
pub struct Registry {
    path: PathBuf,
}

impl Registry {
    pub fn new(state_dir: &Path) -> Self {
        Registry { path: state_dir.join("protected.json") }
    }

    pub fn load(&self) -> Vec<Asked> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                log::error!("{}: {err}; no protected tree from it", self.path.display());
                Vec::new()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                log::error!("{}: {err}; no protected tree from it", self.path.display());
                Vec::new()
            }
        }
    }

    /// Written whole under a temporary name, synced, renamed into place.
    pub fn save(&self, trees: &[Asked]) -> Result<()> {
        let temp = self.path.with_extension("json.tmp");
        let mut file =
            std::fs::File::create(&temp).with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(&serde_json::to_vec_pretty(trees)?)?;
        file.sync_all()?;
        std::fs::rename(&temp, &self.path).with_context(|| format!("renaming into {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_trees_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path());
        assert!(registry.load().is_empty());
        let trees = vec![Asked { path: "/home/a/src".into(), uid: 1000, any_fs: false }];
        registry.save(&trees).unwrap();
        assert_eq!(registry.load(), trees);
    }

    #[test]
    fn a_local_directory_is_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::open(dir.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let dev = file.metadata().unwrap().dev();
        assert_eq!(unsafe_filesystem(&file, dev), None);
    }
}
