//! Node-to-node connections: this node dialling a peer over mutual TLS with its own node
//! certificate, and checking that the peer's certificate names the node it meant to reach.
//!
//! After the identity check, the HELLO and every request go through the client library's
//! [`Connection`], so nodes and clients speak the protocol with one implementation. Control
//! traffic is rare (map changes, slot moves, a map check every few seconds); Raft messages of
//! every group to one peer share one pooled connection ([`crate::raft::network`]).

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use skv_client::{ClientError, ConnectOptions, Connection, Security};
use skv_proto::cluster::{ClusterMap, ControlRequest, ControlResponse, NodeEntry};
use skv_proto::{RequestBody, ResponseBody};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::net::identity;
use crate::net::tls::{self, TlsSetupError};

/// Deadline for connect, TLS handshake and HELLO with a peer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline for one peer request. Imports of a full batch and flushes fit easily.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a peer request failed. Messages name the peer, never keys or values.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("cannot reach node {node} at {addr}: {reason}")]
    Unreachable {
        node: String,
        addr: String,
        reason: String,
    },
    #[error(
        "the node at {addr} is not node {node} of this cluster (its certificate names {found})"
    )]
    WrongIdentity {
        node: String,
        addr: String,
        found: String,
    },
    #[error("node {node} did not answer within {after:?}")]
    Timeout { node: String, after: Duration },
    /// Anything after the TLS handshake: the client library's words (refusals, timeouts,
    /// lost connections, unexpected answers).
    #[error("node {node}: {source}")]
    Call {
        node: String,
        #[source]
        source: ClientError,
    },
}

/// Dials peers with this node's certificate.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    config: Arc<ClientConfig>,
    cluster: String,
}

impl Dialer {
    /// A dialer presenting `cert`/`key` and trusting `ca`.
    pub(crate) fn new(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        cluster: &str,
    ) -> Result<Dialer, TlsSetupError> {
        let config = ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(tls::load_roots(ca)?)
            .with_client_auth_cert(
                tls::load_certs(cert, "node certificate")?,
                tls::load_key(key)?,
            )?;
        let mut config = config;
        config.alpn_protocols = vec![b"skv/1".to_vec()];
        Ok(Dialer {
            config: Arc::new(config),
            cluster: cluster.to_owned(),
        })
    }

    /// Connect to `node`, verify it is that node, and say HELLO.
    pub(crate) async fn connect(&self, node: &NodeEntry) -> Result<PeerConnection, PeerError> {
        match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(node)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                node: node.id.clone(),
                after: CONNECT_TIMEOUT,
            }),
        }
    }

    async fn connect_inner(&self, node: &NodeEntry) -> Result<PeerConnection, PeerError> {
        let unreachable = |reason: String| PeerError::Unreachable {
            node: node.id.clone(),
            addr: node.addr.clone(),
            reason,
        };
        let host = match node.addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => return Err(unreachable("the address has no port".into())),
        };
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| unreachable(format!("`{host}` is not a host name or IP")))?;
        let socket = TcpStream::connect(&node.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        socket
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let stream = TlsConnector::from(self.config.clone())
            .connect(name, socket)
            .await
            .map_err(|e| unreachable(format!("TLS: {e}")))?;
        // The CA signed it, but for which node? A certificate of another node (or a client)
        // at this address must not be mistaken for the peer we meant.
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        let ids = identity::spiffe_ids(&leaf);
        if !ids
            .iter()
            .any(|uri| identity::node_id_in(uri, &self.cluster) == Some(node.id.as_str()))
        {
            return Err(PeerError::WrongIdentity {
                node: node.id.clone(),
                addr: node.addr.clone(),
                found: if ids.is_empty() {
                    "no SPIFFE ID".into()
                } else {
                    ids.join(", ")
                },
            });
        }
        let mut opts = ConnectOptions::new(node.addr.clone(), Security::Plaintext);
        opts.connect_timeout = CONNECT_TIMEOUT;
        opts.request_timeout = CALL_TIMEOUT;
        // Peers may send batches slightly larger than a client frame (an imported entry is a
        // client write plus its version); the receiving node allows the same slack.
        let conn = Connection::handshake(stream, &opts, PEER_FRAME_SLACK)
            .await
            .map_err(|source| PeerError::Call {
                node: node.id.clone(),
                source,
            })?;
        Ok(PeerConnection {
            conn,
            node: node.id.clone(),
        })
    }
}

/// Extra frame bytes allowed on peer connections beyond the node's client frame limit.
pub(crate) const PEER_FRAME_SLACK: usize = 64 * 1024;

/// One established peer connection: the client library's [`Connection`], for one peer.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    conn: Connection,
    node: String,
}

impl PeerConnection {
    fn failed(&self, source: ClientError) -> PeerError {
        PeerError::Call {
            node: self.node.clone(),
            source,
        }
    }

    /// Whether the connection is gone: nothing sent on it now could reach the peer.
    pub(crate) fn is_closed(&self) -> bool {
        self.conn.is_closed()
    }

    /// The largest request frame this connection carries (the peer's limit).
    pub(crate) fn max_frame(&self) -> usize {
        self.conn.max_frame()
    }

    /// Send one Raft message for `group` and return the peer's encoded reply. Bounded only
    /// by the connection's own request timeout: the Raft transport sets its deadline.
    pub(crate) async fn raft(
        &self,
        group: u32,
        rpc: u8,
        payload: bytes::Bytes,
    ) -> Result<bytes::Bytes, PeerError> {
        match self
            .conn
            .call(RequestBody::Raft {
                group,
                rpc,
                payload,
            })
            .await
            .map_err(|e| self.failed(e))?
        {
            ResponseBody::Raft { payload } => Ok(payload),
            _ => Err(self.failed(ClientError::Protocol(
                "RAFT was answered with something other than RAFT".into(),
            ))),
        }
    }

    /// Send a control request.
    pub(crate) async fn control(
        &self,
        request: &ControlRequest,
    ) -> Result<ControlResponse, PeerError> {
        self.conn.control(request).await.map_err(|e| self.failed(e))
    }

    /// The peer's cluster map.
    pub(crate) async fn map(&self) -> Result<ClusterMap, PeerError> {
        self.conn.cluster_map().await.map_err(|e| self.failed(e))
    }
}
