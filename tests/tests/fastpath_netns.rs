//! The fast path end to end: with the host's FORWARD policy at DROP — the trap the articles
//! describe, where Docker has to add its own FORWARD rules — netfast's translated flows still
//! pass, because the fast path forwards them from their first packet without the kernel's
//! forwarding path. With `--fast-path off` the same traffic meets the policy and dies.

use netfast_tests::{
    Background, TestNetns,
    clients::{curl, outside_web_server},
    require_root,
    topology::OUTSIDE_ADDR,
    web::{UPLINK_URL, Web, web},
};

/// Packets the host's iptables FORWARD policy has dropped.
fn forward_policy_drops(host: &TestNetns) -> u64 {
    let out = host.exec_ok(&["iptables", "-L", "FORWARD", "-v", "-n", "-x"]);
    let first = out.lines().next().unwrap_or_default();
    // Chain FORWARD (policy DROP 12 packets, 720 bytes)
    first
        .split_once("policy DROP ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no DROP policy counter in `iptables -L FORWARD`:\n{out}"))
}

/// An outside web server on OUTSIDE_ADDR:8000.
fn outside_server(w: &Web) -> Background {
    outside_web_server(w.topo.outside.name())
}

/// Container 1 fetches the outside server's page (masquerade out) and the outside fetches
/// the published port (DNAT in): both get HTTP `code` ("000": no connection); a failure
/// names `when`.
fn assert_both_ways(w: &Web, code: &str, when: &str) {
    let outside_url = format!("http://{OUTSIDE_ADDR}:8000/");
    assert_eq!(curl(&w.c1, &outside_url, &[]), code, "masquerade, {when}");
    assert_eq!(
        curl(w.topo.outside.name(), UPLINK_URL, &[]),
        code,
        "published port, {when}"
    );
}

fn ping(ns: &str) -> String {
    netfast_tests::pings(ns, &OUTSIDE_ADDR.to_string())
}

#[test]
fn translated_flows_pass_a_forward_drop_policy_only_on_the_fast_path() {
    require_root();
    let w = web(&[]);
    let _outside = outside_server(&w);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    w.topo.host.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);

    // Fast path on (the default): masquerade out, published port in, ICMP echo.
    assert_both_ways(&w, "200", "fast path on");
    let echo = ping(&w.c1);
    assert!(echo.contains("3 received"), "ping, fast path on:\n{echo}");
    assert!(
        w.nf.event("fast_path") >= 20,
        "the fast path forwarded too few packets: {:?}",
        w.nf.stats().events
    );
    // Out of the uplink, the egress program recognised what the fast path had forwarded.
    assert!(
        w.nf.event("fast_path_egress") >= 5,
        "the uplink's egress looked at forwarded packets again: {:?}",
        w.nf.stats().events
    );
    assert_eq!(
        forward_policy_drops(&w.topo.host),
        0,
        "the kernel's FORWARD chain saw netfast's flows"
    );

    // Fast path off: the same traffic goes through the kernel's forwarding path and the
    // policy drops it, as it would drop Docker's without Docker's FORWARD rules.
    w.nf.ok(&["config", "--fast-path", "off"]);
    let before = w.nf.event("fast_path");
    assert_both_ways(&w, "000", "fast path off");
    assert!(
        forward_policy_drops(&w.topo.host) > 0,
        "the FORWARD policy should have dropped the kernel-forwarded packets"
    );
    assert_eq!(
        w.nf.event("fast_path"),
        before,
        "fast path off still forwarded"
    );

    // And on again.
    w.nf.ok(&["config", "--fast-path", "on"]);
    assert_both_ways(&w, "200", "on again");
}

#[test]
fn fast_path_off_forwards_through_the_kernel_when_it_accepts() {
    require_root();
    let w = web(&["--fast-path", "off"]);
    let _outside = outside_server(&w);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_both_ways(&w, "200", "fast path off, the kernel accepting");
    let echo = ping(&w.c1);
    assert!(echo.contains("3 received"), "{echo}");
    assert_eq!(w.nf.event("fast_path"), 0, "fast path off still forwarded");
    let config = w.nf.ok(&["config"]);
    assert!(config.contains("fast_path = \"off\""), "{config}");
}

/// The fast path delivers into a container with the gateway's MAC as the frame's source. A
/// bridge without a MAC of its own takes its first port's when that port joins: the
/// endpoint of the first container must carry the bridge's MAC as it is after the join.
#[test]
fn an_endpoint_carries_the_bridge_mac_after_its_port_joined() {
    require_root();
    let w = web(&[]);
    let bridge = &w.nf.networks()[0].bridge;
    let link: serde_json::Value =
        serde_json::from_str(&w.topo.host.exec_ok(&["ip", "-j", "link", "show", bridge]))
            .expect("json");
    let bridge_mac: Vec<u8> = link[0]["address"]
        .as_str()
        .expect("an address")
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect();
    let pin = format!(
        "/sys/fs/bpf/netfast/{}/{}",
        w.nf.key(),
        netfast::common::maps::ENDPOINTS
    );
    let dump: serde_json::Value = serde_json::from_str(&netfast_tests::run_ok(&[
        "bpftool", "-j", "map", "dump", "pinned", &pin,
    ]))
    .expect("json");
    let entries = dump.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "two containers, two endpoints: {dump}");
    for e in entries {
        // Endpoint { ifindex: u32, mac: [u8; 6], gw_mac: [u8; 6], mtu, _pad }
        let value: Vec<u8> = e["value"]
            .as_array()
            .expect("raw bytes")
            .iter()
            .map(|b| {
                u8::from_str_radix(b.as_str().expect("hex").trim_start_matches("0x"), 16)
                    .expect("hex")
            })
            .collect();
        assert_eq!(
            value[10..16],
            bridge_mac[..],
            "endpoint {e}: its gateway MAC is not the bridge's ({})",
            link[0]["address"]
        );
    }
}
