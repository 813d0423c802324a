//! A restore cannot be aimed: a record's path is whatever its deleter
//! named, so root putting a file back where it was must never write where
//! an ordinary user chose. Paths the host cannot vouch for need `--to`, no
//! symbolic link is followed on the way, another user's file is written
//! with that user's rights, and what is printed cannot carry escape
//! sequences to the terminal.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::{
        fs::{MetadataExt, PermissionsExt, chown},
        process::CommandExt,
    },
    path::Path,
    process::{Child, Command, Stdio},
};

use unrm_tests::{Daemon, Holder, Mount, User, assert_one_line_error, content, rm_as};

/// A process group to kill when the test is done, however it ends.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: signalling the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Whether `user` may make a user namespace here (a kernel may forbid it
/// to ordinary users, and nobody may inside a chroot, as in the VM).
fn may_make_namespaces(user: &User) -> bool {
    let out = user.run(Command::new("unshare").args(["--user", "--map-root-user", "true"]));
    out.status.success()
}

#[test]
fn a_path_made_up_in_another_namespace_is_not_restored_there() {
    let bob = User::ensure("unrm-test-bob");
    let forged = Path::new("/etc/unrm-test-forged");
    let _ = fs::remove_file(forged);
    let daemon = Daemon::start();
    // Bob, in a user and mount namespace of his own, mounts a tmpfs on /etc,
    // holds a file there and deletes it: the deleter named /etc/....
    let script = format!(
        "mount -t tmpfs forged /etc && echo evil > {p} && exec sh -c 'sleep 1000 < {p} & rm {p}; echo ready; wait'",
        p = forged.display()
    );
    let mut cmd = Command::new("unshare");
    if may_make_namespaces(&bob) {
        cmd.args(["--user", "--map-root-user"]);
        bob.apply(&mut cmd);
    } else {
        // No ordinary user may make namespaces here: the same forged path,
        // made in a mount namespace of root's own.
        eprintln!("note: bob may not make a user namespace here; the namespace is root's");
    }
    cmd.args(["--mount", "sh", "-c", &script]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let _group = Group(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    if line.trim() != "ready" {
        let mut why = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut why).unwrap();
        panic!("the namespace did not come up: {why}");
    }

    let rec = daemon.wait_record(forged, "held");
    // A snapshot may find the held file before its deletion event is read;
    // the event then tells the record where the file was deleted.
    let rec = daemon.wait_show(&rec["id"], |r| !r["deleted_by"].is_null());
    assert_eq!(rec["path_resolved"], false, "{rec}");
    let out = daemon.cli(&["restore", &rec["id"].to_string()]);
    assert_one_line_error(&out, "--to");
    assert!(!forged.exists(), "root wrote a path a user made up");
    // Restored where root says, it is what bob held.
    let to = tempfile::tempdir().unwrap();
    assert_eq!(daemon.restore_to(&rec["id"], &to.path().join("forged")), b"evil\n");
}

#[test]
fn no_symbolic_link_is_followed_on_the_way_back() {
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    // Root's file, in a directory bob may rename.
    let shared = fs.path.join("shared");
    fs::create_dir(&shared).unwrap();
    chown(&shared, Some(bob.uid), Some(bob.gid)).unwrap();
    let dir = shared.join("d");
    fs::create_dir(&dir).unwrap();
    let name = "unrm-test-aimed";
    let path = dir.join(name);
    fs::write(&path, b"root's").unwrap();
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    unrm_tests::rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    // Bob puts a link to /etc where the directory was.
    let out = bob.run(
        Command::new("sh").arg("-c").arg(format!("mv {d} {d}.old && ln -s /etc {d}", d = dir.display())),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = daemon.cli(&["restore", &rec["id"].to_string()]);
    assert!(!out.status.success(), "restored through a link");
    assert!(!Path::new("/etc").join(name).exists(), "root wrote into /etc through bob's link");
    drop(holder);
}

#[test]
fn root_puts_another_users_file_back_with_that_users_rights() {
    let bob = User::ensure("unrm-test-bob");
    let fs = Mount::ext4();
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    let srv = fs.path.join("srv");
    fs::create_dir(&srv).unwrap();
    fs::set_permissions(&srv, fs::Permissions::from_mode(0o777)).unwrap();
    let daemon = Daemon::start();
    let held = |name: &str| {
        let path = srv.join(name);
        fs::write(&path, content(name)).unwrap();
        chown(&path, Some(bob.uid), Some(bob.gid)).unwrap();
        let holder = Holder::fd_as(&path, &bob);
        rm_as(&bob, &path);
        (daemon.wait_record(&path, "held"), holder, path)
    };

    // Where bob may write: restored, as bob's own file.
    let (rec, _h1, path) = held("first");
    let out = daemon.cli(&["restore", &rec["id"].to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::metadata(&path).unwrap().uid(), bob.uid);

    // Where bob may no longer write: refused unless root insists.
    let (rec, _h2, path) = held("second");
    fs::set_permissions(&srv, fs::Permissions::from_mode(0o755)).unwrap();
    let out = daemon.cli(&["restore", &rec["id"].to_string()]);
    assert_one_line_error(&out, "--force");
    assert!(!path.exists());
    let out = daemon.cli(&["restore", &rec["id"].to_string(), "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&path).unwrap(), content("second"));
    assert_eq!(fs::metadata(&path).unwrap().uid(), bob.uid, "still bob's file");
}

#[test]
fn names_with_control_characters_are_printed_escaped() {
    let fs = Mount::ext4();
    let name = "evil\x1b[2J\x1b]0;owned\x07name";
    let path = fs.file(name, b"x");
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    unrm_tests::rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    let id = rec["id"].to_string();
    for args in [&["list"][..], &["show", &id], &["scan"]] {
        let out = daemon.cli(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("evil\\u{1b}[2J"), "{args:?} did not show the name escaped: {text}");
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{args:?} printed a raw control character");
    }
    // Errors too.
    fs::write(&path, b"in the way").unwrap();
    let out = daemon.cli(&["restore", &id]);
    assert_one_line_error(&out, "already exists");
    assert!(!String::from_utf8_lossy(&out.stderr).contains('\x1b'));
    drop(holder);
}

#[test]
fn a_directory_made_again_at_the_path_is_not_restored_into() {
    let (alice, bob) = (User::ensure("unrm-test-alice"), User::ensure("unrm-test-bob"));
    let fs = Mount::ext4();
    fs::set_permissions(fs.path.parent().unwrap(), fs::Permissions::from_mode(0o755)).unwrap();
    // A shared, sticky directory, as /tmp is.
    fs::set_permissions(&fs.path, fs::Permissions::from_mode(0o1777)).unwrap();
    let work = fs.path.join("work");
    let out = alice.run(Command::new("mkdir").args(["-m", "700"]).arg(&work));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = work.join("notes");
    let out = alice.run(Command::new("sh").arg("-c").arg(format!("echo mine > {}", path.display())));
    assert!(out.status.success());
    let daemon = Daemon::start();
    let holder = Holder::fd_as(&path, &alice);
    rm_as(&alice, &path);
    let rec = daemon.wait_record(&path, "held");
    // Alice's directory goes; bob makes one of his own at the same path.
    assert!(alice.run(Command::new("rmdir").arg(&work)).status.success());
    assert!(bob.run(Command::new("mkdir").args(["-m", "777"]).arg(&work)).status.success());

    for who in [Some(&alice), None] {
        let out = match who {
            Some(user) => daemon.cli_as(user, &["restore", &rec["id"].to_string()]),
            None => daemon.cli(&["restore", &rec["id"].to_string()]),
        };
        assert_one_line_error(&out, "--to");
        assert!(!path.exists(), "restored into bob's directory");
    }
    let to = tempfile::tempdir().unwrap();
    fs::set_permissions(to.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let back = to.path().join("notes");
    let out = daemon.cli_as(&alice, &["restore", &rec["id"].to_string(), "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&back).unwrap(), b"mine\n");
    drop(holder);
}
