//! Published ports, packet by packet: DNAT from outside and its reverse, allow-lists, ICMP
//! errors about published flows, direct access and inter-network drops, and hairpin.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        DropReason, Hook,
        config::{DpConfig, NET_F_MASQUERADE},
        conntrack::{PROTO_TCP, PROTO_UDP},
        verdict,
    },
    maps,
    netns::NetnsGuard,
    prog_test::{
        ProgTest,
        fixture::assert_run,
        packet::{
            self, Endpoint, FROM_CONTAINER, FROM_OUTSIDE, TO_OUTSIDE, TcpFlags, decode,
            decode_quoted, ip_packet,
        },
    },
};
use netfast_tests::{
    TestNetns,
    packets::{
        DEV, EXT, ROUTER, assert_dropped, dropped, ext, ifindex_of, load, masquerade, passes,
        publish, run, run_on, set_network, tcp_data, udp_in, udp_out, udp_source,
    },
    require_root,
};

const C1: Endpoint = (Ipv4Addr::new(172, 18, 0, 2), 80);
const C2: Endpoint = (Ipv4Addr::new(172, 18, 0, 3), 44444);
const OTHER_NET: Endpoint = (Ipv4Addr::new(172, 19, 0, 2), 80);
const CLIENT: Endpoint = (Ipv4Addr::new(203, 0, 113, 50), 55555);
const ALLOWED: Endpoint = (Ipv4Addr::new(192, 0, 2, 9), 40001);

/// Network `id` on `subnet` behind EXT, its uplink the test device.
fn network(t: &mut ProgTest, subnet: &str, id: u16, flags: u16, bridge: u32) {
    let net: ipnet::Ipv4Net = subnet.parse().expect("subnet");
    set_network(t, (net.network(), net.prefix_len()), id, flags, DEV, bridge);
}

/// Network 172.18.0.0/24 masqueraded behind EXT; 8080/tcp on every host address → C1:80;
/// 5000-5001/udp on EXT → C2's 5000-5001. Panics unless the test runs as root.
fn loaded() -> ProgTest {
    require_root();
    let mut t = load(&DpConfig::default());
    // Its bridge is the test device: the bridge's program runs there in these tests.
    masquerade(&mut t, DEV, DEV);
    maps::set_host_addrs(t.ebpf_mut(), &[EXT]).expect("host addrs");
    publish(&mut t, None, 8080, PROTO_TCP, C1, 0);
    publish(&mut t, Some(EXT), 5000, PROTO_UDP, (C2.0, 5000), 0);
    publish(&mut t, Some(EXT), 5001, PROTO_UDP, (C2.0, 5001), 0);
    t
}

/// [`loaded`] with a second masqueraded network, 172.19.0.0/24 (OTHER_NET's).
fn loaded_with_another_network() -> ProgTest {
    let mut t = loaded();
    network(&mut t, "172.19.0.0/24", 2, NET_F_MASQUERADE, 0);
    t
}

fn tcp_in(from: Endpoint, to: Endpoint, flags: TcpFlags) -> Vec<u8> {
    packet::tcp(FROM_OUTSIDE, from, to, flags, 7, 8, b"")
}

fn tcp_out(from: Endpoint, to: Endpoint, flags: TcpFlags) -> Vec<u8> {
    packet::tcp(TO_OUTSIDE, from, to, flags, 8, 8, b"")
}

#[test]
fn an_outside_client_reaches_the_published_container_and_gets_replies_from_the_published_port() {
    let mut t = loaded();
    let syn = |to| tcp_in(CLIENT, to, TcpFlags::SYN);
    passes(
        &mut t,
        Hook::UplinkIngress,
        "SYN to 8080 goes to C1:80",
        &syn(ext(8080)),
        &syn(C1),
    );
    let synack = tcp_out(C1, CLIENT, TcpFlags::SYN_ACK);
    let want = tcp_out(ext(8080), CLIENT, TcpFlags::SYN_ACK);
    passes(
        &mut t,
        Hook::UplinkEgress,
        "the SYN-ACK leaves from EXT:8080",
        &synack,
        &want,
    );
    let get = |to| tcp_data(FROM_OUTSIDE, (CLIENT, to), 8, 9, b"GET / HTTP/1.1\r\n\r\n");
    passes(
        &mut t,
        Hook::UplinkIngress,
        "data follows",
        &get(ext(8080)),
        &get(C1),
    );
    let flows = maps::flows(t.ebpf(), maps::monotonic_now()).expect("flows");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].state, Some("ESTABLISHED"));
    assert_eq!(
        (flows[0].original.src, flows[0].original.dport),
        (CLIENT.0, 8080)
    );
    assert_eq!((flows[0].reply.src, flows[0].reply.sport), C1);
    let net = t.stats().expect("stats").networks;
    assert_eq!((net[0].rx_packets, net[0].tx_packets), (2, 1));
}

