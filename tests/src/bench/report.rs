//! The benchmark's report: medians and spread over the rounds, CPU cost per unit of work,
//! ratios to iptables measured in the same run, the targets, and where it ran.
//! Written as markdown, JSON and SVG charts.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    lab::Kind,
    progcost::{LARGE_TABLE, ProgCost, SMALL_TABLE, median},
    work::{Latency, Sample, Workload},
};

/// One measurement as it went.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub round: u32,
    pub kind: Kind,
    pub workload: Workload,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub sample: Option<Sample>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One dataplane on one workload, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub workload: Workload,
    pub kind: Kind,
    pub unit: &'static str,
    pub rounds: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// (max - min) / median, percent.
    pub spread_pct: f64,
    pub cpu_unit: &'static str,
    pub cpu_median: f64,
    /// The medians of each latency percentile.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// Median over iptables' median, same run; CPU likewise (lower is better).
    pub vs_iptables: Option<f64>,
    pub cpu_vs_iptables: Option<f64>,
    /// Median over the veth pair's median.
    pub vs_veth: Option<f64>,
    /// Steal time as a share of the measurements' CPU time, percent.
    pub steal_pct: f64,
}

/// A target of the issue, and whether this run met it.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    pub goal: String,
    pub measured: Option<String>,
    /// None: not measured in this run.
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub wall_s: f64,
    pub machine: Machine,
    pub quick: bool,
    pub rounds: u32,
    pub seconds: u32,
    pub kinds: Vec<Kind>,
    pub workloads: Vec<Workload>,
    pub summary: Vec<Summary>,
    pub programs: Vec<ProgCost>,
    /// An empty program's per-run time, taken off every program figure.
    pub programs_floor_ns: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub programs_error: Option<String>,
    pub targets: Vec<Target>,
    pub measurements: Vec<Measurement>,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .measurements
            .iter()
            .filter_map(|m| {
                m.error.as_ref().map(|e| {
                    format!(
                        "round {} {} on {}: {e}",
                        m.round,
                        m.workload.name(),
                        m.kind.name()
                    )
                })
            })
            .collect();
        if let Some(e) = &self.programs_error {
            f.push(format!("program costs: {e}"));
        }
        f
    }
}

/// Medians, spreads and ratios of every (workload, dataplane).
pub fn summarize(ms: &[Measurement], workloads: &[Workload], kinds: &[Kind]) -> Vec<Summary> {
    let mut by: BTreeMap<(Workload, Kind), Vec<&Sample>> = BTreeMap::new();
    for m in ms {
        if let Some(s) = &m.sample {
            by.entry((m.workload, m.kind)).or_default().push(s);
        }
    }
    let mut out = Vec::new();
    for &w in workloads {
        let med = |k: Kind, f: &dyn Fn(&Sample) -> f64| -> Option<f64> {
            let v = by.get(&(w, k))?;
            let mut xs: Vec<f64> = v.iter().map(|s| f(s)).collect();
            Some(median(&mut xs))
        };
        let ipt = med(Kind::Iptables, &|s| s.value);
        let ipt_cpu = med(Kind::Iptables, &|s| s.cpu_per_unit);
        let veth = med(Kind::Veth, &|s| s.value);
        for &k in kinds {
            let Some(v) = by.get(&(w, k)) else { continue };
            let values: Vec<f64> = v.iter().map(|s| s.value).collect();
            let m = med(k, &|s| s.value).unwrap_or(f64::NAN);
            let cpu = med(k, &|s| s.cpu_per_unit).unwrap_or(f64::NAN);
            let (min, max) = values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                    (a.min(x), b.max(x))
                });
            let (busy, steal) = v.iter().fold((0.0, 0.0), |(b, st), s| {
                (b + s.cpu_busy_s, st + s.cpu_steal_s)
            });
            out.push(Summary {
                workload: w,
                kind: k,
                unit: w.metric().1,
                rounds: v.len(),
                median: m,
                min,
                max,
                spread_pct: if m > 0.0 {
                    (max - min) / m * 100.0
                } else {
                    0.0
                },
                cpu_unit: w.cpu_unit(),
                cpu_median: cpu,
                latency: latency_median(v),
                vs_iptables: ipt.map(|i| m / i),
                cpu_vs_iptables: ipt_cpu.map(|i| cpu / i),
                vs_veth: veth.map(|x| m / x),
                steal_pct: if busy + steal > 0.0 {
                    steal / (busy + steal) * 100.0
                } else {
                    0.0
                },
            });
        }
    }
    out
}

