//! Storage: the node's versioned key-value engines.
//!
//! This module owns everything below the shard: the [`Storage`] trait the rest of the node
//! programs against, its two engines ([`SledStorage`] on disk, [`MemoryStorage`] for tests and
//! benchmarks), the version rules both engines share, and [`GroupCommit`], which turns many
//! concurrent "make my write durable" requests into one disk flush.
//!
//! # Versions
//!
//! Every write (a `put` or a successful `cas`) gives its key a fresh version: a `u64 > 0`
//! strictly greater than any version that key ever had, including versions it had before it
//! was deleted and re-created. Both engines draw versions from one node-wide monotonic counter,
//! so a client holding a stale version can never win a compare-and-swap by accident (no ABA),
//! and version `0` is free to mean "absent" in [`Storage::cas`] and [`CasOutcome::Conflict`].
//!
//! Versions are only comparable for the same key on the same node: they are not contiguous,
//! and the sled engine jumps ahead after a restart.

mod group_commit;
mod memory;
mod null;
mod sled;

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

pub use self::group_commit::GroupCommit;
pub use self::memory::MemoryStorage;
pub use self::null::NullStorage;
pub use self::sled::SledStorage;

/// A stored value with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The version the last write gave the key (always > 0).
    pub version: u64,
    /// The value bytes.
    pub value: Bytes,
}

/// One key-value pair returned by [`Storage::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key.
    pub key: Bytes,
    /// The version the last write gave the key (always > 0).
    pub version: u64,
    /// The value bytes.
    pub value: Bytes,
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The expectation held and the value was written with this new version.
    Written {
        /// The version the write gave the key.
        version: u64,
    },
    /// The key's version was not the expected one; nothing was written.
    Conflict {
        /// The key's version at the time of the check; 0 means the key was absent.
        current: u64,
    },
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Matching entries in ascending byte order of their keys.
    pub entries: Vec<Entry>,
    /// Whether further keys with the prefix exist after the last entry (or after `after` when
    /// the page is empty): pass the last key as `after` to continue.
    pub more: bool,
}

/// A versioned key-value engine.
///
/// Implementations are shared by every connection of the node, hence `Send + Sync`; all
/// methods block (sled does disk I/O), so async callers should keep them short or use
/// `spawn_blocking` for large scans.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Reads a key's value and version; `None` when the key is absent.
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError>;

    /// Unconditional write; returns the new version.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StorageError>;

    /// Removes a key; returns whether the key existed.
    fn delete(&self, key: &[u8]) -> Result<bool, StorageError>;

    /// Write only if the current version equals `expect_version` (0 = key must not exist).
    fn cas(
        &self,
        key: &[u8],
        expect_version: u64,
        value: &[u8],
    ) -> Result<CasOutcome, StorageError>;

    /// Keys starting with `prefix`, in byte order, strictly after `after` when given, at most
    /// `limit` entries.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError>;

    /// Make every write acknowledged so far durable on disk (sled: `Db::flush`). Memory
    /// engine: no-op.
    fn flush(&self) -> Result<(), StorageError>;

    /// Store `value` under `key` with exactly `version`, replacing whatever is there: a key
    /// copied from another node while its slot moves here. Every later write on this node then
    /// gets a version greater than `version`, so versions keep growing per key across the move
    /// and a compare-and-swap against a version read on the old node still works.
    fn import(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError>;
}

