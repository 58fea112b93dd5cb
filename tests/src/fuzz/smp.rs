//! The multi-CPU phase: two threads, pinned to two CPUs, run the programs on the same maps
//! at the same moment (BPF_PROG_TEST_RUN runs a program on the calling CPU) — the first
//! packets of one flow, two endpoints wanting one external port, a port taken over from
//! an expired holder while the holder speaks again, a close racing a reuse, a flow closed
//! from both ends, its last FIN or a RST against the other side's ACKs, FINs from both ends
//! at once — and the maps are then held to the invariants: each external endpoint belongs
//! to one internal endpoint, both entries of every flow point at each other, a flow that
//! saw both FINs is closed, no live flow uses a mapping whose claim is another's, no entry
//! or mapping outlives what its state allows. Where both packets of a round went through,
//! they must agree (one flow, one translation) or differ (two endpoints, two ports); where
//! one was dropped, only as a counted lost race.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    sync::{Arc, Barrier, Mutex},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::SchedClassifier,
};
use netfast::common::{
    DropReason, Hook, Traffic, maps as names,
    stats::{drop_slot, hook_slot},
    verdict::{NEXT, REDIRECT, SHOT},
};

use super::{
    build, convert,
    dp::Datapath,
    event::{Body, Pkt, TupleRef},
    topology::{BRIDGE_MAC, CONTAINERS, EXT, GATEWAY_MAC, REMOTES},
};
use crate::model::{
    self, Config, PROTO_TCP, PROTO_UDP, PubKey, PubTarget, Timeouts, Tuple, frame,
    invariants::{self, Snapshot},
};

/// What the phase did.
#[derive(Clone, Debug, Default)]
pub struct SmpReport {
    pub cpus: [usize; 2],
    pub rounds: u32,
    /// Program runs on each CPU, as the per-CPU counters saw them.
    pub runs: [u64; 2],
    /// Packets dropped as the loser of a race (counted: `ct_insert_failed`,
    /// `nat_mapping_failed`), or by design (`nat_filtered`: a hairpin across networks).
    pub lost_races: BTreeMap<&'static str, u64>,
    /// Rounds in which both packets went through.
    pub both_through: u64,
    /// Broken promises, worded for a human (empty: none).
    pub broken: Vec<String>,
}

/// Which rounds to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounds {
    /// Every kind of round in turn.
    All,
    /// Only expiry takeovers (for the test of the race of an expired claim retaken by its
    /// own endpoint while another takes it over).
    Takeovers,
    /// Only closes from both ends at once (for the test of the race of two CPUs that both
    /// subtract one flow's close from its mapping).
    Closes,
    /// Only a flow's last FIN against the other side's ACKs (for the test of the race of
    /// two CPUs that each write the TCP state they computed).
    StateRace,
    /// Only a reset against the other side's ACKs (for the test of the race of a packet that
    /// read the flow open and gives it, and its mapping, an open flow's time after another
    /// CPU has closed it).
    ResetRace,
    /// Only FINs from both ends at once (for the test of the race of two CPUs that each
    /// read the flow before the other's FIN: both move it to FIN_WAIT, and it never closes).
    FinRace,
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t filled in by sched_getaffinity for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// Pins the calling thread to `cpu`; the CPU it then runs on.
fn pin(cpu: usize) -> Result<usize, String> {
    // SAFETY: a cpu_set_t with one CPU, for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) != 0 {
            return Err(format!(
                "sched_setaffinity to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
        let on = libc::sched_getcpu();
        if on < 0 || on as usize != cpu {
            return Err(format!("pinned to CPU {cpu}, running on {on}"));
        }
        Ok(cpu)
    }
}

/// `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs the program `fd` once on `frame`, on device `ifindex`, on the calling CPU.
fn test_run(fd: &OwnedFd, frame: &[u8], ifindex: u32) -> Result<(i32, Vec<u8>), String> {
    let mut out = vec![0u8; frame.len() + 512];
    let mut skb = [0u8; 44];
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: skb.len() as u32,
        ctx_in: skb.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: bpf(2) with an attribute block that points at buffers living past the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &raw mut attr,
            size_of::<TestRunAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "BPF_PROG_TEST_RUN: {}",
            std::io::Error::last_os_error()
        ));
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval as i32, out))
}

