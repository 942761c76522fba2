//! Issue 12's limits per identity and per connection, load shedding, keys-only scans and the
//! metrics endpoint, against real nodes. Each test pushes one limit over the edge and checks
//! both sides: the offender is refused with a typed, retryable error, and everyone else keeps
//! being served.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use skv_client::{ClientError, ClusterClient, ConnectOptions, Connection};
use skv_proto::{EncodeFrame, ErrorCode, Request, RequestBody, ResponseBody, PROTOCOL_VERSION};
use skv_tests::cluster::{free_ports, LocalCluster};
use skv_tests::{code, err_text, skv, with, Secured};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Alice's connection options on `s` with a token for `sub` granting `allow`.
fn as_sub(s: &Secured, sub: &str, allow: &str) -> anyhow::Result<ConnectOptions> {
    let mut opts = s.pki.alice(&s.node.addr);
    opts.token = Some(s.issue(&["--sub", sub, "--allow", allow, "--ttl", "10m"])?);
    Ok(opts)
}

/// The throttling error of `result`, if that is what it is.
fn throttled(result: &Result<Option<(u64, Bytes)>, ClientError>) -> Option<(ErrorCode, u32)> {
    match result {
        Err(ClientError::Server(wire))
            if matches!(wire.code, ErrorCode::RateLimited | ErrorCode::Overloaded) =>
        {
            Some((wire.code, wire.retry_after_ms.unwrap_or(0)))
        }
        _ => None,
    }
}

#[test]
fn an_identity_over_its_request_rate_is_told_when_to_retry_and_others_are_not_slowed(
) -> anyhow::Result<()> {
    let s = Secured::start(&["--rate-limit-rps", "20"])?;
    let rt = runtime()?;
    rt.block_on(async {
        let alice = Connection::connect(&as_sub(&s, "alice", "read,write:")?).await?;
        // Another connection, another certificate-less path to the same subject: one bucket.
        let alice_too = Connection::connect(&as_sub(&s, "alice", "read:")?).await?;
        let bob = Connection::connect(&as_sub(&s, "bob", "read:")?).await?;
        alice.put("k", "v").await?;
        // 60 at once: the burst is one second's worth (20), so most are refused.
        let burst = futures_util::future::join_all((0..60).map(|i| {
            let conn = if i % 2 == 0 { &alice } else { &alice_too };
            conn.get("k")
        }))
        .await;
        let refused: Vec<(ErrorCode, u32)> = burst.iter().filter_map(throttled).collect();
        let served = burst.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        assert!(
            !refused.is_empty() && served >= 1,
            "{served} served, {} refused",
            refused.len()
        );
        assert!(
            served <= 25,
            "{served} of 60 served at once under a 20/s limit"
        );
        for (code, retry_after) in &refused {
            assert_eq!(*code, ErrorCode::RateLimited);
            assert!(
                (1..=1000).contains(retry_after),
                "retry after {retry_after} ms"
            );
        }
        // The error says what to do, and nothing about the key or the token.
        let message = burst
            .iter()
            .find_map(|r| r.as_ref().err())
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(
            message.contains("rate_limited") && message.contains("retry after"),
            "{message}"
        );
        // Bob has his own bucket: alice's burst does not cost him anything.
        for _ in 0..10 {
            assert_eq!(bob.get("k").await?.map(|(_, v)| v), Some(Bytes::from("v")));
        }
        // The cluster client honours the retry-after: 40 sequential reads at 20/s all
        // succeed (the limit slows them; none fails).
        let client =
            ClusterClient::connect(as_sub(&s, "alice", "read:")?, vec![s.node.addr.clone()])
                .await?;
        for _ in 0..40 {
            assert!(client.get("k").await?.is_some());
        }
        anyhow::Ok(())
    })
}

