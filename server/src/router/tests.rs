//! In-process tests of the router over a node that hosts two shards (1 and 2) of a three-shard
//! map, on the memory engine: dispatch to the owning shard, MOVED, the node-wide scan, role
//! policy, and the race between a view and a shard's own ownership.

use std::sync::Arc;

use bytes::Bytes;
use skv_proto::cluster::{
    hash_slot, ClusterMap, NodeEntry, ShardEntry, SlotAssignment, SlotSet, SLOT_COUNT,
};
use skv_proto::{ErrorCode, Request, RequestBody, ResponseBody};

use super::*;
use crate::cluster::Placement;
use crate::storage::MemoryStorage;

/// n1 serves shards 1 (slots 0-4999) and 2 (5000-9999); n2 serves shard 3 (the rest).
fn two_shard_map() -> ClusterMap {
    let node = |id: &str, port: u16| NodeEntry {
        id: id.into(),
        addr: format!("127.0.0.1:{port}"),
        raft_id: u64::from(port),
    };
    let shard = |id: u32, node: &str| ShardEntry {
        id,
        replicas: vec![node.into()],
    };
    let map = ClusterMap {
        cluster: "test".into(),
        epoch: 7,
        nodes: vec![node("n1", 7001), node("n2", 7002)],
        shards: vec![shard(1, "n1"), shard(2, "n1"), shard(3, "n2")],
        slots: vec![
            SlotAssignment {
                start: 0,
                end: 4999,
                shard: 1,
            },
            SlotAssignment {
                start: 5000,
                end: 9999,
                shard: 2,
            },
            SlotAssignment {
                start: 10000,
                end: SLOT_COUNT - 1,
                shard: 3,
            },
        ],
    };
    map.validate().expect("a node may hold two shards");
    map
}

struct Node {
    router: Router,
    cluster: Arc<Cluster>,
    _dir: tempfile::TempDir,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let map_file = dir.path().join("map.json");
    std::fs::write(&map_file, two_shard_map().to_json()).unwrap();
    let placement = Placement {
        storage: Arc::new(MemoryStorage::new()),
        group_commit: None,
        data_dir: None,
    };
    let cluster = Arc::new(
        Cluster::open(
            "n1",
            "test",
            "127.0.0.1:7001",
            Some(&map_file),
            placement,
            None,
        )
        .unwrap(),
    );
    Node {
        router: Router::new(
            cluster.clone(),
            None,
            crate::raft::rpc::RaftRegistry::default(),
        ),
        cluster,
        _dir: dir,
    }
}

/// A key whose slot is in `range`, made by counting.
fn key_in(range: std::ops::RangeInclusive<u16>, n: usize) -> Vec<Bytes> {
    (0..)
        .map(|i| Bytes::from(format!("key-{i}")))
        .filter(|k| range.contains(&hash_slot(k)))
        .take(n)
        .collect()
}

fn ask(node: &Node, kind: &PeerKind, body: RequestBody) -> ResponseBody {
    let mut session = Session::new(None);
    let request = Request {
        id: 1,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body,
    };
    settle(node.router.route(
        kind,
        &mut session,
        request,
        1 << 20,
        &mut crate::limits::rate::Meter::default(),
    ))
}

/// The answer, waiting for it when it comes later (a scan runs on the blocking pool; there is
/// no group commit here, so nothing else does).
fn settle(answer: Answer) -> ResponseBody {
    match answer {
        Answer::Now(body) => body,
        Answer::Later(work) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work),
    }
}

fn client(node: &Node, body: RequestBody) -> ResponseBody {
    ask(node, &PeerKind::Client, body)
}

fn put(key: &Bytes) -> RequestBody {
    RequestBody::Put {
        key: key.clone(),
        value: Bytes::from_static(b"v"),
    }
}

