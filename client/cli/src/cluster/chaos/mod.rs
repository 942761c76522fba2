//! `skv cluster chaos`: a cluster on this machine with a fault proxy between its nodes, a
//! recorded workload, faults injected on a schedule, then a full heal, final reads, the
//! linearizability check of the history and a report (docs/FAULTS.md).
//!
//! The same engine runs in the test suite (short runs, one per fault kind) and for users
//! (as long as they like). Everything a run leaves is under DIR: the cluster (configs,
//! PKI, data, node logs) and DIR/chaos/ with the history, the report and the chart.

mod faults;
mod proxy;
mod report;
mod workload;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use skv_client::{exit, ClusterClient, Failover};
use skv_proto::cluster::ClusterMap;
use tokio::time::Instant;

use super::{process, ClusterDir, Failure, Result};
use crate::args::ClusterChaosArgs;
use faults::{FaultKind, Injector};
use report::FaultEvent;

/// The cluster name of every chaos cluster.
const CLUSTER: &str = "chaos";
/// The file that marks DIR as written by `skv cluster chaos`.
const MARKER: &str = "chaos.json";
/// How long the cluster has to recover (every node up, every key readable) after the
/// final heal.
const RECOVERY: Duration = Duration::from_secs(60);
/// The most nodes a chaos cluster has (each gets its own loopback address, 127.0.0.11 on).
const MAX_NODES: u16 = 32;
/// The most concurrent clients of a run: each is a task with its own operations in flight.
const MAX_CLIENTS: usize = 1000;
/// The most keys a run spreads its operations over.
const MAX_KEYS: usize = 10_000;
/// How long to wait for every shard to elect its first leader.
const FIRST_LEADERS: Duration = Duration::from_secs(30);

/// What the run was asked to do, recorded in DIR/chaos.json and the report.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    nodes: u16,
    replicas: usize,
    faults: Vec<String>,
    every_s: f64,
    hold_s: f64,
    duration_s: f64,
    clients: usize,
    keys: usize,
    rate: u32,
    op_timeout_s: f64,
    seed: u64,
}

/// Everything `--json` prints (and DIR/chaos/report.json holds).
#[derive(Debug, Serialize)]
struct ChaosReport {
    settings: Settings,
    counts: report::Counts,
    faults: Vec<FaultEvent>,
    unavailability: Vec<report::Window>,
    failover_s: Option<Percentiles>,
    per_second: Vec<(u64, u64, u64)>,
    check: serde_json::Value,
    indeterminate: Fates,
    linearizable: bool,
    verdict: String,
    history: String,
    chart: String,
    problems: Vec<String>,
}

/// What became of the operations whose outcome the clients could not know, and of the
/// acknowledged writes.
#[derive(Debug, Default, Serialize)]
struct Fates {
    /// Operations recorded as unknown.
    unknown: u64,
    /// Of those, placed in the order the checker found (they took effect).
    applied: u64,
    /// Of those, shown never to have taken effect.
    not_applied: u64,
    /// Writes the clients were told succeeded.
    acknowledged_writes: u64,
    /// Acknowledged writes the final reads show were lost.
    acknowledged_writes_lost: u64,
}

impl Fates {
    fn of(report: &skv_check::check::Report) -> Fates {
        let mut fates = Fates {
            unknown: report.summary.unknown,
            acknowledged_writes: report.summary.acknowledged_writes,
            acknowledged_writes_lost: report.summary.acknowledged_writes_lost,
            ..Fates::default()
        };
        for key in &report.keys {
            if let skv_check::check::KeyVerdict::Linearizable { indeterminate } = &key.verdict {
                for op in indeterminate {
                    if op.applied {
                        fates.applied += 1;
                    } else {
                        fates.not_applied += 1;
                    }
                }
            }
        }
        fates
    }
}

#[derive(Debug, Serialize)]
struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
    count: usize,
}

