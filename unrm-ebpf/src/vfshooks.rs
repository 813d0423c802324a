//! The VFS tiers: deletions where the VFS makes them, for every
//! filesystem, at no cost to unrelated system calls; and the real final
//! release of a file, whoever drops it (`__fput`: a close, an exit, a
//! descriptor dropped from a socket buffer, io_uring). The same hooks come
//! as fentry/fexit (trampolines: cheapest) and as kprobes/kretprobes, for
//! kernels that allow kprobes but have no trampolines.
//!
//! `vfs_unlink` and `vfs_rename` change signatures between kernel versions,
//! so arguments are fetched by the position the running kernel's BTF gives
//! (`bpf_get_func_arg`, or the matching register), and the result as the
//! function returns. On overlayfs the VFS is entered twice for one deletion
//! (the overlay, then its upper layer): only the outermost call is
//! reported, as the deleting process named the file.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use unrm_abi::{InodeKey, ReleaseEvent, delete_op, event_kind, release_reason, stat};

use crate::{
    deletion::victim,
    fshooks::{emit, is_self},
    kernel::{file_inode, inode_facts, off, read, read_ptr},
    maps::{EVENTS, FS_CALLS, FsCall, VFS_ARGS, WATCHED_INODES, count},
};

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// Filesystems that keep one reference on every dentry so that it stays in
/// memory (they have nowhere else to keep it): tmpfs, ramfs, hugetlbfs.
const PINNED_DENTRY_MAGICS: [u64; 3] = [0x0102_1994, 0x8584_58f6, 0x9584_58f6];

/// References a dentry holds for its filesystem's sake, not a holder's.
#[inline(always)]
unsafe fn pinned_by_fs(inode: *const u8) -> u32 {
    let magic = unsafe { read_ptr(inode, off!(inode_sb)).and_then(|sb| read::<u64>(sb, off!(sb_magic))) };
    magic.is_some_and(|m| PINNED_DENTRY_MAGICS.contains(&m)) as u32
}

#[inline(always)]
fn func_arg(ctx: *mut c_void, n: u32) -> Option<u64> {
    let mut value = 0u64;
    (unsafe { generated::bpf_get_func_arg(ctx, n, &mut value) } == 0).then_some(value)
}

#[inline(always)]
fn func_ret(ctx: *mut c_void) -> Option<u64> {
    let mut value = 0u64;
    (unsafe { generated::bpf_get_func_ret(ctx, &mut value) } == 0).then_some(value)
}

/// A kprobe's argument `n`, read from the saved registers: the position is
/// known only at load time, and the verifier refuses a variable offset into
/// the context itself. x86-64's calling convention.
#[inline(always)]
fn kp_arg(ctx: &ProbeContext, n: u32) -> Option<u64> {
    use aya_ebpf::bindings::pt_regs;
    use core::mem::offset_of;
    const ARGS: [usize; 6] = [
        offset_of!(pt_regs, rdi),
        offset_of!(pt_regs, rsi),
        offset_of!(pt_regs, rdx),
        offset_of!(pt_regs, rcx),
        offset_of!(pt_regs, r8),
        offset_of!(pt_regs, r9),
    ];
    let at = *ARGS.get(n as usize)?;
    unsafe { read::<u64>(ctx.as_ptr() as *const u8, at) }
}

/// A field of `VFS_ARGS`, read the way `off!` reads offsets.
macro_rules! vfs_arg {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const VFS_ARGS.$field) };
        value
    }};
}

/// A call still open after this long lost its return (a kretprobe can miss
/// one when too many calls sleep at once): a new call replaces it.
const STALE_NS: u64 = 1_000_000_000;

/// Records the call, or, when one is in progress on this thread (overlayfs
/// reaching its upper layer), counts one more level inside it.
#[inline(always)]
unsafe fn begin(dentry: *const u8) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if is_self() {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(call) = FS_CALLS.get_ptr_mut(&tid) {
        unsafe {
            if now.saturating_sub((*call).at_ns) < STALE_NS {
                (*call).depth += 1;
                return;
            }
        }
    }
    unsafe {
        let Some(inode) = read_ptr(dentry, off!(dentry_inode)) else { return };
        let Some(facts) = inode_facts(inode) else { return };
        if !facts.is_regular() || facts.nlink != 1 {
            return;
        }
        // At entry the caller's lookup holds one reference, as the deleter's
        // own does for the other tiers; `vfs_rename` takes its extra one later.
        let slack = pinned_by_fs(inode);
        let refs = read::<u32>(dentry, off!(dentry_count)).map(|r| r.saturating_sub(slack));
        let call = FsCall {
            dentry: dentry as u64,
            inode: inode as u64,
            victim: victim(&facts, 1, refs, dentry),
            depth: 0,
            _pad: 0,
            at_ns: now,
        };
        if FS_CALLS.insert(&tid, &call, 0).is_err() {
            count(stat::LOST_INFLIGHT);
        }
    }
}

