//! Masquerade and connection tracking, packet by packet: the real programs through
//! BPF_PROG_TEST_RUN, provisioned through the same map API the loader uses. Expected frames
//! are built from scratch with etherparse, so every incrementally updated checksum must equal
//! a full recomputation, byte for byte.

use std::net::Ipv4Addr;

use netfast::{
    common::{
        DropReason, Hook,
        config::{DpConfig, FILTERING_ENDPOINT_INDEPENDENT},
        conntrack::{CtEntry, CtKey, PROTO_TCP},
        maps::NAT_CLAIMS,
        nat::{NatClaim, NatClaimKey},
        verdict,
    },
    maps,
    prog_test::{
        ProgTest, Run,
        fixture::{Case, Flow, assert_run, run_cases, run_flows},
        packet::{
            self, Endpoint, FROM_OUTSIDE, TO_OUTSIDE, TcpFlags, decode, decode_quoted, ip_packet,
        },
    },
};
use netfast_tests::{
    packets::{
        self, C1, C2, C3, DEV, EXT, ROUTER, SERVER, ct_key, endpoints_of, ext, load, passes, run,
        udp_in, udp_out,
    },
    require_root,
};

/// BPF_PROG_TEST_RUN runs the skb on the loopback device of the caller's namespace.
const C4: Endpoint = (Ipv4Addr::new(172, 18, 0, 5), 40000);
const SERVER2: Endpoint = (Ipv4Addr::new(203, 0, 113, 11), 443);
const HOST: Endpoint = (EXT, 50000);
const SERVER3: Endpoint = (Ipv4Addr::new(203, 0, 113, 12), 443);

/// 172.18.0.0/24 masqueraded behind EXT, its uplink the test device (for the fixture's
/// cases, which return their errors).
fn masquerade(t: &mut ProgTest) -> Result<(), String> {
    packets::masquerade(t, DEV, 0);
    Ok(())
}

/// Runs each named flow, its cases in order, on its own object with 172.18.0.0/24
/// masqueraded behind EXT (its first case sets that up). Panics unless run as root.
fn run_masqueraded(flows: Vec<(&str, Vec<Case>)>) {
    require_root();
    let flows = flows.into_iter().map(|(name, mut cases)| {
        let first = cases.remove(0).setup(masquerade);
        cases.insert(0, first);
        Flow::new(name, cases)
    });
    run_flows(flows.collect());
}

fn configure(t: &mut ProgTest, cfg: DpConfig) -> Result<(), String> {
    maps::write_config(t.ebpf_mut(), &cfg).map_err(|e| e.to_string())
}

fn out(name: &str, frame: Vec<u8>) -> Case {
    Case::new(name, Hook::UplinkEgress, frame)
}

fn inbound(name: &str, frame: Vec<u8>) -> Case {
    Case::new(name, Hook::UplinkIngress, frame)
}

fn tcp_out(from: Endpoint, to: Endpoint, flags: TcpFlags) -> Vec<u8> {
    packet::tcp(TO_OUTSIDE, from, to, flags, 1000, 2000, b"")
}

fn tcp_in(from: Endpoint, to: Endpoint, flags: TcpFlags) -> Vec<u8> {
    packet::tcp(FROM_OUTSIDE, from, to, flags, 2000, 1001, b"")
}

/// The live flows, for a case's check.
fn live(t: &ProgTest) -> Result<Vec<maps::Flow>, String> {
    maps::flows(t.ebpf(), t.now().map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

/// Checks the TCP state of the flow whose original source is `src`.
fn state_is(src: Endpoint, state: &'static str) -> impl Fn(&ProgTest, &Run) -> Result<(), String> {
    move |t, _| {
        let flows = live(t)?;
        let flow = flows
            .iter()
            .find(|f| (f.original.src, f.original.sport) == src)
            .ok_or_else(|| format!("no flow from {src:?}: {flows:#?}"))?;
        if flow.state == Some(state) {
            Ok(())
        } else {
            Err(format!(
                "flow from {src:?} is {:?}, expected {state}",
                flow.state
            ))
        }
    }
}

fn live_flows(n: usize) -> impl Fn(&ProgTest, &Run) -> Result<(), String> {
    move |t, _| {
        let flows = live(t)?;
        if flows.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{} live flows, expected {n}: {flows:#?}",
                flows.len()
            ))
        }
    }
}

fn dropped_once(reason: DropReason) -> impl Fn(&ProgTest, &Run) -> Result<(), String> {
    move |t, _| {
        let got = t
            .stats()
            .map_err(|e| e.to_string())?
            .dropped(reason)
            .packets;
        if got == 1 {
            Ok(())
        } else {
            Err(format!("{} counted {got} drops, expected 1", reason.name()))
        }
    }
}

/// The external source port the egress program gave a packet.
fn source_port_of(run: &Run) -> u16 {
    endpoints_of(&run.frame).1.1
}

