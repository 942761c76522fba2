//! RSA without `openssl` on PATH must fail with an actionable message and write nothing.
//! A separate test binary because it changes PATH, which is process-wide.

use skv_certs::{init, Ca, CertsError, InitOptions, KeyType, LeafSpec};

#[test]
fn rsa_without_openssl_says_what_to_install_and_writes_nothing() {
    let empty = tempfile::tempdir().unwrap();
    std::env::set_var("PATH", empty.path());

    let err = Ca::generate("c1", KeyType::Rsa2048).unwrap_err();
    assert!(matches!(err, CertsError::OpensslMissing), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("apt-get install openssl") && msg.contains("p256"),
        "{msg}"
    );

    // Other key types do not need openssl at all.
    let ca = Ca::generate("c1", KeyType::P256).unwrap();
    let err = ca
        .issue(&LeafSpec::node("n1").with_key_type(KeyType::Rsa2048))
        .unwrap_err();
    assert!(matches!(err, CertsError::OpensslMissing), "{err:?}");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let err = init(&InitOptions {
        dir: dir.clone(),
        cluster: "c1".to_owned(),
        nodes: vec!["n1".to_owned()],
        clients: vec![],
        key_type: KeyType::Rsa2048,
        force: false,
    })
    .unwrap_err();
    assert!(matches!(err, CertsError::OpensslMissing), "{err:?}");
    assert!(
        !dir.exists(),
        "a failed key generation must not leave files behind"
    );
}
