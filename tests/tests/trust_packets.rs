//! What adversarial and unlucky packets must never do (issue #13), packet by packet: the real
//! programs through BPF_PROG_TEST_RUN. Each test shows a hole the datapath had: a port
//! published on 127.0.0.1 reached from the network, an expired flow revived onto another
//! container's mapping, a blind RST ending a connection, a container forging a remote's
//! address into another container's flow, two publications of one container port clashing,
//! a flow that lost an entry dropped for the rest of its life, an ICMP error's checksum
//! corrupted by a frame's padding.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        DropReason, Hook,
        config::{DpConfig, Endpoint as EndpointInfo, NET_F_MASQUERADE},
        conntrack::{PROTO_TCP, PROTO_UDP},
        stats::Event,
        verdict,
    },
    maps,
    prog_test::{
        ProgTest, Run,
        packet::{self, Endpoint, FROM_CONTAINER, FROM_OUTSIDE, TO_OUTSIDE, TcpFlags, decode},
    },
};
use netfast_tests::{
    packets::{
        self, C1, C2, DEV, EXT, SERVER, assert_dropped, dropped, endpoints_of, event, evict, ext,
        masquerade, publish, run_on, set_network, tcp_data, udp_in, udp_out, udp_source,
    },
    require_root,
};

const WEB: Endpoint = (Ipv4Addr::new(172, 18, 0, 2), 80);
const CLIENT: Endpoint = (Ipv4Addr::new(192, 0, 2, 50), 55555);
/// A second masqueraded network, behind the same address.
const OTHER_NET: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 19, 0, 0), 24);

/// 172.18.0.0/24 masqueraded behind EXT; bridge and uplink are the test device. Panics
/// unless the test runs as root.
fn loaded() -> ProgTest {
    require_root();
    provisioned(packets::load(&DpConfig::default()))
}

/// `t` with 172.18.0.0/24 masqueraded behind EXT, the host's address EXT.
fn provisioned(mut t: ProgTest) -> ProgTest {
    masquerade(&mut t, DEV, DEV);
    maps::set_host_addrs(t.ebpf_mut(), &[EXT]).expect("host addresses");
    t
}

/// Runs `hook` on `frame` on the test device.
fn run(t: &mut ProgTest, hook: Hook, frame: &[u8]) -> Run {
    run_on(t, hook, frame, DEV)
}

/// Runs `hook` on `frame` on the test device; it must pass as exactly `want`.
fn passes(t: &mut ProgTest, hook: Hook, what: &str, frame: &[u8], want: &[u8]) -> Run {
    packets::passes_on(t, DEV, hook, what, frame, want)
}

fn tcp_out(from: Endpoint, to: Endpoint, flags: TcpFlags, seq: u32, ack: u32) -> Vec<u8> {
    packet::tcp(TO_OUTSIDE, from, to, flags, seq, ack, b"")
}

fn tcp_in(from: Endpoint, to: Endpoint, flags: TcpFlags, seq: u32, ack: u32) -> Vec<u8> {
    packet::tcp(FROM_OUTSIDE, from, to, flags, seq, ack, b"")
}

fn rst_ack() -> TcpFlags {
    TcpFlags {
        ack: true,
        ..TcpFlags::RST
    }
}

/// Tells the fast path that the container at `addr` is behind the test device, with the test
/// frames' MACs and `mtu`.
fn fast_path_knows(t: &mut ProgTest, addr: Ipv4Addr, mtu: u16) {
    let ep = EndpointInfo {
        ifindex: DEV,
        mac: packet::CONTAINER_MAC,
        gw_mac: packet::BRIDGE_MAC,
        mtu,
        _pad: 0,
    };
    maps::set_endpoint(t.ebpf_mut(), addr, &ep).expect("endpoint");
}

/// The state of the live flow whose original source is `src`.
fn state_of(t: &ProgTest, src: Endpoint) -> Option<&'static str> {
    maps::flows(t.ebpf(), t.now().expect("now"))
        .expect("flows")
        .into_iter()
        .find(|f| (f.original.src, f.original.sport) == src)
        .and_then(|f| f.state)
}

