//! The capture loop on the real kernel: a real daemon, real holders, real
//! filesystems. Every test deletes a file the way a user would and checks
//! what unrm recorded and what it brings back.

use std::{ffi::CString, fs, os::unix::fs::MetadataExt, path::Path};

use unrm_tests::{Daemon, Fuse, Holder, Mount, content, rm};

fn held_by_fd_is_restored(fs: Mount) {
    let data = content("fd");
    let path = fs.file("notes.bin", &data);
    let meta = fs::metadata(&path).unwrap();
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    let rm_pid = rm(&path, None);

    let rec = daemon.wait_record(&path, "held");
    assert_eq!(rec["deleted_by"]["pid"], rm_pid);
    assert_eq!(rec["deleted_by"]["comm"], "rm");
    assert_eq!(rec["deleted_by"]["uid"], 0);
    assert_eq!(rec["op"], "unlink");
    assert_eq!(rec["ino"], meta.ino());
    assert_eq!(rec["dev"], meta.dev());
    assert_eq!(rec["size"], data.len());
    let holders = rec["holders"].as_array().unwrap();
    assert!(holders.iter().any(|h| h["pid"] == holder.pid() && h["kind"] == "fd"), "{rec}");

    let back = fs.path.join("back.bin");
    assert_eq!(daemon.restore_to(&rec["id"], &back), data);
    assert_eq!(fs::metadata(&back).unwrap().mode(), meta.mode());
    drop(holder);
}

#[test]
fn held_by_fd_is_restored_on_ext4() {
    held_by_fd_is_restored(Mount::ext4());
}

#[test]
fn held_by_fd_is_restored_on_tmpfs() {
    held_by_fd_is_restored(Mount::tmpfs());
}

#[test]
fn held_only_through_mmap_is_restored() {
    let fs = Mount::ext4();
    let data = content("mmap");
    let path = fs.file("mapped.bin", &data);
    let daemon = Daemon::start();
    let holder = Holder::mmap(&path);
    rm(&path, None);

    let rec = daemon.wait_record(&path, "held");
    let holders = rec["holders"].as_array().unwrap();
    assert!(holders.iter().all(|h| h["kind"] == "mmap"), "the holder closed its fd: {rec}");
    assert!(holders.iter().any(|h| h["pid"] == holder.pid()));
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);
}

