//! Network namespaces owned by a test, removed when dropped.

use std::{
    fs,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::cmd::{run, run_ok};

/// Every namespace the toolkit creates starts with this, then the creating process's pid.
pub const PREFIX: &str = "nft";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (visible to `ip netns`), deleted with everything in it — its
/// interfaces, its processes — when dropped.
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `nft<pid>x<n><role>`; `role` (a few letters) tells a human which one it is.
    pub fn new(role: &str) -> Self {
        sweep_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}x{n}{role}", std::process::id());
        run_ok(&["ip", "netns", "add", &name]);
        let ns = TestNetns { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Creates the namespace `name`, which must start with [`PREFIX`] (so that a leak is
    /// swept): for a test that plays someone making a namespace under a name it picked.
    pub fn named(name: &str) -> Self {
        assert!(
            name.starts_with(PREFIX),
            "{name} does not start with {PREFIX}"
        );
        run_ok(&["ip", "netns", "add", name]);
        TestNetns { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `argv` run inside the namespace, its output whatever its status.
    pub fn exec(&self, argv: &[&str]) -> std::process::Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// `argv` run inside the namespace; its stdout, or a panic with everything it printed.
    pub fn exec_ok(&self, argv: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run_ok(&full)
    }

    /// Runs `f` on a thread inside this namespace (see [`within`]).
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        within(&self.name, f)
    }

    /// The argv prefix that runs a command inside this namespace.
    pub fn prefix(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }
}

/// Runs `f` on a thread that has entered the network namespace `name`, for what belongs to
/// the namespace of the thread that does it: sockets, /proc/thread-self/net, the netfilter
/// tools it starts. The calling thread stays where it is; a panic in `f` comes back here.
pub fn within<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            netfast::netns::enter(name)
                .unwrap_or_else(|e| panic!("entering network namespace {name}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

fn delete(name: &str) {
    // Kill what still runs inside (servers a test started), then remove the namespace; its
    // interfaces go with it, and the veth peers in other namespaces with them.
    let pids = run(&["ip", "netns", "pids", name]);
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = run(&["kill", "-9", pid]);
    }
    let out = run(&["ip", "netns", "del", name]);
    if !out.status.success() && std::path::Path::new("/run/netns").join(name).exists() {
        eprintln!(
            "warning: could not delete network namespace {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Whether `name` was made by this toolkit in a process that no longer exists.
fn stale(name: &str) -> bool {
    let Some((pid, _)) = name
        .strip_prefix(PREFIX)
        .and_then(|rest| rest.split_once('x'))
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

fn names_in(dir: &str) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes what this toolkit's tests left behind when their process died (killed, or an
/// abort, so no destructor ran): namespaces, and netfast's pins and state for them.
fn sweep_stale() {
    for name in names_in("/run/netns").into_iter().filter(|n| stale(n)) {
        delete(&name);
    }
    // netfast keys a host by its namespace's identity and names it in a `host` file beside
    // its state: the stale ones are those whose names are a dead test process's.
    for key in names_in("/run/netfast") {
        let label = fs::read_to_string(format!("/run/netfast/{key}/host")).unwrap_or_default();
        let names: Vec<&str> = label.split_whitespace().collect();
        if stale(&key) || (!names.is_empty() && names.iter().all(|n| stale(n))) {
            // Unpinning the links detaches them; the maps go with their last user.
            let _ = fs::remove_dir_all(format!("/sys/fs/bpf/netfast/{key}"));
            let _ = fs::remove_dir_all(format!("/run/netfast/{key}"));
        }
    }
}

/// A second name for a test's namespace, as `ip netns attach` gives one: a file under
/// /run/netns with the same namespace bind-mounted on it. Removed when dropped.
pub struct NetnsAlias {
    name: String,
}

impl NetnsAlias {
    /// Names the namespace `target` (a name under /run/netns) also `name`.
    pub fn new(name: &str, target: &str) -> NetnsAlias {
        let path = format!("/run/netns/{name}");
        fs::write(&path, "").unwrap_or_else(|e| panic!("creating {path}: {e}"));
        let alias = NetnsAlias {
            name: name.to_owned(),
        };
        run_ok(&["mount", "--bind", &format!("/run/netns/{target}"), &path]);
        alias
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Points this name at another namespace, `target`.
    pub fn repoint(&self, target: &str) {
        let path = format!("/run/netns/{}", self.name);
        run_ok(&["umount", &path]);
        run_ok(&["mount", "--bind", &format!("/run/netns/{target}"), &path]);
    }
}

impl Drop for NetnsAlias {
    fn drop(&mut self) {
        let path = format!("/run/netns/{}", self.name);
        let _ = run(&["umount", &path]);
        let _ = fs::remove_file(&path);
    }
}
