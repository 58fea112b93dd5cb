//! Reading `iptables-save` output (any backend, with `-c` or without): tables, chains with
//! their policies, and each rule with its counters and the parts the doctor compares with
//! netfast's networks and ports.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::matches::{AddrSet, Match, Matches, Nat, NatRule, read_or_nothing};
use crate::loader::publish::Ports;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Save {
    pub tables: Vec<Table>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `ACCEPT`/`DROP` for a built-in chain, `None` for a user chain (`-`).
    pub policy: Option<String>,
}

/// One `-A CHAIN …` line and what the doctor reads from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    /// The line as saved, without its counters (`-A POSTROUTING -s 172.18.0.0/24 ! -o
    /// docker0 -j MASQUERADE`).
    pub text: String,
    /// Packets and bytes, as `iptables-save -c` prints them (`[12:720] -A …`).
    pub counters: Option<(u64, u64)>,
    pub matches: Matches,
    pub target: Option<String>,
    pub comment: Option<String>,
}

impl Save {
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The policy of a built-in chain (`FORWARD` of `filter`).
    pub fn policy(&self, table: &str, chain: &str) -> Option<&str> {
        self.table(table)?
            .chains
            .iter()
            .find(|c| c.name == chain)?
            .policy
            .as_deref()
    }

    /// Every rule with its table, netfast's own left out.
    pub fn foreign_rules(&self) -> impl Iterator<Item = (&Table, &Rule)> {
        self.tables
            .iter()
            .flat_map(|t| t.rules.iter().map(move |r| (t, r)))
            .filter(|(_, r)| !r.is_netfast())
    }
}

impl Rule {
    /// netfast's own: in a `NETFAST-…` chain, or with a comment naming netfast.
    pub fn is_netfast(&self) -> bool {
        self.chain.starts_with("NETFAST-")
            || self
                .target
                .as_deref()
                .is_some_and(|t| t.starts_with("NETFAST-"))
            || self
                .comment
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().contains("netfast"))
    }

    /// The rule as a NAT rule, when it translates addresses.
    pub fn nat(&self) -> Option<Nat> {
        match self.target.as_deref()? {
            "MASQUERADE" => Some(Nat::Masquerade),
            "SNAT" => Some(Nat::Snat),
            "DNAT" => Some(Nat::Dnat),
            "REDIRECT" => Some(Nat::Redirect),
            _ => None,
        }
    }

    pub fn to_nat_rule(&self, table: &str, origin: &str, command: &str) -> Option<NatRule> {
        let kind = self.nat()?;
        let delete = self.text.strip_prefix("-A ").map_or_else(
            || format!("{command} -t {table} -D {}", self.text),
            |rest| format!("{command} -t {table} -D {rest}"),
        );
        Some(NatRule {
            kind,
            describe: format!("`{}` ({origin}, table {table})", self.text),
            delete,
            matches: self.matches.clone(),
        })
    }
}

/// Parses the output of `iptables-save` (any backend).
pub fn parse_save(text: &str) -> Save {
    let mut save = Save::default();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            save.tables.push(Table {
                name: name.to_owned(),
                chains: Vec::new(),
                rules: Vec::new(),
            });
            continue;
        }
        let Some(table) = save.tables.last_mut() else {
            continue;
        };
        if let Some(chain) = line.strip_prefix(':') {
            let mut words = chain.split_whitespace();
            if let Some(name) = words.next() {
                let policy = words.next().filter(|p| *p != "-").map(str::to_owned);
                table.chains.push(Chain {
                    name: name.to_owned(),
                    policy,
                });
            }
        } else if line.starts_with("-A ") {
            table.rules.push(parse_rule(line));
        } else if let Some((counters, rule)) = counted(line) {
            table.rules.push(Rule {
                counters: Some(counters),
                ..parse_rule(rule)
            });
        }
    }
    save
}

/// `[packets:bytes] -A …`: the counters and the rule.
fn counted(line: &str) -> Option<((u64, u64), &str)> {
    let (counters, rule) = line.strip_prefix('[')?.split_once("] ")?;
    let (p, b) = counters.split_once(':')?;
    let rule = rule.trim_start();
    rule.starts_with("-A ")
        .then_some(((p.parse().ok()?, b.parse().ok()?), rule))
}

