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
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use unrm_abi::{InodeKey, ReleaseEvent, delete_op, event_kind, release_reason, stat};

use crate::{
    event::{emit, is_self, now_ns, victim},
    kernel::{Dentry, File, Inode, Regs, RenameData, SuperBlock},
    maps::{EVENTS, FS_CALLS, FsCall, WATCHED_INODES, count, loaded},
};

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// Filesystems that keep one reference on every dentry so that it stays in
/// memory (they have nowhere else to keep it): tmpfs, ramfs, hugetlbfs.
const PINNED_DENTRY_MAGICS: [u64; 3] = [0x0102_1994, 0x8584_58f6, 0x9584_58f6];

/// References a dentry holds for its filesystem's sake, not a holder's.
#[inline(always)]
fn pinned_by_fs(inode: Inode) -> u32 {
    let magic = inode.sb().and_then(SuperBlock::magic);
    magic.is_some_and(|m| PINNED_DENTRY_MAGICS.contains(&m)) as u32
}

/// An fentry or fexit program's argument `n`, wherever the trampoline put
/// it: the position is known only at load time.
#[inline(always)]
fn func_arg(ctx: *mut c_void, n: u32) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the helper checks `n` against the function's argument count
    // and writes one `u64` into `value`.
    (unsafe { generated::bpf_get_func_arg(ctx, n, &mut value) } == 0).then_some(value)
}

/// An fexit program's return value.
#[inline(always)]
fn func_ret(ctx: *mut c_void) -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the helper writes one `u64` into `value`.
    (unsafe { generated::bpf_get_func_ret(ctx, &mut value) } == 0).then_some(value)
}

/// A kprobe's argument `n`, read from the saved registers.
#[inline(always)]
fn kp_arg(ctx: &ProbeContext, n: u32) -> Option<u64> {
    Regs::of(ctx)?.arg(n)
}

/// A call still open after this long lost its return (a kretprobe can miss
/// one when too many calls sleep at once): a new call replaces it.
const STALE_NS: u64 = 1_000_000_000;

/// Records the call, or, when one is in progress on this thread (overlayfs
/// reaching its upper layer), counts one more level inside it.
#[inline(always)]
fn begin(dentry: Dentry) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if is_self() {
        return;
    }
    let now = now_ns();
    if let Some(call) = FS_CALLS.get_ptr_mut(&tid) {
        // SAFETY: this thread's entry, which only this thread's programs
        // write, and never while this one runs.
        let call = unsafe { &mut *call };
        if now.saturating_sub(call.at_ns) < STALE_NS {
            call.depth += 1;
            return;
        }
    }
    let Some(inode) = dentry.inode() else { return };
    let Some(facts) = inode.facts() else { return };
    if !facts.is_regular() || facts.nlink != 1 {
        return;
    }
    // At entry the caller's lookup holds one reference, as the deleter's
    // own does for the other tiers; `vfs_rename` takes its extra one later.
    let slack = pinned_by_fs(inode);
    let refs = dentry.refs().map(|r| r.saturating_sub(slack));
    let call = FsCall {
        dentry: dentry.addr(),
        inode: inode.addr(),
        victim: victim(&facts, 1, refs, Some(dentry)),
        depth: 0,
        _pad: 0,
        at_ns: now,
    };
    if FS_CALLS.insert(&tid, &call, 0).is_err() {
        count(stat::LOST_INFLIGHT);
    }
}

/// Reports the call `begin` recorded once its outermost level returns, if
/// it succeeded (`ret` is the C `int` the function returned).
#[inline(always)]
fn end<C: EbpfContext>(ctx: &C, op: u32, ret: Option<i32>) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = FS_CALLS.get_ptr_mut(&tid) else { return };
    // SAFETY: as in `begin`.
    let call = unsafe { &mut *call };
    if call.depth > 0 {
        call.depth -= 1;
        return;
    }
    let call = *call;
    let _ = FS_CALLS.remove(&tid);
    if ret == Some(0)
        && let Some(dentry) = Dentry::from_addr(call.dentry)
        && Inode::from_addr(call.inode).is_some()
    {
        emit(ctx, op, dentry, call.victim, call.at_ns);
    }
}

