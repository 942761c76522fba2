//! The wire vectors of docs/PROTOCOL.md ("Appendix: wire vectors") are what this crate
//! writes: every request and every response kind, encoded as a whole frame, must equal the
//! hex in the doc's table byte for byte, and decode back to the same message. The bytes live
//! in the doc only (read at test time), so the doc and the code cannot drift apart silently.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use skv_proto::{
    encode_frame, Consistency, EncodeFrame, ErrorCode, FrameCodec, Op, Request, RequestBody,
    Response, ResponseBody, ScanEntry, Session, TokenPlacement, WireError, DEFAULT_MAX_FRAME,
};
use tokio_util::codec::Decoder;

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn req(id: u64, body: RequestBody) -> Request {
    Request::new(id, body)
}

fn resp(id: u64, body: ResponseBody) -> Response {
    Response { id, body }
}

/// The messages the doc's vectors describe, by vector name.
fn requests() -> Vec<(&'static str, Request)> {
    vec![
        (
            "req-hello",
            req(
                1,
                RequestBody::Hello {
                    min_version: 1,
                    max_version: 1,
                },
            ),
        ),
        ("req-ping", req(2, RequestBody::Ping)),
        ("req-get", req(3, RequestBody::Get { key: b("k") })),
        (
            "req-get-token",
            Request {
                id: 4,
                token: Some(b("a.b.c")),
                handle: None,
                session: None,
                consistency: Consistency::Linearizable,
                body: RequestBody::Get { key: b("k") },
            },
        ),
        (
            "req-put",
            req(
                5,
                RequestBody::Put {
                    key: b("k"),
                    value: b("v"),
                },
            ),
        ),
        ("req-delete", req(6, RequestBody::Delete { key: b("k") })),
        (
            "req-scan",
            req(
                7,
                RequestBody::Scan {
                    prefix: b("u/"),
                    limit: 10,
                    cursor: Some(b("u/a")),
                    keys_only: false,
                },
            ),
        ),
        (
            "req-scan-first",
            req(
                8,
                RequestBody::Scan {
                    prefix: b(""),
                    limit: 0,
                    cursor: None,
                    keys_only: false,
                },
            ),
        ),
        (
            "req-cas",
            req(
                9,
                RequestBody::Cas {
                    key: b("k"),
                    expect_version: 1,
                    value: b("w"),
                },
            ),
        ),
        ("req-cluster-map", req(10, RequestBody::ClusterMap)),
        (
            "req-control",
            req(
                11,
                RequestBody::Control {
                    json: b(r#"{"cmd":"status"}"#),
                },
            ),
        ),
        (
            "req-import",
            req(
                12,
                RequestBody::Import {
                    entries: vec![ScanEntry {
                        key: b("a"),
                        version: 7,
                        value: b("x"),
                    }],
                    deleted: vec![b("b")],
                },
            ),
        ),
        (
            "req-put-session",
            Request {
                session: Some(Session { client: 42, seq: 1 }),
                ..req(
                    13,
                    RequestBody::Put {
                        key: b("k"),
                        value: b("v"),
                    },
                )
            },
        ),
        (
            "req-get-stale",
            Request {
                consistency: Consistency::Stale,
                ..req(14, RequestBody::Get { key: b("k") })
            },
        ),
        (
            "req-delete-all-flags",
            Request {
                id: 15,
                token: Some(b("a.b.c")),
                handle: None,
                session: Some(Session { client: 42, seq: 2 }),
                consistency: Consistency::Stale,
                body: RequestBody::Delete { key: b("k") },
            },
        ),
        (
            "req-raft",
            req(
                16,
                RequestBody::Raft {
                    group: 1,
                    rpc: 2,
                    payload: b("vote"),
                },
            ),
        ),
        (
            "req-scan-keys-only",
            req(
                17,
                RequestBody::Scan {
                    prefix: b("u/"),
                    limit: 10,
                    cursor: None,
                    keys_only: true,
                },
            ),
        ),
        (
            "req-scan-all-flags",
            Request {
                id: 18,
                token: Some(b("a.b.c")),
                handle: None,
                session: Some(Session { client: 42, seq: 3 }),
                consistency: Consistency::Stale,
                body: RequestBody::Scan {
                    prefix: b("u/"),
                    limit: 10,
                    cursor: None,
                    keys_only: true,
                },
            },
        ),
        (
            "req-register-token",
            req(19, RequestBody::RegisterToken { token: b("a.b.c") }),
        ),
        (
            "req-get-handle",
            Request {
                handle: Some(7),
                ..req(20, RequestBody::Get { key: b("k") })
            },
        ),
        (
            "req-scan-handle-all-flags",
            Request {
                id: 21,
                token: None,
                handle: Some(7),
                session: Some(Session { client: 42, seq: 4 }),
                consistency: Consistency::Stale,
                body: RequestBody::Scan {
                    prefix: b("u/"),
                    limit: 10,
                    cursor: None,
                    keys_only: true,
                },
            },
        ),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        (
            "resp-hello-ok",
            resp(
                1,
                ResponseBody::HelloOk {
                    version: 1,
                    max_frame: 1 << 20,
                    node: "n1".into(),
                    token: TokenPlacement::PerRequest,
                },
            ),
        ),
        ("resp-pong", resp(2, ResponseBody::Pong)),
        (
            "resp-value",
            resp(
                3,
                ResponseBody::Value {
                    version: 2,
                    value: b("v"),
                },
            ),
        ),
        ("resp-not-found", resp(4, ResponseBody::NotFound)),
        (
            "resp-written",
            resp(5, ResponseBody::Written { version: 3 }),
        ),
        (
            "resp-deleted",
            resp(6, ResponseBody::Deleted { existed: true }),
        ),
        (
            "resp-scan-page",
            resp(
                7,
                ResponseBody::ScanPage {
                    entries: vec![ScanEntry {
                        key: b("u/b"),
                        version: 3,
                        value: b("x"),
                    }],
                    cursor: Some(b("u/b")),
                    epoch: 1,
                },
            ),
        ),
        (
            "resp-scan-page-last",
            resp(
                8,
                ResponseBody::ScanPage {
                    entries: Vec::new(),
                    cursor: None,
                    epoch: 1,
                },
            ),
        ),
        (
            "resp-cas-conflict",
            resp(9, ResponseBody::CasConflict { current: 4 }),
        ),
        (
            "resp-map",
            resp(
                10,
                ResponseBody::Map {
                    epoch: 1,
                    json: b("{}"),
                },
            ),
        ),
        (
            "resp-control",
            resp(11, ResponseBody::Control { json: b("{}") }),
        ),
        (
            "resp-moved",
            resp(
                3,
                ResponseBody::Moved {
                    slot: skv_proto::hash_slot(b"k"),
                    epoch: 2,
                    node: "n2".into(),
                    addr: "127.0.0.1:7402".into(),
                },
            ),
        ),
        (
            "resp-error",
            resp(
                5,
                ResponseBody::Error(WireError::new(ErrorCode::Forbidden, "no")),
            ),
        ),
        (
            "resp-not-leader",
            resp(
                13,
                ResponseBody::NotLeader {
                    shard: 1,
                    epoch: 2,
                    leader: Some(("n2".into(), "127.0.0.1:7402".into())),
                },
            ),
        ),
        (
            "resp-not-leader-unknown",
            resp(
                14,
                ResponseBody::NotLeader {
                    shard: 1,
                    epoch: 2,
                    leader: None,
                },
            ),
        ),
        (
            "resp-raft",
            resp(16, ResponseBody::Raft { payload: b("ok") }),
        ),
        (
            "resp-error-unavailable",
            resp(
                13,
                ResponseBody::Error(WireError::new(ErrorCode::Unavailable, "no quorum")),
            ),
        ),
        (
            "resp-error-rate-limited",
            resp(
                17,
                ResponseBody::Error(WireError::retry_after(
                    ErrorCode::RateLimited,
                    "slow down",
                    250,
                )),
            ),
        ),
        (
            "resp-error-overloaded",
            resp(
                1,
                ResponseBody::Error(WireError::retry_after(ErrorCode::Overloaded, "busy", 100)),
            ),
        ),
        (
            "resp-token-handle",
            resp(19, ResponseBody::TokenHandle { handle: 1 }),
        ),
        (
            "resp-error-too-many-handles",
            resp(
                19,
                ResponseBody::Error(WireError::new(ErrorCode::TooManyHandles, "full")),
            ),
        ),
        (
            "resp-error-unknown-handle",
            resp(
                20,
                ResponseBody::Error(WireError::new(ErrorCode::UnknownHandle, "no")),
            ),
        ),
    ]
}

/// The appendix table of docs/PROTOCOL.md: vector name -> frame bytes.
fn doc_vectors() -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path)?;
    let (_, appendix) = doc
        .split_once("## Appendix: wire vectors")
        .ok_or_else(|| anyhow::anyhow!("{path} has no \"Appendix: wire vectors\" section"))?;
    let mut vectors = BTreeMap::new();
    for line in appendix.lines() {
        // | `name` | description | `hex` |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, _, hex, _] = cells[..] else {
            continue;
        };
        let (Some(name), Some(hex)) = (
            name.strip_prefix('`').and_then(|n| n.strip_suffix('`')),
            hex.strip_prefix('`').and_then(|h| h.strip_suffix('`')),
        ) else {
            continue;
        };
        let bytes = parse_hex(hex).map_err(|e| anyhow::anyhow!("vector {name}: {e}"))?;
        anyhow::ensure!(
            vectors.insert(name.to_owned(), bytes).is_none(),
            "vector {name} appears twice"
        );
    }
    Ok(vectors)
}

