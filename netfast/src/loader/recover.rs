//! After a crash: every command that changes the host first converges what an interrupted
//! command left ([`super::intent`]), then removes links marked as netfast's for this host
//! that nothing knows of, and the fast path's entries for addresses no container holds.

use super::{
    Loader,
    change::{Change, DataplaneGone},
    intent::{Intent, Mark, Object, Owner},
    model::{Backend, Network, State},
    netlink::{Link, Nl},
    nsfs,
    state::Locked,
    transaction::Step,
};
use crate::{
    dataplane::Dataplane,
    error::{Error, Result},
};

impl Loader {
    /// Takes the host's exclusive lock for a command that changes something, after
    /// converging what an interrupted command left: what it was creating is removed again
    /// unless the state has it, what it was removing is removed for good (an interrupted
    /// `down` is finished), links marked as this host's that neither the state nor that
    /// command knows go with the namespaces behind them, and so do the fast path's entries
    /// for addresses no container of the state holds. What it does is logged (`info`: the
    /// command may fail after it, and its own output is its own changes); returns the lock
    /// and an empty list for the command's changes.
    pub(super) fn lock(&self, nl: &Nl<'_>) -> Result<(Locked, Vec<Change>)> {
        let mut locked = Locked::acquire(&self.host, true)?;
        log::debug!("holding the exclusive lock of {}", self.host.describe());
        let mut out = Vec::new();
        self.complete_interrupted(nl, &mut locked, &mut out)?;
        if !locked.saved() {
            self.refuse_a_lost_state(nl, &locked)?;
        }
        let swept = self
            .sweep_marked(nl, &locked.state, &mut out)
            .and_then(|()| self.sweep_endpoints(&locked.state, &mut out));
        // What was done is said even when a later sweep failed.
        for change in &out {
            log::info!("{change}");
        }
        swept?;
        self.record_namespace_cookies(&mut locked)?;
        Ok((locked, Vec::new()))
    }

    /// Completes what the interrupted command recorded in `locked`'s intent left (nothing
    /// without one), and saves the state.
    pub(super) fn complete_interrupted(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        let Some(intent) = locked.intent.clone() else {
            return Ok(());
        };
        out.push(Change::InterruptedCompleted {
            command: intent.command.clone(),
        });
        self.step(nl, out).converge(locked, &intent).map_err(|e| {
            Error::Settings(format!(
                "could not complete what an interrupted `netfast {}` left: {}; fix the cause \
                 and run the command again, or `netfast down` to remove everything netfast made",
                intent.command,
                crate::error::report(&e)
            ))
        })?;
        locked.save()?;
        locked.finish()
    }

    /// With no state saved and no interrupted command recorded, links marked as this host's
    /// are not leftovers of a crash: a state deleted by hand, with networks and containers
    /// running. The sweeps would remove them (the containers' namespaces too); the command
    /// is refused instead, saying what it found. (A pinned dataplane alone is left to the
    /// command: nothing sweeps it.)
    fn refuse_a_lost_state(&self, nl: &Nl<'_>, locked: &Locked) -> Result<()> {
        let found: Vec<String> = self
            .unknown_marked(nl, &locked.state)?
            .into_iter()
            .map(|(link, owner)| match owner {
                Owner::Network(n) => format!("bridge {} of network {n}", link.name),
                Owner::Container(c) => format!("veth {} of container {c}", link.name),
            })
            .collect();
        if found.is_empty() {
            return Ok(());
        }
        Err(Error::Settings(format!(
            "{} has no netfast state ({} is missing), yet netfast's marks say it runs here: {}. \
             No interrupted command was recorded, so these are not leftovers of a crash: was \
             the state deleted? Put it back, or run `netfast down` to remove everything \
             netfast made here (the containers' namespaces with it)",
            self.host.describe(),
            self.host
                .state_dir()
                .join(super::state::STATE_FILE)
                .display(),
            found.join(", ")
        )))
    }

    /// Records the namespace cookie of each container of a state written before netfast
    /// recorded them, whose namespace is still the one netfast made (its `lo` or `eth0` carries the
    /// container's mark): from then on the namespace is known by it, not by its name.
    fn record_namespace_cookies(&self, locked: &mut Locked) -> Result<()> {
        let State {
            containers, docker, ..
        } = &mut locked.state;
        let mut found = false;
        for c in containers.iter_mut() {
            if c.netns_cookie.is_some() || docker.owns_container(&c.name) {
                continue;
            }
            let mark = Mark::container(&self.host.key, &c.name);
            if self.namespace_is_marked(&c.name, &mark)
                && let Ok(Some(cookie)) = nsfs::cookie(&c.name)
            {
                log::debug!("namespace {}: recorded its cookie {cookie}", c.name);
                c.netns_cookie = Some(cookie);
                found = true;
            }
        }
        if found { locked.save() } else { Ok(()) }
    }

    /// Completes what an interrupted command left, as the next command would: for `netfast
    /// agent`, which sees it first. Returns whether there was anything.
    pub fn recover(&self) -> Result<bool> {
        let pending = Locked::acquire(&self.host, false)?.intent.is_some();
        if pending {
            let nl = self.netlink().host()?;
            self.lock(&nl)?;
        }
        Ok(pending)
    }

