//! Reading kernel objects without CO-RE: every field offset comes from the
//! `OFFSETS` global the daemon fills in from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use unrm_abi::{DIR_DEPTH, DIR_MAX, S_IFMT, S_IFREG};

use crate::maps::{DATA_LEN, NAME_SLOT};

/// The byte offset of a kernel field. Volatile so the compiler reads the
/// value the daemon wrote, not the zero this crate was built with.
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let offset = unsafe { core::ptr::read_volatile(&raw const crate::maps::OFFSETS.$field) };
        offset as usize
    }};
}
pub(crate) use off;

#[inline(always)]
pub unsafe fn read<T>(base: *const u8, offset: usize) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset) as *const T).ok() }
}

#[inline(always)]
pub unsafe fn read_ptr(base: *const u8, offset: usize) -> Option<*const u8> {
    unsafe { read::<*const u8>(base, offset).filter(|p| !p.is_null()) }
}

/// What the probes report about an inode.
pub struct InodeFacts {
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

impl InodeFacts {
    #[inline(always)]
    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

#[inline(always)]
pub unsafe fn inode_facts(inode: *const u8) -> Option<InodeFacts> {
    unsafe {
        let sb = read_ptr(inode, off!(inode_sb))?;
        Some(InodeFacts {
            dev: read::<u32>(sb, off!(sb_dev))?,
            ino: read::<u64>(inode, off!(inode_ino))?,
            size: read::<i64>(inode, off!(inode_size))? as u64,
            mode: read::<u16>(inode, off!(inode_mode))? as u32,
            nlink: read::<u32>(inode, off!(inode_nlink))?,
            uid: read::<u32>(inode, off!(inode_uid))?,
            gid: read::<u32>(inode, off!(inode_gid))?,
        })
    }
}

/// The directory `dentry` is in: its parent's inode, who owns it and how
/// it may be searched. A deleted file's dentry keeps its parent.
#[inline(always)]
pub unsafe fn parent_dir(dentry: *const u8) -> Option<unrm_abi::DirFacts> {
    unsafe {
        let parent = read_ptr(dentry, off!(dentry_parent))?;
        let inode = read_ptr(parent, off!(dentry_inode))?;
        let facts = inode_facts(inode)?;
        Some(unrm_abi::DirFacts { ino: facts.ino, mode: facts.mode, uid: facts.uid, gid: facts.gid, _pad: 0 })
    }
}

/// `task`'s real uid (in the initial user namespace, as `kuid_t` holds it).
#[inline(always)]
pub unsafe fn task_uid(task: *const u8) -> Option<u32> {
    unsafe { read_ptr(task, off!(task_real_cred)).and_then(|cred| read::<u32>(cred, off!(cred_uid))) }
}

/// One of `inode`'s dentries (a file with one name has one): what a hook
/// that is handed only an inode uses to find its name and directory.
#[inline(always)]
pub unsafe fn alias_dentry(inode: *const u8) -> Option<*const u8> {
    unsafe { read_ptr(inode, off!(inode_dentry)).map(|first| first.wrapping_sub(off!(dentry_alias))) }
}

/// The current task's mount namespace, as `/proc/self/ns/mnt` numbers it;
/// 0 if unreadable (an exiting task has no nsproxy).
#[inline(always)]
pub fn current_mnt_ns() -> u32 {
    unsafe {
        let task = aya_ebpf::helpers::bpf_get_current_task() as *const u8;
        read_ptr(task, off!(task_nsproxy))
            .and_then(|ns| read_ptr(ns, off!(nsproxy_mnt_ns)))
            .and_then(|mnt_ns| read::<u32>(mnt_ns, off!(mnt_ns_inum)))
            .unwrap_or(0)
    }
}

#[inline(always)]
pub unsafe fn file_inode(file: *const u8) -> Option<*const u8> {
    unsafe { read_ptr(file, off!(file_inode)) }
}

/// The open file behind `fd` in `task`'s descriptor table.
#[inline(always)]
pub unsafe fn fd_file(task: *const u8, fd: u32) -> Option<*const u8> {
    unsafe {
        let files = read_ptr(task, off!(task_files))?;
        let fdt = read_ptr(files, off!(files_fdt))?;
        let max_fds = read::<u32>(fdt, off!(fdt_max_fds))?;
        if fd >= max_fds {
            return None;
        }
        let table = read_ptr(fdt, off!(fdt_fd))?;
        read_ptr(table, fd as usize * 8)
    }
}

/// A `struct path`: a mount and a dentry on it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PathRef {
    pub mnt: *const u8,
    pub dentry: *const u8,
}

#[inline(always)]
pub unsafe fn read_path(path: *const u8) -> Option<PathRef> {
    unsafe {
        Some(PathRef { mnt: read_ptr(path, off!(path_mnt))?, dentry: read_ptr(path, off!(path_dentry))? })
    }
}

/// Where a directory walk ended.
pub enum Walk {
    /// Reached the task's root or the mount namespace's root.
    Complete(usize),
    /// Stopped early: too deep, out of room, or a read failed.
    Truncated(usize),
}

/// The state of a directory walk between `bpf_loop` steps.
#[repr(C)]
struct WalkState {
    mnt: *const u8,
    mount: *const u8,
    dentry: *const u8,
    root: PathRef,
    buf: *mut u8,
    base: usize,
    len: usize,
    /// 0 while walking, then `DONE_COMPLETE` or `DONE_TRUNCATED`.
    done: u64,
}

const DONE_COMPLETE: u64 = 1;
const DONE_TRUNCATED: u64 = 2;

/// Writes the names from `start` up to `root` into `buf`, leaf first, each
/// ended by a NUL, beginning at `buf[base]`. Crosses mount points the way
/// `d_path` does. The walk runs under `bpf_loop` so the verifier checks one
/// step instead of every path through `DIR_DEPTH` unrolled steps.
#[inline(always)]
pub unsafe fn write_dir(buf: *mut u8, base: usize, start: PathRef, root: PathRef) -> Walk {
    let mut state = WalkState {
        mnt: start.mnt,
        mount: start.mnt.wrapping_sub(off!(mount_mnt)),
        dentry: start.dentry,
        root,
        buf,
        base,
        len: 0,
        done: 0,
    };
    unsafe {
        generated::bpf_loop(DIR_DEPTH, walk_step as *mut _, &mut state as *mut WalkState as *mut _, 0);
    }
    match state.done {
        DONE_COMPLETE => Walk::Complete(state.len),
        _ => Walk::Truncated(state.len),
    }
}

/// Writes the names from `dentry` up to its filesystem's root, leaf first
/// (the file's own name first): a path relative to the filesystem, for
/// hooks that see a dentry but not the mount it was reached through.
#[inline(always)]
pub unsafe fn write_fs_path(buf: *mut u8, base: usize, dentry: *const u8) -> Walk {
    let none = PathRef { mnt: core::ptr::null(), dentry: core::ptr::null() };
    unsafe { write_dir(buf, base, PathRef { mnt: core::ptr::null(), dentry }, none) }
}

/// One step up the tree; returns 1 to stop the loop.
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let state = unsafe { &mut *(ctx as *mut WalkState) };
    state.done = unsafe { step(state) };
    (state.done != 0) as i64
}

