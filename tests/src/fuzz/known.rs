//! Datapath defects the fuzzer has found and written up, not fixed yet. Each has a fixture
//! (its test is `#[ignore]`d with the reason) and a narrow test of whether a mismatch is an
//! instance of it, judged on the model's state at the mismatch. A run that meets one counts
//! it apart and names it; where the two parted on a packet, the model takes the datapath's
//! state and the episode goes on, where an invariant broke the episode ends. A mismatch that
//! none explains stops the run. When a defect is fixed, its entry goes and its fixture's
//! `#[ignore]` with it.

use super::runner::Mismatch;
use crate::model::Model;

pub struct Known {
    /// The fixture that shows it (`tests/fuzz-fixtures/NAME.events`).
    pub fixture: &'static str,
    pub summary: &'static str,
    pub explains: fn(&Mismatch, &Model) -> bool,
}

pub const KNOWN: &[Known] = &[];

/// The known defect that explains `m`, if one does.
pub fn explain(m: &Mismatch, model: &Model) -> Option<&'static Known> {
    KNOWN.iter().find(|k| (k.explains)(m, model))
}
