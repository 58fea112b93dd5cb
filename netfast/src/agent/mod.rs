//! `netfast agent`: the one process that runs on, keeping the dataplane and the fallback
//! rules true to a host that changes under them, and showing it all to Prometheus.
//!
//! - It follows rtnetlink (links, IPv4 addresses) and makes a [`reconcile`] pass after each
//!   burst of events, and every `resync` anyway (a netlink socket can overflow and lose
//!   events; a pass finds the truth again).
//! - Every `reclaim` it removes what the datapath left to expire ([`reclaim`]), and keeps
//!   the tables' occupancy for the metrics.
//! - With `--metrics`, it serves `/metrics` ([`metrics`]).
//!
//! One agent serves one host namespace ([`lock`]). It keeps nothing of its own: what it
//! repairs is the state's and the kernel's, so that an agent killed and started again takes
//! over where it was, and no flow notices.

pub mod lock;
pub mod metrics;
pub mod reclaim;
pub mod reconcile;

use std::{
    net::SocketAddr,
    sync::mpsc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::StreamExt;

use crate::{
    dataplane::Dataplane,
    error::{Error, Result, report},
    host::Host,
    loader::{Loader, caps, state::Locked},
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where to serve `/metrics`; none without `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// A full pass at least this often, events or not.
    pub resync: Duration,
    /// Expired entries are reclaimed this often.
    pub reclaim: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            metrics: None,
            resync: Duration::from_secs(10),
            reclaim: Duration::from_secs(30),
        }
    }
}

enum Wake {
    /// Links or addresses changed.
    Changed,
    /// SIGTERM or SIGINT.
    Stop,
}

/// How long a burst of netlink events may last before the pass it calls for is made.
const SETTLE: Duration = Duration::from_millis(100);

/// Runs the agent of the calling thread's host namespace until SIGTERM or SIGINT.
pub fn run(opts: &Options) -> Result<()> {
    caps::require("agent", true)?;
    let loader = Loader::new()?;
    let host = loader.host.clone();
    let _lock = lock::AgentLock::acquire(&host)?;
    let shared = metrics::Shared::default();
    let (tx, rx) = mpsc::channel::<Wake>();
    // Its threads are made here, in the host's namespace, and stay in it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            context: "starting the agent's runtime".into(),
            source,
        })?;
    let (connection, _handle, mut messages) = {
        let _in_rt = rt.enter();
        rtnetlink::new_multicast_connection(&[
            rtnetlink::MulticastGroup::Link,
            rtnetlink::MulticastGroup::Ipv4Ifaddr,
        ])
        .map_err(|source| Error::Io {
            context: "subscribing to rtnetlink's link and address events".into(),
            source,
        })?
    };
    rt.spawn(connection);
    let changed = tx.clone();
    rt.spawn(async move {
        while messages.next().await.is_some() {
            if changed.send(Wake::Changed).is_err() {
                break;
            }
        }
    });
    let stop = tx.clone();
    rt.spawn(async move {
        stop_signal().await;
        let _ = stop.send(Wake::Stop);
    });
    let serving = match opts.metrics {
        Some(addr) => {
            let listener = {
                let _in_rt = rt.enter();
                std::net::TcpListener::bind(addr)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(tokio::net::TcpListener::from_std)
                    .map_err(|source| Error::Io {
                        context: format!("listening on {addr} for /metrics"),
                        source,
                    })?
            };
            let local = listener.local_addr().unwrap_or(addr);
            let router = Router::new()
                .route("/metrics", get(serve_metrics))
                .route("/", get(|| async { "netfast agent: see /metrics\n" }))
                .with_state((host.clone(), shared.clone()));
            rt.spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    log::error!("serving /metrics stopped: {e}");
                }
            });
            Some(local)
        }
        None => None,
    };

    let mut agent = Agent {
        loader,
        shared,
        drift: Default::default(),
        last_error: None,
    };
    agent.still_ours()?;
    agent.pass();
    agent.reclaim();
    println!(
        "netfast agent: serving {}{}",
        host.describe(),
        serving
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    let mut next_pass = Instant::now() + opts.resync;
    let mut next_reclaim = Instant::now() + opts.reclaim;
    loop {
        let wait = next_pass
            .min(next_reclaim)
            .saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Ok(Wake::Changed) => {
                // The rest of the burst (a link comes with its addresses) first.
                let settled = loop {
                    match rx.recv_timeout(SETTLE) {
                        Ok(Wake::Changed) => {}
                        Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                            break false;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => break true,
                    }
                };
                if !settled {
                    break;
                }
                agent.still_ours()?;
                agent.pass();
                next_pass = Instant::now() + opts.resync;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                agent.still_ours()?;
                let now = Instant::now();
                if now >= next_reclaim {
                    agent.reclaim();
                    next_reclaim = Instant::now() + opts.reclaim;
                }
                if now >= next_pass {
                    agent.pass();
                    next_pass = Instant::now() + opts.resync;
                }
            }
        }
    }
    rt.shutdown_background();
    println!("netfast agent: stopped; the dataplane keeps running");
    Ok(())
}

struct Agent {
    loader: Loader,
    shared: metrics::Shared,
    /// The drift the last pass reported, to log only what changes.
    drift: std::collections::BTreeMap<String, Vec<String>>,
    /// The last failure logged, to log a failure that repeats once.
    last_error: Option<String>,
}

impl Agent {
    /// Fails when the dataplane runs another build's programs (after `netfast upgrade` with
    /// a new binary): this agent's binary is not the one to serve it, and its service
    /// manager starts the new one when it exits. An upgrade under way is left to finish
    /// (the passes say what they cannot do meanwhile).
    fn still_ours(&self) -> Result<()> {
        let Some(root) = crate::bpffs::find() else {
            return Ok(());
        };
        let dir = root.join(crate::host::PIN_DIR).join(&self.loader.host.key);
        if !dir.join(netfast_common::maps::CONNTRACK).exists() {
            return Ok(());
        }
        let Some(meta) = crate::upgrade::read_meta(&dir)? else {
            return Ok(());
        };
        let this = crate::upgrade::this_build();
        if meta.next_layout != 0 || (meta.layout, meta.object) == (this.layout, this.object) {
            return Ok(());
        }
        Err(Error::Settings(format!(
            "the dataplane of {} runs the programs of {}, not this agent's ({}): the agent \
             stops, so that its service manager starts the netfast that runs them (after \
             `netfast upgrade`, restart the agent with the new binary)",
            self.loader.host.describe(),
            crate::upgrade::describe(meta.layout, meta.object, &meta.version),
            crate::upgrade::describe(this.layout, this.object, &this.version)
        )))
    }

    /// Logs a failure, once while it repeats.
    fn failed(&mut self, what: &str, e: &Error) {
        let text = format!("{what} failed: {}", report(e));
        if self.last_error.as_deref() != Some(text.as_str()) {
            log::warn!("{text} (trying again)");
            self.last_error = Some(text);
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, metrics::AgentCounters> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pass(&mut self) {
        match reconcile::reconcile(&self.loader) {
            Ok(pass) => {
                for r in &pass.repairs {
                    println!("netfast agent: repaired: {}", r.what);
                }
                for (network, problems) in &pass.drift {
                    let before = self.drift.get(network);
                    for p in problems {
                        if before.is_none_or(|b| !b.contains(p)) {
                            let on = if network.is_empty() {
                                String::new()
                            } else {
                                format!("network {network}: ")
                            };
                            println!("netfast agent: drift: {on}{p}");
                        }
                    }
                }
                for network in self.drift.keys() {
                    if !pass.drift.contains_key(network) && !network.is_empty() {
                        println!("netfast agent: network {network}: no drift left");
                    }
                }
                let mut c = self.counters();
                c.passes += 1;
                for r in &pass.repairs {
                    *c.repairs.entry(r.kind).or_default() += 1;
                }
                c.flows_ended += pass.flows_ended;
                c.drift = pass
                    .drift
                    .iter()
                    .map(|(n, p)| (n.clone(), p.len() as u64))
                    .collect();
                drop(c);
                self.drift = pass.drift;
                self.last_error = None;
            }
            Err(e) => {
                self.failed("a pass", &e);
                let mut c = self.counters();
                c.passes += 1;
                c.errors += 1;
            }
        }
    }

    fn reclaim(&mut self) {
        match self.try_reclaim() {
            Ok(Some((done, occupancy))) => {
                let mut c = self.counters();
                c.reclaimed.entries += done.entries;
                c.reclaimed.bindings += done.bindings;
                c.reclaimed.claims += done.claims;
                c.reclaimed.kept += done.kept;
                c.occupancy = Some(occupancy);
            }
            Ok(None) => self.counters().occupancy = None,
            Err(e) => {
                self.failed("reclaiming", &e);
                self.counters().errors += 1;
            }
        }
    }

    fn try_reclaim(&self) -> Result<Option<(reclaim::Reclaimed, reclaim::Occupancy)>> {
        // The lock only while the maps are opened: once open, `down` cannot take them away
        // from under the pass (it would work on maps nobody uses any more, harmlessly).
        let (mut dp, ct_max) = {
            let locked = Locked::acquire(&self.loader.host, false)?;
            match Dataplane::open_existing(&self.loader.host)? {
                Some(dp) => (dp, locked.state.dataplane.ct_max),
                None => return Ok(None),
            }
        };
        let now = reconcile::programs_now(&dp)?;
        reclaim::reclaim(dp.ebpf_mut(), now, ct_max).map(Some)
    }
}

async fn serve_metrics(State((host, shared)): State<(Host, metrics::Shared)>) -> Response {
    match tokio::task::spawn_blocking(move || metrics::render(&host, &shared)).await {
        Ok(Ok(text)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("netfast agent: {}\n", report(&e)),
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "netfast agent: reading the metrics failed (a bug in netfast)\n",
        )
            .into_response(),
    }
}

/// Resolves on SIGTERM (systemd's stop) or SIGINT (^C); never, if the handlers cannot be
/// installed (the default actions then stop the process, which is also a way out).
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
