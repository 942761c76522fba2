//! Tests of the log store and the state machines on real sled databases in temp dirs:
//! openraft's storage suite, the shard semantics, restarts and snapshots.

use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, RaftLogReader, RaftSnapshotBuilder, Vote};
use tempfile::TempDir;

use super::*;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Opens `path`, retrying while a just-dropped handle still holds sled's lock.
fn open_db(path: &Path) -> sled::Db {
    for _ in 0..200 {
        match sled::Config::new().path(path).flush_every_ms(None).open() {
            Ok(db) => return db,
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("open: {e}"),
        }
    }
    panic!("data dir still locked after 2s");
}

fn lid(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 0), index)
}

fn ent(index: u64, p: Proposal) -> Entry<TypeConfig> {
    Entry {
        log_id: lid(index),
        payload: EntryPayload::Normal(p),
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> Write {
    Write {
        session: None,
        op: WriteOp::Put {
            key: b(key),
            value: b(value),
        },
    }
}

fn del(key: &str) -> Write {
    Write {
        session: None,
        op: WriteOp::Delete { key: b(key) },
    }
}

fn cas(key: &str, expect_version: u64, value: &str) -> Write {
    Write {
        session: None,
        op: WriteOp::Cas {
            key: b(key),
            expect_version,
            value: b(value),
        },
    }
}

fn with_session(client: u64, seq: u64, mut w: Write) -> Write {
    w.session = Some((client, seq));
    w
}

fn all() -> Vec<SlotRange> {
    vec![SlotRange::new(0, SLOT_COUNT - 1)]
}

fn slot_of(key: &str) -> u16 {
    hash_slot(key.as_bytes())
}

fn only(slot: u16) -> Vec<SlotRange> {
    vec![SlotRange::new(slot, slot)]
}

/// A key (`prefix` + n) whose slot is not `avoid`.
fn key_not_in(prefix: &str, avoid: u16) -> String {
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .find(|k| slot_of(k) != avoid)
        .unwrap_or_default()
}

/// One shard replica on its own database.
struct Shard {
    db: sled::Db,
    log: LogStore,
    sm: ShardStateMachine,
    reader: ShardReader,
    next: u64,
}

impl Shard {
    /// Reads go through a read cache of its own, so every test here also checks that the
    /// cache never serves what a change replaced.
    fn open(path: &Path) -> Shard {
        let db = open_db(path);
        let cache = ReadCache::new(1 << 20);
        let (log, sm, reader) =
            open_shard(&db, 1, Flusher::new(db.clone()), None, Some(&cache)).unwrap();
        let next = reader.last_applied_index() + 1;
        Shard {
            db,
            log,
            sm,
            reader,
            next,
        }
    }

    /// Applies `p` as the next log entry; returns its outcome.
    async fn apply(&mut self, p: Proposal) -> Outcome {
        let e = ent(self.next, p);
        self.next += 1;
        let mut out = self.sm.apply(vec![e]).await.unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    async fn writes(&mut self, at_ms: u64, writes: Vec<Write>) -> Vec<WriteOutcome> {
        match self.apply(Proposal::Writes { at_ms, writes }).await {
            Outcome::Writes(w) => w,
            other => panic!("expected writes, got {other:?}"),
        }
    }

    async fn own_all(&mut self) {
        assert_eq!(
            self.apply(Proposal::Own { slots: all() }).await,
            Outcome::Done
        );
    }

    fn get(&self, key: &str) -> Option<(u64, String)> {
        self.reader
            .get(key.as_bytes())
            .unwrap()
            .map(|(v, val)| (v, String::from_utf8(val.to_vec()).unwrap()))
    }

    fn dump(&self) -> Vec<(Bytes, u64, Bytes)> {
        let (entries, more) = self.reader.scan(b"", None, 1_000_000).unwrap();
        assert!(!more);
        entries
            .into_iter()
            .map(|e| (e.key, e.version, e.value))
            .collect()
    }
}

fn written(version: u64) -> WriteOutcome {
    WriteOutcome::Written { version }
}

// ---------------------------------------------------------------------------------------------
// openraft's suite
// ---------------------------------------------------------------------------------------------

/// Builds shard stores, sealed with encryption at rest when `encrypted`.
struct ShardBuilder {
    encrypted: bool,
}

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine, (TempDir, sled::Db)> for ShardBuilder {
    async fn build(
        &self,
    ) -> Result<((TempDir, sled::Db), LogStore, ShardStateMachine), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let crypt = self
            .encrypted
            .then(|| std::sync::Arc::new(crate::storage::atrest::Crypt::ephemeral()));
        let (log, sm, _reader) = open_shard(&db, 7, Flusher::new(db.clone()), crypt, None)?;
        Ok(((dir, db), log, sm))
    }
}

#[test]
fn openraft_suite_shard() {
    Suite::test_all(ShardBuilder { encrypted: false }).unwrap();
}

/// The same suite with every log entry, record and snapshot sealed (encryption at rest).
#[test]
fn openraft_suite_shard_encrypted_at_rest() {
    Suite::test_all(ShardBuilder { encrypted: true }).unwrap();
}

/// A trivial machine: counts the commands and remembers the last.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counter {
    n: u64,
    last: Vec<u8>,
}

impl Machine for Counter {
    fn apply(&mut self, json: &[u8]) -> Vec<u8> {
        self.n += 1;
        self.last = json.to_vec();
        self.n.to_string().into_bytes()
    }
}

struct MetaBuilder;

impl StoreBuilder<TypeConfig, LogStore, MetaStateMachine<Counter>, (TempDir, sled::Db)>
    for MetaBuilder
{
    async fn build(
        &self,
    ) -> Result<((TempDir, sled::Db), LogStore, MetaStateMachine<Counter>), StoreError> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let (log, sm, _rx) = open_meta::<Counter>(&db, Flusher::new(db.clone()))?;
        Ok(((dir, db), log, sm))
    }
}

