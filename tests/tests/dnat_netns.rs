//! Published ports end to end, with real clients and servers in namespaces: outside clients,
//! hairpin, the host's own clients, allow-lists, and the isolation Docker gives.

use std::{thread, time::Duration};

use netfast_tests::{
    Background, TestNetns,
    clients::{curl, listening},
    cmd::wait_until,
    require_root, run,
    topology::{OUTSIDE_ADDR, UPLINK, UPLINK_ADDR},
    web::{UPLINK_URL, web},
};

#[test]
fn an_outside_client_reaches_a_published_container() {
    require_root();
    let w = web(&[]);
    let out = w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert!(out.contains("published 8080/tcp to"), "{out}");
    assert_eq!(curl(w.topo.outside.name(), UPLINK_URL, &[]), "200");
    let ls: serde_json::Value =
        serde_json::from_str(&w.nf.ok(&["publish", "ls", "--json"])).expect("json");
    assert_eq!(ls[0]["spec"], format!("8080:{}:80/tcp", w.c0));
    let flows = w.nf.ok(&["conntrack", "list"]);
    assert!(
        flows.contains(&format!("src={OUTSIDE_ADDR} dst={UPLINK_ADDR} sport="))
            && flows.contains("dport=8080"),
        "{flows}"
    );
    // A port nobody published leads nowhere (the host has nothing there either).
    assert_eq!(
        curl(w.topo.outside.name(), "http://198.51.100.1:8081/", &[]),
        "000"
    );
    // Unpublished, the port closes, and flows through it end.
    w.nf.ok(&["unpublish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(curl(w.topo.outside.name(), UPLINK_URL, &[]), "000");
}

#[test]
fn udp_echo_through_a_published_range() {
    require_root();
    let w = web(&[]);
    let _echo: Vec<Background> = [5000, 5001]
        .iter()
        .map(|p| {
            Background::spawn(&[
                "ip",
                "netns",
                "exec",
                &w.c1,
                "socat",
                &format!("UDP4-RECVFROM:{p},fork"),
                "EXEC:cat",
            ])
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), || listening(&w.c1, "udp", 5001)),
        "socat did not start"
    );
    w.nf.ok(&[
        "publish",
        "web",
        &format!("0.0.0.0:5000-5001:{}:5000-5001/udp", w.c1),
    ]);
    for port in [5000, 5001] {
        let send = format!("echo ping-{port} | socat -t 2 - UDP4:{UPLINK_ADDR}:{port}");
        let got = w.topo.outside.exec_ok(&["sh", "-c", &send]);
        assert_eq!(
            got.trim(),
            format!("ping-{port}"),
            "udp echo through {port}"
        );
    }
}

#[test]
fn hairpin_works_from_another_container_and_from_the_server_itself() {
    require_root();
    let w = web(&[]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(
        curl(&w.c1, UPLINK_URL, &[]),
        "200",
        "from another container"
    );
    assert_eq!(
        curl(&w.c0, UPLINK_URL, &[]),
        "200",
        "from the serving container itself"
    );
}

#[test]
fn the_host_reaches_its_published_ports_and_other_namespaces_are_untouched() {
    require_root();
    let w = web(&[]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    let host = w.topo.host.name();
    assert_eq!(
        curl(host, UPLINK_URL, &[]),
        "200",
        "the host to its own uplink address"
    );
    assert_eq!(
        curl(host, "http://127.0.0.1:8080/", &[]),
        "200",
        "the host to 127.0.0.1"
    );
    let peer = w.topo.host.exec_ok(&[
        "python3", "-c",
        "import socket; c=socket.create_connection(('127.0.0.1',8080),timeout=2); print(c.getpeername())",
    ]);
    assert_eq!(
        peer.trim(),
        "('127.0.0.1', 8080)",
        "getpeername shows the published address"
    );
    // Another namespace's 127.0.0.1:8080 is its own: the socket programs see every process of
    // the machine but act only in the host namespace they serve.
    let elsewhere = TestNetns::new("x");
    let _own = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        elsewhere.name(),
        "python3",
        "-m",
        "http.server",
        "8080",
        "--bind",
        "127.0.0.1",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || listening(
            elsewhere.name(),
            "tcp",
            8080
        )),
        "server"
    );
    let out = elsewhere.exec(&["curl", "-s", "--max-time", "3", "http://127.0.0.1:8080/"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Directory listing"),
        "another namespace reached something else"
    );
    let flows = w.nf.ok(&["conntrack", "list"]);
    assert!(!flows.contains("127.0.0.1"), "{flows}");
}

#[test]
fn an_allow_list_refuses_other_clients_and_counts_them() {
    require_root();
    let w = web(&[]);
    // A second client address outside, in 192.0.2.0/24, routed by the host.
    w.topo
        .outside
        .exec_ok(&["ip", "addr", "add", "192.0.2.10/24", "dev", "eth0"]);
    w.topo.host.exec_ok(&[
        "ip",
        "route",
        "add",
        "192.0.2.0/24",
        "via",
        &OUTSIDE_ADDR.to_string(),
    ]);
    w.nf.ok(&[
        "publish",
        "web",
        &format!("8080:{}:80", w.c0),
        "--allow",
        "192.0.2.0/24",
    ]);
    assert_eq!(
        curl(
            w.topo.outside.name(),
            UPLINK_URL,
            &["--interface", "192.0.2.10"]
        ),
        "200",
        "an allowed client"
    );
    assert_eq!(
        curl(w.topo.outside.name(), UPLINK_URL, &[]),
        "000",
        "198.51.100.2 is not allowed"
    );
    assert!(w.nf.drops("not_allowed") > 0);
}

#[test]
fn direct_access_to_a_container_is_dropped() {
    require_root();
    let w = web(&[]);
    // An outside host that routes the container subnet through the host.
    w.topo.outside.exec_ok(&[
        "ip",
        "route",
        "add",
        "172.18.0.0/24",
        "via",
        &UPLINK_ADDR.to_string(),
    ]);
    assert_eq!(
        curl(w.topo.outside.name(), "http://172.18.0.2:80/", &[]),
        "000"
    );
    assert!(w.nf.drops("direct_access") > 0);
}

#[test]
fn two_networks_cannot_reach_each_others_containers() {
    require_root();
    let w = web(&[]);
    w.nf.ok(&[
        "network",
        "create",
        "db",
        "--subnet",
        "172.19.0.0/24",
        "--uplink",
        UPLINK,
    ]);
    let d0 = format!("{}d0", w.topo.host.name());
    w.nf.ok(&["container", "create", &d0, "--network", "db"]);
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &d0,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "172.18.0.2",
    ]);
    assert!(!out.status.success(), "db reached web");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &w.c1,
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "172.19.0.2",
    ]);
    assert!(!out.status.success(), "web reached db");
    assert!(w.nf.drops("inter_network") >= 2);
    // Each still reaches the outside and its own gateway.
    netfast_tests::run_ok(&[
        "ip",
        "netns",
        "exec",
        &d0,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        &OUTSIDE_ADDR.to_string(),
    ]);
    netfast_tests::run_ok(&[
        "ip",
        "netns",
        "exec",
        &d0,
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "172.19.0.1",
    ]);
    w.nf.ok(&["container", "rm", &d0]);
}

#[test]
fn publishing_twice_is_refused_and_a_host_listener_is_named() {
    require_root();
    let w = web(&[]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    let err =
        w.nf.fails(&["publish", "web", &format!("8000-8100:{}", w.c1)]);
    assert!(err.contains("overlaps what is already published"), "{err}");
    let _listener = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        w.topo.host.name(),
        "socat",
        "TCP-LISTEN:9000,reuseaddr",
        "-",
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || listening(
            w.topo.host.name(),
            "tcp",
            9000
        )),
        "listener"
    );
    let out = w.nf.ok(&["publish", "web", &format!("9000:{}:80", w.c0)]);
    assert!(
        out.contains("warning: socat (") && out.contains("listens on host port 9000/tcp"),
        "{out}"
    );
    // Removing a container removes its publications.
    let out = w.nf.ok(&["container", "rm", &w.c0]);
    assert!(
        out.contains(&format!("unpublished 8080:{}:80/tcp", w.c0)),
        "{out}"
    );
    assert_eq!(w.nf.ok(&["publish", "ls", "--json"]).trim(), "[]");
    thread::sleep(Duration::from_millis(10));
}
