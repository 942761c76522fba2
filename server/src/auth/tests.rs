//! Tests of checkpoints 2 and 3 with real tokens from the issuer in skv-certs (every
//! algorithm), and hand-made ones for every way a token can be wrong.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};
use skv_certs::issuer::{keys_init, keys_retire, mint_at, IssuerKey, TokenSpec};
use skv_token::{parse_allow, Alg, JwkSet, ScopeOp};

use super::*;

const NOW: i64 = 1_700_000_000;
const AUD: &str = "dev";
const ISS: &str = "skv";
const CERT: &[u8] = b"the client certificate DER";
const OTHER_CERT: &[u8] = b"another client certificate DER";

/// One key per algorithm, generated once (RSA keys come from openssl and are slow).
fn key(alg: Alg) -> &'static IssuerKey {
    static KEYS: OnceLock<Vec<IssuerKey>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| {
        Alg::ALL
            .into_iter()
            .map(|a| IssuerKey::generate(a, Some(format!("kid-{a}"))).unwrap())
            .collect()
    });
    &keys[Alg::ALL.iter().position(|a| *a == alg).unwrap()]
}

fn keyset_of(keys: &[&IssuerKey]) -> Keyset {
    Keyset::from_jwks(&JwkSet {
        keys: keys.iter().map(|k| k.public_jwk().clone()).collect(),
    })
    .unwrap()
}

fn policy() -> Policy {
    Policy::new(AUD, ISS)
}

/// A verifier that knows all four keys.
fn verifier() -> Verifier {
    verifier_with(policy())
}

fn verifier_with(policy: Policy) -> Verifier {
    let keys: Vec<&IssuerKey> = Alg::ALL.into_iter().map(key).collect();
    Verifier::new(keyset_of(&keys), policy).unwrap()
}

fn spec() -> TokenSpec {
    TokenSpec {
        sub: "alice".into(),
        scopes: vec![
            parse_allow("read,write:users/alice/").unwrap(),
            parse_allow("read:public/").unwrap(),
        ],
        ttl: Duration::from_secs(300),
        aud: AUD.into(),
        iss: ISS.into(),
        bind_cert_der: None,
    }
}

fn mint(alg: Alg) -> String {
    mint_at(key(alg), &spec(), NOW).unwrap()
}

fn mint_bound(alg: Alg) -> String {
    let s = TokenSpec {
        bind_cert_der: Some(CERT.to_vec()),
        ..spec()
    };
    mint_at(key(alg), &s, NOW).unwrap()
}

/// Claims a default verifier accepts at NOW.
fn claims() -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "alice",
        "iat": NOW, "nbf": NOW, "exp": NOW + 300,
        "jti": "0123456789abcdef0123456789abcdef",
        "scopes": [{"prefix": "users/alice/", "ops": ["read"]}],
    })
}

fn header(alg: Alg) -> Value {
    json!({"alg": alg.as_str(), "kid": key(alg).kid()})
}

/// Signs arbitrary JSON with the real key of `alg` (a valid signature over whatever we say).
fn forge(alg: Alg, header: &Value, claims: &Value) -> String {
    key(alg).sign_raw(header, claims).unwrap()
}

fn verify(token: &str) -> Result<Verified, AuthError> {
    verifier().verify(token.as_bytes(), None, NOW)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        input.as_bytes(),
    );
    format!("{input}.{}", b64(tag.as_ref()))
}

#[test]
fn every_algorithm_mints_and_verifies() {
    let v = verifier();
    for alg in Alg::ALL {
        let token = mint(alg);
        let ok = v.verify(token.as_bytes(), None, NOW).unwrap();
        assert_eq!(ok.sub(), "alice");
        assert_eq!(ok.kid(), key(alg).kid());
        assert_eq!(ok.alg(), alg);
        assert_eq!(ok.exp(), NOW + 300);
        assert_eq!(ok.iat(), NOW);
        assert_eq!(ok.jti().len(), 32);
        assert!(!ok.is_bound());
        assert!(ok.allows(ScopeOp::Write, b"users/alice/x"));
        assert!(!ok.allows(ScopeOp::Write, b"public/x"));
    }
}

