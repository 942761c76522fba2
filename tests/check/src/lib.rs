//! Histories of concurrent operations on a key-value store, and the check that they are
//! linearizable.
//!
//! A history is what a set of clients saw: every operation's invocation, its completion (or
//! that its outcome is unknown) and its result. [`history`] owns the record format (one JSON
//! object per line, so a run can be saved and checked again offline with
//! `skv check-history FILE`); [`check`] decides, key by key, whether some order of the
//! operations that respects real time explains every result.

pub mod check;
pub mod history;
