//! Map names and sizes, in one place. The `#[map]` statics in `netfast-ebpf` are named after
//! these constants (the symbol is the map name) and the loader looks maps up by them.

/// Per-CPU array of [`crate::Traffic`] indexed by [`crate::stats::slot`]: what each hook saw
/// and what each [`crate::DropReason`] dropped.
pub const STATS: &str = "NETFAST_STATS";
/// Entries in [`STATS`].
pub const STATS_SLOTS: u32 = 64;

/// Every pinned object lives below this directory of the bpf filesystem, one subdirectory
/// per host network namespace.
pub const PIN_ROOT: &str = "/sys/fs/bpf/netfast";