#[test]
fn oversized_tokens_are_refused_before_parsing() {
    let v = verifier();
    let huge = vec![b'a'; skv_proto::MAX_TOKEN_LEN + 1];
    assert!(matches!(
        v.verify(&huge, None, NOW),
        Err(AuthError::TooLarge { len, max }) if len == huge.len() && max == 8192
    ));
    // A genuine token padded past the limit is refused on size alone.
    let padded = format!("{}{}", mint(Alg::EdDSA), "A".repeat(9000));
    assert!(matches!(verify(&padded), Err(AuthError::TooLarge { .. })));
    let cache = TokenCache::new(4);
    assert!(matches!(
        v.verify_cached(&cache, &huge, None, NOW),
        Err(AuthError::TooLarge { .. })
    ));
    // At the limit it is parsed (and found malformed).
    let at_limit = vec![b'a'; skv_proto::MAX_TOKEN_LEN];
    assert!(matches!(
        v.verify(&at_limit, None, NOW),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn malformed_structure_is_invalid_token() {
    for bad in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.e30.AA",
        "W10.e30.AA", // header `[]`: not an object
        "e30.e30.AA", // header `{}`: no alg
    ] {
        let err = verify(bad).unwrap_err();
        assert_eq!(err.category(), AuthCategory::InvalidToken, "{bad:?}: {err}");
    }
    assert_eq!(verify("e30.e30.AA").unwrap_err(), AuthError::MissingAlg);
    // A real header and payload with a signature that is not base64url.
    let token = mint(Alg::EdDSA);
    let (input, _) = token.rsplit_once('.').unwrap();
    assert_eq!(
        verify(&format!("{input}.!!!")).unwrap_err(),
        AuthError::Malformed("signature is not base64url")
    );
    // jsonwebtoken's typed header is stricter than a JSON object: a numeric typ.
    let mut h = header(Alg::EdDSA);
    h["typ"] = json!(5);
    assert_eq!(
        verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err(),
        AuthError::Malformed("header member has the wrong type or is repeated")
    );
    // Signed claims that are not a JSON object.
    assert_eq!(
        verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &json!([1, 2]))).unwrap_err(),
        AuthError::Malformed("claims are not a base64url JSON object")
    );
}

