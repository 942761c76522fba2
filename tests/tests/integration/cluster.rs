//! Sharding against a local cluster of real node processes: routing and MOVED, node identity
//! on the peer protocol, cross-shard scans, a node failure, and a fourth node added and
//! rebalanced under load.

use std::collections::BTreeMap;

use bytes::Bytes;
use skv_client::{ClientError, ClusterClient, Connection};
use skv_proto::cluster::{hash_slot, ClusterMap, ControlRequest, ControlResponse};
use skv_proto::ErrorCode;
use skv_tests::cluster::{LocalCluster, CLUSTER};
use skv_tests::{code, err_text, skv, strs};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// A key whose slot `node` serves under `map`.
fn key_on(map: &ClusterMap, node: &str, tag: &str) -> Bytes {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|k| {
            map.owner_of_slot(hash_slot(k.as_bytes()))
                .map(|n| n.id.as_str())
                == Some(node)
        })
        .map(Bytes::from)
        .expect("some key lands on every node")
}

#[test]
fn a_node_answers_moved_for_slots_it_does_not_serve() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, 0)?;
    rt().block_on(async {
        let n1 = Connection::connect(&cluster.client("alice", &cluster.addr("n1"))).await?;
        let map = n1.cluster_map().await?;
        assert_eq!(map.cluster, CLUSTER);
        assert_eq!(map.epoch, 1);
        assert_eq!(map.nodes.len(), 3);

        let here = key_on(&map, "n1", "here");
        n1.put(here.clone(), "v").await?;
        assert_eq!(n1.get(here).await?.map(|(_, v)| v), Some(Bytes::from("v")));

        let there = key_on(&map, "n2", "there");
        match n1.put(there.clone(), "v").await {
            Err(ClientError::Moved {
                slot,
                epoch,
                node,
                addr,
            }) => {
                assert_eq!(slot, hash_slot(&there));
                assert_eq!(epoch, 1);
                assert_eq!(node, "n2");
                assert_eq!(addr, cluster.addr("n2"));
            }
            other => panic!("expected MOVED, got {other:?}"),
        }
        // Nothing was written on n1 for that key: n2 does not have it either.
        let n2 = Connection::connect(&cluster.client("alice", &cluster.addr("n2"))).await?;
        assert_eq!(n2.get(there).await?, None);
        anyhow::Ok(())
    })
}

#[test]
fn peer_protocol_and_client_rights_never_mix() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(2, 0)?;
    rt().block_on(async {
        let addr = cluster.addr("n1");
        // A client certificate, even with an admin token, cannot speak the peer protocol.
        let admin = Connection::connect(&cluster.client("admin", &addr)).await?;
        let map = admin.cluster_map().await?;
        let mut forged = map.clone();
        forged.epoch += 10;
        match admin.control(&ControlRequest::SetMap { map: forged }).await {
            Err(ClientError::Refused(w)) => assert_eq!(w.code, ErrorCode::Forbidden),
            other => panic!("a client pushed a map: {other:?}"),
        }
        assert_eq!(admin.cluster_map().await?.epoch, map.epoch);

        // A node certificate has no client rights, whatever token it carries.
        let as_node = Connection::connect(&cluster.as_node("n2", &addr)).await?;
        as_node.ping().await?;
        match as_node.get("any").await {
            Err(ClientError::Refused(w)) => assert_eq!(w.code, ErrorCode::Forbidden),
            other => panic!("a node certificate read a key: {other:?}"),
        }
        match as_node.control(&ControlRequest::Status).await {
            Err(ClientError::Refused(w)) => assert_eq!(w.code, ErrorCode::Forbidden),
            other => panic!("a node certificate used an admin command: {other:?}"),
        }

        // Admin commands need the admin scope: a read-write token is not enough.
        let mut reader = cluster.client("alice", &addr);
        reader.token = Some(cluster.token("alice", &["read,write:"])?);
        let reader = Connection::connect(&reader).await?;
        reader.put("k", "v").await?;
        match reader.control(&ControlRequest::Status).await {
            Err(ClientError::Refused(w)) => assert_eq!(w.code, ErrorCode::Forbidden),
            other => panic!("a read-write token ran an admin command: {other:?}"),
        }
        let status = admin.control(&ControlRequest::Status).await?;
        let ControlResponse::Status(status) = status else {
            panic!("status answered {status:?}")
        };
        assert_eq!(status.node, "n1");
        assert_eq!(status.ranges, map.ranges_of_node("n1"));

        // Every refusal is an audit line: the forged map, the node certificate's read and
        // admin request, the read-write token's admin request.
        let audit = wait_for_audit(&cluster, "n1", 4)?;
        for op in ["set_map", "get", "status"] {
            assert!(
                audit
                    .iter()
                    .any(|l| l["op"] == op && l["decision"] == "deny"),
                "no denied {op} in {audit:?}"
            );
        }
        anyhow::Ok(())
    })
}

