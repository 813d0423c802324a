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

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use aya_log_ebpf::warn;
use unrm_abi::{DeleteEvent, Victim, delete_op, event_kind, path_flags, stat, victim_flags};

use crate::{
    deletion::victim,
    holder::{self, rename_victim_refs},
    kernel::{Walk, current_mnt_ns, inode_facts, off, read, read_ptr, write_fs_path},
    maps::{DATA_LEN, EVENT_BUF, EVENTS, EXT4_RENAME, FS_CALLS, FS_RENAMED, FsCall, SELF_TGID, count},
};

#[inline(always)]
pub fn is_self() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == unsafe { core::ptr::read_volatile(&raw const SELF_TGID) }
}

#[raw_tracepoint(tracepoint = "ext4_unlink_enter")]
pub fn unrm_fs_unlink_enter(ctx: RawTracePointContext) -> u32 {
    if is_self() {
        return 0;
    }
    unsafe {
        let dentry: *const u8 = ctx.arg(1);
        let Some(inode) = read_ptr(dentry, off!(dentry_inode)) else { return 0 };
        let Some(facts) = inode_facts(inode) else { return 0 };
        // Only the last name of a regular file is a deletion worth a record.
        if !facts.is_regular() || facts.nlink != 1 {
            return 0;
        }
        let refs = read::<u32>(dentry, off!(dentry_count));
        let call = FsCall {
            dentry: dentry as u64,
            inode: inode as u64,
            victim: victim(&facts, facts.nlink, refs, dentry),
            depth: 0,
            _pad: 0,
            at_ns: bpf_ktime_get_ns(),
        };
        let tid = bpf_get_current_pid_tgid() as u32;
        if FS_CALLS.insert(&tid, &call, 0).is_err() {
            count(stat::LOST_INFLIGHT);
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "ext4_unlink_exit")]
pub fn unrm_fs_unlink_exit(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = FS_CALLS.get_ptr(&tid) else { return 0 };
    let call = unsafe { *call };
    let _ = FS_CALLS.remove(&tid);
    let ret: u64 = ctx.arg(1);
    if ret as i32 == 0 {
        unsafe {
            emit(&ctx, delete_op::UNLINK, call.dentry as *const u8, call.inode as *const u8, call.victim)
        };
    }
    0
}

/// `ext4_mark_inode_dirty(inode, caller)`: during a rename, the replaced
/// file is the regular inode left with no link.
#[raw_tracepoint(tracepoint = "ext4_mark_inode_dirty")]
pub fn unrm_fs_rename_victim(ctx: RawTracePointContext) -> u32 {
    let caller: u64 = ctx.arg(1);
    let range = unsafe { core::ptr::read_volatile(&raw const EXT4_RENAME) };
    if caller < range[0] || caller >= range[1] || is_self() {
        return 0;
    }
    unsafe {
        let inode: *const u8 = ctx.arg(0);
        if read::<u32>(inode, off!(inode_nlink)) != Some(0) {
            return 0;
        }
        let Some(facts) = inode_facts(inode) else { return 0 };
        if !facts.is_regular() {
            return 0;
        }
        let tid = bpf_get_current_pid_tgid() as u32;
        if FS_RENAMED.get_ptr(&tid).is_some_and(|last| *last == inode as u64) {
            return 0;
        }
        let _ = FS_RENAMED.insert(&tid, &(inode as u64), 0);
        let Some(dentry) = crate::kernel::alias_dentry(inode) else { return 0 };
        emit(&ctx, delete_op::RENAME, dentry, inode, victim(&facts, 1, rename_victim_refs(inode), dentry));
    }
    0
}

/// Reports a deletion a filesystem-level hook saw: the path relative to the
/// filesystem, a holder if the dentry count says one exists. Shared by the
/// fs tier (ext4 tracepoints) and the fentry tier (the VFS itself).
#[inline(always)]
pub unsafe fn emit<C: EbpfContext>(ctx: &C, op: u32, dentry: *const u8, inode: *const u8, mut v: Victim) {
    let maybe_held = v.flags & victim_flags::REFS_VALID == 0 || v.refs > 1;
    if maybe_held && let Some(found) = unsafe { holder::find(inode) } {
        v.flags |= victim_flags::HOLDER;
        v.holder_tgid = found.tgid;
        v.holder_fd = found.fd;
        v.holder_uid = found.uid;
    }
    let Some(buf) = EVENT_BUF.get_ptr_mut(0) else { return };
    unsafe {
        let data = (*buf).data.as_mut_ptr();
        let (dir_len, flags) = match write_fs_path(data, 0, dentry) {
            Walk::Complete(len) => (len, path_flags::FS_RELATIVE),
            Walk::Truncated(len) => (len, path_flags::FS_RELATIVE | path_flags::DIR_TRUNCATED),
        };
        let pid_tgid = bpf_get_current_pid_tgid();
        (*buf).header = DeleteEvent {
            kind: event_kind::DELETE,
            op,
            ktime_ns: bpf_ktime_get_ns(),
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            uid: bpf_get_current_uid_gid() as u32,
            ret: 0,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            victim: v,
            path_len: 0,
            dir_len: dir_len as u32,
            path_flags: flags,
            mnt_ns: current_mnt_ns(),
        };
        let len = core::mem::size_of::<DeleteEvent>() + dir_len;
        if len > core::mem::size_of::<DeleteEvent>() + DATA_LEN {
            return;
        }
        let bytes = core::slice::from_raw_parts(buf as *const u8, len);
        let wake = if maybe_held { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
        if EVENTS.output::<[u8]>(bytes, wake as u64).is_err() {
            count(stat::LOST_EVENTS);
            warn!(ctx, "unrm: ring buffer full; deletion by {} dropped", (*buf).header.tgid);
        }
    }
}
