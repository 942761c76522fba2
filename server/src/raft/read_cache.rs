//! The read cache: records the shards of this node were recently asked for, in memory, in
//! front of their sled trees.
//!
//! A GET served from sled walks its page cache, pins an epoch and copies the value out:
//! measured with perf at inflight 16, about 40 % of the node's CPU per request went there
//! (docs/BENCHMARKS.md, "The pipelined path"). A hit here is one keyed hash, the lock of one
//! part of sixteen, a slot of 16 bytes, and the record it points to (see [`Entry`] for why
//! the slot holds nothing else), whose value is copied out.
//!
//! # Bounds
//! One cache serves every shard group of the node (`--read-cache-bytes`). It is split into
//! [`SHARDS`] parts by key hash, each with its share of the budget; an entry is charged its
//! key, its value and [`ENTRY_OVERHEAD`]. A part that would go over its share drops an
//! arbitrary half of its entries first, so filling costs amortized O(1) and memory never
//! exceeds the budget. An entry over a quarter of a part's share is not cached at all: one
//! large value cannot flush the others. Keys are hashed with std's randomly keyed SipHash, so
//! a client that picks its keys cannot make one part's chains long.
//!
//! # Staying exact
//! A cached record must never be older than what a client could already have seen. Each
//! shard group holds a [`GroupCache`] with two counters:
//! - **changes** is odd while the group's state machine is changing its tree. A write batch
//!   calls [`GroupCache::begin`] with the keys it writes before its sled transaction, which
//!   makes the counter odd and removes those keys; dropping the [`Change`] after the
//!   transaction makes it even again.
//! - **epoch** names the group's entries. A change that touches keys it does not list (a
//!   slot move's import or release, a snapshot install) takes a fresh epoch when it begins
//!   ([`GroupCache::begin_whole`]), so every entry of the old one is unreachable at once
//!   (they age out with evictions).
//!
//! A reader looks up `(epoch, key)`. On a miss it reads sled, then fills the entry only if
//! the change counter it saw before the read was even and is unchanged, checked under the
//! part's lock. So while a change runs, none of its keys is in the cache and none can be put
//! there: a fill that checked the counter before the change began inserted before the
//! change's removal (both under the part's lock) and is removed by it. Every reader of those
//! keys during the change reads sled, which is linearizable on its own, so once one reader
//! has seen the new record no later reader can be served the old one. After the change a
//! read fills again, from the tree as it now is. A reader that hits an entry just before a
//! change removes it began before the change could be acknowledged, so serving it is
//! linearizable. (Removing the keys only at the end is not enough: a reader that missed
//! before the change and read the new record from sled during it would be followed by
//! readers hitting an older copy filled just before the change; the unit test
//! `concurrent_reads_and_writes_never_go_back_in_time` caught exactly that.)
//!
//! Cached values are plaintext even when the node encrypts at rest: encryption at rest
//! protects the disk, and the process holds plaintext while it serves a value anyway.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hashbrown::HashTable;

/// Parts of the cache, each with its own lock: enough that the node's runtime threads rarely
/// meet on one.
pub(crate) const SHARDS: usize = 16;

/// What an entry costs beyond its key and value bytes: the map slot, the record's header
/// (epoch, version, key length) and the allocation's own header, rounded up.
pub(crate) const ENTRY_OVERHEAD: usize = 128;

/// Bytes of a record before its key: the epoch and the version (8 bytes each) and the key's
/// length (4), little-endian.
const HEADER: usize = 8 + 8 + 4;

