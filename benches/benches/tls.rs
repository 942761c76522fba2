//! Transport cost: complete TLS 1.3 handshakes and one application-data record, in memory.
//!
//! No sockets: a rustls `ClientConnection` and `ServerConnection` exchange their flights
//! through a `Vec<u8>` until both are done, so the numbers are CPU only (no syscalls, no RTT).
//! The configs match the node's (`server/src/tls.rs`) and the client's
//! (`client/src/config.rs`): ring provider, TLS 1.3 only, ALPN `skv/1`, stateless session
//! tickets sealed by rustls' ring ticketer (`server/src/net/credentials.rs`).
//!
//! Benchmarks, per certificate key type (P-256, Ed25519, RSA-2048; the CA and both leaves use
//! the same type):
//! - `tls/handshake/<kt>/<tls|mtls>/<full|resumed>`: client and server CPU together, from
//!   creating both connections to both having processed everything (including the server's
//!   session tickets). `tls` = server auth only; `mtls` = client certificate required and
//!   verified with `WebPkiClientVerifier`, as the node does. `full` = a client without a
//!   ticket; `resumed` = PSK (psk_dhe_ke) resumption with a ticket from an earlier handshake.
//! - `tls/handshake_server/...`: the same handshakes, timing only the server's work
//!   (`ServerConnection::new`, its `read_tls`/`process_new_packets`/`write_tls` calls): what a
//!   node pays per connection.
//! - `tls/record/100B`: seal on the client, open on the server, of one 100-byte record over an
//!   established connection.
//! - `tls/record_suite/<suite>/<bytes>`: the same round trip under each TLS 1.3 suite, for
//!   one 100-byte answer and for a 2 KiB record (sixteen answers: what one record carries at
//!   inflight 16).
//! - `tls/primitive/...`: the public-key operations a node's side of a full P-256 mutual
//!   handshake is built from, one at a time, so the handshake's floor can be accounted for:
//!   an X25519 key pair and agreement, an ECDSA P-256 signature (the node's CertificateVerify)
//!   and verification (the client's CertificateVerify), and webpki's verification of the
//!   client's certificate chain (one more ECDSA verification, plus parsing and path
//!   building).

use std::error::Error;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rustls::client::Resumption;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, RootCertStore, ServerConfig,
    ServerConnection,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skv_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};
use skv_certs::{Ca, KeyType, Leaf, LeafSpec};

type BoxError = Box<dyn Error>;

/// The name the client verifies; node certificates carry `localhost` by default.
const SERVER_NAME: &str = "localhost";

/// Client and server configs for one key type and one authentication mode.
struct Pair {
    /// Keeps its session store between handshakes: resumes whenever it holds a ticket.
    client_resuming: Arc<ClientConfig>,
    /// Never stores or offers a ticket: every handshake is a full one.
    client_fresh: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

struct Material {
    roots: Arc<RootCertStore>,
    node: Leaf,
    client: Leaf,
}

/// The node's provider, suite order included.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    skv_server::net::tls::provider()
}

fn chain(leaf: &Leaf) -> Result<Vec<CertificateDer<'static>>, BoxError> {
    Ok(CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?)
}

fn key(leaf: &Leaf) -> Result<PrivateKeyDer<'static>, BoxError> {
    Ok(PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())?)
}

fn material(kt: KeyType) -> Result<Material, BoxError> {
    let ca = Ca::generate("bench", kt)?;
    let node = ca.issue(&LeafSpec::node("n1").with_key_type(kt))?;
    let client = ca.issue(&LeafSpec::client("alice").with_key_type(kt))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(cert?)?;
    }
    Ok(Material {
        roots: Arc::new(roots),
        node,
        client,
    })
}

fn configs(m: &Material, mutual: bool) -> Result<Pair, BoxError> {
    configs_with(m, mutual, provider())
}

fn configs_with(
    m: &Material,
    mutual: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Pair, BoxError> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if mutual {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider.clone())
                .build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder.with_single_cert(chain(&m.node)?, key(&m.node)?)?;
    server.alpn_protocols = vec![b"skv/1".to_vec()];
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;

    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(m.roots.clone());
    let mut client = if mutual {
        builder.with_client_auth_cert(chain(&m.client)?, key(&m.client)?)?
    } else {
        builder.with_no_client_auth()
    };
    client.alpn_protocols = vec![b"skv/1".to_vec()];
    let mut fresh = client.clone();
    fresh.resumption = Resumption::disabled();
    Ok(Pair {
        client_resuming: Arc::new(client),
        client_fresh: Arc::new(fresh),
        server: Arc::new(server),
    })
}

