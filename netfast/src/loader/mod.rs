//! The loader: networks and containers built the way the seed articles build Docker's bridge
//! network by hand, over netlink, with their state kept per host namespace.

mod apply;
pub mod caps;
pub mod change;
mod containers;
pub mod docker;
pub mod intent;
pub mod ipam;
pub mod model;
pub mod netlink;
mod networks;
pub mod nsfs;
pub mod ops;
pub mod plan;
pub mod plumb;
mod publications;
pub mod publish;
mod recover;
pub mod sockets;
pub mod state;
pub mod status;
mod transaction;
pub mod validate;

pub use change::Change;
pub use ops::Loader;
