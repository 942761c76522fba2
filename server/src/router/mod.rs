//! The router: who may send what, then where it goes.
//!
//! Every decoded request passes here after the connection has framed it, in this order:
//! 1. **Role policy.** A peer node (its certificate says `spiffe://<cluster>/node/<id>`) may use
//!    the peer protocol and nothing else: a node certificate gives no client rights. A client
//!    certificate may never use the peer protocol, whatever its token says.
//! 2. **Checkpoints 2 and 3** (when the node checks tokens), through
//!    [`Checkpoint::authorize_presented`], by the request's token or the token handle it names
//!    (REGISTER_TOKEN, which makes a handle, is answered here too).
//! 3. **Slot ownership.** A keyed command goes to the local [`Shard`] that owns its slot in the
//!    node's map; a slot no local shard owns is answered MOVED with its owner; a slot whose
//!    ownership is changing under the command is answered TRYAGAIN. Scans cover every local
//!    shard ([`scan`]).
//! 4. **Dispatch** to the shard, or to the cluster control plane for CLUSTER_MAP, CONTROL and
//!    IMPORT, or (RAFT from a peer) to the replica group the message names
//!    ([`crate::raft::rpc`]).
//!
//! The router is the only module that knows both the map and the shards. It answers at once
//! where it can and hands back a future ([`Answer::Later`]) for writes waiting for durability
//! and for control requests, which the connection runs beside its other requests.

mod scan;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use skv_proto::cluster::{hash_slot, ControlRequest};
use skv_proto::{ErrorCode, Request, RequestBody, ResponseBody, WireError};

use crate::auth::checkpoint::{Checkpoint, Granted, Presented, Refusal, Session};
use crate::cluster::{Cluster, View};
use crate::limits::rate::{IdentityRef, Meter, RateLimiter};
use crate::net::identity::PeerKind;
use crate::raft::rpc::{self, RaftRegistry};
use crate::shard::replica::ReplicaAnswer;
use crate::shard::{Command, Execution, Pending};

/// What to do with one decoded request.
pub(crate) enum Answer {
    /// Send this now.
    Now(ResponseBody),
    /// Send what this future yields once it is done: a write waiting for its flush, or a
    /// control request (a slot move takes seconds).
    Later(Pending),
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Now(body) => f.debug_tuple("Now").field(body).finish(),
            Answer::Later(_) => f.write_str("Later(..)"),
        }
    }
}

/// Routes requests for one node. Shared by every connection.
#[derive(Debug)]
pub(crate) struct Router {
    cluster: Arc<Cluster>,
    checkpoint: Option<Arc<Checkpoint>>,
    /// The Raft groups this node runs, for RAFT messages from peers.
    raft: RaftRegistry,
    /// Scans running at once on the blocking pool: each holds up to about one frame per
    /// local shard, so this bounds what scans together can hold.
    scans: Arc<tokio::sync::Semaphore>,
    /// Per-identity request and byte rates, when configured.
    rate: Option<RateLimiter>,
}

/// Scans the node runs at once; further scans wait for a turn (their connections' other
/// requests do not).
const CONCURRENT_SCANS: usize = 8;

