//! The linearizability check: key by key, is there one order of the operations, consistent with
//! real time, in which a versioned register gives every result the history recorded?
//!
//! # The model
//!
//! Keys are independent (each operation touches one key), so each key is checked on its own, a
//! far smaller search than the whole history. The sequential spec is a register holding a
//! value or nothing. Versions are not predictable (they come from a per-shard counter shared by
//! many keys), so the spec cannot compute them; instead it works on values, which a history
//! writes once each (checked by [`validate`]), and maps versions to values from what was
//! observed: a put or cas answered `Written { version }`, and every get that found something,
//! say which value carries which version. A version seen with two values, or a value with two
//! versions, is already an anomaly. A cas's `expect_version` then names a value (or, for 0,
//! "absent"); a value whose version was never observed (an indeterminate put nobody read) matches
//! any version that no other value claims. The state also carries the highest version written
//! so far, so a write given a lower version than one already linearized is rejected: the
//! counter only goes up.
//!
//! # Indeterminate operations
//!
//! An [`Outcome::Unknown`] write may take effect at any moment after its call, or never. The
//! search gives it no return event (it stays concurrent with everything after its call) and two
//! ways to be linearized: applied, or as a no-op (which is the same as never happening). The
//! linearization found says, for each, which it took: that is how the report accounts for
//! indeterminate operations. An unknown get has no effect and is left out; failed operations
//! had no effect and are left out.
//!
//! # Why not a checker crate
//!
//! Issue 11 asked for a maintained crate: stateright's `LinearizabilityTester` or its
//! extraction `consistency_model` (0.0.0, no dependencies). Its `serialized_history` is a
//! recursive depth-first search with no memo of visited states, which clones the remaining
//! history at each step. Measured on a single-key register history of 10 concurrent threads
//! with no indeterminate operations (release build): 40 operations in 0.18 s, 80 in 37 s, 160
//! not done after 60 s. A real run has thousands of operations per key, so it cannot be used.
//! This module implements the algorithm of Wing and Gong with Lowe's memo (as Porcupine does):
//! an iterative search over a linked list of call and return events, which linearizes a pending
//! operation when the spec allows it, backtracks when a return event is reached with its
//! operation not yet linearized, and never revisits a (set of linearized operations, state)
//! pair. The set is kept as a 128-bit Zobrist hash, so a memo entry is 32 bytes whatever the
//! history's length; two different sets colliding (odds about n²/2¹²⁸) could only prune a
//! branch, never accept a wrong history. The number of states explored per key is bounded
//! ([`Options::budget`]); past it the key's verdict is "unknown (search budget exhausted)".
//!
//! Measured (the `scale_of_a_*` tests, debug build of this crate, one core): a synthetic valid
//! history of 20,008 operations over 8 keys from 10 processes, 50 of them indeterminate, is
//! checked in 0.2 s, exploring 24k states, with a peak RSS of 9 MiB for the whole test
//! process; 180,008 operations (ten minutes at 300 a second) with 100 indeterminate take 1.6 s,
//! 216k states, 51 MiB. With one read mutated so that only the search can reject it, the
//! rejection takes the same time (0.3 s and 35k states; 3.6 s and 394k states).
//!
//! Before searching, simple sound rules look for the common anomalies and name them (a stale
//! read, a lost write, a double-applied cas, a read going back in time, a version anomaly);
//! each of them implies that no linearization exists. Only what they miss is reported as the
//! search's generic "no order explains" message.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Serialize;

use crate::history::{validate, HistoryError, Op, Outcome, Record};

/// How hard to search.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// States (set of linearized operations, register state) one key may explore before its
    /// verdict is "unknown". Each costs about 50 bytes of memo.
    pub budget: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options { budget: 4_000_000 }
    }
}

/// The outcome of checking a history.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The verdict over all keys: not linearizable if any key is not, undecided if any key
    /// ran out of budget, linearizable otherwise.
    pub verdict: Verdict,
    /// Counts over the history.
    pub summary: Summary,
    /// One entry per key, in key order.
    pub keys: Vec<KeyReport>,
}

/// The verdict over all keys.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Verdict {
    /// Every key's operations have a linearization.
    Linearizable,
    /// A key has none; the first such key's anomaly.
    NotLinearizable {
        /// What was found.
        anomaly: Anomaly,
    },
    /// No anomaly found, but these keys' searches ran out of budget.
    Undecided {
        /// The keys.
        keys: Vec<String>,
    },
}

/// Counts over a history.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Operations recorded.
    pub ops: u64,
    /// Operations that returned an answer.
    pub ok: u64,
    /// Operations that certainly had no effect.
    pub failed: u64,
    /// Operations whose outcome is unknown.
    pub unknown: u64,
    /// Puts and cas answered `Written`.
    pub acknowledged_writes: u64,
    /// Acknowledged writes that a key's final read should have seen (or something written
    /// after them) but did not.
    pub acknowledged_writes_lost: u64,
    /// Keys with writes but no final read (a get invoked after every other operation on the
    /// key returned), so whose lost writes could not be counted.
    pub keys_without_final_read: u64,
}

/// One key's result.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// Operations on it (all outcomes).
    pub ops: u64,
    /// States the search explored.
    pub states_explored: u64,
    /// Its verdict.
    pub verdict: KeyVerdict,
}

/// One key's verdict.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeyVerdict {
    /// A linearization exists.
    Linearizable {
        /// The indeterminate writes, and whether that linearization applied each.
        indeterminate: Vec<Indeterminate>,
    },
    /// None exists.
    NotLinearizable {
        /// What was found.
        anomaly: Anomaly,
    },
    /// The search ran out of budget.
    Undecided {
        /// Why.
        reason: String,
    },
}

/// An indeterminate write and what the linearization found made of it.
#[derive(Debug, Clone, Serialize)]
pub struct Indeterminate {
    /// The operation.
    pub op: OpSummary,
    /// Whether it took effect in the linearization found.
    pub applied: bool,
}

/// A kind of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyClass {
    /// A read missed a write that had completed before the read began.
    StaleRead,
    /// A key's final read missed an acknowledged write.
    LostWrite,
    /// Two cas succeeded from the same version, or one cas was applied twice.
    DoubleAppliedCas,
    /// A read saw an older value than a read that had completed before it began.
    ReadBackInTime,
    /// Versions that contradict each other: one version with two values, a value with two
    /// versions, or a counter going back.
    VersionAnomaly,
    /// No order explains the results, and none of the rules above names why.
    NotLinearizable,
}

impl AnomalyClass {
    fn as_str(self) -> &'static str {
        match self {
            AnomalyClass::StaleRead => "stale read",
            AnomalyClass::LostWrite => "lost write",
            AnomalyClass::DoubleAppliedCas => "double-applied cas",
            AnomalyClass::ReadBackInTime => "read going back in time",
            AnomalyClass::VersionAnomaly => "version anomaly",
            AnomalyClass::NotLinearizable => "no linearization",
        }
    }
}

/// An anomaly: the key, the operations involved, and what they show.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// The key.
    pub key: String,
    /// Its kind.
    pub class: AnomalyClass,
    /// The processes whose operations are involved.
    pub processes: Vec<u64>,
    /// The operations involved, in call order.
    pub ops: Vec<OpSummary>,
    /// What they show, in words.
    pub message: String,
}

