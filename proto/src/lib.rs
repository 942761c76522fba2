//! Wire types and codec shared by the skv client and server.
//!
//! This crate owns everything both ends must agree on byte for byte: the frame format and
//! its size limit ([`frame`]), the requests, responses and typed errors that travel inside
//! frames ([`message`]), and the protocol version. `docs/PROTOCOL.md` is the specification;
//! the code here is its reference implementation and the two must change together.
//!
//! The wire format only: a token travels here as opaque bytes; what it claims and how it is
//! checked belong to skv-token (certs/token).

#![forbid(unsafe_code)]

pub mod cluster;
pub mod frame;
pub mod message;

pub use cluster::{hash_slot, ClusterMap, ControlRequest, ControlResponse, SlotRange, SLOT_COUNT};
pub use frame::{
    encode_frame, rewind, EncodeFrame, FrameCodec, FrameError, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN,
    MIN_MAX_FRAME, REWIND_BYTES,
};
pub use message::{
    peek_request_id, scan_entry_wire_len, Consistency, DecodeError, ErrorCode, Op, Request,
    RequestBody, Response, ResponseBody, ScanEntry, Session, TokenPlacement, WireError,
    HANDLES_VERSION, MAX_HANDLES_PER_CONNECTION, MAX_KEY_LEN, MAX_RAFT_PAYLOAD, MAX_SCAN_PAGE,
    MAX_TOKEN_LEN, SCAN_PAGE_OVERHEAD,
};

/// The default lower bound of a node's Raft election timeout, in milliseconds (the upper bound
/// is twice it; heartbeats go out every fifth of it). Here so that tools that start nodes
/// (the benches) and the node agree without linking the node.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 300;

/// The address a node listens on, and a client dials, unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";

/// The newest protocol version this build speaks. A client offers a range in HELLO; the node
/// picks the highest version both sides know. Version 2 adds token handles
/// ([`HANDLES_VERSION`]); everything of version 1 is unchanged in it.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The three bytes that open every HELLO body, so a node can tell a confused peer (an HTTP
/// client, a TLS client on a plaintext port) from an skv client with a different version.
pub const HELLO_MAGIC: [u8; 3] = *b"SKV";
