//! The loader of a host namespace, and the commands about the whole host: `config` and
//! `down`. The others live beside it: `networks`, `containers`, `publications`, `apply`;
//! each takes the host's lock, checks everything it can before it changes anything, and
//! undoes what it created if a later step fails (`transaction`, `intent`, `recover`).

use super::{
    caps,
    change::{Change, DataplaneGone},
    intent::{Intent, Object},
    model::{Backend, DataplaneConfig, State},
    netlink::{Netlink, Nl},
    networks::remove_bridge,
    state::Locked,
    transaction::conclude,
    validate::{self, Invalid},
};
use crate::{
    conntrack_filter::Filter,
    dataplane::Dataplane,
    error::{Error, Result},
    host::Host,
};

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Error::Settings(e.0)
    }
}

/// Refuses a change of ct-max while the dataplane exists (its conntrack map has its size).
pub(super) fn ct_max_fixed(running: &DataplaneConfig, wanted: &DataplaneConfig) -> Result<()> {
    if wanted.ct_max != running.ct_max {
        return Err(Error::Settings(format!(
            "the dataplane runs with ct-max {}; it can only change while no network exists \
             (`netfast down` removes everything, and every tracked flow with it)",
            running.ct_max
        )));
    }
    Ok(())
}

/// The loader of one host namespace (the calling thread's).
pub struct Loader {
    pub host: Host,
    netlink: Netlink,
}

impl Loader {
    pub fn new() -> Result<Self> {
        Ok(Loader {
            host: Host::current()?,
            netlink: Netlink::new()?,
        })
    }

