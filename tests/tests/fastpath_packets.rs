//! The fast path, packet by packet: run in a namespace with a real bridge, uplink and
//! neighbour, so that the programs' FIB lookups have routes to find.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        DropReason, Hook,
        config::{DpConfig, Endpoint, NET_F_MASQUERADE},
        conntrack::{CtEntry, CtKey, FWD_F_UPLINK, FwdCache},
        stats::Event,
        verdict,
    },
    maps,
    netns::NetnsGuard,
    prog_test::{
        ProgTest, Run,
        fixture::assert_run,
        packet::{self, FROM_CONTAINER, Macs, TO_CONTAINER, TcpFlags},
    },
};
use netfast_tests::{
    TestNetns,
    packets::{
        C1, EXT, SERVER, dropped, event, ifindex_of, load, mac_of, masquerade, run_on, set_network,
    },
    require_root,
};

const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const CT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A host: br0 172.18.0.1/24, up0 198.51.100.1/24 with the default route via 198.51.100.2,
/// whose MAC is known (a permanent neighbour entry).
struct Host {
    ns: TestNetns,
    bridge: u32,
    uplink: u32,
    uplink_mac: [u8; 6],
    bridge_mac: [u8; 6],
}

fn host() -> Host {
    let ns = TestNetns::new("f");
    for cmd in [
        "ip link add br0 type bridge",
        "ip addr add 172.18.0.1/24 dev br0",
        "ip link set br0 up",
        "ip link add up0 type veth peer name upp",
        "ip addr add 198.51.100.1/24 dev up0",
        "ip link set up0 up",
        "ip link set upp up",
        "ip route add default via 198.51.100.2",
        "ip neigh add 198.51.100.2 lladdr 02:00:00:00:01:02 dev up0 nud permanent",
        "sysctl -qw net.ipv4.ip_forward=1",
    ] {
        ns.exec_ok(&cmd.split(' ').collect::<Vec<_>>());
    }
    Host {
        bridge: ifindex_of(&ns, "br0"),
        uplink: ifindex_of(&ns, "up0"),
        uplink_mac: mac_of(&ns, "up0"),
        bridge_mac: mac_of(&ns, "br0"),
        ns,
    }
}

fn loaded(h: &Host, fast_path: u8) -> ProgTest {
    let mut t = load(&DpConfig {
        fast_path,
        ..DpConfig::default()
    });
    masquerade(&mut t, h.uplink, h.bridge);
    maps::set_uplink(t.ebpf_mut(), h.uplink).expect("uplink");
    t
}

/// A host, the programs loaded on it with the fast path on, and the calling thread in the
/// host's namespace (left before the namespace goes).
fn on_host() -> (Host, ProgTest, NetnsGuard) {
    in_host(1)
}

/// [`on_host`] with the fast path `fast_path` (1 on, 0 off).
fn in_host(fast_path: u8) -> (Host, ProgTest, NetnsGuard) {
    let h = host();
    let t = loaded(&h, fast_path);
    let guard = NetnsGuard::enter(h.ns.name()).expect("enter");
    (h, t, guard)
}

/// Runs the bridge's ingress program on `frame`, as the frame arrives on the bridge.
fn from_bridge(t: &mut ProgTest, h: &Host, frame: &[u8]) -> Run {
    run_on(t, Hook::BridgeIngress, frame, h.bridge)
}

fn syn_from_container() -> Vec<u8> {
    packet::tcp(FROM_CONTAINER, C1, SERVER, TcpFlags::SYN, 1, 0, b"")
}

/// A segment from the container to SERVER with `flags`, sequence and acknowledgement 2.
fn from_container(flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    packet::tcp(FROM_CONTAINER, C1, SERVER, flags, 2, 2, payload)
}

#[test]
fn a_new_flow_from_a_container_is_translated_and_sent_out_of_the_uplink() {
    require_root();
    let (h, mut t, _in) = on_host();
    let r = from_bridge(&mut t, &h, &syn_from_container());
    // Translated, routed (TTL - 1), framed for the gateway: the FIB's MACs.
    let translated = packet::tcp(
        FROM_CONTAINER,
        (EXT, C1.1),
        SERVER,
        TcpFlags::SYN,
        1,
        0,
        b"",
    );
    let want = packet::with_macs(
        &packet::routed(&translated),
        Macs {
            src: h.uplink_mac,
            dst: GW_MAC,
        },
    );
    assert_run("the SYN leaves by redirect", &r, verdict::REDIRECT, &want);
    assert_eq!(event(&t, Event::FastPath), 1);
    // The flow exists, and the next packet takes the same path.
    let r = from_bridge(&mut t, &h, &from_container(TcpFlags::ACK, b""));
    assert_eq!(r.verdict, verdict::REDIRECT);
    assert_eq!(
        maps::flows(t.ebpf(), maps::monotonic_now())
            .expect("flows")
            .len(),
        1
    );
}

