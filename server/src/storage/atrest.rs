//! Encryption at rest: the envelope every encrypted record is sealed in, the node's data keys
//! (DEKs) and the master key that wraps them.
//!
//! This module owns the on-disk format of encrypted values and of the keyring file; the
//! callers (the Raft state machine and log, `crate::raft`) decide what is sealed and with which
//! associated data. It knows nothing of Raft, slots or auth.
//!
//! # Key hierarchy
//!
//! - The **master key** (32 bytes) never touches the data dir: it comes from `--master-key FILE`
//!   (mode 0600 or stricter; 64 hex characters, or exactly 32 raw bytes) or from the
//!   `SKV_MASTER_KEY` environment variable (64 hex characters).
//! - **Data keys** (DEKs, 32 random bytes each, numbered by a `u32` key id) seal the records.
//!   They live in `<data-dir>/atrest-keyring.json`, each wrapped with AES-256-GCM under the
//!   master key, the associated data naming the key id (so a wrapped key copied under another
//!   id does not unwrap). One of them is *current*: new records use it. Older ones stay until a
//!   re-encryption (`skv-node rekey`) has rewritten every record under the current one.
//!
//! A wrong master key fails the unwrap of the first DEK, and the node refuses to start
//! ([`AtRestError::WrongMasterKey`]); no message ever contains key material.
//!
//! # Envelope
//!
//! ```text
//! 0xE1 | key id (u32 BE) | nonce (12) | ciphertext (len of plaintext) | tag (16)
//! ```
//!
//! AES-256-GCM, with associated data `"skv-atrest-v1" ‖ header (5 bytes) ‖ context`, where the
//! caller's context names where the record lives (its tree kind, its group, its key, its
//! version, see [`Context`]). A ciphertext moved to another key, another version or another
//! shard, or a header whose key id was edited, fails authentication:
//! [`AtRestError::Decrypt`]. Overhead: 33 bytes per record.
//!
//! # Nonces
//!
//! Each seal draws a fresh random 96-bit nonce from the operating system (`ring`'s
//! `SystemRandom`). With random nonces, the probability that any two of `n` encryptions under
//! one key share a nonce is about `n² / 2^97`; NIST SP 800-38D caps random-nonce GCM at `2^32`
//! invocations per key so that this stays below `2^-32`. A persisted counter would avoid the
//! bound, but a restored backup or a copied data dir would replay it and reuse nonces, which
//! breaks GCM outright; random nonces fail only probabilistically. skv therefore accepts the
//! bound and asks operators to rotate the data key (`skv-node rekey`) well before `2^32` seals
//! under one key. Each write seals twice (its Raft log entry and its state machine record),
//! so at a sustained 10 000 writes/s a key reaches `2^32` seals in about 2.5 days; rekeying
//! weekly at that rate would be too late, daily is enough. Every node has its own data keys.
//!
//! # What is not sealed
//!
//! Keys stay in the clear: sled orders them for scans and the shard hashes them to slots, and
//! an order-preserving or deterministic encryption of keys would leak their equality and order
//! anyway. Versions, the shard's slot tables and the Raft votes are metadata, not client data.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// First byte of every envelope (format version 1).
pub const MAGIC: u8 = 0xE1;
/// Bytes before the ciphertext: magic, key id, nonce.
pub const HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// GCM tag length.
pub const TAG_LEN: usize = 16;
/// Bytes an envelope adds to its plaintext.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

/// Name of the keyring file in the data dir.
pub const KEYRING_FILE: &str = "atrest-keyring.json";
/// The environment variable holding the master key in hex.
pub const MASTER_KEY_ENV: &str = "SKV_MASTER_KEY";

const AD_DOMAIN: &[u8] = b"skv-atrest-v1";
const WRAP_DOMAIN: &[u8] = b"skv-dek-wrap-v1";
const KEY_LEN: usize = 32;

