//! Model-based test of both storage engines against a `BTreeMap` per keyspace, in the style of
//! sled's own tests: random sequences of operations on two keyspaces, including imports with
//! versions below and above the keyspace's applied version and restarts of the sled engine,
//! must leave the engine and the model in the same state, and the applied version must never
//! fall behind a write that survived a restart.
//!
//! Versions are the caller's (the shard's): this test plays the shard, numbering each fresh
//! write `applied + 1` and importing keys with whatever version they had elsewhere.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use skv_server::storage::{
    Entry, Keyspace, MemoryStorage, ScanPage, SledStorage, Storage, StorageError,
};
use tempfile::TempDir;

/// The two keyspaces every case writes to.
const SPACES: [&str; 2] = ["shard-1", "shard-2"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>, Vec<u8>),
    Get(usize, Vec<u8>),
    Delete(usize, Vec<u8>),
    /// A key copied in from another shard: `offset` decides its version relative to the
    /// keyspace's applied version (below, equal or above).
    Import(usize, Vec<u8>, Vec<u8>, i64),
    Scan {
        space: usize,
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

fn space() -> impl Strategy<Value = usize> {
    0..SPACES.len()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (space(), key(), value()).prop_map(|(s, k, v)| Op::Put(s, k, v)),
        3 => (space(), key()).prop_map(|(s, k)| Op::Get(s, k)),
        3 => (space(), key()).prop_map(|(s, k)| Op::Delete(s, k)),
        3 => (space(), key(), value(), -5i64..20)
            .prop_map(|(s, k, v, o)| Op::Import(s, k, v, o)),
        3 => (
            space(),
            prop::collection::vec(prop::sample::select(vec![0x00u8, b'a', 0xff]), 0..=2),
            prop::option::of(key()),
            0usize..5,
        )
            .prop_map(|(space, prefix, after, limit)| Op::Scan { space, prefix, after, limit }),
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

    fn spaces(&self) -> Vec<Arc<dyn Keyspace>> {
        SPACES
            .iter()
            .map(|name| self.storage().keyspace(name).unwrap())
            .collect()
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

/// The model of one keyspace: key -> (value, version), and the largest version written.
#[derive(Default, Clone)]
struct Model {
    map: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
    applied: u64,
}

impl Model {
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
            last: entries.last().map(|e| e.key.clone()),
            entries,
            more: matching.next().is_some(),
        }
    }

    /// Every entry of the keyspace must match the model, nothing else may exist, and the
    /// applied version must be the model's.
    fn check_all(&self, ks: &dyn Keyspace) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            ks.scan(b"", None, usize::MAX).unwrap(),
            self.scan(b"", None, usize::MAX)
        );
        for (k, (v, ver)) in &self.map {
            let got = ks.get(k).unwrap().expect("model key missing from engine");
            prop_assert_eq!(got.version, *ver);
            prop_assert_eq!(&got.value[..], &v[..]);
        }
        prop_assert_eq!(ks.applied(), self.applied);
        Ok(())
    }
}

fn run(mut engine: Engine, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut models = vec![Model::default(); SPACES.len()];
    let mut spaces = engine.spaces();
    for op in ops {
        match op {
            Op::Put(i, k, v) => {
                let version = models[i].applied + 1;
                spaces[i].put(&k, version, &v).unwrap();
                models[i].map.insert(k, (v, version));
                models[i].applied = version;
            }
            Op::Get(i, k) => {
                let got = spaces[i]
                    .get(&k)
                    .unwrap()
                    .map(|g| (g.value.to_vec(), g.version));
                prop_assert_eq!(got, models[i].map.get(&k).cloned());
            }
            Op::Delete(i, k) => {
                let version = models[i].applied + 1;
                let existed = spaces[i].delete(&k, version).unwrap();
                prop_assert_eq!(existed, models[i].map.remove(&k).is_some());
                models[i].applied = version;
            }
            Op::Import(i, k, v, offset) => {
                let version = (models[i].applied as i64 + offset).max(1) as u64;
                spaces[i].put(&k, version, &v).unwrap();
                models[i].map.insert(k, (v, version));
                models[i].applied = models[i].applied.max(version);
            }
            Op::Scan {
                space: i,
                prefix,
                after,
                limit,
            } => {
                let s = &spaces[i];
                let model = &models[i];
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
                drop(spaces);
                engine.reopen();
                spaces = engine.spaces();
                for (model, ks) in models.iter().zip(&spaces) {
                    model.check_all(ks.as_ref())?;
                }
            }
        }
    }
    // A final restart: everything flushed must come back, applied versions included.
    drop(spaces);
    engine.reopen();
    for (model, ks) in models.iter().zip(engine.spaces()) {
        model.check_all(ks.as_ref())?;
    }
    Ok(())
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
