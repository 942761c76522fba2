//! Group commit: one disk flush shared by every writer waiting for durability at that moment.
//!
//! A flush (fsync) costs the same whether it covers one write or a thousand, so in sync
//! durability mode the node does not flush per write. A writer applies its write to storage,
//! then calls [`GroupCommit::wait_durable`], which takes a ticket from a sequence and wakes the
//! single background flusher. The flusher reads how far the sequence has got, flushes once,
//! and publishes that point as durable; every writer whose ticket it covers is released
//! together. Writers that arrive while a flush runs are covered by the next one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{Storage, StorageError};

/// Shares flushes between concurrent durable writers. Cheap to clone; all clones use the same
/// background flusher.
///
/// The flusher stops after a final flush when [`GroupCommit::shutdown`] is called or when the
/// last clone is dropped; until it has stopped it keeps the storage open.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    handle: Arc<Handle>,
}

/// State shared by the handles and the flusher task.
#[derive(Debug, Default)]
struct Shared {
    /// Tickets handed out so far: a writer's ticket is the value after its increment, so
    /// "flushed after reading `written` = n" covers every ticket <= n.
    written: AtomicU64,
    /// Wakes the flusher. `notify_one` stores a permit when the flusher is busy, so a writer
    /// arriving mid-flush is never missed, and many such writers collapse into one next round.
    wake: Notify,
    /// Flushes attempted, failed ones included.
    flushes: AtomicU64,
    /// Set when the flusher should do a final flush and exit.
    closing: AtomicBool,
}

/// What the flusher publishes after each round.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every ticket <= this is on disk.
    durable: u64,
    /// The target of the latest failed round: tickets in `(durable, failed_upto]` were
    /// covered by a flush that failed.
    failed_upto: u64,
    /// That round's error.
    error: Option<Arc<StorageError>>,
}

/// The part of a [`GroupCommit`] whose drop stops the flusher (dropped with the last clone).
#[derive(Debug)]
struct Handle {
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl GroupCommit {
    /// Spawns the flusher for `storage` on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Panics when called outside a tokio runtime.
    pub fn start(storage: Arc<dyn Storage>) -> GroupCommit {
        let shared = Arc::new(Shared::default());
        let (tx, progress) = watch::channel(Progress::default());
        let task = tokio::spawn(run_flusher(storage, Arc::clone(&shared), tx));
        GroupCommit {
            handle: Arc::new(Handle {
                shared,
                progress,
                task: Mutex::new(Some(task)),
            }),
        }
    }

    /// Waits until every write this task completed before the call is durable on disk.
    ///
    /// Call it after the write returned and before acknowledging the write to the client.
    /// Fails with [`StorageError::FlushFailed`] when the flush covering this call failed (a
    /// later call starts a new round that retries), or [`StorageError::Closed`] when the
    /// flusher has stopped.
    pub async fn wait_durable(&self) -> Result<(), StorageError> {
        let shared = &self.handle.shared;
        // AcqRel: the release half publishes our completed write to the flusher, which loads
        // `written` with Acquire before it flushes, so a flush that covers our ticket also
        // covers our write.
        let ticket = shared.written.fetch_add(1, Ordering::AcqRel) + 1;
        shared.wake.notify_one();

        let mut progress = self.handle.progress.clone();
        loop {
            {
                let p = progress.borrow_and_update();
                // Durable wins over failed: a later successful flush covers our write even if
                // the round that first tried to was the one that failed.
                if p.durable >= ticket {
                    return Ok(());
                }
                if p.failed_upto >= ticket {
                    let source = p
                        .error
                        .clone()
                        .unwrap_or_else(|| Arc::new(StorageError::Closed));
                    return Err(StorageError::FlushFailed { source });
                }
            }
            if progress.changed().await.is_err() {
                // The flusher is gone; it may have published our round just before exiting.
                let p = progress.borrow();
                return if p.durable >= ticket {
                    Ok(())
                } else {
                    Err(StorageError::Closed)
                };
            }
        }
    }

    /// Number of flushes performed so far, failed ones included (for tests and metrics).
    pub fn flushes(&self) -> u64 {
        self.handle.shared.flushes.load(Ordering::Relaxed)
    }

    /// Stops the flusher after a final flush of everything written so far, and waits for it to
    /// exit so that it no longer holds the storage. Other clones' later `wait_durable` calls
    /// fail with [`StorageError::Closed`].
    pub async fn shutdown(self) {
        let shared = &self.handle.shared;
        shared.closing.store(true, Ordering::Release);
        shared.wake.notify_one();
        let task = self
            .handle
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // A JoinError means the flusher panicked (already logged) or the runtime is
            // shutting down; either way it has stopped, which is all we wait for.
            let _ = task.await;
        }
    }
}

