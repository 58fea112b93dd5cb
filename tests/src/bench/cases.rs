//! The packets whose cost [`super::progcost`] measures, each checked for the verdict that
//! shows it took the intended path: masquerade out and replies in, a published port's
//! traffic both ways, with the fast path and with the kernel forwarding, and the same
//! established flows beside a million others.

use anyhow::{Context as _, Result, bail};
use netfast::{
    common::{
        Hook,
        config::{DpConfig, Endpoint, NET_F_MASQUERADE, NetInfo},
        conntrack::{CtKey, PROTO_TCP},
        publish::{PubKey, PubTarget},
        verdict,
    },
    loader::netlink::Netlink,
    maps::{self, raw_addr},
    prog_test::{
        ProgTest,
        packet::{self, Endpoint as Ep, L4, Macs, TcpFlags},
    },
};

use super::{
    lab::{
        BRIDGE, CONTAINER_ADDR, Env, GATEWAY, PREFIX, PUBLISHED_PORT, SERVER_ADDR, SUBNET, UPLINK,
        UPLINK_ADDR, WEB_PORT,
    },
    progcost::{
        Effort, LARGE_TABLE, OUTSIDE_MAC, Probe, ProgCost, SMALL_TABLE, TABLE_FLOWS,
        established_after_fill, fill, new_flows, once, rows_of,
    },
};
use crate::packets::ct_key;

// The cases, as the report names them.
const MASQUERADE_FAST: &str = "container → outside: masquerade + fast path";
const MASQUERADE_FAST_REPLY: &str =
    "outside → container: reply, reverse masquerade + redirect_peer";
const PUBLISHED_FAST: &str = "outside → published port: DNAT + redirect_peer";
const PUBLISHED_FAST_REPLY: &str = "container → outside: published flow's reply + fast path";
const MASQUERADE_SLOW: &str = "container → outside: masquerade, kernel forwarding";
const MASQUERADE_SLOW_REPLY: &str = "outside → container: reverse masquerade, kernel forwarding";
const HOST_OWN: &str = "the host's own traffic: looked up, untouched";
const DELIVERED: &str = "into a container from the kernel: counted";

/// The lab's devices and the MACs of each way a packet goes.
struct Setup {
    br: u32,
    up: u32,
    from_ct: Macs,
    from_out: Macs,
    to_out: Macs,
    to_ct: Macs,
}

impl Setup {
    /// The way through `hook`, where `verdict` shows the intended path: its device, and the
    /// MACs a frame has there.
    fn way(&self, hook: Hook, verdict: i32) -> Way {
        let (ifindex, macs) = match hook {
            Hook::BridgeIngress => (self.br, self.from_ct),
            Hook::BridgeEgress => (self.br, self.to_ct),
            Hook::UplinkIngress => (self.up, self.from_out),
            Hook::UplinkEgress => (self.up, self.to_out),
        };
        Way {
            hook,
            ifindex,
            macs,
            verdict,
        }
    }
}

/// A program, the device its skb arrives on, the MACs of the frames there, and the verdict
/// that shows a packet took the intended path.
#[derive(Clone, Copy)]
struct Way {
    hook: Hook,
    ifindex: u32,
    macs: Macs,
    verdict: i32,
}

impl Way {
    /// The probe of a TCP segment `from` → `to` going this way.
    fn tcp(self, (from, to): (Ep, Ep), flags: TcpFlags, seq: u32, ack: u32) -> Probe {
        Probe {
            hook: self.hook,
            ifindex: self.ifindex,
            frame: packet::tcp(self.macs, from, to, flags, seq, ack, b""),
            verdict: self.verdict,
        }
    }
}

