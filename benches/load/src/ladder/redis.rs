//! `--compare redis`: Redis measured beside the rungs, in the same run, on the same machine,
//! with the same shape of load, so the report can state its targets as ratios to what was
//! measured minutes apart rather than to numbers from another day.
//!
//! This module owns finding `redis-server` and `redis-benchmark`, starting a fresh
//! `redis-server` per run (plaintext, or mutual TLS 1.3 with the ladder's own P-256 dev PKI),
//! preloading its keys, driving `redis-benchmark` and turning what it prints, and the server's
//! CPU time from /proc, into [`LadderRow`]s. When the binaries are missing the rows are
//! "skipped" with the reason: a comparison never fails the ladder.
//!
//! The shape is the main ladder's: GET of 100-byte values over `conns` connections, pipeline
//! depth 1 and 16 (redis-benchmark's `-P`, the counterpart of skv's inflight), uniform keys
//! over the same key space, every key preloaded, a warmup, then a measured window. Redis's
//! io-threads stay off (its default), so it serves requests on one thread, as it usually
//! runs; redis-benchmark runs single-threaded (its default), one core for each side on a
//! 2-core machine.
//!
//! redis-benchmark takes a request count, not a duration: a short calibration run (and then
//! the warmup) gives its rate on this machine, and the measured run asks for rate × duration
//! requests. The server's CPU is read at the edges of that run, so the window holds
//! redis-benchmark's 50 connects (and TLS handshakes) too: a handful of milliseconds in
//! seconds of load, charged against Redis.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skv_certs::Layout;

use super::node;
use super::LadderRow;

/// How long a redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Replies of the preload read per pipelined batch of SETs.
const PRELOAD_BATCH: u64 = 500;

/// Largest reply the ladder reads from Redis (an INFO section is a few KiB).
const MAX_REPLY: usize = 1 << 20;

/// Fewest and most requests of one redis-benchmark run: enough for every connection to
/// send a few pipelines, and a bound whatever the calibration said.
const MIN_REQUESTS: u64 = 1_000;
const MAX_REQUESTS: u64 = 100_000_000;

/// Lines of the server's log quoted when it fails.
const LOG_TAIL_LINES: usize = 6;

/// The label of a Redis row's `rung`, its plaintext baseline's included.
pub(crate) const PLAIN: &str = "redis plain";
/// The same with mutual TLS.
pub(crate) const MTLS: &str = "redis mTLS";

/// One Redis row to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RedisCase {
    /// Mutual TLS 1.3 (tls-port, tls-auth-clients yes) instead of plaintext TCP.
    pub(crate) tls: bool,
    /// redis-benchmark's `-P`: requests each connection keeps in flight.
    pub(crate) pipeline: usize,
}

impl RedisCase {
    /// Plain and mutual TLS, at pipeline 1 and 16: the main ladder's two depths.
    pub(crate) fn all() -> Vec<RedisCase> {
        let mut cases = Vec::new();
        for tls in [false, true] {
            for pipeline in [1, 16] {
                cases.push(RedisCase { tls, pipeline });
            }
        }
        cases
    }

    /// "redis plain" or "redis mTLS".
    pub(crate) fn label(self) -> &'static str {
        if self.tls {
            MTLS
        } else {
            PLAIN
        }
    }

    /// What the row measures, in a few words.
    pub(crate) fn adds(self) -> &'static str {
        if self.tls {
            "Redis, mutual TLS 1.3 (tls-auth-clients yes), io-threads off"
        } else {
            "Redis, plaintext TCP, io-threads off"
        }
    }

    /// A one-line description for progress output.
    pub(crate) fn title(self) -> String {
        format!("{}: get 100 B, pipeline {}", self.label(), self.pipeline)
    }
}

/// The Redis executables, found.
#[derive(Debug, Clone)]
pub(crate) struct RedisBins {
    pub(crate) server: PathBuf,
    pub(crate) benchmark: PathBuf,
    /// e.g. "redis 7.0.15" (from `redis-server --version`), or "redis" if it did not say.
    pub(crate) system: String,
}