/// The flusher task: one flush per round, covering every ticket handed out before the round
/// started.
async fn run_flusher(storage: Arc<dyn Storage>, shared: Arc<Shared>, tx: watch::Sender<Progress>) {
    let mut durable = 0u64;
    loop {
        shared.wake.notified().await;
        let closing = shared.closing.load(Ordering::Acquire);
        let target = shared.written.load(Ordering::Acquire);
        // Writers that arrived during the previous flush left a permit even if that flush
        // already covered them; skip the empty round. On close the final flush always runs,
        // so writes done without waiting (async-mode callers) still reach disk.
        if target > durable || closing {
            let flushing = Arc::clone(&storage);
            let started = std::time::Instant::now();
            let result = tokio::task::spawn_blocking(move || flushing.flush()).await;
            if let Some(m) = crate::metrics::get() {
                m.flush("group_commit", started.elapsed());
            }
            shared.flushes.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(Ok(())) => {
                    durable = target;
                    tx.send_modify(|p| p.durable = target);
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "group-commit flush failed");
                    let error = Arc::new(e);
                    tx.send_modify(|p| {
                        p.failed_upto = target;
                        p.error = Some(error);
                    });
                }
                Err(join) => {
                    // A panicking flush means the engine is broken; retrying would only hide
                    // it. A cancelled one means the runtime is going away. Either way, stopping
                    // drops `tx`, so every waiter gets `Closed`.
                    if join.is_panic() {
                        tracing::error!(error = %join, "group-commit flush panicked; flusher stopped");
                    }
                    return;
                }
            }
        }
        if closing {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::storage::{Keyspace, MemoryStorage, SledStorage, Versioned};

    fn reopen(path: &Path) -> SledStorage {
        for _ in 0..200 {
            match SledStorage::open(path, None) {
                Err(StorageError::Locked { .. }) => std::thread::sleep(Duration::from_millis(10)),
                other => return other.unwrap(),
            }
        }
        panic!("data dir still locked after 2s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_survive_reopen() {
        const WRITERS: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(SledStorage::open(dir.path(), None).unwrap());
        let gc = GroupCommit::start(Arc::clone(&storage));

        let started = Instant::now();
        let tasks: Vec<_> = (0..WRITERS)
            .map(|i| {
                let ks = storage.keyspace("shard-1").unwrap();
                let gc = gc.clone();
                tokio::spawn(async move {
                    let key = format!("key/{i:02}");
                    let version = i as u64 + 1;
                    ks.put(key.as_bytes(), version, &[i as u8; 16])?;
                    gc.wait_durable().await?;
                    Ok::<_, StorageError>((key, version))
                })
            })
            .collect();
        let mut written = Vec::new();
        for t in tasks {
            written.push(t.await.unwrap().unwrap());
        }
        let elapsed = started.elapsed();
        let flushes = gc.flushes();
        assert!(flushes >= 1);
        assert!(
            flushes < WRITERS as u64,
            "{flushes} flushes for {WRITERS} writers"
        );
        eprintln!("{WRITERS} durable writers: {flushes} flushes in {elapsed:?}");

        // Drop every handle so the directory unlocks, then check the writes are on disk.
        gc.shutdown().await;
        drop(storage);
        let reopened = reopen(dir.path()).keyspace("shard-1").unwrap();
        for (i, (key, version)) in written.iter().enumerate() {
            assert_eq!(
                reopened.get(key.as_bytes()).unwrap(),
                Some(Versioned {
                    version: *version,
                    value: bytes::Bytes::from(vec![i as u8; 16]),
                })
            );
        }
    }

    /// A storage whose flush fails on demand, to test error delivery and retry.
    #[derive(Debug, Default)]
    struct FlakyFlush {
        inner: MemoryStorage,
        failures_left: AtomicUsize,
        /// Held by a test to keep a flush in progress; each flush passes through it.
        gate: tokio::sync::Mutex<()>,
        /// Flushes that have started.
        started: AtomicUsize,
    }

    impl Storage for FlakyFlush {
        fn keyspace(&self, name: &str) -> Result<Arc<dyn Keyspace>, StorageError> {
            self.inner.keyspace(name)
        }
        fn flush(&self) -> Result<(), StorageError> {
            self.started.fetch_add(1, Ordering::AcqRel);
            // Runs on a spawn_blocking thread, where blocking on the gate is allowed.
            drop(self.gate.blocking_lock());
            let failing = self
                .failures_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                Err(StorageError::Corrupt { key_len: 0 })
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn failed_flush_errors_its_round_and_next_round_retries() {
        let storage = Arc::new(FlakyFlush {
            failures_left: AtomicUsize::new(1),
            ..Default::default()
        });
        let gc = GroupCommit::start(storage);
        match gc.wait_durable().await {
            Err(StorageError::FlushFailed { source }) => {
                assert!(matches!(*source, StorageError::Corrupt { .. }))
            }
            other => panic!("expected FlushFailed, got {other:?}"),
        }
        gc.wait_durable().await.unwrap();
        assert_eq!(gc.flushes(), 2);
        gc.shutdown().await;
    }

    /// Polls `cond` until it holds (these tests gate on background progress, not on time).
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_arriving_during_a_flush_share_the_next_one() {
        let storage = Arc::new(FlakyFlush::default());
        let gc = GroupCommit::start(Arc::clone(&storage) as Arc<dyn Storage>);
        // Hold the first flush in progress while more writers arrive.
        let gate = storage.gate.lock().await;
        let first = {
            let gc = gc.clone();
            tokio::spawn(async move { gc.wait_durable().await })
        };
        until("the first flush started", || {
            storage.started.load(Ordering::Acquire) == 1
        })
        .await;
        let rest: Vec<_> = (0..20)
            .map(|_| {
                let gc = gc.clone();
                tokio::spawn(async move { gc.wait_durable().await })
            })
            .collect();
        until("all writers took tickets", || {
            gc.handle.shared.written.load(Ordering::Acquire) == 21
        })
        .await;
        drop(gate);
        first.await.unwrap().unwrap();
        for t in rest {
            t.await.unwrap().unwrap();
        }
        // One flush for the first writer, one shared by the twenty that arrived during it.
        assert_eq!(gc.flushes(), 2);
        gc.shutdown().await;
    }

    #[tokio::test]
    async fn waiting_after_shutdown_is_closed() {
        let gc = GroupCommit::start(Arc::new(MemoryStorage::new()));
        let other = gc.clone();
        gc.wait_durable().await.unwrap();
        gc.shutdown().await;
        assert!(matches!(
            other.wait_durable().await,
            Err(StorageError::Closed)
        ));
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_flusher_and_releases_storage() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let gc = GroupCommit::start(Arc::clone(&storage));
        gc.wait_durable().await.unwrap();
        drop(gc);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&storage) > 1 {
            assert!(Instant::now() < deadline, "flusher still holds the storage");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
