//! The verified-token cache (security level L5): skip signature and claim checks for a token
//! this node has already verified.
//!
//! - Key: SHA-256 of the token bytes. The cache holds no token, and a different token (even
//!   one differing only in its signature) is a different key.
//! - Value: the `Arc<Verified>` the verifier produced.
//! - Bounded: at most `capacity` entries in total, split over up to 16 shards. Each shard
//!   evicts with CLOCK (second chance): a hit sets the entry's reference bit; an insert into a
//!   full shard sweeps, clearing bits, and replaces the first entry that is unreferenced or
//!   expired. New entries start unreferenced, so a burst of one-off tokens replaces each other
//!   rather than the tokens that are in steady use.
//! - Never outlives `exp`: a hit is checked against the token's expiry (with the leeway it was
//!   verified under) and treated as a miss once expired.
//! - Concurrency: each shard is an `RwLock`. Hits take a read lock (the reference bit is an
//!   atomic), so concurrent hits never wait for each other, even on one shard; inserts take one
//!   shard's write lock. There is no global lock.
//!
//! What the cache does *not* decide: the certificate binding and staleness after a reload are
//! checked by [`super::Verifier::verify_cached`] on every hit.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use ring::digest;

use super::verifier::Verified;

/// Most shards a cache is split into; enough that 2 to 16 cores rarely meet on one write lock.
const MAX_SHARDS: usize = 16;

/// SHA-256 of a token: the cache key.
pub(crate) type TokenHash = [u8; 32];

struct Slot {
    key: TokenHash,
    value: Arc<Verified>,
    referenced: AtomicBool,
}

#[derive(Default)]
struct Shard {
    index: HashMap<TokenHash, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

impl Shard {
    fn get(&self, key: &TokenHash) -> Option<&Slot> {
        self.index.get(key).map(|&i| &self.slots[i])
    }

    fn insert(&mut self, key: TokenHash, value: Arc<Verified>, now: i64) {
        if let Some(&i) = self.index.get(&key) {
            // A re-verification (e.g. after a reload): replace the stale value in place.
            self.slots[i].value = value;
            return;
        }
        let slot = Slot {
            key,
            value,
            referenced: AtomicBool::new(false),
        };
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push(slot);
            return;
        }
        // CLOCK sweep. Each step either finds a victim or clears a reference bit, so two full
        // turns always find one.
        let len = self.slots.len();
        let mut victim = self.hand;
        for _ in 0..2 * len {
            let s = &mut self.slots[self.hand];
            let expired = s.value.check_live(now).is_err();
            let referenced = std::mem::replace(s.referenced.get_mut(), false);
            if expired || !referenced {
                victim = self.hand;
                break;
            }
            self.hand = (self.hand + 1) % len;
        }
        let old = std::mem::replace(&mut self.slots[victim], slot);
        self.index.remove(&old.key);
        self.index.insert(key, victim);
        self.hand = (victim + 1) % len;
    }
}

/// A bounded, sharded cache of verified tokens; see the module docs. Share it (`Arc`) between
/// all connections of a node and across verifier reloads.
pub struct TokenCache {
    shards: Box<[RwLock<Shard>]>,
    capacity: usize,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.capacity)
            .field("shards", &self.shards.len())
            .field("len", &self.len())
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` entries; 0 makes a cache that stores nothing.
    pub fn new(capacity: usize) -> TokenCache {
        let n = capacity.min(MAX_SHARDS);
        // Spread the capacity exactly: the total never exceeds `capacity`.
        let shards = (0..n)
            .map(|i| {
                RwLock::new(Shard {
                    capacity: capacity / n + usize::from(i < capacity % n),
                    ..Shard::default()
                })
            })
            .collect();
        TokenCache { shards, capacity }
    }

    /// The most entries it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held now (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).slots.len())
            .sum()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry (e.g. to measure cold-cache cost). Not needed after a keyset reload:
    /// entries from an older verifier are ignored and replaced as they are met.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.write().unwrap_or_else(PoisonError::into_inner);
            s.index.clear();
            s.slots.clear();
            s.hand = 0;
        }
    }

    pub(crate) fn key_of(token: &[u8]) -> TokenHash {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, token).as_ref());
        out
    }

    fn shard(&self, key: &TokenHash) -> Option<&RwLock<Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        // The key is a SHA-256 output, so any 8 of its bytes are uniformly spread.
        let mut first = [0u8; 8];
        first.copy_from_slice(&key[..8]);
        let i = (u64::from_le_bytes(first) % self.shards.len() as u64) as usize;
        Some(&self.shards[i])
    }

    /// The cached verification of a token, unless absent or expired at `now`.
    pub(crate) fn get(&self, key: &TokenHash, now: i64) -> Option<Arc<Verified>> {
        // A poisoned lock only means another thread panicked mid-operation; the shard's data
        // is still a consistent cache (every mutation completes before it can panic).
        let shard = self
            .shard(key)?
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let slot = shard.get(key)?;
        slot.value.check_live(now).ok()?;
        slot.referenced.store(true, Ordering::Relaxed);
        Some(Arc::clone(&slot.value))
    }

    pub(crate) fn insert(&self, key: TokenHash, value: Arc<Verified>, now: i64) {
        if let Some(shard) = self.shard(&key) {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(key, value, now);
        }
    }
}