#[test]
fn replies_go_straight_into_the_container() {
    require_root();
    let (h, mut t, _in) = on_host();
    from_bridge(&mut t, &h, &syn_from_container());
    // The container is one of netfast's: its veth and MAC are in the endpoint map.
    let ep = Endpoint {
        ifindex: h.bridge,
        mac: CT_MAC,
        gw_mac: h.bridge_mac,
        mtu: 1500,
        _pad: 0,
    };
    maps::set_endpoint(t.ebpf_mut(), C1.0, &ep).expect("endpoint");
    let outside = Macs {
        src: GW_MAC,
        dst: h.uplink_mac,
    };
    let synack = packet::tcp(outside, SERVER, (EXT, C1.1), TcpFlags::SYN_ACK, 9, 2, b"");
    let r = run_on(&mut t, Hook::UplinkIngress, &synack, h.uplink);
    let translated = packet::tcp(outside, SERVER, C1, TcpFlags::SYN_ACK, 9, 2, b"");
    let want = packet::with_macs(
        &packet::routed(&translated),
        Macs {
            src: h.bridge_mac,
            dst: CT_MAC,
        },
    );
    // bpf_redirect_peer refuses a device without a peer (the bridge here), so the verdict is
    // a drop; what matters is the frame: translated, routed, addressed to the container.
    assert_eq!(
        packet::decode(&r.frame).expect("valid"),
        packet::decode(&want).expect("valid")
    );
}

#[test]
fn what_the_fast_path_cannot_forward_goes_to_the_stack_untouched() {
    require_root();
    let h = host();
    let _in = NetnsGuard::enter(h.ns.name()).expect("enter");
    // A TTL about to expire: the host's stack must answer with time exceeded.
    let mut t = loaded(&h, 1);
    let mut ttl1 = syn_from_container();
    ttl1[14 + 8] = 1;
    ttl1[14 + 10] = 0;
    ttl1[14 + 11] = 0;
    let ttl1 = {
        let mut f = ttl1.clone();
        f[14 + 8] = 2;
        let mut r = packet::routed(&f);
        r[14 + 8] = 1;
        // `routed` recomputed the checksum for TTL 1: that is the frame we send.
        r
    };
    let r = from_bridge(&mut t, &h, &ttl1);
    assert_run("TTL 1 is the stack's", &r, verdict::NEXT, &ttl1);
    assert_eq!(event(&t, Event::FastPathFallback), 1);
    // With the fast path off, nothing is forwarded here: the uplink translates after routing.
    let mut t = loaded(&h, 0);
    let syn = syn_from_container();
    let r = from_bridge(&mut t, &h, &syn);
    assert_run("--fast-path off", &r, verdict::NEXT, &syn);
}

/// Found in review: with the fast path off, a container's ICMP error about a translated
/// flow was translated at the bridge (its source became the host's external address) and
/// then handed to the host's stack, whose input path drops a source of its own coming in on
/// the bridge as a martian: the error never left. With the fast path off, the error goes to
/// the stack as the container sent it, and the uplink's egress translates it after routing,
/// like the flow's own packets.
#[test]
fn with_the_fast_path_off_a_containers_icmp_error_is_translated_after_routing() {
    require_root();
    let (h, mut t, _in) = in_host(0);
    // C1 → SERVER over UDP, as the stack carries it: untouched at the bridge, translated at
    // the uplink's egress.
    let query = packet::udp(FROM_CONTAINER, C1, SERVER, b"q");
    let r = from_bridge(&mut t, &h, &query);
    assert_run("the query at the bridge", &r, verdict::NEXT, &query);
    let r = run_on(&mut t, Hook::UplinkEgress, &query, h.uplink);
    assert_eq!(r.verdict, verdict::NEXT);
    // SERVER answers; C1's socket is gone: its port unreachable quotes the answer as it
    // arrived (SERVER → C1).
    let answer = packet::udp(TO_CONTAINER, SERVER, C1, b"a");
    let unreachable = packet::icmp_error(
        FROM_CONTAINER,
        C1.0,
        SERVER.0,
        3,
        3,
        [0; 4],
        packet::ip_packet(&answer),
    );
    let r = from_bridge(&mut t, &h, &unreachable);
    assert_run(
        "with the fast path off, the error goes to the stack as sent",
        &r,
        verdict::NEXT,
        &unreachable,
    );
    // Routed by the stack, it leaves by the uplink, translated there.
    let r = run_on(&mut t, Hook::UplinkEgress, &unreachable, h.uplink);
    assert_eq!(r.verdict, verdict::NEXT);
    let outer = packet::decode(&r.frame).expect("valid");
    assert_eq!(
        (outer.src, outer.dst),
        (EXT, SERVER.0),
        "the container's address must not leak"
    );
    let q = packet::decode_quoted(&r.frame).expect("valid quote");
    assert_eq!(
        (q.src, q.dst, q.dport, q.l4_checksum_ok),
        (SERVER.0, EXT, C1.1, Some(true))
    );
}

