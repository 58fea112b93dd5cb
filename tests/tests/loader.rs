//! The loader in namespaces: networks and containers made by `netfast`, checked with `ip`
//! and `ping`. Every host is a test namespace; every container name starts with its host's
//! name, so parallel runs never collide and leaks are caught.

use std::{fs, net::Ipv4Addr, process::Command, thread};

use netfast::{Dataplane, common::Hook, dataplane::Settings, host::Host, netns::NetnsGuard};
use netfast_tests::{
    Netfast, Removed, TestNetns, Topology, in_netns,
    netfast_cli::{ConfigJson, ContainerRow, NetworkRow, netfast_bin, network_create},
    require_root,
    topology::{BRIDGE, OUTSIDE_ADDR},
};

/// A host namespace with an uplink (no bridge: netfast makes it). Kernel tests start here,
/// so this checks first that the test can run.
fn host() -> (Topology, Netfast) {
    require_root();
    let topo = Topology::builder().without_bridge().build();
    let nf = Netfast::new(&topo.host);
    (topo, nf)
}

/// A [`host`] with network `web` (172.18.0.0/24, on the uplink).
fn host_with_web() -> (Topology, Netfast) {
    let (topo, nf) = host();
    nf.create_network("web", "172.18.0.0/24", &[]);
    (topo, nf)
}

/// A [`host_with_web`] with container `<host>c0` in web, and that name.
fn host_with_container() -> (Topology, Netfast, String) {
    let (topo, nf) = host_with_web();
    let c0 = ct(&topo, 0);
    nf.ok(&["container", "create", &c0, "--network", "web"]);
    (topo, nf, c0)
}

fn ct(topo: &Topology, i: usize) -> String {
    format!("{}c{i}", topo.host.name())
}

/// Runs `args`, which must fail saying each of `says` and leave the host as `before` (its
/// [`snapshot`]); returns what it said.
fn refused(topo: &Topology, nf: &Netfast, before: &str, args: &[&str], says: &[&str]) -> String {
    let err = nf.fails(args);
    let command = args.join(" ");
    for s in says {
        assert!(
            err.contains(s),
            "`netfast {command}` said:\n{err}\nexpected it to mention: {s}"
        );
    }
    assert_eq!(
        snapshot(topo),
        before,
        "`netfast {command}` changed the host"
    );
    err
}

/// Everything of the kernel a command could change, to compare before and after.
fn snapshot(topo: &Topology) -> String {
    let h = &topo.host;
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| n.starts_with(h.name()));
    names.sort();
    let links: String = h
        .exec_ok(&["ip", "-o", "link"])
        .lines()
        // Counters, timers and operstate change by themselves (a new bridge goes from
        // UNKNOWN to UP); names, flags, MTUs and masters do not.
        .map(|l| {
            let l = l.split(" link/").next().unwrap_or(l);
            let mut words = l.split_whitespace();
            let mut kept = Vec::new();
            while let Some(w) = words.next() {
                if w == "state" {
                    words.next();
                } else {
                    kept.push(w);
                }
            }
            kept.join(" ") + "\n"
        })
        .collect();
    // A state file that holds nothing is no state at all.
    let state = fs::read_to_string(state_file(topo)).unwrap_or_default();
    let empty = serde_json::from_str::<netfast::loader::model::State>(&state)
        .is_ok_and(|s| s.networks.is_empty() && s.containers.is_empty());
    format!(
        "{links}{}{}{}namespaces {names:?}\nstate {}\nip_forward {}\n",
        h.exec_ok(&["ip", "-o", "-4", "addr"]),
        h.exec_ok(&["ip", "route"]),
        h.exec_ok(&["ip", "rule"]),
        if empty { "" } else { state.as_str() },
        forwarding(topo)
    )
}

/// The state file of the topology's host.
fn state_file(topo: &Topology) -> std::path::PathBuf {
    host_of(topo.host.name()).state_dir().join("state.json")
}

/// `network create legacy --adopt` of the topology's hand-made br0 (172.18.0.0/24) on
/// `backend`.
fn adopt_br0(nf: &Netfast, backend: &str) -> String {
    nf.ok(&[
        "network",
        "create",
        "legacy",
        "--subnet",
        "172.18.0.0/24",
        "--bridge",
        BRIDGE,
        "--uplink",
        "up0",
        "--adopt",
        "--backend",
        backend,
    ])
}

fn in_ct(name: &str, argv: &[&str]) -> String {
    let mut full = vec!["ip", "netns", "exec", name];
    full.extend_from_slice(argv);
    netfast_tests::run_ok(&full)
}

#[test]
fn containers_reach_each_other_the_host_and_the_outside() {
    let (topo, nf) = host();
    let out = nf.create_network("web", "172.18.0.0/24", &[]);
    assert!(
        out.contains("created bridge nf-web with 172.18.0.1/24"),
        "{out}"
    );
    let (a, b) = (ct(&topo, 0), ct(&topo, 1));
    nf.ok(&["container", "create", &a, "--network", "web"]);
    nf.ok(&[
        "container",
        "create",
        &b,
        "--network",
        "web",
        "--ip",
        "172.18.0.42",
    ]);
    assert!(in_ct(&a, &["ip", "-4", "-o", "addr", "show", "eth0"]).contains("172.18.0.2/24"));
    assert!(in_ct(&a, &["ip", "route"]).contains("default via 172.18.0.1"));
    assert!(in_ct(&a, &["ip", "-o", "link", "show", "lo"]).contains("UP"));
    in_ct(
        &a,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "172.18.0.42"],
    );
    in_ct(
        &b,
        &["ping", "-c", "2", "-i", "0.2", "-W", "2", "172.18.0.2"],
    );
    topo.host
        .exec_ok(&["ping", "-c", "1", "-W", "2", "172.18.0.2"]);
    topo.host
        .exec_ok(&["ping", "-c", "1", "-W", "2", "172.18.0.42"]);
    in_ct(
        &a,
        &["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()],
    );
    // `ip netns` sees the containers, and so does netfast under `ip netns exec`.
    assert!(netfast_tests::run_ok(&["ip", "netns", "list"]).contains(&a));
    let bin = netfast_bin();
    let ls = topo
        .host
        .exec_ok(&[bin.to_str().expect("path"), "container", "ls", "--json"]);
    let ls: Vec<ContainerRow> = serde_json::from_str(&ls).expect("json");
    assert_eq!(ls.len(), 2);
    assert!(ls.iter().all(|c| c.drift.is_empty()), "{ls:?}");
}

#[test]
fn the_veth_gets_the_bridge_mtu() {
    let (topo, nf) = host();
    nf.create_network("jumbo", "10.77.0.0/24", &[]);
    let a = ct(&topo, 0);
    nf.ok(&["container", "create", &a, "--network", "jumbo"]);
    nf.ok(&["container", "rm", &a]);
    topo.host
        .exec_ok(&["ip", "link", "set", "nf-jumbo", "mtu", "1400"]);
    nf.ok(&["container", "create", &a, "--network", "jumbo"]);
    assert!(in_ct(&a, &["ip", "-o", "link", "show", "eth0"]).contains("mtu 1400"));
}

/// An apply file with networks web (masqueraded) and db (routed), a container on each.
fn apply_text(topo: &Topology, with_db: bool) -> String {
    let mut text = format!(
        "[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"up0\"\n\n\
         [[container]]\nname = \"{c}\"\nnetwork = \"web\"\n\n\
         [[publish]]\nnetwork = \"web\"\nspec = \"8080:{c}:80\"\nallow = [\"192.0.2.0/24\"]\n\n",
        c = ct(topo, 0)
    );
    if with_db {
        text += &format!(
            "[[network]]\nname = \"db\"\nsubnet = \"172.19.0.0/24\"\nuplink = \"up0\"\nmasquerade = false\n\n\
             [[container]]\nname = \"{}\"\nnetwork = \"db\"\nip = \"172.19.0.10\"\n",
            ct(topo, 1)
        );
    }
    text
}

#[test]
fn apply_converges_and_applying_twice_changes_nothing() {
    let (topo, nf) = host();
    let file = format!("/tmp/{}-apply.toml", topo.host.name());
    fs::write(&file, apply_text(&topo, true)).expect("write apply file");
    let first = nf.ok(&["apply", "-f", &file]);
    assert!(
        first.contains(&format!("+ publish web 8080:{}:80", ct(&topo, 0))),
        "{first}"
    );
    assert_eq!(nf.publications()[0].allow, ["192.0.2.0/24"]);
    assert!(
        first.contains("+ network web") && first.contains("+ network db"),
        "{first}"
    );
    assert!(
        first.contains(&format!(
            "+ container {} on db at 172.19.0.10",
            ct(&topo, 1)
        )),
        "{first}"
    );
    in_ct(&ct(&topo, 0), &["ping", "-c", "1", "-W", "2", "172.18.0.1"]);
    let before = snapshot(&topo);
    let second = nf.ok(&["apply", "-f", &file]);
    assert_eq!(second.trim(), "no changes");
    assert_eq!(snapshot(&topo), before, "a second apply changed the host");
    // Dropping db from the file removes its container, then db.
    fs::write(&file, apply_text(&topo, false)).expect("write apply file");
    let third = nf.ok(&["apply", "-f", &file]);
    assert_eq!(
        third.trim(),
        format!("- container {}\n- network db", ct(&topo, 1))
    );
    assert!(!topo.host.exec_ok(&["ip", "link"]).contains("nf-db"));
    fs::remove_file(&file).expect("remove apply file");
}

#[test]
fn down_removes_everything_netfast_made_and_nothing_else() {
    let (topo, nf) = host();
    let before = snapshot(&topo);
    nf.create_network("web", "172.18.0.0/24", &[]);
    for i in 0..2 {
        nf.ok(&["container", "create", &ct(&topo, i), "--network", "web"]);
    }
    let out = nf.ok(&["down"]);
    assert!(
        out.contains("removed the dataplane") || out.contains("removed network web"),
        "{out}"
    );
    // ip_forward stays on (as Docker leaves it); everything else is as it was.
    assert_eq!(snapshot(&topo), before);
    let h = host_of(topo.host.name());
    assert!(!h.state_dir().exists());
    assert!(!h.pin_dir().expect("bpffs").exists());
    assert_eq!(nf.ok(&["down"]).trim(), "nothing to remove");
}

/// A host with the articles' hand-made bridge br0 (172.18.0.1/24) and one container on it
/// (built with `ip`), netfast not yet involved: the container's namespace.
fn hand_made_bridge() -> (Topology, Netfast, String) {
    require_root();
    let topo = Topology::builder().containers(1).build();
    let nf = Netfast::new(&topo.host);
    let hand = topo.containers[0].name().to_owned();
    (topo, nf, hand)
}

