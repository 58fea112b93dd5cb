//! netfast's rules as one nftables table, `ip netfast`: the JSON batch `nft -j -f -` takes
//! ([`super::nft_batch`]), and the conntrack timeout policies as nft text.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{
    nft_batch::{Batch, Expr, Hook, Stmt},
    rules::{Counts, DROP_REASONS, Rules, Way, net_counter},
};
use crate::loader::model::Timeouts;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        loader::{model::Backend, publish::Ports},
        netfilter::rules::tests::state,
    };

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
}
