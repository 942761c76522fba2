//! The state machines: a shard's ([`ShardStateMachine`]: its keyspace, its slots, its version
//! counter and its client sessions, in sled) and the metadata group's ([`MetaStateMachine`], a
//! generic [`Machine`] kept in memory and persisted as one blob).
//!
//! # A shard's trees
//!
//! - `ks/shard-<id>`: the keyspace, key → 8-byte big-endian version ‖ value (the record layout
//!   of [`crate::storage`]'s sled engine); with encryption at rest the value is an envelope of
//!   [`crate::storage::atrest`] sealed for the shard, the key and the version;
//! - `sessions/<id>`: client sessions, client ‖ seq (16 big-endian bytes) → at_ms (8 bytes)
//!   ‖ postcard [`WriteOutcome`];
//! - `sm/<id>`: key `state`, one blob with the last applied log id, the last membership, the
//!   `last_version` counter, the key count, the owned slots, the frozen slots per move and the
//!   data generation; key `snapshot`, the last built or installed snapshot (sealed for the
//!   shard with encryption at rest on; the `state` blob holds no client data and is not).
//!
//! Applying an entry is one sled transaction over the three trees, data and `state` together:
//! openraft 0.9 does not reinstall a snapshot on restart but trusts the applied log id the
//! state machine reports, so the two must never disagree. (Release is the exception: its key
//! deletions run in bounded transactions before the final one, see [`Proposal::Release`]; a
//! crash in between re-applies it, which is idempotent.)
//!
//! Applies are not fsynced: sled recovers a prefix of its one log, so after a crash the state
//! is that of some applied prefix, and openraft re-applies the rest from the durable log. What
//! must be durable is flushed explicitly: a built snapshot before openraft purges the log
//! behind it, and an installed snapshot.
//!
//! # Installing a snapshot without a half state
//!
//! An installed snapshot is written into fresh data trees of the next *generation*
//! (`ks/shard-<id>/g<n>`, `sessions/<id>/g<n>`), flushed, and only then is `state` switched to
//! that generation (with the snapshot's applied log id) in one write. A crash before the switch
//! leaves the old state, with its applied log id, intact; the stray trees are dropped at the
//! next open. Generation 0 uses the plain names.
//!
//! # Reads
//!
//! A [`ShardReader`] reads the keyspace tree directly, without going through openraft's state
//! machine task, and the owned and frozen slots from a mirror swapped after each entry that
//! changes them.

// openraft's traits return its `StorageError` (224 bytes) by value; the helpers return the
// same type rather than box and unbox it at every trait boundary.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use bytes::Bytes;
use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use skv_proto::cluster::{hash_slot, SlotRange, SlotSet, SLOT_COUNT};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use tokio::sync::watch;

use super::log::{io_err, msg_err, Flusher, LogStore, StoreError};
use super::read_cache::{Change, GroupCache, ReadCache};
use super::{
    Imported, Member, Outcome, Proposal, TypeConfig, Write, WriteOp, WriteOutcome, META_GROUP,
};
use crate::storage::atrest::{self, AtRestError, Context, Crypt};
use crate::storage::prefix_end;

/// How long a session entry answers retries: entries older than a batch's `at_ms` minus this
/// are expired when the batch applies.
pub(crate) const SESSION_TTL_MS: u64 = 10 * 60 * 1000;

/// Most session entries one shard keeps; beyond, the oldest (by `at_ms`) are evicted.
pub(crate) const MAX_SESSIONS: usize = 100_000;

/// Keys deleted per transaction by a Release (bounds the transaction's memory).
const RELEASE_BATCH: usize = 1024;

/// Records written per sled batch while installing a snapshot.
const INSTALL_BATCH: usize = 1024;

/// How long (in 5 ms rounds) an install waits for readers to let go of the replaced trees.
const OLD_TREES_WAIT_ROUNDS: usize = 400;

/// Format byte in front of the `state` blob, snapshot data and the stored snapshot record.
const FORMAT: u8 = 1;

const STATE_KEY: &[u8] = b"state";
const SNAPSHOT_KEY: &[u8] = b"snapshot";

/// Length of the version header in front of every stored value.
const HEADER: usize = 8;

type Membership = StoredMembership<u64, Member>;
type Meta = SnapshotMeta<u64, Member>;

/// A transaction closure's error.
type TxError = ConflictableTransactionError<StoreError>;

// ---------------------------------------------------------------------------------------------
// Encodings
// ---------------------------------------------------------------------------------------------

/// The data keys of a node with encryption at rest on, and the group whose records they seal.
#[derive(Debug, Clone)]
pub(crate) struct Seal {
    crypt: Option<Arc<Crypt>>,
    group: u32,
}

impl Seal {
    pub(crate) fn new(crypt: Option<Arc<Crypt>>, group: u32) -> Seal {
        Seal { crypt, group }
    }

    /// The sealed form of `plain` for `ctx` (the plain bytes when encryption is off).
    fn seal(
        &self,
        ctx: impl FnOnce(u32) -> Context<'static>,
        plain: Vec<u8>,
        subject: ErrorSubject<u64>,
    ) -> Result<Vec<u8>, StoreError> {
        match &self.crypt {
            None => Ok(plain),
            Some(c) => c
                .seal(&ctx(self.group), &plain)
                .map_err(|e| at_rest_err(subject, ErrorVerb::Write, e)),
        }
    }

    fn open<'a>(
        &self,
        ctx: impl FnOnce(u32) -> Context<'static>,
        raw: &'a [u8],
        subject: ErrorSubject<u64>,
    ) -> Result<std::borrow::Cow<'a, [u8]>, StoreError> {
        match &self.crypt {
            None => Ok(std::borrow::Cow::Borrowed(raw)),
            Some(c) => c
                .open(&ctx(self.group), raw)
                .map(std::borrow::Cow::Owned)
                .map_err(|e| at_rest_err(subject, ErrorVerb::Read, e)),
        }
    }

    /// A keyspace record: 8-byte big-endian version ‖ value, the value sealed for its key and
    /// version when encryption is on (the version stays readable for CAS decisions; it is
    /// bound by the associated data).
    fn encode_record(&self, key: &[u8], version: u64, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut record = Vec::with_capacity(HEADER + value.len() + atrest::OVERHEAD);
        record.extend_from_slice(&version.to_be_bytes());
        match &self.crypt {
            None => record.extend_from_slice(value),
            Some(c) => c
                .seal_into(
                    &Context::Record {
                        group: self.group,
                        key,
                        version,
                    },
                    value,
                    &mut record,
                )
                .map_err(|e| at_rest_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?,
        }
        Ok(record)
    }

    /// A keyspace record's version and plaintext value. The message never names the key.
    fn decode_record(&self, key: &[u8], record: &[u8]) -> Result<(u64, Bytes), StoreError> {
        let (version, value) = decode_record(record)?;
        match &self.crypt {
            None => Ok((version, Bytes::copy_from_slice(value))),
            Some(c) => c
                .open(
                    &Context::Record {
                        group: self.group,
                        key,
                        version,
                    },
                    value,
                )
                .map(|v| (version, Bytes::from(v)))
                .map_err(|e| at_rest_err(ErrorSubject::StateMachine, ErrorVerb::Read, e)),
        }
    }
}

