//! Cluster routing: one client for a whole, replicated cluster.
//!
//! A [`ClusterClient`] caches the cluster map a node serves, hashes each key to its slot,
//! looks the slot's shard up in a table built from the map (one array index), and sends the
//! request over a pooled [`Connection`] to the shard's cached leader. Connections are
//! multiplexed, so one per node carries any number of concurrent requests; they open lazily,
//! once per node however many tasks ask at the same moment, and a connection that died is
//! replaced at its next use.
//!
//! # Replicas and leaders
//!
//! Every shard is a Raft group over the replicas the map lists. Only its leader commits
//! writes and serves linearizable reads; any replica serves a stale read
//! ([`Consistency::Stale`], see [`ClusterClient::with_consistency`]). The client keeps, per
//! shard, the node it believes leads (at first the shard's first replica) and sends there.
//!
//! # What it hides
//!
//! - **NOT_LEADER** with a leader hint: the cache is corrected and the request is resent to
//!   the leader at once. Without a hint an election is running: the next replica is tried
//!   after a short backoff.
//! - **MOVED**: no replica of the slot's shard is on that node any more. The client fetches
//!   the newer map (from the node that said so, else from any node) when the answer names a
//!   newer epoch, and retries where the answer points, at most [`MAX_REDIRECTS`] times.
//! - **A replica that cannot be reached, drops the connection or does not answer in time**
//!   ([`Failover::attempt_timeout`]): the request goes to the shard's other replicas, with
//!   backoff, until [`Failover::deadline`], so a leader's failure shows only as latency. A
//!   node that failed is skipped for [`Failover::down_for`], so requests meanwhile do not
//!   each pay a connect timeout to it.
//! - **TRYAGAIN** (a slot being handed over) and **unavailable** (the shard has no quorum):
//!   retried with backoff (2 ms, doubling up to 100 ms) until the deadline.
//! - **A lost answer to a write.** Every write carries a session, this client's random id and
//!   the write's sequence number, and every attempt of one write carries the same pair, so a
//!   node that already applied it answers with the first outcome instead of applying it twice.
//!   Writes are therefore resent like reads.
//!
//! Key requests and scan pages go through one retry policy (`Retry`), so the two cannot
//! drift apart.
//!
//! # What it does not hide
//!
//! - **A shard without a quorum**, after the deadline: [`ClientError::Unavailable`] for
//!   writes and linearizable reads (stale reads still work).
//! - **A shard none of whose replicas can be reached**, after the deadline:
//!   [`ClientError::ShardDown`]; with a single replica, [`ClientError::NodeDown`] at once
//!   (after one map refresh, in case the slot moved), naming the node and its slots.
//!   Requests for other shards keep working.
//!
//! # Cluster-wide scans
//!
//! A scan asks one node per shard, each shard's cached leader (or, once it failed, another
//! replica), for its keys after the cursor and merges the pages in key order (at most one page
//! per node is buffered, and a key two nodes return comes out once). Each node filters its
//! page by the map of the epoch it reports; when that differs from the client's, the client
//! refreshes its map and restarts the merge after the last key it returned, so the slots are
//! covered exactly once. See [`ClusterScan`]. A node's page must cover every shard the client
//! asks it for: under [`Consistency::Linearizable`] the shards it leads, under
//! [`Consistency::Stale`] the shards it holds.
//!
//! # Timing
//!
//! The deadline is measured from a request's first failure, so a request can take up to one
//! [`Failover::attempt_timeout`] longer. Shards with a single replica have no other replica
//! to try: their attempts wait for the connection's own request timeout
//! ([`ConnectOptions::request_timeout`]) instead, as before replication.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use rustls::ClientConfig;
use skv_proto::cluster::{format_ranges, hash_slot, ClusterMap, NodeEntry};
use skv_proto::{
    Consistency, ErrorCode, RequestBody, ResponseBody, ScanEntry, Session, MAX_SCAN_PAGE,
};
use tokio::sync::OnceCell;

use crate::config::{tls_config, ConnectOptions, ExpectedNode};
use crate::connection::{
    cas_answer, delete_answer, get_answer, put_answer, scan_answer, CasResult, Connection, ScanPage,
};
use crate::error::ClientError;

/// Most MOVED answers one request follows before it fails: a slot moves once per map change,
/// so more than a few redirects in a row means the nodes disagree about the map.
pub const MAX_REDIRECTS: u32 = 5;

/// Default [`Failover::attempt_timeout`]: a healthy node answers in milliseconds, even a
/// write that waits for a quorum's fsync, so two seconds without an answer means the node is
/// in trouble and another replica should be asked.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default [`Failover::deadline`]: a leader election takes a second or two after the leader
/// fails (the election timeout, then a vote); ten seconds covers it and an attempt timeout
/// or two on the way, and is still short enough for someone waiting at a terminal.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// Default [`Failover::down_for`]: long enough that a burst of requests skips a dead node,
/// short enough that a restarted one is used again soon.
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(1);

/// First and largest wait between retries (TRYAGAIN, unavailable, no leader, every replica
/// failed). A handover pauses a slot's writes for a few milliseconds, so start small; cap the
/// wait so a retry comes soon after an election ends.
const RETRY_FIRST: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_millis(100);

/// How many times a request to a single-replica shard is resent after its connection broke.
const LOST_RETRIES: u32 = 2;

/// NOT_LEADER hints followed in a row before each further one waits a backoff step: replicas
/// that name each other are between terms, and a burst of hops would only repeat that.
const MAX_HOPS: u32 = 3;

/// How often one scan page may restart its merge because a node's map disagreed with ours.
const MAX_SCAN_RESTARTS: u32 = 10;

/// How long a failed connection attempt stands for its node. Requests meanwhile fail at once
/// instead of each paying a connect attempt (up to the connect timeout) and a map refresh.
const FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Least time between two map refreshes caused by unreachable nodes, so a dead node does
/// not turn every request for its slots into a map fetch from the others.
const DOWN_REFRESH_EVERY: Duration = Duration::from_millis(500);

/// No node (in [`Table::slot_shards`], and in leader slots of shards without replicas).
const NONE: u16 = u16::MAX;

/// How a [`ClusterClient`] rides out failed nodes and leader elections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failover {
    /// Longest wait for one attempt, connecting included, before the request is tried on
    /// another replica. Only for shards with more than one replica; see the module docs.
    /// Default [`DEFAULT_ATTEMPT_TIMEOUT`] (2 s).
    pub attempt_timeout: Duration,
    /// How long a request keeps retrying (other replicas, elections, TRYAGAIN, a shard
    /// without quorum) before its error is returned. Default [`DEFAULT_DEADLINE`] (10 s).
    pub deadline: Duration,
    /// How long a node that could not be reached is skipped when another replica can be
    /// asked. Default [`DEFAULT_DOWN_FOR`] (1 s).
    pub down_for: Duration,
}

impl Default for Failover {
    fn default() -> Failover {
        Failover {
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            down_for: DEFAULT_DOWN_FOR,
        }
    }
}

/// A connection attempt's outcome; a failure carries when it happened (see [`FAILURE_HOLD`]).
/// The connection is behind an `Arc` so that handing it to a request costs one reference
/// count on memory only the client touches (cloning the [`Connection`] itself would touch
/// its channel, which the connection's driver thread is using).
type Attempt = Result<Arc<Connection>, (ClientError, Instant)>;

/// One connection attempt to an address: the pool holds the current one per address.
///
/// Every caller that needs the node while the attempt is in progress waits for it, so
/// concurrent callers open one connection, not one each. Once its connection is closed (or
/// its failure is old) the slot is replaced by a new one ([`Shared::retire`]), never reset:
/// callers still holding the old slot finish with it undisturbed, and reading a slot needs
/// no lock.
#[derive(Debug)]
struct PoolSlot {
    addr: String,
    cell: OnceCell<Attempt>,
}

impl PoolSlot {
    fn new(addr: &str, attempt: Option<Attempt>) -> PoolSlot {
        PoolSlot {
            addr: addr.to_owned(),
            cell: OnceCell::new_with(attempt),
        }
    }
}

/// A shard as routing sees it.
#[derive(Debug)]
struct ShardRoute {
    id: u32,
    /// Indexes in `map.nodes` of its replicas, in the map's order.
    replicas: Vec<u16>,
}

/// The part of routing that depends only on the map. Clients made from one another
/// ([`ClusterClient::fresh`]) share it, so the many clients of a load generator keep one
/// 32 KiB slot table in the CPU cache rather than one each.
struct Table {
    /// The map, with node addresses as this client dials them.
    map: Arc<ClusterMap>,
    /// Per slot, the index in `shards` of the shard owning it ([`NONE`]: none).
    slot_shards: Vec<u16>,
    shards: Vec<ShardRoute>,
    /// Indexes in `shards` of the shards that own at least one slot and have a replica.
    serving_shards: Vec<usize>,
    /// Indexes in `map.nodes` of the nodes holding a replica of a serving shard, ascending.
    serving_nodes: Vec<usize>,
    /// The index of the shard owning every slot, if one does: then keys need no hashing.
    sole: Option<usize>,
}

impl Table {
    fn new(map: ClusterMap) -> Table {
        let node_index = |id: &str| map.nodes.iter().position(|n| n.id == id);
        let shards: Vec<ShardRoute> = map
            .shards
            .iter()
            .map(|s| ShardRoute {
                id: s.id,
                replicas: s
                    .replicas
                    .iter()
                    .filter_map(|r| node_index(r))
                    .filter_map(|i| u16::try_from(i).ok())
                    .collect(),
            })
            .collect();
        let mut slot_shards = vec![NONE; usize::from(skv_proto::SLOT_COUNT)];
        for a in &map.slots {
            let shard = shards
                .iter()
                .position(|s| s.id == a.shard && !s.replicas.is_empty())
                .and_then(|i| u16::try_from(i).ok())
                .unwrap_or(NONE);
            for slot in a.start..=a.end.min(skv_proto::SLOT_COUNT - 1) {
                slot_shards[usize::from(slot)] = shard;
            }
        }
        let mut serving_shards: Vec<usize> = slot_shards
            .iter()
            .filter(|&&s| s != NONE)
            .map(|&s| usize::from(s))
            .collect();
        serving_shards.sort_unstable();
        serving_shards.dedup();
        let mut serving_nodes: Vec<usize> = serving_shards
            .iter()
            .flat_map(|&s| shards[s].replicas.iter().map(|&n| usize::from(n)))
            .collect();
        serving_nodes.sort_unstable();
        serving_nodes.dedup();
        let sole = match serving_shards[..] {
            [only] if slot_shards.iter().all(|&s| usize::from(s) == only) => Some(only),
            _ => None,
        };
        Table {
            map: Arc::new(map),
            slot_shards,
            shards,
            serving_shards,
            serving_nodes,
            sole,
        }
    }

    /// The index in `shards` of the shard owning `slot`.
    fn shard_of_slot(&self, slot: u16) -> Option<usize> {
        match self.slot_shards.get(usize::from(slot)) {
            Some(&s) if s != NONE => Some(usize::from(s)),
            _ => None,
        }
    }

    fn shard_by_id(&self, id: u32) -> Option<usize> {
        self.shards.iter().position(|s| s.id == id)
    }

    fn node_by_id(&self, id: &str) -> Option<u16> {
        let i = self.map.nodes.iter().position(|n| n.id == id)?;
        u16::try_from(i).ok()
    }
}

/// What routing needs, rebuilt as a whole whenever the map changes, so a request reads one
/// consistent snapshot.
struct Routing {
    table: Arc<Table>,
    /// Per node of `table.map.nodes`, its pooled connection.
    nodes: Vec<Arc<PoolSlot>>,
    /// Per shard of `table.shards`, the index in `nodes` of the replica believed to lead it.
    /// Atomics, so that learning a leader does not rebuild the snapshot.
    leaders: Arc<[AtomicU16]>,
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routing")
            .field("epoch", &self.table.map.epoch)
            .field("nodes", &self.table.map.nodes)
            .field("serving", &self.table.serving_nodes)
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// The routing of `table`, reusing the pooled connection of every address still in the
    /// map and dropping the others from `pool`. Leaders known in `old` are kept where the
    /// node still holds the shard; other shards start at their first replica.
    fn build(
        table: Arc<Table>,
        pool: &mut HashMap<String, Arc<PoolSlot>>,
        old: Option<&Routing>,
    ) -> Routing {
        let nodes: Vec<Arc<PoolSlot>> = table
            .map
            .nodes
            .iter()
            .map(|n| {
                pool.entry(n.addr.clone())
                    .or_insert_with(|| Arc::new(PoolSlot::new(&n.addr, None)))
                    .clone()
            })
            .collect();
        pool.retain(|addr, _| table.map.nodes.iter().any(|n| &n.addr == addr));
        let leaders: Arc<[AtomicU16]> = table
            .shards
            .iter()
            .map(|s| {
                let known = old.and_then(|old| {
                    let i = old.table.shard_by_id(s.id)?;
                    let node = usize::from(old.leaders[i].load(Ordering::Relaxed));
                    let id = &old.table.map.nodes.get(node)?.id;
                    let now = table.node_by_id(id)?;
                    s.replicas.contains(&now).then_some(now)
                });
                AtomicU16::new(known.or(s.replicas.first().copied()).unwrap_or(NONE))
            })
            .collect();
        Routing {
            table,
            nodes,
            leaders,
        }
    }

    fn map(&self) -> &Arc<ClusterMap> {
        &self.table.map
    }

    fn leader(&self, shard: usize) -> Option<usize> {
        let node = self.leaders.get(shard)?.load(Ordering::Relaxed);
        (node != NONE).then_some(usize::from(node))
    }

    /// The pooled connection of the cached leader of `key`'s shard, and whether the shard has
    /// other replicas to fail over to: the request path.
    fn leader_of_key(&self, key: &[u8]) -> Option<(&Arc<PoolSlot>, bool)> {
        let shard = match self.table.sole {
            Some(shard) => shard,
            None => self.table.shard_of_slot(hash_slot(key))?,
        };
        let node = self.leader(shard)?;
        let replicated = self.table.shards[shard].replicas.len() > 1;
        Some((self.nodes.get(node)?, replicated))
    }

    /// The pooled connection of the cached leader of `slot`'s shard.
    #[cfg(test)]
    fn owner(&self, slot: u16) -> Option<&Arc<PoolSlot>> {
        self.nodes
            .get(self.leader(self.table.shard_of_slot(slot)?)?)
    }

