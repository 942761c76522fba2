//! The node's keyset: the public keys (and, for HS256, shared secrets) it verifies tokens
//! with, indexed by kid.
//!
//! A keyset is loaded whole and validated whole: one bad key, a duplicate kid, or an empty
//! list fails the load, so a node never runs with a keyset that is silently missing keys. Kids
//! are looked up as plain strings in memory; nothing in a token can make the node read a file
//! or fetch a URL.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;

use jsonwebtoken::DecodingKey;
use skv_token::{Alg, JwkSet};

use super::error::{KeysetError, KeysetProblem};

/// Largest keyset file the node reads; real keysets are a few KiB.
pub const MAX_KEYSET_BYTES: u64 = 1024 * 1024;

pub(crate) struct KeyEntry {
    pub(crate) alg: Alg,
    pub(crate) key: DecodingKey,
}

/// The keys a node trusts, by kid. `Debug` lists kids and algorithms, never key bytes.
pub struct Keyset {
    keys: HashMap<String, KeyEntry>,
    /// Kids in file order, for reports.
    order: Vec<String>,
}

impl fmt::Debug for Keyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.order.iter().map(|kid| (kid, self.keys[kid].alg)))
            .finish()
    }
}

impl Keyset {
    /// Reads and validates a keyset file (JWKS-style JSON, as `skv keys init` writes).
    pub fn load(path: &Path) -> Result<Keyset, KeysetError> {
        let io = |source| KeysetError::Io {
            path: path.to_owned(),
            source,
        };
        let file = fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        // Read one byte past the limit to tell "exactly at the limit" from "over it" without
        // trusting metadata (a FIFO or /proc file reports no size).
        file.take(MAX_KEYSET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Keyset::from_json(&bytes).map_err(|problem| KeysetError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parses and validates a keyset from JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Keyset, KeysetProblem> {
        if bytes.len() as u64 > MAX_KEYSET_BYTES {
            return Err(KeysetProblem::TooLarge {
                len: bytes.len() as u64,
                max: MAX_KEYSET_BYTES,
            });
        }
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| KeysetProblem::NotJwks(e.to_string()))?;
        Keyset::from_jwks(&set)
    }

    /// Validates an in-memory keyset (e.g. built from `IssuerKey::public_jwk` in tests).
    pub fn from_jwks(set: &JwkSet) -> Result<Keyset, KeysetProblem> {
        if set.keys.is_empty() {
            return Err(KeysetProblem::Empty);
        }
        let mut keys = HashMap::with_capacity(set.keys.len());
        let mut order = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let vk = jwk
                .to_verifying_key()
                .map_err(|source| KeysetProblem::InvalidKey {
                    index,
                    kid: jwk.kid.clone(),
                    source,
                })?;
            let entry = KeyEntry {
                alg: vk.alg,
                key: vk.key,
            };
            if keys.insert(jwk.kid.clone(), entry).is_some() {
                return Err(KeysetProblem::DuplicateKid(jwk.kid.clone()));
            }
            order.push(jwk.kid.clone());
        }
        Ok(Keyset { keys, order })
    }

    /// Kids, in file order.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// The algorithm of `kid`'s key, if the keyset has it.
    pub fn alg_of(&self, kid: &str) -> Option<Alg> {
        self.keys.get(kid).map(|e| e.alg)
    }

    /// Number of keys (at least one).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: an empty keyset does not load. Here for the `len` convention.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether any key is an HS256 secret, which lets this node mint tokens too; worth a
    /// warning at startup.
    pub fn has_shared_secrets(&self) -> bool {
        self.keys.values().any(|e| e.alg.is_symmetric())
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&KeyEntry> {
        self.keys.get(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_certs::issuer::IssuerKey;
    use skv_token::{Jwk, JwkError};

    fn jwks(keys: Vec<Jwk>) -> Vec<u8> {
        serde_json::to_vec(&JwkSet { keys }).unwrap()
    }

    #[test]
    fn loads_every_alg_and_reports_kids() {
        let keys: Vec<Jwk> = Alg::ALL
            .into_iter()
            .map(|alg| {
                IssuerKey::generate(alg, Some(format!("k-{alg}")))
                    .unwrap()
                    .public_jwk()
                    .clone()
            })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyset.json");
        fs::write(&path, jwks(keys)).unwrap();
        let ks = Keyset::load(&path).unwrap();
        assert_eq!(
            ks.kids().collect::<Vec<_>>(),
            vec!["k-EdDSA", "k-ES256", "k-RS256", "k-HS256"]
        );
        assert_eq!(ks.alg_of("k-RS256"), Some(Alg::RS256));
        assert!(ks.has_shared_secrets());
        let dbg = format!("{ks:?}");
        assert!(dbg.contains("k-HS256") && !dbg.contains("\"k\""), "{dbg}");
    }

    #[test]
    fn broken_keysets_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keyset.json");
        let load = |text: &[u8]| {
            fs::write(&path, text).unwrap();
            Keyset::load(&path).unwrap_err()
        };
        let good = IssuerKey::generate(Alg::EdDSA, Some("a".into()))
            .unwrap()
            .public_jwk()
            .clone();

        let err = load(b"{\"keys\": [");
        assert!(matches!(
            &err,
            KeysetError::Invalid {
                problem: KeysetProblem::NotJwks(_),
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("keyset.json") && text.contains("not a JWKS"),
            "{text}"
        );

        assert!(matches!(
            load(b"{\"keys\": []}"),
            KeysetError::Invalid {
                problem: KeysetProblem::Empty,
                ..
            }
        ));
        assert!(matches!(
            load(&jwks(vec![good.clone(), good.clone()])),
            KeysetError::Invalid {
                problem: KeysetProblem::DuplicateKid(_),
                ..
            }
        ));

        let mut unknown = good.clone();
        unknown.kty = "XYZ".into();
        let err = load(&jwks(vec![good.clone(), unknown]));
        assert!(
            matches!(
                &err,
                KeysetError::Invalid {
                    problem: KeysetProblem::InvalidKey {
                        index: 1,
                        source: JwkError::UnknownKty(_),
                        ..
                    },
                    ..
                }
            ),
            "{err}"
        );

        // An RSA key labelled HS256 (would let its public bytes act as an HMAC secret).
        let rsa = IssuerKey::generate(Alg::RS256, Some("r".into())).unwrap();
        let mut confused = rsa.public_jwk().clone();
        confused.alg = "HS256".into();
        assert!(matches!(
            load(&jwks(vec![confused])),
            KeysetError::Invalid {
                problem: KeysetProblem::InvalidKey {
                    source: JwkError::AlgKtyMismatch { .. },
                    ..
                },
                ..
            }
        ));

        let mut no_alg = serde_json::to_value(&good).unwrap();
        no_alg.as_object_mut().unwrap().remove("alg");
        let err = load(&serde_json::to_vec(&serde_json::json!({"keys": [no_alg]})).unwrap());
        assert!(err.to_string().contains("alg"), "{err}");

        let big = vec![b' '; MAX_KEYSET_BYTES as usize + 10];
        assert!(matches!(
            load(&big),
            KeysetError::Invalid {
                problem: KeysetProblem::TooLarge { .. },
                ..
            }
        ));

        let missing = Keyset::load(&tmp.path().join("nope.json")).unwrap_err();
        assert!(matches!(missing, KeysetError::Io { .. }));
        assert!(missing.to_string().contains("nope.json"));
    }
}
