//! A task's descriptor table: `struct files_struct` and `struct fdtable`.

use super::{File, kernel_struct, off};

kernel_struct! {
    /// A `struct files_struct`.
    Files
}

kernel_struct! {
    /// A `struct fdtable`: the current table of a `files_struct`.
    FdTable
}

kernel_struct! {
    /// `fdtable.fd`: an array of `struct file *`, one per descriptor.
    FdArray
}

impl Files {
    /// `fdt`.
    #[inline(always)]
    pub fn fdt(self) -> Option<FdTable> {
        self.read_ptr(off!(files_fdt)).map(FdTable)
    }
}

impl FdTable {
    /// `max_fds`: how many slots `fd` and `open_fds` have.
    #[inline(always)]
    pub fn max_fds(self) -> Option<u32> {
        self.read::<u32>(off!(fdt_max_fds))
    }

    #[inline(always)]
    pub fn fds(self) -> Option<FdArray> {
        self.read_ptr(off!(fdt_fd)).map(FdArray)
    }

    /// The open file behind descriptor `fd`; `None` past the table's end
    /// (not read) or for an empty slot.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Option<File> {
        let max_fds = self.max_fds()?;
        if fd >= max_fds {
            return None;
        }
        self.fds()?.get(fd)
    }
}

impl FdArray {
    /// The file in slot `fd`; `None` for an empty one. The caller keeps
    /// `fd` below `max_fds`.
    #[inline(always)]
    pub fn get(self, fd: u32) -> Option<File> {
        self.read_ptr(fd as usize * 8).map(File)
    }
}
