//! The sled engine: the node's on-disk [`Storage`].
//!
//! Each keyspace is a sled tree (`ks/<name>`), and each record is stored under its key as an
//! 8-byte big-endian version followed by the value bytes. The keyspace's applied version lives
//! in the `skv-meta` tree under `applied/<name>`.
//!
//! # Why the applied version is written first
//!
//! A write stores the new applied version in the meta tree, then the record. sled keeps one
//! log for all trees of a database and recovers a prefix of it after a crash, so a record that
//! survived always has its applied version with it: the shard never hands out a version that a
//! surviving record already carries. The opposite order could lose the applied version and keep
//! the record, and the next write to that key would go back in time. The cost is one more small
//! insert per write, and none for an import below the applied version.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::{
    collect_page, scan_range, Keyspace, ScanBounds, ScanPage, Storage, StorageError, Versioned,
};

/// Length of the version header in front of every stored value.
const HEADER: usize = 8;

/// Name of the tree holding per-keyspace metadata.
const META_TREE: &str = "skv-meta";

/// A [`Storage`] backed by a sled database in a data directory.
///
/// sled takes an exclusive lock on the directory, so one directory serves one open
/// `SledStorage` at a time; share it through `Arc` instead of opening it twice.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    meta: sled::Tree,
    path: PathBuf,
}

/// One keyspace: a sled tree and its applied version.
#[derive(Debug)]
struct SledKeyspace {
    tree: sled::Tree,
    meta: sled::Tree,
    applied_key: Vec<u8>,
    applied: AtomicU64,
}

impl SledStorage {
    /// Opens (creating if needed) the database in `path`.
    ///
    /// `flush_every_ms` is sled's background flush period: `Some(n)` for the node's async
    /// durability mode (writes reach disk within about `n` ms), `None` when every durable
    /// write goes through an explicit [`Storage::flush`] (sync mode, via `GroupCommit`).
    ///
    /// Fails with [`StorageError::Locked`] when the directory is already open, in this process
    /// or another, and with [`StorageError::OldLayout`] when it holds keys in the layout of
    /// skv before per-shard keyspaces.
    pub fn open(path: &Path, flush_every_ms: Option<u64>) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(flush_every_ms)
            .open()
            .map_err(|source| open_error(path, source))?;
        // Keys of the old layout lived in the default tree, which this layout never writes.
        if !db.is_empty() {
            return Err(StorageError::OldLayout {
                path: path.to_path_buf(),
            });
        }
        let meta = db
            .open_tree(META_TREE)
            .map_err(|source| open_error(path, source))?;
        Ok(Self {
            db,
            meta,
            path: path.to_path_buf(),
        })
    }

    /// The data directory this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sled database, shared with the Raft groups' logs and state machines
    /// (`crate::raft`), which keep their own trees in it so one fsync covers both.
    #[allow(dead_code)] // wired in with the replicated shards
    pub(crate) fn db(&self) -> &sled::Db {
        &self.db
    }
}

impl Storage for SledStorage {
    fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StorageError> {
        let tree = self
            .db
            .open_tree(format!("ks/{name}"))
            .map_err(sled_error("open keyspace"))?;
        let applied_key = format!("applied/{name}").into_bytes();
        let applied = match self
            .meta
            .get(&applied_key)
            .map_err(sled_error("open keyspace"))?
        {
            Some(raw) => u64::from_be_bytes(
                raw.as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt { key_len: 0 })?,
            ),
            None => 0,
        };
        Ok(Arc::new(SledKeyspace {
            tree,
            meta: self.meta.clone(),
            applied_key,
            applied: AtomicU64::new(applied),
        }))
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }
}

impl SledKeyspace {
    /// Persist `version` as applied before the write that carries it (module docs).
    fn raise_applied(&self, op: &'static str, version: u64) -> Result<(), StorageError> {
        if version > self.applied.load(Ordering::Acquire) {
            self.meta
                .insert(&self.applied_key, &version.to_be_bytes())
                .map_err(sled_error(op))?;
            self.applied.fetch_max(version, Ordering::AcqRel);
        }
        Ok(())
    }
}