    /// The replicas of `shard` in the order to try them: the cached leader, then the others
    /// in the map's order after it.
    fn candidates(&self, shard: usize) -> impl Iterator<Item = usize> + '_ {
        let replicas = &self.table.shards[shard].replicas;
        let start = self
            .leader(shard)
            .and_then(|l| replicas.iter().position(|&r| usize::from(r) == l))
            .unwrap_or(0);
        (0..replicas.len()).map(move |k| usize::from(replicas[(start + k) % replicas.len()]))
    }
}

/// Connection counts for a client's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectStats {
    /// Connections opened successfully (TCP connect, TLS handshake, HELLO).
    pub opened: u64,
    /// Of those, the ones whose TLS handshake resumed an earlier session.
    pub resumed: u64,
    /// Time spent opening them.
    pub time: Duration,
}

/// What the clones of a [`ClusterClient`] share.
struct Shared {
    /// Options of every connection; `addr` is replaced by the node's.
    opts: ConnectOptions,
    /// Built once: loading credentials per connection would be wasteful, and one config
    /// lets rustls resume TLS sessions with nodes it has talked to.
    tls: Option<Arc<ClientConfig>>,
    /// Where to look for a map when no node of the cached one answers.
    seeds: Vec<String>,
    routing: RwLock<Arc<Routing>>,
    /// Every pooled connection by address: the map's nodes, and redirect targets the map
    /// does not know yet (dropped at the next map change).
    pool: Mutex<HashMap<String, Arc<PoolSlot>>>,
    /// Nodes that failed recently, by address, with when they may be tried again. Kept apart
    /// from the pool, whose slots are replaced when a connection dies.
    down: Mutex<HashMap<String, Instant>>,
    /// Held while fetching a map, so that many requests learning at once that the map is
    /// stale cause one fetch. Holds when the last refresh caused by an unreachable node ran.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    /// This client's session id: random, so that two clients never share one.
    client_id: u64,
    /// The sequence number of the last write numbered; clones share it, so no two writes of
    /// one session get the same number.
    last_seq: AtomicU64,
    opened: AtomicU64,
    resumed: AtomicU64,
    open_nanos: AtomicU64,
}

/// A client for a whole cluster: routes each request to the leader of its key's shard and
/// fails over to the other replicas. Cheap to clone; clones share the map, the connections
/// and the write session. See the [module docs](self).
#[derive(Clone)]
pub struct ClusterClient {
    shared: Arc<Shared>,
    /// How reads (GET, SCAN) are sent; writes are always linearizable.
    consistency: Consistency,
    failover: Failover,
}

