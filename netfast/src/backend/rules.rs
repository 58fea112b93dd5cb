//! What a fallback backend must do for the networks it serves, computed from the state, and
//! rendered as one nftables table or as iptables chains. Pure: no kernel needed.
//!
//! The rules give the eBPF dataplane's behaviour (and Docker's): masquerade of a subnet out of
//! its uplink; published ports for every local address (outside clients, the host's own
//! clients including 127.0.0.1, containers through hairpin); allow-lists; no direct access
//! to masqueraded containers from outside; no traffic between netfast networks; no container
//! traffic to the host's 127.0.0.0/8 (which `route_localnet` would let in); netfast's timeouts.

use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr};

use ipnet::Ipv4Net;

use super::nft::{Batch, Expr, Hook, Stmt};
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

/// The drop reasons of the iptables backend's filter table, and of its raw table (where the
/// packets for 127.0.0.0/8 go, before any DNAT: the nat table cannot drop). A reason can be
/// counted in both: a container's packet to 127.0.0.0/8 is dropped in raw before a
/// publication on 127.0.0.1 could take it, and again in INPUT after any DNAT.
pub const IPT_FILTER_DROPS: [&str; 4] = [
    "inter_network",
    "direct_access",
    "not_allowed",
    "to_host_loopback",
];
pub const IPT_RAW_DROPS: [&str; 2] = ["to_host_loopback", "loopback_from_network"];

/// The key under which [`Counts`] holds the raw table's counter of an iptables drop reason
/// (the filter table's is the reason itself).
pub fn ipt_raw_counter(reason: &str) -> String {
    format!("raw:{reason}")
}

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

/// The iptables rules whose counters are network `net`'s packets going `way`, as
/// `iptables-save` prints them (the first carries the total over a restore).
pub fn ipt_net_rules(net: &Net, way: Way) -> Vec<String> {
    ipt_net_rules_as(net, way, |name| name.to_owned())
}

fn ipt_net_rules_as(net: &Net, way: Way, iface: impl Fn(&str) -> String) -> Vec<String> {
    let br = iface(&net.bridge);
    match way {
        Way::Rx => vec![
            format!(
                "-A NETFAST-FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ),
            format!("-A NETFAST-FORWARD -o {br} -m conntrack --ctstate DNAT -j ACCEPT"),
        ],
        Way::Tx => vec![format!("-A NETFAST-FORWARD -i {br} -j ACCEPT")],
    }
}

/// An interface name in iptables-restore input: quoted, which its parser allows, though a
/// validated name has nothing to quote (and a wildcard `+` would stay one inside quotes).
fn ipt_if(name: &str) -> String {
    format!("\"{name}\"")
}

fn ipt_ports(p: Ports) -> String {
    if p.first == p.last {
        p.first.to_string()
    } else {
        format!("{}:{}", p.first, p.last)
    }
}

/// The `ct timeout` objects for `t` and the rules of chain `timeouts` that set them on a new
/// flow, as nft text: a second transaction after the JSON batch, since nft's JSON parser
/// (1.0.6 at least) drops a `ct timeout` object's policy. The text holds netfast's own
/// fixed names and numbers only, never a name a user gave.
pub fn nft_timeouts_text(t: &Timeouts) -> String {
    let tr = t.tcp_transitory;
    format!(
        "add ct timeout ip netfast tcp_timeouts {{ protocol tcp; l3proto ip; policy = {{ \
         established: {}, syn_sent: {tr}, syn_recv: {tr}, fin_wait: {tr}, close_wait: {tr}, \
         last_ack: {tr}, time_wait: {tr}, close: {} }}; }}\n\
         add ct timeout ip netfast udp_timeouts {{ protocol udp; l3proto ip; policy = {{ \
         unreplied: {u}, replied: {u} }}; }}\n\
         add rule ip netfast timeouts ct timeout set \"tcp_timeouts\"\n\
         add rule ip netfast timeouts ct timeout set \"udp_timeouts\"\n",
        t.tcp_established,
        t.tcp_close,
        u = t.udp
    )
}

fn iif(name: &str) -> Stmt {
    Stmt::eq(Expr::meta("iifname"), Expr::str(name))
}

fn oif(name: &str) -> Stmt {
    Stmt::eq(Expr::meta("oifname"), Expr::str(name))
}

fn saddr(net: Ipv4Net) -> Stmt {
    Stmt::eq(Expr::payload("ip", "saddr"), Expr::prefix(net))
}

fn ct_dnat() -> Stmt {
    Stmt::has(Expr::ct("status"), Expr::str("dnat"))
}

fn loopback() -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("a valid prefix")
}

