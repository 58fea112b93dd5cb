//! "The host": the network namespace netfast serves, and where it keeps what belongs to it.
//!
//! Each host namespace has a key — its `ip netns` name, `root` for the machine's own, or
//! `ino-<inode>` for an unnamed one — found the same way whether netfast entered it with
//! `--netns NAME` or was started under `ip netns exec NAME`. Under that key live:
//! - its state, in `/run/netfast/<key>/` (tmpfs: it describes kernel objects, which do not
//!   survive a reboot either);
//! - its pinned BPF objects (maps, TCX links), in `/sys/fs/bpf/netfast/<key>/`.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The directory of the bpf filesystem that holds netfast's pins, one subdirectory per host.
pub const PIN_DIR: &str = "netfast";

use crate::{
    error::{Error, Result},
    netns::NETNS_RUN_DIR,
};

/// Where per-host state directories live.
pub const STATE_ROOT: &str = "/run/netfast";

/// The file beside a host's state that names it for humans (its `ip netns` names).
pub const LABEL_FILE: &str = "host";

/// The host namespace this process works in (the calling thread's network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Directory-safe identity: the `ip netns` name, `root`, or `ino-<inode>`.
    pub key: String,
    /// The `ip netns` name, when it has one.
    pub name: Option<String>,
}

fn inode(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.ino())
}

impl Host {
    /// Identifies the calling thread's network namespace.
    pub fn current() -> Result<Host> {
        let own = inode(Path::new("/proc/thread-self/ns/net")).ok_or_else(|| Error::Io {
            context: "reading /proc/thread-self/ns/net".into(),
            source: std::io::Error::last_os_error(),
        })?;
        if let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) {
            let mut names: Vec<String> = entries
                .flatten()
                .filter(|e| inode(&e.path()) == Some(own))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            if let Some(name) = names.into_iter().next() {
                return Ok(Host {
                    key: name.clone(),
                    name: Some(name),
                });
            }
        }
        if root_netns_inode() == own {
            return Ok(Host {
                key: "root".into(),
                name: None,
            });
        }
        Ok(Host {
            key: format!("ino-{own}"),
            name: None,
        })
    }

    /// `/run/netfast/<key>`.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_ROOT).join(&self.key)
    }

    /// `<bpffs>/netfast/<key>`: `/sys/fs/bpf/netfast/<key>` as the root mount namespace
    /// sees it (see [`crate::bpffs::root`]).
    pub fn pin_dir(&self) -> Result<PathBuf> {
        Ok(crate::bpffs::root()?.join(PIN_DIR).join(&self.key))
    }

    /// How to name this host to a human.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!("network namespace {name}"),
            None if self.key == "root" => "the root network namespace".into(),
            None => format!("network namespace {}", self.key),
        }
    }
}

/// The inode of the machine's first network namespace (`PROC_NET_INIT_INO`): a fixed number
/// on kernels since 3.8, below the range others are numbered from, so never another one's.
pub const NET_NS_INIT_INO: u64 = 0xEFFF_FFF9;

/// The inode of the machine's root network namespace: PID 1's, or, where PID 1's namespace
/// cannot be read (some sandboxes hide it even from root), the fixed inode of the first one.
pub fn root_netns_inode() -> u64 {
    inode(Path::new("/proc/1/ns/net")).unwrap_or(NET_NS_INIT_INO)
}
