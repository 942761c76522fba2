//! The replicated cluster: this node's Raft groups (the metadata group and one per shard it is a
//! replica of), started from the data dir and the bootstrap map, and kept in step with the map
//! the metadata group commits.
//!
//! # Starting
//!
//! On a fresh data dir the first node of the bootstrap map initializes the metadata group with
//! the map's first (up to) five nodes as voters and, once it leads, proposes the bootstrap map
//! as the group's first change. Each shard's first replica initializes its shard group with
//! the shard's replicas. Every other node waits to hear from those leaders. A node that
//! restarts finds its groups in its data dir and rejoins them; the map it serves is the one
//! its metadata replica has applied (the bootstrap file only counts until then).
//!
//! # Ownership
//!
//! A shard's state machine owns slots only after a [`Proposal::Own`] in its log. The leader of
//! each shard proposes `Own` for the slots the committed map gives the shard and the state
//! machine does not own yet, unless a slot move involving the shard is running (the move
//! proposes its own steps). Re-owning what the committed map assigns is always safe: a shard
//! loses slots only through a move that the map records.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};
use skv_proto::cluster::{ClusterMap, SlotSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::meta::{MapChange, MapOutcome, MapState};
use crate::net::peer::Dialer;
use crate::raft::log::Flusher;
use crate::raft::network::{Network, Peers};
use crate::raft::read_cache::ReadCache;
use crate::raft::rpc::RaftRegistry;
use crate::raft::state::{open_meta, open_shard};
use crate::raft::{Member, Outcome, Proposal, RaftGroup, META_GROUP};
use crate::shard::replica::Replica;
use crate::storage::atrest::Crypt;

/// Most voters of the metadata group: five survive two failures; more only slows it down.
const META_VOTERS: usize = 5;

/// Why the replicated cluster could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplicationError {
    /// A group's log or state machine could not be opened.
    #[error("cannot open the Raft state of group {group}: {reason}")]
    Open {
        /// The group.
        group: u32,
        /// What failed.
        reason: String,
    },
    /// openraft refused to start a group.
    #[error("cannot start Raft group {group}: {reason}")]
    Start {
        /// The group.
        group: u32,
        /// What failed.
        reason: String,
    },
    /// This node is not in the map, so it has no Raft id.
    #[error("node `{0}` is not in the cluster map; add it with `skv cluster add-node` first")]
    NotInMap(String),
}

/// A change proposed to the metadata group could not be decided.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProposeError {
    /// Another node leads the group.
    #[error("this node does not lead the metadata group")]
    NotLeader(Option<Member>),
    /// The group could not commit it (no quorum, shutting down).
    #[error("the metadata group could not commit the change: {0}")]
    Unavailable(String),
}

/// This node's Raft groups.
pub(crate) struct Replication {
    me: String,
    raft_id: u64,
    db: sled::Db,
    flusher: Flusher,
    /// Encryption at rest for the shards' groups (`None`: off).
    crypt: Option<Arc<Crypt>>,
    /// The read cache every shard group of this node reads through (`None`: off).
    read_cache: Option<Arc<ReadCache>>,
    config: Arc<Config>,
    peers: Peers,
    registry: RaftRegistry,
    meta: RaftGroup,
    state: watch::Receiver<Arc<MapState>>,
    replicas: Mutex<BTreeMap<u32, Arc<Replica>>>,
    /// A fresh cluster's first map (epoch 1), which whichever node first leads the metadata
    /// group commits; `None` when this node joined later.
    bootstrap: Option<ClusterMap>,
    /// Serializes opening groups.
    opening: tokio::sync::Mutex<()>,
    /// Local replicas the committed map no longer lists on this node, since when.
    unlisted: Mutex<BTreeMap<u32, std::time::Instant>>,
    /// Shards whose preferred leader this node is (their first replica) but which another
    /// node leads, since when this replica has been a caught-up follower.
    preferred: Mutex<BTreeMap<u32, std::time::Instant>>,
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("me", &self.me)
            .field("raft_id", &self.raft_id)
            .finish_non_exhaustive()
    }
}

