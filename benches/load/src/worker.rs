//! One task of a run: keep up to `inflight` requests outstanding on its own [`ClusterClient`]
//! (one multiplexed connection per node; one connection in all against a single node), on a
//! closed loop or an open-loop schedule, and record what happens.
//!
//! A single task per client, holding its requests in a `FuturesUnordered`, rather than
//! `inflight` tasks sharing a clone: the task knows exactly how many requests are outstanding,
//! so it can stop issuing, drain and swap or repair its connections (`--reconnect-every`, or
//! after a connection broke) without coordinating with anyone, and its statistics stay its
//! own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::options::{Stop, Workload};
use crate::report::TaskStats;
use crate::series::Tally;
use crate::{key_name, Plan, KEY_PREFIX};
use skv_client::ClientError;
use skv_client::ClusterClient;

/// How early an open-loop request may go out. Tokio's timer wheel has millisecond
/// resolution and rounds sleeps *up*, so sleeping until the exact send time would send most
/// requests up to 1 ms late, and that lateness would count as latency. Waking 1 ms early and
/// sending at once keeps the schedule; a request sent early is timed from its actual send.
const EARLY: Duration = Duration::from_millis(1);

/// Attempts to reopen a task's connections before the task gives up.
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
    client: ClusterClient,
    op: Op,
    value: Bytes,
    scan_limit: u32,
    started: Instant,
    measured: bool,
) -> Outcome {
    let result = match op {
        Op::Get(key) => client.get(key).await.map(|found| found.is_some()),
        Op::Put(key) => client.put(key, value).await.map(|_| true),
        // Boxed: a cluster scan's future is larger than a GET's or a PUT's, and every
        // request's future, whatever its op, is as large as the largest.
        Op::Scan(after) => {
            Box::pin(client.scan(Bytes::from_static(KEY_PREFIX), scan_limit, Some(after)))
                .await
                .map(|_| true)
        }
    };
    Outcome {
        result,
        started,
        finished: Instant::now(),
        measured,
    }
}

/// Errors after which a connection is useless, or a node unreachable: later requests to it
/// would fail at once, so the task drains and reopens its connections (giving up if it
/// cannot) instead of counting a flood of instant failures.
fn breaks_connection(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Disconnected { .. }
            | ClientError::Protocol(_)
            | ClientError::Tls(_)
            | ClientError::Connect { .. }
            | ClientError::NodeDown { .. }
    )
}

/// Why the task stops issuing and drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Renew {
    /// A connection broke: reopen what is closed, keep the rest.
    Repair,
    /// `--reconnect-every`: a new client, so every connection is a new full handshake.
    Replace,
}

/// A SplitMix64 step: turns (seed, task index) into well-spread, independent stream seeds.
pub(crate) fn mix(seed: u64, index: usize) -> u64 {
    let mut z = seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Worker {
    plan: Arc<Plan>,
    rng: SmallRng,
    stats: TaskStats,
    /// This task's count for the current second of the run's per-second series.
    tally: Tally,
    /// Open loop: seconds between sends on this connection, and this connection's offset
    /// into the period (so the connections' sends interleave instead of bunching).
    schedule: Option<(f64, f64)>,
    /// Connections the current client had opened when the measured window began (0 if it
    /// was made inside the window; `None` until known), to tell which handshakes to count
    /// as measured.
    window_base: Option<u64>,
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
            self.tally.count(
                &self.plan.seconds,
                self.plan.measure_from,
                out.finished,
                out.result.is_ok(),
            );
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

    /// Count the connections `client` opened; call once, when the task is done with it.
    fn harvest(&mut self, client: &ClusterClient) {
        let opened = client.connect_stats();
        self.stats.handshakes += opened.opened;
        self.stats.handshakes_resumed += opened.resumed;
        self.stats.handshake_time += opened.time;
        if let Some(base) = self.window_base {
            self.stats.handshakes_measured += opened.opened.saturating_sub(base);
        }
    }

    /// Replace or repair the client's connections, retrying briefly; `None` if the task
    /// should give up.
    async fn renew(&mut self, old: ClusterClient, how: Renew) -> Option<ClusterClient> {
        let client = match how {
            Renew::Repair => old,
            Renew::Replace => {
                let next = if self.plan.opts.resume {
                    Ok(old.fresh_resuming())
                } else {
                    old.fresh()
                };
                self.harvest(&old);
                // Drop the old client first so its sockets close before the new handshakes.
                drop(old);
                match next {
                    Ok(next) => {
                        self.window_base = (Instant::now() >= self.plan.measure_from).then_some(0);
                        next
                    }
                    Err(err) => {
                        self.stats.error(&err);
                        return None;
                    }
                }
            }
        };
        for attempt in 1..=RECONNECT_ATTEMPTS {
            if self.plan.deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match client.open_connections().await {
                Ok(()) => return Some(client),
                Err(err) => {
                    self.stats.error(&err);
                    tokio::time::sleep(Duration::from_millis(100) * attempt).await;
                }
            }
        }
        self.harvest(&client);
        None
    }
}

/// Drive one client until the run's end; returns what it saw.
pub(crate) async fn drive(plan: Arc<Plan>, index: usize, client: ClusterClient) -> TaskStats {
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
        tally: Tally::default(),
        schedule,
        window_base: None,
    };

    let mut client = Some(client);
    let mut in_flight = FuturesUnordered::new();
    // Requests sent by this task (the open-loop schedule position), sent on the current
    // client, and measured.
    let (mut sent, mut on_conn, mut measured_sent) = (0u64, 0u64, 0u64);
    let mut stopping = false;
    // Set: stop issuing, drain, then renew the connections.
    let mut renew: Option<Renew> = None;
    loop {
        if let Some(current) = client
            .as_ref()
            .filter(|_| !stopping && renew.is_none() && in_flight.len() < inflight)
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
                    if worker.finish(out) {
                        renew = renew.max(Some(Renew::Repair));
                    }
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
                if worker.window_base.is_none() {
                    worker.window_base = Some(current.connect_stats().opened);
                }
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
                renew = Some(Renew::Replace);
            }
            continue;
        }
        match in_flight.next().await {
            Some(out) => {
                if worker.finish(out) {
                    renew = renew.max(Some(Renew::Repair));
                }
            }
            None if stopping => break,
            None => {
                // Nothing outstanding and not issuing: the connections are to be renewed.
                let (Some(current), Some(how)) = (client.take(), renew.take()) else {
                    break;
                };
                client = worker.renew(current, how).await;
                if how == Renew::Replace {
                    on_conn = 0;
                }
            }
        }
    }
    if let Some(client) = &client {
        worker.harvest(client);
    }
    worker.tally.flush(&plan.seconds);
    worker.stats
}
