//! Wire types and codec shared by the skv client and server.
//!
//! This crate owns everything both ends must agree on byte for byte: the frame format and
//! its size limit ([`frame`]), the requests, responses and typed errors that travel inside
//! frames ([`message`]), and the protocol version. `docs/PROTOCOL.md` is the specification;
//! the code here is its reference implementation and the two must change together.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod frame;
pub mod message;
pub mod token;

pub use cluster::{hash_slot, ClusterMap, ControlRequest, ControlResponse, SlotRange, SLOT_COUNT};
pub use frame::{
    encode_frame, EncodeFrame, FrameCodec, FrameError, DEFAULT_MAX_FRAME, FRAME_HEADER_LEN,
    MIN_MAX_FRAME,
};
pub use message::{
    peek_request_id, scan_entry_wire_len, DecodeError, ErrorCode, Op, Request, RequestBody,
    Response, ResponseBody, ScanEntry, TokenPlacement, WireError, MAX_KEY_LEN, MAX_TOKEN_LEN,
    SCAN_PAGE_OVERHEAD,
};
pub use token::{
    cert_thumbprint, parse_allow, Alg, Confirmation, Jwk, JwkError, JwkSet, Scope, ScopeOp,
    ScopeParseError, TokenClaims,
};

/// The protocol version this build speaks. A client offers a range in HELLO; the node picks
/// the highest version both sides know.
pub const PROTOCOL_VERSION: u16 = 1;

/// The three bytes that open every HELLO body, so a node can tell a confused peer (an HTTP
/// client, a TLS client on a plaintext port) from an skv client with a different version.
pub const HELLO_MAGIC: [u8; 3] = *b"SKV";

/// Token audience a node requires, and `skv token issue` writes, unless told otherwise: the
/// default cluster name, so defaults match on both sides.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "skv";

/// Token issuer a node requires, and `skv token issue` writes, unless told otherwise.
pub const DEFAULT_TOKEN_ISSUER: &str = "skv";
