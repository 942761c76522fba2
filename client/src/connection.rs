//! One multiplexed connection to a node.
//!
//! A driver task owns the socket. Callers hand it requests through a channel and wait on a
//! oneshot for the answer; the driver stamps each request with a fresh id, writes whatever
//! requests are queued in one batch, and routes each answer to its caller by id. Many tasks
//! can therefore share one connection with many requests in flight (pipelining), and no lock
//! is held across I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use skv_proto::{
    ClusterMap, ControlRequest, ControlResponse, FrameCodec, FrameError, Request, RequestBody,
    Response, ResponseBody, ScanEntry, TokenPlacement, DEFAULT_MAX_FRAME, HANDLES_VERSION,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

use crate::config::{tls_config, ConnectOptions, ExpectedNode, Security};
use crate::error::ClientError;

/// Requests queued for the driver before callers wait for room.
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<ResponseBody, ClientError>>;

struct Call {
    body: RequestBody,
    session: Option<skv_proto::Session>,
    consistency: skv_proto::Consistency,
    reply: Reply,
}

/// Outcome of a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CasResult {
    /// Written; the key's new version.
    Written(u64),
    /// Not written: the key's current version differs (0: it does not exist).
    Conflict(u64),
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Entries in key order.
    pub entries: Vec<ScanEntry>,
    /// Pass back to continue; `None` at the end.
    pub cursor: Option<Bytes>,
    /// Epoch of the cluster map the node filtered the page with.
    pub epoch: u64,
}

/// A connection to one node. Cheap to clone; clones share the socket.
#[derive(Debug, Clone)]
pub struct Connection {
    calls: mpsc::Sender<Call>,
    node: String,
    addr: String,
    request_timeout: Duration,
    max_frame: usize,
    /// The `spiffe://` URI SANs of the node's certificate; `None` without a certificate
    /// checked here (plaintext, or a stream secured by the caller).
    spiffe: Option<Arc<[String]>>,
    /// Whether the TLS handshake resumed an earlier session (no certificate exchange).
    resumed: bool,
}

impl Connection {
    /// Connect, handshake (TLS, then HELLO) and start the driver.
    pub async fn connect(opts: &ConnectOptions) -> Result<Connection, ClientError> {
        let tls = tls_config(&opts.security)?;
        Self::connect_with(opts, tls).await
    }

