//! A filesystem that stops answering (a FUSE server that hangs, a network
//! mount gone away) holds up only work on that filesystem: unrm keeps
//! pinning, capturing and answering for everything else, says which
//! filesystem is stuck, and finishes the waiting work once it answers.

use std::process::{Command, Stdio};

use unrm_tests::{Daemon, Fuse, Holder, Mount, content, rm, unrm_bin, wait_until};

#[test]
fn a_filesystem_that_stops_answering_holds_up_only_itself() {
    let source = Mount::tmpfs();
    let fuse = Fuse::mirror(&source.path);
    let ext4 = Mount::ext4();
    let daemon = Daemon::start();

    let data = content("on fuse");
    let on_fuse = fuse.point.join("held.txt");
    std::fs::write(&on_fuse, &data).unwrap();
    let fuse_holder = Holder::fd(&on_fuse);
    rm(&on_fuse, None);
    let rec = daemon.wait_record(&on_fuse, "held");

    // The server stops answering; a restore of its file must open it, and
    // waits.
    fuse.signal(libc::SIGSTOP);
    let to = tempfile::tempdir().unwrap();
    let back = to.path().join("back");
    let waiting = Command::new(unrm_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["restore", &rec["id"].to_string(), "--to", back.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Everything else goes on: a held file on ext4 is pinned, restored
    // while held, and captured when let go.
    let other = content("on ext4");
    let path = ext4.file("other.txt", &other);
    let holder = Holder::fd(&path);
    rm(&path, None);
    let held = daemon.wait_record(&path, "held");
    assert_eq!(daemon.restore_to(&held["id"], &ext4.path.join("other.back")), other);
    holder.exit();
    daemon.wait_record(&path, "captured");
    wait_until("the stuck filesystem reported", || {
        daemon.status()["safety"]["stuck_filesystems"].as_u64().unwrap() >= 1
    });

    // It answers again: the waiting restore completes.
    fuse.signal(libc::SIGCONT);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    fuse_holder.exit();
    daemon.wait_record(&on_fuse, "captured");
}
