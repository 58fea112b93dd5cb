//! Whether a NAT rule read from iptables or nftables ([`NatRule`]) translates what netfast
//! already translates: a masquerade/SNAT of a netfast subnet leaving through its uplink, or a
//! DNAT/REDIRECT of a port netfast publishes.

use ipnet::Ipv4Net;

use crate::{
    loader::{
        model::{Network, State},
        publish::{Ports, Proto, Publication},
    },
    netfilter::{AddrSet, Match, Nat, NatRule},
};

/// An interface pattern (`eth+` in iptables, `eth*` in nftables) matching a name.
fn iface_matches(pattern: &str, name: &str) -> bool {
    match pattern
        .strip_suffix('+')
        .or_else(|| pattern.strip_suffix('*'))
    {
        Some(prefix) => name.starts_with(prefix),
        None => pattern == name,
    }
}

/// Whether an interface match lets packets through `name`; no match lets everything through.
fn iface_applies(m: &Option<Match<Vec<String>>>, name: &str) -> bool {
    m.as_ref()
        .is_none_or(|m| m.value.iter().any(|p| iface_matches(p, name)) != m.negated)
}

/// Whether an address match takes some address of `net`.
fn addr_applies(m: &Option<Match<AddrSet>>, net: Ipv4Net) -> bool {
    match m {
        None => true,
        Some(Match {
            negated: false,
            value,
        }) => value.overlaps(net),
        Some(Match {
            negated: true,
            value,
        }) => !value.covers(net),
    }
}

fn proto_applies(m: &Option<Match<String>>, proto: Proto) -> bool {
    m.as_ref().is_none_or(|m| {
        let same = match m.value.as_str() {
            "all" | "0" => true,
            "tcp" | "6" => proto == Proto::Tcp,
            "udp" | "17" => proto == Proto::Udp,
            _ => false,
        };
        same != m.negated
    })
}

fn ports_apply(m: &Option<Match<Vec<Ports>>>, ports: &Ports) -> bool {
    match m {
        None => true,
        Some(Match {
            negated: false,
            value,
        }) => value.iter().any(|p| p.overlaps(ports)),
        Some(Match {
            negated: true,
            value,
        }) => !value
            .iter()
            .any(|p| p.first <= ports.first && ports.last <= p.last),
    }
}

/// Why `rule` translates traffic of `state` a second time, if it does.
pub fn double_translation(rule: &NatRule, state: &State) -> Option<String> {
    match rule.kind {
        Nat::Masquerade | Nat::Snat => {
            state
                .networks
                .iter()
                .find(|n| masquerades(rule, n))
                .map(|n| {
                    format!(
                        "it source-translates network {} ({}) leaving through {}, which netfast \
                     masquerades already",
                        n.name, n.subnet, n.uplink
                    )
                })
        }
        Nat::Dnat | Nat::Redirect => state
            .publications
            .iter()
            .find(|p| redirects(rule, p, state))
            .map(|p| {
                format!(
                    "it redirects {} port {}, which netfast publishes ({} {})",
                    p.proto, p.host_ports, p.network, p.spec
                )
            }),
    }
}

fn masquerades(rule: &NatRule, network: &Network) -> bool {
    network.masquerade
        && addr_applies(&rule.matches.source, network.subnet)
        && iface_applies(&rule.matches.out_iface, &network.uplink)
}

