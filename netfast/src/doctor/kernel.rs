//! What the running kernel is and what it has: its release, its build configuration
//! (`/proc/config.gz`, `/boot/config-<release>`), and its modules — built in
//! (`modules.builtin`), loaded (`/proc/modules`, `/sys/module`) or only on disk
//! (`modules.dep`).
//!
//! The parsers are pure functions of the files' text, tested without a kernel.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
};

/// A kernel version, `(major, minor, patch)`.
pub type Version = (u32, u32, u32);

/// The running kernel as far as this process can read it.
pub struct Kernel {
    /// `uname -r`.
    pub release: String,
    pub version: Option<Version>,
    /// `CONFIG_*` symbols and their values (`y`, `m`, numbers, strings); absent ones are
    /// not set. `None` when no configuration is readable.
    pub config: Option<HashMap<String, String>>,
    /// Where the configuration came from.
    pub config_source: Option<String>,
    /// `/lib/modules/<release>`, when it exists.
    pub modules_dir: Option<PathBuf>,
    /// Names from `modules.builtin`.
    pub builtin: HashSet<String>,
    /// Names from `modules.dep`: modules that `modprobe` can load.
    pub on_disk: HashSet<String>,
    /// Names from `/proc/modules`; `None` when the kernel has no module support (the file
    /// does not exist) or it is not readable.
    pub loaded: Option<HashSet<String>>,
}

impl Kernel {
    pub fn read() -> Kernel {
        let release = release();
        let version = parse_version(&release);
        let (config, config_source) = match read_config(&release) {
            Some((c, s)) => (Some(c), Some(s)),
            None => (None, None),
        };
        let dir = Path::new("/lib/modules").join(&release);
        let modules_dir = dir.is_dir().then_some(dir);
        let list = |file: &str| {
            modules_dir
                .as_ref()
                .and_then(|d| fs::read_to_string(d.join(file)).ok())
                .map(|t| parse_module_list(&t))
                .unwrap_or_default()
        };
        let builtin = list("modules.builtin");
        let on_disk = list("modules.dep");
        let loaded = fs::read_to_string("/proc/modules")
            .ok()
            .map(|t| parse_proc_modules(&t));
        Kernel {
            release,
            version,
            config,
            config_source,
            modules_dir,
            builtin,
            on_disk,
            loaded,
        }
    }

    /// The value of a configuration symbol (`CONFIG_X`): `Some("y")`, `Some("m")`, …;
    /// `None` when it is not set or the configuration is unknown.
    pub fn config(&self, symbol: &str) -> Option<&str> {
        self.config.as_ref()?.get(symbol).map(String::as_str)
    }

    /// Whether the version is at least `min`; `None` when the version is unknown.
    pub fn at_least(&self, min: Version) -> Option<bool> {
        self.version.map(|v| v >= min)
    }

    /// Where a module of this name stands. `symbol` is the configuration symbol that builds
    /// it (`CONFIG_NF_NAT` for `nf_nat`).
    pub fn module(&self, name: &str, symbol: &str) -> Module {
        let name = normalize(name);
        if self.builtin.contains(&name) {
            return Module::BuiltIn(format!(
                "built into the kernel (modules.builtin lists {name})"
            ));
        }
        if self.config(symbol) == Some("y") {
            let source = self.config_source.as_deref().unwrap_or("its configuration");
            return Module::BuiltIn(format!("built into the kernel ({symbol}=y in {source})"));
        }
        let live = Path::new("/sys/module").join(&name).join("initstate");
        if self.loaded.as_ref().is_some_and(|l| l.contains(&name)) || live.exists() {
            return Module::Loaded;
        }
        if self.on_disk.contains(&name) {
            return Module::Available;
        }
        let modules_dir = Path::new("/lib/modules").join(&self.release);
        let modules_dir = modules_dir.display();
        if self.config.is_some() {
            if self.config("CONFIG_MODULES") != Some("y") {
                return Module::Missing(format!(
                    "not built in ({symbol} is not =y) and this kernel loads no modules \
                     (CONFIG_MODULES is not set)"
                ));
            }
            return Module::Missing(match self.config(symbol) {
                Some("m") if self.modules_dir.is_none() => format!(
                    "built as a module ({symbol}=m), but {modules_dir} does not exist, so it \
                     cannot be loaded"
                ),
                Some("m") => format!(
                    "built as a module ({symbol}=m), but {modules_dir}/modules.dep does not list it"
                ),
                _ => format!("not in this kernel ({symbol} is not set)"),
            });
        }
        if self.modules_dir.is_some() {
            return Module::Missing(format!(
                "not built in, not loaded, and not in {modules_dir}/modules.dep"
            ));
        }
        Module::Unknown(format!(
            "not loaded, and whether it is built in or loadable is unknown: neither \
             {modules_dir} nor the kernel's configuration (/proc/config.gz, \
             /boot/config-{}) is readable",
            self.release
        ))
    }
}

