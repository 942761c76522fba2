//! What failed authentication costs: a negative cache of recently refused tokens, and a rate
//! limit with backoff per peer (client certificate, and source address) on failures.
//!
//! A forged token costs the node a full signature verification, seven times a cached request;
//! sent again and again it must not keep costing that. A token refused for what its bytes say
//! (a bad signature, an unknown key, a malformed header) is refused the same way the next time
//! from its SHA-256 alone, until the keyset changes. And a peer that keeps failing is refused
//! outright for a while, the while doubling while it keeps at it: its requests then cost a map
//! lookup each.
//!
//! Both tables are bounded; a full table stops remembering rather than growing.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::{AuthError, CertThumbprint};

/// Refused tokens remembered.
const NEGATIVE_ENTRIES: usize = 4096;
/// How long a refused token is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// Failures a peer may have within [`FAILURE_WINDOW`] before it is blocked.
pub(crate) const FAILURE_BURST: u32 = 64;
/// The window failures are counted in.
pub(crate) const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// The first block; each further one within a window of the last doubles, up to
/// [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest block.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Peers tracked at once.
const PEERS: usize = 65_536;

/// Who failed: the certificate, and the address, each limited on its own (many certificates
/// from one address, or one certificate from many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PeerKey {
    Cert(CertThumbprint),
    Source(IpAddr),
}

#[derive(Debug)]
struct PeerState {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<[u8; 32], (AuthError, u64, Instant)>,
    order: VecDeque<[u8; 32]>,
    peers: HashMap<PeerKey, PeerState>,
}

/// The negative cache and the failure limiter of one node.
#[derive(Debug)]
pub(crate) struct Refusals {
    inner: Mutex<Inner>,
    /// A Unix time (seconds) after which no block set so far runs: every request asks
    /// whether its peer is blocked, and while no block is running the answer needs neither
    /// the table nor its lock, which every connection shares, nor a clock read of its own
    /// (the caller's, for token expiry, serves). Rounded up with a second to spare, so a
    /// block always ends before it; the table decides from the monotonic clock.
    blocks_end_unix: AtomicI64,
}

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals {
            inner: Mutex::default(),
            blocks_end_unix: AtomicI64::new(i64::MIN),
        }
    }
}

/// Whether a refusal is about the token's bytes alone, so the same bytes are refused the same
/// way again under the same keyset: not expiry (the clock), not binding (the connection), not
/// scope (the request).
fn intrinsic(err: &AuthError) -> bool {
    matches!(
        err.reason_code(),
        "malformed"
            | "forbidden_header"
            | "missing_alg"
            | "alg_not_allowed"
            | "missing_kid"
            | "unknown_kid"
            | "alg_key_mismatch"
            | "bad_signature"
            | "key_unusable"
    )
}

fn digest(token: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token).as_ref());
    out
}

impl Refusals {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the tables consistent; a panic elsewhere cannot break them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The refusal of these token bytes under keyset `generation`, if it is remembered.
    pub(crate) fn cached(&self, token: &[u8], generation: u64) -> Option<AuthError> {
        let key = digest(token);
        let inner = self.lock();
        let (err, seen_generation, at) = inner.tokens.get(&key)?;
        (*seen_generation == generation && at.elapsed() < NEGATIVE_TTL).then(|| err.clone())
    }

    /// Remember a refusal of these token bytes, when it is about the bytes alone.
    pub(crate) fn remember(&self, token: &[u8], err: &AuthError, generation: u64) {
        if !intrinsic(err) {
            return;
        }
        let key = digest(token);
        let mut inner = self.lock();
        if inner.tokens.len() >= NEGATIVE_ENTRIES {
            if let Some(oldest) = inner.order.pop_front() {
                inner.tokens.remove(&oldest);
            }
        }
        if inner
            .tokens
            .insert(key, (err.clone(), generation, Instant::now()))
            .is_none()
        {
            inner.order.push_back(key);
        }
    }

