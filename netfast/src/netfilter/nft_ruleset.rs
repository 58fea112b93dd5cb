//! Reading `nft -j list ruleset`: tables, base chains with their hooks and policies, and NAT
//! rules with what they match; `nft -a list ruleset` gives each rule's text by handle; `nft
//! -j list counters` the named counters.

use std::{collections::HashMap, net::Ipv4Addr};

use ipnet::Ipv4Net;
use serde_json::Value;

use super::matches::{AddrSet, Match, Matches, Nat, NatRule, read_or_nothing};
use crate::loader::publish::Ports;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<TableId>,
    pub chains: Vec<NftChain>,
    pub rules: Vec<NftRule>,
}

/// `family name`, as in `ip docker-bridges`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TableId {
    pub family: String,
    pub name: String,
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.family, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftChain {
    pub table: TableId,
    pub name: String,
    /// Base chains only.
    pub hook: Option<String>,
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    pub table: TableId,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
    pub nat: Option<NatRule>,
    /// The rule as `nft -a list ruleset` prints it, without its handle.
    pub text: Option<String>,
}

impl TableId {
    /// netfast's own table (`ip netfast`).
    pub fn is_netfast(&self) -> bool {
        self.name == "netfast"
    }

    /// Families whose rules see IPv4 packets.
    pub fn is_ipv4(&self) -> bool {
        self.family == "ip" || self.family == "inet"
    }
}

impl NftRule {
    pub fn is_netfast(&self) -> bool {
        self.table.is_netfast()
            || self
                .comment
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().contains("netfast"))
    }
}

fn table_id(o: &Value) -> Option<TableId> {
    Some(TableId {
        family: o["family"].as_str()?.to_owned(),
        name: o
            .get("table")
            .or_else(|| o.get("name"))?
            .as_str()?
            .to_owned(),
    })
}

/// Parses `nft -j list ruleset`. `texts`: rule texts by (table, chain, handle), from
/// [`parse_text`], for describing rules to a human.
pub fn parse_json(json: &str, texts: &HashMap<(TableId, String, u64), String>) -> Option<Ruleset> {
    let doc: Value = serde_json::from_str(json).ok()?;
    let mut rs = Ruleset::default();
    for item in doc["nftables"].as_array()? {
        if let Some(t) = item.get("table") {
            rs.tables.extend(table_id(t));
        } else if let Some(c) = item.get("chain") {
            let (Some(table), Some(name)) = (table_id(c), c["name"].as_str()) else {
                continue;
            };
            rs.chains.push(NftChain {
                table,
                name: name.to_owned(),
                hook: c["hook"].as_str().map(str::to_owned),
                policy: c["policy"].as_str().map(str::to_owned),
            });
        } else if let Some(r) = item.get("rule") {
            let (Some(table), Some(chain), Some(handle)) =
                (table_id(r), r["chain"].as_str(), r["handle"].as_u64())
            else {
                continue;
            };
            let text = texts.get(&(table.clone(), chain.to_owned(), handle));
            let nat = nat_rule(r, &table, chain, handle, text.map(String::as_str));
            rs.rules.push(NftRule {
                table,
                chain: chain.to_owned(),
                handle,
                comment: r["comment"].as_str().map(str::to_owned),
                nat,
                text: text.cloned(),
            });
        }
    }
    Some(rs)
}

fn nat_kind(expr: &Value) -> Option<Nat> {
    let o = expr.as_object()?;
    [
        ("masquerade", Nat::Masquerade),
        ("snat", Nat::Snat),
        ("dnat", Nat::Dnat),
        ("redirect", Nat::Redirect),
    ]
    .into_iter()
    .find(|(k, _)| o.contains_key(*k))
    .map(|(_, n)| n)
}

