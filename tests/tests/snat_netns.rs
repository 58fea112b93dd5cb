//! Masquerade end to end, with real clients in namespaces: the containers reach the outside
//! with the uplink's address, and nothing in the host's netfilter nat table does it.
//!
//! The host runs the articles' hand-made bridge (br0 and containers built with `ip`); netfast
//! adopts it with `network create --adopt`, as a user would, and every check goes through
//! the `netfast` binary and real clients. Between commands only the pins keep the dataplane
//! running.

use std::time::Duration;

use netfast::{Dataplane, common::Hook, dataplane::Settings, host::Host, netns::NetnsGuard};
use netfast_tests::{
    Background, Netfast, Topology, TopologyBuilder,
    clients::{assert_saw_only_the_uplink, curl, outside_web_server, wait_listening},
    cmd::wait_until,
    in_netns,
    netfast_cli::{FlowEvent, FlowRow},
    require_root, run_ok,
    topology::{BRIDGE, FAR_ADDR, OUTSIDE_ADDR, SUBNET, UPLINK, UPLINK_ADDR, container_addr},
};

/// The topology `builder` makes, and netfast on its host (see [`masquerade`]); they drop in
/// that order's reverse, netfast first.
fn masqueraded(builder: TopologyBuilder, settings: &[&str]) -> (Topology, Netfast) {
    require_root();
    let topo = builder.build();
    let nf = masquerade(&topo, settings);
    (topo, nf)
}

/// netfast on the test host: `config` with `settings`, then a masqueraded network that
/// adopts the hand-made bridge br0. Dropping it runs `netfast down`.
fn masquerade(topo: &Topology, settings: &[&str]) -> Netfast {
    let nf = Netfast::new(&topo.host);
    let mut config = vec!["config"];
    config.extend_from_slice(settings);
    nf.ok(&config);
    nf.ok(&[
        "network", "create", "test", "--subnet", SUBNET, "--bridge", BRIDGE, "--uplink", UPLINK,
        "--adopt",
    ]);
    nf
}

/// The first flow of `proto` in `flows`; panics if there is none.
fn flow_of<'a>(flows: &'a [FlowRow], proto: &str) -> &'a FlowRow {
    flows
        .iter()
        .find(|f| f.protocol == proto)
        .unwrap_or_else(|| panic!("no {proto} flow in {flows:?}"))
}

/// The container's `proto` flow from its port `port`, which a socket of the host holds: it
/// left from another external port (reusing `port` would collide at the server).
fn assert_port_not_taken(nf: &Netfast, proto: &str, port: u16) {
    let flows = nf.flows(&[]);
    let flow = flow_of(&flows, proto);
    assert_eq!(flow.original.sport, port, "{flow:?}");
    assert_ne!(
        flow.reply.dport, port,
        "masquerade took the {proto} port the host uses: {flow:?}"
    );
}

/// A conntrack table small enough to create quickly.
const SMALL: &[&str] = &["--ct-max", "4096"];

/// The host namespace's netfilter nat table must not exist: netfast translates without it.
fn assert_no_kernel_nat(topo: &Topology) {
    let tables = topo.host.exec_ok(&["nft", "list", "tables"]);
    assert!(
        !tables.contains("nat"),
        "an nftables nat table exists in the host: {tables}"
    );
    let legacy = topo.host.exec(&["cat", "/proc/net/ip_tables_names"]);
    let legacy = String::from_utf8_lossy(&legacy.stdout);
    assert!(
        !legacy.contains("nat"),
        "an iptables nat table exists in the host: {legacy}"
    );
}