/// The settings every group on a node shares: its timing knobs, and the data keys its shards
/// seal their logs, records and snapshots with.
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    /// Lower bound of the election timeout.
    pub(crate) election: Duration,
    /// Entries between snapshots.
    pub(crate) snapshot_every: u64,
    /// Encryption at rest: `None` when off.
    pub(crate) crypt: Option<Arc<Crypt>>,
    /// The node's read cache: `None` when off.
    pub(crate) read_cache: Option<Arc<ReadCache>>,
}

/// openraft's settings from the election timeout: heartbeats at a fifth of it, so a leader
/// survives a few lost heartbeats or a slow fsync before anyone stands for election.
pub(crate) fn raft_config(timing: &Timing) -> Result<Arc<Config>, String> {
    let min = (timing.election.as_millis() as u64).max(50);
    let config = Config {
        cluster_name: "skv".into(),
        heartbeat_interval: (min / 5).max(10),
        election_timeout_min: min,
        election_timeout_max: min * 2,
        // Snapshot every 20k entries (by default) and keep up to 1000 behind it, so a
        // follower that blinked catches up from the log and only a long-gone one needs a
        // snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        max_in_snapshot_log_to_keep: (timing.snapshot_every / 2).min(1_000),
        // Half the default peer frame (1 MiB), so a chunk and its envelope always fit.
        snapshot_max_chunk_size: 512 * 1024,
        // With batches of at most 64 KiB, 8 entries stay under the 1 MiB peer frame.
        max_payload_entries: 8,
        install_snapshot_timeout: 10_000,
        ..Config::default()
    };
    config.validate().map(Arc::new).map_err(|e| e.to_string())
}

fn members(map: &ClusterMap, ids: &[String]) -> BTreeMap<u64, Member> {
    ids.iter()
        .filter_map(|id| map.node(id))
        .map(|n| {
            (
                n.raft_id,
                Member {
                    node: n.id.clone(),
                    addr: n.addr.clone(),
                },
            )
        })
        .collect()
}

/// The metadata group's voters under `map`: its first [`META_VOTERS`] nodes.
fn meta_voters(map: &ClusterMap) -> Vec<String> {
    map.nodes
        .iter()
        .take(META_VOTERS)
        .map(|n| n.id.clone())
        .collect()
}