#[test]
fn a_port_published_on_loopback_is_never_reached_by_a_packet() {
    let mut t = loaded();
    let on_loopback = (Ipv4Addr::LOCALHOST, 5432);
    publish(
        &mut t,
        Some(on_loopback.0),
        5432,
        PROTO_TCP,
        (WEB.0, 5432),
        0,
    );
    for (hook, frame, what, reason) in [
        // moby#45610: a SYN to 127.0.0.1:5432 sent at layer 2 to the uplink's MAC.
        (
            Hook::UplinkIngress,
            tcp_in(CLIENT, on_loopback, TcpFlags::SYN, 1, 0),
            "a packet for 127.0.0.1 from outside",
            DropReason::LoopbackFromNetwork,
        ),
        // Nor from a container, through the bridge (only the host's sockets reach it).
        (
            Hook::BridgeIngress,
            packet::tcp(FROM_CONTAINER, C2, on_loopback, TcpFlags::SYN, 1, 0, b""),
            "a container's packet for 127.0.0.1",
            DropReason::ToHostLoopback,
        ),
    ] {
        let r = run(&mut t, hook, &frame);
        assert_dropped(&t, &r, reason, 1, what);
    }
    assert!(
        maps::conntrack_entries(t.ebpf())
            .expect("entries")
            .is_empty()
    );
}

#[test]
fn an_expired_flow_is_not_revived_onto_the_mapping_another_container_took_over() {
    let mut t = loaded();
    let hello = |from| udp_out(from, SERVER, b"hello");
    let as_ext = hello(ext(40000));
    passes(
        &mut t,
        Hook::UplinkEgress,
        "C1 leaves as EXT:40000",
        &hello(C1),
        &as_ext,
    );
    // C1's flow and mapping expire; C2, from the same port to the same server, takes the
    // external port over.
    t.advance_clock(DpConfig::DEFAULT_UDP * 2).expect("advance");
    passes(
        &mut t,
        Hook::UplinkEgress,
        "C2 takes EXT:40000",
        &hello(C2),
        &as_ext,
    );
    // C1 speaks again: its dead entry points at a reply entry that is C2's now. It must not
    // come back to life on C2's external endpoint: it gets a mapping of its own.
    let r = run(&mut t, Hook::UplinkEgress, &hello(C1));
    assert_eq!(r.verdict, verdict::NEXT);
    let (src, src_port) = udp_source(&r);
    assert_eq!(src, EXT);
    assert_ne!(src_port, 40000, "C1 shares C2's external endpoint");
    // And the server's answer to EXT:40000 is C2's.
    let hi = udp_in(SERVER, ext(40000), b"hi");
    passes(
        &mut t,
        Hook::UplinkIngress,
        "EXT:40000 is C2's",
        &hi,
        &udp_in(SERVER, C2, b"hi"),
    );
}

/// C1's SYN to SERVER, sequence 1000, out through the uplink (as EXT:40000).
fn syn_out(t: &mut ProgTest) -> Run {
    run(
        t,
        Hook::UplinkEgress,
        &tcp_out(C1, SERVER, TcpFlags::SYN, 1000, 0),
    )
}

/// An established masqueraded connection C1 → SERVER: the client's sequence starts at
/// 1000, the server's at 5000, and the server has sent 100 bytes.
fn established(t: &mut ProgTest) {
    handshake(t, 1000, 5000);
    let data = tcp_data(FROM_OUTSIDE, (SERVER, ext(40000)), 5001, 1001, &[7; 100]);
    run(t, Hook::UplinkIngress, &data);
    assert_eq!(state_of(t, C1), Some("ESTABLISHED"));
}

/// The server's segment with `flags`, `seq` and `ack` to C1's external endpoint (`what`)
/// passes, translated to C1, and closes C1's flow.
fn the_server_closes(t: &mut ProgTest, what: &str, flags: TcpFlags, seq: u32, ack: u32) {
    let segment = tcp_in(SERVER, ext(40000), flags, seq, ack);
    let want = tcp_in(SERVER, C1, flags, seq, ack);
    passes(t, Hook::UplinkIngress, what, &segment, &want);
    assert_eq!(state_of(t, C1), Some("CLOSE"));
}