impl fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routing = self.shared.routing();
        f.debug_struct("ClusterClient")
            .field("epoch", &routing.map().epoch)
            .field("nodes", &routing.map().nodes)
            .field("consistency", &self.consistency)
            .field("failover", &self.failover)
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// Connect to the cluster through `opts.addr`, or else through each of `seeds` in turn,
    /// fetch that node's map and keep the connection. Any one node's address is enough.
    /// A node too old to serve a map is taken as the owner of every slot. Reads are
    /// linearizable and failover uses [`Failover::default`]; see
    /// [`ClusterClient::with_consistency`] and [`ClusterClient::with_failover`].
    ///
    /// When no contact answers, the error is the first contact's. Errors that another node
    /// would repeat (refused credentials, bad local configuration) return at once.
    pub async fn connect(
        opts: ConnectOptions,
        seeds: Vec<String>,
    ) -> Result<ClusterClient, ClientError> {
        let tls = tls_config(&opts.security)?;
        let mut contacts = vec![opts.addr.clone()];
        for seed in seeds {
            if !seed.is_empty() && !contacts.contains(&seed) {
                contacts.push(seed);
            }
        }
        let mut first_failure = None;
        for addr in &contacts {
            let began = Instant::now();
            let conn = match Connection::connect_with(&with_addr(&opts, addr), tls.clone()).await {
                Ok(conn) => conn,
                Err(err) if is_unreachable(&err) => {
                    first_failure.get_or_insert(err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            let took = began.elapsed();
            let map = match fetch_map(&conn).await {
                Ok(map) => localize(map, addr),
                Err(err) if is_unreachable(&err) => {
                    first_failure.get_or_insert(err);
                    continue;
                }
                Err(err) => return Err(err),
            };
            // Pool the connection under the address the map gives its node, so routing
            // uses it instead of dialling the same node again.
            let pooled_addr = map
                .node(conn.node())
                .map_or_else(|| addr.clone(), |n| n.addr.clone());
            // The first contact was dialled without knowing which node is there; now that
            // the map says, its certificate must name the node it is pooled as.
            if let Some(expected) = expected_node(&map, &pooled_addr) {
                conn.check_node(&expected)?;
            }
            let resumed = conn.resumed_tls();
            let mut pool = HashMap::new();
            pool.insert(
                pooled_addr.clone(),
                Arc::new(PoolSlot::new(&pooled_addr, Some(Ok(Arc::new(conn))))),
            );
            let routing = Routing::build(Arc::new(Table::new(map)), &mut pool, None);
            let client = ClusterClient::assemble(opts, tls, contacts.clone(), routing, pool);
            client.shared.count_open(took, resumed);
            return Ok(client);
        }
        Err(first_failure
            .unwrap_or_else(|| ClientError::Config("no node address to connect to".into())))
    }

    fn assemble(
        opts: ConnectOptions,
        tls: Option<Arc<ClientConfig>>,
        seeds: Vec<String>,
        routing: Routing,
        pool: HashMap<String, Arc<PoolSlot>>,
    ) -> ClusterClient {
        ClusterClient {
            shared: Arc::new(Shared {
                opts,
                tls,
                seeds,
                routing: RwLock::new(Arc::new(routing)),
                pool: Mutex::new(pool),
                down: Mutex::new(HashMap::new()),
                refresh: tokio::sync::Mutex::new(None),
                client_id: random_client_id(),
                last_seq: AtomicU64::new(0),
                opened: AtomicU64::new(0),
                resumed: AtomicU64::new(0),
                open_nanos: AtomicU64::new(0),
            }),
            consistency: Consistency::Linearizable,
            failover: Failover::default(),
        }
    }

    /// A new client with the same options, settings and cached map (leaders included), but
    /// no connections, a TLS config of its own and a session of its own (a new random client
    /// id): its connections resume no session of this client's, so each is a full handshake
    /// (what `skv bench --reconnect-every` measures). Nothing is dialled until it is used or
    /// [`ClusterClient::open_connections`] is called.
    pub fn fresh(&self) -> Result<ClusterClient, ClientError> {
        Ok(self.fresh_with(tls_config(&self.shared.opts.security)?))
    }

    /// [`ClusterClient::fresh`], but sharing this client's TLS config, and with it the TLS
    /// sessions it holds: its connections resume them (TLS 1.3 tickets), as a client that
    /// reconnects would (what `skv bench --reconnect-every N --resume` measures).
    pub fn fresh_resuming(&self) -> ClusterClient {
        self.fresh_with(self.shared.tls.clone())
    }

    fn fresh_with(&self, tls: Option<Arc<ClientConfig>>) -> ClusterClient {
        let s = &self.shared;
        let mut pool = HashMap::new();
        let current = s.routing();
        let routing = Routing::build(current.table.clone(), &mut pool, Some(&current));
        let mut client =
            ClusterClient::assemble(s.opts.clone(), tls, s.seeds.clone(), routing, pool);
        client.consistency = self.consistency;
        client.failover = self.failover;
        client
    }

    /// A clone of this client (same map, connections and write session) that sends reads
    /// (GET and SCAN) with `consistency`. [`Consistency::Stale`] reads are answered by any
    /// replica from what it has applied: they may miss recent writes, and they work while
    /// the shard has no quorum. Writes are linearizable whatever this says.
    pub fn with_consistency(&self, consistency: Consistency) -> ClusterClient {
        ClusterClient {
            consistency,
            ..self.clone()
        }
    }

    /// A clone of this client that fails over by `failover`.
    pub fn with_failover(&self, failover: Failover) -> ClusterClient {
        ClusterClient {
            failover,
            ..self.clone()
        }
    }

    /// How this client sends reads.
    pub fn consistency(&self) -> Consistency {
        self.consistency
    }

    /// How this client fails over.
    pub fn failover(&self) -> Failover {
        self.failover
    }

    /// The random id this client's writes carry in their sessions (shared by its clones, not
    /// by [`ClusterClient::fresh`] clients).
    pub fn session_id(&self) -> u64 {
        self.shared.client_id
    }

    /// Open (or check) the connection to every node that holds a serving shard, all at once;
    /// the first failure is returned. A connection that failed a moment ago is tried again.
    pub async fn open_connections(&self) -> Result<(), ClientError> {
        let routing = self.shared.routing();
        let opens = routing
            .table
            .serving_nodes
            .iter()
            .map(|&i| self.shared.connection_fresh(&routing.nodes[i]));
        for result in join_all(opens).await {
            result?;
        }
        Ok(())
    }

    /// The cached cluster map, with node addresses as this client dials them (an unspecified
    /// IP such as `0.0.0.0` is replaced by the host the map was fetched from).
    pub fn map(&self) -> Arc<ClusterMap> {
        self.shared.routing().map().clone()
    }

    /// Epoch of the cached map.
    pub fn epoch(&self) -> u64 {
        self.shared.routing().map().epoch
    }

    /// The nodes of the cached map, with the addresses this client dials.
    pub fn nodes(&self) -> Vec<NodeEntry> {
        self.shared.routing().map().nodes.clone()
    }

    /// How many nodes hold a replica of a shard that owns slots.
    pub fn serving_nodes(&self) -> usize {
        self.shared.routing().table.serving_nodes.len()
    }

    /// The node this client believes leads shard `shard` (its first replica until an answer
    /// said otherwise); `None` for a shard the cached map does not have.
    pub fn cached_leader(&self, shard: u32) -> Option<String> {
        let routing = self.shared.routing();
        let i = routing.table.shard_by_id(shard)?;
        let node = routing.leader(i)?;
        Some(routing.map().nodes.get(node)?.id.clone())
    }

    /// Connections this client (and its clones) opened, and the time that took.
    pub fn connect_stats(&self) -> ConnectStats {
        ConnectStats {
            opened: self.shared.opened.load(Ordering::Relaxed),
            resumed: self.shared.resumed.load(Ordering::Relaxed),
            time: Duration::from_nanos(self.shared.open_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Fetch the map from the first node that answers (the cached map's nodes, then the
    /// seeds) and keep it if it is newer. Returns the map now cached.
    pub async fn refresh_map(&self) -> Result<Arc<ClusterMap>, ClientError> {
        let _single_flight = self.shared.refresh.lock().await;
        self.shared.fetch_newer(None, None, None).await?;
        Ok(self.map())
    }

    /// The pooled connection to node `node_id` (for admin requests to one node). Asked for
    /// by name, so a recent failure to reach that node is not taken as the answer: the node
    /// may have come back since (the hold only spares routed requests a connect each).
    pub async fn connection_to(&self, node_id: &str) -> Result<Connection, ClientError> {
        let routing = self.shared.routing();
        let index = routing
            .map()
            .nodes
            .iter()
            .position(|n| n.id == node_id)
            .ok_or_else(|| {
                ClientError::Config(format!(
                    "node {node_id} is not in the cluster map (epoch {})",
                    routing.map().epoch
                ))
            })?;
        let conn = self.shared.connection_fresh(&routing.nodes[index]).await?;
        Ok(Connection::clone(&conn))
    }

    /// Ping every node of the map at once; each answer's round-trip time or error, in the
    /// map's node order.
    pub async fn ping_all(&self) -> Vec<(NodeEntry, Result<Duration, ClientError>)> {
        let routing = self.shared.routing();
        let pings = routing
            .map()
            .nodes
            .iter()
            .zip(&routing.nodes)
            .map(|(node, slot)| async move {
                let result = async {
                    let conn = self.shared.connection(slot).await?;
                    let began = Instant::now();
                    conn.ping().await?;
                    Ok(began.elapsed())
                }
                .await;
                (node.clone(), result)
            });
        join_all(pings).await
    }

    // The key operations return their futures rather than being `async fn`s, and `route`
    // sends with `Connection::call_within` directly: each layer of async functions would add
    // one more move of the request's future, and these are the request path.

    /// The value and version of `key`, or `None` if it does not exist. Sent with this
    /// client's read consistency.
    pub fn get(
        &self,
        key: impl Into<Bytes>,
    ) -> impl Future<Output = Result<Option<(u64, Bytes)>, ClientError>> + Send + '_ {
        self.route(key.into(), KeyOp::Get, get_answer)
    }

    /// Write `value` under `key`; returns the new version.
    pub fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> impl Future<Output = Result<u64, ClientError>> + Send + '_ {
        self.route(key.into(), KeyOp::Put(value.into()), put_answer)
    }

    /// Remove `key`; returns whether it existed.
    pub fn delete(
        &self,
        key: impl Into<Bytes>,
    ) -> impl Future<Output = Result<bool, ClientError>> + Send + '_ {
        self.route(key.into(), KeyOp::Delete, delete_answer)
    }

    /// Write `value` under `key` only if its version is `expect_version` (0: must not exist).
    pub fn cas(
        &self,
        key: impl Into<Bytes>,
        expect_version: u64,
        value: impl Into<Bytes>,
    ) -> impl Future<Output = Result<CasResult, ClientError>> + Send + '_ {
        self.route(
            key.into(),
            KeyOp::Cas(expect_version, value.into()),
            cas_answer,
        )
    }

    /// One page of keys under `prefix` from the whole cluster, in key order, after `cursor`;
    /// `limit` 0 asks for the maximum (1000). The same contract as one node's scan: the
    /// returned cursor is the last key of the page, `None` once nothing follows. For many
    /// pages, a [`ClusterScan`] from [`ClusterClient::scanner`] fetches less. Sent with this
    /// client's read consistency.
    pub async fn scan(
        &self,
        prefix: impl Into<Bytes>,
        limit: u32,
        cursor: Option<Bytes>,
    ) -> Result<ScanPage, ClientError> {
        self.scanner(prefix, cursor).next_page(limit).await
    }

    /// [`ClusterClient::scan`] for keys and versions only: every value in the page is empty,
    /// and the nodes never load them (the keys-only SCAN of docs/PROTOCOL.md).
    pub async fn scan_keys(
        &self,
        prefix: impl Into<Bytes>,
        limit: u32,
        cursor: Option<Bytes>,
    ) -> Result<ScanPage, ClientError> {
        self.scanner(prefix, cursor)
            .keys_only(true)
            .next_page(limit)
            .await
    }

    /// A scan of `prefix` after `cursor` that keeps its per-node pages between calls of
    /// [`ClusterScan::next_page`], so paging through many keys asks each node only for what
    /// it has not sent yet.
    pub fn scanner(&self, prefix: impl Into<Bytes>, cursor: Option<Bytes>) -> ClusterScan {
        ClusterScan {
            client: self.clone(),
            prefix: prefix.into(),
            after: cursor,
            merge: None,
            nodes: Vec::new(),
            epoch: 0,
            done: false,
            keys_only: false,
        }
    }

    /// The session and consistency every attempt of `op` carries: a write gets the next
    /// sequence number of this client's session, a read this client's consistency.
    fn envelope(&self, op: &KeyOp) -> (Option<Session>, Consistency) {
        if op.is_read() {
            (None, self.consistency)
        } else {
            (Some(self.shared.next_session()), Consistency::Linearizable)
        }
    }

    /// How long one attempt on a shard waits: the attempt timeout where another replica can
    /// be asked, the connection's request timeout where none can.
    fn attempt_timeout(&self, replicated: bool) -> Duration {
        if replicated {
            self.failover.attempt_timeout
        } else {
            self.shared.opts.request_timeout
        }
    }

    /// Send `op` on `key` to the leader of its shard, following NOT_LEADER and MOVED,
    /// failing over to other replicas, waiting out TRYAGAIN, elections and a lost quorum
    /// until the deadline.
    async fn route<T>(
        &self,
        key: Bytes,
        op: KeyOp,
        answer: fn(ResponseBody) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let (session, consistency) = self.envelope(&op);
        // The common case, kept small: the leader's connection is open and the leader
        // answers. Everything else is in a boxed future, so that it does not make every
        // request's future larger (each is allocated and moved once per request).
        let failed = match self.shared.pooled_leader(&key) {
            // A copy of the key stays here in case the request must be sent again.
            Some((conn, replicated)) => {
                let body = op.body(key.clone());
                let timeout = self.attempt_timeout(replicated);
                match conn.call_within(body, session, consistency, timeout).await {
                    Ok(body) => return answer(body),
                    Err(err) => Some((conn.addr().to_owned(), err)),
                }
            }
            None => None,
        };
        Box::pin(self.route_slow(key, op, (session, consistency), answer, failed)).await
    }

    /// [`ClusterClient::route`] from its first failure (at the address given), or from the
    /// start when the leader had no open connection.
    async fn route_slow<T>(
        &self,
        key: Bytes,
        op: KeyOp,
        (session, consistency): (Option<Session>, Consistency),
        answer: fn(ResponseBody) -> Result<T, ClientError>,
        first_failure: Option<(String, ClientError)>,
    ) -> Result<T, ClientError> {
        let shared = &*self.shared;
        let slot = hash_slot(&key);
        let mut failed = first_failure.map(|(addr, err)| (shared.slot_for(&addr), err));
        // Where the last MOVED (or a hint naming a node the map lacks) pointed; `None`: the
        // shard's replicas, leader first.
        let mut redirected: Option<String> = None;
        let mut retry = Retry::new(MAX_REDIRECTS, self.failover);
        loop {
            if let Some((at, err)) = failed.take() {
                let shard = shared.shard_info(slot);
                match retry.after(shared, &at.addr, shard.as_ref(), err).await? {
                    Next::Redirect(addr) => redirected = Some(addr),
                    Next::Replicas => redirected = None,
                    Next::Same => {}
                }
            }
            let (target, replicated) = match &redirected {
                None => shared.target(slot)?,
                Some(addr) => (shared.slot_for(addr), shared.is_replicated(slot)),
            };
            let timeout = self.attempt_timeout(replicated);
            let conn = match tokio::time::timeout(timeout, shared.connection(&target)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(err)) if is_unreachable(&err) => {
                    failed = Some((target, err));
                    continue;
                }
                Ok(Err(err)) => return Err(err),
                Err(_) => {
                    let err = ClientError::Timeout {
                        addr: target.addr.clone(),
                        after: timeout,
                        waiting_for: "connect, TLS handshake and HELLO",
                    };
                    failed = Some((target, err));
                    continue;
                }
            };
            match conn
                .call_within(op.body(key.clone()), session, consistency, timeout)
                .await
            {
                Ok(body) => {
                    // A linearizable answer comes from the leader; a stale one from anyone.
                    if consistency == Consistency::Linearizable {
                        shared.note_leader(slot, &target.addr);
                    }
                    return answer(body);
                }
                Err(err) => failed = Some((target, err)),
            }
        }
    }
}

/// The shard a request is for, as [`Retry`] needs it.
#[derive(Debug, Clone)]
struct ShardInfo {
    id: u32,
    /// Node ids of its replicas.
    replicas: Vec<String>,
}

/// Longest wait for one retry-after of a throttling node: a node asking for more is
/// overloaded enough that the caller should hear about it.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(2);

/// Retry-afters honoured per request before the throttling error is returned.
const MAX_THROTTLED: u32 = 8;

/// The one retry policy of the cluster client, shared by key requests
/// ([`ClusterClient::route`]) and scan pages ([`ClusterScan::next_page`]): what a failed
/// attempt allows next. It keeps the counts, the backoff and the deadline of one request,
/// updates the leader cache and does the map refreshes and waits a retry needs; the caller
/// then tries again.
///
/// - MOVED (and a scan page filtered with another epoch's map): at most `max_remaps` in a
///   row. A newer epoch is fetched first; an epoch that is not newer than the cached map
///   means the answering node lags behind, so the retry waits a backoff step for it.
/// - NOT_LEADER: to the hinted leader at once (a backoff step after [`MAX_HOPS`] hops in a
///   row); without a hint, or with one naming a node that just failed, to the next replica
///   after a backoff step.
/// - TRYAGAIN, unavailable: a backoff step, until the deadline.
/// - rate limited, overloaded: the node's retry-after (at most [`MAX_THROTTLE_WAIT`], at most
///   [`MAX_THROTTLED`] times, within the deadline), then the same node again.
/// - A node that cannot be reached, or did not answer in time: it is marked down and the
///   next replica is tried, with a backoff step after each round of them, until the
///   deadline. The map is refreshed once per request first, since the slot may have moved.
///   A shard with one replica has nothing to fail over to: the request fails with
///   [`ClientError::NodeDown`] (a broken connection is retried [`LOST_RETRIES`] times).
#[derive(Debug)]
struct Retry {
    remaps: u32,
    max_remaps: u32,
    hops: u32,
    lost: u32,
    /// Replicas tried since the last backoff step.
    misses: usize,
    /// Waits a throttling node asked for (rate limited, overloaded).
    throttled: u32,
    checked_down: bool,
    /// Whether a replica answered at all during this request (so the shard is not down, it
    /// lacks a quorum).
    answered: bool,
    last_unreachable: Option<ClientError>,
    backoff: Duration,
    began: Instant,
    failover: Failover,
}

/// Where the next attempt goes, after [`Retry::after`].
#[derive(Debug)]
enum Next {
    /// Where a MOVED answer (or a leader hint the map does not know) pointed.
    Redirect(String),
    /// To the shard's replicas, cached leader first.
    Replicas,
    /// Where the last attempt went (a scan restarts over the current map either way).
    Same,
}

impl Retry {
    fn new(max_remaps: u32, failover: Failover) -> Retry {
        Retry {
            remaps: 0,
            max_remaps,
            hops: 0,
            lost: 0,
            misses: 0,
            throttled: 0,
            checked_down: false,
            answered: false,
            last_unreachable: None,
            backoff: RETRY_FIRST,
            began: Instant::now(),
            failover,
        }
    }

    /// After `err` from the node at `at`, for `shard` (`None`: a scan over several, or a
    /// slot the map gives no shard): `Ok` to try again (the map refreshed or the wait done),
    /// `Err` to give up with that error.
    async fn after(
        &mut self,
        shared: &Shared,
        at: &str,
        shard: Option<&ShardInfo>,
        err: ClientError,
    ) -> Result<Next, ClientError> {
        match err {
            ClientError::Moved {
                slot,
                epoch,
                node,
                addr,
            } => {
                self.answered = true;
                if epoch < shared.epoch() {
                    // That node has not applied the newest map yet (a node that just joined,
                    // or one catching up): wait for it rather than follow it back to an old
                    // owner, within the failover deadline.
                    self.pause_or(|_| ClientError::Moved {
                        slot,
                        epoch,
                        node: node.clone(),
                        addr: addr.clone(),
                    })
                    .await?;
                    return Ok(Next::Replicas);
                }
                if !self.remap() {
                    return Err(ClientError::Protocol(format!(
                        "redirect loop: slot {slot} was still redirected after \
                         {} redirects, last to node {node} at {addr} (map epoch {epoch}); \
                         the nodes disagree about the cluster map, retry in a moment",
                        self.max_remaps
                    )));
                }
                self.follow_map(shared, epoch, at).await;
                Ok(Next::Redirect(dial_addr(&addr, at)))
            }
            ClientError::NotLeader {
                shard: id,
                epoch,
                leader,
            } => {
                self.answered = true;
                if epoch > shared.epoch() {
                    shared.refresh_to(epoch, at).await;
                }
                let usable = leader.filter(|(_, addr)| {
                    let addr = dial_addr(addr, at);
                    addr != at && !shared.is_down(&addr)
                });
                match usable {
                    Some((node, addr)) => {
                        self.hops += 1;
                        if self.hops > MAX_HOPS {
                            self.pause_or(|r| r.give_up(shared, shard)).await?;
                        }
                        if shared.set_leader(id, &node) {
                            Ok(Next::Replicas)
                        } else {
                            Ok(Next::Redirect(dial_addr(&addr, at)))
                        }
                    }
                    None => {
                        // An election is running: the next replica, after a moment.
                        shared.step_leader_past(Some(id), at);
                        self.miss(shared, shard).await?;
                        Ok(Next::Replicas)
                    }
                }
            }
            // The node throttles this client (its identity's rate limit) or sheds new
            // connections (overloaded): wait what it asked, bounded, then the same node again.
            ClientError::Server(wire)
                if matches!(wire.code, ErrorCode::RateLimited | ErrorCode::Overloaded) =>
            {
                self.answered = true;
                let asked = Duration::from_millis(u64::from(wire.retry_after_ms.unwrap_or(100)));
                let wait = asked.clamp(RETRY_FIRST, MAX_THROTTLE_WAIT);
                if self.throttled >= MAX_THROTTLED
                    || self.began.elapsed() + wait > self.failover.deadline
                {
                    return Err(ClientError::Server(wire));
                }
                self.throttled += 1;
                tracing::debug!("throttled by {at}; retrying after {wait:?}");
                tokio::time::sleep(wait).await;
                Ok(Next::Same)
            }
            ClientError::Server(wire) if wire.code == ErrorCode::TryAgain => {
                self.answered = true;
                self.pause_or(|_| ClientError::Server(wire)).await?;
                Ok(Next::Same)
            }
            ClientError::Server(wire) if wire.code == ErrorCode::Unavailable => {
                self.answered = true;
                self.pause_or(|r| r.give_up(shared, shard)).await?;
                Ok(Next::Replicas)
            }
            err if is_unreachable(&err) => self.unreachable(shared, at, shard, err).await,
            err => Err(err),
        }
    }

    /// The node at `at` could not be reached, dropped the connection or did not answer.
    async fn unreachable(
        &mut self,
        shared: &Shared,
        at: &str,
        shard: Option<&ShardInfo>,
        err: ClientError,
    ) -> Result<Next, ClientError> {
        let replicated = shard.is_some_and(|s| s.replicas.len() > 1);
        let lost = matches!(err, ClientError::Disconnected { .. });
        if lost && self.lost < LOST_RETRIES {
            // A pooled connection that died (the node restarted, say): the pool replaces it
            // at the next use, and a request resent is safe (reads, and writes by their
            // session), so try the same node once more before calling it down.
            self.lost += 1;
            tracing::debug!("resending after a lost connection: {err}");
            return Ok(Next::Same);
        }
        if !replicated && lost {
            return Err(err);
        }
        shared.mark_down(at, self.failover.down_for);
        if !self.checked_down {
            self.checked_down = true;
            // A newer map: the slot may be served elsewhere now.
            if shared.refresh_after_failure(at).await {
                return Ok(Next::Replicas);
            }
        }
        if !replicated {
            return Err(match err {
                err @ ClientError::Timeout { .. } => err,
                err => shared.node_down(at, err),
            });
        }
        tracing::debug!("failing over from {at}: {err}");
        self.last_unreachable = Some(err);
        shared.step_leader_past(None, at);
        self.miss(shared, shard).await?;
        Ok(Next::Replicas)
    }

    /// One more replica tried without an answer: a backoff step after each round of them,
    /// the error once the deadline has passed.
    async fn miss(
        &mut self,
        shared: &Shared,
        shard: Option<&ShardInfo>,
    ) -> Result<(), ClientError> {
        self.misses += 1;
        let round = shard.map_or(1, |s| s.replicas.len().max(1));
        if self.began.elapsed() >= self.failover.deadline {
            return Err(self.give_up(shared, shard));
        }
        if self.misses >= round {
            self.misses = 0;
            self.pause_or(|r| r.give_up(shared, shard)).await?;
        }
        Ok(())
    }

    /// The error for a request that ran out of time on `shard`.
    fn give_up(&self, shared: &Shared, shard: Option<&ShardInfo>) -> ClientError {
        let waited = self.began.elapsed();
        let Some(shard) = shard else {
            return self
                .last_unreachable
                .clone()
                .unwrap_or_else(|| ClientError::Protocol(format!("no answer within {waited:?}")));
        };
        let replicas = shard.replicas.len();
        if self.answered || self.last_unreachable.is_none() {
            ClientError::Unavailable {
                shard: shard.id,
                replicas,
                quorum: replicas / 2 + 1,
                waited,
            }
        } else {
            let map = shared.routing().map().clone();
            ClientError::ShardDown {
                shard: shard.id,
                replicas: shard.replicas.join(", "),
                ranges: format_ranges(&map.ranges_of_shard(shard.id)),
                waited,
                reason: self
                    .last_unreachable
                    .as_ref()
                    .map(short_reason)
                    .unwrap_or_default(),
            }
        }
    }

    /// Count one map-driven retry; false once there were more than allowed.
    fn remap(&mut self) -> bool {
        self.remaps += 1;
        self.remaps <= self.max_remaps
    }

    /// Before a retry that a node's map epoch caused: fetch that map when it is newer than
    /// the cached one. When it is not, the answering node is the one behind: it gets a
    /// backoff step to catch up (maps reach every node within seconds) before it is asked
    /// again, rather than a burst of retries that use up the limit at once.
    async fn follow_map(&mut self, shared: &Shared, epoch: u64, at: &str) {
        if epoch > shared.epoch() {
            shared.refresh_to(epoch, at).await;
        } else {
            self.sleep().await;
        }
    }

    /// One backoff step, or `give_up()` when it would end past the deadline.
    async fn pause_or(
        &mut self,
        give_up: impl FnOnce(&Retry) -> ClientError,
    ) -> Result<(), ClientError> {
        if self.began.elapsed() + self.backoff > self.failover.deadline {
            return Err(give_up(self));
        }
        self.sleep().await;
        self.hops = 0;
        Ok(())
    }

    async fn sleep(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }
}

/// A key operation, apart from its key (which routing needs on its own).
#[derive(Debug, Clone)]
enum KeyOp {
    Get,
    Put(Bytes),
    Delete,
    Cas(u64, Bytes),
}

impl KeyOp {
    fn body(&self, key: Bytes) -> RequestBody {
        match self {
            KeyOp::Get => RequestBody::Get { key },
            KeyOp::Put(value) => RequestBody::Put {
                key,
                value: value.clone(),
            },
            KeyOp::Delete => RequestBody::Delete { key },
            KeyOp::Cas(expect_version, value) => RequestBody::Cas {
                key,
                expect_version: *expect_version,
                value: value.clone(),
            },
        }
    }

    /// Whether it only reads (no session; sent with the client's consistency).
    fn is_read(&self) -> bool {
        matches!(self, KeyOp::Get)
    }
}

impl Shared {
    fn routing(&self) -> Arc<Routing> {
        read(&self.routing).clone()
    }

    fn epoch(&self) -> u64 {
        read(&self.routing).map().epoch
    }

    /// The next write's session. Relaxed is enough: the numbers only need to be distinct.
    fn next_session(&self) -> Session {
        Session {
            client: self.client_id,
            seq: self.last_seq.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// The live pooled connection of the cached leader of `key`'s shard, if it has one, and
    /// whether the shard has other replicas: the request path, with no await and no lock
    /// held for longer than a lookup.
    fn pooled_leader(&self, key: &[u8]) -> Option<(Arc<Connection>, bool)> {
        let routing = read(&self.routing);
        let (slot, replicated) = routing.leader_of_key(key)?;
        Some((pooled(slot)?, replicated))
    }

    /// The shard of `slot` in the cached map.
    fn shard_info(&self, slot: u16) -> Option<ShardInfo> {
        let routing = read(&self.routing);
        let shard = &routing.table.shards[routing.table.shard_of_slot(slot)?];
        let nodes = &routing.map().nodes;
        Some(ShardInfo {
            id: shard.id,
            replicas: shard
                .replicas
                .iter()
                .filter_map(|&n| nodes.get(usize::from(n)).map(|n| n.id.clone()))
                .collect(),
        })
    }

    fn is_replicated(&self, slot: u16) -> bool {
        let routing = read(&self.routing);
        routing
            .table
            .shard_of_slot(slot)
            .is_some_and(|s| routing.table.shards[s].replicas.len() > 1)
    }

    /// Where to send a request for `slot`: the first replica of its shard, cached leader
    /// first, that is not marked down (the cached leader when all are); and whether the shard
    /// has more than one replica.
    fn target(&self, slot: u16) -> Result<(Arc<PoolSlot>, bool), ClientError> {
        let routing = self.routing();
        let no_node = || {
            ClientError::Protocol(format!(
                "the cluster map (epoch {}) assigns slot {slot} to no node",
                routing.map().epoch
            ))
        };
        let shard = routing.table.shard_of_slot(slot).ok_or_else(no_node)?;
        Ok((
            self.target_of_shard(&routing, shard).ok_or_else(no_node)?,
            routing.table.shards[shard].replicas.len() > 1,
        ))
    }

    /// [`Shared::target`] by shard index in `routing`.
    fn target_of_shard(&self, routing: &Routing, shard: usize) -> Option<Arc<PoolSlot>> {
        let mut first = None;
        for node in routing.candidates(shard) {
            let slot = routing.nodes.get(node)?;
            if !self.is_down(&slot.addr) {
                return Some(slot.clone());
            }
            first.get_or_insert(slot);
        }
        first.cloned()
    }

    /// After a linearizable answer from `addr` for `slot`: that node leads the slot's shard.
    fn note_leader(&self, slot: u16, addr: &str) {
        let routing = read(&self.routing);
        let Some(shard) = routing.table.shard_of_slot(slot) else {
            return;
        };
        if let Some(node) = routing.nodes.iter().position(|s| s.addr == addr) {
            let node = node as u16;
            if routing.table.shards[shard].replicas.contains(&node) {
                routing.leaders[shard].store(node, Ordering::Relaxed);
            }
        }
    }

    /// A node said `node` leads shard `shard`: cache it if the map agrees that it holds the
    /// shard. Returns whether it did.
    fn set_leader(&self, shard: u32, node: &str) -> bool {
        let routing = read(&self.routing);
        let (Some(i), Some(n)) = (
            routing.table.shard_by_id(shard),
            routing.table.node_by_id(node),
        ) else {
            return false;
        };
        if !routing.table.shards[i].replicas.contains(&n) {
            return false;
        }
        routing.leaders[i].store(n, Ordering::Relaxed);
        true
    }

    /// The node at `addr` does not lead `shard` (every shard, for `None`) or cannot be
    /// reached: where it is the cached leader, cache the next replica instead.
    fn step_leader_past(&self, shard: Option<u32>, addr: &str) {
        let routing = read(&self.routing);
        let Some(node) = routing.nodes.iter().position(|s| s.addr == addr) else {
            return;
        };
        for (i, s) in routing.table.shards.iter().enumerate() {
            if shard.is_some_and(|id| id != s.id) || s.replicas.len() < 2 {
                continue;
            }
            if let Some(k) = s.replicas.iter().position(|&r| usize::from(r) == node) {
                let next = s.replicas[(k + 1) % s.replicas.len()];
                let _ = routing.leaders[i].compare_exchange(
                    node as u16,
                    next,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
    }

    fn mark_down(&self, addr: &str, down_for: Duration) {
        lock(&self.down).insert(addr.to_owned(), Instant::now() + down_for);
    }

    /// Whether the node at `addr` failed recently enough to be skipped.
    fn is_down(&self, addr: &str) -> bool {
        let mut down = lock(&self.down);
        match down.get(addr) {
            Some(&until) if until > Instant::now() => true,
            Some(_) => {
                down.remove(addr);
                false
            }
            None => false,
        }
    }

    /// The pooled connection for `addr`, created if the address is new.
    fn slot_for(&self, addr: &str) -> Arc<PoolSlot> {
        if let Some(slot) = read(&self.routing).nodes.iter().find(|s| s.addr == addr) {
            return slot.clone();
        }
        lock(&self.pool)
            .entry(addr.to_owned())
            .or_insert_with(|| Arc::new(PoolSlot::new(addr, None)))
            .clone()
    }
    /// A live connection to `slot`'s address, opening one if needed. A recent failure is
    /// returned as it is (see [`FAILURE_HOLD`]).
    async fn connection(&self, slot: &Arc<PoolSlot>) -> Result<Arc<Connection>, ClientError> {
        match pooled(slot) {
            Some(conn) => Ok(conn),
            None => self.connect_slot(slot, FAILURE_HOLD).await,
        }
    }

    /// [`Shared::connection`], but a failed attempt is retried however recent it is.
    async fn connection_fresh(&self, slot: &Arc<PoolSlot>) -> Result<Arc<Connection>, ClientError> {
        match pooled(slot) {
            Some(conn) => Ok(conn),
            None => self.connect_slot(slot, Duration::ZERO).await,
        }
    }

    /// The slow path of [`Shared::connection`]. Boxed, as are the other rarely taken paths
    /// below: a connect future is kilobytes, and unboxed it would be part of every
    /// request's future, which is allocated and moved once per request.
    fn connect_slot<'a>(
        &'a self,
        slot: &'a Arc<PoolSlot>,
        hold: Duration,
    ) -> BoxFuture<'a, Result<Arc<Connection>, ClientError>> {
        Box::pin(async move {
            let mut slot = slot.clone();
            // Two rounds: the pooled connection may turn out dead, then one new attempt.
            for _ in 0..2 {
                match slot.cell.get_or_init(|| self.open(&slot.addr)).await {
                    Ok(conn) if !conn.is_closed() => return Ok(conn.clone()),
                    Err((err, at)) if at.elapsed() < hold => return Err(err.clone()),
                    _ => {}
                }
                slot = self.retire(&slot);
            }
            Err(ClientError::Disconnected {
                addr: slot.addr.clone(),
                reason: "the node closed a new connection at once; check the node's log".into(),
            })
        })
    }

    /// Replace `old` (a dead connection, or an old failure) in the pool and in the routing
    /// snapshot with a fresh slot for its address, unless someone already did; returns the
    /// address's current slot.
    fn retire(&self, old: &Arc<PoolSlot>) -> Arc<PoolSlot> {
        // The pool's lock is held until the snapshot is updated too (the same order as
        // `install`), so the two never disagree about an address.
        let mut pool = lock(&self.pool);
        let current = match pool.get(&old.addr) {
            Some(current) if !Arc::ptr_eq(current, old) => current.clone(),
            _ => {
                let fresh = Arc::new(PoolSlot::new(&old.addr, None));
                pool.insert(old.addr.clone(), fresh.clone());
                fresh
            }
        };
        let mut routing = write(&self.routing);
        if let Some(i) = routing.nodes.iter().position(|s| Arc::ptr_eq(s, old)) {
            let mut nodes = routing.nodes.clone();
            nodes[i] = current.clone();
            *routing = Arc::new(Routing {
                table: routing.table.clone(),
                nodes,
                leaders: routing.leaders.clone(),
            });
        }
        current
    }

    async fn open(&self, addr: &str) -> Attempt {
        let began = Instant::now();
        let mut opts = with_addr(&self.opts, addr);
        // The certificate must name the node the map puts at this address, not merely be
        // valid for the host: several nodes of a cluster share a host name.
        opts.expect_node = expected_node(self.routing().map(), addr);
        match Connection::connect_with(&opts, self.tls.clone()).await {
            Ok(conn) => {
                self.count_open(began.elapsed(), conn.resumed_tls());
                Ok(Arc::new(conn))
            }
            Err(err) => Err((err, Instant::now())),
        }
    }

    fn count_open(&self, took: Duration, resumed: bool) {
        self.opened.fetch_add(1, Ordering::Relaxed);
        if resumed {
            self.resumed.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.open_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The error for a request whose node at `addr` cannot be reached.
    fn node_down(&self, addr: &str, err: ClientError) -> ClientError {
        let routing = self.routing();
        let map = routing.map();
        match map.nodes.iter().find(|n| n.addr == addr) {
            Some(node) => ClientError::NodeDown {
                node: node.id.clone(),
                addr: addr.to_owned(),
                ranges: format_ranges(&map.ranges_of_node(&node.id)),
                reason: short_reason(&err),
            },
            // A redirect target the map does not know: nothing more to say about it.
            None => err,
        }
    }

    /// After `addr` could not be reached: refresh the map from another node, at most once
    /// per [`DOWN_REFRESH_EVERY`]. Returns whether the map changed meanwhile.
    fn refresh_after_failure<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let before = self.epoch();
            let mut last = self.refresh.lock().await;
            if self.epoch() != before {
                return true;
            }
            if last.is_some_and(|at| at.elapsed() < DOWN_REFRESH_EVERY) {
                return false;
            }
            let changed = self
                .fetch_newer(None, None, Some(addr))
                .await
                .unwrap_or(false);
            *last = Some(Instant::now());
            changed
        })
    }

    /// Make sure the cached map is at least at `epoch`, asking `prefer` first.
    fn refresh_to<'a>(&'a self, epoch: u64, prefer: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let _single_flight = self.refresh.lock().await;
            if self.epoch() >= epoch {
                return;
            }
            if let Err(err) = self.fetch_newer(Some(epoch), Some(prefer), None).await {
                tracing::debug!("no node served a map of epoch {epoch} or newer: {err}");
            }
        })
    }

    /// Fetch maps from `prefer`, then the cached map's nodes, then the seeds (never from
    /// `avoid`), installing any newer one, until one has at least epoch `want` (any answer,
    /// without `want`). Returns whether the cached map changed; an error if no node
    /// answered. Call with `refresh` locked.
    async fn fetch_newer(
        &self,
        want: Option<u64>,
        prefer: Option<&str>,
        avoid: Option<&str>,
    ) -> Result<bool, ClientError> {
        let routing = self.routing();
        let mut candidates: Vec<&str> = Vec::new();
        let addrs = prefer
            .into_iter()
            .chain(routing.map().nodes.iter().map(|n| n.addr.as_str()))
            .chain(self.seeds.iter().map(String::as_str));
        for addr in addrs {
            if Some(addr) != avoid && !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        let mut changed = false;
        let mut failure = None;
        for addr in candidates {
            let slot = self.slot_for(addr);
            let fetched = match self.connection(&slot).await {
                Ok(conn) => fetch_map(&conn).await,
                Err(err) => Err(err),
            };
            match fetched {
                Ok(map) => {
                    let epoch = map.epoch;
                    changed |= self.install(localize(map, addr));
                    if want.is_none_or(|want| epoch >= want) {
                        return Ok(changed);
                    }
                }
                Err(err) => {
                    tracing::debug!("cannot fetch the cluster map from {addr}: {err}");
                    failure.get_or_insert(err);
                }
            }
        }
        match failure {
            Some(err) if !changed => Err(err),
            _ => Ok(changed),
        }
    }

    /// Cache `map` if it is newer than the cached one; returns whether it was.
    fn install(&self, map: ClusterMap) -> bool {
        if map.epoch <= self.epoch() {
            return false;
        }
        let table = Arc::new(Table::new(map));
        let old = self.routing();
        let mut pool = lock(&self.pool);
        let routing = Arc::new(Routing::build(table, &mut pool, Some(&old)));
        let mut current = write(&self.routing);
        if routing.map().epoch <= current.map().epoch {
            return false;
        }
        tracing::debug!(
            "cluster map epoch {} -> {}",
            current.map().epoch,
            routing.map().epoch
        );
        *current = routing;
        true
    }
}

/// A cluster-wide scan that can be continued page after page; made by
/// [`ClusterClient::scanner`].
///
/// It asks one node per shard (the cached leader, or the first replica not marked down) and
/// keeps at most one page per node. Entries come out in key order without duplicates
/// (should two nodes both return a key, during a handover or because both hold its shard,
/// the first one seen wins), and each page's cursor is its last key, so a scan resumed from
/// it, in this process or another, continues exactly there. Pages are read with the
/// client's consistency.
#[derive(Debug)]
pub struct ClusterScan {
    client: ClusterClient,
    prefix: Bytes,
    /// The last key returned (or the starting cursor): where a restart resumes.
    after: Option<Bytes>,
    /// The merge over `nodes`; `None` until started, and after a restart.
    merge: Option<Merge>,
    nodes: Vec<ScanSource>,
    /// Epoch of the map the merge was started with; every page must carry it.
    epoch: u64,
    done: bool,
    /// Ask for keys and versions only (values empty, not loaded by the nodes).
    keys_only: bool,
}

/// One node a scan reads from, and the shards it is asked for.
#[derive(Debug, Clone)]
struct ScanSource {
    node: Arc<PoolSlot>,
    /// The first of its shards, for the retry policy.
    shard: Option<ShardInfo>,
    replicated: bool,
}

/// Why a round of page fetches could not be used.
enum Trouble {
    /// The node filtered its page with the map of another epoch.
    Epoch { addr: String, epoch: u64 },
    /// The node could not be reached, or answered the page request with an error (or the
    /// connection broke under it).
    Failed {
        addr: String,
        shard: Option<ShardInfo>,
        err: ClientError,
    },
}

impl ClusterScan {
    /// Ask for keys and versions only: every page's values are empty, and the nodes never
    /// load them. Set before the first page.
    pub fn keys_only(mut self, keys_only: bool) -> ClusterScan {
        self.keys_only = keys_only;
        self
    }

    /// The nodes to read the current map's shards from: per serving shard its target
    /// ([`Shared::target_of_shard`]), each node once.
    fn sources(&self, routing: &Routing) -> Vec<ScanSource> {
        let shared = &*self.client.shared;
        let nodes = &routing.map().nodes;
        let mut sources: Vec<ScanSource> = Vec::new();
        for &shard in &routing.table.serving_shards {
            let Some(node) = shared.target_of_shard(routing, shard) else {
                continue;
            };
            let route = &routing.table.shards[shard];
            let replicated = route.replicas.len() > 1;
            if let Some(source) = sources.iter_mut().find(|s| Arc::ptr_eq(&s.node, &node)) {
                source.replicated |= replicated;
                continue;
            }
            let info = ShardInfo {
                id: route.id,
                replicas: route
                    .replicas
                    .iter()
                    .filter_map(|&n| nodes.get(usize::from(n)).map(|n| n.id.clone()))
                    .collect(),
            };
            sources.push(ScanSource {
                node,
                shard: Some(info),
                replicated,
            });
        }
        sources
    }

    /// The next page of at most `limit` entries (0: the maximum, 1000); an empty page with
    /// no cursor once the scan is done.
    pub async fn next_page(&mut self, limit: u32) -> Result<ScanPage, ClientError> {
        let limit = match limit {
            0 => MAX_SCAN_PAGE,
            n => n.min(MAX_SCAN_PAGE),
        } as usize;
        let mut out = Vec::new();
        let mut retry = Retry::new(MAX_SCAN_RESTARTS, self.client.failover);
        let consistency = self.client.consistency;
        while !self.done {
            if self.merge.is_none() {
                let routing = self.client.shared.routing();
                self.epoch = routing.map().epoch;
                self.nodes = self.sources(&routing);
            }
            let merge = match &mut self.merge {
                Some(merge) => merge,
                None => self
                    .merge
                    .insert(Merge::new(self.nodes.len(), self.after.clone())),
            };
            let sources = match merge.fill(limit, &mut out) {
                Fill::Full => {
                    self.done = merge.exhausted();
                    break;
                }
                Fill::Done => {
                    self.done = true;
                    break;
                }
                Fill::Need(sources) => sources,
            };
            let want = u32::try_from(limit.saturating_sub(out.len()).max(1)).unwrap_or(1);
            let fetches = sources.iter().map(|&i| {
                let source = self.nodes[i].clone();
                let (client, prefix, cursor) = (&self.client, self.prefix.clone(), merge.cursor(i));
                let keys_only = self.keys_only;
                async move {
                    let timeout = client.attempt_timeout(source.replicated);
                    let node = &source.node;
                    let page = async {
                        let conn =
                            match tokio::time::timeout(timeout, client.shared.connection(node))
                                .await
                            {
                                Ok(conn) => conn?,
                                Err(_) => {
                                    return Err(ClientError::Timeout {
                                        addr: node.addr.clone(),
                                        after: timeout,
                                        waiting_for: "connect, TLS handshake and HELLO",
                                    })
                                }
                            };
                        let body = RequestBody::Scan {
                            prefix,
                            limit: want,
                            cursor,
                            keys_only,
                        };
                        scan_answer(conn.call_within(body, None, consistency, timeout).await?)
                    };
                    let result = page.await.map_err(|err| Trouble::Failed {
                        addr: node.addr.clone(),
                        shard: source.shard.clone(),
                        err,
                    });
                    (i, source, result)
                }
            });
            let mut trouble = None;
            for (i, source, result) in join_all(fetches).await {
                match result {
                    Ok(page) if page.epoch == self.epoch => {
                        merge.feed(i, page.entries, page.cursor).map_err(|e| {
                            ClientError::Protocol(format!(
                                "{} sent a bad scan page: {e}",
                                source.node.addr
                            ))
                        })?;
                    }
                    Ok(page) => {
                        trouble.get_or_insert(Trouble::Epoch {
                            addr: source.node.addr.clone(),
                            epoch: page.epoch,
                        });
                    }
                    Err(failed) => {
                        trouble.get_or_insert(failed);
                    }
                }
            }
            let Some(trouble) = trouble else { continue };
            // Start over after the last key returned, with whatever map and leaders are
            // current then.
            let shared = &*self.client.shared;
            match trouble {
                Trouble::Epoch { addr, epoch } => {
                    if !retry.remap() {
                        return Err(ClientError::Protocol(format!(
                            "scan: node {addr} filtered its page with cluster map epoch {epoch} \
                             while this client has epoch {}, still after {MAX_SCAN_RESTARTS} \
                             retries; the map is changing, retry the scan",
                            self.epoch
                        )));
                    }
                    retry.follow_map(shared, epoch, &addr).await;
                }
                // Where a MOVED or a hint points does not matter: the merge restarts over the
                // (refreshed) map's shards, at their (updated) leaders.
                Trouble::Failed { addr, shard, err } => {
                    retry.after(shared, &addr, shard.as_ref(), err).await?;
                }
            }
            if let Some(last) = out.last() {
                self.after = Some(last.key.clone());
            }
            self.merge = None;
        }
        if let Some(last) = out.last() {
            self.after = Some(last.key.clone());
        }
        Ok(ScanPage {
            entries: out,
            cursor: if self.done { None } else { self.after.clone() },
            epoch: self.epoch,
        })
    }
}

/// One node's side of a merge.
#[derive(Debug)]
struct Source {
    /// Cursor of the next page to ask for: the last one the node returned (or the scan's).
    cursor: Option<Bytes>,
    /// Entries fetched and not merged yet.
    buf: VecDeque<ScanEntry>,
    /// Whether the node may have keys after `buf`.
    more: bool,
}

/// What [`Merge::fill`] stopped at.
#[derive(Debug, PartialEq, Eq)]
enum Fill {
    /// The page is full.
    Full,
    /// These sources ran out of buffered entries and may have more: fetch their next pages
    /// ([`Merge::feed`]) before anything else can be emitted in order.
    Need(Vec<usize>),
    /// Every source is exhausted.
    Done,
}

/// A k-way merge of sorted, paged sources, without I/O: the caller fetches what
/// [`Merge::fill`] asks for, so the merge can be tested without nodes.
#[derive(Debug)]
struct Merge {
    sources: Vec<Source>,
    /// The head key of every source with a buffered entry, smallest first; equal keys come
    /// out in source order.
    heads: BinaryHeap<Reverse<(Bytes, usize)>>,
    /// Sources with nothing buffered that may have more.
    pending: usize,
    /// The last key emitted: nothing at or before it is emitted again, which drops
    /// duplicates and anything a node sends out of order.
    last: Option<Bytes>,
}

impl Merge {
    /// A merge of `sources` sources, each to be read after `after`.
    fn new(sources: usize, after: Option<Bytes>) -> Merge {
        Merge {
            sources: (0..sources)
                .map(|_| Source {
                    cursor: after.clone(),
                    buf: VecDeque::new(),
                    more: true,
                })
                .collect(),
            heads: BinaryHeap::with_capacity(sources),
            pending: sources,
            last: after,
        }
    }

    /// The cursor to fetch source `i`'s next page with.
    fn cursor(&self, i: usize) -> Option<Bytes> {
        self.sources.get(i).and_then(|s| s.cursor.clone())
    }

    /// Hand source `i` its next page. A page must make progress: a cursor needs entries and
    /// must come after the one asked with, or a faulty node could keep a scan going forever.
    fn feed(
        &mut self,
        i: usize,
        entries: Vec<ScanEntry>,
        cursor: Option<Bytes>,
    ) -> Result<(), String> {
        let Some(source) = self.sources.get_mut(i) else {
            return Err(format!("no scan source {i}"));
        };
        if let Some(next) = &cursor {
            if entries.is_empty() {
                return Err("a page with a cursor but no entries".into());
            }
            if source.cursor.as_ref().is_some_and(|asked| next <= asked) {
                return Err("a cursor that does not advance".into());
            }
        }
        let was_pending = source.buf.is_empty() && source.more;
        source.buf.extend(entries);
        source.more = cursor.is_some();
        if cursor.is_some() {
            source.cursor = cursor;
        }
        match source.buf.front() {
            Some(head) => {
                if was_pending {
                    self.heads.push(Reverse((head.key.clone(), i)));
                    self.pending -= 1;
                }
            }
            None => {
                if was_pending && !source.more {
                    self.pending -= 1;
                }
            }
        }
        Ok(())
    }

    /// Move entries into `out` in key order until it holds `limit`, a source must be
    /// fetched, or everything is merged.
    fn fill(&mut self, limit: usize, out: &mut Vec<ScanEntry>) -> Fill {
        loop {
            if out.len() >= limit {
                return Fill::Full;
            }
            if self.pending > 0 {
                let need = self
                    .sources
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.buf.is_empty() && s.more)
                    .map(|(i, _)| i)
                    .collect();
                return Fill::Need(need);
            }
            let Some(Reverse((_, i))) = self.heads.pop() else {
                return Fill::Done;
            };
            let source = &mut self.sources[i];
            let Some(entry) = source.buf.pop_front() else {
                continue;
            };
            match source.buf.front() {
                Some(next) => self.heads.push(Reverse((next.key.clone(), i))),
                None if source.more => self.pending += 1,
                None => {}
            }
            if self.last.as_ref().is_some_and(|last| entry.key <= *last) {
                continue;
            }
            self.last = Some(entry.key.clone());
            out.push(entry);
        }
    }

    /// Whether nothing is left to emit.
    fn exhausted(&self) -> bool {
        self.heads.is_empty() && self.pending == 0
    }
}