/// The nftables commands (JSON, for `nft -j -f -`) that replace table `ip netfast` with
/// `rules` in one transaction; `counts` carries the counters over; `timeouts`: with the
/// conntrack timeout policies.
pub fn nft_batch(rules: &Rules, counts: &Counts, timeouts: bool) -> Batch {
    let mut b = Batch::default();
    b.reset_table();
    if rules.is_empty() {
        return b;
    }
    b.table();
    let names = DROP_REASONS.map(str::to_owned).into_iter().chain(
        rules
            .nets
            .iter()
            .flat_map(|n| [net_counter(Way::Tx, n.id), net_counter(Way::Rx, n.id)]),
    );
    for name in names {
        let (p, bytes) = counts.get(&name).copied().unwrap_or_default();
        b.counter(&name, p, bytes);
    }
    // Timeout policies for the flows of the networks, set on a flow's first packet (in the
    // postrouting nat chain, before the kernel confirms it). nft has them for TCP and UDP.
    // (The policies themselves and the rules that set them: [`nft_timeouts_text`].)
    if timeouts {
        b.chain("timeouts", None);
    }
    // 127.0.0.0/8 is the host's own: nothing from the network reaches it, least of all a
    // port published on 127.0.0.1, which the DNAT below would otherwise take in before the
    // routing decision that drops a martian. At raw priority: before conntrack and any NAT,
    // while the destination is still the one the packet came with.
    b.chain(
        "loopback",
        Some(Hook {
            kind: "filter",
            hook: "prerouting",
            prio: -300,
        }),
    );
    let to_loopback = || Stmt::eq(Expr::payload("ip", "daddr"), Expr::prefix(loopback()));
    for br in &rules.all_bridges {
        b.rule(
            "loopback",
            vec![
                iif(br),
                to_loopback(),
                Stmt::counter("to_host_loopback"),
                Stmt::drop(),
            ],
        );
    }
    b.rule(
        "loopback",
        vec![
            Stmt::ne(Expr::meta("iifname"), Expr::str("lo")),
            to_loopback(),
            Stmt::counter("loopback_from_network"),
            Stmt::drop(),
        ],
    );
    let local = || Stmt::eq(Expr::fib_daddr_type(), Expr::str("local"));
    for (chain, hook) in [("prerouting", "prerouting"), ("output", "output")] {
        b.chain(
            chain,
            Some(Hook {
                kind: "nat",
                hook,
                prio: -100,
            }),
        );
        b.rule(chain, vec![local(), Stmt::jump("published")]);
    }
    b.chain("published", None);
    for d in &rules.dnat {
        let mut r = Vec::new();
        if let Some(ip) = d.host_ip {
            r.push(Stmt::eq(Expr::payload("ip", "daddr"), Expr::addr(ip)));
        }
        r.push(Stmt::eq(
            Expr::payload(&d.proto.to_string(), "dport"),
            Expr::ports(d.host_ports),
        ));
        r.push(Stmt::dnat(d.ip, d.ports));
        b.rule("published", r);
    }
    b.chain(
        "postrouting",
        Some(Hook {
            kind: "nat",
            hook: "postrouting",
            prio: 100,
        }),
    );
    // The networks' new flows: from their containers, and to them through published ports.
    for n in rules.nets.iter().filter(|_| timeouts) {
        b.rule("postrouting", vec![saddr(n.subnet), Stmt::jump("timeouts")]);
        b.rule(
            "postrouting",
            vec![oif(&n.bridge), ct_dnat(), Stmt::jump("timeouts")],
        );
    }
    for n in &rules.nets {
        if n.masquerade {
            b.rule(
                "postrouting",
                vec![oif(&n.uplink), saddr(n.subnet), Stmt::masquerade()],
            );
        }
        // Hairpin: a container reaching a published port of its own network gets the
        // answer through the host, not straight from the server next to it.
        b.rule(
            "postrouting",
            vec![
                oif(&n.bridge),
                saddr(n.subnet),
                ct_dnat(),
                Stmt::masquerade(),
            ],
        );
        b.rule(
            "postrouting",
            vec![oif(&n.bridge), saddr(loopback()), Stmt::masquerade()],
        );
    }
    b.chain(
        "forward",
        Some(Hook {
            kind: "filter",
            hook: "forward",
            prio: 0,
        }),
    );
    for (from, to) in &rules.isolate {
        b.rule(
            "forward",
            vec![
                iif(from),
                oif(to),
                Stmt::counter("inter_network"),
                Stmt::drop(),
            ],
        );
    }
    for a in &rules.allow {
        b.rule(
            "forward",
            vec![
                Stmt::eq(Expr::payload("ip", "daddr"), Expr::addr(a.ip)),
                Stmt::eq(Expr::meta("l4proto"), Expr::str(&a.proto.to_string())),
                ct_dnat(),
                Stmt::eq(Expr::ct_original("proto-dst"), Expr::ports(a.host_ports)),
                Stmt::ne(
                    Expr::payload("ip", "saddr"),
                    Expr::set(a.allow.iter().map(|n| Expr::prefix(*n))),
                ),
                Stmt::counter("not_allowed"),
                Stmt::drop(),
            ],
        );
    }
    for n in &rules.nets {
        let br = n.bridge.as_str();
        let (tx, rx) = (net_counter(Way::Tx, n.id), net_counter(Way::Rx, n.id));
        b.rule(
            "forward",
            vec![
                oif(br),
                Stmt::has(Expr::ct("state"), Expr::flags(&["established", "related"])),
                Stmt::counter(&rx),
                Stmt::accept(),
            ],
        );
        b.rule(
            "forward",
            vec![oif(br), ct_dnat(), Stmt::counter(&rx), Stmt::accept()],
        );
        if n.masquerade {
            b.rule(
                "forward",
                vec![
                    oif(br),
                    Stmt::ne(Expr::meta("iifname"), Expr::str(br)),
                    Stmt::counter("direct_access"),
                    Stmt::drop(),
                ],
            );
        }
        b.rule("forward", vec![iif(br), Stmt::counter(&tx), Stmt::accept()]);
    }
    // route_localnet (on for the bridges, for the host's clients of 127.0.0.1) would also let
    // a container's packets to 127.0.0.0/8 in: only the replies of the host's own flows may.
    b.chain(
        "input",
        Some(Hook {
            kind: "filter",
            hook: "input",
            prio: 0,
        }),
    );
    for n in &rules.nets {
        b.rule(
            "input",
            vec![
                iif(&n.bridge),
                Stmt::eq(Expr::payload("ip", "daddr"), Expr::prefix(loopback())),
                Stmt::ne(
                    Expr::ct("state"),
                    Expr::set([Expr::str("established"), Expr::str("related")]),
                ),
                Stmt::counter("to_host_loopback"),
                Stmt::drop(),
            ],
        );
    }
    b
}

