//! Bearer tokens: everything the issuer (skv-certs) and the verifier (skv-node) must agree on.
//!
//! This crate owns:
//! - the token algorithms skv accepts ([`Alg`]) and the operations a scope grants ([`ScopeOp`]);
//! - the claims a token carries ([`TokenClaims`], [`Scope`], [`Confirmation`]) and the
//!   `--allow OPS:PREFIX` grammar that produces scopes ([`parse_allow`]);
//! - the default audience and issuer both sides assume ([`DEFAULT_TOKEN_AUDIENCE`],
//!   [`DEFAULT_TOKEN_ISSUER`]);
//! - the certificate binding value, `x5t#S256` of RFC 8705 ([`cert_thumbprint`]);
//! - the keyset file format, JWKS-style JSON ([`JwkSet`], [`Jwk`]), and what each JWK means as a
//!   verifying key ([`Jwk::to_verifying_key`]);
//! - the ring-backed [`jsonwebtoken`] crypto provider ([`provider`]);
//! - the token denylist file format, revocations by `jti` or `sub` that `skv token revoke`
//!   writes and the nodes reload ([`denylist`]).
//!
//! Why the provider lives here: jsonwebtoken 10+ has no ring backend, and its own backends pull
//! in aws-lc-rs or the RustCrypto `rsa` crate (RUSTSEC-2023-0071), so skv supplies one. Both
//! the minting side (skv-certs) and the verifying side (skv-node) need it. skv-certs is not a
//! home for it because the node must not link rcgen, skv-server is not one because credential
//! tooling should not link the node (sled, tokio, the listener), and skv-proto is not one
//! because the wire format should not carry a JWT library into every client. What this crate
//! costs is ring, which every skv binary already links through rustls, and jsonwebtoken with
//! default features off (serde, base64, a few tiny crates). The way a [`Jwk`] becomes a
//! [`jsonwebtoken::DecodingKey`] is defined next to the provider that reads those bytes, so the
//! two cannot drift apart.
//!
//! Nothing here checks a token. Verification (signature, claims, binding, scopes) is the
//! node's job, in `skv_server::auth`.

#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use ring::digest;
use serde::{Deserialize, Serialize};

use skv_proto::Op;

pub mod denylist;

/// Token audience a node requires, and `skv token issue` writes, unless told otherwise: the
/// default cluster name, so defaults match on both sides.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "skv";

/// Token issuer a node requires, and `skv token issue` writes, unless told otherwise.
pub const DEFAULT_TOKEN_ISSUER: &str = "skv";

/// Bytes of randomness in a `jti`: 128 bits, written as 32 lower-case hex digits.
pub const JTI_BYTES: usize = 16;

/// Longest `kid` a keyset may hold. A kid is looked up as a plain string, never used as a path
/// or URL; the bound only keeps a hostile header from making lookups or log lines expensive.
pub const MAX_KID_LEN: usize = 128;

/// Shortest HS256 secret accepted: RFC 7518 §3.2 requires a key at least as long as the hash.
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// Base64url without padding, the only encoding JWS and JWK use.
fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------
// Algorithms

/// The signature algorithms skv issues and verifies tokens with. Anything else (`none`, HS384,
/// PS256, …) is refused: a short list is easier to reason about and to test exhaustively.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    /// Ed25519 signatures: small, fast, deterministic. The default.
    #[default]
    EdDSA,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256 (2048-bit keys from `openssl genpkey`). The slow one; here to
    /// measure what RSA costs.
    RS256,
    /// HMAC-SHA-256 with a shared secret. Weaker by construction: every node that verifies holds
    /// the secret, so any node (or anyone who reads a node's keyset) can mint tokens.
    HS256,
}

impl Alg {
    /// Every algorithm, in the order the CLI lists them.
    pub const ALL: [Alg; 4] = [Alg::EdDSA, Alg::ES256, Alg::RS256, Alg::HS256];

    /// The JWS `alg` name (RFC 7518 / RFC 8037), e.g. `"EdDSA"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::EdDSA => "EdDSA",
            Alg::ES256 => "ES256",
            Alg::RS256 => "RS256",
            Alg::HS256 => "HS256",
        }
    }

    /// Exact, case-sensitive match of a JWS `alg` header or JWK `alg` member, as RFC 7515
    /// requires. `None` for anything skv does not accept, `"none"` included.
    pub fn from_jws_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The JWK key type this algorithm needs (`OKP`, `EC`, `RSA`, `oct`).
    pub fn kty(self) -> &'static str {
        match self {
            Alg::EdDSA => "OKP",
            Alg::ES256 => "EC",
            Alg::RS256 => "RSA",
            Alg::HS256 => "oct",
        }
    }

    /// Whether the verifying key is a shared secret (so verifiers can also sign).
    pub fn is_symmetric(self) -> bool {
        self == Alg::HS256
    }

    /// The jsonwebtoken algorithm.
    pub fn to_jwt(self) -> Algorithm {
        match self {
            Alg::EdDSA => Algorithm::EdDSA,
            Alg::ES256 => Algorithm::ES256,
            Alg::RS256 => Algorithm::RS256,
            Alg::HS256 => Algorithm::HS256,
        }
    }

    /// The skv algorithm for a jsonwebtoken one, if skv accepts it.
    pub fn from_jwt(alg: Algorithm) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.to_jwt() == alg)
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Alg {
    type Err = UnknownAlg;

    /// Case-insensitive so `--alg eddsa` works on the command line. Tokens and keysets use
    /// [`Alg::from_jws_name`], which is exact.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownAlg(s.to_owned()))
    }
}

/// An algorithm name that is not one of skv's four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown token algorithm {0:?}: expected EdDSA, ES256, RS256 or HS256")]
pub struct UnknownAlg(pub String);

// ---------------------------------------------------------------------------------------------
// Scopes

/// What a scope lets its holder do under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeOp {
    /// GET and SCAN.
    Read,
    /// PUT and CAS.
    Write,
    /// DELETE.
    Delete,
    /// Everything above, and whatever administrative operations come later.
    Admin,
}

