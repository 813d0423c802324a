//! `struct file`, `struct path` and a task's `struct fs_struct`.

use super::{Dentry, Inode, VfsMount, kernel_struct, off};

kernel_struct! {
    /// A `struct file`: one open file description.
    File
}

kernel_struct! {
    /// A `struct path`: a dentry as reached through one mount.
    Path
}

kernel_struct! {
    /// A `struct fs_struct`: a task's root and working directories.
    FsStruct
}

/// The two halves of a `struct path`, read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PathRef {
    pub mnt: VfsMount,
    pub dentry: Dentry,
}

impl File {
    /// `f_inode`.
    #[inline(always)]
    pub fn inode(self) -> Option<Inode> {
        self.read_ptr(off!(file_inode)).map(Inode)
    }

    /// `f_path`, embedded in the file.
    #[inline(always)]
    pub fn path(self) -> Option<Path> {
        self.member(off!(file_path)).map(Path)
    }
}

impl Path {
    #[inline(always)]
    pub fn mnt(self) -> Option<VfsMount> {
        self.read_ptr(off!(path_mnt)).map(VfsMount)
    }

    #[inline(always)]
    pub fn dentry(self) -> Option<Dentry> {
        self.read_ptr(off!(path_dentry)).map(Dentry)
    }

    /// Both halves, or `None` if either is missing.
    #[inline(always)]
    pub fn get(self) -> Option<PathRef> {
        Some(PathRef { mnt: self.mnt()?, dentry: self.dentry()? })
    }
}

impl FsStruct {
    /// `root`: where the task's `/` is.
    #[inline(always)]
    pub fn root(self) -> Option<Path> {
        self.member(off!(fs_root)).map(Path)
    }

    /// `pwd`: the task's working directory.
    #[inline(always)]
    pub fn pwd(self) -> Option<Path> {
        self.member(off!(fs_pwd)).map(Path)
    }
}
