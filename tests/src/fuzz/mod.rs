//! The differential fuzzer (issue #15): random but plausible event sequences run on the
//! real programs (BPF_PROG_TEST_RUN, in a namespace of its own) and on the reference model
//! ([`crate::model`]) side by side, compared packet by packet and map by map; then a
//! multi-CPU phase ([`smp`]). On a mismatch it stops, shrinks the sequence, and writes it
//! out as a regression test ([`fixture`]).
//!
//! A run is a series of episodes, each from a fresh state with its own settings and a seed
//! derived from the run's: `seed S, episode E` names a sequence exactly.

pub mod build;
pub mod convert;
pub mod dp;
pub mod event;
pub mod fixture;
pub mod generate;
pub mod known;
pub mod rng;
pub mod runner;
pub mod shrink;
pub mod smp;
pub mod topology;

use std::time::Instant;

use netfast::netns::NetnsGuard;

use self::{dp::Datapath, event::Event, generate::Gen, rng::Rng, runner::Runner, topology::Host};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Program runs per seed.
    pub packets: u64,
    pub seeds: Vec<u64>,
    /// Rounds of the multi-CPU phase (0: skip it).
    pub smp_rounds: u32,
    /// Write a failing sequence out as a fixture.
    pub write_fixtures: bool,
    /// Replays a shrinking may spend.
    pub shrink_budget: usize,
    /// Print a line every this many packets (0: never).
    pub progress: u64,
    /// Known defects stop the run too (to write their fixture, or to check a fix).
    pub strict: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            packets: 10_000,
            seeds: vec![1],
            smp_rounds: 2100,
            write_fixtures: true,
            shrink_budget: 3000,
            progress: 100_000,
            strict: false,
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub packets: u64,
    pub flows: u64,
    pub mismatches: u64,
    /// Known datapath defects met (see [`known`]), by fixture, with the first seed and
    /// episode that met each.
    pub known: std::collections::BTreeMap<&'static str, (u64, String)>,
    /// What the packets did, summed over the episodes (the model's counters): how much of
    /// the datapath the run reached.
    pub coverage: crate::model::Counters,
    /// The multi-CPU phase: what it did, or why it did not run.
    pub smp: Option<Result<smp::SmpReport, String>>,
}

impl Outcome {
    /// Known defects met, one line each.
    pub fn known_lines(&self) -> Vec<String> {
        self.known
            .iter()
            .map(|(fixture, (n, first))| {
                let k = known::KNOWN.iter().find(|k| k.fixture == *fixture);
                format!(
                    "known datapath defect met {n} times (first at {first}), not counted as a mismatch: {} (fixture {fixture})",
                    k.map_or("", |k| k.summary)
                )
            })
            .collect()
    }

    /// The line that says whether the multi-CPU phase ran.
    pub fn smp_line(&self) -> String {
        match &self.smp {
            None => "multi-CPU phase: not run (skipped)".into(),
            Some(Err(why)) => format!("multi-CPU phase: did not run: {why}"),
            Some(Ok(r)) => {
                let lost: Vec<String> = r
                    .lost_races
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                format!(
                    "multi-CPU phase: ran on CPUs {} and {}: {} rounds, {} + {} program runs, {} \
                     rounds with both packets through, races lost and counted: {}; {}",
                    r.cpus[0],
                    r.cpus[1],
                    r.rounds,
                    r.runs[0],
                    r.runs[1],
                    r.both_through,
                    if lost.is_empty() {
                        "none".into()
                    } else {
                        lost.join(", ")
                    },
                    if r.broken.is_empty() {
                        "invariants held".to_string()
                    } else {
                        format!(
                            "{} broken promises:\n  {}",
                            r.broken.len(),
                            r.broken.join("\n  ")
                        )
                    },
                )
            }
        }
    }