/// An at-rest failure as openraft's error: the message says what failed (an AEAD failure
/// names itself), never the key or the value.
fn at_rest_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: AtRestError) -> StoreError {
    msg_err(subject, verb, format!("encryption at rest: {e}"))
}

/// A stored record's version and (possibly sealed) value. The message never names the key.
fn decode_record(record: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    match record.split_first_chunk::<HEADER>() {
        Some((header, value)) => Ok((u64::from_be_bytes(*header), value)),
        None => Err(msg_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            format!(
                "keyspace record of {} bytes, shorter than its header",
                record.len()
            ),
        )),
    }
}

fn session_key(client: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&client.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn decode_session_key(key: &[u8]) -> Result<(u64, u64), StoreError> {
    match <[u8; 16]>::try_from(key) {
        Ok(k) => {
            let (c, s) = k.split_at(8);
            let c = u64::from_be_bytes(c.try_into().unwrap_or_default());
            let s = u64::from_be_bytes(s.try_into().unwrap_or_default());
            Ok((c, s))
        }
        Err(_) => Err(msg_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            format!("session key of {} bytes, not 16", key.len()),
        )),
    }
}

fn encode_session(at_ms: u64, outcome: &WriteOutcome) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(outcome, at_ms.to_be_bytes().to_vec())
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))
}

fn decode_session(raw: &[u8]) -> Result<(u64, WriteOutcome), StoreError> {
    let Some((at, rest)) = raw.split_first_chunk::<8>() else {
        return Err(msg_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            format!("session record of {} bytes", raw.len()),
        ));
    };
    let outcome = postcard::from_bytes(rest)
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
    Ok((u64::from_be_bytes(*at), outcome))
}

/// `FORMAT` ‖ postcard(`value`).
fn encode_blob<T: Serialize>(value: &T, subject: ErrorSubject<u64>) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT]).map_err(|e| io_err(subject, ErrorVerb::Write, e))
}

/// Checks the format byte and returns what follows it.
fn blob_body(raw: &[u8], subject: ErrorSubject<u64>) -> Result<&[u8], StoreError> {
    match raw.split_first() {
        Some((&FORMAT, rest)) => Ok(rest),
        Some((other, _)) => Err(msg_err(
            subject,
            ErrorVerb::Read,
            format!("unknown format {other}"),
        )),
        None => Err(msg_err(subject, ErrorVerb::Read, "empty record".into())),
    }
}

/// The stored snapshot record: `FORMAT` ‖ postcard(meta) ‖ data.
fn encode_snapshot_record(meta: &Meta, data: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut raw = encode_blob(meta, ErrorSubject::Snapshot(Some(meta.signature())))?;
    raw.extend_from_slice(data);
    Ok(raw)
}

fn decode_snapshot_record(raw: &[u8]) -> Result<(Meta, &[u8]), StoreError> {
    let body = blob_body(raw, ErrorSubject::Snapshot(None))?;
    postcard::take_from_bytes(body)
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))
}

/// A snapshot id: the log id it covers (snapshots of one group at one log id hold the same
/// state, so the id need not be more unique).
fn snapshot_id(applied: &Option<LogId<u64>>) -> String {
    match applied {
        Some(id) => id.to_string(),
        None => "empty".into(),
    }
}

/// Stores `meta`/`data` as the current snapshot unless the stored one covers more of the log
/// (a snapshot installed while this one was built).
fn store_snapshot_if_newer(
    tree: &sled::Tree,
    seal: &Seal,
    meta: &Meta,
    data: &[u8],
) -> Result<(), StoreError> {
    let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
    let record = seal.seal(
        |group| Context::Snapshot { group },
        encode_snapshot_record(meta, data)?,
        subject(),
    )?;
    let result = tree.transaction(|tx| {
        if let Some(raw) = tx.get(SNAPSHOT_KEY)? {
            let raw = seal
                .open(|group| Context::Snapshot { group }, &raw, subject())
                .map_err(TxError::Abort)?;
            let (stored, _) = decode_snapshot_record(&raw).map_err(TxError::Abort)?;
            if stored.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        tx.insert(SNAPSHOT_KEY, record.as_slice())?;
        Ok(())
    });
    tx_result(result, subject(), ErrorVerb::Write)
}

fn read_snapshot(
    tree: &sled::Tree,
    seal: &Seal,
) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
    let Some(raw) = tree
        .get(SNAPSHOT_KEY)
        .map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
    else {
        return Ok(None);
    };
    let raw = seal.open(
        |group| Context::Snapshot { group },
        &raw,
        ErrorSubject::Snapshot(None),
    )?;
    let (meta, data) = decode_snapshot_record(&raw)?;
    Ok(Some(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data.to_vec())),
    }))
}

