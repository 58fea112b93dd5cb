//! The pieces of a bridge network, over netlink, as the seed articles build them by hand:
//! a bridge with the gateway address, and containers — a namespace, a veth pair with one
//! end on the bridge, an address and a default route. `network create` and `container
//! create` use them.

use std::{fs::File, net::Ipv4Addr};

use super::{
    netlink::{Link, Netlink, Nl},
    nsfs,
};
use crate::error::{Error, Result};

/// Something created, reported as soon as it exists so that a failure later can undo it.
#[derive(Clone, Debug)]
pub enum Made {
    Link(Link),
    Namespace(String),
}

/// The MAC of the bridge of a network whose gateway is `gateway`, as Docker makes it:
/// `02:42` (locally administered) and the gateway's address. Made from the network, it is
/// the same when the bridge is made again, so the containers' ARP caches stay true.
pub fn bridge_mac(gateway: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = gateway.octets();
    [0x02, 0x42, a, b, c, d]
}

/// A bridge named `name`, up, with `gateway/prefix` and its MAC (`bridge_mac`); with `mark` as its alias (netfast's
/// mark of what it made, set before anything else).
pub fn bridge(
    nl: &Nl<'_>,
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    mark: Option<&str>,
    made: &mut dyn FnMut(Made),
) -> Result<Link> {
    let bridge = nl.add_bridge(name, bridge_mac(gateway))?;
    made(Made::Link(bridge.clone()));
    if let Some(mark) = mark {
        nl.set_alias(&bridge, mark)?;
    }
    nl.add_address(&bridge, gateway, prefix)?;
    nl.set_up(&bridge)?;
    Ok(bridge)
}

/// A container to plumb onto a bridge.
pub struct ContainerPlumbing<'a> {
    /// Its network namespace (created, named as `ip netns` names them).
    pub name: &'a str,
    /// The host end of its veth pair, put on `bridge`.
    pub veth: &'a str,
    pub bridge: &'a Link,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The alias both ends of the veth get (netfast's mark), before the address.
    pub mark: Option<&'a str>,
}

/// The links of a plumbed container.
pub struct Plumbed {
    /// The host end of the veth pair, on the bridge.
    pub host_side: Link,
    /// `eth0` inside the container.
    pub eth0: Link,
    /// The cookie of the namespace made ([`nsfs::cookie`]).
    pub netns_cookie: u64,
}

/// Creates the container's namespace, its veth pair at the bridge's MTU with `eth0` inside,
/// the address, `lo` up and the default route via the gateway.
pub fn container(
    netlink: &Netlink,
    nl: &Nl<'_>,
    c: &ContainerPlumbing<'_>,
    made: &mut dyn FnMut(Made),
) -> Result<Plumbed> {
    // The mark goes on the namespace's `lo` before the namespace has its name: a command
    // killed at any step leaves no namespace of that name without it, and what netfast
    // removes of a namespace it did not record is only one that carries it.
    let mark_lo = || -> Result<()> {
        let Some(mark) = c.mark else { return Ok(()) };
        let here = netlink.here(&format!("the new namespace {}", c.name))?;
        let lo = here
            .link("lo")?
            .ok_or_else(|| Error::NoInterface("lo".into()))?;
        here.set_alias(&lo, mark)
    };
    nsfs::create(c.name, || {
        mark_lo().map_err(|e| std::io::Error::other(crate::error::report(&e)))
    })
    .map_err(|source| Error::Io {
        context: format!("creating network namespace {}", c.name),
        source,
    })?;
    made(Made::Namespace(c.name.to_owned()));
    let netns_cookie = nsfs::cookie(c.name)?.ok_or_else(|| Error::Io {
        context: format!("reading the identity of namespace {}", c.name),
        source: std::io::Error::other("it vanished as it was made"),
    })?;
    let ns = File::open(nsfs::path(c.name)).map_err(|source| Error::Io {
        context: format!("opening namespace {}", c.name),
        source,
    })?;
    let host_side = nl.add_veth_into(c.veth, "eth0", &ns)?;
    made(Made::Link(host_side.clone()));
    let inside = netlink.namespace(c.name)?;
    let eth0 = inside
        .link("eth0")?
        .ok_or_else(|| Error::NoInterface("eth0".into()))?;
    if let Some(mark) = c.mark {
        nl.set_alias(&host_side, mark)?;
        inside.set_alias(&eth0, mark)?;
    }
    nl.set_mtu(&host_side, c.bridge.mtu)?;
    nl.set_controller(&host_side, c.bridge)?;
    nl.set_up(&host_side)?;
    let lo = inside
        .link("lo")?
        .ok_or_else(|| Error::NoInterface("lo".into()))?;
    inside.set_up(&lo)?;
    inside.set_mtu(&eth0, c.bridge.mtu)?;
    inside.add_address(&eth0, c.ip, c.prefix)?;
    inside.set_up(&eth0)?;
    inside.add_default_route(c.gateway)?;
    // Read again: the MAC (and state) as they are now.
    let eth0 = inside
        .link("eth0")?
        .ok_or_else(|| Error::NoInterface("eth0".into()))?;
    Ok(Plumbed {
        host_side,
        eth0,
        netns_cookie,
    })
}