fn nat_rule(
    r: &Value,
    table: &TableId,
    chain: &str,
    handle: u64,
    text: Option<&str>,
) -> Option<NatRule> {
    let exprs = r["expr"].as_array()?;
    let kind = exprs.iter().find_map(nat_kind)?;
    let place = format!("{table} {chain} handle {handle}");
    let mut rule = NatRule {
        kind,
        describe: match text {
            Some(t) => format!("`{t}` (nft, chain {table} {chain}, handle {handle})"),
            None => format!("nft rule {place}"),
        },
        delete: format!("nft delete rule {place}"),
        matches: Matches::default(),
    };
    for m in exprs.iter().filter_map(|e| e.get("match")) {
        let negated = match m["op"].as_str() {
            Some("==" | "in") => false,
            Some("!=") => true,
            // Masks, comparisons: not something this reads.
            _ => continue,
        };
        let (left, right) = (&m["left"], &m["right"]);
        if let Some(p) = left.get("payload") {
            match (p["protocol"].as_str(), p["field"].as_str()) {
                (Some("ip"), Some("saddr")) => {
                    rule.matches.source = Some(read_or_nothing(addrs(right), negated));
                }
                (Some("ip"), Some("daddr")) => {
                    rule.matches.destination = Some(read_or_nothing(addrs(right), negated));
                }
                (Some(proto), Some("dport")) => {
                    rule.matches.dports = Some(read_or_nothing(ports(right), negated));
                    if proto == "tcp" || proto == "udp" {
                        rule.matches.proto = Some(Match::new(false, proto.to_owned()));
                    }
                }
                _ => {}
            }
        } else if let Some(key) = left.get("meta").and_then(|m| m["key"].as_str()) {
            match key {
                "iifname" => rule.matches.in_iface = Some(read_or_nothing(names(right), negated)),
                "oifname" => rule.matches.out_iface = Some(read_or_nothing(names(right), negated)),
                "l4proto" => {
                    rule.matches.proto = right.as_str().map(|p| Match::new(negated, p.to_owned()));
                }
                _ => {}
            }
        }
    }
    Some(rule)
}

/// Members of a set, or the value itself.
fn members(v: &Value) -> Vec<&Value> {
    match v.get("set").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![v],
    }
}

/// `"172.18.0.2"`, `{"prefix": {"addr", "len"}}`, `{"range": [a, b]}`, or a set of them;
/// `None` for what cannot be read here (a named set, say).
fn addrs(v: &Value) -> Option<AddrSet> {
    let mut set = AddrSet::default();
    for m in members(v) {
        if let Some(s) = m.as_str() {
            let ip: Ipv4Addr = s.parse().ok()?;
            set.0.extend(AddrSet::net(Ipv4Net::from(ip)).0);
        } else if let Some(p) = m.get("prefix") {
            let ip: Ipv4Addr = p["addr"].as_str()?.parse().ok()?;
            let len = u8::try_from(p["len"].as_u64()?).ok()?;
            set.0
                .extend(AddrSet::net(Ipv4Net::new(ip, len).ok()?.trunc()).0);
        } else if let Some([a, b]) = m.get("range").and_then(Value::as_array).map(Vec::as_slice) {
            let (a, b): (Ipv4Addr, Ipv4Addr) =
                (a.as_str()?.parse().ok()?, b.as_str()?.parse().ok()?);
            set.0.extend(AddrSet::range(a, b).0);
        } else {
            return None;
        }
    }
    Some(set)
}

/// `8080`, `{"range": [8000, 8010]}`, or a set of them.
fn ports(v: &Value) -> Option<Vec<Ports>> {
    members(v)
        .into_iter()
        .map(|m| {
            let port = |v: &Value| u16::try_from(v.as_u64()?).ok();
            if let Some(p) = port(m) {
                return Some(Ports { first: p, last: p });
            }
            let [a, b] = m.get("range")?.as_array()?.as_slice() else {
                return None;
            };
            Some(Ports {
                first: port(a)?,
                last: port(b)?,
            })
        })
        .collect()
}

/// Interface names (`"eth*"` is a wildcard), or a set of them.
fn names(v: &Value) -> Option<Vec<String>> {
    members(v)
        .into_iter()
        .map(|m| m.as_str().map(str::to_owned))
        .collect()
}

