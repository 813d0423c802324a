//! Per-user access with real accounts: the socket serves everyone, and each
//! caller, told apart by its kernel credentials, sees and restores only
//! files it owned, or (with `visible_to = "readers"`) could have read by
//! their path when they were deleted and still could now. Each test plays
//! an ordinary user trying to read what it never could.

use std::{
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt, chown},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use unrm_tests::{
    Daemon, Holder, Mount, User, acl, assert_one_line_error, content, rm_as, set_acl, wait_until,
};

const READERS: &str = "visible_to = \"readers\"\n";

/// An ext4 every test user can reach (its temporary parent is 0700).
fn shared_fs() -> Mount {
    let fs = Mount::ext4();
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o755)).unwrap();
    fs
}

/// A directory owned by `user` with `mode`.
fn dir_of(parent: &Path, name: &str, user: &User, mode: u32) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir(&dir).unwrap();
    chown(&dir, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// A file owned by `user` with `mode` and `data`.
fn file_of(dir: &Path, name: &str, user: &User, mode: u32, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, data).unwrap();
    chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// What `user` can learn of record `rec`: whether it is listed, shown, and
/// the bytes a restore gives it (None when refused).
struct Seen {
    listed: bool,
    shown: bool,
    restored: Option<Vec<u8>>,
}

fn seen_by(daemon: &Daemon, user: &User, rec: &Value) -> Seen {
    let id = rec["id"].to_string();
    let out = daemon.cli_as(user, &["list", "--json", "--limit", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let records: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = records.as_array().unwrap().iter().any(|r| r["id"] == rec["id"]);
    let shown = daemon.cli_as(user, &["show", &id]);
    if !shown.status.success() {
        assert_one_line_error(&shown, "no record with id");
    }
    let to = tempfile::tempdir().unwrap();
    fs::set_permissions(to.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let target = to.path().join("restored");
    let out = daemon.cli_as(user, &["restore", &id, "--to", target.to_str().unwrap()]);
    let restored = out.status.success().then(|| fs::read(&target).unwrap());
    if restored.is_none() {
        assert!(!target.exists(), "a refused restore left a file");
    }
    Seen { listed, shown: shown.status.success(), restored }
}

fn assert_hidden(daemon: &Daemon, user: &User, rec: &Value) {
    let seen = seen_by(daemon, user, rec);
    assert!(
        !seen.listed && !seen.shown && seen.restored.is_none(),
        "uid {} saw record {}",
        user.uid,
        rec["id"]
    );
    let scan = daemon.cli_as(user, &["scan", "--json"]);
    assert!(scan.status.success());
    let path = rec["path"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&scan.stdout).contains(path), "uid {} scanned {path}", user.uid);
}

fn assert_visible(daemon: &Daemon, user: &User, rec: &Value, data: &[u8]) {
    let seen = seen_by(daemon, user, rec);
    assert!(seen.listed && seen.shown, "uid {} cannot see record {}:\n{}", user.uid, rec["id"], daemon.log());
    assert_eq!(
        seen.restored.as_deref(),
        Some(data),
        "uid {} could not restore record {}",
        user.uid,
        rec["id"]
    );
}

/// Holds `path` as `owner`, deletes it as `owner`, and waits until the
/// record is held and inspected (its access facts known).
fn held_and_deleted(daemon: &Daemon, path: &Path, owner: &User) -> (Holder, Value) {
    let holder = Holder::fd_as(path, owner);
    rm_as(owner, path);
    let rec = daemon.wait_record(path, "held");
    (holder, rec)
}

/// Waits until readers other than the owner may see `rec` (the file worker
/// has learned its directories), as `reader` would.
fn wait_readable(daemon: &Daemon, reader: &User, rec: &Value) {
    wait_until(&format!("record {} readable by uid {}", rec["id"], reader.uid), || {
        daemon.cli_as(reader, &["show", &rec["id"].to_string()]).status.success()
    });
}

#[test]
fn users_see_and_restore_only_their_own_deleted_files() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = shared_fs();
    let home = dir_of(&fs.path, "alice", &alice, 0o700);
    let data = content("alice's diary");
    let secret = file_of(&home, "diary.txt", &alice, 0o600, &data);

    let daemon = Daemon::start();
    let (holder, rec) = held_and_deleted(&daemon, &secret, &alice);
    assert_eq!(rec["uid"], alice.uid);
    assert_hidden(&daemon, &bob, &rec);

    // Alice: restored with her own rights, as her own file.
    let back = home.join("diary.restored");
    let out = daemon.cli_as(&alice, &["restore", &rec["id"].to_string(), "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&back).unwrap(), data);
    let meta = fs::metadata(&back).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (alice.uid, 0o600));

    // She cannot restore into a place she could not write herself: the CLI,
    // not the root daemon, writes the file.
    let out = daemon.cli_as(&alice, &["restore", &rec["id"].to_string(), "--to", "/root/diary"]);
    assert!(!out.status.success());
    assert!(!Path::new("/root/diary").exists());
    drop(holder);
}

#[test]
fn by_default_no_one_but_the_owner_sees_a_file_readers_may_when_allowed() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = shared_fs();
    let open = dir_of(&fs.path, "open", &alice, 0o755);
    let data = content("public");
    let public = file_of(&open, "public.txt", &alice, 0o644, &data);
    {
        let daemon = Daemon::start();
        let (holder, rec) = held_and_deleted(&daemon, &public, &alice);
        assert_hidden(&daemon, &bob, &rec);
        assert_visible(&daemon, &alice, &rec, &data);
        drop(holder);
    }
    let public = file_of(&open, "public.txt", &alice, 0o644, &data);
    let (_config, daemon) = Daemon::with_config(READERS, &[]);
    let (holder, rec) = held_and_deleted(&daemon, &public, &alice);
    wait_readable(&daemon, &bob, &rec);
    assert_visible(&daemon, &bob, &rec, &data);
    // Anyone may ask for the status.
    assert!(daemon.cli_as(&bob, &["status"]).status.success());
    drop(holder);
}

#[test]
fn a_readable_file_in_a_private_directory_stays_private() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = shared_fs();
    // Debian 12 makes home directories 0700; the file inside is 0644.
    let home = dir_of(&fs.path, "home-alice", &alice, 0o700);
    let data = content("in a private directory");
    let inside = file_of(&home, "notes.txt", &alice, 0o644, &data);
    // The same, in a directory anyone may search: the control.
    let open = dir_of(&fs.path, "open", &alice, 0o755);
    let outside = file_of(&open, "notes.txt", &alice, 0o644, &data);

    let (_config, daemon) = Daemon::with_config(READERS, &[]);
    let (holder_in, private) = held_and_deleted(&daemon, &inside, &alice);
    let (holder_out, public) = held_and_deleted(&daemon, &outside, &alice);
    wait_readable(&daemon, &bob, &public);
    assert_visible(&daemon, &bob, &public, &data);
    assert_hidden(&daemon, &bob, &private);
    assert_visible(&daemon, &alice, &private, &data);
    drop((holder_in, holder_out));
}

#[test]
fn an_acl_that_denies_a_user_is_honoured_and_one_that_grants_too() {
    let alice = User::ensure("unrm-test-alice");
    let (bob, carol) = (User::ensure("unrm-test-bob"), User::ensure("unrm-test-carol"));
    let fs = shared_fs();
    let open = dir_of(&fs.path, "open", &alice, 0o755);
    let data = content("acl");
    // 0644, but bob may not read it (user:bob:---).
    let denied = file_of(&open, "denied.txt", &alice, 0o644, &data);
    set_acl(
        &denied,
        &[
            (acl::USER_OBJ, 6, 0),
            (acl::USER, 0, bob.uid),
            (acl::GROUP_OBJ, 4, 0),
            (acl::MASK, 4, 0),
            (acl::OTHER, 4, 0),
        ],
    );
    // 0600, but bob may (user:bob:r--).
    let granted = file_of(&open, "granted.txt", &alice, 0o600, &data);
    set_acl(
        &granted,
        &[
            (acl::USER_OBJ, 6, 0),
            (acl::USER, 4, bob.uid),
            (acl::GROUP_OBJ, 0, 0),
            (acl::MASK, 4, 0),
            (acl::OTHER, 0, 0),
        ],
    );

    let (_config, daemon) = Daemon::with_config(READERS, &[]);
    let (holder_d, denied) = held_and_deleted(&daemon, &denied, &alice);
    let (holder_g, granted) = held_and_deleted(&daemon, &granted, &alice);
    wait_readable(&daemon, &carol, &denied);
    assert_visible(&daemon, &carol, &denied, &data);
    assert_hidden(&daemon, &bob, &denied);
    wait_readable(&daemon, &bob, &granted);
    assert_visible(&daemon, &bob, &granted, &data);
    assert_hidden(&daemon, &carol, &granted);
    drop((holder_d, holder_g));
}

#[test]
fn a_chmod_after_the_deletion_hides_the_held_file_again() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = shared_fs();
    let open = dir_of(&fs.path, "open", &alice, 0o755);
    let data = content("readable at first");
    let path = file_of(&open, "draft.txt", &alice, 0o644, &data);
    let (_config, daemon) = Daemon::with_config(READERS, &[]);
    let (mut holder, rec) = held_and_deleted(&daemon, &path, &alice);
    wait_readable(&daemon, &bob, &rec);
    assert_visible(&daemon, &bob, &rec, &data);

    // The owner's program makes it private and writes a secret into it.
    holder.chmod(0o600);
    holder.append("the secret written after the chmod");
    assert_hidden(&daemon, &bob, &rec);
    let mut now = data.clone();
    now.extend_from_slice(b"the secret written after the chmod");
    assert_visible(&daemon, &alice, &rec, &now);
    // Captured as it was at the end, it stays hidden.
    holder.exit();
    daemon.wait_record(&path, "captured");
    assert_hidden(&daemon, &bob, &rec);
    assert_visible(&daemon, &alice, &rec, &now);
}