#[test]
fn openraft_suite_meta() {
    Suite::test_all(MetaBuilder).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Shard semantics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn versions_increase_and_two_replicas_agree() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut r) = (Shard::open(d1.path()), Shard::open(d2.path()));
    let batches = vec![
        vec![put("a", "1"), put("b", "2"), put("a", "3")],
        vec![del("b"), del("never"), put("c", "4")],
        vec![cas("a", 3, "5"), cas("c", 1, "x"), cas("new", 0, "6")],
    ];
    a.own_all().await;
    r.own_all().await;
    let mut outs = Vec::new();
    for (i, batch) in batches.into_iter().enumerate() {
        let at = 1000 + i as u64;
        let oa = a.writes(at, batch.clone()).await;
        let or = r.writes(at, batch).await;
        assert_eq!(oa, or, "replicas decide the same");
        outs.extend(oa);
    }
    assert_eq!(
        outs,
        vec![
            written(1),
            written(2),
            written(3),
            // An existing key's delete consumes version 4; the absent one nothing.
            WriteOutcome::Deleted { existed: true },
            WriteOutcome::Deleted { existed: false },
            written(5),
            written(6),
            WriteOutcome::CasConflict { current: 5 },
            written(7),
        ]
    );
    assert_eq!(a.dump(), r.dump());
    assert_eq!(a.get("a"), Some((6, "5".into())));
    assert_eq!(a.get("b"), None);
    assert_eq!(a.get("c"), Some((5, "4".into())));
    assert_eq!(a.get("new"), Some((7, "6".into())));
    assert_eq!(a.reader.key_count(), 3);
    assert_eq!(a.reader.last_applied_index(), 4);
    assert_eq!(a.sm.applied_state().await.unwrap().0, Some(lid(4)));
}

