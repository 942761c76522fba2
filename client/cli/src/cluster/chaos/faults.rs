//! The faults `skv cluster chaos` injects into a running cluster, and how each is healed.
//!
//! Processes are faulted with signals (kill -9, SIGSTOP/SIGCONT, SIGTERM then a restart);
//! links between nodes through the [`Proxy`]; a node's disk by filling the small tmpfs its
//! data directory is mounted on. Targets that depend on roles (the leader of a shard, one
//! of its followers) are found by asking every live node for its replica status.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use skv_client::Connection;
use skv_proto::cluster::{ControlRequest, ControlResponse};

use super::proxy::{Link, Proxy};
use crate::cluster::{process, ClusterDir, Failure, Result};

/// Delay added to each direction of a slow node's links.
pub(crate) const SLOW_LINK_DELAY: Duration = Duration::from_millis(100);
/// Size of the tmpfs a disk-faulted node's data directory lives on.
pub(crate) const SMALL_DISK_MB: u64 = 192;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum FaultKind {
    /// kill -9 of a node chosen at random, restarted at heal.
    Kill,
    /// kill -9 of the leader of a shard, restarted at heal.
    KillLeader,
    /// kill -9 of a follower of a shard, restarted at heal.
    KillFollower,
    /// SIGSTOP of a shard's leader, SIGCONT at heal: it wakes up still believing it leads.
    Pause,
    /// SIGTERM (a clean stop) of a node chosen at random, started again at heal.
    Restart,
    /// A shard's leader cut off from every other node, both ways.
    Partition,
    /// The nodes split in two halves that cannot reach each other, with one node (the
    /// bridge) reaching both.
    Bridge,
    /// A shard's leader can no longer send to the others, but still hears them.
    OneWay,
    /// Every link of one node slowed by [`SLOW_LINK_DELAY`] each way.
    Slow,
    /// The disk of the node with the small data disk filled up, freed at heal.
    DiskFull,
}

impl FaultKind {
    pub(crate) const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::Pause,
        FaultKind::Restart,
        FaultKind::Partition,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::Slow,
        FaultKind::DiskFull,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::Pause => "pause",
            FaultKind::Restart => "restart",
            FaultKind::Partition => "partition",
            FaultKind::Bridge => "bridge",
            FaultKind::OneWay => "one-way",
            FaultKind::Slow => "slow",
            FaultKind::DiskFull => "disk-full",
        }
    }

    /// Whether this fault takes a leader away (its heal ends a failover the report times).
    pub(crate) fn targets_leader(self) -> bool {
        matches!(
            self,
            FaultKind::KillLeader | FaultKind::Pause | FaultKind::Partition | FaultKind::OneWay
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<FaultKind, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!(
                    "unknown fault `{s}`; choose from {} or all",
                    names.join(", ")
                )
            })
    }
}

/// Parse `--faults`: a comma-separated list of kinds, or `all`.
pub(crate) fn parse_list(text: &str) -> std::result::Result<Vec<FaultKind>, String> {
    let mut kinds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            kinds.extend(FaultKind::ALL);
        } else {
            kinds.push(part.parse()?);
        }
    }
    kinds.dedup();
    if kinds.is_empty() {
        return Err("--faults names no fault".into());
    }
    Ok(kinds)
}

/// A fault in place, and what undoing it takes.
#[derive(Debug, Clone)]
pub(crate) struct Active {
    /// What was done, for the report: `kill -9 n2 (leader of shard 1)`.
    pub(crate) detail: String,
    /// The shard whose leader was targeted, if any.
    pub(crate) shard: Option<u32>,
    undo: Undo,
}

#[derive(Debug, Clone)]
enum Undo {
    Start(String),
    Resume(u32),
    HealLinks,
    FreeDisk(String, PathBuf),
}

/// Everything the injector needs: the cluster's directory, its nodes and the proxy.
#[derive(Debug)]
pub(crate) struct Injector {
    pub(crate) dir: ClusterDir,
    pub(crate) token: String,
    pub(crate) nodes: Vec<(String, String)>,
    pub(crate) proxy: Proxy,
    /// The node whose data directory is a small tmpfs, if the disk fault is on.
    pub(crate) small_disk: Option<String>,
}