/// Why a storage operation failed.
///
/// Messages never contain key or value bytes: keys and values may be secrets, and these
/// errors end up in logs. Where a lower-level error caused the failure it is reachable through
/// [`std::error::Error::source`] rather than repeated in the message, so print the chain
/// (`{:#}` with anyhow) to see it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The data directory could not be opened or recovered (permissions, disk error, not a
    /// sled database, ...).
    #[error("cannot open data dir {}", path.display())]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: ::sled::Error,
    },
    /// Another process, or another open handle in this process, holds the data directory's
    /// exclusive lock.
    #[error("data dir {} is in use by another process", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
        /// What sled reported when it failed to take the lock.
        #[source]
        source: ::sled::Error,
    },
    /// The sled engine failed while performing `op` (an I/O error or a sled-level failure).
    #[error("storage {op} failed")]
    Sled {
        /// The operation that failed: "get", "put", "delete", "cas", "scan", "flush" or
        /// "generate version".
        op: &'static str,
        /// What sled reported.
        #[source]
        source: ::sled::Error,
    },
    /// A stored record is too short to hold its 8-byte version header.
    #[error("corrupt record: stored value for a {key_len}-byte key has no version header")]
    Corrupt {
        /// Length of the affected key (the key itself may be secret).
        key_len: usize,
    },
    /// The group flush that covered this write failed, so the write may not be durable. Later
    /// flushes retry for later writers.
    #[error("durable flush failed")]
    FlushFailed {
        /// The flush error, shared by every writer of the failed round.
        #[source]
        source: Arc<StorageError>,
    },
    /// The group-commit flusher has stopped (shut down, or its flush panicked), so durability
    /// can no longer be confirmed.
    #[error("group-commit flusher has stopped")]
    Closed,
}

/// The smallest key greater than every key starting with `prefix`, or `None` when no such key
/// exists (the prefix is empty or all `0xff`, so the range is unbounded above).
///
/// Dropping trailing `0xff` bytes before incrementing is what makes a prefix ending in `0xff`
/// work: the successor of `[0x01, 0xff]` is `[0x02]`, not `[0x01, 0x00]` with a carry.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key range in the form both engines' range iterators accept.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The key range a scan must visit, or `None` when it is empty.
///
/// Both engines panic or misbehave on inverted ranges (`BTreeMap::range` panics), so an empty
/// range is detected here rather than passed down.
fn scan_range(prefix: &[u8], after: Option<&[u8]>) -> Option<KeyRange> {
    let start = match after {
        // Every key with the prefix is >= prefix, so an `after` below the prefix excludes
        // nothing and the scan starts at the prefix itself.
        Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
        _ => Bound::Included(prefix.to_vec()),
    };
    let end = match prefix_end(prefix) {
        Some(end) => {
            let start_key = match &start {
                Bound::Included(k) | Bound::Excluded(k) => k,
                Bound::Unbounded => unreachable!("scan start is always bounded"),
            };
            if *start_key >= end {
                return None;
            }
            Bound::Excluded(end)
        }
        None => Bound::Unbounded,
    };
    Some((start, end))
}

/// Builds a page from an ordered iterator of matching entries: take `limit` of them and peek
/// one more to learn whether the page is the last.
fn collect_page<I>(iter: I, limit: usize) -> Result<ScanPage, StorageError>
where
    I: Iterator<Item = Result<Entry, StorageError>>,
{
    let mut entries = Vec::new();
    let mut more = false;
    for item in iter {
        let entry = item?;
        if entries.len() == limit {
            more = true;
            break;
        }
        entries.push(entry);
    }
    Ok(ScanPage { entries, more })
}

/// The behaviour every engine must share, run against each engine by `engine_suite!`.
#[cfg(test)]
mod suite {
    use super::*;

    fn v(storage: &dyn Storage, key: &[u8]) -> u64 {
        storage.get(key).unwrap().expect("key present").version
    }

    fn keys(page: &ScanPage) -> Vec<Vec<u8>> {
        page.entries.iter().map(|e| e.key.to_vec()).collect()
    }

    pub(super) fn get_put_delete(s: &dyn Storage) {
        assert_eq!(s.get(b"a").unwrap(), None);
        let v1 = s.put(b"a", b"one").unwrap();
        assert!(v1 > 0);
        assert_eq!(
            s.get(b"a").unwrap(),
            Some(Versioned {
                version: v1,
                value: Bytes::from_static(b"one")
            })
        );
        let v2 = s.put(b"a", b"two").unwrap();
        assert!(v2 > v1);
        assert_eq!(s.get(b"a").unwrap().unwrap().value, &b"two"[..]);
        assert!(s.delete(b"a").unwrap());
        assert!(!s.delete(b"a").unwrap());
        assert_eq!(s.get(b"a").unwrap(), None);
        // Empty values are values, not absence.
        let v3 = s.put(b"a", b"").unwrap();
        assert_eq!(
            s.get(b"a").unwrap(),
            Some(Versioned {
                version: v3,
                value: Bytes::new()
            })
        );
        s.flush().unwrap();
    }