fn redirects(rule: &NatRule, p: &Publication, state: &State) -> bool {
    if !proto_applies(&rule.matches.proto, p.proto) {
        return false;
    }
    let uplink = state.network(&p.network).map(|n| n.uplink.as_str());
    if uplink.is_some_and(|u| !iface_applies(&rule.matches.in_iface, u)) {
        return false;
    }
    match (&rule.matches.destination, p.host_ip) {
        (Some(_), Some(ip)) if !addr_applies(&rule.matches.destination, Ipv4Net::from(ip)) => {
            return false;
        }
        // A whole-address rule (1:1 NAT of some address) without ports: only a publication
        // on that very address would meet it.
        (Some(_), None) if rule.matches.dports.is_none() => return false,
        _ => {}
    }
    ports_apply(&rule.matches.dports, &p.host_ports)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::{
        model::State,
        publish::{Ports, Proto},
    };
    use crate::netfilter::Matches;

    /// A port range match, negated or not.
    fn ports(negated: bool, first: u16, last: u16) -> Match<Vec<Ports>> {
        Match::new(negated, vec![Ports { first, last }])
    }

    fn state() -> State {
        let json = serde_json::json!({
            "networks": [{
                "name": "web", "id": 1, "subnet": "172.18.0.0/24", "gateway": "172.18.0.1",
                "bridge": "nf-web", "uplink": "up0"
            }, {
                "name": "routed", "id": 2, "subnet": "10.9.0.0/24", "gateway": "10.9.0.1",
                "bridge": "nf-routed", "uplink": "up0", "masquerade": false
            }],
            "publications": [{
                "network": "web", "spec": "8080:ct1:80/tcp", "host_ip": null,
                "host_ports": {"first": 8080, "last": 8080}, "container": "ct1",
                "container_ip": "172.18.0.2", "container_ports": {"first": 80, "last": 80},
                "proto": "tcp"
            }]
        });
        serde_json::from_value(json).expect("a state")
    }

    fn rule(kind: Nat) -> NatRule {
        NatRule {
            kind,
            describe: "r".into(),
            delete: "d".into(),
            matches: Matches::default(),
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn docker_masquerade_overlaps() {
        let s = state();
        let mut r = rule(Nat::Masquerade);
        r.matches.source = Some(Match::new(false, AddrSet::net(net("172.18.0.0/24"))));
        r.matches.out_iface = Some(Match::new(true, vec!["docker0".into()]));
        let why = double_translation(&r, &s).expect("overlaps");
        assert!(why.contains("network web (172.18.0.0/24)"), "{why}");

        // Another subnet, or a rule for another interface: no.
        r.matches.source = Some(Match::new(false, AddrSet::net(net("172.17.0.0/16"))));
        assert_eq!(double_translation(&r, &s), None);
        r.matches.source = Some(Match::new(false, AddrSet::net(net("172.16.0.0/12"))));
        assert!(double_translation(&r, &s).is_some(), "a covering prefix");
        r.matches.out_iface = Some(Match::new(false, vec!["eth+".into()]));
        assert_eq!(double_translation(&r, &s), None);
        r.matches.out_iface = Some(Match::new(false, vec!["up+".into()]));
        assert!(
            double_translation(&r, &s).is_some(),
            "wildcard matching the uplink"
        );

        // No source: every source, ours included.
        let r = rule(Nat::Snat);
        assert!(double_translation(&r, &s).is_some());
        // A source excluded by negation.
        let mut r = rule(Nat::Masquerade);
        r.matches.source = Some(Match::new(true, AddrSet::net(net("172.18.0.0/16"))));
        assert_eq!(double_translation(&r, &s), None);
        r.matches.source = Some(Match::new(true, AddrSet::net(net("172.18.0.0/25"))));
        assert!(
            double_translation(&r, &s).is_some(),
            "half the subnet is left"
        );
        // The routed network is not masqueraded by netfast: its rule is the only one.
        r.matches.source = Some(Match::new(false, AddrSet::net(net("10.9.0.0/24"))));
        assert_eq!(double_translation(&r, &s), None);
        // Ranges, as nft writes them.
        r.matches.source = Some(Match::new(
            false,
            AddrSet::range(
                "172.18.0.200".parse().unwrap(),
                "172.18.1.5".parse().unwrap(),
            ),
        ));
        assert!(double_translation(&r, &s).is_some());
    }

    #[test]
    fn dnat_overlaps_published_ports() {
        let s = state();
        let mut r = rule(Nat::Dnat);
        r.matches.proto = Some(Match::new(false, "tcp".into()));
        r.matches.in_iface = Some(Match::new(true, vec!["docker0".into()]));
        r.matches.dports = Some(ports(false, 8080, 8080));
        let why = double_translation(&r, &s).expect("overlaps");
        assert!(
            why.contains("tcp port 8080") && why.contains("8080:ct1:80/tcp"),
            "{why}"
        );

        r.matches.proto = Some(Match::new(false, "udp".into()));
        assert_eq!(double_translation(&r, &s), None, "another protocol");
        r.matches.proto = None;
        r.matches.dports = Some(ports(false, 8000, 8079));
        assert_eq!(double_translation(&r, &s), None, "other ports");
        r.matches.dports = Some(ports(false, 8000, 9000));
        assert!(double_translation(&r, &s).is_some(), "a covering range");
        r.matches.dports = Some(ports(true, 8080, 8080));
        assert_eq!(double_translation(&r, &s), None, "all but ours");
        r.matches.dports = None;
        assert!(double_translation(&r, &s).is_some(), "every port");
        r.matches.destination = Some(Match::new(false, AddrSet::net(net("192.0.2.9/32"))));
        assert_eq!(
            double_translation(&r, &s),
            None,
            "1:1 NAT of another address"
        );
        r.matches.dports = Some(ports(false, 8080, 8080));
        assert!(
            double_translation(&r, &s).is_some(),
            "port 8080 of any host address"
        );
        r.matches.in_iface = Some(Match::new(false, vec!["eth0".into()]));
        assert_eq!(double_translation(&r, &s), None, "another interface");
        assert!(proto_applies(
            &Some(Match::new(true, "udp".into())),
            Proto::Tcp
        ));
    }
}
