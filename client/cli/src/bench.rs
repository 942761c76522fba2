//! `skv bench`: parse the flags, run the library's load generator, print its report.
//! The engine (and the reasoning behind it) is in `skv_load`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use skv_client::{exit, ClientError};
use skv_load::ladder::failover::{self, FailoverOptions};
use skv_load::ladder::{self, CaseSet, LadderOptions, Rung, Verdict};
use skv_load::{parse_duration, BenchOptions, KeyDist, Phase, Progress, Stop, Workload};

use crate::args::ConnArgs;
use crate::data;

/// Flags of `skv bench` (the connection flags go before `bench`, as for every command), or
/// `skv bench ladder` with its own flags.
#[derive(Debug, Args)]
#[command(
    next_help_heading = "Bench options",
    args_conflicts_with_subcommands = true
)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// What to send: get, put, mixed:READ_RATIO (e.g. mixed:0.9 = 90 % gets, 10 % puts) or
    /// scan. Workloads that read write every key first.
    #[arg(long, default_value = "get", value_name = "WORKLOAD")]
    workload: Workload,
    /// Size of the key space (keys bench/k0000000000 ...).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    keys: u64,
    /// How keys are picked: uniform, or zipf:S (a few hot keys; 0.99 is the usual skew).
    #[arg(long, default_value = "uniform", value_name = "DIST")]
    key_dist: KeyDist,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    value_size: usize,
    /// Connections.
    #[arg(long, default_value_t = 50, value_name = "C")]
    conns: usize,
    /// Requests outstanding at once on each connection (pipelining depth).
    #[arg(long, default_value_t = 1, value_name = "P")]
    inflight: usize,
    /// How long to measure, after the warmup, e.g. 10s, 500ms, 2m [default: 10s].
    #[arg(long, value_parser = parse_duration, value_name = "D", conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measure exactly this many requests (after the warmup) instead of a duration.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Send but do not measure for this long first.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "D")]
    warmup: Duration,
    /// Open loop at this many requests per second in total; latency then counts from each
    /// request's intended send time (coordinated-omission correction). Default: closed loop.
    #[arg(long, value_name = "OPS")]
    rate: Option<f64>,
    /// Replace each connection after N requests (a new TCP and TLS handshake each time).
    #[arg(long, value_name = "N")]
    reconnect_every: Option<u64>,
    /// With --reconnect-every: each replacement connection resumes the TLS session of the
    /// one it replaces (a TLS 1.3 ticket), as a reconnecting client does, instead of a full
    /// handshake; the report counts the resumed ones.
    #[arg(long, requires = "reconnect_every")]
    resume: bool,
    /// Drive each connection directly: requests written back to back on one connection per
    /// task to the node at --addr, answers read as they come, with no routing, channel or
    /// timer per request. The load generator then costs about what redis-benchmark does, so
    /// a node on the same machine is measured at its ceiling rather than waiting for load.
    /// The node must serve every slot; closed loop, get/put/mixed only, no reconnects.
    #[arg(long, conflicts_with_all = ["rate", "reconnect_every"])]
    direct: bool,
    /// Skip the preload: the keys were written by an earlier run against the same cluster
    /// (same --keys). A key that is not there is counted as not found, not as an error.
    #[arg(long)]
    no_preload: bool,
    /// Entries per SCAN (scan workload).
    #[arg(long, default_value_t = 10, value_name = "N")]
    scan_limit: u32,
    /// Seed for key choice and the read/write mix; runs with equal seeds send equal keys.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
    /// Print every second of the measured window (ops and errors completed in it) after
    /// the summary, instead of only its lowest, median and highest second and a sparkline.
    /// `--json` always holds them, as `per_second`.
    #[arg(long)]
    per_second: bool,
    /// No progress bar or phase notes on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// The security ladder: start a local node per security level (plaintext, TLS, mutual
    /// TLS, tokens per connection / per request / cached, ...) and variant, run the same load
    /// against each, one after another, and write DIR/report.md, DIR/results.json and
    /// DIR/ladder.svg. The connection flags are not used: it starts its own nodes.
    Ladder(LadderArgs),
    /// Failover time: start a local replicated cluster (mutual TLS, durable writes), keep a
    /// steady write load on one shard, then TRIES times kill -9 that shard's leader, time
    /// from the kill to the first acknowledged write sent after it, restart the node and wait
    /// until it has rejoined. Writes DIR/failover.md and DIR/failover.json (p50, max and every
    /// try). The connection flags are not used: it starts its own nodes.
    Failover(FailoverArgs),
}

