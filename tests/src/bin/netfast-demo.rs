//! The demo behind `cargo xtask demo`: the default topology, built in network namespaces,
//! driven through the `netfast` binary the way a user drives it. Everything is removed at the
//! end, even if a step fails.

use std::time::Duration;

use netfast_tests::{
    Background, Netfast, Topology,
    clients::{curl, wait_listening},
    in_netns,
    netfast_cli::network_create,
    require_root, run_in,
    topology::{OUTSIDE_ADDR, UPLINK, UPLINK_ADDR},
};

fn step(title: &str) {
    println!("\n== {title}");
}

/// Prints a command as a user would type it, then what it printed.
fn show(host: &str, nf: &Netfast, args: &[&str]) {
    println!("$ netfast --netns {host} {}", args.join(" "));
    print!("{}", nf.ok(args));
}

fn main() {
    netfast_tests::log_to_stderr("netfast-demo");
    require_root();
    step("topology: an \"outside\" namespace and a \"host\" namespace joined by the uplink up0");
    let topo = Topology::builder().without_bridge().build();
    let host = topo.host.name().to_owned();
    println!("host namespace:    {host} (up0 {UPLINK_ADDR}/24)");
    println!(
        "outside namespace: {} (eth0 {OUTSIDE_ADDR}/24, no route to any container)",
        topo.outside.name()
    );
    let nf = Netfast::new(&topo.host);

    step("a network and two containers, made by netfast over netlink");
    show(&host, &nf, &network_create("web", "172.18.0.0/24", &[]));
    let (c1, c2) = (format!("{host}c1"), format!("{host}c2"));
    show(
        &host,
        &nf,
        &["container", "create", &c1, "--network", "web"],
    );
    show(
        &host,
        &nf,
        &["container", "create", &c2, "--network", "web"],
    );
    show(&host, &nf, &["network", "ls"]);
    show(&host, &nf, &["container", "ls"]);

    step("SNAT: the containers reach the outside with the uplink's address");
    let server = netfast_tests::clients::outside_web_server(topo.outside.name());
    let mut watch = nf.spawn(&["conntrack", "watch"]);
    watch.wait_for_text("watching for events", Duration::from_secs(10));
    let url = format!("http://{OUTSIDE_ADDR}:8000/");
    for c in [&c1, &c2] {
        println!("$ ip netns exec {c} curl -s -o /dev/null -w '%{{http_code}}' {url}");
        println!("{}", curl(c, &url, &[]));
    }
    println!("$ ip netns exec {c1} ping -c 2 {OUTSIDE_ADDR}");
    let ping = run_in(
        &c1,
        &["ping", "-c", "2", "-i", "0.2", &OUTSIDE_ADDR.to_string()],
    );
    print!(
        "{}",
        ping.lines()
            .filter(|l| l.contains("bytes from") || l.contains("packet loss"))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    let log = server.stop();
    println!("what the outside server logged (it only ever saw {UPLINK_ADDR}):");
    print!("{}", String::from_utf8_lossy(&log.stderr));

    step("DNAT: publish container 2's port 80 on the host's port 8080 (docker run -p 8080:80)");
    let web = Background::spawn(&in_netns(&c2, &["python3", "-m", "http.server", "80"]));
    wait_listening(&c2, "tcp", 80, "the container's web server");
    show(&host, &nf, &["publish", "web", &format!("8080:{c2}:80")]);
    let published = format!("http://{UPLINK_ADDR}:8080/");
    for (who, ns, url) in [
        ("an outside client", topo.outside.name(), published.as_str()),
        (
            "container 1 (hairpin: back in through the host)",
            c1.as_str(),
            published.as_str(),
        ),
        (
            "the host itself, to 127.0.0.1 (socket-level translation)",
            host.as_str(),
            "http://127.0.0.1:8080/",
        ),
    ] {
        println!("{who}: $ ip netns exec {ns} curl {url}");
        println!("{}", curl(ns, url, &[]));
    }
    println!("what container 2's server logged (the outside client keeps its address):");
    print!("{}", String::from_utf8_lossy(&web.stop().stderr));

    step("the conntrack table: both directions of every flow");
    show(&host, &nf, &["conntrack", "list"]);
    println!("events seen by `netfast conntrack watch` meanwhile:");
    // The outside client's and the hairpin flow to port 8080 were the last to start.
    watch.wait_for_lines(
        "show both flows to port 8080",
        Duration::from_secs(10),
        2,
        |l| l.contains("[NEW]") && l.contains("dport=8080"),
    );
    print!("{}", String::from_utf8_lossy(&watch.stop().stdout));

    step("the host's netfilter nat table stayed empty: netfast translated in eBPF");
    println!("$ ip netns exec {host} nft list tables");
    let tables = topo.host.exec_ok(&["nft", "list", "tables"]);
    println!(
        "{}",
        if tables.trim().is_empty() {
            "(none)"
        } else {
            tables.trim()
        }
    );

    step(
        "counters per hook, per network and per drop reason; fast_path counts the packets the programs forwarded past the host's routing and netfilter",
    );
    show(&host, &nf, &["stats"]);

    step("the same network on the nftables fallback, for hosts where eBPF cannot be used");
    println!("(`netfast network create … --backend nftables` puts a network there from the start;");
    println!(" here an apply file moves `web` and its containers, and the rules follow the state)");
    let file = format!("/tmp/{host}-demo.toml");
    std::fs::write(
        &file,
        format!(
            "[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"{UPLINK}\"\nbackend = \"nftables\"\n\n\
             [[container]]\nname = \"{c1}\"\nnetwork = \"web\"\n\n\
             [[container]]\nname = \"{c2}\"\nnetwork = \"web\"\n\n\
             [[publish]]\nnetwork = \"web\"\nspec = \"8080:{c2}:80\"\n"
        ),
    )
    .expect("write the demo's apply file");
    show(&host, &nf, &["apply", "-f", &file]);
    let _ = std::fs::remove_file(&file);
    show(&host, &nf, &["network", "ls"]);
    println!("$ ip netns exec {host} nft list table ip netfast");
    print!(
        "{}",
        topo.host
            .exec_ok(&["nft", "list", "table", "ip", "netfast"])
    );

    step("netfast doctor: what this host has, lacks, and what conflicts with netfast");
    println!("$ netfast --netns {host} doctor");
    let out = nf.run(&["doctor"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!(
        "(the benchmark against iptables and nftables: cargo xtask bench, see docs/PERFORMANCE.md)"
    );

    step("clean up");
    show(&host, &nf, &["down"]);
    drop(nf);
    drop(topo);
    println!("namespaces, links, pins and state removed");
}