/// Where a kernel module stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Module {
    /// Always there; how we know.
    BuiltIn(String),
    Loaded,
    /// On disk, not loaded: `modprobe` would load it.
    Available,
    /// Not there and not loadable; why.
    Missing(String),
    /// Nothing readable tells; what was missing.
    Unknown(String),
}

/// `uname -r`.
fn release() -> String {
    // SAFETY: uname fills the zeroed struct it is given.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&raw mut uts) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = uts
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `6.18.44-fc-v769` → `(6, 18, 44)`; `5.10` → `(5, 10, 0)`.
pub fn parse_version(release: &str) -> Option<Version> {
    let mut parts = release.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Module names as the kernel uses them: `-` and `_` are the same.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The first column of `/proc/modules`.
pub fn parse_proc_modules(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(normalize)
        .collect()
}

/// Module names from `modules.builtin` (`kernel/net/netfilter/nf_nat.ko`) or `modules.dep`
/// (`kernel/net/netfilter/nf_nat.ko.xz: kernel/…`).
pub fn parse_module_list(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter_map(|path| {
            let file = path.trim().rsplit('/').next()?;
            let (stem, _) = file.split_once(".ko")?;
            Some(normalize(stem))
        })
        .collect()
}

/// `CONFIG_X=value` lines; `# CONFIG_X is not set` and comments leave X out.
pub fn parse_config(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

fn read_config(release: &str) -> Option<(HashMap<String, String>, String)> {
    if let Some(text) = fs::read("/proc/config.gz").ok().and_then(|gz| gunzip(&gz)) {
        return Some((
            parse_config(&String::from_utf8_lossy(&text)),
            "/proc/config.gz".into(),
        ));
    }
    let boot = format!("/boot/config-{release}");
    let text = fs::read_to_string(&boot).ok()?;
    Some((parse_config(&text), boot))
}

/// The contents of a gzip file (RFC 1952): its header skipped, its deflate stream inflated.
pub fn gunzip(gz: &[u8]) -> Option<Vec<u8>> {
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    const FHCRC: u8 = 2;
    if gz.len() < 18 || gz[0] != 0x1f || gz[1] != 0x8b || gz[2] != 8 {
        return None;
    }
    let flags = gz[3];
    let mut at = 10;
    if flags & FEXTRA != 0 {
        let len = usize::from(u16::from_le_bytes([*gz.get(at)?, *gz.get(at + 1)?]));
        at += 2 + len;
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            at += gz.get(at..)?.iter().position(|&b| b == 0)? + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    miniz_oxide::inflate::decompress_to_vec(gz.get(at..)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.18.44-fc-v769"), Some((6, 18, 44)));
        assert_eq!(parse_version("5.10.0-28-amd64"), Some((5, 10, 0)));
        assert_eq!(parse_version("4.19"), Some((4, 19, 0)));
        assert_eq!(parse_version("6.6.0-rc1"), Some((6, 6, 0)));
        assert_eq!(parse_version("6.1-rc7+"), Some((6, 1, 0)));
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("linux"), None);
        assert!(parse_version("6.6.0").unwrap() >= (6, 6, 0));
        assert!(parse_version("6.5.13").unwrap() < (6, 6, 0));
    }

    #[test]
    fn proc_modules() {
        let text = "nf_nat 61440 2 nft_chain_nat,xt_MASQUERADE, Live 0xffffffffc0a1b000\n\
                    iptable_nat 16384 1 - Live 0x0000000000000000\n\
                    nf_conntrack 188416 4 xt_conntrack,nf_nat, Live 0xffffffffc0a3c000\n";
        let m = parse_proc_modules(text);
        assert!(m.contains("nf_nat") && m.contains("iptable_nat") && m.contains("nf_conntrack"));
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn module_lists() {
        let builtin = "kernel/net/netfilter/nf_conntrack.ko\nkernel/net/sched/sch-ingress.ko\n";
        let b = parse_module_list(builtin);
        assert!(b.contains("nf_conntrack"));
        assert!(b.contains("sch_ingress"), "dashes become underscores");
        let dep = "kernel/net/ipv4/netfilter/iptable_nat.ko.xz: kernel/net/ipv4/netfilter/ip_tables.ko.xz kernel/net/netfilter/nf_nat.ko.xz\n\
                   kernel/net/ipv4/netfilter/ip_tables.ko.xz: kernel/net/netfilter/x_tables.ko.xz\n\
                   kernel/net/netfilter/nf_nat.ko.zst:\n";
        let d = parse_module_list(dep);
        assert_eq!(
            d,
            ["iptable_nat", "ip_tables", "nf_nat"]
                .map(String::from)
                .into_iter()
                .collect()
        );
        assert!(parse_module_list("").is_empty());
    }

    #[test]
    fn config() {
        let text = "#\n# Automatically generated file; DO NOT EDIT.\n\
                    CONFIG_NF_CONNTRACK=m\nCONFIG_NF_TABLES=y\n# CONFIG_MODULES is not set\n\
                    CONFIG_NF_CONNTRACK_MAX=\"65536\"\n";
        let c = parse_config(text);
        assert_eq!(c.get("CONFIG_NF_CONNTRACK").map(String::as_str), Some("m"));
        assert_eq!(c.get("CONFIG_NF_TABLES").map(String::as_str), Some("y"));
        assert_eq!(
            c.get("CONFIG_NF_CONNTRACK_MAX").map(String::as_str),
            Some("65536")
        );
        assert!(!c.contains_key("CONFIG_MODULES"));
    }

    fn kernel(config: &str, builtin: &str, dep: Option<&str>, loaded: Option<&str>) -> Kernel {
        Kernel {
            release: "6.1.0-test".into(),
            version: Some((6, 1, 0)),
            config: (!config.is_empty()).then(|| parse_config(config)),
            config_source: None,
            modules_dir: dep.map(|_| PathBuf::from("/lib/modules/6.1.0-test")),
            builtin: parse_module_list(builtin),
            on_disk: dep.map(parse_module_list).unwrap_or_default(),
            loaded: loaded.map(parse_proc_modules),
        }
    }

    /// Asserts that module `zz_{x}` (config `CONFIG_ZZ_{X}`) is found in state `kind`, with
    /// `text` in what is said of it.
    fn assert_module(k: &Kernel, x: &str, kind: &str, text: &str) {
        let m = k.module(
            &format!("zz_{x}"),
            &format!("CONFIG_ZZ_{}", x.to_uppercase()),
        );
        let seen = format!("{m:?}");
        assert!(
            seen.starts_with(kind) && seen.contains(text),
            "zz_{x}: {seen}, want {kind} with {text:?}"
        );
    }

    // Names no machine has in /sys/module, so that the test reads only what it is given.
    #[test]
    fn module_states() {
        let k = kernel(
            "CONFIG_MODULES=y\nCONFIG_ZZ_A=y\nCONFIG_ZZ_B=m\nCONFIG_ZZ_C=m\nCONFIG_ZZ_E=m\n",
            "kernel/zz_f.ko\n",
            Some("kernel/zz_b.ko.xz:\nkernel/zz_c.ko.xz:\n"),
            Some("zz_c 1 0 - Live 0x0\n"),
        );
        assert_module(&k, "a", "BuiltIn", "CONFIG_ZZ_A=y");
        assert_module(&k, "f", "BuiltIn", "modules.builtin");
        assert_module(&k, "b", "Available", "");
        assert_module(&k, "c", "Loaded", "");
        assert_module(&k, "d", "Missing", "is not set");
        assert_module(&k, "e", "Missing", "modules.dep does not list");

        // No module support at all (this VM's kernel): only built-in pieces exist.
        let k = kernel("CONFIG_ZZ_A=y\n", "", None, None);
        assert_module(&k, "a", "BuiltIn", "");
        assert_module(&k, "b", "Missing", "CONFIG_MODULES is not set");

        // =m without /lib/modules: cannot be loaded.
        let k = kernel("CONFIG_MODULES=y\nCONFIG_ZZ_B=m\n", "", None, Some(""));
        assert_module(&k, "b", "Missing", "does not exist");

        // Nothing readable: unknown, not missing.
        let k = kernel("", "", None, None);
        assert_module(&k, "b", "Unknown", "");
    }

    #[test]
    fn gzip() {
        // `printf 'CONFIG_X=y\n' | gzip -n`
        let gz = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x73, 0xf6, 0xf7, 0x73,
            0xf3, 0x74, 0x8f, 0x8f, 0xb0, 0xad, 0xe4, 0x02, 0x00, 0x9b, 0xa9, 0x91, 0xf7, 0x0b,
            0x00, 0x00, 0x00,
        ];
        assert_eq!(gunzip(&gz).as_deref(), Some(&b"CONFIG_X=y\n"[..]));
        assert_eq!(gunzip(b"not gzip at all, really"), None);
    }
}
