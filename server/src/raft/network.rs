//! Raft messages to other nodes, over their mutual-TLS peer connections.
//!
//! This module owns the sending side of the Raft transport:
//! - [`Peers`], the node-wide pool: one multiplexed peer connection per remote node (by its
//!   node name), shared by every group, dialled lazily with the node's [`Dialer`] and dialled
//!   again once it closes, fails or stops answering;
//! - [`Network`], the openraft [`RaftNetworkFactory`] of one group, and [`GroupClient`], its
//!   [`RaftNetwork`] to one member, which encode each RPC as a `RAFT` request (see
//!   [`super::rpc`] for the wire form) and sort every failure into the [`RPCError`] that
//!   makes openraft do the right thing next.
//!
//! # Failures
//!
//! - No connection (refused, TLS or identity failure, lost, the peer refusing the request):
//!   [`RPCError::Unreachable`], so openraft backs off before it tries that member again.
//! - No answer within the RPC's `hard_ttl`: [`RPCError::Timeout`]. A link that times out
//!   [`SILENT_LIMIT`] times in a row without a single answer in between is dropped and dialled
//!   afresh: a peer that vanished without closing (a partition, a frozen host) would otherwise
//!   hold a dead TCP connection for as long as the kernel retransmits.
//! - A request too large for one `RAFT` frame: [`RPCError::PayloadTooLarge`] with a hint of
//!   how many entries fit, before anything is sent. openraft retries at once with fewer
//!   entries. A single entry too large to send can never be split, so that is reported as
//!   unreachable (openraft backs off) and logged; an oversized snapshot chunk means the
//!   group's `snapshot_max_chunk_size` is set above what the transport carries.
//! - The peer's Raft answering with an error: [`RPCError::RemoteError`].
//!
//! Dialling happens in a task of its own, so an RPC whose deadline passes does not abandon a
//! handshake halfway (the next RPC finds the connection ready), and RPCs to other nodes never
//! wait on it. After a failed dial the node is not dialled again for a short, growing backoff;
//! RPCs in that window fail at once. Nothing here logs a payload.
//!
//! # What the groups' openraft `Config` must allow
//!
//! - `heartbeat_interval` is the deadline openraft gives every AppendEntries, heartbeats and
//!   full batches alike: it must cover the round trip of the largest batch (up to one frame,
//!   [`payload_limit`]) plus the follower's log flush, or big batches time out forever.
//! - `election_timeout_min` is the deadline of a vote, `install_snapshot_timeout` that of one
//!   snapshot chunk.
//! - `snapshot_max_chunk_size` must leave room in [`payload_limit`] for the chunk's metadata
//!   (the membership): half the peer frame is safe.
//! - `max_payload_entries` caps a batch by count; the transport cuts it by bytes as well.
//!
//! Every group shares one connection per peer, so a frame-sized batch of one group delays the
//! heartbeats of the others to that peer by its transfer time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, Vote};
use serde::de::DeserializeOwned;
use skv_client::ClientError;
use skv_proto::cluster::NodeEntry;
use skv_proto::{ErrorCode, MAX_RAFT_PAYLOAD};
use tokio::sync::watch;
use tokio::time::Instant;

use super::rpc::{self, RpcKind};
use super::{Member, TypeConfig};
use crate::net::peer::{Dialer, PeerConnection, PeerError};

/// Bytes of a `RAFT` frame that are not the payload: request id, flags, opcode, group, kind
/// and the payload's length prefix take 18; the rest is margin for envelope growth.
pub(crate) const ENVELOPE_HEADROOM: usize = 256;

/// Consecutive timeouts without any answer after which a link is dropped and dialled again.
pub(crate) const SILENT_LIMIT: u32 = 3;

/// The first wait after a failed dial; it doubles with each further failure.
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest wait between dials of a node that keeps failing.
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The largest payload one `RAFT` request may carry on a connection whose frames are at most
/// `max_frame` bytes.
pub(crate) fn payload_limit(max_frame: usize) -> usize {
    MAX_RAFT_PAYLOAD.min(max_frame.saturating_sub(ENVELOPE_HEADROOM))
}

/// The RPC error type of one RPC kind, as openraft's trait signatures name it.
type Failure<E = openraft::error::Infallible> = RPCError<u64, Member, RaftError<u64, E>>;

