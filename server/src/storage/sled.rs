//! The sled engine: the node's on-disk [`Storage`].
//!
//! Each record is stored under its key as an 8-byte big-endian version followed by the value
//! bytes. Versions come from sled's `Db::generate_id`, which is node-wide, monotonic and
//! persisted so that it never hands out an id twice, even after a crash, plus a persisted
//! offset that imports raise (see [`Storage::import`]): sled's id generator cannot be moved
//! forward, so the offset is how keys copied in from another node keep growing versions here.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use sled::IVec;

use super::{
    collect_page, scan_range, CasOutcome, Entry, ScanPage, Storage, StorageError, Versioned,
};

/// Length of the version header in front of every stored value.
const HEADER: usize = 8;

/// A [`Storage`] backed by a sled database in a data directory.
///
/// sled takes an exclusive lock on the directory, so one directory serves one open
/// `SledStorage` at a time; share it through `Arc` instead of opening it twice.
#[derive(Debug)]
pub struct SledStorage {
    db: sled::Db,
    /// Node metadata, apart from the keyspace so scans never see it.
    meta: sled::Tree,
    /// Added to every generated id; only ever grows (see [`SledStorage::raise_floor`]).
    version_offset: AtomicU64,
    path: PathBuf,
}

/// Key of the version offset in the meta tree.
const VERSION_OFFSET_KEY: &[u8] = b"version_offset";

