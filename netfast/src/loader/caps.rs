//! Checking for the privileges a command needs before it changes anything.

use crate::error::{Error, Result};

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in /proc/self/status); 0 when it
/// cannot be read.
pub fn effective() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The capabilities netfast needs that this process lacks. `mounts`: the command mounts
/// (namespaces, bpffs).
pub fn missing(mounts: bool) -> Vec<&'static str> {
    let caps = effective();
    let has = |c: u32| caps & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF (or CAP_SYS_ADMIN)");
    }
    if mounts && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_SYS_ADMIN");
    }
    missing
}

/// Fails naming every missing capability. `mounts`: the command mounts (namespaces, bpffs).
pub fn require(what: &str, mounts: bool) -> Result<()> {
    let missing = missing(mounts);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Settings(format!(
            "{what} needs {}; run it as root (sudo netfast …)",
            missing.join(" and ")
        )))
    }
}
