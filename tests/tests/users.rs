//! Per-user access with real accounts: the socket serves everyone, and each
//! caller, told apart by its kernel credentials, sees and restores only
//! files it owned or could read when they were deleted.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, chown},
    process::Command,
};

use unrm_tests::{Daemon, Holder, Mount, User, assert_one_line_error, content};

#[test]
fn users_see_and_restore_only_their_own_deleted_files() {
    let alice = User::ensure("unrm-test-alice");
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    // Let the test users reach the mount (its temporary parent is 0700).
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o755)).unwrap();
    let home = fs.path.join("alice");
    fs::create_dir(&home).unwrap();
    chown(&home, Some(alice.uid), Some(alice.gid)).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = home.join("diary.txt");
    let data = content("alice's diary");
    fs::write(&secret, &data).unwrap();
    chown(&secret, Some(alice.uid), Some(alice.gid)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();

    let daemon = Daemon::start();
    let holder = Holder::fd_as(&secret, &alice);
    let mut rm = Command::new("rm");
    alice.apply(&mut rm);
    assert!(rm.arg(&secret).status().unwrap().success());
    let rec = daemon.wait_record(&secret, "held");
    assert_eq!(rec["uid"], alice.uid);
    let id = rec["id"].to_string();

    // Bob: not in his list, not in his scan, not showable, not restorable.
    let listed = |user: &User| {
        let out = daemon.cli_as(user, &["list", "--json", "--limit", "0"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        records.as_array().unwrap().iter().any(|r| r["id"] == rec["id"])
    };
    assert!(!listed(&bob));
    let scan = daemon.cli_as(&bob, &["scan", "--json"]);
    assert!(scan.status.success());
    assert!(!String::from_utf8_lossy(&scan.stdout).contains("diary.txt"));
    assert_one_line_error(&daemon.cli_as(&bob, &["show", &id]), "no record with id");
    let bob_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(bob_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let stolen = bob_dir.path().join("stolen");
    let out = daemon.cli_as(&bob, &["restore", &id, "--to", stolen.to_str().unwrap()]);
    assert_one_line_error(&out, "no record with id");
    assert!(!stolen.exists());

    // Alice: listed, and restored with her own rights, as her own file.
    assert!(listed(&alice));
    let back = home.join("diary.restored");
    let out = daemon.cli_as(&alice, &["restore", &id, "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&back).unwrap(), data);
    let meta = fs::metadata(&back).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (alice.uid, 0o600));

    // She cannot restore into a place she could not write herself: the CLI,
    // not the root daemon, writes the file.
    let out = daemon.cli_as(&alice, &["restore", &id, "--to", "/root/diary"]);
    assert!(!out.status.success());
    assert!(!std::path::Path::new("/root/diary").exists());
    drop(holder);
}

#[test]
fn world_readable_files_are_visible_to_everyone_private_ones_are_not() {
    let alice = User::ensure("unrm-test-alice");
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let public = fs.file("public.txt", b"for everyone");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).unwrap();
    let private = fs.file("private.txt", b"root only");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    unrm_tests::rm(&public, None);
    unrm_tests::rm(&private, None);
    let public_rec = daemon.wait_record(&public, "unheld");
    let private_rec = daemon.wait_record(&private, "unheld");
    for user in [&alice, &bob] {
        let out = daemon.cli_as(user, &["show", &public_rec["id"].to_string(), "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_one_line_error(&daemon.cli_as(user, &["show", &private_rec["id"].to_string()]), "no record");
    }
    // Anyone may ask for the status.
    assert!(daemon.cli_as(&bob, &["status"]).status.success());
}