/// The audit lines of node `id` once there are at least `n` (the audit writer is a background
/// thread, so lines land a moment after the answer).
fn wait_for_audit(
    cluster: &LocalCluster,
    id: &str,
    n: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(cluster.audit_log(id)).unwrap_or_default();
        let lines = text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<Vec<serde_json::Value>, _>>()?;
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return Ok(lines);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn scan_on_one_node_returns_only_its_slots() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(2, 0)?;
    rt().block_on(async {
        let n1 = Connection::connect(&cluster.client("alice", &cluster.addr("n1"))).await?;
        let n2 = Connection::connect(&cluster.client("alice", &cluster.addr("n2"))).await?;
        let map = n1.cluster_map().await?;
        let mut expected: BTreeMap<String, &str> = BTreeMap::new();
        for i in 0..200 {
            let key = format!("s/{i:03}");
            let owner = map
                .owner_of_slot(hash_slot(key.as_bytes()))
                .unwrap()
                .id
                .clone();
            let conn = if owner == "n1" { &n1 } else { &n2 };
            conn.put(key.clone(), "x").await?;
            expected.insert(key, if owner == "n1" { "n1" } else { "n2" });
        }
        let page = n1.scan("s/", 0, None).await?;
        assert_eq!(page.epoch, 1);
        let got: Vec<String> = page
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect();
        let want: Vec<String> = expected
            .iter()
            .filter(|(_, owner)| **owner == "n1")
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(got, want);
        anyhow::Ok(())
    })
}

#[test]
fn slots_move_to_an_added_node_with_their_versions() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(2, 1)?;
    let n3_addr = format!("127.0.0.1:{}", skv_tests::cluster::free_ports(1)?[0]);
    let n3 = cluster.start_node("n3", &n3_addr)?;
    cluster.push("n3", n3);
    rt().block_on(async {
        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        // n3 is not in the map yet: it serves nothing and redirects.
        let n3 = Connection::connect(&cluster.client("alice", &n3_addr)).await?;
        let map = admin.cluster_map().await?;
        let key = key_on(&map, "n1", "moving");
        assert!(matches!(
            n3.get(key.clone()).await,
            Err(ClientError::Moved { .. })
        ));
        let v1 = admin.put(key.clone(), "before").await?;

        let added = admin
            .control(&ControlRequest::AddNode {
                id: "n3".into(),
                addr: n3_addr.clone(),
            })
            .await?;
        let ControlResponse::Map { map } = added else {
            panic!("add_node answered {added:?}")
        };
        assert_eq!(map.epoch, 2);
        // Both other nodes learn the new map from the metadata group (n3 joins it first).
        for id in ["n2", "n3"] {
            let conn = Connection::connect(&cluster.client("alice", &cluster.addr(id))).await?;
            let started = std::time::Instant::now();
            while conn.cluster_map().await?.epoch < 2 {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "{id} never learned the map of epoch 2"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }

        let slot = hash_slot(&key);
        let moved = admin
            .control(&ControlRequest::MoveSlots {
                ranges: vec![skv_proto::SlotRange::new(slot, slot)],
                to: "n3".into(),
                expect_epoch: None,
            })
            .await?;
        let ControlResponse::Moved { keys, epoch } = moved else {
            panic!("move_slots answered {moved:?}")
        };
        assert_eq!((keys, epoch), (1, 3));
        // n1 now redirects to n3, which has the key with its version.
        match admin.get(key.clone()).await {
            Err(ClientError::Moved { node, epoch, .. }) => {
                assert_eq!((node.as_str(), epoch), ("n3", 3))
            }
            other => panic!("expected MOVED to n3, got {other:?}"),
        }
        assert_eq!(
            n3.get(key.clone()).await?,
            Some((v1, Bytes::from("before")))
        );
        // A CAS against the version read on n1 succeeds on n3, and versions keep growing.
        match n3.cas(key.clone(), v1, "after").await? {
            skv_client::CasResult::Written(v2) => assert!(v2 > v1),
            other => panic!("CAS across the move conflicted: {other:?}"),
        }
        anyhow::Ok(())
    })
}

