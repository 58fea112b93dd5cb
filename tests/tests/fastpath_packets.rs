//! The fast path, packet by packet: run in a namespace with a real bridge, uplink and
//! neighbour, so that the programs' FIB lookups have routes to find.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        Hook,
        config::{DpConfig, Endpoint, NET_F_MASQUERADE, NetInfo},
        stats::Event,
        verdict,
    },
    maps,
    netns::NetnsGuard,
    prog_test::{
        ProgTest,
        fixture::assert_run,
        packet::{self, FROM_CONTAINER, Macs, TcpFlags},
    },
};
use netfast_tests::{TestNetns, require_root};

const EXT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const CT: (Ipv4Addr, u16) = (Ipv4Addr::new(172, 18, 0, 2), 40000);
const CT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SERVER: (Ipv4Addr, u16) = (Ipv4Addr::new(203, 0, 113, 10), 80);

/// A host: br0 172.18.0.1/24, up0 198.51.100.1/24 with the default route via 198.51.100.2,
/// whose MAC is known (a permanent neighbour entry).
struct Host {
    ns: TestNetns,
    bridge: u32,
    uplink: u32,
    uplink_mac: [u8; 6],
    bridge_mac: [u8; 6],
}

fn mac(ns: &TestNetns, dev: &str) -> [u8; 6] {
    let text = ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    bytes.try_into().expect("6 bytes")
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
    let index = |dev: &str| {
        ns.exec_ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
            .trim()
            .parse()
            .expect("ifindex")
    };
    Host {
        bridge: index("br0"),
        uplink: index("up0"),
        uplink_mac: mac(&ns, "up0"),
        bridge_mac: mac(&ns, "br0"),
        ns,
    }
}

fn loaded(h: &Host, fast_path: u8) -> ProgTest {
    let mut t = ProgTest::load_with(&DpConfig {
        fast_path,
        ..DpConfig::default()
    })
    .unwrap_or_else(|e| panic!("load: {}", netfast::error::report(&e)));
    let info = NetInfo {
        id: 1,
        flags: NET_F_MASQUERADE,
        uplink_ifindex: h.uplink,
        bridge_ifindex: h.bridge,
        ext_addr: maps::raw_addr(EXT),
    };
    maps::set_network(t.ebpf_mut(), Ipv4Addr::new(172, 18, 0, 0), 24, &info).expect("network");
    maps::set_uplink(t.ebpf_mut(), h.uplink).expect("uplink");
    t
}

fn syn_from_container() -> Vec<u8> {
    packet::tcp(FROM_CONTAINER, CT, SERVER, TcpFlags::SYN, 1, 0, b"")
}