impl ScopeOp {
    /// Every operation, in the order they are written.
    pub const ALL: [ScopeOp; 4] = [
        ScopeOp::Read,
        ScopeOp::Write,
        ScopeOp::Delete,
        ScopeOp::Admin,
    ];

    /// The lower-case name used in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeOp::Read => "read",
            ScopeOp::Write => "write",
            ScopeOp::Delete => "delete",
            ScopeOp::Admin => "admin",
        }
    }

    /// The scope a wire request needs on its key (or scan prefix). `None` for HELLO, PING and
    /// CLUSTER_MAP, which touch no key: PING serves health checks and the map only says where
    /// slots live, which every client needs before it can send anything. Control requests and
    /// imports need `admin` over the whole keyspace (an empty prefix).
    pub fn required_for(op: Op) -> Option<ScopeOp> {
        match op {
            Op::Get | Op::Scan => Some(ScopeOp::Read),
            Op::Put | Op::Cas => Some(ScopeOp::Write),
            Op::Delete => Some(ScopeOp::Delete),
            Op::Control | Op::Import | Op::Raft => Some(ScopeOp::Admin),
            // Registering a token is verified like the token itself; the requests that
            // name its handle are checked against their own op.
            Op::Hello | Op::Ping | Op::ClusterMap | Op::RegisterToken => None,
        }
    }
}

impl fmt::Display for ScopeOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ScopeOp {
    type Err = ScopeParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScopeOp::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| ScopeParseError::UnknownOp { op: s.to_owned() })
    }
}

/// One grant: these operations on every key that starts with `prefix` (byte-wise). The empty
/// prefix covers every key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Keys this grant covers: those starting with these bytes.
    pub prefix: String,
    /// What the grant allows on them.
    pub ops: Vec<ScopeOp>,
}

impl Scope {
    /// A scope with its operations sorted and deduplicated, so equal grants compare equal.
    pub fn new(prefix: impl Into<String>, ops: impl IntoIterator<Item = ScopeOp>) -> Scope {
        let ops: BTreeSet<ScopeOp> = ops.into_iter().collect();
        Scope {
            prefix: prefix.into(),
            ops: ops.into_iter().collect(),
        }
    }
}

/// The `--allow` form, `read,write:users/alice/`, which [`parse_allow`] reads back.
impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(op.as_str())?;
        }
        write!(f, ":{}", self.prefix)
    }
}

/// Why an `--allow OPS:PREFIX` string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeParseError {
    /// There is no `:` between the operations and the prefix.
    #[error(
        "{input:?} is not OPS:PREFIX; write e.g. `read,write:users/alice/`, or `read:` for \
         every key"
    )]
    MissingColon {
        /// The string as given.
        input: String,
    },
    /// Nothing, or an empty item, before the `:` (e.g. `:users/` or `read,,write:x`).
    #[error(
        "{input:?} names no operation before ':' (or has an empty one); expected a comma list \
         of read, write, delete, admin"
    )]
    EmptyOp {
        /// The string as given.
        input: String,
    },
    /// An operation that is not read, write, delete or admin.
    #[error("unknown operation {op:?}: expected read, write, delete or admin")]
    UnknownOp {
        /// The operation as written.
        op: String,
    },
}

/// Parses one `--allow` value: a comma list of operations, a `:`, then a key prefix.
///
/// The split is at the *first* `:`, so prefixes may contain colons (`read:tenant:42/`). The
/// prefix may be empty, which grants the operations on every key. Spaces around the operation
/// names are ignored; the prefix is taken byte for byte. Repeated operations collapse.
pub fn parse_allow(input: &str) -> Result<Scope, ScopeParseError> {
    let Some((ops, prefix)) = input.split_once(':') else {
        return Err(ScopeParseError::MissingColon {
            input: input.to_owned(),
        });
    };
    let mut parsed = Vec::new();
    for op in ops.split(',') {
        let op = op.trim();
        if op.is_empty() {
            return Err(ScopeParseError::EmptyOp {
                input: input.to_owned(),
            });
        }
        parsed.push(op.parse::<ScopeOp>()?);
    }
    Ok(Scope::new(prefix, parsed))
}

// ---------------------------------------------------------------------------------------------
// Claims

/// Proof-of-possession confirmation (RFC 7800), limited to the certificate thumbprint of
/// RFC 8705: the token is only valid on a TLS connection whose client certificate hashes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirmation {
    /// base64url(SHA-256(client certificate DER)); see [`cert_thumbprint`].
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The claims of an skv token, as the issuer writes them.
///
/// Times are whole seconds since the Unix epoch and are always JSON numbers. The verifier does
/// not deserialize into this type: it reads each claim separately so it can say precisely which
/// one is missing or mistyped, and so a string `exp` is an error rather than "no expiry".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Issuer: who minted the token; nodes require the value they are configured with.
    pub iss: String,
    /// Audience: the cluster the token is for; nodes require their own.
    pub aud: String,
    /// Subject: who the token speaks for; shown in audit lines.
    pub sub: String,
    /// Issued at.
    pub iat: i64,
    /// Not valid before.
    pub nbf: i64,
    /// Not valid from this second on.
    pub exp: i64,
    /// Token id: 128 random bits as hex, so audit lines can tell tokens apart.
    pub jti: String,
    /// What the token allows. Empty means nothing beyond HELLO and PING.
    pub scopes: Vec<Scope>,
    /// Certificate binding; absent for a bearer token usable from any client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The RFC 8705 `x5t#S256` value of a certificate: base64url (no padding) of the SHA-256 of
/// its DER encoding. The issuer puts it in `cnf`; the node computes it from the TLS peer.
pub fn cert_thumbprint(cert_der: &[u8]) -> String {
    b64(digest::digest(&digest::SHA256, cert_der).as_ref())
}

/// A fresh `jti`: [`JTI_BYTES`] bytes from the system CSPRNG, as lower-case hex.
pub fn new_jti() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; JTI_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

// ---------------------------------------------------------------------------------------------
// Keyset format

