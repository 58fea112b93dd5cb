//! The agent's reclaiming against the real datapath (BPF_PROG_TEST_RUN): what it removes is
//! what the programs themselves treat as gone, never what a live flow uses, and a port the
//! datapath takes over while a pass runs is never lost (two endpoints would then share it).

use std::net::Ipv4Addr;

use netfast::{
    agent::reclaim::{self, GRACE, Reclaimed, Snapshot},
    common::{Hook, config::DpConfig, nat::mapping_slack},
    maps,
    prog_test::{
        ProgTest,
        packet::{self, Endpoint, FROM_OUTSIDE, L4, TO_OUTSIDE, decode},
    },
};
use netfast_tests::{
    packets::{C1, C2, C3, DEV, EXT, load, masquerade},
    require_root,
};

const SERVER: Endpoint = (Ipv4Addr::new(203, 0, 113, 10), 53);
const SERVER2: Endpoint = (Ipv4Addr::new(203, 0, 113, 11), 53);

/// Seconds after which a UDP flow opened now, and its mapping, are dead to the agent.
const UNTIL_DEAD: u32 = DpConfig::DEFAULT_UDP + mapping_slack(DpConfig::DEFAULT_UDP) + GRACE + 5;

fn loaded() -> ProgTest {
    let mut t = load(&DpConfig::default());
    masquerade(&mut t, DEV, 0);
    t
}

/// Sends a datagram from `from` to `to` out of the uplink; the external port it left from.
fn send(t: &mut ProgTest, from: Endpoint, to: Endpoint) -> u16 {
    let run = t
        .run(Hook::UplinkEgress, &packet::udp(TO_OUTSIDE, from, to, b"q"))
        .expect("run");
    let d = decode(&run.frame).expect("decode");
    assert_eq!(d.src, EXT, "masqueraded");
    match d.l4 {
        L4::Udp { src_port, .. } => src_port,
        other => panic!("not UDP: {other:?}"),
    }
}

/// Where a reply from `from` to the external port `port` goes, if the datapath translates it.
fn reply_to(t: &mut ProgTest, from: Endpoint, port: u16) -> Option<Ipv4Addr> {
    let frame = packet::udp(FROM_OUTSIDE, from, (EXT, port), b"a");
    let run = t.run(Hook::UplinkIngress, &frame).expect("run");
    let d = decode(&run.frame).expect("decode");
    (d.dst != EXT).then_some(d.dst)
}

fn pass(t: &mut ProgTest) -> Reclaimed {
    let now = t.now().expect("now");
    let ct_max = netfast::common::maps::DEFAULT_CT_MAX_FLOWS;
    reclaim::reclaim(t.ebpf_mut(), now, ct_max)
        .expect("reclaim")
        .0
}

#[test]
fn reclaiming_removes_the_dead_and_keeps_a_port_taken_over() {
    require_root();
    let mut t = loaded();
    let port = send(&mut t, C1, SERVER);
    assert_eq!(port, C1.1, "the original port, while free");
    // Nothing is dead yet: a pass removes nothing.
    assert_eq!(pass(&mut t), Reclaimed::default());
    assert_eq!(reply_to(&mut t, SERVER, port), Some(C1.0));

    t.advance_clock(UNTIL_DEAD).expect("advance");
    // C1's mapping has expired: C2 takes its port over, by the datapath's own rule.
    assert_eq!(send(&mut t, C2, SERVER), port, "taken over");
    let done = pass(&mut t);
    assert_eq!(
        (done.entries, done.bindings, done.claims),
        (1, 1, 0),
        "C1's original entry (its reply tuple is C2's flow's now) and binding go; the claim \
         is C2's"
    );
    let s = Snapshot::read(t.ebpf()).expect("snapshot");
    assert_eq!(s.main.len(), 2, "C2's flow stays whole");
    assert_eq!(s.claims.len(), 1);
    let claim = s.claims.values().next().expect("a claim");
    assert_eq!(maps::addr_of(claim.int_addr()), C2.0, "the port stays C2's");
    assert_eq!(reply_to(&mut t, SERVER, port), Some(C2.0));
    // A third endpoint with the same source port cannot share it.
    let other = send(&mut t, C3, SERVER2);
    assert_ne!(other, port, "two endpoints on one external port");
    assert_eq!(reply_to(&mut t, SERVER2, other), Some(C3.0));
    assert_eq!(reply_to(&mut t, SERVER, port), Some(C2.0));

    // Everything dead: everything goes, and the port is free for anyone.
    t.advance_clock(UNTIL_DEAD).expect("advance");
    let done = pass(&mut t);
    assert_eq!((done.entries, done.bindings, done.claims), (4, 2, 2));
    let s = Snapshot::read(t.ebpf()).expect("snapshot");
    assert!(s.main.is_empty() && s.bindings.is_empty() && s.claims.is_empty());
    assert_eq!(send(&mut t, C3, SERVER), port);
}

