//! netfast's rules as iptables chains (`NETFAST-…`): the `iptables-restore --noflush` input
//! that declares and fills them, the chains and the built-in chains that jump to them, and
//! the rules whose counters `netfast stats` reads back.

use std::fmt::Write as _;

use super::cttimeout;
use super::rules::{Counts, Net, Rules, Way, net_counter};
use crate::loader::publish::Ports;

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

/// The iptables rules whose counters are network `net`'s packets going `way`, as
/// `iptables-save` prints them (the first carries the total over a restore).
pub fn ipt_net_rules(net: &Net, way: Way) -> Vec<String> {
    ipt_net_rules_as(net, way, std::borrow::ToOwned::to_owned)
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
    timeouts: &[cttimeout::Policy],
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
    use crate::{
        loader::model::{Backend, State},
        netfilter::rules::tests::state,
    };

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
        let policies = cttimeout::policies(&r.timeouts);
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
