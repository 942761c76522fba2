//! One connection's task: keep up to `inflight` requests outstanding on one multiplexed
//! [`Connection`], on a closed loop or an open-loop schedule, and record what happens.
//!
//! A single task per connection, holding its requests in a `FuturesUnordered`, rather than
//! `inflight` tasks sharing a clone: the task knows exactly how many requests are outstanding,
//! so it can stop issuing, drain and swap the connection (`--reconnect-every`, or after the
//! connection broke) without coordinating with anyone, and its statistics stay its own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::bench::options::{Stop, Workload};
use crate::bench::report::TaskStats;
use crate::bench::{key_name, Plan, KEY_PREFIX};
use crate::connection::Connection;
use crate::error::ClientError;

/// How early an open-loop request may go out. Tokio's timer wheel has millisecond
/// resolution and rounds sleeps *up*, so sleeping until the exact send time would send most
/// requests up to 1 ms late, and that lateness would count as latency. Waking 1 ms early and
/// sending at once keeps the schedule; a request sent early is timed from its actual send.
const EARLY: Duration = Duration::from_millis(1);

/// Attempts to replace a connection before the task gives up.
const RECONNECT_ATTEMPTS: u32 = 3;

/// One request to send.
#[derive(Debug)]
enum Op {
    Get(Bytes),
    Put(Bytes),
    /// Scan after this key.
    Scan(Bytes),
}

/// A finished request.
#[derive(Debug)]
struct Outcome {
    /// `Ok(false)`: a GET found nothing.
    result: Result<bool, ClientError>,
    /// Where its latency counts from: the intended send time in an open loop (or the actual
    /// one if it went out early), the actual send time in a closed loop.
    started: Instant,
    finished: Instant,
    measured: bool,
}

/// Send one request. Every request future of a task has this one type, so they fit one
/// `FuturesUnordered` without boxing.
async fn execute(
    conn: Arc<Connection>,
    op: Op,
    value: Bytes,
    scan_limit: u32,
    started: Instant,
    measured: bool,
) -> Outcome {
    let result = match op {
        Op::Get(key) => conn.get(key).await.map(|found| found.is_some()),
        Op::Put(key) => conn.put(key, value).await.map(|_| true),
        Op::Scan(after) => conn
            .scan(Bytes::from_static(KEY_PREFIX), scan_limit, Some(after))
            .await
            .map(|_| true),
    };
    Outcome {
        result,
        started,
        finished: Instant::now(),
        measured,
    }
}

/// Errors after which the connection is useless: every later request on it would fail at
/// once, so the task drains and reconnects instead of counting a flood of instant failures.
fn breaks_connection(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Disconnected { .. }
            | ClientError::Protocol(_)
            | ClientError::Tls(_)
            | ClientError::Connect { .. }
    )
}