/// Why no connection to a peer is available right now. Says which node, never a payload.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LinkError {
    /// The dial failed (now, or recently enough that the node is still in its backoff).
    #[error("{0}")]
    Dial(String),
    /// The dialling task ended without a word (the runtime is shutting down).
    #[error("dialling node {0} was abandoned")]
    Abandoned(String),
}

/// A dial in progress: its outcome, once there is one.
type DialOutcome = Option<Result<Arc<PeerConnection>, String>>;

enum LinkState {
    /// Never dialled, or dropped on purpose: dial at the next RPC.
    Idle,
    /// A dial task is running; RPCs wait for its outcome.
    Dialing(watch::Receiver<DialOutcome>),
    /// Connected. `silent` counts the RPCs in a row that timed out without an answer.
    Up {
        conn: Arc<PeerConnection>,
        silent: u32,
    },
    /// The last dial failed; the node is not dialled again before `retry_at`.
    Down { retry_at: Instant, reason: String },
}

struct Link {
    addr: String,
    state: LinkState,
    /// Dials that failed in a row, for the backoff.
    failures: u32,
    /// Bumped at each dial, so a dial that finishes after its link was reset (another
    /// address, a newer dial) does not overwrite the newer state.
    generation: u64,
}

struct PeersInner {
    /// `None` on a node without TLS: it has no certificate to dial peers with, so only
    /// groups with no other member (a single-node cluster) can run there.
    dialer: Option<Dialer>,
    links: Mutex<HashMap<String, Link>>,
    /// The first wait after a failed dial, and the longest.
    backoff: (Duration, Duration),
}

/// The node-wide pool of peer connections for Raft traffic. Cheap to clone; clones share the
/// connections.
#[derive(Clone)]
pub(crate) struct Peers {
    inner: Arc<PeersInner>,
}

impl fmt::Debug for Peers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let links = self.links();
        let mut nodes: Vec<_> = links
            .iter()
            .map(|(node, link)| {
                let state = match link.state {
                    LinkState::Idle => "idle",
                    LinkState::Dialing(_) => "dialing",
                    LinkState::Up { .. } => "up",
                    LinkState::Down { .. } => "down",
                };
                (node.clone(), state)
            })
            .collect();
        nodes.sort();
        f.debug_struct("Peers").field("links", &nodes).finish()
    }
}

impl Peers {
    /// A pool dialling with `dialer` (this node's certificate); `None` on a node without TLS,
    /// where every remote member is unreachable.
    pub(crate) fn new(dialer: Option<Dialer>) -> Peers {
        Peers::with_backoff(dialer, DIAL_BACKOFF_MIN, DIAL_BACKOFF_MAX)
    }

