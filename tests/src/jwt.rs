//! Hand-made tokens for negative tests: any header, any claims, signed (or not) with the
//! issuer key the way an attacker or a buggy issuer would. Uses ring directly so the tests do
//! not share code with the minting they check.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

/// base64url without padding, as JWS uses.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// `header.claims` with no signature segment appended yet.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// Sign with an Ed25519 PKCS#8 PEM key (the default issuer key).
pub fn sign_eddsa(key_pem: &str, header: &Value, claims: &Value) -> anyhow::Result<String> {
    let der = pem_body(key_pem)?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
    let input = signing_input(header, claims);
    let sig = pair.sign(input.as_bytes());
    Ok(format!("{input}.{}", b64(sig.as_ref())))
}

/// Sign with HMAC-SHA256 over an arbitrary secret (for the alg-confusion attack).
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let input = signing_input(header, claims);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims a default node accepts: aud and iss defaults, valid now for 5 minutes, with the
/// given scopes (`[{"prefix": "...", "ops": [...]}]`).
pub fn claims(sub: &str, scopes: Value) -> Value {
    let now = now();
    serde_json::json!({
        "iss": skv_token::DEFAULT_TOKEN_ISSUER,
        "aud": skv_token::DEFAULT_TOKEN_AUDIENCE,
        "sub": sub,
        "iat": now,
        "nbf": now - 1,
        "exp": now + 300,
        "jti": format!("test-{sub}-{now}"),
        "scopes": scopes,
    })
}

fn pem_body(pem: &str) -> anyhow::Result<Vec<u8>> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body.trim())?)
}
