//! Fixtures of the packet tests (`tests/tests/*_packets.rs`): the real programs run through
//! BPF_PROG_TEST_RUN, provisioned through the map API the loader uses. The addresses they
//! share, a dataplane loaded with one masqueraded network, publications, and runs that
//! panic with the whole error chain.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        DropReason, Hook,
        config::{DpConfig, NET_F_MASQUERADE, NetInfo},
        conntrack::{CtKey, PROTO_UDP},
        publish::{PubKey, PubTarget},
        stats::Event,
        verdict,
    },
    maps,
    prog_test::{
        ProgTest, Run,
        fixture::assert_run,
        packet::{self, Endpoint, L4, decode},
    },
};

use crate::TestNetns;

/// BPF_PROG_TEST_RUN runs the skb on the loopback device of the test's namespace (ifindex
/// 1); it stands for the bridge and the uplink.
pub const DEV: u32 = 1;
/// The host's external (uplink) address: what masqueraded flows leave from.
pub const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// A router on the uplink's network, the source of ICMP errors from outside.
pub const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
/// The masqueraded network every packet test has (network id 1).
pub const SUBNET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 18, 0, 0), 24);
/// Containers of that network, each from port 40000.
pub const C1: Endpoint = (Ipv4Addr::new(172, 18, 0, 2), 40000);
pub const C2: Endpoint = (Ipv4Addr::new(172, 18, 0, 3), 40000);
pub const C3: Endpoint = (Ipv4Addr::new(172, 18, 0, 4), 40000);
/// A server outside.
pub const SERVER: Endpoint = (Ipv4Addr::new(203, 0, 113, 10), 80);

/// `port` on the external address.
pub const fn ext(port: u16) -> Endpoint {
    (EXT, port)
}

/// The programs loaded with `cfg`; panics with the whole error chain.
pub fn load(cfg: &DpConfig) -> ProgTest {
    ProgTest::load_with(cfg).unwrap_or_else(|e| panic!("load: {}", netfast::error::report(&e)))
}

/// Network `id` on `subnet` with `flags`, behind [`EXT`], on these interfaces.
pub fn set_network(
    t: &mut ProgTest,
    subnet: (Ipv4Addr, u8),
    id: u16,
    flags: u16,
    uplink_ifindex: u32,
    bridge_ifindex: u32,
) {
    let info = NetInfo {
        id,
        flags,
        uplink_ifindex,
        bridge_ifindex,
        ext_addr: maps::raw_addr(EXT),
    };
    maps::set_network(t.ebpf_mut(), subnet.0, subnet.1, &info).expect("network");
}

/// [`SUBNET`] as network 1, masqueraded behind [`EXT`], on these interfaces.
pub fn masquerade(t: &mut ProgTest, uplink_ifindex: u32, bridge_ifindex: u32) {
    set_network(
        t,
        SUBNET,
        1,
        NET_F_MASQUERADE,
        uplink_ifindex,
        bridge_ifindex,
    );
}

/// Publishes `port`/`proto` on `addr` (every host address when `None`) to `to` in network
/// 1, under allow-list rule `rule` (0: none).
pub fn publish(
    t: &mut ProgTest,
    addr: Option<Ipv4Addr>,
    port: u16,
    proto: u8,
    to: Endpoint,
    rule: u32,
) {
    let key = PubKey {
        addr: addr.map_or(0, maps::raw_addr),
        port: port.to_be(),
        proto,
        _pad: 0,
    };
    let target = PubTarget {
        addr: maps::raw_addr(to.0),
        port: to.1.to_be(),
        net_id: 1,
        rule,
    };
    maps::publish(t.ebpf_mut(), &key, &target).expect("publish");
}

/// Runs `hook` on `frame`; panics with the whole error chain.
pub fn run(t: &mut ProgTest, hook: Hook, frame: &[u8]) -> Run {
    t.run(hook, frame)
        .unwrap_or_else(|e| panic!("test run: {}", netfast::error::report(&e)))
}

/// [`run`] with the skb on interface `ifindex`.
pub fn run_on(t: &mut ProgTest, hook: Hook, frame: &[u8], ifindex: u32) -> Run {
    t.run_on(hook, frame, ifindex)
        .unwrap_or_else(|e| panic!("test run: {}", netfast::error::report(&e)))
}