#[test]
fn curl_and_ping_leave_with_the_uplink_address_and_are_tracked() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(2), SMALL);
    let server = outside_web_server(topo.outside.name());
    let mut watch = _dp.spawn(&["conntrack", "watch", "--json"]);
    watch.wait_for_text("watching for events", Duration::from_secs(10));

    let url = format!("http://{OUTSIDE_ADDR}:8000/");
    assert_eq!(curl(topo.containers[0].name(), &url, &[]), "200");
    let ping = netfast_tests::pings(topo.containers[1].name(), &OUTSIDE_ADDR.to_string());
    assert!(ping.contains("3 received"), "{ping}");

    let flows = _dp.flows(&[]);
    let tcp = flow_of(&flows, "tcp");
    assert_eq!(tcp.original.src, container_addr(0));
    assert_eq!(tcp.reply.dst, UPLINK_ADDR);
    assert_eq!(tcp.reply.src, OUTSIDE_ADDR);
    assert!(tcp.reply.packets.expect("reply packets") > 0, "{tcp:?}");
    let icmp = flow_of(&flows, "icmp");
    assert_eq!(icmp.original.src, container_addr(1));
    assert_eq!(icmp.original.packets, Some(3));
    assert_eq!(icmp.reply.packets, Some(3));
    let text = _dp.ok(&["conntrack", "list"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("tcp") && l.contains("src=172.18.0.2")),
        "{text}"
    );

    let stats = _dp.stats();
    let net = &stats.networks[0];
    assert_eq!(net.subnet, "172.18.0.0/24");
    assert!(net.tx_packets >= 5 && net.rx_packets >= 5, "{net:?}");

    assert_saw_only_the_uplink(server);

    // The events were printed as the flow went; wait for them rather than for a while.
    let (secs10, event) = (Duration::from_secs(10), FlowEvent::parse);
    watch.wait_for_lines("show a NEW tcp flow", secs10, 1, |l| {
        event(l).is_some_and(|e| e.event == "NEW" && e.flow.protocol == "tcp")
    });
    watch.wait_for_lines("show its update", secs10, 1, |l| {
        event(l)
            .is_some_and(|e| e.event == "UPDATE" && e.flow.state.as_deref() == Some("ESTABLISHED"))
    });
    watch.stop();
    assert_no_kernel_nat(&topo);
}

#[test]
fn flows_expire_and_watch_reports_their_destruction() {
    let (topo, _dp) = masqueraded(
        Topology::builder().containers(1),
        &["--ct-max", "4096", "--timeout-icmp", "1"],
    );
    let mut watch = _dp.spawn(&["conntrack", "watch"]);
    watch.wait_for_text("watching for events", Duration::from_secs(10));
    topo.containers[0].exec_ok(&["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()]);
    assert!(
        wait_until(Duration::from_secs(6), || _dp
            .ok(&["conntrack", "list"])
            .trim()
            .is_empty()),
        "the ICMP flow did not expire after its 1 s timeout"
    );
    // watch rescans each second for flows that expired.
    watch.wait_for(
        "report the ICMP flow's birth and death",
        Duration::from_secs(10),
        |out, _| out.contains("[NEW] icmp") && out.contains("[DESTROY] icmp"),
    );
    watch.stop();
    _dp.ok(&["conntrack", "flush"]);
}

#[test]
fn iperf3_tcp_and_udp_through_masquerade() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1), SMALL);
    let outside = OUTSIDE_ADDR.to_string();
    for (what, extra) in [("tcp", vec![]), ("udp", vec!["-u", "-b", "200M"])] {
        let _server = Background::spawn(&in_netns(
            topo.outside.name(),
            &["iperf3", "-s", "-1", "-B", &outside],
        ));
        wait_listening(topo.outside.name(), "tcp", 5201, "iperf3 -s");
        let mut argv = vec!["iperf3", "-c", outside.as_str(), "-t", "2", "--json"];
        argv.extend(extra.iter().copied());
        let out = topo.containers[0].exec_ok(&argv);
        let v: serde_json::Value = serde_json::from_str(&out).expect("iperf3 json");
        let bytes = if what == "tcp" {
            v["end"]["sum_received"]["bytes"].as_u64()
        } else {
            v["end"]["sum"]["bytes"].as_u64()
        };
        assert!(
            bytes.unwrap_or(0) > 1_000_000,
            "{what}: too little data went through: {out}"
        );
        if what == "udp" {
            let lost = v["end"]["sum"]["lost_percent"].as_f64().unwrap_or(100.0);
            assert!(lost < 50.0, "udp lost {lost}%");
        }
    }
    assert_no_kernel_nat(&topo);
}

