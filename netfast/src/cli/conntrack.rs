//! `netfast conntrack list|watch|count|delete|flush`: the flows the dataplane tracks, like
//! `conntrack -L`, `-E`, `-C`, `-D` and `-F`, with conntrack-tools' filters.

use std::{
    collections::HashMap,
    io::Write as _,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use clap::{Args, Subcommand};
use ipnet::Ipv4Net;
use netfast::{
    Dataplane, backend,
    common::{
        conntrack::{CT_EVENT_NEW, CtEvent, CtKey},
        maps::CT_EVENTS,
    },
    conntrack_filter::{self as cf, Filter, FilterSpec, Published},
    host::Host,
    loader::{
        Loader,
        model::{Backend, State},
    },
    maps::{self, Flow},
};
use serde::Serialize;

/// Which flows a command acts on; every filter given must hold (none: every flow). The
/// conntrack-tools option each one follows is in brackets.
#[derive(Args, Clone, Debug, Default)]
pub struct FilterArgs {
    /// Protocol: tcp, udp or icmp [conntrack -p]
    #[arg(short = 'p', long = "proto", value_name = "PROTO", value_parser = cf::parse_proto)]
    proto: Option<u8>,
    /// Source of the original direction: address or CIDR [conntrack -s, --orig-src]
    #[arg(short = 's', long = "orig-src", visible_alias = "src", value_name = "ADDR[/LEN]", value_parser = cf::parse_net)]
    orig_src: Option<Ipv4Net>,
    /// Destination of the original direction: address or CIDR [conntrack -d, --orig-dst]
    #[arg(short = 'd', long = "orig-dst", visible_alias = "dst", value_name = "ADDR[/LEN]", value_parser = cf::parse_net)]
    orig_dst: Option<Ipv4Net>,
    /// Source of the reply direction (a DNATed flow's container): address or CIDR
    /// [conntrack -r, --reply-src]
    #[arg(short = 'r', long = "reply-src", value_name = "ADDR[/LEN]", value_parser = cf::parse_net)]
    reply_src: Option<Ipv4Net>,
    /// Destination of the reply direction (a masqueraded flow's external address): address
    /// or CIDR [conntrack -q, --reply-dst]
    #[arg(short = 'q', long = "reply-dst", value_name = "ADDR[/LEN]", value_parser = cf::parse_net)]
    reply_dst: Option<Ipv4Net>,
    /// Source port of the original direction [conntrack --sport, --orig-port-src]
    #[arg(long = "sport", visible_alias = "orig-port-src", value_name = "PORT", value_parser = cf::parse_port)]
    sport: Option<u16>,
    /// Destination port of the original direction [conntrack --dport, --orig-port-dst]
    #[arg(long = "dport", visible_alias = "orig-port-dst", value_name = "PORT", value_parser = cf::parse_port)]
    dport: Option<u16>,
    /// Source port of the reply direction [conntrack --reply-port-src]
    #[arg(long = "reply-port-src", value_name = "PORT", value_parser = cf::parse_port)]
    reply_port_src: Option<u16>,
    /// Destination port of the reply direction [conntrack --reply-port-dst]
    #[arg(long = "reply-port-dst", value_name = "PORT", value_parser = cf::parse_port)]
    reply_port_dst: Option<u16>,
    /// TCP state, any case: NONE, SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT, CLOSE_WAIT,
    /// LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2; only TCP flows match [conntrack --state]
    #[arg(long = "state", value_name = "STATE", value_parser = cf::parse_state)]
    state: Option<&'static str>,
    /// The flows of a netfast network [no conntrack equivalent: -s CIDR or -r CIDR with its
    /// subnet, on either tuple]
    #[arg(long = "network", value_name = "NAME")]
    network: Option<String>,
    /// The flows of a netfast container, from it or to it [no conntrack equivalent: -s IP,
    /// then -r IP, with its address]
    #[arg(long = "container", value_name = "NAME")]
    container: Option<String>,
    /// The flows that came in through a published host port (on that address, if given)
    /// and were translated to a container [conntrack -d IP --dport PORT -p PROTO --dst-nat]
    #[arg(long = "published", value_name = "[IP:]PORT[/PROTO]", value_parser = |s: &str| s.parse::<Published>())]
    published: Option<Published>,
}

impl FilterArgs {
    fn spec(&self) -> FilterSpec {
        FilterSpec {
            flow: cf::FlowCriteria {
                proto: self.proto,
                orig_src: self.orig_src,
                orig_dst: self.orig_dst,
                reply_src: self.reply_src,
                reply_dst: self.reply_dst,
                orig_sport: self.sport,
                orig_dport: self.dport,
                reply_sport: self.reply_port_src,
                reply_dport: self.reply_port_dst,
                state: self.state,
                published: self.published,
            },
            network: self.network.clone(),
            container: self.container.clone(),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// One line per tracked flow: protocol, state, seconds left, both tuples, packets and
    /// bytes (like `conntrack -L`).
    #[command(after_help = "Example: netfast conntrack list -p udp --dport 53")]
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print NEW / UPDATE / DESTROY events of the matching flows as they happen, until
    /// interrupted (like `conntrack -E`).
    #[command(after_help = "Example: netfast conntrack watch -s 172.18.0.2")]
    Watch {
        #[command(flatten)]
        filter: FilterArgs,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// How many flows match (like `conntrack -C`, which counts them all).
    Count {
        #[command(flatten)]
        filter: FilterArgs,
        /// `{"count": N}` instead of the number.
        #[arg(long)]
        json: bool,
    },
    /// Forget the matching flows and, in the eBPF dataplane, the NAT mappings no other flow
    /// uses; prints how many (like `conntrack -D`). At least one filter is needed.
    #[command(after_help = "Example: netfast conntrack delete -p udp --orig-port-dst 5353")]
    Delete {
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Forget every tracked flow and NAT mapping (like `conntrack -F`); with filters, only
    /// the matching flows, as `delete`.
    Flush {
        #[command(flatten)]
        filter: FilterArgs,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let host = Host::current()?;
    let state = Loader::new()?.state()?;
    let fallback = state.networks.iter().any(|n| n.backend != Backend::Ebpf);
    // Bad names (an unknown network or container) fail here, before anything changes.
    let filter = match &command {
        Command::List { filter, .. }
        | Command::Watch { filter, .. }
        | Command::Count { filter, .. }
        | Command::Delete { filter }
        | Command::Flush { filter } => filter.spec().resolve(&state)?,
    };
    if matches!(command, Command::Delete { .. }) && filter.is_empty() {
        anyhow::bail!(
            "delete needs at least one filter (e.g. `-p udp --dport 53`, `--container NAME`); \
                 `netfast conntrack flush` forgets every flow"
        );
    }
    let dp = Dataplane::open_existing(&host)?;
    if dp.is_none() && !fallback {
        eprintln!(
            "netfast: no dataplane in {} (create a network first)",
            host.describe()
        );
        match command {
            Command::List { json: true, .. } => println!("[]"),
            Command::Count { json, .. } => print_count(0, json),
            Command::Flush { .. } if filter.is_empty() => println!("flushed 0 flows"),
            Command::Delete { .. } | Command::Flush { .. } => {
                println!("deleted 0 flows: none matches the filters");
            }
            _ => {}
        }
        return Ok(());
    }
    match command {
        Command::List { json, .. } => list(dp.as_ref(), &state, &filter, json),
        Command::Watch { json, .. } => watch(dp, &state, &filter, json),
        Command::Count { json, .. } => {
            print_count(flows(dp.as_ref(), &state, &filter)?.len(), json);
            Ok(())
        }
        Command::Flush { .. } if filter.is_empty() => {
            let mut n = match dp {
                Some(mut dp) => maps::flush_conntrack(dp.ebpf_mut())?,
                None => 0,
            };
            n += backend::delete_kernel_flows(&state, &filter)?;
            println!("flushed {n} flows");
            Ok(())
        }
        Command::Delete { .. } | Command::Flush { .. } => delete(dp, &state, &filter),
    }
}

fn print_count(n: usize, json: bool) {
    if json {
        println!("{}", serde_json::json!({ "count": n }));
    } else {
        println!("{n}");
    }
}

/// The matching flows: the eBPF dataplane's, then the kernel's of the fallback networks.
fn flows(dp: Option<&Dataplane>, state: &State, filter: &Filter) -> anyhow::Result<Vec<Flow>> {
    let mut flows = match dp {
        Some(dp) => maps::flows(dp.ebpf(), maps::monotonic_now())?,
        None => Vec::new(),
    };
    // The kernel selects what it can (exact values of the original tuple); the rest of the
    // filter is applied to what it returns, by the same implementation as for the eBPF flows.
    flows.retain(|f| filter.matches(f));
    flows.extend(
        backend::kernel_flows(state, filter)?
            .iter()
            .map(|(id, e)| e.flow(*id)),
    );
    Ok(flows)
}

fn delete(dp: Option<Dataplane>, state: &State, filter: &Filter) -> anyhow::Result<()> {
    let (mut n, mut mappings) = (0, 0);
    if let Some(mut dp) = dp {
        let d = maps::delete_flows(dp.ebpf_mut(), maps::monotonic_now(), |f| filter.matches(f))?;
        n += d.flows;
        mappings += d.mappings;
    }
    n += backend::delete_kernel_flows(state, filter)?;
    if n == 0 {
        println!("deleted 0 flows: none matches the filters");
    } else if mappings > 0 {
        println!("deleted {n} flows and {mappings} NAT mappings no other flow used");
    } else {
        println!("deleted {n} flows");
    }
    Ok(())
}

fn list(dp: Option<&Dataplane>, state: &State, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let flows = flows(dp, state, filter)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&flows)?);
    } else {
        for f in &flows {
            println!("{}", f.line());
        }
        eprintln!(
            "netfast conntrack: {} flow entries have been shown.",
            flows.len()
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct Event<'a> {
    event: &'static str,
    #[serde(flatten)]
    flow: &'a Flow,
}

pub(super) fn print_event(kind: &'static str, flow: &Flow, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&Event { event: kind, flow })?
        )?;
    } else {
        writeln!(out, "{:>9} {}", format!("[{kind}]"), flow.line())?;
    }
    out.flush()?;
    Ok(())
}

/// Events of the eBPF dataplane (its ring, and a rescan for flows that expired) and, for
/// networks on the nftables/iptables backends, the kernel's conntrack events.
fn watch(dp: Option<Dataplane>, state: &State, filter: &Filter, json: bool) -> anyhow::Result<()> {
    let mut dp = dp;
    let mut ring = match dp.as_mut() {
        Some(dp) => {
            let map = dp
                .ebpf_mut()
                .take_map(CT_EVENTS)
                .context("the dataplane has no event ring")?;
            let mut ring = RingBuf::try_from(map)?;
            // Events left in the ring by an earlier watcher are history, not news.
            while ring.next().is_some() {}
            Some(ring)
        }
        None => None,
    };
    let kernel = if state.networks.iter().any(|n| n.backend != Backend::Ebpf) {
        Some(netfast::netfilter::ctnetlink::Events::subscribe()?)
    } else {
        None
    };
    // DESTROY has no event in the eBPF dataplane: flows expire lazily in the datapath.
    // Rescan each second and report the flows that are gone since.
    let mut live: HashMap<CtKey, Flow> = match &dp {
        Some(dp) => current(dp)?,
        None => HashMap::new(),
    };
    let mut next_scan = Instant::now() + Duration::from_secs(1);
    // Subscribed: from here on no event is missed. Scripts (and the tests) wait for this.
    eprintln!("netfast conntrack: watching for events (interrupt to stop)");
    loop {
        if let Some(ring) = ring.as_mut() {
            while let Some(item) = ring.next() {
                let Some(event) = bytemuck::try_from_bytes::<CtEvent>(&item[..]).ok().copied()
                else {
                    continue;
                };
                let now = maps::monotonic_now();
                let flow = Flow::new(&event.key, &event.entry, None, now);
                let kind = if event.kind == CT_EVENT_NEW {
                    "NEW"
                } else {
                    "UPDATE"
                };
                if filter.matches(&flow) {
                    print_event(kind, &flow, json)?;
                }
                live.insert(event.key, flow);
            }
        }
        if let Some(events) = &kernel {
            for (kind, e) in events.read()? {
                if let Some(id) = backend::fallback_network(state, &e)
                    && filter.matches(&e.flow(id))
                {
                    print_event(kind.name(), &e.flow(id), json)?;
                }
            }
        }
        if let Some(dp) = &dp
            && Instant::now() >= next_scan
        {
            dp.check_still_current()?;
            live = print_ended(live, current(dp)?, |f| filter.matches(f), json)?;
            next_scan = Instant::now() + Duration::from_secs(1);
        }
        wait_readable(
            ring.iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .chain(kernel.iter().map(netfast::netfilter::ctnetlink::Events::fd)),
        );
    }
}

/// Prints a DESTROY event for each flow of `live` that `now_live` no longer has and `shown`
/// selects; returns `now_live`, the flows to compare with next time.
pub(super) fn print_ended(
    live: HashMap<CtKey, Flow>,
    now_live: HashMap<CtKey, Flow>,
    shown: impl Fn(&Flow) -> bool,
    json: bool,
) -> anyhow::Result<HashMap<CtKey, Flow>> {
    for (key, flow) in &live {
        if !now_live.contains_key(key) && shown(flow) {
            print_event("DESTROY", flow, json)?;
        }
    }
    Ok(now_live)
}

/// Waits until one of `fds` has something to read, for at most 200 ms (the scans for ended
/// flows run between the waits).
pub(super) fn wait_readable(fds: impl Iterator<Item = std::os::fd::RawFd>) {
    let mut fds: Vec<libc::pollfd> = fds
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfds and its length.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
}

pub(super) fn current(dp: &Dataplane) -> anyhow::Result<HashMap<CtKey, Flow>> {
    let now = maps::monotonic_now();
    let entries = maps::conntrack_entries(dp.ebpf())?;
    let all: HashMap<CtKey, _> = entries.into_iter().collect();
    Ok(all
        .iter()
        .filter(|(_, e)| e.flags & netfast::common::conntrack::CT_F_REPLY == 0)
        .filter_map(|(k, e)| {
            let reply = all.get(&e.peer_key(k));
            let alive = e.expires.max(reply.map_or(0, |r| r.expires)) >= now;
            alive.then(|| (*k, Flow::new(k, e, reply, now)))
        })
        .collect())
}
