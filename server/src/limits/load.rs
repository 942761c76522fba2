//! Load shedding: how much work the node has in flight, and whether it takes on more clients.
//!
//! The signal is the number of requests waiting in the node for their answer, across every
//! connection: writes waiting for their quorum and flush, linearizable reads waiting for their
//! leadership check, scans waiting for a turn, control requests. It rises when the node falls
//! behind on work that waits (disk, a slow quorum, scans), and costs two atomic adds per such
//! request. Requests answered at once (a GET of a node without Raft, a PING) are not counted:
//! they never queue inside the node, so a node saturated only by them is not seen as
//! overloaded (their queue is the sockets').
//!
//! Past the threshold the node is *overloaded*: a new connection is answered `overloaded` at
//! HELLO with a retry-after, and past twice the threshold it is closed before its TLS handshake
//! (the handshake is the CPU the established clients need). Requests of connections that are
//! already established are never shed: the work a node sheds first is the work nobody has
//! invested in yet (Envoy's overload manager stops accepting before it resets streams).
//! Node-to-node links are exempt.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// How overloaded the node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pressure {
    /// Under the threshold: everything is admitted.
    Normal,
    /// Over it: new connections are refused at HELLO.
    Shed,
    /// Over twice it: new connections are closed before their TLS handshake.
    Severe,
}

/// The retry-after announced to a shed client: long enough for a queue of flushes to drain,
/// short enough that a client returns soon after the load passes.
pub(crate) const SHED_RETRY_AFTER_MS: u32 = 200;

/// The node's in-flight count and its threshold.
#[derive(Debug)]
pub(crate) struct Load {
    in_flight: AtomicUsize,
    threshold: Option<usize>,
}

impl Load {
    pub(crate) fn new(threshold: Option<usize>) -> Arc<Load> {
        Arc::new(Load {
            in_flight: AtomicUsize::new(0),
            threshold,
        })
    }

    /// One request read; the guard counts it until dropped (when its answer is written).
    pub(crate) fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether to take on a new connection now.
    pub(crate) fn pressure(&self) -> Pressure {
        let Some(threshold) = self.threshold else {
            return Pressure::Normal;
        };
        let now = self.in_flight();
        if now > threshold.saturating_mul(2) {
            Pressure::Severe
        } else if now > threshold {
            Pressure::Shed
        } else {
            Pressure::Normal
        }
    }

    /// Count a connection shed at HELLO (`at_hello`) or before its handshake (metrics).
    pub(crate) fn shed(&self, at_hello: bool) {
        if let Some(m) = crate::metrics::get() {
            m.shed(at_hello);
        }
    }
}

/// One request in flight; dropped when it is answered.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Load>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_follows_the_requests_in_flight() {
        let load = Load::new(Some(2));
        let held: Vec<InFlight> = (0..2).map(|_| load.start()).collect();
        assert_eq!(load.pressure(), Pressure::Normal);
        let third = load.start();
        assert_eq!(load.pressure(), Pressure::Shed);
        let more: Vec<InFlight> = (0..2).map(|_| load.start()).collect();
        assert_eq!(load.pressure(), Pressure::Severe);
        drop((held, third, more));
        assert_eq!(load.in_flight(), 0);
        assert_eq!(load.pressure(), Pressure::Normal);
        // Without a threshold the node never sheds.
        let off = Load::new(None);
        let _many: Vec<InFlight> = (0..100).map(|_| off.start()).collect();
        assert_eq!(off.pressure(), Pressure::Normal);
    }
}