fn written_after_unlink_is_captured(fs: Mount) {
    let path = fs.file("log.txt", b"first line\n");
    let daemon = Daemon::start();
    let mut holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");

    holder.append("written after the unlink");
    holder.exit();
    let rec = daemon.wait_record(&path, "captured");
    let expected = b"first line\nwritten after the unlink";
    assert_eq!(rec["size"], expected.len());
    // The checksum is computed right after the capture, off its path.
    let checksum = daemon.wait_show(&rec["id"], |r| r["checksum"].is_string())["checksum"].clone();
    assert_eq!(checksum.as_str().unwrap().len(), 64, "BLAKE3 hex: {checksum}");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), expected);

    // The store is root's alone.
    let store = fs::metadata(daemon.state_dir.join("store")).unwrap();
    assert_eq!(store.mode() & 0o777, 0o700);
    let stored = daemon.state_dir.join("store").join(rec["id"].to_string());
    assert_eq!(fs::metadata(stored).unwrap().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(daemon.state_dir.join("index.sqlite")).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn written_after_unlink_is_captured_on_ext4() {
    written_after_unlink_is_captured(Mount::ext4());
}

#[test]
fn written_after_unlink_is_captured_on_tmpfs() {
    written_after_unlink_is_captured(Mount::tmpfs());
}

#[test]
fn unheld_deletion_is_recorded_with_path_and_deleter() {
    let ext4 = Mount::ext4();
    let tmpfs = Mount::tmpfs();
    let daemon = Daemon::start();
    let mut inodes = Vec::new();
    for fs in [&ext4, &tmpfs] {
        let path = fs.file("nobody.txt", b"nobody holds me");
        inodes.push(fs::metadata(&path).unwrap().ino());
        let rm_pid = rm(&path, None);
        let rec = daemon.wait_record(&path, "unheld");
        assert_eq!(rec["deleted_by"]["pid"], rm_pid);
        assert_eq!(rec["deleted_by"]["comm"], "rm");
        assert!(rec["holders"].as_array().unwrap().is_empty());
        let id = rec["id"].to_string();
        let out = daemon.cli(&["restore", &id, "--to", fs.path.join("x").to_str().unwrap()]);
        unrm_tests::assert_one_line_error(&out, "no content to restore");
    }
    // ext4's hook names the inode; in the tracepoint tier tmpfs has none, so
    // only the path is known there. The VFS hooks see every filesystem's.
    let ext4_rec = daemon.wait_record(&ext4.path.join("nobody.txt"), "unheld");
    assert_eq!(ext4_rec["size"], 15);
    assert_eq!(ext4_rec["ino"], inodes[0]);
    let tmpfs_rec = daemon.wait_record(&tmpfs.path.join("nobody.txt"), "unheld");
    if unrm_tests::expected_tier() == "tracepoint" {
        assert!(tmpfs_rec["ino"].is_null(), "{tmpfs_rec}");
    } else {
        assert_eq!(tmpfs_rec["ino"], inodes[1]);
        assert_eq!(tmpfs_rec["size"], 15);
    }
}

#[test]
fn relative_paths_and_dirfds_resolve_to_absolute_paths() {
    let fs = Mount::ext4();
    let dir = fs.path.join("a/b");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("by-cwd"), b"1").unwrap();
    fs::write(dir.join("by-dirfd"), b"2").unwrap();
    let daemon = Daemon::start();

    // rm with a relative path: unlinkat(AT_FDCWD, "../b/./by-cwd").
    rm(Path::new("../b/./by-cwd"), Some(&dir));
    daemon.wait_record(&dir.join("by-cwd"), "unheld");

    // unlinkat on a directory descriptor, from this process.
    let dirfd = fs::File::open(fs.path.join("a")).unwrap();
    let name = CString::new("b/by-dirfd").unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: a valid directory fd and a NUL-terminated name.
    let ret = unsafe { libc::unlinkat(dirfd.as_raw_fd(), name.as_ptr(), 0) };
    assert_eq!(ret, 0);
    let rec = daemon.wait_record(&dir.join("by-dirfd"), "unheld");
    assert_eq!(rec["deleted_by"]["pid"], std::process::id());
}

fn rename_over_held_file(fs: Mount) {
    let old = content("old version");
    let target = fs.file("config", &old);
    let replacement = fs.file("config.new", b"new version");
    let daemon = Daemon::start();
    let holder = Holder::fd(&target);
    fs::rename(&replacement, &target).unwrap();

    let rec = daemon.wait_record(&target, "held");
    assert_eq!(rec["op"], "rename");
    assert_eq!(rec["deleted_by"]["pid"], std::process::id());
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("old")), old);
    assert_eq!(fs::read(&target).unwrap(), b"new version");
    drop(holder);
}

#[test]
fn rename_over_a_held_file_on_ext4() {
    rename_over_held_file(Mount::ext4());
}

#[test]
fn rename_over_a_held_file_on_tmpfs() {
    rename_over_held_file(Mount::tmpfs());
}

#[test]
fn deleted_before_the_daemon_started_is_pinned_by_the_start_scan() {
    let fs = Mount::ext4();
    let data = content("early");
    let path = fs.file("early.bin", &data);
    let holder = Holder::fd(&path);
    rm(&path, None);

    let daemon = Daemon::start();
    let rec = daemon.wait_record(&path, "held");
    assert_eq!(rec["op"], "scan");
    assert!(rec["deleted_by"].is_null());
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);

    // Once the holder goes, the start scan's pin is what saves the content.
    holder.exit();
    let rec = daemon.wait_record(&path, "captured");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back2")), data);
}