#[test]
fn tcp_lifetime_through_the_nat() {
    let flow = vec![
        out(
            "SYN out: source becomes the uplink address, port kept",
            tcp_out(C1, SERVER, TcpFlags::SYN),
        )
        .output(tcp_out(ext(40000), SERVER, TcpFlags::SYN))
        .check(live_flows(1))
        .check(state_is(C1, "SYN_SENT")),
        inbound(
            "SYN-ACK back to the container",
            tcp_in(SERVER, ext(40000), TcpFlags::SYN_ACK),
        )
        .output(tcp_in(SERVER, C1, TcpFlags::SYN_ACK))
        .check(state_is(C1, "SYN_RECV")),
        out("ACK out", tcp_out(C1, SERVER, TcpFlags::ACK))
            .output(tcp_out(ext(40000), SERVER, TcpFlags::ACK))
            .check(state_is(C1, "ESTABLISHED")),
        out(
            "data out",
            packet::tcp(
                TO_OUTSIDE,
                C1,
                SERVER,
                TcpFlags::PSH_ACK,
                1001,
                2001,
                &[0x42; 1200],
            ),
        )
        .output(packet::tcp(
            TO_OUTSIDE,
            ext(40000),
            SERVER,
            TcpFlags::PSH_ACK,
            1001,
            2001,
            &[0x42; 1200],
        )),
        inbound(
            "data back",
            packet::tcp(
                FROM_OUTSIDE,
                SERVER,
                ext(40000),
                TcpFlags::PSH_ACK,
                2001,
                2201,
                &[0x17; 333],
            ),
        )
        .output(packet::tcp(
            FROM_OUTSIDE,
            SERVER,
            C1,
            TcpFlags::PSH_ACK,
            2001,
            2201,
            &[0x17; 333],
        )),
        out("FIN out", tcp_out(C1, SERVER, TcpFlags::FIN_ACK))
            .output(tcp_out(ext(40000), SERVER, TcpFlags::FIN_ACK))
            .check(state_is(C1, "FIN_WAIT")),
        inbound("ACK of the FIN", tcp_in(SERVER, ext(40000), TcpFlags::ACK))
            .output(tcp_in(SERVER, C1, TcpFlags::ACK))
            .check(state_is(C1, "CLOSE_WAIT")),
        inbound("FIN back", tcp_in(SERVER, ext(40000), TcpFlags::FIN_ACK))
            .output(tcp_in(SERVER, C1, TcpFlags::FIN_ACK))
            .check(state_is(C1, "TIME_WAIT")),
        out("last ACK", tcp_out(C1, SERVER, TcpFlags::ACK))
            .output(tcp_out(ext(40000), SERVER, TcpFlags::ACK))
            .check(state_is(C1, "TIME_WAIT"))
            .check(|t, _| {
                let flow = &live(t)?[0];
                let want = (flow.original.packets, flow.reply.packets);
                if want == (Some(5), Some(4)) {
                    Ok(())
                } else {
                    Err(format!("packets each way {want:?}, expected (5, 4)"))
                }
            }),
    ];
    run_masqueraded(vec![("tcp lifetime", flow)]);
}

/// C1's connection to SERVER under settings whose CLOSE timeout is 1 s: its SYN (the
/// settings written first) and the server's SYN-ACK.
fn answered_with_a_short_close() -> [Case; 2] {
    let short = DpConfig {
        tcp_close: 1,
        ..DpConfig::default()
    };
    answered("SYN", move |t| configure(t, short))
}

/// C1's SYN to SERVER (`name`, after `setup`), leaving from port 40000 of the external
/// address, and the server's SYN-ACK, translated back.
fn answered(
    name: &str,
    setup: impl Fn(&mut ProgTest) -> Result<(), String> + 'static,
) -> [Case; 2] {
    [
        away(name, C1, SERVER, TcpFlags::SYN).setup(setup),
        back("SYN-ACK", SERVER, C1, TcpFlags::SYN_ACK),
    ]
}

/// Runs, as flow `name`, [`answered_with_a_short_close`] and then `then`.
fn after_a_short_close(name: &str, then: impl IntoIterator<Item = Case>) {
    let mut flow = Vec::from(answered_with_a_short_close());
    flow.extend(then);
    run_masqueraded(vec![(name, flow)]);
}

/// The server's RST, which closes C1's connection.
fn reset_by_the_server() -> Case {
    inbound(
        "RST from the server",
        tcp_in(SERVER, ext(40000), TcpFlags::RST),
    )
    .output(tcp_in(SERVER, C1, TcpFlags::RST))
    .check(state_is(C1, "CLOSE"))
}

#[test]
fn rst_closes_and_the_closed_flow_expires_with_its_short_timeout() {
    after_a_short_close(
        "rst",
        [
            reset_by_the_server(),
            // After the CLOSE timeout (1 s) the flow is gone: a late packet is not translated.
            // 3 s, not 2: the programs' second turns up to a tick before CLOCK_MONOTONIC's
            // (`clock`), so a RST in a second's last tick gets an expiry one second later,
            // as userspace counts, and 2 s on it counts as live for that tick (seen in CI).
            inbound(
                "a late ACK after expiry is left alone",
                tcp_in(SERVER, ext(40000), TcpFlags::ACK),
            )
            .setup(|t| t.advance_clock(3).map_err(|e| e.to_string()))
            .check(live_flows(0)),
        ],
    );
}

/// A connection that lived long (its mapping kept alive hours ahead) and is reset frees its
/// external port once the CLOSE timeout and its slack have passed, as Linux conntrack frees
/// it: another container's first packet from the same port then keeps that port. A mapping
/// held for as long as any closed state may last would run out of ports under churn.
#[test]
fn a_reset_connection_frees_its_external_port_after_the_close_timeout() {
    after_a_short_close(
        "reset",
        [
            away("ACK", C1, SERVER, TcpFlags::ACK).check(state_is(C1, "ESTABLISHED")),
            reset_by_the_server(),
            the_port_is_free_3_s_later(C2),
        ],
    );
}