#[test]
fn an_adopted_hand_made_bridge_keeps_working_and_survives_down() {
    // br0 with 172.18.0.1/24 and a container on it, built with `ip` as in the articles.
    let (topo, nf, hand) = hand_made_bridge();
    in_ct(&hand, &["ping", "-c", "1", "-W", "2", "172.18.0.1"]);
    let out = adopt_br0(&nf, "auto");
    assert!(
        out.contains("adopted bridge br0 (gateway 172.18.0.1)"),
        "{out}"
    );
    // The hand-made container now reaches the outside through netfast's masquerade.
    in_ct(
        &hand,
        &["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()],
    );
    let flows = nf.ok(&["conntrack", "list"]);
    assert!(flows.contains("src=172.18.0.2"), "{flows}");
    // A netfast container on it does not take the hand-made one's address.
    let mine = ct(&topo, 9);
    let out = nf.ok(&["container", "create", &mine, "--network", "legacy"]);
    assert!(out.contains("at 172.18.0.3/24"), "{out}");
    in_ct(&mine, &["ping", "-c", "1", "-W", "2", "172.18.0.2"]);
    nf.ok(&["down"]);
    // The bridge, its address and the hand-made container stay; netfast's container goes.
    assert!(
        topo.host
            .exec_ok(&["ip", "-4", "-o", "addr", "show", BRIDGE])
            .contains("172.18.0.1/24")
    );
    in_ct(&hand, &["ping", "-c", "1", "-W", "2", "172.18.0.1"]);
    assert!(!netfast_tests::run_ok(&["ip", "netns", "list"]).contains(&mine));
    let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
    for hook in [Hook::BridgeIngress, Hook::BridgeEgress] {
        let left = Dataplane::tcx_programs(BRIDGE, hook).expect("query");
        assert!(left.is_empty(), "programs left on br0: {left:?}");
    }
}

/// A hand-made container on a bridge adopted by a fallback backend reaches its own published
/// port (hairpin NAT needs hairpin mode on its port, which netfast turns on), and the port
/// gets its own mode back when netfast lets go of the bridge.
#[test]
fn hairpin_works_for_a_hand_made_container_on_an_adopted_fallback_bridge() {
    let (topo, nf, hand) = hand_made_bridge();
    let hairpin = || {
        let ports = topo
            .host
            .exec_ok(&["ip", "-d", "-o", "link", "show", "master", BRIDGE]);
        assert!(ports.contains("hairpin"), "{ports}");
        ports.contains("hairpin on")
    };
    assert!(!hairpin(), "hand-made ports start without hairpin mode");
    let out = adopt_br0(&nf, "iptables");
    assert!(
        out.contains("turned hairpin mode on for adopted port(s)"),
        "{out}"
    );
    assert!(hairpin());
    let _server =
        netfast_tests::Background::spawn(&in_netns(&hand, &["python3", "-m", "http.server", "80"]));
    netfast_tests::clients::wait_listening(&hand, "tcp", 80, "http.server");
    nf.ok(&["publish", "legacy", "8080:172.18.0.2:80"]);
    assert_eq!(
        netfast_tests::clients::curl(&hand, "http://198.51.100.1:8080/", &[]),
        "200",
        "hairpin from the serving hand-made container"
    );
    let out = nf.ok(&["network", "rm", "legacy"]);
    assert!(out.contains("turned hairpin mode off again for"), "{out}");
    assert!(!hairpin(), "the port keeps netfast's hairpin mode");
}

/// The fallbacks turn route_localnet on for the bridges they serve (for the host's clients of
/// 127.0.0.1); an adopted bridge gets its own setting back when netfast lets go of it.
#[test]
fn an_adopted_bridge_gets_its_route_localnet_back() {
    let (topo, nf, _) = hand_made_bridge();
    let setting = || {
        topo.host
            .exec_ok(&[
                "sysctl",
                "-n",
                &format!("net.ipv4.conf.{BRIDGE}.route_localnet"),
            ])
            .trim()
            .to_owned()
    };
    let adopt = || adopt_br0(&nf, "nftables");
    for own in ["0", "1"] {
        topo.host.exec_ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{BRIDGE}.route_localnet={own}"),
        ]);
        adopt();
        assert_eq!(setting(), "1", "served by the nftables backend");
        nf.ok(&["network", "rm", "legacy"]);
        assert_eq!(
            setting(),
            own,
            "after network rm, with {own} before adoption"
        );
    }
    adopt();
    nf.ok(&["down"]);
    assert_eq!(
        setting(),
        "1",
        "after down: the last setting before adoption"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() {
    let (topo, nf, used) = host_with_container();
    let before = snapshot(&topo);
    let fresh_at = |ip| {
        vec![
            "container",
            "create",
            "fresh",
            "--network",
            "web",
            "--ip",
            ip,
        ]
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (network_create("x", "172.20.0.0", &[]), "not an IPv4 CIDR"),
        (
            network_create("x", "172.20.0.1/24", &[]),
            "has host bits set",
        ),
        (
            network_create("x", "172.20.0.0/24", &["--gateway", "10.0.0.1"]),
            "outside subnet",
        ),
        (
            network_create("x", "172.20.0.0/24", &["--gateway", "172.20.0.0"]),
            "network address",
        ),
        (
            network_create("x", "172.20.0.0/24", &["--gateway", "172.20.0.255"]),
            "broadcast address",
        ),
        (network_create("x", "172.16.0.0/12", &[]), "overlaps"),
        (
            network_create("x", "172.20.0.0/24", &["--bridge", "sixteen-bytes-xx"]),
            "1 to 15",
        ),
        (
            network_create("web", "172.20.0.0/24", &[]),
            "already exists",
        ),
        (
            vec![
                "network",
                "create",
                "x",
                "--subnet",
                "172.20.0.0/24",
                "--uplink",
                "nosuch0",
            ],
            "does not exist",
        ),
        (
            network_create("x", "172.20.0.0/24", &["--bridge", "up0"]),
            "must differ",
        ),
        (
            network_create("x", "172.20.0.0/24", &["--bridge", "lo"]),
            "already exists; pass --adopt",
        ),
        (vec!["network", "rm", "web"], "still has containers"),
        (vec!["network", "rm", "nope"], "no network named"),
        (
            vec!["container", "create", &used, "--network", "web"],
            "already exists",
        ),
        (fresh_at("172.18.0.2"), "in use by container"),
        (fresh_at("172.18.0.1"), "is the gateway"),
        (fresh_at("172.18.0.255"), "broadcast address"),
        (
            vec!["container", "create", "fresh", "--network", "nope"],
            "no network named",
        ),
        (
            vec!["container", "create", "bad/name", "--network", "web"],
            "not valid",
        ),
        (vec!["container", "rm", "nope"], "no container named"),
        (vec!["config", "--port-range", "10-5"], "port range"),
        (
            vec!["config", "--ct-max", "1024"],
            "can only change while no network exists",
        ),
    ]
    .into_iter()
    .map(|(a, m)| (a.into_iter().map(String::from).collect(), m))
    .collect();
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&topo, &nf, &before, &args, &[message]);
    }
    // Without capabilities (root, but with them dropped): refused, and nothing changes.
    // With --netns, entering the host namespace is what fails first; under `ip netns exec`
    // netfast's own check names what is missing.
    let drop = [
        "setpriv",
        "--bounding-set",
        "-net_admin,-bpf,-sys_admin",
        "--inh-caps",
        "-all",
    ];
    let create = network_create("x", "172.20.0.0/24", &[]);
    let mut via_flag = drop.to_vec();
    via_flag.extend(nf.argv(&create));
    let mut inside = in_netns(topo.host.name(), &drop);
    inside.push(nf.bin().to_str().expect("path"));
    inside.extend(&create);
    for (argv, says, how) in [
        (via_flag, "CAP_SYS_ADMIN", "--netns"),
        (inside, "needs CAP_NET_ADMIN", "in the namespace"),
    ] {
        let out = netfast_tests::run(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "without capabilities, {how}: {err}"
        );
    }
    assert_eq!(snapshot(&topo), before);
}

/// A dataplane pinned in `topo`'s host with a ct-max (1024) other than the host's settings:
/// a command that opens it fails there, after what it did first.
fn pin_dataplane_with_ct_max_1024(topo: &Topology) {
    let settings = Settings {
        ct_max_flows: 1024,
        ..Settings::default()
    };
    let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
    Dataplane::open(&Host::current().expect("host"), &settings).expect("pin a dataplane");
}

/// Removes the dataplane pinned in `topo`'s host.
fn unpin_dataplane(topo: &Topology) {
    let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
    Dataplane::remove(&Host::current().expect("host")).expect("unpin");
}

/// An apply file: network a on nftables, then network b on eBPF (which opens the dataplane).
const NETWORKS_A_AND_B: &str = "[[network]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\nuplink = \"up0\"\n\
                                backend = \"nftables\"\n\n[[network]]\nname = \"b\"\n\
                                subnet = \"10.2.0.0/24\"\nuplink = \"up0\"\nbackend = \"ebpf\"\n";

#[test]
fn a_failure_half_way_rolls_back_what_the_command_created() {
    let (topo, nf) = host();
    // A dataplane pinned with another ct-max than the host's settings: `network create`
    // makes its bridge, then fails to open the dataplane, and must delete the bridge again.
    pin_dataplane_with_ct_max_1024(&topo);
    let before = snapshot(&topo);
    let create = network_create("web", "172.18.0.0/24", &[]);
    refused(&topo, &nf, &before, &create, &["cannot be resized"]);
    unpin_dataplane(&topo);
    // apply: the second network's bridge name is taken by a dummy link: refused before the
    // first network is made.
    topo.host.exec_ok(&[
        "ip", "link", "add", "busy0", "type", "veth", "peer", "name", "busy1",
    ]);
    let before = snapshot(&topo);
    let file = format!("/tmp/{}-rollback.toml", topo.host.name());
    fs::write(&file, "[[network]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\nuplink = \"up0\"\n\n[[network]]\nname = \"b\"\nsubnet = \"10.2.0.0/24\"\nuplink = \"up0\"\nbridge = \"busy0\"\n").expect("write");
    refused(
        &topo,
        &nf,
        &before,
        &["apply", "-f", &file],
        &[
            "apply refused at `+ network b",
            "busy0 already exists",
            "nothing was changed",
        ],
    );
    // A failure no check can foresee (the dataplane pinned with another ct-max, which only
    // opening it tells): what the apply created goes again, and the message says so. Network
    // a turned forwarding on: it goes off again with a.
    pin_dataplane_with_ct_max_1024(&topo);
    forwarding_off(&topo);
    let before = snapshot(&topo);
    fs::write(&file, NETWORKS_A_AND_B).expect("write");
    refused(
        &topo,
        &nf,
        &before,
        &["apply", "-f", &file],
        &[
            "apply failed at `+ network b",
            "cannot be resized",
            "the host is as it was before (undone: `+ network a",
        ],
    );
    assert!(!topo.host.exec_ok(&["ip", "link"]).contains("nf-a"));
    // With a removal before the failure: the removal is kept, and said to be.
    let c = ct(&topo, 0);
    fs::write(&file, format!("[[network]]\nname = \"a\"\nsubnet = \"10.1.0.0/24\"\nuplink = \"up0\"\nbackend = \"nftables\"\n\n[[container]]\nname = \"{c}\"\nnetwork = \"a\"\n")).expect("write");
    nf.ok(&["apply", "-f", &file]);
    // (Removing network a took the pinned dataplane with it: no eBPF network was left.)
    pin_dataplane_with_ct_max_1024(&topo);
    fs::write(&file, NETWORKS_A_AND_B).expect("write");
    let err = nf.fails(&["apply", "-f", &file]);
    assert!(
        err.contains(&format!(
            "done and kept (removals and settings are not undone): `- container {c}`"
        )) && !err.contains("as it was before"),
        "{err}"
    );
    let ls = nf.containers();
    assert!(ls.is_empty(), "{ls:?}");
    assert!(!topo.host.exec_ok(&["ip", "link"]).contains("nf-b"));
    unpin_dataplane(&topo);
    fs::remove_file(&file).expect("remove");
}