    pub(super) fn cas_semantics(s: &dyn Storage) {
        // 0 = must not exist: succeeds on an absent key.
        let v1 = match s.cas(b"k", 0, b"first").unwrap() {
            CasOutcome::Written { version } => version,
            other => panic!("expected write, got {other:?}"),
        };
        assert!(v1 > 0);
        assert_eq!(v(s, b"k"), v1);
        // 0 on a present key conflicts and reports the current version.
        assert_eq!(
            s.cas(b"k", 0, b"again").unwrap(),
            CasOutcome::Conflict { current: v1 }
        );
        // Wrong version conflicts, nothing written.
        assert_eq!(
            s.cas(b"k", v1 + 1000, b"x").unwrap(),
            CasOutcome::Conflict { current: v1 }
        );
        assert_eq!(s.get(b"k").unwrap().unwrap().value, &b"first"[..]);
        // Right version writes with a greater version.
        let v2 = match s.cas(b"k", v1, b"second").unwrap() {
            CasOutcome::Written { version } => version,
            other => panic!("expected write, got {other:?}"),
        };
        assert!(v2 > v1);
        assert_eq!(s.get(b"k").unwrap().unwrap().value, &b"second"[..]);
        // The old version is now stale.
        assert_eq!(
            s.cas(b"k", v1, b"stale").unwrap(),
            CasOutcome::Conflict { current: v2 }
        );
        // A non-zero expectation on an absent key conflicts with current 0.
        assert_eq!(
            s.cas(b"absent", v2, b"x").unwrap(),
            CasOutcome::Conflict { current: 0 }
        );
        assert_eq!(s.get(b"absent").unwrap(), None);
    }

    pub(super) fn versions_grow_across_delete(s: &dyn Storage) {
        let mut last = 0;
        let mut seen = Vec::new();
        for round in 0..5u8 {
            let put = s.put(b"key", &[round]).unwrap();
            assert!(put > last, "put version {put} not above {last}");
            seen.push(put);
            let CasOutcome::Written { version } = s.cas(b"key", put, &[round, 1]).unwrap() else {
                panic!("cas with the current version must write");
            };
            assert!(version > put);
            seen.push(version);
            last = version;
            assert!(s.delete(b"key").unwrap());
            // Re-create through cas(0): still a brand-new, greater version.
            let CasOutcome::Written { version } = s.cas(b"key", 0, b"re").unwrap() else {
                panic!("cas(0) on an absent key must write");
            };
            assert!(version > last);
            last = version;
            // No ABA: every stale version from before the delete fails.
            for &stale in &seen {
                assert_eq!(
                    s.cas(b"key", stale, b"aba").unwrap(),
                    CasOutcome::Conflict { current: last }
                );
            }
            seen.push(version);
            assert!(s.delete(b"key").unwrap());
        }
        // Versions come from one node-wide counter: a different key also moves forward.
        assert!(s.put(b"other", b"x").unwrap() > last);
    }

