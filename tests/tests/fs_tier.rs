//! The fs tier (`--tier fs`): deletions seen by ext4's own tracepoints, with
//! no syscall tracepoint attached. Same records, same statuses, same CLI as
//! the tracepoint tier. Other filesystems are reported by fanotify where
//! they have file handles unrm can trust (tmpfs, xfs), else by snapshots.

use std::{ffi::CString, fs, os::fd::AsRawFd, path::Path};

use unrm_tests::{Daemon, Fuse, Holder, Mount, content, rm};

fn fs_daemon(extra: &[&str]) -> Daemon {
    let mut args = vec!["--tier", "fs"];
    args.extend_from_slice(extra);
    Daemon::start_in(tempfile::tempdir().unwrap(), &args)
}

#[test]
fn held_unheld_and_renamed_over_on_ext4() {
    let fs = Mount::ext4();
    let daemon = fs_daemon(&[]);
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["probes"]["tier"], "fs");

    let data = content("fs tier");
    let held = fs.file("held.bin", &data);
    let holder = Holder::fd(&held);
    let rm_pid = rm(&held, None);
    let rec = daemon.wait_record(&held, "held");
    assert_eq!(rec["deleted_by"]["pid"], rm_pid);
    assert_eq!(rec["deleted_by"]["comm"], "rm");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);

    let loose = fs.file("loose.txt", b"nobody");
    rm(&loose, None);
    let rec = daemon.wait_record(&loose, "unheld");
    assert_eq!(rec["size"], 6);

    let target = fs.file("config", b"old");
    let new = fs.file("config.new", b"new");
    let config_holder = Holder::fd(&target);
    fs::rename(&new, &target).unwrap();
    let rec = daemon.wait_record(&target, "held");
    assert_eq!(rec["op"], "rename");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("old")), b"old");

    let unheld_target = fs.file("plain", b"1");
    fs::rename(fs.file("plain.new", b"2"), &unheld_target).unwrap();
    daemon.wait_record(&unheld_target, "unheld");
    drop((holder, config_holder));
}

#[test]
fn paths_are_absolute_whatever_the_caller_named() {
    let fs = Mount::ext4();
    let dir = fs.path.join("a/b");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("by-cwd"), b"1").unwrap();
    fs::write(dir.join("by-dirfd"), b"2").unwrap();
    let daemon = fs_daemon(&[]);
    rm(Path::new("../b/./by-cwd"), Some(&dir));
    daemon.wait_record(&dir.join("by-cwd"), "unheld");
    let dirfd = fs::File::open(fs.path.join("a")).unwrap();
    let name = CString::new("b/by-dirfd").unwrap();
    // SAFETY: a valid directory fd and a NUL-terminated name.
    assert_eq!(unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) }, 0);
    let rec = daemon.wait_record(&dir.join("by-dirfd"), "unheld");
    assert_eq!(rec["deleted_by"]["pid"], std::process::id());
}

#[test]
fn written_after_unlink_is_captured() {
    let fs = Mount::ext4();
    let path = fs.file("log", b"before");
    let daemon = fs_daemon(&[]);
    let mut holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");
    holder.append(" and after");
    holder.exit();
    let rec = daemon.wait_record(&path, "captured");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), b"before and after");
}

/// Filesystems without ext4's hooks are reported by fanotify: each
/// deletion names the deleted inode's handle, and the reader pins the file
/// by it before anything else (on tmpfs too, which opens a handle only for
/// an inode whose handle was asked for: fanotify asked, in the deleter's
/// call). A deletion nothing held is recorded as unheld, by its path.
#[test]
fn other_filesystems_are_reported_by_fanotify_and_pinned_by_handle() {
    let tmpfs = Mount::tmpfs();
    let xfs = Mount::image("xfs", 300 << 20).expect("mkfs.xfs (cargo xtask test installs xfsprogs)");
    let daemon = fs_daemon(&[]);
    let fast_pins = || daemon.status()["counters"]["fast_pins"].as_u64().unwrap();
    for fs in [&tmpfs, &xfs] {
        let dir = fs.path.join("sub");
        fs::create_dir(&dir).unwrap();
        let data = content(&fs.path.to_string_lossy());
        let (held, loose) = (dir.join("held.bin"), fs.file("loose", b"nobody"));
        fs::write(&held, &data).unwrap();
        let holder = Holder::fd(&held);
        // Anchors are opened as filesystems appear: the first deletion may
        // come before this one's, and is then left to snapshots.
        let mut tries = 0;
        unrm_tests::wait_until("the filesystem's anchor", || {
            tries += 1;
            let probe = fs.file(&format!("probe{tries}"), b"x");
            let probe_holder = Holder::fd(&probe);
            let before = fast_pins();
            rm(&probe, None);
            daemon.wait_record(&probe, "held");
            probe_holder.exit();
            // Settled: no snapshot still running to find the next one first.
            daemon.wait_record(&probe, "captured");
            fast_pins() > before
        });
        rm(&loose, None);
        let before = fast_pins();
        let rm_pid = rm(&held, None);
        let rec = daemon.wait_record(&held, "held");
        assert_eq!((rec["op"].as_str(), fast_pins() - before), (Some("unlink"), 1), "{rec}");
        assert_eq!(rec["deleted_by"]["pid"], rm_pid);
        holder.exit();
        let rec = daemon.wait_record(&held, "captured");
        assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);
        let rec = daemon.wait_record(&loose, "unheld");
        assert_eq!(rec["op"], "unlink", "{rec}");
    }
}

/// A filesystem fanotify cannot report on (FUSE: no file handles) is
/// reached by snapshots.
#[test]
fn unhooked_filesystems_are_reached_by_snapshots() {
    let source = Mount::tmpfs();
    let fuse = Fuse::mirror(&source.path);
    let data = content("fuse");
    let path = fuse.point.join("held");
    fs::write(&path, &data).unwrap();
    let daemon = fs_daemon(&["--rescan-interval", "100ms"]);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    assert_eq!(rec["op"], "scan", "no hook saw it; a snapshot did");
    let to = tempfile::tempdir().unwrap();
    assert_eq!(daemon.restore_to(&rec["id"], &to.path().join("back")), data);
    drop(holder);
}