#[test]
fn held_records_survive_a_daemon_restart() {
    let fs = Mount::ext4();
    let data = content("restart");
    let path = fs.file("kept.bin", &data);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().to_path_buf();
    let daemon = Daemon::start_in(dir, &[]);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let first = daemon.wait_record(&path, "held");
    let dir = daemon.kill();
    assert_eq!(dir.path(), state);

    let daemon = Daemon::start_in(dir, &[]);
    let again = daemon.wait_record(&path, "held");
    assert_eq!(again["id"], first["id"], "the same record is picked up again");
    holder.exit();
    let rec = daemon.wait_record(&path, "captured");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);
}

#[test]
fn restore_refuses_to_clobber_without_force() {
    let fs = Mount::ext4();
    let data = content("clobber");
    let path = fs.file("precious", &data);
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    let id = rec["id"].to_string();

    // Something new took the name; a symlink sits at another destination.
    fs::write(&path, b"someone else's new file").unwrap();
    let out = daemon.cli(&["restore", &id]);
    unrm_tests::assert_one_line_error(&out, "already exists");
    assert_eq!(fs::read(&path).unwrap(), b"someone else's new file");

    let link = fs.path.join("link");
    let victim = fs.path.join("victim");
    fs::write(&victim, b"do not touch").unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let out = daemon.cli(&["restore", &id, "--to", link.to_str().unwrap()]);
    unrm_tests::assert_one_line_error(&out, "already exists");
    let out = daemon.cli(&["restore", &id, "--to", link.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&victim).unwrap(), b"do not touch", "the symlink was replaced, not followed");
    assert_eq!(fs::read(&link).unwrap(), data);
    assert!(!fs::symlink_metadata(&link).unwrap().file_type().is_symlink());

    // To the original path with --force; a directory takes the original name.
    let out = daemon.cli(&["restore", &id, "--force"]);
    assert!(out.status.success());
    assert_eq!(fs::read(&path).unwrap(), data);
    let sub = fs.path.join("sub");
    fs::create_dir(&sub).unwrap();
    assert!(daemon.cli(&["restore", &id, "--to", sub.to_str().unwrap()]).status.success());
    assert_eq!(fs::read(sub.join("precious")).unwrap(), data);
    drop(holder);
}

#[test]
fn files_over_the_size_cap_are_held_but_not_copied() {
    let fs = Mount::ext4();
    let path = fs.file("big", &content("big"));
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--max-file-size", "1K"]);
    let holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");
    holder.exit();
    let rec = daemon.wait_record(&path, "skipped");
    assert!(rec["reason"].as_str().unwrap().contains("cap"), "{rec}");
}

#[test]
fn status_reports_the_probes_and_counters() {
    let fs = Mount::ext4();
    let path = fs.file("counted", b"x");
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    rm(&path, None);
    daemon.wait_record(&path, "held");

    let out = daemon.cli(&["status"]);
    assert!(out.status.success());
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["pid"], daemon.pid());
    // `auto` picks the best tier the kernel accepts; the host and the VM
    // runs say which they expect.
    let tier = unrm_tests::expected_tier();
    assert_eq!(status["probes"]["tier"], tier, "{status}");
    assert_eq!(status["probes"]["attached"], true);
    assert!(status["counters"]["pins"].as_u64().unwrap() >= 1);
    // On ext4 the reader pins by file handle: no snapshot needed.
    assert!(status["counters"]["fast_pins"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["held_files"].as_u64().unwrap() >= 1);
    assert!(status["pin_latency_us"]["samples"].as_u64().unwrap() >= 1);
    // Every kernel read of a plain held file succeeds; one that did not
    // would be counted here.
    assert_eq!(status["safety"]["failed_reads"], 0, "{status}");
    let hooks = status["probes"]["fs_hooks"].as_array().unwrap();
    // Attached while something is watched (the syscall tracepoints, or
    // `__fput` in the VFS tiers), never in the fs tier.
    assert_eq!(status["probes"]["release_attached"], true, "a pinned file has a live holder: {status}");
    if tier == "tracepoint" {
        assert!(hooks.iter().any(|h| h == "ext4_unlink_enter"), "{status}");
        assert!(status["probes"]["fallback"].as_str().unwrap_or("").contains("fentry"), "{status}");
    } else {
        assert!(hooks.iter().any(|h| h == "vfs_unlink"), "{status}");
    }
    drop(holder);
}

