//! Key types and key generation. P-256 and Ed25519 keys come from ring (through rcgen); RSA
//! keys come from the `openssl` command because ring can sign with RSA but cannot generate
//! RSA keys, and the project will not link the `rsa` crate or aws-lc-rs just for dev certs.

use std::fmt;
use std::io::ErrorKind;
use std::process::{Command, Stdio};
use std::str::FromStr;

use rcgen::{KeyPair, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256, PKCS_ED25519, PKCS_RSA_SHA256};
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::CertsError;

/// The kind of key (and so signature algorithm) a certificate is made with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256: small, fast, supported everywhere. The default.
    #[default]
    P256,
    /// Ed25519: the fastest to sign and verify.
    Ed25519,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures: for measuring what RSA costs. Needs the
    /// `openssl` command to generate keys.
    Rsa2048,
}

impl KeyType {
    /// All key types, in the order the CLI lists them.
    pub const ALL: [KeyType; 3] = [KeyType::P256, KeyType::Ed25519, KeyType::Rsa2048];

    /// The string accepted by [`FromStr`] and produced by [`Display`](fmt::Display).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::P256 => "p256",
            KeyType::Ed25519 => "ed25519",
            KeyType::Rsa2048 => "rsa2048",
        }
    }

    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::P256 => &PKCS_ECDSA_P256_SHA256,
            KeyType::Ed25519 => &PKCS_ED25519,
            KeyType::Rsa2048 => &PKCS_RSA_SHA256,
        }
    }

    /// The key type of an existing key pair, if it is one this crate produces. RSA keys of any
    /// size map to `Rsa2048`, which only matters for display.
    pub(crate) fn of(key: &KeyPair) -> Option<KeyType> {
        KeyType::ALL
            .into_iter()
            .find(|kt| key.algorithm() == kt.algorithm())
    }

    /// Generates a fresh key pair of this type.
    pub(crate) fn generate(self) -> Result<KeyPair, CertsError> {
        match self {
            KeyType::P256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                .map_err(|e| CertsError::rcgen("generating a p256 key", e)),
            KeyType::Ed25519 => generate_ed25519(),
            KeyType::Rsa2048 => generate_rsa_with_openssl(),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = CertsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyType::ALL
            .into_iter()
            // Case-insensitive so `--key-type P256` works too; Display is always lower case.
            .find(|kt| kt.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| CertsError::UnknownKeyType(s.to_owned()))
    }
}

/// ring's PKCS#8 v2 prefix for Ed25519 (version 1, then the 32-byte seed, then the public key).
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The RFC 8410 PKCS#8 v1 prefix for Ed25519: version 0, then just the 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Generates an Ed25519 key and re-encodes it as PKCS#8 v1. ring only emits PKCS#8 v2
/// (with the public key appended), which OpenSSL 3.0 refuses to read ("unsupported"), so
/// `openssl pkey`/`s_client` and non-Rust clients could not use the key files. v1 is what
/// `openssl genpkey -algorithm ed25519` writes, and ring (so rustls) reads it too.
fn generate_ed25519() -> Result<KeyPair, CertsError> {
    let v2 = KeyPair::generate_for(&PKCS_ED25519)
        .map_err(|e| CertsError::rcgen("generating an ed25519 key", e))?;
    let der = v2.serialized_der();
    let Some(seed) = der
        .strip_prefix(&ED25519_PKCS8_V2_PREFIX[..])
        .and_then(|rest| rest.get(..32))
    else {
        // An encoding we do not recognise (a future ring?): still a valid key for rustls.
        return Ok(v2);
    };
    let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(v1), &PKCS_ED25519)
        .map_err(|e| CertsError::rcgen("re-encoding an ed25519 key as PKCS#8 v1", e))
}

/// Runs `openssl genpkey` and parses its PKCS#8 PEM output. The key travels over a pipe, never
/// through a temporary file, so it is only ever written to disk by our own 0600 writer.
fn generate_rsa_with_openssl() -> Result<KeyPair, CertsError> {
    let output = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => CertsError::OpensslMissing,
            _ => CertsError::OpensslFailed {
                detail: format!("could not run openssl: {e}"),
            },
        })?;
    if !output.status.success() {
        return Err(CertsError::OpensslFailed {
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let pem = String::from_utf8(output.stdout).map_err(|_| CertsError::OpensslFailed {
        detail: "output is not UTF-8 PEM".to_owned(),
    })?;
    // genpkey writes PKCS#8 ("BEGIN PRIVATE KEY"), the only RSA encoding ring accepts.
    KeyPair::from_pkcs8_pem_and_sign_algo(&pem, &PKCS_RSA_SHA256).map_err(|e| {
        CertsError::OpensslFailed {
            detail: format!("output is not a PKCS#8 RSA key ring accepts: {e}"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::KeyType;

    #[test]
    fn parses_and_displays() {
        for kt in KeyType::ALL {
            assert_eq!(kt.to_string().parse::<KeyType>().unwrap(), kt);
        }
        assert_eq!(KeyType::default(), KeyType::P256);
        assert!("rsa".parse::<KeyType>().is_err());
    }

    #[test]
    fn ed25519_keys_are_pkcs8_v1_and_reload() {
        let key = KeyType::Ed25519.generate().unwrap();
        assert_eq!(key.serialized_der().len(), 48);
        assert_eq!(key.serialized_der()[..16], super::ED25519_PKCS8_V1_PREFIX);
        let again = rcgen::KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(KeyType::of(&again), Some(KeyType::Ed25519));
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        assert_eq!("P256".parse::<KeyType>().unwrap(), KeyType::P256);
    }
}
