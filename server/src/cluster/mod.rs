//! The node's place in the cluster: the cluster map it routes by, the shards the map gives it,
//! and the control plane that changes them.
//!
//! # Views
//!
//! A [`View`] is one map plus what this node derives from it for the request path: the local
//! shard replicas it hosts and their slots. The current view is swapped whole ([`ArcSwap`]),
//! so the router reads it without a lock. The view only routes: each shard's state machine
//! decides what it owns, in its log's order ([`crate::raft`]), so a request routed by a view
//! that just went stale is refused there rather than applied to a slot the shard gave up.
//!
//! # Replicated nodes (sled)
//!
//! Every shard is a Raft group, and the map is the state of the metadata group
//! ([`meta`]): a node's view is the map its metadata replica has applied ([`replicated`]),
//! changes are commands of that group ([`admin`]), and slot moves run through the logs
//! ([`moves`]). No map is ever pushed.
//!
//! # Fixed nodes (memory and null engines)
//!
//! A node with the memory or null engine serves unreplicated local [`Shard`]s under the map it
//! started with, for tests and transport benchmarks; its map never changes.

mod admin;
mod meta;
mod moves;
mod replicated;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use bytes::Bytes;
use skv_proto::cluster::{
    format_ranges, ClusterMap, ControlRequest, ControlResponse, NodeStatus, SlotSet,
};
use skv_proto::{ErrorCode, ResponseBody, WireError};
use tokio_util::sync::CancellationToken;

use crate::net::peer::Dialer;
use crate::shard::replica::Replica;
use crate::shard::Shard;

pub(crate) use self::replicated::Replication;
use crate::raft::rpc::RaftRegistry;
use crate::storage::{GroupCommit, Storage, StorageError};

/// File name of the persisted map inside the data dir.
pub(crate) const MAP_FILE: &str = "cluster-map.json";

/// One map and what this node derives from it for the request path.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) map: ClusterMap,
    /// Slots this node serves under `map`: the union of its shards' slots.
    pub(crate) owned: SlotSet,
    /// The shards this node serves under `map`, with their slots, by shard id.
    local: Vec<(SlotSet, Arc<Shard>)>,
    /// Replicated clusters: the shard replicas this node hosts under `map`, with their slots.
    replicas: Vec<(SlotSet, Arc<Replica>)>,
    /// Whether the node's shards are Raft groups (sled engine) rather than local shards.
    replicated: bool,
}

impl View {
    pub(crate) fn epoch(&self) -> u64 {
        self.map.epoch
    }

    /// The local shard owning `slot` under this map.
    pub(crate) fn shard_for(&self, slot: u16) -> Option<&Arc<Shard>> {
        self.local
            .iter()
            .find(|(slots, _)| slots.contains(slot))
            .map(|(_, shard)| shard)
    }

    /// Every shard this node serves, by id.
    pub(crate) fn local_shards(&self) -> impl Iterator<Item = &Arc<Shard>> {
        self.local.iter().map(|(_, shard)| shard)
    }

    /// Whether this node's shards are replicated (then [`View::replica_for`] routes).
    pub(crate) fn replicated(&self) -> bool {
        self.replicated
    }

    /// The local replica of the shard owning `slot` under this map.
    pub(crate) fn replica_for(&self, slot: u16) -> Option<&Arc<Replica>> {
        self.replicas
            .iter()
            .find(|(slots, _)| slots.contains(slot))
            .map(|(_, replica)| replica)
    }

    /// Every local replica.
    pub(crate) fn local_replicas(&self) -> impl Iterator<Item = &Arc<Replica>> {
        self.replicas.iter().map(|(_, r)| r)
    }
}