/// C1's segment with `first` flags to SERVER (sequence `c`, acknowledging `a`), the
/// server's `answer` to it (sequence `s`), and C1's ACK of that, each through its hook
/// whatever they return: a handshake, or a close from both ends.
fn exchange(t: &mut ProgTest, (first, answer): (TcpFlags, TcpFlags), (c, a): (u32, u32), s: u32) {
    let segments = [
        (Hook::UplinkEgress, tcp_out(C1, SERVER, first, c, a)),
        (
            Hook::UplinkIngress,
            tcp_in(SERVER, ext(40000), answer, s, c + 1),
        ),
        (
            Hook::UplinkEgress,
            tcp_out(C1, SERVER, TcpFlags::ACK, c + 1, s + 1),
        ),
    ];
    for (hook, frame) in segments {
        run(t, hook, &frame);
    }
}

/// C1's handshake with SERVER, C1's sequence from `c`, the server's from `s`.
fn handshake(t: &mut ProgTest, c: u32, s: u32) {
    exchange(t, (TcpFlags::SYN, TcpFlags::SYN_ACK), (c, 0), s);
}

/// The [`established`] connection loses the conntrack entry of `lost` (source, destination);
/// its next segment, `frame` through `hook` (`what`), passes as `want`, the flow repaired
/// and still established.
fn repaired_after_losing(
    t: &mut ProgTest,
    lost: (Endpoint, Endpoint),
    (hook, what): (Hook, &str),
    frame: &[u8],
    want: &[u8],
) {
    established(t);
    evict(t, lost.0, lost.1, PROTO_TCP);
    passes(t, hook, what, frame, want);
    assert_eq!(event(t, Event::CtRepaired), 1);
    assert_eq!(state_of(t, C1), Some("ESTABLISHED"));
}

#[test]
fn a_blind_rst_does_not_end_a_connection_and_a_genuine_one_does() {
    let mut t = loaded();
    established(&mut t);
    for seq in [
        123_456_789u32,
        5101 + 10_000_000,
        5101u32.wrapping_sub(200_000),
    ] {
        let blind = tcp_in(SERVER, ext(40000), TcpFlags::RST, seq, 0);
        let r = run(&mut t, Hook::UplinkIngress, &blind);
        assert_eq!(r.verdict, verdict::SHOT, "a RST with sequence {seq}");
    }
    assert_eq!(dropped(&t, DropReason::TcpRstOutOfWindow), 3);
    assert_eq!(
        state_of(&t, C1),
        Some("ESTABLISHED"),
        "a blind RST ended the flow"
    );
    // The server's own RST carries the sequence it has reached.
    the_server_closes(&mut t, "the server's RST", TcpFlags::RST, 5101, 0);
}

/// Found in review: a SYN that reopens a closed flow (the same client port to the same
/// server, a new connection) carries a new initial sequence number, but the window
/// tracking went on from the old connection's: each side's sequence stayed where the old
/// one had reached whenever the new one lay "behind" it (half of all new sequence numbers).
/// The server's refusal of the new connection, or any later RST of it, was judged against
/// the old sequence and dropped as out of window: the client hung instead of hearing
/// "connection refused".
#[test]
fn a_reopened_connection_is_judged_by_its_own_sequence_numbers() {
    let mut t = loaded();
    established(&mut t);
    // Both ends close: TIME_WAIT.
    let fins = (TcpFlags::FIN_ACK, TcpFlags::FIN_ACK);
    exchange(&mut t, fins, (1001, 5101), 5101);
    assert_eq!(state_of(&t, C1), Some("TIME_WAIT"));
    // C1 connects again from the same port, its sequence far behind the old one's.
    let isn = 3_000_000_000u32;
    run(
        &mut t,
        Hook::UplinkEgress,
        &tcp_out(C1, SERVER, TcpFlags::SYN, isn, 0),
    );
    assert_eq!(state_of(&t, C1), Some("SYN_SENT"));
    // The server refuses it: its RST acknowledges the new SYN.
    let what = "the refusal of the new connection";
    the_server_closes(&mut t, what, rst_ack(), 0, isn + 1);
    // Again, and this time the server answers (its own sequence far from its old one too);
    // the connection's RST, at the server's new sequence, ends it.
    let server_isn = 2_500_000_000u32;
    handshake(&mut t, isn + 10, server_isn);
    assert_eq!(state_of(&t, C1), Some("ESTABLISHED"));
    let what = "the new connection's RST";
    the_server_closes(&mut t, what, TcpFlags::RST, server_isn + 1, 0);
}