/// Found in review: an ICMP error from a container was translated by whatever flow it
/// quoted, of any network: a container of network B quoting a flow of network A's container
/// left as A's external address, about A's flow — with the fast path on at the bridge, with
/// it off at the uplink's egress. A flow's entry serves at a bridge only that bridge's
/// network, errors included: one about another network's flow is dropped.
#[test]
fn a_containers_icmp_error_about_another_networks_flow_is_dropped() {
    require_root();
    let h = host();
    h.ns.exec_ok(&["ip", "link", "add", "br1", "type", "bridge"]);
    h.ns.exec_ok(&["ip", "link", "set", "br1", "up"]);
    let br1 = ifindex_of(&h.ns, "br1");
    let _in = NetnsGuard::enter(h.ns.name()).expect("enter");
    for fast_path in [1, 0] {
        let mut t = loaded(&h, fast_path);
        let other = (Ipv4Addr::new(172, 19, 0, 0), 24);
        set_network(&mut t, other, 2, NET_F_MASQUERADE, h.uplink, br1);
        // C1 (network 1, on br0) → SERVER over UDP, and SERVER's answer.
        let query = packet::udp(FROM_CONTAINER, C1, SERVER, b"q");
        from_bridge(&mut t, &h, &query);
        run_on(&mut t, Hook::UplinkEgress, &query, h.uplink);
        let answer = packet::udp(TO_CONTAINER, SERVER, C1, b"a");
        // A container of network 2, on br1, sends an error quoting that answer to SERVER.
        let error = packet::icmp_error(
            FROM_CONTAINER,
            Ipv4Addr::new(172, 19, 0, 2),
            SERVER.0,
            3,
            3,
            [0; 4],
            packet::ip_packet(&answer),
        );
        let r = run_on(&mut t, Hook::BridgeIngress, &error, br1);
        assert_eq!(
            (r.verdict, dropped(&t, DropReason::InterNetwork)),
            (verdict::SHOT, 1),
            "fast path {fast_path}: an error about another network's flow must be dropped \
             at the bridge:\n{}",
            packet::describe(&r.frame)
        );
    }
}

/// The entry of the flow whose original source is `src`.
fn entry_from(t: &ProgTest, src: packet::Endpoint) -> (CtKey, CtEntry) {
    maps::conntrack_entries(t.ebpf())
        .expect("entries")
        .into_iter()
        .find(|(k, _)| k.src_addr == maps::raw_addr(src.0) && k.src_port == src.1.to_be())
        .expect("the flow's entry")
}

#[test]
fn a_flow_caches_its_route_and_a_bigger_packet_is_checked_against_the_mtu() {
    require_root();
    let (h, mut t, _in) = on_host();
    let r = from_bridge(&mut t, &h, &syn_from_container());
    assert_eq!(r.verdict, verdict::REDIRECT);
    let ack = from_container(TcpFlags::ACK, b"");
    let r = from_bridge(&mut t, &h, &ack);
    assert_eq!(r.verdict, verdict::REDIRECT);
    let (key, e) = entry_from(&t, C1);
    assert_eq!(e.fwd.kind, 2, "a resolved neighbour is cached");
    assert_eq!(e.fwd.ifindex, h.uplink);
    assert_eq!(e.fwd.dmac, GW_MAC);
    assert_eq!(e.fwd.max_len, 40, "the ACK's IPv4 length");
    assert_eq!(e.fwd.flags, FWD_F_UPLINK, "out of an uplink of ours");

    // The neighbour changes: the cache still answers for now...
    h.ns.exec_ok(&[
        "ip",
        "neigh",
        "replace",
        "198.51.100.2",
        "lladdr",
        "02:00:00:00:01:99",
        "dev",
        "up0",
        "nud",
        "permanent",
    ]);
    let r = from_bridge(&mut t, &h, &ack);
    assert_eq!(packet::decode(&r.frame).expect("valid").dst_mac, GW_MAC);
    // ...until it expires, and the next packet looks the route up again.
    let stale = CtEntry {
        fwd: FwdCache {
            expires: maps::monotonic_now() - 5,
            ..e.fwd
        },
        ..entry_from(&t, C1).1
    };
    maps::insert_conntrack(t.ebpf_mut(), &key, &stale).expect("age the cache");
    let r = from_bridge(&mut t, &h, &ack);
    assert_eq!(r.verdict, verdict::REDIRECT);
    assert_eq!(
        packet::decode(&r.frame).expect("valid").dst_mac,
        [0x02, 0, 0, 0, 0x01, 0x99]
    );

    // A packet bigger than any the cached route carried is checked against the MTU: over it,
    // the stack takes the packet (and sends "fragmentation needed"), untranslated.
    h.ns.exec_ok(&["ip", "link", "set", "up0", "mtu", "1400"]);
    let big = from_container(TcpFlags::ACK, &[0u8; 1400]);
    let before = event(&t, Event::FastPathFallback);
    let r = from_bridge(&mut t, &h, &big);
    assert_run("over the route's MTU", &r, verdict::NEXT, &big);
    assert_eq!(event(&t, Event::FastPathFallback), before + 1);
    // One that fits is forwarded, and the cache learns it.
    let fits = from_container(TcpFlags::ACK, &[0u8; 1300]);
    let r = from_bridge(&mut t, &h, &fits);
    assert_eq!(r.verdict, verdict::REDIRECT);
    assert_eq!(entry_from(&t, C1).1.fwd.max_len, 1340);
}
