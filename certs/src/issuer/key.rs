//! One issuer signing key: generating it, its file form, reading that form back, and the
//! public JWK that goes into the keyset.
//!
//! Asymmetric keys reuse the dev PKI's key generation ([`KeyType::generate`]): Ed25519 and P-256
//! from ring (through rcgen), RSA from `openssl genpkey` because ring cannot generate RSA keys.
//! They are written as PKCS#8 PEM. Reading them back goes through ring alone, exactly as the
//! signing provider will use them, so a key file that loads is a key that signs.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::EncodingKey;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as rsig, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use skv_token::{Alg, Jwk, MIN_HMAC_SECRET_LEN};

use super::IssuerError;
use crate::KeyType;

/// Longest kid `keys_init` accepts; kids are part of archived key file names.
pub const MAX_ISSUER_KID_LEN: usize = 64;

/// Bytes of a generated HS256 secret: the SHA-256 block output size, as RFC 7518 recommends.
const HS256_SECRET_LEN: usize = 32;

/// How a key is stored on disk, which decides its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyFileKind {
    /// PKCS#8 PEM (`.pem`): EdDSA, ES256, RS256.
    Pem,
    /// base64url text (`.secret`): HS256.
    Secret,
}

impl KeyFileKind {
    pub(crate) fn of(alg: Alg) -> KeyFileKind {
        if alg.is_symmetric() {
            KeyFileKind::Secret
        } else {
            KeyFileKind::Pem
        }
    }

    pub(crate) fn extension(self) -> &'static str {
        match self {
            KeyFileKind::Pem => "pem",
            KeyFileKind::Secret => "secret",
        }
    }
}

/// An issuer key ready to sign: its kid, its algorithm, the private key, and the public JWK
/// nodes verify with. `Debug` never prints key material.
#[derive(Clone)]
pub struct IssuerKey {
    kid: String,
    alg: Alg,
    encoding: EncodingKey,
    public: Jwk,
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl IssuerKey {
    /// Generates a key in memory (nothing is written), with `kid` or, when `None`, the key's
    /// default kid (first 16 hex digits of its RFC 7638 thumbprint). For tests and labs that
    /// need an issuer without a directory; `keys_init` is the way to make a real one.
    pub fn generate(alg: Alg, kid: Option<String>) -> Result<IssuerKey, IssuerError> {
        Ok(IssuerKey::generate_with_file(alg, kid)?.0)
    }

    /// Generates a key and returns it with the text of its key file.
    pub(crate) fn generate_with_file(
        alg: Alg,
        kid: Option<String>,
    ) -> Result<(IssuerKey, String), IssuerError> {
        if let Some(kid) = &kid {
            validate_kid(kid)?;
        }
        let text = match alg {
            Alg::EdDSA => KeyType::Ed25519.generate()?.serialize_pem(),
            Alg::ES256 => KeyType::P256.generate()?.serialize_pem(),
            Alg::RS256 => KeyType::Rsa2048.generate()?.serialize_pem(),
            Alg::HS256 => {
                let mut secret = [0u8; HS256_SECRET_LEN];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| IssuerError::Random)?;
                format!("{}\n", URL_SAFE_NO_PAD.encode(secret))
            }
        };
        // Parse what will be written, so the in-memory key is exactly the one a later load sees.
        let (parsed_alg, encoding, public) =
            parse_key_file(&text, KeyFileKind::of(alg), Path::new("(new key)"))?;
        debug_assert_eq!(parsed_alg, alg);
        let kid = kid.unwrap_or_else(|| public.default_kid());
        Ok((IssuerKey::new(kid, alg, encoding, public), text))
    }

    pub(crate) fn new(kid: String, alg: Alg, encoding: EncodingKey, mut public: Jwk) -> IssuerKey {
        public.kid.clone_from(&kid);
        IssuerKey {
            kid,
            alg,
            encoding,
            public,
        }
    }

