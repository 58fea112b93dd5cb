//! CPU time from /proc/stat: what a piece of work cost the whole machine.
//!
//! Everything a benchmark runs (clients, servers, the forwarding between them) shares the
//! machine's CPUs, so busy time over the whole machine, divided by the work done, is the
//! cost per unit of work. Steal time (the hypervisor running someone else) is not ours and
//! is left out; it is reported so that a noisy run can be recognised.

use anyhow::{Context as _, Result};

/// Cumulative CPU times of all CPUs, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq (guest time is inside user).
    pub busy: f64,
    pub idle: f64,
    pub steal: f64,
}

impl CpuTimes {
    pub fn now() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        parse(&text, if hz > 0 { hz as f64 } else { 100.0 })
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy: self.busy - earlier.busy,
            idle: self.idle - earlier.idle,
            steal: self.steal - earlier.steal,
        }
    }
}

/// The first (`cpu `) line of /proc/stat: user nice system idle iowait irq softirq steal …
pub fn parse(text: &str, hz: f64) -> Result<CpuTimes> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no `cpu` line")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse::<f64>)
        .collect::<std::result::Result<_, _>>()
        .with_context(|| format!("unreadable /proc/stat line: {line}"))?;
    anyhow::ensure!(v.len() >= 8, "short /proc/stat line: {line}");
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
    Ok(CpuTimes {
        busy: (user + nice + system + irq + softirq) / hz,
        idle: (idle + iowait) / hz,
        steal: steal / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_iowait_and_steal() {
        let text = "cpu  100 20 30 400 50 6 7 80 5 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n";
        let t = parse(text, 100.0).unwrap();
        assert_eq!(t.busy, (100.0 + 20.0 + 30.0 + 6.0 + 7.0) / 100.0);
        assert_eq!(t.idle, 4.5);
        assert_eq!(t.steal, 0.8);
        let later = parse("cpu  200 20 30 400 50 6 7 90 0 0\n", 100.0).unwrap();
        let d = later.since(&t);
        assert_eq!(d.busy, 1.0);
        assert!((d.steal - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_garbled_line_is_an_error() {
        assert!(parse("cpu  1 2 x\n", 100.0).is_err());
        assert!(parse("intr 5\n", 100.0).is_err());
    }
}
