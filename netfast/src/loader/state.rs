//! The state file of a host namespace: `/run/netfast/<host>/state.json`, replaced atomically
//! (written aside, synced, renamed) and guarded by a lock held for the whole of a command.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use super::model::State;
use crate::{
    error::{Error, Result},
    host::Host,
};

/// The state file in a host's state directory.
pub const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// The state of a host, held under its lock; dropping it releases the lock.
pub struct Locked {
    dir: PathBuf,
    _lock: File,
    pub state: State,
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl Locked {
    /// Takes the host's lock (waiting for another netfast command to finish) and reads its
    /// state. `exclusive` for commands that change anything.
    pub fn acquire(host: &Host, exclusive: bool) -> Result<Locked> {
        let dir = host.state_dir();
        fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), op) } != 0 {
            return Err(io_err(format!("locking {}", lock_path.display()))(
                io::Error::last_os_error(),
            ));
        }
        let path = dir.join(STATE_FILE);
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Io {
                context: format!(
                    "{} is not a netfast state file ({e}); remove it with `netfast down` or by hand",
                    path.display()
                ),
                source: io::Error::from(io::ErrorKind::InvalidData),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        // Names go into rules and paths: a state edited by hand is checked as input is.
        super::validate::state(&state).map_err(|e| {
            Error::Settings(format!(
                "{} holds a name netfast refuses: {e}; correct the file by hand",
                path.display()
            ))
        })?;
        Ok(Locked {
            dir,
            _lock: lock,
            state,
        })
    }

    /// Writes the state: to a temporary file, synced, then renamed over the old one, so that
    /// a crash leaves either the old state or the new, never half of one.
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(&self.state).expect("the state serializes");
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(io_err(format!("writing {}", path.display())))
    }

    /// Removes the state directory (after `down`); the lock goes with it.
    pub fn remove(self) -> Result<()> {
        for name in [STATE_FILE, LOCK_FILE] {
            let p = self.dir.join(name);
            if let Err(e) = fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                return Err(io_err(format!("removing {}", p.display()))(e));
            }
        }
        let _ = fs::remove_dir(&self.dir);
        let _ = fs::remove_dir(Path::new(crate::host::STATE_ROOT));
        Ok(())
    }
}
