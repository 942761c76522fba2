//! `--direct`: one task per connection, straight on a [`Pipeline`] to a single node, in a
//! closed loop.
//!
//! The default worker ([`crate::worker`]) sends every request through the client library's
//! [`skv_client::ClusterClient`]: routing by key, a channel to the connection's driver, a
//! oneshot and a timer per request. That is what applications pay, and on a 2-core machine
//! it costs the load generator more CPU per request than the node spends answering it, so
//! the node is measured while it waits for its load rather than at its ceiling. This worker
//! costs what redis-benchmark costs Redis: it writes the window's requests back to back,
//! reads the answers as they come, refills the window with one write per batch of answers,
//! and counts into its own statistics. Nothing in it is shared with the other tasks but the
//! per-second series, added to once a second.
//!
//! Closed loop only, GET and PUT (and a mix); no redirections, retries or reconnections: a
//! connection that breaks ends its task, and the run reports the error.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use skv_client::pipeline::FIRST_REQUEST_ID;
use skv_client::{ClientError, Pipeline};
use skv_proto::{RequestBody, ResponseBody};

use crate::options::{Stop, Workload};
use crate::report::TaskStats;
use crate::series::Tally;
use crate::worker::mix;
use crate::{key_name, Plan};

/// Bits of a request id that name its slot in the window: ids are `sequence << SLOT_BITS |
/// slot`, so an answer finds its send time without a map, whatever order answers come in.
pub(crate) const SLOT_BITS: u32 = 20;

/// Largest window `--direct` takes (`--inflight`).
pub(crate) const MAX_WINDOW: usize = 1 << SLOT_BITS;

/// A request in the window.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u64,
    sent: Instant,
    measured: bool,
    /// A GET (else a PUT), to check the answer is one.
    read: bool,
}

/// Drive `pipeline` until the run's end; returns what it saw.
pub(crate) async fn drive(plan: Arc<Plan>, index: usize, mut pipeline: Pipeline) -> TaskStats {
    let opts = &plan.opts;
    let mut stats = TaskStats::new();
    let mut tally = Tally::default();
    let mut rng = SmallRng::seed_from_u64(mix(opts.seed, index));
    let quota = match opts.stop {
        Stop::Requests(n) => {
            let c = opts.conns as u64;
            Some(n / c + u64::from((index as u64) < n % c))
        }
        Stop::Duration(_) => None,
    };
    let window = opts.inflight.min(MAX_WINDOW);
    let mut slots: Vec<Option<Slot>> = vec![None; window];
    let mut free: Vec<usize> = (0..window).rev().collect();
    let (mut sequence, mut measured_sent, mut outstanding) = (0u64, 0u64, 0usize);
    let mut stopping = false;
    loop {
        // Fill the window, then write it in one go.
        let now = Instant::now();
        if plan.deadline.is_some_and(|d| now >= d) {
            stopping = true;
        }
        let mut fed = 0usize;
        while !stopping {
            let Some(slot) = free.pop() else { break };
            let measured = now >= plan.measure_from;
            if measured {
                if quota.is_some_and(|q| measured_sent >= q) {
                    free.push(slot);
                    stopping = true;
                    break;
                }
                measured_sent += 1;
            }
            let id = FIRST_REQUEST_ID + (sequence << SLOT_BITS | slot as u64);
            sequence += 1;
            let body = next_body(&plan, &mut rng);
            let read = matches!(body, RequestBody::Get { .. });
            if let Err(err) = pipeline.feed(id, body).await {
                return end(&plan, stats, tally, &err);
            }
            slots[slot] = Some(Slot {
                id,
                sent: now,
                measured,
                read,
            });
            outstanding += 1;
            fed += 1;
        }
        if fed > 0 {
            if let Err(err) = pipeline.flush().await {
                return end(&plan, stats, tally, &err);
            }
        }
        if outstanding == 0 {
            break;
        }
        // Wait for one answer, then take every answer already here.
        let mut answer = Some(pipeline.answer().await);
        let finished = Instant::now();
        let (mut ok, mut failed) = (0u64, 0u64);
        while let Some(next) = answer {
            let (id, body) = match next {
                Ok(answered) => answered,
                Err(err) => return end(&plan, stats, tally, &err),
            };
            let Some(slot) = take_slot(&mut slots, id) else {
                let err = ClientError::Protocol(format!(
                    "{} answered request id {id}, which this connection has not sent or \
                     already had answered",
                    opts.connect.addr
                ));
                return end(&plan, stats, tally, &err);
            };
            free.push(((id - FIRST_REQUEST_ID) & (MAX_WINDOW as u64 - 1)) as usize);
            outstanding -= 1;
            if slot.measured {
                stats.requests += 1;
                let body = body.and_then(|body| expected(body, slot.read));
                let success = body.is_ok();
                tally.count(&plan.seconds, plan.measure_from, finished, success);
                match body {
                    Ok(found) => {
                        stats.ok += 1;
                        stats.not_found += u64::from(!found);
                        let us = finished.saturating_duration_since(slot.sent).as_micros();
                        stats
                            .latency
                            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
                        ok += 1;
                    }
                    Err(err) => {
                        stats.error(&err);
                        failed += 1;
                    }
                }
            }
            answer = pipeline.buffered_answer();
        }
        if ok + failed > 0 {
            stats.last_completion = stats.last_completion.max(Some(finished));
            plan.progress.add_requests(ok, failed);
        }
    }
    tally.flush(&plan.seconds);
    stats
}