fn parse_hex(spaced: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = spaced.bytes().filter(|c| *c != b' ').collect();
    anyhow::ensure!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair)?;
            Ok(u8::from_str_radix(s, 16)?)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn frame_of<M: EncodeFrame>(m: &M) -> anyhow::Result<Vec<u8>> {
    let mut buf = BytesMut::new();
    encode_frame(m, &mut buf, DEFAULT_MAX_FRAME)?;
    Ok(buf.to_vec())
}

/// The one payload in `frame`, through the real frame decoder.
fn unframe(frame: &[u8]) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::from(frame);
    let payload = FrameCodec::default()
        .decode(&mut buf)?
        .ok_or_else(|| anyhow::anyhow!("an incomplete frame"))?;
    anyhow::ensure!(buf.is_empty(), "{} bytes after the frame", buf.len());
    Ok(payload)
}

#[test]
fn every_documented_vector_is_what_the_codec_writes_and_reads() -> anyhow::Result<()> {
    let mut doc = doc_vectors()?;
    let mut failures = Vec::new();
    for (name, request) in requests() {
        let Some(expected) = doc.remove(name) else {
            failures.push(format!("{name}: not in docs/PROTOCOL.md"));
            continue;
        };
        let actual = frame_of(&request)?;
        if actual != expected {
            failures.push(format!(
                "{name}: the codec writes {} but the doc says {}",
                hex(&actual),
                hex(&expected)
            ));
            continue;
        }
        assert_eq!(Request::decode(unframe(&expected)?)?, request, "{name}");
    }
    for (name, response) in responses() {
        let Some(expected) = doc.remove(name) else {
            failures.push(format!("{name}: not in docs/PROTOCOL.md"));
            continue;
        };
        let actual = frame_of(&response)?;
        if actual != expected {
            failures.push(format!(
                "{name}: the codec writes {} but the doc says {}",
                hex(&actual),
                hex(&expected)
            ));
            continue;
        }
        assert_eq!(Response::decode(unframe(&expected)?)?, response, "{name}");
    }
    for name in doc.keys() {
        failures.push(format!("{name}: in docs/PROTOCOL.md but not checked here"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// The vectors cover every opcode and every response kind the codec knows.
#[test]
fn the_vectors_cover_every_opcode_and_response_kind() -> anyhow::Result<()> {
    let ops: std::collections::BTreeSet<u8> =
        requests().iter().map(|(_, r)| r.body.op() as u8).collect();
    let every_op: std::collections::BTreeSet<u8> = (0..=u8::MAX)
        .filter(|n| {
            // An opcode the decoder knows: anything but UnknownOp for a bare header.
            let mut raw = vec![0u8; 8];
            raw.extend([*n, 0]);
            !matches!(
                Request::decode(Bytes::from(raw)),
                Err(skv_proto::DecodeError::UnknownOp(_))
            )
        })
        .collect();
    assert_eq!(ops, every_op, "opcodes without a vector");
    assert!(ops.contains(&(Op::Control as u8)) && ops.contains(&(Op::Import as u8)));

    let kinds: std::collections::BTreeSet<u8> = responses()
        .iter()
        .map(|(_, r)| frame_of(r).map(|f| f[4 + 8]))
        .collect::<anyhow::Result<_>>()?;
    let every_kind: std::collections::BTreeSet<u8> = (0..=u8::MAX)
        .filter(|n| {
            let mut raw = vec![0u8; 8];
            raw.push(*n);
            !matches!(
                Response::decode(Bytes::from(raw)),
                Err(skv_proto::DecodeError::UnknownKind(_))
            )
        })
        .collect();
    assert_eq!(kinds, every_kind, "response kinds without a vector");

    // Every envelope flag is set in some vector, and one vector sets them all, so the order
    // of the optional fields is pinned too.
    let flags: Vec<u8> = requests()
        .iter()
        .map(|(_, r)| frame_of(r).map(|f| f[4 + 8 + 1]))
        .collect::<anyhow::Result<_>>()?;
    let every_flag: u8 = (0..8)
        .map(|bit| 1u8 << bit)
        .filter(|flag| {
            // A flag the decoder knows: anything but UnknownFlags for a bare SCAN header (SCAN
            // takes every flag; keys-only is refused on other ops).
            let mut raw = vec![0u8; 8];
            raw.extend([Op::Scan as u8, *flag]);
            !matches!(
                Request::decode(Bytes::from(raw)),
                Err(skv_proto::DecodeError::UnknownFlags(_))
            )
        })
        .fold(0, |all, flag| all | flag);
    assert_eq!(
        every_flag, 0x1f,
        "the decoder knows flags the doc does not describe"
    );
    // A token and a handle exclude each other, so two vectors set every other flag: one with
    // the token, one with the handle.
    const TOKEN: u8 = 0x01;
    const HANDLE: u8 = 0x10;
    for all in [every_flag & !HANDLE, every_flag & !TOKEN] {
        assert!(
            flags.contains(&all),
            "no vector sets the flags {all:02x}: {flags:02x?}"
        );
    }
    for bit in 0..8 {
        let flag = 1u8 << bit;
        if every_flag & flag != 0 {
            assert!(
                flags.iter().any(|f| f & flag == flag
                    && *f != every_flag & !HANDLE
                    && *f != every_flag & !TOKEN),
                "flag 0x{flag:02x} has no vector of its own"
            );
        }
    }
    Ok(())
}

/// The doc's error table names every code the codec knows, by its number and wire name.
#[test]
fn the_error_table_lists_every_code() -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path)?;
    let (_, rest) = doc
        .split_once("## Error codes")
        .ok_or_else(|| anyhow::anyhow!("{path} has no \"Error codes\" section"))?;
    let table: BTreeMap<u16, &str> = rest
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            Some((cells.get(1)?.parse().ok()?, *cells.get(2)?))
        })
        .collect();
    let known: BTreeMap<u16, &str> = (0..=u16::MAX)
        .map(ErrorCode::from_u16)
        .filter(|code| !matches!(code, ErrorCode::Other(_)))
        .map(|code| (code.to_u16(), code.as_str()))
        .collect();
    assert!(known.contains_key(&ErrorCode::Unavailable.to_u16()));
    assert_eq!(
        table, known,
        "docs/PROTOCOL.md's error table and ErrorCode differ"
    );
    Ok(())
}
