//! Handing slots to another node while clients keep reading and writing them.
//!
//! The giving node coordinates:
//! 1. It checks it serves every slot and that the receiver is a node of the map, dials the
//!    receiver (mutual TLS, node identity checked) and asks it to drop any stale copy.
//! 2. Under the route lock it starts the move: from then on every write to a moving slot is
//!    recorded as dirty (writes already in flight finish before the lock is granted, so the
//!    copy below sees them).
//! 3. It copies every key of the moving slots, with its version, in batches.
//! 4. It fences the slots (requests get TRYAGAIN, which clients retry after a moment) and
//!    copies the dirty keys again: their current value, or a deletion.
//! 5. The receiver flushes, then installs the next map (epoch + 1) in which it serves the
//!    slots; then this node installs it and lifts the fence, so requests for the slots now
//!    get MOVED; then every other node is told.
//! 6. The copies left here are deleted in the background.
//!
//! Reads are served here until the fence of step 4. They are fenced too because the receiver
//! owns the slots from its install in step 5, a moment before this node lets go: a read here
//! in that moment could miss a write the receiver had already accepted.
//! Any failure before the receiver installs the map lifts the fence and leaves ownership
//! unchanged; the partial copy on the receiver is dropped by the next attempt's step 1.

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};

use bytes::Bytes;
use skv_proto::cluster::{format_ranges, ControlRequest, ControlResponse, SlotRange, SlotSet};
use skv_proto::{scan_entry_wire_len, ErrorCode, ScanEntry, WireError};

use super::peer::{PeerConnection, PeerError};
use super::{storage_wire, Cluster, Migration, WALK_PAGE};

/// Bytes of entries per IMPORT frame: well under the frame limit, large enough that a move of
/// small keys is a few hundred round trips, not millions.
const BATCH_BYTES: usize = 256 * 1024;

/// Move `ranges` from this node to node `to`.
pub(super) async fn move_slots(
    cluster: Arc<Cluster>,
    ranges: Vec<SlotRange>,
    to: String,
) -> Result<ControlResponse, WireError> {
    let state_err = |msg: String| WireError::new(ErrorCode::ClusterState, msg);
    let Some(dialer) = cluster.dialer.clone() else {
        return Err(state_err(
            "this node has no TLS node identity, so it cannot talk to peers".into(),
        ));
    };
    let _change = cluster
        .change_lock
        .try_lock()
        .map_err(|_| state_err("another cluster change is in progress on this node".into()))?;
    let slots = SlotSet::from_ranges(&ranges);
    if slots.is_empty() {
        return Err(WireError::new(ErrorCode::Malformed, "no slots to move"));
    }
    let view = cluster.view();
    let missing: Vec<SlotRange> = slots
        .ranges()
        .into_iter()
        .filter(|r| (r.start..=r.end).any(|s| !view.owned.contains(s)))
        .collect();
    if !missing.is_empty() {
        return Err(state_err(format!(
            "this node does not serve all of {}; send the move to the node that does",
            format_ranges(&missing)
        )));
    }
    let target = view
        .map
        .node(&to)
        .filter(|n| n.id != cluster.me)
        .cloned()
        .ok_or_else(|| state_err(format!("node {to} is not another node of the map")))?;
    let to_shard = view
        .map
        .shard_of_node(&to)
        .map(|s| s.id)
        .ok_or_else(|| state_err(format!("node {to} holds no shard")))?;
    let ranges = slots.ranges();
    tracing::info!(to = %to, slots = %format_ranges(&ranges), "moving slots");

    let peer_err = |e: PeerError| WireError::new(ErrorCode::ClusterState, e.to_string());
    let mut peer = dialer.connect(&target).await.map_err(peer_err)?;
    peer.control(&ControlRequest::ImportBegin {
        ranges: ranges.clone(),
    })
    .await
    .map_err(peer_err)?;

    {
        let mut state = cluster.write();
        state.migration = Some(Migration {
            to: to.clone(),
            ranges: ranges.clone(),
            slots: slots.clone(),
            fenced: false,
            dirty: Default::default(),
        });
    }
    let result = copy_and_flip(&cluster, &mut peer, &slots, to_shard).await;
    let copied = match result {
        Ok(copied) => copied,
        Err(err) => {
            // Nothing changed hands: lift the fence and keep serving.
            cluster.write().migration = None;
            tracing::warn!(to = %to, error = %err, "slot move aborted; ownership unchanged");
            return Err(err);
        }
    };
    let next = cluster.view().map.clone();
    cluster.broadcast(&next).await;
    tracing::info!(to = %to, keys = copied, epoch = next.epoch, "slots moved");

    // The copies here are unreachable now (requests get MOVED); reclaim the space.
    let cleaner = cluster.clone();
    tokio::spawn(async move {
        let _cleanup = cleaner.cleanup_lock.lock().await;
        let storage = cleaner.storage.clone();
        let slots = slots.clone();
        let done = tokio::task::spawn_blocking(move || {
            let removed = super::delete_slots(storage.as_ref(), &slots)?;
            storage.flush().map(|()| removed)
        })
        .await;
        match done {
            Ok(Ok(removed)) => tracing::info!(removed, "deleted the keys of slots handed away"),
            Ok(Err(err)) => tracing::error!(error = ?err, "cleanup after a slot move failed"),
            Err(_) => tracing::error!("cleanup task after a slot move failed"),
        }
    });
    Ok(ControlResponse::Moved {
        keys: copied,
        epoch: next.epoch,
    })
}

