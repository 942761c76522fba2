//! The in-memory engine: a `BTreeMap` behind a lock, for tests, benchmarks that want to
//! measure everything but the disk, and nodes started without a data dir.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

use bytes::Bytes;

use super::{
    collect_page, scan_range, CasOutcome, Entry, ScanPage, Storage, StorageError, Versioned,
};

/// A [`Storage`] that keeps everything in memory and loses it on drop.
///
/// Versions come from a node-wide counter that is only advanced under the write lock, so the
/// lock alone makes every key's versions strictly increasing, across deletes too.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<Vec<u8>, Versioned>,
    /// The last version handed out; a plain `u64` because it only changes under the write
    /// lock, and never reset so deleted keys cannot get an old version back.
    last_version: u64,
}

impl Inner {
    fn write(&mut self, key: &[u8], value: &[u8]) -> u64 {
        self.last_version += 1;
        let version = self.last_version;
        self.map.insert(
            key.to_vec(),
            Versioned {
                version,
                value: Bytes::copy_from_slice(value),
            },
        );
        version
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the map half-updated (every mutation is a
    // single `insert`/`remove`), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for MemoryStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        Ok(self.read().map.get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StorageError> {
        Ok(self.write().write(key, value))
    }

    fn delete(&self, key: &[u8]) -> Result<bool, StorageError> {
        Ok(self.write().map.remove(key).is_some())
    }

    fn cas(
        &self,
        key: &[u8],
        expect_version: u64,
        value: &[u8],
    ) -> Result<CasOutcome, StorageError> {
        let mut inner = self.write();
        let current = inner.map.get(key).map_or(0, |v| v.version);
        if current != expect_version {
            return Ok(CasOutcome::Conflict { current });
        }
        Ok(CasOutcome::Written {
            version: inner.write(key, value),
        })
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
        let inner = self.read();
        let iter = inner.map.range(range).map(|(key, v)| {
            Ok(Entry {
                key: Bytes::copy_from_slice(key),
                version: v.version,
                value: v.value.clone(),
            })
        });
        collect_page(iter, limit)
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn import(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError> {
        let mut inner = self.write();
        inner.last_version = inner.last_version.max(version);
        inner.map.insert(
            key.to_vec(),
            Versioned {
                version,
                value: Bytes::copy_from_slice(value),
            },
        );
        Ok(())
    }
}
