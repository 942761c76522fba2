//! Integration suites: real `skv-node` processes on 127.0.0.1 ephemeral ports, driven through
//! the `skv` binary and the client library. One binary with modules (the openraft habit);
//! every test starts its own node on its own port, so they run in parallel.

mod atrest;
mod attack;
mod auth;
mod bad_input;
mod bench;
mod chaos;
mod cluster;
mod cluster_cli;
mod demo;
mod denylist;
mod durability;
mod first_hour;
mod handles;
mod labs;
mod labs_more;
mod ladder;
mod limits;
mod ops;
mod raw_tls;
mod reads;
mod replication;
mod revoke;
mod tls;
