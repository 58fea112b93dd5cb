//! The library's errors. Messages do not repeat their source: print the chain (`{:#}` with
//! anyhow) to see it all.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object into the kernel failed")]
    LoadObject(#[source] Box<aya::EbpfError>),

    #[error("the eBPF object has no program `{0}` (is the embedded object stale?)")]
    MissingProgram(&'static str),

    #[error("the eBPF object has no map `{0}` (is the embedded object stale?)")]
    MissingMap(&'static str),

    #[error("program `{program}`")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },

    #[error("attaching `{program}` to interface {interface}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("network namespace `{name}` ({}): {}", path.display(), netns_hint(source))]
    Netns {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("no interface named {0} in this network namespace")]
    NoInterface(String),

    #[error("{0}")]
    Settings(String),

    #[error(
        "the pinned map {map} at {} has another layout ({found}) than this netfast expects \
         ({expected}): it was made by another version; run `netfast down` to remove the old \
         dataplane (its flows are lost)", path.display()
    )]
    PinnedMapMismatch {
        map: &'static str,
        path: PathBuf,
        found: String,
        expected: String,
    },

    /// A netfilter tool failed (it names the command).
    #[error(transparent)]
    Netfilter(#[from] crate::netfilter::ToolError),

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn program(program: &'static str, source: ProgramError) -> Self {
        Error::Program {
            program,
            source: Box::new(source),
        }
    }

    pub(crate) fn map(map: &'static str, source: MapError) -> Self {
        Error::Map {
            map,
            source: Box::new(source),
        }
    }
}

impl From<aya::EbpfError> for Error {
    fn from(e: aya::EbpfError) -> Self {
        Error::LoadObject(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn netns_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound => "it must exist under /run/netns (see `ip netns list`)",
        io::ErrorKind::PermissionDenied => "entering it needs CAP_SYS_ADMIN; run netfast as root",
        _ => "cannot enter it",
    }
}

/// The error and all its sources on one line, `a: b: c`, for places without anyhow.
pub fn report(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
