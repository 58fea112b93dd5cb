//! The benchmark's lab: a topology of the test lab ([`crate::topology`]) per dataplane, all
//! built before the first measurement and alive until the last, so that rounds can
//! interleave them.
//!
//! Every dataplane but `veth` gets the same three namespaces: a container (the client of
//! outbound work and the web server behind the published port) on a bridge in a host, whose
//! uplink is a veth to the outside (the servers of outbound work and the client of inbound
//! work). netfast's dataplanes are made through the binary exactly as a user would (`network
//! create`, `container create`, `publish`); the baselines get the lab's bridge and container,
//! plumbed the way netfast plumbs its own (a veth pair on the bridge, the address, a default
//! route via the gateway), so that only the dataplane differs. `veth` is the physical limit
//! of one hop: the topology's host, without a bridge, is the client, wired straight to the
//! outside.
//!
//! Nothing is added to the namespace the benchmark runs in, except netfast's socket
//! programs on the root cgroup, which netfast scopes to its host namespaces (and removes
//! with `netfast down`). What a killed benchmark leaves, the next run of the lab sweeps.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use netfast::netfilter;
use serde::Serialize;

pub use crate::topology::{
    BRIDGE, GATEWAY, OUTSIDE_ADDR as SERVER_ADDR, SUBNET_ADDR as SUBNET, SUBNET_PREFIX as PREFIX,
    UPLINK, UPLINK_ADDR,
};
use crate::{
    Background, Netfast, Topology, clients::listening, cmd::wait_until, in_netns, netns::within,
    topology::container_addr,
};

/// The container's address: the lab's first container.
pub const CONTAINER_ADDR: Ipv4Addr = container_addr(0);
pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 7000;
pub const WEB_PORT: u16 = 80;
pub const PUBLISHED_PORT: u16 = 8080;
/// Flows netfast's conntrack holds in the lab (TIME_WAIT flows of the connection test
/// pile up: tens of thousands per round).
const LAB_CT_MAX: &str = "262144";

/// A dataplane the benchmark compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A veth pair between client and server: one hop, no bridge, no routing, no NAT.
    Veth,
    /// Bridge, routing and forwarding through the host, no NAT, no firewall rules.
    Routing,
    /// Docker's iptables rules (iptables-legacy: x_tables): MASQUERADE, DNAT, FORWARD DROP
    /// with accept rules.
    Iptables,
    /// The same in an nftables table, as Docker's nftables backend writes it.
    Nftables,
    /// netfast translating, with the kernel forwarding (`--fast-path off`).
    NetfastOff,
    /// netfast translating and forwarding (`--fast-path on`, the default).
    NetfastOn,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Veth,
        Kind::Routing,
        Kind::Iptables,
        Kind::Nftables,
        Kind::NetfastOff,
        Kind::NetfastOn,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Kind::Veth => "veth",
            Kind::Routing => "routing",
            Kind::Iptables => "iptables",
            Kind::Nftables => "nftables",
            Kind::NetfastOff => "netfast-off",
            Kind::NetfastOn => "netfast-on",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            Kind::Veth => "veth pair, client to server: the physical limit of one hop",
            Kind::Routing => "bridge + routing through the host, no NAT, no rules",
            Kind::Iptables => {
                "iptables-legacy: MASQUERADE + DNAT, FORWARD policy DROP with Docker's accept rules"
            }
            Kind::Nftables => {
                "nftables: masquerade + dnat, forward policy drop with Docker's accept rules"
            }
            Kind::NetfastOff => "netfast translating, kernel forwarding (--fast-path off)",
            Kind::NetfastOn => "netfast translating and forwarding (fast path)",
        }
    }

    const fn netfast(self) -> Option<&'static str> {
        match self {
            Kind::NetfastOff => Some("off"),
            Kind::NetfastOn => Some("on"),
            _ => None,
        }
    }
}

/// One dataplane's namespaces and servers; dropping it stops the servers, runs `netfast
/// down` (netfast's dataplanes) and removes the namespaces.
pub struct Env {
    pub kind: Kind,
    /// The container: runs outbound clients and the web server.
    pub client: String,
    /// The outside: runs outbound servers and the inbound client.
    pub server: String,
    /// The host in between (none for `veth`).
    pub host: Option<String>,
    /// The host's end of the container's veth pair (none for `veth`).
    pub veth: Option<String>,
    /// What the inbound client asks for: the published port, or where the web server is.
    pub web_url: String,
    // Fields drop in order: the servers, then `netfast down`, then the namespaces.
    servers: Vec<Background>,
    rr: Option<RrServer>,
    netfast: Option<Netfast>,
    topo: Topology,
}

