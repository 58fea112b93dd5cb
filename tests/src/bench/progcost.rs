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
        config::{DpConfig, Endpoint, NET_F_MASQUERADE, NetInfo},
        conntrack::{
            CT_F_MASQ_DST, CT_F_MASQ_SRC, CT_F_REPLY, CT_F_REWRITE_DST, CT_F_REWRITE_SRC,
            CT_F_SEEN_REPLY, CtEntry, CtKey, PROTO_TCP,
        },
        maps::CONNTRACK,
        publish::{PubKey, PubTarget},
        verdict,
    },
    loader::{model::veth_name, netlink::Netlink},
    maps::{self, raw_addr},
    prog_test::{
        ProgTest,
        packet::{self, Endpoint as Ep, L4, Macs, TcpFlags},
    },
};
use serde::Serialize;

use super::lab::{
    BRIDGE, CONTAINER_ADDR, Env, GATEWAY, PREFIX, PUBLISHED_PORT, SERVER_ADDR, SUBNET, UPLINK,
    UPLINK_ADDR, WEB_PORT, in_netns,
};

/// Flows tracked beside the measured ones in the small and the large table.
pub const SMALL_TABLE: u32 = 1_000;
pub const LARGE_TABLE: u32 = 1_000_000;
/// The table's size: room for the large fill without LRU eviction.
const TABLE_FLOWS: u32 = 1_400_000;
const OUTSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xbe, 0x01];

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
struct Probe {
    hook: Hook,
    ifindex: u32,
    frame: Vec<u8>,
    verdict: i32,
}

struct Setup {
    br: u32,
    up: u32,
    from_ct: Macs,
    from_out: Macs,
    to_out: Macs,
    to_ct: Macs,
}

