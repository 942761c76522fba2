//! The null engine: a [`Storage`] that stores nothing, for the benchmark ladder's "null" rung
//! (framing, TLS and the connection loop with no storage and no auth: the ceiling of the
//! network stack on a machine).
//!
//! So that a GET answers with the same bytes on the wire as on a real rung, the engine keeps
//! the last value written (one slot, whatever the key or keyspace) and returns it for every
//! key. Its applied version stays 0, so every write is numbered 1.

use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::{Keyspace, ScanBounds, ScanPage, Storage, StorageError, Versioned};

/// Writes are acknowledged and dropped; reads return the last value written.
#[derive(Debug, Default)]
pub struct NullStorage {
    space: Arc<NullKeyspace>,
}

#[derive(Debug, Default)]
struct NullKeyspace {
    last: RwLock<Option<Bytes>>,
}

impl NullStorage {
    /// A null store with no value yet (GET answers not-found until the first write).
    pub fn new() -> Self {
        Self::default()
    }
}

impl Storage for NullStorage {
    fn keyspace(&self, _name: &str) -> Result<Arc<dyn Keyspace>, StorageError> {
        Ok(self.space.clone())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

impl Keyspace for NullKeyspace {
    fn get(&self, _key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        let last = self.last.read().unwrap_or_else(PoisonError::into_inner);
        Ok(last.clone().map(|value| Versioned { version: 1, value }))
    }

    fn scan_within(
        &self,
        _prefix: &[u8],
        _after: Option<&[u8]>,
        _bounds: &ScanBounds<'_>,
    ) -> Result<ScanPage, StorageError> {
        Ok(ScanPage::default())
    }

    fn put(&self, _key: &[u8], _version: u64, value: &[u8]) -> Result<(), StorageError> {
        *self.last.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Bytes::copy_from_slice(value));
        Ok(())
    }

    fn delete(&self, _key: &[u8], _version: u64) -> Result<bool, StorageError> {
        Ok(false)
    }

    fn applied(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_get_with_the_last_value_and_stores_nothing() {
        let null = NullStorage::new();
        let ks = null.keyspace("shard-1").unwrap();
        assert_eq!(ks.get(b"a").unwrap(), None);
        ks.put(b"a", 1, b"xyz").unwrap();
        let got = null
            .keyspace("shard-2")
            .unwrap()
            .get(b"other")
            .unwrap()
            .unwrap();
        assert_eq!(&got.value[..], b"xyz");
        assert!(ks.scan(b"", None, 10).unwrap().entries.is_empty());
        assert!(!ks.delete(b"a", 2).unwrap());
        assert_eq!(ks.applied(), 0);
    }
}