/// The target a rename would replace, or None.
#[inline(always)]
fn rename_target(rd: RenameData) -> Option<Dentry> {
    let flags = rd.flags()?;
    if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
        return None;
    }
    rd.new_dentry()
}

/// Entry to `vfs_unlink`, given its `dentry` argument.
#[inline(always)]
fn unlink_entry(dentry: Option<u64>) {
    if let Some(dentry) = dentry.and_then(Dentry::from_addr) {
        begin(dentry);
    }
}

/// Entry to `vfs_rename`, given its `renamedata` argument: the victim is the
/// target it would replace.
#[inline(always)]
fn rename_entry(rd: Option<u64>) {
    if let Some(target) = rd.and_then(RenameData::from_addr).and_then(rename_target) {
        begin(target);
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
    unlink_entry(func_arg(ctx.as_ptr(), loaded!(VFS_ARGS.unlink_dentry)));
    0
}

#[fexit(function = "vfs_unlink")]
pub fn unrm_vfs_unlink_exit(ctx: FExitContext) -> u32 {
    end(&ctx, delete_op::UNLINK, func_ret(ctx.as_ptr()).map(int_ret));
    0
}

#[fentry(function = "vfs_rename")]
pub fn unrm_vfs_rename(ctx: FEntryContext) -> u32 {
    rename_entry(func_arg(ctx.as_ptr(), loaded!(VFS_ARGS.rename_data)));
    0
}

#[fexit(function = "vfs_rename")]
pub fn unrm_vfs_rename_exit(ctx: FExitContext) -> u32 {
    end(&ctx, delete_op::RENAME, func_ret(ctx.as_ptr()).map(int_ret));
    0
}

#[kprobe(function = "vfs_unlink")]
pub fn unrm_kp_unlink(ctx: ProbeContext) -> u32 {
    unlink_entry(kp_arg(&ctx, loaded!(VFS_ARGS.unlink_dentry)));
    0
}

#[kretprobe(function = "vfs_unlink")]
pub fn unrm_kp_unlink_exit(ctx: RetProbeContext) -> u32 {
    end(&ctx, delete_op::UNLINK, Some(int_ret(ctx.ret::<u64>())));
    0
}

#[kprobe(function = "vfs_rename")]
pub fn unrm_kp_rename(ctx: ProbeContext) -> u32 {
    rename_entry(kp_arg(&ctx, loaded!(VFS_ARGS.rename_data)));
    0
}

#[kretprobe(function = "vfs_rename")]
pub fn unrm_kp_rename_exit(ctx: RetProbeContext) -> u32 {
    end(&ctx, delete_op::RENAME, Some(int_ret(ctx.ret::<u64>())));
    0
}

/// The final release of an open file: a hint when its inode is watched.
#[inline(always)]
fn final_release(file: File) {
    let Some(inode) = file.inode() else { return };
    let Some(ino) = inode.ino() else { return };
    let Some(dev) = inode.sb().and_then(SuperBlock::dev) else { return };
    let key = InodeKey { dev, _pad: 0, ino };
    if WATCHED_INODES.get_ptr(&key).is_none() {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let event = ReleaseEvent {
        kind: event_kind::RELEASE,
        reason: release_reason::FPUT,
        ktime_ns: now_ns(),
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        ret: 0,
        dev,
        _pad: 0,
        ino,
    };
    if EVENTS.output::<ReleaseEvent>(event, BPF_RB_FORCE_WAKEUP as u64).is_err() {
        count(stat::LOST_EVENTS);
    }
}

#[fentry(function = "__fput")]
pub fn unrm_fput(ctx: FEntryContext) -> u32 {
    if let Some(file) = File::new(ctx.arg(0)) {
        final_release(file);
    }
    0
}

#[kprobe(function = "__fput")]
pub fn unrm_kp_fput(ctx: ProbeContext) -> u32 {
    if let Some(file) = kp_arg(&ctx, 0).and_then(File::from_addr) {
        final_release(file);
    }
    0
}