/// Found in review: only RSTs were judged by the window. A blind FIN (any sequence) took an
/// established flow to FIN_WAIT and, at the next ACK, CLOSE_WAIT: minutes of idle timeout
/// instead of hours. And any segment far ahead moved the tracked sequence there: a few
/// blind ACKs, 2^30 apart, walked it to a sequence of the attacker's choosing, where its RST
/// was then believed. A segment outside the window now passes (the endpoint judges it) but
/// moves nothing of the flow.
#[test]
fn blind_segments_outside_the_window_move_nothing() {
    let mut t = loaded();
    established(&mut t);
    // A blind FIN from "the server", far from its sequence (5101).
    let blind_fin = tcp_in(SERVER, ext(40000), TcpFlags::FIN_ACK, 900_000_000, 1001);
    let r = run(&mut t, Hook::UplinkIngress, &blind_fin);
    assert_eq!(
        r.verdict,
        verdict::NEXT,
        "a segment out of window still passes"
    );
    assert_eq!(
        state_of(&t, C1),
        Some("ESTABLISHED"),
        "a blind FIN moved the flow"
    );
    // Blind ACKs far ahead, then a RST where they would have moved the sequence.
    let mut seq = 5101u32;
    for _ in 0..3 {
        seq = seq.wrapping_add(1 << 30);
        run(
            &mut t,
            Hook::UplinkIngress,
            &tcp_in(SERVER, ext(40000), TcpFlags::ACK, seq, 1001),
        );
    }
    let rst = tcp_in(SERVER, ext(40000), TcpFlags::RST, seq, 0);
    assert_eq!(
        run(&mut t, Hook::UplinkIngress, &rst).verdict,
        verdict::SHOT
    );
    assert_eq!(state_of(&t, C1), Some("ESTABLISHED"));
    // The server's own FIN, at its sequence, is the flow's.
    let fin = tcp_in(SERVER, ext(40000), TcpFlags::FIN_ACK, 5101, 1001);
    run(&mut t, Hook::UplinkIngress, &fin);
    assert_eq!(state_of(&t, C1), Some("FIN_WAIT"));
}

#[test]
fn a_refused_connection_is_reset_by_the_rst_that_acknowledges_its_syn() {
    let mut t = loaded();
    syn_out(&mut t);
    // A forged refusal that does not acknowledge the SYN is not believed.
    let forged = tcp_in(SERVER, ext(40000), rst_ack(), 0, 777);
    assert_eq!(
        run(&mut t, Hook::UplinkIngress, &forged).verdict,
        verdict::SHOT
    );
    assert_eq!(state_of(&t, C1), Some("SYN_SENT"));
    the_server_closes(&mut t, "connection refused", rst_ack(), 0, 1001);
}

#[test]
fn a_container_forging_a_remote_address_cannot_step_into_another_containers_flow() {
    let mut t = loaded();
    // C1 talks to SERVER through EXT:40000, and the fast path knows C1's veth.
    fast_path_knows(&mut t, C1.0, 1500);
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"q"));
    // C2 forges SERVER's answer to C1's mapping from inside: once, it was fast-pathed
    // straight into C1 (redirect_peer), past the host's reverse-path filter.
    let forged = packet::udp(FROM_CONTAINER, SERVER, ext(40000), b"forged");
    let r = run(&mut t, Hook::BridgeIngress, &forged);
    let why = "a forged source from a container";
    assert_dropped(&t, &r, DropReason::SpoofedSource, 1, why);
    // A container of another network, forging C1's own address, is dropped as well.
    set_network(&mut t, OTHER_NET, 2, NET_F_MASQUERADE, DEV, 77);
    let across = packet::udp(
        FROM_CONTAINER,
        (Ipv4Addr::new(172, 19, 0, 2), 1),
        SERVER,
        b"x",
    );
    let r = run(&mut t, Hook::BridgeIngress, &across);
    let why = "an address of another bridge's network";
    assert_dropped(&t, &r, DropReason::SpoofedSource, 2, why);
    // From outside, a packet carrying C1's own tuple is not C1's flow either (the uplink's
    // ingress uses only entries for packets that arrive there: used, it would go out
    // translated), and its source, a container's address, is forged.
    let r = run(&mut t, Hook::UplinkIngress, &udp_in(C1, SERVER, b"reflect"));
    let why = "C1's tuple from outside";
    assert_dropped(&t, &r, DropReason::SpoofedSource, 3, why);
    // The genuine answer, from outside, still reaches C1.
    let r = run(
        &mut t,
        Hook::UplinkIngress,
        &udp_in(SERVER, ext(40000), b"a"),
    );
    assert_eq!(decode(&r.frame).expect("frame").dst, C1.0);
}