pub(super) fn run(args: ClusterChaosArgs, json: bool) -> Result<u8> {
    let kinds = faults::parse_list(&args.faults).map_err(Failure::usage)?;
    if args.nodes > MAX_NODES {
        return Err(Failure::usage(format!(
            "--nodes {}: a chaos cluster runs on this machine, with at most {MAX_NODES} nodes",
            args.nodes
        )));
    }
    if args.nodes < 3 {
        return Err(Failure::usage(
            "--nodes must be at least 3: with fewer, no shard survives the loss of a replica",
        ));
    }
    let replicas = args.replicas.map_or_else(
        || ClusterMap::default_replicas(usize::from(args.nodes)),
        usize::from,
    );
    if replicas < 3 || replicas > usize::from(args.nodes) {
        return Err(Failure::usage(format!(
            "--replicas {replicas}: choose 3 to {} (a shard of fewer than 3 replicas cannot \
             survive a fault)",
            args.nodes
        )));
    }
    if !(1..=MAX_CLIENTS).contains(&args.clients) || !(1..=MAX_KEYS).contains(&args.keys) {
        return Err(Failure::usage(format!(
            "--clients must be 1 to {MAX_CLIENTS}, and --keys 1 to {MAX_KEYS}"
        )));
    }
    if args.op_timeout < Duration::from_millis(100) {
        return Err(Failure::usage("--op-timeout must be at least 100ms"));
    }
    if args.every.is_zero() || args.duration.is_zero() {
        return Err(Failure::usage(
            "--every and --duration must be longer than 0",
        ));
    }
    let hold = args.hold.unwrap_or(args.every / 2);
    if hold >= args.every {
        return Err(Failure::usage(
            "--hold must be shorter than --every (each fault is healed before the next)",
        ));
    }
    let disk = kinds.contains(&FaultKind::DiskFull);
    if disk && !is_root() {
        return Err(Failure::usage(
            "the disk-full fault puts a node's data directory on a small tmpfs, which needs \
             root; run as root or leave disk-full out of --faults",
        ));
    }
    let seed = args.seed.unwrap_or_else(|| rand::thread_rng().gen());
    let settings = Settings {
        nodes: args.nodes,
        replicas,
        faults: kinds.iter().map(|k| k.name().to_owned()).collect(),
        every_s: args.every.as_secs_f64(),
        hold_s: hold.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        clients: args.clients,
        keys: args.keys,
        rate: args.rate,
        op_timeout_s: args.op_timeout.as_secs_f64(),
        seed,
    };

    let (dir, routes, nodes) = prepare(&args.dir, &settings, disk)?;
    let small_disk = disk.then(|| format!("n{}", args.nodes));
    if let Some(node) = &small_disk {
        mount_small_disk(&dir, node)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the async runtime: {e}")))?;
    let outcome = runtime.block_on(run_cluster(
        &dir,
        routes,
        nodes,
        &settings,
        &kinds,
        hold,
        small_disk.clone(),
        json,
    ));
    // Whatever happened, leave no node running and nothing mounted.
    for (id, _) in process::running_nodes(&dir) {
        let _ = process::stop_node(&dir, &id);
    }
    reap_children();
    if let Some(node) = &small_disk {
        unmount_small_disk(&dir, node);
    }
    outcome
}

/// One node's addresses in a chaos cluster: where it listens, and the proxy port the map
/// advertises for it.
fn listen_ip(i: u16) -> Ipv4Addr {
    // 127.0.0.11, .12, …: every node its own loopback address, so the proxy can tell them
    // apart by source (Linux routes all of 127/8 to lo).
    Ipv4Addr::new(127, 0, 0, 10 + u8::try_from(i).unwrap_or(u8::MAX - 10))
}

/// A chaos cluster written and ready to start: its directory, the proxy's routes (ports
/// already bound) and `(id, advertised address)` per node.
type Prepared = (ClusterDir, Vec<proxy::Route>, Vec<(String, String)>);

/// Make DIR a fresh chaos cluster: refuse a directory holding anything else, replace an
/// earlier chaos cluster, write PKI, issuer, map and node configs. Returns the proxy
/// routes (listeners already bound) and `(id, advertised address)` per node.
fn prepare(root: &Path, settings: &Settings, disk: bool) -> Result<Prepared> {
    fs::create_dir_all(root)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", root.display())))?;
    let root = root
        .canonicalize()
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", root.display())))?;
    let entries: Vec<String> = fs::read_dir(&root)
        .map_err(|e| Failure::usage(format!("cannot read {}: {e}", root.display())))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if !entries.is_empty() {
        if !root.join(MARKER).is_file() {
            return Err(Failure::usage(format!(
                "{} is not empty and was not written by `skv cluster chaos` (no {MARKER}); \
                 a chaos run replaces its directory's cluster, so give it a new or empty --dir",
                root.display()
            )));
        }
        let dir = ClusterDir { root: root.clone() };
        if let Some((id, pid)) = process::running_nodes(&dir).first() {
            return Err(Failure::usage(format!(
                "node {id} (pid {pid}) of the chaos cluster in {} still runs; stop it with \
                 `skv cluster down --dir {}`",
                root.display(),
                root.display()
            )));
        }
        for n in 1..=MAX_NODES {
            unmount_small_disk(&dir, &format!("n{n}"));
        }
        for entry in entries {
            let path = root.join(&entry);
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed
                .map_err(|e| Failure::usage(format!("cannot remove {}: {e}", path.display())))?;
        }
    }

    let mut routes = Vec::new();
    let mut nodes = Vec::new();
    let mut listens = Vec::new();
    for i in 1..=settings.nodes {
        let id = format!("n{i}");
        let proxy = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Failure::usage(format!("cannot bind a proxy port: {e}")))?;
        let advertised = proxy
            .local_addr()
            .map_err(|e| Failure::usage(e.to_string()))?;
        let listen = free_port(listen_ip(i))?;
        nodes.push((id.clone(), advertised.to_string()));
        listens.push(listen);
        routes.push(proxy::Route {
            node: id,
            listener: proxy,
            target: listen,
        });
    }
    let map = ClusterMap::even_replicated(CLUSTER, &nodes, settings.replicas)
        .map_err(|e| Failure::usage(format!("internal: the chaos map: {e}")))?;
    let dir = ClusterDir { root: root.clone() };
    let addrs: Vec<String> = nodes.iter().map(|(_, a)| a.clone()).collect();
    super::init::write_everything(&dir, CLUSTER, &nodes, &map, &addrs)?;
    for ((id, advertised), listen) in nodes.iter().zip(&listens) {
        let path = dir.node_config(id);
        let text = fs::read_to_string(&path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        let text = text.replace(
            &format!("listen = \"{advertised}\"\n"),
            &format!(
                "# The node listens on its own loopback address; the map advertises the chaos\n\
                 # fault proxy, which carries every connection to it.\n\
                 listen = \"{listen}\"\nadvertise = \"{advertised}\"\n"
            ),
        );
        super::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(Failure::usage)?;
    }
    for d in [
        root.join("data"),
        dir.logs_dir(),
        dir.run_dir(),
        root.join("chaos"),
    ] {
        fs::create_dir_all(&d)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", d.display())))?;
    }
    if disk {
        fs::create_dir_all(root.join("data").join(format!("n{}", settings.nodes))).map_err(
            |e| Failure::usage(format!("cannot create the small disk's mount point: {e}")),
        )?;
    }
    let marker = serde_json::to_vec_pretty(settings).unwrap_or_default();
    super::files::write_atomic(&root.join(MARKER), &marker, 0o644).map_err(Failure::usage)?;
    Ok((dir, routes, nodes))
}

/// Collect the exit status of every node process of ours that has ended (killed by a fault,
/// or stopped), so none lingers as a zombie while the run goes on. Only node processes are
/// children of this command while the schedule runs (mount and umount run before and after).
fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Whether this process runs as root: /proc/self belongs to the effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port on `ip` that is free now (the node binds it a moment later).
fn free_port(ip: Ipv4Addr) -> Result<SocketAddr> {
    let probe = std::net::TcpListener::bind((ip, 0)).map_err(|e| {
        Failure::usage(format!(
            "cannot bind {ip} (a chaos cluster gives every node its own loopback address): {e}"
        ))
    })?;
    probe
        .local_addr()
        .map_err(|e| Failure::usage(e.to_string()))
}

fn mount_small_disk(dir: &ClusterDir, node: &str) -> Result<()> {
    let point = dir.root().join("data").join(node);
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(format!("size={}m,mode=0700", faults::SMALL_DISK_MB))
        .arg("skv-chaos")
        .arg(&point)
        .status()
        .map_err(|e| Failure::usage(format!("cannot run mount: {e}")))?;
    if !status.success() {
        return Err(Failure::usage(format!(
            "mount -t tmpfs on {} failed ({status}); the disk-full fault needs it",
            point.display()
        )));
    }
    Ok(())
}

fn unmount_small_disk(dir: &ClusterDir, node: &str) {
    let point = dir.root().join("data").join(node);
    let mounted = fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&*point.to_string_lossy()))
        })
        .unwrap_or(false);
    if mounted {
        let _ = std::process::Command::new("umount").arg(&point).status();
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_cluster(
    dir: &ClusterDir,
    routes: Vec<proxy::Route>,
    nodes: Vec<(String, String)>,
    settings: &Settings,
    kinds: &[FaultKind],
    hold: Duration,
    small_disk: Option<String>,
    json: bool,
) -> Result<u8> {
    let say = |line: String| {
        if !json {
            println!("{line}");
        }
    };
    let proxy = proxy::Proxy::start(routes)
        .map_err(|e| Failure::usage(format!("cannot start the fault proxy: {e}")))?;
    let token = dir.admin_token()?;
    let files = dir.node_files()?;
    let started = process::start_missing_quiet(dir, &files)?;
    let failed = process::wait_ready_quiet(dir, &token, &files, started).await;
    if !failed.is_empty() {
        return Err(Failure::connection(format!(
            "{} did not start; see {}",
            failed.join(", "),
            dir.logs_dir().display()
        )));
    }
    let injector = Injector {
        dir: dir.clone(),
        token: token.clone(),
        nodes: nodes.clone(),
        proxy,
        small_disk,
    };
    let shards = ClusterMap::even_replicated(CLUSTER, &nodes, settings.replicas)
        .map(|m| m.shards.len())
        .unwrap_or(0);
    let waited = Instant::now();
    while injector.leaders().await.len() < shards {
        if waited.elapsed() > FIRST_LEADERS {
            return Err(Failure::connection(format!(
                "the shards did not all elect a leader within {FIRST_LEADERS:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    say(format!(
        "chaos: {} nodes, {} replicas per shard, {} clients on {} keys at {} ops/s each \
         (giving up after {:?}); faults {} every {:?} for {:?} (held {:?}); seed {}",
        settings.nodes,
        settings.replicas,
        settings.clients,
        settings.keys,
        settings.rate,
        Duration::from_secs_f64(settings.op_timeout_s),
        settings.faults.join(","),
        Duration::from_secs_f64(settings.every_s),
        Duration::from_secs_f64(settings.duration_s),
        hold,
        settings.seed
    ));

    let op_timeout = Duration::from_secs_f64(settings.op_timeout_s);
    let client = connect(dir, &token, &nodes).await?.with_failover(Failover {
        attempt_timeout: op_timeout.min(Failover::default().attempt_timeout),
        deadline: op_timeout,
        ..Failover::default()
    });
    let map = client.map();
    let start = Instant::now();
    let recorder = workload::Recorder::new(start);
    let stop = Arc::new(AtomicBool::new(false));
    let plan = workload::Plan {
        clients: settings.clients,
        keys: settings.keys,
        rate: settings.rate,
        seed: settings.seed,
    };
    let load = tokio::spawn(workload::run(
        client.clone(),
        plan,
        recorder.clone(),
        stop.clone(),
    ));

    let mut rng = StdRng::seed_from_u64(settings.seed ^ 0x5eed_fa17);
    let mut order: Vec<FaultKind> = Vec::new();
    let mut events: Vec<FaultEvent> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut active = Vec::new();
    let every = Duration::from_secs_f64(settings.every_s);
    let duration = Duration::from_secs_f64(settings.duration_s);
    let mut next = start + every;
    while next + hold <= start + duration {
        tokio::time::sleep_until(next).await;
        if order.is_empty() {
            // Every kind once per round, in a seeded order.
            order = kinds.to_vec();
            order.shuffle(&mut rng);
        }
        let kind = order.pop().unwrap_or(FaultKind::Kill);
        let at = start.elapsed().as_secs_f64();
        match injector.inject(kind, &mut rng).await {
            Ok(fault) => {
                say(format!("{at:7.2} s  {}: {}", kind, fault.detail));
                events.push(FaultEvent {
                    kind: kind.name().to_owned(),
                    detail: fault.detail.clone(),
                    shard: fault.shard,
                    injected_s: at,
                    healed_s: None,
                    failover_s: None,
                });
                active.push(fault.clone());
                tokio::time::sleep(hold).await;
                let healed_at = start.elapsed().as_secs_f64();
                reap_children();
                match injector.heal(&fault).await {
                    Ok(()) => {
                        say(format!("{healed_at:7.2} s  healed {kind}"));
                        active.pop();
                    }
                    Err(e) => {
                        say(format!(
                            "{healed_at:7.2} s  heal of {kind} failed: {}",
                            e.message
                        ));
                        problems.push(format!("heal of {kind} at {healed_at:.2} s: {}", e.message));
                    }
                }
                if let Some(last) = events.last_mut() {
                    last.healed_s = Some(healed_at);
                }
            }
            Err(e) => {
                say(format!("{at:7.2} s  {kind} skipped: {}", e.message));
                problems.push(format!("{kind} at {at:.2} s skipped: {}", e.message));
            }
        }
        next += every;
    }
    tokio::time::sleep_until(start + duration).await;
    stop.store(true, Ordering::Relaxed);
    let _ = load.await;
    let healed = injector.heal_all(&active).await;
    if let Err(e) = &healed {
        problems.push(format!("final heal: {}", e.message));
    }
    let recovered = workload::final_reads(&client, &recorder, settings.keys, RECOVERY).await;
    if let Err(e) = &recovered {
        problems.push(e.clone());
    }

    let records = recorder.records();
    for event in &mut events {
        if FaultKind::ALL
            .iter()
            .any(|k| k.name() == event.kind && k.targets_leader())
        {
            if let Some(shard) = event.shard {
                event.failover_s = report::failover(&records, &map, shard, event.injected_s);
            }
        }
    }
    let chaos_dir = dir.root().join("chaos");
    let history_path = chaos_dir.join("history.jsonl");
    write_history(&history_path, &records)?;
    let (check, verdict, linearizable, fates) = match skv_check::check::check_history(&records) {
        Ok(report) => {
            let linearizable = matches!(report.verdict, skv_check::check::Verdict::Linearizable);
            let fates = Fates::of(&report);
            (
                serde_json::to_value(&report).unwrap_or_default(),
                report.to_string(),
                linearizable,
                fates,
            )
        }
        // The recorder wrote it, so an invalid history is a bug of ours; say so plainly.
        Err(e) => (
            serde_json::Value::Null,
            format!("NOT checked: the recorded history is invalid ({e})"),
            false,
            Fates::default(),
        ),
    };
    let failovers: Vec<f64> = events.iter().filter_map(|e| e.failover_s).collect();
    let per_second = report::per_second(&records);
    let chart_path = chaos_dir.join("throughput.svg");
    let windows = report::windows(&records, &map);
    match chart_svg(&per_second, &events, &windows) {
        Ok(svg) => {
            if let Err(e) = fs::write(&chart_path, svg) {
                problems.push(format!("cannot write {}: {e}", chart_path.display()));
            }
        }
        Err(e) => problems.push(format!("cannot draw the chart: {e}")),
    }
    let out = ChaosReport {
        settings: settings.clone(),
        counts: report::counts(&records),
        faults: events,
        unavailability: windows,
        failover_s: report::percentiles(&failovers).map(|(p50, p99, max)| Percentiles {
            p50,
            p99,
            max,
            count: failovers.len(),
        }),
        per_second,
        check,
        indeterminate: fates,
        linearizable,
        verdict,
        history: history_path.display().to_string(),
        chart: chart_path.display().to_string(),
        problems,
    };
    let json_text = serde_json::to_string_pretty(&out).unwrap_or_default();
    let _ = fs::write(chaos_dir.join("report.json"), &json_text);
    if json {
        println!("{json_text}");
    } else {
        print!("{}", render(&out));
    }
    if !out.linearizable {
        return Ok(exit::NOT_FOUND);
    }
    if healed.is_err() || recovered.is_err() {
        return Ok(exit::CONNECTION);
    }
    Ok(exit::OK)
}

async fn connect(
    dir: &ClusterDir,
    token: &str,
    nodes: &[(String, String)],
) -> Result<ClusterClient> {
    let opts = dir.admin_options(&nodes[0].1, token);
    let seeds = nodes.iter().map(|(_, a)| a.clone()).collect();
    ClusterClient::connect(opts, seeds)
        .await
        .map_err(|e| Failure::client("cannot connect the workload", &e))
}

fn write_history(path: &Path, records: &[skv_check::history::Record]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).unwrap_or_default());
        text.push('\n');
    }
    fs::write(path, text)
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))
}