#[test]
fn a_new_flow_from_a_container_is_translated_and_sent_out_of_the_uplink() {
    require_root();
    let h = host();
    let mut t = loaded(&h, 1);
    let _in = NetnsGuard::enter(h.ns.name()).expect("enter");
    let r = t
        .run_on(Hook::BridgeIngress, &syn_from_container(), h.bridge)
        .expect("run");
    // Translated, routed (TTL - 1), framed for the gateway: the FIB's MACs.
    let translated = packet::tcp(
        FROM_CONTAINER,
        (EXT, CT.1),
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
    let stats = t.stats().expect("stats");
    assert_eq!(stats.event(Event::FastPath).packets, 1);
    // The flow exists, and the next packet takes the same path.
    let ack = packet::tcp(FROM_CONTAINER, CT, SERVER, TcpFlags::ACK, 2, 2, b"");
    let r = t.run_on(Hook::BridgeIngress, &ack, h.bridge).expect("run");
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
    let h = host();
    let mut t = loaded(&h, 1);
    let _in = NetnsGuard::enter(h.ns.name()).expect("enter");
    t.run_on(Hook::BridgeIngress, &syn_from_container(), h.bridge)
        .expect("run");
    // The container is one of netfast's: its veth and MAC are in the endpoint map.
    let ep = Endpoint {
        ifindex: h.bridge,
        mac: CT_MAC,
        gw_mac: h.bridge_mac,
        mtu: 1500,
        _pad: 0,
    };
    maps::set_endpoint(t.ebpf_mut(), CT.0, &ep).expect("endpoint");
    let outside = Macs {
        src: GW_MAC,
        dst: h.uplink_mac,
    };
    let synack = packet::tcp(outside, SERVER, (EXT, CT.1), TcpFlags::SYN_ACK, 9, 2, b"");
    let r = t
        .run_on(Hook::UplinkIngress, &synack, h.uplink)
        .expect("run");
    let translated = packet::tcp(outside, SERVER, CT, TcpFlags::SYN_ACK, 9, 2, b"");
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
    let r = t.run_on(Hook::BridgeIngress, &ttl1, h.bridge).expect("run");
    assert_run("TTL 1 is the stack's", &r, verdict::NEXT, &ttl1);
    assert_eq!(
        t.stats()
            .expect("stats")
            .event(Event::FastPathFallback)
            .packets,
        1
    );
    // With the fast path off, nothing is forwarded here: the uplink translates after routing.
    let mut t = loaded(&h, 0);
    let syn = syn_from_container();
    let r = t.run_on(Hook::BridgeIngress, &syn, h.bridge).expect("run");
    assert_run("--fast-path off", &r, verdict::NEXT, &syn);
}

/// The entry of the flow whose original source is `src`.
fn entry_from(
    t: &ProgTest,
    src: (Ipv4Addr, u16),
) -> (
    netfast::common::conntrack::CtKey,
    netfast::common::conntrack::CtEntry,
) {
    maps::conntrack_entries(t.ebpf())
        .expect("entries")
        .into_iter()
        .find(|(k, _)| k.src_addr == maps::raw_addr(src.0) && k.src_port == src.1.to_be())
        .expect("the flow's entry")
}

#[test]
fn a_flow_caches_its_route_and_a_bigger_packet_is_checked_against_the_mtu() {
    require_root();
    let h = host();
    let mut t = loaded(&h, 1);
    let _in = NetnsGuard::enter(h.ns.name()).expect("enter");
    let r = t
        .run_on(Hook::BridgeIngress, &syn_from_container(), h.bridge)
        .expect("run");
    assert_eq!(r.verdict, verdict::REDIRECT);
    let ack = packet::tcp(FROM_CONTAINER, CT, SERVER, TcpFlags::ACK, 2, 2, b"");
    let r = t.run_on(Hook::BridgeIngress, &ack, h.bridge).expect("run");
    assert_eq!(r.verdict, verdict::REDIRECT);
    let (key, e) = entry_from(&t, CT);
    assert_eq!(e.fwd.kind, 2, "a resolved neighbour is cached");
    assert_eq!(e.fwd.ifindex, h.uplink);
    assert_eq!(e.fwd.dmac, GW_MAC);
    assert_eq!(e.fwd.max_len, 40, "the ACK's IPv4 length");
    assert_eq!(
        e.fwd.flags,
        netfast::common::conntrack::FWD_F_UPLINK,
        "out of an uplink of ours"
    );

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
    let r = t.run_on(Hook::BridgeIngress, &ack, h.bridge).expect("run");
    assert_eq!(packet::decode(&r.frame).expect("valid").dst_mac, GW_MAC);
    // ...until it expires, and the next packet looks the route up again.
    let stale = netfast::common::conntrack::CtEntry {
        fwd: netfast::common::conntrack::FwdCache {
            expires: maps::monotonic_now() - 5,
            ..e.fwd
        },
        ..entry_from(&t, CT).1
    };
    maps::insert_conntrack(t.ebpf_mut(), &key, &stale).expect("age the cache");
    let r = t.run_on(Hook::BridgeIngress, &ack, h.bridge).expect("run");
    assert_eq!(r.verdict, verdict::REDIRECT);
    assert_eq!(
        packet::decode(&r.frame).expect("valid").dst_mac,
        [0x02, 0, 0, 0, 0x01, 0x99]
    );

    // A packet bigger than any the cached route carried is checked against the MTU: over it,
    // the stack takes the packet (and sends "fragmentation needed"), untranslated.
    h.ns.exec_ok(&["ip", "link", "set", "up0", "mtu", "1400"]);
    let big = packet::tcp(
        FROM_CONTAINER,
        CT,
        SERVER,
        TcpFlags::ACK,
        2,
        2,
        &[0u8; 1400],
    );
    let before = t
        .stats()
        .expect("stats")
        .event(Event::FastPathFallback)
        .packets;
    let r = t.run_on(Hook::BridgeIngress, &big, h.bridge).expect("run");
    assert_run("over the route's MTU", &r, verdict::NEXT, &big);
    assert_eq!(
        t.stats()
            .expect("stats")
            .event(Event::FastPathFallback)
            .packets,
        before + 1
    );
    // One that fits is forwarded, and the cache learns it.
    let fits = packet::tcp(
        FROM_CONTAINER,
        CT,
        SERVER,
        TcpFlags::ACK,
        2,
        2,
        &[0u8; 1300],
    );
    let r = t.run_on(Hook::BridgeIngress, &fits, h.bridge).expect("run");
    assert_eq!(r.verdict, verdict::REDIRECT);
    assert_eq!(entry_from(&t, CT).1.fwd.max_len, 1340);
}