#[test]
fn answer_bytes_count_against_the_byte_rate() -> anyhow::Result<()> {
    // 100 KB/s, so the bucket holds its minimum of one frame (1 MiB).
    let s = Secured::start(&["--rate-limit-bytes-per-sec", "100000"])?;
    let rt = runtime()?;
    rt.block_on(async {
        let alice = Connection::connect(&as_sub(&s, "alice", "read,write:")?).await?;
        let value = Bytes::from(vec![b'x'; 700 * 1024]);
        alice.put("big", value.clone()).await?;
        // The PUT took 700 KiB of the bucket; the first GET's answer takes the rest and more.
        let first = alice.get("big").await;
        assert!(matches!(first, Ok(Some(_))), "{first:?}");
        let second = alice.get("big").await;
        let (code, retry_after) = throttled(&second)
            .ok_or_else(|| anyhow::anyhow!("a GET passed with its identity in debt: {second:?}"))?;
        // Hundreds of KiB of debt at 100 KB/s: seconds, not milliseconds.
        assert_eq!(code, ErrorCode::RateLimited);
        assert!(retry_after >= 1000, "retry after {retry_after} ms");
        // A small request of another identity passes at once.
        let bob = Connection::connect(&as_sub(&s, "bob", "read:")?).await?;
        assert_eq!(bob.get("absent").await?, None);
        anyhow::Ok(())
    })
}

