//! `skv cluster status`: every node's own report, beside what the map says about it.

use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use skv_client::{exit, ClientError, ConnectOptions, Connection};
use skv_proto::cluster::{
    format_ranges, ClusterMap, ControlRequest, ControlResponse, NodeStatus, ShardEntry,
};

use super::{process, runtime, ClusterDir, Result};

/// One node as the status command (and the demo, which prints the same table) sees it.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) in_map: bool,
    pub(crate) configured: bool,
    pub(crate) pid: Option<u32>,
    /// The node's answer to STATUS, or why there is none.
    pub(crate) report: std::result::Result<NodeStatus, ClientError>,
}

impl Row {
    fn state(&self) -> &'static str {
        match &self.report {
            Ok(_) => "up",
            Err(e) if e.exit_code() == exit::CONNECTION => "down",
            // It answered, but not with a status: reachable, yet not usable.
            Err(_) => "error",
        }
    }
}

pub(super) fn run(dir: &Path, json_out: bool) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let token = dir.admin_token()?;
    let configs = dir.node_files()?;
    let rt = runtime()?;
    let (map, map_from) = match rt.block_on(dir.fetch_map(&token)) {
        Ok((map, from)) => (map, Some(from)),
        // Nobody answered: the bootstrap map still says which nodes there should be.
        Err(_) => (dir.bootstrap_map()?, None),
    };

    let mut targets: Vec<(String, String, bool, bool)> = map
        .nodes
        .iter()
        .map(|n| {
            let configured = configs.iter().any(|c| c.id == n.id);
            (n.id.clone(), n.addr.clone(), true, configured)
        })
        .collect();
    for c in &configs {
        if map.node(&c.id).is_none() {
            targets.push((c.id.clone(), c.addr.clone(), false, true));
        }
    }
    let reports = rt.block_on(futures_util::future::join_all(
        targets
            .iter()
            .map(|(_, addr, _, _)| node_status(&dir, addr, &token)),
    ));
    let rows: Vec<Row> = targets
        .into_iter()
        .zip(reports)
        .map(|((id, addr, in_map, configured), report)| Row {
            pid: process::live_pid(&dir, &id),
            id,
            addr,
            in_map,
            configured,
            report,
        })
        .collect();

    if json_out {
        super::emit(&format!("{}\n", to_json(&map, map_from.as_deref(), &rows)));
    } else {
        super::emit(&render_table(dir.root(), &map, map_from.as_deref(), &rows));
    }
    Ok(exit_code(&rows))
}

/// 0 when every node is up; 4 when any is down; otherwise the code of the first error
/// (3: the admin credentials were refused, 5: a node error).
fn exit_code(rows: &[Row]) -> u8 {
    if rows.iter().any(|r| r.state() == "down") {
        return exit::CONNECTION;
    }
    rows.iter()
        .find_map(|r| r.report.as_ref().err().map(ClientError::exit_code))
        .unwrap_or(exit::OK)
}

async fn node_status(
    dir: &ClusterDir,
    addr: &str,
    token: &str,
) -> std::result::Result<NodeStatus, ClientError> {
    let mut opts = dir.admin_options(addr, token);
    opts.connect_timeout = Duration::from_secs(3);
    opts.request_timeout = Duration::from_secs(10);
    status_of(&opts).await
}

/// Ask the node at `opts.addr` for its STATUS (a control request: admin credentials).
pub(crate) async fn status_of(
    opts: &ConnectOptions,
) -> std::result::Result<NodeStatus, ClientError> {
    let conn = Connection::connect(opts).await?;
    match conn.control(&ControlRequest::Status).await? {
        ControlResponse::Status(status) => Ok(status),
        other => Err(ClientError::Protocol(format!(
            "{} answered STATUS with {other:?}",
            opts.addr
        ))),
    }
}

