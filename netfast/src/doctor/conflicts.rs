//! What else in netfilter meets netfast's traffic: a FORWARD policy of DROP, Docker's chains
//! and tables, NAT rules that translate netfast's networks or ports a second time, rules
//! split between iptables-legacy and iptables-nft, firewalld.
//!
//! Rules are read with `iptables-legacy-save`, `iptables-nft-save` and `nft` (reads only);
//! netfast's own objects — the nftables table `ip netfast`, iptables chains `NETFAST-…`,
//! rules whose comment names netfast — are left out.

use std::{
    collections::HashSet,
    fs, io,
    process::{Command, Stdio},
};

use super::{
    Check, NETFILTER,
    iptables::{self, Save},
    nft::{self, Ruleset, TableId},
    rules::{NatRule, double_translation},
};
use crate::loader::model::{Backend, DataplaneConfig, Network, State, Switch};

/// Why a source of rules was not read.
enum Unread {
    NotInstalled,
    Denied(String),
    Failed(String),
}

fn run(argv: &[&str]) -> Result<String, Unread> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Unread::NotInstalled,
            _ => Unread::Failed(e.to_string()),
        })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let msg = err.lines().next().unwrap_or_default().trim().to_owned();
    let denied = [
        "Permission denied",
        "Operation not permitted",
        "must be root",
    ];
    Err(if denied.iter().any(|d| err.contains(d)) {
        Unread::Denied(msg)
    } else {
        Unread::Failed(format!("{msg} ({})", out.status))
    })
}

/// The rules of one iptables backend.
struct Iptables {
    /// `iptables-legacy` or `iptables-nft`.
    label: &'static str,
    /// The command that edits them: `iptables` when it is the default one.
    command: &'static str,
    save: Save,
}

