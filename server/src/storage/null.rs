//! The null engine: a [`Storage`] that stores nothing, for the benchmark ladder's "null" rung
//! (framing, TLS and the connection loop with no storage and no auth: the ceiling of the
//! network stack on a machine).
//!
//! So that a GET answers with the same bytes on the wire as on a real rung, the engine keeps
//! the last value written (one slot, whatever the key) and returns it for every key.

use std::sync::{PoisonError, RwLock};

use bytes::Bytes;

use super::{CasOutcome, ScanPage, Storage, StorageError, Versioned};

/// Writes are acknowledged and dropped; reads return the last value written.
#[derive(Debug, Default)]
pub struct NullStorage {
    last: RwLock<Option<Bytes>>,
}

impl NullStorage {
    /// A null store with no value yet (GET answers not-found until the first write).
    pub fn new() -> Self {
        Self::default()
    }

    fn remember(&self, value: &[u8]) {
        *self.last.write().unwrap_or_else(PoisonError::into_inner) =
            Some(Bytes::copy_from_slice(value));
    }
}

impl Storage for NullStorage {
    fn get(&self, _key: &[u8]) -> Result<Option<Versioned>, StorageError> {
        let last = self.last.read().unwrap_or_else(PoisonError::into_inner);
        Ok(last.clone().map(|value| Versioned { version: 1, value }))
    }

    fn put(&self, _key: &[u8], value: &[u8]) -> Result<u64, StorageError> {
        self.remember(value);
        Ok(1)
    }

    fn delete(&self, _key: &[u8]) -> Result<bool, StorageError> {
        Ok(false)
    }

    fn cas(&self, _key: &[u8], _expect: u64, value: &[u8]) -> Result<CasOutcome, StorageError> {
        self.remember(value);
        Ok(CasOutcome::Written { version: 1 })
    }

    fn scan(
        &self,
        _prefix: &[u8],
        _after: Option<&[u8]>,
        _limit: usize,
    ) -> Result<ScanPage, StorageError> {
        Ok(ScanPage::default())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    fn import(&self, _key: &[u8], _version: u64, value: &[u8]) -> Result<(), StorageError> {
        self.remember(value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_get_with_the_last_value_and_stores_nothing() {
        let null = NullStorage::new();
        assert_eq!(null.get(b"a").unwrap(), None);
        assert_eq!(null.put(b"a", b"xyz").unwrap(), 1);
        let got = null.get(b"other").unwrap().unwrap();
        assert_eq!(&got.value[..], b"xyz");
        assert!(null.scan(b"", None, 10).unwrap().entries.is_empty());
        assert!(!null.delete(b"a").unwrap());
    }
}
