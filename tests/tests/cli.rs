//! The CLI on its own: `scan` without a daemon, bad input of every kind
//! answered with one clear line and a nonzero exit, and its output for a
//! person at a terminal and for a pipe.

use std::{
    os::unix::{
        fs::{MetadataExt, OpenOptionsExt},
        process::CommandExt,
    },
    process::Command,
};

use unrm_tests::{Daemon, Holder, Mount, assert_one_line_error, rm, unrm_bin};

#[test]
fn scan_works_without_the_daemon() {
    let fs = Mount::ext4();
    let path = fs.file("scanned", b"held and deleted");
    let ino = std::fs::metadata(&path).unwrap().ino();
    let holder = Holder::fd(&path);
    let mapper = Holder::mmap(&path);
    rm(&path, None);

    let socket = tempfile::tempdir().unwrap();
    let out = Command::new(unrm_bin())
        .args(["scan", "--json"])
        .env("UNRM_SOCKET", socket.path().join("nothing-here.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = files
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["ino"] == ino)
        .unwrap_or_else(|| panic!("inode {ino} not in {files}"));
    assert_eq!(entry["path"], path.to_str().unwrap());
    assert_eq!(entry["size"], 16);
    let holders = entry["holders"].as_array().unwrap();
    assert!(holders.iter().any(|h| h["pid"] == holder.pid() && h["kind"] == "fd" && h["fd"].is_u64()));
    assert!(holders.iter().any(|h| h["pid"] == mapper.pid() && h["kind"] == "mmap" && h["map"].is_string()));

    let text = Command::new(unrm_bin()).arg("scan").output().unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(path.to_str().unwrap()));
}

#[test]
fn scan_skips_what_was_never_a_users_file() {
    // A memfd (kernel-internal mount) and an O_TMPFILE (never named) are both
    // unlinked regular files held by this process.
    let name = std::ffi::CString::new("unrm-test-memfd").unwrap();
    // SAFETY: a valid name; the fd is closed at the end of the test.
    let memfd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(memfd >= 0);
    let fs = Mount::ext4();
    let tmpfile = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(&fs.path)
        .unwrap();
    let out = Command::new(unrm_bin()).args(["scan", "--json"]).output().unwrap();
    assert!(out.status.success());
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = std::process::id();
    let mine: Vec<_> = files
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["holders"].as_array().unwrap().iter().any(|h| h["pid"] == me))
        .collect();
    assert!(mine.is_empty(), "memfd or O_TMPFILE reported: {mine:?}");
    drop(tmpfile);
    // SAFETY: closing the memfd this test opened.
    unsafe { libc::close(memfd) };
}

#[test]
fn unknown_ids_and_bad_arguments() {
    let daemon = Daemon::start();
    assert_one_line_error(&daemon.cli(&["show", "987654321"]), "no record with id 987654321");
    assert_one_line_error(&daemon.cli(&["restore", "987654321"]), "no record with id 987654321");
    assert_one_line_error(&daemon.cli(&["show", "abc"]), "invalid value 'abc'");
    assert_one_line_error(&daemon.cli(&["list", "--since", "yesterday-ish"]), "--since");
    assert_one_line_error(&daemon.cli(&["list", "--status", "gone"]), "unknown status");
    assert_one_line_error(&daemon.cli(&["list", "--path", "[unclosed"]), "--path");
    assert_one_line_error(&daemon.cli(&["frobnicate"]), "frobnicate");
    // The daemon is still serving after all that.
    assert!(daemon.cli(&["status"]).status.success());
}

#[test]
fn daemon_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("unrm.sock");
    for args in [&["list"][..], &["status"], &["show", "1"], &["restore", "1"]] {
        let out = Command::new(unrm_bin()).arg("--socket").arg(&socket).args(args).output().unwrap();
        assert_one_line_error(&out, "daemon is not running");
    }
}

