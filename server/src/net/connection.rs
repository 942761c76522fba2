//! One client connection, from HELLO to close.
//!
//! A single task owns the stream: it reads frames, executes them, and buffers the answers,
//! writing the buffer only when no further complete request is already waiting. A pipelining
//! client therefore gets many answers per TLS record and per syscall, and no lock is shared
//! between a reader and a writer half.
//!
//! The connection frames and decodes; the router ([`crate::router`]) decides what each request
//! may do and where it goes. Writes reach their shard in arrival order from inside this task
//! (so writes on one connection are ordered), then wait for durability in a small spawned task
//! that sends the answer back through a bounded channel. Control requests (a slot move takes
//! seconds) answer the same way. Such waits are capped per connection in number and in bytes:
//! each reserves its request's size plus room for its answer (a frame for a read, whose value
//! is loaded only once its leadership check is done), the reservation shrinks to the answer's
//! size once known, and is released when the answer is written. A client that pipelines large
//! GETs and never reads therefore holds at most `--max-pending-bytes` in the node, plus the
//! write buffer that its socket stopped draining; a client that streams writes gets
//! backpressure, not unbounded memory.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use skv_proto::{
    peek_request_id, DecodeError, ErrorCode, FrameCodec, FrameError, Op, Request, RequestBody,
    Response, ResponseBody, TokenPlacement, WireError, HANDLES_VERSION, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::auth::checkpoint::Session;
use crate::auth::CertThumbprint;
use crate::limits::load::{InFlight, Pressure, SHED_RETRY_AFTER_MS};
use crate::limits::rate::{Meter, RateLimiter};
use crate::metrics::{self, Outcome};
use crate::net::admission::{NotKept, Ticket};
use crate::net::identity::PeerKind;
use crate::net::idle::IdleWatch;
use crate::net::peer::PEER_FRAME_SLACK;
use crate::node::Shared;
use crate::router::Answer;
use rustls_pki_types::CertificateDer;

/// Most answers of one connection still being worked out at once: durable writes waiting for
/// their flush, and control requests running.
const MAX_PENDING_DURABLE: usize = 1024;

/// Write out buffered answers once this many bytes are waiting, even mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// What an answer that is not a read reserves of the connection's pending bytes: a WRITTEN,
/// DELETED, CAS_CONFLICT or error is a few dozen bytes.
const SMALL_ANSWER: usize = 128;

/// An answer worked out beside the connection, with what it holds until it is written: its
/// slot among the pending answers, its reservation of pending bytes, its place in the node's
/// in-flight count.
struct Done {
    response: Response,
    _slot: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
    _in_flight: InFlight,
}

/// About how many bytes `body` takes on the wire (and in memory until written): exact for the
/// bulky parts, a small allowance for the fixed ones.
fn answer_bytes(body: &ResponseBody) -> usize {
    let bulk = match body {
        ResponseBody::Value { value, .. } => value.len(),
        ResponseBody::ScanPage {
            entries, cursor, ..
        } => {
            entries
                .iter()
                .map(|e| skv_proto::scan_entry_wire_len(e.key.len(), e.value.len()))
                .sum::<usize>()
                + cursor.as_ref().map_or(0, |c| c.len())
        }
        ResponseBody::Map { json, .. } | ResponseBody::Control { json } => json.len(),
        ResponseBody::Raft { payload } => payload.len(),
        ResponseBody::Error(err) => err.message.len(),
        _ => 0,
    };
    bulk + 32
}

/// What a request reserves of the pending bytes before its answer is known: itself, plus a
/// whole frame for requests whose answer can carry one.
fn reservation(op: Op, frame_len: usize, max_frame: usize) -> usize {
    let answer = match op {
        Op::Get | Op::Scan | Op::ClusterMap | Op::Control | Op::Raft => max_frame,
        _ => SMALL_ANSWER,
    };
    frame_len.saturating_add(answer)
}

/// The client certificate's thumbprint from a TLS chain (the leaf comes first). Hashed once
/// per connection, so per-request binding checks compare 32 bytes.
pub(crate) fn thumbprint_of(
    chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
) -> Option<CertThumbprint> {
    chain
        .and_then(|c| c.first())
        .map(|leaf| CertThumbprint::of(leaf.as_ref()))
}

