//! What a fallback backend must hold for the networks it serves, computed from the state:
//! the input of the renderers ([`super::render_nft`], [`super::render_ipt`]), and the names
//! of the counters they keep. Pure: no kernel needed.
//!
//! The rules give the eBPF dataplane's behaviour (and Docker's): masquerade of a subnet out of
//! its uplink; published ports for every local address (outside clients, the host's own
//! clients including 127.0.0.1, containers through hairpin); allow-lists; no direct access
//! to masqueraded containers from outside; no traffic between netfast networks; no container
//! traffic to the host's 127.0.0.0/8 (which `route_localnet` would let in); netfast's timeouts.

use std::{collections::BTreeMap, net::Ipv4Addr};

use ipnet::Ipv4Net;

use crate::loader::{
    model::{Backend, State, Timeouts},
    publish::{Ports, Proto},
};

/// The drop counters a fallback backend keeps, under the names `netfast stats` gives the eBPF
/// dataplane's drop reasons.
pub const DROP_REASONS: [&str; 5] = [
    "inter_network",
    "direct_access",
    "not_allowed",
    "to_host_loopback",
    "loopback_from_network",
];

/// A bridge network the backend serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Net {
    /// The network's id, which names its counters ([`net_counter`]).
    pub id: u16,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub uplink: String,
    pub masquerade: bool,
}

/// One destination NAT rule: traffic for a local address (`host_ip`, or any) and `host_ports`
/// goes to `ip`, at `ports` (`None`: the same port it came to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnat {
    pub host_ip: Option<Ipv4Addr>,
    pub proto: Proto,
    pub host_ports: Ports,
    pub ip: Ipv4Addr,
    pub ports: Option<Ports>,
}

/// Clients outside `allow` may not open flows through `host_ports` to `ip`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    pub proto: Proto,
    pub host_ports: Ports,
    pub ip: Ipv4Addr,
    pub allow: Vec<Ipv4Net>,
}

/// Everything one fallback backend must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub nets: Vec<Net>,
    /// Bridge pairs (from, to) whose traffic is dropped: every pair of netfast networks where
    /// at least one side is served by this backend.
    pub isolate: Vec<(String, String)>,
    /// Every netfast bridge (whichever backend serves it): a packet from one to 127.0.0.0/8
    /// is a container's (`to_host_loopback`), from anywhere else but `lo` the network's
    /// (`loopback_from_network`).
    pub all_bridges: Vec<String>,
    pub dnat: Vec<Dnat>,
    pub allow: Vec<Allow>,
    /// The idle timeouts of the networks' flows (`netfast config`), in place of the kernel's
    /// defaults (a UDP flow's 30 s is below RFC 4787's 2 min floor).
    pub timeouts: Timeouts,
}

