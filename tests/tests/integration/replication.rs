//! Replication against real node processes: 3 nodes, every shard a Raft group of 3 replicas.
//! Nodes are killed with SIGKILL under concurrent load and restarted; every acknowledged write
//! is then checked key by key. Also: the whole cluster losing power, two of three down, a
//! wiped node replaced, two administrators moving slots at once, a node pushing a map, a
//! write retried with its session, and an encrypted-at-rest cluster catching up by snapshot.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use skv_client::{ClientError, ClusterClient, Connection, Failover};
use skv_proto::cluster::{
    hash_slot, ClusterMap, ControlRequest, ControlResponse, NodeStatus, SlotRange,
};
use skv_proto::{Consistency, ErrorCode, RequestBody, ResponseBody, Session};
use skv_tests::cluster::LocalCluster;
use skv_tests::{any_file_contains, Node};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Wait until every shard of the cluster has a leader that `client` can write through: a
/// fresh cluster elects its leaders within a couple of election timeouts.
async fn wait_writable(client: &ClusterClient, map: &ClusterMap) -> anyhow::Result<()> {
    for shard in &map.shards {
        let range = map.ranges_of_shard(shard.id);
        let Some(first) = range.first() else { continue };
        let key = key_in_slot_range(first.start, first.end, "ready");
        let started = std::time::Instant::now();
        loop {
            match client.put(key.clone(), "ready").await {
                Ok(_) => break,
                Err(err) if started.elapsed() < Duration::from_secs(30) => {
                    eprintln!("shard {} not writable yet: {err}", shard.id);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => anyhow::bail!("shard {} never became writable: {err}", shard.id),
            }
        }
    }
    Ok(())
}

/// A key whose slot lies in `start..=end`.
fn key_in_slot_range(start: u16, end: u16, tag: &str) -> Bytes {
    (0u64..)
        .map(|i| format!("{tag}-{i}"))
        .find(|k| (start..=end).contains(&hash_slot(k.as_bytes())))
        .map(Bytes::from)
        .expect("some key hashes into every range")
}

async fn client(cluster: &LocalCluster, via: &str) -> anyhow::Result<ClusterClient> {
    let seeds = cluster
        .nodes
        .iter()
        .filter_map(|(_, n)| n.as_ref().map(|n| n.addr.clone()))
        .collect();
    Ok(ClusterClient::connect(cluster.client("alice", &cluster.addr(via)), seeds).await?)
}

/// What the load acknowledged: key → the value of its last acknowledged write.
type Acked = Arc<Mutex<BTreeMap<Bytes, Bytes>>>;

/// Five writers and five readers on their own keys until `stop`; returns (writes, failures).
fn spawn_load(
    client: &ClusterClient,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
    failures: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    let mut tasks = Vec::new();
    for writer in 0..5u32 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Each write goes to a new key, so the check below is exact.
                let key = Bytes::from(format!("load/{writer}/{n}"));
                let value = Bytes::from(format!("v{writer}-{n}"));
                match client.put(key.clone(), value.clone()).await {
                    Ok(_) => {
                        acked.lock().expect("acked").insert(key, value);
                    }
                    Err(err) => {
                        eprintln!("write {key:?} failed: {err}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            n
        }));
    }
    for reader in 0..5u32 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let failures = failures.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pick = {
                    let acked = acked.lock().expect("acked");
                    let len = acked.len();
                    (len > 0)
                        .then(|| {
                            acked
                                .iter()
                                .nth((n as usize * 7919 + reader as usize) % len)
                        })
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone()))
                };
                if let Some((key, value)) = pick {
                    match client.get(key.clone()).await {
                        Ok(Some((_, got))) => assert_eq!(got, value, "read of {key:?}"),
                        Ok(None) => panic!("acknowledged key {key:?} is missing"),
                        Err(err) => {
                            eprintln!("read {key:?} failed: {err}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                n += 1;
            }
            n
        }));
    }
    tasks
}

/// Every acknowledged write is there, read linearizably through any entry node.
async fn check_acked(client: &ClusterClient, acked: &Acked) -> anyhow::Result<usize> {
    let acked = acked.lock().expect("acked").clone();
    for (key, value) in &acked {
        let got = client.get(key.clone()).await?;
        anyhow::ensure!(
            got.as_ref().map(|(_, v)| v) == Some(value),
            "acknowledged write {key:?} = {value:?} reads back as {got:?}"
        );
    }
    Ok(acked.len())
}

