//! `skv bench failover`: how long a shard takes no writes after its leader is killed.
//!
//! One run starts a local replicated cluster (real `skv-node` processes, mutual TLS, the
//! ladder's credentials; L5 adds a token per request), keeps a steady durable write load on
//! one shard, and then, `tries` times: finds the shard's leader, kills it with SIGKILL, and
//! measures from the kill to the first acknowledged write on that shard; then restarts the
//! killed node on its data and waits until it has rejoined every group before the next try.
//!
//! **What counts as the first acknowledged write.** Only a write *sent after* the kill
//! counts, and its acknowledgement time is taken. An answer already on its way from the old
//! leader at the kill could arrive a moment after it; a write sent after the kill can only
//! be acknowledged by a new leader (its quorum having it in the fsynced log). The writers
//! are the steady load (`writers` tasks, the client library's default failover) and two
//! probes whose attempts time out after `probe_timeout`, so a probe never waits out the
//! default two-second attempt timeout on a dead node: what is measured is the cluster's
//! failover (election, then the client finding the new leader), not a client timer. Killing
//! a process closes its sockets, so the load's requests in flight fail at once too.
//!
//! **The leader** is the node the probe's client routed its last acknowledged write to
//! ([`ClusterClient::cached_leader`]), confirmed by that node's STATUS (`role == leader`
//! for the shard) where STATUS is allowed: at L2, which checks no token. L5's token grants
//! no admin, so there the client's view alone is used and the rejoin wait is a fixed pause.
//!
//! Outputs, in the output directory: `failover.json` ([`FailoverReport`]) and `failover.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use skv_certs::issuer::Alg;
use skv_certs::KeyType;
use skv_client::{ClientError, ClusterClient, ConnectOptions, Failover};
use skv_proto::cluster::{ClusterMap, ControlRequest, ControlResponse, NodeStatus};

use super::cases::{topology, Case};
use super::machine::{self, Machine};
use super::markdown::{group, Target, TargetKind, Verdict};
use super::node::NodeProcess;
use super::setup::{self, Credentials};
use super::{key_in_ranges, wait_writable, Rung, MAX_NODES};
use crate::{error_kind, Workload};

/// The target for the median failover.
const TARGET_P50: Duration = Duration::from_secs(2);

/// Keys of the target shard the writers cycle through.
const SHARD_KEYS: usize = 256;

/// Probes: writers with a short attempt timeout.
const PROBES: usize = 2;

/// Longest wait for a fresh cluster to take writes, and for a restarted node to rejoin.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A follower this many entries behind its leader counts as caught up (under the steady
/// load a live follower is a batch or two behind at any moment).
const CAUGHT_UP_LAG: u64 = 1_000;

/// How a failover run goes.
#[derive(Debug, Clone)]
pub struct FailoverOptions {
    /// Where failover.json and failover.md go (created if missing).
    pub out: PathBuf,
    /// The `skv-node` executable.
    pub node_bin: PathBuf,
    /// Nodes of the local cluster.
    pub nodes: usize,
    /// Replicas per shard (at least 3: one killed, a quorum left).
    pub replicas: usize,
    /// Kills, each of the target shard's leader at the time.
    pub tries: usize,
    /// L2 (mutual TLS) or L5 (+ a JWT per request, cached).
    pub rung: Rung,
    /// `--election-timeout-ms` for the nodes (`None`: the node's default).
    pub election_timeout_ms: Option<u64>,
    /// Steady-load writers on the target shard.
    pub writers: usize,
    /// The probes' attempt timeout.
    pub probe_timeout: Duration,
    /// Steady load before each kill.
    pub settle: Duration,
    /// Longest wait for the first acknowledged write after a kill; a try that waits longer
    /// fails (and counts as this long in the maximum).
    pub give_up: Duration,
    /// The command line, quoted into the report.
    pub command: String,
    /// Copy the nodes' logs (info level: elections, restarts) here at the end, to see what
    /// a slow try was waiting for.
    pub keep_logs: Option<PathBuf>,
}

