//! Checkpoints 2 and 3 against real nodes: tokens from `skv token issue`, every malformed or
//! hostile token the issue lists, scopes, per-connection expiry, rotation with hot reload, and
//! the audit log.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skv_certs::LeafSpec;
use skv_client::{ClientError, Connection};
use skv_proto::{ControlRequest, ErrorCode};
use skv_tests::jwt;
use skv_tests::{code, err_text, skv, strs, with, Node, Secured};

/// What these tests do with a [`Secured`] node beyond starting it.
trait AuthTests {
    /// Run `skv` as alice with `token`.
    fn run(&self, token: &str, cmd: &[&str]) -> anyhow::Result<std::process::Output>;
    /// The kid of the keyset's first key.
    fn kid(&self) -> anyhow::Result<String>;
    /// The issuer's private key, PEM.
    fn issuer_pem(&self) -> anyhow::Result<String>;
    /// The audit log's lines, once the (asynchronous) writer has written some.
    fn audit_lines(&self) -> Vec<Value>;
}

impl AuthTests for Secured {
    fn run(&self, token: &str, cmd: &[&str]) -> anyhow::Result<std::process::Output> {
        skv(
            &with(
                with(self.pki.alice_args(&self.node.addr), &["--token", token]),
                cmd,
            ),
            None,
        )
    }

    fn kid(&self) -> anyhow::Result<String> {
        let keyset: Value = serde_json::from_slice(&std::fs::read(self.keys.join("keyset.json"))?)?;
        Ok(keyset["keys"][0]["kid"].as_str().expect("kid").to_owned())
    }

    fn issuer_pem(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.keys.join("issuer-key.pem"))?)
    }

    fn audit_lines(&self) -> Vec<Value> {
        // The audit writer is asynchronous; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.audit).unwrap_or_default();
            if !text.is_empty() || Instant::now() > deadline {
                return text
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn assert_refused(out: &std::process::Output, category: &str) {
    assert_eq!(
        code(out),
        3,
        "expected exit 3 ({category}); stderr: {}",
        err_text(out)
    );
    let text = err_text(out);
    assert!(
        text.contains(category),
        "stderr should name {category:?}: {text}"
    );
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
}

fn alice_scopes() -> Value {
    json!([{ "prefix": "users/alice/", "ops": ["read", "write"] }])
}

#[test]
fn scopes_decide_and_refusals_are_audited_without_secrets() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let token = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read,write:users/alice/",
        "--ttl",
        "5m",
    ])?;

    assert_eq!(code(&s.run(&token, &["put", "users/alice/x", "1"])?), 0);
    let out = s.run(&token, &["get", "users/alice/x"])?;
    assert_eq!(out.stdout, b"1");
    assert_eq!(code(&s.run(&token, &["scan", "users/alice/"])?), 0);

    // Outside the grant: another prefix, an op not granted, a scan wider than the grant.
    assert_refused(&s.run(&token, &["put", "users/bob/x", "1"])?, "forbidden");
    assert_refused(&s.run(&token, &["delete", "users/alice/x"])?, "forbidden");
    assert_refused(&s.run(&token, &["scan", "users/"])?, "forbidden");
    assert_refused(&s.run(&token, &["get", "users/alicex"])?, "forbidden");

    // No token at all.
    let out = skv(
        &with(s.pki.alice_args(&s.node.addr), &["get", "users/alice/x"]),
        None,
    )?;
    assert_eq!(code(&out), 3, "{}", err_text(&out));

    let lines = s.audit_lines();
    let denies: Vec<&Value> = lines.iter().filter(|l| l["decision"] == "deny").collect();
    assert!(denies.len() >= 4, "{lines:?}");
    assert!(denies
        .iter()
        .any(|l| l["sub"] == "alice" && l["key"] == "users/bob/x" && l["op"] == "put"));
    assert!(denies
        .iter()
        .all(|l| l["peer"].as_str().is_some_and(|p| p.len() == 64)));
    let raw = std::fs::read_to_string(&s.audit)?;
    let signature = token.rsplit('.').next().expect("signature");
    assert!(
        !raw.contains(signature) && !raw.contains(&token),
        "no token material in the audit log"
    );
    let node_log = std::fs::read_to_string(&s.node.log)?;
    assert!(
        !node_log.contains(signature),
        "no token material in the node log"
    );
    Ok(())
}

