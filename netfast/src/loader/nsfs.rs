//! Named network namespaces, made the way `ip netns add` makes them: a file under /run/netns
//! with the namespace bind-mounted on it, so that it lives without a process and every tool
//! that knows `ip netns` sees it.
//!
//! Under `ip netns exec`, netfast runs in a private mount namespace whose mounts do not
//! propagate back; a namespace mounted there would vanish with the command. So the mounts are
//! made from a thread that has joined the parent process's mount namespace.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
};

use crate::netns::NETNS_RUN_DIR;

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn mount(src: &Path, target: &Path, fstype: &str, flags: libc::c_ulong) -> io::Result<()> {
    let (src, target, fstype) = (
        cstr(src)?,
        cstr(target)?,
        CString::new(fstype).expect("no NUL"),
    );
    // SAFETY: valid C strings; no data argument.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    })
}

/// /run/netns as a shared mount point, so that namespace mounts made here propagate to
/// every mount namespace that shares it (what iproute2 does).
fn prepare_run_dir() -> io::Result<()> {
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir)?;
    let none = Path::new("none");
    if mount(none, dir, "none", libc::MS_SHARED | libc::MS_REC).is_ok() {
        return Ok(());
    }
    // Not a mount point yet: bind it onto itself first.
    mount(dir, dir, "none", libc::MS_BIND | libc::MS_REC)?;
    mount(none, dir, "none", libc::MS_SHARED | libc::MS_REC)
}

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Runs `f` on a thread in the mount namespace the mounts must live in: the parent
/// process's when this process has one of its own (the `ip netns exec` case), else ours.
fn in_lasting_mount_ns<T: Send>(f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: getppid has no preconditions.
            let parent = format!("/proc/{}/ns/mnt", unsafe { libc::getppid() });
            let ino = |p: &str| fs::metadata(p).map(|m| m.ino()).ok();
            if ino("/proc/self/ns/mnt") != ino(&parent) {
                let ns = File::open(&parent)?;
                // A thread shares its filesystem context with the others until it unshares
                // it; only then may it enter another mount namespace.
                // SAFETY: both calls affect this thread only.
                check(unsafe { libc::unshare(libc::CLONE_FS) })?;
                check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) })?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("mount thread panicked")))
    })
}

/// Creates the named namespace `name`; fails if one of that name exists. `prepare` runs in
/// the new namespace before it has its name: what it does there (netfast's mark) is there
/// from the first moment anyone can find the namespace by its name.
pub fn create(name: &str, prepare: impl FnOnce() -> io::Result<()> + Send) -> io::Result<()> {
    let target = path(name);
    in_lasting_mount_ns(|| {
        prepare_run_dir()?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&target)?;
        // This thread moves to the new network namespace; it ends right after.
        // SAFETY: unshare(CLONE_NEWNET) affects the calling thread only.
        let made = check(unsafe { libc::unshare(libc::CLONE_NEWNET) }).and_then(|()| {
            prepare()?;
            mount(
                Path::new("/proc/thread-self/ns/net"),
                &target,
                "none",
                libc::MS_BIND,
            )
        });
        if made.is_err() {
            let _ = fs::remove_file(&target);
        }
        made
    })
}

/// The netns cookie of the named namespace (see [`crate::host::netns_cookie`]), which tells
/// the namespace netfast made from one made under its name since; `None` if there is no
/// namespace of that name (no file, or a file with no namespace mounted on it).
pub fn cookie(name: &str) -> crate::error::Result<Option<u64>> {
    in_named(name, || crate::host::netns_cookie().map(Some))
}

/// What [`within`] found under a namespace's name.
pub enum Within<T> {
    /// The namespace of the cookie: what `f` returned there.
    Ran(T),
    /// No namespace of that name.
    Missing,
    /// Another namespace (made under the name since): `f` did not run.
    Other,
}

/// Runs `f` on a thread in the named namespace if it is the one of netns cookie `cookie`
/// (the namespace netfast made, not one made under its name since).
pub fn within<T: Send>(
    name: &str,
    cookie: u64,
    f: impl FnOnce() -> crate::error::Result<T> + Send,
) -> crate::error::Result<Within<T>> {
    let ran = in_named(name, || {
        if crate::host::netns_cookie()? == cookie {
            f().map(|t| Some(Within::Ran(t)))
        } else {
            Ok(Some(Within::Other))
        }
    })?;
    Ok(ran.unwrap_or(Within::Missing))
}

/// Runs `f` on a thread in the named namespace; `None` if there is no namespace of that name.
fn in_named<T: Send>(
    name: &str,
    f: impl FnOnce() -> crate::error::Result<Option<T>> + Send,
) -> crate::error::Result<Option<T>> {
    let io = |source| crate::error::Error::Io {
        context: format!("entering namespace {name}"),
        source,
    };
    let ns = match File::open(path(name)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread moves to the namespace; it ends right after.
            match crate::netns::setns(&ns) {
                Ok(()) => f(),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(None),
                Err(e) => Err(io(e)),
            }
        })
        .join()
        .unwrap_or_else(|_| Err(io(io::Error::other("the namespace thread panicked"))))
    })
}

/// Deletes the named namespace `name` (its interfaces go when nothing holds it any more).
pub fn delete(name: &str) -> io::Result<()> {
    let target = path(name);
    in_lasting_mount_ns(|| {
        let c = cstr(&target)?;
        // SAFETY: a valid C string. A lazy unmount, as `ip netns del` does.
        let _ = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        match fs::remove_file(&target) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    })
}
