//! Checkpoint 2: is this token genuine, current, for this cluster, and presented by the client
//! it was issued to?
//!
//! The order of the checks is part of the design:
//! 1. Size, before anything is decoded ([`skv_proto::MAX_TOKEN_LEN`]).
//! 2. The header, parsed by us: three segments, a JSON object, no `jku`/`x5u`/`jwk`/`x5c`/`crit`,
//!    an allowed `alg`, a `kid` that names a key of *that* algorithm. Only then is a key chosen,
//!    and it is always the keyset's key for that kid; the token never supplies key material.
//! 3. The signature, by jsonwebtoken on the ring provider, restricted to the key's one
//!    algorithm. Claims are not interpreted before it passes.
//! 4. The claims, read one by one from the JSON so a missing or mistyped claim is named
//!    precisely and a string `exp`/`nbf` is refused instead of being taken as absent.
//!    jsonwebtoken's own claim checks are switched off: they read the system clock, while this
//!    module takes `now` from the caller (one clock read per request, testable).
//! 5. The certificate binding (`cnf`), compared in constant time.
//!
//! Scopes are compiled into [`Grants`] for checkpoint 3.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::Validation;
use ring::digest;
use serde::Deserialize;
use serde_json::{Map, Value};
use skv_proto::MAX_TOKEN_LEN;
use skv_token::{provider, Alg, Confirmation, Scope, ScopeOp};
use subtle::ConstantTimeEq;

use super::cache::TokenCache;
use super::error::{AuthError, Echo, PolicyError};
use super::keyset::Keyset;
use super::scopes::Grants;

/// Header members that would let a token choose or carry its own key, or require extensions
/// skv does not implement. Refused outright, whatever their value.
const FORBIDDEN_HEADERS: [&str; 5] = ["jku", "x5u", "jwk", "x5c", "crit"];

/// Every verifier gets a distinct id, so a shared [`TokenCache`] never serves a verification
/// made under another policy or keyset.
static VERIFIER_IDS: AtomicU64 = AtomicU64::new(1);