/// Which cases `skv bench ladder` runs.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CasesArg {
    /// The security ladder: main ladder and variants.
    All,
    /// The main ladder only: every rung at inflight 1 and 16, no variants.
    Main,
    /// GET (linearizable) and durable PUT at L2 and L5, inflight 1 and 16, on the
    /// --nodes/--replicas cluster and, interleaved, on one node (replication's cost).
    Replication,
    /// L4 and L5 at inflight 16: the price of verifying a token on every request, without
    /// and with the verified-token cache (labs/16-price).
    TokenCache,
}

/// What `skv bench ladder --compare` measures beside the rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CompareArg {
    /// Redis (redis-server and redis-benchmark from PATH, or --redis-server and
    /// --redis-benchmark), plain and with mutual TLS, at pipeline 1 and 16; skipped rows,
    /// not a failure, when they are missing.
    Redis,
}

/// A rung `skv bench failover` can run at.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FailoverRung {
    /// Mutual TLS.
    L2,
    /// Mutual TLS + a JWT per request (cached).
    L5,
}

/// Flags of `skv bench failover`.
#[derive(Debug, Args)]
struct FailoverArgs {
    /// Output directory (created if missing).
    #[arg(long, default_value = "skv-failover", value_name = "DIR")]
    out: PathBuf,
    /// The skv-node executable [default: skv-node next to this skv].
    #[arg(long, value_name = "PATH")]
    node_bin: Option<PathBuf>,
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 3, value_name = "N")]
    nodes: usize,
    /// Replicas per shard (at least 3, so a quorum survives the kill).
    #[arg(long, default_value_t = 3, value_name = "R")]
    replicas: usize,
    /// Kills, each of the shard's leader at the time.
    #[arg(long, default_value_t = 10, value_name = "N")]
    tries: usize,
    /// Security level of the cluster: L2 checks no token, so the bench can ask the nodes'
    /// STATUS who leads and when the restarted node has caught up; at L5 it relies on the
    /// client's view and waits a fixed time for the rejoin.
    #[arg(long, value_enum, default_value = "l2", value_name = "RUNG")]
    rung: FailoverRung,
    /// The nodes' --election-timeout-ms [default: the node's, 500].
    #[arg(long, value_name = "MS")]
    election_timeout_ms: Option<u64>,
    /// Steady-load writers on the shard.
    #[arg(long, default_value_t = 8, value_name = "N")]
    writers: usize,
    /// Attempt timeout of the two probe writers, e.g. 200ms.
    #[arg(long, value_parser = parse_duration, default_value = "200ms", value_name = "D")]
    probe_timeout: Duration,
    /// Steady load before each kill.
    #[arg(long, value_parser = parse_duration, default_value = "2s", value_name = "D")]
    settle: Duration,
    /// Longest wait for a write after a kill before the try fails.
    #[arg(long, value_parser = parse_duration, default_value = "30s", value_name = "D")]
    give_up: Duration,
    /// Copy the nodes' logs (elections, restarts) into DIR at the end.
    #[arg(long, value_name = "DIR")]
    keep_logs: Option<PathBuf>,
}