/// A claim written by a datapath from before `closed_until` holds 0 in its place: it does
/// not know the mapping's closed flows, and the last close must then keep the mapping as
/// long as any closed flow may live (as for a claim made again), not just its own entries.
/// C1's first connection lies in TIME_WAIT (240 s) when its second, the mapping's last, is
/// reset: 30 s later another container's SYN from the same port must get another port. (The
/// new holder's next flow to the first connection's server would meet its reply tuple.)
#[test]
fn a_claim_left_by_an_older_datapath_keeps_its_closed_flows_port() {
    let last = the_last_reset_then_another_container(forget_closed_flows);
    with_the_first_in_time_wait("older claim", last);
}

/// Timeouts lowered while a closed connection lives: its entries keep the expiry they were
/// given, and so must its mapping. C1's first connection lies in TIME_WAIT (240 s) when the
/// transitory timeout drops to 5 s and its second, the mapping's last, is reset: 30 s later
/// another container's SYN from the same port must still get another port.
#[test]
fn lowered_timeouts_do_not_cut_short_a_mapping_of_a_closed_connection() {
    let last = the_last_reset_then_another_container(|t| {
        let lowered = DpConfig {
            tcp_close: 1,
            tcp_transitory: 5,
            ..DpConfig::default()
        };
        configure(t, lowered)
    });
    with_the_first_in_time_wait("lowered timeouts", last);
}

/// A closed connection's late packet keeps its mapping as long as it keeps the connection's
/// entries, even when another flow closes last. C1's first connection is in TIME_WAIT (240 s
/// and a 30 s slack) when, 100 s on, the server repeats its FIN: the entries live 240 s from
/// then. Its second connection is reset, the mapping's last: 200 s later the first
/// connection still lives, and so must its port.
#[test]
fn a_late_packet_of_a_closed_connection_keeps_its_port() {
    let fin_again = back(
        "100 s on, the server's FIN again",
        SERVER,
        C1,
        TcpFlags::FIN_ACK,
    )
    .setup(|t| t.advance_clock(100).map_err(|e| e.to_string()));
    let last = the_last_reset_then_another_container_after(|_| Ok(()), 200);
    with_the_first_in_time_wait("late packet", std::iter::once(fin_again).chain(last));
}

/// A port taken over from a holder whose claim had lost its record of closed flows (the LRU
/// evicted the claim, which was made again not knowing them) starts a record of its own:
/// the new holder's reset connection frees it after the CLOSE timeout, not after the
/// longest a closed flow of the old holder might have lived.
#[test]
fn a_port_taken_over_keeps_a_record_of_its_own_closed_flows() {
    after_a_short_close(
        "taken over",
        [
            away(
                "a second connection, after the LRU evicted the claim",
                C1,
                SERVER2,
                TcpFlags::SYN,
            )
            .setup(|t| claims(t, |_| None)),
            back("its SYN-ACK", SERVER2, C1, TcpFlags::SYN_ACK),
            back("RST of the first", SERVER, C1, TcpFlags::RST),
            back("RST of the second", SERVER2, C1, TcpFlags::RST),
            away(
                "5 min later, another container takes the port over",
                C2,
                SERVER,
                TcpFlags::SYN,
            )
            .setup(|t| t.advance_clock(300).map_err(|e| e.to_string())),
            back("its SYN-ACK", SERVER, C2, TcpFlags::SYN_ACK),
            back("its RST", SERVER, C2, TcpFlags::RST),
            the_port_is_free_3_s_later(C3),
        ],
    );
}

/// 3 s later (past the CLOSE timeout of 1 s and its slack), `from`'s SYN keeps port 40000:
/// the mapping of a reset connection has let it go.
fn the_port_is_free_3_s_later(from: Endpoint) -> Case {
    away(
        "3 s later, another container's SYN from the same port keeps it",
        from,
        SERVER,
        TcpFlags::SYN,
    )
    .setup(|t| t.advance_clock(3).map_err(|e| e.to_string()))
}

/// C1's ACK after the LRU evicted every claim: it makes its mapping's claim again.
fn ack_after_the_claim_is_evicted() -> Case {
    away(
        "ACK, after the LRU evicted the claim",
        C1,
        SERVER,
        TcpFlags::ACK,
    )
    .setup(|t| claims(t, |_| None))
}

/// A live connection's claim on its external port, evicted by the LRU under pressure, is
/// made again by the connection's next packet that keeps the mapping alive: another
/// container's SYN from the same port then gets another port, not the one in use.
#[test]
fn a_live_mapping_makes_its_evicted_claim_again() {
    after_a_short_close(
        "evicted claim",
        [
            ack_after_the_claim_is_evicted(),
            out(
                "another container's SYN from the same port",
                tcp_out(C2, SERVER3, TcpFlags::SYN),
            )
            .valid_output()
            .check(not_from_port_40000(
                "port 40000 given to a second container while C1's connection lives",
            )),
        ],
    );
}

