//! Lab 13 (rebalance): the checker's rule.
//!
//! Added: the spare n4 was added with `skv lab add-node`, runs, and the map of the running
//! cluster names it.
//! Serves: n4's own map gives it at least 90 % of a fair share of the slots (a quarter), and
//! n4 alone (a connection to it, no other node asked) answers an acknowledged write of the
//! application whose slot it owns with the value written: the data moved with the slots.
//! Nothing lost under load: the application kept writing while the slots moved (its
//! acknowledged-write log grew between the start and the end of `skv lab rebalance`), it still
//! runs, and every write it logged as acknowledged reads back from the cluster with its value.

use bytes::Bytes;
use skv_client::{ClusterClient, Connection};
use skv_proto::cluster::{hash_slot, ClusterMap, SLOT_COUNT};

use crate::lab::check::{Ctx, Part, Report};
use crate::lab::world;

const NEW: &str = "n4";
const OLD: [&str; 3] = ["n1", "n2", "n3"];

/// `(key, value)` of every write the application logged as acknowledged.
fn acked(ctx: &Ctx) -> Vec<(String, String)> {
    std::fs::read_to_string(ctx.path("logs/victim-acked.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn map_of(ctx: &Ctx, node: &str) -> Result<ClusterMap, String> {
    let opts = world::admin_options(&ctx.dir, &ctx.state, node).map_err(|f| f.message)?;
    ctx.block_on(async { Connection::connect(&opts).await?.cluster_map().await })
        .map_err(|e| format!("{node} did not answer: {e}"))
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut added = Part::new("add a node");
    let mut serves = Part::new("the new node serves slots");
    let mut kept = Part::new("no acknowledged write lost under load");
    let writes = acked(ctx);

    if ctx.fact(&world::added_fact(NEW)).is_none() {
        added.miss(format!(
            "{NEW} is not part of the cluster yet: `skv lab add-node 13` starts it and adds it \
             to the map"
        ));
    } else if !ctx.node_running(NEW) {
        added.miss(format!(
            "{NEW} was added but is not running: `skv lab restart 13` starts it again"
        ));
    } else {
        match OLD.iter().map(|n| map_of(ctx, n)).find_map(Result::ok) {
            Some(map) if map.node(NEW).is_some() => added.note(format!(
                "the cluster's map (epoch {}) names {NEW}",
                map.epoch
            )),
            Some(map) => added.miss(format!(
                "the cluster's map (epoch {}) does not name {NEW}: run `skv lab add-node 13` \
                 again",
                map.epoch
            )),
            None => added.miss("no node of n1, n2, n3 answers: `skv lab restart 13`"),
        }
    }

    if added.solved() {
        match map_of(ctx, NEW) {
            Err(e) => serves.miss(e),
            Ok(map) => {
                let slots: u32 = map.ranges_of_node(NEW).iter().map(|r| r.len()).sum();
                let fair = u32::from(SLOT_COUNT) / 4;
                if slots == 0 {
                    serves.miss(format!(
                        "{NEW} is in the map but serves no slot, so no request goes to it: \
                         `skv lab rebalance 13` moves its share of the slots to it"
                    ));
                } else if slots < fair * 9 / 10 {
                    serves.miss(format!(
                        "{NEW} serves {slots} slots, less than its fair share of about {fair}: \
                         run `skv lab rebalance 13` again"
                    ));
                } else {
                    serves.note(format!("{NEW} reports that it serves {slots} slots"));
                    // A write whose slot n4 owns, read from n4 alone.
                    let owned = writes.iter().rev().find(|(k, _)| {
                        map.owner_of_slot(hash_slot(k.as_bytes()))
                            .is_some_and(|o| o.id == NEW)
                    });
                    match owned {
                        None => serves.miss(format!(
                            "none of the application's writes falls in {NEW}'s slots yet; let \
                             it write a few seconds more and check again"
                        )),
                        Some((key, value)) => {
                            let got = world::admin_options(&ctx.dir, &ctx.state, NEW)
                                .map_err(|f| f.message)
                                .and_then(|opts| {
                                    ctx.block_on(async {
                                        Connection::connect(&opts).await?.get(key.clone()).await
                                    })
                                    .map_err(|e| e.to_string())
                                });
                            match got {
                                Ok(Some((_, v))) if v == value.as_bytes() => {
                                    serves.note(format!("{NEW} itself answers {key} = {value}"))
                                }
                                other => serves.miss(format!(
                                    "{NEW} owns {key}'s slot but did not answer it with \
                                     {value}: {other:?}"
                                )),
                            }
                        }
                    }
                }
            }
        }
    } else {
        serves.miss("add the node first (see above)");
    }

    if !ctx.node_running("victim") {
        kept.miss(
            "the application is not running (logs/victim.log): `skv lab restart 13` starts \
             it again",
        );
    }
    let count = |fact: &str| ctx.fact(fact).and_then(|v| v.parse::<usize>().ok());
    match (count("acked.before_moves"), count("acked.after_moves")) {
        (Some(before), Some(after)) if after > before => kept.note(format!(
            "the application had {} write(s) acknowledged while the slots moved",
            after - before
        )),
        (Some(_), Some(_)) => kept.miss(
            "the application wrote nothing while the slots moved: is it running \
             (logs/victim.log)? Rebalance with it writing",
        ),
        _ => kept.miss(
            "no slots were moved yet: `skv lab rebalance 13` moves them while the \
             application writes",
        ),
    }
    if writes.is_empty() {
        kept.miss("the application has no acknowledged write (logs/victim-acked.log)");
    } else {
        let seeds: Vec<String> = OLD
            .iter()
            .chain([&NEW])
            .filter(|n| ctx.node_running(n))
            .filter_map(|n| ctx.addr(n).ok())
            .collect();
        let result = world::admin_options(&ctx.dir, &ctx.state, "n1")
            .map_err(|f| f.message)
            .and_then(|opts| {
                ctx.block_on(async {
                    let client = ClusterClient::connect(opts, seeds).await?;
                    let mut lost = Vec::new();
                    for (key, value) in &writes {
                        let got = client.get(Bytes::from(key.clone())).await?;
                        if got.as_ref().map(|(_, v)| v.as_ref()) != Some(value.as_bytes()) {
                            lost.push(key.clone());
                        }
                    }
                    Ok::<_, skv_client::ClientError>(lost)
                })
                .map_err(|e| format!("the cluster did not answer every read: {e}"))
            });
        match result {
            Err(e) => kept.miss(e),
            Ok(lost) if lost.is_empty() => kept.note(format!(
                "all {} acknowledged write(s) of the application read back",
                writes.len()
            )),
            Ok(lost) => kept.miss(format!(
                "{} acknowledged write(s) are gone or changed: {}",
                lost.len(),
                lost.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
    Report::of(vec![added, serves, kept])
}
