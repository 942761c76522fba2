//! The history format: one [`Record`] per operation, saved as JSON lines.
//!
//! A logical process has one operation in flight at a time. When an operation's outcome is
//! unknown (it timed out, or its answer was lost), it may take effect at any later moment, so
//! the process that issued it can never again be sure of its own order: the recorder retires
//! that process and continues with a fresh process id, as Jepsen does. A process id therefore
//! has at most one [`Outcome::Unknown`] operation, and it is its last.

use serde::{Deserialize, Serialize};

/// One operation as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The logical process (one operation in flight at a time).
    pub process: u64,
    /// The key the operation touched.
    pub key: String,
    /// What was asked.
    pub op: Op,
    /// When it was invoked: nanoseconds since the history began, on one monotonic clock.
    pub call_ns: u64,
    /// When its answer arrived (or, for [`Outcome::Unknown`], when the client gave up; the
    /// operation may still take effect after that).
    pub ret_ns: u64,
    /// What came back.
    pub outcome: Outcome,
}

/// An operation on one key. Values written by a history are unique, so a read names the write
/// it observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Op {
    /// Read the key.
    Get,
    /// Write `value`.
    Put {
        /// The value written.
        value: String,
    },
    /// Remove the key.
    Delete,
    /// Write `value` only if the key's version is `expect_version` (0: the key must not
    /// exist).
    Cas {
        /// The version the key must have.
        expect_version: u64,
        /// The value written if it has.
        value: String,
    },
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    /// A get's answer: the version and value it found, or nothing.
    Found {
        /// `None`: the key did not exist.
        found: Option<Versioned>,
    },
    /// A put or a successful cas: the version the write was given.
    Written {
        /// The key's new version.
        version: u64,
    },
    /// A delete's answer.
    Deleted {
        /// Whether the key existed.
        existed: bool,
    },
    /// A cas that did not write: the key's version differed.
    Conflict {
        /// The key's version at that moment (0: it did not exist).
        current_version: u64,
    },
    /// The operation certainly had no effect (a read that failed, or a write refused before
    /// it could be applied). The checker ignores it.
    Failed {
        /// The error, as the client reported it.
        error: String,
    },
    /// The operation may or may not have taken effect (a timeout, a lost answer, a write
    /// whose commit was not confirmed).
    Unknown {
        /// The error, as the client reported it.
        error: String,
    },
}

/// A value with the version the store gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The version.
    pub version: u64,
    /// The value.
    pub value: String,
}

/// The longest line [`read_jsonl`] accepts. A record is a few hundred bytes; the bound keeps a
/// corrupt or hostile file (one endless line) from taking the memory of the machine.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Why a history could not be read or is not a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading the input failed.
    #[error("reading the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line is longer than [`MAX_LINE_BYTES`].
    #[error("line {line}: longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong {
        /// The line number, from 1.
        line: usize,
    },
    /// A line is not a record.
    #[error("line {line}: not a record: {message}")]
    Parse {
        /// The line number, from 1.
        line: usize,
        /// What serde_json said (it names the column and the field).
        message: String,
    },
    /// A record that answered before it was invoked.
    #[error("record {index} (process {process}): ret_ns {ret_ns} is before call_ns {call_ns}")]
    ReturnBeforeCall {
        /// The record's position in the history, from 1 (its line number in a file).
        index: usize,
        /// Its process.
        process: u64,
        /// Its invocation time.
        call_ns: u64,
        /// Its completion time.
        ret_ns: u64,
    },
    /// A process invoked an operation while its previous one was still in flight.
    #[error(
        "record {index} (process {process}): invoked at {call_ns} ns while the process's \
         previous operation (record {previous}) was in flight until {previous_ret_ns} ns; a \
         process has one operation in flight at a time"
    )]
    Overlap {
        /// The later record's position, from 1.
        index: usize,
        /// The process.
        process: u64,
        /// The later record's invocation time.
        call_ns: u64,
        /// The earlier record's position, from 1.
        previous: usize,
        /// The earlier record's completion time.
        previous_ret_ns: u64,
    },
    /// Two operations wrote the same value to a key. The checker tells writes apart by their
    /// values, so a history must write each value once.
    #[error("record {index}: key {key:?} is written the value {value:?} again (first by record {first}); values written must be unique")]
    DuplicateValue {
        /// The later record's position, from 1.
        index: usize,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The earlier record's position, from 1.
        first: usize,
    },
    /// A process went on after an operation whose outcome is unknown.
    #[error(
        "record {index} (process {process}): the process's record {unknown} has an unknown \
         outcome, so it must be the process's last (the recorder retires the process)"
    )]
    AfterUnknown {
        /// The later record's position, from 1.
        index: usize,
        /// The process.
        process: u64,
        /// The unknown record's position, from 1.
        unknown: usize,
    },
}

