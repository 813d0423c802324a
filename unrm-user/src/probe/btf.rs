//! Kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the probes read fields at
//! offsets the daemon looks up here and writes into their read-only data.
//! Each field is named by a dotted path (`d_lockref.count`); anonymous
//! structs and unions along the way are searched, as C would let you write
//! `dentry->d_lockref.count`. Where kernels renamed a field, alternatives are
//! tried in order.

use anyhow::{Context, Result, anyhow, bail};
use btf_rs::{Btf, Type};
use unrm_abi::KernelOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        let btf = Btf::from_file(VMLINUX).with_context(|| {
            format!("reading {VMLINUX} (unrm needs a kernel built with CONFIG_DEBUG_INFO_BTF)")
        })?;
        Ok(Self { btf })
    }

    /// Byte offset of `path` inside `struct name`, trying each alternative.
    pub fn offset(&self, name: &str, paths: &[&str]) -> Result<u32> {
        let root = self.composite(name)?;
        for path in paths {
            if let Some(bits) = self.walk(&root, path)? {
                if bits % 8 != 0 {
                    bail!("{name}.{path} is a bitfield");
                }
                return Ok(bits / 8);
            }
        }
        bail!("the running kernel's struct {name} has none of: {}", paths.join(", "))
    }

    fn composite(&self, name: &str) -> Result<Type> {
        self.btf
            .resolve_types_by_name(name)
            .with_context(|| format!("struct {name} is not in the kernel's BTF"))?
            .into_iter()
            .find(|t| matches!(t, Type::Struct(s) | Type::Union(s) if !s.members.is_empty()))
            .ok_or_else(|| anyhow!("struct {name} has no definition in the kernel's BTF"))
    }

    /// Follows `a.b.c` from `ty`, returning the bit offset.
    fn walk(&self, ty: &Type, path: &str) -> Result<Option<u32>> {
        let mut ty = ty.clone();
        let mut total = 0;
        for part in path.split('.') {
            match self.member(&ty, part)? {
                Some((bits, member_ty)) => {
                    total += bits;
                    ty = member_ty;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    /// Finds member `name` of `ty`, looking inside anonymous members.
    fn member(&self, ty: &Type, name: &str) -> Result<Option<(u32, Type)>> {
        let (Type::Struct(s) | Type::Union(s)) = self.strip(ty.clone())? else {
            return Ok(None);
        };
        for m in &s.members {
            let m_name = self.btf.resolve_name(m).unwrap_or_default();
            let m_ty = self.btf.resolve_chained_type(m)?;
            if m_name == name {
                return Ok(Some((m.bit_offset(), m_ty)));
            }
            if m_name.is_empty()
                && let Some((bits, found)) = self.member(&m_ty, name)?
            {
                return Ok(Some((m.bit_offset() + bits, found)));
            }
        }
        Ok(None)
    }

    /// Looks through typedefs and qualifiers to the type underneath.
    fn strip(&self, mut ty: Type) -> Result<Type> {
        loop {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            }
        }
    }

    /// Every offset the probes use.
    pub fn probe_offsets(&self) -> Result<KernelOffsets> {
        let o = |s: &str, paths: &[&str]| self.offset(s, paths);
        Ok(KernelOffsets {
            task_tgid: o("task_struct", &["tgid"])?,
            task_comm: o("task_struct", &["comm"])?,
            task_files: o("task_struct", &["files"])?,
            task_fs: o("task_struct", &["fs"])?,
            task_mm: o("task_struct", &["mm"])?,
            fs_root: o("fs_struct", &["root"])?,
            fs_pwd: o("fs_struct", &["pwd"])?,
            path_mnt: o("path", &["mnt"])?,
            path_dentry: o("path", &["dentry"])?,
            files_fdt: o("files_struct", &["fdt"])?,
            fdt_max_fds: o("fdtable", &["max_fds"])?,
            fdt_fd: o("fdtable", &["fd"])?,
            file_inode: o("file", &["f_inode"])?,
            file_path: o("file", &["f_path"])?,
            inode_mode: o("inode", &["i_mode"])?,
            inode_nlink: o("inode", &["i_nlink", "__i_nlink"])?,
            inode_ino: o("inode", &["i_ino"])?,
            inode_size: o("inode", &["i_size"])?,
            inode_sb: o("inode", &["i_sb"])?,
            inode_uid: o("inode", &["i_uid"])?,
            inode_gid: o("inode", &["i_gid"])?,
            sb_dev: o("super_block", &["s_dev"])?,
            dentry_parent: o("dentry", &["d_parent"])?,
            dentry_name: o("dentry", &["d_name", "__d_name"])?,
            dentry_inode: o("dentry", &["d_inode"])?,
            dentry_count: o("dentry", &["d_lockref.count"])?,
            qstr_len: o("qstr", &["len"])?,
            qstr_name: o("qstr", &["name"])?,
            vfsmount_root: o("vfsmount", &["mnt_root"])?,
            vfsmount_flags: o("vfsmount", &["mnt_flags"])?,
            mount_mnt: o("mount", &["mnt"])?,
            mount_parent: o("mount", &["mnt_parent"])?,
            mount_mountpoint: o("mount", &["mnt_mountpoint"])?,
            mm_exe_file: o("mm_struct", &["exe_file"])?,
            vma_start: o("vm_area_struct", &["vm_start"])?,
            vma_end: o("vm_area_struct", &["vm_end"])?,
            vma_file: o("vm_area_struct", &["vm_file"])?,
            task_real_parent: o("task_struct", &["real_parent"])?,
            task_tasks: o("task_struct", &["tasks"])?,
            fdt_open_fds: o("fdtable", &["open_fds"])?,
            inode_dentry: o("inode", &["i_dentry"])?,
            dentry_alias: o("dentry", &["d_u.d_alias", "d_alias"])?,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of the running kernel resolve, and fields that C lays out
    /// in a known order come out in that order.
    #[test]
    fn running_kernel_offsets_resolve() {
        let btf = KernelBtf::load().expect("kernel BTF");
        let o = btf.probe_offsets().expect("offsets");
        assert!(o.path_dentry > o.path_mnt, "struct path is {{ mnt, dentry }}");
        assert!(o.qstr_name > o.qstr_len);
        assert_ne!(o.dentry_count, 0);
        assert_ne!(o.inode_ino, 0);
    }

    #[test]
    fn missing_fields_are_named_in_the_error() {
        let btf = KernelBtf::load().expect("kernel BTF");
        let err = btf.offset("inode", &["no_such_field"]).unwrap_err().to_string();
        assert!(err.contains("no_such_field"), "{err}");
        assert!(btf.offset("no_such_struct_unrm", &["x"]).is_err());
    }
}