/// Splits a saved rule into words as a shell would: `"…"` quotes, `\` escapes inside them.
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(word);
    }
    out
}

fn addr(text: &str) -> Option<AddrSet> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Some(AddrSet::net(net));
    }
    if let Ok(ip) = text.parse::<Ipv4Addr>() {
        return Some(AddrSet::net(Ipv4Net::from(ip)));
    }
    // 10.0.0.0/255.0.0.0: iptables prints masks that are not prefixes this way.
    let (ip, mask) = text.split_once('/')?;
    let (ip, mask) = (ip.parse::<Ipv4Addr>().ok()?, mask.parse::<Ipv4Addr>().ok()?);
    let prefix = Ipv4Net::with_netmask(ip, mask).ok()?;
    Some(AddrSet::net(prefix))
}

/// `8080`, `8000:8010`, `80,443,8000:8010`.
pub fn port_list(text: &str) -> Option<Vec<Ports>> {
    text.split(',')
        .map(|p| {
            let (a, b) = p.split_once(':').unwrap_or((p, p));
            let first = if a.is_empty() { 0 } else { a.parse().ok()? };
            let last = if b.is_empty() {
                u16::MAX
            } else {
                b.parse().ok()?
            };
            (first <= last).then_some(Ports { first, last })
        })
        .collect()
}

