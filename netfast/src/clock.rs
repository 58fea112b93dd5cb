//! The programs' clock. They keep time in CLOCK_MONOTONIC seconds (every `expires` field,
//! compared with [`crate::maps::monotonic_now`] here), and read it from jiffies: a memory
//! load the verifier inlines, where a clock helper costs tens of nanoseconds a packet. The
//! conversion needs the kernel's tick rate and a reference point, which this module measures
//! by running the `netfast_clock` program, which reads jiffies and CLOCK_MONOTONIC at one
//! instant, across two ticks.

use std::time::{Duration, Instant};

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use netfast_common::{
    config::{ClockSample, DpConfig},
    maps::{CLOCK, CLOCK_PROGRAM},
};

use crate::error::{Error, Result};

/// Tick rates Linux is built with.
const RATES: [u32; 10] = [24, 32, 48, 64, 100, 128, 250, 256, 300, 1000];

/// `cfg` with the clock fields filled in, unless already there; unchanged (the programs
/// then use the clock helper) if the tick rate cannot be measured.
pub fn calibrated(ebpf: &mut Ebpf, cfg: &DpConfig) -> Result<DpConfig> {
    if cfg.clock_hz != 0 {
        return Ok(*cfg);
    }
    let mut out = *cfg;
    if let Some((hz, j0, m0)) = calibrate(ebpf)? {
        out.clock_hz = hz;
        out.clock_j0 = j0;
        out.clock_m0 = m0;
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
        program
            .load()
            .map_err(|e| Error::program(CLOCK_PROGRAM, e))?;
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

/// Samples until jiffies move on from `last`: the first sample of the new tick.
fn next_tick(ebpf: &mut Ebpf, last: u64, deadline: Instant) -> Result<Option<ClockSample>> {
    loop {
        let s = sample(ebpf)?;
        if s.jiffies != last {
            return Ok(Some(s));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
    }
}

/// `(hz, j0, m0)`: the tick rate, and the jiffies at which CLOCK_MONOTONIC passed the whole
/// second `m0`.
fn calibrate(ebpf: &mut Ebpf) -> Result<Option<(u32, u64, u32)>> {
    let deadline = Instant::now() + Duration::from_millis(200);
    let s0 = sample(ebpf)?;
    let Some(s1) = next_tick(ebpf, s0.jiffies, deadline)? else {
        return Ok(None);
    };
    let Some(s2) = next_tick(ebpf, s1.jiffies, deadline)? else {
        return Ok(None);
    };
    Ok(from_ticks(&s1, &s2))
}

/// The calibration two samples taken at the start of two ticks give.
fn from_ticks(s1: &ClockSample, s2: &ClockSample) -> Option<(u32, u64, u32)> {
    let ticks = s2.jiffies.checked_sub(s1.jiffies).filter(|&t| t > 0)?;
    let ns = s2.mono_ns.checked_sub(s1.mono_ns).filter(|&n| n > 0)?;
    let measured = ticks as f64 * 1e9 / ns as f64;
    // Within 5% of a rate Linux can have; anything else is not a clean measurement.
    let hz = RATES
        .into_iter()
        .find(|&r| (measured - f64::from(r)).abs() <= f64::from(r) * 0.05)?;
    let into_second = s2.mono_ns % 1_000_000_000;
    let back = (into_second as u128 * u128::from(hz)).div_ceil(1_000_000_000) as u64;
    let j0 = s2.jiffies.checked_sub(back)?;
    let m0 = u32::try_from(s2.mono_ns / 1_000_000_000).ok()?;
    Some((hz, j0, m0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(jiffies: u64, mono_ns: u64) -> ClockSample {
        ClockSample { jiffies, mono_ns }
    }

    #[test]
    fn the_rate_snaps_to_one_linux_has_and_j0_falls_on_a_second() {
        // HZ=250: a tick every 4 ms; the second sample 0.75 s into second 1000.
        let (hz, j0, m0) =
            from_ticks(&s(5_000, 1_000_746_000_000), &s(5_001, 1_000_750_020_000)).unwrap();
        assert_eq!((hz, m0), (250, 1000));
        // 0.75 s = 187.5 ticks back, rounded up: the boundary is not after j0.
        assert_eq!(j0, 5_001 - 188);
        // The programs' formula gives second 1000 at j0 and 1001 a second of ticks later.
        let now = |j: u64| m0 + ((j - j0) / u64::from(hz)) as u32;
        assert_eq!(now(5_001), 1000);
        assert_eq!(now(5_001 - 188 + 250), 1001);
    }

    #[test]
    fn an_unclean_measurement_is_refused() {
        // 7 ms per tick: no such rate.
        assert_eq!(
            from_ticks(&s(10, 1_000_000_000), &s(11, 1_007_000_000)),
            None
        );
        assert_eq!(
            from_ticks(&s(10, 1_000_000_000), &s(10, 1_004_000_000)),
            None
        );
    }
}
