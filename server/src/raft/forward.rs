//! Requests one node makes of another node's replica of a group, beside the Raft protocol:
//! propose an entry to the group through its leader ([`FORWARD_PROPOSE`]), and read a page of a
//! shard's keys at its leader ([`FORWARD_EXPORT`], for slot moves). Both travel as `RAFT`
//! requests with their own rpc numbers, so only authenticated nodes of the cluster can send
//! them (the router's role policy), and both are bounded like every Raft message.
//!
//! The metadata leader uses them to run a slot move step by step on shard groups it may not be
//! a member of.

use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};
use skv_proto::cluster::{ClusterMap, NodeEntry, SlotRange, SlotSet};

use super::state::ShardReader;
use super::{Imported, Member, Outcome, Proposal, RaftGroup};
use crate::net::peer::Dialer;

/// rpc number of a forwarded proposal.
pub(crate) const FORWARD_PROPOSE: u8 = 16;
/// rpc number of an export page request.
pub(crate) const FORWARD_EXPORT: u8 = 17;

/// Bytes of keys and values in one export page: well under the peer frame limit.
pub(crate) const EXPORT_PAGE_BYTES: usize = 256 * 1024;
/// Keys in one export page.
pub(crate) const EXPORT_PAGE_KEYS: usize = 1000;

/// How a request made of a group's leader ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderReply<T> {
    /// Done; the answer.
    Done(T),
    /// This replica does not lead; the leader it knows of.
    NotLeader(Option<Member>),
    /// It could not be done.
    Failed(String),
}

/// How a forwarded proposal ended: the state machine's answer.
pub(crate) type ProposeReply = LeaderReply<Outcome>;

/// An export page: the keys with their versions, and where the next page starts (`None`:
/// done).
pub(crate) type ExportReply = LeaderReply<(Vec<Imported>, Option<Bytes>)>;

/// A page of a shard's keys in some slots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ExportRequest {
    /// The slots.
    pub(crate) slots: Vec<SlotRange>,
    /// Resume after this key.
    pub(crate) after: Option<Bytes>,
}

/// Propose `proposal` to this node's replica of a group (it must lead).
pub(crate) async fn propose_local(raft: &RaftGroup, proposal: Proposal) -> ProposeReply {
    match tokio::time::timeout(Duration::from_secs(10), raft.client_write(proposal)).await {
        Ok(Ok(resp)) => LeaderReply::Done(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            LeaderReply::NotLeader(f.leader_node)
        }
        Ok(Err(err)) => LeaderReply::Failed(err.to_string()),
        Err(_) => LeaderReply::Failed("no quorum answered within 10s".into()),
    }
}

/// Read an export page from this node's replica, after confirming it leads and has applied
/// everything committed (so a freeze committed before is in effect).
pub(crate) async fn export_local(
    raft: &RaftGroup,
    reader: &ShardReader,
    request: ExportRequest,
) -> ExportReply {
    match tokio::time::timeout(Duration::from_secs(10), raft.ensure_linearizable()).await {
        Ok(Ok(_)) => {}
        Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f)))) => {
            return LeaderReply::NotLeader(f.leader_node)
        }
        Ok(Err(err)) => return LeaderReply::Failed(err.to_string()),
        Err(_) => return LeaderReply::Failed("no quorum answered within 10s".into()),
    }
    let slots = SlotSet::from_ranges(&request.slots);
    let reader = reader.clone();
    let page = tokio::task::spawn_blocking(move || {
        reader
            .export(
                &slots,
                request.after.as_deref(),
                EXPORT_PAGE_KEYS,
                EXPORT_PAGE_BYTES,
            )
            .map_err(|err| format!("storage: {err}"))
    })
    .await;
    match page {
        Ok(Ok(page)) => LeaderReply::Done(page),
        Ok(Err(err)) => LeaderReply::Failed(err),
        Err(_) => LeaderReply::Failed("export task failed".into()),
    }
}

/// Answer a forwarded request for group `group` (the router hands rpc numbers ≥ 16 here).
pub(crate) async fn serve(
    raft: Option<RaftGroup>,
    reader: Option<ShardReader>,
    rpc: u8,
    payload: &[u8],
) -> Result<Bytes, String> {
    let Some(raft) = raft else {
        return Err("this node is not a member of the group".into());
    };
    let encoded = match rpc {
        FORWARD_PROPOSE => {
            let proposal: Proposal =
                postcard::from_bytes(payload).map_err(|e| format!("bad proposal: {e}"))?;
            postcard::to_stdvec(&propose_local(&raft, proposal).await)
        }
        FORWARD_EXPORT => {
            let Some(reader) = reader else {
                return Err("this group is not a shard".into());
            };
            let request: ExportRequest =
                postcard::from_bytes(payload).map_err(|e| format!("bad export request: {e}"))?;
            postcard::to_stdvec(&export_local(&raft, &reader, request).await)
        }
        other => return Err(format!("unknown forwarded rpc {other}")),
    };
    encoded
        .map(Bytes::from)
        .map_err(|e| format!("cannot encode the answer: {e}"))
}

