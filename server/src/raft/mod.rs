//! Replication: every shard, and the cluster map, is a Raft group run by openraft.
//!
//! This module owns what the groups share: the [`TypeConfig`] (what a log entry carries, what
//! applying it answers, how members are named), the log store on sled ([`log`]), the
//! state machines ([`state`] for shards, the metadata group in [`crate::cluster`]) and the
//! transport that carries Raft messages between nodes over their mutual-TLS peer connections
//! ([`network`], served by [`rpc`]).
//!
//! # Groups
//!
//! Group 0 is the metadata group: its state machine is the cluster map, so every change to the
//! map is a command in its log. Group `n` (n ≥ 1) is shard `n`: its state machine is the
//! shard's keyspace. A node runs one openraft [`openraft::Raft`] per group it is a member of,
//! and every group's messages to one peer travel over the same peer connection, tagged with
//! the group id ([`skv_proto::RequestBody::Raft`]).
//!
//! # Members
//!
//! openraft names members by a `Copy` integer; a node's Raft id is the `raft_id` the map gives
//! it when it joins, never reused, so a wiped node that comes back joins under a new id and
//! cannot be mistaken for the member whose log it lost. [`Member`] carries the node's name (its
//! SPIFFE node id) and address, which is what the transport dials.
//!
//! # What a shard's log carries
//!
//! A [`Proposal::Writes`] entry holds a batch of client writes: the shard's leader collects the
//! writes that arrive while the previous batch is in flight and proposes them as one entry, so
//! one fsync and one round trip serve many writes. Applying a batch decides each write in
//! order, in the state machine, identically on every replica:
//! - versions come from the state machine's counter (`last_version + 1` per write), which is
//!   persisted with the data, so every replica gives a write the same version, a restart
//!   continues the sequence, and imports raise the counter to at least the imported versions
//!   (a key's version keeps growing across slot moves);
//! - CAS compares against the version in the keyspace at that point of the log;
//! - a write carrying a [`skv_proto::Session`] already in the session table is not applied
//!   again: its first outcome is answered (Raft dissertation §6.3). The table is bounded and
//!   its entries expire by the leader's clock stamped into each batch (`at_ms`), so expiry is
//!   the same on every replica;
//! - writes to slots the shard does not own, or has frozen for a move, are refused with
//!   [`WriteOutcome::NotOwned`] or [`WriteOutcome::Frozen`], decided in log order, so a write
//!   routed by a stale map can never land in a slot the shard gave away.
//!
//! Slot moves are four steps, each a log entry: [`Proposal::Freeze`] on the giving shard,
//! [`Proposal::Import`] batches and [`Proposal::Own`] on the receiving shard, the map change on
//! the metadata group, then [`Proposal::Release`] on the giving shard, which deletes the keys.
//! Nothing is deleted before the receiving group has committed its copy and the map names it.

pub(crate) mod forward;
pub(crate) mod log;
pub(crate) mod network;
pub(crate) mod read_cache;
pub(crate) mod rpc;
pub(crate) mod state;

use std::fmt;
use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use skv_proto::cluster::SlotRange;
use skv_proto::Session;

/// The group id of the metadata group (the cluster map).
pub(crate) const META_GROUP: u32 = 0;

openraft::declare_raft_types!(
    /// The Raft types every skv group uses.
    pub(crate) TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle of one group.
pub(crate) type RaftGroup = openraft::Raft<TypeConfig>;

/// A member of a group: the node's name and where to reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// The node id of the map (the name in its certificate's SPIFFE ID).
    pub(crate) node: String,
    /// `HOST:PORT` of the node's listener.
    pub(crate) addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

/// One client write, as a shard's log carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Write {
    /// The client's session, when it sent one: a retry of the same session is applied once.
    pub(crate) session: Option<(u64, u64)>,
    /// What to do.
    pub(crate) op: WriteOp,
}

impl Write {
    /// A write with an optional client session.
    pub(crate) fn new(session: Option<Session>, op: WriteOp) -> Write {
        Write {
            session: session.map(|s| (s.client, s.seq)),
            op,
        }
    }
}

/// The operation of a [`Write`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WriteOp {
    /// Write `value` under `key`.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Write `value` under `key` if the key's version is `expect_version` (0: absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The version the key must have.
        expect_version: u64,
        /// The value.
        value: Bytes,
    },
}

impl WriteOp {
    /// The key written.
    pub(crate) fn key(&self) -> &Bytes {
        match self {
            WriteOp::Put { key, .. } | WriteOp::Delete { key } | WriteOp::Cas { key, .. } => key,
        }
    }
}

/// One key copied into a shard by a slot move, with the version it had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Imported {
    /// The key.
    pub(crate) key: Bytes,
    /// Its version on the giving shard.
    pub(crate) version: u64,
    /// Its value.
    pub(crate) value: Bytes,
}

/// What a log entry asks a group's state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Proposal {
    /// Shard groups: client writes, applied in order. `at_ms` is the leader's wall clock when
    /// it proposed the batch (milliseconds since the Unix epoch), used only to expire
    /// sessions, so every replica expires the same entries.
    Writes {
        /// The leader's clock.
        at_ms: u64,
        /// The writes.
        writes: Vec<Write>,
    },
    /// Shard groups: start owning `slots` (at cluster creation, or after a move imported
    /// them). Writes to them are accepted from this point of the log on.
    Own {
        /// The slots.
        slots: Vec<SlotRange>,
    },
    /// Shard groups: refuse writes to `slots` from this point of the log on, because move
    /// `move_id` is copying them away. Reads are still served.
    Freeze {
        /// The move (its id in the metadata group).
        move_id: u64,
        /// The slots.
        slots: Vec<SlotRange>,
    },
    /// Shard groups: keys copied in by move `move_id`, stored with their versions.
    Import {
        /// The move.
        move_id: u64,
        /// The keys.
        entries: Vec<Imported>,
    },
    /// Shard groups: move `move_id` committed on the metadata group: stop owning `slots`,
    /// lift their freeze and delete their keys.
    Release {
        /// The move.
        move_id: u64,
        /// The slots.
        slots: Vec<SlotRange>,
    },
    /// The metadata group: a change to the cluster map, as JSON (a
    /// [`skv_proto::cluster::MapChange`] is decided by the metadata state machine).
    Meta {
        /// The change.
        json: Vec<u8>,
    },
}

/// The outcome of one client write, decided by the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WriteOutcome {
    /// A PUT or a successful CAS: the key's new version.
    Written {
        /// The version.
        version: u64,
    },
    /// A DELETE; whether the key existed.
    Deleted {
        /// Whether it existed.
        existed: bool,
    },
    /// A CAS found another version (0: absent); nothing was written.
    CasConflict {
        /// The key's current version.
        current: u64,
    },
    /// The shard does not own the key's slot at this point of its log.
    NotOwned,
    /// The key's slot is frozen for a move; retry shortly.
    Frozen,
    /// The shard's version counter is at `u64::MAX` (an imported entry can carry any
    /// version): nothing was written, rather than numbering the write with a wrapped,
    /// smaller version. Last, so outcomes stored before it existed still decode.
    VersionsExhausted,
}

/// What applying one entry answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// Entries without an answer of their own (blank, membership, own, freeze, import,
    /// release).
    #[default]
    Done,
    /// One outcome per write of a [`Proposal::Writes`], in order.
    Writes(Vec<WriteOutcome>),
    /// The metadata state machine's answer to a [`Proposal::Meta`], as JSON.
    Meta(Vec<u8>),
}