#[test]
fn not_root() {
    let nobody = |args: &[&str], socket: &std::path::Path| {
        let mut cmd = Command::new(unrm_bin());
        cmd.arg("--socket").arg(socket).args(args).uid(65534).gid(65534);
        cmd.output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("none.sock");
    assert_one_line_error(&nobody(&["scan"], &nowhere), "must run as root");
    assert_one_line_error(&nobody(&["daemon", "--state-dir", "/nonexistent"], &nowhere), "must run as root");
    // With a daemon, everyone may ask; what they see is filtered (users.rs).
    let daemon = Daemon::start();
    assert!(nobody(&["list"], &daemon.socket).status.success());
    assert!(nobody(&["scan"], &daemon.socket).status.success());
}

#[test]
fn a_second_daemon_is_refused() {
    let first = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(unrm_bin())
        .args(["daemon", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "another unrm daemon is running");
    assert!(first.cli(&["status"]).status.success());
}

#[test]
fn restore_destinations_with_dot_dot_and_symlinks() {
    let fs = Mount::ext4();
    let path = fs.file("target", b"content");
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    rm(&path, None);
    let rec = daemon.wait_record(&path, "held");
    let id = rec["id"].to_string();
    let restore = |to: &std::path::Path, force: bool| {
        let mut args = vec!["restore", id.as_str(), "--to", to.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        daemon.cli(&args)
    };
    // `..` is resolved by the kernel like any path; a missing directory is
    // one clear error.
    let sub = fs.path.join("sub");
    std::fs::create_dir(&sub).unwrap();
    assert!(restore(&sub.join("../via-dot-dot"), false).status.success());
    assert_eq!(std::fs::read(fs.path.join("via-dot-dot")).unwrap(), b"content");
    assert_one_line_error(&restore(&fs.path.join("missing/../../nowhere/x"), false), "does not exist");
    // A dangling symlink is something: refused, then replaced (not followed).
    let link = fs.path.join("dangling");
    std::os::unix::fs::symlink(fs.path.join("points-nowhere"), &link).unwrap();
    assert_one_line_error(&restore(&link, false), "already exists");
    assert!(restore(&link, true).status.success());
    assert!(!fs.path.join("points-nowhere").exists());
    assert_eq!(std::fs::read(&link).unwrap(), b"content");
    drop(holder);
}

#[test]
fn a_state_directory_another_user_could_touch_is_refused() {
    let bob = unrm_tests::User::ensure("unrm-test-bob");
    let dir = tempfile::tempdir().unwrap();
    let start = |state: &std::path::Path| {
        Command::new(unrm_bin())
            .args(["daemon", "--state-dir"])
            .arg(state)
            .arg("--socket")
            .arg(dir.path().join("sock"))
            .output()
            .unwrap()
    };
    // Made first by an ordinary user (say under /tmp).
    let theirs = dir.path().join("bobs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(bob.uid), Some(bob.gid)).unwrap();
    assert_one_line_error(&start(&theirs), &format!("owned by uid {}", bob.uid));
    // Root's, but open to others.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o770)).unwrap();
    assert_one_line_error(&start(&open), "mode 0770");
    // Inside a directory a user may rename things in.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::os::unix::fs::chown(&shared, Some(bob.uid), Some(bob.gid)).unwrap();
    assert_one_line_error(&start(&shared.join("state")), "owned by uid");
    // A link to a good one is not followed.
    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    assert_one_line_error(&start(&link), "symbolic link");
}

/// The everyday forms: a restore by path (the newest record of it that
/// still has its content, the path relative to the current directory), a
/// listing relative to the current directory, and absolute times.
#[test]
fn restore_by_path_and_list_from_here_and_between_times() {
    let fs = Mount::ext4();
    let dir = fs.path.join("proj");
    std::fs::create_dir(&dir).unwrap();
    let daemon = Daemon::start();
    let here = |args: &[&str]| {
        let mut cmd = Command::new(unrm_bin());
        cmd.current_dir(&dir).arg("--socket").arg(&daemon.socket).args(args).output().unwrap()
    };
    let listed = |args: &[&str]| -> Vec<serde_json::Value> {
        let out = here(args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    };
    let notes = dir.join("notes.txt");
    let mut between = String::new();
    for (i, content) in [&b"first"[..], b"second"].into_iter().enumerate() {
        std::fs::write(&notes, content).unwrap();
        let holder = Holder::fd(&notes);
        rm(&notes, None);
        daemon.wait_record(&notes, "held");
        holder.exit();
        daemon.wait_record(&notes, "captured");
        if i == 0 {
            between = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        }
    }
    let gone = fs.file("proj/gone", b"x");
    rm(&gone, None);
    daemon.wait_record(&gone, "unheld");

    let out = here(&["restore", "--path", "notes.txt"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&notes).unwrap(), b"second", "the newest record with content");
    assert_one_line_error(&here(&["restore", "--path", "./gone"]), "no record with its content");
    assert_one_line_error(&here(&["restore", "--path", "never-here"]), "no deletion of this path");
    assert_one_line_error(&here(&["restore"]), "--path");

    assert_eq!(listed(&["list", "--json", "--path", "."]).len(), 3);
    assert_eq!(listed(&["list", "--json", "--path", "*.txt"]).len(), 2);
    assert_eq!(listed(&["list", "--json", "--path", "../proj/gone"]).len(), 1);
    let older = listed(&["list", "--json", "--path", "*.txt", "--until", &between]);
    let newer = listed(&["list", "--json", "--path", "*.txt", "--since", &between]);
    assert_eq!((older.len(), newer.len()), (1, 1), "{older:?} {newer:?}");
    assert!(older[0]["id"].as_i64() < newer[0]["id"].as_i64());
    assert_one_line_error(&here(&["list", "--since", "last tuesday"]), "not a duration");
}

/// `--btf` reads the kernel's BTF from a file of one's choosing (a kernel
/// that keeps it elsewhere); a missing or bad one is one line naming it.
#[test]
fn the_kernels_btf_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("vmlinux.btf");
    std::fs::copy("/sys/kernel/btf/vmlinux", &copy).unwrap();
    let daemon = Daemon::start_in(tempfile::tempdir().unwrap(), &["--btf", copy.to_str().unwrap()]);
    assert!(daemon.status()["probes"]["attached"].as_bool().unwrap());
    drop(daemon);

    let garbage = dir.path().join("garbage.btf");
    std::fs::write(&garbage, b"not BTF at all, not even close to it").unwrap();
    let missing = dir.path().join("missing.btf");
    for (path, says) in [(&missing, "missing.btf"), (&garbage, "garbage.btf: not little-endian BTF")] {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(unrm_bin())
            .args(["--socket", dir.path().join("s.sock").to_str().unwrap(), "daemon", "--state-dir"])
            .arg(state.path().join("state"))
            .arg("--btf")
            .arg(path)
            .output()
            .unwrap();
        assert_one_line_error(&out, says);
    }

    // The config's `btf` does the same, and --btf wins over it.
    let config = dir.path().join("unrm.toml");
    std::fs::write(&config, format!("btf = {:?}\n", missing.to_str().unwrap())).unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(unrm_bin())
        .args(["--socket", dir.path().join("s.sock").to_str().unwrap(), "daemon", "--state-dir"])
        .arg(state.path().join("state"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_one_line_error(&out, "missing.btf");
    let with = format!("btf = {:?}\n", missing.to_str().unwrap());
    let (_dir, daemon) = Daemon::with_config(&with, &["--btf", copy.to_str().unwrap()]);
    assert!(daemon.status()["probes"]["attached"].as_bool().unwrap());
}

/// `restore --all` with the listing's filters: everything one process
/// deleted comes back, one line per record; what cannot be restored is
/// said per record, the rest still restored, and the exit is nonzero.
#[test]
fn restore_all_brings_back_what_one_process_deleted() {
    let fs = Mount::ext4();
    let daemon = Daemon::start();
    let files: Vec<_> = ["a", "b", "c"].iter().map(|n| fs.file(n, n.as_bytes())).collect();
    let holders: Vec<Holder> = files.iter().map(|f| Holder::fd(f)).collect();
    let mut both = Command::new("rm").args([&files[0], &files[1]]).spawn().unwrap();
    let pid = both.id().to_string();
    assert!(both.wait().unwrap().success());
    rm(&files[2], None);
    for f in &files {
        daemon.wait_record(f, "held");
    }
    let out = daemon.cli(&["restore", "--all", "--pid", &pid]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    assert_eq!(
        (std::fs::read(&files[0]).unwrap(), std::fs::read(&files[1]).unwrap()),
        (b"a".to_vec(), b"b".to_vec())
    );
    assert!(!files[2].exists(), "deleted by another process");

    // Both are back: neither is replaced without --force.
    let again = daemon.cli(&["restore", "--all", "--pid", &pid]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.lines().filter(|l| l.starts_with("unrm: record ")).count(), 2, "{stderr}");
    assert!(stderr.contains("2 of 2 records not restored"), "{stderr}");
    assert_one_line_error(&daemon.cli(&["restore", "--all", "--pid", "1"]), "no record with its content");
    assert_one_line_error(&daemon.cli(&["restore", "--pid", "1"]), "--all");
    drop(holders);
}

/// What a package ships beside the binary, made from the command line's
/// own definitions: man pages that `man` renders, and completion scripts
/// a shell loads.
#[test]
fn man_pages_and_completions_come_from_the_cli_itself() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(unrm_bin()).args(["generate", "man"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["unrm", "unrm-daemon", "unrm-list", "unrm-show", "unrm-restore", "unrm-scan", "unrm-status"]
    {
        let file = dir.path().join(format!("{page}.1"));
        let rendered = Command::new("man").arg("-l").arg(&file).env("MANWIDTH", "100").output().unwrap();
        let text = String::from_utf8_lossy(&rendered.stdout);
        assert!(rendered.status.success() && text.contains(page), "{page}: {text}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(unrm_bin()).args(["generate", "completions", shell]).output().unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let script = dir.path().join("unrm.bash");
    let out = Command::new(unrm_bin()).args(["generate", "completions", "bash"]).output().unwrap();
    std::fs::write(&script, out.stdout).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p unrm", script.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("unrm"), "{loaded:?}");
    assert_one_line_error(
        &Command::new(unrm_bin()).args(["generate", "completions", "tcsh"]).output().unwrap(),
        "tcsh",
    );
}

/// `unrm ARGS` against `daemon` on a terminal (util-linux `script` gives it
/// a pty of `cols` columns), in India's time zone (+05:30, no daylight
/// saving), with a terminal that can colour; `env` on top. What it printed,
/// without the pty's carriage returns.
fn on_a_terminal(daemon: &Daemon, args: &str, cols: u16, env: &[(&str, &str)]) -> String {
    let command =
        format!("stty cols {cols} && {} --socket {} {args}", unrm_bin().display(), daemon.socket.display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("COLUMNS")
        .env("TERM", "xterm-256color")
        .env("TZ", "Asia/Kolkata")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "unrm {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().replace('\r', "")
}

/// A line as it shows: without its colour (`ESC [ ... m`).
fn visible(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let end = rest[at..].find('m').expect("an SGR sequence");
        rest = &rest[at + end + 1..];
    }
    out + rest
}

/// `deleted_at` of a record (RFC 3339 from `--json`) as `unrm list` shows
/// it on a terminal in +05:30, and as it shows it piped (UTC, seconds).
fn shown_times(record: &serde_json::Value) -> (String, String) {
    let at = humantime::parse_rfc3339(record["deleted_at"].as_str().unwrap()).unwrap();
    let utc = humantime::format_rfc3339_seconds(at).to_string();
    let local = humantime::format_rfc3339_seconds(at + std::time::Duration::from_secs(19_800)).to_string();
    (local[..19].replace('T', " "), utc)
}

/// For a person at a terminal, `unrm list`: local times, the status in
/// colour, every line within the terminal's width (the path wraps);
/// NO_COLOR or TERM=dumb take the colour away. Piped, the same listing is
/// plain: RFC 3339 times, no escape sequences, every path whole on its
/// line. A name carrying an escape sequence is shown escaped in all of them.
#[test]
fn list_on_a_terminal_and_through_a_pipe() {
    let fs = Mount::ext4();
    let deep = fs.path.join("a-rather-long-directory-name/and-another-one-below-it");
    std::fs::create_dir_all(&deep).unwrap();
    let held = deep.join("notes.txt");
    std::fs::write(&held, b"kept").unwrap();
    let evil = fs.file("evil\x1b[31mname", b"x");
    let daemon = Daemon::start();
    let holder = Holder::fd(&held);
    rm(&held, None);
    rm(&evil, None);
    let record = daemon.wait_record(&held, "held");
    daemon.wait_record(&evil, "unheld");
    let (local, utc) = shown_times(&record);
    let escaped = format!("{}/evil\\u{{1b}}[31mname", fs.path.display());

    let piped = daemon.cli(&["list"]);
    let piped = String::from_utf8(piped.stdout).unwrap();
    assert!(!piped.contains('\x1b'), "escape sequences in piped output: {piped:?}");
    let line = piped.lines().find(|l| l.ends_with(held.to_str().unwrap())).expect(&piped);
    assert!(line.contains(&utc) && line.contains(" held "), "{line}");
    assert!(piped.lines().any(|l| l.ends_with(&escaped)), "{piped}");

    let tty = on_a_terminal(&daemon, "list", 60, &[]);
    assert!(!tty.contains("\x1b[31mname"), "the name's escape sequence got through: {tty:?}");
    for line in tty.lines() {
        assert!(visible(line).chars().count() <= 60, "wider than the terminal: {line:?}\n{tty}");
    }
    let row = tty.lines().find(|l| visible(l).contains(" held ")).unwrap_or_else(|| panic!("{tty}"));
    assert!(visible(row).contains(&local) && !tty.contains(&utc), "not local time: {tty}");
    assert!(row.contains("\x1b[") && !visible(row).contains('\x1b'), "held not coloured: {row:?}");
    // Wrapped, the path is still all there (the column starts where PATH does).
    let column = visible(tty.lines().next().unwrap()).find("PATH").unwrap();
    let wrapped: String = tty.lines().map(|l| visible(l).get(column..).unwrap_or("").to_string()).collect();
    assert!(wrapped.contains(held.to_str().unwrap()), "{wrapped}");
    assert!(wrapped.contains(&escaped), "{wrapped}");

    let wide = on_a_terminal(&daemon, "list", 200, &[("COLUMNS", "200")]);
    assert!(wide.lines().any(|l| visible(l).ends_with(&escaped)), "{wide}");
    for env in [("NO_COLOR", "1"), ("TERM", "dumb")] {
        let plain = on_a_terminal(&daemon, "list", 200, &[env]);
        assert!(!plain.contains('\x1b'), "{env:?}: {plain:?}");
        assert!(plain.contains(&local), "{env:?} is still a terminal: {plain}");
    }
    // COLUMNS wins over the terminal's own width.
    let narrow = on_a_terminal(&daemon, "list", 200, &[("COLUMNS", "70")]);
    assert!(narrow.lines().all(|l| visible(l).chars().count() <= 70), "{narrow}");
    assert!(narrow.lines().any(|l| visible(l).chars().count() > 60), "{narrow}");
    drop(holder);
}

/// `unrm show` on a terminal gives local times with their offset; piped,
/// RFC 3339. `unrm scan` fits its terminal too.
#[test]
fn show_and_scan_on_a_terminal() {
    let fs = Mount::ext4();
    let path = fs.file(&"a-file-with-a-long-name-".repeat(4), b"held");
    let daemon = Daemon::start();
    let holder = Holder::fd(&path);
    rm(&path, None);
    let record = daemon.wait_record(&path, "held");
    let (local, utc) = shown_times(&record);
    let id = record["id"].to_string();

    let shown = on_a_terminal(&daemon, &format!("show {id}"), 80, &[]);
    let deleted = shown.lines().find(|l| l.starts_with("deleted:")).expect(&shown);
    assert!(deleted.contains(&format!("{local} +05:30")), "{deleted}");
    assert!(shown.contains("\x1b[32mheld\x1b[0m"), "{shown:?}");
    let piped = String::from_utf8(daemon.cli(&["show", &id]).stdout).unwrap();
    assert!(piped.contains(&utc) && !piped.contains('\x1b'), "{piped}");

    let scan = on_a_terminal(&daemon, "scan", 70, &[]);
    assert!(scan.lines().any(|l| l.contains(&holder.pid().to_string())), "{scan}");
    for line in scan.lines() {
        assert!(visible(line).chars().count() <= 70, "wider than the terminal: {line:?}\n{scan}");
    }
    let piped = String::from_utf8(daemon.cli(&["scan"]).stdout).unwrap();
    assert!(piped.lines().any(|l| l.ends_with(path.to_str().unwrap())), "{piped}");
    drop(holder);
}
