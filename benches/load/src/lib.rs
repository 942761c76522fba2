//! The load generator behind `skv bench`: many tasks, each with requests pipelined on its own
//! [`ClusterClient`] (one multiplexed connection per node, requests routed by key), latencies
//! in HdrHistograms, a [`BenchReport`] at the end. Against a single node a task is exactly
//! one connection.
//!
//! This crate owns the load generator (this module) and the security-cost ladder built on it
//! ([`ladder`]). It is a library, not part of the CLI, so the ladder can run one configuration
//! after another in-process and collect the reports as rows of a table. It depends on the
//! client library only: the ladder's nodes are `skv-node` processes, never linked code.
//!
//! # How a run goes
//!
//! 1. Make `conns` cluster clients with the same options as any other command, each
//!    connected to every node that serves slots (so `conns` connections per node). If that
//!    fails, the run fails with that error: a bench that cannot connect has nothing to say.
//! 2. For a workload that reads, write every key first over a few of those clients
//!    (the *preload*), so reads measure finding a value rather than a miss.
//! 3. Each client gets a task that keeps up to `inflight` requests outstanding. The
//!    first `warmup` is sent but not measured: caches, allocators and the node's first
//!    flushes settle, and the slow first requests do not pollute the histogram.
//! 4. Each task records into its own histogram (no lock, no shared cache line on the request
//!    path); the histograms are merged once at the end. Request errors are counted by kind,
//!    never fatal: a run under overload or faults must still report.
//!
//! # Closed and open loop, and coordinated omission
//!
//! By default the loop is *closed*: a connection sends its next request as soon as one of its
//! `inflight` slots frees up. That measures the most the node can do at that concurrency, but
//! its latencies flatter a slow node: while the node stalls, the generator stalls with it and
//! sends nothing, so the requests a real client would have sent during the stall (and that
//! would have waited) are never measured. This is *coordinated omission*: the load generator
//! coordinates with the system under test and omits exactly the bad samples.
//!
//! With `rate` set the loop is *open*: requests are due on a fixed schedule (`rate` per second
//! in total, spread evenly over the connections), whatever the node does, and each request's
//! latency is measured from when it was *due*, not from when it finally went out. A request
//! that had to wait for a free slot because the node stalled therefore carries the stall in
//! its latency, as the user's request would have. This is the correction of Gil Tene's
//! wrk2 and HdrHistogram. Requests still due when the run ends are counted as `unsent`.
//!
//! # What is measured
//!
//! The window starts when the warmup ends and ends with the last measured answer; a request
//! is measured if it was due (open loop) or sent (closed loop) inside it. `ops_per_sec` is
//! successful measured requests over that window; latencies cover successful requests only
//! (failures are counted under `errors`).
//!
//! `per_second` counts the same requests by the second in which they completed (successes
//! under `ops`, failures under `errors`), so a stall or a failover shows as a dip; see
//! [`SecondSample`] and, to draw it, [`throughput_chart_svg`].
//!
//! A run needs a tokio runtime; the multi-threaded one lets the connections' tasks use every
//! core.

#![forbid(unsafe_code)]

pub mod chart;
mod direct;
pub mod ladder;
mod options;
mod progress;
mod report;
mod series;
mod worker;
pub mod zipf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinSet;

pub use chart::{throughput_chart_svg, ChartError, Marker, Span};
pub use options::{
    parse_duration, BenchOptions, KeyDist, Stop, WindowEdge, WindowHook, Workload, MAX_KEYS,
    MAX_SCAN_LIMIT,
};
pub use progress::{Phase, Progress};
pub use report::{error_kind, BenchReport};
pub use series::{full_seconds, SecondSample};

use report::TaskStats;
use series::Seconds;
use skv_client::{ClientError, ClusterClient, Pipeline};
use zipf::Zipf;

/// Every key of a bench starts with this; SCAN uses it as the prefix.
pub const KEY_PREFIX: &[u8] = b"bench/k";

/// Clients the preload writes over, and writes outstanding on each: enough pipelining for
/// the node's group commit to batch many writes per flush.
const PRELOAD_CONNS: usize = 4;
const PRELOAD_INFLIGHT: usize = 64;

