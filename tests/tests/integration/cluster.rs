//! Sharding against a local cluster of real node processes: routing and MOVED, node identity
//! on the peer protocol, cross-shard scans, a node failure, and a fourth node added and
//! rebalanced under load.

use std::collections::BTreeMap;

use bytes::Bytes;
use skv_client::{ClientError, Connection};
use skv_proto::cluster::{hash_slot, ClusterMap, ControlRequest, ControlResponse};
use skv_proto::ErrorCode;
use skv_tests::cluster::{LocalCluster, CLUSTER};

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
        anyhow::Ok(())
    })
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
        // The push reached both other nodes.
        for id in ["n2", "n3"] {
            let conn = Connection::connect(&cluster.client("alice", &cluster.addr(id))).await?;
            assert_eq!(conn.cluster_map().await?.epoch, 2, "{id}");
        }

        let slot = hash_slot(&key);
        let moved = admin
            .control(&ControlRequest::MoveSlots {
                ranges: vec![skv_proto::SlotRange::new(slot, slot)],
                to: "n3".into(),
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
