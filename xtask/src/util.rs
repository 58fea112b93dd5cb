use std::{
    env,
    path::PathBuf,
    process::{Command, Stdio},
};

/// A failure, already worded for the user.
#[derive(Debug)]
pub struct Fail(pub String);

pub struct Cmd {
    cmd: Command,
    shown: String,
}

impl Cmd {
    pub fn new(program: &str) -> Self {
        let mut cmd = Command::new(program);
        cmd.current_dir(workspace_root());
        Cmd {
            cmd,
            shown: program.to_owned(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.cmd.args(args);
        for a in args {
            self.shown.push(' ');
            self.shown.push_str(a);
        }
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Runs with inherited stdio; fails naming the command.
    pub fn run(mut self) -> Result<(), Fail> {
        let status = self
            .cmd
            .status()
            .map_err(|e| Fail(format!("cannot run `{}`: {e}", self.shown)))?;
        if status.success() {
            Ok(())
        } else {
            Err(Fail(format!("`{}` failed ({status})", self.shown)))
        }
    }

    /// Runs quietly and returns stdout if it succeeded.
    pub fn output(mut self) -> Option<String> {
        let out = self
            .cmd
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

pub fn cargo(args: &[&str]) -> Cmd {
    Cmd::new(&env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args)
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds: `CARGO_TARGET_DIR` when set (relative to the workspace
/// root, as cargo takes it from the environment when run there), else `target/`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

pub fn is_root() -> bool {
    Cmd::new("id")
        .args(&["-u"])
        .output()
        .is_some_and(|s| s.trim() == "0")
}

pub fn require_root(why: &str) -> Result<(), Fail> {
    if is_root() {
        Ok(())
    } else {
        Err(Fail(format!("this must run as root: {why}")))
    }
}

/// Network namespaces made by the test toolkit (prefix `nft`) that exist now.
pub fn leftover_namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| test_name_left(n))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` is a namespace of the lab (`nft<pid>x…`: a test's, the demo's or the
/// benchmark's) whose creating process is gone: one that a live process made belongs to a
/// run still going on (another engineer's, on a shared machine), not to a run that left it
/// behind.
fn test_name_left(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("nft") else {
        return false;
    };
    let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
    pid.is_empty() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Pins and state directories that netfast left for test and benchmark hosts (namespaces
/// named `nft…`, as the `host` file beside each state names them), and pins whose state is
/// gone.
pub fn leftover_netfast_state() -> Vec<String> {
    let list = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let ours = |key: &str| {
        let label = std::fs::read_to_string(format!("/run/netfast/{key}/host")).unwrap_or_default();
        test_name_left(key) || label.split_whitespace().any(test_name_left)
    };
    let states = list("/run/netfast");
    let mut out: Vec<String> = states
        .iter()
        .filter(|k| ours(k))
        .map(|k| format!("/run/netfast/{k}"))
        .collect();
    out.extend(
        list("/sys/fs/bpf/netfast")
            .into_iter()
            .filter(|k| ours(k) || !states.contains(k))
            .map(|k| format!("/sys/fs/bpf/netfast/{k}")),
    );
    out
}
