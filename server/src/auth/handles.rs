//! One connection's token handles (protocol version 2, docs/PROTOCOL.md "Token handles").
//!
//! A client in per-request mode registers its token once (REGISTER_TOKEN) and names it by a
//! small handle afterwards, so the token's ~480 bytes stop travelling with every request. This
//! module owns the table behind that: which handle names which token, what the token verified
//! to, and under which keyset generation. It decides nothing about admission; the
//! [`Checkpoint`](super::checkpoint::Checkpoint) verifies a token before it is registered and
//! checks expiry, revocation and scopes on every request that names a handle.
//!
//! The table is bounded ([`MAX_HANDLES_PER_CONNECTION`]) and local to its connection, so a
//! handle is worth nothing to anyone who steals it: it names a token only on the TLS session
//! whose certificate the token was bound to when it was registered.

use std::sync::Arc;

use bytes::Bytes;
use skv_proto::MAX_HANDLES_PER_CONNECTION;

use super::Verified;

/// A registered token.
pub(crate) struct Registered {
    pub(crate) token: Bytes,
    pub(crate) verified: Arc<Verified>,
    /// The keyset generation `verified` was checked under: a different one means the token
    /// must be verified again before it is trusted.
    pub(crate) generation: u64,
}

/// By hand, so that no debug print of a session ever shows a token's bytes.
impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("token_bytes", &self.token.len())
            .field("sub", &self.verified.sub())
            .field("generation", &self.generation)
            .finish()
    }
}

/// Why a token could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegisterError {
    /// The table is full of live handles.
    Full,
    /// Every handle number of this connection has been handed out once (after 2^32 - 1
    /// registrations); handles are never reused, so the connection must be replaced.
    Exhausted,
}

/// The token handles of one connection.
#[derive(Debug, Default)]
pub(crate) struct Handles {
    /// In registration order; at most [`MAX_HANDLES_PER_CONNECTION`], so a linear search is
    /// as fast as a map and needs no hashing.
    entries: Vec<(u32, Registered)>,
    /// The last handle handed out (0 before the first: handle 0 is never used, so a zeroed
    /// field in a buggy client is never someone's handle).
    last: u32,
}

impl Handles {
    /// The token behind `handle`, if this connection registered it and still holds it.
    pub(crate) fn get(&self, handle: u32) -> Option<&Registered> {
        self.entries
            .iter()
            .find(|(h, _)| *h == handle)
            .map(|(_, r)| r)
    }

    /// The same, to re-verify it in place.
    pub(crate) fn get_mut(&mut self, handle: u32) -> Option<&mut Registered> {
        self.entries
            .iter_mut()
            .find(|(h, _)| *h == handle)
            .map(|(_, r)| r)
    }

    /// The handle already naming exactly these token bytes, so registering the same token
    /// twice takes no second slot.
    pub(crate) fn find_token(&mut self, token: &[u8]) -> Option<(u32, &mut Registered)> {
        self.entries
            .iter_mut()
            .find(|(_, r)| r.token == token)
            .map(|(h, r)| (*h, r))
    }

    /// Register `entry` under a new handle. When the table is full, handles whose token has
    /// expired by `now` (past the leeway) are dropped first: their requests would be refused
    /// anyway, and a long-lived proxy connection must not fill up with dead users.
    pub(crate) fn insert(&mut self, entry: Registered, now: i64) -> Result<u32, RegisterError> {
        if self.entries.len() >= MAX_HANDLES_PER_CONNECTION {
            self.entries
                .retain(|(_, r)| r.verified.check_live(now).is_ok());
            if self.entries.len() >= MAX_HANDLES_PER_CONNECTION {
                return Err(RegisterError::Full);
            }
        }
        let Some(handle) = self.last.checked_add(1) else {
            return Err(RegisterError::Exhausted);
        };
        self.last = handle;
        self.entries.push((handle, entry));
        Ok(handle)
    }

    /// How many handles the connection holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}