impl Injector {
    /// Inject one fault of `kind`. A fault that finds no target (no leader known yet, every
    /// node already down) is reported as an error and skipped by the schedule.
    pub(crate) async fn inject(&self, kind: FaultKind, rng: &mut StdRng) -> Result<Active> {
        let ids: Vec<String> = self.nodes.iter().map(|(id, _)| id.clone()).collect();
        let random_node = |rng: &mut StdRng| ids.choose(rng).cloned().unwrap_or_default();
        let (node, shard, role) = match kind {
            FaultKind::KillLeader | FaultKind::Pause | FaultKind::Partition | FaultKind::OneWay => {
                let (shard, leader) = self.some_leader(rng).await?;
                (leader, Some(shard), format!(" (leader of shard {shard})"))
            }
            FaultKind::KillFollower => {
                let (shard, leader) = self.some_leader(rng).await?;
                let followers: Vec<&String> = ids.iter().filter(|id| **id != leader).collect();
                let follower = followers
                    .choose(rng)
                    .map(|s| (*s).clone())
                    .ok_or_else(|| Failure::usage("no follower to kill"))?;
                (
                    follower,
                    Some(shard),
                    format!(" (follower of shard {shard})"),
                )
            }
            FaultKind::DiskFull => {
                let node = self.small_disk.clone().ok_or_else(|| {
                    Failure::usage("no node has a small disk (internal: disk-full not set up)")
                })?;
                (node, None, String::new())
            }
            _ => (random_node(rng), None, String::new()),
        };
        let (detail, undo) = match kind {
            FaultKind::Kill | FaultKind::KillLeader | FaultKind::KillFollower => {
                self.signal(&node, Signal::SIGKILL)?;
                wait_gone(&self.dir, &node).await;
                (format!("kill -9 {node}{role}"), Undo::Start(node.clone()))
            }
            FaultKind::Pause => {
                let pid = self.signal(&node, Signal::SIGSTOP)?;
                (format!("SIGSTOP {node}{role}"), Undo::Resume(pid))
            }
            FaultKind::Restart => {
                self.signal(&node, Signal::SIGTERM)?;
                wait_gone(&self.dir, &node).await;
                (
                    format!("SIGTERM {node}, stopped"),
                    Undo::Start(node.clone()),
                )
            }
            FaultKind::Partition => {
                for other in ids.iter().filter(|o| **o != node) {
                    self.proxy.set(&node, other, down());
                    self.proxy.set(other, &node, down());
                }
                (
                    format!("{node}{role} cut off from every other node"),
                    Undo::HealLinks,
                )
            }
            FaultKind::OneWay => {
                for other in ids.iter().filter(|o| **o != node) {
                    self.proxy.set(&node, other, down());
                }
                (
                    format!("{node}{role} cannot send to the others, still hears them"),
                    Undo::HealLinks,
                )
            }
            FaultKind::Bridge => {
                let mut others: Vec<String> = ids.iter().filter(|o| **o != node).cloned().collect();
                others.shuffle(rng);
                let (left, right) = others.split_at(others.len() / 2);
                for a in left {
                    for b in right {
                        self.proxy.set(a, b, down());
                        self.proxy.set(b, a, down());
                    }
                }
                (
                    format!(
                        "{{{}}} | {{{}}} cannot reach each other; {node} bridges both",
                        left.join(", "),
                        right.join(", ")
                    ),
                    Undo::HealLinks,
                )
            }
            FaultKind::Slow => {
                let slow = Link {
                    down: false,
                    delay: SLOW_LINK_DELAY,
                };
                for other in ids.iter().filter(|o| **o != node) {
                    self.proxy.set(&node, other, slow);
                    self.proxy.set(other, &node, slow);
                }
                (
                    format!(
                        "every link of {node} delayed {} ms each way",
                        SLOW_LINK_DELAY.as_millis()
                    ),
                    Undo::HealLinks,
                )
            }
            FaultKind::DiskFull => {
                let filler = self
                    .dir
                    .root()
                    .join("data")
                    .join(&node)
                    .join("chaos-filler");
                let filled = fill_disk(&filler).await;
                (
                    format!("disk of {node} filled ({filled} MiB written until ENOSPC)"),
                    Undo::FreeDisk(node.clone(), filler),
                )
            }
        };
        Ok(Active {
            detail,
            shard,
            undo,
        })
    }

    /// Undo `fault`. Starting a node waits until it answers PING (or gives up after the
    /// start timeout, leaving it to the final heal).
    pub(crate) async fn heal(&self, fault: &Active) -> Result<()> {
        match &fault.undo {
            Undo::Start(node) => self.start(std::slice::from_ref(node)).await,
            Undo::Resume(pid) => {
                let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
                Ok(())
            }
            Undo::HealLinks => {
                self.proxy.heal();
                Ok(())
            }
            Undo::FreeDisk(node, filler) => {
                let _ = tokio::fs::remove_file(filler).await;
                // A node whose disk filled up stops itself (fail-stop, see skv-node); with
                // space back, it is started again, as an operator would.
                self.start(std::slice::from_ref(node)).await
            }
        }
    }

    /// Undo everything at once: every link healed, every paused node resumed, every filler
    /// removed, every node that is down started.
    pub(crate) async fn heal_all(&self, active: &[Active]) -> Result<()> {
        self.proxy.heal();
        for fault in active {
            match &fault.undo {
                Undo::Resume(pid) => {
                    let _ = signal::kill(Pid::from_raw(*pid as i32), Signal::SIGCONT);
                }
                Undo::FreeDisk(_, filler) => {
                    let _ = tokio::fs::remove_file(filler).await;
                }
                Undo::Start(_) | Undo::HealLinks => {}
            }
        }
        let down: Vec<String> = self
            .nodes
            .iter()
            .filter(|(id, _)| process::live_pid(&self.dir, id).is_none())
            .map(|(id, _)| id.clone())
            .collect();
        self.start(&down).await
    }

