//! Driving the real `netfast` binary in a test's host namespace, the way a user does.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use netfast::{Dataplane, common::config::Endpoint};
use serde::{Deserialize, de::DeserializeOwned};

use crate::{Background, netns::TestNetns, topology::UPLINK};

/// A row of `netfast network ls --json`: the fields the tests read (the rest is ignored).
#[derive(Debug, Deserialize)]
pub struct NetworkRow {
    pub name: String,
    /// `a.b.c.d/n`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub bridge: String,
    pub uplink: String,
    /// ebpf, nftables or iptables.
    pub backend: String,
    /// What the kernel lacks of what the state says; empty when they agree.
    pub drift: Vec<String>,
}

/// A row of `netfast container ls --json`: the fields the tests read.
#[derive(Debug, Deserialize)]
pub struct ContainerRow {
    pub name: String,
    pub network: String,
    pub ip: Ipv4Addr,
    pub veth: String,
    /// Its network namespace's path (Docker's sandbox for a Docker endpoint).
    pub netns: Option<String>,
    /// Docker's endpoint ID, for a container made through the Docker plugin.
    #[serde(default)]
    pub docker_endpoint: Option<String>,
    pub drift: Vec<String>,
}

/// A line of `netfast monitor --drops --json`: a packet a program dropped.
#[derive(Debug, Deserialize)]
pub struct DropEventRow {
    /// `DROP`.
    pub event: String,
    pub hook: String,
    pub reason: String,
    pub interface: String,
    pub protocol: String,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    #[serde(default)]
    pub sport: Option<u16>,
    #[serde(default)]
    pub dport: Option<u16>,
}

/// A line of `netfast monitor --log --json`: a debug record of the programs.
#[derive(Debug, Deserialize)]
pub struct LogEventRow {
    /// `LOG`.
    pub event: String,
    pub level: String,
    pub message: String,
}

/// What `netfast config --json` prints: the fields the tests read.
#[derive(Debug, Deserialize)]
pub struct ConfigJson {
    pub timeouts: TimeoutsJson,
}

/// The timeouts of [`ConfigJson`], in seconds: the ones the tests read.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct TimeoutsJson {
    pub udp: u32,
    pub icmp: u32,
}

/// A row of `netfast publish ls --json`: the fields the tests read.
#[derive(Debug, Deserialize)]
pub struct PublicationRow {
    pub network: String,
    /// As given: `[HOST_IP:]HOST_PORTS:CONTAINER:CONTAINER_PORTS/PROTO`.
    pub spec: String,
    /// The sources allowed to connect (`a.b.c.d/n`); anyone when empty.
    pub allow: Vec<String>,
}

/// A flow of `netfast conntrack list --json` (netfast's `maps::conntrack::Flow`): the
/// fields the tests read.
#[derive(Clone, Debug, Deserialize)]
pub struct FlowRow {
    /// tcp, udp or icmp.
    pub protocol: String,
    /// TCP's state (`ESTABLISHED`, …); absent for the other protocols.
    #[serde(default)]
    pub state: Option<String>,
    /// Seconds until the flow expires if idle.
    pub expires_in: u32,
    pub original: TupleRow,
    pub reply: TupleRow,
}

/// One direction of a [`FlowRow`].
#[derive(Clone, Debug, Deserialize)]
pub struct TupleRow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 0 for ICMP.
    pub sport: u16,
    pub dport: u16,
    /// Absent when not known (an event reports one direction's entry).
    #[serde(default)]
    pub packets: Option<u64>,
}

/// A line of `netfast conntrack watch --json` (and of `monitor --json` for flows): what
/// happened (`NEW`, `UPDATE`, `DESTROY`) to a flow.
#[derive(Clone, Debug, Deserialize)]
pub struct FlowEvent {
    pub event: String,
    #[serde(flatten)]
    pub flow: FlowRow,
}

impl FlowEvent {
    /// The event on `line`, if it is one (a `--json` stream has no other lines, but a test
    /// reads whatever was printed so far).
    pub fn parse(line: &str) -> Option<FlowEvent> {
        serde_json::from_str(line).ok()
    }
}

/// `netfast conntrack count --json`.
#[derive(Debug, Deserialize)]
pub struct CountJson {
    pub count: usize,
}

/// `netfast stats --json` (netfast's `stats::Stats`): the counters the tests read.
#[derive(Clone, Debug, Deserialize)]
pub struct StatsJson {
    /// Packets the fast path forwarded, and those it left to the host's stack.
    pub events: Vec<CounterRow>,
    pub drops: Vec<CounterRow>,
    pub networks: Vec<NetworkStatsRow>,
}

