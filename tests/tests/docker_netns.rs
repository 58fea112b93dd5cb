//! Docker runs its containers on netfast: a real dockerd (`"iptables": false`) in the test's
//! host namespace, with `netfast docker-plugin` as its network driver, an image made from
//! busybox-static, and real clients outside (see `netfast_tests::docker`).

use std::time::Duration;

use netfast_tests::{
    Netfast, Topology,
    clients::outside_web_server,
    cmd::wait_until,
    docker::{Docker, IMAGE, INDEX},
    require_root,
    topology::{OUTSIDE_ADDR, UPLINK, UPLINK_ADDR},
};

const SUBNET: &str = "172.30.0.0/24";

/// Fields drop in order: Docker (its containers and networks, dockerd, the plugin), then
/// `netfast down`, then the namespaces.
struct Lab {
    docker: Docker,
    nf: Netfast,
    topo: Topology,
}

fn lab() -> Lab {
    require_root();
    let topo = Topology::builder().without_bridge().build();
    let nf = Netfast::new(&topo.host);
    let docker = Docker::start(&topo.host);
    Lab { docker, nf, topo }
}

impl Lab {
    /// `docker network create -d netfast -o uplink=up0 --subnet 172.30.0.0/24 web`: its ID.
    fn network(&self) -> String {
        self.docker.ok(&[
            "network",
            "create",
            "-d",
            "netfast",
            "-o",
            &format!("uplink={UPLINK}"),
            "--subnet",
            SUBNET,
            "web",
        ])
    }

    /// `docker run -d --network web -p … httpd`: its endpoint ID on `web`.
    fn web_server(&self, name: &str, publish: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name, "--network", "web"];
        for p in publish {
            args.extend(["-p", p]);
        }
        args.extend([IMAGE, "httpd", "-f", "-p", "80", "-h", "/www"]);
        self.docker.ok(&args);
        self.docker.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.web.EndpointID}}",
            name,
        ])
    }

    /// What an outside client gets from `url` (empty when it cannot connect).
    fn outside_get(&self, url: &str) -> String {
        let out = self
            .topo
            .outside
            .exec(&["curl", "-s", "--max-time", "3", url]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until an outside client gets the container's page at `url`.
    fn served(&self, url: &str, when: &str) {
        assert!(
            wait_until(Duration::from_secs(20), || self
                .outside_get(url)
                .contains(INDEX)),
            "{when}: an outside client does not get {url}: {:?}\n--- plugin:\n{}",
            self.outside_get(url),
            self.docker.plugin_output()
        );
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.nf.ok(args)).expect("netfast --json")
    }

    /// `docker run --rm --network web busybox wget -qO- url`, given ten seconds (busybox's
    /// own `wget -T` crashes in its static build).
    fn container_get(&self, url: &str) -> String {
        self.docker.ok(&[
            "run",
            "--rm",
            "--network",
            "web",
            IMAGE,
            "timeout",
            "10",
            "wget",
            "-qO-",
            url,
        ])
    }
}