/// Measures every program in the host namespace of `env` (a netfast lab), and reports
/// progress through `step`.
pub fn measure(env: &Env, effort: Effort, step: &(dyn Fn(&str) + Sync)) -> Result<ProgCosts> {
    let host = env
        .host
        .as_deref()
        .context("program costs need a netfast lab")?;
    let rows = in_netns(host, || measure_here(env, effort, step))?;
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

fn measure_here(env: &Env, effort: Effort, step: &(dyn Fn(&str) + Sync)) -> Result<Vec<ProgCost>> {
    let netlink = Netlink::new()?;
    let nl = netlink.host()?;
    let link = |name: &str| {
        nl.link(name)?
            .with_context(|| format!("no {name} in the lab's host"))
    };
    let (bridge, uplink, veth) = (link(BRIDGE)?, link(UPLINK)?, link(&veth_name(&env.client))?);
    let eth0 = netlink
        .namespace(&env.client)?
        .link("eth0")?
        .context("no eth0 in the lab's container")?;
    let mac = |l: &netfast::loader::netlink::Link| {
        l.mac
            .with_context(|| format!("{} has no MAC address", l.name))
    };
    let (ct_mac, br_mac, up_mac) = (mac(&eth0)?, mac(&bridge)?, mac(&uplink)?);
    // The outside's MAC must be known, as it is while traffic flows: else every lookup
    // says "resolve the neighbour" and nothing is cached.
    let probe =
        std::net::UdpSocket::bind((UPLINK_ADDR, 0)).context("a socket in the lab's host")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while !nl.neighbours(&uplink)?.contains(&SERVER_ADDR) {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the lab's host does not resolve {SERVER_ADDR}"
        );
        let _ = probe.send_to(b"netfast bench", (SERVER_ADDR, 9));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let s = Setup {
        br: bridge.index,
        up: uplink.index,
        from_ct: Macs {
            src: ct_mac,
            dst: br_mac,
        },
        from_out: Macs {
            src: OUTSIDE_MAC,
            dst: up_mac,
        },
        to_out: Macs {
            src: up_mac,
            dst: OUTSIDE_MAC,
        },
        to_ct: Macs {
            src: br_mac,
            dst: ct_mac,
        },
    };

    step("loading a 1.4M-flow table");
    let mut t = ProgTest::load_sized(TABLE_FLOWS, &config(1))?;
    let e = t.ebpf_mut();
    maps::set_network(
        e,
        SUBNET,
        PREFIX,
        &NetInfo {
            id: 1,
            flags: NET_F_MASQUERADE,
            uplink_ifindex: uplink.index,
            bridge_ifindex: bridge.index,
            ext_addr: raw_addr(UPLINK_ADDR),
        },
    )?;
    maps::set_endpoint(
        e,
        CONTAINER_ADDR,
        &Endpoint {
            ifindex: veth.index,
            mac: ct_mac,
            gw_mac: br_mac,
            mtu: 1500,
            _pad: 0,
        },
    )?;
    maps::publish(
        e,
        &PubKey {
            addr: 0,
            port: PUBLISHED_PORT.to_be(),
            proto: PROTO_TCP,
            _pad: 0,
        },
        &PubTarget {
            addr: raw_addr(CONTAINER_ADDR),
            port: WEB_PORT.to_be(),
            net_id: 1,
            rule: 0,
        },
    )?;
    maps::set_host_addrs(e, &[UPLINK_ADDR, GATEWAY])?;
    maps::set_uplink(e, uplink.index)?;
    fill(&mut t, 0, SMALL_TABLE)?;

    let server: Ep = (SERVER_ADDR, 5201);
    let mut rows = Vec::new();

    // Fast path on: the lab's default.
    step("fast path: masquerade out, replies in");
    let ct: Ep = (CONTAINER_ADDR, 10_000);
    let ext = open_masquerade(
        &mut t,
        &s,
        ct,
        server,
        Hook::BridgeIngress,
        verdict::REDIRECT,
    )?;
    let out_fast = Probe {
        hook: Hook::BridgeIngress,
        ifindex: s.br,
        frame: packet::tcp(s.from_ct, ct, server, TcpFlags::ACK, 2, 2, b""),
        verdict: verdict::REDIRECT,
    };
    let in_fast = Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(
            s.from_out,
            server,
            (UPLINK_ADDR, ext),
            TcpFlags::ACK,
            2,
            2,
            b"",
        ),
        verdict: verdict::REDIRECT,
    };
    let new_out_fast = new_flows(&mut t, effort, |i| Probe {
        hook: Hook::BridgeIngress,
        ifindex: s.br,
        frame: packet::tcp(
            s.from_ct,
            (CONTAINER_ADDR, 20_000 + i as u16),
            server,
            TcpFlags::SYN,
            1,
            0,
            b"",
        ),
        verdict: verdict::REDIRECT,
    })?;
    rows.push(row(
        &mut t,
        effort,
        "bridge_ingress",
        "container → outside: masquerade + fast path",
        &out_fast,
        Some(new_out_fast),
    )?);
    rows.push(row(
        &mut t,
        effort,
        "uplink_ingress",
        "outside → container: reply, reverse masquerade + redirect_peer",
        &in_fast,
        None,
    )?);

    step("fast path: published port");
    let client: Ep = (SERVER_ADDR, 50_000);
    let published: Ep = (UPLINK_ADDR, PUBLISHED_PORT);
    let web: Ep = (CONTAINER_ADDR, WEB_PORT);
    let syn = Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(s.from_out, client, published, TcpFlags::SYN, 1, 0, b""),
        verdict: verdict::REDIRECT,
    };
    once(&mut t, &syn)?;
    let synack = Probe {
        hook: Hook::BridgeIngress,
        ifindex: s.br,
        frame: packet::tcp(s.from_ct, web, client, TcpFlags::SYN_ACK, 9, 2, b""),
        verdict: verdict::REDIRECT,
    };
    once(&mut t, &synack)?;
    let dnat_in = Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(s.from_out, client, published, TcpFlags::ACK, 2, 10, b""),
        verdict: verdict::REDIRECT,
    };
    let dnat_out = Probe {
        hook: Hook::BridgeIngress,
        ifindex: s.br,
        frame: packet::tcp(s.from_ct, web, client, TcpFlags::ACK, 10, 2, b""),
        verdict: verdict::REDIRECT,
    };
    let new_dnat = new_flows(&mut t, effort, |i| Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(
            s.from_out,
            (SERVER_ADDR, 20_000 + i as u16),
            published,
            TcpFlags::SYN,
            1,
            0,
            b"",
        ),
        verdict: verdict::REDIRECT,
    })?;
    rows.push(row(
        &mut t,
        effort,
        "uplink_ingress",
        "outside → published port: DNAT + redirect_peer",
        &dnat_in,
        Some(new_dnat),
    )?);
    rows.push(row(
        &mut t,
        effort,
        "bridge_ingress",
        "container → outside: published flow's reply + fast path",
        &dnat_out,
        None,
    )?);

    // Fast path off: translation only, the kernel forwards.
    step("kernel forwarding: masquerade at the uplink");
    maps::write_config(t.ebpf_mut(), &config(0))?;
    let ct_slow: Ep = (CONTAINER_ADDR, 11_000);
    let ext_slow = open_masquerade(
        &mut t,
        &s,
        ct_slow,
        server,
        Hook::UplinkEgress,
        verdict::NEXT,
    )?;
    let out_slow = Probe {
        hook: Hook::UplinkEgress,
        ifindex: s.up,
        frame: packet::tcp(s.to_out, ct_slow, server, TcpFlags::ACK, 2, 2, b""),
        verdict: verdict::NEXT,
    };
    let in_slow = Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(
            s.from_out,
            server,
            (UPLINK_ADDR, ext_slow),
            TcpFlags::ACK,
            2,
            2,
            b"",
        ),
        verdict: verdict::NEXT,
    };
    let new_out_slow = new_flows(&mut t, effort, |i| Probe {
        hook: Hook::UplinkEgress,
        ifindex: s.up,
        frame: packet::tcp(
            s.to_out,
            (CONTAINER_ADDR, 30_000 + i as u16),
            server,
            TcpFlags::SYN,
            1,
            0,
            b"",
        ),
        verdict: verdict::NEXT,
    })?;
    rows.push(row(
        &mut t,
        effort,
        "uplink_egress",
        "container → outside: masquerade, kernel forwarding",
        &out_slow,
        Some(new_out_slow),
    )?);
    rows.push(row(
        &mut t,
        effort,
        "uplink_ingress",
        "outside → container: reverse masquerade, kernel forwarding",
        &in_slow,
        None,
    )?);
    let own = Probe {
        hook: Hook::UplinkEgress,
        ifindex: s.up,
        frame: packet::tcp(
            s.to_out,
            (UPLINK_ADDR, 45_000),
            server,
            TcpFlags::ACK,
            2,
            2,
            b"",
        ),
        verdict: verdict::NEXT,
    };
    rows.push(row(
        &mut t,
        effort,
        "uplink_egress",
        "the host's own traffic: looked up, untouched",
        &own,
        None,
    )?);
    let delivered = Probe {
        hook: Hook::BridgeEgress,
        ifindex: s.br,
        frame: packet::tcp(s.to_ct, server, ct_slow, TcpFlags::ACK, 2, 2, b""),
        verdict: verdict::NEXT,
    };
    rows.push(row(
        &mut t,
        effort,
        "bridge_egress",
        "into a container from the kernel: counted",
        &delivered,
        None,
    )?);

    // The same established packets beside a million flows.
    step("filling the table with 1,000,000 flows");
    fill(&mut t, SMALL_TABLE, LARGE_TABLE)?;
    step("established flows beside 1,000,000 others");
    maps::write_config(t.ebpf_mut(), &config(1))?;
    let keys = [
        (
            0,
            CtKey::new(
                raw_addr(ct.0),
                raw_addr(server.0),
                ct.1.to_be(),
                server.1.to_be(),
                PROTO_TCP,
            ),
            &out_fast,
        ),
        (
            1,
            CtKey::new(
                raw_addr(server.0),
                raw_addr(UPLINK_ADDR),
                server.1.to_be(),
                ext.to_be(),
                PROTO_TCP,
            ),
            &in_fast,
        ),
        (
            2,
            CtKey::new(
                raw_addr(client.0),
                raw_addr(UPLINK_ADDR),
                client.1.to_be(),
                PUBLISHED_PORT.to_be(),
                PROTO_TCP,
            ),
            &dnat_in,
        ),
        (
            3,
            CtKey::new(
                raw_addr(web.0),
                raw_addr(client.0),
                web.1.to_be(),
                client.1.to_be(),
                PROTO_TCP,
            ),
            &dnat_out,
        ),
    ];
    for (i, key, probe) in keys {
        rows[i].established_large_ns = Some(established_after_fill(&mut t, effort, &key, probe)?);
    }
    maps::write_config(t.ebpf_mut(), &config(0))?;
    let slow_keys = [
        (
            4,
            CtKey::new(
                raw_addr(ct_slow.0),
                raw_addr(server.0),
                ct_slow.1.to_be(),
                server.1.to_be(),
                PROTO_TCP,
            ),
            &out_slow,
        ),
        (
            5,
            CtKey::new(
                raw_addr(server.0),
                raw_addr(UPLINK_ADDR),
                server.1.to_be(),
                ext_slow.to_be(),
                PROTO_TCP,
            ),
            &in_slow,
        ),
    ];
    for (i, key, probe) in slow_keys {
        rows[i].established_large_ns = Some(established_after_fill(&mut t, effort, &key, probe)?);
    }
    Ok(rows)
}