/// Steps 3 to 5 of the module docs; returns the number of keys copied in step 3.
async fn copy_and_flip(
    cluster: &Arc<Cluster>,
    peer: &mut PeerConnection,
    slots: &SlotSet,
    to_shard: u32,
) -> Result<u64, WireError> {
    let peer_err = |e: PeerError| WireError::new(ErrorCode::ClusterState, e.to_string());
    let storage = cluster.storage.clone();

    // Step 3: everything in the slots, page by page.
    let mut copied = 0u64;
    let mut after: Option<Bytes> = None;
    loop {
        let page_storage = storage.clone();
        let from = after.clone();
        let page =
            tokio::task::spawn_blocking(move || page_storage.scan(b"", from.as_deref(), WALK_PAGE))
                .await
                .map_err(|_| WireError::new(ErrorCode::Internal, "copy task failed"))?
                .map_err(|e| storage_wire(&e))?;
        after = page.entries.last().map(|e| e.key.clone());
        let entries: Vec<ScanEntry> = page
            .entries
            .into_iter()
            .filter(|e| slots.contains(skv_proto::hash_slot(&e.key)))
            .map(|e| ScanEntry {
                key: e.key,
                version: e.version,
                value: e.value,
            })
            .collect();
        copied += entries.len() as u64;
        send_batches(peer, entries, Vec::new())
            .await
            .map_err(peer_err)?;
        if !page.more || after.is_none() {
            break;
        }
    }

    // Step 4: fence, then the keys written since the move began.
    let dirty: HashSet<Bytes> = {
        let mut state = cluster.write();
        let migration = state
            .migration
            .as_mut()
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "move state vanished"))?;
        migration.fenced = true;
        let mut dirty = migration
            .dirty
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *dirty)
    };
    let dirty_storage = storage.clone();
    let (entries, deleted) = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        let mut deleted = Vec::new();
        for key in dirty {
            match dirty_storage.get(&key)? {
                Some(v) => entries.push(ScanEntry {
                    key,
                    version: v.version,
                    value: v.value,
                }),
                None => deleted.push(key),
            }
        }
        Ok::<_, crate::storage::StorageError>((entries, deleted))
    })
    .await
    .map_err(|_| WireError::new(ErrorCode::Internal, "copy task failed"))?
    .map_err(|e| storage_wire(&e))?;
    tracing::info!(
        rewritten = entries.len(),
        deleted = deleted.len(),
        "slots fenced; copying the last writes"
    );
    send_batches(peer, entries, deleted)
        .await
        .map_err(peer_err)?;
    peer.control(&ControlRequest::ImportFlush)
        .await
        .map_err(peer_err)?;

    // Step 5: the receiver first, so the slots are never served by nobody...
    let next = cluster.view().map.with_slots_moved(slots, to_shard);
    next.validate()
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    if let Err(err) = peer
        .control(&ControlRequest::SetMap { map: next.clone() })
        .await
    {
        // The answer may have been lost after the receiver installed the map: ask it.
        match peer.map().await {
            Ok(theirs) if theirs.epoch >= next.epoch => {}
            _ => return Err(peer_err(err)),
        }
    }
    // ...then here, lifting the fence in the same critical section: a write that waited for
    // the fence now finds the slot gone and gets MOVED.
    {
        let mut state = cluster.write();
        if next.epoch > state.view.epoch() {
            state.view = Arc::new(super::View::new(next, &cluster.me));
        }
        state.migration = None;
    }
    cluster.persist();
    Ok(copied)
}

/// Send `entries` and `deleted` in IMPORT frames of at most [`BATCH_BYTES`].
async fn send_batches(
    peer: &mut PeerConnection,
    entries: Vec<ScanEntry>,
    deleted: Vec<Bytes>,
) -> Result<(), PeerError> {
    let mut batch = Vec::new();
    let mut size = 0;
    for entry in entries {
        let len = scan_entry_wire_len(entry.key.len(), entry.value.len());
        if !batch.is_empty() && size + len > BATCH_BYTES {
            peer.import(std::mem::take(&mut batch), Vec::new()).await?;
            size = 0;
        }
        size += len;
        batch.push(entry);
    }
    if !batch.is_empty() || !deleted.is_empty() {
        // Deleted keys are few (writes during one move) and each at most 4 KiB, so they ride
        // with the last batch; split them if there are many.
        let mut deleted = deleted;
        while deleted.len() > 1000 {
            let rest = deleted.split_off(1000);
            peer.import(Vec::new(), deleted).await?;
            deleted = rest;
        }
        peer.import(batch, deleted).await?;
    }
    Ok(())
}
