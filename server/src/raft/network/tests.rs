//! Tests of the Raft transport: the wire encoding of every RPC and reply, the failures the
//! sender reports without sending, the typed refusals of the receiving side, and real
//! three-member openraft groups talking over mutual TLS through the node's own listener,
//! connection and router code.

mod mem;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{Fatal, SnapshotMismatch};
use openraft::{
    CommittedLeaderId, Config, Entry, EntryPayload, LogId, Membership, Raft, ServerState,
    SnapshotMeta, SnapshotPolicy, SnapshotSegmentId, StoredMembership,
};
use skv_certs::{InitOptions, KeyType, Layout};
use skv_proto::{ErrorCode, ResponseBody, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::mem::{MemLog, MemState};
use super::*;
use crate::cluster::{Cluster, Placement};
use crate::config::{Durability, Engine, NodeConfig, TransportConfig};
use crate::node::Shared;
use crate::raft::rpc::{AppendReply, RaftRegistry, SnapshotReply, VoteReply};
use crate::raft::{Outcome, Proposal, RaftGroup, Write, WriteOp, WriteOutcome};
use crate::router::Router;
use crate::storage::MemoryStorage;

/// The group the tests run (any id: the transport does not care which).
const GROUP: u32 = 7;

/// Bound of every wait for the cluster to get somewhere; never a timing assertion.
const PATIENCE: Duration = Duration::from_secs(60);

// ---- fixtures -----------------------------------------------------------------------------

/// A dev PKI of cluster `test`: nodes n1 to n4 and client alice.
struct Pki {
    _dir: tempfile::TempDir,
    layout: Layout,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    skv_certs::init(&InitOptions {
        dir: dir.path().to_owned(),
        cluster: "test".into(),
        nodes: (1..=4).map(|i| format!("n{i}")).collect(),
        clients: vec!["alice".into()],
        key_type: KeyType::P256,
        force: false,
    })
    .unwrap();
    let layout = Layout::new(dir.path());
    Pki { _dir: dir, layout }
}

fn dialer(pki: &Pki, node: &str) -> Dialer {
    let l = &pki.layout;
    Dialer::new(&l.ca_cert(), &l.node_cert(node), &l.node_key(node), "test").unwrap()
}

fn member(node: &str, addr: impl ToString) -> Member {
    Member {
        node: node.into(),
        addr: addr.to_string(),
    }
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "test".into(),
        // Generous against a loaded test machine: spurious elections only slow the test.
        heartbeat_interval: 100,
        election_timeout_min: 800,
        election_timeout_max: 1600,
        install_snapshot_timeout: 2000,
        // Snapshots only when a test asks, cut into several chunks so the chunked transfer
        // is exercised.
        snapshot_policy: SnapshotPolicy::Never,
        snapshot_max_chunk_size: 4096,
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

/// The node's real listener (TLS, connection task, router) in front of `registry`, without
/// shards of its own that matter here.
struct Listener {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Listener {
    async fn start(pki: &Pki, node: &str, registry: RaftRegistry, addr: SocketAddr) -> Listener {
        let l = &pki.layout;
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (l.ca_cert(), l.node_cert(node), l.node_key(node));
        let credentials = Arc::new(
            crate::net::credentials::Credentials::load(crate::net::credentials::CredentialFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
                crl: None,
                client_auth: true,
            })
            .unwrap(),
        );
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = NodeConfig {
            name: node.into(),
            listen: addr,
            data_dir: dir.path().to_owned(),
            engine: Engine::Memory,
            durability: Durability::Async,
            flush_every: Duration::from_millis(100),
            transport: TransportConfig::Tls {
                ca,
                cert,
                key,
                crl: None,
                client_auth: true,
            },
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 64,
            max_connections_per_source: 64,
            max_connections_per_identity: 64,
            idle_timeout: None,
            handshake_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(2),
            auth: None,
            cluster: Some("test".into()),
            cluster_map: None,
            advertise: None,
            election_timeout: Duration::from_millis(500),
            snapshot_every: 20_000,
            master_key: None,
            read_cache_bytes: 0,
            rate_limit_rps: None,
            rate_limit_bytes_per_sec: None,
            overload_inflight: None,
            max_pending_bytes: 16 << 20,
            metrics_listen: None,
        };
        let storage = Arc::new(MemoryStorage::new());
        let placement = Placement {
            storage: storage.clone(),
            group_commit: None,
            data_dir: None,
        };
        let cluster = Arc::new(
            Cluster::open(node, "test", &addr.to_string(), None, placement, None).unwrap(),
        );
        let shared = Arc::new(Shared {
            config,
            storage,
            group_commit: None,
            checkpoint: None,
            router: Router::new(cluster.clone(), None, registry),
            cluster,
            load: crate::limits::load::Load::new(None),
            credentials: Some(credentials),
        });
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(crate::net::listener::accept_loop(
            listener,
            shared,
            shutdown.clone(),
        ));
        Listener {
            addr,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

/// One member: its listener, registry, Raft and (shared, reopenable) storage.
struct TestNode {
    id: u64,
    name: String,
    listener: Listener,
    registry: RaftRegistry,
    raft: RaftGroup,
    log: MemLog,
    state: MemState,
}

impl TestNode {
    /// Start member `id` (node `n<id>`) on `addr` (port 0: any) over `log` and `state`.
    async fn start(pki: &Pki, id: u64, addr: SocketAddr, log: MemLog, state: MemState) -> Self {
        let name = format!("n{id}");
        let registry = RaftRegistry::default();
        let listener = Listener::start(pki, &name, registry.clone(), addr).await;
        let network = Network::new(GROUP, Peers::new(Some(dialer(pki, &name))));
        let raft = Raft::new(id, raft_config(), network, log.clone(), state.clone())
            .await
            .unwrap();
        registry.register(GROUP, raft.clone());
        TestNode {
            id,
            name,
            listener,
            registry,
            raft,
            log,
            state,
        }
    }

    fn member(&self) -> Member {
        member(&self.name, self.listener.addr)
    }

    /// Stop it the way a crash looks from outside: its Raft stops, its listener closes every
    /// connection. Returns what a restart needs.
    async fn kill(self) -> (SocketAddr, MemLog, MemState) {
        self.registry.unregister(GROUP);
        self.raft.shutdown().await.unwrap();
        let addr = self.listener.addr;
        self.listener.stop().await;
        (addr, self.log, self.state)
    }

    async fn applied_at_least(&self, index: u64) {
        self.raft
            .wait(Some(PATIENCE))
            .applied_index_at_least(Some(index), "catch up")
            .await
            .unwrap();
    }
}

fn writes(key: &str, value: &[u8]) -> Proposal {
    Proposal::Writes {
        at_ms: 0,
        writes: vec![Write::new(
            None,
            WriteOp::Put {
                key: Bytes::from(key.to_owned()),
                value: Bytes::copy_from_slice(value),
            },
        )],
    }
}

/// Commit one put through whichever of `nodes` leads, retrying while leadership settles.
/// Returns the leader's id, the write's outcome and its log index.
async fn put(nodes: &[&TestNode], key: &str, value: &[u8]) -> (u64, WriteOutcome, u64) {
    let give_up = tokio::time::Instant::now() + PATIENCE;
    loop {
        for node in nodes {
            if node.raft.metrics().borrow().state != ServerState::Leader {
                continue;
            }
            if let Ok(done) = node.raft.client_write(writes(key, value)).await {
                match done.data {
                    Outcome::Writes(mut outcomes) if outcomes.len() == 1 => {
                        return (node.id, outcomes.remove(0), done.log_id.index)
                    }
                    other => panic!("a put answered {other:?}"),
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "no leader committed a write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn node<'a>(nodes: &[&'a TestNode], id: u64) -> &'a TestNode {
    nodes.iter().find(|n| n.id == id).unwrap()
}

// ---- the wire encoding ----------------------------------------------------------------------

fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn three_members() -> Membership<u64, Member> {
    let nodes: BTreeMap<u64, Member> = (1..=3)
        .map(|i| {
            (
                i,
                member(&format!("n{i}"), format!("127.0.0.1:{}", 7000 + i)),
            )
        })
        .collect();
    Membership::new(vec![nodes.keys().copied().collect::<BTreeSet<_>>()], nodes)
}

fn append_with(entries: Vec<Entry<TypeConfig>>) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(2, 2, 4)),
        leader_commit: Some(log_id(2, 2, 3)),
        entries,
    }
}

fn entry(index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(3, 1, index),
        payload,
    }
}

fn round_trip<T: serde::Serialize + DeserializeOwned>(value: &T) -> T {
    rpc::decode(&rpc::encode(value).unwrap()).unwrap()
}

#[test]
fn every_request_kind_round_trips() {
    // AppendEntriesRequest has no PartialEq: compare what matters, and the re-encoding.
    let append = append_with(vec![
        entry(5, EntryPayload::Blank),
        entry(6, EntryPayload::Normal(writes("k", b"v"))),
        entry(
            7,
            EntryPayload::Normal(Proposal::Meta {
                json: b"{}".to_vec(),
            }),
        ),
        entry(8, EntryPayload::Membership(three_members())),
    ]);
    let back = round_trip(&append);
    assert_eq!(back.vote, append.vote);
    assert_eq!(back.prev_log_id, append.prev_log_id);
    assert_eq!(back.leader_commit, append.leader_commit);
    assert_eq!(back.entries.len(), 4);
    assert_eq!(
        back.entries[1].payload,
        EntryPayload::Normal(writes("k", b"v"))
    );
    assert_eq!(
        back.entries[3].payload,
        EntryPayload::Membership(three_members())
    );
    assert_eq!(rpc::encode(&back).unwrap(), rpc::encode(&append).unwrap());

    let vote = VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 1, 8)));
    assert_eq!(round_trip(&vote), vote);

    let chunk = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(3, 1, 8)),
            last_membership: StoredMembership::new(Some(log_id(3, 1, 8)), three_members()),
            snapshot_id: "s-1".into(),
        },
        offset: 4096,
        data: vec![7; 300],
        done: false,
    };
    assert_eq!(round_trip(&chunk), chunk);
}