impl Replication {
    /// Open the metadata group and start it; initialize it when this node is the first of a
    /// fresh bootstrap map.
    pub(crate) async fn start(
        me: &str,
        db: sled::Db,
        bootstrap: &ClusterMap,
        dialer: Option<Dialer>,
        election: Timing,
        registry: RaftRegistry,
    ) -> Result<Arc<Replication>, ReplicationError> {
        let crypt = election.crypt.clone();
        let read_cache = election.read_cache.clone();
        let config = raft_config(&election).map_err(|reason| ReplicationError::Start {
            group: META_GROUP,
            reason,
        })?;
        let flusher = Flusher::new(db.clone());
        let (log, sm, state) =
            open_meta::<MapState>(&db, flusher.clone()).map_err(|e| ReplicationError::Open {
                group: META_GROUP,
                reason: e.to_string(),
            })?;
        // The map the node knows best: the committed one, else the bootstrap file.
        let known = state
            .borrow()
            .map
            .clone()
            .unwrap_or_else(|| bootstrap.clone());
        let raft_id = known
            .node(me)
            .map(|n| n.raft_id)
            .ok_or_else(|| ReplicationError::NotInMap(me.to_owned()))?;
        let peers = Peers::new(dialer);
        let meta = openraft::Raft::new(
            raft_id,
            config.clone(),
            Network::new(META_GROUP, peers.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| ReplicationError::Start {
            group: META_GROUP,
            reason: e.to_string(),
        })?;
        registry.register(META_GROUP, meta.clone());
        let replication = Arc::new(Replication {
            me: me.to_owned(),
            raft_id,
            db,
            flusher,
            crypt,
            read_cache,
            config,
            peers,
            registry,
            meta,
            state,
            replicas: Mutex::new(BTreeMap::new()),
            bootstrap: (bootstrap.epoch == 1).then(|| bootstrap.clone()),
            opening: tokio::sync::Mutex::new(()),
            unlisted: Mutex::new(BTreeMap::new()),
            preferred: Mutex::new(BTreeMap::new()),
        });
        // Only a fresh cluster's first map (epoch 1) bootstraps the metadata group; a node
        // that joins later is added to it by its leader.
        let first = bootstrap.nodes.first().map(|n| n.id.as_str()) == Some(me);
        if first && bootstrap.epoch == 1 && replication.state.borrow().map.is_none() {
            replication.initialize_meta(bootstrap).await;
        }
        Ok(replication)
    }

    async fn initialize_meta(self: &Arc<Self>, bootstrap: &ClusterMap) {
        let voters = members(bootstrap, &meta_voters(bootstrap));
        match self.meta.is_initialized().await {
            Ok(false) => {
                if let Err(err) = self.meta.initialize(voters.clone()).await {
                    tracing::warn!(error = %err, "could not initialize the metadata group");
                }
            }
            Ok(true) => {}
            Err(err) => tracing::warn!(error = %err, "metadata group stopped"),
        }
        if voters.len() == 1 {
            // A group of one elects itself at once: commit the map before serving.
            let leading = self
                .meta
                .wait(Some(Duration::from_secs(5)))
                .metrics(
                    |m| m.state == openraft::ServerState::Leader,
                    "leads the new metadata group",
                )
                .await;
            if leading.is_ok() {
                let change = MapChange::Bootstrap {
                    map: bootstrap.clone(),
                };
                if let Err(err) = self.propose_map(&change).await {
                    tracing::warn!(error = %err, "could not commit the bootstrap map");
                }
            }
        }
        // Otherwise whichever member first leads the group commits the map (the reconcile
        // loop), since every member of a fresh cluster has the same bootstrap file.
    }

    /// Whether `db` holds this node's Raft state from an earlier run (then the node knows its
    /// place even if its bootstrap file does not).
    pub(crate) fn has_state(db: &sled::Db) -> bool {
        db.tree_names()
            .iter()
            .any(|name| name.starts_with(b"raft/"))
    }

    /// Every group of this node, for the transport.
    pub(crate) fn registry(&self) -> &RaftRegistry {
        &self.registry
    }

    /// Whether this node leads the metadata group now, as far as it knows.
    pub(crate) fn leads_meta(&self) -> bool {
        let m = self.meta.metrics().borrow().clone();
        m.state == openraft::ServerState::Leader && m.current_leader == Some(self.raft_id)
    }

    /// The metadata group.
    pub(crate) fn meta(&self) -> &RaftGroup {
        &self.meta
    }

    /// The metadata state as applied here, and its changes.
    pub(crate) fn state(&self) -> watch::Receiver<Arc<MapState>> {
        self.state.clone()
    }

    /// The shard replicas this node hosts.
    /// Why this node can no longer take part in replication, if one of its Raft groups
    /// stopped on a storage error (a full disk, an I/O error): openraft stops a group for
    /// good when its log or state machine cannot be written, and only a restart (once the
    /// cause is fixed) brings it back. The message names the group and the error, never a
    /// key or a value.
    pub(crate) fn storage_failure(&self) -> Option<String> {
        let stopped = |group: u32, raft: &RaftGroup| match &raft.metrics().borrow().running_state {
            Err(openraft::error::Fatal::StorageError(e)) => Some(if group == META_GROUP {
                format!("the metadata group stopped on a storage error: {e}")
            } else {
                format!("the Raft group of shard {group} stopped on a storage error: {e}")
            }),
            _ => None,
        };
        stopped(META_GROUP, &self.meta).or_else(|| {
            self.replicas()
                .iter()
                .find_map(|r| stopped(r.shard(), r.raft()))
        })
    }

    pub(crate) fn replicas(&self) -> Vec<Arc<Replica>> {
        self.replicas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// The replica of `shard` on this node.
    pub(crate) fn replica(&self, shard: u32) -> Option<Arc<Replica>> {
        self.replicas
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&shard)
            .cloned()
    }

    /// Propose a map change to the metadata group through this node (which must lead it).
    pub(crate) async fn propose_map(&self, change: &MapChange) -> Result<MapOutcome, ProposeError> {
        let json = serde_json::to_vec(change).unwrap_or_default();
        let write = self.meta.client_write(Proposal::Meta { json });
        match tokio::time::timeout(Duration::from_secs(5), write).await {
            Ok(Ok(resp)) => match resp.data {
                Outcome::Meta(json) => serde_json::from_slice(&json)
                    .map_err(|e| ProposeError::Unavailable(format!("bad answer: {e}"))),
                other => Err(ProposeError::Unavailable(format!(
                    "unexpected answer {other:?}"
                ))),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ProposeError::NotLeader(f.leader_node))
            }
            Ok(Err(err)) => Err(ProposeError::Unavailable(err.to_string())),
            Err(_) => Err(ProposeError::Unavailable(
                "no quorum of the metadata group answered within 5s".into(),
            )),
        }
    }

