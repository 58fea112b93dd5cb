//! A real dockerd inside a test's host namespace, with `netfast docker-plugin` as its network
//! driver, private to the test and removed with it.
//!
//! As ../shared/docker-in-netns.md describes, with one change so that dockerd can restart:
//! - a directory of the test's own (`/tmp/netfast-docker-<pid>-<n>`) holds dockerd's data
//!   root, exec root, socket, pid file and config (`"iptables": false`, `"bridge": "none"`,
//!   `"live-restore": true`), and a `run/` bound over /run in a private mount namespace, where
//!   `/run/docker/plugins/netfast.sock` leads to the plugin's socket: the machine's
//!   /run/docker, /run/containerd and plugin directory are never touched;
//! - that mount namespace is held by a process of its own (a `sleep`), and dockerd is started
//!   into it with `nsenter --mount=… --net=…`, each time: the namespaces Docker mounts for its
//!   containers live there, and outlive a dockerd that stops, as they do on a real host;
//! - containers go under a cgroup parent of the test's own, so that whatever a failed test
//!   leaves running is found and stopped.
//!
//! The image is made from busybox-static with `docker import` (no registry is reachable).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    cmd::{Background, run, wait_until},
    netfast_cli::netfast_bin,
    netns::TestNetns,
};

/// The image the tests run: busybox (sh, httpd, wget, …) and [`INDEX`] at /www/index.html.
pub const IMAGE: &str = "netfast-busybox:test";
/// What `httpd -h /www` serves.
pub const INDEX: &str = "hello from a container Docker runs on netfast";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long dockerd may take to start or stop.
const DAEMON_TIMEOUT: Duration = Duration::from_mins(1);

/// The docker CLI of the daemon's package (Debian's docker.io puts both in /usr), else the
/// one on PATH.
fn docker_cli() -> String {
    for cli in ["/usr/bin/docker", "/usr/sbin/docker"] {
        if Path::new(cli).is_file() {
            return cli.into();
        }
    }
    "docker".into()
}

fn on_path(tool: &str) -> bool {
    run(&["sh", "-c", &format!("command -v {tool}")])
        .status
        .success()
}

/// dockerd, its plugin and the mount namespace they share, for one test host.
pub struct Docker {
    dir: PathBuf,
    host: String,
    /// The netfast binary the plugin runs.
    netfast: PathBuf,
    /// The cgroup parent of its containers.
    cgroup: String,
    holder: Option<Background>,
    daemon: Option<Background>,
    plugin: Option<Background>,
    /// What stopped plugins and daemons printed, for failure messages.
    earlier: String,
}

