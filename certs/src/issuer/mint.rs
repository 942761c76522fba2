//! Minting tokens with an issuer key, and reading a token's contents without verifying it.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Header;
use skv_proto::MAX_TOKEN_LEN;
use skv_token::{cert_thumbprint, new_jti, provider, Confirmation, Scope, TokenClaims};

use super::{IssuerError, IssuerKey};

/// Longest input [`inspect`] decodes. Larger than what nodes accept ([`MAX_TOKEN_LEN`]) so an
/// oversized token can still be looked at to see why it was refused.
pub const MAX_INSPECT_LEN: usize = 64 * 1024;

/// What a token should say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// Subject: who the token speaks for (a client name, a service).
    pub sub: String,
    /// Grants; see [`skv_token::parse_allow`] for the `--allow` form.
    pub scopes: Vec<Scope>,
    /// Lifetime from now; whole seconds, at least one.
    pub ttl: Duration,
    /// Audience: the cluster the token is for.
    pub aud: String,
    /// Issuer name the nodes are configured to require.
    pub iss: String,
    /// The client certificate (DER) to bind the token to (RFC 8705 `cnf`/`x5t#S256`): the
    /// token is then only accepted on a connection authenticated with that certificate.
    pub bind_cert_der: Option<Vec<u8>>,
}

pub use skv_token::unix_now;

/// Mints a token valid from now for `spec.ttl`; see [`mint_at`].
pub fn mint(issuer: &IssuerKey, spec: &TokenSpec) -> Result<String, IssuerError> {
    mint_at(issuer, spec, unix_now())
}

/// Mints a token as if the time were `now` (seconds since the epoch): `iat = nbf = now`,
/// `exp = now + ttl`, a fresh random 128-bit `jti`, and `cnf` when a certificate is given. The
/// header carries only `alg` and `kid`.
pub fn mint_at(issuer: &IssuerKey, spec: &TokenSpec, now: i64) -> Result<String, IssuerError> {
    if spec.sub.is_empty() {
        return Err(IssuerError::InvalidSpec("the subject is empty"));
    }
    if spec.aud.is_empty() {
        return Err(IssuerError::InvalidSpec("the audience is empty"));
    }
    if spec.iss.is_empty() {
        return Err(IssuerError::InvalidSpec("the issuer is empty"));
    }
    let ttl = i64::try_from(spec.ttl.as_secs())
        .map_err(|_| IssuerError::InvalidSpec("the lifetime is too long"))?;
    if ttl == 0 {
        return Err(IssuerError::InvalidSpec(
            "the lifetime must be at least one second",
        ));
    }
    let exp = now
        .checked_add(ttl)
        .ok_or(IssuerError::InvalidSpec("the lifetime is too long"))?;
    let claims = TokenClaims {
        iss: spec.iss.clone(),
        aud: spec.aud.clone(),
        sub: spec.sub.clone(),
        iat: now,
        nbf: now,
        exp,
        jti: new_jti().map_err(|_| IssuerError::Random)?,
        scopes: spec.scopes.clone(),
        cnf: spec.bind_cert_der.as_deref().map(|der| Confirmation {
            x5t_s256: cert_thumbprint(der),
        }),
    };
    issuer.sign_claims(&claims)
}

impl IssuerKey {
    /// Signs `claims` exactly as given, with a header of `alg` and `kid` only. [`mint`] is the
    /// normal way to make a token; this is for callers that need to set every claim (tests,
    /// tokens that are expired or not yet valid on purpose). Refuses tokens nodes would refuse
    /// for their size.
    pub fn sign_claims(&self, claims: &TokenClaims) -> Result<String, IssuerError> {
        provider::install()?;
        let mut header = Header::new(self.alg().to_jwt());
        header.typ = None;
        header.kid = Some(self.kid().to_owned());
        let token = jsonwebtoken::encode(&header, claims, self.encoding_key())
            .map_err(|e| IssuerError::Signing(e.to_string()))?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(IssuerError::TokenTooLarge {
                len: token.len(),
                max: MAX_TOKEN_LEN,
            });
        }
        Ok(token)
    }

    /// Signs arbitrary JSON as a header and claims with this key's algorithm, whatever the
    /// header says. For negative tests and security labs that need tokens a correct issuer
    /// never makes (a string `exp`, a `jku` header, a lying `alg`); never for real tokens.
    pub fn sign_raw(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, IssuerError> {
        provider::install()?;
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            self.encoding_key(),
            self.alg().to_jwt(),
        )
        .map_err(|e| IssuerError::Signing(e.to_string()))?;
        Ok(format!("{message}.{signature}"))
    }
}

