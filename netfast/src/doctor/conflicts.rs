//! What else in netfilter meets netfast's traffic: a FORWARD policy of DROP, Docker's chains
//! and tables, NAT rules that translate netfast's networks or ports a second time, rules
//! split between iptables-legacy and iptables-nft, firewalld.
//!
//! Rules are read with `iptables-legacy-save`, `iptables-nft-save` and `nft` (reads only);
//! netfast's own objects — the nftables table `ip netfast`, iptables chains `NETFAST-…`,
//! rules whose comment names netfast — are left out.

use std::{collections::HashSet, fs};

use super::{Check, NETFILTER, forward, rules::double_translation};
use crate::{
    loader::model::State,
    netfilter::{
        self, NatRule, ToolError,
        iptables_save::{self, Save},
        nft_ruleset::{self, Ruleset, TableId},
    },
};

/// Why a source of rules was not read.
enum Unread {
    NotInstalled,
    Denied(String),
    Failed(String),
}

/// Runs a tool that reads rules; why not, when it could not.
fn run(argv: &[&str]) -> Result<String, Unread> {
    netfilter::run(argv).map_err(|e| match e {
        e if e.not_installed() => Unread::NotInstalled,
        ToolError::Start { source, .. } | ToolError::Io { source, .. } => {
            Unread::Failed(source.to_string())
        }
        ref e @ ToolError::Failed {
            ref stderr, status, ..
        } => {
            let msg = stderr.lines().next().unwrap_or_default().trim().to_owned();
            if e.denied() {
                Unread::Denied(msg)
            } else {
                Unread::Failed(format!("{msg} ({status})"))
            }
        }
        e @ ToolError::TimedOut { .. } => Unread::Failed(e.to_string()),
    })
}

/// The rules of one iptables backend.
pub(super) struct Iptables {
    /// `iptables-legacy` or `iptables-nft`.
    pub label: &'static str,
    /// The command that edits them: `iptables` when it is the default one.
    pub command: &'static str,
    pub save: Save,
}

/// Everything read, and what could not be.
pub(super) struct Rules {
    /// What `iptables` is: `iptables-nft` or `iptables-legacy`.
    pub default: Option<&'static str>,
    pub iptables: Vec<Iptables>,
    pub nft: Option<Ruleset>,
    /// What was not read, and why.
    pub unread: Vec<String>,
    pub read: Vec<&'static str>,
}

fn backend_of(version: &str) -> Option<&'static str> {
    if version.contains("nf_tables") {
        Some("iptables-nft")
    } else if version.contains("legacy") {
        Some("iptables-legacy")
    } else {
        None
    }
}

fn unread_text(what: &str, why: Unread) -> Option<String> {
    match why {
        Unread::NotInstalled => None,
        Unread::Denied(msg) => Some(format!("{what} ({msg}: needs root)")),
        Unread::Failed(msg) => Some(format!("{what} ({msg})")),
    }
}

impl Rules {
    fn read() -> Rules {
        let default = run(&["iptables", "--version"])
            .ok()
            .and_then(|v| backend_of(&v));
        let mut rules = Rules {
            default,
            iptables: Vec::new(),
            nft: None,
            unread: Vec::new(),
            read: Vec::new(),
        };
        let mut installed = false;
        for (label, save) in [
            ("iptables-legacy", "iptables-legacy-save"),
            ("iptables-nft", "iptables-nft-save"),
        ] {
            match run(&[save]) {
                Ok(text) => {
                    installed = true;
                    rules.read.push(save);
                    rules.push(label, &text);
                }
                Err(Unread::NotInstalled) => {}
                Err(why) => {
                    installed = true;
                    rules.unread.extend(unread_text(save, why));
                }
            }
        }
        // An iptables without the -legacy/-nft variants (older distributions).
        if !installed && let Some(label) = default {
            match run(&["iptables-save"]) {
                Ok(text) => {
                    rules.read.push("iptables-save");
                    rules.push(label, &text);
                }
                Err(why) => rules.unread.extend(unread_text("iptables-save", why)),
            }
        }
        match (
            run(&["nft", "-j", "list", "ruleset"]),
            run(&["nft", "-a", "list", "ruleset"]),
        ) {
            (Ok(json), text) => {
                match nft_ruleset::parse_json(
                    &json,
                    &nft_ruleset::parse_text(&text.unwrap_or_default()),
                ) {
                    Some(rs) => {
                        rules.read.push("nft");
                        rules.nft = Some(rs);
                    }
                    None => rules
                        .unread
                        .push("nft -j list ruleset (output not understood)".into()),
                }
            }
            (Err(why), _) => rules.unread.extend(unread_text("nft -j list ruleset", why)),
        }
        rules
    }