/// The iptables chains netfast owns, with the built-in chain that jumps to each (none for
/// the chains only other NETFAST chains jump to).
pub const IPT_CHAINS: [(&str, &str, Option<&str>); 15] = [
    ("nat", "NETFAST-PREROUTING", Some("PREROUTING")),
    ("nat", "NETFAST-OUTPUT", Some("OUTPUT")),
    ("nat", "NETFAST-POSTROUTING", Some("POSTROUTING")),
    ("nat", "NETFAST-PUBLISHED", None),
    ("filter", "NETFAST-FORWARD", Some("FORWARD")),
    ("filter", "NETFAST-INTER-NETWORK", None),
    ("filter", "NETFAST-DIRECT-ACCESS", None),
    ("filter", "NETFAST-NOT-ALLOWED", None),
    ("filter", "NETFAST-INPUT", Some("INPUT")),
    ("filter", "NETFAST-TO-HOST-LOOPBACK", None),
    ("raw", "NETFAST-RAW-PREROUTING", Some("PREROUTING")),
    ("raw", "NETFAST-RAW-OUTPUT", Some("OUTPUT")),
    ("raw", "NETFAST-TIMEOUTS", None),
    ("raw", "NETFAST-TO-HOST-LOOPBACK", None),
    ("raw", "NETFAST-LOOPBACK-FROM-NET", None),
];

