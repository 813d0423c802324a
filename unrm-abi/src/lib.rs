//! The one definition of what crosses between unrm's probes and its daemon.
//!
//! Both sides compile this crate: the probes for `bpfel-unknown-none`, the
//! daemon with the `user` feature, which adds `aya::Pod` so these types can be
//! written into maps and globals. Every type is `#[repr(C)]`, padded by hand,
//! and checked by size below, so a layout change is a compile error on both
//! sides instead of garbage at runtime.
#![no_std]

pub const COMM_LEN: usize = 16;
/// Longest path the probes copy (the kernel's PATH_MAX).
pub const PATH_MAX: usize = 4096;
/// Longest base-directory text the probes collect for a relative path.
pub const DIR_MAX: usize = 4096;
/// Deepest directory walk the probes do when resolving a relative path.
pub const DIR_DEPTH: u32 = 48;

/// The first `u32` of every ring-buffer record says which record it is.
pub mod event_kind {
    pub const DELETE: u32 = 1;
    pub const RELEASE: u32 = 2;
}

/// Which system call removed a name.
pub mod delete_op {
    pub const UNLINK: u32 = 1;
    pub const RENAME: u32 = 2;
}

/// What a filesystem hook learned about the inode a deletion removed.
pub mod victim_flags {
    /// A filesystem hook (e.g. `ext4_unlink_enter`) saw the inode: dev, ino,
    /// size, mode, nlink and refs are valid.
    pub const KNOWN: u32 = 1;
    /// The filesystem has hooks and one of them fired during the call, so
    /// absence of `KNOWN` means no inode lost its last name.
    pub const FS_HOOKED: u32 = 2;
    /// `refs` is valid: the dentry's reference count when it was unlinked.
    pub const REFS_VALID: u32 = 4;
    /// `parent` is valid: the directory the name was removed from.
    pub const PARENT: u32 = 16;
}

/// A directory as it was when a probe saw it: which inode, and who could
/// search it. Restoring a file into the directory it was deleted from, and
/// judging who could have reached it, both need to know that a directory
/// at the same path now is still that one (not one made again since).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DirFacts {
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub _pad: u32,
}

/// `path_flags` of a deletion event.
pub mod path_flags {
    /// The caller's path was absolute; `dir_len` is 0.
    pub const ABSOLUTE: u32 = 1;
    /// The directory walk stopped before reaching the root (too deep, or
    /// the text did not fit): the base directory is incomplete.
    pub const DIR_TRUNCATED: u32 = 2;
    /// The base directory could not be read (bad dirfd, no fs_struct).
    pub const DIR_UNKNOWN: u32 = 4;
    /// A filesystem hook saw only a dentry: `dir_len` bytes hold the path
    /// from the filesystem's root (leaf first, the file's name included),
    /// and the daemon finds where that filesystem is mounted.
    pub const FS_RELATIVE: u32 = 8;
}

/// Why a watched process may have let go of a watched inode.
pub mod release_reason {
    pub const CLOSE: u32 = 1;
    pub const CLOSE_RANGE: u32 = 2;
    pub const DUP2: u32 = 3;
    pub const MUNMAP: u32 = 4;
    pub const MREMAP: u32 = 5;
    pub const EXEC: u32 = 6;
    pub const EXIT: u32 = 7;
    /// The last reference to an open file on a watched inode went away
    /// (`__fput`), whoever dropped it: a close, an exit, a socket buffer.
    pub const FPUT: u32 = 8;
}

/// Where the fentry tier finds what it needs in the VFS functions it hooks,
/// read from the running kernel's BTF (their signatures change between
/// kernel versions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VfsArgs {
    /// Position of `dentry` among `vfs_unlink`'s arguments.
    pub unlink_dentry: u32,
    /// Position of the `struct renamedata *` among `vfs_rename`'s.
    pub rename_data: u32,
    /// Offsets in `struct renamedata`.
    pub rd_new_dentry: u32,
    pub rd_flags: u32,
}

/// How an iterator found a deleted-but-held file.
pub mod holder_kind {
    pub const FD: u32 = 1;
    pub const MMAP: u32 = 2;
    pub const EXE: u32 = 3;
}

/// The inode a deletion removed, as a filesystem hook saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Victim {
    pub flags: u32,
    /// Kernel encoding: `major << 20 | minor`.
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    /// Link count before the deletion took effect.
    pub nlink: u32,
    /// Dentry references when it was unlinked; the deleter's own lookup is one.
    pub refs: u32,
    pub uid: u32,
    pub gid: u32,
    /// `i_generation`: with `ino`, what names the inode to its filesystem
    /// in a file handle (the daemon pins by handle, `open_by_handle_at`).
    pub generation: u32,
    pub _pad: [u32; 2],
    /// The directory the name was removed from (`victim_flags::PARENT`).
    pub parent: DirFacts,
}

