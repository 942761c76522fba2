//! The skv client library: connections to nodes, a client that routes requests over a
//! whole cluster, request helpers, and the errors a client can see. The `skv` CLI
//! (skv-cli) and `skv bench` (skv-load) are built on it.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod pipeline;
pub mod raw;

pub use cluster::{ClusterClient, ClusterScan, Failover};
pub use config::{tls_provider, ConnectOptions, ExpectedNode, Profile, Security, DEFAULT_ADDR};
pub use connection::{CasResult, Connection, ScanPage};
pub use error::{exit, ClientError};
pub use pipeline::Pipeline;