#[test]
fn one_client_port_to_two_publications_of_one_container_port_gets_both() {
    let mut t = loaded();
    publish(&mut t, None, 8080, PROTO_TCP, WEB, 0);
    publish(&mut t, None, 8081, PROTO_TCP, WEB, 0);
    let syn = |to| tcp_in(CLIENT, to, TcpFlags::SYN, 1, 0);
    passes(
        &mut t,
        Hook::UplinkIngress,
        "8080",
        &syn(ext(8080)),
        &syn(WEB),
    );
    // The same client port to 8081: WEB's replies to CLIENT:55555 would be ambiguous, so
    // the client's source port is translated as well (as Linux does).
    let r = run(&mut t, Hook::UplinkIngress, &syn(ext(8081)));
    assert_eq!(r.verdict, verdict::NEXT, "the second flow was dropped");
    let (proto, (src, src_port), seen_dst) = endpoints_of(&r.frame);
    assert_eq!(proto, PROTO_TCP, "not TCP");
    assert_eq!((src, seen_dst), (CLIENT.0, WEB));
    assert_ne!(src_port, CLIENT.1);
    // Each flow's replies go back through its own published port.
    for (port, client_port) in [(8080, CLIENT.1), (8081, src_port)] {
        let reply = tcp_out(WEB, (CLIENT.0, client_port), TcpFlags::SYN_ACK, 9, 2);
        let want = tcp_out(ext(port), CLIENT, TcpFlags::SYN_ACK, 9, 2);
        let what = format!("the reply through {port}");
        passes(&mut t, Hook::UplinkEgress, &what, &reply, &want);
    }
}

#[test]
fn a_flow_that_lost_an_entry_is_repaired_not_dropped_for_the_rest_of_its_life() {
    let mut t = loaded();
    // The LRU evicts the original entry of C1's flow (a flood, say).
    let next = |from| tcp_data(TO_OUTSIDE, (from, SERVER), 1001, 5101, b"more");
    let step = (Hook::UplinkEgress, "C1's next segment");
    repaired_after_losing(&mut t, (C1, SERVER), step, &next(C1), &next(ext(40000)));
    assert_eq!(dropped(&t, DropReason::CtInsertFailed), 0);
    // A published flow's client side, restored by a segment that is not a SYN.
    publish(&mut t, None, 8080, PROTO_TCP, WEB, 0);
    run(
        &mut t,
        Hook::UplinkIngress,
        &tcp_in(CLIENT, ext(8080), TcpFlags::SYN, 1, 0),
    );
    evict(&mut t, CLIENT, ext(8080), PROTO_TCP);
    let ack = tcp_in(CLIENT, ext(8080), TcpFlags::ACK, 2, 10);
    let want = tcp_in(CLIENT, WEB, TcpFlags::ACK, 2, 10);
    passes(&mut t, Hook::UplinkIngress, "the client's ACK", &ack, &want);
    assert_eq!(event(&t, Event::CtRepaired), 2);
}