/// Operations per second, a line at each fault and its heal, and each shard's
/// unavailability shaded.
fn chart_svg(
    per_second: &[(u64, u64, u64)],
    events: &[FaultEvent],
    windows: &[report::Window],
) -> std::result::Result<String, skv_load::ChartError> {
    let samples: Vec<skv_load::SecondSample> = per_second
        .iter()
        .map(|&(second, ops, errors)| skv_load::SecondSample {
            second,
            ops,
            errors,
        })
        .collect();
    // A long run has too many events to label: its chart keeps the lines and the shading,
    // and the report lists what each one was.
    let labelled = events.len() <= 12;
    let label = |text: String| if labelled { text } else { String::new() };
    let mut markers = Vec::new();
    for e in events {
        markers.push(skv_load::Marker {
            at_second: e.injected_s,
            label: label(e.kind.clone()),
        });
        if let (Some(healed), true) = (e.healed_s, labelled) {
            markers.push(skv_load::Marker {
                at_second: healed,
                label: "heal".into(),
            });
        }
    }
    let spans: Vec<skv_load::Span> = windows
        .iter()
        .map(|w| skv_load::Span {
            from_second: w.from_s,
            to_second: w.to_s,
            label: label(format!("shard {}", w.shard)),
        })
        .collect();
    let title = if labelled {
        "skv cluster chaos: operations per second".to_owned()
    } else {
        format!(
            "skv cluster chaos: operations per second ({} faults, each a line; shaded: a shard unavailable)",
            events.len()
        )
    };
    skv_load::throughput_chart_svg(&title, &samples, &markers, &spans)
}

