//! One client connection, from HELLO to close.
//!
//! A single task owns the stream: it reads frames, executes them, and buffers the answers,
//! writing the buffer only when no further complete request is already waiting. A pipelining
//! client therefore gets many answers per TLS record and per syscall, and no lock is shared
//! between a reader and a writer half.
//!
//! Durable writes are applied in arrival order inside this task (so writes on one connection
//! are ordered), then wait for their group commit in a small spawned task that sends the
//! answer back through a bounded channel. Control requests (a slot move takes seconds) answer
//! the same way. The number of such waits is capped per connection, so a client that streams
//! writes gets backpressure, not unbounded memory.
//!
//! Before any of that, the certificate's role decides what a connection may ask: a node of
//! this cluster speaks only the peer protocol, everyone else only the client protocol
//! (see `answer`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use skv_proto::{
    peek_request_id, DecodeError, ErrorCode, FrameCodec, FrameError, Request, RequestBody,
    Response, ResponseBody, TokenPlacement, WireError, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::auth::CertThumbprint;
use crate::checkpoint::{Refusal, Session};
use crate::cluster::PEER_FRAME_SLACK;
use crate::handler::{self, Outcome};
use crate::identity::PeerKind;
use crate::node::Shared;
use skv_proto::cluster::ControlRequest;

/// Most answers of one connection still being worked out at once: durable writes waiting for
/// their flush, and control requests running.
const MAX_PENDING_DURABLE: usize = 1024;

