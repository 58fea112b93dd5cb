//! `netfast agent` end to end, with real parts in namespaces: Prometheus (promtool, and a
//! real server scraping the agent), addresses and uplinks changed under live networks, the
//! drop monitor, and an agent killed and started again under a live TCP flow — on each
//! backend where it applies (every test runs as `ebpf::…`, `nftables::…`, `iptables::…`;
//! the fallbacks follow addresses and interfaces by themselves, and have no drop ring).

use std::{net::Ipv4Addr, time::Duration};

use netfast_tests::{
    Background, Removed, TestNetns,
    agent::{Agent, METRICS_ADDR, sample},
    clients::{curl, echo_server, outside_web_server, talker, talks_on, wait_listening},
    cmd::wait_until,
    netfast_cli::{CheckStatus, DoctorCheck, DropEventRow, FlowEvent},
    ping, require_root, run, run_in,
    topology::{OUTSIDE_ADDR, UPLINK, UPLINK_ADDR},
    web::{UPLINK_URL, Web, web_on},
};

/// How long a change may take to show: the agent reacts to netlink events within a fraction
/// of a second, and makes a full pass every second in these tests anyway.
const SOON: Duration = Duration::from_secs(15);

/// `bin`, or a loud failure naming the Debian package that has it.
fn require_tool(bin: &str, package: &str) {
    assert!(
        run(&["sh", "-c", &format!("command -v {bin}")])
            .status
            .success(),
        "{bin} is not installed: apt-get install {package} (`cargo xtask setup` does)"
    );
}