impl StatsJson {
    /// The counters of network `name`; panics naming the networks there are if it has none.
    pub fn network(&self, name: &str) -> &NetworkStatsRow {
        self.networks
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no network {name} in stats: {:?}", self.networks))
    }

    /// The packets of counter `name` among `counters` (this' `list`); panics if it has none.
    fn packets(&self, list: &str, counters: &[CounterRow], name: &str) -> u64 {
        counters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {list} counter {name} in stats: {self:?}"))
            .packets
    }
}

/// A counter of [`StatsJson`]: an event or a drop reason, and its packets.
#[derive(Clone, Debug, Deserialize)]
pub struct CounterRow {
    /// The event (`fast_path`, …) or the drop reason (`not_allowed`, …).
    #[serde(alias = "event", alias = "reason")]
    pub name: String,
    pub packets: u64,
}

/// Translated traffic of one network.
#[derive(Clone, Debug, Deserialize)]
pub struct NetworkStatsRow {
    /// Empty when the state does not know the network.
    pub name: String,
    /// `a.b.c.d/n`.
    pub subnet: String,
    /// Leaving the containers, and coming to them.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
}

/// A check of `netfast doctor --json` (netfast's `doctor::Check`).
#[derive(Clone, Debug, Deserialize)]
pub struct DoctorCheck {
    /// ebpf, forwarding, modules, netfilter or agent.
    pub area: String,
    pub name: String,
    pub status: CheckStatus,
    /// What was found, and why it matters.
    pub found: String,
    /// The exact fix, for anything but PASS.
    pub fix: Option<String>,
    /// What `--fix` did about it.
    pub fixed: Option<String>,
}

impl DoctorCheck {
    /// Asserts that the check has `status` and that what it found says `says`.
    pub fn assert_says(&self, status: CheckStatus, says: &str) {
        assert_eq!(self.status, status, "{self:#?}");
        assert!(self.found.contains(says), "found no {says:?} in {self:#?}");
    }

    /// The fix; panics if the check has none.
    pub fn fix(&self) -> &str {
        self.fix
            .as_deref()
            .unwrap_or_else(|| panic!("no fix in {self:?}"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Pass,
    Warn,
    Fail,
}

/// The checks named `name` in `area`.
pub fn checks_named<'a>(checks: &'a [DoctorCheck], area: &str, name: &str) -> Vec<&'a DoctorCheck> {
    checks
        .iter()
        .filter(|c| c.area == area && c.name == name)
        .collect()
}

/// The one check named `name` in `area`; panics with all of them if there is not one.
pub fn one_check<'a>(checks: &'a [DoctorCheck], area: &str, name: &str) -> &'a DoctorCheck {
    match checks_named(checks, area, name).as_slice() {
        [c] => c,
        other => panic!(
            "expected one {area}/{name} check, found {}: {checks:#?}",
            other.len()
        ),
    }
}

/// The checks `netfast doctor --json` printed on `stdout` (whatever its exit status: it
/// fails when a check does); panics with `stderr` if that is not the JSON expected.
pub fn doctor_checks(stdout: &[u8], stderr: &[u8]) -> Vec<DoctorCheck> {
    serde_json::from_slice(stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no array of checks ({e}):\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(stdout),
            String::from_utf8_lossy(stderr)
        )
    })
}

/// `network create NAME --subnet SUBNET --uplink up0 EXTRA…`: the argv that makes a network
/// on the lab's uplink.
pub fn network_create<'a>(name: &'a str, subnet: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut argv = vec![
        "network", "create", name, "--subnet", subnet, "--uplink", UPLINK,
    ];
    argv.extend_from_slice(extra);
    argv
}

/// The `netfast` binary cargo built next to this program (a test or a binary of this
/// package), if there is one.
pub fn find_netfast_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test>-<hash> or target/<profile>/<bin>
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("netfast"))
        .find(|candidate| candidate.is_file())
}

/// The `netfast` binary cargo built next to this test (target/<profile>/netfast).
pub fn netfast_bin() -> PathBuf {
    if let Some(bin) = find_netfast_bin() {
        return bin;
    }
    let exe = std::env::current_exe().expect("current_exe");
    panic!(
        "the netfast binary was not found next to {} — build it first \
         (`cargo build -p netfast`; `cargo xtask test` does)",
        exe.display()
    );
}

/// The test build of `netfast` with the next map layout (feature `layout-next`), which
/// `cargo xtask test` puts in target/layout-next: the upgrade tests move a live dataplane to
/// it.
pub fn next_layout_netfast_bin() -> PathBuf {
    feature_build_bin("layout-next")
}

