//! The idle timeout of a client connection after HELLO (`--idle-timeout`).
//!
//! A watchdog task beside each connection samples a request counter the connection bumps, and
//! closes the connection once the counter has stood still, with no answer pending, for the
//! whole timeout. The connection's own loop therefore pays one relaxed atomic add per request.
//! The first version re-armed a tokio `Sleep` on every request and polled it in the
//! connection's `select!`: callgrind counted about 370 instructions per GET at inflight 1 for
//! that alone (of the 555 the hostile-load limits added in all; docs/BENCHMARKS.md, "Limits
//! and metrics cost").
//!
//! The price is precision: the watchdog looks [`CHECKS_PER_TIMEOUT`] times per timeout, so a
//! connection is closed between one timeout and one and a quarter timeouts after its last
//! request. Node-to-node links, and a node started with `--idle-timeout 0`, get no watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFuture};

/// How often per timeout the watchdog looks: it closes a connection after this many looks in a
/// row found nothing new, so between `timeout` and `timeout * (1 + 1 / CHECKS_PER_TIMEOUT)`
/// after the last request.
pub(crate) const CHECKS_PER_TIMEOUT: u32 = 4;

/// What the connection and its watchdog share.
#[derive(Debug, Default)]
struct Activity {
    /// Requests the connection has read; only its change matters.
    requests: AtomicU64,
    /// Set by the watchdog just before it cancels the connection's token for idleness.
    timed_out: AtomicBool,
}

/// A connection's end of its idle timeout: note each request, and wait on [`IdleWatch::closed`]
/// for the node's shutdown or the timeout, whichever comes first.
#[derive(Debug)]
pub(crate) struct IdleWatch {
    activity: Arc<Activity>,
    /// Cancelled by the node's shutdown (it is a child of the shutdown token) or by the
    /// watchdog.
    closer: CancellationToken,
    /// Ends the watchdog when the connection ends, whatever the reason.
    _stop_watchdog: Option<DropGuard>,
}

impl IdleWatch {
    /// A connection that is never idle-closed: [`IdleWatch::closed`] is the node's shutdown.
    pub(crate) fn never(shutdown: &CancellationToken) -> IdleWatch {
        IdleWatch {
            activity: Arc::default(),
            closer: shutdown.clone(),
            _stop_watchdog: None,
        }
    }

    /// Start the watchdog of a connection that is closed after `timeout` without a request,
    /// unless `busy` says answers are still pending (a client waiting on its own slow writes is
    /// not idle). Needs a tokio runtime.
    pub(crate) fn start(
        timeout: Duration,
        shutdown: &CancellationToken,
        busy: impl Fn() -> bool + Send + 'static,
    ) -> IdleWatch {
        let activity = Arc::new(Activity::default());
        let closer = shutdown.child_token();
        // A token of its own, so that ending the watchdog does not close anything.
        let stop = CancellationToken::new();
        tokio::spawn(watchdog(
            timeout,
            activity.clone(),
            closer.clone(),
            stop.clone(),
            busy,
        ));
        IdleWatch {
            activity,
            closer,
            _stop_watchdog: Some(stop.drop_guard()),
        }
    }

    /// A request arrived.
    pub(crate) fn note_request(&self) {
        self.activity.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Resolves when the node shuts down or the connection has been idle too long.
    pub(crate) fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closer.cancelled()
    }

    /// Whether [`IdleWatch::closed`] resolved because of the idle timeout (not the shutdown).
    pub(crate) fn timed_out(&self) -> bool {
        self.activity.timed_out.load(Ordering::Relaxed)
    }
}

async fn watchdog(
    timeout: Duration,
    activity: Arc<Activity>,
    closer: CancellationToken,
    stop: CancellationToken,
    busy: impl Fn() -> bool,
) {
    let period = (timeout / CHECKS_PER_TIMEOUT).max(Duration::from_millis(1));
    let mut looks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A frozen node that wakes up late must not count the looks it missed as quiet ones.
    looks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen = activity.requests.load(Ordering::Relaxed);
    let mut quiet = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = closer.cancelled() => return,
            _ = looks.tick() => {}
        }
        let now = activity.requests.load(Ordering::Relaxed);
        if now != seen || busy() {
            seen = now;
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet >= CHECKS_PER_TIMEOUT {
            activity.timed_out.store(true, Ordering::Relaxed);
            closer.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paused time: the watchdog's looks run on tokio's virtual clock, so these tests check
    /// the counting rule exactly, without waiting.
    #[tokio::test(start_paused = true)]
    async fn closes_after_a_quiet_timeout_and_not_before() {
        let shutdown = CancellationToken::new();
        let watch = IdleWatch::start(Duration::from_secs(4), &shutdown, || false);
        let started = tokio::time::Instant::now();
        watch.closed().await;
        let waited = started.elapsed();
        assert!(watch.timed_out());
        assert!(
            !shutdown.is_cancelled(),
            "idleness closes one connection only"
        );
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(5),
            "closed after {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_a_connection_open() {
        let shutdown = CancellationToken::new();
        let watch = IdleWatch::start(Duration::from_secs(4), &shutdown, || false);
        // A request every 3 s, under the 4 s timeout, for a minute.
        for _ in 0..20 {
            tokio::select! {
                () = watch.closed() => panic!("closed while requests kept coming"),
                () = tokio::time::sleep(Duration::from_secs(3)) => watch.note_request(),
            }
        }
        let last = tokio::time::Instant::now();
        watch.closed().await;
        assert!(watch.timed_out());
        let waited = last.elapsed();
        assert!(
            waited >= Duration::from_secs(4) && waited <= Duration::from_secs(5),
            "closed {waited:?} after the last request"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_answers_keep_a_connection_open() {
        let shutdown = CancellationToken::new();
        let busy = Arc::new(AtomicBool::new(true));
        let flag = busy.clone();
        let watch = IdleWatch::start(Duration::from_secs(1), &shutdown, move || {
            flag.load(Ordering::Relaxed)
        });
        tokio::select! {
            () = watch.closed() => panic!("closed while answers were pending"),
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        busy.store(false, Ordering::Relaxed);
        watch.closed().await;
        assert!(watch.timed_out());
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_closes_and_is_not_a_timeout() {
        let shutdown = CancellationToken::new();
        let watch = IdleWatch::start(Duration::from_secs(60), &shutdown, || false);
        shutdown.cancel();
        watch.closed().await;
        assert!(!watch.timed_out());
        let never = IdleWatch::never(&shutdown);
        never.closed().await;
        assert!(!never.timed_out());
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_ends_with_its_connection() {
        let shutdown = CancellationToken::new();
        let watch = IdleWatch::start(Duration::from_secs(60), &shutdown, || false);
        let activity = Arc::downgrade(&watch.activity);
        drop(watch);
        // One turn of the scheduler lets the watchdog see its stop token.
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert!(
            activity.upgrade().is_none(),
            "the watchdog outlived its connection"
        );
    }
}
