//! `netfast monitor --log`: the programs' debug records (aya-log). Only programs built with
//! netfast's `ebpf-log` feature write them; a default build has no logging code on the
//! packet path, and `monitor --log` says how to get it.

use std::time::Duration;

use netfast_tests::{
    Netfast,
    netfast_cli::{LogEventRow, ebpf_log_netfast_bin},
    require_root,
    web::web_on,
};

#[test]
fn monitor_log_shows_the_debug_records_of_an_ebpf_log_build() {
    require_root();
    let w = web_on("ebpf", &[]);
    w.route_subnet_from_outside();
    // The default build's programs write nothing: refused, naming the feature and the way.
    let err = w.nf.fails(&["monitor", "--log"]);
    assert!(
        err.contains("ebpf-log") && err.contains("netfast upgrade"),
        "{err}"
    );
    // The same dataplane, its programs replaced by the logging build's.
    let logging = Netfast::with_bin(&w.topo.host, ebpf_log_netfast_bin());
    logging.ok(&["upgrade"]);
    let mut monitor = w.nf.spawn(&["monitor", "--log", "--json"]);
    monitor.wait_for_text(
        "netfast monitor: watching debug records",
        Duration::from_secs(10),
    );
    // Straight to the masqueraded container's address, from outside: a drop, logged.
    w.assert_direct_access_dropped();
    let logged = |d: &LogEventRow| {
        d.event == "LOG"
            && d.level == "DEBUG"
            && d.message == "uplink_ingress: drop (direct_access)"
    };
    monitor.wait_for_json("log the direct access", Duration::from_secs(10), logged);
    drop(monitor);
    // Back to the default build, so that its `down` (when the guard drops) is at home.
    w.nf.ok(&["upgrade"]);
}
