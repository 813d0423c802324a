//! A process that holds files the way real programs do (or misbehaves the
//! way an attacker would), driven line by line on stdin so a test decides
//! exactly when it lets go:
//!
//!   holder fd PATH             open read-write and keep the descriptor
//!   holder read PATH           open read-only and keep the descriptor
//!   holder mmap PATH           map the file shared, then close the descriptor
//!   holder scratch PATH        open it, then delete it itself (a scratch file)
//!   holder scratch-many DIR N  create N files in DIR, open each, delete each
//!   holder connect SOCKET N    open N connections to a Unix socket, send nothing
//!   holder fail-unlink N       call unlink(2) N times on a path that does not exist
//!   holder idle -              hold nothing (until told to, see `scratch`)
//!   holder devnull - N         hold N descriptors (of /dev/null), for a machine with many open
//!
//! It prints `ready` once it holds what it holds. Commands: `append TEXT` (fd mode: write at the end), `chmod OCTAL` (fd
//! mode: fchmod the held descriptor), `exit`. End of input also exits.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead, Write},
    os::{
        fd::AsRawFd,
        unix::{fs::FileExt, net::UnixStream},
    },
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, arg) = match args.as_slice() {
        [_, mode, arg, ..] => (mode.as_str(), arg.as_str()),
        _ => usage(),
    };
    let count = || args.get(3).and_then(|n| n.parse::<usize>().ok()).unwrap_or_else(|| usage());
    let mut held = None;
    let mut many = Vec::new();
    match mode {
        "fd" | "scratch" => {
            held = Some(OpenOptions::new().read(true).write(true).open(arg).expect("open"));
            if mode == "scratch" {
                std::fs::remove_file(arg).expect("unlink");
            }
        }
        "read" => held = Some(File::open(arg).expect("open")),
        "mmap" => map(arg),
        "scratch-many" => {
            for i in 0..count() {
                let path = format!("{arg}/f{i}");
                let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path);
                let mut file = file.expect("create");
                file.write_all(b"scratch").unwrap();
                std::fs::remove_file(&path).expect("unlink");
                many.push(file);
            }
        }
        "devnull" => {
            raise_nofile();
            let null = File::open("/dev/null").expect("/dev/null");
            for _ in 1..count() {
                // SAFETY: duplicating a descriptor this process owns; the
                // duplicates live until the process exits.
                assert!(
                    unsafe { libc::dup(null.as_raw_fd()) } >= 0,
                    "dup: {}",
                    std::io::Error::last_os_error()
                );
            }
            held = Some(null);
        }
        "connect" => {
            raise_nofile();
            let conns: Vec<UnixStream> = (0..count()).filter_map(|_| UnixStream::connect(arg).ok()).collect();
            println!("ready");
            std::io::stdout().flush().unwrap();
            wait_for_exit(None);
            drop(conns);
            return;
        }
        "idle" => {}
        "fail-unlink" => {
            let path = std::ffi::CString::new("/nonexistent/unrm-test").unwrap();
            for _ in 0..count() {
                // SAFETY: a valid C string; the call fails with ENOENT.
                unsafe { libc::unlink(path.as_ptr()) };
            }
        }
        _ => usage(),
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    wait_for_exit(held.as_ref());
    drop(many);
}

/// As many descriptors as this process may have.
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get and set this process's own limit with a valid struct.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: holder fd|mmap|scratch PATH | scratch-many DIR N | connect SOCKET N | fail-unlink N | \
         devnull - N | idle -"
    );
    std::process::exit(2);
}

/// Maps `path` shared and closes its descriptor; the mapping stays.
fn map(path: &str) {
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open");
    let len = file.metadata().unwrap().len() as usize;
    // SAFETY: a fresh shared read mapping of a file we opened; never unmapped.
    let addr = unsafe {
        libc::mmap(std::ptr::null_mut(), len.max(1), libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap");
}

fn wait_for_exit(held: Option<&File>) {
    let mut scratch = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        if let Some(path) = line.strip_prefix("scratch ") {
            scratch.push(OpenOptions::new().read(true).write(true).open(path).expect("open"));
            std::fs::remove_file(path).expect("unlink");
        } else if line == "close" {
            scratch.clear();
        } else if let Some(text) = line.strip_prefix("append ") {
            let file = held.expect("append needs fd mode");
            let end = file.metadata().unwrap().len();
            file.write_all_at(text.as_bytes(), end).unwrap();
        } else if let Some(mode) = line.strip_prefix("chmod ") {
            let file = held.expect("chmod needs fd mode");
            let mode = u32::from_str_radix(mode, 8).expect("octal mode");
            // SAFETY: fchmod on a descriptor we own.
            assert_eq!(unsafe { libc::fchmod(file.as_raw_fd(), mode) }, 0, "fchmod");
        } else if line == "exit" {
            break;
        }
        println!("ok");
        std::io::stdout().flush().unwrap();
    }
}
