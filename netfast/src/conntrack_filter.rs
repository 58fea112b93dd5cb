//! Which flows a `netfast conntrack` command acts on: the filters conntrack-tools users know
//! (`-p`, `-s`, `-d`, `-r`, `-q`, `--sport`, `--dport`, `--reply-port-src/dst`, `--state`)
//! and netfast's own nouns (`--network`, `--container`, `--published`).
//!
//! One implementation for every subcommand (`list`, `watch`, `count`, `delete`, `flush`) and
//! for both kinds of flow: the eBPF dataplane's ([`crate::maps::flows`]) and the kernel's
//! conntrack entries of the fallback backends ([`crate::netfilter::ctnetlink::KEntry::flow`]),
//! which are both matched as a [`Flow`]. Pure: parsing and matching need no kernel.

use std::{fmt, net::Ipv4Addr, str::FromStr};

use ipnet::Ipv4Net;
use netfast_common::conntrack::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use crate::{
    loader::{model::State, publish::HostIp},
    maps::{Flow, Tuple},
};

/// A filter value that could not be read, or a name that names nothing: what is wrong and
/// how to write it instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFilter(pub String);

/// TCP states as conntrack names them (the kernel's; the eBPF dataplane uses a subset).
pub const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

/// `-p`: tcp, udp or icmp (any case), or their numbers.
pub fn parse_proto(text: &str) -> Result<u8, BadFilter> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Ok(PROTO_TCP),
        "udp" | "17" => Ok(PROTO_UDP),
        "icmp" | "1" => Ok(PROTO_ICMP),
        _ => Err(BadFilter(format!(
            "`{text}` is not a protocol netfast tracks; use tcp, udp or icmp"
        ))),
    }
}

/// An address (`172.18.0.2`) or a CIDR (`172.18.0.0/24`).
pub fn parse_net(text: &str) -> Result<Ipv4Net, BadFilter> {
    if let Ok(a) = text.parse::<Ipv4Addr>() {
        return Ok(Ipv4Net::from(a));
    }
    text.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|_| {
        BadFilter(format!(
            "`{text}` is not an IPv4 address or CIDR; write it like 172.18.0.2 or 172.18.0.0/24"
        ))
    })
}

/// A port, 0 to 65535.
pub fn parse_port(text: &str) -> Result<u16, BadFilter> {
    match text.parse::<u64>() {
        Ok(p) if u16::try_from(p).is_ok() => Ok(p as u16),
        Ok(p) => Err(BadFilter(format!(
            "port {p} is out of range; ports are 0 to 65535"
        ))),
        Err(_) => Err(BadFilter(format!(
            "`{text}` is not a port; write a number from 0 to 65535"
        ))),
    }
}

/// `--state`: a TCP state, any case; its canonical (upper-case) name.
pub fn parse_state(text: &str) -> Result<&'static str, BadFilter> {
    let upper = text.to_ascii_uppercase();
    TCP_STATES
        .iter()
        .find(|s| **s == upper)
        .copied()
        .ok_or_else(|| {
            BadFilter(format!(
                "`{text}` is not a TCP state; use one of {}",
                TCP_STATES.join(", ")
            ))
        })
}

/// `--published [IP:]PORT[/PROTO]`: the flows that came in through a published host port
/// (on that address, if given) and were translated to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub host_ip: Option<Ipv4Addr>,
    pub port: u16,
    /// tcp or udp; both when not given.
    pub proto: Option<u8>,
}

impl FromStr for Published {
    type Err = BadFilter;