#[test]
fn each_local_shard_serves_its_slots_with_its_own_sequence() {
    let node = node();
    let in_one = key_in(0..=4999, 2);
    let in_two = key_in(5000..=9999, 1);
    assert_eq!(
        client(&node, put(&in_one[0])),
        ResponseBody::Written { version: 1 }
    );
    assert_eq!(
        client(&node, put(&in_one[1])),
        ResponseBody::Written { version: 2 }
    );
    // Shard 2 numbers its own writes: the keyspaces are apart.
    assert_eq!(
        client(&node, put(&in_two[0])),
        ResponseBody::Written { version: 1 }
    );
    let view = node.cluster.view();
    assert_eq!(
        view.local_shards().map(|s| s.id()).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(view.owned.len(), 10000);
}

#[test]
fn a_slot_of_another_node_is_moved_there_and_nothing_is_written() {
    let node = node();
    let theirs = key_in(10000..=SLOT_COUNT - 1, 1).remove(0);
    let slot = hash_slot(&theirs);
    let expected = ResponseBody::Moved {
        slot,
        epoch: 7,
        node: "n2".into(),
        addr: "127.0.0.1:7002".into(),
    };
    assert_eq!(client(&node, put(&theirs)), expected);
    assert_eq!(
        client(
            &node,
            RequestBody::Get {
                key: theirs.clone()
            }
        ),
        expected
    );
    let written: u64 = node
        .cluster
        .view()
        .local_shards()
        .map(|s| s.count_keys().unwrap())
        .sum();
    assert_eq!(written, 0);
}

#[test]
fn a_scan_merges_both_shards_in_key_order_and_pages_cover_every_key_once() {
    let node = node();
    let mut keys: Vec<Bytes> = key_in(0..=4999, 40);
    keys.extend(key_in(5000..=9999, 40));
    for k in &keys {
        client(&node, put(k));
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<Bytes> = None;
    for _ in 0..100 {
        let page = client(
            &node,
            RequestBody::Scan {
                prefix: Bytes::from_static(b"key-"),
                limit: 7,
                cursor: cursor.clone(),
                keys_only: false,
            },
        );
        let ResponseBody::ScanPage {
            entries,
            cursor: next,
            epoch,
        } = page
        else {
            panic!("expected a page, got {page:?}");
        };
        assert_eq!(epoch, 7);
        assert!(entries.len() <= 7);
        seen.extend(entries.into_iter().map(|e| e.key));
        cursor = next;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, keys, "every key once, in order, across both shards");
}

#[test]
fn a_scan_page_is_cut_to_fit_the_frame() {
    let node = node();
    let big = Bytes::from(vec![b'x'; 3000]);
    for k in key_in(0..=9999, 10) {
        client(
            &node,
            RequestBody::Put {
                key: k,
                value: big.clone(),
            },
        );
    }
    let mut session = Session::new(None);
    let request = Request {
        id: 1,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: RequestBody::Scan {
            prefix: Bytes::new(),
            limit: 0,
            cursor: None,
            keys_only: false,
        },
    };
    // Room for the fixed overhead and about two entries.
    let max_frame = skv_proto::SCAN_PAGE_OVERHEAD + 2 * 3100;
    let ResponseBody::ScanPage {
        entries, cursor, ..
    } = settle(node.router.route(
        &PeerKind::Client,
        &mut session,
        request,
        max_frame,
        &mut crate::limits::rate::Meter::default(),
    ))
    else {
        panic!("expected a page");
    };
    assert_eq!(entries.len(), 2);
    assert_eq!(cursor, entries.last().map(|e| e.key.clone()));
}

#[test]
fn roles_never_mix() {
    let node = node();
    let forbidden = |body: ResponseBody| match body {
        ResponseBody::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
        other => panic!("expected forbidden, got {other:?}"),
    };
    let key = key_in(0..=4999, 1).remove(0);
    // A node certificate has no client rights...
    forbidden(ask(
        &node,
        &PeerKind::Peer("n2".into()),
        RequestBody::Get { key: key.clone() },
    ));
    // ...and a client certificate no peer rights, whatever it sends.
    forbidden(client(
        &node,
        RequestBody::Import {
            entries: Vec::new(),
            deleted: vec![key.clone()],
        },
    ));
    let set_map = skv_proto::cluster::ControlRequest::SetMap {
        map: two_shard_map(),
    };
    forbidden(client(
        &node,
        RequestBody::Control {
            json: Bytes::from(set_map.to_json()),
        },
    ));
    forbidden(ask(
        &node,
        &PeerKind::ForeignNode,
        RequestBody::Get { key: key.clone() },
    ));
    // Both may ping.
    assert_eq!(
        ask(&node, &PeerKind::Peer("n2".into()), RequestBody::Ping),
        ResponseBody::Pong
    );
    assert_eq!(client(&node, RequestBody::Ping), ResponseBody::Pong);
}

#[test]
fn a_shard_that_no_longer_agrees_with_the_view_asks_for_a_retry() {
    let node = node();
    let key = key_in(0..=4999, 1).remove(0);
    // The view still routes the slot to shard 1, but the shard has given it up (the moment
    // between a map's view swap and its shards catching up).
    let view = node.cluster.view();
    let shard = view.shard_for(hash_slot(&key)).unwrap();
    shard.set_slots(SlotSet::default());
    match client(&node, put(&key)) {
        ResponseBody::Error(e) => assert_eq!(e.code, ErrorCode::TryAgain, "{e:?}"),
        other => panic!("expected TRYAGAIN, got {other:?}"),
    }
    assert_eq!(shard.count_keys().unwrap(), 0, "nothing was written");
}

#[tokio::test]
async fn raft_messages_are_for_peers_only() {
    let node = node();
    let raft = || RequestBody::Raft {
        group: 1,
        rpc: 2,
        payload: Bytes::from_static(b"\x01\x01\x00\x00"),
    };
    // A client certificate may not speak Raft, whatever it sends...
    match client(&node, raft()) {
        ResponseBody::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // ...and neither may a node of another cluster.
    match ask(&node, &PeerKind::ForeignNode, raft()) {
        ResponseBody::Error(e) => assert_eq!(e.code, ErrorCode::Forbidden, "{e:?}"),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // A node of this cluster reaches the Raft handler, which knows no group 1 here.
    let mut session = Session::new(None);
    let request = Request {
        id: 1,
        token: None,
        handle: None,
        session: None,
        consistency: skv_proto::Consistency::Linearizable,
        body: raft(),
    };
    match node.router.route(
        &PeerKind::Peer("n2".into()),
        &mut session,
        request,
        1 << 20,
        &mut crate::limits::rate::Meter::default(),
    ) {
        Answer::Later(answer) => match answer.await {
            ResponseBody::Error(e) => {
                assert_eq!(e.code, ErrorCode::ClusterState, "{e:?}");
                assert_eq!(e.message, "this node is not a member of group 1");
            }
            other => panic!("expected a cluster-state error, got {other:?}"),
        },
        Answer::Now(body) => panic!("a RAFT message is answered later, got {body:?}"),
    }
}
