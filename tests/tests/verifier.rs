//! What the verifier thinks of the programs: each must load, and its verified instruction
//! count stays within the committed budget (tests/verifier-budget.txt), so that complexity
//! creep shows in review instead of as a load failure on another kernel.

use std::collections::BTreeMap;

use netfast::prog_test::ProgTest;
use netfast_tests::require_root;

fn budget() -> BTreeMap<String, u32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/verifier-budget.txt");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (name, n) = l
                .split_once(char::is_whitespace)
                .unwrap_or_else(|| panic!("{path}: `{l}` is not `PROGRAM COUNT`"));
            let n = n
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{path}: `{l}`: {e}"));
            (name.to_owned(), n)
        })
        .collect()
}

#[test]
fn every_program_loads_within_its_verifier_budget() {
    require_root();
    let budget = budget();
    let mut t = ProgTest::load().unwrap_or_else(|e| panic!("load: {}", netfast::error::report(&e)));
    // The test harness loads the TC programs; the socket programs are loaded here.
    for (name, program) in t.ebpf_mut().programs_mut() {
        if let aya::programs::Program::CgroupSockAddr(p) = program {
            p.load().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    let mut over = Vec::new();
    let mut seen = Vec::new();
    for (name, program) in t.ebpf().programs() {
        let info = program.info().unwrap_or_else(|e| panic!("{name}: {e}"));
        let count = info
            .verified_instruction_count()
            .unwrap_or_else(|| panic!("{name}: this kernel does not report verified counts"));
        let limit = *budget
            .get(name)
            .unwrap_or_else(|| panic!("{name} has no budget in tests/verifier-budget.txt"));
        println!("{name:<22} {count:>8} of {limit:>8}");
        if count > limit {
            over.push(format!(
                "{name}: {count} verified instructions, budget {limit}"
            ));
        }
        seen.push(name.to_owned());
    }
    for name in budget.keys() {
        assert!(
            seen.contains(name),
            "{name} has a budget but was not loaded"
        );
    }
    assert!(over.is_empty(), "over budget:\n{}", over.join("\n"));
}
