//! Published ports: `-p [HOST_IP:]HOST_PORT:CONTAINER:PORT`, one map entry per host port.

use bytemuck::{Pod, Zeroable};

/// A host address and port clients connect to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PubKey {
    /// Host address, network byte order; 0 for every address of the host.
    pub addr: u32,
    /// Host port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PubKey>() == 8);

/// Where a published port leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PubTarget {
    /// Container address and port, network byte order.
    pub addr: u32,
    pub port: u16,
    /// The container's network.
    pub net_id: u16,
    /// The allow-list of this publication in the allow map; 0 for "anyone".
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PubTarget>() == 12);

/// Allow-list entry: a rule and a client prefix (LPM over both; the rule is always matched
/// whole, so the key's prefix length is 32 + the client prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct AllowKey {
    /// The rule, network byte order (LPM compares bytes from the first).
    pub rule: u32,
    /// Client address, network byte order.
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<AllowKey>() == 8);

crate::aya_pod!(PubKey, PubTarget, AllowKey);
