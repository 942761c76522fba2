//! Live counters of a running bench, for a progress display.
//!
//! The engine only bumps relaxed atomics here; whoever displays progress polls them on its own
//! schedule, so drawing never slows the request path.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the connections.
    Connecting,
    /// Writing the keys a read workload needs.
    Preloading,
    /// Sending, not yet measuring.
    WarmingUp,
    /// Sending and measuring.
    Measuring,
    /// No more requests are issued; waiting for the last answers.
    Draining,
    /// Finished.
    Done,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 6] = [
        Phase::Connecting,
        Phase::Preloading,
        Phase::WarmingUp,
        Phase::Measuring,
        Phase::Draining,
        Phase::Done,
    ];

    fn from_u8(n: u8) -> Phase {
        match n {
            0 => Phase::Connecting,
            1 => Phase::Preloading,
            2 => Phase::WarmingUp,
            3 => Phase::Measuring,
            4 => Phase::Draining,
            _ => Phase::Done,
        }
    }
}

/// Shared progress of one run. Create one, pass it to
/// [`run_with_progress`](crate::run_with_progress), and read it from elsewhere.
#[derive(Debug, Default)]
pub struct Progress {
    phase: AtomicU8,
    /// One bit per phase ever entered, so a poller misses no short phase.
    entered: AtomicU8,
    preloaded: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    measuring_since: OnceLock<Instant>,
}

impl Progress {
    /// A fresh progress record (phase: connecting).
    pub fn new() -> Progress {
        Progress::default()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    /// Whether the run has entered `phase` (now or earlier). A poller that announces phases
    /// uses this to miss none, however short.
    pub fn entered(&self, phase: Phase) -> bool {
        self.entered.load(Ordering::Relaxed) & (1 << phase as u8) != 0
    }

    /// Keys written by the preload so far.
    pub fn preloaded(&self) -> u64 {
        self.preloaded.load(Ordering::Relaxed)
    }

    /// Measured requests answered so far (including errors).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Measured requests that failed so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// When measuring began, once it has.
    pub fn measuring_since(&self) -> Option<Instant> {
        self.measuring_since.get().copied()
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        if phase == Phase::Measuring {
            let _ = self.measuring_since.set(Instant::now());
        }
        self.entered.fetch_or(1 << phase as u8, Ordering::Relaxed);
        // Phases only move forward; a late timer must not move a finished run back.
        self.phase.fetch_max(phase as u8, Ordering::Relaxed);
    }

    pub(crate) fn add_preloaded(&self, n: u64) {
        self.preloaded.fetch_add(n, Ordering::Relaxed);
    }

    /// `ok + failed` requests at once (one add per batch of answers, not per answer).
    pub(crate) fn add_requests(&self, ok: u64, failed: u64) {
        self.requests.fetch_add(ok + failed, Ordering::Relaxed);
        if failed > 0 {
            self.errors.fetch_add(failed, Ordering::Relaxed);
        }
    }

    pub(crate) fn add_request(&self, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}
