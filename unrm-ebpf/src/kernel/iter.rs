//! The contexts of the `task_file` and `task_vma` iterators, and the seq
//! file they write to.
//!
//! Unlike everything else in [`crate::kernel`], these are plain loads, not
//! `bpf_probe_read_kernel`: `bpf_d_path` and `bpf_seq_write` accept only
//! pointers the verifier knows as the kernel's own `struct file` and
//! `struct seq_file`, and only a plain load keeps that type. The verifier
//! checks each such load against BTF and turns a fault into a zero.

use core::{ffi::c_void, ptr::NonNull};

use aya_ebpf::helpers::generated::{bpf_d_path, bpf_seq_write};
use unrm_abi::PATH_MAX;

use super::{File, Task, Vma, off};

/// `bpf_iter__task_file` and `bpf_iter__task_vma` give one 8-byte slot per
/// member (the kernel pads each pointer to 64 bits).
mod slot {
    pub const META: usize = 0;
    pub const TASK: usize = 1;
    pub const FILE_FD: usize = 2;
    pub const FILE: usize = 3;
    pub const VMA: usize = 2;
}

/// What both iterator contexts are: a pointer to their layout, `meta`
/// then `task` first.
struct IterCtx(*mut c_void);

/// The context of a `task_file` iterator: one open descriptor of one task.
pub struct TaskFileCtx(IterCtx);

/// The context of a `task_vma` iterator: one mapping of one task.
pub struct TaskVmaCtx(IterCtx);

/// A file the iterator handed over, still typed as the kernel's
/// `struct file` (what `bpf_d_path` needs).
#[derive(Clone, Copy)]
pub struct IterFile(NonNull<u8>);

/// A mapping the iterator handed over, still typed as the kernel's
/// `struct vm_area_struct`.
#[derive(Clone, Copy)]
pub struct IterVma(NonNull<u8>);

/// The `struct seq_file` behind the iterator's file descriptor.
pub struct SeqFile(*mut c_void);

impl IterCtx {
    /// Loads slot `index`, a member of type `T` in this context's layout
    /// (see `slot`).
    #[inline(always)]
    fn load<T>(&self, index: usize) -> T {
        // SAFETY: `self.0` is the iterator's context, as the `new` that made
        // it was promised, and its callers here name one of its members.
        unsafe { core::ptr::read_volatile((self.0 as *const u64).add(index) as *const T) }
    }

    /// The task; `None` on the iterator's last, empty call.
    #[inline(always)]
    fn task(&self) -> Option<Task> {
        Task::new(self.load(slot::TASK))
    }

    /// `meta->seq`.
    #[inline(always)]
    fn seq(&self) -> SeqFile {
        let meta: *const *mut c_void = self.load(slot::META);
        // SAFETY: `meta` is the context's `struct bpf_iter_meta *`, whose
        // first member is `seq`; the verifier checks the load against BTF.
        SeqFile(unsafe { core::ptr::read_volatile(meta) })
    }
}

impl TaskFileCtx {
    /// # Safety
    /// `ctx` is the context the kernel passed an `iter/task_file` program.
    #[inline(always)]
    pub unsafe fn new(ctx: *mut c_void) -> Self {
        Self(IterCtx(ctx))
    }

    /// The task; `None` on the iterator's last, empty call.
    #[inline(always)]
    pub fn task(&self) -> Option<Task> {
        self.0.task()
    }

    #[inline(always)]
    pub fn file(&self) -> Option<IterFile> {
        NonNull::new(self.0.load::<*mut u8>(slot::FILE)).map(IterFile)
    }

    /// The descriptor number of `file`.
    #[inline(always)]
    pub fn fd(&self) -> u32 {
        self.0.load(slot::FILE_FD)
    }

    #[inline(always)]
    pub fn seq(&self) -> SeqFile {
        self.0.seq()
    }
}

impl TaskVmaCtx {
    /// # Safety
    /// `ctx` is the context the kernel passed an `iter/task_vma` program.
    #[inline(always)]
    pub unsafe fn new(ctx: *mut c_void) -> Self {
        Self(IterCtx(ctx))
    }

    /// The task; `None` on the iterator's last, empty call.
    #[inline(always)]
    pub fn task(&self) -> Option<Task> {
        self.0.task()
    }

    #[inline(always)]
    pub fn vma(&self) -> Option<IterVma> {
        NonNull::new(self.0.load::<*mut u8>(slot::VMA)).map(IterVma)
    }

    #[inline(always)]
    pub fn seq(&self) -> SeqFile {
        self.0.seq()
    }
}

impl IterFile {
    /// The same file, for reading its fields.
    #[inline(always)]
    pub fn file(self) -> File {
        File(self.0)
    }

    /// Writes the file's path into `buf` with `bpf_d_path`: the length
    /// with its NUL, or a negative error.
    #[inline(always)]
    pub fn d_path(self, buf: &mut [u8; PATH_MAX]) -> i64 {
        let path = self.0.as_ptr().wrapping_add(off!(file_path));
        // SAFETY: the helper writes at most `PATH_MAX` bytes into `buf`;
        // the verifier refuses the program unless `path` is a `struct path`
        // inside a file the kernel handed over.
        unsafe { bpf_d_path(path as *mut _, buf.as_mut_ptr() as *mut _, PATH_MAX as u32) }
    }
}

impl IterVma {
    /// The same mapping, for reading its fields.
    #[inline(always)]
    pub fn vma(self) -> Vma {
        Vma(self.0)
    }

    /// `vm_file`, loaded directly so that it stays a `struct file` for
    /// `bpf_d_path`; `None` for an anonymous mapping.
    #[inline(always)]
    pub fn file(self) -> Option<IterFile> {
        let at = self.0.as_ptr().wrapping_add(off!(vma_file)) as *const *mut u8;
        // SAFETY: a load the verifier checks against BTF (see the module
        // documentation).
        NonNull::new(unsafe { core::ptr::read_volatile(at) }).map(IterFile)
    }
}

impl SeqFile {
    /// Writes `value` as it is in memory.
    #[inline(always)]
    pub fn write<T: Copy>(&self, value: &T) {
        // SAFETY: the helper reads `size_of::<T>()` bytes of `value`.
        unsafe { bpf_seq_write(self.0 as *mut _, value as *const T as *const _, size_of::<T>() as u32) };
    }

    /// Writes the first `len` bytes of `buf`.
    #[inline(always)]
    pub fn write_prefix<const N: usize>(&self, buf: &[u8; N], len: u32) {
        let len = len.min(N as u32);
        // SAFETY: the helper reads `len <= N` bytes of `buf`.
        unsafe { bpf_seq_write(self.0 as *mut _, buf.as_ptr() as *const _, len) };
    }
}
