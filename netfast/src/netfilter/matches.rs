//! What a rule read from iptables or nftables matches and does, in one shape for both:
//! what [`super::iptables_save`] and [`super::nft_ruleset`] read, and what the doctor
//! compares with netfast's networks and ports.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::loader::publish::Ports;

/// A match, possibly negated (`! -s 10.0.0.0/8`, `oifname != "docker0"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match<T> {
    pub negated: bool,
    pub value: T,
}

impl<T> Match<T> {
    pub fn new(negated: bool, value: T) -> Self {
        Match { negated, value }
    }
}

/// A match read from `value`; one that cannot be read (a named set, say) matches nothing, so
/// that the doctor never blames a rule it does not understand.
pub fn read_or_nothing<T: Default>(value: Option<T>, negated: bool) -> Match<T> {
    match value {
        Some(v) => Match::new(negated, v),
        None => Match::new(false, T::default()),
    }
}

/// A set of IPv4 addresses: inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddrSet(pub Vec<(u32, u32)>);

fn span(net: Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

impl AddrSet {
    pub fn net(net: Ipv4Net) -> Self {
        AddrSet(vec![span(net)])
    }

    pub fn range(first: Ipv4Addr, last: Ipv4Addr) -> Self {
        AddrSet(vec![(u32::from(first), u32::from(last))])
    }

    pub fn overlaps(&self, net: Ipv4Net) -> bool {
        let (a, b) = span(net);
        self.0.iter().any(|&(x, y)| x <= b && a <= y)
    }

    pub fn covers(&self, net: Ipv4Net) -> bool {
        let (a, b) = span(net);
        self.0.iter().any(|&(x, y)| x <= a && b <= y)
    }
}

/// What a rule does to addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    Masquerade,
    Snat,
    Dnat,
    Redirect,
}

/// A NAT rule from any source, with what it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRule {
    pub kind: Nat,
    /// The rule for a human, with where it lives.
    pub describe: String,
    /// The exact command that deletes it.
    pub delete: String,
    pub matches: Matches,
}

/// What a rule matches, as far as the doctor needs to know; `None` where the rule says
/// nothing of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matches {
    pub source: Option<Match<AddrSet>>,
    pub destination: Option<Match<AddrSet>>,
    pub in_iface: Option<Match<Vec<String>>>,
    pub out_iface: Option<Match<Vec<String>>>,
    /// `tcp`, `udp`, `all`, a number.
    pub proto: Option<Match<String>>,
    pub dports: Option<Match<Vec<Ports>>>,
}

impl Matches {
    /// What Docker's masquerade of its bridge network matches, in both syntaxes
    /// (`-s 172.18.0.0/24 ! -o docker0`, `ip saddr 172.18.0.0/24 oifname != "docker0"`).
    #[cfg(test)]
    pub fn docker_masquerade() -> Matches {
        Matches {
            source: Some(Match::new(
                false,
                AddrSet::net("172.18.0.0/24".parse().unwrap()),
            )),
            out_iface: Some(Match::new(true, vec!["docker0".into()])),
            ..Matches::default()
        }
    }
}