/// Why an at-rest operation failed. Messages name files and key ids, never key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AtRestError {
    /// The master key file could not be read.
    #[error("cannot read master key file {}", path.display())]
    ReadMasterKey {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The master key file is readable by its group or others.
    #[error(
        "master key file {} has mode {mode:o}: it must be readable by its owner only \
         (chmod 600)",
        path.display()
    )]
    MasterKeyMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The master key is not 32 bytes (64 hex characters, or 32 raw bytes in a file).
    #[error("master key from {source_name} is not 32 bytes (64 hex characters, or 32 raw bytes in a file)")]
    MasterKeyFormat {
        /// Where it came from (a file name or the environment variable).
        source_name: String,
    },
    /// The master key does not unwrap the data keys: it is not the one the data dir was
    /// encrypted with.
    #[error(
        "the master key does not unwrap data key {key_id} in {}: wrong master key (or a \
         corrupted keyring); refusing to start",
        path.display()
    )]
    WrongMasterKey {
        /// The keyring file.
        path: PathBuf,
        /// The data key that failed to unwrap.
        key_id: u32,
    },
    /// The data dir is encrypted but no master key was given.
    #[error(
        "data dir {} is encrypted at rest ({KEYRING_FILE} is present): start with \
         --master-key FILE or {MASTER_KEY_ENV}",
        path.display()
    )]
    MasterKeyRequired {
        /// The data dir.
        path: PathBuf,
    },
    /// A master key was given for a data dir that already holds plaintext data.
    #[error(
        "data dir {} holds data written without encryption at rest; skv does not mix \
         plaintext and encrypted records: start without a master key, or start from an empty \
         data dir (docs/SECURITY.md, \"Encryption at rest\")",
        path.display()
    )]
    PlaintextDataDir {
        /// The data dir.
        path: PathBuf,
    },
    /// The keyring file is unreadable or malformed.
    #[error("keyring {} is unreadable or malformed: {reason}", path.display())]
    Keyring {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key bytes).
        reason: String,
    },
    /// The keyring file could not be written.
    #[error("cannot write keyring {}", path.display())]
    WriteKeyring {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The record is not an envelope (too short, or another format byte).
    #[error("encrypted record of {len} bytes is malformed (not an skv envelope)")]
    Malformed {
        /// Its length.
        len: usize,
    },
    /// The record names a data key this node does not have.
    #[error("encrypted record uses data key {key_id}, which the keyring does not hold")]
    UnknownKey {
        /// The key id in its header.
        key_id: u32,
    },
    /// Authentication failed: the record was altered, or moved from another key, version or
    /// shard (the associated data differs).
    #[error(
        "encrypted record failed authentication (AES-GCM): it was altered or moved from \
         another key, version or shard"
    )]
    Decrypt,
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// 32 secret bytes; never printed.
struct Secret([u8; KEY_LEN]);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The master key, loaded from a file or the environment.
#[derive(Debug)]
pub struct MasterKey(Secret);

