//! Types and constants shared by the eBPF programs (`netfast-ebpf`) and the loader (`netfast`).
//!
//! Every type here is `#[repr(C)]`, has explicit padding fields and derives
//! `bytemuck::{Pod, Zeroable}`, so a padding mistake fails to compile; its size is asserted
//! so that both sides agree on the layout the kernel sees.
#![no_std]

pub mod maps;
pub mod stats;

pub use stats::{DropReason, Hook, Traffic};

/// Implements `aya::Pod` (userspace only) for types that are already `bytemuck::Pod`.
#[macro_export]
#[doc(hidden)]
macro_rules! aya_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `bytemuck::Pod`, which has the same requirements.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

/// TC verdicts as the programs return them (`TC_ACT_*`), for both sides to compare with.
pub mod verdict {
    /// `TC_ACT_UNSPEC`: carry on (next TCX program, else the stack). A pass-through.
    pub const NEXT: i32 = -1;
    /// `TC_ACT_OK`: hand the packet to the stack, skipping later TCX programs.
    pub const OK: i32 = 0;
    /// `TC_ACT_SHOT`: drop.
    pub const SHOT: i32 = 2;
    /// `TC_ACT_REDIRECT`: sent elsewhere by a redirect helper.
    pub const REDIRECT: i32 = 7;

    pub const fn name(v: i32) -> &'static str {
        match v {
            NEXT => "NEXT (TC_ACT_UNSPEC)",
            OK => "OK (TC_ACT_OK)",
            SHOT => "SHOT (TC_ACT_SHOT)",
            REDIRECT => "REDIRECT (TC_ACT_REDIRECT)",
            _ => "unknown verdict",
        }
    }
}
