//! `skv bench`: parse the flags, run the library's load generator, print its report.
//! The engine (and the reasoning behind it) is in `skv_load`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use skv_client::{exit, ClientError};
use skv_load::ladder::{self, LadderOptions, Verdict};
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
    /// Entries per SCAN (scan workload).
    #[arg(long, default_value_t = 10, value_name = "N")]
    scan_limit: u32,
    /// Seed for key choice and the read/write mix; runs with equal seeds send equal keys.
    #[arg(long, default_value_t = 1, value_name = "N")]
    seed: u64,
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
}

/// Flags of `skv bench ladder`.
#[derive(Debug, Args)]
struct LadderArgs {
    /// Short cases (300 ms warmup, 1 s measured, one run each; under 2 minutes in all)
    /// instead of 1 s + 3 s with five runs of each main-ladder case (about 7 minutes).
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
}

/// Run `skv bench`; returns the exit code.
pub(crate) fn run(conn: &ConnArgs, json: bool, args: BenchArgs) -> u8 {
    if let Some(BenchCommand::Ladder(ladder)) = args.command {
        return run_ladder(json, ladder);
    }
    let result = data::connect_settings(conn).and_then(|(connect, seeds)| {
        let mut opts = options(connect, &args);
        opts.seeds = seeds;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(execute(opts, json, args.quiet))
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
    opts.scan_limit = args.scan_limit;
    opts.seed = args.seed;
    opts
}

async fn execute(opts: BenchOptions, json: bool, quiet: bool) -> Result<u8, ClientError> {
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
    let node_bin = match args.node_bin {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => ladder::default_node_bin(&exe),
            Err(e) => {
                eprintln!("skv bench ladder: cannot find this executable ({e}); give --node-bin");
                return exit::USAGE;
            }
        },
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
    opts.command = std::env::args()
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
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
