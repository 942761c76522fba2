//! A running node: storage, the listener, its connection tasks, and graceful shutdown.
//!
//! The listener follows mini-redis: a semaphore caps live connections, and a permit is taken
//! *before* `accept`, so at the cap new clients wait in the kernel backlog instead of costing
//! the node memory. Each connection gets its own task, and its TLS handshake runs inside that
//! task under a timeout, so a stalled peer never delays anyone else.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::cluster::{Cluster, ClusterSetupError, Dialer};
use crate::config::{Durability, Engine, NodeConfig, TransportConfig};
use crate::connection;
use crate::identity::{self, PeerKind};
use crate::storage::{GroupCommit, MemoryStorage, NullStorage, SledStorage, Storage, StorageError};
use crate::tls::{self, TlsSetupError};

/// A node that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS credentials are missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The storage engine could not open its data directory.
    #[error("cannot open storage")]
    Storage(#[from] StorageError),
    /// The token checkpoint could not be set up (keyset, policy or audit log).
    #[error("cannot set up token checks")]
    Auth(#[from] CheckpointError),
    /// The cluster map could not be loaded.
    #[error(transparent)]
    Cluster(#[from] ClusterSetupError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// State every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) storage: Arc<dyn Storage>,
    /// Present with `durability = "sync"`: writes are answered after the group flush.
    pub(crate) group_commit: Option<GroupCommit>,
    /// Present when tokens are checked.
    pub(crate) checkpoint: Option<Arc<Checkpoint>>,
    /// The slots this node serves and the cluster control plane.
    pub(crate) cluster: Arc<Cluster>,
}

/// A node accepting connections. Dropping it does not stop it; call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Open storage, bind the listener and start serving on the current tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let acceptor = match &config.transport {
            TransportConfig::Tls {
                ca,
                cert,
                key,
                client_auth,
            } => {
                if !client_auth {
                    tracing::warn!(
                        "serving TLS WITHOUT client certificates (--insecure-no-client-auth): \
                         anyone who can reach the port is admitted past checkpoint 1; use this \
                         only for benchmark baselines and labs"
                    );
                }
                Some(TlsAcceptor::from(tls::server_config(
                    ca,
                    cert,
                    key,
                    *client_auth,
                )?))
            }
            TransportConfig::Plaintext => {
                tracing::warn!(
                    "serving WITHOUT TLS (--insecure-plaintext): anyone on the network can read \
                     and forge traffic; use this only for benchmark baselines and labs"
                );
                None
            }
        };
        let checkpoint = match &config.auth {
            Some(auth) => Some(Arc::new(Checkpoint::new(auth, &config.name)?)),
            None => None,
        };
        // Bind before opening storage: a port conflict then leaves the data dir untouched.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let storage: Arc<dyn Storage> = match config.engine {
            Engine::Memory => Arc::new(MemoryStorage::new()),
            Engine::Null => Arc::new(NullStorage::new()),
            Engine::Sled => {
                let flush_every = match config.durability {
                    // Sync mode flushes explicitly; sled's timer would only add fsyncs.
                    Durability::Sync => None,
                    Durability::Async => Some(config.flush_every.as_millis() as u64),
                };
                Arc::new(SledStorage::open(&config.data_dir, flush_every)?)
            }
        };
        let group_commit = match (config.durability, config.engine) {
            (Durability::Sync, Engine::Sled) => Some(GroupCommit::start(storage.clone())),
            _ => None,
        };
        let cluster = Arc::new(open_cluster(&config, local_addr, storage.clone())?);
        let shutdown = CancellationToken::new();
        if let Some(checkpoint) = &checkpoint {
            checkpoint.clone().watch(shutdown.clone());
        }
        cluster.watch(shutdown.clone());
        let shared = Arc::new(Shared {
            config,
            storage,
            group_commit,
            checkpoint,
            cluster,
        });
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(RunningNode {
            local_addr,
            shutdown,
            task,
            shared,
        })
    }

    /// The address the node listens on (with the real port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let connections finish their in-flight requests, flush storage, and
    /// return once everything is closed.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Wait until the node stops (only after [`RunningNode::shutdown`] from elsewhere or a
    /// fatal listener error).
    pub async fn wait(&mut self) {
        let _ = (&mut self.task).await;
    }

    /// Re-read the token keyset now (what SIGHUP does). A keyset that fails to load is
    /// refused and the previous one stays in force; either way the outcome is logged.
    pub fn reload_keyset(&self) {
        if let Some(checkpoint) = &self.shared.checkpoint {
            checkpoint.reload_and_log();
        }
    }

    /// A token that, once cancelled, shuts the node down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The cluster name (flag, else the trust domain of the node's own certificate, else `skv`),
/// the peer dialer (TLS nodes only) and the map.
fn open_cluster(
    config: &NodeConfig,
    local_addr: SocketAddr,
    storage: Arc<dyn crate::storage::Storage>,
) -> Result<Cluster, StartError> {
    let own_domain = match &config.transport {
        TransportConfig::Tls { cert, .. } => tls::load_certs(cert, "node certificate")?
            .first()
            .and_then(|c| identity::trust_domain(c.as_ref())),
        TransportConfig::Plaintext => None,
    };
    let name = config
        .cluster
        .clone()
        .or(own_domain)
        .unwrap_or_else(|| skv_token::DEFAULT_TOKEN_AUDIENCE.to_owned());
    let dialer = match &config.transport {
        TransportConfig::Tls { ca, cert, key, .. } => {
            Some(Dialer::new(ca, cert, key, &name, config.max_frame)?)
        }
        TransportConfig::Plaintext => None,
    };
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    let data_dir = (config.engine == Engine::Sled).then_some(config.data_dir.as_path());
    Ok(Cluster::open(
        &config.name,
        &name,
        &advertise,
        config.cluster_map.as_deref(),
        data_dir,
        dialer,
        storage,
    )?)
}

async fn accept_loop(
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