/// A scope refusal says "forbidden" once (the code), names the grant that is missing, and
/// speaks of a key only for requests that have one.
#[test]
fn scope_refusals_name_the_missing_grant_once() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let token = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read,write:users/alice/",
        "--ttl",
        "5m",
    ])?;
    for (cmd, grant) in [
        (&["put", "users/bob/x", "1"][..], "write on this key"),
        (&["delete", "users/alice/x"][..], "delete on this key"),
        (&["get", "users/alicex"][..], "read on this key"),
        (&["scan", "users/"][..], "read on this prefix"),
    ] {
        let out = s.run(&token, cmd)?;
        assert_refused(&out, grant);
        let text = err_text(&out);
        assert_eq!(
            text.matches("forbidden").count(),
            1,
            "{cmd:?}: say forbidden once: {text}"
        );
    }

    // A control request has no key: the refusal says what it needs instead.
    let rt = tokio::runtime::Runtime::new()?;
    let mut opts = s.pki.alice(&s.node.addr);
    opts.token = Some(token);
    let refused = rt.block_on(async {
        let conn = Connection::connect(&opts).await?;
        anyhow::Ok(conn.control(&ControlRequest::Status).await)
    })?;
    match refused {
        Err(ClientError::Refused(err)) => {
            assert_eq!(err.code, ErrorCode::Forbidden, "{err}");
            assert!(err.message.contains("admin"), "{err}");
            assert!(
                !err.message.contains("key:") && !err.message.contains("this key"),
                "{err}"
            );
            assert!(!err.message.contains("forbidden"), "{err}");
        }
        other => panic!("a STATUS without the admin scope must be refused, got {other:?}"),
    }
    Ok(())
}

#[test]
fn hostile_and_malformed_tokens_are_refused_and_the_node_keeps_serving() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let kid = s.kid()?;
    let pem = s.issuer_pem()?;
    let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": kid });
    let good = jwt::claims("alice", alice_scopes());
    let sign = |h: &Value, c: &Value| jwt::sign_eddsa(&pem, h, c).expect("sign");
    let with_claim = |name: &str, value: Value| {
        let mut c = good.clone();
        c[name] = value;
        c
    };
    let without = |name: &str| {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(name);
        c
    };
    let keyset: Value = serde_json::from_slice(&std::fs::read(s.keys.join("keyset.json"))?)?;
    let public_x = keyset["keys"][0]["x"]
        .as_str()
        .expect("Ed25519 x")
        .to_owned();
    let good_token = sign(&header, &good);
    let (signed_part, _) = good_token.rsplit_once('.').expect("three segments");
    let now = jwt::now();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.",
                jwt::signing_input(&json!({"alg": "none", "kid": kid}), &good)
            ),
            "invalid token",
        ),
        (
            "HS256 keyed with the public key",
            jwt::sign_hs256(
                public_x.as_bytes(),
                &json!({"alg": "HS256", "kid": kid}),
                &good,
            ),
            "invalid token",
        ),
        (
            "HS256 keyed with the raw public key",
            jwt::sign_hs256(
                &base64_url(&public_x),
                &json!({"alg": "HS256", "kid": kid}),
                &good,
            ),
            "invalid token",
        ),
        (
            "stripped signature",
            format!("{signed_part}."),
            "invalid token",
        ),
        (
            "empty signature segment",
            signed_part.to_owned(),
            "invalid token",
        ),
        ("four segments", format!("{good_token}.x"), "invalid token"),
        (
            "expired by leeway + 1 s",
            sign(&header, &with_claim("exp", json!(now - 6))),
            "expired",
        ),
        (
            "nbf in the future",
            sign(&header, &with_claim("nbf", json!(now + 120))),
            "invalid token",
        ),
        (
            "exp as a string",
            sign(&header, &with_claim("exp", json!((now + 300).to_string()))),
            "invalid token",
        ),
        (
            "missing aud",
            sign(&header, &without("aud")),
            "invalid token",
        ),
        (
            "missing iss",
            sign(&header, &without("iss")),
            "invalid token",
        ),
        (
            "missing exp",
            sign(&header, &without("exp")),
            "invalid token",
        ),
        (
            "missing nbf",
            sign(&header, &without("nbf")),
            "invalid token",
        ),
        (
            "wrong aud",
            sign(&header, &with_claim("aud", json!("another-cluster"))),
            "audience",
        ),
        (
            "wrong iss",
            sign(&header, &with_claim("iss", json!("mallory"))),
            "invalid token",
        ),
        (
            "unknown kid",
            sign(&json!({"alg": "EdDSA", "kid": "nope"}), &good),
            "invalid token",
        ),
        (
            "kid as a path",
            sign(
                &json!({"alg": "EdDSA", "kid": "../keys/issuer-key.pem"}),
                &good,
            ),
            "invalid token",
        ),
        (
            "kid as a URL",
            sign(
                &json!({"alg": "EdDSA", "kid": "https://evil.example/jwks.json"}),
                &good,
            ),
            "invalid token",
        ),
        (
            "jku header",
            sign(
                &json!({"alg": "EdDSA", "kid": kid, "jku": "https://evil.example/jwks.json"}),
                &good,
            ),
            "invalid token",
        ),
        (
            "x5u header",
            sign(
                &json!({"alg": "EdDSA", "kid": kid, "x5u": "https://evil.example/c.pem"}),
                &good,
            ),
            "invalid token",
        ),
        (
            "over 8 KiB",
            sign(&header, &with_claim("pad", json!("x".repeat(9000)))),
            "token",
        ),
    ];
    for (name, token, category) in &cases {
        let out = s.run(token, &["get", "users/alice/x"])?;
        assert_eq!(
            code(&out),
            3,
            "{name}: expected exit 3, stderr: {}",
            err_text(&out)
        );
        assert!(
            err_text(&out).contains(category),
            "{name}: expected {category:?}: {}",
            err_text(&out)
        );
    }
    // The genuine token still works: every refusal cost only its own request.
    assert_eq!(
        code(&s.run(&good_token, &["put", "users/alice/x", "ok"])?),
        0
    );
    Ok(())
}