/// A claim made again after the LRU evicted it does not know its mapping's closed flows
/// (`CLOSED_UNKNOWN`), so that mapping's last close holds the port as long as any closed
/// state may last. Once that mapping is over (its claim expired), the endpoint's next
/// mapping on the same port starts a record of its own: reset, it frees the port after the
/// CLOSE timeout, as any reset connection does, not after TIME_WAIT's.
#[test]
fn a_mapping_over_leaves_no_unknown_to_the_next_on_its_port() {
    let again = answered(
        "an hour later, a new connection from the same port keeps it",
        |t| t.advance_clock(3600).map_err(|e| e.to_string()),
    );
    let flow = [ack_after_the_claim_is_evicted(), reset_by_the_server()]
        .into_iter()
        .chain(again)
        .chain([reset_by_the_server(), the_port_is_free_3_s_later(C2)]);
    after_a_short_close("claim made again, then over", flow);
}

/// Where another container took a live mapping's port (its claim evicted between two of
/// the mapping's packets), the mapping's owner does not follow it there: its next new flow
/// gets a port of its own, not the one the other container now holds.
#[test]
fn a_mapping_whose_port_was_taken_does_not_follow_it() {
    after_a_short_close(
        "taken port",
        [
            away("ACK", C1, SERVER, TcpFlags::ACK),
            away(
                "another container's SYN from the same port, after the LRU evicted the claim",
                C2,
                SERVER3,
                TcpFlags::SYN,
            )
            .setup(|t| claims(t, |_| None)),
            out("C1's new connection", tcp_out(C1, SERVER2, TcpFlags::SYN))
                .valid_output()
                .check(not_from_port_40000(
                    "C1's new flow uses port 40000, which C2 holds now",
                )),
        ],
    );
}

/// After `answered_with_a_short_close`: C1's connection to SERVER completes, C1 opens a
/// second from the same port to SERVER2, and the first closes (TIME_WAIT, 240 s).
fn two_connections_the_first_in_time_wait() -> Vec<Case> {
    vec![
        away("ACK", C1, SERVER, TcpFlags::ACK),
        away("second connection's SYN", C1, SERVER2, TcpFlags::SYN),
        back("its SYN-ACK", SERVER2, C1, TcpFlags::SYN_ACK),
        away("FIN out", C1, SERVER, TcpFlags::FIN_ACK),
        back("FIN back", SERVER, C1, TcpFlags::FIN_ACK).check(first_is_in_time_wait),
    ]
}

/// Runs, as flow `name`, [`answered_with_a_short_close`],
/// [`two_connections_the_first_in_time_wait`] and then `then`.
fn with_the_first_in_time_wait(name: &str, then: impl IntoIterator<Item = Case>) {
    after_a_short_close(
        name,
        two_connections_the_first_in_time_wait()
            .into_iter()
            .chain(then),
    );
}

/// The second connection's RST, after `setup`: the mapping's last flow closes. 30 s later,
/// C2's SYN from port 40000 must leave from another port: the mapping of C1's connection
/// in TIME_WAIT still holds 40000.
fn the_last_reset_then_another_container(
    setup: impl Fn(&mut ProgTest) -> Result<(), String> + 'static,
) -> Vec<Case> {
    the_last_reset_then_another_container_after(setup, 30)
}

/// As [`the_last_reset_then_another_container`], `secs` later.
fn the_last_reset_then_another_container_after(
    setup: impl Fn(&mut ProgTest) -> Result<(), String> + 'static,
    secs: u32,
) -> Vec<Case> {
    vec![
        inbound(
            "RST of the second connection",
            tcp_in(SERVER2, ext(40000), TcpFlags::RST),
        )
        .setup(setup)
        .output(tcp_in(SERVER2, C1, TcpFlags::RST)),
        out(
            &format!("{secs} s later, another container's SYN from the same port gets another"),
            tcp_out(C2, SERVER3, TcpFlags::SYN),
        )
        .setup(move |t| t.advance_clock(secs).map_err(|e| e.to_string()))
        .valid_output()
        .check(first_is_in_time_wait)
        .check(not_from_port_40000(
            "port 40000 given away while a flow of its mapping lives",
        )),
    ]
}

/// `from`'s packet to `to`, leaving from port 40000 of the external address.
fn away(name: &str, from: Endpoint, to: Endpoint, flags: TcpFlags) -> Case {
    out(name, tcp_out(from, to, flags)).output(tcp_out(ext(40000), to, flags))
}

/// `server`'s packet to `to`'s external endpoint (port 40000), translated back to `to`.
fn back(name: &str, server: Endpoint, to: Endpoint, flags: TcpFlags) -> Case {
    inbound(name, tcp_in(server, ext(40000), flags)).output(tcp_in(server, to, flags))
}

/// The packet left translated, from another port than 40000 (`taken` says why that one
/// must not be used).
fn not_from_port_40000(taken: &'static str) -> impl Fn(&ProgTest, &Run) -> Result<(), String> {
    move |t, run| match endpoints_of(&run.frame).1 {
        (EXT, 40000) => Err(format!("{taken}: {:#?}", live(t)?)),
        (EXT, _) => Ok(()),
        from => Err(format!("left from {from:?}, not translated")),
    }
}

/// C1's first connection (to SERVER) lives, in TIME_WAIT.
fn first_is_in_time_wait(t: &ProgTest, _: &Run) -> Result<(), String> {
    let flows = live(t)?;
    flows
        .iter()
        .find(|f| (f.original.src, f.original.sport) == C1 && f.original.dst == SERVER.0)
        .filter(|f| f.state == Some("TIME_WAIT"))
        .map(|_| ())
        .ok_or_else(|| format!("no flow from C1 to SERVER in TIME_WAIT: {flows:#?}"))
}