/// An operation, for a report.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    /// The record's position in the history, from 1 (its line in a file without blank lines).
    pub record: usize,
    /// Its process.
    pub process: u64,
    /// What was asked, e.g. `put p1-9`.
    pub op: String,
    /// What came back, e.g. `written version 52`.
    pub outcome: String,
    /// When it was invoked, in seconds since the history began.
    pub call_s: f64,
    /// When it returned, in seconds; `None` for an indeterminate operation.
    pub ret_s: Option<f64>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Linearizable => write!(f, "linearizable")?,
            Verdict::NotLinearizable { anomaly } => write!(
                f,
                "NOT linearizable: {}: {}",
                anomaly.class.as_str(),
                anomaly.message
            )?,
            Verdict::Undecided { keys } => write!(
                f,
                "unknown (search budget exhausted) for keys {}; no anomaly found",
                keys.join(", ")
            )?,
        }
        let s = &self.summary;
        let (applied, dropped) = self.keys.iter().fold((0, 0), |acc, k| match &k.verdict {
            KeyVerdict::Linearizable { indeterminate } => {
                let a = indeterminate.iter().filter(|i| i.applied).count();
                (acc.0 + a, acc.1 + indeterminate.len() - a)
            }
            _ => acc,
        });
        // Only keys found linearizable say what became of their indeterminate writes.
        let fates = if applied + dropped > 0 {
            format!(" ({applied} indeterminate writes applied, {dropped} not)")
        } else {
            String::new()
        };
        write!(
            f,
            "\n{} ops over {} keys: {} ok, {} failed, {} unknown{fates}; {} acknowledged \
             writes, {} lost",
            s.ops,
            self.keys.len(),
            s.ok,
            s.failed,
            s.unknown,
            s.acknowledged_writes,
            s.acknowledged_writes_lost
        )?;
        if s.keys_without_final_read > 0 {
            write!(
                f,
                " ({} keys have no final read, so their lost writes are not counted)",
                s.keys_without_final_read
            )?;
        }
        Ok(())
    }
}

/// Checks a history with the default [`Options`].
pub fn check_history(records: &[Record]) -> Result<Report, HistoryError> {
    check_history_with(records, Options::default())
}

/// Checks a history. A history that [`validate`] rejects is an error, not a verdict.
pub fn check_history_with(records: &[Record], options: Options) -> Result<Report, HistoryError> {
    validate(records)?;
    let mut by_key: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    let mut summary = Summary::default();
    for (i, r) in records.iter().enumerate() {
        by_key.entry(r.key.as_str()).or_default().push(i);
        summary.ops += 1;
        match r.outcome {
            Outcome::Failed { .. } => summary.failed += 1,
            Outcome::Unknown { .. } => summary.unknown += 1,
            Outcome::Written { .. } => {
                summary.ok += 1;
                summary.acknowledged_writes += 1;
            }
            _ => summary.ok += 1,
        }
    }
    let mut keys = Vec::new();
    let mut undecided = Vec::new();
    let mut first_anomaly = None;
    for (key, indices) in by_key {
        let history = KeyHistory::new(key, records, &indices);
        match history.lost_writes() {
            Some(lost) => summary.acknowledged_writes_lost += lost,
            None => summary.keys_without_final_read += 1,
        }
        let (verdict, states_explored) = history.check(options.budget);
        match &verdict {
            KeyVerdict::NotLinearizable { anomaly } if first_anomaly.is_none() => {
                first_anomaly = Some(anomaly.clone());
            }
            KeyVerdict::Undecided { .. } => undecided.push(key.to_owned()),
            _ => {}
        }
        keys.push(KeyReport {
            key: key.to_owned(),
            ops: indices.len() as u64,
            states_explored,
            verdict,
        });
    }
    let verdict = match first_anomaly {
        Some(anomaly) => Verdict::NotLinearizable { anomaly },
        None if !undecided.is_empty() => Verdict::Undecided { keys: undecided },
        None => Verdict::Linearizable,
    };
    Ok(Report {
        verdict,
        summary,
        keys,
    })
}

/// A value of one key, interned.
type ValueId = u32;
const ABSENT: ValueId = ValueId::MAX;

/// An operation of one key, as the search sees it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `None`: found nothing.
    Get(Option<ValueId>),
    Put(ValueId),
    /// `None`: unknown.
    Delete(Option<bool>),
    CasWritten {
        expect: u64,
        value: ValueId,
    },
    CasConflict {
        expect: u64,
        current: u64,
    },
    CasUnknown {
        expect: u64,
        value: ValueId,
    },
}

#[derive(Debug)]
struct KOp {
    record: usize,
    kind: Kind,
    unknown: bool,
    call_ns: u64,
    /// `u64::MAX` for an unknown outcome: it may take effect at any time after its call.
    ret_ns: u64,
}

/// The register's state in the search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    value: ValueId,
    /// The highest version linearized so far.
    max_version: u64,
}

