//! The frame of a command that changes the host ([`Loader::changing`], the [`Step`] it runs
//! in); its undo machinery: what it created so far, removed again (newest first) when a
//! later step fails; and how a step recorded as an intent begins and ends.

use super::{
    Loader, caps,
    change::Change,
    intent::{Intent, Object},
    model::{Backend, Network, State},
    netlink::{Link, Nl},
    networks::uninstall,
    nsfs,
    plumb::Made,
    state::Locked,
};
use crate::{
    dataplane::Dataplane,
    error::{Error, Result},
    host::Host,
};

/// What a step that changes the host works with: the loader, the host's netlink handle, and
/// the list of what the command changed.
pub(super) struct Step<'a> {
    pub(super) loader: &'a Loader,
    pub(super) nl: &'a Nl<'a>,
    pub(super) out: &'a mut Vec<Change>,
}

impl Loader {
    pub(super) fn step<'a>(&'a self, nl: &'a Nl<'a>, out: &'a mut Vec<Change>) -> Step<'a> {
        Step {
            loader: self,
            nl,
            out,
        }
    }

    /// Runs `command`, which changes the host as one step recorded as an intent: checks that
    /// it can ([`caps::require`], with `mounts`), takes the exclusive lock ([`Loader::lock`]),
    /// runs `run`, concludes ([`conclude`]) and returns what it changed.
    pub(super) fn changing(
        &self,
        command: &str,
        mounts: bool,
        run: impl FnOnce(&mut Step<'_>, &mut Locked) -> Result<()>,
    ) -> Result<Vec<Change>> {
        caps::require(command, mounts)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let done = run(&mut self.step(&nl, &mut out), &mut locked);
        conclude(&mut locked, done)?;
        Ok(out)
    }
}

/// Something a command created, to remove again if it fails later.
pub(super) enum Created {
    Link(Link),
    /// A port of an adopted bridge whose hairpin mode was turned on.
    Hairpin(Link),
    Namespace(String),
    Network {
        network: Network,
        fresh_dataplane: bool,
    },
    /// IPv4 forwarding, turned on in the host by this command (it was off).
    IpForward,
}

impl From<Made> for Created {
    fn from(m: Made) -> Self {
        match m {
            Made::Link(l) => Created::Link(l),
            Made::Namespace(n) => Created::Namespace(n),
        }
    }
}

/// What a command created so far; [`Undo::rollback`] removes it, newest first.
#[derive(Default)]
pub(super) struct Undo(Vec<Created>);

impl Undo {
    pub(super) fn push(&mut self, c: Created) {
        self.0.push(c);
    }

    fn rollback(self, host: &Host, nl: &Nl<'_>, state: &State) {
        for c in self.0.into_iter().rev() {
            let done = match c {
                Created::Link(link) => nl.delete_link(&link),
                Created::Hairpin(port) => nl.set_hairpin(&port, false),
                Created::IpForward => super::networks::set_ip_forward(false).map(|_| ()),
                Created::Namespace(name) => nsfs::delete(&name).map_err(|source| Error::Io {
                    context: format!("deleting namespace {name}"),
                    source,
                }),
                Created::Network { network, .. } if network.backend != Backend::Ebpf => {
                    let mut with = state.clone();
                    with.networks.push(network);
                    crate::backend::sync(&with, state)
                }
                Created::Network {
                    network,
                    fresh_dataplane,
                } => uninstall(host, nl, state, &network).and_then(|()| {
                    let mut with = state.clone();
                    with.networks.push(network);
                    crate::backend::sync(&with, state)?;
                    if fresh_dataplane {
                        Dataplane::remove(host).map(|_| ())
                    } else {
                        Ok(())
                    }
                }),
            };
            if let Err(e) = done {
                log::error!("rolling back: {}", crate::error::report(&e));
            }
        }
    }
}

/// Runs `f` and rolls back what it recorded in `undo` if it fails.
pub(super) fn transaction<T>(
    host: &Host,
    nl: &Nl<'_>,
    state: &State,
    f: impl FnOnce(&mut Undo) -> Result<T>,
) -> Result<T> {
    let mut undo = Undo::default();
    match f(&mut undo) {
        Ok(v) => Ok(v),
        Err(e) => {
            undo.rollback(host, nl, state);
            Err(e)
        }
    }
}

/// Ends a step begun with [`Locked::begin`]: saves the state when it succeeded, and forgets
/// the intent either way (a step that fails undoes itself or leaves what it could not do to
/// `network ls`'s drift).
pub(super) fn conclude(locked: &mut Locked, result: Result<()>) -> Result<()> {
    if result.is_ok() {
        locked.save()?;
    }
    locked.finish()?;
    result
}

/// Records that `command` is creating `object` and runs `build`, which removes what it made
/// if it fails (and then the intent goes). The caller adds what it made to the state, saves
/// it and finishes the intent.
pub(super) fn creating<T>(
    locked: &mut Locked,
    command: String,
    object: Object,
    build: impl FnOnce(&State) -> Result<T>,
) -> Result<T> {
    creating_all(locked, Intent::creating(command, object), build)
}

/// As [`creating`], for an intent that creates several objects.
pub(super) fn creating_all<T>(
    locked: &mut Locked,
    intent: Intent,
    build: impl FnOnce(&State) -> Result<T>,
) -> Result<T> {
    locked.begin(intent)?;
    let made = build(&locked.state);
    if made.is_err() {
        // It removed what it made.
        locked.finish()?;
    }
    made
}
