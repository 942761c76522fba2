//! End-to-end tests of the dev PKI: real files in temporary directories, certificates parsed
//! back with x509-parser and checked field by field, signatures verified against the CA.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use skv_certs::{
    init, spiffe_client, spiffe_node, Ca, CertsError, InitOptions, KeyType, Layout, LeafKind,
    LeafSpec,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::parse_x509_pem;

/// The facts about one certificate the tests assert on, copied out of x509-parser's
/// borrowed structures.
#[derive(Debug)]
struct Facts {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    subject_cn: String,
    sans: Vec<String>,
    /// (serverAuth, clientAuth, any other purpose present)
    eku: Option<(bool, bool, bool)>,
    /// (digitalSignature, keyCertSign, cRLSign)
    key_usage: Option<(bool, bool, bool)>,
    /// (CA flag, path length)
    basic_constraints: Option<(bool, Option<u32>)>,
    ski: Option<Vec<u8>>,
    aki: Option<Vec<u8>>,
    key_algorithm: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

fn facts(pem: &str) -> Facts {
    let (rest, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
    assert!(
        rest.iter().all(u8::is_ascii_whitespace),
        "one certificate per PEM"
    );
    let x = pem.parse_x509().expect("X.509");
    let sans = x
        .subject_alternative_name()
        .unwrap()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|gn| match gn {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => format!(
                            "IP:{}",
                            std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())
                        ),
                        16 => format!(
                            "IP:{}",
                            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())
                        ),
                        _ => panic!("bad IP SAN"),
                    },
                    other => format!("other:{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ski = None;
    let mut aki = None;
    for ext in x.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => ski = Some(id.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                aki = a.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => {}
        }
    }
    let facts = Facts {
        subject: x.subject().as_raw().to_vec(),
        issuer: x.issuer().as_raw().to_vec(),
        subject_cn: x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        sans,
        eku: x.extended_key_usage().unwrap().map(|e| {
            let e = e.value;
            let other = e.any
                || e.code_signing
                || e.email_protection
                || e.time_stamping
                || e.ocsp_signing
                || !e.other.is_empty();
            (e.server_auth, e.client_auth, other)
        }),
        key_usage: x.key_usage().unwrap().map(|k| {
            (
                k.value.digital_signature(),
                k.value.key_cert_sign(),
                k.value.crl_sign(),
            )
        }),
        basic_constraints: x
            .basic_constraints()
            .unwrap()
            .map(|b| (b.value.ca, b.value.path_len_constraint)),
        ski,
        aki,
        key_algorithm: x.public_key().algorithm.algorithm.to_id_string(),
        not_before: x.validity().not_before.to_datetime(),
        not_after: x.validity().not_after.to_datetime(),
    };
    facts
}

/// Whether `child_pem`'s signature verifies with `issuer_pem`'s public key.
fn signed_by(child_pem: &str, issuer_pem: &str) -> bool {
    let (_, child) = parse_x509_pem(child_pem.as_bytes()).unwrap();
    let (_, issuer) = parse_x509_pem(issuer_pem.as_bytes()).unwrap();
    let child = child.parse_x509().unwrap();
    let issuer = issuer.parse_x509().unwrap();
    child.verify_signature(Some(issuer.public_key())).is_ok()
}

fn key_algorithm_oid(kt: KeyType) -> &'static str {
    match kt {
        KeyType::P256 => "1.2.840.10045.2.1",
        KeyType::Ed25519 => "1.3.101.112",
        KeyType::Rsa2048 => "1.2.840.113549.1.1.1",
    }
}

fn opts(dir: &Path, nodes: &[&str], clients: &[&str], key_type: KeyType) -> InitOptions {
    InitOptions {
        dir: dir.to_owned(),
        cluster: "test-cluster".to_owned(),
        nodes: nodes.iter().map(|s| s.to_string()).collect(),
        clients: clients.iter().map(|s| s.to_string()).collect(),
        key_type,
        force: false,
    }
}

