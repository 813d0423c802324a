//! Naming a deleted inode to its own filesystem: file handles.
//!
//! A filesystem that can be exported (over NFS) turns a small *file handle*
//! back into an inode, `open_by_handle_at(2)`. The handle of most
//! filesystems is the inode number and its generation (a counter the
//! filesystem bumps when it gives an inode number out again), and it still
//! opens a file whose last name is gone for as long as something holds the
//! inode; once the last reference is gone it fails with `ESTALE`. That is
//! a pin taken in O(1) by the daemon, without knowing who holds the file:
//! the probes only have to report the inode number and generation.
//!
//! The layouts here are the filesystems' own (their `encode_fh`). A
//! filesystem not listed gets no handle, and unrm falls back to finding a
//! holder (`holders::Snapshot`): btrfs wants its subvolume's id, FUSE and
//! network filesystems their server's say, and tmpfs finds an inode from
//! a handle only in the inode hash, where it puts an inode the first time
//! someone *asks* for its handle (`shmem_encode_fh`) — a file nobody asked
//! about is `ESTALE` to its handle however many hold it. fanotify asks, in
//! the deleting call, and reports the handle it got: `open_encoded` opens
//! such a handle as the kernel made it, whatever the filesystem.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// How a filesystem lays out the handle of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `FILEID_INO32_GEN`: a 32-bit inode number, then the generation
    /// (ext2/3/4 and the filesystems that use the kernel's generic
    /// `generic_encode_ino32_fh`).
    Ino32Gen,
    /// xfs (`xfs_fs_encode_fh`): `FILEID_INO32_GEN` while the inode number
    /// fits 32 bits, else the same type with xfs's 64-bit flag and a
    /// 64-bit number before the generation.
    Xfs,
}

impl Layout {
    /// The layout of a filesystem of type `fstype` (as mountinfo names it).
    pub fn of(fstype: &str) -> Option<Self> {
        match fstype {
            "ext2" | "ext3" | "ext4" => Some(Layout::Ino32Gen),
            "xfs" => Some(Layout::Xfs),
            _ => None,
        }
    }
}

/// `FILEID_INO32_GEN` in `include/linux/exportfs.h`.
const FILEID_INO32_GEN: i32 = 1;
/// `XFS_FILEID_TYPE_64FLAG` in `fs/xfs/xfs_export.h`.
const XFS_FILEID_TYPE_64FLAG: i32 = 0x80;

/// `struct file_handle` with room for the handles above.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    data: [u8; 16],
}

impl Handle {
    fn new(kind: i32, words: &[u32]) -> Self {
        let mut data = [0u8; 16];
        for (slot, word) in data.chunks_exact_mut(4).zip(words) {
            slot.copy_from_slice(&word.to_ne_bytes());
        }
        Handle { bytes: 4 * words.len() as u32, kind, data }
    }

    /// The handle of inode `ino` of generation `generation`; None if the
    /// layout cannot name it (a 64-bit number where only 32 fit).
    fn encode(layout: Layout, ino: u64, generation: u32) -> Option<Self> {
        let (low, high) = (ino as u32, (ino >> 32) as u32);
        match layout {
            _ if high == 0 => Some(Handle::new(FILEID_INO32_GEN, &[low, generation])),
            Layout::Ino32Gen => None,
            // `struct xfs_fid64`: a native-endian u64, then the generation.
            Layout::Xfs => {
                let ino = ino.to_ne_bytes();
                let halves = [
                    u32::from_ne_bytes(ino[..4].try_into().unwrap()),
                    u32::from_ne_bytes(ino[4..].try_into().unwrap()),
                ];
                Some(Handle::new(
                    FILEID_INO32_GEN | XFS_FILEID_TYPE_64FLAG,
                    &[halves[0], halves[1], generation],
                ))
            }
        }
    }
}

/// Opens inode `ino` of generation `generation` on the filesystem `mount`
/// is on, as an `O_PATH` descriptor (nothing is opened: no `->open`).
/// `ESTALE` once nothing holds a deleted inode any more, or when the
/// number was given to another inode since (its generation differs).
pub fn open(mount: BorrowedFd, layout: Layout, ino: u64, generation: u32) -> io::Result<OwnedFd> {
    let Some(mut handle) = Handle::encode(layout, ino, generation) else {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    };
    // SAFETY: `handle` is a `struct file_handle` whose `handle_bytes`
    // covers only its own initialised `data`.
    unsafe { open_at(mount, (&raw mut handle).cast()) }
}

/// The largest handle the kernel makes (`MAX_HANDLE_SZ`).
const MAX_HANDLE_BYTES: usize = 128;

