//! Handing slots of one of this node's shards to another node while clients keep reading and
//! writing them. The slots land in the receiver's home shard ([`ClusterMap::home_shard`]).
//!
//! [`ClusterMap::home_shard`]: skv_proto::cluster::ClusterMap::home_shard
//!
//! The giving node coordinates:
//! 1. It checks that one of its shards serves every slot and that the receiver is a node of
//!    the map, dials the receiver (mutual TLS, node identity checked) and asks it to drop any
//!    stale copy.
//! 2. Under the shard's ownership lock it starts the move: from then on every write that
//!    changes a key of a moving slot is recorded as dirty (commands already in flight finish
//!    before the lock is granted, so the copy below sees them).
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

use std::sync::Arc;

use bytes::Bytes;
use skv_proto::cluster::{format_ranges, ControlRequest, ControlResponse, SlotRange, SlotSet};
use skv_proto::{scan_entry_wire_len, ErrorCode, ScanEntry, WireError};

use super::{storage_wire, Cluster};
use crate::net::peer::{PeerConnection, PeerError};
use crate::shard::Shard;

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
    let Some(first) = slots.ranges().first().map(|r| r.start) else {
        return Err(WireError::new(ErrorCode::Malformed, "no slots to move"));
    };
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
    // One move hands slots from one shard: find it, and check it holds every slot.
    let giver = view
        .shard_for(first)
        .cloned()
        .ok_or_else(|| state_err("no local shard serves these slots".into()))?;
    let giver_slots = giver.slots();
    if slots
        .ranges()
        .iter()
        .any(|r| (r.start..=r.end).any(|s| !giver_slots.contains(s)))
    {
        return Err(state_err(format!(
            "slots {} belong to more than one shard of this node; move one shard's slots at a \
             time",
            format_ranges(&slots.ranges())
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
        .home_shard(&to)
        .ok_or_else(|| state_err(format!("node {to} serves no shard")))?;
    let ranges = slots.ranges();
    tracing::info!(to = %to, slots = %format_ranges(&ranges), "moving slots");

    let peer_err = |e: PeerError| WireError::new(ErrorCode::ClusterState, e.to_string());
    let peer = dialer.connect(&target).await.map_err(peer_err)?;
    peer.control(&ControlRequest::ImportBegin {
        ranges: ranges.clone(),
    })
    .await
    .map_err(peer_err)?;

    giver.begin_migration(&to, ranges.clone());
    let copied = match copy_and_flip(&cluster, &giver, &peer, &slots, to_shard).await {
        Ok(copied) => copied,
        Err(err) => {
            // Nothing changed hands: lift the fence and keep serving.
            giver.end_migration();
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
        let done = tokio::task::spawn_blocking(move || {
            let removed = giver.delete_slots(&slots)?;
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
    giver: &Arc<Shard>,
    peer: &PeerConnection,
    slots: &SlotSet,
    to_shard: u32,
) -> Result<u64, WireError> {
    let peer_err = |e: PeerError| WireError::new(ErrorCode::ClusterState, e.to_string());
    let task_failed = |_| WireError::new(ErrorCode::Internal, "copy task failed");

    // Step 3: everything in the slots, page by page.
    let mut copied = 0u64;
    let mut after: Option<Bytes> = None;
    loop {
        let shard = giver.clone();
        let moving = slots.clone();
        let from = after.clone();
        let (entries, next) =
            tokio::task::spawn_blocking(move || shard.walk_page(&moving, from.as_deref()))
                .await
                .map_err(task_failed)?
                .map_err(|e| storage_wire(&e))?;
        copied += entries.len() as u64;
        send_batches(peer, entries, Vec::new())
            .await
            .map_err(peer_err)?;
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }

    // Step 4: fence, then the keys written since the move began.
    let dirty = giver
        .fence()
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "move state vanished"))?;
    let shard = giver.clone();
    let (entries, deleted) = tokio::task::spawn_blocking(move || shard.current(dirty))
        .await
        .map_err(task_failed)?
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
    // ...then here: the shard gives the slots up before the fence lifts, so a command that
    // waited for the fence now finds the slot gone and gets MOVED.
    cluster.install(next)?;
    giver.end_migration();
    Ok(copied)
}

/// Send `entries` and `deleted` in IMPORT frames of at most [`BATCH_BYTES`].
async fn send_batches(
    peer: &PeerConnection,
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
