//! `netfast-fuzz [--packets N] [--seed S]… [--smp-rounds R] [--no-fixtures] [--strict]
//! [--replay NAME]`: the differential fuzzer (see `netfast_tests::fuzz`). `cargo xtask fuzz`
//! runs it. `--strict` stops at known datapath defects too (`fuzz::known`), to write their
//! fixture or check their fix.
//! `--seed` may be given several times; `--seed random` picks one from the clock and prints
//! it. The last line is `N packets, F flows, M mismatches`; the one before it says whether
//! the multi-CPU phase ran. Exits 1 on any mismatch, 2 on bad arguments.

use std::process::ExitCode;

use netfast_tests::{fuzz, require_root};

const USAGE: &str = "\
usage: netfast-fuzz [--packets N] [--seed S|random]... [--smp-rounds R] [--no-fixtures] [--strict]
       netfast-fuzz --replay NAME      (replay tests/fuzz-fixtures/NAME.events)
       netfast-fuzz --render NAME      (rewrite NAME.events with comments, its pcap and test)";

fn main() -> ExitCode {
    netfast_tests::log_to_stderr("netfast-fuzz");
    let mut opts = fuzz::Options::default();
    let mut seeds = Vec::new();
    let mut args = std::env::args().skip(1);
    let mut replay = None;
    let mut render = None;
    while let Some(a) = args.next() {
        let mut value = |what: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{what} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--packets" => opts.packets = parse(&value("--packets")),
            "--seed" => {
                let v = value("--seed");
                seeds.push(if v == "random" {
                    let s = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000);
                    println!("random seed: {s}");
                    s
                } else {
                    parse(&v)
                });
            }
            "--smp-rounds" => opts.smp_rounds = parse(&value("--smp-rounds")),
            "--no-fixtures" => opts.write_fixtures = false,
            "--strict" => opts.strict = true,
            "--replay" => replay = Some(value("--replay")),
            "--render" => render = Some(value("--render")),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    require_root();
    if let Some(name) = render {
        return match fuzz::render_fixture(&name, "a reduction written by hand") {
            Ok(found) => {
                match found {
                    Some(m) => println!("{name}: written; it replays with {m}"),
                    None => println!("{name}: written; it replays without a mismatch"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(name) = replay {
        return match fuzz::replay_fixture(&name) {
            Ok(()) => {
                println!("{name}: no mismatch");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    if !seeds.is_empty() {
        opts.seeds = seeds;
    }
    let started = std::time::Instant::now();
    println!(
        "fuzzing: {} packets for each of seeds {:?}, then {} rounds on two CPUs",
        opts.packets, opts.seeds, opts.smp_rounds
    );
    let outcome = fuzz::run(&opts);
    println!("took {:.1?}", started.elapsed());
    println!("{}", outcome.coverage_line());
    for l in outcome.known_lines() {
        println!("{l}");
    }
    println!("{}", outcome.smp_line());
    println!("{}", outcome.last_line());
    if outcome.mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse<T: std::str::FromStr>(v: &str) -> T {
    v.parse().unwrap_or_else(|_| {
        eprintln!("`{v}` is not a number\n{USAGE}");
        std::process::exit(2)
    })
}
