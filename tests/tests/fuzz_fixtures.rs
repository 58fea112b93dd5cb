//! Sequences the differential fuzzer (`cargo xtask fuzz`, `netfast_tests::fuzz`) found the
//! datapath and the model disagreeing on, shrunk, replayed here on the real programs and
//! the model side by side: each must now replay without a mismatch. The events are in
//! `tests/fuzz-fixtures/NAME.events` (each under a comment saying what it is), the frames
//! in `NAME.pcap`. A fixture of a datapath defect not fixed yet is `#[ignore]`d with the
//! reason, and listed in `netfast_tests::fuzz::known`; fixing it removes both.

use netfast_tests::{
    fuzz::{self, smp::Rounds},
    require_root,
};

fn replay(name: &str) {
    require_root();
    if let Err(e) = fuzz::replay_fixture(name) {
        panic!("{e}");
    }
}

/// Runs `rounds` rounds of a multi-CPU race and fails on any broken promise.
fn races(which: Rounds, rounds: u32) {
    require_root();
    let report = fuzz::races(which, rounds)
        .unwrap_or_else(|e| panic!("the multi-CPU phase cannot run: {e}"));
    assert!(
        report.broken.is_empty(),
        "{} broken promises in {} rounds:\n  {}",
        report.broken.len(),
        report.rounds,
        report.broken.join("\n  ")
    );
}

