//! `skv cluster add-node`, `replace-node`, `remove-node` and `rebalance`: changing the
//! running cluster's map through the nodes' admin control requests, and waiting for the
//! shards to rebuild their replicas afterwards.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use skv_certs::{InitOptions, KeyType};
use skv_client::{exit, ClientError, Connection};
use skv_proto::cluster::{format_ranges, ClusterMap, ControlRequest, ControlResponse};
use skv_proto::ErrorCode;

use super::files::{self, next_free_id, next_port, port_of, render_node_config, write_atomic};
use super::status::{map_rows, shard_view, Health, ShardView};
use super::{process, runtime, ClusterDir, Failure, Result};

/// A move copies every key of its slots before it answers; give big moves time.
const MOVE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `replace-node` and `remove-node` wait for the shards to rebuild their replicas.
/// A snapshot of a big shard takes a while; the cluster keeps working on it after a timeout.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(180);
/// How often the rebuild is polled, and how often a line says what is still pending.
const REPAIR_POLL: Duration = Duration::from_millis(500);
const REPAIR_REPORT_EVERY: Duration = Duration::from_secs(5);

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
    send_map_change(dir, token, map, &request, &[], &format!("add {id}")).await
}

/// Send the map change `request` to the first reachable node of `map` not in `skip`, which
/// decides it on the metadata group (forwarding to its leader); returns the map after it.
/// `what` names the change in errors ("add n4").
async fn send_map_change(
    dir: &ClusterDir,
    token: &str,
    map: &ClusterMap,
    request: &ControlRequest,
    skip: &[&str],
    what: &str,
) -> Result<ClusterMap> {
    let mut errors = Vec::new();
    for node in map.nodes.iter().filter(|n| !skip.contains(&n.id.as_str())) {
        let conn = match Connection::connect(&dir.admin_options(&node.addr, token)).await {
            Ok(conn) => conn,
            // Unreachable: another node can do it.
            Err(e) => {
                errors.push(format!("{}: {e}", node.id));
                continue;
            }
        };
        // Reached: its answer, refusal included, is the cluster's.
        let answer = conn.control(request).await.map_err(|e| {
            Failure::client(
                &format!("the cluster refused to {what} ({} answered)", node.id),
                &e,
            )
        })?;
        return match answer {
            ControlResponse::Map { map } => Ok(map),
            // An older node answers just OK: read the map it now has.
            ControlResponse::Ok => conn
                .cluster_map()
                .await
                .map_err(|e| Failure::client("cannot read the new map", &e)),
            other => Err(Failure::server(format!(
                "{} answered {} with {other:?}",
                node.id,
                request.name()
            ))),
        };
    }
    Err(Failure::connection(format!(
        "no node of the map is reachable to {what} ({})",
        errors.join("; ")
    )))
}

/// Record `map` as the bootstrap map and point the admin profile's seeds at its nodes.
fn record_map_and_seeds(dir: &ClusterDir, map: &ClusterMap) -> Result<()> {
    dir.record_map(map)?;
    let seeds: Vec<String> = map.nodes.iter().map(|n| n.addr.clone()).collect();
    write_atomic(
        &dir.client_profile(),
        files::render_client_profile(&map.cluster, &seeds).as_bytes(),
        0o644,
    )
    .map_err(Failure::usage)?;
    println!(
        "updated {} (seeds {})",
        dir.client_profile().display(),
        seeds.join(", ")
    );
    Ok(())
}

/// Stop node `id` if it still runs and delete its config and pid file, so `skv cluster up`
/// never starts it again. Its data, log and certificate stay (the certificate keeps the name
/// from being handed out again by `add-node`).
fn forget_node(dir: &ClusterDir, id: &str) -> Result<()> {
    if let Some(pid) = process::stop_node(dir, id)? {
        println!("stopped {id} (pid {pid})");
    }
    let config = dir.node_config(id);
    match std::fs::remove_file(&config) {
        Ok(()) => println!("removed {}", config.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Failure::usage(format!(
                "cannot remove {}: {e}",
                config.display()
            )))
        }
    }
    let data = dir.root().join("data").join(id);
    if data.exists() {
        println!(
            "{id}'s old data is left in {} (delete it when you no longer need it)",
            data.display()
        );
    }
    Ok(())
}

