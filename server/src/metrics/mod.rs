//! Prometheus metrics: what the node counts, and `GET /metrics` ([`http`]).
//!
//! Off unless `--metrics-listen` is given; then [`install`] creates the process's one set of
//! metrics and every layer reaches it through [`get`]. A process-wide set (like the tracing
//! subscriber) lets storage flushes, the token cache and the audit writer count without a
//! handle threaded through every constructor; with metrics off, [`get`] is one atomic load and
//! nothing else runs. A process running several nodes (unit tests) sums them.
//!
//! The hot path stays cheap: every counter a request touches is created once, at install, and
//! kept in arrays indexed by op and outcome, so counting is one atomic add with no label lookup
//! or lock; each op has its own latency histogram. Labels hold only fixed names (ops, outcomes,
//! checkpoints, reasons, stages): never a key, a value, a token, a subject or an address.
//! docs/METRICS.md lists every metric and what to alert on.

pub(crate) mod http;

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use skv_proto::{ErrorCode, Op, ResponseBody};

/// Every op a request can name, in the order of [`op_index`].
pub(crate) const OPS: [Op; 11] = [
    Op::Hello,
    Op::Ping,
    Op::Get,
    Op::Put,
    Op::Delete,
    Op::Scan,
    Op::Cas,
    Op::ClusterMap,
    Op::Control,
    Op::Import,
    Op::Raft,
];

/// How a request ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered with what was asked (a value, a write, a page, a pong, ...).
    Ok,
    /// GET of a missing key.
    NotFound,
    /// CAS that found another version.
    CasConflict,
    /// MOVED or NOT_LEADER: the client must ask elsewhere.
    Redirect,
    /// Refused at checkpoint 2 or 3 (unauthenticated, forbidden).
    Refused,
    /// Over the identity's rate limit.
    RateLimited,
    /// Shed because the node is overloaded.
    Overloaded,
    /// try_again or unavailable: the cluster could not do it now.
    Unavailable,
    /// The request was malformed or too large.
    BadRequest,
    /// Any other error (storage, internal, shutting down, ...).
    Error,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 10] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::CasConflict,
        Outcome::Redirect,
        Outcome::Refused,
        Outcome::RateLimited,
        Outcome::Overloaded,
        Outcome::Unavailable,
        Outcome::BadRequest,
        Outcome::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::CasConflict => "cas_conflict",
            Outcome::Redirect => "redirect",
            Outcome::Refused => "refused",
            Outcome::RateLimited => "rate_limited",
            Outcome::Overloaded => "overloaded",
            Outcome::Unavailable => "unavailable",
            Outcome::BadRequest => "bad_request",
            Outcome::Error => "error",
        }
    }

    /// The outcome an answer stands for.
    pub(crate) fn of(body: &ResponseBody) -> Outcome {
        match body {
            ResponseBody::NotFound => Outcome::NotFound,
            ResponseBody::CasConflict { .. } => Outcome::CasConflict,
            ResponseBody::Moved { .. } | ResponseBody::NotLeader { .. } => Outcome::Redirect,
            ResponseBody::Error(err) => match err.code {
                ErrorCode::Unauthenticated | ErrorCode::Forbidden => Outcome::Refused,
                ErrorCode::RateLimited => Outcome::RateLimited,
                ErrorCode::Overloaded => Outcome::Overloaded,
                ErrorCode::TryAgain | ErrorCode::Unavailable | ErrorCode::ClusterState => {
                    Outcome::Unavailable
                }
                ErrorCode::Malformed
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnknownOp
                | ErrorCode::UnsupportedVersion
                | ErrorCode::HandshakeRequired
                | ErrorCode::TooLarge => Outcome::BadRequest,
                _ => Outcome::Error,
            },
            _ => Outcome::Ok,
        }
    }
}

fn op_index(op: Op) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(0)
}

/// The refusal checkpoints, as the `checkpoint` label names them.
#[cfg(test)]
pub(crate) const CHECKPOINTS: [&str; 4] = ["admission", "token", "scope", "role"];

