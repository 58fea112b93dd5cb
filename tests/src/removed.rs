//! What a test makes outside its namespaces — a temporary directory, a pin, a socket — goes
//! when the test ends, failed or not.

use std::{
    fs,
    ops::Deref,
    path::{Path, PathBuf},
};

/// A path removed when dropped: a file, or a directory with everything under it.
pub struct Removed(PathBuf);

impl Removed {
    /// `path`, removed when dropped (nothing needs to be there yet).
    pub fn at(path: impl Into<PathBuf>) -> Removed {
        Removed(path.into())
    }

    /// A new empty directory `<temp>/<name>` (what was there before is removed first).
    pub fn dir(name: &str) -> Removed {
        let dir = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        Removed(dir)
    }
}

impl Deref for Removed {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for Removed {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Removed {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            fs::remove_dir_all(&self.0)
        } else {
            fs::remove_file(&self.0)
        };
    }
}
