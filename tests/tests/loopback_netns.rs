//! What hostile packets from the network must never reach (issue #13), end to end with real
//! packets in namespaces, on each backend: every test runs as `ebpf::…`, `nftables::…` and
//! `iptables::…`.

use std::time::Duration;

use netfast_tests::{
    Background,
    clients::wait_listening,
    in_netns, require_root,
    topology::{OUTSIDE_ADDR, UPLINK, UPLINK_ADDR},
    web::web_on,
};

/// The Python with scapy (Debian's python3-scapy), not whichever `python3` a PATH finds.
const PYTHON: &str = "/usr/bin/python3";

/// Sends, at layer 2 from eth0 to the MAC in argv[1], SYNs to 127.0.0.1:5432 (source port
/// 40001) and 127.0.0.2:5432 (40002), then a legitimate SYN to the uplink's published port
/// 5433 (40009), in that order on the same path.
const HOSTILE_SYNS: &str = "import sys
from scapy.all import Ether, IP, TCP, sendp
mac = sys.argv[1]
syn = lambda dst, sport, dport: Ether(dst=mac) / IP(src='198.51.100.2', dst=dst) / TCP(sport=sport, dport=dport, flags='S', seq=1000)
sendp([syn('127.0.0.1', 40001, 5432), syn('127.0.0.2', 40002, 5432), syn('198.51.100.1', 40009, 5433)], iface='eth0', verbose=False)
print('sent', flush=True)
";

/// Issue #13, item 1 (Docker's moby#45610): a port published on 127.0.0.1 is for the host's
/// own clients. SYNs for 127.0.0.0/8 sent at layer 2 to the uplink never arrive in the
/// container (they are dropped before any DNAT and counted as `loopback_from_network`);
/// a legitimate SYN sent after them on the same path does, and the host's own client of
/// 127.0.0.1 still gets through.
fn a_port_published_on_loopback_is_unreachable_from_the_network(backend: &str) {
    require_root();
    let probe = std::process::Command::new(PYTHON)
        .args(["-c", "import scapy.all"])
        .output()
        .expect("run /usr/bin/python3");
    assert!(
        probe.status.success(),
        "this test sends packets with scapy: apt-get install python3-scapy (cargo xtask setup \
         does): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let w = web_on(backend, &[]);
    let _db = Background::spawn(&in_netns(
        &w.c1,
        &["socat", "TCP4-LISTEN:5432,fork,reuseaddr", "SYSTEM:echo db"],
    ));
    wait_listening(&w.c1, "tcp", 5432, "socat");
    w.nf.ok(&["publish", "web", &format!("127.0.0.1:5432:{}:5432", w.c1)]);
    w.nf.ok(&[
        "publish",
        "web",
        &format!("{UPLINK_ADDR}:5433:{}:5432", w.c1),
    ]);
    let mut seen = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        &w.c1,
        "tcpdump",
        "-i",
        "eth0",
        "-nn",
        "-l",
        "tcp dst port 5432 and tcp[tcpflags] & tcp-syn != 0",
    ]);
    seen.wait_for_text("listening on", Duration::from_secs(10));
    let link: serde_json::Value =
        serde_json::from_str(&w.topo.host.exec_ok(&["ip", "-j", "link", "show", UPLINK]))
            .expect("ip -j link");
    let mac = link[0]["address"].as_str().expect("the uplink's MAC");
    let sent = w.topo.outside.exec_ok(&[PYTHON, "-c", HOSTILE_SYNS, mac]);
    assert_eq!(sent.trim(), "sent");
    // The control SYN went after the hostile ones, along the same path: once it is in, they
    // would have been too.
    let control = format!("{OUTSIDE_ADDR}.40009 >");
    seen.wait_for(
        "see the legitimate SYN to the uplink's published port",
        Duration::from_secs(10),
        |out, _| out.contains(&control),
    );
    let got = seen.stdout_so_far();
    for sport in [40001, 40002] {
        assert!(
            !got.contains(&format!("{OUTSIDE_ADDR}.{sport} >")),
            "a SYN from the network to 127.0.0.{} reached the container:\n{got}",
            sport - 40000
        );
    }
    assert!(
        w.nf.drops("loopback_from_network") >= 2,
        "the SYNs to 127.0.0.0/8 were not counted as loopback_from_network: {}",
        w.nf.ok(&["stats"])
    );
    // The publication on 127.0.0.1 is still the host's own clients'.
    let fetch = "timeout 5 socat -T 3 - TCP4:127.0.0.1:5432 </dev/null";
    assert_eq!(
        w.topo.host.exec_ok(&["sh", "-c", fetch]).trim(),
        "db",
        "the host's own client of 127.0.0.1:5432"
    );
}

netfast_tests::on_backends!([ebpf, nftables, iptables] [
    a_port_published_on_loopback_is_unreachable_from_the_network,
]);
