//! Network namespaces: netfast can treat any named namespace as "the host" (`--netns NAME`).

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
};

use crate::error::{Error, Result};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Moves the calling thread into the network namespace `file` is open on.
pub(crate) fn setns(file: &impl AsFd) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd; only this thread's network namespace changes.
    let rc = unsafe { libc::setns(file.as_fd().as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_named(name: &str) -> Result<File> {
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    File::open(&path).map_err(|source| Error::Netns {
        name: name.to_owned(),
        path,
        source,
    })
}

/// Moves the calling thread into the named network namespace for good. Threads it creates
/// afterwards start there too, so the binary calls this before it starts any.
pub fn enter(name: &str) -> Result<()> {
    let ns = open_named(name)?;
    setns(&ns).map_err(|source| Error::Netns {
        name: name.to_owned(),
        path: PathBuf::from(NETNS_RUN_DIR).join(name),
        source,
    })
}

/// Moves the calling thread into a namespace and back when dropped: for tests and tools that
/// work in several namespaces from one process.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    pub fn enter(name: &str) -> Result<Self> {
        let original = File::open("/proc/thread-self/ns/net").map_err(|source| Error::Io {
            context: "opening this thread's network namespace".into(),
            source,
        })?;
        enter(name)?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.original) {
            // Staying in the wrong namespace would make every later step act on the wrong host.
            panic!("cannot return to the original network namespace: {e}");
        }
    }
}