/// What a node requires of a token, besides a valid signature by a key in its keyset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Required `aud`: this cluster's name.
    pub audience: String,
    /// Required `iss`.
    pub issuer: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`; whole seconds count. Default 5 s.
    pub leeway: Duration,
    /// Refuse tokens without a `cnf` certificate binding.
    pub require_bound_tokens: bool,
    /// Algorithms accepted in token headers; keys of other algorithms in the keyset are never
    /// used. Default: all four.
    pub allowed_algs: Vec<Alg>,
}

impl Policy {
    /// The default leeway.
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

    /// A policy with the defaults: 5 s leeway, bearer tokens accepted, all algorithms.
    pub fn new(audience: impl Into<String>, issuer: impl Into<String>) -> Policy {
        Policy {
            audience: audience.into(),
            issuer: issuer.into(),
            leeway: Policy::DEFAULT_LEEWAY,
            require_bound_tokens: false,
            allowed_algs: Alg::ALL.to_vec(),
        }
    }
}

/// SHA-256 of a client certificate's DER: what a `cnf` binding is compared with. Compute it
/// once per connection; comparing is then cheap on every request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertThumbprint([u8; 32]);

impl CertThumbprint {
    /// The thumbprint of a certificate.
    pub fn of(cert_der: &[u8]) -> CertThumbprint {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, cert_der).as_ref());
        CertThumbprint(out)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as the audit log shows peers.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for CertThumbprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertThumbprint({})", self.to_hex())
    }
}

/// A token that passed checkpoint 2, in the form checkpoint 3 needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    sub: String,
    jti: String,
    kid: String,
    alg: Alg,
    iat: i64,
    exp: i64,
    leeway: i64,
    grants: Grants,
    cnf: Option<[u8; 32]>,
    /// The verifier (policy + keyset) that produced this, for cache staleness checks.
    verifier_id: u64,
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verified")
            .field("sub", &self.sub)
            .field("jti", &self.jti)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("exp", &self.exp)
            .field("bound", &self.cnf.is_some())
            .field("grants", &self.grants)
            .finish()
    }
}

impl Verified {
    /// Subject.
    pub fn sub(&self) -> &str {
        &self.sub
    }

    /// Token id.
    pub fn jti(&self) -> &str {
        &self.jti
    }

    /// The kid of the key that signed the token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm that signed the token.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// Issued at, seconds since the epoch.
    pub fn iat(&self) -> i64 {
        self.iat
    }

    /// Expiry, seconds since the epoch.
    pub fn exp(&self) -> i64 {
        self.exp
    }

    /// Whether the token is bound to a client certificate.
    pub fn is_bound(&self) -> bool {
        self.cnf.is_some()
    }

    /// The compiled scopes.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Whether the token allows `op` on `key`. Deny by default; `admin` implies all.
    pub fn allows(&self, op: ScopeOp, key: &[u8]) -> bool {
        self.grants.allows(op, key)
    }

    /// Whether the token allows scanning `prefix`: one read grant must cover the whole range
    /// (a wider scan is refused, not filtered; see [`super::scopes`]).
    pub fn allows_scan(&self, prefix: &[u8]) -> bool {
        self.grants.allows_scan(prefix)
    }

    /// [`Verified::allows`] as a `Result`, with the audit reason on refusal.
    pub fn authorize(&self, op: ScopeOp, key: &[u8]) -> Result<(), AuthError> {
        if self.allows(op, key) {
            Ok(())
        } else {
            Err(self.out_of_scope(op))
        }
    }

    /// [`Verified::allows_scan`] as a `Result`, with the audit reason on refusal.
    pub fn authorize_scan(&self, prefix: &[u8]) -> Result<(), AuthError> {
        if self.allows_scan(prefix) {
            Ok(())
        } else {
            Err(self.out_of_scope(ScopeOp::Read))
        }
    }

    fn out_of_scope(&self, op: ScopeOp) -> AuthError {
        AuthError::OutOfScope {
            op,
            sub: Echo::new(&self.sub),
        }
    }

    /// Whether the token is still within its lifetime at `now` (with the leeway it was
    /// verified under). For per-connection auth, which verifies once and must still stop
    /// honouring the token when it expires; the cache uses it on every hit.
    pub fn check_live(&self, now: i64) -> Result<(), AuthError> {
        if now >= self.exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired {
                exp: self.exp,
                now,
                leeway: self.leeway,
            });
        }
        Ok(())
    }

    pub(crate) fn verifier_id(&self) -> u64 {
        self.verifier_id
    }
}

/// Verifies tokens against one keyset under one policy. Cheap to share (`Arc`) across tasks;
/// to change keys or policy, build a new one (a reload), which also invalidates cached
/// verifications made by the old one.
pub struct Verifier {
    keyset: Keyset,
    policy: Policy,
    leeway: i64,
    /// jsonwebtoken settings per algorithm: signature only, one algorithm, no claim checks.
    validations: Vec<(Alg, Validation)>,
    id: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keyset", &self.keyset)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// Builds a verifier; installs skv's ring provider in jsonwebtoken if needed.
    pub fn new(keyset: Keyset, policy: Policy) -> Result<Verifier, PolicyError> {
        if policy.audience.is_empty() {
            return Err(PolicyError::EmptyAudience);
        }
        if policy.issuer.is_empty() {
            return Err(PolicyError::EmptyIssuer);
        }
        if policy.allowed_algs.is_empty() {
            return Err(PolicyError::NoAlgorithms);
        }
        provider::install()?;
        let validations = Alg::ALL
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg.to_jwt());
                v.required_spec_claims.clear();
                v.validate_exp = false;
                v.validate_nbf = false;
                v.validate_aud = false;
                v.leeway = 0;
                (alg, v)
            })
            .collect();
        Ok(Verifier {
            leeway: i64::try_from(policy.leeway.as_secs()).unwrap_or(i64::MAX),
            keyset,
            policy,
            validations,
            id: VERIFIER_IDS.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The keyset in use.
    pub fn keyset(&self) -> &Keyset {
        &self.keyset
    }

    /// The policy in use.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verifies `token` presented on a connection whose client certificate is `peer_cert_der`
    /// (`None` on plaintext), at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        token: &[u8],
        peer_cert_der: Option<&[u8]>,
        now: i64,
    ) -> Result<Verified, AuthError> {
        let peer = peer_cert_der.map(CertThumbprint::of);
        self.verify_for_peer(token, peer.as_ref(), now)
    }

    /// [`Verifier::verify`] with the peer's certificate thumbprint computed once per
    /// connection.
    pub fn verify_for_peer(
        &self,
        token: &[u8],
        peer: Option<&CertThumbprint>,
        now: i64,
    ) -> Result<Verified, AuthError> {
        let verified = self.verify_token(token, now)?;
        self.check_binding(verified.cnf.as_ref(), peer)?;
        Ok(verified)
    }

    /// This verifier's id: cache entries it made carry it.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// [`Verifier::verify_for_peer`] through a cache of verified tokens. A hit skips the
    /// signature and claim checks, but is still refused when the token has expired, when it
    /// was verified by another verifier (a keyset or policy reload), and when its certificate
    /// binding does not match *this* connection's certificate: a bound token stolen and
    /// replayed from another client fails even while it is cached. Only successful
    /// verifications are cached.
    pub fn verify_cached(
        &self,
        cache: &TokenCache,
        token: &[u8],
        peer: Option<&CertThumbprint>,
        now: i64,
    ) -> Result<Arc<Verified>, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let key = TokenCache::key_of(token);
        let metrics = crate::metrics::get();
        if let Some(hit) = cache.get(&key, now) {
            if hit.verifier_id() == self.id {
                if let Some(m) = metrics {
                    m.token_cache(true);
                }
                self.check_binding(hit.cnf.as_ref(), peer)?;
                return Ok(hit);
            }
        }
        if let Some(m) = metrics {
            m.token_cache(false);
        }
        let verified = Arc::new(self.verify_token(token, now)?);
        // Cache before the binding check: the token itself is genuine, and the next request
        // from its rightful client should hit.
        cache.insert(key, Arc::clone(&verified), now);
        self.check_binding(verified.cnf.as_ref(), peer)?;
        Ok(verified)
    }

    fn check_binding(
        &self,
        cnf: Option<&[u8; 32]>,
        peer: Option<&CertThumbprint>,
    ) -> Result<(), AuthError> {
        match (cnf, peer) {
            (Some(want), Some(got)) => {
                if bool::from(want.ct_eq(got.as_bytes())) {
                    Ok(())
                } else {
                    Err(AuthError::CertificateMismatch)
                }
            }
            (Some(_), None) => Err(AuthError::NoPeerCertificate),
            (None, _) if self.policy.require_bound_tokens => Err(AuthError::Unbound),
            (None, _) => Ok(()),
        }
    }

    /// Everything but the binding.
    fn verify_token(&self, token: &[u8], now: i64) -> Result<Verified, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::TooLarge {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        let mut segments = token.split(|&b| b == b'.');
        let (Some(header_b64), Some(_), Some(signature_b64), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(AuthError::Malformed(
                "expected three segments separated by '.'",
            ));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&header_json)
            .map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
        if let Some(name) = FORBIDDEN_HEADERS.iter().find(|n| header.contains_key(**n)) {
            return Err(AuthError::ForbiddenHeader(name));
        }
        let alg_name = match header.get("alg") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(AuthError::Malformed("header alg is not a string")),
            None => return Err(AuthError::MissingAlg),
        };
        let alg = Alg::from_jws_name(alg_name)
            .filter(|a| self.policy.allowed_algs.contains(a))
            .ok_or_else(|| AuthError::AlgNotAllowed {
                alg: Echo::new(alg_name),
            })?;
        let kid = match header.get("kid") {
            Some(Value::String(s)) if !s.is_empty() => s.as_str(),
            Some(Value::String(_)) | None => return Err(AuthError::MissingKid),
            Some(_) => return Err(AuthError::Malformed("header kid is not a string")),
        };
        let entry = self.keyset.get(kid).ok_or_else(|| AuthError::UnknownKid {
            kid: Echo::new(kid),
        })?;
        if entry.alg != alg {
            return Err(AuthError::AlgKeyMismatch {
                header: alg,
                key: entry.alg,
                kid: Echo::new(kid),
            });
        }
        // Checked here so that a decoding error from jsonwebtoken after this point can only be
        // about the header's member types or the (then signature-checked) claims.
        if URL_SAFE_NO_PAD.decode(signature_b64).is_err() {
            return Err(AuthError::Malformed("signature is not base64url"));
        }

        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::AlgNotAllowed {
                alg: Echo::new(alg_name),
            })?;
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, validation)
        {
            Ok(data) => data.claims,
            Err(e) => return Err(self.decode_error(e, token, kid, alg, now)),
        };
        self.check_claims(&claims, kid, alg, now)
    }

    /// Turns a jsonwebtoken failure into a precise reason. Never returns success: this is an
    /// error path whatever it finds.
    fn decode_error(
        &self,
        e: jsonwebtoken::errors::Error,
        token: &[u8],
        kid: &str,
        alg: Alg,
        now: i64,
    ) -> AuthError {
        match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature {
                kid: Echo::new(kid),
            },
            ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidToken => {
                // jsonwebtoken's typed header is stricter than the JSON object checked above
                // (e.g. `typ` must be a string).
                if jsonwebtoken::decode_header(token).is_err() {
                    return AuthError::Malformed("header member has the wrong type or is repeated");
                }
                // The header is fine and the signature segment decodes, so the failure came
                // after the signature verified: the claims. jsonwebtoken always parses its own
                // view of sub/iss/aud/exp/nbf, and a wrongly typed array there aborts the whole
                // parse; run our own claim checks (cold path) to name the claim.
                let claims = token
                    .split(|&b| b == b'.')
                    .nth(1)
                    .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
                    .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok());
                match claims.map(|c| self.check_claims(&c, kid, alg, now)) {
                    Some(Err(precise)) => precise,
                    Some(Ok(_)) => AuthError::Malformed("claims rejected by the JWS decoder"),
                    None => AuthError::Malformed("claims are not a base64url JSON object"),
                }
            }
            _ => AuthError::KeyUnusable {
                kid: Echo::new(kid),
                detail: e.to_string(),
            },
        }
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        kid: &str,
        alg: Alg,
        now: i64,
    ) -> Result<Verified, AuthError> {
        let leeway = self.leeway;
        let exp = int_claim(claims, "exp")?;
        let nbf = int_claim(claims, "nbf")?;
        let iat = int_claim(claims, "iat")?;
        let iss = str_claim(claims, "iss")?;
        let sub = str_claim(claims, "sub")?;
        let jti = str_claim(claims, "jti")?;
        let scopes = match claims.get("scopes") {
            None => return Err(AuthError::MissingClaim("scopes")),
            Some(v) => Vec::<Scope>::deserialize(v).map_err(|_| AuthError::ClaimType {
                claim: "scopes",
                expected: "a list of {prefix, ops} with ops from read, write, delete, admin",
            })?,
        };
        let cnf = match claims.get("cnf") {
            None => None,
            Some(v) => Some(thumbprint_claim(v)?),
        };

        if iss != self.policy.issuer {
            return Err(AuthError::WrongIssuer {
                found: Echo::new(iss),
            });
        }
        let aud_ok = match claims.get("aud") {
            None => return Err(AuthError::MissingClaim("aud")),
            Some(Value::String(a)) => *a == self.policy.audience,
            // RFC 7519 allows a list; the token is for us if we are on it.
            Some(Value::Array(list)) if list.iter().all(Value::is_string) => list
                .iter()
                .any(|a| a.as_str() == Some(&self.policy.audience)),
            Some(_) => {
                return Err(AuthError::ClaimType {
                    claim: "aud",
                    expected: "a string or a list of strings",
                })
            }
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired { exp, now, leeway });
        }
        if now.saturating_add(leeway) < nbf {
            return Err(AuthError::NotYetValid { nbf, now, leeway });
        }
        if now.saturating_add(leeway) < iat {
            return Err(AuthError::IssuedInFuture { iat, now, leeway });
        }
        if sub.is_empty() {
            return Err(AuthError::ClaimType {
                claim: "sub",
                expected: "a non-empty string",
            });
        }
        if jti.is_empty() {
            return Err(AuthError::ClaimType {
                claim: "jti",
                expected: "a non-empty string",
            });
        }
        Ok(Verified {
            sub: sub.to_owned(),
            jti: jti.to_owned(),
            kid: kid.to_owned(),
            alg,
            iat,
            exp,
            leeway,
            grants: Grants::from_scopes(&scopes),
            cnf,
            verifier_id: self.id,
        })
    }
}

/// An integer NumericDate. Strings, floats, booleans and null are refused: a claim that is
/// there but unreadable must never count as "no limit".
fn int_claim(claims: &Map<String, Value>, name: &'static str) -> Result<i64, AuthError> {
    match claims.get(name) {
        None => Err(AuthError::MissingClaim(name)),
        Some(v) => v.as_i64().ok_or(AuthError::ClaimType {
            claim: name,
            expected: "an integer number of seconds (a JSON number)",
        }),
    }
}

fn str_claim<'a>(claims: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, AuthError> {
    match claims.get(name) {
        None => Err(AuthError::MissingClaim(name)),
        Some(v) => v.as_str().ok_or(AuthError::ClaimType {
            claim: name,
            expected: "a string",
        }),
    }
}

/// `cnf` must be exactly `{"x5t#S256": base64url(32 bytes)}`. Any other confirmation method
/// is refused rather than ignored: ignoring it would turn a bound token into a bearer token.
fn thumbprint_claim(value: &Value) -> Result<[u8; 32], AuthError> {
    let bad = AuthError::ClaimType {
        claim: "cnf",
        expected: "{\"x5t#S256\": base64url SHA-256 of a certificate}",
    };
    let cnf = Confirmation::deserialize(value).map_err(|_| bad.clone())?;
    let bytes = URL_SAFE_NO_PAD
        .decode(&cnf.x5t_s256)
        .map_err(|_| bad.clone())?;
    bytes.try_into().map_err(|_| bad)
}