#[tokio::test]
async fn cas_compares_against_the_version_at_that_point_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    let out = s
        .writes(
            1,
            vec![
                cas("k", 1, "no"), // absent: current 0
                cas("k", 0, "v1"), // create
                cas("k", 0, "no"), // exists now
                cas("k", 1, "v2"), // matches
                del("k"),          // consumes 3
                cas("k", 2, "no"), // absent again
                cas("k", 0, "v3"), // recreate
            ],
        )
        .await;
    assert_eq!(
        out,
        vec![
            WriteOutcome::CasConflict { current: 0 },
            written(1),
            WriteOutcome::CasConflict { current: 1 },
            written(2),
            WriteOutcome::Deleted { existed: true },
            WriteOutcome::CasConflict { current: 0 },
            written(4),
        ]
    );
    assert_eq!(s.get("k"), Some((4, "v3".into())));
}

#[tokio::test]
async fn a_session_is_applied_once_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    let out = s
        .writes(
            10,
            vec![
                with_session(7, 1, put("k", "first")),
                with_session(7, 1, put("k", "first")),
                with_session(7, 2, cas("k", 9, "x")),
            ],
        )
        .await;
    assert_eq!(
        out,
        vec![
            written(1),
            written(1),
            WriteOutcome::CasConflict { current: 1 }
        ]
    );
    // A retry in a later batch, even with another body, answers the first outcome.
    let out = s
        .writes(
            20,
            vec![
                with_session(7, 1, put("k", "changed")),
                with_session(7, 2, cas("k", 1, "x")),
                with_session(8, 1, put("k", "other client")),
            ],
        )
        .await;
    assert_eq!(
        out,
        vec![
            written(1),
            WriteOutcome::CasConflict { current: 1 },
            written(2)
        ]
    );
    assert_eq!(s.get("k"), Some((2, "other client".into())));
    assert_eq!(s.sm.session_count(), 3);
}

#[tokio::test]
async fn sessions_expire_by_the_batch_clock() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    let t0 = 1_000_000;
    assert_eq!(
        s.writes(t0, vec![with_session(1, 1, put("k", "a"))]).await,
        vec![written(1)]
    );
    // Exactly TTL later the entry is still there.
    let out = s
        .writes(t0 + SESSION_TTL_MS, vec![with_session(1, 1, put("k", "b"))])
        .await;
    assert_eq!(out, vec![written(1)]);
    // One millisecond more and it expired: the retry applies again.
    let out = s
        .writes(
            t0 + SESSION_TTL_MS + 1,
            vec![with_session(1, 1, put("k", "c"))],
        )
        .await;
    assert_eq!(out, vec![written(2)]);
    assert_eq!(s.get("k"), Some((2, "c".into())));
    assert_eq!(s.sm.session_count(), 1);
}

#[tokio::test]
async fn the_session_table_is_bounded_evicting_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.sm.set_max_sessions(3);
    s.own_all().await;
    for (at, seq) in [(100, 1), (200, 2), (300, 3)] {
        s.writes(at, vec![with_session(1, seq, put("k", "v"))])
            .await;
    }
    assert_eq!(s.sm.session_count(), 3);
    // Two more: the two oldest (seq 1 and 2) go.
    s.writes(
        400,
        vec![
            with_session(1, 4, put("k", "v")),
            with_session(1, 5, put("k", "v")),
        ],
    )
    .await;
    assert_eq!(s.sm.session_count(), 3);
    let out = s
        .writes(
            500,
            vec![
                with_session(1, 3, put("k", "retry")), // still known
                with_session(1, 1, put("k", "retry")), // evicted: applies again
            ],
        )
        .await;
    assert_eq!(out, vec![written(3), written(6)]);
    assert_eq!(s.sm.session_count(), 3);
    let stored = s.reader.shared.trees.load().sessions.len();
    assert_eq!(stored, 3, "the tree is bounded as the index is");
}

