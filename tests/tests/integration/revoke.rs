//! Revocation and live credential reload (issue 12, part 4), all against one running node
//! that is never restarted: a CRL written by `skv certs revoke` refuses a client certificate
//! and a node certificate at the handshake and on the next request of a connection opened
//! before; the node's own certificate is swapped under a running `skv bench` with no failed
//! request; a bad reload keeps the old credentials; and a client refuses a node certificate
//! that names another node than the map puts at the address.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use skv_certs::{Ca, KeyType, LeafSpec};
use skv_client::{ClientError, ClusterClient, ConnectOptions, Connection, ExpectedNode, Security};
use skv_tests::{bin, code, err_text, skv, strs, with, Node, Pki};

use crate::raw_tls::{client_config, connect};

/// Wait until `check` holds, polling; the node sees file changes within about a second.
fn eventually(what: &str, mut check: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("timed out waiting for: {what}")
}

/// A node `n1` with `--crl DIR/crl.pem` (the empty CRL `skv certs init` writes).
fn start(pki: &Pki) -> anyhow::Result<Node> {
    let crl = pki.layout.crl().display().to_string();
    Node::start_tls(pki, &pki.dir().join("data"), &["--crl", &crl])
}

fn tls_opts(pki: &Pki, addr: &str, cert: &Path, key: &Path) -> ConnectOptions {
    ConnectOptions::new(
        addr,
        Security::Tls {
            ca: pki.layout.ca_cert(),
            identity: Some((cert.to_owned(), key.to_owned())),
        },
    )
}

fn revoke(pki: &Pki, which: &[&str]) -> anyhow::Result<String> {
    let dir = pki.dir().display().to_string();
    let out = skv(
        &with(strs(&["certs", "revoke", "--dir", &dir]), which),
        None,
    )?;
    assert_eq!(code(&out), 0, "skv certs revoke: {}", err_text(&out));
    Ok(String::from_utf8(out.stdout)?)
}

/// The serial number (hex) of the certificate the node at `addr` presents to a new
/// connection, read from a real handshake as alice.
fn served_serial(pki: &Pki, addr: &str) -> anyhow::Result<String> {
    let config = client_config(
        pki,
        &pki.layout.client_cert("alice"),
        &pki.layout.client_key("alice"),
    )?;
    let addr = addr.to_owned();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let stream = connect(config, &addr).await?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| anyhow::anyhow!("no server certificate"))?
            .clone();
        serial_of(leaf.as_ref())
    })
}

/// A certificate's serial as `skv certs revoke` prints it: hex without leading zero bytes.
/// DER keeps one in front of a serial whose top bit is set, and a random serial can draw
/// one; comparing the raw form failed this test about once in 256 runs.
fn serial_of(der: &[u8]) -> anyhow::Result<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    let raw = cert.raw_serial();
    let first = raw
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    Ok(raw[first..].iter().map(|b| format!("{b:02x}")).collect())
}

fn serial_of_file(path: &Path) -> anyhow::Result<String> {
    serial_of(CertificateDer::from_pem_file(path)?.as_ref())
}

