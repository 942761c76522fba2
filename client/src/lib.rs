//! The skv client library: connections to nodes, request helpers, and the errors a client
//! can see. The `skv` CLI and `skv bench` are built on it.

#![forbid(unsafe_code)]

pub mod bench;
pub mod config;
pub mod connection;
pub mod error;

pub use config::{ConnectOptions, Profile, Security, DEFAULT_ADDR};
pub use connection::{CasResult, Connection, ScanPage};
pub use error::{exit, ClientError};
