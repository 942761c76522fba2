//! Model-based test of both storage engines against a `BTreeMap`, in the style of sled's own
//! tests: random sequences of operations, including restarts of the sled engine, must leave
//! the engine and the model in the same state, and every version an engine hands out must be
//! greater than every version it handed out before (node-wide, so per key too).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use skv_server::storage::{
    CasOutcome, Entry, MemoryStorage, ScanPage, SledStorage, Storage, StorageError,
};
use tempfile::TempDir;

/// How a wrong CAS expectation is chosen, resolved against the model when the op runs (a
/// strategy cannot know which versions will exist).
#[derive(Debug, Clone, Copy)]
enum Wrong {
    /// A version the key had before (falls back to `Future` when it has no history).
    Stale(usize),
    /// One above the current version: a version that does not exist yet.
    Future,
    /// 0, "must not exist", even though the key may exist (falls back to `Future` if not).
    Absent,
    /// Some version of another key.
    OtherKey(usize),
}

#[derive(Debug, Clone)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Get(Vec<u8>),
    Delete(Vec<u8>),
    /// CAS with the key's true current version (0 when absent): must write.
    CasRight(Vec<u8>, Vec<u8>),
    /// CAS with a version that is not the current one: must conflict and write nothing.
    CasWrong(Vec<u8>, Vec<u8>, Wrong),
    Scan {
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    },
    /// sled: flush, drop and reopen from the same directory. Memory: nothing.
    Reopen,
}

/// A small alphabet with the edge bytes, and short keys, so ops collide and prefixes and
/// `after` keys hit real entries.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0x00u8, b'a', b'b', 0xff]), 0..=3)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..6)
}

fn wrong() -> impl Strategy<Value = Wrong> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(|i| Wrong::Stale(i.index(usize::MAX))),
        Just(Wrong::Future),
        Just(Wrong::Absent),
        any::<prop::sample::Index>().prop_map(|i| Wrong::OtherKey(i.index(usize::MAX))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| Op::Put(k, v)),
        3 => key().prop_map(Op::Get),
        3 => key().prop_map(Op::Delete),
        4 => (key(), value()).prop_map(|(k, v)| Op::CasRight(k, v)),
        4 => (key(), value(), wrong()).prop_map(|(k, v, w)| Op::CasWrong(k, v, w)),
        3 => (
            prop::collection::vec(prop::sample::select(vec![0x00u8, b'a', 0xff]), 0..=2),
            prop::option::of(key()),
            0usize..5,
        )
            .prop_map(|(prefix, after, limit)| Op::Scan { prefix, after, limit }),
        1 => Just(Op::Reopen),
    ]
}

/// The engine under test, with what it needs to restart.
enum Engine {
    Memory(MemoryStorage),
    Sled {
        dir: TempDir,
        flush_every_ms: Option<u64>,
        db: Option<SledStorage>,
    },
}

impl Engine {
    fn sled(flush_every_ms: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = SledStorage::open(dir.path(), flush_every_ms).unwrap();
        Engine::Sled {
            dir,
            flush_every_ms,
            db: Some(db),
        }
    }

    fn storage(&self) -> &dyn Storage {
        match self {
            Engine::Memory(m) => m,
            Engine::Sled { db, .. } => db.as_ref().unwrap(),
        }
    }

    fn reopen(&mut self) {
        if let Engine::Sled {
            dir,
            flush_every_ms,
            db,
        } = self
        {
            db.as_ref().unwrap().flush().unwrap();
            drop(db.take());
            *db = Some(open_retrying(dir.path(), *flush_every_ms));
        }
    }
}

/// sled releases its directory lock when its background threads let go of the last internal
/// reference, which can be a moment after the handle is dropped.
fn open_retrying(path: &Path, flush_every_ms: Option<u64>) -> SledStorage {
    for _ in 0..200 {
        match SledStorage::open(path, flush_every_ms) {
            Err(StorageError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
            other => return other.unwrap(),
        }
    }
    panic!("data dir still locked after 2s");
}

/// The model: key -> (value, version), plus every version seen per key and overall.
#[derive(Default)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    history: HashMap<Vec<u8>, Vec<u64>>,
    max_version: u64,
}

impl Model {
    fn current(&self, key: &[u8]) -> u64 {
        self.map.get(key).map_or(0, |(_, v)| *v)
    }

    /// Records a write, checking its version is above everything handed out before.
    fn wrote(&mut self, key: &[u8], value: &[u8], version: u64) -> Result<(), TestCaseError> {
        prop_assert!(
            version > self.max_version,
            "version {} not above previous max {}",
            version,
            self.max_version
        );
        if let Some(last) = self.history.get(key).and_then(|h| h.last()) {
            prop_assert!(version > *last);
        }
        self.max_version = version;
        self.history.entry(key.to_vec()).or_default().push(version);
        self.map.insert(key.to_vec(), (value.to_vec(), version));
        Ok(())
    }

