//! Criterion micro-benches for skv live in `benches/benches/`; run them with
//! `cargo bench -p skv-benches`. This library is empty: it exists so the package has a
//! library target for shared bench helpers as the suite grows.

#![forbid(unsafe_code)]