    /// A pool whose dial backoff starts at `min` and grows to `max`.
    pub(crate) fn with_backoff(dialer: Option<Dialer>, min: Duration, max: Duration) -> Peers {
        Peers {
            inner: Arc::new(PeersInner {
                dialer,
                links: Mutex::new(HashMap::new()),
                backoff: (min, max.max(min)),
            }),
        }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<String, Link>> {
        // Every critical section is a few field updates that cannot panic halfway through a
        // link, so a poisoned lock still guards a consistent table.
        self.inner
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection to `member`'s node: the pooled one, or a new one. Waits only for a dial
    /// of that node; callers bound the wait with their own deadline.
    pub(crate) async fn connection(
        &self,
        member: &Member,
    ) -> Result<Arc<PeerConnection>, LinkError> {
        let mut outcome = {
            let mut links = self.links();
            let link = links.entry(member.node.clone()).or_insert_with(|| Link {
                addr: member.addr.clone(),
                state: LinkState::Idle,
                failures: 0,
                generation: 0,
            });
            if link.addr != member.addr {
                // The member moved: whatever we had was to the old address.
                link.addr = member.addr.clone();
                link.state = LinkState::Idle;
                link.failures = 0;
            }
            match &link.state {
                LinkState::Up { conn, .. } if !conn.is_closed() => return Ok(conn.clone()),
                LinkState::Dialing(outcome) => outcome.clone(),
                LinkState::Down { retry_at, reason } if Instant::now() < *retry_at => {
                    return Err(LinkError::Dial(format!(
                        "{reason} (not dialled again for a moment)"
                    )));
                }
                LinkState::Up { .. } | LinkState::Down { .. } | LinkState::Idle => {
                    let (tx, rx) = watch::channel(None);
                    link.generation += 1;
                    link.state = LinkState::Dialing(rx.clone());
                    tokio::spawn(self.clone().dial(
                        member.node.clone(),
                        member.addr.clone(),
                        link.generation,
                        tx,
                    ));
                    rx
                }
            }
        };
        let result = match outcome.wait_for(Option::is_some).await {
            Ok(done) => done.clone(),
            Err(_) => return Err(LinkError::Abandoned(member.node.clone())),
        };
        match result {
            Some(Ok(conn)) => Ok(conn),
            Some(Err(reason)) => Err(LinkError::Dial(reason)),
            None => Err(LinkError::Abandoned(member.node.clone())),
        }
    }

    /// Dial `node` and record the outcome in its link (unless the link moved on meanwhile).
    async fn dial(
        self,
        node: String,
        addr: String,
        generation: u64,
        tx: watch::Sender<DialOutcome>,
    ) {
        let entry = NodeEntry {
            id: node.clone(),
            addr: addr.clone(),
            // The dialer checks the name, not the Raft id.
            raft_id: 0,
        };
        let result = match &self.inner.dialer {
            Some(dialer) => dialer.connect(&entry).await.map(Arc::new),
            None => Err(PeerError::Unreachable {
                node: node.clone(),
                addr: addr.clone(),
                reason: "this node runs without TLS, so it has no certificate to dial other \
                         members with"
                    .into(),
            }),
        };
        let outcome = {
            let mut links = self.links();
            let current = links
                .get_mut(&node)
                .filter(|link| link.generation == generation && link.addr == addr);
            match (result, current) {
                (Ok(conn), Some(link)) => {
                    if link.failures > 0 {
                        tracing::info!(peer = %node, %addr, "raft link to the node is back");
                    }
                    link.failures = 0;
                    link.state = LinkState::Up {
                        conn: conn.clone(),
                        silent: 0,
                    };
                    Ok(conn)
                }
                (Err(err), Some(link)) => {
                    link.failures = link.failures.saturating_add(1);
                    let wait = dial_backoff(link.failures, self.inner.backoff);
                    // The first failure is news; the retries of a node that stays down are not.
                    if link.failures == 1 {
                        tracing::warn!(peer = %node, error = %err, "cannot reach a raft peer");
                    } else {
                        tracing::debug!(peer = %node, error = %err, retry_in = ?wait, "raft peer still unreachable");
                    }
                    let reason = err.to_string();
                    link.state = LinkState::Down {
                        retry_at: Instant::now() + wait,
                        reason: reason.clone(),
                    };
                    Err(reason)
                }
                // The link was reset while we dialled: hand the outcome to whoever waited,
                // keep the table as the newer state left it.
                (result, None) => result.map_err(|err| err.to_string()),
            }
        };
        let _ = tx.send(Some(outcome));
    }

    /// An RPC on `conn` was answered: the link is alive.
    fn answered(&self, node: &str, conn: &Arc<PeerConnection>) {
        if let Some(Link {
            state: LinkState::Up { conn: up, silent },
            ..
        }) = self.links().get_mut(node)
        {
            if Arc::ptr_eq(up, conn) {
                *silent = 0;
            }
        }
    }

    /// An RPC on `conn` timed out: after [`SILENT_LIMIT`] of those in a row, drop the link so
    /// the next RPC dials afresh. RPCs still waiting on the old connection finish on it.
    fn timed_out(&self, node: &str, conn: &Arc<PeerConnection>) {
        let mut links = self.links();
        let Some(link) = links.get_mut(node) else {
            return;
        };
        if let LinkState::Up { conn: up, silent } = &mut link.state {
            if Arc::ptr_eq(up, conn) {
                *silent += 1;
                if *silent >= SILENT_LIMIT {
                    tracing::info!(
                        peer = %node,
                        timeouts = *silent,
                        "raft link stopped answering; dialling it again"
                    );
                    link.state = LinkState::Idle;
                }
            }
        }
    }
}

/// How long to wait before dialling a node again after `failures` failed dials in a row:
/// `min`, doubling up to `max`.
fn dial_backoff(failures: u32, (min, max): (Duration, Duration)) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    min.saturating_mul(1 << doublings).min(max)
}

/// The openraft network factory of one group: every member is reached through the node-wide
/// [`Peers`], with messages tagged by `group`.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    group: u32,
    peers: Peers,
}

