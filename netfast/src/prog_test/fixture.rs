//! Table-driven packet tests: each case is a program, a frame in, a verdict and a frame out.
//!
//! A [`Case`] runs alone on a freshly loaded object; a [`Flow`] runs its cases in order on one
//! object, so that later packets see the state earlier ones left (SYN, SYN-ACK, FIN, …).
//! Failures are collected and reported together, with both frames decoded and dumped.

use netfast_common::{Hook, verdict};

use crate::error::report;

use super::{
    ProgTest, Run,
    packet::{decode, describe},
};

type Setup = Box<dyn Fn(&mut ProgTest) -> Result<(), String>>;
type Check = Box<dyn Fn(&ProgTest, &Run) -> Result<(), String>>;

/// What the frame that comes out must be.
pub enum Output {
    /// Byte for byte the frame that went in.
    Unchanged,
    /// Byte for byte this frame.
    Frame(Vec<u8>),
    /// Anything that decodes with valid checksums (checked further by [`Case::check`]).
    Valid,
    /// Not looked at (a dropped packet).
    Ignored,
}

/// One packet through one program.
pub struct Case {
    pub name: String,
    pub hook: Hook,
    pub input: Vec<u8>,
    pub verdict: i32,
    pub output: Output,
    setup: Vec<Setup>,
    checks: Vec<Check>,
}

impl Case {
    /// A case that expects the frame to pass unchanged, the verdict [`verdict::NEXT`].
    pub fn new(name: impl Into<String>, hook: Hook, input: Vec<u8>) -> Self {
        Case {
            name: name.into(),
            hook,
            input,
            verdict: verdict::NEXT,
            output: Output::Unchanged,
            setup: Vec::new(),
            checks: Vec::new(),
        }
    }

    pub fn verdict(mut self, verdict: i32) -> Self {
        self.verdict = verdict;
        self
    }

    /// Expects exactly this frame out.
    pub fn output(mut self, frame: Vec<u8>) -> Self {
        self.output = Output::Frame(frame);
        self
    }

    /// Expects a frame that decodes with valid checksums; say more with [`Case::check`].
    pub fn valid_output(mut self) -> Self {
        self.output = Output::Valid;
        self
    }

    /// Expects a drop: verdict SHOT, the frame not looked at.
    pub fn dropped(mut self) -> Self {
        self.verdict = verdict::SHOT;
        self.output = Output::Ignored;
        self
    }

    /// Seeds maps before the run.
    pub fn setup(mut self, f: impl Fn(&mut ProgTest) -> Result<(), String> + 'static) -> Self {
        self.setup.push(Box::new(f));
        self
    }

    /// Checks maps or the output frame after the run.
    pub fn check(mut self, f: impl Fn(&ProgTest, &Run) -> Result<(), String> + 'static) -> Self {
        self.checks.push(Box::new(f));
        self
    }

    fn execute(&self, test: &mut ProgTest) -> Result<(), String> {
        for setup in &self.setup {
            setup(test).map_err(|e| format!("setup failed: {e}"))?;
        }
        let run = test.run(self.hook, &self.input).map_err(|e| {
            format!(
                "BPF_PROG_TEST_RUN of {} failed: {}",
                self.hook.name(),
                report(&e)
            )
        })?;
        let mut problems = Vec::new();
        if run.verdict != self.verdict {
            problems.push(format!(
                "verdict {} ({}), expected {} ({})",
                run.verdict,
                verdict::name(run.verdict),
                self.verdict,
                verdict::name(self.verdict)
            ));
        }
        match &self.output {
            Output::Unchanged if run.frame != self.input => {
                problems.push(format!(
                    "the frame changed:\n{}",
                    diff(&self.input, &run.frame)
                ));
            }
            Output::Frame(expected) if &run.frame != expected => {
                problems.push(format!("wrong frame out:\n{}", diff(expected, &run.frame)));
            }
            Output::Valid => {
                if let Err(e) = decode(&run.frame) {
                    problems.push(format!(
                        "the frame out is invalid: {e}\n{}",
                        describe(&run.frame)
                    ));
                }
            }
            _ => {}
        }
        // Whatever was expected, a frame that comes out of a passing verdict must be valid.
        if !matches!(self.output, Output::Ignored)
            && decode(&self.input).is_ok()
            && let Err(e) = decode(&run.frame)
        {
            problems.push(format!("the frame out does not verify: {e}"));
        }
        for check in &self.checks {
            if let Err(e) = check(test, &run) {
                problems.push(e);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}\n  input:\n{}",
                problems.join("\n"),
                describe(&self.input)
            ))
        }
    }
}

fn diff(expected: &[u8], got: &[u8]) -> String {
    let first = expected
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(got.len()));
    format!(
        "  first difference at byte {first} (lengths {} expected, {} got)\n  expected:\n{}  got:\n{}",
        expected.len(),
        got.len(),
        describe(expected),
        describe(got)
    )
}

/// Cases run in order on one loaded object.
pub struct Flow {
    pub name: String,
    pub cases: Vec<Case>,
}

impl Flow {
    pub fn new(name: impl Into<String>, cases: Vec<Case>) -> Self {
        Flow {
            name: name.into(),
            cases,
        }
    }
}

/// Runs every case on its own freshly loaded object; panics listing every failure.
pub fn run_cases(cases: Vec<Case>) {
    let flows = cases
        .into_iter()
        .map(|c| Flow {
            name: c.name.clone(),
            cases: vec![c],
        })
        .collect();
    run_flows(flows);
}

/// Runs each flow on its own freshly loaded object; panics listing every failure.
pub fn run_flows(flows: Vec<Flow>) {
    let mut failures = Vec::new();
    let total = flows.len();
    for flow in flows {
        let mut test = match ProgTest::load() {
            Ok(t) => t,
            Err(e) => panic!(
                "loading the eBPF programs failed (this test needs root and a kernel with BPF_PROG_TEST_RUN): {}",
                report(&e)
            ),
        };
        for (i, case) in flow.cases.iter().enumerate() {
            if let Err(e) = case.execute(&mut test) {
                failures.push(format!(
                    "[{}] step {} `{}` ({}): {e}",
                    flow.name,
                    i + 1,
                    case.name,
                    case.hook.name()
                ));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} packet tests failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Asserts a run's verdict and exact output frame, printing both frames decoded on failure:
/// for tests that compute their packets as they go (a port chosen at random, say).
pub fn assert_run(what: &str, run: &Run, expected_verdict: i32, expected: &[u8]) {
    assert!(
        run.verdict == expected_verdict,
        "{what}: verdict {} ({}), expected {} ({})\n  frame out:\n{}",
        run.verdict,
        verdict::name(run.verdict),
        expected_verdict,
        verdict::name(expected_verdict),
        describe(&run.frame)
    );
    assert!(
        run.frame == expected,
        "{what}: wrong frame out:\n{}",
        diff(expected, &run.frame)
    );
}
