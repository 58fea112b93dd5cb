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
        established_after_fill, fill, new_flows, once, row,
    },
};

/// The lab's devices and the MACs of each way a packet goes.
struct Setup {
    br: u32,
    up: u32,
    from_ct: Macs,
    from_out: Macs,
    to_out: Macs,
    to_ct: Macs,
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