fn metrics_pass_promtool_and_a_real_prometheus_scrapes_them(backend: &str) {
    require_root();
    require_tool("promtool", "prometheus");
    require_tool("prometheus", "prometheus");
    let w = web_on(backend, &[]);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(curl(w.topo.outside.name(), UPLINK_URL, &[]), "200");
    let agent = Agent::start(&w.topo.host);

    // One agent per host: a second is refused, naming the first.
    let second = w.nf.run(&["agent"]);
    assert!(!second.status.success(), "a second agent started");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("an agent already serves") && err.contains(&agent.process.pid().to_string()),
        "{err}"
    );

    let text = agent.metrics();
    let dir = Removed::dir(&format!("nft{}-prom", std::process::id()));
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).expect("write metrics");
    let lint = run(&[
        "sh",
        "-c",
        &format!("promtool check metrics < {}", file.display()),
    ]);
    assert!(
        lint.status.success(),
        "promtool check metrics refused the agent's output:\n{}{}\n{text}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    // The network's traffic on every backend; the per-hook counters where there are hooks.
    let rx = sample(
        &text,
        "netfast_network_packets_total",
        &[("network", "web"), ("direction", "rx")],
    );
    assert!(rx.is_some_and(|v| v > 0.0), "{text}");
    if backend == "ebpf" {
        for name in [
            "netfast_hook_packets_total",
            "netfast_conntrack_entries",
            "netfast_conntrack_capacity_entries",
            "netfast_fast_path_forwarded_packets_total",
        ] {
            assert!(text.contains(name), "no {name} in:\n{text}");
        }
        assert_eq!(
            sample(
                &text,
                "netfast_conntrack_capacity_entries",
                &[("table", "main")]
            ),
            Some(8192.0),
            "{text}"
        );
    }

    // A real Prometheus server, in the test's host namespace, scraping the agent.
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: netfast\n    static_configs:\n      - targets: ['{METRICS_ADDR}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let data = dir.join("data");
    let config_arg = format!("--config.file={}", config.display());
    let data_arg = format!("--storage.tsdb.path={}", data.display());
    let mut argv = w.topo.host.prefix();
    argv.extend(
        [
            "prometheus",
            config_arg.as_str(),
            data_arg.as_str(),
            "--web.listen-address=127.0.0.1:9090",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut prometheus = Background::spawn(&argv);
    wait_listening(w.topo.host.name(), "tcp", 9090, "prometheus");
    let query = "http://127.0.0.1:9090/api/v1/query?query=up%7Bjob%3D%22netfast%22%7D";
    let mut last = String::new();
    let up = wait_until(Duration::from_secs(30), || {
        let out = w.topo.host.exec(&["curl", "-s", "--max-time", "3", query]);
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| {
            v["data"]["result"]
                .as_array()
                .and_then(|r| r.first())
                .is_some_and(|r| r["value"][1] == "1")
        })
    });
    prometheus.assert_running();
    assert!(
        up,
        "Prometheus never saw up{{job=\"netfast\"}} == 1; last answer: {last}"
    );
    drop(prometheus);
    drop(agent);
}

fn an_address_added_to_the_host_serves_an_existing_publication(backend: &str) {
    require_root();
    let w = web_on(backend, &[]);
    let _agent = Agent::start(&w.topo.host);
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(curl(w.topo.outside.name(), UPLINK_URL, &[]), "200");
    w.topo
        .host
        .exec_ok(&["ip", "addr", "add", "198.51.100.50/24", "dev", UPLINK]);
    let url = "http://198.51.100.50:8080/";
    assert!(
        wait_until(SOON, || curl(w.topo.outside.name(), url, &[]) == "200"),
        "{url} (an address added after the publication) never served it"
    );
}

/// What the agent's repair tests start from: the web fixture on a backend, an agent serving
/// it, and the outside's web server. Dropped in that order.
struct Served {
    server: Background,
    _agent: Agent,
    w: Web,
    /// The outside server's URL.
    to_outside: String,
}

fn served(backend: &str) -> Served {
    require_root();
    let w = web_on(backend, &[]);
    let agent = Agent::start(&w.topo.host);
    Served {
        server: outside_web_server(w.topo.outside.name()),
        _agent: agent,
        w,
        to_outside: format!("http://{OUTSIDE_ADDR}:8000/"),
    }
}

/// The outside web server's log: the client address of each request.
fn clients_seen(server: &Background) -> String {
    server.stderr_so_far()
}

fn a_replaced_uplink_address_masquerades_new_connections_as_it(backend: &str) {
    let s = served(backend);
    let (w, server) = (&s.w, &s.server);
    let to_outside = &s.to_outside;
    assert_eq!(curl(&w.c1, to_outside, &[]), "200");
    // http.server logs a request once it has answered it.
    assert!(
        wait_until(SOON, || clients_seen(server)
            .contains(&format!("{UPLINK_ADDR} - -"))),
        "{}",
        clients_seen(server)
    );
    // A flow that left as the old address, alive when the address goes.
    ping(&w.c1, &OUTSIDE_ADDR.to_string());
    let old_flow = format!("dst={UPLINK_ADDR} type=0");
    assert!(w.nf.ok(&["conntrack", "list"]).contains(&old_flow));

    replace_uplink_address(w, "198.51.100.60");
    assert!(
        wait_until(SOON, || {
            curl(&w.c1, to_outside, &[]) == "200"
                && clients_seen(server).contains("198.51.100.60 - -")
        }),
        "no connection from the new address 198.51.100.60; the server saw:\n{}",
        clients_seen(server)
    );
    // The old address's flows ended with it, as MASQUERADE ends them.
    assert!(
        wait_until(SOON, || !w
            .nf
            .ok(&["conntrack", "list"])
            .contains(&old_flow)),
        "a flow of the old address lives on:\n{}",
        w.nf.ok(&["conntrack", "list"])
    );
}

/// Moves the uplink from its address to `new` (/24), as DHCP or an operator would.
fn replace_uplink_address(w: &Web, new: &str) {
    let h = &w.topo.host;
    h.exec_ok(&[
        "ip",
        "addr",
        "del",
        &format!("{UPLINK_ADDR}/24"),
        "dev",
        UPLINK,
    ]);
    h.exec_ok(&["ip", "addr", "add", &format!("{new}/24"), "dev", UPLINK]);
}

/// A `container create` killed at its state save (rename #1 makes the intent record, #2
/// the state): its intent left for the next command. The container's name.
fn interrupted_container_create(w: &Web) -> String {
    let name = format!("{}c9", w.topo.host.name());
    assert!(
        w.nf.killed_at(
            "renameat",
            2,
            &["container", "create", &name, "--network", "web"]
        ),
        "the command was not killed"
    );
    name
}

/// Deletes the uplink veth (with its outside end) and makes it again, addresses and all, as
/// a driver reload or a VPN reconnect would.
fn recreate_uplink(w: &Web) {
    w.topo.host.exec_ok(&["ip", "link", "del", UPLINK]);
    w.topo.wire_uplink();
}

fn a_recreated_uplink_masquerades_again(backend: &str) {
    let s = served(backend);
    let (w, _server) = (&s.w, &s.server);
    let to_outside = &s.to_outside;
    assert_eq!(curl(&w.c1, to_outside, &[]), "200");
    recreate_uplink(w);
    // The outside's server listened on the old eth0's address: it is the same address.
    assert!(
        wait_until(SOON, || curl(&w.c1, to_outside, &[]) == "200"),
        "masquerade does not work again after the uplink came back"
    );
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(curl(w.topo.outside.name(), UPLINK_URL, &[]), "200");
    if backend == "ebpf" {
        // Re-attached, re-keyed, the dead interface's links unpinned: no drift left.
        let ls = w.nf.networks();
        assert!(ls[0].drift.is_empty(), "{ls:?}");
    }
}

fn direct_access_shows_in_monitor_drops(backend: &str) {
    require_root();
    let w = web_on(backend, &[]);
    let container = netfast_tests::topology::container_addr(0).to_string();
    w.route_subnet_from_outside();
    if backend != "ebpf" {
        // The fallbacks have no drop ring: monitor says so, and what to use instead.
        let err = w.nf.fails(&["monitor", "--drops"]);
        assert!(
            err.contains("nftables/iptables backends") && err.contains("netfast stats"),
            "{err}"
        );
        return;
    }
    let mut monitor = w.nf.spawn(&["monitor", "--drops", "--json"]);
    monitor.wait_for_text("netfast monitor: watching", Duration::from_secs(10));
    // Straight to the masqueraded container's address, from outside.
    w.assert_direct_access_dropped();
    let shown = |d: &DropEventRow| {
        d.reason == "direct_access"
            && d.hook == "uplink_ingress"
            && d.interface == UPLINK
            && d.protocol == "tcp"
            && d.src == OUTSIDE_ADDR
            && d.dst.to_string() == container
            && d.dport == Some(80)
    };
    monitor.wait_for_json("show the direct access", Duration::from_secs(10), shown);
}

fn a_restarted_agent_loses_no_flow(backend: &str) {
    require_root();
    let w = web_on(backend, &[]);
    let _echo = echo_server(w.topo.outside.name(), 7000);
    // A live TCP flow from a container, a number echoed every 100 ms.
    let mut client = talker(&w.c1, &OUTSIDE_ADDR.to_string(), 7000);
    // Reclaiming every second: it must never take what the flow uses.
    let agent = Agent::start_with(&w.topo.host, &["--reclaim", "1"]);
    let flows_before =
        w.nf.ok(&["conntrack", "list", "-p", "tcp", "--dport", "7000"]);
    assert_eq!(flows_before.lines().count(), 1, "{flows_before}");
    agent.process.signal(libc::SIGKILL);
    let _ = agent.process.stop();
    let agent = Agent::start_with(&w.topo.host, &["--reclaim", "1"]);
    // Three passes of the new agent (reclaiming among them), and the flow still echoes.
    let passes = |a: &Agent| a.value("netfast_agent_passes_total", &[]).unwrap_or(0.0);
    assert!(wait_until(SOON, || passes(&agent) >= 3.0));
    talks_on(&mut client, 20, "the flow, across the agent's restart");
    // The very same flow: same ports, same translation.
    let flows_after =
        w.nf.ok(&["conntrack", "list", "-p", "tcp", "--dport", "7000"]);
    let tuple = |l: &str| -> Vec<String> {
        l.split_whitespace()
            .filter(|f| f.starts_with("src=") || f.starts_with("dst=") || f.contains("port="))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        tuple(flows_after.trim()),
        tuple(flows_before.trim()),
        "before:\n{flows_before}\nafter:\n{flows_after}"
    );
    // Reclaiming took nothing of it (nothing else had expired), and nothing needed repair.
    let text = agent.metrics();
    assert_eq!(
        sample(
            &text,
            "netfast_agent_reclaimed_entries_total",
            &[("map", "conntrack")]
        ),
        Some(0.0),
        "{text}"
    );
    if backend == "ebpf" {
        assert_eq!(w.nf.event("ct_repaired"), 0);
    }
    drop(agent);
}

fn a_recreated_bridge_gets_its_containers_back(backend: &str) {
    let s = served(backend);
    let (w, _server) = (&s.w, &s.server);
    let to_outside = &s.to_outside;
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    assert_eq!(curl(&w.c1, to_outside, &[]), "200");
    // Deleted by hand, then made again bare: no address, down, no ports.
    let h = &w.topo.host;
    h.exec_ok(&["ip", "link", "del", "nf-web"]);
    h.exec_ok(&["ip", "link", "add", "nf-web", "type", "bridge"]);
    assert!(
        wait_until(SOON, || curl(&w.c1, to_outside, &[]) == "200"),
        "the container does not reach the outside again"
    );
    assert!(
        wait_until(SOON, || curl(w.topo.outside.name(), UPLINK_URL, &[])
            == "200"),
        "the publication does not serve again"
    );
    assert_eq!(curl(&w.c1, UPLINK_URL, &[]), "200", "hairpin");
    let ls = w.nf.containers();
    assert!(ls.iter().all(|c| c.drift.is_empty()), "{ls:?}");
}

/// netfast's jumps from the built-in chains to its own on the iptables backend: (table,
/// chain, target).
const IPTABLES_JUMPS: [(&str, &str, &str); 3] = [
    ("filter", "FORWARD", "NETFAST-FORWARD"),
    MASQUERADE_JUMP,
    ("nat", "PREROUTING", "NETFAST-PREROUTING"),
];
const MASQUERADE_JUMP: (&str, &str, &str) = ("nat", "POSTROUTING", "NETFAST-POSTROUTING");

/// `iptables -w -t TABLE OP CHAIN -j TARGET` in host `h`: `-D` deletes the jump, `-C` checks
/// that it is there (failing the test if not).
fn iptables_jump(h: &TestNetns, op: &str, (table, chain, target): (&str, &str, &str)) {
    h.exec_ok(&["iptables", "-w", "-t", table, op, chain, "-j", target]);
}

fn what_was_removed_by_hand_comes_back(backend: &str) {
    let s = served(backend);
    let (w, _server) = (&s.w, &s.server);
    let to_outside = &s.to_outside;
    w.nf.ok(&["publish", "web", &format!("8080:{}:80", w.c0)]);
    let h = &w.topo.host;
    match backend {
        // The uplink's programs detached (their pinned links removed).
        "ebpf" => {
            let key = w.nf.key();
            for hook in ["uplink_ingress", "uplink_egress"] {
                let dir = std::path::Path::new("/sys/fs/bpf/netfast").join(&key);
                for e in std::fs::read_dir(&dir).expect("pins").flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with("link-") && name.ends_with(hook) {
                        std::fs::remove_file(e.path()).expect("unpin");
                    }
                }
            }
        }
        "nftables" => {
            h.exec_ok(&["nft", "delete", "table", "ip", "netfast"]);
        }
        _ => {
            for jump in IPTABLES_JUMPS {
                iptables_jump(h, "-D", jump);
            }
        }
    }
    assert!(
        wait_until(SOON, || {
            curl(&w.c1, to_outside, &[]) == "200"
                && curl(w.topo.outside.name(), UPLINK_URL, &[]) == "200"
        }),
        "masquerade and the publication do not work again"
    );
    let ls = w.nf.networks();
    assert!(ls[0].drift.is_empty(), "{ls:?}");
}

netfast_tests::on_backends!([ebpf, nftables, iptables] [
    a_recreated_bridge_gets_its_containers_back,
    what_was_removed_by_hand_comes_back,
    metrics_pass_promtool_and_a_real_prometheus_scrapes_them,
    an_address_added_to_the_host_serves_an_existing_publication,
    a_replaced_uplink_address_masquerades_new_connections_as_it,
    a_recreated_uplink_masquerades_again,
    direct_access_shows_in_monitor_drops,
    a_restarted_agent_loses_no_flow,
]);

/// eBPF only: the fallbacks' flows are the kernel's, which reclaims them itself.
#[test]
fn the_agent_reclaims_expired_flows_and_their_mappings() {
    require_root();
    let w = web_on("ebpf", &["--timeout-udp", "1"]);
    let agent = Agent::start_with(&w.topo.host, &["--reclaim", "1"]);
    let send = format!("echo hi | socat -u - UDP4:{OUTSIDE_ADDR}:9999,sourceport=4444");
    run_in(&w.c1, &["sh", "-c", &send]);
    let reclaimed = |map: &str| {
        agent
            .value("netfast_agent_reclaimed_entries_total", &[("map", map)])
            .unwrap_or(0.0)
    };
    assert!(
        wait_until(Duration::from_secs(30), || {
            reclaimed("conntrack") >= 2.0
                && reclaimed("nat_binding") >= 1.0
                && reclaimed("nat_claim") >= 1.0
        }),
        "the expired flow and its mapping were not reclaimed:\n{}",
        agent.metrics()
    );
    let text = agent.metrics();
    assert_eq!(
        sample(&text, "netfast_conntrack_entries", &[("table", "main")]),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "netfast_nat_mappings", &[("kind", "claim")]),
        Some(0.0),
        "{text}"
    );
    drop(agent);
}

