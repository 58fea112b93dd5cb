//! `cargo xtask setup`: installs what is missing, a line per step, and changes nothing that
//! is already there.

use crate::util::{Cmd, Fail, cargo, is_root};

/// The LLVM that bpf-linker is built against (Debian's, from bookworm-security).
const LLVM_MAJOR: &str = "22";
const BPF_LINKER_VERSION: &str = "0.13";

/// Debian packages: what bpf-linker builds against, and the tools the tests and demo run.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "procps",
    "bpftool",
    "curl",
    "iperf3",
    "socat",
    "traceroute",
    "nftables",
    "iptables",
    "nginx-light",
    "wrk",
    "fonts-dejavu-core",
    "python3",
    "python3-scapy",
    "tcpdump",
    "strace",
    "kmod",
    "coturn",
    "hping3",
    "python3-scapy",
    // The Docker tests run their own dockerd in a test namespace, with an image made from
    // busybox-static (no registry is reachable).
    "docker.io",
    "busybox-static",
    // promtool checks the agent's metrics, and the agent's tests run a Prometheus server of
    // their own in a test namespace.
    "prometheus",
    // systemd-analyze checks the agent's unit file.
    "systemd",
];

/// Packages whose install starts a service that changes the machine's root network namespace
/// (dockerd writes iptables rules and creates docker0) or listens in it (prometheus, on
/// :9090): installed with services held back.
const NO_START: &[&str] = &["docker.io", "prometheus"];

/// Debian's hook that tells maintainer scripts whether they may start services (101: no).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn run() -> Result<(), Fail> {
    println!("== setup");
    debian_packages()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    println!("setup: done");
    Ok(())
}

fn installed(package: &str) -> bool {
    Cmd::new("dpkg-query")
        .args(&["-W", "-f=${Status}", package])
        .output()
        .is_some_and(|s| s.contains("install ok installed"))
}

fn debian_packages() -> Result<(), Fail> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    println!("setup: Debian packages: installing {}", missing.join(" "));
    if !is_root() {
        return Err(Fail(format!(
            "installing Debian packages needs root; run as root, or install them yourself: apt-get install -y {}",
            missing.join(" ")
        )));
    }
    Cmd::new("apt-get").args(&["update", "-q"]).run()?;
    // The tests never want the machine's own dockerd: it would rewrite the root namespace's
    // iptables. Where no policy says otherwise, services stay down during this install.
    let hold =
        missing.iter().any(|p| NO_START.contains(p)) && !std::path::Path::new(POLICY_RC_D).exists();
    if hold {
        println!("setup: holding back services while installing (temporary {POLICY_RC_D})");
        std::fs::write(
            POLICY_RC_D,
            "#!/bin/sh\n# netfast's xtask setup: start no service\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(POLICY_RC_D, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|e| Fail(format!("writing {POLICY_RC_D}: {e}")))?;
    }
    let installed = Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(&["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .run()
        .map_err(|Fail(e)| {
            Fail(format!(
                "{e}; the packages needed are: {}",
                missing.join(" ")
            ))
        });
    if hold {
        let _ = std::fs::remove_file(POLICY_RC_D);
        // Held back now, but enabled for the next boot: where systemd runs, it would start
        // dockerd (with its iptables rules and docker0) then. Enabling Docker on the host is
        // the operator's choice (README, "Use with Docker", configures it first).
        if installed.is_ok() && std::path::Path::new("/run/systemd/system").is_dir() {
            println!(
                "setup: disabling docker.service, docker.socket and prometheus.service (the \
                 tests run their own)"
            );
            let _ = Cmd::new("systemctl")
                .args(&[
                    "disable",
                    "--quiet",
                    "docker.service",
                    "docker.socket",
                    "prometheus.service",
                ])
                .run();
        }
    }
    installed
}

fn rust_src() -> Result<(), Fail> {
    let components = Cmd::new("rustup")
        .args(&["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .ok_or_else(|| {
            Fail("the `nightly` toolchain is not installed (`rustup toolchain list`); the eBPF programs need it".into())
        })?;
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for nightly: present");
        return Ok(());
    }
    println!("setup: rust-src for nightly: installing");
    Cmd::new("rustup")
        .args(&["component", "add", "rust-src", "--toolchain", "nightly"])
        .run()
}

fn bpf_linker() -> Result<(), Fail> {
    let version = Cmd::new("bpf-linker")
        .args(&["--version"])
        .output()
        .unwrap_or_default();
    if version
        .split_whitespace()
        .any(|w| w.starts_with(BPF_LINKER_VERSION))
    {
        println!("setup: bpf-linker: {}", version.trim());
        return Ok(());
    }
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION}: building against LLVM {LLVM_MAJOR} (a few minutes)"
    );
    let features = format!("llvm-{LLVM_MAJOR}");
    let version_req = format!("^{BPF_LINKER_VERSION}");
    cargo(&[
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        &version_req,
        "--no-default-features",
        "--features",
        &features,
    ])
    .env("LLVM_PREFIX", &format!("/usr/lib/llvm-{LLVM_MAJOR}"))
    .run()
    .map_err(|Fail(e)| {
        Fail(format!(
            "{e}; bpf-linker needs llvm-{LLVM_MAJOR}-dev and libpolly-{LLVM_MAJOR}-dev"
        ))
    })
}

/// netfast pins its dataplane in the bpf filesystem; it mounts it itself when it can, but
/// tests and `ip netns exec` runs want it mounted where everything sees it.
fn bpffs() -> Result<(), Fail> {
    let fstype = Cmd::new("stat")
        .args(&["-f", "-c", "%T", "/sys/fs/bpf"])
        .output()
        .unwrap_or_default();
    if fstype.trim() == "bpf_fs" {
        println!("setup: bpf filesystem: mounted at /sys/fs/bpf");
        return Ok(());
    }
    println!("setup: bpf filesystem: mounting at /sys/fs/bpf");
    if !is_root() {
        return Err(Fail(
            "mounting the bpf filesystem needs root: mount -t bpf bpf /sys/fs/bpf".into(),
        ));
    }
    Cmd::new("mount")
        .args(&["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .run()
}