/// Why a node cannot take its place in the cluster at start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterSetupError {
    /// The bootstrap or persisted map cannot be read or is invalid.
    #[error("cannot use the cluster map {path}: {reason}")]
    Map {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The shards the map gives this node could not be opened.
    #[error("cannot open this node's shards")]
    Storage {
        /// What storage reported.
        #[source]
        source: StorageError,
    },
    /// The Raft groups could not start.
    #[error("cannot start replication: {reason}")]
    Replication {
        /// What failed.
        reason: String,
    },
    /// The map belongs to another cluster.
    #[error("the cluster map {path} is for cluster `{found}`, but this node is in `{expected}`")]
    WrongCluster {
        /// The file.
        path: PathBuf,
        /// Cluster named in the map.
        found: String,
        /// This node's cluster.
        expected: String,
    },
}

/// The node's cluster state, shared by every connection.
#[derive(Debug)]
pub(crate) struct Cluster {
    me: String,
    name: String,
    /// The current view; swapped whole, so the request path reads it without a lock.
    view: ArcSwap<View>,
    /// The epoch of the current view, for control requests that wait until this node serves
    /// the map change they committed (see [`Cluster::await_installed`]).
    installed: tokio::sync::watch::Sender<u64>,
    /// Serializes installs of new maps (and their persisting).
    install_lock: Mutex<()>,
    /// Every shard opened on this node, served or not, by id.
    hosted: Mutex<BTreeMap<u32, Arc<Shard>>>,
    /// Where the map is persisted (`None` for engines without a data dir).
    persist: Option<PathBuf>,
    /// Dials peers; `None` without TLS credentials (plaintext nodes serve a fixed map).
    dialer: Option<Dialer>,
    storage: Arc<dyn Storage>,
    group_commit: Option<GroupCommit>,
    /// One move or membership change at a time on this node.
    change_lock: tokio::sync::Mutex<()>,
    /// The Raft groups of a replicated node (sled engine); empty until the node is in the
    /// map (a node started before `skv cluster add-node` joins once it is added).
    repl: arc_swap::ArcSwapOption<Replication>,
    /// Every Raft group this node runs, for the transport (shared with [`Replication`]).
    registry: RaftRegistry,
    /// For a replicated node still waiting to be added: its database and election timeout.
    joining: Mutex<Option<(sled::Db, replicated::Timing)>>,
}

/// What a replicated node's Raft groups need: the sled database their logs and state machines
/// live in, and the election timeout.
#[derive(Debug)]
pub(crate) struct RaftSetup {
    pub(crate) db: sled::Db,
    pub(crate) election: std::time::Duration,
    pub(crate) snapshot_every: u64,
    /// The data keys of encryption at rest; `None` when off.
    pub(crate) crypt: Option<Arc<crate::storage::atrest::Crypt>>,
    /// The read cache in front of the shards' trees; `None` when off.
    pub(crate) read_cache: Option<Arc<crate::raft::read_cache::ReadCache>>,
}

/// Where a node keeps its data and how it makes writes durable.
#[derive(Debug)]
pub(crate) struct Placement {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) group_commit: Option<GroupCommit>,
    /// The data dir the map is persisted in (`None` for engines without one).
    pub(crate) data_dir: Option<PathBuf>,
}

