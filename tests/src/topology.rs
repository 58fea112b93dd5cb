//! The test topology, built inside namespaces only:
//!
//! ```text
//!  container ns "c<i>"          host ns "h"                        outside ns "o"
//!  eth0 172.18.0.<i+2>/24 ── vc<i> ─┐
//!                                   br0 172.18.0.1/24
//!                                   up0 198.51.100.1/24 ──────────── eth0 198.51.100.2/24
//! ```
//!
//! The host forwards (ip_forward=1 in its namespace). The outside knows nothing of the
//! container subnet unless built with [`TopologyBuilder::route_back`].
//!
//! With [`TopologyBuilder::far_server`] the outside is also a router to a far server, for
//! traceroute and path-MTU discovery: the router's side of that link has a smaller MTU than
//! the server's, so the server advertises a full-size MSS and packets towards it must shrink
//! on the way (a bottleneck in the middle of the path, not at an end):
//!
//! ```text
//!  outside ns "o" eth1 203.0.113.1/24 (mtu 1400) ──── far ns "f" eth0 203.0.113.10/24 (mtu 1500)
//! ```

use std::net::Ipv4Addr;

use crate::netns::TestNetns;

pub const UPLINK: &str = "up0";
pub const BRIDGE: &str = "br0";
pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const UPLINK_PREFIX: u8 = 24;
pub const SUBNET: &str = "172.18.0.0/24";
/// [`SUBNET`]'s address and prefix length.
pub const SUBNET_ADDR: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 0);
pub const SUBNET_PREFIX: u8 = 24;
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const FAR_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const FAR_GATEWAY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The MTU of the router's side of the link to the far server, below every other MTU.
pub const FAR_MTU: u32 = 1400;

/// The address the toolkit gives container `i` (0-based).
pub const fn container_addr(i: usize) -> Ipv4Addr {
    assert!(i < 250, "fewer than 250 containers");
    Ipv4Addr::new(172, 18, 0, 2 + i as u8)
}

pub struct TopologyBuilder {
    containers: usize,
    bridge: bool,
    route_back: bool,
    far: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            containers: 0,
            bridge: true,
            route_back: false,
            far: false,
        }
    }
}

impl TopologyBuilder {
    /// Containers made by hand (veth, address, default route), as the articles do.
    pub fn containers(mut self, n: usize) -> Self {
        self.containers = n;
        self
    }

    /// No bridge in the host: for tests where netfast creates the network itself.
    pub fn without_bridge(mut self) -> Self {
        self.bridge = false;
        self.containers = 0;
        self
    }

    /// Give the outside a route to the container subnet via the host: plain routing, no NAT.
    pub fn route_back(mut self) -> Self {
        self.route_back = true;
        self
    }

    /// A far server behind the outside, over a link with MTU [`FAR_MTU`].
    pub fn far_server(mut self) -> Self {
        self.far = true;
        self
    }

    pub fn build(self) -> Topology {
        // Drop order matters little (deleting a namespace removes its side of every veth),
        // but containers go first so that nothing is left pointing into a deleted host.
        let far = self.far.then(|| TestNetns::new("f"));
        let outside = TestNetns::new("o");
        let host = TestNetns::new("h");
        let mut containers = Vec::new();
        for i in 0..self.containers {
            containers.push(TestNetns::new(&format!("c{i}")));
        }
        let topo = Topology {
            containers,
            host,
            outside,
            far,
        };
        topo.wire(&self);
        topo
    }
}

/// Namespaces of one test; everything is removed when this is dropped.
pub struct Topology {
    pub containers: Vec<TestNetns>,
    pub host: TestNetns,
    pub outside: TestNetns,
    pub far: Option<TestNetns>,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// The uplink veth between the host (`up0`, [`UPLINK_ADDR`]) and the outside (`eth0`,
    /// [`OUTSIDE_ADDR`]), addresses and all: made when the topology is built, and again by
    /// a test that deleted it (as a driver reload or a VPN reconnect would).
    pub fn wire_uplink(&self) {
        let (h, o) = (&self.host, &self.outside);
        veth_pair((h, UPLINK), (o, "eth0"), None);
        address_up(h, &format!("{UPLINK_ADDR}/{UPLINK_PREFIX}"), UPLINK);
        address_up(o, &format!("{OUTSIDE_ADDR}/{UPLINK_PREFIX}"), "eth0");
    }

    /// The host's default route through the outside (a far server's way out, or an uplink
    /// that netfast finds by the default route).
    pub fn route_default_via_outside(&self) {
        route_default(&self.host, OUTSIDE_ADDR);
    }

    fn wire(&self, b: &TopologyBuilder) {
        let (h, o) = (&self.host, &self.outside);
        self.wire_uplink();
        h.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        if b.route_back {
            o.exec_ok(&[
                "ip",
                "route",
                "add",
                SUBNET,
                "via",
                &UPLINK_ADDR.to_string(),
            ]);
        }
        if let Some(f) = &self.far {
            veth_pair((o, "eth1"), (f, "eth0"), Some(FAR_MTU));
            address_up(o, &format!("{FAR_GATEWAY}/24"), "eth1");
            o.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            address_up(f, &format!("{FAR_ADDR}/24"), "eth0");
            route_default(f, FAR_GATEWAY);
            self.route_default_via_outside();
        }
        if !b.bridge {
            return;
        }
        h.exec_ok(&["ip", "link", "add", BRIDGE, "type", "bridge"]);
        address_up(h, &format!("{GATEWAY}/24"), BRIDGE);
        for (i, c) in self.containers.iter().enumerate() {
            let host_side = format!("vc{i}");
            veth_pair((h, &host_side), (c, "eth0"), None);
            h.exec_ok(&["ip", "link", "set", &host_side, "master", BRIDGE]);
            h.exec_ok(&["ip", "link", "set", &host_side, "up"]);
            address_up(c, &format!("{}/24", container_addr(i)), "eth0");
            route_default(c, GATEWAY);
        }
    }
}

/// A veth from `a`'s link `a.1` to `b`'s link `b.1`, made in `a`'s namespace; `mtu` is
/// `a`'s side's, when not the default.
fn veth_pair(a: (&TestNetns, &str), b: (&TestNetns, &str), mtu: Option<u32>) {
    let mtu = mtu.map(|m| m.to_string());
    let mut argv = vec!["ip", "-n", a.0.name(), "link", "add", a.1];
    if let Some(mtu) = &mtu {
        argv.extend(["mtu", mtu.as_str()]);
    }
    argv.extend(["type", "veth", "peer", "name", b.1, "netns", b.0.name()]);
    crate::run_ok(&argv);
}

/// Address `cidr` on `ns`'s link `dev`, and the link up.
fn address_up(ns: &TestNetns, cidr: &str, dev: &str) {
    ns.exec_ok(&["ip", "addr", "add", cidr, "dev", dev]);
    ns.exec_ok(&["ip", "link", "set", dev, "up"]);
}

/// `ns`'s default route via `gateway`.
fn route_default(ns: &TestNetns, gateway: Ipv4Addr) {
    ns.exec_ok(&["ip", "route", "add", "default", "via", &gateway.to_string()]);
}
