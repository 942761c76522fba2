//! Requests, responses and the typed errors that travel between client and node.
//!
//! Every frame payload starts with a request id (u64, big-endian), so one connection can
//! carry many requests in flight and the answers may come back in any order. All integers are
//! big-endian; byte strings carry their length in front (u16 for keys, cursors, tokens and
//! messages, u32 for values). docs/PROTOCOL.md gives the same layout as tables.
//!
//! Decoding never trusts a length or a count from the wire for allocation: keys and values
//! are zero-copy slices of the frame (already bounded by the frame limit), and lists grow only
//! as entries actually decode.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::frame::EncodeFrame;
use crate::HELLO_MAGIC;

/// Largest key, in bytes. Keys this long are already unusual; the bound keeps scan pages and
/// audit lines of predictable size.
pub const MAX_KEY_LEN: usize = 4096;

/// Largest token carried in a request envelope, in bytes; larger tokens are refused before
/// any parsing.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Most entries one SCAN page carries, whatever the client asks for; a SCAN with limit 0 asks
/// for this many. A client merging pages from several nodes uses it as its own page limit, so
/// a cluster page is never larger than a single node's.
pub const MAX_SCAN_PAGE: u32 = 1000;

/// Request envelope flag: a token follows the flags byte.
const FLAG_TOKEN: u8 = 0x01;
/// Request envelope flag: a [`Session`] (client id, sequence number) follows the token.
const FLAG_SESSION: u8 = 0x02;
/// Request envelope flag: the read may be served by any replica and may be stale.
const FLAG_STALE: u8 = 0x04;
/// Request envelope flag, SCAN only: keys and versions, no values.
const FLAG_KEYS_ONLY: u8 = 0x08;
/// Request envelope flag (protocol version 2): a token handle (u32) follows the flags, in
/// place of a token. Never together with [`FLAG_TOKEN`].
const FLAG_HANDLE: u8 = 0x10;
/// Every envelope flag this version knows.
const KNOWN_FLAGS: u8 = FLAG_TOKEN | FLAG_SESSION | FLAG_STALE | FLAG_KEYS_ONLY | FLAG_HANDLE;

/// Most token handles one connection holds at a time (protocol version 2): a proxy
/// multiplexing users registers one per user. A REGISTER_TOKEN past it is refused with
/// [`ErrorCode::TooManyHandles`] (after the node has dropped handles whose token expired),
/// so a connection pins at most this many tokens of at most [`MAX_TOKEN_LEN`] bytes each.
pub const MAX_HANDLES_PER_CONNECTION: usize = 64;

/// The first protocol version with token handles (REGISTER_TOKEN, the handle flag and the
/// TOKEN_HANDLE answer). A node answers them with `unknown_op` / `malformed` on a connection
/// that negotiated an older version.
pub const HANDLES_VERSION: u16 = 2;

/// Largest payload of one Raft message between nodes (AppendEntries, a vote, one snapshot
/// chunk), in bytes. Senders cut batches and snapshot chunks below it; receivers refuse larger.
pub const MAX_RAFT_PAYLOAD: usize = 4 * 1024 * 1024;

/// The operation a request asks for. The discriminant is the opcode on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// Version handshake; must be the first request on a connection.
    Hello = 0x00,
    /// Liveness check.
    Ping = 0x01,
    /// Read one key.
    Get = 0x02,
    /// Write one key unconditionally.
    Put = 0x03,
    /// Remove one key.
    Delete = 0x04,
    /// List keys under a prefix, a page at a time.
    Scan = 0x05,
    /// Write one key if its version matches.
    Cas = 0x06,
    /// Fetch the node's cluster map.
    ClusterMap = 0x07,
    /// A control-plane request (JSON): map changes, slot moves, status.
    Control = 0x08,
    /// Peer only: keys copied in during a slot move.
    Import = 0x09,
    /// Peer only: one Raft message for one replica group.
    Raft = 0x0a,
    /// Register a token on this connection and get a handle for it (protocol version 2).
    RegisterToken = 0x0b,
}

impl Op {
    /// Lower-case name, as used in logs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Ping => "ping",
            Op::Get => "get",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Scan => "scan",
            Op::Cas => "cas",
            Op::ClusterMap => "cluster_map",
            Op::Control => "control",
            Op::Import => "import",
            Op::Raft => "raft",
            Op::RegisterToken => "register_token",
        }
    }

    fn from_u8(byte: u8) -> Option<Op> {
        Some(match byte {
            0x00 => Op::Hello,
            0x01 => Op::Ping,
            0x02 => Op::Get,
            0x03 => Op::Put,
            0x04 => Op::Delete,
            0x05 => Op::Scan,
            0x06 => Op::Cas,
            0x07 => Op::ClusterMap,
            0x08 => Op::Control,
            0x09 => Op::Import,
            0x0a => Op::Raft,
            0x0b => Op::RegisterToken,
            _ => return None,
        })
    }
}

/// One request: an id chosen by the client, an optional bearer token, and the operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Echoed in the response so the client can match answers to questions.
    pub id: u64,
    /// Bearer token (a JWT) for nodes that check one per request.
    pub token: Option<Bytes>,
    /// A token handle this connection registered (REGISTER_TOKEN), in place of `token`
    /// (protocol version 2). Setting both is a client bug the node refuses as `malformed`.
    pub handle: Option<u32>,
    /// For writes: who sends it and its place in that client's sequence, so a write retried
    /// after a lost answer is applied once (docs/PROTOCOL.md, "Sessions").
    pub session: Option<Session>,
    /// For reads: how fresh the answer must be.
    pub consistency: Consistency,
    /// What to do.
    pub body: RequestBody,
}