impl Cluster {
    /// Load the map (the newer of the bootstrap file and the persisted copy, or a one-node
    /// map) for node `me` of cluster `name`, and open the shards it gives this node.
    pub(crate) fn open(
        me: &str,
        name: &str,
        advertise: &str,
        bootstrap: Option<&Path>,
        placement: Placement,
        dialer: Option<Dialer>,
    ) -> Result<Cluster, ClusterSetupError> {
        let mut map = match bootstrap {
            Some(path) => read_map(path, name)?,
            None => ClusterMap::single(name, me, advertise),
        };
        let persist = placement.data_dir.map(|d| d.join(MAP_FILE));
        if let Some(path) = persist.as_deref().filter(|p| p.exists()) {
            let saved = read_map(path, name)?;
            if saved.epoch > map.epoch {
                tracing::info!(
                    epoch = saved.epoch,
                    "using the cluster map persisted in the data dir"
                );
                map = saved;
            }
        }
        match map.node(me) {
            None => tracing::warn!(
                node = me,
                epoch = map.epoch,
                "this node is not in the cluster map: it serves no slots until it is added \
                 (`skv cluster add-node`)"
            ),
            Some(entry) if entry.addr != advertise => tracing::warn!(
                node = me,
                map_addr = %entry.addr,
                advertise,
                "the cluster map lists another address for this node; clients will dial that one"
            ),
            Some(_) => {}
        }
        let cluster = Cluster {
            me: me.to_owned(),
            name: name.to_owned(),
            view: ArcSwap::from_pointee(View {
                map: map.clone(),
                owned: SlotSet::default(),
                local: Vec::new(),
                replicas: Vec::new(),
                replicated: false,
            }),
            installed: tokio::sync::watch::Sender::new(0),
            install_lock: Mutex::new(()),
            hosted: Mutex::new(BTreeMap::new()),
            persist,
            dialer,
            storage: placement.storage,
            group_commit: placement.group_commit,
            change_lock: tokio::sync::Mutex::new(()),
            repl: arc_swap::ArcSwapOption::empty(),
            registry: RaftRegistry::default(),
            joining: Mutex::new(None),
        };
        let view = cluster
            .build_view(map)
            .map_err(|source| ClusterSetupError::Storage { source })?;
        cluster.swap_in(view);
        let view = cluster.view();
        tracing::info!(
            epoch = view.epoch(),
            slots = %format_ranges(&view.owned.ranges()),
            shards = ?view.local_shards().map(|s| s.id()).collect::<Vec<_>>(),
            "cluster map loaded"
        );
        Ok(cluster)
    }

    /// Open a replicated node (sled engine): start its metadata group and the shard groups
    /// the map gives it (see [`replicated`]).
    pub(crate) async fn open_replicated(
        me: &str,
        name: &str,
        advertise: &str,
        bootstrap: Option<&Path>,
        placement: Placement,
        dialer: Option<Dialer>,
        raft: RaftSetup,
    ) -> Result<Cluster, ClusterSetupError> {
        let RaftSetup {
            db,
            election,
            snapshot_every,
            crypt,
            read_cache,
        } = raft;
        let election = replicated::Timing {
            election,
            snapshot_every,
            crypt,
            read_cache,
        };
        let mut bootstrap_map = match bootstrap {
            Some(path) => read_map(path, name)?,
            None => ClusterMap::single(name, me, advertise),
        };
        if bootstrap_map.node(me).is_none() {
            // A node added or swapped in after `skv cluster init`: its map is the cluster's.
            if let Some(map) = fetch_map(dialer.as_ref(), &bootstrap_map, me).await {
                bootstrap_map = map;
            }
        }
        let registry = RaftRegistry::default();
        let cluster = Cluster {
            me: me.to_owned(),
            name: name.to_owned(),
            view: ArcSwap::from_pointee(View {
                map: bootstrap_map.clone(),
                owned: SlotSet::default(),
                local: Vec::new(),
                replicas: Vec::new(),
                replicated: true,
            }),
            installed: tokio::sync::watch::Sender::new(0),
            install_lock: Mutex::new(()),
            hosted: Mutex::new(BTreeMap::new()),
            persist: placement.data_dir.map(|d| d.join(MAP_FILE)),
            dialer: dialer.clone(),
            storage: placement.storage,
            group_commit: placement.group_commit,
            change_lock: tokio::sync::Mutex::new(()),
            repl: arc_swap::ArcSwapOption::empty(),
            registry: registry.clone(),
            joining: Mutex::new(None),
        };
        if bootstrap_map.node(me).is_none() && !Replication::has_state(&db) {
            tracing::warn!(
                node = me,
                "this node is not in the cluster map: it serves no slots and joins once it is \
                 added (`skv cluster add-node`)"
            );
            *cluster
                .joining
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some((db, election));
            return Ok(cluster);
        }
        let repl = Replication::start(me, db, &bootstrap_map, dialer, election, registry)
            .await
            .map_err(|e| ClusterSetupError::Replication {
                reason: e.to_string(),
            })?;
        let committed = repl.state().borrow().map.clone();
        let map = committed.unwrap_or(bootstrap_map);
        if map.cluster != name {
            return Err(ClusterSetupError::WrongCluster {
                path: bootstrap.map(Path::to_owned).unwrap_or_default(),
                found: map.cluster,
                expected: name.to_owned(),
            });
        }
        repl.open_replicas(&map).await;
        cluster.repl.store(Some(repl));
        cluster.swap_in(cluster.replicated_view(map));
        let view = cluster.view();
        tracing::info!(
            epoch = view.epoch(),
            shards = ?view.local_replicas().map(|r| r.shard()).collect::<Vec<_>>(),
            "replicated cluster started"
        );
        Ok(cluster)
    }