/// Flags of `skv bench ladder`.
#[derive(Debug, Args)]
struct LadderArgs {
    /// Short cases (300 ms warmup, 1 s measured, one run each; under 2 minutes in all)
    /// instead of 1 s + 3 s with five runs of each main-ladder case (about 7 minutes, 9 with
    /// --compare redis).
    #[arg(long)]
    quick: bool,
    /// Output directory (created if missing).
    #[arg(long, default_value = "skv-ladder", value_name = "DIR")]
    out: PathBuf,
    /// The skv-node executable [default: skv-node next to this skv].
    #[arg(long, value_name = "PATH")]
    node_bin: Option<PathBuf>,
    /// Measured time per case, overriding --quick's (e.g. 200ms for a smoke test).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    duration: Option<Duration>,
    /// Warmup per case, overriding --quick's.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    warmup: Option<Duration>,
    /// Connections per case.
    #[arg(long, default_value_t = 50, value_name = "N")]
    conns: usize,
    /// Key space of GET cases (fewer for 16 KiB values, to bound the preload).
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    keys: u64,
    /// Runs of each main-ladder case, in rounds, each against a fresh node; the report keeps
    /// the fastest run
    /// [default: 5, or 1 with --quick]. Variants run once.
    #[arg(long, value_name = "N")]
    repeat: Option<usize>,
    /// Nodes per case: more than 1 starts a local cluster for every case (slots split
    /// evenly; the load generator routes each key to its node; server CPU is summed over the
    /// nodes), to compare per-operation cost against cluster size.
    #[arg(long, default_value_t = 1, value_name = "N")]
    nodes: usize,
    /// With --nodes N: keep N times each case's inflight per connection task, so every node
    /// connection carries what it does in a one-node ladder (clients that grow with the
    /// cluster), instead of a fixed client concurrency spread over the nodes.
    #[arg(long)]
    inflight_per_node: bool,
    /// Replicas per shard with --nodes N (1..=N; shard i on nodes i, i+1, …): every shard a
    /// Raft group, writes acknowledged by a quorum, reads linearizable through the leader.
    #[arg(long, default_value_t = 1, value_name = "R")]
    replicas: usize,
    /// Which cases: all (the security ladder), main (its main ladder only) or replication
    /// (see the values).
    #[arg(long, value_enum, default_value = "all", value_name = "SET")]
    cases: CasesArg,
    /// Measure a competitor beside the rungs, in the same run and rounds, with the same
    /// load shape (GET, 100-byte values, --conns connections, depth 1 and 16), and state
    /// targets as ratios to it. One node only.
    #[arg(long, value_enum, value_name = "SYSTEM")]
    compare: Option<CompareArg>,
    /// The redis-server for --compare redis [default: redis-server on PATH].
    #[arg(long, value_name = "PATH", requires = "compare")]
    redis_server: Option<PathBuf>,
    /// The redis-benchmark for --compare redis [default: redis-benchmark on PATH].
    #[arg(long, value_name = "PATH", requires = "compare")]
    redis_benchmark: Option<PathBuf>,
}

/// Run `skv bench`; returns the exit code.
pub(crate) fn run(conn: &ConnArgs, json: bool, args: BenchArgs) -> u8 {
    match args.command {
        Some(BenchCommand::Ladder(ladder)) => return run_ladder(json, ladder),
        Some(BenchCommand::Failover(failover)) => return run_failover(json, failover),
        None => {}
    }
    let result = data::connect_settings(conn).and_then(|(connect, seeds)| {
        let mut opts = options(connect, &args);
        opts.seeds = seeds;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(execute(opts, json, args.quiet, args.per_second))
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("skv: {err}");
            err.exit_code()
        }
    }
}

fn options(connect: skv_client::ConnectOptions, args: &BenchArgs) -> BenchOptions {
    let mut opts = BenchOptions::new(connect);
    opts.workload = args.workload;
    opts.keys = args.keys;
    opts.key_dist = args.key_dist;
    opts.value_size = args.value_size;
    opts.conns = args.conns;
    opts.inflight = args.inflight;
    opts.stop = match (args.requests, args.duration) {
        (Some(n), _) => Stop::Requests(n),
        (None, Some(d)) => Stop::Duration(d),
        (None, None) => Stop::Duration(Duration::from_secs(10)),
    };
    opts.warmup = args.warmup;
    opts.rate = args.rate;
    opts.reconnect_every = args.reconnect_every;
    opts.resume = args.resume;
    opts.direct = args.direct;
    opts.preload = !args.no_preload;
    opts.scan_limit = args.scan_limit;
    opts.seed = args.seed;
    opts
}