/// The median of each latency percentile over the samples that have them.
fn latency_median(v: &[&Sample]) -> Option<Latency> {
    let mut p50: Vec<f64> = v
        .iter()
        .filter_map(|s| s.latency)
        .map(|l| l.p50_us)
        .collect();
    let mut p99: Vec<f64> = v
        .iter()
        .filter_map(|s| s.latency)
        .map(|l| l.p99_us)
        .collect();
    (!p50.is_empty()).then(|| Latency {
        p50_us: median(&mut p50),
        p99_us: median(&mut p99),
    })
}

fn find(summary: &[Summary], w: Workload, k: Kind) -> Option<&Summary> {
    summary.iter().find(|s| s.workload == w && s.kind == k)
}

fn ratio_target(
    summary: &[Summary],
    w: Workload,
    against: Kind,
    goal: f64,
    at_least: bool,
) -> Target {
    let what = format!("netfast-on vs {} on {}", against.name(), w.name());
    let goal_text = if at_least {
        format!("≥ {goal:.2}×")
    } else {
        format!("≤ {goal:.2}×")
    };
    let ratio = find(summary, w, Kind::NetfastOn).and_then(|s| match against {
        Kind::Iptables => s.vs_iptables,
        Kind::Veth => s.vs_veth,
        _ => None,
    });
    match ratio {
        None => Target {
            what,
            goal: goal_text,
            measured: None,
            met: None,
            note: "not measured in this run".into(),
        },
        Some(r) => {
            let met = if at_least { r >= goal } else { r <= goal };
            let note = if met {
                String::new()
            } else {
                format!("missed by {:.0}%", (goal - r).abs() / goal * 100.0)
            };
            Target {
                what,
                goal: goal_text,
                measured: Some(format!("{r:.2}×")),
                met: Some(met),
                note,
            }
        }
    }
}

/// The targets, judged on this run's medians.
pub fn targets(summary: &[Summary], programs: &[ProgCost]) -> Vec<Target> {
    let mut t = Vec::new();
    for w in [Workload::TcpStream1, Workload::TcpStream4, Workload::TcpRr] {
        t.push(ratio_target(summary, w, Kind::Iptables, 1.3, true));
        // "Within 10% of the direct veth pair".
        t.push(ratio_target(summary, w, Kind::Veth, 0.9, true));
    }
    t.push(ratio_target(
        summary,
        Workload::TcpConn,
        Kind::Iptables,
        1.2,
        true,
    ));
    let worst = programs
        .iter()
        .max_by(|a, b| a.established_ns.total_cmp(&b.established_ns));
    t.push(match worst {
        None => Target {
            what: "program cost, established flow".into(),
            goal: "≤ 100 ns/packet".into(),
            measured: None,
            met: None,
            note: "not measured in this run".into(),
        },
        Some(p) => {
            let met = p.established_ns <= 100.0;
            Target {
                what: "program cost, established flow (worst case)".into(),
                goal: "≤ 100 ns/packet".into(),
                measured: Some(format!("{:.0} ns", p.established_ns)),
                met: Some(met),
                note: format!(
                    "{}: {}{}",
                    p.program,
                    p.case,
                    if met {
                        String::new()
                    } else {
                        format!(
                            "; missed by {:.0}%",
                            (p.established_ns - 100.0) / 100.0 * 100.0
                        )
                    }
                ),
            }
        }
    });
    let worst_growth = programs
        .iter()
        .filter_map(|p| p.established_large_ns.map(|l| (p, l / p.established_ns)))
        .max_by(|a, b| a.1.total_cmp(&b.1));
    t.push(match worst_growth {
        None => Target {
            what: format!("{LARGE_TABLE} tracked flows vs {SMALL_TABLE}"),
            goal: "≤ 1.20×".into(),
            measured: None,
            met: None,
            note: "not measured in this run".into(),
        },
        Some((p, g)) => {
            let met = g <= 1.2;
            Target {
                what: format!("{LARGE_TABLE} tracked flows vs {SMALL_TABLE} (worst case)"),
                goal: "≤ 1.20×".into(),
                measured: Some(format!("{g:.2}×")),
                met: Some(met),
                note: format!(
                    "{}: {}{}",
                    p.program,
                    p.case,
                    if met {
                        String::new()
                    } else {
                        format!("; missed by {:.0}%", (g - 1.2) / 1.2 * 100.0)
                    }
                ),
            }
        }
    });
    t
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0);
    Machine {
        kernel: kernel_release(),
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        memory_gib: kib / 1024.0 / 1024.0,
    }
}

fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&raw mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates its fields.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// `YYYY-MM-DD HH:MM` UTC for a UNIX time.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (h, m) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}")
}

