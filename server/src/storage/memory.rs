//! The in-memory engine: `BTreeMap`s behind locks, for tests, benchmarks that want to measure
//! everything but the disk, and nodes started without a data dir.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;

use super::{
    collect_page, scan_range, Keyspace, ScanBounds, ScanPage, Storage, StorageError, Versioned,
};

/// A [`Storage`] that keeps everything in memory and loses it on drop.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    spaces: Mutex<HashMap<String, Arc<MemoryKeyspace>>>,
}

/// One keyspace of a [`MemoryStorage`].
#[derive(Debug, Default)]
struct MemoryKeyspace {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<Vec<u8>, Versioned>,
    applied: u64,
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for MemoryStorage {
    fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StorageError> {
        let mut spaces = self.spaces.lock().unwrap_or_else(PoisonError::into_inner);
        let space = spaces.entry(name.to_owned()).or_default().clone();
        Ok(space)
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl MemoryKeyspace {
    // A panic while holding the lock cannot leave the map half-updated (every mutation is a
    // single `insert`/`remove` plus a `max`), so a poisoned lock is safe to keep using.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Keyspace for MemoryKeyspace {
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        Ok(self.read().map.get(key).cloned())
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
        let inner = self.read();
        let iter = inner.map.range(range).map(Ok);
        collect_page(iter, bounds, |_, v: &Versioned, keys_only| {
            Ok(Versioned {
                version: v.version,
                value: if keys_only {
                    Bytes::new()
                } else {
                    v.value.clone()
                },
            })
        })
    }

    fn put(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError> {
        let mut inner = self.write();
        inner.applied = inner.applied.max(version);
        inner.map.insert(
            key.to_vec(),
            Versioned {
                version,
                value: Bytes::copy_from_slice(value),
            },
        );
        Ok(())
    }

    fn delete(&self, key: &[u8], version: u64) -> Result<bool, StorageError> {
        let mut inner = self.write();
        inner.applied = inner.applied.max(version);
        Ok(inner.map.remove(key).is_some())
    }

    fn applied(&self) -> u64 {
        self.read().applied
    }
}
