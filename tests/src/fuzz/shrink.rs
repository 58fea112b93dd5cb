//! Shrinking a failing sequence (delta debugging): drop chunks of events, then single
//! events, as long as what is left still fails the same way.

use super::{
    event::Event,
    runner::{Mismatch, Runner},
};

/// Whether `events`, replayed from a fresh state, fail with a mismatch of `kind`.
fn fails(r: &mut Runner, events: &[Event], kind: &str) -> Option<Mismatch> {
    match r.replay(events) {
        Err(m) if m.kind == kind => Some(m),
        _ => None,
    }
}

/// The smallest sequence found that fails like `events` did (`first` its mismatch), and its
/// mismatch. The first event (the episode's setup) is always kept.
pub fn shrink(
    r: &mut Runner,
    events: &[Event],
    first: &Mismatch,
    budget: usize,
) -> (Vec<Event>, Mismatch) {
    let kind = first.kind;
    let mut best: Vec<Event> = events[..=first.step.min(events.len() - 1)].to_vec();
    // Not reproducible from a fresh state (it needed the earlier state of the run): keep
    // the whole sequence.
    let Some(mut found) = fails(r, &best, kind) else {
        return (events.to_vec(), first.clone());
    };
    let mut tries = 0;
    let mut n = 2usize;
    while best.len() > 2 && tries < budget {
        let body = best.len() - 1;
        let chunk = body.div_ceil(n);
        let mut reduced = false;
        let mut start = 1;
        while start < best.len() && tries < budget {
            let end = (start + chunk).min(best.len());
            let candidate: Vec<Event> = best[..start]
                .iter()
                .chain(best[end..].iter())
                .cloned()
                .collect();
            tries += 1;
            if let Some(m) = fails(r, &candidate, kind) {
                // Cut after the new failing step too.
                best = candidate[..=m.step.min(candidate.len() - 1)].to_vec();
                found = m;
                reduced = true;
            } else {
                start = end;
            }
        }
        if reduced {
            n = n.saturating_sub(1).max(2);
        } else {
            if chunk <= 1 {
                break;
            }
            n = (n * 2).min(body);
        }
    }
    // Replay once more so that the runner's state is the failing one's.
    let _ = r.replay(&best);
    (best, found)
}
