//! The chaos workload: logical processes, each with one operation in flight at a time, on a
//! small set of keys, recording every invocation and completion into a history for the
//! checker (`skv_check`).
//!
//! Values are unique (`p<process>-<n>`), so a read names the write it saw. A write whose
//! answer is an error may still have been applied (the client library retries a write with
//! the same session, and an attempt that timed out may have committed), so it is recorded as
//! [`Outcome::Unknown`] and its process retires: a successor with a fresh process id takes
//! its place. A read that fails changed nothing and is recorded as [`Outcome::Failed`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use skv_check::history::{Op, Outcome, Record, Versioned};
use skv_client::{CasResult, ClientError, ClusterClient};
use tokio::time::Instant;

/// What the workload runs.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Concurrent logical processes.
    pub(crate) clients: usize,
    /// Keys, named `chaos/k0` …
    pub(crate) keys: usize,
    /// Operations per second per process, at most (0: as fast as answers come).
    pub(crate) rate: u32,
    /// Seed for the operation mix.
    pub(crate) seed: u64,
}

/// The recorded history, shared by every process.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    start: Instant,
    records: Arc<Mutex<Vec<Record>>>,
    next_process: Arc<AtomicU64>,
}

impl Recorder {
    pub(crate) fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            records: Arc::default(),
            next_process: Arc::new(AtomicU64::new(0)),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_nanos()).unwrap_or(u64::MAX)
    }

    fn process_id(&self) -> u64 {
        self.next_process.fetch_add(1, Ordering::Relaxed)
    }

    fn push(&self, record: Record) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }

    /// Everything recorded, ordered by invocation.
    pub(crate) fn records(&self) -> Vec<Record> {
        let mut records = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        records.sort_by_key(|r| (r.call_ns, r.process));
        records
    }
}

/// The key names of a plan.
pub(crate) fn key_names(keys: usize) -> Vec<String> {
    (0..keys).map(|i| format!("chaos/k{i}")).collect()
}

/// Run `plan.clients` processes until `stop` is set.
pub(crate) async fn run(
    client: ClusterClient,
    plan: Plan,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let keys = Arc::new(key_names(plan.keys));
    let mut tasks = Vec::new();
    for slot in 0..plan.clients {
        let seed = plan.seed.wrapping_add(slot as u64);
        tasks.push(tokio::spawn(process_slot(
            client.clone(),
            keys.clone(),
            plan.rate,
            seed,
            recorder.clone(),
            stop.clone(),
        )));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// One concurrent slot of the workload: a logical process, replaced by a fresh one each
/// time an operation's outcome is unknown.
async fn process_slot(
    client: ClusterClient,
    keys: Arc<Vec<String>>,
    rate: u32,
    seed: u64,
    recorder: Recorder,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let pace = (rate > 0).then(|| Duration::from_secs(1) / rate);
    let mut process = recorder.process_id();
    let mut written = 0u64;
    // The version this process last saw for each key: what its cas expects.
    let mut seen = vec![0u64; keys.len()];
    let mut next_at = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(pace) = pace {
            tokio::time::sleep_until(next_at).await;
            next_at = (next_at + pace).max(Instant::now());
        }
        let k = rng.gen_range(0..keys.len());
        let key = keys[k].clone();
        let op = match rng.gen_range(0..100) {
            0..=44 => Op::Get,
            45..=74 => {
                written += 1;
                Op::Put {
                    value: format!("p{process}-{written}"),
                }
            }
            75..=89 => {
                written += 1;
                Op::Cas {
                    expect_version: seen[k],
                    value: format!("p{process}-{written}"),
                }
            }
            _ => Op::Delete,
        };
        let outcome = invoke(&client, &recorder, process, &key, &op).await;
        match &outcome {
            Outcome::Found { found } => seen[k] = found.as_ref().map_or(0, |v| v.version),
            Outcome::Written { version } => seen[k] = *version,
            Outcome::Deleted { .. } => seen[k] = 0,
            Outcome::Conflict { current_version } => seen[k] = *current_version,
            Outcome::Failed { .. } | Outcome::Unknown { .. } => {}
        }
        let unknown = matches!(outcome, Outcome::Unknown { .. });
        if unknown {
            // It may still take effect at any moment: this process can no longer order its
            // own operations, so a successor continues in its place.
            process = recorder.process_id();
            written = 0;
        }
    }
}

/// Invoke `op` and record it. Returns the outcome.
pub(crate) async fn invoke(
    client: &ClusterClient,
    recorder: &Recorder,
    process: u64,
    key: &str,
    op: &Op,
) -> Outcome {
    let call = Instant::now();
    let key_bytes = bytes::Bytes::copy_from_slice(key.as_bytes());
    let outcome = match op {
        Op::Get => match client.get(key_bytes).await {
            Ok(found) => Outcome::Found {
                found: found.map(|(version, value)| Versioned {
                    version,
                    value: String::from_utf8_lossy(&value).into_owned(),
                }),
            },
            Err(e) => Outcome::Failed {
                error: error_kind(&e),
            },
        },
        Op::Put { value } => match client.put(key_bytes, value.clone().into_bytes()).await {
            Ok(version) => Outcome::Written { version },
            Err(e) => unknown(&e),
        },
        Op::Delete => match client.delete(key_bytes).await {
            Ok(existed) => Outcome::Deleted { existed },
            Err(e) => unknown(&e),
        },
        Op::Cas {
            expect_version,
            value,
        } => match client
            .cas(key_bytes, *expect_version, value.clone().into_bytes())
            .await
        {
            Ok(CasResult::Written(version)) => Outcome::Written { version },
            Ok(CasResult::Conflict(current_version)) => Outcome::Conflict { current_version },
            Err(e) => unknown(&e),
        },
    };
    let ret = Instant::now();
    recorder.push(Record {
        process,
        key: key.to_owned(),
        op: op.clone(),
        call_ns: recorder.ns(call),
        ret_ns: recorder.ns(ret),
        outcome: outcome.clone(),
    });
    outcome
}

fn unknown(e: &ClientError) -> Outcome {
    Outcome::Unknown {
        error: error_kind(e),
    }
}

/// A short, stable name for the kind of an error (`timeout`, `unavailable`, …), for the
/// report's error counts. Never the message, which may name a key.
pub(crate) fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Server(w) | ClientError::Refused(w) => format!("{:?}", w.code).to_lowercase(),
        other => {
            let debug = format!("{other:?}");
            let name: String = debug
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            snake(&name)
        }
    }
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// After the faults are healed: one read of every key by a fresh process, retried until it
/// answers (up to `within`), so the history ends with what the cluster holds.
pub(crate) async fn final_reads(
    client: &ClusterClient,
    recorder: &Recorder,
    keys: usize,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let process = recorder.process_id();
    for key in key_names(keys) {
        loop {
            let outcome = invoke(client, recorder, process, &key, &Op::Get).await;
            match outcome {
                Outcome::Found { .. } => break,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => {
                    return Err(format!(
                        "the final read of {key} still failed after {within:?} ({other:?})"
                    ))
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_short_snake_case_names() {
        let e = ClientError::Timeout {
            addr: "x".into(),
            after: Duration::from_secs(1),
            waiting_for: "answer",
        };
        assert_eq!(error_kind(&e), "timeout");
        let e = ClientError::NotLeader {
            shard: 1,
            epoch: 1,
            leader: None,
        };
        assert_eq!(error_kind(&e), "not_leader");
        let e = ClientError::Server(skv_proto::WireError::new(
            skv_proto::ErrorCode::TryAgain,
            "secret key name",
        ));
        assert_eq!(error_kind(&e), "tryagain");
    }
}