/// The window slot request `id` was sent from, emptied; `None` for an id not outstanding.
fn take_slot(slots: &mut [Option<Slot>], id: u64) -> Option<Slot> {
    let index = (id.checked_sub(FIRST_REQUEST_ID)? & (MAX_WINDOW as u64 - 1)) as usize;
    let entry = slots.get_mut(index)?;
    match entry {
        Some(slot) if slot.id == id => entry.take(),
        _ => None,
    }
}

/// Whether a GET found its key (a PUT's answer counts as found); an answer that is neither
/// a GET's nor a PUT's, as the request was, is an error.
fn expected(body: ResponseBody, read: bool) -> Result<bool, ClientError> {
    match (body, read) {
        (ResponseBody::Value { .. }, true) | (ResponseBody::Written { .. }, false) => Ok(true),
        (ResponseBody::NotFound, true) => Ok(false),
        // Not quoted: the answer may hold a value.
        (_, true) => Err(ClientError::Protocol(
            "a GET was answered with neither a value nor NOT_FOUND".into(),
        )),
        (_, false) => Err(ClientError::Protocol(
            "a PUT was answered with something other than WRITTEN".into(),
        )),
    }
}

/// The task's connection broke: count why, and hand back what it measured.
fn end(plan: &Plan, mut stats: TaskStats, mut tally: Tally, err: &ClientError) -> TaskStats {
    stats.error(err);
    plan.progress.add_requests(0, 1);
    tally.flush(&plan.seconds);
    stats
}

/// The next request: a GET or PUT of a key drawn as the default worker draws them.
fn next_body(plan: &Plan, rng: &mut SmallRng) -> RequestBody {
    let index = match &plan.zipf {
        Some(zipf) => zipf.sample(rng) - 1,
        None => rng.gen_range(0..plan.opts.keys),
    };
    let key = key_name(index);
    let read = match plan.opts.workload {
        Workload::Get => true,
        Workload::Put => false,
        Workload::Mixed { read_ratio } => rng.gen::<f64>() < read_ratio,
        // Refused by `BenchOptions::validate`.
        Workload::Scan => true,
    };
    if read {
        RequestBody::Get { key }
    } else {
        RequestBody::Put {
            key,
            value: plan.value.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_finds_its_slot_once_and_only_by_its_own_id() {
        let now = Instant::now();
        let mut slots = vec![None; 4];
        let id = FIRST_REQUEST_ID + (7 << SLOT_BITS | 2);
        slots[2] = Some(Slot {
            id,
            sent: now,
            measured: true,
            read: true,
        });
        // An id naming slot 2 from another sequence number is not this request's answer.
        let stale = FIRST_REQUEST_ID + (6 << SLOT_BITS | 2);
        assert!(take_slot(&mut slots, stale).is_none());
        assert!(slots[2].is_some(), "a wrong id leaves the slot as it was");
        assert_eq!(take_slot(&mut slots, id).map(|s| s.id), Some(id));
        assert!(take_slot(&mut slots, id).is_none(), "answered twice");
        // Ids below the first request id, or naming a slot past the window, are nobody's.
        assert!(take_slot(&mut slots, 0).is_none());
        assert!(take_slot(&mut slots, FIRST_REQUEST_ID + 9).is_none());
    }
}
