//! What must not depend on the probe tier: the same deletions give the same
//! records whichever hooks saw them, and one deletion is one record even on
//! overlayfs, where the VFS is entered twice.

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
        drop((holder, target_holder));
    }
    let records: Vec<Value> = daemon.json(&["list", "--json", "--limit", "0"]).as_array().unwrap().clone();
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

#[test]
fn the_tiers_agree_on_the_same_deletions() {
    if expected_tier() != "fentry" {
        // Only the tracepoint tier loads here; `cargo xtask vm-test` runs
        // this where both do.
        eprintln!("skipped: the fentry tier cannot load on this kernel");
        return;
    }
    assert_eq!(scenario("fentry"), scenario("tracepoint"));
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
    let marker = merged.join("marker");
    fs::write(&marker, b"m").unwrap();
    rm(&marker, None);
    daemon.wait_record(&marker, "unheld");
    let records =
        daemon.json(&["list", "--json", "--limit", "0", "--path", &format!("{}/**", base.path().display())]);
    let paths: Vec<&str> = records.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 2, "one record per deletion, through the overlay: {paths:?}");
}