async fn execute(
    opts: BenchOptions,
    json: bool,
    quiet: bool,
    per_second: bool,
) -> Result<u8, ClientError> {
    // Check before anything is shown, so a usage error is one line and nothing else.
    opts.validate()?;
    let progress = Arc::new(Progress::new());
    let display = (!quiet).then(|| {
        let bar = !json && std::io::stderr().is_terminal();
        tokio::spawn(show_progress(progress.clone(), opts.clone(), bar))
    });
    let result = skv_load::run_with_progress(opts, progress).await;
    if let Some(display) = display {
        // It finishes its bar (or note) on seeing the Done phase.
        let _ = display.await;
    }
    let report = result?;
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| ClientError::Config(format!(
                "cannot encode the report as JSON: {e}"
            )))?
        );
    } else {
        print!("{}", report.table());
        if per_second {
            print!("{}", report.per_second_table());
        }
    }
    Ok(exit::OK)
}

/// Poll the run's counters: a progress bar on a terminal, else one note per phase.
async fn show_progress(progress: Arc<Progress>, opts: BenchOptions, bar: bool) {
    let pb = if bar {
        let pb = ProgressBar::new(1);
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<10} [{bar:30}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(100));
        Some(pb)
    } else {
        None
    };
    let mut announced = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let phase = progress.phase();
        // Announce every phase entered since the last look, in order, even a short one.
        for seen in Phase::ALL {
            if !progress.entered(seen) || announced.contains(&seen) {
                continue;
            }
            announced.push(seen);
            let note = match seen {
                Phase::Preloading => format!(
                    "preloading {} keys of {} bytes for the {} workload",
                    opts.keys, opts.value_size, opts.workload
                ),
                Phase::WarmingUp if !opts.warmup.is_zero() => {
                    format!("warming up for {:?}", opts.warmup)
                }
                Phase::Measuring => match opts.stop {
                    Stop::Duration(d) => format!("measuring for {d:?}"),
                    Stop::Requests(n) => format!("measuring {n} requests"),
                },
                Phase::Connecting | Phase::WarmingUp | Phase::Draining | Phase::Done => continue,
            };
            match &pb {
                Some(pb) => pb.println(format!("skv bench: {note}")),
                None => eprintln!("skv bench: {note}"),
            }
        }
        if let Some(pb) = &pb {
            pb.set_prefix(match phase {
                Phase::Connecting => "connecting",
                Phase::Preloading => "preloading",
                Phase::WarmingUp => "warming up",
                Phase::Measuring => "measuring",
                Phase::Draining => "draining",
                Phase::Done => "done",
            });
        }
        if phase == Phase::Done {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            return;
        }
        let Some(pb) = &pb else { continue };
        match phase {
            Phase::Preloading => {
                pb.set_length(opts.keys);
                pb.set_position(progress.preloaded());
                pb.set_message(format!("{}/{} keys", progress.preloaded(), opts.keys));
            }
            Phase::Measuring | Phase::Draining => {
                let since = progress.measuring_since().unwrap_or_else(Instant::now);
                let secs = since.elapsed().as_secs_f64();
                let done = progress.requests();
                match opts.stop {
                    Stop::Duration(d) => {
                        pb.set_length(d.as_millis() as u64);
                        pb.set_position(since.elapsed().as_millis() as u64);
                    }
                    Stop::Requests(n) => {
                        pb.set_length(n);
                        pb.set_position(done);
                    }
                }
                let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
                pb.set_message(format!(
                    "{done} requests, {rate:.0}/s, {} errors",
                    progress.errors()
                ));
            }
            _ => {
                pb.set_length(1);
                pb.set_position(0);
                pb.set_message(String::new());
            }
        }
    }
}

