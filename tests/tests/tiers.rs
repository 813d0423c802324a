//! What must not depend on the probe tier: the same deletions give the same
//! records whichever hooks saw them, and one deletion is one record even on
//! overlayfs, where the VFS is entered twice; and a deletion inside another
//! mount namespace (a container) is recorded where it lives on the host,
//! with the path the deleter saw.

use std::{fs, path::Path, process::Command};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, expected_tier, rm, run};

/// A few deletions of every kind; the records they left, in a form that
/// should not depend on the tier: path, op, status, deleter.
fn scenario(tier: &str) -> Vec<(String, String, String, String)> {
    let ext4 = Mount::ext4();
    let tmpfs = Mount::tmpfs();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--tier", tier]);
    let status = daemon.json(&["status", "--json"]);
    assert_eq!(status["probes"]["tier"], tier, "{status}");
    let mut paths = Vec::new();
    // Held until the records are read: a release would race the listing.
    let mut holders = Vec::new();
    for fs in [&ext4, &tmpfs] {
        let held = fs.file("held", b"held");
        let holder = Holder::fd(&held);
        rm(&held, None);
        daemon.wait_record(&held, "held");
        let loose = fs.file("loose", b"loose");
        rm(&loose, None);
        daemon.wait_record(&loose, "unheld");
        let target = fs.file("target", b"old");
        let target_holder = Holder::fd(&target);
        fs::rename(fs.file("target.new", b"new"), &target).unwrap();
        daemon.wait_record(&target, "held");
        paths.extend([held, loose, target]);
        holders.extend([holder, target_holder]);
    }
    let records: Vec<Value> = daemon.json(&["list", "--json", "--limit", "0"]).as_array().unwrap().clone();
    drop(holders);
    let mut out: Vec<_> = paths
        .iter()
        .map(|p| {
            let r = records.iter().find(|r| r["path"] == p.to_str().unwrap()).expect("a record per deletion");
            let rel =
                p.strip_prefix(p.parent().unwrap().parent().unwrap()).unwrap().to_string_lossy().into_owned();
            let fs = if p.starts_with(&ext4.path) { "ext4" } else { "tmpfs" };
            (
                format!("{fs}:{rel}"),
                r["op"].to_string(),
                r["status"].to_string(),
                r["deleted_by"]["comm"].to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Whether the VFS tiers load on this kernel: `auto` picks the best, so
/// the tier it is expected to pick says.
fn vfs_tiers_load() -> bool {
    expected_tier() == "fentry"
}

#[test]
fn the_tiers_agree_on_the_same_deletions() {
    if !vfs_tiers_load() {
        // Only the tracepoint tier loads here; `cargo xtask vm-test` runs
        // this where every tier does.
        eprintln!("skipped: the fentry and kprobe tiers cannot load on this kernel");
        return;
    }
    let fentry = scenario("fentry");
    assert_eq!(scenario("kprobe"), fentry, "kprobe vs fentry");
    assert_eq!(scenario("tracepoint"), fentry, "tracepoint vs fentry");
}

#[test]
fn a_forced_tier_the_kernel_refuses_is_one_clear_error() {
    if vfs_tiers_load() {
        eprintln!("skipped: every tier loads on this kernel");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for tier in ["fentry", "kprobe"] {
        let out = unrm_tests::daemon_command()
            .args(["--tier", tier, "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("sock"))
            .output()
            .unwrap();
        unrm_tests::assert_one_line_error(&out, &format!("the {tier} tier cannot load here"));
    }
}

#[test]
fn one_deletion_on_overlayfs_is_one_record() {
    let base = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        base.path().join("lower"),
        base.path().join("upper"),
        base.path().join("work"),
        base.path().join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    let opts =
        format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    run(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged));
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&merged);

    let daemon = Daemon::start();
    let file = merged.join("in-overlay");
    fs::write(&file, b"x").unwrap();
    rm(&file, None);
    daemon.wait_record(&file, "unheld");
    let data = unrm_tests::content("overlay");
    let held = merged.join("held");
    fs::write(&held, &data).unwrap();
    let holder = Holder::fd(&held);
    rm(&held, None);
    let rec = daemon.wait_record(&held, "held");
    assert_eq!(rec["op"], "unlink", "the event, not a later scan, found it: {rec}");
    assert_eq!(daemon.restore_to(&rec["id"], &merged.join("back")), data);
    let records =
        daemon.json(&["list", "--json", "--limit", "0", "--path", &format!("{}/**", base.path().display())]);
    let paths: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 2, "one record per deletion, through the overlay: {records:#}");
    drop(holder);
}

/// A process in a mount namespace of its own (a container's view): it binds
/// `dir` at `view`, removes `names` there, says so, and stays, as a
/// container's processes do.
struct Container(std::process::Child);

impl Container {
    fn rm_through_bind(dir: &Path, view: &Path, names: &[&str]) -> Self {
        use std::io::BufRead;
        let files: Vec<String> = names.iter().map(|n| view.join(n).display().to_string()).collect();
        let script = format!(
            "mount --bind {dir} {view} && rm {files} && echo removed && exec sleep 600",
            dir = dir.display(),
            view = view.display(),
            files = files.join(" ")
        );
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "removed", "the container's rm failed");
        Container(child)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_deletion_in_another_mount_namespace_keeps_both_paths() {
    let fs = Mount::ext4();
    let dir = fs.path.join("app-data");
    fs::create_dir(&dir).unwrap();
    let data = unrm_tests::content("container");
    let held = fs.file("app-data/held", &data);
    let loose = fs.file("app-data/loose", b"loose");
    // The container's mount point exists on the host too, empty there.
    let view = tempfile::tempdir().unwrap();
    let daemon = Daemon::start();
    let holder = Holder::fd(&held);

    let container = Container::rm_through_bind(&dir, view.path(), &["held", "loose"]);
    let rec = daemon.wait_record(&held, "held");
    assert_eq!(rec["deleted_by"]["comm"], "rm");
    assert_eq!(rec["deleted_by"]["path"], view.path().join("held").to_str().unwrap(), "{rec}");
    assert_eq!(daemon.restore_to(&rec["id"], &fs.path.join("back")), data);
    let rec = daemon.wait_record(&loose, "unheld");
    assert_eq!(rec["deleted_by"]["path"], view.path().join("loose").to_str().unwrap(), "{rec}");

    // Seen from the host's own namespace, there is one path only.
    let mine = fs.file("app-data/mine", b"mine");
    rm(&mine, None);
    let rec = daemon.wait_record(&mine, "unheld");
    assert!(rec["deleted_by"].get("path").is_none(), "{rec}");

    // An open mountinfo keeps its namespace and every mount in it alive:
    // once the container is gone, unrm must let go of it.
    let tables = || {
        let own = format!("/proc/{}/mountinfo", daemon.pid());
        fs::read_dir(format!("/proc/{}/fd", daemon.pid()))
            .unwrap()
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .filter(|link| link.ends_with("mountinfo") && *link != Path::new(&own))
            .count()
    };
    assert!(tables() > 0, "the container's mount table is open while it runs");
    drop(container);
    unrm_tests::wait_until("the container's mount table is still open", || tables() == 0);
    drop(holder);
}