#[test]
fn published_addresses_ports_and_ranges_are_matched_exactly() {
    let mut t = loaded();
    // UDP range: one to one.
    for port in [5000, 5001] {
        let q = |to| udp_in(CLIENT, to, b"q");
        passes(
            &mut t,
            Hook::UplinkIngress,
            "udp range",
            &q(ext(port)),
            &q((C2.0, port)),
        );
    }
    // Not published: the host gets these as they are.
    for (what, frame) in [
        ("unpublished port", tcp_in(CLIENT, ext(8081), TcpFlags::SYN)),
        ("wrong protocol", udp_in(CLIENT, ext(8080), b"q")),
        (
            "an address that is not the host's",
            tcp_in(
                CLIENT,
                (Ipv4Addr::new(198, 51, 100, 77), 8080),
                TcpFlags::SYN,
            ),
        ),
        (
            "a stray ACK opens nothing",
            tcp_in(CLIENT, ext(8080), TcpFlags::ACK),
        ),
    ] {
        passes(&mut t, Hook::UplinkIngress, what, &frame, &frame);
    }
}

#[test]
fn an_allow_list_lets_its_clients_in_and_drops_the_others() {
    let mut t = loaded();
    publish(&mut t, None, 9090, PROTO_TCP, C1, 7);
    maps::allow(t.ebpf_mut(), 7, "192.0.2.0/24".parse().expect("cidr")).expect("allow");
    let syn = |from, to| tcp_in(from, to, TcpFlags::SYN);
    let want = syn(ALLOWED, C1);
    passes(
        &mut t,
        Hook::UplinkIngress,
        "an allowed client",
        &syn(ALLOWED, ext(9090)),
        &want,
    );
    let r = run(&mut t, Hook::UplinkIngress, &syn(CLIENT, ext(9090)));
    let why = "a client outside the list must be dropped";
    assert_dropped(&t, &r, DropReason::NotAllowed, 1, why);
    // Other publications are not affected by this list.
    let r = run(&mut t, Hook::UplinkIngress, &syn(CLIENT, ext(8080)));
    assert_eq!(r.verdict, verdict::NEXT);
}

/// A published UDP flow: the client → EXT:5000 → C2:5000, and C2's answer as it left
/// (from EXT:5000).
fn published_answer(t: &mut ProgTest) -> netfast::prog_test::Run {
    run(t, Hook::UplinkIngress, &udp_in(CLIENT, ext(5000), b"q"));
    let a = |from| udp_out(from, CLIENT, b"a");
    passes(
        t,
        Hook::UplinkEgress,
        "answer",
        &a((C2.0, 5000)),
        &a(ext(5000)),
    )
}

/// [`loaded`] with a [`published_answer`], and a router's error from outside (host
/// unreachable) about that answer as it left, addressed to `to`.
fn an_error_about_the_answer(to: Ipv4Addr) -> (ProgTest, Vec<u8>) {
    let mut t = loaded();
    let answer = published_answer(&mut t);
    let quote = ip_packet(&answer.frame);
    let error = packet::icmp_error(FROM_OUTSIDE, ROUTER, to, 3, 1, [0; 4], quote);
    (t, error)
}

/// A port unreachable from `from` to `to`, leaving by the uplink, about the client's packet
/// to C2:5000 as it arrived (CLIENT → C2:5000).
fn unreachable_about_the_clients_packet(from: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let sent = udp_in(CLIENT, (C2.0, 5000), b"q");
    packet::icmp_error(TO_OUTSIDE, from, to, 3, 3, [0; 4], ip_packet(&sent))
}

#[test]
fn icmp_errors_about_published_flows_are_translated_both_ways() {
    // A router cannot deliver the answer: its error reaches C2 about C2's own packet.
    let (mut t, error) = an_error_about_the_answer(EXT);
    let r = run(&mut t, Hook::UplinkIngress, &error);
    assert_eq!(r.verdict, verdict::NEXT);
    let outer = decode(&r.frame).expect("valid");
    assert_eq!((outer.src, outer.dst), (ROUTER, C2.0));
    let q = decode_quoted(&r.frame).expect("valid quote");
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport, q.l4_checksum_ok),
        (C2.0, 5000, CLIENT.0, CLIENT.1, Some(true))
    );
    // C2 has no socket on 5000 after all: its port unreachable leaves as EXT's, about EXT:5000.
    let unreachable = unreachable_about_the_clients_packet(C2.0, CLIENT.0);
    let r = run(&mut t, Hook::UplinkEgress, &unreachable);
    assert_eq!(r.verdict, verdict::NEXT);
    let outer = decode(&r.frame).expect("valid");
    assert_eq!(
        (outer.src, outer.dst),
        (EXT, CLIENT.0),
        "the container's address must not leak"
    );
    let q = decode_quoted(&r.frame).expect("valid quote");
    assert_eq!(
        (q.src, q.dst, q.dport, q.l4_checksum_ok),
        (CLIENT.0, EXT, 5000, Some(true))
    );
}