/// What each worker's run gave: the verdict and frame out.
type Outcomes = [Option<Result<(i32, Vec<u8>), String>>; 2];

/// One packet of a round: which program, on which device.
#[derive(Clone)]
struct Shot {
    hook: Hook,
    ifindex: u32,
    frame: Vec<u8>,
    /// How many times the worker runs it, one run after another (the outcome is the last
    /// run's).
    times: u32,
    /// How long the worker waits (spinning: a sleep would hand its CPU away) before the
    /// first run: to land a single packet in the middle of the other CPU's many.
    lead: std::time::Duration,
}

impl Shot {
    /// `frame`, run once by `hook`'s program on `ifindex`, at once.
    fn once(hook: Hook, ifindex: u32, frame: Vec<u8>) -> Shot {
        Shot {
            hook,
            ifindex,
            frame,
            times: 1,
            lead: std::time::Duration::ZERO,
        }
    }

    /// The same, run `times` times.
    fn times(self, times: u32) -> Shot {
        Shot { times, ..self }
    }
}

/// What a round expects of its two packets when both go through.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// One flow: the same translation.
    Same,
    /// Two internal endpoints: two external ports.
    Distinct,
    /// Two different things: nothing to compare.
    Any,
    /// Packets run over and over, that change a flow back and forth: only the maps are
    /// judged, afterwards.
    Churn,
}

fn program_fd(dp: &Datapath, hook: Hook) -> OwnedFd {
    let p: &SchedClassifier =
        dp.t.ebpf()
            .program(hook.name())
            .expect("the program")
            .try_into()
            .expect("a classifier");
    p.fd()
        .expect("a loaded program")
        .as_fd()
        .try_clone_to_owned()
        .expect("dup")
}

fn per_cpu(dp: &Datapath, slot: u32, cpus: [usize; 2]) -> [u64; 2] {
    let m = dp.t.ebpf().map(names::STATS).expect("stats");
    let a: PerCpuArray<&MapData, Traffic> = PerCpuArray::try_from(m).expect("per-CPU array");
    let v = a.get(&slot, 0).expect("stats");
    [v[cpus[0]].packets, v[cpus[1]].packets]
}

/// Runs `rounds` rounds on the datapath's programs (the caller's thread is in the
/// fuzzer's namespace; the workers start there too). `Err` when it cannot run at all.
pub fn run(dp: &mut Datapath, rounds: u32) -> Result<SmpReport, String> {
    run_rounds(dp, rounds, Rounds::All)
}

