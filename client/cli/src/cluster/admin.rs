//! `skv cluster add-node` and `rebalance`: changing the running cluster's map through the
//! nodes' admin control requests.

use std::path::Path;
use std::time::Duration;

use skv_certs::{InitOptions, KeyType};
use skv_client::{exit, Connection};
use skv_proto::cluster::{format_ranges, ClusterMap, ControlRequest, ControlResponse};

use super::files::{self, next_free_id, next_port, port_of, render_node_config, write_atomic};
use super::{process, runtime, ClusterDir, Failure, Result};

/// A move copies every key of its slots before it answers; give big moves time.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

pub(super) fn add_node(dir: &Path, id: Option<String>) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let token = dir.admin_token()?;
    let rt = runtime()?;
    // Ask the running cluster first: nothing is written unless it can take the node.
    let (map, _) = rt.block_on(dir.fetch_map(&token))?;
    let configs = dir.node_files()?;

    let id = match id {
        Some(id) => {
            skv_certs::validate_name("node", &id).map_err(|e| Failure::usage(e.to_string()))?;
            id
        }
        None => next_free_id(|id| {
            map.node(id).is_some()
                || dir.node_config(id).exists()
                || dir.pki().node_cert(id).exists()
        }),
    };
    if let Some(entry) = map.node(&id) {
        return Err(Failure::usage(format!(
            "node {id} is already in the map (at {}, epoch {})",
            entry.addr, map.epoch
        )));
    }

    let node = match configs.iter().find(|c| c.id == id) {
        // Config written by an earlier, interrupted add-node: finish that one.
        Some(existing) => {
            println!(
                "{id} already has a config ({}); finishing its addition",
                existing.path.display()
            );
            existing.clone()
        }
        None => create_node(&dir, &map, &configs, &id)?,
    };

    let started = process::start_missing(&dir, std::slice::from_ref(&node))?;
    let failed = rt.block_on(process::wait_ready(
        &dir,
        &token,
        std::slice::from_ref(&node),
        started,
    ));
    if !failed.is_empty() {
        return Err(Failure::connection(format!(
            "{id} did not start (see above), so it was not added to the map; fix the cause and \
             run `skv cluster add-node --dir {} --id {id}` again",
            dir.root().display()
        )));
    }

    let new_map = rt.block_on(send_add_node(&dir, &token, &map, &node.id, &node.addr))?;
    dir.record_map(&new_map)?;
    let seeds: Vec<String> = new_map.nodes.iter().map(|n| n.addr.clone()).collect();
    write_atomic(
        &dir.client_profile(),
        files::render_client_profile(&new_map.cluster, &seeds).as_bytes(),
        0o644,
    )
    .map_err(Failure::usage)?;
    println!(
        "added {id} at {} to the map: epoch {}",
        node.addr, new_map.epoch
    );
    println!(
        "updated {} (seeds {})",
        dir.client_profile().display(),
        seeds.join(", ")
    );
    println!(
        "{id} serves no slots yet: run `skv cluster rebalance --dir {}` to give it slots",
        dir.root().display()
    );
    Ok(exit::OK)
}

/// Issue the node's certificate from the cluster's CA and write its config, on the port
/// after the highest one in use.
fn create_node(
    dir: &ClusterDir,
    map: &ClusterMap,
    configs: &[files::NodeFile],
    id: &str,
) -> Result<files::NodeFile> {
    let used = configs
        .iter()
        .filter_map(|c| c.listen_port)
        .chain(map.nodes.iter().filter_map(|n| port_of(&n.addr)));
    let port = next_port(used).map_err(Failure::usage)?;
    let addr = format!("127.0.0.1:{port}");
    // `force: false` reuses the CA already in pki/ and refuses to overwrite a node's files.
    let report = skv_certs::init(&InitOptions {
        dir: dir.pki().dir().to_owned(),
        cluster: map.cluster.clone(),
        nodes: vec![id.to_owned()],
        clients: Vec::new(),
        key_type: KeyType::P256,
        force: false,
    })
    .map_err(|e| Failure::usage(format!("cannot issue {id}'s certificate: {e}")))?;
    for path in &report.written {
        println!("wrote {}", path.display());
    }
    let path = dir.node_config(id);
    let text = render_node_config(&map.cluster, id, &addr);
    write_atomic(&path, text.as_bytes(), 0o644).map_err(Failure::usage)?;
    println!("wrote {} (node {id} at {addr})", path.display());
    files::parse_node_file(id, &path, &text).map_err(Failure::usage)
}

