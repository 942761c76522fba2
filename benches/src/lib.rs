//! Criterion micro-benches for skv live in `benches/benches/`; run them with
//! `cargo bench -p skv-benches` (or one of them: `cargo bench -p skv-benches --bench tls`).
//!
//! | bench     | measures                                                                 |
//! |-----------|--------------------------------------------------------------------------|
//! | `codec`   | frame encode/decode                                                      |
//! | `jwt`     | token verify (uncached, cache hit) and mint, per algorithm               |
//! | `tls`     | in-memory TLS 1.3 handshakes (TLS/mTLS, full/resumed) and a 100 B record |
//! | `aead`    | AES-256-GCM seal/open (ring) at 100 B, 1 KiB, 16 KiB                     |
//! | `storage` | put (with and without flush) and get, sled and memory engines            |
//!
//! This library holds what the benches share: the short measurement settings that keep the
//! suite to a few minutes on a 2-core machine.

#![forbid(unsafe_code)]

use std::time::Duration;

/// Measurement time per benchmark (criterion's default is 5 s).
pub const MEASUREMENT_TIME: Duration = Duration::from_secs(2);

/// Warm-up time per benchmark (criterion's default is 3 s).
pub const WARM_UP_TIME: Duration = Duration::from_millis(500);

/// Samples per benchmark (criterion's default is 100; its minimum is 10).
pub const SAMPLE_SIZE: usize = 30;
