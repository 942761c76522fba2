//! Per-task statistics, how they merge, and the report a run returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use skv_client::ClientError;

use crate::series::{self, full_seconds, SecondSample};

/// Lowest and highest latency the histograms hold, in microseconds (1 µs .. 60 s), and their
/// precision: 3 significant digits, i.e. within 0.1 % at any magnitude.
const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 60_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram with the bench's bounds.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// The short, stable name of an error, used as a key of the report's `errors` map: the
/// [`ClientError`] variant, and for errors the node sent, its protocol error code
/// (`server:storage`, `refused:forbidden`).
pub fn error_kind(err: &ClientError) -> String {
    match err {
        ClientError::Config(_) => "config".into(),
        ClientError::Connect { .. } => "connect".into(),
        ClientError::Tls(_) => "tls".into(),
        ClientError::WrongNode { .. } => "wrong_node".into(),
        ClientError::Protocol(_) => "protocol".into(),
        ClientError::Timeout { .. } => "timeout".into(),
        ClientError::Disconnected { .. } => "disconnected".into(),
        ClientError::Refused(wire) => format!("refused:{}", wire.code),
        ClientError::Server(wire) => format!("server:{}", wire.code),
        ClientError::Moved { .. } => "moved".into(),
        ClientError::NodeDown { .. } => "node_down".into(),
        ClientError::NotLeader { .. } => "not_leader".into(),
        ClientError::Unavailable { .. } => "unavailable".into(),
        ClientError::ShardDown { .. } => "shard_down".into(),
    }
}

/// What one connection task saw. Each task owns its own, so recording never takes a lock or
/// touches a shared cache line; the run merges them at the end.
#[derive(Debug)]
pub(crate) struct TaskStats {
    /// Latency of measured requests that got an answer, in µs.
    pub(crate) latency: Histogram<u64>,
    /// Failed measured requests (and failed reconnects) by [`error_kind`].
    pub(crate) errors: BTreeMap<String, u64>,
    /// Measured requests, answered or failed.
    pub(crate) requests: u64,
    /// Measured requests answered without error.
    pub(crate) ok: u64,
    /// Measured GETs that found no value.
    pub(crate) not_found: u64,
    /// Connections opened (TCP + TLS + HELLO).
    pub(crate) handshakes: u64,
    /// Of those, connections opened inside the measured window (replacements only: the
    /// first connections open before it).
    pub(crate) handshakes_measured: u64,
    /// Of all the connections opened, those whose TLS handshake resumed a session.
    pub(crate) handshakes_resumed: u64,
    /// Time spent opening them.
    pub(crate) handshake_time: Duration,
    /// Open loop: requests that were due before the end but never sent.
    pub(crate) unsent: u64,
    /// When the last measured request finished.
    pub(crate) last_completion: Option<Instant>,
}

impl TaskStats {
    pub(crate) fn new() -> TaskStats {
        TaskStats {
            latency: histogram(),
            errors: BTreeMap::new(),
            requests: 0,
            ok: 0,
            not_found: 0,
            handshakes: 0,
            handshakes_measured: 0,
            handshakes_resumed: 0,
            handshake_time: Duration::ZERO,
            unsent: 0,
            last_completion: None,
        }
    }

    pub(crate) fn error(&mut self, err: &ClientError) {
        *self.errors.entry(error_kind(err)).or_default() += 1;
    }

    pub(crate) fn merge(&mut self, other: TaskStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with equal bounds add");
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.requests += other.requests;
        self.ok += other.ok;
        self.not_found += other.not_found;
        self.handshakes += other.handshakes;
        self.handshakes_measured += other.handshakes_measured;
        self.handshakes_resumed += other.handshakes_resumed;
        self.handshake_time += other.handshake_time;
        self.unsent += other.unsent;
        self.last_completion = self.last_completion.max(other.last_completion);
    }
}

