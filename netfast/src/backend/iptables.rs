//! The iptables backend's chains (`NETFAST-…`): declared and filled by one
//! `iptables-restore --noflush` ([`render_ipt`]), jumped to first from the built-in chains,
//! their counters carried over and read back from `iptables-save -c`.

use crate::{
    error::Result,
    netfilter::{
        self, Counts, ToolError, cttimeout,
        iptables_save::{self, Save},
        render_ipt::{
            IPT_CHAINS, IPT_FILTER_DROPS, IPT_RAW_DROPS, ipt_drop_chain, ipt_net_rules,
            ipt_raw_counter, ipt_restore,
        },
        rules::{Net, Rules, Way, net_counter},
    },
};

/// Why iptables cannot be used here, if it cannot.
pub(super) fn unusable() -> Option<ToolError> {
    netfilter::run(&["iptables", "-t", "nat", "-S", "POSTROUTING"]).err()
}

/// Whether netfast's chains are in place (FORWARD jumps to NETFAST-FORWARD).
pub(super) fn installed() -> bool {
    // Every jump from a built-in chain: without one, its chain's rules do nothing (without
    // POSTROUTING's, no masquerade).
    IPT_CHAINS.iter().all(|(table, chain, builtin)| {
        builtin.is_none_or(|builtin| jump(table, builtin, chain, "-C").is_ok())
    })
}

/// The iptables tables (of nat, filter, raw) that exist in this namespace: in the legacy
/// backend's list, or as the nftables tables iptables-nft keeps them in.
pub(super) fn tables_present() -> Result<Vec<&'static str>> {
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    let nft = match netfilter::run(&["nft", "list", "tables", "ip"]) {
        Ok(out) => out,
        // No nft here: iptables-nft cannot be in use either.
        Err(ToolError::Start { .. }) => String::new(),
        Err(e) => return Err(e.into()),
    };
    Ok(["nat", "filter", "raw"]
        .into_iter()
        .filter(|t| {
            legacy.lines().any(|l| l.trim() == *t)
                || nft.lines().any(|l| l.trim() == format!("table ip {t}"))
        })
        .collect())
}

/// netfast's chains that exist in `table`.
pub(super) fn own_chains(table: &str) -> Result<Vec<String>> {
    let rules = netfilter::run(&["iptables", "-t", table, "-S"])?;
    Ok(rules
        .lines()
        .filter_map(|l| l.strip_prefix("-N NETFAST-"))
        .map(|c| format!("NETFAST-{c}"))
        .collect())
}

fn jump(table: &str, builtin: &str, chain: &str, op: &str) -> Result<String> {
    Ok(netfilter::run(&[
        "iptables", "-w", "-t", table, op, builtin, "-j", chain,
    ])?)
}

fn iptables(args: &[&str]) -> Result<String> {
    Ok(netfilter::run(&[&["iptables", "-w"][..], args].concat())?)
}

pub(super) fn sync(rules: &Rules) -> Result<()> {
    let existing: Vec<(String, String)> = ["nat", "filter", "raw"]
        .into_iter()
        .map(|t| Ok(own_chains(t)?.into_iter().map(move |c| (t.to_owned(), c))))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    if rules.is_empty() {
        // Jumps first, then the chains (flushed before deleted: they reference each other).
        for (table, chain, builtin) in IPT_CHAINS {
            if let Some(builtin) = builtin
                && !existing.is_empty()
            {
                while jump(table, builtin, chain, "-C").is_ok() {
                    jump(table, builtin, chain, "-D")?;
                }
            }
        }
        for (table, chain) in &existing {
            iptables(&["-t", table, "-F", chain])?;
        }
        for (table, chain) in &existing {
            iptables(&["-t", table, "-X", chain])?;
        }
        // No rule refers to the timeout policies any more.
        for p in cttimeout::policies(&rules.timeouts) {
            match cttimeout::delete(p.name) {
                Err(e) if !cttimeout::unsupported(&e) => return Err(e),
                _ => {}
            }
        }
        return Ok(());
    }
    let counts = counters(&rules.nets)?;
    let policies = timeouts(&rules.timeouts)?;
    let (input, allow_chains) = ipt_restore(rules, &counts, &policies);
    netfilter::run_with_input(&["iptables-restore", "-w", "--noflush", "-c"], &input)?;
    // First in the built-in chains, as Docker puts its own: netfast's accepts must come
    // before a policy of DROP, and its drops before anyone's accepts.
    for (table, chain, builtin) in IPT_CHAINS {
        if let Some(builtin) = builtin
            && jump(table, builtin, chain, "-C").is_err()
        {
            iptables(&["-t", table, "-I", builtin, "1", "-j", chain])?;
        }
    }
    // Allow-list chains of publications that are gone.
    for (table, chain) in existing.iter().filter(|(t, c)| {
        t == "filter" && c.starts_with("NETFAST-ALLOW-") && !allow_chains.contains(c)
    }) {
        iptables(&["-t", table, "-F", chain])?;
        iptables(&["-t", table, "-X", chain])?;
    }
    Ok(())
}

