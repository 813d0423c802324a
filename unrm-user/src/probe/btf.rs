//! Kernel struct offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the probes read fields at
//! offsets the daemon looks up here and writes into their read-only data.
//! Each field is named by a dotted path (`d_lockref.count`); anonymous
//! structs and unions along the way are searched, as C would let you write
//! `dentry->d_lockref.count`. Where kernels renamed a field, alternatives are
//! tried in order.
//!
//! A general BTF library builds every type and a table of every string
//! (~0.3 s for vmlinux); this reader makes one pass that notes where each
//! type starts and compares names in place, so `unrm scan` starts quickly.

use anyhow::{Context, Result, anyhow, bail};
use unrm_abi::KernelOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub struct KernelBtf {
    data: Vec<u8>,
    types: usize,
    strings: usize,
    strings_len: usize,
    /// Byte offset of type id `i` (index 0 is void and unused).
    starts: Vec<u32>,
}

/// One `struct btf_type` header.
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` for structs and unions, `type` for references.
    size_or_type: u32,
}

impl KernelBtf {
    /// The BTF at `path`, or the running kernel's own.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self> {
        let path = path.unwrap_or(std::path::Path::new(VMLINUX));
        let data = std::fs::read(path).with_context(|| {
            format!(
                "reading the kernel's BTF from {} (unrm needs a kernel built with CONFIG_DEBUG_INFO_BTF, \
                 or --btf naming where its BTF is)",
                path.display()
            )
        })?;
        Self::parse(data).with_context(|| format!("the BTF in {}", path.display()))
    }

    fn parse(data: Vec<u8>) -> Result<Self> {
        let u32_at = |at: usize| -> Result<u32> {
            let bytes = data.get(at..at + 4).context("BTF header is truncated")?;
            Ok(u32::from_le_bytes(bytes.try_into().unwrap()))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let mut btf = KernelBtf {
            types: header_len + type_off,
            strings: header_len + str_off,
            strings_len: str_len,
            starts: vec![0],
            data,
        };
        if btf.strings + str_len > btf.data.len() || btf.types + type_len > btf.data.len() {
            bail!("{VMLINUX}: sections run past the end of the file");
        }
        let mut at = btf.types;
        while at < btf.types + type_len {
            btf.starts.push(at as u32);
            let t = btf.header_at(at)?;
            at += 12 + trailer_len(&t)?;
        }
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> Result<u32> {
        let bytes = self.data.get(at..at + 4).context("BTF type data is truncated")?;
        Ok(u32::from_le_bytes(bytes.try_into().unwrap()))
    }

    fn header_at(&self, at: usize) -> Result<TypeHeader> {
        let info = self.u32_at(at + 4)?;
        Ok(TypeHeader {
            name_off: self.u32_at(at)?,
            kind: (info >> 24) & 0x1f,
            vlen: info & 0xffff,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8)?,
        })
    }

    fn header(&self, id: u32) -> Result<TypeHeader> {
        let at = *self.starts.get(id as usize).with_context(|| format!("BTF type id {id} out of range"))?;
        self.header_at(at as usize)
    }

    fn name(&self, name_off: u32) -> &[u8] {
        let start = self.strings + name_off as usize;
        let end = self.strings + self.strings_len;
        let Some(bytes) = self.data.get(start..end) else { return b"" };
        &bytes[..bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len())]
    }

    /// The same BTF for aya, parsed from the bytes already read: sysfs hands
    /// out /sys/kernel/btf/vmlinux a page per read(2), so reading it is
    /// worth doing once.
    pub fn for_aya(&self) -> Result<aya::Btf> {
        aya::Btf::parse(&self.data, aya::Endianness::default()).context("parsing the kernel's BTF")
    }

    /// Byte offset of `path` inside `struct name`, trying each alternative.
    pub fn offset(&self, name: &str, paths: &[&str]) -> Result<u32> {
        let root = self.composite(name)?;
        for path in paths {
            if let Some(bits) = self.walk(root, path)? {
                if bits % 8 != 0 {
                    bail!("{name}.{path} is a bitfield");
                }
                return Ok(bits / 8);
            }
        }
        bail!("the running kernel's struct {name} has none of: {}", paths.join(", "))
    }

    fn composite(&self, name: &str) -> Result<u32> {
        (1..self.starts.len() as u32)
            .find(|&id| {
                self.header(id).is_ok_and(|t| {
                    matches!(t.kind, KIND_STRUCT | KIND_UNION)
                        && t.vlen > 0
                        && self.name(t.name_off) == name.as_bytes()
                })
            })
            .ok_or_else(|| anyhow!("struct {name} is not in the kernel's BTF"))
    }

    /// Follows `a.b.c` from type `id`, returning the bit offset.
    fn walk(&self, mut id: u32, path: &str) -> Result<Option<u32>> {
        let mut total = 0;
        for part in path.split('.') {
            match self.member(id, part)? {
                Some((bits, member)) => {
                    total += bits;
                    id = member;
                }
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    /// Finds member `name` of type `id`, looking inside anonymous members.
    fn member(&self, id: u32, name: &str) -> Result<Option<(u32, u32)>> {
        let id = self.strip(id)?;
        let t = self.header(id)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return Ok(None);
        }
        let members = self.starts[id as usize] as usize + 12;
        for i in 0..t.vlen as usize {
            let at = members + i * 12;
            let (m_name, m_type, m_offset) = (self.u32_at(at)?, self.u32_at(at + 4)?, self.u32_at(at + 8)?);
            let bits = if t.kind_flag { m_offset & 0xff_ffff } else { m_offset };
            let m_name = self.name(m_name);
            if m_name == name.as_bytes() {
                return Ok(Some((bits, m_type)));
            }
            if m_name.is_empty()
                && let Some((inner, found)) = self.member(m_type, name)?
            {
                return Ok(Some((bits + inner, found)));
            }
        }
        Ok(None)
    }

    /// Looks through typedefs and qualifiers to the type underneath.
    fn strip(&self, mut id: u32) -> Result<u32> {
        for _ in 0..64 {
            let t = self.header(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type {id} is a loop of qualifiers")
    }

    /// The position of parameter `param` of function `func`.
    pub fn func_param(&self, func: &str, param: &str) -> Result<u32> {
        let id = (1..self.starts.len() as u32)
            .find(|&id| {
                self.header(id).is_ok_and(|t| t.kind == KIND_FUNC && self.name(t.name_off) == func.as_bytes())
            })
            .ok_or_else(|| anyhow!("function {func} is not in the kernel's BTF"))?;
        let proto = self.header(id)?.size_or_type;
        let t = self.header(proto)?;
        if t.kind != KIND_FUNC_PROTO {
            bail!("{func} has no prototype in the kernel's BTF");
        }
        let params = self.starts[proto as usize] as usize + 12;
        (0..t.vlen)
            .find(|&i| self.u32_at(params + i as usize * 8).is_ok_and(|n| self.name(n) == param.as_bytes()))
            .ok_or_else(|| anyhow!("{func} has no parameter {param} in this kernel"))
    }

    /// Where the fentry tier's hooks find their arguments in this kernel.
    ///
    /// The positions are looked up by name because the signatures moved:
    ///
    /// - `vfs_unlink(dir, dentry, delegated_inode)` gained a first argument,
    ///   `struct user_namespace *mnt_userns`, in commit 6521f8917082
    ///   ("namei: prepare for idmapped mounts", Linux 5.12), which commit
    ///   abf08576afe3 ("fs: port vfs_*() helpers to struct mnt_idmap",
    ///   Linux 6.3) turned into `struct mnt_idmap *idmap`: `dentry` is the
    ///   second argument before 5.12, the third since.
    /// - `vfs_rename` took the two directories, the two dentries, the
    ///   delegated inode and the flags as arguments until commit
    ///   9fe61450972d ("namei: introduce struct renamedata", Linux 5.12)
    ///   gathered them into `struct renamedata *rd`. Before it there is no
    ///   `rd`, this fails, and the fentry and kprobe tiers cannot load
    ///   (`auto` falls back to the tracepoint tier).
    pub fn vfs_args(&self) -> Result<unrm_abi::VfsArgs> {
        Ok(unrm_abi::VfsArgs {
            unlink_dentry: self.func_param("vfs_unlink", "dentry")?,
            rename_data: self.func_param("vfs_rename", "rd")?,
            rd_new_dentry: self.offset("renamedata", &["new_dentry"])?,
            rd_flags: self.offset("renamedata", &["flags"])?,
        })
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
            // Commit a78ef704a8dd ("vfs: protect i_nlink", Linux 3.2) made
            // `i_nlink` const, in an anonymous union with a writable alias,
            // `__i_nlink`. Both name the same word, and `i_nlink` is found
            // through the union; the alias is tried should a kernel keep
            // only it.
            inode_nlink: o("inode", &["i_nlink", "__i_nlink"])?,
            inode_ino: o("inode", &["i_ino"])?,
            inode_size: o("inode", &["i_size"])?,
            inode_sb: o("inode", &["i_sb"])?,
            inode_uid: o("inode", &["i_uid"])?,
            inode_generation: o("inode", &["i_generation"])?,
            inode_gid: o("inode", &["i_gid"])?,
            sb_dev: o("super_block", &["s_dev"])?,
            dentry_parent: o("dentry", &["d_parent"])?,
            // Commit 180a9cc3fd6a ("make it easier to catch those who try to
            // modify ->d_name", Linux 6.18) did the same to `d_name`: a const
            // `d_name` and a writable `__d_name` share an anonymous union.
            // `d_name` is still found through it; `__d_name` is tried should
            // a kernel keep only the alias.
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
            inode_dentry: o("inode", &["i_dentry"])?,
            // Commit 946e51f2bf37 ("move d_rcu from overlapping d_child to
            // overlapping d_alias", October 2014; in mainline by 3.19 and
            // taken into older stable kernels) moved `d_alias` into the
            // `d_u` union. A top-level `d_alias` is the layout before it,
            // older than any kernel that publishes its BTF.
            dentry_alias: o("dentry", &["d_u.d_alias", "d_alias"])?,
            sb_magic: o("super_block", &["s_magic"])?,
            task_nsproxy: o("task_struct", &["nsproxy"])?,
            nsproxy_mnt_ns: o("nsproxy", &["mnt_ns"])?,
            mnt_ns_inum: o("mnt_namespace", &["ns.inum"])?,
            task_real_cred: o("task_struct", &["real_cred"])?,
            cred_uid: o("cred", &["uid"])?,
        })
    }
}

/// Bytes that follow a type's 12-byte header.
fn trailer_len(t: &TypeHeader) -> Result<usize> {
    let vlen = t.vlen as usize;
    Ok(match t.kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        0..=19 => 0,
        kind => bail!("unknown BTF kind {kind}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of the running kernel resolve, and fields that C lays out
    /// in a known order come out in that order.
    #[test]
    fn running_kernel_offsets_resolve() {
        let btf = KernelBtf::load(None).expect("kernel BTF");
        let o = btf.probe_offsets().expect("offsets");
        assert!(o.path_dentry > o.path_mnt, "struct path is {{ mnt, dentry }}");
        assert_eq!(o.path_mnt, 0);
        assert!(o.qstr_name > o.qstr_len);
        assert_ne!(o.dentry_count, 0);
        assert_ne!(o.inode_ino, 0);
        // struct lockref is { spinlock, count } inside d_lockref.
        assert_eq!(o.dentry_count, btf.offset("dentry", &["d_lockref"]).unwrap() + 4);
    }

    #[test]
    fn vfs_arguments_are_found_by_name() {
        let btf = KernelBtf::load(None).expect("kernel BTF");
        let args = btf.vfs_args().expect("vfs_unlink and vfs_rename");
        // vfs_unlink(idmap or userns, dir, dentry, delegated_inode) since 5.12.
        assert_eq!(args.unlink_dentry, 2);
        assert_eq!(args.rename_data, 0);
        assert!(btf.func_param("vfs_unlink", "no_such_param").is_err());
        assert!(btf.func_param("no_such_function_unrm", "x").is_err());
    }

    #[test]
    fn missing_fields_are_named_in_the_error() {
        let btf = KernelBtf::load(None).expect("kernel BTF");
        let err = btf.offset("inode", &["no_such_field"]).unwrap_err().to_string();
        assert!(err.contains("no_such_field"), "{err}");
        assert!(btf.offset("no_such_struct_unrm", &["x"]).is_err());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(KernelBtf::parse(vec![0; 10]).is_err());
        let mut bad = vec![0x9f, 0xeb, 1, 0];
        bad.extend_from_slice(&24u32.to_le_bytes());
        bad.extend_from_slice(&[0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(KernelBtf::parse(bad).is_err());
    }
}