fn tx_result<T>(
    result: Result<T, TransactionError<StoreError>>,
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
) -> Result<T, StoreError> {
    match result {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(io_err(subject, verb, e)),
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, StoreError> {
    m.lock().map_err(|_| {
        msg_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Read,
            "state machine poisoned by an earlier panic".into(),
        )
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(msg_err(
            ErrorSubject::StateMachine,
            ErrorVerb::Write,
            format!("state machine task failed: {e}"),
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// Slot helpers
// ---------------------------------------------------------------------------------------------

fn union(a: &[SlotRange], b: &[SlotRange]) -> Vec<SlotRange> {
    let mut all = a.to_vec();
    all.extend_from_slice(b);
    SlotSet::from_ranges(&all).ranges()
}

fn subtract(a: &[SlotRange], minus: &SlotSet) -> Vec<SlotRange> {
    let mut out = SlotSet::default();
    for r in a {
        for slot in r.start..=r.end.min(SLOT_COUNT - 1) {
            if !minus.contains(slot) {
                out.insert(slot);
            }
        }
    }
    out.ranges()
}

/// The owned and frozen slots of a shard, as the request path reads them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slots {
    /// Slots whose writes the shard accepts (unless frozen).
    pub(crate) owned: SlotSet,
    /// Slots frozen for a move: reads served, writes refused.
    pub(crate) frozen: SlotSet,
}

// ---------------------------------------------------------------------------------------------
// Shard state machine
// ---------------------------------------------------------------------------------------------

/// What `sm/<id>` key `state` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ShardState {
    applied: Option<LogId<u64>>,
    membership: Membership,
    last_version: u64,
    key_count: u64,
    owned: Vec<SlotRange>,
    /// Move id → the slots it froze.
    frozen: BTreeMap<u64, Vec<SlotRange>>,
    generation: u64,
}

impl ShardState {
    fn frozen_set(&self) -> SlotSet {
        let all: Vec<SlotRange> = self.frozen.values().flatten().copied().collect();
        SlotSet::from_ranges(&all)
    }

    fn slots(&self) -> Slots {
        Slots {
            owned: SlotSet::from_ranges(&self.owned),
            frozen: self.frozen_set(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode_blob(self, ErrorSubject::StateMachine)
    }

    fn decode(raw: &[u8]) -> Result<ShardState, StoreError> {
        let body = blob_body(raw, ErrorSubject::StateMachine)?;
        postcard::from_bytes(body)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
    }
}

/// Snapshot data header (after the format byte).
#[derive(Debug, Serialize, Deserialize)]
struct SnapHeader {
    last_version: u64,
    owned: Vec<SlotRange>,
    frozen: BTreeMap<u64, Vec<SlotRange>>,
}

/// Snapshot data items, after the header, ending with `End`. Keys come in ascending order.
#[derive(Debug, Serialize, Deserialize)]
enum SnapItem {
    Key(Imported),
    Session {
        client: u64,
        seq: u64,
        at_ms: u64,
        outcome: WriteOutcome,
    },
    End,
}

/// The data trees of one generation.
#[derive(Debug, Clone)]
struct DataTrees {
    ks: sled::Tree,
    sessions: sled::Tree,
}

fn ks_name(id: u32, generation: u64) -> String {
    if generation == 0 {
        format!("ks/shard-{id}")
    } else {
        format!("ks/shard-{id}/g{generation}")
    }
}

fn sessions_name(id: u32, generation: u64) -> String {
    if generation == 0 {
        format!("sessions/{id}")
    } else {
        format!("sessions/{id}/g{generation}")
    }
}

fn sm_name(id: u32) -> String {
    format!("sm/{id}")
}

/// Every data tree name of shard `id` in `db`, any generation.
fn data_tree_names(db: &sled::Db, id: u32) -> Vec<(Vec<u8>, u64)> {
    let bases = [format!("ks/shard-{id}"), format!("sessions/{id}")];
    let mut out = Vec::new();
    for name in db.tree_names() {
        for base in &bases {
            let name = name.as_ref();
            if name == base.as_bytes() {
                out.push((name.to_vec(), 0));
            } else if let Some(rest) = name.strip_prefix(format!("{base}/g").as_bytes()) {
                if let Some(g) = std::str::from_utf8(rest).ok().and_then(|s| s.parse().ok()) {
                    out.push((name.to_vec(), g));
                }
            }
        }
    }
    out
}

fn open_tree(db: &sled::Db, name: &str) -> Result<sled::Tree, StoreError> {
    db.open_tree(name)
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))
}

/// What the reader and the state machine share.
struct Shared {
    trees: ArcSwap<DataTrees>,
    slots: ArcSwap<Slots>,
    applied_index: AtomicU64,
    key_count: AtomicU64,
    /// Seals and opens the keyspace records and the stored snapshot.
    seal: Seal,
    /// This group's part of the node's read cache; `None` when it is off.
    cache: Option<GroupCache>,
}

impl Shared {
    /// Begin changing `keys` of the keyspace tree, when there is a cache to keep exact; the
    /// change ends when the result is dropped.
    fn change<'k>(&self, keys: impl IntoIterator<Item = &'k [u8]>) -> Option<Change<'_>> {
        self.cache.as_ref().map(|c| c.begin(keys))
    }

    /// Begin a change to keys it does not name (import, release, install).
    fn change_whole(&self) -> Option<Change<'_>> {
        self.cache.as_ref().map(GroupCache::begin_whole)
    }
}

/// Session entries by age: (at_ms, client, seq).
type SessionIndex = BTreeSet<(u64, u64, u64)>;

/// What [`open_meta`] returns: the log, the state machine and the watch on its state.
pub(crate) type MetaParts<M> = (LogStore, MetaStateMachine<M>, watch::Receiver<Arc<M>>);

/// The state only the apply path touches.
struct Core {
    st: ShardState,
    /// `st.owned` and `st.frozen` as bitmaps, for deciding writes.
    slots: Slots,
    /// Session entries by age: (at_ms, client, seq). Rebuilt from the tree on open, so expiry
    /// and eviction never scan the tree.
    sessions: SessionIndex,
    /// [`MAX_SESSIONS`]; lowered by tests.
    max_sessions: usize,
}

struct ShardInner {
    id: u32,
    db: sled::Db,
    sm: sled::Tree,
    shared: Arc<Shared>,
    core: Mutex<Core>,
}

/// Shard group `id`'s state machine (module docs). openraft drives it; reads go through
/// [`ShardReader`].
pub(crate) struct ShardStateMachine {
    inner: Arc<ShardInner>,
    flusher: Flusher,
}

impl Debug for ShardStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardStateMachine")
            .field("id", &self.inner.id)
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable read handle on a shard's applied state.
#[derive(Clone)]
pub(crate) struct ShardReader {
    shared: Arc<Shared>,
}

impl Debug for ShardReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardReader").finish_non_exhaustive()
    }
}

/// Opens shard group `id`'s log, state machine and reader in `db`. Its reads go through
/// `cache` when given.
pub(crate) fn open_shard(
    db: &sled::Db,
    id: u32,
    flusher: Flusher,
    crypt: Option<Arc<Crypt>>,
    cache: Option<&Arc<ReadCache>>,
) -> Result<(LogStore, ShardStateMachine, ShardReader), StoreError> {
    let log = LogStore::open(db, id, flusher.clone(), crypt.clone())?;
    let seal = Seal::new(crypt, id);
    let sm = open_tree(db, &sm_name(id))?;
    let st = match sm
        .get(STATE_KEY)
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
    {
        Some(raw) => ShardState::decode(&raw)?,
        None => ShardState::default(),
    };
    // Trees of other generations are the leftovers of an interrupted install, or the old
    // generation after one.
    for (name, generation) in data_tree_names(db, id) {
        if generation != st.generation {
            db.drop_tree(name)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Delete, e))?;
        }
    }
    let trees = DataTrees {
        ks: open_tree(db, &ks_name(id, st.generation))?,
        sessions: open_tree(db, &sessions_name(id, st.generation))?,
    };
    let mut sessions = BTreeSet::new();
    for item in trees.sessions.iter() {
        let (key, value) =
            item.map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let (client, seq) = decode_session_key(&key)?;
        let (at_ms, _) = decode_session(&value)?;
        sessions.insert((at_ms, client, seq));
    }
    let slots = st.slots();
    let shared = Arc::new(Shared {
        trees: ArcSwap::from_pointee(trees),
        slots: ArcSwap::from_pointee(slots.clone()),
        applied_index: AtomicU64::new(st.applied.map_or(0, |l| l.index)),
        key_count: AtomicU64::new(st.key_count),
        seal,
        cache: cache.map(ReadCache::group),
    });
    let inner = Arc::new(ShardInner {
        id,
        db: db.clone(),
        sm,
        shared: shared.clone(),
        core: Mutex::new(Core {
            st,
            slots,
            sessions,
            max_sessions: MAX_SESSIONS,
        }),
    });
    Ok((
        log,
        ShardStateMachine { inner, flusher },
        ShardReader { shared },
    ))
}

