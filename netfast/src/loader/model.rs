//! What netfast manages in a host namespace: networks and containers, as the state file
//! stores them and as `apply` files declare them.
//!
//! New fields get `#[serde(default)]` so that older state and apply files keep loading.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use netfast_common::config::DpConfig;
use serde::{Deserialize, Serialize};

use super::validate::Invalid;

/// A network as the user asks for it (`network create`, an `[[network]]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Net,
    /// The bridge's address and the containers' default route; the first host address when
    /// not given (or the bridge's address in the subnet, for an adopted bridge).
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The bridge's name; `nf-<name>` (cut to 15 bytes) when not given.
    #[serde(default)]
    pub bridge: Option<String>,
    /// The interface towards the outside.
    pub uplink: String,
    /// Take over an existing bridge (and the veths on it) instead of creating one.
    #[serde(default)]
    pub adopt: bool,
    /// Masquerade traffic leaving through the uplink (on unless turned off).
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// What translates and filters the network's traffic.
    #[serde(default)]
    pub backend: BackendChoice,
}

fn yes() -> bool {
    true
}

/// The dataplane that serves a network.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// netfast's TC programs: translation, conntrack and the fast path in eBPF.
    #[default]
    Ebpf,
    /// An nftables table `netfast` (for hosts where eBPF cannot be used).
    Nftables,
    /// iptables chains named NETFAST-… (for hosts without nftables).
    Iptables,
}

impl Backend {
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Nftables => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The backend a user asks for: one of them, or `auto` (eBPF where it works, else nftables,
/// else iptables).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Ebpf,
    Nftables,
    Iptables,
}

impl BackendChoice {
    /// The backend asked for by name; `None` for auto.
    pub const fn named(self) -> Option<Backend> {
        match self {
            BackendChoice::Auto => None,
            BackendChoice::Ebpf => Some(Backend::Ebpf),
            BackendChoice::Nftables => Some(Backend::Nftables),
            BackendChoice::Iptables => Some(Backend::Iptables),
        }
    }

    /// Whether a network served by `b` satisfies this choice.
    pub fn accepts(self, b: Backend) -> bool {
        self.named().is_none_or(|n| n == b)
    }
}

/// A container as the user asks for it (`container create`, a `[[container]]` table).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub name: String,
    pub network: String,
    /// The next free address of the subnet when not given.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// A network netfast manages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    /// Index of its counters in the dataplane (1..MAX_NETWORKS).
    pub id: u16,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub uplink: String,
    /// The bridge existed before netfast: it is never created or deleted by netfast.
    #[serde(default)]
    pub adopted: bool,
    /// Veths that were on an adopted bridge when netfast took it over (left alone).
    #[serde(default)]
    pub adopted_ports: Vec<String>,
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// What serves it: the eBPF dataplane, or netfast's own nftables table or iptables chains.
    #[serde(default)]
    pub backend: Backend,
    /// The bridge's own `route_localnet` (false for a bridge netfast creates): the fallback
    /// backends turn it on, and put it back when they no longer serve the bridge.
    #[serde(default)]
    pub route_localnet: bool,
    /// Adopted ports whose hairpin mode netfast turned on (for a fallback backend's hairpin
    /// NAT), to turn off again when it lets go of the bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hairpin_set: Vec<String>,
}

impl Network {
    /// The spec this network satisfies, for comparing with a declared one.
    pub fn satisfies(&self, spec: &NetworkSpec) -> bool {
        self.name == spec.name
            && self.subnet == spec.subnet
            && spec.gateway.is_none_or(|g| g == self.gateway)
            && spec.bridge.as_ref().is_none_or(|b| *b == self.bridge)
            && self.uplink == spec.uplink
            && self.adopted == spec.adopt
            && self.masquerade == spec.masquerade
            && spec.backend.accepts(self.backend)
    }
}

/// A container netfast created: a named network namespace and a veth pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Also the name of its network namespace (`ip netns`).
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    /// The host side of its veth pair (on the bridge); `eth0` inside.
    pub veth: String,
    /// The netns cookie of the namespace netfast made for it (`SO_NETNS_COOKIE`, never given
    /// to another namespace): a namespace of its name with another cookie was made by
    /// someone else, after this one was deleted, and is never netfast's to delete. `None`:
    /// Docker's namespace, or a state written before netfast recorded it (the next command
    /// that changes anything records it, if the namespace carries the container's mark).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_cookie: Option<u64>,
}

impl Container {
    pub fn satisfies(&self, spec: &ContainerSpec) -> bool {
        self.name == spec.name
            && self.network == spec.network
            && spec.ip.is_none_or(|ip| ip == self.ip)
    }
}

/// The version of the state file's format (its `format` key; none: 1): bumped when an older
/// netfast would misread it. A file of a newer format than this netfast's is refused.
pub const STATE_FORMAT: u64 = 1;

/// Everything netfast manages in one host namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    #[serde(default)]
    pub networks: Vec<Network>,
    #[serde(default)]
    pub containers: Vec<Container>,
    #[serde(default)]
    pub publications: Vec<super::publish::Publication>,
    /// Docker's IDs for the networks and containers it made through `netfast docker-plugin`.
    #[serde(
        default,
        skip_serializing_if = "super::docker::DockerObjects::is_empty"
    )]
    pub docker: super::docker::DockerObjects,
}