/// A name was removed (or a rename tried to). Followed in the ring buffer by
/// `path_len` bytes of the path as the caller passed it, then `dir_len` bytes
/// of the base directory for a relative path: its components, leaf first,
/// each ended by a NUL.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeleteEvent {
    pub kind: u32,
    pub op: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the first hook saw the
    /// call begin: the syscall's entry in the tracepoint tier, the VFS or
    /// ext4 function's in the others. Pin latency counts from it.
    pub ktime_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub uid: u32,
    /// The system call's return value: 0 on success, -errno otherwise.
    pub ret: i32,
    pub comm: [u8; COMM_LEN],
    pub victim: Victim,
    pub path_len: u32,
    pub dir_len: u32,
    pub path_flags: u32,
    /// The deleter's mount namespace (the inode number of
    /// `/proc/PID/ns/mnt`), 0 when unknown: the path is as the deleter saw
    /// it, which is not where the file lives on the host when this is not
    /// the daemon's namespace.
    pub mnt_ns: u32,
    /// The deleter's cgroup (v2) id: what names the container it ran in.
    pub cgroup_id: u64,
}

/// A watched process closed, replaced or unmapped something, or exec'd.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ReleaseEvent {
    pub kind: u32,
    pub reason: u32,
    pub ktime_ns: u64,
    pub tid: u32,
    pub tgid: u32,
    pub ret: i64,
    /// The watched inode the call dropped, when the probe could tell (close,
    /// dup2/dup3); otherwise 0/0 and only the process is known.
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// One deleted-but-held regular file, as an iterator wrote it into its seq
/// file. Followed by `path_len` bytes of `d_path` text (no NUL).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HeldRecord {
    pub holder: u32,
    pub tgid: u32,
    /// The fd number for `holder_kind::FD`.
    pub fd: u32,
    pub path_len: u32,
    pub comm: [u8; COMM_LEN],
    pub dev: u32,
    pub mode: u32,
    pub ino: u64,
    pub size: u64,
    pub uid: u32,
    pub gid: u32,
    /// The mapping for `holder_kind::MMAP` and `holder_kind::EXE`.
    pub vm_start: u64,
    pub vm_end: u64,
    /// The directory the file was deleted from (its dentry's parent, which
    /// a deleted file keeps); `ino` 0 when unknown.
    pub parent: DirFacts,
    /// The holding process's real uid.
    pub holder_uid: u32,
    pub _pad: u32,
}

/// Identity of an inode in the probes' maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Byte offsets of the kernel struct fields the probes read. Rust eBPF has no
/// CO-RE, so the daemon reads these from the running kernel's BTF and writes
/// them into the probes' read-only data before loading; the verifier then
/// sees them as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOffsets {
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_files: u32,
    pub task_fs: u32,
    pub task_mm: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_path: u32,
    pub inode_mode: u32,
    pub inode_nlink: u32,
    pub inode_ino: u32,
    pub inode_size: u32,
    pub inode_sb: u32,
    pub inode_uid: u32,
    pub inode_gid: u32,
    pub sb_dev: u32,
    pub dentry_parent: u32,
    pub dentry_name: u32,
    pub dentry_inode: u32,
    pub dentry_count: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_root: u32,
    pub vfsmount_flags: u32,
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub mm_exe_file: u32,
    pub vma_start: u32,
    pub vma_end: u32,
    pub vma_file: u32,
    pub inode_dentry: u32,
    pub dentry_alias: u32,
    pub sb_magic: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    pub task_real_cred: u32,
    pub cred_uid: u32,
    pub inode_generation: u32,
}

/// Indices of the probes' per-CPU counters (`STATS` map).
pub mod stat {
    /// Ring buffer full: a deletion or release event was dropped.
    pub const LOST_EVENTS: u32 = 0;
    /// The per-thread in-flight table was full: a deletion went unseen.
    pub const LOST_INFLIGHT: u32 = 1;
    /// An unlink or rename that failed (nothing was deleted): counted in the
    /// kernel and never sent, so a loop of failing calls cannot flood the
    /// ring buffer.
    pub const FAILED_CALLS: u32 = 2;
    /// A read of kernel memory that `bpf_probe_read_kernel` (or its `_str`
    /// form) refused: a pointer the kernel handed the probes led nowhere.
    /// NULL pointers meaning "none" are not reads and are not counted. A
    /// steady stream means wrong offsets; an odd one, a race with an object
    /// going away. What the read was for is then missing from its event or
    /// record, or the event is not sent.
    pub const FAILED_READS: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// `S_IFMT` and `S_IFREG` from `<sys/stat.h>`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFREG: u32 = 0o100000;
/// `MNT_INTERNAL` in `vfsmount.mnt_flags`: kernel-internal mounts (memfd,
/// pipes, sockets, anon inodes) whose files were never a user's.
pub const MNT_INTERNAL: u32 = 0x4000;

const _: () = {
    assert!(core::mem::size_of::<DirFacts>() == 24);
    assert!(core::mem::size_of::<Victim>() == 80);
    assert!(core::mem::size_of::<DeleteEvent>() == 152);
    assert!(core::mem::size_of::<ReleaseEvent>() == 48);
    assert!(core::mem::size_of::<HeldRecord>() == 112);
    assert!(core::mem::size_of::<InodeKey>() == 16);
    assert!(core::mem::size_of::<KernelOffsets>() == 46 * 4);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), made only of integers, with explicit
    // padding, so every bit pattern is valid.
    unsafe impl aya::Pod for super::InodeKey {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::VfsArgs {}
}