/// Drops every tree of shard group `id` (log, state, data of every generation). Stop the
/// group and drop its handles first.
pub(crate) fn destroy_shard(db: &sled::Db, id: u32) -> Result<(), StoreError> {
    LogStore::destroy(db, id)?;
    let mut names: Vec<Vec<u8>> = data_tree_names(db, id)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    names.push(sm_name(id).into_bytes());
    for name in names {
        db.drop_tree(name)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Delete, e))?;
    }
    Ok(())
}

/// What a Writes transaction decided, applied to memory after it commits.
struct WritesDone {
    outcomes: Vec<WriteOutcome>,
    st: ShardState,
    expired: Vec<(u64, u64, u64)>,
    added: Vec<(u64, u64, u64)>,
    evicted: Vec<(u64, u64, u64)>,
}

impl ShardInner {
    fn apply_blocking(
        &self,
        entries: Vec<openraft::Entry<TypeConfig>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut core = lock(&self.core)?;
        let trees = self.shared.trees.load_full();
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let log_id = entry.log_id;
            let outcome = self.apply_entry(&mut core, &trees, entry)?;
            self.shared
                .applied_index
                .store(log_id.index, Ordering::Release);
            self.shared
                .key_count
                .store(core.st.key_count, Ordering::Release);
            out.push(outcome);
        }
        Ok(out)
    }

    /// Persists `st` (with nothing else) and makes it the core's.
    fn set_state(
        &self,
        core: &mut Core,
        st: ShardState,
        slots_changed: bool,
    ) -> Result<(), StoreError> {
        self.sm
            .insert(STATE_KEY, st.encode()?)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        core.st = st;
        if slots_changed {
            self.publish_slots(core);
        }
        Ok(())
    }

    fn publish_slots(&self, core: &mut Core) {
        core.slots = core.st.slots();
        self.shared.slots.store(Arc::new(core.slots.clone()));
    }

    fn apply_entry(
        &self,
        core: &mut Core,
        trees: &DataTrees,
        entry: openraft::Entry<TypeConfig>,
    ) -> Result<Outcome, StoreError> {
        let log_id = entry.log_id;
        let mut st = core.st.clone();
        st.applied = Some(log_id);
        match entry.payload {
            EntryPayload::Blank => {
                self.set_state(core, st, false)?;
                Ok(Outcome::Done)
            }
            EntryPayload::Membership(m) => {
                st.membership = StoredMembership::new(Some(log_id), m);
                self.set_state(core, st, false)?;
                Ok(Outcome::Done)
            }
            EntryPayload::Normal(proposal) => match proposal {
                Proposal::Writes { at_ms, writes } => {
                    self.apply_writes(core, trees, log_id, at_ms, &writes)
                }
                Proposal::Own { slots } => {
                    st.owned = union(&st.owned, &slots);
                    self.set_state(core, st, true)?;
                    Ok(Outcome::Done)
                }
                Proposal::Freeze { move_id, slots } => {
                    let frozen = st.frozen.entry(move_id).or_default();
                    *frozen = union(frozen, &slots);
                    self.set_state(core, st, true)?;
                    Ok(Outcome::Done)
                }
                Proposal::Import { entries, .. } => {
                    self.apply_import(core, trees, st, &entries)?;
                    Ok(Outcome::Done)
                }
                Proposal::Release { slots, .. } => {
                    self.apply_release(core, trees, st, &slots)?;
                    Ok(Outcome::Done)
                }
                Proposal::Meta { .. } => {
                    tracing::warn!(
                        group = self.id,
                        index = log_id.index,
                        "metadata proposal in a shard's log; ignored"
                    );
                    self.set_state(core, st, false)?;
                    Ok(Outcome::Done)
                }
            },
        }
    }

    fn apply_writes(
        &self,
        core: &mut Core,
        trees: &DataTrees,
        log_id: LogId<u64>,
        at_ms: u64,
        writes: &[Write],
    ) -> Result<Outcome, StoreError> {
        let core_ref: &Core = core;
        let seal = &self.shared.seal;
        let change = self.shared.change(writes.iter().map(|w| &w.op.key()[..]));
        let result = (&trees.ks, &self.sm, &trees.sessions).transaction(|(ks, sm, sess)| {
            writes_tx(core_ref, seal, ks, sm, sess, log_id, at_ms, writes)
        });
        drop(change);
        let done = tx_result(result, ErrorSubject::Apply(log_id), ErrorVerb::Write)?;
        for e in &done.expired {
            core.sessions.remove(e);
        }
        core.sessions.extend(done.added.iter().copied());
        for e in &done.evicted {
            core.sessions.remove(e);
        }
        core.st = done.st;
        Ok(Outcome::Writes(done.outcomes))
    }

    fn apply_import(
        &self,
        core: &mut Core,
        trees: &DataTrees,
        mut st: ShardState,
        entries: &[Imported],
    ) -> Result<(), StoreError> {
        let log_id = st.applied;
        let base = st.clone();
        let seal = &self.shared.seal;
        let _change = self.shared.change_whole();
        let result = (&trees.ks, &self.sm).transaction(|(ks, sm)| {
            let mut st = base.clone();
            for e in entries {
                let current = ks.get(&e.key)?;
                let keep_current = match &current {
                    Some(raw) => decode_record(raw).map_err(TxError::Abort)?.0 > e.version,
                    None => false,
                };
                if !keep_current {
                    let record = seal
                        .encode_record(&e.key, e.version, &e.value)
                        .map_err(TxError::Abort)?;
                    ks.insert(&e.key[..], record)?;
                    if current.is_none() {
                        st.key_count += 1;
                    }
                }
                st.last_version = st.last_version.max(e.version);
            }
            sm.insert(STATE_KEY, st.encode().map_err(TxError::Abort)?)?;
            Ok(st)
        });
        let subject = log_id.map_or(ErrorSubject::StateMachine, ErrorSubject::Apply);
        st = tx_result(result, subject, ErrorVerb::Write)?;
        core.st = st;
        Ok(())
    }

    fn apply_release(
        &self,
        core: &mut Core,
        trees: &DataTrees,
        mut st: ShardState,
        slots: &[SlotRange],
    ) -> Result<(), StoreError> {
        let released = SlotSet::from_ranges(slots);
        let subject = st
            .applied
            .map_or(ErrorSubject::StateMachine, ErrorSubject::Apply);
        let _change = self.shared.change_whole();
        // Delete the slots' keys in bounded transactions, each persisting the key count with
        // the deletions (the applied log id is not advanced until the last one).
        let mut chunk: Vec<sled::IVec> = Vec::new();
        for item in trees.ks.iter().keys() {
            let key = item.map_err(|e| io_err(subject.clone(), ErrorVerb::Read, e))?;
            if !released.contains(hash_slot(&key)) {
                continue;
            }
            chunk.push(key);
            if chunk.len() == RELEASE_BATCH {
                let mut interim = core.st.clone();
                interim.key_count = interim.key_count.saturating_sub(chunk.len() as u64);
                self.delete_keys(trees, &chunk, &interim, subject.clone())?;
                core.st.key_count = interim.key_count;
                self.shared
                    .key_count
                    .store(interim.key_count, Ordering::Release);
                chunk.clear();
            }
        }
        st.key_count = core.st.key_count.saturating_sub(chunk.len() as u64);
        st.owned = subtract(&st.owned, &released);
        st.frozen = std::mem::take(&mut st.frozen)
            .into_iter()
            .map(|(id, ranges)| (id, subtract(&ranges, &released)))
            .filter(|(_, ranges)| !ranges.is_empty())
            .collect();
        self.delete_keys(trees, &chunk, &st, subject)?;
        core.st = st;
        self.publish_slots(core);
        Ok(())
    }

    /// Removes `keys` and writes `st`, in one transaction.
    fn delete_keys(
        &self,
        trees: &DataTrees,
        keys: &[sled::IVec],
        st: &ShardState,
        subject: ErrorSubject<u64>,
    ) -> Result<(), StoreError> {
        let encoded = st.encode()?;
        let result = (&trees.ks, &self.sm).transaction(|(ks, sm)| {
            for key in keys {
                ks.remove(key)?;
            }
            sm.insert(STATE_KEY, encoded.as_slice())?;
            Ok(())
        });
        tx_result(result, subject, ErrorVerb::Delete)
    }

    /// The whole applied state as snapshot data, with its meta. Runs while nothing applies
    /// (openraft holds the state machine mutably while asking for a builder).
    fn dump(&self) -> Result<(Meta, Vec<u8>), StoreError> {
        let core = lock(&self.core)?;
        let trees = self.shared.trees.load_full();
        let subject = || ErrorSubject::Snapshot(None);
        let meta = Meta {
            last_log_id: core.st.applied,
            last_membership: core.st.membership.clone(),
            snapshot_id: snapshot_id(&core.st.applied),
        };
        let header = SnapHeader {
            last_version: core.st.last_version,
            owned: core.st.owned.clone(),
            frozen: core.st.frozen.clone(),
        };
        let mut data = encode_blob(&header, subject())?;
        let push = |data: Vec<u8>, item: &SnapItem| {
            postcard::to_extend(item, data).map_err(|e| io_err(subject(), ErrorVerb::Write, e))
        };
        for item in trees.ks.iter() {
            let (key, record) = item.map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
            let (version, value) = self.shared.seal.decode_record(&key, &record)?;
            data = push(
                data,
                &SnapItem::Key(Imported {
                    key: Bytes::copy_from_slice(&key),
                    version,
                    value,
                }),
            )?;
        }
        for item in trees.sessions.iter() {
            let (key, raw) = item.map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
            let (client, seq) = decode_session_key(&key)?;
            let (at_ms, outcome) = decode_session(&raw)?;
            data = push(
                data,
                &SnapItem::Session {
                    client,
                    seq,
                    at_ms,
                    outcome,
                },
            )?;
        }
        data = push(data, &SnapItem::End)?;
        Ok((meta, data))
    }

    /// Replaces the whole state with snapshot `data` (module docs: a new generation, switched
    /// in one write after a flush).
    fn install(&self, meta: Meta, data: Vec<u8>) -> Result<(), StoreError> {
        let mut core = lock(&self.core)?;
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let generation = core.st.generation + 1;
        let (ks_n, sess_n) = (
            ks_name(self.id, generation),
            sessions_name(self.id, generation),
        );
        let drop_new = || {
            let _ = self.db.drop_tree(&ks_n);
            let _ = self.db.drop_tree(&sess_n);
        };
        // Leftovers of an interrupted install with the same generation number.
        drop_new();
        let staged = (|| {
            let trees = DataTrees {
                ks: open_tree(&self.db, &ks_n)?,
                sessions: open_tree(&self.db, &sess_n)?,
            };
            let (st, sessions) =
                write_snapshot_data(&trees, &self.shared.seal, &meta, &data, generation)?;
            Ok::<_, StoreError>((trees, st, sessions))
        })();
        let (trees, st, sessions) = match staged {
            Ok(v) => v,
            Err(e) => {
                drop_new();
                return Err(e);
            }
        };
        self.db
            .flush()
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        // The switch: state (with the new generation and applied id) and the snapshot record in
        // one atomic batch, then flushed before openraft purges the log behind it.
        let mut batch = sled::Batch::default();
        batch.insert(STATE_KEY, st.encode()?);
        batch.insert(
            SNAPSHOT_KEY,
            self.shared.seal.seal(
                |group| Context::Snapshot { group },
                encode_snapshot_record(&meta, &data)?,
                subject(),
            )?,
        );
        self.sm
            .apply_batch(batch)
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        self.db
            .flush()
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        let old_generation = core.st.generation;
        core.st = st;
        core.sessions = sessions;
        let change = self.shared.change_whole();
        let mut old = self.shared.trees.swap(Arc::new(trees));
        drop(change);
        self.publish_slots(&mut core);
        self.shared
            .applied_index
            .store(core.st.applied.map_or(0, |l| l.index), Ordering::Release);
        self.shared
            .key_count
            .store(core.st.key_count, Ordering::Release);
        drop(core);
        // sled's `drop_tree` invalidates the handles still open on a tree, so the old trees
        // are dropped only once no reader holds them (a reader holds them for one call; the
        // swap above counted every outstanding one). A reader that never lets go only delays
        // the drop to the next open.
        for _ in 0..OLD_TREES_WAIT_ROUNDS {
            match Arc::try_unwrap(old) {
                Ok(trees) => {
                    drop(trees);
                    for name in [
                        ks_name(self.id, old_generation),
                        sessions_name(self.id, old_generation),
                    ] {
                        if let Err(e) = self.db.drop_tree(name) {
                            tracing::warn!(group = self.id, error = %e, "could not drop the replaced snapshot generation; dropped at the next open");
                        }
                    }
                    return Ok(());
                }
                Err(still_held) => {
                    old = still_held;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        tracing::warn!(
            group = self.id,
            "readers still hold the replaced snapshot generation; dropped at the next open"
        );
        Ok(())
    }
}

/// Decides and applies one Writes batch inside its transaction (the closure may run more than
/// once, so it changes nothing outside the transaction).
#[allow(clippy::too_many_arguments)]
fn writes_tx(
    core: &Core,
    seal: &Seal,
    ks: &TransactionalTree,
    sm: &TransactionalTree,
    sess: &TransactionalTree,
    log_id: LogId<u64>,
    at_ms: u64,
    writes: &[Write],
) -> Result<WritesDone, TxError> {
    let abort = TxError::Abort;
    let mut st = core.st.clone();
    st.applied = Some(log_id);
    let cutoff = at_ms.saturating_sub(SESSION_TTL_MS);
    let expired: Vec<_> = core.sessions.range(..(cutoff, 0, 0)).copied().collect();
    for (_, c, s) in &expired {
        sess.remove(&session_key(*c, *s)[..])?;
    }
    let mut added = Vec::new();
    let mut outcomes = Vec::with_capacity(writes.len());
    for w in writes {
        if let Some((c, s)) = w.session {
            if let Some(raw) = sess.get(session_key(c, s))? {
                outcomes.push(decode_session(&raw).map_err(abort)?.1);
                continue;
            }
        }
        let key = w.op.key();
        let slot = hash_slot(key);
        let outcome = if !core.slots.owned.contains(slot) {
            WriteOutcome::NotOwned
        } else if core.slots.frozen.contains(slot) {
            WriteOutcome::Frozen
        } else {
            let current = ks.get(&key[..])?;
            let current_version = match &current {
                Some(raw) => decode_record(raw).map_err(abort)?.0,
                None => 0,
            };
            // The value to store, for a PUT or a CAS that matches.
            let (value, refused) = match &w.op {
                WriteOp::Put { value, .. } => (Some(value), None),
                WriteOp::Cas {
                    expect_version,
                    value,
                    ..
                } if *expect_version == current_version => (Some(value), None),
                WriteOp::Cas { .. } => (
                    None,
                    Some(WriteOutcome::CasConflict {
                        current: current_version,
                    }),
                ),
                WriteOp::Delete { .. } => (None, None),
            };
            // An imported entry may carry any version, u64::MAX included: the next one is
            // checked, and a write that would wrap is refused instead of numbered lower than
            // the versions before it.
            let next = st.last_version.checked_add(1);
            match (value, refused, next) {
                (_, Some(refused), _) => refused,
                (Some(_), None, None) => WriteOutcome::VersionsExhausted,
                (None, None, None) if current.is_some() => WriteOutcome::VersionsExhausted,
                (Some(value), None, Some(next)) => {
                    st.last_version = next;
                    let record = seal
                        .encode_record(key, st.last_version, value)
                        .map_err(abort)?;
                    ks.insert(&key[..], record)?;
                    if current.is_none() {
                        st.key_count += 1;
                    }
                    WriteOutcome::Written {
                        version: st.last_version,
                    }
                }
                // A delete of an existing key consumes a version, so the counter keeps
                // counting every change.
                (None, None, Some(next)) if current.is_some() => {
                    st.last_version = next;
                    ks.remove(&key[..])?;
                    st.key_count = st.key_count.saturating_sub(1);
                    WriteOutcome::Deleted { existed: true }
                }
                (None, None, _) => WriteOutcome::Deleted { existed: false },
            }
        };
        // Refusals are not remembered: a retry after the move (or the thaw) must apply.
        let remember = !matches!(
            outcome,
            WriteOutcome::NotOwned | WriteOutcome::Frozen | WriteOutcome::VersionsExhausted
        );
        if let (Some((c, s)), true) = (w.session, remember) {
            sess.insert(
                &session_key(c, s)[..],
                encode_session(at_ms, &outcome).map_err(abort)?,
            )?;
            added.push((at_ms, c, s));
        }
        outcomes.push(outcome);
    }
    // Bound the table: evict the oldest of what remains (expired ones are the oldest prefix of
    // the index; this batch's entries compete too).
    let remaining = core.sessions.len() - expired.len() + added.len();
    let mut evicted = Vec::new();
    if remaining > core.max_sessions {
        let excess = remaining - core.max_sessions;
        let mut candidates: Vec<_> = core
            .sessions
            .iter()
            .skip(expired.len())
            .take(excess)
            .chain(added.iter())
            .copied()
            .collect();
        candidates.sort_unstable();
        candidates.truncate(excess);
        for (_, c, s) in &candidates {
            sess.remove(&session_key(*c, *s)[..])?;
        }
        evicted = candidates;
    }
    sm.insert(STATE_KEY, st.encode().map_err(abort)?)?;
    Ok(WritesDone {
        outcomes,
        st,
        expired,
        added,
        evicted,
    })
}

/// Writes snapshot `data` into the (empty) `trees`; returns the state it describes and its
/// session index. Fails on malformed data without touching anything but `trees`.
fn write_snapshot_data(
    trees: &DataTrees,
    seal: &Seal,
    meta: &Meta,
    data: &[u8],
    generation: u64,
) -> Result<(ShardState, SessionIndex), StoreError> {
    let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
    let decode_err = |e: postcard::Error| io_err(subject(), ErrorVerb::Read, e);
    let body = blob_body(data, subject())?;
    let (header, mut rest): (SnapHeader, _) =
        postcard::take_from_bytes(body).map_err(decode_err)?;
    let mut key_count = 0u64;
    let mut sessions = BTreeSet::new();
    let mut last_key: Option<Bytes> = None;
    let mut ks_batch = sled::Batch::default();
    let mut sess_batch = sled::Batch::default();
    let mut pending = 0usize;
    let flush_batches = |ks_batch: &mut sled::Batch, sess_batch: &mut sled::Batch| {
        trees
            .ks
            .apply_batch(std::mem::take(ks_batch))
            .and_then(|()| trees.sessions.apply_batch(std::mem::take(sess_batch)))
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))
    };
    loop {
        let (item, tail): (SnapItem, _) = postcard::take_from_bytes(rest).map_err(decode_err)?;
        rest = tail;
        match item {
            SnapItem::End => break,
            SnapItem::Key(e) => {
                if last_key.as_ref().is_some_and(|last| *last >= e.key) {
                    return Err(msg_err(
                        subject(),
                        ErrorVerb::Read,
                        "snapshot keys out of order".into(),
                    ));
                }
                ks_batch.insert(&e.key[..], seal.encode_record(&e.key, e.version, &e.value)?);
                key_count += 1;
                last_key = Some(e.key);
            }
            SnapItem::Session {
                client,
                seq,
                at_ms,
                outcome,
            } => {
                sess_batch.insert(
                    &session_key(client, seq)[..],
                    encode_session(at_ms, &outcome)?,
                );
                sessions.insert((at_ms, client, seq));
            }
        }
        pending += 1;
        if pending == INSTALL_BATCH {
            flush_batches(&mut ks_batch, &mut sess_batch)?;
            pending = 0;
        }
    }
    if !rest.is_empty() {
        return Err(msg_err(
            subject(),
            ErrorVerb::Read,
            "trailing bytes after the snapshot".into(),
        ));
    }
    flush_batches(&mut ks_batch, &mut sess_batch)?;
    let st = ShardState {
        applied: meta.last_log_id,
        membership: meta.last_membership.clone(),
        last_version: header.last_version,
        key_count,
        owned: SlotSet::from_ranges(&header.owned).ranges(),
        frozen: header.frozen,
        generation,
    };
    Ok((st, sessions))
}