/// Every case, in the calling thread's namespace: the host of `env`, a netfast lab.
pub(super) fn measure_here(
    env: &Env,
    effort: Effort,
    step: &(dyn Fn(&str) + Sync),
) -> Result<Vec<ProgCost>> {
    let netlink = Netlink::new()?;
    let nl = netlink.host()?;
    let link = |name: &str| {
        nl.link(name)?
            .with_context(|| format!("no {name} in the lab's host"))
    };
    let veth = env
        .veth
        .as_deref()
        .context("program costs need a container on a bridge")?;
    let (bridge, uplink, veth) = (link(BRIDGE)?, link(UPLINK)?, link(veth)?);
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
    let from_ct = Macs {
        src: ct_mac,
        dst: br_mac,
    };
    let from_out = Macs {
        src: OUTSIDE_MAC,
        dst: up_mac,
    };
    let s = Setup {
        br: bridge.index,
        up: uplink.index,
        from_ct,
        from_out,
        to_out: from_out.reversed(),
        to_ct: from_ct.reversed(),
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
    let fast_out = s.way(Hook::BridgeIngress, verdict::REDIRECT);
    let fast_in = s.way(Hook::UplinkIngress, verdict::REDIRECT);
    let ct: Ep = (CONTAINER_ADDR, 10_000);
    let fast = masqueraded(&mut t, effort, &s, (ct, server), fast_out, 20_000)?;
    rows.extend(rows_of(
        &mut t,
        effort,
        &[
            (MASQUERADE_FAST, &fast.out, Some(fast.new_ns)),
            (MASQUERADE_FAST_REPLY, &fast.back, None),
        ],
    )?);

    step("fast path: published port");
    let client: Ep = (SERVER_ADDR, 50_000);
    let published: Ep = (UPLINK_ADDR, PUBLISHED_PORT);
    let web: Ep = (CONTAINER_ADDR, WEB_PORT);
    for (way, flow, flags, seq, ack) in [
        (fast_in, (client, published), TcpFlags::SYN, 1, 0),
        (fast_out, (web, client), TcpFlags::SYN_ACK, 9, 2),
    ] {
        once(&mut t, &way.tcp(flow, flags, seq, ack))?;
    }
    let dnat_in = fast_in.tcp((client, published), TcpFlags::ACK, 2, 10);
    let dnat_out = fast_out.tcp((web, client), TcpFlags::ACK, 10, 2);
    let new_dnat = new_flows(&mut t, effort, |i| {
        let client = (SERVER_ADDR, 20_000 + i as u16);
        fast_in.tcp((client, published), TcpFlags::SYN, 1, 0)
    })?;
    rows.extend(rows_of(
        &mut t,
        effort,
        &[
            (PUBLISHED_FAST, &dnat_in, Some(new_dnat)),
            (PUBLISHED_FAST_REPLY, &dnat_out, None),
        ],
    )?);

    // Fast path off: translation only, the kernel forwards.
    step("kernel forwarding: masquerade at the uplink");
    maps::write_config(t.ebpf_mut(), &config(0))?;
    let slow_out = s.way(Hook::UplinkEgress, verdict::NEXT);
    let ct_slow: Ep = (CONTAINER_ADDR, 11_000);
    let slow = masqueraded(&mut t, effort, &s, (ct_slow, server), slow_out, 30_000)?;
    let own = slow_out.tcp(((UPLINK_ADDR, 45_000), server), TcpFlags::ACK, 2, 2);
    let delivered = s.way(Hook::BridgeEgress, verdict::NEXT);
    let delivered = delivered.tcp((server, ct_slow), TcpFlags::ACK, 2, 2);
    rows.extend(rows_of(
        &mut t,
        effort,
        &[
            (MASQUERADE_SLOW, &slow.out, Some(slow.new_ns)),
            (MASQUERADE_SLOW_REPLY, &slow.back, None),
            (HOST_OWN, &own, None),
            (DELIVERED, &delivered, None),
        ],
    )?);

    // The same established packets beside a million flows.
    step("filling the table with 1,000,000 flows");
    fill(&mut t, SMALL_TABLE, LARGE_TABLE)?;
    step("established flows beside 1,000,000 others");
    // Each row's established packet, with the conntrack entry it must find: the fast path's
    // rows (from the first) with the fast path on, then the kernel's (from the fifth) with it
    // off.
    let dnat = [
        (ct_key(client, published, PROTO_TCP), &dnat_in),
        (ct_key(web, client, PROTO_TCP), &dnat_out),
    ];
    for (fast_path, first_row, flows) in [
        (1, 0, [fast.established(), dnat].concat()),
        (0, 4, slow.established().to_vec()),
    ] {
        maps::write_config(t.ebpf_mut(), &config(fast_path))?;
        for (i, (key, probe)) in flows.into_iter().enumerate() {
            rows[first_row + i].established_large_ns =
                Some(established_after_fill(&mut t, effort, &key, probe)?);
        }
    }
    Ok(rows)
}

fn config(fast_path: u8) -> DpConfig {
    DpConfig {
        fast_path,
        ..DpConfig::default()
    }
}

/// A masqueraded flow: its established packet each way, its external port, and the cost of
/// the first packet of a new flow the same way.
struct Masqueraded {
    /// The container's endpoint and the server's.
    flow: (Ep, Ep),
    out: Probe,
    back: Probe,
    ext: u16,
    new_ns: f64,
}

impl Masqueraded {
    /// Its established packet each way, with the conntrack entry each must find.
    fn established(&self) -> [(CtKey, &Probe); 2] {
        let (ct, server) = self.flow;
        [
            (ct_key(ct, server, PROTO_TCP), &self.out),
            (
                ct_key(server, (UPLINK_ADDR, self.ext), PROTO_TCP),
                &self.back,
            ),
        ]
    }
}

/// Opens a masqueraded flow from `ct` to `server` the way `out`, and times new flows from
/// the container's ports `new_ports` on.
fn masqueraded(
    t: &mut ProgTest,
    effort: Effort,
    s: &Setup,
    (ct, server): (Ep, Ep),
    out: Way,
    new_ports: u16,
) -> Result<Masqueraded> {
    let ext = open_masquerade(t, s, (ct, server), out)?;
    let back = s.way(Hook::UplinkIngress, out.verdict);
    let new_ns = new_flows(t, effort, |i| {
        let ct = (ct.0, new_ports + i as u16);
        out.tcp((ct, server), TcpFlags::SYN, 1, 0)
    })?;
    Ok(Masqueraded {
        flow: (ct, server),
        out: out.tcp((ct, server), TcpFlags::ACK, 2, 2),
        back: back.tcp((server, (UPLINK_ADDR, ext)), TcpFlags::ACK, 2, 2),
        ext,
        new_ns,
    })
}

/// Opens a masqueraded TCP flow from `ct` to `server` the way `out` (SYN out, SYN-ACK in,
/// ACK out), the verdicts of that way; returns the external port it got.
fn open_masquerade(t: &mut ProgTest, s: &Setup, (ct, server): (Ep, Ep), out: Way) -> Result<u16> {
    let run = once(t, &out.tcp((ct, server), TcpFlags::SYN, 1, 0))?;
    let translated = packet::decode(&run.frame).map_err(anyhow::Error::msg)?;
    let L4::Tcp { src_port, .. } = translated.l4 else {
        bail!("the SYN came out as something else than TCP");
    };
    anyhow::ensure!(
        translated.src == UPLINK_ADDR,
        "the SYN left with source {} instead of the uplink's address",
        translated.src
    );
    let back = s.way(Hook::UplinkIngress, out.verdict);
    once(
        t,
        &back.tcp((server, (UPLINK_ADDR, src_port)), TcpFlags::SYN_ACK, 9, 2),
    )?;
    once(t, &out.tcp((ct, server), TcpFlags::ACK, 2, 10))?;
    Ok(src_port)
}
