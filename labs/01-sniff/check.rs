//! Lab 01 (sniff): the checker's rule.
//!
//! Break it: capture-plain.bin is a real `skv lab sniff` capture of the plaintext protocol
//! and holds this world's flag (fresh at every start, so only a capture of this world's
//! traffic can hold it).
//! Fix it: the running node refuses plaintext and serves TLS, and capture-tls.bin is a
//! capture of TLS traffic (handshake and encrypted records) in which the flag cannot be
//! found.

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::sniff::{parse_capture, stream, Record};

const NODE: &str = "db";
const KEY: &str = "secret/flag";

pub(crate) fn check(ctx: &Ctx) -> Report {
    Report::of(vec![break_it(ctx), fix_it(ctx)])
}

/// Whether connection `conn` starts like TLS: a handshake record (0x16 0x03 ..) from the
/// client.
fn is_tls(records: &[Record], conn: u32) -> bool {
    stream(records, conn, true).starts_with(&[0x16, 0x03])
}

fn connections(records: &[Record]) -> Vec<u32> {
    let mut conns: Vec<u32> = records.iter().map(|r| r.conn).collect();
    conns.sort_unstable();
    conns.dedup();
    conns
}

fn capture(ctx: &Ctx, part: &mut Part, file: &str) -> Option<Vec<Record>> {
    let bytes = part.require(ctx.artifact(file, "a capture written by `skv lab sniff --out`"))?;
    let records = part.require(parse_capture(&bytes).map_err(|e| format!("{file}: {e}")))?;
    if records.is_empty() {
        part.miss(format!(
            "{file} recorded no traffic: the application dials $WIRE_ADDR; was your relay \
             listening there, forwarding to $DB_ADDR, while it ran?"
        ));
        return None;
    }
    Some(records)
}

fn break_it(ctx: &Ctx) -> Part {
    let mut part = Part::new("break it");
    let Some(records) = capture(ctx, &mut part, "capture-plain.bin") else {
        return part;
    };
    let conns = connections(&records);
    if conns.iter().all(|&c| is_tls(&records, c)) {
        part.miss(
            "capture-plain.bin holds TLS traffic (every connection starts with a TLS \
             handshake): it was taken after TLS was turned on. Capture the plaintext node \
             (`skv lab reset 1` starts over with it)",
        );
        return part;
    }
    let from_node: Vec<u8> = conns
        .iter()
        .flat_map(|&c| stream(&records, c, false))
        .collect();
    if ctx.contains_flag(&from_node) {
        part.note(format!(
            "the flag crossed the wire in clear: {} connection(s) recorded in capture-plain.bin",
            conns.len()
        ));
    } else if Ctx::contains_flag_shape(&from_node) {
        part.miss("capture-plain.bin holds a flag, but not this world's: capture again from the running world");
    } else {
        part.miss(format!(
            "capture-plain.bin recorded {} connection(s) but no answer holding the flag: let \
             the relay run while the application reads {KEY} (it does every 300 ms)",
            conns.len()
        ));
    }
    part
}

fn fix_it(ctx: &Ctx) -> Part {
    let mut part = Part::new("fix it");
    if part.require(ctx.require_running(NODE)).is_none() {
        return part;
    }
    match ctx.view(NODE) {
        Ok(view) if view.plaintext => part.miss(format!(
            "nodes/{NODE}.toml still says insecure_plaintext = true: delete that line, then \
             `skv lab restart 1`"
        )),
        Ok(_) => {}
        Err(e) => part.miss(e),
    }
    let plain = ctx.attempt(
        NODE,
        &Attempt {
            plaintext: true,
            ..Attempt::default()
        },
        KEY,
    );
    if plain.value().is_some() || plain.refused() {
        part.miss(format!(
            "the running node still answers plaintext requests: restart it (`skv lab restart 1`) \
             after editing nodes/{NODE}.toml"
        ));
        return part;
    }
    let tls = ctx.admin_get(NODE, KEY);
    match tls.value() {
        Some(v) if ctx.is_flag(&String::from_utf8_lossy(v)) => {
            part.note("the node serves TLS and refuses plaintext");
        }
        _ => {
            part.miss(format!(
                "the node does not serve {KEY} over TLS ({}); see logs/{NODE}.log",
                tls.describe()
            ));
            return part;
        }
    }
    let Some(records) = capture(ctx, &mut part, "capture-tls.bin") else {
        return part;
    };
    let conns = connections(&records);
    if !conns.iter().any(|&c| is_tls(&records, c)) {
        part.miss(
            "capture-tls.bin holds no TLS connection: capture again after the restart, while the \
             application talks TLS",
        );
        return part;
    }
    let all: Vec<u8> = records
        .iter()
        .flat_map(|r| r.data.iter().copied())
        .collect();
    let app_data = conns.iter().any(|&c| {
        stream(&records, c, false)
            .windows(3)
            .any(|w| w == [0x17, 0x03, 0x03])
    });
    if !app_data {
        part.miss(
            "capture-tls.bin shows TLS handshakes but no encrypted answers: let the relay run \
             long enough for the application to read through it",
        );
    } else if ctx.contains_flag(&all) || all.windows(KEY.len()).any(|w| w == KEY.as_bytes()) {
        part.miss("the flag (or the key name) is readable in capture-tls.bin: was part of it taken before the restart?");
    } else {
        part.note(format!(
            "capture-tls.bin: {} TLS connection(s), the flag and the key name nowhere in {} bytes",
            conns.iter().filter(|&&c| is_tls(&records, c)).count(),
            all.len()
        ));
    }
    part
}