    /// For a node started before it was added to the map: ask the other nodes for the map
    /// five times a second, and start the Raft groups once it names this node.
    async fn join_when_added(self: Arc<Self>, shutdown: CancellationToken) {
        let Some((db, election)) = self
            .joining
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let map = loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
            let known = self.view().map.clone();
            if let Some(map) = fetch_map(self.dialer.as_ref(), &known, &self.me).await {
                break map;
            }
        };
        let started = Replication::start(
            &self.me,
            db,
            &map,
            self.dialer.clone(),
            election,
            self.registry.clone(),
        )
        .await;
        let repl = match started {
            Ok(repl) => repl,
            Err(err) => {
                tracing::error!(error = %err, "cannot join the cluster");
                return;
            }
        };
        repl.open_replicas(&map).await;
        self.repl.store(Some(repl));
        self.swap_in(self.replicated_view(map));
        tracing::info!(epoch = self.view().epoch(), "joined the cluster");
        self.start_replication_tasks(shutdown);
    }

    /// The replicated node's background work: follow the metadata group, keep led shards'
    /// ownership and membership in step with the map, and run slot moves.
    fn start_replication_tasks(self: &Arc<Self>, shutdown: CancellationToken) {
        let Some(repl) = self.repl.load_full() else {
            return;
        };
        tokio::spawn(self.clone().follow_meta(shutdown.clone()));
        tokio::spawn(repl.clone().reconcile(shutdown.clone()));
        tokio::spawn(moves::drive(
            repl,
            crate::raft::forward::Forwarder::new(self.dialer.clone()),
            shutdown,
        ));
    }

    /// Every Raft group this node runs, for the transport.
    pub(crate) fn registry(&self) -> &RaftRegistry {
        &self.registry
    }

    /// The view of `map` for a replicated node: its replicas and their slots.
    fn replicated_view(&self, map: ClusterMap) -> View {
        let mut owned = SlotSet::default();
        let mut replicas = Vec::new();
        if let Some(repl) = self.repl.load_full() {
            for entry in map.shards.iter().filter(|s| s.replicas.contains(&self.me)) {
                let Some(replica) = repl.replica(entry.id) else {
                    continue;
                };
                let ranges = map.ranges_of_shard(entry.id);
                for r in &ranges {
                    for slot in r.start..=r.end {
                        owned.insert(slot);
                    }
                }
                replicas.push((SlotSet::from_ranges(&ranges), replica));
            }
        }
        View {
            map,
            owned,
            local: Vec::new(),
            replicas,
            replicated: true,
        }
    }

    /// The Raft groups of a replicated node.
    pub(crate) fn replication(&self) -> Option<Arc<Replication>> {
        self.repl.load_full()
    }

    /// Follow the metadata group: every map it commits becomes this node's view (opening the
    /// replicas it newly gives the node).
    async fn follow_meta(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(repl) = self.repl.load_full() else {
            return;
        };
        let mut state = repl.state();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = state.changed() => if changed.is_err() { return },
            }
            let map = state.borrow_and_update().map.clone();
            let Some(map) = map else { continue };
            let current = self.view();
            let replicas_missing = map
                .shards
                .iter()
                .filter(|s| s.replicas.contains(&self.me))
                .any(|s| repl.replica(s.id).is_none());
            if map.epoch <= current.epoch() && !replicas_missing && current.map == map {
                continue;
            }
            repl.open_replicas(&map).await;
            let view = self.replicated_view(map);
            tracing::info!(
                epoch = view.epoch(),
                "installed the map the metadata group committed"
            );
            let _serial = self
                .install_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.swap_in(view);
            self.persist();
        }
    }

    /// Start a replicated node's background work (or, for a node not in the map yet, the
    /// wait to be added). A node with a fixed map (memory or null engine) has none.
    pub(crate) fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        if !self.view().replicated() {
            return;
        }
        if self.repl.load().is_some() {
            self.start_replication_tasks(shutdown);
        } else {
            tokio::spawn(self.clone().join_when_added(shutdown));
        }
    }

    /// See [`Replication::storage_failure`]; `None` for a node without Raft groups.
    pub(crate) fn storage_failure(&self) -> Option<String> {
        self.repl.load().as_ref()?.storage_failure()
    }

    /// The cluster name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The current view.
    pub(crate) fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Wait, for at most `limit`, until this node serves a map of at least `epoch`. A map
    /// change is committed before this node installs it (the install opens replicas first),
    /// so without this wait an administrator's next request here could still see the old map:
    /// `add-node` then `rebalance` would plan without the node just added. Returns whether the
    /// map arrived; the change stands either way.
    pub(crate) async fn await_installed(&self, epoch: u64, limit: std::time::Duration) -> bool {
        let mut installed = self.installed.subscribe();
        let arrived = tokio::time::timeout(limit, installed.wait_for(|now| *now >= epoch))
            .await
            .is_ok_and(|seen| seen.is_ok());
        arrived
    }

    /// The current view for the length of one request: no reference count is touched, so
    /// concurrent requests do not contend on the view's cache line. Do not hold it across an
    /// `.await`.
    pub(crate) fn view_now(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// The view of `map` for this node, opening the shards it newly gives us.
    fn build_view(&self, map: ClusterMap) -> Result<View, StorageError> {
        let mut hosted = self.hosted.lock().unwrap_or_else(PoisonError::into_inner);
        let mut local = Vec::new();
        let mut owned = SlotSet::default();
        for entry in map.shards_served_by(&self.me) {
            let shard = match hosted.get(&entry.id) {
                Some(shard) => shard.clone(),
                None => {
                    let shard = Arc::new(Shard::open(
                        entry.id,
                        self.storage.as_ref(),
                        self.group_commit.clone(),
                    )?);
                    hosted.insert(entry.id, shard.clone());
                    shard
                }
            };
            let ranges = map.ranges_of_shard(entry.id);
            for r in &ranges {
                for slot in r.start..=r.end {
                    owned.insert(slot);
                }
            }
            local.push((SlotSet::from_ranges(&ranges), shard));
        }
        Ok(View {
            map,
            owned,
            local,
            replicas: Vec::new(),
            replicated: false,
        })
    }

    /// Make `view` current: the view first, then each shard's own slots. A request that saw
    /// the old view and reaches a shard already changed is refused by the shard and answered
    /// from the new view (see the router), never applied to a slot the shard gave up.
    fn swap_in(&self, view: View) {
        let view = Arc::new(view);
        self.view.store(view.clone());
        self.installed.send_replace(view.epoch());
        let hosted = self.hosted.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, shard) in hosted.iter() {
            let slots = view
                .local
                .iter()
                .find(|(_, s)| s.id() == *id)
                .map(|(slots, _)| slots.clone())
                .unwrap_or_default();
            shard.set_slots(slots);
        }
    }

    /// The MAP answer.
    pub(crate) fn map_answer(&self) -> ResponseBody {
        let view = self.view();
        ResponseBody::Map {
            epoch: view.epoch(),
            json: Bytes::from(view.map.to_json()),
        }
    }

    /// Write the current map to the data dir (atomically: temp file, fsync, rename). Called
    /// with the install lock held, so the newest map is the one left on disk.
    fn persist(&self) {
        let Some(path) = &self.persist else { return };
        let json = self.view().map.to_json();
        let tmp = path.with_extension("json.tmp");
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&json)?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(err) = written {
            tracing::error!(error = %err, path = %path.display(), "cannot persist the cluster map");
        }
    }

    /// Handle a control request. The caller has already checked who may send it.
    pub(crate) async fn control(self: Arc<Self>, request: ControlRequest) -> ResponseBody {
        let name = request.name();
        if self.view().replicated() {
            return self.clone().control_replicated(request).await;
        }
        let result = match request {
            ControlRequest::Status => self.status().await,
            // The memory and null engines run one unreplicated node with a fixed map: there is
            // no metadata group to change it, and no node may push one.
            ControlRequest::SetMap { .. } => Err(WireError::new(
                ErrorCode::Forbidden,
                "cluster maps are never pushed: they change only through the metadata group of \
                 a replicated (sled) cluster",
            )),
            other => Err(WireError::new(
                ErrorCode::ClusterState,
                format!(
                    "`{}` needs a replicated node (--engine sled); this node's map is fixed \
                     (memory or null engine)",
                    other.name()
                ),
            )),
        };
        match result {
            Ok(resp) => control_body(&resp),
            Err(err) => {
                tracing::warn!(request = name, error = %err, "control request failed");
                ResponseBody::Error(err)
            }
        }
    }

    async fn status(&self) -> Result<ControlResponse, WireError> {
        let view = self.view();
        let shards: Vec<Arc<Shard>> = view.local_shards().cloned().collect();
        let keys = tokio::task::spawn_blocking(move || {
            shards
                .iter()
                .map(|s| s.count_keys())
                .sum::<Result<u64, StorageError>>()
        })
        .await
        .map_err(|_| internal("status task failed"))?
        .map_err(|e| storage_wire(&e))?;
        Ok(ControlResponse::Status(NodeStatus {
            node: self.me.clone(),
            epoch: view.epoch(),
            keys,
            ranges: view.owned.ranges(),
            migrating: None,
            replicas: Vec::new(),
        }))
    }
}