/// `netfast doctor` warns while eBPF networks have no agent, and passes once one runs.
#[test]
fn doctor_warns_when_no_agent_serves_an_ebpf_network() {
    require_root();
    let w = web_on("ebpf", &[]);
    let check = || -> DoctorCheck {
        let all = w.nf.doctor(&[]);
        all.iter()
            .find(|c| c.area == "agent")
            .cloned()
            .unwrap_or_else(|| panic!("no agent check in {all:#?}"))
    };
    let before = check();
    before.assert_says(CheckStatus::Warn, "web");
    assert!(before.fix().contains("netfast agent"), "{before:#?}");
    let agent = Agent::start(&w.topo.host);
    check().assert_says(CheckStatus::Pass, &agent.process.pid().to_string());
    drop(agent);
}

/// An unused namespace has nothing for an agent to do, and it still serves.
#[test]
fn an_agent_runs_on_a_host_without_networks() {
    require_root();
    let host = TestNetns::new("h");
    let nf = netfast_tests::Netfast::new(&host);
    let agent = Agent::start(&host);
    let text = agent.metrics();
    assert!(
        sample(&text, "netfast_agent_passes_total", &[]).is_some_and(|v| v >= 1.0),
        "{text}"
    );
    drop(agent);
    drop(nf);
}

