//! The socket-level programs on the root cgroup: the host's own clients of published ports.

use std::{fs, path::PathBuf};

use aya::programs::links::FdLink;

use super::Dataplane;
use crate::{
    error::{Error, Result},
    maps,
};

/// The socket-level programs and the cgroup hook each one takes.
pub(crate) const SOCK_PROGRAMS: [&str; 4] = [
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

/// The root of the cgroup v2 hierarchy (where every process of the machine is below).
fn cgroup2_root() -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // `… mount-point … - fstype source options`
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next()? == "cgroup2")
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

impl Dataplane {
    /// Attaches the socket-level programs (the host's own clients of published ports) to
    /// the root cgroup, scoped to this host namespace. Idempotent. `Ok(false)` when the
    /// machine has no cgroup v2 hierarchy to attach to.
    pub fn attach_sockets(&mut self) -> Result<bool> {
        use aya::programs::{CgroupAttachMode, CgroupSockAddr};
        let Some(root) = cgroup2_root() else {
            return Ok(false);
        };
        maps::write_host(
            &mut self.ebpf,
            &netfast_common::publish::HostInfo {
                netns_cookie: crate::host::netns_cookie()?,
            },
        )?;
        let cgroup = fs::File::open(&root).map_err(|source| Error::Io {
            context: format!("opening the cgroup v2 root {}", root.display()),
            source,
        })?;
        for name in SOCK_PROGRAMS {
            let pin = self.pins.as_ref().map(|d| d.join(format!("cgroup-{name}")));
            if pin.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            self.may_attach()?;
            let program: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|e| Error::program(name, e))?;
            if self.loaded.insert(name) {
                super::load_program(name, || program.load())?;
            }
            let attach_error = |e| Error::Attach {
                program: name,
                interface: root.display().to_string(),
                source: Box::new(e),
            };
            // As a bpf link the attachment is always one of many (a link takes no ALLOW_MULTI
            // flag: that is the default mode's 0).
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(attach_error)?;
            if let Some(pin) = pin {
                let link = FdLink::try_from(program.take_link(id).map_err(attach_error)?).map_err(
                    |e| Error::Io {
                        context: format!("{name} is not a bpf link: {e}"),
                        source: std::io::Error::other("not an fd link"),
                    },
                )?;
                link.pin(&pin).map_err(|e| Error::Io {
                    context: format!("pinning the {name} link at {}: {e}", pin.display()),
                    source: std::io::Error::other("pin failed"),
                })?;
            }
        }
        Ok(true)
    }
}