impl Docker {
    /// Starts the plugin and dockerd in `host` and imports [`IMAGE`]; panics saying why when
    /// Docker cannot run here.
    pub fn start(host: &TestNetns) -> Docker {
        for (tool, package) in [
            ("dockerd", "docker.io"),
            ("busybox", "busybox-static"),
            ("nsenter", "util-linux"),
            ("unshare", "util-linux"),
            ("tar", "tar"),
        ] {
            assert!(
                on_path(tool),
                "`{tool}` is not installed: the Docker tests need it (`cargo xtask setup` \
                 installs {package})"
            );
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("netfast-docker-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("run")).expect("create the test's docker directory");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod 0700");
        let mut docker = Docker {
            dir,
            host: host.name().to_owned(),
            netfast: netfast_bin(),
            cgroup: format!("netfast-test-{id}"),
            holder: None,
            daemon: None,
            plugin: None,
            earlier: String::new(),
        };
        let d = docker.dir.display().to_string();
        let config = serde_json::json!({
            "iptables": false,
            "ip-masq": false,
            "bridge": "none",
            "live-restore": true,
            "userland-proxy": false,
            "data-root": format!("{d}/root"),
            "exec-root": format!("{d}/exec"),
            "pidfile": format!("{d}/docker.pid"),
            "hosts": [format!("unix://{d}/docker.sock")],
            "storage-driver": "vfs",
            "cgroup-parent": docker.cgroup,
            // These machines cannot raise nofile to Docker's default (no CAP_SYS_RESOURCE).
            "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 20000, "Soft": 20000}},
        });
        fs::write(docker.dir.join("daemon.json"), config.to_string()).expect("daemon.json");
        let mut holder = Background::spawn(&[
            "nsenter",
            &format!("--net=/run/netns/{}", docker.host),
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!(
                "mount --bind {d}/run /run && mkdir -p /run/docker/plugins && \
                 ln -s {d}/netfast.sock /run/docker/plugins/netfast.sock && \
                 echo mount-namespace-ready && exec sleep infinity"
            ),
        ]);
        holder.wait_for_text("mount-namespace-ready", Duration::from_secs(10));
        docker.holder = Some(holder);
        docker.start_plugin();
        docker.start_daemon();
        docker.import_image();
        docker
    }

    /// The test's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plugin's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("netfast.sock")
    }

    /// Starts `netfast --netns <host> docker-plugin`, which asks this dockerd for its networks
    /// when it answers, and waits until it listens.
    pub fn start_plugin(&mut self) {
        assert!(self.plugin.is_none(), "the plugin already runs");
        if let Err(e) = self.try_start_plugin() {
            panic!("{e}");
        }
    }

    fn try_start_plugin(&mut self) -> Result<(), String> {
        let socket = self.socket();
        let dockerd = self.dir.join("docker.sock");
        let plugin = Background::spawn(&[
            self.netfast.to_str().expect("a UTF-8 path"),
            "--netns",
            &self.host,
            "docker-plugin",
            "--socket",
            socket.to_str().expect("a UTF-8 path"),
            "--docker-socket",
            dockerd.to_str().expect("a UTF-8 path"),
        ]);
        let up = wait_until(Duration::from_secs(20), || {
            plugin.stdout_so_far().contains("listening on")
        });
        let printed = plugin.stdout_so_far() + &plugin.stderr_so_far();
        self.plugin = Some(plugin);
        if up {
            Ok(())
        } else {
            Err(format!("the plugin did not start listening:\n{printed}"))
        }
    }

    /// Stops the plugin as systemd does (SIGTERM); returns what it printed. Panics unless it
    /// stops cleanly.
    pub fn stop_plugin(&mut self) -> Output {
        let plugin = self.plugin.take().expect("the plugin runs");
        plugin.signal(libc::SIGTERM);
        let out = plugin.wait_exit(Duration::from_secs(20));
        self.keep("plugin", &out);
        assert!(
            out.status.success(),
            "the plugin did not stop cleanly ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Everything the plugin printed, this run and earlier ones.
    pub fn plugin_output(&self) -> String {
        let now = self
            .plugin
            .as_ref()
            .map(|p| p.stdout_so_far() + &p.stderr_so_far())
            .unwrap_or_default();
        format!("{}{now}", self.earlier)
    }

    /// Starts dockerd in the held mount namespace and the host's network namespace; panics
    /// with its output when it does not come up.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "dockerd already runs");
        let holder = self
            .holder
            .as_ref()
            .expect("the mount namespace is held")
            .pid();
        let config = self.dir.join("daemon.json");
        let mut daemon = Background::spawn(&[
            "nsenter",
            &format!("--mount=/proc/{holder}/ns/mnt"),
            &format!("--net=/run/netns/{}", self.host),
            "dockerd",
            "--config-file",
            config.to_str().expect("a UTF-8 path"),
        ]);
        daemon.wait_for("start (dockerd)", DAEMON_TIMEOUT, |_, err| {
            err.contains("API listen on")
        });
        self.daemon = Some(daemon);
        assert!(
            wait_until(DAEMON_TIMEOUT, || self
                .docker(&["version"])
                .status
                .success()),
            "dockerd listens but `docker version` fails:\n{}",
            String::from_utf8_lossy(&self.docker(&["version"]).stderr)
        );
    }

    /// Stops dockerd with SIGTERM and waits for it: with live-restore, its containers go on.
    pub fn stop_daemon(&mut self) {
        let daemon = self.daemon.take().expect("dockerd runs");
        daemon.signal(libc::SIGTERM);
        let out = daemon.wait_exit(DAEMON_TIMEOUT);
        self.keep("dockerd", &out);
    }

    fn keep(&mut self, who: &str, out: &Output) {
        self.earlier.push_str(&format!(
            "--- {who} (stopped, {}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(docker_cli());
        cmd.arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::null());
        cmd
    }

    /// `docker -H <its socket> args…`, whatever its status.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run docker")
    }

    /// `docker args…`: its stdout, or a panic with everything it, the plugin and dockerd
    /// printed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        let more = if out.status.success() {
            String::new()
        } else {
            format!("\n--- plugin:\n{}", self.plugin_output())
        };
        crate::cmd::success_stdout(&format!("docker {}", args.join(" ")), &out, &more)
            .trim()
            .to_owned()
    }

    /// `docker args…` with a time limit, for cleanup: its stdout, empty when it failed.
    fn docker_within(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("timeout");
        cmd.arg("60")
            .arg(docker_cli())
            .arg("-H")
            .arg(format!("unix://{}/docker.sock", self.dir.display()))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("cli"))
            .stdin(Stdio::null());
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `docker args…` expecting failure: its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "`docker {}` succeeded but should have failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Builds [`IMAGE`] from busybox-static.
    fn import_image(&self) {
        let rootfs = self.dir.join("image");
        for sub in ["bin", "www", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(sub)).expect("image directories");
        }
        let busybox = String::from_utf8_lossy(&run(&["sh", "-c", "command -v busybox"]).stdout)
            .trim()
            .to_owned();
        fs::copy(&busybox, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in ["sh", "httpd", "wget", "timeout", "sleep", "cat", "ip", "nc"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet link");
        }
        fs::write(rootfs.join("www/index.html"), format!("{INDEX}\n")).expect("index.html");
        let tar = self.dir.join("image.tar");
        crate::run_ok(&[
            "tar",
            "-C",
            rootfs.to_str().expect("a UTF-8 path"),
            "-cf",
            tar.to_str().expect("a UTF-8 path"),
            ".",
        ]);
        self.ok(&["import", tar.to_str().expect("a UTF-8 path"), IMAGE]);
    }