/// `monitor --flows`: a flow as it opens, and as it ends (expired, and reclaimed).
#[test]
fn monitor_flows_shows_a_flow_open_and_end() {
    require_root();
    let w = web_on("ebpf", &["--timeout-icmp", "1"]);
    let mut monitor = w.nf.spawn(&["monitor", "--flows", "--json"]);
    monitor.wait_for_text("netfast monitor: watching flows", Duration::from_secs(10));
    ping(&w.c1, &OUTSIDE_ADDR.to_string());
    let seen = |out: &str, kind: &str| {
        out.lines().filter_map(FlowEvent::parse).any(|e| {
            e.event == kind && e.flow.protocol == "icmp" && e.flow.original.dst == OUTSIDE_ADDR
        })
    };
    monitor.wait_for("show the flow open", Duration::from_secs(10), |out, _| {
        seen(out, "NEW")
    });
    monitor.wait_for("show the flow end", Duration::from_secs(15), |out, _| {
        seen(out, "DESTROY")
    });
}

/// A command killed half-way (here `container create`, at its state save) is completed by
/// the agent, as the next command would: the agent sees it first.
#[test]
fn the_agent_completes_an_interrupted_command() {
    require_root();
    require_tool("strace", "strace");
    let w = web_on("ebpf", &[]);
    let mut agent = Agent::start(&w.topo.host);
    let name = interrupted_container_create(&w);
    agent
        .process
        .wait_for_text("completed what an interrupted netfast command left", SOON);
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "the interrupted container's namespace is left"
    );
    let ls = w.nf.ok(&["container", "ls"]);
    assert!(
        !ls.contains(&name) && !ls.contains("not in the state"),
        "{ls}"
    );
}

