//! Storage cost: put and get of 100-byte values through the node's engines
//! ([`SledStorage`] in a tempdir, [`MemoryStorage`]), via one [`Keyspace`] as a shard uses it
//! (the shard numbers the writes; here a counter does).
//!
//! - `put/no_flush`: a put as in async durability mode (sled flushes on its own schedule; here
//!   never, so this is the in-memory cost of a sled write).
//! - `put+flush`: a put followed by [`Storage::flush`], i.e. sync durability with one writer
//!   and no group commit: every write pays a disk flush (fsync) on the tempdir's filesystem.
//! - `get`: a read of a present key.
//!
//! Keys cycle over [`KEYS`] pre-formatted names, so puts overwrite and the tree stays one size.

use std::path::Path;

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use skv_benches::{MEASUREMENT_TIME, SAMPLE_SIZE, WARM_UP_TIME};
use skv_server::storage::{Keyspace, MemoryStorage, SledStorage, Storage};

const KEYS: usize = 10_000;
const VALUE_LEN: usize = 100;

fn keys() -> Vec<Vec<u8>> {
    (0..KEYS)
        .map(|i| format!("users/u{i:05}/profile").into_bytes())
        .collect()
}

fn bench_engine(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    engine: &str,
    storage: &dyn Storage,
) {
    let keys = keys();
    let value = [0x5au8; VALUE_LEN];
    let ks: std::sync::Arc<dyn Keyspace> = storage.keyspace("shard-1").expect("keyspace");
    let mut version = 0u64;
    let mut next_version = move || {
        version += 1;
        version
    };
    for key in &keys {
        ks.put(key, next_version(), &value).expect("put");
    }
    storage.flush().expect("flush");

    let mut i = 0usize;
    let mut next = || {
        i = (i + 1) % KEYS;
        &keys[i]
    };
    group.bench_function(format!("{engine}/put/no_flush"), |b| {
        b.iter(|| ks.put(next(), next_version(), &value).expect("put"))
    });
    group.bench_function(format!("{engine}/put+flush"), |b| {
        b.iter(|| {
            ks.put(next(), next_version(), &value).expect("put");
            storage.flush().expect("flush");
        })
    });
    group.bench_function(format!("{engine}/get"), |b| {
        b.iter(|| ks.get(next()).expect("get").expect("the key was written"))
    });
}

fn storage(c: &mut Criterion) {
    let mut group = c.benchmark_group("storage");
    group.throughput(Throughput::Bytes(VALUE_LEN as u64));

    let dir = tempfile::tempdir().expect("tempdir");
    let path: &Path = &dir.path().join("db");
    println!("sled data dir: {}", path.display());
    let sled = SledStorage::open(path, None).expect("open sled");
    bench_engine(&mut group, "sled", &sled);
    drop(sled);

    let memory = MemoryStorage::new();
    bench_engine(&mut group, "memory", &memory);
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(MEASUREMENT_TIME)
        .warm_up_time(WARM_UP_TIME)
        .sample_size(SAMPLE_SIZE);
    targets = storage
}
criterion_main!(benches);