#[test]
fn a_4000_byte_udp_datagram_crosses_the_nat_both_ways() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1), SMALL);
    fragmented_echo(&topo);
}

/// Fragments take the fast path like whole packets: under the FORWARD DROP Docker leaves
/// behind, a datagram in fragments still crosses both ways.
#[test]
fn a_fragmented_datagram_crosses_under_a_forward_drop_policy() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1), SMALL);
    topo.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    fragmented_echo(&topo);
}

/// Container 0 sends a 4096-byte datagram (three fragments) to an echo server outside and
/// gets it back whole; the server saw the uplink's address.
fn fragmented_echo(topo: &Topology) {
    let echo = Background::spawn(&in_netns(
        topo.outside.name(),
        &[
            "python3",
            "-c",
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',7007))\n\
             d,a=s.recvfrom(65535)\nprint(len(d),a[0],flush=True)\ns.sendto(d,a)",
        ],
    ));
    wait_listening(topo.outside.name(), "udp", 7007, "the echo server");
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(5)\n\
         s.sendto(bytes(range(256))*16,('{OUTSIDE_ADDR}',7007))\nd,a=s.recvfrom(65535)\n\
         assert d==bytes(range(256))*16, 'payload changed'\nprint(len(d))"
    );
    let got = topo.containers[0].exec_ok(&["python3", "-c", &script]);
    assert_eq!(got.trim(), "4096");
    let seen = echo.stop();
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert_eq!(
        seen.trim(),
        format!("4096 {UPLINK_ADDR}"),
        "the server saw the datagram from {seen}"
    );
}

#[test]
fn traceroute_and_path_mtu_discovery_work_from_a_container() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1).far_server(), SMALL);
    traceroute_and_path_mtu(&topo);
}

/// Under the FORWARD DROP that Docker leaves behind, the ICMP errors that traceroute and path
/// MTU discovery live on still reach the container: the fast path forwards them, translated,
/// as it forwards their flows (the kernel's FORWARD chain would drop them).
#[test]
fn traceroute_and_path_mtu_discovery_work_under_a_forward_drop_policy() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1).far_server(), SMALL);
    topo.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    traceroute_and_path_mtu(&topo);
}

/// traceroute from container 0 to the far server names every hop, and a bulk upload to it
/// completes with the path MTU learnt.
fn traceroute_and_path_mtu(topo: &Topology) {
    let far = FAR_ADDR.to_string();
    let trace =
        topo.containers[0].exec_ok(&["traceroute", "-n", "-q", "1", "-w", "2", "-m", "5", &far]);
    let hops: Vec<&str> = trace
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        hops,
        vec!["172.18.0.1", &OUTSIDE_ADDR.to_string(), &far],
        "traceroute:\n{trace}"
    );

    // The far link's MTU is 1400: a bulk upload only completes if "fragmentation needed"
    // comes back through the NAT to the container.
    let f = topo.far.as_ref().expect("far server");
    let _sink = Background::spawn(&in_netns(
        f.name(),
        &["socat", "-u", "TCP-LISTEN:9000,reuseaddr", "OPEN:/dev/null"],
    ));
    wait_listening(f.name(), "tcp", 9000, "the sink");
    let upload = format!("head -c 3000000 /dev/zero | timeout 15 socat -u - TCP:{far}:9000");
    topo.containers[0].exec_ok(&["sh", "-c", &upload]);
    let route = topo.containers[0].exec_ok(&["ip", "route", "get", &far]);
    assert!(
        route.contains("mtu 1400"),
        "the container did not learn the path MTU:\n{route}"
    );
}

