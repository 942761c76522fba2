//! Admission: which accepted connections the node keeps, and for how long a half-open one may
//! take to prove itself.
//!
//! The listener accepts first and asks here second, so the kernel backlog never fills with
//! clients waiting behind a slot held by a silent socket (the landed design took a permit
//! before `accept`, and 2000 idle sockets kept every legitimate client waiting). Four limits
//! apply, in the order nginx and HAProxy apply theirs:
//!
//! - **per source IP**: one address holds at most `max_per_source` connections, whatever
//!   state they are in; past it a new connection is closed at once;
//! - **the node's cap** (`max_connections`): at the cap, the *oldest* connection still
//!   half-open (TLS handshake or HELLO not finished) is dropped to make room, so a flood of
//!   silent sockets recycles itself instead of starving completed clients; with no half-open
//!   connection left to drop, the new one is closed;
//! - **the pre-handshake budget**: a half-open connection gets the full handshake timeout
//!   while the node is less than half full, and a budget shrinking linearly to
//!   [`MIN_HANDSHAKE_BUDGET`] as it fills up;
//! - **per identity** (client certificate), checked at HELLO by [`Ticket::claim_identity`]:
//!   at most `max_per_identity` established connections, past which only a HELLO carrying a
//!   token that verifies is admitted.
//!
//! Counting is under one mutex, taken a few times per connection (not per request).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::auth::CertThumbprint;

/// The shortest pre-handshake budget under pressure: enough for a TLS 1.3 handshake and HELLO
/// over a slow link, short enough that a silent socket soon makes room.
pub(crate) const MIN_HANDSHAKE_BUDGET: Duration = Duration::from_secs(1);

/// The limits, from the node's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) max_per_source: usize,
    pub(crate) max_per_identity: usize,
    pub(crate) handshake_timeout: Duration,
}

/// Why a new connection was closed without being served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("this source address holds its maximum of connections")]
    SourceFull,
    #[error("the node holds its maximum of connections and none is half-open")]
    NodeFull,
}

impl Refused {
    /// The fixed name the metrics use.
    pub(crate) fn reason_code(self) -> &'static str {
        match self {
            Refused::SourceFull => "source_full",
            Refused::NodeFull => "node_full",
        }
    }
}

/// The connection counts of one node.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections holding a slot, including those told to close but not yet gone.
    live: usize,
    /// Connections told to close to make room, not yet gone: they no longer count against the
    /// node's cap.
    evicting: usize,
    by_source: HashMap<IpAddr, usize>,
    by_identity: HashMap<CertThumbprint, usize>,
    /// Half-open connections by admission order: the first is the oldest.
    half_open: BTreeMap<u64, CancellationToken>,
    next_seq: u64,
}

impl Admission {
    pub(crate) fn new(limits: Limits) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            inner: Mutex::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The counts stay consistent under every early return, so a poisoned lock (a panic
        // elsewhere while it was held) still holds usable counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit a connection just accepted from `source`, or say why not. The ticket holds its
    /// slot until dropped; `ticket.cancelled()` fires if the connection is evicted while it is
    /// still half-open.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Ticket, Refused> {
        let mut inner = self.lock();
        let from_source = inner.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_per_source {
            return Err(Refused::SourceFull);
        }
        if inner.live - inner.evicting >= self.limits.max_connections {
            // Make room by dropping the oldest half-open connection. It leaves its slot when
            // its task ends; until then it counts as evicting, not against the cap.
            let Some((_, oldest)) = inner.half_open.pop_first() else {
                return Err(Refused::NodeFull);
            };
            oldest.cancel();
            inner.evicting += 1;
        }
        let budget = self.budget(inner.live - inner.evicting);
        inner.live += 1;
        *inner.by_source.entry(source).or_default() += 1;
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let cancel = CancellationToken::new();
        inner.half_open.insert(seq, cancel.clone());
        if let Some(m) = crate::metrics::get() {
            m.connection_opened();
        }
        Ok(Ticket {
            admission: self.clone(),
            source,
            seq,
            cancel,
            budget,
            identity: None,
            half_open: true,
        })
    }

    /// The pre-handshake budget with `live` connections already admitted: the full timeout
    /// below half the cap, then shrinking linearly to [`MIN_HANDSHAKE_BUDGET`] at the cap.
    fn budget(&self, live: usize) -> Duration {
        let max = self.limits.max_connections;
        let full = self.limits.handshake_timeout;
        let half = max / 2;
        if live <= half || full <= MIN_HANDSHAKE_BUDGET {
            return full;
        }
        let free = max.saturating_sub(live) as u32;
        let span = (max - half).max(1) as u32;
        (full * free / span).max(MIN_HANDSHAKE_BUDGET)
    }
}

/// One admitted connection's slot; released on drop.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
    seq: u64,
    cancel: CancellationToken,
    budget: Duration,
    identity: Option<CertThumbprint>,
    half_open: bool,
}