#[tokio::test]
async fn writes_to_unowned_or_frozen_slots_are_refused_and_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    let owned_key = "owned";
    let slot = slot_of(owned_key);
    let other = key_not_in("other", slot);
    s.apply(Proposal::Own { slots: only(slot) }).await;
    assert!(s.reader.owned().contains(slot));
    assert_eq!(s.reader.owned().len(), 1);
    let out = s
        .writes(
            1,
            vec![put(owned_key, "v"), with_session(1, 1, put(&other, "v"))],
        )
        .await;
    assert_eq!(out, vec![written(1), WriteOutcome::NotOwned]);
    // Frozen: refused, reads still served.
    s.apply(Proposal::Freeze {
        move_id: 9,
        slots: only(slot),
    })
    .await;
    // Idempotent.
    s.apply(Proposal::Freeze {
        move_id: 9,
        slots: only(slot),
    })
    .await;
    assert!(s.reader.frozen().contains(slot));
    let out = s
        .writes(2, vec![with_session(1, 2, put(owned_key, "w"))])
        .await;
    assert_eq!(out, vec![WriteOutcome::Frozen]);
    assert_eq!(s.get(owned_key), Some((1, "v".into())));
    // Neither refusal was remembered: once the slot is owned, the retry applies.
    s.apply(Proposal::Own {
        slots: only(slot_of(&other)),
    })
    .await;
    let out = s
        .writes(3, vec![with_session(1, 1, put(&other, "v"))])
        .await;
    assert_eq!(out, vec![written(2)]);
    assert_eq!(s.sm.session_count(), 1);
}

#[tokio::test]
async fn import_keeps_higher_versions_and_raises_the_counter() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    s.writes(1, vec![put("mine", "local")]).await; // version 1
    let imported = |k: &str, v: u64, val: &str| Imported {
        key: b(k),
        version: v,
        value: b(val),
    };
    s.apply(Proposal::Import {
        move_id: 3,
        entries: vec![imported("moved", 500, "m"), imported("old", 7, "o")],
    })
    .await;
    // Below an existing higher version: the existing stays.
    s.writes(2, vec![put("old", "newer")]).await; // version 501
    s.apply(Proposal::Import {
        move_id: 3,
        entries: vec![imported("old", 7, "stale"), imported("mine", 2, "replaced")],
    })
    .await;
    assert_eq!(s.get("moved"), Some((500, "m".into())));
    assert_eq!(s.get("old"), Some((501, "newer".into())));
    // Equal or higher than the existing: replaced.
    assert_eq!(s.get("mine"), Some((2, "replaced".into())));
    assert_eq!(s.reader.key_count(), 3);
    // The counter continues above every imported version.
    assert_eq!(
        s.writes(3, vec![put("next", "n")]).await,
        vec![written(502)]
    );
}

#[tokio::test]
async fn an_import_at_the_last_version_refuses_later_writes_instead_of_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    s.writes(1, vec![put("before", "b")]).await; // version 1
    s.apply(Proposal::Import {
        move_id: 9,
        entries: vec![Imported {
            key: b("top"),
            version: u64::MAX,
            value: b("t"),
        }],
    })
    .await;
    // Every write that would need a version is refused; a delete of an absent key needs none.
    assert_eq!(
        s.writes(
            2,
            vec![
                put("next", "n"),
                del("before"),
                cas("top", u64::MAX, "c"),
                del("absent")
            ]
        )
        .await,
        vec![
            WriteOutcome::VersionsExhausted,
            WriteOutcome::VersionsExhausted,
            WriteOutcome::VersionsExhausted,
            WriteOutcome::Deleted { existed: false },
        ]
    );
    // Nothing was numbered below u64::MAX after it.
    assert_eq!(s.get("next"), None);
    assert_eq!(s.get("before"), Some((1, "b".into())));
    assert_eq!(s.get("top"), Some((u64::MAX, "t".into())));
}

