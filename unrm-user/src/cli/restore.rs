//! `unrm restore`: the daemon hands over a descriptor of the content (the
//! live pin, or the stored copy); this process, with the caller's own
//! rights, writes it out. The new file is assembled under a temporary name
//! in the destination directory, checked, synced, and only then renamed to
//! its final name: a restore never leaves a half-written file under the
//! name, and never follows a symlink planted at the destination.

use std::{
    ffi::OsStr,
    fs::File,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use rustix::{
    fs::{
        AtFlags, CWD, Mode, OFlags, RenameFlags, ResolveFlags, Timespec, Timestamps, fchmod, fchown, fsync,
        futimens, openat, openat2, renameat_with, statat, unlinkat,
    },
    io::Errno,
    process::{Gid, Uid},
};

use super::{format::clean, privilege::AsUser};
use crate::{
    access::Parent,
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
    let Response::Opened { record, mut meta } = response else { bail!("unexpected answer from the daemon") };
    let content = File::from(fd.context("the daemon sent no content")?);
    let original = PathBuf::from(OsStr::from_bytes(&meta.path));
    let where_it_was = to.is_none();
    if where_it_was && !record.path_resolved {
        bail!(
            "record {id} was deleted at {}, a path unrm could not verify on this host (deleted in another \
             mount namespace, or named through a symbolic link); restore it elsewhere with --to",
            clean(&original.to_string_lossy())
        );
    }
    let root = rustix::process::geteuid().is_root();
    if root && record.uid != Some(0) {
        // Root may set what the file's owner never could (file
        // capabilities, trusted.* and security labels): for anyone else's
        // file, only what its owner could have set goes back.
        xattrs::keep_owners_own(&mut meta.xattrs);
    }
    // A recorded path is the deleter's say, and root may write anywhere:
    // then no symbolic link on the way is followed.
    let strict = where_it_was || root;
    let target = destination(&original, to, strict)?;
    // Root putting another user's file back where it was writes with that
    // user's rights (--force: with root's).
    let owner = record.uid.filter(|&uid| root && where_it_was && !force && uid != 0);
    let as_owner = owner.map(|uid| AsUser::become_(uid, record.gid.unwrap_or(uid))).transpose()?;
    // Where it was means into the very directory it was deleted from: not
    // one someone made again at that path since.
    let home = match (where_it_was, meta.parent, record.dev) {
        (false, ..) => None,
        (true, Some(parent), Some(dev)) => Some((parent, dev)),
        (true, ..) => {
            bail!("unrm does not know which directory record {id} was deleted from; restore it with --to")
        }
    };
    let written = write(&content, &target, &record, &meta, Options { force, strict, home });
    drop(as_owner);
    let size = match (written, owner) {
        (Err(err), Some(uid)) if is_permission(&err) => bail!(
            "{err:#}: uid {uid}, the file's owner, may not write there (unrm restores another user's file \
             with its owner's rights); use --to, or --force to write it there as root"
        ),
        (written, _) => written?,
    };
    println!("restored record {id} to {} ({size} bytes)", clean(&target.to_string_lossy()));
    Ok(())
}

fn is_permission(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<Errno>().is_some_and(|e| matches!(*e, Errno::ACCESS | Errno::PERM))
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    })
}

fn destination(original: &Path, to: Option<PathBuf>, strict: bool) -> Result<PathBuf> {
    let name = original.file_name().context("the record's path names no file")?;
    Ok(match to {
        Some(dir) if open_dir(&dir, strict).is_ok() => dir.join(name),
        Some(path) => path,
        None => original.to_path_buf(),
    })
}

/// The directory at `path`, resolved without following a symbolic link
/// anywhere on the way when `strict`.
fn open_dir(path: &Path, strict: bool) -> Result<OwnedFd> {
    let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve =
        if strict { ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS } else { ResolveFlags::empty() };
    openat2(CWD, path, how, Mode::empty(), resolve).map_err(|err| {
        let at = clean(&path.to_string_lossy()).into_owned();
        match err {
            Errno::LOOP if strict => anyhow::anyhow!(
                "a symbolic link is on the way to {at}; unrm follows none when restoring to a recorded path \
                 or as root (give the path without it, with --to)"
            ),
            Errno::NOENT => anyhow::anyhow!("directory {at} does not exist"),
            Errno::NOTDIR => anyhow::anyhow!("{at} is not a directory"),
            err => anyhow::Error::new(err).context(format!("opening directory {at}")),
        }
    })
}

/// How to write a restored file.
struct Options {
    /// Replace what is there.
    force: bool,
    /// Follow no symbolic link on the way.
    strict: bool,
    /// The directory it must go into (the one it was deleted from), and
    /// its filesystem.
    home: Option<(Parent, u64)>,
}

fn write(content: &File, target: &Path, record: &Record, meta: &RestoreMeta, how: Options) -> Result<u64> {
    let Options { force, strict, home } = how;
    let shown = clean(&target.to_string_lossy()).into_owned();
    let name = target.file_name().with_context(|| format!("{shown} names no file"))?;
    let dir_path = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = open_dir(dir_path, strict).with_context(|| format!("cannot restore to {shown}"))?;
    if let Some((parent, dev)) = home {
        let now = rustix::fs::fstat(&dir)?;
        if now.st_dev != dev || !parent.is(now.st_ino, now.st_uid, now.st_gid) {
            bail!(
                "{} is not the directory record {} was deleted from (it was removed and made again, \
                 by uid {} now); restore it with --to",
                clean(&dir_path.to_string_lossy()),
                record.id,
                now.st_uid
            );
        }
    }
    if !force && statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
        bail!("{shown} already exists; use --force to replace it");
    }
    let temp = format!(".{}.unrm-{}", name.to_string_lossy(), std::process::id());
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = openat(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))
        .map(File::from)
        .with_context(|| format!("creating a file in {}", clean(&dir_path.to_string_lossy())))?;
    let result = fill(content, &file, record, meta).and_then(|size| {
        let how = if force { RenameFlags::empty() } else { RenameFlags::NOREPLACE };
        match renameat_with(&dir, temp.as_str(), &dir, name, how) {
            Ok(()) => Ok(size),
            Err(Errno::EXIST) => bail!("{shown} already exists; use --force to replace it"),
            Err(err) => Err(err).with_context(|| format!("renaming into {shown}")),
        }
    });
    if result.is_err() {
        let _ = unlinkat(&dir, temp.as_str(), AtFlags::empty());
    } else if let Ok(listing) =
        openat(&dir, ".", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    {
        // Make the new name durable (a directory one may write but not read
        // cannot be synced, and the file itself already is).
        fsync(&listing)?;
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
        eprintln!("unrm: note: could not restore {} (not permitted here)", clean(&refused.join(", ")));
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
        assert_eq!(destination(original, None, true).unwrap(), original);
        let into = destination(original, Some(dir.path().into()), true).unwrap();
        assert_eq!(into, dir.path().join("notes.txt"));
        let file = dir.path().join("other");
        assert_eq!(destination(original, Some(file.clone()), true).unwrap(), file);
        assert!(destination(Path::new("/"), None, true).is_err());
        // A directory reached through a link is one only when links are followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        assert_eq!(destination(original, Some(link.clone()), false).unwrap(), link.join("notes.txt"));
        assert_eq!(destination(original, Some(link.clone()), true).unwrap(), link);
        let err = format!("{:#}", open_dir(&link, true).unwrap_err());
        assert!(err.contains("symbolic link"), "{err}");
    }
}
