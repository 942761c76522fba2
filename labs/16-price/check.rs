//! Lab 16 (price): the checker's rule.
//!
//! Measured: price.toml holds the four figures of a token-cache ladder run (L4 and L5 ops/s,
//! the node's CPU µs per request at each), all positive.
//! Agrees: the checker runs the same two cases itself (`skv bench ladder --cases
//! token-cache`, shortened to a few seconds, into DIR/.lab/ladder) and compares ratios, which
//! hold on a noisy shared machine where absolute figures do not: the student's L5/L4
//! throughput and L4/L5 CPU per request must each be within [`TOLERANCE`] times of its own.

use std::process::{Command, Stdio};

use crate::lab::check::{Ctx, Part, Report};

const ANSWER: &str = "price.toml";
/// How far (as a factor either way) the student's ratios may be from the checker's.
const TOLERANCE: f64 = 2.5;
const FIELDS: [&str; 4] = [
    "l4_ops_per_sec",
    "l5_ops_per_sec",
    "l4_server_us_per_op",
    "l5_server_us_per_op",
];

/// The two ratios of a run: L5/L4 throughput, L4/L5 node CPU per request.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    speedup: f64,
    cpu_saving: f64,
}

fn ratios(l4_ops: f64, l5_ops: f64, l4_us: f64, l5_us: f64) -> Ratios {
    Ratios {
        speedup: l5_ops / l4_ops,
        cpu_saving: l4_us / l5_us,
    }
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut measured = Part::new("measure it");
    let mut agrees = Part::new("agrees with the checker's run");
    let table = match ctx
        .artifact_text(
            ANSWER,
            "the four figures of your ladder run (see the README)",
        )
        .and_then(|t| {
            toml::from_str::<toml::Table>(&t).map_err(|e| format!("{ANSWER} is not TOML: {e}"))
        }) {
        Ok(t) => t,
        Err(why) => {
            measured.miss(why);
            agrees.miss("measure first (see above)");
            return Report::of(vec![measured, agrees]);
        }
    };
    let mut figures = Vec::new();
    for name in FIELDS {
        let value = table.get(name).and_then(|v| match v {
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(i) => Some(*i as f64),
            _ => None,
        });
        match value {
            Some(v) if v.is_finite() && v > 0.0 => figures.push(v),
            Some(v) => measured.miss(format!(
                "{name} = {v} is not a measurement (it must be > 0)"
            )),
            None => measured.miss(format!("{ANSWER} has no {name} = <number>")),
        }
    }
    let [l4_ops, l5_ops, l4_us, l5_us] = figures[..] else {
        agrees.miss("measure first (see above)");
        return Report::of(vec![measured, agrees]);
    };
    let theirs = ratios(l4_ops, l5_ops, l4_us, l5_us);
    measured.note(format!(
        "yours: L5 serves {:.2}× the GETs of L4, at 1/{:.2} of its node CPU per request",
        theirs.speedup, theirs.cpu_saving
    ));

    let ours = match run_ladder(ctx) {
        Ok(r) => r,
        Err(why) => {
            agrees.miss(format!("the checker's own ladder run failed: {why}"));
            return Report::of(vec![measured, agrees]);
        }
    };
    agrees.note(format!(
        "the checker's run: L5 serves {:.2}× the GETs of L4, at 1/{:.2} of its node CPU per \
         request",
        ours.speedup, ours.cpu_saving
    ));
    for (what, mine, check) in [
        ("L5/L4 throughput", theirs.speedup, ours.speedup),
        ("L4/L5 CPU per request", theirs.cpu_saving, ours.cpu_saving),
    ] {
        let factor = (mine / check).max(check / mine);
        if factor > TOLERANCE {
            agrees.miss(format!(
                "your {what} ratio is {mine:.2}, the checker measured {check:.2}: {factor:.1} \
                 times apart, more than the {TOLERANCE} the noise allows. Were L4 and L5 swapped, \
                 or the figures taken from another run or machine? Run the ladder again here and \
                 copy its figures"
            ));
        } else {
            agrees.note(format!(
                "{what}: yours {mine:.2}, the checker's {check:.2}, within {TOLERANCE}×"
            ));
        }
    }
    Report::of(vec![measured, agrees])
}

/// `skv bench ladder --cases token-cache`, short, with this `skv`, into DIR/.lab/ladder.
fn run_ladder(ctx: &Ctx) -> Result<Ratios, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find skv itself: {e}"))?;
    let out_dir = ctx.path(".lab/ladder");
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = Command::new(exe)
        .args(["bench", "ladder", "--cases", "token-cache", "--quick"])
        .args(["--warmup", "200ms", "--duration", "700ms", "--out"])
        .arg(&out_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run skv bench ladder: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(format!(
            "skv bench ladder exited {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    let json = std::fs::read(out_dir.join("results.json"))
        .map_err(|e| format!("no results.json from the run: {e}"))?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_slice(&json).map_err(|e| format!("results.json does not parse: {e}"))?;
    let figure = |rung: &str, field: &str| -> Result<f64, String> {
        rows.iter()
            .find(|r| r["rung"] == rung)
            .and_then(|r| r[field].as_f64())
            .filter(|v| *v > 0.0)
            .ok_or_else(|| format!("its {rung} row has no {field}"))
    };
    Ok(ratios(
        figure("L4", "ops_per_sec")?,
        figure("L5", "ops_per_sec")?,
        figure("L4", "server_cpu_us_per_op")?,
        figure("L5", "server_cpu_us_per_op")?,
    ))
}