/// Creates or updates the conntrack timeout policies the iptables rules refer to; none where
/// the kernel has no timeout policies (said once on stderr: the flows keep the kernel's).
fn timeouts(t: &crate::loader::model::Timeouts) -> Result<Vec<cttimeout::Policy>> {
    let policies = cttimeout::policies(t);
    for p in &policies {
        if let Err(e) = cttimeout::set(p) {
            if cttimeout::unsupported(&e) {
                log::warn!(
                    "this kernel has no conntrack timeout policies \
                     (CONFIG_NF_CONNTRACK_TIMEOUT, CONFIG_NF_CT_NETLINK_TIMEOUT): flows of the \
                     iptables backend's networks keep the kernel's timeouts \
                     (net.netfilter.nf_conntrack_*_timeout)"
                );
                return Ok(Vec::new());
            }
            return Err(e);
        }
    }
    Ok(policies.to_vec())
}

/// The counters of netfast's iptables chains (none when they do not exist): the drop
/// reasons' (the raw table's under [`ipt_raw_counter`]), and those of `nets` (their accept
/// rules').
pub(super) fn counters(nets: &[Net]) -> Result<Counts> {
    let filter = netfilter::run(&["iptables-save", "-c", "-t", "filter"])?;
    let mut counts = filter_counts(&iptables_save::parse_save(&filter), nets);
    let raw = netfilter::run(&["iptables-save", "-c", "-t", "raw"])?;
    counts.extend(raw_counts(&iptables_save::parse_save(&raw)));
    Ok(counts)
}

/// The raw table's drop counters in `iptables-save -c -t raw` output.
fn raw_counts(save: &Save) -> Counts {
    let wanted: Vec<(String, String)> = IPT_RAW_DROPS
        .iter()
        .map(|r| {
            (
                ipt_raw_counter(r),
                format!("-A {} -j DROP", ipt_drop_chain(r)),
            )
        })
        .collect();
    counts_of(save, &wanted)
}

/// The counters in `iptables-save -c` output (of the filter table).
fn filter_counts(save: &Save, nets: &[Net]) -> Counts {
    let mut wanted: Vec<(String, String)> = IPT_FILTER_DROPS
        .iter()
        .map(|r| (r.to_string(), format!("-A {} -j DROP", ipt_drop_chain(r))))
        .collect();
    for n in nets {
        for way in [Way::Tx, Way::Rx] {
            for rule in ipt_net_rules(n, way) {
                wanted.push((net_counter(way, n.id), rule));
            }
        }
    }
    counts_of(save, &wanted)
}

/// The sums of the counters of the rules in `wanted` (a name, a rule as `iptables-save`
/// prints it).
fn counts_of(save: &Save, wanted: &[(String, String)]) -> Counts {
    let mut counts = Counts::new();
    for rule in save.tables.iter().flat_map(|t| &t.rules) {
        let Some((p, b)) = rule.counters else {
            continue;
        };
        for (name, _) in wanted.iter().filter(|(_, r)| *r == rule.text) {
            let e = counts.entry(name.clone()).or_default();
            e.0 += p;
            e.1 += b;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_per_drop_reason_and_per_network_way() {
        let net = Net {
            id: 3,
            bridge: "nf-web".into(),
            subnet: "172.18.0.0/24".parse().unwrap(),
            uplink: "eth0".into(),
            masquerade: true,
        };
        let save = "*filter\n\
            :NETFAST-FORWARD - [0:0]\n\
            [2:120] -A NETFAST-DIRECT-ACCESS -j DROP\n\
            [10:1000] -A NETFAST-FORWARD -o nf-web -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            [1:60] -A NETFAST-FORWARD -o nf-web -m conntrack --ctstate DNAT -j ACCEPT\n\
            [7:700] -A NETFAST-FORWARD -i nf-web -j ACCEPT\n\
            [5:500] -A NETFAST-FORWARD -i nf-other -j ACCEPT\n\
            [4:400] -A FORWARD -i nf-web -j ACCEPT\n\
            COMMIT\n";
        let c = filter_counts(&iptables_save::parse_save(save), &[net]);
        assert_eq!(c.get("direct_access"), Some(&(2, 120)));
        assert_eq!(c.get("rx_3"), Some(&(11, 1060)));
        assert_eq!(c.get("tx_3"), Some(&(7, 700)));
        assert_eq!(c.len(), 3, "{c:?}");
        let raw = "*raw\n\
            [6:360] -A NETFAST-LOOPBACK-FROM-NET -j DROP\n\
            [1:60] -A NETFAST-TO-HOST-LOOPBACK -j DROP\n\
            COMMIT\n";
        let c = raw_counts(&iptables_save::parse_save(raw));
        assert_eq!(c.get("raw:loopback_from_network"), Some(&(6, 360)));
        assert_eq!(c.get("raw:to_host_loopback"), Some(&(1, 60)));
    }
}
