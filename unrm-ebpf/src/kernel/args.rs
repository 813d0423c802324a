//! What the VFS tiers read to find their hooks' arguments: the registers a
//! kprobe saw, and `vfs_rename`'s `struct renamedata`.

use aya_ebpf::{EbpfContext, bindings::pt_regs, programs::ProbeContext};

use super::{Dentry, kernel_struct};
use crate::maps::loaded;

kernel_struct! {
    /// A kprobe's saved registers (`struct pt_regs`).
    Regs
}

kernel_struct! {
    /// A `struct renamedata`: everything `vfs_rename` is asked to do.
    RenameData
}

impl Regs {
    #[inline(always)]
    pub fn of(ctx: &ProbeContext) -> Option<Regs> {
        Regs::new(ctx.as_ptr() as *const u8)
    }

    /// Argument `n` (from 0) by x86-64's calling convention. Read rather
    /// than loaded: the position is known only at load time, and the
    /// verifier refuses a variable offset into the context itself.
    #[inline(always)]
    pub fn arg(self, n: u32) -> Option<u64> {
        use core::mem::offset_of;
        const ARGS: [usize; 6] = [
            offset_of!(pt_regs, rdi),
            offset_of!(pt_regs, rsi),
            offset_of!(pt_regs, rdx),
            offset_of!(pt_regs, rcx),
            offset_of!(pt_regs, r8),
            offset_of!(pt_regs, r9),
        ];
        let at = *ARGS.get(n as usize)?;
        self.read::<u64>(at)
    }
}

impl RenameData {
    /// `flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`, ...
    #[inline(always)]
    pub fn flags(self) -> Option<u32> {
        self.read::<u32>(loaded!(VFS_ARGS.rd_flags) as usize)
    }

    /// `new_dentry`: the name the file is renamed to, and so the file a
    /// rename would replace.
    #[inline(always)]
    pub fn new_dentry(self) -> Option<Dentry> {
        self.read_ptr(loaded!(VFS_ARGS.rd_new_dentry) as usize).map(Dentry)
    }
}