impl FailoverOptions {
    /// 3 nodes × 3 replicas, 10 tries at L2, the node's election timeout, 8 writers, a 200 ms
    /// probe attempt timeout, 2 s of steady load before each kill, 30 s to give up.
    pub fn new(out: PathBuf, node_bin: PathBuf) -> FailoverOptions {
        FailoverOptions {
            out,
            node_bin,
            nodes: 3,
            replicas: 3,
            tries: 10,
            rung: Rung::L2,
            election_timeout_ms: None,
            writers: 8,
            probe_timeout: Duration::from_millis(200),
            settle: Duration::from_secs(2),
            give_up: Duration::from_secs(30),
            command: String::new(),
            keep_logs: None,
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let bad = |msg: String| Err(ClientError::Config(msg));
        if !(3..=MAX_NODES).contains(&self.nodes) {
            return bad(format!("--nodes must be within 3..={MAX_NODES}"));
        }
        if !(3..=self.nodes).contains(&self.replicas) {
            return bad(format!(
                "--replicas must be within 3..={}: with fewer, killing the leader leaves no \
                 quorum",
                self.nodes
            ));
        }
        if self.tries == 0 {
            return bad("--tries must be at least 1".into());
        }
        if self.writers == 0 {
            return bad("--writers must be at least 1".into());
        }
        if !matches!(self.rung, Rung::L2 | Rung::L5) {
            return bad("--rung must be L2 or L5".into());
        }
        if self.probe_timeout.is_zero() || self.give_up.is_zero() {
            return bad("--probe-timeout and --give-up must be longer than 0".into());
        }
        if !self.node_bin.is_file() {
            return bad(format!(
                "the node executable {} does not exist: build it (`cargo build --release \
                 --bins`) or point --node-bin at skv-node",
                self.node_bin.display()
            ));
        }
        Ok(())
    }
}

/// One kill.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverTry {
    /// 1-based.
    pub index: usize,
    /// The shard whose leader was killed.
    pub shard: u32,
    /// The node killed (the shard's leader).
    pub killed: Option<String>,
    /// Whether the killed node's STATUS said it led the shard just before the kill.
    pub leader_confirmed: bool,
    /// From the kill to the first acknowledged write sent after it, ms.
    pub failover_ms: Option<f64>,
    /// Who got that write through: `probe` or `load`.
    pub first_ack_by: Option<String>,
    /// The shard's leader after the failover, as the probe's client saw it.
    pub new_leader: Option<String>,
    /// Writes acknowledged from the kill until the killed node had rejoined.
    pub acked_writes: u64,
    /// Writes that failed in that time (after the client's own retries), by kind.
    pub errors: BTreeMap<String, u64>,
    /// From the restart of the killed node to its rejoining every group, ms.
    pub rejoin_ms: Option<f64>,
    /// Why the try has no measurement.
    pub error: Option<String>,
}

/// A whole run: failover.json.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    /// UTC, when the run ended.
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// The command line.
    pub command: String,
    /// Nodes of the cluster.
    pub nodes: usize,
    /// Replicas per shard.
    pub replicas: usize,
    /// "L2" or "L5".
    pub rung: String,
    /// The nodes' election timeout, ms.
    pub election_timeout_ms: u64,
    /// Steady-load writers.
    pub writers: usize,
    /// The probes' attempt timeout, ms.
    pub probe_attempt_timeout_ms: u64,
    /// Every try, in order.
    pub tries: Vec<FailoverTry>,
    /// Median failover over the tries that measured one, ms.
    pub p50_ms: Option<f64>,
    /// Slowest; a failed try counts as the give-up time, ms.
    pub max_ms: Option<f64>,
    /// Fastest, ms.
    pub min_ms: Option<f64>,
    /// The target, evaluated.
    pub target: Target,
    /// /proc/loadavg when the run started.
    pub load_before: String,
    /// ... and when it ended.
    pub load_after: String,
    /// Wall time of the run, s.
    pub took_secs: f64,
}

