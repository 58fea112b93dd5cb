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

pub mod migrate;

use std::{
    collections::HashMap,
    fs,
    hash::{Hash as _, Hasher as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use aya::{
    EbpfLoader,
    maps::{MapData, MapInfo},
    programs::CgroupSockAddr,
};
use netfast_common::{
    Hook,
    maps::{self as names},
    upgrade::{LAYOUT_VERSION, Meta, version_field, version_text},
};
use serde::Serialize;

use crate::{
    EBPF_OBJECT, bpf_sys,
    dataplane::{self, MapLayout, SOCK_PROGRAMS},
    error::{Error, Result},
    host::Host,
};

/// The suffix of a map made by an upgrade, until it takes the old map's place (bpffs
/// refuses names with a dot).
pub const NEXT_SUFFIX: &str = "-next";

/// The netfast version this binary reports in `META`.
pub const VERSION: &str = concat!("netfast ", env!("CARGO_PKG_VERSION"));

/// Which build of the programs this binary carries: FNV-1a of the embedded object.
pub fn object_id() -> u64 {
    static ID: OnceLock<u64> = OnceLock::new();
    *ID.get_or_init(|| {
        EBPF_OBJECT.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        })
    })
}

/// This binary's [`Meta`].
pub fn this_build() -> Meta {
    Meta {
        layout: LAYOUT_VERSION,
        next_layout: 0,
        object: object_id(),
        next_object: 0,
        version: version_field(VERSION),
        next_version: [0; 32],
    }
}

/// "netfast 0.1.0 (layout 2, programs 1a2b3c4d)".
pub fn describe(layout: u32, object: u64, version: &[u8; 32]) -> String {
    format!(
        "{} (layout {layout}, programs {:08x})",
        version_text(version),
        object >> 32
    )
}

fn describe_running(m: &Meta) -> String {
    describe(m.layout, m.object, &m.version)
}

fn describe_next(m: &Meta) -> String {
    describe(m.next_layout, m.next_object, &m.next_version)
}

fn describe_this() -> String {
    describe_running(&this_build())
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// The dataplane's `META`, `None` when it has none (made before versions existed).
pub fn read_meta(dir: &Path) -> Result<Option<Meta>> {
    let path = dir.join(names::META);
    if !path.exists() {
        return Ok(None);
    }
    let fd = bpf_sys::obj_get(&path).map_err(io(format!("opening {}", path.display())))?;
    let mut value = [0u8; std::mem::size_of::<Meta>()];
    bpf_sys::map_lookup(fd.as_fd(), &0u32.to_ne_bytes(), &mut value)
        .map_err(io(format!("reading {}", path.display())))?;
    Ok(Some(bytemuck::pod_read_unaligned(&value)))
}

/// Writes the dataplane's `META`.
pub fn write_meta(dir: &Path, meta: &Meta) -> Result<()> {
    let path = dir.join(names::META);
    let fd = bpf_sys::obj_get(&path).map_err(io(format!("opening {}", path.display())))?;
    bpf_sys::map_update(
        fd.as_fd(),
        &0u32.to_ne_bytes(),
        bytemuck::bytes_of(meta),
        bpf_sys::ANY,
    )
    .map_err(io(format!("writing {}", path.display())))?;
    Ok(())
}

/// What this binary may do with a host's pinned dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compat {
    /// It runs this build's programs.
    Same,
    /// It runs another build's programs on maps of this build's layout: this binary may read
    /// and write the maps, but must not attach its own programs beside them. The text
    /// describes the running build.
    OtherBuild(String),
}

/// Whether this binary may use the dataplane pinned in `dir` (of `host`), and why not.
pub fn check(dir: &Path, host: &Host) -> Result<Compat> {
    let Some(meta) = read_meta(dir)? else {
        return Err(Error::Settings(format!(
            "the dataplane of {} was made by a netfast older than in-place upgrades (it has no \
             {} pin, {}): it cannot be upgraded; `netfast down` removes it (its flows are \
             lost), then create the networks again",
            host.describe(),
            names::META,
            dir.join(names::META).display()
        )));
    };
    let this = this_build();
    if meta.next_layout != 0 {
        let by = describe_next(&meta);
        let with = if meta.next_layout == this.layout && meta.next_object == this.object {
            "this netfast".to_owned()
        } else {
            format!("{by}, the netfast that started it")
        };
        return Err(Error::Settings(format!(
            "an upgrade of the dataplane of {} from {} to {by} did not finish: run `netfast \
             upgrade` with {with} to finish it (it keeps every flow)",
            host.describe(),
            describe_running(&meta),
        )));
    }
    if meta.layout > this.layout {
        return Err(Error::Settings(format!(
            "the dataplane of {} runs {}, whose maps have a newer layout than this netfast's \
             ({}): a downgrade across a layout change is refused; use the newer netfast, or \
             `netfast down` (which drops every flow) before going back",
            host.describe(),
            describe_running(&meta),
            describe_this(),
        )));
    }
    if meta.layout < this.layout {
        return Err(Error::Settings(format!(
            "the dataplane of {} runs {}, whose maps have an older layout than this netfast's \
             ({}): run `netfast upgrade` to move it, with its flows, to this version",
            host.describe(),
            describe_running(&meta),
            describe_this(),
        )));
    }
    if let Some(name) = pending_pins(dir)?.first() {
        return Err(Error::Settings(format!(
            "an upgrade of the dataplane of {} to {} did not finish moving its maps ({} is \
             still there): run `netfast upgrade` to finish it",
            host.describe(),
            describe_running(&meta),
            dir.join(format!("{name}{NEXT_SUFFIX}")).display()
        )));
    }
    if meta.object != this.object {
        return Ok(Compat::OtherBuild(describe_running(&meta)));
    }
    Ok(Compat::Same)
}

