//! Checkpoint 1: every way a peer's TLS can be wrong is refused, with a message saying who
//! refused whom, and never a hang.

use std::sync::Arc;

use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};
use skv_certs::{LeafKind, LeafSpec};
use skv_tests::{code, err_text, skv, strs, with, Node, Pki};
use time::{Duration, OffsetDateTime};

fn tls_args(
    addr: &str,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Vec<String> {
    strs(&[
        "--addr",
        addr,
        "--ca",
        &ca.display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
    ])
}

/// The suite a node picks for a client offering `offered` (in that order).
fn negotiated(
    rt: &tokio::runtime::Runtime,
    pki: &Pki,
    addr: &str,
    offered: Vec<SupportedCipherSuite>,
) -> anyhow::Result<Option<CipherSuite>> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: offered,
        ..default_provider()
    });
    let config = crate::raw_tls::client_config_with(
        pki,
        &pki.layout.client_cert("alice"),
        &pki.layout.client_key("alice"),
        provider,
    )?;
    rt.block_on(async {
        let stream = crate::raw_tls::connect(config, addr).await?;
        anyhow::Ok(
            stream
                .get_ref()
                .1
                .negotiated_cipher_suite()
                .map(|s| s.suite()),
        )
    })
}

fn assert_refused(out: &std::process::Output, needle: &str) {
    assert_eq!(code(out), 4, "expected exit 4, stderr: {}", err_text(out));
    assert!(
        err_text(out).contains(needle),
        "stderr should contain {needle:?}: {}",
        err_text(out)
    );
    assert_eq!(
        err_text(out).lines().count(),
        1,
        "one clear line: {}",
        err_text(out)
    );
}

#[test]
fn client_certificates_that_must_be_refused() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let ca = pki.layout.ca_cert();

    // No client certificate at all.
    let out = skv(
        &strs(&[
            "--addr",
            &node.addr,
            "--ca",
            &ca.display().to_string(),
            "ping",
        ]),
        None,
    )?;
    assert_refused(&out, "requires a client certificate");

    // A certificate from another cluster's CA.
    let other = Pki::new()?;
    let out = skv(
        &with(
            tls_args(
                &node.addr,
                &ca,
                &other.layout.client_cert("alice"),
                &other.layout.client_key("alice"),
            ),
            &["ping"],
        ),
        None,
    )?;
    assert_refused(&out, "not signed by the cluster's CA");

    // An expired certificate from the right CA.
    let now = OffsetDateTime::now_utc();
    let (cert, key) = pki.issue(
        "expired",
        &LeafSpec::client("old")
            .with_validity(now - Duration::days(730), now - Duration::days(365)),
    )?;
    let out = skv(
        &with(tls_args(&node.addr, &ca, &cert, &key), &["ping"]),
        None,
    )?;
    assert_refused(&out, "expired");

    // A certificate for servers only (no clientAuth EKU).
    let (cert, key) = pki.issue("srvonly", &LeafSpec::new("srv", LeafKind::ServerAuthOnly))?;
    let out = skv(
        &with(tls_args(&node.addr, &ca, &cert, &key), &["ping"]),
        None,
    )?;
    assert_refused(&out, "refused this client");

    // The node still serves a good client after all that.
    let out = skv(&with(pki.alice_args(&node.addr), &["ping"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    Ok(())
}

#[test]
fn the_client_refuses_a_node_it_cannot_trust() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    // A node certificate whose SANs do not include 127.0.0.1.
    let (cert, key) = pki.issue(
        "elsewhere",
        &LeafSpec::node("n9").with_dns_names(["elsewhere.example"]),
    )?;
    let args = strs(&[
        "--data-dir",
        &pki.dir().join("data").display().to_string(),
        "--ca",
        &pki.layout.ca_cert().display().to_string(),
        "--cert",
        &cert.display().to_string(),
        "--key",
        &key.display().to_string(),
        "--auth",
        "off",
    ]);
    let node = Node::start(&args, &pki.dir().join("node.log"))?;
    let out = skv(&with(pki.alice_args(&node.addr), &["ping"]), None)?;
    assert_refused(&out, "not valid for the address dialled");
    // Naming a SAN the certificate does carry makes it acceptable.
    let out = skv(
        &with(
            pki.alice_args(&node.addr),
            &["--server-name", "elsewhere.example", "ping"],
        ),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));

    // A client trusting another CA refuses the node.
    let other = Pki::new()?;
    let out = skv(
        &with(
            tls_args(
                &node.addr,
                &other.layout.ca_cert(),
                &pki.layout.client_cert("alice"),
                &pki.layout.client_key("alice"),
            ),
            &["--server-name", "elsewhere.example", "ping"],
        ),
        None,
    )?;
    assert_refused(&out, "this client refused the node's certificate");
    Ok(())
}