/// A SplitMix64 step: turns (seed, task index) into well-spread, independent stream seeds.
fn mix(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Worker {
    plan: Arc<Plan>,
    rng: SmallRng,
    stats: TaskStats,
    /// Open loop: seconds between sends on this connection, and this connection's offset
    /// into the period (so the connections' sends interleave instead of bunching).
    schedule: Option<(f64, f64)>,
}

impl Worker {
    fn next_op(&mut self) -> Op {
        let index = match &self.plan.zipf {
            // Rank 1 (the hottest) is key 0.
            Some(zipf) => zipf.sample(&mut self.rng) - 1,
            None => self.rng.gen_range(0..self.plan.opts.keys),
        };
        let key = key_name(index);
        match self.plan.opts.workload {
            Workload::Get => Op::Get(key),
            Workload::Put => Op::Put(key),
            Workload::Scan => Op::Scan(key),
            Workload::Mixed { read_ratio } => {
                if self.rng.gen::<f64>() < read_ratio {
                    Op::Get(key)
                } else {
                    Op::Put(key)
                }
            }
        }
    }

    /// Open loop: when request number `n` of this connection is due.
    fn due(&self, n: u64) -> Option<Instant> {
        let (interval, offset) = self.schedule?;
        Some(self.plan.start + Duration::from_secs_f64(offset + n as f64 * interval))
    }

    /// Open loop: how many requests from number `n` on were due before `deadline`.
    fn due_before(&self, n: u64, deadline: Instant) -> u64 {
        let Some((interval, offset)) = self.schedule else {
            return 0;
        };
        let window = deadline
            .saturating_duration_since(self.plan.start)
            .as_secs_f64()
            - offset;
        let slots = (window / interval).ceil().max(0.0) as u64;
        slots.saturating_sub(n)
    }

    /// Record a finished request; returns whether its connection should be replaced.
    fn finish(&mut self, out: Outcome) -> bool {
        let broken = matches!(&out.result, Err(e) if breaks_connection(e));
        if out.measured {
            self.stats.requests += 1;
            self.stats.last_completion = self.stats.last_completion.max(Some(out.finished));
            match out.result {
                Ok(found) => {
                    self.stats.ok += 1;
                    self.stats.not_found += u64::from(!found);
                    let us = out
                        .finished
                        .saturating_duration_since(out.started)
                        .as_micros();
                    self.stats
                        .latency
                        .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                    self.plan.progress.add_request(false);
                }
                Err(err) => {
                    self.stats.error(&err);
                    self.plan.progress.add_request(true);
                }
            }
        }
        broken
    }

    /// Open a replacement connection, retrying briefly; `None` if the task should give up.
    async fn reconnect(&mut self) -> Option<Arc<Connection>> {
        for attempt in 1..=RECONNECT_ATTEMPTS {
            if self.plan.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            let began = Instant::now();
            match Connection::connect(&self.plan.opts.connect).await {
                Ok(conn) => {
                    self.stats.handshakes += 1;
                    if began >= self.plan.measure_from {
                        self.stats.handshakes_measured += 1;
                    }
                    self.stats.handshake_time += began.elapsed();
                    return Some(Arc::new(conn));
                }
                Err(err) => {
                    self.stats.error(&err);
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
            }
        }
        None
    }
}

/// Drive one connection until the run's end; returns what it saw.
pub(crate) async fn drive(plan: Arc<Plan>, index: usize, conn: Arc<Connection>) -> TaskStats {
    let opts = &plan.opts;
    let schedule = opts.rate.map(|rate| {
        let interval = opts.conns as f64 / rate;
        (interval, interval * index as f64 / opts.conns as f64)
    });
    let quota = match opts.stop {
        // Split the measured requests evenly; the first `rem` connections take one more.
        Stop::Requests(n) => {
            let c = opts.conns as u64;
            Some(n / c + u64::from((index as u64) < n % c))
        }
        Stop::Duration(_) => None,
    };
    let inflight = opts.inflight;
    let reconnect_every = opts.reconnect_every;
    let (value, scan_limit, measure_from, deadline) = (
        plan.value.clone(),
        opts.scan_limit,
        plan.measure_from,
        plan.deadline,
    );
    let mut worker = Worker {
        rng: SmallRng::seed_from_u64(mix(opts.seed, index)),
        plan: plan.clone(),
        stats: TaskStats::new(),
        schedule,
    };

    let mut conn = Some(conn);
    let mut in_flight = FuturesUnordered::new();
    // Requests sent by this task (the open-loop schedule position), sent on the current
    // connection, and measured.
    let (mut sent, mut on_conn, mut measured_sent) = (0u64, 0u64, 0u64);
    let mut stopping = false;
    let mut replace = false;
    loop {
        if let Some(current) = conn
            .as_ref()
            .filter(|_| !stopping && !replace && in_flight.len() < inflight)
        {
            let now = Instant::now();
            let due = worker.due(sent);
            if let Some(due) = due.filter(|due| *due > now + EARLY) {
                // Not yet time: wait for the send time, handling answers meanwhile.
                let wake = tokio::time::sleep_until((due - EARLY).into());
                let answered = tokio::select! {
                    out = in_flight.next(), if !in_flight.is_empty() => out,
                    () = wake => None,
                };
                if let Some(out) = answered {
                    replace |= worker.finish(out);
                }
                continue;
            }
            // Closed loop: now. Open loop: the scheduled time, unless it is (up to EARLY)
            // in the future, in which case the request really goes out now.
            let intended = due.map_or(now, |due| due.min(now));
            if let Some(deadline) = deadline {
                if intended >= deadline {
                    stopping = true;
                    continue;
                }
                if now >= deadline {
                    // Open loop and behind schedule at the end: what is still due is not
                    // sent, but counted, so a run that could not keep its rate says so.
                    worker.stats.unsent += worker.due_before(sent, deadline);
                    stopping = true;
                    continue;
                }
            }
            let measured = due.unwrap_or(now) >= measure_from;
            if measured {
                if quota.is_some_and(|q| measured_sent >= q) {
                    stopping = true;
                    continue;
                }
                measured_sent += 1;
            }
            let op = worker.next_op();
            in_flight.push(execute(
                current.clone(),
                op,
                value.clone(),
                scan_limit,
                intended,
                measured,
            ));
            sent += 1;
            on_conn += 1;
            // Done once the quota is sent: no need to wait for the next turn to find out (and
            // no reconnect that would go unused).
            stopping |= measured && quota.is_some_and(|q| measured_sent >= q);
            if reconnect_every.is_some_and(|n| on_conn >= n) {
                replace = true;
            }
            continue;
        }
        match in_flight.next().await {
            Some(out) => replace |= worker.finish(out),
            None if stopping || conn.is_none() => break,
            None => {
                // Nothing outstanding and not issuing: the connection is to be replaced.
                // Drop the old one first so its socket closes before the new handshake.
                drop(conn.take());
                conn = worker.reconnect().await;
                on_conn = 0;
                replace = false;
            }
        }
    }
    worker.stats
}
