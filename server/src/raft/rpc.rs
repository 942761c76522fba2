//! Raft messages from other nodes: decoded, bounded, and handed to the group they name.
//!
//! This module owns the node-wide [`RaftRegistry`] (which groups this node runs), the wire
//! form of the three Raft RPCs shared with the sending side in [`super::network`] (the
//! [`RpcKind`] numbers and the postcard encoding), and [`serve`], which the router calls for
//! every `RAFT` request an authenticated node of this cluster sends.
//!
//! # Wire form
//!
//! A request is `RAFT { group, rpc, payload }` with `payload` the postcard encoding of the
//! openraft request (`AppendEntriesRequest`, `VoteRequest` or `InstallSnapshotRequest`). The
//! answer is `RAFT { payload }` with the postcard encoding of what the group's
//! [`openraft::Raft`] returned, `Result<Response, RaftError<..>>`, so a remote Raft error
//! reaches the sender's openraft as a `RemoteError`. Requests this node cannot serve at all
//! (an unknown group, an unknown kind, an undecodable payload, a sender speaking for another
//! member) are answered with a typed wire error instead.
//!
//! The payload is bounded before it gets here: the proto decoder refuses a `RAFT` payload
//! over [`skv_proto::MAX_RAFT_PAYLOAD`] and the peer connection's frame limit bounds it
//! further, so decoding allocates at most a small multiple of bytes already received. Logs
//! name the group, the kind and the peer, never the payload (it carries client values).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::Vote;
use serde::de::DeserializeOwned;
use serde::Serialize;
use skv_proto::{ErrorCode, ResponseBody, WireError};

use super::{RaftGroup, TypeConfig};

/// Which Raft RPC a `RAFT` request carries: the `rpc` byte on the wire. Numbers below 16 are
/// the Raft protocol's (these three, room for more); 16 and up are left to requests between
/// replicas beside it (forwarded proposals and the like), which the router routes elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub(crate) enum RpcKind {
    /// AppendEntries (heartbeats too).
    Append = 1,
    /// RequestVote.
    Vote = 2,
    /// One chunk of a snapshot.
    InstallSnapshot = 3,
}

impl RpcKind {
    /// The kind a wire byte names, if any.
    pub(crate) fn from_wire(rpc: u8) -> Option<RpcKind> {
        match rpc {
            1 => Some(RpcKind::Append),
            2 => Some(RpcKind::Vote),
            3 => Some(RpcKind::InstallSnapshot),
            _ => None,
        }
    }

    /// The wire byte.
    pub(crate) fn wire(self) -> u8 {
        self as u8
    }

    /// A name for logs and errors.
    pub(crate) fn name(self) -> &'static str {
        match self {
            RpcKind::Append => "append",
            RpcKind::Vote => "vote",
            RpcKind::InstallSnapshot => "install-snapshot",
        }
    }
}

/// What a group answers an AppendEntries with.
pub(crate) type AppendReply = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
/// What a group answers a vote with.
pub(crate) type VoteReply = Result<VoteResponse<u64>, RaftError<u64>>;
/// What a group answers a snapshot chunk with.
pub(crate) type SnapshotReply =
    Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;

/// Encode a Raft message or reply for the wire.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Decode a Raft message or reply from the wire. `bytes` is already bounded by the frame
/// limit; postcard allocates no more than the input can fill.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// The groups this node runs, by group id. Shared by the router (incoming messages) and
/// whatever starts and stops groups. Cheap to clone; clones share the table.
#[derive(Clone, Default)]
pub(crate) struct RaftRegistry {
    groups: Arc<RwLock<HashMap<u32, RaftGroup>>>,
}

impl fmt::Debug for RaftRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RaftRegistry")
            .field("groups", &self.groups())
            .finish()
    }
}

impl RaftRegistry {
    /// Serve `group` with `raft` from now on, replacing any earlier handle for it.
    pub(crate) fn register(&self, group: u32, raft: RaftGroup) {
        // A panic elsewhere while holding the lock leaves the map itself intact (every
        // operation on it is a single insert, remove or lookup), so a poisoned lock is used.
        self.groups
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group, raft);
    }

    /// Stop serving `group`; returns its handle if it was registered. Messages for it are
    /// answered "not a member" from now on.
    pub(crate) fn unregister(&self, group: u32) -> Option<RaftGroup> {
        self.groups
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&group)
    }

    /// The handle of `group`, if this node runs it.
    pub(crate) fn get(&self, group: u32) -> Option<RaftGroup> {
        self.groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&group)
            .cloned()
    }

    /// The groups this node runs, in ascending order.
    pub(crate) fn groups(&self) -> Vec<u32> {
        let mut groups: Vec<u32> = self
            .groups
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        groups.sort_unstable();
        groups
    }
}