#[test]
fn an_icmp_error_in_a_padded_frame_keeps_a_valid_checksum() {
    let mut t = loaded();
    syn_out(&mut t);
    // A router's time-exceeded about the SYN as it left, quoting its IP header and only the
    // first 8 bytes of TCP (RFC 792), in a frame with 16 bytes of padding after the packet.
    let sent = tcp_out(ext(40000), SERVER, TcpFlags::SYN, 1000, 0);
    let quoted = &packet::ip_packet(&sent)[..28];
    let router = Ipv4Addr::new(198, 51, 100, 254);
    let mut frame = packet::icmp_error(FROM_OUTSIDE, router, EXT, 11, 0, [0; 4], quoted);
    let ip_len = frame.len();
    frame.extend_from_slice(&[0xee; 16]);
    let r = run(&mut t, Hook::UplinkIngress, &frame);
    assert_eq!(r.verdict, verdict::NEXT);
    assert_eq!(&r.frame[ip_len..], &[0xee; 16], "the padding was rewritten");
    let out = decode(&r.frame[..ip_len]).expect("a valid ICMP checksum");
    assert_eq!(out.dst, C1.0);
    let quoted = packet::decode_quoted(&r.frame[..ip_len]).expect("the quoted packet");
    assert_eq!((quoted.src, quoted.sport), C1);
}

#[test]
fn a_udp_flow_is_tracked_both_ways_after_all_this() {
    // Sanity: nothing above broke the plain case.
    let mut t = loaded();
    let ping = udp_out(C1, SERVER, b"ping");
    passes(
        &mut t,
        Hook::UplinkEgress,
        "out",
        &ping,
        &udp_out(ext(40000), SERVER, b"ping"),
    );
    let pong = udp_in(SERVER, ext(40000), b"pong");
    passes(
        &mut t,
        Hook::UplinkIngress,
        "back",
        &pong,
        &udp_in(SERVER, C1, b"pong"),
    );
}

#[test]
fn the_hosts_own_flow_never_shares_a_containers_external_endpoint() {
    let mut t = loaded();
    // C1 holds EXT:40000 towards a DNS server.
    let dns: Endpoint = (Ipv4Addr::new(203, 0, 113, 53), 53);
    let q1 = udp_out(C1, dns, b"q1");
    passes(
        &mut t,
        Hook::UplinkEgress,
        "C1's query",
        &q1,
        &udp_out(ext(40000), dns, b"q1"),
    );
    // Then the host binds EXT:40000 itself and asks the same server: its query must not
    // leave as EXT:40000, or the answer would go to C1.
    let r = run(&mut t, Hook::UplinkEgress, &udp_out(ext(40000), dns, b"q2"));
    assert_eq!(r.verdict, verdict::NEXT);
    let (src, src_port) = udp_source(&r);
    assert_eq!(src, EXT);
    assert_ne!(
        src_port, 40000,
        "the host's flow shares C1's external endpoint"
    );
    assert_eq!(event(&t, Event::HostFlowRemapped), 1);
    // Each answer reaches its asker, and the host's next query leaves from the same port as
    // its first.
    let steps = [
        (
            "the host's answer",
            udp_in(dns, ext(src_port), b"a2"),
            udp_in(dns, ext(40000), b"a2"),
        ),
        (
            "C1's answer",
            udp_in(dns, ext(40000), b"a1"),
            udp_in(dns, C1, b"a1"),
        ),
    ];
    for (what, frame, want) in steps {
        passes(&mut t, Hook::UplinkIngress, what, &frame, &want);
    }
    let q3 = udp_out(ext(40000), dns, b"q3");
    passes(
        &mut t,
        Hook::UplinkEgress,
        "again",
        &q3,
        &udp_out(ext(src_port), dns, b"q3"),
    );
    // A host port no container holds is left alone.
    let own = udp_out(ext(5353), dns, b"q4");
    passes(&mut t, Hook::UplinkEgress, "a free host port", &own, &own);
}