/// Replace `path` atomically (write aside, rename), as a deployment tool would.
fn replace(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn log_since(node: &Node, offset: usize) -> anyhow::Result<String> {
    let log = std::fs::read_to_string(&node.log)?;
    Ok(log.get(offset..).unwrap_or_default().to_owned())
}

fn log_len(node: &Node) -> anyhow::Result<usize> {
    Ok(std::fs::read_to_string(&node.log)?.len())
}

/// What became of one TLS connection: how its handshake went, and what the node did next
/// (nothing within `wait`: `None`; an alert or a close: the error or EOF).
async fn handshake_then_listen(
    config: &Arc<rustls::ClientConfig>,
    addr: &str,
    wait: Duration,
) -> anyhow::Result<(Option<rustls::HandshakeKind>, Option<String>)> {
    use tokio::io::AsyncReadExt;
    let mut stream = connect(config.clone(), addr).await?;
    let kind = stream.get_ref().1.handshake_kind();
    // Reading takes in the node's session tickets, or its verdict on our certificate (TLS
    // 1.3 sends a refusal after the client's last handshake flight).
    let mut byte = [0u8; 1];
    let heard = match tokio::time::timeout(wait, stream.read(&mut byte)).await {
        Err(_) => None,
        Ok(Ok(0)) => Some("closed".to_owned()),
        Ok(Ok(_)) => Some("data".to_owned()),
        Ok(Err(e)) => Some(e.to_string()),
    };
    Ok((kind, heard))
}

/// The node resumes TLS 1.3 sessions (X25519 key exchange), and a revocation ends them: a
/// client holding a ticket from before its certificate was revoked does not resume, it is
/// sent through a full handshake and refused there. (A resumed handshake runs no certificate
/// verification; this holds because every reload builds a fresh server config, and with it
/// a fresh session store.)
#[test]
fn a_session_resumed_after_its_certificate_is_revoked_is_refused() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = start(&pki)?;
    let (cert, key) = pki.issue("mallory", &LeafSpec::client("mallory"))?;
    let config = client_config(&pki, &cert, &key)?;
    let rt = tokio::runtime::Runtime::new()?;
    let listen = Duration::from_millis(500);
    let (first, heard) = rt.block_on(handshake_then_listen(&config, &node.addr, listen))?;
    assert_eq!(first, Some(rustls::HandshakeKind::Full));
    assert_eq!(heard, None, "a valid certificate is not refused");
    let (second, heard) = rt.block_on(handshake_then_listen(&config, &node.addr, listen))?;
    assert_eq!(
        second,
        Some(rustls::HandshakeKind::Resumed),
        "a reconnecting client resumes its session"
    );
    assert_eq!(heard, None);
    // X25519 is what a default rustls client and the node agree on.
    let group = rt.block_on(async {
        let stream = connect(client_config(&pki, &cert, &key)?, &node.addr).await?;
        anyhow::Ok(
            stream
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name()),
        )
    })?;
    assert_eq!(group, Some(rustls::NamedGroup::X25519));

    revoke(&pki, &["--cert", &cert.display().to_string()])?;
    let mallory = tls_opts(&pki, &node.addr, &cert, &key);
    eventually("the node refuses mallory's handshake", || {
        Ok(rt.block_on(Connection::connect(&mallory)).is_err())
    })?;
    // The config still holds tickets from the resumed connection: the client offers one.
    let (kind, heard) = rt.block_on(handshake_then_listen(
        &config,
        &node.addr,
        Duration::from_secs(10),
    ))?;
    assert_ne!(
        kind,
        Some(rustls::HandshakeKind::Resumed),
        "resumed past a revocation"
    );
    let heard = heard.ok_or_else(|| anyhow::anyhow!("the node never refused the connection"))?;
    assert!(
        heard.to_lowercase().contains("revoked"),
        "refused for the revocation: {heard}"
    );
    Ok(())
}

