//! `netfast upgrade` with live connections (#14.7): programs replaced in place, a map layout
//! migrated, a killed or failed upgrade finished or undone — and through all of it, a
//! masqueraded connection and a connection to a published port go on talking with their
//! conntrack entries intact.
//!
//! The changed layout comes from the `layout-next` test build of netfast (target/layout-next,
//! built by `cargo xtask test`): its conntrack entry is 8 bytes longer.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use netfast::{host::Host, netns::NetnsGuard};
use netfast_tests::{
    Background, Netfast,
    clients::{curl, echo_server, outside_web_server, talker, talks_on},
    netfast_cli::{network_create, next_layout_netfast_bin},
    require_root,
    topology::{OUTSIDE_ADDR, UPLINK_ADDR},
    web::{UPLINK_URL, Web, web},
};
use serde_json::Value;

/// The lab with two live connections: from outside to a published port of c0 (9000), and
/// from c1 out to an echo server outside (9001, masqueraded).
struct Live {
    inbound: Background,
    outbound: Background,
    _servers: [Background; 2],
    w: Web,
}

fn live() -> Live {
    let w = web(&[]);
    let servers = [
        echo_server(&w.c0, 9000),
        echo_server(w.topo.outside.name(), 9001),
    ];
    w.nf.ok(&["publish", "web", &format!("9000:{}:9000", w.c0)]);
    let inbound = talker(w.topo.outside.name(), &UPLINK_ADDR.to_string(), 9000);
    let outbound = talker(&w.c1, &OUTSIDE_ADDR.to_string(), 9001);
    Live {
        inbound,
        outbound,
        _servers: servers,
        w,
    }
}

impl Live {
    fn talk_on(&mut self, when: &str) {
        talks_on(
            &mut self.inbound,
            5,
            &format!("{when}: the published connection"),
        );
        talks_on(
            &mut self.outbound,
            5,
            &format!("{when}: the masqueraded connection"),
        );
    }
}

/// The conntrack entries of both connections: (original packets) per destination port.
fn flows(nf: &Netfast) -> Vec<(u64, u64, u64)> {
    let list = nf.flows(&["-p", "tcp"]);
    let mut out = Vec::new();
    for port in [9000, 9001] {
        let f = list
            .iter()
            .find(|f| f.original.dport == port && f.state.as_deref() == Some("ESTABLISHED"))
            .unwrap_or_else(|| panic!("no established flow to port {port}: {list:#?}"));
        out.push((
            u64::from(port),
            u64::from(f.original.sport),
            f.original.packets.expect("packets"),
        ));
    }
    out
}

/// The same connections' entries as before, with more packets counted since.
fn assert_same_flows(before: &[(u64, u64, u64)], after: &[(u64, u64, u64)]) {
    for (b, a) in before.iter().zip(after) {
        assert_eq!(
            (b.0, b.1),
            (a.0, a.1),
            "the connection to port {} has another entry now",
            b.0
        );
        assert!(
            a.2 > b.2,
            "the entry of the connection to port {} counts {} packets, not more than the {} \
             it had: it was made anew",
            b.0,
            a.2,
            b.2
        );
    }
}

/// Inside the test's host namespace: its pin directory.
fn pin_dir(w: &Web) -> PathBuf {
    let _in = NetnsGuard::enter(w.topo.host.name()).expect("enter the host");
    Host::current().expect("host").pin_dir().expect("pin dir")
}

/// The program each pinned link runs: (link file, link id, program id).
fn link_programs(dir: &Path) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("pin dir").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("link-") || name.starts_with("cgroup-")) {
            continue;
        }
        let fd = netfast::bpf_sys::obj_get(&e.path()).expect("open the link");
        let (link, prog) =
            netfast::bpf_sys::link_ids(std::os::fd::AsFd::as_fd(&fd)).expect("link info");
        out.push((name, link, prog));
    }
    out.sort();
    assert_eq!(
        out.len(),
        8,
        "expected 4 TCX links and 4 cgroup links in {}: {out:?}",
        dir.display()
    );
    out
}

fn pending(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("-next"))
        .collect()
}

fn conntrack_value_size(dir: &Path) -> u32 {
    aya::maps::MapInfo::from_pin(dir.join("NETFAST_CT"))
        .expect("the pinned conntrack map")
        .value_size()
}

