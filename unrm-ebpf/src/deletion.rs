//! Deletions: the syscall tracepoints say who removed which name; the ext4
//! hooks, firing inside the same call, say which inode and whether anything
//! else held it. Entry records the arguments by thread id, exit turns them
//! into one event, so a failed or unrelated call costs a map insert/delete.

use aya_ebpf::bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_uid_gid,
        bpf_ktime_get_ns, generated,
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use unrm_abi::{DeleteEvent, PATH_MAX, Victim, delete_op, event_kind, path_flags, stat, victim_flags};

use crate::{
    holder,
    kernel::{
        InodeFacts, PathRef, Walk, current_mnt_ns, fd_file, inode_facts, off, read, read_path, read_ptr,
        write_dir,
    },
    maps::{DATA_LEN, EVENT_BUF, EVENTS, INFLIGHT, Inflight, SELF_TGID, count},
};

const AT_FDCWD: i32 = -100;
const AT_REMOVEDIR: u64 = 0x200;
const RENAME_NOREPLACE: u64 = 1;
const RENAME_EXCHANGE: u64 = 2;

/// Argument `n` of a `syscalls/sys_enter_*` tracepoint (stable layout: the
/// common header, the syscall number, then one u64 per argument).
#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    unsafe { ctx.read_at::<u64>(16 + 8 * n).unwrap_or(0) }
}

#[inline(always)]
fn begin(ctx: &TracePointContext, op: u32, dirfd: u64, path: u64) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The daemon's own files (index journal, store temporaries) are not news.
    if (pid_tgid >> 32) as u32 == unsafe { core::ptr::read_volatile(&raw const SELF_TGID) } {
        return 0;
    }
    let tid = pid_tgid as u32;
    let call = Inflight { op, dirfd: dirfd as i32, path, inode: 0, victim: Victim::default() };
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
    let mut call = unsafe { *call };
    let _ = INFLIGHT.remove(&tid);
    let ret = unsafe { ctx.read_at::<i64>(16).unwrap_or(0) };
    if ret != 0 {
        count(stat::FAILED_CALLS);
        return 0;
    }
    let v = &mut call.victim;
    let maybe_held = v.flags & victim_flags::REFS_VALID == 0 || v.refs > 1;
    if v.flags & victim_flags::KNOWN != 0 && maybe_held {
        // Locks are dropped now; holders keep the inode alive, and a
        // pointer compare against a freed one simply never matches.
        if let Some(holder) = unsafe { holder::find(call.inode as *const u8) } {
            v.flags |= victim_flags::HOLDER;
            v.holder_tgid = holder.tgid;
            v.holder_fd = holder.fd;
            v.holder_uid = holder.uid;
        }
    }
    unsafe { emit_deletion(&ctx, &call, ret) };
    0
}