/// A finished run.
#[derive(Debug)]
pub struct FailoverOutcome {
    /// What failover.json holds.
    pub report: FailoverReport,
    /// failover.md's text.
    pub report_md: String,
    /// Files written.
    pub written: Vec<PathBuf>,
}

/// One node of the cluster: what it needs to be started again.
struct Member {
    id: String,
    addr: String,
    args: Vec<String>,
    log: PathBuf,
    process: Option<NodeProcess>,
}

/// What the writers share with the kill loop. Times are nanoseconds since `base`.
struct Watch {
    base: Instant,
    /// When the current kill happened (+1, so 0 means no kill yet).
    kill_at: AtomicU64,
    /// The earliest acknowledgement of a write sent after the kill, ns after it.
    first_ack: AtomicU64,
    /// 1: a probe, 2: the load.
    first_by: AtomicU8,
    acked: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Watch {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    fn reset(&self) {
        self.kill_at.store(0, Ordering::SeqCst);
        self.first_ack.store(u64::MAX, Ordering::SeqCst);
        self.first_by.store(0, Ordering::SeqCst);
        self.acked.store(0, Ordering::SeqCst);
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// A write sent at `sent` finished now with `result`.
    fn record(&self, sent: u64, result: &Result<u64, ClientError>, by: u8) {
        let kill = self.kill_at.load(Ordering::SeqCst);
        match result {
            Ok(_) => {
                if kill == 0 {
                    return;
                }
                self.acked.fetch_add(1, Ordering::Relaxed);
                if sent >= kill {
                    let after = self.now().saturating_sub(kill);
                    if self.first_ack.fetch_min(after, Ordering::SeqCst) > after {
                        self.first_by.store(by, Ordering::SeqCst);
                    }
                }
            }
            Err(err) => {
                if kill != 0 {
                    *self
                        .errors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(error_kind(err))
                        .or_default() += 1;
                }
            }
        }
    }
}

/// Run the failover measurement and write its outputs; `log` gets a line per step. Creates
/// its own tokio runtime: call it from outside any runtime.
pub fn run(
    opts: &FailoverOptions,
    log: &mut dyn FnMut(&str),
) -> Result<FailoverOutcome, ClientError> {
    opts.validate()?;
    let config =
        |what: &str, e: &dyn std::fmt::Display| ClientError::Config(format!("{what}: {e}"));
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| config(&format!("cannot create {}", opts.out.display()), &e))?;
    let temp = tempfile::Builder::new()
        .prefix("skv-failover-")
        .tempdir()
        .map_err(|e| config("cannot create a temporary directory", &e))?;
    let started = Instant::now();
    let load_before = machine::load_average();
    let election_ms = opts
        .election_timeout_ms
        .unwrap_or(skv_proto::DEFAULT_ELECTION_TIMEOUT_MS);
    log(&format!(
        "skv bench failover: {}, {} tries at {}; nodes and credentials in {}",
        topology(opts.nodes, opts.replicas),
        opts.tries,
        opts.rung,
        temp.path().display()
    ));
    let creds = Credentials::create(
        temp.path(),
        &[KeyType::P256],
        &[Alg::EdDSA],
        Duration::from_secs(3600) + opts.give_up.mul_f64(opts.tries as f64 * 4.0),
        opts.nodes,
    )
    .map_err(|e| ClientError::Config(format!("cannot make the credentials: {e}")))?;
    let mut case = Case::new(opts.rung, "failover", 1);
    case.workload = Workload::Put;

    // Addresses up front: the map names them, and a restarted node must come back on its own.
    let listeners = (0..opts.nodes)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config("cannot find free ports", &e))?;
    let addrs = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config("cannot find free ports", &e))?;
    drop(listeners);
    let ids: Vec<String> = (1..=opts.nodes).map(|i| format!("n{i}")).collect();
    let pairs: Vec<(String, String)> = ids.iter().cloned().zip(addrs.iter().cloned()).collect();
    let map = ClusterMap::even_replicated(setup::CLUSTER, &pairs, opts.replicas)
        .map_err(|e| config("cannot build the cluster map", &e))?;
    let map_path = temp.path().join("map.json");
    std::fs::write(&map_path, map.to_json())
        .map_err(|e| config("cannot write the cluster map", &e))?;

    let mut members = Vec::new();
    for (id, addr) in &pairs {
        let mut args = case
            .node_args(&creds, &temp.path().join(format!("data-{id}")), id)
            .map_err(ClientError::Config)?;
        args.extend(["--cluster-map".into(), map_path.display().to_string()]);
        if let Some(ms) = opts.election_timeout_ms {
            args.extend(["--election-timeout-ms".into(), ms.to_string()]);
        }
        let log_path = temp.path().join(format!("node-{id}.log"));
        let process = NodeProcess::start(&opts.node_bin, &args, &log_path, addr)
            .map_err(|e| ClientError::Config(format!("node {id}: {e}")))?;
        members.push(Member {
            id: id.clone(),
            addr: addr.clone(),
            args,
            log: log_path,
            process: Some(process),
        });
    }
    let connect = case
        .connect(&creds, &members[0].addr)
        .map_err(ClientError::Config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| config("cannot start the async runtime", &e))?;
    let tries = runtime.block_on(measure(
        opts,
        connect,
        addrs,
        &mut members,
        election_ms,
        log,
    ));
    drop(runtime);
    for member in &mut members {
        if let Some(mut process) = member.process.take() {
            process.stop();
        }
    }
    if let Some(dir) = &opts.keep_logs {
        std::fs::create_dir_all(dir)
            .map_err(|e| config(&format!("cannot create {}", dir.display()), &e))?;
        for member in &members {
            let to = dir.join(format!("{}.log", member.id));
            std::fs::copy(&member.log, &to)
                .map_err(|e| config(&format!("cannot copy a node log to {}", to.display()), &e))?;
        }
    }
    let tries = tries?;

    let mut measured: Vec<f64> = tries.iter().filter_map(|t| t.failover_ms).collect();
    measured.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let failed = tries.iter().filter(|t| t.failover_ms.is_none()).count();
    let p50_ms = percentile50(&measured);
    let max_ms = if failed > 0 {
        Some(opts.give_up.as_secs_f64() * 1e3)
    } else {
        measured.last().copied()
    };
    let target = Target {
        kind: TargetKind::Absolute,
        goal: format!(
            "failover p50 ≤ {} s (kill -9 of a leader → first acknowledged write on its shard)",
            TARGET_P50.as_secs()
        ),
        measured: match p50_ms {
            Some(p50) => format!(
                "p50 {} ms, max {} ms over {} tries{}",
                group(p50),
                group(max_ms.unwrap_or(0.0)),
                tries.len(),
                if failed > 0 {
                    format!(" ({failed} gave up)")
                } else {
                    String::new()
                }
            ),
            None => "no try measured a failover".into(),
        },
        verdict: match p50_ms {
            Some(p50) if failed * 2 < tries.len() && p50 <= TARGET_P50.as_secs_f64() * 1e3 => {
                Verdict::Met
            }
            Some(_) => Verdict::Missed,
            None => Verdict::NotMeasured,
        },
    };
    let report = FailoverReport {
        date: machine::utc_now(),
        machine: Machine::detect(),
        command: opts.command.clone(),
        nodes: opts.nodes,
        replicas: opts.replicas,
        rung: opts.rung.label().into(),
        election_timeout_ms: election_ms,
        writers: opts.writers,
        probe_attempt_timeout_ms: opts.probe_timeout.as_millis() as u64,
        tries,
        p50_ms,
        max_ms,
        min_ms: measured.first().copied(),
        target,
        load_before,
        load_after: machine::load_average(),
        took_secs: started.elapsed().as_secs_f64(),
    };
    let mut written = Vec::new();
    let json_path = opts.out.join("failover.json");
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| config("cannot encode failover.json", &e))?;
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| config(&format!("cannot write {}", json_path.display()), &e))?;
    written.push(json_path);
    let report_md = render(&report, cfg!(debug_assertions));
    let md_path = opts.out.join("failover.md");
    std::fs::write(&md_path, &report_md)
        .map_err(|e| config(&format!("cannot write {}", md_path.display()), &e))?;
    written.push(md_path);
    Ok(FailoverOutcome {
        report,
        report_md,
        written,
    })
}