/// Label sets: fixed names only.
type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Every metric of the node.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// `[op][outcome]`.
    requests: Vec<Counter>,
    /// `[op]`.
    latency: Vec<Histogram>,
    refusals: Family<Labels2, Counter>,
    connections_open: Gauge,
    connections_accepted: Counter,
    connections_refused: Family<Labels1, Counter>,
    handshakes: Family<Labels1, Counter>,
    token_cache_hits: Counter,
    token_cache_misses: Counter,
    audit_dropped: Counter,
    rate_limited: Family<Labels1, Counter>,
    shed: Family<Labels1, Counter>,
    flush_seconds: Family<Labels1, Histogram>,
    in_flight: Gauge,
}

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The metrics, when `--metrics-listen` turned them on.
#[inline]
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Turn metrics on for this process (idempotent).
pub(crate) fn install() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

fn latency_histogram() -> Histogram {
    // 50 µs to ~3.3 s: a cached GET to a slot move's control request.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 17))
}

fn flush_histogram() -> Histogram {
    // 100 µs to ~3.3 s: a page-cache flush to a struggling disk.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("skv");
        let requests_family = Family::<Labels2, Counter>::default();
        let latency_family = Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let mut requests = Vec::with_capacity(OPS.len() * Outcome::ALL.len());
        let mut latency = Vec::with_capacity(OPS.len());
        for op in OPS {
            for outcome in Outcome::ALL {
                requests.push(
                    requests_family
                        .get_or_create(&[("op", op.as_str()), ("outcome", outcome.as_str())])
                        .clone(),
                );
            }
            latency.push(latency_family.get_or_create(&[("op", op.as_str())]).clone());
        }
        registry.register(
            "requests",
            "Requests answered, by op and outcome",
            requests_family,
        );
        registry.register(
            "request_duration_seconds",
            "Time from reading a request to queueing its answer, by op",
            latency_family,
        );
        let refusals = Family::<Labels2, Counter>::default();
        registry.register(
            "refusals",
            "Requests and connections refused, by checkpoint and reason",
            refusals.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Connections holding a slot now, in any state",
            connections_open.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Connections accepted and admitted",
            connections_accepted.clone(),
        );
        let connections_refused = Family::<Labels1, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at admission, by reason",
            connections_refused.clone(),
        );
        let handshakes = Family::<Labels1, Counter>::default();
        registry.register(
            "handshakes",
            "TLS handshakes plus HELLO, by result",
            handshakes.clone(),
        );
        let token_cache = Family::<Labels1, Counter>::default();
        let token_cache_hits = token_cache.get_or_create(&[("result", "hit")]).clone();
        let token_cache_misses = token_cache.get_or_create(&[("result", "miss")]).clone();
        registry.register(
            "token_cache",
            "Per-request token lookups: hit (no signature check) or miss",
            token_cache,
        );
        let audit_dropped = Counter::default();
        registry.register(
            "audit_dropped",
            "Audit lines dropped because the audit queue was full",
            audit_dropped.clone(),
        );
        let rate_limited = Family::<Labels1, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused for their identity's rate limit, by limit",
            rate_limited.clone(),
        );
        let shed = Family::<Labels1, Counter>::default();
        registry.register(
            "shed",
            "New connections shed while the node was overloaded, by stage",
            shed.clone(),
        );
        let flush_seconds =
            Family::<Labels1, Histogram, fn() -> Histogram>::new_with_constructor(flush_histogram);
        registry.register(
            "storage_flush_seconds",
            "Duration of storage flushes (fsync), by what flushed",
            flush_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests read and waiting for their answer, node-wide (the load-shedding signal)",
            in_flight.clone(),
        );
        // Every fixed label set exists from the start, so a dashboard sees zeros, not gaps.
        for reason in ["source_full", "node_full"] {
            drop(connections_refused.get_or_create(&[("reason", reason)]));
        }
        for result in ["ok", "failed"] {
            drop(handshakes.get_or_create(&[("result", result)]));
        }
        for limit in ["requests", "bytes"] {
            drop(rate_limited.get_or_create(&[("limit", limit)]));
        }
        for stage in ["hello", "handshake"] {
            drop(shed.get_or_create(&[("stage", stage)]));
        }
        Metrics {
            registry,
            requests,
            latency,
            refusals,
            connections_open,
            connections_accepted,
            connections_refused,
            handshakes,
            token_cache_hits,
            token_cache_misses,
            audit_dropped,
            rate_limited,
            shed,
            flush_seconds,
            in_flight,
        }
    }

    /// One request answered.
    #[inline]
    pub(crate) fn request(&self, op: Op, outcome: Outcome, took: Duration) {
        let op = op_index(op);
        let outcome = Outcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
        if let Some(c) = self.requests.get(op * Outcome::ALL.len() + outcome) {
            c.inc();
        }
        if let Some(h) = self.latency.get(op) {
            h.observe(took.as_secs_f64());
        }
    }

    /// A refusal at `checkpoint` (one of [`CHECKPOINTS`]) for a fixed `reason` code.
    pub(crate) fn refusal(&self, checkpoint: &'static str, reason: &'static str) {
        self.refusals
            .get_or_create(&[("checkpoint", checkpoint), ("reason", reason)])
            .inc();
    }

    pub(crate) fn connection_opened(&self) {
        self.connections_open.inc();
        self.connections_accepted.inc();
    }

    pub(crate) fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// A connection closed at admission; `reason` is `source_full` or `node_full`.
    pub(crate) fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&[("reason", reason)])
            .inc();
        self.refusal("admission", reason);
    }

    pub(crate) fn handshake(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.handshakes.get_or_create(&[("result", result)]).inc();
    }

    pub(crate) fn token_cache(&self, hit: bool) {
        if hit {
            self.token_cache_hits.inc();
        } else {
            self.token_cache_misses.inc();
        }
    }

    pub(crate) fn audit_dropped(&self, lines: u64) {
        self.audit_dropped.inc_by(lines);
    }

    /// A request over its identity's limit; `limit` is `requests` or `bytes`.
    pub(crate) fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&[("limit", limit)]).inc();
    }

    pub(crate) fn shed(&self, at_hello: bool) {
        let stage = if at_hello { "hello" } else { "handshake" };
        self.shed.get_or_create(&[("stage", stage)]).inc();
    }

    /// A flush of `what` (`group_commit`, `raft_log`) took `took`.
    pub(crate) fn flush(&self, what: &'static str, took: Duration) {
        self.flush_seconds
            .get_or_create(&[("what", what)])
            .observe(took.as_secs_f64());
    }

    /// The text exposition, with the in-flight gauge set to `in_flight` first.
    pub(crate) fn encode(&self, in_flight: usize) -> String {
        self.in_flight.set(in_flight as i64);
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_fixed_labels_only() {
        let m = Metrics::new();
        m.request(Op::Get, Outcome::Ok, Duration::from_micros(80));
        m.request(Op::Put, Outcome::RateLimited, Duration::from_micros(5));
        m.refusal("token", "bad_signature");
        m.flush("group_commit", Duration::from_millis(2));
        let text = m.encode(3);
        assert!(
            text.contains("skv_requests_total{op=\"get\",outcome=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("skv_requests_total{op=\"put\",outcome=\"rate_limited\"} 1"));
        assert!(text.contains("skv_requests_in_flight 3"));
        assert!(text.contains("skv_request_duration_seconds_count{op=\"get\"} 1"));
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every label value is one of the fixed names.
        let ops: Vec<&str> = OPS.iter().map(|o| o.as_str()).collect();
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((_, labels)) = line.split_once('{') else {
                continue;
            };
            let labels = labels.split('}').next().unwrap_or_default();
            for pair in labels.split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                let v = v.trim_matches('"');
                let ok = match k {
                    "op" => ops.contains(&v),
                    "outcome" => outcomes.contains(&v),
                    "checkpoint" => CHECKPOINTS.contains(&v),
                    "le" => v.parse::<f64>().is_ok() || v == "+Inf",
                    _ => true,
                };
                assert!(ok, "{line}");
            }
        }
    }
}