/// Reads a history saved as JSON lines: one [`Record`] per line; blank lines are skipped.
/// Errors name the line. The records are not validated; see [`validate`].
pub fn read_jsonl(mut input: impl std::io::BufRead) -> Result<Vec<Record>, HistoryError> {
    let mut records = Vec::new();
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        line += 1;
        buf.clear();
        // `take` bounds what one line may allocate: read at most one byte past the limit,
        // which tells an over-long line from one that is exactly at it.
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = std::io::BufRead::read_until(
            &mut std::io::Read::take(&mut input, limit),
            b'\n',
            &mut buf,
        )?;
        if n == 0 {
            return Ok(records);
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        } else if n as u64 == limit {
            return Err(HistoryError::LineTooLong { line });
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice(&buf).map_err(|err| HistoryError::Parse {
            line,
            message: err.to_string(),
        })?;
        records.push(record);
    }
}

/// Writes a history as JSON lines, one record per line.
pub fn write_jsonl(mut output: impl std::io::Write, records: &[Record]) -> std::io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut output, record)?;
        output.write_all(b"\n")?;
    }
    output.flush()
}

/// Checks that `records` can be a history: every operation returns no earlier than it was
/// invoked, a process has one operation in flight at a time, and an operation with an unknown
/// outcome is its process's last. Records may come in any order.
pub fn validate(records: &[Record]) -> Result<(), HistoryError> {
    let mut by_process: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
    let mut written: std::collections::HashMap<(&str, &str), usize> = Default::default();
    for (i, r) in records.iter().enumerate() {
        if let Op::Put { value } | Op::Cas { value, .. } = &r.op {
            if let Some(&first) = written.get(&(r.key.as_str(), value.as_str())) {
                return Err(HistoryError::DuplicateValue {
                    index: i + 1,
                    key: r.key.clone(),
                    value: value.clone(),
                    first: first + 1,
                });
            }
            written.insert((r.key.as_str(), value.as_str()), i);
        }
        if r.ret_ns < r.call_ns {
            return Err(HistoryError::ReturnBeforeCall {
                index: i + 1,
                process: r.process,
                call_ns: r.call_ns,
                ret_ns: r.ret_ns,
            });
        }
        by_process.entry(r.process).or_default().push(i);
    }
    for (&process, ops) in &mut by_process {
        ops.sort_by_key(|&i| (records[i].call_ns, records[i].ret_ns, i));
        for pair in ops.windows(2) {
            let (prev, next) = (&records[pair[0]], &records[pair[1]]);
            if matches!(prev.outcome, Outcome::Unknown { .. }) {
                return Err(HistoryError::AfterUnknown {
                    index: pair[1] + 1,
                    process,
                    unknown: pair[0] + 1,
                });
            }
            // An answer and the next invocation may carry the same timestamp (a coarse
            // clock); a strictly earlier invocation is two operations at once.
            if next.call_ns < prev.ret_ns {
                return Err(HistoryError::Overlap {
                    index: pair[1] + 1,
                    process,
                    call_ns: next.call_ns,
                    previous: pair[0] + 1,
                    previous_ret_ns: prev.ret_ns,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(process: u64, call_ns: u64, ret_ns: u64, outcome: Outcome) -> Record {
        Record {
            process,
            key: "k".into(),
            op: Op::Put {
                value: format!("p{process}-{call_ns}"),
            },
            call_ns,
            ret_ns,
            outcome,
        }
    }

    #[test]
    fn jsonl_round_trips() {
        let records = vec![
            put(1, 10, 20, Outcome::Written { version: 3 }),
            put(
                2,
                15,
                40,
                Outcome::Unknown {
                    error: "timed out".into(),
                },
            ),
        ];
        let mut out = Vec::new();
        write_jsonl(&mut out, &records).unwrap();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(read_jsonl(&out[..]).unwrap(), records);
    }

    #[test]
    fn reads_the_documented_example_line() {
        let line = r#"{"process":3,"key":"k1","op":{"type":"cas","expect_version":41,"value":"p3-7"},"call_ns":12004000000,"ret_ns":12010000000,"outcome":{"type":"conflict","current_version":52}}"#;
        let records = read_jsonl(format!("{line}\n\n").as_bytes()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0].outcome,
            Outcome::Conflict {
                current_version: 52
            }
        );
    }

    #[test]
    fn malformed_line_is_rejected_with_its_number() {
        let good = r#"{"process":1,"key":"k","op":{"type":"get"},"call_ns":1,"ret_ns":2,"outcome":{"type":"found","found":null}}"#;
        let input = format!("{good}\n\n{good}\n{{\"process\":1,\"key\":\"k\"\n");
        let err = read_jsonl(input.as_bytes()).unwrap_err();
        assert!(matches!(err, HistoryError::Parse { line: 4, .. }), "{err}");
        assert!(err.to_string().starts_with("line 4:"), "{err}");

        let unknown_op = good.replace("\"get\"", "\"increment\"");
        let err = read_jsonl(unknown_op.as_bytes()).unwrap_err();
        assert!(matches!(err, HistoryError::Parse { line: 1, .. }), "{err}");
    }

    #[test]
    fn over_long_line_is_rejected_without_reading_it_all() {
        let mut input = vec![b' '; MAX_LINE_BYTES + 10];
        input.push(b'\n');
        let err = read_jsonl(&input[..]).unwrap_err();
        assert!(
            matches!(err, HistoryError::LineTooLong { line: 1 }),
            "{err}"
        );
    }

    #[test]
    fn validation_rejects_impossible_histories() {
        let w = || Outcome::Written { version: 1 };
        let err = validate(&[put(1, 20, 10, w())]).unwrap_err();
        assert!(
            matches!(err, HistoryError::ReturnBeforeCall { index: 1, .. }),
            "{err}"
        );

        let err = validate(&[put(1, 10, 30, w()), put(1, 20, 40, w())]).unwrap_err();
        assert!(
            matches!(
                err,
                HistoryError::Overlap {
                    index: 2,
                    previous: 1,
                    ..
                }
            ),
            "{err}"
        );

        let unknown = Outcome::Unknown {
            error: "lost".into(),
        };
        let err = validate(&[put(1, 50, 60, w()), put(1, 10, 20, unknown)]).unwrap_err();
        assert!(
            matches!(
                err,
                HistoryError::AfterUnknown {
                    index: 1,
                    unknown: 2,
                    ..
                }
            ),
            "{err}"
        );

        let mut again = put(2, 100, 110, w());
        again.op = put(1, 10, 20, w()).op;
        let err = validate(&[put(1, 10, 20, w()), again]).unwrap_err();
        assert!(
            matches!(
                err,
                HistoryError::DuplicateValue {
                    index: 2,
                    first: 1,
                    ..
                }
            ),
            "{err}"
        );

        // Back to back (one answer, the next call at the same instant) is fine.
        validate(&[put(1, 10, 20, w()), put(1, 20, 30, w()), put(2, 0, 90, w())]).unwrap();
    }
}