/// Why a connection that finished HELLO is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotKept {
    /// Past its certificate's connection cap, without a token that verified.
    #[error("this client certificate holds its maximum of connections")]
    IdentityFull,
    /// Evicted to make room just before its HELLO completed.
    #[error("evicted while half-open to make room")]
    Evicted,
}

impl Ticket {
    /// The address the connection came from.
    pub(crate) fn source(&self) -> IpAddr {
        self.source
    }

    /// Time the connection has, from its accept, for the TLS handshake and HELLO.
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    /// Fires when the connection is evicted to make room while still half-open.
    pub(crate) fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// HELLO succeeded: the connection is established (never evicted for room again) and,
    /// when it has a client certificate, counts against that certificate's cap. Past the cap
    /// the connection is admitted only when `proven` (its HELLO carried a token that
    /// verified).
    pub(crate) fn claim_identity(
        &mut self,
        identity: Option<CertThumbprint>,
        proven: bool,
    ) -> Result<(), NotKept> {
        let mut inner = self.admission.lock();
        if self.half_open && !inner.half_open.contains_key(&self.seq) {
            return Err(NotKept::Evicted);
        }
        if let Some(identity) = identity {
            let held = inner.by_identity.get(&identity).copied().unwrap_or(0);
            if held >= self.admission.limits.max_per_identity && !proven {
                return Err(NotKept::IdentityFull);
            }
            *inner.by_identity.entry(identity).or_default() += 1;
            self.identity = Some(identity);
        }
        if self.half_open {
            self.half_open = false;
            inner.half_open.remove(&self.seq);
        }
        Ok(())
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(m) = crate::metrics::get() {
            m.connection_closed();
        }
        let mut inner = self.admission.lock();
        inner.live -= 1;
        if self.half_open && inner.half_open.remove(&self.seq).is_none() {
            // Not in the half-open list while still half-open: it was evicted.
            inner.evicting -= 1;
        }
        decrement(&mut inner.by_source, &self.source);
        if let Some(identity) = &self.identity {
            decrement(&mut inner.by_identity, identity);
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_source: usize, per_identity: usize) -> Arc<Admission> {
        Admission::new(Limits {
            max_connections: max,
            max_per_source: per_source,
            max_per_identity: per_identity,
            handshake_timeout: Duration::from_secs(10),
        })
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn one_source_is_capped_and_its_slots_come_back() {
        let admission = limits(100, 2, 10);
        let one = admission.admit(A).unwrap();
        let _two = admission.admit(A).unwrap();
        assert_eq!(admission.admit(A).unwrap_err(), Refused::SourceFull);
        let _other = admission.admit(B).unwrap();
        drop(one);
        let _three = admission.admit(A).unwrap();
        assert_eq!(admission.lock().live, 3);
    }

    #[test]
    fn at_the_cap_the_oldest_half_open_connection_makes_room() {
        let admission = limits(3, 10, 10);
        let oldest = admission.admit(A).unwrap();
        let mut established = admission.admit(A).unwrap();
        established.claim_identity(None, false).unwrap();
        let newer = admission.admit(A).unwrap();
        let newest = admission.admit(B).unwrap();
        assert!(
            oldest.cancel.is_cancelled(),
            "the oldest half-open one goes"
        );
        assert!(!newer.cancel.is_cancelled() && !established.cancel.is_cancelled());
        drop(oldest);
        // Two half-open left (newer, newest) and one established: at the cap again.
        let _fifth = admission.admit(B).unwrap();
        assert!(newer.cancel.is_cancelled());
        drop(newer);
        drop(newest);
        let inner = admission.lock();
        assert_eq!((inner.live, inner.evicting), (2, 0));
    }

    #[test]
    fn with_nothing_half_open_a_full_node_closes_the_newcomer() {
        let admission = limits(1, 10, 10);
        let mut only = admission.admit(A).unwrap();
        only.claim_identity(None, false).unwrap();
        assert_eq!(admission.admit(B).unwrap_err(), Refused::NodeFull);
    }

    #[test]
    fn the_budget_shrinks_as_the_node_fills() {
        let admission = limits(100, 1000, 10);
        assert_eq!(admission.budget(10), Duration::from_secs(10));
        assert_eq!(admission.budget(50), Duration::from_secs(10));
        assert_eq!(admission.budget(75), Duration::from_secs(5));
        assert_eq!(admission.budget(99), MIN_HANDSHAKE_BUDGET);
        assert_eq!(admission.budget(100), MIN_HANDSHAKE_BUDGET);
    }

    #[test]
    fn an_identity_past_its_cap_needs_a_verified_token() {
        let admission = limits(100, 100, 1);
        let id = CertThumbprint::of(b"alice");
        let mut first = admission.admit(A).unwrap();
        first.claim_identity(Some(id), false).unwrap();
        let mut second = admission.admit(A).unwrap();
        assert_eq!(
            second.claim_identity(Some(id), false),
            Err(NotKept::IdentityFull)
        );
        second.claim_identity(Some(id), true).unwrap();
        drop(first);
        drop(second);
        let mut third = admission.admit(A).unwrap();
        third.claim_identity(Some(id), false).unwrap();
    }
}
