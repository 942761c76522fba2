//! Storage: the node's versioned key-value engines.
//!
//! This module owns everything below the shard: the [`Storage`] trait (an engine holding
//! named [`Keyspace`]s, one per shard) the rest of the node programs against, its engines
//! ([`SledStorage`] on disk, [`MemoryStorage`] for tests and benchmarks, [`NullStorage`] for
//! the ladder's null rung), and [`GroupCommit`], which turns many concurrent "make my write
//! durable" requests into one disk flush. It knows nothing of slots, auth, TLS or Raft.
//!
//! # Versions are the caller's
//!
//! Storage does not invent versions: every write is given one by its caller (the shard, which
//! takes it from its own order of writes, and tomorrow from its Raft log index). Two replicas
//! that apply the same writes with the same versions therefore hold the same bytes, and a
//! restart changes nothing about the numbers. A keyspace remembers the largest version any
//! write passed it ([`Keyspace::applied`]), durably and never behind a record that survived a
//! crash, so the shard can continue its sequence after a restart.
//!
//! The rules a caller keeps (the shard does): versions are `> 0` (0 means "absent" in the CAS
//! protocol), and a fresh write uses a version above [`Keyspace::applied`]. A write below it is
//! allowed and is how a key copied from another shard keeps its version (a slot move).

pub mod atrest;
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

/// One key-value pair returned by [`Keyspace::scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key.
    pub key: Bytes,
    /// The version the last write gave the key (always > 0).
    pub version: u64,
    /// The value bytes.
    pub value: Bytes,
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanPage {
    /// Matching entries in ascending byte order of their keys.
    pub entries: Vec<Entry>,
    /// Whether further keys with the prefix exist after the last key looked at (or after
    /// `after` when none was): pass [`ScanPage::last`] as `after` to continue.
    pub more: bool,
    /// The last key looked at, returned or not (see [`ScanBounds::keep`]).
    pub last: Option<Bytes>,
}

/// What one scan page may cost.
pub struct ScanBounds<'a> {
    /// Keys looked at, whether kept or not.
    pub keys: usize,
    /// Bytes of keys and values loaded (the first entry is always loaded).
    pub bytes: usize,
    /// Load only the keys (values empty).
    pub keys_only: bool,
    /// Which keys the caller may see: others are skipped before their value is decoded or
    /// copied.
    pub keep: &'a dyn Fn(&[u8]) -> bool,
}

impl ScanBounds<'static> {
    /// Up to `limit` entries, no byte budget, every key kept.
    pub fn entries(limit: usize) -> ScanBounds<'static> {
        ScanBounds {
            keys: limit,
            bytes: usize::MAX,
            keys_only: false,
            keep: &|_| true,
        }
    }
}

impl std::fmt::Debug for ScanBounds<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanBounds")
            .field("keys", &self.keys)
            .field("bytes", &self.bytes)
            .field("keys_only", &self.keys_only)
            .finish_non_exhaustive()
    }
}

/// A storage engine: named keyspaces that share one durability domain.
///
/// Implementations are shared by every connection of the node, hence `Send + Sync`; all
/// methods block (sled does disk I/O), so async callers keep them short or use
/// `spawn_blocking` for large walks.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// The keyspace `name`, created empty the first time. Every call with the same name
    /// returns a handle on the same data.
    fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StorageError>;

    /// Make every write to every keyspace so far durable on disk (sled: `Db::flush`).
    /// Memory engine: no-op.
    fn flush(&self) -> Result<(), StorageError>;
}

