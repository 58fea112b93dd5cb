//! The workloads, each run by a real client against a real server in a lab's namespaces:
//! iperf3 for TCP streams and small UDP datagrams, wrk against nginx for new connections
//! through the published port, and a request/response client timed here (one connection,
//! 64-byte messages, TCP_NODELAY: netperf's TCP_RR).

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    process::Output,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    cpu::CpuTimes,
    lab::{Env, RR_PORT, SERVER_ADDR},
};
use crate::{cmd::run_for, netns::within};

/// What the benchmark measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One TCP stream, container to outside (iperf3).
    TcpStream1,
    /// Four parallel TCP streams, container to outside (iperf3 -P 4).
    TcpStream4,
    /// Request/response on one TCP connection, container to outside: transactions per
    /// second and latency percentiles.
    TcpRr,
    /// New TCP connections per second, outside to the container's published port (wrk
    /// with `Connection: close` against nginx).
    TcpConn,
    /// 64-byte UDP datagrams, container to outside, as fast as iperf3 sends them.
    Udp64,
}

impl Workload {
    pub const ALL: [Workload; 5] = [
        Workload::TcpStream1,
        Workload::TcpStream4,
        Workload::TcpRr,
        Workload::TcpConn,
        Workload::Udp64,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Workload::TcpStream1 => "tcp-stream-1",
            Workload::TcpStream4 => "tcp-stream-4",
            Workload::TcpRr => "tcp-rr",
            Workload::TcpConn => "tcp-conn",
            Workload::Udp64 => "udp-64",
        }
    }

    /// The headline figure: name, unit, whether more is better.
    pub const fn metric(self) -> (&'static str, &'static str) {
        match self {
            Workload::TcpStream1 | Workload::TcpStream4 => ("throughput", "Gbit/s"),
            Workload::TcpRr => ("transactions", "trans/s"),
            Workload::TcpConn => ("connections", "conn/s"),
            Workload::Udp64 => ("packets", "kpps"),
        }
    }

    /// The unit of work CPU time is divided by.
    pub const fn cpu_unit(self) -> &'static str {
        match self {
            Workload::TcpStream1 | Workload::TcpStream4 => "CPU-ms/GB",
            Workload::TcpRr => "CPU-ms/1k trans",
            Workload::TcpConn => "CPU-ms/1k conn",
            Workload::Udp64 => "CPU-ms/1M pkts",
        }
    }

    pub const fn describe(self) -> &'static str {
        match self {
            Workload::TcpStream1 => "one TCP stream, container → outside (iperf3)",
            Workload::TcpStream4 => "four TCP streams, container → outside (iperf3 -P 4)",
            Workload::TcpRr => {
                "TCP request/response, 64 bytes each way on one connection, container → outside"
            }
            Workload::TcpConn => {
                "new TCP connections, outside → published port → nginx in the container (wrk, Connection: close)"
            }
            Workload::Udp64 => "64-byte UDP datagrams, container → outside (iperf3 -u -b 0)",
        }
    }
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The headline figure in the workload's unit.
    pub value: f64,
    /// Latency percentiles for request/response.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub latency: Option<Latency>,
    /// TCP retransmissions the sender counted (streams).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u64>,
    /// Busy CPU time of the whole machine per unit of work ([`Workload::cpu_unit`]).
    pub cpu_per_unit: f64,
    /// Busy CPU seconds, steal seconds and wall seconds of the measurement.
    pub cpu_busy_s: f64,
    pub cpu_steal_s: f64,
    pub wall_s: f64,
}

/// Latency percentiles, µs.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Runs `workload` on `env` for `seconds`.
pub fn measure(env: &Env, workload: Workload, seconds: u32) -> Result<Sample> {
    let before = CpuTimes::now()?;
    let started = Instant::now();
    let done = match workload {
        Workload::TcpStream1 => stream(env, 1, seconds)?,
        Workload::TcpStream4 => stream(env, 4, seconds)?,
        Workload::TcpRr => rr(env, seconds)?,
        Workload::TcpConn => conn(env, seconds)?,
        Workload::Udp64 => udp(env, seconds)?,
    };
    let wall = started.elapsed().as_secs_f64();
    let cpu = CpuTimes::now()?.since(&before);
    anyhow::ensure!(
        done.units > 0.0,
        "{} on {}: no work done",
        workload.name(),
        env.kind.name()
    );
    Ok(Sample {
        value: done.value,
        latency: done.latency,
        retransmits: done.retransmits,
        cpu_per_unit: cpu.busy * 1000.0 / done.units,
        cpu_busy_s: cpu.busy,
        cpu_steal_s: cpu.steal,
        wall_s: wall,
    })
}

/// What a client reported: the figure, and the work done in [`Workload::cpu_unit`]'s units.
struct Done {
    value: f64,
    units: f64,
    latency: Option<Latency>,
    retransmits: Option<u64>,
}

fn limit(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(seconds) + 20)
}

