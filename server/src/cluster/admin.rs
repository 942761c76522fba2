//! Control requests on a replicated node: status from its Raft groups, and map changes turned
//! into commands of the metadata group (forwarded to its leader when this node does not lead).

use std::sync::Arc;

use openraft::ServerState;
use skv_proto::cluster::{ControlRequest, ControlResponse, NodeStatus, ReplicaStatus};
use skv_proto::{ErrorCode, ResponseBody, WireError};

use super::meta::{MapChange, MapOutcome};
use super::replicated::ProposeError;
use super::{control_body, Cluster};
use crate::raft::{Member, RaftGroup};

impl Cluster {
    /// Handle a control request on a replicated node.
    pub(crate) async fn control_replicated(
        self: Arc<Self>,
        request: ControlRequest,
    ) -> ResponseBody {
        let name = request.name();
        let result = match request {
            ControlRequest::SetMap { .. } => Err(WireError::new(
                ErrorCode::Forbidden,
                "this cluster's map changes only through its metadata group; a pushed map is \
                 refused",
            )),
            ControlRequest::ImportBegin { .. } | ControlRequest::ImportFlush => {
                Err(WireError::new(
                    ErrorCode::ClusterState,
                    "imports are not used by replicated clusters: slot moves run through the \
                     shards' logs",
                ))
            }
            ControlRequest::Status => Ok(ControlResponse::Status(self.replicated_status().await)),
            ControlRequest::AddNode { id, addr } => match check_node_id(&id, &addr) {
                Ok(()) => self.change_map(MapChange::AddNode { id, addr }).await,
                Err(err) => Err(err),
            },
            ControlRequest::ReplaceNode { dead, with, addr } => {
                if let Err(err) = check_node_id(&with, &addr) {
                    Err(err)
                } else {
                    self.change_map(MapChange::ReplaceNode { dead, with, addr })
                        .await
                }
            }
            ControlRequest::RemoveNode { id } => {
                self.change_map(MapChange::RemoveNode { id }).await
            }
            ControlRequest::ProposeMap { change } => {
                match serde_json::from_str::<MapChange>(&change) {
                    Ok(change) => self.change_map(change).await,
                    Err(err) => Err(WireError::new(
                        ErrorCode::Malformed,
                        format!("not a map change: {err}"),
                    )),
                }
            }
            ControlRequest::MoveSlots {
                ranges,
                to,
                expect_epoch,
            } => self.move_slots(ranges, to, expect_epoch).await,
        };
        match result {
            Ok(resp) => control_body(&resp),
            Err(err) => {
                tracing::warn!(request = name, error = %err, "control request failed");
                ResponseBody::Error(err)
            }
        }
    }

    /// Decide `change` on the metadata group (here when this node leads it, else at its
    /// leader), then wait until this node serves the map it made, so the administrator's next
    /// request here sees it.
    pub(crate) async fn change_map(&self, change: MapChange) -> Result<ControlResponse, WireError> {
        let response = self.decide_map(change).await?;
        if let ControlResponse::Map { map } = &response {
            if !self
                .await_installed(map.epoch, std::time::Duration::from_secs(5))
                .await
            {
                tracing::warn!(
                    epoch = map.epoch,
                    "a committed map change is not installed here after 5 s; this node answers \
                     from its older map until it is"
                );
            }
        }
        Ok(response)
    }