    async fn start(&self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let nodes: Vec<_> = self
            .dir
            .node_files()?
            .into_iter()
            .filter(|n| ids.contains(&n.id))
            .collect();
        // A node can still be on its way down when we look: after a full disk it fail-stops
        // at its next write, which may come just as the filler is removed. It is then
        // "running" when the start is decided and gone a moment later, so a node that
        // stopped while being waited for is started once more before the heal gives up.
        let mut failed = Vec::new();
        for _attempt in 0..2 {
            let started = process::start_missing_quiet(&self.dir, &nodes)?;
            failed = process::wait_ready_quiet(&self.dir, &self.token, &nodes, started).await;
            if failed.is_empty() {
                return Ok(());
            }
            super::reap_children();
        }
        Err(Failure::connection(format!(
            "{} did not come back (see its log in {})",
            failed.join(", "),
            self.dir.logs_dir().display()
        )))
    }

    fn signal(&self, node: &str, sig: Signal) -> Result<u32> {
        let pid = process::live_pid(&self.dir, node)
            .ok_or_else(|| Failure::usage(format!("{node} is not running")))?;
        signal::kill(Pid::from_raw(pid as i32), sig)
            .map_err(|e| Failure::server(format!("cannot signal {node} (pid {pid}): {e}")))?;
        Ok(pid)
    }

    /// The current leaders of the data shards, as their replicas report them: for each
    /// shard, the leader named (by itself or by a follower) at the highest term. A leader
    /// that was deposed without hearing of it still calls itself leader, but at an older
    /// term than the replicas that moved on, so it is not picked.
    pub(crate) async fn leaders(&self) -> BTreeMap<u32, String> {
        let mut best: BTreeMap<u32, (u64, String)> = BTreeMap::new();
        for (id, addr) in &self.nodes {
            let mut opts = self.dir.admin_options(addr, &self.token);
            opts.connect_timeout = Duration::from_secs(1);
            opts.request_timeout = Duration::from_secs(1);
            let Ok(conn) = Connection::connect(&opts).await else {
                continue;
            };
            let Ok(ControlResponse::Status(status)) = conn.control(&ControlRequest::Status).await
            else {
                continue;
            };
            for replica in status.replicas {
                let named = if replica.role == "leader" {
                    Some(id.clone())
                } else {
                    replica.leader.clone()
                };
                let Some(leader) = named.filter(|_| replica.shard != 0) else {
                    continue;
                };
                let entry = best.entry(replica.shard).or_insert((0, String::new()));
                if replica.term > entry.0 || entry.1.is_empty() {
                    *entry = (replica.term, leader);
                }
            }
        }
        best.into_iter().map(|(s, (_, id))| (s, id)).collect()
    }

    /// A data shard chosen at random, and its leader. Right after an earlier fault's heal a
    /// shard may still be electing, so this asks again for a few seconds before giving up.
    async fn some_leader(&self, rng: &mut StdRng) -> Result<(u32, String)> {
        for _ in 0..20 {
            let leaders: Vec<(u32, String)> = self.leaders().await.into_iter().collect();
            if let Some(found) = leaders.choose(rng) {
                return Ok(found.clone());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(Failure::connection("no shard reported a leader for 5 s"))
    }
}

fn down() -> Link {
    Link {
        down: true,
        delay: Duration::ZERO,
    }
}

/// Wait (briefly) until `node`'s process is gone, so its restart does not race its exit.
async fn wait_gone(dir: &ClusterDir, node: &str) {
    for _ in 0..600 {
        if process::live_pid(dir, node).is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write zeros to `path` until the file system is full; returns the MiB written.
async fn fill_disk(path: &std::path::Path) -> u64 {
    use tokio::io::AsyncWriteExt;
    let Ok(mut file) = tokio::fs::File::create(path).await else {
        return 0;
    };
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0;
    // Bounded by the tmpfs size; the cap only guards against a mount that went missing.
    while written < SMALL_DISK_MB * 4 {
        if file.write_all(&chunk).await.is_err() || file.sync_data().await.is_err() {
            break;
        }
        written += 1;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse_with_all_and_refuse_unknown_names() {
        assert_eq!(
            parse_list("kill,pause").unwrap(),
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert_eq!(parse_list("all").unwrap().len(), FaultKind::ALL.len());
        let err = parse_list("kill,frobnicate").unwrap_err();
        assert!(
            err.contains("frobnicate") && err.contains("one-way"),
            "{err}"
        );
        assert!(parse_list(" , ").is_err());
        for kind in FaultKind::ALL {
            assert_eq!(kind.name().parse::<FaultKind>().unwrap(), kind);
        }
    }
}
