//! Every operation round-trips through the CLI and the library.

use bytes::Bytes;
use skv_client::{CasResult, Connection};
use skv_tests::{code, err_text, skv, with, Node, Pki};

#[test]
fn cli_round_trips_every_op() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let alice = pki.alice_args(&node.addr);

    let out = skv(&with(alice.clone(), &["ping"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    assert!(String::from_utf8(out.stdout)?.starts_with("PONG from n1"));

    let out = skv(&with(alice.clone(), &["put", "users/alice", "hello"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let v1: u64 = String::from_utf8(out.stdout)?
        .trim()
        .strip_prefix("OK version ")
        .expect("put prints its version")
        .parse()?;

    // Not a terminal: exactly the value's bytes, no newline.
    let out = skv(&with(alice.clone(), &["get", "users/alice"]), None)?;
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout, b"hello");

    // Binary-safe values through stdin, and JSON output with base64 for non-UTF-8.
    let binary = [0u8, 159, 146, 150, 255, b'\n', 0];
    let out = skv(&with(alice.clone(), &["put", "bin", "-"]), Some(&binary))?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let out = skv(&with(alice.clone(), &["get", "bin"]), None)?;
    assert_eq!(out.stdout, binary);
    let out = skv(
        &with(alice.clone(), &["--json", "get", "users/alice"]),
        None,
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(json["value"], "hello");
    assert_eq!(json["version"], v1);

    // CAS: right version writes, stale version conflicts with exit 6 and changes nothing.
    let v1s = v1.to_string();
    let out = skv(
        &with(
            alice.clone(),
            &["cas", "users/alice", "--expect-version", &v1s, "second"],
        ),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let out = skv(
        &with(
            alice.clone(),
            &["cas", "users/alice", "--expect-version", &v1s, "third"],
        ),
        None,
    )?;
    assert_eq!(code(&out), 6);
    assert!(
        err_text(&out).contains("CAS conflict"),
        "{}",
        err_text(&out)
    );
    let out = skv(&with(alice.clone(), &["get", "users/alice"]), None)?;
    assert_eq!(out.stdout, b"second");
    let out = skv(
        &with(
            alice.clone(),
            &["cas", "fresh", "--expect-version", "0", "x"],
        ),
        None,
    )?;
    assert_eq!(code(&out), 0, "version 0 creates a missing key");

    // Scan: in order, under the prefix only.
    for k in ["users/bob", "users/carol", "other/x"] {
        assert_eq!(code(&skv(&with(alice.clone(), &["put", k, "v"]), None)?), 0);
    }
    let out = skv(&with(alice.clone(), &["scan", "users/"]), None)?;
    assert_eq!(code(&out), 0);
    assert_eq!(
        String::from_utf8(out.stdout)?,
        "users/alice\tsecond\nusers/bob\tv\nusers/carol\tv\n"
    );

    // Delete, then the key is gone: exit 1 and nothing on stdout.
    assert_eq!(
        code(&skv(&with(alice.clone(), &["delete", "users/bob"]), None)?),
        0
    );
    let out = skv(&with(alice.clone(), &["get", "users/bob"]), None)?;
    assert_eq!(code(&out), 1);
    assert!(out.stdout.is_empty());
    assert_eq!(
        code(&skv(&with(alice.clone(), &["delete", "users/bob"]), None)?),
        1
    );
    Ok(())
}

#[test]
fn scan_pages_with_a_cursor() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let alice = pki.alice_args(&node.addr);
    let rt = tokio::runtime::Runtime::new()?;
    let keys: Vec<String> = (0..25).map(|i| format!("p/{i:03}")).collect();
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for k in &keys {
            conn.put(k.clone(), "v").await?;
        }
        conn.put("q/outside", "v").await?;
        // Pages of 10 via the library: 10, 10, 5, then no cursor.
        let mut cursor: Option<Bytes> = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        loop {
            let page = conn.scan("p/", 10, cursor.take()).await?;
            pages += 1;
            seen.extend(
                page.entries
                    .iter()
                    .map(|e| String::from_utf8_lossy(&e.key).into_owned()),
            );
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, keys);
        assert_eq!(pages, 3);
        anyhow::Ok(())
    })?;

    // The CLI: --limit stops early and tells how to resume; --cursor resumes after it.
    let out = skv(&with(alice.clone(), &["scan", "p/", "--limit", "4"]), None)?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    assert!(
        err_text(&out).contains("--cursor 'p/003'"),
        "{}",
        err_text(&out)
    );
    let out = skv(
        &with(
            alice.clone(),
            &[
                "--json", "scan", "p/", "--cursor", "p/003", "--limit", "100",
            ],
        ),
        None,
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let entries = json["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 21);
    assert_eq!(entries[0]["key"], "p/004");
    assert!(json["cursor"].is_null());
    Ok(())
}

#[test]
fn many_requests_in_flight_on_one_connection() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        // 500 concurrent writes and reads share the socket; each answer must reach its caller.
        let mut tasks = Vec::new();
        for i in 0..500u32 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{i}");
                let version = conn.put(key.clone(), i.to_string()).await?;
                let (read_version, value) = conn.get(key).await?.expect("just written");
                assert_eq!(read_version, version);
                assert_eq!(value, i.to_string().as_bytes());
                anyhow::Ok(version)
            }));
        }
        let mut versions = Vec::new();
        for t in tasks {
            versions.push(t.await??);
        }
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), 500, "every write got its own version");
        match conn.cas("k1", 0, "x").await? {
            CasResult::Conflict(current) => assert!(current > 0),
            CasResult::Written(_) => panic!("CAS with 0 on an existing key must conflict"),
        }
        anyhow::Ok(())
    })
}