/// Under its systemd unit the agent runs in a mount namespace of its own, where a named
/// network namespace cannot be deleted for good (that takes the host's mount namespace,
/// which it cannot enter without CAP_SYS_CHROOT). An interrupted `container create` whose
/// namespace it therefore cannot remove must not stop its passes: it says so as drift, and
/// keeps the dataplane in step with the host (here, the uplink's address replaced).
#[test]
fn an_interrupted_command_the_agent_cannot_complete_does_not_stop_it() {
    require_root();
    require_tool("strace", "strace");
    let w = web_on("ebpf", &[]);
    let server = outside_web_server(w.topo.outside.name());
    let name = interrupted_container_create(&w);
    let mut agent = Agent::start_behind(
        &w.topo.host,
        &[
            "unshare",
            "--mount",
            "setpriv",
            "--bounding-set=-sys_chroot",
        ],
        &[],
    );
    agent
        .process
        .wait_for_text("cannot complete what an interrupted", SOON);
    replace_uplink_address(&w, "198.51.100.61");
    let to_outside = format!("http://{OUTSIDE_ADDR}:8000/");
    assert!(
        wait_until(SOON, || {
            curl(&w.c1, &to_outside, &[]) == "200"
                && clients_seen(&server).contains("198.51.100.61 - -")
        }),
        "no connection from the new address 198.51.100.61; the agent said:\n{}",
        agent.process.stdout_so_far()
    );
    drop(agent);
    // The next command, with the rights the agent lacked, completes it.
    w.nf.ok(&["network", "ls"]);
    w.nf.ok(&[
        "container",
        "create",
        &format!("{}c8", w.topo.host.name()),
        "--network",
        "web",
    ]);
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "the interrupted container's namespace is left"
    );
}

