//! `skv cluster status`: every node's own report, beside what the map says about it, and
//! each shard's replicas put together from those reports: its leader, how far each follower
//! is behind, and a health word (healthy, degraded, unavailable). `replace-node`,
//! `remove-node` and the demo wait on the same views.

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

/// The STATUS of every node of `map`, asked at once: what `replace-node` and `remove-node`
/// poll while the shards rebuild their replicas.
pub(super) async fn map_rows(dir: &ClusterDir, map: &ClusterMap, token: &str) -> Vec<Row> {
    let reports =
        futures_util::future::join_all(map.nodes.iter().map(|n| node_status(dir, &n.addr, token)))
            .await;
    map.nodes
        .iter()
        .zip(reports)
        .map(|(n, report)| Row {
            id: n.id.clone(),
            addr: n.addr.clone(),
            in_map: true,
            configured: dir.node_config(&n.id).exists(),
            pid: process::live_pid(dir, &n.id),
            report,
        })
        .collect()
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
    let views = shard_views(map, rows);
    let shards: Vec<Value> = shards_by_id(map)
        .zip(&views)
        .map(|(s, view)| {
            json!({
                "id": s.id,
                "ranges": map.ranges_of_shard(s.id),
                "replicas": s.replicas,
                "leader": view.leader,
                "followers": followers_json(view),
                "health": view.health.word(),
                "keys": leader_keys(rows, s.id),
                "replica_status": replica_reports(rows, s.id),
            })
        })
        .collect();
    // The metadata group (the cluster map's own Raft group), when the nodes report one.
    let metadata = views.iter().find(|v| v.shard == 0).map(|view| {
        json!({
            "leader": view.leader,
            "followers": followers_json(view),
            "health": view.health.word(),
            "replica_status": replica_reports(rows, 0),
        })
    });
    json!({
        "cluster": map.cluster,
        "epoch": map.epoch,
        "map_from": map_from,
        "nodes": nodes,
        "shards": shards,
        "metadata": metadata,
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
    // Each shard: its slots and replicas (from the map; the first is the one the map names
    // to lead at first), who leads now and how far each follower is behind (from the nodes'
    // own reports), and a health word. The metadata group, shard 0, comes last as `meta`.
    let shards: Vec<[String; 6]> = shard_views(map, rows)
        .into_iter()
        .map(|view| {
            let (name, slots, replicas) = match map.shard(view.shard) {
                Some(s) if view.shard != 0 => (
                    format!("shard {}", s.id),
                    format_ranges(&map.ranges_of_shard(s.id)),
                    s.replicas.join(", "),
                ),
                _ => ("meta".to_owned(), "-".to_owned(), "-".to_owned()),
            };
            let followers = view
                .followers
                .iter()
                .map(Follower::describe)
                .collect::<Vec<_>>()
                .join(", ");
            [
                name,
                slots,
                replicas,
                view.leader.clone().unwrap_or_else(|| "-".to_owned()),
                view.health.word().to_owned(),
                if followers.is_empty() {
                    "-".to_owned()
                } else {
                    followers
                },
            ]
        })
        .collect();
    if !shards.is_empty() {
        let heads = [
            "SHARD",
            "SLOTS",
            "REPLICAS",
            "LEADER",
            "HEALTH",
            "FOLLOWERS",
        ];
        let widths: Vec<usize> = (0..heads.len())
            .map(|c| {
                shards
                    .iter()
                    .map(|r| r[c].len())
                    .chain([heads[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[&str]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            padded.join("  ").trim_end().to_owned()
        };
        let _ = writeln!(out, "{}", line(&heads));
        for row in &shards {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            let _ = writeln!(out, "{}", line(&cells));
        }
    }
    let up = rows.iter().filter(|r| r.report.is_ok()).count();
    let _ = writeln!(out, "{up} of {} node(s) up", rows.len());
    out
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

/// A follower further behind its leader than this many log entries is lagging: the shard is
/// degraded, not healthy.
pub(crate) const LAG_HEALTHY: u64 = 100;
/// A leader whose quorum last acknowledged it longer ago than this has lost its quorum (the
/// nodes' default heartbeat is 100 ms, and a leader steps down after a few election timeouts).
const QUORUM_ACK_RECENT_MS: u64 = 5_000;

/// A shard's health word, as the status table and JSON print it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// A leader with a recent quorum ack, and every follower up within [`LAG_HEALTHY`].
    Healthy,
    /// A leader with a quorum, but some follower lagging, down or not yet a member.
    Degraded,
    /// No leader, or a leader without a quorum: writes and linearizable reads fail.
    Unavailable,
}

impl Health {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unavailable => "unavailable",
        }
    }
}

/// One follower of a shard as its leader and its own node see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Follower {
    pub(crate) node: String,
    /// Entries behind the leader, from the leader's replication report (`None`: the leader
    /// does not replicate to it, or no leader answered).
    pub(crate) lag: Option<u64>,
    /// Its own report: `follower`, `learner`, ...; `down` when its node did not answer,
    /// `missing` when it answered without a replica of the shard, `unknown` when it is not a
    /// node the status command asked.
    pub(crate) state: String,
}

impl Follower {
    /// Up, a voting member, and within [`LAG_HEALTHY`] of the leader.
    pub(crate) fn in_sync(&self) -> bool {
        let voter = matches!(self.state.as_str(), "follower" | "unknown");
        voter && self.lag.is_some_and(|l| l <= LAG_HEALTHY)
    }

    /// Counts toward a quorum: its node is up and it holds the replica (or, for a member
    /// the status command did not ask, the leader replicates to it).
    fn up(&self) -> bool {
        match self.state.as_str() {
            "down" | "missing" | "stopped" => false,
            "unknown" => self.lag.is_some_and(|l| l <= LAG_HEALTHY),
            _ => true,
        }
    }

    /// `n2 lag 0`, `n3 down`, `n4 learner lag 812`.
    fn describe(&self) -> String {
        let mut out = self.node.clone();
        if !matches!(self.state.as_str(), "follower" | "unknown") {
            out.push(' ');
            out.push_str(&self.state);
        }
        if let Some(lag) = self.lag {
            out.push_str(&format!(" lag {lag}"));
        }
        out
    }
}

/// A shard's (or the metadata group's, shard 0) replicas put together from every node's
/// report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardView {
    pub(crate) shard: u32,
    /// The node reporting that it leads (the highest term, if several do).
    pub(crate) leader: Option<String>,
    /// The leader's `applied` index.
    pub(crate) leader_applied: Option<u64>,
    /// Every other member: the map's replicas, then any the leader still replicates to.
    pub(crate) followers: Vec<Follower>,
    pub(crate) health: Health,
}

/// Put together shard `shard` from `rows`; `replicas` are the members the map names (for
/// the metadata group, pass none: its members are the ones its leader replicates to).
pub(crate) fn shard_view(rows: &[Row], shard: u32, replicas: &[String]) -> ShardView {
    let reports: Vec<(&Row, &skv_proto::cluster::ReplicaStatus)> = rows
        .iter()
        .filter_map(|r| {
            let status = r.report.as_ref().ok()?;
            Some((r, status.replicas.iter().find(|g| g.shard == shard)?))
        })
        .collect();
    let leader = reports
        .iter()
        .filter(|(_, g)| g.role == "leader")
        .max_by_key(|(_, g)| g.term);
    let mut members: Vec<String> = replicas.to_vec();
    if let Some((_, g)) = leader {
        for (node, _) in &g.lag {
            if !members.contains(node) {
                members.push(node.clone());
            }
        }
    }
    let leader_id = leader.map(|(r, _)| r.id.clone());
    let followers: Vec<Follower> = members
        .into_iter()
        .filter(|m| Some(m) != leader_id.as_ref())
        .map(|node| {
            let lag = leader.and_then(|(_, g)| {
                g.lag
                    .iter()
                    .find(|(n, _)| *n == node)
                    .map(|(_, behind)| *behind)
            });
            let state = match rows.iter().find(|r| r.id == node) {
                None => "unknown".to_owned(),
                Some(row) => match &row.report {
                    Err(_) => "down".to_owned(),
                    Ok(status) => status
                        .replicas
                        .iter()
                        .find(|g| g.shard == shard)
                        .map_or_else(|| "missing".to_owned(), |g| g.role.clone()),
                },
            };
            Follower { node, lag, state }
        })
        .collect();
    let health = match leader {
        None => Health::Unavailable,
        Some((_, g)) => {
            let members = followers.len() + 1;
            let up = 1 + followers.iter().filter(|f| f.up()).count();
            let acked =
                members == 1 || g.quorum_ack_ms.is_some_and(|ms| ms <= QUORUM_ACK_RECENT_MS);
            if !acked || up * 2 <= members {
                Health::Unavailable
            } else if followers.iter().all(Follower::in_sync) {
                Health::Healthy
            } else {
                Health::Degraded
            }
        }
    };
    ShardView {
        shard,
        leader: leader_id,
        leader_applied: leader.map(|(_, g)| g.applied),
        followers,
        health,
    }
}

/// Every shard of `map` in id order, then the metadata group (shard 0) when any node reports
/// one.
pub(crate) fn shard_views(map: &ClusterMap, rows: &[Row]) -> Vec<ShardView> {
    let mut views: Vec<ShardView> = shards_by_id(map)
        .map(|s| shard_view(rows, s.id, &s.replicas))
        .collect();
    let has_meta = rows.iter().any(|r| {
        r.report
            .as_ref()
            .is_ok_and(|s| s.replicas.iter().any(|g| g.shard == 0))
    });
    if has_meta {
        views.push(shard_view(rows, 0, &[]));
    }
    views
}

fn followers_json(view: &ShardView) -> Value {
    Value::Array(
        view.followers
            .iter()
            .map(
                |f| json!({"node": f.node, "lag": f.lag, "state": f.state, "in_sync": f.in_sync()}),
            )
            .collect(),
    )
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
            text.contains("shard 1  0-8191      n1        -       unavailable  n1 missing\n"),
            "{text}"
        );
        assert!(
            text.contains("shard 2  8192-16383  n2        -       unavailable  n2 down\n"),
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
        assert_eq!(
            lines[at],
            "SHARD    SLOTS        REPLICAS    LEADER  HEALTH       FOLLOWERS"
        );
        // Nobody leads shards 1 and 2; n2 leads shard 3 but reports no follower in reach.
        assert_eq!(
            lines[at + 1],
            "shard 1  0-5460       n1, n2, n3  -       unavailable  n1, n2 missing, n3"
        );
        assert_eq!(
            lines[at + 2],
            "shard 2  5461-10921   n2, n3, n1  -       unavailable  n2 missing, n3, n1"
        );
        assert_eq!(
            lines[at + 3],
            "shard 3  10922-16383  n3, n1, n2  n2      unavailable  n3, n1"
        );
        let value = to_json(&map, None, &rows);
        assert_eq!(value["shards"][1]["replicas"], json!(["n2", "n3", "n1"]));
        assert_eq!(value["shards"][2]["leader"], "n2");
        assert_eq!(value["shards"][0]["leader"], Value::Null);
        assert_eq!(
            value["shards"][2]["ranges"],
            json!([{"start": 10922, "end": 16383}])
        );
    }

    /// n1 leads shard 1 at term `term`; `lag` is what it reports for n2 and n3.
    fn replicated_rows(lag: [u64; 2], n3_up: bool, quorum_ack_ms: Option<u64>) -> Vec<Row> {
        let replica = |role: &str, lag: Vec<(String, u64)>, ack: Option<u64>| ReplicaStatus {
            shard: 1,
            role: role.into(),
            leader: Some("n1".into()),
            term: 4,
            last_log: 500,
            applied: 500,
            lag,
            quorum_ack_ms: ack,
            keys: 10,
            snapshot: 0,
            purged: 0,
        };
        let status = |id: &str, g: ReplicaStatus| NodeStatus {
            node: id.into(),
            epoch: 1,
            keys: 10,
            ranges: Vec::new(),
            migrating: None,
            replicas: vec![g],
        };
        let row = |id: &str, report| Row {
            id: id.into(),
            addr: format!("{id}:1"),
            in_map: true,
            configured: true,
            pid: None,
            report,
        };
        let leader = replica(
            "leader",
            vec![("n2".into(), lag[0]), ("n3".into(), lag[1])],
            quorum_ack_ms,
        );
        vec![
            row("n1", Ok(status("n1", leader))),
            row(
                "n2",
                Ok(status("n2", replica("follower", Vec::new(), None))),
            ),
            row(
                "n3",
                if n3_up {
                    Ok(status("n3", replica("follower", Vec::new(), None)))
                } else {
                    Err(ClientError::Connect {
                        addr: "n3:1".into(),
                        reason: "refused".into(),
                    })
                },
            ),
        ]
    }

    #[test]
    fn shard_health_says_healthy_degraded_or_unavailable() {
        let replicas: Vec<String> = ["n1", "n2", "n3"].map(String::from).to_vec();
        let view = |rows: &[Row]| shard_view(rows, 1, &replicas);

        let all = view(&replicated_rows([0, 3], true, Some(40)));
        assert_eq!(all.health, Health::Healthy);
        assert_eq!(all.leader.as_deref(), Some("n1"));
        assert_eq!(all.leader_applied, Some(500));
        assert_eq!(
            all.followers
                .iter()
                .map(|f| (f.node.as_str(), f.lag, f.state.as_str()))
                .collect::<Vec<_>>(),
            [("n2", Some(0), "follower"), ("n3", Some(3), "follower")]
        );
        // A follower far behind, or one whose node is down: a quorum is still up.
        let behind = view(&replicated_rows([0, LAG_HEALTHY + 1], true, Some(40)));
        assert_eq!(behind.health, Health::Degraded);
        let down = view(&replicated_rows([0, 0], false, Some(40)));
        assert_eq!(down.health, Health::Degraded);
        assert_eq!(down.followers[1].state, "down");
        // A leader whose quorum has not answered for long, or no leader at all.
        let stale = view(&replicated_rows(
            [0, 0],
            true,
            Some(QUORUM_ACK_RECENT_MS + 1),
        ));
        assert_eq!(stale.health, Health::Unavailable);
        let mut leaderless = replicated_rows([0, 0], true, Some(40));
        leaderless.remove(0);
        assert_eq!(view(&leaderless).health, Health::Unavailable);
        // The leader still replicating to a node the map no longer lists (a replaced node
        // not yet swapped out) shows it as a follower too.
        let mut rows = replicated_rows([0, 0], true, Some(40));
        if let Ok(s) = &mut rows[0].report {
            s.replicas[0].lag.push(("n9".into(), 250));
        }
        let extra = view(&rows);
        assert_eq!(extra.followers.len(), 3);
        assert_eq!(extra.followers[2].state, "unknown");
        assert_eq!(extra.health, Health::Degraded);

        // The table and the JSON carry the same words.
        let map = ClusterMap::even_replicated(
            "skv",
            &[
                ("n1".into(), "n1:1".into()),
                ("n2".into(), "n2:1".into()),
                ("n3".into(), "n3:1".into()),
            ],
            3,
        )
        .unwrap();
        let rows = replicated_rows([0, 120], false, Some(40));
        let text = render_table(Path::new("/c"), &map, None, &rows);
        assert!(
            text.contains("shard 1  0-5460       n1, n2, n3  n1      degraded     n2 lag 0, n3 down lag 120\n"),
            "{text}"
        );
        let value = to_json(&map, None, &rows);
        assert_eq!(value["shards"][0]["health"], "degraded");
        assert_eq!(value["shards"][0]["leader"], "n1");
        assert_eq!(
            value["shards"][0]["followers"],
            json!([
                {"node": "n2", "lag": 0, "state": "follower", "in_sync": true},
                {"node": "n3", "lag": 120, "state": "down", "in_sync": false},
            ])
        );
        assert_eq!(value["metadata"], Value::Null);
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
