//! A replicated shard on this node: its openraft group, the batching of client writes into log
//! entries, the coalescing of linearizable reads, and the local reads of its state machine.
//!
//! # Writes
//!
//! Only the leader proposes. A write goes into the replica's queue; a proposer task takes what
//! is queued (up to [`MAX_BATCH`] writes or [`MAX_BATCH_BYTES`]) and proposes it as one
//! [`Proposal::Writes`] entry, with up to [`MAX_INFLIGHT_BATCHES`] entries in flight, so a burst
//! of writes shares one fsync and one replication round trip instead of paying one each. The
//! answer comes back when openraft has committed the entry (a quorum has it in its durable log)
//! and this replica has applied it, with the outcome the state machine decided.
//!
//! A write that cannot commit within [`WRITE_TIMEOUT`] (no quorum) is answered `unavailable`:
//! its outcome is unknown, and a retry with the same session is applied at most once.
//!
//! # Reads
//!
//! A linearizable read waits for a ReadIndex round: the leader confirms with a quorum that it
//! still leads, then waits until it has applied everything committed before the read arrived
//! (`Raft::ensure_linearizable`). Reads that arrive while a round is running wait for the next
//! one, which starts after they arrived, so one round serves every read queued behind it. A
//! stale read skips the round and reads what this replica has applied.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{RaftMetrics, ServerState};
use skv_proto::{Consistency, ErrorCode, ResponseBody, Session, WireError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::{Command, Pending};
use crate::raft::state::ShardReader;
use crate::raft::{Member, Outcome, Proposal, RaftGroup, Write, WriteOp, WriteOutcome};

/// Most writes in one log entry.
pub(crate) const MAX_BATCH: usize = 512;
/// Most key and value bytes in one log entry: well under the peer frame limit, so one
/// AppendEntries of a batch always fits.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Log entries of client writes in flight at once per shard.
pub(crate) const MAX_INFLIGHT_BATCHES: usize = 2;
/// How long a write waits for its entry to commit before it is answered `unavailable`.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a linearizable read waits for its ReadIndex round.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(3);
/// Writes queued per shard before new ones are refused with `try_again`.
const QUEUE: usize = 16 * 1024;
/// Key and value bytes queued per shard before new writes are refused with `try_again`: a
/// client pipelining large values cannot make the node hold more than this per shard.
const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// What became of a command sent to a replica.
pub(crate) enum ReplicaAnswer {
    /// The answer, now.
    Now(ResponseBody),
    /// The answer once the write committed or the read's round confirmed leadership.
    Later(Pending),
    /// This replica does not lead the shard: the leader it knows of, if any.
    NotLeader(Option<Member>),
}

struct QueuedWrite {
    write: Write,
    reply: oneshot::Sender<ResponseBody>,
}

type ReadWaiter = oneshot::Sender<Result<(), GateRefusal>>;

/// Why a linearizable read could not be served here.
#[derive(Debug, Clone)]
enum GateRefusal {
    NotLeader(Option<Member>),
    Unavailable(String),
}

/// One shard group hosted on this node.
pub(crate) struct Replica {
    shard: u32,
    raft_id: u64,
    /// A leader that has not heard from a quorum for this long refuses new requests at once
    /// instead of queueing them behind a commit that cannot happen.
    quorum_lost_after_ms: u64,
    raft: RaftGroup,
    reader: ShardReader,
    metrics: watch::Receiver<RaftMetrics<u64, Member>>,
    writes: mpsc::Sender<QueuedWrite>,
    /// Key and value bytes in `writes`, not yet taken into a batch.
    queued_bytes: Arc<AtomicUsize>,
    reads: mpsc::Sender<ReadWaiter>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("shard", &self.shard)
            .field("raft_id", &self.raft_id)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Wrap a started openraft group and its state machine's reader; spawns the proposer and
    /// the read gate on the current runtime.
    pub(crate) fn start(
        shard: u32,
        raft_id: u64,
        raft: RaftGroup,
        reader: ShardReader,
        quorum_lost_after: Duration,
    ) -> Replica {
        let (writes, queue) = mpsc::channel(QUEUE);
        let (reads, waiters) = mpsc::channel(QUEUE);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(propose_loop(
            shard,
            raft.clone(),
            queue,
            queued_bytes.clone(),
        ));
        tokio::spawn(read_gate_loop(raft.clone(), waiters));
        Replica {
            shard,
            raft_id,
            quorum_lost_after_ms: quorum_lost_after.as_millis() as u64,
            metrics: raft.metrics(),
            raft,
            reader,
            writes,
            queued_bytes,
            reads,
        }
    }

    /// The shard id.
    pub(crate) fn shard(&self) -> u32 {
        self.shard
    }

    /// The openraft handle (membership changes, status, shutdown).
    pub(crate) fn raft(&self) -> &RaftGroup {
        &self.raft
    }

    /// Local reads of the state machine (scans, slot moves, status).
    pub(crate) fn reader(&self) -> &ShardReader {
        &self.reader
    }

    /// Whether this replica leads its group now, as far as it knows.
    pub(crate) fn is_leader(&self) -> bool {
        let m = self.metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.raft_id)
    }

    /// `None` when this replica leads and a quorum acknowledged it recently; otherwise the
    /// answer to give. A leader cut off from the others keeps its role until it hears of a newer
    /// term, but cannot commit anything. One look at the metrics per request.
    fn refuse_unless_leading(&self) -> Option<ReplicaAnswer> {
        self.leading().err()
    }

    /// [`Self::refuse_unless_leading`], and on success whether a linearizable read may be
    /// served now, without a ReadIndex round: this replica leads a group whose only voter is
    /// itself, and has applied an entry of its current term.
    ///
    /// A sole voter is its own quorum, so the round openraft would run asks no one (it answers
    /// from its core at once, as etcd's raft does for a singleton); what it still checks is
    /// that the leader's first entry, its no-op, is applied, since everything committed in
    /// earlier terms comes before it. An applied entry of the current term says the same:
    /// the no-op is the first entry a leader proposes. Every write answered in this term was
    /// applied here before its answer left, so the local state machine holds everything a
    /// client could have seen acknowledged.
    ///
    /// The look is at the published metrics, a moment behind the Raft core. That is safe
    /// here: no other replica can lead or commit without this one's vote or acceptance until
    /// the membership has more voters, and a membership change is appended by this leader and
    /// published (so reads take the round again) long before any other replica could act on
    /// it, which needs a round trip through this replica's own core.
    fn leading(&self) -> Result<bool, ReplicaAnswer> {
        let m = self.metrics.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(self.raft_id) {
            return Err(ReplicaAnswer::NotLeader(leader_of(&m)));
        }
        let voters = m.membership_config.membership().get_joint_config();
        let sole = matches!(&voters[..], [only] if only.len() == 1 && only.contains(&self.raft_id));
        let quorum = match m.millis_since_quorum_ack {
            Some(ms) => ms <= self.quorum_lost_after_ms,
            // A single-member group acknowledges itself.
            None => sole,
        };
        if !quorum {
            drop(m);
            return Err(self.quorum_lost());
        }
        Ok(sole
            && m.last_applied
                .is_some_and(|applied| applied.leader_id.term == m.current_term))
    }

    fn quorum_lost(&self) -> ReplicaAnswer {
        ReplicaAnswer::Now(error(
            ErrorCode::Unavailable,
            format!(
                "shard {} cannot commit writes or confirm reads: its leader has not heard from a \
                 quorum of its replicas for over {} ms; reads with --consistency stale are still \
                 served",
                self.shard, self.quorum_lost_after_ms
            ),
        ))
    }

    /// Execute one command with the client's session and consistency; `slot` is its key's.
    pub(crate) fn execute(
        &self,
        slot: u16,
        command: Command,
        session: Option<Session>,
        consistency: Consistency,
    ) -> ReplicaAnswer {
        let op = match command {
            Command::Get { key } => return self.get(slot, key, consistency),
            Command::Put { key, value } => WriteOp::Put { key, value },
            Command::Delete { key } => WriteOp::Delete { key },
            Command::Cas {
                key,
                expect_version,
                value,
            } => WriteOp::Cas {
                key,
                expect_version,
                value,
            },
        };
        if let Some(refusal) = self.refuse_unless_leading() {
            return refusal;
        }
        let (reply, answer) = oneshot::channel();
        let queued = QueuedWrite {
            write: Write::new(session, op),
            reply,
        };
        let size = write_bytes(&queued.write);
        let before = self.queued_bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > MAX_QUEUED_BYTES || self.writes.try_send(queued).is_err() {
            self.queued_bytes.fetch_sub(size, Ordering::AcqRel);
            return ReplicaAnswer::Now(error(
                ErrorCode::TryAgain,
                format!(
                    "shard {} has too many writes queued; retry shortly",
                    self.shard
                ),
            ));
        }
        let shard = self.shard;
        ReplicaAnswer::Later(Box::pin(async move {
            answer.await.unwrap_or_else(|_| {
                error(
                    ErrorCode::ShuttingDown,
                    format!("shard {shard} stopped before the write was decided"),
                )
            })
        }))
    }

    fn get(&self, slot: u16, key: Bytes, consistency: Consistency) -> ReplicaAnswer {
        if consistency == Consistency::Stale {
            return ReplicaAnswer::Now(read_owned(self.shard, &self.reader, slot, &key));
        }
        match self.leading() {
            Err(refusal) => return refusal,
            Ok(true) => {
                return ReplicaAnswer::Now(read_confirmed(self.shard, &self.reader, slot, &key))
            }
            Ok(false) => {}
        }
        let (waiter, confirmed) = oneshot::channel();
        if self.reads.try_send(waiter).is_err() {
            return ReplicaAnswer::Now(error(
                ErrorCode::TryAgain,
                format!(
                    "shard {} has too many reads queued; retry shortly",
                    self.shard
                ),
            ));
        }
        let reader = self.reader.clone();
        let shard = self.shard;
        ReplicaAnswer::Later(Box::pin(async move {
            match confirmed.await {
                Ok(Ok(())) => read_confirmed(shard, &reader, slot, &key),
                Ok(Err(GateRefusal::NotLeader(leader))) => not_leader(shard, leader),
                Ok(Err(GateRefusal::Unavailable(why))) => error(ErrorCode::Unavailable, why),
                Err(_) => error(
                    ErrorCode::ShuttingDown,
                    format!("shard {shard} stopped before the read was served"),
                ),
            }
        }))
    }

    /// Stop the group's Raft tasks (the state stays on disk).
    pub(crate) async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// A NOT_LEADER answer for a write or read that found this replica no longer leading after it
/// was queued. The epoch is 0: the map did not change, leadership did.
pub(crate) fn not_leader(shard: u32, leader: Option<Member>) -> ResponseBody {
    ResponseBody::NotLeader {
        shard,
        epoch: 0,
        leader: leader.map(|m| (m.node, m.addr)),
    }
}

fn leader_of(m: &RaftMetrics<u64, Member>) -> Option<Member> {
    let id = m.current_leader?;
    m.membership_config.membership().get_node(&id).cloned()
}

/// A linearizable read whose leadership is confirmed. A frozen slot is being copied to
/// another shard, which may already own it: such a read waits for the move (the client
/// retries) rather than read the old copy.
fn read_confirmed(shard: u32, reader: &ShardReader, slot: u16, key: &[u8]) -> ResponseBody {
    let (owned, frozen) = reader.slot_state(slot);
    if frozen {
        return error(
            ErrorCode::TryAgain,
            format!("the key's slot is moving away from shard {shard}; retry shortly"),
        );
    }
    if !owned {
        return not_owned(shard);
    }
    read_local(reader, key)
}

fn not_owned(shard: u32) -> ResponseBody {
    error(
        ErrorCode::TryAgain,
        format!(
            "shard {shard} does not own the key's slot at this point; refresh the map and retry"
        ),
    )
}

/// Read `key` if the state machine owns its slot: a slot it gave away (or has not taken yet)
/// holds no keys here, and "not found" would be a lie.
fn read_owned(shard: u32, reader: &ShardReader, slot: u16, key: &[u8]) -> ResponseBody {
    if !reader.slot_state(slot).0 {
        return not_owned(shard);
    }
    read_local(reader, key)
}

fn read_local(reader: &ShardReader, key: &[u8]) -> ResponseBody {
    match reader.get(key) {
        Ok(Some((version, value))) => ResponseBody::Value { version, value },
        Ok(None) => ResponseBody::NotFound,
        Err(err) => {
            tracing::error!(error = %err, "shard read failed");
            error(ErrorCode::Storage, "the storage engine failed to read")
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ResponseBody {
    ResponseBody::Error(WireError::new(code, message))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Take what is queued and propose it as one entry, keeping up to [`MAX_INFLIGHT_BATCHES`]
/// entries in flight. A batch never grows past [`MAX_BATCH_BYTES`] unless its first write alone
/// does (a write is bounded by the client's frame, and peer frames have room for one), so every
/// entry fits an AppendEntries message.
async fn propose_loop(
    shard: u32,
    raft: RaftGroup,
    mut queue: mpsc::Receiver<QueuedWrite>,
    queued_bytes: Arc<AtomicUsize>,
) {
    let inflight = Arc::new(Semaphore::new(MAX_INFLIGHT_BATCHES));
    // A write taken from the queue that did not fit the previous batch.
    let mut carried: Option<QueuedWrite> = None;
    loop {
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            return;
        };
        let carried_now = carried.is_some();
        let first = match carried.take() {
            Some(write) => write,
            None => match queue.recv().await {
                Some(write) => write,
                None => return,
            },
        };
        let mut bytes = write_bytes(&first.write);
        if !carried_now {
            queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = queue.try_recv() else { break };
            let size = write_bytes(&next.write);
            queued_bytes.fetch_sub(size, Ordering::AcqRel);
            if bytes + size > MAX_BATCH_BYTES {
                // Its bytes are already counted out of the queue; it opens the next batch.
                carried = Some(next);
                break;
            }
            bytes += size;
            batch.push(next);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            commit(shard, &raft, batch).await;
            drop(permit);
        });
    }
}

fn write_bytes(write: &Write) -> usize {
    match &write.op {
        WriteOp::Put { key, value } | WriteOp::Cas { key, value, .. } => key.len() + value.len(),
        WriteOp::Delete { key } => key.len(),
    }
}

async fn commit(shard: u32, raft: &RaftGroup, batch: Vec<QueuedWrite>) {
    let (writes, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.write, q.reply)).unzip();
    let count = writes.len();
    let proposal = Proposal::Writes {
        at_ms: now_ms(),
        writes,
    };
    let answers: Vec<ResponseBody> =
        match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(proposal)).await {
            Ok(Ok(response)) => match response.data {
                Outcome::Writes(outcomes) if outcomes.len() == count => outcomes
                    .into_iter()
                    .map(|o| write_answer(shard, o))
                    .collect(),
                other => {
                    tracing::error!(shard, ?other, "state machine answered a batch wrongly");
                    vec![error(ErrorCode::Internal, "the shard answered the write wrongly"); count]
                }
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                vec![not_leader(shard, f.leader_node); count]
            }
            Ok(Err(err)) => {
                tracing::warn!(shard, error = %err, "write failed");
                vec![
                    error(
                        ErrorCode::Unavailable,
                        format!("shard {shard} could not commit the write: {err}")
                    );
                    count
                ]
            }
            Err(_) => vec![
                error(
                    ErrorCode::Unavailable,
                    format!(
                        "shard {shard} could not reach a quorum of its replicas within {}s; the \
                         write may or may not be applied (a retry with the same session is \
                         applied at most once)",
                        WRITE_TIMEOUT.as_secs()
                    ),
                );
                count
            ],
        };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn write_answer(shard: u32, outcome: WriteOutcome) -> ResponseBody {
    match outcome {
        WriteOutcome::Written { version } => ResponseBody::Written { version },
        WriteOutcome::Deleted { existed } => ResponseBody::Deleted { existed },
        WriteOutcome::CasConflict { current } => ResponseBody::CasConflict { current },
        WriteOutcome::NotOwned => error(
            ErrorCode::TryAgain,
            format!("shard {shard} no longer owns the key's slot; refresh the map and retry"),
        ),
        WriteOutcome::Frozen => error(
            ErrorCode::TryAgain,
            format!("the key's slot is moving away from shard {shard}; retry shortly"),
        ),
        WriteOutcome::VersionsExhausted => error(
            ErrorCode::Storage,
            format!("shard {shard} has used every version number; nothing was written"),
        ),
    }
}

/// Serve queued linearizable reads: one ReadIndex round for every read queued before it began.
async fn read_gate_loop(raft: RaftGroup, mut waiters: mpsc::Receiver<ReadWaiter>) {
    while let Some(first) = waiters.recv().await {
        let mut round = vec![first];
        while let Ok(next) = waiters.try_recv() {
            round.push(next);
        }
        let outcome = match tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(GateRefusal::NotLeader(f.leader_node))
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                Err(GateRefusal::Unavailable(
                    "the shard's leader cannot reach a quorum of its replicas to confirm it still \
                     leads; a read with --consistency stale is still served"
                        .into(),
                ))
            }
            Ok(Err(err)) => Err(GateRefusal::Unavailable(format!(
                "the shard cannot serve a linearizable read: {err}"
            ))),
            Err(_) => Err(GateRefusal::Unavailable(format!(
                "the shard's leader could not confirm its leadership within {}s; a read with \
                 --consistency stale is still served",
                READ_TIMEOUT.as_secs()
            ))),
        };
        for waiter in round {
            let _ = waiter.send(outcome.clone());
        }
    }
}