fn parse_rule(line: &str) -> Rule {
    let words = words(line);
    let mut rule = Rule {
        text: line.to_owned(),
        ..Rule::default()
    };
    let mut negated = false;
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        let value = words.get(i + 1).map(String::as_str);
        if word == "!" {
            negated = true;
            i += 1;
            continue;
        }
        let taken = match (word, value) {
            ("-A" | "--append", Some(v)) => {
                v.clone_into(&mut rule.chain);
                true
            }
            ("-s" | "--source", Some(v)) => {
                rule.matches.source = Some(read_or_nothing(addr(v), negated));
                true
            }
            ("-d" | "--destination", Some(v)) => {
                rule.matches.destination = Some(read_or_nothing(addr(v), negated));
                true
            }
            ("-i" | "--in-interface", Some(v)) => {
                rule.matches.in_iface = Some(Match::new(negated, vec![v.to_owned()]));
                true
            }
            ("-o" | "--out-interface", Some(v)) => {
                rule.matches.out_iface = Some(Match::new(negated, vec![v.to_owned()]));
                true
            }
            ("-p" | "--protocol", Some(v)) => {
                rule.matches.proto = Some(Match::new(negated, v.to_ascii_lowercase()));
                true
            }
            ("--dport" | "--destination-port" | "--dports" | "--destination-ports", Some(v)) => {
                rule.matches.dports = Some(read_or_nothing(port_list(v), negated));
                true
            }
            ("-j" | "--jump" | "-g" | "--goto", Some(v)) => {
                rule.target = Some(v.to_owned());
                true
            }
            ("--comment", Some(v)) => {
                rule.comment = Some(v.to_owned());
                true
            }
            _ => false,
        };
        negated = false;
        i += if taken { 2 } else { 1 };
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "\
# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 13:46:55 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -p tcp -m multiport --dports 80,443,8000:8010 -j ACCEPT
COMMIT
# Completed on Sun Nov 22 13:46:55 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:NETFAST-POST - [0:0]
-A POSTROUTING -s 172.18.0.0/24 ! -o docker0 -j MASQUERADE
-A POSTROUTING -m comment --comment \"netfast \\\"web\\\" masquerade\" -j ACCEPT
-A POSTROUTING -j NETFAST-POST
-A NETFAST-POST -s 10.1.0.0/16 -j MASQUERADE
-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
COMMIT
";

    #[test]
    fn tables_chains_policies() {
        let s = parse_save(DOCKER);
        assert_eq!(s.tables.len(), 2);
        assert_eq!(s.policy("filter", "FORWARD"), Some("DROP"));
        assert_eq!(s.policy("filter", "INPUT"), Some("ACCEPT"));
        assert_eq!(s.policy("filter", "DOCKER"), None);
        assert_eq!(s.policy("nat", "FORWARD"), None);
        assert_eq!(s.table("nat").unwrap().rules.len(), 5);
        assert!(parse_save("").tables.is_empty());
    }

    #[test]
    fn rules() {
        let s = parse_save(DOCKER);
        let nat = &s.table("nat").unwrap().rules;
        let masq = &nat[0];
        assert_eq!(masq.chain, "POSTROUTING");
        assert_eq!(masq.nat(), Some(Nat::Masquerade));
        assert_eq!(masq.matches, Matches::docker_masquerade());
        assert!(!masq.is_netfast());

        assert_eq!(
            nat[1].comment.as_deref(),
            Some("netfast \"web\" masquerade")
        );
        assert!(nat[1].is_netfast(), "a comment naming netfast");
        assert!(nat[2].is_netfast(), "a jump to a NETFAST- chain");
        assert!(nat[3].is_netfast(), "a rule in a NETFAST- chain");

        let dnat = &nat[4];
        assert_eq!(dnat.nat(), Some(Nat::Dnat));
        assert_eq!(
            dnat.matches.in_iface,
            Some(Match::new(true, vec!["docker0".into()]))
        );
        assert_eq!(dnat.matches.proto, Some(Match::new(false, "tcp".into())));
        assert_eq!(
            dnat.matches.dports,
            Some(Match::new(
                false,
                vec![Ports {
                    first: 8080,
                    last: 8080
                }]
            ))
        );
        let r = dnat.to_nat_rule("nat", "iptables-nft", "iptables").unwrap();
        assert_eq!(
            r.delete,
            "iptables -t nat -D DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT \
             --to-destination 172.17.0.2:80"
        );

        let multi = &s.table("filter").unwrap().rules[1];
        assert_eq!(
            multi.matches.dports,
            Some(Match::new(
                false,
                vec![
                    Ports {
                        first: 80,
                        last: 80
                    },
                    Ports {
                        first: 443,
                        last: 443
                    },
                    Ports {
                        first: 8000,
                        last: 8010
                    }
                ]
            ))
        );
        assert_eq!(multi.nat(), None);
        assert_eq!(s.foreign_rules().count(), 4);
    }

    #[test]
    fn counters_of_iptables_save_c() {
        let s = parse_save(
            "*filter\n:NETFAST-FORWARD - [0:0]\n[2:120] -A NETFAST-DIRECT-ACCESS -j DROP\n\
             [10:1000] -A NETFAST-FORWARD -o nf-web -m conntrack --ctstate RELATED,ESTABLISHED \
             -j ACCEPT\n-A FORWARD -j ACCEPT\n[x:1] -A FORWARD -j DROP\nCOMMIT\n",
        );
        let rules = &s.table("filter").unwrap().rules;
        assert_eq!(rules.len(), 3, "{rules:?}");
        assert_eq!(rules[0].counters, Some((2, 120)));
        assert_eq!(rules[0].text, "-A NETFAST-DIRECT-ACCESS -j DROP");
        assert_eq!(rules[0].chain, "NETFAST-DIRECT-ACCESS");
        assert_eq!(rules[1].counters, Some((10, 1000)));
        assert_eq!(
            rules[1].matches.out_iface,
            Some(Match::new(false, vec!["nf-web".into()]))
        );
        assert_eq!(rules[2].counters, None);
    }

    #[test]
    fn words_and_values() {
        assert_eq!(
            words(r#"-A X -m comment --comment "a \"b\" c" -j ACCEPT"#),
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                "a \"b\" c",
                "-j",
                "ACCEPT"
            ]
        );
        assert_eq!(words(r#"--comment """#), ["--comment", ""]);
        assert_eq!(
            addr("10.0.0.0/255.0.0.0"),
            Some(AddrSet::net("10.0.0.0/8".parse().unwrap()))
        );
        assert_eq!(
            addr("192.0.2.7"),
            Some(AddrSet::net("192.0.2.7/32".parse().unwrap()))
        );
        assert_eq!(addr("example.com"), None);
        assert_eq!(
            port_list(":1023"),
            Some(vec![Ports {
                first: 0,
                last: 1023
            }])
        );
        assert_eq!(port_list("9:8"), None);
        let neg = parse_rule("-A PREROUTING -p udp ! --dport 53 -j DNAT --to-destination 1.2.3.4");
        assert_eq!(
            neg.matches.dports,
            Some(Match::new(
                true,
                vec![Ports {
                    first: 53,
                    last: 53
                }]
            ))
        );
        assert_eq!(neg.matches.proto, Some(Match::new(false, "udp".into())));
    }
}