    pub(super) fn push(&mut self, label: &'static str, text: &str) {
        let command = if self.default == Some(label) {
            "iptables"
        } else {
            label
        };
        self.iptables.push(Iptables {
            label,
            command,
            save: iptables_save::parse_save(text),
        });
    }

    /// nftables tables that iptables-nft made (its `filter`, `nat`…), reported as iptables.
    fn owned_by_iptables_nft(&self) -> HashSet<TableId> {
        self.iptables
            .iter()
            .filter(|i| i.label == "iptables-nft")
            .flat_map(|i| i.save.tables.iter())
            .map(|t| TableId {
                family: "ip".into(),
                name: t.name.clone(),
            })
            .collect()
    }

    /// nftables objects the doctor looks at: IPv4 tables neither netfast's nor iptables-nft's.
    pub(super) fn nft_foreign(&self) -> impl Fn(&TableId) -> bool {
        let owned = self.owned_by_iptables_nft();
        move |t: &TableId| t.is_ipv4() && !t.is_netfast() && !owned.contains(t)
    }
}

pub fn checks(state: Option<&State>) -> Vec<Check> {
    let rules = Rules::read();
    let mut out = vec![sources(&rules)];
    out.extend(forward::forward_policy(&rules, state, &forward::link_mtu));
    out.push(docker(&rules));
    out.extend(double_translations(&rules, state));
    out.push(both_backends(&rules));
    out.push(firewalld(state));
    out
}

fn sources(rules: &Rules) -> Check {
    let name = "rules read";
    let what_iptables = match rules.default {
        Some(d) => format!("`iptables` is {d}"),
        None => "no `iptables` command".into(),
    };
    if rules.unread.is_empty() {
        let read = if rules.read.is_empty() {
            "no iptables or nft installed: nothing to conflict with".into()
        } else {
            format!("read {}", rules.read.join(", "))
        };
        return Check::pass(NETFILTER, name, format!("{what_iptables}; {read}"));
    }
    Check::warn(
        NETFILTER,
        name,
        format!(
            "{what_iptables}; could not read {}; the checks below miss what these hold",
            rules.unread.join(", ")
        ),
        "run netfast doctor as root",
    )
}

fn docker(rules: &Rules) -> Check {
    let name = "Docker";
    let mut found = Vec::new();
    for i in &rules.iptables {
        for t in &i.save.tables {
            let chains: Vec<&str> = t
                .chains
                .iter()
                .map(|c| c.name.as_str())
                .filter(|c| c.starts_with("DOCKER"))
                .collect();
            if !chains.is_empty() {
                found.push(format!(
                    "chains {} ({}, table {})",
                    chains.join(", "),
                    i.label,
                    t.name
                ));
            }
        }
    }
    if let Some(rs) = &rules.nft {
        let foreign = rules.nft_foreign();
        for t in rs
            .tables
            .iter()
            .filter(|t| foreign(t) && t.name.starts_with("docker"))
        {
            found.push(format!("nftables table {t}"));
        }
    }
    if found.is_empty() {
        return Check::pass(NETFILTER, name, "no Docker chains or tables");
    }
    Check::warn(
        NETFILTER,
        name,
        format!(
            "Docker manages netfilter here: {}; its FORWARD rules and NAT meet the same \
             traffic as netfast",
            found.join("; ")
        ),
        "keep netfast's subnets and published ports apart from Docker's; if netfast replaces \
         Docker's networking, set \"iptables\": false in /etc/docker/daemon.json, restart \
         Docker and remove its chains and tables",
    )
}

fn nat_rules(rules: &Rules) -> Vec<NatRule> {
    let mut out: Vec<NatRule> = rules
        .iptables
        .iter()
        .flat_map(|i| {
            i.save
                .foreign_rules()
                .filter_map(|(t, r)| r.to_nat_rule(&t.name, i.label, i.command))
        })
        .collect();
    if let Some(rs) = &rules.nft {
        let foreign = rules.nft_foreign();
        out.extend(
            rs.rules
                .iter()
                .filter(|r| foreign(&r.table) && !r.is_netfast())
                .filter_map(|r| r.nat.clone()),
        );
    }
    out
}

fn double_translations(rules: &Rules, state: Option<&State>) -> Vec<Check> {
    let name = "double translation";
    let Some(state) = state.filter(|s| !s.networks.is_empty()) else {
        return vec![Check::pass(
            NETFILTER,
            name,
            "no netfast network here to compare NAT rules with",
        )];
    };
    let fails: Vec<Check> = nat_rules(rules)
        .into_iter()
        .filter_map(|r| {
            let why = double_translation(&r, state)?;
            Some(Check::fail(
                NETFILTER,
                name,
                format!(
                    "{}: {why}; its packets would be translated twice and their flows break",
                    r.describe
                ),
                r.delete,
            ))
        })
        .collect();
    if fails.is_empty() {
        return vec![Check::pass(
            NETFILTER,
            name,
            "no MASQUERADE, SNAT or DNAT rule meets netfast's networks or published ports",
        )];
    }
    fails
}

