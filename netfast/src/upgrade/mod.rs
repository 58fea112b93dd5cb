//! `netfast upgrade`: replace the running programs with this build's, in place, keeping every
//! map and flow; and the check every other command makes first.
//!
//! The pinned map `NETFAST_META` says which layout the maps have and which build of the
//! programs runs ([`Meta`]). A build whose object differs may still read and write maps of
//! the same layout, but never attaches its own programs beside the running ones; a build
//! with another layout uses nothing until `netfast upgrade` has moved the dataplane.
//!
//! An upgrade, holding the host's lock:
//! 1. plans every map (kept, migrated, created, removed) and refuses before any change when
//!    it cannot carry one over; records in `META` the build it installs;
//! 2. makes each migrated map anew beside the old one (`NAME-next`) and copies the entries
//!    over, converted ([`migrate`]);
//! 3. loads this build's programs on the kept maps and the new ones, and points every link
//!    (TCX on the bridges and uplinks, the cgroup socket hooks) at them with
//!    BPF_LINK_UPDATE: atomic per link, no packet meets no program;
//! 4. commits: `META` names this build;
//! 5. copies again what the old programs wrote between the first copy and their replacement;
//! 6. moves the new maps' pins over the old ones.
//!
//! Killed anywhere, the next `netfast upgrade` finishes the job: before the commit it starts
//! again from the old maps (reusing the new ones it made), after it only the pins are left
//! to move. Until then every other command refuses and says so.

mod copy;
mod meta;
pub mod migrate;

use std::{
    collections::HashMap,
    fs,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{MapData, MapInfo},
    programs::CgroupSockAddr,
};
use copy::Copy;
pub use meta::{
    Compat, NEXT_SUFFIX, VERSION, check, describe, object_id, other_build_warning, read_meta,
    this_build, write_meta,
};
use meta::{describe_running, describe_this, pending_pins};
use netfast_common::{Hook, maps as names, upgrade::Meta};
use serde::Serialize;

use crate::{
    EBPF_OBJECT, bpf_sys,
    dataplane::{self, MapLayout, SOCK_PROGRAMS},
    error::{Error, Result},
    host::Host,
};

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// A link netfast pinned, and the program it must run.
struct PinnedLink {
    path: PathBuf,
    program: &'static str,
    program_id: u32,
}

