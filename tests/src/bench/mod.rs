//! The benchmark (`netfast-bench`, run by `cargo xtask bench`): netfast against the kernel
//! paths it replaces, on the same machine, in the same run, in the test lab's namespaces.
//! See docs/PERFORMANCE.md for what it measures and how to read it.

mod calibrate;
mod cases;
mod charts;
mod cpu;
mod lab;
mod progcost;
mod report;
mod work;

use std::{
    io::IsTerminal as _,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use lab::{Kind, Lab};
use report::{Measurement, Report};
use work::Workload;

/// Measure netfast against a veth pair, plain routing, iptables and nftables, in namespaces
/// it builds and removes: throughput, latency, connections/s, packets/s, CPU per unit of
/// work, ns/packet per program. Writes a markdown, JSON and SVG report.
///
/// Runs the `netfast` binary built next to it (`cargo xtask bench` builds both, in release
/// mode); needs root.
#[derive(clap::Parser)]
#[command(name = "netfast-bench")]
pub struct BenchArgs {
    /// Rounds; each measures every dataplane on every workload once, interleaved.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// One round of one-second measurements and few program runs: a smoke test whose
    /// figures mean nothing.
    #[arg(long)]
    quick: bool,
    /// Where report.md, report.json and the SVG charts go.
    #[arg(long, value_name = "DIR", default_value = "netfast-bench")]
    out: PathBuf,
    /// Dataplanes to compare (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    kinds: Vec<Kind>,
    /// Workloads to run (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',', value_name = "WORKLOAD")]
    workloads: Vec<Workload>,
    /// Skip the per-program BPF_PROG_TEST_RUN costs.
    #[arg(long, conflicts_with = "programs_only")]
    no_programs: bool,
    /// Only the per-program BPF_PROG_TEST_RUN costs (in a netfast-on lab).
    #[arg(long, conflicts_with_all = ["kinds", "workloads"])]
    programs_only: bool,
}

/// Set by SIGINT/SIGTERM: stop after the current measurement and clean up.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stop_on_signals() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    ("wrk", "wrk"),
    ("nginx", "nginx-light"),
    ("nft", "nftables"),
    ("iptables-legacy", "iptables"),
];

/// Runs the benchmark `args` asks for, and writes its report.
pub fn run(args: BenchArgs) -> Result<()> {
    netfast::loader::caps::require("netfast-bench", true)?;
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(p, _)| !lab::on_path(p))
        .map(|(p, pkg)| format!("{p} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the benchmark needs {}; install them (`cargo xtask setup` does)",
            missing.join(", ")
        );
    }
    anyhow::ensure!(args.rounds > 0, "--rounds must be at least 1");
    anyhow::ensure!(args.seconds > 0, "--seconds must be at least 1");
    let (rounds, seconds) = if args.quick {
        (1, 1)
    } else {
        (args.rounds, args.seconds)
    };
    let kinds = if args.programs_only {
        vec![Kind::NetfastOn]
    } else if args.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.kinds.clone()
    };
    let workloads = if args.programs_only {
        Vec::new()
    } else if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let effort = if args.quick {
        progcost::Effort {
            runs: 500,
            new_flows: 100,
        }
    } else {
        progcost::Effort {
            runs: 20_000,
            new_flows: 5_000,
        }
    };
    let programs = !args.no_programs && kinds.contains(&Kind::NetfastOn);
    let netfast_bin = crate::netfast_cli::find_netfast_bin().context(
        "no netfast binary next to netfast-bench: build both (`cargo xtask bench` does)",
    )?;
    stop_on_signals();

    let started = Instant::now();
    let started_utc = report::utc(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    // The programs are timed once per round too, after the workloads: their figures get a
    // median and a spread like every other.
    let total = u64::from(rounds) * (kinds.len() * workloads.len() + usize::from(programs)) as u64;
    let bar = progress(total);
    bar.set_message("building the lab");
    let lab = Lab::build(&kinds, &netfast_bin)?;

    let mut measurements = Vec::new();
    'rounds: for round in 1..=rounds {
        for &w in &workloads {
            // Interleaved, and each round starts with another dataplane, so that none is
            // always measured first after a change of workload.
            let shift = (round as usize - 1) % kinds.len();
            for i in 0..kinds.len() {
                if STOP.load(Ordering::Relaxed) {
                    break 'rounds;
                }
                let kind = kinds[(i + shift) % kinds.len()];
                let env = lab.env(kind).expect("built for every kind");
                bar.set_message(format!(
                    "round {round}/{rounds}: {} on {}",
                    w.name(),
                    kind.name()
                ));
                let result = work::measure(env, w, seconds);
                let line = match &result {
                    Ok(s) => format!(
                        "round {round} {:<13} {:<12} {:>10.2} {} ({:.0} {})",
                        w.name(),
                        kind.name(),
                        s.value,
                        w.metric().1,
                        s.cpu_per_unit,
                        w.cpu_unit()
                    ),
                    Err(e) => format!(
                        "round {round} {:<13} {:<12} FAILED: {e:#}",
                        w.name(),
                        kind.name()
                    ),
                };
                log(&bar, &line);
                let (sample, error) = match result {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                };
                measurements.push(Measurement {
                    round,
                    kind,
                    workload: w,
                    sample,
                    error,
                });
                bar.inc(1);
            }
        }
    }

    let (mut program_costs, mut programs_floor_ns, mut programs_error) = (Vec::new(), None, None);
    if programs && !STOP.load(Ordering::Relaxed) {
        let env = lab.env(Kind::NetfastOn).expect("built");
        let mut per_round = Vec::new();
        for round in 1..=rounds {
            if STOP.load(Ordering::Relaxed) {
                break;
            }
            let step =
                |what: &str| bar.set_message(format!("programs, round {round}/{rounds}: {what}"));
            match progcost::measure(env, effort, &step) {
                Ok(c) => per_round.push(c),
                Err(e) => {
                    programs_error = Some(format!("{e:#}"));
                    break;
                }
            }
            bar.inc(1);
        }
        if programs_error.is_none() && !per_round.is_empty() {
            let c = progcost::combine(per_round);
            program_costs = c.rows;
            programs_floor_ns = Some(c.floor_ns);
        }
    }
    let interrupted = STOP.load(Ordering::Relaxed);
    bar.set_message("cleaning up");
    drop(lab);
    bar.finish_and_clear();
    if interrupted {
        bail!("interrupted; the lab is removed and no report written");
    }

    let summary = report::summarize(&measurements, &workloads, &kinds);
    let targets = report::targets(&summary, &program_costs);
    let r = Report {
        started_utc,
        wall_s: started.elapsed().as_secs_f64(),
        machine: report::machine(),
        quick: args.quick,
        rounds,
        seconds,
        kinds,
        workloads,
        summary,
        programs: program_costs,
        programs_floor_ns,
        programs_error,
        targets,
        measurements,
    };
    let notes = report::write(&r, &args.out)?;
    print!("{}", report::markdown(&r));
    println!(
        "\nreport: {}/report.md (and report.json, SVG charts)",
        args.out.display()
    );
    for n in notes {
        eprintln!("netfast-bench: {n}");
    }
    let failures = r.failures();
    if !failures.is_empty() {
        bail!(
            "{} measurement(s) failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

fn progress(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// A line per measurement: above the bar on a terminal, plain otherwise (CI logs).
fn log(bar: &ProgressBar, line: &str) {
    if std::io::stderr().is_terminal() {
        bar.println(line);
    } else {
        eprintln!("{line}");
    }
}
