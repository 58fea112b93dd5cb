//! `netfast config`: host-wide dataplane settings.

use clap::Args;
use netfast::loader::{Loader, model::Filtering};

#[derive(Args)]
pub struct ConfigArgs {
    /// Flows the conntrack table holds [default: 262144]; only while no network exists.
    #[arg(long)]
    ct_max: Option<u32>,
    /// Who may reach a masqueraded port: only the endpoint the container contacted
    /// (address-and-port-dependent, like iptables), or anyone while the mapping lives.
    #[arg(long, value_enum)]
    filtering: Option<Filtering>,
    /// Ports masquerade picks from when a container's own port is taken: MIN-MAX
    /// [default: 1024-65535].
    #[arg(long, value_name = "MIN-MAX")]
    port_range: Option<String>,
    /// Idle timeout of established TCP flows, seconds [default: 7440, RFC 5382's floor].
    #[arg(long, value_name = "SECONDS")]
    timeout_tcp_established: Option<u32>,
    /// Idle timeout of opening and closing TCP flows, seconds [default: 240].
    #[arg(long, value_name = "SECONDS")]
    timeout_tcp_transitory: Option<u32>,
    /// Lifetime of a TCP flow after a RST, seconds [default: 10].
    #[arg(long, value_name = "SECONDS")]
    timeout_tcp_close: Option<u32>,
    /// Idle timeout of UDP flows, seconds [default: 300; RFC 4787 asks for at least 120].
    #[arg(long, value_name = "SECONDS")]
    timeout_udp: Option<u32>,
    /// Idle timeout of ICMP echo flows, seconds [default: 60].
    #[arg(long, value_name = "SECONDS")]
    timeout_icmp: Option<u32>,
    /// Forward translated flows in eBPF past the host's routing and netfilter (on), or hand
    /// them to the host's stack (off, for comparison) [default: on].
    #[arg(long, value_enum)]
    fast_path: Option<netfast::loader::model::Switch>,
    /// Print the settings as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let loader = Loader::new()?;
    let json = args.json;
    let changes = args.ct_max.is_some()
        || args.filtering.is_some()
        || args.port_range.is_some()
        || args.fast_path.is_some()
        || args.timeout_tcp_established.is_some()
        || args.timeout_tcp_transitory.is_some()
        || args.timeout_tcp_close.is_some()
        || args.timeout_udp.is_some()
        || args.timeout_icmp.is_some();
    let change = move |cfg: &mut netfast::loader::model::DataplaneConfig| {
        if let Some(v) = args.ct_max {
            cfg.ct_max = v;
        }
        if let Some(v) = args.filtering {
            cfg.filtering = v;
        }
        if let Some(v) = args.port_range {
            cfg.port_range = v;
        }
        if let Some(v) = args.fast_path {
            cfg.fast_path = v;
        }
        let t = &mut cfg.timeouts;
        for (field, value) in [
            (&mut t.tcp_established, args.timeout_tcp_established),
            (&mut t.tcp_transitory, args.timeout_tcp_transitory),
            (&mut t.tcp_close, args.timeout_tcp_close),
            (&mut t.udp, args.timeout_udp),
            (&mut t.icmp, args.timeout_icmp),
        ] {
            if let Some(v) = value {
                *field = v;
            }
        }
    };
    // Read-only without flags (a shared lock, nothing created); with flags, read, changed and
    // written under one exclusive lock, so that two commands at once both count.
    let cfg = if changes {
        let (cfg, changes) = loader.configure_with(change)?;
        // The settings themselves are printed below; notes go beside them, not into them.
        for c in changes {
            if let netfast::loader::Change::FallbackSettings { .. } = c {
                eprintln!("netfast: {c}");
            }
        }
        cfg
    } else {
        loader.state()?.dataplane
    };
    // Which clock the running programs read: a setting netfast measures, not one it takes.
    let reading = loader.read()?;
    let clock = match netfast::Dataplane::open_existing(&loader.host)? {
        Some(dp) => Some(netfast::clock::ClockSource::of(
            &netfast::maps::read_config(dp.ebpf())?,
        )),
        None => None,
    };
    drop(reading);
    let shown = Shown {
        settings: &cfg,
        clock,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        print!("{}", toml::to_string(&shown)?);
    }
    Ok(())
}

/// The settings, and the clock the programs read when an eBPF dataplane runs.
#[derive(serde::Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    settings: &'a netfast::loader::model::DataplaneConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<netfast::clock::ClockSource>,
}