/// The newest map any node of `known` serves that names `me` (for a node that joins after its
/// bootstrap file was written).
async fn fetch_map(dialer: Option<&Dialer>, known: &ClusterMap, me: &str) -> Option<ClusterMap> {
    let dialer = dialer?;
    let mut best: Option<ClusterMap> = None;
    for node in known.nodes.iter().filter(|n| n.id != me) {
        let fetched = async { dialer.connect(node).await?.map().await };
        match tokio::time::timeout(std::time::Duration::from_secs(5), fetched).await {
            Ok(Ok(map)) if map.node(me).is_some() && map.cluster == known.cluster => {
                if best.as_ref().is_none_or(|b| map.epoch > b.epoch) {
                    best = Some(map);
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(node = %node.id, error = %err, "cannot fetch the map"),
            Err(_) => tracing::debug!(node = %node.id, "fetching the map timed out"),
        }
    }
    if let Some(map) = &best {
        tracing::info!(
            epoch = map.epoch,
            "joined with the cluster's map fetched from a peer"
        );
    }
    best
}

fn read_map(path: &Path, cluster: &str) -> Result<ClusterMap, ClusterSetupError> {
    let json = std::fs::read(path).map_err(|e| ClusterSetupError::Map {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let map = ClusterMap::from_json(&json).map_err(|e| ClusterSetupError::Map {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if map.cluster != cluster {
        return Err(ClusterSetupError::WrongCluster {
            path: path.to_owned(),
            found: map.cluster,
            expected: cluster.to_owned(),
        });
    }
    Ok(map)
}

pub(crate) fn control_body(resp: &ControlResponse) -> ResponseBody {
    ResponseBody::Control {
        json: Bytes::from(resp.to_json()),
    }
}

fn internal(msg: &str) -> WireError {
    WireError::new(ErrorCode::Internal, msg)
}

fn storage_wire(err: &StorageError) -> WireError {
    tracing::error!(error = ?err, "storage failed during a cluster operation");
    WireError::new(
        ErrorCode::Storage,
        "the node's storage failed during a cluster operation",
    )
}
