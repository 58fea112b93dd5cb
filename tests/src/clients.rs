//! Real clients and servers run in test namespaces: whether a server listens yet, and curl.

use std::time::Duration;

use crate::cmd::{run, wait_until};

/// Whether something in namespace `ns` listens on `proto` ("tcp" or "udp") port `port`.
pub fn listening(ns: &str, proto: &str, port: u16) -> bool {
    let flag = if proto == "udp" { "-lun" } else { "-ltn" };
    let out = run(&["ip", "netns", "exec", ns, "ss", flag]);
    String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} "))
}

/// Waits up to ten seconds for a server in `ns`; panics naming `what` if it never listens.
pub fn wait_listening(ns: &str, proto: &str, port: u16, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || listening(ns, proto, port)),
        "{what} did not start listening on {proto} port {port} in {ns}"
    );
}

/// `curl` from namespace `ns` with a three-second limit: the HTTP code, or "000" when it
/// could not connect.
pub fn curl(ns: &str, url: &str, extra: &[&str]) -> String {
    let mut argv = vec![
        "ip",
        "netns",
        "exec",
        ns,
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "3",
    ];
    argv.extend_from_slice(extra);
    argv.push(url);
    String::from_utf8_lossy(&run(&argv).stdout).into_owned()
}