/// The map a node too old to serve one implies: it owns every slot. Epoch 0, so any real
/// map replaces it.
fn legacy_map(node: &str, addr: &str) -> ClusterMap {
    let name = if node.is_empty() { "node" } else { node };
    let mut map = ClusterMap::single("", name, addr);
    map.epoch = 0;
    map
}

/// The node's map, or for a node that does not know the request, the map it implies.
async fn fetch_map(conn: &Connection) -> Result<ClusterMap, ClientError> {
    match conn.cluster_map().await {
        Err(ClientError::Server(wire)) if wire.code == ErrorCode::UnknownOp => {
            Ok(legacy_map(conn.node(), conn.addr()))
        }
        other => other,
    }
}

/// `map` with every node address made dialable from here ([`dial_addr`]).
fn localize(mut map: ClusterMap, via: &str) -> ClusterMap {
    for node in &mut map.nodes {
        node.addr = dial_addr(&node.addr, via);
    }
    map
}

/// The address to dial for a node advertising `advertised`, learned through `via`. A node
/// listening on all interfaces advertises an unspecified IP (`0.0.0.0:7400`, `[::]:7400`),
/// which cannot be dialled; the host we reached the cluster through, with the advertised
/// port, is the best guess (right for a single node, and for nodes sharing a host).
fn dial_addr(advertised: &str, via: &str) -> String {
    match advertised.parse::<SocketAddr>() {
        Ok(sock) if sock.ip().is_unspecified() => match via.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() => format!("{host}:{}", sock.port()),
            _ => advertised.to_owned(),
        },
        _ => advertised.to_owned(),
    }
}