/// Runs `f`, or explains and skips when the test needs RSA and openssl is not installed.
fn skip_if_no_openssl<T>(kt: KeyType, r: Result<T, CertsError>) -> Option<T> {
    match r {
        Err(CertsError::OpensslMissing) if kt == KeyType::Rsa2048 => {
            eprintln!(
                "SKIPPED rsa2048: `openssl` is not installed, so RSA keys cannot be generated"
            );
            None
        }
        r => Some(r.unwrap()),
    }
}

/// Every file under `dir`, with its contents, so a test can prove a run changed nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap()
}

#[test]
fn init_writes_every_contract_file_with_the_right_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let report = init(&opts(&dir, &["n1", "n2"], &["alice"], KeyType::P256)).unwrap();
    assert!(!report.ca_reused);

    let l = Layout::new(&dir);
    let expected = vec![
        dir.join("ca.pem"),
        dir.join("ca-key.pem"),
        dir.join("crl.pem"),
        dir.join("nodes/n1.pem"),
        dir.join("nodes/n1-key.pem"),
        dir.join("nodes/n2.pem"),
        dir.join("nodes/n2-key.pem"),
        dir.join("clients/alice.pem"),
        dir.join("clients/alice-key.pem"),
        dir.join("clients/alice.toml"),
    ];
    assert_eq!(report.written, expected);
    assert_eq!(
        snapshot(&dir).len(),
        expected.len(),
        "no stray (temporary) files"
    );
    assert_eq!(l.ca_cert(), expected[0]);
    assert_eq!(l.crl(), expected[2]);
    assert_eq!(l.client_profile("alice"), expected[9]);

    for path in &expected {
        let name = path.file_name().unwrap().to_str().unwrap();
        let want = if name.ends_with("-key.pem") {
            0o600
        } else {
            0o644
        };
        assert_eq!(mode(path), want, "{}", path.display());
        let text = read(path);
        if name.ends_with("-key.pem") {
            assert!(
                text.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{name} is PKCS#8"
            );
        } else if name == "crl.pem" {
            assert!(text.starts_with("-----BEGIN X509 CRL-----"), "{name}");
        } else if name.ends_with(".pem") {
            assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{name}");
        }
    }

    assert_eq!(
        read(dir.join("clients/alice.toml")),
        "# skv client profile for alice (cluster test-cluster), written by `skv certs init`\n\
         ca = \"../ca.pem\"\n\
         cert = \"alice.pem\"\n\
         key = \"alice-key.pem\"\n"
    );
    // The profile's relative paths resolve from the profile's own directory.
    let profile_dir = dir.join("clients");
    assert_eq!(
        fs::canonicalize(profile_dir.join("../ca.pem")).unwrap(),
        fs::canonicalize(dir.join("ca.pem")).unwrap()
    );
}

#[test]
fn key_files_stay_0600_and_certs_0644_after_a_forced_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir, &["n1"], &["alice"], KeyType::P256)).unwrap();
    // Loosen the modes by hand, then regenerate: --force must restore them.
    for f in ["ca-key.pem", "nodes/n1-key.pem", "clients/alice-key.pem"] {
        fs::set_permissions(dir.join(f), fs::Permissions::from_mode(0o666)).unwrap();
    }
    let mut o = opts(dir, &["n1"], &["alice"], KeyType::P256);
    o.force = true;
    init(&o).unwrap();
    for f in ["ca-key.pem", "nodes/n1-key.pem", "clients/alice-key.pem"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    for f in [
        "ca.pem",
        "nodes/n1.pem",
        "clients/alice.pem",
        "clients/alice.toml",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o644, "{f}");
    }
}