/// Every claim as a datapath from before `closed_until` leaves it: 0 in that word.
fn forget_closed_flows(t: &mut ProgTest) -> Result<(), String> {
    claims(t, |c| {
        Some(NatClaim {
            closed_until: 0,
            ..c
        })
    })
}

/// Rewrites every claim with `f` (`None`: removed, as the LRU evicts it).
fn claims(t: &mut ProgTest, f: impl Fn(NatClaim) -> Option<NatClaim>) -> Result<(), String> {
    let mut claims: aya::maps::HashMap<_, NatClaimKey, NatClaim> =
        aya::maps::HashMap::try_from(t.ebpf_mut().map_mut(NAT_CLAIMS).ok_or("no claims map")?)
            .map_err(|e| e.to_string())?;
    let all: Vec<(NatClaimKey, NatClaim)> = claims
        .iter()
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    for (k, c) in all {
        match f(c) {
            Some(c) => claims.insert(k, c, 0),
            None => claims.remove(&k),
        }
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[test]
fn udp_and_icmp_echo_round_trips() {
    let udp = vec![
        out("UDP out", packet::udp(TO_OUTSIDE, C1, SERVER, b"query")).output(packet::udp(
            TO_OUTSIDE,
            ext(40000),
            SERVER,
            b"query",
        )),
        inbound(
            "UDP back",
            packet::udp(FROM_OUTSIDE, SERVER, ext(40000), b"answer"),
        )
        .output(packet::udp(FROM_OUTSIDE, SERVER, C1, b"answer")),
    ];
    let zero = |f: Vec<u8>| {
        let mut f = f;
        f[14 + 20 + 6] = 0;
        f[14 + 20 + 7] = 0;
        f
    };
    let udp_zero = vec![
        out(
            "UDP without checksum out",
            zero(packet::udp(TO_OUTSIDE, C1, SERVER, b"q")),
        )
        .output(zero(packet::udp(TO_OUTSIDE, ext(40000), SERVER, b"q"))),
        inbound(
            "UDP without checksum back",
            zero(packet::udp(FROM_OUTSIDE, SERVER, ext(40000), b"a")),
        )
        .output(zero(packet::udp(FROM_OUTSIDE, SERVER, C1, b"a"))),
    ];
    let ping = vec![
        out(
            "echo request out",
            packet::icmp_echo(TO_OUTSIDE, C1.0, SERVER.0, false, 7, 1, &[1; 56]),
        )
        .output(packet::icmp_echo(
            TO_OUTSIDE, EXT, SERVER.0, false, 7, 1, &[1; 56],
        )),
        inbound(
            "echo reply back",
            packet::icmp_echo(FROM_OUTSIDE, SERVER.0, EXT, true, 7, 1, &[1; 56]),
        )
        .output(packet::icmp_echo(
            FROM_OUTSIDE,
            SERVER.0,
            C1.0,
            true,
            7,
            1,
            &[1; 56],
        )),
        // Same identifier from another container: the identifier is translated.
        out(
            "second container, same identifier",
            packet::icmp_echo(TO_OUTSIDE, C2.0, SERVER.0, false, 7, 1, &[2; 56]),
        )
        .valid_output()
        .check(|_, run| match decode(&run.frame)?.l4 {
            packet::L4::Icmp {
                ident: Some(id), ..
            } if id != 7 => Ok(()),
            other => Err(format!("identifier not translated: {other:?}")),
        }),
    ];
    run_masqueraded(vec![
        ("udp", udp),
        ("udp zero checksum", udp_zero),
        ("ping", ping),
    ]);
}

fn loaded(cfg: DpConfig) -> ProgTest {
    let mut t = load(&cfg);
    packets::masquerade(&mut t, DEV, 0);
    t
}

#[test]
fn same_source_port_from_two_containers_gets_two_external_ports() {
    require_root();
    let mut t = loaded(DpConfig::default());
    let syn = |from| tcp_out(from, SERVER, TcpFlags::SYN);
    passes(
        &mut t,
        Hook::UplinkEgress,
        "C1 keeps its port",
        &syn(C1),
        &syn(ext(40000)),
    );
    let r2 = run(&mut t, Hook::UplinkEgress, &syn(C2));
    let p2 = source_port_of(&r2);
    assert_ne!(p2, 40000, "C2 must not share C1's external port");
    assert_run("C2 gets another port", &r2, verdict::NEXT, &syn(ext(p2)));
    // Each reply reaches its own container.
    let synack = |to| tcp_in(SERVER, to, TcpFlags::SYN_ACK);
    for (what, port, c) in [
        ("reply to C2's port", p2, C2),
        ("reply to C1's port", 40000, C1),
    ] {
        passes(
            &mut t,
            Hook::UplinkIngress,
            what,
            &synack(ext(port)),
            &synack(c),
        );
    }
}

#[test]
fn one_container_keeps_one_external_port_for_every_destination() {
    require_root();
    let mut t = loaded(DpConfig::default());
    // Force a translated port: C2 takes 40000 first, so C1 cannot keep it.
    run(&mut t, Hook::UplinkEgress, &udp_out(C2, SERVER, b"x"));
    let p = source_port_of(&run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"a")));
    assert_ne!(p, 40000);
    let what = "the second destination sees the same external port (endpoint-independent mapping)";
    let want = udp_out(ext(p), SERVER2, b"b");
    passes(
        &mut t,
        Hook::UplinkEgress,
        what,
        &udp_out(C1, SERVER2, b"b"),
        &want,
    );
    let back = udp_in(SERVER2, ext(p), b"c");
    passes(
        &mut t,
        Hook::UplinkIngress,
        "the reply returns",
        &back,
        &udp_in(SERVER2, C1, b"c"),
    );
}

