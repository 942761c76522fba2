//! Node-to-node connections: this node dialling a peer over mutual TLS with its own node
//! certificate, and checking that the peer's certificate names the node it meant to reach.
//!
//! Peer traffic is rare (map changes, slot moves, a map check every few seconds), so a peer
//! connection carries one request at a time; the data path never goes through here.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use skv_proto::cluster::{ClusterMap, ControlRequest, ControlResponse, NodeEntry};
use skv_proto::{
    FrameCodec, Request, RequestBody, ResponseBody, ScanEntry, WireError, PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

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
    #[error("node {node} refused: {error}")]
    Refused { node: String, error: WireError },
    #[error("node {node} answered something unexpected: {detail}")]
    Protocol { node: String, detail: String },
}

/// Dials peers with this node's certificate.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    config: Arc<ClientConfig>,
    cluster: String,
    max_frame: usize,
}

impl Dialer {
    /// A dialer presenting `cert`/`key` and trusting `ca`.
    pub(crate) fn new(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        cluster: &str,
        max_frame: usize,
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
            max_frame,
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
        // Peers may send batches slightly larger than a client frame (an imported entry is a
        // client write plus its version); the receiving node allows the same slack.
        let mut conn = PeerConnection {
            framed: Framed::new(stream, FrameCodec::new(self.max_frame + PEER_FRAME_SLACK)),
            next_id: 0,
            node: node.id.clone(),
        };
        match conn
            .call(RequestBody::Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            })
            .await?
        {
            ResponseBody::HelloOk { .. } => Ok(conn),
            other => Err(conn.unexpected("HELLO", &other)),
        }
    }
}

/// Extra frame bytes allowed on peer connections beyond the node's client frame limit.
pub(crate) const PEER_FRAME_SLACK: usize = 64 * 1024;

/// One established peer connection, one request at a time.
#[derive(Debug)]
pub(crate) struct PeerConnection {
    framed: Framed<TlsStream<TcpStream>, FrameCodec>,
    next_id: u64,
    node: String,
}

impl PeerConnection {
    /// Send one request and wait for its answer; error answers become [`PeerError::Refused`].
    pub(crate) async fn call(&mut self, body: RequestBody) -> Result<ResponseBody, PeerError> {
        let node = self.node.clone();
        match tokio::time::timeout(CALL_TIMEOUT, self.call_inner(body)).await {
            Ok(result) => result,
            Err(_) => Err(PeerError::Timeout {
                node,
                after: CALL_TIMEOUT,
            }),
        }
    }

    async fn call_inner(&mut self, body: RequestBody) -> Result<ResponseBody, PeerError> {
        let id = self.next_id;
        self.next_id += 1;
        let lost = |node: &str, reason: String| PeerError::Unreachable {
            node: node.to_owned(),
            addr: String::new(),
            reason,
        };
        self.framed
            .send(&Request {
                id,
                token: None,
                body,
            })
            .await
            .map_err(|e| lost(&self.node, e.to_string()))?;
        let payload = match self.framed.next().await {
            Some(Ok(payload)) => payload,
            Some(Err(e)) => return Err(lost(&self.node, e.to_string())),
            None => return Err(lost(&self.node, "connection closed".into())),
        };
        let response = skv_proto::Response::decode(payload).map_err(|e| PeerError::Protocol {
            node: self.node.clone(),
            detail: e.to_string(),
        })?;
        if response.id != id {
            return Err(PeerError::Protocol {
                node: self.node.clone(),
                detail: format!("answer for request {} while waiting for {id}", response.id),
            });
        }
        match response.body {
            ResponseBody::Error(error) => Err(PeerError::Refused {
                node: self.node.clone(),
                error,
            }),
            other => Ok(other),
        }
    }

    /// Send a control request.
    pub(crate) async fn control(
        &mut self,
        request: &ControlRequest,
    ) -> Result<ControlResponse, PeerError> {
        let body = RequestBody::Control {
            json: request.to_json().into(),
        };
        match self.call(body).await? {
            ResponseBody::Control { json } => {
                ControlResponse::from_json(&json).map_err(|e| PeerError::Protocol {
                    node: self.node.clone(),
                    detail: e.to_string(),
                })
            }
            other => Err(self.unexpected(request.name(), &other)),
        }
    }

    /// The peer's cluster map.
    pub(crate) async fn map(&mut self) -> Result<ClusterMap, PeerError> {
        match self.call(RequestBody::ClusterMap).await? {
            ResponseBody::Map { json, .. } => {
                ClusterMap::from_json(&json).map_err(|e| PeerError::Protocol {
                    node: self.node.clone(),
                    detail: e.to_string(),
                })
            }
            other => Err(self.unexpected("CLUSTER_MAP", &other)),
        }
    }

    /// Copy entries (with their versions) and deletions to the peer.
    pub(crate) async fn import(
        &mut self,
        entries: Vec<ScanEntry>,
        deleted: Vec<bytes::Bytes>,
    ) -> Result<(), PeerError> {
        match self.call(RequestBody::Import { entries, deleted }).await? {
            ResponseBody::Control { .. } => Ok(()),
            other => Err(self.unexpected("IMPORT", &other)),
        }
    }

    fn unexpected(&self, what: &str, body: &ResponseBody) -> PeerError {
        let kind = match body {
            ResponseBody::HelloOk { .. } => "HELLO_OK",
            ResponseBody::Map { .. } => "MAP",
            ResponseBody::Control { .. } => "CONTROL",
            ResponseBody::Moved { .. } => "MOVED",
            _ => "another kind",
        };
        PeerError::Protocol {
            node: self.node.clone(),
            detail: format!("{what} answered with {kind}"),
        }
    }
}
