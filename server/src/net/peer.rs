//! Node-to-node connections: this node dialling a peer over mutual TLS with its own node
//! certificate, and checking that the peer's certificate names the node it meant to reach.
//!
//! After the identity check, the HELLO and every request go through the client library's
//! [`Connection`], so nodes and clients speak the protocol with one implementation. Control
//! traffic is rare (map changes, slot moves, a map check every few seconds); Raft messages of
//! every group to one peer share one pooled connection ([`crate::raft::network`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use skv_client::{ClientError, ConnectOptions, Connection, Security};
use skv_proto::cluster::{ClusterMap, ControlRequest, ControlResponse, NodeEntry};
use skv_proto::{RequestBody, ResponseBody};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::net::credentials::Credentials;
use crate::net::identity;

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
    /// The node's live credentials: each dial takes the config in force at that moment, so
    /// a reloaded certificate or CRL applies to the next connection.
    credentials: Arc<Credentials>,
    cluster: String,
    /// The address peer connections leave from: the node's listen IP when it listens on one
    /// address (see [`Dialer::with_source`]).
    source: Option<IpAddr>,
}

impl Dialer {
    /// A dialer presenting `cert`/`key` and trusting `ca` (tests; a node shares its live
    /// credentials with its listener through [`Dialer::with_credentials`]).
    #[cfg(test)]
    pub(crate) fn new(
        ca: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        cluster: &str,
    ) -> Result<Dialer, crate::net::tls::TlsSetupError> {
        let credentials = Credentials::load(crate::net::credentials::CredentialFiles {
            ca: ca.to_owned(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            crl: None,
            client_auth: true,
        })?;
        Ok(Dialer::with_credentials(Arc::new(credentials), cluster))
    }

    /// A dialer presenting and trusting the node's live credentials.
    pub(crate) fn with_credentials(credentials: Arc<Credentials>, cluster: &str) -> Dialer {
        Dialer {
            credentials,
            cluster: cluster.to_owned(),
            source: None,
        }
    }

    /// Make peer connections leave from `ip` (port chosen by the kernel). A node that listens
    /// on one address then also reaches its peers from it, so a firewall rule, a packet
    /// capture or a fault-injecting proxy (`skv cluster chaos`) sees one address per node
    /// in both directions. An unspecified address (`0.0.0.0`, `::`) leaves the choice to the
    /// kernel, and so does a loopback source for a peer that is not on loopback (the kernel
    /// would refuse that route).
    pub(crate) fn with_source(mut self, ip: IpAddr) -> Dialer {
        self.source = (!ip.is_unspecified()).then_some(ip);
        self
    }

    /// A TCP connection to `addr`, from [`Dialer::source`] when one applies. Tries every
    /// address the name resolves to, like `TcpStream::connect`.
    async fn dial(&self, addr: &str) -> std::io::Result<TcpStream> {
        let Some(source) = self.source else {
            return TcpStream::connect(addr).await;
        };
        let mut last = None;
        for target in tokio::net::lookup_host(addr).await? {
            let bind = match source_for(source, target) {
                Some(bind) => bind,
                None => match TcpStream::connect(target).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                },
            };
            let socket = if target.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            match socket.bind(bind).and(Ok(socket)) {
                Ok(socket) => match socket.connect(target).await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "the address resolves to nothing",
            )
        }))
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
        let socket = self
            .dial(&node.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        socket
            .set_nodelay(true)
            .map_err(|e| unreachable(e.to_string()))?;
        let stream = TlsConnector::from(self.credentials.client_config())
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

/// The local address to bind for a connection from `source` to `target`: none when the
/// families differ, or when a loopback source would have to reach a peer off this host.
fn source_for(source: IpAddr, target: SocketAddr) -> Option<SocketAddr> {
    let same_family = source.is_ipv4() == target.is_ipv4();
    let routable = !source.is_loopback() || target.ip().is_loopback();
    (same_family && routable).then_some(SocketAddr::new(source, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_connections_leave_from_the_listen_ip_only_where_the_kernel_can_route_it() {
        let lo2: IpAddr = "127.0.0.2".parse().unwrap();
        let lan: IpAddr = "10.1.2.3".parse().unwrap();
        let to = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            source_for(lo2, to("127.0.0.1:7000")),
            Some(to("127.0.0.2:0"))
        );
        assert_eq!(source_for(lan, to("10.1.2.4:7000")), Some(to("10.1.2.3:0")));
        // Loopback cannot reach another host; IPv4 cannot bind for IPv6.
        assert_eq!(source_for(lo2, to("10.1.2.4:7000")), None);
        assert_eq!(source_for(lan, to("[::1]:7000")), None);
    }

    #[tokio::test]
    async fn a_dialer_with_a_source_connects_from_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let pki = tempfile::tempdir().unwrap();
        skv_certs::init(&skv_certs::InitOptions {
            dir: pki.path().to_owned(),
            cluster: "test".into(),
            nodes: vec!["n1".into()],
            clients: vec![],
            key_type: skv_certs::KeyType::P256,
            force: false,
        })
        .unwrap();
        let layout = skv_certs::Layout::new(pki.path());
        let dialer = Dialer::new(
            &layout.ca_cert(),
            &layout.node_cert("n1"),
            &layout.node_key("n1"),
            "test",
        )
        .unwrap()
        .with_source("127.0.0.7".parse().unwrap());
        let (dialed, accepted) = tokio::join!(dialer.dial(&addr), listener.accept());
        dialed.unwrap();
        assert_eq!(
            accepted.unwrap().1.ip(),
            "127.0.0.7".parse::<IpAddr>().unwrap()
        );
    }
}
