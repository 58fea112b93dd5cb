//! Driving the real `netfast` binary in a test's host namespace, the way a user does.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use serde::{Deserialize, de::DeserializeOwned};

use crate::{Background, netns::TestNetns, topology::UPLINK};

/// A row of `netfast network ls --json`: the fields the tests read (the rest is ignored).
#[derive(Debug, Deserialize)]
pub struct NetworkRow {
    pub name: String,
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
    /// Docker's endpoint ID, for a container made through the Docker plugin.
    #[serde(default)]
    pub docker_endpoint: Option<String>,
    pub drift: Vec<String>,
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
/// `cargo xtask test` builds into target/layout-next: the upgrade tests move a live
/// dataplane to it.
pub fn next_layout_netfast_bin() -> PathBuf {
    feature_build_bin("layout-next")
}

/// The `netfast` binary built with the `ebpf-log` feature (its programs write debug records
/// that `netfast monitor --log` reads), in `target/ebpf-log`; `cargo xtask test` builds it.
pub fn ebpf_log_netfast_bin() -> PathBuf {
    feature_build_bin("ebpf-log")
}

/// The `netfast` binary of a test build with `feature`, built in `target/<feature>`.
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
        "the {feature} test build of netfast is missing at {}: build it with `cargo build \
         -p netfast --bin netfast --features {feature} --target-dir target/{feature}` \
         (`cargo xtask test` does)",
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
        let bin = self
            .bin
            .to_str()
            .expect("the netfast binary's path is UTF-8");
        let mut argv = vec![bin, "--netns", &self.host];
        argv.extend_from_slice(args);
        Background::spawn(&argv)
    }

    /// Runs netfast and returns stdout; panics with everything it printed if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let command = format!("netfast --netns {} {}", self.host, args.join(" "));
        crate::cmd::success_stdout(&command, &self.run(args), "")
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

    /// `netfast stats --json`.
    pub fn stats(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["stats", "--json"])).expect("stats --json")
    }

    /// Packets dropped for `reason` (its name in `netfast stats`).
    pub fn drops(&self, reason: &str) -> u64 {
        counter(&self.stats(), "drops", "reason", reason)
    }

    /// Packets counted for event `event` (its name in `netfast stats`, e.g. `fast_path`).
    pub fn event(&self, event: &str) -> u64 {
        counter(&self.stats(), "events", "event", event)
    }
}

fn counter(stats: &serde_json::Value, list: &str, key: &str, name: &str) -> u64 {
    stats[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} in stats: {stats}"))
        .iter()
        .find(|d| d[key] == name)
        .and_then(|d| d["packets"].as_u64())
        .unwrap_or_else(|| panic!("no {list} counter {name} in stats: {stats}"))
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