impl Request {
    /// A request with no token, no session and linearizable consistency.
    pub fn new(id: u64, body: RequestBody) -> Request {
        Request {
            id,
            token: None,
            handle: None,
            session: None,
            consistency: Consistency::Linearizable,
            body,
        }
    }
}

/// A client session: the client's random id and the sequence number of this write. A node
/// that already applied `(client, seq)` answers with the first outcome instead of applying the
/// write again. A client numbers its writes from 1 and never reuses a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Session {
    /// Random, chosen once per client process (or per [`Session`]-keeping library handle).
    pub client: u64,
    /// This write's sequence number, 1 and up.
    pub seq: u64,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Consistency {
    /// The read sees every write acknowledged before it was sent: the shard's leader confirms
    /// its leadership with a quorum before answering (ReadIndex).
    #[default]
    Linearizable,
    /// Any replica answers from what it has applied, which may miss recent writes; it still
    /// answers when the shard has no quorum.
    Stale,
}

/// The operation-specific part of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// Opens a connection: the client offers the protocol versions it speaks.
    Hello {
        /// Lowest version the client accepts.
        min_version: u16,
        /// Highest version the client accepts.
        max_version: u16,
    },
    /// Answered with [`ResponseBody::Pong`].
    Ping,
    /// Read `key`.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write `value` under `key`.
    Put {
        /// The key.
        key: Bytes,
        /// The value, any bytes.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Keys starting with `prefix`, in byte order, after `cursor` when given.
    Scan {
        /// Only keys with this prefix.
        prefix: Bytes,
        /// At most this many entries in the page (the node may return fewer).
        limit: u32,
        /// Resume after this key: the `cursor` of the previous page.
        cursor: Option<Bytes>,
        /// Return keys and versions only: every value in the page is empty, and the node
        /// does not load them.
        keys_only: bool,
    },
    /// Write `value` under `key` only if the key's current version is `expect_version`
    /// (0: only if the key does not exist).
    Cas {
        /// The key.
        key: Bytes,
        /// The version the key must have now.
        expect_version: u64,
        /// The value to write.
        value: Bytes,
    },
    /// Answered with [`ResponseBody::Map`].
    ClusterMap,
    /// A [`crate::cluster::ControlRequest`] as JSON; answered with
    /// [`ResponseBody::Control`].
    Control {
        /// The JSON.
        json: Bytes,
    },
    /// Peer only: one Raft message (`rpc` names which) for replica group `group`, encoded by
    /// the node's Raft transport; at most [`MAX_RAFT_PAYLOAD`] bytes.
    Raft {
        /// The replica group (0 is the metadata group, n is shard n).
        group: u32,
        /// Which Raft RPC (append, vote, snapshot chunk); defined by the node.
        rpc: u8,
        /// The encoded message.
        payload: Bytes,
    },
    /// Verify `token` once and name it by a handle on this connection from now on
    /// (protocol version 2); answered with [`ResponseBody::TokenHandle`].
    RegisterToken {
        /// The bearer token, at most [`MAX_TOKEN_LEN`] bytes.
        token: Bytes,
    },
    /// Peer only: entries to store with their versions, and keys to remove, while slots move
    /// to this node.
    Import {
        /// Keys with the versions they had on the giving node.
        entries: Vec<ScanEntry>,
        /// Keys deleted on the giving node since they were copied.
        deleted: Vec<Bytes>,
    },
}

impl RequestBody {
    /// The opcode of this body.
    pub fn op(&self) -> Op {
        match self {
            RequestBody::Hello { .. } => Op::Hello,
            RequestBody::Ping => Op::Ping,
            RequestBody::Get { .. } => Op::Get,
            RequestBody::Put { .. } => Op::Put,
            RequestBody::Delete { .. } => Op::Delete,
            RequestBody::Scan { .. } => Op::Scan,
            RequestBody::Cas { .. } => Op::Cas,
            RequestBody::ClusterMap => Op::ClusterMap,
            RequestBody::Control { .. } => Op::Control,
            RequestBody::Import { .. } => Op::Import,
            RequestBody::Raft { .. } => Op::Raft,
            RequestBody::RegisterToken { .. } => Op::RegisterToken,
        }
    }

    /// The key a single-key operation addresses (what decides its hash slot).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            RequestBody::Get { key }
            | RequestBody::Put { key, .. }
            | RequestBody::Delete { key }
            | RequestBody::Cas { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// One entry of a scan page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEntry {
    /// The key.
    pub key: Bytes,
    /// Its version.
    pub version: u64,
    /// Its value.
    pub value: Bytes,
}

/// One response, naming the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the request this answers (0 when the request was too short to carry one).
    pub id: u64,
    /// The answer.
    pub body: ResponseBody,
}