    /// [`Connection::connect`] with a rustls config the caller built from `opts.security`
    /// (`None` for plaintext). Reusing one config for many connections saves loading the
    /// credentials each time and lets rustls resume TLS sessions.
    pub(crate) async fn connect_with(
        opts: &ConnectOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        let timeout = opts.connect_timeout;
        let addr = opts.addr.clone();
        match tokio::time::timeout(timeout, Self::connect_inner(opts, tls)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr,
                after: timeout,
                waiting_for: "connect, TLS handshake and HELLO",
            }),
        }
    }

    async fn connect_inner(
        opts: &ConnectOptions,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Connection, ClientError> {
        let secured = secure(opts, tls).await?;
        match secured.stream {
            Either::Right(stream) => {
                let mut conn =
                    Self::start(stream, opts, secured.ca, 0, Some(secured.spiffe)).await?;
                conn.resumed = secured.resumed;
                Ok(conn)
            }
            Either::Left(socket) => Self::start(socket, opts, None, 0, None).await,
        }
    }

    /// Say HELLO over a stream the caller has already connected and secured, and start the
    /// driver: for callers with their own TLS policy. A node dialing a peer uses it, after
    /// checking that the certificate names the node it meant to reach, so nodes and clients
    /// share one HELLO client.
    ///
    /// `opts.addr` (for messages), `opts.token`, `opts.connect_timeout` (for HELLO) and
    /// `opts.request_timeout` apply; `opts.security` and `opts.server_name` are the caller's
    /// business. `frame_slack` is added to the frame limit the node announces: peers allow
    /// each other that much more, since an imported entry is a client write plus its version.
    pub async fn handshake<S>(
        stream: S,
        opts: &ConnectOptions,
        frame_slack: usize,
    ) -> Result<Connection, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let timeout = opts.connect_timeout;
        let start = Self::start(stream, opts, None, frame_slack, None);
        match tokio::time::timeout(timeout, start).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr: opts.addr.clone(),
                after: timeout,
                waiting_for: "HELLO",
            }),
        }
    }

    async fn start<S>(
        stream: S,
        opts: &ConnectOptions,
        ca: Option<String>,
        frame_slack: usize,
        spiffe: Option<Arc<[String]>>,
    ) -> Result<Connection, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let greeted = hello(stream, opts, ca.as_deref(), frame_slack).await?;
        let (calls, rx) = mpsc::channel(QUEUE);
        let addr = opts.addr.clone();
        tokio::spawn(drive(
            greeted.framed,
            rx,
            greeted.credential,
            addr.clone(),
            ca,
        ));
        Ok(Connection {
            calls,
            node: greeted.node,
            addr,
            request_timeout: opts.request_timeout,
            max_frame: greeted.max_frame,
            spiffe,
            resumed: false,
        })
    }

    /// Whether this connection's TLS handshake resumed an earlier session of the same
    /// client config (a ticket from a previous connection) instead of a full handshake.
    pub fn resumed_tls(&self) -> bool {
        self.resumed
    }

    /// Whether the node's certificate names `expected` (`spiffe://<cluster>/node/<id>`):
    /// [`ClientError::WrongNode`] if not. A plaintext connection has no certificate and
    /// always passes (there is nothing to check; plaintext is for benchmarks only), and so
    /// does one made by [`Connection::handshake`] (its caller checked the certificate).
    pub fn check_node(&self, expected: &ExpectedNode) -> Result<(), ClientError> {
        match &self.spiffe {
            Some(spiffe) => check_node(&self.addr, spiffe, expected),
            None => Ok(()),
        }
    }

    /// The node's name, from its HELLO answer.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The address this connection dialled.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The largest frame payload this connection sends (the node's announced limit plus the
    /// caller's slack): a request that encodes larger is refused before it is sent.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Whether the connection is known to be gone (the node closed it, or it failed): every
    /// request on it would fail at once, and none sent now could reach the node.
    pub fn is_closed(&self) -> bool {
        self.calls.is_closed()
    }

    /// Send one request and wait for its answer. Error answers become [`ClientError`]s.
    pub async fn call(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        self.call_with(body, None, skv_proto::Consistency::Linearizable)
            .await
    }

    /// [`Connection::call`] with a write's session and a read's consistency.
    pub async fn call_with(
        &self,
        body: RequestBody,
        session: Option<skv_proto::Session>,
        consistency: skv_proto::Consistency,
    ) -> Result<ResponseBody, ClientError> {
        self.call_within(body, session, consistency, self.request_timeout)
            .await
    }

    /// [`Connection::call_with`], waiting at most `timeout` for the answer instead of the
    /// connection's request timeout: the cluster client bounds each attempt so that it can
    /// try another replica in time. Redirections come back as errors: MOVED as
    /// [`ClientError::Moved`], NOT_LEADER as [`ClientError::NotLeader`].
    pub async fn call_within(
        &self,
        body: RequestBody,
        session: Option<skv_proto::Session>,
        consistency: skv_proto::Consistency,
        timeout: Duration,
    ) -> Result<ResponseBody, ClientError> {
        let (reply, answer) = oneshot::channel();
        let lost = || ClientError::Disconnected {
            addr: self.addr.clone(),
            reason: "the connection is closed".into(),
        };
        self.calls
            .send(Call {
                body,
                session,
                consistency,
                reply,
            })
            .await
            .map_err(|_| lost())?;
        let answer = tokio::time::timeout(timeout, answer)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                after: timeout,
                waiting_for: "an answer",
            })?
            .map_err(|_| lost())??;
        answer_of(answer)
    }

    /// The node's cluster map (validated).
    pub async fn cluster_map(&self) -> Result<ClusterMap, ClientError> {
        match self.call(RequestBody::ClusterMap).await? {
            ResponseBody::Map { json, .. } => ClusterMap::from_json(&json).map_err(|e| {
                ClientError::Protocol(format!("{} sent an unusable cluster map: {e}", self.addr))
            }),
            other => Err(unexpected("CLUSTER_MAP", &other)),
        }
    }

    /// Send a control request (admin commands need a token with the `admin` scope when the
    /// node checks tokens).
    pub async fn control(&self, request: &ControlRequest) -> Result<ControlResponse, ClientError> {
        let body = RequestBody::Control {
            json: Bytes::from(request.to_json()),
        };
        match self.call(body).await? {
            ResponseBody::Control { json } => ControlResponse::from_json(&json).map_err(|e| {
                ClientError::Protocol(format!(
                    "{} answered {} with something unreadable: {e}",
                    self.addr,
                    request.name()
                ))
            }),
            other => Err(unexpected("CONTROL", &other)),
        }
    }

    /// Liveness check.
    pub async fn ping(&self) -> Result<(), ClientError> {
        match self.call(RequestBody::Ping).await? {
            ResponseBody::Pong => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    /// The value and version of `key`, or `None` if it does not exist.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<(u64, Bytes)>, ClientError> {
        get_answer(self.call(RequestBody::Get { key: key.into() }).await?)
    }

    /// Write `value` under `key`; returns the new version.
    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<u64, ClientError> {
        let body = RequestBody::Put {
            key: key.into(),
            value: value.into(),
        };
        put_answer(self.call(body).await?)
    }

    /// Remove `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, ClientError> {
        delete_answer(self.call(RequestBody::Delete { key: key.into() }).await?)
    }

    /// Write `value` under `key` only if its version is `expect_version` (0: must not exist).
    pub async fn cas(
        &self,
        key: impl Into<Bytes>,
        expect_version: u64,
        value: impl Into<Bytes>,
    ) -> Result<CasResult, ClientError> {
        let body = RequestBody::Cas {
            key: key.into(),
            expect_version,
            value: value.into(),
        };
        cas_answer(self.call(body).await?)
    }

    /// One page of keys under `prefix`, after `cursor`; `limit` 0 asks for the node's maximum.
    pub async fn scan(
        &self,
        prefix: impl Into<Bytes>,
        limit: u32,
        cursor: Option<Bytes>,
    ) -> Result<ScanPage, ClientError> {
        self.scan_page(prefix.into(), limit, cursor, false).await
    }

    /// [`Connection::scan`] for keys and versions only: every value in the page is empty,
    /// and the node does not load them.
    pub async fn scan_keys(
        &self,
        prefix: impl Into<Bytes>,
        limit: u32,
        cursor: Option<Bytes>,
    ) -> Result<ScanPage, ClientError> {
        self.scan_page(prefix.into(), limit, cursor, true).await
    }

    async fn scan_page(
        &self,
        prefix: Bytes,
        limit: u32,
        cursor: Option<Bytes>,
        keys_only: bool,
    ) -> Result<ScanPage, ClientError> {
        let body = RequestBody::Scan {
            prefix,
            limit,
            cursor,
            keys_only,
        };
        scan_answer(self.call(body).await?)
    }
}