#[inline(always)]
unsafe fn emit_deletion(ctx: &TracePointContext, call: &Inflight, ret: i64) {
    let Some(buf) = EVENT_BUF.get_ptr_mut(0) else { return };
    unsafe {
        let data = (*buf).data.as_mut_ptr();
        let n = generated::bpf_probe_read_user_str(data as *mut _, PATH_MAX as u32, call.path as *const _);
        let path_len = if n > 0 { (n - 1) as usize } else { 0 };
        let mut flags = 0;
        let mut dir_len = 0;
        if path_len > 0 && *data == b'/' {
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
        let pid_tgid = bpf_get_current_pid_tgid();
        (*buf).header = DeleteEvent {
            kind: event_kind::DELETE,
            op: call.op,
            ktime_ns: bpf_ktime_get_ns(),
            tid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            uid: bpf_get_current_uid_gid() as u32,
            ret: ret as i32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            victim: call.victim,
            path_len: path_len as u32,
            dir_len: dir_len as u32,
            path_flags: flags,
            mnt_ns: current_mnt_ns(),
        };
        let len = core::mem::size_of::<DeleteEvent>() + path_len + dir_len;
        if len > core::mem::size_of::<DeleteEvent>() + DATA_LEN {
            return;
        }
        let bytes = core::slice::from_raw_parts(buf as *const u8, len);
        // Only a deletion that may be held is urgent: the daemon races its
        // holders to pin it, so it is woken even when quiet records are
        // still unread ahead of this one (the default, adaptive wake-up
        // would then stay silent). The rest wait for the reader's next
        // wake-up, so an `rm -rf` of unheld files does not wake it per file.
        let v = &call.victim;
        let unheld = v.flags & victim_flags::REFS_VALID != 0 && v.refs <= 1;
        let quiet = unheld || v.flags & victim_flags::FS_HOOKED != 0 && v.flags & victim_flags::KNOWN == 0;
        let flags = if quiet { BPF_RB_NO_WAKEUP } else { BPF_RB_FORCE_WAKEUP };
        if EVENTS.output::<[u8]>(bytes, flags as u64).is_err() {
            count(stat::LOST_EVENTS);
            warn!(ctx, "unrm: ring buffer full; deletion by {} dropped", (*buf).header.tgid);
        }
    }
}

/// The directory a relative path starts from, and the caller's root.
#[inline(always)]
unsafe fn base_dir(dirfd: i32) -> Option<(PathRef, PathRef)> {
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fs = read_ptr(task, off!(task_fs))?;
        let root = read_path(fs.wrapping_add(off!(fs_root)))?;
        let start = if dirfd == AT_FDCWD {
            read_path(fs.wrapping_add(off!(fs_pwd)))?
        } else {
            let file = fd_file(task, dirfd as u32)?;
            read_path(file.wrapping_add(off!(file_path)))?
        };
        Some((start, root))
    }
}

/// What the event says of the inode a deletion removed through `dentry`.
#[inline(always)]
pub fn victim(facts: &InodeFacts, nlink: u32, refs: Option<u32>, dentry: *const u8) -> Victim {
    let mut flags = victim_flags::KNOWN | victim_flags::FS_HOOKED;
    if refs.is_some() {
        flags |= victim_flags::REFS_VALID;
    }
    let parent = unsafe { crate::kernel::parent_dir(dentry) };
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
        holder_tgid: 0,
        holder_fd: 0,
        holder_uid: 0,
        parent: parent.unwrap_or_default(),
    }
}

/// ext4 calls this with the dentry it is about to unlink, inside our call.
#[raw_tracepoint(tracepoint = "ext4_unlink_enter")]
pub fn unrm_ext4_unlink(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = INFLIGHT.get_ptr_mut(&tid) else { return 0 };
    unsafe {
        let dentry: *const u8 = ctx.arg(1);
        let Some(inode) = read_ptr(dentry, off!(dentry_inode)) else { return 0 };
        let Some(facts) = inode_facts(inode) else { return 0 };
        let refs = read::<u32>(dentry, off!(dentry_count));
        (*call).victim = victim(&facts, facts.nlink, refs, dentry);
        (*call).inode = inode as u64;
    }
    0
}

/// ext4 marks every inode a rename touches dirty; a regular file whose link
/// count has just reached zero is the one the rename replaced.
#[raw_tracepoint(tracepoint = "ext4_mark_inode_dirty")]
pub fn unrm_ext4_dirty(ctx: RawTracePointContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(call) = INFLIGHT.get_ptr_mut(&tid) else { return 0 };
    unsafe {
        if (*call).victim.flags & victim_flags::KNOWN != 0 {
            return 0;
        }
        (*call).victim.flags |= victim_flags::FS_HOOKED;
        if (*call).op != delete_op::RENAME {
            return 0;
        }
        let inode: *const u8 = ctx.arg(0);
        let Some(facts) = inode_facts(inode) else { return 0 };
        if !facts.is_regular() || facts.nlink != 0 {
            return 0;
        }
        // The link count before the rename dropped it was one.
        let dentry = crate::kernel::alias_dentry(inode).unwrap_or(core::ptr::null());
        (*call).victim = victim(&facts, 1, holder::rename_victim_refs(inode), dentry);
        (*call).inode = inode as u64;
    }
    0
}
