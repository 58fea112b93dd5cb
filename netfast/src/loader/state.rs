//! The state file of a host namespace: `/run/netfast/<host>/state.json`, replaced atomically
//! (written aside, synced, renamed) and guarded by a lock held for the whole of a command.
//!
//! Only root writes here, and only through descriptors: the directories are 0700 and the
//! files 0600, every one is opened relative to its parent without following a symbolic link,
//! so a link planted in /run/netfast cannot send netfast's writes elsewhere. Read-only
//! commands create nothing: without a state directory the state is empty.

use std::{
    ffi::CString,
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use super::{intent::Intent, model::State};
use crate::{
    error::{Error, Result},
    host::Host,
};

/// The state file in a host's state directory.
pub const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const TMP_FILE: &str = "state.json.tmp";
/// What the running command is about to change ([`Intent`]), written before its first change
/// and removed after its state is saved: left behind only by a command that died.
pub const INTENT_FILE: &str = "intent.json";
const INTENT_TMP_FILE: &str = "intent.json.tmp";

/// The state of a host, held under its lock; dropping it releases the lock.
pub struct Locked {
    dir_path: PathBuf,
    /// The state directory; `None` when a read-only command found none.
    dir: Option<OwnedFd>,
    _lock: Option<File>,
    pub state: State,
    /// What an interrupted command left to complete or undo ([`Intent`]), as read with the
    /// lock; `None` when the last command finished.
    pub intent: Option<Intent>,
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn cstr(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: fstat fills a zeroed stat buffer for a descriptor we hold.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &raw mut st) })?;
    Ok(st)
}

