//! Token issuer: the keys that sign skv tokens, the keyset file nodes verify with, and minting.
//!
//! This module owns the issuer directory (`skv keys init|retire`, see [`keys_init`] and
//! [`keys_retire`] for the file layout and rotation), the signing key ([`IssuerKey`]), and
//! turning a [`TokenSpec`] into a signed JWT ([`mint`]), plus reading a token without
//! verifying it ([`inspect`]). Claim types, the keyset format and the crypto provider live in
//! [`skv_token`], shared with the node that verifies.
//!
//! Algorithms ([`Alg`]): EdDSA (default), ES256, RS256 (keys from `openssl genpkey`, as for
//! certificates) and HS256. HS256 is the weak choice: its "public" keyset entry is the shared
//! secret, so every node that can verify tokens can also mint them, and `keyset.json` must be
//! kept as secret as the issuer key (it is written 0600 then). With the asymmetric algorithms a
//! compromised node can accept forged requests to itself but cannot mint tokens that other
//! nodes accept.
//!
//! Default kid: the first 16 hex digits (64 bits) of the key's RFC 7638 JWK thumbprint
//! (SHA-256), so every new key gets a new kid without coordination and the same key always
//! gets the same kid. `--kid` overrides it (e.g. a date, `2026-05`).

mod error;
mod key;
mod mint;
mod store;

