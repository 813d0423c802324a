//! `unrm restore`: the daemon hands over a descriptor of the content (the
//! live pin, or the stored copy); this process, with the caller's own
//! rights, writes it out. The new file is assembled under a temporary name
//! in the destination directory, checked, synced, and only then renamed to
//! its final name: a restore never leaves a half-written file under the
//! name, and never follows a symlink planted at the destination.

use std::{
    ffi::OsStr,
    fs::{File, OpenOptions},
    os::{
        fd::AsFd,
        unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rustix::{
    fs::{CWD, RenameFlags, Timespec, Timestamps, fchmod, fchown, futimens, renameat_with},
    io::Errno,
    process::{Gid, Uid},
};

use crate::{
    api::{
        client::Client,
        proto::{Request, Response},
    },
    copy,
    record::{Record, RestoreMeta, Status},
    xattrs,
};

pub fn run(socket: &Path, id: i64, to: Option<PathBuf>, force: bool) -> Result<()> {
    let (response, fd) = Client::connect(socket)?.call(&Request::Open { id })?;
    let Response::Opened { record, meta } = response else { bail!("unexpected answer from the daemon") };
    let content = File::from(fd.context("the daemon sent no content")?);
    let original = PathBuf::from(OsStr::from_bytes(&meta.path));
    let target = destination(&original, to)?;
    let size = write(&content, &target, &record, &meta, force)?;
    println!("restored record {id} to {} ({size} bytes)", target.display());
    Ok(())
}

fn destination(original: &Path, to: Option<PathBuf>) -> Result<PathBuf> {
    let name = original.file_name().context("the record's path names no file")?;
    Ok(match to {
        Some(dir) if dir.is_dir() => dir.join(name),
        Some(path) => path,
        None => original.to_path_buf(),
    })
}

fn write(content: &File, target: &Path, record: &Record, meta: &RestoreMeta, force: bool) -> Result<u64> {
    let name = target.file_name().with_context(|| format!("{} names no file", target.display()))?;
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot restore to {}: directory {} does not exist", target.display(), dir.display());
    }
    if !force && target.symlink_metadata().is_ok() {
        bail!("{} already exists; use --force to replace it", target.display());
    }
    let temp = dir.join(format!(".{}.unrm-{}", name.to_string_lossy(), std::process::id()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    let result = fill(content, &file, record, meta).and_then(|size| {
        let flags = if force { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        match renameat_with(CWD, &temp, CWD, target, flags) {
            Ok(()) => Ok(size),
            Err(Errno::EXIST) => bail!("{} already exists; use --force to replace it", target.display()),
            Err(err) => Err(err).with_context(|| format!("renaming into {}", target.display())),
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    } else {
        File::open(dir)?.sync_all()?;
    }
    result
}

/// Content, checksum, owner, mode, extended attributes and times, then fsync.
fn fill(content: &File, file: &File, record: &Record, meta: &RestoreMeta) -> Result<u64> {
    let size = content.metadata()?.len();
    let bar = progress_bar(size);
    copy::copy_with_progress(content.as_fd(), file.as_fd(), size, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    })
    .context("copying the content")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // A capture's checksum is recorded shortly after the capture itself.
    if let (Status::Captured, Some(want)) = (record.status, &record.checksum) {
        let sum = copy::checksum(file)?;
        if *want != sum {
            bail!(
                "the stored copy of record {} does not match its checksum; nothing was restored",
                record.id
            );
        }
    }
    if let (Some(uid), Some(gid)) = (record.uid, record.gid) {
        // Only root may give a file away; anyone else keeps it as their own.
        match fchown(file, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))) {
            Ok(()) | Err(Errno::PERM) => {}
            Err(err) => return Err(err).context("setting the owner"),
        }
    }
    if let Some(mode) = record.mode {
        fchmod(file, rustix::fs::Mode::from_raw_mode(mode & 0o7777)).context("setting the mode")?;
    }
    // ACLs last: the access ACL is the whole truth about permissions.
    let refused = xattrs::write(file, &meta.xattrs);
    if !refused.is_empty() {
        eprintln!("unrm: note: could not restore {} (not permitted here)", refused.join(", "));
    }
    let ts = |ns: Option<i64>| match ns {
        Some(ns) => Timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) },
        None => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
    };
    futimens(file, &Timestamps { last_access: ts(meta.atime_ns), last_modification: ts(meta.mtime_ns) })
        .context("setting the times")?;
    file.sync_all().context("syncing the restored file")?;
    Ok(size)
}

/// A progress bar on a terminal, for copies long enough to want one.
fn progress_bar(size: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if size < 64 << 20 || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        let dir = tempfile::tempdir().unwrap();
        let original = Path::new("/home/a/notes.txt");
        assert_eq!(destination(original, None).unwrap(), original);
        assert_eq!(destination(original, Some(dir.path().into())).unwrap(), dir.path().join("notes.txt"));
        let file = dir.path().join("other");
        assert_eq!(destination(original, Some(file.clone())).unwrap(), file);
        assert!(destination(Path::new("/"), None).is_err());
    }
}