// The answers of the key operations, apart so the cluster client can send requests with
// `call` and read the answers the same way.

/// A stream to a node with HELLO done (and the token registered where the node takes
/// handles): what [`Connection`] and [`crate::Pipeline`] speak requests on.
pub(crate) struct Greeted<S> {
    pub(crate) framed: Framed<S, FrameCodec>,
    /// The node's name, from HELLO_OK.
    pub(crate) node: String,
    /// The frame limit from here on (the node's, plus the caller's slack).
    pub(crate) max_frame: usize,
    /// What every request carries to say who sends it.
    pub(crate) credential: Credential,
}

/// Say HELLO over `stream`, then register the token where the node reads one per request
/// and speaks version 2 (and `opts.token_handles` asks for it).
pub(crate) async fn hello<S>(
    stream: S,
    opts: &ConnectOptions,
    ca: Option<&str>,
    frame_slack: usize,
) -> Result<Greeted<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let addr = opts.addr.clone();
    let token = opts.token.clone().map(Bytes::from);
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    let hello = Request {
        id: 0,
        token: token.clone(),
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        },
    };
    // With TLS 1.3 the node checks our certificate only after our side of the handshake
    // is done, so a refused certificate shows up here, as an alert on the first read.
    let io_err = |e: FrameError| frame_error(&addr, e, ca);
    framed.send(&hello).await.map_err(io_err)?;
    let answer = match framed.next().await {
        Some(Ok(payload)) => Response::decode(payload).map_err(|e| {
            ClientError::Protocol(format!(
                "{addr} answered HELLO with something that is not skv: {e}"
            ))
        })?,
        Some(Err(e)) => return Err(io_err(e)),
        None => {
            return Err(ClientError::Disconnected {
                addr,
                reason: "the node closed the connection during the handshake; if the node \
                         uses TLS, drop --plaintext, and check the node's log"
                    .into(),
            })
        }
    };
    let (node, max_frame, placement, version) = match answer.body {
        ResponseBody::HelloOk {
            node,
            max_frame,
            token: placement,
            version,
        } => (node, max_frame as usize, placement, version),
        ResponseBody::Error(err) => return Err(ClientError::from_wire(err)),
        other => {
            return Err(ClientError::Protocol(format!(
                "{addr} answered HELLO with {other:?}; is it an skv node?"
            )))
        }
    };
    // Keep bytes the node may have sent after HELLO_OK: the new codec only changes limits.
    let limit = max_frame.max(skv_proto::MIN_MAX_FRAME) + frame_slack;
    let mut framed = framed.map_codec(|_| FrameCodec::new(limit));
    // Send the token only where the node reads it: per-connection nodes had it in HELLO,
    // and bytes a node ignores still cost TLS, copies and syscalls on every request.
    let request_token = match placement {
        TokenPlacement::PerRequest => token,
        TokenPlacement::PerConnection | TokenPlacement::None => None,
    };
    // Where the node speaks version 2, the token is sent once more and then named.
    let credential = match request_token {
        Some(token) if opts.token_handles && version >= HANDLES_VERSION => {
            match register_token(&mut framed, token.clone(), &addr, ca).await? {
                Some(handle) => Credential::Handle(handle),
                None => Credential::Token(Some(token)),
            }
        }
        other => Credential::Token(other),
    };
    Ok(Greeted {
        framed,
        node,
        max_frame: limit,
        credential,
    })
}