/// Reports the call `begin` recorded once its outermost level returns, if
/// it succeeded (`ret` is the C `int` the function returned).
#[inline(always)]
unsafe fn end<C: EbpfContext>(ctx: &C, op: u32, ret: Option<i32>) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = FS_CALLS.get_ptr_mut(&tid) else { return };
    let call = unsafe {
        if (*call).depth > 0 {
            (*call).depth -= 1;
            return;
        }
        *call
    };
    let _ = FS_CALLS.remove(&tid);
    if ret == Some(0) {
        unsafe { emit(ctx, op, call.dentry as *const u8, call.inode as *const u8, call.victim) };
    }
}

/// The target a rename would replace, or None.
#[inline(always)]
unsafe fn rename_target(rd: *const u8) -> Option<u64> {
    unsafe {
        let flags = read::<u32>(rd, vfs_arg!(rd_flags) as usize)?;
        if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return None;
        }
        read::<u64>(rd, vfs_arg!(rd_new_dentry) as usize)
    }
}

/// Entry to `vfs_unlink`, given its `dentry` argument.
#[inline(always)]
unsafe fn unlink_entry(dentry: Option<u64>) {
    if let Some(dentry) = dentry {
        unsafe { begin(dentry as *const u8) };
    }
}

/// Entry to `vfs_rename`, given its `renamedata` argument: the victim is the
/// target it would replace.
#[inline(always)]
unsafe fn rename_entry(rd: Option<u64>) {
    if let Some(target) = rd.and_then(|rd| unsafe { rename_target(rd as *const u8) }) {
        unsafe { begin(target as *const u8) };
    }
}

/// The function's result as the `int` it is: the upper half of the return
/// register is not part of it.
#[inline(always)]
fn int_ret(value: u64) -> i32 {
    value as i32
}

#[fentry(function = "vfs_unlink")]
pub fn unrm_vfs_unlink(ctx: FEntryContext) -> u32 {
    unsafe { unlink_entry(func_arg(ctx.as_ptr(), vfs_arg!(unlink_dentry))) };
    0
}

#[fexit(function = "vfs_unlink")]
pub fn unrm_vfs_unlink_exit(ctx: FExitContext) -> u32 {
    unsafe { end(&ctx, delete_op::UNLINK, func_ret(ctx.as_ptr()).map(int_ret)) };
    0
}

#[fentry(function = "vfs_rename")]
pub fn unrm_vfs_rename(ctx: FEntryContext) -> u32 {
    unsafe { rename_entry(func_arg(ctx.as_ptr(), vfs_arg!(rename_data))) };
    0
}

#[fexit(function = "vfs_rename")]
pub fn unrm_vfs_rename_exit(ctx: FExitContext) -> u32 {
    unsafe { end(&ctx, delete_op::RENAME, func_ret(ctx.as_ptr()).map(int_ret)) };
    0
}

#[kprobe(function = "vfs_unlink")]
pub fn unrm_kp_unlink(ctx: ProbeContext) -> u32 {
    unsafe { unlink_entry(kp_arg(&ctx, vfs_arg!(unlink_dentry))) };
    0
}

#[kretprobe(function = "vfs_unlink")]
pub fn unrm_kp_unlink_exit(ctx: RetProbeContext) -> u32 {
    unsafe { end(&ctx, delete_op::UNLINK, Some(int_ret(ctx.ret::<u64>()))) };
    0
}

#[kprobe(function = "vfs_rename")]
pub fn unrm_kp_rename(ctx: ProbeContext) -> u32 {
    unsafe { rename_entry(kp_arg(&ctx, vfs_arg!(rename_data))) };
    0
}

#[kretprobe(function = "vfs_rename")]
pub fn unrm_kp_rename_exit(ctx: RetProbeContext) -> u32 {
    unsafe { end(&ctx, delete_op::RENAME, Some(int_ret(ctx.ret::<u64>()))) };
    0
}

/// The final release of an open file: a hint when its inode is watched.
#[inline(always)]
unsafe fn final_release(file: *const u8) {
    unsafe {
        let Some(inode) = file_inode(file) else { return };
        let Some(ino) = read::<u64>(inode, off!(inode_ino)) else { return };
        let Some(dev) = read_ptr(inode, off!(inode_sb)).and_then(|sb| read::<u32>(sb, off!(sb_dev))) else {
            return;
        };
        let key = InodeKey { dev, _pad: 0, ino };
        if WATCHED_INODES.get_ptr(&key).is_none() {
            return;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let event = ReleaseEvent {
            kind: event_kind::RELEASE,
            reason: release_reason::FPUT,
            ktime_ns: bpf_ktime_get_ns(),
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            ret: 0,
            dev,
            _pad: 0,
            ino,
        };
        let wake = aya_ebpf::bindings::BPF_RB_FORCE_WAKEUP as u64;
        if EVENTS.output::<ReleaseEvent>(event, wake).is_err() {
            count(stat::LOST_EVENTS);
        }
    }
}

#[fentry(function = "__fput")]
pub fn unrm_fput(ctx: FEntryContext) -> u32 {
    unsafe { final_release(ctx.arg(0)) };
    0
}

#[kprobe(function = "__fput")]
pub fn unrm_kp_fput(ctx: ProbeContext) -> u32 {
    if let Some(file) = kp_arg(&ctx, 0) {
        unsafe { final_release(file as *const u8) };
    }
    0
}
