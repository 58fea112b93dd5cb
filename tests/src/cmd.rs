//! Running real clients and tools (ip, ping, curl, …) with errors that say what failed.

use std::{
    io::Read,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex},
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
    success_stdout(&argv.join(" "), &run(argv), "")
}

/// The stdout of `command`, which printed `out`; panics with its status, stdout, stderr and
/// `more` (what else explains a failure) if it failed.
pub fn success_stdout(command: &str, out: &Output, more: &str) -> String {
    assert!(
        out.status.success(),
        "`{command}` failed ({}):\nstdout:\n{}\nstderr:\n{}{more}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS ARGV…`: `argv` run in network namespace `ns`.
pub fn in_netns<'a>(ns: &'a str, argv: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    full
}

/// [`run_ok`] of `argv` in network namespace `ns`.
pub fn run_in(ns: &str, argv: &[&str]) -> String {
    run_ok(&in_netns(ns, argv))
}

/// One ping from namespace `ns` to `addr`, answered within two seconds; panics if it is not.
pub fn ping(ns: &str, addr: &str) -> String {
    run_in(ns, &["ping", "-c", "1", "-W", "2", addr])
}

/// Three pings 0.2 s apart from namespace `ns` to `addr`: ping's output, whether or not
/// they were answered (the caller says how many must be).
pub fn pings(ns: &str, addr: &str) -> String {
    let out = run(&in_netns(
        ns,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", addr],
    ));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `argv` for at most `timeout`: its output whatever its exit status, or, when it had
/// to be killed, an error that names it with what it printed. For a caller that goes on
/// after a failure (a benchmark's measurement), where the helpers above panic; like
/// [`Background::spawn`] it panics only if `argv[0]` cannot be started at all.
pub fn run_for(argv: &[&str], timeout: Duration) -> Result<Output, TimedOut> {
    let mut child = Background::spawn(argv);
    if child.exits_within(timeout) {
        return Ok(child.finish());
    }
    let output = child.stop();
    Err(TimedOut {
        command: argv.join(" "),
        timeout,
        output,
    })
}

/// A command [`run_for`] killed.
#[derive(Debug)]
pub struct TimedOut {
    pub command: String,
    pub timeout: Duration,
    /// What it printed before.
    pub output: Output,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` did not finish within {:?} and was killed; it printed: {}{}",
            self.command,
            self.timeout,
            String::from_utf8_lossy(&self.output.stderr).trim(),
            String::from_utf8_lossy(&self.output.stdout).trim()
        )
    }
}

impl std::error::Error for TimedOut {}

/// A background process (a server, a watcher) killed when dropped. What it prints is
/// collected as it comes, so a test can wait for a line instead of sleeping.
pub struct Background {
    child: Child,
    what: String,
    stdout: Collected,
    stderr: Collected,
}

type Collected = (Arc<Mutex<Vec<u8>>>, Option<thread::JoinHandle<()>>);

fn collect(mut from: impl Read + Send + 'static) -> Collected {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let into = Arc::clone(&buf);
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(&chunk[..n]);
        }
    });
    (buf, Some(reader))
}

fn text(c: &Collected) -> String {
    String::from_utf8_lossy(
        &c.0.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

impl Background {
    pub fn spawn(argv: &[&str]) -> Self {
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", argv.join(" ")));
        let stdout = collect(child.stdout.take().expect("piped stdout"));
        let stderr = collect(child.stderr.take().expect("piped stderr"));
        Background {
            child,
            what: argv.join(" "),
            stdout,
            stderr,
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`libc::SIGTERM`, say) to it, to see it stop the way a service
    /// manager stops it; [`Background::wait_exit`] then collects it.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child, which we have not yet waited for.
        unsafe { libc::kill(pid, signal) };
    }

    /// Panics if the process has already exited (it failed to start, say).
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("`{}` exited early ({status})", self.what);
        }
    }

    /// What it printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        text(&self.stdout)
    }

    /// What it printed on stderr so far.
    pub fn stderr_so_far(&self) -> String {
        text(&self.stderr)
    }

    /// Waits until its stdout or stderr satisfies `ready`; panics with what it printed
    /// (and whether it exited) after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&str, &str) -> bool,
    ) {
        let ok = wait_until(timeout, || {
            ready(&self.stdout_so_far(), &self.stderr_so_far())
        });
        if !ok {
            let exited = self.child.try_wait().ok().flatten();
            panic!(
                "`{}` did not {what} within {timeout:?}{}:\nstdout:\n{}\nstderr:\n{}",
                self.what,
                exited.map_or(String::new(), |s| format!(" (it exited: {s})")),
                self.stdout_so_far(),
                self.stderr_so_far()
            );
        }
    }

    /// Waits until a line of its stdout is a JSON object that satisfies `ready` (for the
    /// `--json` output of a long-running command).
    pub fn wait_for_json<T: serde::de::DeserializeOwned>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&T) -> bool,
    ) {
        self.wait_for(what, timeout, |out, _| {
            out.lines()
                .filter_map(|l| serde_json::from_str::<T>(l).ok())
                .any(|v| ready(&v))
        });
    }

    /// Waits until at least `n` lines of its stdout satisfy `line`.
    pub fn wait_for_lines(
        &mut self,
        what: &str,
        timeout: Duration,
        n: usize,
        mut line: impl FnMut(&str) -> bool,
    ) {
        self.wait_for(what, timeout, |out, _| {
            out.lines().filter(|l| line(l)).count() >= n
        });
    }

    /// Waits until `needle` appears on its stdout or stderr.
    pub fn wait_for_text(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(&format!("print {needle:?}"), timeout, |out, err| {
            out.contains(needle) || err.contains(needle)
        });
    }

    /// Whether it exits by itself within `timeout` (for cleanup code, which must not panic).
    pub fn exits_within(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))))
    }

    /// Waits for it to exit by itself; panics after `timeout`.
    pub fn wait_exit(mut self, timeout: Duration) -> Output {
        let exited = wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
        assert!(
            exited,
            "`{}` did not exit within {timeout:?}:\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.stdout_so_far(),
            self.stderr_so_far()
        );
        self.finish()
    }

    /// Stops the process and returns what it printed.
    pub fn stop(mut self) -> Output {
        let _ = self.child.kill();
        self.finish()
    }

    fn finish(&mut self) -> Output {
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.what));
        for c in [&mut self.stdout, &mut self.stderr] {
            if let Some(reader) = c.1.take() {
                let _ = reader.join();
            }
        }
        Output {
            status,
            stdout: std::mem::take(
                &mut *self
                    .stdout
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
            stderr: std::mem::take(
                &mut *self
                    .stderr
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            ),
        }
    }
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