impl RedisBins {
    /// `server` and `benchmark` where given, else looked up on PATH. `Err` says which is
    /// missing, as the note of a skipped row.
    pub(crate) fn locate(
        server: Option<&Path>,
        benchmark: Option<&Path>,
    ) -> Result<RedisBins, String> {
        let server = find_executable("redis-server", server)?;
        let benchmark = find_executable("redis-benchmark", benchmark)?;
        let version = Command::new(&server)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default();
        let system = match parse_version(&version) {
            Some(v) => format!("redis {v}"),
            None => "redis".into(),
        };
        Ok(RedisBins {
            server,
            benchmark,
            system,
        })
    }
}

/// `given` if it is an executable file, else `name` on PATH; the error is the skipped row's
/// note.
fn find_executable(name: &str, given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return if is_executable(path) {
            Ok(path.to_owned())
        } else {
            Err(format!("{name} not found at {}", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| {
            format!(
                "{name} not found on PATH (install redis-server and redis-tools, or give \
                 --{name} PATH)"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// "7.0.15" out of `Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 ...`.
fn parse_version(text: &str) -> Option<&str> {
    let v = text.split_whitespace().find_map(|w| w.strip_prefix("v="))?;
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then_some(v)
}

/// What a Redis row is measured with.
#[derive(Debug)]
pub(crate) struct RedisRun<'a> {
    pub(crate) bins: &'a RedisBins,
    /// The ladder's P-256 dev PKI: node n1's certificate for the server, alice's for
    /// redis-benchmark.
    pub(crate) pki: &'a Layout,
    /// A directory of this run's own (the server's data dir and log).
    pub(crate) dir: PathBuf,
    pub(crate) conns: usize,
    pub(crate) keys: u64,
    pub(crate) value_size: usize,
    pub(crate) warmup: Duration,
    pub(crate) measure: Duration,
}

/// What one redis-benchmark run printed and cost, with the CPU samples of its window.
#[derive(Debug)]
struct BenchRun {
    result: CsvResult,
    requests: u64,
    /// Connections redis-benchmark opened (each with a TLS handshake at mTLS).
    connections: u64,
    wall: Duration,
    server_ticks: Option<u64>,
    bench_ticks: Option<u64>,
    machine_ticks: Option<u64>,
}

/// Measure `case` into `row` (a blank row with its labels set): a fresh redis-server, the
/// preload, the calibration and warmup runs, the measured run. Any failure is a failed row
/// with the reason, never a panic or an error out of the ladder.
pub(crate) fn measure(run: &RedisRun<'_>, case: RedisCase, mut row: LadderRow) -> LadderRow {
    row.system = run.bins.system.clone();
    match measure_inner(run, case, &mut row) {
        Ok(()) => row,
        Err(e) => {
            row.status = super::RowStatus::Failed;
            row.error = Some(e);
            row
        }
    }
}

fn measure_inner(run: &RedisRun<'_>, case: RedisCase, row: &mut LadderRow) -> Result<(), String> {
    std::fs::create_dir_all(&run.dir)
        .map_err(|e| format!("cannot create {}: {e}", run.dir.display()))?;
    let mut server = RedisServer::start(run, case.tls)?;
    let result = drive(run, case, &mut server, row);
    // A server that died mid-run says so, whatever the benchmark made of it.
    if let Some(status) = server.exited() {
        return Err(format!(
            "redis-server exited during the run ({status}); its log ends with: {}",
            server.log_tail()
        ));
    }
    server.stop();
    result
}

fn drive(
    run: &RedisRun<'_>,
    case: RedisCase,
    server: &mut RedisServer,
    row: &mut LadderRow,
) -> Result<(), String> {
    let mut admin = Resp::connect(server.plain_port)?;
    preload(&mut admin, run.keys, run.value_size)?;
    let port = server.tls_port.unwrap_or(server.plain_port);
    let args = bench_args(run, case, port);

    // Calibration: a short run whose rate sizes the warmup, whose rate sizes the measured run.
    let calibration = (run.conns as u64 * case.pipeline as u64 * 40).max(10_000);
    let mut rate = bench(run, &args, calibration, server.pid())?.result.rps;
    if !run.warmup.is_zero() {
        rate = bench(run, &args, requests_for(rate, run.warmup), server.pid())?
            .result
            .rps;
    }
    let before = admin.info_stats()?;
    let measured = bench(run, &args, requests_for(rate, run.measure), server.pid())?;
    let after = admin.info_stats()?;

    // Every GET must have found its key, or Redis answered cheaper nils, not 100-byte values.
    let misses = after.misses.saturating_sub(before.misses);
    let hits = after.hits.saturating_sub(before.hits);
    if misses > 0 {
        return Err(format!(
            "{misses} of {} GETs missed the preloaded keys (keyspace_misses): the \
             redis-benchmark key format is not the preload's",
            hits + misses
        ));
    }
    if hits < measured.requests {
        return Err(format!(
            "Redis counted {hits} key hits for {} requested GETs",
            measured.requests
        ));
    }
    fill(row, &measured);
    Ok(())
}

/// Requests for `rate` ops/s over `time`, bounded.
fn requests_for(rate: f64, time: Duration) -> u64 {
    let n = rate * time.as_secs_f64();
    if n.is_finite() {
        (n as u64).clamp(MIN_REQUESTS, MAX_REQUESTS)
    } else {
        MIN_REQUESTS
    }
}

fn fill(row: &mut LadderRow, run: &BenchRun) {
    let ms_to_us = |ms: f64| (ms * 1000.0).round() as u64;
    row.ops_per_sec = Some(run.result.rps);
    row.p50_us = run.result.p50_ms.map(ms_to_us);
    row.p99_us = run.result.p99_ms.map(ms_to_us);
    row.max_us = run.result.max_ms.map(ms_to_us);
    row.requests = Some(run.requests);
    row.duration_secs = Some(run.wall.as_secs_f64());
    // redis-benchmark connects inside the window (skv's load generator before it).
    row.handshakes = Some(run.connections);
    let ticks = node::clock_ticks_per_sec();
    let secs = |t: Option<u64>| t.map(|t| t as f64 / ticks);
    let wall = run.wall.as_secs_f64();
    let per_op = |s: Option<f64>| {
        s.filter(|_| run.requests > 0)
            .map(|s| s * 1e6 / run.requests as f64)
    };
    let cores = |s: Option<f64>| s.filter(|_| wall > 0.0).map(|s| s / wall);
    let (server, bench, machine) = (
        secs(run.server_ticks),
        secs(run.bench_ticks),
        secs(run.machine_ticks),
    );
    row.server_cpu_us_per_op = per_op(server);
    row.client_cpu_us_per_op = per_op(bench);
    row.server_cpu_cores = cores(server);
    row.client_cpu_cores = cores(bench);
    row.other_cpu_cores = match (machine, server, bench) {
        (Some(m), Some(s), Some(b)) => cores(Some((m - s - b).max(0.0))),
        _ => None,
    };
}

/// redis-benchmark's flags for `case` against `port`, without `-n`.
fn bench_args(run: &RedisRun<'_>, case: RedisCase, port: u16) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-c".into(),
        run.conns.to_string(),
        "-d".into(),
        run.value_size.to_string(),
        "-t".into(),
        "get".into(),
        // Keys key:000000000000 .. key:{keys-1}, 12 digits, uniform: the preload's keys.
        "-r".into(),
        run.keys.to_string(),
        "-P".into(),
        case.pipeline.to_string(),
        "--csv".into(),
    ];
    if case.tls {
        args.extend([
            "--tls".into(),
            "--cacert".into(),
            run.pki.ca_cert().display().to_string(),
            "--cert".into(),
            run.pki.client_cert("alice").display().to_string(),
            "--key".into(),
            run.pki.client_key("alice").display().to_string(),
        ]);
    }
    args
}

/// One redis-benchmark run of `requests` GETs, with the server's (`server_pid`), its own and
/// the machine's CPU time over it.
fn bench(
    run: &RedisRun<'_>,
    args: &[String],
    requests: u64,
    server_pid: u32,
) -> Result<BenchRun, String> {
    let server_pid = server_pid.to_string();
    let server_before = node::cpu_ticks(&server_pid);
    let machine_before = node::machine_busy_ticks();
    let began = Instant::now();
    let mut child = Command::new(&run.bins.benchmark)
        .args(args)
        .args(["-n", &requests.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", run.bins.benchmark.display()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    // Generous: the calibration said how long this should take, on a machine that may be
    // busier by now.
    let expected = run.measure.max(run.warmup).max(Duration::from_secs(1));
    let limit = expected * 10 + Duration::from_secs(30);
    let bench_ticks = wait_for_exit_ticks(&mut child, limit);
    let wall = began.elapsed();
    let server_after = node::cpu_ticks(&server_pid);
    let machine_after = node::machine_busy_ticks();
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for redis-benchmark: {e}"))?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if wall >= limit {
        return Err(format!(
            "redis-benchmark did not finish {requests} requests within {limit:?} (killed)"
        ));
    }
    if !status.success() {
        return Err(format!(
            "redis-benchmark failed ({status}): {}",
            one_line(&format!("{stderr} {stdout}"))
        ));
    }
    let result = parse_csv(&stdout).map_err(|why| {
        format!(
            "cannot read redis-benchmark's output ({why}): {}",
            one_line(&format!("{stdout} {stderr}"))
        )
    })?;
    let delta = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
    Ok(BenchRun {
        result,
        requests,
        connections: run.conns as u64,
        wall,
        server_ticks: delta(server_before, server_after),
        bench_ticks,
        machine_ticks: delta(machine_before, machine_after),
    })
}

/// Wait for `child` to exit and return its user + system CPU ticks, read from its
/// /proc/<pid>/stat while it is a zombie (exited, not yet reaped: the caller reaps it).
/// Kills it after `limit`. `None` where /proc cannot tell.
fn wait_for_exit_ticks(child: &mut Child, limit: Duration) -> Option<u64> {
    let began = Instant::now();
    let pid = i32::try_from(child.id()).ok();
    loop {
        let stat = pid.and_then(|pid| procfs::process::Process::new(pid).ok()?.stat().ok());
        match stat {
            Some(stat) if stat.state == 'Z' => return Some(stat.utime + stat.stime),
            Some(_) => {}
            // No /proc: fall back to waiting, without the CPU time.
            None => {
                let _ = child.wait();
                return None;
            }
        }
        if began.elapsed() >= limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Read a pipe to the end on a thread (so the child never blocks on a full pipe); at most
/// [`MAX_REPLY`] bytes are kept.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let Some(pipe) = pipe else {
            return String::new();
        };
        let mut text = Vec::new();
        let _ = pipe.take(MAX_REPLY as u64).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    })
}

/// At most 300 characters of `text` on one line, for an error.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() > 300 {
        format!("{}…", line.chars().take(300).collect::<String>())
    } else if line.is_empty() {
        "(no output)".into()
    } else {
        line
    }
}

/// The GET line of redis-benchmark's `--csv` output.
#[derive(Debug, Clone, PartialEq)]
struct CsvResult {
    rps: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

/// Parse `--csv` output: a header line naming the columns (Redis 7:
/// `"test","rps","avg_latency_ms",…,"p50_latency_ms",…`), then a line per test. Older
/// versions print only `"GET","123.45"`; the latency columns are then `None`. The rps must
/// be a positive number; anything else is an error saying what was wrong.
fn parse_csv(text: &str) -> Result<CsvResult, String> {
    let fields = |line: &str| -> Vec<String> {
        line.trim()
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_owned())
            .collect()
    };
    let mut header: Option<Vec<String>> = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let row = fields(line);
        match row.first().map(String::as_str) {
            Some("test") => header = Some(row),
            Some(name) if name.eq_ignore_ascii_case("GET") => {
                let column = |wanted: &str, fallback: Option<usize>| -> Option<f64> {
                    let at = header
                        .as_ref()
                        .and_then(|h| h.iter().position(|c| c == wanted))
                        .or(fallback)?;
                    row.get(at)?.parse::<f64>().ok().filter(|v| v.is_finite())
                };
                let rps = column("rps", Some(1))
                    .ok_or_else(|| format!("no number in the rps column of {line:?}"))?;
                if rps <= 0.0 {
                    return Err(format!("rps is {rps}"));
                }
                let latency = |name: &str| {
                    header
                        .as_ref()
                        .and_then(|_| column(name, None))
                        .filter(|v| *v >= 0.0)
                };
                return Ok(CsvResult {
                    rps,
                    p50_ms: latency("p50_latency_ms"),
                    p99_ms: latency("p99_latency_ms"),
                    max_ms: latency("max_latency_ms"),
                });
            }
            _ => {}
        }
    }
    Err("no GET line".into())
}

