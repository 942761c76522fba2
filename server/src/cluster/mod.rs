//! The node's place in the cluster: which slots it serves, the cluster map it routes by, and
//! the control plane that changes them (map distribution, slot moves, status).
//!
//! # Routing and the slot fence
//!
//! Every keyed request is checked against the map *under a read lock* ([`Cluster::serve`]):
//! a slot this node does not serve is answered with MOVED, a write to a slot that is being
//! handed over is recorded as dirty, and any request for it is answered with TRYAGAIN while
//! the hand-over is fenced. The lock is what makes slot moves exact: the mover takes it for writing to start a
//! move, to fence it and to flip ownership, so no request can have checked ownership against
//! one map and executed against another. Readers never block each other; the write lock is
//! taken a handful of times per move and held for microseconds.
//!
//! # Maps
//!
//! A node keeps the map with the largest epoch it has seen: its bootstrap file, the copy it
//! persisted in its data dir, maps pushed by peers, and maps it pulls from a peer every few
//! seconds ([`sync`]), which heals a node that missed a push while it was down.

mod migrate;
mod peer;
mod sync;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use bytes::Bytes;
use skv_proto::cluster::{
    format_ranges, hash_slot, ClusterMap, ControlRequest, ControlResponse, Migrating, NodeStatus,
    SlotRange, SlotSet,
};
use skv_proto::{ErrorCode, ResponseBody, ScanEntry, WireError};
use tokio_util::sync::CancellationToken;

use crate::storage::{Storage, StorageError};

pub(crate) use peer::{Dialer, PEER_FRAME_SLACK};

/// File name of the persisted map inside the data dir.
pub(crate) const MAP_FILE: &str = "cluster-map.json";

/// One map and what this node derives from it for the request path.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) map: ClusterMap,
    /// Slots this node serves under `map`.
    pub(crate) owned: SlotSet,
}

impl View {
    fn new(map: ClusterMap, me: &str) -> View {
        let owned = map.slots_of_node(me);
        View { map, owned }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.map.epoch
    }
}

/// A hand-over of slots from this node, while it copies them.
#[derive(Debug)]
struct Migration {
    to: String,
    ranges: Vec<SlotRange>,
    slots: SlotSet,
    /// Writes are refused with TRYAGAIN: the last dirty keys are being copied and ownership
    /// is about to flip.
    fenced: bool,
    /// Keys written to the moving slots since the move began (copied again at the fence).
    dirty: Mutex<HashSet<Bytes>>,
}

#[derive(Debug)]
struct RouteState {
    view: Arc<View>,
    migration: Option<Migration>,
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
    state: RwLock<RouteState>,
    /// Where the map is persisted (`None` for engines without a data dir).
    persist: Option<PathBuf>,
    persist_lock: Mutex<()>,
    /// Dials peers; `None` without TLS credentials (plaintext nodes serve a fixed map).
    dialer: Option<Dialer>,
    storage: Arc<dyn Storage>,
    /// One move or membership change at a time on this node.
    change_lock: tokio::sync::Mutex<()>,
    /// Held while deleting the keys of slots handed away, so an import into the same slots
    /// waits for it.
    cleanup_lock: tokio::sync::Mutex<()>,
}