#[test]
fn a_tiny_port_range_is_used_up_and_then_drops_are_counted() {
    require_root();
    let cfg = DpConfig {
        port_min: 61000,
        port_max: 61001,
        ..DpConfig::default()
    };
    let mut t = loaded(cfg);
    let mut ports = Vec::new();
    for c in [C1, C2, C3] {
        let r = run(&mut t, Hook::UplinkEgress, &udp_out(c, SERVER, b"x"));
        assert_eq!(r.verdict, verdict::NEXT);
        ports.push(source_port_of(&r));
    }
    ports.sort_unstable();
    assert_eq!(
        ports,
        vec![40000, 61000, 61001],
        "the original port, then the whole range"
    );
    let r = run(&mut t, Hook::UplinkEgress, &udp_out(C4, SERVER, b"x"));
    assert_eq!(
        r.verdict,
        verdict::SHOT,
        "a fourth endpoint has no port left:\n{}",
        packet::describe(&r.frame)
    );
    let stats = t.stats().expect("stats");
    assert_eq!(stats.dropped(DropReason::NatPortExhausted).packets, 1);
    // No port is used twice, and every mapping still answers.
    let claims = maps::nat_claims(t.ebpf()).expect("claims");
    assert_eq!(claims.len(), 3);
    for c in [C1, C2, C3] {
        let claim = claims
            .iter()
            .find(|(_, v)| maps::addr_of(v.int_addr()) == c.0)
            .expect("claim");
        let back = udp_in(SERVER, ext(u16::from_be(claim.0.ext_port)), b"y");
        passes(
            &mut t,
            Hook::UplinkIngress,
            "reply",
            &back,
            &udp_in(SERVER, c, b"y"),
        );
    }
}

#[test]
fn filtering_is_address_and_port_dependent_unless_configured_otherwise() {
    require_root();
    for (filtering, translated) in [(0, false), (FILTERING_ENDPOINT_INDEPENDENT, true)] {
        let mut t = loaded(DpConfig {
            filtering,
            ..DpConfig::default()
        });
        run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"hello"));
        let stranger = udp_in(SERVER2, ext(40000), b"unsolicited");
        if translated {
            let what = "endpoint-independent filtering lets a new remote in";
            let want = udp_in(SERVER2, C1, b"unsolicited");
            passes(&mut t, Hook::UplinkIngress, what, &stranger, &want);
            // …and the container's answer goes out through the same mapping.
            let hi = udp_out(C1, SERVER2, b"hi");
            passes(
                &mut t,
                Hook::UplinkEgress,
                "answer",
                &hi,
                &udp_out(ext(40000), SERVER2, b"hi"),
            );
        } else {
            let what = "address-and-port-dependent filtering leaves it to the host";
            passes(&mut t, Hook::UplinkIngress, what, &stranger, &stranger);
        }
    }
}

#[test]
fn traffic_that_is_not_masqueraded_is_left_alone() {
    require_root();
    let cases = vec![
        out(
            "the host's own traffic",
            tcp_out(HOST, SERVER, TcpFlags::SYN),
        )
        .setup(masquerade)
        .check(live_flows(0)),
        out(
            "a container leaving through another interface",
            tcp_out(C1, SERVER, TcpFlags::SYN),
        )
        .setup(|t| {
            packets::masquerade(t, 4242, 0);
            Ok(())
        })
        .check(live_flows(0)),
        inbound(
            "an inbound packet for no flow",
            tcp_in(SERVER, ext(40000), TcpFlags::SYN),
        )
        .setup(masquerade),
        inbound(
            "GRE from outside",
            packet::ip_proto(FROM_OUTSIDE, SERVER.0, EXT, 47, &[0; 8]),
        )
        .setup(masquerade),
        out(
            "GRE from the host",
            packet::ip_proto(TO_OUTSIDE, EXT, SERVER.0, 47, &[0; 8]),
        )
        .setup(masquerade),
    ];
    run_cases(cases);
}

#[test]
fn packets_that_would_leak_a_container_address_are_dropped_and_counted() {
    require_root();
    let udp = packet::udp(TO_OUTSIDE, C1, SERVER, &[7; 3000]);
    let later_fragment = packet::fragment(&udp, 1480, 99).remove(1);
    let unreachable = packet::icmp_error(
        TO_OUTSIDE,
        C1.0,
        SERVER.0,
        3,
        3,
        [0; 4],
        ip_packet(&packet::udp(FROM_OUTSIDE, SERVER, C1, b"x")),
    );
    let cases = vec![
        out("a RST for no flow", tcp_out(C1, SERVER, TcpFlags::RST))
            .setup(masquerade)
            .dropped()
            .check(dropped_once(DropReason::TcpRstWithoutFlow)),
        out("a later fragment without its first", later_fragment)
            .setup(masquerade)
            .dropped()
            .check(dropped_once(DropReason::FragmentWithoutFirst)),
        out("an ICMP error about no flow", unreachable)
            .setup(masquerade)
            .dropped()
            .check(dropped_once(DropReason::IcmpErrorWithoutFlow)),
        out(
            "GRE from a container",
            packet::ip_proto(TO_OUTSIDE, C1.0, SERVER.0, 47, &[0; 8]),
        )
        .setup(masquerade)
        .dropped()
        .check(dropped_once(DropReason::UnsupportedProtocol)),
    ];
    run_cases(cases);
}

