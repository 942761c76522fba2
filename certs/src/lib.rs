//! skv-certs owns the cluster's development PKI: the cluster CA, the node and client
//! certificates it issues, the SPIFFE identity scheme that ties a certificate to a node or a
//! client, and the on-disk layout written by `skv certs init` (see `certs/README.md`).
//!
//! Two kinds of callers use it:
//! - the `skv certs init` CLI command, through [`init`], which writes the stable file layout
//!   described by [`Layout`];
//! - integration tests, through [`Ca`] and [`LeafSpec`], which need certificates the happy path
//!   never produces (expired, wrong SANs, only the serverAuth EKU, …).
//!
//! These are development certificates: the CA private key sits next to the certificates it
//! signed. Production deployments should bring their own CA.

mod ca;
pub mod crl;
mod error;
mod init;
pub mod issuer;
mod keys;
mod names;
mod write;

pub use ca::{Ca, Leaf, LeafKind, LeafSpec};
pub use crl::{revoke, RevokeReport};
pub use error::CertsError;
pub use init::{init, InitOptions, InitReport, Layout};
pub use keys::KeyType;
pub use names::{validate_name, MAX_NAME_LEN};

/// The SPIFFE ID a node certificate carries as its URI SAN: `spiffe://<cluster>/node/<id>`.
///
/// The `node/` and `client/` path prefixes are what keep the two populations apart: a node
/// checks for the `node/` prefix before it treats a peer as a node, so a client certificate
/// never passes as a node even though both chain to the same CA.
pub fn spiffe_node(cluster: &str, id: &str) -> String {
    format!("spiffe://{cluster}/node/{id}")
}

/// The SPIFFE ID a client certificate carries as its URI SAN: `spiffe://<cluster>/client/<name>`.
pub fn spiffe_client(cluster: &str, name: &str) -> String {
    format!("spiffe://{cluster}/client/{name}")
}