    fn wrong_version(&self, key: &[u8], wrong: Wrong) -> u64 {
        let current = self.current(key);
        let chosen = match wrong {
            Wrong::Stale(i) => {
                let stale: Vec<u64> = self
                    .history
                    .get(key)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|v| *v != current)
                    .collect();
                (!stale.is_empty()).then(|| stale[i % stale.len()])
            }
            Wrong::Future => None,
            Wrong::Absent => (current != 0).then_some(0),
            Wrong::OtherKey(i) => {
                let others: Vec<u64> = self
                    .history
                    .iter()
                    .filter(|(k, _)| k.as_slice() != key)
                    .flat_map(|(_, h)| h.iter().copied())
                    .collect();
                (!others.is_empty()).then(|| others[i % others.len()])
            }
        };
        chosen.unwrap_or(current + 1)
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> ScanPage {
        let mut matching = self
            .map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && after.is_none_or(|a| k.as_slice() > a))
            .map(|(k, (v, ver))| Entry {
                key: k.clone().into(),
                version: *ver,
                value: v.clone().into(),
            });
        let entries: Vec<Entry> = matching.by_ref().take(limit).collect();
        ScanPage {
            entries,
            more: matching.next().is_some(),
        }
    }

    /// Every entry of the engine must match the model, and nothing else may exist.
    fn check_all(&self, s: &dyn Storage) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            s.scan(b"", None, usize::MAX).unwrap(),
            self.scan(b"", None, usize::MAX)
        );
        for (k, (v, ver)) in &self.map {
            let got = s.get(k).unwrap().expect("model key missing from engine");
            prop_assert_eq!(got.version, *ver);
            prop_assert_eq!(&got.value[..], &v[..]);
        }
        Ok(())
    }
}

fn run(mut engine: Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for op in ops {
        let s = engine.storage();
        match op {
            Op::Put(k, v) => {
                let version = s.put(&k, &v).unwrap();
                model.wrote(&k, &v, version)?;
            }
            Op::Get(k) => {
                let got = s.get(&k).unwrap().map(|g| (g.value.to_vec(), g.version));
                prop_assert_eq!(got, model.map.get(&k).cloned());
            }
            Op::Delete(k) => {
                let existed = s.delete(&k).unwrap();
                prop_assert_eq!(existed, model.map.remove(&k).is_some());
            }
            Op::CasRight(k, v) => match s.cas(&k, model.current(&k), &v).unwrap() {
                CasOutcome::Written { version } => model.wrote(&k, &v, version)?,
                other => prop_assert!(false, "cas with the current version got {:?}", other),
            },
            Op::CasWrong(k, v, wrong) => {
                let expect = model.wrong_version(&k, wrong);
                prop_assert_ne!(expect, model.current(&k));
                prop_assert_eq!(
                    s.cas(&k, expect, &v).unwrap(),
                    CasOutcome::Conflict {
                        current: model.current(&k)
                    }
                );
            }
            Op::Scan {
                prefix,
                after,
                limit,
            } => {
                let got = s.scan(&prefix, after.as_deref(), limit).unwrap();
                prop_assert_eq!(&got, &model.scan(&prefix, after.as_deref(), limit));
                // Paging with `after` = last key visits exactly the model's prefix range.
                if limit > 0 {
                    let mut all = got.entries.clone();
                    let mut page = got;
                    while page.more {
                        let last = page.entries.last().unwrap().key.clone();
                        page = s.scan(&prefix, Some(&last), limit).unwrap();
                        // Each page must move forward, so a broken engine fails here instead
                        // of paging forever.
                        if let Some(first) = page.entries.first() {
                            prop_assert!(first.key > last, "page did not move past `after`");
                        }
                        prop_assert!(!page.entries.is_empty() || !page.more);
                        all.extend(page.entries.iter().cloned());
                    }
                    prop_assert_eq!(
                        all,
                        model.scan(&prefix, after.as_deref(), usize::MAX).entries
                    );
                }
            }
            Op::Reopen => {
                engine.reopen();
                model.check_all(engine.storage())?;
            }
        }
    }
    // A final restart: everything flushed must come back.
    engine.reopen();
    model.check_all(engine.storage())
}

proptest! {
    // Modest counts: each sled case opens a database and may restart it a few times, and the
    // suite must stay quick in debug builds on 2 cores.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn memory_engine_matches_model(ops in prop::collection::vec(op(), 1..64)) {
        run(Engine::Memory(MemoryStorage::new()), ops)?;
    }

    #[test]
    fn sled_engine_matches_model(
        background_flush in any::<bool>(),
        ops in prop::collection::vec(op(), 1..64),
    ) {
        run(Engine::sled(background_flush.then_some(500)), ops)?;
    }
}
