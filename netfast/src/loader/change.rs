//! What a loader command changed, as values: the CLI prints each as the sentence its
//! [`Display`](fmt::Display) gives, or all of them as JSON (`--json`).

use std::{fmt, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{
    model::{Backend, DataplaneConfig},
    plan::Action,
    publish::{Proto, Publication},
};

/// A network's masquerade: its subnet, and the uplink address it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Masquerade {
    pub subnet: Ipv4Net,
    pub address: Ipv4Addr,
}

/// Why the dataplane was removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataplaneGone {
    /// The last network it served was removed.
    LastNetwork,
    /// An interrupted command had made it for a network that is not there.
    NoNetwork,
    /// `down`.
    Down,
}

/// One change a command made (or, for `apply`, a step it ran), in the order it made them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// `--backend auto` took another backend than eBPF, and why.
    BackendChosen {
        backend: Backend,
        why: String,
    },
    BridgeCreated {
        bridge: String,
        gateway: Ipv4Addr,
        prefix: u8,
    },
    BridgeAdopted {
        bridge: String,
        gateway: Ipv4Addr,
    },
    IpForwardEnabled,
    /// Forwarding turned off again: an interrupted `network create` had turned it on.
    IpForwardRestored,
    /// The network's traffic is served: the programs attached, or a fallback's rules.
    NetworkServed {
        network: String,
        backend: Backend,
        bridge: String,
        uplink: String,
        masquerade: Option<Masquerade>,
    },
    HairpinOn {
        ports: Vec<String>,
    },
    HairpinOff {
        port: String,
    },
    BridgeLeft {
        bridge: String,
    },
    BridgeDeleted {
        bridge: String,
    },
    NetworkRemoved {
        network: String,
    },
    NetworkFlowsEnded {
        network: String,
        flows: usize,
    },
    DataplaneRemoved {
        why: DataplaneGone,
    },
    ContainerCreated {
        container: String,
        network: String,
        ip: Ipv4Addr,
        prefix: u8,
        veth: String,
        gateway: Ipv4Addr,
        mtu: u32,
    },
    ContainerRemoved {
        container: String,
        ip: Ipv4Addr,
    },
    ContainerFlowsEnded {
        container: String,
        flows: usize,
    },
    /// A socket of the host listens on a port just published: outside clients reach the
    /// container instead.
    HostPortShadowed {
        port: u16,
        proto: Proto,
        owners: Vec<String>,
    },
    /// Dataplane entries a killed `publish` left, removed.
    StalePublishPruned {
        entries: usize,
    },
    Published {
        publication: Publication,
    },
    /// Flows the kernel tracked to a newly published port that lead elsewhere, ended.
    StaleFlowsEnded {
        flows: usize,
        host_ports: String,
        proto: Proto,
        container: String,
    },
    PublicationFlowsEnded {
        flows: usize,
    },
    /// TCP connections through an unpublished port, ended at the container's socket.
    ConnectionsEnded {
        connections: usize,
        container: String,
    },
    Unpublished {
        network: String,
        spec: String,
    },
    /// A step of `apply`.
    Step {
        action: Action,
    },
    /// `apply` found the host as the file says.
    NoChanges,
    Settings {
        settings: DataplaneConfig,
    },
    /// Networks on a fallback backend take only some of the settings.
    FallbackSettings {
        networks: Vec<String>,
    },
    /// `down` found a command's intent record and removes what it was about too.
    InterruptedRemoved {
        command: String,
    },
    /// A command's intent record, completed or undone before the command runs.
    InterruptedCompleted {
        command: String,
    },
    SettingsRestored,
    FallbackRulesRemoved,
    CrashRulesRemoved,
    FallbackFlowsEnded {
        flows: usize,
    },
    /// A namespace and link marked as netfast's for this host that no state knows of.
    UnknownNamespaceRemoved {
        namespace: String,
    },
    UnknownLinkRemoved {
        link: String,
        mark: String,
    },
    /// A fast-path entry (`NETFAST_ENDPOINTS`) for an address that no container of the state
    /// holds, into interface `ifindex`.
    UnknownEndpointRemoved {
        addr: Ipv4Addr,
        ifindex: u32,
    },
    NothingToRemove,
    DockerNetworkServed {
        network: String,
        docker_network: String,
    },
    DockerNetworkExists {
        network: String,
        docker_network: String,
    },
    DockerNetworkUnknown {
        docker_network: String,
    },
    DockerEndpointExists {
        container: String,
    },
    DockerEndpointLost {
        container: String,
        veth: String,
    },
    DockerEndpointReleased {
        container: String,
        ip: Ipv4Addr,
    },
    DockerEndpointCreated {
        container: String,
        network: String,
        ip: Ipv4Addr,
        prefix: u8,
        veth: String,
        peer: String,
        mac: String,
    },
    DockerEndpointJoined {
        container: String,
        sandbox: String,
        peer: String,
        gateway: Ipv4Addr,
    },
    StaleVethDeleted {
        veth: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::BackendChosen { backend, why } => {
                write!(f, "--backend auto: {why}; it takes {backend}")
            }
            Change::BridgeCreated {
                bridge,
                gateway,
                prefix,
            } => write!(f, "created bridge {bridge} with {gateway}/{prefix}"),
            Change::BridgeAdopted { bridge, gateway } => {
                write!(f, "adopted bridge {bridge} (gateway {gateway})")
            }
            Change::IpForwardEnabled => {
                f.write_str("enabled net.ipv4.ip_forward in this namespace (it was off)")
            }
            Change::IpForwardRestored => f.write_str(
                "disabled net.ipv4.ip_forward in this namespace again (it was off when the \
                 interrupted network create began, and no network needs it)",
            ),
            Change::NetworkServed {
                backend,
                bridge,
                uplink,
                masquerade,
                ..
            } => {
                match backend {
                    Backend::Ebpf => write!(f, "attached the dataplane to {bridge} and {uplink}")?,
                    Backend::Nftables => f.write_str("nftables table `ip netfast` serves it")?,
                    Backend::Iptables => f.write_str("iptables chains NETFAST-… serve it")?,
                }
                match masquerade {
                    Some(m) => write!(f, ", masquerading {} as {}", m.subnet, m.address),
                    None => Ok(()),
                }
            }
            Change::HairpinOn { ports } => write!(
                f,
                "turned hairpin mode on for adopted port(s) {}",
                ports.join(", ")
            ),
            Change::HairpinOff { port } => write!(f, "turned hairpin mode off again for {port}"),
            Change::BridgeLeft { bridge } => write!(f, "left adopted bridge {bridge} in place"),
            Change::BridgeDeleted { bridge } => write!(f, "deleted bridge {bridge}"),
            Change::NetworkRemoved { network } => write!(f, "removed network {network}"),
            Change::NetworkFlowsEnded { network, flows } => {
                write!(f, "ended {flows} flows of network {network}")
            }
            Change::DataplaneRemoved { why } => f.write_str(match why {
                DataplaneGone::LastNetwork => "removed the dataplane (no network on it left)",
                DataplaneGone::NoNetwork => "removed the dataplane (no network on it)",
                DataplaneGone::Down => "removed the dataplane",
            }),
            Change::ContainerCreated {
                container,
                network,
                ip,
                prefix,
                veth,
                gateway,
                mtu,
            } => write!(
                f,
                "created container {container} on {network} at {ip}/{prefix} (veth {veth}, \
                 gateway {gateway}, mtu {mtu})"
            ),
            Change::ContainerRemoved { container, ip } => {
                write!(f, "removed container {container} ({ip})")
            }
            Change::ContainerFlowsEnded { container, flows } => {
                write!(f, "ended {flows} flows of container {container}")
            }
            Change::HostPortShadowed {
                port,
                proto,
                owners,
            } => {
                let who = if owners.is_empty() {
                    "a socket".to_owned()
                } else {
                    owners.join(", ")
                };
                write!(
                    f,
                    "warning: {who} listens on host port {port}/{proto}; connections arriving \
                     from outside will go to the container instead"
                )
            }
            Change::StalePublishPruned { entries } => write!(
                f,
                "removed {entries} dataplane entries of a publish that did not finish"
            ),
            Change::Published { publication: p } => {
                write!(
                    f,
                    "published {}{}/{} to {} ({}:{})",
                    p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default(),
                    p.host_ports,
                    p.proto,
                    p.container,
                    p.container_ip,
                    p.container_ports,
                )?;
                if !p.allow.is_empty() {
                    let allow: Vec<String> = p
                        .allow
                        .iter()
                        .map(std::string::ToString::to_string)
                        .collect();
                    write!(f, ", only for {}", allow.join(", "))?;
                }
                Ok(())
            }
            Change::StaleFlowsEnded {
                flows,
                host_ports,
                proto,
                container,
            } => write!(
                f,
                "ended {flows} earlier flows to host port {host_ports}/{proto} that did not lead \
                 to {container}"
            ),
            Change::PublicationFlowsEnded { flows } => write!(f, "ended {flows} flows through it"),
            Change::ConnectionsEnded {
                connections,
                container,
            } => write!(
                f,
                "ended {connections} TCP connections through it at {container}'s sockets (its \
                 clients were sent a RST)"
            ),
            Change::Unpublished { network, spec } => write!(f, "unpublished {spec} on {network}"),
            Change::Step { action } => write!(f, "{action}"),
            Change::NoChanges => f.write_str("no changes"),
            Change::Settings { settings } => write!(
                f,
                "dataplane settings: {}",
                serde_json::to_string(settings).unwrap_or_default()
            ),
            Change::FallbackSettings { networks } => write!(
                f,
                "note: network(s) {} on the nftables/iptables backends take the timeouts \
                 (nftables: TCP and UDP; the kernel's ICMP timeout stays); the other settings \
                 are the eBPF dataplane's: their flows are the kernel conntrack's (its size is \
                 net.netfilter.nf_conntrack_max, its port range and filtering MASQUERADE's)",
                networks.join(", ")
            ),
            Change::InterruptedRemoved { command } => write!(
                f,
                "an interrupted `netfast {command}` left changes: removing them too"
            ),
            Change::InterruptedCompleted { command } => write!(
                f,
                "an interrupted `netfast {command}` left changes; completing them:"
            ),
            Change::SettingsRestored => f.write_str("put the saved dataplane settings back"),
            Change::FallbackRulesRemoved => {
                f.write_str("removed netfast's nftables table / iptables chains")
            }
            Change::CrashRulesRemoved => {
                f.write_str("removed netfast's nftables table / iptables chains left by a crash")
            }
            Change::FallbackFlowsEnded { flows } => write!(
                f,
                "ended {flows} flows of its networks in the kernel's conntrack table"
            ),
            Change::UnknownNamespaceRemoved { namespace } => write!(
                f,
                "removed namespace {namespace}, netfast's but unknown to the state"
            ),
            Change::UnknownLinkRemoved { link, mark } => write!(
                f,
                "removed link {link}, netfast's ({mark}) but unknown to the state"
            ),
            Change::UnknownEndpointRemoved { addr, ifindex } => write!(
                f,
                "removed fast-path endpoint {addr} (interface #{ifindex}), which no container of \
                 the state holds"
            ),
            Change::NothingToRemove => f.write_str("nothing to remove"),
            Change::DockerNetworkServed {
                network,
                docker_network,
            } => write!(
                f,
                "network {network} serves Docker network {docker_network}"
            ),
            Change::DockerNetworkExists {
                network,
                docker_network,
            } => write!(
                f,
                "network {network} already serves Docker network {docker_network}"
            ),
            Change::DockerNetworkUnknown { docker_network } => write!(
                f,
                "Docker network {docker_network} has no netfast network: nothing to remove"
            ),
            Change::DockerEndpointExists { container } => write!(f, "endpoint {container} exists"),
            Change::DockerEndpointLost { container, veth } => write!(
                f,
                "container {container} lost its veth {veth} (its namespace ended without Docker \
                 deleting the endpoint): removing it"
            ),
            Change::DockerEndpointReleased { container, ip } => write!(
                f,
                "Docker gave {ip} to a new endpoint: container {container}, which held it, is an \
                 endpoint Docker deleted without netfast removing it (a DeleteEndpoint that \
                 failed): removing it"
            ),
            Change::DockerEndpointCreated {
                container,
                network,
                ip,
                prefix,
                veth,
                peer,
                mac,
            } => write!(
                f,
                "created container {container} on {network} at {ip}/{prefix} (veth {veth}, \
                 {peer} for Docker, mac {mac})"
            ),
            Change::DockerEndpointJoined {
                container,
                sandbox,
                peer,
                gateway,
            } => write!(
                f,
                "{container} joined {sandbox}: {peer} goes in as eth…, gateway {gateway}"
            ),
            Change::StaleVethDeleted { veth } => {
                write!(f, "deleted {veth}, left by an earlier attempt")
            }
        }
    }
}

