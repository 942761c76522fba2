//! Property tests: the frame decoder and message decoders take arbitrary bytes from an
//! untrusted peer, so they must never panic, never buffer beyond the frame limit, never hand
//! out a key or token over its limit, and whatever they accept must be exactly what the
//! encoder writes for the decoded message (one encoding per message: no ambiguity for a peer
//! or an audit line to exploit). Generated messages cover every opcode and response kind,
//! Control and Import included.

#![forbid(unsafe_code)]

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use skv_proto::{
    Consistency, DecodeError, EncodeFrame, ErrorCode, FrameCodec, FrameError, Op, Request,
    RequestBody, Response, ResponseBody, ScanEntry, Session, TokenPlacement, WireError,
    FRAME_HEADER_LEN, MAX_KEY_LEN, MAX_RAFT_PAYLOAD, MAX_TOKEN_LEN,
};
use tokio_util::codec::Decoder;

const MAX: usize = 4096;

/// The request envelope flags (docs/PROTOCOL.md, "Requests"); the handle flag is version 2's.
const FLAG_TOKEN: u8 = 0x01;
const FLAG_SESSION: u8 = 0x02;
const FLAG_STALE: u8 = 0x04;
const FLAG_KEYS_ONLY: u8 = 0x08;
const FLAG_HANDLE: u8 = 0x10;
const KNOWN_FLAGS: u8 = FLAG_TOKEN | FLAG_SESSION | FLAG_STALE | FLAG_KEYS_ONLY | FLAG_HANDLE;

/// Every opcode the protocol defines, in wire order.
const ALL_OPS: [Op; 12] = [
    Op::Hello,
    Op::Ping,
    Op::Get,
    Op::Put,
    Op::Delete,
    Op::Scan,
    Op::Cas,
    Op::ClusterMap,
    Op::Control,
    Op::Import,
    Op::Raft,
    Op::RegisterToken,
];

fn payload<M: EncodeFrame>(m: &M) -> Bytes {
    let mut buf = BytesMut::new();
    m.encode_payload(&mut buf);
    buf.freeze()
}

/// Every key-like field of a decoded request is within its limit, and the fields together
/// fit the payload they came from.
fn request_fields_are_bounded(req: &Request, payload_len: usize) -> Result<(), TestCaseError> {
    if let Some(token) = &req.token {
        prop_assert!(token.len() <= MAX_TOKEN_LEN, "token of {}", token.len());
    }
    // Keys, prefixes and cursors; then every other byte string.
    let mut keys: Vec<&Bytes> = Vec::new();
    let mut others: Vec<&Bytes> = req.token.iter().collect();
    match &req.body {
        RequestBody::Get { key } | RequestBody::Delete { key } => keys.push(key),
        RequestBody::Put { key, value } | RequestBody::Cas { key, value, .. } => {
            keys.push(key);
            others.push(value);
        }
        RequestBody::Scan { prefix, cursor, .. } => {
            keys.extend(Some(prefix).into_iter().chain(cursor))
        }
        RequestBody::Import { entries, deleted } => {
            for e in entries {
                keys.push(&e.key);
                others.push(&e.value);
            }
            keys.extend(deleted);
        }
        RequestBody::Control { json } => others.push(json),
        RequestBody::RegisterToken { token } => {
            prop_assert!(token.len() <= MAX_TOKEN_LEN, "token of {}", token.len());
            others.push(token)
        }
        RequestBody::Raft { payload, .. } => {
            prop_assert!(payload.len() <= MAX_RAFT_PAYLOAD);
            others.push(payload)
        }
        RequestBody::Hello { .. } | RequestBody::Ping | RequestBody::ClusterMap => {}
    }
    for k in &keys {
        prop_assert!(k.len() <= MAX_KEY_LEN, "key of {}", k.len());
    }
    let total: usize = keys.iter().chain(&others).map(|b| b.len()).sum();
    prop_assert!(
        total <= payload_len,
        "{total} bytes of fields from {payload_len}"
    );
    Ok(())
}

/// What a decoder accepted re-encodes to exactly the bytes it was given, and its fields are
/// bounded. What it refused is a typed error (checked by the type; reaching here means no
/// panic).
fn check_decoders(raw: &Bytes) -> Result<(), TestCaseError> {
    if let Ok(req) = Request::decode(raw.clone()) {
        prop_assert_eq!(
            &payload(&req),
            raw,
            "request {:?} re-encodes differently",
            req
        );
        request_fields_are_bounded(&req, raw.len())?;
    }
    if let Ok(resp) = Response::decode(raw.clone()) {
        prop_assert_eq!(
            &payload(&resp),
            raw,
            "response {:?} re-encodes differently",
            resp
        );
        if let ResponseBody::ScanPage {
            entries, cursor, ..
        } = &resp.body
        {
            for e in entries {
                prop_assert!(e.key.len() <= MAX_KEY_LEN);
            }
            prop_assert!(cursor.as_ref().is_none_or(|c| c.len() <= MAX_KEY_LEN));
        }
    }
    Ok(())
}

