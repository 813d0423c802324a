//! Deletions: the syscall tracepoints say who removed which name; the ext4
//! hooks, firing inside the same call, say which inode and whether anything
//! else held it. Entry records the arguments by thread id, exit turns them
//! into one event, so a failed or unrelated call costs a map insert/delete.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_user_str},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use unrm_abi::{PATH_MAX, Victim, delete_op, path_flags, stat, victim_flags};

use crate::{
    dirwalk::{Walk, write_dir},
    event::{header, is_self_tgid, maybe_held, now_ns, rename_victim_refs, send, victim},
    kernel::{Dentry, Inode, PathRef, Task},
    maps::{EVENT_BUF, INFLIGHT, Inflight, count},
    syscall::{self, arg},
};

const AT_FDCWD: i32 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const RENAME_NOREPLACE: u64 = 1;
const RENAME_EXCHANGE: u64 = 2;

#[inline(always)]
fn begin(ctx: &TracePointContext, op: u32, dirfd: u64, path: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The daemon's own files (index journal, store temporaries) are not news.
    if is_self_tgid((pid_tgid >> 32) as u32) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let call = Inflight { op, dirfd: dirfd as i32, path, victim: Victim::default(), started_ns: now_ns() };
    if INFLIGHT.insert(&tid, &call, 0).is_err() {
        count(stat::LOST_INFLIGHT);
        warn!(ctx, "unrm: in-flight table full; deletion by thread {} unseen", tid);
    }
    0
}

#[tracepoint]
pub fn unrm_enter_unlink(ctx: TracePointContext) -> u32 {
    begin(&ctx, delete_op::UNLINK, AT_FDCWD as u64, arg(&ctx, 0))
}

#[tracepoint]
pub fn unrm_enter_unlinkat(ctx: TracePointContext) -> u32 {
    if arg(&ctx, 2) & AT_REMOVEDIR != 0 {
        return 0;
    }
    begin(&ctx, delete_op::UNLINK, arg(&ctx, 0), arg(&ctx, 1))
}

#[tracepoint]
pub fn unrm_enter_rename(ctx: TracePointContext) -> u32 {
    begin(&ctx, delete_op::RENAME, AT_FDCWD as u64, arg(&ctx, 1))
}

#[tracepoint]
pub fn unrm_enter_renameat(ctx: TracePointContext) -> u32 {
    begin(&ctx, delete_op::RENAME, arg(&ctx, 2), arg(&ctx, 3))
}

#[tracepoint]
pub fn unrm_enter_renameat2(ctx: TracePointContext) -> u32 {
    // Neither flag can drop a name: one refuses to replace, one swaps.
    if arg(&ctx, 4) & (RENAME_NOREPLACE | RENAME_EXCHANGE) != 0 {
        return 0;
    }
    begin(&ctx, delete_op::RENAME, arg(&ctx, 2), arg(&ctx, 3))
}

/// Attached to the exit of every deletion call above.
#[tracepoint]
pub fn unrm_exit_deletion(ctx: TracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = INFLIGHT.get_ptr(&tid) else { return 0 };
    // SAFETY: a copy of this thread's entry, which only this thread's
    // programs write, and never while this one runs.
    let call = unsafe { *call };
    let _ = INFLIGHT.remove(&tid);
    let ret = syscall::ret(&ctx);
    if ret != 0 {
        count(stat::FAILED_CALLS);
        return 0;
    }
    emit_deletion(&ctx, &call, ret);
    0
}

/// Sends the event: the path as the caller passed it and, for a relative
/// one, the directory it started from.
#[inline(always)]
fn emit_deletion(ctx: &TracePointContext, call: &Inflight, ret: i64) {
    let Some(buf) = EVENT_BUF.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map, which nothing else touches
    // while this program runs.
    let buf = unsafe { &mut *buf };
    let data = &mut buf.data;
    // SAFETY: copies at most `PATH_MAX` bytes of the caller's own argument,
    // user memory, into `data`, which is longer; a bad address fails.
    let n = unsafe {
        bpf_probe_read_user_str(data.as_mut_ptr() as *mut _, PATH_MAX as u32, call.path as *const _)
    };
    let path_len = if n > 0 { (n - 1) as usize } else { 0 };
    let mut flags = 0;
    let mut dir_len = 0;
    if path_len > 0 && data[0] == b'/' {
        flags |= path_flags::ABSOLUTE;
    } else {
        match base_dir(call.dirfd) {
            Some((start, root)) => match write_dir(data, path_len, start, root) {
                Walk::Complete(len) => dir_len = len,
                Walk::Truncated(len) => {
                    dir_len = len;
                    flags |= path_flags::DIR_TRUNCATED;
                }
            },
            None => flags |= path_flags::DIR_UNKNOWN,
        }
    }
    buf.header = header(call.op, ret as i32, call.victim, path_len, dir_len, flags);
    buf.header.ktime_ns = call.started_ns;
    // Only a deletion that may be held is urgent: the daemon races its
    // holders to pin it. The rest wait for the reader's next wake-up, so an
    // `rm -rf` of unheld files does not wake it per file.
    let v = &call.victim;
    let unheld = !maybe_held(v);
    let quiet = unheld || v.flags & victim_flags::FS_HOOKED != 0 && v.flags & victim_flags::KNOWN == 0;
    send(ctx, buf, path_len + dir_len, !quiet);
}

/// The directory a relative path starts from, and the caller's root.
#[inline(always)]
fn base_dir(dirfd: i32) -> Option<(PathRef, PathRef)> {
    let task = Task::current()?;
    let fs = task.fs()?;
    let root = fs.root()?.get()?;
    let start = if dirfd == AT_FDCWD { fs.pwd()?.get()? } else { task.file(dirfd as u32)?.path()?.get()? };
    Some((start, root))
}

/// ext4 calls this with the dentry it is about to unlink, inside our call.
#[raw_tracepoint(tracepoint = "ext4_unlink_enter")]
pub fn unrm_ext4_unlink(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = INFLIGHT.get_ptr_mut(&tid) else { return 0 };
    let Some(dentry) = Dentry::new(ctx.arg(1)) else { return 0 };
    let Some(inode) = dentry.inode() else { return 0 };
    let Some(facts) = inode.facts() else { return 0 };
    let refs = dentry.refs();
    // SAFETY: this thread's entry, which only this thread's programs
    // write, and never while this one runs.
    let call = unsafe { &mut *call };
    call.victim = victim(&facts, facts.nlink, refs, Some(dentry));
    0
}

/// ext4 marks every inode a rename touches dirty; a regular file whose link
/// count has just reached zero is the one the rename replaced.
#[raw_tracepoint(tracepoint = "ext4_mark_inode_dirty")]
pub fn unrm_ext4_dirty(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = INFLIGHT.get_ptr_mut(&tid) else { return 0 };
    // SAFETY: as in `unrm_ext4_unlink`.
    let call = unsafe { &mut *call };
    if call.victim.flags & victim_flags::KNOWN != 0 {
        return 0;
    }
    call.victim.flags |= victim_flags::FS_HOOKED;
    if call.op != delete_op::RENAME {
        return 0;
    }
    let Some(inode) = Inode::new(ctx.arg(0)) else { return 0 };
    let Some(facts) = inode.facts() else { return 0 };
    if !facts.is_regular() || facts.nlink != 0 {
        return 0;
    }
    // The link count before the rename dropped it was one.
    let alias = inode.alias();
    call.victim = victim(&facts, 1, alias.and_then(rename_victim_refs), alias);
    0
}
