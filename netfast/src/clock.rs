//! The programs' clock. They keep time in CLOCK_MONOTONIC seconds (every `expires` field,
//! compared with [`crate::maps::monotonic_now`] here), and read it from jiffies: a memory
//! load the verifier inlines, where a clock helper costs tens of nanoseconds a packet. The
//! conversion needs the kernel's tick rate and a reference point, which this module measures
//! by running the `netfast_clock` program, which reads jiffies and CLOCK_MONOTONIC at one
//! instant, over and over.
//!
//! Jiffies date a second's start only to within a tick: the programs' second turns at the
//! tick edge at or before CLOCK_MONOTONIC's, up to a tick early (4 ms at 250 Hz), never
//! late. So userspace, reading CLOCK_MONOTONIC, never takes for expired an entry that the
//! programs still use; for that tick it may still count as live, with 0 s to go, an entry
//! the programs have let expire.
//!
//! A measurement uses only tick edges it saw closely: two samples, one before the tick and
//! one after, taken at most [`BRACKET`] apart. A sampler that was preempted across an edge
//! (a busy machine) brackets it loosely, and that edge is skipped, not used: the machine's
//! load makes calibration slower, never wrong. Two clean edges at least [`SPAN`] apart give
//! the rate to well under 1%, enough to tell every rate Linux can be built with apart.
//!
//! Between the edges it wants, the sampler sleeps: the coarse clock's resolution is the
//! kernel's tick, so once an edge is seen, the next one worth a close look is known to
//! within the sleep's lateness, and sampling resumes [`AHEAD`] before it. A calibration
//! then costs some thousands of system calls, not one every microsecond for the whole span
//! (tens of thousands, on a fast machine: more than `strace -e inject` can count to).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netfast_common::{
    config::{ClockSample, DpConfig},
    maps::{CLOCK, CLOCK_PROGRAM},
};
use serde::Serialize;

use crate::error::{Error, Result};

/// Tick rates Linux is built with.
const RATES: [u32; 10] = [24, 32, 48, 64, 100, 128, 250, 256, 300, 1000];
/// The most two samples around a tick edge may be apart for the edge to be used.
const BRACKET: Duration = Duration::from_micros(100);
/// The least two edges used together are apart: the rate is then known to within
/// 2 × BRACKET / SPAN = 0.4%, where the closest rates Linux has (250 and 256) are 2.4% apart.
const SPAN: Duration = Duration::from_millis(50);
/// How long calibration may take before it gives up: on a loaded machine clean edges are
/// rarer, not absent, so this is generous.
const DEADLINE: Duration = Duration::from_secs(5);
/// How long before an edge it waits for the sampler wakes up from its sleep, at most (half
/// a tick at a high rate).
const AHEAD: Duration = Duration::from_micros(500);

/// The clock's conversion: CLOCK_MONOTONIC seconds at jiffies `j` are
/// `m0 + (j - j0) / hz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calibration {
    pub hz: u32,
    pub j0: u64,
    pub m0: u32,
}

/// Jiffies and CLOCK_MONOTONIC keep their relation for the life of the kernel: one
/// calibration serves every dataplane this process loads.
static CALIBRATION: Mutex<Option<Calibration>> = Mutex::new(None);

/// Which clock the programs read, as `netfast config` and `netfast stats` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClockSource {
    /// `jiffies` (calibrated) or `ktime_coarse` (the clock helper, on every packet).
    pub source: &'static str,
    /// The tick rate jiffies were calibrated to; 0 for the clock helper.
    pub hz: u32,
}

impl ClockSource {
    pub fn of(cfg: &DpConfig) -> Self {
        if cfg.clock_hz == 0 {
            ClockSource {
                source: "ktime_coarse",
                hz: 0,
            }
        } else {
            ClockSource {
                source: "jiffies",
                hz: cfg.clock_hz,
            }
        }
    }

    pub fn describe(&self) -> String {
        if self.hz == 0 {
            "the clock helper (bpf_ktime_get_coarse_ns) on every packet: the tick rate could not \
             be calibrated"
                .to_owned()
        } else {
            format!("jiffies, calibrated at {} Hz", self.hz)
        }
    }
}