/// Whether `view` shows shard `view.shard` rebuilt: healthy, `gone` neither leading nor a
/// member any more, and (when given) `new` a caught-up voter (a learner is still copying).
fn rebuilt(view: &ShardView, gone: &str, new: Option<&str>) -> bool {
    let gone_left =
        view.leader.as_deref() != Some(gone) && !view.followers.iter().any(|f| f.node == gone);
    let new_in = match new {
        None => true,
        Some(new) => {
            view.leader.as_deref() == Some(new)
                || view.followers.iter().any(|f| f.node == new && f.in_sync())
        }
    };
    view.health == Health::Healthy && gone_left && new_in
}

/// One pending shard, for the progress lines: `shard 2 (leader n1; n4 learner lag 812)`.
fn pending_line(view: &ShardView) -> String {
    let followers: Vec<String> = view
        .followers
        .iter()
        .map(|f| {
            let mut s = format!("{} {}", f.node, f.state);
            if let Some(lag) = f.lag {
                s.push_str(&format!(" lag {lag}"));
            }
            s
        })
        .collect();
    format!(
        "shard {} ({}, leader {}; {})",
        view.shard,
        view.health.word(),
        view.leader.as_deref().unwrap_or("none"),
        followers.join(", ")
    )
}

/// Poll every node of `map` until each shard of `shards` is [`rebuilt`], printing each one
/// as it is and, every few seconds, what is still pending. Returns the shards still pending
/// at [`REPAIR_TIMEOUT`] (empty: all done).
async fn wait_rebuilt(
    dir: &ClusterDir,
    token: &str,
    map: &ClusterMap,
    shards: &[u32],
    gone: &str,
    new: Option<&str>,
) -> Vec<String> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut pending: BTreeSet<u32> = shards.iter().copied().collect();
    loop {
        let rows = map_rows(dir, map, token).await;
        let mut still = Vec::new();
        for &shard in &pending.clone() {
            let replicas = map
                .shard(shard)
                .map(|s| s.replicas.clone())
                .unwrap_or_default();
            let view = shard_view(&rows, shard, &replicas);
            if rebuilt(&view, gone, new) {
                pending.remove(&shard);
                let applied = |node: &str| {
                    rows.iter()
                        .find(|r| r.id == node)
                        .and_then(|r| r.report.as_ref().ok())
                        .and_then(|s| s.replicas.iter().find(|g| g.shard == shard))
                        .map(|g| g.applied)
                };
                let leader = view.leader.clone().unwrap_or_default();
                match new {
                    Some(new) => println!(
                        "shard {shard}: {new} caught up (applied {} of {}; leader {leader}), \
                         replicas {}",
                        applied(new).unwrap_or(0),
                        view.leader_applied.unwrap_or(0),
                        replicas.join(", ")
                    ),
                    None => println!(
                        "shard {shard}: healthy on {} (leader {leader})",
                        replicas.join(", ")
                    ),
                }
            } else {
                still.push(pending_line(&view));
            }
        }
        if pending.is_empty() {
            return Vec::new();
        }
        if started.elapsed() >= REPAIR_TIMEOUT {
            return still;
        }
        if last_report.elapsed() >= REPAIR_REPORT_EVERY {
            println!(
                "waiting ({} s): {}",
                started.elapsed().as_secs(),
                still.join("; ")
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(REPAIR_POLL).await;
    }
}

pub(super) fn replace_node(dir: &Path, dead: &str, with: Option<String>) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let token = dir.admin_token()?;
    let rt = runtime()?;
    let (map, _) = rt.block_on(dir.fetch_map(&token))?;
    let configs = dir.node_files()?;
    if let Some(with) = &with {
        skv_certs::validate_name("node", with).map_err(|e| Failure::usage(e.to_string()))?;
        if with == dead {
            return Err(Failure::usage(format!(
                "--with {with} names the node being replaced; the new node needs a new name \
                 (the cluster must not take it for the old one)"
            )));
        }
    }
    // Resuming: an earlier run already put `with` in `dead`'s place (and noted so).
    let marker = dir.run_dir().join(format!("replacing-{dead}"));
    let noted = std::fs::read_to_string(&marker).ok();
    let resumed = map.node(dead).is_none()
        && with
            .as_deref()
            .is_some_and(|w| map.node(w).is_some() && noted.as_deref().map(str::trim) == Some(w));
    if map.node(dead).is_none() && !resumed {
        let known: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        return Err(Failure::usage(format!(
            "node {dead} is not in the map (epoch {}; nodes {})",
            map.epoch,
            known.join(", ")
        )));
    }

    let (new_map, node) = if resumed {
        let id = with.unwrap_or_default();
        println!(
            "{dead} was already replaced by {id} (map epoch {}); waiting for {id} to catch up",
            map.epoch
        );
        let node = configs
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| {
                Failure::usage(format!(
                    "{id} is in the map but has no config in {}",
                    dir.nodes_dir().display()
                ))
            })?;
        (map, node)
    } else {
        // It must not serve again under its name: stop it first if it still runs.
        if let Some(pid) = process::stop_node(&dir, dead)? {
            println!("stopped {dead} (pid {pid}), which was still running");
        }
        let id = match with {
            Some(id) => {
                if map.node(&id).is_some() {
                    return Err(Failure::usage(format!(
                        "node {id} is already in the map; choose a new name with --with"
                    )));
                }
                id
            }
            None => next_free_id(|id| {
                map.node(id).is_some()
                    || dir.node_config(id).exists()
                    || dir.pki().node_cert(id).exists()
            }),
        };
        let node = match configs.iter().find(|c| c.id == id) {
            // Config written by an earlier, interrupted replace-node: use it.
            Some(existing) => {
                println!("{id} already has a config ({})", existing.path.display());
                existing.clone()
            }
            None => create_node(&dir, &map, &configs, &id)?,
        };
        let held: Vec<String> = map.shards_of_node(dead).map(|s| s.id.to_string()).collect();
        println!(
            "replacing {dead} by {id} at {} in the map and in shard(s) {}",
            node.addr,
            held.join(", ")
        );
        let request = ControlRequest::ReplaceNode {
            dead: dead.to_owned(),
            with: id.clone(),
            addr: node.addr.clone(),
        };
        // Noted before asking, so a run interrupted after the cluster agreed can resume.
        std::fs::create_dir_all(dir.run_dir())
            .and_then(|()| std::fs::write(&marker, format!("{id}\n")))
            .map_err(|e| Failure::usage(format!("cannot write {}: {e}", marker.display())))?;
        // (Kept if the request fails: an answer lost after the cluster agreed must not
        // strand the new node.)
        let new_map = rt.block_on(send_map_change(
            &dir,
            &token,
            &map,
            &request,
            &[dead],
            &format!("replace {dead} by {id}"),
        ))?;
        println!("map epoch {}: {id} takes {dead}'s place", new_map.epoch);
        (new_map, node)
    };
    record_map_and_seeds(&dir, &new_map)?;
    forget_node(&dir, dead)?;

    let started = process::start_missing(&dir, std::slice::from_ref(&node))?;
    let failed = rt.block_on(process::wait_ready(
        &dir,
        &token,
        std::slice::from_ref(&node),
        started,
    ));
    if !failed.is_empty() {
        return Err(Failure::connection(format!(
            "{} did not start (see above); it is already in the map in {dead}'s place: fix the \
             cause and run `skv cluster replace-node --dir {} {dead} --with {}` again",
            node.id,
            dir.root().display(),
            node.id
        )));
    }
    let shards: Vec<u32> = new_map.shards_of_node(&node.id).map(|s| s.id).collect();
    println!(
        "waiting for shard(s) {} to rebuild their replica on {} (snapshot, then the log)",
        shards
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        node.id
    );
    let pending = rt.block_on(wait_rebuilt(
        &dir,
        &token,
        &new_map,
        &shards,
        dead,
        Some(&node.id),
    ));
    if !pending.is_empty() {
        return Err(Failure::server(format!(
            "{} is in the map but not caught up after {} s: {}; the shards keep copying, \
             watch `skv cluster status --dir {root}` or run `skv cluster replace-node --dir \
             {root} {dead} --with {}` again to wait",
            node.id,
            REPAIR_TIMEOUT.as_secs(),
            pending.join("; "),
            node.id,
            root = dir.root().display()
        )));
    }
    let _ = std::fs::remove_file(&marker);
    println!(
        "replaced {dead} by {} at {}: every shard it holds is healthy (map epoch {})",
        node.id, node.addr, new_map.epoch
    );
    println!("{dead} must not come back under its old name; to reuse its machine, wipe it and `add-node`");
    Ok(exit::OK)
}