    /// Removes the links that carry netfast's mark for this host but belong to nothing of
    /// `state` (a bridge of no network, a veth of no container), with the namespace behind a
    /// veth when its `lo` or `eth0` carries the same mark.
    pub(super) fn sweep_marked(
        &self,
        nl: &Nl<'_>,
        state: &State,
        out: &mut Vec<Change>,
    ) -> Result<()> {
        for (link, owner) in self.unknown_marked(nl, state)? {
            // The mark of a network or container the state has, on a link of another name:
            // renamed by hand, not left by a killed command. Its namespace and its traffic
            // are the state's container's; nothing of it goes.
            if let Some((kind, name, want)) = renamed(state, &owner) {
                log::warn!(
                    "link {} carries the mark of {kind} {name}, whose link the state knows as \
                     {want}: renamed by hand? It is left alone; rename it back (`ip link set {} \
                     name {want}`)",
                    link.name,
                    link.name
                );
                continue;
            }
            match &owner {
                Owner::Container(name) => {
                    if self.namespace_is_marked(name, link.alias.as_deref().unwrap_or("")) {
                        nsfs::delete(name).map_err(|source| Error::Io {
                            context: format!("deleting namespace {name}"),
                            source,
                        })?;
                        out.push(Change::UnknownNamespaceRemoved {
                            namespace: name.clone(),
                        });
                    }
                    nl.delete_link(&link)?;
                }
                Owner::Network(_) => nl.delete_link(&link)?,
            }
            out.push(Change::UnknownLinkRemoved {
                link: link.name.clone(),
                mark: link.alias.clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    /// Removes the fast path's entries (`NETFAST_ENDPOINTS`) for addresses that no container
    /// of `state` holds, in one walk of the map: one left by a command killed between writing
    /// it and saving the state, whose intent was lost with it (or written by a build before
    /// the Docker plugin wrote intents), with an ifindex that may later be another
    /// interface's. Nothing without a pinned dataplane.
    pub(super) fn sweep_endpoints(&self, state: &State, out: &mut Vec<Change>) -> Result<()> {
        let mut dp = match Dataplane::open_existing(&self.host) {
            Ok(Some(dp)) => dp,
            Ok(None) => return Ok(()),
            // One this netfast cannot use (another layout, an upgrade to finish): a command
            // that needs it says why, and the sweep waits for a netfast that can.
            Err(e) => {
                log::debug!(
                    "not sweeping the fast path's endpoints: {}",
                    crate::error::report(&e)
                );
                return Ok(());
            }
        };
        for (addr, ep) in state.stray_endpoints(crate::maps::endpoints(dp.ebpf())?) {
            dp.remove_endpoint(addr)?;
            out.push(Change::UnknownEndpointRemoved {
                addr,
                ifindex: ep.ifindex,
            });
        }
        Ok(())
    }

    /// The links marked as this host's that `state` does not account for.
    pub(super) fn unknown_marked(&self, nl: &Nl<'_>, state: &State) -> Result<Vec<(Link, Owner)>> {
        Ok(nl
            .links()?
            .into_iter()
            .filter_map(|l| {
                let mark = Mark::parse(l.alias.as_deref()?)?;
                if mark.host != self.host.key {
                    return None;
                }
                let known = match &mark.owner {
                    Owner::Network(_) => state.networks.iter().any(|n| n.bridge == l.name),
                    Owner::Container(_) => state.containers.iter().any(|c| c.veth == l.name),
                };
                (!known).then_some((l, mark.owner))
            })
            .collect())
    }

    /// Whether namespace `name` exists and carries `mark`: on its `lo` (where netfast puts
    /// it before the namespace has its name) or its `eth0` (where netfast put it alone
    /// before).
    pub(super) fn namespace_is_marked(&self, name: &str, mark: &str) -> bool {
        self.namespace_carries(name, mark).unwrap_or(false)
    }

    /// As [`Loader::namespace_is_marked`], with the error that kept it from telling.
    pub(super) fn namespace_carries(&self, name: &str, mark: &str) -> Result<bool> {
        if !nsfs::exists(name) {
            return Ok(false);
        }
        let inside = self.netlink().namespace(name)?;
        for l in ["lo", "eth0"] {
            if inside.link(l)?.and_then(|l| l.alias).as_deref() == Some(mark) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The kind, name and link name of the state's network or container whose mark `owner` a
/// link of another name carries: renamed by hand, not left by a killed command.
pub(super) fn renamed<'a>(
    state: &'a State,
    owner: &'a Owner,
) -> Option<(&'static str, &'a String, &'a String)> {
    match owner {
        Owner::Container(name) => state.container(name).map(|c| ("container", name, &c.veth)),
        Owner::Network(name) => state.network(name).map(|n| ("network", name, &n.bridge)),
    }
}

/// After what a command created is undone (an interrupted one's, or a failed `apply`'s): IPv4
/// forwarding goes off again if it was off when the command began (`was_off`: a `network
/// create` turns it on) and no network is left that needs it.
pub(super) fn restore_ip_forward(
    state: &State,
    was_off: bool,
    out: &mut Vec<Change>,
) -> Result<()> {
    if was_off && state.networks.is_empty() && super::networks::set_ip_forward(false)? {
        out.push(Change::IpForwardRestored);
    }
    Ok(())
}

/// Completing what an interrupted command left.
impl Step<'_> {
    fn converge(&mut self, locked: &mut Locked, intent: &Intent) -> Result<()> {
        if intent.remove.contains(&Object::Everything) {
            let pending: Vec<Object> = intent
                .create
                .iter()
                .chain(&intent.remove)
                .filter(|o| **o != Object::Everything)
                .cloned()
                .collect();
            self.loader
                .remove_everything(self.nl, locked, &pending, self.out)?;
            return restore_ip_forward(&locked.state, intent.ip_forward_was_off, self.out);
        }
        for o in &intent.remove {
            self.finish_removal(&mut locked.state, o)?;
        }
        for o in intent.create.iter().rev() {
            self.undo_creation(&mut locked.state, o)?;
        }
        restore_ip_forward(&locked.state, intent.ip_forward_was_off, self.out)?;
        Ok(())
    }

    /// Removes `o` for good: from the kernel and the state if the state still has it, else
    /// whatever of it the kernel still has.
    fn finish_removal(&mut self, state: &mut State, o: &Object) -> Result<()> {
        match o {
            Object::Network(n) => {
                let known = state.network(&n.name).cloned();
                // Its containers first, as `network rm` requires.
                let on_it: Vec<_> = state.containers_of(&n.name).cloned().collect();
                for c in &on_it {
                    self.remove_container_and_publications(state, c)?;
                }
                if let Some(cur) = known {
                    return self.remove_network(state, &cur);
                }
            }
            Object::Container(c) | Object::DockerEndpoint { container: c, .. } => {
                if let Some(cur) = state.container(&c.name).cloned() {
                    return self.remove_container_and_publications(state, &cur);
                }
            }
            Object::Publication(p) => {
                if state.publication(&p.network, &p.spec).is_some() {
                    return self.loader.remove_publication(state, p, self.out);
                }
            }
            Object::Settings | Object::Everything => {}
        }
        self.remove_unknown(state, o)
    }

    /// Removes again what an interrupted command created of `o`, unless the state has it
    /// (the command saved it before it died).
    fn undo_creation(&mut self, state: &mut State, o: &Object) -> Result<()> {
        let saved = match o {
            Object::Network(n) => state
                .network(&n.name)
                .is_some_and(|cur| cur.bridge == n.bridge),
            Object::Container(c) | Object::DockerEndpoint { container: c, .. } => {
                state.container(&c.name).is_some()
            }
            Object::Publication(p) => state.publication(&p.network, &p.spec).is_some(),
            Object::Settings => {
                // The state's settings, back in the dataplane and the fallbacks' rules.
                let settings = super::validate::dataplane(&state.dataplane)?;
                if let Some(mut dp) = Dataplane::open_existing(&self.loader.host)? {
                    dp.configure(&settings.config)?;
                }
                crate::backend::sync(state, state)?;
                self.out.push(Change::SettingsRestored);
                true
            }
            Object::Everything => true,
        };
        if saved {
            return Ok(());
        }
        self.remove_unknown(state, o)
    }

    /// Removes what the kernel has of `o`, which the state does not have.
    fn remove_unknown(&mut self, state: &mut State, o: &Object) -> Result<()> {
        match o {
            Object::Network(n) => self.remove_unknown_network(state, n),
            Object::Container(c) => self.loader.remove_container(self.nl, state, c, self.out),
            Object::DockerEndpoint {
                container,
                endpoint,
            } => {
                // The state with its record, for the removal to leave Docker's namespace be.
                let mut with = state.clone();
                with.docker.endpoints.push(endpoint.clone());
                self.loader
                    .remove_container(self.nl, &with, container, self.out)
            }
            Object::Publication(p) => {
                // The state with it, for the removal to find it.
                let mut with = state.clone();
                with.publications.push(p.clone());
                self.loader.remove_publication(&mut with, p, self.out)
            }
            Object::Settings | Object::Everything => Ok(()),
        }
    }

    /// Removes what the kernel has of network `n`, which the state does not have.
    fn remove_unknown_network(&mut self, state: &State, n: &Network) -> Result<()> {
        let host = &self.loader.host;
        // The dataplane it may have created half-way (some maps pinned) cannot be opened:
        // with no other network on it, it goes whole.
        if n.backend == Backend::Ebpf
            && !state.networks.iter().any(|m| m.backend == Backend::Ebpf)
            && Dataplane::remove(host)?
        {
            self.out.push(Change::DataplaneRemoved {
                why: DataplaneGone::NoNetwork,
            });
        }
        // The state with it, for the removal to find it (the state itself does not change).
        let mut with = state.clone();
        with.networks.push(n.clone());
        self.remove_network(&mut with, n)
    }
}