/// Issue #14, 4(d): an apply whose ct-max change the running dataplane refuses (a network
/// stays) would have failed after its removals; now it is refused before any change, and
/// says why.
#[test]
fn an_apply_that_would_fail_late_changes_nothing_and_says_why() {
    let (topo, nf) = host();
    let (c0, c1) = (ct(&topo, 0), ct(&topo, 1));
    let file = format!("/tmp/{}-late.toml", topo.host.name());
    let text = |ct_max: &str, with_c1: bool| {
        let mut t = format!(
            "{ct_max}[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"up0\"\n\n\
             [[container]]\nname = \"{c0}\"\nnetwork = \"web\"\n\n"
        );
        if with_c1 {
            t += &format!("[[container]]\nname = \"{c1}\"\nnetwork = \"web\"\n");
        }
        t
    };
    fs::write(&file, text("", true)).expect("write");
    nf.ok(&["apply", "-f", &file]);
    let before = snapshot(&topo);
    fs::write(&file, text("[dataplane]\nct_max = 1024\n\n", false)).expect("write");
    refused(
        &topo,
        &nf,
        &before,
        &["apply", "-f", &file],
        &[
            "apply refused at `~ dataplane: ct-max 1024",
            "the dataplane runs with ct-max 262144",
            "nothing was changed",
        ],
    );
    // Without the network (and so without the dataplane), the same change goes through.
    fs::write(&file, "[dataplane]\nct_max = 1024\n").expect("write");
    let out = nf.ok(&["apply", "-f", &file]);
    assert!(
        out.contains("- network web") && out.contains("~ dataplane: ct-max 1024"),
        "{out}"
    );
    fs::remove_file(&file).expect("remove");
}

#[test]
fn concurrent_commands_do_not_corrupt_the_state() {
    let (topo, nf) = host_with_web();
    let bin = netfast_bin();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let (bin, host, name) = (bin.clone(), topo.host.name().to_owned(), ct(&topo, i));
            thread::spawn(move || {
                Command::new(bin)
                    .args([
                        "--netns",
                        &host,
                        "container",
                        "create",
                        &name,
                        "--network",
                        "web",
                    ])
                    .output()
                    .expect("run netfast")
            })
        })
        .collect();
    for h in handles {
        let out = h.join().expect("thread");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ls = nf.containers();
    let mut ips: Vec<_> = ls.iter().map(|c| c.ip).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(
        ips.len(),
        8,
        "eight containers, eight distinct addresses: {ls:?}"
    );
    assert!(ls.iter().all(|c| c.drift.is_empty()), "{ls:?}");
}

#[test]
fn ls_reports_drift_when_something_is_deleted_by_hand() {
    let (topo, nf, a) = host_with_container();
    let veth = nf.containers()[0].veth.clone();
    topo.host.exec_ok(&["ip", "link", "del", &veth]);
    let text = nf.ok(&["container", "ls"]);
    assert!(text.contains(&format!("veth {veth} is missing")), "{text}");
    topo.host.exec_ok(&["ip", "addr", "flush", "dev", "nf-web"]);
    let text = nf.ok(&["network", "ls"]);
    assert!(
        text.contains("gateway 172.18.0.1 is not on nf-web"),
        "{text}"
    );
    // And `down` still cleans up what is left.
    nf.ok(&["down"]);
    assert!(!std::path::Path::new("/run/netns").join(&a).exists());
}

/// A container's namespace deleted by hand, and another made under its name (by someone
/// else: a user's own, with what they run in it), is not the container's: `container ls`
/// says so, and `container rm` leaves it alone and says what it left.
#[test]
fn a_namespace_made_again_under_a_containers_name_is_left_alone() {
    let (topo, nf, c0) = host_with_container();
    let theirs = replace_namespace(&topo, &c0);
    let drift = nf.containers().remove(0).drift;
    assert!(
        drift.iter().any(|d| d.contains("not the one netfast made")),
        "container ls must say the namespace was replaced: {drift:?}"
    );
    rm_leaves(&nf, &theirs, &c0);
}

/// A state written before netfast recorded namespace cookies gets them at the next command
/// that changes anything, for the namespaces that carry their container's mark: from then on
/// a namespace made again under the name is left alone there too.
#[test]
fn a_state_without_namespace_cookies_gets_them_at_the_next_command() {
    let (topo, nf, c0) = host_with_container();
    let path = state_file(&topo);
    let read = || -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(&path).expect("the state file")).expect("JSON")
    };
    let mut old = read();
    let had = old["containers"][0]
        .as_object_mut()
        .and_then(|c| c.remove("netns_cookie"));
    assert!(
        had.is_some(),
        "the state records the namespace's cookie: {old}"
    );
    fs::write(&path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    nf.ok(&network_create("other", "172.30.9.0/24", &[]));
    assert_eq!(
        read()["containers"][0]["netns_cookie"],
        had.unwrap(),
        "the next command records the cookie again"
    );
    let theirs = replace_namespace(&topo, &c0);
    rm_leaves(&nf, &theirs, &c0);
}

/// Found in review: a `container create` killed before it saved the namespace's cookie left
/// an intent with no cookie; the next command undid the create by deleting whatever
/// namespace then had the container's name — one its owner made since, with what they run
/// in it. netfast deletes only a namespace that carries its mark, and a namespace it makes
/// carries the mark before it has a name.
#[test]
fn an_interrupted_create_leaves_a_namespace_made_since_under_its_name() {
    let (topo, nf) = host_with_web();
    let c0 = ct(&topo, 0);
    // Killed at the bind mount that would give the namespace its name: the intent is
    // recorded, the state is not saved. The mount thread's first mount makes /run/netns
    // shared; its second is that bind mount, which the trace shows.
    let kill = "inject=mount:signal=KILL:when=2";
    let target = format!("\"/run/netns/{c0}\"");
    let at_the_bind_mount = |traced: &str| {
        let last_mount = traced.lines().rfind(|l| l.contains("mount("));
        last_mount.is_some_and(|l| l.contains(&target) && l.contains("MS_BIND"))
    };
    let create = CreateC0 {
        topo: &topo,
        nf: &nf,
        c0: &c0,
        trace: "trace=mount",
    };
    create.killed(kill, "at its namespace's bind mount", at_the_bind_mount);
    assert!(
        state_file(&topo).with_file_name("intent.json").exists(),
        "the kill came after the create recorded its intent"
    );
    // Someone removes what is left under the name and makes a namespace of their own there.
    let theirs = replace_namespace(&topo, &c0);
    // The next command that changes anything completes the interrupted create.
    let err = nf.ok_stderr(&network_create("other", "172.30.9.0/24", &[]));
    assert!(
        theirs
            .exec(&["ip", "link", "show", "theirs0"])
            .status
            .success(),
        "completing the interrupted create deleted namespace {c0}, which netfast did not \
         make; it said:\n{err}"
    );
    assert!(
        err.contains(&c0) && err.contains("left"),
        "the command must say which namespace it left alone:\n{err}"
    );
    // (A create killed once its namespace has its name is undone whole: crash_netns.)
}

/// A `container create` killed once its namespace has its name, before anything else is in
/// it (no veth, no `eth0`): the namespace carries netfast's mark on `lo` from before it had
/// its name, so the next command knows it for netfast's and removes it.
#[test]
fn an_interrupted_create_removes_the_namespace_it_named() {
    let (topo, nf) = host_with_web();
    let c0 = ct(&topo, 0);
    let create = CreateC0 {
        topo: &topo,
        nf: &nf,
        c0: &c0,
        trace: "trace=mount,sendto",
    };
    // The main thread's netlink sends before the namespace is named, in a clean run: the
    // next one (the veth pair's) is where the create is killed.
    let (out, clean) = create.traced("");
    assert!(out.status.success(), "a clean create failed:\n{clean}");
    nf.ok(&["container", "rm", &c0]);
    let main = clean.split_whitespace().next().expect("a traced call");
    let named = clean
        .lines()
        .position(|l| l.contains("MS_BIND"))
        .expect("the namespace's bind mount");
    let n = clean
        .lines()
        .take(named)
        .filter(|l| l.starts_with(main) && l.contains(" sendto("))
        .count()
        + 1;
    let inject = format!("inject=sendto:signal=KILL:when={n}");
    let named = |traced: &str| {
        traced
            .lines()
            .any(|l| l.contains("MS_BIND") && l.trim_end().ends_with("= 0"))
    };
    create.killed(&inject, "after its namespace had its name", named);
    let path = std::path::Path::new("/run/netns").join(&c0);
    assert!(path.exists(), "the namespace was named before the kill");
    nf.ok(&network_create("other", "172.30.9.0/24", &[]));
    assert!(
        !path.exists(),
        "the next command left the namespace of the interrupted create"
    );
}

/// `netfast container create c0 --network web` on `topo`'s host, under strace tracing
/// `trace`: the interrupted creates.
struct CreateC0<'a> {
    topo: &'a Topology,
    nf: &'a Netfast,
    c0: &'a str,
    trace: &'a str,
}

impl CreateC0<'_> {
    /// The create under strace, with `inject` (none if empty): what it did, and the trace.
    fn traced(&self, inject: &str) -> (std::process::Output, String) {
        let create = ["container", "create", self.c0, "--network", "web"];
        strace_netfast(self.topo, self.nf, &create, self.trace, inject)
    }

    /// The create killed by strace's `inject`: asserts that it was, `at` the point of the
    /// trace where `came` finds the kill (else `when` needs adjusting).
    fn killed(&self, inject: &str, at: &str, came: impl Fn(&str) -> bool) {
        let (out, traced) = self.traced(inject);
        assert!(
            out.status.code().is_none() && came(&traced),
            "the create was not killed {at}: adjust `when`\n{traced}"
        );
    }
}

/// Deletes namespace `name` and makes another of that name, with a link of its own.
fn replace_namespace(topo: &Topology, name: &str) -> TestNetns {
    topo.host.exec_ok(&["ip", "netns", "del", name]);
    let theirs = TestNetns::named(name);
    theirs.exec_ok(&[
        "ip", "link", "add", "theirs0", "type", "veth", "peer", "name", "theirs1",
    ]);
    theirs
}

