//! The loader: networks and containers built the way the seed articles build Docker's bridge
//! network by hand, over netlink, with their state kept per host namespace.

pub mod caps;
pub mod docker;
pub mod intent;
pub mod ipam;
pub mod model;
pub mod netlink;
pub mod nsfs;
pub mod ops;
pub mod plan;
pub mod plumb;
pub mod publish;
mod publish_ops;
mod recover;
pub mod sockets;
pub mod state;
pub mod status;
pub mod validate;

pub use ops::Loader;
