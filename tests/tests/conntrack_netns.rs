//! `netfast conntrack` filters end to end (issue #20), on each backend: flows of several
//! protocols, containers and networks; each filter lists exactly the flows it should, `count`
//! agrees with `list`, `delete` removes exactly the matching flows while a live connection
//! keeps working, `watch` with a filter shows only matching events, and bad filters change
//! nothing.

use std::{collections::BTreeSet, time::Duration};

use netfast_tests::{
    Background,
    clients::{curl, outside_web_server, talker_from, talks_on, wait_listening},
    in_netns,
    netfast_cli::FlowEvent,
    require_root, run_in,
    topology::OUTSIDE_ADDR,
    web::{UPLINK_URL, Web, web_on},
};

/// UDP echo on ports 9000-9003 of the outside address.
const UDP_ECHO: &str = "import select, socket
socks = []
for port in range(9000, 9004):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('198.51.100.2', port))
    socks.append(s)
print('ready', flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        d, a = s.recvfrom(100)
        s.sendto(d, a)
";

/// The flows `netfast conntrack list --json FILTERS…` shows, each as
/// `PROTO SRC>DST:DPORT` of its original direction.
fn listed(w: &Web, filters: &[&str]) -> BTreeSet<String> {
    w.nf.flows(filters)
        .iter()
        .map(|f| {
            let o = &f.original;
            format!("{} {}>{}:{}", f.protocol, o.src, o.dst, o.dport)
        })
        .collect()
}

/// `netfast conntrack count FILTERS…`, checked against `count --json`.
fn count(w: &Web, filters: &[&str]) -> usize {
    let mut args = vec!["conntrack", "count"];
    args.extend_from_slice(filters);
    let n: usize = w.nf.ok(&args).trim().parse().expect("a number");
    assert_eq!(w.nf.flow_count(filters), n, "count --json {filters:?}");
    n
}

fn set(flows: &[&str]) -> BTreeSet<String> {
    flows.iter().map(std::string::ToString::to_string).collect()
}

/// Asserts that `filters` list exactly `want` (from `all`, the flows of the scenario), and
/// that `count` says as many.
fn check(w: &Web, all: &BTreeSet<String>, filters: &[&str], want: &[&str]) {
    let want = set(want);
    assert!(want.is_subset(all), "{want:?} is not among {all:?}");
    // Flows outside the scenario (none are expected) do not make a filter fail: compare
    // within the scenario's flows.
    let got: BTreeSet<String> = listed(w, filters).intersection(all).cloned().collect();
    if got != want {
        // What every flow was then, with its state and how long it had left.
        let flows: Vec<String> =
            w.nf.flows(&[])
                .iter()
                .map(|f| {
                    let (o, r) = (&f.original, &f.reply);
                    format!(
                        "{} {:?} {}s {}:{}>{}:{} / {}:{}>{}:{}",
                        f.protocol,
                        f.state,
                        f.expires_in,
                        o.src,
                        o.sport,
                        o.dst,
                        o.dport,
                        r.src,
                        r.sport,
                        r.dst,
                        r.dport
                    )
                })
                .collect();
        panic!(
            "conntrack list {filters:?}: got {got:?}, want {want:?}; every flow:\n{}",
            flows.join("\n")
        );
    }
    assert_eq!(
        count(w, filters),
        listed(w, filters).len(),
        "count {filters:?}"
    );
}

fn filters_list_count_delete_and_watch_exactly_the_matching_flows(backend: &str) {
    require_root();
    let w = web_on(backend, &[]);
    let outside = w.topo.outside.name().to_owned();
    let _web = outside_web_server(&outside);
    let mut echo = Background::spawn(&in_netns(&outside, &["python3", "-c", UDP_ECHO]));
    echo.wait_for_text("ready", Duration::from_secs(10));
    let _tcp_echo = Background::spawn(&in_netns(
        &outside,
        &["socat", "TCP4-LISTEN:9100,fork,reuseaddr", "EXEC:cat"],
    ));
    wait_listening(&outside, "tcp", 9100, "socat");
    w.nf.create_network("db", "172.19.0.0/24", &["--backend", backend]);
    let d0 = format!("{}d0", w.topo.host.name());
    w.nf.ok(&["container", "create", &d0, "--network", "db"]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);

    // The scenario: network web's c1 (172.18.0.3) fetches a page, sends a datagram and holds
    // a live connection; an outside client fetches c0's (172.18.0.2) published page; network
    // db's d0 (172.19.0.2) pings (on and on, so that the flow outlives the kernel's 30 s
    // ICMP timeout on nftables) and sends a datagram.
    let in_ns = |ns: &str, cmd: &str| run_in(ns, &["sh", "-c", cmd]);
    let udp = |ns: &str, port: u16| {
        let got = in_ns(
            ns,
            &format!("echo hi | socat -T 2 - UDP4:{OUTSIDE_ADDR}:{port}"),
        );
        assert_eq!(got.trim(), "hi", "udp echo from {ns} to port {port}");
    };
    let page = format!("http://{OUTSIDE_ADDR}:8000/");
    assert_eq!(curl(&w.c1, &page, &[]), "200");
    udp(&w.c1, 9000);
    // A live connection from port 40100 to the outside's echo on 9100.
    let mut live = talker_from(&w.c1, 40100, &OUTSIDE_ADDR.to_string(), 9100);
    assert_eq!(curl(&outside, UPLINK_URL, &[]), "200");
    udp(&d0, 9001);
    let mut ping = Background::spawn(&in_netns(
        &d0,
        &["ping", "-i", "0.5", &OUTSIDE_ADDR.to_string()],
    ));
    ping.wait_for_text("icmp_seq=1 ", Duration::from_secs(10));

    let web_page = "tcp 172.18.0.3>198.51.100.2:8000";
    let web_udp = "udp 172.18.0.3>198.51.100.2:9000";
    let web_live = "tcp 172.18.0.3>198.51.100.2:9100";
    let published = "tcp 198.51.100.2>198.51.100.1:8080";
    let db_udp = "udp 172.19.0.2>198.51.100.2:9001";
    let db_ping = "icmp 172.19.0.2>198.51.100.2:0";
    let all = set(&[web_page, web_udp, web_live, published, db_udp, db_ping]);
    let everything = listed(&w, &[]);
    assert!(
        all.is_subset(&everything),
        "{all:?} not all in {everything:?}"
    );
    assert_eq!(count(&w, &[]), everything.len());

    let (c0, c1) = (w.c0.as_str(), w.c1.as_str());
    let cases: &[(&[&str], &[&str])] = &[
        (&["-p", "icmp"], &[db_ping]),
        (&["-p", "udp"], &[web_udp, db_udp]),
        (&["-p", "TCP"], &[web_page, web_live, published]),
        (&["--network", "db"], &[db_ping, db_udp]),
        (
            &["--network", "web"],
            &[web_page, web_udp, web_live, published],
        ),
        (&["--container", c1], &[web_page, web_udp, web_live]),
        (&["--container", c0], &[published]),
        (&["--container", &d0, "-p", "udp"], &[db_udp]),
        (
            &["-s", "172.16.0.0/12"],
            &[web_page, web_udp, web_live, db_udp, db_ping],
        ),
        (&["--orig-src", "172.19.0.2", "-p", "udp"], &[db_udp]),
        (&["-d", "198.51.100.1"], &[published]),
        (&["-r", "172.18.0.2"], &[published]),
        (
            &["-q", "198.51.100.1"],
            &[web_page, web_udp, web_live, db_udp, db_ping],
        ),
        (&["--dport", "9000"], &[web_udp]),
        (&["--orig-port-dst", "9001"], &[db_udp]),
        (&["--sport", "40100"], &[web_live]),
        (&["--reply-port-src", "9100"], &[web_live]),
        (&["--reply-port-dst", "40100"], &[web_live]),
        (&["--state", "established"], &[web_live]),
        (
            &["--state", "TIME_WAIT", "--network", "web"],
            &[web_page, published],
        ),
        (&["--published", "8080"], &[published]),
        (&["--published", "198.51.100.1:8080/tcp"], &[published]),
        (&["--published", "8080/udp"], &[]),
        (&["-p", "udp", "--dport", "53"], &[]),
    ];
    for (filters, want) in cases {
        check(&w, &all, filters, want);
    }

    // Bad filters are refused, naming the problem, and change nothing.
    let before = listed(&w, &[]);
    for (args, says) in [
        (
            &["conntrack", "delete", "--network", "nope"][..],
            "no network named `nope`",
        ),
        (
            &["conntrack", "delete", "--container", "nope"],
            "no container named `nope`",
        ),
        (&["conntrack", "delete"], "at least one filter"),
        (
            &["conntrack", "delete", "-s", "172.18.0.300"],
            "not an IPv4 address",
        ),
        (&["conntrack", "delete", "--dport", "70000"], "out of range"),
        (
            &["conntrack", "delete", "--state", "OPEN"],
            "not a TCP state",
        ),
        (&["conntrack", "flush", "-p", "sctp"], "tcp, udp or icmp"),
        (
            &["conntrack", "delete", "-p", "udp", "--state", "ESTABLISHED"],
            "--state implies -p tcp",
        ),
    ] {
        let err = w.nf.fails(args);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(
        listed(&w, &[]),
        before,
        "a refused filter changed the flows"
    );

    // A filter that matches nothing says so and succeeds.
    let out =
        w.nf.ok(&["conntrack", "delete", "-p", "udp", "--dport", "53"]);
    assert!(out.contains("deleted 0 flows: none matches"), "{out}");

    // delete removes exactly the matching flows (and, in the eBPF dataplane, the mapping
    // the datagram's flow had alone), …
    let out =
        w.nf.ok(&["conntrack", "delete", "-p", "udp", "--network", "web"]);
    assert!(out.contains("deleted 1 flows"), "{out}");
    if backend == "ebpf" {
        assert!(out.contains("and 1 NAT mappings"), "{out}");
    }
    let mut left = all.clone();
    left.remove(web_udp);
    check(
        &w,
        &all,
        &[],
        &left.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // … and `flush` with filters is `delete`.
    // (On the fallbacks the kernel also tracks the bridge's own IGMP reports, which are of
    // the network too and go with it.)
    drop(ping);
    let out = w.nf.ok(&["conntrack", "flush", "--network", "db"]);
    let n: usize = out
        .trim()
        .strip_prefix("deleted ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(n >= 2, "{out}");
    left.remove(db_udp);
    left.remove(db_ping);
    check(
        &w,
        &all,
        &[],
        &left.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // The live connection, whose flow matched none of them, goes on.
    talks_on(&mut live, 3, "go on echoing after the deletes");

    // watch with a filter: only UDP flows of network web. The events that must not show are
    // made first; once the matching one is shown, they would have been too.
    let mut watch = w.nf.spawn(&[
        "conntrack",
        "watch",
        "--json",
        "-p",
        "udp",
        "--network",
        "web",
    ]);
    watch.wait_for_text("watching for events", Duration::from_secs(10));
    in_ns(c1, &format!("ping -c 1 -W 2 {OUTSIDE_ADDR}"));
    udp(&d0, 9003);
    udp(c1, 9002);
    watch.wait_for(
        "show the NEW flow of c1's datagram to port 9002",
        Duration::from_secs(10),
        |out, _| out.contains("\"NEW\"") && out.contains("\"dport\":9002"),
    );
    let out = watch.stop();
    let out = String::from_utf8_lossy(&out.stdout);
    for line in out.lines() {
        let e = FlowEvent::parse(line).unwrap_or_else(|| panic!("not a flow event: {line}"));
        assert!(
            e.flow.protocol == "udp" && e.flow.original.src.octets()[..3] == [172, 18, 0],
            "watch -p udp --network web showed {line}"
        );
    }
    drop(live);
}

/// The kernel's conntrack table of namespace `ns`, every entry (netfast's or not).
fn kernel_table(ns: &str) -> String {
    run_in(ns, &["cat", "/proc/net/nf_conntrack"])
}

/// Issue #19: `container rm`, `network rm` and `down` end the flows they own, and only those:
/// a container's (from it and to it), not its neighbours' nor another network's, and never
/// the host's own flows, which the kernel tracks beside the fallbacks' networks.
fn flows_end_with_what_owns_them_and_only_those(backend: &str) {
    require_root();
    let w = web_on(backend, &[]);
    let outside = w.topo.outside.name().to_owned();
    let host = w.topo.host.name().to_owned();
    let mut echo = Background::spawn(&in_netns(&outside, &["python3", "-c", UDP_ECHO]));
    echo.wait_for_text("ready", Duration::from_secs(10));
    w.nf.create_network("db", "172.19.0.0/24", &["--backend", backend]);
    let d0 = format!("{host}d0");
    w.nf.ok(&["container", "create", &d0, "--network", "db"]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    let udp = |ns: &str, port: u16| {
        let got = run_in(
            ns,
            &[
                "sh",
                "-c",
                &format!("echo hi | socat -T 2 - UDP4:{OUTSIDE_ADDR}:{port}"),
            ],
        );
        assert_eq!(got.trim(), "hi", "udp echo from {ns} to port {port}");
    };
    udp(&w.c1, 9000);
    udp(&d0, 9001);
    assert_eq!(curl(&outside, UPLINK_URL, &[]), "200");
    // The host's own connection, idle: were its entry deleted, nothing would bring it back.
    let _tcp_echo = Background::spawn(&in_netns(
        &outside,
        &["socat", "TCP4-LISTEN:9100,reuseaddr", "EXEC:cat"],
    ));
    wait_listening(&outside, "tcp", 9100, "socat");
    let mut own = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        &host,
        "python3",
        "-c",
        "import socket, time\n\
         s = socket.create_connection(('198.51.100.2', 9100))\n\
         print('connected', flush=True)\n\
         time.sleep(600)",
    ]);
    own.wait_for_text("connected", Duration::from_secs(10));
    let (c1_udp, d0_udp) = (
        "udp 172.18.0.3>198.51.100.2:9000",
        "udp 172.19.0.2>198.51.100.2:9001",
    );
    let published = "tcp 198.51.100.2>198.51.100.1:8080";
    let all = set(&[c1_udp, d0_udp, published]);
    check(&w, &all, &[], &[c1_udp, d0_udp, published]);
    let host_flow = "dport=9100";
    if backend != "ebpf" {
        assert!(
            kernel_table(&host).contains(host_flow),
            "{}",
            kernel_table(&host)
        );
    }

    // c1's flow goes with it; c0's and db's stay.
    let out = w.nf.ok(&["container", "rm", &w.c1]);
    assert!(out.contains("flows of container"), "{out}");
    check(&w, &all, &[], &[d0_udp, published]);
    // c0's published flow goes with its publication.
    let out = w.nf.ok(&["container", "rm", &w.c0]);
    assert!(out.contains("ended 1 flows through it"), "{out}");
    check(&w, &all, &[], &[d0_udp]);
    w.nf.ok(&["container", "rm", &d0]);
    check(&w, &all, &[], &[]);
    w.nf.ok(&["network", "rm", "db"]);
    w.nf.ok(&["down"]);
    if backend != "ebpf" {
        // None of the networks' entries is left, and the host's own flow is untouched.
        let table = kernel_table(&host);
        assert!(
            !table.contains("src=172.18.0.") && !table.contains("src=172.19.0."),
            "{table}"
        );
        assert!(
            table.contains(host_flow),
            "down ended the host's own flow:\n{table}"
        );
    }
}

netfast_tests::on_backends!([ebpf, nftables, iptables] [
    filters_list_count_delete_and_watch_exactly_the_matching_flows,
    flows_end_with_what_owns_them_and_only_those,
]);
