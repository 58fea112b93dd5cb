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

/// The host namespace a dataplane serves: its socket-level programs see every process of
/// the machine and act only on those in this namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct HostInfo {
    /// The host namespace's netns cookie (SO_NETNS_COOKIE); 0 until the loader writes it.
    pub netns_cookie: u64,
}
const _: () = assert!(core::mem::size_of::<HostInfo>() == 8);

/// What a host-local connect to a published port was translated from and to, per socket
/// (keyed by socket cookie), so that getpeername/recvmsg can show the published address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevNat {
    /// The published address and port the process asked for, network byte order.
    pub orig_addr: u32,
    pub orig_port: u16,
    pub _pad: u16,
    /// The container address and port it was connected to instead.
    pub target_addr: u32,
    pub target_port: u16,
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<SockRevNat>() == 16);

crate::aya_pod!(HostInfo, SockRevNat);
