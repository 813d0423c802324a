//! Mounts: the public `struct vfsmount` and the `struct mount` around it.

use super::{Dentry, kernel_struct, off};

kernel_struct! {
    /// A `struct vfsmount`, as a `struct path` points at it.
    VfsMount
}

kernel_struct! {
    /// A `struct mount`, the VFS's own record that embeds the `vfsmount`.
    Mount
}

impl VfsMount {
    /// `mnt_root`: the dentry this mount shows at its mount point.
    #[inline(always)]
    pub fn root(self) -> Option<Dentry> {
        self.read_ptr(off!(vfsmount_root)).map(Dentry)
    }

    /// `mnt_flags` (`MNT_INTERNAL`, ...).
    #[inline(always)]
    pub fn flags(self) -> Option<u32> {
        self.read::<u32>(off!(vfsmount_flags))
    }

    /// The `struct mount` this is the `mnt` member of.
    #[inline(always)]
    pub fn mount(self) -> Option<Mount> {
        self.container(off!(mount_mnt)).map(Mount)
    }
}

impl Mount {
    /// `mnt_parent`: the mount this one is mounted on; itself at the top
    /// of a namespace.
    #[inline(always)]
    pub fn parent(self) -> Option<Mount> {
        self.read_ptr(off!(mount_parent)).map(Mount)
    }

    /// `mnt_mountpoint`: the dentry, in the parent mount, it covers.
    #[inline(always)]
    pub fn mountpoint(self) -> Option<Dentry> {
        self.read_ptr(off!(mount_mountpoint)).map(Dentry)
    }

    /// Its embedded `mnt`.
    #[inline(always)]
    pub fn vfsmount(self) -> Option<VfsMount> {
        self.member(off!(mount_mnt)).map(VfsMount)
    }
}
