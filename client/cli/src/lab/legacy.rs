//! The token labs' tools: `skv lab forge-jwt` (write any JWT) and the legacy service, a
//! DELIBERATELY NAIVE verifier, here so that the classic JWT bugs can be shown somewhere
//! (skv-node cannot have them: its verifier pins the algorithm to the key, see
//! server/src/auth/verifier.rs).
//!
//! [`legacy_verify`] is what a hand-rolled verifier that trusts the token's header does:
//! - it takes the algorithm from the header's `alg`, so `alg: none` means "no signature to
//!   check" (lab 05);
//! - it has one key file, the issuer's public key PEM, and hands it to whatever algorithm the
//!   header names, so with `alg: HS256` the public file's bytes become an HMAC secret that
//!   anyone can read (lab 06);
//! - it checks `exp` when present, and nothing else (no `iss`, `aud`, `nbf`, binding).
//!
//! Never copy it. It lives in the lab code only, and only ever runs inside `skv lab`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use clap::Args;
use skv_client::exit;
use skv_token::Jwk;

use super::{world, Failure, Lab, Result};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the raw 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The PEM (SPKI) form of an Ed25519 JWK's public key.
pub(crate) fn ed25519_public_pem(jwk: &Jwk) -> std::result::Result<String, String> {
    let raw = ed25519_raw(jwk)?;
    let mut der = ED25519_SPKI_PREFIX.to_vec();
    der.extend_from_slice(&raw);
    let b64 = STANDARD.encode(der);
    Ok(format!(
        "-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n"
    ))
}

fn ed25519_raw(jwk: &Jwk) -> std::result::Result<Vec<u8>, String> {
    if jwk.kty != "OKP" || jwk.crv.as_deref() != Some("Ed25519") {
        return Err(format!(
            "the issuer key is {} {:?}, not Ed25519",
            jwk.kty, jwk.crv
        ));
    }
    let x = jwk.x.as_deref().ok_or("the issuer key has no x")?;
    let raw = URL_SAFE_NO_PAD
        .decode(x)
        .map_err(|e| format!("the issuer key's x: {e}"))?;
    if raw.len() != 32 {
        return Err("the issuer key's x is not 32 bytes".into());
    }
    Ok(raw)
}

/// What the legacy service is configured with: the issuer's public key, as a PEM file (its
/// bytes exactly) and the raw key for real EdDSA checks.
#[derive(Debug, Clone)]
pub(crate) struct LegacyKey {
    pub(crate) pem: Vec<u8>,
    pub(crate) raw: Vec<u8>,
}

impl LegacyKey {
    /// The lab's own copy (DIR/.lab/issuer-public.pem): editing DIR/public/ changes nothing.
    pub(crate) fn load(dir: &Path) -> std::result::Result<LegacyKey, String> {
        let pem = std::fs::read(world::lab_private(dir).join("issuer-public.pem"))
            .map_err(|e| format!("the lab has no legacy service key: {e}"))?;
        let text = String::from_utf8_lossy(&pem);
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("legacy key: {e}"))?;
        let raw = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .ok_or("legacy key is not Ed25519")?
            .to_vec();
        Ok(LegacyKey { pem, raw })
    }
}

/// A token the legacy service accepted.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) alg: String,
    pub(crate) claims: serde_json::Value,
}

/// THE VULNERABLE LEGACY PATTERN (see the module docs): trusts the header's `alg`.
pub(crate) fn legacy_verify(
    token: &str,
    key: &LegacyKey,
    now: i64,
) -> std::result::Result<Accepted, String> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts[..] else {
        return Err(format!(
            "a JWT has three dot-separated parts (header.claims.signature, the last may be \
             empty); this has {}",
            parts.len()
        ));
    };
    let header = decode_json(h, "header")?;
    let claims = decode_json(c, "claims")?;
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or("the header has no alg, so the legacy service cannot pick a check")?
        .to_owned();
    let signed = format!("{h}.{c}");
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| format!("the signature part is not base64url: {e}"))?;
    // Case-insensitive, as several old libraries were: "None" and "NONE" got through too.
    match alg.to_ascii_lowercase().as_str() {
        // BUG (lab 05): the token itself said no signature is needed, and it was believed.
        "none" => {}
        // BUG (lab 06): the verifier's only key is the public PEM file, and HS256 makes it a
        // shared secret. Anyone can read a public key.
        "hs256" => {
            let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.pem);
            ring::hmac::verify(&mac, signed.as_bytes(), &signature).map_err(|_| {
                "HS256 signature does not verify with the service's key file as the secret"
                    .to_owned()
            })?;
        }
        "eddsa" => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key.raw)
                .verify(signed.as_bytes(), &signature)
                .map_err(|_| "EdDSA signature does not verify with the issuer's key".to_owned())?;
        }
        other => return Err(format!("alg {other:?} is not one the legacy service knows")),
    }
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_i64().ok_or("exp is not a number")?;
        if exp <= now {
            return Err(format!("the token expired {} s ago", now - exp));
        }
    }
    Ok(Accepted { alg, claims })
}

