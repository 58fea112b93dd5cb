//! A failing sequence written out to become a regression test: the events (one JSON object a
//! line, each under a comment that says what it is), a pcap of every frame a hook saw and
//! put out, and a test in `tests/tests/fuzz_fixtures.rs` that replays it.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use super::{
    event::{Event, describe},
    runner::{Captured, Mismatch, Runner},
};
use crate::model::{Config, Model};

/// Where fixtures live: `tests/fuzz-fixtures/` of this crate.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-fixtures")
}

/// The test file that replays them.
pub fn test_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_fixtures.rs")
}

/// The events of a fixture file (lines that are not comments).
pub fn parse(text: &str) -> Result<Vec<Event>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// The fixture's text: a header, then each event with its description (resolved against the
/// model as the replay goes).
pub fn render(r: &mut Runner, header: &str, events: &[Event]) -> String {
    let mut out = String::new();
    for l in header.lines() {
        let _ = writeln!(out, "# {l}");
    }
    // Describe each event in the state it met: replay step by step.
    r.model = Model::new(super::dp::EPOCH, Config::default(), Default::default());
    for (i, e) in events.iter().enumerate() {
        let _ = writeln!(out, "# {i}: {}", describe(e, &r.model));
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(e).expect("events serialize")
        );
        let _ = r.apply(i, e);
    }
    out
}

/// A classic pcap (Ethernet): each frame a hook saw, then what it put out, stamped with
/// the event's number as seconds (the input at .000000, the output at .000001).
pub fn pcap(frames: &[Captured]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes());
    let mut record = |sec: u32, usec: u32, f: &[u8]| {
        out.extend_from_slice(&sec.to_le_bytes());
        out.extend_from_slice(&usec.to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(f);
    };
    for (i, c) in frames.iter().enumerate() {
        let sec = c.step as u32;
        record(sec, (i as u32) * 2, &c.input);
        if let Some(o) = &c.output {
            record(sec, (i as u32) * 2 + 1, o);
        }
    }
    out
}

/// Writes the fixture, its pcap, and a test that replays it (`#[ignore]`d with `ignore`'s
/// reason, for a known defect); returns the fixture's path. `origin` says where it came
/// from (a seed, or a hand-made reduction).
pub fn write(
    r: &mut Runner,
    name: &str,
    origin: &str,
    mismatch: Option<&Mismatch>,
    events: &[Event],
    ignore: Option<&str>,
) -> std::io::Result<PathBuf> {
    let dir = dir();
    fs::create_dir_all(&dir)?;
    let found = match mismatch {
        Some(m) => format!("The mismatch it was written for:\n{m}"),
        None => "It replays without a mismatch.".to_string(),
    };
    let header = format!(
        "netfast fuzz fixture {name}: {origin}, {} events.\n\
         Replayed by tests/tests/fuzz_fixtures.rs; frames in {name}.pcap.\n{found}",
        events.len()
    );
    let text = render(r, &header, events);
    let path = dir.join(format!("{name}.events"));
    fs::write(&path, text)?;
    r.capture = Some(Vec::new());
    let _ = r.replay(events);
    let frames = r.capture.take().unwrap_or_default();
    fs::write(dir.join(format!("{name}.pcap")), pcap(&frames))?;
    let test = test_file();
    let mut body = fs::read_to_string(&test).unwrap_or_default();
    let fn_name = name.replace('-', "_");
    if !body.contains(&format!("fn {fn_name}()")) {
        let what = mismatch.map_or(String::new(), |m| {
            format!(": {} — {}", m.kind, m.detail.lines().next().unwrap_or(""))
        });
        let ignore = ignore.map_or(String::new(), |why| {
            format!("#[ignore = \"datapath bug: {why}\"]\n")
        });
        let _ = write!(
            body,
            "\n/// Found by `cargo xtask fuzz` ({origin}){what}\n\
             #[test]\n{ignore}fn {fn_name}() {{\n    replay(\"{name}\");\n}}\n",
        );
        fs::write(&test, body)?;
    }
    Ok(path)
}