    /// The kid tokens signed by this key carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The keyset entry for this key. For HS256 this is the secret itself: handle it as a
    /// secret.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// Reads a key file's text: PKCS#8 PEM of an Ed25519, P-256 or RSA key, or a base64url HS256
/// secret. Returns the algorithm, the signing key and the public JWK (its kid still empty).
pub(crate) fn parse_key_file(
    text: &str,
    kind: KeyFileKind,
    path: &Path,
) -> Result<(Alg, EncodingKey, Jwk), IssuerError> {
    let invalid = |reason: &str| IssuerError::InvalidKeyFile {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if kind == KeyFileKind::Secret {
        let secret = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| invalid("not base64url text without padding"))?;
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(invalid("an HS256 secret must be at least 32 bytes"));
        }
        return Ok((
            Alg::HS256,
            EncodingKey::from_secret(&secret),
            Jwk::hmac("", &secret),
        ));
    }
    let der = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
        .map_err(|_| invalid("not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)"))?;
    let der = der.secret_pkcs8_der();
    // Try each algorithm ring knows; a PKCS#8 key is exactly one of them.
    if let Ok(pair) = rsig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        return Ok((
            Alg::EdDSA,
            EncodingKey::from_ed_der(der),
            Jwk::ed25519("", pair.public_key().as_ref()),
        ));
    }
    let rng = SystemRandom::new();
    if let Ok(pair) =
        rsig::EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
    {
        let public = Jwk::p256("", pair.public_key().as_ref())
            .ok_or_else(|| invalid("P-256 public key is not an uncompressed point"))?;
        return Ok((Alg::ES256, EncodingKey::from_ec_der(der), public));
    }
    if let Ok(pair) = rsig::RsaKeyPair::from_pkcs8(der) {
        let c = rsig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public());
        return Ok((
            Alg::RS256,
            EncodingKey::from_rsa_der(der),
            Jwk::rsa("", &c.n, &c.e),
        ));
    }
    Err(invalid(
        "not an Ed25519, P-256 or RSA (2048-4096 bit) key that ring can use",
    ))
}

/// Kids end up in file names (`issuer-key-<kid>.pem`) and headers, so they are kept to a
/// portable, unambiguous alphabet.
pub(crate) fn validate_kid(kid: &str) -> Result<(), IssuerError> {
    let reason = if kid.is_empty() {
        Some("it is empty")
    } else if kid.len() > MAX_ISSUER_KID_LEN {
        Some("it is longer than 64 characters")
    } else if !kid.as_bytes()[0].is_ascii_alphanumeric() {
        Some("it must start with a letter or digit")
    } else if !kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(IssuerError::InvalidKid {
            kid: kid.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_for_every_alg() {
        for alg in Alg::ALL {
            let (key, text) = IssuerKey::generate_with_file(alg, None).unwrap();
            assert_eq!(key.alg(), alg);
            assert_eq!(key.kid().len(), 16);
            assert_eq!(key.public_jwk().kid, key.kid());
            let (again, _, public) =
                parse_key_file(&text, KeyFileKind::of(alg), Path::new("x")).unwrap();
            assert_eq!(again, alg);
            assert_eq!(
                public.thumbprint_sha256(),
                key.public_jwk().thumbprint_sha256()
            );
            key.public_jwk().to_verifying_key().unwrap();
            assert!(!format!("{key:?}").contains("BEGIN"));
        }
    }

    #[test]
    fn explicit_kid_is_kept_and_checked() {
        let key = IssuerKey::generate(Alg::EdDSA, Some("2026-01".into())).unwrap();
        assert_eq!(key.kid(), "2026-01");
        for bad in ["", "../x", ".hidden", "a/b", "a b", &"k".repeat(65)] {
            assert!(
                matches!(
                    IssuerKey::generate(Alg::EdDSA, Some(bad.to_owned())),
                    Err(IssuerError::InvalidKid { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_key_files_are_clear_errors() {
        let err = parse_key_file("hello", KeyFileKind::Pem, Path::new("k.pem")).unwrap_err();
        assert!(err.to_string().contains("k.pem"), "{err}");
        let err = parse_key_file("AAAA", KeyFileKind::Secret, Path::new("k.secret")).unwrap_err();
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    }
}