/// `count` keys `k/00000..`, written through the cluster client with 32 writers; returns the
/// keys in order.
async fn fill(client: &ClusterClient, count: usize) -> anyhow::Result<Vec<Bytes>> {
    let keys: Vec<Bytes> = (0..count)
        .map(|i| Bytes::from(format!("k/{i:05}")))
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in keys.chunks(count.div_ceil(32)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for key in chunk {
                let value = key.clone();
                client.put(key, value).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(keys)
}

/// Read every key through `client` (64 at a time) and check each value is the key itself.
async fn check_all(client: &ClusterClient, keys: &[Bytes]) -> anyhow::Result<()> {
    for chunk in keys.chunks(64) {
        let reads = chunk.iter().map(|k| client.get(k.clone()));
        for (key, got) in chunk
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            let got = got?.map(|(_, v)| v);
            anyhow::ensure!(got.as_ref() == Some(key), "{key:?} read back as {got:?}");
        }
    }
    Ok(())
}

async fn status(
    cluster: &LocalCluster,
    id: &str,
) -> anyhow::Result<skv_proto::cluster::NodeStatus> {
    let conn = Connection::connect(&cluster.client("admin", &cluster.addr(id))).await?;
    match conn.control(&ControlRequest::Status).await? {
        ControlResponse::Status(s) => Ok(s),
        other => anyhow::bail!("status answered {other:?}"),
    }
}

#[test]
fn ten_thousand_keys_spread_over_three_nodes_are_readable_through_any_and_scan_in_order(
) -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, 0)?;
    rt().block_on(async {
        let client =
            ClusterClient::connect(cluster.client("alice", &cluster.addr("n1")), vec![]).await?;
        let keys = fill(&client, 10_000).await?;

        // Every shard holds its share.
        let mut total = 0;
        for id in ["n1", "n2", "n3"] {
            let s = status(&cluster, id).await?;
            let share = s.keys as f64 / keys.len() as f64;
            assert!((0.20..=0.45).contains(&share), "{id} holds {} keys", s.keys);
            total += s.keys;
        }
        assert_eq!(total, keys.len() as u64);

        // Any node is a good entry point.
        for id in ["n1", "n2", "n3"] {
            let entry =
                ClusterClient::connect(cluster.client("alice", &cluster.addr(id)), vec![]).await?;
            check_all(&entry, &keys).await?;
        }

        // A cross-shard scan returns every key once, in order, across pages of any size.
        let mut scanned = Vec::new();
        let mut cursor = None;
        loop {
            let page = client.scan("k/", 997, cursor.take()).await?;
            scanned.extend(page.entries.into_iter().map(|e| e.key));
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(scanned.len(), keys.len());
        assert!(
            scanned == keys,
            "the merged scan is not every key once, in order"
        );

        // The CLI routes the same way, given one node and nothing else.
        let profile = cluster.write_profile()?;
        let out = skv(
            &strs(&[
                "--profile",
                &profile.display().to_string(),
                "--addr",
                &cluster.addr("n3"),
                "scan",
                "k/",
            ]),
            None,
        )?;
        assert_eq!(code(&out), 0, "{}", err_text(&out));
        let lines: Vec<&str> = std::str::from_utf8(&out.stdout)?.lines().collect();
        assert_eq!(lines.len(), keys.len());
        assert!(lines.windows(2).all(|w| w[0] < w[1]));
        anyhow::Ok(())
    })
}