/// A named counter of a table (`counter name NAME` in its rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// The named counters in `nft -j list counters …` (or `list ruleset`) output; an error only
/// when it is not JSON at all.
pub fn parse_counters(json: &str) -> Result<Vec<Counter>, serde_json::Error> {
    let doc: Value = serde_json::from_str(json)?;
    Ok(doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let c = &item["counter"];
            Some(Counter {
                name: c["name"].as_str()?.to_owned(),
                packets: c["packets"].as_u64()?,
                bytes: c["bytes"].as_u64()?,
            })
        })
        .collect())
}

/// Rule texts by (table, chain, handle) from `nft -a list ruleset`.
pub fn parse_text(text: &str) -> HashMap<(TableId, String, u64), String> {
    let mut out = HashMap::new();
    let mut table: Option<TableId> = None;
    let mut chain: Option<String> = None;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["table", family, name, ..] => {
                table = Some(TableId {
                    family: (*family).to_owned(),
                    name: (*name).to_owned(),
                });
                chain = None;
            }
            ["chain", name, ..] => chain = Some((*name).to_owned()),
            _ => {
                let (Some(t), Some(c)) = (&table, &chain) else {
                    continue;
                };
                let Some((rule, handle)) = line.rsplit_once("# handle ") else {
                    continue;
                };
                // Lines with a handle inside a chain are rules (`type …;` lines have none).
                if let Ok(handle) = handle.trim().parse::<u64>() {
                    out.insert((t.clone(), c.clone(), handle), rule.trim().to_owned());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // `nft -j list ruleset` after iptables-nft made a Docker-like ruleset and a Docker-like
    // nftables table was added (nft 1.0.6).
    const JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
 {"table": {"family": "ip", "name": "nat", "handle": 2}},
 {"chain": {"family": "ip", "table": "nat", "name": "POSTROUTING", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "nat", "chain": "POSTROUTING", "handle": 2, "expr": [{"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "172.18.0.0", "len": 24}}}}, {"counter": {"packets": 0, "bytes": 0}}, {"xt": {"type": "target", "name": "MASQUERADE"}}]}},
 {"table": {"family": "ip", "name": "docker-bridges", "handle": 3}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "nat-postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
 {"chain": {"family": "ip", "table": "docker-bridges", "name": "nat-prerouting", "handle": 4, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-postrouting", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "172.18.0.0", "len": 24}}}}, {"match": {"op": "!=", "left": {"meta": {"key": "oifname"}}, "right": "docker0"}}, {"masquerade": null}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-prerouting", "handle": 5, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, {"range": [8000, 8010]}]}}}, {"dnat": {"addr": "10.0.0.1"}}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-prerouting", "handle": 6, "comment": "netfast x", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "198.51.100.1"}}, {"dnat": {"addr": "10.0.0.1", "port": 80}}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "nat-prerouting", "handle": 7, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "172.18.0.5", {"range": ["172.18.0.0", "172.18.0.20"]}]}}}, {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, {"snat": {"addr": "1.2.3.4"}}]}},
 {"rule": {"family": "ip", "table": "docker-bridges", "chain": "forward", "handle": 8, "expr": [{"accept": null}]}}
]}"#;

    const TEXT: &str = r#"table ip docker-bridges { # handle 3
	chain nat-postrouting { # handle 1
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 172.18.0.0/24 oifname != "docker0" masquerade # handle 2
	}
	chain forward { # handle 3
		type filter hook forward priority filter; policy drop;
	}
}
"#;

    fn id(family: &str, name: &str) -> TableId {
        TableId {
            family: family.into(),
            name: name.into(),
        }
    }

    #[test]
    fn texts_by_handle() {
        let t = parse_text(TEXT);
        assert_eq!(t.len(), 1);
        assert_eq!(
            t[&(id("ip", "docker-bridges"), "nat-postrouting".into(), 2)],
            r#"ip saddr 172.18.0.0/24 oifname != "docker0" masquerade"#
        );
    }

    #[test]
    fn ruleset() {
        let rs = parse_json(JSON, &parse_text(TEXT)).expect("parses");
        assert_eq!(rs.tables, [id("ip", "nat"), id("ip", "docker-bridges")]);
        let forward = rs.chains.iter().find(|c| c.name == "forward").unwrap();
        assert_eq!(forward.hook.as_deref(), Some("forward"));
        assert_eq!(forward.policy.as_deref(), Some("drop"));
        assert_eq!(rs.rules.len(), 6);

        // iptables-nft's rule: an xt target the JSON does not spell out as NAT.
        assert_eq!(rs.rules[0].nat, None);

        let masq = rs.rules[1].nat.as_ref().expect("masquerade");
        assert_eq!(masq.kind, Nat::Masquerade);
        assert_eq!(masq.matches, Matches::docker_masquerade());
        assert_eq!(
            masq.delete,
            "nft delete rule ip docker-bridges nat-postrouting handle 2"
        );
        assert!(
            masq.describe
                .contains(r#"`ip saddr 172.18.0.0/24 oifname != "docker0" masquerade`"#)
        );

        let dnat = rs.rules[2].nat.as_ref().expect("dnat");
        assert_eq!(dnat.kind, Nat::Dnat);
        assert_eq!(dnat.matches.proto, Some(Match::new(false, "tcp".into())));
        assert_eq!(
            dnat.matches.dports,
            Some(Match::new(
                false,
                vec![
                    Ports {
                        first: 80,
                        last: 80
                    },
                    Ports {
                        first: 8000,
                        last: 8010
                    }
                ]
            ))
        );
        assert_eq!(
            dnat.describe,
            "nft rule ip docker-bridges nat-prerouting handle 5"
        );

        assert!(rs.rules[3].is_netfast(), "comment naming netfast");
        assert!(!rs.rules[2].is_netfast());

        let snat = rs.rules[4].nat.as_ref().expect("snat");
        assert_eq!(snat.matches.proto, Some(Match::new(false, "udp".into())));
        let source = &snat.matches.source.as_ref().unwrap().value;
        assert_eq!(source.0.len(), 3);
        assert!(source.covers("172.18.0.8/29".parse().unwrap()));
        assert!(!source.covers("172.18.0.16/29".parse().unwrap()));
        assert_eq!(rs.rules[5].nat, None);
    }

    #[test]
    fn named_counters() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"counter": {"family": "ip", "name": "not_allowed", "table": "netfast", "handle": 3, "packets": 7, "bytes": 420}},
 {"counter": {"family": "ip", "name": "rx_1", "table": "netfast", "handle": 4, "packets": 0, "bytes": 0}}]}"#;
        assert_eq!(
            parse_counters(json).unwrap(),
            [
                Counter {
                    name: "not_allowed".into(),
                    packets: 7,
                    bytes: 420
                },
                Counter {
                    name: "rx_1".into(),
                    packets: 0,
                    bytes: 0
                }
            ]
        );
        assert_eq!(parse_counters("{}").unwrap(), []);
        assert!(parse_counters("not json").is_err());
    }

    #[test]
    fn unreadable() {
        assert_eq!(parse_json("not json", &HashMap::new()), None);
        assert_eq!(parse_json("{}", &HashMap::new()), None);
        // A named set: the source stays unknown rather than guessed.
        let v: Value = serde_json::json!({"set": ["@mynets"]});
        assert_eq!(addrs(&v), None);
        assert_eq!(addrs(&serde_json::json!("@mynets")), None);
        let unknown = read_or_nothing(addrs(&v), true);
        assert!(!unknown.negated && !unknown.value.overlaps("0.0.0.0/0".parse().unwrap()));
        assert!(id("ip", "netfast").is_netfast());
        assert!(!id("ip6", "filter").is_ipv4());
    }
}
