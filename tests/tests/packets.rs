//! Packet tests: the real programs run through BPF_PROG_TEST_RUN on frames built with
//! etherparse; verdicts, output frames (checksums verified independently) and maps checked.

use std::net::Ipv4Addr;

use netfast::{
    common::{Hook, config::NetInfo, verdict},
    maps,
    prog_test::{
        ProgTest,
        fixture::{Case, run_cases},
        packet::{
            self, Endpoint, FROM_CONTAINER, FROM_OUTSIDE, TO_CONTAINER, TO_OUTSIDE, TcpFlags,
        },
    },
};
use netfast_tests::require_root;

const CONTAINER: Endpoint = (Ipv4Addr::new(172, 18, 0, 2), 40000);
const SERVER: Endpoint = (Ipv4Addr::new(198, 51, 100, 2), 80);

/// 172.18.0.0/24 as a routed network (no masquerade) whose bridge is the test device: the
/// host every program then passes through. (A container's packets must come from a network
/// of the bridge they arrive on: with none, the bridge's program drops them as forged.)
fn routed_network(t: &mut ProgTest) -> Result<(), String> {
    let info = NetInfo {
        id: 1,
        flags: 0,
        uplink_ifindex: 1,
        bridge_ifindex: 1,
        ext_addr: 0,
    };
    maps::set_network(t.ebpf_mut(), Ipv4Addr::new(172, 18, 0, 0), 24, &info)
        .map_err(|e| e.to_string())
}

/// Frames of every kind the pass-through must leave alone.
fn frames(macs: packet::Macs, from: Endpoint, to: Endpoint) -> Vec<(&'static str, Vec<u8>)> {
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&macs.src);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&macs.src);
    arp.extend_from_slice(&from.0.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&to.0.octets());
    vec![
        (
            "tcp syn",
            packet::tcp(macs, from, to, TcpFlags::SYN, 1, 0, b""),
        ),
        (
            "tcp data",
            packet::tcp(macs, from, to, TcpFlags::PSH_ACK, 2, 7, &[0xab; 1000]),
        ),
        ("udp", packet::udp(macs, from, to, b"hello over udp")),
        (
            "icmp echo",
            packet::icmp_echo(macs, from.0, to.0, false, from.1, 1, &[0x5a; 56]),
        ),
        ("arp", arp),
    ]
}

#[test]
fn pass_through_programs_leave_every_frame_alone_and_count_it() {
    require_root();
    let mut cases = Vec::new();
    for (hook, macs, from, to) in [
        (Hook::BridgeIngress, FROM_CONTAINER, CONTAINER, SERVER),
        (Hook::BridgeEgress, TO_CONTAINER, SERVER, CONTAINER),
        (Hook::UplinkIngress, FROM_OUTSIDE, SERVER, CONTAINER),
        (Hook::UplinkEgress, TO_OUTSIDE, CONTAINER, SERVER),
    ] {
        for (kind, frame) in frames(macs, from, to) {
            let len = frame.len() as u64;
            cases.push(
                Case::new(format!("{kind} through {}", hook.name()), hook, frame)
                    .setup(routed_network)
                    .check(move |t: &ProgTest, _| {
                        let stats = t.stats().map_err(|e| e.to_string())?;
                        let seen = stats.hook(hook);
                        if seen.packets != 1 || seen.bytes != len {
                            return Err(format!(
                                "{} counted {seen:?}, expected 1 packet of {len} bytes",
                                hook.name()
                            ));
                        }
                        let others: u64 = Hook::ALL
                            .iter()
                            .filter(|h| **h != hook)
                            .map(|h| stats.hook(*h).packets)
                            .sum();
                        if others != 0 {
                            return Err(format!("other hooks counted {others} packets"));
                        }
                        Ok(())
                    }),
            );
        }
    }
    run_cases(cases);
}

#[test]
fn the_harness_catches_a_wrong_verdict_and_a_changed_frame() {
    require_root();
    // The harness itself must fail when a program misbehaves: expect what the pass-through
    // does not do and check that the run is reported as failed.
    let frame = packet::udp(FROM_CONTAINER, CONTAINER, SERVER, b"x");
    let wrong_verdict = Case::new("expects a drop", Hook::BridgeIngress, frame.clone())
        .setup(routed_network)
        .dropped();
    let mut other = frame.clone();
    other[30] ^= 1;
    let wrong_frame = Case::new("expects another frame", Hook::BridgeIngress, frame)
        .setup(routed_network)
        .output(other);
    for case in [wrong_verdict, wrong_frame] {
        let failed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_cases(vec![case])));
        assert!(
            failed.is_err(),
            "the harness accepted a case the program does not satisfy"
        );
    }
}

#[test]
fn repeat_mode_runs_the_program_that_many_times_and_reports_ns_per_packet() {
    require_root();
    let mut t = ProgTest::load().expect("load the eBPF programs");
    let frame = packet::tcp(TO_OUTSIDE, CONTAINER, SERVER, TcpFlags::ACK, 5, 5, &[0; 64]);
    let per_run = t.time(Hook::UplinkEgress, &frame, 1000).expect("timed run");
    let stats = t.stats().expect("stats");
    assert_eq!(stats.hook(Hook::UplinkEgress).packets, 1000);
    assert!(per_run.as_nanos() > 0, "the kernel reported no time");
    let run = t.run(Hook::UplinkEgress, &frame).expect("run");
    assert_eq!(run.verdict, verdict::NEXT);
    println!(
        "uplink_egress pass-through: {} ns/packet",
        per_run.as_nanos()
    );
}
