//! A fair store: filling the store's filesystem from outside cannot wipe
//! every capture, one user's captures make room from that user's own
//! first, and reflinked captures are counted by what they really cost.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, chown},
    path::Path,
    process::Command,
};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, User, content};

/// Holds `path` (as `user`, or root), deletes it, lets go, and waits for
/// `status`.
fn captured_as(daemon: &Daemon, path: &Path, user: Option<&User>, status: &str) -> Value {
    let holder = match user {
        Some(user) => Holder::fd_as(path, user),
        None => Holder::fd(path),
    };
    unrm_tests::rm(path, None);
    daemon.wait_record(path, "held");
    holder.exit();
    daemon.wait_record(path, status)
}

fn captured(daemon: &Daemon, path: &Path, status: &str) -> Value {
    captured_as(daemon, path, None, status)
}

/// A file of `size` bytes owned by `owner`.
fn owned(dir: &Path, name: &str, owner: Option<&User>, size: usize) -> std::path::PathBuf {
    let path = dir.join(name);
    let data: Vec<u8> = content(name).into_iter().cycle().take(size).collect();
    fs::write(&path, data).unwrap();
    if let Some(user) = owner {
        chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }
    path
}

/// An ext4 of its own with a directory `name` that `user` owns, reachable
/// by everyone.
fn home_on_ext4(user: &User, name: &str) -> (Mount, std::path::PathBuf) {
    let fs = Mount::ext4();
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = fs.path.join(name);
    fs::create_dir(&home).unwrap();
    chown(&home, Some(user.uid), Some(user.gid)).unwrap();
    (fs, home)
}

#[test]
fn filling_the_stores_filesystem_cannot_wipe_every_capture() {
    let bob = User::ensure("unrm-test-bob");
    let files = Mount::ext4();
    let tiny = Mount::ext4_with(&std::env::temp_dir(), 64 << 20, &["-m", "0"]);
    fs::set_permissions(tiny.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let config = "min_free = \"20%\"\nstore_reserve = \"4M\"\n";
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("unrm.toml"), config).unwrap();
    let config = dir.path().join("unrm.toml");
    let daemon = Daemon::start_with_state(
        &tiny.path.join("state"),
        &["--config", config.to_str().unwrap(), "--rescan-interval", "200ms"],
    );
    let kept = captured(&daemon, &owned(&files.path, "roots", None, 1 << 20), "captured");

    // Bob fills the filesystem to the last block, from a directory of his.
    let his = tiny.path.join("bob");
    fs::create_dir(&his).unwrap();
    chown(&his, Some(bob.uid), Some(bob.gid)).unwrap();
    let out = bob.run(
        Command::new("dd")
            .args(["if=/dev/zero", "bs=1M", "status=none"])
            .arg(format!("of={}", his.join("fill").display())),
    );
    assert!(!out.status.success(), "dd should have run out of room");
    daemon.wait_scans(3);
    let rec = daemon.json(&["show", &kept["id"].to_string(), "--json"]);
    assert_eq!(rec["status"], "captured", "a filled disk evicted what the reserve keeps: {rec}");
    let back = files.path.join("roots.back");
    assert_eq!(daemon.restore_to(&kept["id"], &back).len(), 1 << 20);
}

#[test]
fn a_users_captures_make_room_from_their_own_first() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = Mount::ext4();
    let config = "max_store_size = \"2M\"\n[per_user]\nstore = \"1500K\"\n";
    let (_config, daemon) = Daemon::with_config(config, &[]);
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let size = 600 << 10;
    // Each user's own files, held by their own programs.
    let mine = |name: &str, user: &User| {
        captured_as(&daemon, &owned(&fs.path, name, Some(user), size), Some(user), "captured")
    };
    let a1 = mine("a1", &alice);
    let b1 = mine("b1", &bob);
    mine("b2", &bob);
    // Bob's third would take him past his share: his oldest goes, not alice's.
    mine("b3", &bob);
    let show = |rec: &Value| daemon.json(&["show", &rec["id"].to_string(), "--json"]);
    let b1 = show(&b1);
    assert_eq!(b1["status"], "evicted");
    assert!(b1["reason"].as_str().unwrap().contains("per_user.store"), "{b1}");
    assert_eq!(show(&a1)["status"], "captured", "bob's capture evicted alice's");
    // Alice's second fills the store: her own oldest makes room.
    mine("a2", &alice);
    assert_eq!(show(&a1)["status"], "evicted");
    let kept = daemon.json(&["list", "--json", "--status", "captured"]);
    let names: Vec<&str> = kept.as_array().unwrap().iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn reflinked_captures_are_counted_once() {
    let Some(xfs) = Mount::image("xfs", 512 << 20) else {
        panic!("mkfs.xfs is missing (cargo xtask test installs xfsprogs)");
    };
    let config = tempfile::tempdir().unwrap();
    fs::write(config.path().join("unrm.toml"), "max_store_size = \"20M\"\n").unwrap();
    let config = config.path().join("unrm.toml");
    let daemon = Daemon::start_with_state(&xfs.path.join("state"), &["--config", config.to_str().unwrap()]);
    let original = owned(&xfs.path, "original", None, 8 << 20);
    let copies: Vec<_> = (0..4)
        .map(|i| {
            let copy = xfs.path.join(format!("copy{i}"));
            let out = Command::new("cp").arg("--reflink=always").arg(&original).arg(&copy).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            copy
        })
        .collect();
    // Four captures of the same 8 MiB on disk: 32 MiB if each were counted
    // whole, over the 20 MiB cap.
    let records: Vec<Value> = copies.iter().map(|copy| captured(&daemon, copy, "captured")).collect();
    let status = daemon.status();
    assert_eq!(status["counters"]["evicted"], 0, "{status}");
    let store = status["store_bytes"].as_u64().unwrap();
    assert!(store < 12 << 20, "the store counts {store} bytes for one 8 MiB extent");
    for rec in &records {
        assert_eq!(daemon.json(&["show", &rec["id"].to_string(), "--json"])["status"], "captured");
    }
    let back = xfs.path.join("back");
    assert_eq!(daemon.restore_to(&records[3]["id"], &back), fs::read(&original).unwrap());
}

