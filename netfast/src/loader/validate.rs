//! Checks on what users ask for, before anything changes. Each error names the problem and
//! how to fix it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{ContainerSpec, NetworkSpec, State};

/// A request that cannot be carried out as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid<T>(msg: impl Into<String>) -> Result<T, Invalid> {
    Err(Invalid(msg.into()))
}

/// What the kernel takes as an interface name: 1 to 15 bytes, no '/', ':' or whitespace; not
/// "." or "..". Enough for names netfast only looks up (the ports of an adopted bridge).
pub fn kernel_interface_name(what: &str, name: &str) -> Result<(), Invalid> {
    if name.is_empty() || name.len() > 15 {
        return invalid(format!(
            "{what} {name:?} is {} bytes; Linux interface names have 1 to 15",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return invalid(format!(
            "{what} {name:?} is not a valid interface name (no '/', ':', spaces or control characters)"
        ));
    }
    Ok(())
}

/// An interface name netfast may put in a rule: valid for the kernel, and inert in both rule
/// languages — letters, digits, '_', '.' and '-', not starting with '-' (an option to
/// iptables). Anything else is refused, never quoted: `"` or `;` would be nftables syntax,
/// and '+' and '*' are wildcards to iptables and nftables (`eth+` matches every `eth…`).
pub fn interface_name(what: &str, name: &str) -> Result<(), Invalid> {
    kernel_interface_name(what, name)?;
    let inert = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !inert || name.starts_with('-') {
        return invalid(format!(
            "{what} {name:?} is not a valid interface name for netfast: use letters, digits, \
             '_', '.' and '-' (not first); other characters are syntax or wildcards ('+', '*') \
             to nftables and iptables. Rename the interface (`ip link set OLD name NEW`) or pick \
             another"
        ));
    }
    Ok(())
}

/// Every name in a state read back from disk, checked again before it is used in a rule or a
/// path: a state file edited by hand (or by an older netfast that let more through) must not
/// smuggle syntax into nft or iptables, nor `../` into /run/netns.
pub fn state(state: &State) -> Result<(), Invalid> {
    for n in &state.networks {
        object_name("network", &n.name)?;
        interface_name("bridge", &n.bridge)?;
        interface_name("uplink", &n.uplink)?;
        for port in n.adopted_ports.iter().chain(&n.hairpin_set) {
            kernel_interface_name("adopted port", port)?;
        }
    }
    for c in &state.containers {
        object_name("container", &c.name)?;
        object_name("network", &c.network)?;
        interface_name("veth", &c.veth)?;
    }
    for p in &state.publications {
        object_name("network", &p.network)?;
    }
    for n in &state.docker.networks {
        super::docker::check_id("network", &n.id)?;
        object_name("network", &n.network)?;
    }
    for e in &state.docker.endpoints {
        super::docker::check_id("endpoint", &e.id)?;
        super::docker::check_id("network", &e.network_id)?;
        object_name("container", &e.container)?;
        interface_name("veth", &e.peer)?;
    }
    Ok(())
}

/// Network and container names: letters, digits, '-', '_', '.'; 1 to 64 bytes. A container's
/// name is also its network namespace's file name under /run/netns.
pub fn object_name(what: &str, name: &str) -> Result<(), Invalid> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        invalid(format!(
            "{what} name `{name}` is not valid: use 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Parses `a.b.c.d/n`, which must name a network (host bits zero) with room for hosts.
pub fn subnet(text: &str) -> Result<Ipv4Net, Invalid> {
    let net: Ipv4Net = text
        .parse()
        .map_err(|_| Invalid(format!("`{text}` is not an IPv4 CIDR like 172.18.0.0/24")))?;
    check_subnet(&net)?;
    Ok(net)
}

pub fn check_subnet(net: &Ipv4Net) -> Result<(), Invalid> {
    if net.addr() != net.network() {
        return invalid(format!(
            "{net} has host bits set; the network is {}/{}",
            net.network(),
            net.prefix_len()
        ));
    }
    if net.prefix_len() > 30 {
        return invalid(format!(
            "{net} leaves no room for a gateway and containers; use a prefix of /30 or shorter"
        ));
    }
    Ok(())
}

/// Ranges a container subnet must not touch: their packets are never a network's to route.
const SPECIAL: [(&str, &str); 5] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    (
        "240.0.0.0/4",
        "reserved (240.0.0.0/4, with the broadcast address)",
    ),
];

/// A subnet outside the ranges that are the host's own or nobody's.
pub fn not_special(net: &Ipv4Net) -> Result<(), Invalid> {
    for (range, what) in SPECIAL {
        let range: Ipv4Net = range.parse().expect("a valid CIDR");
        if range.contains(&net.network()) || net.contains(&range.network()) {
            return invalid(format!(
                "subnet {net} overlaps {what}: the host would give its containers traffic that is \
                 not theirs; pick a private range such as 172.18.0.0/16, 10.88.0.0/16 or \
                 192.168.100.0/24"
            ));
        }
    }
    Ok(())
}

/// An address usable by a host of `net` (not its network or broadcast address).
pub fn host_address(what: &str, ip: Ipv4Addr, net: &Ipv4Net) -> Result<(), Invalid> {
    if !net.contains(&ip) {
        return invalid(format!(
            "{what} {ip} is outside subnet {net}; pick an address inside it"
        ));
    }
    if ip == net.network() {
        return invalid(format!(
            "{what} {ip} is the network address of {net}; pick a host address"
        ));
    }
    if ip == net.broadcast() {
        return invalid(format!(
            "{what} {ip} is the broadcast address of {net}; pick a host address"
        ));
    }
    Ok(())
}

/// A new network against what the host already has; returns its gateway.
pub fn network(spec: &NetworkSpec, state: &State) -> Result<Ipv4Addr, Invalid> {
    object_name("network", &spec.name)?;
    if state.network(&spec.name).is_some() {
        return invalid(format!(
            "a network named `{}` already exists; pick another name or remove it first (`netfast network rm {}`)",
            spec.name, spec.name
        ));
    }
    check_subnet(&spec.subnet)?;
    not_special(&spec.subnet)?;
    for other in &state.networks {
        if other.subnet.contains(&spec.subnet.network())
            || spec.subnet.contains(&other.subnet.network())
        {
            return invalid(format!(
                "subnet {} overlaps {} of network `{}`; pick a subnet that does not",
                spec.subnet, other.subnet, other.name
            ));
        }
    }
    let bridge = spec
        .bridge
        .clone()
        .unwrap_or_else(|| super::model::default_bridge(&spec.name));
    interface_name("bridge", &bridge)?;
    interface_name("uplink", &spec.uplink)?;
    if bridge == spec.uplink {
        return invalid(format!(
            "the bridge and the uplink are both `{bridge}`; they must differ"
        ));
    }
    if let Some(other) = state.networks.iter().find(|n| n.bridge == bridge) {
        return invalid(format!(
            "bridge `{bridge}` already belongs to network `{}`",
            other.name
        ));
    }
    let gateway = spec.gateway.unwrap_or_else(|| first_host(&spec.subnet));
    host_address("gateway", gateway, &spec.subnet)?;
    Ok(gateway)
}

/// The first host address of a subnet (its conventional gateway).
pub fn first_host(net: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// A new container against what the host already has.
pub fn container(spec: &ContainerSpec, state: &State) -> Result<(), Invalid> {
    object_name("container", &spec.name)?;
    if state.container(&spec.name).is_some() {
        return invalid(format!(
            "a container named `{}` already exists; pick another name or remove it first (`netfast container rm {}`)",
            spec.name, spec.name
        ));
    }
    let Some(net) = state.network(&spec.network) else {
        return invalid(format!(
            "no network named `{}`; create it first (`netfast network create {} --subnet … --uplink …`)",
            spec.network, spec.network
        ));
    };
    if let Some(ip) = spec.ip {
        host_address("address", ip, &net.subnet)?;
        if ip == net.gateway {
            return invalid(format!(
                "address {ip} is the gateway of network `{}`; pick another",
                net.name
            ));
        }
        if let Some(other) = state
            .containers
            .iter()
            .find(|c| c.ip == ip && c.network == net.name)
        {
            return invalid(format!(
                "address {ip} is in use by container `{}`; pick another or omit --ip",
                other.name
            ));
        }
    }
    Ok(())
}

/// Parses `MIN-MAX` (inclusive, 1 to 65535).
pub fn port_range(text: &str) -> Result<(u16, u16), Invalid> {
    let bad = || {
        Invalid(format!(
            "port range `{text}` is not MIN-MAX with 1 <= MIN <= MAX <= 65535"
        ))
    };
    let (a, b) = text.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok((a, b))
}

/// Dataplane settings that make sense, and their kernel-side form.
pub fn dataplane(
    cfg: &super::model::DataplaneConfig,
) -> Result<crate::dataplane::Settings, Invalid> {
    use netfast_common::config::{
        DpConfig, FILTERING_ADDRESS_AND_PORT_DEPENDENT, FILTERING_ENDPOINT_INDEPENDENT,
    };
    if !(16..=(1 << 24)).contains(&cfg.ct_max) {
        return invalid(format!(
            "ct-max {} is out of range; pick 16 to 16777216 flows",
            cfg.ct_max
        ));
    }
    let t = &cfg.timeouts;
    for (name, v) in [
        ("tcp-established", t.tcp_established),
        ("tcp-transitory", t.tcp_transitory),
        ("tcp-close", t.tcp_close),
        ("udp", t.udp),
        ("icmp", t.icmp),
    ] {
        if v == 0 || v > 7 * 24 * 3600 {
            return invalid(format!(
                "timeout {name} = {v} s is out of range; pick 1 s to 7 days"
            ));
        }
    }
    let (port_min, port_max) = port_range(&cfg.port_range)?;
    Ok(crate::dataplane::Settings {
        ct_max_flows: cfg.ct_max,
        config: t.write_to(DpConfig {
            port_min,
            port_max,
            filtering: match cfg.filtering {
                super::model::Filtering::AddressAndPortDependent => {
                    FILTERING_ADDRESS_AND_PORT_DEPENDENT
                }
                super::model::Filtering::EndpointIndependent => FILTERING_ENDPOINT_INDEPENDENT,
            },
            fast_path: u8::from(cfg.fast_path == super::model::Switch::On),
            // The clock is calibrated when the settings are written.
            ..DpConfig::default()
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            subnet: subnet.parse().unwrap(),
            gateway: None,
            bridge: None,
            uplink: "eth0".into(),
            adopt: false,
            masquerade: true,
            backend: Default::default(),
        }
    }

    #[test]
    fn port_ranges_and_dataplane_settings_are_checked() {
        assert_eq!(port_range("1024-65535").unwrap(), (1024, 65535));
        assert_eq!(port_range("61000-61000").unwrap(), (61000, 61000));
        for bad in ["", "1024", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(port_range(bad).is_err(), "{bad}");
        }
        let mut cfg = crate::loader::model::DataplaneConfig::default();
        let s = dataplane(&cfg).unwrap();
        assert_eq!(s.config, netfast_common::config::DpConfig::default());
        cfg.timeouts.udp = 0;
        assert!(err(dataplane(&cfg)).contains("timeout udp"));
        cfg.timeouts.udp = 30;
        cfg.ct_max = 1;
        assert!(err(dataplane(&cfg)).contains("ct-max"));
    }

    fn state() -> State {
        crate::loader::model::fixtures::web_with_ct1()
    }

    fn err<T: std::fmt::Debug>(r: Result<T, Invalid>) -> String {
        r.unwrap_err().0
    }

    #[test]
    fn bad_cidrs_are_named() {
        assert!(err(subnet("172.18.0.0")).contains("not an IPv4 CIDR"));
        assert!(err(subnet("300.1.1.0/24")).contains("not an IPv4 CIDR"));
        assert!(err(subnet("172.18.0.5/24")).contains("the network is 172.18.0.0/24"));
        assert!(err(subnet("10.0.0.0/31")).contains("no room"));
        assert_eq!(subnet("10.88.0.0/16").unwrap().prefix_len(), 16);
    }

    #[test]
    fn gateways_must_be_host_addresses_of_the_subnet() {
        let mut s = spec("db", "10.1.0.0/24");
        assert_eq!(
            network(&s, &state()).unwrap(),
            "10.1.0.1".parse::<Ipv4Addr>().unwrap()
        );
        s.gateway = Some("10.2.0.1".parse().unwrap());
        assert!(err(network(&s, &state())).contains("outside subnet 10.1.0.0/24"));
        s.gateway = Some("10.1.0.0".parse().unwrap());
        assert!(err(network(&s, &state())).contains("network address"));
        s.gateway = Some("10.1.0.255".parse().unwrap());
        assert!(err(network(&s, &state())).contains("broadcast address"));
    }

    #[test]
    fn networks_must_not_overlap_or_repeat() {
        assert!(err(network(&spec("web", "10.1.0.0/24"), &state())).contains("already exists"));
        assert!(
            err(network(&spec("db", "172.18.0.0/16"), &state()))
                .contains("overlaps 172.18.0.0/24 of network `web`")
        );
        assert!(err(network(&spec("db", "172.18.0.128/25"), &state())).contains("overlaps"));
    }

    #[test]
    fn subnets_of_the_hosts_own_or_nobodys_ranges_are_refused() {
        for (bad, what) in [
            ("127.0.0.0/8", "loopback"),
            ("127.5.0.0/16", "loopback"),
            ("224.1.0.0/16", "multicast"),
            ("240.0.0.0/24", "reserved"),
            ("169.254.0.0/24", "link-local"),
            ("0.0.0.0/8", "this network"),
            ("64.0.0.0/2", "loopback"),
        ] {
            let e = err(network(&spec("x", bad), &state()));
            assert!(
                e.contains(what) && e.contains("pick a private range"),
                "{bad}: {e}"
            );
        }
        assert!(network(&spec("x", "10.88.0.0/16"), &state()).is_ok());
    }

    #[test]
    fn interface_names_are_checked() {
        let mut s = spec("db", "10.1.0.0/24");
        s.bridge = Some("a-very-long-bridge".into());
        assert!(err(network(&s, &state())).contains("18 bytes"));
        s.bridge = Some("nf-web".into());
        assert!(err(network(&s, &state())).contains("already belongs to network `web`"));
        s.bridge = Some("eth0".into());
        assert!(err(network(&s, &state())).contains("must differ"));
        s.bridge = None;
        s.uplink = "bad/name".into();
        assert!(err(network(&s, &state())).contains("not a valid interface name"));
        assert_eq!(
            crate::loader::model::default_bridge("averyveryverylongname"),
            "nf-averyveryver"
        );
    }

    /// Names that nftables or iptables would read as syntax or wildcards, and names the kernel
    /// refuses: refused everywhere a name enters, with what to do instead.
    pub(crate) const HOSTILE_NAMES: [&str; 10] = [
        "x\"accept;#",
        "eth+",
        "e*",
        "a b",
        "a\nb",
        "tab\tx",
        "-i",
        "sixteen-bytes-xx",
        "br{0}",
        "a/b",
    ];

    #[test]
    fn hostile_interface_names_are_refused_everywhere_names_enter() {
        for bad in HOSTILE_NAMES {
            let e = err(interface_name("bridge", bad));
            assert!(
                e.contains("interface name") || e.contains("1 to 15"),
                "{bad:?}: {e}"
            );
            let mut s = spec("db", "10.1.0.0/24");
            s.bridge = Some(bad.into());
            assert!(network(&s, &state()).is_err(), "--bridge {bad:?}");
            let mut s = spec("db", "10.1.0.0/24");
            s.uplink = bad.into();
            assert!(network(&s, &state()).is_err(), "--uplink {bad:?}");
            let mut st = state();
            st.networks[0].uplink = bad.into();
            assert!(super::state(&st).is_err(), "uplink {bad:?} in a state file");
            let mut st = state();
            st.containers[0].veth = bad.into();
            assert!(super::state(&st).is_err(), "veth {bad:?} in a state file");
        }
        let e = err(interface_name("bridge", "eth+"));
        assert!(e.contains("wildcards") && e.contains("ip link set"), "{e}");
        for good in ["eth0", "nf-web", "br_0.10", "wlp2s0", "nfv1234abcd", "a"] {
            assert_eq!(interface_name("bridge", good), Ok(()), "{good}");
        }
        assert_eq!(super::state(&state()), Ok(()));
        let mut st = state();
        st.containers[0].name = "../etc".into();
        assert!(err(super::state(&st)).contains("not valid"));
    }

    #[test]
    fn container_addresses_are_checked() {
        let c = |ip: &str| ContainerSpec {
            name: "ct2".into(),
            network: "web".into(),
            ip: Some(ip.parse().unwrap()),
        };
        assert!(err(container(&c("172.18.0.2"), &state())).contains("in use by container `ct1`"));
        assert!(err(container(&c("172.18.0.1"), &state())).contains("is the gateway"));
        assert!(err(container(&c("172.18.0.0"), &state())).contains("network address"));
        assert!(err(container(&c("172.18.0.255"), &state())).contains("broadcast address"));
        assert!(err(container(&c("10.0.0.2"), &state())).contains("outside subnet"));
        assert!(container(&c("172.18.0.3"), &state()).is_ok());
        let dup = ContainerSpec {
            name: "ct1".into(),
            network: "web".into(),
            ip: None,
        };
        assert!(err(container(&dup, &state())).contains("already exists"));
        let nonet = ContainerSpec {
            name: "x".into(),
            network: "nope".into(),
            ip: None,
        };
        assert!(err(container(&nonet, &state())).contains("no network named `nope`"));
        let badname = ContainerSpec {
            name: "../etc".into(),
            network: "web".into(),
            ip: None,
        };
        assert!(err(container(&badname, &state())).contains("not valid"));
    }
}
