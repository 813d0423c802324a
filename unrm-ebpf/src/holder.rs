//! Finding one process that holds an inode through a descriptor, in the
//! kernel, right after the deletion that made it precious.
//!
//! The daemon could find holders itself with an iterator snapshot, but a
//! snapshot walks every task and costs ~100 µs or more before the first pin.
//! Here the walk runs once per *held* deletion only (the dentry count says
//! which), after the call has dropped its locks, reading each process's
//! open-descriptor bitmap so that empty slots cost nothing. It stops at the
//! first descriptor on the inode; holders through mappings only are left to
//! the daemon's snapshot.
//!
//! The walk follows `init_task.tasks` (every thread-group leader) under the
//! RCU read lock that BTF tracepoint and tracepoint programs run in; every
//! read is a `bpf_probe_read_kernel`, so a task exiting under our feet is
//! harmless.

use aya_ebpf::helpers::{bpf_get_current_task, generated};

use crate::kernel::{off, read, read_ptr};

/// Processes walked at most, descriptor words per process at most.
const MAX_PROCESSES: u32 = 1 << 16;
const MAX_FD_WORDS: u32 = 1 << 14;
/// Steps up `real_parent` to reach `init_task` from any task.
const MAX_ANCESTRY: u32 = 1 << 12;

pub struct Holder {
    pub tgid: u32,
    pub fd: u32,
    pub uid: u32,
}

#[repr(C)]
struct Walk {
    inode: *const u8,
    first: *const u8,
    task: *const u8,
    tgid: u32,
    fd: u32,
    uid: u32,
    found: u32,
}

#[repr(C)]
struct Words {
    walk: *mut Walk,
    open_fds: *const u8,
    fds: *const u8,
}

#[repr(C)]
struct Bits {
    walk: *mut Walk,
    fds: *const u8,
    word: u64,
    base: u32,
}

/// A process with a descriptor open on `inode`, if any.
#[inline(always)]
pub unsafe fn find(inode: *const u8) -> Option<Holder> {
    unsafe {
        let current = bpf_get_current_task() as *const u8;
        let init = init_task(current)?;
        let mut walk = Walk { inode, first: init, task: init, tgid: 0, fd: 0, uid: 0, found: 0 };
        generated::bpf_loop(MAX_PROCESSES, next_process as *mut _, &mut walk as *mut Walk as *mut _, 0);
        (walk.found != 0).then_some(Holder { tgid: walk.tgid, fd: walk.fd, uid: walk.uid })
    }
}

/// `init_task` is its own `real_parent`; every task leads up to it.
#[inline(always)]
unsafe fn init_task(task: *const u8) -> Option<*const u8> {
    let mut up = Ancestry { task, done: 0 };
    unsafe {
        generated::bpf_loop(MAX_ANCESTRY, parent_step as *mut _, &mut up as *mut Ancestry as *mut _, 0);
    }
    (up.done == 1).then_some(up.task)
}

#[repr(C)]
struct Ancestry {
    task: *const u8,
    /// 1 once `task` is init_task, 2 if a read failed.
    done: u64,
}

#[inline(never)]
extern "C" fn parent_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let up = unsafe { &mut *(ctx as *mut Ancestry) };
    match unsafe { read_ptr(up.task, off!(task_real_parent)) } {
        Some(parent) if parent == up.task => up.done = 1,
        Some(parent) => up.task = parent,
        None => up.done = 2,
    }
    (up.done != 0) as i64
}

#[inline(never)]
extern "C" fn next_process(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    unsafe {
        let Some(next) = read_ptr(walk.task, off!(task_tasks)) else { return 1 };
        let next = next.wrapping_sub(off!(task_tasks));
        if next == walk.first {
            return 1;
        }
        walk.task = next;
        search_process(walk);
    }
    (walk.found != 0) as i64
}

#[inline(always)]
unsafe fn search_process(walk: &mut Walk) {
    unsafe {
        let Some(files) = read_ptr(walk.task, off!(task_files)) else { return };
        let Some(fdt) = read_ptr(files, off!(files_fdt)) else { return };
        let Some(max_fds) = read::<u32>(fdt, off!(fdt_max_fds)) else { return };
        let Some(open_fds) = read_ptr(fdt, off!(fdt_open_fds)) else { return };
        let Some(fds) = read_ptr(fdt, off!(fdt_fd)) else { return };
        let words = max_fds.div_ceil(64).min(MAX_FD_WORDS);
        let mut ctx = Words { walk: walk as *mut Walk, open_fds, fds };
        generated::bpf_loop(words, next_word as *mut _, &mut ctx as *mut Words as *mut _, 0);
        if walk.found != 0 {
            walk.tgid = read::<u32>(walk.task, off!(task_tgid)).unwrap_or(0);
            walk.uid = crate::kernel::task_uid(walk.task).unwrap_or(0);
        }
    }
}

#[inline(never)]
extern "C" fn next_word(index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let ctx = unsafe { &mut *(ctx as *mut Words) };
    let Some(word) = (unsafe { read::<u64>(ctx.open_fds, index as usize * 8) }) else { return 1 };
    if word == 0 {
        return 0;
    }
    let mut bits = Bits { walk: ctx.walk, fds: ctx.fds, word, base: index as u32 * 64 };
    unsafe {
        generated::bpf_loop(64, next_bit as *mut _, &mut bits as *mut Bits as *mut _, 0);
        ((*ctx.walk).found != 0) as i64
    }
}

#[inline(never)]
extern "C" fn next_bit(bit: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let bits = unsafe { &mut *(ctx as *mut Bits) };
    let rest = bits.word >> (bit & 63);
    if rest == 0 {
        return 1;
    }
    if rest & 1 == 0 {
        return 0;
    }
    let fd = bits.base + bit as u32;
    unsafe {
        let walk = &mut *bits.walk;
        let Some(file) = read_ptr(bits.fds, fd as usize * 8) else { return 0 };
        if read_ptr(file, off!(file_inode)) == Some(walk.inode) {
            walk.fd = fd;
            walk.found = 1;
            return 1;
        }
    }
    0
}

/// References on a rename victim's dentry, counted like an unlink's: one
/// for the caller's own lookup, more if anything else holds the file. The
/// filesystem hook passes only the inode, so the dentry is its alias; the
/// rename itself holds one reference more than an unlink does.
#[inline(always)]
pub unsafe fn rename_victim_refs(inode: *const u8) -> Option<u32> {
    unsafe {
        let dentry = crate::kernel::alias_dentry(inode)?;
        read::<u32>(dentry, off!(dentry_count)).map(|refs| refs.saturating_sub(1))
    }
}