#[test]
fn rerun_without_force_fails_and_changes_nothing_with_force_regenerates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = opts(dir, &["n1", "n2"], &["alice"], KeyType::P256);
    init(&o).unwrap();
    let before = snapshot(dir);

    let err = init(&o).unwrap_err();
    match &err {
        CertsError::AlreadyExists { path } => assert_eq!(path, &dir.join("nodes/n1.pem")),
        other => panic!("unexpected error {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("nodes/n1.pem") && msg.contains("--force"),
        "{msg}"
    );
    assert_eq!(
        snapshot(dir),
        before,
        "a refused run must not write anything"
    );

    // A run where only the LAST target exists must also write nothing (checks precede writes).
    let err = init(&opts(dir, &["n3"], &["bob", "alice"], KeyType::P256)).unwrap_err();
    assert!(matches!(err, CertsError::AlreadyExists { .. }), "{err:?}");
    assert_eq!(
        snapshot(dir),
        before,
        "a refused run must not write anything"
    );

    let mut forced = o.clone();
    forced.force = true;
    let report = init(&forced).unwrap();
    assert!(!report.ca_reused);
    assert_eq!(
        report.written.len(),
        3 + 4 + 3,
        "CA, key and CRL, two nodes, one client"
    );
    let after = snapshot(dir);
    assert_ne!(
        after[&dir.join("ca.pem")],
        before[&dir.join("ca.pem")],
        "new CA"
    );
    assert_ne!(
        after[&dir.join("nodes/n1-key.pem")],
        before[&dir.join("nodes/n1-key.pem")]
    );
    assert!(signed_by(
        &read(dir.join("nodes/n1.pem")),
        &read(dir.join("ca.pem"))
    ));
}

#[test]
fn adding_a_client_later_reuses_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir, &["n1"], &["alice"], KeyType::P256)).unwrap();
    let before = snapshot(dir);

    let report = init(&opts(dir, &[], &["bob"], KeyType::P256)).unwrap();
    assert!(report.ca_reused);
    assert_eq!(
        report.written,
        vec![
            dir.join("clients/bob.pem"),
            dir.join("clients/bob-key.pem"),
            dir.join("clients/bob.toml"),
        ]
    );
    let after = snapshot(dir);
    for (path, contents) in &before {
        assert_eq!(&after[path], contents, "{} changed", path.display());
    }

    let ca_pem = read(dir.join("ca.pem"));
    let ca = facts(&ca_pem);
    let bob_pem = read(dir.join("clients/bob.pem"));
    let bob = facts(&bob_pem);
    let alice = facts(&read(dir.join("clients/alice.pem")));
    assert_eq!(
        bob.issuer, ca.subject,
        "issuer is byte-identical to the CA subject"
    );
    assert_eq!(bob.issuer, alice.issuer);
    assert_eq!(bob.aki, ca.ski, "authority key id names the same CA key");
    assert!(
        signed_by(&bob_pem, &ca_pem),
        "bob chains to the original CA"
    );
    assert_eq!(
        bob.sans,
        vec![format!("URI:{}", spiffe_client("test-cluster", "bob"))]
    );
}

#[test]
fn reusing_a_ca_of_another_cluster_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir, &[], &[], KeyType::P256)).unwrap();
    let mut o = opts(dir, &[], &["bob"], KeyType::P256);
    o.cluster = "other".to_owned();
    let err = init(&o).unwrap_err();
    assert!(
        matches!(&err, CertsError::ClusterMismatch { found, expected, .. }
            if found == "test-cluster" && expected == "other"),
        "{err:?}"
    );
    assert!(!dir.join("clients").exists());
}

#[test]
fn half_a_ca_is_refused_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init(&opts(dir, &[], &[], KeyType::P256)).unwrap();
    fs::remove_file(dir.join("ca-key.pem")).unwrap();
    let err = init(&opts(dir, &["n1"], &[], KeyType::P256)).unwrap_err();
    assert!(matches!(err, CertsError::IncompleteCa { .. }), "{err:?}");
    assert!(!dir.join("nodes").exists());
    let mut o = opts(dir, &["n1"], &[], KeyType::P256);
    o.force = true;
    init(&o).unwrap();
}