/// The result of one run; one row of the ladder's table. Serializes to the JSON object that
/// `skv bench --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The ladder's rung label ("" for a plain run).
    pub rung: String,
    /// The ladder's variant label ("" for a plain run).
    pub variant: String,
    /// `get`, `put`, `mixed:R` or `scan`.
    pub workload: String,
    /// `uniform` or `zipf:S`.
    pub key_dist: String,
    /// Size of the key space.
    pub keys: u64,
    /// Bytes per written value.
    pub value_size: usize,
    /// Requests outstanding per connection.
    pub inflight: usize,
    /// Connections per node (one task each).
    pub conns: usize,
    /// Nodes serving slots when the run started (1 for a single node).
    pub nodes: usize,
    /// Open-loop target in requests per second; `None` for a closed loop.
    pub target_rate: Option<f64>,
    /// Successful requests per second over the measured window.
    pub ops_per_sec: f64,
    /// Latency percentiles and maximum of successful measured requests, in µs. In an open
    /// loop they count from each request's intended send time.
    pub p50_us: u64,
    /// 90th percentile, µs.
    pub p90_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// 99.9th percentile, µs.
    pub p999_us: u64,
    /// Maximum, µs.
    pub max_us: u64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Failures by kind (see [`error_kind`]); empty when nothing failed.
    pub errors: BTreeMap<String, u64>,
    /// Measured requests, including failed ones.
    pub requests: u64,
    /// Measured GETs that found no value (not errors; a sign the preload was skipped).
    pub not_found: u64,
    /// Open loop: requests due before the end that were never sent because the run fell
    /// behind its schedule (0 in a closed loop).
    pub unsent: u64,
    /// Connections opened: the initial `conns` per node, plus every replacement
    /// (`--reconnect-every`, or after a connection broke).
    pub handshakes: u64,
    /// Connections opened inside the measured window (so `handshakes_measured /
    /// duration_secs` is the handshake rate while measuring).
    pub handshakes_measured: u64,
    /// Of `handshakes`, those whose TLS handshake resumed an earlier session (a TLS 1.3
    /// ticket) instead of a full handshake; only `--resume` runs resume.
    pub handshakes_resumed: u64,
    /// Mean time to open one (TCP connect, TLS handshake, HELLO), µs.
    pub handshake_mean_us: f64,
    /// Length of the measured window, seconds: from the end of the warmup to the last
    /// measured answer.
    pub duration_secs: f64,
    /// Warmup before the window, seconds.
    pub warmup_secs: f64,
    /// Keys written before the run (0 when nothing was preloaded).
    pub preloaded_keys: u64,
    /// Seconds the preload took.
    pub preload_secs: f64,
    /// Node CPU time (user + system) over the measured window per successful measured
    /// request, µs. Only the ladder fills it in, because it starts the node and so knows its
    /// process; `None` for a plain run.
    pub server_cpu_us_per_op: Option<f64>,
    /// The ladder's cost of this row against plaintext: `100 × (1 − ops_per_sec ÷ ops_per_sec
    /// of the L0 row with the same workload, value size and inflight)`. `None` for a plain run
    /// and for rows without such an L0 row.
    pub cost_vs_l0_pct: Option<f64>,
    /// The measured requests by the second of the window in which they completed, from
    /// second 0 without gaps: `ops` sums to `requests` minus the failed ones, `errors` to
    /// the failed ones. The last entry usually covers less than a second (the window ends
    /// with the last answer); [`BenchReport::full_seconds`] leaves it out.
    pub per_second: Vec<SecondSample>,
}

impl BenchReport {
    /// [`per_second`](Self::per_second) without a last, partial second: the samples to
    /// compare with each other or to chart.
    pub fn full_seconds(&self) -> &[SecondSample] {
        full_seconds(&self.per_second, self.duration_secs)
    }

    /// Every second of [`per_second`](Self::per_second) as an aligned table (`skv bench
    /// --per-second`), a partial last second marked as such.
    pub fn per_second_table(&self) -> String {
        series::table(&self.per_second, self.duration_secs)
    }

    /// A short aligned table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mode = match self.target_rate {
            Some(rate) => format!("open loop at {} req/s", group(rate.round() as u64)),
            None => "closed loop".to_owned(),
        };
        let label = match (self.rung.as_str(), self.variant.as_str()) {
            ("", "") => String::new(),
            (r, "") | ("", r) => format!(" [{r}]"),
            (r, v) => format!(" [{r} / {v}]"),
        };
        // A single node reads as before; a cluster adds its size (each conn is one
        // connection per node).
        let nodes = match self.nodes {
            0 | 1 => String::new(),
            n => format!(", {n} nodes"),
        };
        let _ = writeln!(
            out,
            "skv bench{label}: {} over {} {} keys, {}-byte values, {} conns x {} in \
             flight{nodes}, {mode}",
            self.workload,
            group(self.keys),
            self.key_dist,
            self.value_size,
            self.conns,
            self.inflight,
        );
        let rows = [
            ("ops/s", group(self.ops_per_sec.round() as u64)),
            (
                "requests",
                format!(
                    "{} in {:.2} s (after {:.2} s warmup)",
                    group(self.requests),
                    self.duration_secs,
                    self.warmup_secs
                ),
            ),
            (
                "latency",
                format!(
                    "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                    micros(self.p50_us),
                    micros(self.p90_us),
                    micros(self.p99_us),
                    micros(self.p999_us),
                    micros(self.max_us)
                ),
            ),
            (
                "errors",
                if self.errors.is_empty() {
                    "none".to_owned()
                } else {
                    self.errors
                        .iter()
                        .map(|(kind, n)| format!("{kind} {}", group(*n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "handshakes",
                format!(
                    "{} (mean {}{})",
                    group(self.handshakes),
                    micros(self.handshake_mean_us.round() as u64),
                    if self.handshakes_resumed > 0 {
                        format!(", {} resumed", group(self.handshakes_resumed))
                    } else {
                        String::new()
                    }
                ),
            ),
        ];
        let rows = rows
            .into_iter()
            .chain(series::summary_rows(self.full_seconds()));
        for (name, value) in rows {
            let _ = writeln!(out, "  {name:<11} {value}");
        }
        if self.not_found > 0 {
            let _ = writeln!(out, "  {:<11} {}", "not found", group(self.not_found));
        }
        if self.unsent > 0 {
            let _ = writeln!(
                out,
                "  {:<11} {} requests due were never sent: the target rate was not reached",
                "behind",
                group(self.unsent)
            );
        }
        out
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in µs, in the unit that reads best.
fn micros(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1234567), "1,234,567");
        assert_eq!(micros(812), "812 µs");
        assert_eq!(micros(1500), "1.50 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
    }

    #[test]
    fn stats_merge() {
        let mut a = TaskStats::new();
        a.latency.record(100).unwrap();
        a.requests = 1;
        a.ok = 1;
        let mut b = TaskStats::new();
        b.latency.record(300).unwrap();
        b.requests = 2;
        b.ok = 1;
        b.error(&ClientError::Config("x".into()));
        a.merge(b);
        assert_eq!(a.latency.len(), 2);
        assert_eq!(a.requests, 3);
        assert_eq!(a.errors.get("config"), Some(&1));
    }
}
