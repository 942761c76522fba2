//! `skv lab add-node` and `skv lab rebalance` (lab 13): grow a lab's running cluster. A lab
//! directory is not a `skv cluster` directory (its CA key and the admin identity live in
//! .lab/), so these do what `skv cluster add-node` and `rebalance` do with the lab's own
//! admin identity, and the node they start is recorded in the lab's state, so `stop`,
//! `restart` and `reset` handle it like the others.

use std::path::Path;
use std::time::Duration;

use skv_client::{exit, Connection};
use skv_proto::cluster::{format_ranges, ClusterMap, ControlRequest, ControlResponse};

use super::state::State;
use super::world::{self, added_fact, admin_options};
use super::{Failure, Lab, Result};

/// A move copies every key of its slots before it answers.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);
/// A pause before each move after the first, as an operator throttles a rebalance: the
/// application's writes land between moves as well as during them.
const BETWEEN_MOVES: Duration = Duration::from_millis(500);

/// The first node of the running map that answers, and the map it has.
fn fetch_map(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    state: &State,
    lab: &Lab,
) -> Result<(String, ClusterMap)> {
    let mut errors = Vec::new();
    for node in lab.spec().world.nodes.iter() {
        if node.spare && !state.facts.contains_key(&added_fact(&node.name)) {
            continue;
        }
        let opts = admin_options(dir, state, &node.name)?;
        match rt.block_on(async { Connection::connect(&opts).await?.cluster_map().await }) {
            Ok(map) => return Ok((node.name.clone(), map)),
            Err(e) => errors.push(format!("{}: {e}", node.name)),
        }
    }
    Err(Failure::connection(format!(
        "no node of the lab answers ({})",
        errors.join("; ")
    )))
}

/// `skv lab add-node N`: start the lab's spare node and add it to the running map.
pub(crate) fn add_node(lab: &'static Lab, dir: &Path) -> Result<u8> {
    let dir = world::open(lab, dir)?;
    let mut state = State::load(&dir)?;
    let spec = lab.spec();
    let Some(spare) = spec.world.nodes.iter().find(|n| n.spare) else {
        return Err(Failure::usage(format!(
            "lab {:02} has no node to add",
            lab.number
        )));
    };
    let rt = world::runtime()?;
    let (via, map) = fetch_map(&rt, &dir, &state, lab)?;
    if map.node(&spare.name).is_some() {
        outln!(
            "{} is already in the map (epoch {}); `skv lab rebalance {}` gives it slots",
            spare.name,
            map.epoch,
            lab.number
        );
        return Ok(exit::OK);
    }
    state.facts.insert(added_fact(&spare.name), "1".into());
    state.save(&dir)?;
    world::start_added(&dir, spec, &mut state)?;
    state.save(&dir)?;
    let addr = state.addr(&spare.name)?.to_owned();
    let opts = admin_options(&dir, &state, &via)?;
    let request = ControlRequest::AddNode {
        id: spare.name.clone(),
        addr: addr.clone(),
    };
    let answer = rt
        .block_on(async { Connection::connect(&opts).await?.control(&request).await })
        .map_err(|e| {
            Failure::connection(format!("the cluster refused to add {}: {e}", spare.name))
        })?;
    let epoch = match answer {
        ControlResponse::Map { map } => map.epoch,
        _ => map.epoch + 1,
    };
    outln!(
        "added {} at {addr} to the map: epoch {epoch}. It serves no slots yet: `skv lab \
         rebalance {}` moves its share to it",
        spare.name,
        lab.number
    );
    Ok(exit::OK)
}

/// `skv lab rebalance N`: even out the slots over every node of the map, one move at a time.
pub(crate) fn rebalance(lab: &'static Lab, dir: &Path) -> Result<u8> {
    let dir = world::open(lab, dir)?;
    let mut state = State::load(&dir)?;
    let rt = world::runtime()?;
    let (via, map) = fetch_map(&rt, &dir, &state, lab)?;
    let plan = map.rebalance_plan();
    if plan.is_empty() {
        outln!(
            "nothing to do: the nodes of map epoch {} (from {via}) already serve a fair share",
            map.epoch
        );
        return Ok(exit::OK);
    }
    let total = plan.len();
    let mut epoch = map.epoch;
    // How far the application's acknowledged writes got before and after the moves: the
    // checker's evidence that they ran under load.
    let acked = || {
        std::fs::read_to_string(dir.join("logs").join("victim-acked.log"))
            .map_or(0, |t| t.lines().count())
            .to_string()
    };
    state.facts.insert("acked.before_moves".into(), acked());
    state.facts.remove("acked.after_moves");
    state.save(&dir)?;
    for (i, step) in plan.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(BETWEEN_MOVES);
        }
        let slots: u32 = step.ranges.iter().map(|r| r.len()).sum();
        outln!(
            "move {}/{total}: {} -> {}: {slots} slots ({})",
            i + 1,
            step.from,
            step.to,
            format_ranges(&step.ranges)
        );
        let mut opts = admin_options(&dir, &state, &step.from)?;
        opts.request_timeout = MOVE_TIMEOUT;
        // Planned against `epoch`: if the map changed meanwhile the node refuses the move.
        let request = ControlRequest::MoveSlots {
            ranges: step.ranges.clone(),
            to: step.to.clone(),
            expect_epoch: Some(epoch),
        };
        match rt.block_on(async { Connection::connect(&opts).await?.control(&request).await }) {
            Ok(ControlResponse::Moved { keys, epoch: e }) => {
                outln!("moved {keys} key(s); map epoch {e}");
                epoch = e;
            }
            Ok(other) => {
                return Err(Failure::connection(format!(
                    "{} answered the move with {other:?}",
                    step.from
                )))
            }
            Err(e) => {
                return Err(Failure::connection(format!(
                    "move {}/{total} failed: {e}; run `skv lab rebalance {}` again to plan \
                     against the current map",
                    i + 1,
                    lab.number
                )))
            }
        }
    }
    state.facts.insert("acked.after_moves".into(), acked());
    state.save(&dir)?;
    outln!("rebalanced: {total} move(s), map epoch {epoch}");
    Ok(exit::OK)
}
