//! The one runner of netfilter's tools (`nft`, `iptables`, `iptables-save`,
//! `iptables-restore`, their `-legacy`/`-nft` variants): in the calling thread's network
//! namespace, with input on stdin, killed after a deadline, and errors that name the
//! command.

use std::{
    io::{self, Write as _},
    process::{Child, Command, ExitStatus, Stdio},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// How long a tool may take: `iptables -w` waits for the xtables lock for ever, and a hung
/// tool must not hang netfast with it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tool gave no output.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// It could not be started: most often, it is not installed.
    #[error("running `{command}` (is {program} installed? Debian: apt-get install {package})")]
    Start {
        command: String,
        program: String,
        package: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    TimedOut { command: String, timeout: Duration },
    /// It ran and failed; `stderr` is what it said.
    #[error("`{command}` failed ({status}): {}", stderr.trim())]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// Talking to it failed (its input, its output, waiting for it).
    #[error("running `{command}`")]
    Io {
        command: String,
        #[source]
        source: io::Error,
    },
}

impl ToolError {
    /// The tool is not there at all.
    pub fn not_installed(&self) -> bool {
        matches!(self, ToolError::Start { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// It failed for want of privileges.
    pub fn denied(&self) -> bool {
        const DENIED: [&str; 3] = [
            "Permission denied",
            "Operation not permitted",
            "must be root",
        ];
        matches!(self, ToolError::Failed { stderr, .. } if DENIED.iter().any(|d| stderr.contains(d)))
    }

    /// It failed saying `text` (`No such file or directory`: nft's "no such table").
    pub fn says(&self, text: &str) -> bool {
        matches!(self, ToolError::Failed { stderr, .. } if stderr.contains(text))
    }
}

/// The Debian package a tool comes in.
fn package(program: &str) -> &'static str {
    if program.starts_with("nft") {
        "nftables"
    } else {
        "iptables"
    }
}

/// Runs `argv` (nothing on stdin); its stdout.
pub fn run(argv: &[&str]) -> Result<String, ToolError> {
    run_for(argv, None, TIMEOUT)
}

/// Runs `argv` with `input` on stdin (`nft -f -`, `iptables-restore`); its stdout.
pub fn run_with_input(argv: &[&str], input: &str) -> Result<String, ToolError> {
    run_for(argv, Some(input), TIMEOUT)
}

/// Runs `argv`, `input` on stdin, killed after `timeout`; its stdout, or why there is none.
pub fn run_for(argv: &[&str], input: Option<&str>, timeout: Duration) -> Result<String, ToolError> {
    let command = argv.join(" ");
    let io_err = |source| ToolError::Io {
        command: command.clone(),
        source,
    };
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ToolError::Start {
            command: command.clone(),
            program: argv[0].to_owned(),
            package: package(argv[0]),
            source,
        })?;
    // Input and output on threads of their own: a tool may answer before it has read
    // everything, and neither side may block on a full pipe while the other waits.
    let writer = input.zip(child.stdin.take()).map(|(text, mut stdin)| {
        let text = text.to_owned();
        thread::spawn(move || stdin.write_all(text.as_bytes()))
    });
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait(&mut child, timeout).map_err(io_err)?;
    let (stdout, stderr) = (joined(stdout), joined(stderr));
    let written = writer.map_or(Ok(()), |w| w.join().unwrap_or(Ok(())));
    let Some(status) = status else {
        return Err(ToolError::TimedOut { command, timeout });
    };
    if !status.success() {
        let stderr = stderr.map_err(io_err)?;
        return Err(ToolError::Failed {
            command,
            status,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        });
    }
    written.map_err(io_err)?;
    let stdout = stdout.map_err(io_err)?;
    Ok(String::from_utf8_lossy(&stdout).into_owned())
}

/// The child's exit status, or `None` when it outlived `timeout` (it is killed then).
fn wait(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let waited = start.elapsed();
        if waited >= timeout {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        // Most runs take milliseconds: look often at first, then less.
        let nap = if waited < Duration::from_millis(100) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(10)
        };
        thread::sleep(nap);
    }
}

type Drained = Option<JoinHandle<io::Result<Vec<u8>>>>;

fn drain(pipe: Option<impl io::Read + Send + 'static>) -> Drained {
    pipe.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            p.read_to_end(&mut buf)?;
            Ok(buf)
        })
    })
}

fn joined(d: Drained) -> io::Result<Vec<u8>> {
    match d {
        None => Ok(Vec::new()),
        Some(h) => h
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a reader thread panicked"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_input_and_failures_name_the_command() {
        assert_eq!(run(&["echo", "ruleset"]).unwrap(), "ruleset\n");
        assert_eq!(
            run_with_input(&["cat"], "table ip x {}\n").unwrap(),
            "table ip x {}\n"
        );
        let e = run(&[
            "sh",
            "-c",
            "echo 'Error: No such file or directory' >&2; exit 1",
        ])
        .unwrap_err();
        assert!(e.says("No such file or directory") && !e.denied(), "{e:?}");
        assert_eq!(
            e.to_string(),
            "`sh -c echo 'Error: No such file or directory' >&2; exit 1` failed (exit status: \
             1): Error: No such file or directory"
        );
        let e = run(&[
            "sh",
            "-c",
            "echo 'iptables: Permission denied (you must be root).' >&2; false",
        ])
        .unwrap_err();
        assert!(e.denied(), "{e:?}");
        let e = run(&["nft-hl8-not-a-tool", "list", "ruleset"]).unwrap_err();
        assert!(e.not_installed());
        assert_eq!(
            e.to_string(),
            "running `nft-hl8-not-a-tool list ruleset` (is nft-hl8-not-a-tool installed? \
             Debian: apt-get install nftables)"
        );
    }

    #[test]
    fn a_tool_that_hangs_is_killed() {
        let started = Instant::now();
        let e = run_for(&["sleep", "30"], None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ToolError::TimedOut { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // A tool that never reads its input is killed as well, input or not.
        let e = run_for(
            &["sleep", "30"],
            Some(&"x".repeat(1 << 20)),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("`sleep 30` did not finish within 200ms"),
            "{e}"
        );
    }
}