    /// What the packets did: drops by reason, events, runs by hook.
    pub fn coverage_line(&self) -> String {
        use netfast::common::{DropReason, Hook, stats::Event};
        let c = &self.coverage;
        // Each count as "name count", a key nothing is named for as "?".
        let named = |counts: &std::collections::BTreeMap<u32, u64>,
                     name: &dyn Fn(u32) -> Option<&'static str>| {
            counts
                .iter()
                .map(|(k, v)| format!("{} {v}", name(*k).unwrap_or("?")))
                .collect::<Vec<String>>()
        };
        let drops = named(&c.drops, &|k| DropReason::from_u32(k).map(DropReason::name));
        let events = named(&c.events, &|k| {
            Event::ALL
                .iter()
                .find(|e| **e as u32 == k)
                .map(|e| e.name())
        });
        let hooks = named(&c.hooks, &|k| {
            Hook::ALL.iter().find(|h| **h as u32 == k).map(|h| h.name())
        });
        let rules: Vec<String> = c.rules.iter().map(|(k, v)| format!("{k} {v}")).collect();
        format!(
            "coverage: runs {}\n  drops {}\n  events {}\n  rules {}",
            hooks.join(", "),
            drops.join(", "),
            events.join(", "),
            rules.join(", ")
        )
    }

    pub fn last_line(&self) -> String {
        format!(
            "{} packets, {} flows, {} mismatches",
            self.packets, self.flows, self.mismatches
        )
    }
}

/// The fuzzer's host and programs, with the calling thread inside its namespace.
pub struct Lab {
    // Dropped first (fields drop in order): the thread leaves the namespace before it is
    // deleted, or the deletion, which kills what runs inside, would kill this process.
    _inside: NetnsGuard,
    pub runner: Runner,
}