#[test]
fn every_node_killed_in_turn_under_load_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start_replicated(3, 0, 3)?;
    let rt = rt();
    let client = rt.block_on(client(&cluster, "n1"))?;
    let map = client.map();
    assert!(map.shards.iter().all(|s| s.replicas.len() == 3));
    rt.block_on(wait_writable(&client, &map))?;

    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let tasks = rt.block_on(async { spawn_load(&client, &acked, &stop, &failures) });
    for id in ["n1", "n2", "n3"] {
        std::thread::sleep(Duration::from_secs(2));
        let before = acked.lock().expect("acked").len();
        let stopped = cluster.kill9(id)?;
        // The others keep serving: writes are acknowledged while the node is down.
        std::thread::sleep(Duration::from_secs(4));
        let during = acked.lock().expect("acked").len();
        assert!(
            during > before,
            "no write was acknowledged in the 4 s {id} was down ({before} → {during})"
        );
        cluster.restart(id, &stopped)?;
    }
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let ops: u64 = rt.block_on(async {
        let mut ops = 0;
        for t in tasks {
            ops += t.await.expect("load task");
        }
        ops
    });
    let failed = failures.load(Ordering::Relaxed);
    assert_eq!(
        failed, 0,
        "{failed} of {ops} operations failed although a quorum was up throughout"
    );
    let checked = rt.block_on(check_acked(&client, &acked))?;
    assert!(checked > 100, "only {checked} writes were acknowledged");
    // And through each node as entry point, with every node back.
    for id in ["n1", "n2", "n3"] {
        let entry = rt.block_on(client_via(&cluster, id))?;
        rt.block_on(check_acked(&entry, &acked))?;
    }
    Ok(())
}

async fn client_via(cluster: &LocalCluster, id: &str) -> anyhow::Result<ClusterClient> {
    client(cluster, id).await
}

