//! `netfast-bench`: netfast against a veth pair, plain routing, iptables and nftables, in
//! namespaces of the test lab; `cargo xtask bench` builds and runs it. The harness is
//! `netfast_tests::bench`; docs/PERFORMANCE.md says what it measures.

use std::process::ExitCode;

use clap::Parser as _;
use netfast_tests::bench::{BenchArgs, run};

fn main() -> ExitCode {
    netfast_tests::log_to_stderr("netfast-bench");
    match run(BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netfast-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