/// One step of a packet test: runs `hook` on `frame` with the skb on interface `ifindex` (0:
/// as [`run`] does) and asserts, as [`assert_run`] does, that it passes (verdict NEXT) as
/// exactly `want`; `what` names the step in a failure. The run, for further checks.
pub fn passes_on(
    t: &mut ProgTest,
    ifindex: u32,
    hook: Hook,
    what: &str,
    frame: &[u8],
    want: &[u8],
) -> Run {
    let r = run_on(t, hook, frame, ifindex);
    assert_run(what, &r, verdict::NEXT, want);
    r
}

/// [`passes_on`] with the skb where [`run`] puts it.
pub fn passes(t: &mut ProgTest, hook: Hook, what: &str, frame: &[u8], want: &[u8]) -> Run {
    passes_on(t, 0, hook, what, frame, want)
}

/// The IP protocol, source and destination of the TCP segment or UDP datagram in `frame`;
/// panics on anything else.
pub fn endpoints_of(frame: &[u8]) -> (u8, Endpoint, Endpoint) {
    let d = decode(frame).expect("a valid frame");
    match d.l4 {
        L4::Tcp {
            src_port, dst_port, ..
        }
        | L4::Udp {
            src_port, dst_port, ..
        } => (d.protocol, (d.src, src_port), (d.dst, dst_port)),
        _ => panic!("not TCP or UDP: {d:?}"),
    }
}

/// The source address and port of the UDP datagram a run put out; panics on anything else.
pub fn udp_source(r: &Run) -> Endpoint {
    let (proto, src, _) = endpoints_of(&r.frame);
    assert_eq!(proto, PROTO_UDP, "not UDP");
    src
}

/// The conntrack key of `src` → `dst` over `proto`, in the maps' byte order.
pub fn ct_key(src: Endpoint, dst: Endpoint, proto: u8) -> CtKey {
    CtKey::new(
        maps::raw_addr(src.0),
        maps::raw_addr(dst.0),
        src.1.to_be(),
        dst.1.to_be(),
        proto,
    )
}

/// Removes the conntrack entry of `src` → `dst` over `proto`, as the LRU evicts one.
pub fn evict(t: &mut ProgTest, src: Endpoint, dst: Endpoint, proto: u8) {
    maps::remove_conntrack(t.ebpf_mut(), &[ct_key(src, dst, proto)]).expect("evict");
}

/// A UDP datagram from `from` to `to` leaving by the uplink.
pub fn udp_out(from: Endpoint, to: Endpoint, payload: &[u8]) -> Vec<u8> {
    packet::udp(packet::TO_OUTSIDE, from, to, payload)
}

/// A UDP datagram from `from` to `to` arriving on the uplink.
pub fn udp_in(from: Endpoint, to: Endpoint, payload: &[u8]) -> Vec<u8> {
    packet::udp(packet::FROM_OUTSIDE, from, to, payload)
}

/// A TCP segment with data (PSH, ACK) from `from` to `to`, framed with `macs`.
pub fn tcp_data(
    macs: packet::Macs,
    (from, to): (Endpoint, Endpoint),
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    packet::tcp(macs, from, to, packet::TcpFlags::PSH_ACK, seq, ack, payload)
}

/// The MAC address of device `dev` in namespace `ns`.
pub fn mac_of(ns: &TestNetns, dev: &str) -> [u8; 6] {
    let text = ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("a MAC address in hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
}

/// The interface index of device `dev` in namespace `ns`.
pub fn ifindex_of(ns: &TestNetns, dev: &str) -> u32 {
    ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
        .trim()
        .parse()
        .expect("an ifindex")
}

/// Packets dropped for `reason` so far.
pub fn dropped(t: &ProgTest, reason: DropReason) -> u64 {
    t.stats().expect("stats").dropped(reason).packets
}

/// Asserts that run `r` dropped its packet (verdict SHOT) and that `reason` has counted
/// `count` drops so far; `why` names the step in a failure.
pub fn assert_dropped(t: &ProgTest, r: &Run, reason: DropReason, count: u64, why: &str) {
    assert_eq!(r.verdict, verdict::SHOT, "{why}");
    let counted = dropped(t, reason);
    assert_eq!(counted, count, "{why}: {} drops", reason.name());
}

/// Packets counted for event `e` so far.
pub fn event(t: &ProgTest, e: Event) -> u64 {
    t.stats().expect("stats").event(e).packets
}