#[test]
fn a_revoked_client_certificate_is_refused_without_a_restart() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = start(&pki)?;
    let (cert, key) = pki.issue("mallory", &LeafSpec::client("mallory"))?;
    let mallory = tls_opts(&pki, &node.addr, &cert, &key);
    let rt = tokio::runtime::Runtime::new()?;
    let established = rt.block_on(async {
        let conn = Connection::connect(&mallory).await?;
        conn.put("k", "before").await?;
        anyhow::Ok(conn)
    })?;

    let said = revoke(&pki, &["--cert", &cert.display().to_string()])?;
    let serial = serial_of_file(&cert)?;
    assert!(said.contains(&serial), "names the serial: {said}");
    // Idempotent: a second run changes nothing.
    let crl_before = std::fs::read(pki.layout.crl())?;
    let again = revoke(&pki, &["--cert", &cert.display().to_string()])?;
    assert!(again.contains("already revoked"), "{again}");
    assert_eq!(std::fs::read(pki.layout.crl())?, crl_before);

    // New handshakes are refused, with a message that says so.
    eventually("the node refuses mallory's handshake", || {
        Ok(rt.block_on(Connection::connect(&mallory)).is_err())
    })?;
    match rt.block_on(Connection::connect(&mallory)) {
        Err(ClientError::Tls(msg)) => assert!(msg.contains("revoked"), "{msg}"),
        other => panic!("a revoked certificate must fail the handshake, got {other:?}"),
    }
    let out = skv(
        &strs(&[
            "--addr",
            &node.addr,
            "--ca",
            &pki.layout.ca_cert().display().to_string(),
            "--cert",
            &cert.display().to_string(),
            "--key",
            &key.display().to_string(),
            "get",
            "k",
        ]),
        None,
    )?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(err_text(&out).contains("revoked"), "{}", err_text(&out));

    // The connection opened before the revocation is refused at its next request.
    match rt.block_on(established.get("k")) {
        Err(ClientError::Refused(err)) => {
            assert!(err.message.contains("no longer trusted"), "{err}")
        }
        other => panic!("an established connection must be refused after revocation: {other:?}"),
    }
    // Alice is unaffected.
    let out = skv(&with(pki.alice_args(&node.addr), &["get", "k"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    assert_eq!(out.stdout, b"before");
    Ok(())
}

#[test]
fn a_revoked_node_certificate_is_refused_as_a_peer() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = start(&pki)?;
    // n2's certificate, presented the way a node dials its peers: as the client side of
    // mutual TLS, then HELLO through the client library (what the node's dialer does).
    let (cert, key) = pki.issue("n2", &LeafSpec::node("n2"))?;
    let peer = tls_opts(&pki, &node.addr, &cert, &key);
    let rt = tokio::runtime::Runtime::new()?;
    let established = rt.block_on(async {
        let conn = Connection::connect(&peer).await?;
        // A peer-only request: the map. A client certificate would be asked for a token.
        conn.cluster_map().await?;
        anyhow::Ok(conn)
    })?;

    revoke(&pki, &["--cert", &cert.display().to_string()])?;
    eventually("the node refuses n2's handshake", || {
        Ok(rt.block_on(Connection::connect(&peer)).is_err())
    })?;
    match rt.block_on(Connection::connect(&peer)) {
        Err(ClientError::Tls(msg)) => assert!(msg.contains("revoked"), "{msg}"),
        other => panic!("a revoked node certificate must fail the handshake, got {other:?}"),
    }
    match rt.block_on(established.cluster_map()) {
        Err(ClientError::Refused(err)) => {
            assert!(err.message.contains("no longer trusted"), "{err}")
        }
        other => panic!("the established peer connection must be refused: {other:?}"),
    }
    // The node's own certificate (n1) is not revoked: the node still serves.
    let out = skv(&with(pki.alice_args(&node.addr), &["ping"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    Ok(())
}

#[test]
fn the_node_certificate_is_swapped_under_a_running_bench() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = start(&pki)?;
    let old_serial = served_serial(&pki, &node.addr)?;
    assert_eq!(old_serial, serial_of_file(&pki.layout.node_cert("n1"))?);

    // A real `skv bench` process, reconnecting often so handshakes happen across the swap.
    let mut args = pki.alice_args(&node.addr);
    args.extend(strs(&[
        "bench",
        "--workload",
        "mixed:0.5",
        "--conns",
        "4",
        "--inflight",
        "4",
        "--duration",
        "4s",
        "--warmup",
        "200ms",
        "--keys",
        "100",
        "--reconnect-every",
        "200",
        "--json",
    ]));
    let mut bench = Command::new(bin("skv"))
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));

    // A new certificate and key for n1, written over the files the node was started with:
    // the certificate first, then the key, as `cp` would (the node may see the pair
    // half-way, refuse that, and take the complete pair a poll later). SIGHUP too.
    let before = log_len(&node)?;
    let leaf = pki.ca()?.issue(&LeafSpec::node("n1"))?;
    replace(&pki.layout.node_cert("n1"), leaf.cert_pem.as_bytes())?;
    replace(&pki.layout.node_key("n1"), leaf.key_pem.as_bytes())?;
    let new_serial = serial_of_file(&pki.layout.node_cert("n1"))?;
    assert_ne!(new_serial, old_serial);
    Command::new("kill")
        .args(["-HUP", &node.pid().to_string()])
        .status()?;
    eventually("the node reloads the new certificate", || {
        Ok(log_since(&node, before)?.contains(&new_serial))
    })?;

    let status = bench.wait()?;
    let mut stdout = String::new();
    bench.stdout.take().unwrap().read_to_string(&mut stdout)?;
    let mut stderr = String::new();
    bench.stderr.take().unwrap().read_to_string(&mut stderr)?;
    assert!(status.success(), "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(
        report["errors"].as_object().map(|e| e.len()),
        Some(0),
        "no failed request across the swap: {report}"
    );
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["handshakes"].as_u64().unwrap() > 4,
        "reconnects happened during the run: {report}"
    );
    // New connections see the new certificate.
    assert_eq!(served_serial(&pki, &node.addr)?, new_serial);
    Ok(())
}

