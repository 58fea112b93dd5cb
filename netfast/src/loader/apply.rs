//! `netfast apply`: the plan's steps checked together before the first one runs, run one
//! intent at a time, and what a failed apply created removed again.

use super::{
    Loader, caps,
    change::Change,
    intent::{Intent, Object},
    model::{Backend, State},
    netlink::Nl,
    ops::ct_max_fixed,
    plan::{Action, ApplyFile, plan},
    state::Locked,
    validate,
};
use crate::{
    dataplane::Dataplane,
    error::{Error, Result},
};

/// What an apply's earlier steps will have done to the kernel when a later step runs, as far
/// as the later step's checks need to know; empty for a command on its own.
#[derive(Default)]
pub(super) struct Ahead {
    /// Links deleted, and their indexes (whose addresses and routes go with them).
    pub(super) gone_links: Vec<String>,
    pub(super) gone_ifindexes: Vec<u32>,
    /// Namespaces deleted.
    pub(super) gone_namespaces: Vec<String>,
    /// Links created (bridges).
    pub(super) made_links: Vec<String>,
    /// Whether the eBPF dataplane exists.
    pub(super) dataplane: bool,
}

/// What a planned removal removes, `found` in the state, recorded as what `command` is
/// removing.
fn begin_removing<T: Clone>(
    locked: &mut Locked,
    command: String,
    found: Option<T>,
    object: impl FnOnce(T) -> Object,
) -> Result<T> {
    let found = found.expect("planned from the state");
    locked.begin(Intent::removing(command, object(found.clone())))?;
    Ok(found)
}

impl Loader {
    /// Converges the host to `file`, printing each change; nothing when it already matches.
    /// Every step is checked before the first one changes anything, each against the state
    /// and the kernel as the earlier steps leave them ([`Loader::preflight`]); a step that
    /// still fails (the kernel refusing something) undoes what this apply created, and the
    /// error says what was changed, undone and left as it was.
    pub fn apply(&self, file: &ApplyFile) -> Result<Vec<Change>> {
        caps::require("apply", true)?;
        let nl = self.nl()?;
        let (mut locked, mut out) = self.lock(&nl)?;
        let actions = plan(file, &locked.state)?;
        self.preflight(&nl, &locked.state, &actions)?;
        // A network it creates turns forwarding on: undone, it goes off again.
        let ip_forward_was_off = !super::networks::ip_forward_on()?;
        let mut done: Vec<Action> = Vec::new();
        for (i, action) in actions.iter().enumerate() {
            out.push(Change::Step {
                action: action.clone(),
            });
            // Each step records its own intent, and the state is saved after it: a crash
            // leaves the steps before it done, the one it was in completed or undone by the
            // next command, and the rest not begun.
            let command = format!("apply (step `{action}`)");
            let step = match action {
                Action::Unpublish { network, spec } => {
                    let found = locked.state.publication(network, spec).cloned();
                    let p = begin_removing(&mut locked, command, found, Object::Publication)?;
                    self.remove_publication(&mut locked.state, &p, &mut Vec::new())
                }
                Action::Publish(d) => self
                    .check_publication(&nl, &locked.state, &d.network, &d.spec, &d.allow)
                    .and_then(|p| self.publish_checked(&nl, &mut locked, p, &mut Vec::new())),
                Action::RemoveContainer(name) => {
                    let found = locked.state.container(name).cloned();
                    let c = begin_removing(&mut locked, command, found, Object::Container)?;
                    self.remove_container(&nl, &locked.state, &c, &mut Vec::new())
                        .map(|()| locked.state.containers.retain(|x| &x.name != name))
                }
                Action::RemoveNetwork(name) => {
                    let found = locked.state.network(name).cloned();
                    let n = begin_removing(&mut locked, command, found, Object::Network)?;
                    self.step(&nl, &mut Vec::new())
                        .remove_network(&mut locked.state, &n)
                }
                Action::Configure(cfg) => {
                    locked.begin(Intent::creating(command, Object::Settings))?;
                    self.configure_locked(&mut locked.state, cfg)
                }
                Action::CreateNetwork(spec) => self
                    .step(&nl, &mut Vec::new())
                    .create_network(&mut locked, spec),
                Action::CreateContainer(spec) => self
                    .step(&nl, &mut Vec::new())
                    .create_container(&mut locked, spec),
            };
            if let Err(e) = step {
                locked.finish()?;
                let (undone, not_undone) = self.undo_creations(&nl, &mut locked, &done);
                locked.save()?;
                super::recover::restore_ip_forward(
                    &locked.state,
                    ip_forward_was_off,
                    &mut Vec::new(),
                )?;
                return Err(Error::Settings(apply_failure(
                    action,
                    &e,
                    &done,
                    &undone,
                    &not_undone,
                    &actions[i + 1..],
                )));
            }
            done.push(action.clone());
            locked.save()?;
            locked.finish()?;
        }
        if actions.is_empty() {
            out.push(Change::NoChanges);
        }
        Ok(out)
    }