impl MasterKey {
    /// Reads the key from `path`: the file must not be readable or writable by group or others
    /// (checked on Unix), and holds 64 hex characters (surrounding whitespace ignored) or
    /// exactly 32 raw bytes.
    pub fn from_file(path: &Path) -> Result<MasterKey, AtRestError> {
        let read_err = |source| AtRestError::ReadMasterKey {
            path: path.to_path_buf(),
            source,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(read_err)?
                .permissions()
                .mode()
                & 0o777;
            if mode & 0o077 != 0 {
                return Err(AtRestError::MasterKeyMode {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        let raw = std::fs::read(path).map_err(read_err)?;
        let source_name = path.display().to_string();
        if raw.len() == KEY_LEN {
            let mut k = [0; KEY_LEN];
            k.copy_from_slice(&raw);
            return Ok(MasterKey(Secret(k)));
        }
        let text = std::str::from_utf8(&raw)
            .map_err(|_| AtRestError::MasterKeyFormat {
                source_name: source_name.clone(),
            })?
            .trim();
        Self::from_hex(text, source_name)
    }

    /// Parses 64 hex characters (what `SKV_MASTER_KEY` holds).
    pub fn from_hex(text: &str, source_name: String) -> Result<MasterKey, AtRestError> {
        let bytes = decode_hex(text.trim())
            .filter(|b| b.len() == KEY_LEN)
            .ok_or(AtRestError::MasterKeyFormat { source_name })?;
        let mut k = [0; KEY_LEN];
        k.copy_from_slice(&bytes);
        Ok(MasterKey(Secret(k)))
    }

    /// The key from `--master-key FILE` when given, else from `SKV_MASTER_KEY` when set, else
    /// none (encryption at rest off).
    pub fn from_flag_or_env(file: Option<&Path>) -> Result<Option<MasterKey>, AtRestError> {
        if let Some(path) = file {
            return Self::from_file(path).map(Some);
        }
        match std::env::var(MASTER_KEY_ENV) {
            Ok(hex) if !hex.trim().is_empty() => {
                Self::from_hex(&hex, MASTER_KEY_ENV.to_owned()).map(Some)
            }
            _ => Ok(None),
        }
    }

    fn aead(&self) -> LessSafeKey {
        aead_key(&self.0 .0)
    }
}

fn aead_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    // AES-256 takes any 32-byte key, so this cannot fail.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a sealed record lives: the associated data that binds it there.
#[derive(Debug, Clone, Copy)]
pub enum Context<'a> {
    /// A keyspace record of shard `group`: the client key and the version it was written at.
    Record {
        /// The Raft group (shard) id.
        group: u32,
        /// The client key.
        key: &'a [u8],
        /// The record's version.
        version: u64,
    },
    /// Raft log entry `index` of group `group`.
    LogEntry {
        /// The Raft group id.
        group: u32,
        /// The log index.
        index: u64,
    },
    /// The stored snapshot of group `group`.
    Snapshot {
        /// The Raft group id.
        group: u32,
    },
}

impl Context<'_> {
    fn append_to(&self, ad: &mut Vec<u8>) {
        match *self {
            Context::Record {
                group,
                key,
                version,
            } => {
                ad.push(1);
                ad.extend_from_slice(&group.to_be_bytes());
                ad.extend_from_slice(&version.to_be_bytes());
                // The key is last, so its length needs no prefix to keep the encoding
                // unambiguous (every other field has a fixed length).
                ad.extend_from_slice(key);
            }
            Context::LogEntry { group, index } => {
                ad.push(2);
                ad.extend_from_slice(&group.to_be_bytes());
                ad.extend_from_slice(&index.to_be_bytes());
            }
            Context::Snapshot { group } => {
                ad.push(3);
                ad.extend_from_slice(&group.to_be_bytes());
            }
        }
    }
}

/// What the keyring file holds.
#[derive(Debug, Serialize, Deserialize)]
struct KeyringFile {
    format: u32,
    current: u32,
    /// Key id → hex(nonce ‖ wrapped key ‖ tag).
    keys: BTreeMap<u32, String>,
}

/// The node's data keys, unwrapped: seals with the current one, opens with any.
pub struct Crypt {
    current: u32,
    keys: BTreeMap<u32, (LessSafeKey, Secret)>,
    rng: SystemRandom,
}

impl fmt::Debug for Crypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypt")
            .field("current", &self.current)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Crypt {
    /// The key id new records are sealed with.
    pub fn current_key_id(&self) -> u32 {
        self.current
    }

    /// Every key id held, ascending.
    pub fn key_ids(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    /// A keyring with one fresh key and no file (tests of the sealed stores).
    #[cfg(test)]
    pub(crate) fn ephemeral() -> Crypt {
        Crypt::generate(1).expect("system random")
    }

    /// A keyring with one fresh key, `id`.
    fn generate(id: u32) -> Result<Crypt, AtRestError> {
        let mut c = Crypt {
            current: id,
            keys: BTreeMap::new(),
            rng: SystemRandom::new(),
        };
        c.add_key(id)?;
        Ok(c)
    }

    fn add_key(&mut self, id: u32) -> Result<(), AtRestError> {
        let mut k = [0; KEY_LEN];
        self.rng.fill(&mut k).map_err(|_| AtRestError::Random)?;
        self.keys.insert(id, (aead_key(&k), Secret(k)));
        Ok(())
    }

    /// Adds a fresh data key and makes it current (new seals use it; old ones stay
    /// readable). Returns its id.
    pub fn rotate(&mut self) -> Result<u32, AtRestError> {
        let id = self
            .keys
            .keys()
            .next_back()
            .map_or(1, |m| m.saturating_add(1));
        self.add_key(id)?;
        self.current = id;
        Ok(id)
    }

    /// Forgets every key but the current one (after a re-encryption rewrote every record).
    pub fn retire_old_keys(&mut self) {
        let current = self.current;
        self.keys.retain(|id, _| *id == current);
    }

    fn ad(header: &[u8], ctx: &Context<'_>) -> Vec<u8> {
        let mut ad = Vec::with_capacity(AD_DOMAIN.len() + 5 + 32);
        ad.extend_from_slice(AD_DOMAIN);
        ad.extend_from_slice(&header[..5]);
        ctx.append_to(&mut ad);
        ad
    }

    /// Seals `plaintext` for `ctx` with the current key; appends the envelope to `out`.
    pub fn seal_into(
        &self,
        ctx: &Context<'_>,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AtRestError> {
        let (key, _) = self
            .keys
            .get(&self.current)
            .ok_or(AtRestError::UnknownKey {
                key_id: self.current,
            })?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| AtRestError::Random)?;
        let start = out.len();
        out.reserve(OVERHEAD + plaintext.len());
        out.push(MAGIC);
        out.extend_from_slice(&self.current.to_be_bytes());
        out.extend_from_slice(&nonce);
        let ad = Self::ad(&out[start..], ctx);
        let body = out.len();
        out.extend_from_slice(plaintext);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ad),
                &mut out[body..],
            )
            .map_err(|_| AtRestError::Decrypt)?;
        out.extend_from_slice(tag.as_ref());
        Ok(())
    }