#[test]
fn list_filters_by_status_path_and_time() {
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let a = fs.file("keep.log", b"a");
    let b = fs.file("other.txt", b"b");
    let holder = Holder::fd(&a);
    rm(&a, None);
    rm(&b, None);
    daemon.wait_record(&a, "held");
    daemon.wait_record(&b, "unheld");

    let glob = format!("{}/*.log", fs.path.display());
    let logs = daemon.json(&["list", "--json", "--path", &glob]);
    let paths: Vec<&str> = logs.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths, [a.to_str().unwrap()]);
    let held = daemon.json(&["list", "--json", "--status", "held", "--limit", "0"]);
    assert!(held.as_array().unwrap().iter().all(|r| r["status"] == "held"));
    assert!(held.as_array().unwrap().iter().any(|r| r["path"] == a.to_str().unwrap()));
    let recent = daemon.json(&["list", "--json", "--since", "1h", "--limit", "0"]);
    assert!(recent.as_array().unwrap().len() >= 2);
    let text = daemon.cli(&["list"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains(a.as_os_str().to_str().unwrap()));
    drop(holder);
}

#[test]
fn lost_events_are_counted_and_a_snapshot_recovers_the_held_file() {
    let fs = Mount::tmpfs();
    // Paths of ~3 KiB make each deletion event nearly fill a 4 KiB ring.
    let mut dir = fs.path.clone();
    for level in 0..14 {
        dir.push(format!("{level:0>200}"));
    }
    fs::create_dir_all(&dir).unwrap();
    let names: Vec<String> = (0..2000).map(|i| format!("f{i}")).collect();
    for name in &names {
        fs::write(dir.join(name), b"x").unwrap();
    }
    let held_path = dir.join("f1000");
    let data = content("burst");
    fs::write(&held_path, &data).unwrap();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--ring-size", "4K"]);
    let holder = Holder::fd(&held_path);

    // The daemon is stopped while rm runs, so nothing drains the ring: it
    // overflows whatever the machine's speed. Relative names keep the
    // command line short; the probe resolves the directory in the kernel,
    // so every event still carries the long path.
    let signal = |sig| assert_eq!(unsafe { libc::kill(daemon.pid() as i32, sig) }, 0);
    signal(libc::SIGSTOP);
    let status = std::process::Command::new("rm").args(&names).current_dir(&dir).status();
    signal(libc::SIGCONT);
    assert!(status.unwrap().success());
    let rec = daemon.wait_record(&held_path, "held");
    let status = daemon.json(&["status", "--json"]);
    assert!(status["counters"]["lost_events"].as_u64().unwrap() > 0, "{status}");
    assert!(daemon.log().contains("ring buffer full"), "the probe's own log line reaches the daemon's log");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);
    drop(holder);
}

#[test]
fn a_running_executable_that_was_deleted_is_held() {
    let fs = Mount::ext4();
    let exe = fs.path.join("my-sleep");
    fs::copy("/bin/sleep", &exe).unwrap();
    let original = fs::read(&exe).unwrap();
    let daemon = Daemon::start();
    let mut child = std::process::Command::new(&exe).arg("600").spawn().unwrap();
    // The new image is in place once /proc/PID/exe names it.
    let proc_exe = format!("/proc/{}/exe", child.id());
    unrm_tests::wait_until(&format!("{} never ran", exe.display()), || {
        fs::read_link(&proc_exe).ok().as_deref() == Some(exe.as_path())
    });
    rm(&exe, None);

    let rec = daemon.wait_record(&exe, "held");
    let holders = rec["holders"].as_array().unwrap();
    assert!(holders.iter().any(|h| h["pid"] == child.id() && h["kind"] == "exe"), "{rec}");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), original);
    child.kill().unwrap();
    child.wait().unwrap();
    let rec = daemon.wait_record(&exe, "captured");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back2")), original);
}