/// The kind-specific part of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseBody {
    /// The handshake succeeded.
    HelloOk {
        /// The protocol version both sides now speak.
        version: u16,
        /// The node's frame limit: the client must not send larger frames.
        max_frame: u32,
        /// The node's name, for messages and logs.
        node: String,
        /// Where the node wants the token: the client sends it only where it is read.
        token: TokenPlacement,
    },
    /// Answer to PING.
    Pong,
    /// The key's current value.
    Value {
        /// Its version.
        version: u64,
        /// Its bytes.
        value: Bytes,
    },
    /// GET of a key that does not exist.
    NotFound,
    /// A PUT or CAS was applied (and, with sync durability, is on disk).
    Written {
        /// The key's new version.
        version: u64,
    },
    /// A DELETE was applied.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// A page of scan results.
    ScanPage {
        /// Entries in key order.
        entries: Vec<ScanEntry>,
        /// Pass this back to get the next page; `None` when the scan is complete.
        cursor: Option<Bytes>,
        /// Epoch of the cluster map the node filtered the page with: the page holds only keys
        /// of slots the node served under that map.
        epoch: u64,
    },
    /// A CAS found a different version; nothing was written.
    CasConflict {
        /// The key's current version (0: the key does not exist).
        current: u64,
    },
    /// The node's cluster map.
    Map {
        /// The map's epoch (also inside the JSON; here so a client can skip parsing).
        epoch: u64,
        /// A [`crate::cluster::ClusterMap`] as JSON.
        json: Bytes,
    },
    /// A [`crate::cluster::ControlResponse`] as JSON.
    Control {
        /// The JSON.
        json: Bytes,
    },
    /// The key's slot is served by another node: retry there. Nothing was done.
    Moved {
        /// The key's hash slot.
        slot: u16,
        /// Epoch of the map that says so; refresh a cached map older than this.
        epoch: u64,
        /// The node serving the slot.
        node: String,
        /// Its address.
        addr: String,
    },
    /// This node is a replica of the key's shard but not its leader: retry at the leader.
    /// Nothing was done.
    NotLeader {
        /// The shard (replica group) the key belongs to.
        shard: u32,
        /// Epoch of the map the node routed by.
        epoch: u64,
        /// The leader this node knows of, if any: its node id and address.
        leader: Option<(String, String)>,
    },
    /// Answer to a Raft message: the encoded reply.
    Raft {
        /// The encoded reply.
        payload: Bytes,
    },
    /// REGISTER_TOKEN verified the token: requests on this connection may name it by
    /// `handle` (protocol version 2).
    TokenHandle {
        /// The handle, local to this connection and never reused on it.
        handle: u32,
    },
    /// The request failed.
    Error(WireError),
}

/// Where a node reads tokens, announced in HELLO_OK. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPlacement {
    /// The node checks no tokens; the client sends none.
    None,
    /// In every request frame (stateless per-request authorization).
    PerRequest,
    /// Once, in HELLO; later requests carry none.
    PerConnection,
}

impl TokenPlacement {
    fn to_u8(self) -> u8 {
        match self {
            TokenPlacement::None => 0,
            TokenPlacement::PerRequest => 1,
            TokenPlacement::PerConnection => 2,
        }
    }

    fn from_u8(n: u8) -> Result<Self, DecodeError> {
        match n {
            0 => Ok(TokenPlacement::None),
            1 => Ok(TokenPlacement::PerRequest),
            2 => Ok(TokenPlacement::PerConnection),
            other => Err(DecodeError::UnknownFlags(other)),
        }
    }
}

/// A typed error that crosses the wire. The message is for people and never contains keys,
/// values or tokens: it may end up in logs on either side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct WireError {
    /// Machine-readable category.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// For [`ErrorCode::RateLimited`] and [`ErrorCode::Overloaded`] (on the wire only for
    /// those): how long the client should wait before sending again, in milliseconds.
    pub retry_after_ms: Option<u32>,
}

impl WireError {
    /// An error with `code` and a human-readable `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// A refusal the client may retry after `retry_after_ms` ([`ErrorCode::RateLimited`] or
    /// [`ErrorCode::Overloaded`]).
    pub fn retry_after(code: ErrorCode, message: impl Into<String>, retry_after_ms: u32) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: Some(retry_after_ms),
        }
    }
}