/// The median of sorted values (for an even count, the mean of the two middle ones).
fn percentile50(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

async fn measure(
    opts: &FailoverOptions,
    connect: ConnectOptions,
    seeds: Vec<String>,
    members: &mut [Member],
    election_ms: u64,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<FailoverTry>, ClientError> {
    wait_writable(&connect, READY_WITHIN)
        .await
        .map_err(ClientError::Config)?;
    let client = ClusterClient::connect(connect, seeds)
        .await?
        .with_failover(Failover {
            deadline: opts.give_up,
            ..Failover::default()
        });
    let map = client.map();
    let shard = map
        .shards
        .first()
        .map(|s| s.id)
        .ok_or_else(|| ClientError::Config("the cluster map has no shard".into()))?;
    let ranges = map.ranges_of_shard(shard);
    let keys: Vec<Bytes> = (0..SHARD_KEYS)
        .filter_map(|i| key_in_ranges(&ranges, &format!("f{i}")))
        .collect();
    if keys.is_empty() {
        return Err(ClientError::Config(format!(
            "no bench key hashes into shard {shard}"
        )));
    }
    let value = crate::make_value(100, 1);
    let watch = Arc::new(Watch {
        base: Instant::now(),
        kill_at: AtomicU64::new(0),
        first_ack: AtomicU64::new(u64::MAX),
        first_by: AtomicU8::new(0),
        acked: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
    });
    let probe = client.fresh()?.with_failover(Failover {
        attempt_timeout: opts.probe_timeout,
        deadline: opts.give_up,
        ..Failover::default()
    });
    let mut tasks = Vec::new();
    let writers: Vec<(ClusterClient, u8)> = (0..opts.writers)
        .map(|_| (client.clone(), 2))
        .chain((0..PROBES).map(|_| (probe.clone(), 1)))
        .collect();
    for (i, (writer, by)) in writers.into_iter().enumerate() {
        let (watch, keys, value) = (watch.clone(), keys.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = i;
            while !watch.stop.load(Ordering::Relaxed) {
                let key = keys[next % keys.len()].clone();
                next += 7;
                let sent = watch.now();
                let result = writer.put(key, value.clone()).await;
                watch.record(sent, &result, by);
                if result.is_err() {
                    // A write that failed after the client's own retries: the shard is
                    // down for longer than the deadline; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }

    let mut tries = Vec::new();
    for index in 1..=opts.tries {
        tokio::time::sleep(opts.settle).await;
        let t = one_try(
            opts,
            index,
            shard,
            &probe,
            &keys,
            &value,
            members,
            &watch,
            election_ms,
        )
        .await;
        log(&format!(
            "[{index:>2}/{}] killed {} → first write acknowledged after {}{}; rejoined in {}{}",
            opts.tries,
            t.killed.as_deref().unwrap_or("?"),
            t.failover_ms.map_or("–".into(), |ms| format!("{ms:.0} ms")),
            t.new_leader
                .as_ref()
                .map_or(String::new(), |l| format!(" (new leader {l})")),
            t.rejoin_ms.map_or("–".into(), |ms| format!("{ms:.0} ms")),
            t.error
                .as_ref()
                .map_or(String::new(), |e| format!("; ERROR: {e}")),
        ));
        tries.push(t);
    }
    watch.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(opts.give_up, task).await;
    }
    Ok(tries)
}

#[allow(clippy::too_many_arguments)]
async fn one_try(
    opts: &FailoverOptions,
    index: usize,
    shard: u32,
    probe: &ClusterClient,
    keys: &[Bytes],
    value: &Bytes,
    members: &mut [Member],
    watch: &Watch,
    election_ms: u64,
) -> FailoverTry {
    let mut t = FailoverTry {
        index,
        shard,
        killed: None,
        leader_confirmed: false,
        failover_ms: None,
        first_ack_by: None,
        new_leader: None,
        acked_writes: 0,
        errors: BTreeMap::new(),
        rejoin_ms: None,
        error: None,
    };
    // The leader: where the probe's acknowledged write went, confirmed by STATUS if allowed.
    let mut leader = None;
    for attempt in 0..50 {
        let key = keys[attempt % keys.len()].clone();
        if probe.put(key, value.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Some(node) = probe.cached_leader(shard) else {
            continue;
        };
        match status(probe, &node).await {
            Ok(status) => {
                if leads(&status, shard) {
                    t.leader_confirmed = true;
                    leader = Some(node);
                    break;
                }
                // Between terms: ask again in a moment.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // STATUS not allowed (L5's token grants no admin): the client's view.
            Err(_) => {
                leader = Some(node);
                break;
            }
        }
    }
    let Some(leader) = leader else {
        t.error = Some(format!("shard {shard} showed no stable leader"));
        return t;
    };
    t.killed = Some(leader.clone());
    let Some(member) = members.iter_mut().find(|m| m.id == leader) else {
        t.error = Some(format!("the leader {leader} is not a node of this run"));
        return t;
    };
    let Some(mut process) = member.process.take() else {
        t.error = Some(format!("the leader {leader} is not running"));
        return t;
    };

    watch.reset();
    watch.kill_at.store(watch.now(), Ordering::SeqCst);
    // SIGKILL, then reaped.
    process.stop();
    drop(process);
    let give_up = Instant::now() + opts.give_up;
    loop {
        let first = watch.first_ack.load(Ordering::SeqCst);
        if first != u64::MAX {
            t.failover_ms = Some(first as f64 / 1e6);
            t.first_ack_by = Some(
                match watch.first_by.load(Ordering::SeqCst) {
                    1 => "probe",
                    _ => "load",
                }
                .into(),
            );
            break;
        }
        if Instant::now() >= give_up {
            t.error = Some(format!(
                "no write on shard {shard} was acknowledged within {:?} of the kill",
                opts.give_up
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The probe's next acknowledged write names the new leader.
    if probe.put(keys[0].clone(), value.clone()).await.is_ok() {
        t.new_leader = probe.cached_leader(shard);
    }

    // Back on its data, then wait until it is part of every group again.
    let restarted = Instant::now();
    let started = tokio::task::block_in_place(|| {
        NodeProcess::start(&opts.node_bin, &member.args, &member.log, &member.addr)
    });
    match started {
        Ok(process) => member.process = Some(process),
        Err(e) => {
            t.error
                .get_or_insert(format!("the restart of {leader} failed: {e}"));
            return t;
        }
    }
    match rejoined(probe, &leader, election_ms).await {
        Ok(()) => t.rejoin_ms = Some(restarted.elapsed().as_secs_f64() * 1e3),
        Err(e) => {
            t.error.get_or_insert(e);
        }
    }
    t.acked_writes = watch.acked.load(Ordering::SeqCst);
    t.errors = watch
        .errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    t
}

/// STATUS of node `id`.
async fn status(client: &ClusterClient, id: &str) -> Result<NodeStatus, ClientError> {
    let conn = client.connection_to(id).await?;
    match tokio::time::timeout(
        Duration::from_secs(2),
        conn.control(&ControlRequest::Status),
    )
    .await
    {
        Ok(Ok(ControlResponse::Status(status))) => Ok(status),
        Ok(Ok(_)) => Err(ClientError::Protocol(
            "STATUS answered something else".into(),
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::Protocol("STATUS timed out".into())),
    }
}

fn leads(status: &NodeStatus, shard: u32) -> bool {
    status
        .replicas
        .iter()
        .any(|r| r.shard == shard && r.role == "leader")
}

/// Wait until the restarted node `id` is back in every group it belongs to: each of its
/// replicas leads, or follows a leader of its own term that reports it at most
/// [`CAUGHT_UP_LAG`] entries behind. Where STATUS is not allowed, a fixed pause of ten election timeouts instead.
async fn rejoined(client: &ClusterClient, id: &str, election_ms: u64) -> Result<(), String> {
    let began = Instant::now();
    loop {
        match status(client, id).await {
            Ok(mine) => {
                if caught_up(client, id, &mine).await {
                    return Ok(());
                }
            }
            // Refused (no admin grant): wait a fixed time instead.
            Err(ClientError::Refused(_)) => {
                tokio::time::sleep(Duration::from_millis(election_ms * 10)).await;
                return Ok(());
            }
            Err(_) => {}
        }
        if began.elapsed() > READY_WITHIN {
            return Err(format!("{id} did not rejoin within {READY_WITHIN:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn caught_up(client: &ClusterClient, id: &str, mine: &NodeStatus) -> bool {
    if mine.replicas.is_empty() {
        return false;
    }
    for replica in &mine.replicas {
        if replica.role == "leader" {
            // Won an election since the restart: it is in the group by definition.
            continue;
        }
        // A restarted replica may still name the leader it remembers (possibly itself);
        // only the current leader, in the same term, vouches for it.
        let Some(leader) = replica.leader.as_deref().filter(|l| *l != id) else {
            return false;
        };
        let Ok(theirs) = status(client, leader).await else {
            return false;
        };
        let Some(lead) = theirs
            .replicas
            .iter()
            .find(|r| r.shard == replica.shard && r.role == "leader")
        else {
            return false;
        };
        let behind = lead
            .lag
            .iter()
            .find(|(node, _)| node == id)
            .map(|(_, n)| *n);
        if lead.term != replica.term || behind.is_none_or(|n| n > CAUGHT_UP_LAG) {
            return false;
        }
    }
    true
}

/// failover.md.
pub(crate) fn render(r: &FailoverReport, debug_build: bool) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# skv failover\n");
    let _ = writeln!(md, "- **Date:** {}", r.date);
    let _ = writeln!(md, "- **Machine:** {}", r.machine.describe());
    let _ = writeln!(md, "- **Command:** `{}`", r.command);
    let _ = writeln!(
        md,
        "- **Cluster:** {} on 127.0.0.1, {} (mutual TLS{}), durable writes \
         (`--durability sync`), election timeout {} ms (heartbeat every {} ms).",
        topology(r.nodes, r.replicas),
        r.rung,
        if r.rung == "L5" {
            ", a JWT per request"
        } else {
            ""
        },
        r.election_timeout_ms,
        r.election_timeout_ms / 5
    );
    let _ = writeln!(
        md,
        "- **Load:** {} writers keep writing 100-byte values to keys of shard {} (the \
         client's default failover), plus {PROBES} probes doing the same with a {} ms attempt \
         timeout.",
        r.writers,
        r.tries.first().map_or(1, |t| t.shard),
        r.probe_attempt_timeout_ms
    );
    let _ = writeln!(
        md,
        "- **Each try:** find the shard's leader (the node the probe's last acknowledged write \
         went to, confirmed by its STATUS where allowed), `kill -9` it, time from the kill to \
         the first acknowledged write *sent after* the kill, restart the node on its data, \
         wait until it has rejoined every group (each of its replicas leads, or follows a \
         leader of its own term that reports it at most {CAUGHT_UP_LAG} entries behind), then steady load again until the next kill."
    );
    let _ = writeln!(
        md,
        "- **Took:** {:.0} s; load average before: {}; after: {}",
        r.took_secs, r.load_before, r.load_after
    );
    if debug_build {
        let _ = writeln!(
            md,
            "\n> **Debug build of `skv`:** use `cargo build --release --bins` for figures."
        );
    }
    let _ = writeln!(md, "\n## Result\n");
    let ms = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{} ms", group(v)));
    let _ = writeln!(
        md,
        "**p50 {}, max {}** (min {}) over {} tries.\n",
        ms(r.p50_ms),
        ms(r.max_ms),
        ms(r.min_ms),
        r.tries.len()
    );
    let _ = writeln!(md, "| target | measured | verdict |");
    let _ = writeln!(md, "|---|---|---|");
    let _ = writeln!(
        md,
        "| {} | {} | **{}** |",
        r.target.goal,
        r.target.measured,
        r.target.verdict.as_str()
    );
    let _ = writeln!(md, "\n## Every try\n");
    let _ = writeln!(
        md,
        "| try | killed | confirmed leader | failover ms | first ack by | new leader | writes acked | write errors | rejoin ms | error |"
    );
    let _ = writeln!(md, "|--:|---|---|--:|---|---|--:|---|--:|---|");
    for t in &r.tries {
        let errors = if t.errors.is_empty() {
            "none".to_owned()
        } else {
            t.errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            t.index,
            t.killed.as_deref().unwrap_or("–"),
            if t.leader_confirmed { "yes" } else { "no" },
            t.failover_ms.map_or("–".into(), |v| format!("{v:.0}")),
            t.first_ack_by.as_deref().unwrap_or("–"),
            t.new_leader.as_deref().unwrap_or("–"),
            t.acked_writes,
            errors,
            t.rejoin_ms.map_or("–".into(), |v| format!("{v:.0}")),
            t.error.as_deref().unwrap_or("").replace('|', "/"),
        );
    }
    let _ = writeln!(
        md,
        "\nWrite errors are requests that failed after the client library's own retries \
         (other replicas, NOT_LEADER hints, backoff until its deadline), counted from the kill \
         until the node had rejoined; a CLI user would have seen them."
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(percentile50(&[]), None);
        assert_eq!(percentile50(&[3.0]), Some(3.0));
        assert_eq!(percentile50(&[1.0, 2.0, 10.0]), Some(2.0));
        assert_eq!(percentile50(&[1.0, 2.0, 4.0, 10.0]), Some(3.0));
    }

    #[test]
    fn only_writes_sent_after_the_kill_count() {
        let watch = Watch {
            base: Instant::now(),
            kill_at: AtomicU64::new(0),
            first_ack: AtomicU64::new(u64::MAX),
            first_by: AtomicU8::new(0),
            acked: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        };
        watch.reset();
        let before = watch.now();
        watch.kill_at.store(watch.now() + 1, Ordering::SeqCst);
        watch.record(before, &Ok(1), 2);
        assert_eq!(watch.first_ack.load(Ordering::SeqCst), u64::MAX);
        assert_eq!(watch.acked.load(Ordering::SeqCst), 1);
        watch.record(before, &Err(ClientError::Protocol("x".into())), 1);
        assert_eq!(watch.errors.lock().unwrap().values().sum::<u64>(), 1);
        let after = watch.kill_at.load(Ordering::SeqCst);
        watch.record(after, &Ok(2), 1);
        assert_ne!(watch.first_ack.load(Ordering::SeqCst), u64::MAX);
        assert_eq!(watch.first_by.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn too_few_replicas_are_refused() {
        let mut opts = FailoverOptions::new("out".into(), "/bin/sh".into());
        opts.replicas = 2;
        assert!(opts.validate().is_err());
        opts.replicas = 3;
        opts.rung = Rung::L0;
        assert!(opts.validate().is_err());
        opts.rung = Rung::L2;
        assert!(opts.validate().is_ok());
    }
}
