//! Whether something here relies on `netfast agent`, and whether one runs.

use super::{AGENT, Check};
use crate::{
    host::Host,
    loader::model::{Backend, State},
};

/// A PASS when an agent serves this host or nothing needs one; a WARN naming what goes
/// stale without one.
pub fn check(state: Option<&State>) -> Check {
    let name = "netfast agent";
    let ebpf: Vec<&str> = state
        .map(|s| {
            s.networks
                .iter()
                .filter(|n| n.backend == Backend::Ebpf)
                .map(|n| n.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    let running = Host::current().and_then(|h| crate::agent::lock::running(&h));
    match running {
        Ok(Some(pid)) => Check::pass(
            AGENT,
            name,
            format!(
                "an agent serves this host{}: the dataplane follows its addresses and links",
                if pid == 0 {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                }
            ),
        ),
        Ok(None) if ebpf.is_empty() => Check::pass(
            AGENT,
            name,
            if state.is_some_and(|s| !s.networks.is_empty()) {
                "none runs, and nothing needs one: the nftables/iptables backends' rules follow \
                 addresses and interfaces by themselves (an agent would also write them again \
                 if they were removed)"
            } else {
                "none runs, and nothing needs one (no netfast network here)"
            },
        ),
        Ok(None) => Check::warn(
            AGENT,
            name,
            format!(
                "none runs, and network(s) {} on the eBPF dataplane rely on one: without it, \
                 ports published on every address miss addresses added later, masquerade keeps \
                 the uplink's address of the moment, a bridge or uplink deleted and made again \
                 loses its programs, and expired flows are reclaimed only by the LRU",
                ebpf.join(", ")
            ),
            "run `netfast agent` in this namespace (under systemd: install \
             contrib/systemd/netfast-agent.service, then `systemctl enable --now netfast-agent`)",
        ),
        Err(e) => Check::warn(
            AGENT,
            name,
            format!(
                "could not tell whether an agent runs: {}",
                crate::error::report(&e)
            ),
            "run `netfast doctor` as root",
        ),
    }
}