/// `container rm c0` leaves `theirs`, its namespace's replacement, alone and says so.
fn rm_leaves(nf: &Netfast, theirs: &TestNetns, c0: &str) {
    let err = nf.ok_stderr(&["container", "rm", c0]);
    assert!(
        theirs
            .exec(&["ip", "link", "show", "theirs0"])
            .status
            .success(),
        "container rm deleted namespace {c0}, which netfast did not make; it said:\n{err}"
    );
    assert!(
        err.contains(c0) && err.contains("left"),
        "container rm must say which namespace it left alone:\n{err}"
    );
    assert!(
        nf.containers().is_empty(),
        "the container is gone from the state"
    );
}

#[test]
fn a_network_without_masquerade_is_routed_untranslated() {
    require_root();
    let topo = Topology::builder().without_bridge().route_back().build();
    let nf = Netfast::new(&topo.host);
    nf.create_network("plain", "172.18.0.0/24", &["--no-masquerade"]);
    let a = ct(&topo, 0);
    nf.ok(&["container", "create", &a, "--network", "plain"]);
    // The outside routes 172.18.0.0/24 back via the host: it sees the container itself.
    let mut capture = netfast_tests::Background::spawn(&[
        "ip",
        "netns",
        "exec",
        topo.outside.name(),
        "tcpdump",
        "-l",
        "-n",
        "-c",
        "1",
        "-i",
        "eth0",
        "icmp[icmptype] == icmp-echo",
    ]);
    capture.wait_for_text("listening on", std::time::Duration::from_secs(10));
    in_ct(
        &a,
        &["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()],
    );
    // tcpdump -c 1 exits once it has printed the echo request.
    let seen = capture.wait_exit(std::time::Duration::from_secs(10));
    let seen = String::from_utf8_lossy(&seen.stdout).into_owned();
    assert!(
        seen.contains("172.18.0.2 > 198.51.100.2"),
        "the outside saw: {seen}"
    );
    assert!(
        nf.ok(&["conntrack", "list"]).trim().is_empty(),
        "a routed network tracks no NAT flows"
    );
}

#[test]
fn commands_under_ip_netns_exec_act_on_the_same_host_as_with_netns() {
    let (topo, nf) = host();
    let bin = netfast_bin();
    let bin = bin.to_str().expect("path");
    let a = ct(&topo, 0);
    let mut create = vec![bin];
    create.extend(network_create("web", "172.18.0.0/24", &[]));
    topo.host.exec_ok(&create);
    topo.host
        .exec_ok(&[bin, "container", "create", &a, "--network", "web"]);
    in_ct(
        &a,
        &["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()],
    );
    let flows = nf.ok(&["conntrack", "list"]);
    assert!(
        flows.contains("src=172.18.0.2"),
        "--netns sees the dataplane made under ip netns exec:\n{flows}"
    );
    assert!(nf.ok(&["container", "ls"]).contains(&a));
}

#[test]
fn apply_puts_a_network_on_the_backend_its_file_names_and_moves_it() {
    let (topo, nf) = host();
    let file = format!("/tmp/{}-backend.toml", topo.host.name());
    let text = |backend: &str| {
        format!(
            "[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"up0\"\nbackend = \"{backend}\"\n\n\
             [[container]]\nname = \"{c}\"\nnetwork = \"web\"\n\n\
             [[publish]]\nnetwork = \"web\"\nspec = \"8080:{c}:80\"\n",
            c = ct(&topo, 0)
        )
    };
    fs::write(&file, text("nftables")).expect("write apply file");
    let first = nf.ok(&["apply", "-f", &file]);
    assert!(
        first.contains("+ network web 172.18.0.0/24 uplink up0 backend nftables"),
        "{first}"
    );
    assert_eq!(nf.networks()[0].backend, "nftables");
    let table = || {
        topo.host
            .exec_ok(&["nft", "list", "table", "ip", "netfast"])
    };
    let rules = table();
    assert!(
        rules.contains("tcp dport 8080 dnat to 172.18.0.2:80"),
        "{rules}"
    );
    assert_eq!(nf.ok(&["apply", "-f", &file]).trim(), "no changes");
    assert_eq!(table(), rules, "a second apply changed the rules");
    // Another backend in the file: the network moves, its rules with it.
    fs::write(&file, text("iptables")).expect("write apply file");
    nf.ok(&["apply", "-f", &file]);
    assert_eq!(nf.networks()[0].backend, "iptables");
    assert!(
        !topo
            .host
            .exec_ok(&["nft", "list", "tables"])
            .contains("netfast")
    );
    let saved = topo.host.exec_ok(&["iptables-save", "-t", "nat"]);
    assert!(
        saved.contains(
            "-A NETFAST-PUBLISHED -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:80"
        ),
        "{saved}"
    );
    // The settings say which of them the fallback takes.
    let out = nf.run(&["config", "--timeout-udp", "120"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("note: network(s) web on the nftables/iptables backends take the timeouts"),
        "{err}"
    );
    // On to the eBPF dataplane: no netfilter rule left, and the bridge's route_localnet (which
    // the fallbacks turn on) is off again.
    let route_localnet = || {
        topo.host
            .exec_ok(&["sysctl", "-n", "net.ipv4.conf.nf-web.route_localnet"])
            .trim()
            .to_owned()
    };
    assert_eq!(route_localnet(), "1");
    fs::write(&file, text("ebpf")).expect("write apply file");
    nf.ok(&["apply", "-f", &file]);
    assert!(
        !topo.host.exec_ok(&["iptables-save"]).contains("NETFAST"),
        "iptables rules left"
    );
    assert_eq!(route_localnet(), "0");
    fs::remove_file(&file).expect("remove apply file");
}

#[test]
fn a_backend_that_cannot_work_is_refused_and_nothing_changes() {
    let (topo, nf) = host();
    let before = snapshot(&topo);
    // The host namespace without nft on its PATH: the nftables backend cannot work there.
    let out = nf.run_env(
        &network_create("web", "172.18.0.0/24", &["--backend", "nftables"]),
        &[("PATH", "/nonexistent")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--backend nftables: nftables is not usable")
            && err.contains("netfast doctor"),
        "{err}"
    );
    assert_eq!(snapshot(&topo), before, "a refused create changed the host");
}

/// A directory of links to the host's iptables tools and nothing else: a PATH without nft.
struct IptablesOnlyPath(Removed);

impl IptablesOnlyPath {
    fn new(name: &str) -> IptablesOnlyPath {
        let dir = Removed::dir(&format!("netfast-path-{name}"));
        for from in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
            for e in fs::read_dir(from).into_iter().flatten().flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if file.starts_with("iptables") || file.starts_with("xtables") {
                    let _ = std::os::unix::fs::symlink(e.path(), dir.join(&file));
                }
            }
        }
        assert!(dir.join("iptables").exists(), "no iptables to link");
        IptablesOnlyPath(dir)
    }
}

/// Where eBPF cannot run (the bpf system call fails, as on a kernel without
/// CONFIG_BPF_SYSCALL), `--backend auto` takes nftables, or iptables where nft is missing
/// too, and the network does its job: the doctor says why, containers reach the outside
/// masqueraded, their flows are listed, `down` removes it all.
#[test]
fn auto_takes_nftables_then_iptables_where_ebpf_cannot_run() {
    require_root();
    let no_bpf = env!("CARGO_BIN_EXE_netfast-no-bpf");
    for backend in ["nftables", "iptables"] {
        let (topo, nf) = host();
        let path = IptablesOnlyPath::new(topo.host.name());
        let run_code = |args: &[&str]| {
            let mut cmd = Command::new(no_bpf);
            cmd.arg(netfast_bin())
                .args(["--netns", topo.host.name()])
                .args(args);
            if backend == "iptables" {
                cmd.env("PATH", &*path.0);
            }
            let out = cmd.output().expect("run netfast-no-bpf");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.code(), text, err)
        };
        let run = |args: &[&str]| {
            let (code, text, err) = run_code(args);
            assert_eq!(
                code,
                Some(0),
                "netfast {args:?} without bpf(2), {backend}:\n{text}\n{err}"
            );
            text
        };
        let out = run(&network_create("web", "172.18.0.0/24", &[]));
        let serves = match backend {
            "nftables" => "nftables table `ip netfast` serves it",
            _ => "iptables chains NETFAST-… serve it",
        };
        assert!(out.contains(serves), "{backend}: {out}");
        let ls: Vec<NetworkRow> =
            serde_json::from_str(&run(&["network", "ls", "--json"])).expect("json");
        assert_eq!(ls[0].backend, backend);
        let c0 = ct(&topo, 0);
        run(&["container", "create", &c0, "--network", "web"]);
        in_ct(
            &c0,
            &["ping", "-c", "1", "-W", "2", &OUTSIDE_ADDR.to_string()],
        );
        let flows = run(&["conntrack", "list"]);
        assert!(
            flows.contains("icmp") && flows.contains("src=172.18.0.2"),
            "{backend}: {flows}"
        );
        let (code, doctor, _) = run_code(&["doctor"]);
        assert_eq!(code, Some(1), "a FAIL exits with 1:\n{doctor}");
        assert!(
            doctor.contains("FAIL  ebpf        bpf syscall: the kernel has no bpf syscall"),
            "{doctor}"
        );
        run(&["down"]);
        drop(nf);
    }
}

/// Interface names that nftables or iptables would read as syntax or wildcards, or that the
/// kernel refuses.
const HOSTILE_NAMES: [&str; 8] = [
    "x\"accept;#",
    "eth+",
    "e*",
    "a b",
    "a\nb",
    "-j",
    "sixteen-bytes-xx",
    "up0}",
];

/// `nft ARGS` in `ns` with `input` on stdin: its status and what it printed.
fn nft_in(ns: &str, args: &[&str], input: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to nft");
    let out = child.wait_with_output().expect("nft");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Hostile interface names are refused wherever a name enters (the command line, an apply
/// file, a state file edited by hand), with a clear error and nothing changed; the nftables
/// input is JSON in which a name is only ever a string, which `nft -c` accepts as it is.
#[test]
fn hostile_interface_names_are_refused_and_never_become_rule_syntax() {
    let (topo, nf) = host();
    nf.create_network("web", "172.18.0.0/24", &["--backend", "nftables"]);
    let before = snapshot(&topo);
    let rules = || {
        topo.host
            .exec_ok(&["nft", "list", "table", "ip", "netfast"])
    };
    let table = rules();
    let file = format!("/tmp/{}-names.toml", topo.host.name());
    for bad in HOSTILE_NAMES {
        for backend in ["nftables", "iptables"] {
            for (bridge, uplink) in [(bad, "up0"), ("nf-x", bad)] {
                // `--flag=value`: clap takes a value that starts with '-' only so.
                let (bridge_arg, uplink_arg) =
                    (format!("--bridge={bridge}"), format!("--uplink={uplink}"));
                let err = nf.fails(&[
                    "network",
                    "create",
                    "x",
                    "--subnet",
                    "172.20.0.0/24",
                    &bridge_arg,
                    &uplink_arg,
                    "--backend",
                    backend,
                ]);
                assert!(
                    err.contains("interface name") || err.contains("1 to 15"),
                    "--bridge {bridge:?} --uplink {uplink:?}: {err}"
                );
                assert_eq!(snapshot(&topo), before, "{bad:?} changed the host");
            }
        }
        // TOML basic strings take Rust's escapes for '"' and control characters.
        fs::write(
            &file,
            format!(
                "[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"up0\"\n\
                 backend = \"nftables\"\n\n[[network]]\nname = \"x\"\nsubnet = \"172.20.0.0/24\"\n\
                 uplink = \"up0\"\nbridge = {bad:?}\n"
            ),
        )
        .expect("write apply file");
        let err = nf.fails(&["apply", "-f", &file]);
        assert!(
            err.contains("interface name") || err.contains("1 to 15"),
            "apply with bridge {bad:?}: {err}"
        );
        assert_eq!(
            snapshot(&topo),
            before,
            "apply with {bad:?} changed the host"
        );
    }
    fs::remove_file(&file).expect("remove apply file");
    assert_eq!(rules(), table, "a refused command changed the rules");

    // A state file edited by hand: refused before any name is used.
    let state_path = state_file(&topo);
    let good = fs::read_to_string(&state_path).expect("state");
    fs::write(&state_path, good.replace("\"nf-web\"", "\"eth+\"")).expect("edit state");
    let err = nf.fails(&["network", "rm", "web"]);
    assert!(
        err.contains("holds a name netfast refuses") && err.contains("eth+"),
        "{err}"
    );
    fs::write(&state_path, &good).expect("restore state");
    assert_eq!(rules(), table);

    // The renderer: what the state gives passes `nft -c`; and even a name that validation
    // would refuse stays a string (an interface literally called that), not syntax.
    let state: netfast::loader::model::State = serde_json::from_str(&good).expect("a state file");
    let batch = |s: &netfast::loader::model::State| {
        let r = netfast::netfilter::rules::Rules::of(s, netfast::loader::model::Backend::Nftables);
        netfast::netfilter::render_nft::nft_batch(&r, &Default::default(), true).to_json()
    };
    let (ok, said) = nft_in(topo.host.name(), &["-c", "-j", "-f", "-"], &batch(&state));
    assert!(ok, "nft -c refused netfast's own rules: {said}");
    let scratch = netfast_tests::TestNetns::new("n");
    let mut hostile = state.clone();
    hostile.networks[0].bridge = "x\"accept;#".into();
    let (ok, said) = nft_in(scratch.name(), &["-j", "-f", "-"], &batch(&hostile));
    assert!(ok, "{said}");
    let listed = scratch.exec_ok(&["nft", "-j", "list", "chain", "ip", "netfast", "forward"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("json");
    let verdicts: Vec<_> = listed["nftables"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .map(|e| {
            assert!(
                e.iter().any(|s| s.to_string().contains("x\\\"accept;#")),
                "every forward rule names the bridge whole: {e:?}"
            );
            e.last().expect("a verdict").clone()
        })
        .collect();
    assert_eq!(
        verdicts
            .iter()
            .filter(|v| v.get("accept").is_some())
            .count(),
        3,
        "only the network's own three accepts: {verdicts:?}"
    );
}

/// Input that would take the host's own traffic is refused with the reason and a fix, and
/// changes nothing: a subnet over an address or a route of the host, or in a range that is
/// loopback, multicast, reserved, link-local or "this network"; an uplink that is `lo` or one
/// of netfast's own links; a publication to a subnet's network or broadcast address.
#[test]
fn input_that_takes_the_hosts_traffic_is_refused() {
    let (topo, nf, _c0) = host_with_container();
    let veth = nf.containers()[0].veth.clone();
    topo.host.exec_ok(&[
        "ip",
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        &OUTSIDE_ADDR.to_string(),
    ]);
    let before = snapshot(&topo);
    let create = |subnet: &str, uplink: &str| {
        nf.fails(&[
            "network", "create", "x", "--subnet", subnet, "--uplink", uplink,
        ])
    };
    for (subnet, uplink, said) in [
        (
            "198.51.100.0/25",
            "up0",
            "overlaps 198.51.100.1/24, an address of up0",
        ),
        (
            "198.0.0.0/8",
            "up0",
            "overlaps 198.51.100.1/24, an address of up0",
        ),
        (
            "203.0.113.0/25",
            "up0",
            "overlaps the host's route to 203.0.113.0/24 (dev up0)",
        ),
        ("127.0.0.0/8", "up0", "loopback (127.0.0.0/8)"),
        ("224.1.0.0/16", "up0", "multicast (224.0.0.0/4)"),
        ("240.0.0.0/24", "up0", "reserved (240.0.0.0/4"),
        ("169.254.0.0/16", "up0", "link-local (169.254.0.0/16)"),
        ("0.0.0.0/8", "up0", "\"this network\" (0.0.0.0/8)"),
        ("172.20.0.0/24", "lo", "uplink lo is the loopback interface"),
        (
            "172.20.0.0/24",
            "nf-web",
            "uplink nf-web is the bridge of netfast network `web`",
        ),
        ("172.20.0.0/24", &veth, "is the veth of netfast container"),
    ] {
        let err = create(subnet, uplink);
        assert!(
            err.contains(said) && err.contains("pick"),
            "--subnet {subnet} --uplink {uplink}: {err}"
        );
        assert_eq!(
            snapshot(&topo),
            before,
            "--subnet {subnet} changed the host"
        );
    }
    for (target, what) in [("172.18.0.0", "network"), ("172.18.0.255", "broadcast")] {
        let err = nf.fails(&["publish", "web", &format!("8090:{target}:80")]);
        assert!(
            err.contains(&format!("the {what} address of network `web`")),
            "{err}"
        );
    }
    assert!(nf.ok(&["publish", "ls"]).lines().count() <= 1);
    assert_eq!(snapshot(&topo), before);
}

/// The host netfast keys `ns` by: where its state and pins live.
fn host_of(ns: &str) -> Host {
    let _in = NetnsGuard::enter(ns).expect("enter");
    Host::current().expect("host")
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o777
}

/// netfast's state is private (directories 0700, files 0600) and never written or read
/// through a symbolic link planted in it; read-only commands create no state and no pins.
#[test]
fn state_files_are_private_never_followed_and_read_only_commands_create_nothing() {
    let (topo, nf) = host();
    // Read-only commands on a host netfast never served: nothing appears.
    let fresh = netfast_tests::TestNetns::new("r");
    let reader = Netfast::new(&fresh);
    let h = host_of(fresh.name());
    for args in [
        &["stats"][..],
        &["conntrack", "list"],
        &["network", "ls"],
        &["container", "ls"],
        &["publish", "ls"],
        &["config"],
    ] {
        reader.run(args);
        assert!(
            !h.state_dir().exists(),
            "`netfast {}` created {}",
            args.join(" "),
            h.state_dir().display()
        );
        assert!(
            !h.pin_dir().expect("bpffs").exists(),
            "`netfast {}` created pins",
            args.join(" ")
        );
    }
    nf.create_network("web", "172.18.0.0/24", &[]);
    let dir = host_of(topo.host.name()).state_dir();
    assert_eq!(mode(std::path::Path::new("/run/netfast")), 0o700);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    assert_eq!(mode(&dir.join("lock")), 0o600);
    // A link at the temporary name: the next save replaces it, the target is untouched.
    let victim = std::env::temp_dir().join(format!("{}-victim", topo.host.name()));
    fs::write(&victim, "precious").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.join("state.json.tmp")).expect("plant a link");
    nf.ok(&["container", "create", &ct(&topo, 0), "--network", "web"]);
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "precious");
    assert_eq!(mode(&dir.join("state.json")), 0o600);
    // The state file itself a link: refused, by name, and nothing is read through it.
    let state = dir.join("state.json");
    let copy = std::env::temp_dir().join(format!("{}-state", topo.host.name()));
    fs::copy(&state, &copy).expect("copy");
    fs::remove_file(&state).expect("remove");
    std::os::unix::fs::symlink(&copy, &state).expect("plant a link");
    let err = nf.fails(&["container", "ls"]);
    assert!(err.contains("symbolic link"), "{err}");
    fs::remove_file(&state).expect("remove the link");
    fs::copy(&copy, &state).expect("restore");
    // A directory made looser by hand is made private again by the next change.
    fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    nf.ok(&["container", "rm", &ct(&topo, 0)]);
    assert_eq!(mode(&dir), 0o700);
    for f in [victim, copy] {
        fs::remove_file(f).expect("remove");
    }
}

/// How many flock requests wait on `path` (its inode, from /proc/locks).
fn flock_waiters(path: &std::path::Path) -> usize {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(ino) = fs::metadata(path).map(|m| m.ino()) else {
        return 0;
    };
    fs::read_to_string("/proc/locks")
        .expect("/proc/locks")
        .lines()
        .filter(|l| l.contains("->") && l.contains("FLOCK"))
        .filter(|l| {
            l.split_whitespace().any(|w| {
                w.rsplit(':').next() == Some(&ino.to_string()) && w.matches(':').count() == 2
            })
        })
        .count()
}

/// A [`host_with_web`], its [`Host`] and the path of its lock file.
fn host_with_lock() -> (Topology, Netfast, Host, std::path::PathBuf) {
    let (topo, nf) = host_with_web();
    let h = host_of(topo.host.name());
    let lock = h.state_dir().join("lock");
    (topo, nf, h, lock)
}

/// Waits up to ten seconds for `n` processes to wait on the lock file `lock`; panics with
/// `otherwise` if they do not.
fn wait_for_waiters(lock: &std::path::Path, n: usize, otherwise: &str) {
    assert!(
        netfast_tests::cmd::wait_until(std::time::Duration::from_secs(10), || {
            flock_waiters(lock) == n
        }),
        "{otherwise}"
    );
}

/// `down` removes the lock file while it holds it: a command that waited on it must not
/// go on holding a lock that nobody else can see (the next command would run beside it).
#[test]
fn a_command_that_waited_on_a_removed_lock_takes_the_new_one() {
    let (_topo, _nf, h, lock) = host_with_lock();
    let first = netfast::loader::state::Locked::acquire(&h, true).expect("lock");
    let waiter = {
        let h = h.clone();
        thread::spawn(move || netfast::loader::state::Locked::acquire(&h, true).expect("lock"))
    };
    wait_for_waiters(&lock, 1, "the second command never waited for the lock");
    // What `down` does last, with the lock held.
    first.remove().expect("remove");
    let second = waiter.join().expect("thread");
    // Whoever comes next (making the directory and the lock file if they are missing, as a
    // command does) must wait for `second`: the lock it holds is the one at the path.
    let out = Command::new("sh")
        .args([
            "-c",
            "mkdir -p \"$(dirname \"$1\")\" && flock -n -x \"$1\" true",
            "sh",
        ])
        .arg(&lock)
        .output()
        .expect("flock");
    assert!(
        !out.status.success(),
        "the lock file at {} is not the one the waiting command holds",
        lock.display()
    );
    drop(second);
}

/// Two `config` commands at once, each changing one setting: both changes stay.
#[test]
fn concurrent_config_changes_both_count() {
    let (_topo, nf, h, lock) = host_with_lock();
    // Hold the lock shared: a command that reads under a shared lock gets past it and waits
    // only to write, so both have read the old settings when it is let go; one that reads
    // and writes under one exclusive lock waits before reading.
    let holder = netfast::loader::state::Locked::acquire(&h, false).expect("lock");
    let config = |flag: &str, value: &str| nf.spawn(&["config", flag, value]);
    let a = config("--timeout-udp", "111");
    let b = config("--timeout-icmp", "22");
    wait_for_waiters(&lock, 2, "both commands should be waiting for the lock");
    drop(holder);
    for c in [a, b] {
        let out = c.wait_exit(std::time::Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cfg: ConfigJson = nf.json(&["config", "--json"]);
    assert_eq!(
        (cfg.timeouts.udp, cfg.timeouts.icmp),
        (111, 22),
        "one change was lost: {cfg:?}"
    );
}

/// A host is known by its namespace, not by a name: a second name for it (`ip netns attach`)
/// finds its networks, and a name that now points at another namespace finds none of them.
/// (The machine's root namespace plays no part: two test namespaces with confusing names do.)
#[test]
fn a_host_is_known_by_its_namespace_not_by_its_name() {
    let (topo, _nf) = host_with_web();
    let names = |ns: &str| -> Vec<String> {
        let ls = netfast_tests::run_ok(&[
            netfast_bin().to_str().expect("path"),
            "--netns",
            ns,
            "network",
            "ls",
            "--json",
        ]);
        let ls: Vec<NetworkRow> = serde_json::from_str(&ls).expect("json");
        ls.into_iter().map(|n| n.name).collect()
    };
    let a = topo.host.name().to_owned();
    // A second name that sorts before the first (a name-keyed netfast switched keys).
    let alias = netfast_tests::netns::NetnsAlias::new(&a[..a.len() - 1], &a);
    assert_eq!(names(alias.name()), ["web"], "under its second name");
    assert_eq!(names(&a), ["web"], "under its first name");
    let text = netfast_tests::run_ok(&[
        netfast_bin().to_str().expect("path"),
        "--netns",
        alias.name(),
        "network",
        "ls",
    ]);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.starts_with("host: network namespace")
                && l.contains(alias.name())
                && l.contains(&a)
                && l.contains("(key netns-")),
        "{text}"
    );
    // The alias now names another namespace: it has no network, whatever its name was.
    let other = netfast_tests::TestNetns::new("b");
    alias.repoint(other.name());
    assert_eq!(
        names(alias.name()),
        Vec::<String>::new(),
        "another namespace"
    );
    assert_eq!(names(other.name()), Vec::<String>::new());
    assert_eq!(names(&a), ["web"]);
    // And netfast's own `host` file names the namespace for humans.
    let h = host_of(&a);
    let label = fs::read_to_string(h.state_dir().join("host")).expect("host file");
    assert!(label.contains(&a), "{label}");
}

/// A publication to an address (no container of netfast's behind it) goes with its network:
/// from the state and from the dataplane, so that a later network with the same id does not
/// revive it.
#[test]
fn network_rm_removes_its_publications_by_address() {
    let (topo, nf) = host();
    let create = |name: &str| nf.create_network(name, "172.30.2.0/24", &[]);
    create("web");
    nf.ok(&["publish", "web", "8090:172.30.2.50:80"]);
    let out = nf.ok(&["network", "rm", "web"]);
    assert!(
        out.contains("unpublished 8090:172.30.2.50:80/tcp on web"),
        "{out}"
    );
    let listed = nf.ok(&["publish", "ls", "--json"]);
    assert_eq!(listed.trim(), "[]", "publish ls after network rm: {listed}");
    // A new network takes the same id: nothing of the old publication is in its dataplane.
    create("web2");
    let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
    let dp = Dataplane::open_existing(&Host::current().expect("host"))
        .expect("open")
        .expect("a dataplane");
    let published = netfast::maps::published(dp.ebpf()).expect("read");
    assert!(
        published.is_empty(),
        "stale DNAT entries: {}",
        published.len()
    );
}

/// A `publish` killed half-way (after its allow-list entry, before its DNAT entry) leaves
/// entries that no publication owns; the next `publish` removes them (from the killed one's
/// intent record) before it takes the same allow-list id, so the stale list never admits the
/// new publication's clients.
#[test]
fn a_killed_publish_leaves_nothing_a_later_publication_inherits() {
    let (topo, nf) = host_with_web();
    let publish = [
        "publish",
        "web",
        "9090:172.18.0.60:80",
        "--allow",
        "192.0.2.0/24",
    ];
    // A run to count its bpf calls: the last map update is the DNAT entry's.
    let trace = std::env::temp_dir().join(format!("{}-publish.trace", topo.host.name()));
    let mut argv = vec!["strace", "-f", "-qq", "-e", "trace=bpf", "-o"];
    let trace_s = trace.to_str().expect("path").to_owned();
    argv.push(&trace_s);
    argv.extend(nf.argv(&publish));
    netfast_tests::run_ok(&argv);
    nf.ok(&["unpublish", "web", "9090:172.18.0.60:80"]);
    let text = fs::read_to_string(&trace).expect("trace");
    fs::remove_file(&trace).expect("remove trace");
    let last = text
        .lines()
        .rfind(|l| l.contains("bpf(BPF_MAP_UPDATE_ELEM"))
        .expect("the publish updated a map")
        .to_owned();
    let pid = last.split_whitespace().next().expect("pid").to_owned();
    let n = text
        .lines()
        .filter(|l| l.starts_with(&format!("{pid} ")) && l.contains(" bpf("))
        .position(|l| l == last)
        .expect("in the trace")
        + 1;
    assert!(
        nf.killed_at("bpf", n, &publish),
        "the publish was not killed"
    );
    assert_eq!(nf.ok(&["publish", "ls", "--json"]).trim(), "[]");
    let allow_entries = || {
        let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter");
        let dp = Dataplane::open_existing(&Host::current().expect("host"))
            .expect("open")
            .expect("a dataplane");
        (
            netfast::maps::allow_entries(dp.ebpf()).expect("allow"),
            netfast::maps::published(dp.ebpf())
                .expect("published")
                .len(),
        )
    };
    let (stale, _) = allow_entries();
    assert_eq!(
        stale,
        vec![(1, "192.0.2.0/24".parse().expect("net"))],
        "the kill should have come between the allow-list and the DNAT entry"
    );
    // The next command finishes what the killed one left (its intent record) and says so.
    let next = nf.run(&[
        "publish",
        "web",
        "9091:172.18.0.61:80",
        "--allow",
        "203.0.113.0/24",
    ]);
    let err = String::from_utf8_lossy(&next.stderr);
    assert!(
        next.status.success()
            && err.contains("an interrupted `netfast publish web 9090:172.18.0.60:80/tcp`"),
        "{err}"
    );
    let (entries, published) = allow_entries();
    assert_eq!(entries, vec![(1, "203.0.113.0/24".parse().expect("net"))]);
    assert_eq!(published, 1, "only the new publication's DNAT entry");
}

/// A fast-path entry for an address no container holds — what a command killed between
/// writing the entry and saving the state leaves, where its intent does not name it (a build
/// before the Docker plugin wrote intents) — shows as drift in `network ls`, and goes with
/// the next command that takes the lock, which says so; the containers' own entries stay as
/// they were.
#[test]
fn a_fast_path_entry_of_no_container_goes_with_the_next_command() {
    let (_topo, nf, _c0) = host_with_container();
    let before = nf.endpoints();
    assert_eq!(before.len(), 1, "one container, one endpoint: {before:?}");
    let ep = *before.values().next().expect("the container's endpoint");
    // Into the container's veth: an ifindex that another interface may hold by now.
    let stray = Ipv4Addr::new(172, 18, 0, 77);
    nf.plant_endpoint(stray, &ep);
    assert!(
        nf.endpoints().contains_key(&stray),
        "the stray entry was not planted"
    );
    let drift: Vec<String> = nf.networks().into_iter().flat_map(|n| n.drift).collect();
    assert!(
        drift
            .iter()
            .any(|d| d.contains(&format!("fast-path entry for {stray}"))),
        "`network ls` does not report the stray entry: {drift:?}"
    );
    let err = nf.ok_stderr(&network_create("epswweb2", "172.30.2.0/24", &[]));
    assert_eq!(
        nf.endpoints(),
        before,
        "only the stray entry goes; it said:\n{err}"
    );
    assert!(
        err.contains(&format!(
            "removed fast-path endpoint {stray} (interface #{}), which no container of the state \
             holds",
            ep.ifindex
        )),
        "{err}"
    );
    let drift: Vec<String> = nf.networks().into_iter().flat_map(|n| n.drift).collect();
    assert!(drift.is_empty(), "drift after the sweep: {drift:?}");
}

/// The state deleted by hand while a network and a container run: the marks on their links
/// say they are netfast's, but nothing says they are leftovers of a crash (no intent, and no
/// state that lacks them). The next command must not sweep them away — a running
/// container's namespace with them — but refuse, saying what it found and how to go on;
/// `down` removes them when asked to.
#[test]
fn a_lost_state_does_not_make_running_containers_leftovers() {
    let (topo, nf, c0) = host_with_container();
    let state = state_file(&topo);
    fs::remove_file(&state).expect("delete the state");
    let before = snapshot(&topo);
    let err = refused(
        &topo,
        &nf,
        &before,
        &["container", "create", &ct(&topo, 1), "--network", "web"],
        &["state.json", "is missing", "netfast down"],
    );
    assert!(
        std::path::Path::new("/run/netns").join(&c0).exists(),
        "container {c0}'s namespace is gone; the command said:\n{err}"
    );
    nf.ok(&["down"]);
    assert!(
        !std::path::Path::new("/run/netns").join(&c0).exists(),
        "`down` left container {c0}'s namespace"
    );
}

/// A container's veth renamed by hand carries its mark under a name the state does not
/// know. The next command must not take it for a leftover of a killed create: the container
/// is the state's, and neither its veth nor its namespace may go.
#[test]
fn a_renamed_veth_of_a_known_container_is_left_alone() {
    let (topo, nf, c0) = host_with_container();
    let veth = nf.containers()[0].veth.clone();
    topo.host
        .exec_ok(&["ip", "link", "set", &veth, "name", "renamedveth0"]);
    let err = nf.ok_stderr(&network_create("epswweb3", "172.30.3.0/24", &[]));
    assert!(
        topo.host
            .exec(&["ip", "link", "show", "renamedveth0"])
            .status
            .success(),
        "the renamed veth of container {c0} was deleted; the command said:\n{err}"
    );
    assert!(
        std::path::Path::new("/run/netns").join(&c0).exists(),
        "the namespace of container {c0}, which the state knows, was deleted; it said:\n{err}"
    );
    assert!(
        err.contains("renamedveth0") && err.contains(&c0),
        "the command must say what it left alone:\n{err}"
    );
}

/// `netfast config` under running programs changes the settings, never the clock's reference
/// point: the programs read the config map while it is written, and a new reference point
/// (calibrated again by the new process) read beside the old one would move their clock by
/// the time between the two calibrations — every mapping expired at once, or none for days.
#[test]
fn config_leaves_the_running_clock_alone() {
    let (_topo, nf, _c0) = host_with_container();
    let before = nf.config_map();
    assert_ne!(before.clock_hz, 0, "the programs' clock was not calibrated");
    // A calibration takes a second boundary as its reference: once the clock is past the
    // next one, a calibration made now would take another.
    while netfast::maps::monotonic_now() <= before.clock_m0 + 1 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    nf.ok(&["config", "--timeout-udp", "77"]);
    let after = nf.config_map();
    assert_eq!(after.udp, 77, "the setting was not written");
    assert_eq!(
        (
            after.clock_hz,
            after.clock_j0,
            after.clock_m0,
            after.clock_advance
        ),
        (
            before.clock_hz,
            before.clock_j0,
            before.clock_m0,
            before.clock_advance
        ),
        "netfast config rewrote the running clock's reference point"
    );
}

/// A layer-3 uplink (a tun device: no Ethernet header) is refused for the eBPF dataplane,
/// whose programs parse Ethernet frames, with the backend to use instead; `--backend auto`
/// takes nftables for it and says why.
#[test]
fn a_layer3_uplink_is_refused_for_ebpf_and_auto_takes_nftables() {
    let (topo, nf) = host();
    let h = &topo.host;
    h.exec_ok(&["ip", "tuntap", "add", "dev", "tun0", "mode", "tun"]);
    h.exec_ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "tun0"]);
    h.exec_ok(&["ip", "link", "set", "tun0", "up"]);
    let before = snapshot(&topo);
    let create = |backend: &str| {
        vec![
            "network",
            "create",
            "vpn",
            "--subnet",
            "172.18.0.0/24",
            "--uplink",
            "tun0",
            "--backend",
        ]
        .into_iter()
        .chain([backend])
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let args = create("ebpf");
    let err = nf.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        err.contains("uplink tun0 has no Ethernet header")
            && err.contains("layer 3")
            && err.contains("--backend nftables"),
        "{err}"
    );
    assert_eq!(snapshot(&topo), before, "a refused create changed the host");
    let args = create("auto");
    let out = nf.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.contains("--backend auto: uplink tun0 has no Ethernet header")
            && out.contains("it takes nftables"),
        "{out}"
    );
    assert_eq!(nf.networks()[0].backend, "nftables");
}

/// Issue #14, item 3, as reproduced there: `network create` killed when it saves its state
/// (after the bridge, its address and the programs exist) left nf-web, which the next
/// `network create` refused ("pass --adopt") and `down` left behind. Now `network ls`
/// reports it, the next command removes it first (and says so), and `down` after another
/// such kill leaves nothing; a killed `container create` leaves no namespace or veth behind
/// once the next command ran.
#[test]
fn a_command_killed_when_it_saves_its_state_is_completed_by_the_next() {
    let (topo, nf) = host();
    let create = network_create("web", "172.18.0.0/24", &[]);
    // Rename #1 makes the intent record, #2 the state.
    assert!(nf.killed_at("renameat", 2, &create), "not killed");
    assert!(topo.host.exec_ok(&["ip", "link"]).contains("nf-web"));
    let ls = nf.ok(&["network", "ls"]);
    assert!(
        ls.contains("not in the state: an interrupted `netfast network create web`"),
        "{ls}"
    );
    let err = nf.ok_stderr(&create);
    assert!(
        err.contains("an interrupted `netfast network create web` left changes")
            && err.contains("deleted bridge nf-web"),
        "{err}"
    );
    let alias = topo.host.exec_ok(&["ip", "-d", "link", "show", "nf-web"]);
    assert!(alias.contains("alias netfast netns-"), "{alias}");
    // container create killed at its state save: the next command removes its namespace
    // and veth, and IPAM hands the address to the next container.
    let (a, b) = (ct(&topo, 0), ct(&topo, 1));
    assert!(
        nf.killed_at(
            "renameat",
            2,
            &["container", "create", &a, "--network", "web"]
        ),
        "not killed"
    );
    assert!(fs::metadata(format!("/run/netns/{a}")).is_ok());
    let ls = nf.containers();
    assert_eq!(ls[0].name, a, "{ls:?}");
    assert!(
        ls[0]
            .drift
            .first()
            .is_some_and(|d| d.contains("not in the state")),
        "{ls:?}"
    );
    let out = nf.ok(&["container", "create", &b, "--network", "web"]);
    assert!(out.contains("at 172.18.0.2/24"), "{out}");
    assert!(
        fs::metadata(format!("/run/netns/{a}")).is_err(),
        "{a} is left"
    );
    nf.ok(&["container", "rm", &b]);
    // Killed again, then `down`: nothing of netfast's is left.
    nf.ok(&["network", "rm", "web"]);
    assert!(nf.killed_at("renameat", 2, &create), "not killed");
    let out = nf.ok(&["down"]);
    assert!(out.contains("deleted bridge nf-web"), "{out}");
    assert!(!topo.host.exec_ok(&["ip", "link"]).contains("nf-"));
    let h = host_of(topo.host.name());
    assert!(fs::metadata(h.pin_dir().expect("pin dir")).is_err());
    assert!(fs::metadata(h.state_dir()).is_err());
}

/// A change as `--json` prints it: the test's own reading of the format, so that a change to
/// the format fails here rather than in a user's script.
#[derive(Debug, PartialEq, serde::Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
enum Change {
    BridgeCreated {
        bridge: String,
        gateway: std::net::Ipv4Addr,
        prefix: u8,
    },
    NetworkServed {
        network: String,
        backend: String,
        bridge: String,
        uplink: String,
        masquerade: Option<Masquerade>,
    },
    ContainerCreated {
        container: String,
        network: String,
        ip: std::net::Ipv4Addr,
        veth: String,
    },
    Published {
        publication: Publication,
    },
    Unpublished {
        network: String,
        spec: String,
    },
    ContainerRemoved {
        container: String,
        ip: std::net::Ipv4Addr,
    },
    BridgeDeleted {
        bridge: String,
    },
    NetworkRemoved {
        network: String,
    },
    DataplaneRemoved {
        why: String,
    },
    Step {
        action: Step,
    },
    NoChanges,
    NothingToRemove,
    #[serde(other)]
    Other,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Masquerade {
    subnet: String,
    address: std::net::Ipv4Addr,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Publication {
    network: String,
    spec: String,
    container: String,
    container_ip: std::net::Ipv4Addr,
}

#[derive(Debug, PartialEq, serde::Deserialize)]
struct Step {
    action: String,
    of: serde_json::Value,
}

/// Runs a command with `--json`; stdout must be nothing but the array of changes.
fn changes(nf: &Netfast, args: &[&str]) -> Vec<Change> {
    let mut argv = args.to_vec();
    argv.push("--json");
    let out = nf.ok(&argv);
    serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "`netfast {}` printed no JSON array of changes ({e}): {out}",
            argv.join(" ")
        )
    })
}

