//! Real clients and servers run in test namespaces: whether a server listens yet, and curl.

use std::time::Duration;

use crate::{
    cmd::{Background, in_netns, run, wait_until},
    topology::{OUTSIDE_ADDR, UPLINK_ADDR},
};

/// Whether something in namespace `ns` listens on `proto` ("tcp" or "udp") port `port`.
pub fn listening(ns: &str, proto: &str, port: u16) -> bool {
    let flag = if proto == "udp" { "-lun" } else { "-ltn" };
    let out = run(&in_netns(ns, &["ss", flag]));
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
    let server = Background::spawn(&in_netns(
        outside,
        &[
            "python3",
            "-m",
            "http.server",
            "8000",
            "--bind",
            &OUTSIDE_ADDR.to_string(),
        ],
    ));
    wait_listening(outside, "tcp", 8000, "the outside http.server");
    server
}

/// Stops an [`outside_web_server`] and checks its log: it saw the uplink's address (the
/// containers masqueraded), and never a container's.
pub fn assert_saw_only_the_uplink(server: Background) {
    let log = server.stop();
    let log = String::from_utf8_lossy(&log.stderr);
    assert!(
        log.contains(&format!("{UPLINK_ADDR} - -")),
        "the server must see the uplink address:\n{log}"
    );
    assert!(
        !log.contains("172.18.0."),
        "a container address reached the outside:\n{log}"
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

/// A TCP echo server (socat) on `port` in namespace `ns`, listening when this returns.
pub fn echo_server(ns: &str, port: u16) -> Background {
    let listen = format!("TCP4-LISTEN:{port},fork,reuseaddr");
    let server = Background::spawn(&in_netns(ns, &["socat", &listen, "EXEC:cat"]));
    wait_listening(ns, "tcp", port, "the socat echo server");
    server
}

/// A client on one TCP connection: sends a number to `ADDR PORT` (its arguments; from
/// source port `SPORT` when a third is given) every 100 ms and prints each echo as
/// `echo N`; `gone: …` when the connection dies.
const TALKER: &str = "import socket, sys, time
n = 0
try:
    src = ('0.0.0.0', int(sys.argv[3])) if len(sys.argv) > 3 else None
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), 5, src)
    f = s.makefile()
    while True:
        s.sendall(b'%d\\n' % n)
        line = f.readline()
        if not line:
            print('gone: closed', flush=True)
            break
        print('echo', line.strip(), flush=True)
        n += 1
        time.sleep(0.1)
except Exception as e:
    print('gone:', e, flush=True)
";

/// A [`TALKER`] in namespace `ns` to `addr:port`, with its first echoes back when this
/// returns.
pub fn talker(ns: &str, addr: &str, port: u16) -> Background {
    talker_argv(ns, &[addr, &port.to_string()])
}

/// A [`talker`] from source port `sport`, for a test that picks its flow out by port.
pub fn talker_from(ns: &str, sport: u16, addr: &str, port: u16) -> Background {
    talker_argv(ns, &[addr, &port.to_string(), &sport.to_string()])
}

fn talker_argv(ns: &str, args: &[&str]) -> Background {
    let mut argv = in_netns(ns, &["python3", "-c", TALKER]);
    argv.extend_from_slice(args);
    let mut t = Background::spawn(&argv);
    t.wait_for_text("echo 2", Duration::from_secs(10));
    t
}

/// The last echo a talker printed (0 before the first).
pub fn last_echo(out: &str) -> u32 {
    out.lines()
        .filter_map(|l| l.strip_prefix("echo ")?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Waits for `more` further echoes from `talker`; panics naming `what` if its connection
/// died or it stopped talking.
pub fn talks_on(talker: &mut Background, more: u32, what: &str) {
    let from = last_echo(&talker.stdout_so_far());
    talker.wait_for(what, Duration::from_secs(15), |out, _| {
        out.contains("gone") || last_echo(out) >= from + more
    });
    let out = talker.stdout_so_far();
    assert!(
        !out.contains("gone"),
        "{what}: the connection died:\n{}",
        out.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
