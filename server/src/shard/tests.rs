//! In-process tests of a shard over both real engines: ownership, the order and numbering of
//! writes, CAS, the slot-move fence and imports.

use std::sync::Arc;

use bytes::Bytes;
use skv_proto::cluster::{hash_slot, SlotRange, SlotSet, SLOT_COUNT};
use skv_proto::{ErrorCode, ResponseBody};

use super::*;
use crate::storage::{MemoryStorage, SledStorage};

fn all_slots() -> SlotSet {
    SlotSet::from_ranges(&[SlotRange::new(0, SLOT_COUNT - 1)])
}

/// Every slot but `slot`.
fn all_but(slot: u16) -> SlotSet {
    let mut set = SlotSet::default();
    for s in (0..SLOT_COUNT).filter(|s| *s != slot) {
        set.insert(s);
    }
    set
}

fn shard_on(storage: &dyn Storage, id: u32) -> Shard {
    let shard = Shard::open(id, storage, None).unwrap();
    shard.set_slots(all_slots());
    shard
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: b(key),
        value: b(value),
    }
}

fn cas(key: &str, expect_version: u64, value: &str) -> Command {
    Command::Cas {
        key: b(key),
        expect_version,
        value: b(value),
    }
}

fn get(key: &str) -> Command {
    Command::Get { key: b(key) }
}

fn del(key: &str) -> Command {
    Command::Delete { key: b(key) }
}

/// The answer of a command that must not wait (no group commit in these tests).
fn now(shard: &Shard, command: Command) -> ResponseBody {
    match shard.execute(command) {
        Execution::Ready(body) => body,
        other => panic!("expected an answer now, got {other:?}"),
    }
}

fn written(body: ResponseBody) -> u64 {
    match body {
        ResponseBody::Written { version } => version,
        other => panic!("expected Written, got {other:?}"),
    }
}

fn a_script() -> Vec<Command> {
    vec![
        put("a", "1"),
        put("b", "1"),
        cas("a", 1, "2"),
        cas("a", 1, "stale"),
        del("b"),
        del("never-there"),
        cas("b", 0, "re-created"),
        put("a", "3"),
    ]
}

fn engines() -> Vec<(&'static str, Box<dyn Storage>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sled = SledStorage::open(dir.path(), None).unwrap();
    vec![
        ("memory", Box::new(MemoryStorage::new()), None),
        ("sled", Box::new(sled), Some(dir)),
    ]
}

#[test]
fn versions_count_the_shards_writes_from_one_and_replicas_agree() {
    for (engine, storage, _dir) in engines() {
        // Two shards applying the same commands, as two replicas would.
        let one = shard_on(storage.as_ref(), 1);
        let two = shard_on(storage.as_ref(), 2);
        let answers_one: Vec<_> = a_script().into_iter().map(|c| now(&one, c)).collect();
        let answers_two: Vec<_> = a_script().into_iter().map(|c| now(&two, c)).collect();
        assert_eq!(answers_one, answers_two, "{engine}: replicas disagree");
        assert_eq!(
            answers_one,
            vec![
                ResponseBody::Written { version: 1 },
                ResponseBody::Written { version: 2 },
                ResponseBody::Written { version: 3 },
                ResponseBody::CasConflict { current: 3 },
                ResponseBody::Deleted { existed: true },
                // Deleting an absent key spends no version.
                ResponseBody::Deleted { existed: false },
                ResponseBody::Written { version: 5 },
                ResponseBody::Written { version: 6 },
            ],
            "{engine}"
        );
        for shard in [&one, &two] {
            assert_eq!(
                now(shard, get("a")),
                ResponseBody::Value {
                    version: 6,
                    value: b("3")
                }
            );
            assert_eq!(
                now(shard, get("b")),
                ResponseBody::Value {
                    version: 5,
                    value: b("re-created")
                }
            );
        }
    }
}

