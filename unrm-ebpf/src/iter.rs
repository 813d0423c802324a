//! Iterators listing every deleted-but-held regular file: what `lsof +L1`
//! shows, in one pass inside the kernel. Each writes `HeldRecord`s and their
//! `d_path` text into its seq file; the daemon reads them as the truth about
//! who holds what.
//!
//! Skipped here, so userspace never sees them: files that still have a name,
//! anything not a regular file, files on kernel-internal mounts (memfd, SysV
//! shm, anonymous inodes), and the daemon's own pins. Files the daemon has
//! pinned come without their path, which it already knows.

use core::ffi::c_void;

use unrm_abi::{HeldRecord, InodeKey, MNT_INTERNAL, PATH_MAX, holder_kind};

use crate::{
    event::is_self_tgid,
    kernel::{
        Dentry, File, InodeFacts, Path, Task,
        iter::{IterFile, SeqFile, TaskFileCtx, TaskVmaCtx},
    },
    maps::{PATH_BUF, WATCHED_INODES},
};

/// How a task holds the file a record is about.
struct Holding {
    /// A `holder_kind`.
    kind: u32,
    /// The descriptor, for `holder_kind::FD`.
    fd: u32,
    /// The mapping, for `holder_kind::MMAP` and `holder_kind::EXE`.
    vm_start: u64,
    vm_end: u64,
}

#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub fn unrm_iter_files(ctx: *mut c_void) -> i32 {
    // SAFETY: the section above makes this a task_file iterator, and the
    // kernel passes it that iterator's context.
    let ctx = unsafe { TaskFileCtx::new(ctx) };
    let (Some(task), Some(file)) = (ctx.task(), ctx.file()) else { return 0 };
    let fd = ctx.fd();
    let Some(facts) = deleted_regular(file.file()) else { return 0 };
    report(ctx.seq(), task, file, &facts, Holding { kind: holder_kind::FD, fd, vm_start: 0, vm_end: 0 });
    0
}

#[unsafe(link_section = "iter/task_vma")]
#[unsafe(no_mangle)]
pub fn unrm_iter_vmas(ctx: *mut c_void) -> i32 {
    // SAFETY: the section above makes this a task_vma iterator, and the
    // kernel passes it that iterator's context.
    let ctx = unsafe { TaskVmaCtx::new(ctx) };
    let (Some(task), Some(vma)) = (ctx.task(), ctx.vma()) else { return 0 };
    let Some(file) = vma.file() else { return 0 };
    let Some(facts) = deleted_regular(file.file()) else { return 0 };
    let vm_start = vma.vma().start().unwrap_or(0);
    let vm_end = vma.vma().end().unwrap_or(0);
    let kind = if is_exe(task, &facts) { holder_kind::EXE } else { holder_kind::MMAP };
    report(ctx.seq(), task, file, &facts, Holding { kind, fd: 0, vm_start, vm_end });
    0
}

/// Facts of `file`'s inode if it is a deleted regular file on a user mount.
/// Almost every file still has a name, so the link count is read first and
/// alone.
#[inline(always)]
fn deleted_regular(file: File) -> Option<InodeFacts> {
    let inode = file.inode()?;
    if inode.nlink()? != 0 {
        return None;
    }
    let facts = inode.facts()?;
    if !facts.is_regular() {
        return None;
    }
    let mnt_flags = file.path()?.mnt()?.flags()?;
    if mnt_flags & MNT_INTERNAL != 0 {
        return None;
    }
    Some(facts)
}

/// Whether `task`'s executable is the inode described by `facts`.
#[inline(always)]
fn is_exe(task: Task, facts: &InodeFacts) -> bool {
    let exe = task.mm().and_then(|mm| mm.exe_file()?.inode()?.facts());
    matches!(exe, Some(exe) if exe.ino == facts.ino && exe.dev == facts.dev)
}

/// Writes one record, and the file's path unless the daemon pinned it.
#[inline(always)]
fn report(seq: SeqFile, task: Task, file: IterFile, facts: &InodeFacts, how: Holding) {
    let tgid = task.tgid().unwrap_or(0);
    if is_self_tgid(tgid) {
        return;
    }
    let Some(buf) = PATH_BUF.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot of a per-CPU map, which nothing else touches
    // while this program runs.
    let buf = unsafe { &mut *buf };
    // The daemon knows where the files it pinned were; d_path is most
    // of this program's cost, and a snapshot revisits every pin.
    let key = InodeKey { dev: facts.dev, _pad: 0, ino: facts.ino };
    let path_len = if WATCHED_INODES.get_ptr(&key).is_some() {
        0
    } else {
        let n = file.d_path(buf);
        if n > 0 { (n - 1) as u32 & (PATH_MAX as u32 - 1) } else { 0 }
    };
    let record = HeldRecord {
        holder: how.kind,
        tgid,
        fd: how.fd,
        path_len,
        comm: task.comm().unwrap_or([0; 16]),
        dev: facts.dev,
        mode: facts.mode,
        ino: facts.ino,
        size: facts.size,
        uid: facts.uid,
        gid: facts.gid,
        vm_start: how.vm_start,
        vm_end: how.vm_end,
        parent: file.file().path().and_then(Path::dentry).and_then(Dentry::parent_dir).unwrap_or_default(),
        holder_uid: task.uid().unwrap_or(0),
        _pad: 0,
    };
    seq.write(&record);
    if path_len > 0 {
        seq.write_prefix(buf, path_len);
    }
}