#[test]
fn the_whole_cluster_losing_power_keeps_every_acknowledged_write() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start_replicated(3, 0, 3)?;
    let rt = rt();
    let acked: Acked = Arc::default();
    rt.block_on(async {
        let client = client(&cluster, "n2").await?;
        wait_writable(&client, &client.map()).await?;
        // Concurrent writers, so the kill lands while batches are in flight.
        let mut tasks = Vec::new();
        for w in 0..8 {
            let client = client.clone();
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..150 {
                    let key = Bytes::from(format!("power/{w}/{i}"));
                    let value = Bytes::from(format!("{w}:{i}"));
                    if client.put(key.clone(), value.clone()).await.is_ok() {
                        acked.lock().expect("acked").insert(key, value);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        anyhow::Ok(())
    })?;
    let written = acked.lock().expect("acked").len();
    assert_eq!(
        written,
        8 * 150,
        "every write is acknowledged with all nodes up"
    );
    // Power off: every node at once, no chance to flush.
    let mut stopped = Vec::new();
    for id in ["n1", "n2", "n3"] {
        stopped.push((id, cluster.kill9(id)?));
    }
    for (id, how) in &stopped {
        cluster.restart(id, how)?;
    }
    rt.block_on(async {
        let client = client(&cluster, "n3").await?;
        wait_writable(&client, &client.map()).await?;
        let checked = check_acked(&client, &acked).await?;
        assert_eq!(checked, written);
        anyhow::Ok(())
    })
}

#[test]
fn two_of_three_down_refuses_writes_clearly_and_serves_stale_reads() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start_replicated(3, 0, 3)?;
    let rt = rt();
    let keys: Vec<Bytes> = (0..30)
        .map(|i| Bytes::from(format!("quorum/{i}")))
        .collect();
    rt.block_on(async {
        let client = client(&cluster, "n1").await?;
        wait_writable(&client, &client.map()).await?;
        for key in &keys {
            client.put(key.clone(), key.clone()).await?;
        }
        anyhow::Ok(())
    })?;
    cluster.take("n2").kill9()?;
    cluster.take("n3").kill9()?;
    rt.block_on(async {
        let quick = Failover {
            attempt_timeout: Duration::from_millis(500),
            deadline: Duration::from_secs(3),
            down_for: Duration::from_millis(500),
        };
        let client = ClusterClient::connect(cluster.client("alice", &cluster.addr("n1")), vec![])
            .await?
            .with_failover(quick);
        match client.put(keys[0].clone(), "lost").await {
            Err(err @ (ClientError::Unavailable { .. } | ClientError::ShardDown { .. })) => {
                let text = err.to_string();
                assert!(
                    text.contains("stale") || text.contains("reachable"),
                    "the refusal should say why and what still works: {text}"
                );
            }
            other => panic!("a write with one of three replicas up was answered {other:?}"),
        }
        // Every key is still readable from the survivor, marked as possibly stale.
        let stale = client.with_consistency(Consistency::Stale);
        for key in &keys {
            let got = stale.get(key.clone()).await?;
            assert_eq!(
                got.map(|(_, v)| v),
                Some(key.clone()),
                "stale read of {key:?}"
            );
        }
        anyhow::Ok(())
    })
}

#[test]
fn a_write_retried_with_its_session_is_applied_once() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    rt().block_on(async {
        let client = client(&cluster, "n1").await?;
        let map = client.map();
        wait_writable(&client, &map).await?;
        let key = Bytes::from_static(b"session/key");
        // Find the shard's leader: writes there are answered, not redirected.
        client.put(key.clone(), "v0").await?;
        let shard = map.shard_of_slot(hash_slot(&key)).expect("shard").id;
        let leader = client.cached_leader(shard).expect("a leader after a write");
        let conn = Connection::connect(&cluster.client("alice", &cluster.addr(&leader))).await?;
        let session = Session {
            client: 0x5eed_0000_0000_0001,
            seq: 1,
        };
        let put = |value: &'static str| RequestBody::Put {
            key: key.clone(),
            value: Bytes::from_static(value.as_bytes()),
        };
        let first = conn
            .call_with(put("v1"), Some(session), Consistency::Linearizable)
            .await?;
        // The answer was "lost"; the client sends the same write again, same session.
        let again = conn
            .call_with(put("v1"), Some(session), Consistency::Linearizable)
            .await?;
        let (ResponseBody::Written { version: v1 }, ResponseBody::Written { version: v2 }) =
            (&first, &again)
        else {
            panic!("writes answered {first:?} and {again:?}");
        };
        assert_eq!(v1, v2, "the retry got the first outcome, not a new version");
        let (version, value) = client.get(key.clone()).await?.expect("written");
        assert_eq!((version, value.as_ref()), (*v1, b"v1".as_ref()));
        // The next write of that session advances the version once.
        let next = conn
            .call_with(
                put("v2"),
                Some(Session { seq: 2, ..session }),
                Consistency::Linearizable,
            )
            .await?;
        assert!(matches!(next, ResponseBody::Written { version } if version > *v1));
        anyhow::Ok(())
    })
}

#[test]
fn a_node_that_pushes_a_map_is_refused() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    rt().block_on(async {
        let client = client(&cluster, "n1").await?;
        wait_writable(&client, &client.map()).await?;
        let before = client.refresh_map().await?;
        // n2's own certificate: a node of this cluster speaking the peer protocol.
        let as_n2 = Connection::connect(&cluster.as_node("n2", &cluster.addr("n1"))).await?;
        let mut forged = (*before).clone();
        forged.epoch = u64::MAX;
        forged
            .slots
            .iter_mut()
            .for_each(|s| s.shard = forged.shards[0].id);
        match as_n2.control(&ControlRequest::SetMap { map: forged }).await {
            Err(ClientError::Refused(w)) | Err(ClientError::Server(w)) => {
                assert_eq!(w.code, ErrorCode::Forbidden, "{w}")
            }
            other => panic!("a pushed map was answered {other:?}"),
        }
        let after = client.refresh_map().await?;
        assert_eq!(after.epoch, before.epoch);
        assert_eq!(*after, *before);
        anyhow::Ok(())
    })
}

async fn status(cluster: &LocalCluster, id: &str) -> anyhow::Result<NodeStatus> {
    let admin = Connection::connect(&cluster.client("admin", &cluster.addr(id))).await?;
    match admin.control(&ControlRequest::Status).await? {
        ControlResponse::Status(s) => Ok(s),
        other => anyhow::bail!("status answered {other:?}"),
    }
}