/// Why a connection ended early; logged at debug level by the listener.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("no HELLO within the handshake timeout")]
    HelloTimeout,
    #[error("evicted while half-open to make room")]
    Evicted,
    #[error("idle for longer than the idle timeout")]
    Idle,
    #[error("peer closed before HELLO")]
    ClosedBeforeHello,
    #[error("handshake refused: {0}")]
    Handshake(String),
    #[error("the peer's certificate is no longer trusted after a reload: {0}")]
    NoLongerTrusted(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ConnectionError {
    /// Whether the connection ended before its HELLO succeeded (a failed handshake, for the
    /// metrics).
    pub(crate) fn before_hello(&self) -> bool {
        matches!(
            self,
            ConnectionError::HelloTimeout
                | ConnectionError::Evicted
                | ConnectionError::ClosedBeforeHello
                | ConnectionError::Handshake(_)
        )
    }
}

/// The certificate chain a connection's peer presented at the handshake, and the credentials
/// generation ([`crate::net::credentials::Credentials::generation`]) that handshake ran
/// under: enough to re-check it after a reload.
#[derive(Debug, Default)]
pub(crate) struct Trust {
    /// The peer's chain, leaf first; empty when it presented none.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The generation read before the handshake's config was taken.
    pub(crate) generation: u64,
}

/// Serve one connection until the peer closes, it breaks the protocol, its certificate stops
/// being trusted, or the node shuts down.
///
/// `trust` is the certificate chain the peer presented (empty without client certificates)
/// and the credentials generation it was verified under. When the node's CA or CRLs are
/// reloaded after that, the next request re-checks it: a certificate
/// revoked (or no longer signed by a trusted CA) since the handshake gets that request
/// refused with `UNAUTHENTICATED` and the connection closed, so a revocation reaches
/// connections opened before it, not only new handshakes.
///
/// `ticket` is the connection's admission slot; HELLO must arrive before `deadline` (which
/// the TLS handshake shared) and while the ticket is not evicted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S>(
    stream: S,
    thumbprint: Option<CertThumbprint>,
    trust: Trust,
    kind: PeerKind,
    mut ticket: Ticket,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_frame = shared.config.max_frame;
    let mut session = Session::new(thumbprint).with_source(ticket.source());
    // A peer's import batch is a client write plus its version; allow it that much more.
    let frame_limit = match kind {
        PeerKind::Peer(_) => max_frame + PEER_FRAME_SLACK,
        _ => max_frame,
    };
    let mut framed = Framed::new(stream, FrameCodec::new(frame_limit));
    framed.set_backpressure_boundary(WRITE_BATCH_BYTES);

    // HELLO shares the deadline of the TLS handshake: a peer that connects and stays silent
    // holds a connection slot for at most that long, and less when the node is filling up.
    let hello = tokio::select! {
        () = ticket.evicted() => return Err(ConnectionError::Evicted),
        hello = tokio::time::timeout_at(deadline, framed.next()) => hello,
    };
    let first = match hello {
        Err(_) => return Err(ConnectionError::HelloTimeout),
        Ok(None) => return Err(ConnectionError::ClosedBeforeHello),
        Ok(Some(Err(err))) => {
            refuse_frame(&mut framed, &err).await;
            return Err(err.into());
        }
        Ok(Some(Ok(payload))) => payload,
    };
    let id = peek_request_id(&first);
    match Request::decode(first) {
        Ok(Request {
            body:
                RequestBody::Hello {
                    min_version,
                    max_version,
                },
            token,
            ..
        }) => {
            // Shed first what nobody has invested in yet: a new client while the node is
            // behind. Nodes of the cluster are never shed (Raft needs its links).
            if !matches!(kind, PeerKind::Peer(_)) && shared.load.pressure() != Pressure::Normal {
                shared.load.shed(true);
                let msg = format!(
                    "the node has more than {} requests in flight \
                     (--overload-inflight) and takes no new connections; retry after \
                     {SHED_RETRY_AFTER_MS} ms",
                    shared.config.overload_inflight.unwrap_or_default()
                );
                let refusal = Response {
                    id,
                    body: ResponseBody::Error(WireError::retry_after(
                        ErrorCode::Overloaded,
                        msg.clone(),
                        SHED_RETRY_AFTER_MS,
                    )),
                };
                let _ = framed.send(&refusal).await;
                return Err(ConnectionError::Handshake(msg));
            }
            let version = max_version.min(PROTOCOL_VERSION);
            if version < min_version || version < MIN_PROTOCOL_VERSION {
                let msg = format!(
                    "node speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}; \
                     client asked for {min_version}..={max_version}"
                );
                send_error(&mut framed, id, ErrorCode::UnsupportedVersion, &msg).await;
                return Err(ConnectionError::Handshake(msg));
            }
            // Peers are admitted by their node certificate alone and carry no token.
            let checkpoint = match kind {
                PeerKind::Peer(_) => None,
                _ => shared.checkpoint.as_ref(),
            };
            if let Some(checkpoint) = checkpoint {
                if let Err(refusal) = checkpoint.hello(&mut session, token.as_ref()) {
                    send_error(&mut framed, id, refusal.code, refusal.message).await;
                    return Err(ConnectionError::Handshake(refusal.message.into()));
                }
            }
            // Clients count against their certificate's cap; nodes of the cluster dial a few
            // connections each and are not capped here.
            let identity = match kind {
                PeerKind::Peer(_) => None,
                _ => thumbprint,
            };
            let kept = match ticket.claim_identity(identity, false) {
                Err(NotKept::IdentityFull) => {
                    let proven =
                        checkpoint.is_some_and(|c| c.hello_proves(&mut session, token.as_ref()));
                    ticket.claim_identity(identity, proven)
                }
                other => other,
            };
            if let Err(not_kept) = kept {
                let (code, msg) = match not_kept {
                    // Past the cap a certificate alone is not enough: a token must vouch.
                    NotKept::IdentityFull => (
                        ErrorCode::Unauthenticated,
                        "this client certificate holds its maximum of connections \
                         (--max-connections-per-identity); past it, HELLO must carry a token \
                         that verifies",
                    ),
                    NotKept::Evicted => (ErrorCode::TryAgain, "the node is full; retry"),
                };
                send_error(&mut framed, id, code, msg).await;
                return Err(ConnectionError::Handshake(msg.into()));
            }
            if version >= HANDLES_VERSION {
                session.allow_handles();
            }
            let ok = Response {
                id,
                body: ResponseBody::HelloOk {
                    version,
                    max_frame: max_frame as u32,
                    node: shared.config.name.clone(),
                    token: checkpoint.map_or(TokenPlacement::None, |c| c.placement()),
                },
            };
            framed.send(&ok).await?;
            if let Some(m) = metrics::get() {
                m.handshake(true);
            }
        }
        Ok(_) => {
            let msg = "the first request on a connection must be HELLO";
            send_error(&mut framed, id, ErrorCode::HandshakeRequired, msg).await;
            return Err(ConnectionError::Handshake(msg.into()));
        }
        Err(err) => {
            let refusal = decode_refusal(&shared, &session, &err);
            let _ = framed.send(&Response { id, body: refusal }).await;
            return Err(ConnectionError::Handshake(err.to_string()));
        }
    }

    // A permit travels with each durable answer until this task takes it off the channel, so
    // waiting tasks plus queued answers never exceed the channel's capacity and a waiting
    // task's send never blocks.
    let (durable_tx, mut durable_rx) = mpsc::channel::<Done>(MAX_PENDING_DURABLE);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_DURABLE));
    // Node-to-node links carry Raft, whose peers are trusted and pipeline large batches:
    // they keep the count cap only.
    let max_pending_bytes = shared.config.max_pending_bytes;
    let pending_bytes = match kind {
        PeerKind::Peer(_) => None,
        _ => Some(Arc::new(Semaphore::new(max_pending_bytes))),
    };
    let mut meter = Meter::new(ticket.source());
    let rate = shared.router.rate_limiter();
    let mut result = Ok(());
    // Clients that send nothing and wait for nothing for this long are closed, so a client
    // that finished HELLO cannot hold its slot forever. Nodes of the cluster keep their links.
    let idle = match (&kind, shared.config.idle_timeout) {
        (PeerKind::Peer(_), _) | (_, None) => IdleWatch::never(&shutdown),
        (_, Some(timeout)) => {
            // Still waiting on its own answers: not idle.
            let pending = pending.clone();
            IdleWatch::start(timeout, &shutdown, move || {
                pending.available_permits() != MAX_PENDING_DURABLE
            })
        }
    };
    // The credentials generation this connection's certificate was last checked under.
    let Trust {
        chain,
        generation: mut trusted_at,
    } = trust;
    let credentials = shared.credentials.clone().filter(|_| !chain.is_empty());
    'conn: loop {
        tokio::select! {
            biased;
            () = idle.closed() => {
                if idle.timed_out() {
                    result = Err(ConnectionError::Idle);
                }
                break;
            }
            Some(done) = durable_rx.recv() => {
                // Take every answer already finished, not only the first: a read gate
                // confirms a batch of linearizable reads at once and a group commit a batch
                // of writes, so their answers arrive together and should leave in one write.
                let mut next = Some(done);
                while let Some(done) = next {
                    feed_done(&mut framed, &mut meter, rate, done).await?;
                    next = durable_rx.try_recv().ok();
                }
            }
            frame = framed.next() => {
                // Every request already buffered is handled here, one after another, rather
                // than one per turn of the select: a turn polls the idle watch and the answer
                // channel too, and registers and drops a waker for each: at inflight 16 a
                // measurable share of a request (docs/BENCHMARKS.md). Answers worked out beside the connection
                // wait for the next turn, so they are at most one read buffer late.
                let mut frame = frame;
                session.begin_batch();
                loop {
                    match frame {
                        None => break 'conn,
                        Some(Ok(payload)) => {
                            idle.note_request();
                            let id = peek_request_id(&payload);
                            if let Some(credentials) = &credentials {
                                let now = credentials.generation();
                                if now != trusted_at {
                                    if let Err(reason) = credentials.still_trusted(&chain) {
                                        tracing::info!(
                                            peer = %session.fingerprint(),
                                            %reason,
                                            "closing a connection whose certificate is no longer trusted"
                                        );
                                        let _ = send_error_buffered(
                                            &mut framed,
                                            id,
                                            ErrorCode::Unauthenticated,
                                            "this connection's certificate is no longer trusted \
                                             (revoked, or its CA was removed); reconnect with a valid one",
                                        )
                                        .await;
                                        result = Err(ConnectionError::NoLongerTrusted(reason));
                                        break 'conn;
                                    }
                                    trusted_at = now;
                                }
                            }
                            let frame_len = payload.len();
                            let started = metrics::get().map(|m| (m, std::time::Instant::now()));
                            let (op, answer) = match Request::decode(payload) {
                                Ok(request) => {
                                    let op = request.body.op();
                                    meter.frame_len = frame_len;
                                    (
                                        Some(op),
                                        shared.router.route(
                                            &kind,
                                            &mut session,
                                            request,
                                            max_frame,
                                            &mut meter,
                                        ),
                                    )
                                }
                                // The frame boundary is intact, so a bad request costs only itself.
                                Err(err) => (None, Answer::Now(decode_refusal(&shared, &session, &err))),
                            };
                            match answer {
                                Answer::Now(body) => {
                                    if let Some(rate) = rate {
                                        meter.charge_answer(rate, answer_bytes(&body));
                                    }
                                    if let Some((m, t0)) = started {
                                        m.request(op.unwrap_or(Op::Ping), Outcome::of(&body), t0.elapsed());
                                    }
                                    reply(&mut framed, id, body).await?
                                }
                                Answer::Later(work) => {
                                    // At the caps, deliver finished answers until a slot and enough
                                    // bytes free up: every slot and byte is either with a waiting
                                    // task or on the channel, so this ends.
                                    let slot = loop {
                                        if let Ok(slot) = pending.clone().try_acquire_owned() {
                                            break slot;
                                        }
                                        match durable_rx.recv().await {
                                            Some(done) => {
                                                feed_done(&mut framed, &mut meter, rate, done).await?
                                            }
                                            // Cannot happen while this task holds a sender.
                                            None => break 'conn,
                                        }
                                    };
                                    let reserve = reservation(op.unwrap_or(Op::Ping), frame_len, max_frame)
                                        .min(max_pending_bytes)
                                        .min(u32::MAX as usize);
                                    let bytes = match &pending_bytes {
                                        None => None,
                                        Some(budget) => Some(loop {
                                            if let Ok(bytes) =
                                                budget.clone().try_acquire_many_owned(reserve as u32)
                                            {
                                                break bytes;
                                            }
                                            match durable_rx.recv().await {
                                                Some(done) => {
                                                    feed_done(&mut framed, &mut meter, rate, done)
                                                        .await?
                                                }
                                                None => break 'conn,
                                            }
                                        }),
                                    };
                                    let in_flight = shared.load.start();
                                    let tx = durable_tx.clone();
                                    tokio::spawn(async move {
                                        let body = work.await;
                                        // Keep only what the answer takes: the rest of a read's frame
                                        // goes back to the connection's budget now.
                                        let mut bytes = bytes;
                                        if let Some(held) = bytes.as_mut() {
                                            let excess = held.num_permits().saturating_sub(answer_bytes(&body));
                                            drop(held.split(excess));
                                        }
                                        if let Some((m, t0)) = started {
                                            m.request(op.unwrap_or(Op::Ping), Outcome::of(&body), t0.elapsed());
                                        }
                                        let done = Done {
                                            response: Response { id, body },
                                            _slot: slot,
                                            _bytes: bytes,
                                            _in_flight: in_flight,
                                        };
                                        let _ = tx.send(done).await;
                                    });
                                }
                            }
                        }
                        Some(Err(err)) => {
                            refuse_frame(&mut framed, &err).await;
                            result = Err(err.into());
                            break 'conn;
                        }
                    }
                    if !has_complete_frame(framed.read_buffer()) {
                        break;
                    }
                    frame = framed.next().await;
                }
                session.end_batch();
            }
        }
        // Flush only when the next request is not already buffered: answers to a pipelined
        // burst leave together.
        if !framed.write_buffer().is_empty() && !has_complete_frame(framed.read_buffer()) {
            // Answers still being worked on (reads waiting for their gate, writes for their
            // commit) often finish a moment apart: let the tasks computing them run once,
            // and send whatever they finished with this write instead of one write each.
            if pending.available_permits() != MAX_PENDING_DURABLE {
                tokio::task::yield_now().await;
                while let Ok(done) = durable_rx.try_recv() {
                    feed_done(&mut framed, &mut meter, rate, done).await?;
                }
            }
            flush(&mut framed).await?;
            // Both buffers are usually empty here, between a burst's answers and the next
            // burst: the next one reuses the lines this one warmed (skv_proto::rewind).
            skv_proto::rewind(framed.write_buffer_mut());
            skv_proto::rewind(framed.read_buffer_mut());
        }
    }

    // Finish what was started: every applied durable write still gets its answer.
    drop(durable_tx);
    let drain = async {
        while let Some(done) = durable_rx.recv().await {
            framed.feed(&done.response).await?;
        }
        flush(&mut framed).await?;
        framed.get_mut().shutdown().await.map_err(FrameError::Io)
    };
    match tokio::time::timeout(shared.config.shutdown_timeout, drain).await {
        Ok(Err(err)) if result.is_ok() => result = Err(err.into()),
        Err(_) => tracing::warn!("gave up draining a connection at shutdown"),
        _ => {}
    }
    result
}