/// Everything read, and what could not be.
struct Rules {
    /// What `iptables` is: `iptables-nft` or `iptables-legacy`.
    default: Option<&'static str>,
    iptables: Vec<Iptables>,
    nft: Option<Ruleset>,
    /// What was not read, and why.
    unread: Vec<String>,
    read: Vec<&'static str>,
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
                match nft::parse_json(&json, &nft::parse_text(&text.unwrap_or_default())) {
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

    fn push(&mut self, label: &'static str, text: &str) {
        let command = if self.default == Some(label) {
            "iptables"
        } else {
            label
        };
        self.iptables.push(Iptables {
            label,
            command,
            save: iptables::parse_save(text),
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
    fn nft_foreign(&self) -> impl Fn(&TableId) -> bool {
        let owned = self.owned_by_iptables_nft();
        move |t: &TableId| t.is_ipv4() && !t.is_netfast() && !owned.contains(t)
    }
}

pub fn checks(state: Option<&State>) -> Vec<Check> {
    let rules = Rules::read();
    let mut out = vec![sources(&rules)];
    out.extend(forward_policy(&rules, state, &link_mtu));
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

/// A chain of the kernel's forwarding path that drops by default.
enum DropAt<'a> {
    /// The FORWARD policy of an iptables variant; `default`: the one `iptables` edits, where
    /// the iptables backend's NETFAST-FORWARD chain lives.
    Iptables { default: bool, save: &'a Save },
    /// A base chain (hook forward) of someone else's nftables table.
    Nft {
        rules: &'a Ruleset,
        chain: &'a nft::NftChain,
    },
}

impl DropAt<'_> {
    /// Whether the chain holds both accept rules the doctor's fix gives for `subnet`.
    fn accepts(&self, subnet: &str) -> bool {
        match self {
            DropAt::Iptables { save, .. } => {
                let Some(filter) = save.table("filter") else {
                    return false;
                };
                ["-s", "-d"].iter().all(|dir| {
                    let want = format!("-A FORWARD {dir} {subnet} -j ACCEPT");
                    filter.rules.iter().any(|r| r.text == want)
                })
            }
            DropAt::Nft { rules, chain } => ["saddr", "daddr"].iter().all(|dir| {
                let want = format!("ip {dir} {subnet} accept");
                rules.rules.iter().any(|r| {
                    r.table == chain.table
                        && r.chain == chain.name
                        && r.text.as_deref() == Some(want.as_str())
                })
            }),
        }
    }
}

/// The MTU of a link of this namespace, from sysfs.
fn link_mtu(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// How a network's forwarded traffic gets past a default drop at `at`; `Err` says why it
/// does not. `mtu` reads a link's MTU.
fn passes(
    net: &Network,
    dp: &DataplaneConfig,
    at: &DropAt,
    mtu: &dyn Fn(&str) -> Option<u32>,
) -> Result<String, String> {
    if at.accepts(&net.subnet.to_string()) {
        return Ok("accept rules for its subnet in that chain".into());
    }
    match net.backend {
        Backend::Ebpf if dp.fast_path == Switch::Off => Err("eBPF with --fast-path off".into()),
        Backend::Ebpf if !net.masquerade => Err(
            "eBPF, routed (--no-masquerade): untranslated traffic takes the kernel's path".into(),
        ),
        // What the fast path cannot do is fragment: a packet without DF larger than the MTU
        // of the side it leaves by goes to the kernel's forwarding, and meets the drop.
        Backend::Ebpf => match (mtu(&net.uplink), mtu(&net.bridge)) {
            (Some(up), Some(br)) if up != br => Err(format!(
                "eBPF fast path, but uplink {}'s MTU {up} differs from bridge {}'s {br}: \
                 packets without DF larger than {} bytes need the kernel's forwarding to \
                 fragment them",
                net.uplink,
                net.bridge,
                up.min(br)
            )),
            _ => Ok("eBPF fast path, past netfilter".into()),
        },
        Backend::Iptables => match at {
            DropAt::Iptables { default: true, .. } => {
                Ok("iptables backend: NETFAST-FORWARD accepts it first".into())
            }
            DropAt::Iptables { default: false, .. } => {
                Err("iptables backend: its accept is in the other iptables variant".into())
            }
            DropAt::Nft { .. } => {
                Err("iptables backend: an accept there does not end another table's drop".into())
            }
        },
        Backend::Nftables => Err(
            "nftables backend: an accept in table netfast does not end another table's drop".into(),
        ),
    }
}

/// The line for one default drop in the forwarding path: WARN naming the networks whose
/// traffic it drops (all of them, as `SUBNET`, when there is no network yet), or PASS when
/// every network gets past it. `accept(subnet)` gives the rules that would let one through.
fn forward_drop(
    state: Option<&State>,
    at: &DropAt,
    found: String,
    open: String,
    accept: impl Fn(&str) -> [String; 2],
    mtu: &dyn Fn(&str) -> Option<u32>,
) -> Check {
    let name = "FORWARD policy";
    let nets = state.map(|s| s.networks.as_slice()).unwrap_or_default();
    let default_dp = DataplaneConfig::default();
    let dp = state.map_or(&default_dp, |s| &s.dataplane);
    let (pass, risk): (Vec<_>, Vec<_>) = nets
        .iter()
        .map(|n| (n, passes(n, dp, at, mtu)))
        .partition(|(_, p)| p.is_ok());
    if !nets.is_empty() && risk.is_empty() {
        let how: Vec<String> = pass
            .iter()
            .map(|(n, p)| format!("{} ({})", n.name, p.clone().unwrap_or_default()))
            .collect();
        return Check::pass(
            NETFILTER,
            name,
            format!(
                "{found}; every netfast network gets past it: {}; a new network on the \
                 nftables backend, with --fast-path off or --no-masquerade would not",
                how.join(", ")
            ),
        );
    }
    let (who, subnets) = if risk.is_empty() {
        (
            "the networks netfast's kernel path forwards (--fast-path off, --no-masquerade, \
             the nftables/iptables backends)"
                .to_owned(),
            vec!["SUBNET".to_owned()],
        )
    } else {
        let who: Vec<String> = risk
            .iter()
            .map(|(n, why)| format!("{} ({})", n.name, why.clone().err().unwrap_or_default()))
            .collect();
        (
            format!("network {}", who.join(", network ")),
            risk.iter().map(|(n, _)| n.subnet.to_string()).collect(),
        )
    };
    let accepts: Vec<String> = subnets.iter().flat_map(|s| accept(s)).collect();
    Check::warn(
        NETFILTER,
        name,
        format!("{found}: it drops the forwarded traffic of {who}"),
        format!(
            "{open}, or keep it and accept netfast's subnets: {}",
            accepts.join("; ")
        ),
    )
}

fn forward_policy(
    rules: &Rules,
    state: Option<&State>,
    mtu: &dyn Fn(&str) -> Option<u32>,
) -> Vec<Check> {
    let mut out = Vec::new();
    for i in &rules.iptables {
        let Some(policy) = i.save.policy("filter", "FORWARD") else {
            continue;
        };
        if policy != "DROP" && policy != "REJECT" {
            continue;
        }
        let cmd = i.command;
        out.push(forward_drop(
            state,
            &DropAt::Iptables {
                default: cmd == "iptables",
                save: &i.save,
            },
            format!("{policy} ({}, table filter)", i.label),
            format!("{cmd} -P FORWARD ACCEPT"),
            |s| {
                [
                    format!("{cmd} -I FORWARD -s {s} -j ACCEPT"),
                    format!("{cmd} -I FORWARD -d {s} -j ACCEPT"),
                ]
            },
            mtu,
        ));
    }
    if let Some(rs) = &rules.nft {
        let foreign = rules.nft_foreign();
        for c in rs.chains.iter().filter(|c| {
            foreign(&c.table)
                && c.hook.as_deref() == Some("forward")
                && c.policy.as_deref() == Some("drop")
        }) {
            out.push(forward_drop(
                state,
                &DropAt::Nft {
                    rules: rs,
                    chain: c,
                },
                format!("drop (nftables chain {} {}, hook forward)", c.table, c.name),
                format!("nft chain {} {} '{{ policy accept; }}'", c.table, c.name),
                |s| {
                    [
                        format!("nft insert rule {} {} ip saddr {s} accept", c.table, c.name),
                        format!("nft insert rule {} {} ip daddr {s} accept", c.table, c.name),
                    ]
                },
                mtu,
            ));
        }
    }
    if out.is_empty() {
        out.push(Check::pass(
            NETFILTER,
            "FORWARD policy",
            "no FORWARD chain drops by default",
        ));
    }
    out
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
mod tests {
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

    fn rules_from(legacy: &str, nft_save: &str) -> Rules {
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

        let fwd = forward_policy(&r, None, &|_| None);
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[0].status, super::super::Status::Warn);
        assert!(
            fwd[0]
                .found
                .starts_with("DROP (iptables-nft, table filter)")
        );
        assert!(
            fwd[0]
                .fix
                .as_deref()
                .unwrap()
                .starts_with("iptables -P FORWARD ACCEPT")
        );

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

    fn net(name: &str, subnet: &str, backend: Backend, masquerade: bool) -> Network {
        let subnet: ipnet::Ipv4Net = subnet.parse().unwrap();
        Network {
            name: name.into(),
            id: 1,
            subnet,
            gateway: subnet.hosts().next().unwrap(),
            bridge: format!("nf-{name}"),
            uplink: "eth0".into(),
            adopted: false,
            adopted_ports: vec![],
            masquerade,
            backend,
            route_localnet: false,
            hairpin_set: Vec::new(),
        }
    }

    #[test]
    fn a_forward_drop_meets_the_fast_path_where_it_cannot_fragment() {
        use super::super::Status;
        let nft_drop = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
        let state = State {
            networks: vec![net("web", "172.18.0.0/24", Backend::Ebpf, true)],
            ..State::default()
        };
        let r = rules_from("", nft_drop);
        // The uplink carries what the bridge does: nothing needs the kernel.
        let same = forward_policy(&r, Some(&state), &|_| Some(1500));
        assert_eq!(same[0].status, Status::Pass, "{:?}", same[0]);
        // A smaller uplink MTU: what the kernel would fragment, the drop drops.
        let small = |dev: &str| Some(if dev == "eth0" { 1400 } else { 1500 });
        let fwd = forward_policy(&r, Some(&state), &small);
        assert_eq!(fwd[0].status, Status::Warn, "{:?}", fwd[0]);
        assert!(
            fwd[0].found.contains(
                "web (eBPF fast path, but uplink eth0's MTU 1400 differs from bridge nf-web's 1500"
            ),
            "{}",
            fwd[0].found
        );
    }

    #[test]
    fn a_forward_drop_names_the_networks_it_drops_and_passes_when_none() {
        use super::super::Status;
        let nft_drop = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
        let legacy_drop = "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n";
        let mut state = State {
            networks: vec![
                net("web", "172.18.0.0/24", Backend::Ebpf, true),
                net("db", "172.19.0.0/24", Backend::Iptables, true),
            ],
            ..State::default()
        };

        // `iptables` is iptables-nft: the eBPF fast path and NETFAST-FORWARD get past it.
        let r = rules_from("", nft_drop);
        let fwd = forward_policy(&r, Some(&state), &|_| None);
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[0].status, Status::Pass, "{:?}", fwd[0]);
        assert!(
            fwd[0].found.starts_with(
                "DROP (iptables-nft, table filter); every netfast network gets past it: \
                 web (eBPF fast path, past netfilter), db (iptables backend: NETFAST-FORWARD \
                 accepts it first)"
            ),
            "{}",
            fwd[0].found
        );

        // A drop in the other variant drops the iptables backend's network, not the eBPF one.
        let r = rules_from(legacy_drop, "");
        let fwd = forward_policy(&r, Some(&state), &|_| None);
        assert_eq!(fwd[0].status, Status::Warn);
        assert_eq!(
            fwd[0].found,
            "DROP (iptables-legacy, table filter): it drops the forwarded traffic of network db \
             (iptables backend: its accept is in the other iptables variant)"
        );
        assert_eq!(
            fwd[0].fix.as_deref(),
            Some(
                "iptables-legacy -P FORWARD ACCEPT, or keep it and accept netfast's subnets: \
                 iptables-legacy -I FORWARD -s 172.19.0.0/24 -j ACCEPT; \
                 iptables-legacy -I FORWARD -d 172.19.0.0/24 -j ACCEPT"
            )
        );

        // The accept rules the fix gives, added as written, get db past it.
        let accepted = "*filter\n:FORWARD DROP [0:0]\n\
                        -A FORWARD -d 172.19.0.0/24 -j ACCEPT\n\
                        -A FORWARD -s 172.19.0.0/24 -j ACCEPT\nCOMMIT\n";
        let fwd = forward_policy(&rules_from(accepted, ""), Some(&state), &|_| None);
        assert_eq!(fwd[0].status, Status::Pass, "{:?}", fwd[0]);
        assert!(
            fwd[0]
                .found
                .contains("db (accept rules for its subnet in that chain)"),
            "{}",
            fwd[0].found
        );
        // One direction alone is not enough.
        let half = "*filter\n:FORWARD DROP [0:0]\n-A FORWARD -s 172.19.0.0/24 -j ACCEPT\nCOMMIT\n";
        let fwd = forward_policy(&rules_from(half, ""), Some(&state), &|_| None);
        assert_eq!(fwd[0].status, Status::Warn, "{:?}", fwd[0]);

        // nftables backend, routed eBPF network, fast path off: all at risk.
        state
            .networks
            .push(net("app", "172.20.0.0/24", Backend::Nftables, true));
        state
            .networks
            .push(net("lab", "172.21.0.0/24", Backend::Ebpf, false));
        let r = rules_from("", nft_drop);
        let fwd = forward_policy(&r, Some(&state), &|_| None);
        assert_eq!(fwd[0].status, Status::Warn);
        assert!(
            fwd[0].found.contains("network app (nftables backend"),
            "{}",
            fwd[0].found
        );
        assert!(
            fwd[0].found.contains("network lab (eBPF, routed"),
            "{}",
            fwd[0].found
        );
        assert!(!fwd[0].found.contains("network web"), "{}", fwd[0].found);
        assert!(!fwd[0].found.contains("network db"), "{}", fwd[0].found);
        state.dataplane.fast_path = Switch::Off;
        let fwd = forward_policy(&r, Some(&state), &|_| None);
        assert!(
            fwd[0]
                .found
                .contains("network web (eBPF with --fast-path off)"),
            "{}",
            fwd[0].found
        );
        let fix = fwd[0].fix.as_deref().unwrap();
        for s in ["172.18.0.0/24", "172.20.0.0/24", "172.21.0.0/24"] {
            assert!(
                fix.contains(&format!("iptables -I FORWARD -d {s} -j ACCEPT")),
                "{fix}"
            );
        }
        assert!(!fix.contains("172.19.0.0/24"), "{fix}");
    }
}
