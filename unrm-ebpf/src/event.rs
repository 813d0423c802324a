//! Deletion events, as every tier makes them.
//!
//! The tiers see a deletion in different places (the system call in
//! [`crate::deletion`], ext4's tracepoints in [`crate::fshooks`], the VFS in
//! [`crate::vfshooks`]) but report it alike: who the deleter is, what the
//! removed inode was ([`victim`]), where the name was, and whether someone
//! may still hold the file, which decides how urgently the daemon is woken.
//! What they share lives here so that no tier reaches into another.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_ktime_get_ns,
    },
};
use aya_log_ebpf::warn;
use unrm_abi::{DeleteEvent, Victim, event_kind, path_flags, stat, victim_flags};

use crate::{
    dirwalk::{Walk, write_fs_path},
    kernel::{Dentry, InodeFacts, Task},
    maps::{DATA_LEN, EVENT_BUF, EVENTS, EventBuf, count, loaded},
};

/// Whether `tgid` is the daemon, whose own files (index journal, store
/// temporaries, pins) are not news.
#[inline(always)]
pub fn is_self_tgid(tgid: u32) -> bool {
    tgid == loaded!(SELF_TGID)
}

/// Whether the current task is the daemon.
#[inline(always)]
pub fn is_self() -> bool {
    is_self_tgid((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// `CLOCK_MONOTONIC` now, as events are stamped.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments that only reads the clock.
    unsafe { bpf_ktime_get_ns() }
}

/// The current task's mount namespace, as `/proc/self/ns/mnt` numbers it;
/// 0 if unreadable (an exiting task has no nsproxy).
#[inline(always)]
pub fn current_mnt_ns() -> u32 {
    Task::current().and_then(Task::mnt_ns_inum).unwrap_or(0)
}

/// What the event says of the inode a deletion removed through `dentry`.
#[inline(always)]
pub fn victim(facts: &InodeFacts, nlink: u32, refs: Option<u32>, dentry: Option<Dentry>) -> Victim {
    let mut flags = victim_flags::KNOWN | victim_flags::FS_HOOKED;
    if refs.is_some() {
        flags |= victim_flags::REFS_VALID;
    }
    let parent = dentry.and_then(Dentry::parent_dir);
    if parent.is_some() {
        flags |= victim_flags::PARENT;
    }
    Victim {
        flags,
        dev: facts.dev,
        ino: facts.ino,
        size: facts.size,
        mode: facts.mode,
        nlink,
        refs: refs.unwrap_or(0),
        uid: facts.uid,
        gid: facts.gid,
        generation: facts.generation,
        _pad: [0; 2],
        parent: parent.unwrap_or_default(),
    }
}

/// Whether something besides the deleter may hold the file: unknown
/// references count as held.
#[inline(always)]
pub fn maybe_held(v: &Victim) -> bool {
    v.flags & victim_flags::REFS_VALID == 0 || v.refs > 1
}

/// References on a rename victim's dentry, counted like an unlink's: one
/// for the caller's own lookup, more if anything else holds the file. The
/// filesystem hook passes only the inode, so the dentry is its alias; the
/// rename itself holds one reference more than an unlink does.
#[inline(always)]
pub fn rename_victim_refs(alias: Dentry) -> Option<u32> {
    alias.refs().map(|refs| refs.saturating_sub(1))
}

/// The header of an event about a deletion by the current task, whose text
/// holds `path_len` bytes of path, then `dir_len` bytes of directory.
#[inline(always)]
pub fn header(op: u32, ret: i32, victim: Victim, path_len: usize, dir_len: usize, flags: u32) -> DeleteEvent {
    let pid_tgid = bpf_get_current_pid_tgid();
    DeleteEvent {
        kind: event_kind::DELETE,
        op,
        ktime_ns: now_ns(),
        tid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        uid: bpf_get_current_uid_gid() as u32,
        ret,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        victim,
        path_len: path_len as u32,
        dir_len: dir_len as u32,
        path_flags: flags,
        mnt_ns: current_mnt_ns(),
        // SAFETY: a helper with no arguments, callable from every program
        // type the probes use (kprobe, tracepoint, tracing).
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Sends the event in `buf`: its header and the first `text_len` bytes of
/// its text. `urgent` wakes the daemon even when records are still unread
/// ahead of this one (the default, adaptive wake-up would then stay quiet).
#[inline(always)]
pub fn send<C: EbpfContext>(ctx: &C, buf: &EventBuf, text_len: usize, urgent: bool) {
    let len = core::mem::size_of::<DeleteEvent>() + text_len;
    if len > core::mem::size_of::<DeleteEvent>() + DATA_LEN {
        return;
    }
    // SAFETY: `len` bytes from the start of `buf`: the header, then at
    // most `DATA_LEN` bytes of `buf.data`, all inside `buf`.
    let bytes = unsafe { core::slice::from_raw_parts(buf as *const EventBuf as *const u8, len) };
    let wake = if urgent { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP };
    if EVENTS.output::<[u8]>(bytes, wake as u64).is_err() {
        count(stat::LOST_EVENTS);
        warn!(ctx, "unrm: ring buffer full; deletion by {} dropped", buf.header.tgid);
    }
}

/// Reports a deletion a filesystem-level hook saw: the path relative to the
/// filesystem, and the inode's number and generation, which the daemon pins
/// it by (a file handle) if the dentry count says it may be held. Shared by
/// the fs tier (ext4 tracepoints) and the VFS tiers (fentry and kprobe).
/// `started_ns`: when the hook saw the call begin.
#[inline(always)]
pub fn emit<C: EbpfContext>(ctx: &C, op: u32, dentry: Dentry, v: Victim, started_ns: u64) {
    let held = maybe_held(&v);
    let Some(buf) = EVENT_BUF.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map, which nothing else touches
    // while this program runs.
    let buf = unsafe { &mut *buf };
    let (dir_len, flags) = match write_fs_path(&mut buf.data, 0, dentry) {
        Walk::Complete(len) => (len, path_flags::FS_RELATIVE),
        Walk::Truncated(len) => (len, path_flags::FS_RELATIVE | path_flags::DIR_TRUNCATED),
    };
    buf.header = header(op, 0, v, 0, dir_len, flags);
    buf.header.ktime_ns = started_ns;
    send(ctx, buf, dir_len, held);
}
