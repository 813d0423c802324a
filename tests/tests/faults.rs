//! Faults and hostile input: a daemon killed mid-capture, a store that
//! fills up, and garbage on the socket. After each, the index opens, every
//! record is consistent, nothing partial is presented as complete, and the
//! daemon keeps serving.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use serde_json::Value;
use unrm_tests::{Daemon, Holder, Mount, content, rm};

/// Sends one frame and reads one back.
fn exchange(stream: &mut UnixStream, body: &[u8]) -> Value {
    stream.write_all(&(body.len() as u32).to_le_bytes()).unwrap();
    stream.write_all(body).unwrap();
    read_frame(stream)
}

fn read_frame(stream: &mut UnixStream) -> Value {
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(header) as usize];
    stream.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn garbage_on_the_socket_gets_an_error_and_the_daemon_keeps_serving() {
    let daemon = Daemon::start();
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    for garbage in [&b"not json"[..], b"{\"op\":\"drop_tables\"}", b"{\"op\":\"show\",\"id\":\"x\"}", b""] {
        let answer = exchange(&mut s, garbage);
        assert_eq!(answer["type"], "error", "{answer}");
        assert!(answer["message"].as_str().unwrap().contains("malformed request"), "{answer}");
    }
    // The same connection still serves a good request.
    let answer = exchange(&mut s, br#"{"op":"status"}"#);
    assert_eq!(answer["type"], "status");

    // An oversized frame is refused before anything is read of it.
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.write_all(&(64u32 << 20).to_le_bytes()).unwrap();
    let answer = read_frame(&mut s);
    assert!(answer["message"].as_str().unwrap().contains("over the"), "{answer}");

    // Truncated frames and half headers, then hang-ups.
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.write_all(&100u32.to_le_bytes()).unwrap();
    s.write_all(b"{\"op\":").unwrap();
    drop(s);
    let mut s = UnixStream::connect(&daemon.socket).unwrap();
    s.write_all(&[7, 0]).unwrap();
    drop(s);

    let out = daemon.cli(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Files nobody else can read, under the store.
fn store_files(state: &Path) -> Vec<String> {
    fs::read_dir(state.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn killed_during_capture_many_times_the_index_stays_consistent() {
    let fs = Mount::ext4_sized(&std::env::temp_dir(), 512 << 20);
    let mut dir = tempfile::tempdir().unwrap();
    let data = content("crash").repeat(400); // ~28 MiB: a capture takes a while
    for round in 0..8u64 {
        let daemon = Daemon::start_in(dir, &[]);
        let path = fs.path.join(format!("big-{round}"));
        fs::write(&path, &data).unwrap();
        let holder = Holder::fd(&path);
        rm(&path, None);
        daemon.wait_record(&path, "held");
        holder.exit();
        // Kill at a different moment of the capture each round (the
        // fault's timing is the point here, not a synchronisation).
        std::thread::sleep(std::time::Duration::from_millis(round * 7 % 40));
        let state = daemon.state_dir.clone();
        dir = daemon.kill();

        let daemon = Daemon::start_in(dir, &[]);
        assert!(
            !store_files(&state).iter().any(|f| f.ends_with(".partial")),
            "a partial copy survived a restart"
        );
        let rec =
            daemon.json(&["list", "--json", "--limit", "0", "--path", path.to_str().unwrap()])[0].clone();
        match rec["status"].as_str().unwrap() {
            // Whatever is captured is whole: restore checks the checksum.
            "captured" => {
                let rec = daemon.wait_show(&rec["id"], |r| r["checksum"].is_string());
                let back = fs.path.join(format!("back-{round}"));
                let out = daemon.cli(&["restore", &rec["id"].to_string(), "--to", back.to_str().unwrap()]);
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                assert_eq!(fs::read(&back).unwrap(), data);
                fs::remove_file(&back).unwrap();
            }
            // The holder let go while no daemon held a pin: said so.
            "missed" => assert!(rec["reason"].as_str().unwrap().contains("not running"), "{rec}"),
            other => panic!("round {round}: record left {other}: {rec}"),
        }
        dir = daemon.kill();
    }
}

/// Size and free bytes (root may use the reserved ones) of the filesystem.
fn space(path: &Path) -> (u64, u64) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path and a zeroed out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    (st.f_blocks * st.f_frsize, st.f_bfree * st.f_frsize)
}

#[test]
fn a_full_store_fails_the_capture_and_keeps_what_it_had() {
    let files = Mount::ext4();
    let tiny = Mount::ext4_sized(&std::env::temp_dir(), 8 << 20);
    // No floor, so that the copy is attempted and the filesystem itself
    // runs out (the policy's own bounds are tested in policy.rs).
    let config = tiny.path.join("unrm.toml");
    fs::write(&config, "min_free = \"0%\"\n").unwrap();
    let daemon =
        Daemon::start_in(tempfile::tempdir_in(&tiny.path).unwrap(), &["--config", config.to_str().unwrap()]);

    let small = files.file("small", b"kept safe");
    let holder = Holder::fd(&small);
    rm(&small, None);
    daemon.wait_record(&small, "held");
    holder.exit();
    let kept = daemon.wait_record(&small, "captured");

    // Larger than what is free, smaller than the filesystem: the copy starts.
    let (total, free) = space(&tiny.path);
    let big = files.file("big", &vec![7u8; (free + (total - free) / 2) as usize]);
    let holder = Holder::fd(&big);
    rm(&big, None);
    daemon.wait_record(&big, "held");
    holder.exit();
    let failed = daemon.wait_record(&big, "failed");
    assert!(failed["reason"].as_str().unwrap().contains("No space left"), "{failed}");
    assert!(!store_files(&daemon.state_dir).iter().any(|f| f.ends_with(".partial")));

    let back = files.path.join("small.back");
    let out = daemon.cli(&["restore", &kept["id"].to_string(), "--to", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(&back).unwrap(), b"kept safe");
    assert!(daemon.cli(&["status"]).status.success());
}