#[test]
fn empty_lists_write_only_the_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let report = init(&opts(tmp.path(), &[], &[], KeyType::Ed25519)).unwrap();
    assert_eq!(
        report.written,
        vec![
            tmp.path().join("ca.pem"),
            tmp.path().join("ca-key.pem"),
            tmp.path().join("crl.pem")
        ]
    );
    assert!(!tmp.path().join("nodes").exists() && !tmp.path().join("clients").exists());
}

fn check_key_type(kt: KeyType) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(_) = skip_if_no_openssl(kt, init(&opts(dir, &["n1"], &["alice"], kt))) else {
        return;
    };
    let now = OffsetDateTime::now_utc();
    let alg = key_algorithm_oid(kt);

    let ca_pem = read(dir.join("ca.pem"));
    let ca = facts(&ca_pem);
    assert_eq!(ca.subject_cn, "skv test-cluster dev CA");
    assert_eq!(ca.subject, ca.issuer, "self-signed");
    assert!(signed_by(&ca_pem, &ca_pem));
    assert_eq!(ca.basic_constraints, Some((true, Some(0))));
    assert_eq!(ca.key_usage, Some((false, true, true)));
    assert_eq!(ca.eku, None);
    assert_eq!(ca.key_algorithm, alg);
    assert!(ca.not_before <= now && ca.not_before > now - Duration::days(1));
    let years = (ca.not_after - now).whole_days();
    assert!(
        (3640..=3660).contains(&years),
        "CA valid ~10 years, got {years} days"
    );

    let node_pem = read(dir.join("nodes/n1.pem"));
    let node = facts(&node_pem);
    assert_eq!(
        node.sans,
        vec![
            "DNS:localhost".to_owned(),
            "IP:127.0.0.1".to_owned(),
            "IP:::1".to_owned(),
            "DNS:n1".to_owned(),
            format!("URI:{}", spiffe_node("test-cluster", "n1")),
        ]
    );
    assert_eq!(node.sans[4], "URI:spiffe://test-cluster/node/n1");
    assert_eq!(node.eku, Some((true, true, false)));
    assert_eq!(node.key_usage, Some((true, false, false)));
    assert_eq!(node.basic_constraints, Some((false, None)));
    assert_eq!(node.issuer, ca.subject);
    assert_eq!(node.aki, ca.ski);
    assert_eq!(node.key_algorithm, alg);
    assert!(signed_by(&node_pem, &ca_pem));
    assert!(node.not_after > now + Duration::days(360));

    let client_pem = read(dir.join("clients/alice.pem"));
    let client = facts(&client_pem);
    assert_eq!(
        client.sans,
        vec!["URI:spiffe://test-cluster/client/alice".to_owned()]
    );
    assert_eq!(client.eku, Some((false, true, false)));
    assert_eq!(client.key_usage, Some((true, false, false)));
    assert_eq!(client.basic_constraints, Some((false, None)));
    assert_eq!(client.key_algorithm, alg);
    assert!(signed_by(&client_pem, &ca_pem));

    openssl_agrees(dir);

    // The CA written to disk reloads with its cluster and key type, and still issues leaves
    // that chain to it.
    let ca = Ca::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap();
    assert_eq!(ca.cluster(), "test-cluster");
    assert_eq!(ca.key_type(), kt);
    assert_eq!(ca.cert_pem(), ca_pem);
    assert_eq!(ca.key_pem(), read(dir.join("ca-key.pem")));
    let leaf = ca
        .issue(&LeafSpec::node("n9").with_key_type(KeyType::P256))
        .unwrap();
    assert!(signed_by(&leaf.cert_pem, &ca_pem));
    assert_eq!(facts(&leaf.cert_pem).issuer, facts(&ca_pem).subject);
}