/// A TCP connection to `opts.addr`, secured with `tls` where given, the node's certificate
/// checked against `opts.expect_node`; nothing spoken on it yet.
pub(crate) struct Secured {
    pub(crate) stream: Either<TcpStream, TlsStream<TcpStream>>,
    /// The CA's path, for messages about certificates.
    pub(crate) ca: Option<String>,
    /// The `spiffe://` URI SANs of the node's certificate (empty on plaintext).
    pub(crate) spiffe: Arc<[String]>,
    /// Whether the TLS handshake resumed an earlier session.
    pub(crate) resumed: bool,
}

/// Connect to `opts.addr` and run the TLS handshake (with `tls`; plaintext without).
pub(crate) async fn secure(
    opts: &ConnectOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Secured, ClientError> {
    let server_name = match tls {
        Some(_) => Some(opts.server_name()?),
        None => None,
    };
    let socket = TcpStream::connect(&opts.addr)
        .await
        .map_err(|e| ClientError::Connect {
            addr: opts.addr.clone(),
            reason: e.to_string(),
        })?;
    socket.set_nodelay(true).map_err(|e| ClientError::Connect {
        addr: opts.addr.clone(),
        reason: e.to_string(),
    })?;
    let ca = match &opts.security {
        Security::Tls { ca, .. } => Some(ca.display().to_string()),
        Security::Plaintext => None,
    };
    let (Some(tls), Some(name)) = (tls, server_name) else {
        return Ok(Secured {
            stream: Either::Left(socket),
            ca: None,
            spiffe: Arc::from(Vec::new()),
            resumed: false,
        });
    };
    let stream = TlsConnector::from(tls)
        .connect(name, socket)
        .await
        .map_err(|e| ClientError::from_io(&opts.addr, &e, ca.as_deref()))?;
    let spiffe = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| spiffe_ids(leaf.as_ref()))
        .unwrap_or_default();
    // Before HELLO: nothing, not even a token, goes to a node that is not the one the map
    // names at this address.
    if let Some(expected) = &opts.expect_node {
        check_node(&opts.addr, &spiffe, expected)?;
    }
    let resumed = stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Secured {
        stream: Either::Right(stream),
        ca,
        spiffe: spiffe.into(),
        resumed,
    })
}

/// What an answer's body means to a caller: the node's refusals and redirections as errors
/// (MOVED as [`ClientError::Moved`], NOT_LEADER as [`ClientError::NotLeader`]), anything
/// else as the answer.
pub(crate) fn answer_of(body: ResponseBody) -> Result<ResponseBody, ClientError> {
    match body {
        ResponseBody::Error(err) => Err(ClientError::from_wire(err)),
        ResponseBody::Moved {
            slot,
            epoch,
            node,
            addr,
        } => Err(ClientError::Moved {
            slot,
            epoch,
            node,
            addr,
        }),
        ResponseBody::NotLeader {
            shard,
            epoch,
            leader,
        } => Err(ClientError::NotLeader {
            shard,
            epoch,
            leader,
        }),
        other => Ok(other),
    }
}

pub(crate) fn get_answer(body: ResponseBody) -> Result<Option<(u64, Bytes)>, ClientError> {
    match body {
        ResponseBody::Value { version, value } => Ok(Some((version, value))),
        ResponseBody::NotFound => Ok(None),
        other => Err(unexpected("GET", &other)),
    }
}