#[inline(always)]
unsafe fn step(s: &mut WalkState) -> u64 {
    unsafe {
        if s.mnt.is_null() {
            // Within one filesystem: no mounts to cross, no root to stop at.
        } else if s.dentry == s.root.dentry && s.mnt == s.root.mnt {
            return DONE_COMPLETE;
        } else if let Some(mnt_root) = read_ptr(s.mnt, off!(vfsmount_root))
            && s.dentry == mnt_root
        {
            let Some(parent) = read_ptr(s.mount, off!(mount_parent)) else { return DONE_TRUNCATED };
            if parent == s.mount {
                return DONE_COMPLETE;
            }
            let Some(mountpoint) = read_ptr(s.mount, off!(mount_mountpoint)) else {
                return DONE_TRUNCATED;
            };
            s.dentry = mountpoint;
            s.mount = parent;
            s.mnt = parent.wrapping_add(off!(mount_mnt));
            return 0;
        }
        let Some(parent) = read_ptr(s.dentry, off!(dentry_parent)) else { return DONE_TRUNCATED };
        if parent == s.dentry {
            return DONE_COMPLETE;
        }
        let Some(name) = read_ptr(s.dentry, off!(dentry_name) + off!(qstr_name)) else {
            return DONE_TRUNCATED;
        };
        if s.len > DIR_MAX - NAME_SLOT {
            return DONE_TRUNCATED;
        }
        // The mask changes nothing (base + len < DATA_LEN) but lets the
        // verifier see that the write stays inside the buffer.
        let at = (s.base + s.len) & (DATA_LEN - 1);
        let n =
            generated::bpf_probe_read_kernel_str(s.buf.add(at) as *mut _, NAME_SLOT as u32, name as *const _);
        if n <= 0 {
            return DONE_TRUNCATED;
        }
        s.len += n as usize;
        s.dentry = parent;
        0
    }
}
