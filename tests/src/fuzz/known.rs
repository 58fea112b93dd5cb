//! Datapath defects the fuzzer has found and written up, not fixed yet. Each has a fixture
//! (its test is `#[ignore]`d with the reason) and a narrow test of whether a mismatch is an
//! instance of it, judged on the model's state at the mismatch. A run that meets one counts
//! it apart and names it; where the two parted on a packet, the model takes the datapath's
//! state and the episode goes on, where an invariant broke the episode ends. A mismatch that
//! none explains stops the run. When a defect is fixed, its entry goes and its fixture's
//! `#[ignore]` with it.

use super::runner::Mismatch;
use crate::model::{Model, invariants::Broken};

pub struct Known {
    /// The fixture that shows it (`tests/fuzz-fixtures/NAME.events`).
    pub fixture: &'static str,
    pub summary: &'static str,
    pub explains: fn(&Mismatch, &Model) -> bool,
}

pub const KNOWN: &[Known] = &[Known {
    fixture: "evicted-reply-tuple-taken-through-another-address",
    summary: "a flow whose entry the LRU evicted: a new flow takes the evicted entry's tuple \
              (the same client port to another of the host's addresses, or the same tuple \
              after a republish; also fixture evicted-original-tuple-taken-after-a-republish), \
              and the surviving entry is left a half pointing at another flow",
    explains: evicted_half_taken,
}];

/// The known defect that explains `m`, if one does.
pub fn explain(m: &Mismatch, model: &Model) -> Option<&'static Known> {
    KNOWN.iter().find(|k| (k.explains)(m, model))
}

/// Entries were evicted in the episode, and every half flow is a live entry whose other
/// half now belongs to a flow opened at the same time or later.
fn evicted_half_taken(m: &Mismatch, model: &Model) -> bool {
    if m.kind != "invariant" || m.broken.is_empty() || !m.evicted {
        return false;
    }
    m.broken.iter().all(|b| {
        let Broken::HalfFlow { table, key } = b else {
            return false;
        };
        let entries = model.ct.of(*table);
        let Some(e) = entries.get(key) else {
            return false;
        };
        let pk = e.peer_key(key);
        entries
            .get(&pk)
            .is_some_and(|p| p.peer_key(&pk) != *key && p.created >= e.created)
    })
}