fn decode_json(part: &str, what: &str) -> std::result::Result<serde_json::Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("the {what} is not base64url: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("the {what} is not JSON: {e}"))?;
    if !value.is_object() {
        return Err(format!("the {what} is not a JSON object"));
    }
    Ok(value)
}

/// The `scopes` of `claims` that grant `op` on `key` (skv's claim format, which the legacy
/// service shares), as `op:prefix` strings; empty when none does.
pub(crate) fn grants(claims: &serde_json::Value, op: &str, key: &str) -> Vec<String> {
    let Some(scopes) = claims.get("scopes").and_then(serde_json::Value::as_array) else {
        return Vec::new();
    };
    scopes
        .iter()
        .filter_map(|s| {
            let prefix = s.get("prefix")?.as_str()?;
            let ops = s.get("ops")?.as_array()?;
            (ops.iter().any(|o| o.as_str() == Some(op)) && key.starts_with(prefix))
                .then(|| format!("{op}:{prefix}"))
        })
        .collect()
}

/// Every grant of `claims` in the `ops:prefix` form, for messages.
pub(crate) fn all_grants(claims: &serde_json::Value) -> String {
    let Some(scopes) = claims.get("scopes").and_then(serde_json::Value::as_array) else {
        return "no scopes claim".into();
    };
    let list: Vec<String> = scopes
        .iter()
        .map(|s| {
            let ops: Vec<&str> = s
                .get("ops")
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(serde_json::Value::as_str).collect())
                .unwrap_or_default();
            let prefix = s
                .get("prefix")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("?");
            format!("{}:{prefix}", ops.join(","))
        })
        .collect();
    if list.is_empty() {
        "no grant".into()
    } else {
        list.join(" ")
    }
}

/// `skv lab legacy-verify N FILE`.
pub(crate) fn verify_command(lab: &Lab, dir: &Path, token_file: &Path) -> Result<u8> {
    let dir = world::open(lab, dir)?;
    let key = LegacyKey::load(&dir).map_err(Failure::usage)?;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", token_file.display())))?;
    let now = skv_token::unix_now();
    match legacy_verify(&token, &key, now) {
        Ok(accepted) => {
            let sub = accepted
                .claims
                .get("sub")
                .and_then(serde_json::Value::as_str);
            outln!(
                "legacy service: ACCEPTED (alg {}), subject {}",
                accepted.alg,
                sub.map_or("(none)".into(), |s| format!("{s:?}"))
            );
            outln!("  grants: {}", all_grants(&accepted.claims));
            Ok(exit::OK)
        }
        Err(why) => {
            outln!("legacy service: REFUSED: {why}");
            Ok(1)
        }
    }
}

/// `skv lab forge-jwt`.
#[derive(Debug, Args)]
pub(crate) struct ForgeArgs {
    /// The header, as JSON.
    #[arg(long, value_name = "JSON", default_value = r#"{"alg":"none"}"#)]
    pub(crate) header: String,
    /// The claims, as JSON (`@FILE` reads them from FILE).
    #[arg(long, value_name = "JSON")]
    pub(crate) claims: String,
    /// Sign with HMAC-SHA256 using FILE's bytes, exactly as they are, as the secret (the
    /// header is not changed: say `"alg":"HS256"` in it yourself). Without it the signature
    /// part is empty.
    #[arg(long, value_name = "FILE")]
    pub(crate) hs256_key: Option<PathBuf>,
}