#[test]
fn a_flood_of_unanswered_syns_cannot_push_out_an_established_flow() {
    require_root();
    // A small table: 64 flows (128 entries); the unanswered inbound flows have their own.
    let t = ProgTest::load_sized(64, &DpConfig::default())
        .unwrap_or_else(|e| panic!("load: {}", netfast::error::report(&e)));
    let mut t = provisioned(t);
    publish(&mut t, None, 8080, PROTO_TCP, WEB, 0);
    // A client's connection to the published port completes its handshake.
    let handshake = [
        (
            Hook::UplinkIngress,
            tcp_in(CLIENT, ext(8080), TcpFlags::SYN, 100, 0),
        ),
        (
            Hook::UplinkEgress,
            tcp_out(WEB, CLIENT, TcpFlags::SYN_ACK, 900, 101),
        ),
        (
            Hook::UplinkIngress,
            tcp_in(CLIENT, ext(8080), TcpFlags::ACK, 101, 901),
        ),
    ];
    for (hook, frame) in handshake {
        run(&mut t, hook, &frame);
    }
    assert_eq!(event(&t, Event::InboundAnswered), 1);
    // 2000 SYNs from forged sources: each opens a flow the container would answer, but
    // none completes.
    for i in 0..2000u32 {
        let forged = (
            Ipv4Addr::from(0xc000_0000u32 | (i << 4)),
            1024 + (i % 60_000) as u16,
        );
        run(
            &mut t,
            Hook::UplinkIngress,
            &tcp_in(forged, ext(8080), TcpFlags::SYN, i, 0),
        );
    }
    assert_eq!(event(&t, Event::InboundOpened), 2001);
    // The established connection still carries data both ways.
    let data = tcp_data(FROM_OUTSIDE, (CLIENT, ext(8080)), 101, 901, b"GET");
    let want = tcp_data(FROM_OUTSIDE, (CLIENT, WEB), 101, 901, b"GET");
    let what = "the client's data after the flood";
    passes(&mut t, Hook::UplinkIngress, what, &data, &want);
    let answer = tcp_out(WEB, CLIENT, TcpFlags::ACK, 901, 104);
    let want = tcp_out(ext(8080), CLIENT, TcpFlags::ACK, 901, 104);
    passes(&mut t, Hook::UplinkEgress, "the answer", &answer, &want);
    assert_eq!(state_of(&t, CLIENT), Some("ESTABLISHED"));
}

#[test]
fn a_masqueraded_flow_that_lost_its_reply_entry_is_repaired_by_the_next_answer() {
    let mut t = loaded();
    let next = |to| tcp_data(FROM_OUTSIDE, (SERVER, to), 5101, 1001, b"x");
    let step = (Hook::UplinkIngress, "the server's next segment");
    repaired_after_losing(
        &mut t,
        (SERVER, ext(40000)),
        step,
        &next(ext(40000)),
        &next(C1),
    );
}

/// C1 and C2 each hold a UDP mapping (EXT:40000 and EXT:40001) towards SERVER, and the fast
/// path knows both (their veths are the test device here).
fn two_mappings() -> ProgTest {
    let mut t = loaded();
    for c in [C1, C2] {
        fast_path_knows(&mut t, c.0, 1500);
    }
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"a"));
    let c2 = (C2.0, 40001);
    let r = run(&mut t, Hook::UplinkEgress, &udp_out(c2, SERVER, b"b"));
    assert_eq!(
        decode(&r.frame).expect("frame").l4,
        decode(&udp_out(ext(40001), SERVER, b"b"))
            .expect("frame")
            .l4
    );
    t
}

/// The frame `run` put out, as delivered by redirect: its addresses and ports.
fn delivered(r: &Run) -> (Endpoint, Endpoint) {
    assert_eq!(r.verdict, verdict::REDIRECT, "not forwarded by redirect");
    let (proto, src, dst) = endpoints_of(&r.frame);
    assert_eq!(proto, PROTO_UDP, "not UDP");
    (src, dst)
}

/// What a container's datagram from `from` to `to` is delivered as, through the bridge.
fn hairpinned(t: &mut ProgTest, from: Endpoint, to: Endpoint, payload: &[u8]) -> Run {
    run(
        t,
        Hook::BridgeIngress,
        &packet::udp(FROM_CONTAINER, from, to, payload),
    )
}

#[test]
fn a_container_reaches_its_own_external_mapping_hairpinned() {
    let mut t = two_mappings();
    // RFC 4787 REQ-9 (what turnutils_natdiscovery -H checks): C1 sends to its own external
    // endpoint and gets it back, from that endpoint.
    let r = hairpinned(&mut t, C1, ext(40000), b"me");
    assert_eq!(delivered(&r), (ext(40000), C1));
}

