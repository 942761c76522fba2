//! skv-node: the listener, TLS acceptor, request handling and storage of one skv node.
//!
//! Module map: [`config`] turns the config file and flags into a [`config::NodeConfig`];
//! [`node`] opens storage, binds the listener and runs connections; `connection` speaks
//! the protocol on one connection; `handler` applies requests to [`storage`]; [`tls`] builds
//! the mutual-TLS acceptor.

#![forbid(unsafe_code)]

pub mod audit;
pub mod auth;
mod checkpoint;
mod cluster;
pub mod config;
mod connection;
mod handler;
mod identity;
pub mod node;
pub mod storage;
pub mod tls;

pub use checkpoint::CheckpointError;
pub use cluster::ClusterSetupError;
pub use config::{Durability, Engine, FileConfig, NodeConfig, TransportConfig};
pub use handler::MAX_SCAN_PAGE;
pub use node::{RunningNode, StartError};
