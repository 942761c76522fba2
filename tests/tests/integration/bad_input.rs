//! Hostile and broken peers: oversized, truncated, unknown and garbage frames. The node
//! answers with a typed error or closes cleanly, stays within its memory, and keeps serving
//! everyone else. Framing is identical with and without TLS, so most of these talk to a
//! plaintext node through raw sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use skv_proto::{
    EncodeFrame, ErrorCode, Request, RequestBody, Response, ResponseBody, PROTOCOL_VERSION,
};
use skv_tests::{code, skv, strs, Node};

fn plaintext_node(extra: &[&str]) -> anyhow::Result<(tempfile::TempDir, Node)> {
    let dir = tempfile::tempdir()?;
    let mut args = strs(&[
        "--insecure-plaintext",
        "--engine",
        "memory",
        "--auth",
        "off",
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let node = Node::start(&args, &dir.path().join("node.log"))?;
    Ok((dir, node))
}

fn connect(addr: &str) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(s)
}

fn frame<M: EncodeFrame>(m: &M) -> Vec<u8> {
    let mut buf = BytesMut::new();
    skv_proto::encode_frame(m, &mut buf, usize::MAX).expect("encode");
    buf.to_vec()
}

fn hello() -> Vec<u8> {
    frame(&Request {
        id: 0,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
        },
    })
}

/// Read one response, or `None` on a clean close.
fn read_response(s: &mut TcpStream) -> anyhow::Result<Option<Response>> {
    let mut header = [0u8; 4];
    match s.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
    s.read_exact(&mut payload)?;
    Ok(Some(Response::decode(Bytes::from(payload))?))
}

fn assert_error(resp: Option<Response>, expected: ErrorCode) -> Response {
    match resp {
        Some(
            r @ Response {
                body: ResponseBody::Error(_),
                ..
            },
        ) => {
            let ResponseBody::Error(err) = &r.body else {
                unreachable!()
            };
            assert_eq!(err.code, expected, "{err}");
            r
        }
        other => panic!("expected a {expected} error, got {other:?}"),
    }
}

fn assert_closed(s: &mut TcpStream) {
    assert!(
        matches!(read_response(s), Ok(None)),
        "connection should be closed"
    );
}

fn still_serves(addr: &str) {
    let out = skv(&strs(&["--addr", addr, "--plaintext", "ping"]), None).expect("run skv");
    assert_eq!(code(&out), 0, "node stopped serving others");
}

#[test]
fn oversized_frames_get_a_typed_error_and_memory_stays_flat() -> anyhow::Result<()> {
    let (_dir, node) = plaintext_node(&["--max-frame", "65536"])?;
    let mut s = connect(&node.addr)?;
    s.write_all(&hello())?;
    assert!(matches!(
        read_response(&mut s)?,
        Some(Response {
            body: ResponseBody::HelloOk {
                max_frame: 65536,
                ..
            },
            ..
        })
    ));
    // A PUT just over the configured limit.
    let put = frame(&Request {
        id: 7,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; 65536]),
        },
    });
    s.write_all(&put)?;
    assert_error(read_response(&mut s)?, ErrorCode::FrameTooLarge);
    assert_closed(&mut s);

    // Many peers announcing 4 GiB frames cost the node nothing.
    let before = node.rss_kib()?;
    for _ in 0..200 {
        let mut s = connect(&node.addr)?;
        s.write_all(&hello())?;
        let _ = read_response(&mut s)?;
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])?;
        assert_error(read_response(&mut s)?, ErrorCode::FrameTooLarge);
    }
    let after = node.rss_kib()?;
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
    still_serves(&node.addr);
    Ok(())
}

#[test]
fn unknown_ops_and_malformed_bodies_cost_only_themselves() -> anyhow::Result<()> {
    let (_dir, node) = plaintext_node(&[])?;
    let mut s = connect(&node.addr)?;
    s.write_all(&hello())?;
    read_response(&mut s)?;

    let mut unknown = BytesMut::new();
    unknown.put_u32(10);
    unknown.put_u64(41);
    unknown.put_u8(0x7f);
    unknown.put_u8(0);
    s.write_all(&unknown)?;
    assert_eq!(
        assert_error(read_response(&mut s)?, ErrorCode::UnknownOp).id,
        41
    );

    // A GET whose key length runs past the end of the frame.
    let mut truncated = BytesMut::new();
    truncated.put_u32(13);
    truncated.put_u64(42);
    truncated.put_u8(0x02);
    truncated.put_u8(0);
    truncated.put_u16(500);
    truncated.put_u8(b'k');
    s.write_all(&truncated)?;
    assert_eq!(
        assert_error(read_response(&mut s)?, ErrorCode::Malformed).id,
        42
    );

    // The same connection still works.
    s.write_all(&frame(&Request {
        id: 43,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Ping,
    }))?;
    assert_eq!(
        read_response(&mut s)?.map(|r| r.body),
        Some(ResponseBody::Pong)
    );
    Ok(())
}

#[test]
fn garbage_truncation_and_skipped_hello_never_hurt_other_clients() -> anyhow::Result<()> {
    // A short handshake timeout: junk that announces a plausible frame and stops is dropped.
    let (_dir, node) = plaintext_node(&["--handshake-timeout", "2"])?;

    // A request before HELLO.
    let mut s = connect(&node.addr)?;
    s.write_all(&frame(&Request {
        id: 1,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Ping,
    }))?;
    assert_error(read_response(&mut s)?, ErrorCode::HandshakeRequired);
    assert_closed(&mut s);

    // An HTTP client.
    let mut s = connect(&node.addr)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    assert_error(read_response(&mut s)?, ErrorCode::FrameTooLarge);
    assert_closed(&mut s);

    // A frame cut off by the peer closing (its write side): the node answers nothing and
    // drops the connection, rather than waiting for the other 97 bytes. After HELLO no
    // handshake timeout applies, so only seeing the cut-off end closes it.
    let mut s = connect(&node.addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&hello())?;
    assert!(
        matches!(
            read_response(&mut s)?.map(|r| r.body),
            Some(ResponseBody::HelloOk { .. })
        ),
        "HELLO is answered"
    );
    s.write_all(&[0, 0, 0, 100, 1, 2, 3])?;
    s.shutdown(std::net::Shutdown::Write)?;
    assert_closed(&mut s);

    // Pseudo-random garbage, deterministic so a failure reproduces. Each connection gets
    // typed errors or nothing, and is closed: at once, or (junk announcing a plausible frame
    // that never completes) after the 2 s handshake timeout. Never a hang: the 10 s read
    // timeout turns one into an error here, and the deadline bounds the whole exchange.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..50 {
        let mut s = connect(&node.addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let junk: Vec<u8> = (0..257)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        // The node may already have closed (and reset) the connection: that is allowed.
        let _ = s.write_all(&junk);
        let started = std::time::Instant::now();
        loop {
            match read_response(&mut s) {
                Ok(None) => break,
                Ok(Some(Response {
                    body: ResponseBody::Error(_),
                    ..
                })) => {}
                Ok(Some(other)) => panic!("junk round {round} was answered with {other:?}"),
                Err(e) => panic!("junk round {round}: no answer and no close: {e}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "junk round {round} took {:?} to be dropped",
            started.elapsed()
        );
    }

    // A silent peer is dropped after the handshake timeout, not kept forever.
    let (_dir2, strict) = plaintext_node(&["--handshake-timeout", "1"])?;
    let mut silent = connect(&strict.addr)?;
    std::thread::sleep(Duration::from_millis(1500));
    assert_closed(&mut silent);

    still_serves(&node.addr);
    still_serves(&strict.addr);
    Ok(())
}