impl Router {
    pub(crate) fn new(
        cluster: Arc<Cluster>,
        checkpoint: Option<Arc<Checkpoint>>,
        raft: RaftRegistry,
    ) -> Router {
        Router {
            cluster,
            checkpoint,
            raft,
            scans: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SCANS)),
            rate: None,
        }
    }

    /// Charge every client request to its identity's buckets under `rate` (see
    /// [`crate::limits::rate`]).
    pub(crate) fn with_rate_limiter(mut self, rate: Option<RateLimiter>) -> Router {
        self.rate = rate;
        self
    }

    /// The per-identity limiter, for the connection to charge answers' bytes.
    pub(crate) fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.rate.as_ref()
    }

    /// Steps 1 to 4 of the module docs for one request. `max_frame` bounds scan pages; `meter`
    /// is the connection's link to the per-identity rate limit (the request's frame size set).
    pub(crate) fn route(
        &self,
        kind: &PeerKind,
        session: &mut Session,
        request: Request,
        max_frame: usize,
        meter: &mut Meter,
    ) -> Answer {
        let write_session = request.session.map(|s| session.scope_write(s));
        let consistency = request.consistency;
        let body = request.body;
        match kind {
            PeerKind::Peer(node) => return self.peer(node, session, body),
            PeerKind::ForeignNode => {
                if !matches!(body, RequestBody::Ping | RequestBody::ClusterMap) {
                    return self.refuse_role(
                        session,
                        body.op().as_str(),
                        "this certificate names a node of another cluster",
                    );
                }
            }
            PeerKind::Client => {}
        }
        if matches!(body, RequestBody::Import { .. } | RequestBody::Raft { .. }) {
            let op = body.op().as_str();
            return self.refuse_role(
                session,
                op,
                "IMPORT and RAFT are part of the peer protocol: only nodes of this cluster may \
                 send them",
            );
        }
        if request.handle.is_some() && !session.speaks_handles() {
            return refuse(
                ErrorCode::Malformed,
                "the token-handle flag needs protocol version 2; this connection negotiated 1",
            );
        }
        // A registration is verified like a request carrying its token, and charged to the
        // same identity's rate below; a handle comes back only if both pass.
        let (granted, registered) = match (&self.checkpoint, &body) {
            (Some(checkpoint), RequestBody::RegisterToken { token }) => {
                match checkpoint.register(session, token) {
                    Ok((handle, verified)) => (Granted::Token(verified), Some(handle)),
                    Err(Refusal { code, message }) => return refuse(code, message),
                }
            }
            (None, RequestBody::RegisterToken { .. }) => {
                return refuse(
                    ErrorCode::UnknownOp,
                    "this node does not check tokens, so it has no use for token handles",
                )
            }
            (Some(checkpoint), _) => {
                let presented = match request.handle {
                    Some(handle) => Presented::Handle(handle),
                    None => Presented::Token(request.token.as_ref()),
                };
                match checkpoint.authorize_presented(session, presented, &body) {
                    Ok(granted) => (granted, None),
                    Err(Refusal { code, message }) => return refuse(code, message),
                }
            }
            (None, _) => (Granted::Nothing, None),
        };
        // After the checkpoints, so the charge goes to who the token proves the caller is
        // (a refused request is the failure limiter's business, not this one's).
        if let Some(rate) = &self.rate {
            let identity = match (granted.verified(session), session.thumbprint()) {
                (Some(v), _) => IdentityRef::Subject(v.sub()),
                (None, Some(cert)) => IdentityRef::Certificate(cert),
                (None, None) => IdentityRef::Source(meter.source),
            };
            if let Err(limited) = meter.admit(rate, identity, meter.frame_len) {
                if let Some(m) = crate::metrics::get() {
                    m.rate_limited(limited.which());
                }
                let ms = limited.retry_after_ms();
                return Answer::Now(ResponseBody::Error(WireError::retry_after(
                    ErrorCode::RateLimited,
                    format!(
                        "this identity (its token's subject, or its client certificate) is over \
                         its limit of {} per second (--rate-limit-{}); retry after {ms} ms",
                        limited.which(),
                        match limited.which() {
                            "bytes" => "bytes-per-sec",
                            _ => "rps",
                        }
                    ),
                    ms,
                )));
            }
        }
        drop(granted);
        if let Some(handle) = registered {
            return Answer::Now(ResponseBody::TokenHandle { handle });
        }
        let command = match body {
            RequestBody::Ping => return Answer::Now(ResponseBody::Pong),
            RequestBody::ClusterMap => return Answer::Now(self.cluster.map_answer()),
            RequestBody::Control { json } => {
                return match ControlRequest::from_json(&json) {
                    Ok(req) if req.peer_only() => self.refuse_role(
                        session,
                        req.name(),
                        "this control request is part of the peer protocol: only nodes of \
                         this cluster may send it",
                    ),
                    Ok(req) => Answer::Later(Box::pin(self.cluster.clone().control(req))),
                    Err(err) => refuse(ErrorCode::Malformed, &err.to_string()),
                }
            }
            RequestBody::Scan {
                prefix,
                limit,
                cursor,
                keys_only,
            } => {
                // Off the async workers: a scan walks storage, and the connections sharing
                // this worker must not wait for it.
                let cluster = self.cluster.clone();
                let scans = self.scans.clone();
                return Answer::Later(Box::pin(async move {
                    // The semaphore is never closed.
                    let Ok(_turn) = scans.acquire_owned().await else {
                        return ResponseBody::Error(WireError::new(
                            ErrorCode::Internal,
                            "the scan failed inside the node",
                        ));
                    };
                    let scan = tokio::task::spawn_blocking(move || {
                        let page = scan::Page {
                            limit,
                            max_frame,
                            keys_only,
                        };
                        scan::scan(&cluster, &prefix, cursor.as_deref(), page)
                    });
                    scan.await.unwrap_or_else(|_| {
                        ResponseBody::Error(WireError::new(
                            ErrorCode::Internal,
                            "the scan failed inside the node",
                        ))
                    })
                }));
            }
            RequestBody::Get { key } => Command::Get { key },
            RequestBody::Put { key, value } => Command::Put { key, value },
            RequestBody::Delete { key } => Command::Delete { key },
            RequestBody::Cas {
                key,
                expect_version,
                value,
            } => Command::Cas {
                key,
                expect_version,
                value,
            },
            RequestBody::Hello { .. } => {
                return refuse(
                    ErrorCode::HandshakeRequired,
                    "HELLO may only be sent once, as the first request",
                )
            }
            // Refused above for every caller; listed so a new op cannot slip through.
            RequestBody::Import { .. } | RequestBody::Raft { .. } => {
                return refuse(ErrorCode::Internal, "a peer request reached the data path")
            }
            // Answered above, before the checkpoints.
            RequestBody::RegisterToken { .. } => {
                return refuse(
                    ErrorCode::Internal,
                    "a token registration reached the data path",
                )
            }
        };
        self.dispatch(command, write_session, consistency)
    }

    /// The peer protocol: what a node of this cluster may ask.
    fn peer(&self, node: &str, session: &Session, body: RequestBody) -> Answer {
        // On a replicated node, only nodes the map lists speak Raft or change anything: a node
        // that was replaced or removed keeps a valid certificate until it expires, and must
        // not keep a say in the groups it left. PING and CLUSTER_MAP stay open to every node
        // of the cluster, so a node that is being added can learn the map.
        let view = self.cluster.view_now();
        let mutating = !matches!(body, RequestBody::Ping | RequestBody::ClusterMap);
        if mutating && view.replicated() && view.map.node(node).is_none() {
            let reason = format!(
                "node {node} is not in the cluster map (epoch {}): it has no say in the cluster",
                view.epoch()
            );
            drop(view);
            return self.refuse_role(session, body.op().as_str(), &reason);
        }
        drop(view);
        match body {
            RequestBody::Ping => Answer::Now(ResponseBody::Pong),
            RequestBody::ClusterMap => Answer::Now(self.cluster.map_answer()),
            // Slot moves run through the shards' logs now; nothing sends IMPORT any more.
            RequestBody::Import { .. } => refuse(
                ErrorCode::ClusterState,
                "IMPORT is no longer part of the peer protocol: slot moves run through the \
                 shards' Raft logs",
            ),
            // Raft waits on the group's core (and an append on its log's flush): answered
            // later, beside the connection's other requests.
            RequestBody::Raft {
                group,
                rpc,
                payload,
            } if rpc >= crate::raft::forward::FORWARD_PROPOSE => {
                // Forwarded proposals and export pages (slot moves, map changes).
                let repl = self.cluster.replication();
                Answer::Later(Box::pin(async move {
                    let raft = repl.as_ref().and_then(|r| r.registry().get(group));
                    let reader = repl
                        .as_ref()
                        .and_then(|r| r.replica(group))
                        .map(|r| r.reader().clone());
                    match crate::raft::forward::serve(raft, reader, rpc, &payload).await {
                        Ok(payload) => ResponseBody::Raft { payload },
                        Err(why) => {
                            ResponseBody::Error(WireError::new(ErrorCode::ClusterState, why))
                        }
                    }
                }))
            }
            RequestBody::Raft {
                group,
                rpc,
                payload,
            } => {
                let registry = self.raft.clone();
                let node = node.to_owned();
                Answer::Later(Box::pin(async move {
                    rpc::serve(&registry, &node, group, rpc, payload).await
                }))
            }
            RequestBody::Control { json } => match ControlRequest::from_json(&json) {
                Ok(req) if req.peer_only() => {
                    tracing::debug!(peer = %node, request = req.name(), "peer control request");
                    Answer::Later(Box::pin(self.cluster.clone().control(req)))
                }
                Ok(req) => self.refuse_role(
                    session,
                    req.name(),
                    "administrative requests need a client certificate and an admin token, \
                     not a node certificate",
                ),
                Err(err) => refuse(ErrorCode::Malformed, &err.to_string()),
            },
            other => self.refuse_role(
                session,
                other.op().as_str(),
                "a node certificate gives no client rights; use a client certificate",
            ),
        }
    }

    /// Hand a keyed command to the local shard owning its slot (step 3 of the module docs).
    fn dispatch(
        &self,
        command: Command,
        write_session: Option<skv_proto::Session>,
        consistency: skv_proto::Consistency,
    ) -> Answer {
        let slot = hash_slot(command.key());
        let view = self.cluster.view_now();
        if view.replicated() {
            // The view routes; the state machines decide ownership. A replica whose state
            // machine owns the slot serves it even when this node's view of the map is a
            // moment behind (a slot just moved here, before the metadata group's commit reached
            // this node).
            // The common case borrows the view's replica: no reference count is touched.
            let fallback;
            let replica = match view.replica_for(slot) {
                Some(replica) => replica,
                None => {
                    fallback = self.cluster.replication().and_then(|repl| {
                        repl.replicas()
                            .into_iter()
                            .find(|r| r.reader().slots().owned.contains(slot))
                    });
                    match &fallback {
                        Some(replica) => replica,
                        None => return Answer::Now(moved(&view, slot)),
                    }
                }
            };
            return match replica.execute(slot, command, write_session, consistency) {
                ReplicaAnswer::Now(body) => Answer::Now(body),
                ReplicaAnswer::Later(pending) => Answer::Later(pending),
                ReplicaAnswer::NotLeader(Some(leader)) => Answer::Now(ResponseBody::NotLeader {
                    shard: replica.shard(),
                    epoch: view.epoch(),
                    leader: Some((leader.node, leader.addr)),
                }),
                ReplicaAnswer::NotLeader(None) => refuse(
                    ErrorCode::Unavailable,
                    &format!(
                        "shard {} has no leader now: an election is under way, or fewer than a \
                         quorum of its replicas are reachable; reads with --consistency stale \
                         are still served",
                        replica.shard()
                    ),
                ),
            };
        }
        let Some(shard) = view.shard_for(slot) else {
            return Answer::Now(moved(&view, slot));
        };
        match shard.execute_in(slot, command) {
            Execution::Ready(body) => Answer::Now(body),
            Execution::Durable(pending) => Answer::Later(pending),
            // The map changed between our look at it and the shard's own check: answer from
            // the newer map, or ask for a retry while the shard catches up with it.
            Execution::NotServed => {
                let now = self.cluster.view_now();
                match now.shard_for(slot) {
                    None => Answer::Now(moved(&now, slot)),
                    Some(_) => refuse(
                        ErrorCode::TryAgain,
                        &format!(
                            "the owner of slot {slot} is changing on this node; retry shortly"
                        ),
                    ),
                }
            }
        }
    }

    /// Refuse a request because of the role of the connection's certificate: logged, audited
    /// (when the node keeps an audit log), answered `forbidden`.
    fn refuse_role(&self, session: &Session, op: &str, reason: &str) -> Answer {
        // Debug, not warn: a client can send these as fast as it likes, and the audit log
        // (bounded, never blocking) is where refusals are kept.
        tracing::debug!(
            op,
            reason,
            "refused a request for the role of its certificate"
        );
        if let Some(checkpoint) = &self.checkpoint {
            checkpoint.deny_role(session, op, reason);
        }
        refuse(ErrorCode::Forbidden, reason)
    }
}

fn refuse(code: ErrorCode, message: &str) -> Answer {
    Answer::Now(ResponseBody::Error(WireError::new(code, message)))
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