/// A keyset file: `{"keys": [ … ]}`, the JWKS shape of RFC 7517 §5.
///
/// Unknown members are refused rather than ignored, here and in [`Jwk`]: a typo (`"kyt"`) or a
/// private member (`"d"`) in a file that decides who may sign for the cluster should stop the
/// node, not be skipped silently.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwkSet {
    /// The keys, each with a distinct `kid`.
    pub keys: Vec<Jwk>,
}

/// One public key (or, for HS256, the shared secret) in JWK form (RFC 7517/7518/8037).
///
/// Members are kept as the strings of the file so that [`Jwk::to_verifying_key`] can name the
/// exact member that is wrong. Which members must be present depends on `kty`:
/// `OKP` → `crv: "Ed25519"`, `x`; `EC` → `crv: "P-256"`, `x`, `y`; `RSA` → `n`, `e`;
/// `oct` → `k`. Every key must say its `alg`, so a key can only ever verify one algorithm.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwk {
    /// Key id: the `kid` header of the tokens this key verifies.
    pub kid: String,
    /// The one algorithm this key verifies (`EdDSA`, `ES256`, `RS256`, `HS256`).
    pub alg: String,
    /// Key type; must be the one `alg` needs.
    pub kty: String,
    /// Intended use; if present it must be `sig`.
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    /// Curve (`Ed25519` for OKP, `P-256` for EC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// OKP public key, or EC x coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate (base64url).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus (base64url, big-endian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent (base64url, big-endian).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// HS256 shared secret (base64url). Secret: whoever reads it can mint tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub k: Option<String>,
}