#[test]
fn every_reply_kind_round_trips() {
    let appends: Vec<AppendReply> = vec![
        Ok(AppendEntriesResponse::Success),
        Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 1, 6)))),
        Ok(AppendEntriesResponse::Conflict),
        Ok(AppendEntriesResponse::HigherVote(Vote::new(5, 3))),
        Err(RaftError::Fatal(Fatal::Stopped)),
    ];
    for reply in &appends {
        assert_eq!(&round_trip(reply), reply);
    }
    let votes: Vec<VoteReply> = vec![
        Ok(VoteResponse {
            vote: Vote::new(4, 2),
            vote_granted: true,
            last_log_id: Some(log_id(3, 1, 8)),
        }),
        Err(RaftError::Fatal(Fatal::Panicked)),
    ];
    for reply in &votes {
        assert_eq!(&round_trip(reply), reply);
    }
    let segment = |offset| SnapshotSegmentId {
        id: "s-1".into(),
        offset,
    };
    let snapshots: Vec<SnapshotReply> = vec![
        Ok(InstallSnapshotResponse {
            vote: Vote::new_committed(3, 1),
        }),
        Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
            SnapshotMismatch {
                expect: segment(0),
                got: segment(4096),
            },
        ))),
    ];
    for reply in &snapshots {
        assert_eq!(&round_trip(reply), reply);
    }
}

