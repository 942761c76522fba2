//! Client errors, worded for the person at the terminal, and their exit codes.
//!
//! Each variant's message says what failed and what to do. TLS failures are translated from
//! rustls' vocabulary into who refused whom ("the node refused our certificate" versus "we
//! refused the node's certificate"), since that is the first thing an operator needs to know.

use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use skv_proto::{ErrorCode, WireError};

/// Exit codes of the `skv` CLI; stable, documented in `skv --help` and the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The key does not exist.
    pub const NOT_FOUND: u8 = 1;
    /// Bad command line, config or profile.
    pub const USAGE: u8 = 2;
    /// Authentication or authorization refused.
    pub const REFUSED: u8 = 3;
    /// Connection or TLS failure.
    pub const CONNECTION: u8 = 4;
    /// The node reported an error.
    pub const SERVER: u8 = 5;
    /// A compare-and-swap found another version; nothing was written.
    pub const CAS_CONFLICT: u8 = 6;
}

/// Anything a client operation can fail with. Cheap to clone, so one broken connection can
/// fail every request that was waiting on it with the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Bad local configuration: a missing file, an unusable key, a bad address.
    #[error("{0}")]
    Config(String),
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {reason}; is a node running there?")]
    Connect {
        /// Address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed; the message says which side refused whom.
    #[error("{0}")]
    Tls(String),
    /// The node's certificate is valid (the cluster CA signed it, for this host name) but
    /// names another node than the one the cluster map puts at this address: another node's
    /// certificate posing as it, or a stale map. Nothing was sent to it.
    #[error(
        "the node at {addr} is not {expected}: its certificate names {found}; refusing it \
         (another node's certificate at this address, or a stale cluster map)"
    )]
    WrongNode {
        /// Address dialled.
        addr: String,
        /// The SPIFFE ID the map calls for.
        expected: String,
        /// The SPIFFE IDs the certificate carries.
        found: String,
    },
    /// The peer does not speak the skv protocol as expected.
    #[error("{0}")]
    Protocol(String),
    /// No answer in time.
    #[error("no answer from {addr} within {after:?} ({waiting_for})")]
    Timeout {
        /// Address dialled.
        addr: String,
        /// How long we waited.
        after: Duration,
        /// What we were waiting for.
        waiting_for: &'static str,
    },
    /// The connection broke after it was established.
    #[error("connection to {addr} lost: {reason}")]
    Disconnected {
        /// Address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The node refused the request's credentials or permissions.
    #[error("refused by the node: {0}")]
    Refused(WireError),
    /// The node failed or rejected the request.
    #[error("node error: {0}")]
    Server(WireError),
    /// The node does not serve the key's slot; `node` at `addr` does, according to the map
    /// of `epoch`. The cluster client follows this itself; a single [`crate::Connection`]
    /// reports it.
    #[error("slot {slot} is served by node {node} at {addr} (map epoch {epoch})")]
    Moved {
        /// The key's hash slot.
        slot: u16,
        /// Epoch of the map that says so.
        epoch: u64,
        /// Node serving the slot.
        node: String,
        /// Its address.
        addr: String,
    },
    /// This node holds a replica of the key's shard but is not its leader; the leader it
    /// knows of, if any, is `leader` (node id, address). The cluster client follows this
    /// itself; a single [`crate::Connection`] reports it.
    #[error("{}", not_leader_message(*shard, leader.as_ref()))]
    NotLeader {
        /// The key's shard.
        shard: u32,
        /// Epoch of the map the node routed by.
        epoch: u64,
        /// The leader the node knows of.
        leader: Option<(String, String)>,
    },
    /// The key's shard has no working majority: it cannot elect a leader or commit, so
    /// writes and linearizable reads fail until enough of its replicas are back. Stale reads
    /// are still served by any replica that is up.
    #[error(
        "shard {shard} cannot commit writes: fewer than {quorum} of its {replicas} replicas are \
         reachable (still after {waited:.1?}); reads with --consistency stale still work"
    )]
    Unavailable {
        /// The shard.
        shard: u32,
        /// How many replicas it has.
        replicas: usize,
        /// How many must be reachable to commit: a majority.
        quorum: usize,
        /// How long the client kept trying.
        waited: Duration,
    },
    /// No replica of the key's shard could be reached, for as long as the client kept trying.
    /// Only that shard's slots are affected; requests for other slots keep working.
    #[error(
        "no replica of shard {shard} ({replicas}) can be reached; keys in slots {ranges} are \
         unavailable until one is back (still after {waited:.1?}: {reason})"
    )]
    ShardDown {
        /// The shard.
        shard: u32,
        /// Its replicas, comma-separated node ids.
        replicas: String,
        /// Its slot ranges, formatted (`0-5460, 10923-16383`).
        ranges: String,
        /// How long the client kept trying.
        waited: Duration,
        /// What the last connection attempt reported.
        reason: String,
    },
    /// The node serving the key's slot cannot be reached. Only that node's slots are
    /// affected; requests for other slots keep working.
    #[error(
        "node {node} at {addr} is unreachable; it serves slots {ranges}, so keys in those slots \
         are unavailable until it is back ({reason})"
    )]
    NodeDown {
        /// The node.
        node: String,
        /// Its address.
        addr: String,
        /// Its slot ranges, formatted (`0-5460, 10923-16383`).
        ranges: String,
        /// What the connection attempt reported.
        reason: String,
    },
}