/// A snapshot prepared by `get_snapshot_builder`, stored and flushed by `build_snapshot`. Used
/// by both state machines.
pub(crate) struct SnapshotBuilder {
    prepared: Result<(Meta, Vec<u8>), StoreError>,
    sm: sled::Tree,
    seal: Seal,
    flusher: Flusher,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (meta, data) = self.prepared.clone()?;
        let sm = self.sm.clone();
        let (m, d, seal) = (meta.clone(), data.clone(), self.seal.clone());
        blocking(move || store_snapshot_if_newer(&sm, &seal, &m, &d)).await?;
        // openraft purges the log up to the snapshot once this returns: the state it covers
        // (applied before it was prepared) and the record must be on disk first.
        self.flusher.flush().await.map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl ShardStateMachine {
    /// Lowers the session bound (tests: the real one needs 100 000 writes to reach).
    #[cfg(test)]
    pub(crate) fn set_max_sessions(&self, max: usize) {
        if let Ok(mut core) = self.inner.core.lock() {
            core.max_sessions = max;
        }
    }

    /// How many session entries the table holds.
    #[cfg(test)]
    pub(crate) fn session_count(&self) -> usize {
        self.inner.core.lock().map_or(0, |c| c.sessions.len())
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
        let core = lock(&self.inner.core)?;
        Ok((core.st.applied, core.st.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StoreError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let inner = self.inner.clone();
        blocking(move || inner.apply_blocking(entries)).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Dumped here, while openraft holds the state machine and applies nothing, so the data
        // matches the applied log id; the builder only stores and flushes it.
        let inner = self.inner.clone();
        let prepared = blocking(move || inner.dump()).await;
        SnapshotBuilder {
            prepared,
            sm: self.inner.sm.clone(),
            seal: self.inner.shared.seal.clone(),
            flusher: self.flusher.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        let meta = meta.clone();
        let data = snapshot.into_inner();
        blocking(move || inner.install(meta, data)).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        read_snapshot(&self.inner.sm, &self.inner.shared.seal)
    }
}

/// A keyspace tree item as an [`Imported`] (key, version, value).
fn decode_item(
    seal: &Seal,
    item: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<Imported, StoreError> {
    let (key, record) = item.map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
    let (version, value) = seal.decode_record(&key, &record)?;
    Ok(Imported {
        key: Bytes::copy_from_slice(&key),
        version,
        value,
    })
}

/// A record's key and version without its value: the version is in the clear in front of the
/// (possibly sealed) value, which stays where sled keeps it.
fn key_of_item(item: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Imported, StoreError> {
    let (key, record) = item.map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
    let (version, _) = decode_record(&record)?;
    Ok(Imported {
        key: Bytes::copy_from_slice(&key),
        version,
        value: Bytes::new(),
    })
}

impl ShardReader {
    /// A key's version and value, `None` when absent.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<(u64, Bytes)>, StoreError> {
        let Some(cache) = &self.shared.cache else {
            return self.get_stored(key);
        };
        let look = cache.look();
        if let Some(hit) = cache.get(look, key) {
            return Ok(Some(hit));
        }
        let found = self.get_stored(key)?;
        if let Some((version, value)) = &found {
            cache.fill(look, key, *version, value);
        }
        Ok(found)
    }

    /// [`Self::get`] from the tree, past the cache.
    fn get_stored(&self, key: &[u8]) -> Result<Option<(u64, Bytes)>, StoreError> {
        let trees = self.shared.trees.load();
        match trees
            .ks
            .get(key)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
        {
            Some(record) => Ok(Some(self.shared.seal.decode_record(key, &record)?)),
            None => Ok(None),
        }
    }

    /// Keys of owned slots starting with `prefix`, in byte order, strictly after `after`, at
    /// most `limit`; and whether more follow.
    #[cfg(test)]
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<Imported>, bool), StoreError> {
        self.scan_within(prefix, after, limit, usize::MAX, false)
    }

    /// [`Self::scan`] that stops loading values once `budget` bytes of keys and values are
    /// loaded (past it by one entry at most, and at least one entry): a client's SCAN costs
    /// about one answer frame, not `limit` values. Keys of slots the shard does not own are
    /// skipped before their value is copied. With `keys_only`, values are neither copied nor
    /// decrypted: each entry's value is empty and only its key counts against `budget`.
    pub(crate) fn scan_within(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        budget: usize,
        keys_only: bool,
    ) -> Result<(Vec<Imported>, bool), StoreError> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        let end = match prefix_end(prefix) {
            Some(end) => {
                let (Bound::Included(s) | Bound::Excluded(s)) = &start else {
                    return Ok((Vec::new(), false));
                };
                if *s >= end {
                    return Ok((Vec::new(), false));
                }
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        let slots = self.shared.slots.load();
        let trees = self.shared.trees.load();
        let mut out = Vec::new();
        let mut loaded = 0usize;
        for item in trees.ks.range::<Vec<u8>, _>((start, end)) {
            if let Ok((key, _)) = &item {
                if !slots.owned.contains(hash_slot(key)) {
                    continue;
                }
            }
            if out.len() == limit || (!out.is_empty() && loaded >= budget) {
                return Ok((out, true));
            }
            let entry = if keys_only {
                key_of_item(item)?
            } else {
                decode_item(&self.shared.seal, item)?
            };
            loaded = loaded.saturating_add(entry.key.len() + entry.value.len());
            out.push(entry);
        }
        Ok((out, false))
    }

    /// The owned slots.
    pub(crate) fn owned(&self) -> SlotSet {
        self.shared.slots.load().owned.clone()
    }

    #[cfg(test)]
    /// The frozen slots.
    pub(crate) fn frozen(&self) -> SlotSet {
        self.shared.slots.load().frozen.clone()
    }

    /// Whether the state machine owns `slot`, and whether that slot is frozen (being moved
    /// away); cheaper than [`Self::slots`] for one slot.
    pub(crate) fn slot_state(&self, slot: u16) -> (bool, bool) {
        let slots = self.shared.slots.load();
        (slots.owned.contains(slot), slots.frozen.contains(slot))
    }

    /// Owned and frozen slots without copying the bitmaps.
    pub(crate) fn slots(&self) -> Arc<Slots> {
        self.shared.slots.load_full()
    }

    /// Keys of `slots` (a move's), in byte order, strictly after `after`: at most `limit`
    /// entries (at least one) and about `max_bytes` of keys and values (the entry that crosses
    /// it is included). The second value is the key to continue after, `None` when the
    /// keyspace is exhausted; a continued call may return nothing.
    pub(crate) fn export(
        &self,
        slots: &SlotSet,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Imported>, Option<Bytes>), StoreError> {
        let limit = limit.max(1);
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Unbounded,
        };
        let trees = self.shared.trees.load();
        let mut out: Vec<Imported> = Vec::new();
        let mut bytes = 0usize;
        for item in trees.ks.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            if let Ok((key, _)) = &item {
                if !slots.contains(hash_slot(key)) {
                    continue;
                }
            }
            let e = decode_item(&self.shared.seal, item)?;
            bytes = bytes.saturating_add(e.key.len() + e.value.len());
            out.push(e);
            if out.len() >= limit || bytes >= max_bytes {
                let next = out.last().map(|e| e.key.clone());
                return Ok((out, next));
            }
        }
        Ok((out, None))
    }

    #[cfg(test)]
    /// The index of the last applied entry (0 before any).
    pub(crate) fn last_applied_index(&self) -> u64 {
        self.shared.applied_index.load(Ordering::Acquire)
    }

    /// How many keys the shard holds.
    pub(crate) fn key_count(&self) -> u64 {
        self.shared.key_count.load(Ordering::Acquire)
    }
}

// ---------------------------------------------------------------------------------------------
// Metadata state machine
// ---------------------------------------------------------------------------------------------

/// What the metadata group's state machine runs: the whole state, in memory, changed by JSON
/// commands ([`Proposal::Meta`]) and answering JSON.
pub(crate) trait Machine:
    Serialize + DeserializeOwned + Default + Send + Sync + 'static
{
    /// Applies one command; the answer goes back to the proposer. Must be deterministic.
    fn apply(&mut self, json: &[u8]) -> Vec<u8>;
}

/// `sm/meta` key `state`: `FORMAT` ‖ postcard(MetaHeader) ‖ postcard(M).
#[derive(Debug, Default, Serialize, Deserialize)]
struct MetaHeader {
    applied: Option<LogId<u64>>,
    membership: Membership,
}

/// The metadata group's state machine: an `M` in memory, persisted as one blob after each
/// apply batch, published on a watch channel.
pub(crate) struct MetaStateMachine<M: Machine> {
    tree: sled::Tree,
    flusher: Flusher,
    header: MetaHeader,
    machine: M,
    tx: watch::Sender<Arc<M>>,
}

impl<M: Machine> Debug for MetaStateMachine<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("applied", &self.header.applied)
            .finish_non_exhaustive()
    }
}

fn encode_machine<M: Machine>(m: &M) -> Result<Vec<u8>, StoreError> {
    encode_blob(m, ErrorSubject::StateMachine)
}

fn decode_machine<M: Machine>(raw: &[u8], subject: ErrorSubject<u64>) -> Result<M, StoreError> {
    let body = blob_body(raw, subject.clone())?;
    postcard::from_bytes(body).map_err(|e| io_err(subject, ErrorVerb::Read, e))
}

/// Opens the metadata group's log and state machine in `db`; the receiver sees the state after
/// every apply batch and install.
pub(crate) fn open_meta<M: Machine>(
    db: &sled::Db,
    flusher: Flusher,
) -> Result<MetaParts<M>, StoreError> {
    // The metadata group holds the cluster map (node names, addresses, slot ranges), not
    // client data: it stays in the clear (docs/SECURITY.md, "Encryption at rest").
    let log = LogStore::open(db, META_GROUP, flusher.clone(), None)?;
    let tree = open_tree(db, "sm/meta")?;
    let (header, machine) = match tree
        .get(STATE_KEY)
        .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?
    {
        None => (MetaHeader::default(), M::default()),
        Some(raw) => {
            let body = blob_body(&raw, ErrorSubject::StateMachine)?;
            let (header, rest): (MetaHeader, _) = postcard::take_from_bytes(body)
                .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
            (header, decode_machine(rest, ErrorSubject::StateMachine)?)
        }
    };
    let copy = Arc::new(decode_machine::<M>(
        &encode_machine(&machine)?,
        ErrorSubject::StateMachine,
    )?);
    let (tx, rx) = watch::channel(copy);
    Ok((
        log,
        MetaStateMachine {
            tree,
            flusher,
            header,
            machine,
            tx,
        },
        rx,
    ))
}

impl<M: Machine> MetaStateMachine<M> {
    /// Writes the state blob and publishes a copy of the machine.
    fn persist(&self) -> Result<(), StoreError> {
        let machine = encode_machine(&self.machine)?;
        let mut raw = encode_blob(&self.header, ErrorSubject::StateMachine)?;
        raw.extend_from_slice(&machine);
        self.tree
            .insert(STATE_KEY, raw)
            .map_err(|e| io_err(ErrorSubject::StateMachine, ErrorVerb::Write, e))?;
        // `M` need not be `Clone`: the copy for watchers is decoded from the bytes just
        // written, which also checks they decode.
        let copy = decode_machine::<M>(&machine, ErrorSubject::StateMachine)?;
        self.tx.send_replace(Arc::new(copy));
        Ok(())
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for MetaStateMachine<M> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, Membership), StoreError> {
        Ok((self.header.applied, self.header.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StoreError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for entry in entries {
            self.header.applied = Some(entry.log_id);
            out.push(match entry.payload {
                EntryPayload::Blank => Outcome::Done,
                EntryPayload::Membership(m) => {
                    self.header.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::Done
                }
                EntryPayload::Normal(Proposal::Meta { json }) => {
                    Outcome::Meta(self.machine.apply(&json))
                }
                EntryPayload::Normal(_) => {
                    tracing::warn!(
                        index = entry.log_id.index,
                        "shard proposal in the metadata log; ignored"
                    );
                    Outcome::Done
                }
            });
        }
        if !out.is_empty() {
            self.persist()?;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let prepared = encode_machine(&self.machine).map(|data| {
            let meta = Meta {
                last_log_id: self.header.applied,
                last_membership: self.header.membership.clone(),
                snapshot_id: snapshot_id(&self.header.applied),
            };
            (meta, data)
        });
        SnapshotBuilder {
            prepared,
            sm: self.tree.clone(),
            seal: Seal::new(None, META_GROUP),
            flusher: self.flusher.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let data = snapshot.into_inner();
        let machine = decode_machine::<M>(&data, ErrorSubject::Snapshot(Some(meta.signature())))?;
        self.machine = machine;
        self.header = MetaHeader {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        // State and snapshot record land in one flush; the state blob is one insert, so a
        // crash leaves either the old state or the new, never a mix.
        self.persist()?;
        self.tree
            .insert(SNAPSHOT_KEY, encode_snapshot_record(meta, &data)?)
            .map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    e,
                )
            })?;
        self.flusher.flush().await.map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                e,
            )
        })
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        read_snapshot(&self.tree, &Seal::new(None, META_GROUP))
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