#[test]
fn the_dial_backoff_doubles_up_to_its_cap() {
    let bounds = (Duration::from_millis(50), Duration::from_secs(1));
    let waits: Vec<u64> = (1..=7)
        .map(|n| dial_backoff(n, bounds).as_millis() as u64)
        .collect();
    assert_eq!(waits, [50, 100, 200, 400, 800, 1000, 1000]);
    assert_eq!(dial_backoff(u32::MAX, bounds), bounds.1);
}

#[test]
fn rpc_kinds_are_stable_wire_numbers() {
    for (kind, wire) in [
        (RpcKind::Append, 1),
        (RpcKind::Vote, 2),
        (RpcKind::InstallSnapshot, 3),
    ] {
        assert_eq!(kind.wire(), wire);
        assert_eq!(RpcKind::from_wire(wire), Some(kind));
    }
    assert_eq!(RpcKind::from_wire(0), None);
    assert_eq!(RpcKind::from_wire(4), None);
}

// ---- what the sender refuses to send --------------------------------------------------------

#[test]
fn an_oversized_batch_gets_a_hint_that_fits() {
    let limit = payload_limit(DEFAULT_MAX_FRAME + crate::net::peer::PEER_FRAME_SLACK);
    assert!(
        limit < MAX_RAFT_PAYLOAD,
        "the frame, not the proto cap, binds"
    );
    // 300 entries in twice the limit: about 150 fit; the hint leaves margin below that.
    match too_large::<openraft::error::Infallible>(RpcKind::Append, 300, 2 * limit, limit) {
        Some(RPCError::PayloadTooLarge(too_large)) => {
            assert_eq!(too_large.action(), RPCTypes::AppendEntries);
            let hint = too_large.entries_hint();
            assert!((1..150).contains(&hint), "hint {hint}");
            assert!(hint >= 100, "hint {hint} wastes round trips");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    // What fits is sent.
    assert!(too_large::<InstallSnapshotError>(RpcKind::Append, 300, limit, limit).is_none());
    // A single entry cannot be split: openraft must back off, not retry at once forever.
    assert!(matches!(
        too_large::<openraft::error::Infallible>(RpcKind::Append, 1, limit + 1, limit),
        Some(RPCError::Unreachable(_))
    ));
    // A snapshot chunk cannot be re-cut: openraft abandons the attempt on PayloadTooLarge.
    assert!(matches!(
        too_large::<InstallSnapshotError>(RpcKind::InstallSnapshot, 0, limit + 1, limit),
        Some(RPCError::PayloadTooLarge(_))
    ));
}

#[tokio::test]
async fn an_oversized_append_is_refused_before_anything_is_sent() {
    let pki = pki();
    let peers = Peers::new(Some(dialer(&pki, "n1")));
    // Nothing listens there: a dial would end in Unreachable, so PayloadTooLarge proves that
    // the request was refused before the transport tried to send it.
    let mut client = Network::new(GROUP, peers.clone())
        .new_client(2, &member("n2", "127.0.0.1:1"))
        .await;
    let big = vec![0u8; MAX_RAFT_PAYLOAD / 2];
    let entries = (5..8)
        .map(|i| entry(i, EntryPayload::Normal(writes("k", &big))))
        .collect();
    let err = client
        .append_entries(append_with(entries), RPCOption::new(Duration::from_secs(5)))
        .await
        .unwrap_err();
    match err {
        RPCError::PayloadTooLarge(too_large) => {
            let hint = too_large.entries_hint();
            assert!((1..3).contains(&hint), "hint {hint}");
        }
        other => panic!("expected PayloadTooLarge, got {other}"),
    }
    assert!(peers.links().is_empty(), "nothing was dialled: {peers:?}");
}

#[tokio::test]
async fn a_node_that_is_down_is_unreachable_and_not_dialled_on_every_rpc() {
    let pki = pki();
    // A port that was just free: connection refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    // A backoff far longer than the test, so "not dialled again" does not depend on speed.
    let hour = Duration::from_secs(3600);
    let peers = Peers::with_backoff(Some(dialer(&pki, "n1")), hour, hour);
    let mut client = Network::new(GROUP, peers.clone())
        .new_client(2, &member("n2", addr))
        .await;
    let vote = || VoteRequest::new(Vote::new(1, 1), None);
    let option = RPCOption::new(Duration::from_secs(5));
    let first = client.vote(vote(), option.clone()).await.unwrap_err();
    assert!(matches!(first, RPCError::Unreachable(_)), "{first}");
    let generation = peers.links()["n2"].generation;
    // Within the backoff the node is not dialled again: the same failure, at once.
    let again = client.vote(vote(), option).await.unwrap_err();
    assert!(matches!(again, RPCError::Unreachable(_)), "{again}");
    assert_eq!(peers.links()["n2"].generation, generation, "dialled again");
    assert!(matches!(peers.links()["n2"].state, LinkState::Down { .. }));
}

#[tokio::test]
async fn one_connection_per_node_until_it_stops_answering() {
    let pki = pki();
    let (registry, raft) = lone_group().await;
    let listener = Listener::start(&pki, "n1", registry, any_port()).await;
    let peers = Peers::new(Some(dialer(&pki, "n2")));
    let n1 = member("n1", listener.addr);
    let first = peers.connection(&n1).await.unwrap();
    assert!(
        Arc::ptr_eq(&first, &peers.connection(&n1).await.unwrap()),
        "pooled"
    );

    // Timeouts with an answer in between are a slow peer, not a dead link.
    for _ in 1..SILENT_LIMIT {
        peers.timed_out("n1", &first);
    }
    peers.answered("n1", &first);
    for _ in 1..SILENT_LIMIT {
        peers.timed_out("n1", &first);
    }
    assert!(Arc::ptr_eq(&first, &peers.connection(&n1).await.unwrap()));

    // One more in a row: the link is dropped and the next RPC dials afresh, while calls
    // still waiting on the old connection keep it.
    peers.timed_out("n1", &first);
    let fresh = peers.connection(&n1).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &fresh));
    assert!(!first.is_closed());

    raft.shutdown().await.unwrap();
    listener.stop().await;
}

