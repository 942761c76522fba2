//! `skv-node rekey`: offline rotation of the data key and re-encryption of a stopped node's
//! data dir (docs/SECURITY.md, "Encryption at rest").
//!
//! The steps, each safe to interrupt:
//! 1. unwrap the keyring with the old master key, add a fresh data key, make it current, and
//!    write the keyring wrapped with the new master key (an atomic rename: from here on only
//!    the new master key opens the dir, and every old record is still readable);
//! 2. unless `keep_old`: rewrite every sealed record (keyspace records of every generation,
//!    the shards' Raft log entries, their stored snapshots) under the current key, flush;
//! 3. drop the old data keys from the keyring and write it again.
//!
//! A crash in step 2 leaves a keyring that still holds every key, so running `rekey` again
//! finishes the job (it adds one more key and rewrites everything under it).

use std::path::Path;

use sled::IVec;

use crate::raft::META_GROUP;
use crate::storage::atrest::{AtRestError, Context, Crypt, MasterKey, KEYRING_FILE};
use crate::storage::{SledStorage, StorageError};

/// What a rekey did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// The data key new writes use from now on.
    pub current_key_id: u32,
    /// Records rewritten under it (0 with `keep_old`).
    pub rewritten: u64,
    /// Data keys still in the keyring.
    pub key_ids: Vec<u32>,
}

/// Why a rekey failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RekeyError {
    /// The data dir has no keyring: it is not encrypted at rest.
    #[error("data dir {} is not encrypted at rest (no {KEYRING_FILE})", path.display())]
    NotEncrypted {
        /// The data dir.
        path: std::path::PathBuf,
    },
    /// The keyring or a record could not be opened or sealed.
    #[error(transparent)]
    AtRest(#[from] AtRestError),
    /// The data dir could not be opened (is the node still running?).
    #[error("cannot open the data dir (stop the node first)")]
    Storage(#[from] StorageError),
    /// sled failed while rewriting.
    #[error("storage failed while rewriting records")]
    Sled(#[from] sled::Error),
    /// A stored record does not have the layout of its tree.
    #[error("a record in tree {tree} is malformed")]
    Malformed {
        /// The tree.
        tree: String,
    },
}

/// Rotates the data key of the stopped node in `data_dir` and, unless `keep_old`, re-encrypts
/// every record under it and forgets the old keys (module docs). `old` is the master key the
/// keyring is wrapped with now; `new` the one it is wrapped with afterwards (the same key is
/// fine: a data-key rotation only).
pub fn rekey(
    data_dir: &Path,
    old: &MasterKey,
    new: &MasterKey,
    keep_old: bool,
) -> Result<RekeyReport, RekeyError> {
    let keyring = data_dir.join(KEYRING_FILE);
    if !keyring.exists() {
        return Err(RekeyError::NotEncrypted {
            path: data_dir.to_path_buf(),
        });
    }
    let mut crypt = Crypt::load(&keyring, old)?;
    // Take sled's lock first: a running node must not be rekeyed under its feet.
    let storage = SledStorage::open(data_dir, None)?;
    let current = crypt.rotate()?;
    crypt.save(data_dir, new)?;
    let mut rewritten = 0;
    if !keep_old {
        rewritten = reseal_all(storage.db(), &crypt)?;
        storage.db().flush()?;
        crypt.retire_old_keys();
        crypt.save(data_dir, new)?;
    }
    Ok(RekeyReport {
        current_key_id: current,
        rewritten,
        key_ids: crypt.key_ids(),
    })
}

/// What a tree holds, from its name.
enum Kind {
    Records(u32),
    Log(u32),
    StateMachine(u32),
}

fn kind(name: &str) -> Option<Kind> {
    if let Some(rest) = name.strip_prefix("ks/shard-") {
        let id = rest.split('/').next()?;
        return id.parse().ok().map(Kind::Records);
    }
    if let Some(rest) = name.strip_prefix("raft/") {
        let id: u32 = rest.strip_suffix("/log")?.parse().ok()?;
        return (id != META_GROUP).then_some(Kind::Log(id));
    }
    if let Some(rest) = name.strip_prefix("sm/") {
        let id: u32 = rest.parse().ok()?;
        return Some(Kind::StateMachine(id));
    }
    None
}

/// Rewrites every sealed record of `db` under `crypt`'s current key; returns how many.
fn reseal_all(db: &sled::Db, crypt: &Crypt) -> Result<u64, RekeyError> {
    let mut count = 0;
    for name in db.tree_names() {
        let Ok(name) = std::str::from_utf8(&name).map(str::to_owned) else {
            continue;
        };
        let Some(kind) = kind(&name) else { continue };
        let tree = db.open_tree(&name)?;
        let malformed = || RekeyError::Malformed { tree: name.clone() };
        for item in tree.iter() {
            let (key, raw): (IVec, IVec) = item?;
            let resealed = match kind {
                Kind::Records(group) => {
                    let (header, env) = raw.split_first_chunk::<8>().ok_or_else(malformed)?;
                    let version = u64::from_be_bytes(*header);
                    let ctx = Context::Record {
                        group,
                        key: &key,
                        version,
                    };
                    if Crypt::key_id_of(env)? == crypt.current_key_id() {
                        continue;
                    }
                    let mut out = header.to_vec();
                    crypt.seal_into(&ctx, &crypt.open(&ctx, env)?, &mut out)?;
                    out
                }
                Kind::Log(group) => {
                    let index =
                        u64::from_be_bytes(key.as_ref().try_into().map_err(|_| malformed())?);
                    let ctx = Context::LogEntry { group, index };
                    if Crypt::key_id_of(&raw)? == crypt.current_key_id() {
                        continue;
                    }
                    crypt.seal(&ctx, &crypt.open(&ctx, &raw)?)?
                }
                Kind::StateMachine(group) => {
                    // Only the snapshot record is sealed; `state` holds no client data.
                    if key.as_ref() != b"snapshot" {
                        continue;
                    }
                    let ctx = Context::Snapshot { group };
                    if Crypt::key_id_of(&raw)? == crypt.current_key_id() {
                        continue;
                    }
                    crypt.seal(&ctx, &crypt.open(&ctx, &raw)?)?
                }
            };
            // Compare-and-swap, so a record changed since it was read (impossible offline,
            // where sled's lock keeps the node out) is never overwritten with an old value.
            if tree
                .compare_and_swap(&key, Some(&raw), Some(resealed))?
                .is_ok()
            {
                count += 1;
            }
        }
    }
    Ok(count)
}