#[tokio::test]
async fn release_deletes_only_the_released_slots_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    // More keys than one release transaction takes.
    let keys: Vec<String> = (0..3000).map(|i| format!("key-{i}")).collect();
    s.writes(1, keys.iter().map(|k| put(k, "v")).collect())
        .await;
    let released = vec![SlotRange::new(0, 8191)];
    let set = SlotSet::from_ranges(&released);
    s.apply(Proposal::Freeze {
        move_id: 5,
        slots: released.clone(),
    })
    .await;
    // The export pages through exactly the released slots' keys.
    let mut exported = Vec::new();
    let mut after: Option<Bytes> = None;
    loop {
        let (page, next) = s
            .reader
            .export(&set, after.as_deref(), 100, 1 << 20)
            .unwrap();
        assert!(page.len() <= 100);
        exported.extend(page.into_iter().map(|e| e.key));
        match next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let expect: Vec<&String> = keys.iter().filter(|k| set.contains(slot_of(k))).collect();
    assert!(expect.len() > RELEASE_BATCH, "{}", expect.len());
    assert_eq!(exported.len(), expect.len());
    s.apply(Proposal::Release {
        move_id: 5,
        slots: released,
    })
    .await;
    for k in &keys {
        assert_eq!(s.get(k).is_some(), !set.contains(slot_of(k)), "{k}");
    }
    assert_eq!(s.reader.key_count(), (keys.len() - expect.len()) as u64);
    assert!(s.reader.frozen().is_empty());
    assert_eq!(
        s.reader.owned().ranges(),
        vec![SlotRange::new(8192, SLOT_COUNT - 1)]
    );
    // Writes to the released slots are now refused.
    let k = expect[0];
    assert_eq!(
        s.writes(2, vec![put(k, "v")]).await,
        vec![WriteOutcome::NotOwned]
    );
}

#[tokio::test]
async fn export_is_bounded_by_bytes_and_scan_by_owned_slots() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    s.own_all().await;
    s.writes(
        1,
        vec![
            put("p1", "0123456789"),
            put("p2", "0123456789"),
            put("q", "x"),
        ],
    )
    .await;
    let everything = SlotSet::from_ranges(&all());
    // 12 bytes per entry: the second crosses 20 and ends the page.
    let (page, next) = s.reader.export(&everything, None, 100, 20).unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(next, Some(b("p2")));
    let (page, next) = s.reader.export(&everything, Some(b"p2"), 100, 20).unwrap();
    assert_eq!((page.len(), next), (1, None));
    // Scan: prefix, paging, only owned slots.
    let (page, more) = s.reader.scan(b"p", None, 1).unwrap();
    assert_eq!((page[0].key.clone(), more), (b("p1"), true));
    let (page, more) = s.reader.scan(b"p", Some(b"p1"), 1).unwrap();
    assert_eq!((page[0].key.clone(), more), (b("p2"), false));
    s.apply(Proposal::Release {
        move_id: 1,
        slots: only(slot_of("p1")),
    })
    .await;
    let (page, _) = s.reader.scan(b"p", None, 10).unwrap();
    assert!(page.iter().all(|e| e.key != b("p1")));
}

