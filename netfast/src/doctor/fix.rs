//! `netfast doctor --fix`: the safe fixes only — mount bpffs, load modules, set sysctls —
//! and, in the machine's root network namespace, the files that redo them at boot:
//! `/etc/modules-load.d/netfast.conf` and `/etc/sysctl.d/90-netfast.conf`, merged without
//! duplicating lines. Nothing is removed, flushed or opened up: rules, policies and other
//! programs' tables are for a human to change, with the fix each check names.

use std::{
    fs, io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::Serialize;

use super::{Check, Remedy, Status, sysctl};

/// Replaces `/etc` for the persistence files (tests point it at a temporary directory).
pub const ETC_ENV: &str = "NETFAST_DOCTOR_ETC";
const MODULES_FILE: &str = "modules-load.d/netfast.conf";
const SYSCTL_FILE: &str = "sysctl.d/90-netfast.conf";
const HEADER: &str = "# Written by `netfast doctor --fix`.\n";

/// What `--fix` did about one check.
#[derive(Clone, Debug, Serialize)]
pub struct Applied {
    pub area: &'static str,
    pub name: String,
    /// Whether the fix itself worked (persisting it may still have been skipped).
    pub ok: bool,
    pub outcome: String,
}

/// Where fixes are made to last, or why they are not.
enum Persistence {
    Etc(PathBuf),
    Skipped(String),
}

/// Whether the calling thread's network namespace is the machine's root one (see
/// [`crate::host::root_netns_inode`]).
fn in_root_netns() -> Result<bool, String> {
    let own = fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| format!("/proc/thread-self/ns/net: {e}"))?
        .ino();
    Ok(own == crate::host::root_netns_inode())
}

impl Persistence {
    fn here() -> Persistence {
        match in_root_netns() {
            Ok(true) => Persistence::Etc(
                std::env::var_os(ETC_ENV).map_or_else(|| PathBuf::from("/etc"), PathBuf::from),
            ),
            Ok(false) => Persistence::Skipped(
                "not persisted: this host is a network namespace, not the machine's root one, \
                 which /etc configures at boot"
                    .into(),
            ),
            Err(e) => Persistence::Skipped(format!(
                "not persisted: whether this is the machine's root network namespace is unknown \
                 ({e})"
            )),
        }
    }

    /// Merges a line into `file` under the /etc directory; says what happened.
    fn persist(&self, file: &str, merge: impl FnOnce(&str) -> Option<String>) -> String {
        let etc = match self {
            Persistence::Etc(etc) => etc,
            Persistence::Skipped(why) => return why.clone(),
        };
        let path = etc.join(file);
        match merge_into(&path, merge) {
            Ok(true) => format!("persisted in {}", path.display()),
            Ok(false) => format!("already in {}", path.display()),
            Err(e) => format!("not persisted: writing {} failed: {e}", path.display()),
        }
    }
}

/// Applies the remedy of every check that is not PASS and has one.
pub fn fix(checks: &[Check]) -> Vec<Applied> {
    let persistence = Persistence::here();
    checks
        .iter()
        .filter(|c| c.status != Status::Pass)
        .filter_map(|c| {
            let remedy = c.remedy.as_ref()?;
            let (ok, outcome) = apply(remedy, &persistence);
            Some(Applied {
                area: c.area,
                name: c.name.clone(),
                ok,
                outcome,
            })
        })
        .collect()
}

fn apply(remedy: &Remedy, persistence: &Persistence) -> (bool, String) {
    match remedy {
        Remedy::MountBpffs => match crate::bpffs::root() {
            Ok(at) => (
                true,
                format!(
                    "mounted the bpf filesystem ({}); systemd mounts it at boot on most \
                     distributions, otherwise add `bpf /sys/fs/bpf bpf defaults 0 0` to /etc/fstab",
                    at.display()
                ),
            ),
            Err(e) => (false, crate::error::report(&e)),
        },
        Remedy::Modprobe(module) => match modprobe(module) {
            Ok(()) => (
                true,
                format!(
                    "loaded with modprobe; {}",
                    persistence.persist(MODULES_FILE, |t| merge_module(t, module))
                ),
            ),
            Err(e) => (false, format!("modprobe {module} failed: {e}")),
        },
        Remedy::Sysctl { key, value } => match sysctl::write(key, value) {
            Ok(()) => (
                true,
                format!(
                    "set {key}={value}; {}",
                    persistence.persist(SYSCTL_FILE, |t| merge_sysctl(t, key, value))
                ),
            ),
            Err(e) => (false, format!("setting {key}={value} failed: {e}")),
        },
    }
}

fn modprobe(module: &str) -> Result<(), String> {
    let out = Command::new("modprobe")
        .arg(module)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                "modprobe is not installed (Debian: apt-get install kmod)".to_owned()
            }
            _ => e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Sets `fixed` on the checks (of a run after the fixes) that a fix was applied for.
pub fn record(checks: &mut [Check], applied: &[Applied]) {
    for a in applied {
        if let Some(c) = checks
            .iter_mut()
            .find(|c| c.area == a.area && c.name == a.name)
        {
            c.fixed = Some(a.outcome.clone());
        }
    }
}

