//! Per-identity rate limits: token buckets of requests and bytes per second.
//!
//! The identity is the token's `sub` when the request carried a verified token, else the
//! client certificate, else (plaintext benchmark baselines) the source address. Each identity
//! has two buckets, refilled continuously at the configured rate and holding one second's
//! worth (the burst; the byte bucket at least one frame, so any request that fits a frame can
//! pass). A request takes one request token and its frame's bytes; its answer's bytes are
//! charged after it is written, and may drive the byte bucket into debt, which later requests
//! wait out. A request that finds a bucket empty is refused `rate limited` with the time until
//! it would pass.
//!
//! The table of identities is bounded ([`MAX_IDENTITIES`]). A bucket that has refilled to full
//! carries no state worth keeping (a new one would be the same), so at the cap full buckets not
//! held by a live connection are dropped first; only when every tracked identity is active is
//! an arbitrary one dropped (it restarts with a full bucket: an attacker needs more than
//! [`MAX_IDENTITIES`] active credentials to gain anything).
//!
//! Each connection keeps the bucket of the identity it last used ([`Meter`]), so a client
//! that sends request after request with the same token touches only its own bucket's
//! lock, not the table's.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::CertThumbprint;

/// Identities tracked at once.
pub(crate) const MAX_IDENTITIES: usize = 65_536;

/// Longest retry-after ever announced: a client that waits longer learns nothing new.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Who a request is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Identity {
    /// A verified token's subject.
    Subject(Box<str>),
    /// A client certificate, for requests without a token.
    Certificate(CertThumbprint),
    /// The source address, when there is neither (plaintext, auth off).
    Source(IpAddr),
}

/// The configured rates.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rates {
    /// Requests per second; `None`: unlimited.
    pub(crate) requests: Option<u64>,
    /// Bytes per second; `None`: unlimited.
    pub(crate) bytes: Option<u64>,
    /// Largest frame: the byte bucket holds at least this much.
    pub(crate) max_frame: usize,
}

/// Why a request was refused, and how long until it would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Over the request rate.
    Requests(Duration),
    /// Over the byte rate.
    Bytes(Duration),
}

impl Limited {
    /// Milliseconds to wait, at least 1.
    pub(crate) fn retry_after_ms(self) -> u32 {
        let (Limited::Requests(wait) | Limited::Bytes(wait)) = self;
        (wait.min(MAX_RETRY_AFTER).as_millis() as u32).max(1)
    }

    /// Which limit, for the message and the metrics.
    pub(crate) fn which(self) -> &'static str {
        match self {
            Limited::Requests(_) => "requests",
            Limited::Bytes(_) => "bytes",
        }
    }
}

/// One identity's two buckets.
#[derive(Debug)]
pub(crate) struct Buckets {
    requests: f64,
    bytes: f64,
    refilled: Instant,
}

impl Buckets {
    fn full(rates: &Rates, now: Instant) -> Buckets {
        Buckets {
            requests: request_capacity(rates),
            bytes: byte_capacity(rates),
            refilled: now,
        }
    }

    fn refill(&mut self, rates: &Rates, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        if let Some(rps) = rates.requests {
            self.requests = (self.requests + elapsed * rps as f64).min(request_capacity(rates));
        }
        if let Some(bps) = rates.bytes {
            self.bytes = (self.bytes + elapsed * bps as f64).min(byte_capacity(rates));
        }
    }

    fn is_full(&self, rates: &Rates) -> bool {
        self.requests >= request_capacity(rates) && self.bytes >= byte_capacity(rates)
    }
}

fn request_capacity(rates: &Rates) -> f64 {
    rates.requests.map_or(f64::MAX, |rps| rps.max(1) as f64)
}

fn byte_capacity(rates: &Rates) -> f64 {
    rates
        .bytes
        .map_or(f64::MAX, |bps| bps.max(rates.max_frame as u64) as f64)
}

