//! What each program costs per packet, from BPF_PROG_TEST_RUN: the kernel runs the real
//! program on a packet and times it. Run in the netfast-on lab's host namespace, with a
//! fresh copy of the dataplane's maps provisioned like the live one (the same network,
//! container, published port), so that FIB lookups and redirects find real devices.
//!
//! Every figure is the median of single runs, each on a fresh copy of the packet (a
//! repeated run would feed the program the packet it already translated), minus the
//! per-run time of an empty program (the kernel's timer read and the call; see
//! `calibrate`).
//!
//! - Established flow: a packet of a tracked flow.
//! - New flow: the first packet of a never-seen flow (a fresh source port each time).
//! - The same established packets with 1,000,000 flows tracked beside them, to show what a
//!   full table costs (hash buckets and cache misses); both measurements use one table
//!   sized for the large one.
//!
//! The socket programs (cgroup connect4/sendmsg4/recvmsg4/getpeername4) have no
//! BPF_PROG_TEST_RUN support in the kernel; they are not measured.

use std::net::Ipv4Addr;

use anyhow::{Context as _, Result, bail};
use aya::maps::{HashMap as BpfHashMap, MapData};
use netfast::{
    common::{
        Hook,
        conntrack::{
            CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REPLY, CT_F_REWRITE_DST, CT_F_REWRITE_SRC,
            CT_F_SEEN_REPLY, CtEntry, CtKey, PROTO_TCP,
        },
        maps::CONNTRACK,
        verdict,
    },
    maps::{self, raw_addr},
    prog_test::{
        ProgTest,
        packet::{self, TcpFlags},
    },
};
use serde::Serialize;

use super::lab::{CONTAINER_ADDR, Env, SERVER_ADDR, UPLINK_ADDR};
use crate::netns::within;

/// Flows tracked beside the measured ones in the small and the large table.
pub const SMALL_TABLE: u32 = 1_000;
pub const LARGE_TABLE: u32 = 1_000_000;
/// The table's size: room for the large fill without LRU eviction.
pub(super) const TABLE_FLOWS: u32 = 1_400_000;
pub(super) const OUTSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];

/// Per-packet cost of one program on one kind of packet, in nanoseconds.
#[derive(Clone, Debug, Serialize)]
pub struct ProgCost {
    pub program: &'static str,
    pub case: &'static str,
    /// A packet of an established flow, 1,000 flows tracked.
    pub established_ns: f64,
    /// The same with 1,000,000 flows tracked.
    pub established_large_ns: Option<f64>,
    /// The first packet of a new flow (median of single runs).
    pub new_ns: Option<f64>,
    /// Over the rounds: (max − min) / median of the established figure, and the smallest and
    /// largest growth from 1,000 to 1,000,000 flows a round measured.
    #[serde(default)]
    pub spread: Option<f64>,
    #[serde(default)]
    pub growth_range: Option<(f64, f64)>,
}

/// How many runs to time.
#[derive(Clone, Copy)]
pub struct Effort {
    /// Single runs of an established packet.
    pub runs: u32,
    /// New flows timed one by one.
    pub new_flows: u32,
}

/// The costs, and the empty program's per-run time taken off them.
pub struct ProgCosts {
    pub floor_ns: f64,
    pub rows: Vec<ProgCost>,
}

/// One measured packet: the hook, the device the skb arrives on, the frame, and the verdict
/// that shows it took the intended path.
pub(super) struct Probe {
    pub hook: Hook,
    pub ifindex: u32,
    pub frame: Vec<u8>,
    pub verdict: i32,
}