/// The chain that counts and drops packets for a drop reason (in the filter table, or the
/// raw table for [`IPT_RAW_DROPS`]). iptables allows 28 characters.
pub fn ipt_drop_chain(reason: &str) -> String {
    match reason {
        "loopback_from_network" => "NETFAST-LOOPBACK-FROM-NET".to_owned(),
        _ => format!("NETFAST-{}", reason.replace('_', "-").to_uppercase()),
    }
}

/// The `iptables-restore --noflush` input for `rules` (tables nat, filter and raw). Declaring
/// a chain flushes it; chains of allow-lists no longer needed are left for the caller to
/// delete. `timeouts`: the conntrack timeout policies ([`super::cttimeout`]) the networks'
/// new flows get, from the raw table (none where the kernel has no such policies).
/// Returns the input and the names of the allow-list chains it uses.
pub fn ipt_restore(
    rules: &Rules,
    counts: &Counts,
    timeouts: &[super::cttimeout::Policy],
) -> (String, Vec<String>) {
    let mut s = String::new();
    s.push_str("*nat\n");
    for (table, chain, _) in IPT_CHAINS {
        if table == "nat" {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
    }
    s.push_str("-A NETFAST-PREROUTING -m addrtype --dst-type LOCAL -j NETFAST-PUBLISHED\n");
    s.push_str("-A NETFAST-OUTPUT -m addrtype --dst-type LOCAL -j NETFAST-PUBLISHED\n");
    for d in &rules.dnat {
        s.push_str("-A NETFAST-PUBLISHED ");
        if let Some(ip) = d.host_ip {
            let _ = write!(s, "-d {ip}/32 ");
        }
        let _ = write!(
            s,
            "-p {p} -m {p} --dport {} -j DNAT --to-destination {}",
            ipt_ports(d.host_ports),
            d.ip,
            p = d.proto
        );
        if let Some(p) = d.ports {
            let _ = write!(s, ":{}", ipt_ports(p));
        }
        s.push('\n');
    }
    for n in &rules.nets {
        if n.masquerade {
            let _ = writeln!(
                s,
                "-A NETFAST-POSTROUTING -s {} -o {} -j MASQUERADE",
                n.subnet,
                ipt_if(&n.uplink)
            );
        }
        let _ = writeln!(
            s,
            "-A NETFAST-POSTROUTING -s {} -o {} -m conntrack --ctstate DNAT -j MASQUERADE",
            n.subnet,
            ipt_if(&n.bridge)
        );
        let _ = writeln!(
            s,
            "-A NETFAST-POSTROUTING -s 127.0.0.0/8 -o {} -j MASQUERADE",
            ipt_if(&n.bridge)
        );
    }
    s.push_str("COMMIT\n*filter\n");
    let mut allow_chains = Vec::new();
    for (table, chain, _) in IPT_CHAINS {
        if table == "filter" {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
    }
    for i in 0..rules.allow.len() {
        let name = format!("NETFAST-ALLOW-{i}");
        let _ = writeln!(s, ":{name} - [0:0]");
        allow_chains.push(name);
    }
    // Each drop chain holds one rule whose counter is the drop reason's (carried over).
    for reason in IPT_FILTER_DROPS {
        let (p, b) = counts.get(reason).copied().unwrap_or_default();
        let _ = writeln!(s, "[{p}:{b}] -A {} -j DROP", ipt_drop_chain(reason));
    }
    for (a, b) in &rules.isolate {
        let _ = writeln!(
            s,
            "-A NETFAST-FORWARD -i {} -o {} -j {}",
            ipt_if(a),
            ipt_if(b),
            ipt_drop_chain("inter_network")
        );
    }
    for n in &rules.nets {
        let _ = writeln!(
            s,
            "-A NETFAST-INPUT -i {} -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED -j {}",
            ipt_if(&n.bridge),
            ipt_drop_chain("to_host_loopback")
        );
    }
    for (a, chain) in rules.allow.iter().zip(&allow_chains) {
        let _ = writeln!(
            s,
            "-A NETFAST-FORWARD -d {}/32 -p {} -m conntrack --ctstate DNAT --ctorigdstport {} -j {chain}",
            a.ip,
            a.proto,
            ipt_ports(a.host_ports)
        );
        for net in &a.allow {
            let _ = writeln!(s, "-A {chain} -s {net} -j RETURN");
        }
        let _ = writeln!(s, "-A {chain} -j {}", ipt_drop_chain("not_allowed"));
    }
    for n in &rules.nets {
        let br = ipt_if(&n.bridge);
        // The network's counters ride on its accept rules; a restore puts each total on the
        // first rule of its way.
        let counted = |way: Way, i: usize| {
            let (p, b) = match i {
                0 => counts
                    .get(&net_counter(way, n.id))
                    .copied()
                    .unwrap_or_default(),
                _ => (0, 0),
            };
            format!("[{p}:{b}] ")
        };
        for (i, rule) in ipt_net_rules_as(n, Way::Rx, ipt_if).iter().enumerate() {
            let _ = writeln!(s, "{}{rule}", counted(Way::Rx, i));
        }
        if n.masquerade {
            let _ = writeln!(
                s,
                "-A NETFAST-FORWARD ! -i {br} -o {br} -j {}",
                ipt_drop_chain("direct_access")
            );
        }
        for (i, rule) in ipt_net_rules_as(n, Way::Tx, ipt_if).iter().enumerate() {
            let _ = writeln!(s, "{}{rule}", counted(Way::Tx, i));
        }
    }
    s.push_str("COMMIT\n*raw\n");
    for (table, chain, _) in IPT_CHAINS {
        if table == "raw" {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
    }
    for reason in IPT_RAW_DROPS {
        let (p, b) = counts
            .get(&ipt_raw_counter(reason))
            .copied()
            .unwrap_or_default();
        let _ = writeln!(s, "[{p}:{b}] -A {} -j DROP", ipt_drop_chain(reason));
    }
    // 127.0.0.0/8 is the host's own: nothing from the network reaches it, least of all a
    // port published on 127.0.0.1, which NETFAST-PUBLISHED would otherwise take in before
    // the routing decision that drops a martian. In raw: before conntrack and any NAT.
    for br in &rules.all_bridges {
        let _ = writeln!(
            s,
            "-A NETFAST-RAW-PREROUTING -i {} -d 127.0.0.0/8 -j {}",
            ipt_if(br),
            ipt_drop_chain("to_host_loopback")
        );
    }
    let _ = writeln!(
        s,
        "-A NETFAST-RAW-PREROUTING ! -i lo -d 127.0.0.0/8 -j {}",
        ipt_drop_chain("loopback_from_network")
    );
    // CT --timeout gives a flow its policy when the flow is created, before any NAT: the
    // networks' flows are those from their bridges and those to the published ports. (None
    // without the policies.)
    if !timeouts.is_empty() {
        // Only the packets that can open a flow: the raw table sees every packet, before
        // conntrack, and a flow takes its policy when it is created.
        for p in timeouts {
            let opens = match p.proto {
                "tcp" => " -m tcp --tcp-flags FIN,SYN,RST,ACK SYN",
                "icmp" => " -m icmp --icmp-type 8",
                _ => "",
            };
            let _ = writeln!(
                s,
                "-A NETFAST-TIMEOUTS -p {}{opens} -j CT --timeout {}",
                p.proto, p.name
            );
        }
        for n in &rules.nets {
            let _ = writeln!(
                s,
                "-A NETFAST-RAW-PREROUTING -i {} -j NETFAST-TIMEOUTS",
                ipt_if(&n.bridge)
            );
        }
        for d in &rules.dnat {
            let mut m = String::from("-m addrtype --dst-type LOCAL ");
            if let Some(ip) = d.host_ip {
                let _ = write!(m, "-d {ip}/32 ");
            }
            let _ = write!(
                m,
                "-p {p} -m {p} --dport {}",
                ipt_ports(d.host_ports),
                p = d.proto
            );
            for chain in ["NETFAST-RAW-PREROUTING", "NETFAST-RAW-OUTPUT"] {
                let _ = writeln!(s, "-A {chain} {m} -j NETFAST-TIMEOUTS");
            }
        }
    }
    s.push_str("COMMIT\n");
    (s, allow_chains)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{
        model::{Backend, Network},
        publish::Publication,
    };

    fn state() -> State {
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

    #[test]
    fn a_shifted_range_becomes_a_rule_per_port() {
        let mut st = state();
        st.publications[1].container_ports = Ports {
            first: 6000,
            last: 6001,
        };
        let r = Rules::of(&st, Backend::Nftables);
        assert_eq!(r.dnat.len(), 3);
        assert_eq!(
            r.dnat[2].ports,
            Some(Ports {
                first: 6001,
                last: 6001
            })
        );
        let doc = nft_doc(&nft_batch(&r, &Counts::new(), true));
        assert!(
            rules_in(&doc, "published").contains(&serde_json::json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "198.51.100.1"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 5001}},
                {"dnat": {"addr": "172.18.0.3", "port": 6001}},
            ])),
            "{doc}"
        );
    }

    fn nft_doc(b: &Batch) -> serde_json::Value {
        serde_json::from_str(&b.to_json()).expect("valid JSON")
    }

    /// The statements of each rule `doc` adds to `chain`.
    fn rules_in(doc: &serde_json::Value, chain: &str) -> Vec<serde_json::Value> {
        doc["nftables"]
            .as_array()
            .expect("commands")
            .iter()
            .filter(|c| c["add"]["rule"]["chain"] == chain)
            .map(|c| c["add"]["rule"]["expr"].clone())
            .collect()
    }

    /// The objects of kind `kind` (`counter`, `chain`, `ct timeout`) that `doc` adds.
    fn added(doc: &serde_json::Value, kind: &str) -> Vec<serde_json::Value> {
        doc["nftables"]
            .as_array()
            .expect("commands")
            .iter()
            .filter_map(|c| c["add"].get(kind).cloned())
            .collect()
    }

    #[test]
    fn the_nft_batch_replaces_the_table_and_carries_counters() {
        use serde_json::json;
        let r = Rules::of(&state(), Backend::Nftables);
        let mut counts = Counts::new();
        counts.insert("not_allowed".into(), (7, 420));
        counts.insert("tx_1".into(), (5, 300));
        let doc = nft_doc(&nft_batch(&r, &counts, true));
        let cmds = doc["nftables"].as_array().expect("commands");
        let table = json!({"table": {"family": "ip", "name": "netfast"}});
        assert_eq!(cmds[0], json!({"add": table}));
        assert_eq!(cmds[1], json!({"delete": table}));
        assert_eq!(cmds[2], json!({"add": table}));
        let counters = added(&doc, "counter");
        for (name, p, b) in [
            ("not_allowed", 7, 420),
            ("tx_1", 5, 300),
            ("rx_1", 0, 0),
            ("to_host_loopback", 0, 0),
            ("loopback_from_network", 0, 0),
        ] {
            assert!(
                counters.contains(&json!({"family": "ip", "table": "netfast", "name": name, "packets": p, "bytes": b})),
                "{name}: {counters:?}"
            );
        }
        let oif = |n: &str| json!({"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": n}});
        let iif = |n: &str| json!({"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": n}});
        let saddr = |a: &str, l: u8| json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": a, "len": l}}}});
        let dnat =
            json!({"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}});
        let post = rules_in(&doc, "postrouting");
        for rule in [
            json!([saddr("172.18.0.0", 24), {"jump": {"target": "timeouts"}}]),
            json!([oif("nf-web"), dnat, {"jump": {"target": "timeouts"}}]),
            json!([oif("eth0"), saddr("172.18.0.0", 24), {"masquerade": null}]),
            json!([oif("nf-web"), saddr("172.18.0.0", 24), dnat, {"masquerade": null}]),
            json!([oif("nf-web"), saddr("127.0.0.0", 8), {"masquerade": null}]),
        ] {
            assert!(post.contains(&rule), "{rule} missing from {post:?}");
        }
        let fwd = rules_in(&doc, "forward");
        for rule in [
            json!([iif("nf-web"), oif("nf-db"), {"counter": "inter_network"}, {"drop": null}]),
            json!([oif("nf-web"), {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "nf-web"}}, {"counter": "direct_access"}, {"drop": null}]),
            json!([oif("nf-web"), {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"counter": "rx_1"}, {"accept": null}]),
            json!([oif("nf-web"), dnat, {"counter": "rx_1"}, {"accept": null}]),
            json!([iif("nf-web"), {"counter": "tx_1"}, {"accept": null}]),
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "172.18.0.2"}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                dnat,
                {"match": {"op": "==", "left": {"ct": {"key": "proto-dst", "dir": "original"}}, "right": 8080}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "192.0.2.0", "len": 24}}]}}},
                {"counter": "not_allowed"}, {"drop": null},
            ]),
        ] {
            assert!(fwd.contains(&rule), "{rule} missing from {fwd:?}");
        }
        assert_eq!(
            rules_in(&doc, "input"),
            vec![json!([
                iif("nf-web"),
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}},
                {"match": {"op": "!=", "left": {"ct": {"key": "state"}}, "right": {"set": ["established", "related"]}}},
                {"counter": "to_host_loopback"}, {"drop": null},
            ])]
        );
        // Packets for 127.0.0.0/8 from anywhere but lo, dropped at raw priority (before
        // conntrack and any DNAT): a container's (from any netfast bridge) and the network's.
        assert!(
            added(&doc, "chain").contains(&json!({"family": "ip", "table": "netfast",
                "name": "loopback", "type": "filter", "hook": "prerouting", "prio": -300,
                "policy": "accept"})),
            "{doc}"
        );
        let to_lo = json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "127.0.0.0", "len": 8}}}});
        assert_eq!(
            rules_in(&doc, "loopback"),
            vec![
                json!([iif("nf-web"), to_lo, {"counter": "to_host_loopback"}, {"drop": null}]),
                json!([iif("nf-db"), to_lo, {"counter": "to_host_loopback"}, {"drop": null}]),
                json!([
                    {"match": {"op": "!=", "left": {"meta": {"key": "iifname"}}, "right": "lo"}},
                    to_lo, {"counter": "loopback_from_network"}, {"drop": null},
                ]),
            ]
        );
        assert_eq!(
            added(&doc, "chain")
                .iter()
                .filter(|c| c["name"] == "timeouts")
                .count(),
            1
        );
        let text = nft_timeouts_text(&r.timeouts);
        for line in [
            "add ct timeout ip netfast tcp_timeouts { protocol tcp; l3proto ip; policy = { \
             established: 7440, syn_sent: 240, syn_recv: 240, fin_wait: 240, close_wait: 240, \
             last_ack: 240, time_wait: 240, close: 10 }; }\n",
            "add ct timeout ip netfast udp_timeouts { protocol udp; l3proto ip; policy = { \
             unreplied: 300, replied: 300 }; }\n",
            "add rule ip netfast timeouts ct timeout set \"udp_timeouts\"\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        // Where the kernel has no timeout policies: the same without them.
        let plain = nft_doc(&nft_batch(&r, &counts, false));
        assert!(added(&plain, "ct timeout").is_empty());
        assert!(!plain.to_string().contains("timeouts"), "{plain}");
        assert!(
            rules_in(&plain, "forward")
                .contains(&json!([iif("nf-web"), {"counter": "tx_1"}, {"accept": null}]))
        );
        // Nothing to serve: the batch only removes the table.
        assert_eq!(
            nft_doc(&nft_batch(&Rules::default(), &counts, true)),
            json!({"nftables": [{"add": table}, {"delete": table}]})
        );
    }

    /// A hostile name that got past validation (it cannot: see `validate::interface_name`)
    /// would still be a string in the JSON, not syntax.
    #[test]
    fn interface_names_are_json_strings_never_nft_syntax() {
        let mut st = state();
        st.networks[0].bridge = "x\"accept;#".into();
        let doc = nft_doc(&nft_batch(
            &Rules::of(&st, Backend::Nftables),
            &Counts::new(),
            true,
        ));
        assert!(
            rules_in(&doc, "forward")
                .iter()
                .any(|r| r[0]["match"]["right"] == "x\"accept;#")
        );
    }

    #[test]
    fn the_iptables_input_declares_every_chain_and_drops_through_counting_chains() {
        let st = State {
            networks: state()
                .networks
                .into_iter()
                .map(|mut n| {
                    n.backend = Backend::Iptables;
                    n
                })
                .collect(),
            ..state()
        };
        let r = Rules::of(&st, Backend::Iptables);
        let mut counts = Counts::new();
        counts.insert("direct_access".into(), (3, 180));
        counts.insert("rx_2".into(), (9, 900));
        let policies = super::super::cttimeout::policies(&r.timeouts);
        let (s, allow) = ipt_restore(&r, &counts, &policies);
        assert_eq!(allow, vec!["NETFAST-ALLOW-0".to_owned()]);
        for line in [
            ":NETFAST-PUBLISHED - [0:0]",
            ":NETFAST-ALLOW-0 - [0:0]",
            "-A NETFAST-PUBLISHED -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:80",
            "-A NETFAST-PUBLISHED -d 198.51.100.1/32 -p udp -m udp --dport 5000:5001 -j DNAT --to-destination 172.18.0.3\n",
            "-A NETFAST-POSTROUTING -s 172.18.0.0/24 -o \"eth0\" -j MASQUERADE",
            "[3:180] -A NETFAST-DIRECT-ACCESS -j DROP",
            "-A NETFAST-FORWARD -i \"nf-web\" -o \"nf-db\" -j NETFAST-INTER-NETWORK",
            "-A NETFAST-FORWARD -d 172.18.0.2/32 -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -j NETFAST-ALLOW-0",
            "-A NETFAST-ALLOW-0 -s 192.0.2.0/24 -j RETURN",
            "-A NETFAST-ALLOW-0 -j NETFAST-NOT-ALLOWED",
            "-A NETFAST-FORWARD ! -i \"nf-db\" -o \"nf-db\" -j NETFAST-DIRECT-ACCESS",
            "[9:900] -A NETFAST-FORWARD -o \"nf-db\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            "[0:0] -A NETFAST-FORWARD -o \"nf-db\" -m conntrack --ctstate DNAT -j ACCEPT",
            "[0:0] -A NETFAST-FORWARD -i \"nf-db\" -j ACCEPT",
            "-A NETFAST-INPUT -i \"nf-web\" -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED -j NETFAST-TO-HOST-LOOPBACK\n",
            "[0:0] -A NETFAST-TO-HOST-LOOPBACK -j DROP\n",
            "*raw\n:NETFAST-RAW-PREROUTING - [0:0]\n:NETFAST-RAW-OUTPUT - [0:0]\n:NETFAST-TIMEOUTS - [0:0]\n",
            "-A NETFAST-TIMEOUTS -p tcp -m tcp --tcp-flags FIN,SYN,RST,ACK SYN -j CT --timeout netfast-tcp\n",
            "-A NETFAST-TIMEOUTS -p udp -j CT --timeout netfast-udp\n",
            "-A NETFAST-TIMEOUTS -p icmp -m icmp --icmp-type 8 -j CT --timeout netfast-icmp\n",
            "-A NETFAST-RAW-PREROUTING -i \"nf-web\" -j NETFAST-TIMEOUTS\n",
            "-A NETFAST-RAW-PREROUTING -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 8080 -j NETFAST-TIMEOUTS\n",
            "-A NETFAST-RAW-OUTPUT -m addrtype --dst-type LOCAL -d 198.51.100.1/32 -p udp -m udp --dport 5000:5001 -j NETFAST-TIMEOUTS\n",
        ] {
            assert!(s.contains(line), "{line} missing from\n{s}");
        }
        assert_eq!(s.matches("COMMIT\n").count(), 3);
        // Without timeout policies in the kernel: the raw table only guards 127.0.0.0/8.
        counts.insert(ipt_raw_counter("loopback_from_network"), (4, 240));
        let (s, _) = ipt_restore(&r, &counts, &[]);
        assert!(
            !s.contains("-j NETFAST-TIMEOUTS") && !s.contains("CT --timeout"),
            "{s}"
        );
        for line in [
            "*raw\n",
            ":NETFAST-LOOPBACK-FROM-NET - [0:0]\n",
            "[0:0] -A NETFAST-TO-HOST-LOOPBACK -j DROP\n",
            "[4:240] -A NETFAST-LOOPBACK-FROM-NET -j DROP\n",
            "-A NETFAST-RAW-PREROUTING -i \"nf-web\" -d 127.0.0.0/8 -j NETFAST-TO-HOST-LOOPBACK\n\
             -A NETFAST-RAW-PREROUTING -i \"nf-db\" -d 127.0.0.0/8 -j NETFAST-TO-HOST-LOOPBACK\n\
             -A NETFAST-RAW-PREROUTING ! -i lo -d 127.0.0.0/8 -j NETFAST-LOOPBACK-FROM-NET\n",
        ] {
            assert!(s.contains(line), "{line} missing from\n{s}");
        }
        assert_eq!(s.matches("COMMIT\n").count(), 3);
        // Every chain name fits iptables' 28 characters.
        for (_, chain, _) in IPT_CHAINS {
            assert!(chain.len() <= 28, "{chain}");
        }
    }
}