fn fmt_value(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 1000.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "–".into(), |r| format!("{r:.2}×"))
}

/// The report as markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# netfast benchmark\n");
    let _ = writeln!(
        s,
        "{} UTC, {:.0} s{}. Kernel {}, {} × {}, {:.1} GiB. {} round(s) of {} s per measurement, dataplanes interleaved within each round.\n",
        r.started_utc,
        r.wall_s,
        if r.quick {
            " — **quick run (smoke test): the figures mean nothing**"
        } else {
            ""
        },
        r.machine.kernel,
        r.machine.cpus,
        r.machine.cpu,
        r.machine.memory_gib,
        r.rounds,
        r.seconds
    );
    let _ = writeln!(
        s,
        "Figures are medians over the rounds, with the spread (max − min) / median. CPU is the whole machine's busy time (user, system, irq, softirq; steal left out) per unit of work: clients, servers and the forwarding between them all run here, so differences between dataplanes are the dataplane's. Ratios compare medians with iptables (and the veth pair) measured in the same run.\n"
    );
    let _ = writeln!(s, "## Targets\n");
    let _ = writeln!(
        s,
        "| target | goal | measured | | note |\n|---|---|---|---|---|"
    );
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            t.what,
            t.goal,
            t.measured.as_deref().unwrap_or("–"),
            match t.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            },
            t.note
        );
    }
    for &w in &r.workloads {
        let (metric, unit) = w.metric();
        let _ = writeln!(s, "\n## {} — {}\n", w.name(), w.describe());
        let rr = w == Workload::TcpRr;
        let _ = writeln!(
            s,
            "| dataplane | {metric} ({unit}) | spread | vs iptables | vs veth |{} {} | CPU vs iptables | steal |",
            if rr { " p50 µs | p99 µs |" } else { "" },
            w.cpu_unit()
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|{}---:|---:|---:|",
            if rr { "---:|---:|" } else { "" }
        );
        for sum in r.summary.iter().filter(|x| x.workload == w) {
            let lat = if rr {
                sum.latency.map_or(" – | – |".into(), |l| {
                    format!(" {} | {} |", fmt_value(l.p50_us), fmt_value(l.p99_us))
                })
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0}% | {} | {} |{lat} {} | {} | {:.1}% |",
                sum.kind.name(),
                fmt_value(sum.median),
                sum.spread_pct,
                fmt_ratio(sum.vs_iptables),
                fmt_ratio(sum.vs_veth),
                fmt_value(sum.cpu_median),
                fmt_ratio(sum.cpu_vs_iptables),
                sum.steal_pct
            );
        }
        let _ = writeln!(s, "\n![{}]({}.svg)", w.name(), w.name());
    }
    let _ = writeln!(s, "\n## Programs, ns per packet (BPF_PROG_TEST_RUN)\n");
    if let Some(e) = &r.programs_error {
        let _ = writeln!(s, "Not measured: {e}\n");
    }
    if !r.programs.is_empty() {
        let _ = writeln!(
            s,
            "| case | program | packet | established ({SMALL_TABLE} flows) | spread | established ({LARGE_TABLE} flows) | growth | growth over the rounds | new flow |\n|---:|---|---|---:|---:|---:|---:|---:|---:|"
        );
        for (i, p) in r.programs.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                i + 1,
                p.program,
                p.case,
                p.established_ns,
                p.spread
                    .map_or("–".into(), |x| format!("{:.0}%", x * 100.0)),
                p.established_large_ns
                    .map_or("–".into(), |x| format!("{x:.0}")),
                p.established_large_ns
                    .map_or("–".into(), |x| format!("{:.2}×", x / p.established_ns)),
                p.growth_range
                    .map_or("–".into(), |(a, b)| format!("{a:.2}–{b:.2}×")),
                p.new_ns.map_or("–".into(), |x| format!("{x:.0}"))
            );
        }
        let _ = writeln!(
            s,
            "\nMedians over the rounds of each round's median of single runs, each on a fresh copy of the packet, net of an empty program's per-run time ({:.0} ns: the kernel's timer read and the call). The socket programs (connect4, sendmsg4, recvmsg4, getpeername4 on the root cgroup) cannot be run by BPF_PROG_TEST_RUN and are not measured.\n\n![programs](programs.svg)",
            r.programs_floor_ns.unwrap_or(f64::NAN)
        );
    }
    let _ = writeln!(s, "\n## Dataplanes\n");
    for k in &r.kinds {
        let _ = writeln!(s, "- **{}**: {}", k.name(), k.describe());
    }
    let failures = r.failures();
    if !failures.is_empty() {
        let _ = writeln!(s, "\n## Failed measurements\n");
        for f in failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}

