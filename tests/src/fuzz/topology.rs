//! The host the fuzzer's programs run on: a namespace of its own with two bridges (one per
//! network, each with a port so that it has a carrier), an uplink with two addresses, a
//! default route through a gateway whose MAC is known, and forwarding on — so that the
//! fast path's FIB lookups find what a real host has. The same facts, as the model reads
//! them, come with it.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    TestNetns,
    model::{self, EndpointInfo, Network, route},
    packets::{ifindex_of, mac_of},
};

pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const EXT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// The outside gateway: on the uplink's link, its MAC known (a permanent neighbour).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
/// On the uplink's link, no neighbour entry: the kernel would resolve it.
pub const ONLINK: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub const GW1: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const GW2: Ipv4Addr = Ipv4Addr::new(172, 19, 0, 1);
/// The containers' gateway MAC in endpoint entries.
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// Containers, by network (index 0: network 1, index 1: network 2).
pub const CONTAINERS: [&[Ipv4Addr]; 2] = [
    &[
        Ipv4Addr::new(172, 18, 0, 2),
        Ipv4Addr::new(172, 18, 0, 3),
        Ipv4Addr::new(172, 18, 0, 4),
    ],
    &[Ipv4Addr::new(172, 19, 0, 2), Ipv4Addr::new(172, 19, 0, 3)],
];

/// Hosts outside: servers containers talk to, and clients of published ports.
pub const REMOTES: [Ipv4Addr; 6] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 11),
    GATEWAY,
    ONLINK,
    Ipv4Addr::new(192, 0, 2, 50),
    Ipv4Addr::new(192, 0, 2, 200),
];

/// Routers that send ICMP errors about packets on their way.
pub const ROUTERS: [Ipv4Addr; 2] = [Ipv4Addr::new(203, 0, 113, 1), GATEWAY];

/// The host's devices, in its namespace.
pub struct Host {
    pub ns: TestNetns,
    pub bridges: [u32; 2],
    pub uplink: u32,
    pub uplink_mac: [u8; 6],
    /// A port of each bridge (the endpoints' veths in the fast path's map).
    pub ports: [u32; 2],
}

impl Host {
    pub fn new() -> Host {
        let ns = TestNetns::new("fz");
        for cmd in [
            "ip link add br1 type bridge",
            "ip addr add 172.18.0.1/24 dev br1",
            "ip link add br2 type bridge",
            "ip addr add 172.19.0.1/24 dev br2",
            "ip link add v1 type veth peer name v1p",
            "ip link set v1 master br1",
            "ip link add v2 type veth peer name v2p",
            "ip link set v2 master br2",
            "ip link add up0 type veth peer name upp",
            "ip addr add 198.51.100.1/24 dev up0",
            "ip addr add 198.51.100.3/24 dev up0",
        ] {
            ns.exec_ok(&cmd.split(' ').collect::<Vec<_>>());
        }
        for dev in ["br1", "br2", "v1", "v1p", "v2", "v2p", "up0", "upp"] {
            ns.exec_ok(&["ip", "link", "set", dev, "up"]);
        }
        for cmd in [
            "ip route add default via 198.51.100.2",
            "ip neigh replace 198.51.100.2 lladdr 02:00:00:00:01:02 dev up0 nud permanent",
            "sysctl -qw net.ipv4.ip_forward=1",
        ] {
            ns.exec_ok(&cmd.split(' ').collect::<Vec<_>>());
        }
        Host {
            bridges: [ifindex_of(&ns, "br1"), ifindex_of(&ns, "br2")],
            uplink: ifindex_of(&ns, "up0"),
            uplink_mac: mac_of(&ns, "up0"),
            ports: [ifindex_of(&ns, "v1"), ifindex_of(&ns, "v2")],
            ns,
        }
    }

    /// Network `i` (0 or 1): 172.18.0.0/24 (id 1) or 172.19.0.0/24 (id 2), masqueraded
    /// behind EXT unless `masquerade` is off (a routed network).
    pub fn network(&self, i: usize, masquerade: bool) -> Network {
        Network {
            id: i as u16 + 1,
            subnet: if i == 0 {
                "172.18.0.0/24".parse().expect("a subnet")
            } else {
                "172.19.0.0/24".parse().expect("a subnet")
            },
            bridge: self.bridges[i],
            uplink: self.uplink,
            masquerade,
            ext_addr: EXT,
        }
    }

    /// The endpoint entry of container `addr` of network `i`: MTU 1500, but for the last
    /// container of each network, whose veth has a smaller one (a tunnel's, say).
    pub fn endpoint(&self, i: usize, addr: Ipv4Addr) -> EndpointInfo {
        let small = CONTAINERS[i].last() == Some(&addr);
        EndpointInfo {
            ifindex: self.ports[i],
            mac: [0x02, 0, 0, 0, addr.octets()[2], addr.octets()[3]],
            gw_mac: BRIDGE_MAC,
            mtu: if small { 1280 } else { 1500 },
        }
    }

    /// The model's view of this host with these networks and endpoints.
    pub fn topology(
        &self,
        networks: &[Network],
        endpoints: &BTreeMap<Ipv4Addr, EndpointInfo>,
    ) -> model::Topology {
        let link = |subnet: &str, dev: u32, neighbours: BTreeMap<Ipv4Addr, [u8; 6]>| route::Link {
            subnet: subnet.parse().expect("a subnet"),
            dev,
            mtu: 1500,
            neighbours,
        };
        let fib = route::Fib {
            local: vec![
                EXT,
                EXT2,
                GW1,
                GW2,
                Ipv4Addr::new(198, 51, 100, 255),
                Ipv4Addr::new(172, 18, 0, 255),
                Ipv4Addr::new(172, 19, 0, 255),
            ],
            links: vec![
                link(
                    "198.51.100.0/24",
                    self.uplink,
                    BTreeMap::from([(GATEWAY, GATEWAY_MAC)]),
                ),
                link("172.18.0.0/24", self.bridges[0], BTreeMap::new()),
                link("172.19.0.0/24", self.bridges[1], BTreeMap::new()),
            ],
            gateway: Some(GATEWAY),
            macs: BTreeMap::from([(self.uplink, self.uplink_mac)]),
        };
        model::Topology {
            networks: networks.to_vec(),
            host_addrs: [EXT, EXT2, GW1, GW2].into_iter().collect(),
            endpoints: endpoints.clone(),
            uplinks: [self.uplink].into_iter().collect(),
            fib,
        }
    }
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}
