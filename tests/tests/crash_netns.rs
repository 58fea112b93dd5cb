//! Crash safety (issue #14, item 3), as a fault injector: every command that changes the host
//! is killed (SIGKILL, from `strace -e inject=SYSCALL:signal=KILL:when=N`) at each kind of
//! step — a rename (the intent and state files), a netlink send (links, addresses, routes,
//! ctnetlink), a bpf call (maps, programs, attachments), a send of the nft/iptables tools it
//! runs — at several N picked from a clean traced run. After each kill, `network ls` and
//! `container ls` report what the state does not account for, the same command run again
//! converges, and `down` leaves a clean host: no link, namespace, pin, nft table or iptables
//! chain of netfast's.

use std::{
    collections::BTreeMap, fs, os::unix::process::ExitStatusExt, process::Command, time::Duration,
};

use netfast::{
    host::Host,
    loader::model::{Backend, State},
    netns::NetnsGuard,
};
use netfast_tests::{
    Netfast, Removed, Topology,
    cmd::wait_until,
    docker::FakeDockerd,
    netfast_cli::{netfast_bin, network_create},
    require_root, run,
    topology::UPLINK,
};

/// A host and what the sweep needs to know of it.
struct Lab {
    nf: Netfast,
    topo: Topology,
    key: String,
    backend: &'static str,
    /// The container the commands make (a namespace name: the host's, then `c`).
    ct: String,
    /// An apply file: network web, container `ct`, a publication.
    apply_file: String,
}

impl Lab {
    fn new(backend: &'static str) -> Lab {
        let topo = Topology::builder().without_bridge().build();
        let nf = Netfast::new(&topo.host);
        let key = {
            let _in = NetnsGuard::enter(topo.host.name()).expect("enter the host");
            Host::current().expect("host").key
        };
        let ct = format!("{}c", topo.host.name());
        let apply_file = format!("/tmp/{}-crash.toml", topo.host.name());
        fs::write(
            &apply_file,
            format!(
                "[[network]]\nname = \"web\"\nsubnet = \"172.18.0.0/24\"\nuplink = \"{UPLINK}\"\n\
                 backend = \"{backend}\"\n\n[[container]]\nname = \"{ct}\"\nnetwork = \"web\"\n\n\
                 [[publish]]\nnetwork = \"web\"\nspec = \"8080:{ct}:80\"\n"
            ),
        )
        .expect("write the apply file");
        Lab {
            nf,
            topo,
            key,
            backend,
            ct,
            apply_file,
        }
    }

    fn host(&self) -> &str {
        self.topo.host.name()
    }

    /// The argv of a command (after `netfast --netns HOST`).
    fn args(&self, cmd: Cmd) -> Vec<String> {
        let s = |v: &[&str]| {
            v.iter()
                .map(std::string::ToString::to_string)
                .collect::<Vec<_>>()
        };
        let publication = format!("8080:{}:80", self.ct);
        match cmd {
            Cmd::NetworkCreate => s(&network_create(
                "web",
                "172.18.0.0/24",
                &["--backend", self.backend],
            )),
            Cmd::NetworkRm => s(&["network", "rm", "web"]),
            Cmd::ContainerCreate => s(&["container", "create", &self.ct, "--network", "web"]),
            Cmd::ContainerRm => s(&["container", "rm", &self.ct]),
            Cmd::Publish => s(&["publish", "web", &publication]),
            Cmd::Unpublish => s(&["unpublish", "web", &publication]),
            Cmd::Apply => s(&["apply", "-f", &self.apply_file]),
            Cmd::Down => s(&["down"]),
        }
    }

