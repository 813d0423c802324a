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

use aya_ebpf::helpers::generated;
use unrm_abi::{HeldRecord, InodeKey, MNT_INTERNAL, PATH_MAX, holder_kind};

use crate::{
    kernel::{InodeFacts, file_inode, inode_facts, off, read, read_ptr},
    maps::{PATH_BUF, SELF_TGID, WATCHED_INODES},
};

/// Context layouts of `bpf_iter__task_file` and `bpf_iter__task_vma`: one
/// 8-byte slot per member (the kernel pads each pointer to 64 bits).
mod ctx {
    pub const META: usize = 0;
    pub const TASK: usize = 1;
    pub const FILE_FD: usize = 2;
    pub const FILE: usize = 3;
    pub const VMA: usize = 2;
}

/// Loads a context slot directly: the verifier types the result as a kernel
/// pointer, which `bpf_d_path` and `bpf_seq_write` require.
#[inline(always)]
unsafe fn slot<T>(ctx: *mut c_void, index: usize) -> T {
    unsafe { core::ptr::read_volatile((ctx as *const u64).add(index) as *const T) }
}

#[unsafe(link_section = "iter/task_file")]
#[unsafe(no_mangle)]
pub fn unrm_iter_files(ctx: *mut c_void) -> i32 {
    unsafe {
        let task: *const u8 = slot(ctx, ctx::TASK);
        let file: *const u8 = slot(ctx, ctx::FILE);
        if task.is_null() || file.is_null() {
            return 0;
        }
        let fd: u32 = slot(ctx, ctx::FILE_FD);
        let Some(facts) = deleted_regular(file) else { return 0 };
        report(ctx, task, file, &facts, holder_kind::FD, fd, 0, 0);
    }
    0
}

#[unsafe(link_section = "iter/task_vma")]
#[unsafe(no_mangle)]
pub fn unrm_iter_vmas(ctx: *mut c_void) -> i32 {
    unsafe {
        let task: *const u8 = slot(ctx, ctx::TASK);
        let vma: *const u8 = slot(ctx, ctx::VMA);
        if task.is_null() || vma.is_null() {
            return 0;
        }
        // A direct load keeps the file a kernel pointer for bpf_d_path.
        let file = core::ptr::read_volatile(vma.add(off!(vma_file)) as *const *const u8);
        if file.is_null() {
            return 0;
        }
        let Some(facts) = deleted_regular(file) else { return 0 };
        let start = read::<u64>(vma, off!(vma_start)).unwrap_or(0);
        let end = read::<u64>(vma, off!(vma_end)).unwrap_or(0);
        let kind = if is_exe(task, &facts) { holder_kind::EXE } else { holder_kind::MMAP };
        report(ctx, task, file, &facts, kind, 0, start, end);
    }
    0
}

/// Facts of `file`'s inode if it is a deleted regular file on a user mount.
/// Almost every file still has a name, so the link count is read first and
/// alone.
#[inline(always)]
unsafe fn deleted_regular(file: *const u8) -> Option<InodeFacts> {
    unsafe {
        let inode = file_inode(file)?;
        if read::<u32>(inode, off!(inode_nlink))? != 0 {
            return None;
        }
        let facts = inode_facts(inode)?;
        if !facts.is_regular() {
            return None;
        }
        let mnt = read_ptr(file, off!(file_path) + off!(path_mnt))?;
        let mnt_flags = read::<u32>(mnt, off!(vfsmount_flags))?;
        if mnt_flags & MNT_INTERNAL != 0 {
            return None;
        }
        Some(facts)
    }
}

/// Whether `task`'s executable is the inode described by `facts`.
#[inline(always)]
unsafe fn is_exe(task: *const u8, facts: &InodeFacts) -> bool {
    unsafe {
        let exe = read_ptr(task, off!(task_mm))
            .and_then(|mm| read_ptr(mm, off!(mm_exe_file)))
            .and_then(|file| file_inode(file))
            .and_then(|inode| inode_facts(inode));
        matches!(exe, Some(exe) if exe.ino == facts.ino && exe.dev == facts.dev)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn report(
    ctx: *mut c_void,
    task: *const u8,
    file: *const u8,
    facts: &InodeFacts,
    holder: u32,
    fd: u32,
    vm_start: u64,
    vm_end: u64,
) {
    unsafe {
        let tgid = read::<u32>(task, off!(task_tgid)).unwrap_or(0);
        if tgid == core::ptr::read_volatile(&raw const SELF_TGID) {
            return;
        }
        let Some(buf) = PATH_BUF.get_ptr_mut(0) else { return };
        // The daemon knows where the files it pinned were; d_path is most
        // of this program's cost, and a snapshot revisits every pin.
        let key = InodeKey { dev: facts.dev, _pad: 0, ino: facts.ino };
        let path_len = if WATCHED_INODES.get_ptr(&key).is_some() {
            0
        } else {
            let path = file.add(off!(file_path)) as *mut _;
            let n = generated::bpf_d_path(path, buf as *mut _, PATH_MAX as u32);
            if n > 0 { (n - 1) as u32 & (PATH_MAX as u32 - 1) } else { 0 }
        };
        let record = HeldRecord {
            holder,
            tgid,
            fd,
            path_len,
            comm: read::<[u8; 16]>(task, off!(task_comm)).unwrap_or([0; 16]),
            dev: facts.dev,
            mode: facts.mode,
            ino: facts.ino,
            size: facts.size,
            uid: facts.uid,
            gid: facts.gid,
            vm_start,
            vm_end,
            parent: read_ptr(file, off!(file_path) + off!(path_dentry))
                .and_then(|dentry| crate::kernel::parent_dir(dentry))
                .unwrap_or_default(),
            holder_uid: crate::kernel::task_uid(task).unwrap_or(0),
            _pad: 0,
        };
        let seq: *const u8 = slot(ctx, ctx::META);
        let seq = core::ptr::read_volatile(seq as *const *mut _);
        generated::bpf_seq_write(
            seq,
            &record as *const _ as *const _,
            core::mem::size_of::<HeldRecord>() as u32,
        );
        if path_len > 0 {
            generated::bpf_seq_write(seq, buf as *const _, path_len);
        }
    }
}