#[tokio::test]
async fn a_meta_proposal_on_a_shard_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    let out = s
        .apply(Proposal::Meta {
            json: b"{}".to_vec(),
        })
        .await;
    assert_eq!(out, Outcome::Done);
    assert_eq!(s.reader.last_applied_index(), 1);
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (applied, membership, dump) = {
        let mut s = Shard::open(dir.path());
        let mut entries = vec![
            Entry {
                log_id: lid(1),
                payload: EntryPayload::Membership(openraft::Membership::new(
                    vec![[1u64, 2, 3].into_iter().collect()],
                    None,
                )),
            },
            ent(2, Proposal::Own { slots: all() }),
            ent(
                3,
                Proposal::Writes {
                    at_ms: 5,
                    writes: vec![with_session(4, 4, put("k", "v")), put("j", "w")],
                },
            ),
        ];
        s.log.save_vote(&Vote::new(3, 2)).await.unwrap();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut s.log, entries.clone())
            .await
            .unwrap();
        s.sm.apply(entries.drain(..)).await.unwrap();
        s.next = 4;
        s.writes(6, vec![del("j")]).await;
        let (applied, membership) = s.sm.applied_state().await.unwrap();
        // Made durable as the node would before a clean stop.
        s.db.flush().unwrap();
        (applied, membership, s.dump())
    };
    let mut s = Shard::open(dir.path());
    assert_eq!(s.sm.applied_state().await.unwrap(), (applied, membership));
    assert_eq!(applied, Some(lid(4)));
    assert_eq!(s.dump(), dump);
    assert_eq!(s.reader.key_count(), 1);
    assert_eq!(s.reader.last_applied_index(), 4);
    assert_eq!(s.reader.owned().len(), u32::from(SLOT_COUNT));
    assert_eq!(s.log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    let logged = s.log.try_get_log_entries(0..).await.unwrap();
    assert_eq!(
        logged.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    // The counter continues (k was 1, j 2, its delete 3) and the session still answers.
    let out = s
        .writes(
            7,
            vec![with_session(4, 4, put("k", "again")), put("z", "z")],
        )
        .await;
    assert_eq!(out, vec![written(1), written(4)]);
}

/// Every kind of change to the keyspace, each after the keys it touches were read (so cached):
/// the next read sees the change.
#[tokio::test]
async fn the_read_cache_never_serves_a_record_a_change_replaced() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut s = Shard::open(d1.path());
    s.own_all().await;
    s.writes(1, vec![put("a", "1"), put("b", "1"), put("c", "1")])
        .await;
    let read_all = |s: &Shard| [s.get("a"), s.get("b"), s.get("c")];
    assert_eq!(
        read_all(&s),
        [
            Some((1, "1".into())),
            Some((2, "1".into())),
            Some((3, "1".into()))
        ]
    );
    // A write and a delete in one batch; a CAS that loses changes nothing.
    s.writes(
        2,
        vec![
            put("a", "2"),
            del("b"),
            Write {
                session: None,
                op: WriteOp::Cas {
                    key: b("c"),
                    expect_version: 99,
                    value: b("lost"),
                },
            },
        ],
    )
    .await;
    assert_eq!(
        read_all(&s),
        [Some((4, "2".into())), None, Some((3, "1".into()))]
    );
    // An import above the current version replaces it.
    s.apply(Proposal::Import {
        move_id: 1,
        entries: vec![Imported {
            key: b("c"),
            version: 100,
            value: b("imported"),
        }],
    })
    .await;
    assert_eq!(s.get("c"), Some((100, "imported".into())));
    // A release deletes the released slot's keys.
    let gone = only(slot_of("c"));
    s.apply(Proposal::Freeze {
        move_id: 2,
        slots: gone.clone(),
    })
    .await;
    assert_eq!(s.get("c"), Some((100, "imported".into())));
    s.apply(Proposal::Release {
        move_id: 2,
        slots: gone,
    })
    .await;
    assert_eq!(s.get("c"), None);
    // A snapshot install replaces everything, cached or not.
    let mut other = Shard::open(d2.path());
    other.own_all().await;
    other.writes(1, vec![put("a", "from-snapshot")]).await;
    let snap = other
        .sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(s.get("a"), Some((4, "2".into())));
    install(&mut s, &snap).await;
    assert_eq!(s.get("a"), Some((1, "from-snapshot".into())));
    assert_eq!(s.get("b"), None);
}

// ---------------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------------

async fn install(to: &mut Shard, snap: &Snapshot<TypeConfig>) {
    let mut data = to.sm.begin_receiving_snapshot().await.unwrap();
    *data = Cursor::new(snap.snapshot.get_ref().clone());
    to.sm.install_snapshot(&snap.meta, data).await.unwrap();
}

