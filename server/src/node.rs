//! A running node: it wires the layers together in request order (the listener and TLS of
//! [`crate::net`], the token checkpoint of [`crate::auth`], the [`crate::router`], the
//! cluster's shards, [`crate::storage`]) and shuts them down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::checkpoint::{Checkpoint, CheckpointError};
use crate::cluster::{Cluster, ClusterSetupError, Placement, RaftSetup};
use crate::config::{Durability, Engine, NodeConfig, TransportConfig};
use crate::limits::load::Load;
use crate::limits::rate::{RateLimiter, Rates};
use crate::net::credentials::{CredentialFiles, Credentials};
use crate::net::identity;
use crate::net::listener;
use crate::net::peer::Dialer;
use crate::net::tls::{self, TlsSetupError};
use crate::router::Router;
use crate::storage::atrest::{AtRestError, Crypt, MasterKey};
use crate::storage::{GroupCommit, MemoryStorage, NullStorage, SledStorage, Storage, StorageError};

/// A node that could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS credentials are missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The storage engine could not open its data directory.
    #[error("cannot open storage")]
    Storage(#[from] StorageError),
    /// Encryption at rest could not be set up: the master key is unreadable, badly formed or
    /// wrong, or the data dir and the key disagree (encrypted without a key, plaintext with one).
    #[error("encryption at rest")]
    AtRest(#[from] AtRestError),
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
    /// The map, this node's shards and the cluster control plane.
    pub(crate) cluster: Arc<Cluster>,
    /// Role policy, checkpoints 2 and 3, and dispatch of every request.
    pub(crate) router: Router,
    /// Requests in flight across the node: the load-shedding signal.
    pub(crate) load: Arc<Load>,
    /// The live certificate, key, CA and CRLs (TLS nodes only).
    pub(crate) credentials: Option<Arc<Credentials>>,
}

/// A node accepting connections. Dropping it does not stop it; call [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Open storage, bind the listener and start serving on the current tokio runtime.
    pub async fn start(config: NodeConfig) -> Result<RunningNode, StartError> {
        let credentials = match &config.transport {
            TransportConfig::Tls {
                ca,
                cert,
                key,
                crl,
                client_auth,
            } => {
                if !client_auth {
                    tracing::warn!(
                        "serving TLS WITHOUT client certificates (--insecure-no-client-auth): \
                         anyone who can reach the port is admitted past checkpoint 1; use this \
                         only for benchmark baselines and labs"
                    );
                }
                Some(Arc::new(Credentials::load(CredentialFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                    crl: crl.clone(),
                    client_auth: *client_auth,
                })?))
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
        // The sled database, for the Raft groups of a replicated node, and its data keys.
        let mut sled_db = None;
        let mut crypt = None;
        let storage: Arc<dyn Storage> = match config.engine {
            Engine::Memory | Engine::Null if config.master_key.is_some() => {
                tracing::warn!(
                    "--master-key has no effect with the {:?} engine: it keeps nothing on disk",
                    config.engine
                );
                match config.engine {
                    Engine::Memory => Arc::new(MemoryStorage::new()),
                    _ => Arc::new(NullStorage::new()),
                }
            }
            Engine::Memory => Arc::new(MemoryStorage::new()),
            Engine::Null => Arc::new(NullStorage::new()),
            Engine::Sled => {
                let flush_every = match config.durability {
                    // Sync mode flushes explicitly; sled's timer would only add fsyncs.
                    Durability::Sync => None,
                    Durability::Async => Some(config.flush_every.as_millis() as u64),
                };
                // Before sled creates its files: a fresh dir is told apart from a plaintext one
                // by whether sled's files exist yet.
                crypt = match MasterKey::from_flag_or_env(config.master_key.as_deref())? {
                    Some(master) => {
                        Some(Arc::new(Crypt::open_or_create(&config.data_dir, &master)?))
                    }
                    None => {
                        Crypt::check_plaintext(&config.data_dir)?;
                        None
                    }
                };
                let sled = SledStorage::open(&config.data_dir, flush_every)?;
                sled_db = Some(sled.db().clone());
                Arc::new(sled)
            }
        };
        let group_commit = match (config.durability, config.engine) {
            (Durability::Sync, Engine::Sled) => Some(GroupCommit::start(storage.clone())),
            _ => None,
        };
        let placement = Placement {
            storage: storage.clone(),
            group_commit: group_commit.clone(),
            data_dir: (config.engine == Engine::Sled).then(|| config.data_dir.clone()),
        };
        let cluster = Arc::new(
            open_cluster(
                &config,
                credentials.clone(),
                local_addr,
                placement,
                sled_db.map(|db| (db, crypt)),
            )
            .await?,
        );
        let shutdown = CancellationToken::new();
        if let Some(checkpoint) = &checkpoint {
            checkpoint.clone().watch(shutdown.clone());
        }
        cluster.watch(shutdown.clone());
        if let Some(credentials) = &credentials {
            credentials.clone().watch(shutdown.clone());
        }
        let rate = RateLimiter::new(Rates {
            requests: config.rate_limit_rps,
            bytes: config.rate_limit_bytes_per_sec,
            max_frame: config.max_frame,
        });
        let router = Router::new(
            cluster.clone(),
            checkpoint.clone(),
            cluster.registry().clone(),
        )
        .with_rate_limiter(rate);
        let load = Load::new(config.overload_inflight);
        let metrics_addr = match config.metrics_listen {
            Some(addr) => Some(
                crate::metrics::http::serve(addr, load.clone(), shutdown.clone())
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared {
            config,
            storage,
            group_commit,
            checkpoint,
            cluster,
            router,
            load,
            credentials,
        });
        let task = tokio::spawn(listener::accept_loop(
            listener,
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(RunningNode {
            metrics_addr,
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

    /// Where `/metrics` is served (with the real port), when `--metrics-listen` was given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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

    /// Re-read the token keyset and the denylist now (part of [`Self::reload`]). A file that
    /// fails to load is refused and the previous keyset or list stays in force; either way
    /// the outcome is logged.
    pub fn reload_keyset(&self) {
        if let Some(checkpoint) = &self.shared.checkpoint {
            checkpoint.reload_and_log();
        }
    }

    /// Re-read everything that reloads without a restart (what SIGHUP does): the token
    /// keyset, the denylist and the TLS certificate, key, CA bundle and CRLs. Whatever fails to load is
    /// refused and its previous version stays in force; each outcome is logged.
    pub fn reload(&self) {
        self.reload_keyset();
        if let Some(credentials) = &self.shared.credentials {
            credentials.reload_and_log();
        }
    }

    /// Resolves, with the reason, once the node can no longer serve safely: one of its Raft
    /// groups stopped on a storage error (a full disk, an I/O error). Such a group never
    /// recovers in-process, and a node that kept answering with it would only hold
    /// requests until they time out, so `skv-node` shuts down and exits with the reason:
    /// its peers carry on, and the node rejoins once restarted after the cause is fixed.
    /// Never resolves for a healthy node.
    pub async fn failed(&self) -> String {
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tick.tick().await;
            if let Some(reason) = self.shared.cluster.storage_failure() {
                return reason;
            }
        }
    }

    /// A token that, once cancelled, shuts the node down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The cluster name (flag, else the trust domain of the node's own certificate, else `skv`),
/// the peer dialer (TLS nodes only) and the map.
async fn open_cluster(
    config: &NodeConfig,
    credentials: Option<Arc<Credentials>>,
    local_addr: SocketAddr,
    placement: Placement,
    sled_db: Option<(sled::Db, Option<Arc<Crypt>>)>,
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
    let dialer = credentials.map(|credentials| {
        Dialer::with_credentials(credentials, &name).with_source(local_addr.ip())
    });
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| local_addr.to_string());
    // Every sled node runs its shards as Raft groups (one replica on a single node); the
    // memory and null engines keep unreplicated local shards, for tests and benchmarks.
    if let Some((db, crypt)) = sled_db {
        return Ok(Cluster::open_replicated(
            &config.name,
            &name,
            &advertise,
            config.cluster_map.as_deref(),
            placement,
            dialer,
            RaftSetup {
                db,
                election: config.election_timeout,
                snapshot_every: config.snapshot_every,
                crypt,
                read_cache: (config.read_cache_bytes > 0)
                    .then(|| crate::raft::read_cache::ReadCache::new(config.read_cache_bytes)),
            },
        )
        .await?);
    }
    Ok(Cluster::open(
        &config.name,
        &name,
        &advertise,
        config.cluster_map.as_deref(),
        placement,
        dialer,
    )?)
}
