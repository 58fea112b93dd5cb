//! `netfast conntrack list|watch|flush`: the flows the dataplane tracks, like `conntrack -L`,
//! `conntrack -E` and `conntrack -F`.

use std::{
    collections::HashMap,
    io::Write as _,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use clap::Subcommand;
use netfast::{
    Dataplane, backend,
    common::{
        conntrack::{CT_EVENT_NEW, CtEvent, CtKey},
        maps::CT_EVENTS,
    },
    host::Host,
    loader::{
        Loader,
        model::{Backend, State},
    },
    maps::{self, Flow},
};
use serde::Serialize;

#[derive(Subcommand)]
pub enum Command {
    /// One line per tracked flow: protocol, state, seconds left, both tuples, packets and bytes.
    List {
        /// JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print NEW / UPDATE / DESTROY events as they happen, until interrupted.
    Watch {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Forget every tracked flow and NAT mapping.
    Flush,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let host = Host::current()?;
    let state = Loader::new()?.state()?;
    let fallback = state.networks.iter().any(|n| n.backend != Backend::Ebpf);
    let dp = Dataplane::open_existing(&host)?;
    if dp.is_none() && !fallback {
        eprintln!(
            "netfast: no dataplane in {} (create a network first)",
            host.describe()
        );
        if let Command::List { json: true } = command {
            println!("[]");
        }
        return Ok(());
    }
    match command {
        Command::List { json } => list(dp.as_ref(), &state, json),
        Command::Watch { json } => watch(dp, &state, json),
        Command::Flush => {
            let mut n = match dp {
                Some(mut dp) => maps::flush_conntrack(dp.ebpf_mut())?,
                None => 0,
            };
            for (_, e) in backend::kernel_flows(&state)? {
                if backend::ctnetlink::delete(&e.original)? {
                    n += 1;
                }
            }
            println!("flushed {n} flows");
            Ok(())
        }
    }
}

fn list(dp: Option<&Dataplane>, state: &State, json: bool) -> anyhow::Result<()> {
    let mut flows = match dp {
        Some(dp) => maps::flows(dp.ebpf(), maps::monotonic_now())?,
        None => Vec::new(),
    };
    flows.extend(
        backend::kernel_flows(state)?
            .iter()
            .map(|(id, e)| e.flow(*id)),
    );
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

fn print_event(kind: &'static str, flow: &Flow, json: bool) -> anyhow::Result<()> {
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
fn watch(dp: Option<Dataplane>, state: &State, json: bool) -> anyhow::Result<()> {
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
        Some(backend::ctnetlink::Events::subscribe()?)
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
                print_event(kind, &flow, json)?;
                live.insert(event.key, flow);
            }
        }
        if let Some(events) = &kernel {
            for (kind, e) in events.read()? {
                if let Some(id) = backend::fallback_network(state, &e) {
                    print_event(kind.name(), &e.flow(id), json)?;
                }
            }
        }
        if let Some(dp) = &dp
            && Instant::now() >= next_scan
        {
            let now_live = current(dp)?;
            for (key, flow) in &live {
                if !now_live.contains_key(key) {
                    print_event("DESTROY", flow, json)?;
                }
            }
            live = now_live;
            next_scan = Instant::now() + Duration::from_secs(1);
        }
        let mut fds: Vec<libc::pollfd> = ring
            .iter()
            .map(|r| r.as_raw_fd())
            .chain(kernel.iter().map(|k| k.fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: a valid array of pollfds and its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 200) };
    }
}

fn current(dp: &Dataplane) -> anyhow::Result<HashMap<CtKey, Flow>> {
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