/// The agent's systemd unit is one systemd accepts, and its sandbox lets the agent complete
/// what an interrupted command left (see the test above): deleting a named network namespace
/// from the unit's own mount namespace takes entering the host's and unmounting there.
#[test]
fn the_agent_unit_verifies_and_lets_it_delete_a_namespace() {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd/netfast-agent.service");
    let text = std::fs::read_to_string(&unit).expect("read the agent's unit");
    let line = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("the unit has no {key}="))
            .to_owned()
    };
    for (key, needs, why) in [
        (
            "CapabilityBoundingSet",
            "CAP_SYS_ADMIN",
            "setns and umount2",
        ),
        (
            "CapabilityBoundingSet",
            "CAP_SYS_CHROOT",
            "setns into a mount namespace",
        ),
        (
            "RestrictNamespaces",
            "mnt",
            "setns into the host's mount namespace",
        ),
        (
            "SystemCallFilter",
            "umount2",
            "unmounting a named namespace's file",
        ),
    ] {
        assert!(
            line(key).split_whitespace().any(|w| w == needs),
            "the unit's {key} lacks {needs}, which {why} needs"
        );
    }
    // Verified as installed, with the binary this build made.
    let bin = netfast_tests::netfast_cli::netfast_bin();
    let installed = text.replace("/usr/local/bin/netfast", bin.to_str().expect("a path"));
    let copy = Removed::at(format!("/tmp/netfast-agent-{}.service", std::process::id()));
    std::fs::write(&*copy, installed).expect("write the unit's copy");
    require_tool("systemd-analyze", "systemd");
    let out = run(&["systemd-analyze", "verify", &copy.to_string_lossy()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {}: {}\n{said}",
        unit.display(),
        out.status
    );
}

