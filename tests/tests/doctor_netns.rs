//! `netfast doctor` against host namespaces broken on purpose, the way the articles' hosts
//! are: forwarding off, a FORWARD policy of DROP, a Docker-like MASQUERADE of netfast's
//! subnet and a DNAT of its published port, a Docker-like nftables table. Each test checks
//! the exact WARN/FAIL lines, that the doctor alone changes nothing, that `--fix` repairs
//! only what is safe (and persists nothing from inside a namespace), and that the fixes it
//! names for rules work when a human runs them.
//!
//! Everything is broken inside test namespaces; the root namespace is only read.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use netfast_tests::{
    Netfast, Removed, TestNetns, Topology,
    netfast_cli::{CheckStatus, DoctorCheck, checks_named, doctor_checks, netfast_bin, one_check},
    require_root,
    topology::UPLINK,
};

/// A host namespace with network `web` (172.18.0.0/24, masqueraded out of the uplink), a
/// container, and its port 80 published on 8080. Drops `netfast down` first, then the
/// namespaces.
struct Host {
    /// Also held for its `netfast down` on drop.
    nf: Netfast,
    topo: Topology,
}

/// A [`Host`], and a /etc for its doctor.
fn host_with_web() -> (Host, TempEtc) {
    require_root();
    let topo = Topology::builder().without_bridge().build();
    let nf = Netfast::new(&topo.host);
    nf.ok(&["config", "--ct-max", "4096"]);
    nf.create_network("web", "172.18.0.0/24", &[]);
    let ct = format!("{}c0", topo.host.name());
    nf.ok(&["container", "create", &ct, "--network", "web"]);
    nf.ok(&["publish", "web", &format!("8080:{ct}:80")]);
    let etc = TempEtc::new(&topo.host);
    (Host { nf, topo }, etc)
}

/// A namespace of its own (named with `tag`) without netfast, and a /etc for it.
fn bare_host(tag: &str) -> (TestNetns, TempEtc) {
    require_root();
    let ns = TestNetns::new(tag);
    let etc = TempEtc::new(&ns);
    (ns, etc)
}

/// A directory standing in for /etc, removed when dropped.
struct TempEtc(Removed);

impl TempEtc {
    fn new(ns: &TestNetns) -> TempEtc {
        TempEtc(Removed::dir(&format!("netfast-doctor-etc-{}", ns.name())))
    }

    /// Every file under it.
    fn files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push(e.path());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &mut out);
        out
    }
}

/// `netfast --netns NS doctor ARGS`, with the persistence files under `etc`.
fn doctor_raw(ns: &TestNetns, args: &[&str], etc: &TempEtc) -> Output {
    Command::new(netfast_bin())
        .args(["--netns", ns.name(), "doctor"])
        .args(args)
        .env("NETFAST_DOCTOR_ETC", &*etc.0)
        .stdin(Stdio::null())
        .output()
        .expect("run netfast doctor")
}

/// The checks of `doctor --json ARGS`, and its exit code.
fn doctor(ns: &TestNetns, args: &[&str], etc: &TempEtc) -> (Vec<DoctorCheck>, Option<i32>) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = doctor_raw(ns, &all, etc);
    (doctor_checks(&out.stdout, &out.stderr), out.status.code())
}

fn no_fail_but(checks: &[DoctorCheck], allowed: &[(&str, &str)]) {
    for c in checks.iter().filter(|c| c.status == CheckStatus::Fail) {
        assert!(
            allowed.contains(&(c.area.as_str(), c.name.as_str())),
            "unexpected FAIL: {c:#?}"
        );
    }
}

/// What the doctor must not change: the sysctls it checks and every rule.
fn snapshot(ns: &TestNetns) -> String {
    let mut out = ns.exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    for save in ["iptables-legacy-save", "iptables-nft-save"] {
        // Comments carry the time of the dump.
        let rules = ns.exec_ok(&[save]);
        out.extend(
            rules
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n")),
        );
    }
    out + &ns.exec_ok(&["nft", "list", "ruleset"])
}

fn sh(ns: &TestNetns, command: &str) {
    ns.exec_ok(&["sh", "-c", command]);
}