fn base64_url(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}

#[test]
fn bound_tokens_only_work_over_their_certificate() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let alice_cert = s.pki.layout.client_cert("alice").display().to_string();
    let bound = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read:users/alice/",
        "--ttl",
        "5m",
        "--bind-cert",
        &alice_cert,
    ])?;
    assert_eq!(
        code(&s.run(&bound, &["get", "users/alice/x"])?),
        1,
        "allowed, key absent"
    );

    // The same token over bob's certificate: a stolen token is useless elsewhere.
    let (bob_cert, bob_key) = s.pki.issue("bob", &LeafSpec::client("bob"))?;
    let args = strs(&[
        "--addr",
        &s.node.addr,
        "--ca",
        &s.pki.layout.ca_cert().display().to_string(),
        "--cert",
        &bob_cert.display().to_string(),
        "--key",
        &bob_key.display().to_string(),
        "--token",
        &bound,
        "get",
        "users/alice/x",
    ]);
    assert_refused(&skv(&args, None)?, "not bound to this certificate");
    Ok(())
}

#[test]
fn require_bound_tokens_refuses_unbound_ones() -> anyhow::Result<()> {
    let s = Secured::start(&["--require-bound-tokens"])?;
    let unbound = s.issue(&["--sub", "alice", "--allow", "read:", "--ttl", "5m"])?;
    assert_refused(
        &s.run(&unbound, &["get", "k"])?,
        "not bound to this certificate",
    );
    let alice_cert = s.pki.layout.client_cert("alice").display().to_string();
    let bound = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read:",
        "--ttl",
        "5m",
        "--bind-cert",
        &alice_cert,
    ])?;
    assert_eq!(code(&s.run(&bound, &["get", "k"])?), 1);
    Ok(())
}

#[test]
fn per_connection_tokens_stop_working_at_expiry() -> anyhow::Result<()> {
    let s = Secured::start(&["--auth", "per-connection", "--leeway", "0"])?;
    let token = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read,write:users/alice/",
        "--ttl",
        "2s",
    ])?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut opts = s.pki.alice(&s.node.addr);
        opts.token = Some(token.clone());
        let conn = Connection::connect(&opts).await?;
        conn.put("users/alice/a", "1").await?;
        assert!(matches!(
            conn.put("users/bob/a", "1").await,
            Err(ClientError::Refused(_))
        ));
        tokio::time::sleep(Duration::from_millis(3100)).await;
        match conn.get("users/alice/a").await {
            Err(ClientError::Refused(err)) => assert!(err.message.contains("expired"), "{err}"),
            other => panic!("a request after expiry must be refused, got {other:?}"),
        }
        // A new connection with the expired token is refused at HELLO.
        match Connection::connect(&opts).await {
            Err(ClientError::Refused(err)) => assert!(err.message.contains("expired"), "{err}"),
            other => panic!("HELLO with an expired token must be refused, got {other:?}"),
        }
        anyhow::Ok(())
    })
}

/// Wait until `check` holds, polling; the node picks keyset changes up within ~1 s.
fn eventually(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("timed out waiting for: {what}")
}

fn write_token(s: &Secured, token: &str) -> anyhow::Result<i32> {
    Ok(code(&s.run(token, &["put", "users/alice/r", "v"])?))
}