/// Found in review: an ICMP error was taken as translated whenever its quote matched a
/// flow, whatever its outer header said. An error is sent to the source of the packet it
/// quotes; one addressed elsewhere is about no flow of ours. From outside, a quote of a
/// published flow's answer let an error addressed to a masqueraded container in (direct
/// access); from a container, an error left with another container's address as its source
/// (a leak) or went to an address its quote does not name.
#[test]
fn icmp_errors_not_addressed_as_their_quote_says_are_not_let_through() {
    // From outside, quoting the answer (EXT:5000 → CLIENT), addressed to C1.
    let (mut t, error) = an_error_about_the_answer(C1.0);
    let r = run(&mut t, Hook::UplinkIngress, &error);
    let why = "an error to a masqueraded container is direct access, whatever it quotes";
    assert_dropped(&t, &r, DropReason::DirectAccess, 1, why);
    // From the containers' side, about the client's packet to C2 (CLIENT → C2:5000).
    // Sent by another container of the network: it leaves as EXT's.
    let other = Ipv4Addr::new(172, 18, 0, 9);
    let unreachable = unreachable_about_the_clients_packet(other, CLIENT.0);
    let r = run(&mut t, Hook::UplinkEgress, &unreachable);
    if r.verdict == verdict::NEXT {
        let outer = decode(&r.frame).expect("valid");
        assert_eq!(
            (outer.src, outer.dst),
            (EXT, CLIENT.0),
            "a container's address must not leak"
        );
    } else {
        assert_eq!(r.verdict, verdict::SHOT);
    }
    // Addressed to someone the quote does not name: not about the flow, and a container's
    // error to the outside that is not a translated flow's is dropped.
    let astray = unreachable_about_the_clients_packet(C2.0, Ipv4Addr::new(198, 51, 100, 7));
    let r = run(&mut t, Hook::UplinkEgress, &astray);
    let why = packet::describe(&r.frame);
    assert_dropped(&t, &r, DropReason::IcmpErrorWithoutFlow, 1, &why);
}

#[test]
fn direct_access_to_a_masqueraded_container_is_dropped_but_a_routed_network_is_reachable() {
    let mut t = loaded();
    network(&mut t, "10.9.0.0/24", 2, 0, 0);
    let r = run(
        &mut t,
        Hook::UplinkIngress,
        &tcp_in(CLIENT, C1, TcpFlags::SYN),
    );
    assert_eq!(
        r.verdict,
        verdict::SHOT,
        "straight to 172.18.0.2 from outside"
    );
    let r = run(
        &mut t,
        Hook::UplinkIngress,
        &packet::icmp_echo(FROM_OUTSIDE, CLIENT.0, C1.0, false, 3, 1, b"x"),
    );
    let why = "a ping to the container's address";
    assert_dropped(&t, &r, DropReason::DirectAccess, 2, why);
    let routed = tcp_in(CLIENT, (Ipv4Addr::new(10, 9, 0, 2), 80), TcpFlags::SYN);
    let what = "a network without masquerade is routed";
    passes(&mut t, Hook::UplinkIngress, what, &routed, &routed);
}

#[test]
fn containers_of_two_networks_cannot_reach_each_other() {
    let mut t = loaded_with_another_network();
    let across = packet::tcp(FROM_CONTAINER, C2, OTHER_NET, TcpFlags::SYN, 1, 0, b"");
    let r = run(&mut t, Hook::BridgeIngress, &across);
    assert_dropped(&t, &r, DropReason::InterNetwork, 1, "across networks");
    for (what, frame) in [
        (
            "to the gateway",
            packet::icmp_echo(
                FROM_CONTAINER,
                C2.0,
                Ipv4Addr::new(172, 18, 0, 1),
                false,
                1,
                1,
                b"x",
            ),
        ),
        (
            "to the outside",
            packet::tcp(FROM_CONTAINER, C2, CLIENT, TcpFlags::SYN, 1, 0, b""),
        ),
    ] {
        passes(&mut t, Hook::BridgeIngress, what, &frame, &frame);
    }
}