#[test]
fn scan_shows_other_users_processes_without_their_descriptors() {
    let bob = User::ensure("unrm-test-bob");
    let fs = shared_fs();
    let home = dir_of(&fs.path, "bob", &bob, 0o755);
    let path = file_of(&home, "shared.log", &bob, 0o644, b"held by two");
    let theirs = fs.file("root-only", b"root's");
    let daemon = Daemon::start();
    let root_holder = Holder::fd(&path);
    let bob_holder = Holder::fd_as(&path, &bob);
    let root_file = Holder::fd(&theirs);
    rm_as(&bob, &path);
    unrm_tests::rm(&theirs, None);
    daemon.wait_record(&path, "held");
    daemon.wait_record(&theirs, "held");

    let out = daemon.cli_as(&bob, &["scan", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = files.as_array().unwrap();
    assert!(!files.iter().any(|f| f["path"] == theirs.to_str().unwrap()), "root's file in bob's scan");
    let entry = files.iter().find(|f| f["path"] == path.to_str().unwrap()).expect("bob's own file");
    let holders = entry["holders"].as_array().unwrap();
    let of = |pid: u32| holders.iter().find(|h| h["pid"] == pid).unwrap_or_else(|| panic!("{entry}"));
    assert!(of(bob_holder.pid())["fd"].is_u64(), "bob's own process: {entry}");
    assert!(
        of(root_holder.pid()).get("fd").is_none_or(Value::is_null),
        "root's descriptor number leaked: {entry}"
    );
    drop((root_holder, bob_holder, root_file));
}

#[test]
fn attributes_only_root_may_read_stay_with_root() {
    let alice = User::ensure("unrm-test-alice");
    let fs = shared_fs();
    let home = dir_of(&fs.path, "alice", &alice, 0o755);
    let path = file_of(&home, "tagged", &alice, 0o644, b"tagged");
    for (name, value) in [("user.note", "kept"), ("trusted.secret", "root's eyes only")] {
        let out = Command::new("setfattr").args(["-n", name, "-v", value]).arg(&path).output();
        let ok = out.as_ref().is_ok_and(|o| o.status.success());
        if !ok {
            let c = |s: &str| std::ffi::CString::new(s).unwrap();
            let (p, n) = (c(path.to_str().unwrap()), c(name));
            // SAFETY: valid C strings and a buffer of the length given.
            let ret =
                unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
            assert_eq!(ret, 0, "setxattr {name}: {}", std::io::Error::last_os_error());
        }
    }
    let daemon = Daemon::start();
    let (holder, rec) = held_and_deleted(&daemon, &path, &alice);
    let restore = |daemon: &Daemon, to: &Path| {
        let out = daemon.cli_as(&alice, &["restore", &rec["id"].to_string(), "--to", to.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("trusted"), "a root-only attribute reached uid {}: {stderr}", alice.uid);
        assert_eq!(xattr(to, "user.note").as_deref(), Some(&b"kept"[..]));
    };
    restore(&daemon, &home.join("while-held"));
    holder.exit();
    daemon.wait_record(&path, "captured");
    restore(&daemon, &home.join("captured"));
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (p, n) = (c(path.to_str().unwrap()), c(name));
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| buf[..len as usize].to_vec())
}

#[test]
fn a_directory_made_again_says_nothing_of_who_could_read_the_file() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = shared_fs();
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o1777)).unwrap();
    let work = dir_of(&fs.path, "work", &alice, 0o700);
    let data = content("private, then not");
    let path = file_of(&work, "notes.txt", &alice, 0o644, &data);
    // Deleted in alice's private directory, which she then removes; bob
    // makes a searchable one at the same path before unrm looks.
    let holder = Holder::fd_as(&path, &alice);
    rm_as(&alice, &path);
    assert!(alice.run(Command::new("rmdir").arg(&work)).status.success());
    assert!(bob.run(Command::new("mkdir").args(["-m", "755"]).arg(&work)).status.success());
    let (_config, daemon) = Daemon::with_config(READERS, &[]);
    // The file worker's inspection decides, just after the record appears.
    daemon.wait_record(&path, "held");
    let mut rec = Value::Null;
    wait_until("the re-made directory marks the path unverified", || {
        rec = daemon.wait_record(&path, "held");
        rec["path_resolved"] == false
    });
    assert_hidden(&daemon, &bob, &rec);
    assert_visible(&daemon, &alice, &rec, &data);
    drop(holder);
}