/// The multi-CPU races' fixtures, one table: each row `name(Which, rounds);`, under the
/// comment that says what the race broke, is a test `name` that runs `rounds` rounds of race
/// `Rounds::Which` through [`races`]. (The replays stay plain functions, in the form `cargo
/// xtask fuzz` writes them in.)
macro_rules! race_fixtures {
    ($($(#[$attr:meta])* $name:ident($which:ident, $rounds:expr);)*) => {
        $(
            $(#[$attr])*
            #[test]
            fn $name() {
                races(Rounds::$which, $rounds);
            }
        )*
    };
}

race_fixtures! {
    /// Found by the multi-CPU phase (`cargo xtask fuzz`): two threads pinned to two CPUs;
    /// container A's UDP mapping of port P expires; then, at once, A sends from P again (to
    /// another server) and container B sends from P. A finds the expired claim on P still its
    /// own and only raises its expiry; B finds it expired and takes it over with a
    /// compare-and-exchange of the owner word, which still names A, so it succeeds: both bind
    /// P, and both leave as EXT:P (or the second flow to one server is dropped as
    /// `ct_insert_failed` while its endpoint keeps P). Seen a few times in a thousand rounds
    /// (fewer on a slow machine, where the two CPUs meet less often): 10000 rounds.
    an_expired_claim_is_retaken_by_one_endpoint_only(Takeovers, 10_000);

    /// Found in review: two CPUs see one TCP flow's close at once (its two ends' packets, one
    /// on each). Both read the flow as open, both see it close, and each subtracts the close
    /// from its mapping's count of open flows; or one writes back the flags it read over the
    /// other's mark that the close was subtracted, and a later packet subtracts it again. The
    /// mapping of a container with two connections then counts none while one is open, and its
    /// port goes at the next close, under the open connection. The test churns a flow on two
    /// CPUs (one resets it from the server's end, again and again, the other opens it again
    /// with SYNs from the container) while another flow holds the mapping; before the fix, some
    /// 15% of rounds ended with the mapping counting no open flow.
    a_flow_closed_from_both_ends_at_once_leaves_its_mapping_once(Closes, 100);

    /// Two CPUs each wrote the TCP state they had computed from what they read before the
    /// other's write: a flow's last FIN (CLOSE_WAIT → TIME_WAIT) on one CPU while the other
    /// side's ACKs go through the other left the flow in CLOSE_WAIT (seen once in CI, as
    /// `conntrack_netns`'s published flow stuck there).
    a_last_fin_against_the_other_sides_acks_keeps_its_state(StateRace, 1500);

    /// A server's RST against its client's ACKs on another CPU (smp round kind 11): the ACKs
    /// read the flow ESTABLISHED before the reset and gave the closed flow (and its mapping)
    /// the established timeout after the RST had written the close's, holding the external
    /// port for an established flow's time.
    a_reset_against_the_other_sides_acks_keeps_its_short_life(ResetRace, 3000);

    /// FINs from both ends at once, one on each CPU (smp round kind 12): each read the flow
    /// ESTABLISHED without the other's FIN, and both moved it to FIN_WAIT; the ACKs then took
    /// it to CLOSE_WAIT with both FINs seen, where it stayed: never closed, its close never
    /// subtracted from its mapping, which held its port as for an open flow.
    fins_from_both_ends_at_once_close_the_flow(FinRace, 1500);
}

/// Found by `cargo xtask fuzz` (seed 2; reduced by hand to what matters): a container's TCP
/// flow is reset by the server, which releases its mapping (the last flow: the mapping
/// shrinks to the close's 10 s and a slack); the container reopens the flow with a SYN
/// from the same port (CLOSE → SYN_SENT, 240 s), but the reopened flow never extends the
/// mapping again (its entry's `map_expires` still holds the first opening's 270 s, and
/// `CT_F_RELEASED` stays set), so 30 s later another container takes the external port
/// over while the reopened flow lives on it: one external endpoint, two internal ones.
#[test]
fn reopened_flow_outlives_its_mapping() {
    replay("reopened-flow-outlives-its-mapping");
}

/// Found by `cargo xtask fuzz` (seed 3 episode 141, as a half flow after an unpublish;
/// reduced by hand to the handshake): a container of network 1 connects to a port published
/// to a container of network 2. The hairpin flow's entries carry the server's network
/// (`net_id`), and `bridge_ingress` uses an entry only if that network's bridge is the one
/// the packet came in on: the client's own packets never match their flow at its bridge.
/// Its ACK goes to the host untranslated (the handshake never completes); a UDP client's
/// every packet opens the flow again (`JOINED`, untracked, its mapping's flow count one
/// higher each time); after an unpublish, a new flow overwrites the original entry and
/// leaves the old reply entry a live half flow. Fixed on main (each entry of a hairpin flow
/// now carries its own sender's network): this is its regression test.
#[test]
fn hairpin_client_of_another_network() {
    replay("hairpin-client-of-another-network");
}

/// Found by `cargo xtask fuzz` (seed 6 episode 67; reduced by hand): ports 8080 and 8081
/// are published to one container port; a client sends to 8080 from port 40000, again 61 s
/// later, and nothing answers (a one-way stream: its original entry is refreshed, its reply
/// entry is not). 240 s later the reply entry has expired while the flow lives through its
/// original (`lookup` would revive it); the same client port to 8081 then needs the same
/// reply tuple, `insert_pair` judges the held entry dead by its own expiry alone and takes
/// it over: the 8080 flow is left a half, and the container's answers to it would leave
/// from 8081. A held reply entry is dead only if its flow is (the revival rule).
#[test]
fn one_way_flow_loses_its_reply_tuple() {
    replay("one-way-flow-loses-its-reply-tuple");
}

/// Found by `cargo xtask fuzz` (seed 7 episode 231; reduced by hand): a container's UDP
/// flow holds EXT:40000 to 198.51.100.2:8080; port 40000 is then published to another
/// container. Once the flow is dead (its mapping still alive), the remote's packet to
/// EXT:40000 opens a DNAT flow (in the table of unanswered inbound flows), and the
/// container's next packet opens its masqueraded flow again in the main table on the same
/// external tuple: `insert_pair` asks the inbound table only for inbound flows. When the
/// published container answers, `promote` moves its flow to the main table over the
/// masqueraded flow's reply entry, which is left a half flow (its answers now go to the
/// published container).
#[test]
fn inbound_flow_shares_a_masquerade_tuple() {
    replay("inbound-flow-shares-a-masquerade-tuple");
}

/// Found by `cargo xtask fuzz` (seed 1 episode 1, after merging the hairpinning of
/// masquerade mappings; reduced by hand): container A pings a server with identifier 0, so
/// A's mapping holds EXT's ICMP identifier 0; container B then pings the host itself (EXT).
/// An echo request's key has destination port 0, so `live_claim(EXT, 0, ICMP)` finds A's
/// mapping, and B's ping is hairpinned to A (its identifier rewritten to 0) instead of
/// reaching the host. An echo request names no external endpoint: the mapping hairpin is
/// for TCP and UDP (and, if anything, echo replies).
#[test]
fn echo_to_the_host_taken_by_an_identifier_0_mapping() {
    replay("echo-to-the-host-taken-by-an-identifier-0-mapping");
}

/// Found by `cargo xtask fuzz` (seed 1 episode 256 of a 200k-packet run; shrunk, written
/// out by hand): UDP port 53 is published on every address of the host; a client sends
/// from port 8080 to 198.51.100.3:53, which opens an inbound flow; the LRU evicts its reply
/// entry (172.18.0.2:53 > 192.0.2.50:8080); the same client port then sends to
/// 198.51.100.1:53. The new flow needs the same reply tuple, finds it free and takes it:
/// the first flow's original entry lives on, a half whose other half is now another
/// flow's, and the container's answers to it would leave from 198.51.100.1. Nothing in
/// the tables leads from a reply tuple to a survivor whose other half was evicted. Fixed:
/// a lookup trusts an entry only if its other half is missing or points back at it; the
/// client's next packet to 198.51.100.3 (added to the reduction) removes the survivor and
/// goes on as one of no known flow (`ct_stale_half`).
#[test]
fn evicted_reply_tuple_taken_through_another_address() {
    replay("evicted-reply-tuple-taken-through-another-address");
}

/// Found by `cargo xtask fuzz` (seed 1 episode 28 of a 200k-packet run; shrunk, written
/// out by hand), the other way round from the fixture above: a client's SYN to port 40000,
/// published to 172.19.0.2:5000, opens an inbound flow; the LRU evicts its original entry;
/// port 40000 is published again, to 172.18.0.4:53; the client's next SYN on the same tuple
/// finds the original tuple free and opens a new flow: the first flow's reply entry lives
/// on, a half pointing at the new flow (172.19.0.2's late answers would leave as the new
/// flow's). Fixed as the fixture above: 172.19.0.2's late SYN-ACK (added to the reduction)
/// removes the survivor and goes on as a packet of no known flow, with a mapping of its own.
#[test]
fn evicted_original_tuple_taken_after_a_republish() {
    replay("evicted-original-tuple-taken-after-a-republish");
}

/// Found by `cargo xtask fuzz --packets 1000000` (seed 1 episode 1317, shrunk): a
/// container's RST closes its masqueraded flow, the last of its mapping, which then lives
/// only as long as the close (10 s and a slack); the close wrote that into the entry it
/// came through, not into the other one. The server's answer 6 s later refreshes the flow
/// (CLOSE, 10 s more) through the other entry, which still held the opening's lifetime of
/// the mapping and so did not extend it: another container took the external port while
/// the flow lived on it. Both entries now learn the mapping's lifetime at the close.
#[test]
fn answer_to_a_close_outlives_its_mapping() {
    replay("answer-to-a-close-outlives-its-mapping");
}

/// Found by CI's short fuzz (random seed 789372828, episode 80, shrunk): a container's
/// flow closes (both FINs: TIME_WAIT, 240 s) while a hairpin from another network still
/// uses its mapping, so the mapping has one flow fewer and keeps its lifetime. The
/// hairpin's RST then closes the last flow of the mapping, which was cut to that close's
/// 10 s (and a slack), shorter than the flow still in TIME_WAIT: 31 s later another
/// container took the external port while that flow lived on it. Now every close records
/// how long its flow lives in the claim (`closed_until`), and the last close keeps the
/// mapping that long.
#[test]
fn last_close_cuts_short_an_earlier_close() {
    replay("last-close-cuts-short-an-earlier-close");
}

/// Found by the short fuzz once it evicted bindings (seed 1, episode 1, shrunk): two UDP
/// flows of one container endpoint share a mapping; the LRU evicts its binding; the next
/// packet of one flow made the binding again counting one flow, while two used it. A TCP
/// close would then have taken the count to zero and cut the mapping's life short under a
/// live flow. A binding made again now does not know its count (`FLOWS_UNKNOWN`), which
/// closes never lower.
#[test]
fn mapping_evicted_under_a_live_flow() {
    replay("mapping-evicted-under-a-live-flow");
}

/// Found by the short fuzz once it evicted bindings (seed 1, episode 1, shrunk): as above,
/// but the next packet opens a new flow, which retakes the endpoint's own live claim on the
/// port and binds it again: counting one flow, while another lived on the port. Retaking a
/// live claim of its own now binds it not knowing the count.
#[test]
fn mapping_evicted_then_retaken() {
    replay("mapping-evicted-then-retaken");
}