#[test]
fn two_administrators_moving_slots_at_once_one_wins_and_no_key_is_lost() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    rt().block_on(async {
        let client = client(&cluster, "n1").await?;
        let map = client.map();
        wait_writable(&client, &map).await?;
        // Keys in slots 0–99, which shard 1 owns.
        let mut keys = Vec::new();
        for i in 0..2000u32 {
            let key = Bytes::from(format!("move/{i}"));
            if hash_slot(&key) < 100 {
                client.put(key.clone(), key.clone()).await?;
                keys.push(key);
            }
        }
        assert!(keys.len() > 5);
        let owner = map.shard_of_slot(0).expect("owner").id;
        let targets: Vec<String> = map
            .shards
            .iter()
            .filter(|s| s.id != owner)
            .map(|s| s.replicas[0].clone())
            .collect();
        let request = |to: &str| ControlRequest::MoveSlots {
            ranges: vec![SlotRange::new(0, 99)],
            to: to.to_owned(),
            expect_epoch: Some(map.epoch),
        };
        let a = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        let b = Connection::connect(&cluster.client("admin", &cluster.addr("n2"))).await?;
        let (to_a, to_b) = (request(&targets[0]), request(&targets[1]));
        let (ra, rb) = tokio::join!(a.control(&to_a), b.control(&to_b));
        let wins = usize::from(ra.is_ok()) + usize::from(rb.is_ok());
        assert_eq!(wins, 1, "exactly one move wins: {ra:?} / {rb:?}");
        let (winner, loser) = if ra.is_ok() {
            (&targets[0], &rb)
        } else {
            (&targets[1], &ra)
        };
        match loser {
            Err(ClientError::Server(w)) | Err(ClientError::Refused(w)) => {
                assert_eq!(w.code, ErrorCode::ClusterState, "{w}")
            }
            other => panic!("the losing move was answered {other:?}"),
        }
        let after = client.refresh_map().await?;
        assert_eq!(after.epoch, map.epoch + 1, "one move, one new epoch");
        let new_owner = after.shard_of_slot(0).expect("owner");
        assert_eq!(&new_owner.replicas[0], winner);
        for key in &keys {
            let got = client.get(key.clone()).await?;
            assert_eq!(
                got.map(|(_, v)| v),
                Some(key.clone()),
                "{key:?} after the move"
            );
        }
        // Writes to the moved slots land on the new shard, with versions that kept growing.
        let (v_before, _) = client.get(keys[0].clone()).await?.expect("present");
        let v_after = client.put(keys[0].clone(), "again").await?;
        assert!(v_after > v_before, "version {v_after} after {v_before}");
        anyhow::Ok(())
    })
}

#[test]
fn a_wiped_node_is_replaced_and_its_replicas_rebuilt() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start_replicated(3, 1, 3)?;
    let rt = rt();
    let keys: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("wipe/{i}"))).collect();
    rt.block_on(async {
        let client = client(&cluster, "n1").await?;
        wait_writable(&client, &client.map()).await?;
        for key in &keys {
            client.put(key.clone(), key.clone()).await?;
        }
        anyhow::Ok(())
    })?;
    // n3 dies and its disk is lost.
    cluster.take("n3").kill9()?;
    std::fs::remove_dir_all(cluster.dir().join("data").join("n3"))?;
    // n4 (a spare certificate) takes its place.
    let ports = skv_tests::cluster::free_ports(1)?;
    let n4_addr = format!("127.0.0.1:{}", ports[0]);
    rt.block_on(async {
        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        admin
            .control(&ControlRequest::ReplaceNode {
                dead: "n3".into(),
                with: "n4".into(),
                addr: n4_addr.clone(),
            })
            .await?;
        anyhow::Ok(())
    })?;
    let n4 = cluster.start_node("n4", &n4_addr)?;
    cluster.push("n4", n4);
    // Healthy: every group on n4 is a member, caught up.
    let started = std::time::Instant::now();
    loop {
        let healthy = rt.block_on(async {
            let s = status(&cluster, "n4").await?;
            let map = client_via(&cluster, "n1").await?.refresh_map().await?;
            let shards_on_n4 = map.shards_of_node("n4").count();
            let caught_up = s
                .replicas
                .iter()
                .filter(|r| r.shard != 0)
                .filter(|r| r.role == "follower" || r.role == "leader")
                .filter(|r| r.applied > 0)
                .count();
            anyhow::Ok(shards_on_n4 == 3 && caught_up == 3)
        });
        if matches!(healthy, Ok(true)) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "n4 never caught up: {healthy:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // n3's certificate is still valid, but n3 is out of the map: it has no say any more.
    rt.block_on(async {
        let as_n3 = Connection::connect(&cluster.as_node("n3", &cluster.addr("n1"))).await?;
        let vote = as_n3
            .call(RequestBody::Raft {
                group: 0,
                rpc: 2,
                payload: Bytes::new(),
            })
            .await;
        match vote {
            Err(ClientError::Refused(w)) => assert_eq!(w.code, ErrorCode::Forbidden, "{w}"),
            other => panic!("a replaced node's Raft message was answered {other:?}"),
        }
        anyhow::Ok(())
    })?;
    // The rebuilt copies count: with n1 gone too, n2 and n4 are a quorum of every shard.
    cluster.take("n1").kill9()?;
    rt.block_on(async {
        let client = client(&cluster, "n2").await?;
        for key in &keys {
            let got = client.get(key.clone()).await?;
            assert_eq!(
                got.map(|(_, v)| v),
                Some(key.clone()),
                "{key:?} after the rebuild"
            );
        }
        client.put("wipe/after", "ok").await?;
        anyhow::Ok(())
    })
}

