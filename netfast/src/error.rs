//! The library's errors. The binary adds context with anyhow at its edge.

use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the eBPF object into the kernel failed: {0}")]
    LoadObject(#[source] Box<aya::EbpfError>),

    #[error("the eBPF object has no program `{0}` (is the embedded object stale?)")]
    MissingProgram(&'static str),

    #[error("the eBPF object has no map `{0}` (is the embedded object stale?)")]
    MissingMap(&'static str),

    #[error("program `{program}`: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: Box<ProgramError>,
    },

    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },

    #[error("attaching `{program}` to interface {interface}: {source}")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: Box<ProgramError>,
    },

    #[error(
        "network namespace `{name}` ({path}): {source}; it must exist under /run/netns (see `ip netns list`)"
    )]
    Netns {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{context}: {source}")]
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
