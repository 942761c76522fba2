//! Slot moves between replicated shards, run by the metadata group's leader.
//!
//! A move is recorded in the metadata state when it begins ([`MapChange::BeginMove`]), so
//! whichever node leads the metadata group runs it, and a new leader resumes a move its
//! predecessor left half done. Every step is a log entry of some group, and every step is
//! idempotent, so resuming from the first step is always safe:
//! 1. `Freeze` on the giving shard: from that point of its log, writes to the slots are
//!    refused (`try_again`); reads are still served.
//! 2. Copy: pages of the frozen slots' keys, read at the giving shard's leader after a ReadIndex
//!    round (so the freeze is applied there), proposed to the receiving shard as `Import`
//!    entries, then `Own` there.
//! 3. `CommitMove` on the metadata group: the map names the receiving shard (epoch + 1).
//! 4. `Release` on the giving shard, which deletes its copies, then `EndMove`.
//!
//! Nothing is deleted before step 3 has committed, so a crash anywhere loses no key: before it,
//! the giving shard still has every key (and the map still names it); after it, the receiving
//! shard has them all in its committed log.

use std::sync::Arc;
use std::time::Duration;

use skv_proto::cluster::{format_ranges, ClusterMap};
use tokio_util::sync::CancellationToken;

use super::meta::{MapChange, MapOutcome, SlotMove};
use super::replicated::Replication;
use crate::raft::forward::{ExportRequest, Forwarder};
use crate::raft::{Outcome, Proposal};

/// How long one step keeps retrying (through leader changes) before the driver starts over.
const STEP_DEADLINE: Duration = Duration::from_secs(30);

/// Run slot moves while this node leads the metadata group, until `shutdown`.
pub(crate) async fn drive(
    repl: Arc<Replication>,
    forwarder: Forwarder,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !repl.leads_meta() {
            continue;
        }
        let state = repl.state().borrow().clone();
        let (Some(map), Some(mv)) = (state.map.clone(), state.moving.clone()) else {
            continue;
        };
        let step = tokio::select! {
            _ = shutdown.cancelled() => return,
            step = run(&repl, &forwarder, &map, &mv) => step,
        };
        match step {
            Ok(()) => tracing::info!(
                id = mv.id,
                slots = %format_ranges(&mv.slots),
                from = mv.from,
                to = mv.to,
                "slot move finished"
            ),
            Err(err) => {
                tracing::warn!(id = mv.id, error = %err, "slot move step failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn run(
    repl: &Replication,
    forwarder: &Forwarder,
    map: &ClusterMap,
    mv: &SlotMove,
) -> Result<(), String> {
    let propose = |group: u32, proposal: Proposal| {
        let local = repl.replica(group);
        async move {
            forwarder
                .propose(
                    local.as_ref().map(|r| r.raft()),
                    map,
                    group,
                    proposal,
                    STEP_DEADLINE,
                )
                .await
        }
    };
    if !mv.committed {
        propose(
            mv.from,
            Proposal::Freeze {
                move_id: mv.id,
                slots: mv.slots.clone(),
            },
        )
        .await?;
        let source = repl.replica(mv.from);
        let mut after = None;
        let mut copied = 0usize;
        loop {
            let request = ExportRequest {
                slots: mv.slots.clone(),
                after: after.clone(),
            };
            let (entries, next) = forwarder
                .export(
                    source.as_ref().map(|r| (r.raft(), r.reader())),
                    map,
                    mv.from,
                    request,
                    STEP_DEADLINE,
                )
                .await?;
            copied += entries.len();
            if !entries.is_empty() {
                propose(
                    mv.to,
                    Proposal::Import {
                        move_id: mv.id,
                        entries,
                    },
                )
                .await?;
            }
            match next {
                Some(key) => after = Some(key),
                None => break,
            }
        }
        propose(
            mv.to,
            Proposal::Own {
                slots: mv.slots.clone(),
            },
        )
        .await?;
        tracing::info!(id = mv.id, copied, "slot move copied; committing it");
        meta(
            repl,
            MapChange::CommitMove {
                id: mv.id,
                copied: copied as u64,
            },
        )
        .await?;
    }
    let released = propose(
        mv.from,
        Proposal::Release {
            move_id: mv.id,
            slots: mv.slots.clone(),
        },
    )
    .await?;
    if !matches!(released, Outcome::Done) {
        return Err(format!("unexpected answer to release: {released:?}"));
    }
    meta(repl, MapChange::EndMove { id: mv.id }).await
}

async fn meta(repl: &Replication, change: MapChange) -> Result<(), String> {
    match repl.propose_map(&change).await {
        Ok(MapOutcome::Applied { .. }) => Ok(()),
        Ok(MapOutcome::Refused { reason }) => Err(reason),
        Err(err) => Err(err.to_string()),
    }
}