#[test]
fn a_stale_map_is_corrected_by_moved_without_the_caller_noticing() -> anyhow::Result<()> {
    let cluster = LocalCluster::start(3, 0)?;
    rt().block_on(async {
        let stale =
            ClusterClient::connect(cluster.client("alice", &cluster.addr("n1")), vec![]).await?;
        let map = stale.map();
        let key = key_on(&map, "n1", "stale");
        stale.put(key.clone(), "v1").await?;

        // n1 hands the key's slot to n3; `stale` still routes it to n1.
        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        let slot = hash_slot(&key);
        admin
            .control(&ControlRequest::MoveSlots {
                ranges: vec![skv_proto::SlotRange::new(slot, slot)],
                to: "n3".into(),
                expect_epoch: None,
            })
            .await?;
        assert_eq!(stale.epoch(), 1);
        assert_eq!(
            stale.get(key.clone()).await?.map(|(_, v)| v),
            Some(Bytes::from("v1"))
        );
        stale.put(key.clone(), "v2").await?;
        assert_eq!(
            stale.epoch(),
            2,
            "the MOVED answer made the client refresh its map"
        );
        let n3 = Connection::connect(&cluster.client("alice", &cluster.addr("n3"))).await?;
        assert_eq!(n3.get(key).await?.map(|(_, v)| v), Some(Bytes::from("v2")));
        anyhow::Ok(())
    })
}

#[test]
fn a_dead_node_fails_only_its_slots_with_a_clear_error() -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(3, 0)?;
    let profile = cluster.write_profile()?;
    let n2_addr = cluster.addr("n2");
    rt().block_on(async {
        let client =
            ClusterClient::connect(cluster.client("alice", &cluster.addr("n1")), vec![]).await?;
        let map = client.map();
        let keys = fill(&client, 300).await?;
        cluster.take("n2").kill9()?;
        let n2_ranges = skv_proto::cluster::format_ranges(&map.ranges_of_node("n2"));
        let started = std::time::Instant::now();
        let (mut ok, mut down) = (0, 0);
        for key in &keys {
            let owner = map.owner_of_slot(hash_slot(key)).unwrap().id.clone();
            match client.get(key.clone()).await {
                Ok(Some((_, v))) if owner != "n2" => {
                    assert_eq!(&v, key);
                    ok += 1;
                }
                Err(err @ ClientError::NodeDown { .. }) if owner == "n2" => {
                    let msg = err.to_string();
                    assert!(msg.contains("node n2") && msg.contains(&n2_addr), "{msg}");
                    assert!(msg.contains(&n2_ranges), "{msg} does not name {n2_ranges}");
                    down += 1;
                }
                other => panic!("{key:?} (on {owner}) answered {other:?}"),
            }
        }
        assert!(ok > 100 && down > 50, "ok {ok}, down {down}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "failing took {:?}",
            started.elapsed()
        );

        // The CLI says the same and exits 4 (connection), naming the node and its slots.
        let dead_key = keys
            .iter()
            .find(|k| map.owner_of_slot(hash_slot(k)).unwrap().id == "n2")
            .unwrap();
        let out = skv(
            &strs(&[
                "--profile",
                &profile.display().to_string(),
                "get",
                std::str::from_utf8(dead_key)?,
            ]),
            None,
        )?;
        assert_eq!(code(&out), 4, "{}", err_text(&out));
        assert!(
            err_text(&out).contains("n2") && err_text(&out).contains(&n2_ranges),
            "{}",
            err_text(&out)
        );
        anyhow::Ok(())
    })
}

