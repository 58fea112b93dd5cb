//! The toolkit behind netfast's kernel tests and demo: commands, network namespaces that
//! clean up after themselves, and topologies built inside them.
//!
//! Nothing here touches the machine's root network namespace: every address, route, bridge
//! and program lives in namespaces created here, named `nft<pid>x<n>…`, and removed by RAII
//! guards even when a test panics. Namespaces left by a process that died (killed, so no
//! destructor ran) are swept by the next run.

pub mod clients;
pub mod cmd;
pub mod netfast_cli;
pub mod netns;
pub mod topology;
pub mod web;

pub use cmd::{Background, run, run_ok};
pub use netfast_cli::Netfast;
pub use netns::TestNetns;
pub use topology::{Topology, TopologyBuilder};

/// Panics unless the process can do what kernel tests need (root: namespaces, BPF).
/// Kernel tests call this first so that they fail loudly rather than pass without running.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (it creates network namespaces and loads BPF programs); \
             run it through `cargo xtask test`, as root"
        );
    }
}