    pub(super) fn nl(&self) -> Result<Nl<'_>> {
        self.netlink.host()
    }

    /// The state, read under a shared lock (which creates nothing).
    pub fn state(&self) -> Result<State> {
        Ok(self.read()?.state)
    }

    /// The state under a shared lock, held until the value is dropped: nothing changes (no
    /// `down` removes the dataplane) while a read-only command looks at it.
    pub fn read(&self) -> Result<Locked> {
        Locked::acquire(&self.host, false)
    }

    pub fn netlink(&self) -> &Netlink {
        &self.netlink
    }

    /// Host-wide dataplane settings; effective immediately where the dataplane runs.
    pub fn configure(&self, cfg: &DataplaneConfig) -> Result<Vec<Change>> {
        self.configure_with(|c| *c = cfg.clone())
            .map(|(_, lines)| lines)
    }

    /// Changes the settings with `change`, reading and writing them under one exclusive lock
    /// (two commands changing different settings at once both count). Returns the settings
    /// now in force; nothing is written when `change` changes nothing.
    pub fn configure_with(
        &self,
        change: impl FnOnce(&mut DataplaneConfig),
    ) -> Result<(DataplaneConfig, Vec<Change>)> {
        caps::require("config", false)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let mut cfg = locked.state.dataplane.clone();
        change(&mut cfg);
        if cfg == locked.state.dataplane {
            return Ok((cfg, out));
        }
        let cfg = &cfg;
        locked.begin(Intent::creating("config", Object::Settings))?;
        let changed = self.configure_locked(&mut locked.state, cfg);
        conclude(&mut locked, changed)?;
        out.push(Change::Settings {
            settings: cfg.clone(),
        });
        let fallback: Vec<String> = locked
            .state
            .networks
            .iter()
            .filter(|n| n.backend != Backend::Ebpf)
            .map(|n| n.name.clone())
            .collect();
        if !fallback.is_empty() {
            out.push(Change::FallbackSettings { networks: fallback });
        }
        Ok((cfg.clone(), out))
    }

    pub(super) fn configure_locked(&self, state: &mut State, cfg: &DataplaneConfig) -> Result<()> {
        let settings = validate::dataplane(cfg)?;
        if let Some(mut dp) = Dataplane::open_existing(&self.host)? {
            ct_max_fixed(&state.dataplane, cfg)?;
            dp.configure(&settings.config)?;
        }
        // The fallbacks' rules carry the timeouts: re-render them; on failure, the eBPF
        // dataplane goes back to the settings it had, so nothing is half applied.
        let before = state.clone();
        state.dataplane = cfg.clone();
        if let Err(e) = crate::backend::sync(&before, state) {
            state.dataplane = before.dataplane;
            if let Some(mut dp) = Dataplane::open_existing(&self.host)? {
                dp.configure(&validate::dataplane(&state.dataplane)?.config)?;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Removes everything netfast created in this host namespace, and nothing else: what the
    /// state knows, what an interrupted command was creating or removing (its intent), and
    /// every link that carries netfast's mark for this host, with the namespace behind it.
    pub fn down(&self) -> Result<Vec<Change>> {
        caps::require("down", true)?;
        let nl = self.nl()?;
        let mut locked = Locked::acquire(&self.host, true)?;
        let mut out = Vec::new();
        // An earlier `down` or another command that died: what it was about is netfast's too.
        let mut pending: Vec<Object> = Vec::new();
        let mut ip_forward_was_off = false;
        if let Some(i) = locked.intent.take() {
            ip_forward_was_off = i.ip_forward_was_off;
            out.push(Change::InterruptedRemoved {
                command: i.command.clone(),
            });
            pending.extend(
                i.create
                    .into_iter()
                    .chain(i.remove)
                    .filter(|o| *o != Object::Everything),
            );
        }
        let mut intent = Intent::removing("down", Object::Everything);
        intent.remove.extend(pending.iter().cloned());
        intent.ip_forward_was_off = ip_forward_was_off;
        locked.begin(intent)?;
        self.remove_everything(&nl, &mut locked, &pending, &mut out)?;
        super::recover::restore_ip_forward(&locked.state, ip_forward_was_off, &mut out)?;
        locked.remove()?;
        if out.is_empty() {
            out.push(Change::NothingToRemove);
        }
        Ok(out)
    }

    /// What `down` does before it removes the state: every network, container and
    /// publication of the state and of `pending` (an interrupted command's), the dataplane,
    /// the fallbacks' rules, and the links netfast marked as this host's (with their
    /// namespaces). The state is saved empty.
    pub(super) fn remove_everything(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        pending: &[Object],
        out: &mut Vec<Change>,
    ) -> Result<()> {
        let mut all = locked.state.clone();
        for o in pending {
            match o {
                Object::Network(n) if all.network(&n.name).is_none() => {
                    all.networks.push(n.clone());
                }
                Object::Container(c) if all.container(&c.name).is_none() => {
                    all.containers.push(c.clone());
                }
                Object::DockerEndpoint {
                    container,
                    endpoint,
                } if all.container(&container.name).is_none() => {
                    all.containers.push(container.clone());
                    all.docker.endpoints.push(endpoint.clone());
                }
                Object::Publication(p) if all.publication(&p.network, &p.spec).is_none() => {
                    all.publications.push(p.clone());
                }
                _ => {}
            }
        }
        // Unpinning first detaches every program, without opening the maps: `down` is the way
        // out of a dataplane this binary cannot reuse (another version's), so it must not
        // need to read it.
        if Dataplane::remove(&self.host)? {
            out.push(Change::DataplaneRemoved {
                why: DataplaneGone::Down,
            });
        }
        crate::backend::sync(&all, &State::default())?;
        if all.networks.iter().any(|n| n.backend != Backend::Ebpf) {
            out.push(Change::FallbackRulesRemoved);
            let ended = crate::backend::delete_kernel_flows(&all, &Filter::default())?;
            if ended > 0 {
                out.push(Change::FallbackFlowsEnded { flows: ended });
            }
        }
        // Rules no state or intent knows of (a command that died before it saved).
        if crate::backend::remove_all()? {
            out.push(Change::CrashRulesRemoved);
        }
        locked.state.publications.clear();
        all.publications.clear();
        for c in all.containers.clone() {
            self.remove_container(nl, &all, &c, out)?;
            locked.state.containers.retain(|x| x.name != c.name);
            locked.save()?;
        }
        for n in all.networks.clone() {
            remove_bridge(nl, &n, out)?;
            locked.state.networks.retain(|x| x.name != n.name);
            locked.save()?;
        }
        self.sweep_marked(nl, &locked.state, out)?;
        locked.state = State::default();
        locked.save()
    }
}