/// A fast-path entry for an address no container holds (a Docker endpoint's create killed
/// before it saved the state leaves one) goes with the agent's next pass, counted as a
/// repair; the containers' own entries stay as they were.
#[test]
fn the_agent_removes_a_fast_path_entry_of_no_container() {
    require_root();
    let w = web_on("ebpf", &[]);
    let mut agent = Agent::start(&w.topo.host);
    let before = w.nf.endpoints();
    assert_eq!(before.len(), 2, "two containers, two endpoints: {before:?}");
    let ep = *before.values().next().expect("an endpoint");
    let stray = Ipv4Addr::new(172, 18, 0, 77);
    w.nf.plant_endpoint(stray, &ep);
    assert!(
        wait_until(SOON, || !w.nf.endpoints().contains_key(&stray)),
        "the agent left the stray entry: {:?}",
        w.nf.endpoints()
    );
    assert_eq!(w.nf.endpoints(), before, "only the stray entry goes");
    agent.process.wait_for_text(
        &format!(
            "repaired: removed fast-path endpoint {stray} (interface #{})",
            ep.ifindex
        ),
        SOON,
    );
    // Counted once the pass is over, just after it printed what it did.
    let counted = || {
        agent.value(
            "netfast_agent_repairs_total",
            &[("kind", "unknown_endpoint")],
        )
    };
    assert!(
        wait_until(SOON, || counted() == Some(1.0)),
        "{:?}",
        counted()
    );
}

/// After `netfast upgrade` by another build, the agent's binary is not the one to serve the
/// dataplane: it stops, saying why, so that its service manager starts the new one.
#[test]
fn the_agent_stops_when_another_build_runs_the_dataplane() {
    require_root();
    let w = web_on("ebpf", &[]);
    let agent = Agent::start(&w.topo.host);
    let dir = std::path::Path::new("/sys/fs/bpf/netfast").join(w.nf.key());
    w.nf.pretend_another_build_runs(&dir, "netfast 9.9.9-newer", 1);
    let out = agent.process.wait_exit(SOON);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent went on: {err}");
    assert!(
        err.contains("netfast 9.9.9-newer")
            && err.contains("restart the agent with the new binary"),
        "{err}"
    );
    // Started again with the old binary, it refuses at once.
    let again = w.nf.run(&["agent"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("netfast 9.9.9-newer"));
}

/// iptables: each of netfast's jumps from the built-in chains is its rules being in place. One
/// removed by hand (masquerade's, here) is drift in `network ls`, which the agent repairs.
#[test]
fn a_missing_iptables_jump_is_drift_and_the_agent_puts_it_back() {
    require_root();
    let w = web_on("iptables", &[]);
    let drift = |w: &Web| w.nf.networks()[0].drift.clone();
    assert_eq!(drift(&w), Vec::<String>::new());
    iptables_jump(&w.topo.host, "-D", MASQUERADE_JUMP);
    let d = drift(&w);
    assert!(
        d.iter().any(|d| d.contains("iptables rules are missing")),
        "masquerade's jump removed, but no drift: {d:?}"
    );
    let _agent = Agent::start(&w.topo.host);
    assert!(
        wait_until(SOON, || drift(&w).is_empty()),
        "the agent did not put the jump back: {:?}",
        drift(&w)
    );
    iptables_jump(&w.topo.host, "-C", MASQUERADE_JUMP);
}
