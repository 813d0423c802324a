//! The fs tier: deletions seen by filesystem tracepoints alone.
//!
//! Attaching any syscall tracepoint puts every task on the kernel's
//! syscall-tracing slow path; a filesystem tracepoint costs nothing until
//! its own operation runs. Here ext4 tells us everything: the deleter is the
//! current task, `ext4_unlink_enter`/`ext4_unlink_exit` bracket an unlink
//! with its dentry and result, and a rename's victim is the regular inode
//! whose link count reached zero as `ext4_rename` marks it dirty. The path
//! is written relative to the filesystem; the daemon knows where it is
//! mounted. Other filesystems are left to the daemon's periodic snapshots.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext};
use unrm_abi::{delete_op, stat};

use crate::{
    event::{emit, is_self, now_ns, rename_victim_refs, victim},
    kernel::{Dentry, Inode},
    maps::{FS_CALLS, FS_RENAMED, FsCall, count, loaded},
};

#[raw_tracepoint(tracepoint = "ext4_unlink_enter")]
pub fn unrm_fs_unlink_enter(ctx: RawTracePointContext) -> u32 {
    if is_self() {
        return 0;
    }
    let Some(dentry) = Dentry::new(ctx.arg(1)) else { return 0 };
    let Some(inode) = dentry.inode() else { return 0 };
    let Some(facts) = inode.facts() else { return 0 };
    // Only the last name of a regular file is a deletion worth a record.
    if !facts.is_regular() || facts.nlink != 1 {
        return 0;
    }
    let refs = dentry.refs();
    let call = FsCall {
        dentry: dentry.addr(),
        inode: inode.addr(),
        victim: victim(&facts, facts.nlink, refs, Some(dentry)),
        depth: 0,
        _pad: 0,
        at_ns: now_ns(),
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if FS_CALLS.insert(&tid, &call, 0).is_err() {
        count(stat::LOST_INFLIGHT);
    }
    0
}

#[raw_tracepoint(tracepoint = "ext4_unlink_exit")]
pub fn unrm_fs_unlink_exit(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = FS_CALLS.get_ptr(&tid) else { return 0 };
    // SAFETY: a copy of this thread's entry, which only this thread's
    // programs write, and never while this one runs.
    let call = unsafe { *call };
    let _ = FS_CALLS.remove(&tid);
    let ret: u64 = ctx.arg(1);
    if ret as i32 == 0
        && let Some(dentry) = Dentry::from_addr(call.dentry)
        && Inode::from_addr(call.inode).is_some()
    {
        emit(&ctx, delete_op::UNLINK, dentry, call.victim, call.at_ns);
    }
    0
}

/// `ext4_mark_inode_dirty(inode, caller)`: during a rename, the replaced
/// file is the regular inode left with no link.
#[raw_tracepoint(tracepoint = "ext4_mark_inode_dirty")]
pub fn unrm_fs_rename_victim(ctx: RawTracePointContext) -> u32 {
    let caller: u64 = ctx.arg(1);
    let range = loaded!(EXT4_RENAME);
    if caller < range[0] || caller >= range[1] || is_self() {
        return 0;
    }
    let Some(inode) = Inode::new(ctx.arg(0)) else { return 0 };
    if inode.nlink() != Some(0) {
        return 0;
    }
    let Some(facts) = inode.facts() else { return 0 };
    if !facts.is_regular() {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a read of this thread's entry, which only this thread's
    // programs write, and never while this one runs.
    if FS_RENAMED.get_ptr(&tid).is_some_and(|last| unsafe { *last } == inode.addr()) {
        return 0;
    }
    let _ = FS_RENAMED.insert(&tid, &inode.addr(), 0);
    let Some(dentry) = inode.alias() else { return 0 };
    let v = victim(&facts, 1, rename_victim_refs(dentry), Some(dentry));
    // The rename's start is not seen here (no hook on its entry).
    emit(&ctx, delete_op::RENAME, dentry, v, now_ns());
    0
}