/// Cross-checks with an independent implementation when `openssl` is installed: every key
/// file is readable and the leaves verify for the purposes they claim.
fn openssl_agrees(dir: &Path) {
    let run = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .map(|o| o.status.success())
    };
    if run(&["version"]) != Some(true) {
        eprintln!("openssl not installed: skipping the openssl cross-check");
        return;
    }
    for key in ["ca-key.pem", "nodes/n1-key.pem", "clients/alice-key.pem"] {
        assert_eq!(
            run(&["pkey", "-in", key, "-noout"]),
            Some(true),
            "openssl reads {key}"
        );
    }
    let verify = |purpose: &str, cert: &str| {
        run(&["verify", "-CAfile", "ca.pem", "-purpose", purpose, cert]) == Some(true)
    };
    assert!(verify("sslserver", "nodes/n1.pem"));
    assert!(verify("sslclient", "nodes/n1.pem"));
    assert!(verify("sslclient", "clients/alice.pem"));
    assert!(
        !verify("sslserver", "clients/alice.pem"),
        "a client cert is no server"
    );
}

#[test]
fn p256_certificates_have_the_right_fields() {
    check_key_type(KeyType::P256);
}

#[test]
fn ed25519_certificates_have_the_right_fields() {
    check_key_type(KeyType::Ed25519);
}

#[test]
fn rsa2048_certificates_have_the_right_fields() {
    check_key_type(KeyType::Rsa2048);
}

#[test]
fn leaves_may_use_another_key_type_than_their_ca() {
    let ca = Ca::generate("c1", KeyType::Ed25519).unwrap();
    for kt in KeyType::ALL {
        let Some(leaf) = skip_if_no_openssl(kt, ca.issue(&LeafSpec::client("x").with_key_type(kt)))
        else {
            continue;
        };
        assert_eq!(facts(&leaf.cert_pem).key_algorithm, key_algorithm_oid(kt));
        assert!(signed_by(&leaf.cert_pem, &ca.cert_pem()));
    }
}

#[test]
fn invalid_names_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let bad = [
        "../x", "", "Alice", "a/b", "/abs", "..", ".hidden", "a b", "-x",
    ];
    for name in bad {
        let err = init(&opts(&dir, &[name], &[], KeyType::P256)).unwrap_err();
        assert!(
            matches!(&err, CertsError::InvalidName { what: "node", .. }),
            "node {name:?}: {err:?}"
        );
        let err = init(&opts(&dir, &[], &[name], KeyType::P256)).unwrap_err();
        assert!(
            matches!(&err, CertsError::InvalidName { what: "client", .. }),
            "client {name:?}: {err:?}"
        );
        let mut o = opts(&dir, &["n1"], &[], KeyType::P256);
        o.cluster = name.to_owned();
        let err = init(&o).unwrap_err();
        assert!(
            matches!(
                &err,
                CertsError::InvalidName {
                    what: "cluster",
                    ..
                }
            ),
            "cluster {name:?}: {err:?}"
        );
        assert!(Ca::generate(name, KeyType::P256).is_err());
    }
    let long = "a".repeat(64);
    assert!(init(&opts(&dir, &[long.as_str()], &[], KeyType::P256)).is_err());
    assert!(!dir.exists(), "nothing may be written for a refused name");

    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    for name in bad {
        assert!(ca.issue(&LeafSpec::node(name)).is_err(), "{name:?}");
        assert!(ca.issue(&LeafSpec::client(name)).is_err(), "{name:?}");
    }
    let msg = init(&opts(&dir, &["../x"], &[], KeyType::P256))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("\"../x\"") && msg.contains("node"), "{msg}");
}

#[test]
fn duplicate_names_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = init(&opts(tmp.path(), &["n1", "n1"], &[], KeyType::P256)).unwrap_err();
    assert!(
        matches!(err, CertsError::DuplicateName { what: "node", .. }),
        "{err:?}"
    );
    // A node and a client may share a name: they live in different directories and
    // carry different SPIFFE IDs.
    init(&opts(tmp.path(), &["x"], &["x"], KeyType::P256)).unwrap();
}

