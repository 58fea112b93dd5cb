//! `netfast agent`: keeps the dataplane and the fallback rules true to the host as it
//! changes, reclaims expired entries, and serves `/metrics`.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

#[derive(Args)]
pub struct AgentArgs {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (in the host namespace; e.g.
    /// 127.0.0.1:9431).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Seconds between full passes when no netlink event calls for one.
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    resync: u64,
    /// Seconds between passes that remove expired conntrack entries and NAT mappings.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    reclaim: u64,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    netfast::agent::run(&netfast::agent::Options {
        metrics: args.metrics,
        resync: Duration::from_secs(args.resync),
        reclaim: Duration::from_secs(args.reclaim),
    })?;
    Ok(())
}