/// A redis-server child. Killed on drop if still running.
struct RedisServer {
    child: Child,
    plain_port: u16,
    tls_port: Option<u16>,
    log: PathBuf,
}

impl RedisServer {
    /// Start redis-server on free loopback ports and wait until it answers PING. The plain
    /// port is always open (the preload and INFO go through it, so no TLS client is needed
    /// for them); with `tls`, redis-benchmark talks to the TLS port only.
    fn start(run: &RedisRun<'_>, tls: bool) -> Result<RedisServer, String> {
        let plain_port = free_port()?;
        let tls_port = if tls { Some(free_port()?) } else { None };
        let log = run.dir.join("redis.log");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            plain_port.to_string(),
            "--daemonize".into(),
            "no".into(),
            // Memory only: the benchmark reads, and no snapshot or AOF fork may land in the
            // window.
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            // One thread serves every request: Redis's default, stated.
            "--io-threads".into(),
            "1".into(),
            "--dir".into(),
            run.dir.display().to_string(),
            "--logfile".into(),
            log.display().to_string(),
        ];
        if let Some(port) = tls_port {
            args.extend([
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                run.pki.node_cert("n1").display().to_string(),
                "--tls-key-file".into(),
                run.pki.node_key("n1").display().to_string(),
                "--tls-ca-cert-file".into(),
                run.pki.ca_cert().display().to_string(),
                "--tls-auth-clients".into(),
                "yes".into(),
                // skv speaks TLS 1.3 only; so does this Redis.
                "--tls-protocols".into(),
                "TLSv1.3".into(),
            ]);
        }
        let child = Command::new(&run.bins.server)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", run.bins.server.display()))?;
        let mut server = RedisServer {
            child,
            plain_port,
            tls_port,
            log,
        };
        let began = Instant::now();
        loop {
            if let Some(status) = server.exited() {
                return Err(format!(
                    "redis-server did not start ({status}); its log ends with: {}",
                    server.log_tail()
                ));
            }
            let ready = Resp::connect(plain_port).and_then(|mut r| r.ping());
            let tls_ready = tls_port.is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
            if ready.is_ok() && tls_ready {
                return Ok(server);
            }
            if began.elapsed() > START_TIMEOUT {
                server.stop();
                return Err(format!(
                    "redis-server did not answer PING within {START_TIMEOUT:?} ({}); its log \
                     ends with: {}",
                    ready.err().unwrap_or_else(|| "its TLS port refused".into()),
                    server.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown state: {e}")),
        }
    }

    fn stop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn log_tail(&self) -> String {
        super::node::log_tail(&self.log, LOG_TAIL_LINES)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port free a moment ago (released for the server to bind).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

/// Fill keys `key:000000000000` .. (redis-benchmark's `-r` names, 12 digits) with
/// `value_size`-byte values, pipelined, and check the count.
fn preload(conn: &mut Resp, keys: u64, value_size: usize) -> Result<(), String> {
    let value = vec![b'v'; value_size];
    let mut sent = 0;
    while sent < keys {
        let batch = PRELOAD_BATCH.min(keys - sent);
        let mut buf = Vec::new();
        for i in sent..sent + batch {
            encode(
                &mut buf,
                &[b"SET", format!("key:{i:012}").as_bytes(), &value],
            );
        }
        conn.send(&buf)?;
        for _ in 0..batch {
            let reply = conn.line()?;
            if reply != "+OK" {
                return Err(format!("the preload's SET was answered {reply:?}"));
            }
        }
        sent += batch;
    }
    conn.send(&command(&[b"DBSIZE"]))?;
    let reply = conn.line()?;
    match reply.strip_prefix(':').and_then(|n| n.parse::<u64>().ok()) {
        Some(n) if n == keys => Ok(()),
        _ => Err(format!(
            "after preloading {keys} keys, DBSIZE answered {reply:?}"
        )),
    }
}

/// Key hits and misses from `INFO stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stats {
    hits: u64,
    misses: u64,
}

fn parse_stats(info: &str) -> Result<Stats, String> {
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("INFO stats has no {name}"))
    };
    Ok(Stats {
        hits: field("keyspace_hits")?,
        misses: field("keyspace_misses")?,
    })
}

/// A minimal RESP client over the server's plaintext loopback port: what the preload and
/// the INFO check need, no more.
struct Resp {
    reader: BufReader<TcpStream>,
}

impl Resp {
    fn connect(port: u16) -> Result<Resp, String> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("cannot connect to redis-server: {e}"))?;
        let timeout = Some(Duration::from_secs(10));
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| format!("cannot set a socket timeout: {e}"))?;
        Ok(Resp {
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|e| format!("cannot write to redis-server: {e}"))
    }

    /// One reply line without its CRLF, bounded.
    fn line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(MAX_REPLY as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read from redis-server: {e}"))?;
        if !line.ends_with(b"\r\n") {
            return Err("redis-server closed the connection or sent a malformed line".into());
        }
        line.truncate(line.len() - 2);
        Ok(String::from_utf8_lossy(&line).into_owned())
    }

    fn ping(&mut self) -> Result<(), String> {
        self.send(&command(&[b"PING"]))?;
        match self.line()?.as_str() {
            "+PONG" => Ok(()),
            other => Err(format!("PING was answered {other:?}")),
        }
    }

    fn info_stats(&mut self) -> Result<Stats, String> {
        self.send(&command(&[b"INFO", b"stats"]))?;
        let header = self.line()?;
        let len = header
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= MAX_REPLY)
            .ok_or_else(|| format!("INFO was answered {header:?}"))?;
        let mut body = vec![0; len + 2];
        self.reader
            .read_exact(&mut body)
            .map_err(|e| format!("cannot read INFO: {e}"))?;
        parse_stats(&String::from_utf8_lossy(&body[..len]))
    }
}

