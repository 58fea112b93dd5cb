//! Running real clients and tools (ip, ping, curl, …) with errors that say what failed.

use std::{
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

/// Runs `argv`, returning its output whatever its exit status.
pub fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", argv.join(" ")))
}

/// Runs `argv` and returns its stdout; panics with stdout and stderr if it fails.
pub fn run_ok(argv: &[&str]) -> String {
    let out = run(argv);
    if !out.status.success() {
        panic!(
            "`{}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A background process (a server, a watcher) killed when dropped.
pub struct Background {
    child: Child,
    what: String,
}

impl Background {
    pub fn spawn(argv: &[&str]) -> Self {
        let child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")));
        Background {
            child,
            what: argv.join(" "),
        }
    }

    /// Panics if the process has already exited (it failed to start, say).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("`{}` exited early ({status})", self.what);
        }
    }

    /// Stops the process and returns what it printed.
    pub fn stop(mut self) -> Output {
        let _ = self.child.kill();
        let child = std::mem::replace(&mut self.child, dummy_child());
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.what))
    }
}

fn dummy_child() -> Child {
    Command::new("true").spawn().expect("`true` runs")
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
