//! skv-node: one node of an skv cluster.
//!
//! The modules follow one request through the node:
//! [`net`] (listener, TLS acceptor, peer identity, connection framing; checkpoint 1) →
//! [`auth`] (token checkpoint, verifier, scopes, cache, audit; checkpoints 2 and 3) →
//! `router` (role policy, slot ownership, MOVED and TRYAGAIN, dispatch) → `shard` (the
//! slots a shard owns, the order of its writes, durability) → [`storage`] (sled and in-memory
//! engines behind one trait). Beside the request path: `cluster` (the map, this node's shards,
//! slot moves and map sync), [`config`] and [`node`], which wires it all together.

#![forbid(unsafe_code)]

pub mod auth;
mod cluster;
pub mod config;
mod limits;
mod metrics;
pub mod net;
pub mod node;
mod raft;
pub mod rekey;
mod router;
mod shard;
pub mod storage;

pub use auth::audit;
pub use auth::checkpoint::CheckpointError;
pub use cluster::ClusterSetupError;
pub use config::{Durability, Engine, FileConfig, NodeConfig, TransportConfig};
pub use net::tls;
pub use node::{RunningNode, StartError};
/// Most entries one SCAN page returns; defined on the wire side, in proto.
pub use skv_proto::MAX_SCAN_PAGE;