#[test]
fn an_expired_entry_counts_as_absent() {
    require_root();
    let mut t = loaded(DpConfig::default());
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"x"));
    // Age both entries past their expiry.
    let entries = maps::conntrack_entries(t.ebpf()).expect("entries");
    assert_eq!(entries.len(), 2);
    for (k, e) in entries {
        let old = CtEntry {
            expires: maps::monotonic_now() - 5,
            ..e
        };
        maps::insert_conntrack(t.ebpf_mut(), &k, &old).expect("age entry");
    }
    let late = udp_in(SERVER, ext(40000), b"late");
    let what = "a reply to an expired flow is not translated";
    passes(&mut t, Hook::UplinkIngress, what, &late, &late);
    assert!(
        maps::flows(t.ebpf(), maps::monotonic_now())
            .expect("flows")
            .is_empty()
    );
}

/// The translated packet a container's flow left with, as an ICMP error would quote it.
fn icmp_error_case(
    name: &str,
    outbound: Vec<u8>,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    from: Ipv4Addr,
    inner_src_after: Endpoint,
) {
    let mut t = loaded(DpConfig::default());
    let left = run(&mut t, Hook::UplinkEgress, &outbound);
    assert_eq!(left.verdict, verdict::NEXT);
    let error = packet::icmp_error(
        FROM_OUTSIDE,
        from,
        EXT,
        icmp_type,
        code,
        rest,
        ip_packet(&left.frame),
    );
    let r = run(&mut t, Hook::UplinkIngress, &error);
    assert_eq!(r.verdict, verdict::NEXT, "{name}");
    let outer =
        decode(&r.frame).unwrap_or_else(|e| panic!("{name}: {e}\n{}", packet::describe(&r.frame)));
    assert_eq!(
        (outer.src, outer.dst),
        (from, inner_src_after.0),
        "{name}: outer addresses"
    );
    let packet::L4::Icmp {
        icmp_type: ty,
        code: co,
        bytes,
        ..
    } = &outer.l4
    else {
        panic!("{name}: not ICMP")
    };
    assert_eq!(
        (*ty, *co, &bytes[4..8]),
        (icmp_type, code, &rest[..]),
        "{name}: ICMP header kept"
    );
    let quoted = decode_quoted(&r.frame).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        (quoted.src, quoted.sport),
        inner_src_after,
        "{name}: quoted source restored"
    );
    assert_eq!(
        quoted.l4_checksum_ok,
        Some(true),
        "{name}: quoted L4 checksum"
    );
    // And it is what the container sent, byte for byte: the quote is its packet again.
    assert_eq!(
        &bytes[8..],
        ip_packet(&outbound),
        "{name}: the quote is the container's own packet"
    );
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    require_root();
    icmp_error_case(
        "port unreachable for UDP",
        packet::udp(TO_OUTSIDE, C1, SERVER, b"q"),
        3,
        3,
        [0; 4],
        SERVER.0,
        C1,
    );
    icmp_error_case(
        "fragmentation needed for TCP",
        packet::tcp(TO_OUTSIDE, C1, SERVER, TcpFlags::PSH_ACK, 1, 1, &[0; 200]),
        3,
        4,
        [0, 0, 0x05, 0x78],
        ROUTER,
        C1,
    );
    icmp_error_case(
        "time exceeded for an echo request",
        packet::icmp_echo(TO_OUTSIDE, C1.0, SERVER.0, false, 9, 3, &[5; 32]),
        11,
        0,
        [0; 4],
        ROUTER,
        (C1.0, 9),
    );
    icmp_error_case(
        "parameter problem for TCP",
        tcp_out(C1, SERVER, TcpFlags::SYN),
        12,
        0,
        [20, 0, 0, 0],
        ROUTER,
        C1,
    );
}

#[test]
fn icmp_errors_about_translated_ports_restore_them() {
    require_root();
    let mut t = loaded(DpConfig::default());
    run(&mut t, Hook::UplinkEgress, &udp_out(C2, SERVER, b"x"));
    let left = run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"q"));
    let p = source_port_of(&left);
    assert_ne!(p, 40000);
    let error = packet::icmp_error(
        FROM_OUTSIDE,
        ROUTER,
        EXT,
        11,
        0,
        [0; 4],
        ip_packet(&left.frame),
    );
    let r = run(&mut t, Hook::UplinkIngress, &error);
    let quoted = decode_quoted(&r.frame).expect("valid");
    assert_eq!(
        (quoted.src, quoted.sport, quoted.l4_checksum_ok),
        (C1.0, 40000, Some(true))
    );
    assert_eq!(decode(&r.frame).expect("valid").dst, C1.0);
}

#[test]
fn icmp_errors_about_no_flow_go_to_the_host() {
    require_root();
    let quoted = ip_packet(&packet::udp(TO_OUTSIDE, HOST, SERVER, b"q")).to_vec();
    run_cases(vec![
        inbound(
            "an error about the host's own packet",
            packet::icmp_error(FROM_OUTSIDE, ROUTER, EXT, 3, 3, [0; 4], &quoted),
        )
        .setup(masquerade),
    ]);
}

