//! `cargo xtask`: setup, test, demo. Every command but `setup` runs `setup` first, so a
//! fresh machine needs nothing else. Std only, so that it builds before anything is installed.

mod setup;
mod util;

use std::process::ExitCode;

use util::{Cmd, Fail, cargo, leftover_namespaces, leftover_netfast_state};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what is missing: Debian packages (LLVM 22, test clients, docker.io and
          busybox-static with their services held back), the nightly rust-src component,
          bpf-linker 0.13 built against LLVM 22 (idempotent)
  test    setup, then rustfmt check, clippy -D warnings (host and BPF target), unit, packet
          (BPF_PROG_TEST_RUN) and namespace tests, a short differential fuzz (fixed seeds and
          one random seed it prints) with its multi-CPU phase, a quick benchmark run as a
          smoke test, then check that nothing was left behind
  demo    setup, then build and run the demo on the default topology, in namespaces it
          creates and removes
  fuzz [--packets N] [--seed S|random]... [--strict] [--smp-rounds R] [--no-fixtures]
          setup, then run the differential fuzzer: random event sequences through the real
          programs (BPF_PROG_TEST_RUN) and the reference model side by side, N packets a seed
          (default 1000000, seed 1), then the multi-CPU phase; a mismatch stops it, shrunk and
          written to tests/fuzz-fixtures/ with a test in tests/tests/fuzz_fixtures.rs.
          `--strict` stops at known datapath defects too (netfast_tests::fuzz::known)
  bench [ARGS]
          setup, then build netfast and the benchmark in release mode and run `netfast-bench
          --out target/bench ARGS`: netfast against a veth pair, routing, iptables and nftables
          (about 15 minutes; `--quick` for a smoke run, `--help` for the options)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::run(),
        Some("test") => setup::run().and_then(|()| test()),
        Some("demo") => setup::run().and_then(|()| demo()),
        Some("fuzz") => setup::run().and_then(|()| fuzz(&args[1..])),
        Some("bench") => setup::run().and_then(|()| bench(&args[1..])),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(Fail(format!("unknown command `{other}`\n\n{USAGE}"))),
        None => Err(Fail(format!("no command given\n\n{USAGE}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(msg)) => {
            eprintln!("xtask: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn test() -> Result<(), Fail> {
    util::require_root("the tests create network namespaces and load BPF programs")?;
    println!("== rustfmt");
    cargo(&["fmt", "--all", "--check"]).run()?;
    println!("== clippy (host)");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "netfast-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .run()?;
    println!("== clippy (BPF target)");
    Cmd::new("rustup")
        .args(&[
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "netfast-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ])
        .run()?;
    // The upgrade tests move a live dataplane to a build with another map layout;
    // `netfast monitor --log` reads the debug records of programs built with `ebpf-log`.
    println!("== the test builds of netfast with layout-next and ebpf-log");
    let features = feature_build("layout-next").and_then(|()| feature_build("ebpf-log"));
    // The namespace tests run the `netfast` binary; `cargo test` builds a package's binaries
    // only for that package's own tests, so build them all first (never test a stale one).
    // Right after the feature builds, failed or not: they left theirs in target/debug.
    println!("== build the binaries the tests run");
    build_binaries()?;
    features?;
    println!("== the migration's unit tests, with the layout-next build's layout");
    cargo(&[
        "test",
        "--package",
        "netfast",
        "--lib",
        "--features",
        "layout-next",
        "upgrade::",
    ])
    .run()?;
    println!("== tests (one thread: the kernel tests share kernel state)");
    let before = leftovers();
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "netfast-ebpf",
        "--",
        "--test-threads=1",
    ])
    .run()?;
    nothing_left_behind("the tests", &before)?;
    // The model against the programs, briefly: three fixed seeds (a failure there is a
    // regression anyone can replay) and one the clock picks (printed), then the multi-CPU
    // phase. The long run is `cargo xtask fuzz`.
    println!("== differential fuzz (short) and the multi-CPU phase");
    run_fuzz(&[
        "--packets",
        "40000",
        "--seed",
        "1",
        "--seed",
        "2",
        "--seed",
        "3",
        "--seed",
        "random",
    ])?;
    // The benchmark's every measurement and the program costs, once, briefly: it must run
    // to the end on every commit; its figures are not looked at.
    println!("== benchmark smoke test (netfast-bench --quick)");
    let bench = util::target_dir().join("debug/netfast-bench");
    Cmd::new(&bench.display().to_string())
        .args(&["--quick", "--out", "target/bench-quick"])
        .run()?;
    nothing_left_behind("the benchmark", &before)?;
    println!("== all tests passed");
    Ok(())
}

fn bench(args: &[String]) -> Result<(), Fail> {
    util::require_root("the benchmark creates network namespaces and loads BPF programs")?;
    // The benchmark runs the netfast binary built next to it.
    cargo(&[
        "build",
        "--release",
        "--package",
        "netfast",
        "--bin",
        "netfast",
        "--package",
        "netfast-tests",
        "--bin",
        "netfast-bench",
    ])
    .run()?;
    let before = leftovers();
    let mut argv = vec!["--out", "target/bench"];
    argv.extend(args.iter().map(String::as_str));
    let bench = util::target_dir().join("release/netfast-bench");
    let result = Cmd::new(&bench.display().to_string()).args(&argv).run();
    nothing_left_behind("the benchmark", &before)?;
    result
}

/// `cargo xtask fuzz`: the long differential run (a million packets unless told otherwise).
fn fuzz(args: &[String]) -> Result<(), Fail> {
    util::require_root("the fuzzer creates a network namespace and loads BPF programs")?;
    println!("== build the fuzzer");
    cargo(&[
        "build",
        "--package",
        "netfast-tests",
        "--bin",
        "netfast-fuzz",
    ])
    .run()?;
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if !argv.contains(&"--packets") {
        argv.extend(["--packets", "1000000"]);
    }
    run_fuzz(&argv)
}

/// Runs the fuzzer; fails if it fails, or if it left its namespace behind (named after its
/// pid: namespaces of other processes running meanwhile are theirs).
fn run_fuzz(args: &[&str]) -> Result<(), Fail> {
    let fuzzer = util::target_dir().join("debug/netfast-fuzz");
    let mut child = std::process::Command::new(&fuzzer)
        .args(args)
        .current_dir(util::workspace_root())
        .spawn()
        .map_err(|e| Fail(format!("cannot run {}: {e}", fuzzer.display())))?;
    let status = child
        .wait()
        .map_err(|e| Fail(format!("waiting for the fuzzer: {e}")))?;
    let own = format!("nft{}x", child.id());
    let left: Vec<String> = leftover_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(&own))
        .collect();
    if !left.is_empty() {
        return Err(Fail(format!(
            "the fuzzer left network namespaces behind: {}",
            left.join(" ")
        )));
    }
    if status.success() {
        Ok(())
    } else {
        Err(Fail(format!("the fuzzer failed ({status})")))
    }
}

fn demo() -> Result<(), Fail> {
    util::require_root("the demo creates network namespaces and loads BPF programs")?;
    // The demo runs the `netfast` binary, which `cargo run` of the demo does not build: build
    // every binary first, so that a fresh clone's first command works (and never runs a
    // stale netfast).
    println!("== build netfast and the demo");
    build_binaries()?;
    let before = leftovers();
    cargo(&[
        "run",
        "--quiet",
        "--package",
        "netfast-tests",
        "--bin",
        "netfast-demo",
    ])
    .run()?;
    nothing_left_behind("the demo", &before)?;
    Ok(())
}

/// Builds `netfast` with `feature` and puts the binary where the tests look for it,
/// target/<feature>/debug/netfast. The build shares target/ with the default one (the
/// dependencies are built once; a target directory of its own would build them all again,
/// some seven minutes on a slow machine), so it overwrites target/debug/netfast:
/// [`build_binaries`] must run after it.
fn feature_build(feature: &str) -> Result<(), Fail> {
    cargo(&[
        "build",
        "--package",
        "netfast",
        "--bin",
        "netfast",
        "--features",
        feature,
    ])
    .run()?;
    let target = util::target_dir();
    let dir = target.join(feature).join("debug");
    let copy = || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        // Copied beside, then renamed: a run killed half-way leaves no half-written binary.
        let part = dir.join("netfast.part");
        std::fs::copy(target.join("debug/netfast"), &part)?;
        std::fs::rename(&part, dir.join("netfast"))
    };
    copy().map_err(|e| {
        Fail(format!(
            "copying the {feature} build of netfast to {}: {e}",
            dir.display()
        ))
    })
}

/// Every binary of the workspace (netfast, the demo, the test helpers), in the debug profile
/// the tests and the demo run.
fn build_binaries() -> Result<(), Fail> {
    cargo(&[
        "build",
        "--workspace",
        "--exclude",
        "netfast-ebpf",
        "--bins",
    ])
    .run()
}

/// Fails when `who` left test namespaces (other than those already there), or netfast pins
/// or state for them.
fn nothing_left_behind(who: &str, before: &[String]) -> Result<(), Fail> {
    // What is left, by the function that lists it.
    type Lister = fn() -> Vec<String>;
    let kinds: [(&str, Lister); 2] = [
        ("network namespaces", leftover_namespaces),
        ("netfast pins or state", leftover_netfast_state),
    ];
    for (what, leftovers) in kinds {
        let left: Vec<_> = leftovers()
            .into_iter()
            .filter(|n| !before.contains(n))
            .collect();
        if !left.is_empty() {
            return Err(Fail(format!(
                "{who} left {what} behind: {}",
                left.join(" ")
            )));
        }
    }
    Ok(())
}

/// Test namespaces, and netfast pins and state for them, that exist now: what a run is not
/// to be blamed for (an earlier run that was killed left them; the next test sweeps them).
fn leftovers() -> Vec<String> {
    let mut all = leftover_namespaces();
    all.extend(leftover_netfast_state());
    all
}