/// Keep `depth` PUTs in flight on `conn` until `stop`; counts failures.
async fn keep_writing(
    conn: Connection,
    depth: usize,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicU64>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..depth {
        let (conn, stop, failed) = (conn.clone(), stop.clone(), failed.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                if conn
                    .put(format!("load/{lane}/{}", i % 8), "x")
                    .await
                    .is_err()
                {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// One scrape of `/metrics` at `addr`: the body.
async fn scrape(addr: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: skv\r\n\r\n")
        .await?;
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no HTTP head: {response:?}"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    anyhow::ensure!(head.contains("application/openmetrics-text"), "{head}");
    Ok(body.to_owned())
}

/// Every sample of an exposition: `name{labels}` → value. Fails on a line that is not a
/// comment or a sample, and on a label value outside the fixed sets.
fn samples(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let ops = [
        "hello",
        "ping",
        "get",
        "put",
        "delete",
        "scan",
        "cas",
        "cluster_map",
        "control",
        "import",
        "raft",
    ];
    let fixed: [(&str, &[&str]); 8] = [
        ("op", &ops),
        (
            "outcome",
            &[
                "ok",
                "not_found",
                "cas_conflict",
                "redirect",
                "refused",
                "rate_limited",
                "overloaded",
                "unavailable",
                "bad_request",
                "error",
            ],
        ),
        ("checkpoint", &["admission", "token", "scope", "role"]),
        ("result", &["ok", "failed", "hit", "miss"]),
        ("limit", &["requests", "bytes"]),
        ("stage", &["hello", "handshake"]),
        ("what", &["group_commit", "raft_log"]),
        ("reason", &[]),
    ];
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("not a sample: {line}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| anyhow::anyhow!("not a number: {line}"))?;
        if let Some((name, labels)) = series.split_once('{') {
            anyhow::ensure!(name.starts_with("skv_"), "{line}");
            let labels = labels
                .strip_suffix('}')
                .ok_or_else(|| anyhow::anyhow!("unclosed labels: {line}"))?;
            for pair in labels.split(',') {
                let (key, v) = pair
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("bad label: {line}"))?;
                let v = v.trim_matches('"');
                match fixed.iter().find(|(k, _)| *k == key) {
                    // Reasons are fixed codes: lower case and underscores only.
                    Some(("reason", _)) => anyhow::ensure!(
                        !v.is_empty() && v.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                        "{line}"
                    ),
                    Some((_, allowed)) => anyhow::ensure!(allowed.contains(&v), "{line}"),
                    None if key == "le" => {
                        anyhow::ensure!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}")
                    }
                    None => anyhow::bail!("unexpected label `{key}`: {line}"),
                }
            }
        } else {
            anyhow::ensure!(series.starts_with("skv_"), "{line}");
        }
        out.insert(series.to_owned(), value);
    }
    anyhow::ensure!(text.ends_with("# EOF\n"), "no # EOF at the end");
    Ok(out)
}

#[test]
fn an_overloaded_node_sheds_new_connections_and_keeps_serving_established_ones(
) -> anyhow::Result<()> {
    let port = free_ports(1)?[0];
    let metrics = format!("127.0.0.1:{port}");
    let s = Secured::start(&["--overload-inflight", "24", "--metrics-listen", &metrics])?;
    let rt = runtime()?;
    rt.block_on(async {
        let opts = as_sub(&s, "alice", "read,write:")?;
        let established = Connection::connect(&opts).await?;
        established.put("mine", "1").await?;
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        // 40 durable writes in flight at all times: over the threshold (24), under twice it.
        let load = tokio::spawn(keep_writing(
            Connection::connect(&opts).await?,
            40,
            stop.clone(),
            failed.clone(),
        ));
        let began = Instant::now();
        let mut shed = None;
        let mut served = 0;
        while began.elapsed() < Duration::from_secs(20) && shed.is_none() {
            // The established client keeps working throughout.
            assert!(established.get("mine").await?.is_some());
            served += 1;
            match Connection::connect(&opts).await {
                Err(ClientError::Server(wire)) if wire.code == ErrorCode::Overloaded => {
                    shed = Some(wire)
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(other) => anyhow::bail!("a new connection failed otherwise: {other}"),
            }
        }
        let shed = shed.ok_or_else(|| anyhow::anyhow!("no connection was shed in 20 s"))?;
        assert_eq!(shed.retry_after_ms, Some(200), "{shed:?}");
        assert!(shed.message.contains("--overload-inflight"), "{shed:?}");
        stop.store(true, Ordering::Relaxed);
        load.await?;
        // The load's own requests were all served: established work is never shed.
        assert_eq!(failed.load(Ordering::Relaxed), 0);
        assert!(served >= 1);
        // Once the load is gone, a new connection gets in.
        let mut admitted = false;
        for _ in 0..50 {
            if Connection::connect(&opts).await.is_ok() {
                admitted = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            admitted,
            "new connections still shed after the load stopped"
        );
        let m = samples(&scrape(&metrics).await?)?;
        assert!(
            m.get("skv_shed_total{stage=\"hello\"}")
                .copied()
                .unwrap_or(0.0)
                >= 1.0
        );
        anyhow::Ok(())
    })
}

/// A GET frame for `key` with id `id` and `token`, length prefix included.
fn get_frame(id: u64, key: &str, token: &Bytes) -> BytesMut {
    let request = Request {
        id,
        token: Some(token.clone()),
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Get {
            key: Bytes::copy_from_slice(key.as_bytes()),
        },
    };
    let mut payload = BytesMut::new();
    request.encode_payload(&mut payload);
    let mut frame = BytesMut::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[test]
fn a_client_that_pipelines_large_gets_and_never_reads_holds_bounded_memory() -> anyhow::Result<()> {
    // Linearizable GETs on a Raft node wait for their leadership check beside the connection:
    // the answers that pile up are the ones a never-reading client leaves in the node.
    let cluster = LocalCluster::start_with(1, 0, 1, &["--max-pending-bytes", "4194304"])?;
    let addr = cluster.addr("n1");
    let rt = runtime()?;
    let value = vec![b'v'; 512 * 1024];
    let before = rt.block_on(async {
        let client =
            ClusterClient::connect(cluster.client("alice", &addr), vec![addr.clone()]).await?;
        client.put("big", value.clone()).await?;
        // Warm up: the node's caches and pools at their usual size.
        for _ in 0..8 {
            client.get("big").await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.node("n1").rss_kib()
    })?;
    let token = Bytes::from(cluster.admin_token.clone());
    let opts = cluster.client("alice", &addr);
    let after = rt.block_on(async {
        let mut stream = skv_client::raw::connect_raw(&opts).await?;
        let mut hello = BytesMut::new();
        Request {
            id: 0,
            token: Some(token.clone()),
            handle: None,
            session: None,
            consistency: skv_proto::Consistency::Linearizable,
            body: RequestBody::Hello {
                min_version: PROTOCOL_VERSION,
                max_version: PROTOCOL_VERSION,
            },
        }
        .encode_payload(&mut hello);
        stream
            .write_all(&(hello.len() as u32).to_be_bytes())
            .await?;
        stream.write_all(&hello).await?;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).await?;
        let answer = skv_proto::Response::decode(Bytes::from(answer))?;
        anyhow::ensure!(
            matches!(answer.body, ResponseBody::HelloOk { .. }),
            "{answer:?}"
        );
        // 2000 GETs of a 512 KiB value: 1 GB of answers if the node kept them all. Written by
        // a task that blocks once the node stops reading; never read.
        let (mut reader, mut writer) = tokio::io::split(stream);
        let pipeline = tokio::spawn(async move {
            for id in 1..=2000u64 {
                if writer
                    .write_all(&get_frame(id, "big", &token))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            writer
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = cluster.node("n1").rss_kib()?;
        // The node still serves others meanwhile.
        let other =
            ClusterClient::connect(cluster.client("alice", &addr), vec![addr.clone()]).await?;
        assert!(other.get("big").await?.is_some());
        pipeline.abort();
        drop(reader.read(&mut [0u8; 1]).await);
        anyhow::Ok(after)
    })?;
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("node RSS before {before} KiB, after 2000 pipelined 512 KiB GETs {after} KiB (+{grown_mib} MiB)");
    // 4 MiB of pending answers, the socket buffers and a write batch in flight, with a wide
    // margin for the allocator. Measured: +1 MiB; the node before this bound (a cap of 1024
    // answers, no byte bound) grew by 149 MiB in the same test, and by up to 512 MiB had the
    // shard's read queue not refused the rest with `try again`.
    assert!(
        grown_mib < 64,
        "the node grew by {grown_mib} MiB for a client that never reads"
    );
    Ok(())
}

#[test]
fn a_keys_only_scan_returns_keys_and_versions_and_keeps_the_scope_rules() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let writer = s.issue(&["--sub", "w", "--allow", "write:", "--ttl", "10m"])?;
    let reader = s.issue(&["--sub", "r", "--allow", "read:p/", "--ttl", "10m"])?;
    let run = |token: &str, cmd: &[&str]| {
        skv(
            &with(
                with(s.pki.alice_args(&s.node.addr), &["--token", token]),
                cmd,
            ),
            None,
        )
    };
    let big = Bytes::from(vec![b'V'; 200_000]);
    let keys = ["p/a", "p/b", "p/c", "p/d", "p/e", "p/f", "p/g", "p/h"];
    let rt = runtime()?;
    rt.block_on(async {
        let mut opts = s.pki.alice(&s.node.addr);
        opts.token = Some(writer.clone());
        let conn = Connection::connect(&opts).await?;
        for key in keys.iter().chain(&["q/x"]) {
            conn.put(*key, big.clone()).await?;
        }
        anyhow::Ok(())
    })?;
    let out = run(&reader, &["scan", "p/", "--keys-only"])?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("{}\n", keys.join("\n"))
    );
    let out = run(&reader, &["--json", "scan", "p/", "--keys-only"])?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let entries = json["entries"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), keys.len(), "{json}");
    for entry in &entries {
        assert!(entry["version"].as_u64().unwrap_or(0) >= 1, "{entry}");
        assert!(entry.get("value").is_none(), "{entry}");
    }
    // The same scope rules as a full scan: `read` on the whole prefix.
    let out = run(&reader, &["scan", "", "--keys-only"])?;
    assert_eq!(code(&out), 3, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("read on this prefix"),
        "{}",
        err_text(&out)
    );
    // The library: values empty, versions set, every key in one page whatever the values
    // weigh.
    rt.block_on(async {
        let mut opts = s.pki.alice(&s.node.addr);
        opts.token = Some(reader.clone());
        let conn = Connection::connect(&opts).await?;
        let page = conn.scan_keys("p/", 0, None).await?;
        assert_eq!(page.entries.len(), keys.len());
        assert!(page
            .entries
            .iter()
            .all(|e| e.value.is_empty() && e.version > 0));
        // A full page of 200 KB values holds what fits a frame (1 MiB); keys-only, them all.
        let full = conn.scan("p/", 0, None).await?;
        assert!(full.entries.len() < keys.len(), "{}", full.entries.len());
        assert!(full.entries.iter().all(|e| e.value == big));
        anyhow::Ok(())
    })
}

#[test]
fn metrics_move_while_a_node_serves_and_carry_no_key_token_or_subject() -> anyhow::Result<()> {
    let port = free_ports(1)?[0];
    let metrics = format!("127.0.0.1:{port}");
    let s = Secured::start(&["--metrics-listen", &metrics])?;
    let rt = runtime()?;
    rt.block_on(async {
        let opts = as_sub(&s, "metrics-canary-sub", "read,write:app/")?;
        let token = opts.token.clone().unwrap_or_default();
        let first = samples(&scrape(&metrics).await?)?;
        let conn = Connection::connect(&opts).await?;
        // Served while scraping: a burst of requests beside a scrape loop.
        let scraper = {
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let mut texts = Vec::new();
                for _ in 0..5 {
                    texts.push(scrape(&metrics).await);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                texts
            })
        };
        for i in 0..50 {
            conn.put(format!("app/secret-key-{i}"), "secret-value")
                .await?;
            conn.get(format!("app/secret-key-{i}")).await?;
        }
        assert!(conn.get("app/absent").await?.is_none());
        // A refusal at checkpoint 3, and one at checkpoint 2.
        assert!(matches!(
            conn.get("other/x").await,
            Err(ClientError::Refused(_))
        ));
        let mut bad = opts.clone();
        bad.token = Some(format!("{token}x"));
        let bad = Connection::connect(&bad).await?;
        assert!(matches!(
            bad.get("app/x").await,
            Err(ClientError::Refused(_))
        ));
        for text in scraper.await? {
            samples(&text?)?;
        }
        let text = scrape(&metrics).await?;
        let last = samples(&text)?;
        let delta = |series: &str| {
            last.get(series).copied().unwrap_or(0.0) - first.get(series).copied().unwrap_or(0.0)
        };
        assert!(
            delta("skv_requests_total{op=\"put\",outcome=\"ok\"}") >= 50.0,
            "{text}"
        );
        assert!(delta("skv_requests_total{op=\"get\",outcome=\"ok\"}") >= 50.0);
        assert!(delta("skv_requests_total{op=\"get\",outcome=\"not_found\"}") >= 1.0);
        assert!(delta("skv_requests_total{op=\"get\",outcome=\"refused\"}") >= 2.0);
        assert!(delta("skv_request_duration_seconds_count{op=\"put\"}") >= 50.0);
        assert!(delta("skv_token_cache_total{result=\"hit\"}") >= 50.0);
        assert!(delta("skv_token_cache_total{result=\"miss\"}") >= 1.0);
        assert!(delta("skv_handshakes_total{result=\"ok\"}") >= 2.0);
        assert!(delta("skv_connections_accepted_total") >= 2.0);
        assert!(
            last.iter().any(
                |(k, v)| k.starts_with("skv_refusals_total{checkpoint=\"scope\"") && *v >= 1.0
            ),
            "{text}"
        );
        assert!(
            last.iter().any(
                |(k, v)| k.starts_with("skv_refusals_total{checkpoint=\"token\"") && *v >= 1.0
            ),
            "{text}"
        );
        // A sled node's writes are made durable by its Raft log's flushes.
        assert!(
            delta("skv_storage_flush_seconds_count{what=\"raft_log\"}") >= 1.0,
            "{text}"
        );
        assert!(last.contains_key("skv_audit_dropped_total"));
        assert!(last.contains_key("skv_requests_in_flight"));
        for secret in [
            "secret-key",
            "secret-value",
            "metrics-canary-sub",
            &token[..20],
        ] {
            assert!(!text.contains(secret), "the exposition contains `{secret}`");
        }
        // Nothing but GET /metrics is served, and an oversized request is refused.
        let mut stream = tokio::net::TcpStream::connect(&metrics).await?;
        stream.write_all(b"GET /admin HTTP/1.1\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let mut stream = tokio::net::TcpStream::connect(&metrics).await?;
        stream.write_all(&vec![b'A'; 16 * 1024]).await?;
        let mut response = String::new();
        let _ = stream.read_to_string(&mut response).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");
        anyhow::Ok(())
    })
}