impl Lab {
    pub fn new() -> Lab {
        let host = Host::new();
        let inside = NetnsGuard::enter(host.ns.name())
            .unwrap_or_else(|e| panic!("fuzzer: entering its namespace: {e}"));
        Lab {
            _inside: inside,
            runner: Runner::new(Datapath::new(host)),
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

/// Runs the fuzzer as `opts` says, printing progress and what it finds.
pub fn run(opts: &Options) -> Outcome {
    let mut lab = Lab::new();
    let r = &mut lab.runner;
    let mut outcome = Outcome::default();
    let started = Instant::now();
    let mut next_progress = opts.progress;
    'seeds: for &seed in &opts.seeds {
        let before = r.packets;
        let mut episode = 0u64;
        while r.packets - before < opts.packets {
            let ep_seed = Rng::derive(seed, episode);
            let mut g = Gen::new(ep_seed);
            let mut lengths = Rng::new(ep_seed ^ 0x5eed);
            let length = lengths.range(150, 600) as usize;
            let mut events: Vec<Event> = Vec::new();
            let mut failure = None;
            for e in g.start() {
                events.push(e);
                let i = events.len() - 1;
                if let Err(m) = r.apply(i, &events[i]) {
                    failure = Some(m);
                    break;
                }
            }
            while failure.is_none() && events.len() < length && r.packets - before < opts.packets {
                // The last packet of the count: one that crosses one program only (the
                // host's own), so that a run is exactly as long as asked.
                let e = if opts.packets - (r.packets - before) == 1 {
                    g.host_packet(&r.model)
                } else {
                    g.next(&r.model)
                };
                events.push(e);
                let i = events.len() - 1;
                let res = r.apply(i, &events[i]).and_then(|()| {
                    if i % r.check_every == r.check_every - 1 {
                        r.checkpoint(i)
                    } else {
                        Ok(())
                    }
                });
                if let Err(m) = res {
                    // A known defect that made the datapath and the model part on a packet:
                    // counted, and the episode goes on from the datapath's state. (A broken
                    // invariant would only break again: that episode ends.)
                    match known::explain(&m, &r.model).filter(|_| !opts.strict) {
                        Some(k) if m.kind != "invariant" => {
                            note_known(&mut outcome, k, seed, episode, &m);
                            r.resync();
                        }
                        _ => failure = Some(m),
                    }
                }
            }
            if failure.is_none()
                && let Err(m) = r.checkpoint(events.len() - 1)
            {
                failure = Some(m);
            }
            outcome.flows += r.model.flows_opened;
            for (k, v) in &r.model.counters.drops {
                *outcome.coverage.drops.entry(*k).or_default() += v;
            }
            for (k, v) in &r.model.counters.events {
                *outcome.coverage.events.entry(*k).or_default() += v;
            }
            for (k, v) in &r.model.counters.hooks {
                *outcome.coverage.hooks.entry(*k).or_default() += v;
            }
            for (k, v) in &r.model.counters.rules {
                *outcome.coverage.rules.entry(k).or_default() += v;
            }
            if let Some(m) = failure {
                if let Some(k) = known::explain(&m, &r.model).filter(|_| !opts.strict) {
                    note_known(&mut outcome, k, seed, episode, &m);
                } else {
                    outcome.mismatches += 1;
                    report(r, opts, seed, episode, &events, &m);
                    break 'seeds;
                }
            }
            episode += 1;
            if opts.progress != 0 && r.packets >= next_progress {
                println!(
                    "  {} packets, {} flows, {} episodes of seed {seed}, {:.0?}",
                    r.packets,
                    outcome.flows,
                    episode,
                    started.elapsed()
                );
                next_progress += opts.progress;
            }
        }
    }
    outcome.packets = r.packets;
    if outcome.mismatches == 0 && opts.smp_rounds > 0 {
        outcome.smp = Some(smp::run_rounds(
            &mut r.dp,
            opts.smp_rounds,
            smp::Rounds::All,
        ));
        if let Some(Ok(rep)) = &outcome.smp
            && !rep.broken.is_empty()
        {
            outcome.mismatches += rep.broken.len() as u64;
        }
    }
    outcome
}

/// Counts a known defect met (printing the first meeting).
fn note_known(
    outcome: &mut Outcome,
    k: &known::Known,
    seed: u64,
    episode: u64,
    m: &runner::Mismatch,
) {
    let seen = outcome
        .known
        .entry(k.fixture)
        .or_insert((0, format!("seed {seed} episode {episode}")));
    seen.0 += 1;
    if seen.0 == 1 {
        println!(
            "  known datapath defect ({}, fixture {}) at seed {seed} episode {episode}: {m}",
            k.summary, k.fixture
        );
    }
}

/// Prints a mismatch, shrinks its sequence, prints that, and writes the fixture.
fn report(
    r: &mut Runner,
    opts: &Options,
    seed: u64,
    episode: u64,
    events: &[Event],
    m: &runner::Mismatch,
) {
    println!("MISMATCH at seed {seed}, episode {episode}, {m}");
    println!("shrinking {} events…", events.len());
    let (small, m2) = shrink::shrink(r, events, m, opts.shrink_budget);
    println!("shrunk to {} events; its mismatch:\n{m2}", small.len());
    let name = format!("seed-{seed}-episode-{episode}");
    if opts.write_fixtures {
        let origin = format!("seed {seed} episode {episode}, shrunk");
        let ignore = known::explain(&m2, &r.model).map(|k| k.summary);
        match fixture::write(r, &name, &origin, Some(&m2), &small, ignore) {
            Ok(path) => {
                println!("fixture: {}", path.display());
                if let Ok(text) = std::fs::read_to_string(&path) {
                    println!("{text}");
                }
            }
            Err(e) => println!("could not write the fixture: {e}"),
        }
    } else {
        for (i, e) in small.iter().enumerate() {
            println!("  {i}: {}", event::describe(e, &r.model));
        }
    }
}

/// Rewrites a fixture file (perhaps written by hand, its events only) with its header, the
/// description of each event, its pcap, and its test: a known defect's test is ignored
/// with the defect's summary.
pub fn render_fixture(name: &str, origin: &str) -> Result<Option<runner::Mismatch>, String> {
    let path = fixture::dir().join(format!("{name}.events"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let events = fixture::parse(&text)?;
    let mut lab = Lab::new();
    let r = &mut lab.runner;
    let found = r.replay(&events).err();
    let ignore = found
        .as_ref()
        .and_then(|m| known::explain(m, &r.model))
        .map(|k| k.summary);
    fixture::write(r, name, origin, found.as_ref(), &events, ignore)
        .map_err(|e| format!("writing {name}: {e}"))?;
    Ok(found)
}

/// Replays a fixture file from scratch; the mismatch it finds, worded for a test failure.
pub fn replay_fixture(name: &str) -> Result<(), String> {
    let path = fixture::dir().join(format!("{name}.events"));
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let events = fixture::parse(&text)?;
    let mut lab = Lab::new();
    lab.runner.replay(&events).map_err(|m| {
        format!(
            "{} replays with a mismatch between the datapath and the model:\n{m}",
            path.display()
        )
    })
}

/// `rounds` rounds of one kind of the multi-CPU phase alone, in a lab of their own: the
/// regression tests of the races it found.
pub fn races(which: smp::Rounds, rounds: u32) -> Result<smp::SmpReport, String> {
    let mut lab = Lab::new();
    smp::run_rounds(&mut lab.runner.dp, rounds, which)
}