    async fn decide_map(&self, change: MapChange) -> Result<ControlResponse, WireError> {
        let Some(repl) = self.repl.load_full() else {
            return Err(WireError::new(ErrorCode::Internal, "not a replicated node"));
        };
        let _one_at_a_time = self.change_lock.lock().await;
        let mut state = repl.state();
        // A fresh cluster commits its first map within a few election timeouts.
        let committed = state.wait_for(|s| s.map.is_some());
        if tokio::time::timeout(std::time::Duration::from_secs(10), committed)
            .await
            .is_err()
        {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "the cluster's first map is not committed yet: fewer than a quorum of the \
                 metadata group's members have started",
            ));
        }
        drop(state);
        // Wait out an election (a fresh cluster, a metadata leader that just died), within a
        // deadline an administrator would wait for.
        let started = std::time::Instant::now();
        let deadline = std::time::Duration::from_secs(10);
        let outcome = loop {
            let refusal = match repl.propose_map(&change).await {
                Ok(outcome) => break outcome,
                Err(ProposeError::NotLeader(Some(leader))) if leader.node != self.me => {
                    return self.forward(&leader, &change).await;
                }
                Err(ProposeError::NotLeader(_)) => WireError::new(
                    ErrorCode::Unavailable,
                    "the metadata group has no leader now (an election is under way, or fewer \
                     than a quorum of its members are reachable); retry shortly",
                ),
                Err(ProposeError::Unavailable(why)) => WireError::new(ErrorCode::Unavailable, why),
            };
            if started.elapsed() > deadline {
                return Err(refusal);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        match outcome {
            MapOutcome::Applied { .. } => Ok(ControlResponse::Map {
                map: repl
                    .state()
                    .borrow()
                    .map
                    .clone()
                    .unwrap_or_else(|| self.view().map.clone()),
            }),
            MapOutcome::Refused { reason } => Err(WireError::new(ErrorCode::ClusterState, reason)),
        }
    }

    /// Begin a move of `ranges` to node `to`'s home shard through the metadata group, then wait
    /// for the metadata leader to finish it (see [`super::moves`]).
    async fn move_slots(
        &self,
        ranges: Vec<skv_proto::cluster::SlotRange>,
        to: String,
        expect_epoch: Option<u64>,
    ) -> Result<ControlResponse, WireError> {
        let Some(repl) = self.repl.load_full() else {
            return Err(WireError::new(ErrorCode::Internal, "not a replicated node"));
        };
        let map = self.view().map.clone();
        let Some(to_shard) = map.home_shard(&to) else {
            return Err(WireError::new(
                ErrorCode::ClusterState,
                format!(
                    "node `{to}` is the first replica of no shard, so it has none to take slots"
                ),
            ));
        };
        let mut state = repl.state();
        let before = state.borrow().next_move;
        self.change_map(MapChange::BeginMove {
            slots: ranges,
            to: to_shard,
            expect_epoch,
        })
        .await?;
        // The move this request began has an id of at least `before`; once this node's
        // metadata replica has applied it, wait for it to end.
        let wait = async {
            loop {
                {
                    let now = state.borrow_and_update();
                    if now.next_move > before {
                        let id = now.next_move - 1;
                        if now.moving.as_ref().map(|m| m.id) != Some(id) {
                            let copied = now
                                .last_move
                                .filter(|(last, _)| *last == id)
                                .map_or(0, |(_, copied)| copied);
                            let epoch = now.map.as_ref().map_or(0, |m| m.epoch);
                            return Ok(ControlResponse::Moved {
                                keys: copied,
                                epoch,
                            });
                        }
                    }
                }
                if state.changed().await.is_err() {
                    return Err(WireError::new(
                        ErrorCode::ShuttingDown,
                        "the node is stopping",
                    ));
                }
            }
        };
        match tokio::time::timeout(std::time::Duration::from_secs(300), wait).await {
            Ok(result) => result,
            Err(_) => Err(WireError::new(
                ErrorCode::Unavailable,
                "the move is recorded but did not finish within 5 minutes; the metadata \
                 leader keeps running it (see `skv cluster status`)",
            )),
        }
    }

    async fn forward(
        &self,
        leader: &Member,
        change: &MapChange,
    ) -> Result<ControlResponse, WireError> {
        let Some(dialer) = &self.dialer else {
            return Err(WireError::new(ErrorCode::Internal, "no peer credentials"));
        };
        let entry = skv_proto::cluster::NodeEntry {
            id: leader.node.clone(),
            addr: leader.addr.clone(),
            raft_id: 0,
        };
        let request = ControlRequest::ProposeMap {
            change: serde_json::to_string(change).unwrap_or_default(),
        };
        let conn = dialer.connect(&entry).await.map_err(|e| {
            WireError::new(
                ErrorCode::Unavailable,
                format!("cannot reach the metadata leader {}: {e}", leader.node),
            )
        })?;
        conn.control(&request).await.map_err(|e| match e {
            crate::net::peer::PeerError::Call {
                source: skv_client::ClientError::Refused(err) | skv_client::ClientError::Server(err),
                ..
            } => err,
            other => WireError::new(
                ErrorCode::Unavailable,
                format!("the metadata leader {} did not answer: {other}", leader.node),
            ),
        })
    }

    async fn replicated_status(&self) -> NodeStatus {
        let view = self.view();
        let mut replicas = Vec::new();
        let mut keys = 0;
        if let Some(repl) = self.repl.load_full() {
            replicas.push(group_status(0, repl.meta(), 0));
            for replica in view.local_replicas() {
                let reader = replica.reader().clone();
                let count = reader.key_count();
                keys += count;
                replicas.push(group_status(replica.shard(), replica.raft(), count));
            }
        }
        NodeStatus {
            node: self.me.clone(),
            epoch: view.epoch(),
            keys,
            ranges: view.owned.ranges(),
            migrating: None,
            replicas,
        }
    }
}

/// A node id the map can hold and an address clients can dial.
fn check_node_id(id: &str, addr: &str) -> Result<(), WireError> {
    let valid_id = !id.is_empty()
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
    if !valid_id || addr.is_empty() || addr.len() > 255 || !addr.contains(':') {
        return Err(WireError::new(
            ErrorCode::Malformed,
            "a node needs an id (a-z, 0-9, '-', '.', '_') and a HOST:PORT address",
        ));
    }
    Ok(())
}

fn group_status(shard: u32, raft: &RaftGroup, keys: u64) -> ReplicaStatus {
    let m = raft.metrics().borrow().clone();
    let name_of = |id: u64| {
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.node.clone())
            .unwrap_or_else(|| format!("raft-{id}"))
    };
    let last_log = m.last_log_index.unwrap_or(0);
    let lag = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| {
                    let matched = matched.map(|l| l.index).unwrap_or(0);
                    (name_of(*id), last_log.saturating_sub(matched))
                })
                .collect()
        })
        .unwrap_or_default();
    ReplicaStatus {
        shard,
        role: match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "stopped",
        }
        .into(),
        leader: m.current_leader.map(name_of),
        term: m.current_term,
        last_log,
        applied: m.last_applied.map(|l| l.index).unwrap_or(0),
        lag,
        quorum_ack_ms: m.millis_since_quorum_ack,
        keys,
        snapshot: m.snapshot.map(|l| l.index).unwrap_or(0),
        purged: m.purged.map(|l| l.index).unwrap_or(0),
    }
}