/// The `netfast` binary built with the `ebpf-log` feature (its programs write debug records
/// that `netfast monitor --log` reads), in `target/ebpf-log`; `cargo xtask test` puts it
/// there.
pub fn ebpf_log_netfast_bin() -> PathBuf {
    feature_build_bin("ebpf-log")
}

/// The `netfast` binary of a test build with `feature`, in `target/<feature>/debug`.
fn feature_build_bin(feature: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test>-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test binary lives under target/<profile>/deps");
    let bin = target.join(feature).join("debug/netfast");
    assert!(
        bin.is_file(),
        "the {feature} test build of netfast is missing at {}: `cargo xtask test` puts it \
         there (or `cargo build -p netfast --bin netfast --features {feature} --target-dir \
         target/{feature}`, which builds every dependency again)",
        bin.display()
    );
    bin
}

/// `netfast --netns <host> …` for one test host; runs `netfast down` there when dropped so
/// that nothing netfast created (pins, state) outlives the test.
pub struct Netfast {
    host: String,
    bin: PathBuf,
}

impl Netfast {
    pub fn new(host: &TestNetns) -> Self {
        Self::with_bin(host, netfast_bin())
    }

    /// Another build of netfast (see [`next_layout_netfast_bin`]) for the same host.
    pub fn with_bin(host: &TestNetns, bin: PathBuf) -> Self {
        Netfast {
            host: host.name().to_owned(),
            bin,
        }
    }

    /// The host's key (`netns-<cookie>`) as `network ls` names it: its state is in
    /// `/run/netfast/<key>`, its pins in `/sys/fs/bpf/netfast/<key>`.
    pub fn key(&self) -> String {
        let ls = self.ok(&["network", "ls"]);
        ls.split("(key ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .unwrap_or_else(|| panic!("no key in `network ls`:\n{ls}"))
            .to_owned()
    }

    /// The binary this runs.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// `netfast --netns <host> args…` as an argv, for a test that runs it under another
    /// program (strace, setpriv).
    pub fn argv<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let bin = self
            .bin
            .to_str()
            .expect("the netfast binary's path is UTF-8");
        let mut argv = vec![bin, "--netns", &self.host];
        argv.extend_from_slice(args);
        argv
    }

