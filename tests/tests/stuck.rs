//! A filesystem that stops answering (a FUSE server that hangs, a network
//! mount gone away) holds up only work on that filesystem: unrm keeps
//! pinning, capturing and answering for everything else, says which
//! filesystem is stuck, and finishes the waiting work once it answers.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use unrm_tests::{Daemon, Holder, Mount, content, rm, unrm_bin, wait_until};

/// bindfs mirroring `source` at a mount point of its own, in the foreground
/// so the test can stop and continue it by pid.
struct Fuse {
    server: Child,
    point: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fuse {
    fn mirror(source: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let point = dir.path().join("mnt");
        std::fs::create_dir(&point).unwrap();
        let server = Command::new("bindfs")
            .arg("-f")
            .arg(source)
            .arg(&point)
            .stdout(Stdio::null())
            .spawn()
            .expect("bindfs (cargo xtask test installs it)");
        let fuse = Fuse { server, point, _dir: dir };
        wait_until("the FUSE mount", || mounted(&fuse.point));
        fuse
    }

    fn signal(&self, signal: i32) {
        // SAFETY: signalling the server this test started.
        unsafe { libc::kill(self.server.id() as i32, signal) };
    }
}

impl Drop for Fuse {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

fn mounted(point: &Path) -> bool {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(point.to_str().unwrap()))
}

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
