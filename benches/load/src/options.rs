//! What a bench run does: workload, key space, concurrency, how long, how fast.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::zipf::Zipf;
use skv_client::config::ConnectOptions;
use skv_client::{ClientError, Failover};

/// Most keys a run may address: key names carry the index in a fixed 10-digit field.
pub const MAX_KEYS: u64 = 10_000_000_000;

/// Most entries one scan may ask for (the node's page limit).
pub const MAX_SCAN_LIMIT: u32 = skv_proto::MAX_SCAN_PAGE;

/// The operations a run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Workload {
    /// GET of existing keys.
    Get,
    /// PUT of `value_size`-byte values.
    Put,
    /// GET with probability `read_ratio`, PUT otherwise.
    Mixed {
        /// Fraction of reads, in `0..=1`.
        read_ratio: f64,
    },
    /// SCAN of `scan_limit` keys after a chosen key.
    Scan,
}

impl Workload {
    /// Whether the run reads keys, so they must exist first (the preload).
    pub fn reads(&self) -> bool {
        match self {
            Workload::Put => false,
            Workload::Mixed { read_ratio } => *read_ratio > 0.0,
            Workload::Get | Workload::Scan => true,
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Get => f.write_str("get"),
            Workload::Put => f.write_str("put"),
            Workload::Mixed { read_ratio } => write!(f, "mixed:{read_ratio}"),
            Workload::Scan => f.write_str("scan"),
        }
    }
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "get" => Ok(Workload::Get),
            "put" => Ok(Workload::Put),
            "scan" => Ok(Workload::Scan),
            _ => {
                let Some(ratio) = s.strip_prefix("mixed:") else {
                    return Err(format!(
                        "unknown workload `{s}`: use get, put, scan or mixed:READ_RATIO (e.g. \
                         mixed:0.9 for 90 % reads)"
                    ));
                };
                let read_ratio: f64 = ratio.parse().map_err(|_| {
                    format!("`{ratio}` is not a number: mixed:READ_RATIO takes e.g. 0.9")
                })?;
                if !(0.0..=1.0).contains(&read_ratio) {
                    return Err(format!(
                        "the read ratio of mixed:{ratio} must be within 0..=1 (the fraction of \
                         requests that are reads)"
                    ));
                }
                Ok(Workload::Mixed { read_ratio })
            }
        }
    }
}

/// How keys are picked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Key `i` (from 0) with probability proportional to `(i+1)^-exponent`: a few hot keys,
    /// the shape of most real traffic. 0.99 is the YCSB default.
    Zipf {
        /// The skew; greater than 0.
        exponent: f64,
    },
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => f.write_str("uniform"),
            KeyDist::Zipf { exponent } => write!(f, "zipf:{exponent}"),
        }
    }
}

impl FromStr for KeyDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        let Some(exp) = s.strip_prefix("zipf:") else {
            return Err(format!(
                "unknown key distribution `{s}`: use uniform or zipf:S (e.g. zipf:0.99)"
            ));
        };
        let exponent: f64 = exp
            .parse()
            .map_err(|_| format!("`{exp}` is not a number: zipf:S takes e.g. 0.99"))?;
        // The sampler's own check, so the CLI and the library agree on what is valid.
        Zipf::new(1, exponent)?;
        Ok(KeyDist::Zipf { exponent })
    }
}

/// When the measured part of a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Issue requests for this long after the warmup.
    Duration(Duration),
    /// Issue exactly this many measured requests (after the warmup), then stop.
    Requests(u64),
}

/// Which edge of the measured window a [`WindowHook`] is told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowEdge {
    /// The warmup is over: requests sent (closed loop) or due (open loop) from now on are
    /// measured.
    Start,
    /// Every measured request has been answered or has failed; the report's window ends here
    /// (give or take the time the last tasks take to hand back their statistics).
    End,
}

/// A callback told when the measured window opens and closes, once each and in that order.
/// The ladder uses it to read the node's CPU time over exactly the measured requests, after
/// the preload and the warmup. It runs on a runtime thread, off the request path: keep it
/// short (reading a /proc file is fine), and never block on the run itself.
#[derive(Clone)]
pub struct WindowHook(Arc<dyn Fn(WindowEdge) + Send + Sync>);

impl WindowHook {
    /// Wrap a callback.
    pub fn new(hook: impl Fn(WindowEdge) + Send + Sync + 'static) -> WindowHook {
        WindowHook(Arc::new(hook))
    }

    pub(crate) fn call(&self, edge: WindowEdge) {
        (self.0)(edge)
    }
}

impl fmt::Debug for WindowHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WindowHook(..)")
    }
}