pub(crate) fn forge(args: &ForgeArgs) -> Result<u8> {
    let claims_text = match args.claims.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read {path}: {e}")))?,
        None => args.claims.clone(),
    };
    let header: serde_json::Value = serde_json::from_str(&args.header)
        .map_err(|e| Failure::usage(format!("--header is not JSON: {e}")))?;
    let claims: serde_json::Value = serde_json::from_str(&claims_text)
        .map_err(|e| Failure::usage(format!("--claims is not JSON: {e}")))?;
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = match &args.hs256_key {
        Some(path) => {
            let secret = std::fs::read(path)
                .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref())
        }
        None => String::new(),
    };
    outln!("{signed}.{signature}");
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (LegacyKey, ring::signature::Ed25519KeyPair) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        use ring::signature::KeyPair;
        let raw = pair.public_key().as_ref().to_vec();
        let jwk = Jwk::ed25519("k1", &raw);
        let pem = ed25519_public_pem(&jwk).unwrap().into_bytes();
        (LegacyKey { pem, raw }, pair)
    }

    fn part(v: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn garbage_is_refused_without_panicking() {
        use rand::{Rng, SeedableRng};
        let (key, _) = key();
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let alphabet = b"ab.=-_{}\"\\:, \n\x00\xffeyJ";
        for _ in 0..5000 {
            let len = rng.gen_range(0..64);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let text = String::from_utf8_lossy(&bytes);
            assert!(legacy_verify(&text, &key, 0).is_err(), "{text:?}");
            let _ = crate::lab::sniff::parse_capture(&bytes);
            let mut capture = crate::lab::sniff::MAGIC.to_vec();
            capture.extend_from_slice(&bytes);
            let _ = crate::lab::sniff::parse_capture(&capture);
        }
        // Valid JSON in the wrong places.
        let part = |v: &str| URL_SAFE_NO_PAD.encode(v);
        for (h, c) in [
            ("[]", "{}"),
            ("{\"alg\":7}", "{}"),
            ("{\"alg\":\"none\"}", "[1]"),
            ("{\"alg\":\"none\"}", "{\"exp\":\"x\"}"),
        ] {
            assert!(
                legacy_verify(&format!("{}.{}.", part(h), part(c)), &key, 0).is_err(),
                "{h} {c}"
            );
        }
    }

    #[test]
    fn the_legacy_verifier_has_both_classic_bugs_and_still_checks_real_signatures() {
        let (key, pair) = key();
        let claims = serde_json::json!({"sub": "x", "exp": 2000, "scopes": [{"prefix": "secret/", "ops": ["read"]}]});
        let none = format!(
            "{}.{}.",
            part(&serde_json::json!({"alg": "none"})),
            part(&claims)
        );
        assert!(
            legacy_verify(&none, &key, 1000).is_ok(),
            "alg none is believed"
        );
        assert!(legacy_verify(&none, &key, 3000)
            .unwrap_err()
            .contains("expired"));

        let h = part(&serde_json::json!({"alg": "HS256"}));
        let signed = format!("{h}.{}", part(&claims));
        let mac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.pem);
        let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&mac, signed.as_bytes()).as_ref());
        assert!(legacy_verify(&format!("{signed}.{sig}"), &key, 1000).is_ok());
        let wrong = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
        let bad = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&wrong, signed.as_bytes()).as_ref());
        assert!(legacy_verify(&format!("{signed}.{bad}"), &key, 1000).is_err());

        let h = part(&serde_json::json!({"alg": "EdDSA"}));
        let signed = format!("{h}.{}", part(&claims));
        let sig = URL_SAFE_NO_PAD.encode(pair.sign(signed.as_bytes()).as_ref());
        assert!(legacy_verify(&format!("{signed}.{sig}"), &key, 1000).is_ok());
        assert!(legacy_verify(
            &format!("{signed}.{}", URL_SAFE_NO_PAD.encode([0u8; 64])),
            &key,
            1000
        )
        .is_err());
        assert!(legacy_verify("a.b", &key, 1000).is_err());

        assert_eq!(grants(&claims, "read", "secret/flag"), ["read:secret/"]);
        assert_eq!(
            all_grants(&serde_json::json!({"scopes": "nope"})),
            "no scopes claim"
        );
        assert!(grants(&claims, "read", "public/x").is_empty());
        assert!(grants(&claims, "write", "secret/flag").is_empty());
    }
}

/// Labs 05 and 06 share their rule, with the algorithm and the audit reasons as parameters.
pub(crate) mod forged {
    use super::{all_grants, grants, legacy_verify, LegacyKey};
    use crate::lab::check::{Attempt, Ctx, Part, Report};
    use crate::lab::world;

    /// The student's forged token, relative to DIR.
    pub(crate) const FILE: &str = "forged.token";
    const NODE: &str = "db";
    const KEY: &str = "secret/flag";
    /// The student's identity: the forged token is replayed from its certificate.
    const STUDENT: &str = "mallory";