#[test]
fn hairpinned_mappings_filter_across_networks_as_an_outside_peer_would() {
    let mut t = two_mappings();
    let c2 = (C2.0, 40001);
    // Within a network: straight through (RFC 5780's hairpinning test sends from a second
    // port of one host).
    let r = hairpinned(&mut t, c2, ext(40000), b"hi");
    assert_eq!(delivered(&r), (ext(40001), C1));
    // A container of another network (D1, with a mapping of its own) to C1's external
    // endpoint: C1 has not contacted D1's (address-and-port-dependent filtering), so it
    // waits, as an outside peer's packet would.
    set_network(&mut t, OTHER_NET, 2, NET_F_MASQUERADE, DEV, DEV);
    let d1: Endpoint = (Ipv4Addr::new(172, 19, 0, 2), 41000);
    fast_path_knows(&mut t, d1.0, 1500);
    run(&mut t, Hook::UplinkEgress, &udp_out(d1, SERVER, b"d"));
    let r = hairpinned(&mut t, d1, ext(40000), b"hi");
    let why = "a hairpin from a network C1 has not contacted";
    assert_dropped(&t, &r, DropReason::NatFiltered, 1, why);
    // C1 to D1's external endpoint: D1 had sent to C1's, so it is let in, from EXT:40000.
    let r = hairpinned(&mut t, C1, ext(41000), b"yo");
    assert_eq!(delivered(&r), (ext(40000), d1));
    // Now both ways.
    let r = hairpinned(&mut t, d1, ext(40000), b"hi");
    assert_eq!(delivered(&r), (ext(41000), C1));
}

/// With the fast path off, a hairpin is still forwarded at the bridge (its source, once
/// translated, is the host's own address, which the stack would drop as a martian), and so
/// is an ICMP error about a hairpin flow: translated and forwarded there, where other errors
/// are left to the stack as sent. (Before, such an error was translated and then left to
/// the stack: dropped.)
#[test]
fn with_the_fast_path_off_a_hairpins_icmp_error_is_forwarded_at_the_bridge() {
    require_root();
    let mut t = provisioned(packets::load(&DpConfig {
        fast_path: 0,
        ..DpConfig::default()
    }));
    for c in [C1, C2] {
        fast_path_knows(&mut t, c.0, 1500);
    }
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"a"));
    let c2 = (C2.0, 40001);
    run(&mut t, Hook::UplinkEgress, &udp_out(c2, SERVER, b"b"));
    // C2 to C1's external endpoint, hairpinned: C1 gets it from C2's.
    let r = hairpinned(&mut t, c2, ext(40000), b"hi");
    assert_eq!(delivered(&r), (ext(40001), C1));
    // C1 has no socket there after all: its port unreachable quotes what it got.
    let error = packet::icmp_error(
        FROM_CONTAINER,
        C1.0,
        EXT,
        3,
        3,
        [0; 4],
        packet::ip_packet(&r.frame),
    );
    let r = run(&mut t, Hook::BridgeIngress, &error);
    assert_eq!(r.verdict, verdict::REDIRECT, "forwarded at the bridge");
    let outer = decode(&r.frame).expect("valid");
    assert_eq!((outer.src, outer.dst), (EXT, C2.0));
    let q = packet::decode_quoted(&r.frame).expect("valid quote");
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport, q.l4_checksum_ok),
        (C2.0, 40001, EXT, 40000, Some(true)),
        "the quote is what C2 sent"
    );
}

#[test]
fn a_packet_too_big_for_the_containers_mtu_is_left_to_the_host() {
    let mut t = loaded();
    fast_path_knows(&mut t, C1.0, 1400);
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"q"));
    // A 1400-byte answer fits and goes straight in.
    let fits = udp_in(SERVER, ext(40000), &[1; 1372]);
    assert_eq!(
        run(&mut t, Hook::UplinkIngress, &fits).verdict,
        verdict::REDIRECT
    );
    // A 1500-byte one would be dropped by the container's veth without a word: the host's
    // stack gets it (translated), to fragment it or say "fragmentation needed".
    let big = udp_in(SERVER, ext(40000), &[2; 1472]);
    let want = udp_in(SERVER, C1, &[2; 1472]);
    passes(
        &mut t,
        Hook::UplinkIngress,
        "too big for the veth",
        &big,
        &want,
    );
    assert_eq!(event(&t, Event::FastPathFallback), 1);
}