#[test]
fn a_bad_reload_keeps_the_old_credentials_and_is_logged() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = start(&pki)?;
    let serial = served_serial(&pki, &node.addr)?;
    let alice_ping = || -> anyhow::Result<i32> {
        Ok(code(&skv(
            &with(pki.alice_args(&node.addr), &["ping"]),
            None,
        )?))
    };

    // A key that does not match the certificate.
    let key_path = pki.layout.node_key("n1");
    let good_key = std::fs::read(&key_path)?;
    let other = pki.ca()?.issue(&LeafSpec::node("n1"))?;
    let before = log_len(&node)?;
    replace(&key_path, other.key_pem.as_bytes())?;
    eventually("the node logs the refused key", || {
        Ok(log_since(&node, before)?.contains("TLS credentials reload failed"))
    })?;
    assert_eq!(alice_ping()?, 0, "the node keeps serving");
    assert_eq!(
        served_serial(&pki, &node.addr)?,
        serial,
        "the old certificate"
    );
    replace(&key_path, &good_key)?;

    // A CRL signed by another CA of the same cluster name (another `skv certs init`).
    let crl_path = pki.layout.crl();
    let good_crl = std::fs::read(&crl_path)?;
    let foreign = Ca::generate("test", KeyType::P256)?;
    let before = log_len(&node)?;
    replace(
        &crl_path,
        skv_certs::crl::empty_crl_pem(&foreign)?.as_bytes(),
    )?;
    eventually("the node logs the refused CRL", || {
        let log = log_since(&node, before)?;
        Ok(log.contains("TLS credentials reload failed") && log.contains("CRL"))
    })?;
    assert_eq!(alice_ping()?, 0, "the node keeps serving");

    // Garbage in the CRL file is refused the same way.
    let before = log_len(&node)?;
    replace(&crl_path, b"-----BEGIN X509 CRL-----\nnot base64\n")?;
    eventually("the node logs the unreadable CRL", || {
        Ok(log_since(&node, before)?.contains("TLS credentials reload failed"))
    })?;
    assert_eq!(alice_ping()?, 0, "the node keeps serving");

    // The old revocations still apply meanwhile: a good CRL back, then a revocation, works.
    replace(&crl_path, &good_crl)?;
    let (cert, key) = pki.issue("mallory", &LeafSpec::client("mallory"))?;
    revoke(&pki, &["--cert", &cert.display().to_string()])?;
    let mallory = tls_opts(&pki, &node.addr, &cert, &key);
    let rt = tokio::runtime::Runtime::new()?;
    eventually("the node refuses mallory after the good CRL", || {
        Ok(rt.block_on(Connection::connect(&mallory)).is_err())
    })?;
    assert_eq!(alice_ping()?, 0);
    assert_eq!(served_serial(&pki, &node.addr)?, serial);
    Ok(())
}

#[test]
fn a_client_refuses_another_nodes_certificate_for_the_node_the_map_names() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    // A node the map calls n1, presenting n2's certificate: valid, from the cluster's CA,
    // for the same host name, but another node's identity.
    let (cert, key) = pki.issue("n2", &LeafSpec::node("n2"))?;
    let p = |path: PathBuf| path.display().to_string();
    let args = strs(&[
        "--name",
        "n1",
        "--data-dir",
        &p(pki.dir().join("data")),
        "--ca",
        &p(pki.layout.ca_cert()),
        "--cert",
        &p(cert),
        "--key",
        &p(key),
        "--auth",
        "off",
    ]);
    let node = Node::start(&args, &pki.dir().join("node.log"))?;

    let rt = tokio::runtime::Runtime::new()?;
    // The cluster client learns from the map that n1 is at this address, and refuses it.
    match rt.block_on(ClusterClient::connect(pki.alice(&node.addr), Vec::new())) {
        Err(ClientError::WrongNode {
            expected, found, ..
        }) => {
            assert_eq!(expected, "spiffe://test/node/n1");
            assert_eq!(found, "spiffe://test/node/n2");
        }
        other => panic!("n2's certificate must not pass as n1: {other:?}"),
    }
    // One connection told to expect n1 refuses it before HELLO.
    let mut opts = pki.alice(&node.addr);
    opts.expect_node = Some(ExpectedNode {
        cluster: "test".into(),
        id: "n1".into(),
    });
    assert!(matches!(
        rt.block_on(Connection::connect(&opts)),
        Err(ClientError::WrongNode { .. })
    ));
    // ... and accepts it when told to expect n2.
    opts.expect_node = Some(ExpectedNode {
        cluster: "test".into(),
        id: "n2".into(),
    });
    rt.block_on(Connection::connect(&opts))?;
    // The CLI says so in one line, as a connection failure.
    let out = skv(&with(pki.alice_args(&node.addr), &["get", "k"]), None)?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("is not spiffe://test/node/n1"),
        "{}",
        err_text(&out)
    );
    Ok(())
}