fn config(fast_path: u8) -> DpConfig {
    DpConfig {
        fast_path,
        ..DpConfig::default()
    }
}

/// Opens a masqueraded TCP flow from `ct` to `server` through `hook` (SYN out, SYN-ACK in,
/// ACK out); returns the external port it got.
fn open_masquerade(
    t: &mut ProgTest,
    s: &Setup,
    ct: Ep,
    server: Ep,
    hook: Hook,
    out_verdict: i32,
) -> Result<u16> {
    let (macs, ifindex) = if hook == Hook::BridgeIngress {
        (s.from_ct, s.br)
    } else {
        (s.to_out, s.up)
    };
    let syn = Probe {
        hook,
        ifindex,
        frame: packet::tcp(macs, ct, server, TcpFlags::SYN, 1, 0, b""),
        verdict: out_verdict,
    };
    let run = once(t, &syn)?;
    let translated = packet::decode(&run.frame).map_err(anyhow::Error::msg)?;
    let L4::Tcp { src_port, .. } = translated.l4 else {
        bail!("the SYN came out as something else than TCP");
    };
    anyhow::ensure!(
        translated.src == UPLINK_ADDR,
        "the SYN left with source {} instead of the uplink's address",
        translated.src
    );
    let synack = Probe {
        hook: Hook::UplinkIngress,
        ifindex: s.up,
        frame: packet::tcp(
            s.from_out,
            server,
            (UPLINK_ADDR, src_port),
            TcpFlags::SYN_ACK,
            9,
            2,
            b"",
        ),
        verdict: out_verdict,
    };
    once(t, &synack)?;
    let ack = Probe {
        frame: packet::tcp(macs, ct, server, TcpFlags::ACK, 2, 10, b""),
        ..syn
    };
    once(t, &ack)?;
    Ok(src_port)
}