/// Never prints `k`, so a keyset logged with `{:?}` does not leak an HS256 secret.
impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("kty", &self.kty)
            .field("use", &self.key_use)
            .field("crv", &self.crv)
            .field("x", &self.x)
            .field("y", &self.y)
            .field("n", &self.n)
            .field("e", &self.e)
            .field("k", &self.k.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// A JWK that [`Jwk::to_verifying_key`] refused. Each variant names what to fix in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// `kid` is empty or longer than [`MAX_KID_LEN`].
    #[error("kid must be 1 to {MAX_KID_LEN} bytes")]
    BadKid,
    /// `alg` is not one of EdDSA, ES256, RS256, HS256.
    #[error("alg {0:?} is not supported (expected EdDSA, ES256, RS256 or HS256)")]
    UnknownAlg(String),
    /// `kty` is not one of OKP, EC, RSA, oct.
    #[error("kty {0:?} is not supported (expected OKP, EC, RSA or oct)")]
    UnknownKty(String),
    /// `kty` is a known type but not the one `alg` needs (e.g. `alg: HS256` on an RSA key):
    /// accepting it would let one key verify two algorithms, the root of alg confusion.
    #[error("alg {alg} needs kty {expected}, but the key says {found:?}")]
    AlgKtyMismatch {
        /// The key's algorithm.
        alg: Alg,
        /// The key type that algorithm needs.
        expected: &'static str,
        /// The key type the file gives.
        found: String,
    },
    /// `use` is present and is not `sig`.
    #[error("use {0:?} is not \"sig\"")]
    WrongUse(String),
    /// `crv` is missing or not the curve the algorithm needs.
    #[error("crv must be {expected:?}")]
    WrongCurve {
        /// The curve required.
        expected: &'static str,
    },
    /// A member the key type requires is absent.
    #[error("member {0:?} is missing")]
    Missing(&'static str),
    /// A member that does not belong to this key type is present.
    #[error("member {0:?} does not belong to this key type")]
    Unexpected(&'static str),
    /// A member is not unpadded base64url.
    #[error("member {0:?} is not base64url without padding")]
    BadBase64(&'static str),
    /// A member has the wrong length once decoded.
    #[error("member {member:?} decodes to {found} bytes, expected {expected}")]
    BadLength {
        /// The member.
        member: &'static str,
        /// Bytes required.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
    /// The EC coordinates are not a point on P-256.
    #[error("x and y are not a point on P-256")]
    NotOnCurve,
    /// The RSA modulus is not 2048 to 8192 bits, is even, or has leading zero bytes.
    #[error("RSA modulus must be an odd 2048- to 8192-bit number without leading zeros ({0})")]
    BadModulus(&'static str),
    /// The RSA exponent is not an odd number between 3 and 2^33 without leading zeros.
    #[error("RSA exponent must be odd, at least 3 and at most 33 bits, without leading zeros")]
    BadExponent,
    /// The HS256 secret is shorter than [`MIN_HMAC_SECRET_LEN`] bytes.
    #[error("HS256 secret is {0} bytes; at least {MIN_HMAC_SECRET_LEN} are required")]
    WeakSecret(usize),
}

/// A validated key, ready for the provider: the one algorithm it verifies and the
/// jsonwebtoken key in the form [`provider`] reads.
#[derive(Clone)]
pub struct VerifyingKey {
    /// The only algorithm this key may verify.
    pub alg: Alg,
    /// The key bytes; never printed.
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Jwk {
    fn bare(kid: &str, alg: Alg) -> Jwk {
        Jwk {
            kid: kid.to_owned(),
            alg: alg.as_str().to_owned(),
            kty: alg.kty().to_owned(),
            key_use: None,
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            k: None,
        }
    }

    /// An EdDSA key from its 32-byte Ed25519 public key.
    pub fn ed25519(kid: &str, public_key: &[u8]) -> Jwk {
        Jwk {
            crv: Some("Ed25519".to_owned()),
            x: Some(b64(public_key)),
            ..Jwk::bare(kid, Alg::EdDSA)
        }
    }

    /// An ES256 key from its 65-byte uncompressed SEC1 point (`04 || x || y`). `None` if the
    /// bytes are not in that form.
    pub fn p256(kid: &str, uncompressed_point: &[u8]) -> Option<Jwk> {
        let (&tag, xy) = uncompressed_point.split_first()?;
        if tag != 0x04 || xy.len() != 64 {
            return None;
        }
        let (x, y) = xy.split_at(32);
        Some(Jwk {
            crv: Some("P-256".to_owned()),
            x: Some(b64(x)),
            y: Some(b64(y)),
            ..Jwk::bare(kid, Alg::ES256)
        })
    }

    /// An RS256 key from its big-endian modulus and exponent.
    pub fn rsa(kid: &str, n: &[u8], e: &[u8]) -> Jwk {
        Jwk {
            n: Some(b64(n)),
            e: Some(b64(e)),
            ..Jwk::bare(kid, Alg::RS256)
        }
    }

    /// An HS256 key: the shared secret itself.
    pub fn hmac(kid: &str, secret: &[u8]) -> Jwk {
        Jwk {
            k: Some(b64(secret)),
            ..Jwk::bare(kid, Alg::HS256)
        }
    }

    /// The RFC 7638 JWK thumbprint with SHA-256: the hash of the required public members in
    /// lexicographic order, without whitespace. It identifies the key material regardless of
    /// `kid`, `alg` or member order. For an `oct` key it hashes the secret, which reveals
    /// nothing useful about a 256-bit random secret.
    pub fn thumbprint_sha256(&self) -> [u8; 32] {
        fn s(v: &Option<String>) -> &str {
            v.as_deref().unwrap_or("")
        }
        // The member values are base64url or fixed names, so no JSON escaping is needed; serde
        // would still escape correctly if a hand-edited file put something odd there.
        let q = |v: &str| serde_json::Value::String(v.to_owned()).to_string();
        let canonical = match self.kty.as_str() {
            "OKP" => format!(
                r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
                q(s(&self.crv)),
                q(s(&self.x))
            ),
            "EC" => format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                q(s(&self.crv)),
                q(s(&self.x)),
                q(s(&self.y))
            ),
            "RSA" => format!(
                r#"{{"e":{},"kty":"RSA","n":{}}}"#,
                q(s(&self.e)),
                q(s(&self.n))
            ),
            other => format!(r#"{{"k":{},"kty":{}}}"#, q(s(&self.k)), q(other)),
        };
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref());
        out
    }

    /// The default kid for this key: the first 16 hex digits (64 bits) of its RFC 7638
    /// thumbprint. Deterministic, so the same key always gets the same kid, and a new key a new
    /// one.
    pub fn default_kid(&self) -> String {
        self.thumbprint_sha256()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Validates this JWK completely and turns it into a key the [`provider`] can verify with.
    ///
    /// Checks: kid length; a known `alg` whose `kty` matches; `use` is `sig` if present; the
    /// curve; exactly the members the key type needs (no others, so an RSA key with a stray `k`
    /// cannot be read as an HMAC secret); strict base64url; member lengths; P-256 points are on
    /// the curve; RSA moduli are 2048–8192 bits; HS256 secrets are at least 32 bytes. Ed25519
    /// point decoding is left to signature verification, which fails closed.
    pub fn to_verifying_key(&self) -> Result<VerifyingKey, JwkError> {
        if self.kid.is_empty() || self.kid.len() > MAX_KID_LEN {
            return Err(JwkError::BadKid);
        }
        let alg =
            Alg::from_jws_name(&self.alg).ok_or_else(|| JwkError::UnknownAlg(self.alg.clone()))?;
        if !Alg::ALL.iter().any(|a| a.kty() == self.kty) {
            return Err(JwkError::UnknownKty(self.kty.clone()));
        }
        if self.kty != alg.kty() {
            return Err(JwkError::AlgKtyMismatch {
                alg,
                expected: alg.kty(),
                found: self.kty.clone(),
            });
        }
        if let Some(u) = &self.key_use {
            if u != "sig" {
                return Err(JwkError::WrongUse(u.clone()));
            }
        }
        let members: [(&'static str, &Option<String>); 6] = [
            ("crv", &self.crv),
            ("x", &self.x),
            ("y", &self.y),
            ("n", &self.n),
            ("e", &self.e),
            ("k", &self.k),
        ];
        let needed: &[&str] = match alg {
            Alg::EdDSA => &["crv", "x"],
            Alg::ES256 => &["crv", "x", "y"],
            Alg::RS256 => &["n", "e"],
            Alg::HS256 => &["k"],
        };
        for (name, value) in members {
            match (needed.contains(&name), value.is_some()) {
                (true, false) => return Err(JwkError::Missing(name)),
                (false, true) => return Err(JwkError::Unexpected(name)),
                _ => {}
            }
        }
        let key = match alg {
            Alg::EdDSA => {
                expect_curve(&self.crv, "Ed25519")?;
                let x = decode_member("x", &self.x, Some(32))?;
                DecodingKey::from_ed_der(&x)
            }
            Alg::ES256 => {
                expect_curve(&self.crv, "P-256")?;
                let mut point = vec![0x04];
                point.extend(decode_member("x", &self.x, Some(32))?);
                point.extend(decode_member("y", &self.y, Some(32))?);
                check_p256_point(&point)?;
                DecodingKey::from_ec_der(&point)
            }
            Alg::RS256 => {
                let n = decode_member("n", &self.n, None)?;
                let e = decode_member("e", &self.e, None)?;
                check_rsa_public(&n, &e)?;
                DecodingKey::from_rsa_raw_components(&n, &e)
            }
            Alg::HS256 => {
                let k = decode_member("k", &self.k, None)?;
                if k.len() < MIN_HMAC_SECRET_LEN {
                    return Err(JwkError::WeakSecret(k.len()));
                }
                DecodingKey::from_secret(&k)
            }
        };
        Ok(VerifyingKey { alg, key })
    }
}

fn expect_curve(crv: &Option<String>, expected: &'static str) -> Result<(), JwkError> {
    match crv.as_deref() {
        Some(c) if c == expected => Ok(()),
        _ => Err(JwkError::WrongCurve { expected }),
    }
}

fn decode_member(
    member: &'static str,
    value: &Option<String>,
    len: Option<usize>,
) -> Result<Vec<u8>, JwkError> {
    let text = value.as_deref().ok_or(JwkError::Missing(member))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| JwkError::BadBase64(member))?;
    match len {
        Some(expected) if bytes.len() != expected => Err(JwkError::BadLength {
            member,
            expected,
            found: bytes.len(),
        }),
        _ => Ok(bytes),
    }
}

/// ring has no "parse an ECDSA public key" call, but its ECDH code fully validates a peer's
/// point (on the curve, not the identity), so one throwaway agreement checks the key now rather
/// than at the first token.
fn check_p256_point(point: &[u8]) -> Result<(), JwkError> {
    use ring::agreement;
    let rng = ring::rand::SystemRandom::new();
    let mine = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| JwkError::NotOnCurve)?;
    let peer = agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point);
    agreement::agree_ephemeral(mine, &peer, |_| ()).map_err(|_| JwkError::NotOnCurve)
}

/// The limits ring's `RSA_PKCS1_2048_8192_SHA256` enforces at verification, checked at load.
fn check_rsa_public(n: &[u8], e: &[u8]) -> Result<(), JwkError> {
    match n.first() {
        None | Some(0) => return Err(JwkError::BadModulus("leading zero byte or empty")),
        Some(&first) => {
            let bits = n.len() * 8 - first.leading_zeros() as usize;
            if !(2048..=8192).contains(&bits) {
                return Err(JwkError::BadModulus("size"));
            }
        }
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err(JwkError::BadModulus("even"));
    }
    if e.is_empty() || e[0] == 0 || e.len() > 5 {
        return Err(JwkError::BadExponent);
    }
    let value = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if value < 3 || value & 1 == 0 || value >= 1 << 33 {
        return Err(JwkError::BadExponent);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The provider

/// A [`jsonwebtoken::crypto::CryptoProvider`] on ring, for exactly skv's four algorithms.
///
/// jsonwebtoken 11 picks its provider once per process (`CryptoProvider::install_default`, a
/// `OnceLock`); `encode`/`decode` take no per-call provider. So every skv entry point that
/// signs or verifies calls [`install`] first. If something else got there first (another
/// library installing its own provider, or a jsonwebtoken call made before ours, which fixes
/// the built-in default — a provider that panics, since skv enables no backend feature),
/// [`install`] reports it instead of letting tokens be checked by code skv does not control.
///
/// Key bytes, as the rest of skv builds them:
/// - EdDSA: signing key = PKCS#8 DER (v1 or v2); verifying key = the raw 32-byte public key.
/// - ES256: signing key = PKCS#8 DER; verifying key = the 65-byte uncompressed point.
/// - RS256: signing key = PKCS#8 DER (PKCS#1 DER also read); verifying key = (n, e), or a
///   PKCS#1 `RSAPublicKey` DER. Moduli of 2048 to 8192 bits.
/// - HS256: both = the secret.
///
/// Every factory refuses a key of another family than the algorithm (an RSA or Ed25519 public
/// key can never be used as an HMAC secret), and any algorithm other than the four.
pub mod provider {
    use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
    use jsonwebtoken::errors::{Error, ErrorKind};
    use jsonwebtoken::jwk::{EllipticCurve, ThumbprintHash};
    use jsonwebtoken::signature::{self, Signer, Verifier};
    use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
    use ring::rand::SystemRandom;
    use ring::signature::{self as rsig, KeyPair as _};
    use ring::{digest, hmac};

    /// The provider; pass it to [`CryptoProvider::install_default`] through [`install`].
    pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
        signer_factory: new_signer,
        verifier_factory: new_verifier,
        key_utils: KeyUtils {
            rsa_pub_components_from_private_key,
            rsa_pub_components_from_public_key,
            ec_pub_components_from_private_key,
            ed_pub_components_from_private_key,
            compute_digest,
        },
    };

    /// Another jsonwebtoken provider is already the process default, so skv cannot use its
    /// own. A process that links skv should not install a different provider.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
    #[error(
        "another jsonwebtoken crypto provider is already installed in this process; skv signs \
         and verifies tokens only with its ring provider"
    )]
    pub struct ProviderConflict;

    /// Makes [`RING_PROVIDER`] the process default, or confirms it already is. Cheap after the
    /// first call; call it before any jsonwebtoken `encode`/`decode`.
    pub fn install() -> Result<(), ProviderConflict> {
        match RING_PROVIDER.install_default() {
            Ok(()) => Ok(()),
            Err(existing) if std::ptr::eq(existing, &RING_PROVIDER) => Ok(()),
            Err(_) => Err(ProviderConflict),
        }
    }

    fn key_format() -> Error {
        ErrorKind::InvalidKeyFormat.into()
    }

    fn require_family(expected: AlgorithmFamily, found: AlgorithmFamily) -> Result<(), Error> {
        if expected == found {
            Ok(())
        } else {
            Err(ErrorKind::InvalidKeyFormat.into())
        }
    }

    fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>, Error> {
        require_family(alg.family(), key.family())?;
        let rng = SystemRandom::new();
        let der = key.as_bytes();
        Ok(match alg {
            Algorithm::EdDSA => Box::new(Ed25519Signer(
                rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|_| ErrorKind::InvalidEddsaKey)?,
            )),
            Algorithm::ES256 => Box::new(Es256Signer {
                key: rsig::EcdsaKeyPair::from_pkcs8(
                    &rsig::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
                rng,
            }),
            Algorithm::RS256 => Box::new(Rs256Signer {
                key: rsa_key_pair(der)?,
                rng,
            }),
            Algorithm::HS256 => Box::new(Hs256(hmac::Key::new(hmac::HMAC_SHA256, der))),
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        })
    }

    fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
        require_family(alg.family(), key.family())?;
        Ok(match (alg, key.kind()) {
            (Algorithm::EdDSA, DecodingKeyKind::SecretOrDer(raw)) => {
                Box::new(PublicVerifier::new(Algorithm::EdDSA, &rsig::ED25519, raw))
            }
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => Box::new(
                PublicVerifier::new(Algorithm::ES256, &rsig::ECDSA_P256_SHA256_FIXED, point),
            ),
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => Box::new(PublicVerifier::new(
                Algorithm::RS256,
                &rsig::RSA_PKCS1_2048_8192_SHA256,
                der,
            )),
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                Box::new(RsaComponentsVerifier {
                    n: n.clone(),
                    e: e.clone(),
                })
            }
            (Algorithm::HS256, DecodingKeyKind::SecretOrDer(secret)) => {
                Box::new(Hs256(hmac::Key::new(hmac::HMAC_SHA256, secret)))
            }
            (Algorithm::EdDSA | Algorithm::ES256 | Algorithm::HS256, _) => return Err(key_format()),
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        })
    }

    fn rsa_key_pair(der: &[u8]) -> Result<rsig::RsaKeyPair, Error> {
        rsig::RsaKeyPair::from_pkcs8(der)
            .or_else(|_| rsig::RsaKeyPair::from_der(der))
            .map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()).into())
    }

    struct Ed25519Signer(rsig::Ed25519KeyPair);

    impl Signer<Vec<u8>> for Ed25519Signer {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            Ok(self.0.sign(msg).as_ref().to_vec())
        }
    }

    impl JwtSigner for Ed25519Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::EdDSA
        }
    }

    struct Es256Signer {
        key: rsig::EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Signer<Vec<u8>> for Es256Signer {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            self.key
                .sign(&self.rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtSigner for Es256Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::ES256
        }
    }

    struct Rs256Signer {
        key: rsig::RsaKeyPair,
        rng: SystemRandom,
    }

    impl Signer<Vec<u8>> for Rs256Signer {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            let mut sig = vec![0; self.key.public().modulus_len()];
            self.key
                .sign(&rsig::RSA_PKCS1_SHA256, &self.rng, msg, &mut sig)
                .map_err(|_| signature::Error::new())?;
            Ok(sig)
        }
    }

    impl JwtSigner for Rs256Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }

    /// HS256 signs and verifies with the same key; `hmac::verify` compares in constant time.
    struct Hs256(hmac::Key);

    impl Signer<Vec<u8>> for Hs256 {
        fn try_sign(&self, msg: &[u8]) -> Result<Vec<u8>, signature::Error> {
            Ok(hmac::sign(&self.0, msg).as_ref().to_vec())
        }
    }

    impl JwtSigner for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    impl Verifier<Vec<u8>> for Hs256 {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            hmac::verify(&self.0, msg, sig).map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for Hs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }

    /// EdDSA, ES256 and RS256-from-DER: ring's `UnparsedPublicKey` parses the key on every call,
    /// which costs little next to the signature check and keeps no state between tokens.
    struct PublicVerifier {
        alg: Algorithm,
        key: rsig::UnparsedPublicKey<Vec<u8>>,
    }

    impl PublicVerifier {
        fn new(
            alg: Algorithm,
            ring_alg: &'static dyn rsig::VerificationAlgorithm,
            key: &[u8],
        ) -> Self {
            PublicVerifier {
                alg,
                key: rsig::UnparsedPublicKey::new(ring_alg, key.to_vec()),
            }
        }
    }

    impl Verifier<Vec<u8>> for PublicVerifier {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            self.key
                .verify(msg, sig)
                .map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for PublicVerifier {
        fn algorithm(&self) -> Algorithm {
            self.alg
        }
    }

    struct RsaComponentsVerifier {
        n: Vec<u8>,
        e: Vec<u8>,
    }

    impl Verifier<Vec<u8>> for RsaComponentsVerifier {
        fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
            rsig::RsaPublicKeyComponents {
                n: &self.n,
                e: &self.e,
            }
            .verify(&rsig::RSA_PKCS1_2048_8192_SHA256, msg, sig)
            .map_err(|_| signature::Error::new())
        }
    }

    impl JwtVerifier for RsaComponentsVerifier {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }

    fn rsa_pub_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        let pair = rsa_key_pair(der)?;
        let c = rsig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        Ok((c.n, c.e))
    }

    /// ring cannot parse a bare PKCS#1 public key; skv never needs to (keysets carry n and e),
    /// so this reports an error instead of panicking like the unimplemented default would.
    fn rsa_pub_components_from_public_key(_der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), Error> {
        Err(ErrorKind::Provider(
            "the skv ring provider cannot read RSA public keys from DER; use n and e".to_owned(),
        )
        .into())
    }

    fn ec_pub_components_from_private_key(
        der: &[u8],
        alg: Algorithm,
    ) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>), Error> {
        if alg != Algorithm::ES256 {
            return Err(ErrorKind::UnsupportedAlgorithm.into());
        }
        let pair = rsig::EcdsaKeyPair::from_pkcs8(
            &rsig::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
        match pair.public_key().as_ref().split_first() {
            Some((0x04, xy)) if xy.len() == 64 => {
                let (x, y) = xy.split_at(32);
                Ok((EllipticCurve::P256, x.to_vec(), y.to_vec()))
            }
            _ => Err(ErrorKind::InvalidEcdsaKey.into()),
        }
    }

    fn ed_pub_components_from_private_key(
        der: &[u8],
        curve: &EllipticCurve,
    ) -> Result<Vec<u8>, Error> {
        if *curve != EllipticCurve::Ed25519 {
            return Err(ErrorKind::UnsupportedAlgorithm.into());
        }
        let pair = rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| ErrorKind::InvalidEddsaKey)?;
        Ok(pair.public_key().as_ref().to_vec())
    }

    fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>, Error> {
        let alg = match hash {
            ThumbprintHash::SHA256 => &digest::SHA256,
            ThumbprintHash::SHA384 => &digest::SHA384,
            ThumbprintHash::SHA512 => &digest::SHA512,
            _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
        };
        Ok(digest::digest(alg, data).as_ref().to_vec())
    }
}