#[test]
fn no_aba_a_version_from_before_a_delete_never_wins_a_cas() {
    let storage = MemoryStorage::new();
    let shard = shard_on(&storage, 1);
    let mut stale = Vec::new();
    for round in 0..5 {
        let v = written(now(&shard, put("k", "x")));
        stale.push(v);
        assert_eq!(
            now(&shard, del("k")),
            ResponseBody::Deleted { existed: true }
        );
        let again = written(now(&shard, cas("k", 0, "again")));
        assert!(again > v, "round {round}: {again} not above {v}");
        for &old in &stale {
            assert_eq!(
                now(&shard, cas("k", old, "aba")),
                ResponseBody::CasConflict { current: again }
            );
        }
        stale.push(again);
        assert_eq!(
            now(&shard, del("k")),
            ResponseBody::Deleted { existed: true }
        );
    }
}

#[test]
fn the_sequence_continues_after_a_restart_without_a_jump() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = SledStorage::open(dir.path(), None).unwrap();
        let shard = shard_on(&storage, 1);
        assert_eq!(written(now(&shard, put("a", "1"))), 1);
        assert_eq!(written(now(&shard, put("a", "2"))), 2);
        storage.flush().unwrap();
    }
    let storage = loop {
        match SledStorage::open(dir.path(), None) {
            Err(StorageError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => break other.unwrap(),
        }
    };
    let shard = shard_on(&storage, 1);
    assert_eq!(written(now(&shard, put("a", "3"))), 3);
    // Another shard on the same node has its own sequence.
    assert_eq!(written(now(&shard_on(&storage, 2), put("a", "x"))), 1);
}

#[test]
fn concurrent_writers_get_distinct_increasing_versions() {
    let storage = MemoryStorage::new();
    let shard = Arc::new(shard_on(&storage, 1));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let shard = shard.clone();
            std::thread::spawn(move || {
                (0..250)
                    .map(|i| {
                        let key = if i % 2 == 0 {
                            "hot".to_owned()
                        } else {
                            format!("t{t}")
                        };
                        written(now(&shard, put(&key, "v")))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort_unstable();
    // Exactly 1..=1000: one sequence, no gaps, nothing handed out twice.
    assert_eq!(all, (1..=1000).collect::<Vec<u64>>());
    match now(&shard, get("hot")) {
        ResponseBody::Value { version, .. } => assert!(version >= 500),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_slot_it_does_not_own_is_not_served_and_not_written() {
    let storage = MemoryStorage::new();
    let shard = Shard::open(1, &storage, None).unwrap();
    let slot = hash_slot(b"k");
    shard.set_slots(all_but(slot));
    assert!(matches!(shard.execute(put("k", "x")), Execution::NotServed));
    assert!(matches!(shard.execute(get("k")), Execution::NotServed));
    shard.set_slots(all_slots());
    assert_eq!(
        now(&shard, get("k")),
        ResponseBody::NotFound,
        "the refused write must not have been applied"
    );
}

#[test]
fn the_last_version_refuses_further_writes_instead_of_wrapping() {
    let storage = MemoryStorage::new();
    // A key at the last version, as a long history (or a hostile import) would leave it.
    storage
        .keyspace(&keyspace_name(1))
        .unwrap()
        .put(b"k", u64::MAX, b"v")
        .unwrap();
    let receiver = Shard::open(1, &storage, None).unwrap();
    receiver.set_slots(all_slots());
    match now(&receiver, put("k", "next")) {
        ResponseBody::Error(e) => {
            assert_eq!(e.code, ErrorCode::Storage);
            assert!(e.message.contains("every version"), "{}", e.message);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        now(&receiver, get("k")),
        ResponseBody::Value {
            version: u64::MAX,
            value: b("v")
        }
    );
}

#[test]
fn scan_returns_owned_slots_only_with_a_frontier_when_more_remain() {
    let storage = MemoryStorage::new();
    let shard = shard_on(&storage, 1);
    for k in ["a", "b", "c", "d"] {
        now(&shard, put(k, k));
    }
    shard.set_slots(all_but(hash_slot(b"b")));
    let page = shard.scan(b"", None, 3, usize::MAX, false).unwrap();
    let keys: Vec<_> = page.entries.iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, vec![b("a"), b("c")]);
    assert_eq!(page.frontier, Some(b("c")));
    let rest = shard.scan(b"", Some(b"c"), 3, usize::MAX, false).unwrap();
    assert_eq!(rest.entries.len(), 1);
    assert_eq!(rest.frontier, None);
}
