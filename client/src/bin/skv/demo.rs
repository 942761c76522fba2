//! `skv demo`: a narrated tour for newcomers. It makes a dev PKI and a token issuer, starts a
//! node in this process behind all three checkpoints (mutual TLS, token, scope), runs a few
//! operations through the client library (printing the CLI command that does the same), shows
//! each checkpoint refusing someone, and stops the node cleanly.

use std::path::PathBuf;

use anyhow::{bail, Context};
use skv_certs::issuer::{keys_init, mint, Alg, IssuerKey, TokenSpec};
use skv_certs::{InitOptions, KeyType, Layout};
use skv_client::{exit, CasResult, ClientError, ConnectOptions, Connection, Security};
use skv_proto::token::parse_allow;
use skv_server::config::{AuthConfig, AuthMode};
use skv_server::{Durability, Engine, NodeConfig, RunningNode, TransportConfig};

use crate::args::DemoArgs;

pub(crate) fn run(args: DemoArgs) -> u8 {
    match tour(args) {
        Ok(()) => exit::OK,
        Err(err) => {
            eprintln!("skv demo: {err:#}");
            exit::SERVER
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn tour(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let temp_used = args.dir.is_none();
    let dir: PathBuf = match args.dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::Builder::new().prefix("skv-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let layout = Layout::new(&dir);

    step(
        1,
        "A development PKI: a cluster CA, a node certificate, a client certificate",
    );
    if layout.ca_cert().exists()
        && layout.client_profile("alice").exists()
        && layout.node_cert("n1").exists()
    {
        println!("reusing the PKI in {}", dir.display());
    } else {
        skv_certs::init(&InitOptions {
            dir: dir.clone(),
            cluster: "demo".into(),
            nodes: vec!["n1".into()],
            clients: vec!["alice".into()],
            key_type: KeyType::P256,
            force: false,
        })
        .context("cannot create the demo PKI")?;
        println!(
            "$ skv certs init --dir {} --cluster demo --nodes n1 --clients alice",
            dir.display()
        );
    }
    println!(
        "wrote {} (CA), {} and {} (client profile)",
        layout.ca_cert().display(),
        layout.node_cert("n1").display(),
        layout.client_profile("alice").display()
    );

    step(
        2,
        "A token issuer, and a 15-minute token for alice: read and write under users/, bound to her certificate",
    );
    let keys = dir.join("keys");
    let issuer = if keys.join("keyset.json").exists() {
        IssuerKey::load(&keys).context("cannot load the demo issuer key")?
    } else {
        keys_init(&keys, Alg::EdDSA, None).context("cannot create the demo issuer key")?;
        IssuerKey::load(&keys).context("cannot load the demo issuer key")?
    };
    println!("$ skv keys init --dir {}", keys.display());
    let alice_cert = std::fs::read(layout.client_cert("alice"))?;
    let token = mint(
        &issuer,
        &TokenSpec {
            sub: "alice".into(),
            scopes: vec![parse_allow("read,write:users/").context("scope")?],
            ttl: std::time::Duration::from_secs(15 * 60),
            aud: skv_proto::DEFAULT_TOKEN_AUDIENCE.into(),
            iss: skv_proto::DEFAULT_TOKEN_ISSUER.into(),
            bind_cert_der: Some(pem_to_der(&alice_cert)?),
        },
    )?;
    println!(
        "$ export SKV_TOKEN=$(skv token issue --key {} --sub alice --allow read,write:users/ --ttl 15m --bind-cert {})",
        keys.join("issuer-key.pem").display(),
        layout.client_cert("alice").display()
    );
    println!(
        "token: {}...{} ({} bytes; `skv token inspect` shows its claims)",
        &token[..12],
        &token[token.len() - 6..],
        token.len()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        step(
            3,
            "Start node n1: mutual TLS 1.3, tokens checked on every request, sled on disk, fsync before every ack",
        );
        let config = NodeConfig {
            name: "n1".into(),
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.join("data"),
            engine: Engine::Sled,
            durability: Durability::Sync,
            flush_every: std::time::Duration::from_millis(500),
            transport: TransportConfig::Tls {
                client_auth: true,
                ca: layout.ca_cert(),
                cert: layout.node_cert("n1"),
                key: layout.node_key("n1"),
            },
            max_frame: skv_proto::DEFAULT_MAX_FRAME,
            max_connections: 64,
            handshake_timeout: std::time::Duration::from_secs(10),
            shutdown_timeout: std::time::Duration::from_secs(10),
            auth: Some(AuthConfig {
                keyset: keys.join("keyset.json"),
                mode: AuthMode::PerRequest,
                token_cache: skv_server::config::DEFAULT_TOKEN_CACHE,
                audience: skv_proto::DEFAULT_TOKEN_AUDIENCE.into(),
                issuer: skv_proto::DEFAULT_TOKEN_ISSUER.into(),
                leeway: std::time::Duration::from_secs(5),
                require_bound_tokens: false,
                audit_log: Some(dir.join("audit.log")),
                audit_allows: false,
            }),
        };
        let node = RunningNode::start(config)
            .await
            .context("cannot start the demo node")?;
        let addr = node.local_addr().to_string();
        println!(
            "$ skv-node --listen {addr} --data-dir {} --ca {} --cert {} --key {} --keyset {} --audit-log {}",
            dir.join("data").display(),
            layout.ca_cert().display(),
            layout.node_cert("n1").display(),
            layout.node_key("n1").display(),
            keys.join("keyset.json").display(),
            dir.join("audit.log").display(),
        );
        println!("listening on {addr}");

        let result = operations(&layout, &addr, &token).await;

        step(
            10,
            "Stop the node: no new connections, in-flight requests finish, sled is flushed",
        );
        node.shutdown().await;
        println!("node stopped cleanly");
        result
    })?;

    step(
        11,
        "The audit log: one JSON line per refusal, never a token or a value",
    );
    // The audit writer flushes as it goes; give the last line a moment.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let audit = std::fs::read_to_string(dir.join("audit.log")).unwrap_or_default();
    for line in audit
        .lines()
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        println!("{line}");
    }

    if temp_used {
        println!("\nDone; the temporary PKI and data are removed. `skv demo --dir DIR` keeps them, so the\n`skv-node` and `skv` lines above can be rerun by hand.");
    } else {
        println!("\nDone. Start the node again with the `skv-node` line above (any port), issue a token, then\n  skv --profile {} --addr HOST:PORT --token \"$SKV_TOKEN\" get users/alice",
            layout.client_profile("alice").display());
    }
    Ok(())
}

async fn operations(layout: &Layout, addr: &str, token: &str) -> anyhow::Result<()> {
    let profile = layout.client_profile("alice");
    let cli = format!("skv --profile {} --addr {addr}", profile.display());
    let mut alice = ConnectOptions::new(
        addr,
        Security::Tls {
            ca: layout.ca_cert(),
            identity: Some((layout.client_cert("alice"), layout.client_key("alice"))),
        },
    );
    alice.token = Some(token.to_owned());
    let conn = Connection::connect(&alice)
        .await
        .context("alice cannot connect")?;
    println!(
        "alice connected to node {} (her certificate says spiffe://demo/client/alice)",
        conn.node()
    );

    step(
        4,
        "Put and get: every value carries a version that grows on every write",
    );
    println!("$ {cli} put users/alice '{{\"name\":\"Alice\"}}'");
    let v1 = conn.put("users/alice", r#"{"name":"Alice"}"#).await?;
    println!("OK version {v1}");
    println!("$ {cli} get users/alice");
    match conn.get("users/alice").await? {
        Some((version, value)) => {
            println!("{}    (version {version})", String::from_utf8_lossy(&value))
        }
        None => bail!("the value just written is missing"),
    }

    step(
        5,
        "Scan a prefix: keys come back in byte order, a page at a time",
    );
    conn.put("users/bob", r#"{"name":"Bob"}"#).await?;
    conn.put("users/carol", r#"{"name":"Carol"}"#).await?;
    println!("$ {cli} scan users/");
    let page = conn.scan("users/", 0, None).await?;
    for entry in &page.entries {
        println!(
            "{}\t{}",
            String::from_utf8_lossy(&entry.key),
            String::from_utf8_lossy(&entry.value)
        );
    }

    step(
        6,
        "Compare-and-swap: a write that only lands on the version you read",
    );
    let (current, _) = conn
        .get("users/alice")
        .await?
        .context("users/alice vanished")?;
    println!("$ {cli} cas users/alice --expect-version {current} '{{\"name\":\"Alice\",\"admin\":true}}'");
    let v2 = match conn
        .cas("users/alice", current, r#"{"name":"Alice","admin":true}"#)
        .await?
    {
        CasResult::Written(v) => {
            println!("OK version {v}");
            v
        }
        CasResult::Conflict(c) => bail!("unexpected conflict at version {c}"),
    };
    println!("$ {cli} cas users/alice --expect-version {current} '{{\"name\":\"Mallory\"}}'   # stale version");
    match conn.cas("users/alice", current, r#"{"name":"Mallory"}"#).await? {
        CasResult::Conflict(now) => println!(
            "skv: CAS conflict: expected version {current}, but the key is at version {now}; nothing written   (exit {})",
            exit::CAS_CONFLICT),
        CasResult::Written(_) => bail!("a stale CAS was accepted"),
    }
    debug_assert!(v2 > v1);

    step(
        7,
        "Checkpoint 3: alice's token grants users/ only, so a write elsewhere is refused",
    );
    println!("$ {cli} put admin/config x");
    match conn.put("admin/config", "x").await {
        Err(err @ ClientError::Refused(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a scope refusal, got: {other}"),
        Ok(_) => bail!("a write outside the token's scopes was accepted"),
    }

    step(
        8,
        "Checkpoint 2: a valid certificate without a token gets nothing",
    );
    println!("$ {cli} get users/alice   # no token");
    let mut tokenless = alice.clone();
    tokenless.token = None;
    let bare = Connection::connect(&tokenless)
        .await
        .context("connect without a token")?;
    match bare.get("users/alice").await {
        Err(err @ ClientError::Refused(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a token refusal, got: {other}"),
        Ok(_) => bail!("a request without a token was answered"),
    }

    step(
        9,
        "Checkpoint 1: a client without a certificate is refused in the TLS handshake",
    );
    println!(
        "$ skv --ca {} --addr {addr} get users/alice   # no --cert/--key",
        layout.ca_cert().display()
    );
    let anonymous = ConnectOptions::new(
        addr,
        Security::Tls {
            ca: layout.ca_cert(),
            identity: None,
        },
    );
    match Connection::connect(&anonymous).await {
        Err(err @ ClientError::Tls(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a TLS refusal, got: {other}"),
        Ok(_) => bail!("a client without a certificate was let in"),
    }
    Ok(())
}

/// The DER of the first certificate in a PEM file's bytes.
fn pem_to_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .context("the client certificate is not PEM")?;
    Ok(der.as_ref().to_vec())
}
