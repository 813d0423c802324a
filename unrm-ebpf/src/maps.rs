//! The maps the probes share with each other and with the daemon, and the
//! read-only globals the daemon fills in before load.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use unrm_abi::{DIR_MAX, DeleteEvent, InodeKey, KernelOffsets, PATH_MAX, Victim, stat};

/// Events to the daemon. The daemon may resize it before loading.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

/// Processes that hold a pinned inode: the release probes' first filter.
#[map]
pub static WATCHED_TGIDS: HashMap<u32, u32> = HashMap::with_max_entries(16384, 0);

/// Inodes the daemon has pinned and is waiting to capture.
#[map]
pub static WATCHED_INODES: HashMap<InodeKey, u32> = HashMap::with_max_entries(65536, 0);

/// A deletion system call in progress, by thread id: set on entry, filled by
/// filesystem hooks during the call, turned into an event on exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    pub op: u32,
    pub dirfd: i32,
    pub path: u64,
    pub victim: Victim,
    /// When the call entered (the deletion's time: pin latency counts from it).
    pub started_ns: u64,
}

#[map]
pub static INFLIGHT: LruHashMap<u32, Inflight> = LruHashMap::with_max_entries(4096, 0);

/// A release call in progress by a watched process, by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingRelease {
    pub reason: u32,
    pub _pad: u32,
    pub inode: InodeKey,
}

#[map]
pub static RELEASES: LruHashMap<u32, PendingRelease> = LruHashMap::with_max_entries(4096, 0);

/// Room to build one deletion event: the header, then the caller's path,
/// then the base directory's components. The slack past `PATH_MAX + DIR_MAX`
/// lets a masked offset plus one name always stay in bounds.
pub const NAME_SLOT: usize = 256;
pub const DATA_LEN: usize = PATH_MAX + DIR_MAX;

#[repr(C)]
pub struct EventBuf {
    pub header: DeleteEvent,
    pub data: [u8; DATA_LEN + NAME_SLOT],
}

#[map]
pub static EVENT_BUF: PerCpuArray<EventBuf> = PerCpuArray::with_max_entries(1, 0);

/// Room for one `bpf_d_path` result in the iterators.
#[map]
pub static PATH_BUF: PerCpuArray<[u8; PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters of what the probes had to drop; see `unrm_abi::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Adds one to counter `index` of this CPU.
pub fn count(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, so no other program touches it while this
        // one runs; the map outlives the program.
        unsafe { *slot += 1 };
    }
}

/// A global the daemon writes before load (`OFFSETS.inode_ino`,
/// `SELF_TGID`, ...). Volatile, so the compiler reads the value the daemon
/// wrote rather than the zero this crate was built with; aya freezes these
/// globals, so the verifier knows each as a constant.
macro_rules! loaded {
    ($global:ident $(. $field:ident)*) => {{
        // SAFETY: an aligned load of a static that nothing writes once the
        // program is loaded.
        let value = unsafe { core::ptr::read_volatile(&raw const crate::maps::$global $(. $field)*) };
        value
    }};
}
pub(crate) use loaded;

/// Field offsets of the running kernel, written by the daemon before load.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_tgid: 0,
    task_comm: 0,
    task_files: 0,
    task_fs: 0,
    task_mm: 0,
    fs_root: 0,
    fs_pwd: 0,
    path_mnt: 0,
    path_dentry: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_inode: 0,
    file_path: 0,
    inode_mode: 0,
    inode_nlink: 0,
    inode_ino: 0,
    inode_size: 0,
    inode_sb: 0,
    inode_uid: 0,
    inode_gid: 0,
    sb_dev: 0,
    dentry_parent: 0,
    dentry_name: 0,
    dentry_inode: 0,
    dentry_count: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_root: 0,
    vfsmount_flags: 0,
    mount_mnt: 0,
    mount_parent: 0,
    mount_mountpoint: 0,
    mm_exe_file: 0,
    vma_start: 0,
    vma_end: 0,
    vma_file: 0,
    inode_dentry: 0,
    dentry_alias: 0,
    sb_magic: 0,
    task_nsproxy: 0,
    nsproxy_mnt_ns: 0,
    mnt_ns_inum: 0,
    task_real_cred: 0,
    cred_uid: 0,
    inode_generation: 0,
};

/// `[start, end)` of ext4_rename's code, from /proc/kallsyms: the fs tier
/// tells a rename's victim by who marks it dirty. Zero when unknown.
#[unsafe(no_mangle)]
pub static EXT4_RENAME: [u64; 2] = [0, 0];

/// A filesystem-level deletion in progress (fs, fentry and kprobe tiers),
/// by thread id.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FsCall {
    pub dentry: u64,
    pub inode: u64,
    pub victim: Victim,
    /// Calls of the same hook nested inside this one (overlayfs calling the
    /// VFS again for its upper layer), still to return.
    pub depth: u32,
    pub _pad: u32,
    /// When the call began (`bpf_ktime_get_ns`).
    pub at_ns: u64,
}

#[map]
pub static FS_CALLS: LruHashMap<u32, FsCall> = LruHashMap::with_max_entries(4096, 0);

/// The last rename victim reported per thread, so that an inode marked
/// dirty twice in one rename is reported once.
#[map]
pub static FS_RENAMED: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Argument positions and offsets for the fentry tier's VFS hooks.
#[unsafe(no_mangle)]
pub static VFS_ARGS: unrm_abi::VfsArgs =
    unrm_abi::VfsArgs { unlink_dentry: 0, rename_data: 0, rd_new_dentry: 0, rd_flags: 0 };

/// The daemon's own process, whose pins are not holders.
#[unsafe(no_mangle)]
pub static SELF_TGID: u32 = 0;