#[test]
fn rotation_and_retirement_take_effect_without_a_restart() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let old_kid = s.kid()?;
    let old = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "write:users/alice/",
        "--ttl",
        "10m",
    ])?;
    assert_eq!(write_token(&s, &old)?, 0);

    // Rotate: a new signing key; both verify.
    let keys = s.keys.display().to_string();
    let out = skv(
        &strs(&["keys", "init", "--dir", &keys, "--kid", "k2"]),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    assert!(
        s.keys.join(format!("issuer-key-{old_kid}.pem")).exists(),
        "old key kept"
    );
    let new = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "write:users/alice/",
        "--ttl",
        "10m",
    ])?;
    eventually("the new kid verifies", || Ok(write_token(&s, &new)? == 0))?;
    assert_eq!(
        write_token(&s, &old)?,
        0,
        "the old kid still verifies until retired"
    );

    // Retire the old kid: its tokens stop working, cached or not.
    let out = skv(
        &strs(&["keys", "retire", "--dir", &keys, "--kid", &old_kid]),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    eventually("the retired kid is refused", || {
        Ok(write_token(&s, &old)? == 3)
    })?;
    assert_eq!(write_token(&s, &new)?, 0);

    // A broken keyset on reload keeps the previous one. Only log lines written after the bad
    // file count: earlier lines (startup, the reloads above) mention the keyset too.
    let logged_before = std::fs::read_to_string(&s.node.log)?.len();
    std::fs::write(s.keys.join("keyset.json"), "{ not json")?;
    eventually("the node logs that it refused the broken keyset", || {
        let log = std::fs::read_to_string(&s.node.log)?;
        let since = log.get(logged_before..).unwrap_or_default();
        Ok(since.contains("keyset reload failed; keeping the previous keyset"))
    })?;
    assert_eq!(
        write_token(&s, &new)?,
        0,
        "a broken keyset must not lock everyone out"
    );
    Ok(())
}

#[test]
fn a_token_is_valid_at_every_node_with_the_same_keyset() -> anyhow::Result<()> {
    let s = Secured::start(&[])?;
    let token = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read,write:users/alice/",
        "--ttl",
        "5m",
    ])?;
    // A second node with its own data and the same keyset: no shared state but the keys.
    let data2 = s.pki.dir().join("data2");
    let keyset = s.keys.join("keyset.json").display().to_string();
    let other = Node::start_tls(&s.pki, &data2, &["--keyset", &keyset])?;
    for addr in [&s.node.addr, &other.addr] {
        let out = skv(
            &with(
                s.pki.alice_args(addr),
                &["--token", &token, "put", "users/alice/n", "v"],
            ),
            None,
        )?;
        assert_eq!(code(&out), 0, "{addr}: {}", err_text(&out));
    }
    Ok(())
}

#[test]
fn tokens_from_a_file_or_a_profile_and_audited_allows() -> anyhow::Result<()> {
    let s = Secured::start(&["--audit-allows"])?;
    let token = s.issue(&[
        "--sub",
        "alice",
        "--allow",
        "read,write:users/alice/",
        "--ttl",
        "5m",
    ])?;
    let token_file = s.pki.dir().join("alice.token");
    std::fs::write(&token_file, format!("{token}\n"))?;

    // --token-file
    let out = skv(
        &with(
            s.pki.alice_args(&s.node.addr),
            &[
                "--token-file",
                &token_file.display().to_string(),
                "put",
                "users/alice/f",
                "1",
            ],
        ),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));

    // A profile naming the token file (relative to the profile).
    let profile = s.pki.layout.client_profile("alice");
    let mut text = std::fs::read_to_string(&profile)?;
    text.push_str("token_file = \"../alice.token\"\n");
    std::fs::write(&profile, text)?;
    let out = skv(
        &with(s.pki.alice_args(&s.node.addr), &["get", "users/alice/f"]),
        None,
    )?;
    assert_eq!(out.stdout, b"1", "{}", err_text(&out));

    // A missing token file is a usage error naming the file.
    let out = skv(
        &with(
            s.pki.alice_args(&s.node.addr),
            &["--token-file", "/nonexistent/t", "get", "k"],
        ),
        None,
    )?;
    assert_eq!(code(&out), 2);
    assert!(
        err_text(&out).contains("/nonexistent/t"),
        "{}",
        err_text(&out)
    );

    let lines = s.audit_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["decision"] == "allow" && l["op"] == "put" && l["key"] == "users/alice/f"),
        "{lines:?}"
    );
    Ok(())
}
