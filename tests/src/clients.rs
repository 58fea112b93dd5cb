//! Real clients and servers run in test namespaces: whether a server listens yet, and curl.

use std::time::Duration;

use crate::{
    cmd::{Background, run, wait_until},
    topology::OUTSIDE_ADDR,
};

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

/// A web server (python's http.server) on OUTSIDE_ADDR:8000 in namespace `outside`, listening
/// when this returns; stopped when the value is dropped.
pub fn outside_web_server(outside: &str) -> Background {
    let server = Background::spawn(&[
        "ip",
        "netns",
        "exec",
        outside,
        "python3",
        "-m",
        "http.server",
        "8000",
        "--bind",
        &OUTSIDE_ADDR.to_string(),
    ]);
    wait_listening(outside, "tcp", 8000, "the outside http.server");
    server
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
