//! `netfast monitor [--drops] [--flows]`: live events of the eBPF dataplane — each dropped
//! packet with its reason, hook and addresses (from the programs' drop ring, which each CPU
//! writes at most `DROP_EVENTS_PER_CPU_PER_SECOND` times a second), and flows as they open
//! and end.

use std::{
    collections::HashMap,
    io::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::maps::RingBuf;
use clap::Args;
use netfast::{
    Dataplane,
    common::{
        DropReason, Hook,
        conntrack::{CT_EVENT_NEW, CtEvent, CtKey, PROTO_ICMP},
        maps::{CT_EVENTS, DROP_EVENTS},
        monitor::{DROP_EVENTS_PER_CPU_PER_SECOND, DropEvent},
    },
    host::Host,
    loader::{Loader, model::Backend},
    maps::{self, Flow},
};
use serde::Serialize;

#[derive(Args)]
#[command(after_help = format!(
    "Drops come from a ring buffer the eBPF programs write; each CPU writes at most \
     {DROP_EVENTS_PER_CPU_PER_SECOND} events a second, and counts the rest \
     (monitor_suppressed in `netfast stats`), so that a flood cannot swamp it. One monitor \
     reads each ring: two at once share its events. Networks on the nftables/iptables \
     backends have no such ring: their drops are counted by their rules (`netfast stats`, \
     the agent's metrics), and `netfast conntrack watch` follows their flows."
))]
pub struct MonitorArgs {
    /// Each dropped packet: its reason, the hook that dropped it, its addresses.
    #[arg(long)]
    drops: bool,
    /// Flows as they open (NEW) and end (DESTROY: expired, or deleted).
    #[arg(long)]
    flows: bool,
    /// The programs' debug records (aya-log). Only programs built with netfast's `ebpf-log`
    /// feature write them: `cargo build --release -p netfast --features ebpf-log`, then
    /// `netfast upgrade` with that binary to run its programs.
    #[arg(long)]
    log: bool,
    /// A JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct DropLine {
    event: &'static str,
    /// CLOCK_MONOTONIC seconds.
    time: f64,
    hook: &'static str,
    reason: &'static str,
    interface: String,
    protocol: String,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u16>,
    bytes: u32,
}

fn interface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into the buffer.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("#{ifindex}");
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn drop_line(e: &DropEvent) -> DropLine {
    let icmp = e.proto == PROTO_ICMP;
    let ports = e.proto != 0 && (e.src_port != 0 || e.dst_port != 0);
    DropLine {
        event: "DROP",
        time: e.ktime_ns as f64 / 1e9,
        hook: Hook::from_u32(u32::from(e.hook)).map_or("?", Hook::name),
        reason: DropReason::from_u32(u32::from(e.reason)).map_or("?", DropReason::name),
        interface: interface_name(e.ifindex),
        protocol: match e.proto {
            0 => "-".into(),
            1 => "icmp".into(),
            6 => "tcp".into(),
            17 => "udp".into(),
            p => p.to_string(),
        },
        src: maps::addr_of(e.src_addr),
        dst: maps::addr_of(e.dst_addr),
        sport: (ports && !icmp).then(|| u16::from_be(e.src_port)),
        dport: (ports && !icmp).then(|| u16::from_be(e.dst_port)),
        id: (ports && icmp).then(|| u16::from_be(e.src_port)),
        bytes: e.len,
    }
}

fn print_drop(d: &DropLine, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(d)?)?;
    } else {
        let endpoint = |a: Ipv4Addr, p: Option<u16>| match p {
            Some(p) => format!("{a}:{p}"),
            None => a.to_string(),
        };
        writeln!(
            out,
            "[{:.3}] {:>9} {} {} on {}: {} {} -> {}{} ({} bytes)",
            d.time,
            "[DROP]",
            d.reason,
            d.hook,
            d.interface,
            d.protocol,
            endpoint(d.src, d.sport),
            endpoint(d.dst, d.dport),
            d.id.map(|i| format!(" id={i}")).unwrap_or_default(),
            d.bytes
        )?;
    }
    out.flush()?;
    Ok(())
}

/// A ring of the dataplane, with what earlier readers left in it skipped: history, not news.
fn ring(dp: &mut Dataplane, name: &'static str) -> anyhow::Result<RingBuf<aya::maps::MapData>> {
    let map = dp
        .ebpf_mut()
        .take_map(name)
        .with_context(|| format!("the dataplane has no ring {name}"))?;
    let mut ring = RingBuf::try_from(map)?;
    while ring.next().is_some() {}
    Ok(ring)
}

/// Prints the programs' debug records as they are read.
struct LogPrinter {
    json: bool,
}

#[derive(Serialize)]
struct LogLine<'a> {
    event: &'static str,
    level: &'a str,
    message: String,
}

impl log::Log for LogPrinter {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        let mut out = std::io::stdout().lock();
        // A reader gone away (a closed pipe) ends nothing here: the loop's next print says so.
        let _ = if self.json {
            let line = LogLine {
                event: "LOG",
                level: record.level().as_str(),
                message,
            };
            serde_json::to_string(&line).map_or(Ok(()), |l| writeln!(out, "{l}"))
        } else {
            writeln!(out, "{:>9} {:<5} {message}", "[LOG]", record.level())
        };
        let _ = out.flush();
    }

    fn flush(&self) {}
}

