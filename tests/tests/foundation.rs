//! The programs attached in a namespace topology see real traffic: `ping` from a container to
//! the outside passes through all four hooks, and the per-CPU counters show it.

use netfast::{
    Dataplane, InterfaceRole,
    common::{Hook, config::NetInfo},
    netns::NetnsGuard,
};
use netfast_tests::{
    Topology, require_root,
    topology::{BRIDGE, OUTSIDE_ADDR, UPLINK},
};

#[test]
fn ping_through_attached_programs_is_counted_on_every_hook() {
    require_root();
    let topo = Topology::builder().containers(1).route_back().build();
    let dataplane = {
        let _in_host = NetnsGuard::enter(topo.host.name()).expect("enter the host namespace");
        let mut dp = Dataplane::load().expect("load the dataplane");
        dp.attach(BRIDGE, InterfaceRole::Bridge)
            .expect("attach to the bridge");
        dp.attach(UPLINK, InterfaceRole::Uplink)
            .expect("attach to the uplink");
        // The containers' subnet, routed (no translation): the bridge's program drops a
        // container's packet whose source is no network of that bridge.
        let ifindex = |dev: &str| -> u32 {
            topo.host
                .exec_ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
                .trim()
                .parse()
                .expect("an ifindex")
        };
        let routed = NetInfo {
            id: 1,
            flags: 0,
            uplink_ifindex: ifindex(UPLINK),
            bridge_ifindex: ifindex(BRIDGE),
            ext_addr: 0,
        };
        dp.set_network(std::net::Ipv4Addr::new(172, 18, 0, 0), 24, &routed)
            .expect("network");
        dp
    };
    let before = dataplane.stats().expect("stats");

    let out = topo.containers[0].exec_ok(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.2",
        "-W",
        "2",
        &OUTSIDE_ADDR.to_string(),
    ]);
    assert!(
        out.contains("5 received"),
        "ping did not get every reply:\n{out}"
    );

    let after = dataplane.stats().expect("stats");
    for hook in Hook::ALL {
        let packets = after.hook(hook).packets - before.hook(hook).packets;
        let bytes = after.hook(hook).bytes - before.hook(hook).bytes;
        // 5 echo requests go out (bridge ingress, uplink egress), 5 replies come back
        // (uplink ingress, bridge egress); ARP may add a few. 98 bytes per echo frame.
        assert!(
            packets >= 5 && bytes >= 5 * 98,
            "{} counted {packets} packets / {bytes} bytes for 5 pings",
            hook.name()
        );
    }
    drop(dataplane);
}