#[tokio::test]
async fn without_a_dialer_every_remote_member_is_unreachable() {
    let peers = Peers::new(None);
    let mut client = Network::new(GROUP, peers)
        .new_client(2, &member("n2", "127.0.0.1:1"))
        .await;
    let err = client
        .vote(
            VoteRequest::new(Vote::new(1, 1), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    match err {
        RPCError::Unreachable(err) => assert!(err.to_string().contains("without TLS"), "{err}"),
        other => panic!("expected Unreachable, got {other}"),
    }
}

// ---- what the receiver answers --------------------------------------------------------------

/// A one-member group of node n1, initialised, with a registry serving it. It has no other
/// member to reach, so it runs without a dialer, as on a node without TLS.
async fn lone_group() -> (RaftRegistry, RaftGroup) {
    let network = Network::new(GROUP, Peers::new(None));
    let raft = Raft::new(
        1,
        raft_config(),
        network,
        MemLog::default(),
        MemState::default(),
    )
    .await
    .unwrap();
    let mut members = BTreeMap::new();
    members.insert(1u64, member("n1", "127.0.0.1:1"));
    raft.initialize(members).await.unwrap();
    // Metrics trail the core: wait until they show the membership the sender check reads.
    raft.wait(Some(PATIENCE))
        .metrics(|m| m.current_leader == Some(1), "lead itself")
        .await
        .unwrap();
    let registry = RaftRegistry::default();
    registry.register(GROUP, raft.clone());
    (registry, raft)
}

#[track_caller]
fn error_code(body: &ResponseBody) -> ErrorCode {
    match body {
        ResponseBody::Error(err) => err.code,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[tokio::test]
async fn the_receiver_answers_typed_errors_for_what_it_cannot_serve() {
    let (registry, raft) = lone_group().await;
    // Typed: an untyped literal would make the ids i32, which postcard encodes otherwise.
    let vote = rpc::encode(&VoteRequest::<u64>::new(Vote::new(1, 1), None)).unwrap();

    let unknown_group = rpc::serve(&registry, "n1", 99, 2, Bytes::from(vote.clone())).await;
    assert_eq!(error_code(&unknown_group), ErrorCode::ClusterState);
    match &unknown_group {
        ResponseBody::Error(err) => {
            assert_eq!(err.message, "this node is not a member of group 99")
        }
        _ => unreachable!(),
    }

    let unknown_kind = rpc::serve(&registry, "n1", GROUP, 9, Bytes::from(vote.clone())).await;
    assert_eq!(error_code(&unknown_kind), ErrorCode::Malformed);

    for kind in [RpcKind::Append, RpcKind::Vote, RpcKind::InstallSnapshot] {
        let garbage = Bytes::from_static(&[0xff; 7]);
        let answer = rpc::serve(&registry, "n1", GROUP, kind.wire(), garbage).await;
        assert_eq!(error_code(&answer), ErrorCode::Malformed, "{kind:?}");
    }
    // A vote decoded as an append is not an append.
    let confused = rpc::serve(&registry, "n1", GROUP, 1, Bytes::from(vote.clone())).await;
    assert_eq!(error_code(&confused), ErrorCode::Malformed);

    // Member 1 is node n1: n2 may not speak for it.
    let forged = rpc::serve(&registry, "n2", GROUP, 2, Bytes::from(vote.clone())).await;
    assert_eq!(error_code(&forged), ErrorCode::Forbidden);

    // The group itself answers what it can decode, errors included, as a RAFT reply.
    let answered = rpc::serve(&registry, "n1", GROUP, 2, Bytes::from(vote)).await;
    match answered {
        ResponseBody::Raft { payload } => {
            let reply: VoteReply = rpc::decode(&payload).unwrap();
            assert!(!reply.unwrap().vote_granted, "a stale vote is not granted");
        }
        other => panic!("expected a RAFT answer, got {other:?}"),
    }

    raft.shutdown().await.unwrap();
    assert_eq!(registry.groups(), vec![GROUP]);
    assert!(registry.unregister(GROUP).is_some());
    assert!(registry.groups().is_empty());
}

#[tokio::test]
async fn a_client_certificate_cannot_speak_raft_over_mutual_tls() {
    let pki = pki();
    let (registry, raft) = lone_group().await;
    let listener = Listener::start(&pki, "n1", registry, any_port()).await;
    let l = &pki.layout;
    let opts = skv_client::ConnectOptions::new(
        listener.addr.to_string(),
        skv_client::Security::Tls {
            ca: l.ca_cert(),
            identity: Some((l.client_cert("alice"), l.client_key("alice"))),
        },
    );
    let conn = skv_client::Connection::connect(&opts).await.unwrap();
    let vote = rpc::encode(&VoteRequest::<u64>::new(Vote::new(9, 1), None)).unwrap();
    let answer = conn
        .call(skv_proto::RequestBody::Raft {
            group: GROUP,
            rpc: RpcKind::Vote.wire(),
            payload: Bytes::from(vote.clone()),
        })
        .await;
    match answer {
        Err(ClientError::Refused(err)) => assert_eq!(err.code, ErrorCode::Forbidden),
        other => panic!("expected forbidden, got {other:?}"),
    }
    // The same message from node n1's certificate reaches the group (which answers it).
    let peer = dialer(&pki, "n1")
        .connect(&NodeEntry {
            id: "n1".into(),
            addr: listener.addr.to_string(),
            raft_id: 0,
        })
        .await
        .unwrap();
    let reply: VoteReply = rpc::decode(
        &peer
            .raft(GROUP, RpcKind::Vote.wire(), Bytes::from(vote))
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(reply.is_ok());
    raft.shutdown().await.unwrap();
    listener.stop().await;
}

// ---- a real group over the real transport ---------------------------------------------------

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_member_group_elects_commits_and_survives_its_leader() {
    let pki = pki();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(
            TestNode::start(&pki, id, any_port(), MemLog::default(), MemState::default()).await,
        );
    }
    let members: BTreeMap<u64, Member> = nodes.iter().map(|n| (n.id, n.member())).collect();
    nodes[0].raft.initialize(members).await.unwrap();

    // Writes commit through the elected leader, numbered by the state machine in log order.
    let all: Vec<&TestNode> = nodes.iter().collect();
    let value = vec![b'x'; 1024];
    let (mut leader, mut applied) = (0, 0);
    for i in 1..=20u64 {
        let (by, outcome, index) = put(&all, &format!("key-{i}"), &value).await;
        assert_eq!(outcome, WriteOutcome::Written { version: i });
        (leader, applied) = (by, index);
    }
    for n in &all {
        n.applied_at_least(applied).await;
        assert_eq!(n.state.values().len(), 20, "node {}", n.id);
    }

    // A learner joining after the log was compacted can only catch up by a snapshot, sent in
    // chunks over the transport.
    let lead = node(&all, leader);
    lead.raft.trigger().snapshot().await.unwrap();
    lead.raft
        .wait(Some(PATIENCE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "snapshot",
        )
        .await
        .unwrap();
    lead.raft.trigger().purge_log(applied).await.unwrap();
    lead.raft
        .wait(Some(PATIENCE))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= applied), "purged")
        .await
        .unwrap();
    let learner =
        TestNode::start(&pki, 4, any_port(), MemLog::default(), MemState::default()).await;
    lead.raft
        .add_learner(4, learner.member(), true)
        .await
        .unwrap();
    learner.applied_at_least(applied).await;
    assert!(learner.state.installed() >= 1, "the learner got a snapshot");
    assert_eq!(learner.state.values(), lead.state.values());

    // The leader dies; the other two elect one of themselves and keep committing.
    let position = nodes.iter().position(|n| n.id == leader).unwrap();
    let dead = nodes.remove(position);
    let (dead_addr, dead_log, dead_state) = dead.kill().await;
    let survivors: Vec<&TestNode> = nodes.iter().collect();
    let (new_leader, outcome, applied) = put(&survivors, "after", b"failover").await;
    assert_ne!(new_leader, leader);
    assert_eq!(outcome, WriteOutcome::Written { version: 21 });
    for n in survivors.iter().chain([&&learner]) {
        n.applied_at_least(applied).await;
        assert_eq!(
            n.state.values().get(b"after".as_slice()).map(Vec::as_slice),
            Some(b"failover".as_slice()),
            "node {}",
            n.id
        );
    }

    // It comes back on its address with its log: the others dial it again and it catches up.
    let back = TestNode::start(&pki, leader, dead_addr, dead_log, dead_state).await;
    let mut all: Vec<&TestNode> = nodes.iter().collect();
    all.push(&back);
    let (_, outcome, applied) = put(&all, "back", b"again").await;
    assert_eq!(outcome, WriteOutcome::Written { version: 22 });
    back.applied_at_least(applied).await;
    assert_eq!(back.state.values().len(), 22);
    assert_eq!(back.state.values(), node(&all, new_leader).state.values());

    for n in nodes.into_iter().chain([back, learner]) {
        n.kill().await;
    }
}