struct KeyHistory<'a> {
    key: &'a str,
    records: &'a [Record],
    ops: Vec<KOp>,
    /// Per value: its text, the op that wrote it (if any), its version (if observed).
    values: Vec<(&'a str, Option<usize>, Option<u64>)>,
    version_value: HashMap<u64, ValueId>,
    /// An anomaly found while mapping versions to values.
    mapping_anomaly: Option<Anomaly>,
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl<'a> KeyHistory<'a> {
    fn new(key: &'a str, records: &'a [Record], indices: &[usize]) -> Self {
        let mut h = KeyHistory {
            key,
            records,
            ops: Vec::new(),
            values: Vec::new(),
            version_value: HashMap::new(),
            mapping_anomaly: None,
        };
        let mut ids: HashMap<&'a str, ValueId> = HashMap::new();
        let mut intern = |values: &mut Vec<(&'a str, Option<usize>, Option<u64>)>, v: &'a str| {
            *ids.entry(v).or_insert_with(|| {
                values.push((v, None, None));
                (values.len() - 1) as ValueId
            })
        };
        // Observations (value, version, op) to map versions once every writer is known.
        let mut seen: Vec<(ValueId, u64, usize)> = Vec::new();
        for &i in indices {
            let r = &records[i];
            let unknown = matches!(r.outcome, Outcome::Unknown { .. });
            let kind = match (&r.op, &r.outcome) {
                (_, Outcome::Failed { .. }) | (Op::Get, Outcome::Unknown { .. }) => continue,
                (Op::Get, Outcome::Found { found }) => Kind::Get(found.as_ref().map(|f| {
                    let id = intern(&mut h.values, &f.value);
                    seen.push((id, f.version, h.ops.len()));
                    id
                })),
                (Op::Put { value }, Outcome::Written { .. } | Outcome::Unknown { .. }) => {
                    let id = intern(&mut h.values, value);
                    h.values[id as usize].1 = Some(h.ops.len());
                    if let Outcome::Written { version } = r.outcome {
                        seen.push((id, version, h.ops.len()));
                    }
                    Kind::Put(id)
                }
                (Op::Delete, Outcome::Deleted { existed }) => Kind::Delete(Some(*existed)),
                (Op::Delete, Outcome::Unknown { .. }) => Kind::Delete(None),
                (
                    Op::Cas {
                        expect_version,
                        value,
                    },
                    outcome,
                ) => {
                    let id = intern(&mut h.values, value);
                    let expect = *expect_version;
                    match outcome {
                        Outcome::Written { version } => {
                            h.values[id as usize].1 = Some(h.ops.len());
                            seen.push((id, *version, h.ops.len()));
                            Kind::CasWritten { expect, value: id }
                        }
                        Outcome::Unknown { .. } => {
                            h.values[id as usize].1 = Some(h.ops.len());
                            Kind::CasUnknown { expect, value: id }
                        }
                        Outcome::Conflict { current_version } => Kind::CasConflict {
                            expect,
                            current: *current_version,
                        },
                        _ => {
                            let a = h.mismatched_record(i);
                            h.note(a);
                            continue;
                        }
                    }
                }
                _ => {
                    // An answer of the wrong kind (a put answered `found`): the store (or the
                    // recorder) is broken in a way no order explains.
                    let a = h.mismatched_record(i);
                    h.note(a);
                    continue;
                }
            };
            h.ops.push(KOp {
                record: i,
                kind,
                unknown,
                call_ns: r.call_ns,
                ret_ns: if unknown { u64::MAX } else { r.ret_ns },
            });
        }
        h.map_versions(&seen);
        h
    }

    /// Keeps the first anomaly found while mapping versions.
    fn note(&mut self, anomaly: Anomaly) {
        self.mapping_anomaly.get_or_insert(anomaly);
    }

    fn mismatched_record(&self, record: usize) -> Anomaly {
        let s = self.summary_of_record(record);
        Anomaly {
            key: self.key.to_owned(),
            class: AnomalyClass::NotLinearizable,
            processes: vec![s.process],
            message: format!(
                "key {:?}: process {}'s {} was answered {}, an answer of the wrong kind",
                self.key, s.process, s.op, s.outcome
            ),
            ops: vec![s],
        }
    }

    fn map_versions(&mut self, seen: &[(ValueId, u64, usize)]) {
        for &(id, version, op) in seen {
            // One anomaly is reported; the search is skipped, so the maps need not be complete.
            if self.mapping_anomaly.is_some() {
                return;
            }
            if version == 0 {
                let a = self.anomaly(
                    AnomalyClass::VersionAnomaly,
                    &[op],
                    format!("{} version 0, which means \"absent\"", self.describe(op)),
                );
                self.note(a);
                continue;
            }
            match self.values[id as usize].2 {
                Some(v) if v != version => {
                    let first = self.observer(id, v).unwrap_or(op);
                    let writer = self.values[id as usize].1;
                    let (class, what) = match writer.map(|w| self.ops[w].kind) {
                        Some(Kind::CasWritten { .. } | Kind::CasUnknown { .. }) => (
                            AnomalyClass::DoubleAppliedCas,
                            "the cas that wrote it was applied twice",
                        ),
                        _ => (AnomalyClass::VersionAnomaly, "one value, two versions"),
                    };
                    let mut involved = vec![first, op];
                    involved.extend(writer);
                    let a = self.anomaly(
                        class,
                        &involved,
                        format!(
                            "{}, but {}: {what}",
                            self.describe(first),
                            self.describe(op)
                        ),
                    );
                    self.note(a);
                }
                Some(_) => {}
                None => self.values[id as usize].2 = Some(version),
            }
            match self.version_value.get(&version) {
                Some(&other) if other != id => {
                    let first = self.observer(other, version).unwrap_or(op);
                    let a = self.anomaly(
                        AnomalyClass::VersionAnomaly,
                        &[first, op],
                        format!(
                            "{}, but {}: one version, two values",
                            self.describe(first),
                            self.describe(op)
                        ),
                    );
                    self.note(a);
                }
                Some(_) => {}
                None => {
                    self.version_value.insert(version, id);
                }
            }
            if self.values[id as usize].1.is_none() {
                let a = self.anomaly(
                    AnomalyClass::NotLinearizable,
                    &[op],
                    format!("{}, a value no operation wrote", self.describe(op)),
                );
                self.note(a);
            }
        }
    }

    /// An op that observed `value` at `version`.
    fn observer(&self, value: ValueId, version: u64) -> Option<usize> {
        (0..self.ops.len()).find(|&i| self.observation(i) == Some((value, version)))
    }

    /// The (value, version) op `i` observed or was given, if it did.
    fn observation(&self, i: usize) -> Option<(ValueId, u64)> {
        let r = &self.records[self.ops[i].record];
        match (&self.ops[i].kind, &r.outcome) {
            (Kind::Get(Some(v)), Outcome::Found { found: Some(f) }) => Some((*v, f.version)),
            (Kind::Put(v) | Kind::CasWritten { value: v, .. }, Outcome::Written { version }) => {
                Some((*v, *version))
            }
            _ => None,
        }
    }

    fn summary_of_record(&self, record: usize) -> OpSummary {
        let r = &self.records[record];
        let op = match &r.op {
            Op::Get => "get".to_owned(),
            Op::Put { value } => format!("put {value}"),
            Op::Delete => "delete".to_owned(),
            Op::Cas {
                expect_version,
                value,
            } => format!("cas {value} expecting version {expect_version}"),
        };
        let outcome = match &r.outcome {
            Outcome::Found { found: None } => "found nothing".to_owned(),
            Outcome::Found { found: Some(f) } => {
                format!("found {} (version {})", f.value, f.version)
            }
            Outcome::Written { version } => format!("written version {version}"),
            Outcome::Deleted { existed } => format!("deleted (existed: {existed})"),
            Outcome::Conflict { current_version } => {
                format!("conflict at version {current_version}")
            }
            Outcome::Failed { error } => format!("failed ({error})"),
            Outcome::Unknown { error } => format!("unknown ({error})"),
        };
        let unknown = matches!(r.outcome, Outcome::Unknown { .. });
        OpSummary {
            record: record + 1,
            process: r.process,
            op,
            outcome,
            call_s: secs(r.call_ns),
            ret_s: (!unknown).then(|| secs(r.ret_ns)),
        }
    }

    /// "process 3's get at 12.004 s found p2-17 (version 41)".
    fn describe(&self, op: usize) -> String {
        let s = self.summary_of_record(self.ops[op].record);
        let when = match s.ret_s {
            Some(ret) => format!("{:.3}–{:.3} s", s.call_s, ret),
            None => format!("from {:.3} s, outcome unknown", s.call_s),
        };
        format!(
            "process {}'s {} ({when}) {}",
            s.process,
            s.op,
            s.outcome.replace(" (unknown", " (")
        )
    }

    fn anomaly(&self, class: AnomalyClass, ops: &[usize], what: String) -> Anomaly {
        let mut ops: Vec<usize> = ops.to_vec();
        ops.sort_by_key(|&i| (self.ops[i].call_ns, i));
        ops.dedup();
        let summaries: Vec<OpSummary> = ops
            .iter()
            .map(|&i| self.summary_of_record(self.ops[i].record))
            .collect();
        let mut processes: Vec<u64> = summaries.iter().map(|s| s.process).collect();
        processes.sort_unstable();
        processes.dedup();
        Anomaly {
            key: self.key.to_owned(),
            class,
            processes,
            ops: summaries,
            message: format!("key {:?}: {what}", self.key),
        }
    }

    /// The version of the value op `i` wrote or read, if known.
    fn version_of_value(&self, v: ValueId) -> Option<u64> {
        self.values.get(v as usize).and_then(|x| x.2)
    }

    fn written_version(&self, i: usize) -> Option<u64> {
        match (&self.ops[i].kind, self.ops[i].unknown) {
            (Kind::Put(_) | Kind::CasWritten { .. }, false) => {
                self.observation(i).map(|(_, ver)| ver)
            }
            _ => None,
        }
    }

    fn read_version(&self, i: usize) -> Option<u64> {
        match self.ops[i].kind {
            Kind::Get(Some(v)) => self.version_of_value(v),
            _ => None,
        }
    }

    /// The gets invoked after every other operation on the key returned, or `None` if the key
    /// has writes but no such get.
    fn final_reads(&self) -> Option<Vec<usize>> {
        let last_ret = self
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.key == self.key && !matches!(r.op, Op::Get))
            .map(|(_, r)| r.ret_ns)
            .max();
        let last_ret = last_ret?;
        let finals: Vec<usize> = (0..self.ops.len())
            .filter(|&i| {
                matches!(self.ops[i].kind, Kind::Get(_)) && self.ops[i].call_ns >= last_ret
            })
            .collect();
        (!finals.is_empty()).then_some(finals)
    }

    /// Acknowledged writes the key's last final read should have seen (it, or a later
    /// version) and did not. `None`: no final read.
    fn lost_writes(&self) -> Option<u64> {
        let Some(finals) = self.final_reads() else {
            return if self
                .records
                .iter()
                .any(|r| r.key == self.key && !matches!(r.op, Op::Get))
            {
                None
            } else {
                Some(0)
            };
        };
        let last = *finals.iter().max_by_key(|&&i| self.ops[i].call_ns)?;
        let seen = match self.ops[last].kind {
            Kind::Get(Some(_)) => self.read_version(last),
            _ => None,
        };
        let lost = (0..self.ops.len())
            .filter_map(|w| self.written_version(w).map(|ver| (w, ver)))
            .filter(|&(w, ver)| match seen {
                Some(seen) => ver > seen,
                // Found nothing: lost unless a delete may have come after the write.
                None => !self.delete_may_follow(w, last),
            })
            .count();
        Some(lost as u64)
    }

    /// Whether a delete that may have removed something could be linearized after write `w`
    /// and before read `r` returned.
    fn delete_may_follow(&self, w: usize, r: usize) -> bool {
        self.ops.iter().any(|d| {
            matches!(d.kind, Kind::Delete(Some(true) | None))
                && d.ret_ns >= self.ops[w].call_ns
                && d.call_ns <= self.ops[r].ret_ns
        })
    }

    /// The named anomalies: each rule is implied by the spec, so whatever one finds, no
    /// linearization exists. The earliest read that breaks a rule is reported.
    fn named_anomaly(&self) -> Option<Anomaly> {
        if let Some(a) = &self.mapping_anomaly {
            return Some(a.clone());
        }
        // Two cas succeeding from the same version (not 0: a delete may bring a key back to
        // "absent"). A version names one value, and versions only go up, so the key holds
        // that version during one interval, and the first cas ends it.
        let mut by_expect: HashMap<u64, usize> = HashMap::new();
        for i in 0..self.ops.len() {
            if let Kind::CasWritten { expect, .. } = self.ops[i].kind {
                if expect == 0 {
                    continue;
                }
                if let Some(&first) = by_expect.get(&expect) {
                    return Some(self.anomaly(
                        AnomalyClass::DoubleAppliedCas,
                        &[first, i],
                        format!(
                            "{} and {} both succeeded from version {expect}; only one can",
                            self.describe(first),
                            self.describe(i)
                        ),
                    ));
                }
                by_expect.insert(expect, i);
            }
        }
        // Sweep in call order; `done` holds, per kind, the highest-versioned write and read
        // that returned before the current call.
        let mut by_call: Vec<usize> = (0..self.ops.len()).collect();
        by_call.sort_by_key(|&i| (self.ops[i].call_ns, i));
        let mut by_ret: Vec<usize> = (0..self.ops.len())
            .filter(|&i| !self.ops[i].unknown)
            .collect();
        by_ret.sort_by_key(|&i| (self.ops[i].ret_ns, i));
        let finals = self.final_reads().unwrap_or_default();
        let mut best_write: Option<(u64, usize)> = None;
        let mut best_read: Option<(u64, usize)> = None;
        let mut next = 0;
        for &i in &by_call {
            let call = self.ops[i].call_ns;
            while next < by_ret.len() && self.ops[by_ret[next]].ret_ns < call {
                let j = by_ret[next];
                next += 1;
                if let Some(v) = self.written_version(j) {
                    if best_write.is_none_or(|(b, _)| v > b) {
                        best_write = Some((v, j));
                    }
                }
                if let Some(v) = self.read_version(j) {
                    if best_read.is_none_or(|(b, _)| v > b) {
                        best_read = Some((v, j));
                    }
                }
            }
            if let (Some(v), Some((wv, w))) = (self.written_version(i), best_write) {
                if v <= wv {
                    return Some(self.anomaly(
                        AnomalyClass::VersionAnomaly,
                        &[w, i],
                        format!(
                            "{} had completed, then {}: versions went back",
                            self.describe(w),
                            self.describe(i)
                        ),
                    ));
                }
            }
            let Some(v) = self.read_version(i) else {
                continue;
            };
            let Kind::Get(Some(value)) = self.ops[i].kind else {
                continue;
            };
            let text = self.values[value as usize].0;
            let writer = self.values[value as usize].1;
            if let Some((wv, w)) = best_write.filter(|&(wv, _)| v < wv) {
                let (class, tail) = if finals.contains(&i) {
                    (
                        AnomalyClass::LostWrite,
                        "this read came after every write, so the write was lost",
                    )
                } else {
                    (AnomalyClass::StaleRead, "a stale read")
                };
                let mut involved = vec![w, i];
                involved.extend(writer);
                let by = match writer {
                    Some(x) => format!(" ({} wrote it)", self.who(x)),
                    None => String::new(),
                };
                return Some(self.anomaly(
                    class,
                    &involved,
                    format!(
                        "{}, but {} had completed before that read began, and {text} is \
                         older (version {v} < {wv}){by}: {tail}",
                        self.describe(i),
                        self.describe(w)
                    ),
                ));
            }
            if let Some((rv, r)) = best_read.filter(|&(rv, _)| v < rv) {
                return Some(self.anomaly(
                    AnomalyClass::ReadBackInTime,
                    &[r, i],
                    format!(
                        "{}, but {} had already completed: {text} (version {v}) is older than \
                         version {rv}, so the later read went back in time",
                        self.describe(i),
                        self.describe(r)
                    ),
                ));
            }
        }
        None
    }

    /// "process 2's put (version 41)".
    fn who(&self, op: usize) -> String {
        let r = &self.records[self.ops[op].record];
        let what = match r.op {
            Op::Cas { .. } => "cas",
            _ => "put",
        };
        format!("process {}'s {what}", r.process)
    }

    /// Whether the register in state `s` may have version `e` (0: absent).
    fn may_have_version(&self, s: State, e: u64) -> bool {
        if s.value == ABSENT {
            return e == 0;
        }
        match self.version_of_value(s.value) {
            Some(v) => v == e,
            // A value whose version nobody observed may carry any version no other value does.
            None => e != 0 && !self.version_value.contains_key(&e),
        }
    }

    fn must_have_version(&self, s: State, e: u64) -> bool {
        if s.value == ABSENT {
            return e == 0;
        }
        self.version_of_value(s.value) == Some(e)
    }

    /// Writing `value` in state `s`: `None` if its known version is not above every version
    /// before it.
    fn write(&self, s: State, value: ValueId) -> Option<State> {
        match self.version_of_value(value) {
            Some(v) if v <= s.max_version => None,
            Some(v) => Some(State {
                value,
                max_version: v,
            }),
            None => Some(State {
                value,
                max_version: s.max_version,
            }),
        }
    }

    /// The spec: op `i` linearized in state `s` (applied, for an indeterminate write).
    fn step(&self, s: State, i: usize, apply: bool) -> Option<State> {
        if !apply {
            return Some(s);
        }
        match self.ops[i].kind {
            Kind::Get(v) => (s.value == v.unwrap_or(ABSENT)).then_some(s),
            Kind::Put(v) => self.write(s, v),
            Kind::Delete(existed) => {
                if existed.is_some_and(|e| e != (s.value != ABSENT)) {
                    return None;
                }
                Some(State { value: ABSENT, ..s })
            }
            Kind::CasWritten { expect, value } | Kind::CasUnknown { expect, value } => {
                if self.may_have_version(s, expect) {
                    self.write(s, value)
                } else {
                    None
                }
            }
            Kind::CasConflict { expect, current } => (current != expect
                && !self.must_have_version(s, expect)
                && self.may_have_version(s, current))
            .then_some(s),
        }
    }

    /// Ways op `i` may be linearized: applied, and (for an indeterminate write) not.
    fn choices(&self, i: usize) -> u8 {
        if self.ops[i].unknown {
            2
        } else {
            1
        }
    }

    fn check(&self, budget: u64) -> (KeyVerdict, u64) {
        if let Some(anomaly) = self.named_anomaly() {
            return (KeyVerdict::NotLinearizable { anomaly }, 0);
        }
        match self.search(budget) {
            Search::Found(applied) => {
                let indeterminate = (0..self.ops.len())
                    .filter(|&i| self.ops[i].unknown)
                    .map(|i| Indeterminate {
                        op: self.summary_of_record(self.ops[i].record),
                        applied: applied[i],
                    })
                    .collect();
                (KeyVerdict::Linearizable { indeterminate }, applied.explored)
            }
            Search::Exhausted(explored) => (
                KeyVerdict::Undecided {
                    reason: format!(
                        "search budget exhausted after {explored} states; no anomaly found"
                    ),
                },
                explored,
            ),
            Search::None { explored, stuck } => (
                KeyVerdict::NotLinearizable {
                    anomaly: self.stuck_anomaly(&stuck),
                },
                explored,
            ),
        }
    }

    fn stuck_anomaly(&self, stuck: &Stuck) -> Anomaly {
        let mut involved = stuck.recent.clone();
        involved.push(stuck.blocked);
        let state = if stuck.state.value == ABSENT {
            "nothing".to_owned()
        } else {
            let v = stuck.state.value as usize;
            match self.values[v].2 {
                Some(ver) => format!("{} (version {ver})", self.values[v].0),
                None => self.values[v].0.to_owned(),
            }
        };
        let last = match stuck.recent.last() {
            Some(&l) => format!(", the last of them {}", self.describe(l)),
            None => String::new(),
        };
        self.anomaly(
            AnomalyClass::NotLinearizable,
            &involved,
            format!(
                "no order of the operations explains {}: at best {} operations can be ordered \
                 before it{last}; the key then holds {state}, and neither it nor any operation \
                 concurrent with it can come next",
                self.describe(stuck.blocked),
                stuck.depth
            ),
        )
    }

    /// Wing–Gong / Lowe: see the module doc.
    fn search(&self, budget: u64) -> Search {
        let n = self.ops.len();
        // Events 1..=2n in a doubly linked list; 0 is the head. Calls sort before returns at
        // the same instant, so operations that touch in time count as concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (i, op) in self.ops.iter().enumerate() {
            events.push((op.call_ns, false, i));
            events.push((op.ret_ns, true, i));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut next: Vec<usize> = (1..=len).collect();
        let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
        next[len - 1] = 0;
        prev[0] = len - 1;
        let mut ret_entry = vec![0; n];
        for (e, &(_, is_ret, i)) in events.iter().enumerate() {
            if is_ret {
                ret_entry[i] = e + 1;
            }
        }
        let event = |e: usize| events[e - 1];
        let zobrist: Vec<u128> = (0..n as u64)
            .map(|i| (u128::from(splitmix(2 * i)) << 64) | u128::from(splitmix(2 * i + 1)))
            .collect();

        let remove = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
            next[prev[e]] = next[e];
            prev[next[e]] = prev[e];
        };
        let restore = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize| {
            next[prev[e]] = e;
            prev[next[e]] = e;
        };

        struct Frame {
            entry: usize,
            before: State,
            choice: u8,
        }
        let mut stack: Vec<Frame> = Vec::new();
        let mut memo: HashSet<(u128, State)> = HashSet::new();
        let mut state = State {
            value: ABSENT,
            max_version: 0,
        };
        let mut hash: u128 = 0;
        let mut explored: u64 = 0;
        let mut stuck = Stuck {
            depth: 0,
            blocked: 0,
            recent: Vec::new(),
            state,
        };
        let mut entry = next[0];
        let mut first_choice: u8 = 0;
        loop {
            if next[0] == 0 {
                let mut applied = vec![false; n];
                for f in &stack {
                    applied[event(f.entry).2] = f.choice == 0;
                }
                return Search::Found(Applied { applied, explored });
            }
            let (_, is_ret, i) = event(entry);
            if !is_ret {
                let mut linearized = false;
                for choice in first_choice..self.choices(i) {
                    let Some(after) = self.step(state, i, choice == 0) else {
                        continue;
                    };
                    let h = hash ^ zobrist[i];
                    if !memo.insert((h, after)) {
                        continue;
                    }
                    explored += 1;
                    if explored > budget {
                        return Search::Exhausted(explored - 1);
                    }
                    stack.push(Frame {
                        entry,
                        before: state,
                        choice,
                    });
                    state = after;
                    hash = h;
                    remove(&mut next, &mut prev, entry);
                    remove(&mut next, &mut prev, ret_entry[i]);
                    linearized = true;
                    break;
                }
                first_choice = 0;
                entry = if linearized { next[0] } else { next[entry] };
                continue;
            }
            // A return whose operation is not linearized yet: every order from here fails.
            if stack.len() > stuck.depth || stuck.recent.is_empty() {
                stuck = Stuck {
                    depth: stack.len(),
                    blocked: i,
                    recent: stack
                        .iter()
                        .rev()
                        .take(3)
                        .map(|f| event(f.entry).2)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect(),
                    state,
                };
            }
            let Some(frame) = stack.pop() else {
                return Search::None { explored, stuck };
            };
            let op = event(frame.entry).2;
            restore(&mut next, &mut prev, ret_entry[op]);
            restore(&mut next, &mut prev, frame.entry);
            state = frame.before;
            hash ^= zobrist[op];
            entry = frame.entry;
            first_choice = frame.choice + 1;
        }
    }
}