#[test]
fn another_certificate_cannot_reuse_a_clients_session() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    rt().block_on(async {
        let client = client(&cluster, "n1").await?;
        let map = client.map();
        wait_writable(&client, &map).await?;
        // Two keys of one shard, so both writes meet the same session table.
        let first = map.ranges_of_shard(map.shards[0].id)[0];
        let mine = key_in_slot_range(first.start, first.end, "alice");
        let theirs = key_in_slot_range(first.start, first.end, "mallory");
        client.put(mine.clone(), "warm").await?;
        let shard = map.shard_of_slot(hash_slot(&mine)).expect("shard").id;
        let leader = client.cached_leader(shard).expect("leader");
        let addr = cluster.addr(&leader);
        let session = Some(Session {
            client: 0xa11ce,
            seq: 7,
        });
        let alice = Connection::connect(&cluster.client("alice", &addr)).await?;
        let put = |key: &Bytes, value: &'static str| RequestBody::Put {
            key: key.clone(),
            value: Bytes::from_static(value.as_bytes()),
        };
        alice
            .call_with(put(&mine, "alice's"), session, Consistency::Linearizable)
            .await?;
        // Another certificate sends the very same (client, seq): it is a different session,
        // so its write is applied, not answered with alice's outcome.
        let other = Connection::connect(&cluster.client("admin", &addr)).await?;
        let answer = other
            .call_with(put(&theirs, "admin's"), session, Consistency::Linearizable)
            .await?;
        assert!(matches!(answer, ResponseBody::Written { .. }), "{answer:?}");
        let got = client.get(theirs.clone()).await?.map(|(_, v)| v);
        assert_eq!(got, Some(Bytes::from_static(b"admin's")));
        anyhow::Ok(())
    })
}

