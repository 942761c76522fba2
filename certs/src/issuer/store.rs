//! The issuer directory: creating the first key, rotating to a new one, retiring old ones, and
//! finding the current signing key again.
//!
//! Files in `DIR`:
//! - `issuer-key.pem` (or `issuer-key.secret` for HS256): the current signing key, 0600.
//! - `issuer-key-<kid>.pem` / `.secret`: earlier keys kept after a rotation, 0600.
//! - `keyset.json`: every key nodes should accept, JWKS-style; 0644, or 0600 as soon as it
//!   holds an HS256 secret.
//!
//! Which kid is current is not stored separately: it is the keyset entry whose key material is
//! that of `issuer-key.pem`/`.secret`. That way there is a single commit point per rotation —
//! the atomic rename of the new key file over the old one — and no second file that could
//! disagree with it after a crash. The steps of a rotation are ordered so that any prefix of
//! them leaves a working directory: archive the old key, add the new public key to the keyset
//! (nodes that reload it can verify the new kid before anything is signed with it), then move
//! the new key into place.
//!
//! Concurrent `keys init`/`keys retire` runs on the same directory are not coordinated; run
//! one at a time.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use skv_token::{Alg, JwkSet};

use super::key::{parse_key_file, validate_kid, KeyFileKind};
use super::{IssuerError, IssuerKey};
use crate::write::{occupied, write_atomic, PUBLIC_MODE, SECRET_MODE};

/// File name of the keyset in an issuer directory.
pub const KEYSET_FILE: &str = "keyset.json";

/// Largest keyset file read. Real keysets are a few KiB; the bound keeps a wrong path (a log
/// file, a device) from being read whole into memory.
pub const MAX_KEYSET_FILE: u64 = 1024 * 1024;

/// File name of the current signing key of this kind.
fn current_key_name(kind: KeyFileKind) -> String {
    format!("issuer-key.{}", kind.extension())
}

/// File name an earlier key is kept under after a rotation.
fn archived_key_name(kid: &str, kind: KeyFileKind) -> String {
    format!("issuer-key-{kid}.{}", kind.extension())
}

/// What [`keys_init`] should do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeysInitOptions {
    /// Algorithm of the new key (default EdDSA).
    pub alg: Alg,
    /// Kid of the new key; `None` derives it from the key (first 16 hex digits of its RFC 7638
    /// SHA-256 thumbprint), which is unique per key.
    pub kid: Option<String>,
    /// Allow a kid that is already in the keyset: the key under that kid is replaced (and
    /// tokens signed with it stop verifying).
    pub force: bool,
}

/// What [`keys_init`] did, for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysReport {
    /// Algorithm of the new signing key.
    pub alg: Alg,
    /// Kid of the new signing key.
    pub kid: String,
    /// The new signing key file (`DIR/issuer-key.pem` or `.secret`).
    pub key_file: PathBuf,
    /// The keyset file (`DIR/keyset.json`).
    pub keyset_file: PathBuf,
    /// The kid that was current before, if this run rotated.
    pub previous_kid: Option<String>,
    /// Where the previous signing key was kept, if this run rotated.
    pub archived_key_file: Option<PathBuf>,
    /// Whether `force` replaced a key that already had this kid.
    pub replaced_existing_kid: bool,
    /// Every kid in the keyset now, oldest first.
    pub keyset_kids: Vec<String>,
}

/// What [`keys_retire`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetireReport {
    /// The kid removed from the keyset.
    pub kid: String,
    /// The keyset file.
    pub keyset_file: PathBuf,
    /// The archived private key that was deleted with it, if there was one.
    pub deleted_key_file: Option<PathBuf>,
    /// Every kid left in the keyset.
    pub keyset_kids: Vec<String>,
}

/// Creates the issuer key in `dir`, or rotates to a new one if `dir` already has one; see
/// [`keys_init_with`]. Refuses a kid that is already in the keyset.
pub fn keys_init(dir: &Path, alg: Alg, kid: Option<String>) -> Result<KeysReport, IssuerError> {
    keys_init_with(
        dir,
        &KeysInitOptions {
            alg,
            kid,
            force: false,
        },
    )
}

