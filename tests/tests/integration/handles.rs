//! Token handles (protocol version 2) against a real node: the client library registers its
//! token once per connection and names it by handle, and the node still enforces scopes and
//! expiry on every request; a handle means nothing on another connection; a version-1
//! connection can neither register a token nor name a handle.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use skv_client::{ClientError, Connection, Pipeline};
use skv_proto::{ErrorCode, Request, RequestBody, ResponseBody, PROTOCOL_VERSION};
use skv_tests::Secured;

use crate::raw_tls::RawConnection;

fn audit_lines(s: &Secured) -> Vec<Value> {
    std::fs::read_to_string(&s.audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait (up to 10 s: the audit writer is asynchronous) for an audit line matching `pred`.
fn audited(s: &Secured, pred: impl Fn(&Value) -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if audit_lines(s).iter().any(&pred) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused_with(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) -> String {
    match result {
        Err(ClientError::Refused(err)) if err.code == code => err.message,
        other => panic!("expected a refusal with {code:?}, got {other:?}"),
    }
}

#[test]
fn a_handle_connection_is_scoped_and_cut_off_at_expiry_on_every_request() -> anyhow::Result<()> {
    let s = Secured::start(&["--leeway", "0", "--audit-allows"])?;
    let token = s.issue(&[
        "--sub",
        "hana",
        "--allow",
        "read,write:hana/",
        "--ttl",
        "3s",
    ])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut opts = s.pki.alice(&s.node.addr);
        opts.token = Some(token.clone());
        let conn = Connection::connect(&opts).await?;
        let mut full = opts.clone();
        full.token_handles = false;
        let full = Connection::connect(&full).await?;

        conn.put("hana/a", "1").await?;
        assert_eq!(full.get("hana/a").await?.map(|(_, v)| v), Some("1".into()));
        // Outside the grant, on every request, not only the first.
        for _ in 0..3 {
            let msg = refused_with(conn.put("ivan/a", "1").await, ErrorCode::Forbidden);
            assert!(msg.contains("write on this key"), "{msg}");
            refused_with(conn.delete("hana/a").await, ErrorCode::Forbidden);
        }
        refused_with(conn.scan("", 10, None).await, ErrorCode::Forbidden);
        assert!(conn.get("hana/a").await?.is_some());

        // Past exp the registered token is refused on the same connection.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let msg = refused_with(conn.get("hana/a").await, ErrorCode::Unauthenticated);
        assert!(msg.contains("expired"), "{msg}");
        let msg = refused_with(conn.put("hana/b", "2").await, ErrorCode::Unauthenticated);
        assert!(msg.contains("expired"), "{msg}");
        // PING needs no token: the connection itself is fine.
        conn.ping().await?;
        anyhow::Ok(())
    })?;

    // The library used the handle: one registration of hana's token, and the refused
    // requests audited with their op and key like any other.
    assert!(audited(&s, |l| l["op"] == "register_token"
        && l["sub"] == "hana"
        && l["decision"] == "allow"));
    assert!(audited(&s, |l| l["op"] == "put"
        && l["key"] == "ivan/a"
        && l["decision"] == "deny"
        && l["sub"] == "hana"));
    let registrations = audit_lines(&s)
        .iter()
        .filter(|l| l["op"] == "register_token")
        .count();
    assert_eq!(registrations, 1, "only the handle connection registers");
    Ok(())
}

#[test]
fn a_handle_means_nothing_on_another_connection_or_on_version_1() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let token = Bytes::from(s.issue(&["--sub", "jo", "--allow", "read,write:", "--ttl", "5m"])?);
    let hello = |min_version: u16| {
        Request::new(
            0,
            RequestBody::Hello {
                min_version,
                max_version: min_version.max(1),
            },
        )
    };
    let get = |id: u64, handle: u32| Request {
        handle: Some(handle),
        ..Request::new(
            id,
            RequestBody::Get {
                key: Bytes::from_static(b"k"),
            },
        )
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut owner = RawConnection::alice(&s.pki, &s.node.addr).await?;
        let ok = owner.call(&hello(PROTOCOL_VERSION)).await?;
        assert!(
            matches!(ok.body, ResponseBody::HelloOk { version: 2, .. }),
            "{ok:?}"
        );
        let registered = owner
            .call(&Request::new(
                1,
                RequestBody::RegisterToken {
                    token: token.clone(),
                },
            ))
            .await?;
        let ResponseBody::TokenHandle { handle } = registered.body else {
            anyhow::bail!("REGISTER_TOKEN answered {registered:?}");
        };
        assert_eq!(
            owner.call(&get(2, handle)).await?.body,
            ResponseBody::NotFound
        );

        // Same certificate, same handle number, another connection: nobody.
        let mut other = RawConnection::alice(&s.pki, &s.node.addr).await?;
        other.call(&hello(PROTOCOL_VERSION)).await?;
        match other.call(&get(1, handle)).await?.body {
            ResponseBody::Error(err) => assert_eq!(err.code, ErrorCode::UnknownHandle, "{err}"),
            body => anyhow::bail!("a foreign handle was answered {body:?}"),
        }
        // The refusal costs that request only.
        assert_eq!(
            other.call(&Request::new(2, RequestBody::Ping)).await?.body,
            ResponseBody::Pong
        );

        // Version 1: neither the handle flag nor REGISTER_TOKEN exist there.
        let mut old = RawConnection::alice(&s.pki, &s.node.addr).await?;
        let ok = old.call(&hello(1)).await?;
        assert!(
            matches!(ok.body, ResponseBody::HelloOk { version: 1, .. }),
            "{ok:?}"
        );
        match old.call(&get(1, handle)).await?.body {
            ResponseBody::Error(err) => assert_eq!(err.code, ErrorCode::Malformed, "{err}"),
            body => anyhow::bail!("a handle on version 1 was answered {body:?}"),
        }
        let register = Request::new(2, RequestBody::RegisterToken { token });
        match old.call(&register).await?.body {
            ResponseBody::Error(err) => assert_eq!(err.code, ErrorCode::UnknownOp, "{err}"),
            body => anyhow::bail!("REGISTER_TOKEN on version 1 was answered {body:?}"),
        }
        anyhow::Ok(())
    })?;
    assert!(audited(&s, |l| l["reason"] == "unknown token handle"
        && l["op"] == "get"));
    Ok(())
}

