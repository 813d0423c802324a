//! Writing as someone else. When root restores another user's file to where
//! it was, the write happens with that user's filesystem rights
//! (setfsuid/setfsgid and their groups): a record's path is whatever the
//! deleter named, and root must not write where the owner itself could not.

use std::ffi::CStr;

use anyhow::{Result, bail};

/// While alive, file system access runs as another user; dropping it goes
/// back to root.
pub struct AsUser {
    groups: Vec<libc::gid_t>,
}

impl AsUser {
    /// Takes on `uid`'s filesystem identity, with primary group `gid` and
    /// the supplementary groups the user database gives it. The calling
    /// process must be root and run a single thread.
    pub fn become_(uid: u32, gid: u32) -> Result<Self> {
        let groups = saved_groups()?;
        let theirs = groups_of(uid, gid);
        // SAFETY: plain system calls with valid arguments; single-threaded.
        unsafe {
            if libc::setgroups(theirs.len(), theirs.as_ptr()) != 0 {
                bail!("taking on uid {uid}'s groups: {}", std::io::Error::last_os_error());
            }
            libc::setfsgid(gid);
            libc::setfsuid(uid);
            // setfsuid reports the old value, never an error: check.
            if libc::setfsuid(u32::MAX) as u32 != uid || libc::setfsgid(u32::MAX) as u32 != gid {
                let back = AsUser { groups };
                drop(back);
                bail!("could not take on uid {uid}'s filesystem identity");
            }
        }
        Ok(AsUser { groups })
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        // SAFETY: as above; going back to root's identity.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::setgroups(self.groups.len(), self.groups.as_ptr());
        }
    }
}

fn saved_groups() -> Result<Vec<libc::gid_t>> {
    // SAFETY: getgroups with a buffer of the size it asked for.
    unsafe {
        let n = libc::getgroups(0, std::ptr::null_mut());
        let mut groups = vec![0; n.max(0) as usize];
        if libc::getgroups(n, groups.as_mut_ptr()) < 0 {
            bail!("reading this process's groups: {}", std::io::Error::last_os_error());
        }
        Ok(groups)
    }
}

/// `uid`'s groups from the user database; just `gid` if it has no entry.
fn groups_of(uid: u32, gid: u32) -> Vec<libc::gid_t> {
    let mut buf = vec![0u8; 16 << 10];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found = std::ptr::null_mut();
    // SAFETY: getpwuid_r fills `pwd` with pointers into `buf`.
    let ret = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if ret != 0 || found.is_null() {
        return vec![gid];
    }
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: pw_name points into `buf`, alive here; `groups` holds `n`.
    let got = unsafe { libc::getgrouplist(pwd.pw_name, gid, groups.as_mut_ptr(), &mut n) };
    if got < 0 {
        let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
        log::debug!("{name} is in more than {} groups; using its primary group only", groups.len());
        return vec![gid];
    }
    groups.truncate(n as usize);
    groups
}
