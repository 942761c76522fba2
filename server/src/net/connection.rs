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
//! seconds) answer the same way. The number of such waits is capped per connection, so a
//! client that streams writes gets backpressure, not unbounded memory.

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

use crate::auth::checkpoint::Session;
use crate::auth::CertThumbprint;
use crate::net::admission::{NotKept, Ticket};
use crate::net::identity::PeerKind;
use crate::net::peer::PEER_FRAME_SLACK;
use crate::node::Shared;
use crate::router::Answer;

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
    #[error("evicted while half-open to make room")]
    Evicted,
    #[error("idle for longer than the idle timeout")]
    Idle,
    #[error("peer closed before HELLO")]
    ClosedBeforeHello,
    #[error("handshake refused: {0}")]
    Handshake(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Serve one connection until the peer closes, it breaks the protocol, or the node shuts
/// down.
///
/// `ticket` is the connection's admission slot; HELLO must arrive before `deadline` (which
/// the TLS handshake shared) and while the ticket is not evicted.
pub(crate) async fn serve<S>(
    stream: S,
    thumbprint: Option<CertThumbprint>,
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
    // Clients that send nothing and wait for nothing for this long are closed, so a client
    // that finished HELLO cannot hold its slot forever. Nodes of the cluster keep their links.
    let idle_timeout = match kind {
        PeerKind::Peer(_) => None,
        _ => shared.config.idle_timeout,
    };
    let idle = tokio::time::sleep(idle_timeout.unwrap_or(std::time::Duration::MAX / 4));
    tokio::pin!(idle);
    'conn: loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = &mut idle, if idle_timeout.is_some() => {
                if pending.available_permits() == MAX_PENDING_DURABLE {
                    result = Err(ConnectionError::Idle);
                    break;
                }
                // Still waiting on its own answers: not idle.
                idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout.unwrap_or_default());
            }
            Some((done, _permit)) = durable_rx.recv() => framed.feed(&done).await?,
            frame = framed.next() => match frame {
                None => break,
                Some(Ok(payload)) => {
                    if let Some(timeout) = idle_timeout {
                        idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                    }
                    let id = peek_request_id(&payload);
                    let answer = match Request::decode(payload) {
                        Ok(request) => shared.router.route(&kind, &mut session, request, max_frame),
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
