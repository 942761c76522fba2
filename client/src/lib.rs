//! The skv client library: connections to nodes, a client that routes requests over a
//! whole cluster, request helpers, and the errors a client can see. The `skv` CLI and
//! `skv bench` are built on it.

#![forbid(unsafe_code)]

pub mod bench;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;

pub use cluster::{ClusterClient, ClusterScan};
pub use config::{ConnectOptions, Profile, Security, DEFAULT_ADDR};
pub use connection::{CasResult, Connection, ScanPage};
pub use error::{exit, ClientError};