/// The sentences of `changes`, a line each.
pub fn lines(changes: &[Change]) -> Vec<String> {
    changes.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_before_and_round_trip_as_json() {
        let changes = vec![
            Change::BridgeCreated {
                bridge: "nf-web".into(),
                gateway: Ipv4Addr::new(172, 18, 0, 1),
                prefix: 24,
            },
            Change::NetworkServed {
                network: "web".into(),
                backend: Backend::Nftables,
                bridge: "nf-web".into(),
                uplink: "up0".into(),
                masquerade: Some(Masquerade {
                    subnet: "172.18.0.0/24".parse().unwrap(),
                    address: Ipv4Addr::new(198, 51, 100, 1),
                }),
            },
            Change::DataplaneRemoved {
                why: DataplaneGone::LastNetwork,
            },
            Change::Step {
                action: Action::RemoveContainer("c1".into()),
            },
            Change::UnknownEndpointRemoved {
                addr: Ipv4Addr::new(172, 18, 0, 77),
                ifindex: 12,
            },
        ];
        assert_eq!(
            lines(&changes),
            [
                "created bridge nf-web with 172.18.0.1/24",
                "nftables table `ip netfast` serves it, masquerading 172.18.0.0/24 as 198.51.100.1",
                "removed the dataplane (no network on it left)",
                "- container c1",
                "removed fast-path endpoint 172.18.0.77 (interface #12), which no container of \
                 the state holds",
            ]
        );
        let json = serde_json::to_string(&changes).unwrap();
        assert!(json.contains(r#""change":"bridge_created""#), "{json}");
        let back: Vec<Change> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, changes);
    }
}
