//! A shard: the slots it owns, the order of its writes, and the answer to each command once the
//! write is durable. [`replica`] is the replicated shard of a sled node (a Raft group); the
//! [`Shard`] here is the unreplicated local shard of the memory and null engines.
//!
//! The router hands a [`Shard`] one [`Command`] at a time. The shard checks that it still owns
//! the key's slot (ownership is the shard's own state, so a command that raced a change of map
//! is refused here rather than applied to slots it no longer holds), decides the command against
//! its state, numbers every write with the next version of its own sequence and applies it to
//! its keyspace. The caller gets an [`Execution`]: an answer now (reads, refused or
//! no-op writes) or a future that yields the answer once the write is durable.
//!
//! # Why a shard numbers its own writes
//!
//! A write's version is the shard's applied version plus one, taken under the shard's write
//! lock, and storage stores exactly that number ([`crate::storage`]). Two copies of a shard that
//! apply the same commands in the same order therefore hold the same bytes, and a restart
//! continues the sequence where it stopped (version 2 is followed by version 3, not by a
//! number from a node-wide generator). Tomorrow the sequence is the shard's Raft log, and the
//! version a write gets is its log index; the rules callers see do not change: a key's version
//! grows with every write, across deletes and slot moves, and 0 means "absent".
//!
//! CAS is decided here, under the same lock, against the version in the keyspace: every copy
//! that applies the same commands reaches the same outcome.
//!

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use bytes::Bytes;
use skv_proto::cluster::{hash_slot, SlotSet};
use skv_proto::{ErrorCode, ResponseBody, ScanEntry, WireError};

use crate::storage::{Entry, GroupCommit, Keyspace, ScanBounds, Storage, StorageError};

pub(crate) mod replica;
#[cfg(test)]
mod tests;

/// A keyed command, as the router hands it to the shard that owns the key's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Read a key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write a key unconditionally.
    Put {
        /// The key.
        key: Bytes,
        /// The value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Write a key only if its version is `expect_version` (0: only if absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The version the key must have.
        expect_version: u64,
        /// The value.
        value: Bytes,
    },
}

impl Command {
    /// The key the command is about.
    pub(crate) fn key(&self) -> &Bytes {
        match self {
            Command::Get { key }
            | Command::Put { key, .. }
            | Command::Delete { key }
            | Command::Cas { key, .. } => key,
        }
    }
}

/// An answer that waits for its write to be durable.
pub(crate) type Pending = Pin<Box<dyn Future<Output = ResponseBody> + Send>>;

/// What became of a command.
pub(crate) enum Execution {
    /// The answer, now: a read, a refusal, or a write that changed nothing.
    Ready(ResponseBody),
    /// The write is applied (its place in the shard's order is fixed); the answer comes once
    /// it is durable.
    Durable(Pending),
    /// This shard does not own the key's slot (any more): the router answers with the map.
    NotServed,
}

impl std::fmt::Debug for Execution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Execution::Ready(body) => f.debug_tuple("Ready").field(body).finish(),
            Execution::Durable(_) => f.write_str("Durable(..)"),
            Execution::NotServed => f.write_str("NotServed"),
        }
    }
}

/// One page of a shard's keys for a scan.
#[derive(Debug, Default)]
pub(crate) struct ShardPage {
    /// Entries of slots the shard owns, in key order.
    pub(crate) entries: Vec<ScanEntry>,
    /// When the shard has keys past this page: the last key it looked at (entries of slots it
    /// does not own are skipped, so this may lie past the last entry). Every key of the shard
    /// up to it has been considered.
    pub(crate) frontier: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Ownership {
    slots: SlotSet,
}

/// One shard hosted on this node: its keyspace, the slots it owns, the order of its writes.
#[derive(Debug)]
pub(crate) struct Shard {
    id: u32,
    keyspace: Arc<dyn Keyspace>,
    /// Present with sync durability: a write is answered after the group flush covering it.
    group_commit: Option<GroupCommit>,
    /// Held while a write is numbered and applied: the shard's order of writes.
    writes: Mutex<()>,
    ownership: RwLock<Ownership>,
}

/// The keyspace name of shard `id`.
pub(crate) fn keyspace_name(id: u32) -> String {
    format!("shard-{id}")
}

impl Shard {
    /// Open shard `id` on `storage` (its keyspace is created on first use), owning no slots
    /// until [`Shard::set_slots`].
    pub(crate) fn open(
        id: u32,
        storage: &dyn Storage,
        group_commit: Option<GroupCommit>,
    ) -> Result<Shard, StorageError> {
        Ok(Shard {
            id,
            keyspace: storage.keyspace(&keyspace_name(id))?,
            group_commit,
            writes: Mutex::new(()),
            ownership: RwLock::new(Ownership::default()),
        })
    }

