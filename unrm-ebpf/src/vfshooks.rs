//! The fentry tier: deletions where the VFS makes them, for every
//! filesystem, at no cost to unrelated system calls; and the real final
//! release of a file, whoever drops it (`__fput`: a close, an exit, a
//! descriptor dropped from a socket buffer, io_uring).
//!
//! `vfs_unlink` and `vfs_rename` change signatures between kernel versions,
//! so arguments are fetched by the position the running kernel's BTF gives
//! (`bpf_get_func_arg`), and the result with `bpf_get_func_ret`. On
//! overlayfs the VFS is entered twice for one deletion (the overlay, then
//! its upper layer): only the outermost call is reported, as the deleting
//! process named the file.

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
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
fn func_ret(ctx: *mut c_void) -> Option<i64> {
    let mut value = 0u64;
    (unsafe { generated::bpf_get_func_ret(ctx, &mut value) } == 0).then_some(value as i64)
}

/// A field of `VFS_ARGS`, read the way `off!` reads offsets.
macro_rules! vfs_arg {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const VFS_ARGS.$field) };
        value
    }};
}

/// Records the call, unless one is already in progress on this thread
/// (overlayfs reaching its upper layer).
#[inline(always)]
unsafe fn begin(dentry: *const u8) {
    let tid = bpf_get_current_pid_tgid() as u32;
    if is_self() || FS_CALLS.get_ptr(&tid).is_some() {
        return;
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
        let call = FsCall { dentry: dentry as u64, inode: inode as u64, victim: victim(&facts, 1, refs) };
        if FS_CALLS.insert(&tid, &call, 0).is_err() {
            count(stat::LOST_INFLIGHT);
        }
    }
}

/// Reports the call `begin` recorded for `dentry`, if it succeeded.
#[inline(always)]
unsafe fn end(ctx: &FExitContext, op: u32, dentry: u64) {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = FS_CALLS.get_ptr(&tid) else { return };
    let call = unsafe { *call };
    if call.dentry != dentry {
        return; // the inner call of a nested pair
    }
    let _ = FS_CALLS.remove(&tid);
    if func_ret(ctx.as_ptr()) == Some(0) {
        unsafe { emit(ctx, op, call.dentry as *const u8, call.inode as *const u8, call.victim) };
    }
}

#[fentry(function = "vfs_unlink")]
pub fn unrm_vfs_unlink(ctx: FEntryContext) -> u32 {
    if let Some(dentry) = func_arg(ctx.as_ptr(), vfs_arg!(unlink_dentry)) {
        unsafe { begin(dentry as *const u8) };
    }
    0
}

#[fexit(function = "vfs_unlink")]
pub fn unrm_vfs_unlink_exit(ctx: FExitContext) -> u32 {
    if let Some(dentry) = func_arg(ctx.as_ptr(), vfs_arg!(unlink_dentry)) {
        unsafe { end(&ctx, delete_op::UNLINK, dentry) };
    }
    0
}

/// The target a rename would replace, or None.
#[inline(always)]
unsafe fn rename_target(ctx: *mut c_void) -> Option<u64> {
    let rd = func_arg(ctx, vfs_arg!(rename_data))? as *const u8;
    unsafe {
        let flags = read::<u32>(rd, vfs_arg!(rd_flags) as usize)?;
        if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
            return None;
        }
        read::<u64>(rd, vfs_arg!(rd_new_dentry) as usize)
    }
}

#[fentry(function = "vfs_rename")]
pub fn unrm_vfs_rename(ctx: FEntryContext) -> u32 {
    if let Some(target) = unsafe { rename_target(ctx.as_ptr()) } {
        unsafe { begin(target as *const u8) };
    }
    0
}

#[fexit(function = "vfs_rename")]
pub fn unrm_vfs_rename_exit(ctx: FExitContext) -> u32 {
    if let Some(target) = unsafe { rename_target(ctx.as_ptr()) } {
        unsafe { end(&ctx, delete_op::RENAME, target) };
    }
    0
}

/// The final release of an open file: a hint when its inode is watched.
#[fentry(function = "__fput")]
pub fn unrm_fput(ctx: FEntryContext) -> u32 {
    let file: *const u8 = ctx.arg(0);
    unsafe {
        let Some(inode) = file_inode(file) else { return 0 };
        let Some(ino) = read::<u64>(inode, off!(inode_ino)) else { return 0 };
        let Some(dev) = read_ptr(inode, off!(inode_sb)).and_then(|sb| read::<u32>(sb, off!(sb_dev))) else {
            return 0;
        };
        let key = InodeKey { dev, _pad: 0, ino };
        if WATCHED_INODES.get_ptr(&key).is_none() {
            return 0;
        }
        let pid_tgid = bpf_get_current_pid_tgid();
        let event = ReleaseEvent {
            kind: event_kind::RELEASE,
            reason: release_reason::FPUT,
            ktime_ns: aya_ebpf::helpers::bpf_ktime_get_ns(),
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
    0
}