/// Run `skv bench ladder`: progress on stderr, the table and targets on stdout (the rows as
/// JSON with `--json`). Exit 0, or 5 if a main-ladder rung failed (the reports are written
/// either way).
fn run_ladder(json: bool, args: LadderArgs) -> u8 {
    let Some(node_bin) = node_bin(args.node_bin, "ladder") else {
        return exit::USAGE;
    };
    let mut opts = LadderOptions::new(args.out, node_bin);
    opts.quick = args.quick;
    opts.duration = args.duration;
    opts.warmup = args.warmup;
    opts.conns = args.conns;
    opts.keys = args.keys;
    opts.repeat = args.repeat;
    opts.nodes = args.nodes;
    opts.inflight_per_node = args.inflight_per_node;
    opts.replicas = args.replicas;
    opts.cases = match args.cases {
        CasesArg::All => CaseSet::All,
        CasesArg::Main => CaseSet::Main,
        CasesArg::Replication => CaseSet::Replication,
        CasesArg::TokenCache => CaseSet::TokenCache,
    };
    opts.compare_redis = args.compare == Some(CompareArg::Redis);
    opts.redis_server = args.redis_server;
    opts.redis_benchmark = args.redis_benchmark;
    opts.command = command_line();
    let outcome = match ladder::run(&opts, &mut |line| eprintln!("{line}")) {
        Ok(outcome) => outcome,
        Err(err) => {
            eprintln!("skv bench ladder: {err}");
            return err.exit_code();
        }
    };
    if json {
        match serde_json::to_string(&outcome.rows) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("skv bench ladder: cannot encode the rows as JSON: {e}");
                return exit::SERVER;
            }
        }
    } else {
        // The report's table and targets, without its header and explanations.
        let body = outcome
            .report_md
            .split("\n## The rungs")
            .next()
            .unwrap_or("");
        let body = body.split_once("## Results").map_or(body, |(_, rest)| rest);
        println!("{}", body.trim());
    }
    for warning in &outcome.warnings {
        eprintln!("skv bench ladder: warning: {warning}");
    }
    for path in &outcome.written {
        eprintln!("wrote {}", path.display());
    }
    let missed = outcome
        .targets
        .iter()
        .filter(|t| t.verdict != Verdict::Met)
        .count();
    eprintln!(
        "{} of {} targets met",
        outcome.targets.len() - missed,
        outcome.targets.len()
    );
    if outcome.failed_main.is_empty() {
        exit::OK
    } else {
        eprintln!(
            "skv bench ladder: main-ladder rungs failed: {} (see report.md)",
            outcome.failed_main.join(", ")
        );
        exit::SERVER
    }
}

/// The skv-node to start: `given`, or the one next to this executable.
fn node_bin(given: Option<PathBuf>, what: &str) -> Option<PathBuf> {
    match given {
        Some(path) => Some(path),
        None => match std::env::current_exe() {
            Ok(exe) => Some(ladder::default_node_bin(&exe)),
            Err(e) => {
                eprintln!("skv bench {what}: cannot find this executable ({e}); give --node-bin");
                None
            }
        },
    }
}

/// This process's command line, quoted for a shell.
fn command_line() -> String {
    std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `skv bench failover`: progress on stderr, the result on stdout (failover.json's
/// content with `--json`). Exit 0 when every try measured a failover, else 5 (the reports
/// are written either way).
fn run_failover(json: bool, args: FailoverArgs) -> u8 {
    let Some(node_bin) = node_bin(args.node_bin, "failover") else {
        return exit::USAGE;
    };
    let mut opts = FailoverOptions::new(args.out, node_bin);
    opts.nodes = args.nodes;
    opts.replicas = args.replicas;
    opts.tries = args.tries;
    opts.rung = match args.rung {
        FailoverRung::L2 => Rung::L2,
        FailoverRung::L5 => Rung::L5,
    };
    opts.election_timeout_ms = args.election_timeout_ms;
    opts.writers = args.writers;
    opts.probe_timeout = args.probe_timeout;
    opts.settle = args.settle;
    opts.give_up = args.give_up;
    opts.keep_logs = args.keep_logs;
    opts.command = command_line();
    let outcome = match failover::run(&opts, &mut |line| eprintln!("{line}")) {
        Ok(outcome) => outcome,
        Err(err) => {
            eprintln!("skv bench failover: {err}");
            return err.exit_code();
        }
    };
    if json {
        match serde_json::to_string(&outcome.report) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("skv bench failover: cannot encode the report as JSON: {e}");
                return exit::SERVER;
            }
        }
    } else {
        let body = outcome
            .report_md
            .split_once("## Result")
            .map_or(outcome.report_md.as_str(), |(_, rest)| rest);
        println!("{}", body.trim());
    }
    for path in &outcome.written {
        eprintln!("wrote {}", path.display());
    }
    let failed = outcome
        .report
        .tries
        .iter()
        .filter(|t| t.failover_ms.is_none())
        .count();
    if failed == 0 {
        exit::OK
    } else {
        eprintln!("skv bench failover: {failed} tries measured no failover (see failover.md)");
        exit::SERVER
    }
}

/// `arg` as a shell would need it written (single quotes when it holds anything unusual).
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}