#[test]
fn repeated_members_are_refused() {
    // Hand-written JSON, since a serde_json Value cannot hold a member twice.
    let secret = URL_SAFE_NO_PAD
        .decode(key(Alg::HS256).public_jwk().k.as_ref().unwrap())
        .unwrap();
    let raw = |header: &str, claims: &str| {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        let tag = ring::hmac::sign(&k, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    };
    let kid = key(Alg::HS256).kid();
    let good_header = format!(r#"{{"alg":"HS256","kid":"{kid}"}}"#);
    let body = |exp: &str| {
        format!(
            r#"{{"iss":"{ISS}","aud":"{AUD}","sub":"a","iat":{NOW},"nbf":{NOW},{exp},"jti":"j","scopes":[]}}"#
        )
    };
    verify(&raw(&good_header, &body(&format!(r#""exp":{}"#, NOW + 60)))).unwrap();
    // A second exp (the first one expired) must not slip through either way round.
    let twice = body(&format!(r#""exp":{},"exp":{}"#, NOW - 100, NOW + 60));
    assert!(matches!(
        verify(&raw(&good_header, &twice)),
        Err(AuthError::Malformed(_))
    ));
    let twice = body(&format!(r#""exp":{},"exp":{}"#, NOW + 60, NOW - 100));
    assert!(verify(&raw(&good_header, &twice)).is_err());
    let header_twice = format!(r#"{{"alg":"HS256","alg":"HS256","kid":"{kid}"}}"#);
    assert!(matches!(
        verify(&raw(
            &header_twice,
            &body(&format!(r#""exp":{}"#, NOW + 60))
        )),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn header_alg_must_be_allowed() {
    // `none`, with and without a signature.
    let h = json!({"alg": "none", "kid": key(Alg::EdDSA).kid()});
    let unsigned = format!(
        "{}.{}.",
        b64(h.to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    for token in [unsigned, forge(Alg::EdDSA, &h, &claims())] {
        let err = verify(&token).unwrap_err();
        assert!(matches!(err, AuthError::AlgNotAllowed { .. }), "{err}");
    }
    // Real algorithms outside skv's four, and case variants.
    for name in ["HS512", "PS256", "ES384", "eddsa", "NONE"] {
        let h = json!({"alg": name, "kid": key(Alg::EdDSA).kid()});
        let err = verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err();
        assert!(
            matches!(err, AuthError::AlgNotAllowed { .. }),
            "{name}: {err}"
        );
    }
    // An algorithm the policy leaves out, even with a valid token for it.
    let only_es = verifier_with(Policy {
        allowed_algs: vec![Alg::ES256],
        ..policy()
    });
    let err = only_es
        .verify(mint(Alg::EdDSA).as_bytes(), None, NOW)
        .unwrap_err();
    assert!(matches!(err, AuthError::AlgNotAllowed { .. }), "{err}");
    only_es
        .verify(mint(Alg::ES256).as_bytes(), None, NOW)
        .unwrap();
    // alg must be a string.
    let h = json!({"alg": 1, "kid": key(Alg::EdDSA).kid()});
    assert!(matches!(
        verify(&forge(Alg::EdDSA, &h, &claims())),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn header_alg_must_match_the_keys_alg() {
    // ES256 header naming the EdDSA key, signed by the EdDSA key.
    let h = json!({"alg": "ES256", "kid": key(Alg::EdDSA).kid()});
    let err = verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err();
    assert_eq!(
        err,
        AuthError::AlgKeyMismatch {
            header: Alg::ES256,
            key: Alg::EdDSA,
            kid: Echo::new(key(Alg::EdDSA).kid()),
        }
    );
    assert_eq!(err.category(), AuthCategory::InvalidToken);
}

#[test]
fn hmac_with_a_public_key_as_secret_fails() {
    // The classic confusion: the attacker knows the RSA/Ed25519 public key and uses its bytes
    // as an HMAC secret, hoping the node verifies HS256 with "the key" of that kid.
    let v = verifier();
    for alg in [Alg::RS256, Alg::EdDSA, Alg::ES256] {
        let jwk = key(alg).public_jwk();
        let mut secrets: Vec<Vec<u8>> = vec![
            serde_json::to_vec(jwk).unwrap(),
            jwk.kid.as_bytes().to_vec(),
        ];
        for member in [&jwk.n, &jwk.x, &jwk.e, &jwk.y].into_iter().flatten() {
            secrets.push(URL_SAFE_NO_PAD.decode(member).unwrap());
            secrets.push(member.as_bytes().to_vec());
        }
        for secret in secrets {
            let h = json!({"alg": "HS256", "kid": jwk.kid});
            let token = hs256(&secret, &h, &claims());
            let err = v.verify(token.as_bytes(), None, NOW).unwrap_err();
            assert!(
                matches!(
                    err,
                    AuthError::AlgKeyMismatch {
                        header: Alg::HS256,
                        ..
                    }
                ),
                "{alg}: {err}"
            );
        }
    }
}

#[test]
fn kid_is_required_and_only_a_lookup_string() {
    let no_kid = json!({"alg": "EdDSA"});
    assert_eq!(
        verify(&forge(Alg::EdDSA, &no_kid, &claims())).unwrap_err(),
        AuthError::MissingKid
    );
    let empty = json!({"alg": "EdDSA", "kid": ""});
    assert_eq!(
        verify(&forge(Alg::EdDSA, &empty, &claims())).unwrap_err(),
        AuthError::MissingKid
    );
    let numeric = json!({"alg": "EdDSA", "kid": 7});
    assert!(matches!(
        verify(&forge(Alg::EdDSA, &numeric, &claims())),
        Err(AuthError::Malformed(_))
    ));
    for kid in [
        "../../../../etc/passwd",
        "/dev/zero",
        "https://attacker.example/jwks.json",
        "file:///etc/skv/keyset.json",
        "kid-EdDSA\u{0}",
    ] {
        let h = json!({"alg": "EdDSA", "kid": kid});
        let err = verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err();
        assert!(matches!(err, AuthError::UnknownKid { .. }), "{kid}: {err}");
        assert!(!err.to_string().contains('\u{0}'));
    }
}

#[test]
fn key_carrying_headers_are_refused() {
    let jwk = serde_json::to_value(key(Alg::EdDSA).public_jwk()).unwrap();
    for (name, value) in [
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", jwk),
        ("x5c", json!(["MIIB"])),
        ("crit", json!(["exp"])),
        ("jku", Value::Null),
    ] {
        let mut h = header(Alg::EdDSA);
        h[name] = value;
        let err = verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err();
        assert!(
            matches!(err, AuthError::ForbiddenHeader(n) if n == name),
            "{name}: {err}"
        );
    }
}

#[test]
fn every_standard_claim_is_required() {
    for name in ["exp", "nbf", "iat", "aud", "iss", "sub", "jti", "scopes"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(name);
        for alg in Alg::ALL {
            let err = verify(&forge(alg, &header(alg), &c)).unwrap_err();
            assert_eq!(err, AuthError::MissingClaim(name), "{alg}");
            assert_eq!(err.category(), AuthCategory::InvalidToken);
        }
    }
}

#[test]
fn times_must_be_json_integers() {
    for name in ["exp", "nbf", "iat"] {
        for bad in [
            json!("9999999999"),
            json!(NOW as f64 + 0.5),
            Value::Null,
            json!(true),
            json!(u64::MAX),
        ] {
            let mut c = claims();
            c[name] = bad.clone();
            let err = verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap_err();
            assert!(
                matches!(err, AuthError::ClaimType { claim, .. } if claim == name),
                "{name} = {bad}: {err}"
            );
        }
    }
    // A string exp far in the past must not be taken as "no expiry".
    let mut c = claims();
    c["exp"] = json!("0");
    assert!(verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).is_err());
    // Other claims' types too.
    for (name, bad) in [
        ("iss", json!(1)),
        ("sub", json!(["alice"])),
        ("jti", json!(1)),
        ("aud", json!(1)),
        ("aud", json!([AUD, 1])),
        ("scopes", json!("read:")),
        ("scopes", json!([{"prefix": "a", "ops": ["fly"]}])),
        ("scopes", json!([{"prefix": 1, "ops": ["read"]}])),
        ("sub", json!("")),
        ("jti", json!("")),
    ] {
        let mut c = claims();
        c[name] = bad.clone();
        let err = verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap_err();
        assert!(
            matches!(err, AuthError::ClaimType { claim, .. } if claim == name),
            "{name} = {bad}: {err}"
        );
    }
}

#[test]
fn leeway_is_applied_to_exp_nbf_and_iat() {
    let v = verifier(); // 5 s leeway
    let with = |name: &str, value: i64| {
        let mut c = claims();
        c[name] = json!(value);
        v.verify(
            forge(Alg::EdDSA, &header(Alg::EdDSA), &c).as_bytes(),
            None,
            NOW,
        )
    };
    with("exp", NOW - 4).unwrap();
    let err = with("exp", NOW - 5).unwrap_err();
    assert_eq!(
        err,
        AuthError::Expired {
            exp: NOW - 5,
            now: NOW,
            leeway: 5
        }
    );
    assert_eq!(err.category(), AuthCategory::Expired);
    with("nbf", NOW + 5).unwrap();
    let err = with("nbf", NOW + 6).unwrap_err();
    assert!(matches!(err, AuthError::NotYetValid { .. }), "{err}");
    assert_eq!(err.category(), AuthCategory::InvalidToken);
    with("iat", NOW + 5).unwrap();
    assert!(matches!(
        with("iat", NOW + 6),
        Err(AuthError::IssuedInFuture { .. })
    ));

    let strict = verifier_with(Policy {
        leeway: Duration::ZERO,
        ..policy()
    });
    let token = mint(Alg::ES256); // exp = NOW + 300
    strict.verify(token.as_bytes(), None, NOW + 299).unwrap();
    assert!(matches!(
        strict.verify(token.as_bytes(), None, NOW + 300),
        Err(AuthError::Expired { .. })
    ));
    assert!(matches!(
        strict.verify(token.as_bytes(), None, NOW - 1),
        Err(AuthError::NotYetValid { .. })
    ));
}

#[test]
fn audience_and_issuer_must_match() {
    let mut c = claims();
    c["aud"] = json!("prod");
    let err = verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap_err();
    assert_eq!(err, AuthError::WrongAudience);
    assert_eq!(err.category(), AuthCategory::WrongAudience);

    c["aud"] = json!(["prod", AUD]);
    verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap();
    c["aud"] = json!(["prod", "test"]);
    assert_eq!(
        verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap_err(),
        AuthError::WrongAudience
    );

    let mut c = claims();
    c["iss"] = json!("mallory");
    let err = verify(&forge(Alg::EdDSA, &header(Alg::EdDSA), &c)).unwrap_err();
    assert!(matches!(err, AuthError::WrongIssuer { .. }), "{err}");
    assert!(err.to_string().contains("mallory"));
    assert_eq!(err.category(), AuthCategory::InvalidToken);
}

#[test]
fn tampered_and_foreign_signatures_fail() {
    let v = verifier();
    for alg in Alg::ALL {
        let token = mint(alg);
        let (input, sig) = token.rsplit_once('.').unwrap();
        // Flip one bit of the signature.
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[0] ^= 1;
        let flipped = format!("{input}.{}", b64(&raw));
        let err = v.verify(flipped.as_bytes(), None, NOW).unwrap_err();
        assert!(
            matches!(err, AuthError::BadSignature { .. }),
            "{alg}: {err}"
        );
        // Another payload under the same signature.
        let (header_b64, _) = input.split_once('.').unwrap();
        let mut c = claims();
        c["scopes"] = json!([{"prefix": "", "ops": ["admin"]}]);
        let swapped = format!("{header_b64}.{}.{sig}", b64(c.to_string().as_bytes()));
        let err = v.verify(swapped.as_bytes(), None, NOW).unwrap_err();
        assert!(
            matches!(err, AuthError::BadSignature { .. }),
            "{alg}: {err}"
        );
        // A different key that claims this key's kid.
        let impostor = IssuerKey::generate(
            if alg == Alg::RS256 { Alg::EdDSA } else { alg },
            Some(key(alg).kid().to_owned()),
        )
        .unwrap();
        if impostor.alg() == alg {
            let forged = mint_at(&impostor, &spec(), NOW).unwrap();
            let err = v.verify(forged.as_bytes(), None, NOW).unwrap_err();
            assert!(
                matches!(err, AuthError::BadSignature { .. }),
                "{alg}: {err}"
            );
        }
    }
}

#[test]
fn audit_reasons_never_contain_the_token_or_signature() {
    let token = mint(Alg::EdDSA);
    let sig = token.rsplit_once('.').unwrap().1.to_owned();
    let v = verifier();
    let mut errors = vec![
        v.verify(token.as_bytes(), None, NOW + 10_000).unwrap_err(),
        v.verify(token.as_bytes(), None, NOW - 10_000).unwrap_err(),
        v.verify(mint_bound(Alg::EdDSA).as_bytes(), Some(OTHER_CERT), NOW)
            .unwrap_err(),
    ];
    let mut raw = URL_SAFE_NO_PAD.decode(&sig).unwrap();
    raw[3] ^= 0x80;
    let (input, _) = token.rsplit_once('.').unwrap();
    errors.push(
        v.verify(format!("{input}.{}", b64(&raw)).as_bytes(), None, NOW)
            .unwrap_err(),
    );
    let h = json!({"alg": "EdDSA", "kid": token.clone()});
    errors.push(verify(&forge(Alg::EdDSA, &h, &claims())).unwrap_err());
    for err in errors {
        let text = format!("{err} {err:?}");
        assert!(!text.contains(&sig), "{text}");
        assert!(!text.contains(&token), "{text}");
        assert!(!text.contains(input), "{text}");
    }
}

#[test]
fn certificate_binding_is_enforced() {
    let v = verifier();
    for alg in Alg::ALL {
        let token = mint_bound(alg);
        let ok = v.verify(token.as_bytes(), Some(CERT), NOW).unwrap();
        assert!(ok.is_bound());
        let err = v
            .verify(token.as_bytes(), Some(OTHER_CERT), NOW)
            .unwrap_err();
        assert_eq!(err, AuthError::CertificateMismatch);
        assert_eq!(err.category(), AuthCategory::NotBoundToCertificate);
        let err = v.verify(token.as_bytes(), None, NOW).unwrap_err();
        assert_eq!(err, AuthError::NoPeerCertificate);
        assert_eq!(err.category(), AuthCategory::NotBoundToCertificate);
        // Unbound tokens work from any certificate unless the policy requires binding.
        v.verify(mint(alg).as_bytes(), Some(OTHER_CERT), NOW)
            .unwrap();
    }
    let strict = verifier_with(Policy {
        require_bound_tokens: true,
        ..policy()
    });
    let err = strict
        .verify(mint(Alg::EdDSA).as_bytes(), Some(CERT), NOW)
        .unwrap_err();
    assert_eq!(err, AuthError::Unbound);
    assert_eq!(err.category(), AuthCategory::NotBoundToCertificate);
    strict
        .verify(mint_bound(Alg::EdDSA).as_bytes(), Some(CERT), NOW)
        .unwrap();
    // The thumbprint form the node computes once per connection.
    let peer = CertThumbprint::of(CERT);
    strict
        .verify_for_peer(mint_bound(Alg::HS256).as_bytes(), Some(&peer), NOW)
        .unwrap();
    assert_eq!(peer.to_hex().len(), 64);
}

#[test]
fn cnf_must_be_a_sha256_certificate_thumbprint() {
    for bad in [
        json!({"jkt": "abc"}),
        json!({"x5t#S256": "AAAA"}),
        json!({"x5t#S256": 5}),
        json!({"x5t#S256": skv_token::cert_thumbprint(CERT), "jkt": "x"}),
        json!("bound"),
    ] {
        let mut c = claims();
        c["cnf"] = bad.clone();
        let err = verifier()
            .verify(
                forge(Alg::EdDSA, &header(Alg::EdDSA), &c).as_bytes(),
                Some(CERT),
                NOW,
            )
            .unwrap_err();
        assert!(
            matches!(err, AuthError::ClaimType { claim: "cnf", .. }),
            "{bad}: {err}"
        );
    }
}

#[test]
fn scopes_are_checked_per_prefix_and_scans_stay_inside() {
    let ok = verify(&mint(Alg::EdDSA)).unwrap();
    assert!(ok.allows(ScopeOp::Read, b"users/alice/profile"));
    assert!(ok.allows(ScopeOp::Read, b"public/news"));
    assert!(!ok.allows(ScopeOp::Read, b"users/bob/profile"));
    assert!(!ok.allows(ScopeOp::Delete, b"users/alice/profile"));
    assert!(!ok.allows(ScopeOp::Admin, b"users/alice/profile"));
    assert!(ok.allows_scan(b"users/alice/"));
    assert!(!ok.allows_scan(b"users/"));
    assert!(!ok.allows_scan(b""));
    ok.authorize(ScopeOp::Write, b"users/alice/x").unwrap();
    let err = ok.authorize(ScopeOp::Write, b"public/x").unwrap_err();
    assert_eq!(err.category(), AuthCategory::Forbidden);
    assert_eq!(err.category().error_code(), skv_proto::ErrorCode::Forbidden);
    assert!(err.to_string().contains("write"), "{err}");
    assert!(
        !err.to_string().contains("public/x"),
        "keys stay out: {err}"
    );
    assert_eq!(
        ok.authorize_scan(b"users/").unwrap_err().category(),
        AuthCategory::Forbidden
    );

    let admin = TokenSpec {
        scopes: vec![parse_allow("admin:").unwrap()],
        ..spec()
    };
    let root = verify(&mint_at(key(Alg::ES256), &admin, NOW).unwrap()).unwrap();
    for op in ScopeOp::ALL {
        assert!(root.allows(op, b"anything"));
    }
    let nothing = TokenSpec {
        scopes: vec![],
        ..spec()
    };
    let empty = verify(&mint_at(key(Alg::EdDSA), &nothing, NOW).unwrap()).unwrap();
    assert!(empty.grants().is_empty());
    assert!(!empty.allows(ScopeOp::Read, b""));
}

#[test]
fn check_live_stops_honouring_an_expired_token() {
    let ok = verify(&mint(Alg::EdDSA)).unwrap();
    ok.check_live(NOW + 304).unwrap();
    assert!(matches!(
        ok.check_live(NOW + 305),
        Err(AuthError::Expired { .. })
    ));
}

#[test]
fn rotation_old_kid_verifies_until_retired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let keyset_path = dir.join("keyset.json");
    let load = || Verifier::new(Keyset::load(&keyset_path).unwrap(), policy()).unwrap();
    let now = unix_now();
    let spec = TokenSpec {
        ttl: Duration::from_secs(3600),
        ..spec()
    };

    keys_init(dir, Alg::EdDSA, Some("one".into())).unwrap();
    let old = mint_at(&IssuerKey::load(dir).unwrap(), &spec, now).unwrap();
    load().verify(old.as_bytes(), None, now).unwrap();

    keys_init(dir, Alg::ES256, Some("two".into())).unwrap();
    let new = mint_at(&IssuerKey::load(dir).unwrap(), &spec, now).unwrap();
    let v = load();
    assert_eq!(v.verify(old.as_bytes(), None, now).unwrap().kid(), "one");
    assert_eq!(v.verify(new.as_bytes(), None, now).unwrap().kid(), "two");

    keys_retire(dir, "one").unwrap();
    let v = load();
    let err = v.verify(old.as_bytes(), None, now).unwrap_err();
    assert!(matches!(err, AuthError::UnknownKid { .. }), "{err}");
    assert_eq!(err.category(), AuthCategory::InvalidToken);
    v.verify(new.as_bytes(), None, now).unwrap();
}

#[test]
fn policy_must_be_complete() {
    let ks = || keyset_of(&[key(Alg::EdDSA)]);
    assert_eq!(
        Verifier::new(ks(), Policy::new("", ISS)).unwrap_err(),
        PolicyError::EmptyAudience
    );
    assert_eq!(
        Verifier::new(ks(), Policy::new(AUD, "")).unwrap_err(),
        PolicyError::EmptyIssuer
    );
    assert_eq!(
        Verifier::new(
            ks(),
            Policy {
                allowed_algs: vec![],
                ..policy()
            }
        )
        .unwrap_err(),
        PolicyError::NoAlgorithms
    );
    assert_eq!(policy().leeway, Duration::from_secs(5));
}

// ---------------------------------------------------------------------------------------------
// The cache

#[test]
fn cache_hits_return_the_same_verification() {
    let v = verifier();
    let cache = TokenCache::new(16);
    let token = mint(Alg::RS256);
    let a = v
        .verify_cached(&cache, token.as_bytes(), None, NOW)
        .unwrap();
    let b = v
        .verify_cached(&cache, token.as_bytes(), None, NOW + 1)
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
    cache.clear();
    assert!(cache.is_empty());
}

#[test]
fn cache_rechecks_the_binding_on_every_hit() {
    let v = verifier();
    let cache = TokenCache::new(16);
    let token = mint_bound(Alg::EdDSA);
    let mine = CertThumbprint::of(CERT);
    let theirs = CertThumbprint::of(OTHER_CERT);
    v.verify_cached(&cache, token.as_bytes(), Some(&mine), NOW)
        .unwrap();
    assert_eq!(cache.len(), 1);
    // The token is cached; replayed from another certificate it still fails.
    assert_eq!(
        v.verify_cached(&cache, token.as_bytes(), Some(&theirs), NOW)
            .unwrap_err(),
        AuthError::CertificateMismatch
    );
    assert_eq!(
        v.verify_cached(&cache, token.as_bytes(), None, NOW)
            .unwrap_err(),
        AuthError::NoPeerCertificate
    );
    // A thief who presents it first does not poison it for its owner.
    let cache = TokenCache::new(16);
    assert!(v
        .verify_cached(&cache, token.as_bytes(), Some(&theirs), NOW)
        .is_err());
    v.verify_cached(&cache, token.as_bytes(), Some(&mine), NOW)
        .unwrap();
    // Require-binding policies refuse cached unbound tokens too.
    let strict = verifier_with(Policy {
        require_bound_tokens: true,
        ..policy()
    });
    let bearer = mint(Alg::EdDSA);
    for _ in 0..2 {
        assert_eq!(
            strict
                .verify_cached(&cache, bearer.as_bytes(), Some(&mine), NOW)
                .unwrap_err(),
            AuthError::Unbound
        );
    }
}

#[test]
fn cache_entries_never_outlive_exp() {
    let v = verifier();
    let cache = TokenCache::new(16);
    let token = mint(Alg::EdDSA); // exp NOW + 300, leeway 5
    v.verify_cached(&cache, token.as_bytes(), None, NOW)
        .unwrap();
    v.verify_cached(&cache, token.as_bytes(), None, NOW + 304)
        .unwrap();
    let key = TokenCache::key_of(token.as_bytes());
    assert!(cache.get(&key, NOW + 305).is_none());
    assert!(matches!(
        v.verify_cached(&cache, token.as_bytes(), None, NOW + 305),
        Err(AuthError::Expired { .. })
    ));
}

#[test]
fn cache_ignores_entries_from_an_older_verifier() {
    // After a reload that retires a kid, a cached token signed with it must fail.
    let cache = TokenCache::new(16);
    let both = Verifier::new(keyset_of(&[key(Alg::EdDSA), key(Alg::ES256)]), policy()).unwrap();
    let token = mint(Alg::EdDSA);
    both.verify_cached(&cache, token.as_bytes(), None, NOW)
        .unwrap();
    let reloaded = Verifier::new(keyset_of(&[key(Alg::ES256)]), policy()).unwrap();
    assert!(matches!(
        reloaded.verify_cached(&cache, token.as_bytes(), None, NOW),
        Err(AuthError::UnknownKid { .. })
    ));
    // A policy change (another audience) is a new verifier as well.
    let other_aud = Verifier::new(keyset_of(&[key(Alg::EdDSA)]), Policy::new("prod", ISS)).unwrap();
    assert_eq!(
        other_aud
            .verify_cached(&cache, token.as_bytes(), None, NOW)
            .unwrap_err(),
        AuthError::WrongAudience
    );
}

#[test]
fn cache_is_bounded_and_keeps_hot_entries() {
    let v = verifier();
    for capacity in [0, 1, 7, 16, 40] {
        let cache = TokenCache::new(capacity);
        for i in 0..100 {
            let s = TokenSpec {
                sub: format!("user{i}"),
                ..spec()
            };
            let t = mint_at(key(Alg::EdDSA), &s, NOW).unwrap();
            v.verify_cached(&cache, t.as_bytes(), None, NOW).unwrap();
            assert!(cache.len() <= capacity, "{capacity}: {}", cache.len());
        }
        // Shards fill unevenly, so the total may stay a little under the capacity.
        assert_eq!(cache.is_empty(), capacity == 0);
        assert_eq!(cache.capacity(), capacity);
    }

    // A token in steady use survives a stream of one-off tokens.
    let cache = TokenCache::new(64);
    let hot = mint(Alg::EdDSA);
    let first = v.verify_cached(&cache, hot.as_bytes(), None, NOW).unwrap();
    for i in 0..300 {
        let s = TokenSpec {
            sub: format!("once{i}"),
            ..spec()
        };
        let t = mint_at(key(Alg::HS256), &s, NOW).unwrap();
        v.verify_cached(&cache, t.as_bytes(), None, NOW).unwrap();
        let again = v.verify_cached(&cache, hot.as_bytes(), None, NOW).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "evicted after {i}");
    }
}

#[test]
fn cache_prefers_evicting_expired_entries() {
    let v = verifier();
    let cache = TokenCache::new(1);
    let short = mint_at(
        key(Alg::EdDSA),
        &TokenSpec {
            ttl: Duration::from_secs(1),
            ..spec()
        },
        NOW,
    )
    .unwrap();
    let s = v
        .verify_cached(&cache, short.as_bytes(), None, NOW)
        .unwrap();
    // Referenced, but expired by the time the next token arrives: replaced.
    v.verify_cached(&cache, short.as_bytes(), None, NOW)
        .unwrap();
    let long = mint(Alg::ES256);
    v.verify_cached(&cache, long.as_bytes(), None, NOW + 100)
        .unwrap();
    assert_eq!(cache.len(), 1);
    assert!(cache
        .get(&TokenCache::key_of(long.as_bytes()), NOW + 100)
        .is_some());
    drop(s);
}

#[test]
fn cache_is_safe_from_many_threads() {
    let v = verifier();
    let cache = TokenCache::new(32);
    let tokens: Vec<String> = (0..48)
        .map(|i| {
            let s = TokenSpec {
                sub: format!("t{i}"),
                bind_cert_der: (i % 2 == 0).then(|| CERT.to_vec()),
                ..spec()
            };
            mint_at(key(Alg::ALL[i % 4]), &s, NOW).unwrap()
        })
        .collect();
    let mine = CertThumbprint::of(CERT);
    let theirs = CertThumbprint::of(OTHER_CERT);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let (v, cache, tokens) = (&v, &cache, &tokens);
            scope.spawn(move || {
                for round in 0..60 {
                    let i = (t * 7 + round * 5) % tokens.len();
                    let ok = v
                        .verify_cached(cache, tokens[i].as_bytes(), Some(&mine), NOW)
                        .unwrap();
                    assert_eq!(ok.sub(), format!("t{i}"));
                    let stolen = v.verify_cached(cache, tokens[i].as_bytes(), Some(&theirs), NOW);
                    assert_eq!(stolen.is_err(), i % 2 == 0);
                }
            });
        }
    });
    assert!(cache.len() <= 32);
}

// ---------------------------------------------------------------------------------------------
// Never panics

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("alg".to_owned()),
                    Just("kid".to_owned()),
                    Just("exp".to_owned()),
                    Just("scopes".to_owned()),
                    Just("cnf".to_owned()),
                    Just("prefix".to_owned()),
                    Just("ops".to_owned()),
                    "[a-z#]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(
        bytes in prop::collection::vec(any::<u8>(), 0..10_000),
        dots in prop::collection::vec(0usize..10_000, 0..4),
    ) {
        let mut bytes = bytes;
        // Sprinkle separators so some inputs reach the segment parsers.
        for d in dots {
            if d < bytes.len() {
                bytes[d] = b'.';
            }
        }
        let v = verifier();
        let _ = v.verify(&bytes, Some(CERT), NOW);
        let _ = v.verify_cached(&TokenCache::new(4), &bytes, None, NOW);
    }

    #[test]
    fn verify_never_panics_on_signed_arbitrary_json(
        header_extra in json_value(),
        claims in json_value(),
        alg_pick in 0usize..6,
        kid_pick in 0usize..3,
        sign_with in prop_oneof![Just(Alg::EdDSA), Just(Alg::HS256), Just(Alg::ES256)],
        mutate in any::<bool>(),
    ) {
        let alg = ["EdDSA", "ES256", "RS256", "HS256", "none", "HS512"][alg_pick];
        let kid = [key(sign_with).kid(), "nope", ""][kid_pick];
        let mut header = match header_extra {
            Value::Object(m) => Value::Object(m),
            other => json!({ "x": other }),
        };
        header["alg"] = json!(alg);
        header["kid"] = json!(kid);
        let mut claims = claims;
        if mutate {
            // Start from valid claims and overwrite some of them.
            let mut base = self::claims();
            if let Value::Object(m) = claims {
                for (k, val) in m {
                    base[k] = val;
                }
            }
            claims = base;
        }
        let token = forge(sign_with, &header, &claims);
        let v = verifier();
        if let Ok(ok) = v.verify(token.as_bytes(), Some(CERT), NOW) {
            // Anything that passes must really be acceptable.
            prop_assert!(ok.exp() + 5 > NOW);
            prop_assert_eq!(ok.alg().as_str(), alg);
        }
    }
}