pub(crate) fn put_answer(body: ResponseBody) -> Result<u64, ClientError> {
    match body {
        ResponseBody::Written { version } => Ok(version),
        other => Err(unexpected("PUT", &other)),
    }
}

pub(crate) fn delete_answer(body: ResponseBody) -> Result<bool, ClientError> {
    match body {
        ResponseBody::Deleted { existed } => Ok(existed),
        other => Err(unexpected("DELETE", &other)),
    }
}

pub(crate) fn cas_answer(body: ResponseBody) -> Result<CasResult, ClientError> {
    match body {
        ResponseBody::Written { version } => Ok(CasResult::Written(version)),
        ResponseBody::CasConflict { current } => Ok(CasResult::Conflict(current)),
        other => Err(unexpected("CAS", &other)),
    }
}

pub(crate) fn scan_answer(body: ResponseBody) -> Result<ScanPage, ClientError> {
    match body {
        ResponseBody::ScanPage {
            entries,
            cursor,
            epoch,
        } => Ok(ScanPage {
            entries,
            cursor,
            epoch,
        }),
        other => Err(unexpected("SCAN", &other)),
    }
}

/// Every `spiffe://` URI SAN of a DER certificate (none if it does not parse: rustls already
/// verified it, so that is a parser disagreement, and it then names no node).
fn spiffe_ids(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with("spiffe://") => {
                Some((*uri).to_owned())
            }
            _ => None,
        })
        .collect()
}

fn check_node(addr: &str, spiffe: &[String], expected: &ExpectedNode) -> Result<(), ClientError> {
    let want = expected.spiffe_id();
    if spiffe.contains(&want) {
        return Ok(());
    }
    Err(ClientError::WrongNode {
        addr: addr.to_owned(),
        expected: want,
        found: if spiffe.is_empty() {
            "no SPIFFE ID".into()
        } else {
            spiffe.join(", ")
        },
    })
}

fn unexpected(op: &str, body: &ResponseBody) -> ClientError {
    let kind = match body {
        ResponseBody::HelloOk { .. } => "HELLO_OK",
        ResponseBody::Pong => "PONG",
        ResponseBody::Value { .. } => "VALUE",
        ResponseBody::NotFound => "NOT_FOUND",
        ResponseBody::Written { .. } => "WRITTEN",
        ResponseBody::Deleted { .. } => "DELETED",
        ResponseBody::ScanPage { .. } => "SCAN_PAGE",
        ResponseBody::CasConflict { .. } => "CAS_CONFLICT",
        ResponseBody::Map { .. } => "MAP",
        ResponseBody::Control { .. } => "CONTROL",
        ResponseBody::Moved { .. } => "MOVED",
        ResponseBody::NotLeader { .. } => "NOT_LEADER",
        ResponseBody::Raft { .. } => "RAFT",
        ResponseBody::TokenHandle { .. } => "TOKEN_HANDLE",
        ResponseBody::Error(_) => "ERROR",
    };
    ClientError::Protocol(format!("the node answered {op} with {kind}"))
}

pub(crate) fn frame_error(addr: &str, err: FrameError, ca: Option<&str>) -> ClientError {
    match err {
        FrameError::Io(io) => ClientError::from_io(addr, &io, ca),
        FrameError::TooLarge { .. } | FrameError::Empty if ca.is_none() => {
            ClientError::Protocol(format!(
                "{addr} answered with bytes that are not skv frames; if the node uses TLS, drop \
                 --plaintext"
            ))
        }
        other => ClientError::Protocol(format!("bad frame from {addr}: {other}")),
    }
}

/// What every request of a connection carries to say who sends it. (No `Debug`: it holds
/// the token.)
pub(crate) enum Credential {
    /// The whole token, or nothing (nodes that read no token per request).
    Token(Option<Bytes>),
    /// The handle the node gave the token at REGISTER_TOKEN.
    Handle(u32),
}

/// Id of the REGISTER_TOKEN request, sent right after HELLO (id 0) and before the driver's
/// first request.
const REGISTER_ID: u64 = 1;