/// Same layout, another build (what a release with only program changes is): the running
/// programs are said to come from another build by rewriting META, as an older netfast of
/// this layout would have left it. Until `netfast upgrade`, commands warn and refuse to
/// attach this build's programs beside the running ones; the upgrade replaces every link's
/// program in place; the connections never notice.
#[test]
fn upgrade_replaces_the_programs_in_place_and_connections_talk_on() {
    require_root();
    let mut l = live();
    let dir = pin_dir(&l.w);
    let before_links = link_programs(&dir);
    l.w.nf
        .pretend_another_build_runs(&dir, "netfast 0.0.1-older", 0x5a5a);
    let err = l.w.nf.ok_stderr(&["conntrack", "list"]);
    assert!(
        err.contains("netfast 0.0.1-older") && err.contains("netfast upgrade"),
        "a read-only command must work and warn that another build runs, naming the upgrade:\n{err}"
    );
    let err = l.w.nf.fails(&network_create("web2", "172.19.0.0/24", &[]));
    assert!(
        err.contains("netfast upgrade") && err.contains("attaches none of its own"),
        "attaching this build's programs beside another build's must be refused:\n{err}"
    );
    let ls = l.w.nf.ok(&["network", "ls"]);
    assert!(
        !ls.contains("web2"),
        "the refused network was half made:\n{ls}"
    );
    let before = flows(&l.w.nf);

    let check = l.w.nf.ok(&["upgrade", "--check"]);
    assert!(check.contains("would replace on 8 link(s)"), "{check}");
    assert_eq!(
        link_programs(&dir),
        before_links,
        "--check changed the links"
    );

    let out = l.w.nf.ok(&["upgrade"]);
    assert!(
        out.contains("from netfast 0.0.1-older") && out.contains("replaced on 8 link(s)"),
        "{out}"
    );
    let after_links = link_programs(&dir);
    for (b, a) in before_links.iter().zip(&after_links) {
        assert_eq!(
            (&b.0, b.1),
            (&a.0, a.1),
            "a link was made anew instead of updated"
        );
        assert_ne!(b.2, a.2, "{} still runs its old program", a.0);
    }
    l.talk_on("after the upgrade");
    assert_same_flows(&before, &flows(&l.w.nf));

    // This build runs now: no warning, and attaching works.
    let out = l.w.nf.run(&["conntrack", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("warning"), "{err}");
    l.w.nf.create_network("web2", "172.19.0.0/24", &[]);
    let again = l.w.nf.ok(&["upgrade"]);
    assert!(
        again.contains("already runs this netfast's programs"),
        "{again}"
    );
}

/// The layout-next build's conntrack entry is longer: `netfast upgrade` from it copies the
/// live table into the new layout, switches every program, and the connections go on with
/// the same entries. Until then that build refuses to use the old layout; afterwards the
/// older build refuses to use (or downgrade) the new one.
#[test]
fn a_changed_layout_is_migrated_with_its_live_flows() {
    require_root();
    let mut l = live();
    let next = Netfast::with_bin(&l.w.topo.host, next_layout_netfast_bin());
    let dir = pin_dir(&l.w);
    assert_eq!(conntrack_value_size(&dir), 80);
    let before = flows(&l.w.nf);

    let err = next.fails(&["conntrack", "list"]);
    assert!(
        err.contains("older layout") && err.contains("run `netfast upgrade`"),
        "the newer build must refuse the older layout and name the upgrade:\n{err}"
    );
    let check = next.ok(&["upgrade", "--check"]);
    let from = netfast::common::upgrade::LAYOUT_VERSION;
    assert!(
        check.contains(&format!("layout {from}"))
            && check.contains(&format!("layout {}", from + 1))
            && check.contains("map NETFAST_CT: migrated"),
        "{check}"
    );
    assert_eq!(conntrack_value_size(&dir), 80, "--check changed the map");

    let out = next.ok(&["upgrade"]);
    let carried: u64 = out
        .lines()
        .find(|l| l.contains("map NETFAST_CT:"))
        .and_then(|l| l.split(", ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of carried entries for NETFAST_CT:\n{out}"));
    assert!(
        carried >= 4,
        "two connections are four entries, {carried} were carried:\n{out}"
    );
    assert_eq!(
        conntrack_value_size(&dir),
        88,
        "the pinned table has the new layout"
    );
    assert!(
        pending(&dir).is_empty(),
        "maps left beside: {:?}",
        pending(&dir)
    );

    l.talk_on("after the migration");
    assert_same_flows(&before, &flows(&next));

    // New flows on the new programs: a published port and a masqueraded request.
    next.ok(&["publish", "web", &format!("8080:{}:80", l.w.c0)]);
    assert_eq!(curl(l.w.topo.outside.name(), UPLINK_URL, &[]), "200");
    let _outside_web = outside_web_server(l.w.topo.outside.name());
    assert_eq!(
        curl(&l.w.c1, &format!("http://{OUTSIDE_ADDR}:8000/"), &[]),
        "200"
    );

    // The older build: no use of the newer layout, no downgrade.
    for args in [&["conntrack", "list"][..], &["upgrade"][..]] {
        let err = l.w.nf.fails(args);
        assert!(
            err.contains("newer layout") && err.contains("downgrade"),
            "`netfast {}` by the older build:\n{err}",
            args.join(" ")
        );
    }
    assert_eq!(conntrack_value_size(&dir), 88);
    l.talk_on("after the refused downgrade");
}

/// strace's record of one `netfast upgrade`: the index (1-based, as strace's `when=`
/// counts) of each bpf(2) command.
fn bpf_calls(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter_map(|l| {
            let call = l.split_once("bpf(")?.1;
            Some(call.split([',', ')']).next()?.to_owned())
        })
        .collect()
}

/// Runs the next build's `netfast upgrade` under strace with `inject`.
fn upgrade_under_strace(
    l: &Live,
    next: &Netfast,
    inject: &str,
    trace: Option<&str>,
) -> std::process::Output {
    // Injection needs the call traced: trace bpf and rename, into the file or nowhere.
    let mut argv: Vec<String> = vec!["strace".into(), "-f".into(), "-qq".into()];
    argv.extend([
        "-e".into(),
        "trace=bpf,rename".into(),
        "-o".into(),
        trace.unwrap_or("/dev/null").into(),
    ]);
    if !inject.is_empty() {
        argv.extend(["-e".into(), inject.into()]);
    }
    argv.push(next.bin().display().to_string());
    argv.extend([
        "--netns".into(),
        l.w.topo.host.name().into(),
        "upgrade".into(),
    ]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    netfast_tests::run(&argv)
}

/// Where an upgrade is killed or fails, found from a traced upgrade of the same lab: the
/// bpf(2) calls are the same from run to run.
struct Points {
    /// Index of the first BPF_LINK_UPDATE.
    first_link: usize,
}

fn points() -> Points {
    let l = live();
    let next = Netfast::with_bin(&l.w.topo.host, next_layout_netfast_bin());
    let file = format!("/tmp/netfast-upgrade-trace-{}", std::process::id());
    let out = upgrade_under_strace(&l, &next, "", Some(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = std::fs::read_to_string(&file).expect("the strace output");
    let _ = std::fs::remove_file(&file);
    let calls = bpf_calls(&trace);
    let first_link = calls
        .iter()
        .position(|c| c == "BPF_LINK_UPDATE")
        .unwrap_or_else(|| panic!("no BPF_LINK_UPDATE in the trace:\n{trace}"))
        + 1;
    let links = calls.iter().filter(|c| *c == "BPF_LINK_UPDATE").count();
    assert_eq!(links, 8, "one update per link:\n{trace}");
    Points { first_link }
}

/// Killed at three points — before any link switched, with some links on the new programs
/// and some on the old, and after the commit while moving the pins — the upgrade leaves a
/// dataplane every command refuses to touch until `netfast upgrade` finishes it; the
/// connections talk on throughout, and keep their entries.
#[test]
fn a_killed_upgrade_is_finished_by_the_next_one() {
    require_root();
    let p = points();
    let kills = [
        (
            "before the first link switched",
            format!("inject=bpf:signal=KILL:when={}", p.first_link),
        ),
        (
            "with three links switched",
            format!("inject=bpf:signal=KILL:when={}", p.first_link + 6),
        ),
        (
            "while moving the pins",
            "inject=rename:signal=KILL:when=1".to_owned(),
        ),
    ];
    for (when, inject) in kills {
        let mut l = live();
        let next = Netfast::with_bin(&l.w.topo.host, next_layout_netfast_bin());
        let dir = pin_dir(&l.w);
        let before = flows(&l.w.nf);
        let out = upgrade_under_strace(&l, &next, &inject, None);
        assert!(
            !out.status.success(),
            "{when}: the upgrade was not killed ({inject}): {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = next.fails(&["conntrack", "list"]);
        assert!(
            err.contains("did not finish") && err.contains("netfast upgrade"),
            "{when}: `conntrack list` by the new build must refuse and name the upgrade:\n{err}"
        );
        // The old build refuses too: the upgrade under way, or (after its commit) the newer
        // layout.
        let err = l.w.nf.fails(&["conntrack", "list"]);
        assert!(
            err.contains("did not finish") || err.contains("newer layout"),
            "{when}: `conntrack list` by the old build must refuse:\n{err}"
        );
        l.talk_on(&format!("killed {when}"));
        let out = next.ok(&["upgrade"]);
        assert!(out.contains("upgrade"), "{when}: {out}");
        assert!(
            pending(&dir).is_empty(),
            "{when}: maps left beside: {:?}",
            pending(&dir)
        );
        assert_eq!(conntrack_value_size(&dir), 88, "{when}");
        l.talk_on(&format!("finished after being killed {when}"));
        assert_same_flows(&before, &flows(&next));
        let again = next.ok(&["upgrade"]);
        assert!(again.contains("already runs"), "{when}: {again}");
    }
}

/// A link update that fails (not a kill): the upgrade puts every link back on its old
/// program, META as it was, and unpins the maps it made; the older build goes on as if
/// nothing happened, the connections too.
#[test]
fn a_failed_upgrade_puts_everything_back() {
    require_root();
    let p = points();
    let mut l = live();
    let next = Netfast::with_bin(&l.w.topo.host, next_layout_netfast_bin());
    let dir = pin_dir(&l.w);
    let links = link_programs(&dir);
    let before = flows(&l.w.nf);
    let inject = format!("inject=bpf:error=EPERM:when={}", p.first_link + 4);
    let out = upgrade_under_strace(&l, &next, &inject, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("BPF_LINK_UPDATE"),
        "the third link update was to fail: {err}"
    );
    assert_eq!(
        link_programs(&dir),
        links,
        "every link runs its old program again"
    );
    assert!(
        pending(&dir).is_empty(),
        "maps left beside: {:?}",
        pending(&dir)
    );
    assert_eq!(conntrack_value_size(&dir), 80);
    let out = l.w.nf.run(&["conntrack", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("warning"),
        "the older build goes on as before: {err}"
    );
    l.talk_on("after the failed upgrade");
    assert_same_flows(&before, &flows(&l.w.nf));
    // And the upgrade, tried again, succeeds.
    next.ok(&["upgrade"]);
    l.talk_on("after the upgrade, tried again");
    let _ = Duration::ZERO;
}

/// The state file carries its format: one written by a newer netfast (a format this one
/// does not know) is refused by every command, with the reason, and left as it is.
#[test]
fn a_state_from_a_newer_netfast_is_refused_and_left_alone() {
    require_root();
    let w = web(&[]);
    let path = {
        let _in = NetnsGuard::enter(w.topo.host.name()).expect("enter the host");
        Host::current()
            .expect("host")
            .state_dir()
            .join(netfast::loader::state::STATE_FILE)
    };
    let text = std::fs::read_to_string(&path).expect("the state file");
    let mut state: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(state["format"], 1, "the state names its format:\n{text}");
    state["format"] = 99.into();
    let newer = serde_json::to_string_pretty(&state).expect("json");
    std::fs::write(&path, &newer).expect("write the state");
    // Back to this netfast's format however the test ends, so that the fixture's `down`
    // can clean up.
    struct Restore<'a>(&'a Path, &'a str);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let _ = std::fs::write(self.0, self.1);
        }
    }
    let _restore = Restore(&path, &text);
    for args in [
        &["network", "ls"][..],
        &["container", "create", "late", "--network", "web"][..],
        &["down"][..],
    ] {
        let err = w.nf.fails(args);
        assert!(
            err.contains("newer netfast") && err.contains("format 99"),
            "`netfast {}` must refuse a newer state:\n{err}",
            args.join(" ")
        );
    }
    assert_eq!(
        std::fs::read_to_string(&path).expect("the state file"),
        newer,
        "the newer state was changed"
    );
    assert!(
        !std::path::Path::new("/run/netns/late").exists(),
        "the refused container was made"
    );
}