/// The live pooled connection of `slot`, if it has one: the hot path, with no await.
fn pooled(slot: &PoolSlot) -> Option<Arc<Connection>> {
    match slot.cell.get() {
        Some(Ok(conn)) if !conn.is_closed() => Some(conn.clone()),
        _ => None,
    }
}

/// A random, non-zero session id from the operating system's generator (through the ring
/// provider rustls already links). Should that fail, a hash of the time, the process and a
/// per-process counter keyed by std's random hasher: still distinct between clients, which
/// is all a session id must be (it is no credential; the node scopes sessions as it sees fit).
fn random_client_id() -> u64 {
    let mut bytes = [0u8; 8];
    let provider = rustls::crypto::ring::default_provider();
    let id = match provider.secure_random.fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            use std::hash::{BuildHasher, Hash, Hasher};
            static MADE: AtomicU64 = AtomicU64::new(0);
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            std::time::SystemTime::now().hash(&mut h);
            std::process::id().hash(&mut h);
            MADE.fetch_add(1, Ordering::Relaxed).hash(&mut h);
            h.finish()
        }
    };
    id.max(1)
}

/// The node identity the map gives the node at `addr`, if it names one there (a legacy map,
/// with no cluster name, names none).
fn expected_node(map: &ClusterMap, addr: &str) -> Option<ExpectedNode> {
    if map.cluster.is_empty() {
        return None;
    }
    map.nodes
        .iter()
        .find(|n| n.addr == addr)
        .map(|n| ExpectedNode {
            cluster: map.cluster.clone(),
            id: n.id.clone(),
        })
}