    /// Seals `plaintext` for `ctx` into a new buffer.
    pub fn seal(&self, ctx: &Context<'_>, plaintext: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let mut out = Vec::new();
        self.seal_into(ctx, plaintext, &mut out)?;
        Ok(out)
    }

    /// The key id in an envelope's header (without authenticating it).
    pub fn key_id_of(envelope: &[u8]) -> Result<u32, AtRestError> {
        match envelope {
            [MAGIC, a, b, c, d, ..] if envelope.len() >= OVERHEAD => {
                Ok(u32::from_be_bytes([*a, *b, *c, *d]))
            }
            _ => Err(AtRestError::Malformed {
                len: envelope.len(),
            }),
        }
    }

    /// Authenticates and decrypts an envelope sealed for `ctx`.
    pub fn open(&self, ctx: &Context<'_>, envelope: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let key_id = Self::key_id_of(envelope)?;
        let (key, _) = self
            .keys
            .get(&key_id)
            .ok_or(AtRestError::UnknownKey { key_id })?;
        let (header, rest) = envelope.split_at(HEADER_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&header[5..]);
        let ad = Self::ad(header, ctx);
        let mut buf = rest.to_vec();
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&ad),
                &mut buf,
            )
            .map_err(|_| AtRestError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// Opens the keyring of `data_dir` with `master`, creating it with one fresh key on first
    /// start. Refuses a data dir that already holds plaintext data (a sled database but no
    /// keyring).
    pub fn open_or_create(data_dir: &Path, master: &MasterKey) -> Result<Crypt, AtRestError> {
        let path = data_dir.join(KEYRING_FILE);
        if path.exists() {
            return Self::load(&path, master);
        }
        if data_dir.join("db").exists() || data_dir.join("conf").exists() {
            return Err(AtRestError::PlaintextDataDir {
                path: data_dir.to_path_buf(),
            });
        }
        let crypt = Crypt::generate(1)?;
        std::fs::create_dir_all(data_dir).map_err(|source| AtRestError::WriteKeyring {
            path: path.clone(),
            source,
        })?;
        crypt.save(data_dir, master)?;
        Ok(crypt)
    }

    /// Refuses to open an encrypted data dir without its master key.
    pub fn check_plaintext(data_dir: &Path) -> Result<(), AtRestError> {
        if data_dir.join(KEYRING_FILE).exists() {
            return Err(AtRestError::MasterKeyRequired {
                path: data_dir.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Loads and unwraps a keyring file.
    pub fn load(path: &Path, master: &MasterKey) -> Result<Crypt, AtRestError> {
        let bad = |reason: &str| AtRestError::Keyring {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
        let file: KeyringFile =
            serde_json::from_str(&text).map_err(|e| bad(&format!("not keyring JSON: {e}")))?;
        if file.format != 1 {
            return Err(bad(&format!("unknown format {}", file.format)));
        }
        let wrap = master.aead();
        let mut keys = BTreeMap::new();
        for (id, hex) in &file.keys {
            let raw = decode_hex(hex).ok_or_else(|| bad(&format!("key {id} is not hex")))?;
            if raw.len() != NONCE_LEN + KEY_LEN + TAG_LEN {
                return Err(bad(&format!("key {id} has {} bytes", raw.len())));
            }
            let (nonce, sealed) = raw.split_at(NONCE_LEN);
            let mut buf = sealed.to_vec();
            let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| bad("nonce"))?;
            let plain = wrap
                .open_in_place(nonce, Aad::from(wrap_ad(*id)), &mut buf)
                .map_err(|_| AtRestError::WrongMasterKey {
                    path: path.to_path_buf(),
                    key_id: *id,
                })?;
            let mut k = [0; KEY_LEN];
            k.copy_from_slice(plain);
            keys.insert(*id, (aead_key(&k), Secret(k)));
        }
        if !keys.contains_key(&file.current) {
            return Err(bad(&format!("current key {} is not in it", file.current)));
        }
        Ok(Crypt {
            current: file.current,
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// Writes the keyring, every key wrapped with `master`, atomically (a temporary file
    /// renamed over the old one, mode 0600).
    pub fn save(&self, data_dir: &Path, master: &MasterKey) -> Result<(), AtRestError> {
        let path = data_dir.join(KEYRING_FILE);
        let wrap = master.aead();
        let mut keys = BTreeMap::new();
        for (id, (_, secret)) in &self.keys {
            let mut nonce = [0u8; NONCE_LEN];
            self.rng.fill(&mut nonce).map_err(|_| AtRestError::Random)?;
            let mut buf = secret.0.to_vec();
            let tag = wrap
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(wrap_ad(*id)),
                    &mut buf,
                )
                .map_err(|_| AtRestError::Random)?;
            let mut raw = nonce.to_vec();
            raw.extend_from_slice(&buf);
            raw.extend_from_slice(tag.as_ref());
            keys.insert(*id, encode_hex(&raw));
        }
        let file = KeyringFile {
            format: 1,
            current: self.current,
            keys,
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| AtRestError::Keyring {
            path: path.clone(),
            reason: format!("cannot encode: {e}"),
        })?;
        let tmp = data_dir.join(format!("{KEYRING_FILE}.tmp"));
        let write_err = |source| AtRestError::WriteKeyring {
            path: path.clone(),
            source,
        };
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(write_err)?;
            f.write_all(text.as_bytes()).map_err(write_err)?;
            f.sync_all().map_err(write_err)?;
        }
        std::fs::rename(&tmp, &path).map_err(write_err)?;
        if let Ok(dir) = std::fs::File::open(data_dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

fn wrap_ad(id: u32) -> Vec<u8> {
    let mut ad = WRAP_DOMAIN.to_vec();
    ad.extend_from_slice(&id.to_be_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(byte: u8) -> MasterKey {
        MasterKey(Secret([byte; KEY_LEN]))
    }

    fn ctx(key: &[u8]) -> Context<'_> {
        Context::Record {
            group: 3,
            key,
            version: 7,
        }
    }

    #[test]
    fn seal_open_round_trip_and_overhead() {
        let c = Crypt::generate(1).unwrap();
        let env = c.seal(&ctx(b"k"), b"canary value").unwrap();
        assert_eq!(env.len(), b"canary value".len() + OVERHEAD);
        assert_eq!(env[0], MAGIC);
        assert_eq!(Crypt::key_id_of(&env).unwrap(), 1);
        assert!(!env.windows(6).any(|w| w == b"canary"));
        assert_eq!(c.open(&ctx(b"k"), &env).unwrap(), b"canary value");
        assert_eq!(
            c.open(&ctx(b"k"), &c.seal(&ctx(b"k"), b"").unwrap())
                .unwrap(),
            b""
        );
        // Two seals of the same value differ (fresh nonces).
        assert_ne!(env, c.seal(&ctx(b"k"), b"canary value").unwrap());
    }

    #[test]
    fn every_byte_region_is_authenticated() {
        let c = Crypt::generate(1).unwrap();
        let env = c.seal(&ctx(b"k"), b"some secret value").unwrap();
        // magic, key id, nonce, ciphertext, tag: flipping any byte is refused.
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            let err = c.open(&ctx(b"k"), &bad).unwrap_err();
            let expected = match i {
                0 => matches!(err, AtRestError::Malformed { .. }),
                1..=4 => matches!(err, AtRestError::UnknownKey { .. }),
                _ => matches!(err, AtRestError::Decrypt),
            };
            assert!(expected, "byte {i}: {err:?}");
        }
        // Truncated anywhere: refused, never a panic.
        for len in 0..env.len() {
            assert!(c.open(&ctx(b"k"), &env[..len]).is_err(), "len {len}");
        }
    }

    #[test]
    fn a_key_id_edited_to_another_held_key_is_refused() {
        let mut c = Crypt::generate(1).unwrap();
        let env = c.seal(&ctx(b"k"), b"v").unwrap();
        c.rotate().unwrap();
        let mut bad = env.clone();
        bad[1..5].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(
            c.open(&ctx(b"k"), &bad),
            Err(AtRestError::Decrypt)
        ));
        assert_eq!(c.open(&ctx(b"k"), &env).unwrap(), b"v");
    }

    #[test]
    fn moved_to_another_key_version_shard_or_kind_is_refused() {
        let c = Crypt::generate(1).unwrap();
        let env = c.seal(&ctx(b"alice"), b"v").unwrap();
        let others = [
            ctx(b"alicf"),
            ctx(b"alic"),
            Context::Record {
                group: 3,
                key: b"alice",
                version: 8,
            },
            Context::Record {
                group: 4,
                key: b"alice",
                version: 7,
            },
            Context::LogEntry { group: 3, index: 7 },
            Context::Snapshot { group: 3 },
        ];
        for other in others {
            let err = c.open(&other, &env).unwrap_err();
            assert!(matches!(err, AtRestError::Decrypt), "{other:?}: {err:?}");
            assert!(err.to_string().contains("moved from another key"), "{err}");
        }
    }

    #[test]
    fn rotation_keeps_old_records_readable_and_retiring_drops_them() {
        let mut c = Crypt::generate(1).unwrap();
        let old = c.seal(&ctx(b"k"), b"old").unwrap();
        assert_eq!(c.rotate().unwrap(), 2);
        let new = c.seal(&ctx(b"k"), b"new").unwrap();
        assert_eq!(Crypt::key_id_of(&new).unwrap(), 2);
        assert_eq!(c.open(&ctx(b"k"), &old).unwrap(), b"old");
        c.retire_old_keys();
        assert_eq!(c.key_ids(), vec![2]);
        assert!(matches!(
            c.open(&ctx(b"k"), &old),
            Err(AtRestError::UnknownKey { key_id: 1 })
        ));
        assert_eq!(c.open(&ctx(b"k"), &new).unwrap(), b"new");
    }

    #[test]
    fn keyring_round_trips_and_a_wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Crypt::open_or_create(dir.path(), &master(1)).unwrap();
        let env = c.seal(&ctx(b"k"), b"v").unwrap();
        c.rotate().unwrap();
        c.save(dir.path(), &master(1)).unwrap();
        let again = Crypt::open_or_create(dir.path(), &master(1)).unwrap();
        assert_eq!(again.current_key_id(), 2);
        assert_eq!(again.open(&ctx(b"k"), &env).unwrap(), b"v");
        let err = Crypt::open_or_create(dir.path(), &master(2)).unwrap_err();
        assert!(matches!(err, AtRestError::WrongMasterKey { .. }), "{err:?}");
        assert!(err.to_string().contains("wrong master key"), "{err}");
        // A wrapped key copied under another id does not unwrap.
        let path = dir.path().join(KEYRING_FILE);
        let mut file: KeyringFile =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let one = file.keys[&1].clone();
        file.keys.insert(2, one);
        std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
        assert!(matches!(
            Crypt::load(&path, &master(1)),
            Err(AtRestError::WrongMasterKey { key_id: 2, .. })
        ));
        // Required once encrypted.
        assert!(matches!(
            Crypt::check_plaintext(dir.path()),
            Err(AtRestError::MasterKeyRequired { .. })
        ));
    }

    #[test]
    fn a_plaintext_data_dir_is_not_silently_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db"), b"sled").unwrap();
        assert!(matches!(
            Crypt::open_or_create(dir.path(), &master(1)),
            Err(AtRestError::PlaintextDataDir { .. })
        ));
    }

    #[cfg(unix)]
    #[test]
    fn master_key_file_mode_and_formats() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mk");
        let hex = "ab".repeat(32);
        std::fs::write(&path, format!("{hex}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = MasterKey::from_file(&path).unwrap_err();
        assert!(matches!(
            err,
            AtRestError::MasterKeyMode { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let k = MasterKey::from_file(&path).unwrap();
        assert_eq!(k.0 .0, [0xab; 32]);
        std::fs::write(&path, [7u8; 32]).unwrap();
        assert_eq!(MasterKey::from_file(&path).unwrap().0 .0, [7; 32]);
        std::fs::write(&path, "abcd").unwrap();
        let err = MasterKey::from_file(&path).unwrap_err();
        assert!(matches!(err, AtRestError::MasterKeyFormat { .. }));
        assert!(
            !format!("{k:?}").contains("ab"),
            "Debug never shows key bytes"
        );
        assert!(MasterKey::from_hex(&"zz".repeat(32), "env".into()).is_err());
    }
}
