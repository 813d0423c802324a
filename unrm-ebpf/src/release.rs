//! Release hints: a watched process may have let go of a watched inode. The
//! first test on every path is one lookup in `WATCHED_TGIDS`, so processes the
//! daemon does not watch pay a map miss and nothing else. These are hints:
//! the daemon re-reads the kernel's state before it decides anything.

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP, helpers::bpf_get_current_pid_tgid, macros::tracepoint,
    programs::TracePointContext,
};
use unrm_abi::{InodeKey, ReleaseEvent, event_kind, release_reason, stat};

use crate::{
    event::now_ns,
    kernel::{InodeFacts, Task},
    maps::{EVENTS, PendingRelease, RELEASES, WATCHED_INODES, WATCHED_TGIDS, count},
    syscall::{self, arg},
};

#[inline(always)]
fn current() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (pid_tgid as u32, (pid_tgid >> 32) as u32)
}

#[inline(always)]
fn watched(tgid: u32) -> bool {
    WATCHED_TGIDS.get_ptr(&tgid).is_some()
}

#[inline(always)]
fn emit(reason: u32, tid: u32, tgid: u32, ret: i64, inode: InodeKey) {
    let event = ReleaseEvent {
        kind: event_kind::RELEASE,
        reason,
        ktime_ns: now_ns(),
        tid,
        tgid,
        ret,
        dev: inode.dev,
        _pad: 0,
        ino: inode.ino,
    };
    if EVENTS.output::<ReleaseEvent>(event, BPF_RB_FORCE_WAKEUP as u64).is_err() {
        count(stat::LOST_EVENTS);
    }
}

/// Remembers, until the call returns, that `fd` refers to a watched inode.
#[inline(always)]
fn begin_fd(reason: u32, fd: u64) -> u32 {
    let (tid, tgid) = current();
    if !watched(tgid) {
        return 0;
    }
    let Some(InodeFacts { dev, ino, .. }) = fd_facts(fd as u32) else { return 0 };
    let inode = InodeKey { dev, _pad: 0, ino };
    if WATCHED_INODES.get_ptr(&inode).is_none() {
        return 0;
    }
    let _ = RELEASES.insert(&tid, &PendingRelease { reason, _pad: 0, inode }, 0);
    0
}

/// What the current task's descriptor `fd` is open on.
#[inline(always)]
fn fd_facts(fd: u32) -> Option<InodeFacts> {
    Task::current()?.file(fd)?.inode()?.facts()
}

#[tracepoint]
pub fn unrm_enter_close(ctx: TracePointContext) -> u32 {
    begin_fd(release_reason::CLOSE, arg(&ctx, 0))
}

/// dup2(old, new) and dup3(old, new, flags) close whatever `new` was.
#[tracepoint]
pub fn unrm_enter_dup2(ctx: TracePointContext) -> u32 {
    begin_fd(release_reason::DUP2, arg(&ctx, 1))
}

#[tracepoint]
pub fn unrm_enter_close_range(_ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current();
    if watched(tgid) {
        let pending =
            PendingRelease { reason: release_reason::CLOSE_RANGE, _pad: 0, inode: InodeKey::default() };
        let _ = RELEASES.insert(&tid, &pending, 0);
    }
    0
}

/// Attached to the exits of close, close_range, dup2 and dup3.
#[tracepoint]
pub fn unrm_exit_fd_release(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current();
    let Some(pending) = RELEASES.get_ptr(&tid) else { return 0 };
    // SAFETY: a copy of this thread's entry, which only this thread's
    // programs write, and never while this one runs.
    let pending = unsafe { *pending };
    let _ = RELEASES.remove(&tid);
    let ret = syscall::ret(&ctx);
    emit(pending.reason, tid, tgid, ret, pending.inode);
    0
}

#[inline(always)]
fn process_release(ctx: &TracePointContext, reason: u32) -> u32 {
    let (tid, tgid) = current();
    if watched(tgid) {
        let ret = syscall::ret(ctx);
        emit(reason, tid, tgid, ret, InodeKey::default());
    }
    0
}

#[tracepoint]
pub fn unrm_exit_munmap(ctx: TracePointContext) -> u32 {
    process_release(&ctx, release_reason::MUNMAP)
}

#[tracepoint]
pub fn unrm_exit_mremap(ctx: TracePointContext) -> u32 {
    process_release(&ctx, release_reason::MREMAP)
}

/// Attached to the exits of execve and execveat: a new image drops the old
/// mappings, the old executable and every close-on-exec descriptor.
#[tracepoint]
pub fn unrm_exit_exec(ctx: TracePointContext) -> u32 {
    process_release(&ctx, release_reason::EXEC)
}

/// `sched/sched_process_exit`: fires as each thread exits, before its files
/// are closed; the daemon waits on the holder's pidfd before it re-checks.
#[tracepoint]
pub fn unrm_process_exit(_ctx: TracePointContext) -> u32 {
    let (tid, tgid) = current();
    if watched(tgid) && tid == tgid {
        emit(release_reason::EXIT, tid, tgid, 0, InodeKey::default());
    }
    0
}
