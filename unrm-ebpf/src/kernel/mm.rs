//! A process's memory: `struct mm_struct` and `struct vm_area_struct`.

use super::{File, kernel_struct, off};

kernel_struct! {
    /// A `struct mm_struct`.
    Mm
}

kernel_struct! {
    /// A `struct vm_area_struct`: one mapping.
    Vma
}

impl Mm {
    /// `exe_file`: the executable the process runs.
    #[inline(always)]
    pub fn exe_file(self) -> Option<File> {
        self.read_ptr(off!(mm_exe_file)).map(File)
    }
}

impl Vma {
    /// `vm_start`: the mapping's first address.
    #[inline(always)]
    pub fn start(self) -> Option<u64> {
        self.read::<u64>(off!(vma_start))
    }

    /// `vm_end`: the address just past the mapping.
    #[inline(always)]
    pub fn end(self) -> Option<u64> {
        self.read::<u64>(off!(vma_end))
    }
}
