//! `netfast docker-plugin`: a Docker network driver (libnetwork's remote driver protocol:
//! HTTP with JSON on a unix socket), so that `docker network create -d netfast` and
//! `docker run --network … -p 8080:80` run on netfast's networks, NAT and publications, with
//! no iptables rule from Docker.
//!
//! | Docker calls | netfast does (the loader's operations, under its lock) |
//! | --- | --- |
//! | CreateNetwork / DeleteNetwork | `network create` (subnet and gateway from Docker's IPAM, `-o` options) / `network rm` |
//! | CreateEndpoint / DeleteEndpoint | a container record and its veth pair on the bridge / `container rm` |
//! | Join / Leave | hands Docker the veth's other end and the gateway / records that it left |
//! | ProgramExternalConnectivity / RevokeExternalConnectivity | `publish` of the `-p` bindings / `unpublish` |
//!
//! At its start, the plugin asks dockerd (`--docker-socket`) which of the Docker networks
//! it serves dockerd still has, and deletes the others: Docker forgets a network whose
//! DeleteNetwork failed (see [`dockerd`]).
//!
//! See [`crate::loader::docker`] for how Docker's objects are kept in netfast's state.

pub mod api;
pub mod dockerd;
pub mod driver;
pub mod ports;
pub mod server;

pub use server::{DEFAULT_SOCKET, serve};
