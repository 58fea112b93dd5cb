//! Docker runs its containers on netfast: a real dockerd (`"iptables": false`) in the test's
//! host namespace, with `netfast docker-plugin` as its network driver, an image made from
//! busybox-static, and real clients outside (see `netfast_tests::docker`).

use std::time::Duration;

use netfast_tests::{
    Netfast, Topology,
    clients::outside_web_server,
    cmd::wait_until,
    docker::{Docker, IMAGE, INDEX},
    netfast_cli::ContainerRow,
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
        self.docker_network(&format!("uplink={UPLINK}"), "web")
    }

    /// `docker network create -d netfast -o OPTION --subnet 172.30.0.0/24 NAME`: its ID.
    fn docker_network(&self, option: &str, name: &str) -> String {
        self.docker.ok(&[
            "network", "create", "-d", "netfast", "-o", option, "--subnet", SUBNET, name,
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

    /// `docker rm -f web1` ends its publications and its container record, and the
    /// published `url` serves no more.
    fn removed_with_the_container(&self, url: &str) {
        self.docker.ok(&["rm", "-f", "web1"]);
        let pubs = self.nf.publications();
        assert!(pubs.is_empty(), "{pubs:?}");
        let cts = self.nf.containers();
        assert!(cts.is_empty(), "{cts:?}");
        assert_eq!(self.outside_get(url), "");
    }

    /// The containers netfast knows: Docker's endpoint `ep` first, without drift.
    fn endpoint_is_known(&self, ep: &str) -> Vec<ContainerRow> {
        let cts = self.nf.containers();
        assert_eq!(cts[0].docker_endpoint.as_deref(), Some(ep), "{cts:?}");
        assert!(cts[0].drift.is_empty(), "{cts:?}");
        cts
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
    for (option, says) in [
        ("uplnk=up0", "netfast has no option -o uplnk"),
        ("uplink=nope0", "uplink nope0 does not exist"),
    ] {
        let err = lab.docker.fails(&[
            "network", "create", "-d", "netfast", "-o", option, "--subnet", SUBNET, "bad",
        ]);
        assert!(err.contains(says), "-o {option}: {err}");
    }
    let nets = lab.nf.networks();
    assert!(nets.is_empty(), "{nets:?}");

    let net_id = lab.network();
    let nets = lab.nf.networks();
    let net = &nets[0];
    let bridge = format!("nf-{}", &net_id[..12]);
    assert_eq!(net.name, format!("docker-{}", &net_id[..12]), "{nets:?}");
    assert_eq!(
        (net.subnet.as_str(), net.gateway.to_string(), &net.bridge),
        (SUBNET, "172.30.0.1".to_owned(), &bridge),
        "{nets:?}"
    );
    assert_eq!(net.backend, "ebpf", "{nets:?}");

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
    let cts = lab.endpoint_is_known(&ep);
    assert_eq!(cts[0].name, name, "{cts:?}");
    // Its veth carries netfast's mark, as the command line's containers' do.
    let link = lab
        .topo
        .host
        .exec_ok(&["ip", "-j", "link", "show", "dev", &cts[0].veth]);
    let links: Vec<serde_json::Value> = serde_json::from_str(&link).expect("ip -j link");
    let alias = links[0]["ifalias"].as_str().unwrap_or_default().to_owned();
    assert!(
        alias.starts_with("netfast ") && alias.ends_with(&format!(" container {name}")),
        "{link}"
    );
    let sandbox = lab
        .docker
        .ok(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", "web1"]);
    assert_eq!(cts[0].netns.as_deref(), Some(sandbox.as_str()), "{cts:?}");
    let specs: Vec<String> = lab.nf.publications().into_iter().map(|p| p.spec).collect();
    assert_eq!(
        specs,
        [
            format!("8080:{name}:80/tcp"),
            format!("5000-5001:{name}:5000-5001/udp")
        ]
    );
    let stats = lab.nf.stats();
    assert!(stats.network(&net.name).rx_packets > 0, "{stats:?}");

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
    lab.removed_with_the_container(&url);

    // An endpoint whose veth vanished (deleted by hand here; a namespace gone without Docker
    // saying so, on a real host) goes when Docker makes the next one, and Docker's own
    // removal of it later is no error.
    let gone = lab.web_server("web2", &[]);
    let veth = lab.nf.containers()[0].veth.clone();
    lab.topo.host.exec_ok(&["ip", "link", "del", &veth]);
    let kept = lab.web_server("web3", &[]);
    let cts = lab.endpoint_is_known(&kept);
    assert_eq!(cts.len(), 1, "the dead endpoint {gone} stayed: {cts:?}");
    assert!(lab.docker.plugin_output().contains("lost its veth"));
    lab.docker.ok(&["rm", "-f", "web2", "web3"]);
    let cts = lab.nf.containers();
    assert!(cts.is_empty(), "{cts:?}");

    // `docker network rm` removes the bridge and the network.
    lab.docker.ok(&["network", "rm", "web"]);
    let nets = lab.nf.networks();
    assert!(nets.is_empty(), "{nets:?}");
    let links = lab.topo.host.exec_ok(&["ip", "-br", "link"]);
    assert!(!links.contains(&bridge), "{links}");

    // What an endpoint's create cut short before the state was saved leaves (the plugin
    // killed, and Docker never asking again): a marked veth pair of an endpoint the state
    // does not know. The next command that takes the lock removes it.
    let host = &lab.topo.host;
    host.exec_ok(&[
        "ip", "link", "add", "nfleft0", "type", "veth", "peer", "name", "nfleft1",
    ]);
    let leftover = alias.replace(&name, "docker-0123456789ab");
    host.exec_ok(&["ip", "link", "set", "dev", "nfleft0", "alias", &leftover]);

    // Without -o uplink, the interface of the default route.
    lab.topo.route_default_via_outside();
    lab.docker_network("name=auto", "auto");
    let links = lab.topo.host.exec_ok(&["ip", "-br", "link"]);
    assert!(
        !links.contains("nfleft0") && !links.contains("nfleft1"),
        "the leftover pair outlived the next command: {links}"
    );
    let nets = lab.nf.networks();
    assert_eq!(
        (
            nets[0].name.as_str(),
            nets[0].uplink.as_str(),
            nets[0].bridge.as_str()
        ),
        ("auto", UPLINK, "nf-auto"),
        "{nets:?}"
    );
    lab.docker.ok(&["network", "rm", "auto"]);

    // Where eBPF cannot be used: the same, on netfast's nftables rules.
    lab.docker_network("backend=nftables", "web");
    assert_eq!(lab.nf.networks()[0].backend, "nftables");
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
    // A new plugin takes over: Docker's next calls reach it. It asks dockerd which of the
    // networks it serves dockerd still has (all): nothing goes.
    lab.docker.start_plugin();
    assert!(
        wait_until(Duration::from_mins(1), || lab
            .docker
            .plugin_output()
            .contains("dockerd still has every Docker network netfast served")),
        "the restarted plugin did not read dockerd's list of networks:\n{}",
        lab.docker.plugin_output()
    );
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
    lab.endpoint_is_known(&ep);

    // And Docker still tells netfast when the container goes.
    lab.removed_with_the_container(&url);
}
