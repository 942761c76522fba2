//! The listener: accept, cap, hand each connection its own task.
//!
//! It follows mini-redis: a semaphore caps live connections, and a permit is taken *before*
//! `accept`, so at the cap new clients wait in the kernel backlog instead of costing the node
//! memory. Each connection gets its own task, and its TLS handshake runs inside that task
//! under a timeout, so a stalled peer never delays anyone else.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::net::connection;
use crate::net::identity::{self, PeerKind};
use crate::node::Shared;

/// Accept until `shutdown`, then let every connection finish and flush storage.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
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
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            if let Err(err) = handle(socket, acceptor, shared, shutdown).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
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
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Requests and answers are small; Nagle would hold them back waiting for an ACK.
    socket.set_nodelay(true)?;
    match acceptor {
        None => Ok(connection::serve(socket, None, PeerKind::Client, shared, shutdown).await?),
        Some(acceptor) => {
            let tls = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                tls = tokio::time::timeout(shared.config.handshake_timeout, acceptor.accept(socket)) => tls,
            };
            let stream = tls
                .map_err(|_| "TLS handshake timed out")?
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            let chain = stream.get_ref().1.peer_certificates();
            let thumbprint = connection::thumbprint_of(chain);
            let leaf = chain.and_then(|c| c.first()).map(|c| c.as_ref());
            let kind = identity::classify(leaf, shared.cluster.name());
            Ok(connection::serve(stream, thumbprint, kind, shared, shutdown).await?)
        }
    }
}