/// A reader of each debug-record ring the running programs write (programs loaded by one
/// netfast command share one). None when they were built without logging.
fn log_readers(host: &Host, json: bool) -> anyhow::Result<Vec<aya_log::EbpfLogger<LogPrinter>>> {
    let mut seen_maps = Vec::new();
    let mut readers = Vec::new();
    for program in netfast::upgrade::running_programs(host)? {
        let fd = netfast::bpf_sys::prog_get_fd_by_id(program)
            .with_context(|| format!("opening running program {program}"))?;
        let ring = netfast::bpf_sys::prog_map_ids(std::os::fd::AsFd::as_fd(&fd))
            .with_context(|| format!("reading running program {program}"))?
            .into_iter()
            .find(|id| {
                aya::maps::MapInfo::from_id(*id).is_ok_and(|m| m.name_as_str() == Some("AYA_LOGS"))
            });
        let Some(ring) = ring else { continue };
        if seen_maps.contains(&ring) {
            continue;
        }
        seen_maps.push(ring);
        readers.push(
            aya_log::EbpfLogger::init_from_id_with_logger(program, LogPrinter { json })
                .with_context(|| format!("reading the debug records of program {program}"))?,
        );
    }
    if readers.is_empty() {
        anyhow::bail!(
            "the running programs write no debug records: they were built without netfast's \
             `ebpf-log` feature. Build netfast with it (`cargo build --release -p netfast \
             --features ebpf-log`) and run `netfast upgrade` with that binary to run its programs"
        );
    }
    Ok(readers)
}

pub fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let (drops, flows) = match (args.drops, args.flows, args.log) {
        (false, false, false) => (true, true),
        (d, f, _) => (d, f),
    };
    let host = Host::current()?;
    let state = Loader::new()?.state()?;
    let fallback: Vec<&str> = state
        .networks
        .iter()
        .filter(|n| n.backend != Backend::Ebpf)
        .map(|n| n.name.as_str())
        .collect();
    let ebpf_networks = state.networks.iter().any(|n| n.backend == Backend::Ebpf);
    if !ebpf_networks && !fallback.is_empty() {
        anyhow::bail!(
            "network(s) {} are on the nftables/iptables backends, which have no event ring: \
             their drops are counted by netfast's rules (`netfast stats`, the agent's \
             metrics), and `netfast conntrack watch` follows their flows; `netfast monitor` \
             follows the eBPF dataplane",
            fallback.join(", ")
        );
    }
    let Some(mut dp) = Dataplane::open_existing(&host)? else {
        anyhow::bail!(
            "no dataplane in {} (create a network first)",
            host.describe()
        );
    };
    if !fallback.is_empty() {
        eprintln!(
            "netfast monitor: network(s) {} are on the nftables/iptables backends: their \
             drops and flows are not shown here (`netfast stats`, `netfast conntrack watch`)",
            fallback.join(", ")
        );
    }
    let mut log_rings = if args.log {
        log_readers(&host, args.json)?
    } else {
        Vec::new()
    };
    let mut drop_ring = drops.then(|| ring(&mut dp, DROP_EVENTS)).transpose()?;
    let mut flow_ring = flows.then(|| ring(&mut dp, CT_EVENTS)).transpose()?;
    // DESTROY has no event in the eBPF dataplane: flows expire lazily in the datapath (or
    // are reclaimed by the agent). A rescan each second reports the flows gone since.
    let mut live: HashMap<CtKey, Flow> = if flows {
        super::conntrack::current(&dp)?
    } else {
        HashMap::new()
    };
    let mut next_scan = Instant::now() + Duration::from_secs(1);
    eprintln!(
        "netfast monitor: watching {} in {} (interrupt to stop)",
        [
            (drops, "drops"),
            (flows, "flows"),
            (args.log, "debug records")
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, what)| *what)
        .collect::<Vec<_>>()
        .join(" and "),
        host.describe()
    );
    loop {
        for reader in &mut log_rings {
            reader.flush();
        }
        if let Some(ring) = drop_ring.as_mut() {
            while let Some(item) = ring.next() {
                if let Ok(e) = bytemuck::try_from_bytes::<DropEvent>(&item[..]) {
                    print_drop(&drop_line(e), args.json)?;
                }
            }
        }
        if let Some(ring) = flow_ring.as_mut() {
            while let Some(item) = ring.next() {
                let Some(event) = bytemuck::try_from_bytes::<CtEvent>(&item[..]).ok().copied()
                else {
                    continue;
                };
                let flow = Flow::new(&event.key, &event.entry, None, maps::monotonic_now());
                if event.kind == CT_EVENT_NEW {
                    super::conntrack::print_event("NEW", &flow, args.json)?;
                }
                live.insert(event.key, flow);
            }
        }
        if flows && Instant::now() >= next_scan {
            let now_live = super::conntrack::current(&dp)?;
            live = super::conntrack::print_ended(live, now_live, |_| true, args.json)?;
            next_scan = Instant::now() + Duration::from_secs(1);
        }
        super::conntrack::wait_readable(
            drop_ring
                .iter()
                .map(std::os::fd::AsRawFd::as_raw_fd)
                .chain(flow_ring.iter().map(std::os::fd::AsRawFd::as_raw_fd))
                .chain(log_rings.iter().map(std::os::fd::AsRawFd::as_raw_fd)),
        );
    }
}