fn bytes_up_to(n: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=n).prop_map(Bytes::from)
}

fn key() -> impl Strategy<Value = Bytes> {
    // Mostly short keys, sometimes right at the limit.
    prop_oneof![
        4 => bytes_up_to(24),
        1 => Just(Bytes::from(vec![b'k'; MAX_KEY_LEN])),
    ]
}

fn entry() -> impl Strategy<Value = ScanEntry> {
    (key(), any::<u64>(), bytes_up_to(64)).prop_map(|(key, version, value)| ScanEntry {
        key,
        version,
        value,
    })
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

/// Any request body, every opcode.
fn request_body() -> impl Strategy<Value = RequestBody> {
    prop_oneof![
        (any::<u16>(), any::<u16>()).prop_map(|(min_version, max_version)| RequestBody::Hello {
            min_version,
            max_version
        }),
        Just(RequestBody::Ping),
        key().prop_map(|key| RequestBody::Get { key }),
        (key(), bytes_up_to(256)).prop_map(|(key, value)| RequestBody::Put { key, value }),
        key().prop_map(|key| RequestBody::Delete { key }),
        (
            key(),
            any::<u32>(),
            proptest::option::of(key()),
            any::<bool>()
        )
            .prop_map(|(prefix, limit, cursor, keys_only)| RequestBody::Scan {
                prefix,
                limit,
                cursor,
                keys_only,
            }),
        (key(), any::<u64>(), bytes_up_to(256)).prop_map(|(key, expect_version, value)| {
            RequestBody::Cas {
                key,
                expect_version,
                value,
            }
        }),
        Just(RequestBody::ClusterMap),
        bytes_up_to(256).prop_map(|json| RequestBody::Control { json }),
        (
            proptest::collection::vec(entry(), 0..4),
            proptest::collection::vec(key(), 0..4)
        )
            .prop_map(|(entries, deleted)| RequestBody::Import { entries, deleted }),
        (any::<u32>(), any::<u8>(), bytes_up_to(256)).prop_map(|(group, rpc, payload)| {
            RequestBody::Raft {
                group,
                rpc,
                payload,
            }
        }),
        bytes_up_to(64).prop_map(|token| RequestBody::RegisterToken { token }),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    (
        any::<u64>(),
        proptest::option::of(prop_oneof![
            4 => bytes_up_to(64),
            1 => Just(Bytes::from(vec![b't'; MAX_TOKEN_LEN])),
        ]),
        proptest::option::of(any::<u32>()),
        proptest::option::of((any::<u64>(), any::<u64>())),
        any::<bool>(),
        request_body(),
    )
        .prop_map(|(id, token, handle, session, stale, body)| Request {
            id,
            // One credential or none: the two together are refused by design.
            handle: handle.filter(|_| token.is_none()),
            token,
            session: session.map(|(client, seq)| Session { client, seq }),
            consistency: if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            },
            body,
        })
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_u16)
}