/// `cfg` with the clock fields filled in, unless already there; unchanged (the programs
/// then use the clock helper) if the tick rate cannot be measured.
pub fn calibrated(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<DpConfig> {
    if cfg.clock_hz != 0 {
        return Ok(*cfg);
    }
    let mut out = *cfg;
    let known = *CALIBRATION
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let found = match known {
        Some(c) => Some(c),
        None => calibrate(
            &mut || sample(ebpf),
            &mut std::thread::sleep,
            tick(),
            DEADLINE,
        )?,
    };
    if let Some(c) = found {
        *CALIBRATION
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
        out.clock_hz = c.hz;
        out.clock_j0 = c.j0;
        out.clock_m0 = c.m0;
    }
    Ok(out)
}

fn sample(ebpf: &mut Ebpf) -> Result<ClockSample> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(CLOCK_PROGRAM)
        .ok_or(Error::MissingProgram(CLOCK_PROGRAM))?
        .try_into()
        .map_err(|e| Error::program(CLOCK_PROGRAM, e))?;
    if program.fd().is_err() {
        crate::dataplane::load_program(CLOCK_PROGRAM, || program.load())?;
    }
    let frame = [0u8; 64];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    program
        .test_run(opts)
        .map_err(|e| Error::program(CLOCK_PROGRAM, e))?;
    let map = ebpf.map(CLOCK).ok_or(Error::MissingMap(CLOCK))?;
    let array: Array<&MapData, ClockSample> =
        Array::try_from(map).map_err(|e| Error::map(CLOCK, e))?;
    array.get(&0, 0).map_err(|e| Error::map(CLOCK, e))
}

/// The kernel's tick, as the resolution of `CLOCK_MONOTONIC_COARSE` says it (a hint for
/// pacing the sampler: the rate itself is measured); `None` if it says nothing a tick can
/// be.
fn tick() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes the timespec it is given.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut ts) };
    let tick = Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    );
    (rc == 0 && tick >= Duration::from_micros(900) && tick <= Duration::from_millis(50))
        .then_some(tick)
}

/// Samples until two cleanly seen tick edges at least [`SPAN`] apart give a rate Linux can
/// have, or `deadline` passes (`None`). With the `tick` known, it `sleep`s: a thirty-second
/// of a tick between samples until it sees an edge, then after each edge until [`AHEAD`]
/// (at most half a tick) before the next edge it wants: the next one, or the first [`SPAN`]
/// after its first clean one. A sample after a sleep never brackets an edge cleanly.
fn calibrate(
    sample: &mut dyn FnMut() -> Result<ClockSample>,
    sleep: &mut dyn FnMut(Duration),
    tick: Option<Duration>,
    deadline: Duration,
) -> Result<Option<Calibration>> {
    let give_up = Instant::now() + deadline;
    let mut prev = sample()?;
    let mut first: Option<ClockSample> = None;
    // Whether an edge has been seen (pacing knows where the ticks fall).
    let mut seen = false;
    while Instant::now() < give_up {
        let s = sample()?;
        if let Some(edge) = clean_edge(&prev, &s) {
            match first {
                None => first = Some(edge),
                Some(e1) if edge.mono_ns.saturating_sub(e1.mono_ns) >= SPAN.as_nanos() as u64 => {
                    if let Some(c) = from_edges(&e1, &edge) {
                        return Ok(Some(c));
                    }
                    // Not a rate Linux has: start again from this edge.
                    first = Some(edge);
                }
                Some(_) => {}
            }
        }
        if let Some(tick) = tick {
            if s.jiffies == prev.jiffies {
                if !seen {
                    // Looking for a first edge, loosely: a few dozen samples a tick.
                    sleep(tick / 32);
                }
            } else {
                // An edge passed after `prev`: the next one wanted is `ticks` later, and not
                // before `prev` and that many ticks.
                seen = true;
                let since_first = first.map_or(0, |e1| s.mono_ns.saturating_sub(e1.mono_ns));
                let span = SPAN.as_nanos() as u64;
                let tick_ns = tick.as_nanos() as u64;
                let ticks = if first.is_some() && since_first < span {
                    (span - since_first).div_ceil(tick_ns).max(1)
                } else {
                    1
                };
                let wake = (prev.mono_ns + ticks * tick_ns)
                    .saturating_sub(AHEAD.min(tick / 2).as_nanos() as u64);
                sleep(Duration::from_nanos(wake.saturating_sub(s.mono_ns)));
            }
        }
        prev = s;
    }
    Ok(None)
}

/// `s`, when it is the first sample of a tick and `prev`, the last of the one before, was
/// taken at most [`BRACKET`] earlier: then `s` dates the tick's start to within BRACKET.
fn clean_edge(prev: &ClockSample, s: &ClockSample) -> Option<ClockSample> {
    let one_tick = s.jiffies.checked_sub(prev.jiffies)? == 1;
    let close = s.mono_ns.checked_sub(prev.mono_ns)? <= BRACKET.as_nanos() as u64;
    (one_tick && close).then_some(*s)
}

