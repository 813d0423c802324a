//! The state directory: where the index and the captures live. It holds
//! every user's deleted files, so it must be root's alone, and so must the
//! way to it: a directory an ordinary user created first (say under /tmp),
//! or one reached through a directory a user may rename or replace, would
//! let that user read the store or aim root's writes. unrm refuses to start
//! on one, with one line saying why.

use std::{
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, CWD, FileType, Mode, OFlags, Stat, fstat, mkdirat, openat, statat};

/// The state directory, validated and held open.
pub struct StateDir {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

impl StateDir {
    /// Opens `path`, creating it (0700) if missing.
    pub fn open(path: &Path) -> Result<Self> {
        let path =
            std::path::absolute(path).with_context(|| format!("state directory {}", path.display()))?;
        let parent = path.parent().context("the state directory cannot be /")?;
        let parent = parent
            .canonicalize()
            .with_context(|| format!("state directory {}: its parent", path.display()))?;
        for dir in parent.ancestors() {
            let st = statat(CWD, dir, AtFlags::SYMLINK_NOFOLLOW)
                .with_context(|| format!("state directory {}: {}", path.display(), dir.display()))?;
            if let Err(why) = safe_ancestor(&st) {
                bail!(
                    "state directory {}: {} {why}, so another user could replace what is inside; \
                     choose a directory on a root-only path",
                    path.display(),
                    dir.display()
                );
            }
        }
        let path = parent.join(path.file_name().context("the state directory needs a name")?);
        match mkdirat(CWD, &path, Mode::from_raw_mode(0o700)) {
            Ok(()) => log::debug!("created state directory {}", path.display()),
            Err(rustix::io::Errno::EXIST) => {}
            Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
        }
        let fd =
            open_private_dir(CWD, &path).with_context(|| format!("state directory {}", path.display()))?;
        Ok(StateDir { path, fd })
    }
}

/// Opens the directory `name` under `dir` without following a symbolic
/// link, and checks that it is root's alone (errors say what is wrong with
/// it; the caller names it).
pub fn open_private_dir(dir: impl AsFd, name: &Path) -> Result<OwnedFd> {
    let flags = OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC;
    let fd = openat(dir, name, flags, Mode::empty()).map_err(|err| match err {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            anyhow::anyhow!("not a directory (a symbolic link?)")
        }
        err => anyhow::anyhow!("cannot open it: {err}"),
    })?;
    let st = fstat(&fd)?;
    if st.st_uid != 0 {
        bail!("owned by uid {}, not root; refusing to keep other users' files there", st.st_uid);
    }
    if st.st_mode & 0o077 != 0 {
        bail!("mode {:04o}; it must be root's alone (chmod 700)", st.st_mode & 0o7777);
    }
    Ok(fd)
}

/// A directory on the way to the state directory must be root's and
/// writable by nobody else, unless sticky (`/tmp`), where nobody else may
/// rename or remove what root put there.
fn safe_ancestor(st: &Stat) -> Result<(), String> {
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err("is not a directory".into());
    }
    if st.st_uid != 0 {
        return Err(format!("is owned by uid {}", st.st_uid));
    }
    let sticky = st.st_mode & 0o1000 != 0;
    if st.st_mode & 0o022 != 0 && !sticky {
        return Err(format!("is writable by others (mode {:04o})", st.st_mode & 0o7777));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, chown};

    use super::*;

    #[test]
    fn private_directories_only() {
        if !rustix::process::geteuid().is_root() {
            return; // the checks want root's own directories
        }
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        assert_eq!(fstat(&state.fd).unwrap().st_mode & 0o777, 0o700);
        // Opening it again finds it as it is.
        StateDir::open(&dir.path().join("state")).unwrap();

        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = format!("{:#}", StateDir::open(&open).err().unwrap());
        assert!(err.contains("mode 0755"), "{err}");

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("state"), &link).unwrap();
        assert!(StateDir::open(&link).is_err(), "a symbolic link is not taken");

        // Under a directory anyone may write to (not sticky).
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = format!("{:#}", StateDir::open(&shared.join("state")).err().unwrap());
        assert!(err.contains("writable by others"), "{err}");

        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(&theirs, Some(65534), None).unwrap();
        let err = format!("{:#}", StateDir::open(&theirs).err().unwrap());
        assert!(err.contains("uid 65534"), "{err}");
    }
}