#[test]
fn one_user_cannot_take_every_pin_nor_flood_the_index() {
    let bob = User::ensure("unrm-test-bob");
    let (fs, his) = home_on_ext4(&bob, "bob");
    let config = "[per_user]\npins = 5\nrecords_per_minute = 100\n";
    let (_config, daemon) = Daemon::with_config(config, &[]);
    // Eight held files of bob's: five pinned, three recorded as not.
    let holder = Holder::scratch_many(&his, 8, Some(&bob));
    let bobs = |status: &str| {
        let records =
            daemon.json(&["list", "--json", "--status", status, "--path", &format!("{}/*", his.display())]);
        records.as_array().unwrap().clone()
    };
    unrm_tests::wait_until("bob's deletions decided", || bobs("held").len() + bobs("skipped").len() >= 8);
    assert_eq!(bobs("held").len(), 5);
    let skipped = bobs("skipped");
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped.iter().all(|r| r["reason"].as_str().unwrap().contains("per_user.pins")), "{skipped:?}");
    assert_eq!(daemon.status()["safety"]["over_user_pins"], 3);
    // Root's files are not bob's to crowd out.
    let root_file = fs.file("roots", b"root's");
    let root_holder = Holder::fd(&root_file);
    unrm_tests::rm(&root_file, None);
    daemon.wait_record(&root_file, "held");

    // Three hundred unheld deletions: about a hundred recorded.
    let out = bob.run(
        Command::new("sh")
            .arg("-c")
            .arg(format!("cd {} && for i in $(seq 300); do : > u$i; done && rm u*", his.display())),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let marker = fs.file("marker", b"m");
    unrm_tests::rm(&marker, None);
    daemon.wait_record(&marker, "unheld");
    let s = daemon.status();
    let limited = s["safety"]["rate_limited"].as_u64().unwrap();
    // A hundred a minute, the three records of files not pinned included.
    assert!((180..=210).contains(&limited), "{limited} of 300 records dropped: {s}");
    drop((holder, root_holder));
}

#[test]
fn holding_another_users_files_cannot_use_up_that_users_share() {
    let (alice, mallory) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-mallory"));
    let (_fs, home) = home_on_ext4(&alice, "alice");
    let (_config, daemon) = Daemon::with_config("[per_user]\npins = 3\n", &[]);
    // Mallory holds five of alice's readable files; alice cleans them up.
    let held: Vec<(std::path::PathBuf, Holder)> = (0..5)
        .map(|i| {
            let path = owned(&home, &format!("readable{i}"), Some(&alice), 100);
            let holder = Holder::fd_as_reader(&path, &mallory);
            (path, holder)
        })
        .collect();
    for (path, _) in &held {
        unrm_tests::rm_as(&alice, path);
    }
    for (path, _) in &held {
        unrm_tests::wait_until("decided", || {
            let r = daemon.json(&["list", "--json", "--path", path.to_str().unwrap()]);
            r.as_array().unwrap().iter().any(|r| r["status"] == "held" || r["status"] == "skipped")
        });
    }
    let skipped = daemon.json(&["list", "--json", "--status", "skipped"]);
    assert_eq!(skipped.as_array().unwrap().len(), 2, "mallory's share, not alice's: {skipped}");
    assert!(skipped[0]["reason"].as_str().unwrap().contains(&format!("uid {}", mallory.uid)), "{skipped}");
    // Alice's own held files are still hers to pin.
    let own = owned(&home, "own", Some(&alice), 100);
    let holder = Holder::fd_as(&own, &alice);
    unrm_tests::rm_as(&alice, &own);
    daemon.wait_record(&own, "held");
    drop((held, holder));
}

#[test]
fn a_flood_of_records_is_pruned_from_the_flooder_not_from_what_has_content() {
    let bob = User::ensure("unrm-test-bob");
    let (fs, his) = home_on_ext4(&bob, "bob");
    let config = "max_index_size = \"512K\"\n";
    let (_config, daemon) = Daemon::with_config(config, &["--rescan-interval", "200ms"]);
    let kept = captured(&daemon, &owned(&fs.path, "roots", None, 1000), "captured");
    // Bob deletes thousands of files with long names.
    let long = "n".repeat(200);
    let out =
        bob.run(Command::new("sh").arg("-c").arg(format!(
            "cd {} && for i in $(seq 3000); do : > {long}$i; done && rm {long}*",
            his.display()
        )));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    unrm_tests::wait_until("the index pruned", || {
        daemon.status()["safety"]["records_pruned"].as_u64().unwrap() > 0
    });
    daemon.wait_scans(2);
    let rec = daemon.json(&["show", &kept["id"].to_string(), "--json"]);
    assert_eq!(rec["status"], "captured", "{rec}");
    let left = daemon.json(&["list", "--json", "--limit", "0", "--path", &format!("{}/*", his.display())]);
    assert!(left.as_array().unwrap().len() < 3000, "nothing of bob's flood was forgotten");
}
