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

kernel_struct! {
    /// `fdtable.open_fds`: a bitmap of the descriptors in use, in `u64` words.
    OpenFds
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

    #[inline(always)]
    pub fn open_fds(self) -> Option<OpenFds> {
        self.read_ptr(off!(fdt_open_fds)).map(OpenFds)
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

impl OpenFds {
    /// Word `index` of the bitmap: descriptors `64 * index` to `64 * index + 63`.
    #[inline(always)]
    pub fn word(self, index: u64) -> Option<u64> {
        self.read::<u64>(index as usize * 8)
    }
}
