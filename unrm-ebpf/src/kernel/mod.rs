//! Typed access to the kernel structures the probes read: the only place
//! that follows a kernel pointer.
//!
//! Rust eBPF cannot emit CO-RE relocations, so every field offset comes from
//! the `OFFSETS` global, which the daemon fills in from the running kernel's
//! BTF before load (`unrm-user/src/probe/btf.rs`). Each structure is a
//! newtype over a non-null kernel address ([`Inode`], [`Dentry`], [`File`],
//! [`Task`], ...) with one method per field the probes use, so a probe says
//! `dentry.inode()?.facts()` and never sees an offset. A pointer field comes
//! back as an `Option` of its newtype: `None` when the kernel holds NULL
//! there or when the read failed.
//!
//! # Safety
//!
//! Every read here is a `bpf_probe_read_kernel` (or its `_str` form), made
//! in [`read`] and [`dentry::KernelStr::copy_into`]. Those helpers accept any
//! address: a bad one (unmapped, a user address, garbage read through a
//! wrong offset) makes them fail and zero the destination, never fault. The
//! destination is a local of the type read, and that type is one for which
//! every bit pattern is a value ([`Plain`]); a string goes into a buffer
//! whose length the helper is given. So a read is sound whatever the
//! address, and that is why making a newtype from any pointer is safe: it
//! holds an address, not a promise. What a read returns may be stale (a
//! dentry renamed, a task exiting as we look, freed memory not yet reused):
//! the probes use it as a value and follow it only through these reads.
//!
//! The one exception is the iterator context ([`iter`]): `bpf_d_path` and
//! `bpf_seq_write` need the kernel's own typed pointers, which only plain
//! loads keep. The verifier checks those loads against BTF and turns a
//! fault into a zero, so they cannot crash the kernel either.
//!
//! # What `stat::FAILED_READS` counts
//!
//! Every read the helper refused, from any accessor here. Not counted, as
//! they are answers rather than failures: a NULL pointer field (a negative
//! dentry's inode, a kernel thread's `mm`, an exiting task's `nsproxy`, an
//! empty descriptor slot, an inode with no dentry), which is never read
//! through; a descriptor number past the table's end, which is never read;
//! and a walk stopping at its root or its step limit. So the counter says
//! how often a pointer the kernel gave us led nowhere: wrong offsets would
//! show as a flood, a race with an object being freed as the odd one.

mod args;
mod dentry;
mod fdtable;
mod file;
mod inode;
pub mod iter;
mod mm;
mod mount;
mod task;

use core::ptr::NonNull;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use unrm_abi::stat;

pub use self::{
    args::{Regs, RenameData},
    dentry::Dentry,
    fdtable::Files,
    file::{File, FsStruct, Path, PathRef},
    inode::{Inode, InodeFacts, SuperBlock},
    mm::{Mm, Vma},
    mount::VfsMount,
    task::Task,
};
use crate::maps::count;

/// The byte offset of a kernel field, as the daemon found it in BTF.
macro_rules! off {
    ($field:ident) => {
        crate::maps::loaded!(OFFSETS.$field) as usize
    };
}
use off;

/// Types a read may produce: every bit pattern is a value of them, so
/// whatever bytes the helper copies (or the zeroes it leaves on failure)
/// make a valid one.
trait Plain: Copy {}
impl Plain for u16 {}
impl Plain for u32 {}
impl Plain for u64 {}
impl Plain for i64 {}
impl Plain for *mut u8 {}
impl Plain for [u8; 16] {}

/// Reads a `T` at `base + offset`, counting a refused read.
#[inline(always)]
fn read<T: Plain>(base: NonNull<u8>, offset: usize) -> Option<T> {
    let at = base.as_ptr().wrapping_add(offset) as *const T;
    // SAFETY: see the module documentation: the helper takes any address
    // and `T` is `Plain`.
    match unsafe { bpf_probe_read_kernel(at) } {
        Ok(value) => Some(value),
        Err(_) => {
            failed_read();
            None
        }
    }
}

/// Counts a refused read. Out of line: one call per read site instead of
/// a map lookup inlined at each, which would swell every probe.
#[cold]
#[inline(never)]
fn failed_read() {
    count(stat::FAILED_READS);
}

/// Reads a pointer at `base + offset`; NULL is `None` and not a failure.
#[inline(always)]
fn read_ptr(base: NonNull<u8>, offset: usize) -> Option<NonNull<u8>> {
    read::<*mut u8>(base, offset).and_then(NonNull::new)
}

/// Declares a newtype over the address of a kernel `struct`.
macro_rules! kernel_struct {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        #[repr(transparent)]
        pub struct $name(pub(super) core::ptr::NonNull<u8>);

        // Not every structure needs every one of these.
        #[allow(dead_code)]
        impl $name {
            /// The structure at `addr`; `None` for NULL.
            #[inline(always)]
            pub fn new(addr: *const u8) -> Option<Self> {
                core::ptr::NonNull::new(addr as *mut u8).map(Self)
            }

            /// The structure at `addr`, an address kept in a map; `None` for 0.
            #[inline(always)]
            pub fn from_addr(addr: u64) -> Option<Self> {
                Self::new(addr as *const u8)
            }

            /// The address, to keep in a map or compare.
            #[inline(always)]
            pub fn addr(self) -> u64 {
                self.0.as_ptr() as u64
            }

            /// The member `offset` bytes in: an embedded structure's address.
            #[inline(always)]
            fn member(self, offset: usize) -> Option<core::ptr::NonNull<u8>> {
                core::ptr::NonNull::new(self.0.as_ptr().wrapping_add(offset))
            }

            /// The structure that embeds this one `offset` bytes in
            /// (`container_of`).
            #[inline(always)]
            fn container(self, offset: usize) -> Option<core::ptr::NonNull<u8>> {
                core::ptr::NonNull::new(self.0.as_ptr().wrapping_sub(offset))
            }

            #[inline(always)]
            fn read<T: super::Plain>(self, offset: usize) -> Option<T> {
                super::read(self.0, offset)
            }

            #[inline(always)]
            fn read_ptr(self, offset: usize) -> Option<core::ptr::NonNull<u8>> {
                super::read_ptr(self.0, offset)
            }
        }
    };
}
use kernel_struct;