/// The name of key `index`: `bench/k` and the index in ten zero-padded digits. A fixed width
/// keeps names independent of `--keys` (a smaller run reuses a larger run's keys) and makes
/// byte order numeric order, so scans walk keys in index order.
pub fn key_name(index: u64) -> Bytes {
    Bytes::from(format!("bench/k{index:010}"))
}

/// What every connection task of a run shares (read-only).
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) opts: BenchOptions,
    pub(crate) zipf: Option<Zipf>,
    /// The value every write sends (a cheap-to-clone shared buffer).
    pub(crate) value: Bytes,
    pub(crate) progress: Arc<Progress>,
    /// When the tasks started: the open-loop schedule counts from here.
    pub(crate) start: Instant,
    /// End of the warmup, start of the measured window.
    pub(crate) measure_from: Instant,
    /// With [`Stop::Duration`]: no request is sent from here on.
    pub(crate) deadline: Option<Instant>,
    /// Completions per second of the measured window, added to by every task.
    pub(crate) seconds: Seconds,
}

/// Run a benchmark. See the module docs for what is measured and how.
pub async fn run(opts: BenchOptions) -> Result<BenchReport, ClientError> {
    run_with_progress(opts, Arc::new(Progress::new())).await
}

/// [`run`], updating `progress` as it goes (for a progress bar). The phase ends at
/// [`Phase::Done`] whether the run succeeds or fails, so a display can always stop.
pub async fn run_with_progress(
    opts: BenchOptions,
    progress: Arc<Progress>,
) -> Result<BenchReport, ClientError> {
    let result = run_inner(opts, &progress).await;
    progress.set_phase(Phase::Done);
    result
}

