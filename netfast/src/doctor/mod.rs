//! `netfast doctor`: diagnoses a host where NAT silently breaks — no eBPF, forwarding off,
//! netfilter pieces missing, a FORWARD policy of DROP, Docker's rules beside netfast's — a
//! check per line, each PASS, WARN or FAIL with what was found and the exact fix; and applies
//! the safe fixes when asked ([`fix`]).
//!
//! Everything is read in the calling thread's network namespace (the CLI enters `--netns`
//! first); nothing changes unless [`fix`] is called. Without root, what cannot be read is
//! reported as such, never as passing.

mod agent;
mod conflicts;
mod ebpf;
mod fix;
mod forward;
mod kernel;
mod modules;
mod rules;
mod sysctl;

use std::fmt;

use serde::Serialize;

pub use fix::{Applied, ETC_ENV, fix, record};

use crate::loader::model::State;

/// The areas checks belong to.
pub const AGENT: &str = "agent";
pub const EBPF: &str = "ebpf";
pub const FORWARDING: &str = "forwarding";
pub const MODULES: &str = "modules";
pub const NETFILTER: &str = "netfilter";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        })
    }
}

/// A fix `--fix` may apply by itself: nothing here removes anything or opens anything up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Mount bpffs at /sys/fs/bpf.
    MountBpffs,
    /// `modprobe` a module, and load it at boot.
    Modprobe(String),
    /// Set a sysctl of the host namespace, and at boot.
    Sysctl { key: String, value: String },
}

/// One line of the doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// [`EBPF`], [`FORWARDING`], [`MODULES`], [`NETFILTER`] or [`AGENT`].
    pub area: &'static str,
    pub name: String,
    pub status: Status,
    /// What was found, and why it matters.
    pub found: String,
    /// The exact fix, for anything but PASS.
    pub fix: Option<String>,
    /// What `--fix` did about it (set by [`record`]).
    pub fixed: Option<String>,
    /// What `--fix` may apply by itself.
    #[serde(skip)]
    pub remedy: Option<Remedy>,
}

impl Check {
    fn new(
        area: &'static str,
        name: impl Into<String>,
        status: Status,
        found: impl Into<String>,
        fix: Option<String>,
    ) -> Check {
        Check {
            area,
            name: name.into(),
            status,
            found: found.into(),
            fix,
            fixed: None,
            remedy: None,
        }
    }

    pub(crate) fn pass(
        area: &'static str,
        name: impl Into<String>,
        found: impl Into<String>,
    ) -> Check {
        Check::new(area, name, Status::Pass, found, None)
    }

    pub(crate) fn warn(
        area: &'static str,
        name: impl Into<String>,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(area, name, Status::Warn, found, Some(fix.into()))
    }

    pub(crate) fn fail(
        area: &'static str,
        name: impl Into<String>,
        found: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check::new(area, name, Status::Fail, found, Some(fix.into()))
    }

    fn remedy(mut self, remedy: Remedy) -> Check {
        self.remedy = Some(remedy);
        self
    }
}

/// Every check, in the calling thread's network namespace. `state`: netfast's networks and
/// publications there, to find rules that overlap them (`None` when there is no state).
pub fn diagnose(state: Option<&State>) -> Vec<Check> {
    let kernel = kernel::Kernel::read();
    let mut checks = ebpf::checks(&kernel);
    let ebpf_ok = checks.iter().all(|c| c.status != Status::Fail);
    checks.extend(sysctl::forwarding());
    let guarded: Vec<String> = state
        .map(|s| {
            s.networks
                .iter()
                .filter(|n| n.backend != crate::loader::model::Backend::Ebpf)
                .map(|n| n.bridge.clone())
                .collect()
        })
        .unwrap_or_default();
    checks.push(sysctl::route_localnet(&guarded));
    checks.extend(modules::checks(&kernel, ebpf_ok));
    checks.push(sysctl::conntrack_headroom());
    checks.extend(conflicts::checks(state));
    checks.push(agent::check(state));
    checks
}

/// `Ok` when the eBPF dataplane can run here (no eBPF check FAILs); otherwise every failing
/// check as `name: what was found`, joined by `; `. Cheap: no commands are run.
pub fn ebpf_usable() -> std::result::Result<(), String> {
    let failed: Vec<String> = ebpf::checks(&kernel::Kernel::read())
        .into_iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| format!("{}: {}", c.name, c.found))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// The worst status among `checks` (PASS for none).
pub fn worst(checks: &[Check]) -> Status {
    checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass)
}
