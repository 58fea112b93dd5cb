//! netfast: an eBPF NAT and forwarding dataplane for Linux bridge networks.
//!
//! The library is `load → typed handles`: [`dataplane::Dataplane`] loads the embedded eBPF
//! object and attaches its programs; [`prog_test`] runs the same programs on test packets.

pub mod agent;
pub mod backend;
pub mod bpf_sys;
pub mod bpffs;
pub mod clock;
pub mod conntrack_filter;
pub mod dataplane;
pub mod docker;
pub mod doctor;
pub mod error;
pub mod host;
pub mod loader;
pub mod maps;
pub mod netfilter;
pub mod netns;
pub mod prog_test;
pub mod stats;
pub mod upgrade;

pub use dataplane::{Dataplane, InterfaceRole};
pub use error::{Error, Result};
pub use netfast_common as common;

/// The compiled eBPF object (every program and map of the dataplane), built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfast"));