/// The calibration two samples taken at the start of two ticks give.
fn from_edges(s1: &ClockSample, s2: &ClockSample) -> Option<Calibration> {
    let ticks = s2.jiffies.checked_sub(s1.jiffies).filter(|&t| t > 0)?;
    let ns = s2.mono_ns.checked_sub(s1.mono_ns).filter(|&n| n > 0)?;
    let measured = ticks as f64 * 1e9 / ns as f64;
    // Within 1% of a rate Linux can have; anything else is not a clean measurement.
    let hz = RATES
        .into_iter()
        .find(|&r| (measured - f64::from(r)).abs() <= f64::from(r) * 0.01)?;
    let into_second = s2.mono_ns % 1_000_000_000;
    let back = (u128::from(into_second) * u128::from(hz)).div_ceil(1_000_000_000) as u64;
    let j0 = s2.jiffies.checked_sub(back)?;
    let m0 = u32::try_from(s2.mono_ns / 1_000_000_000).ok()?;
    Some(Calibration { hz, j0, m0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(jiffies: u64, mono_ns: u64) -> ClockSample {
        ClockSample { jiffies, mono_ns }
    }

    #[test]
    fn the_rate_snaps_to_one_linux_has_and_j0_falls_on_a_second() {
        // HZ=250: a tick every 4 ms; 13 ticks measured, the second edge 0.75 s into
        // second 1000.
        let c = from_edges(&s(4_988, 1_000_698_000_000), &s(5_001, 1_000_750_020_000)).unwrap();
        assert_eq!((c.hz, c.m0), (250, 1000));
        // 0.75 s = 187.5 ticks back, rounded up: the boundary is not after j0.
        assert_eq!(c.j0, 5_001 - 188);
        // The programs' formula gives second 1000 at j0 and 1001 a second of ticks later.
        let now = |j: u64| c.m0 + ((j - c.j0) / u64::from(c.hz)) as u32;
        assert_eq!(now(5_001), 1000);
        assert_eq!(now(5_001 - 188 + 250), 1001);
    }

    #[test]
    fn unclean_measurements_are_refused_and_close_rates_told_apart() {
        // 7 ms per tick: no such rate.
        assert_eq!(
            from_edges(&s(10, 1_000_000_000), &s(11, 1_007_000_000)),
            None
        );
        assert_eq!(
            from_edges(&s(10, 1_000_000_000), &s(10, 1_004_000_000)),
            None
        );
        // 256 Hz measured is not 250 Hz.
        assert_eq!(
            from_edges(&s(0, 1_000_000_000), &s(256, 2_000_000_000)).map(|c| c.hz),
            Some(256)
        );
    }

    /// A simulated kernel at `hz`: jiffies tick every 1/hz s of a clock the sampler reads,
    /// and `step` says how far the clock moves before each sample (the sampler's pace,
    /// and its preemptions).
    fn simulated(hz: u32, mut step: impl FnMut(u64) -> u64) -> impl FnMut() -> Result<ClockSample> {
        let tick = 1_000_000_000 / u64::from(hz);
        let mut mono = 5_000_000_000u64 + 123_456;
        let mut n = 0;
        move || {
            mono += step(n);
            n += 1;
            Ok(s(mono / tick, mono))
        }
    }

    #[test]
    fn a_sampler_preempted_across_most_edges_still_calibrates_exactly() {
        for hz in RATES {
            // Runs of 3 µs samples for 1 ms, then preempted for 7 ms: most edges fall in a
            // preemption, where a naive two-tick measurement would be off by up to 7 ms.
            let mut sampler = simulated(hz, |n| if n % 333 == 332 { 7_000_000 } else { 3_000 });
            let c = calibrate(&mut sampler, &mut |_| {}, None, Duration::from_secs(5))
                .unwrap()
                .unwrap_or_else(|| panic!("no calibration at {hz} Hz"));
            assert_eq!(c.hz, hz);
        }
    }

    #[test]
    fn a_sampler_that_never_sees_an_edge_closely_gives_up() {
        // Every sample 1 ms after the last: no edge is ever bracketed within 100 µs.
        let mut sampler = simulated(250, |_| 1_000_000);
        assert_eq!(
            calibrate(&mut sampler, &mut |_| {}, None, Duration::from_millis(50)).unwrap(),
            None
        );
    }

    /// A sampler that sleeps between the edges it wants (its sleeps late by up to 300 µs,
    /// its samples 1 µs apart) calibrates exactly, in some thousands of samples where one
    /// that never sleeps takes one every microsecond of the span.
    #[test]
    fn a_paced_sampler_calibrates_exactly_with_few_samples() {
        for hz in RATES {
            let tick = 1_000_000_000 / u64::from(hz);
            let mono = std::cell::Cell::new(7_000_000_000u64 + 654_321);
            let samples = std::cell::Cell::new(0u64);
            let mut sampler = || {
                mono.set(mono.get() + 1_000);
                samples.set(samples.get() + 1);
                Ok(s(mono.get() / tick, mono.get()))
            };
            let mut late = 0u64;
            let mut sleep = |d: Duration| {
                late = (late + 97_000) % 300_000;
                mono.set(mono.get() + d.as_nanos() as u64 + late);
            };
            let c = calibrate(
                &mut sampler,
                &mut sleep,
                Some(Duration::from_nanos(tick)),
                Duration::from_secs(5),
            )
            .unwrap()
            .unwrap_or_else(|| panic!("no calibration at {hz} Hz"));
            assert_eq!(c.hz, hz);
            assert!(
                samples.get() < 5_000,
                "{} samples at {hz} Hz",
                samples.get()
            );
        }
    }
}