#[test]
fn forwarding_off_forward_drop_and_docker_rules_fail_and_fix_repairs_only_forwarding() {
    let (h, etc) = host_with_web();
    let ns = &h.topo.host;
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    ns.exec_ok(&["iptables", "-P", "FORWARD", "DROP"]);
    // With the fast path off, web's traffic takes the kernel's forwarding path.
    h.nf.ok(&["config", "--fast-path", "off"]);
    let masquerade = "-s 172.18.0.0/24 ! -o docker0 -j MASQUERADE";
    sh(ns, &format!("iptables -t nat -A POSTROUTING {masquerade}"));
    ns.exec_ok(&["iptables", "-t", "nat", "-N", "DOCKER"]);
    let dnat = "! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80";
    sh(ns, &format!("iptables -t nat -A DOCKER {dnat}"));

    let before = snapshot(ns);
    let (checks, code) = doctor(ns, &[], &etc);
    assert_eq!(code, Some(1), "a FAIL exits with 1");

    let fwd = one_check(&checks, "forwarding", "net.ipv4.ip_forward");
    assert_eq!(fwd.status, CheckStatus::Fail, "{fwd:#?}");
    assert!(fwd.found.starts_with("0: "), "{fwd:#?}");
    assert!(
        fwd.fix().starts_with("sysctl -w net.ipv4.ip_forward=1"),
        "{fwd:#?}"
    );

    let policy = one_check(&checks, "netfilter", "FORWARD policy");
    assert_eq!(policy.status, CheckStatus::Warn, "{policy:#?}");
    assert!(policy.found.starts_with("DROP (iptables-"), "{policy:#?}");
    assert!(
        policy.found.contains(
            ", table filter): it drops the forwarded traffic of network web (eBPF with \
             --fast-path off)"
        ),
        "{policy:#?}"
    );
    assert_eq!(
        policy.fix(),
        "iptables -P FORWARD ACCEPT, or keep it and accept netfast's subnets: \
         iptables -I FORWARD -s 172.18.0.0/24 -j ACCEPT; \
         iptables -I FORWARD -d 172.18.0.0/24 -j ACCEPT",
        "{policy:#?}"
    );

    let docker = one_check(&checks, "netfilter", "Docker");
    assert_eq!(docker.status, CheckStatus::Warn, "{docker:#?}");
    assert!(
        docker.found.contains("chains DOCKER (iptables-"),
        "{docker:#?}"
    );

    let double = checks_named(&checks, "netfilter", "double translation");
    assert_eq!(double.len(), 2, "{double:?}");
    assert!(double.iter().all(|c| c.status == CheckStatus::Fail));
    let masq = double
        .iter()
        .find(|c| c.found.contains("MASQUERADE"))
        .expect("the MASQUERADE rule");
    assert!(
        masq.found
            .starts_with(&format!("`-A POSTROUTING {masquerade}` (iptables-")),
        "{masq:#?}"
    );
    assert!(
        masq.found
            .contains("network web (172.18.0.0/24) leaving through up0"),
        "{masq:#?}"
    );
    assert_eq!(
        masq.fix(),
        format!("iptables -t nat -D POSTROUTING {masquerade}")
    );
    let redirect = double
        .iter()
        .find(|c| c.found.contains("DNAT"))
        .expect("the DNAT rule");
    assert!(
        redirect
            .found
            .contains("it redirects tcp port 8080, which netfast publishes"),
        "{redirect:#?}"
    );
    assert_eq!(redirect.fix(), format!("iptables -t nat -D DOCKER {dnat}"));
    no_fail_but(
        &checks,
        &[
            ("forwarding", "net.ipv4.ip_forward"),
            ("netfilter", "double translation"),
        ],
    );

    // The text report: a line per check, the fix under it.
    let out = doctor_raw(ns, &[], &etc);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("FAIL  forwarding  net.ipv4.ip_forward: 0: "),
        "{report}"
    );
    assert!(
        report.contains("\n                  fix: sysctl -w net.ipv4.ip_forward=1"),
        "{report}"
    );
    assert!(
        report.contains("PASS  ebpf        bpf syscall: usable"),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1));

    // Without --fix, nothing changed.
    assert_eq!(
        snapshot(ns),
        before,
        "doctor without --fix changed something"
    );
    assert!(etc.files().is_empty(), "{:?}", etc.files());

    // --fix: forwarding back on, not persisted from a namespace; the rules stay.
    let (checks, code) = doctor(ns, &["--fix"], &etc);
    let fwd = one_check(&checks, "forwarding", "net.ipv4.ip_forward");
    assert_eq!(fwd.status, CheckStatus::Pass, "{fwd:#?}");
    assert_eq!(
        fwd.fixed.as_deref(),
        Some(
            "set net.ipv4.ip_forward=1; not persisted: this host is a network namespace, not \
             the machine's root one, which /etc configures at boot"
        )
    );
    assert_eq!(
        ns.exec_ok(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    assert!(
        etc.files().is_empty(),
        "persisted from a namespace: {:?}",
        etc.files()
    );
    assert_eq!(
        one_check(&checks, "netfilter", "FORWARD policy").status,
        CheckStatus::Warn
    );
    assert_eq!(
        checks_named(&checks, "netfilter", "double translation").len(),
        2
    );
    assert_eq!(
        code,
        Some(1),
        "the rules still FAIL: --fix never removes rules"
    );

    // The fixes the doctor names for the rules work as written: the double translations'
    // deletes, and the accept rules that keep the DROP policy.
    for c in &double {
        sh(ns, c.fix());
    }
    let policy_fix = policy.fix();
    let (_, accepts) = policy_fix
        .split_once("accept netfast's subnets: ")
        .expect("accept rules");
    for rule in accepts.split("; ") {
        sh(ns, rule);
    }
    let (checks, code) = doctor(ns, &[], &etc);
    let double = one_check(&checks, "netfilter", "double translation");
    assert_eq!(double.status, CheckStatus::Pass, "{double:#?}");
    let policy = one_check(&checks, "netfilter", "FORWARD policy");
    assert_eq!(policy.status, CheckStatus::Pass, "{policy:#?}");
    assert!(
        policy
            .found
            .contains("every netfast network gets past it: web (accept rules for its subnet"),
        "{policy:#?}"
    );
    no_fail_but(&checks, &[]);
    assert_eq!(code, Some(0), "no FAIL left");
}

#[test]
fn a_docker_like_nftables_table_is_named_and_its_fixes_work() {
    let (h, etc) = host_with_web();
    let ns = &h.topo.host;
    let table = "ip docker-bridges";
    sh(ns, &format!("nft add table {table}"));
    sh(
        ns,
        &format!(
            "nft add chain {table} nat-postrouting '{{ type nat hook postrouting priority srcnat; }}'"
        ),
    );
    sh(
        ns,
        &format!(
            "nft add rule {table} nat-postrouting ip saddr 172.18.0.0/24 oifname != docker0 masquerade"
        ),
    );
    sh(
        ns,
        &format!(
            "nft add chain {table} filter-forward '{{ type filter hook forward priority filter; policy drop; }}'"
        ),
    );
    // netfast's own table is not a conflict, whatever it holds.
    sh(ns, "nft add table ip netfast");
    sh(
        ns,
        "nft add chain ip netfast post '{ type nat hook postrouting priority srcnat; }'",
    );
    sh(
        ns,
        "nft add rule ip netfast post ip saddr 172.18.0.0/24 masquerade",
    );

    // The eBPF fast path gets web past the drop; then, with it off, web's traffic meets it.
    let (checks, _) = doctor(ns, &[], &etc);
    let policy = one_check(&checks, "netfilter", "FORWARD policy");
    policy.assert_says(CheckStatus::Pass, "web (eBPF fast path, past netfilter)");
    h.nf.ok(&["config", "--fast-path", "off"]);

    let (checks, code) = doctor(ns, &[], &etc);
    assert_eq!(code, Some(1));
    let docker = one_check(&checks, "netfilter", "Docker");
    docker.assert_says(CheckStatus::Warn, "nftables table ip docker-bridges");
    assert!(!docker.found.contains("ip netfast"), "{docker:#?}");

    let policy = one_check(&checks, "netfilter", "FORWARD policy");
    assert_eq!(policy.status, CheckStatus::Warn);
    assert!(
        policy
            .found
            .starts_with("drop (nftables chain ip docker-bridges filter-forward, hook forward): "),
        "{policy:#?}"
    );

    let double = one_check(&checks, "netfilter", "double translation");
    assert_eq!(double.status, CheckStatus::Fail);
    assert!(
        double.found.starts_with(
            "`ip saddr 172.18.0.0/24 oifname != \"docker0\" masquerade` (nft, chain ip \
             docker-bridges nat-postrouting, handle "
        ),
        "{double:#?}"
    );
    assert!(
        double
            .fix()
            .starts_with("nft delete rule ip docker-bridges nat-postrouting handle "),
        "{double:#?}"
    );

    // Both fixes, as written: the rule's delete, and the policy's accept rules; then its
    // first choice.
    sh(ns, double.fix());
    let (open, accepts) = policy
        .fix()
        .split_once(", or keep it and accept netfast's subnets: ")
        .expect("two choices");
    assert_eq!(
        open,
        "nft chain ip docker-bridges filter-forward '{ policy accept; }'"
    );
    assert_eq!(
        accepts,
        "nft insert rule ip docker-bridges filter-forward ip saddr 172.18.0.0/24 accept; \
         nft insert rule ip docker-bridges filter-forward ip daddr 172.18.0.0/24 accept"
    );
    for rule in accepts.split("; ") {
        sh(ns, rule);
    }
    let (checks, _) = doctor(ns, &[], &etc);
    assert_eq!(
        one_check(&checks, "netfilter", "double translation").status,
        CheckStatus::Pass
    );
    let policy = one_check(&checks, "netfilter", "FORWARD policy");
    policy.assert_says(
        CheckStatus::Pass,
        "web (accept rules for its subnet in that chain)",
    );
    sh(ns, open);
    let (checks, code) = doctor(ns, &[], &etc);
    assert_eq!(
        one_check(&checks, "netfilter", "FORWARD policy").found,
        "no FORWARD chain drops by default"
    );
    assert_eq!(
        one_check(&checks, "netfilter", "Docker").status,
        CheckStatus::Warn,
        "the table stays"
    );
    no_fail_but(&checks, &[]);
    assert_eq!(code, Some(0));
}

#[test]
fn a_namespace_without_netfast_is_diagnosed_without_creating_state() {
    let (ns, etc) = bare_host("drn");
    ns.exec_ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
    let before = snapshot(&ns);
    let (checks, code) = doctor(&ns, &[], &etc);
    assert_eq!(code, Some(1), "forwarding is off in a new namespace");
    for c in checks_named(&checks, "ebpf", "bpf syscall")
        .into_iter()
        .chain(checks_named(&checks, "ebpf", "capabilities"))
        .chain(checks_named(&checks, "ebpf", "TC attach"))
    {
        assert_eq!(c.status, CheckStatus::Pass, "{c:#?}");
    }
    assert_eq!(
        one_check(&checks, "netfilter", "double translation").found,
        "no netfast network here to compare NAT rules with"
    );
    assert_eq!(
        one_check(&checks, "modules", "nf_conntrack_ipv4").status,
        CheckStatus::Pass
    );
    assert_eq!(
        one_check(&checks, "netfilter", "rules read").status,
        CheckStatus::Pass
    );
    let v6 = one_check(&checks, "forwarding", "net.ipv6.conf.all.forwarding");
    v6.assert_says(CheckStatus::Warn, "netfast is IPv4-only today");
    no_fail_but(&checks, &[("forwarding", "net.ipv4.ip_forward")]);
    assert!(
        !{
            let _in = netfast::netns::NetnsGuard::enter(ns.name()).expect("enter");
            netfast::host::Host::current().expect("host").state_dir()
        }
        .exists(),
        "doctor created netfast's state directory"
    );
    assert_eq!(snapshot(&ns), before);

    // And the library's answer for `--backend auto`, in this (root) test process.
    assert_eq!(netfast::doctor::ebpf_usable(), Ok(()));
}

#[test]
fn without_privileges_the_doctor_says_what_it_could_not_read() {
    require_root();
    // As nobody, in the root namespace (reading only): no capabilities, no rules readable.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(netfast_bin())
        .args(["doctor", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    let checks = doctor_checks(&out.stdout, &out.stderr);
    assert_eq!(out.status.code(), Some(1), "missing capabilities FAIL");
    let caps = one_check(&checks, "ebpf", "capabilities");
    caps.assert_says(CheckStatus::Fail, "CAP_NET_ADMIN");
    let read = one_check(&checks, "netfilter", "rules read");
    read.assert_says(CheckStatus::Warn, "needs root");
    assert_eq!(read.fix(), "run netfast doctor as root");
    let bpf = one_check(&checks, "ebpf", "bpf syscall");
    assert_ne!(bpf.status, CheckStatus::Pass, "{bpf:#?}");
}

#[test]
fn rules_in_both_iptables_backends_warn() {
    let (ns, etc) = bare_host("drb");
    ns.exec_ok(&[
        "iptables-legacy",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22",
        "-j",
        "ACCEPT",
    ]);
    ns.exec_ok(&[
        "iptables-nft",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "ACCEPT",
    ]);
    // netfast's own rules do not count.
    ns.exec_ok(&["iptables-legacy", "-t", "nat", "-N", "NETFAST-POST"]);
    ns.exec_ok(&[
        "iptables-legacy",
        "-t",
        "nat",
        "-A",
        "NETFAST-POST",
        "-j",
        "RETURN",
    ]);
    let (checks, _) = doctor(&ns, &[], &etc);
    let both = one_check(&checks, "netfilter", "iptables backends");
    assert_eq!(both.status, CheckStatus::Warn, "{both:#?}");
    assert!(
        both.found
            .starts_with("rules in both: 1 in iptables-legacy, 1 in iptables-nft; "),
        "{both:#?}"
    );
    ns.exec_ok(&["iptables-legacy", "-F", "INPUT"]);
    let (checks, _) = doctor(&ns, &[], &etc);
    assert_eq!(
        one_check(&checks, "netfilter", "iptables backends").status,
        CheckStatus::Pass
    );
}

/// bpffs missing: in a mount namespace of the test's own, with a PID namespace (and its
/// /proc) so that PID 1 sees that mount namespace too, /sys/fs/bpf is unmounted. The doctor
/// WARNs with the mount command and changes nothing; `--fix` mounts it, there only.
#[test]
fn fix_mounts_bpffs_where_it_is_missing() {
    let (ns, etc) = bare_host("dbf");
    let bin = netfast_bin();
    let doctor = |fix: &str| {
        // A FAIL (forwarding is off in a new namespace) exits with 1: not the point here.
        format!(
            "NETFAST_DOCTOR_ETC={etc} {bin} --netns {ns} doctor --json {fix} || true",
            etc = etc.0.display(),
            bin = bin.display(),
            ns = ns.name(),
        )
    };
    let script = format!(
        "set -e; umount /sys/fs/bpf; \
         echo \"before: $(stat -f -c %T /sys/fs/bpf)\"; \
         echo @@plain; {plain}; echo; echo \"between: $(stat -f -c %T /sys/fs/bpf)\"; \
         echo @@fix; {fix}; echo; echo \"after: $(stat -f -c %T /sys/fs/bpf)\"",
        plain = doctor(""),
        fix = doctor("--fix"),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    let state = |label: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label} line:\n{stdout}\n{stderr}"))
            .trim()
            .to_owned()
    };
    assert_ne!(state("before:"), "bpf_fs", "the unmount did not take");
    assert_ne!(
        state("between:"),
        "bpf_fs",
        "doctor without --fix mounted bpffs"
    );
    assert_eq!(state("after:"), "bpf_fs", "--fix did not mount bpffs");
    let report = |from: &str, to: &str| -> Vec<DoctorCheck> {
        let (_, rest) = stdout.split_once(from).expect("marker");
        let (json, _) = rest.split_once(to).expect("marker");
        serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{stdout}\n{stderr}"))
    };
    let reports = [report("@@plain", "between:"), report("@@fix", "after:")];
    let plain = one_check(&reports[0], "ebpf", "bpffs");
    assert_eq!(plain.status, CheckStatus::Warn, "{plain:#?}");
    assert_eq!(plain.fix(), "mount -t bpf bpf /sys/fs/bpf");
    let fixed = one_check(&reports[1], "ebpf", "bpffs");
    assert_eq!(fixed.status, CheckStatus::Pass, "{fixed:#?}");
    assert!(
        fixed
            .fixed
            .as_deref()
            .unwrap_or_default()
            .starts_with("mounted the bpf filesystem (/sys/fs/bpf)"),
        "{fixed:#?}"
    );
    // The machine's own bpffs was never touched.
    assert_eq!(
        Command::new("stat")
            .args(["-f", "-c", "%T", "/sys/fs/bpf"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .expect("stat"),
        "bpf_fs"
    );
}

/// route_localnet on a link nothing guards is named, with fixes that work; the bridges of
/// netfast's fallback networks (whose rules drop what comes in for 127.0.0.0/8) are not.
#[test]
fn route_localnet_is_named_where_nothing_guards_it() {
    let (h, etc) = host_with_web();
    let ns = &h.topo.host;
    h.nf.create_network("db", "172.19.0.0/24", &["--backend", "nftables"]);
    let (checks, _) = doctor(ns, &[], &etc);
    let c = one_check(&checks, "forwarding", "route_localnet");
    assert_eq!(c.status, CheckStatus::Pass, "{c:#?}");
    assert!(c.found.starts_with("on for nf-db only"), "{c:#?}");

    sh(
        ns,
        &format!("sysctl -qw net.ipv4.conf.{UPLINK}.route_localnet=1"),
    );
    let before = snapshot(ns);
    let (checks, _) = doctor(ns, &["--fix"], &etc);
    let c = one_check(&checks, "forwarding", "route_localnet");
    assert_eq!(c.status, CheckStatus::Warn, "{c:#?}");
    assert!(c.found.starts_with(&format!("on for {UPLINK}: ")), "{c:#?}");
    assert_eq!(snapshot(ns), before, "--fix changed a rule");
    assert_eq!(
        ns.exec_ok(&[
            "sysctl",
            "-n",
            &format!("net.ipv4.conf.{UPLINK}.route_localnet")
        ])
        .trim(),
        "1",
        "--fix must not change route_localnet"
    );
    // The second fix, as written, keeps it on and guards it; the first turns it off.
    let (off, drop) = c
        .fix()
        .split_once(", or keep it and drop what comes in for 127.0.0.0/8: ")
        .expect("two fixes");
    assert_eq!(
        off,
        format!("sysctl -w net.ipv4.conf.{UPLINK}.route_localnet=0")
    );
    sh(ns, drop);
    assert!(
        ns.exec_ok(&["iptables", "-S", "INPUT"])
            .contains(&format!("-A INPUT -d 127.0.0.0/8 -i {UPLINK} ")),
        "the drop rule"
    );
    sh(ns, off);
    let (checks, _) = doctor(ns, &[], &etc);
    let c = one_check(&checks, "forwarding", "route_localnet");
    assert_eq!(c.status, CheckStatus::Pass, "{c:#?}");
}

/// Where the bpf syscall fails (netfast-no-bpf: ENOSYS, as on a kernel without
/// CONFIG_BPF_SYSCALL), the doctor does not vouch for TCX or the fast path's helpers from the
/// kernel's version: it probes them, and says it could not.
#[test]
fn tcx_and_helpers_are_probed_not_guessed_from_the_version() {
    let (ns, etc) = bare_host("drp");
    let (checks, _) = doctor(&ns, &[], &etc);
    for name in ["TC attach", "bpf_redirect_peer", "bpf_redirect_neigh"] {
        let c = one_check(&checks, "ebpf", name);
        c.assert_says(CheckStatus::Pass, "probed");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_netfast-no-bpf"))
        .arg(netfast_bin())
        .args(["--netns", ns.name(), "doctor", "--json"])
        .env("NETFAST_DOCTOR_ETC", &*etc.0)
        .stdin(Stdio::null())
        .output()
        .expect("run netfast doctor under netfast-no-bpf");
    let checks = doctor_checks(&out.stdout, &out.stderr);
    assert_eq!(
        one_check(&checks, "ebpf", "bpf syscall").status,
        CheckStatus::Fail
    );
    for name in ["TC attach", "bpf_redirect_peer", "bpf_redirect_neigh"] {
        let c = one_check(&checks, "ebpf", name);
        assert_eq!(c.status, CheckStatus::Warn, "{c:#?}");
        assert!(c.found.starts_with("not probed"), "{c:#?}");
    }
}