/// Measures every program in the host namespace of `env` (a netfast lab), and reports
/// progress through `step`.
pub fn measure(env: &Env, effort: Effort, step: &(dyn Fn(&str) + Sync)) -> Result<ProgCosts> {
    let host = env
        .host
        .as_deref()
        .context("program costs need a netfast lab")?;
    let rows = within(host, || super::cases::measure_here(env, effort, step))?;
    step("an empty program, for the floor");
    let empty = super::calibrate::Empty::load()?;
    let frame = packet::tcp(
        packet::FROM_CONTAINER,
        (CONTAINER_ADDR, 1),
        (SERVER_ADDR, 2),
        TcpFlags::ACK,
        1,
        1,
        b"",
    );
    let mut times = (0..effort.runs)
        .map(|_| empty.run_once(&frame).map(f64::from))
        .collect::<Result<Vec<_>>>()?;
    let floor_ns = median(&mut times);
    let net = |x: f64| (x - floor_ns).max(0.0);
    let rows = rows
        .into_iter()
        .map(|r| ProgCost {
            established_ns: net(r.established_ns),
            established_large_ns: r.established_large_ns.map(net),
            new_ns: r.new_ns.map(net),
            ..r
        })
        .collect();
    Ok(ProgCosts { floor_ns, rows })
}

/// Runs a probe once and checks its verdict.
pub(super) fn once(t: &mut ProgTest, p: &Probe) -> Result<netfast::prog_test::Run> {
    let run = t.run_on(p.hook, &p.frame, p.ifindex)?;
    if run.verdict != p.verdict {
        bail!(
            "{} returned {} instead of {} for {}: the benchmark would time the wrong path",
            p.hook.name(),
            verdict::name(run.verdict),
            verdict::name(p.verdict),
            packet::describe(&p.frame)
        );
    }
    Ok(run)
}

/// The median time of single runs of the probe, each checked for its verdict.
pub(super) fn established(t: &mut ProgTest, effort: Effort, p: &Probe) -> Result<f64> {
    let mut times = Vec::with_capacity(effort.runs as usize);
    for _ in 0..effort.runs {
        let run = once(t, p)?;
        times.push(run.duration.as_nanos() as f64);
    }
    Ok(median(&mut times))
}

pub(super) fn established_after_fill(
    t: &mut ProgTest,
    effort: Effort,
    key: &CtKey,
    p: &Probe,
) -> Result<f64> {
    let map = t.ebpf().map(CONNTRACK).context("no conntrack map")?;
    let hm: BpfHashMap<&MapData, CtKey, CtEntry> = BpfHashMap::try_from(map)?;
    anyhow::ensure!(
        hm.get(key, 0).is_ok(),
        "the measured flow was evicted while the table was filled"
    );
    established(t, effort, p)
}

/// The median time of single runs of `effort.new_flows` new flows.
pub(super) fn new_flows(
    t: &mut ProgTest,
    effort: Effort,
    probe: impl Fn(u32) -> Probe,
) -> Result<f64> {
    let mut times = Vec::with_capacity(effort.new_flows as usize);
    for i in 0..effort.new_flows {
        let run = once(t, &probe(i))?;
        times.push(run.duration.as_nanos() as f64);
    }
    Ok(median(&mut times))
}