/// Serve one Raft message that node `from_node` (authenticated by its certificate) sent for
/// `group`: decode it, hand it to the group's Raft, and encode what the group answered.
pub(crate) async fn serve(
    registry: &RaftRegistry,
    from_node: &str,
    group: u32,
    rpc: u8,
    payload: Bytes,
) -> ResponseBody {
    let Some(kind) = RpcKind::from_wire(rpc) else {
        tracing::debug!(group, rpc, peer = from_node, "unknown raft message kind");
        return error(
            ErrorCode::Malformed,
            format!("unknown raft message kind {rpc}"),
        );
    };
    let Some(raft) = registry.get(group) else {
        tracing::debug!(
            group,
            rpc = kind.name(),
            peer = from_node,
            "raft message for a group this node does not run"
        );
        return error(
            ErrorCode::ClusterState,
            format!("this node is not a member of group {group}"),
        );
    };
    tracing::debug!(
        group,
        rpc = kind.name(),
        peer = from_node,
        bytes = payload.len(),
        "raft message"
    );
    let reply = match kind {
        RpcKind::Append => match decoded::<AppendEntriesRequest<TypeConfig>>(kind, &payload) {
            Err(refusal) => return refusal,
            Ok(req) => {
                if let Err(refusal) = check_sender(&raft, group, &req.vote, from_node) {
                    return refusal;
                }
                encode::<AppendReply>(&raft.append_entries(req).await)
            }
        },
        RpcKind::Vote => match decoded::<VoteRequest<u64>>(kind, &payload) {
            Err(refusal) => return refusal,
            Ok(req) => {
                if let Err(refusal) = check_sender(&raft, group, &req.vote, from_node) {
                    return refusal;
                }
                encode::<VoteReply>(&raft.vote(req).await)
            }
        },
        RpcKind::InstallSnapshot => {
            match decoded::<InstallSnapshotRequest<TypeConfig>>(kind, &payload) {
                Err(refusal) => return refusal,
                Ok(req) => {
                    if let Err(refusal) = check_sender(&raft, group, &req.vote, from_node) {
                        return refusal;
                    }
                    encode::<SnapshotReply>(&raft.install_snapshot(req).await)
                }
            }
        }
    };
    match reply {
        Ok(payload) => ResponseBody::Raft {
            payload: Bytes::from(payload),
        },
        Err(err) => {
            tracing::warn!(group, rpc = kind.name(), error = %err, "cannot encode a raft reply");
            error(ErrorCode::Internal, "cannot encode the raft reply".into())
        }
    }
}

/// Decode a request, or the `malformed` answer saying why not (postcard's words name
/// positions and types, never the bytes).
fn decoded<T: DeserializeOwned>(kind: RpcKind, payload: &[u8]) -> Result<T, ResponseBody> {
    decode(payload).map_err(|err| {
        error(
            ErrorCode::Malformed,
            format!("undecodable raft {} message: {err}", kind.name()),
        )
    })
}

/// Refuse a message whose vote names a member of the group that is another node than the
/// one whose certificate sent it. Raft ids are never reused and each names one node, so a
/// mismatch is a node speaking for another (a bug or a compromised peer), never a race. A
/// sender the group does not know yet (a group still joining) is let through: the Raft
/// protocol itself decides what its message is worth.
fn check_sender(
    raft: &RaftGroup,
    group: u32,
    vote: &Vote<u64>,
    from_node: &str,
) -> Result<(), ResponseBody> {
    let Some(sender) = vote.leader_id().voted_for() else {
        return Ok(());
    };
    let metrics = raft.metrics();
    let metrics = metrics.borrow();
    match metrics.membership_config.membership().get_node(&sender) {
        Some(member) if member.node != from_node => {
            tracing::warn!(
                group,
                member = sender,
                peer = from_node,
                expected = %member.node,
                "refused a raft message from a node speaking for another member"
            );
            Err(error(
                ErrorCode::Forbidden,
                format!(
                    "node {from_node} may not speak for member {sender} of group {group}, which \
                     is node {}",
                    member.node
                ),
            ))
        }
        _ => Ok(()),
    }
}

fn error(code: ErrorCode, message: String) -> ResponseBody {
    ResponseBody::Error(WireError::new(code, message))
}