    /// Checks every step of an apply before the first one runs, each against the state and
    /// the kernel as the earlier steps will leave them: what `network create`, `container
    /// create`, `publish` and `config` check before they change anything. A file that would
    /// fail at a later step changes nothing.
    fn preflight(&self, nl: &Nl<'_>, state: &State, actions: &[Action]) -> Result<()> {
        let mut s = state.clone();
        let mut ahead = Ahead {
            dataplane: Dataplane::exists(&self.host)?,
            ..Ahead::default()
        };
        for action in actions {
            let checked = (|| -> Result<()> {
                match action {
                    Action::Unpublish { .. } => {}
                    Action::RemoveContainer(name) => {
                        if let Some(c) = s.container(name) {
                            ahead.gone_links.push(c.veth.clone());
                            ahead.gone_namespaces.push(c.name.clone());
                        }
                    }
                    Action::RemoveNetwork(name) => {
                        if let Some(n) = s.network(name).filter(|n| !n.adopted) {
                            ahead.gone_links.push(n.bridge.clone());
                            ahead.made_links.retain(|l| *l != n.bridge);
                            if let Some(link) = nl.link(&n.bridge)? {
                                ahead.gone_ifindexes.push(link.index);
                            }
                        }
                        // The dataplane goes with the last network it serves.
                        if !s
                            .networks
                            .iter()
                            .any(|n| &n.name != name && n.backend == Backend::Ebpf)
                        {
                            ahead.dataplane = false;
                        }
                    }
                    Action::Configure(cfg) => {
                        validate::dataplane(cfg)?;
                        if ahead.dataplane {
                            ct_max_fixed(&s.dataplane, cfg)?;
                        }
                    }
                    Action::CreateNetwork(spec) => {
                        let (network, _) =
                            self.prepare_network(nl, &s, spec, &ahead, &mut Vec::new())?;
                        ahead.made_links.push(network.bridge.clone());
                        ahead.gone_links.retain(|l| *l != network.bridge);
                        ahead.dataplane |= network.backend == Backend::Ebpf;
                    }
                    Action::CreateContainer(spec) => {
                        self.prepare_container(nl, &s, spec, &ahead)?;
                    }
                    Action::Publish(d) => {
                        self.check_publication(nl, &s, &d.network, &d.spec, &d.allow)?;
                    }
                }
                Ok(())
            })();
            checked.map_err(|e| {
                Error::Settings(format!(
                    "apply refused at `{action}`: {}; nothing was changed",
                    crate::error::report(&e)
                ))
            })?;
            s = super::plan::simulate(std::slice::from_ref(action), &s)?;
        }
        Ok(())
    }

    /// Removes what the steps `done` of a failed apply created (newest first): its
    /// publications, containers and networks. Removals and settings stay as they are. Returns
    /// the steps undone, and those that could not be, with why.
    fn undo_creations(
        &self,
        nl: &Nl<'_>,
        locked: &mut Locked,
        done: &[Action],
    ) -> (Vec<Action>, Vec<(Action, String)>) {
        let (mut undone, mut failed) = (Vec::new(), Vec::new());
        for action in done.iter().rev() {
            // Each undo is a removal that a crash leaves for the next command to finish.
            let what = match action {
                Action::Publish(d) => d
                    .spec
                    .parse::<super::publish::PublishSpec>()
                    .ok()
                    .and_then(|s| {
                        locked
                            .state
                            .publication(&d.network, &s.to_string())
                            .cloned()
                    })
                    .map(Object::Publication),
                Action::CreateContainer(spec) => locked
                    .state
                    .container(&spec.name)
                    .cloned()
                    .map(Object::Container),
                Action::CreateNetwork(spec) => locked
                    .state
                    .network(&spec.name)
                    .cloned()
                    .map(Object::Network),
                // Removals and settings stay.
                _ => continue,
            };
            if let Some(o) = &what
                && let Err(e) = locked.begin(Intent::removing(
                    format!("apply (undoing `{action}`)"),
                    o.clone(),
                ))
            {
                failed.push((action.clone(), crate::error::report(&e)));
                continue;
            }
            let state = &mut locked.state;
            // Nothing of the step in the state: nothing to undo.
            let result = match what {
                Some(Object::Publication(p)) => self.remove_publication(state, &p, &mut Vec::new()),
                Some(Object::Container(c)) => self
                    .remove_container(nl, state, &c, &mut Vec::new())
                    .map(|()| state.containers.retain(|x| x.name != c.name)),
                Some(Object::Network(n)) => {
                    self.step(nl, &mut Vec::new()).remove_network(state, &n)
                }
                _ => Ok(()),
            };
            let result = result
                .and_then(|()| locked.save())
                .and_then(|()| locked.finish());
            match result {
                Ok(()) => undone.push(action.clone()),
                Err(e) => {
                    let _ = locked.finish();
                    failed.push((action.clone(), crate::error::report(&e)));
                }
            }
        }
        (undone, failed)
    }
}

/// What a failed apply says: the step and why, then exactly what it changed and kept, what it
/// undid, what it could not undo, and what it never did.
fn apply_failure(
    at: &Action,
    e: &Error,
    done: &[Action],
    undone: &[Action],
    not_undone: &[(Action, String)],
    not_done: &[Action],
) -> String {
    let list = |a: &[Action]| {
        a.iter()
            .map(|a| format!("`{a}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut msg = format!("apply failed at `{at}`: {}", crate::error::report(e));
    let kept: Vec<Action> = done
        .iter()
        .filter(|a| !undone.contains(a) && !not_undone.iter().any(|(b, _)| b == *a))
        .cloned()
        .collect();
    if kept.is_empty() && not_undone.is_empty() {
        msg.push_str("; the host is as it was before");
        if !undone.is_empty() {
            msg.push_str(&format!(" (undone: {})", list(undone)));
        }
    } else {
        if !kept.is_empty() {
            msg.push_str(&format!(
                "; done and kept (removals and settings are not undone): {}",
                list(&kept)
            ));
        }
        if !undone.is_empty() {
            msg.push_str(&format!("; created and removed again: {}", list(undone)));
        }
        for (a, why) in not_undone {
            msg.push_str(&format!("; `{a}` could not be undone ({why}): it stays"));
        }
    }
    if !not_done.is_empty() {
        msg.push_str(&format!("; not done: {}", list(not_done)));
    }
    msg.push_str("; fix the cause and apply again");
    msg
}
