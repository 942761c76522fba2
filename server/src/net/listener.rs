//! The listener: accept, admit, hand each connection its own task.
//!
//! Every connection is accepted, then [`admission`] decides whether it is kept: a cap per
//! source address, the node's cap (at which the oldest half-open connection makes room), and
//! a pre-handshake budget that shortens as the node fills. A permit taken *before* `accept`
//! (the mini-redis habit this replaced) let silent sockets hold every slot while legitimate
//! clients waited in the kernel backlog. Each connection gets its own task, and its TLS
//! handshake and HELLO run inside that task under the budget, so a stalled peer never delays
//! anyone else.

use std::sync::Arc;
use std::time::Instant;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::load::Pressure;
use crate::net::admission::{Admission, Limits, Ticket};
use crate::net::connection::{self, Trust};
use crate::net::identity::{self, PeerKind};
use crate::node::Shared;

/// Accept until `shutdown`, then let every connection finish and flush storage.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let config = &shared.config;
    let admission = Admission::new(Limits {
        max_connections: config.max_connections,
        max_per_source: config.max_connections_per_source,
        max_per_identity: config.max_connections_per_identity,
        handshake_timeout: config.handshake_timeout,
    });
    let tracker = TaskTracker::new();
    let mut refused_since_log = 0u64;
    let mut last_refusal_log = Instant::now();
    loop {
        let (socket, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refused) => {
                // Closing at once costs the node one accept; the peer sees a reset and may
                // retry. One warning per second at most, with the count, so a flood cannot
                // flood the log.
                drop(socket);
                if let Some(m) = crate::metrics::get() {
                    m.connection_refused(refused.reason_code());
                }
                refused_since_log += 1;
                if last_refusal_log.elapsed() >= std::time::Duration::from_secs(1) {
                    tracing::warn!(
                        source = %peer.ip(),
                        reason = %refused,
                        refused = refused_since_log,
                        "connections refused at admission"
                    );
                    refused_since_log = 0;
                    last_refusal_log = Instant::now();
                }
                continue;
            }
        };
        let shared = shared.clone();
        // Taken per accept: a reload of the certificate, key, CA or CRLs applies to the next
        // handshake, while connections already accepted keep the config they were served with.
        let acceptor = shared.credentials.as_ref().map(|credentials| {
            let (generation, config) = credentials.server_config();
            (generation, TlsAcceptor::from(config))
        });
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(err) = handle(socket, acceptor, ticket, shared, shutdown).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; finishing in-flight requests");
    tracker.close();
    tracker.wait().await;
    if let Some(group_commit) = shared.group_commit.clone() {
        group_commit.shutdown().await;
    }
    if let Some(replication) = shared.cluster.replication() {
        replication.shutdown().await;
    }
    if let Err(err) = shared.storage.flush() {
        tracing::error!(error = %err, "final flush failed");
    }
    tracing::info!("node stopped");
}

async fn handle(
    socket: TcpStream,
    acceptor: Option<(u64, TlsAcceptor)>,
    ticket: Ticket,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Requests and answers are small; Nagle would hold them back waiting for an ACK.
    socket.set_nodelay(true)?;
    // One deadline from accept covers the TLS handshake and HELLO.
    let deadline = tokio::time::Instant::now() + ticket.budget();
    match acceptor {
        None => Ok(counted(
            connection::serve(
                socket,
                None,
                Trust::default(),
                PeerKind::Client,
                ticket,
                deadline,
                shared,
                shutdown,
            )
            .await,
        )?),
        Some((generation, acceptor)) => {
            // Far past the load threshold even the handshake is not started: it is the CPU
            // the established clients need. (At HELLO a shed client is told why; here there
            // is no TLS session yet to tell it in.)
            if shared.load.pressure() == Pressure::Severe {
                shared.load.shed(false);
                return Err("shed before the TLS handshake: the node is overloaded".into());
            }
            let tls = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = ticket.evicted() => return Err("evicted while half-open to make room".into()),
                tls = tokio::time::timeout_at(deadline, acceptor.accept(socket)) => tls,
            };
            let failed = || {
                if let Some(m) = crate::metrics::get() {
                    m.handshake(false);
                }
            };
            let stream = tls
                .inspect_err(|_| failed())
                .map_err(|_| "TLS handshake timed out")?
                .inspect_err(|_| failed())
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let chain = stream.get_ref().1.peer_certificates();
            let thumbprint = connection::thumbprint_of(chain);
            let leaf = chain.and_then(|c| c.first()).map(|c| c.as_ref());
            let kind = identity::classify(leaf, shared.cluster.name());
            // Kept to re-check the certificate after a reload of the CA or CRLs.
            let trust = Trust {
                chain: chain.map(<[_]>::to_vec).unwrap_or_default(),
                generation,
            };
            Ok(counted(
                connection::serve(
                    stream, thumbprint, trust, kind, ticket, deadline, shared, shutdown,
                )
                .await,
            )?)
        }
    }
}

/// Count a connection that ended before its HELLO succeeded as a failed handshake.
fn counted(
    result: Result<(), connection::ConnectionError>,
) -> Result<(), connection::ConnectionError> {
    if let (Err(err), Some(m)) = (&result, crate::metrics::get()) {
        if err.before_hello() {
            m.handshake(false);
        }
    }
    result
}