/// One cached record, in one allocation: the header, the key, then the value.
///
/// The table's slot is this pointer alone (16 bytes), not the hash, epoch and version beside
/// it (48 bytes as it was). A hit is two dependent loads, the slot and then the record, and
/// on a working set larger than the caches both miss: `perf annotate` at inflight 16 put
/// about 20 % of a node's CPU on those two loads. Slots a third the size keep the table of
/// a 10,000-key working set (16 parts of 1,024 buckets) at 256 KiB, half a core's 512 KiB
/// L2, where 768 KiB was more than all of it. The gain is small, as the L2 is shared with
/// everything else the node touches: in a cache simulation (docs/BENCHMARKS.md,
/// "Instructions per request") it took 0.15 of 8.07 data misses per GET away, where
/// rewinding the connections' buffers took 0.71. Without the hash in the slot, a lookup
/// compares keys wherever the table's 7-bit tag matches (one slot in 128 by chance besides
/// the key's own, whose record a hit reads anyway), and a table that grows hashes its keys
/// again.
struct Entry {
    record: Box<[u8]>,
}

impl Entry {
    /// `None` for a key whose length does not fit the header (never a real one: frames are
    /// far smaller).
    fn new(epoch: u64, version: u64, key: &[u8], value: &[u8]) -> Option<Entry> {
        let key_len = u32::try_from(key.len()).ok()?;
        let mut record = Vec::with_capacity(HEADER + key.len() + value.len());
        record.extend_from_slice(&epoch.to_le_bytes());
        record.extend_from_slice(&version.to_le_bytes());
        record.extend_from_slice(&key_len.to_le_bytes());
        record.extend_from_slice(key);
        record.extend_from_slice(value);
        Some(Entry {
            record: record.into_boxed_slice(),
        })
    }

    fn cost(key: &[u8], value: &[u8]) -> usize {
        key.len() + value.len() + ENTRY_OVERHEAD
    }

    fn word(&self, at: usize) -> u64 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.record[at..at + 8]);
        u64::from_le_bytes(word)
    }

    fn epoch(&self) -> u64 {
        self.word(0)
    }

    fn version(&self) -> u64 {
        self.word(8)
    }

    fn key_end(&self) -> usize {
        let mut len = [0u8; 4];
        len.copy_from_slice(&self.record[16..HEADER]);
        HEADER + u32::from_le_bytes(len) as usize
    }

    fn key(&self) -> &[u8] {
        &self.record[HEADER..self.key_end()]
    }

    fn value(&self) -> &[u8] {
        &self.record[self.key_end()..]
    }

    fn size(&self) -> usize {
        self.record.len() - HEADER + ENTRY_OVERHEAD
    }
}

#[derive(Default)]
struct Part {
    entries: HashTable<Entry>,
    bytes: usize,
}

impl Part {
    fn find(&self, hash: u64, key: &[u8]) -> Option<&Entry> {
        self.entries.find(hash, |e| e.key() == key)
    }

    fn remove(&mut self, hash: u64, key: &[u8]) {
        if let Ok(found) = self.entries.find_entry(hash, |e| e.key() == key) {
            let (entry, _) = found.remove();
            self.bytes -= entry.size();
        }
    }

    /// Drop every other entry (an arbitrary half: the table's order is its hash order).
    fn halve(&mut self) {
        let mut keep = false;
        let mut freed = 0;
        self.entries.retain(|entry| {
            keep = !keep;
            if !keep {
                freed += entry.size();
            }
            keep
        });
        self.bytes -= freed;
    }
}

/// The node's read cache (module docs). Shared by every shard group through its
/// [`GroupCache`].
pub(crate) struct ReadCache {
    /// Each part on cache lines of its own: every hit takes its part's lock, and two parts
    /// sharing a line would make the node's threads pass that line back and forth.
    parts: Box<[Padded<Mutex<Part>>]>,
    hasher: RandomState,
    part_budget: usize,
    next_epoch: AtomicU64,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("budget", &(self.part_budget * self.parts.len()))
            .finish_non_exhaustive()
    }
}

impl ReadCache {
    /// A cache of at most `bytes` (keys, values and [`ENTRY_OVERHEAD`] per entry).
    pub(crate) fn new(bytes: usize) -> Arc<ReadCache> {
        Arc::new(ReadCache {
            parts: (0..SHARDS).map(|_| Padded::default()).collect(),
            hasher: RandomState::new(),
            part_budget: bytes / SHARDS,
            next_epoch: AtomicU64::new(1),
        })
    }