fn both_backends(rules: &Rules) -> Check {
    let name = "iptables backends";
    let count = |label: &str| {
        rules
            .iptables
            .iter()
            .find(|i| i.label == label)
            .map(|i| i.save.foreign_rules().count())
    };
    match (count("iptables-legacy"), count("iptables-nft")) {
        (Some(legacy), Some(nft)) if legacy > 0 && nft > 0 => Check::warn(
            NETFILTER,
            name,
            format!(
                "rules in both: {legacy} in iptables-legacy, {nft} in iptables-nft; the kernel \
                 applies both sets, and `iptables` shows only {}",
                rules.default.unwrap_or("one of them")
            ),
            "keep one backend: move the legacy rules (iptables-legacy-save > rules.v4; \
             iptables-nft-restore --noflush < rules.v4), flush them (iptables-legacy -F; \
             iptables-legacy -t nat -F), and pick one with update-alternatives --config iptables",
        ),
        (legacy, nft) => Check::pass(
            NETFILTER,
            name,
            format!(
                "rules in one backend at most ({} in iptables-legacy, {} in iptables-nft)",
                legacy.map_or("unread".into(), |n| n.to_string()),
                nft.map_or("unread".into(), |n| n.to_string())
            ),
        ),
    }
}

/// Pids of processes named `firewalld`.
fn firewalld_pids() -> Vec<String> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "firewalld")
        })
        .collect()
}

fn firewalld(state: Option<&State>) -> Check {
    let name = "firewalld";
    let pids = firewalld_pids();
    if pids.is_empty() {
        return Check::pass(NETFILTER, name, "not running");
    }
    let bridges: Vec<String> = state
        .map(|s| s.networks.iter().map(|n| n.bridge.clone()).collect())
        .filter(|b: &Vec<String>| !b.is_empty())
        .unwrap_or_else(|| vec!["BRIDGE".into()]);
    let add: Vec<String> = bridges
        .iter()
        .map(|b| format!("firewall-cmd --permanent --zone=trusted --add-interface={b}"))
        .collect();
    Check::warn(
        NETFILTER,
        name,
        format!(
            "running (pid {}): it rewrites the firewall on every reload, and its zones may \
             drop forwarded traffic of netfast's bridges",
            pids.join(", ")
        ),
        format!("{}; firewall-cmd --reload", add.join("; ")),
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn backends() {
        assert_eq!(
            backend_of("iptables v1.8.9 (nf_tables)"),
            Some("iptables-nft")
        );
        assert_eq!(
            backend_of("iptables v1.8.9 (legacy)"),
            Some("iptables-legacy")
        );
        assert_eq!(backend_of("iptables v1.4.21"), None);
    }

    /// What the doctor reads where iptables is iptables-nft: `legacy` and `nft_save` as
    /// the two variants' `iptables-save` print them.
    pub(in crate::doctor) fn rules_from(legacy: &str, nft_save: &str) -> Rules {
        let mut r = Rules {
            default: Some("iptables-nft"),
            iptables: Vec::new(),
            nft: None,
            unread: Vec::new(),
            read: Vec::new(),
        };
        r.push("iptables-legacy", legacy);
        r.push("iptables-nft", nft_save);
        r
    }

    #[test]
    fn commands_and_checks() {
        let legacy =
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth+ -j MASQUERADE\nCOMMIT\n";
        let nft_save = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n";
        let r = rules_from(legacy, nft_save);
        assert_eq!(r.iptables[0].command, "iptables-legacy");
        assert_eq!(r.iptables[1].command, "iptables");

        let d = docker(&r);
        assert!(
            d.found
                .contains("chains DOCKER-USER (iptables-nft, table filter)"),
            "{}",
            d.found
        );

        let both = both_backends(&r);
        assert_eq!(both.status, super::super::Status::Warn);
        assert!(
            both.found
                .starts_with("rules in both: 1 in iptables-legacy, 1 in iptables-nft")
        );

        let owned = r.owned_by_iptables_nft();
        assert!(owned.contains(&TableId {
            family: "ip".into(),
            name: "filter".into()
        }));
        // No state: nothing to compare; no FAIL.
        assert_eq!(
            double_translations(&r, None)[0].status,
            super::super::Status::Pass
        );
    }
}