fn with_addr(opts: &ConnectOptions, addr: &str) -> ConnectOptions {
    let mut opts = opts.clone();
    addr.clone_into(&mut opts.addr);
    opts
}

/// Errors that say the node could not be reached (as opposed to refusing or failing the
/// request), so another node might answer.
fn is_unreachable(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Connect { .. }
            | ClientError::Timeout { .. }
            | ClientError::Disconnected { .. }
            | ClientError::Tls(_)
    )
}

/// The cause in `err`, without the address [`ClientError::NodeDown`] already names.
fn short_reason(err: &ClientError) -> String {
    match err {
        ClientError::Connect { reason, .. } | ClientError::Disconnected { reason, .. } => {
            reason.clone()
        }
        ClientError::Timeout {
            after, waiting_for, ..
        } => format!("no answer within {after:?} ({waiting_for})"),
        other => other.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; should it ever, the data is still sound.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_proto::SLOT_COUNT;

    fn entry(key: &str) -> ScanEntry {
        ScanEntry {
            key: Bytes::copy_from_slice(key.as_bytes()),
            version: 1,
            value: Bytes::from_static(b"v"),
        }
    }

    /// A node holding sorted `keys`: the page of at most `limit` keys after `cursor`.
    fn page(
        keys: &[&str],
        limit: usize,
        cursor: Option<&Bytes>,
    ) -> (Vec<ScanEntry>, Option<Bytes>) {
        let after: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| cursor.is_none_or(|c| k.as_bytes() > &c[..]))
            .collect();
        let entries: Vec<ScanEntry> = after.iter().take(limit).map(|k| entry(k)).collect();
        let more = after.len() > limit;
        let cursor = more
            .then(|| entries.last().map(|e| e.key.clone()))
            .flatten();
        (entries, cursor)
    }

    /// What `ClusterScan::next_page` does, without the network: one page of `limit` from
    /// `merge` over `nodes`, fetching `page_size` per node; returns the keys, the cursor and
    /// the number of fetches.
    fn next_page(
        merge: &mut Merge,
        nodes: &[Vec<&str>],
        page_size: usize,
        limit: usize,
    ) -> (Vec<String>, Option<Bytes>, usize) {
        let mut out = Vec::new();
        let mut fetches = 0;
        let done = loop {
            match merge.fill(limit, &mut out) {
                Fill::Full => break merge.exhausted(),
                Fill::Done => break true,
                Fill::Need(sources) => {
                    for i in sources {
                        let (entries, cursor) =
                            page(&nodes[i], page_size, merge.cursor(i).as_ref());
                        merge.feed(i, entries, cursor).expect("a good page");
                        fetches += 1;
                    }
                }
            }
        };
        let keys: Vec<String> = out
            .iter()
            .map(|e| String::from_utf8_lossy(&e.key).into_owned())
            .collect();
        let cursor = if done {
            None
        } else {
            out.last().map(|e| e.key.clone())
        };
        (keys, cursor, fetches)
    }

    fn nodes() -> Vec<Vec<&'static str>> {
        vec![
            vec!["a", "d", "g", "j", "m"],
            vec!["b", "e", "h", "k"],
            // "e" twice: a key both sides of a handover return.
            vec!["c", "e", "f", "i", "l", "n", "o"],
        ]
    }

    fn all_keys() -> Vec<String> {
        let mut keys: Vec<String> = nodes().concat().iter().map(|k| k.to_string()).collect();
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn merge_emits_key_order_without_duplicates_across_pages() {
        let nodes = nodes();
        for page_size in [1, 2, 3, 100] {
            for limit in [1, 2, 4, 5, 15, 1000] {
                // One persistent merge, page after page.
                let mut merge = Merge::new(nodes.len(), None);
                let mut seen = Vec::new();
                let mut pages = 0;
                loop {
                    let (keys, cursor, _) = next_page(&mut merge, &nodes, page_size, limit);
                    assert!(keys.len() <= limit);
                    pages += 1;
                    seen.extend(keys);
                    if cursor.is_none() {
                        break;
                    }
                    assert!(pages < 100, "the scan ends");
                }
                assert_eq!(seen, all_keys(), "page size {page_size}, limit {limit}");

                // A fresh merge per page, resumed from the cursor (how the CLI's --cursor and
                // separate `scan` calls work).
                let mut seen = Vec::new();
                let mut cursor = None;
                loop {
                    let mut merge = Merge::new(nodes.len(), cursor.clone());
                    let (keys, next, _) = next_page(&mut merge, &nodes, page_size, limit);
                    if let (Some(c), Some(first)) = (&cursor, keys.first()) {
                        assert!(first.as_bytes() > &c[..], "resumes strictly after");
                    }
                    seen.extend(keys);
                    match next {
                        Some(next) => cursor = Some(next),
                        None => break,
                    }
                }
                assert_eq!(seen, all_keys(), "page size {page_size}, limit {limit}");
            }
        }
    }

    #[test]
    fn merge_fetches_a_node_only_when_its_page_ran_out() {
        // Node 0 holds the first keys, node 1 only later ones: node 1's first page lasts.
        let nodes = vec![vec!["a1", "a2", "a3", "a4", "a5", "a6"], vec!["z1", "z2"]];
        let mut merge = Merge::new(2, None);
        let (keys, cursor, fetches) = next_page(&mut merge, &nodes, 2, 5);
        assert_eq!(keys, ["a1", "a2", "a3", "a4", "a5"]);
        assert_eq!(cursor, Some(Bytes::from_static(b"a5")));
        // 3 pages from node 0 (a1-a2, a3-a4, a5-a6), 1 from node 1.
        assert_eq!(fetches, 4);
        let (keys, cursor, fetches) = next_page(&mut merge, &nodes, 2, 5);
        assert_eq!(keys, ["a6", "z1", "z2"]);
        assert_eq!(cursor, None);
        assert_eq!(fetches, 0, "everything was buffered");
    }

    #[test]
    fn a_full_page_that_ends_the_scan_has_no_cursor() {
        let nodes = vec![vec!["a", "c"], vec!["b"]];
        let mut merge = Merge::new(2, None);
        let (keys, cursor, _) = next_page(&mut merge, &nodes, 10, 3);
        assert_eq!(keys, ["a", "b", "c"]);
        assert_eq!(cursor, None);
        // No nodes serving: nothing at all.
        let mut merge = Merge::new(0, None);
        assert_eq!(next_page(&mut merge, &[], 10, 3), (vec![], None, 0));
    }

    #[test]
    fn merge_refuses_pages_that_do_not_progress() {
        let mut merge = Merge::new(1, Some(Bytes::from_static(b"m")));
        assert!(merge
            .feed(0, Vec::new(), Some(Bytes::from_static(b"z")))
            .is_err());
        assert!(merge
            .feed(0, vec![entry("n")], Some(Bytes::from_static(b"m")))
            .is_err());
        assert!(merge.feed(7, Vec::new(), None).is_err());
        // Keys at or before the cursor, or out of order, are dropped rather than emitted.
        let mut merge = Merge::new(1, Some(Bytes::from_static(b"m")));
        merge
            .feed(
                0,
                vec![entry("a"), entry("p"), entry("n"), entry("q")],
                None,
            )
            .expect("a page");
        let mut out = Vec::new();
        assert_eq!(merge.fill(10, &mut out), Fill::Done);
        let keys: Vec<&[u8]> = out.iter().map(|e| &e.key[..]).collect();
        assert_eq!(keys, [&b"p"[..], b"q"]);
    }

    #[test]
    fn routing_table_follows_the_map_and_keeps_pooled_connections() {
        let map = ClusterMap::even(
            "c",
            &[
                ("n1".into(), "10.0.0.1:7400".into()),
                ("n2".into(), "10.0.0.2:7400".into()),
                ("n3".into(), "10.0.0.3:7400".into()),
            ],
        );
        let mut pool = HashMap::new();
        let old = Arc::new(PoolSlot::new("10.0.0.2:7400", None));
        pool.insert("10.0.0.2:7400".to_owned(), old.clone());
        pool.insert(
            "10.9.9.9:7400".to_owned(),
            Arc::new(PoolSlot::new("10.9.9.9:7400", None)),
        );
        let routing = Routing::build(Arc::new(Table::new(map.clone())), &mut pool, None);
        assert_eq!(routing.table.serving_nodes, [0, 1, 2]);
        assert_eq!(routing.table.sole, None);
        assert!(
            Arc::ptr_eq(&routing.nodes[1], &old),
            "pooled connection kept"
        );
        assert!(!pool.contains_key("10.9.9.9:7400"), "stale address dropped");
        assert_eq!(pool.len(), 3);
        for slot in (0..SLOT_COUNT).step_by(97).chain([0, SLOT_COUNT - 1]) {
            let expect = map.owner_of_slot(slot).expect("owned");
            assert_eq!(
                routing.owner(slot).expect("routed").addr,
                expect.addr,
                "{slot}"
            );
        }
        // Keys sharing a hash tag go to the same node.
        let a = routing
            .owner(hash_slot(b"{user42}.profile"))
            .expect("routed");
        let b = routing.owner(hash_slot(b"{user42}.cart")).expect("routed");
        assert!(Arc::ptr_eq(a, b));

        // A node that holds no slots is pooled but not scanned.
        let grown = map.with_node("n4", "10.0.0.4:7400");
        let routing = Routing::build(Arc::new(Table::new(grown)), &mut pool, None);
        assert_eq!(routing.table.serving_nodes, [0, 1, 2]);
        assert_eq!(routing.nodes.len(), 4);
    }

    #[test]
    fn legacy_nodes_own_every_slot_at_epoch_zero() {
        let map = legacy_map("n1", "127.0.0.1:7400");
        assert_eq!(map.epoch, 0);
        let mut pool = HashMap::new();
        let routing = Routing::build(Arc::new(Table::new(map)), &mut pool, None);
        assert_eq!(routing.table.serving_nodes, [0]);
        assert_eq!(routing.table.sole, Some(0));
        assert!((0..SLOT_COUNT).all(|s| routing.table.slot_shards[usize::from(s)] == 0));
        assert_eq!(routing.map().nodes[0].addr, "127.0.0.1:7400");
        assert_eq!(legacy_map("", "h:1").nodes[0].id, "node");
    }

    #[test]
    fn unspecified_addresses_take_the_contacted_host() {
        assert_eq!(dial_addr("0.0.0.0:7401", "10.1.2.3:7400"), "10.1.2.3:7401");
        assert_eq!(dial_addr("[::]:7401", "[::1]:7400"), "[::1]:7401");
        assert_eq!(dial_addr("[::]:7401", "db.example:7400"), "db.example:7401");
        assert_eq!(
            dial_addr("0.0.0.0:7401", "localhost:7400"),
            "localhost:7401"
        );
        // Real addresses and names are dialled as advertised.
        assert_eq!(dial_addr("10.0.0.5:7400", "10.1.2.3:7400"), "10.0.0.5:7400");
        assert_eq!(dial_addr("node2.local:7400", "h:1"), "node2.local:7400");
        // Nothing to substitute with: keep it.
        assert_eq!(dial_addr("0.0.0.0:7401", "nohost"), "0.0.0.0:7401");

        let map = localize(
            ClusterMap::single("c", "n1", "0.0.0.0:7400"),
            "127.0.0.1:7400",
        );
        assert_eq!(map.nodes[0].addr, "127.0.0.1:7400");
    }

    /// The client against in-process fake nodes that speak the protocol (plaintext) and
    /// route like real ones: MOVED for slots they do not serve under their own map view.
    mod network {
        use std::collections::BTreeMap;
        use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};

        use futures_util::{SinkExt, StreamExt};
        use skv_proto::{
            FrameCodec, Request, RequestBody, Response, ResponseBody, TokenPlacement, WireError,
            DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
        };
        use tokio::net::{TcpListener, TcpStream};
        use tokio_util::codec::Framed;

        use super::*;
        use crate::config::Security;

        #[derive(Debug, Default)]
        struct Fake {
            name: String,
            addr: String,
            /// This node's view of the map; `None`: a node too old to serve one.
            map: Mutex<Option<ClusterMap>>,
            data: Mutex<BTreeMap<Bytes, (u64, Bytes)>>,
            /// Answer this many writes with TRYAGAIN first.
            try_again: AtomicU32,
            /// Close the connection instead of answering this many requests (after applying
            /// writes, as a node that crashed after its write would).
            drop_after_apply: AtomicU32,
            /// Report this epoch in scan pages instead of the map's.
            scan_epoch: Mutex<Option<u64>>,
            /// A replica that does not lead: writes and linearizable reads of the shards it
            /// holds are answered NOT_LEADER with `hint`.
            follower: AtomicBool,
            hint: Mutex<Option<(String, String)>>,
            /// Answer writes and linearizable reads with `unavailable` (no quorum).
            no_quorum: AtomicBool,
            /// Never answer data requests (a hung node whose connections stay open).
            silent: AtomicBool,
            /// Every data request: the op, its session and its consistency.
            seen: Mutex<Vec<(&'static str, Option<Session>, Consistency)>>,
            accepted: AtomicUsize,
            writes: AtomicUsize,
            moved: AtomicUsize,
            not_leader: AtomicUsize,
        }

        impl Fake {
            /// Whether this node answers linearizably for `shard` (else a stale reader of it).
            fn leads(&self) -> bool {
                !self.follower.load(Ordering::SeqCst)
            }

            fn answer(&self, request: Request) -> Option<ResponseBody> {
                let Request {
                    body,
                    session,
                    consistency,
                    ..
                } = request;
                let op = match &body {
                    RequestBody::Get { .. } => Some("get"),
                    RequestBody::Put { .. } => Some("put"),
                    RequestBody::Delete { .. } => Some("delete"),
                    RequestBody::Cas { .. } => Some("cas"),
                    RequestBody::Scan { .. } => Some("scan"),
                    _ => None,
                };
                if let Some(op) = op {
                    lock(&self.seen).push((op, session, consistency));
                }
                let map = lock(&self.map).clone();
                let key = body.key().cloned();
                let is_write = matches!(
                    body,
                    RequestBody::Put { .. } | RequestBody::Delete { .. } | RequestBody::Cas { .. }
                );
                let linearizable = is_write || consistency == Consistency::Linearizable;
                if let (Some(map), Some(key)) = (&map, &key) {
                    let slot = hash_slot(key);
                    let shard = map.shard_of_slot(slot).expect("owned");
                    let owner = map.owner_of_slot(slot).expect("owned");
                    if !shard.replicas.contains(&self.name) {
                        self.moved.fetch_add(1, Ordering::SeqCst);
                        return Some(ResponseBody::Moved {
                            slot,
                            epoch: map.epoch,
                            node: owner.id.clone(),
                            addr: owner.addr.clone(),
                        });
                    }
                    if linearizable && !self.leads() {
                        self.not_leader.fetch_add(1, Ordering::SeqCst);
                        return Some(ResponseBody::NotLeader {
                            shard: shard.id,
                            epoch: map.epoch,
                            leader: lock(&self.hint).clone(),
                        });
                    }
                }
                if linearizable && op.is_some() && self.no_quorum.load(Ordering::SeqCst) {
                    return Some(ResponseBody::Error(WireError::new(
                        ErrorCode::Unavailable,
                        "no quorum",
                    )));
                }

                if is_write
                    && self
                        .try_again
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                {
                    return Some(ResponseBody::Error(WireError::new(
                        ErrorCode::TryAgain,
                        "slot moving",
                    )));
                }
                let answer = match body {
                    RequestBody::Ping => ResponseBody::Pong,
                    RequestBody::ClusterMap => match &map {
                        Some(map) => ResponseBody::Map {
                            epoch: map.epoch,
                            json: Bytes::from(map.to_json()),
                        },
                        None => ResponseBody::Error(WireError::new(ErrorCode::UnknownOp, "?")),
                    },
                    RequestBody::Get { key } => match lock(&self.data).get(&key) {
                        Some((version, value)) => ResponseBody::Value {
                            version: *version,
                            value: value.clone(),
                        },
                        None => ResponseBody::NotFound,
                    },
                    RequestBody::Put { key, value } => {
                        self.writes.fetch_add(1, Ordering::SeqCst);
                        let mut data = lock(&self.data);
                        let version = data.get(&key).map_or(1, |(v, _)| v + 1);
                        data.insert(key, (version, value));
                        ResponseBody::Written { version }
                    }
                    RequestBody::Delete { key } => {
                        self.writes.fetch_add(1, Ordering::SeqCst);
                        let existed = lock(&self.data).remove(&key).is_some();
                        ResponseBody::Deleted { existed }
                    }
                    RequestBody::Cas {
                        key,
                        expect_version,
                        value,
                    } => {
                        self.writes.fetch_add(1, Ordering::SeqCst);
                        let mut data = lock(&self.data);
                        let current = data.get(&key).map_or(0, |(v, _)| *v);
                        if current == expect_version {
                            data.insert(key, (current + 1, value));
                            ResponseBody::Written {
                                version: current + 1,
                            }
                        } else {
                            ResponseBody::CasConflict { current }
                        }
                    }
                    RequestBody::Scan {
                        prefix,
                        limit,
                        cursor,
                        ..
                    } => {
                        // The shards it holds (stale) or leads (linearizable).
                        let serves = consistency == Consistency::Stale || self.leads();
                        let mine = |k: &Bytes| {
                            map.as_ref().is_none_or(|m| {
                                serves
                                    && m.shard_of_slot(hash_slot(k))
                                        .is_some_and(|s| s.replicas.contains(&self.name))
                            })
                        };
                        let keys: Vec<(Bytes, (u64, Bytes))> = lock(&self.data)
                            .iter()
                            .filter(|(k, _)| k.starts_with(&prefix) && mine(k))
                            .filter(|(k, _)| cursor.as_ref().is_none_or(|c| *k > c))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let limit = limit.max(1) as usize;
                        let entries: Vec<ScanEntry> = keys
                            .iter()
                            .take(limit)
                            .map(|(key, (version, value))| ScanEntry {
                                key: key.clone(),
                                version: *version,
                                value: value.clone(),
                            })
                            .collect();
                        let cursor = (keys.len() > limit)
                            .then(|| entries.last().map(|e| e.key.clone()))
                            .flatten();
                        let skew = *lock(&self.scan_epoch);
                        ResponseBody::ScanPage {
                            entries,
                            cursor,
                            epoch: skew.or(map.as_ref().map(|m| m.epoch)).unwrap_or(0),
                        }
                    }
                    other => panic!("the fake does not do {other:?}"),
                };
                if self
                    .drop_after_apply
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return None;
                }
                Some(answer)
            }

            async fn serve(self: Arc<Self>, socket: TcpStream) {
                let mut framed = Framed::new(socket, FrameCodec::new(DEFAULT_MAX_FRAME));
                while let Some(Ok(payload)) = framed.next().await {
                    let request = Request::decode(payload).expect("a request");
                    let body = match &request.body {
                        RequestBody::Hello { .. } => ResponseBody::HelloOk {
                            version: PROTOCOL_VERSION,
                            max_frame: DEFAULT_MAX_FRAME as u32,
                            node: self.name.clone(),
                            token: TokenPlacement::None,
                        },
                        // Hung: the request is read, and never answered.
                        body if body.key().is_some() && self.silent.load(Ordering::SeqCst) => {
                            let op = if matches!(body, RequestBody::Get { .. }) {
                                "get"
                            } else {
                                "write"
                            };
                            lock(&self.seen).push((op, request.session, request.consistency));
                            continue;
                        }
                        _ => match self.answer(request.clone()) {
                            Some(answer) => answer,
                            None => return,
                        },
                    };
                    let response = Response {
                        id: request.id,
                        body,
                    };
                    if framed.send(&response).await.is_err() {
                        return;
                    }
                }
            }
        }

        /// Fake nodes n1..nN; every node's map view is `map(addrs)`.
        async fn cluster(
            n: usize,
            map: impl Fn(&[(String, String)]) -> Option<ClusterMap>,
        ) -> (Vec<Arc<Fake>>, Vec<tokio::task::JoinHandle<()>>) {
            let mut listeners = Vec::new();
            for i in 0..n {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr").to_string();
                listeners.push((format!("n{}", i + 1), addr, listener));
            }
            let ids: Vec<(String, String)> = listeners
                .iter()
                .map(|(id, addr, _)| (id.clone(), addr.clone()))
                .collect();
            let mut fakes = Vec::new();
            let mut tasks = Vec::new();
            for (name, addr, listener) in listeners {
                let fake = Arc::new(Fake {
                    name,
                    addr,
                    map: Mutex::new(map(&ids)),
                    ..Fake::default()
                });
                fakes.push(fake.clone());
                tasks.push(tokio::spawn(async move {
                    while let Ok((socket, _)) = listener.accept().await {
                        fake.accepted.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(fake.clone().serve(socket));
                    }
                }));
            }
            (fakes, tasks)
        }

        fn even(ids: &[(String, String)]) -> Option<ClusterMap> {
            Some(ClusterMap::even("c", ids))
        }

        async fn client(fake: &Fake) -> ClusterClient {
            let mut opts = ConnectOptions::new(fake.addr.clone(), Security::Plaintext);
            opts.connect_timeout = Duration::from_secs(2);
            opts.request_timeout = Duration::from_secs(5);
            ClusterClient::connect(opts, Vec::new())
                .await
                .expect("connect")
        }

        /// A key whose slot `node` serves in `map`.
        fn key_on(map: &ClusterMap, node: &str, tag: &str) -> Bytes {
            (0..)
                .map(|i| Bytes::from(format!("{tag}/{i}")))
                .find(|k| {
                    map.owner_of_slot(hash_slot(k))
                        .is_some_and(|o| o.id == node)
                })
                .expect("some key")
        }

        #[tokio::test]
        async fn requests_go_to_the_owner_and_one_connection_per_node_opens() {
            let (fakes, _tasks) = cluster(3, even).await;
            // Through the last node: any node is a good first contact.
            let client = client(&fakes[2]).await;
            assert_eq!(client.serving_nodes(), 3);
            let puts = (0..300).map(|i| {
                let client = client.clone();
                async move { client.put(format!("k/{i}"), "v").await }
            });
            for result in join_all(puts).await {
                assert_eq!(result.expect("put"), 1);
            }
            let map = client.map();
            for fake in &fakes {
                assert_eq!(fake.moved.load(Ordering::SeqCst), 0, "no redirects");
                assert_eq!(fake.accepted.load(Ordering::SeqCst), 1, "{}", fake.name);
                for key in lock(&fake.data).keys() {
                    let owner = map.owner_of_slot(hash_slot(key)).expect("owned");
                    assert_eq!(owner.id, fake.name);
                }
            }
            let got = client.get("k/7").await.expect("get");
            assert_eq!(got, Some((1, Bytes::from_static(b"v"))));
            assert_eq!(client.get("k/none").await.expect("get"), None);

            // The merged scan: every key once, in order, paged by cursor.
            let mut all = Vec::new();
            let mut cursor = None;
            loop {
                let page = client.scan("k/", 7, cursor).await.expect("scan");
                assert!(page.entries.len() <= 7);
                all.extend(page.entries.into_iter().map(|e| e.key));
                match page.cursor {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            let mut expect: Vec<Bytes> = (0..300).map(|i| Bytes::from(format!("k/{i}"))).collect();
            expect.sort();
            assert_eq!(all, expect);
            let pings = client.ping_all().await;
            assert!(pings.iter().all(|(_, rtt)| rtt.is_ok()), "{pings:?}");
        }

        #[tokio::test]
        async fn moved_answers_refresh_the_map_and_are_followed() {
            let (fakes, _tasks) = cluster(2, even).await;
            let client = client(&fakes[0]).await;
            let old = client.map();
            let key = key_on(&old, "n1", "m");
            client.put(key.clone(), "before").await.expect("put");
            // Move n1's slots to n2 with their keys; both nodes learn epoch 2.
            let moved = old.with_slots_moved(&old.slots_of_node("n1"), 2);
            *lock(&fakes[1].data) = lock(&fakes[0].data).clone();
            for fake in &fakes {
                *lock(&fake.map) = Some(moved.clone());
            }
            let got = client.get(key.clone()).await.expect("get after the move");
            assert_eq!(got.map(|(_, v)| v), Some(Bytes::from_static(b"before")));
            assert_eq!(
                client.epoch(),
                2,
                "the MOVED answer's newer map was fetched"
            );
            assert_eq!(fakes[0].moved.load(Ordering::SeqCst), 1);
            // From now on straight to the new owner.
            client.put(key, "after").await.expect("put");
            assert_eq!(fakes[0].moved.load(Ordering::SeqCst), 1);

            // Nodes that keep pointing at each other: a clear error, not a hang.
            let mut a = moved.clone();
            a.epoch = 1;
            let b = a.with_slots_moved(&a.slots_of_node("n2"), 1);
            *lock(&fakes[0].map) = Some(a);
            *lock(&fakes[1].map) = Some(b);
            let err = client.put("loop", "x").await.expect_err("a loop");
            assert!(err.to_string().contains("redirect loop"), "{err}");
        }

        #[tokio::test]
        async fn try_again_is_waited_out() {
            let (fakes, _tasks) = cluster(1, even).await;
            let client = client(&fakes[0]).await;
            fakes[0].try_again.store(4, Ordering::SeqCst);
            let began = Instant::now();
            assert_eq!(client.put("k", "v").await.expect("put"), 1);
            // 2 + 4 + 8 + 16 ms of backoff.
            assert!(
                began.elapsed() >= Duration::from_millis(30),
                "{:?}",
                began.elapsed()
            );
            assert_eq!(fakes[0].writes.load(Ordering::SeqCst), 1);
        }

        /// The sessions `fake` saw for `op`.
        fn sessions(fake: &Fake, op: &str) -> Vec<Option<Session>> {
            lock(&fake.seen)
                .iter()
                .filter(|(o, _, _)| *o == op)
                .map(|(_, s, _)| *s)
                .collect()
        }

        fn replicated(ids: &[(String, String)]) -> Option<ClusterMap> {
            Some(ClusterMap::even_replicated("c", ids, ids.len()).expect("a map"))
        }

        /// A failover short enough for tests that wait for the deadline.
        fn quick() -> Failover {
            Failover {
                attempt_timeout: Duration::from_secs(2),
                deadline: Duration::from_millis(400),
                down_for: Duration::from_secs(5),
            }
        }

        #[tokio::test]
        async fn a_write_whose_answer_was_lost_is_resent_with_its_session() {
            let (fakes, _tasks) = cluster(1, even).await;
            let client = client(&fakes[0]).await;
            fakes[0].drop_after_apply.store(1, Ordering::SeqCst);
            // The first answer is lost; the client resends on a new connection.
            assert_eq!(client.put("k", "v").await.expect("put"), 2);
            assert_eq!(fakes[0].writes.load(Ordering::SeqCst), 2, "sent twice");
            let first = sessions(&fakes[0], "put");
            assert_eq!(first.len(), 2);
            let session = first[0].expect("a write carries a session");
            assert_eq!(first[1], Some(session), "the same (client, seq) both times");
            assert_eq!(session.client, client.session_id());
            assert_eq!(session.seq, 1, "writes are numbered from 1");

            // Other writes, from this client and its clones: each its own number.
            client.delete("k").await.expect("delete");
            client.cas("k", 0, "w").await.expect("cas");
            let puts = (0..20).map(|i| {
                let clone = client.clone();
                async move { clone.put(format!("p/{i}"), "v").await }
            });
            for result in join_all(puts).await {
                result.expect("put");
            }
            let mut all: Vec<Session> = ["put", "delete", "cas"]
                .iter()
                .flat_map(|op| sessions(&fakes[0], op))
                .map(|s| s.expect("a session"))
                .collect();
            assert_eq!(all.len(), 2 + 1 + 1 + 20);
            all.dedup(); // the resent put
            all.sort_by_key(|s| s.seq);
            let seqs: Vec<u64> = all.iter().map(|s| s.seq).collect();
            assert_eq!(seqs, (1..=23).collect::<Vec<u64>>(), "never reused");
            assert!(all.iter().all(|s| s.client == client.session_id()));

            // A fresh client is another session; reads carry none.
            let other = client.fresh().expect("fresh");
            assert_ne!(other.session_id(), client.session_id());
            other.put("k", "x").await.expect("put");
            let last = sessions(&fakes[0], "put")
                .pop()
                .flatten()
                .expect("a session");
            assert_eq!(last.client, other.session_id());
            assert_eq!(last.seq, 1);
            fakes[0].drop_after_apply.store(1, Ordering::SeqCst);
            let got = client.get("k").await.expect("the read is resent");
            assert_eq!(got.map(|(v, _)| v), Some(2));
            assert!(sessions(&fakes[0], "get").iter().all(Option::is_none));
        }

        #[tokio::test]
        async fn not_leader_hints_are_followed_and_remembered() {
            let (fakes, _tasks) = cluster(3, replicated).await;
            for follower in &fakes[1..] {
                follower.follower.store(true, Ordering::SeqCst);
                *lock(&follower.hint) = Some(("n1".into(), fakes[0].addr.clone()));
            }
            let client = client(&fakes[1]).await;
            let map = client.map();
            // Shard 2's first replica is n2, a follower that names n1.
            let key = key_on(&map, "n2", "h");
            assert_eq!(client.cached_leader(2).as_deref(), Some("n2"));
            assert_eq!(client.put(key.clone(), "v").await.expect("put"), 1);
            assert_eq!(client.cached_leader(2).as_deref(), Some("n1"));
            assert_eq!(fakes[1].not_leader.load(Ordering::SeqCst), 1);
            // Both attempts were the same write.
            let at_n2 = sessions(&fakes[1], "put");
            assert_eq!(at_n2.len(), 1);
            assert_eq!(sessions(&fakes[0], "put"), at_n2);
            // From now on straight to n1.
            client.put(key.clone(), "w").await.expect("put");
            let got = client.get(key).await.expect("get");
            assert_eq!(got.map(|(v, _)| v), Some(2));
            assert_eq!(fakes[1].not_leader.load(Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn without_a_hint_the_next_replica_is_tried() {
            let (fakes, _tasks) = cluster(3, replicated).await;
            // An election: n1 and n2 know no leader; n3 has won.
            for follower in &fakes[..2] {
                follower.follower.store(true, Ordering::SeqCst);
            }
            let client = client(&fakes[0]).await;
            let key = key_on(&client.map(), "n1", "e");
            assert_eq!(client.put(key, "v").await.expect("put"), 1);
            assert_eq!(client.cached_leader(1).as_deref(), Some("n3"));
            assert_eq!(fakes[0].not_leader.load(Ordering::SeqCst), 1);
            assert_eq!(fakes[1].not_leader.load(Ordering::SeqCst), 1);
            assert_eq!(fakes[2].writes.load(Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn a_leader_that_refuses_connections_fails_over_to_another_replica() {
            let (fakes, tasks) = cluster(3, replicated).await;
            let client = client(&fakes[1]).await;
            let key = key_on(&client.map(), "n1", "f");
            client.put(key.clone(), "v").await.expect("put");
            assert_eq!(fakes[0].writes.load(Ordering::SeqCst), 1);
            // n1 dies (its listener closes, its connections drop); n2 is elected and n3
            // knows it.
            tasks[0].abort();
            fakes[0].drop_after_apply.store(u32::MAX, Ordering::SeqCst);
            fakes[2].follower.store(true, Ordering::SeqCst);
            *lock(&fakes[2].hint) = Some(("n2".into(), fakes[1].addr.clone()));
            assert_eq!(client.put(key.clone(), "w").await.expect("failed over"), 1);
            assert_eq!(fakes[1].writes.load(Ordering::SeqCst), 1);
            assert_eq!(client.cached_leader(1).as_deref(), Some("n2"));
            // n1 is not dialled again for every request.
            let accepted = fakes[0].accepted.load(Ordering::SeqCst);
            for i in 0..5 {
                client.put(key.clone(), format!("x{i}")).await.expect("put");
            }
            assert_eq!(fakes[0].accepted.load(Ordering::SeqCst), accepted);
        }

        #[tokio::test]
        async fn a_leader_that_stops_answering_is_timed_out_and_failed_over() {
            let (fakes, _tasks) = cluster(3, replicated).await;
            let client = client(&fakes[0]).await.with_failover(Failover {
                attempt_timeout: Duration::from_millis(200),
                ..Failover::default()
            });
            let key = key_on(&client.map(), "n1", "t");
            client.put(key.clone(), "v").await.expect("put");
            // n1 hangs with its connection open; n3 takes over and n2 knows it.
            fakes[0].silent.store(true, Ordering::SeqCst);
            fakes[1].follower.store(true, Ordering::SeqCst);
            *lock(&fakes[1].hint) = Some(("n3".into(), fakes[2].addr.clone()));
            assert_eq!(client.put(key.clone(), "w").await.expect("failed over"), 1);
            assert_eq!(client.cached_leader(1).as_deref(), Some("n3"));
            // The write that timed out at n1 and the one n3 applied are the same write.
            let hung: Vec<_> = lock(&fakes[0].seen)
                .iter()
                .filter(|(op, _, _)| *op == "write")
                .map(|(_, s, _)| *s)
                .collect();
            assert_eq!(hung.len(), 1);
            assert_eq!(sessions(&fakes[2], "put"), hung);
            // Reads skip the hung node too.
            let got = client.get(key).await.expect("get");
            assert_eq!(got.map(|(v, _)| v), Some(1));
        }

        #[tokio::test]
        async fn a_shard_without_quorum_is_a_clear_error_but_stale_reads_work() {
            let (fakes, _tasks) = cluster(3, replicated).await;
            let client = client(&fakes[0]).await.with_failover(quick());
            let key = key_on(&client.map(), "n2", "q");
            client.put(key.clone(), "v").await.expect("put");
            for fake in &fakes {
                fake.no_quorum.store(true, Ordering::SeqCst);
            }
            let err = client.put(key.clone(), "w").await.expect_err("no quorum");
            let ClientError::Unavailable {
                shard,
                replicas,
                quorum,
                ..
            } = &err
            else {
                panic!("not unavailable: {err}");
            };
            assert_eq!((*shard, *replicas, *quorum), (2, 3, 2));
            let text = err.to_string();
            assert!(
                text.starts_with(
                    "shard 2 cannot commit writes: fewer than 2 of its 3 replicas are reachable"
                ),
                "{text}"
            );
            assert!(text.contains("--consistency stale"), "{text}");
            assert_eq!(err.exit_code(), crate::exit::CONNECTION);
            // It was retried, with one session throughout.
            let tried = sessions(&fakes[1], "put");
            assert!(tried.len() > 2, "{tried:?}");
            assert!(tried[1..].iter().all(|s| *s == tried[1]));
            // Linearizable reads fail the same way; stale ones are served.
            assert!(matches!(
                client.get(key.clone()).await,
                Err(ClientError::Unavailable { .. })
            ));
            let stale = client.with_consistency(Consistency::Stale);
            let got = stale.get(key).await.expect("a stale read");
            assert_eq!(got.map(|(v, _)| v), Some(1));
        }

        #[tokio::test]
        async fn a_shard_with_every_replica_down_is_reported_after_the_deadline() {
            let (fakes, tasks) = cluster(3, replicated).await;
            let client = client(&fakes[0]).await.with_failover(quick());
            let key = key_on(&client.map(), "n3", "z");
            for (fake, task) in fakes.iter().zip(&tasks) {
                task.abort();
                fake.drop_after_apply.store(u32::MAX, Ordering::SeqCst);
            }
            let err = client
                .with_consistency(Consistency::Stale)
                .get(key)
                .await
                .expect_err("all down");
            let ClientError::ShardDown {
                shard, replicas, ..
            } = &err
            else {
                panic!("not shard down: {err}");
            };
            assert_eq!((*shard, replicas.as_str()), (3, "n3, n1, n2"));
            assert!(err.to_string().contains("no replica of shard 3"), "{err}");
        }

        #[tokio::test]
        async fn the_stale_flag_reaches_the_wire_for_reads_and_never_for_writes() {
            let (fakes, _tasks) = cluster(3, replicated).await;
            // Only n1 leads; stale reads are served by whichever replica is asked.
            for follower in &fakes[1..] {
                follower.follower.store(true, Ordering::SeqCst);
                *lock(&follower.hint) = Some(("n1".into(), fakes[0].addr.clone()));
            }
            let linear = client(&fakes[0]).await;
            let key = key_on(&linear.map(), "n2", "s");
            linear.put(key.clone(), "v").await.expect("put");
            *lock(&fakes[1].data) = lock(&fakes[0].data).clone();
            *lock(&fakes[2].data) = lock(&fakes[0].data).clone();
            let seen_before: Vec<usize> = fakes.iter().map(|f| lock(&f.seen).len()).collect();
            let refused_before = fakes[1].not_leader.load(Ordering::SeqCst);

            let client = client(&fakes[1]).await.with_consistency(Consistency::Stale);
            assert_eq!(client.consistency(), Consistency::Stale);
            let got = client.get(key.clone()).await.expect("stale get");
            assert_eq!(got.map(|(v, _)| v), Some(1));
            assert_eq!(
                fakes[1].not_leader.load(Ordering::SeqCst),
                refused_before,
                "a follower served it"
            );
            let page = client.scan("s/", 0, None).await.expect("stale scan");
            assert_eq!(page.entries.len(), 1);
            client.put(key.clone(), "w").await.expect("put");
            client.delete(key.clone()).await.expect("delete");
            client.cas(key, 0, "x").await.expect("cas");
            let mut seen = Vec::new();
            for (fake, before) in fakes.iter().zip(seen_before) {
                seen.extend(lock(&fake.seen)[before..].iter().copied());
            }
            let reads: Vec<_> = seen
                .iter()
                .filter(|(op, _, _)| matches!(*op, "get" | "scan"))
                .collect();
            let writes: Vec<_> = seen
                .iter()
                .filter(|(op, _, _)| !matches!(*op, "get" | "scan"))
                .collect();
            assert!(reads.len() >= 2 && writes.len() >= 3, "{seen:?}");
            assert!(
                reads
                    .iter()
                    .all(|(_, s, c)| s.is_none() && *c == Consistency::Stale),
                "{reads:?}"
            );
            assert!(
                writes
                    .iter()
                    .all(|(_, s, c)| s.is_some() && *c == Consistency::Linearizable),
                "{writes:?}"
            );
            // The default is linearizable.
            let before = lock(&fakes[0].seen).len();
            linear.get("s/none").await.expect("get");
            linear.scan("s/", 0, None).await.expect("scan");
            let after = lock(&fakes[0].seen)[before..].to_vec();
            assert!(!after.is_empty());
            assert!(after
                .iter()
                .all(|(_, _, c)| *c == Consistency::Linearizable));
        }

        #[tokio::test]
        async fn a_down_node_fails_only_its_slots() {
            let (fakes, tasks) = cluster(2, even).await;
            let client = client(&fakes[0]).await;
            let map = client.map();
            let on_n2 = key_on(&map, "n2", "d");
            client.put(on_n2.clone(), "v").await.expect("put");
            // n2 goes away: listener closed, connections dropped.
            tasks[1].abort();
            fakes[1].drop_after_apply.store(u32::MAX, Ordering::SeqCst);
            let err = loop {
                match client.get(on_n2.clone()).await {
                    Err(err @ ClientError::NodeDown { .. }) => break err,
                    other => {
                        assert!(other.is_err(), "n2 is gone");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            let ClientError::NodeDown { node, ranges, .. } = &err else {
                unreachable!()
            };
            assert_eq!(node, "n2");
            assert_eq!(ranges, "8192-16383");
            assert_eq!(err.exit_code(), crate::exit::CONNECTION);
            // n1's keys are unaffected.
            let on_n1 = key_on(&map, "n1", "d");
            assert_eq!(client.put(on_n1, "v").await.expect("put"), 1);
        }

        #[tokio::test]
        async fn a_node_without_maps_serves_every_slot() {
            let (fakes, _tasks) = cluster(1, |_| None).await;
            let client = client(&fakes[0]).await;
            assert_eq!(client.epoch(), 0);
            for i in 0..20 {
                client.put(format!("x/{i}"), "v").await.expect("put");
            }
            let page = client.scan("x/", 0, None).await.expect("scan");
            assert_eq!(page.entries.len(), 20);
            assert_eq!(page.cursor, None);
        }

        #[tokio::test]
        async fn a_scan_page_from_another_epoch_restarts_the_merge() {
            let (fakes, _tasks) = cluster(2, even).await;
            let client = client(&fakes[0]).await;
            for i in 0..40 {
                client.put(format!("s/{i:02}"), "v").await.expect("put");
            }
            let mut scan = client.scanner("s/", None);
            let first = scan.next_page(10).await.expect("page");
            assert_eq!(first.entries.len(), 10);
            // n2 now filters with a newer map (the one both nodes have).
            let map = client.map();
            let mut next = ClusterMap::clone(&map);
            next.epoch = 2;
            for fake in &fakes {
                *lock(&fake.map) = Some(next.clone());
            }
            let mut keys: Vec<Bytes> = first.entries.into_iter().map(|e| e.key).collect();
            loop {
                let page = scan.next_page(10).await.expect("page");
                keys.extend(page.entries.into_iter().map(|e| e.key));
                if page.cursor.is_none() {
                    break;
                }
            }
            let expect: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("s/{i:02}"))).collect();
            assert_eq!(keys, expect);
            assert_eq!(client.epoch(), 2);

            // A node that keeps answering with another epoch: an error, not a wrong page.
            *lock(&fakes[1].scan_epoch) = Some(1);
            let err = client.scan("s/", 0, None).await.expect_err("inconsistent");
            assert!(err.to_string().contains("epoch"), "{err}");
        }
    }
}