impl Network {
    /// The network of `group` over `peers`.
    pub(crate) fn new(group: u32, peers: Peers) -> Network {
        Network { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = GroupClient;

    async fn new_client(&mut self, target: u64, node: &Member) -> GroupClient {
        // openraft asks for a client at every election and heartbeat round, so this only
        // names the target; connections live in the pool.
        GroupClient {
            group: self.group,
            target,
            member: node.clone(),
            peers: self.peers.clone(),
        }
    }
}

/// One group's openraft client for one member.
#[derive(Debug, Clone)]
pub(crate) struct GroupClient {
    group: u32,
    target: u64,
    member: Member,
    peers: Peers,
}

/// What is too large about a request, in openraft's terms, or `None` if it fits. `entries` is
/// the number of log entries an append carries (0 for other kinds).
fn too_large<E: std::error::Error>(
    kind: RpcKind,
    entries: usize,
    size: usize,
    limit: usize,
) -> Option<Failure<E>> {
    if size <= limit {
        return None;
    }
    let what = format!(
        "a raft {} message of {size} bytes exceeds the {limit}-byte transport limit",
        kind.name()
    );
    match kind {
        RpcKind::Append if entries > 1 => {
            // Entries differ in size; aim at nine tenths of the proportional share so one
            // retry usually fits.
            let share = (entries as u128 * limit as u128 / size as u128) as u64;
            let hint = (share * 9 / 10).max(1);
            Some(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint).with_source_error(&AnyError::error(what)),
            ))
        }
        RpcKind::Append => {
            // One entry cannot be split, and openraft retries a PayloadTooLarge at once: that
            // would spin. Unreachable makes it back off; the entry must be made smaller at its
            // source (the proposer's batch limit).
            tracing::error!(
                size,
                limit,
                "a single raft log entry is larger than the transport carries"
            );
            Some(RPCError::Unreachable(Unreachable::from(AnyError::error(
                format!("{what}, and it holds a single log entry that cannot be split"),
            ))))
        }
        RpcKind::InstallSnapshot => {
            // openraft cuts chunks by `snapshot_max_chunk_size` and cannot re-cut them; it
            // abandons this snapshot attempt on PayloadTooLarge.
            Some(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(1).with_source_error(&AnyError::error(format!(
                    "{what}; lower the group's snapshot_max_chunk_size"
                ))),
            ))
        }
        RpcKind::Vote => Some(RPCError::Network(NetworkError::from(AnyError::error(what)))),
    }
}

fn unreachable<E: std::error::Error>(message: String) -> Failure<E> {
    RPCError::Unreachable(Unreachable::from(AnyError::error(message)))
}

fn network<E: std::error::Error>(message: String) -> Failure<E> {
    RPCError::Network(NetworkError::from(AnyError::error(message)))
}

fn rpc_type(kind: RpcKind) -> RPCTypes {
    match kind {
        RpcKind::Append => RPCTypes::AppendEntries,
        RpcKind::Vote => RPCTypes::Vote,
        RpcKind::InstallSnapshot => RPCTypes::InstallSnapshot,
    }
}

