//! `NETFAST_META`: which layout and build a pinned dataplane runs, and what this binary may
//! do with it.

use std::{fs, os::fd::AsFd as _, path::Path, sync::OnceLock};

use netfast_common::{
    maps as names,
    upgrade::{LAYOUT_VERSION, Meta, version_field, version_text},
};

use super::io;
use crate::{
    EBPF_OBJECT, bpf_sys,
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

pub(super) fn describe_running(m: &Meta) -> String {
    describe(m.layout, m.object, &m.version)
}

fn describe_next(m: &Meta) -> String {
    describe(m.next_layout, m.next_object, &m.next_version)
}

pub(super) fn describe_this() -> String {
    describe_running(&this_build())
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
        "warning: the dataplane of {} runs the programs of {running}, not this \
         netfast's ({}); run `netfast upgrade` to replace them in place (flows are kept)",
        host.describe(),
        describe_this()
    )
}

/// The maps an unfinished upgrade made (`NAME-next`), by name.
pub(super) fn pending_pins(dir: &Path) -> Result<Vec<String>> {
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