/// Error categories. The numbers are part of the protocol; unknown numbers from a newer peer
/// decode as [`ErrorCode::Other`] so old clients keep working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame payload could not be decoded (truncated field, bad length, trailing bytes).
    Malformed,
    /// The frame exceeded the node's limit; the node closes the connection.
    FrameTooLarge,
    /// The opcode is not one this node knows.
    UnknownOp,
    /// No protocol version in the client's range is spoken by the node.
    UnsupportedVersion,
    /// The first request on a connection was not HELLO, or HELLO was sent twice.
    HandshakeRequired,
    /// The key is longer than [`MAX_KEY_LEN`] or the token longer than [`MAX_TOKEN_LEN`].
    TooLarge,
    /// The request carried no valid credentials.
    Unauthenticated,
    /// The credentials do not allow this operation on this key.
    Forbidden,
    /// The node is shutting down and takes no new requests.
    ShuttingDown,
    /// The storage engine failed; the write may not have happened.
    Storage,
    /// Any other failure inside the node.
    Internal,
    /// The key's slot is being handed to another node and writes to it are paused for a
    /// moment: retry shortly. Nothing was done.
    TryAgain,
    /// The node has no usable route for the request (it is not in the cluster map, or the
    /// map is being changed by another request).
    ClusterState,
    /// The key's shard cannot commit writes now: fewer than a quorum of its replicas are
    /// reachable. Nothing was written (or, after a timeout, the outcome is unknown; a retry
    /// with the same session is applied at most once). Stale reads are still served.
    Unavailable,
    /// The caller (its token's `sub`, or its client certificate without a token) sent more
    /// requests or bytes per second than the node's per-identity limit allows. Nothing was
    /// done; the error carries how long to wait.
    RateLimited,
    /// The node has more work in flight than it takes on: it sheds new connections (HELLO)
    /// while it serves the requests of those already established. Nothing was done; the
    /// error carries how long to wait.
    Overloaded,
    /// REGISTER_TOKEN on a connection that already holds
    /// [`MAX_HANDLES_PER_CONNECTION`] live handles. Nothing was registered; the connection
    /// is kept.
    TooManyHandles,
    /// The request named a token handle this connection never registered (or one dropped
    /// because its token expired). Handles are local to the connection that registered them.
    UnknownHandle,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// Whether an ERROR with this code carries a retry-after (u32 milliseconds) after its
    /// message on the wire.
    pub fn carries_retry_after(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Overloaded)
    }

    /// The number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnknownOp => 3,
            ErrorCode::UnsupportedVersion => 4,
            ErrorCode::HandshakeRequired => 5,
            ErrorCode::TooLarge => 6,
            ErrorCode::Unauthenticated => 7,
            ErrorCode::Forbidden => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::Storage => 10,
            ErrorCode::Internal => 11,
            ErrorCode::TryAgain => 12,
            ErrorCode::ClusterState => 13,
            ErrorCode::Unavailable => 14,
            ErrorCode::RateLimited => 15,
            ErrorCode::Overloaded => 16,
            ErrorCode::TooManyHandles => 17,
            ErrorCode::UnknownHandle => 18,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a number on the wire.
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnknownOp,
            4 => ErrorCode::UnsupportedVersion,
            5 => ErrorCode::HandshakeRequired,
            6 => ErrorCode::TooLarge,
            7 => ErrorCode::Unauthenticated,
            8 => ErrorCode::Forbidden,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::Storage,
            11 => ErrorCode::Internal,
            12 => ErrorCode::TryAgain,
            13 => ErrorCode::ClusterState,
            14 => ErrorCode::Unavailable,
            15 => ErrorCode::RateLimited,
            16 => ErrorCode::Overloaded,
            17 => ErrorCode::TooManyHandles,
            18 => ErrorCode::UnknownHandle,
            n => ErrorCode::Other(n),
        }
    }

    /// Lower-case name, as in docs/PROTOCOL.md.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Storage => "storage",
            ErrorCode::Internal => "internal",
            ErrorCode::TryAgain => "try_again",
            ErrorCode::ClusterState => "cluster_state",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TooManyHandles => "too_many_handles",
            ErrorCode::UnknownHandle => "unknown_handle",
            ErrorCode::Other(_) => "other",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Other(n) => write!(f, "error {n}"),
            code => f.write_str(code.as_str()),
        }
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended inside the named field.
    #[error("payload ends inside field `{0}`")]
    Truncated(&'static str),
    /// The payload had bytes left over after the last field.
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    /// The opcode is unknown.
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOp(u8),
    /// The response kind is unknown.
    #[error("unknown response kind 0x{0:02x}")]
    UnknownKind(u8),
    /// HELLO did not start with the skv magic.
    #[error("HELLO without the SKV magic: not an skv client")]
    BadMagic,
    /// A key or cursor exceeds [`MAX_KEY_LEN`].
    #[error("key of {0} bytes exceeds the {MAX_KEY_LEN}-byte limit")]
    KeyTooLarge(usize),
    /// A token exceeds [`MAX_TOKEN_LEN`].
    #[error("token of {0} bytes exceeds the {MAX_TOKEN_LEN}-byte limit")]
    TokenTooLarge(usize),
    /// A Raft message exceeds [`MAX_RAFT_PAYLOAD`].
    #[error("raft message of {0} bytes exceeds the {MAX_RAFT_PAYLOAD}-byte limit")]
    RaftTooLarge(usize),
    /// A string field is not UTF-8.
    #[error("field `{0}` is not UTF-8")]
    InvalidUtf8(&'static str),
    /// Unknown flag bits were set.
    #[error("unknown flags 0x{0:02x}")]
    UnknownFlags(u8),
}

impl DecodeError {
    /// The error code a node answers with for this decoding failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownOp(_) => ErrorCode::UnknownOp,
            DecodeError::KeyTooLarge(_) | DecodeError::RaftTooLarge(_) => ErrorCode::TooLarge,
            // An oversized token is an authentication failure, refused before any parsing.
            DecodeError::TokenTooLarge(_) => ErrorCode::Unauthenticated,
            DecodeError::BadMagic => ErrorCode::HandshakeRequired,
            _ => ErrorCode::Malformed,
        }
    }
}