/// Buffer a finished answer for writing, charging its bytes to the caller's byte rate when
/// one is limited. Its slot and byte reservation go back to the connection with `done`.
async fn feed_done<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    meter: &mut Meter,
    rate: Option<&RateLimiter>,
    done: Done,
) -> Result<(), FrameError> {
    if let Some(rate) = rate {
        meter.charge_answer(rate, answer_bytes(&done.response.body));
    }
    framed.feed(&done.response).await
}

/// Write out buffered answers. (Framed is a sink for every encodable type, so the item type
/// must be named.)
async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
) -> Result<(), FrameError> {
    SinkExt::<&Response>::flush(framed).await
}

/// The answer to an undecodable request. An oversized token is an authentication failure
/// (audited when the node checks tokens); everything else is a protocol error.
fn decode_refusal(shared: &Shared, session: &Session, err: &DecodeError) -> ResponseBody {
    if let (DecodeError::TokenTooLarge(len), Some(checkpoint)) = (err, &shared.checkpoint) {
        let refusal = checkpoint.deny_oversized_token(session, *len);
        return ResponseBody::Error(WireError::new(refusal.code, refusal.message));
    }
    ResponseBody::Error(WireError::new(err.code(), err.to_string()))
}

/// Whether `buf` already holds a whole frame (length prefix plus payload).
fn has_complete_frame(buf: &[u8]) -> bool {
    match buf.get(..4) {
        Some(h) => {
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            buf.len() >= 4 + len
        }
        None => false,
    }
}