pub use error::IssuerError;
pub use key::{IssuerKey, MAX_ISSUER_KID_LEN};
pub use mint::{inspect, mint, mint_at, unix_now, TokenSpec, UnverifiedToken, MAX_INSPECT_LEN};
pub use skv_token::Alg;
pub use store::{
    keys_init, keys_init_with, keys_retire, KeysInitOptions, KeysReport, RetireReport, KEYSET_FILE,
    MAX_KEYSET_FILE,
};

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use skv_token::parse_allow;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn kids(dir: &Path) -> Vec<String> {
        let set: skv_token::JwkSet =
            serde_json::from_slice(&std::fs::read(dir.join(KEYSET_FILE)).unwrap()).unwrap();
        set.keys.into_iter().map(|k| k.kid).collect()
    }

    fn spec() -> TokenSpec {
        TokenSpec {
            sub: "alice".into(),
            scopes: vec![parse_allow("read:").unwrap()],
            ttl: Duration::from_secs(60),
            aud: "dev".into(),
            iss: "skv".into(),
            bind_cert_der: None,
        }
    }

    #[test]
    fn init_writes_key_and_keyset_with_the_right_modes() {
        for alg in Alg::ALL {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("issuer");
            let r = keys_init(&dir, alg, None).unwrap();
            let name = if alg == Alg::HS256 {
                "issuer-key.secret"
            } else {
                "issuer-key.pem"
            };
            assert_eq!(r.key_file, dir.join(name));
            assert_eq!(mode(&r.key_file), 0o600);
            assert_eq!(mode(&dir), 0o700);
            // The keyset is public unless it holds the HS256 secret.
            let expected = if alg == Alg::HS256 { 0o600 } else { 0o644 };
            assert_eq!(mode(&r.keyset_file), expected, "{alg}");
            assert_eq!(kids(&dir), vec![r.kid.clone()]);
            assert_eq!(r.previous_kid, None);
            let key = IssuerKey::load(&dir).unwrap();
            assert_eq!(key.kid(), r.kid);
            assert_eq!(key.alg(), alg);
            mint(&key, &spec()).unwrap();
        }
    }

    #[test]
    fn rotation_keeps_old_keys_until_retired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let first = keys_init(dir, Alg::EdDSA, Some("one".into())).unwrap();
        let second = keys_init(dir, Alg::ES256, Some("two".into())).unwrap();
        assert_eq!(second.previous_kid.as_deref(), Some("one"));
        let archived = dir.join("issuer-key-one.pem");
        assert_eq!(
            second.archived_key_file.as_deref(),
            Some(archived.as_path())
        );
        assert_eq!(mode(&archived), 0o600);
        assert_eq!(kids(dir), vec!["one", "two"]);
        assert_eq!(IssuerKey::load(dir).unwrap().kid(), "two");

        // Rotating to HS256 replaces issuer-key.pem by issuer-key.secret.
        let third = keys_init(dir, Alg::HS256, None).unwrap();
        assert!(!dir.join("issuer-key.pem").exists());
        assert!(dir.join("issuer-key-two.pem").exists());
        assert_eq!(
            kids(dir),
            vec!["one".to_owned(), "two".into(), third.kid.clone()]
        );
        assert_eq!(mode(&first.keyset_file), 0o600);
        assert_eq!(IssuerKey::load(dir).unwrap().alg(), Alg::HS256);

        // The current kid cannot be retired; old ones can, and their private key goes too.
        assert!(matches!(
            keys_retire(dir, &third.kid),
            Err(IssuerError::RetireCurrent { .. })
        ));
        let r = keys_retire(dir, "one").unwrap();
        assert_eq!(r.deleted_key_file, Some(archived.clone()));
        assert!(!archived.exists());
        assert_eq!(kids(dir), vec!["two".to_owned(), third.kid.clone()]);
        assert!(matches!(
            keys_retire(dir, "one"),
            Err(IssuerError::UnknownKid { .. })
        ));

        // And back from HS256 to a PEM key.
        keys_init(dir, Alg::EdDSA, Some("four".into())).unwrap();
        assert!(!dir.join("issuer-key.secret").exists());
        assert!(dir
            .join(format!("issuer-key-{}.secret", third.kid))
            .exists());
        assert_eq!(IssuerKey::load(dir).unwrap().kid(), "four");
    }

    #[test]
    fn same_kid_needs_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        keys_init(dir, Alg::EdDSA, Some("a".into())).unwrap();
        let before = std::fs::read(dir.join("issuer-key.pem")).unwrap();
        let err = keys_init(dir, Alg::EdDSA, Some("a".into())).unwrap_err();
        assert!(matches!(err, IssuerError::KidExists { .. }), "{err}");
        assert_eq!(std::fs::read(dir.join("issuer-key.pem")).unwrap(), before);

        let forced = keys_init_with(
            dir,
            &KeysInitOptions {
                alg: Alg::EdDSA,
                kid: Some("a".into()),
                force: true,
            },
        )
        .unwrap();
        assert!(forced.replaced_existing_kid);
        assert_eq!(forced.previous_kid, None);
        assert_ne!(std::fs::read(dir.join("issuer-key.pem")).unwrap(), before);
        assert_eq!(kids(dir), vec!["a"]);
        assert_eq!(IssuerKey::load(dir).unwrap().kid(), "a");

        // Forcing the kid of an archived key replaces that key and drops its archive.
        keys_init(dir, Alg::EdDSA, Some("b".into())).unwrap();
        assert!(dir.join("issuer-key-a.pem").exists());
        keys_init_with(
            dir,
            &KeysInitOptions {
                alg: Alg::ES256,
                kid: Some("a".into()),
                force: true,
            },
        )
        .unwrap();
        assert_eq!(kids(dir), vec!["a", "b"]);
        assert!(dir.join("issuer-key-b.pem").exists());
        assert!(!dir.join("issuer-key-a.pem").exists());
        assert_eq!(IssuerKey::load(dir).unwrap().alg(), Alg::ES256);
    }

    #[test]
    fn broken_or_inconsistent_directories_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert!(matches!(
            IssuerKey::load(dir),
            Err(IssuerError::NoIssuerKey { .. })
        ));
        keys_init(dir, Alg::EdDSA, Some("a".into())).unwrap();

        let keyset = dir.join(KEYSET_FILE);
        std::fs::write(&keyset, "{\"keys\": [").unwrap();
        let err = keys_init(dir, Alg::EdDSA, None).unwrap_err();
        assert!(matches!(err, IssuerError::InvalidKeyset { .. }), "{err}");
        assert!(err.to_string().contains("keyset.json"), "{err}");
        assert!(IssuerKey::load(dir).is_err());

        // A keyset without the current key: the kid cannot be named.
        let other = IssuerKey::generate(Alg::EdDSA, Some("x".into())).unwrap();
        let set = skv_token::JwkSet {
            keys: vec![other.public_jwk().clone()],
        };
        std::fs::write(&keyset, serde_json::to_vec(&set).unwrap()).unwrap();
        let err = IssuerKey::load(dir).unwrap_err();
        assert!(matches!(err, IssuerError::KeyNotInKeyset { .. }), "{err}");
        // Force starts over with a new key rather than failing.
        let r = keys_init_with(
            dir,
            &KeysInitOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(kids(dir), vec!["x".to_owned(), r.kid.clone()]);

        // A duplicated kid is refused.
        let mut set: skv_token::JwkSet =
            serde_json::from_slice(&std::fs::read(&keyset).unwrap()).unwrap();
        set.keys.push(set.keys[0].clone());
        std::fs::write(&keyset, serde_json::to_vec(&set).unwrap()).unwrap();
        let err = IssuerKey::load(dir).unwrap_err().to_string();
        assert!(err.contains("more than once"), "{err}");

        // The last key cannot be retired, even when no key file makes it current.
        set.keys.pop();
        std::fs::write(&keyset, serde_json::to_vec(&set).unwrap()).unwrap();
        std::fs::remove_file(dir.join("issuer-key.pem")).unwrap();
        keys_retire(dir, "x").unwrap();
        assert!(matches!(
            keys_retire(dir, &r.kid),
            Err(IssuerError::RetireLast { .. })
        ));

        // A key file that is not a key.
        let tmp2 = tempfile::tempdir().unwrap();
        std::fs::write(tmp2.path().join("issuer-key.pem"), "not a key").unwrap();
        std::fs::write(tmp2.path().join(KEYSET_FILE), "{\"keys\":[]}").unwrap();
        let err = IssuerKey::load(tmp2.path()).unwrap_err();
        assert!(matches!(err, IssuerError::InvalidKeyFile { .. }), "{err}");
    }
}
