//! Why a token or a request was refused, in two registers: a coarse [`AuthCategory`] that the
//! client may be told, and a precise [`AuthError`] for the audit log.
//!
//! The split matters: telling an attacker "bad signature" versus "unknown kid" versus
//! "wrong issuer" helps them probe, while an operator reading the audit log needs exactly that.
//! No variant carries the token or its signature; the few strings taken from a token (kid, alg,
//! issuer) are escaped and cut to [`MAX_ECHO`] characters, so a hostile header can neither forge
//! audit lines nor bloat them.

use std::fmt;
use std::path::PathBuf;

use skv_proto::ErrorCode;
use skv_token::provider::ProviderConflict;
use skv_token::{Alg, JwkError, ScopeOp};

/// Characters of a token-supplied string (kid, alg, iss) kept in an error.
pub const MAX_ECHO: usize = 64;

/// What the client may learn about a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthCategory {
    /// The token was valid once but its `exp` has passed: get a new one.
    Expired,
    /// The token is malformed, forged, not yet valid, from an unknown key or issuer, or
    /// otherwise unacceptable.
    InvalidToken,
    /// The token is for another cluster.
    WrongAudience,
    /// The token is bound to another client certificate (or must be bound and is not).
    NotBoundToCertificate,
    /// The token is valid but does not grant this operation on this key.
    Forbidden,
    /// The token verifies but is on the node's denylist (by its jti or its sub).
    Revoked,
}

impl AuthCategory {
    /// A stable snake_case name, for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthCategory::Expired => "expired",
            AuthCategory::InvalidToken => "invalid_token",
            AuthCategory::WrongAudience => "wrong_audience",
            AuthCategory::NotBoundToCertificate => "not_bound_to_certificate",
            AuthCategory::Forbidden => "forbidden",
            AuthCategory::Revoked => "revoked",
        }
    }

    /// The wire error code to answer with: `forbidden` for scope refusals, `unauthenticated`
    /// for everything wrong with the token itself.
    pub fn error_code(self) -> ErrorCode {
        match self {
            AuthCategory::Forbidden => ErrorCode::Forbidden,
            _ => ErrorCode::Unauthenticated,
        }
    }

    /// The message the client sees. Says what to do, never why in detail.
    pub fn client_message(self) -> &'static str {
        match self {
            AuthCategory::Expired => "expired token: get a new one",
            AuthCategory::InvalidToken => "invalid token",
            AuthCategory::WrongAudience => "wrong audience: the token is for another cluster",
            AuthCategory::NotBoundToCertificate => {
                "not bound to this certificate: the token belongs to another client \
                 certificate, or this node requires bound tokens"
            }
            // The code already says "forbidden"; checkpoint.rs names the op and key for scope
            // refusals, since it knows the request.
            AuthCategory::Forbidden => "the token does not grant this request",
            // Starts with the words a client (or a person) looks for; the same for a jti and a
            // sub entry, since which one matched is the operator's business.
            AuthCategory::Revoked => "token revoked: ask the token's issuer for a new one",
        }
    }
}