pub(super) fn remove_node(dir: &Path, id: &str) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let token = dir.admin_token()?;
    let rt = runtime()?;
    let (map, _) = rt.block_on(dir.fetch_map(&token))?;
    if map.node(id).is_none() {
        let known: Vec<&str> = map.nodes.iter().map(|n| n.id.as_str()).collect();
        return Err(Failure::usage(format!(
            "node {id} is not in the map (epoch {}; nodes {})",
            map.epoch,
            known.join(", ")
        )));
    }
    let held: Vec<u32> = map.shards_of_node(id).map(|s| s.id).collect();
    println!(
        "removing {id}: its replicas of shard(s) {} move to the nodes holding the fewest",
        held.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let request = ControlRequest::RemoveNode { id: id.to_owned() };
    let new_map = rt.block_on(send_map_change(
        &dir,
        &token,
        &map,
        &request,
        &[id],
        &format!("remove {id}"),
    ))?;
    println!("map epoch {}: {id} is out of the map", new_map.epoch);
    for shard in &held {
        match new_map.shard(*shard) {
            Some(s) => println!("shard {shard}: replicas now {}", s.replicas.join(", ")),
            None => println!("shard {shard}: gone (it owned no slots)"),
        }
    }
    record_map_and_seeds(&dir, &new_map)?;
    let shards: Vec<u32> = held
        .into_iter()
        .filter(|s| new_map.shard(*s).is_some())
        .collect();
    let pending = rt.block_on(wait_rebuilt(&dir, &token, &new_map, &shards, id, None));
    if !pending.is_empty() {
        return Err(Failure::server(format!(
            "{id} is out of the map, but after {} s not every shard it held is healthy on its \
             new replicas: {}; {id} is left running (it may still be needed to copy from): \
             watch `skv cluster status --dir {root}`, then run `skv cluster remove-node --dir \
             {root} {id}` again to stop it",
            REPAIR_TIMEOUT.as_secs(),
            pending.join("; "),
            root = dir.root().display()
        )));
    }
    forget_node(&dir, id)?;
    println!("removed {id}: its shards are healthy on the other nodes");
    Ok(exit::OK)
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
        // The epoch this step was planned against (the first) or that the previous step
        // produced: if anyone else changed the map meanwhile, the plan is stale and the node
        // refuses the move.
        let request = ControlRequest::MoveSlots {
            ranges: step.ranges.clone(),
            to: step.to.clone(),
            expect_epoch: Some(last_epoch),
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
            // The cluster said no (the map changed since the plan, another move runs):
            // nothing of this step happened. Say so plainly and stop.
            Err(ClientError::Server(err)) if err.code == ErrorCode::ClusterState => {
                println!(
                    "move {}/{total} refused by the cluster: {}",
                    i + 1,
                    err.message
                );
                return Err(Failure::server(format!(
                    "stopped at move {}/{total} ({} -> {}), refused: {}; {} run `skv cluster \
                     rebalance --dir {}` again to plan against the current map",
                    i + 1,
                    step.from,
                    step.to,
                    err.message,
                    if i > 0 {
                        "the earlier moves are done;"
                    } else {
                        "nothing was moved;"
                    },
                    dir.root().display()
                )));
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
