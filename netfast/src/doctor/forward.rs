//! The FORWARD policy check: a chain of the kernel's forwarding path that drops by default
//! (iptables' FORWARD policy, a base chain of someone's nftables table), and which of
//! netfast's networks get past it.

use super::{Check, NETFILTER, conflicts::Rules};
use crate::{
    loader::model::{Backend, DataplaneConfig, Network, State, Switch},
    netfilter::{iptables_save::Save, nft_ruleset},
};

/// A chain of the kernel's forwarding path that drops by default.
enum DropAt<'a> {
    /// The FORWARD policy of an iptables variant; `default`: the one `iptables` edits, where
    /// the iptables backend's NETFAST-FORWARD chain lives.
    Iptables { default: bool, save: &'a Save },
    /// A base chain (hook forward) of someone else's nftables table.
    Nft {
        rules: &'a nft_ruleset::Ruleset,
        chain: &'a nft_ruleset::NftChain,
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
pub(super) fn link_mtu(name: &str) -> Option<u32> {
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
    at: &DropAt<'_>,
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
    at: &DropAt<'_>,
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

/// A line per default drop in the forwarding path of `rules`; `mtu` reads a link's MTU.
pub(super) fn forward_policy(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::{Status, conflicts::tests::rules_from};

    #[test]
    fn a_forward_drop_in_iptables_nft_is_fixed_with_iptables() {
        let nft_save = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n";
        let r = rules_from("", nft_save);
        let fwd = forward_policy(&r, None, &|_| None);
        assert_eq!(fwd.len(), 1);
        assert_eq!(fwd[0].status, Status::Warn);
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