async fn reply<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    id: u64,
    body: ResponseBody,
) -> Result<(), FrameError> {
    match framed.feed(&Response { id, body }).await {
        // Only a scan page can outgrow the frame; answer with a typed error instead.
        Err(FrameError::TooLarge { .. }) => {
            send_error_buffered(
                framed,
                id,
                ErrorCode::TooLarge,
                "the answer does not fit in one frame; retry with a smaller scan limit",
            )
            .await
        }
        other => other,
    }
}

async fn send_error_buffered<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    id: u64,
    code: ErrorCode,
    message: &str,
) -> Result<(), FrameError> {
    framed
        .feed(&Response {
            id,
            body: ResponseBody::Error(WireError::new(code, message)),
        })
        .await
}

/// Best effort: the connection is about to close anyway.
async fn send_error<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    id: u64,
    code: ErrorCode,
    message: &str,
) {
    let _ = framed
        .send(&Response {
            id,
            body: ResponseBody::Error(WireError::new(code, message)),
        })
        .await;
}

/// Tell the peer why its frame is refused before closing, when the failure left us able to.
async fn refuse_frame<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, FrameCodec>,
    err: &FrameError,
) {
    let code = match err {
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        FrameError::Empty => ErrorCode::Malformed,
        FrameError::Truncated { .. } | FrameError::Io(_) => return,
    };
    send_error(framed, 0, code, &err.to_string()).await;
    let _ = framed.get_mut().shutdown().await;
}