#[test]
fn docker_runs_published_containers_on_netfast_networks() {
    let lab = lab();
    // Bad options are refused by name, and nothing is made.
    let err = lab.docker.fails(&[
        "network",
        "create",
        "-d",
        "netfast",
        "-o",
        "uplnk=up0",
        "--subnet",
        SUBNET,
        "bad",
    ]);
    assert!(err.contains("netfast has no option -o uplnk"), "{err}");
    let err = lab.docker.fails(&[
        "network",
        "create",
        "-d",
        "netfast",
        "-o",
        "uplink=nope0",
        "--subnet",
        SUBNET,
        "bad",
    ]);
    assert!(err.contains("uplink nope0 does not exist"), "{err}");
    assert_eq!(
        lab.json(&["network", "ls", "--json"]),
        serde_json::json!([])
    );

    let net_id = lab.network();
    let nets = lab.json(&["network", "ls", "--json"]);
    let bridge = format!("nf-{}", &net_id[..12]);
    assert_eq!(
        nets[0]["name"],
        format!("docker-{}", &net_id[..12]),
        "{nets}"
    );
    assert_eq!(
        (&nets[0]["subnet"], &nets[0]["gateway"], &nets[0]["bridge"]),
        (
            &serde_json::json!(SUBNET),
            &serde_json::json!("172.30.0.1"),
            &serde_json::json!(bridge)
        ),
        "{nets}"
    );
    assert_eq!(nets[0]["backend"], "ebpf", "{nets}");

    // `-p 8080:80` serves an outside client, through netfast's DNAT.
    let ep = lab.web_server("web1", &["8080:80", "5000-5001:5000-5001/udp"]);
    let url = format!("http://{UPLINK_ADDR}:8080/");
    lab.served(&url, "after docker run -p 8080:80");
    let name = format!("docker-{}", &ep[..12]);
    let flows = lab.nf.ok(&["conntrack", "list", "--container", &name]);
    assert!(
        flows.contains(&format!("src={OUTSIDE_ADDR} dst={UPLINK_ADDR} sport="))
            && flows.contains("dport=8080"),
        "{flows}"
    );
    // One state: the endpoint is a container record whose namespace is Docker's, and its
    // ports are publications (the two UDP ports one range).
    let cts = lab.json(&["container", "ls", "--json"]);
    assert_eq!(cts[0]["name"], name, "{cts}");
    assert_eq!(cts[0]["docker_endpoint"], ep.as_str(), "{cts}");
    assert_eq!(cts[0]["drift"], serde_json::json!([]), "{cts}");
    let sandbox = lab
        .docker
        .ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web1"]);
    assert_eq!(cts[0]["netns"], sandbox.as_str(), "{cts}");
    let specs: Vec<String> = lab
        .json(&["publish", "ls", "--json"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|p| p["spec"].as_str().expect("spec").to_owned())
        .collect();
    assert_eq!(
        specs,
        [
            format!("8080:{name}:80/tcp"),
            format!("5000-5001:{name}:5000-5001/udp")
        ]
    );
    let stats = lab.json(&["stats", "--json"]);
    let counted = stats["networks"]
        .as_array()
        .expect("networks")
        .iter()
        .any(|n| n["name"] == nets[0]["name"] && n["rx_packets"].as_u64() > Some(0));
    assert!(counted, "{stats}");

    // No NAT rule of Docker's (nor of anyone's: netfast's eBPF dataplane needs none).
    let nat = lab.topo.host.exec_ok(&["iptables", "-t", "nat", "-S"]);
    assert!(
        !nat.contains("DOCKER") && !nat.contains("MASQUERADE") && !nat.contains("DNAT"),
        "{nat}"
    );
    let ruleset = lab.topo.host.exec_ok(&["nft", "list", "ruleset"]);
    assert!(
        !ruleset.to_lowercase().contains("docker") && !ruleset.contains("masquerade"),
        "{ruleset}"
    );

    // A container reaches the outside, masqueraded as the uplink's address.
    let server = outside_web_server(lab.topo.outside.name());
    let page = lab.container_get(&format!("http://{OUTSIDE_ADDR}:8000/"));
    assert!(page.contains("Directory listing"), "{page}");
    assert!(
        wait_until(Duration::from_secs(5), || server
            .stderr_so_far()
            .contains(&format!("{UPLINK_ADDR} - -"))),
        "the outside server did not see the uplink's address: {}",
        server.stderr_so_far()
    );
    // Hairpin: another container reaches web1 through the published port.
    assert!(lab.container_get(&url).contains(INDEX));

    // `docker rm -f` ends the publication with the container.
    lab.docker.ok(&["rm", "-f", "web1"]);
    assert_eq!(
        lab.json(&["publish", "ls", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        lab.json(&["container", "ls", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(lab.outside_get(&url), "");

    // An endpoint whose veth vanished (deleted by hand here; a namespace gone without Docker
    // saying so, on a real host) goes when Docker makes the next one, and Docker's own
    // removal of it later is no error.
    let gone = lab.web_server("web2", &[]);
    let veth = lab.json(&["container", "ls", "--json"])[0]["veth"]
        .as_str()
        .expect("veth")
        .to_owned();
    lab.topo.host.exec_ok(&["ip", "link", "del", &veth]);
    let kept = lab.web_server("web3", &[]);
    let cts = lab.json(&["container", "ls", "--json"]);
    assert_eq!(
        cts.as_array().map(Vec::len),
        Some(1),
        "the dead endpoint {gone} stayed: {cts}"
    );
    assert_eq!(cts[0]["docker_endpoint"], kept.as_str(), "{cts}");
    assert!(lab.docker.plugin_output().contains("lost its veth"));
    lab.docker.ok(&["rm", "-f", "web2", "web3"]);
    assert_eq!(
        lab.json(&["container", "ls", "--json"]),
        serde_json::json!([])
    );

    // `docker network rm` removes the bridge and the network.
    lab.docker.ok(&["network", "rm", "web"]);
    assert_eq!(
        lab.json(&["network", "ls", "--json"]),
        serde_json::json!([])
    );
    let links = lab.topo.host.exec_ok(&["ip", "-br", "link"]);
    assert!(!links.contains(&bridge), "{links}");

    // Without -o uplink, the interface of the default route.
    lab.topo.route_default_via_outside();
    lab.docker.ok(&[
        "network",
        "create",
        "-d",
        "netfast",
        "-o",
        "name=auto",
        "--subnet",
        SUBNET,
        "auto",
    ]);
    let nets = lab.json(&["network", "ls", "--json"]);
    assert_eq!(
        (&nets[0]["name"], &nets[0]["uplink"], &nets[0]["bridge"]),
        (
            &serde_json::json!("auto"),
            &serde_json::json!(UPLINK),
            &serde_json::json!("nf-auto")
        ),
        "{nets}"
    );
    lab.docker.ok(&["network", "rm", "auto"]);

    // Where eBPF cannot be used: the same, on netfast's nftables rules.
    lab.docker.ok(&[
        "network",
        "create",
        "-d",
        "netfast",
        "-o",
        "backend=nftables",
        "--subnet",
        SUBNET,
        "web",
    ]);
    assert_eq!(
        lab.json(&["network", "ls", "--json"])[0]["backend"],
        "nftables"
    );
    lab.web_server("web2", &["8080:80"]);
    lab.served(&url, "on the nftables backend");
    assert!(
        lab.container_get(&url).contains(INDEX),
        "hairpin on nftables"
    );
    lab.docker.ok(&["rm", "-f", "web2"]);
    assert_eq!(lab.outside_get(&url), "");
    lab.docker.ok(&["network", "rm", "web"]);
    let ruleset = lab.topo.host.exec_ok(&["nft", "list", "ruleset"]);
    assert!(!ruleset.contains("netfast"), "{ruleset}");
}

#[test]
fn restarts_of_the_plugin_and_of_dockerd_keep_a_running_container_reachable() {
    let mut lab = lab();
    lab.network();
    let ep = lab.web_server("web1", &["8080:80"]);
    let url = format!("http://{UPLINK_ADDR}:8080/");
    lab.served(&url, "after docker run");

    // The plugin stops: its socket goes, the dataplane stays.
    let out = lab.docker.stop_plugin();
    assert!(String::from_utf8_lossy(&out.stdout).contains("networks and containers keep running"));
    assert!(
        !lab.docker.socket().exists(),
        "the socket outlived the plugin"
    );
    lab.served(&url, "while the plugin is stopped");
    // A new plugin takes over: Docker's next calls reach it.
    lab.docker.start_plugin();
    assert!(
        lab.container_get(&url).contains(INDEX),
        "hairpin after the plugin restarted"
    );
    lab.served(&url, "after the plugin restarted");

    // dockerd stops (live-restore): the container runs on, reachable.
    lab.docker.stop_daemon();
    lab.served(&url, "while dockerd is stopped");
    lab.docker.start_daemon();
    let running = lab.docker.ok(&["ps", "--format", "{{.Names}}"]);
    assert_eq!(running, "web1");
    lab.served(&url, "after dockerd restarted");
    let cts = lab.json(&["container", "ls", "--json"]);
    assert_eq!(cts[0]["docker_endpoint"], ep.as_str(), "{cts}");
    assert_eq!(cts[0]["drift"], serde_json::json!([]), "{cts}");

    // And Docker still tells netfast when the container goes.
    lab.docker.ok(&["rm", "-f", "web1"]);
    assert_eq!(
        lab.json(&["publish", "ls", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(
        lab.json(&["container", "ls", "--json"]),
        serde_json::json!([])
    );
    assert_eq!(lab.outside_get(&url), "");
}