/// Everything a run needs. [`BenchOptions::new`] gives the CLI's defaults.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where and how to connect; every connection of the run uses these. `connect.addr` is
    /// the first node contacted; requests go to whichever node serves their key.
    pub connect: ConnectOptions,
    /// More node addresses to find the cluster through when `connect.addr` does not answer.
    pub seeds: Vec<String>,
    /// What to send.
    pub workload: Workload,
    /// Size of the key space: keys `bench/k0000000000` up to index `keys - 1`.
    pub keys: u64,
    /// How keys are picked.
    pub key_dist: KeyDist,
    /// Bytes per written value (also the preload's).
    pub value_size: usize,
    /// Connections per node, each set with its own task: a task holds one connection to
    /// every node and sends each request to the node serving its key.
    pub conns: usize,
    /// Requests outstanding at once per task (pipelining depth).
    pub inflight: usize,
    /// When the measured part ends.
    pub stop: Stop,
    /// Time spent sending but not measuring first: connections, caches and the allocator
    /// settle, and the first slow requests do not pollute the histogram.
    pub warmup: Duration,
    /// Open loop at this many requests per second in total; `None` is closed loop.
    pub rate: Option<f64>,
    /// Replace each task's connections after this many requests (new TCP + full TLS
    /// handshakes).
    pub reconnect_every: Option<u64>,
    /// With `reconnect_every`: the replacement connections resume the TLS sessions of the
    /// ones they replace (a client that reconnects), instead of full handshakes.
    pub resume: bool,
    /// Entries each SCAN asks for.
    pub scan_limit: u32,
    /// Seed for key choice and read/write mix; equal seeds send equal key sequences.
    pub seed: u64,
    /// Write every key before a workload that reads (get, mixed, scan).
    pub preload: bool,
    /// Label copied into the report (the ladder's rung; "" for a plain run).
    pub rung: String,
    /// Label copied into the report (the ladder's variant; "" for a plain run).
    pub variant: String,
    /// Told when the measured window opens and closes (`None`: nobody asks).
    pub on_window: Option<WindowHook>,
    /// How the clients ride out failed replicas and elections (`None`: the client library's
    /// default). A saturated replicated shard can take longer than the default two-second
    /// attempt timeout to answer a queued request; the ladder gives a longer one, so that
    /// saturation is measured as latency rather than turned into retries on other replicas.
    pub failover: Option<Failover>,
    /// Drive each connection directly (see [`crate::direct`]): one [`skv_client::Pipeline`]
    /// per task to `connect.addr`, which must serve every slot, instead of a cluster client.
    /// The load generator then costs the machine about what redis-benchmark does, so a node
    /// sharing that machine is measured at its ceiling. Closed loop, get/put/mixed only.
    pub direct: bool,
}

impl BenchOptions {
    /// The defaults of `skv bench`: get, 10000 uniform keys, 100-byte values, 50 connections
    /// with 1 request each, closed loop, 1 s warmup then 10 s measured.
    pub fn new(connect: ConnectOptions) -> BenchOptions {
        BenchOptions {
            connect,
            seeds: Vec::new(),
            workload: Workload::Get,
            keys: 10_000,
            key_dist: KeyDist::Uniform,
            value_size: 100,
            conns: 50,
            inflight: 1,
            stop: Stop::Duration(Duration::from_secs(10)),
            warmup: Duration::from_secs(1),
            rate: None,
            reconnect_every: None,
            resume: false,
            scan_limit: 10,
            seed: 1,
            preload: true,
            rung: String::new(),
            variant: String::new(),
            on_window: None,
            failover: None,
            direct: false,
        }
    }

    /// Check the options; errors are [`ClientError::Config`] (exit code 2, usage).
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |msg: String| Err(ClientError::Config(msg));
        if self.conns == 0 {
            return bad("--conns must be at least 1".into());
        }
        if self.inflight == 0 {
            return bad(
                "--inflight must be at least 1 (requests outstanding per connection)".into(),
            );
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return bad(format!("--keys must be within 1..={MAX_KEYS}"));
        }
        if let Workload::Mixed { read_ratio } = self.workload {
            if !(0.0..=1.0).contains(&read_ratio) {
                return bad(format!(
                    "the read ratio of mixed:{read_ratio} must be within 0..=1"
                ));
            }
        }
        if let KeyDist::Zipf { exponent } = self.key_dist {
            Zipf::new(self.keys, exponent).map_err(ClientError::Config)?;
        }
        match self.stop {
            Stop::Duration(d) if d.is_zero() => {
                return bad("--duration must be longer than 0".into());
            }
            Stop::Requests(0) => return bad("--requests must be at least 1".into()),
            _ => {}
        }
        if let Some(rate) = self.rate {
            if !rate.is_finite() || rate <= 0.0 {
                return bad(format!(
                    "--rate must be a number of requests per second greater than 0 (got {rate})"
                ));
            }
        }
        if self.reconnect_every == Some(0) {
            return bad("--reconnect-every must be at least 1".into());
        }
        if self.resume && self.reconnect_every.is_none() {
            return bad(
                "--resume needs --reconnect-every (only replacement connections resume)".into(),
            );
        }
        if self.direct {
            if self.rate.is_some() {
                return bad("--direct runs a closed loop only: drop --rate".into());
            }
            if self.reconnect_every.is_some() {
                return bad("--direct keeps its connections: drop --reconnect-every".into());
            }
            if self.workload == Workload::Scan {
                return bad("--direct sends GET and PUT only: use get, put or mixed".into());
            }
            if !self.seeds.is_empty() {
                return bad(
                    "--direct talks to the one node at --addr (which must serve every slot): \
                     drop the other seeds"
                        .into(),
                );
            }
            if self.inflight > crate::direct::MAX_WINDOW {
                return bad(format!(
                    "--direct keeps at most {} requests in flight per connection",
                    crate::direct::MAX_WINDOW
                ));
            }
        }
        if self.scan_limit == 0 || self.scan_limit > MAX_SCAN_LIMIT {
            return bad(format!("--scan-limit must be within 1..={MAX_SCAN_LIMIT}"));
        }
        Ok(())
    }
}