/// Ask any node of the map to add `id`; returns the map it answers with.
async fn send_add_node(
    dir: &ClusterDir,
    token: &str,
    map: &ClusterMap,
    id: &str,
    addr: &str,
) -> Result<ClusterMap> {
    let request = ControlRequest::AddNode {
        id: id.to_owned(),
        addr: addr.to_owned(),
    };
    let mut errors = Vec::new();
    for node in &map.nodes {
        let conn = match Connection::connect(&dir.admin_options(&node.addr, token)).await {
            Ok(conn) => conn,
            // Unreachable: another node can do it.
            Err(e) => {
                errors.push(format!("{}: {e}", node.id));
                continue;
            }
        };
        // Reached: its answer, refusal included, is the cluster's.
        let answer = conn
            .control(&request)
            .await
            .map_err(|e| Failure::client(&format!("{} refused to add {id}", node.id), &e))?;
        return match answer {
            ControlResponse::Map { map } => Ok(map),
            // An older node answers just OK: read the map it now has.
            ControlResponse::Ok => conn
                .cluster_map()
                .await
                .map_err(|e| Failure::client("cannot read the new map", &e)),
            other => Err(Failure::server(format!(
                "{} answered ADD_NODE with {other:?}",
                node.id
            ))),
        };
    }
    Err(Failure::connection(format!(
        "no node of the map is reachable to add {id} ({})",
        errors.join("; ")
    )))
}

pub(super) fn rebalance(dir: &Path) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let token = dir.admin_token()?;
    let rt = runtime()?;
    let (map, from) = rt.block_on(dir.fetch_map(&token))?;
    let plan = map.rebalance_plan();
    if plan.is_empty() {
        println!(
            "nothing to do: the {} node(s) of map epoch {} (from {from}) already serve a fair \
             share of the slots",
            map.shards.len(),
            map.epoch
        );
        return Ok(exit::OK);
    }
    println!(
        "map epoch {} (from {from}): {} move(s) to even out the slots",
        map.epoch,
        plan.len()
    );
    let total = plan.len();
    let mut last_epoch = map.epoch;
    for (i, step) in plan.iter().enumerate() {
        let slots: u32 = step.ranges.iter().map(|r| r.len()).sum();
        println!(
            "move {}/{total}: {} -> {}: {slots} slots ({})",
            i + 1,
            step.from,
            step.to,
            format_ranges(&step.ranges)
        );
        let giver = map.node(&step.from).ok_or_else(|| {
            Failure::server(format!(
                "the plan names {}, which the map does not",
                step.from
            ))
        })?;
        let mut opts = dir.admin_options(&giver.addr, &token);
        opts.request_timeout = MOVE_TIMEOUT;
        let request = ControlRequest::MoveSlots {
            ranges: step.ranges.clone(),
            to: step.to.clone(),
            expect_epoch: None,
        };
        let answer = rt.block_on(async {
            let conn = Connection::connect(&opts).await?;
            conn.control(&request).await
        });
        match answer {
            Ok(ControlResponse::Moved { keys, epoch }) => {
                println!(
                    "moved {keys} key(s) from {} to {}; map epoch {epoch}",
                    step.from, step.to
                );
                last_epoch = epoch;
            }
            Ok(other) => {
                return Err(Failure::server(format!(
                    "{} answered MOVE_SLOTS with {other:?}",
                    step.from
                )))
            }
            Err(e) => {
                return Err(Failure::client(
                    &format!(
                        "move {}/{total} ({} -> {}) failed{}",
                        i + 1,
                        step.from,
                        step.to,
                        if i > 0 {
                            "; the earlier moves are done, run rebalance again to continue"
                        } else {
                            ""
                        }
                    ),
                    &e,
                ))
            }
        }
    }
    // Keep the bootstrap map current; a failure here does not undo the moves, so only warn.
    match rt.block_on(dir.fetch_map(&token)) {
        Ok((latest, _)) => {
            if let Err(e) = dir.record_map(&latest) {
                eprintln!("warning: {}", e.message);
            }
            last_epoch = last_epoch.max(latest.epoch);
        }
        Err(e) => eprintln!("warning: cannot read the final map: {}", e.message),
    }
    println!("rebalanced: {total} move(s) done, map epoch {last_epoch}");
    Ok(exit::OK)
}