    /// Runs `netfast --netns <host> args…`, whatever its exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    /// [`Netfast::run`] with these environment variables set.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(&self.bin)
            .arg("--netns")
            .arg(&self.host)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run netfast")
    }

    /// Starts `netfast --netns <host> args…` in the background (`conntrack watch`,
    /// `monitor`, the agent): its output is collected as it comes.
    pub fn spawn(&self, args: &[&str]) -> Background {
        Background::spawn(&self.argv(args))
    }

    /// Runs netfast and returns stdout; panics with everything it printed if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let command = format!("netfast --netns {} {}", self.host, args.join(" "));
        crate::cmd::success_stdout(&command, &self.run(args), "")
    }

    /// Runs netfast, which must succeed, and returns what it said on stderr (its warnings
    /// and notes).
    pub fn ok_stderr(&self, args: &[&str]) -> String {
        let command = format!("netfast --netns {} {}", self.host, args.join(" "));
        let out = self.run(args);
        crate::cmd::success_stdout(&command, &out, "");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The fast path's endpoints (`NETFAST_ENDPOINTS`): container address → its veth's
    /// ifindex, MACs and MTU, read from the host's pinned dataplane.
    pub fn endpoints(&self) -> BTreeMap<Ipv4Addr, Endpoint> {
        self.with_dataplane(|dp| {
            netfast::maps::endpoints(dp.ebpf())
                .expect("read NETFAST_ENDPOINTS")
                .into_iter()
                .collect()
        })
    }

    /// Writes the fast path's endpoint `addr` → `ep` straight into the pinned map, as a
    /// command killed before it saved the state leaves it.
    pub fn plant_endpoint(&self, addr: Ipv4Addr, ep: &Endpoint) {
        self.with_dataplane(|dp| dp.set_endpoint(addr, ep).expect("write NETFAST_ENDPOINTS"));
    }

    /// The dataplane's settings as the programs read them (`NETFAST_CONFIG`), clock included.
    pub fn config_map(&self) -> netfast::common::config::DpConfig {
        self.with_dataplane(|dp| dp.config().expect("read NETFAST_CONFIG"))
    }

    /// Runs `f` on the host's pinned dataplane, opened from inside the host's namespace.
    fn with_dataplane<T: Send>(&self, f: impl FnOnce(&mut Dataplane) -> T + Send) -> T {
        crate::netns::within(&self.host, || {
            let host = netfast::host::Host::current().expect("the host");
            let mut dp = Dataplane::open_existing(&host)
                .expect("open the pinned dataplane")
                .unwrap_or_else(|| panic!("{} has no pinned dataplane", self.host));
            f(&mut dp)
        })
    }

    /// Makes the META pin of the dataplane pinned in `dir` say that build `version` (another
    /// program object: `object` is flipped by `flip`) runs it, as `netfast upgrade` by that
    /// build would have.
    pub fn pretend_another_build_runs(&self, dir: &std::path::Path, version: &str, flip: u64) {
        let mut meta = netfast::upgrade::read_meta(dir)
            .expect("read META")
            .unwrap_or_else(|| panic!("no META pin in {}", dir.display()));
        meta.object ^= flip;
        meta.version = netfast::common::upgrade::version_field(version);
        netfast::upgrade::write_meta(dir, &meta).expect("write META");
    }

    /// Runs netfast under strace, killed (SIGKILL) at its `n`th `syscall` (a crash at that
    /// point, for the tests of interrupted commands): whether it was killed.
    pub fn killed_at(&self, syscall: &str, n: usize, args: &[&str]) -> bool {
        let inject = format!("inject={syscall}:signal=KILL:when={n}");
        let mut argv = vec!["strace", "-f", "-qq", "-o", "/dev/null", "-e", &inject];
        argv.extend(self.argv(args));
        let out = crate::run(&argv);
        use std::os::unix::process::ExitStatusExt;
        out.status.signal() == Some(libc::SIGKILL) || out.status.code() == Some(137)
    }

    /// Runs netfast expecting failure; returns stderr; panics if it succeeded.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`netfast --netns {} {}` succeeded but should have failed:\n{}",
            self.host,
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// [`network_create`] run with [`Netfast::ok`]: its stdout.
    pub fn create_network(&self, name: &str, subnet: &str, extra: &[&str]) -> String {
        self.ok(&network_create(name, subnet, extra))
    }

    /// Runs netfast (which must succeed) and parses its stdout as JSON into `T`.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "`netfast {}` printed what is not the JSON expected ({e}):\n{out}",
                args.join(" ")
            )
        })
    }

    /// `netfast network ls --json`.
    pub fn networks(&self) -> Vec<NetworkRow> {
        self.json(&["network", "ls", "--json"])
    }

    /// `netfast container ls --json`.
    pub fn containers(&self) -> Vec<ContainerRow> {
        self.json(&["container", "ls", "--json"])
    }

    /// `netfast publish ls --json`.
    pub fn publications(&self) -> Vec<PublicationRow> {
        self.json(&["publish", "ls", "--json"])
    }

    /// `netfast stats --json`.
    pub fn stats(&self) -> StatsJson {
        self.json(&["stats", "--json"])
    }

    /// Packets dropped for `reason` (its name in `netfast stats`).
    pub fn drops(&self, reason: &str) -> u64 {
        let stats = self.stats();
        stats.packets("drops", &stats.drops, reason)
    }

    /// Packets counted for event `event` (its name in `netfast stats`, e.g. `fast_path`).
    pub fn event(&self, event: &str) -> u64 {
        let stats = self.stats();
        stats.packets("events", &stats.events, event)
    }

    /// `netfast conntrack list --json FILTERS…`.
    pub fn flows(&self, filters: &[&str]) -> Vec<FlowRow> {
        let mut args = vec!["conntrack", "list", "--json"];
        args.extend_from_slice(filters);
        self.json(&args)
    }

    /// `netfast conntrack count --json FILTERS…`.
    pub fn flow_count(&self, filters: &[&str]) -> usize {
        let mut args = vec!["conntrack", "count", "--json"];
        args.extend_from_slice(filters);
        self.json::<CountJson>(&args).count
    }

    /// `netfast doctor --json ARGS…`: its checks, whatever its exit status.
    pub fn doctor(&self, args: &[&str]) -> Vec<DoctorCheck> {
        let mut argv = vec!["doctor", "--json"];
        argv.extend_from_slice(args);
        let out = self.run(&argv);
        doctor_checks(&out.stdout, &out.stderr)
    }
}

impl Drop for Netfast {
    fn drop(&mut self) {
        if std::thread::panicking() && find_netfast_bin().is_none() {
            // The test already failed for want of the binary; say nothing more.
            return;
        }
        let out = self.run(&["down"]);
        if !out.status.success() {
            let msg = format!(
                "`netfast --netns {} down` failed, leaving netfast objects behind:\n{}",
                self.host,
                String::from_utf8_lossy(&out.stderr)
            );
            // Never panic while a failing test unwinds: that aborts and leaks namespaces.
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}