    pub(super) fn scan_prefix_order_limit_after(s: &dyn Storage) {
        for k in [
            &b"user/carol"[..],
            b"user/alice",
            b"user/bob",
            b"user",
            b"usera",
            b"use",
            b"admin/x",
            b"zzz",
        ] {
            s.put(k, k).unwrap();
        }
        let all = s.scan(b"user/", None, 100).unwrap();
        assert_eq!(
            keys(&all),
            vec![
                b"user/alice".to_vec(),
                b"user/bob".to_vec(),
                b"user/carol".to_vec()
            ]
        );
        assert!(!all.more);
        for e in &all.entries {
            assert_eq!(e.value, e.key);
            assert_eq!(e.version, v(s, &e.key));
        }
        // Limit and more.
        let first = s.scan(b"user/", None, 2).unwrap();
        assert_eq!(
            keys(&first),
            vec![b"user/alice".to_vec(), b"user/bob".to_vec()]
        );
        assert!(first.more);
        // Continue strictly after the last key.
        let rest = s.scan(b"user/", Some(b"user/bob"), 2).unwrap();
        assert_eq!(keys(&rest), vec![b"user/carol".to_vec()]);
        assert!(!rest.more);
        // Exact limit: no more.
        let exact = s.scan(b"user/", None, 3).unwrap();
        assert_eq!(exact.entries.len(), 3);
        assert!(!exact.more);
        // `after` need not be a stored key.
        let mid = s.scan(b"user/", Some(b"user/b"), 10).unwrap();
        assert_eq!(
            keys(&mid),
            vec![b"user/bob".to_vec(), b"user/carol".to_vec()]
        );
        // `after` below the prefix excludes nothing; above the prefix range yields nothing.
        assert_eq!(s.scan(b"user/", Some(b"a"), 10).unwrap().entries.len(), 3);
        assert_eq!(
            s.scan(b"user/", Some(b"zz"), 10).unwrap(),
            ScanPage::default()
        );
        assert_eq!(
            s.scan(b"user/", Some(b"user/carol"), 10).unwrap(),
            ScanPage::default()
        );
        // Limit 0: no entries, but says whether any exist.
        let zero = s.scan(b"user/", None, 0).unwrap();
        assert!(zero.entries.is_empty());
        assert!(zero.more);
        assert!(!s.scan(b"nope", None, 0).unwrap().more);
        // The prefix itself is a key with that prefix.
        assert_eq!(
            keys(&s.scan(b"user", None, 10).unwrap()),
            vec![
                b"user".to_vec(),
                b"user/alice".to_vec(),
                b"user/bob".to_vec(),
                b"user/carol".to_vec(),
                b"usera".to_vec()
            ]
        );
        // Empty prefix: everything, in byte order.
        let everything = s.scan(b"", None, 100).unwrap();
        let mut sorted = keys(&everything);
        sorted.sort();
        assert_eq!(keys(&everything), sorted);
        assert_eq!(everything.entries.len(), 8);
        // Huge limits must not overflow.
        assert_eq!(s.scan(b"", None, usize::MAX).unwrap().entries.len(), 8);
    }

    pub(super) fn binary_and_empty_keys(s: &dyn Storage) {
        let empty_v = s.put(b"", b"empty key").unwrap();
        assert_eq!(s.get(b"").unwrap().unwrap().version, empty_v);
        let binary: [&[u8]; 7] = [
            &[0x00],
            &[0x00, 0x00],
            &[0x00, 0xff],
            &[0xff],
            &[0xff, 0x00],
            &[0xff, 0xff],
            &[0xff, 0xff, 0xff],
        ];
        for k in binary {
            s.put(k, &[0x00, 0xff, 0x00]).unwrap();
        }
        for k in binary {
            assert_eq!(s.get(k).unwrap().unwrap().value, &[0x00, 0xff, 0x00][..]);
        }
        let all = s.scan(b"", None, 100).unwrap();
        let mut expected: Vec<Vec<u8>> = binary.iter().map(|k| k.to_vec()).collect();
        expected.push(Vec::new());
        expected.sort();
        assert_eq!(keys(&all), expected);
        // Empty key is first and `after: Some(b"")` skips exactly it.
        assert_eq!(all.entries[0].key, Bytes::new());
        let after_empty = s.scan(b"", Some(b""), 100).unwrap();
        assert_eq!(keys(&after_empty), expected[1..].to_vec());
        // Prefix ending in 0xff: no carry into a wrong range.
        assert_eq!(
            keys(&s.scan(&[0xff], None, 100).unwrap()),
            vec![
                vec![0xff],
                vec![0xff, 0x00],
                vec![0xff, 0xff],
                vec![0xff, 0xff, 0xff]
            ]
        );
        assert_eq!(
            keys(&s.scan(&[0xff, 0xff], None, 100).unwrap()),
            vec![vec![0xff, 0xff], vec![0xff, 0xff, 0xff]]
        );
        assert_eq!(
            keys(&s.scan(&[0x00, 0xff], None, 100).unwrap()),
            vec![vec![0x00, 0xff]]
        );
        assert_eq!(
            keys(&s.scan(&[0x00], Some(&[0x00]), 100).unwrap()),
            vec![vec![0x00, 0x00], vec![0x00, 0xff]]
        );
        let page = s.scan(&[0xff], Some(&[0xff, 0x00]), 1).unwrap();
        assert_eq!(keys(&page), vec![vec![0xff, 0xff]]);
        assert!(page.more);
        assert_eq!(
            s.scan(&[0xff, 0xff, 0xff], Some(&[0xff, 0xff, 0xff]), 100)
                .unwrap(),
            ScanPage::default()
        );
        // Deleting the empty key works like any other.
        assert!(s.delete(b"").unwrap());
        assert_eq!(s.get(b"").unwrap(), None);
    }