impl fmt::Display for AuthCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precise reason a token or request was refused. `Display` is the audit-log text;
/// [`AuthError::category`] is what the client may be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request (or, per connection, HELLO) carried no token where one is required.
    #[error("no token was presented")]
    MissingToken,
    /// The token is longer than [`skv_proto::MAX_TOKEN_LEN`]; refused before any parsing.
    #[error("token of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The token is not a well-formed JWS compact serialization (three base64url segments,
    /// a JSON object header, the expected header member types).
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header carries a member that could make a verifier fetch or trust a key named by
    /// the token itself (`jku`, `x5u`, `jwk`, `x5c`) or demands extensions (`crit`).
    #[error("header member {0:?} is not accepted")]
    ForbiddenHeader(&'static str),
    /// The header has no `alg`.
    #[error("header has no alg")]
    MissingAlg,
    /// The header's `alg` is not one of the algorithms the policy allows (this covers `none`).
    #[error("alg {alg} is not allowed")]
    AlgNotAllowed {
        /// The header's alg, escaped and truncated.
        alg: Echo,
    },
    /// The header has no `kid` (or an empty one); skv never guesses which key to try.
    #[error("header has no kid")]
    MissingKid,
    /// No key in the keyset has this `kid` (never issued, or retired).
    #[error("kid {kid} is not in the keyset")]
    UnknownKid {
        /// The header's kid, escaped and truncated.
        kid: Echo,
    },
    /// The header's `alg` differs from the algorithm of the key its `kid` names (e.g. HS256
    /// with an RSA key's kid: the classic algorithm-confusion attack).
    #[error("header alg {header} does not match alg {key} of kid {kid}")]
    AlgKeyMismatch {
        /// The header's algorithm.
        header: Alg,
        /// The key's algorithm.
        key: Alg,
        /// The kid.
        kid: Echo,
    },
    /// The signature does not verify with the key named by `kid`.
    #[error("signature does not verify with kid {kid}")]
    BadSignature {
        /// The kid.
        kid: Echo,
    },
    /// The key exists but the crypto provider could not use it (should not happen with a
    /// keyset that loaded; reported rather than panicking).
    #[error("key {kid} cannot be used: {detail}")]
    KeyUnusable {
        /// The kid.
        kid: Echo,
        /// jsonwebtoken's description.
        detail: String,
    },
    /// A required claim (exp, nbf, iat, iss, aud, sub, jti, scopes) is absent.
    #[error("claim {0:?} is missing")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type, e.g. `exp` as a string. Refused, never ignored.
    #[error("claim {claim:?} must be {expected}")]
    ClaimType {
        /// The claim.
        claim: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// `iss` is not the issuer this node trusts.
    #[error("issuer {found} is not the expected issuer")]
    WrongIssuer {
        /// The token's issuer, escaped and truncated.
        found: Echo,
    },
    /// `aud` does not name this cluster.
    #[error("audience does not include this cluster")]
    WrongAudience,
    /// `exp` has passed (beyond the leeway).
    #[error("expired at {exp}, now {now} (leeway {leeway}s)")]
    Expired {
        /// The token's exp.
        exp: i64,
        /// The time of the check.
        now: i64,
        /// Leeway applied, seconds.
        leeway: i64,
    },
    /// `nbf` is still in the future (beyond the leeway).
    #[error("not valid before {nbf}, now {now} (leeway {leeway}s)")]
    NotYetValid {
        /// The token's nbf.
        nbf: i64,
        /// The time of the check.
        now: i64,
        /// Leeway applied, seconds.
        leeway: i64,
    },
    /// `iat` is in the future (beyond the leeway): a wrong issuer clock or a forged token.
    #[error("issued in the future at {iat}, now {now} (leeway {leeway}s)")]
    IssuedInFuture {
        /// The token's iat.
        iat: i64,
        /// The time of the check.
        now: i64,
        /// Leeway applied, seconds.
        leeway: i64,
    },
    /// The token is bound to a certificate (`cnf`) but the connection has none (plaintext).
    #[error("token is bound to a client certificate but the connection has none")]
    NoPeerCertificate,
    /// The token is bound to a different client certificate than the connection's: a stolen
    /// token replayed from another client.
    #[error("token is bound to another client certificate")]
    CertificateMismatch,
    /// The node requires bound tokens and this one has no `cnf`.
    #[error("token is not bound to a client certificate and this node requires binding")]
    Unbound,
    /// The token is valid but grants no scope that allows this operation on this key or scan
    /// prefix.
    #[error("{op} not granted on this key to sub {sub}")]
    OutOfScope {
        /// The operation refused.
        op: ScopeOp,
        /// The token's subject, escaped and truncated.
        sub: Echo,
    },
    /// The token verifies but a denylist entry revokes it (`skv token revoke`). The audit line
    /// carries the token's sub and jti beside this.
    #[error("token revoked by a denylist entry on its {by} (in force until {until})")]
    Revoked {
        /// `"jti"` or `"sub"`: which claim the entry matched.
        by: &'static str,
        /// When the entry lapses, seconds since the epoch (its exp plus the leeway).
        until: i64,
    },
}

impl AuthError {
    /// What the client may be told.
    pub fn category(&self) -> AuthCategory {
        match self {
            AuthError::Expired { .. } => AuthCategory::Expired,
            AuthError::WrongAudience => AuthCategory::WrongAudience,
            AuthError::NoPeerCertificate | AuthError::CertificateMismatch | AuthError::Unbound => {
                AuthCategory::NotBoundToCertificate
            }
            AuthError::OutOfScope { .. } => AuthCategory::Forbidden,
            AuthError::Revoked { .. } => AuthCategory::Revoked,
            _ => AuthCategory::InvalidToken,
        }
    }

    /// A stable snake_case identifier of the precise reason, for grouping audit lines and
    /// metrics without parsing the text.
    pub fn reason_code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::TooLarge { .. } => "too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::ForbiddenHeader(_) => "forbidden_header",
            AuthError::MissingAlg => "missing_alg",
            AuthError::AlgNotAllowed { .. } => "alg_not_allowed",
            AuthError::MissingKid => "missing_kid",
            AuthError::UnknownKid { .. } => "unknown_kid",
            AuthError::AlgKeyMismatch { .. } => "alg_key_mismatch",
            AuthError::BadSignature { .. } => "bad_signature",
            AuthError::KeyUnusable { .. } => "key_unusable",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::ClaimType { .. } => "claim_type",
            AuthError::WrongIssuer { .. } => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::IssuedInFuture { .. } => "issued_in_future",
            AuthError::NoPeerCertificate => "no_peer_certificate",
            AuthError::CertificateMismatch => "certificate_mismatch",
            AuthError::Unbound => "unbound",
            AuthError::OutOfScope { .. } => "out_of_scope",
            AuthError::Revoked { .. } => "revoked",
        }
    }
}