    fn from_str(whole: &str) -> Result<Self, BadFilter> {
        let bad = |why: &str| {
            BadFilter(format!(
                "`{whole}` {why}; write [IP:]PORT[/tcp|/udp], e.g. 8080, 5353/udp or \
                 198.51.100.1:8080/tcp"
            ))
        };
        let (body, proto) = match whole.rsplit_once('/') {
            Some((b, p)) => match p.to_ascii_lowercase().as_str() {
                "tcp" => (b, Some(PROTO_TCP)),
                "udp" => (b, Some(PROTO_UDP)),
                _ => return Err(bad("names no published protocol (tcp or udp)")),
            },
            None => (whole, None),
        };
        let (host_ip, port) = match body.rsplit_once(':') {
            Some((ip, port)) => (
                Some(
                    ip.parse::<Ipv4Addr>()
                        .map_err(|_| bad(&format!("has `{ip}`, which is not an IPv4 address")))?,
                ),
                port,
            ),
            None => (None, body),
        };
        let port = match port.parse::<u64>() {
            Ok(p @ 1..=65535) => p as u16,
            _ => {
                return Err(bad(&format!(
                    "has `{port}`, which is not a port from 1 to 65535"
                )));
            }
        };
        Ok(Published {
            host_ip: host_ip.filter(|ip| !ip.is_unspecified()),
            port,
            proto,
        })
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            Some(PROTO_TCP) => "/tcp",
            Some(PROTO_UDP) => "/udp",
            _ => "",
        };
        write!(f, "{}{}{proto}", HostIp(self.host_ip), self.port)
    }
}

/// The criteria that a flow's own fields answer, alike in [`FilterSpec`] and [`Filter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowCriteria {
    pub proto: Option<u8>,
    pub orig_src: Option<Ipv4Net>,
    pub orig_dst: Option<Ipv4Net>,
    pub reply_src: Option<Ipv4Net>,
    pub reply_dst: Option<Ipv4Net>,
    pub orig_sport: Option<u16>,
    pub orig_dport: Option<u16>,
    pub reply_sport: Option<u16>,
    pub reply_dport: Option<u16>,
    /// TCP flows in this state (a name from [`TCP_STATES`]).
    pub state: Option<&'static str>,
    pub published: Option<Published>,
}

/// The filters as given: values read, names not yet looked up ([`FilterSpec::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub flow: FlowCriteria,
    pub network: Option<String>,
    pub container: Option<String>,
}

/// `--network NAME` or `--container NAME` (`what`) looked up by `found`, or the error that
/// says no such thing exists and where to see those that do.
fn look_up<T>(
    what: &str,
    name: Option<&str>,
    found: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, BadFilter> {
    name.map(|name| {
        found(name).ok_or_else(|| {
            BadFilter(format!(
                "--{what} {name}: no {what} named `{name}` (see `netfast {what} ls`)"
            ))
        })
    })
    .transpose()
}

impl FilterSpec {
    /// The filter, with `--network` and `--container` looked up in `state`; an error naming
    /// what is unknown or contradictory (nothing has changed yet when it is returned).
    pub fn resolve(&self, state: &State) -> Result<Filter, BadFilter> {
        let flow = &self.flow;
        if let Some(state_name) = flow.state
            && flow.proto.is_some_and(|p| p != PROTO_TCP)
        {
            return Err(BadFilter(format!(
                "--state {state_name} is a TCP state and -p asks for another protocol: drop \
                 one of them (--state implies -p tcp)"
            )));
        }
        if let Some(p) = flow.published
            && let (Some(a), Some(b)) = (p.proto, flow.proto)
            && a != b
        {
            return Err(BadFilter(format!(
                "--published {p} and -p ask for different protocols; drop one of them"
            )));
        }
        let network = look_up("network", self.network.as_deref(), |n| {
            state.network(n).map(|n| n.id)
        })?;
        let container = look_up("container", self.container.as_deref(), |n| {
            state.container(n).map(|c| c.ip)
        })?;
        Ok(Filter {
            flow: flow.clone(),
            network,
            container,
        })
    }
}

/// Flows that match every criterion given (none given: every flow), as conntrack-tools
/// combines its filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub flow: FlowCriteria,
    /// Flows of the network with this id.
    pub network: Option<u16>,
    /// Flows of the container with this address: from it (masqueraded or not) or to it
    /// (through a published port, or from a neighbour).
    pub container: Option<Ipv4Addr>,
}

/// The port of a tuple, if its protocol has ports (ICMP has an identifier instead).
fn port(t: &Tuple, which: fn(&Tuple) -> u16) -> Option<u16> {
    t.id.is_none().then(|| which(t))
}