#[test]
fn expired_window_yields_an_expired_certificate() {
    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    let now = OffsetDateTime::now_utc();
    let spec =
        LeafSpec::client("late").with_validity(now - Duration::days(30), now - Duration::days(1));
    let leaf = ca.issue(&spec).unwrap();
    let f = facts(&leaf.cert_pem);
    assert!(
        f.not_after < now,
        "not_after {} should be in the past",
        f.not_after
    );
    assert!(f.not_before < f.not_after);

    let expired_ca = Ca::generate_with_validity(
        "c1",
        KeyType::P256,
        now - Duration::days(30),
        now - Duration::days(1),
    )
    .unwrap();
    assert!(facts(&expired_ca.cert_pem()).not_after < now);
}

#[test]
fn explicit_dns_names_replace_the_defaults() {
    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    let leaf = ca
        .issue(&LeafSpec::node("n1").with_dns_names(["wrong.example", "10.9.8.7"]))
        .unwrap();
    assert_eq!(
        facts(&leaf.cert_pem).sans,
        vec![
            "DNS:wrong.example".to_owned(),
            "IP:10.9.8.7".to_owned(),
            "URI:spiffe://c1/node/n1".to_owned(),
        ]
    );
    let leaf = ca
        .issue(&LeafSpec::node("n1").with_dns_names(Vec::<String>::new()))
        .unwrap();
    assert_eq!(
        facts(&leaf.cert_pem).sans,
        vec!["URI:spiffe://c1/node/n1".to_owned()]
    );
}

#[test]
fn server_auth_only_leaf_has_only_the_server_auth_eku() {
    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    let leaf = ca
        .issue(&LeafSpec::new("n1", LeafKind::ServerAuthOnly))
        .unwrap();
    let f = facts(&leaf.cert_pem);
    assert_eq!(f.eku, Some((true, false, false)));
    assert!(f.sans.contains(&"URI:spiffe://c1/node/n1".to_owned()));
    assert!(signed_by(&leaf.cert_pem, &ca.cert_pem()));
}

#[test]
fn load_refuses_a_key_that_does_not_match() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Ca::generate("c1", KeyType::P256).unwrap();
    let b = Ca::generate("c1", KeyType::P256).unwrap();
    fs::write(dir.join("ca.pem"), a.cert_pem()).unwrap();
    fs::write(dir.join("ca-key.pem"), b.key_pem()).unwrap();
    let err = Ca::load(&dir.join("ca.pem"), &dir.join("ca-key.pem")).unwrap_err();
    assert!(matches!(err, CertsError::InvalidCa { .. }), "{err:?}");

    // A leaf certificate is not a CA, even with its own key.
    let leaf = a.issue(&LeafSpec::node("n1")).unwrap();
    fs::write(dir.join("leaf.pem"), &leaf.cert_pem).unwrap();
    fs::write(dir.join("leaf-key.pem"), &leaf.key_pem).unwrap();
    let err = Ca::load(&dir.join("leaf.pem"), &dir.join("leaf-key.pem")).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");

    let err = Ca::load(&dir.join("missing.pem"), &dir.join("ca-key.pem")).unwrap_err();
    assert!(matches!(err, CertsError::Io { .. }), "{err:?}");
}

#[test]
fn debug_output_never_shows_private_keys() {
    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    let leaf = ca.issue(&LeafSpec::client("alice")).unwrap();
    for text in [format!("{ca:?}"), format!("{leaf:?}")] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
    }
}

#[test]
fn spiffe_ids() {
    assert_eq!(spiffe_node("prod", "n1"), "spiffe://prod/node/n1");
    assert_eq!(spiffe_client("prod", "alice"), "spiffe://prod/client/alice");
}