/// Writes everything `conn` has to send into `buf`.
fn send<D>(conn: &mut ConnectionCommon<D>, buf: &mut Vec<u8>) {
    while conn.wants_write() {
        conn.write_tls(buf).expect("writing to a Vec cannot fail");
    }
}

/// Feeds `buf` to `conn` and processes it; empties `buf`.
fn receive<D>(conn: &mut ConnectionCommon<D>, buf: &mut Vec<u8>) {
    let mut rd: &[u8] = buf;
    while !rd.is_empty() {
        conn.read_tls(&mut rd).expect("read_tls");
        conn.process_new_packets().expect("peer sent valid TLS");
    }
    buf.clear();
}

/// One complete handshake; returns both connections and the time spent in server calls.
fn handshake(
    client_cfg: &Arc<ClientConfig>,
    server_cfg: &Arc<ServerConfig>,
    buf: &mut Vec<u8>,
) -> (ClientConnection, ServerConnection, Duration) {
    let name = ServerName::try_from(SERVER_NAME).expect("valid name");
    let mut client = ClientConnection::new(client_cfg.clone(), name).expect("client connection");
    let start = Instant::now();
    let mut server = ServerConnection::new(server_cfg.clone()).expect("server connection");
    let mut server_time = start.elapsed();
    for _ in 0..10 {
        send(&mut client, buf);
        let client_sent = !buf.is_empty();
        let start = Instant::now();
        receive(&mut server, buf);
        send(&mut server, buf);
        server_time += start.elapsed();
        let server_sent = !buf.is_empty();
        receive(&mut client, buf);
        if !client_sent && !server_sent && !client.is_handshaking() && !server.is_handshaking() {
            return (client, server, server_time);
        }
    }
    panic!("handshake did not finish in 10 rounds");
}

/// Checks once, before measuring, that the handshakes are of the kind their name says.
fn check(pair: &Pair, mutual: bool, what: &str) {
    let mut buf = Vec::new();
    let (client, server, _) = handshake(&pair.client_fresh, &pair.server, &mut buf);
    assert_eq!(client.handshake_kind(), Some(HandshakeKind::Full), "{what}");
    assert_eq!(server.peer_certificates().is_some(), mutual, "{what}");
    assert_eq!(client.alpn_protocol(), Some(&b"skv/1"[..]), "{what}");
    // The first resuming handshake stores tickets; the second uses one.
    handshake(&pair.client_resuming, &pair.server, &mut buf);
    let (client, server, _) = handshake(&pair.client_resuming, &pair.server, &mut buf);
    assert_eq!(
        client.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "{what}"
    );
    assert_eq!(
        server.handshake_kind(),
        Some(HandshakeKind::Resumed),
        "{what}"
    );
    // A resumed mTLS session still knows its client certificate (from the ticket).
    assert_eq!(server.peer_certificates().is_some(), mutual, "{what}");
    println!(
        "{what}: {:?}, key exchange {:?}",
        client
            .negotiated_cipher_suite()
            .map(|s| s.suite())
            .expect("negotiated"),
        client
            .negotiated_key_exchange_group()
            .map(|g| g.name())
            .expect("negotiated"),
    );
}

fn handshakes(c: &mut Criterion) {
    let mut setups = Vec::new();
    for kt in KeyType::ALL {
        let m = match material(kt) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("note: skipping {kt} handshakes (cannot make certificates: {e})");
                continue;
            }
        };
        for mutual in [false, true] {
            let pair = configs(&m, mutual).expect("valid TLS configs");
            let mode = if mutual { "mtls" } else { "tls" };
            check(&pair, mutual, &format!("{kt}/{mode}"));
            setups.push((kt, mode, pair));
        }
    }

    let mut group = c.benchmark_group("tls/handshake");
    for (kt, mode, pair) in &setups {
        for (resumption, client_cfg) in [
            ("full", &pair.client_fresh),
            ("resumed", &pair.client_resuming),
        ] {
            let id = BenchmarkId::from_parameter(format!("{kt}/{mode}/{resumption}"));
            group.bench_function(id, |b| {
                let mut buf = Vec::with_capacity(16 * 1024);
                b.iter(|| handshake(client_cfg, &pair.server, &mut buf))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("tls/handshake_server");
    for (kt, mode, pair) in &setups {
        for (resumption, client_cfg) in [
            ("full", &pair.client_fresh),
            ("resumed", &pair.client_resuming),
        ] {
            let id = BenchmarkId::from_parameter(format!("{kt}/{mode}/{resumption}"));
            group.bench_function(id, |b| {
                let mut buf = Vec::with_capacity(16 * 1024);
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| handshake(client_cfg, &pair.server, &mut buf).2)
                        .sum()
                })
            });
        }
    }
    group.finish();
}

