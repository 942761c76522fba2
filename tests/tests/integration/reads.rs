//! Reads through the node's read cache, against a real node: what a write acknowledged is what
//! every read that starts after it sees, however the cache fills, evicts and is invalidated.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use skv_client::Connection;
use skv_tests::{Node, Pki};

/// Keys the writer rewrites over and over.
const HOT: usize = 4;
/// Writes in all.
const WRITES: u64 = 1500;

/// One writer rewrites a few hot keys (each value its sequence number) while readers read them and a churn of cold keys through
/// a cache far smaller than what is read (so it keeps halving). Each read of a hot key must
/// return at least the version of the last write to that key acknowledged before the read
/// began, and a reader never sees a key's version go down.
#[test]
fn a_read_never_misses_a_write_acknowledged_before_it_began() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let data = pki.dir().join("data");
    let node = Node::start_tls(&pki, &data, &["--read-cache-bytes", "32768"])?;
    let addr = node.addr.clone();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let setup = Connection::connect(&pki.alice(&addr)).await?;
        for i in 0..200 {
            setup.put(format!("cold/{i}"), vec![b'c'; 300]).await?;
        }
        // The newest acknowledged version of each hot key.
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..HOT).map(|_| AtomicU64::new(0)).collect());
        let done = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for r in 0..3 {
            let (acked, done, opts) = (acked.clone(), done.clone(), pki.alice(&addr));
            readers.push(tokio::spawn(async move {
                let conn = Connection::connect(&opts).await?;
                let mut seen: HashMap<usize, (u64, u64)> = HashMap::new();
                let mut reads = 0u64;
                let mut i = r;
                while !done.load(Ordering::SeqCst) {
                    i += 1;
                    let hot = i % HOT;
                    let floor = acked[hot].load(Ordering::SeqCst);
                    let got = conn.get(format!("hot/{hot}")).await?;
                    let version = got.as_ref().map_or(0, |(v, _)| *v);
                    anyhow::ensure!(
                        version >= floor,
                        "hot/{hot}: read version {version} after version {floor} was acknowledged"
                    );
                    // Values are the writer's sequence numbers: a newer version carries a
                    // later one, the same version the same one.
                    let value = match &got {
                        Some((_, value)) => u64::from_be_bytes(value[..].try_into()?),
                        None => 0,
                    };
                    let (before, before_value) =
                        seen.insert(hot, (version, value)).unwrap_or((0, 0));
                    anyhow::ensure!(
                        version >= before,
                        "hot/{hot}: version went back from {before} to {version}"
                    );
                    anyhow::ensure!(
                        (version == before) == (value == before_value) && value >= before_value,
                        "hot/{hot}: version {version} came with value {value}, after version \
                         {before} with {before_value}"
                    );
                    // A cold read between hot ones, to keep the small cache churning.
                    anyhow::ensure!(conn.get(format!("cold/{}", i % 200)).await?.is_some());
                    reads += 1;
                }
                anyhow::Ok(reads)
            }));
        }
        let writer = Connection::connect(&pki.alice(&addr)).await?;
        let mut last = HashMap::new();
        for w in 1..=WRITES {
            let hot = (w as usize) % HOT;
            let version = writer
                .put(format!("hot/{hot}"), w.to_be_bytes().to_vec())
                .await?;
            last.insert(hot, (version, w));
            acked[hot].fetch_max(version, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        let mut total = 0;
        for r in readers {
            total += r.await??;
        }
        assert!(total > 100, "readers made only {total} reads");
        for (hot, (version, w)) in last {
            let (v, value) = writer.get(format!("hot/{hot}")).await?.expect("hot key");
            assert_eq!(
                (v, &value[..]),
                (version, &w.to_be_bytes()[..]),
                "hot/{hot} at the end"
            );
        }
        anyhow::Ok(())
    })
}