impl SledStorage {
    /// Opens (creating if needed) the database in `path`.
    ///
    /// `flush_every_ms` is sled's background flush period: `Some(n)` for the node's async
    /// durability mode (writes reach disk within about `n` ms), `None` when every durable
    /// write goes through an explicit [`Storage::flush`] (sync mode, via `GroupCommit`).
    ///
    /// Fails with [`StorageError::Locked`] when the directory is already open, in this process
    /// or another.
    pub fn open(path: &Path, flush_every_ms: Option<u64>) -> Result<Self, StorageError> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(flush_every_ms)
            .open()
            .map_err(|source| open_error(path, source))?;
        let meta = db
            .open_tree("skv-meta")
            .map_err(|source| open_error(path, source))?;
        let offset = match meta
            .get(VERSION_OFFSET_KEY)
            .map_err(|source| open_error(path, source))?
        {
            Some(raw) => u64::from_be_bytes(
                raw.as_ref()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt { key_len: 0 })?,
            ),
            None => 0,
        };
        Ok(Self {
            db,
            meta,
            version_offset: AtomicU64::new(offset),
            path: path.to_path_buf(),
        })
    }

    /// Make every version generated from now on greater than `version`.
    ///
    /// The new offset is written to the meta tree before the caller writes the imported
    /// record; sled recovers a prefix of its log, so after a crash the record is never present
    /// without the offset that keeps later versions above it.
    fn raise_floor(&self, version: u64) -> Result<(), StorageError> {
        let next = self.next_version()?;
        if next > version {
            return Ok(());
        }
        let offset = self.version_offset.load(Ordering::Acquire) + (version - next) + 1;
        self.meta
            .insert(VERSION_OFFSET_KEY, &offset.to_be_bytes())
            .map_err(sled_error("import"))?;
        self.version_offset.fetch_max(offset, Ordering::AcqRel);
        Ok(())
    }

    /// The data directory this store was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new version for a write.
    ///
    /// `generate_id` starts at 0, and 0 means "absent" in the CAS protocol, hence the `+ 1`.
    /// It cannot overflow in practice: at a billion writes a second it would take 584 years.
    fn next_version(&self) -> Result<u64, StorageError> {
        let id = self
            .db
            .generate_id()
            .map_err(sled_error("generate version"))?;
        Ok(id + 1 + self.version_offset.load(Ordering::Acquire))
    }

    /// Writes `value` under `key` with a fresh version, but only while the stored record is
    /// still byte-for-byte `current`; `Ok(None)` when it changed underneath us.
    ///
    /// Why the version is generated here, after the caller read `current`, and the write is a
    /// compare-and-swap rather than a plain insert: with a plain insert, writer A could take
    /// id 5, writer B id 6, B insert, then A insert, and the key's version would go from 6
    /// back to 5, letting a client that saw 5 earlier win a later CAS. With this order, the
    /// version in `current` was generated before that record was written, which was before we
    /// read it, which was before we generate our id; the counter being monotonic, our id is
    /// greater. The swap only succeeds if `current` is still what is stored, so the record we
    /// replace is always older than ours. If another writer got in between, the caller
    /// re-reads and retries with a newer id.
    fn swap_in(
        &self,
        op: &'static str,
        key: &[u8],
        current: Option<&IVec>,
        value: &[u8],
    ) -> Result<Option<u64>, StorageError> {
        let version = self.next_version()?;
        let record = encode(version, value);
        match self
            .db
            .compare_and_swap(key, current, Some(record))
            .map_err(sled_error(op))?
        {
            Ok(()) => Ok(Some(version)),
            Err(_changed) => Ok(None),
        }
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

impl Storage for SledStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        match self.db.get(key).map_err(sled_error("get"))? {
            Some(record) => decode(key, &record).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StorageError> {
        loop {
            // A put does not care what the current record holds (a corrupt one is simply
            // replaced), only that it is still the same one when we swap: see `swap_in`.
            let current = self.db.get(key).map_err(sled_error("put"))?;
            if let Some(version) = self.swap_in("put", key, current.as_ref(), value)? {
                return Ok(version);
            }
        }
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        // No version bookkeeping is needed: a re-created key gets a fresh id, which is greater
        // than every id handed out before, including the deleted record's.
        Ok(self.db.remove(key).map_err(sled_error("delete"))?.is_some())
    }

    fn cas(
        &self,
        key: &[u8],
        expect_version: u64,
        value: &[u8],
    ) -> Result<CasOutcome, StorageError> {
        loop {
            let current = self.db.get(key).map_err(sled_error("cas"))?;
            let current_version = match &current {
                Some(record) => decode(key, record)?.version,
                None => 0,
            };
            if current_version != expect_version {
                return Ok(CasOutcome::Conflict {
                    current: current_version,
                });
            }
            // Versions are unique per write, so "the record is byte-for-byte unchanged" is the
            // same as "the version is still the expected one".
            if let Some(version) = self.swap_in("cas", key, current.as_ref(), value)? {
                return Ok(CasOutcome::Written { version });
            }
            // Someone wrote in between; re-read, which will normally report the conflict.
        }
    }

    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        let Some(range) = scan_range(prefix, after) else {
            return Ok(ScanPage::default());
        };
        let iter = self.db.range(range).map(|item| {
            let (key, record) = item.map_err(sled_error("scan"))?;
            let Versioned { version, value } = decode(&key, &record)?;
            Ok(Entry {
                key: Bytes::copy_from_slice(&key),
                version,
                value,
            })
        });
        collect_page(iter, limit)
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.db.flush().map_err(sled_error("flush"))?;
        Ok(())
    }

    fn import(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError> {
        self.raise_floor(version)?;
        self.db
            .insert(key, encode(version, value))
            .map_err(sled_error("import"))?;
        Ok(())
    }
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
    fn corrupt_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStorage::open(dir.path(), None).unwrap();
        s.db.insert(b"secret-key", &b"short"[..]).unwrap();
        s.put(b"secret-kez", b"fine").unwrap();
        let corrupt = |r: Result<_, StorageError>| match r {
            Err(StorageError::Corrupt { key_len }) => assert_eq!(key_len, 10),
            other => panic!("expected Corrupt, got {other:?}"),
        };
        corrupt(s.get(b"secret-key").map(|_| ()));
        corrupt(s.cas(b"secret-key", 0, b"x").map(|_| ()));
        corrupt(s.scan(b"secret", None, 10).map(|_| ()));
        // The message names neither key nor value.
        let msg = s.get(b"secret-key").unwrap_err().to_string();
        assert!(!msg.contains("secret") && !msg.contains("short"), "{msg}");
        // An unconditional put repairs the record; delete works either way.
        let v = s.put(b"secret-key", b"repaired").unwrap();
        assert_eq!(s.get(b"secret-key").unwrap().unwrap().version, v);
        assert!(s.delete(b"secret-key").unwrap());
        // A record of exactly the header is an empty value, not corruption.
        s.db.insert(b"k", &7u64.to_be_bytes()[..]).unwrap();
        assert_eq!(
            s.get(b"k").unwrap(),
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
        let v = s.put(b"k", b"value").unwrap();
        let raw = s.db.get(b"k").unwrap().unwrap();
        assert_eq!(&raw[..8], &v.to_be_bytes());
        assert_eq!(&raw[8..], b"value");
    }

    #[test]
    fn imported_versions_stay_below_later_writes_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStorage::open(dir.path(), None).unwrap();
            s.put(b"local", b"x").unwrap();
            s.import(b"moved", 1_000_000, b"from another node").unwrap();
            assert_eq!(s.get(b"moved").unwrap().unwrap().version, 1_000_000);
            assert!(s.put(b"moved", b"y").unwrap() > 1_000_000);
            // An import below the floor changes nothing about later versions.
            s.import(b"old", 3, b"z").unwrap();
            assert_eq!(s.get(b"old").unwrap().unwrap().version, 3);
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert!(s.put(b"after", b"restart").unwrap() > 1_000_000);
        // The meta tree never shows up in scans.
        let keys: Vec<_> = s
            .scan(b"", None, 100)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys.len(), 4);
    }

    #[test]
    fn data_and_versions_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (v1, v2);
        {
            let s = SledStorage::open(dir.path(), Some(500)).unwrap();
            v1 = s.put(b"a", b"1").unwrap();
            v2 = s.put(b"b", b"2").unwrap();
            s.delete(b"a").unwrap();
            s.flush().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.get(b"a").unwrap(), None);
        assert_eq!(s.get(b"b").unwrap().unwrap().version, v2);
        // The persisted id generator keeps versions moving forward across restarts.
        let v3 = s.put(b"a", b"again").unwrap();
        assert!(v3 > v2 && v3 > v1);
    }
}