    /// Break it: the legacy service accepts DIR/forged.token with `alg` (lower case) and it
    /// grants read on secret/flag. Fix it: the node's audit log shows the student's own
    /// attempt refused for a reason containing one of `reasons`, and the checker's replay of
    /// the same token from the student's certificate is refused.
    pub(crate) fn check(ctx: &Ctx, alg: &str, reasons: &[&str], lab: u32) -> Report {
        let mut break_it = Part::new("break it");
        let token = break_it.require(ctx.artifact_text(
            FILE,
            "your forged token, on one line (header.claims.signature)",
        ));
        if let Some(token) = &token {
            match LegacyKey::load(&ctx.dir) {
                Ok(key) => match legacy_verify(token, &key, skv_token::unix_now()) {
                    Err(why) => break_it.miss(format!("the legacy service refuses {FILE}: {why}")),
                    Ok(accepted) if accepted.alg.to_ascii_lowercase() != alg => {
                        break_it.miss(format!(
                            "the legacy service accepted {FILE}, but with alg {}: this lab is \
                             about a token with alg {alg}",
                            accepted.alg
                        ))
                    }
                    Ok(accepted) => {
                        let read = grants(&accepted.claims, "read", KEY);
                        if read.is_empty() {
                            break_it.miss(format!(
                                "the legacy service accepted {FILE} (alg {}), but it grants {} \
                                 and nothing that reads {KEY}: grant read on a prefix of {KEY}",
                                accepted.alg,
                                all_grants(&accepted.claims)
                            ));
                        } else {
                            break_it.note(format!(
                                "the legacy service accepted {FILE} (alg {}) and would serve \
                                 {KEY} ({})",
                                accepted.alg,
                                read.join(", ")
                            ));
                        }
                    }
                },
                Err(e) => break_it.miss(e),
            }
        }

        let mut fix_it = Part::new("fix it");
        let Some(token) = token else {
            fix_it.miss(format!("write {FILE} first (see \"break it\")"));
            return Report::of(vec![break_it, fix_it]);
        };
        if fix_it.require(ctx.require_running(NODE)).is_none() {
            return Report::of(vec![break_it, fix_it]);
        }
        let named = |line: &serde_json::Value| {
            line["decision"] == "deny"
                && line["reason"]
                    .as_str()
                    .is_some_and(|r| reasons.iter().any(|want| r.contains(want)))
        };
        // The evidence is the student's own attempt in the audit log (briefly waited for: the
        // audit writer is a background thread). The checker's replay then confirms that the
        // node refuses this very token; its own audit line is not waited for, because a
        // repeat of the same refusal within a second is only written, aggregated, when that
        // second is over.
        let own = ctx.wait_audit(NODE, 0, named);
        let (cert, key) = world::student_identity(&ctx.dir, STUDENT);
        let replay = ctx.attempt(
            NODE,
            &Attempt {
                identity: Some((cert, key)),
                token: Some(token),
                ..Attempt::default()
            },
            KEY,
        );
        if replay.value().is_some() {
            fix_it.miss(format!(
                "the skv node SERVED {KEY} for {FILE}: that must never happen"
            ));
        } else if !replay.refused() {
            fix_it.miss(format!(
                "the checker could not replay {FILE} against the node: {}",
                replay.describe()
            ));
        } else {
            fix_it.note(format!(
                "the checker's replay of {FILE} was {}",
                replay.describe()
            ));
            match own {
                Some(line) => {
                    let reason = line["reason"].as_str().unwrap_or_default();
                    fix_it.note(format!("skv's audit log names the refusal: {reason}"));
                    if reason.contains("header has no kid") {
                        fix_it.note(
                            "put the issuer's kid in the header (see `skv token inspect` of your \
                             own token) to meet the check this lab is about: each kid verifies \
                             one algorithm only",
                        );
                    }
                }
                None => fix_it.miss(format!(
                    "the node's audit log shows no forged token refused yet: send {FILE} to the \
                     node yourself (skv --addr $DB_ADDR --ca pki/ca.pem --cert \
                     pki/clients/{STUDENT}.pem --key pki/clients/{STUDENT}-key.pem --token-file \
                     {FILE} get {KEY}), then `skv lab check {lab}`"
                )),
            }
        }
        Report::of(vec![break_it, fix_it])
    }
}