fn record(c: &mut Criterion) {
    let m = material(KeyType::P256).expect("P-256 certificates");
    let pair = configs(&m, true).expect("valid TLS configs");
    let mut buf = Vec::with_capacity(16 * 1024);
    let (mut client, mut server, _) = handshake(&pair.client_fresh, &pair.server, &mut buf);
    let payload = [0x5au8; 100];
    let mut out = [0u8; 100];

    let mut group = c.benchmark_group("tls/record");
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("100B", |b| {
        b.iter(|| {
            client.writer().write_all(&payload).expect("write");
            send(&mut client, &mut buf);
            receive(&mut server, &mut buf);
            server.reader().read_exact(&mut out).expect("read");
        })
    });
    group.finish();
    assert_eq!(out, payload);

    // The same round trip under each TLS 1.3 suite, at one answer's size and at a batch of
    // sixteen (what a record carries at inflight 16): the order the node and the client
    // prefer (`skv_client::tls_provider`) is chosen from these figures.
    let mut group = c.benchmark_group("tls/record_suite");
    for suite in rustls::crypto::ring::DEFAULT_CIPHER_SUITES
        .iter()
        .filter(|s| s.tls13().is_some())
    {
        let name = format!("{:?}", suite.suite()).replace("TLS13_", "");
        let provider = Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![*suite],
            ..rustls::crypto::ring::default_provider()
        });
        let pair = configs_with(&m, true, provider).expect("valid TLS configs");
        let (mut client, mut server, _) = handshake(&pair.client_fresh, &pair.server, &mut buf);
        assert_eq!(server.negotiated_cipher_suite(), Some(*suite));
        for size in [100usize, 2048] {
            let payload = vec![0x5au8; size];
            let mut out = vec![0u8; size];
            group.throughput(Throughput::Bytes(size as u64));
            group.bench_with_input(BenchmarkId::new(&name, size), &size, |b, _| {
                b.iter(|| {
                    client.writer().write_all(&payload).expect("write");
                    send(&mut client, &mut buf);
                    receive(&mut server, &mut buf);
                    server.reader().read_exact(&mut out).expect("read");
                })
            });
            assert_eq!(out, payload);
        }
    }
    group.finish();
}

fn primitives(c: &mut Criterion) {
    use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
    use ring::rand::SystemRandom;
    use ring::signature::{self, EcdsaKeyPair, KeyPair};
    use rustls_pki_types::UnixTime;

    let rng = SystemRandom::new();
    let m = material(KeyType::P256).expect("P-256 certificates");
    let PrivateKeyDer::Pkcs8(pkcs8) = key(&m.node).expect("node key") else {
        panic!("the dev PKI writes PKCS#8 keys");
    };
    let signer = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        pkcs8.secret_pkcs8_der(),
        &rng,
    )
    .expect("a P-256 key");
    // What a CertificateVerify signs: 64 spaces, a context string, a NUL, a transcript hash.
    let message = [0x20u8; 130];
    let sig = signer.sign(&rng, &message).expect("sign");
    let public = signature::UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        signer.public_key().as_ref().to_vec(),
    );
    public.verify(&message, sig.as_ref()).expect("verifies");
    let peer = EphemeralPrivateKey::generate(&agreement::X25519, &rng).expect("x25519");
    let peer_public = peer.compute_public_key().expect("public").as_ref().to_vec();
    let verifier = WebPkiClientVerifier::builder_with_provider(m.roots.clone(), provider())
        .build()
        .expect("verifier");
    let client_chain = chain(&m.client).expect("client chain");
    let now = UnixTime::now();
    verifier
        .verify_client_cert(&client_chain[0], &client_chain[1..], now)
        .expect("the client's chain verifies");

    let mut group = c.benchmark_group("tls/primitive");
    group.bench_function("x25519_keypair_and_agree", |b| {
        b.iter(|| {
            let mine = EphemeralPrivateKey::generate(&agreement::X25519, &rng).expect("x25519");
            let _ = mine.compute_public_key().expect("public");
            agreement::agree_ephemeral(
                mine,
                &UnparsedPublicKey::new(&agreement::X25519, &peer_public),
                |secret| secret.len(),
            )
            .expect("agree")
        })
    });
    group.bench_function("ecdsa_p256_sign", |b| {
        b.iter(|| signer.sign(&rng, &message).expect("sign"))
    });
    group.bench_function("ecdsa_p256_verify", |b| {
        b.iter(|| public.verify(&message, sig.as_ref()).expect("verifies"))
    });
    group.bench_function("client_chain_verify_p256", |b| {
        b.iter(|| {
            verifier
                .verify_client_cert(&client_chain[0], &client_chain[1..], now)
                .expect("verifies")
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = handshakes, record, primitives
}
criterion_main!(benches);
