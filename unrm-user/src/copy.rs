//! Copying a file's content between descriptors, fast and faithfully: a
//! reflink where the filesystem can, else in-kernel `copy_file_range`, else
//! read/write; holes stay holes. Used both to capture into the store and to
//! restore out of it. Offsets are explicit throughout, so a source shared
//! with another descriptor (a pin) is never moved.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
};

use rustix::{
    fs::{SeekFrom, copy_file_range, ftruncate, ioctl_ficlone, seek},
    io::{Errno, pread, pwrite},
};

/// How the content got there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Reflink,
    CopyFileRange,
    ReadWrite,
}

/// Copies `size` bytes of `src` into the empty file `dst`.
pub fn copy(src: BorrowedFd, dst: BorrowedFd, size: u64) -> io::Result<Method> {
    copy_with_progress(src, dst, size, &mut |_| {})
}

/// The same, telling `progress` how far it has got (an offset in `src`).
pub fn copy_with_progress(
    src: BorrowedFd,
    dst: BorrowedFd,
    size: u64,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Method> {
    if size > 0 && ioctl_ficlone(dst, src).is_ok() {
        progress(size);
        return Ok(Method::Reflink);
    }
    let mut method = Method::CopyFileRange;
    for (start, end) in data_ranges(src, size)? {
        copy_range(src, dst, start, end, &mut method, progress)?;
    }
    progress(size);
    // A trailing hole, or a file that changed size: the length is `size`.
    ftruncate(dst, size)?;
    Ok(method)
}

/// The data extents of `fd` below `size`, skipping holes. Filesystems
/// without SEEK_DATA report everything as data, which is still correct.
fn data_ranges(fd: BorrowedFd, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut ranges = Vec::new();
    let mut offset = 0;
    while offset < size {
        let start = match seek(fd, SeekFrom::Data(offset)) {
            Ok(start) => start,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => {
                ranges.push((offset, size));
                break;
            }
            Err(err) => return Err(err.into()),
        };
        let end = seek(fd, SeekFrom::Hole(start)).unwrap_or(size).min(size);
        if start >= end {
            break;
        }
        ranges.push((start, end));
        offset = end;
    }
    Ok(ranges)
}

/// Bytes per system call: small enough to report progress, large enough
/// that the calls cost nothing next to the copying.
const CHUNK: u64 = 64 << 20;

fn copy_range(
    src: BorrowedFd,
    dst: BorrowedFd,
    start: u64,
    end: u64,
    method: &mut Method,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut pos = start;
    while pos < end {
        progress(pos);
        let want = (end - pos).min(CHUNK) as usize;
        if *method == Method::CopyFileRange {
            let (mut off_in, mut off_out) = (pos, pos);
            match copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), want) {
                Ok(0) => return Ok(()), // the source shrank under us
                Ok(n) => {
                    pos += n as u64;
                    continue;
                }
                Err(Errno::XDEV | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS | Errno::PERM) => {
                    *method = Method::ReadWrite;
                }
                Err(err) => return Err(err.into()),
            }
        }
        let n = read_write(src, dst, pos, want)?;
        if n == 0 {
            return Ok(());
        }
        pos += n as u64;
    }
    Ok(())
}

fn read_write(src: BorrowedFd, dst: BorrowedFd, pos: u64, want: usize) -> io::Result<usize> {
    let mut buf = vec![0u8; want.min(1 << 20)];
    let n = pread(src, &mut buf, pos)?;
    let mut done = 0;
    while done < n {
        done += pwrite(dst, &buf[done..n], pos + done as u64)?;
    }
    Ok(n)
}

/// BLAKE3 of everything `fd` holds, read with explicit offsets.
pub fn checksum(fd: impl AsFd) -> io::Result<String> {
    let fd = fd.as_fd();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = pread(fd, &mut buf, pos)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        pos += n as u64;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use std::{fs::File, io::Write, os::unix::fs::FileExt};

    use super::*;

    #[test]
    fn copies_bytes_and_keeps_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(b"tail", 8 << 20).unwrap();
        src.set_len(16 << 20).unwrap(); // trailing hole
        let src = File::open(&src_path).unwrap();
        let dst =
            File::options().read(true).write(true).create_new(true).open(dir.path().join("dst")).unwrap();
        copy(src.as_fd(), dst.as_fd(), 16 << 20).unwrap();
        let a = std::fs::read(&src_path).unwrap();
        let b = std::fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(a, b);
        assert_eq!(checksum(&src).unwrap(), checksum(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        let blocks = dst.metadata().unwrap().blocks();
        assert!(blocks < 1024, "16 MiB with two small extents took {blocks} blocks");
    }

    #[test]
    fn empty_and_small_files() {
        let dir = tempfile::tempdir().unwrap();
        for content in [&b""[..], b"x", &[7u8; 100_000]] {
            let src_path = dir.path().join("s");
            File::create(&src_path).unwrap().write_all(content).unwrap();
            let src = File::open(&src_path).unwrap();
            let dst_path = dir.path().join("d");
            let dst = File::create(&dst_path).unwrap();
            copy(src.as_fd(), dst.as_fd(), content.len() as u64).unwrap();
            assert_eq!(std::fs::read(&dst_path).unwrap(), content);
        }
    }
}