/// Reads one extended attribute of `path`.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the stated length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a value of the stated length.
    let ret = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(ret, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
}

#[test]
fn restore_keeps_times_extended_attributes_and_acls() {
    let fs = Mount::ext4();
    let path = fs.file("annotated", b"with attributes");
    set_xattr(&path, "user.comment", b"keep me");
    // An access ACL: owner rw, user 1234 r, group r, mask r, other none.
    let mut acl = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 4, 1234),
        (0x04, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        acl.extend_from_slice(&tag.to_le_bytes());
        acl.extend_from_slice(&perm.to_le_bytes());
        acl.extend_from_slice(&id.to_le_bytes());
    }
    set_xattr(&path, "system.posix_acl_access", &acl);
    let times = [
        libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 123 },
        libc::timespec { tv_sec: 1_100_000_000, tv_nsec: 456_000 },
    ];
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }, 0);
    let before = fs::metadata(&path).unwrap();

    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    holder.exit();
    let rec = daemon.wait_show(&rec["id"], |r| r["status"] == "captured");
    let back = fs.path.join("annotated.back");
    daemon.restore_to(&rec["id"], &back);
    assert_eq!(xattr(&back, "user.comment").as_deref(), Some(&b"keep me"[..]));
    assert_eq!(xattr(&back, "system.posix_acl_access"), Some(acl));
    let after = fs::metadata(&back).unwrap();
    assert_eq!((after.mtime(), after.mtime_nsec()), (before.mtime(), before.mtime_nsec()));
    assert_eq!(after.mode(), before.mode());
}

/// A held file is pinned by its file handle the moment its deletion is
/// read, with no search for a holder: on ext4, and on xfs where the tier
/// names its inodes (the VFS tiers). A filesystem unrm makes no handle for
/// (tmpfs, FUSE) is pinned through its holder once a snapshot finds it.
/// Each is captured whole when its holder lets go.
#[test]
fn held_files_are_pinned_by_handle_and_others_by_snapshot() {
    let (ext4, tmpfs) = (Mount::ext4(), Mount::tmpfs());
    let xfs = Mount::image("xfs", 300 << 20).expect("mkfs.xfs (cargo xtask test installs xfsprogs)");
    let fuse_source = Mount::tmpfs();
    let fuse = Fuse::mirror(&fuse_source.path);
    let daemon = Daemon::start();
    let tier = unrm_tests::expected_tier();
    let vfs_tier = tier == "fentry" || tier == "kprobe";
    let fast_pins = || daemon.status()["counters"]["fast_pins"].as_u64().unwrap();
    let cases = [
        (ext4.path.clone(), true),
        (tmpfs.path.clone(), false),
        (xfs.path.clone(), vfs_tier),
        (fuse.point.clone(), false),
    ];
    for (dir, by_handle) in cases {
        let data = content(&dir.to_string_lossy());
        let path = dir.join("kept.bin");
        std::fs::write(&path, &data).unwrap();
        let holder = Holder::fd(&path);
        let before = fast_pins();
        rm(&path, None);
        let rec = daemon.wait_record(&path, "held");
        assert_eq!(fast_pins() - before, by_handle as u64, "{}: {rec}", dir.display());
        drop(holder);
        let rec = daemon.wait_record(&path, "captured");
        let to = tempfile::tempdir().unwrap();
        assert_eq!(daemon.restore_to(&rec["id"], &to.path().join("back")), data, "{}", dir.display());
    }
}