/// As [`run`], with a choice of rounds.
pub fn run_rounds(dp: &mut Datapath, rounds: u32, which: Rounds) -> Result<SmpReport, String> {
    let cpus = allowed_cpus();
    if cpus.len() < 2 {
        return Err(format!(
            "this process may run on {} CPU(s); the phase needs two",
            cpus.len()
        ));
    }
    let cpus = [cpus[0], cpus[1]];
    let host = &dp.host;
    let (uplink, bridges) = (host.uplink, host.bridges);
    let networks = vec![host.network(0, true), host.network(1, true)];
    let topo = host.topology(&networks, &Default::default());
    // A narrow port range makes endpoints meet on ports; short timeouts make takeovers.
    let config = Config {
        port_min: 20000,
        port_max: 20063,
        timeouts: Timeouts {
            udp: 30,
            tcp_transitory: 30,
            tcp_established: 120,
            ..Timeouts::default()
        },
        fast_path: false,
        ..Config::default()
    };
    let mut m = model::Model::new(super::dp::EPOCH, config, topo);
    let web = (CONTAINERS[1][0], 80u16);
    let pub_key = PubKey {
        addr: None,
        port: 8080,
        proto: PROTO_TCP,
    };
    m.publications.insert(
        pub_key,
        PubTarget {
            addr: web.0,
            port: web.1,
            net_id: 2,
            rule: 0,
        },
    );
    dp.reset(&m);
    dp.publish(
        &pub_key,
        &PubTarget {
            addr: web.0,
            port: web.1,
            net_id: 2,
            rule: 0,
        },
    );
    let fds: Arc<Vec<(Hook, OwnedFd)>> = Arc::new(
        [Hook::BridgeIngress, Hook::UplinkIngress, Hook::UplinkEgress]
            .into_iter()
            .map(|h| (h, program_fd(dp, h)))
            .collect(),
    );
    let runs_before: [u64; 2] = Hook::ALL.iter().fold([0, 0], |acc, h| {
        let v = per_cpu(dp, hook_slot(*h), cpus);
        [acc[0] + v[0], acc[1] + v[1]]
    });

    let start = Arc::new(Barrier::new(3));
    let done = Arc::new(Barrier::new(3));
    let work: Arc<Mutex<[Option<Shot>; 2]>> = Arc::new(Mutex::new([None, None]));
    let results: Arc<Mutex<Outcomes>> = Arc::new(Mutex::new([None, None]));
    let mut report = SmpReport {
        cpus,
        ..SmpReport::default()
    };

    std::thread::scope(|s| -> Result<(), String> {
        let mut workers = Vec::new();
        for (i, cpu) in cpus.into_iter().enumerate() {
            let (start, done, work, results, fds) = (
                Arc::clone(&start),
                Arc::clone(&done),
                Arc::clone(&work),
                Arc::clone(&results),
                Arc::clone(&fds),
            );
            workers.push(s.spawn(move || -> Result<(), String> {
                pin(cpu)?;
                loop {
                    start.wait();
                    let shot = work.lock().expect("work")[i].clone();
                    let Some(shot) = shot else {
                        return Ok(());
                    };
                    let fd = &fds
                        .iter()
                        .find(|(h, _)| *h == shot.hook)
                        .expect("a program for every hook used")
                        .1;
                    let until = std::time::Instant::now() + shot.lead;
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    let mut r = test_run(fd, &shot.frame, shot.ifindex);
                    for _ in 1..shot.times {
                        r = test_run(fd, &shot.frame, shot.ifindex);
                    }
                    results.lock().expect("results")[i] = Some(r);
                    done.wait();
                }
            }));
        }
        for round in 0..rounds {
            let kind = match which {
                // 0 to 12 and the last arm (a close racing a reuse) once each.
                Rounds::All => round % 14,
                Rounds::Takeovers => 5,
                Rounds::Closes => 9,
                Rounds::StateRace => 10,
                Rounds::ResetRace => 11,
                Rounds::FinRace => 12,
            };
            let (shots, expect, after) = prepare(dp, &mut m, round, kind, uplink, bridges);
            *work.lock().expect("work") = [Some(shots[0].clone()), Some(shots[1].clone())];
            let drops_before = drops_per_cpu(dp, cpus);
            start.wait();
            done.wait();
            let outcomes = std::mem::take(&mut *results.lock().expect("results"));
            let outcomes = if expect == Expect::Churn {
                Vec::new()
            } else {
                Vec::from(outcomes)
            };
            let drops_after = drops_per_cpu(dp, cpus);
            for shot in &after {
                let _ = dp.run(shot.hook, shot.ifindex, &shot.frame);
            }
            let mut through = Vec::new();
            for (i, o) in outcomes.into_iter().enumerate() {
                let (verdict, out) = o.ok_or("a worker did not answer")??;
                match verdict {
                    NEXT | REDIRECT => through.push(out),
                    SHOT => {
                        let reason = DropReason::ALL.into_iter().find(|r| {
                            drops_after[i].get(&drop_slot(*r))
                                != drops_before[i].get(&drop_slot(*r))
                        });
                        match reason {
                            Some(r @ (DropReason::CtInsertFailed | DropReason::NatMappingFailed)) => {
                                *report.lost_races.entry(r.name()).or_default() += 1;
                            }
                            // A hairpin across networks waits for the receiver's answer.
                            Some(DropReason::NatFiltered) => {
                                *report.lost_races.entry("nat_filtered (by design)").or_default() += 1;
                            }
                            other => report.broken.push(format!(
                                "round {round}: CPU {} dropped its packet for {:?}, not a lost race",
                                cpus[i],
                                other.map(netfast::common::DropReason::name)
                            )),
                        }
                    }
                    v => report.broken.push(format!("round {round}: verdict {v}")),
                }
            }
            if through.len() == 2 {
                report.both_through += 1;
                let (a, b) = (source_of(&through[0]), source_of(&through[1]));
                match expect {
                    Expect::Same if through[0] != through[1] => report.broken.push(format!(
                        "round {round}: one flow's first packets were translated differently: {a:?} and {b:?}"
                    )),
                    Expect::Distinct if a == b => report.broken.push(format!(
                        "round {round}: two internal endpoints both left as {a:?}"
                    )),
                    _ => {}
                }
            }
            if matches!(
                which,
                Rounds::Closes | Rounds::StateRace | Rounds::ResetRace | Rounds::FinRace
            ) || round % 16 == 15
                || round + 1 == rounds
            {
                for b in check(dp, &m) {
                    report.broken.push(format!("after round {round}: {b}"));
                }
            }
            report.rounds += 1;
            if report.broken.len() > 20 {
                break;
            }
        }
        *work.lock().expect("work") = [None, None];
        start.wait();
        for w in workers {
            w.join().map_err(|_| "a worker panicked".to_string())??;
        }
        Ok(())
    })?;
    let runs_after: [u64; 2] = Hook::ALL.iter().fold([0, 0], |acc, h| {
        let v = per_cpu(dp, hook_slot(*h), cpus);
        [acc[0] + v[0], acc[1] + v[1]]
    });
    report.runs = [
        runs_after[0] - runs_before[0],
        runs_after[1] - runs_before[1],
    ];
    Ok(report)
}