    /// Kills what runs in the containers' cgroups and removes the cgroups.
    fn sweep_cgroups(&self) {
        let mut dirs = Vec::new();
        for controller in fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let top = controller.path().join(&self.cgroup);
            if top.is_dir() {
                collect_dirs(&top, &mut dirs);
            }
        }
        let top = Path::new("/sys/fs/cgroup").join(&self.cgroup);
        if top.is_dir() {
            collect_dirs(&top, &mut dirs);
        }
        for d in &dirs {
            for pid in fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
            {
                let _ = run(&["kill", "-9", pid]);
            }
        }
        // Deepest first; a cgroup empties a moment after its last process dies.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            wait_until(Duration::from_secs(5), || {
                fs::remove_dir(d).is_ok() || !d.exists()
            });
        }
    }

    /// Kills the processes started for this test that outlived dockerd (containerd, shims):
    /// those whose command line names the test's directory.
    fn sweep_processes(&self) {
        let needle = self.dir.display().to_string();
        let keep: Vec<u32> = [&self.holder, &self.plugin]
            .iter()
            .filter_map(|b| b.as_ref().map(Background::pid))
            .collect();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if !keep.contains(&pid)
                && pid != std::process::id()
                && String::from_utf8_lossy(&cmdline).contains(&needle)
            {
                let _ = run(&["kill", "-9", &pid.to_string()]);
            }
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            collect_dirs(&e.path(), out);
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // Docker's own removal first, through the plugin, so that netfast hears of it.
        if self.daemon.is_some() {
            if self.plugin.is_none()
                && let Err(e) = self.try_start_plugin()
            {
                eprintln!("{e}");
            }
            let containers = self.docker_within(&["ps", "-aq"]);
            let ids: Vec<&str> = containers.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                self.docker_within(&args);
            }
            let networks =
                self.docker_within(&["network", "ls", "-q", "--filter", "driver=netfast"]);
            for id in networks.split_whitespace() {
                self.docker_within(&["network", "rm", id]);
            }
            if let Some(mut daemon) = self.daemon.take() {
                daemon.signal(libc::SIGTERM);
                if !daemon.exits_within(DAEMON_TIMEOUT) {
                    eprintln!("dockerd did not stop within {DAEMON_TIMEOUT:?}; killing it");
                }
                drop(daemon.stop());
            }
        }
        self.sweep_cgroups();
        self.sweep_processes();
        if let Some(mut plugin) = self.plugin.take() {
            plugin.signal(libc::SIGTERM);
            if !plugin.exits_within(Duration::from_secs(20)) {
                eprintln!("the plugin did not stop within 20 s; killing it");
            }
            drop(plugin.stop());
        }
        if let Some(holder) = self.holder.take() {
            drop(holder.stop());
        }
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && self.dir.exists()
        {
            eprintln!("warning: could not remove {}: {e}", self.dir.display());
        }
    }
}

/// A stand-in for dockerd's API on a unix socket of the test's own: every request, answered
/// as dockerd answers `GET /networks`, with its built-in networks and networks of the IDs
/// given (what `netfast docker-plugin` asks of dockerd at its start). The socket goes with
/// it.
pub struct FakeDockerd {
    path: crate::removed::Removed,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeDockerd {
    /// Serves at `path` a list of networks with IDs `ids`.
    pub fn listing(path: &str, ids: &[&str]) -> FakeDockerd {
        let (release, held) = std::sync::mpsc::channel();
        drop(release);
        FakeDockerd::held(path, ids, held)
    }

    /// As [`FakeDockerd::listing`], but the first answer waits until `held` gives (or its
    /// sender goes): to let a call reach the plugin between its question and the answer.
    pub fn held(path: &str, ids: &[&str], held: std::sync::mpsc::Receiver<()>) -> FakeDockerd {
        use std::io::{Read, Write};
        let path = crate::removed::Removed::at(path);
        let _ = fs::remove_file(&*path);
        let listener = std::os::unix::net::UnixListener::bind(&*path)
            .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        // With the networks every dockerd has, which the plugin looks for.
        let mut networks = vec![
            serde_json::json!({"Id": "1".repeat(64), "Name": "host", "Driver": "host"}),
            serde_json::json!({"Id": "2".repeat(64), "Name": "none", "Driver": "null"}),
        ];
        networks.extend(
            ids.iter()
                .map(|id| serde_json::json!({"Id": id, "Name": id, "Driver": "netfast"})),
        );
        let body = serde_json::to_string(&networks).expect("JSON");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = std::sync::Arc::clone(&stop);
        // Not joined: it may wait for a release that a failed test never gives.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                // The request, up to the end of its header.
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let _ = held.recv();
                let _ = write!(
                    conn,
                    "HTTP/1.0 200 OK\r\nServer: Docker/28.2.2 (linux)\r\n\
                     Content-Type: application/json\r\n\r\n{body}"
                );
            }
        });
        FakeDockerd { path, stop }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FakeDockerd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the thread from its accept.
        let _ = std::os::unix::net::UnixStream::connect(&*self.path);
    }
}