/// Creates or rotates the issuer key in `dir`.
///
/// First run: writes `issuer-key.pem` (HS256: `issuer-key.secret`) and `keyset.json` with its
/// public key. Later runs rotate: the new key becomes `issuer-key.pem`, the previous one is kept
/// as `issuer-key-<old kid>.pem`, and `keyset.json` gains the new key and keeps the old ones,
/// so tokens signed before the rotation verify until [`keys_retire`] removes their kid.
/// Everything is checked (the existing keyset parses and validates, the kid is free) before
/// anything is written.
pub fn keys_init_with(dir: &Path, opts: &KeysInitOptions) -> Result<KeysReport, IssuerError> {
    ensure_dir(dir)?;
    let keyset_file = dir.join(KEYSET_FILE);
    let mut keyset = read_keyset_if_any(&keyset_file)?.unwrap_or_default();
    let current = match find_current(dir, &keyset) {
        // With force, a key file whose key is in no keyset (so no node accepts its tokens) is
        // simply replaced; without it, that state is reported rather than papered over.
        Err(IssuerError::KeyNotInKeyset { .. }) if opts.force => None,
        other => other?,
    };

    // An explicit kid that is taken is refused before generating (RSA generation is slow).
    if let Some(kid) = &opts.kid {
        validate_kid(kid)?;
        if !opts.force && keyset.keys.iter().any(|k| &k.kid == kid) {
            return Err(IssuerError::KidExists {
                kid: kid.clone(),
                keyset: keyset_file,
            });
        }
    }
    let (key, text) = IssuerKey::generate_with_file(opts.alg, opts.kid.clone())?;
    let kid = key.kid().to_owned();
    // A default kid is already filename-safe hex; an explicit one was checked by generate.
    validate_kid(&kid)?;

    let existing = keyset.keys.iter().position(|k| k.kid == kid);
    if existing.is_some() && !opts.force {
        return Err(IssuerError::KidExists {
            kid,
            keyset: keyset_file,
        });
    }

    // 1. Keep the current key under its kid (unless it is the one being replaced).
    let mut archived_key_file = None;
    let mut previous_kid = None;
    if let Some(cur) = &current {
        if cur.kid != kid {
            let path = dir.join(archived_key_name(&cur.kid, cur.kind));
            write_atomic(&path, cur.text.as_bytes(), SECRET_MODE)?;
            archived_key_file = Some(path);
            previous_kid = Some(cur.kid.clone());
        }
    }
    // A forced kid that belonged to an archived key: that key is being replaced, so its file
    // must not linger as if it still signed for this kid.
    if existing.is_some() {
        for kind in [KeyFileKind::Pem, KeyFileKind::Secret] {
            remove_if_present(&dir.join(archived_key_name(&kid, kind)))?;
        }
    }

    // 2. Publish the new public key (replacing a forced kid in place, else appending).
    match existing {
        Some(i) => keyset.keys[i] = key.public_jwk().clone(),
        None => keyset.keys.push(key.public_jwk().clone()),
    }
    write_keyset(&keyset_file, &keyset)?;

    // 3. Move the new key into place: the commit point. Then drop a current key file of the
    //    other kind (EdDSA → HS256 rotation), which step 1 archived.
    let kind = KeyFileKind::of(opts.alg);
    let key_file = dir.join(current_key_name(kind));
    write_atomic(&key_file, text.as_bytes(), SECRET_MODE)?;
    let other = match kind {
        KeyFileKind::Pem => KeyFileKind::Secret,
        KeyFileKind::Secret => KeyFileKind::Pem,
    };
    remove_if_present(&dir.join(current_key_name(other)))?;

    Ok(KeysReport {
        alg: opts.alg,
        kid,
        key_file,
        keyset_file,
        previous_kid,
        archived_key_file,
        replaced_existing_kid: existing.is_some(),
        keyset_kids: keyset.keys.iter().map(|k| k.kid.clone()).collect(),
    })
}

/// Removes `kid` from `dir/keyset.json`, so nodes that reload it stop accepting tokens signed
/// with that key, and deletes its archived private key (`issuer-key-<kid>.pem`), which can
/// never sign a valid token again. Refuses to remove the current signing kid.
pub fn keys_retire(dir: &Path, kid: &str) -> Result<RetireReport, IssuerError> {
    let keyset_file = dir.join(KEYSET_FILE);
    let mut keyset = read_keyset_if_any(&keyset_file)?.ok_or_else(|| IssuerError::UnknownKid {
        kid: kid.to_owned(),
        keyset: keyset_file.clone(),
    })?;
    if let Some(cur) = find_current(dir, &keyset)? {
        if cur.kid == kid {
            return Err(IssuerError::RetireCurrent {
                kid: kid.to_owned(),
            });
        }
    }
    let Some(i) = keyset.keys.iter().position(|k| k.kid == kid) else {
        return Err(IssuerError::UnknownKid {
            kid: kid.to_owned(),
            keyset: keyset_file,
        });
    };
    if keyset.keys.len() == 1 {
        // Nodes refuse an empty keyset, so this would stop every node at its next reload.
        return Err(IssuerError::RetireLast {
            kid: kid.to_owned(),
        });
    }
    let removed = keyset.keys.remove(i);
    write_keyset(&keyset_file, &keyset)?;
    let mut deleted_key_file = None;
    // The kid came from the keyset, which was validated but not held to the file-name rules;
    // only touch files for kids that could have been written by keys_init.
    if validate_kid(&removed.kid).is_ok() {
        for kind in [KeyFileKind::Pem, KeyFileKind::Secret] {
            let path = dir.join(archived_key_name(&removed.kid, kind));
            if remove_if_present(&path)? {
                deleted_key_file = Some(path);
            }
        }
    }
    Ok(RetireReport {
        kid: removed.kid,
        keyset_file,
        deleted_key_file,
        keyset_kids: keyset.keys.iter().map(|k| k.kid.clone()).collect(),
    })
}