#[test]
fn registrations_are_charged_to_the_identitys_request_rate() -> anyhow::Result<()> {
    let s = Secured::start(&["--rate-limit-rps", "5"])?;
    let token = Bytes::from(s.issue(&["--sub", "kai", "--allow", "read:", "--ttl", "5m"])?);
    let rt = tokio::runtime::Runtime::new()?;
    let (handles, limited) = rt.block_on(async {
        let mut conn = RawConnection::alice(&s.pki, &s.node.addr).await?;
        let hello = Request::new(
            0,
            RequestBody::Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            },
        );
        conn.call(&hello).await?;
        let (mut handles, mut limited) = (0, 0);
        for id in 1..=30 {
            let register = Request::new(
                id,
                RequestBody::RegisterToken {
                    token: token.clone(),
                },
            );
            match conn.call(&register).await?.body {
                ResponseBody::TokenHandle { .. } => handles += 1,
                ResponseBody::Error(err) if err.code == ErrorCode::RateLimited => limited += 1,
                other => anyhow::bail!("REGISTER_TOKEN answered {other:?}"),
            }
        }
        anyhow::Ok((handles, limited))
    })?;
    // A burst of one second's worth (5), then refusals: registering is no way around the
    // limit. A slow machine may refill a few tokens during the loop.
    assert!(
        handles >= 1 && limited > 0,
        "{handles} handles, {limited} limited"
    );
    assert!(
        handles <= 12,
        "{handles} of 30 registrations admitted under 5/s"
    );
    Ok(())
}

/// The load generator's direct path (`skv bench --direct`) speaks on a [`Pipeline`]: the same
/// registration, then a batch of requests written at once. The node judges each request of
/// the batch by the handle's scopes and expiry on its own, and the answers find their
/// requests by id.
#[test]
fn a_pipelined_batch_is_judged_request_by_request_through_its_handle() -> anyhow::Result<()> {
    let s = Secured::start(&["--leeway", "0", "--audit-allows"])?;
    let token = s.issue(&["--sub", "pia", "--allow", "read:pia/", "--ttl", "3s"])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut opts = s.pki.alice(&s.node.addr);
        opts.token = Some(token.clone());
        let mut pipeline = Pipeline::connect(&opts).await?;
        let first = skv_client::pipeline::FIRST_REQUEST_ID;
        let batch = [
            RequestBody::Get {
                key: Bytes::from_static(b"pia/a"),
            },
            RequestBody::Get {
                key: Bytes::from_static(b"quinn/a"),
            },
            RequestBody::Put {
                key: Bytes::from_static(b"pia/a"),
                value: Bytes::from_static(b"v"),
            },
            RequestBody::Get {
                key: Bytes::from_static(b"pia/b"),
            },
        ];
        for (i, body) in batch.into_iter().enumerate() {
            pipeline.feed(first + 10 * i as u64, body).await?;
        }
        pipeline.flush().await?;
        let mut answers = std::collections::BTreeMap::new();
        while answers.len() < 4 {
            let (id, body) = pipeline.answer().await?;
            assert!(answers.insert(id, body).is_none(), "id {id} answered twice");
        }
        let ids: Vec<u64> = answers.keys().copied().collect();
        assert_eq!(ids, vec![first, first + 10, first + 20, first + 30]);
        assert!(
            matches!(answers[&first], Ok(ResponseBody::NotFound)),
            "in the grant"
        );
        refused_with(answers.remove(&(first + 10)).unwrap(), ErrorCode::Forbidden);
        let msg = refused_with(answers.remove(&(first + 20)).unwrap(), ErrorCode::Forbidden);
        assert!(msg.contains("write on this key"), "{msg}");
        assert!(matches!(answers[&(first + 30)], Ok(ResponseBody::NotFound)));

        // Past exp, every request of the next batch is refused, on the same connection.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        for i in 0..3 {
            let key = Bytes::from(format!("pia/{i}"));
            pipeline
                .feed(first + 100 + i, RequestBody::Get { key })
                .await?;
        }
        pipeline.flush().await?;
        for _ in 0..3 {
            let (id, body) = pipeline.answer().await?;
            assert!((first + 100..first + 103).contains(&id), "id {id}");
            let msg = refused_with(body, ErrorCode::Unauthenticated);
            assert!(msg.contains("expired"), "{msg}");
        }
        assert!(
            pipeline.buffered_answer().is_none(),
            "nothing more was sent"
        );
        anyhow::Ok(())
    })?;
    // One registration; the refused GET audited with pia's name and the key it asked for.
    assert!(audited(&s, |l| l["op"] == "register_token" && l["sub"] == "pia"));
    assert!(audited(&s, |l| l["op"] == "get"
        && l["key"] == "quinn/a"
        && l["decision"] == "deny"
        && l["sub"] == "pia"));
    Ok(())
}