fn to_json(map: &ClusterMap, map_from: Option<&str>, rows: &[Row]) -> Value {
    let nodes: Vec<Value> = rows
        .iter()
        .map(|r| {
            let map_ranges = map.ranges_of_node(&r.id);
            let (epoch, keys, ranges, migrating, error) = match &r.report {
                Ok(s) => (
                    json!(s.epoch),
                    json!(s.keys),
                    json!(s.ranges),
                    json!(s.migrating),
                    Value::Null,
                ),
                Err(e) => (
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    Value::Null,
                    json!(e.to_string()),
                ),
            };
            json!({
                "id": r.id,
                "addr": r.addr,
                "state": r.state(),
                "up": r.report.is_ok(),
                "pid": r.pid,
                "in_map": r.in_map,
                "configured": r.configured,
                "map_ranges": map_ranges,
                "map_slots": map_ranges.iter().map(|r| r.len()).sum::<u32>(),
                "epoch": epoch,
                "keys": keys,
                "ranges": ranges,
                "migrating": migrating,
                "error": error,
            })
        })
        .collect();
    let up = rows.iter().filter(|r| r.report.is_ok()).count();
    let shards: Vec<Value> = shards_by_id(map)
        .map(|s| {
            json!({
                "id": s.id,
                "ranges": map.ranges_of_shard(s.id),
                "replicas": s.replicas,
                "leader": reported_leader(rows, s.id),
                "keys": leader_keys(rows, s.id),
                "replica_status": replica_reports(rows, s.id),
            })
        })
        .collect();
    json!({
        "cluster": map.cluster,
        "epoch": map.epoch,
        "map_from": map_from,
        "nodes": nodes,
        "shards": shards,
        "up": up,
        "down": rows.len() - up,
    })
}