#[tokio::test]
async fn a_snapshot_carries_the_whole_state_to_another_replica() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Shard::open(d1.path());
    a.own_all().await;
    a.writes(
        10,
        vec![
            put("a", "1"),
            with_session(3, 1, put("b", "2")),
            put("c", "3"),
        ],
    )
    .await;
    a.apply(Proposal::Freeze {
        move_id: 2,
        slots: only(slot_of("c")),
    })
    .await;
    let snap =
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    assert_eq!(snap.meta.last_log_id, Some(lid(3)));
    let current = a.sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);

    let mut f = Shard::open(d2.path());
    // Something to be replaced.
    f.own_all().await;
    f.writes(1, vec![put("stale", "x")]).await;
    install(&mut f, &snap).await;
    assert_eq!(f.dump(), a.dump());
    assert_eq!(f.reader.owned(), a.reader.owned());
    assert_eq!(f.reader.frozen(), a.reader.frozen());
    assert_eq!(f.reader.key_count(), 3);
    assert_eq!(f.reader.last_applied_index(), 3);
    assert_eq!(
        f.sm.applied_state().await.unwrap(),
        a.sm.applied_state().await.unwrap()
    );
    assert_eq!(
        f.sm.get_current_snapshot().await.unwrap().unwrap().meta,
        snap.meta
    );
    // Sessions and the counter came along: both replicas decide the next batch alike.
    f.next = 4;
    a.next = 4;
    let batch = vec![
        with_session(3, 1, put("b", "retry")),
        put("d", "4"),
        put("c", "frozen"),
    ];
    let (oa, of) = (a.writes(11, batch.clone()).await, f.writes(11, batch).await);
    assert_eq!(oa, vec![written(2), written(4), WriteOutcome::Frozen]);
    assert_eq!(of, oa);

    // After a restart the installed generation is the one read, and the old one is gone.
    drop(f);
    let f = Shard::open(d2.path());
    assert_eq!(f.dump(), a.dump());
    assert_eq!(f.get("stale"), None);
    let names: Vec<String> =
        f.db.tree_names()
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .filter(|n| n.starts_with("ks/"))
            .collect();
    assert_eq!(names, vec!["ks/shard-1/g1".to_string()]);
}

#[tokio::test]
async fn a_snapshot_built_while_entries_apply_matches_its_applied_state() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Shard::open(d1.path());
    a.own_all().await;
    a.writes(1, vec![put("k", "before")]).await;
    let expected = a.dump();
    let mut builder = a.sm.get_snapshot_builder().await;
    // openraft keeps applying while the builder runs.
    a.writes(2, vec![put("k", "after"), put("more", "x")]).await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id, Some(lid(2)));
    let mut f = Shard::open(d2.path());
    install(&mut f, &snap).await;
    assert_eq!(f.dump(), expected);
    assert_eq!(f.sm.applied_state().await.unwrap().0, Some(lid(2)));
}

#[tokio::test]
async fn a_malformed_snapshot_is_refused_and_changes_nothing() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Shard::open(d1.path());
    a.own_all().await;
    a.writes(1, vec![put("k", "v")]).await;
    let snap =
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    let mut f = Shard::open(d2.path());
    f.own_all().await;
    f.writes(1, vec![put("mine", "v")]).await;
    let before = (f.dump(), f.sm.applied_state().await.unwrap());
    let mut data = snap.snapshot.get_ref().clone();
    data.truncate(data.len() - 1); // drops the End marker
    for bad in [data, vec![99, 1, 2], Vec::new()] {
        let err =
            f.sm.install_snapshot(&snap.meta, Box::new(Cursor::new(bad)))
                .await;
        assert!(err.is_err());
        assert_eq!((f.dump(), f.sm.applied_state().await.unwrap()), before);
    }
    // No stray generation is left behind.
    assert!(!f
        .db
        .tree_names()
        .iter()
        .any(|n| n.starts_with(b"ks/shard-1/g")));
}

#[tokio::test]
async fn stray_trees_of_an_interrupted_install_are_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = Shard::open(dir.path());
        s.own_all().await;
        s.writes(1, vec![put("k", "v")]).await;
        // As if a crash struck while an install was writing generation 1.
        s.db.open_tree("ks/shard-1/g1")
            .unwrap()
            .insert(b"half", &[0u8; 9][..])
            .unwrap();
        s.db.flush().unwrap();
    }
    let s = Shard::open(dir.path());
    assert_eq!(s.get("k"), Some((1, "v".into())));
    assert_eq!(s.get("half"), None);
    assert!(!s.db.tree_names().iter().any(|n| &n[..] == b"ks/shard-1/g1"));
}

