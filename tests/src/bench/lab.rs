//! The benchmark's lab: one set of network namespaces per dataplane, all built before the
//! first measurement and alive until the last, so that rounds can interleave them.
//!
//! Every dataplane but `veth` gets the same three namespaces: a container (`…-c`, the
//! client of outbound work and the web server behind the published port) on a bridge in a
//! host (`…-h`), whose uplink is a veth to the outside (`…-s`, the servers of outbound work
//! and the client of inbound work). The baselines' bridge and container are made by the
//! same loader code as netfast's (`loader::plumb`), so that only the dataplane differs.
//! `veth` is the physical limit of one hop: the container's namespace wired straight to the
//! outside.
//!
//! Nothing is added to the namespace the benchmark runs in, except netfast's socket
//! programs on the root cgroup, which netfast scopes to its host namespaces (and removes
//! with `netfast down`).

use std::{
    fs::File,
    io::{self, BufRead as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use netfast::loader::{
    model::veth_name,
    netlink::Netlink,
    nsfs,
    plumb::{self, ContainerPlumbing},
};
use serde::Serialize;

pub const UPLINK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 0);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 1);
pub const CONTAINER_ADDR: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
pub const PREFIX: u8 = 24;
pub const BRIDGE: &str = "nf-bench";
pub const UPLINK: &str = "up0";
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

    /// Short, for namespace names.
    const fn tag(self) -> &'static str {
        match self {
            Kind::Veth => "veth",
            Kind::Routing => "rt",
            Kind::Iptables => "ipt",
            Kind::Nftables => "nft",
            Kind::NetfastOff => "off",
            Kind::NetfastOn => "on",
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

/// One dataplane's namespaces.
pub struct Env {
    pub kind: Kind,
    /// The container: runs outbound clients and the web server.
    pub client: String,
    /// The outside: runs outbound servers and the inbound client.
    pub server: String,
    /// The host in between (none for `veth`).
    pub host: Option<String>,
    /// What the inbound client asks for: the published port, or where the web server is.
    pub web_url: String,
}

/// The namespaces, servers and files of one benchmark run; dropping it removes them all.
pub struct Lab {
    pub envs: Vec<Env>,
    prefix: String,
    netfast_bin: PathBuf,
    dir: PathBuf,
    netns: Vec<String>,
    netfast_hosts: Vec<String>,
    children: Vec<Child>,
    rr_servers: Vec<RrServer>,
}

impl Lab {
    /// Builds the namespaces of `kinds` and starts their servers.
    pub fn build(kinds: &[Kind], netfast_bin: PathBuf) -> Result<Lab> {
        sweep(&netfast_bin);
        let pid = std::process::id();
        let prefix = format!("nfb{pid}");
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut lab = Lab {
            envs: Vec::new(),
            prefix,
            netfast_bin,
            dir,
            netns: Vec::new(),
            netfast_hosts: Vec::new(),
            children: Vec::new(),
            rr_servers: Vec::new(),
        };
        let netlink = Netlink::new()?;
        for &kind in kinds {
            let env = lab
                .build_env(&netlink, kind)
                .with_context(|| format!("building the {} lab", kind.name()))?;
            lab.start_servers(&env)
                .with_context(|| format!("starting the servers of the {} lab", kind.name()))?;
            lab.envs.push(env);
        }
        Ok(lab)
    }

    pub fn env(&self, kind: Kind) -> Option<&Env> {
        self.envs.iter().find(|e| e.kind == kind)
    }

    fn name(&self, kind: Kind, role: &str) -> String {
        format!("{}-{}-{role}", self.prefix, kind.tag())
    }

    fn new_netns(&mut self, name: &str) -> Result<()> {
        nsfs::create(name).with_context(|| format!("creating network namespace {name}"))?;
        self.netns.push(name.to_owned());
        Ok(())
    }

    fn build_env(&mut self, netlink: &Netlink, kind: Kind) -> Result<Env> {
        let (client, server) = (self.name(kind, "c"), self.name(kind, "s"));
        self.new_netns(&server)?;
        let outside = File::open(nsfs::path(&server))?;
        let s = netlink.namespace(&server)?;
        let lo = s.link("lo")?.context("no lo")?;
        s.set_up(&lo)?;
        // The inbound client opens tens of thousands of connections a second.
        sysctl_in(&server, "net/ipv4/ip_local_port_range", "1024 65535")?;
        sysctl_in(&server, "net/ipv4/tcp_tw_reuse", "1")?;

        if kind == Kind::Veth {
            self.new_netns(&client)?;
            let c = netlink.namespace(&client)?;
            let link = c.add_veth_into(UPLINK, "eth0", &outside)?;
            c.add_address(&link, UPLINK_ADDR, PREFIX)?;
            c.set_up(&link)?;
            let lo = c.link("lo")?.context("no lo")?;
            c.set_up(&lo)?;
            wire_outside(&s)?;
            return Ok(Env {
                kind,
                web_url: format!("http://{UPLINK_ADDR}:{PUBLISHED_PORT}/"),
                client,
                server,
                host: None,
            });
        }

        let host = self.name(kind, "h");
        self.new_netns(&host)?;
        let h = netlink.namespace(&host)?;
        let lo = h.link("lo")?.context("no lo")?;
        h.set_up(&lo)?;
        let up = h.add_veth_into(UPLINK, "eth0", &outside)?;
        h.add_address(&up, UPLINK_ADDR, PREFIX)?;
        h.set_up(&up)?;
        wire_outside(&s)?;
        let published = format!("http://{UPLINK_ADDR}:{PUBLISHED_PORT}/");

        if let Some(fast_path) = kind.netfast() {
            self.netfast_hosts.push(host.clone());
            // `netfast down` removes the container; should it fail, the lab still does.
            self.netns.push(client.clone());
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
                    &client,
                    "--network",
                    "bench",
                    "--ip",
                    &ip,
                ],
                &["publish", "bench", &publish],
            ] {
                self.netfast(&host, args)?;
            }
            return Ok(Env {
                kind,
                client,
                server,
                host: Some(host),
                web_url: published,
            });
        }

        sysctl_in(&host, "net/ipv4/ip_forward", "1")?;
        let bridge = plumb::bridge(&h, BRIDGE, GATEWAY, PREFIX, &mut |_| {})?;
        // The container's namespace goes on the list first: if plumbing fails half-way,
        // dropping the lab removes it.
        self.netns.push(client.clone());
        plumb::container(
            netlink,
            &h,
            &ContainerPlumbing {
                name: &client,
                veth: &veth_name(&client),
                bridge: &bridge,
                ip: CONTAINER_ADDR,
                prefix: PREFIX,
                gateway: GATEWAY,
            },
            &mut |_| {},
        )?;
        let web_url = match kind {
            Kind::Routing => {
                s.add_route(SUBNET, PREFIX, UPLINK_ADDR)?;
                format!("http://{CONTAINER_ADDR}:{WEB_PORT}/")
            }
            Kind::Iptables => {
                iptables_rules(&host)?;
                published
            }
            Kind::Nftables => {
                nftables_rules(&host, &self.dir)?;
                published
            }
            _ => unreachable!("netfast and veth are built above"),
        };
        Ok(Env {
            kind,
            client,
            server,
            host: Some(host),
            web_url,
        })
    }

    /// Runs `netfast --netns host args…`.
    fn netfast(&self, host: &str, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.netfast_bin)
            .arg("--netns")
            .arg(host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.netfast_bin.display()))?;
        if !out.status.success() {
            bail!(
                "`netfast --netns {host} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn start_servers(&mut self, env: &Env) -> Result<()> {
        let dir = self.dir.join(env.kind.tag());
        std::fs::create_dir_all(&dir)?;
        let iperf = spawn_in(
            &env.server,
            &[
                "iperf3",
                "-s",
                "-B",
                &SERVER_ADDR.to_string(),
                "-p",
                &IPERF_PORT.to_string(),
            ],
            &dir.join("iperf3.log"),
        )?;
        self.children.push(iperf);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir)).context("writing nginx.conf")?;
        let nginx = spawn_in(
            &env.client,
            &[
                "nginx",
                "-c",
                path_str(&conf)?,
                "-p",
                path_str(&dir)?,
                "-e",
                "stderr",
            ],
            &dir.join("nginx.log"),
        )?;
        self.children.push(nginx);
        self.rr_servers.push(RrServer::start(
            &env.server,
            SocketAddrV4::new(SERVER_ADDR, RR_PORT),
        )?);
        for (ns, port, what, log) in [
            (&env.server, IPERF_PORT, "iperf3", "iperf3.log"),
            (&env.client, WEB_PORT, "nginx", "nginx.log"),
            (&env.client, PUBLISHED_PORT, "nginx", "nginx.log"),
        ] {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !listening_in(ns, port)? {
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                    bail!("{what} did not listen on port {port} in {ns} within 10 s:\n{log}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for rr in self.rr_servers.drain(..) {
            rr.stop();
        }
        for host in std::mem::take(&mut self.netfast_hosts) {
            if let Err(e) = self.netfast(&host, &["down"]) {
                eprintln!("netfast bench: cleaning up: {e:#}");
            }
        }
        for ns in self.netns.iter().rev() {
            if nsfs::exists(ns)
                && let Err(e) = nsfs::delete(ns)
            {
                eprintln!("netfast bench: deleting namespace {ns}: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Labs left by a benchmark that was killed: `netfast down` in their hosts (their programs
/// are pinned and their socket programs attached), then their namespaces.
fn sweep(netfast_bin: &Path) {
    let Ok(dir) = std::fs::read_dir(netfast::netns::NETNS_RUN_DIR) else {
        return;
    };
    let stale: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| {
            let Some(rest) = name.strip_prefix("nfb") else {
                return false;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                return false;
            };
            pid.parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for host in stale.iter().filter(|n| n.ends_with("-h")) {
        let _ = Command::new(netfast_bin)
            .args(["--netns", host, "down"])
            .stdin(Stdio::null())
            .output();
    }
    for ns in &stale {
        if nsfs::exists(ns) {
            let _ = nsfs::delete(ns);
        }
    }
}

/// The outside's address.
fn wire_outside(s: &netfast::loader::netlink::Nl<'_>) -> Result<()> {
    let eth0 = s
        .link("eth0")?
        .context("no eth0 in the outside namespace")?;
    s.add_address(&eth0, SERVER_ADDR, PREFIX)?;
    s.set_up(&eth0)?;
    Ok(())
}

/// Docker's rules for one container with port 80 published as 8080, in x_tables
/// (iptables-legacy), as `docker run -p 8080:80` leaves them.
fn iptables_rules(host: &str) -> Result<()> {
    let tool = if which("iptables-legacy") {
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
        run_in(host, &argv, Duration::from_secs(10))?;
    }
    Ok(())
}

/// The same rules as one nftables table, the way Docker's nftables backend writes them.
fn nftables_rules(host: &str, dir: &Path) -> Result<()> {
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
    let file = dir.join("ruleset.nft");
    std::fs::write(&file, ruleset).context("writing the nftables ruleset")?;
    run_in(
        host,
        &["nft", "-f", path_str(&file)?],
        Duration::from_secs(10),
    )?;
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

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// A command whose process starts in the network namespace `ns`.
pub fn command_in(ns: &str, argv: &[&str]) -> Result<Command> {
    let file = File::open(nsfs::path(ns)).with_context(|| format!("opening namespace {ns}"))?;
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    // SAFETY: between fork and exec only setns runs, which is async-signal-safe; the file
    // moves into the closure and stays open until then.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(cmd)
}

/// Runs `argv` in `ns`, killed after `timeout`; fails unless it exits successfully.
pub fn run_in(ns: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
    let child = command_in(ns, argv)?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (is it installed? `cargo xtask setup`)",
                argv[0]
            )
        })?;
    let out = wait_timeout(child, timeout).with_context(|| argv.join(" "))?;
    if !out.status.success() {
        bail!(
            "`{}` in {ns} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Waits for a child with piped output, killing it after `timeout`.
fn wait_timeout(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    // Drain the pipes on threads so that a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || read_all(stdout.as_mut()));
    let err_t = std::thread::spawn(move || read_all(stderr.as_mut()));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("timed out after {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn read_all(r: Option<&mut impl io::Read>) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let _ = r.read_to_end(&mut buf);
    }
    buf
}

/// Starts a long-running `argv` in `ns`, its output going to `log`.
fn spawn_in(ns: &str, argv: &[&str], log: &Path) -> Result<Child> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command_in(ns, argv)?
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (is it installed? `cargo xtask setup`)",
                argv[0]
            )
        })
}

/// Writes `/proc/sys/<key>` in `ns` (from a thread in that namespace: /proc/sys/net is the
/// opening thread's).
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    in_netns(ns, || {
        let path = format!("/proc/sys/{key}");
        std::fs::write(&path, value).with_context(|| format!("writing {path}"))
    })
}

/// Whether a TCP socket listens on `port` in `ns`.
fn listening_in(ns: &str, port: u16) -> Result<bool> {
    in_netns(ns, || {
        let file = File::open("/proc/thread-self/net/tcp").context("reading /proc/net/tcp")?;
        let want = format!(":{port:04X}");
        for line in io::BufReader::new(file).lines().skip(1) {
            let line = line?;
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st: st 0A is LISTEN.
            if f.len() > 3 && f[1].ends_with(&want) && f[3] == "0A" {
                return Ok(true);
            }
        }
        Ok(false)
    })
}

/// Runs `f` on a thread that has entered `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            netfast::netns::enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| bail!("a thread in namespace {ns} panicked"))
    })
}

/// The request/response server: echoes whatever arrives, one thread per connection.
struct RrServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RrServer {
    fn start(ns: &str, addr: SocketAddrV4) -> Result<RrServer> {
        let listener = in_netns(ns, || {
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
        Ok(RrServer { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
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