#[test]
fn traffic_that_needs_no_nat_is_untouched_and_untracked() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(2), SMALL);
    let c0 = &topo.containers[0];
    c0.exec_ok(&["ping", "-c", "1", "-W", "2", "172.18.0.1"]);
    c0.exec_ok(&["ping", "-c", "1", "-W", "2", "172.18.0.3"]);
    topo.host
        .exec_ok(&["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()]);
    topo.host
        .exec_ok(&["ping", "-c", "1", "-W", "2", "172.18.0.2"]);
    let flows = _dp.ok(&["conntrack", "list"]);
    assert!(
        flows.trim().is_empty(),
        "nothing here needed NAT, yet:\n{flows}"
    );
}

#[test]
fn the_pinned_dataplane_is_reused_and_checked() {
    let (topo, nf) = masqueraded(Topology::builder().containers(1), SMALL);
    // A second network on the same uplink reuses the pinned dataplane: every program is
    // attached once, wherever it is needed.
    nf.create_network("other", "10.99.0.0/24", &[]);
    {
        let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
        for (dev, hook) in [
            (UPLINK, Hook::UplinkIngress),
            (UPLINK, Hook::UplinkEgress),
            (BRIDGE, Hook::BridgeIngress),
            (BRIDGE, Hook::BridgeEgress),
            ("nf-other", Hook::BridgeIngress),
        ] {
            let progs = Dataplane::tcx_programs(dev, hook).expect("query");
            assert_eq!(
                progs,
                vec![hook.name().to_owned()],
                "{dev} {}: attached once",
                hook.name()
            );
        }
        // Reopening with another table size is refused rather than silently reused.
        let host = Host::current().expect("host");
        let err = match Dataplane::open(
            &host,
            &Settings {
                ct_max_flows: 1024,
                ..Settings::default()
            },
        ) {
            Ok(_) => panic!("a different ct-max must not reuse the pinned maps"),
            Err(e) => netfast::error::report(&e),
        };
        assert!(err.contains("cannot be resized"), "{err}");
    }
    let ping =
        topo.containers[0].exec_ok(&["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()]);
    assert!(ping.contains("1 received"));
    // A pinned map with another layout (another netfast version's, say) is refused by name.
    let pin = {
        let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
        let dir = Host::current().expect("host").pin_dir().expect("bpffs");
        dir.join("NETFAST_FRAGS").display().to_string()
    };
    std::fs::remove_file(&pin).expect("unpin");
    run_ok(&[
        "bpftool", "map", "create", &pin, "type", "hash", "key", "4", "value", "4", "entries",
        "16", "name", "impostor",
    ]);
    let err = nf.fails(&["conntrack", "list"]);
    assert!(
        err.contains("NETFAST_FRAGS") && err.contains("another layout"),
        "{err}"
    );
}

#[test]
fn masquerade_never_takes_a_port_the_host_uses_to_the_same_server() {
    let (topo, _dp) = masqueraded(Topology::builder().containers(1), SMALL);
    let _server = outside_web_server(topo.outside.name());
    // The host's own connection from uplink:40000 to the server, held open.
    let connect = format!("sleep 30 | socat - TCP:{OUTSIDE_ADDR}:8000,sourceport=40000");
    let _host_conn = Background::spawn(&in_netns(topo.host.name(), &["sh", "-c", &connect]));
    assert!(
        wait_until(Duration::from_secs(5), || topo
            .host
            .exec_ok(&["ss", "-tn", "state", "established"])
            .contains(":40000")),
        "the host's connection did not come up"
    );
    // A container connecting from its own port 40000 must get another external port:
    // reusing 40000 would collide with the host's connection at the server.
    let url = format!("http://{OUTSIDE_ADDR}:8000/");
    let code = curl(topo.containers[0].name(), &url, &["--local-port", "40000"]);
    assert_eq!(code, "200");
    assert_port_not_taken(&_dp, "tcp", 40000);

    // UDP: a host socket bound to the port keeps it from masquerade as well.
    let _host_udp = Background::spawn(&in_netns(
        topo.host.name(),
        &["socat", "-u", "UDP4-RECV:40001", "OPEN:/dev/null"],
    ));
    wait_listening(topo.host.name(), "udp", 40001, "the host's UDP socket");
    let send = format!("echo x | socat -u - UDP4-SENDTO:{OUTSIDE_ADDR}:9999,sourceport=40001");
    topo.containers[0].exec_ok(&["sh", "-c", &send]);
    assert_port_not_taken(&_dp, "udp", 40001);
}

#[test]
fn flush_forgets_every_flow_and_traffic_carries_on() {
    let (topo, nf) = masqueraded(Topology::builder().containers(1), SMALL);
    let outside = OUTSIDE_ADDR.to_string();
    topo.containers[0].exec_ok(&["ping", "-c", "1", "-W", "2", &outside]);
    assert!(nf.ok(&["conntrack", "list"]).contains("icmp"));
    assert_eq!(nf.ok(&["conntrack", "flush"]).trim(), "flushed 1 flows");
    assert!(
        nf.ok(&["conntrack", "list"]).trim().is_empty(),
        "flows left after flush"
    );
    let json = nf.flows(&[]);
    assert!(json.is_empty(), "flows left after flush: {json:?}");
    // New flows get new mappings.
    topo.containers[0].exec_ok(&["ping", "-c", "1", "-W", "2", &outside]);
    assert!(nf.ok(&["conntrack", "list"]).contains("icmp"));
}

/// RFC 4787's behaviour as a STUN client nobody here wrote sees it: coturn's
/// turnutils_natdiscovery (RFC 5780 tests) in a container, against coturn's turnserver on two
/// outside addresses. Endpoint-independent mapping; address-and-port-dependent filtering by
/// default, endpoint-independent when configured; and hairpinning (REQ-9): a second socket's
/// request to the first one's external endpoint comes back to it.
#[test]
fn turnutils_natdiscovery_sees_an_rfc_4787_nat_that_hairpins() {
    let (topo, nf) = masqueraded(Topology::builder().containers(1), SMALL);
    let outside = topo.outside.name();
    topo.outside
        .exec_ok(&["ip", "addr", "add", "198.51.100.3/24", "dev", "eth0"]);
    let _stun = Background::spawn(&in_netns(
        outside,
        &[
            "turnserver",
            "--stun-only",
            "-L",
            "198.51.100.2",
            "-L",
            "198.51.100.3",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--log-file",
            "stdout",
            "-n",
        ],
    ));
    netfast_tests::clients::wait_listening(outside, "udp", 3478, "turnserver");
    let discover = |test: &str| {
        run_ok(&[
            "ip",
            "netns",
            "exec",
            topo.containers[0].name(),
            "timeout",
            "60",
            "turnutils_natdiscovery",
            test,
            "198.51.100.2",
        ])
    };
    let hairpin = discover("-H");
    assert!(
        hairpin.contains("Received a request (maybe a successful hairpinning)"),
        "no hairpinning:\n{hairpin}"
    );
    let mapping = discover("-m");
    assert!(
        mapping.contains("NAT with Endpoint Independent Mapping!"),
        "{mapping}"
    );
    let filtering = discover("-f");
    assert!(
        filtering.contains("NAT with Address and Port Dependent Filtering!"),
        "{filtering}"
    );
    nf.ok(&["config", "--filtering", "endpoint-independent"]);
    let filtering = discover("-f");
    assert!(
        filtering.contains("NAT with Endpoint Independent Filtering!"),
        "{filtering}"
    );
}