#[test]
fn mutating_commands_print_their_changes_as_json() {
    let (topo, nf) = host();
    let c0 = ct(&topo, 0);
    let made = changes(
        &nf,
        &[
            "network",
            "create",
            "web",
            "--subnet",
            "172.18.0.0/24",
            "--uplink",
            "up0",
        ],
    );
    assert!(
        made.contains(&Change::BridgeCreated {
            bridge: "nf-web".into(),
            gateway: "172.18.0.1".parse().unwrap(),
            prefix: 24,
        }),
        "{made:?}"
    );
    assert!(
        made.contains(&Change::NetworkServed {
            network: "web".into(),
            backend: "ebpf".into(),
            bridge: "nf-web".into(),
            uplink: "up0".into(),
            masquerade: Some(Masquerade {
                subnet: "172.18.0.0/24".into(),
                address: netfast_tests::topology::UPLINK_ADDR,
            }),
        }),
        "{made:?}"
    );
    let made = changes(&nf, &["container", "create", &c0, "--network", "web"]);
    assert!(
        matches!(&made[..], [Change::ContainerCreated { container, network, ip, veth }]
            if *container == c0 && network == "web" && ip.to_string() == "172.18.0.2"
                && !veth.is_empty()),
        "{made:?}"
    );
    let spec = format!("8080:{c0}:80");
    let made = changes(&nf, &["publish", "web", &spec]);
    assert_eq!(
        made,
        [Change::Published {
            publication: Publication {
                network: "web".into(),
                spec: format!("{spec}/tcp"),
                container: c0.clone(),
                container_ip: "172.18.0.2".parse().unwrap(),
            }
        }]
    );
    let gone = changes(&nf, &["unpublish", "web", &spec]);
    assert_eq!(
        gone,
        [Change::Unpublished {
            network: "web".into(),
            spec: format!("{spec}/tcp"),
        }]
    );
    let gone = changes(&nf, &["container", "rm", &c0]);
    assert_eq!(
        gone,
        [Change::ContainerRemoved {
            container: c0.clone(),
            ip: "172.18.0.2".parse().unwrap(),
        }]
    );
    let gone = changes(&nf, &["network", "rm", "web"]);
    assert_eq!(
        gone,
        [
            Change::DataplaneRemoved {
                why: "last_network".into()
            },
            Change::BridgeDeleted {
                bridge: "nf-web".into()
            },
            Change::NetworkRemoved {
                network: "web".into()
            },
        ]
    );
    // apply: a step per change, then "no changes"; down: what it removed.
    let file = format!("/tmp/{}-apply-json.toml", topo.host.name());
    fs::write(
        &file,
        format!(
            "[[network]]\nname = \"db\"\nsubnet = \"172.19.0.0/24\"\nuplink = \"up0\"\n\n\
             [[container]]\nname = \"{c0}\"\nnetwork = \"db\"\n"
        ),
    )
    .expect("write apply file");
    let steps: Vec<String> = changes(&nf, &["apply", "-f", &file])
        .into_iter()
        .map(|c| match c {
            Change::Step { action } => action.action,
            other => panic!("apply printed {other:?}, not a step"),
        })
        .collect();
    assert_eq!(steps, ["create_network", "create_container"]);
    assert_eq!(changes(&nf, &["apply", "-f", &file]), [Change::NoChanges]);
    fs::remove_file(&file).expect("remove apply file");
    let down = changes(&nf, &["down"]);
    assert!(
        down.contains(&Change::DataplaneRemoved { why: "down".into() })
            && down.contains(&Change::NetworkRemoved {
                network: "db".into()
            }),
        "{down:?}"
    );
    assert_eq!(changes(&nf, &["down"]), [Change::NothingToRemove]);
}