#[test]
fn a_fourth_node_added_and_rebalanced_under_load_loses_nothing() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut cluster = LocalCluster::start(3, 1)?;
    let n4_addr = format!("127.0.0.1:{}", skv_tests::cluster::free_ports(1)?[0]);
    rt().block_on(async {
        let client =
            ClusterClient::connect(cluster.client("alice", &cluster.addr("n1")), vec![]).await?;
        let keys = fill(&client, 10_000).await?;
        let n4 = cluster.start_node("n4", &n4_addr)?;
        cluster.push("n4", n4);

        // Load while the cluster changes: writers own disjoint keys and remember the last
        // acknowledged value; a CAS loop checks versions survive the move; readers check the
        // preloaded keys. Every error is a failure.
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = tokio::task::JoinSet::new();
        for w in 0..6 {
            let (client, stop) = (client.clone(), stop.clone());
            load.spawn(async move {
                let mut acked = BTreeMap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = Bytes::from(format!("w{w}/{:03}", n % 200));
                    let value = Bytes::from(n.to_string());
                    client.put(key.clone(), value.clone()).await?;
                    acked.insert(key, value);
                    n += 1;
                }
                anyhow::Ok((acked, n))
            });
        }
        {
            let (client, stop) = (client.clone(), stop.clone());
            load.spawn(async move {
                let mut acked = BTreeMap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = Bytes::from(format!("cas/{:02}", n % 50));
                    let current = client.get(key.clone()).await?.map_or(0, |(v, _)| v);
                    let value = Bytes::from(n.to_string());
                    match client.cas(key.clone(), current, value.clone()).await? {
                        skv_client::CasResult::Written(_) => {}
                        conflict => anyhow::bail!("CAS on {key:?} at {current}: {conflict:?}"),
                    }
                    acked.insert(key, value);
                    n += 1;
                }
                anyhow::Ok((acked, n))
            });
        }
        for r in 0..4 {
            let (client, stop, keys) = (client.clone(), stop.clone(), keys.clone());
            load.spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[(n as usize * 7919 + r * 31) % keys.len()];
                    let got = client.get(key.clone()).await?.map(|(_, v)| v);
                    anyhow::ensure!(got.as_ref() == Some(key), "{key:?} read as {got:?}");
                    n += 1;
                }
                anyhow::Ok((BTreeMap::new(), n))
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        admin
            .control(&ControlRequest::AddNode {
                id: "n4".into(),
                addr: n4_addr.clone(),
            })
            .await?;
        let plan = admin.cluster_map().await?.rebalance_plan();
        assert!(
            !plan.is_empty() && plan.iter().all(|m| m.to == "n4"),
            "{plan:?}"
        );
        for step in &plan {
            let from =
                Connection::connect(&cluster.client("admin", &cluster.addr(&step.from))).await?;
            match from
                .control(&ControlRequest::MoveSlots {
                    ranges: step.ranges.clone(),
                    to: step.to.clone(),
                    expect_epoch: None,
                })
                .await?
            {
                ControlResponse::Moved { keys, .. } => assert!(keys > 0, "{step:?} moved no keys"),
                other => panic!("move answered {other:?}"),
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);

        let mut acked = BTreeMap::new();
        let mut requests = 0;
        while let Some(done) = load.join_next().await {
            let (a, n) = done??;
            acked.extend(a);
            requests += n;
        }
        assert!(requests > 1000, "the load made only {requests} requests");

        // Nothing lost, checked key by key, through a client that never saw the old maps.
        let fresh = ClusterClient::connect(cluster.client("alice", &n4_addr), vec![]).await?;
        assert!(fresh.epoch() >= 2 + plan.len() as u64);
        check_all(&fresh, &keys).await?;
        for (key, value) in &acked {
            let got = fresh.get(key.clone()).await?.map(|(_, v)| v);
            assert_eq!(got.as_ref(), Some(value), "{key:?}");
        }
        let s4 = status(&cluster, "n4").await?;
        let slots: u32 = s4.ranges.iter().map(|r| r.len()).sum();
        assert!((4090..=4100).contains(&slots), "n4 serves {slots} slots");
        let mut total = 0;
        for id in ["n1", "n2", "n3", "n4"] {
            total += status(&cluster, id).await?.keys;
        }
        assert_eq!(total, (keys.len() + acked.len()) as u64);
        anyhow::Ok(())
    })
}
