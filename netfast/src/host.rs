//! "The host": the network namespace netfast serves, and where it keeps what belongs to it.
//!
//! Each host namespace has a key made of its identity, never of a name: `netns-<cookie>`,
//! its netns cookie (SO_NETNS_COOKIE), which the kernel never gives to another namespace
//! while the machine runs. A name in /run/netns can point at another namespace tomorrow (`ip
//! netns add root` made netfast's root namespace and a namespace named `root` share state),
//! and naming a namespace later (`ip netns attach`) must not orphan what it has. Under that key
//! live:
//! - its state, in `/run/netfast/<key>/` (tmpfs: it describes kernel objects, which do not
//!   survive a reboot either), with a `host` file that names it for humans;
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
    /// Directory-safe identity: `netns-<cookie>`.
    pub key: String,
    /// Its `ip netns` names, sorted (a namespace can have several, or none).
    pub names: Vec<String>,
    /// Whether it is the machine's root network namespace.
    pub root: bool,
    /// Its nsfs inode, for humans and for finding state an older netfast left.
    pub inode: u64,
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
        let mut names: Vec<String> = fs::read_dir(NETNS_RUN_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| inode(&e.path()) == Some(own))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let host = Host {
            key: format!("netns-{}", netns_cookie()?),
            names,
            root: root_netns_inode() == own,
            inode: own,
        };
        host.check_legacy()?;
        Ok(host)
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
        match (self.names.as_slice(), self.root) {
            ([], true) => "the root network namespace".into(),
            ([], false) => format!("network namespace {} (no name)", self.key),
            (names, root) => {
                format!(
                    "network namespace {}{}",
                    names.join(" (also "),
                    ")".repeat(names.len() - 1)
                ) + if root { ", the root one" } else { "" }
            }
        }
    }

    /// What the `host` file beside the state says: the names, then the key.
    pub fn label(&self) -> String {
        let mut label = match (self.names.as_slice(), self.root) {
            ([], true) => "root".to_owned(),
            ([], false) => format!("unnamed (inode {})", self.inode),
            (names, _) => names.join(" "),
        };
        label.push('\n');
        label
    }

    /// The key an older netfast gave this namespace: its first name, `root`, `ino-<inode>`.
    fn legacy_key(&self) -> String {
        match (self.names.first(), self.root) {
            (Some(name), _) => name.clone(),
            (None, true) => "root".into(),
            (None, false) => format!("ino-{}", self.inode),
        }
    }

    /// State an older netfast (which keyed hosts by name) left for this namespace: a state
    /// directory alone is moved under the new key; with pins, which bpffs cannot move, the
    /// command is refused with what to do. A key that another namespace may have written (a
    /// namespace named `root` beside the real root, one named like a current key) is never
    /// taken over.
    fn check_legacy(&self) -> Result<()> {
        let old = self.legacy_key();
        if old.contains('/') || old == "." || old == ".." || is_current_key(&old) {
            return Ok(());
        }
        let old_state = Path::new(STATE_ROOT).join(&old);
        let old_pins = crate::bpffs::find().map(|b| b.join(PIN_DIR).join(&old));
        let pins = old_pins.as_ref().filter(|p| p.exists());
        if !old_state.join("state.json").exists() && pins.is_none() {
            return Ok(());
        }
        let named_root = Path::new(NETNS_RUN_DIR).join("root");
        let ambiguous = old == "root" && (!self.root || inode(&named_root).is_some());
        let new_state = self.state_dir();
        // Another netfast command, at the same time, saw it too and moved it first (between
        // the look above and here, or before this one's rename).
        let moved_by_another =
            || !old_state.join("state.json").exists() && new_state.join("state.json").exists();
        if !ambiguous && pins.is_none() && new_state.exists() && moved_by_another() {
            return Ok(());
        }
        if ambiguous || pins.is_some() || new_state.exists() {
            return Err(Error::Settings(format!(
                "{} holds netfast state from a version that keyed namespaces by name{}; this \
                 netfast keys {} by its identity ({}){}. Run `netfast down` with the netfast \
                 that made it, or remove {}{} by hand (which detaches its programs)",
                old_state.display(),
                pins.map(|p| format!(" (and pins in {})", p.display()))
                    .unwrap_or_default(),
                self.describe(),
                self.key,
                if ambiguous {
                    "; `root` may be the root namespace's or that of a namespace named `root`, \
                     so it is not taken over"
                } else {
                    ""
                },
                old_state.display(),
                pins.map(|p| format!(" and {}", p.display()))
                    .unwrap_or_default()
            )));
        }
        if let Err(source) = fs::rename(&old_state, &new_state) {
            if moved_by_another() {
                return Ok(());
            }
            return Err(Error::Io {
                context: format!(
                    "moving {} to {} (netfast now keys namespaces by identity)",
                    old_state.display(),
                    new_state.display()
                ),
                source,
            });
        }
        log::info!(
            "moved {} to {}: state is now keyed by the namespace's identity",
            old_state.display(),
            new_state.display()
        );
        Ok(())
    }
}

/// Whether `key` has the form of this netfast's keys (`netns-<cookie>`): the state under it
/// is a namespace's by its identity, whatever namespace bears that name.
fn is_current_key(key: &str) -> bool {
    key.strip_prefix("netns-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The netns cookie of the calling thread's network namespace (SO_NETNS_COOKIE): unique
/// among all namespaces since boot, never reused.
pub fn netns_cookie() -> Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let io = |source| Error::Io {
        context: "reading the network namespace cookie".into(),
        source,
    };
    // SAFETY: plain socket syscalls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(io(err));
        }
        Ok(cookie)
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