/// Found in review: from outside, a packet from another network's container address
/// (172.19.0.2) to a published port opened a flow into C2; C2's answer then matched the
/// flow and went, translated, into the container whose address was forged: a way across
/// networks that Docker's isolation closes. A packet of no flow from an address of one of
/// our networks arriving at the uplink is forged.
#[test]
fn a_packet_from_outside_with_a_container_source_opens_no_flow() {
    let mut t = loaded_with_another_network();
    for (what, from) in [
        ("another network's", (OTHER_NET.0, 53)),
        ("its own network's", (C1.0, 53)),
    ] {
        let r = run(&mut t, Hook::UplinkIngress, &udp_in(from, ext(5000), b"q"));
        assert_eq!(
            r.verdict,
            verdict::SHOT,
            "a packet from {what} container address, from outside, must open no flow"
        );
    }
    assert_eq!(dropped(&t, DropReason::SpoofedSource), 2);
    // A client from outside still gets in.
    passes(
        &mut t,
        Hook::UplinkIngress,
        "a real client",
        &udp_in(CLIENT, ext(5000), b"q"),
        &udp_in(CLIENT, (C2.0, 5000), b"q"),
    );
}

#[test]
fn masquerade_never_hands_out_a_published_port() {
    let mut t = loaded();
    publish(&mut t, Some(EXT), 40000, PROTO_UDP, C1, 0);
    let r = run(
        &mut t,
        Hook::UplinkEgress,
        &udp_out((C2.0, 40000), CLIENT, b"x"),
    );
    let (_, src_port) = udp_source(&r);
    assert_ne!(
        src_port, 40000,
        "40000/udp is published: masquerade must pick another port"
    );
}

/// Hairpin runs the FIB: in a namespace with the bridge, as the skb arrives on it.
struct Bridge {
    ns: TestNetns,
    ifindex: u32,
}

fn bridge() -> Bridge {
    let ns = TestNetns::new("p");
    ns.exec_ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    ns.exec_ok(&["ip", "addr", "add", "172.18.0.1/24", "dev", "br0"]);
    ns.exec_ok(&["ip", "link", "set", "br0", "up"]);
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let ifindex = ifindex_of(&ns, "br0");
    Bridge { ns, ifindex }
}

#[test]
fn hairpin_reaches_the_published_container_with_the_source_translated() {
    require_root();
    let br = bridge();
    let mut t = loaded();
    network(&mut t, "172.18.0.0/24", 1, NET_F_MASQUERADE, br.ifindex);
    let _in = NetnsGuard::enter(br.ns.name()).expect("enter");
    let on_bridge =
        |t: &mut ProgTest, frame: &[u8]| run_on(t, Hook::BridgeIngress, frame, br.ifindex);
    let from_ct =
        |from, to, flags, seq, ack| packet::tcp(FROM_CONTAINER, from, to, flags, seq, ack, b"");
    // Each step: a container's segment through the bridge, and what it must be redirected as
    // (routed).
    let steps = [
        // The source becomes C2's masquerade mapping (its own port, free), the destination C1:80.
        (
            "C2 → EXT:8080 is redirected to C1:80 from EXT",
            from_ct(C2, ext(8080), TcpFlags::SYN, 1, 0),
            from_ct(ext(C2.1), C1, TcpFlags::SYN, 1, 0),
        ),
        (
            "C1's reply reaches C2 from EXT:8080",
            from_ct(C1, ext(C2.1), TcpFlags::SYN_ACK, 5, 2),
            from_ct(ext(8080), C2, TcpFlags::SYN_ACK, 5, 2),
        ),
        // The serving container itself.
        (
            "C1 → EXT:8080 comes back to C1",
            from_ct((C1.0, 33333), ext(8080), TcpFlags::SYN, 1, 0),
            from_ct(ext(33333), C1, TcpFlags::SYN, 1, 0),
        ),
    ];
    for (what, frame, want) in steps {
        let r = on_bridge(&mut t, &frame);
        assert_run(what, &r, verdict::REDIRECT, &packet::routed(&want));
    }
    // A masqueraded flow is left to the uplink: the bridge does not translate it.
    run(
        &mut t,
        Hook::UplinkEgress,
        &tcp_out((C2.0, 50000), CLIENT, TcpFlags::SYN),
    );
    let out = from_ct((C2.0, 50000), CLIENT, TcpFlags::ACK, 9, 9);
    let r = on_bridge(&mut t, &out);
    assert_run(
        "masqueraded traffic passes the bridge untouched",
        &r,
        verdict::NEXT,
        &out,
    );
}