// The error type is openraft's, fixed by the `RaftNetwork` signatures these helpers serve.
#[allow(clippy::result_large_err)]
impl GroupClient {
    /// Send one encoded request and return the encoded reply, or the failure in openraft's
    /// terms. `vote` is the request's vote (its sender, for a timeout report); `entries` its
    /// entry count for the too-large hint.
    async fn send<E: std::error::Error>(
        &self,
        kind: RpcKind,
        payload: Result<Vec<u8>, postcard::Error>,
        entries: usize,
        vote: &Vote<u64>,
        option: &RPCOption,
    ) -> Result<Bytes, Failure<E>> {
        let payload = payload.map_err(|err| {
            network(format!(
                "cannot encode a raft {} message: {err}",
                kind.name()
            ))
        })?;
        // Refuse what no connection could carry before dialling for it.
        if let Some(err) = too_large(kind, entries, payload.len(), MAX_RAFT_PAYLOAD) {
            return Err(err);
        }
        let ttl = option.hard_ttl();
        let deadline = Instant::now() + ttl;
        let timeout = || {
            RPCError::Timeout(Timeout {
                action: rpc_type(kind),
                id: vote.leader_id().voted_for().unwrap_or(self.target),
                target: self.target,
                timeout: ttl,
            })
        };
        let conn =
            match tokio::time::timeout_at(deadline, self.peers.connection(&self.member)).await {
                Err(_) => return Err(timeout()),
                Ok(Err(err)) => {
                    return Err(unreachable(format!(
                        "member {} ({}): {err}",
                        self.target, self.member
                    )))
                }
                Ok(Ok(conn)) => conn,
            };
        if let Some(err) = too_large(
            kind,
            entries,
            payload.len(),
            payload_limit(conn.max_frame()),
        ) {
            return Err(err);
        }
        let call = conn.raft(self.group, kind.wire(), Bytes::from(payload));
        match tokio::time::timeout_at(deadline, call).await {
            Err(_) => {
                self.peers.timed_out(&self.member.node, &conn);
                Err(timeout())
            }
            Ok(Ok(reply)) => {
                self.peers.answered(&self.member.node, &conn);
                Ok(reply)
            }
            Ok(Err(err)) => {
                // The peer answered (with a refusal): the link itself is alive.
                if matches!(
                    err,
                    PeerError::Call {
                        source: ClientError::Refused(_) | ClientError::Server(_),
                        ..
                    }
                ) {
                    self.peers.answered(&self.member.node, &conn);
                }
                Err(self.call_failure(kind, err, timeout))
            }
        }
    }

    /// Sort a failed call into openraft's terms.
    fn call_failure<E: std::error::Error>(
        &self,
        kind: RpcKind,
        err: PeerError,
        timeout: impl FnOnce() -> Failure<E>,
    ) -> Failure<E> {
        let about = format!(
            "raft {} to member {} of group {}",
            kind.name(),
            self.target,
            self.group
        );
        match err {
            PeerError::Timeout { .. }
            | PeerError::Call {
                source: ClientError::Timeout { .. },
                ..
            } => timeout(),
            PeerError::Call {
                source: ClientError::Server(wire) | ClientError::Refused(wire),
                ..
            } => match wire.code {
                // The peer cannot take the message now (it does not run the group yet, is
                // shutting down, or refuses this node): back off, as for a dead link.
                ErrorCode::ClusterState
                | ErrorCode::Unavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::TryAgain
                | ErrorCode::Forbidden
                | ErrorCode::Unauthenticated => unreachable(format!(
                    "{about}: node {} refused: {wire}",
                    self.member.node
                )),
                _ => network(format!(
                    "{about}: node {} answered: {wire}",
                    self.member.node
                )),
            },
            PeerError::Call {
                source:
                    ClientError::Disconnected { .. } | ClientError::Connect { .. } | ClientError::Tls(_),
                ..
            }
            | PeerError::Unreachable { .. }
            | PeerError::WrongIdentity { .. } => unreachable(format!("{about}: {err}")),
            PeerError::Call { .. } => network(format!("{about}: {err}")),
        }
    }

    /// Decode a reply and turn a remote Raft error into openraft's `RemoteError`.
    fn reply<T, E>(&self, kind: RpcKind, bytes: &[u8]) -> Result<T, Failure<E>>
    where
        E: std::error::Error,
        Result<T, RaftError<u64, E>>: DeserializeOwned,
    {
        let reply: Result<T, RaftError<u64, E>> = rpc::decode(bytes).map_err(|err| {
            network(format!(
                "undecodable reply to a raft {} from node {}: {err}",
                kind.name(),
                self.member.node
            ))
        })?;
        reply.map_err(|err| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                err,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for GroupClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, Failure> {
        let kind = RpcKind::Append;
        let bytes = self
            .send(
                kind,
                rpc::encode(&rpc),
                rpc.entries.len(),
                &rpc.vote,
                &option,
            )
            .await?;
        self.reply(kind, &bytes)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, Failure<InstallSnapshotError>> {
        let kind = RpcKind::InstallSnapshot;
        let bytes = self
            .send(kind, rpc::encode(&rpc), 0, &rpc.vote, &option)
            .await?;
        self.reply(kind, &bytes)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, Failure> {
        let kind = RpcKind::Vote;
        let bytes = self
            .send(kind, rpc::encode(&rpc), 0, &rpc.vote, &option)
            .await?;
        self.reply(kind, &bytes)
    }
}

#[cfg(test)]
mod tests;