    fn ok(&self, cmd: Cmd) {
        let args = self.args(cmd);
        self.nf
            .ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// What must exist before `cmd` runs.
    fn precondition(&self, cmd: Cmd) {
        use Cmd::*;
        let steps: &[Cmd] = match cmd {
            NetworkCreate => &[],
            NetworkRm | ContainerCreate => &[NetworkCreate],
            Publish => &[NetworkCreate, ContainerCreate],
            ContainerRm | Unpublish | Down => &[NetworkCreate, ContainerCreate, Publish],
            // A network the file does not declare goes first; then everything is created.
            // (On nftables, which is quick to make: the sweep's time goes to the file's.)
            Apply => {
                self.nf
                    .create_network("old", "172.19.0.0/24", &["--backend", "nftables"]);
                &[]
            }
        };
        for s in steps {
            self.ok(*s);
        }
    }

    /// From the host as a finished `cmd` left it, back to `cmd`'s precondition: by the
    /// inverse command where there is one, else by `down` (checked clean) and the
    /// precondition again.
    fn back_to_precondition(&self, cmd: Cmd) {
        use Cmd::*;
        let inverse: &[Cmd] = match cmd {
            ContainerCreate => &[ContainerRm],
            ContainerRm => &[ContainerCreate, Publish],
            Publish => &[Unpublish],
            Unpublish => &[Publish],
            NetworkCreate | NetworkRm | Apply | Down => {
                self.nf.ok(&["down"]);
                self.assert_clean(&format!("a finished `{cmd:?}`, then down"));
                self.precondition(cmd);
                return;
            }
        };
        for c in inverse {
            self.ok(*c);
        }
    }

    /// What the kernel has of netfast's beyond what the state accounts for.
    fn unknown(&self) -> Vec<String> {
        let known = self.in_state();
        self.kernel()
            .into_iter()
            .filter(|k| !known.contains(k))
            .collect()
    }

    /// `strace -f` of netfast running `cmd`, tracing `syscall`, with `extra` options: the
    /// exit status and the trace.
    fn traced(
        &self,
        cmd: Cmd,
        syscall: &str,
        extra: &[&str],
    ) -> (std::process::ExitStatus, String) {
        let trace = format!("/tmp/{}-crash.trace", self.host());
        let bin = netfast_bin();
        let mut c = Command::new("strace");
        // (Not --seccomp-bpf: strace 6.1 does not inject through it.)
        c.args(["-f", "-qq", "-o", &trace, "-e", &format!("trace={syscall}")])
            .args(extra)
            .arg(&bin)
            .args(["--netns", self.host()])
            .args(self.args(cmd));
        let out = c.output().expect("run strace (apt-get install strace)");
        let mut text = fs::read_to_string(&trace).unwrap_or_default();
        let _ = fs::remove_file(&trace);
        if !out.status.success() {
            // What it said, for the failure message (a clean run's trace is parsed).
            text.push_str("\n--- stderr:\n");
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
        (out.status, text)
    }

    /// The calls of `syscall` per process or thread in a trace of `cmd` run cleanly (from
    /// its precondition, and back to it after), the most first.
    fn counts(&self, cmd: Cmd, syscall: &str) -> Vec<usize> {
        let (status, text) = self.traced(cmd, syscall, &[]);
        assert!(status.success(), "a clean traced `{cmd:?}` failed:\n{text}");
        self.back_to_precondition(cmd);
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for l in text.lines() {
            let mut w = l.split_whitespace();
            if let (Some(pid), Some(call)) = (w.next(), w.next())
                && call.starts_with(&format!("{syscall}("))
            {
                *per.entry(pid).or_default() += 1;
            }
        }
        let mut counts: Vec<usize> = per.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        counts
    }

    /// What of netfast's the kernel has in the host: links, namespaces, pins, rules.
    fn kernel(&self) -> Vec<String> {
        let mut found = Vec::new();
        let links = self.topo.host.exec_ok(&["ip", "-o", "link"]);
        for l in links.lines() {
            let name = l
                .split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap_or("");
            if name.starts_with("nf-") || name.starts_with("nfv") {
                found.push(format!("link {name}"));
            }
        }
        for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == self.ct {
                found.push(format!("namespace {n}"));
            }
        }
        if fs::metadata(format!("/sys/fs/bpf/netfast/{}", self.key)).is_ok() {
            found.push("pins".into());
        }
        if self
            .topo
            .host
            .exec(&["nft", "list", "table", "ip", "netfast"])
            .status
            .success()
        {
            found.push("nft table ip netfast".into());
        }
        if self.backend == "iptables" {
            let save = self.topo.host.exec_ok(&["iptables-save"]);
            if save.contains("NETFAST") {
                found.push("iptables chains NETFAST-…".into());
            }
        }
        found
    }

    /// What the state accounts for, in the terms of [`Lab::kernel`].
    fn in_state(&self) -> Vec<String> {
        let path = format!("/run/netfast/{}/state.json", self.key);
        let Ok(text) = fs::read_to_string(&path) else {
            return Vec::new();
        };
        let state: State = serde_json::from_str(&text).expect("a state file");
        let mut known = Vec::new();
        for n in &state.networks {
            known.push(format!("link {}", n.bridge));
            known.push(
                match n.backend {
                    Backend::Ebpf => "pins",
                    Backend::Nftables => "nft table ip netfast",
                    Backend::Iptables => "iptables chains NETFAST-…",
                }
                .into(),
            );
        }
        for c in &state.containers {
            known.push(format!("link {}", c.veth));
            known.push(format!("namespace {}", c.name));
        }
        known
    }

    /// The drift `network ls` and `container ls` report (and that both work).
    fn drift(&self) -> Vec<String> {
        let networks = self.nf.networks().into_iter().flat_map(|n| n.drift);
        networks
            .chain(self.nf.containers().into_iter().flat_map(|c| c.drift))
            .collect()
    }

    /// Nothing of netfast's is left in the host, nor its state.
    fn assert_clean(&self, after: &str) {
        let left = self.kernel();
        assert!(left.is_empty(), "after {after}, netfast left: {left:?}");
        assert!(
            fs::metadata(format!("/run/netfast/{}", self.key)).is_err(),
            "after {after}, the state directory is left"
        );
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
    NetworkCreate,
    NetworkRm,
    ContainerCreate,
    ContainerRm,
    Publish,
    Unpublish,
    Apply,
    Down,
}

/// The N values to kill at, for a syscall made `count` times: all of them up to `most`, else
/// `most` spread evenly from the first to the last (the attachments and map updates come
/// last).
fn picks(count: usize, most: usize) -> Vec<usize> {
    if count <= most {
        return (1..=count).collect();
    }
    if most <= 1 {
        return vec![count];
    }
    let mut n: Vec<usize> = (0..most)
        .map(|i| 1 + (count - 1) * i / (most - 1))
        .collect();
    n.dedup();
    n
}

/// Kills `cmd` at each pick of each syscall kind, and checks what follows: after every other
/// kill, `down` straight away must leave a clean host; after the others, the same command run
/// again must converge (the host as the state says, no drift), and the lab goes back to the
/// command's precondition (by the inverse command where there is a cheap one).
fn sweep(lab: &Lab, cmd: Cmd, kinds: &[(&str, usize)]) -> usize {
    let mut kills = 0;
    lab.precondition(cmd);
    for &(syscall, most) in kinds {
        // netfast's own calls are in its main thread; the tools' (nft, iptables-restore)
        // in their own processes: the busiest one counts.
        let counts = lab.counts(cmd, syscall);
        let Some(&count) = counts.first() else {
            continue;
        };
        // strace counts `when=N` to 65535: a later call cannot be killed at, and a command
        // that makes that many of one call spins where it should wait.
        assert!(
            count <= 65_535,
            "`{cmd:?}` made {count} {syscall} calls: strace can inject at most at the 65535th, \
             so its later steps cannot be tested (does it spin where it should wait?)"
        );
        for (i, n) in picks(count, most).into_iter().enumerate() {
            let what = format!("`{cmd:?}` killed at {syscall} #{n} of {count}");
            let inject = format!("inject={syscall}:signal=KILL:when={n}");
            let (status, trace) = lab.traced(cmd, syscall, &["-e", &inject]);
            if status.signal() == Some(9) || status.code() == Some(137) {
                kills += 1;
            } else if !status.success() {
                // A tool killed under netfast: it failed, and undid its work, by itself.
                assert!(
                    trace.contains("+++ killed by SIGKILL +++"),
                    "{what}: failed without a kill ({status}):\n{trace}"
                );
            }
            // What the kernel has beyond the state is reported as drift.
            let unknown = lab.unknown();
            let drift = lab.drift();
            assert!(
                unknown.is_empty() || !drift.is_empty(),
                "{what}: the kernel has {unknown:?} beyond the state, and `network ls` / \
                 `container ls` report no drift"
            );
            if cmd == Cmd::Down || i % 2 == 0 {
                lab.nf.ok(&["down"]);
                lab.assert_clean(&format!("{what}, then down"));
                lab.precondition(cmd);
                continue;
            }
            // The same command again converges.
            let args = lab.args(cmd);
            let again = lab
                .nf
                .run(&args.iter().map(String::as_str).collect::<Vec<_>>());
            let err = String::from_utf8_lossy(&again.stderr);
            // Killed after it saved its state: it was done, and says so.
            let done_already = [
                "no network named `web`",
                "no container named",
                "does not publish",
                "a network named `web` already exists",
                "a container named",
                "already published by",
            ]
            .iter()
            .any(|m| err.contains(m));
            assert!(
                again.status.success() || done_already,
                "{what}: running it again failed:\n{err}"
            );
            let (unknown, drift) = (lab.unknown(), lab.drift());
            assert!(
                unknown.is_empty() && drift.is_empty(),
                "{what}: after running it again, the kernel has {unknown:?} beyond the state, \
                 and drift {drift:?}"
            );
            lab.back_to_precondition(cmd);
        }
    }
    lab.nf.ok(&["down"]);
    lab.assert_clean(&format!("the sweep of `{cmd:?}`, then down"));
    kills
}

fn crash_sweep(backend: &'static str, cmds: &[Cmd], kinds: &[(&str, usize)]) {
    require_root();
    assert!(
        run(&["strace", "-V"]).status.success(),
        "this test kills netfast with strace: apt-get install strace (cargo xtask setup does)"
    );
    let lab = Lab::new(backend);
    let mut kills = 0;
    for &cmd in cmds {
        // Each kill of these starts from a new network (in eBPF, programs to load): fewer.
        let heavy = matches!(
            cmd,
            Cmd::NetworkCreate | Cmd::NetworkRm | Cmd::Apply | Cmd::Down
        );
        let kinds: Vec<(&str, usize)> = kinds
            .iter()
            .map(|&(k, most)| (k, if heavy { most.min(3) } else { most }))
            .collect();
        let t = std::time::Instant::now();
        let n = sweep(&lab, cmd, &kinds);
        println!("{backend} {cmd:?}: {n} kills in {:?}", t.elapsed());
        kills += n;
    }
    assert!(kills > 0, "no command was killed: the sweep tested nothing");
    let _ = fs::remove_file(&lab.apply_file);
}

const ALL: [Cmd; 8] = [
    Cmd::NetworkCreate,
    Cmd::NetworkRm,
    Cmd::ContainerCreate,
    Cmd::ContainerRm,
    Cmd::Publish,
    Cmd::Unpublish,
    Cmd::Apply,
    Cmd::Down,
];

#[test]
fn ebpf_commands_killed_at_any_step_converge() {
    crash_sweep("ebpf", &ALL, &[("renameat", 4), ("sendto", 4), ("bpf", 4)]);
}

/// The commands swept on the fallback backends (their containers and removals are the
/// eBPF sweep's, but for the rules), and where they are killed.
const FALLBACK_CMDS: [Cmd; 4] = [Cmd::NetworkCreate, Cmd::Publish, Cmd::Apply, Cmd::Down];
const FALLBACK_KILLS: [(&str, usize); 3] = [("renameat", 3), ("sendto", 3), ("sendmsg", 2)];

#[test]
fn nftables_commands_killed_at_any_step_converge() {
    crash_sweep("nftables", &FALLBACK_CMDS, &FALLBACK_KILLS);
}

#[test]
fn iptables_commands_killed_at_any_step_converge() {
    crash_sweep("iptables", &FALLBACK_CMDS, &FALLBACK_KILLS);
}

/// `netfast docker-plugin` on the eBPF lab, driven over its socket with curl as dockerd
/// drives it (no dockerd needed), with one Docker network on 172.18.0.0/24.
struct PluginLab {
    lab: Lab,
    socket: String,
    network_id: String,
    _socket: Removed,
}

impl PluginLab {
    fn new() -> PluginLab {
        require_root();
        let lab = Lab::new("ebpf");
        let guard = Removed::at(format!("/tmp/epsw-{}.sock", lab.host()));
        let p = PluginLab {
            socket: guard.to_string_lossy().into_owned(),
            network_id: "e0".repeat(32),
            lab,
            _socket: guard,
        };
        let first = p.plugin(&[]);
        p.ok("CreateNetwork", &p.network_body(), "the lab's network");
        first.stop();
        p
    }

    /// The body of Docker's CreateNetwork of the lab's network.
    fn network_body(&self) -> String {
        format!(
            r#"{{"NetworkID":"{}","Options":{{"com.docker.network.generic":
            {{"uplink":"{UPLINK}","backend":"ebpf"}}}},"IPv4Data":[{{"AddressSpace":
            "LocalDefault","Pool":"172.18.0.0/24","Gateway":"172.18.0.1/24"}}],
            "IPv6Data":[]}}"#,
            self.network_id
        )
    }

    /// The subnets of the networks netfast serves.
    fn subnets(&self) -> Vec<String> {
        self.lab
            .nf
            .networks()
            .into_iter()
            .map(|n| n.subnet)
            .collect()
    }

    /// The plugin, run behind `prefix` (e.g. strace), listening.
    fn plugin(&self, prefix: &[&str]) -> netfast_tests::Background {
        self.plugin_with(prefix, &[])
    }

    /// The plugin, run behind `prefix` with `more` arguments, listening.
    fn plugin_with(&self, prefix: &[&str], more: &[&str]) -> netfast_tests::Background {
        let mut argv: Vec<&str> = prefix.to_vec();
        let mut args = vec!["docker-plugin", "--socket", &self.socket];
        args.extend(more);
        argv.extend(self.lab.nf.argv(&args));
        let mut p = netfast_tests::Background::spawn(&argv);
        p.wait_for_text("listening on", std::time::Duration::from_secs(20));
        p
    }

    /// A call of Docker's network driver protocol; the answer's body.
    fn post(&self, method: &str, body: &str) -> String {
        let url = format!("http://plugin/NetworkDriver.{method}");
        let out = run(&[
            "curl",
            "-s",
            "--max-time",
            "20",
            "--unix-socket",
            &self.socket,
            "-X",
            "POST",
            "-d",
            body,
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Docker's CreateEndpoint of endpoint `id` at `addr`; the answer.
    fn create_endpoint(&self, id: &str, addr: std::net::Ipv4Addr) -> String {
        self.post("CreateEndpoint", &self.create_body(id, addr))
    }

    /// The numbers (counted per thread, as strace's `when=` counts) of the `sendto` calls the
    /// plugin's worker makes in the first of `calls` (method, body), made in order to a plugin
    /// started for them: its calls after the main thread accepted that call's connection,
    /// before the next. Fails if another thread makes as many sends, which a kill at one of
    /// these would hit first.
    fn first_call_sends(&self, calls: &[(&str, String)]) -> Vec<usize> {
        self.first_call_makes("sendto", calls)
    }

    /// As [`PluginLab::first_call_sends`], for the calls of `syscall`.
    fn first_call_makes(&self, syscall: &str, calls: &[(&str, String)]) -> Vec<usize> {
        let trace = format!("/tmp/{}-ep.trace", self.lab.host());
        let plugin = self.plugin(&[
            "strace",
            "-f",
            "-qq",
            "-o",
            &trace,
            "-e",
            &format!("trace={syscall},accept4"),
        ]);
        for (method, body) in calls {
            self.ok(method, body, "counting the sends");
        }
        // Killing strace would leave the plugin running, detached: the plugin goes first.
        let tracer = plugin.pid();
        let tracees = fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children"))
            .expect("strace's children");
        for pid in tracees.split_whitespace() {
            let pid: libc::pid_t = pid.parse().expect("a pid");
            // SAFETY: kill(2) on the plugin, strace's child, which strace has not reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        plugin.wait_exit(std::time::Duration::from_secs(20));
        let text = fs::read_to_string(&trace).expect("read the trace");
        let _ = fs::remove_file(&trace);
        // Per thread: sends before the first accepted connection, and in the first call (up
        // to the second connection).
        let mut before: BTreeMap<String, usize> = BTreeMap::new();
        let mut during: BTreeMap<String, usize> = BTreeMap::new();
        let mut accepted = 0;
        for l in text.lines() {
            let mut w = l.split_whitespace();
            let (Some(pid), Some(call)) = (w.next(), w.next()) else {
                continue;
            };
            if call.starts_with("accept4(") && !l.contains("= -1") {
                accepted += 1;
            } else if call.starts_with(&format!("{syscall}(")) {
                match accepted {
                    0 => *before.entry(pid.to_owned()).or_default() += 1,
                    1 => *during.entry(pid.to_owned()).or_default() += 1,
                    _ => {}
                }
            }
        }
        assert_eq!(
            during.len(),
            1,
            "sends of the call in more than one thread:\n{text}"
        );
        let (worker, made) = during.into_iter().next().expect("one thread");
        let first = before.get(&worker).copied().unwrap_or(0) + 1;
        let others = before
            .iter()
            .filter(|(pid, _)| **pid != worker)
            .map(|(_, n)| *n)
            .max()
            .unwrap_or(0);
        assert!(
            others < first,
            "another thread makes {others} sends:\n{text}"
        );
        (first..first + made).collect()
    }

    /// A call that must succeed (`what` says where, on failure).
    fn ok(&self, method: &str, body: &str, what: &str) {
        let answer = self.post(method, body);
        assert!(!answer.contains("\"Err\""), "{what}: {method}: {answer}");
    }

    /// `method` with `body`, to a plugin that strace kills at its `when`-th `call`: checks
    /// that the kill came.
    fn killed_in(&self, method: &str, body: &str, call: &str, when: usize, what: &str) {
        let inject = format!("inject={call}:signal=KILL:when={when}");
        let killed = self.plugin(&["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject]);
        self.post(method, body);
        let out = killed.wait_exit(std::time::Duration::from_secs(20));
        assert!(
            out.status.signal() == Some(libc::SIGKILL) || out.status.code() == Some(137),
            "{what}: the plugin was not killed: {out:?}"
        );
    }

    /// The body of Docker's CreateEndpoint of endpoint `id` at `addr`.
    fn create_body(&self, id: &str, addr: std::net::Ipv4Addr) -> String {
        format!(
            r#"{{"NetworkID":"{}","EndpointID":"{id}","Interface":
            {{"Address":"{addr}/24"}},"Options":{{}}}}"#,
            self.network_id
        )
    }

    /// The body of Docker's DeleteEndpoint of endpoint `id`.
    fn delete_body(&self, id: &str) -> String {
        format!(
            r#"{{"NetworkID":"{}","EndpointID":"{id}"}}"#,
            self.network_id
        )
    }

    /// The host ends of the containers' veths in the host namespace.
    fn veths(&self) -> Vec<String> {
        let out = run(&["ip", "-n", self.lab.host(), "-j", "link"]);
        let links: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("ip -j link");
        links
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .filter(|n| n.starts_with("nfv"))
            .collect()
    }

    /// Asserts that `n` containers' veths are in the host namespace (`what` says which, on
    /// failure).
    fn assert_veths(&self, n: usize, what: &str) {
        let veths = self.veths();
        assert_eq!(veths.len(), n, "{what}: {veths:?}");
    }
}

/// `docker-plugin` killed in an endpoint's create at its state save (its second rename; the
/// first writes its intent), after it wrote the endpoint's fast-path entry: the entry is for
/// an address no container of the state holds, into the ifindex of a veth the state does not
/// know either. Docker's next call to the plugin removes both, as the command line's next
/// command would.
#[test]
fn a_docker_endpoint_create_killed_at_its_save_leaves_no_fast_path_entry() {
    let p = PluginLab::new();
    // The endpoint, through a plugin killed at its second rename: the create's state save.
    let stray: std::net::Ipv4Addr = "172.18.0.5".parse().expect("an address");
    let body = p.create_body(&"e1".repeat(32), stray);
    p.killed_in(
        "CreateEndpoint",
        &body,
        "renameat",
        2,
        "a create killed at its save",
    );
    let left = p.lab.nf.endpoints();
    assert!(
        left.contains_key(&stray),
        "the kill should have come after the endpoint's fast-path entry: {left:?}"
    );
    p.assert_veths(1, "the killed create's veth");
    // Docker's next call, to a plugin started again, finds nothing of the killed one.
    let again = p.plugin(&[]);
    let next: std::net::Ipv4Addr = "172.18.0.6".parse().expect("an address");
    let answer = p.create_endpoint(&"e2".repeat(32), next);
    assert!(!answer.contains("\"Err\""), "CreateEndpoint: {answer}");
    again.stop();
    let left = p.lab.nf.endpoints();
    assert!(
        !left.contains_key(&stray) && left.contains_key(&next),
        "the next call left the stray entry, or made none of its own: {left:?}"
    );
    p.assert_veths(
        1,
        "the killed create's veth is still there beside the new one",
    );
}

/// `docker-plugin` killed at each netlink send of an endpoint's create: among them the one
/// that made the veth pair, before its mark (alias) was set. Docker may never ask for that
/// endpoint again (it gave up on it): its next call, another endpoint's create, must leave
/// nothing of the killed one — no veth, no fast-path entry, no record — and the host as the
/// state says, with no drift.
#[test]
fn a_docker_endpoint_create_killed_at_any_send_leaves_nothing_behind() {
    let p = PluginLab::new();
    let probe = "e9".repeat(32);
    let sends = p.first_call_sends(&[
        (
            "CreateEndpoint",
            p.create_body(&probe, "172.18.0.9".parse().expect("an address")),
        ),
        ("DeleteEndpoint", p.delete_body(&probe)),
    ]);
    assert!(
        !sends.is_empty(),
        "an endpoint's create made no netlink send"
    );
    let (killed_addr, next_addr): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        "172.18.0.5".parse().expect("an address"),
        "172.18.0.6".parse().expect("an address"),
    );
    let next_id = "ee".repeat(32);
    for &n in &sends {
        let what = format!("a create killed at its worker's sendto #{n} ({sends:?})");
        let body = p.create_body(&format!("{n:02x}").repeat(32), killed_addr);
        p.killed_in("CreateEndpoint", &body, "sendto", n, &what);
        // Docker's next call, to a plugin started again.
        let again = p.plugin(&[]);
        p.ok("CreateEndpoint", &p.create_body(&next_id, next_addr), &what);
        let (veths, entries) = (p.veths(), p.lab.nf.endpoints());
        let (unknown, drift) = (p.lab.unknown(), p.lab.drift());
        assert!(
            veths.len() == 1 && !entries.contains_key(&killed_addr) && unknown.is_empty(),
            "{what}: the next create left veths {veths:?}, fast-path entries {entries:?}, \
             beyond the state {unknown:?} (drift {drift:?})"
        );
        assert!(drift.is_empty(), "{what}: drift {drift:?}");
        p.ok("DeleteEndpoint", &p.delete_body(&next_id), &what);
        again.stop();
        p.assert_veths(0, &format!("{what}: DeleteEndpoint left"));
    }
}

/// `docker-plugin` killed at each netlink send of an endpoint's delete. Docker does not
/// retry a failed DeleteEndpoint: it releases the address in its IPAM and hands it to the
/// next container. That create, at the same address, must succeed, and leave nothing of
/// the deleted endpoint — no veth, no fast-path entry, no record — and no drift.
#[test]
fn a_docker_endpoint_delete_killed_at_any_send_frees_its_address() {
    let p = PluginLab::new();
    let addr: std::net::Ipv4Addr = "172.18.0.5".parse().expect("an address");
    let (old, new) = ("d1".repeat(32), "d2".repeat(32));
    let made = p.plugin(&[]);
    p.ok("CreateEndpoint", &p.create_body(&old, addr), "the endpoint");
    made.stop();
    let sends = p.first_call_sends(&[
        ("DeleteEndpoint", p.delete_body(&old)),
        ("CreateEndpoint", p.create_body(&old, addr)),
    ]);
    assert!(
        !sends.is_empty(),
        "an endpoint's delete made no netlink send"
    );
    for &n in &sends {
        let what = format!("a delete killed at its worker's sendto #{n} ({sends:?})");
        p.killed_in("DeleteEndpoint", &p.delete_body(&old), "sendto", n, &what);
        // Docker's next call: the address, to another endpoint.
        let again = p.plugin(&[]);
        p.ok("CreateEndpoint", &p.create_body(&new, addr), &what);
        let (veths, unknown, drift) = (p.veths(), p.lab.unknown(), p.lab.drift());
        assert!(
            veths.len() == 1 && unknown.is_empty() && drift.is_empty(),
            "{what}: the next create left veths {veths:?}, beyond the state {unknown:?}, \
             drift {drift:?}"
        );
        let in_state = p.lab.in_state();
        assert!(
            !in_state.iter().any(|o| o.contains(&old[..12])),
            "{what}: the deleted endpoint is still in the state: {in_state:?}"
        );
        // Back to the endpoint to delete.
        for (method, body) in [
            ("DeleteEndpoint", p.delete_body(&new)),
            ("CreateEndpoint", p.create_body(&old, addr)),
        ] {
            p.ok(method, &body, &what);
        }
        again.stop();
    }
}

/// Docker does not call a failed DeleteNetwork again: libnetwork logs the driver's error and
/// deletes the network from its own store all the same. `docker-plugin` killed at a step of
/// a network's delete must therefore leave nothing of the network after Docker's next call,
/// whatever it is (another network's create or delete; or, were Docker to ask again, the
/// same delete) — no bridge, no record, no drift — once the delete has recorded its intent.
/// Killed before that (opening its state, writing the intent's temporary file), it has
/// changed nothing: the network must be whole, as before the call (netfast cannot know
/// Docker went on; Docker's own list tells the plugin at its next start, tested below).
#[test]
fn a_docker_network_delete_killed_at_any_step_is_finished_by_the_next_call() {
    let p = PluginLab::new();
    let delete = format!(r#"{{"NetworkID":"{}"}}"#, p.network_id);
    let other_id = "e2".repeat(32);
    let other = p
        .network_body()
        .replace(&p.network_id, &other_id)
        .replace("172.18.0.", "172.19.0.");
    let delete_unknown = format!(r#"{{"NetworkID":"{}"}}"#, "e3".repeat(32));
    let calls = [
        ("DeleteNetwork", delete.clone()),
        ("CreateNetwork", p.network_body()),
    ];
    let intent = format!(
        "/run/netfast/{}/{}",
        p.lab.key,
        netfast::loader::state::INTENT_FILE
    );
    let (mut finished, mut untouched) = (0, 0);
    for (syscall, most) in [("sendto", 12), ("bpf", 8), ("unlinkat", 6)] {
        let made = p.first_call_makes(syscall, &calls);
        let picked = picks(made.len(), most).into_iter().map(|i| made[i - 1]);
        for (k, n) in picked.enumerate() {
            let what = format!(
                "a network delete killed at its worker's {syscall} #{n} ({} to {:?})",
                made[0],
                made.last()
            );
            p.killed_in("DeleteNetwork", &delete, syscall, n, &what);
            let again = p.plugin(&[]);
            if fs::metadata(&intent).is_err() {
                let (networks, drift) = (p.subnets(), p.lab.drift());
                assert!(
                    networks == ["172.18.0.0/24"] && drift.is_empty(),
                    "{what}, before its intent was recorded: netfast serves {networks:?}, \
                     drift {drift:?}; the network should be as it was"
                );
                untouched += 1;
                again.stop();
                continue;
            }
            // Docker's next call: another network's create; the same delete (were Docker
            // to ask again); or the delete of a network netfast does not know.
            let (next, body, want): (_, _, &[&str]) = match k % 3 {
                0 => ("CreateNetwork", &other, &["172.19.0.0/24"]),
                1 => ("DeleteNetwork", &delete, &[]),
                _ => ("DeleteNetwork", &delete_unknown, &[]),
            };
            p.ok(next, body, &what);
            let (networks, unknown, drift) = (p.subnets(), p.lab.unknown(), p.lab.drift());
            assert!(
                networks == want && unknown.is_empty() && drift.is_empty(),
                "{what}: after Docker's next call ({next} {body}) netfast serves \
                 {networks:?}, the host has {unknown:?} beyond the state, drift {drift:?}"
            );
            finished += 1;
            if k % 3 == 0 {
                let delete_other = format!(r#"{{"NetworkID":"{other_id}"}}"#);
                p.ok("DeleteNetwork", &delete_other, &what);
            }
            p.ok("CreateNetwork", &p.network_body(), &what);
            again.stop();
        }
    }
    assert!(
        finished > 0,
        "no delete was killed after its intent ({untouched} before): the sweep tested nothing"
    );
}

/// Killed before its intent, a network's delete changed nothing (above), but Docker has
/// forgotten the network all the same. The plugin, started again, asks dockerd which of the
/// networks it serves dockerd still has: one dockerd lists stays, one it does not goes —
/// no bridge (nothing of netfast's on the host beyond its state), no record, no drift.
#[test]
fn a_network_docker_forgot_goes_when_the_plugin_starts_again() {
    let p = PluginLab::new();
    let at = format!("/tmp/epsw-{}-dockerd.sock", p.lab.host());
    let other = "f0".repeat(32);
    {
        let dockerd = FakeDockerd::listing(&at, &[&p.network_id, &other]);
        let dockerd_at = dockerd.path().to_str().expect("a UTF-8 path");
        let mut plugin = p.plugin_with(&[], &["--docker-socket", dockerd_at]);
        plugin.wait_for_text(
            "dockerd still has every Docker network netfast served",
            Duration::from_secs(30),
        );
        plugin.stop();
        assert_eq!(
            p.subnets(),
            ["172.18.0.0/24"],
            "a network dockerd lists went"
        );
    }
    let dockerd = FakeDockerd::listing(&at, &[&other]);
    let dockerd_at = dockerd.path().to_str().expect("a UTF-8 path");
    let plugin = p.plugin_with(&[], &["--docker-socket", dockerd_at]);
    let gone = wait_until(Duration::from_secs(30), || p.subnets().is_empty());
    let printed = plugin.stop();
    let (unknown, drift) = (p.lab.unknown(), p.lab.drift());
    assert!(
        gone && unknown.is_empty() && drift.is_empty(),
        "the network dockerd no longer lists: netfast serves {:?}, the host has {unknown:?} \
         beyond the state, drift {drift:?}; the plugin printed:\n{}{}",
        p.subnets(),
        String::from_utf8_lossy(&printed.stdout),
        String::from_utf8_lossy(&printed.stderr)
    );
}

/// A create that the plugin saved but did not answer (killed) is one Docker retries across
/// the plugin's restart, and stores only once answered: dockerd's list, read before that,
/// lacks a network Docker is about to have. A network Docker names in a call after the
/// plugin started is not deleted, whatever the list said.
#[test]
fn a_network_docker_names_after_the_plugins_start_is_kept() {
    let p = PluginLab::new();
    let at = format!("/tmp/epsw-{}-dockerd.sock", p.lab.host());
    let (release, held) = std::sync::mpsc::channel();
    let dockerd = FakeDockerd::held(&at, &[], held);
    let dockerd_at = dockerd.path().to_str().expect("a UTF-8 path");
    let mut plugin = p.plugin_with(&[], &["--docker-socket", dockerd_at]);
    // Docker's retried create, answered before dockerd's list (which lacks the network).
    p.ok("CreateNetwork", &p.network_body(), "the retried create");
    release.send(()).expect("the stand-in dockerd waits");
    plugin.wait_for_text(
        "was named by Docker since the plugin started: kept",
        Duration::from_secs(30),
    );
    plugin.stop();
    assert_eq!(
        p.subnets(),
        ["172.18.0.0/24"],
        "the network Docker created went"
    );
}

/// A plugin that asks a dockerd that never answers (not started, or not at the socket it was
/// given) still stops at SIGTERM, at once, and deletes nothing.
#[test]
fn a_plugin_waiting_for_dockerd_stops_at_sigterm() {
    let p = PluginLab::new();
    let nowhere = format!("/tmp/epsw-{}-nodockerd.sock", p.lab.host());
    let plugin = p.plugin_with(&[], &["--docker-socket", &nowhere]);
    assert!(
        wait_until(Duration::from_secs(20), || plugin
            .stderr_so_far()
            .contains("asking again until it answers")),
        "the plugin did not say it waits for dockerd:\n{}",
        plugin.stderr_so_far()
    );
    plugin.signal(libc::SIGTERM);
    let out = plugin.wait_exit(Duration::from_secs(20));
    assert!(
        out.status.success(),
        "the plugin did not stop cleanly ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.subnets(), ["172.18.0.0/24"], "a network went unasked");
}

/// Docker does not stop at a failed DeleteEndpoint: it logs it and hands the address out
/// again. An interrupted command that netfast cannot complete (here a `config` whose state
/// holds settings that no longer validate) must not stop the endpoint's removal, or its
/// veth, entry and record would outlive it and refuse the address to the next container.
#[test]
fn a_docker_endpoint_is_removed_when_an_interrupted_command_cannot_be_completed() {
    let p = PluginLab::new();
    let plugin = p.plugin(&[]);
    let addr: std::net::Ipv4Addr = "172.18.0.5".parse().expect("an address");
    let id = "e1".repeat(32);
    let answer = p.create_endpoint(&id, addr);
    assert!(!answer.contains("\"Err\""), "CreateEndpoint: {answer}");
    let stuck = StuckIntent::plant(&p.lab);
    let answer = p.post(
        "DeleteEndpoint",
        &format!(r#"{{"NetworkID":"{}","EndpointID":"{id}"}}"#, p.network_id),
    );
    plugin.stop();
    drop(stuck);
    assert!(!answer.contains("\"Err\""), "DeleteEndpoint: {answer}");
    p.assert_veths(0, "the endpoint's veth is left");
    assert!(
        !p.lab.nf.endpoints().contains_key(&addr),
        "the endpoint's fast-path entry is left"
    );
}

/// An interrupted `netfast config` that cannot be completed: its intent, and a state whose
/// settings no longer validate. Both are put right again when dropped.
struct StuckIntent {
    state: String,
    port_range: serde_json::Value,
    intent: String,
}

impl StuckIntent {
    fn plant(lab: &Lab) -> StuckIntent {
        let dir = format!("/run/netfast/{}", lab.key);
        let stuck = StuckIntent {
            state: format!("{dir}/state.json"),
            port_range: Self::read(&format!("{dir}/state.json"))["dataplane"]["port_range"].clone(),
            intent: format!("{dir}/intent.json"),
        };
        stuck.set_port_range("not-a-range".into());
        fs::write(
            &stuck.intent,
            r#"{"command":"config --port-range not-a-range","create":["settings"]}"#,
        )
        .expect("write the intent");
        stuck
    }

    fn read(path: &str) -> serde_json::Value {
        serde_json::from_str(&fs::read_to_string(path).expect("the state")).expect("a state")
    }

    fn set_port_range(&self, range: serde_json::Value) {
        let mut state = Self::read(&self.state);
        state["dataplane"]["port_range"] = range;
        fs::write(&self.state, state.to_string()).expect("edit the state");
    }
}

impl Drop for StuckIntent {
    fn drop(&mut self) {
        self.set_port_range(self.port_range.clone());
        let _ = fs::remove_file(&self.intent);
    }
}