/// A RESP array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(&mut buf, args);
    buf
}

fn encode(buf: &mut Vec<u8>, args: &[&[u8]]) {
    buf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_7_csv_is_read_by_its_header() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
                   \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"GET\",\"91743.12\",\"4.890\",\"0.384\",\"1.303\",\"30.255\",\"89.279\",\
                   \"129.343\"\n";
        let r = parse_csv(out).unwrap();
        assert_eq!(r.rps, 91743.12);
        assert_eq!(r.p50_ms, Some(1.303));
        assert_eq!(r.p99_ms, Some(89.279));
        assert_eq!(r.max_ms, Some(129.343));
    }

    #[test]
    fn an_older_csv_without_header_still_gives_the_rate() {
        let r = parse_csv("\"GET\",\"123456.00\"\n").unwrap();
        assert_eq!(r.rps, 123456.0);
        assert_eq!(r.p50_ms, None);
        // Columns in another order are found by name.
        let r = parse_csv("\"test\",\"p50_latency_ms\",\"rps\"\n\"GET\",\"0.5\",\"10\"\n").unwrap();
        assert_eq!((r.rps, r.p50_ms), (10.0, Some(0.5)));
    }

    #[test]
    fn output_that_is_not_a_result_is_an_error_with_a_reason() {
        assert!(parse_csv("").unwrap_err().contains("no GET line"));
        assert!(
            parse_csv("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")
                .unwrap_err()
                .contains("no GET line")
        );
        assert!(parse_csv("\"GET\",\"fast\"\n").unwrap_err().contains("rps"));
        assert!(parse_csv("\"GET\",\"0.00\"\n")
            .unwrap_err()
            .contains("rps is 0"));
        assert!(parse_csv("\"GET\",\"NaN\"\n").is_err());
        // A progress line ("GET: rps=...") is not the result line.
        assert!(parse_csv("GET: rps=1000.0 (overall: 900.0) avg_msec=0.1\r").is_err());
    }

    #[test]
    fn versions_and_stats() {
        assert_eq!(
            parse_version("Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64"),
            Some("7.0.15")
        );
        assert_eq!(parse_version("Redis server v= sha=0"), None);
        assert_eq!(parse_version("garbage"), None);
        let info = "# Stats\r\ntotal_connections_received:3\r\nkeyspace_hits:12\r\n\
                    keyspace_misses:0\r\nkeyspace_hits_extra:9\r\n";
        assert_eq!(
            parse_stats(info).unwrap(),
            Stats {
                hits: 12,
                misses: 0
            }
        );
        assert!(parse_stats("# Stats\r\nkeyspace_hits:x\r\n").is_err());
    }

    #[test]
    fn commands_are_resp_arrays_and_sizes_are_bounded() {
        assert_eq!(command(&[b"GET", b"k"]), b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(requests_for(100_000.0, Duration::from_secs(3)), 300_000);
        assert_eq!(requests_for(0.0, Duration::from_secs(3)), MIN_REQUESTS);
        assert_eq!(
            requests_for(f64::INFINITY, Duration::from_secs(3)),
            MIN_REQUESTS
        );
        assert_eq!(requests_for(1e12, Duration::from_secs(3)), MAX_REQUESTS);
    }

    #[test]
    fn missing_binaries_are_named() {
        let err = find_executable("redis-server", Some(Path::new("/nonexistent/redis-server")))
            .unwrap_err();
        assert!(
            err.contains("redis-server not found at /nonexistent"),
            "{err}"
        );
        // A file that is not executable is not a redis-server either.
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(find_executable("redis-server", Some(file.path())).is_err());
        assert!(find_executable("surely-no-such-binary-on-path", None)
            .unwrap_err()
            .contains("not found on PATH"));
    }

    #[test]
    fn the_cases_are_the_main_ladders_shape() {
        let cases = RedisCase::all();
        assert_eq!(cases.len(), 4);
        for tls in [false, true] {
            for pipeline in [1, 16] {
                assert!(cases.contains(&RedisCase { tls, pipeline }));
            }
        }
        assert_eq!(
            RedisCase {
                tls: true,
                pipeline: 1
            }
            .label(),
            "redis mTLS"
        );
    }

    /// A fresh P-256 dev PKI (node n1, client alice) under `dir`.
    fn pki(dir: &Path) -> Layout {
        let layout = Layout::new(dir.join("pki"));
        skv_certs::init(&skv_certs::InitOptions {
            dir: layout.dir().to_owned(),
            cluster: "ladder".into(),
            nodes: vec!["n1".into()],
            clients: vec!["alice".into()],
            key_type: skv_certs::KeyType::P256,
            force: false,
        })
        .unwrap();
        layout
    }

    fn measure_with(dir: &Path, bins: &RedisBins, case: RedisCase) -> LadderRow {
        let own = tempfile::tempdir_in(dir).unwrap();
        let dir = own.path();
        let pki = pki(dir);
        let run = RedisRun {
            bins,
            pki: &pki,
            dir: dir.join("redis"),
            conns: 4,
            keys: 50,
            value_size: 100,
            warmup: Duration::ZERO,
            measure: Duration::from_millis(100),
        };
        let mut row = super::super::empty_row();
        row.rung = case.label().into();
        measure(&run, case, row)
    }

    #[test]
    fn a_server_that_does_not_start_is_a_failed_row_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let bins = RedisBins {
            server: "/bin/false".into(),
            benchmark: "/bin/false".into(),
            system: "redis".into(),
        };
        let row = measure_with(
            dir.path(),
            &bins,
            RedisCase {
                tls: true,
                pipeline: 1,
            },
        );
        assert_eq!(row.status, super::super::RowStatus::Failed);
        let error = row.error.unwrap();
        assert!(error.contains("redis-server did not start"), "{error}");
        assert!(row.ops_per_sec.is_none());
    }

    /// Only where redis-server is installed: a redis-benchmark that prints something else
    /// than its CSV, or fails, makes a failed row that says so.
    #[test]
    fn a_benchmark_that_prints_garbage_or_fails_is_a_failed_row_with_the_reason() {
        let Ok(real) = RedisBins::locate(None, None) else {
            eprintln!("redis-server or redis-benchmark is not installed: nothing to check");
            return;
        };
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        for (benchmark, expected) in [
            (
                script("garbage", "echo 'All clients disconnected'; exit 0"),
                "cannot read redis-benchmark's output (no GET line)",
            ),
            (
                script("fails", "echo 'Could not connect' >&2; exit 1"),
                "redis-benchmark failed",
            ),
        ] {
            let bins = RedisBins {
                benchmark,
                ..real.clone()
            };
            let row = measure_with(
                dir.path(),
                &bins,
                RedisCase {
                    tls: false,
                    pipeline: 1,
                },
            );
            assert_eq!(row.status, super::super::RowStatus::Failed, "{row:?}");
            let error = row.error.unwrap();
            assert!(error.contains(expected), "{error}");
        }
        // The real one, for contrast, measures the same case.
        let row = measure_with(
            dir.path(),
            &real,
            RedisCase {
                tls: true,
                pipeline: 16,
            },
        );
        assert_eq!(row.status, super::super::RowStatus::Ok, "{row:?}");
        assert!(row.server_cpu_us_per_op.is_some_and(|c| c > 0.0), "{row:?}");
        assert!(row.requests.is_some_and(|n| n >= MIN_REQUESTS), "{row:?}");
    }
}