/// A token's header and claims as JSON, **not verified**: anyone can write a token that says
/// anything. For `skv token inspect`, to see what a token claims; never for deciding anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedToken {
    /// The decoded header (unverified).
    pub header: serde_json::Value,
    /// The decoded claims (unverified).
    pub claims: serde_json::Value,
    /// Length of the decoded signature in bytes (the signature itself is not shown).
    pub signature_len: usize,
    /// Length of the token text; nodes refuse tokens over [`MAX_TOKEN_LEN`].
    pub token_len: usize,
}

/// Decodes a token's header and claims **without verifying its signature or any claim**.
/// Surrounding whitespace (a pasted newline) is ignored.
pub fn inspect(token: &str) -> Result<UnverifiedToken, IssuerError> {
    let token = token.trim();
    if token.len() > MAX_INSPECT_LEN {
        return Err(IssuerError::MalformedToken("longer than 64 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IssuerError::MalformedToken(
            "expected three base64url parts separated by '.'",
        ));
    };
    let json = |part: &str, what: &'static str| -> Result<serde_json::Value, IssuerError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| IssuerError::MalformedToken(what))?;
        serde_json::from_slice(&bytes).map_err(|_| IssuerError::MalformedToken(what))
    };
    let header = json(header, "the header is not base64url-encoded JSON")?;
    let claims = json(claims, "the claims are not base64url-encoded JSON")?;
    let signature_len = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| IssuerError::MalformedToken("the signature is not base64url"))?
        .len();
    Ok(UnverifiedToken {
        header,
        claims,
        signature_len,
        token_len: token.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_token::{parse_allow, Alg};

    fn spec() -> TokenSpec {
        TokenSpec {
            sub: "alice".into(),
            scopes: vec![parse_allow("read,write:users/alice/").unwrap()],
            ttl: Duration::from_secs(300),
            aud: "dev".into(),
            iss: "skv".into(),
            bind_cert_der: Some(b"pretend DER".to_vec()),
        }
    }

    #[test]
    fn minted_tokens_have_the_documented_shape() {
        let key = IssuerKey::generate(Alg::ES256, Some("k1".into())).unwrap();
        let token = mint_at(&key, &spec(), 1_000).unwrap();
        let t = inspect(&format!("{token}\n")).unwrap();
        assert_eq!(t.header, serde_json::json!({"alg": "ES256", "kid": "k1"}));
        assert_eq!(t.claims["iat"], 1_000);
        assert_eq!(t.claims["nbf"], 1_000);
        assert_eq!(t.claims["exp"], 1_300);
        assert_eq!(t.claims["sub"], "alice");
        assert_eq!(t.claims["aud"], "dev");
        assert_eq!(t.claims["iss"], "skv");
        assert_eq!(t.claims["scopes"][0]["prefix"], "users/alice/");
        assert_eq!(
            t.claims["cnf"]["x5t#S256"],
            cert_thumbprint(b"pretend DER").as_str()
        );
        assert_eq!(t.claims["jti"].as_str().unwrap().len(), 32);
        assert_eq!(t.signature_len, 64);
        // Two mints differ in jti.
        let again = inspect(&mint_at(&key, &spec(), 1_000).unwrap()).unwrap();
        assert_ne!(again.claims["jti"], t.claims["jti"]);
    }

    #[test]
    fn bad_specs_are_refused() {
        let key = IssuerKey::generate(Alg::HS256, None).unwrap();
        for (change, what) in [
            (
                TokenSpec {
                    sub: String::new(),
                    ..spec()
                },
                "subject",
            ),
            (
                TokenSpec {
                    aud: String::new(),
                    ..spec()
                },
                "audience",
            ),
            (
                TokenSpec {
                    iss: String::new(),
                    ..spec()
                },
                "issuer",
            ),
            (
                TokenSpec {
                    ttl: Duration::from_millis(500),
                    ..spec()
                },
                "lifetime",
            ),
            (
                TokenSpec {
                    ttl: Duration::MAX,
                    ..spec()
                },
                "lifetime",
            ),
        ] {
            let err = mint(&key, &change).unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
        let huge = TokenSpec {
            scopes: vec![parse_allow(&format!("read:{}", "p".repeat(9000))).unwrap()],
            ..spec()
        };
        assert!(matches!(
            mint(&key, &huge),
            Err(IssuerError::TokenTooLarge { .. })
        ));
    }

    #[test]
    fn inspect_refuses_non_tokens() {
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.!!.AA", "e30.e30.!!"] {
            assert!(
                matches!(inspect(bad), Err(IssuerError::MalformedToken(_))),
                "{bad:?}"
            );
        }
        let t = inspect("e30.e30.").unwrap();
        assert_eq!(t.header, serde_json::json!({}));
        assert_eq!(t.signature_len, 0);
    }
}