impl IssuerKey {
    /// Loads the current signing key of the issuer directory `dir`, with its kid as recorded in
    /// `dir/keyset.json`. Fails if the key's public part is not in the keyset, since tokens
    /// signed with it could not be verified by any node.
    pub fn load(dir: &Path) -> Result<IssuerKey, IssuerError> {
        let keyset_file = dir.join(KEYSET_FILE);
        let keyset = read_keyset_if_any(&keyset_file)?;
        let Some(keyset) = keyset else {
            // Say what is missing first: the key if there is none, else the keyset.
            if current_key_file(dir)?.is_none() {
                return Err(IssuerError::NoIssuerKey {
                    dir: dir.to_owned(),
                });
            }
            return Err(IssuerError::InvalidKeyset {
                path: keyset_file,
                reason: "the file is missing".to_owned(),
            });
        };
        let cur = find_current(dir, &keyset)?.ok_or_else(|| IssuerError::NoIssuerKey {
            dir: dir.to_owned(),
        })?;
        Ok(cur.key)
    }
}

/// The current key with everything rotation needs to know about it.
struct Current {
    kid: String,
    kind: KeyFileKind,
    text: String,
    key: IssuerKey,
}

/// Which file holds the current key: `issuer-key.pem` wins over `issuer-key.secret`, because a
/// rotation writes the new file before removing the other kind, and the new one is current.
/// Only an HS256 → PEM rotation interrupted between those two steps leaves both, and then the
/// PEM is the new key.
fn current_key_file(dir: &Path) -> Result<Option<(PathBuf, KeyFileKind)>, IssuerError> {
    for kind in [KeyFileKind::Pem, KeyFileKind::Secret] {
        let path = dir.join(current_key_name(kind));
        if occupied(&path)? {
            return Ok(Some((path, kind)));
        }
    }
    Ok(None)
}

/// Loads the current key file, if any, and names it by finding its key material in `keyset`.
fn find_current(dir: &Path, keyset: &JwkSet) -> Result<Option<Current>, IssuerError> {
    let Some((path, kind)) = current_key_file(dir)? else {
        return Ok(None);
    };
    let text = fs::read_to_string(&path).map_err(|e| IssuerError::io(&path, e))?;
    let (alg, encoding, public) = parse_key_file(&text, kind, &path)?;
    let thumbprint = public.thumbprint_sha256();
    let kids: Vec<String> = keyset
        .keys
        .iter()
        .filter(|k| k.alg == alg.as_str() && k.thumbprint_sha256() == thumbprint)
        .map(|k| k.kid.clone())
        .collect();
    let kid = match kids.as_slice() {
        [kid] => kid.clone(),
        [] => {
            return Err(IssuerError::KeyNotInKeyset {
                key_file: path,
                keyset: dir.join(KEYSET_FILE),
            })
        }
        _ => {
            return Err(IssuerError::AmbiguousKid {
                key_file: path,
                kids,
            })
        }
    };
    Ok(Some(Current {
        key: IssuerKey::new(kid.clone(), alg, encoding, public),
        kid,
        kind,
        text,
    }))
}

/// Reads and fully validates a keyset file; `None` if it does not exist. The same checks as
/// the node's loader, so the issuer never extends a keyset a node would refuse.
fn read_keyset_if_any(path: &Path) -> Result<Option<JwkSet>, IssuerError> {
    let invalid = |reason: String| IssuerError::InvalidKeyset {
        path: path.to_owned(),
        reason,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IssuerError::io(path, e)),
    };
    if meta.len() > MAX_KEYSET_FILE {
        return Err(invalid(format!(
            "{} bytes is larger than the {MAX_KEYSET_FILE}-byte limit",
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| IssuerError::io(path, e))?;
    let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let mut seen = HashSet::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        jwk.to_verifying_key()
            .map_err(|e| invalid(format!("key {i} (kid {:?}): {e}", jwk.kid)))?;
        if !seen.insert(jwk.kid.as_str()) {
            return Err(invalid(format!("kid {:?} appears more than once", jwk.kid)));
        }
    }
    Ok(Some(set))
}

/// Writes the keyset atomically. Public keys are public (0644), but an HS256 entry is the
/// shared secret itself, so any keyset holding one is written 0600.
fn write_keyset(path: &Path, set: &JwkSet) -> Result<(), IssuerError> {
    let mode = if set.keys.iter().any(|k| k.k.is_some()) {
        SECRET_MODE
    } else {
        PUBLIC_MODE
    };
    let mut text = serde_json::to_vec_pretty(set).map_err(|e| IssuerError::InvalidKeyset {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(path, &text, mode)?;
    Ok(())
}

/// Creates the directory (0700: it holds private keys) if it does not exist yet.
fn ensure_dir(dir: &Path) -> Result<(), IssuerError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| IssuerError::io(dir, e))
}

fn remove_if_present(path: &Path) -> Result<bool, IssuerError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(IssuerError::io(path, e)),
    }
}