/// One ordered, versioned keyspace (a shard's data).
pub trait Keyspace: Send + Sync + std::fmt::Debug + 'static {
    /// Reads a key's value and version; `None` when the key is absent.
    fn get(&self, key: &[u8]) -> Result<Option<Versioned>, StorageError>;

    /// Keys starting with `prefix`, in byte order, strictly after `after` when given, at most
    /// `limit` entries.
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ScanPage, StorageError> {
        self.scan_within(prefix, after, &ScanBounds::entries(limit))
    }

    /// A scan page under `bounds`: at most `bounds.keys` keys looked at, values loaded only
    /// for keys `bounds.keep` accepts, and no more values once `bounds.bytes` of keys and
    /// values are loaded (at least one entry always, or a page of one huge value could never
    /// advance). What a request may cost is decided here, before anything is copied.
    fn scan_within(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        bounds: &ScanBounds<'_>,
    ) -> Result<ScanPage, StorageError>;

    /// Store `value` under `key` with exactly `version`, replacing whatever is there, and raise
    /// [`Keyspace::applied`] to `version` if it is below.
    fn put(&self, key: &[u8], version: u64, value: &[u8]) -> Result<(), StorageError>;

    /// Remove `key` as the write numbered `version` (raising [`Keyspace::applied`] like
    /// `put`); returns whether the key existed.
    fn delete(&self, key: &[u8], version: u64) -> Result<bool, StorageError>;

    /// The largest version passed to `put` or `delete` so far, 0 for a new keyspace. Durable
    /// no later than the writes it covers: after a crash it is never below the version of a
    /// record that survived.
    fn applied(&self) -> u64;
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
        /// The operation that failed: "open keyspace", "get", "put", "delete", "scan" or
        /// "flush".
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
    /// The data directory holds data in the layout of skv before per-shard keyspaces (keys
    /// in sled's default tree), which this version does not read.
    #[error(
        "data dir {} was written by an older skv (one keyspace per node); export its keys with \
         the older skv and import them, or start from an empty data dir",
        path.display()
    )]
    OldLayout {
        /// The data directory.
        path: PathBuf,
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
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
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

/// Builds a page from an ordered iterator of `(key, raw record)` under `bounds`: `decode`
/// runs only for keys the bounds keep and while the byte budget lasts, and one key past the
/// page is peeked to learn whether it is the last.
fn collect_page<K, R, I, D>(
    iter: I,
    bounds: &ScanBounds<'_>,
    decode: D,
) -> Result<ScanPage, StorageError>
where
    K: AsRef<[u8]>,
    I: Iterator<Item = Result<(K, R), StorageError>>,
    D: Fn(&[u8], R, bool) -> Result<Versioned, StorageError>,
{
    let mut entries = Vec::new();
    let mut more = false;
    let mut last: Option<Bytes> = None;
    let mut loaded = 0usize;
    for (looked, item) in iter.enumerate() {
        let (key, raw) = item?;
        let key = key.as_ref();
        if looked == bounds.keys || (!entries.is_empty() && loaded >= bounds.bytes) {
            more = true;
            break;
        }
        let key = Bytes::copy_from_slice(key);
        if (bounds.keep)(&key) {
            let Versioned { version, value } = decode(&key, raw, bounds.keys_only)?;
            loaded = loaded.saturating_add(key.len() + value.len());
            entries.push(Entry {
                key: key.clone(),
                version,
                value,
            });
        }
        last = Some(key);
    }
    Ok(ScanPage {
        entries,
        more,
        last,
    })
}

/// The behaviour every engine must share, run against each engine by `engine_suite!`.
#[cfg(test)]
mod suite {
    use super::*;

    fn keys(page: &ScanPage) -> Vec<Vec<u8>> {
        page.entries.iter().map(|e| e.key.to_vec()).collect()
    }

    fn got(ks: &dyn Keyspace, key: &[u8]) -> Option<(u64, Vec<u8>)> {
        ks.get(key).unwrap().map(|v| (v.version, v.value.to_vec()))
    }

    pub(super) fn put_get_delete_keep_the_callers_versions(s: &dyn Storage) {
        let ks = s.keyspace("shard-1").unwrap();
        assert_eq!(ks.applied(), 0);
        assert_eq!(ks.get(b"a").unwrap(), None);
        ks.put(b"a", 1, b"one").unwrap();
        assert_eq!(got(&*ks, b"a"), Some((1, b"one".to_vec())));
        assert_eq!(ks.applied(), 1);
        ks.put(b"a", 2, b"two").unwrap();
        assert_eq!(got(&*ks, b"a"), Some((2, b"two".to_vec())));
        assert!(ks.delete(b"a", 3).unwrap());
        assert_eq!(ks.applied(), 3, "a delete is a numbered write too");
        assert!(!ks.delete(b"a", 4).unwrap());
        assert_eq!(ks.get(b"a").unwrap(), None);
        // Empty values are values, not absence.
        ks.put(b"a", 5, b"").unwrap();
        assert_eq!(got(&*ks, b"a"), Some((5, Vec::new())));
        assert_eq!(ks.applied(), 5);
        s.flush().unwrap();
    }

    pub(super) fn imports_below_applied_keep_their_version(s: &dyn Storage) {
        let ks = s.keyspace("shard-7").unwrap();
        ks.put(b"local", 10, b"x").unwrap();
        // A key copied from another shard keeps its version, even one below ours...
        ks.put(b"moved-old", 3, b"from elsewhere").unwrap();
        assert_eq!(
            got(&*ks, b"moved-old"),
            Some((3, b"from elsewhere".to_vec()))
        );
        assert_eq!(ks.applied(), 10, "a lower version never lowers applied");
        // ...and one above raises applied, so the caller's next write goes above it.
        ks.put(b"moved-new", 1_000_000, b"y").unwrap();
        assert_eq!(ks.applied(), 1_000_000);
    }

    pub(super) fn keyspaces_are_independent(s: &dyn Storage) {
        let one = s.keyspace("shard-1").unwrap();
        let two = s.keyspace("shard-2").unwrap();
        one.put(b"k", 1, b"in one").unwrap();
        two.put(b"k", 9, b"in two").unwrap();
        two.put(b"only-two", 10, b"z").unwrap();
        assert_eq!(got(&*one, b"k"), Some((1, b"in one".to_vec())));
        assert_eq!(got(&*two, b"k"), Some((9, b"in two".to_vec())));
        assert_eq!(one.get(b"only-two").unwrap(), None);
        assert_eq!(keys(&one.scan(b"", None, 10).unwrap()), vec![b"k".to_vec()]);
        assert_eq!((one.applied(), two.applied()), (1, 10));
        // A second handle sees the same data and the same applied version.
        let again = s.keyspace("shard-1").unwrap();
        assert_eq!(got(&*again, b"k"), Some((1, b"in one".to_vec())));
        assert_eq!(again.applied(), 1);
        assert!(one.delete(b"k", 2).unwrap());
        assert_eq!(again.get(b"k").unwrap(), None);
    }

    pub(super) fn scan_within_loads_under_its_bounds(s: &dyn Storage) {
        let ks = s.keyspace("bounded").unwrap();
        let big = vec![b'v'; 1000];
        for (i, key) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
            ks.put(*key, i as u64 + 1, &big).unwrap();
        }
        // A budget below one value: one entry, and the page says more follow.
        let one = ks
            .scan_within(
                b"",
                None,
                &ScanBounds {
                    bytes: 10,
                    ..ScanBounds::entries(100)
                },
            )
            .unwrap();
        assert_eq!(keys(&one), vec![b"a".to_vec()]);
        assert!(one.more);
        assert_eq!(one.last.as_deref(), Some(&b"a"[..]));
        // Two values' worth: two entries.
        let two = ks
            .scan_within(
                b"",
                None,
                &ScanBounds {
                    bytes: 2002,
                    ..ScanBounds::entries(100)
                },
            )
            .unwrap();
        assert_eq!(keys(&two), vec![b"a".to_vec(), b"b".to_vec()]);
        // Keys not kept are looked at (and counted against `keys`) but never returned; the
        // page's last key is the last one looked at.
        let keep = |k: &[u8]| k != b"b" && k != b"c";
        let kept = ks
            .scan_within(
                b"",
                None,
                &ScanBounds {
                    keys: 3,
                    bytes: usize::MAX,
                    keys_only: false,
                    keep: &keep,
                },
            )
            .unwrap();
        assert_eq!(keys(&kept), vec![b"a".to_vec()]);
        assert!(kept.more);
        assert_eq!(kept.last.as_deref(), Some(&b"c"[..]));
        // Keys only: no values copied.
        let bare = ks
            .scan_within(
                b"",
                None,
                &ScanBounds {
                    keys_only: true,
                    ..ScanBounds::entries(100)
                },
            )
            .unwrap();
        assert_eq!(bare.entries.len(), 5);
        assert!(bare
            .entries
            .iter()
            .all(|e| e.value.is_empty() && e.version > 0));
    }

    pub(super) fn scan_prefix_order_limit_after(s: &dyn Storage) {
        let ks = s.keyspace("shard-1").unwrap();
        let s = &*ks;
        for (i, k) in [
            &b"user/carol"[..],
            b"user/alice",
            b"user/bob",
            b"user",
            b"usera",
            b"use",
            b"admin/x",
            b"zzz",
        ]
        .into_iter()
        .enumerate()
        {
            s.put(k, i as u64 + 1, k).unwrap();
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
            assert_eq!(Some(e.version), got(s, &e.key).map(|(v, _)| v));
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
        let ks = s.keyspace("shard-1").unwrap();
        let s = &*ks;
        s.put(b"", 1, b"empty key").unwrap();
        assert_eq!(got(s, b""), Some((1, b"empty key".to_vec())));
        let binary: [&[u8]; 7] = [
            &[0x00],
            &[0x00, 0x00],
            &[0x00, 0xff],
            &[0xff],
            &[0xff, 0x00],
            &[0xff, 0xff],
            &[0xff, 0xff, 0xff],
        ];
        for (i, k) in binary.into_iter().enumerate() {
            s.put(k, i as u64 + 2, &[0x00, 0xff, 0x00]).unwrap();
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
        assert!(s.delete(b"", 100).unwrap());
        assert_eq!(s.get(b"").unwrap(), None);
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
            fn put_get_delete_keep_the_callers_versions() {
                let (_guard, s) = $make;
                suite::put_get_delete_keep_the_callers_versions(&*s);
            }

            #[test]
            fn imports_below_applied_keep_their_version() {
                let (_guard, s) = $make;
                suite::imports_below_applied_keep_their_version(&*s);
            }

            #[test]
            fn keyspaces_are_independent() {
                let (_guard, s) = $make;
                suite::keyspaces_are_independent(&*s);
            }

            #[test]
            fn scan_within_loads_under_its_bounds() {
                let (_guard, s) = $make;
                suite::scan_within_loads_under_its_bounds(&*s);
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