    pub(super) fn concurrent_writers_never_go_backwards(s: Arc<dyn Storage>) {
        const THREADS: usize = 4;
        const WRITES: usize = 500;
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut mine = Vec::with_capacity(WRITES);
                    for i in 0..WRITES {
                        let version = if i % 2 == 0 {
                            s.put(b"hot", &[t as u8]).unwrap()
                        } else {
                            let current = s.get(b"hot").unwrap().map_or(0, |v| v.version);
                            match s.cas(b"hot", current, &[t as u8]).unwrap() {
                                CasOutcome::Written { version } => version,
                                // Lost the race: the key moved forward, never backward.
                                CasOutcome::Conflict { current: now } => {
                                    assert!(now > current);
                                    continue;
                                }
                            }
                        };
                        mine.push(version);
                    }
                    mine
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let max = *all.iter().max().unwrap();
        // The last successful write is the one stored, and it must carry the largest version
        // handed out: a write that read an older record could not have replaced a newer one.
        assert_eq!(s.get(b"hot").unwrap().unwrap().version, max);
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "a version was handed out twice");
    }
}

/// Instantiates the shared suite for one engine: `$make` builds a fresh engine and returns
/// `(guard, Arc<dyn Storage>)`, where the guard keeps its resources (a temp dir) alive.
#[cfg(test)]
macro_rules! engine_suite {
    ($engine:ident, $make:expr) => {
        mod $engine {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn get_put_delete() {
                let (_guard, s) = $make;
                suite::get_put_delete(&*s);
            }

            #[test]
            fn cas_semantics() {
                let (_guard, s) = $make;
                suite::cas_semantics(&*s);
            }

            #[test]
            fn versions_grow_across_delete() {
                let (_guard, s) = $make;
                suite::versions_grow_across_delete(&*s);
            }

            #[test]
            fn scan_prefix_order_limit_after() {
                let (_guard, s) = $make;
                suite::scan_prefix_order_limit_after(&*s);
            }

            #[test]
            fn binary_and_empty_keys() {
                let (_guard, s) = $make;
                suite::binary_and_empty_keys(&*s);
            }

            #[test]
            fn concurrent_writers_never_go_backwards() {
                let (_guard, s) = $make;
                suite::concurrent_writers_never_go_backwards(s);
            }
        }
    };
}

#[cfg(test)]
engine_suite!(memory_engine, {
    let s: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    ((), s)
});

#[cfg(test)]
engine_suite!(sled_engine, {
    let dir = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(SledStorage::open(dir.path(), None).unwrap());
    (dir, s)
});

#[cfg(test)]
mod helper_tests {
    use super::*;

    #[test]
    fn prefix_end_handles_ff() {
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[0x01, 0xff]), Some(vec![0x02]));
        assert_eq!(prefix_end(&[0x01, 0x02]), Some(vec![0x01, 0x03]));
        assert_eq!(prefix_end(&[0x00]), Some(vec![0x01]));
    }

    #[test]
    fn scan_range_empty_cases() {
        assert!(scan_range(b"a", Some(b"b")).is_none());
        assert!(scan_range(b"a", Some(b"a\xff\xff")).is_some());
        assert_eq!(
            scan_range(b"a", Some(b"0")),
            Some((
                Bound::Included(b"a".to_vec()),
                Bound::Excluded(b"b".to_vec())
            ))
        );
        assert_eq!(
            scan_range(b"\xff", Some(b"\xff\x01")),
            Some((Bound::Excluded(b"\xff\x01".to_vec()), Bound::Unbounded))
        );
    }

    #[test]
    fn errors_do_not_leak_keys() {
        let e = StorageError::Corrupt { key_len: 6 };
        assert_eq!(
            e.to_string(),
            "corrupt record: stored value for a 6-byte key has no version header"
        );
    }
}