    /// The handle one shard group fills and invalidates through.
    pub(crate) fn group(self: &Arc<Self>) -> GroupCache {
        GroupCache {
            epoch: AtomicU64::new(self.fresh_epoch()),
            changes: AtomicU64::new(0),
            cache: self.clone(),
        }
    }

    /// Bytes held now, by the accounting the budget bounds.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.parts.iter().map(|p| lock(&p.0).bytes).sum()
    }

    fn fresh_epoch(&self) -> u64 {
        self.next_epoch.fetch_add(1, Ordering::Relaxed)
    }

    /// The key's hash, and its part: bits 32 and up pick the part, so the table, which
    /// indexes by the low bits and tags by the top seven, sees them spread evenly.
    fn part(&self, key: &[u8]) -> (u64, MutexGuard<'_, Part>) {
        let hash = self.hasher.hash_one(key);
        let index = (hash >> 32) as usize % self.parts.len();
        (hash, lock(&self.parts[index].0))
    }
}

/// A value alone on its cache lines (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// A poisoned part is still consistent: no code under its lock panics between two updates
/// of its map and its byte count.
fn lock(part: &Mutex<Part>) -> MutexGuard<'_, Part> {
    part.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One shard group's view of the node's cache (module docs, "Staying exact").
pub(crate) struct GroupCache {
    cache: Arc<ReadCache>,
    epoch: AtomicU64,
    changes: AtomicU64,
}

/// What a reader saw before it read: where to look, and the change counter a fill must
/// still find.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Look {
    epoch: u64,
    changes: u64,
}

impl GroupCache {
    /// Begin a read: the epoch to look in and the change counter to fill under. The epoch is
    /// read first: a change takes its fresh epoch after making the counter odd, so a reader
    /// that sees the new epoch also sees the change running and fills nothing.
    pub(crate) fn look(&self) -> Look {
        let epoch = self.epoch.load(Ordering::SeqCst);
        let changes = self.changes.load(Ordering::SeqCst);
        Look { epoch, changes }
    }

    /// The cached version and value of `key`, if any. The value is copied out: it is about
    /// to be copied into the answer anyway, and a fresh copy is what the encoder then reads.
    pub(crate) fn get(&self, look: Look, key: &[u8]) -> Option<(u64, Bytes)> {
        let (hash, part) = self.cache.part(key);
        part.find(hash, key)
            .filter(|e| e.epoch() == look.epoch)
            .map(|e| (e.version(), Bytes::copy_from_slice(e.value())))
    }

    /// Cache what a read found in sled, unless a change began since `look` (or was running).
    pub(crate) fn fill(&self, look: Look, key: &[u8], version: u64, value: &[u8]) {
        if look.changes % 2 == 1 {
            return;
        }
        let cost = Entry::cost(key, value);
        if cost > self.cache.part_budget / 4 {
            return;
        }
        let Some(entry) = Entry::new(look.epoch, version, key, value) else {
            return;
        };
        let (hash, mut part) = self.cache.part(key);
        // Under the part's lock: a change's `begin` makes the counter odd, then removes its
        // keys under the same lock, so either this fill comes first and is removed, or it
        // sees the counter moved.
        if self.changes.load(Ordering::SeqCst) != look.changes {
            return;
        }
        part.remove(hash, key);
        if part.bytes + cost > self.cache.part_budget {
            part.halve();
        }
        part.bytes += cost;
        let hasher = &self.cache.hasher;
        part.entries
            .insert_unique(hash, entry, |e| hasher.hash_one(e.key()));
    }