/// The request id at the front of a payload, or 0 when the payload is too short to hold one.
/// Lets a node address its error to the right request even when the rest is garbage.
pub fn peek_request_id(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

// ---- encoding -------------------------------------------------------------------------------

fn put_short_bytes(dst: &mut BytesMut, b: &[u8]) {
    // Callers keep short fields within u16 (keys, cursors, tokens, messages are all bounded
    // well below 64 KiB); truncating instead of panicking keeps the encoder total.
    let len = b.len().min(u16::MAX as usize);
    dst.put_u16(len as u16);
    dst.extend_from_slice(&b[..len]);
}

fn put_long_bytes(dst: &mut BytesMut, b: &[u8]) {
    let len = b.len().min(u32::MAX as usize);
    dst.put_u32(len as u32);
    dst.extend_from_slice(&b[..len]);
}

fn put_optional_short(dst: &mut BytesMut, b: Option<&Bytes>) {
    match b {
        Some(b) => {
            dst.put_u8(1);
            put_short_bytes(dst, b);
        }
        None => dst.put_u8(0),
    }
}

impl EncodeFrame for Request {
    fn encode_payload(&self, dst: &mut BytesMut) {
        dst.put_u64(self.id);
        dst.put_u8(self.body.op() as u8);
        let mut flags = 0;
        if self.token.is_some() {
            flags |= FLAG_TOKEN;
        }
        if self.handle.is_some() {
            flags |= FLAG_HANDLE;
        }
        if self.session.is_some() {
            flags |= FLAG_SESSION;
        }
        if self.consistency == Consistency::Stale {
            flags |= FLAG_STALE;
        }
        if matches!(
            self.body,
            RequestBody::Scan {
                keys_only: true,
                ..
            }
        ) {
            flags |= FLAG_KEYS_ONLY;
        }
        dst.put_u8(flags);
        if let Some(token) = &self.token {
            put_short_bytes(dst, token);
        }
        if let Some(handle) = self.handle {
            dst.put_u32(handle);
        }
        if let Some(session) = &self.session {
            dst.put_u64(session.client);
            dst.put_u64(session.seq);
        }
        match &self.body {
            RequestBody::Hello {
                min_version,
                max_version,
            } => {
                dst.extend_from_slice(&HELLO_MAGIC);
                dst.put_u16(*min_version);
                dst.put_u16(*max_version);
            }
            RequestBody::Ping => {}
            RequestBody::Get { key } | RequestBody::Delete { key } => put_short_bytes(dst, key),
            RequestBody::Put { key, value } => {
                put_short_bytes(dst, key);
                put_long_bytes(dst, value);
            }
            RequestBody::Scan {
                prefix,
                limit,
                cursor,
                keys_only,
            } => {
                put_short_bytes(dst, prefix);
                dst.put_u32(*limit);
                put_optional_short(dst, cursor.as_ref());
                // The keys-only flag travels in the envelope's flags byte.
                let _ = keys_only;
            }
            RequestBody::Cas {
                key,
                expect_version,
                value,
            } => {
                put_short_bytes(dst, key);
                dst.put_u64(*expect_version);
                put_long_bytes(dst, value);
            }
            RequestBody::ClusterMap => {}
            RequestBody::Control { json } => put_long_bytes(dst, json),
            RequestBody::Raft {
                group,
                rpc,
                payload,
            } => {
                dst.put_u32(*group);
                dst.put_u8(*rpc);
                put_long_bytes(dst, payload);
            }
            RequestBody::RegisterToken { token } => put_short_bytes(dst, token),
            RequestBody::Import { entries, deleted } => {
                put_entries(dst, entries);
                dst.put_u32(deleted.len().min(u32::MAX as usize) as u32);
                for key in deleted {
                    put_short_bytes(dst, key);
                }
            }
        }
    }
}

fn put_entries(dst: &mut BytesMut, entries: &[ScanEntry]) {
    dst.put_u32(entries.len().min(u32::MAX as usize) as u32);
    for entry in entries {
        put_short_bytes(dst, &entry.key);
        dst.put_u64(entry.version);
        put_long_bytes(dst, &entry.value);
    }
}

/// Response kinds on the wire.
mod kind {
    pub(super) const HELLO_OK: u8 = 0x00;
    pub(super) const PONG: u8 = 0x01;
    pub(super) const VALUE: u8 = 0x02;
    pub(super) const NOT_FOUND: u8 = 0x03;
    pub(super) const WRITTEN: u8 = 0x04;
    pub(super) const DELETED: u8 = 0x05;
    pub(super) const SCAN_PAGE: u8 = 0x06;
    pub(super) const CAS_CONFLICT: u8 = 0x07;
    pub(super) const MAP: u8 = 0x08;
    pub(super) const CONTROL: u8 = 0x09;
    pub(super) const MOVED: u8 = 0x0a;
    pub(super) const NOT_LEADER: u8 = 0x0b;
    pub(super) const RAFT: u8 = 0x0c;
    pub(super) const TOKEN_HANDLE: u8 = 0x0d;
    pub(super) const ERROR: u8 = 0xff;
}

impl EncodeFrame for Response {
    fn encode_payload(&self, dst: &mut BytesMut) {
        dst.put_u64(self.id);
        match &self.body {
            ResponseBody::HelloOk {
                version,
                max_frame,
                node,
                token,
            } => {
                dst.put_u8(kind::HELLO_OK);
                dst.put_u16(*version);
                dst.put_u32(*max_frame);
                put_short_bytes(dst, node.as_bytes());
                dst.put_u8(token.to_u8());
            }
            ResponseBody::Pong => dst.put_u8(kind::PONG),
            ResponseBody::Value { version, value } => {
                dst.put_u8(kind::VALUE);
                dst.put_u64(*version);
                put_long_bytes(dst, value);
            }
            ResponseBody::NotFound => dst.put_u8(kind::NOT_FOUND),
            ResponseBody::Written { version } => {
                dst.put_u8(kind::WRITTEN);
                dst.put_u64(*version);
            }
            ResponseBody::Deleted { existed } => {
                dst.put_u8(kind::DELETED);
                dst.put_u8(u8::from(*existed));
            }
            ResponseBody::ScanPage {
                entries,
                cursor,
                epoch,
            } => {
                dst.put_u8(kind::SCAN_PAGE);
                put_entries(dst, entries);
                put_optional_short(dst, cursor.as_ref());
                dst.put_u64(*epoch);
            }
            ResponseBody::Map { epoch, json } => {
                dst.put_u8(kind::MAP);
                dst.put_u64(*epoch);
                put_long_bytes(dst, json);
            }
            ResponseBody::Control { json } => {
                dst.put_u8(kind::CONTROL);
                put_long_bytes(dst, json);
            }
            ResponseBody::Moved {
                slot,
                epoch,
                node,
                addr,
            } => {
                dst.put_u8(kind::MOVED);
                dst.put_u16(*slot);
                dst.put_u64(*epoch);
                put_short_bytes(dst, node.as_bytes());
                put_short_bytes(dst, addr.as_bytes());
            }
            ResponseBody::CasConflict { current } => {
                dst.put_u8(kind::CAS_CONFLICT);
                dst.put_u64(*current);
            }
            ResponseBody::NotLeader {
                shard,
                epoch,
                leader,
            } => {
                dst.put_u8(kind::NOT_LEADER);
                dst.put_u32(*shard);
                dst.put_u64(*epoch);
                match leader {
                    Some((node, addr)) => {
                        dst.put_u8(1);
                        put_short_bytes(dst, node.as_bytes());
                        put_short_bytes(dst, addr.as_bytes());
                    }
                    None => dst.put_u8(0),
                }
            }
            ResponseBody::Raft { payload } => {
                dst.put_u8(kind::RAFT);
                put_long_bytes(dst, payload);
            }
            ResponseBody::TokenHandle { handle } => {
                dst.put_u8(kind::TOKEN_HANDLE);
                dst.put_u32(*handle);
            }
            ResponseBody::Error(err) => {
                dst.put_u8(kind::ERROR);
                dst.put_u16(err.code.to_u16());
                put_short_bytes(dst, err.message.as_bytes());
                if err.code.carries_retry_after() {
                    dst.put_u32(err.retry_after_ms.unwrap_or(0));
                }
            }
        }
    }
}

/// Encoded size of a scan entry, for nodes that fill a page up to the frame limit.
pub fn scan_entry_wire_len(key_len: usize, value_len: usize) -> usize {
    2 + key_len + 8 + 4 + value_len
}

/// Bytes a SCAN_PAGE response spends outside its entries, cursor included, for a key-sized
/// cursor.
pub const SCAN_PAGE_OVERHEAD: usize = 8 + 1 + 4 + 1 + 2 + MAX_KEY_LEN + 8;

// ---- decoding -------------------------------------------------------------------------------

/// A cursor over a frame payload whose reads fail with [`DecodeError::Truncated`] instead of
/// panicking, and hand out zero-copy slices.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize, field: &'static str) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(DecodeError::Truncated(field))
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.need(1, field)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.need(2, field)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.need(4, field)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.need(8, field)?;
        Ok(self.buf.get_u64())
    }

    fn bytes(&mut self, len: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        self.need(len, field)?;
        Ok(self.buf.split_to(len))
    }

    fn short_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u16(field)? as usize;
        self.bytes(len, field)
    }

    fn long_bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        self.bytes(len, field)
    }

    fn token(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let token = self.short_bytes(field)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(DecodeError::TokenTooLarge(token.len()));
        }
        Ok(token)
    }

    fn key(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let key = self.short_bytes(field)?;
        if key.len() > MAX_KEY_LEN {
            return Err(DecodeError::KeyTooLarge(key.len()));
        }
        Ok(key)
    }

    fn optional_key(&mut self, field: &'static str) -> Result<Option<Bytes>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => self.key(field).map(Some),
            other => Err(DecodeError::UnknownFlags(other)),
        }
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let raw = self.short_bytes(field)?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn entries(&mut self) -> Result<Vec<ScanEntry>, DecodeError> {
        let count = self.u32("entry count")?;
        // Grow as entries decode; a lying count fails on truncation instead of reserving
        // memory up front.
        let mut entries = Vec::new();
        for _ in 0..count {
            entries.push(ScanEntry {
                key: self.key("entry key")?,
                version: self.u64("entry version")?,
                value: self.long_bytes("entry value")?,
            });
        }
        Ok(entries)
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.buf.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

impl Request {
    /// Decode a frame payload. The returned keys and values share the payload's memory.
    pub fn decode(payload: Bytes) -> Result<Request, DecodeError> {
        let mut r = Reader { buf: payload };
        let id = r.u64("request id")?;
        let opcode = r.u8("opcode")?;
        let flags = r.u8("flags")?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        // A token and a handle are two ways to say who sends the request: one or neither.
        if flags & FLAG_TOKEN != 0 && flags & FLAG_HANDLE != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let token = if flags & FLAG_TOKEN != 0 {
            Some(r.token("token")?)
        } else {
            None
        };
        let handle = if flags & FLAG_HANDLE != 0 {
            Some(r.u32("handle")?)
        } else {
            None
        };
        let session = if flags & FLAG_SESSION != 0 {
            Some(Session {
                client: r.u64("session client")?,
                seq: r.u64("session seq")?,
            })
        } else {
            None
        };
        let consistency = if flags & FLAG_STALE != 0 {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        let op = Op::from_u8(opcode).ok_or(DecodeError::UnknownOp(opcode))?;
        // Keys-only means something only to SCAN; elsewhere it is a client bug, not a no-op.
        if flags & FLAG_KEYS_ONLY != 0 && op != Op::Scan {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let body = match op {
            Op::Hello => {
                let magic = r.bytes(HELLO_MAGIC.len(), "magic")?;
                if magic[..] != HELLO_MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                RequestBody::Hello {
                    min_version: r.u16("min version")?,
                    max_version: r.u16("max version")?,
                }
            }
            Op::Ping => RequestBody::Ping,
            Op::Get => RequestBody::Get { key: r.key("key")? },
            Op::Delete => RequestBody::Delete { key: r.key("key")? },
            Op::Put => RequestBody::Put {
                key: r.key("key")?,
                value: r.long_bytes("value")?,
            },
            Op::Scan => RequestBody::Scan {
                prefix: r.key("prefix")?,
                limit: r.u32("limit")?,
                cursor: r.optional_key("cursor")?,
                keys_only: flags & FLAG_KEYS_ONLY != 0,
            },
            Op::Cas => RequestBody::Cas {
                key: r.key("key")?,
                expect_version: r.u64("expect version")?,
                value: r.long_bytes("value")?,
            },
            Op::ClusterMap => RequestBody::ClusterMap,
            Op::Control => RequestBody::Control {
                json: r.long_bytes("json")?,
            },
            Op::Raft => {
                let group = r.u32("group")?;
                let rpc = r.u8("rpc")?;
                let payload = r.long_bytes("raft payload")?;
                if payload.len() > MAX_RAFT_PAYLOAD {
                    return Err(DecodeError::RaftTooLarge(payload.len()));
                }
                RequestBody::Raft {
                    group,
                    rpc,
                    payload,
                }
            }
            Op::RegisterToken => RequestBody::RegisterToken {
                token: r.token("registered token")?,
            },
            Op::Import => {
                let entries = r.entries()?;
                let count = r.u32("deleted count")?;
                let mut deleted = Vec::new();
                for _ in 0..count {
                    deleted.push(r.key("deleted key")?);
                }
                RequestBody::Import { entries, deleted }
            }
        };
        r.finish()?;
        Ok(Request {
            id,
            token,
            handle,
            session,
            consistency,
            body,
        })
    }
}

impl Response {
    /// Decode a frame payload.
    pub fn decode(payload: Bytes) -> Result<Response, DecodeError> {
        let mut r = Reader { buf: payload };
        let id = r.u64("request id")?;
        let kind = r.u8("kind")?;
        let body = match kind {
            kind::HELLO_OK => ResponseBody::HelloOk {
                version: r.u16("version")?,
                max_frame: r.u32("max frame")?,
                node: r.string("node")?,
                token: TokenPlacement::from_u8(r.u8("token placement")?)?,
            },
            kind::PONG => ResponseBody::Pong,
            kind::VALUE => ResponseBody::Value {
                version: r.u64("version")?,
                value: r.long_bytes("value")?,
            },
            kind::NOT_FOUND => ResponseBody::NotFound,
            kind::WRITTEN => ResponseBody::Written {
                version: r.u64("version")?,
            },
            // Strictly 0 or 1, so every accepted payload has exactly one encoding.
            kind::DELETED => ResponseBody::Deleted {
                existed: match r.u8("existed")? {
                    0 => false,
                    1 => true,
                    other => return Err(DecodeError::UnknownFlags(other)),
                },
            },
            kind::SCAN_PAGE => ResponseBody::ScanPage {
                entries: r.entries()?,
                cursor: r.optional_key("cursor")?,
                epoch: r.u64("epoch")?,
            },
            kind::MAP => ResponseBody::Map {
                epoch: r.u64("epoch")?,
                json: r.long_bytes("map")?,
            },
            kind::CONTROL => ResponseBody::Control {
                json: r.long_bytes("json")?,
            },
            kind::MOVED => ResponseBody::Moved {
                slot: r.u16("slot")?,
                epoch: r.u64("epoch")?,
                node: r.string("node")?,
                addr: r.string("addr")?,
            },
            kind::CAS_CONFLICT => ResponseBody::CasConflict {
                current: r.u64("current version")?,
            },
            kind::NOT_LEADER => ResponseBody::NotLeader {
                shard: r.u32("shard")?,
                epoch: r.u64("epoch")?,
                leader: match r.u8("leader flag")? {
                    0 => None,
                    1 => Some((r.string("leader")?, r.string("leader addr")?)),
                    other => return Err(DecodeError::UnknownFlags(other)),
                },
            },
            kind::RAFT => ResponseBody::Raft {
                payload: r.long_bytes("raft payload")?,
            },
            kind::TOKEN_HANDLE => ResponseBody::TokenHandle {
                handle: r.u32("handle")?,
            },
            kind::ERROR => {
                let code = ErrorCode::from_u16(r.u16("error code")?);
                let message = r.string("error message")?;
                let retry_after_ms = if code.carries_retry_after() {
                    Some(r.u32("retry after")?)
                } else {
                    None
                };
                ResponseBody::Error(WireError {
                    code,
                    message,
                    retry_after_ms,
                })
            }
            other => return Err(DecodeError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(Response { id, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload<M: EncodeFrame>(m: &M) -> Bytes {
        let mut buf = BytesMut::new();
        m.encode_payload(&mut buf);
        buf.freeze()
    }

    fn b(s: &'static [u8]) -> Bytes {
        Bytes::from_static(s)
    }

    #[test]
    fn every_request_round_trips() {
        let bodies = vec![
            RequestBody::Hello {
                min_version: 1,
                max_version: 3,
            },
            RequestBody::Ping,
            RequestBody::Get { key: b(b"k") },
            RequestBody::Put {
                key: b(b"k\x00\xff"),
                value: b(b"\x00binary\xff"),
            },
            RequestBody::Delete { key: b(b"") },
            RequestBody::Scan {
                prefix: b(b"users/"),
                limit: 10,
                cursor: Some(b(b"users/bob")),
                keys_only: false,
            },
            RequestBody::Scan {
                prefix: b(b""),
                limit: 0,
                cursor: None,
                keys_only: true,
            },
            RequestBody::Cas {
                key: b(b"k"),
                expect_version: 0,
                value: b(b"v"),
            },
            RequestBody::ClusterMap,
            RequestBody::Control {
                json: b(b"{\"cmd\":\"status\"}"),
            },
            RequestBody::Import {
                entries: vec![ScanEntry {
                    key: b(b"a"),
                    version: 7,
                    value: b(b"x"),
                }],
                deleted: vec![b(b"gone")],
            },
            RequestBody::RegisterToken {
                token: b(b"header.claims.sig"),
            },
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            for (token, handle) in [
                (None, None),
                (Some(b(b"header.claims.sig")), None),
                (None, Some(7)),
            ] {
                let req = Request {
                    id: i as u64 * 7919,
                    token,
                    handle,
                    session: None,
                    consistency: Consistency::Linearizable,
                    body: body.clone(),
                };
                assert_eq!(Request::decode(payload(&req)).unwrap(), req);
            }
        }
    }

    #[test]
    fn every_response_round_trips() {
        let bodies = vec![
            ResponseBody::HelloOk {
                version: 1,
                max_frame: 1 << 20,
                node: "n1".into(),
                token: TokenPlacement::PerConnection,
            },
            ResponseBody::Pong,
            ResponseBody::Value {
                version: 9,
                value: b(b"v"),
            },
            ResponseBody::NotFound,
            ResponseBody::Written { version: u64::MAX },
            ResponseBody::Deleted { existed: true },
            ResponseBody::ScanPage {
                entries: vec![ScanEntry {
                    key: b(b"a"),
                    version: 1,
                    value: b(b"x"),
                }],
                cursor: Some(b(b"a")),
                epoch: 3,
            },
            ResponseBody::CasConflict { current: 4 },
            ResponseBody::Map {
                epoch: 2,
                json: b(b"{}"),
            },
            ResponseBody::Control { json: b(b"{}") },
            ResponseBody::Moved {
                slot: 16383,
                epoch: 5,
                node: "n2".into(),
                addr: "127.0.0.1:7402".into(),
            },
            ResponseBody::TokenHandle { handle: u32::MAX },
            ResponseBody::Error(WireError::new(ErrorCode::Forbidden, "no")),
            ResponseBody::Error(WireError::new(ErrorCode::UnknownHandle, "who?")),
            ResponseBody::Error(WireError::new(ErrorCode::Other(999), "future")),
        ];
        for body in bodies {
            let resp = Response { id: 42, body };
            assert_eq!(Response::decode(payload(&resp)).unwrap(), resp);
        }
    }

    #[test]
    fn decoding_failures_are_typed() {
        let mut raw = BytesMut::new();
        raw.put_u64(5);
        raw.put_u8(0x7f);
        raw.put_u8(0);
        assert_eq!(
            Request::decode(raw.clone().freeze()),
            Err(DecodeError::UnknownOp(0x7f))
        );
        assert_eq!(peek_request_id(&raw), 5);
        assert_eq!(peek_request_id(b"abc"), 0);

        let get = payload(&Request {
            id: 1,
            token: None,
            handle: None,
            session: None,
            consistency: Consistency::Linearizable,
            body: RequestBody::Get { key: b(b"key") },
        });
        assert_eq!(
            Request::decode(get.slice(..get.len() - 1)),
            Err(DecodeError::Truncated("key"))
        );
        let mut long = BytesMut::from(&get[..]);
        long.put_u8(0);
        assert_eq!(
            Request::decode(long.freeze()),
            Err(DecodeError::TrailingBytes(1))
        );

        let huge_key = Bytes::from(vec![b'k'; MAX_KEY_LEN + 1]);
        let too_long = payload(&Request {
            id: 1,
            token: None,
            handle: None,
            session: None,
            consistency: Consistency::Linearizable,
            body: RequestBody::Get { key: huge_key },
        });
        assert_eq!(
            Request::decode(too_long),
            Err(DecodeError::KeyTooLarge(MAX_KEY_LEN + 1))
        );
    }

    #[test]
    fn a_token_and_a_handle_together_are_refused() {
        let req = Request {
            token: Some(b(b"a.b.c")),
            handle: Some(1),
            ..Request::new(1, RequestBody::Get { key: b(b"k") })
        };
        assert!(matches!(
            Request::decode(payload(&req)),
            Err(DecodeError::UnknownFlags(f)) if f == FLAG_TOKEN | FLAG_HANDLE
        ));
        // A handle flag without its four bytes is truncated, not read past the end.
        let mut raw = BytesMut::new();
        raw.put_u64(1);
        raw.put_u8(Op::Get as u8);
        raw.put_u8(FLAG_HANDLE);
        raw.put_u16(0);
        assert_eq!(
            Request::decode(raw.freeze()),
            Err(DecodeError::Truncated("handle"))
        );
        // A registered token is bounded like an envelope token.
        let huge = payload(&Request::new(
            1,
            RequestBody::RegisterToken {
                token: Bytes::from(vec![b't'; MAX_TOKEN_LEN + 1]),
            },
        ));
        assert_eq!(
            Request::decode(huge),
            Err(DecodeError::TokenTooLarge(MAX_TOKEN_LEN + 1))
        );
    }

    #[test]
    fn deleted_takes_only_0_or_1() {
        let mut raw = BytesMut::new();
        raw.put_u64(1);
        raw.put_u8(kind::DELETED);
        raw.put_u8(2);
        assert_eq!(
            Response::decode(raw.freeze()),
            Err(DecodeError::UnknownFlags(2))
        );
    }

    #[test]
    fn scan_page_with_lying_count_fails_without_reserving() {
        let mut raw = BytesMut::new();
        raw.put_u64(1);
        raw.put_u8(kind::SCAN_PAGE);
        raw.put_u32(u32::MAX);
        assert_eq!(
            Response::decode(raw.freeze()),
            Err(DecodeError::Truncated("entry key"))
        );
    }
}