/// Register `token` on a fresh connection (protocol version 2): its handle, or `None` when
/// the node refuses the registration. A refused token then travels in full, so the client
/// meets exactly the refusal a version-1 connection would (an expired token, say, still lets
/// PING through, and every other request is told why it is refused).
async fn register_token<S>(
    framed: &mut Framed<S, FrameCodec>,
    token: Bytes,
    addr: &str,
    ca: Option<&str>,
) -> Result<Option<u32>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let io_err = |e: FrameError| frame_error(addr, e, ca);
    let request = Request::new(REGISTER_ID, RequestBody::RegisterToken { token });
    framed.send(&request).await.map_err(io_err)?;
    let answer = match framed.next().await {
        Some(Ok(payload)) => Response::decode(payload).map_err(|e| {
            ClientError::Protocol(format!("{addr} answered REGISTER_TOKEN unreadably: {e}"))
        })?,
        Some(Err(e)) => return Err(io_err(e)),
        None => {
            return Err(ClientError::Disconnected {
                addr: addr.to_owned(),
                reason: "the node closed the connection right after HELLO; see its log".into(),
            })
        }
    };
    match answer.body {
        _ if answer.id != REGISTER_ID => Err(ClientError::Protocol(format!(
            "{addr} answered REGISTER_TOKEN with the id of another request ({})",
            answer.id
        ))),
        ResponseBody::TokenHandle { handle } => Ok(Some(handle)),
        ResponseBody::Error(_) => Ok(None),
        other => Err(ClientError::Protocol(format!(
            "{addr} answered REGISTER_TOKEN with {other:?}"
        ))),
    }
}

/// The driver: owns the socket, assigns ids, batches writes, routes answers.
async fn drive<S>(
    mut framed: Framed<S, FrameCodec>,
    mut calls: mpsc::Receiver<Call>,
    credential: Credential,
    addr: String,
    ca: Option<String>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut waiting: HashMap<u64, Reply> = HashMap::new();
    let (token, handle) = match credential {
        Credential::Token(token) => (token, None),
        Credential::Handle(handle) => (None, Some(handle)),
    };
    // Id 0 was HELLO's, id 1 REGISTER_TOKEN's (sent or not: ids need only be unique).
    let mut next_id: u64 = REGISTER_ID + 1;
    let failure = loop {
        tokio::select! {
            call = calls.recv() => {
                let Some(mut call) = call else { break None };
                // Take everything already queued, write it as one batch, flush once.
                let mut batch = 0;
                let result = loop {
                    let id = next_id;
                    next_id += 1;
                    let request = Request {
                        id,
                        token: token.clone(),
                        handle,
                        session: call.session,
                        consistency: call.consistency,
                        body: call.body,
                    };
                    match framed.feed(&request).await {
                        Ok(()) => { waiting.insert(id, call.reply); }
                        Err(FrameError::TooLarge { len, max }) => {
                            let _ = call.reply.send(Err(ClientError::Config(format!(
                                "request of {len} bytes exceeds the node's {max}-byte frame limit"
                            ))));
                        }
                        Err(e) => break Err(e),
                    }
                    batch += 1;
                    match calls.try_recv() {
                        Ok(next) if batch < 256 => call = next,
                        Ok(next) => {
                            // Bound the batch so answers keep flowing under a flood of calls.
                            if let Err(e) = SinkExt::<&Request>::flush(&mut framed).await {
                                break Err(e);
                            }
                            batch = 0;
                            call = next;
                        }
                        Err(_) => break SinkExt::<&Request>::flush(&mut framed).await,
                    }
                };
                if let Err(e) = result {
                    break Some(frame_error(&addr, e, ca.as_deref()));
                }
            }
            frame = framed.next() => match frame {
                Some(Ok(payload)) => match Response::decode(payload) {
                    Ok(response) => {
                        if let Some(reply) = waiting.remove(&response.id) {
                            let _ = reply.send(Ok(response.body));
                        } else if let ResponseBody::Error(err) = response.body {
                            // Id 0: the node refused something about the connection itself.
                            break Some(ClientError::from_wire(err));
                        }
                    }
                    Err(e) => break Some(ClientError::Protocol(format!("undecodable answer from {addr}: {e}"))),
                },
                Some(Err(e)) => break Some(frame_error(&addr, e, ca.as_deref())),
                None => break Some(ClientError::Disconnected { addr: addr.clone(), reason: "the node closed the connection".into() }),
            },
        }
    };
    // Everyone still waiting learns why.
    let failure = failure.unwrap_or_else(|| ClientError::Disconnected {
        addr: addr.clone(),
        reason: "the connection was closed".into(),
    });
    for (_, reply) in waiting.drain() {
        let _ = reply.send(Err(failure.clone()));
    }
}
