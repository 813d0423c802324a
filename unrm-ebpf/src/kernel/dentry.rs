//! `struct dentry`: a name in a directory, and the string it holds.

use core::ptr::NonNull;

use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use unrm_abi::DirFacts;

use super::{Inode, kernel_struct, off};

kernel_struct! {
    /// A `struct dentry`.
    Dentry
}

/// A NUL-terminated string in kernel memory (`qstr.name`).
#[derive(Clone, Copy)]
pub struct KernelStr(NonNull<u8>);

impl Dentry {
    /// `d_inode`; `None` for a negative dentry.
    #[inline(always)]
    pub fn inode(self) -> Option<Inode> {
        self.read_ptr(off!(dentry_inode)).map(Inode)
    }

    /// `d_parent`; a filesystem's root is its own parent.
    #[inline(always)]
    pub fn parent(self) -> Option<Dentry> {
        self.read_ptr(off!(dentry_parent)).map(Dentry)
    }

    /// `d_lockref.count`: references held on the dentry.
    #[inline(always)]
    pub fn refs(self) -> Option<u32> {
        self.read::<u32>(off!(dentry_count))
    }

    /// `d_name.name`: the last component of its path.
    #[inline(always)]
    pub fn name(self) -> Option<KernelStr> {
        self.read_ptr(off!(dentry_name) + off!(qstr_name)).map(KernelStr)
    }

    /// The directory the dentry is in: its parent's inode, who owns it and
    /// how it may be searched. A deleted file's dentry keeps its parent.
    #[inline(always)]
    pub fn parent_dir(self) -> Option<DirFacts> {
        let facts = self.parent()?.inode()?.facts()?;
        Some(DirFacts { ino: facts.ino, mode: facts.mode, uid: facts.uid, gid: facts.gid, _pad: 0 })
    }
}

impl KernelStr {
    /// Copies the string, NUL included and cut to fit, into `dst`; the
    /// number of bytes written.
    #[inline(always)]
    pub fn copy_into<const N: usize>(self, dst: &mut [u8; N]) -> Option<usize> {
        // SAFETY: the helper writes at most `N` bytes into `dst` and takes
        // any source address (see the module documentation).
        let n = unsafe {
            bpf_probe_read_kernel_str(dst.as_mut_ptr() as *mut _, N as u32, self.0.as_ptr() as *const _)
        };
        if n < 0 {
            super::failed_read();
        }
        (n > 0).then_some(n as usize)
    }
}