async fn run_inner(
    opts: BenchOptions,
    progress: &Arc<Progress>,
) -> Result<BenchReport, ClientError> {
    opts.validate()?;
    let zipf = match opts.key_dist {
        KeyDist::Zipf { exponent } => {
            Some(Zipf::new(opts.keys, exponent).map_err(ClientError::Config)?)
        }
        KeyDist::Uniform => None,
    };
    let mut totals = TaskStats::new();

    progress.set_phase(Phase::Connecting);
    let value = make_value(opts.value_size, opts.seed);
    let loaded = opts.preload && opts.workload.reads();
    let (connections, nodes, preloaded_keys, preload_time) = if opts.direct {
        // The preload goes through cluster clients (a few, dropped once it is done); the
        // measured load through one pipeline per task.
        let (preloaded_keys, preload_time) = if loaded {
            let loaders = connect_n(&opts, PRELOAD_CONNS.min(opts.conns)).await?;
            progress.set_phase(Phase::Preloading);
            let began = Instant::now();
            preload(&loaders, opts.keys, &value, progress).await?;
            (opts.keys, began.elapsed())
        } else {
            (0, Duration::ZERO)
        };
        let pipelines = connect_pipelines(&opts, &mut totals).await?;
        (
            Connections::Direct(pipelines),
            1,
            preloaded_keys,
            preload_time,
        )
    } else {
        let clients = connect_all(&opts).await?;
        let nodes = clients.first().map_or(0, ClusterClient::serving_nodes);
        let (preloaded_keys, preload_time) = if loaded {
            progress.set_phase(Phase::Preloading);
            let began = Instant::now();
            preload(&clients, opts.keys, &value, progress).await?;
            (opts.keys, began.elapsed())
        } else {
            (0, Duration::ZERO)
        };
        (
            Connections::Cluster(clients),
            nodes,
            preloaded_keys,
            preload_time,
        )
    };

    let start = Instant::now();
    let measure_from = start + opts.warmup;
    let deadline = match opts.stop {
        Stop::Duration(d) => Some(measure_from + d),
        Stop::Requests(_) => None,
    };
    progress.set_phase(Phase::WarmingUp);
    let plan = Arc::new(Plan {
        opts,
        zipf,
        value,
        progress: progress.clone(),
        start,
        measure_from,
        deadline,
        seconds: Seconds::default(),
    });
    // The phase changes on a timer of its own, so no task has to check the clock for it.
    // The same timer opens the measured window for the hook.
    let hook = plan.opts.on_window.clone();
    let window_opened = Arc::new(AtomicBool::new(false));
    let phases = tokio::spawn({
        let progress = progress.clone();
        let (hook, window_opened) = (hook.clone(), window_opened.clone());
        async move {
            tokio::time::sleep_until(measure_from.into()).await;
            if let Some(hook) = &hook {
                hook.call(WindowEdge::Start);
            }
            window_opened.store(true, Ordering::Release);
            progress.set_phase(Phase::Measuring);
            if let Some(deadline) = deadline {
                tokio::time::sleep_until(deadline.into()).await;
                progress.set_phase(Phase::Draining);
            }
        }
    });
    let mut tasks = JoinSet::new();
    match connections {
        Connections::Cluster(clients) => {
            for (index, client) in clients.into_iter().enumerate() {
                tasks.spawn(worker::drive(plan.clone(), index, client));
            }
        }
        Connections::Direct(pipelines) => {
            for (index, pipeline) in pipelines.into_iter().enumerate() {
                tasks.spawn(direct::drive(plan.clone(), index, pipeline));
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(stats) => totals.merge(stats),
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => {}
        }
    }
    phases.abort();
    // Once the timer task has finished or been cancelled, `window_opened` says for sure
    // whether the hook saw the start; it sees both edges, in order, either way.
    let _ = phases.await;
    if let Some(hook) = &hook {
        if !window_opened.load(Ordering::Acquire) {
            hook.call(WindowEdge::Start);
        }
        hook.call(WindowEdge::End);
    }
    Ok(report(&plan, totals, nodes, preloaded_keys, preload_time))
}

/// What the tasks of a run drive.
enum Connections {
    /// A cluster client per task (the default).
    Cluster(Vec<ClusterClient>),
    /// A pipeline per task (`--direct`).
    Direct(Vec<Pipeline>),
}

/// `n` cluster clients, connected (for the preload of a `--direct` run).
async fn connect_n(opts: &BenchOptions, n: usize) -> Result<Vec<ClusterClient>, ClientError> {
    let mut fewer = opts.clone();
    fewer.conns = n;
    connect_all(&fewer).await
}

/// Every task's pipeline, opened concurrently; the first failure fails the run. Their
/// handshakes are counted into `totals` (all before the measured window).
async fn connect_pipelines(
    opts: &BenchOptions,
    totals: &mut TaskStats,
) -> Result<Vec<Pipeline>, ClientError> {
    let mut pending = JoinSet::new();
    for index in 0..opts.conns {
        let connect = opts.connect.clone();
        pending.spawn(async move {
            let began = Instant::now();
            let opened = Pipeline::connect(&connect).await;
            (index, opened, began.elapsed())
        });
    }
    let mut pipelines: Vec<Option<Pipeline>> = (0..opts.conns).map(|_| None).collect();
    while let Some(joined) = pending.join_next().await {
        match joined {
            Ok((index, opened, took)) => {
                let pipeline = opened?;
                totals.handshakes += 1;
                totals.handshakes_resumed += u64::from(pipeline.resumed_tls());
                totals.handshake_time += took;
                pipelines[index] = Some(pipeline);
            }
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => {}
        }
    }
    Ok(pipelines.into_iter().flatten().collect())
}

/// Make every task's client, each connected to every node that serves slots; the first
/// failure fails the run. One client finds the cluster and the others are made from it:
/// they share its map and routing table (one map fetch, one owner table in the CPU cache)
/// but nothing else, each with its own TLS config and connections. The connections are
/// counted by the tasks, from each client's statistics, with the ones they open later.
async fn connect_all(opts: &BenchOptions) -> Result<Vec<ClusterClient>, ClientError> {
    let mut first = ClusterClient::connect(opts.connect.clone(), opts.seeds.clone()).await?;
    if let Some(failover) = opts.failover {
        // Before the others are made: `fresh` copies it.
        first = first.with_failover(failover);
    }
    let mut clients = vec![first.clone()];
    for _ in 1..opts.conns {
        clients.push(first.fresh()?);
    }
    let mut pending = JoinSet::new();
    for client in &clients {
        let client = client.clone();
        pending.spawn(async move { client.open_connections().await });
    }
    while let Some(joined) = pending.join_next().await {
        match joined {
            // Returning drops `pending`, which aborts the other attempts.
            Ok(opened) => opened?,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => {}
        }
    }
    Ok(clients)
}

async fn put_one(client: ClusterClient, key: Bytes, value: Bytes) -> Result<u64, ClientError> {
    client.put(key, value).await
}

/// Write keys `0..keys` over the first few clients, pipelined. A failure here is fatal:
/// a read benchmark over a half-loaded key space would measure misses.
async fn preload(
    clients: &[ClusterClient],
    keys: u64,
    value: &Bytes,
    progress: &Arc<Progress>,
) -> Result<(), ClientError> {
    let loaders = clients.len().min(PRELOAD_CONNS);
    let mut tasks = JoinSet::new();
    for (first, client) in clients.iter().take(loaders).enumerate() {
        let (client, value, progress) = (client.clone(), value.clone(), progress.clone());
        tasks.spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            let mut next = first as u64;
            loop {
                while in_flight.len() < PRELOAD_INFLIGHT && next < keys {
                    in_flight.push(put_one(client.clone(), key_name(next), value.clone()));
                    next += loaders as u64;
                }
                match in_flight.next().await {
                    Some(written) => {
                        written?;
                        progress.add_preloaded(1);
                    }
                    None => return Ok::<(), ClientError>(()),
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(result) => result?,
            Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
            Err(_) => {}
        }
    }
    Ok(())
}

/// The written value: lowercase letters from the seed, so values are incompressible enough
/// to be honest yet print readably with `skv get`.
fn make_value(size: usize, seed: u64) -> Bytes {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..size)
        .map(|_| rng.gen_range(b'a'..=b'z'))
        .collect::<Vec<u8>>()
        .into()
}

fn report(
    plan: &Plan,
    t: TaskStats,
    nodes: usize,
    preloaded_keys: u64,
    preload_time: Duration,
) -> BenchReport {
    let opts = &plan.opts;
    let window = t
        .last_completion
        .map(|last| last.saturating_duration_since(plan.measure_from))
        .unwrap_or_default()
        .as_secs_f64();
    let h = &t.latency;
    BenchReport {
        rung: opts.rung.clone(),
        variant: opts.variant.clone(),
        workload: opts.workload.to_string(),
        key_dist: opts.key_dist.to_string(),
        keys: opts.keys,
        value_size: opts.value_size,
        inflight: opts.inflight,
        conns: opts.conns,
        nodes,
        target_rate: opts.rate,
        ops_per_sec: if window > 0.0 {
            t.ok as f64 / window
        } else {
            0.0
        },
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        mean_us: h.mean(),
        errors: t.errors,
        requests: t.requests,
        not_found: t.not_found,
        unsent: t.unsent,
        handshakes: t.handshakes,
        handshakes_measured: t.handshakes_measured,
        handshakes_resumed: t.handshakes_resumed,
        handshake_mean_us: if t.handshakes > 0 {
            t.handshake_time.as_secs_f64() * 1e6 / t.handshakes as f64
        } else {
            0.0
        },
        duration_secs: window,
        warmup_secs: opts.warmup.as_secs_f64(),
        preloaded_keys,
        preload_secs: preload_time.as_secs_f64(),
        server_cpu_us_per_op: None,
        cost_vs_l0_pct: None,
        per_second: plan.seconds.take(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_sort_numerically() {
        assert_eq!(key_name(42), Bytes::from_static(b"bench/k0000000042"));
        assert!(key_name(9) < key_name(10));
        assert!(key_name(MAX_KEYS - 1).starts_with(KEY_PREFIX));
        assert_eq!(key_name(MAX_KEYS - 1).len(), key_name(0).len());
    }

    #[test]
    fn values_are_deterministic() {
        assert_eq!(make_value(100, 7), make_value(100, 7));
        assert_eq!(make_value(100, 7).len(), 100);
        assert_ne!(make_value(100, 7), make_value(100, 8));
    }
}
