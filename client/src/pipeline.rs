//! A connection without a driver: the caller writes requests and reads answers on the stream
//! itself.
//!
//! [`crate::Connection`] lets many tasks share a socket: each request travels to a driver
//! task through a channel, waits on a oneshot under a timer of its own, and is matched to its
//! answer through a map. That is what a client sharing one connection needs, and it costs a
//! few allocations, wake-ups and timer updates per request. A load generator that wants to
//! find a node's ceiling needs none of it: one task owns the connection, keeps a window of
//! requests outstanding, and must cost the node's machine as little as it can (as
//! redis-benchmark does for Redis). [`Pipeline`] is that: the same TLS policy, HELLO and
//! token registration as [`crate::Connection`], then requests fed to the stream with ids the
//! caller chooses and answers read back as they arrive, no task, channel or timer in between.
//!
//! It does not follow redirections or retry: MOVED and NOT_LEADER come back as the errors
//! they are ([`answer_of`]), so it suits a node that serves every slot.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::{SinkExt, StreamExt};
use skv_proto::{FrameCodec, FrameError, Request, RequestBody, Response, ResponseBody};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

use crate::config::{tls_config, ConnectOptions};
use crate::connection::{self, Credential};
use crate::ClientError;

/// The first id a caller may give a request: 0 was HELLO's and 1 REGISTER_TOKEN's, and an
/// answer with id 0 is the node speaking about the connection itself.
pub const FIRST_REQUEST_ID: u64 = 2;

/// An answer read back: the request's id, and its body through [`answer_of`] (a refusal of
/// that one request is an `Err` here, not the connection's end).
pub type Answer = (u64, Result<ResponseBody, ClientError>);

/// One connection to one node, driven by its owner. See the module docs.
pub struct Pipeline {
    framed: Framed<Either<TcpStream, TlsStream<TcpStream>>, FrameCodec>,
    credential: Credential,
    addr: String,
    ca: Option<String>,
    node: String,
    resumed: bool,
}

impl std::fmt::Debug for Pipeline {
    // Not derived: the credential may be the token itself.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("addr", &self.addr)
            .field("node", &self.node)
            .field("resumed", &self.resumed)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// Connect to `opts.addr`: TCP, TLS (unless plaintext), HELLO and, where the node takes
    /// them, the token's registration, all under `opts.connect_timeout`.
    pub async fn connect(opts: &ConnectOptions) -> Result<Pipeline, ClientError> {
        let timeout = opts.connect_timeout;
        let open = async {
            let tls = tls_config(&opts.security)?;
            let secured = connection::secure(opts, tls).await?;
            let greeted = connection::hello(secured.stream, opts, secured.ca.as_deref(), 0).await?;
            Ok(Pipeline {
                framed: greeted.framed,
                credential: greeted.credential,
                addr: opts.addr.clone(),
                ca: secured.ca,
                node: greeted.node,
                resumed: secured.resumed,
            })
        };
        match tokio::time::timeout(timeout, open).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                addr: opts.addr.clone(),
                after: timeout,
                waiting_for: "connect, TLS handshake and HELLO",
            }),
        }
    }

    /// The node's name, as it gave it at HELLO.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the TLS handshake resumed an earlier session of the same client config.
    pub fn resumed_tls(&self) -> bool {
        self.resumed
    }

    /// Queue a request with id `id` (at least [`FIRST_REQUEST_ID`], and not one still
    /// outstanding: answers are matched by it) in the write buffer. Nothing is sent until
    /// [`Pipeline::flush`], unless the buffer has grown past the codec's high-water mark.
    pub async fn feed(&mut self, id: u64, body: RequestBody) -> Result<(), ClientError> {
        let (token, handle) = match &self.credential {
            Credential::Token(token) => (token.clone(), None),
            Credential::Handle(handle) => (None, Some(*handle)),
        };
        let request = Request {
            id,
            token,
            handle,
            session: None,
            consistency: skv_proto::Consistency::Linearizable,
            body,
        };
        match self.framed.feed(&request).await {
            Ok(()) => Ok(()),
            Err(FrameError::TooLarge { len, max }) => Err(ClientError::Config(format!(
                "request of {len} bytes exceeds the node's {max}-byte frame limit"
            ))),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        SinkExt::<&Request>::flush(&mut self.framed)
            .await
            .map_err(|e| self.broken(e))?;
        // Each batch is written into the lines the last one warmed (skv_proto::rewind).
        skv_proto::rewind(self.framed.write_buffer_mut());
        Ok(())
    }

    /// The next answer, waiting for it: `(id, body)`, the body through [`answer_of`]. An
    /// `Err` is the connection's end (closed, undecodable, or refused as a whole by the
    /// node); the pipeline is of no further use after it.
    pub async fn answer(&mut self) -> Result<Answer, ClientError> {
        // With nothing buffered (between two batches), the next answers arrive in the lines
        // the last batch's warmed (skv_proto::rewind).
        skv_proto::rewind(self.framed.read_buffer_mut());
        let frame = self.framed.next().await;
        self.decode(frame)
    }

    /// An answer already received, without waiting: `None` when none is buffered (or the
    /// socket has nothing ready). Draining these after [`Pipeline::answer`] lets the caller
    /// answer a whole batch before it writes again.
    pub fn buffered_answer(&mut self) -> Option<Result<Answer, ClientError>> {
        // Polled once with a waker that does nothing: the next `answer` polls again with the
        // task's own, so no wake-up is lost.
        let mut cx = Context::from_waker(Waker::noop());
        let mut next = self.framed.next();
        match Pin::new(&mut next).poll(&mut cx) {
            Poll::Ready(frame) => Some(self.decode(frame)),
            Poll::Pending => None,
        }
    }

    fn decode(
        &self,
        frame: Option<Result<bytes::Bytes, FrameError>>,
    ) -> Result<Answer, ClientError> {
        let payload = match frame {
            Some(Ok(payload)) => payload,
            Some(Err(e)) => return Err(self.broken(e)),
            None => {
                return Err(ClientError::Disconnected {
                    addr: self.addr.clone(),
                    reason: "the node closed the connection".into(),
                })
            }
        };
        let response = Response::decode(payload).map_err(|e| {
            ClientError::Protocol(format!("undecodable answer from {}: {e}", self.addr))
        })?;
        if response.id == 0 {
            // The node refused something about the connection itself.
            return Err(match response.body {
                ResponseBody::Error(err) => ClientError::from_wire(err),
                other => ClientError::Protocol(format!(
                    "{} answered id 0 (HELLO's) with {other:?}",
                    self.addr
                )),
            });
        }
        Ok((response.id, connection::answer_of(response.body)))
    }

    fn broken(&self, e: FrameError) -> ClientError {
        connection::frame_error(&self.addr, e, self.ca.as_deref())
    }
}