    /// Open and start the replicas `map` gives this node and do not run yet; initialize the
    /// groups whose first replica this node is, when they are new.
    pub(crate) async fn open_replicas(self: &Arc<Self>, map: &ClusterMap) {
        let _opening = self.opening.lock().await;
        let mine: Vec<_> = map
            .shards
            .iter()
            .filter(|s| s.replicas.iter().any(|r| r == &self.me))
            .cloned()
            .collect();
        for shard in mine {
            if self.replica(shard.id).is_some() {
                continue;
            }
            match self.open_replica(map, shard.id, &shard.replicas).await {
                Ok(replica) => {
                    self.replicas
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(shard.id, replica);
                }
                Err(err) => tracing::error!(shard = shard.id, error = %err, "cannot open replica"),
            }
        }
    }

    async fn open_replica(
        self: &Arc<Self>,
        map: &ClusterMap,
        shard: u32,
        replicas: &[String],
    ) -> Result<Arc<Replica>, ReplicationError> {
        let (log, sm, reader) = open_shard(
            &self.db,
            shard,
            self.flusher.clone(),
            self.crypt.clone(),
            self.read_cache.as_ref(),
        )
        .map_err(|e| ReplicationError::Open {
            group: shard,
            reason: e.to_string(),
        })?;
        let raft = openraft::Raft::new(
            self.raft_id,
            self.config.clone(),
            Network::new(shard, self.peers.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| ReplicationError::Start {
            group: shard,
            reason: e.to_string(),
        })?;
        self.registry.register(shard, raft.clone());
        // The first replica creates the group, but only when the group is new: in a fresh
        // cluster's first map, or a shard created with this node as its only replica. A node
        // that replaces another in an existing group waits to be added by the group's leader.
        // A shard created later (by add-node) owns no slots yet: its first replica starts it
        // alone, and the group's membership then grows to the map's replicas (learners
        // first), like any membership change.
        let fresh_cluster = map.epoch == 1 || replicas.len() == 1;
        let empty_shard = map.ranges_of_shard(shard).is_empty();
        let initial: &[String] = if fresh_cluster {
            replicas
        } else {
            &replicas[..replicas.len().min(1)]
        };
        if replicas.first() == Some(&self.me)
            && (fresh_cluster || empty_shard)
            && !raft.is_initialized().await.unwrap_or(true)
        {
            if let Err(err) = raft.initialize(members(map, initial)).await {
                tracing::warn!(shard, error = %err, "could not initialize the shard group");
            } else if initial.len() == 1 {
                // A group of one elects itself at once: take the map's slots before the node
                // says it is listening, so its first request is served, not told to retry.
                own_when_leader(&raft, shard, map).await;
            }
        }
        // Twice the longest election timeout: by then the others have elected a new leader.
        let quorum_lost_after = Duration::from_millis(self.config.election_timeout_max * 2);
        Ok(Arc::new(Replica::start(
            shard,
            self.raft_id,
            raft,
            reader,
            quorum_lost_after,
        )))
    }

    /// Keep every led shard's ownership in step with the committed map (see the module docs),
    /// until `shutdown`.
    pub(crate) async fn reconcile(self: Arc<Self>, shutdown: CancellationToken) {
        // Often enough that a shard whose leader just changed takes its slots within one
        // client retry; each tick only compares two slot sets per led shard.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let state = self.state.borrow().clone();
            let Some(map) = state.map.as_ref() else {
                if let (true, Some(map)) = (self.leads_meta(), &self.bootstrap) {
                    let change = MapChange::Bootstrap { map: map.clone() };
                    if let Err(err) = self.propose_map(&change).await {
                        tracing::debug!(error = %err, "bootstrap map not committed yet");
                    }
                }
                continue;
            };
            if self.leads_meta() {
                let voters = members(map, &meta_voters(map));
                // Nodes past the first five follow the map as learners.
                let all: Vec<String> = map.nodes.iter().map(|n| n.id.clone()).collect();
                let learners: BTreeMap<u64, Member> = members(map, &all)
                    .into_iter()
                    .filter(|(id, _)| !voters.contains_key(id))
                    .collect();
                converge_membership(META_GROUP, &self.meta, voters, learners).await;
            }
            self.drop_unlisted(map).await;
            self.lead_where_preferred(map).await;
            for replica in self.replicas() {
                if !replica.is_leader() {
                    continue;
                }
                let id = replica.shard();
                if let Some(entry) = map.shard(id) {
                    let voters = members(map, &entry.replicas);
                    converge_membership(id, replica.raft(), voters, BTreeMap::new()).await;
                }
                let busy = state
                    .moving
                    .as_ref()
                    .is_some_and(|m| m.from == id || m.to == id);
                if busy {
                    continue;
                }
                let owned = replica.reader().owned();
                let mut missing = SlotSet::default();
                for range in map.ranges_of_shard(id) {
                    for slot in range.start..=range.end {
                        if !owned.contains(slot) {
                            missing.insert(slot);
                        }
                    }
                }
                if missing.is_empty() {
                    continue;
                }
                let slots = missing.ranges();
                tracing::info!(shard = id, slots = %skv_proto::cluster::format_ranges(&slots), "taking ownership of the slots the map gives this shard");
                let write = replica.raft().client_write(Proposal::Own { slots });
                if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(5), write).await {
                    tracing::debug!(shard = id, error = %err, "own proposal failed");
                }
            }
        }
    }

    /// Delete the local replicas the map has not listed on this node for [`UNLISTED_GRACE`]:
    /// the node was replaced in (or removed from) their groups, and their leaders have had the
    /// time to move membership to the map's replicas.
    async fn drop_unlisted(&self, map: &ClusterMap) {
        let mut gone = Vec::new();
        {
            let mut unlisted = self.unlisted.lock().unwrap_or_else(PoisonError::into_inner);
            for replica in self.replicas() {
                let id = replica.shard();
                let listed = map.shard(id).is_some_and(|s| s.replicas.contains(&self.me));
                if listed {
                    unlisted.remove(&id);
                    continue;
                }
                let since = *unlisted.entry(id).or_insert_with(std::time::Instant::now);
                if since.elapsed() >= UNLISTED_GRACE {
                    unlisted.remove(&id);
                    gone.push(replica);
                }
            }
        }
        for replica in gone {
            let id = replica.shard();
            tracing::info!(
                shard = id,
                "the map no longer lists this node as a replica: deleting it"
            );
            replica.shutdown().await;
            self.registry.unregister(id);
            self.replicas
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            drop(replica);
            let db = self.db.clone();
            let dropped = tokio::task::spawn_blocking(move || {
                crate::raft::state::destroy_shard(&db, id).is_ok()
            })
            .await;
            if !matches!(dropped, Ok(true)) {
                tracing::warn!(
                    shard = id,
                    "could not delete the replica's data; it stays unused"
                );
            }
        }
    }

    /// Spread leaders as the map does: a shard's first replica is its preferred leader (at
    /// init each node leads one shard). After a failover the leadership stays where it went;
    /// once the preferred replica has been a caught-up follower for [`PREFERRED_AFTER`], it
    /// stands for election, which an up-to-date log wins.
    async fn lead_where_preferred(&self, map: &ClusterMap) {
        let mut due = Vec::new();
        {
            let mut preferred = self
                .preferred
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for replica in self.replicas() {
                let id = replica.shard();
                let first = map.shard(id).and_then(|s| s.replicas.first());
                let m = replica.raft().metrics().borrow().clone();
                let caught_up = m.state == openraft::ServerState::Follower
                    && m.current_leader.is_some_and(|l| l != self.raft_id)
                    && m.last_applied.map(|l| l.index) == m.last_log_index;
                if first != Some(&self.me) || !caught_up {
                    preferred.remove(&id);
                    continue;
                }
                let since = *preferred.entry(id).or_insert_with(std::time::Instant::now);
                if since.elapsed() >= PREFERRED_AFTER {
                    preferred.remove(&id);
                    due.push(replica);
                }
            }
        }
        for replica in due {
            tracing::info!(
                shard = replica.shard(),
                "taking back the lead of a shard this node is the preferred leader of"
            );
            if let Err(err) = replica.raft().trigger().elect().await {
                tracing::debug!(error = %err, "could not stand for election");
            }
        }
    }

    /// Stop every group.
    pub(crate) async fn shutdown(&self) {
        for replica in self.replicas() {
            replica.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
        let db = self.db.clone();
        let _ = tokio::task::spawn_blocking(move || db.flush()).await;
    }
}