/// Writes report.md, report.json and the charts into `dir`; returns a note for each chart
/// it could not draw.
pub fn write(r: &Report, dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("report.md"), markdown(r)).context("writing report.md")?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)
        .context("writing report.json")?;
    super::charts::draw(r, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: f64, cpu: f64) -> Sample {
        Sample {
            value,
            latency: None,
            retransmits: None,
            cpu_per_unit: cpu,
            cpu_busy_s: 1.0,
            cpu_steal_s: 0.0,
            wall_s: 1.0,
        }
    }

    fn m(round: u32, kind: Kind, value: f64, cpu: f64) -> Measurement {
        Measurement {
            round,
            kind,
            workload: Workload::TcpStream1,
            sample: Some(sample(value, cpu)),
            error: None,
        }
    }

    #[test]
    fn medians_spread_and_ratios_come_from_the_same_run() {
        let ms = vec![
            m(1, Kind::Iptables, 10.0, 4.0),
            m(2, Kind::Iptables, 12.0, 4.0),
            m(3, Kind::Iptables, 8.0, 4.0),
            m(1, Kind::NetfastOn, 15.0, 2.0),
            m(2, Kind::NetfastOn, 14.0, 2.0),
            m(3, Kind::NetfastOn, 16.0, 2.0),
            m(1, Kind::Veth, 16.0, 1.0),
        ];
        let kinds = [Kind::Veth, Kind::Iptables, Kind::NetfastOn];
        let s = summarize(&ms, &[Workload::TcpStream1], &kinds);
        let ipt = find(&s, Workload::TcpStream1, Kind::Iptables).unwrap();
        assert_eq!((ipt.median, ipt.min, ipt.max), (10.0, 8.0, 12.0));
        assert_eq!(ipt.spread_pct, 40.0);
        let nf = find(&s, Workload::TcpStream1, Kind::NetfastOn).unwrap();
        assert_eq!(nf.vs_iptables, Some(1.5));
        assert_eq!(nf.cpu_vs_iptables, Some(0.5));
        assert_eq!(nf.vs_veth, Some(15.0 / 16.0));
        let t = targets(&s, &[]);
        let stream = &t[0];
        assert_eq!(stream.met, Some(true));
        assert_eq!(stream.measured.as_deref(), Some("1.50×"));
        // 0.9375 of veth meets "within 10%".
        assert_eq!(t[1].met, Some(true));
        // Not measured: no verdict either way.
        assert_eq!(t[2].met, None);
    }

    #[test]
    fn a_missed_target_says_by_how_much() {
        let p = ProgCost {
            program: "uplink_ingress",
            case: "x",
            established_ns: 150.0,
            established_large_ns: Some(165.0),
            new_ns: None,
            spread: None,
            growth_range: None,
        };
        let t = targets(&[], &[p]);
        let cost = t.iter().find(|t| t.goal.contains("100 ns")).unwrap();
        assert_eq!(cost.met, Some(false));
        assert!(cost.note.contains("missed by 50%"), "{}", cost.note);
        let growth = t.iter().find(|t| t.goal == "≤ 1.20×").unwrap();
        assert_eq!(growth.met, Some(true));
    }

    #[test]
    fn latency_percentiles_are_medians_and_top_level_fields_of_the_json() {
        let rr = |round, p50_us, p99_us| Measurement {
            workload: Workload::TcpRr,
            sample: Some(Sample {
                latency: Some(Latency { p50_us, p99_us }),
                ..sample(1.0, 1.0)
            }),
            ..m(round, Kind::NetfastOn, 1.0, 1.0)
        };
        let ms = [rr(1, 10.0, 40.0), rr(2, 30.0, 20.0), rr(3, 20.0, 30.0)];
        let s = summarize(&ms, &[Workload::TcpRr], &[Kind::NetfastOn]);
        let json = serde_json::to_value(&s[0]).unwrap();
        assert_eq!(
            (json["p50_us"].as_f64(), json["p99_us"].as_f64()),
            (Some(20.0), Some(30.0))
        );
        let sample = serde_json::to_value(&ms[0]).unwrap();
        assert_eq!(sample["p99_us"].as_f64(), Some(40.0));
        // Without latency, neither field is written.
        let stream = serde_json::to_value(m(1, Kind::Veth, 1.0, 1.0)).unwrap();
        assert!(stream.get("p50_us").is_none() && stream.get("p99_us").is_none());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06");
    }
}
