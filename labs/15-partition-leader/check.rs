//! Lab 15 (partition-leader): the world's setup and the checker's rule.
//!
//! Setup (at start): waits until every shard has a leader and records each shard's leader and
//! term in the lab's facts.
//! Frozen: exactly one node is stopped by a signal (`kill -STOP`: state `T` in
//! /proc/PID/stat), and it led at least one shard at start. A node that is gone (killed) is
//! lab 14's crash, not a partition.
//! Taken over: each shard the frozen node led now has a leader among the other two, in a
//! higher term than at start, as the running nodes report it.
//! Writes continue: the student wrote keys under mine/ (allowed PUTs from their certificate in
//! the audit logs) after the node was frozen; with it still frozen, the checker reads every key
//! the student wrote (none lost) and writes and reads one of its own through the other two.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::lab::check::{Ctx, Op, Outcome, Part, Report};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const STUDENT: &str = "alice";
const PREFIX: &str = "mine/";

/// Each shard's leader at start.
pub(crate) fn setup(ctx: &mut Ctx) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leaders = ctx.leaders();
        if !leaders.is_empty() && leaders.iter().all(|(_, l, _)| l.is_some()) {
            for (shard, leader, term) in leaders {
                let facts = &mut ctx.state.facts;
                facts.insert(format!("leader.{shard}"), leader.unwrap_or_default());
                facts.insert(format!("term.{shard}"), term.to_string());
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not every shard elected a leader in 20 s: {leaders:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the process `pid` is stopped by a signal (`T` in /proc/PID/stat).
fn frozen(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
        })
        .is_some_and(|state| state == 'T')
}

fn at(line: &serde_json::Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(line["time"].as_str()?, &Rfc3339).ok()
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut freeze = Part::new("freeze a leader");
    let mut took_over = Part::new("a new leader took over");
    let mut writes = Part::new("writes continue");
    let pid_of = |node: &str| {
        ctx.state
            .procs
            .iter()
            .find(|p| p.name == node && crate::lab::process::is_alive(p))
            .map(|p| p.pid)
    };
    let down: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| pid_of(n).is_none())
        .collect();
    let stopped: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| pid_of(n).is_some_and(frozen))
        .collect();
    let give_up = |mut freeze: Part, mut took_over: Part, mut writes: Part| {
        took_over.miss("freeze a leader first (see above)");
        writes.miss("freeze a leader first (see above)");
        freeze.missing.dedup();
        Report::of(vec![freeze, took_over, writes])
    };
    if !down.is_empty() {
        freeze.miss(format!(
            "{} not running: that is a crash (lab 14). Here the node stays alive but cut off: \
             `skv lab restart 15` starts it again, then freeze a leader with `kill -STOP`",
            down.join(" and ")
        ));
        return give_up(freeze, took_over, writes);
    }
    let frozen_node = match stopped.as_slice() {
        [] => {
            freeze.miss(
                "every node runs freely: freeze the leader of a shard (`skv lab leaders 15` \
                 names them) with `kill -STOP $(cat run/<node>.pid)` and leave it frozen while \
                 you check",
            );
            return give_up(freeze, took_over, writes);
        }
        [one] => *one,
        many => {
            freeze.miss(format!(
                "{} are frozen: with two of three replicas cut off no shard has a majority. \
                 `kill -CONT` one of them and freeze just one",
                many.join(" and ")
            ));
            return give_up(freeze, took_over, writes);
        }
    };
    let led: Vec<(u32, u64)> = ctx
        .state
        .facts
        .iter()
        .filter(|(k, v)| k.starts_with("leader.") && v.as_str() == frozen_node)
        .filter_map(|(k, _)| {
            let shard: u32 = k.strip_prefix("leader.")?.parse().ok()?;
            let term = ctx.fact(&format!("term.{shard}"))?.parse().ok()?;
            Some((shard, term))
        })
        .collect();
    if led.is_empty() {
        freeze.miss(format!(
            "{frozen_node} is frozen, but it led no shard (it was a follower everywhere): \
             freezing a follower changes nothing for the clients. `kill -CONT` it, then \
             freeze a node `skv lab leaders 15` names as a leader"
        ));
        return give_up(freeze, took_over, writes);
    }
    let shard_name = |s: u32| {
        if s == 0 {
            "the metadata group".to_owned()
        } else {
            format!("shard {s}")
        }
    };
    freeze.note(format!(
        "{frozen_node} is frozen (stopped, its sockets still open); it led {}",
        led.iter()
            .map(|(s, _)| shard_name(*s))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let now = ctx.leaders();
    for (shard, old_term) in &led {
        match now.iter().find(|(s, _, _)| s == shard) {
            Some((_, Some(leader), term)) if leader != frozen_node && term > old_term => {
                took_over.note(format!(
                    "{}: {leader} leads now, in term {term} (it was {frozen_node} in term \
                     {old_term})",
                    shard_name(*shard)
                ));
            }
            other => took_over.miss(format!(
                "{} has no new leader yet ({}): the others elect one after an election timeout \
                 (a second or two); check again",
                shard_name(*shard),
                match other {
                    Some((_, Some(l), t)) => format!("the others name {l} in term {t}"),
                    _ => "the others know no leader".to_owned(),
                }
            )),
        }
    }

    // The student's writes, and the last request the frozen node took from them.
    let fingerprint = ctx.fingerprint(STUDENT).unwrap_or_default();
    let mine = |l: &serde_json::Value| {
        l["decision"] == "allow"
            && l["peer"] == fingerprint.as_str()
            && l["op"] == "put"
            && l["key"].as_str().is_some_and(|k| k.starts_with(PREFIX))
    };
    let audits: Vec<(&str, Vec<serde_json::Value>)> =
        NODES.iter().map(|n| (*n, ctx.audit(n))).collect();
    let written: BTreeSet<String> = audits
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .filter(|l| mine(l))
        .filter_map(|l| l["key"].as_str().map(str::to_owned))
        .collect();
    // The frozen node wrote its audit lines up to the moment it stopped: anything a survivor
    // took later was served without it.
    let frozen_last = audits
        .iter()
        .find(|(n, _)| *n == frozen_node)
        .and_then(|(_, lines)| lines.iter().filter_map(at).max());
    let after: Vec<&serde_json::Value> = audits
        .iter()
        .filter(|(n, _)| *n != frozen_node)
        .flat_map(|(_, lines)| lines.iter())
        .filter(|l| mine(l))
        .filter(|l| match (at(l), frozen_last) {
            (Some(t), Some(last)) => t > last,
            _ => false,
        })
        .collect();
    if after.is_empty() {
        writes.miss(format!(
            "the audit logs show no write of yours under {PREFIX} since {frozen_node} froze: \
             write a few keys through a node that is not frozen (`--addr` of another node)"
        ));
    } else {
        writes.note(format!(
            "{} of your writes committed with {frozen_node} frozen",
            after.len()
        ));
    }
    let up: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| *n != frozen_node)
        .collect();
    let seeds: Vec<String> = up.iter().filter_map(|n| ctx.addr(n).ok()).collect();
    let entry = up[0];
    let mut lost = Vec::new();
    for key in &written {
        match ctx.admin_op(entry, seeds.clone(), Op::Get(key)) {
            Outcome::Value(Some(_)) => {}
            Outcome::Value(None) => lost.push(key.clone()),
            other => {
                writes.miss(format!(
                    "with {frozen_node} frozen the cluster did not serve {key}: {}",
                    other.describe()
                ));
                return Report::of(vec![freeze, took_over, writes]);
            }
        }
    }
    if lost.is_empty() {
        writes.note(format!(
            "all {} of your acknowledged writes read back through {}",
            written.len(),
            up.join(" and ")
        ));
    } else {
        writes.miss(format!(
            "{} acknowledged write(s) are gone: {}",
            lost.len(),
            lost.join(", ")
        ));
    }
    let probe = format!("lab/probe-{}", ctx.state.started_at);
    let wrote = ctx.admin_op(entry, seeds.clone(), Op::Put(&probe, b"still writable"));
    let read = ctx.admin_op(entry, seeds, Op::Get(&probe));
    if !(wrote.allowed() && read.value().is_some()) {
        writes.miss(format!(
            "with {frozen_node} frozen the checker could not write and read a key: {} / {}",
            wrote.describe(),
            read.describe()
        ));
    }
    Report::of(vec![freeze, took_over, writes])
}