impl Keyspace for SledKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        match self.tree.get(key).map_err(sled_error("get"))? {
            Some(record) => decode(key, &record).map(Some),
            None => Ok(None),
        }
    }

    fn scan_within(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        bounds: &ScanBounds<'_>,
    ) -> Result<ScanPage, StorageError> {
        let Some(range) = scan_range(prefix, after) else {
            return Ok(ScanPage::default());
        };
        let iter = self
            .tree
            .range(range)
            .map(|item| item.map_err(sled_error("scan")));
        collect_page(iter, bounds, |key, record, keys_only| {
            let Versioned { version, value } = decode(key, &record)?;
            let value = if keys_only { Bytes::new() } else { value };
            Ok(Versioned { version, value })
        })
    }

    fn put(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError> {
        self.raise_applied("put", version)?;
        self.tree
            .insert(key, encode(version, value))
            .map_err(sled_error("put"))?;
        Ok(())
    }

    fn delete(&self, key: &[u8], version: u64) -> Result<bool, StorageError> {
        self.raise_applied("delete", version)?;
        Ok(self
            .tree
            .remove(key)
            .map_err(sled_error("delete"))?
            .is_some())
    }

    fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }
}

/// Maps an open failure, telling a held lock apart from other failures.
///
/// sled 0.34 reports a held lock only as `Io(Other)` with "could not acquire lock on ..." in
/// the message (fs2's `try_lock_exclusive` failing), so the message is the only way to
/// recognise it. If a sled upgrade changes the wording, the `Locked` test fails rather than
/// the node silently reporting a generic open error.
fn open_error(path: &Path, source: sled::Error) -> StorageError {
    let locked = matches!(&source, sled::Error::Io(e)
        if e.kind() == std::io::ErrorKind::Other
            && e.to_string().contains("could not acquire lock"));
    if locked {
        StorageError::Locked {
            path: path.to_path_buf(),
            source,
        }
    } else {
        StorageError::Open {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn sled_error(op: &'static str) -> impl Fn(sled::Error) -> StorageError {
    move |source| StorageError::Sled { op, source }
}

fn encode(version: u64, value: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER + value.len());
    record.extend_from_slice(&version.to_be_bytes());
    record.extend_from_slice(value);
    record
}

/// Splits a stored record into its version and value.
///
/// The value is copied out into `Bytes`: the record is an `IVec` that may be inline or share
/// sled's page, and copying keeps callers independent of sled's types.
fn decode(key: &[u8], record: &[u8]) -> Result<Versioned, StorageError> {
    let Some((header, value)) = record.split_first_chunk::<HEADER>() else {
        return Err(StorageError::Corrupt { key_len: key.len() });
    };
    Ok(Versioned {
        version: u64::from_be_bytes(*header),
        value: Bytes::copy_from_slice(value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `path`, retrying briefly while a just-dropped handle's background threads still
    /// hold the lock (sled releases it when its last internal reference goes away).
    pub(crate) fn reopen(path: &Path) -> SledStorage {
        for _ in 0..200 {
            match SledStorage::open(path, None) {
                Err(StorageError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
        panic!("data dir still locked after 2s");
    }

    #[test]
    fn second_open_is_locked_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStorage::open(dir.path(), None).unwrap();
        let err = SledStorage::open(dir.path(), None).unwrap_err();
        match &err {
            StorageError::Locked { path, .. } => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "data dir {} is in use by another process",
                dir.path().display()
            )
        );
        drop(first);
        // Once released, the directory opens again.
        reopen(dir.path());
    }

    #[test]
    fn open_on_a_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        match SledStorage::open(&file, None) {
            Err(StorageError::Open { path, .. }) => assert_eq!(path, file),
            other => panic!("expected Open error, got {other:?}"),
        }
    }

    #[test]
    fn a_data_dir_of_the_old_layout_is_refused_not_read_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            db.insert(b"users/alice", &[0, 0, 0, 0, 0, 0, 0, 1, b'x'][..])
                .unwrap();
            db.flush().unwrap();
        }
        let err = loop {
            match SledStorage::open(dir.path(), None) {
                Err(StorageError::Locked { .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => break other.unwrap_err(),
            }
        };
        assert!(matches!(err, StorageError::OldLayout { .. }), "{err:?}");
        assert!(err.to_string().contains("older skv"), "{err}");
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path(), None).unwrap();
        let ks = s.keyspace("shard-1").unwrap();
        let tree = s.db.open_tree("ks/shard-1").unwrap();
        tree.insert(b"secret-key", &b"short"[..]).unwrap();
        ks.put(b"secret-kez", 1, b"fine").unwrap();
        let corrupt = |r: Result<_, StorageError>| match r {
            Err(StorageError::Corrupt { key_len }) => assert_eq!(key_len, 10),
            other => panic!("expected Corrupt, got {other:?}"),
        };
        corrupt(ks.get(b"secret-key").map(|_| ()));
        corrupt(ks.scan(b"secret", None, 10).map(|_| ()));
        // The message names neither key nor value.
        let msg = ks.get(b"secret-key").unwrap_err().to_string();
        assert!(!msg.contains("secret") && !msg.contains("short"), "{msg}");
        // A put repairs the record; delete works either way.
        ks.put(b"secret-key", 2, b"repaired").unwrap();
        assert_eq!(ks.get(b"secret-key").unwrap().unwrap().version, 2);
        assert!(ks.delete(b"secret-key", 3).unwrap());
        // A record of exactly the header is an empty value, not corruption.
        tree.insert(b"k", &7u64.to_be_bytes()[..]).unwrap();
        assert_eq!(
            ks.get(b"k").unwrap(),
            Some(Versioned {
                version: 7,
                value: Bytes::new()
            })
        );
    }

    #[test]
    fn record_layout_is_big_endian_version_then_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path(), None).unwrap();
        s.keyspace("shard-3")
            .unwrap()
            .put(b"k", 42, b"value")
            .unwrap();
        let raw =
            s.db.open_tree("ks/shard-3")
                .unwrap()
                .get(b"k")
                .unwrap()
                .unwrap();
        assert_eq!(&raw[..8], &42u64.to_be_bytes());
        assert_eq!(&raw[8..], b"value");
        let applied = s.meta.get(b"applied/shard-3").unwrap().unwrap();
        assert_eq!(&applied[..], &42u64.to_be_bytes());
    }

    #[test]
    fn data_and_applied_versions_survive_reopen_exactly() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path(), Some(500)).unwrap();
            let one = s.keyspace("shard-1").unwrap();
            let two = s.keyspace("shard-2").unwrap();
            one.put(b"a", 1, b"1").unwrap();
            one.put(b"b", 2, b"2").unwrap();
            assert!(one.delete(b"a", 3).unwrap());
            two.put(b"moved", 500, b"imported").unwrap();
            two.put(b"older", 7, b"imported below").unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        let one = s.keyspace("shard-1").unwrap();
        let two = s.keyspace("shard-2").unwrap();
        assert_eq!(one.get(b"a").unwrap(), None);
        assert_eq!(one.get(b"b").unwrap().unwrap().version, 2);
        // No jump after a restart: the caller continues at applied + 1.
        assert_eq!(one.applied(), 3);
        assert_eq!(two.applied(), 500);
        assert_eq!(two.get(b"older").unwrap().unwrap().version, 7);
        // The meta tree never shows up in scans.
        assert_eq!(two.scan(b"", None, 100).unwrap().entries.len(), 2);
    }
}