    /// The shard id of the map.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    // Critical sections below are assignments and single storage calls that cannot leave the
    // guarded state half-changed, so a poisoned lock still guards consistent state.
    fn own(&self) -> RwLockReadGuard<'_, Ownership> {
        self.ownership
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn own_mut(&self) -> RwLockWriteGuard<'_, Ownership> {
        self.ownership
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn order(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Execute `command` if this shard owns its key's slot. See the module docs.
    #[cfg(test)]
    pub(crate) fn execute(&self, command: Command) -> Execution {
        self.execute_in(hash_slot(command.key()), command)
    }

    /// [`Shard::execute`] for a caller that already hashed the key: `slot` must be
    /// `hash_slot(command.key())` (the router hashes each key once).
    pub(crate) fn execute_in(&self, slot: u16, command: Command) -> Execution {
        debug_assert_eq!(slot, hash_slot(command.key()));
        let own = self.own();
        if !own.slots.contains(slot) {
            return Execution::NotServed;
        }
        let applied = match command {
            Command::Get { key } => {
                return Execution::Ready(match self.keyspace.get(&key) {
                    Ok(Some(v)) => ResponseBody::Value {
                        version: v.version,
                        value: v.value,
                    },
                    Ok(None) => ResponseBody::NotFound,
                    Err(err) => storage_failed(&err),
                })
            }
            write => self.apply(write),
        };
        match applied {
            Ok(Applied::Changed { answer }) => match &self.group_commit {
                Some(group_commit) => {
                    let group_commit = group_commit.clone();
                    Execution::Durable(Box::pin(async move {
                        durable_answer(&group_commit, answer).await
                    }))
                }
                None => Execution::Ready(answer),
            },
            Ok(Applied::Unchanged(answer)) => Execution::Ready(answer),
            Err(ApplyError::Storage(err)) => Execution::Ready(storage_failed(&err)),
            Err(ApplyError::VersionsExhausted) => Execution::Ready(error(
                ErrorCode::Storage,
                format!(
                    "shard {} has used every version number; it accepts no more writes",
                    self.id
                ),
            )),
        }
    }

    /// The next version of this shard's sequence. Call with the write lock held.
    fn next_version(&self) -> Result<u64, ApplyError> {
        self.keyspace
            .applied()
            .checked_add(1)
            .ok_or(ApplyError::VersionsExhausted)
    }

    /// Decide and apply one write, in the shard's order.
    fn apply(&self, command: Command) -> Result<Applied, ApplyError> {
        let _order = self.order();
        let ks = self.keyspace.as_ref();
        Ok(match command {
            Command::Put { key, value } => {
                let version = self.next_version()?;
                ks.put(&key, version, &value)?;
                Applied::Changed {
                    answer: ResponseBody::Written { version },
                }
            }
            Command::Delete { key } => {
                // Deleting an absent key changes nothing: no version spent, nothing to make
                // durable, nothing for a slot move to copy again.
                if ks.get(&key)?.is_none() {
                    return Ok(Applied::Unchanged(ResponseBody::Deleted { existed: false }));
                }
                let version = self.next_version()?;
                let existed = ks.delete(&key, version)?;
                Applied::Changed {
                    answer: ResponseBody::Deleted { existed },
                }
            }
            Command::Cas {
                key,
                expect_version,
                value,
            } => {
                let current = ks.get(&key)?.map_or(0, |v| v.version);
                if current != expect_version {
                    return Ok(Applied::Unchanged(ResponseBody::CasConflict { current }));
                }
                let version = self.next_version()?;
                ks.put(&key, version, &value)?;
                Applied::Changed {
                    answer: ResponseBody::Written { version },
                }
            }
            Command::Get { .. } => {
                return Ok(Applied::Unchanged(error(
                    ErrorCode::Internal,
                    "a read reached the write path",
                )))
            }
        })
    }

    /// Up to `limit` keys starting with `prefix`, strictly after `after`, of the slots this
    /// shard owns.
    ///
    /// At most `limit` keys are looked at; keys of other slots are skipped before their value
    /// is loaded, and values stop loading once `budget` bytes are (past it by one entry at
    /// most): a page never holds much more than one answer frame.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
        budget: usize,
        keys_only: bool,
    ) -> Result<ShardPage, StorageError> {
        let slots = self.slots();
        let keep = |key: &[u8]| slots.contains(hash_slot(key));
        let bounds = ScanBounds {
            keys: limit,
            bytes: budget,
            keys_only,
            keep: &keep,
        };
        let page = self.keyspace.scan_within(prefix, after, &bounds)?;
        let frontier = if page.more { page.last } else { None };
        let entries = page.entries.into_iter().map(scan_entry).collect();
        Ok(ShardPage { entries, frontier })
    }