#[test]
fn plaintext_and_tls_mismatches_fail_cleanly() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let tls_node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let out = skv(
        &strs(&[
            "--addr",
            &tls_node.addr,
            "--plaintext",
            "--timeout",
            "20",
            "ping",
        ]),
        None,
    )?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(err_text(&out).contains("--plaintext"), "{}", err_text(&out));

    let plain_dir = tempfile::tempdir()?;
    let plain = Node::start(
        &strs(&[
            "--insecure-plaintext",
            "--engine",
            "memory",
            "--auth",
            "off",
        ]),
        &plain_dir.path().join("node.log"),
    )?;
    let out = skv(
        &with(pki.alice_args(&plain.addr), &["--timeout", "20", "ping"]),
        None,
    )?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("did not answer with TLS"),
        "{}",
        err_text(&out)
    );
    // The plaintext node warns loudly at start.
    let log = std::fs::read_to_string(&plain.log)?;
    assert!(log.contains("WITHOUT TLS"), "{log}");

    // Both nodes keep serving their own kind of client.
    assert_eq!(
        code(&skv(
            &strs(&["--addr", &plain.addr, "--plaintext", "ping"]),
            None
        )?),
        0
    );
    assert_eq!(
        code(&skv(
            &with(pki.alice_args(&tls_node.addr), &["ping"]),
            None
        )?),
        0
    );
    Ok(())
}

#[test]
fn missing_credentials_are_usage_errors_that_name_the_file() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let out = skv(
        &strs(&[
            "--addr",
            "127.0.0.1:1",
            "--ca",
            &pki.layout.ca_cert().display().to_string(),
            "--cert",
            "/nonexistent/alice.pem",
            "--key",
            "/nonexistent/alice-key.pem",
            "ping",
        ]),
        None,
    )?;
    assert_eq!(code(&out), 2, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("/nonexistent/alice.pem"),
        "{}",
        err_text(&out)
    );
    assert!(
        err_text(&out).contains("skv certs init"),
        "{}",
        err_text(&out)
    );

    let out = skv(&strs(&["--addr", "127.0.0.1:1", "ping"]), None)?;
    assert_eq!(code(&out), 2, "no CA is a usage error: {}", err_text(&out));

    // Nothing listening: a connection failure, exit 4.
    let out = skv(&with(pki.alice_args("127.0.0.1:1"), &["ping"]), None)?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("cannot connect"),
        "{}",
        err_text(&out)
    );
    Ok(())
}

/// skv's clients and nodes prefer AES-128-GCM (`skv_client::tls_provider`, where the reason
/// is written down), and a node still serves a client that insists on either other TLS 1.3
/// suite: the preference is an order, not a restriction.
#[test]
fn clients_get_aes_128_gcm_first_and_a_node_serves_every_tls13_suite() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let rt = tokio::runtime::Runtime::new()?;
    let skv_order = skv_client::tls_provider().cipher_suites.clone();
    assert_eq!(
        negotiated(&rt, &pki, &node.addr, skv_order)?,
        Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
        "the client library's order"
    );
    for only in [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        cipher_suite::TLS13_AES_128_GCM_SHA256,
    ] {
        assert_eq!(
            negotiated(&rt, &pki, &node.addr, vec![only])?,
            Some(only.suite()),
            "a client offering only {:?}",
            only.suite()
        );
    }
    // The node's answers still arrive over the suite it picked: a whole request through the
    // client library, whose config is built on the same provider.
    let mut args = tls_args(
        &node.addr,
        &pki.layout.ca_cert(),
        &pki.layout.client_cert("alice"),
        &pki.layout.client_key("alice"),
    );
    args.push("ping".into());
    let out = skv(&args, None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    Ok(())
}