/// Wait (briefly) until this node leads `raft`, then propose `Own` for the slots `map` gives
/// `shard`. Best effort: the reconcile loop retries whatever this misses.
async fn own_when_leader(raft: &RaftGroup, shard: u32, map: &ClusterMap) {
    let slots = map.ranges_of_shard(shard);
    if slots.is_empty() {
        return;
    }
    let leading = raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(
            |m| m.state == openraft::ServerState::Leader,
            "leads its new group",
        )
        .await;
    if leading.is_err() {
        return;
    }
    let write = raft.client_write(Proposal::Own { slots });
    if let Ok(Err(err)) = tokio::time::timeout(Duration::from_secs(5), write).await {
        tracing::debug!(shard, error = %err, "own proposal failed");
    }
}

/// How long a shard's preferred leader waits as a caught-up follower before it takes the lead
/// back: long enough that a node that just restarted has settled.
const PREFERRED_AFTER: Duration = Duration::from_secs(5);

/// How long a replica the map no longer lists on this node is kept before it is deleted.
const UNLISTED_GRACE: Duration = Duration::from_secs(30);

/// How far behind its leader a new member may be when it is made a voter: close enough that
/// it does not hold back commits while it catches up the rest.
const CATCH_UP_LAG: u64 = 64;

/// On a group's leader: move the group's Raft membership one step towards `desired` (the map's
/// replicas). New members join as learners first and become voters, replacing the members the
/// map no longer names, only once they have caught up: a wiped or new node never counts
/// towards a quorum before it holds the log.
async fn converge_membership(
    group: u32,
    raft: &RaftGroup,
    desired: BTreeMap<u64, Member>,
    extra_learners: BTreeMap<u64, Member>,
) {
    if desired.is_empty() {
        return;
    }
    let m = raft.metrics().borrow().clone();
    let membership = m.membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let learners: BTreeSet<u64> = membership.learner_ids().collect();
    let want: BTreeSet<u64> = desired.keys().copied().collect();
    let want_learners: BTreeSet<u64> = extra_learners.keys().copied().collect();
    if voters == want && learners == want_learners {
        return;
    }
    // A joint configuration is still being committed: wait for it.
    if membership.get_joint_config().len() > 1 {
        return;
    }
    let timeout = Duration::from_secs(10);
    let missing = want.difference(&voters).chain(want_learners.iter());
    for id in missing {
        if learners.contains(id) || voters.contains(id) {
            continue;
        }
        let Some(node) = desired.get(id).or_else(|| extra_learners.get(id)).cloned() else {
            continue;
        };
        tracing::info!(group, member = %node, "adding a learner to the group");
        match tokio::time::timeout(timeout, raft.add_learner(*id, node, false)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::debug!(group, error = %err, "add learner failed"),
            Err(_) => tracing::debug!(group, "add learner timed out"),
        }
    }
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = want.difference(&voters).all(|id| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .is_some_and(|matched| last.saturating_sub(matched.index) <= CATCH_UP_LAG)
    });
    if !caught_up || voters == want {
        return;
    }
    tracing::info!(group, voters = ?want, "changing the group's voters to the map's replicas");
    match tokio::time::timeout(timeout, raft.change_membership(want, false)).await {
        Ok(Ok(_)) => tracing::info!(group, "membership changed"),
        Ok(Err(err)) => tracing::debug!(group, error = %err, "membership change failed"),
        Err(_) => tracing::debug!(group, "membership change timed out"),
    }
}