/// Runs `argv` in namespace `ns`, killed after `timeout`; fails unless it exits successfully.
fn run_in(ns: &str, argv: &[&str], timeout: Duration) -> Result<Output> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    let out = run_for(&full, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` in {ns} failed ({}): {}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

fn iperf3(env: &Env, extra: &[&str], seconds: u32) -> Result<serde_json::Value> {
    let (server, time) = (SERVER_ADDR.to_string(), seconds.to_string());
    let mut argv = vec![
        "iperf3",
        "-c",
        &server,
        "-t",
        &time,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    argv.extend_from_slice(extra);
    let out = run_in(&env.client, &argv, limit(seconds));
    // iperf3 -J reports its errors inside the JSON, on stdout, with a failing status.
    let out = out?;
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("iperf3 printed no JSON")?;
    if let Some(err) = json.get("error") {
        bail!("iperf3: {err}");
    }
    Ok(json)
}

fn stream(env: &Env, streams: u32, seconds: u32) -> Result<Done> {
    let n = streams.to_string();
    let json = iperf3(env, &["-P", &n], seconds)?;
    let sum = &json["end"]["sum_received"];
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("iperf3: no end.sum_received.bits_per_second")?;
    let bytes = sum["bytes"].as_f64().context("iperf3: no bytes")?;
    Ok(Done {
        value: bps / 1e9,
        units: bytes / 1e9,
        latency: None,
        retransmits: json["end"]["sum_sent"]["retransmits"].as_u64(),
    })
}

fn udp(env: &Env, seconds: u32) -> Result<Done> {
    let json = iperf3(env, &["-u", "-b", "0", "-l", "64"], seconds)?;
    let sum = &json["end"]["sum"];
    let field = |f: &str| {
        sum[f]
            .as_f64()
            .with_context(|| format!("iperf3: no end.sum.{f}"))
    };
    let received = field("packets")? - field("lost_packets")?;
    let secs = field("seconds")?;
    anyhow::ensure!(secs > 0.0, "iperf3 ran for no time");
    Ok(Done {
        value: received / secs / 1e3,
        units: received / 1e6,
        latency: None,
        retransmits: None,
    })
}

fn conn(env: &Env, seconds: u32) -> Result<Done> {
    let duration = format!("{seconds}s");
    let out = run_in(
        &env.server,
        &[
            "wrk",
            "-t2",
            "-c32",
            "-d",
            &duration,
            "--timeout",
            "2s",
            "-H",
            "Connection: close",
            &env.web_url,
        ],
        limit(seconds),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let w = parse_wrk(&text)?;
    // With every connection refused or reset, wrk still prints a rate: only answers count.
    anyhow::ensure!(
        w.non_2xx == 0 && w.requests > 0.0,
        "wrk got {} non-2xx answers of {} requests:\n{text}",
        w.non_2xx,
        w.requests
    );
    Ok(Done {
        value: w.rate,
        units: w.requests / 1e3,
        latency: None,
        retransmits: None,
    })
}

#[derive(Debug, PartialEq)]
struct Wrk {
    requests: f64,
    rate: f64,
    non_2xx: u64,
}

fn parse_wrk(text: &str) -> Result<Wrk> {
    let mut requests = None;
    let mut rate = None;
    let mut non_2xx = 0;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rate = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().unwrap_or(u64::MAX);
        } else if let Some((n, rest)) = line.split_once(" requests in ")
            && rest.contains('s')
        {
            requests = n.trim().parse().ok();
        }
    }
    match (requests, rate) {
        (Some(requests), Some(rate)) => Ok(Wrk {
            requests,
            rate,
            non_2xx,
        }),
        _ => bail!("unreadable wrk output:\n{text}"),
    }
}

/// One connection, a 64-byte request and a 64-byte answer at a time, for `seconds`.
fn rr(env: &Env, seconds: u32) -> Result<Done> {
    let addr = SocketAddr::V4(SocketAddrV4::new(SERVER_ADDR, RR_PORT));
    let mut rtts: Vec<u32> = within(&env.client, || -> Result<Vec<u32>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let msg = [0x5au8; 64];
        let mut answer = [0u8; 64];
        let warmup = Instant::now() + Duration::from_millis(200);
        let end = warmup + Duration::from_secs(u64::from(seconds));
        let mut rtts = Vec::with_capacity(seconds as usize * 50_000);
        loop {
            let t = Instant::now();
            if t > end {
                break;
            }
            s.write_all(&msg).context("sending a request")?;
            s.read_exact(&mut answer).context("reading an answer")?;
            if t > warmup {
                let ns = t.elapsed().as_nanos();
                rtts.push(u32::try_from(ns).unwrap_or(u32::MAX));
            }
        }
        Ok(rtts)
    })?;
    anyhow::ensure!(!rtts.is_empty(), "no transaction completed");
    let n = rtts.len() as f64;
    let total_s: f64 = rtts.iter().map(|&r| f64::from(r)).sum::<f64>() / 1e9;
    rtts.sort_unstable();
    let pct = |p: f64| f64::from(rtts[((n - 1.0) * p).round() as usize]) / 1e3;
    Ok(Done {
        value: n / total_s,
        units: n / 1e3,
        latency: Some(Latency {
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }),
        retransmits: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 2s test @ http://198.51.100.2:8080/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.92ms    1.08ms  15.72ms   88.57%
    Req/Sec     9.89k   483.72    10.72k    80.00%
  39411 requests in 2.00s, 5.90MB read
Requests/sec:  19668.08
Transfer/sec:      2.94MB
";

    #[test]
    fn wrk_output_gives_requests_and_rate() {
        assert_eq!(
            parse_wrk(WRK).unwrap(),
            Wrk {
                requests: 39411.0,
                rate: 19668.08,
                non_2xx: 0
            }
        );
        let bad = WRK.replace(
            "Requests/sec",
            "  Non-2xx or 3xx responses: 12\nRequests/sec",
        );
        assert_eq!(parse_wrk(&bad).unwrap().non_2xx, 12);
        assert!(parse_wrk("unable to connect to 198.51.100.1:8080").is_err());
    }
}