/// The status table: a heading with the map, one line per node, notes on the odd ones, and
/// how many are up. `root` is the cluster directory, named in the hints.
pub(crate) fn render_table(
    root: &Path,
    map: &ClusterMap,
    map_from: Option<&str>,
    rows: &[Row],
) -> String {
    // Writing to a String cannot fail, so the fmt::Results below are ignored.
    let mut out = String::new();
    let source = match map_from {
        Some(from) => format!("from {from}"),
        None => "from cluster.json: no node answered".to_owned(),
    };
    let _ = writeln!(
        out,
        "cluster {}, map epoch {} ({source})",
        map.cluster, map.epoch
    );
    let mut table = vec![[
        "NODE",
        "ADDR",
        "STATE",
        "PID",
        "EPOCH",
        "KEYS",
        "SLOTS",
        "MIGRATING",
    ]
    .map(String::from)];
    for r in rows {
        let dash = || "-".to_owned();
        let pid = r.pid.map_or_else(dash, |p| p.to_string());
        let (epoch, keys, slots, migrating) = match &r.report {
            Ok(s) => (
                s.epoch.to_string(),
                s.keys.to_string(),
                format_ranges(&s.ranges),
                s.migrating.as_ref().map_or_else(dash, |m| {
                    format!("to {}: {}", m.to, format_ranges(&m.ranges))
                }),
            ),
            // Down: what the map says it should serve.
            Err(_) if r.in_map => (
                dash(),
                dash(),
                format!("{} (map)", format_ranges(&map.ranges_of_node(&r.id))),
                dash(),
            ),
            Err(_) => (dash(), dash(), "not in map".to_owned(), dash()),
        };
        table.push([
            r.id.clone(),
            r.addr.clone(),
            r.state().to_owned(),
            pid,
            epoch,
            keys,
            slots,
            migrating,
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|c| table.iter().map(|row| row[c].len()).max().unwrap_or(0))
        .collect();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    for r in rows {
        if let Err(e) = &r.report {
            let _ = writeln!(out, "{} {}: {e}", r.id, r.state());
        }
        if r.in_map && !r.configured {
            let _ = writeln!(out, "{}: in the map but has no config in nodes/", r.id);
        }
        if !r.in_map && r.report.is_ok() {
            let _ = writeln!(
                out,
                "{}: running but not in the map; add it with \
                 `skv cluster add-node --dir {} --id {}`",
                r.id,
                root.display(),
                r.id
            );
        }
    }
    // Which nodes hold each shard, from the map: the first replica is the one the map
    // names to lead at first (the node's own report says who leads now).
    let shards: Vec<[String; 4]> = shards_by_id(map)
        .map(|s| {
            [
                format!("shard {}", s.id),
                format_ranges(&map.ranges_of_shard(s.id)),
                s.replicas.join(", "),
                reported_leader(rows, s.id).unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    if !shards.is_empty() {
        let width = |c: usize, head: &str| {
            shards
                .iter()
                .map(|r| r[c].len())
                .chain([head.len()])
                .max()
                .unwrap_or(0)
        };
        let (shard_w, slots_w, replicas_w) =
            (width(0, "SHARD"), width(1, "SLOTS"), width(2, "REPLICAS"));
        let _ = writeln!(
            out,
            "{:<shard_w$}  {:<slots_w$}  {:<replicas_w$}  LEADER",
            "SHARD", "SLOTS", "REPLICAS"
        );
        for [shard, slots, replicas, leader] in &shards {
            let _ = writeln!(
                out,
                "{shard:<shard_w$}  {slots:<slots_w$}  {replicas:<replicas_w$}  {leader}"
            );
        }
    }
    let up = rows.iter().filter(|r| r.report.is_ok()).count();
    let _ = writeln!(out, "{up} of {} node(s) up", rows.len());
    out
}

/// The node that reports leading `shard`, if one that answered does.
fn reported_leader(rows: &[Row], shard: u32) -> Option<&str> {
    rows.iter().find_map(|r| {
        let status = r.report.as_ref().ok()?;
        status
            .replicas
            .iter()
            .any(|g| g.shard == shard && g.role == "leader")
            .then_some(r.id.as_str())
    })
}

/// Keys in `shard`, as its leader counts them (`None` when no leader answered).
fn leader_keys(rows: &[Row], shard: u32) -> Option<u64> {
    rows.iter().find_map(|r| {
        let status = r.report.as_ref().ok()?;
        status
            .replicas
            .iter()
            .find(|g| g.shard == shard && g.role == "leader")
            .map(|g| g.keys)
    })
}

/// Every answering node's view of its replica of `shard`: role, term, log and applied
/// indexes, and (on the leader) each follower's lag.
fn replica_reports(rows: &[Row], shard: u32) -> Vec<Value> {
    rows.iter()
        .filter_map(|r| {
            let status = r.report.as_ref().ok()?;
            let g = status.replicas.iter().find(|g| g.shard == shard)?;
            Some(json!({
                "node": r.id,
                "role": g.role,
                "term": g.term,
                "last_log": g.last_log,
                "applied": g.applied,
                "lag": g.lag,
                "keys": g.keys,
            }))
        })
        .collect()
}

/// The map's shards in id order.
fn shards_by_id(map: &ClusterMap) -> impl Iterator<Item = &ShardEntry> {
    let mut shards: Vec<&ShardEntry> = map.shards.iter().collect();
    shards.sort_by_key(|s| s.id);
    shards.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_proto::cluster::{Migrating, ReplicaStatus, SlotRange};

    fn rows(map: &ClusterMap) -> Vec<Row> {
        vec![
            Row {
                id: "n1".into(),
                addr: "127.0.0.1:7401".into(),
                in_map: true,
                configured: true,
                pid: Some(42),
                report: Ok(NodeStatus {
                    node: "n1".into(),
                    epoch: map.epoch,
                    keys: 7,
                    ranges: map.ranges_of_node("n1"),
                    migrating: Some(Migrating {
                        to: "n3".into(),
                        ranges: vec![SlotRange::new(0, 9)],
                    }),
                    replicas: Vec::new(),
                }),
            },
            Row {
                id: "n2".into(),
                addr: "127.0.0.1:7402".into(),
                in_map: true,
                configured: true,
                pid: None,
                report: Err(ClientError::Connect {
                    addr: "127.0.0.1:7402".into(),
                    reason: "refused".into(),
                }),
            },
            Row {
                id: "n3".into(),
                addr: "127.0.0.1:7403".into(),
                in_map: false,
                configured: true,
                pid: Some(43),
                report: Ok(NodeStatus {
                    node: "n3".into(),
                    epoch: map.epoch,
                    keys: 0,
                    ranges: Vec::new(),
                    migrating: None,
                    replicas: Vec::new(),
                }),
            },
        ]
    }

    fn two_node_map() -> ClusterMap {
        ClusterMap::even(
            "skv",
            &[
                ("n1".into(), "127.0.0.1:7401".into()),
                ("n2".into(), "127.0.0.1:7402".into()),
            ],
        )
    }

    #[test]
    fn the_table_shows_each_node_and_explains_the_odd_ones() {
        let map = two_node_map();
        let text = render_table(Path::new("/c"), &map, Some("127.0.0.1:7401"), &rows(&map));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "cluster skv, map epoch 1 (from 127.0.0.1:7401)");
        assert!(lines[1].starts_with("NODE  ADDR            STATE  PID  EPOCH  KEYS  SLOTS"));
        assert!(lines[2].contains("n1") && lines[2].contains("0-8191"));
        assert!(lines[2].ends_with("to n3: 0-9"), "{}", lines[2]);
        assert!(lines[3].contains("down") && lines[3].contains("8192-16383 (map)"));
        assert!(lines[4].contains("no slots"));
        assert!(text.contains("n2 down: cannot connect to 127.0.0.1:7402"));
        assert!(text.contains("skv cluster add-node --dir /c --id n3"));
        assert!(
            text.contains("shard 1  0-8191      n1        -\n"),
            "{text}"
        );
        assert!(
            text.contains("shard 2  8192-16383  n2        -\n"),
            "{text}"
        );
        assert_eq!(lines.last(), Some(&"2 of 3 node(s) up"));
    }

    #[test]
    fn the_table_lists_every_shard_with_its_replicas() {
        let nodes: Vec<(String, String)> = (1..=3)
            .map(|i| (format!("n{i}"), format!("127.0.0.1:740{i}")))
            .collect();
        let map = ClusterMap::even_replicated("skv", &nodes, 3).unwrap();
        // n2 answered and leads shard 3 now; nobody reports on the others.
        let rows = vec![Row {
            id: "n2".into(),
            addr: "127.0.0.1:7402".into(),
            in_map: true,
            configured: true,
            pid: None,
            report: Ok(NodeStatus {
                node: "n2".into(),
                epoch: map.epoch,
                keys: 0,
                ranges: Vec::new(),
                migrating: None,
                replicas: vec![ReplicaStatus {
                    shard: 3,
                    role: "leader".into(),
                    leader: Some("n2".into()),
                    term: 2,
                    last_log: 9,
                    applied: 9,
                    lag: Vec::new(),
                    quorum_ack_ms: Some(3),
                    keys: 0,
                    snapshot: 0,
                    purged: 0,
                }],
            }),
        }];
        let text = render_table(Path::new("/c"), &map, None, &rows);
        let lines: Vec<&str> = text.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with("SHARD"))
            .expect("a shard table");
        assert_eq!(lines[at], "SHARD    SLOTS        REPLICAS    LEADER");
        assert_eq!(lines[at + 1], "shard 1  0-5460       n1, n2, n3  -");
        assert_eq!(lines[at + 2], "shard 2  5461-10921   n2, n3, n1  -");
        assert_eq!(lines[at + 3], "shard 3  10922-16383  n3, n1, n2  n2");
        let value = to_json(&map, None, &rows);
        assert_eq!(value["shards"][1]["replicas"], json!(["n2", "n3", "n1"]));
        assert_eq!(value["shards"][2]["leader"], "n2");
        assert_eq!(value["shards"][0]["leader"], Value::Null);
        assert_eq!(
            value["shards"][2]["ranges"],
            json!([{"start": 10922, "end": 16383}])
        );
    }

    #[test]
    fn json_has_one_object_per_node_and_the_exit_code_says_down() {
        let map = two_node_map();
        let rows = rows(&map);
        let value = to_json(&map, None, &rows);
        assert_eq!(value["cluster"], "skv");
        assert_eq!(value["epoch"], 1);
        assert_eq!(value["map_from"], Value::Null);
        assert_eq!(
            (value["up"].clone(), value["down"].clone()),
            (json!(2), json!(1))
        );
        let nodes = value["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["state"], "up");
        assert_eq!(nodes[0]["pid"], 42);
        assert_eq!(nodes[0]["keys"], 7);
        assert_eq!(nodes[0]["ranges"], json!([{"start": 0, "end": 8191}]));
        assert_eq!(nodes[0]["migrating"]["to"], "n3");
        assert_eq!(nodes[1]["state"], "down");
        assert_eq!(nodes[1]["map_slots"], 8192);
        assert_eq!(nodes[1]["keys"], Value::Null);
        assert!(nodes[1]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"));
        assert_eq!(nodes[2]["in_map"], false);
        assert_eq!(exit_code(&rows), exit::CONNECTION);
        assert_eq!(exit_code(&[]), exit::OK);
        let refused = Row {
            report: Err(ClientError::Refused(skv_proto::WireError::new(
                skv_proto::ErrorCode::Forbidden,
                "no",
            ))),
            ..rows.into_iter().next().unwrap()
        };
        assert_eq!(refused.state(), "error");
        assert_eq!(exit_code(&[refused]), exit::REFUSED);
    }
}