/// Write out buffered answers once this many bytes are waiting, even mid-batch.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

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
    #[error("peer closed before HELLO")]
    ClosedBeforeHello,
    #[error("handshake refused: {0}")]
    Handshake(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Serve one connection until the peer closes, it breaks the protocol, or the node shuts
/// down.
pub(crate) async fn serve<S>(
    stream: S,
    thumbprint: Option<CertThumbprint>,
    kind: PeerKind,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_frame = shared.config.max_frame;
    let mut session = Session::new(thumbprint);
    // A peer's import batch is a client write plus its version; allow it that much more.
    let frame_limit = match kind {
        PeerKind::Peer(_) => max_frame + PEER_FRAME_SLACK,
        _ => max_frame,
    };
    let mut framed = Framed::new(stream, FrameCodec::new(frame_limit));
    framed.set_backpressure_boundary(WRITE_BATCH_BYTES);

    // HELLO shares the deadline of the TLS handshake: a peer that connects and stays silent
    // holds a connection slot for at most that long.
    let hello = tokio::time::timeout(shared.config.handshake_timeout, framed.next()).await;
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
            let version = max_version.min(PROTOCOL_VERSION);
            if version < min_version {
                let msg = format!(
                    "node speaks protocol version {PROTOCOL_VERSION}; client asked for {min_version}..={max_version}"
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
    let (durable_tx, mut durable_rx) =
        mpsc::channel::<(Response, OwnedSemaphorePermit)>(MAX_PENDING_DURABLE);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_DURABLE));
    let mut result = Ok(());
    'conn: loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some((done, _permit)) = durable_rx.recv() => framed.feed(&done).await?,
            frame = framed.next() => match frame {
                None => break,
                Some(Ok(payload)) => {
                    let id = peek_request_id(&payload);
                    let answer = match Request::decode(payload) {
                        Ok(request) => answer(&shared, &kind, &mut session, request, max_frame),
                        // The frame boundary is intact, so a bad request costs only itself.
                        Err(err) => Answer::Now(decode_refusal(&shared, &session, &err)),
                    };
                    match answer {
                        Answer::Now(body) => reply(&mut framed, id, body).await?,
                        Answer::Later(work) => {
                            // At the cap, deliver finished answers until a permit frees up:
                            // every permit is either with a waiting task or on the channel,
                            // so this ends.
                            let permit = loop {
                                if let Ok(permit) = pending.clone().try_acquire_owned() {
                                    break permit;
                                }
                                match durable_rx.recv().await {
                                    Some((done, _permit)) => framed.feed(&done).await?,
                                    // Cannot happen while this task holds a sender.
                                    None => break 'conn,
                                }
                            };
                            let tx = durable_tx.clone();
                            tokio::spawn(async move {
                                let body = work.await;
                                let _ = tx.send((Response { id, body }, permit)).await;
                            });
                        }
                    }
                }
                Some(Err(err)) => {
                    refuse_frame(&mut framed, &err).await;
                    result = Err(err.into());
                    break;
                }
            },
        }
        // Flush only when the next request is not already buffered: answers to a pipelined
        // burst leave together.
        if !framed.write_buffer().is_empty() && !has_complete_frame(framed.read_buffer()) {
            flush(&mut framed).await?;
        }
    }

    // Finish what was started: every applied durable write still gets its answer.
    drop(durable_tx);
    let drain = async {
        while let Some((done, _permit)) = durable_rx.recv().await {
            framed.feed(&done).await?;
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

/// An answer that needs more time: a write waiting for its group commit, or a control
/// request (a slot move takes seconds). It runs in its own task; the connection keeps
/// serving meanwhile.
type Pending = Pin<Box<dyn Future<Output = ResponseBody> + Send>>;

/// What to do with one decoded request.
enum Answer {
    /// Send this now.
    Now(ResponseBody),
    /// Send what this future yields once it is done.
    Later(Pending),
}

fn refuse(code: ErrorCode, message: &str) -> Answer {
    Answer::Now(ResponseBody::Error(WireError::new(code, message)))
}

/// Refuse a request because of the role of the connection's certificate: logged, audited
/// (when the node keeps an audit log), answered `forbidden`.
fn refuse_role(shared: &Shared, session: &Session, op: &str, reason: &str) -> Answer {
    // Debug, not warn: a client can send these as fast as it likes, and the audit log (bounded,
    // never blocking) is where refusals are kept.
    tracing::debug!(
        op,
        reason,
        "refused a request for the role of its certificate"
    );
    if let Some(checkpoint) = &shared.checkpoint {
        checkpoint.deny_role(session, op, reason);
    }
    refuse(ErrorCode::Forbidden, reason)
}

/// Who may send what, then the operation itself.
///
/// A peer node (its certificate says `spiffe://<cluster>/node/<id>`) may use the peer protocol
/// and nothing else: a node certificate gives no client rights. Everyone else passes
/// checkpoints 2 and 3 (when the node checks tokens); control requests then need the `admin`
/// scope, and peer-only requests are refused whatever the token says.
fn answer(
    shared: &Shared,
    kind: &PeerKind,
    session: &mut Session,
    request: Request,
    max_frame: usize,
) -> Answer {
    let body = request.body;
    match kind {
        PeerKind::Peer(node) => {
            return match body {
                RequestBody::Ping => Answer::Now(ResponseBody::Pong),
                RequestBody::ClusterMap => Answer::Now(shared.cluster.map_answer()),
                RequestBody::Import { entries, deleted } => {
                    Answer::Now(shared.cluster.import(entries, deleted))
                }
                RequestBody::Control { json } => match ControlRequest::from_json(&json) {
                    Ok(req) if req.peer_only() => {
                        tracing::debug!(peer = %node, request = req.name(), "peer control request");
                        Answer::Later(Box::pin(shared.cluster.clone().control(req)))
                    }
                    Ok(req) => refuse_role(
                        shared,
                        session,
                        req.name(),
                        "administrative requests need a client certificate and an admin \
                         token, not a node certificate",
                    ),
                    Err(err) => refuse(ErrorCode::Malformed, &err.to_string()),
                },
                other => refuse_role(
                    shared,
                    session,
                    other.op().as_str(),
                    "a node certificate gives no client rights; use a client certificate",
                ),
            };
        }
        PeerKind::ForeignNode => {
            if !matches!(body, RequestBody::Ping | RequestBody::ClusterMap) {
                return refuse_role(
                    shared,
                    session,
                    body.op().as_str(),
                    "this certificate names a node of another cluster",
                );
            }
        }
        PeerKind::Client => {}
    }
    if matches!(body, RequestBody::Import { .. }) {
        return refuse_role(
            shared,
            session,
            "import",
            "IMPORT is part of the peer protocol: only nodes of this cluster may send it",
        );
    }
    if let Some(checkpoint) = &shared.checkpoint {
        if let Err(Refusal { code, message }) =
            checkpoint.authorize(session, request.token.as_ref(), &body)
        {
            return refuse(code, message);
        }
    }
    let cluster = &shared.cluster;
    let storage = shared.storage.as_ref();
    let outcome = match body {
        RequestBody::ClusterMap => return Answer::Now(cluster.map_answer()),
        RequestBody::Control { json } => {
            return match ControlRequest::from_json(&json) {
                Ok(req) if req.peer_only() => refuse_role(
                    shared,
                    session,
                    req.name(),
                    "this control request is part of the peer protocol: only nodes of this \
                     cluster may send it",
                ),
                Ok(req) => Answer::Later(Box::pin(cluster.clone().control(req))),
                Err(err) => refuse(ErrorCode::Malformed, &err.to_string()),
            }
        }
        RequestBody::Scan { .. } => cluster.with_owned(|owned, epoch| {
            handler::execute(storage, body, max_frame, Some((owned, epoch)))
        }),
        body => match body.key().cloned() {
            Some(key) => {
                let write = !matches!(body, RequestBody::Get { .. });
                match cluster.serve(&key, write, || {
                    handler::execute(storage, body, max_frame, None)
                }) {
                    Ok(outcome) => outcome,
                    Err(redirect) => return Answer::Now(redirect),
                }
            }
            None => handler::execute(storage, body, max_frame, None),
        },
    };
    match outcome {
        Outcome::Reply(body) => Answer::Now(body),
        Outcome::ReplyWhenDurable(body) => match &shared.group_commit {
            Some(group_commit) => {
                let group_commit = group_commit.clone();
                Answer::Later(Box::pin(async move {
                    durable_answer(&group_commit, body).await
                }))
            }
            None => Answer::Now(body),
        },
    }
}

/// `body` once the write is on disk, or a storage error if the flush failed.
async fn durable_answer(
    group_commit: &crate::storage::GroupCommit,
    body: ResponseBody,
) -> ResponseBody {
    match group_commit.wait_durable().await {
        Ok(()) => body,
        Err(err) => {
            tracing::error!(error = ?err, "flush failed; write not acknowledged");
            ResponseBody::Error(WireError::new(
                ErrorCode::Storage,
                "the node could not flush the write to disk; it may or may not persist",
            ))
        }
    }
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
