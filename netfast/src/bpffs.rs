//! Finding (or mounting) the bpf filesystem that netfast pins into.
//!
//! Pins must outlive the command, so they go to the bpffs of the machine's root mount
//! namespace. Under `ip netns exec` the process has a private mount namespace whose /sys is a
//! fresh sysfs without bpffs; the root one is still reachable through /proc/1/root.

use std::{
    ffi::CString,
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT: &str = "/sys/fs/bpf";
const VIA_PID1: &str = "/proc/1/root/sys/fs/bpf";

fn is_bpffs(path: &str) -> bool {
    let Ok(c) = CString::new(path) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statfs buffer to fill.
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_ns(pid: &str) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/mnt"))
        .map(|m| m.ino())
        .ok()
}

fn mount_bpffs() -> io::Result<()> {
    let src = CString::new("bpf").expect("no NUL");
    let target = CString::new(DEFAULT).expect("no NUL");
    let opts = CString::new("mode=0700").expect("no NUL");
    // SAFETY: valid C strings; mounting needs CAP_SYS_ADMIN, checked by the kernel.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bpffs mount to pin into:
/// 1. /sys/fs/bpf when it is one;
/// 2. PID 1's, through /proc/1/root (`ip netns exec` gives a private /sys without it);
/// 3. the parent process's, when this process has a mount namespace of its own (again
///    `ip netns exec`, on a machine whose PID 1 does not see bpffs);
/// 4. otherwise a new mount at /sys/fs/bpf — only in a mount namespace this process shares
///    with its parent, since a mount in a private one would vanish with the process.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    if !private_mount_ns() {
        mount_bpffs().map_err(|source| Error::Io {
            context: format!(
                "the bpf filesystem is not mounted and mounting it at {DEFAULT} failed \
                 (mount it yourself: mount -t bpf bpf {DEFAULT})"
            ),
            source,
        })?;
        log::info!("mounted the bpf filesystem at {DEFAULT}");
        return Ok(PathBuf::from(DEFAULT));
    }
    Err(Error::Io {
        context: format!(
            "the bpf filesystem is not mounted, and this process runs in a mount namespace of \
             its own (under `ip netns exec`?) where a mount would vanish with it; mount it first \
             (mount -t bpf bpf {DEFAULT}) or use `netfast --netns NAME`"
        ),
        source: io::Error::from(io::ErrorKind::NotFound),
    })
}

/// The bpffs mount to pin into, when there is one (steps 1 to 3 of [`root`]); mounts
/// nothing.
pub fn find() -> Option<PathBuf> {
    if is_bpffs(DEFAULT) {
        return Some(PathBuf::from(DEFAULT));
    }
    if is_bpffs(VIA_PID1) {
        return Some(PathBuf::from(VIA_PID1));
    }
    let via_parent = format!("/proc/{}/root{DEFAULT}", parent());
    if private_mount_ns() && is_bpffs(&via_parent) {
        return Some(PathBuf::from(via_parent));
    }
    None
}

fn parent() -> String {
    // SAFETY: getppid has no preconditions.
    unsafe { libc::getppid() }.to_string()
}

/// Whether this process has a mount namespace of its own (not its parent's), where a mount
/// would vanish with it.
pub fn private_mount_ns() -> bool {
    mount_ns("self") != mount_ns(&parent())
}

/// True when `path` exists (a pin, or a directory of pins).
pub fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}