fn has(want: Option<u16>, got: Option<u16>) -> bool {
    want.is_none_or(|w| got == Some(w))
}

fn within(net: Option<Ipv4Net>, addr: Ipv4Addr) -> bool {
    net.is_none_or(|n| n.contains(&addr))
}

impl Filter {
    /// The flows of the container at `ip` (what `container rm` ends).
    pub fn container(ip: Ipv4Addr) -> Filter {
        Filter {
            container: Some(ip),
            ..Filter::default()
        }
    }

    /// The flows of the network with this id (what `network rm` ends).
    pub fn network(id: u16) -> Filter {
        Filter {
            network: Some(id),
            ..Filter::default()
        }
    }

    /// True when no criterion is given: every flow matches.
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub fn matches(&self, f: &Flow) -> bool {
        self.flow.matches(f)
            && self.network.is_none_or(|id| f.network_id == id)
            && self
                .container
                .is_none_or(|ip| f.original.src == ip || f.reply.src == ip)
    }
}

impl FlowCriteria {
    fn matches(&self, f: &Flow) -> bool {
        let (o, r) = (&f.original, &f.reply);
        self.proto.is_none_or(|p| f.proto() == p)
            && within(self.orig_src, o.src)
            && within(self.orig_dst, o.dst)
            && within(self.reply_src, r.src)
            && within(self.reply_dst, r.dst)
            && has(self.orig_sport, port(o, |t| t.sport))
            && has(self.orig_dport, port(o, |t| t.dport))
            && has(self.reply_sport, port(r, |t| t.sport))
            && has(self.reply_dport, port(r, |t| t.dport))
            && self
                .state
                .is_none_or(|s| f.proto() == PROTO_TCP && f.state == Some(s))
            && self.published.is_none_or(|p| {
                p.proto.map_or(f.proto() == PROTO_TCP || f.proto() == PROTO_UDP, |want| {
                    f.proto() == want
                }) && port(o, |t| t.dport) == Some(p.port)
                    && p.host_ip.is_none_or(|ip| o.dst == ip)
                    // Translated: the reply comes from somewhere else (the container).
                    && (r.src != o.dst || r.sport != o.dport)
            })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::loader::model::{Container, Network};

    /// A tuple from `"IP:PORT"` strings (for ICMP the port stands for the echo identifier).
    fn tuple(src: &str, dst: &str) -> Tuple {
        let (src, dst): (SocketAddrV4, SocketAddrV4) = (src.parse().unwrap(), dst.parse().unwrap());
        Tuple {
            src: *src.ip(),
            dst: *dst.ip(),
            sport: src.port(),
            dport: dst.port(),
            id: None,
            packets: None,
            bytes: None,
        }
    }

    /// The flows the tests filter, by index: protocol, TCP state, network id, the original
    /// tuple and the reply tuple.
    type FlowRow = (
        u8,
        Option<&'static str>,
        u16,
        [&'static str; 2],
        [&'static str; 2],
    );
    #[rustfmt::skip]
    const FLOWS: [FlowRow; 4] = [
        // 0: a container's masqueraded TCP connection to an outside server.
        (PROTO_TCP, Some("ESTABLISHED"), 1,
            ["172.18.0.3:40000", "198.51.100.2:8000"], ["198.51.100.2:8000", "198.51.100.1:40000"]),
        // 1: an outside client's datagrams to a published port (5353 → 172.18.0.2:53).
        (PROTO_UDP, None, 1,
            ["198.51.100.2:40001", "198.51.100.1:5353"], ["172.18.0.2:53", "198.51.100.2:40001"]),
        // 2: an outside client's datagrams to the host's own port 5353, untranslated.
        (PROTO_UDP, None, 0,
            ["198.51.100.2:40001", "198.51.100.1:5353"], ["198.51.100.1:5353", "198.51.100.2:40001"]),
        // 3: a container's ping of the outside (echo identifier 77), on network 2.
        (PROTO_ICMP, None, 2,
            ["172.19.0.2:77", "198.51.100.2:0"], ["198.51.100.2:77", "198.51.100.1:0"]),
    ];

    fn all() -> Vec<Flow> {
        FLOWS
            .iter()
            .map(|&(proto, state, net, o, r)| {
                let (mut o, mut r) = (tuple(o[0], o[1]), tuple(r[0], r[1]));
                if proto == PROTO_ICMP {
                    for t in [&mut o, &mut r] {
                        t.id = Some(t.sport);
                        (t.sport, t.dport) = (0, 0);
                    }
                }
                Flow::from_parts(proto, state, 100, false, net, o, r)
            })
            .collect()
    }

    fn state() -> State {
        let mut s = State::default();
        s.networks.push(Network {
            name: "web".into(),
            id: 1,
            subnet: "172.18.0.0/24".parse().unwrap(),
            gateway: "172.18.0.1".parse().unwrap(),
            bridge: "nf-web".into(),
            uplink: "eth0".into(),
            adopted: false,
            adopted_ports: Vec::new(),
            masquerade: true,
            backend: Default::default(),
            route_localnet: false,
            hairpin_set: Vec::new(),
        });
        s.containers.push(Container {
            name: "ct1".into(),
            network: "web".into(),
            ip: "172.18.0.2".parse().unwrap(),
            veth: "vct1".into(),
            netns_cookie: None,
        });
        s
    }

    /// The indexes into [`all`] of the flows `spec` matches.
    fn which(spec: FilterSpec) -> Vec<usize> {
        let f = spec.resolve(&state()).unwrap();
        all()
            .iter()
            .enumerate()
            .filter(|(_, fl)| f.matches(fl))
            .map(|(i, _)| i)
            .collect()
    }

    /// The indexes into [`all`] of the flows the default spec changed by `f` matches.
    fn spec(f: fn(&mut FilterSpec)) -> Vec<usize> {
        let mut s = FilterSpec::default();
        f(&mut s);
        which(s)
    }

    /// What resolving `spec` against [`state`] refuses, as the user reads it.
    fn refused(spec: FilterSpec) -> String {
        spec.resolve(&state()).unwrap_err().0
    }

    #[test]
    fn no_filter_matches_every_flow() {
        assert!(Filter::default().is_empty());
        assert_eq!(which(FilterSpec::default()), [0, 1, 2, 3]);
    }

    #[test]
    fn protocol_addresses_and_cidrs_match_their_own_tuple() {
        assert_eq!(spec(|s| s.flow.proto = Some(PROTO_UDP)), [1, 2]);
        assert_eq!(spec(|s| s.flow.proto = Some(PROTO_ICMP)), [3]);
        assert_eq!(
            spec(|s| s.flow.orig_src = Some(parse_net("172.16.0.0/12").unwrap())),
            [0, 3]
        );
        assert_eq!(
            spec(|s| s.flow.orig_dst = Some(parse_net("198.51.100.1").unwrap())),
            [1, 2]
        );
        // The reply tuple tells the translated flow from the untranslated one.
        assert_eq!(
            spec(|s| s.flow.reply_src = Some(parse_net("172.18.0.2").unwrap())),
            [1]
        );
        assert_eq!(
            spec(|s| s.flow.reply_dst = Some(parse_net("198.51.100.1/32").unwrap())),
            [0, 3]
        );
    }

    #[test]
    fn ports_match_their_own_direction_and_never_an_icmp_flow() {
        assert_eq!(spec(|s| s.flow.orig_dport = Some(5353)), [1, 2]);
        assert_eq!(spec(|s| s.flow.orig_sport = Some(40000)), [0]);
        assert_eq!(spec(|s| s.flow.reply_sport = Some(53)), [1]);
        assert_eq!(spec(|s| s.flow.reply_dport = Some(40001)), [1, 2]);
        assert_eq!(spec(|s| s.flow.orig_dport = Some(0)), Vec::<usize>::new());
    }

    #[test]
    fn state_network_container_and_published_port() {
        assert_eq!(spec(|s| s.flow.state = Some("ESTABLISHED")), [0]);
        assert_eq!(
            spec(|s| s.flow.state = Some("TIME_WAIT")),
            Vec::<usize>::new()
        );
        assert_eq!(spec(|s| s.network = Some("web".into())), [0, 1]);
        // The container's flows: to it through the published port (from it: none here).
        assert_eq!(spec(|s| s.container = Some("ct1".into())), [1]);
        // Through the published port: translated, unlike the host's own port 5353.
        assert_eq!(
            spec(|s| s.flow.published = Some("5353".parse().unwrap())),
            [1]
        );
        assert_eq!(
            spec(|s| s.flow.published = Some("198.51.100.1:5353/udp".parse().unwrap())),
            [1]
        );
        assert_eq!(
            spec(|s| s.flow.published = Some("5353/tcp".parse().unwrap())),
            Vec::<usize>::new()
        );
        // Criteria combine: all of them must hold.
        let mut both = FilterSpec {
            flow: FlowCriteria {
                proto: Some(PROTO_UDP),
                orig_dport: Some(5353),
                ..FlowCriteria::default()
            },
            ..FilterSpec::default()
        };
        assert_eq!(which(both.clone()), [1, 2]);
        both.flow.reply_src = Some(parse_net("198.51.100.1").unwrap());
        assert_eq!(which(both), [2]);
    }

    #[test]
    fn values_parse_as_conntrack_tools_writes_them() {
        assert_eq!(parse_proto("TCP"), Ok(PROTO_TCP));
        assert_eq!(parse_proto("17"), Ok(PROTO_UDP));
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert_eq!(parse_port("65535"), Ok(65535));
        assert_eq!(parse_state("established"), Ok("ESTABLISHED"));
        assert_eq!(
            "0.0.0.0:8080".parse::<Published>(),
            Ok(Published {
                host_ip: None,
                port: 8080,
                proto: None
            })
        );
        assert_eq!(
            "198.51.100.1:53/UDP"
                .parse::<Published>()
                .unwrap()
                .to_string(),
            "198.51.100.1:53/udp"
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong_and_how_to_write_it() {
        let e = parse_net("172.18.0.300").unwrap_err().0;
        assert!(
            e.contains("not an IPv4 address or CIDR") && e.contains("172.18.0.0/24"),
            "{e}"
        );
        let e = parse_port("70000").unwrap_err().0;
        assert!(
            e.contains("port 70000 is out of range") && e.contains("0 to 65535"),
            "{e}"
        );
        assert!(parse_port("http").unwrap_err().0.contains("not a port"));
        let e = parse_state("OPEN").unwrap_err().0;
        assert!(
            e.contains("not a TCP state") && e.contains("ESTABLISHED"),
            "{e}"
        );
        let e = parse_proto("sctp").unwrap_err().0;
        assert!(e.contains("tcp, udp or icmp"), "{e}");
        for bad in ["80/icmp", "x:80", "0", "99999", "80:90"] {
            let e = bad.parse::<Published>().unwrap_err().0;
            assert!(e.contains("[IP:]PORT[/tcp|/udp]"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_names_and_contradictions_are_refused() {
        let cases: [(FilterSpec, &[&str]); 4] = [
            (
                FilterSpec {
                    network: Some("db".into()),
                    ..FilterSpec::default()
                },
                &["no network named `db`", "network ls"],
            ),
            (
                FilterSpec {
                    container: Some("ct9".into()),
                    ..FilterSpec::default()
                },
                &["no container named `ct9`"],
            ),
            (
                FilterSpec {
                    flow: FlowCriteria {
                        proto: Some(PROTO_UDP),
                        state: Some("ESTABLISHED"),
                        ..FlowCriteria::default()
                    },
                    ..FilterSpec::default()
                },
                &["--state implies -p tcp"],
            ),
            (
                FilterSpec {
                    flow: FlowCriteria {
                        proto: Some(PROTO_TCP),
                        published: Some("53/udp".parse().unwrap()),
                        ..FlowCriteria::default()
                    },
                    ..FilterSpec::default()
                },
                &["different protocols"],
            ),
        ];
        for (spec, wanted) in cases {
            let e = refused(spec);
            assert!(
                wanted.iter().all(|w| e.contains(w)),
                "{e} should say {wanted:?}"
            );
        }
    }
}
