//! The fast path's view of where a packet goes: the container the endpoints map names, or
//! the host's FIB (as `bpf_fib_lookup` answers it for a forwarded packet), and what a
//! redirect writes into the frame.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::{EndpointInfo, Model, frame};

/// A connected route: a subnet on a device, with the neighbours it knows.
#[derive(Clone, Debug)]
pub struct Link {
    pub subnet: Ipv4Net,
    pub dev: u32,
    pub mtu: u16,
    /// Resolved neighbours (the rest are "not resolved yet").
    pub neighbours: BTreeMap<Ipv4Addr, [u8; 6]>,
}

/// The host's routing table as far as the fuzzer's topology goes: local addresses (never
/// forwarded), connected subnets, and a default route through a gateway.
#[derive(Clone, Debug, Default)]
pub struct Fib {
    /// Addresses the host owns or that are broadcast: a lookup for them is not forwarded.
    pub local: Vec<Ipv4Addr>,
    pub links: Vec<Link>,
    /// The default gateway (on one of the links).
    pub gateway: Option<Ipv4Addr>,
    /// Each device's MAC (the source of frames it sends).
    pub macs: BTreeMap<u32, [u8; 6]>,
}

/// What a FIB lookup answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Out of `dev` to a resolved neighbour.
    Neigh {
        dev: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
    /// Out of `dev`, the neighbour to be resolved by the kernel.
    Resolve { dev: u32 },
    /// Local, no route, or over the MTU: the host's stack handles it.
    None,
}

impl Fib {
    /// `bpf_fib_lookup` for a packet to `dst` of `tot_len` bytes (0: no MTU check):
    /// unicast routes only; the MTU is checked before the neighbour.
    pub fn lookup(&self, dst: Ipv4Addr, tot_len: u16) -> Lookup {
        if self.local.contains(&dst) || dst.is_loopback() || dst.is_unspecified() {
            return Lookup::None;
        }
        let direct = self
            .links
            .iter()
            .filter(|l| l.subnet.contains(&dst))
            .max_by_key(|l| l.subnet.prefix_len());
        let (link, next_hop) = match direct {
            Some(l) => (l, dst),
            None => match self.gateway.and_then(|gw| {
                self.links
                    .iter()
                    .find(|l| l.subnet.contains(&gw))
                    .map(|l| (l, gw))
            }) {
                Some(x) => x,
                None => return Lookup::None,
            },
        };
        if tot_len != 0 && tot_len > link.mtu {
            return Lookup::None;
        }
        match link.neighbours.get(&next_hop) {
            Some(mac) => Lookup::Neigh {
                dev: link.dev,
                dmac: *mac,
                smac: self.macs.get(&link.dev).copied().unwrap_or_default(),
            },
            None => Lookup::Resolve { dev: link.dev },
        }
    }
}

/// Where the fast path sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Straight into a container's namespace (`bpf_redirect_peer`).
    Peer(EndpointInfo),
    Neigh {
        dev: u32,
        dmac: [u8; 6],
        smac: [u8; 6],
    },
    Resolve {
        dev: u32,
    },
}

impl Route {
    pub fn dev(&self) -> u32 {
        match self {
            Route::Peer(ep) => ep.ifindex,
            Route::Neigh { dev, .. } | Route::Resolve { dev } => *dev,
        }
    }
}

impl Model {
    /// The route of a packet once translated to `dst`, or `None` when the host's stack
    /// must handle it: a TTL about to expire (the stack sends the error), no route, over
    /// the MTU (of the container's veth, or of the route). A hairpinned packet (`must`) is
    /// routed whatever its TTL and size. Fragments are routed like whole packets (handed
    /// to the host, they would meet its FORWARD chain). The MTU is judged on the frame's
    /// length less Ethernet.
    pub fn route(&self, f: &[u8], ip: &frame::Ip, dst: Ipv4Addr, must: bool) -> Option<Route> {
        if !(must || ip.ttl > 1) {
            return None;
        }
        let len = f.len().saturating_sub(frame::ETH_HLEN).min(0xffff) as u16;
        if let Some(ep) = self.topo.endpoints.get(&dst) {
            if !must && ep.mtu != 0 && len > ep.mtu {
                return None;
            }
            return Some(Route::Peer(*ep));
        }
        match self.topo.fib.lookup(dst, if must { 0 } else { len }) {
            Lookup::Neigh { dev, dmac, smac } => Some(Route::Neigh { dev, dmac, smac }),
            Lookup::Resolve { dev } => Some(Route::Resolve { dev }),
            Lookup::None => None,
        }
    }
}

/// Sends the translated packet along `route`: TTL one less, the MACs of the next hop (a
/// neighbour the kernel resolves later keeps the frame's).
pub fn forward(out: &mut frame::Expected, route: &Route) {
    out.hop();
    match route {
        Route::Peer(ep) => out.set_macs(ep.mac, ep.gw_mac),
        Route::Neigh { dmac, smac, .. } => out.set_macs(*dmac, *smac),
        Route::Resolve { .. } => {}
    }
}
