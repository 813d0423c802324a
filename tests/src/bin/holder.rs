//! A process that holds a file the way real programs do, driven line by
//! line on stdin so a test decides exactly when it lets go:
//!
//!   holder fd PATH      open read-write and keep the descriptor
//!   holder mmap PATH    map the file shared, then close the descriptor
//!   holder scratch PATH open it, then delete it itself (a scratch file)
//!
//! It prints `ready` once it holds the file. Commands: `append TEXT` (fd
//! mode: write at the end), `exit`. End of input also exits.

use std::{
    fs::OpenOptions,
    io::{BufRead, Write},
    os::{fd::AsRawFd, unix::fs::FileExt},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, path) = match args.as_slice() {
        [_, mode, path] => (mode.as_str(), path.as_str()),
        _ => {
            eprintln!("usage: holder fd|mmap|scratch PATH");
            std::process::exit(2);
        }
    };
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open");
    let mut held = Some(file);
    if mode == "scratch" {
        std::fs::remove_file(path).expect("unlink");
    }
    if mode == "mmap" {
        let file = held.take().unwrap();
        let len = file.metadata().unwrap().len() as usize;
        // SAFETY: a fresh shared read mapping of a file we opened; never unmapped.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        drop(file);
    }
    println!("ready");
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        if let Some(text) = line.strip_prefix("append ") {
            let file = held.as_ref().expect("append needs fd mode");
            let end = file.metadata().unwrap().len();
            file.write_all_at(text.as_bytes(), end).unwrap();
        } else if line == "exit" {
            break;
        }
        println!("ok");
        std::io::stdout().flush().unwrap();
    }
}