/// The node's per-identity limiter; shared by every connection.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rates: Rates,
    table: Mutex<HashMap<Identity, Arc<Mutex<Buckets>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Buckets are plain numbers, consistent at every point: a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RateLimiter {
    /// A limiter, or `None` when neither rate is set (the common case costs nothing).
    pub(crate) fn new(rates: Rates) -> Option<RateLimiter> {
        if rates.requests.is_none() && rates.bytes.is_none() {
            return None;
        }
        Some(RateLimiter {
            rates,
            table: Mutex::new(HashMap::new()),
        })
    }

    /// The bucket of `identity`, created full if new.
    fn bucket(&self, identity: &Identity, now: Instant) -> Arc<Mutex<Buckets>> {
        let mut table = lock(&self.table);
        if let Some(bucket) = table.get(identity) {
            return bucket.clone();
        }
        if table.len() >= MAX_IDENTITIES {
            let rates = self.rates;
            // Full buckets no connection holds are lossless to drop.
            table.retain(|_, bucket| {
                Arc::strong_count(bucket) > 1 || {
                    let mut b = lock(bucket);
                    b.refill(&rates, now);
                    !b.is_full(&rates)
                }
            });
            // Every tracked identity is active: drop an eighth of them (any not held by a
            // connection, else any), so the next sweep is that many insertions away.
            let keep = MAX_IDENTITIES - MAX_IDENTITIES / 8;
            if table.len() > keep {
                let mut excess = table.len() - keep;
                table.retain(|_, bucket| {
                    if excess > 0 && Arc::strong_count(bucket) == 1 {
                        excess -= 1;
                        return false;
                    }
                    true
                });
                if excess > 0 {
                    let victims: Vec<Identity> = table.keys().take(excess).cloned().collect();
                    for victim in victims {
                        table.remove(&victim);
                    }
                }
            }
        }
        let bucket = Arc::new(Mutex::new(Buckets::full(&self.rates, now)));
        table.insert(identity.clone(), bucket.clone());
        bucket
    }

    /// Identities tracked now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        lock(&self.table).len()
    }
}

/// One connection's link to the limiter: the bucket of the identity it last charged, and what
/// the request being routed costs.
#[derive(Debug)]
pub(crate) struct Meter {
    current: Option<(Identity, Arc<Mutex<Buckets>>)>,
    /// The connection's source address: the identity of last resort.
    pub(crate) source: IpAddr,
    /// The size of the request being routed, in bytes.
    pub(crate) frame_len: usize,
}

impl Meter {
    /// A meter for a connection from `source`.
    pub(crate) fn new(source: IpAddr) -> Meter {
        Meter {
            current: None,
            source,
            frame_len: 0,
        }
    }
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }
}

impl Meter {
    /// Charge one request of `frame_bytes` to `identity`, or say how long to wait.
    pub(crate) fn admit(
        &mut self,
        limiter: &RateLimiter,
        identity: IdentityRef<'_>,
        frame_bytes: usize,
    ) -> Result<(), Limited> {
        let now = Instant::now();
        let bucket = self.bucket_for(limiter, identity, now);
        let mut b = lock(bucket);
        let rates = &limiter.rates;
        b.refill(rates, now);
        if let Some(rps) = rates.requests {
            if b.requests < 1.0 {
                let wait = (1.0 - b.requests) / rps as f64;
                return Err(Limited::Requests(Duration::from_secs_f64(wait)));
            }
        }
        if let Some(bps) = rates.bytes {
            // Debt from earlier answers is waited out; a request that fits the bucket passes
            // even when it drives it below zero (one frame at most, by the bucket's size).
            if b.bytes <= 0.0 {
                let wait = (1.0 - b.bytes) / bps as f64;
                return Err(Limited::Bytes(Duration::from_secs_f64(wait)));
            }
            b.bytes -= frame_bytes as f64;
        }
        if rates.requests.is_some() {
            b.requests -= 1.0;
        }
        Ok(())
    }

    /// Charge `bytes` of an answer to the identity last admitted.
    pub(crate) fn charge_answer(&mut self, limiter: &RateLimiter, bytes: usize) {
        if limiter.rates.bytes.is_none() || bytes == 0 {
            return;
        }
        if let Some((_, bucket)) = &self.current {
            lock(bucket).bytes -= bytes as f64;
        }
    }