/// Rewrites `path` with `merge`'s result, creating it and its directory; `false` when the
/// line was there already.
fn merge_into(path: &Path, merge: impl FnOnce(&str) -> Option<String>) -> io::Result<bool> {
    let existing = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let Some(merged) = merge(&existing) else {
        return Ok(false);
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("conf.tmp");
    fs::write(&tmp, merged)?;
    fs::rename(&tmp, path)?;
    Ok(true)
}

fn start(existing: &str) -> String {
    let mut out = if existing.is_empty() {
        HEADER.to_owned()
    } else {
        existing.to_owned()
    };
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// `existing` (a modules-load.d file) with `module` added; `None` when it lists it already.
pub fn merge_module(existing: &str, module: &str) -> Option<String> {
    let listed = existing
        .lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or_default().trim())
        .any(|l| l == module);
    if listed {
        return None;
    }
    let mut out = start(existing);
    out.push_str(module);
    out.push('\n');
    Some(out)
}

/// The key of a sysctl.d line (`-net/ipv4/ip_forward = 1` → `net.ipv4.ip_forward`).
fn sysctl_key(line: &str) -> Option<String> {
    let line = line.trim();
    if line.starts_with('#') || line.starts_with(';') {
        return None;
    }
    let (key, _) = line.split_once('=')?;
    Some(key.trim().trim_start_matches('-').replace('/', "."))
}

/// `existing` (a sysctl.d file) with `key = value`: the key's line replaced (later duplicates
/// dropped), or added; `None` when it is there already.
pub fn merge_sysctl(existing: &str, key: &str, value: &str) -> Option<String> {
    let wanted = format!("{key} = {value}");
    let mut lines: Vec<String> = Vec::new();
    let mut seen = false;
    let mut changed = false;
    for line in existing.lines() {
        if sysctl_key(line).as_deref() != Some(key) {
            lines.push(line.to_owned());
            continue;
        }
        let same = line.split_once('=').map(|(_, v)| v.trim()) == Some(value);
        if seen {
            changed = true;
        } else {
            seen = true;
            changed |= !same;
            lines.push(if same {
                line.to_owned()
            } else {
                wanted.clone()
            });
        }
    }
    if !seen {
        let mut out = start(existing);
        out.push_str(&wanted);
        out.push('\n');
        return Some(out);
    }
    changed.then(|| {
        let mut out = lines.join("\n");
        out.push('\n');
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_merge() {
        let fresh = merge_module("", "nf_nat").unwrap();
        assert_eq!(fresh, format!("{HEADER}nf_nat\n"));
        assert_eq!(merge_module(&fresh, "nf_nat"), None);
        assert_eq!(
            merge_module("br_netfilter", "nf_nat").unwrap(),
            "br_netfilter\nnf_nat\n"
        );
        assert_eq!(merge_module("nf_nat  # for NAT\n", "nf_nat"), None);
        assert!(
            merge_module("# nf_nat\n", "nf_nat").is_some(),
            "a comment is not a line"
        );
    }

    #[test]
    fn sysctl_merge() {
        let key = "net.ipv4.ip_forward";
        let fresh = merge_sysctl("", key, "1").unwrap();
        assert_eq!(fresh, format!("{HEADER}net.ipv4.ip_forward = 1\n"));
        assert_eq!(merge_sysctl(&fresh, key, "1"), None);
        assert_eq!(merge_sysctl("net/ipv4/ip_forward=1\n", key, "1"), None);
        assert_eq!(
            merge_sysctl("# x\nnet.ipv4.ip_forward=0\nvm.swappiness = 10\n", key, "1").unwrap(),
            "# x\nnet.ipv4.ip_forward = 1\nvm.swappiness = 10\n"
        );
        assert_eq!(
            merge_sysctl(
                "net.ipv4.ip_forward = 1\n-net.ipv4.ip_forward = 0\n",
                key,
                "1"
            )
            .unwrap(),
            "net.ipv4.ip_forward = 1\n",
            "a later line would win at boot: dropped"
        );
        assert_eq!(
            merge_sysctl("vm.swappiness = 10", key, "1").unwrap(),
            "vm.swappiness = 10\nnet.ipv4.ip_forward = 1\n"
        );
        assert_eq!(
            merge_sysctl("# net.ipv4.ip_forward = 0\n", key, "1")
                .unwrap()
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn files_merge_without_duplicates() {
        let dir = std::env::temp_dir().join(format!("netfast-doctor-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let persistence = Persistence::Etc(dir.clone());
        let key = "net.ipv4.ip_forward";
        let first = persistence.persist(SYSCTL_FILE, |t| merge_sysctl(t, key, "1"));
        assert!(first.starts_with("persisted in "), "{first}");
        let again = persistence.persist(SYSCTL_FILE, |t| merge_sysctl(t, key, "1"));
        assert!(again.starts_with("already in "), "{again}");
        persistence.persist(MODULES_FILE, |t| merge_module(t, "nf_nat"));
        persistence.persist(MODULES_FILE, |t| merge_module(t, "nf_nat"));
        persistence.persist(MODULES_FILE, |t| merge_module(t, "iptable_nat"));
        assert_eq!(
            fs::read_to_string(dir.join(SYSCTL_FILE)).unwrap(),
            format!("{HEADER}net.ipv4.ip_forward = 1\n")
        );
        assert_eq!(
            fs::read_to_string(dir.join(MODULES_FILE)).unwrap(),
            format!("{HEADER}nf_nat\niptable_nat\n")
        );
        let skipped = Persistence::Skipped("not persisted: x".into());
        assert_eq!(
            skipped.persist(SYSCTL_FILE, |_| unreachable!()),
            "not persisted: x"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn record_marks_the_rerun() {
        let mut checks = vec![
            Check::pass(super::super::FORWARDING, "net.ipv4.ip_forward", "1"),
            Check::pass(super::super::EBPF, "bpffs", "mounted"),
        ];
        record(
            &mut checks,
            &[Applied {
                area: super::super::FORWARDING,
                name: "net.ipv4.ip_forward".into(),
                ok: true,
                outcome: "set".into(),
            }],
        );
        assert_eq!(checks[0].fixed.as_deref(), Some("set"));
        assert_eq!(checks[1].fixed, None);
    }
}