#[test]
fn a_fragmented_datagram_crosses_in_both_directions() {
    require_root();
    let mut t = loaded(DpConfig::default());
    let payload: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
    // Each way: the datagram, what it must come out as, and the fragments' IP identifier.
    let ways = [
        (
            "outbound",
            Hook::UplinkEgress,
            udp_out(C1, SERVER, &payload),
            udp_out(ext(40000), SERVER, &payload),
            7,
        ),
        (
            "inbound",
            Hook::UplinkIngress,
            udp_in(SERVER, ext(40000), &payload),
            udp_in(SERVER, C1, &payload),
            8,
        ),
    ];
    for (way, hook, datagram, translated, ident) in ways {
        let expected = packet::fragment(&translated, 1480, ident);
        for (i, (frag, want)) in packet::fragment(&datagram, 1480, ident)
            .iter()
            .zip(&expected)
            .enumerate()
        {
            passes(&mut t, hook, &format!("{way} fragment {i}"), frag, want);
        }
    }
}

#[test]
fn conntrack_entries_hold_both_directions_with_counters() {
    require_root();
    let mut t = loaded(DpConfig::default());
    run(
        &mut t,
        Hook::UplinkEgress,
        &tcp_out(C1, SERVER, TcpFlags::SYN),
    );
    let entries = maps::conntrack_entries(t.ebpf()).expect("entries");
    let orig = ct_key(C1, SERVER, PROTO_TCP);
    let reply = ct_key(SERVER, ext(40000), PROTO_TCP);
    let find = |k: &CtKey| entries.iter().find(|(key, _)| key == k).map(|(_, e)| *e);
    let o = find(&orig).expect("original direction entry");
    let r = find(&reply).expect("reply direction entry");
    assert_eq!(
        (maps::addr_of(o.src_addr), u16::from_be(o.src_port)),
        (EXT, 40000)
    );
    assert_eq!((maps::addr_of(r.dst_addr), u16::from_be(r.dst_port)), C1);
    assert_eq!((o.packets, r.packets), (1, 0));
    let flows = maps::flows(t.ebpf(), maps::monotonic_now()).expect("flows");
    assert_eq!(flows.len(), 1);
    assert!(flows[0].unreplied);
    // The programs' clock comes from calibrated jiffies and may stand up to a tick ahead of
    // CLOCK_MONOTONIC, which `flows` reads: at a second's edge, one second ahead.
    assert!(
        flows[0].expires_in > 200 && flows[0].expires_in <= 241,
        "SYN_SENT lives 240 s: {} s left",
        flows[0].expires_in
    );
    assert!(flows[0].line().starts_with("tcp"), "{}", flows[0].line());
}

/// The second a new flow's entry records, as the programs read it, checked against
/// CLOCK_MONOTONIC read just before and after the packet.
fn created_second_follows_clock_monotonic(t: &mut ProgTest) {
    let before = maps::monotonic_now();
    run(t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"now"));
    let after = maps::monotonic_now();
    let entries = maps::conntrack_entries(t.ebpf()).expect("entries");
    let (_, e) = entries.first().expect("a flow");
    // Jiffies follow CLOCK_MONOTONIC to within a tick, which may straddle a second.
    assert!(
        (before.saturating_sub(1)..=after + 1).contains(&e.created),
        "created {} is not between {before} and {after}",
        e.created
    );
    assert_eq!(e.expires, e.created + DpConfig::DEFAULT_UDP);
}

#[test]
fn the_programs_read_clock_monotonic_seconds_from_calibrated_jiffies() {
    require_root();
    let mut t = loaded(DpConfig::default());
    let cfg = maps::read_config(t.ebpf()).expect("config");
    // Calibration skips tick edges it saw loosely and tries for seconds: a loaded machine
    // makes it slower, not absent.
    assert!(
        [100, 250, 300, 1000].contains(&cfg.clock_hz),
        "the tick rate was not calibrated: {cfg:?}"
    );
    let clock = t.stats().expect("stats").clock.expect("a clock");
    assert_eq!((clock.source, clock.hz), ("jiffies", cfg.clock_hz));
    created_second_follows_clock_monotonic(&mut t);
}

#[test]
fn without_a_calibration_the_programs_read_the_clock_helper() {
    require_root();
    let mut t = loaded(DpConfig::default());
    // The state a failed calibration leaves: no tick rate.
    maps::write_config_uncalibrated(t.ebpf_mut(), &DpConfig::default()).expect("config");
    let clock = t.stats().expect("stats").clock.expect("a clock");
    assert_eq!((clock.source, clock.hz), ("ktime_coarse", 0));
    created_second_follows_clock_monotonic(&mut t);
}

#[test]
fn an_advanced_clock_expires_flows_without_waiting() {
    require_root();
    let mut t = loaded(DpConfig::default());
    run(&mut t, Hook::UplinkEgress, &udp_out(C1, SERVER, b"x"));
    let live = |t: &ProgTest| {
        maps::flows(t.ebpf(), t.now().expect("now"))
            .expect("flows")
            .len()
    };
    assert_eq!(live(&t), 1);
    t.advance_clock(DpConfig::DEFAULT_UDP - 10)
        .expect("advance");
    assert_eq!(live(&t), 1, "the flow expires only after its timeout");
    t.advance_clock(20).expect("advance");
    assert_eq!(live(&t), 0, "the flow outlived its timeout");
    // The programs agree: the reply is not translated any more.
    let late = udp_in(SERVER, ext(40000), b"late");
    assert_eq!(run(&mut t, Hook::UplinkIngress, &late).frame, late);
}