impl Cluster {
    /// Load the map (the newer of the bootstrap file and the persisted copy, or a one-node
    /// map) for node `me` of cluster `name`.
    pub(crate) fn open(
        me: &str,
        name: &str,
        advertise: &str,
        bootstrap: Option<&Path>,
        data_dir: Option<&Path>,
        dialer: Option<Dialer>,
        storage: Arc<dyn Storage>,
    ) -> Result<Cluster, ClusterSetupError> {
        let mut map = match bootstrap {
            Some(path) => read_map(path, name)?,
            None => ClusterMap::single(name, me, advertise),
        };
        let persist = data_dir.map(|d| d.join(MAP_FILE));
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
        let view = View::new(map, me);
        tracing::info!(
            epoch = view.epoch(),
            slots = %format_ranges(&view.owned.ranges()),
            "cluster map loaded"
        );
        Ok(Cluster {
            me: me.to_owned(),
            name: name.to_owned(),
            state: RwLock::new(RouteState {
                view: Arc::new(view),
                migration: None,
            }),
            persist,
            persist_lock: Mutex::new(()),
            dialer,
            storage,
            change_lock: tokio::sync::Mutex::new(()),
            cleanup_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// Start the background map sync with peers.
    pub(crate) fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        if self.dialer.is_some() {
            tokio::spawn(sync::run(self.clone(), shutdown));
        }
    }

    /// The cluster name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    fn read(&self) -> RwLockReadGuard<'_, RouteState> {
        // Every critical section is a few assignments that cannot panic halfway, so a
        // poisoned lock still guards consistent state.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RouteState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current view.
    pub(crate) fn view(&self) -> Arc<View> {
        self.read().view.clone()
    }

    /// Run `op` on `key` if this node serves its slot, else answer MOVED. Writes to a slot on
    /// the move are recorded for the final copy; once the move is fenced, reads and writes of
    /// its slots get TRYAGAIN until ownership flips. Reads too: the receiver installs the new
    /// map a moment before this node does, and from then on it may accept writes this node
    /// would not see, so a read here could return an overwritten value. See the module docs
    /// for why `op` runs under the read lock.
    pub(crate) fn serve<R>(
        &self,
        key: &[u8],
        write: bool,
        op: impl FnOnce() -> R,
    ) -> Result<R, ResponseBody> {
        let slot = hash_slot(key);
        let state = self.read();
        if !state.view.owned.contains(slot) {
            return Err(moved(&state.view, slot));
        }
        if let Some(m) = state.migration.as_ref().filter(|m| m.slots.contains(slot)) {
            if m.fenced {
                return Err(ResponseBody::Error(WireError::new(
                    ErrorCode::TryAgain,
                    format!(
                        "slot {slot} is being handed to node {}; retry shortly",
                        m.to
                    ),
                )));
            }
            if write {
                let result = op();
                m.dirty
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(Bytes::copy_from_slice(key));
                return Ok(result);
            }
        }
        Ok(op())
    }

    /// Run `op` with the slots this node serves and the map's epoch, under the read lock (a
    /// scan page filtered with one consistent view).
    pub(crate) fn with_owned<R>(&self, op: impl FnOnce(&SlotSet, u64) -> R) -> R {
        let state = self.read();
        op(&state.view.owned, state.view.epoch())
    }

    /// The MAP answer.
    pub(crate) fn map_answer(&self) -> ResponseBody {
        let view = self.view();
        ResponseBody::Map {
            epoch: view.epoch(),
            json: Bytes::from(view.map.to_json()),
        }
    }

    /// Install `map` if it is newer than ours and of our cluster; persist it. Returns whether
    /// it was installed.
    pub(crate) fn install(&self, map: ClusterMap) -> Result<bool, WireError> {
        if map.cluster != self.name {
            return Err(WireError::new(
                ErrorCode::ClusterState,
                format!(
                    "map of cluster `{}` refused by a node of cluster `{}`",
                    map.cluster, self.name
                ),
            ));
        }
        {
            let mut state = self.write();
            if map.epoch <= state.view.epoch() {
                return Ok(false);
            }
            let before = state.view.owned.ranges();
            let view = View::new(map, &self.me);
            let after = view.owned.ranges();
            tracing::info!(
                epoch = view.epoch(),
                slots = %format_ranges(&after),
                changed = before != after,
                "installed a new cluster map"
            );
            state.view = Arc::new(view);
        }
        self.persist();
        Ok(true)
    }

    /// Write the current map to the data dir (atomically: temp file, fsync, rename).
    fn persist(&self) {
        let Some(path) = &self.persist else { return };
        let _serial = self
            .persist_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Re-read under the persist lock, so concurrent installs leave the newest on disk.
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

    /// Apply an IMPORT from a peer: entries keep their versions. Refused for slots this node
    /// serves, so a confused peer can never overwrite live data.
    pub(crate) fn import(&self, entries: Vec<ScanEntry>, deleted: Vec<Bytes>) -> ResponseBody {
        let result = (|| -> Result<ControlResponse, ImportError> {
            {
                let state = self.read();
                let live = entries
                    .iter()
                    .map(|e| &e.key)
                    .chain(deleted.iter())
                    .map(|k| hash_slot(k))
                    .find(|slot| state.view.owned.contains(*slot));
                if let Some(slot) = live {
                    return Err(ImportError::Owned(slot));
                }
            }
            for entry in &entries {
                self.storage
                    .import(&entry.key, entry.version, &entry.value)?;
            }
            let mut removed = 0;
            for key in &deleted {
                removed += u64::from(self.storage.delete(key)?);
            }
            Ok(ControlResponse::Imported {
                written: entries.len() as u64,
                removed,
            })
        })();
        match result {
            Ok(resp) => control_body(&resp),
            Err(ImportError::Owned(slot)) => ResponseBody::Error(WireError::new(
                ErrorCode::ClusterState,
                format!("slot {slot} is served by this node; refusing to import over it"),
            )),
            Err(ImportError::Storage(err)) => storage_failure(&err),
        }
    }

    /// Handle a control request. The caller has already checked who may send it.
    pub(crate) async fn control(self: Arc<Self>, request: ControlRequest) -> ResponseBody {
        let name = request.name();
        let result = match request {
            ControlRequest::SetMap { map } => self.install(map).map(|_| ControlResponse::Map {
                map: self.view().map.clone(),
            }),
            ControlRequest::ImportBegin { ranges } => self.import_begin(ranges).await,
            ControlRequest::ImportFlush => {
                let storage = self.storage.clone();
                match tokio::task::spawn_blocking(move || storage.flush()).await {
                    Ok(Ok(())) => Ok(ControlResponse::Ok),
                    Ok(Err(err)) => Err(storage_wire(&err)),
                    Err(_) => Err(internal("flush task failed")),
                }
            }
            ControlRequest::Status => self.status().await,
            ControlRequest::AddNode { id, addr } => self.add_node(id, addr).await,
            ControlRequest::MoveSlots { ranges, to } => {
                migrate::move_slots(self.clone(), ranges, to).await
            }
        };
        match result {
            Ok(resp) => control_body(&resp),
            Err(err) => {
                tracing::warn!(request = name, error = %err, "control request failed");
                ResponseBody::Error(err)
            }
        }
    }

    /// Drop stale copies of slots about to be imported (left by an earlier, aborted move).
    async fn import_begin(&self, ranges: Vec<SlotRange>) -> Result<ControlResponse, WireError> {
        let slots = SlotSet::from_ranges(&ranges);
        let overlap: Vec<SlotRange> = {
            let view = self.view();
            let mut both = SlotSet::default();
            for r in slots.ranges() {
                for s in r.start..=r.end {
                    if view.owned.contains(s) {
                        both.insert(s);
                    }
                }
            }
            both.ranges()
        };
        if !overlap.is_empty() {
            return Err(WireError::new(
                ErrorCode::ClusterState,
                format!(
                    "this node already serves slots {}; refusing to import them",
                    format_ranges(&overlap)
                ),
            ));
        }
        let _cleanup = self.cleanup_lock.lock().await;
        let storage = self.storage.clone();
        let removed = tokio::task::spawn_blocking(move || delete_slots(storage.as_ref(), &slots))
            .await
            .map_err(|_| internal("import preparation failed"))?
            .map_err(|e| storage_wire(&e))?;
        if removed > 0 {
            tracing::info!(removed, "dropped stale keys before an import");
        }
        Ok(ControlResponse::Ok)
    }

    async fn status(&self) -> Result<ControlResponse, WireError> {
        let (view, migrating) = {
            let state = self.read();
            (
                state.view.clone(),
                state.migration.as_ref().map(|m| Migrating {
                    to: m.to.clone(),
                    ranges: m.ranges.clone(),
                }),
            )
        };
        let storage = self.storage.clone();
        let owned = view.owned.clone();
        let keys = tokio::task::spawn_blocking(move || count_slots(storage.as_ref(), &owned))
            .await
            .map_err(|_| internal("status task failed"))?
            .map_err(|e| storage_wire(&e))?;
        Ok(ControlResponse::Status(NodeStatus {
            node: self.me.clone(),
            epoch: view.epoch(),
            keys,
            ranges: view.owned.ranges(),
            migrating,
        }))
    }

    async fn add_node(&self, id: String, addr: String) -> Result<ControlResponse, WireError> {
        let valid_id = !id.is_empty()
            && id.len() <= 63
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
        if !valid_id || addr.is_empty() || addr.len() > 255 || !addr.contains(':') {
            return Err(WireError::new(
                ErrorCode::Malformed,
                "add_node needs a node id (a-z, 0-9, '-', '.', '_') and a HOST:PORT address",
            ));
        }
        let _change = self.change_lock.lock().await;
        let next = self.view().map.with_node(&id, &addr);
        next.validate()
            .map_err(|e| WireError::new(ErrorCode::ClusterState, e.to_string()))?;
        self.install(next.clone())?;
        self.broadcast(&next).await;
        Ok(ControlResponse::Map { map: next })
    }

    /// Push `map` to every other node in it. Best effort: a node that misses it pulls it
    /// within a few seconds of coming back ([`sync`]).
    async fn broadcast(&self, map: &ClusterMap) {
        let Some(dialer) = &self.dialer else { return };
        let request = ControlRequest::SetMap { map: map.clone() };
        let pushes = map.nodes.iter().filter(|n| n.id != self.me).map(|node| {
            let request = &request;
            async move {
                let result = match dialer.connect(node).await {
                    Ok(mut conn) => conn.control(request).await.map(|_| ()),
                    Err(err) => Err(err),
                };
                if let Err(err) = result {
                    tracing::warn!(node = %node.id, error = %err, epoch = map.epoch, "could not push the new map; the node will pull it when it can");
                }
            }
        });
        futures_util::future::join_all(pushes).await;
    }
}

#[derive(Debug)]
enum ImportError {
    Owned(u16),
    Storage(StorageError),
}

impl From<StorageError> for ImportError {
    fn from(err: StorageError) -> Self {
        ImportError::Storage(err)
    }
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

/// MOVED to the node serving `slot`, or a cluster-state error when no node does.
fn moved(view: &View, slot: u16) -> ResponseBody {
    match view.map.owner_of_slot(slot) {
        Some(owner) => ResponseBody::Moved {
            slot,
            epoch: view.epoch(),
            node: owner.id.clone(),
            addr: owner.addr.clone(),
        },
        None => ResponseBody::Error(WireError::new(
            ErrorCode::ClusterState,
            format!("no node serves slot {slot} in map epoch {}", view.epoch()),
        )),
    }
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

fn storage_failure(err: &StorageError) -> ResponseBody {
    ResponseBody::Error(storage_wire(err))
}

/// Page size for whole-store walks (moves, cleanup, counts).
const WALK_PAGE: usize = 1000;

/// Call `each` for every stored entry whose slot is in `slots`, a page at a time.
fn walk_slots(
    storage: &dyn Storage,
    slots: &SlotSet,
    mut each: impl FnMut(crate::storage::Entry) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut after: Option<Bytes> = None;
    loop {
        let page = storage.scan(b"", after.as_deref(), WALK_PAGE)?;
        after = page.entries.last().map(|e| e.key.clone());
        for entry in page.entries {
            if slots.contains(hash_slot(&entry.key)) {
                each(entry)?;
            }
        }
        if !page.more || after.is_none() {
            return Ok(());
        }
    }
}

/// Keys stored in `slots`.
fn count_slots(storage: &dyn Storage, slots: &SlotSet) -> Result<u64, StorageError> {
    let mut n = 0;
    walk_slots(storage, slots, |_| {
        n += 1;
        Ok(())
    })?;
    Ok(n)
}

/// Delete every key stored in `slots`, a page at a time; returns how many.
fn delete_slots(storage: &dyn Storage, slots: &SlotSet) -> Result<u64, StorageError> {
    let mut removed = 0;
    let mut after: Option<Bytes> = None;
    loop {
        let page = storage.scan(b"", after.as_deref(), WALK_PAGE)?;
        after = page.entries.last().map(|e| e.key.clone());
        for entry in &page.entries {
            if slots.contains(hash_slot(&entry.key)) {
                removed += u64::from(storage.delete(&entry.key)?);
            }
        }
        if !page.more || after.is_none() {
            return Ok(removed);
        }
    }
}
