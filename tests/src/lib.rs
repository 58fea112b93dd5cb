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
pub mod removed;
pub mod topology;
pub mod web;

pub use cmd::{Background, in_netns, ping, pings, run, run_in, run_ok};
pub use netfast_cli::Netfast;
pub use netns::TestNetns;
pub use removed::Removed;
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

/// Prints the netfast library's warnings and notes (its `log` records, `info` and above) on
/// stderr as `PROGRAM: …`, for the lab's own programs (the demo, the benchmark, the fuzzer),
/// which call the library directly: the `netfast` binary has its own logger.
pub fn log_to_stderr(program: &'static str) {
    struct Stderr(&'static str);
    impl log::Log for Stderr {
        fn enabled(&self, m: &log::Metadata<'_>) -> bool {
            m.level() <= log::Level::Info && m.target().starts_with("netfast")
        }
        fn log(&self, r: &log::Record<'_>) {
            if self.enabled(r.metadata()) {
                eprintln!("{}: {}", self.0, r.args());
            }
        }
        fn flush(&self) {}
    }
    let logger: &'static Stderr = Box::leak(Box::new(Stderr(program)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