/// The dataplanes of one benchmark run, and the directory of their servers' files; dropping
/// it removes them all.
pub struct Lab {
    pub envs: Vec<Env>,
    dir: PathBuf,
}

impl Lab {
    /// Builds the namespaces of `kinds` and starts their servers; netfast's dataplanes are
    /// made by `netfast_bin`.
    pub fn build(kinds: &[Kind], netfast_bin: &Path) -> Result<Lab> {
        let dir = std::env::temp_dir().join(format!("netfast-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            envs: Vec::new(),
            dir,
        };
        for &kind in kinds {
            let mut env = build_env(kind, netfast_bin)
                .with_context(|| format!("building the {} lab", kind.name()))?;
            let dir = lab.dir.join(kind.name());
            start_servers(&mut env, &dir)
                .with_context(|| format!("starting the servers of the {} lab", kind.name()))?;
            lab.envs.push(env);
        }
        Ok(lab)
    }

    pub fn env(&self, kind: Kind) -> Option<&Env> {
        self.envs.iter().find(|e| e.kind == kind)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.envs.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn build_env(kind: Kind, netfast_bin: &Path) -> Result<Env> {
    let topo = match kind {
        Kind::Veth => Topology::builder().without_bridge().build(),
        Kind::Routing => Topology::builder().containers(1).route_back().build(),
        Kind::Iptables | Kind::Nftables => Topology::builder().containers(1).build(),
        Kind::NetfastOff | Kind::NetfastOn => Topology::builder().without_bridge().build(),
    };
    let server = topo.outside.name().to_owned();
    // The inbound client opens tens of thousands of connections a second.
    for setting in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_tw_reuse=1",
    ] {
        topo.outside.exec_ok(&["sysctl", "-qw", setting]);
    }
    let host = topo.host.name().to_owned();
    let published = format!("http://{UPLINK_ADDR}:{PUBLISHED_PORT}/");
    let mut env = Env {
        kind,
        client: String::new(),
        server,
        host: Some(host.clone()),
        veth: Some("vc0".to_owned()),
        web_url: published,
        servers: Vec::new(),
        rr: None,
        netfast: None,
        topo,
    };
    match kind {
        Kind::Veth => {
            env.client = host;
            env.host = None;
            env.veth = None;
        }
        Kind::Routing => {
            env.client = env.topo.containers[0].name().to_owned();
            env.web_url = format!("http://{CONTAINER_ADDR}:{WEB_PORT}/");
        }
        Kind::Iptables => {
            env.client = env.topo.containers[0].name().to_owned();
            within(&host, iptables_rules)?;
        }
        Kind::Nftables => {
            env.client = env.topo.containers[0].name().to_owned();
            within(&host, nftables_rules)?;
        }
        Kind::NetfastOff | Kind::NetfastOn => {
            let fast_path = kind.netfast().expect("a netfast kind");
            // A name of the lab's, so that a killed run's container is swept with the rest.
            env.client = format!("{host}c");
            env.veth = Some(netfast::loader::model::veth_name(&env.client));
            let nf = env
                .netfast
                .insert(Netfast::with_bin(&env.topo.host, netfast_bin.to_owned()));
            // Everything a user would type, through the binary itself.
            let subnet = format!("{SUBNET}/{PREFIX}");
            let ip = CONTAINER_ADDR.to_string();
            let publish = format!("{PUBLISHED_PORT}:{CONTAINER_ADDR}:{WEB_PORT}");
            for args in [
                &["config", "--ct-max", LAB_CT_MAX, "--fast-path", fast_path][..],
                &[
                    "network", "create", "bench", "--subnet", &subnet, "--bridge", BRIDGE,
                    "--uplink", UPLINK,
                ],
                &[
                    "container",
                    "create",
                    &env.client,
                    "--network",
                    "bench",
                    "--ip",
                    &ip,
                ],
                &["publish", "bench", &publish],
            ] {
                nf.ok(args);
            }
        }
    }
    Ok(env)
}

/// Docker's rules for one container with port 80 published as 8080, in x_tables
/// (iptables-legacy), as `docker run -p 8080:80` leaves them; in the calling thread's
/// namespace.
fn iptables_rules() -> Result<()> {
    let tool = if on_path("iptables-legacy") {
        "iptables-legacy"
    } else {
        "iptables"
    };
    let subnet = format!("{SUBNET}/{PREFIX}");
    let container = format!("{CONTAINER_ADDR}/32");
    let to = format!("{CONTAINER_ADDR}:{WEB_PORT}");
    let uplink = format!("{UPLINK_ADDR}/32");
    let (web, published) = (WEB_PORT.to_string(), PUBLISHED_PORT.to_string());
    let rules: [&[&str]; 6] = [
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-o",
            BRIDGE,
            "-j",
            "MASQUERADE",
        ],
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &uplink,
            "-p",
            "tcp",
            "--dport",
            &published,
            "-j",
            "DNAT",
            "--to-destination",
            &to,
        ],
        &["-P", "FORWARD", "DROP"],
        &[
            "-A",
            "FORWARD",
            "-o",
            BRIDGE,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        &[
            "-A", "FORWARD", "-d", &container, "!", "-i", BRIDGE, "-o", BRIDGE, "-p", "tcp",
            "--dport", &web, "-j", "ACCEPT",
        ],
        &[
            "-A", "FORWARD", "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "ACCEPT",
        ],
    ];
    for rule in rules {
        let mut argv = vec![tool, "-w"];
        argv.extend_from_slice(rule);
        netfilter::run(&argv)?;
    }
    Ok(())
}

/// The same rules as one nftables table, the way Docker's nftables backend writes them; in
/// the calling thread's namespace.
fn nftables_rules() -> Result<()> {
    let ruleset = format!(
        r#"table ip netfast-bench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {UPLINK_ADDR} tcp dport {PUBLISHED_PORT} dnat to {CONTAINER_ADDR}:{WEB_PORT}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET}/{PREFIX} oifname != "{BRIDGE}" masquerade
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        oifname "{BRIDGE}" ct state established,related accept
        oifname "{BRIDGE}" iifname != "{BRIDGE}" ip daddr {CONTAINER_ADDR} tcp dport {WEB_PORT} accept
        iifname "{BRIDGE}" oifname != "{BRIDGE}" accept
    }}
}}
"#
    );
    netfilter::run_with_input(&["nft", "-f", "-"], &ruleset)?;
    Ok(())
}

fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"worker_processes auto;
daemon off;
pid {d}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {WEB_PORT} backlog=4096;
        listen {PUBLISHED_PORT} backlog=4096;
        location / {{ return 200 "netfast bench\n"; }}
    }}
}}
"#
    )
}

/// Whether `program` is on the PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// iperf3 in the outside, nginx in the container, the request/response echo server in the
/// outside; each listening when this returns. `dir`: nginx's files.
fn start_servers(env: &mut Env, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (server, port) = (SERVER_ADDR.to_string(), IPERF_PORT.to_string());
    env.servers.push(Background::spawn(&in_netns(
        &env.server,
        &["iperf3", "-s", "-B", &server, "-p", &port],
    )));
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir)).context("writing nginx.conf")?;
    env.servers.push(Background::spawn(&in_netns(
        &env.client,
        &[
            "nginx",
            "-c",
            path_str(&conf)?,
            "-p",
            path_str(dir)?,
            "-e",
            "stderr",
        ],
    )));
    env.rr = Some(RrServer::start(
        &env.server,
        SocketAddrV4::new(SERVER_ADDR, RR_PORT),
    )?);
    for (ns, port, what, i) in [
        (&env.server, IPERF_PORT, "iperf3", 0),
        (&env.client, WEB_PORT, "nginx", 1),
        (&env.client, PUBLISHED_PORT, "nginx", 1),
    ] {
        if !wait_until(Duration::from_secs(10), || listening(ns, "tcp", port)) {
            let s = &env.servers[i];
            bail!(
                "{what} did not listen on port {port} in {ns} within 10 s:\n{}{}",
                s.stdout_so_far(),
                s.stderr_so_far()
            );
        }
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// The request/response server: echoes whatever arrives, one thread per connection; stops
/// when dropped.
struct RrServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RrServer {
    fn start(ns: &str, addr: SocketAddrV4) -> Result<RrServer> {
        let listener = within(ns, || -> Result<TcpListener> {
            let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || echo(stream));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(RrServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for RrServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn echo(mut stream: std::net::TcpStream) {
    use std::io::{Read as _, Write as _};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}