/// A string taken from a token, made safe to log: at most [`MAX_ECHO`] characters, shown
/// quoted and with control and non-ASCII characters escaped (Rust `{:?}` rules), so it cannot
/// break a log line or pretend to be another field.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Echo(String);

impl Echo {
    pub(crate) fn new(s: &str) -> Echo {
        let mut cut: String = s.chars().take(MAX_ECHO).collect();
        if cut.len() < s.len() {
            cut.push('…');
        }
        Echo(format!("{cut:?}"))
    }

    /// The escaped, quoted form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A keyset file that cannot be used. The node should refuse to start (or keep its previous
/// keyset on reload) rather than run with some keys missing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysetError {
    /// The file could not be read.
    #[error("cannot read keyset {}: {source}", path.display())]
    Io {
        /// The keyset file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its contents are not a usable keyset.
    #[error("keyset {}: {problem}", path.display())]
    Invalid {
        /// The keyset file.
        path: PathBuf,
        /// What is wrong with it.
        problem: KeysetProblem,
    },
}

/// What is wrong with a keyset's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeysetProblem {
    /// Larger than [`super::MAX_KEYSET_BYTES`]: not a keyset.
    #[error("{len} bytes is larger than the {max}-byte limit for a keyset")]
    TooLarge {
        /// Size found.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Not JSON of the form `{"keys": [ … ]}` with only known JWK members.
    #[error("not a JWKS keyset: {0}")]
    NotJwks(String),
    /// `keys` is empty: no token could ever verify, which is a misconfiguration.
    #[error("it holds no keys")]
    Empty,
    /// One key does not validate (unknown `kty` or `alg`, `alg`/`kty` mismatch, bad members).
    #[error("key {index} (kid {kid:?}): {source}")]
    InvalidKey {
        /// Position in `keys`, from 0.
        index: usize,
        /// Its kid as written.
        kid: String,
        /// What is wrong.
        #[source]
        source: JwkError,
    },
    /// Two keys share a kid, so a token's kid would not name one key.
    #[error("kid {0:?} appears more than once")]
    DuplicateKid(String),
}

/// A verifier could not be built from this policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The audience is empty; every token would be refused or, worse, a missing `aud` could
    /// look like a match.
    #[error("the token audience must not be empty")]
    EmptyAudience,
    /// The issuer is empty.
    #[error("the token issuer must not be empty")]
    EmptyIssuer,
    /// No algorithm is allowed.
    #[error("at least one token algorithm must be allowed")]
    NoAlgorithms,
    /// Another jsonwebtoken crypto provider owns this process.
    #[error(transparent)]
    Provider(#[from] ProviderConflict),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_escapes_and_truncates() {
        assert_eq!(Echo::new("k1").as_str(), "\"k1\"");
        let hostile = Echo::new("a\"\n{\"decision\":\"allow\"}");
        assert!(!hostile.as_str().contains('\n'));
        assert!(hostile.as_str().contains("\\\""));
        let long = Echo::new(&"x".repeat(1000));
        assert!(long.as_str().len() < MAX_ECHO + 8);
    }

    #[test]
    fn categories_map_to_wire_codes() {
        assert_eq!(AuthCategory::Forbidden.error_code(), ErrorCode::Forbidden);
        for c in [
            AuthCategory::Expired,
            AuthCategory::InvalidToken,
            AuthCategory::WrongAudience,
            AuthCategory::NotBoundToCertificate,
            AuthCategory::Revoked,
        ] {
            assert_eq!(c.error_code(), ErrorCode::Unauthenticated);
            assert!(!c.client_message().is_empty());
        }
        assert_eq!(
            AuthError::Unbound.category(),
            AuthCategory::NotBoundToCertificate
        );
        assert_eq!(AuthError::MissingKid.category(), AuthCategory::InvalidToken);
        let revoked = AuthError::Revoked {
            by: "jti",
            until: 9,
        };
        assert_eq!(revoked.category(), AuthCategory::Revoked);
        assert_eq!(revoked.reason_code(), "revoked");
        assert!(AuthCategory::Revoked
            .client_message()
            .starts_with("token revoked"));
        assert_eq!(
            AuthError::NotYetValid {
                nbf: 2,
                now: 1,
                leeway: 0
            }
            .category(),
            AuthCategory::InvalidToken
        );
    }
}
