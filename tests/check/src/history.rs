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