/// The warning every command prints when the programs that run are another build's.
pub fn other_build_warning(host: &Host, running: &str) -> String {
    format!(
        "netfast: warning: the dataplane of {} runs the programs of {running}, not this \
         netfast's ({}); run `netfast upgrade` to replace them in place (flows are kept)",
        host.describe(),
        describe_this()
    )
}

/// The maps an unfinished upgrade made (`NAME-next`), by name.
fn pending_pins(dir: &Path) -> Result<Vec<String>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if let Some(name) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(NEXT_SUFFIX))
        {
            out.push(name.to_owned());
        }
    }
    out.sort();
    Ok(out)
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

fn layout_of(info: &MapInfo) -> MapLayout {
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
        dataplane::classifier(&mut ebpf, hook)?
            .load()
            .map_err(|e| Error::program(hook.name(), e))?;
    }
    for name in SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(Error::MissingProgram(name))?
            .try_into()
            .map_err(|e| Error::program(name, e))?;
        program.load().map_err(|e| Error::program(name, e))?;
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

/// Copying one map's entries into its new layout, twice: before the programs change, and
/// after (what the old programs wrote meanwhile).
struct Copy {
    name: &'static str,
    chain: Vec<migrate::Convert>,
    key_size: usize,
    value_size: usize,
    /// What the first pass wrote for each key (a hash of the converted value).
    first: HashMap<Vec<u8>, u64>,
    freshness: Option<fn(&[u8]) -> u64>,
    new_value_size: usize,
    copied: u64,
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

impl Copy {
    fn new(
        name: &'static str,
        old: &MapData,
        new: &MapData,
        chain: Vec<migrate::Convert>,
    ) -> Result<Self> {
        let o = old.info().map_err(|e| Error::map(name, e))?;
        let n = new.info().map_err(|e| Error::map(name, e))?;
        let per_cpu = |t: u32| matches!(t, 5 | 6 | 10); // PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU
        if per_cpu(layout_of(&o).map_type) || per_cpu(layout_of(&n).map_type) {
            return Err(Error::Settings(format!(
                "map {name}: migrating a per-CPU map is not supported (a defect of this build)"
            )));
        }
        Ok(Copy {
            name,
            chain,
            key_size: o.key_size() as usize,
            value_size: o.value_size() as usize,
            first: HashMap::new(),
            freshness: migrate::freshness(name),
            new_value_size: n.value_size() as usize,
            copied: 0,
        })
    }

    fn err(&self, what: &str) -> impl FnOnce(std::io::Error) -> Error {
        io(format!("{what} map {} during the upgrade", self.name))
    }

    /// Copies every entry of `old` into `new`. The first pass (`second == false`) keeps an
    /// entry the new map has unless the old one is fresher; the second copies only what
    /// changed in `old` since the first.
    fn pass(&mut self, old: &MapData, new: &MapData, second: bool) -> Result<()> {
        let (old_fd, new_fd) = (old.fd().as_fd(), new.fd().as_fd());
        let mut key = vec![0u8; self.key_size];
        let mut next = vec![0u8; self.key_size];
        let mut value = vec![0u8; self.value_size];
        let mut current = vec![0u8; self.new_value_size];
        let mut first_key = true;
        loop {
            let more = bpf_sys::map_next_key(old_fd, (!first_key).then_some(&key[..]), &mut next)
                .map_err(self.err("walking the old"))?;
            if !more {
                break;
            }
            first_key = false;
            std::mem::swap(&mut key, &mut next);
            if !bpf_sys::map_lookup(old_fd, &key, &mut value)
                .map_err(self.err("reading the old"))?
            {
                continue; // gone meanwhile
            }
            let Some((k, v)) = migrate::convert(&self.chain, &key, &value) else {
                continue;
            };
            let h = hash(&v);
            if second && self.first.get(&k) == Some(&h) {
                continue; // unchanged since the first pass
            }
            let present = bpf_sys::map_lookup(new_fd, &k, &mut current)
                .map_err(self.err("reading the new"))?;
            let write = !present || self.freshness.is_some_and(|f| f(&v) > f(&current));
            let flags = if present {
                bpf_sys::EXIST
            } else {
                bpf_sys::NOEXIST
            };
            let written = write
                && bpf_sys::map_update(new_fd, &k, &v, flags)
                    .map_err(self.err("writing the new"))?;
            if !second {
                // Carried over, by this copy or by a killed attempt's.
                self.copied += u64::from(present || written);
                self.first.insert(k, h);
            } else {
                self.copied += u64::from(!present && written);
            }
        }
        Ok(())
    }
}