#[test]
fn a_claim_taken_over_during_a_pass_is_put_back() {
    require_root();
    let mut t = loaded();
    let port = send(&mut t, C1, SERVER);
    t.advance_clock(UNTIL_DEAD).expect("advance");
    // The pass judges from what it read: C1's mapping, claim and all, is dead.
    let now = t.now().expect("now");
    let snapshot = Snapshot::read(t.ebpf()).expect("snapshot");
    let plan = reclaim::plan(&snapshot, now);
    assert_eq!(
        (plan.main.len(), plan.bindings.len(), plan.claims.len()),
        (2, 1, 1)
    );
    // Meanwhile the datapath hands the port to C2, and C2's flow lives on it.
    assert_eq!(send(&mut t, C2, SERVER), port);
    let done = reclaim::apply(t.ebpf_mut(), &plan).expect("apply");
    assert_eq!(done.claims, 0, "the claim changed hands: it must not go");
    assert!(done.kept >= 1, "{done:?}");
    let s = Snapshot::read(t.ebpf()).expect("snapshot");
    let claim = s.claims.values().next().expect("the port is still claimed");
    assert_eq!(maps::addr_of(claim.int_addr()), C2.0);
    assert_eq!(reply_to(&mut t, SERVER, port), Some(C2.0));
    assert_ne!(send(&mut t, C3, SERVER2), port, "two endpoints on one port");
}

/// Pins the calling thread to the CPU it runs on.
fn pin_to_this_cpu() {
    // SAFETY: plain syscalls on this thread, with a CPU set we own.
    unsafe {
        let cpu = libc::sched_getcpu();
        assert!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set),
            0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A flood of drops costs the monitor's ring at most its per-CPU budget a second; the rest
/// is counted, and every drop still is.
#[test]
fn a_flood_of_drops_fills_the_monitor_ring_only_to_its_budget() {
    use netfast::common::{
        DropReason,
        maps::DROP_EVENTS,
        monitor::{DROP_EVENTS_PER_CPU_PER_SECOND, DropEvent},
        stats::Event,
    };
    require_root();
    // The budget is per CPU: the runs below (separate syscalls) must all be on one, or two
    // CPUs' budgets fill the ring. This thread is pinned to the CPU it is on.
    pin_to_this_cpu();
    let mut t = loaded();
    // From outside, straight to a masqueraded container: direct access, dropped.
    let frame = packet::udp(FROM_OUTSIDE, SERVER, C1, b"x");
    let one = t.run(Hook::UplinkIngress, &frame).expect("run");
    assert_eq!(one.verdict, netfast::common::verdict::SHOT);
    const FLOOD: u32 = 5000;
    t.time(Hook::UplinkIngress, &frame, FLOOD).expect("flood");
    let map = t.ebpf_mut().take_map(DROP_EVENTS).expect("the drop ring");
    let mut ring = aya::maps::RingBuf::try_from(map).expect("a ring");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        events.push(*as_event(&item));
    }
    fn as_event(b: &[u8]) -> &DropEvent {
        assert_eq!(b.len(), std::mem::size_of::<DropEvent>());
        // SAFETY: a ring record the size of a DropEvent, which is plain old data; read in
        // place (ring records are 8-byte aligned).
        #[allow(clippy::cast_ptr_alignment, reason = "ring records are 8-byte aligned")]
        unsafe {
            &*b.as_ptr().cast::<DropEvent>()
        }
    }
    let first = events.first().expect("the first drop is shown");
    assert_eq!(
        (first.reason, first.hook, first.proto),
        (
            DropReason::DirectAccess as u8,
            Hook::UplinkIngress as u8,
            17
        )
    );
    assert_eq!(maps::addr_of(first.src_addr), SERVER.0);
    assert_eq!(maps::addr_of(first.dst_addr), C1.0);
    assert_eq!(u16::from_be(first.dst_port), C1.1);
    // The kernel's runs may straddle a second (or three, on a slow machine): a budget each.
    let seconds: std::collections::BTreeSet<u64> =
        events.iter().map(|e| e.ktime_ns / 1_000_000_000).collect();
    let budget = DROP_EVENTS_PER_CPU_PER_SECOND as usize * seconds.len();
    assert!(
        events.len() <= budget,
        "{} events in {} second(s)",
        events.len(),
        seconds.len()
    );
    let stats = t.stats().expect("stats");
    let dropped = stats.dropped(DropReason::DirectAccess).packets;
    assert_eq!(dropped, u64::from(FLOOD) + 1, "every drop is counted");
    let suppressed = stats.event(Event::MonitorSuppressed).packets;
    assert_eq!(suppressed + events.len() as u64, dropped);
    let per_hook = stats
        .hook_drops
        .iter()
        .find(|d| d.hook == "uplink_ingress" && d.reason == "direct_access")
        .expect("per-hook drops");
    assert_eq!(per_hook.traffic.packets, dropped);
}