/// Every link pinned in `dir`: TCX links `link-IFINDEX-HOOK`, cgroup links `cgroup-NAME`.
fn pinned_links(dir: &Path) -> Result<Vec<PinnedLink>> {
    let entries = fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))?;
    let mut out = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        let program = if let Some(rest) = file.strip_prefix("link-") {
            let Some((_, hook)) = rest.split_once('-') else {
                continue;
            };
            Hook::ALL.iter().map(|h| h.name()).find(|n| *n == hook)
        } else if let Some(name) = file.strip_prefix("cgroup-") {
            SOCK_PROGRAMS.iter().copied().find(|n| *n == name)
        } else {
            continue;
        };
        let path = e.path();
        let Some(program) = program else {
            return Err(Error::Settings(format!(
                "{} is a link to a program this netfast does not have: it cannot replace it",
                path.display()
            )));
        };
        let fd = bpf_sys::obj_get(&path).map_err(io(format!("opening {}", path.display())))?;
        let (_, program_id) =
            bpf_sys::link_ids(fd.as_fd()).map_err(io(format!("reading {}", path.display())))?;
        out.push(PinnedLink {
            path,
            program,
            program_id,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The ids of the programs that `host`'s pinned links run, each once: for what reads what
/// the running programs write (`netfast monitor --log`).
pub fn running_programs(host: &Host) -> Result<Vec<u32>> {
    let dir = host.pin_dir()?;
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut ids: Vec<u32> = pinned_links(&dir)?
        .into_iter()
        .map(|l| l.program_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The kernel's map names are cut at 15 bytes.
fn kernel_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}

/// The ids of the maps the running programs (`links`) use, by our map name. Asks for each
/// program by id (never walks every program of the machine: what it does must not depend
/// on what else runs).
fn running_maps(links: &[PinnedLink]) -> Result<HashMap<&'static str, Vec<u32>>> {
    let mut out: HashMap<&'static str, Vec<u32>> = HashMap::new();
    let mut seen = Vec::new();
    for link in links {
        if seen.contains(&link.program_id) {
            continue;
        }
        seen.push(link.program_id);
        let fd = bpf_sys::prog_get_fd_by_id(link.program_id).map_err(io(format!(
            "opening the program of {}",
            link.path.display()
        )))?;
        let ids = bpf_sys::prog_map_ids(fd.as_fd()).map_err(io(format!(
            "reading the program of {}",
            link.path.display()
        )))?;
        for map_id in ids {
            let Ok(map) = MapInfo::from_id(map_id) else {
                continue;
            };
            let Some(kname) = map.name_as_str() else {
                continue;
            };
            if let Some(name) = names::ALL.iter().find(|n| kernel_name(n) == kname) {
                let v = out.entry(name).or_default();
                if !v.contains(&map_id) {
                    v.push(map_id);
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn layout_of(info: &MapInfo) -> MapLayout {
    MapLayout {
        map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    }
}

/// What an upgrade does with one map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapPlan {
    /// Same layout: the new programs use the pinned map as it is.
    Keep,
    /// Another layout: its entries are copied into a new map, converted.
    Migrate,
    /// The running dataplane has no such map: the new programs start with an empty one.
    Create,
    /// This build has no such map: it is unpinned at the end.
    Remove,
}

/// One map's part in an upgrade.
#[derive(Clone, Debug, Serialize)]
pub struct MapMove {
    pub map: String,
    pub plan: MapPlan,
    /// Entries carried over (migrated maps).
    pub entries: u64,
}

/// What `netfast upgrade` did (or, with `--check`, would do).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The running build before.
    pub from: String,
    /// The build that runs after.
    pub to: String,
    /// Links whose program was replaced.
    pub links: usize,
    pub maps: Vec<MapMove>,
    /// Nothing to do: this build already runs.
    pub current: bool,
    /// Only planned (`--check`).
    pub checked_only: bool,
}

/// Replaces the programs of `host`'s dataplane with this build's and carries every map over
/// (see the module comment). The caller holds the host's lock exclusively.
pub fn upgrade(host: &Host, check_only: bool) -> Result<Report> {
    let dir = host.pin_dir()?;
    if !dir.join(names::CONNTRACK).exists() {
        return Err(Error::Settings(format!(
            "there is no eBPF dataplane in {} to upgrade (it starts with the first network \
             on the eBPF backend, from this netfast)",
            host.describe()
        )));
    }
    let Some(meta) = read_meta(&dir)? else {
        // The same refusal every command gives.
        check(&dir, host)?;
        unreachable!("check refuses a dataplane without META");
    };
    let this = this_build();
    if meta.layout > this.layout {
        check(&dir, host)?;
    }
    if meta.next_layout != 0 && (meta.next_layout, meta.next_object) != (this.layout, this.object) {
        check(&dir, host)?;
    }
    let links = pinned_links(&dir)?;
    let running = running_maps(&links)?;
    let from = describe_running(&meta);
    let to = describe_this();
    if meta.next_layout == 0 && (meta.layout, meta.object) == (this.layout, this.object) {
        // This build runs; an upgrade that was killed after its commit may have maps to move.
        let pending = pending_pins(&dir)?;
        if !check_only {
            finish_pins(&dir, &pending, &running)?;
        }
        return Ok(Report {
            from,
            to,
            links: 0,
            maps: pending
                .into_iter()
                .map(|map| MapMove {
                    map,
                    plan: MapPlan::Migrate,
                    entries: 0,
                })
                .collect(),
            current: true,
            checked_only: check_only,
        });
    }

    // 1. The plan, all checked before the first change.
    let ct_max_flows = MapInfo::from_pin(dir.join(names::CONNTRACK))
        .map_err(|e| Error::map(names::CONNTRACK, e))?
        .max_entries()
        / 2;
    let ours = dataplane::expected_layout(ct_max_flows)?;
    let mut plan: Vec<(&'static str, MapPlan, Vec<migrate::Convert>)> = Vec::new();
    for (name, want) in &ours {
        let path = dir.join(name);
        if !path.exists() {
            plan.push((name, MapPlan::Create, Vec::new()));
            continue;
        }
        let found = layout_of(&MapInfo::from_pin(&path).map_err(|e| Error::map(name, e))?);
        if let Some(said) = migrate::recorded(name, meta.layout)
            && said != (found.map_type, found.key_size, found.value_size)
        {
            return Err(Error::Settings(format!(
                "the pinned map {} has another layout ({found}) than layout {} says it \
                     has: it was not made by a netfast of that layout; `netfast down` removes \
                     the dataplane (its flows are lost)",
                path.display(),
                meta.layout
            )));
        }
        let chain = migrate::chain(name, meta.layout, this.layout);
        if !chain.is_empty() {
            if found.max_entries != want.max_entries {
                return Err(Error::Settings(format!(
                    "the pinned map {} holds {} entries where this netfast would make {}: \
                     cannot migrate it",
                    path.display(),
                    found.max_entries,
                    want.max_entries
                )));
            }
            plan.push((name, MapPlan::Migrate, chain));
        } else if found == *want {
            plan.push((name, MapPlan::Keep, Vec::new()));
        } else {
            return Err(Error::Settings(format!(
                "the pinned map {} has another layout ({found}) than this netfast's ({want}), \
                 and no migration from layout {} to {} covers it: this build cannot upgrade \
                 the dataplane in place (a defect of this build: please report it)",
                path.display(),
                meta.layout,
                this.layout
            )));
        }
    }
    for entry in fs::read_dir(&dir)
        .map_err(io(format!("reading {}", dir.display())))?
        .flatten()
    {
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if file.starts_with("NETFAST_")
            && !file.ends_with(NEXT_SUFFIX)
            && !ours.iter().any(|(n, _)| *n == file)
        {
            plan.push((leak(file), MapPlan::Remove, Vec::new()));
        }
    }
    let mut report = Report {
        from,
        to,
        links: links.len(),
        maps: plan
            .iter()
            .map(|(name, p, _)| MapMove {
                map: (*name).to_owned(),
                plan: p.clone(),
                entries: 0,
            })
            .collect(),
        current: false,
        checked_only: check_only,
    };
    if check_only {
        return Ok(report);
    }

    // Under way: every other command now refuses until this finishes.
    write_meta(
        &dir,
        &Meta {
            next_layout: this.layout,
            next_object: this.object,
            next_version: this.version,
            ..meta
        },
    )?;

    // Held until the end: a program no link runs any more would be gone, and a failed
    // upgrade puts the old ones back.
    let old_programs = programs_of(&links)?;
    let (ebpf, mut copies) = match switch(&dir, &plan, &ours, ct_max_flows, &links) {
        Ok(done) => done,
        Err(e) => {
            if let Err(undo) = rollback(&dir, &meta, &links, &old_programs) {
                return Err(Error::Settings(format!(
                    "{}; and putting the old programs back failed too: {}: run `netfast \
                         upgrade` again to finish it",
                    crate::error::report(&e),
                    crate::error::report(&undo)
                )));
            }
            return Err(e);
        }
    };

    // 5. The commit.
    write_meta(&dir, &this)?;

    // 6. What the old programs wrote since the first copy; then the pins.
    for (name, old, new, copy) in &mut copies {
        let name: &str = name;
        copy.pass(old, new, true)?;
        if let Some(m) = report.maps.iter_mut().find(|m| m.map == name) {
            m.entries = copy.copied;
        }
    }
    drop(copies);
    let migrated: Vec<String> = plan
        .iter()
        .filter(|(_, p, _)| *p == MapPlan::Migrate)
        .map(|(n, _, _)| (*n).to_owned())
        .collect();
    finish_pins(&dir, &migrated, &running_maps(&pinned_links(&dir)?)?)?;
    for (name, p, _) in &plan {
        if *p == MapPlan::Remove {
            let path = dir.join(name);
            fs::remove_file(&path).map_err(io(format!("unpinning {}", path.display())))?;
        }
    }
    // The new programs live on in their links, the maps in their pins.
    drop((ebpf, old_programs));
    Ok(report)
}

type Plan = Vec<(&'static str, MapPlan, Vec<migrate::Convert>)>;
type Copies = Vec<(&'static str, MapData, MapData, Copy)>;

/// Steps 2 to 4: the new maps, this build's programs on them, the first copy, every link
/// switched. Returns the loaded object (its programs must live until the links hold them)
/// and the copies for the second pass.
fn switch(
    dir: &Path,
    plan: &Plan,
    ours: &[(&'static str, MapLayout)],
    ct_max_flows: u32,
    links: &[PinnedLink],
) -> Result<(aya::Ebpf, Copies)> {
    // A `-next` left by a killed attempt of this same upgrade is reused: the programs it
    // already switched may be writing to it.
    let mut loader = EbpfLoader::new();
    dataplane::sized(&mut loader, ct_max_flows);
    for (name, p, _) in plan {
        let path = match p {
            MapPlan::Migrate => {
                let next = dir.join(format!("{name}{NEXT_SUFFIX}"));
                if next.exists() {
                    let found =
                        layout_of(&MapInfo::from_pin(&next).map_err(|e| Error::map(name, e))?);
                    let want = ours.iter().find(|(n, _)| n == name).map(|(_, l)| *l);
                    if Some(found) != want {
                        fs::remove_file(&next)
                            .map_err(io(format!("removing the stale {}", next.display())))?;
                    }
                }
                next
            }
            MapPlan::Remove => continue,
            MapPlan::Keep | MapPlan::Create => dir.join(name),
        };
        loader.map_pin_path(name, path);
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    for hook in Hook::ALL {
        let program = dataplane::classifier(&mut ebpf, hook)?;
        dataplane::load_program(hook.name(), || program.load())?;
    }
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|e| Error::program(name, e))?;
        dataplane::load_program(name, || program.load())?;
    }

    // The first copy, while the old programs still run.
    let mut copies = Vec::new();
    for (name, p, chain) in plan {
        if *p != MapPlan::Migrate {
            continue;
        }
        let old = MapData::from_pin(dir.join(name)).map_err(|e| Error::map(name, e))?;
        let new = MapData::from_pin(dir.join(format!("{name}{NEXT_SUFFIX}")))
            .map_err(|e| Error::map(name, e))?;
        let mut copy = Copy::new(name, &old, &new, chain.clone())?;
        copy.pass(&old, &new, false)?;
        copies.push((*name, old, new, copy));
    }

    // Every link to the new programs.
    for link in links {
        let fd =
            bpf_sys::obj_get(&link.path).map_err(io(format!("opening {}", link.path.display())))?;
        let program = ebpf
            .program(link.program)
            .ok_or(Error::MissingProgram(link.program))?
            .fd()
            .map_err(|e| Error::program(link.program, e))?;
        bpf_sys::link_update(fd.as_fd(), program.as_fd()).map_err(io(format!(
            "replacing the program of {} (BPF_LINK_UPDATE)",
            link.path.display()
        )))?;
    }
    Ok((ebpf, copies))
}

/// The programs `links` run now, by id, held open.
fn programs_of(links: &[PinnedLink]) -> Result<HashMap<u32, std::os::fd::OwnedFd>> {
    let mut out = HashMap::new();
    for link in links {
        if let std::collections::hash_map::Entry::Vacant(e) = out.entry(link.program_id) {
            let fd = bpf_sys::prog_get_fd_by_id(link.program_id).map_err(io(format!(
                "opening the program of {}",
                link.path.display()
            )))?;
            e.insert(fd);
        }
    }
    Ok(out)
}

/// A failed upgrade (not a killed one): every link back to the program it ran, `META` as
/// it was, the new maps nothing uses unpinned.
fn rollback(
    dir: &Path,
    meta: &Meta,
    links: &[PinnedLink],
    old: &HashMap<u32, std::os::fd::OwnedFd>,
) -> Result<()> {
    for link in links {
        let fd =
            bpf_sys::obj_get(&link.path).map_err(io(format!("opening {}", link.path.display())))?;
        let (_, now) = bpf_sys::link_ids(fd.as_fd())
            .map_err(io(format!("reading {}", link.path.display())))?;
        if now == link.program_id {
            continue;
        }
        let program = old.get(&link.program_id).ok_or_else(|| {
            Error::Settings(format!(
                "the program {} ran on {} is gone",
                link.program_id,
                link.path.display()
            ))
        })?;
        bpf_sys::link_update(fd.as_fd(), program.as_fd()).map_err(io(format!(
            "putting the old program back on {}",
            link.path.display()
        )))?;
    }
    write_meta(dir, meta)?;
    let pending = pending_pins(dir)?;
    let running = running_maps(links)?;
    for name in pending {
        let next = dir.join(format!("{name}{NEXT_SUFFIX}"));
        let id = MapInfo::from_pin(&next).map(|i| i.id()).ok();
        let used = running
            .get(name.as_str())
            .is_some_and(|ids| id.is_some_and(|id| ids.contains(&id)));
        if !used {
            fs::remove_file(&next).map_err(io(format!("removing {}", next.display())))?;
        }
    }
    Ok(())
}

/// Map names read from the pin directory live as long as the command.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// Moves each `NAME-next` in `pending` over `NAME` when the running programs use it, and
/// removes it when they do not (what a killed attempt left).
fn finish_pins(
    dir: &Path,
    pending: &[String],
    running: &HashMap<&'static str, Vec<u32>>,
) -> Result<()> {
    for name in pending {
        let next = dir.join(format!("{name}{NEXT_SUFFIX}"));
        let id = MapInfo::from_pin(&next)
            .map_err(|e| Error::Io {
                context: format!("opening {}: {e}", next.display()),
                source: std::io::Error::other("map"),
            })?
            .id();
        let used = running
            .iter()
            .any(|(n, ids)| *n == name.as_str() && ids.contains(&id));
        if used {
            fs::rename(&next, dir.join(name))
                .map_err(io(format!("moving {} into place", next.display())))?;
        } else {
            fs::remove_file(&next).map_err(io(format!("removing {}", next.display())))?;
        }
    }
    Ok(())
}