fn drops_per_cpu(dp: &Datapath, cpus: [usize; 2]) -> [BTreeMap<u32, u64>; 2] {
    let mut out = [BTreeMap::new(), BTreeMap::new()];
    for r in DropReason::ALL {
        let v = per_cpu(dp, drop_slot(r), cpus);
        out[0].insert(drop_slot(r), v[0]);
        out[1].insert(drop_slot(r), v[1]);
    }
    out
}

/// The source address and port (or ICMP identifier) of a frame a program put out.
fn source_of(f: &[u8]) -> Option<(Ipv4Addr, u16)> {
    let frame::Parsed::Ipv4(ip) = frame::ipv4(f) else {
        return None;
    };
    let at = ip.l4 + if ip.proto == model::PROTO_ICMP { 4 } else { 0 };
    Some((ip.src, frame::u16_at(f, at)?))
}

/// The state of the maps, held to the invariants (the phase's settings never change:
/// lifetimes too).
fn check(dp: &Datapath, m: &model::Model) -> Vec<invariants::Broken> {
    let maps = convert::model_maps(&dp.dump().maps);
    let snapshot = Snapshot {
        now: m.now,
        main: &maps.main,
        inbound: &maps.inbound,
        bindings: &maps.bindings,
        claims: &maps.claims,
        evicted: false,
        lost_claims: &std::collections::BTreeSet::new(),
    };
    let mut broken = invariants::check(&snapshot);
    broken.extend(invariants::lifetimes(&snapshot, &m.config));
    broken
}

