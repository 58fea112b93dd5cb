//! Everything netfast asks of netfilter outside eBPF, in one place: the runner of its tools
//! ([`run`]: `nft`, `iptables`, `iptables-save`, `iptables-restore`), typed readers of what
//! they print ([`iptables_save`], [`nft_ruleset`]), the renderers of netfast's own rules
//! ([`rules`] computed from the state, rendered by [`render_nft`] through the typed
//! [`nft_batch`] and by [`render_ipt`]), and the kernel's conntrack over netlink
//! ([`ctnetlink`], [`cttimeout`], on nfnetlink sockets), and the sockets of connections
//! ([`sockdiag`]).
//!
//! The fallback backends ([`crate::backend`]) write and count with it, the doctor reads
//! everyone's rules with it, and the benchmark's lab writes Docker's rules with it.

pub mod ctnetlink;
pub mod cttimeout;
pub mod iptables_save;
pub mod matches;
mod nfnetlink;
pub mod nft_batch;
pub mod nft_ruleset;
pub mod render_ipt;
pub mod render_nft;
pub mod rules;
pub mod run;
pub mod sockdiag;

pub use matches::{AddrSet, Match, Matches, Nat, NatRule, read_or_nothing};
pub use rules::Counts;
pub use run::{ToolError, run, run_with_input};