/// The human report.
fn render(r: &ChaosReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &r.counts;
    let _ = writeln!(
        s,
        "\noperations: {} ({} ok, {} failed with no effect, {} indeterminate)",
        c.operations, c.ok, c.failed, c.unknown
    );
    if !c.errors.is_empty() {
        let errors: Vec<String> = c.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "errors by kind: {}", errors.join(", "));
    }
    let _ = writeln!(s, "faults injected: {}", r.faults.len());
    let f = &r.indeterminate;
    let _ = writeln!(
        s,
        "indeterminate: {} ({} took effect, {} did not); acknowledged writes: {}, lost: {}",
        f.unknown, f.applied, f.not_applied, f.acknowledged_writes, f.acknowledged_writes_lost
    );
    if r.unavailability.is_empty() {
        let _ = writeln!(
            s,
            "unavailability: none (no shard left an operation unanswered for {} ms)",
            report::UNAVAILABLE_AFTER_MS
        );
    } else {
        let _ = writeln!(
            s,
            "unavailability (operations failing or slower than {} ms):",
            report::UNAVAILABLE_AFTER_MS
        );
        for w in &r.unavailability {
            let _ = writeln!(
                s,
                "  shard {}: {:.2}-{:.2} s ({:.2} s)",
                w.shard,
                w.from_s,
                w.to_s,
                w.seconds()
            );
        }
    }
    match &r.failover_s {
        Some(p) => {
            let _ = writeln!(
                s,
                "failover after {} leader faults: p50 {:.2} s, p99 {:.2} s, max {:.2} s",
                p.count, p.p50, p.p99, p.max
            );
        }
        None => {
            let _ = writeln!(s, "failover: no fault took a leader away");
        }
    }
    for p in &r.problems {
        let _ = writeln!(s, "problem: {p}");
    }
    let _ = writeln!(s, "history: {}", r.history);
    let _ = writeln!(s, "chart: {}", r.chart);
    let _ = writeln!(s, "verdict: {}", r.verdict);
    s
}