/// Parse a duration such as `10s`, `500ms`, `1.5s`, `2m`, `250us`, `1h 30m`; a bare number is
/// seconds.
///
/// humantime reads the units (and compound forms); the two things it refuses are added
/// here because the flags have always taken them: a bare number (seconds) and a fraction of
/// one unit (`1.5s`, `0.5m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let invalid = |why: &dyn std::fmt::Display| {
        format!("invalid duration `{s}` ({why}): use a number and a unit, e.g. 10s, 500ms, 2m")
    };
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(invalid(&"no number"));
    }
    if !number.contains('.') && !unit.is_empty() {
        return humantime::parse_duration(s).map_err(|e| invalid(&e));
    }
    let value: f64 = number.parse().map_err(|_| invalid(&"not a number"))?;
    let unit = match unit.trim() {
        "" => Duration::from_secs(1),
        u if u.chars().all(char::is_alphabetic) => {
            humantime::parse_duration(&format!("1{u}")).map_err(|e| invalid(&e))?
        }
        _ => {
            return Err(invalid(
                &"one number and one unit, when the number has a fraction",
            ))
        }
    };
    Duration::try_from_secs_f64(value * unit.as_secs_f64()).map_err(|e| invalid(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_client::config::Security;

    #[test]
    fn workloads_parse_and_print() {
        assert_eq!("get".parse::<Workload>(), Ok(Workload::Get));
        assert_eq!("put".parse::<Workload>(), Ok(Workload::Put));
        assert_eq!("scan".parse::<Workload>(), Ok(Workload::Scan));
        assert_eq!(
            "mixed:0.9".parse::<Workload>(),
            Ok(Workload::Mixed { read_ratio: 0.9 })
        );
        assert_eq!(Workload::Mixed { read_ratio: 0.9 }.to_string(), "mixed:0.9");
        for bad in [
            "mixed:1.5",
            "mixed:-0.1",
            "mixed:x",
            "mixed:NaN",
            "delete",
            "",
        ] {
            assert!(bad.parse::<Workload>().is_err(), "{bad}");
        }
        assert!(!Workload::Put.reads());
        assert!(!Workload::Mixed { read_ratio: 0.0 }.reads());
        assert!(Workload::Mixed { read_ratio: 0.1 }.reads());
    }

    #[test]
    fn key_dists_parse() {
        assert_eq!("uniform".parse::<KeyDist>(), Ok(KeyDist::Uniform));
        assert_eq!(
            "zipf:0.99".parse::<KeyDist>(),
            Ok(KeyDist::Zipf { exponent: 0.99 })
        );
        for bad in ["zipf:0", "zipf:-1", "zipf:inf", "zipf:", "zipf", "normal"] {
            assert!(bad.parse::<KeyDist>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "s", "10x", "-1s", "1e3s", "ten"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_catches_nonsense() {
        let base = BenchOptions::new(ConnectOptions::new("127.0.0.1:1", Security::Plaintext));
        assert!(base.validate().is_ok());
        type Change = fn(&mut BenchOptions);
        let cases: [(&str, Change); 12] = [
            ("--conns", |o| o.conns = 0),
            ("--inflight", |o| o.inflight = 0),
            ("--keys", |o| o.keys = 0),
            ("ratio", |o| {
                o.workload = Workload::Mixed { read_ratio: 2.0 }
            }),
            ("Zipf", |o| o.key_dist = KeyDist::Zipf { exponent: 0.0 }),
            ("--duration", |o| o.stop = Stop::Duration(Duration::ZERO)),
            ("--requests", |o| o.stop = Stop::Requests(0)),
            ("--rate", |o| o.rate = Some(0.0)),
            ("--rate", |o| o.rate = Some(f64::NAN)),
            ("--reconnect-every", |o| o.reconnect_every = Some(0)),
            ("--resume needs --reconnect-every", |o| o.resume = true),
            ("--scan-limit", |o| o.scan_limit = 0),
        ];
        for (needle, change) in cases {
            let mut opts = base.clone();
            change(&mut opts);
            let err = opts.validate().expect_err(needle);
            assert_eq!(err.exit_code(), skv_client::exit::USAGE);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}