    fn bucket_for(
        &mut self,
        limiter: &RateLimiter,
        identity: IdentityRef<'_>,
        now: Instant,
    ) -> &Arc<Mutex<Buckets>> {
        let same = matches!(&self.current, Some((current, _)) if identity.is(current));
        if !same {
            let owned = identity.to_owned();
            let bucket = limiter.bucket(&owned, now);
            self.current = Some((owned, bucket));
        }
        match &self.current {
            Some((_, bucket)) => bucket,
            None => unreachable!("set just above"),
        }
    }
}

/// An [`Identity`] borrowed from the request, compared to the connection's before anything is
/// allocated.
#[derive(Debug, Clone, Copy)]
pub(crate) enum IdentityRef<'a> {
    /// A verified token's subject.
    Subject(&'a str),
    /// A client certificate.
    Certificate(&'a CertThumbprint),
    /// The source address.
    Source(IpAddr),
}

impl IdentityRef<'_> {
    fn is(&self, owned: &Identity) -> bool {
        match (self, owned) {
            (IdentityRef::Subject(a), Identity::Subject(b)) => *a == &**b,
            (IdentityRef::Certificate(a), Identity::Certificate(b)) => *a == b,
            (IdentityRef::Source(a), Identity::Source(b)) => a == b,
            _ => false,
        }
    }

    fn to_owned(self) -> Identity {
        match self {
            IdentityRef::Subject(s) => Identity::Subject(s.into()),
            IdentityRef::Certificate(c) => Identity::Certificate(*c),
            IdentityRef::Source(ip) => Identity::Source(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests: Option<u64>, bytes: Option<u64>) -> RateLimiter {
        RateLimiter::new(Rates {
            requests,
            bytes,
            max_frame: 1024,
        })
        .unwrap()
    }

    #[test]
    fn no_rates_no_limiter() {
        assert!(RateLimiter::new(Rates {
            requests: None,
            bytes: None,
            max_frame: 1024
        })
        .is_none());
    }

    #[test]
    fn a_burst_of_one_second_passes_then_the_next_request_waits() {
        let limiter = limiter(Some(10), None);
        let mut meter = Meter::default();
        let who = IdentityRef::Subject("alice");
        for _ in 0..10 {
            meter.admit(&limiter, who, 10).unwrap();
        }
        let Err(limited) = meter.admit(&limiter, who, 10) else {
            panic!("the 11th request of a 10/s limit passed at once");
        };
        assert_eq!(limited.which(), "requests");
        // About a tenth of a second until the next token.
        assert!((1..=100).contains(&limited.retry_after_ms()), "{limited:?}");
        // Another identity on the same connection has its own bucket.
        meter
            .admit(&limiter, IdentityRef::Subject("bob"), 10)
            .unwrap();
        // And the same identity from another connection shares alice's.
        let mut other = Meter::default();
        assert!(other.admit(&limiter, who, 10).is_err());
    }

    #[test]
    fn answer_bytes_put_the_identity_in_debt() {
        let limiter = limiter(None, Some(2048));
        let mut meter = Meter::default();
        let who = IdentityRef::Source("127.0.0.1".parse().unwrap());
        meter.admit(&limiter, who, 100).unwrap();
        meter.charge_answer(&limiter, 10_000);
        let Err(limited) = meter.admit(&limiter, who, 100) else {
            panic!("a request passed while its identity was in debt");
        };
        assert_eq!(limited.which(), "bytes");
        // 8000 bytes of debt at 2 KiB/s: about four seconds.
        let ms = limited.retry_after_ms();
        assert!((3000..=4500).contains(&ms), "{ms}");
    }

    #[test]
    fn the_table_stays_bounded_and_drops_full_buckets_first() {
        let limiter = limiter(Some(1000), None);
        let mut held = Meter::default();
        held.admit(&limiter, IdentityRef::Subject("held"), 1)
            .unwrap();
        for i in 0..MAX_IDENTITIES + 10 {
            let name = format!("user{i}");
            // Each passes: a new identity starts with a full bucket.
            Meter::default()
                .admit(&limiter, IdentityRef::Subject(&name), 1)
                .unwrap();
        }
        assert!(limiter.tracked() <= MAX_IDENTITIES);
        // The bucket a connection holds survived every sweep.
        let table = lock(&limiter.table);
        assert!(table.contains_key(&Identity::Subject("held".into())));
    }
}