/// The deepest point a failed search reached.
#[derive(Debug)]
struct Stuck {
    depth: usize,
    /// The op whose return could not be passed.
    blocked: usize,
    /// The last ops linearized before it.
    recent: Vec<usize>,
    state: State,
}

#[derive(Debug)]
struct Applied {
    applied: Vec<bool>,
    explored: u64,
}

impl std::ops::Index<usize> for Applied {
    type Output = bool;
    fn index(&self, i: usize) -> &bool {
        &self.applied[i]
    }
}

#[derive(Debug)]
enum Search {
    Found(Applied),
    Exhausted(u64),
    None { explored: u64, stuck: Stuck },
}

/// A fixed pseudo-random function (SplitMix64's finaliser): Zobrist keys for the memo.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::history::Versioned;

    const MS: u64 = 1_000_000;

    fn rec(process: u64, op: Op, call_ms: u64, ret_ms: u64, outcome: Outcome) -> Record {
        Record {
            process,
            key: "k".into(),
            op,
            call_ns: call_ms * MS,
            ret_ns: ret_ms * MS,
            outcome,
        }
    }
    fn put(p: u64, value: &str, call: u64, ret: u64, version: u64) -> Record {
        let op = Op::Put {
            value: value.into(),
        };
        rec(p, op, call, ret, Outcome::Written { version })
    }
    fn put_unknown(p: u64, value: &str, call: u64, ret: u64) -> Record {
        let op = Op::Put {
            value: value.into(),
        };
        let outcome = Outcome::Unknown {
            error: "timed out".into(),
        };
        rec(p, op, call, ret, outcome)
    }
    fn get(p: u64, call: u64, ret: u64, found: Option<(u64, &str)>) -> Record {
        let found = found.map(|(version, value)| Versioned {
            version,
            value: value.into(),
        });
        rec(p, Op::Get, call, ret, Outcome::Found { found })
    }
    fn cas(p: u64, expect: u64, value: &str, call: u64, ret: u64, outcome: Outcome) -> Record {
        let op = Op::Cas {
            expect_version: expect,
            value: value.into(),
        };
        rec(p, op, call, ret, outcome)
    }
    fn delete(p: u64, call: u64, ret: u64, existed: bool) -> Record {
        rec(p, Op::Delete, call, ret, Outcome::Deleted { existed })
    }

    fn anomaly(records: &[Record]) -> Anomaly {
        let report = check_history(records).unwrap();
        let line = report.to_string();
        match report.verdict {
            Verdict::NotLinearizable { anomaly } => {
                assert!(line.starts_with("NOT linearizable: "), "{line}");
                anomaly
            }
            other => panic!("expected an anomaly, got {other:?}"),
        }
    }

    fn assert_names(a: &Anomaly, class: AnomalyClass, processes: &[u64]) {
        assert_eq!(a.class, class, "{}", a.message);
        assert_eq!(a.key, "k");
        assert!(a.message.contains("key \"k\""), "{}", a.message);
        for p in processes {
            assert!(a.processes.contains(p), "{p} missing: {a:?}");
            assert!(
                a.message.contains(&format!("process {p}'s")),
                "{p} not named: {}",
                a.message
            );
        }
    }

    fn linearizable(records: &[Record]) -> Report {
        let report = check_history(records).unwrap();
        assert!(
            matches!(report.verdict, Verdict::Linearizable),
            "{report}\n{:?}",
            report.verdict
        );
        assert!(report.to_string().starts_with("linearizable"), "{report}");
        report
    }

    fn indeterminate(report: &Report) -> Vec<bool> {
        report
            .keys
            .iter()
            .flat_map(|k| match &k.verdict {
                KeyVerdict::Linearizable { indeterminate } => {
                    indeterminate.iter().map(|i| i.applied).collect()
                }
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn rejects_a_stale_read() {
        let a = anomaly(&[
            put(1, "a", 0, 10, 5),
            put(1, "b", 20, 30, 9),
            get(2, 40, 50, Some((5, "a"))),
            put(3, "c", 60, 70, 12),
            get(3, 80, 90, Some((12, "c"))),
        ]);
        assert_names(&a, AnomalyClass::StaleRead, &[1, 2]);
        assert!(a.message.contains("stale read"), "{}", a.message);
        assert_eq!(
            a.ops.len(),
            3,
            "the read, the missed write, the write it saw"
        );
    }

    #[test]
    fn rejects_a_lost_write_and_counts_it() {
        let records = [
            put(1, "a", 0, 10, 5),
            put(2, "b", 20, 30, 9),
            get(3, 40, 50, Some((5, "a"))),
        ];
        let a = anomaly(&records);
        assert_names(&a, AnomalyClass::LostWrite, &[2, 3]);
        let report = check_history(&records).unwrap();
        assert_eq!(report.summary.acknowledged_writes, 2);
        assert_eq!(report.summary.acknowledged_writes_lost, 1);
    }

    #[test]
    fn a_final_read_of_nothing_loses_writes_no_delete_explains() {
        let records = [put(1, "a", 0, 10, 5), get(2, 40, 50, None)];
        anomaly(&records);
        let report = check_history(&records).unwrap();
        assert_eq!(report.summary.acknowledged_writes_lost, 1);

        let deleted = [
            put(1, "a", 0, 10, 5),
            delete(2, 20, 30, true),
            get(2, 40, 50, None),
        ];
        let report = linearizable(&deleted);
        assert_eq!(report.summary.acknowledged_writes_lost, 0);
    }

    #[test]
    fn rejects_two_cas_from_one_version() {
        let w = |version| Outcome::Written { version };
        let a = anomaly(&[
            put(1, "a", 0, 10, 5),
            cas(2, 5, "b", 20, 30, w(7)),
            cas(3, 5, "c", 25, 35, w(8)),
        ]);
        assert_names(&a, AnomalyClass::DoubleAppliedCas, &[2, 3]);
    }

    #[test]
    fn rejects_a_cas_applied_twice() {
        let a = anomaly(&[
            put(1, "a", 0, 10, 5),
            cas(2, 5, "b", 20, 30, Outcome::Written { version: 7 }),
            get(3, 40, 50, Some((7, "b"))),
            get(4, 60, 70, Some((11, "b"))),
        ]);
        assert_names(&a, AnomalyClass::DoubleAppliedCas, &[2, 4]);
    }

    #[test]
    fn rejects_a_read_going_back_in_time() {
        // The second put is still in flight, so neither read is stale on its own; together
        // they order b before a.
        let a = anomaly(&[
            put(1, "a", 0, 10, 5),
            put(2, "b", 20, 200, 9),
            get(3, 30, 40, Some((9, "b"))),
            get(4, 50, 60, Some((5, "a"))),
        ]);
        assert_names(&a, AnomalyClass::ReadBackInTime, &[3, 4]);
    }

    #[test]
    fn rejects_version_anomalies() {
        let a = anomaly(&[put(1, "a", 0, 10, 5), get(2, 20, 30, Some((5, "b")))]);
        assert_eq!(a.class, AnomalyClass::VersionAnomaly, "{}", a.message);
        // A counter that goes back.
        let a = anomaly(&[put(1, "a", 0, 10, 5), put(2, "b", 20, 30, 4)]);
        assert_names(&a, AnomalyClass::VersionAnomaly, &[1, 2]);
    }

    #[test]
    fn the_search_rejects_what_no_rule_names() {
        // A read of a deleted value: versions alone do not show it.
        let a = anomaly(&[
            put(1, "a", 0, 10, 5),
            delete(2, 20, 30, true),
            get(3, 40, 50, Some((5, "a"))),
        ]);
        assert_names(&a, AnomalyClass::NotLinearizable, &[3]);
        assert!(a.message.contains("no order"), "{}", a.message);
        // A conflict naming a version the key did not have.
        anomaly(&[
            put(1, "a", 0, 10, 5),
            cas(2, 3, "x", 20, 30, Outcome::Conflict { current_version: 7 }),
        ]);
        // A delete that found nothing after an acknowledged put.
        anomaly(&[put(1, "a", 0, 10, 5), delete(2, 20, 30, false)]);
    }

    #[test]
    fn accepts_concurrent_overlapping_operations() {
        linearizable(&[
            put(1, "a", 0, 100, 5),
            get(2, 10, 20, None),
            get(3, 30, 40, Some((5, "a"))),
            put(4, "b", 50, 150, 9),
            get(2, 60, 70, Some((5, "a"))),
            get(3, 80, 90, Some((9, "b"))),
            get(2, 95, 160, Some((9, "b"))),
            get(5, 170, 180, Some((9, "b"))),
        ]);
    }

    #[test]
    fn accounts_for_unknown_puts() {
        // Applied, even after the client gave up on it.
        let report = linearizable(&[
            put_unknown(1, "a", 0, 10),
            get(2, 20, 30, None),
            get(3, 40, 50, Some((4, "a"))),
        ]);
        assert_eq!(indeterminate(&report), [true]);
        // Never applied.
        let report = linearizable(&[put_unknown(1, "a", 0, 10), get(2, 20, 30, None)]);
        assert_eq!(indeterminate(&report), [false]);
        // Applied before an acknowledged write that overwrote it; nobody saw it.
        let report = linearizable(&[
            put_unknown(1, "a", 0, 10),
            put(2, "b", 20, 30, 9),
            get(3, 40, 50, Some((9, "b"))),
        ]);
        assert_eq!(indeterminate(&report).len(), 1);
        // Its effect still has to fit: once b is read after it was seen, a cannot return.
        anomaly(&[
            put_unknown(1, "a", 0, 10),
            get(2, 20, 30, Some((4, "a"))),
            put(3, "b", 40, 50, 9),
            get(2, 60, 70, Some((4, "a"))),
        ]);
    }

    #[test]
    fn accepts_deletes_and_cas_conflicts() {
        let w = |version| Outcome::Written { version };
        let report = linearizable(&[
            cas(1, 0, "a", 0, 10, w(2)),
            cas(2, 3, "x", 20, 30, Outcome::Conflict { current_version: 2 }),
            cas(2, 2, "b", 40, 50, w(6)),
            delete(3, 60, 70, true),
            get(1, 80, 90, None),
            delete(3, 100, 110, false),
            cas(
                1,
                6,
                "y",
                120,
                130,
                Outcome::Conflict { current_version: 0 },
            ),
            cas(1, 0, "c", 140, 150, w(11)),
            cas(
                4,
                11,
                "d",
                160,
                170,
                Outcome::Unknown {
                    error: "lost".into(),
                },
            ),
            get(5, 180, 190, Some((11, "c"))),
        ]);
        assert_eq!(indeterminate(&report), [false]);
        assert_eq!(report.summary.unknown, 1);
        assert_eq!(report.summary.acknowledged_writes, 3);
        assert_eq!(report.summary.acknowledged_writes_lost, 0);
    }

    #[test]
    fn failed_operations_are_ignored() {
        let failed = Outcome::Failed {
            error: "refused".into(),
        };
        let op = Op::Put { value: "z".into() };
        let report = linearizable(&[
            put(1, "a", 0, 10, 5),
            rec(2, op, 20, 30, failed),
            get(3, 40, 50, Some((5, "a"))),
        ]);
        assert_eq!(report.summary.failed, 1);
    }

    #[test]
    fn an_invalid_history_is_an_error_not_a_verdict() {
        let err = check_history(&[put(1, "a", 0, 30, 5), put(1, "b", 20, 40, 6)]).unwrap_err();
        assert!(matches!(err, HistoryError::Overlap { .. }), "{err}");
    }

    #[test]
    fn the_budget_bounds_the_search() {
        let records: Vec<Record> = (0..20)
            .map(|p| put(p, &format!("v{p}"), 0, 100, 10 + p))
            .chain([get(99, 200, 210, Some((29, "v19")))])
            .collect();
        let report = check_history_with(&records, Options { budget: 5 }).unwrap();
        assert!(
            matches!(report.verdict, Verdict::Undecided { .. }),
            "{report}"
        );
        assert!(
            report.to_string().contains("search budget exhausted"),
            "{report}"
        );
        linearizable(&records);
    }

    #[test]
    fn the_report_serializes() {
        let report = check_history(&[put(1, "a", 0, 10, 5)]).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["verdict"]["type"], "linearizable");
        assert_eq!(json["summary"]["acknowledged_writes"], 1);
        assert_eq!(json["keys"][0]["key"], "k");
    }

    /// A random execution of a real map, one operation at a time (so its real-time order is
    /// its only order), recorded as a history.
    fn sequential_history(steps: &[(u8, u8, u8, u8)]) -> Vec<Record> {
        let mut map: BTreeMap<String, (u64, String)> = BTreeMap::new();
        let mut counter = 0u64;
        let mut records = Vec::new();
        let mut t = 0;
        for (n, &(kind, key, process, bump)) in steps.iter().enumerate() {
            let key = format!("k{}", key % 3);
            let value = format!("v{n}");
            let (op, outcome) = match kind % 4 {
                0 => (
                    Op::Get,
                    Outcome::Found {
                        found: map.get(&key).map(|(version, value)| Versioned {
                            version: *version,
                            value: value.clone(),
                        }),
                    },
                ),
                1 => {
                    counter += 1 + u64::from(bump % 3);
                    map.insert(key.clone(), (counter, value.clone()));
                    (Op::Put { value }, Outcome::Written { version: counter })
                }
                2 => (
                    Op::Delete,
                    Outcome::Deleted {
                        existed: map.remove(&key).is_some(),
                    },
                ),
                _ => {
                    let current = map.get(&key).map_or(0, |(v, _)| *v);
                    // Half the time the right version, else a wrong one.
                    let expect = if bump % 2 == 0 { current } else { current + 1 };
                    let op = Op::Cas {
                        expect_version: expect,
                        value: value.clone(),
                    };
                    if expect == current {
                        counter += 1;
                        map.insert(key.clone(), (counter, value));
                        (op, Outcome::Written { version: counter })
                    } else {
                        (
                            op,
                            Outcome::Conflict {
                                current_version: current,
                            },
                        )
                    }
                }
            };
            records.push(Record {
                process: u64::from(process % 4),
                key,
                op,
                call_ns: t,
                ret_ns: t + 5,
                outcome,
            });
            t += 10;
        }
        records
    }

    /// A synthetic run of a real store: `procs` processes, each one operation at a time, on
    /// `keys` keys; each operation takes effect at a random instant inside its call (an
    /// indeterminate one, even after it, or never), and its result is what the store held
    /// then. The store's counter is shared by all keys, as a shard's is.
    fn synthetic_history(
        ops: usize,
        keys: u64,
        procs: u64,
        unknown: usize,
        seed: u64,
    ) -> Vec<Record> {
        let mut rng = seed;
        let mut rand = move |n: u64| {
            rng = splitmix(rng);
            rng % n
        };
        struct Planned {
            record: Record,
            effect_ns: Option<u64>,
        }
        let mut planned: Vec<Planned> = Vec::with_capacity(ops + keys as usize);
        let mut clock: Vec<u64> = vec![0; procs as usize];
        let mut id: Vec<u64> = (0..procs).collect();
        let mut next_id = procs;
        let mut last_seen: BTreeMap<String, u64> = BTreeMap::new();
        let every = (ops / unknown.max(1)).max(1);
        let mut made = 0;
        for n in 0..ops {
            let p = rand(procs) as usize;
            let call_ns = clock[p] + 1 + rand(2 * MS);
            let ret_ns = call_ns + 1 + rand(40 * MS);
            clock[p] = ret_ns;
            let key = format!("k{}", rand(keys));
            let value = format!("p{}-{n}", id[p]);
            let op = match rand(10) {
                0..=3 => Op::Get,
                4..=6 => Op::Put { value },
                7 => Op::Delete,
                _ => Op::Cas {
                    expect_version: *last_seen.get(&key).unwrap_or(&0),
                    value,
                },
            };
            // The first write after each multiple of `every`.
            let indeterminate = !matches!(op, Op::Get) && made < unknown && made * every <= n;
            made += usize::from(indeterminate);
            let effect_ns = if indeterminate {
                // Applied half the time, up to 100 ms after the client gave up.
                (rand(2) == 0).then(|| call_ns + rand(ret_ns - call_ns + 100 * MS))
            } else {
                Some(call_ns + rand(ret_ns - call_ns))
            };
            planned.push(Planned {
                record: Record {
                    process: id[p],
                    key,
                    op,
                    call_ns,
                    ret_ns,
                    outcome: if indeterminate {
                        Outcome::Unknown {
                            error: "timed out".into(),
                        }
                    } else {
                        Outcome::Failed {
                            error: "not run".into(),
                        }
                    },
                },
                effect_ns,
            });
            if indeterminate {
                id[p] = next_id;
                next_id += 1;
            }
        }
        let end = clock.iter().max().copied().unwrap_or(0) + 200 * MS;
        for k in 0..keys {
            planned.push(Planned {
                record: Record {
                    process: next_id + k,
                    key: format!("k{k}"),
                    op: Op::Get,
                    call_ns: end,
                    ret_ns: end + MS,
                    outcome: Outcome::Failed {
                        error: "not run".into(),
                    },
                },
                effect_ns: Some(end),
            });
        }
        let mut order: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].effect_ns.is_some())
            .collect();
        order.sort_by_key(|&i| planned[i].effect_ns);
        let mut store: BTreeMap<String, (u64, String)> = BTreeMap::new();
        let mut counter = 0;
        for i in order {
            let r = &mut planned[i].record;
            let current = store.get(&r.key).cloned();
            let outcome = match &r.op {
                Op::Get => Outcome::Found {
                    found: current.map(|(version, value)| Versioned { version, value }),
                },
                Op::Put { value } => {
                    counter += 1 + rand(3);
                    store.insert(r.key.clone(), (counter, value.clone()));
                    Outcome::Written { version: counter }
                }
                Op::Delete => Outcome::Deleted {
                    existed: store.remove(&r.key).is_some(),
                },
                Op::Cas {
                    expect_version,
                    value,
                } => {
                    let now = current.map_or(0, |(v, _)| v);
                    if now == *expect_version {
                        counter += 1 + rand(3);
                        store.insert(r.key.clone(), (counter, value.clone()));
                        Outcome::Written { version: counter }
                    } else {
                        Outcome::Conflict {
                            current_version: now,
                        }
                    }
                }
            };
            // What a client would expect next time: the version last seen anywhere (often
            // stale by the time its cas runs, so both outcomes occur).
            if let Some(v) = f_version(&outcome) {
                last_seen.insert(r.key.clone(), v);
            }
            if !matches!(r.outcome, Outcome::Unknown { .. }) {
                r.outcome = outcome;
            }
        }
        planned.into_iter().map(|p| p.record).collect()
    }

    fn f_version(outcome: &Outcome) -> Option<u64> {
        match outcome {
            Outcome::Found { found: Some(f) } => Some(f.version),
            Outcome::Written { version } => Some(*version),
            _ => None,
        }
    }

    fn peak_rss_kib() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The scale of a real run (issue 11): about 20k operations over 8 keys, 10 processes,
    /// about 50 indeterminate. A measurement, not a timed assertion: it prints what it took
    /// (`cargo nextest run -p skv-check --no-capture -E 'test(scale)'`).
    #[test]
    fn scale_of_a_real_run() {
        measure(20_000, 10, 50);
    }

    /// Ten minutes at 300 operations a second: `--run-ignored only -E 'test(long_run)'`.
    #[test]
    #[ignore = "a measurement of a few seconds"]
    fn scale_of_a_long_run() {
        measure(180_000, 10, 100);
    }

    fn measure(ops: usize, procs: u64, unknown_wanted: usize) {
        let records = synthetic_history(ops, 8, procs, unknown_wanted, 7);
        let unknown = records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Unknown { .. }))
            .count();
        let started = std::time::Instant::now();
        let report = check_history(&records).unwrap();
        let took = started.elapsed();
        let states: u64 = report.keys.iter().map(|k| k.states_explored).sum();
        println!(
            "{} records ({unknown} unknown) over {} keys: {report}; {states} states; took {took:?}; peak RSS {:?} KiB",
            records.len(),
            report.keys.len(),
            peak_rss_kib()
        );
        assert!(matches!(report.verdict, Verdict::Linearizable), "{report}");
        assert_eq!(unknown, unknown_wanted);

        // The same history with one read, half way, turned into "found nothing", where an
        // earlier and a later read found the same value (so no delete can explain it, the
        // value being written once): no named rule
        // sees that, so the search has to exhaust what it can reach to reject it.
        let mut bad = records;
        let half = bad.len() / 2;
        let r = (half..bad.len())
            .find(|&i| {
                let Outcome::Found { found: Some(seen) } = &bad[i].outcome else {
                    return false;
                };
                let saw = |other: &Record| {
                    other.key == bad[i].key
                        && matches!(&other.outcome, Outcome::Found { found: Some(f) } if f == seen)
                };
                bad.iter().any(|o| saw(o) && o.ret_ns < bad[i].call_ns)
                    && bad.iter().any(|o| saw(o) && o.call_ns > bad[i].ret_ns)
            })
            .unwrap();
        bad[r].outcome = Outcome::Found { found: None };
        let started = std::time::Instant::now();
        let report = check_history(&bad).unwrap();
        let took = started.elapsed();
        let states: u64 = report.keys.iter().map(|k| k.states_explored).sum();
        println!("one read mutated: {report}; {states} states; took {took:?}");
        assert!(
            matches!(report.verdict, Verdict::NotLinearizable { .. }),
            "{report}"
        );
    }

    proptest! {
        #[test]
        fn sequential_executions_are_linearizable(
            steps in proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 1..60),
        ) {
            let records = sequential_history(&steps);
            let report = check_history(&records).unwrap();
            prop_assert!(matches!(report.verdict, Verdict::Linearizable), "{}", report);
            prop_assert_eq!(report.summary.acknowledged_writes_lost, 0);
        }

        #[test]
        fn one_mutated_read_is_rejected(
            steps in proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 1..60),
            pick in any::<prop::sample::Index>(),
            other in any::<prop::sample::Index>(),
        ) {
            let mut records = sequential_history(&steps);
            let reads: Vec<usize> = (0..records.len())
                .filter(|&i| matches!(records[i].op, Op::Get))
                .collect();
            prop_assume!(!reads.is_empty());
            let r = reads[pick.index(reads.len())];
            let key = records[r].key.clone();
            // Some other (version, value) the key was given, or nothing, or a value nobody
            // wrote: anything but what the read found.
            let mut candidates: Vec<Option<Versioned>> = vec![
                None,
                Some(Versioned { version: 1_000_000, value: "phantom".into() }),
            ];
            for w in &records {
                if let (true, Op::Put { value } | Op::Cas { value, .. }, Outcome::Written { version }) =
                    (w.key == key, &w.op, &w.outcome)
                {
                    candidates.push(Some(Versioned { version: *version, value: value.clone() }));
                }
            }
            let Outcome::Found { found } = &records[r].outcome else { unreachable!() };
            candidates.retain(|c| c != found);
            let mutated = candidates[other.index(candidates.len())].clone();
            records[r].outcome = Outcome::Found { found: mutated };
            let report = check_history(&records).unwrap();
            prop_assert!(matches!(report.verdict, Verdict::NotLinearizable { .. }), "{}", report);
        }
    }
}