    /// Begin changing `keys` in the group's tree (a write batch): they are forgotten now, and
    /// nothing is filled until the change is dropped. The state machine applies one change at
    /// a time per group.
    pub(crate) fn begin<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Change<'_> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        // After the counter: a fill that saw the old counter inserted before this removal
        // (both under the part's lock), so it is removed here.
        for key in keys {
            let (hash, mut part) = self.cache.part(key);
            part.remove(hash, key);
        }
        Change { group: self }
    }

    /// Begin a change that touches keys it does not name (an import, a release, a snapshot
    /// install): every entry of the group is hidden now, under a fresh epoch.
    pub(crate) fn begin_whole(&self) -> Change<'_> {
        self.changes.fetch_add(1, Ordering::SeqCst);
        self.epoch.store(self.cache.fresh_epoch(), Ordering::SeqCst);
        Change { group: self }
    }
}

/// A change to a group's tree under way; it ends when dropped (on every path, errors
/// included), and reads fill the cache again.
#[must_use = "the change ends when this is dropped: hold it while the tree changes"]
pub(crate) struct Change<'a> {
    group: &'a GroupCache,
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.group.changes.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn read(group: &GroupCache, key: &str, stored: (u64, &str)) -> (u64, Bytes) {
        let look = group.look();
        if let Some(hit) = group.get(look, key.as_bytes()) {
            return hit;
        }
        let value = b(stored.1);
        group.fill(look, key.as_bytes(), stored.0, &value);
        (stored.0, value)
    }

    #[test]
    fn a_read_fills_and_the_next_one_hits() {
        let cache = ReadCache::new(1 << 20);
        let group = cache.group();
        assert!(group.get(group.look(), b"k").is_none());
        read(&group, "k", (3, "v"));
        assert_eq!(group.get(group.look(), b"k"), Some((3, b("v"))));
        assert_eq!(cache.bytes(), 1 + 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn a_write_removes_the_keys_it_names_and_no_others() {
        let cache = ReadCache::new(1 << 20);
        let group = cache.group();
        read(&group, "a", (1, "x"));
        read(&group, "b", (2, "y"));
        drop(group.begin([&b"a"[..]]));
        assert!(group.get(group.look(), b"a").is_none());
        assert_eq!(group.get(group.look(), b"b"), Some((2, b("y"))));
    }

    #[test]
    fn a_read_that_overlaps_a_change_fills_nothing() {
        let cache = ReadCache::new(1 << 20);
        let group = cache.group();
        // Looked before the change began, filled after it ended: the value read may be the
        // old one, so it is not kept.
        let before = group.look();
        drop(group.begin([&b"k"[..]]));
        group.fill(before, b"k", 1, &b("old"));
        assert!(group.get(group.look(), b"k").is_none());
        // Looked while a change runs: nothing is filled either, even after it ends.
        let change = group.begin([]);
        let during = group.look();
        group.fill(during, b"k", 2, &b("new?"));
        drop(change);
        group.fill(during, b"k", 2, &b("new?"));
        assert!(group.get(group.look(), b"k").is_none());
        // A read after the change fills.
        read(&group, "k", (2, "new"));
        assert_eq!(group.get(group.look(), b"k"), Some((2, b("new"))));
    }

    #[test]
    fn a_whole_change_hides_every_entry_of_its_group_only() {
        let cache = ReadCache::new(1 << 20);
        let (one, two) = (cache.group(), cache.group());
        read(&one, "k", (1, "one"));
        read(&two, "j", (1, "two"));
        drop(one.begin_whole());
        assert!(one.get(one.look(), b"k").is_none());
        assert_eq!(two.get(two.look(), b"j"), Some((1, b("two"))));
    }

    #[test]
    fn a_change_forgets_its_keys_when_it_begins_and_fills_nothing_until_it_ends() {
        let cache = ReadCache::new(1 << 20);
        let group = cache.group();
        read(&group, "k", (1, "v"));
        read(&group, "j", (1, "w"));
        let change = group.begin([&b"k"[..]]);
        assert!(
            group.get(group.look(), b"k").is_none(),
            "forgotten at the start"
        );
        assert!(group.get(group.look(), b"j").is_some(), "other keys stay");
        read(&group, "k", (2, "v2"));
        assert!(
            group.get(group.look(), b"k").is_none(),
            "no fill while it runs"
        );
        drop(change);
        read(&group, "k", (2, "v2"));
        assert_eq!(group.get(group.look(), b"k"), Some((2, b("v2"))));
    }

    #[test]
    fn the_budget_holds_however_many_keys_are_read() {
        let budget = 64 * 1024;
        let cache = ReadCache::new(budget);
        let group = cache.group();
        let value = "v".repeat(100);
        for i in 0..20_000 {
            read(&group, &format!("key-{i}"), (i, &value));
            assert!(cache.bytes() <= budget, "{} over {budget}", cache.bytes());
        }
        // Some recent keys are still there: halving keeps half.
        let held = (19_900..20_000)
            .filter(|i| {
                group
                    .get(group.look(), format!("key-{i}").as_bytes())
                    .is_some()
            })
            .count();
        assert!(held > 0);
    }

    #[test]
    fn every_entry_still_hits_after_its_table_grows() {
        // The slots hold no hash: a table that grows hashes each key again, and a wrong
        // hash there would strand the entry in a bucket its lookups never probe.
        let cache = ReadCache::new(64 << 20);
        let group = cache.group();
        let keys = 5_000u64;
        for i in 0..keys {
            read(&group, &format!("key-{i}"), (i, &format!("value-{i}")));
        }
        for i in 0..keys {
            let hit = group.get(group.look(), format!("key-{i}").as_bytes());
            assert_eq!(hit, Some((i, b(&format!("value-{i}")))), "key-{i}");
        }
        // The header's fields round-trip at their extremes, and empty keys and values too.
        let entry = Entry::new(u64::MAX, u64::MAX - 1, b"", b"").expect("an empty key fits");
        assert_eq!((entry.epoch(), entry.version()), (u64::MAX, u64::MAX - 1));
        assert_eq!((entry.key(), entry.value()), (&b""[..], &b""[..]));
        assert_eq!(entry.size(), Entry::cost(b"", b""));
    }

    #[test]
    fn a_value_over_a_quarter_of_a_part_is_not_cached() {
        let cache = ReadCache::new(SHARDS * 4096);
        let group = cache.group();
        read(&group, "big", (1, &"x".repeat(1024)));
        assert!(group.get(group.look(), b"big").is_none());
        read(&group, "small", (1, &"x".repeat(512)));
        assert!(group.get(group.look(), b"small").is_some());
    }

    /// Writers change a key through begin/end around their "tree" while readers read through
    /// the cache: no reader ever sees a version older than one already seen by any reader
    /// that finished before it started, and after the last write every read sees it.
    #[test]
    fn concurrent_reads_and_writes_never_go_back_in_time() {
        use std::sync::atomic::AtomicBool;
        let cache = ReadCache::new(1 << 20);
        let group = Arc::new(cache.group());
        let tree = Arc::new(Mutex::new(0u64));
        // The newest version any finished read returned.
        let seen = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (group, tree, seen, stop) =
                    (group.clone(), tree.clone(), seen.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let floor = seen.load(Ordering::SeqCst);
                        let look = group.look();
                        let version = match group.get(look, b"k") {
                            Some((v, _)) => v,
                            None => {
                                let v = *tree.lock().unwrap();
                                group.fill(look, b"k", v, &Bytes::new());
                                v
                            }
                        };
                        assert!(version >= floor, "read {version} after {floor} was seen");
                        seen.fetch_max(version, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for v in 1..=20_000u64 {
            let change = if v % 97 == 0 {
                group.begin_whole()
            } else {
                group.begin([&b"k"[..]])
            };
            *tree.lock().unwrap() = v;
            drop(change);
        }
        stop.store(true, Ordering::SeqCst);
        for r in readers {
            r.join().unwrap();
        }
        let look = group.look();
        let last = group.get(look, b"k").map(|(v, _)| v);
        assert!(last.is_none() || last == Some(20_000), "{last:?}");
    }
}
