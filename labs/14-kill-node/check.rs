//! Lab 14 (kill-node): the checker's rule.
//!
//! Killed: exactly one of the world's three nodes is down (its recorded process is gone), the
//! other two run.
//! Moved: the student wrote at least ten keys under mine/ (allowed PUTs from their certificate
//! in the nodes' audit logs); some of their requests went to the killed node, and a request for
//! one of those keys was then served by a surviving node after the killed node's last one.
//! Still served: with the node still down, the checker reads every one of the student's keys
//! through the survivors (linearizable reads: each shard's new leader, confirmed by a
//! majority) and writes and reads a key of its own.

use std::collections::BTreeSet;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::lab::check::{Ctx, Op, Outcome, Part, Report};

const NODES: [&str; 3] = ["n1", "n2", "n3"];
const STUDENT: &str = "alice";
const PREFIX: &str = "mine/";
const MIN_KEYS: usize = 10;

fn at(line: &serde_json::Value) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(line["time"].as_str()?, &Rfc3339).ok()
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut killed = Part::new("kill a node");
    let mut moved = Part::new("its requests go to the others");
    let mut served = Part::new("the cluster keeps serving");
    let down: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| !ctx.node_running(n))
        .collect();
    let up: Vec<&str> = NODES
        .iter()
        .copied()
        .filter(|n| ctx.node_running(n))
        .collect();
    let fingerprint = ctx.fingerprint(STUDENT).unwrap_or_default();
    let mine = |l: &serde_json::Value| {
        l["decision"] == "allow"
            && l["peer"] == fingerprint.as_str()
            && l["key"].as_str().is_some_and(|k| k.starts_with(PREFIX))
    };
    let audits: Vec<(&str, Vec<serde_json::Value>)> =
        NODES.iter().map(|n| (*n, ctx.audit(n))).collect();
    let written: BTreeSet<String> = audits
        .iter()
        .flat_map(|(_, lines)| lines.iter())
        .filter(|l| mine(l) && l["op"] == "put")
        .filter_map(|l| l["key"].as_str().map(str::to_owned))
        .collect();
    if written.len() < MIN_KEYS {
        moved.miss(format!(
            "the audit logs show {} key(s) you wrote under {PREFIX}; write at least {MIN_KEYS} \
             (before you kill a node, so that some of them go to it)",
            written.len()
        ));
    } else {
        moved.note(format!("you wrote {} keys under {PREFIX}", written.len()));
    }

    let dead = match down.as_slice() {
        [] => {
            killed.miss(
                "every node still runs: kill one for real (`kill -9 $(cat run/n2.pid)`) and \
                 leave it down while you check",
            );
            None
        }
        [one] => {
            killed.note(format!("{one} is down; {} run", up.join(" and ")));
            Some(*one)
        }
        many => {
            killed.miss(format!(
                "{} are down: with two of three replicas gone no shard has a majority, so \
                 nothing can be written or read linearizably. Bring one back (`skv lab restart \
                 14` restarts every stopped node) and kill just one",
                many.join(" and ")
            ));
            None
        }
    };
    let Some(dead) = dead else {
        moved.miss("kill a node first (see above)");
        served.miss("kill a node first (see above)");
        return Report::of(vec![killed, moved, served]);
    };

    // Keys whose requests the killed node took, and when it took the last of each.
    let dead_lines = audits
        .iter()
        .find(|(n, _)| *n == dead)
        .map(|(_, l)| l.as_slice())
        .unwrap_or_default();
    let mut last_on_dead: Vec<(String, OffsetDateTime)> = Vec::new();
    for line in dead_lines.iter().filter(|l| mine(l)) {
        if let (Some(key), Some(t)) = (line["key"].as_str(), at(line)) {
            match last_on_dead.iter_mut().find(|(k, _)| k == key) {
                Some((_, last)) => *last = (*last).max(t),
                None => last_on_dead.push((key.to_owned(), t)),
            }
        }
    }
    if last_on_dead.is_empty() {
        moved.miss(format!(
            "none of your requests went to {dead} before it died (its audit log, logs/{dead}-audit.log, \
             has none): write your keys while every node runs, then kill a node that took some"
        ));
    } else {
        let later = audits
            .iter()
            .filter(|(n, _)| *n != dead)
            .flat_map(|(n, lines)| lines.iter().map(move |l| (*n, l)))
            .filter(|(_, l)| mine(l))
            .find_map(|(n, l)| {
                let key = l["key"].as_str()?;
                let t = at(l)?;
                let (k, _) = last_on_dead
                    .iter()
                    .find(|(k, last)| (k == key || k.starts_with(key)) && t > *last)?;
                Some((
                    n,
                    k.clone(),
                    l["op"].as_str().unwrap_or("request").to_owned(),
                ))
            });
        match later {
            Some((n, key, op)) => moved.note(format!(
                "{dead} took {} of your keys' requests; after it went, {n} served a {op} of {key}",
                last_on_dead.len()
            )),
            None => moved.miss(format!(
                "{dead} took requests for {} of your keys, but no other node has served one of \
                 those since: with {dead} down, read your keys again (through a node that is up)",
                last_on_dead.len()
            )),
        }
    }

    // The checker's own reads, through the survivors only.
    let seeds: Vec<String> = up.iter().filter_map(|n| ctx.addr(n).ok()).collect();
    let entry = up[0];
    let mut missing = Vec::new();
    let mut failed = None;
    for key in &written {
        match ctx.admin_op(entry, seeds.clone(), Op::Get(key)) {
            Outcome::Value(Some(_)) => {}
            Outcome::Value(None) => missing.push(key.clone()),
            other => {
                failed = Some(format!("{key}: {}", other.describe()));
                break;
            }
        }
    }
    if let Some(why) = failed {
        served.miss(format!(
            "with {dead} down the cluster did not serve your keys: {why}"
        ));
    } else if !missing.is_empty() {
        served.miss(format!(
            "with {dead} down, {} of your keys are gone: {}",
            missing.len(),
            missing.join(", ")
        ));
    } else if !written.is_empty() {
        served.note(format!(
            "with {dead} down, the checker read all {} of your keys through {}",
            written.len(),
            up.join(" and ")
        ));
    }
    let probe = format!("lab/probe-{}", ctx.state.started_at);
    let wrote = ctx.admin_op(entry, seeds.clone(), Op::Put(&probe, b"still writable"));
    let read = ctx.admin_op(entry, seeds, Op::Get(&probe));
    if wrote.allowed() && read.value().is_some() {
        served.note(format!(
            "with {dead} down, a new write commits and reads back"
        ));
    } else {
        served.miss(format!(
            "with {dead} down the checker could not write and read a key: {} / {}",
            wrote.describe(),
            read.describe()
        ));
    }
    Report::of(vec![killed, moved, served])
}