// ---------------------------------------------------------------------------------------------
// Log store
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_corrupt_log_entry_is_a_storage_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Shard::open(dir.path());
    let entries: Vec<_> = (1..=3)
        .map(|i| ent(i, Proposal::Own { slots: all() }))
        .collect();
    openraft::storage::RaftLogStorageExt::blocking_append(&mut s.log, entries)
        .await
        .unwrap();
    let tree = s.db.open_tree("raft/1/log").unwrap();
    tree.insert(2u64.to_be_bytes(), &[0xff, 0xff, 0xff][..])
        .unwrap();
    assert!(s.log.try_get_log_entries(0..).await.is_err());
    assert!(s.log.try_get_log_entries(3..4).await.is_ok());
    // An entry stored under another index than its own is corrupt too.
    let moved = tree.get(3u64.to_be_bytes()).unwrap().unwrap();
    tree.insert(3u64.to_be_bytes(), &b"x"[..]).unwrap();
    tree.insert(9u64.to_be_bytes(), moved).unwrap();
    assert!(s.log.get_log_state().await.is_err());
    let err = s.log.try_get_log_entries(9..10).await.unwrap_err();
    assert!(err.to_string().contains("index"), "{err}");
}

#[tokio::test]
async fn destroy_shard_drops_every_tree_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path());
    {
        let flusher = Flusher::new(db.clone());
        let (mut log, mut sm, _r) = open_shard(&db, 4, flusher.clone(), None, None).unwrap();
        let (_l2, _s2, _r2) = open_shard(&db, 44, flusher, None, None).unwrap();
        log.save_vote(&Vote::new(1, 1)).await.unwrap();
        sm.apply(vec![ent(1, Proposal::Own { slots: all() })])
            .await
            .unwrap();
    }
    destroy_shard(&db, 4).unwrap();
    let names: Vec<String> = db
        .tree_names()
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("/4/") || n.ends_with("/4") || n.ends_with("-4")),
        "{names:?}"
    );
    // Shard 44's trees are untouched.
    assert!(names.iter().any(|n| n == "sm/44"), "{names:?}");
    let (_l, mut sm, _r) = open_shard(&db, 4, Flusher::new(db.clone()), None, None).unwrap();
    assert_eq!(sm.applied_state().await.unwrap().0, None);
}

// ---------------------------------------------------------------------------------------------
// Metadata machine
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_meta_machine_applies_persists_publishes_and_snapshots() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let snap = {
        let db = open_db(d1.path());
        let (_log, mut sm, mut rx) = open_meta::<Counter>(&db, Flusher::new(db.clone())).unwrap();
        let out = sm
            .apply(vec![
                ent(
                    1,
                    Proposal::Meta {
                        json: b"{\"a\":1}".to_vec(),
                    },
                ),
                ent(2, Proposal::Own { slots: all() }),
                ent(
                    3,
                    Proposal::Meta {
                        json: b"{\"b\":2}".to_vec(),
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(
            out,
            vec![
                Outcome::Meta(b"1".to_vec()),
                Outcome::Done,
                Outcome::Meta(b"2".to_vec())
            ]
        );
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            **rx.borrow_and_update(),
            Counter {
                n: 2,
                last: b"{\"b\":2}".to_vec()
            }
        );
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    // Restart: the state and the snapshot are still there.
    {
        let db = open_db(d1.path());
        let (_log, mut sm, rx) = open_meta::<Counter>(&db, Flusher::new(db.clone())).unwrap();
        assert_eq!(rx.borrow().n, 2);
        assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(3)));
        assert_eq!(
            sm.get_current_snapshot().await.unwrap().unwrap().meta,
            snap.meta
        );
    }
    // Install on another node.
    let db = open_db(d2.path());
    let (_log, mut sm, rx) = open_meta::<Counter>(&db, Flusher::new(db.clone())).unwrap();
    assert_eq!(rx.borrow().n, 0);
    sm.install_snapshot(
        &snap.meta,
        Box::new(Cursor::new(snap.snapshot.get_ref().clone())),
    )
    .await
    .unwrap();
    assert_eq!(rx.borrow().n, 2);
    assert_eq!(sm.applied_state().await.unwrap().0, Some(lid(3)));
    let out = sm
        .apply(vec![ent(
            4,
            Proposal::Meta {
                json: b"{}".to_vec(),
            },
        )])
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Meta(b"3".to_vec())]);
}