impl ClientError {
    /// The CLI exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Config(_) => exit::USAGE,
            ClientError::Refused(_) => exit::REFUSED,
            ClientError::Server(_) | ClientError::Moved { .. } | ClientError::NotLeader { .. } => {
                exit::SERVER
            }
            ClientError::NodeDown { .. }
            | ClientError::ShardDown { .. }
            | ClientError::Unavailable { .. }
            | ClientError::Connect { .. }
            | ClientError::Tls(_)
            | ClientError::WrongNode { .. }
            | ClientError::Protocol(_)
            | ClientError::Timeout { .. }
            | ClientError::Disconnected { .. } => exit::CONNECTION,
        }
    }

    /// Sort an error response from the node into refused (auth) or server error.
    pub fn from_wire(err: WireError) -> ClientError {
        match err.code {
            ErrorCode::Unauthenticated | ErrorCode::Forbidden => ClientError::Refused(err),
            _ => ClientError::Server(err),
        }
    }

    /// Translate an I/O error seen while connecting or talking to `addr`.
    pub(crate) fn from_io(addr: &str, err: &std::io::Error, ca_path: Option<&str>) -> ClientError {
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return ClientError::Tls(describe_tls(addr, tls, ca_path));
        }
        match err.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                ClientError::Disconnected {
                    addr: addr.to_owned(),
                    reason: format!(
                        "{err} (the node closed the connection; check the node's log, and that \
                         --plaintext matches how the node was started)"
                    ),
                }
            }
            _ => ClientError::Disconnected {
                addr: addr.to_owned(),
                reason: err.to_string(),
            },
        }
    }
}

fn not_leader_message(shard: u32, leader: Option<&(String, String)>) -> String {
    match leader {
        Some((node, addr)) => {
            format!("this node is not the leader of shard {shard}; node {node} at {addr} is")
        }
        None => format!(
            "this node is not the leader of shard {shard}, and knows of none (an election is \
             running)"
        ),
    }
}

/// One line on a failed TLS handshake with `addr`, saying who refused whom and why.
fn describe_tls(addr: &str, err: &rustls::Error, ca_path: Option<&str>) -> String {
    let ca = ca_path.unwrap_or("--ca");
    match err {
        rustls::Error::InvalidCertificate(cert_err) => {
            let why = match cert_err {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                    "it is not signed by the CA in {ca}; is the node from another cluster, or \
                     --ca the wrong file?"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => format!(
                    "it is not valid for the address dialled ({addr}); dial a name or IP listed \
                     in the node certificate's SANs, or pass --server-name"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired; issue the node a new certificate".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet; check both machines' clocks".to_owned()
                }
                CertificateError::Revoked => {
                    "it is revoked (listed by the CRL); the node needs a new certificate".to_owned()
                }
                other => format!("{other:?}"),
            };
            format!("TLS: this client refused the node's certificate at {addr}: {why}")
        }
        rustls::Error::AlertReceived(alert) => {
            let why = match alert {
                AlertDescription::CertificateRequired => {
                    "it requires a client certificate; pass --cert and --key (or --profile)"
                        .to_owned()
                }
                // DecryptError: a certificate whose issuer name matches the CA but whose
                // signature does not (another cluster's CA with the same name).
                AlertDescription::UnknownCA | AlertDescription::DecryptError => {
                    "our client certificate is not signed by the cluster's CA; use a certificate \
                     from this cluster's `skv certs init`"
                        .to_owned()
                }
                AlertDescription::CertificateExpired => {
                    "our client certificate has expired; issue a new one".to_owned()
                }
                AlertDescription::CertificateRevoked => {
                    "our client certificate is revoked (the node's --crl lists its serial); \
                     ask the cluster's operator for a new one"
                        .to_owned()
                }
                AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
                    "our client certificate is not valid for client use (it needs the clientAuth \
                     extended key usage)"
                        .to_owned()
                }
                AlertDescription::NoApplicationProtocol => {
                    "it does not speak skv/1 (is it an skv node?)".to_owned()
                }
                other => format!("alert {other:?}"),
            };
            format!("TLS: the node at {addr} refused this client: {why}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "TLS: {addr} did not answer with TLS; if the node runs with --insecure-plaintext, \
             pass --plaintext"
        ),
        other => format!("TLS handshake with {addr} failed: {other}"),
    }
}