    /// The slots this shard owns.
    pub(crate) fn slots(&self) -> SlotSet {
        self.own().slots.clone()
    }

    /// Take ownership of exactly `slots` (a new map was installed).
    pub(crate) fn set_slots(&self, slots: SlotSet) {
        self.own_mut().slots = slots;
    }

    /// One page of the stored entries whose slot is in `slots`, strictly after `after`, and
    /// where the next page starts (`None` at the end). A page may be empty and still have a
    /// next one: it looked at [`WALK_PAGE`] keys of other slots.
    pub(crate) fn walk_page(
        &self,
        slots: &SlotSet,
        after: Option<&[u8]>,
    ) -> Result<(Vec<ScanEntry>, Option<Bytes>), StorageError> {
        let page = self.keyspace.scan(b"", after, WALK_PAGE)?;
        let next = if page.more {
            page.entries.last().map(|e| e.key.clone())
        } else {
            None
        };
        let entries = page
            .entries
            .into_iter()
            .filter(|e| slots.contains(hash_slot(&e.key)))
            .map(scan_entry)
            .collect();
        Ok((entries, next))
    }

    /// Call `each` for every stored entry whose slot is in `slots`, a page at a time.
    fn walk(
        &self,
        slots: &SlotSet,
        mut each: impl FnMut(ScanEntry) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mut after: Option<Bytes> = None;
        loop {
            let (entries, next) = self.walk_page(slots, after.as_deref())?;
            for entry in entries {
                each(entry)?;
            }
            match next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Keys stored in the slots this shard owns.
    pub(crate) fn count_keys(&self) -> Result<u64, StorageError> {
        let slots = self.slots();
        let mut n = 0;
        self.walk(&slots, |_| {
            n += 1;
            Ok(())
        })?;
        Ok(n)
    }
}

/// Page size for whole-keyspace walks (moves, cleanup, counts).
pub(crate) const WALK_PAGE: usize = 1000;

/// What a write did.
enum Applied {
    /// Nothing changed; answer now.
    Unchanged(ResponseBody),
    /// `key` changed; answer once durable.
    Changed { answer: ResponseBody },
}

#[derive(Debug)]
enum ApplyError {
    Storage(StorageError),
    /// The shard's applied version is `u64::MAX`.
    VersionsExhausted,
}

impl From<StorageError> for ApplyError {
    fn from(err: StorageError) -> Self {
        ApplyError::Storage(err)
    }
}

fn scan_entry(e: Entry) -> ScanEntry {
    ScanEntry {
        key: e.key,
        version: e.version,
        value: e.value,
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> ResponseBody {
    ResponseBody::Error(WireError::new(code, message))
}

/// The client's answer to a storage failure. The detail goes to the node's log; the client
/// learns only the category, since storage errors can name paths on the node.
pub(crate) fn storage_failed(err: &StorageError) -> ResponseBody {
    tracing::error!(error = ?err, "storage operation failed");
    error(
        ErrorCode::Storage,
        "the node's storage failed; the operation may not have been applied",
    )
}

/// `answer` once the write is on disk, or a storage error if the flush failed.
async fn durable_answer(group_commit: &GroupCommit, answer: ResponseBody) -> ResponseBody {
    match group_commit.wait_durable().await {
        Ok(()) => answer,
        Err(err) => {
            tracing::error!(error = ?err, "flush failed; write not acknowledged");
            error(
                ErrorCode::Storage,
                "the node could not flush the write to disk; it may or may not persist",
            )
        }
    }
}