/// Reaches any group's leader from this node: through the local replica when this node leads,
/// else over a peer connection to the leader (found from hints, trying each replica).
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    dialer: Option<Dialer>,
}

impl Forwarder {
    /// A forwarder dialing with `dialer` (`None`: only local groups are reachable).
    pub(crate) fn new(dialer: Option<Dialer>) -> Forwarder {
        Forwarder { dialer }
    }

    async fn call(
        &self,
        to: &Member,
        group: u32,
        rpc: u8,
        payload: Bytes,
    ) -> Result<Bytes, String> {
        let Some(dialer) = &self.dialer else {
            return Err("this node has no peer credentials".into());
        };
        let entry = NodeEntry {
            id: to.node.clone(),
            addr: to.addr.clone(),
            raft_id: 0,
        };
        let conn = dialer.connect(&entry).await.map_err(|e| e.to_string())?;
        conn.raft(group, rpc, payload)
            .await
            .map_err(|e| e.to_string())
    }

    /// The replicas of `group` under `map`, as members.
    fn replicas(map: &ClusterMap, group: u32) -> Vec<Member> {
        map.shards
            .iter()
            .find(|s| s.id == group)
            .map(|s| {
                s.replicas
                    .iter()
                    .filter_map(|id| map.node(id))
                    .map(|n| Member {
                        node: n.id.clone(),
                        addr: n.addr.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Propose `proposal` to shard group `group` through its leader, trying until `deadline`.
    pub(crate) async fn propose(
        &self,
        local: Option<&RaftGroup>,
        map: &ClusterMap,
        group: u32,
        proposal: Proposal,
        deadline: Duration,
    ) -> Result<Outcome, String> {
        let payload = Bytes::from(postcard::to_stdvec(&proposal).map_err(|e| e.to_string())?);
        let local = local.map(|raft| move || propose_local(raft, proposal.clone()));
        self.at_leader(map, group, FORWARD_PROPOSE, payload, local, deadline)
            .await
    }

    /// Read one export page of shard `group` at its leader, trying until `deadline`.
    pub(crate) async fn export(
        &self,
        local: Option<(&RaftGroup, &ShardReader)>,
        map: &ClusterMap,
        group: u32,
        request: ExportRequest,
        deadline: Duration,
    ) -> Result<(Vec<Imported>, Option<Bytes>), String> {
        let payload = Bytes::from(postcard::to_stdvec(&request).map_err(|e| e.to_string())?);
        let local = local.map(|(raft, reader)| move || export_local(raft, reader, request.clone()));
        self.at_leader(map, group, FORWARD_EXPORT, payload, local, deadline)
            .await
    }

    /// Ask `group`'s leader to do `rpc`: through this node's replica when it has one (every
    /// other attempt, since it may not lead), else at the leader a replica named, else at each
    /// replica of the map in turn, until `deadline`.
    async fn at_leader<T, F, Fut>(
        &self,
        map: &ClusterMap,
        group: u32,
        rpc: u8,
        payload: Bytes,
        local: Option<F>,
        deadline: Duration,
    ) -> Result<T, String>
    where
        T: serde::de::DeserializeOwned,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = LeaderReply<T>>,
    {
        let started = tokio::time::Instant::now();
        let mut hint: Option<Member> = None;
        let mut last = String::from("no replica answered");
        let mut attempt = 0usize;
        while started.elapsed() < deadline {
            let reply = match (&hint, &local) {
                (None, Some(local)) if attempt.is_multiple_of(2) => local().await,
                _ => {
                    let replicas = Self::replicas(map, group);
                    let target = hint
                        .clone()
                        .or_else(|| replicas.get(attempt % replicas.len().max(1)).cloned());
                    let Some(target) = target else {
                        return Err(format!("shard {group} has no replicas in the map"));
                    };
                    match self.call(&target, group, rpc, payload.clone()).await {
                        Ok(bytes) => postcard::from_bytes(&bytes)
                            .unwrap_or_else(|e| LeaderReply::Failed(format!("bad answer: {e}"))),
                        Err(e) => LeaderReply::Failed(e),
                    }
                }
            };
            attempt += 1;
            match reply {
                LeaderReply::Done(answer) => return Ok(answer),
                LeaderReply::NotLeader(next) => hint = next,
                LeaderReply::Failed(why) => {
                    hint = None;
                    last = why;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("shard {group}: {last}"))
    }
}