/// Any response body, every kind.
fn response_body() -> impl Strategy<Value = ResponseBody> {
    prop_oneof![
        (any::<u16>(), any::<u32>(), text(), 0u8..3).prop_map(|(version, max_frame, node, t)| {
            ResponseBody::HelloOk {
                version,
                max_frame,
                node,
                token: [
                    TokenPlacement::None,
                    TokenPlacement::PerRequest,
                    TokenPlacement::PerConnection,
                ][t as usize],
            }
        }),
        Just(ResponseBody::Pong),
        (any::<u64>(), bytes_up_to(256))
            .prop_map(|(version, value)| ResponseBody::Value { version, value }),
        Just(ResponseBody::NotFound),
        any::<u64>().prop_map(|version| ResponseBody::Written { version }),
        any::<bool>().prop_map(|existed| ResponseBody::Deleted { existed }),
        (
            proptest::collection::vec(entry(), 0..4),
            proptest::option::of(key()),
            any::<u64>()
        )
            .prop_map(|(entries, cursor, epoch)| ResponseBody::ScanPage {
                entries,
                cursor,
                epoch
            }),
        any::<u64>().prop_map(|current| ResponseBody::CasConflict { current }),
        (any::<u64>(), bytes_up_to(256))
            .prop_map(|(epoch, json)| ResponseBody::Map { epoch, json }),
        bytes_up_to(256).prop_map(|json| ResponseBody::Control { json }),
        (any::<u16>(), any::<u64>(), text(), text()).prop_map(|(slot, epoch, node, addr)| {
            ResponseBody::Moved {
                slot,
                epoch,
                node,
                addr,
            }
        }),
        (
            any::<u32>(),
            any::<u64>(),
            proptest::option::of((text(), text()))
        )
            .prop_map(|(shard, epoch, leader)| ResponseBody::NotLeader {
                shard,
                epoch,
                leader
            }),
        bytes_up_to(256).prop_map(|payload| ResponseBody::Raft { payload }),
        any::<u32>().prop_map(|handle| ResponseBody::TokenHandle { handle }),
        (error_code(), text(), any::<u32>()).prop_map(|(code, message, ms)| {
            // Only the throttling codes carry a retry-after on the wire.
            let retry_after_ms = code.carries_retry_after().then_some(ms);
            ResponseBody::Error(WireError {
                code,
                message,
                retry_after_ms,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes, fed in arbitrary chunks: the decoder returns frames or a typed error,
    /// and its buffer never grows past what was fed plus one frame's worth. Every frame it
    /// returns goes through both message decoders.
    #[test]
    fn frame_decoder_is_total_and_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..3 * MAX),
        chunk in 1usize..700,
    ) {
        let mut codec = FrameCodec::new(MAX);
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let mut consumed = 0usize;
        'feed: for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        prop_assert!(!frame.is_empty() && frame.len() <= MAX);
                        // The frame is exactly the bytes after its header, in stream order.
                        let start = consumed + FRAME_HEADER_LEN;
                        prop_assert_eq!(&frame[..], &data[start..start + frame.len()]);
                        consumed = start + frame.len();
                        check_decoders(&frame)?;
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge { len, max }) => {
                        prop_assert!(len > max);
                        prop_assert_eq!(max, MAX);
                        break 'feed;
                    }
                    Err(FrameError::Empty) => break 'feed,
                    Err(other) => prop_assert!(false, "unexpected error {other}"),
                }
            }
            prop_assert_eq!(consumed + buf.len(), fed, "bytes lost or invented");
            prop_assert!(
                buf.capacity() <= fed + FRAME_HEADER_LEN + MAX + 64,
                "buffer capacity {} after {} bytes fed", buf.capacity(), fed
            );
        }
    }

    /// Well-framed but arbitrary payloads never panic the message decoders, and whatever they
    /// accept round-trips byte for byte with bounded fields.
    #[test]
    fn message_decoders_are_total(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_decoders(&Bytes::from(payload))?;
    }

    /// Payloads that start like a request of any opcode (every defined one, and unknown ones)
    /// with any flags byte (every combination of the known flags, and unknown bits) and then
    /// carry arbitrary bytes: unknown flag bits are `UnknownFlags`, an unknown opcode is
    /// `UnknownOp`, a known one decodes to a body of that opcode with exactly the envelope
    /// fields its flags announce, or to a typed error, and an accepted one round-trips.
    #[test]
    fn every_opcode_decodes_to_its_own_op_or_an_error(
        id in any::<u64>(), op in 0u8..=0x0c, flags in 0u8..0x20,
        rest in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut raw = BytesMut::new();
        raw.put_u64(id);
        raw.put_u8(op);
        raw.put_u8(flags);
        raw.extend_from_slice(&rest);
        let raw = raw.freeze();
        let known_flags = flags & !KNOWN_FLAGS == 0;
        match Request::decode(raw.clone()) {
            Ok(req) => {
                prop_assert!(known_flags);
                prop_assert_eq!(req.body.op() as u8, op);
                prop_assert_eq!(req.id, id);
                prop_assert_eq!(req.token.is_some(), flags & FLAG_TOKEN != 0);
                prop_assert_eq!(req.handle.is_some(), flags & FLAG_HANDLE != 0);
                prop_assert_eq!(req.session.is_some(), flags & FLAG_SESSION != 0);
                prop_assert_eq!(
                    req.consistency == Consistency::Stale,
                    flags & FLAG_STALE != 0
                );
                prop_assert_eq!(
                    matches!(req.body, RequestBody::Scan { keys_only: true, .. }),
                    flags & FLAG_KEYS_ONLY != 0
                );
            }
            Err(DecodeError::UnknownFlags(f)) => {
                prop_assert_eq!(f, flags);
                // Unknown bits, a token with a handle, or keys-only on another op than SCAN.
                prop_assert!(
                    !known_flags
                        || flags & (FLAG_TOKEN | FLAG_HANDLE) == FLAG_TOKEN | FLAG_HANDLE
                        || (flags & FLAG_KEYS_ONLY != 0 && op != Op::Scan as u8)
                );
            }
            // The envelope (token, then session) is read before the opcode is looked at.
            Err(DecodeError::Truncated("token")) => {
                prop_assert!(known_flags && flags & FLAG_TOKEN != 0)
            }
            Err(DecodeError::Truncated("handle")) => {
                prop_assert!(known_flags && flags & FLAG_HANDLE != 0)
            }
            Err(DecodeError::Truncated("session client" | "session seq")) => {
                prop_assert!(known_flags && flags & FLAG_SESSION != 0)
            }
            Err(DecodeError::UnknownOp(o)) => {
                prop_assert!(known_flags);
                prop_assert_eq!(o, op);
                prop_assert!(ALL_OPS.iter().all(|known| *known as u8 != op));
            }
            Err(_) => {
                prop_assert!(known_flags && ALL_OPS.iter().any(|known| *known as u8 == op))
            }
        }
        check_decoders(&raw)?;
    }

    /// Every request of every opcode decodes back to itself; every strict prefix of its
    /// encoding is a truncation error, and any extra byte is refused.
    #[test]
    fn generated_requests_round_trip(req in request(), cut in any::<prop::sample::Index>()) {
        let raw = payload(&req);
        prop_assert_eq!(Request::decode(raw.clone()), Ok(req.clone()));
        let at = cut.index(raw.len());
        prop_assert!(
            matches!(Request::decode(raw.slice(..at)), Err(DecodeError::Truncated(_))),
            "{} of {} bytes of {:?} decoded", at, raw.len(), req
        );
        let mut longer = BytesMut::from(&raw[..]);
        longer.put_u8(0);
        prop_assert_eq!(Request::decode(longer.freeze()), Err(DecodeError::TrailingBytes(1)));
    }

    /// The same for every response kind.
    #[test]
    fn generated_responses_round_trip(
        id in any::<u64>(), body in response_body(), cut in any::<prop::sample::Index>(),
    ) {
        let resp = Response { id, body };
        let raw = payload(&resp);
        prop_assert_eq!(Response::decode(raw.clone()), Ok(resp.clone()));
        let at = cut.index(raw.len());
        prop_assert!(
            matches!(Response::decode(raw.slice(..at)), Err(DecodeError::Truncated(_))),
            "{} of {} bytes of {:?} decoded", at, raw.len(), resp
        );
        let mut longer = BytesMut::from(&raw[..]);
        longer.put_u8(0);
        prop_assert_eq!(Response::decode(longer.freeze()), Err(DecodeError::TrailingBytes(1)));
    }

    /// A generated request with one byte flipped either fails with a typed error or decodes
    /// to a message that re-encodes to the flipped bytes (never to something else).
    #[test]
    fn mutated_requests_never_decode_ambiguously(
        req in request(), at in any::<prop::sample::Index>(), xor in 1u8..=255,
    ) {
        let mut raw = BytesMut::from(&payload(&req)[..]);
        let i = at.index(raw.len());
        raw[i] ^= xor;
        let raw = raw.freeze();
        check_decoders(&raw)?;
    }

    /// The same for responses.
    #[test]
    fn mutated_responses_never_decode_ambiguously(
        id in any::<u64>(), body in response_body(),
        at in any::<prop::sample::Index>(), xor in 1u8..=255,
    ) {
        let mut raw = BytesMut::from(&payload(&Response { id, body })[..]);
        let i = at.index(raw.len());
        raw[i] ^= xor;
        let raw = raw.freeze();
        check_decoders(&raw)?;
    }
}

/// The generators really produce every opcode and every response kind: a strategy that
/// silently stopped covering Control or Import would make the properties above vacuous.
#[test]
fn generators_cover_every_opcode_and_kind() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut ops = std::collections::BTreeSet::new();
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..2000 {
        let req = request().new_tree(&mut runner).unwrap().current();
        ops.insert(req.body.op() as u8);
        let body = response_body().new_tree(&mut runner).unwrap().current();
        kinds.insert(payload(&Response { id: 0, body })[8]);
    }
    let all_ops: std::collections::BTreeSet<u8> = ALL_OPS.iter().map(|op| *op as u8).collect();
    assert_eq!(ops, all_ops);
    assert_eq!(kinds.len(), 15, "response kinds seen: {kinds:x?}");
}