fn udp(t: Tuple) -> Pkt {
    Pkt::new(TupleRef::Lit(t), Body::Udp { payload: 16 })
}

/// A TCP segment without payload: `flags`, `seq`, `ack`.
fn segment(t: Tuple, flags: u8, seq: u32, ack: u32) -> Pkt {
    Pkt::new(
        TupleRef::Lit(t),
        Body::Tcp {
            flags,
            seq,
            ack,
            win: 64240,
            wscale: (flags & 0x02 != 0).then_some(7),
            payload: 0,
        },
    )
}

fn syn(t: Tuple, seq: u32) -> Pkt {
    Pkt::new(
        TupleRef::Lit(t),
        Body::Tcp {
            flags: 0x02,
            seq,
            ack: 0,
            win: 64240,
            wscale: Some(7),
            payload: 0,
        },
    )
}

/// The two packets of round `round`, of kind `kind`, after whatever single-threaded prelude
/// it needs (its endpoints use an original port of the round's own: no two rounds within
/// 2000 of each other share one); and the packets that follow them, single-threaded, before
/// the maps are checked.
fn prepare(
    dp: &mut Datapath,
    m: &mut model::Model,
    round: u32,
    kind: u32,
    uplink: u32,
    bridges: [u32; 2],
) -> ([Shot; 2], Expect, Vec<Shot>) {
    let (bridge1, bridge2) = (bridges[0], bridges[1]);
    let c1 = CONTAINERS[0][0];
    let c2 = CONTAINERS[0][1];
    let c3 = CONTAINERS[1][1];
    let s1 = REMOTES[0];
    let s2 = REMOTES[1];
    let client = REMOTES[4];
    let port = 30000 + (round % 2000) as u16;
    let mac = dp.host.uplink_mac;
    let tuple = |pkt: &Pkt| match pkt.tuple {
        TupleRef::Lit(t) => t,
        _ => unreachable!("the phase names its tuples as they are"),
    };
    let out = |pkt: &Pkt| {
        let frame = build::frame(pkt, &tuple(pkt), None, GATEWAY_MAC, mac);
        Shot::once(Hook::UplinkEgress, uplink, frame)
    };
    let inward = |pkt: &Pkt| {
        let frame = build::frame(pkt, &tuple(pkt), None, mac, GATEWAY_MAC);
        Shot::once(Hook::UplinkIngress, uplink, frame)
    };
    let from_container = |pkt: &Pkt| {
        let frame = build::frame(pkt, &tuple(pkt), None, BRIDGE_MAC, [2, 0, 0, 0, 0, 2]);
        Shot::once(Hook::BridgeIngress, bridge1, frame)
    };
    // c1's TCP connection to s1, through its handshake, once what earlier rounds left has
    // expired: its tuple, and the server's towards its external port.
    let established = |dp: &mut Datapath, m: &mut model::Model| {
        let t = m.config.timeouts.tcp_established;
        m.now += t + t / 8 + 2;
        dp.write_config(&m.config, m.now);
        let flow = Tuple::new(c1, s1, port, 80, PROTO_TCP);
        let first = out(&syn(flow, 1000));
        let (_, o, _) = dp.run(first.hook, first.ifindex, &first.frame);
        let ext = source_of(&o).map_or(port, |(_, p)| p);
        let back = Tuple::new(s1, EXT, 80, ext, PROTO_TCP);
        for shot in [
            inward(&segment(back, 0x12, 5000, 1001)),
            out(&segment(flow, 0x10, 1001, 5001)),
        ] {
            let _ = dp.run(shot.hook, shot.ifindex, &shot.frame);
        }
        (flow, back)
    };
    let mut after = Vec::new();
    let (shots, expect) = match kind {
        // The first packets of one flow, from both CPUs.
        0 => {
            let p = udp(Tuple::new(c1, s1, port, 53, PROTO_UDP));
            ([out(&p), out(&p)], Expect::Same)
        }
        // Two containers, one original port, one remote: one external port each.
        1 => (
            [
                out(&udp(Tuple::new(c1, s1, port, 53, PROTO_UDP))),
                out(&udp(Tuple::new(c3, s1, port, 53, PROTO_UDP))),
            ],
            Expect::Distinct,
        ),
        // The same, to two remotes, over TCP.
        2 => (
            [
                out(&syn(Tuple::new(c1, s1, port, 80, PROTO_TCP), 1)),
                out(&syn(Tuple::new(c2, s2, port, 80, PROTO_TCP), 1)),
            ],
            Expect::Distinct,
        ),
        // A client's first SYN to a published port, twice at once.
        3 => {
            let p = syn(Tuple::new(client, EXT, port, 8080, PROTO_TCP), 7);
            ([inward(&p), inward(&p)], Expect::Same)
        }
        // A container's first SYN to its host's published port (hairpin), twice at once.
        4 => {
            let p = syn(Tuple::new(c1, EXT, port, 8080, PROTO_TCP), 9);
            ([from_container(&p), from_container(&p)], Expect::Same)
        }
        // Expiry takeover: c1's mapping of the port expires; c1 speaks again while c2 wants
        // the same port.
        5 => {
            let first = out(&udp(Tuple::new(c1, s1, port, 53, PROTO_UDP)));
            let _ = dp.run(first.hook, first.ifindex, &first.frame);
            m.now += m.config.timeouts.udp + m.config.timeouts.udp / 8 + 2;
            dp.write_config(&m.config, m.now);
            (
                [
                    out(&udp(Tuple::new(c1, s2, port, 53, PROTO_UDP))),
                    out(&udp(Tuple::new(c2, s1, port, 53, PROTO_UDP))),
                ],
                Expect::Distinct,
            )
        }
        // Hairpin to a mapping: c1 holds EXT:port; c2's first packet to it, from both
        // CPUs (one flow); then c2 and c3 (of the other network, endpoint-independent or
        // not) to it at once (two flows, two external ports).
        7 | 8 => {
            let first = out(&udp(Tuple::new(c1, s1, port, 53, PROTO_UDP)));
            let (_, o, _) = dp.run(first.hook, first.ifindex, &first.frame);
            let ext = source_of(&o).map_or(port, |(_, p)| p);
            let to_c1 = |from: Ipv4Addr, bridge: u32| {
                let t = Tuple::new(from, EXT, port + 1, ext, PROTO_UDP);
                let frame = build::frame(&udp(t), &t, None, BRIDGE_MAC, [2, 0, 0, 0, 0, 3]);
                Shot::once(Hook::BridgeIngress, bridge, frame)
            };
            if kind == 7 {
                ([to_c1(c2, bridge1), to_c1(c2, bridge1)], Expect::Same)
            } else {
                ([to_c1(c2, bridge1), to_c1(c3, bridge2)], Expect::Distinct)
            }
        }
        // A flow closed and opened again over and over, from both ends at once: c1 holds
        // two connections on one mapping; one CPU resets one of them from its server's
        // end, again and again, while the other opens it again from c1's (a SYN reopens a
        // closed flow). Each close is subtracted from the mapping's count of open flows, and
        // each reopening added back, once: two CPUs that see one change at once must not
        // both count it.
        9 => {
            // What earlier rounds left open has expired: their ports are free.
            let t = m.config.timeouts.tcp_established;
            m.now += t + t / 8 + 2;
            dp.write_config(&m.config, m.now);
            let mut ext = port;
            for s in [s1, s2] {
                let first = out(&syn(Tuple::new(c1, s, port, 80, PROTO_TCP), 1000));
                let (_, o, _) = dp.run(first.hook, first.ifindex, &first.frame);
                ext = source_of(&o).map_or(port, |(_, p)| p);
                let answer = inward(&segment(
                    Tuple::new(s, EXT, 80, ext, PROTO_TCP),
                    0x12,
                    5000,
                    1001,
                ));
                let _ = dp.run(answer.hook, answer.ifindex, &answer.frame);
                let ack = out(&segment(
                    Tuple::new(c1, s, port, 80, PROTO_TCP),
                    0x10,
                    1001,
                    5001,
                ));
                let _ = dp.run(ack.hook, ack.ifindex, &ack.frame);
            }
            let reset = segment(Tuple::new(s2, EXT, 80, ext, PROTO_TCP), 0x14, 5001, 1001);
            (
                [
                    out(&syn(Tuple::new(c1, s2, port, 80, PROTO_TCP), 1000)).times(4000),
                    inward(&reset).times(4000),
                ],
                Expect::Churn,
            )
        }
        // A flow's last FIN against the other side's ACKs: c1's connection is half-closed
        // by its server (its FIN seen, acknowledged: CLOSE_WAIT); c1's FIN (once) moves it
        // to TIME_WAIT while the server's duplicate ACKs, on the other CPU, see the state
        // before it. Neither may write back a state older than the other's.
        10 => {
            let (flow, back) = established(dp, m);
            for shot in [
                inward(&segment(back, 0x11, 5001, 1001)),
                out(&segment(flow, 0x10, 1001, 5002)),
            ] {
                let _ = dp.run(shot.hook, shot.ifindex, &shot.frame);
            }
            (
                [
                    out(&segment(flow, 0x11, 1001, 5002)),
                    inward(&segment(back, 0x10, 5002, 1001)).times(4000),
                ],
                Expect::Churn,
            )
        }
        // A reset against the other side's ACKs: c1's connection is established; its server
        // resets it (once: CLOSE, the close's time) while c1's ACKs, on the other CPU, read
        // the state before the reset. None may give the closed flow, or its mapping, an
        // established flow's time.
        11 => {
            let (flow, back) = established(dp, m);
            (
                [
                    Shot {
                        // Somewhere among the ACKs (a round's own offset), not only at
                        // their start.
                        lead: std::time::Duration::from_micros(u64::from(round % 97) * 50),
                        ..inward(&segment(back, 0x14, 5001, 1001))
                    },
                    out(&segment(flow, 0x10, 1001, 5001)).times(4000),
                ],
                Expect::Churn,
            )
        }
        // FINs from both ends at once: c1's connection is established; c1 and its server
        // each send a FIN, one on each CPU, then each acknowledges the other's (on one CPU).
        // Each FIN may read the flow before the other's: the flow must still close, and its
        // close be subtracted from its mapping's open flows.
        12 => {
            let (flow, back) = established(dp, m);
            after.push(out(&segment(flow, 0x10, 1002, 5002)));
            after.push(inward(&segment(back, 0x10, 5002, 1002)));
            (
                [
                    out(&segment(flow, 0x11, 1001, 5001)),
                    inward(&segment(back, 0x11, 5001, 1001)),
                ],
                Expect::Any,
            )
        }
        // A close racing a reuse: c1's TCP flow is reset by the server while c1 opens a
        // second flow on the same mapping.
        _ => {
            let first = out(&syn(Tuple::new(c1, s1, port, 80, PROTO_TCP), 100));
            let (_, o, _) = dp.run(first.hook, first.ifindex, &first.frame);
            let ext = source_of(&o).map_or(port, |(_, p)| p);
            let rst = Pkt::new(
                TupleRef::Lit(Tuple::new(s1, EXT, 80, ext, PROTO_TCP)),
                Body::Tcp {
                    flags: 0x14,
                    seq: 0,
                    ack: 101,
                    win: 0,
                    wscale: None,
                    payload: 0,
                },
            );
            (
                [
                    inward(&rst),
                    out(&syn(Tuple::new(c1, s2, port, 80, PROTO_TCP), 500)),
                ],
                Expect::Any,
            )
        }
    };
    (shots, expect, after)
}