/// Opens, as `open` does, the inode a handle the kernel itself encoded
/// names (`struct file_handle` as bytes: its size, its type, then the
/// handle; fanotify reports these). Refused unless the size is the rest.
pub fn open_encoded(mount: BorrowedFd, handle: &[u8]) -> io::Result<OwnedFd> {
    let size = handle.get(..4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()) as usize);
    if size != Some(handle.len().saturating_sub(8)) || handle.len() > 8 + MAX_HANDLE_BYTES {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // `struct file_handle` is 4-byte aligned: copied into words.
    let mut words = [0u32; (8 + MAX_HANDLE_BYTES) / 4];
    for (word, bytes) in words.iter_mut().zip(handle.chunks(4)) {
        let mut four = [0u8; 4];
        four[..bytes.len()].copy_from_slice(bytes);
        *word = u32::from_ne_bytes(four);
    }
    // SAFETY: `words` holds a `struct file_handle` whose `handle_bytes`
    // was checked to cover no more than what follows it.
    unsafe { open_at(mount, words.as_mut_ptr().cast()) }
}

/// # Safety
/// `handle` points to a `struct file_handle` whose `handle_bytes` bytes
/// after its header are readable. The kernel only reads it.
unsafe fn open_at(mount: BorrowedFd, handle: *mut libc::file_handle) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: as the caller promised; the descriptor returned is ours alone.
    let fd = unsafe { libc::open_by_handle_at(mount.as_raw_fd(), handle, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        io::Write,
        os::{fd::AsFd, unix::fs::MetadataExt},
        process::Command,
    };

    use super::*;

    #[test]
    fn encodes_each_layout_as_its_filesystem_does() {
        let h = Handle::encode(Layout::Ino32Gen, 12, 7).unwrap();
        assert_eq!((h.bytes, h.kind), (8, 1));
        assert_eq!(&h.data[..8], [12u32.to_ne_bytes(), 7u32.to_ne_bytes()].concat());
        assert!(Handle::encode(Layout::Ino32Gen, 1 << 32, 7).is_none());
        let h = Handle::encode(Layout::Xfs, 12, 7).unwrap();
        assert_eq!((h.bytes, h.kind), (8, 1));
        let h = Handle::encode(Layout::Xfs, (5 << 32) | 12, 7).unwrap();
        assert_eq!((h.bytes, h.kind), (12, 0x81));
        assert_eq!(
            &h.data[..12],
            [((5u64 << 32) | 12).to_ne_bytes().as_slice(), &7u32.to_ne_bytes()].concat()
        );
    }

    /// An ext4 image of its own, unmounted when dropped.
    struct Ext4(tempfile::TempDir);

    impl Ext4 {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("img");
            fs::File::create(&image).unwrap().set_len(16 << 20).unwrap();
            let ok = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
            ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image));
            fs::create_dir(dir.path().join("mnt")).unwrap();
            ok(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(dir.path().join("mnt")));
            Ext4(dir)
        }
    }

    impl Drop for Ext4 {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path().join("mnt")).status();
        }
    }

    /// The generation as ext4 reports it (`FS_IOC_GETVERSION`).
    fn generation(file: &fs::File) -> u32 {
        const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;
        let mut value: libc::c_long = 0;
        // SAFETY: the ioctl writes one long into `value`.
        let ret = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION as _, &mut value) };
        assert_eq!(ret, 0, "FS_IOC_GETVERSION: {}", io::Error::last_os_error());
        value as u32
    }

    /// On ext4: a held, deleted file opens by its handle with its content;
    /// with another generation (its number given to a newer file), or once
    /// let go, it does not.
    #[test]
    fn a_held_deleted_file_opens_by_handle_and_a_wrong_generation_is_refused() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting and open_by_handle_at need root");
            return;
        }
        let ext4 = Ext4::new();
        let mnt = ext4.0.path().join("mnt");
        let mount = fs::File::open(&mnt).unwrap();
        let path = mnt.join("held");
        let mut file = fs::File::create(&path).unwrap();
        file.write_all(b"kept").unwrap();
        let (ino, generation) = (file.metadata().unwrap().ino(), generation(&file));
        fs::remove_file(&path).unwrap();

        let fd = open(mount.as_fd(), Layout::Ino32Gen, ino, generation).unwrap();
        let reopened = fs::read(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(reopened, b"kept");
        let st = rustix::fs::fstat(&fd).unwrap();
        assert_eq!((st.st_ino, st.st_nlink), (ino, 0));

        let err = open(mount.as_fd(), Layout::Ino32Gen, ino, generation.wrapping_add(1)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
        drop((file, fd));
        let err = open(mount.as_fd(), Layout::Ino32Gen, ino, generation).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    }
}
