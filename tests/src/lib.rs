//! The lab behind netfast's kernel tests, demo and benchmark: commands, network namespaces
//! that clean up after themselves, topologies built inside them, and the benchmark harness
//! ([`bench`], the `netfast-bench` binary) that runs on them.
//!
//! Nothing here touches the machine's root network namespace: every address, route, bridge
//! and program lives in namespaces created here, named `nft<pid>x<n>…`, and removed by RAII
//! guards even when a test panics. Namespaces left by a process that died (killed, so no
//! destructor ran) are swept by the next run.

pub mod agent;
pub mod bench;
pub mod clients;
pub mod cmd;
pub mod docker;
pub mod fuzz;
pub mod model;
pub mod netfast_cli;
pub mod netns;
pub mod packets;
pub mod topology;
pub mod web;

pub use cmd::{Background, in_netns, ping, pings, run, run_in, run_ok};
pub use netfast_cli::Netfast;
pub use netns::TestNetns;
pub use topology::{Topology, TopologyBuilder};

/// Panics unless the process can do what kernel tests need (root: namespaces, BPF).
/// Kernel tests call this first so that they fail loudly rather than pass without running.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test needs root (it creates network namespaces and loads BPF programs); \
         run it through `cargo xtask test`, as root"
    );
}

/// One test module per backend: `on_backends!([ebpf, nftables, iptables] [test_a, test_b])`
/// makes `ebpf::test_a`, `nftables::test_a`, … each calling `test_a("ebpf")` and so on: the
/// end-to-end suites run every test on every backend.
#[macro_export]
macro_rules! on_backends {
    ([$($backend:ident),*] $tests:tt) => {
        $($crate::on_backend!($backend $tests);)*
    };
}

/// The tests of [`on_backends!`] on one backend.
#[macro_export]
macro_rules! on_backend {
    ($backend:ident [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $test() {
                    super::$test(stringify!($backend));
                }
            )*
        }
    };
}