#[test]
fn a_restarted_node_takes_back_the_lead_of_its_shard() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start_replicated(3, 0, 3)?;
    let rt = rt();
    let client = rt.block_on(client(&cluster, "n2"))?;
    let map = client.map();
    rt.block_on(wait_writable(&client, &map))?;
    let preferred = map
        .shards
        .iter()
        .find(|s| s.replicas[0] == "n1")
        .expect("n1's shard");
    let range = map.ranges_of_shard(preferred.id)[0];
    let key = key_in_slot_range(range.start, range.end, "lead");
    let stopped = cluster.kill9("n1")?;
    // The shard fails over: another replica leads and takes writes.
    rt.block_on(client.put(key.clone(), "during"))?;
    let leader_during = client.cached_leader(preferred.id).expect("a leader");
    assert_ne!(leader_during, "n1");
    cluster.restart("n1", &stopped)?;
    // Once caught up, n1 leads its shard again, and nothing written meanwhile is lost.
    let started = std::time::Instant::now();
    loop {
        let leads = rt.block_on(status(&cluster, "n1")).ok().is_some_and(|s| {
            s.replicas
                .iter()
                .any(|r| r.shard == preferred.id && r.role == "leader")
        });
        if leads {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n1 did not take back the lead of shard {}",
            preferred.id
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let got = rt.block_on(client.get(key))?.map(|(_, v)| v);
    assert_eq!(got, Some(Bytes::from_static(b"during")));
    Ok(())
}

#[test]
fn a_replica_that_fell_far_behind_is_brought_up_by_a_snapshot() -> anyhow::Result<()> {
    // Snapshots every 50 entries, so a few hundred writes purge the log past a stopped node.
    let mut cluster = LocalCluster::start_with(3, 0, 3, &["--snapshot-every", "50"])?;
    let rt = rt();
    let client = rt.block_on(client(&cluster, "n1"))?;
    let map = client.map();
    rt.block_on(wait_writable(&client, &map))?;
    let stopped = cluster.kill9("n3")?;
    let keys: Vec<Bytes> = (0..400).map(|i| Bytes::from(format!("snap/{i}"))).collect();
    rt.block_on(async {
        for key in &keys {
            client.put(key.clone(), key.clone()).await?;
        }
        anyhow::Ok(())
    })?;
    cluster.restart("n3", &stopped)?;
    // n3's replicas catch up; those whose leader purged past n3's log get a snapshot.
    let started = std::time::Instant::now();
    let s3 = loop {
        let s3 = rt.block_on(status(&cluster, "n3"))?;
        let caught_up = s3
            .replicas
            .iter()
            .filter(|r| r.shard != 0)
            .all(|r| r.applied > 0 && r.snapshot > 0);
        if caught_up {
            break s3;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n3 did not catch up by snapshot: {:?}",
            s3.replicas
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        s3.replicas.iter().any(|r| r.purged > 0),
        "{:?}",
        s3.replicas
    );
    // Every key is on n3 itself: read its own copy, stale, from n3 alone.
    rt.block_on(async {
        let n3 = Connection::connect(&cluster.client("alice", &cluster.addr("n3"))).await?;
        for key in &keys {
            let value = own_copy(&n3, key, Duration::from_secs(20)).await?;
            assert_eq!(&value, key);
        }
        anyhow::Ok(())
    })
}

/// `key` as the node behind `conn` has it in its own replica (a stale read, so that node
/// answers itself), waiting up to `patience` for it to arrive there. A replica that has not
/// yet applied the entries giving its shard the key's slot answers `try_again`: that is
/// "not there yet" too.
async fn own_copy(conn: &Connection, key: &Bytes, patience: Duration) -> anyhow::Result<Bytes> {
    let started = std::time::Instant::now();
    loop {
        let get = RequestBody::Get { key: key.clone() };
        let answer = match conn.call_with(get, None, Consistency::Stale).await {
            Err(ClientError::Server(e)) if e.code == ErrorCode::TryAgain => Err(e),
            other => Ok(other?),
        };
        match answer {
            Ok(ResponseBody::Value { value, .. }) => return Ok(value),
            other if started.elapsed() < patience => {
                eprintln!("{key:?} not there yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => anyhow::bail!("{key:?} never reached the node: {other:?}"),
        }
    }
}

fn signal(node: &Node, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &node.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {sig} failed");
    Ok(())
}

#[test]
fn a_frozen_leader_that_wakes_up_serves_no_stale_read() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    let rt = rt();
    let client = rt.block_on(client(&cluster, "n2"))?;
    let map = client.map();
    rt.block_on(wait_writable(&client, &map))?;
    let shard = map
        .shards
        .iter()
        .find(|s| s.replicas[0] == "n1")
        .expect("n1's shard");
    let range = map.ranges_of_shard(shard.id)[0];
    let key = key_in_slot_range(range.start, range.end, "frozen");
    rt.block_on(client.put(key.clone(), "before"))?;
    let leader = client.cached_leader(shard.id).expect("leader");
    // The leader freezes (SIGSTOP) with a connection open to it.
    let stuck = rt.block_on(Connection::connect(
        &cluster.client("alice", &cluster.addr(&leader)),
    ))?;
    signal(cluster.node(&leader), "-STOP")?;
    // The others elect a new leader, and a write is acknowledged there.
    rt.block_on(client.put(key.clone(), "after"))?;
    assert_ne!(
        client.cached_leader(shard.id).as_deref(),
        Some(leader.as_str())
    );
    // The old leader wakes up still believing it leads. A linearizable read through it must
    // not return the old value: it either finds it lost the lead or serves the new value.
    signal(cluster.node(&leader), "-CONT")?;
    let answer = rt.block_on(stuck.call(RequestBody::Get { key: key.clone() }));
    match answer {
        Ok(ResponseBody::Value { value, .. }) => assert_eq!(value, Bytes::from_static(b"after")),
        Err(ClientError::NotLeader { .. }) => {}
        Err(ClientError::Server(w)) if w.code == ErrorCode::Unavailable => {}
        other => panic!("the woken leader answered {other:?}"),
    }
    let got = rt.block_on(client.get(key))?.map(|(_, v)| v);
    assert_eq!(got, Some(Bytes::from_static(b"after")));
    Ok(())
}

#[test]
fn values_near_the_frame_limit_replicate_beside_small_ones() -> anyhow::Result<()> {
    let cluster = LocalCluster::start_replicated(3, 0, 3)?;
    rt().block_on(async {
        let client = client(&cluster, "n1").await?;
        wait_writable(&client, &client.map()).await?;
        // One value just under the 1 MiB frame, written while small writes share its batches.
        let big = Bytes::from(vec![7u8; 1_000_000]);
        let mut small = tokio::task::JoinSet::new();
        for i in 0..50 {
            let client = client.clone();
            small.spawn(async move { client.put(format!("small/{i}"), "x").await });
        }
        client.put("big", big.clone()).await?;
        while let Some(done) = small.join_next().await {
            done??;
        }
        // Every replica holds it: read each node's own copy.
        for id in ["n1", "n2", "n3"] {
            let conn = Connection::connect(&cluster.client("alice", &cluster.addr(id))).await?;
            let value =
                own_copy(&conn, &Bytes::from_static(b"big"), Duration::from_secs(10)).await?;
            assert_eq!(value.len(), big.len(), "{id}");
        }
        anyhow::Ok(())
    })
}

#[test]
fn an_encrypted_cluster_catches_up_by_snapshot_and_keeps_no_value_in_the_clear(
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    const CANARY: &str = "CANARY-replicated-9d41";
    let keys_dir = tempfile::tempdir()?;
    let master = keys_dir.path().join("master.key");
    std::fs::write(&master, "5a".repeat(32))?;
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o600))?;
    let master = master.display().to_string();
    let mut cluster = LocalCluster::start_with(
        3,
        0,
        3,
        &["--snapshot-every", "50", "--master-key", &master],
    )?;
    let rt = rt();
    let client = rt.block_on(client(&cluster, "n1"))?;
    let map = client.map();
    rt.block_on(wait_writable(&client, &map))?;
    let stopped = cluster.kill9("n3")?;
    let keys: Vec<Bytes> = (0..400).map(|i| Bytes::from(format!("snap/{i}"))).collect();
    let value = |key: &Bytes| Bytes::from(format!("{CANARY}/{}", String::from_utf8_lossy(key)));
    rt.block_on(async {
        for key in &keys {
            client.put(key.clone(), value(key)).await?;
        }
        anyhow::Ok(())
    })?;
    cluster.restart("n3", &stopped)?;
    // Snapshots travel over node-to-node mTLS; n3 seals what it installs with its own data
    // keys.
    let started = std::time::Instant::now();
    loop {
        let s3 = rt.block_on(status(&cluster, "n3"))?;
        let caught_up = s3
            .replicas
            .iter()
            .filter(|r| r.shard != 0)
            .all(|r| r.applied > 0 && r.snapshot > 0);
        if caught_up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "n3 did not catch up by snapshot: {:?}",
            s3.replicas
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    rt.block_on(async {
        let n3 = Connection::connect(&cluster.client("alice", &cluster.addr("n3"))).await?;
        for key in &keys {
            assert_eq!(
                own_copy(&n3, key, Duration::from_secs(20)).await?,
                value(key)
            );
        }
        anyhow::Ok(())
    })?;
    for id in ["n1", "n2", "n3"] {
        assert!(
            cluster.take(id).terminate()?.success(),
            "{id} stopped cleanly"
        );
    }
    assert!(
        !any_file_contains(&cluster.dir().join("data"), CANARY.as_bytes())?,
        "a value reached a data dir in the clear"
    );
    Ok(())
}
