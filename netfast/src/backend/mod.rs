//! Backends: what translates and filters a network's traffic. The eBPF dataplane
//! ([`crate::dataplane`]) is the default; on hosts where eBPF cannot be used, netfast writes
//! the same behaviour as its own nftables table (`ip netfast`) or its own iptables chains
//! (`NETFAST-…`), never touching anyone else's rules.
//!
//! A fallback's rules are a function of the state: every change to networks or publications
//! re-renders them from the state and replaces them atomically ([`sync`]), so applying twice
//! changes nothing and removing the last network removes every rule.

pub mod ctnetlink;
pub mod cttimeout;
pub mod nft;
pub mod rules;

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use crate::{
    error::{Error, Result},
    loader::model::{Backend, BackendChoice, State},
};
use rules::{
    Counts, IPT_CHAINS, IPT_FILTER_DROPS, IPT_RAW_DROPS, Net, Rules, Way, ipt_drop_chain,
    ipt_net_rules, ipt_raw_counter, net_counter,
};

/// Runs a netfilter tool (`nft`, `iptables`, `iptables-restore`, …) with `input` on stdin;
/// its stdout, or an error with what it printed.
fn tool(argv: &[&str], input: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Io {
        context: format!(
            "running {} (is it installed? Debian: apt-get install {})",
            argv[0],
            if argv[0].starts_with("nft") {
                "nftables"
            } else {
                "iptables"
            }
        ),
        source,
    })?;
    if let Some(text) = input {
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Io {
                context: format!("writing to {}", argv[0]),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Io {
        context: format!("waiting for {}", argv[0]),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Settings(format!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why `backend` cannot serve a network on this host, if it cannot.
pub fn unusable(backend: Backend) -> Option<String> {
    match backend {
        Backend::Ebpf => crate::doctor::ebpf_usable().err(),
        Backend::Nftables => tool(&["nft", "list", "tables"], None)
            .err()
            .map(|e| format!("nftables is not usable: {}", crate::error::report(&e))),
        Backend::Iptables => tool(&["iptables", "-t", "nat", "-S", "POSTROUTING"], None)
            .err()
            .map(|e| format!("iptables is not usable: {}", crate::error::report(&e))),
    }
}

/// The backend for `choice`: the named one if it works here, or for `auto` the first of
/// eBPF, nftables, iptables that does.
pub fn resolve(choice: BackendChoice) -> Result<Backend> {
    resolve_with(choice, unusable)
}

/// [`resolve`] for a network whose uplink the eBPF dataplane cannot serve when `no_ebpf`
/// says why (a layer-3 uplink): `auto` passes over eBPF, and asking for it is refused.
pub fn resolve_for_uplink(choice: BackendChoice, no_ebpf: Option<String>) -> Result<Backend> {
    match no_ebpf {
        None => resolve(choice),
        Some(why) if choice == BackendChoice::Ebpf => {
            Err(Error::Settings(format!("--backend ebpf: {why}")))
        }
        Some(why) => resolve_with(choice, |b| match b {
            Backend::Ebpf => Some(why.clone()),
            _ => unusable(b),
        }),
    }
}

fn resolve_with(
    choice: BackendChoice,
    unusable: impl Fn(Backend) -> Option<String>,
) -> Result<Backend> {
    if let Some(b) = choice.named() {
        return match unusable(b) {
            None => Ok(b),
            Some(why) => Err(Error::Settings(format!(
                "--backend {b}: {why}; run `netfast doctor` for the fixes, or pick another \
                 backend (--backend auto picks one that works)"
            ))),
        };
    }
    let mut reasons = Vec::new();
    for b in [Backend::Ebpf, Backend::Nftables, Backend::Iptables] {
        match unusable(b) {
            None => return Ok(b),
            Some(why) => reasons.push(format!("{b}: {why}")),
        }
    }
    Err(Error::Settings(format!(
        "no backend works on this host ({}); run `netfast doctor`",
        reasons.join("; ")
    )))
}

/// Makes the fallback backends' rules match `after`: netfast's nftables table and iptables
/// chains hold exactly what the networks they serve need (and vanish when they serve none),
/// and the bridges they serve let the host's 127.0.0.1 clients through. A backend that serves
/// no network in `before` nor in `after` is not touched at all: listing iptables rules can
/// load netfilter modules and hook them into the namespace, which an eBPF-only host must not
/// pay for.
pub fn sync(before: &State, after: &State) -> Result<()> {
    for backend in [Backend::Nftables, Backend::Iptables] {
        let serves = |s: &State| s.networks.iter().any(|n| n.backend == backend);
        if !serves(before) && !serves(after) {
            continue;
        }
        let rules = Rules::of(after, backend);
        // Every name was validated where it entered; a rule is never written with one that
        // was not, whatever path led here.
        rules.check().map_err(Error::from)?;
        for bridge in rules.bridges() {
            set_route_localnet(bridge, true)?;
        }
        // Bridges this backend no longer serves (their network removed, or moved to another
        // backend) get their own setting back, if they are still there.
        for n in before.networks.iter().filter(|n| n.backend == backend) {
            let still = after
                .networks
                .iter()
                .any(|a| a.bridge == n.bridge && a.backend != Backend::Ebpf);
            if !still && route_localnet_of(&n.bridge) && !n.route_localnet {
                set_route_localnet(&n.bridge, false)?;
            }
        }
        match backend {
            Backend::Nftables => sync_nft(&rules)?,
            Backend::Iptables => sync_iptables(&rules)?,
            Backend::Ebpf => unreachable!(),
        }
        if !rules.is_empty() {
            // Packet and byte counts in `netfast conntrack list`, as the eBPF dataplane
            // gives them. Best effort: without it the flows are listed without counts.
            let _ = std::fs::write("/proc/sys/net/netfilter/nf_conntrack_acct", "1");
        }
    }
    Ok(())
}

/// On: lets packets from 127.0.0.0/8 leave through `bridge` (they are masqueraded on the
/// way): what Docker sets for the host's clients of 127.0.0.1 without its userland proxy.
fn set_route_localnet(bridge: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet");
    std::fs::write(&path, if on { "1" } else { "0" }).map_err(|source| Error::Io {
        context: format!("writing {path}"),
        source,
    })
}

/// Whether `bridge` exists and has `route_localnet` on.
pub fn route_localnet_of(bridge: &str) -> bool {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
        .is_ok_and(|v| v.trim() == "1")
}

/// Whether netfast's rules of a fallback `backend` are in place (always true for eBPF, whose
/// attachments `network ls` checks itself).
pub fn installed(backend: Backend) -> bool {
    match backend {
        Backend::Ebpf => true,
        Backend::Nftables => nft_exists(),
        Backend::Iptables => ipt_jump("filter", "FORWARD", "NETFAST-FORWARD", "-C").is_ok(),
    }
}

/// Removes netfast's nftables table and iptables chains whatever the state says: `down`'s
/// last sweep, for what a command that died before it saved its state left. iptables is
/// asked only about the tables that exist already (listing one can load its module and hook
/// it into the namespace). Returns whether there was anything.
pub fn remove_all() -> Result<bool> {
    let mut any = false;
    if nft_table_exists()? {
        sync_nft(&Rules::default())?;
        any = true;
    }
    let mut chains = Vec::new();
    for table in ipt_tables_present()? {
        chains.extend(ipt_own_chains(table)?);
    }
    if !chains.is_empty() {
        sync_iptables(&Rules::default())?;
        any = true;
    }
    Ok(any)
}

/// The iptables tables (of nat, filter, raw) that exist in this namespace: in the legacy
/// backend's list, or as the nftables tables iptables-nft keeps them in.
fn ipt_tables_present() -> Result<Vec<&'static str>> {
    let legacy = std::fs::read_to_string("/proc/net/ip_tables_names").unwrap_or_default();
    let nft = match tool(&["nft", "list", "tables", "ip"], None) {
        Ok(out) => out,
        // No nft here: iptables-nft cannot be in use either.
        Err(Error::Io { .. }) => String::new(),
        Err(e) => return Err(e),
    };
    Ok(["nat", "filter", "raw"]
        .into_iter()
        .filter(|t| {
            legacy.lines().any(|l| l.trim() == *t)
                || nft.lines().any(|l| l.trim() == format!("table ip {t}"))
        })
        .collect())
}

fn nft_exists() -> bool {
    nft_table_exists().unwrap_or(false)
}

/// Whether table `ip netfast` exists: false where nft says there is no such table (or nft is
/// not installed), an error when nft fails otherwise (killed, say): a failed look is never
/// taken for an absent table, which would leave the table behind.
fn nft_table_exists() -> Result<bool> {
    match tool(&["nft", "list", "table", "ip", "netfast"], None) {
        Ok(_) => Ok(true),
        Err(Error::Io { .. }) => Ok(false),
        Err(e) if e.to_string().contains("No such file or directory") => Ok(false),
        Err(e) => Err(e),
    }
}

fn sync_nft(rules: &Rules) -> Result<()> {
    if rules.is_empty() && !nft_table_exists()? {
        return Ok(());
    }
    let counts = if rules.is_empty() {
        Counts::new()
    } else {
        nft_counters()?
    };
    let batch = rules::nft_batch(rules, &counts, true).to_json();
    tool(&["nft", "-j", "-f", "-"], Some(&batch))?;
    if rules.is_empty() {
        return Ok(());
    }
    // The timeout policies, in a second transaction (nft's JSON drops their policy): new
    // flows of the few milliseconds between the two get the kernel's timeouts. A kernel
    // without conntrack timeout policies refuses them: the rest works without.
    if let Err(e) = tool(
        &["nft", "-f", "-"],
        Some(&rules::nft_timeouts_text(&rules.timeouts)),
    ) {
        eprintln!(
            "netfast: nftables refused conntrack timeout policies ({}): flows of the \
             nftables backend's networks keep the kernel's timeouts \
             (net.netfilter.nf_conntrack_*_timeout)",
            crate::error::report(&e)
        );
    }
    Ok(())
}

/// The drop counters of table `ip netfast` (none when it does not exist).
fn nft_counters() -> Result<Counts> {
    let mut counts = Counts::new();
    if !nft_table_exists()? {
        return Ok(counts);
    }
    let json = tool(
        &["nft", "-j", "list", "counters", "table", "ip", "netfast"],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&json)
        .map_err(|e| Error::Settings(format!("reading `nft -j list counters`: {e}")))?;
    for item in v["nftables"].as_array().into_iter().flatten() {
        let c = &item["counter"];
        if let (Some(name), Some(p), Some(b)) = (
            c["name"].as_str(),
            c["packets"].as_u64(),
            c["bytes"].as_u64(),
        ) {
            counts.insert(name.to_owned(), (p, b));
        }
    }
    Ok(counts)
}

/// netfast's chains that exist in `table`.
fn ipt_own_chains(table: &str) -> Result<Vec<String>> {
    let rules = tool(&["iptables", "-t", table, "-S"], None)?;
    Ok(rules
        .lines()
        .filter_map(|l| l.strip_prefix("-N NETFAST-"))
        .map(|c| format!("NETFAST-{c}"))
        .collect())
}

fn ipt_jump(table: &str, builtin: &str, chain: &str, op: &str) -> Result<String> {
    tool(
        &["iptables", "-w", "-t", table, op, builtin, "-j", chain],
        None,
    )
}

fn sync_iptables(rules: &Rules) -> Result<()> {
    let existing: Vec<(String, String)> = ["nat", "filter", "raw"]
        .into_iter()
        .map(|t| {
            Ok(ipt_own_chains(t)?
                .into_iter()
                .map(move |c| (t.to_owned(), c)))
        })
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
                while ipt_jump(table, builtin, chain, "-C").is_ok() {
                    ipt_jump(table, builtin, chain, "-D")?;
                }
            }
        }
        for (table, chain) in &existing {
            tool(&["iptables", "-w", "-t", table, "-F", chain], None)?;
        }
        for (table, chain) in &existing {
            tool(&["iptables", "-w", "-t", table, "-X", chain], None)?;
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
    let counts = ipt_counters(&rules.nets)?;
    let policies = ipt_timeouts(&rules.timeouts)?;
    let (input, allow_chains) = rules::ipt_restore(rules, &counts, &policies);
    tool(&["iptables-restore", "-w", "--noflush", "-c"], Some(&input))?;
    // First in the built-in chains, as Docker puts its own: netfast's accepts must come
    // before a policy of DROP, and its drops before anyone's accepts.
    for (table, chain, builtin) in IPT_CHAINS {
        if let Some(builtin) = builtin
            && ipt_jump(table, builtin, chain, "-C").is_err()
        {
            tool(
                &[
                    "iptables", "-w", "-t", table, "-I", builtin, "1", "-j", chain,
                ],
                None,
            )?;
        }
    }
    // Allow-list chains of publications that are gone.
    for (table, chain) in existing.iter().filter(|(t, c)| {
        t == "filter" && c.starts_with("NETFAST-ALLOW-") && !allow_chains.contains(c)
    }) {
        tool(&["iptables", "-w", "-t", table, "-F", chain], None)?;
        tool(&["iptables", "-w", "-t", table, "-X", chain], None)?;
    }
    Ok(())
}

/// Creates or updates the conntrack timeout policies the iptables rules refer to; none where
/// the kernel has no timeout policies (said once on stderr: the flows keep the kernel's).
fn ipt_timeouts(t: &crate::loader::model::Timeouts) -> Result<Vec<cttimeout::Policy>> {
    let policies = cttimeout::policies(t);
    for p in &policies {
        if let Err(e) = cttimeout::set(p) {
            if cttimeout::unsupported(&e) {
                eprintln!(
                    "netfast: this kernel has no conntrack timeout policies \
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
fn ipt_counters(nets: &[Net]) -> Result<Counts> {
    let save = tool(&["iptables-save", "-c", "-t", "filter"], None)?;
    let mut counts = ipt_counts(&save, nets);
    let raw = tool(&["iptables-save", "-c", "-t", "raw"], None)?;
    counts.extend(ipt_raw_counts(&raw));
    Ok(counts)
}

/// The raw table's drop counters in `iptables-save -c -t raw` output.
fn ipt_raw_counts(save: &str) -> Counts {
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
fn ipt_counts(save: &str, nets: &[Net]) -> Counts {
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
/// prints it), read from `iptables-save -c` output.
fn counts_of(save: &str, wanted: &[(String, String)]) -> Counts {
    let mut counts = Counts::new();
    for line in save.lines() {
        let Some((p, b, rule)) = line
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
            .and_then(|(c, rule)| {
                let (p, b) = c.split_once(':')?;
                Some((p.parse::<u64>().ok()?, b.parse::<u64>().ok()?, rule))
            })
        else {
            continue;
        };
        for (name, _) in wanted.iter().filter(|(_, r)| r == rule) {
            let e = counts.entry(name.clone()).or_default();
            e.0 += p;
            e.1 += b;
        }
    }
    counts
}

/// The fallback backends' counters: packets and bytes per drop reason (summed over both) and
/// per network they serve ([`net_counter`]).
pub fn counters(state: &State) -> Result<Counts> {
    let mut total = Counts::new();
    let mut add = |c: Vec<(String, (u64, u64))>| {
        for (k, (p, b)) in c {
            let e = total.entry(k).or_default();
            e.0 += p;
            e.1 += b;
        }
    };
    if state
        .networks
        .iter()
        .any(|n| n.backend == Backend::Nftables)
    {
        add(nft_counters()?.into_iter().collect());
    }
    let ipt = Rules::of(state, Backend::Iptables);
    if !ipt.is_empty() {
        // A reason dropped in both of iptables' tables is one reason to `stats`.
        add(ipt_counters(&ipt.nets)?
            .into_iter()
            .map(|(k, v)| match k.strip_prefix(&ipt_raw_counter("")) {
                Some(reason) => (reason.to_owned(), v),
                None => (k, v),
            })
            .collect());
    }
    Ok(total)
}

/// The container port host port `host_port` of publication `p` leads to.
fn container_port(p: &crate::loader::publish::Publication, host_port: u16) -> Option<u16> {
    p.host_ports
        .iter()
        .zip(p.container_ports.iter())
        .find_map(|(h, c)| (h == host_port).then_some(c))
}

/// Ends the kernel's flows through a publication of a fallback network (as the eBPF dataplane
/// ends its own): the entries DNATed from its host ports to its container. Returns how many.
pub fn end_flows(p: &crate::loader::publish::Publication) -> Result<usize> {
    delete_entries(|e| {
        e.original.proto == p.proto.number()
            && e.original.icmp.is_none()
            && (p.host_ip.is_none() || p.host_ip == Some(e.original.dst))
            && e.reply.src == p.container_ip
            && container_port(p, e.original.dport) == Some(e.reply.sport)
    })
}

/// Called once a publication of a fallback network is in the rules: ends the kernel's
/// entries for its host ports (on its address, or on any of the host's `local` addresses and
/// 127.0.0.0/8) that do not lead to its container. Netfilter's NAT rules meet only the first
/// packet of a flow: an entry made while the port led elsewhere (to a removed container, or
/// untranslated to the host itself while nothing was published) would go on matching, and a
/// UDP client that keeps sending refreshes it for ever (issue #19; Kubernetes clears a UDP
/// service's entries the same way when its endpoints change). Returns how many.
pub fn end_stale_flows(
    p: &crate::loader::publish::Publication,
    local: &[std::net::Ipv4Addr],
) -> Result<usize> {
    delete_entries(|e| {
        let to_host = match p.host_ip {
            Some(ip) => e.original.dst == ip,
            None => e.original.dst.is_loopback() || local.contains(&e.original.dst),
        };
        e.original.proto == p.proto.number()
            && e.original.icmp.is_none()
            && to_host
            && container_port(p, e.original.dport)
                .is_some_and(|cp| !(e.reply.src == p.container_ip && e.reply.sport == cp))
    })
}

/// Deletes the kernel's conntrack entries that `doomed` selects; returns how many went.
fn delete_entries(doomed: impl Fn(&ctnetlink::KEntry) -> bool) -> Result<usize> {
    let mut ended = 0;
    for e in ctnetlink::dump()?.iter().filter(|e| doomed(e)) {
        if ctnetlink::delete(&e.original)? {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Deletes the kernel conntrack entries of the fallback networks of `state` that `filter`
/// matches (`netfast conntrack delete`, and the flows `container rm`, `network rm` and
/// `down` end); returns how many went. Nothing is asked of the kernel when no network of
/// `state` is on a fallback backend.
pub fn delete_kernel_flows(
    state: &State,
    filter: &crate::conntrack_filter::Filter,
) -> Result<usize> {
    let mut ended = 0;
    for (_, e) in kernel_flows(state, filter)? {
        if ctnetlink::delete(&e.original)? {
            ended += 1;
        }
    }
    Ok(ended)
}

/// The kernel conntrack entries of the networks the fallback backends serve (flows from
/// their subnets, and flows to their containers: [`fallback_network`]) that `filter`
/// matches, with the network's id.
/// The kernel selects what it can itself ([`ctnetlink::DumpFilter`]: exact values of the
/// original tuple); the rest of the filter (CIDRs, the reply tuple, a container on either
/// tuple, a network, a TCP state) it cannot express, and is applied here.
pub fn kernel_flows(
    state: &State,
    filter: &crate::conntrack_filter::Filter,
) -> Result<Vec<(u16, ctnetlink::KEntry)>> {
    if state.networks.iter().all(|n| n.backend == Backend::Ebpf) {
        return Ok(Vec::new());
    }
    let exact =
        |net: Option<ipnet::Ipv4Net>| net.filter(|n| n.prefix_len() == 32).map(|n| n.addr());
    let published = filter.published;
    let hint = ctnetlink::DumpFilter {
        proto: filter
            .proto
            .or(published.and_then(|p| p.proto))
            .or(filter.state.map(|_| 6)),
        src: exact(filter.orig_src),
        dst: exact(filter.orig_dst).or(published.and_then(|p| p.host_ip)),
        sport: filter.orig_sport,
        dport: filter.orig_dport.or(published.map(|p| p.port)),
    };
    Ok(ctnetlink::dump_matching(&hint)?
        .into_iter()
        .filter_map(|e| {
            let id = fallback_network(state, &e)?;
            filter.matches(&e.flow(id)).then_some((id, e))
        })
        .collect())
}

/// The id of the fallback network a kernel conntrack entry belongs to: the flow comes from
/// its subnet, or goes to one of its containers.
pub fn fallback_network(state: &State, e: &ctnetlink::KEntry) -> Option<u16> {
    state
        .networks
        .iter()
        .filter(|n| n.backend != Backend::Ebpf)
        .find(|n| n.subnet.contains(&e.original.src) || n.subnet.contains(&e.reply.src))
        .map(|n| n.id)
}

/// The fallback backends' counters added to `stats` (the eBPF dataplane's, or empty): their
/// drops under the eBPF dataplane's reasons, and a line per network they serve, with the
/// packets the kernel forwarded out of (tx) and into (rx) its bridge.
pub fn add_fallback_counters(state: &State, stats: &mut crate::stats::Stats) -> Result<()> {
    let counts = counters(state)?;
    for (reason, (packets, bytes)) in &counts {
        let Some(r) = netfast_common::DropReason::ALL
            .into_iter()
            .find(|r| r.name() == reason)
        else {
            continue;
        };
        match stats.drops.iter_mut().find(|d| d.reason == r.name()) {
            Some(d) => {
                d.packets += packets;
                d.bytes += bytes;
            }
            None => stats.drops.push(crate::stats::DropStats {
                reason: r.name(),
                description: r.describe(),
                packets: *packets,
                bytes: *bytes,
            }),
        }
    }
    for n in state.networks.iter().filter(|n| n.backend != Backend::Ebpf) {
        let get = |way| {
            counts
                .get(&net_counter(way, n.id))
                .copied()
                .unwrap_or_default()
        };
        let ((tx_packets, tx_bytes), (rx_packets, rx_bytes)) = (get(Way::Tx), get(Way::Rx));
        stats.networks.push(crate::stats::NetworkStats {
            id: n.id,
            name: n.name.clone(),
            subnet: n.subnet.to_string(),
            tx_packets,
            tx_bytes,
            rx_packets,
            rx_bytes,
        });
    }
    stats.networks.sort_by_key(|n| n.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_first_backend_that_works_and_a_named_one_must_work() {
        let none_but = |ok: Backend| move |b: Backend| (b != ok).then(|| format!("no {b}"));
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Ebpf)).unwrap(),
            Backend::Ebpf
        );
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Nftables)).unwrap(),
            Backend::Nftables
        );
        assert_eq!(
            resolve_with(BackendChoice::Auto, none_but(Backend::Iptables)).unwrap(),
            Backend::Iptables
        );
        let err = resolve_with(BackendChoice::Nftables, none_but(Backend::Ebpf))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--backend nftables: no nftables") && err.contains("netfast doctor"),
            "{err}"
        );
        let err = resolve_with(BackendChoice::Auto, |b| Some(format!("no {b}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ebpf: no ebpf; nftables: no nftables; iptables: no iptables"),
            "{err}"
        );
    }

    #[test]
    fn iptables_counters_are_read_per_drop_reason_and_per_network_way() {
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
        let c = ipt_counts(save, &[net]);
        assert_eq!(c.get("direct_access"), Some(&(2, 120)));
        assert_eq!(c.get("rx_3"), Some(&(11, 1060)));
        assert_eq!(c.get("tx_3"), Some(&(7, 700)));
        assert_eq!(c.len(), 3, "{c:?}");
        let raw = "*raw\n\
            [6:360] -A NETFAST-LOOPBACK-FROM-NET -j DROP\n\
            [1:60] -A NETFAST-TO-HOST-LOOPBACK -j DROP\n\
            COMMIT\n";
        let c = ipt_raw_counts(raw);
        assert_eq!(c.get("raw:loopback_from_network"), Some(&(6, 360)));
        assert_eq!(c.get("raw:to_host_loopback"), Some(&(1, 60)));
    }
}
