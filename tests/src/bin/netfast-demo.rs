//! The demo behind `cargo xtask demo`: the default topology, built in namespaces, with
//! netfast's programs attached and real traffic through them. Everything is removed at the end.

use netfast::{Dataplane, InterfaceRole, common::Hook, netns::NetnsGuard};
use netfast_tests::{
    Topology, require_root,
    topology::{BRIDGE, OUTSIDE_ADDR, UPLINK, container_addr},
};

fn step(title: &str) {
    println!("\n== {title}");
}

fn main() {
    require_root();
    step("topology (namespaces only): container -- bridge br0 -- host -- uplink up0 -- outside");
    let topo = Topology::builder().containers(2).route_back().build();
    println!("host namespace:    {}", topo.host.name());
    println!("outside namespace: {}", topo.outside.name());
    for (i, c) in topo.containers.iter().enumerate() {
        println!("container {i}:       {} ({})", c.name(), container_addr(i));
    }

    step("attach netfast's TC programs to br0 and up0 (TCX)");
    let dataplane = {
        let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter the host namespace");
        let mut dp = Dataplane::load().expect("load the dataplane");
        dp.attach(BRIDGE, InterfaceRole::Bridge)
            .expect("attach to the bridge");
        dp.attach(UPLINK, InterfaceRole::Uplink)
            .expect("attach to the uplink");
        dp
    };
    println!("bridge_ingress/bridge_egress on {BRIDGE}, uplink_ingress/uplink_egress on {UPLINK}");

    step(&format!("ping {OUTSIDE_ADDR} from container 0"));
    print!(
        "{}",
        topo.containers[0].exec_ok(&["ping", "-c", "3", "-i", "0.2", &OUTSIDE_ADDR.to_string()])
    );
    step(&format!(
        "ping container 1 ({}) from container 0 (bridged, not routed)",
        container_addr(1)
    ));
    print!(
        "{}",
        topo.containers[0].exec_ok(&[
            "ping",
            "-c",
            "2",
            "-i",
            "0.2",
            &container_addr(1).to_string()
        ])
    );

    step("per-CPU counters, summed");
    let stats = dataplane.stats().expect("stats");
    for hook in Hook::ALL {
        let t = stats.hook(hook);
        println!(
            "{:<16} {:>6} packets {:>8} bytes",
            hook.name(),
            t.packets,
            t.bytes
        );
    }
    for d in &stats.drops {
        println!(
            "drop {:<11} {:>6} packets ({})",
            d.reason, d.packets, d.description
        );
    }

    step("clean up");
    drop(dataplane);
    drop(topo);
    println!("namespaces and programs removed");
}
