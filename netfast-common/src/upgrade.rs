//! What the pins say about the programs that run: the layout of their maps and which build
//! they came from, so that another build of netfast can tell whether it may use them and
//! `netfast upgrade` can replace them in place.

/// The version of the maps' layouts: bumped whenever a pinned map changes its type, key or
/// value (size or meaning), with a migration for its entries (the loader's
/// `upgrade::migrate`), or a map is added. Version 1 was the first release, whose pins carry
/// no version; 3 added the monitor's maps (`DROP_EVENTS`, `MONITOR_BUDGET`, `HOOK_DROPS`).
pub const LAYOUT_VERSION: u32 = if cfg!(feature = "layout-next") { 4 } else { 3 };

crate::map_type! {
    /// The one entry of [`crate::maps::META`]. Its own layout never changes: every build must be
    /// able to read it.
    pub struct Meta: 88 {
        /// [`LAYOUT_VERSION`] of the running programs and the pinned maps.
        pub layout: u32,
        /// While an upgrade is under way: the layout it moves to (0: none).
        pub next_layout: u32,
        /// Which build of the programs runs: a hash of the embedded eBPF object.
        pub object: u64,
        /// While an upgrade is under way: the build it installs.
        pub next_object: u64,
        /// The netfast version that installed the running programs (UTF-8, NUL-padded).
        pub version: [u8; 32],
        /// The netfast version an upgrade under way installs.
        pub next_version: [u8; 32],
    }
}

/// `text` as a NUL-padded field of [`Meta`] (cut at 32 bytes).
pub fn version_field(text: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = text.len().min(out.len());
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// The text of a [`Meta`] version field.
pub fn version_text(field: &[u8; 32]) -> &str {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    core::str::from_utf8(&field[..end]).unwrap_or("?")
}