    /// Whether any of `peers` is blocked now; `now_unix` is the caller's Unix time in seconds.
    pub(crate) fn blocked(&self, peers: &[PeerKey], now_unix: i64) -> bool {
        // A block that began after this look is missed by a request that raced with it.
        if now_unix > self.blocks_end_unix.load(Ordering::Relaxed) {
            return false;
        }
        let inner = self.lock();
        let now = Instant::now();
        peers.iter().any(|p| {
            inner
                .peers
                .get(p)
                .and_then(|s| s.blocked_until)
                .is_some_and(|until| until > now)
        })
    }

    /// Count a failed authentication against each of `peers`; past [`FAILURE_BURST`] in a
    /// window, a peer is blocked for its backoff, which doubles for each block in a row.
    pub(crate) fn failed(&self, peers: &[PeerKey]) {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.peers.len() >= PEERS {
            inner.peers.retain(|_, s| {
                now.duration_since(s.window_start) < FAILURE_WINDOW
                    || s.blocked_until.is_some_and(|u| u > now)
            });
        }
        for peer in peers {
            if inner.peers.len() >= PEERS && !inner.peers.contains_key(peer) {
                continue;
            }
            let state = inner.peers.entry(*peer).or_insert(PeerState {
                failures: 0,
                window_start: now,
                blocked_until: None,
                backoff: FIRST_BACKOFF,
            });
            if now.duration_since(state.window_start) >= FAILURE_WINDOW {
                // A quiet window since the last block ended: start over from the first backoff.
                let calm = state
                    .blocked_until
                    .is_none_or(|u| now.duration_since(u.min(now)) >= FAILURE_WINDOW);
                if calm {
                    state.backoff = FIRST_BACKOFF;
                }
                state.failures = 0;
                state.window_start = now;
            }
            state.failures += 1;
            if state.failures > FAILURE_BURST {
                state.blocked_until = Some(now + state.backoff);
                let end = skv_token::unix_now()
                    .saturating_add(state.backoff.as_secs() as i64)
                    .saturating_add(2);
                self.blocks_end_unix.fetch_max(end, Ordering::Relaxed);
                state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
                state.failures = 0;
                state.window_start = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_refused_for_its_bytes_is_remembered_per_keyset() {
        let r = Refusals::default();
        let bad = AuthError::MissingKid;
        r.remember(b"tok", &bad, 3);
        assert_eq!(r.cached(b"tok", 3), Some(bad));
        assert_eq!(r.cached(b"tok", 4), None, "a new keyset decides afresh");
        assert_eq!(r.cached(b"other", 3), None);
        // Refusals that depend on the clock or the connection are not remembered.
        r.remember(b"unbound", &AuthError::Unbound, 3);
        assert_eq!(r.cached(b"unbound", 3), None);
    }

    #[test]
    fn a_failing_peer_is_blocked_past_the_burst_and_others_are_not() {
        let r = Refusals::default();
        let alice = [PeerKey::Cert(CertThumbprint::of(b"alice"))];
        let bob = [PeerKey::Cert(CertThumbprint::of(b"bob"))];
        for _ in 0..FAILURE_BURST {
            r.failed(&alice);
        }
        let now = skv_token::unix_now();
        assert!(!r.blocked(&alice, now));
        r.failed(&alice);
        assert!(r.blocked(&alice, now));
        assert!(!r.blocked(&bob, now));
    }

    #[test]
    fn a_block_ends_with_its_backoff_and_the_lock_free_look_agrees() {
        let r = Refusals::default();
        let alice = [PeerKey::Cert(CertThumbprint::of(b"alice"))];
        for _ in 0..=FAILURE_BURST {
            r.failed(&alice);
        }
        let now = skv_token::unix_now();
        assert!(r.blocked(&alice, now));
        let end = r.blocks_end_unix.load(Ordering::Relaxed);
        assert!(
            end > now + FIRST_BACKOFF.as_secs() as i64 && end <= now + 4,
            "the lock-free deadline {end} must cover the block from {now}"
        );
        std::thread::sleep(FIRST_BACKOFF + Duration::from_millis(20));
        assert!(
            !r.blocked(&alice, now),
            "the block is over, by the table's clock"
        );
        assert!(
            !r.blocked(&alice, end + 1),
            "and past the deadline without the table"
        );
    }
}