/// Found in review: state an older netfast left (it keyed namespaces by their first name) is
/// moved under the new key at any command; a namespace *named* like another namespace's
/// current key (`netns-<cookie>`) had that namespace's whole state taken for its own legacy
/// state and moved away, and the other host's next command found none.
#[test]
fn a_namespace_named_like_another_hosts_key_leaves_that_state_alone() {
    require_root();
    /// The namespace and the state directories, removed however the test ends.
    struct Cleanup {
        ns: String,
        dirs: Vec<std::path::PathBuf>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
            for d in &self.dirs {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    // A key no namespace of this boot has (cookies count up from 1).
    let name = format!("netns-9{}{nanos:09}", std::process::id());
    let theirs = std::path::Path::new(netfast::host::STATE_ROOT).join(&name);
    let mut cleanup = Cleanup {
        ns: name.clone(),
        dirs: vec![theirs.clone()],
    };
    let status = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .expect("ip");
    assert!(status.success(), "ip netns add {name}");
    let own = {
        let _in = NetnsGuard::enter(&name).expect("enter the namespace");
        netfast::host::netns_cookie().expect("its cookie")
    };
    cleanup
        .dirs
        .push(std::path::Path::new(netfast::host::STATE_ROOT).join(format!("netns-{own}")));
    fs::create_dir_all(&theirs).expect("their state directory");
    let sentinel = "{\"another host's\": true}";
    fs::write(theirs.join("state.json"), sentinel).expect("their state");
    let out = Command::new(netfast_bin())
        .args(["--netns", &name, "network", "ls"])
        .output()
        .expect("netfast");
    assert_eq!(
        fs::read_to_string(theirs.join("state.json"))
            .ok()
            .as_deref(),
        Some(sentinel),
        "`netfast --netns {name} network ls` moved another host's state ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Found in review: two commands at once in a host with an older netfast's state both saw
/// it, and both moved it under the new key; the second's rename found nothing left to move
/// and the command failed ("moving /run/netfast/<name> to …: No such file or directory").
/// Here the first is held by strace at its rename while the second runs: both must succeed,
/// and the state must be moved once.
#[test]
fn two_commands_at_once_move_an_older_netfasts_state_once() {
    require_root();
    let ns = TestNetns::new("lg");
    let nf = Netfast::new(&ns);
    let root = std::path::Path::new(netfast::host::STATE_ROOT);
    let legacy = root.join(ns.name());
    let own = ns.within(|| netfast::host::netns_cookie().expect("its cookie"));
    let moved = root.join(format!("netns-{own}"));
    /// The state directories, removed however the test ends.
    struct Cleanup(Vec<std::path::PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for d in &self.0 {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
    let _cleanup = Cleanup(vec![legacy.clone(), moved.clone()]);
    fs::create_dir_all(&legacy).expect("the older state directory");
    fs::write(legacy.join("state.json"), "{}").expect("the older state");

    // The first command, held for 5 s as it enters its first rename (the move).
    let delay = "inject=rename,renameat,renameat2:delay_enter=5000000:when=1";
    let mut argv = vec!["strace", "-f", "-qq", "-o", "/dev/null", "-e", delay];
    argv.extend(nf.argv(&["network", "ls"]));
    let first = netfast_tests::cmd::Background::spawn(&argv);
    let strace = first.pid();
    assert!(
        netfast_tests::cmd::wait_until(std::time::Duration::from_secs(20), || {
            held_at_rename(strace)
        }),
        "the first command never reached its rename under strace:\n{}",
        first.stderr_so_far()
    );
    // The second, meanwhile: it moves the state.
    nf.ok(&["network", "ls"]);
    assert!(
        moved.join("state.json").exists() && !legacy.exists(),
        "the second command did not move the older state"
    );
    assert!(
        held_at_rename(strace),
        "the second command took longer than the first was held: this run tested nothing"
    );
    let out = first.wait_exit(std::time::Duration::from_secs(30));
    assert!(
        out.status.success(),
        "the first command failed once the second had moved the state:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(moved.join("state.json").exists() && !legacy.exists());
}

/// The numbers of rename(2), renameat(2) and renameat2(2) on this architecture.
fn rename_calls() -> &'static [&'static str] {
    if cfg!(target_arch = "x86_64") {
        &["82", "264", "316"]
    } else if cfg!(target_arch = "aarch64") {
        &["38", "276"]
    } else {
        panic!("this test knows the numbers of rename(2) on x86_64 and aarch64 only")
    }
}

/// Whether a child of the strace `strace_pid` stands at the entry of a rename:
/// /proc/<tid>/syscall names the call a stopped task is in.
fn held_at_rename(strace_pid: u32) -> bool {
    let calls = rename_calls();
    let parent = strace_pid.to_string();
    // /proc/<pid>/stat: "pid (comm) state ppid …"; comm may hold spaces, not ')'.
    let child_of_strace = |stat: &str| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            == Some(parent.as_str())
    };
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|p| fs::read_to_string(p.path().join("stat")).is_ok_and(|s| child_of_strace(&s)))
        .any(|p| {
            fs::read_dir(p.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|t| fs::read_to_string(t.path().join("syscall")).ok())
                .any(|s| {
                    s.split_whitespace()
                        .next()
                        .is_some_and(|nr| calls.contains(&nr))
                })
        })
}

/// Found in review: `network create` turns IPv4 forwarding on in the host before it
/// installs the dataplane, and a create that then failed rolled everything back but that:
/// the host was left routing between all its interfaces. A failing create changes nothing.
#[test]
fn a_network_create_that_fails_leaves_forwarding_as_it_was() {
    let (topo, nf) = host();
    // bpf(2) fails from its sixth call on: past the probes that pick the backend, so that
    // the create turns forwarding on and then cannot load the dataplane. The trace shows
    // that it got that far.
    let (out, traced) = create_web_from_off(&topo, &nf, "inject=bpf:error=EPERM:when=6+");
    assert!(
        !out.status.success(),
        "network create succeeded without bpf(2): {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let failed = traced.lines().position(|l| l.contains("(INJECTED)"));
    assert!(
        matches!((forwarding_write(&traced), failed), (Some(on), Some(f)) if on < f),
        "the create did not turn forwarding on before its bpf(2) failed: adjust `when`\n{traced}"
    );
    assert_eq!(
        forwarding(&topo),
        "0",
        "a failed network create left forwarding on ({})",
        String::from_utf8_lossy(&out.stderr)
    );
    // And one that succeeds turns it on.
    nf.create_network("web", "172.18.0.0/24", &[]);
    assert_eq!(forwarding(&topo), "1");
}

/// Found in review: a `network create` that fails turns forwarding off again, but one killed
/// after it turned forwarding on left it on for good: the next command removed the network
/// and left the host routing between all its interfaces. The create records that forwarding
/// was off in its intent, and the command that completes it turns it off again when no
/// network is left to need it.
#[test]
fn a_network_create_killed_after_it_turned_forwarding_on_turns_it_off_again() {
    let (topo, nf) = host();
    // Killed at its sixth bpf(2) call: past the probes, after forwarding went on (the trace
    // shows it), before the dataplane is attached.
    let kill = "inject=bpf:signal=KILL:when=6";
    let (out, traced) = create_web_from_off(&topo, &nf, kill);
    assert!(
        out.status.code().is_none() && forwarding_write(&traced).is_some(),
        "the create was not killed after it turned forwarding on: adjust `when`\n{traced}"
    );
    assert_eq!(
        forwarding(&topo),
        "1",
        "the killed create left forwarding on"
    );
    // The next command that changes anything completes the interrupted create.
    let err = nf.ok_stderr(&["config", "--fast-path", "on"]);
    assert!(nf.networks().is_empty(), "the network was removed again");
    assert_eq!(
        forwarding(&topo),
        "0",
        "completing the interrupted create left forwarding on; it said:\n{err}"
    );
    // So does `down` after such a kill.
    let (out, traced) = create_web_from_off(&topo, &nf, kill);
    assert!(
        out.status.code().is_none() && forwarding_write(&traced).is_some(),
        "the second create was not killed after it turned forwarding on\n{traced}"
    );
    nf.ok(&["down"]);
    assert_eq!(
        forwarding(&topo),
        "0",
        "down after a killed create left forwarding on"
    );
    // Forwarding turned off by hand while network web runs: a create of another network
    // turns it on, and killed after that, the next command leaves it on for web. It is
    // killed at the first bpf(2) call after the write, counted in a clean run.
    nf.create_network("web", "172.18.0.0/24", &[]);
    let db = network_create("db", "172.19.0.0/24", &["--backend", "ebpf"]);
    forwarding_off(&topo);
    let (out, clean) = strace_netfast(&topo, &nf, &db, FORWARDING_CALLS, "");
    assert!(
        out.status.success(),
        "a clean create of db failed:\n{clean}"
    );
    nf.ok(&["network", "rm", "db"]);
    let write = forwarding_write(&clean).expect("the create turned forwarding on");
    let n = clean
        .lines()
        .take(write)
        .filter(|l| l.contains(" bpf("))
        .count()
        + 1;
    forwarding_off(&topo);
    let (out, traced) = strace_netfast(
        &topo,
        &nf,
        &db,
        FORWARDING_CALLS,
        &format!("inject=bpf:signal=KILL:when={n}"),
    );
    assert!(
        out.status.code().is_none() && forwarding_write(&traced).is_some(),
        "the create of db was not killed after it turned forwarding on\n{traced}"
    );
    nf.ok(&["config", "--fast-path", "on"]);
    assert_eq!(nf.networks().len(), 1, "web stays, db goes");
    assert_eq!(forwarding(&topo), "1", "web needs forwarding");
}

/// `network create web` (eBPF) under strace with `inject`, forwarding off before it: its
/// output and the trace of its openat and bpf calls.
fn create_web_from_off(
    topo: &Topology,
    nf: &Netfast,
    inject: &str,
) -> (std::process::Output, String) {
    forwarding_off(topo);
    let web = network_create("web", "172.18.0.0/24", &["--backend", "ebpf"]);
    strace_netfast(topo, nf, &web, FORWARDING_CALLS, inject)
}

/// The host's `net.ipv4.ip_forward`.
fn forwarding(topo: &Topology) -> String {
    topo.host
        .exec_ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .trim()
        .to_owned()
}

fn forwarding_off(topo: &Topology) {
    topo.host
        .exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"]);
}

/// The line of a trace where netfast opens `ip_forward` to write it.
fn forwarding_write(trace: &str) -> Option<usize> {
    trace
        .lines()
        .position(|l| l.contains("net/ipv4/ip_forward") && l.contains("O_WRONLY"))
}

/// The calls the forwarding tests trace: the sysctl's open, and bpf(2) to inject into.
const FORWARDING_CALLS: &str = "trace=openat,bpf";

/// `netfast ARGS` under `strace -f` with the trace expression `trace` and the injection
/// `inject` (none if empty): its output and the trace.
fn strace_netfast(
    topo: &Topology,
    nf: &Netfast,
    args: &[&str],
    trace: &str,
    inject: &str,
) -> (std::process::Output, String) {
    let file = std::env::temp_dir().join(format!("{}-strace", topo.host.name()));
    let file_arg = file.to_str().expect("UTF-8 path").to_owned();
    let mut argv = vec!["strace", "-f", "-o", &file_arg, "-e", trace];
    if !inject.is_empty() {
        argv.extend(["-e", inject]);
    }
    argv.extend(nf.argv(args));
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .expect("strace (apt-get install strace)");
    let text = fs::read_to_string(&file).unwrap_or_default();
    let _ = fs::remove_file(&file);
    (out, text)
}