/// Runs a probe once and checks its verdict.
fn once(t: &mut ProgTest, p: &Probe) -> Result<netfast::prog_test::Run> {
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
fn established(t: &mut ProgTest, effort: Effort, p: &Probe) -> Result<f64> {
    let mut times = Vec::with_capacity(effort.runs as usize);
    for _ in 0..effort.runs {
        let run = once(t, p)?;
        times.push(run.duration.as_nanos() as f64);
    }
    Ok(median(&mut times))
}

fn established_after_fill(t: &mut ProgTest, effort: Effort, key: &CtKey, p: &Probe) -> Result<f64> {
    let map = t.ebpf().map(CONNTRACK).context("no conntrack map")?;
    let hm: BpfHashMap<&MapData, CtKey, CtEntry> = BpfHashMap::try_from(map)?;
    anyhow::ensure!(
        hm.get(key, 0).is_ok(),
        "the measured flow was evicted while the table was filled"
    );
    established(t, effort, p)
}

/// The median time of single runs of `effort.new_flows` new flows.
fn new_flows(t: &mut ProgTest, effort: Effort, probe: impl Fn(u32) -> Probe) -> Result<f64> {
    let mut times = Vec::with_capacity(effort.new_flows as usize);
    for i in 0..effort.new_flows {
        let run = once(t, &probe(i))?;
        times.push(run.duration.as_nanos() as f64);
    }
    Ok(median(&mut times))
}

fn row(
    t: &mut ProgTest,
    effort: Effort,
    program: &'static str,
    case: &'static str,
    probe: &Probe,
    new_ns: Option<f64>,
) -> Result<ProgCost> {
    Ok(ProgCost {
        program,
        case,
        established_ns: established(t, effort, probe)?,
        established_large_ns: None,
        new_ns,
        spread: None,
        growth_range: None,
    })
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
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Tracks flows `from..to` beside the measured ones: masqueraded TCP flows from 10.0.0.0/8
/// (no network of the lab) to 200 servers in 203.0.113.0/24, both directions, as the
/// datapath writes them.
fn fill(t: &mut ProgTest, from: u32, to: u32) -> Result<()> {
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