/// A row per case, in order: the case's program (its probe's hook), the cost of its
/// established packet measured now, and that of a new flow, measured before.
pub(super) fn rows_of(
    t: &mut ProgTest,
    effort: Effort,
    cases: &[(&'static str, &Probe, Option<f64>)],
) -> Result<Vec<ProgCost>> {
    let mut rows = Vec::with_capacity(cases.len());
    for &(case, probe, new_ns) in cases {
        rows.push(ProgCost {
            program: probe.hook.name(),
            case,
            established_ns: established(t, effort, probe)?,
            established_large_ns: None,
            new_ns,
            spread: None,
            growth_range: None,
        });
    }
    Ok(rows)
}

/// The rounds' costs as one: medians, with the established figure's spread and the range of
/// the growth over the rounds. Every round measures the same cases in the same order.
pub fn combine(rounds: Vec<ProgCosts>) -> ProgCosts {
    let mut floors: Vec<f64> = rounds.iter().map(|r| r.floor_ns).collect();
    let floor_ns = median(&mut floors);
    let Some(first) = rounds.first() else {
        return ProgCosts {
            floor_ns,
            rows: Vec::new(),
        };
    };
    let rows = (0..first.rows.len())
        .map(|i| {
            let of = |f: &dyn Fn(&ProgCost) -> Option<f64>| -> Vec<f64> {
                rounds.iter().filter_map(|r| f(&r.rows[i])).collect()
            };
            let mut est = of(&|p| Some(p.established_ns));
            let mut large = of(&|p| p.established_large_ns);
            let mut new = of(&|p| p.new_ns);
            let growth = of(&|p| p.established_large_ns.map(|l| l / p.established_ns));
            let (lo, hi) = est
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let established_ns = median(&mut est);
            ProgCost {
                established_ns,
                established_large_ns: (!large.is_empty()).then(|| median(&mut large)),
                new_ns: (!new.is_empty()).then(|| median(&mut new)),
                spread: (rounds.len() > 1 && established_ns > 0.0)
                    .then(|| (hi - lo) / established_ns),
                growth_range: (!growth.is_empty()).then(|| {
                    growth
                        .iter()
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                            (a.min(x), b.max(x))
                        })
                }),
                ..first.rows[i].clone()
            }
        })
        .collect();
    ProgCosts { floor_ns, rows }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// Tracks flows `from..to` beside the measured ones: masqueraded TCP flows from 10.0.0.0/8
/// (no network of the lab) to 200 servers in 203.0.113.0/24, both directions, as the
/// datapath writes them.
pub(super) fn fill(t: &mut ProgTest, from: u32, to: u32) -> Result<()> {
    let now = maps::monotonic_now();
    let map = t
        .ebpf_mut()
        .map_mut(CONNTRACK)
        .context("no conntrack map")?;
    let mut hm: BpfHashMap<&mut MapData, CtKey, CtEntry> = BpfHashMap::try_from(map)?;
    for i in from..to {
        let inside = Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff));
        let server = Ipv4Addr::new(203, 0, 113, 1 + (i % 200) as u8);
        let ext_port = 1024 + ((i / 200) % 60_000) as u16;
        let orig = CtKey::new(
            raw_addr(inside),
            raw_addr(server),
            40_000u16.to_be(),
            443u16.to_be(),
            PROTO_TCP,
        );
        let out = CtEntry {
            expires: now + 7200,
            created: now,
            src_addr: raw_addr(UPLINK_ADDR),
            src_port: ext_port.to_be(),
            flags: CT_F_REWRITE_SRC | CT_F_MASQ_SRC | CT_F_SEEN_REPLY,
            net_id: 1,
            ..CtEntry::default()
        };
        let reply_key = out.peer_key(&orig);
        let back = CtEntry {
            dst_addr: orig.src_addr,
            dst_port: orig.src_port,
            flags: CT_F_REWRITE_DST | CT_F_MASQ_DST | CT_F_REPLY | CT_F_SEEN_REPLY,
            ..out
        };
        hm.insert(orig, out, 0)
            .with_context(|| format!("tracking flow {i}"))?;
        hm.insert(reply_key, back, 0)
            .with_context(|| format!("tracking flow {i}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn costs(floor: f64, est: f64, large: f64) -> ProgCosts {
        ProgCosts {
            floor_ns: floor,
            rows: vec![ProgCost {
                program: "p",
                case: "c",
                established_ns: est,
                established_large_ns: Some(large),
                new_ns: None,
                spread: None,
                growth_range: None,
            }],
        }
    }

    #[test]
    fn rounds_combine_into_medians_with_spread_and_growth_range() {
        let c = combine(vec![
            costs(100.0, 300.0, 300.0),
            costs(110.0, 400.0, 600.0),
            costs(90.0, 200.0, 300.0),
        ]);
        assert_eq!(c.floor_ns, 100.0);
        let r = &c.rows[0];
        assert_eq!(r.established_ns, 300.0);
        assert_eq!(r.established_large_ns, Some(300.0));
        assert_eq!(r.spread, Some(200.0 / 300.0));
        assert_eq!(r.growth_range, Some((1.0, 1.5)));
        assert_eq!(r.new_ns, None);
        // One round: no spread to speak of.
        assert_eq!(combine(vec![costs(1.0, 2.0, 2.0)]).rows[0].spread, None);
    }
}
