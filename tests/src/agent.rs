//! `netfast agent` in a test's host namespace: started, waited for, scraped, stopped.

use std::time::Duration;

use crate::{Background, TestNetns, in_netns, netfast_cli::netfast_bin};

/// Where the agents of the tests serve their metrics, inside the test's host namespace.
pub const METRICS_ADDR: &str = "127.0.0.1:9431";

/// A running agent; killed when dropped (drop it before the `Netfast` whose `down` cleans
/// the host up, so that its lock file goes with the rest).
pub struct Agent {
    pub process: Background,
    host: String,
}

impl Agent {
    /// Starts `netfast --netns <host> agent --metrics METRICS_ADDR` with passes every
    /// second, and waits until it serves.
    pub fn start(host: &TestNetns) -> Agent {
        Agent::start_with(host, &[])
    }

    /// As [`Agent::start`], with more arguments.
    pub fn start_with(host: &TestNetns, extra: &[&str]) -> Agent {
        Agent::start_behind(host, &[], extra)
    }

    /// As [`Agent::start_with`], run behind `prefix` (`unshare`, `setpriv`: the sandbox a
    /// service manager puts it in).
    pub fn start_behind(host: &TestNetns, prefix: &[&str], extra: &[&str]) -> Agent {
        let bin = netfast_bin();
        let mut argv = prefix.to_vec();
        argv.extend([
            bin.to_str().expect("a UTF-8 path"),
            "--netns",
            host.name(),
            "agent",
            "--metrics",
            METRICS_ADDR,
        ]);
        if !extra.contains(&"--resync") {
            argv.extend(["--resync", "1"]);
        }
        argv.extend_from_slice(extra);
        let mut process = Background::spawn(&argv);
        process.wait_for_text("netfast agent: serving", Duration::from_secs(20));
        Agent {
            process,
            host: host.name().to_owned(),
        }
    }

    /// What `/metrics` says now.
    pub fn metrics(&self) -> String {
        let url = format!("http://{METRICS_ADDR}/metrics");
        let out = crate::run(&in_netns(
            &self.host,
            &["curl", "-sf", "--max-time", "5", &url],
        ));
        assert!(
            out.status.success(),
            "curl {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The value of the sample of `name` whose labels include `labels`, if there is one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        sample(&self.metrics(), name, labels)
    }
}

/// The value of the sample of `name` with (at least) `labels` in Prometheus text `text`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let have = rest.trim_end_matches('}');
        let all = labels
            .iter()
            .all(|(k, v)| have.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}
