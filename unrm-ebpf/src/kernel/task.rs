//! `struct task_struct` and what the probes follow from it: credentials,
//! namespaces, files, memory.

use aya_ebpf::helpers::bpf_get_current_task;

use super::{File, Files, FsStruct, Mm, kernel_struct, off};

kernel_struct! {
    /// A `struct task_struct`: one thread.
    Task
}

kernel_struct! {
    /// A `struct cred`.
    Cred
}

kernel_struct! {
    /// A `struct nsproxy`: a task's namespaces.
    NsProxy
}

kernel_struct! {
    /// A `struct mnt_namespace`.
    MntNamespace
}

impl Task {
    /// The task this program runs in.
    #[inline(always)]
    pub fn current() -> Option<Task> {
        // SAFETY: a helper every program type here may call; it reads
        // nothing of ours and returns an address.
        Task::from_addr(unsafe { bpf_get_current_task() })
    }

    /// `tgid`: the process id.
    #[inline(always)]
    pub fn tgid(self) -> Option<u32> {
        self.read::<u32>(off!(task_tgid))
    }

    /// `comm`: the name of the executable, cut to 15 bytes.
    #[inline(always)]
    pub fn comm(self) -> Option<[u8; 16]> {
        self.read::<[u8; 16]>(off!(task_comm))
    }

    /// `files`; `None` once an exiting task has closed them.
    #[inline(always)]
    pub fn files(self) -> Option<Files> {
        self.read_ptr(off!(task_files)).map(Files)
    }

    /// `fs`: root and working directory.
    #[inline(always)]
    pub fn fs(self) -> Option<FsStruct> {
        self.read_ptr(off!(task_fs)).map(FsStruct)
    }

    /// `mm`; `None` for a kernel thread.
    #[inline(always)]
    pub fn mm(self) -> Option<Mm> {
        self.read_ptr(off!(task_mm)).map(Mm)
    }

    /// `nsproxy`; `None` once an exiting task has dropped it.
    #[inline(always)]
    pub fn nsproxy(self) -> Option<NsProxy> {
        self.read_ptr(off!(task_nsproxy)).map(NsProxy)
    }

    /// `real_cred`: who the task is (as opposed to whom it acts for).
    #[inline(always)]
    pub fn real_cred(self) -> Option<Cred> {
        self.read_ptr(off!(task_real_cred)).map(Cred)
    }

    /// The task's real uid (in the initial user namespace, as `kuid_t`
    /// holds it).
    #[inline(always)]
    pub fn uid(self) -> Option<u32> {
        self.real_cred()?.uid()
    }

    /// The task's mount namespace, as `/proc/PID/ns/mnt` numbers it.
    #[inline(always)]
    pub fn mnt_ns_inum(self) -> Option<u32> {
        self.nsproxy()?.mnt_ns()?.inum()
    }

    /// The open file behind descriptor `fd`.
    #[inline(always)]
    pub fn file(self, fd: u32) -> Option<File> {
        self.files()?.fdt()?.file(fd)
    }
}

impl Cred {
    /// `uid`, a `kuid_t`.
    #[inline(always)]
    pub fn uid(self) -> Option<u32> {
        self.read::<u32>(off!(cred_uid))
    }
}

impl NsProxy {
    #[inline(always)]
    pub fn mnt_ns(self) -> Option<MntNamespace> {
        self.read_ptr(off!(nsproxy_mnt_ns)).map(MntNamespace)
    }
}

impl MntNamespace {
    /// `ns.inum`: the namespace's inode number.
    #[inline(always)]
    pub fn inum(self) -> Option<u32> {
        self.read::<u32>(off!(mnt_ns_inum))
    }
}