/// `name` in `dir`, not following a link there: `None` when it does not exist.
fn stat_at(dir: &OwnedFd, name: &str) -> io::Result<Option<libc::stat>> {
    let c = cstr(name)?;
    // SAFETY: fstatat on a directory we hold, a valid C string and a stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &raw mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(rc) {
        Ok(_) => Ok(Some(st)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `flags` at `name` relative to `dir` (or the absolute `name`), never following a
/// symbolic link at its last component.
fn open_at(
    dir: Option<&OwnedFd>,
    name: &str,
    flags: libc::c_int,
    mode: u32,
) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    let base = dir.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: openat with a valid C string; the descriptor it returns is ours.
    let fd = check(unsafe {
        libc::openat(
            base,
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Tightens a directory or file netfast owns to `mode` (0700, 0600) when it is looser.
fn tighten(fd: &impl AsRawFd, mode: u32) -> io::Result<()> {
    if fstat(fd.as_raw_fd())?.st_mode & 0o777 != mode {
        // SAFETY: fchmod on a descriptor we hold.
        check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    }
    Ok(())
}

/// The directory `name` in `parent` (or the absolute `name`), created 0700 if `create`;
/// `None` when it does not exist and `create` is false. A symbolic link is refused.
fn open_dir(parent: Option<&OwnedFd>, name: &str, create: bool) -> io::Result<Option<OwnedFd>> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    match open_at(parent, name, flags, 0) {
        Ok(fd) => {
            if create {
                tighten(&fd, 0o700)?;
            }
            Ok(Some(fd))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            let c = cstr(name)?;
            let base = parent.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
            // SAFETY: mkdirat with a valid C string.
            match check(unsafe { libc::mkdirat(base, c.as_ptr(), 0o700) }) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let fd = open_at(parent, name, flags, 0)?;
            tighten(&fd, 0o700)?;
            Ok(Some(fd))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// A new file `name` in `dir`, 0600, in place of whatever was there (a link is removed, never
/// followed).
fn create_fresh(dir: &OwnedFd, name: &str) -> io::Result<File> {
    unlink_at(dir, name, 0)?;
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    Ok(File::from(open_at(Some(dir), name, flags, 0o600)?))
}

fn unlink_at(dir: &OwnedFd, name: &str, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: unlinkat on a directory we hold with a valid C string.
    match check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why opening something of netfast's failed, with what to do about a planted link.
fn explain(path: &Path, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
        return Error::Io {
            context: format!(
                "{} is a symbolic link or not a directory; netfast does not follow links in its \
                 state (remove it: only netfast writes there)",
                path.display()
            ),
            source: e,
        };
    }
    Error::Io {
        context: format!("opening {}", path.display()),
        source: e,
    }
}

impl Locked {
    /// No lock, and nothing read: for a read-only command on a host with no state.
    fn empty(dir_path: PathBuf) -> Locked {
        Locked {
            dir_path,
            dir: None,
            _lock: None,
            state: State::default(),
            intent: None,
        }
    }

    /// Takes the host's lock (waiting for another netfast command to finish) and reads its
    /// state. `exclusive` for commands that change anything; a shared one creates nothing.
    pub fn acquire(host: &Host, exclusive: bool) -> Result<Locked> {
        let dir_path = host.state_dir();
        let root_path = Path::new(crate::host::STATE_ROOT);
        loop {
            let root = open_dir(None, crate::host::STATE_ROOT, exclusive)
                .map_err(|e| explain(root_path, e))?;
            let dir = match &root {
                Some(root) => {
                    open_dir(Some(root), &host.key, exclusive).map_err(|e| explain(&dir_path, e))?
                }
                None => None,
            };
            let (Some(root), Some(dir)) = (root, dir) else {
                // A read-only command on a host netfast never served.
                return Ok(Locked::empty(dir_path));
            };
            let lock_path = dir_path.join(LOCK_FILE);
            let lock = match open_at(
                Some(&dir),
                LOCK_FILE,
                libc::O_RDWR | if exclusive { libc::O_CREAT } else { 0 },
                0o600,
            ) {
                Ok(fd) => File::from(fd),
                Err(e) if e.kind() == io::ErrorKind::NotFound && !exclusive => {
                    // Being removed by `down`, or never used: nothing to read.
                    return Ok(Locked::empty(dir_path));
                }
                Err(e) => return Err(explain(&lock_path, e)),
            };
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
            // `down` removes the lock file and the directory while it holds the lock: a
            // command that waited on them holds a lock nobody else can see. It starts over.
            let held = fstat(lock.as_raw_fd())
                .map_err(io_err(format!("reading {}", lock_path.display())))?;
            let dir_st = fstat(dir.as_raw_fd())
                .map_err(io_err(format!("reading {}", dir_path.display())))?;
            let same = |a: Option<libc::stat>, b: &libc::stat| {
                a.is_some_and(|a| a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            };
            let current_lock = stat_at(&dir, LOCK_FILE).unwrap_or(None);
            let current_dir = stat_at(&root, &host.key).unwrap_or(None);
            if !same(current_lock, &held) || !same(current_dir, &dir_st) {
                continue;
            }
            if exclusive {
                tighten(&dir, 0o700).map_err(|e| explain(&dir_path, e))?;
                tighten(&lock, 0o600).map_err(|e| explain(&lock_path, e))?;
            }
            let state = read_state(&dir, &dir_path.join(STATE_FILE))?;
            let intent = read_intent(&dir, &dir_path.join(INTENT_FILE))?;
            let locked = Locked {
                dir_path,
                dir: Some(dir),
                _lock: Some(lock),
                state,
                intent,
            };
            if exclusive {
                // For humans (and `network ls`): which namespace this key is, by name.
                locked.write_aside(crate::host::LABEL_FILE, &host.label())?;
            }
            return Ok(locked);
        }
    }

    /// Writes the state: to a temporary file, synced, then renamed over the old one, so that
    /// a crash leaves either the old state or the new, never half of one.
    pub fn save(&self) -> Result<()> {
        let mut value = serde_json::to_value(&self.state).expect("the state serializes");
        value["format"] = super::model::STATE_FORMAT.into();
        let bytes = serde_json::to_vec_pretty(&value).expect("the state serializes");
        self.replace(STATE_FILE, TMP_FILE, &bytes)
    }

    /// Records what the command is about to change, before its first change: if it dies
    /// before [`Locked::finish`], the next command completes or undoes it
    /// ([`crate::loader::Loader::lock`]).
    pub fn begin(&mut self, intent: Intent) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&intent).expect("an intent serializes");
        self.replace(INTENT_FILE, INTENT_TMP_FILE, &bytes)?;
        self.intent = Some(intent);
        Ok(())
    }

    /// Whether a state was ever saved here (and not removed by `down` since): `false` for a
    /// host netfast has not served, or whose state file someone deleted.
    pub fn saved(&self) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|dir| matches!(stat_at(dir, STATE_FILE), Ok(Some(_))))
    }

    /// Forgets the intent (after the state that follows from it is saved, or after the
    /// command undid its changes itself).
    pub fn finish(&mut self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        unlink_at(dir, INTENT_FILE, 0).map_err(io_err(format!(
            "removing {}",
            self.dir_path.join(INTENT_FILE).display()
        )))?;
        self.intent = None;
        Ok(())
    }

    /// Replaces `name` with `bytes`, written at `tmp`, synced and renamed over it.
    fn replace(&self, name: &str, tmp: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir_path.join(name);
        let Some(dir) = &self.dir else {
            return Err(Error::Settings(format!(
                "writing {} under a shared lock (a bug in netfast)",
                path.display()
            )));
        };
        let write = || -> io::Result<()> {
            // Whatever a crash (or someone) left at the temporary name goes first; the new
            // file is created, never opened through a link.
            let mut f = create_fresh(dir, tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            let (from, to) = (cstr(tmp)?, cstr(name)?);
            // SAFETY: renameat within a directory we hold, with valid C strings.
            check(unsafe {
                libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr())
            })?;
            // SAFETY: fsync on a descriptor we hold.
            check(unsafe { libc::fsync(dir.as_raw_fd()) }).map(|_| ())
        };
        write().map_err(io_err(format!("writing {}", path.display())))
    }

    /// Removes the state directory (after `down`), lock included: a command waiting for the
    /// lock sees that it was removed and starts over with a new one.
    pub fn remove(self) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        // The agent's lock file goes too, unless an agent holds it (it runs on, and will
        // serve whatever is made here next).
        if let Ok(fd) = open_at(Some(dir), crate::agent::lock::AGENT_FILE, libc::O_RDWR, 0)
            && crate::agent::lock::holder(&File::from(fd)).is_none()
        {
            unlink_at(dir, crate::agent::lock::AGENT_FILE, 0).map_err(io_err(format!(
                "removing {}",
                self.dir_path.join(crate::agent::lock::AGENT_FILE).display()
            )))?;
        }
        for name in [
            STATE_FILE,
            TMP_FILE,
            INTENT_FILE,
            INTENT_TMP_FILE,
            crate::host::LABEL_FILE,
            LOCK_FILE,
        ] {
            unlink_at(dir, name, 0).map_err(io_err(format!(
                "removing {}",
                self.dir_path.join(name).display()
            )))?;
        }
        let _ = std::fs::remove_dir(&self.dir_path);
        let _ = std::fs::remove_dir(Path::new(crate::host::STATE_ROOT));
        Ok(())
    }

    /// Writes `text` to `name` in the state directory (a label for humans), as the state is.
    pub fn write_aside(&self, name: &str, text: &str) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let path = self.dir_path.join(name);
        let write = || -> io::Result<()> { create_fresh(dir, name)?.write_all(text.as_bytes()) };
        write().map_err(io_err(format!("writing {}", path.display())))
    }
}

/// Opens `name` in the host's state directory read-write, never through a symbolic link:
/// created 0600 (with the directories, 0700) when `create`; `None` when it does not exist
/// and `create` is false.
pub fn open_aside(host: &Host, name: &str, create: bool) -> Result<Option<File>> {
    let dir_path = host.state_dir();
    let root_path = Path::new(crate::host::STATE_ROOT);
    let Some(root) =
        open_dir(None, crate::host::STATE_ROOT, create).map_err(|e| explain(root_path, e))?
    else {
        return Ok(None);
    };
    let Some(dir) = open_dir(Some(&root), &host.key, create).map_err(|e| explain(&dir_path, e))?
    else {
        return Ok(None);
    };
    let path = dir_path.join(name);
    let flags = libc::O_RDWR | if create { libc::O_CREAT } else { 0 };
    match open_at(Some(&dir), name, flags, 0o600) {
        Ok(fd) => {
            let f = File::from(fd);
            if create {
                tighten(&f, 0o600).map_err(|e| explain(&path, e))?;
            }
            Ok(Some(f))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => Ok(None),
        Err(e) => Err(explain(&path, e)),
    }
}

/// The contents of file `name` in `dir` (at `path`, for errors); `None` when there is none.
fn read_file(dir: &OwnedFd, name: &str, path: &Path) -> Result<Option<Vec<u8>>> {
    match open_at(Some(dir), name, libc::O_RDONLY, 0) {
        Ok(fd) => {
            let mut bytes = Vec::new();
            File::from(fd)
                .read_to_end(&mut bytes)
                .map_err(io_err(format!("reading {}", path.display())))?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(explain(path, e)),
    }
}

/// Reads and checks the state file in `dir` (the default state when there is none).
fn read_state(dir: &OwnedFd, path: &Path) -> Result<State> {
    let Some(bytes) = read_file(dir, STATE_FILE, path)? else {
        return Ok(State::default());
    };
    let format = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64))
        .unwrap_or(1);
    if format > super::model::STATE_FORMAT {
        return Err(Error::Settings(format!(
            "{} was written by a newer netfast (state format {format}; this netfast reads up \
             to {}): a downgrade is refused; use the newer netfast",
            path.display(),
            super::model::STATE_FORMAT
        )));
    }
    let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
        context: format!(
            "{} is not a netfast state file ({e}); remove it with `netfast down` or by hand",
            path.display()
        ),
        source: io::Error::from(io::ErrorKind::InvalidData),
    })?;
    // Names go into rules and paths: a state edited by hand is checked as input is.
    super::validate::state(&state).map_err(|e| {
        Error::Settings(format!(
            "{} holds a name netfast refuses: {e}; correct the file by hand",
            path.display()
        ))
    })?;
    Ok(state)
}

/// Reads the intent an interrupted command left in `dir`, if any.
fn read_intent(dir: &OwnedFd, path: &Path) -> Result<Option<Intent>> {
    let Some(bytes) = read_file(dir, INTENT_FILE, path)? else {
        return Ok(None);
    };
    let intent: Intent = serde_json::from_slice(&bytes).map_err(|e| Error::Io {
        context: format!(
            "{} is not a netfast intent record ({e}); remove it by hand, then run `netfast \
             down` to remove what netfast made",
            path.display()
        ),
        source: io::Error::from(io::ErrorKind::InvalidData),
    })?;
    // Its names go into rules, paths and link deletions as the state's do.
    super::validate::state(&intent.as_state()).map_err(|e| {
        Error::Settings(format!(
            "{} holds a name netfast refuses: {e}; remove it by hand",
            path.display()
        ))
    })?;
    Ok(Some(intent))
}
