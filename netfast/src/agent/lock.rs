//! One agent per host namespace: the agent holds an open-file-description write lock
//! (`F_OFD_SETLK`) on `agent.pid` in the host's state directory for as long as it runs, and
//! writes its pid there. The kernel drops the lock when the process ends, however it ends;
//! others ask who holds it (`F_OFD_GETLK`) without taking it, so that asking never keeps an
//! agent from starting.

use std::{
    fs::File,
    io::{Read, Seek, Write},
    os::fd::AsRawFd,
};

use crate::{
    error::{Error, Result},
    host::Host,
    loader::state::open_aside,
};

/// The agent's lock and pid file, beside the state.
pub const AGENT_FILE: &str = "agent.pid";

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: a plain C struct, all zeros is a valid value.
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l
}

/// Whether some process holds the agent's lock on `file`: `Some(pid)` as the file says (0
/// when it says nothing readable), `None` when nobody does.
pub fn holder(file: &File) -> Option<u32> {
    let mut l = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we hold, with a flock struct it fills in.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    if rc != 0 || l.l_type == libc::F_UNLCK as libc::c_short {
        return None;
    }
    let mut text = String::new();
    let mut f = file;
    let _ = f.rewind();
    let _ = f.read_to_string(&mut text);
    Some(text.trim().parse().unwrap_or(0))
}

/// The pid of the agent that serves `host`, if one runs (`Some(0)`: one runs, its pid file
/// is unreadable). Creates nothing.
pub fn running(host: &Host) -> Result<Option<u32>> {
    Ok(open_aside(host, AGENT_FILE, false)?.and_then(|f| holder(&f)))
}

/// The lock of the one agent of a host; released when dropped (or when the process ends).
pub struct AgentLock {
    _file: File,
}

impl AgentLock {
    /// Takes the lock of `host`'s agent, or says which agent holds it.
    pub fn acquire(host: &Host) -> Result<AgentLock> {
        let mut file = open_aside(host, AGENT_FILE, true)?.ok_or_else(|| {
            Error::Settings(format!(
                "{}/{AGENT_FILE} cannot be created",
                host.state_dir().display()
            ))
        })?;
        let l = whole_file(libc::F_WRLCK);
        // SAFETY: fcntl on a descriptor we hold, with a valid flock struct.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &l) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) {
                let pid = holder(&file).filter(|p| *p != 0);
                return Err(Error::Settings(format!(
                    "an agent already serves {}{}: one agent per host namespace; stop it first \
                     (`systemctl stop netfast-agent`{})",
                    host.describe(),
                    pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                    pid.map(|p| format!(", or `kill {p}`")).unwrap_or_default()
                )));
            }
            return Err(Error::Io {
                context: format!("locking {}", host.state_dir().join(AGENT_FILE).display()),
                source: err,
            });
        }
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            writeln!(f, "{}", std::process::id())
        };
        write(&mut file).map_err(|source| Error::Io {
            context: format!("writing {}", host.state_dir().join(AGENT_FILE).display()),
            source,
        })?;
        Ok(AgentLock { _file: file })
    }
}