/// Seconds since the Unix epoch, the unit of `iat`, `nbf` and `exp`. One definition for the
/// issuer and the verifier, so both sides count time the same way.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, Validation};
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    #[test]
    fn alg_names() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_jws_name(alg.as_str()), Some(alg));
            assert_eq!(alg.to_string().parse::<Alg>().unwrap(), alg);
            assert_eq!(Alg::from_jwt(alg.to_jwt()), Some(alg));
        }
        assert_eq!("eddsa".parse::<Alg>().unwrap(), Alg::EdDSA);
        assert_eq!(
            Alg::from_jws_name("eddsa"),
            None,
            "header names are case-sensitive"
        );
        assert_eq!(Alg::from_jws_name("none"), None);
        assert!("none".parse::<Alg>().is_err());
        assert_eq!(Alg::from_jwt(Algorithm::HS512), None);
        assert_eq!(Alg::default(), Alg::EdDSA);
    }

    #[test]
    fn allow_parses() {
        let s = parse_allow("read,write:users/alice/").unwrap();
        assert_eq!(
            s,
            Scope::new("users/alice/", [ScopeOp::Read, ScopeOp::Write])
        );
        assert_eq!(s.to_string(), "read,write:users/alice/");
        assert_eq!(parse_allow(&s.to_string()).unwrap(), s);

        let all = parse_allow("admin:").unwrap();
        assert_eq!(all.prefix, "");
        assert_eq!(all.ops, vec![ScopeOp::Admin]);

        // The first colon splits; later ones belong to the prefix.
        let p = parse_allow("read:tenant:42/").unwrap();
        assert_eq!(p.prefix, "tenant:42/");

        // Order and repetition do not matter; spaces around names are ignored.
        let d = parse_allow("write, read ,write:x").unwrap();
        assert_eq!(d.ops, vec![ScopeOp::Read, ScopeOp::Write]);
    }

    #[test]
    fn allow_errors_are_clear() {
        assert!(matches!(
            parse_allow("users/alice"),
            Err(ScopeParseError::MissingColon { .. })
        ));
        assert!(matches!(
            parse_allow(":users/"),
            Err(ScopeParseError::EmptyOp { .. })
        ));
        assert!(matches!(
            parse_allow("read,,write:x"),
            Err(ScopeParseError::EmptyOp { .. })
        ));
        let e = parse_allow("READ:x").unwrap_err();
        assert_eq!(e, ScopeParseError::UnknownOp { op: "READ".into() });
        assert!(e.to_string().contains("read, write, delete or admin"));
        let e = parse_allow("users/alice").unwrap_err().to_string();
        assert!(e.contains("read,write:users/alice/"), "{e}");
    }

    #[test]
    fn scope_ops_for_wire_ops() {
        assert_eq!(ScopeOp::required_for(Op::Get), Some(ScopeOp::Read));
        assert_eq!(ScopeOp::required_for(Op::Scan), Some(ScopeOp::Read));
        assert_eq!(ScopeOp::required_for(Op::Put), Some(ScopeOp::Write));
        assert_eq!(ScopeOp::required_for(Op::Cas), Some(ScopeOp::Write));
        assert_eq!(ScopeOp::required_for(Op::Delete), Some(ScopeOp::Delete));
        assert_eq!(ScopeOp::required_for(Op::Ping), None);
        assert_eq!(ScopeOp::required_for(Op::Hello), None);
    }

    #[test]
    fn claims_json_shape() {
        let claims = TokenClaims {
            iss: "skv".into(),
            aud: "dev".into(),
            sub: "alice".into(),
            iat: 10,
            nbf: 10,
            exp: 70,
            jti: new_jti().unwrap(),
            scopes: vec![parse_allow("read:users/").unwrap()],
            cnf: Some(Confirmation {
                x5t_s256: cert_thumbprint(b"cert"),
            }),
        };
        let v = serde_json::to_value(&claims).unwrap();
        assert_eq!(v["exp"], serde_json::json!(70));
        assert_eq!(v["scopes"][0]["ops"][0], "read");
        assert!(v["cnf"]["x5t#S256"].is_string());
        assert_eq!(claims.jti.len(), 32);
        assert!(claims.jti.bytes().all(|b| b.is_ascii_hexdigit()));
        let unbound = TokenClaims {
            cnf: None,
            ..claims
        };
        assert!(serde_json::to_value(&unbound).unwrap().get("cnf").is_none());
    }

    #[test]
    fn thumbprint_is_rfc8705_form() {
        // SHA-256 of the empty string, base64url without padding.
        assert_eq!(
            cert_thumbprint(b""),
            "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
        );
    }

    fn ed_key() -> (Vec<u8>, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        (pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
    }

    fn ec_key() -> (Vec<u8>, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        (pkcs8.as_ref().to_vec(), pair.public_key().as_ref().to_vec())
    }

    fn roundtrip(
        enc: &EncodingKey,
        jwk: &Jwk,
    ) -> Result<serde_json::Value, jsonwebtoken::errors::Error> {
        provider::install().unwrap();
        let vk = jwk.to_verifying_key().unwrap();
        let mut header = Header::new(vk.alg.to_jwt());
        header.kid = Some(jwk.kid.clone());
        let token = jsonwebtoken::encode(&header, &serde_json::json!({"sub": "x"}), enc)?;
        let mut v = Validation::new(vk.alg.to_jwt());
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        jsonwebtoken::decode::<serde_json::Value>(&token, &vk.key, &v).map(|d| d.claims)
    }

    #[test]
    fn provider_signs_and_verifies_ed_ec_hs() {
        let (ed_der, ed_pub) = ed_key();
        let ed = Jwk::ed25519("ed", &ed_pub);
        assert_eq!(
            roundtrip(&EncodingKey::from_ed_der(&ed_der), &ed).unwrap()["sub"],
            "x"
        );

        let (ec_der, ec_pub) = ec_key();
        let ec = Jwk::p256("ec", &ec_pub).unwrap();
        assert_eq!(
            roundtrip(&EncodingKey::from_ec_der(&ec_der), &ec).unwrap()["sub"],
            "x"
        );

        let secret = [7u8; 32];
        let hs = Jwk::hmac("hs", &secret);
        assert_eq!(
            roundtrip(&EncodingKey::from_secret(&secret), &hs).unwrap()["sub"],
            "x"
        );

        // A different key of the right type does not verify.
        let (other_der, _) = ed_key();
        let err = roundtrip(&EncodingKey::from_ed_der(&other_der), &ed).unwrap_err();
        assert_eq!(
            err.kind(),
            &jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn provider_refuses_family_confusion() {
        provider::install().unwrap();
        let (_, ed_pub) = ed_key();
        // The Ed25519 public key's bytes offered as an HMAC key: refused by the factory.
        let as_ed = DecodingKey::from_ed_der(&ed_pub);
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::HS256, &as_ed).is_err());
        let rsa = DecodingKey::from_rsa_raw_components(&[0xc1; 256], &[1, 0, 1]);
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::HS256, &rsa).is_err());
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::EdDSA, &rsa).is_err());
        let secret = DecodingKey::from_secret(&[1; 32]);
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::RS256, &secret).is_err());
        // Algorithms outside skv's four are refused even with a matching family.
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::HS512, &secret).is_err());
        assert!((provider::RING_PROVIDER.verifier_factory)(&Algorithm::PS256, &rsa).is_err());
    }

    #[test]
    fn provider_install_is_idempotent() {
        provider::install().unwrap();
        provider::install().unwrap();
    }

    #[test]
    fn provider_key_utils_work() {
        let (ed_der, ed_pub) = ed_key();
        let ku = &provider::RING_PROVIDER.key_utils;
        assert_eq!(
            (ku.ed_pub_components_from_private_key)(
                &ed_der,
                &jsonwebtoken::jwk::EllipticCurve::Ed25519
            )
            .unwrap(),
            ed_pub
        );
        let (ec_der, ec_pub) = ec_key();
        let (_, x, y) = (ku.ec_pub_components_from_private_key)(&ec_der, Algorithm::ES256).unwrap();
        assert_eq!([&[4u8][..], &x, &y].concat(), ec_pub);
        assert!((ku.rsa_pub_components_from_public_key)(b"x").is_err());
        assert_eq!(
            (ku.compute_digest)(b"", jsonwebtoken::jwk::ThumbprintHash::SHA256)
                .unwrap()
                .len(),
            32
        );
    }

    #[test]
    fn jwk_validation() {
        let (_, ed_pub) = ed_key();
        let good = Jwk::ed25519("k1", &ed_pub);
        assert_eq!(good.to_verifying_key().unwrap().alg, Alg::EdDSA);

        let mut j = good.clone();
        j.kid = String::new();
        assert_eq!(j.to_verifying_key().unwrap_err(), JwkError::BadKid);

        let mut j = good.clone();
        j.alg = "none".into();
        assert!(matches!(j.to_verifying_key(), Err(JwkError::UnknownAlg(_))));

        let mut j = good.clone();
        j.kty = "oct".into();
        assert!(matches!(
            j.to_verifying_key(),
            Err(JwkError::AlgKtyMismatch { .. })
        ));

        let mut j = good.clone();
        j.kty = "XYZ".into();
        assert!(matches!(j.to_verifying_key(), Err(JwkError::UnknownKty(_))));

        let mut j = good.clone();
        j.k = Some("AAAA".into());
        assert_eq!(j.to_verifying_key().unwrap_err(), JwkError::Unexpected("k"));

        let mut j = good.clone();
        j.x = Some("AAAA".into());
        assert!(matches!(
            j.to_verifying_key(),
            Err(JwkError::BadLength { member: "x", .. })
        ));

        let mut j = good.clone();
        j.x = Some(format!("{}=", j.x.unwrap()));
        assert_eq!(j.to_verifying_key().unwrap_err(), JwkError::BadBase64("x"));

        let mut j = good.clone();
        j.crv = Some("X25519".into());
        assert!(matches!(
            j.to_verifying_key(),
            Err(JwkError::WrongCurve { .. })
        ));

        let mut j = good.clone();
        j.key_use = Some("enc".into());
        assert!(matches!(j.to_verifying_key(), Err(JwkError::WrongUse(_))));

        // An EC "point" that is not on the curve.
        let mut bogus = vec![4u8];
        bogus.extend([1u8; 64]);
        let ec = Jwk::p256("ec", &bogus).unwrap();
        assert_eq!(ec.to_verifying_key().unwrap_err(), JwkError::NotOnCurve);

        assert_eq!(
            Jwk::hmac("h", &[1; 16]).to_verifying_key().unwrap_err(),
            JwkError::WeakSecret(16)
        );

        let small = Jwk::rsa("r", &[0xc1; 128], &[1, 0, 1]);
        assert!(matches!(
            small.to_verifying_key(),
            Err(JwkError::BadModulus(_))
        ));
        let even_e = Jwk::rsa("r", &[0xc1; 256], &[1, 0, 0]);
        assert_eq!(
            even_e.to_verifying_key().unwrap_err(),
            JwkError::BadExponent
        );
        let ok = Jwk::rsa("r", &[0xc1; 256], &[1, 0, 1]);
        assert_eq!(ok.to_verifying_key().unwrap().alg, Alg::RS256);
    }

    #[test]
    fn jwk_file_format_is_strict_and_redacts_secrets() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys":[{"kid":"a","alg":"HS256","kty":"oct","k":"c2VjcmV0"}]}"#,
        )
        .unwrap();
        assert!(!format!("{set:?}").contains("c2VjcmV0"));
        // A private member is an unknown field: refused, not ignored.
        let err = serde_json::from_str::<JwkSet>(
            r#"{"keys":[{"kid":"a","alg":"EdDSA","kty":"OKP","crv":"Ed25519","x":"AA","d":"AA"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `d`"), "{err}");
        let ed = Jwk::ed25519("a", &[9; 32]);
        let text = serde_json::to_string(&ed).unwrap();
        assert_eq!(
            text,
            r#"{"kid":"a","alg":"EdDSA","kty":"OKP","crv":"Ed25519","x":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk"}"#
        );
    }

    #[test]
    fn default_kid_is_thumbprint_prefix() {
        let a = Jwk::ed25519("x", &[1; 32]);
        let b = Jwk::ed25519("y", &[1; 32]);
        let c = Jwk::ed25519("x", &[2; 32]);
        assert_eq!(
            a.default_kid(),
            b.default_kid(),
            "kid does not enter the thumbprint"
        );
        assert_ne!(a.default_kid(), c.default_kid());
        assert_eq!(a.default_kid().len(), 16);
        // RFC 7638 §3.1 example: the thumbprint of that RSA key.
        let rfc = Jwk {
            n: Some("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into()),
            e: Some("AQAB".into()),
            ..Jwk::bare("2011-04-29", Alg::RS256)
        };
        assert_eq!(
            b64(&rfc.thumbprint_sha256()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }
}
