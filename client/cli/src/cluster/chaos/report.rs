//! What a chaos run saw, from its history and its fault log: operations and errors by kind,
//! each shard's unavailability windows, the failover time of each fault that took a leader
//! away, and operations per second for the chart.

use std::collections::BTreeMap;

use serde::Serialize;
use skv_check::history::{Outcome, Record};
use skv_proto::cluster::{hash_slot, ClusterMap};

/// An operation slower than this (or failing) counts as its shard being unavailable.
pub(crate) const UNAVAILABLE_AFTER_MS: u64 = 500;

/// One fault of the run, with when it was injected and healed (seconds since the start).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultEvent {
    pub(crate) kind: String,
    pub(crate) detail: String,
    pub(crate) shard: Option<u32>,
    pub(crate) injected_s: f64,
    pub(crate) healed_s: Option<f64>,
    /// For a fault that took a shard's leader away: seconds from injection until that shard
    /// first answered an operation invoked after it.
    pub(crate) failover_s: Option<f64>,
}

/// A stretch of time in which a shard answered nothing in time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Window {
    pub(crate) shard: u32,
    pub(crate) from_s: f64,
    pub(crate) to_s: f64,
}

impl Window {
    pub(crate) fn seconds(&self) -> f64 {
        self.to_s - self.from_s
    }
}

/// Operation counts of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Counts {
    pub(crate) operations: usize,
    pub(crate) ok: usize,
    pub(crate) failed: usize,
    pub(crate) unknown: usize,
    /// Errors by kind (`timeout`, `unavailable`, …), failed and unknown together.
    pub(crate) errors: BTreeMap<String, usize>,
}

pub(crate) fn counts(records: &[Record]) -> Counts {
    let mut c = Counts {
        operations: records.len(),
        ..Counts::default()
    };
    for r in records {
        match &r.outcome {
            Outcome::Failed { error } => {
                c.failed += 1;
                *c.errors.entry(error.clone()).or_default() += 1;
            }
            Outcome::Unknown { error } => {
                c.unknown += 1;
                *c.errors.entry(error.clone()).or_default() += 1;
            }
            _ => c.ok += 1,
        }
    }
    c
}

fn succeeded(r: &Record) -> bool {
    !matches!(r.outcome, Outcome::Failed { .. } | Outcome::Unknown { .. })
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The shard of `key` in `map` (0 if no shard owns its slot, which a valid map rules out).
pub(crate) fn shard_of(map: &ClusterMap, key: &str) -> u32 {
    map.shard_of_slot(hash_slot(key.as_bytes()))
        .map_or(0, |s| s.id)
}

/// Each shard's unavailability windows: from the invocation of an operation that failed or
/// took longer than [`UNAVAILABLE_AFTER_MS`], until the first operation on that shard that
/// succeeded after it; overlapping windows merged, shorter ones dropped.
pub(crate) fn windows(records: &[Record], map: &ClusterMap) -> Vec<Window> {
    let limit = UNAVAILABLE_AFTER_MS * 1_000_000;
    let mut by_shard: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_shard.entry(shard_of(map, &r.key)).or_default().push(r);
    }
    let mut out = Vec::new();
    for (shard, ops) in by_shard {
        let mut successes: Vec<u64> = ops
            .iter()
            .filter(|r| succeeded(r))
            .map(|r| r.ret_ns)
            .collect();
        successes.sort_unstable();
        let mut shard_windows: Vec<(u64, u64)> = Vec::new();
        for r in &ops {
            let bad = !succeeded(r) || r.ret_ns - r.call_ns > limit;
            if !bad {
                continue;
            }
            let start = r.call_ns;
            // The first success after the start (the slow operation itself, if nothing
            // earlier); none at all means the shard stayed down until the history ends.
            let end = match successes.binary_search(&start) {
                Ok(i) | Err(i) => successes.get(i).copied(),
            }
            .unwrap_or_else(|| ops.iter().map(|r| r.ret_ns).max().unwrap_or(start));
            match shard_windows.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => shard_windows.push((start, end)),
            }
        }
        out.extend(
            shard_windows
                .into_iter()
                .filter(|(a, b)| b - a >= limit)
                .map(|(a, b)| Window {
                    shard,
                    from_s: secs(a),
                    to_s: secs(b),
                }),
        );
    }
    out.sort_by(|a, b| a.from_s.total_cmp(&b.from_s));
    out
}

/// Seconds from `injected_s` until shard `shard` first answered an operation invoked after
/// it; `None` if it never did.
pub(crate) fn failover(
    records: &[Record],
    map: &ClusterMap,
    shard: u32,
    injected_s: f64,
) -> Option<f64> {
    let from = (injected_s * 1e9) as u64;
    records
        .iter()
        .filter(|r| r.call_ns >= from && succeeded(r) && shard_of(map, &r.key) == shard)
        .map(|r| r.ret_ns)
        .min()
        .map(|ns| secs(ns) - injected_s)
}

/// p50, p99 and max of `values` (nearest rank), or `None` for none.
pub(crate) fn percentiles(values: &[f64]) -> Option<(f64, f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Some((rank(0.50), rank(0.99), v[v.len() - 1]))
}

/// Successful and failed operations completed in each second of the run.
pub(crate) fn per_second(records: &[Record]) -> Vec<(u64, u64, u64)> {
    let last = records.iter().map(|r| r.ret_ns / 1_000_000_000).max();
    let Some(last) = last else {
        return Vec::new();
    };
    let mut out: Vec<(u64, u64, u64)> = (0..=last).map(|s| (s, 0, 0)).collect();
    for r in records {
        let s = (r.ret_ns / 1_000_000_000) as usize;
        if succeeded(r) {
            out[s].1 += 1;
        } else {
            out[s].2 += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_check::history::Op;

    fn rec(key: &str, call_ms: u64, ret_ms: u64, ok: bool) -> Record {
        Record {
            process: 0,
            key: key.into(),
            op: Op::Get,
            call_ns: call_ms * 1_000_000,
            ret_ns: ret_ms * 1_000_000,
            outcome: if ok {
                Outcome::Found { found: None }
            } else {
                Outcome::Failed {
                    error: "timeout".into(),
                }
            },
        }
    }

    #[test]
    fn a_stall_becomes_one_window_ending_at_the_next_success() {
        let map = ClusterMap::single("t", "n1", "127.0.0.1:1");
        let records = vec![
            rec("a", 0, 5, true),
            rec("a", 1000, 3000, false),
            rec("a", 1200, 2500, false),
            rec("a", 3000, 3400, true),
            rec("a", 3500, 3505, true),
            // A short blip is not a window.
            rec("a", 4000, 4100, false),
            rec("a", 4100, 4105, true),
        ];
        let w = windows(&records, &map);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            (w[0].from_s - 1.0).abs() < 1e-9 && (w[0].to_s - 3.4).abs() < 1e-9,
            "{w:?}"
        );
        assert_eq!(failover(&records, &map, w[0].shard, 0.9), Some(3.4 - 0.9));
        let c = counts(&records);
        assert_eq!((c.ok, c.failed, c.errors["timeout"]), (4, 3, 3));
        let ps = per_second(&records);
        assert_eq!(ps.iter().map(|s| s.1 + s.2).sum::<u64>(), 7);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        assert_eq!(percentiles(&[]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentiles(&v), Some((50.0, 99.0, 100.0)));
    }
}