impl Rules {
    /// What `backend` must hold for `state`; empty when it serves no network.
    pub fn of(state: &State, backend: Backend) -> Rules {
        let mine = |name: &str| state.network(name).is_some_and(|n| n.backend == backend);
        let nets: Vec<Net> = state
            .networks
            .iter()
            .filter(|n| n.backend == backend)
            .map(|n| Net {
                id: n.id,
                bridge: n.bridge.clone(),
                subnet: n.subnet,
                uplink: n.uplink.clone(),
                masquerade: n.masquerade,
            })
            .collect();
        let mut isolate = Vec::new();
        for a in &state.networks {
            for b in &state.networks {
                if a.name != b.name && (mine(&a.name) || mine(&b.name)) {
                    isolate.push((a.bridge.clone(), b.bridge.clone()));
                }
            }
        }
        let mut dnat = Vec::new();
        let mut allow = Vec::new();
        for p in state.publications.iter().filter(|p| mine(&p.network)) {
            if p.host_ports == p.container_ports {
                dnat.push(Dnat {
                    host_ip: p.host_ip,
                    proto: p.proto,
                    host_ports: p.host_ports,
                    ip: p.container_ip,
                    ports: None,
                });
            } else {
                // A shifted range: a rule per port (a range holds at most 4096).
                for (h, c) in p.host_ports.iter().zip(p.container_ports.iter()) {
                    dnat.push(Dnat {
                        host_ip: p.host_ip,
                        proto: p.proto,
                        host_ports: Ports { first: h, last: h },
                        ip: p.container_ip,
                        ports: Some(Ports { first: c, last: c }),
                    });
                }
            }
            if !p.allow.is_empty() {
                allow.push(Allow {
                    proto: p.proto,
                    host_ports: p.host_ports,
                    ip: p.container_ip,
                    allow: p.allow.clone(),
                });
            }
        }
        let all_bridges = if nets.is_empty() {
            Vec::new()
        } else {
            state.networks.iter().map(|n| n.bridge.clone()).collect()
        };
        Rules {
            nets,
            isolate,
            all_bridges,
            dnat,
            allow,
            timeouts: state.dataplane.timeouts,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Every interface name the rules hold is one netfast may write into a rule.
    pub fn check(&self) -> Result<(), crate::loader::validate::Invalid> {
        use crate::loader::validate::interface_name;
        for n in &self.nets {
            interface_name("bridge", &n.bridge)?;
            interface_name("uplink", &n.uplink)?;
        }
        for (a, b) in &self.isolate {
            interface_name("bridge", a)?;
            interface_name("bridge", b)?;
        }
        for b in &self.all_bridges {
            interface_name("bridge", b)?;
        }
        Ok(())
    }

    /// The bridges whose `route_localnet` must be on: the host's clients of 127.0.0.1 reach
    /// published ports through them (then masqueraded to the gateway's address).
    pub fn bridges(&self) -> impl Iterator<Item = &str> {
        self.nets.iter().map(|n| n.bridge.as_str())
    }
}

/// Packets and bytes of a counter: a drop reason's, or a network's ([`net_counter`]).
pub type Counts = BTreeMap<String, (u64, u64)>;

/// Which way a network's forwarded packets go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Out of the bridge: leaving the containers.
    Tx,
    /// Into the bridge: to the containers (replies, published ports, hairpin).
    Rx,
}

/// The name of the counter of network `id`'s packets going `way`: `tx_1`, `rx_1`.
pub fn net_counter(way: Way, id: u16) -> String {
    match way {
        Way::Tx => format!("tx_{id}"),
        Way::Rx => format!("rx_{id}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loader::{
        model::{Backend, Network},
        publish::Publication,
    };

    /// Network `web` (172.18.0.0/24) on nftables with two publications (one with an allow
    /// list), and network `db` (172.19.0.0/24) on the eBPF dataplane.
    pub(crate) fn state() -> State {
        let net = |name: &str, id: u16, subnet: &str, backend| Network {
            name: name.into(),
            id,
            subnet: subnet.parse().unwrap(),
            gateway: subnet.parse::<Ipv4Net>().unwrap().hosts().next().unwrap(),
            bridge: format!("nf-{name}"),
            uplink: "eth0".into(),
            adopted: false,
            adopted_ports: vec![],
            masquerade: true,
            backend,
            route_localnet: false,
            hairpin_set: Vec::new(),
        };
        State {
            networks: vec![
                net("web", 1, "172.18.0.0/24", Backend::Nftables),
                net("db", 2, "172.19.0.0/24", Backend::Ebpf),
            ],
            publications: vec![
                Publication {
                    network: "web".into(),
                    spec: "8080:c0:80/tcp".into(),
                    host_ip: None,
                    host_ports: Ports {
                        first: 8080,
                        last: 8080,
                    },
                    container: "c0".into(),
                    container_ip: "172.18.0.2".parse().unwrap(),
                    container_ports: Ports {
                        first: 80,
                        last: 80,
                    },
                    proto: Proto::Tcp,
                    allow: vec!["192.0.2.0/24".parse().unwrap()],
                    rule: 0,
                },
                Publication {
                    network: "web".into(),
                    spec: "198.51.100.1:5000-5001:c1:5000-5001/udp".into(),
                    host_ip: Some("198.51.100.1".parse().unwrap()),
                    host_ports: Ports {
                        first: 5000,
                        last: 5001,
                    },
                    container: "c1".into(),
                    container_ip: "172.18.0.3".parse().unwrap(),
                    container_ports: Ports {
                        first: 5000,
                        last: 5001,
                    },
                    proto: Proto::Udp,
                    allow: vec![],
                    rule: 0,
                },
            ],
            ..State::default()
        }
    }

    #[test]
    fn rules_cover_only_the_backends_networks_and_isolate_both_ways() {
        let r = Rules::of(&state(), Backend::Nftables);
        assert_eq!(r.nets.len(), 1);
        assert_eq!(
            r.isolate,
            vec![
                ("nf-web".into(), "nf-db".into()),
                ("nf-db".into(), "nf-web".into())
            ]
        );
        assert_eq!(r.dnat.len(), 2);
        assert_eq!(r.allow.len(), 1);
        assert!(Rules::of(&state(), Backend::Iptables).is_empty());
        // The eBPF dataplane's own networks are none of a fallback's business, except for
        // isolation from them.
        let e = Rules::of(&state(), Backend::Ebpf);
        assert_eq!(e.nets[0].bridge, "nf-db");
    }
}
