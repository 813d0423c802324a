//! `struct inode` and its `struct super_block`.

use unrm_abi::{S_IFMT, S_IFREG};

use super::{Dentry, kernel_struct, off};

kernel_struct! {
    /// A `struct inode`.
    Inode
}

kernel_struct! {
    /// A `struct super_block`: one mounted filesystem.
    SuperBlock
}

/// What the probes report about an inode.
pub struct InodeFacts {
    pub dev: u32,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub generation: u32,
}

impl InodeFacts {
    #[inline(always)]
    pub fn is_regular(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
}

impl Inode {
    #[inline(always)]
    pub fn sb(self) -> Option<SuperBlock> {
        self.read_ptr(off!(inode_sb)).map(SuperBlock)
    }

    #[inline(always)]
    pub fn ino(self) -> Option<u64> {
        self.read::<u64>(off!(inode_ino))
    }

    /// `i_size`, a `loff_t`.
    #[inline(always)]
    pub fn size(self) -> Option<u64> {
        self.read::<i64>(off!(inode_size)).map(|size| size as u64)
    }

    /// `i_mode`, a `umode_t` (16 bits).
    #[inline(always)]
    pub fn mode(self) -> Option<u32> {
        self.read::<u16>(off!(inode_mode)).map(u32::from)
    }

    #[inline(always)]
    pub fn nlink(self) -> Option<u32> {
        self.read::<u32>(off!(inode_nlink))
    }

    /// `i_uid`, a `kuid_t`: the uid in the initial user namespace.
    #[inline(always)]
    pub fn uid(self) -> Option<u32> {
        self.read::<u32>(off!(inode_uid))
    }

    #[inline(always)]
    pub fn gid(self) -> Option<u32> {
        self.read::<u32>(off!(inode_gid))
    }

    /// `i_generation`: bumped when the filesystem gives the inode number
    /// out again, so that a file handle names one inode, never its successor.
    #[inline(always)]
    pub fn generation(self) -> Option<u32> {
        self.read::<u32>(off!(inode_generation))
    }

    /// Everything the events say of an inode, in one go.
    #[inline(always)]
    pub fn facts(self) -> Option<InodeFacts> {
        let sb = self.sb()?;
        Some(InodeFacts {
            dev: sb.dev()?,
            ino: self.ino()?,
            size: self.size()?,
            mode: self.mode()?,
            nlink: self.nlink()?,
            uid: self.uid()?,
            gid: self.gid()?,
            generation: self.generation()?,
        })
    }

    /// One of the inode's dentries (a file with one name has one): what a
    /// hook handed only an inode uses to find its name and directory.
    /// `None` when it has none left.
    #[inline(always)]
    pub fn alias(self) -> Option<Dentry> {
        // `i_dentry.first` points at the `d_alias` node inside a dentry.
        let node = self.read_ptr(off!(inode_dentry))?;
        Dentry::new(node.as_ptr().wrapping_sub(off!(dentry_alias)))
    }
}

impl SuperBlock {
    /// `s_dev`, in the kernel's encoding (`major << 20 | minor`).
    #[inline(always)]
    pub fn dev(self) -> Option<u32> {
        self.read::<u32>(off!(sb_dev))
    }

    /// `s_magic`: which filesystem this is.
    #[inline(always)]
    pub fn magic(self) -> Option<u64> {
        self.read::<u64>(off!(sb_magic))
    }
}