/// `found`, the `kind` named `name`, or the error that it does not exist.
fn known<'a, T>(found: Option<&'a T>, kind: &str, name: &str) -> Result<&'a T, Invalid> {
    found.ok_or_else(|| {
        Invalid(format!(
            "no {kind} named `{name}` (see `netfast {kind} ls`)"
        ))
    })
}

impl State {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The container (the command line's, or a Docker endpoint's) at address `ip`: networks
    /// never overlap, so there is at most one.
    pub fn container_at(&self, ip: Ipv4Addr) -> Option<&Container> {
        self.containers.iter().find(|c| c.ip == ip)
    }

    /// The fast path's `entries` for addresses no container holds, by address.
    pub fn stray_endpoints<E>(&self, entries: Vec<(Ipv4Addr, E)>) -> Vec<(Ipv4Addr, E)> {
        let mut stray: Vec<_> = entries
            .into_iter()
            .filter(|(addr, _)| self.container_at(*addr).is_none())
            .collect();
        stray.sort_by_key(|(addr, _)| *addr);
        stray
    }

    /// Network `name`, or an error that says where to look.
    pub fn known_network(&self, name: &str) -> Result<&Network, Invalid> {
        known(self.network(name), "network", name)
    }

    /// Container `name`, or an error that says where to look.
    pub fn known_container(&self, name: &str) -> Result<&Container, Invalid> {
        known(self.container(name), "container", name)
    }

    /// Network `network`'s publication of `spec` (canonical, as the state keeps it).
    pub fn publication(&self, network: &str, spec: &str) -> Option<&super::publish::Publication> {
        self.publications
            .iter()
            .find(|p| p.network == network && p.spec == spec)
    }

    pub fn containers_of<'a>(
        &'a self,
        network: &'a str,
    ) -> impl Iterator<Item = &'a Container> + 'a {
        self.containers.iter().filter(move |c| c.network == network)
    }
}

/// The default bridge name of a network: `nf-<name>`, cut to the 15 bytes Linux allows.
pub fn default_bridge(network: &str) -> String {
    let mut name = format!("nf-{network}");
    while name.len() > 15 {
        name.pop();
    }
    name
}

/// The host-side veth name of a container: `nfv` and a hash of its name (stable, 11 bytes).
pub fn veth_name(container: &str) -> String {
    // FNV-1a: small, stable across versions and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in container.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("nfv{h:08x}")
}

/// How inbound packets to a masquerade mapping are filtered (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Only the endpoint the container contacted may answer (like iptables MASQUERADE).
    #[default]
    AddressAndPortDependent,
    /// Anyone may reach a mapped port while the mapping lives ("full cone").
    EndpointIndependent,
}

/// Idle timeouts in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub tcp_close: u32,
    pub udp: u32,
    pub icmp: u32,
}

impl Timeouts {
    /// The timeouts the dataplane's settings hold.
    pub fn of(c: &DpConfig) -> Timeouts {
        Timeouts {
            tcp_established: c.tcp_established,
            tcp_transitory: c.tcp_transitory,
            tcp_close: c.tcp_close,
            udp: c.udp,
            icmp: c.icmp,
        }
    }

    /// `c` with these timeouts.
    pub fn write_to(&self, c: DpConfig) -> DpConfig {
        DpConfig {
            tcp_established: self.tcp_established,
            tcp_transitory: self.tcp_transitory,
            tcp_close: self.tcp_close,
            udp: self.udp,
            icmp: self.icmp,
            ..c
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::of(&DpConfig::default())
    }
}

/// Host-wide dataplane settings (`netfast config`, an apply file's `[dataplane]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Flows the conntrack table holds; fixed while the dataplane exists.
    pub ct_max: u32,
    pub filtering: Filtering,
    /// Ports masquerade picks from when a container's own port is taken: `MIN-MAX`.
    pub port_range: String,
    pub timeouts: Timeouts,
    /// Forward translated flows past the host's routing and netfilter.
    pub fast_path: Switch,
}

/// On or off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[default]
    On,
    Off,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        let d = DpConfig::default();
        DataplaneConfig {
            ct_max: netfast_common::maps::DEFAULT_CT_MAX_FLOWS,
            filtering: Filtering::default(),
            port_range: format!("{}-{}", d.port_min, d.port_max),
            timeouts: Timeouts::default(),
            fast_path: Switch::On,
        }
    }
}

/// Networks and states for the loader's unit tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{Container, Network, State};

    /// Network `name` on `subnet` with gateway `gateway`: bridge nf-NAME, uplink eth0,
    /// masqueraded, id 1, on the default backend.
    pub fn network(name: &str, subnet: &str, gateway: &str) -> Network {
        Network {
            name: name.into(),
            id: 1,
            subnet: subnet.parse().unwrap(),
            gateway: gateway.parse().unwrap(),
            bridge: format!("nf-{name}"),
            uplink: "eth0".into(),
            adopted: false,
            adopted_ports: vec![],
            masquerade: true,
            backend: Default::default(),
            route_localnet: false,
            hairpin_set: Vec::new(),
        }
    }

    /// Network web (172.18.0.0/24) with container ct1 at 172.18.0.2.
    pub fn web_with_ct1() -> State {
        State {
            networks: vec![network("web", "172.18.0.0/24", "172.18.0.1")],
            containers: vec![Container {
                name: "ct1".into(),
                network: "web".into(),
                ip: "172.18.0.2".parse().unwrap(),
                veth: "nfv0".into(),
                netns_cookie: None,
            }],
            ..State::default()
        }
    }
}
