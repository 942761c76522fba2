//! Cluster routing: one client for a whole cluster.
//!
//! A [`ClusterClient`] caches the cluster map a node serves, hashes each key to its slot,
//! looks the slot's owner up in a table built from the map (one array index) and sends the
//! request over a pooled [`Connection`] to that node. Connections are multiplexed, so one per
//! node carries any number of concurrent requests; they open lazily, once per node however
//! many tasks ask at the same moment, and a connection that died is replaced at its next use.
//!
//! # What it hides
//!
//! - **MOVED**: the node no longer serves the slot. The client fetches the newer map (from
//!   the node that said so, else from any node) when the answer names a newer epoch, and
//!   retries where the answer points, at most [`MAX_REDIRECTS`] times.
//! - **TRYAGAIN**: the slot is being handed over and its writes are paused. The client waits
//!   (2 ms, doubling up to 100 ms) and retries for up to 10 s. Nothing was done by the refused
//!   attempt, so retrying is safe for every op; this is what makes slot moves invisible.
//! - **A dead pooled connection** (the node restarted): replaced before the request is sent.
//!
//! Key requests and scan pages go through one retry policy (`Retry`), so the two cannot
//! drift apart: the same redirect handling, TRYAGAIN backoff and budget, resending of reads
//! whose connection broke, and one map refresh before a node is reported down.
//!
//! # What it does not hide
//!
//! - **A node that cannot be reached.** The client refreshes its map once from another node
//!   (the slot may have moved away); if the node still owns the slot the request fails at
//!   once with [`ClientError::NodeDown`], naming the node and the slots it serves. Requests
//!   for other nodes' slots keep working.
//! - **A write whose connection broke after it was sent.** PUT, DELETE and CAS may have been
//!   applied, so they are not replayed blindly: the error goes to the caller, who knows
//!   whether the write is idempotent. GETs are retried.
//!
//! # Cluster-wide scans
//!
//! A scan asks every node that serves slots for its keys after the cursor and merges the
//! pages in key order (at most one page per node is buffered). Each node filters its page by
//! the map of the epoch it reports; when that differs from the client's, the client refreshes
//! its map and restarts the merge after the last key it returned, so the slots are covered
//! exactly once. See [`ClusterScan`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::{join_all, BoxFuture};
use rustls::ClientConfig;
use skv_proto::cluster::{format_ranges, hash_slot, ClusterMap, NodeEntry};
use skv_proto::{ErrorCode, RequestBody, ResponseBody, ScanEntry, MAX_SCAN_PAGE};
use tokio::sync::OnceCell;

use crate::config::{tls_config, ConnectOptions};
use crate::connection::{
    cas_answer, delete_answer, get_answer, put_answer, CasResult, Connection, ScanPage,
};
use crate::error::ClientError;

/// Most MOVED answers one request follows before it fails: a slot moves once per map change,
/// so more than a few redirects in a row means the nodes disagree about the map.
pub const MAX_REDIRECTS: u32 = 5;

/// First and largest wait between TRYAGAIN retries. A handover pauses a slot's writes for a
/// few milliseconds, so start small; cap the wait so a retry comes soon after it ends.
const TRY_AGAIN_FIRST: Duration = Duration::from_millis(2);
const TRY_AGAIN_MAX: Duration = Duration::from_millis(100);

/// How long a request keeps retrying TRYAGAIN. A handover that takes longer is stuck, and the
/// caller should hear about it rather than wait forever.
const TRY_AGAIN_BUDGET: Duration = Duration::from_secs(10);

/// How many times a GET whose connection broke under it is sent again.
const READ_RETRIES: u32 = 2;

/// How often one scan page may restart its merge because a node's map disagreed with ours.
const MAX_SCAN_RESTARTS: u32 = 10;

/// How long a failed connection attempt stands for its node. Requests meanwhile fail at once
/// instead of each paying a connect attempt (up to the connect timeout) and a map refresh.
const FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Least time between two map refreshes caused by unreachable nodes, so a dead node does
/// not turn every request for its slots into a map fetch from the others.
const DOWN_REFRESH_EVERY: Duration = Duration::from_millis(500);

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

/// The part of routing that depends only on the map. Clients made from one another
/// ([`ClusterClient::fresh`]) share it, so the many clients of a load generator keep one
/// 32 KiB owner table in the CPU cache rather than one each.
struct Table {
    /// The map, with node addresses as this client dials them.
    map: Arc<ClusterMap>,
    /// Per slot, the index in `map.nodes` of the node serving it (`u16::MAX`: none).
    owners: Vec<u16>,
    /// Indexes in `map.nodes` of the nodes that serve at least one slot, ascending.
    serving: Vec<usize>,
    /// The index of the node serving every slot, if one does: then keys need no hashing.
    sole: Option<usize>,
}

impl Table {
    fn new(map: ClusterMap) -> Table {
        let owners = map.slot_owners();
        let mut serving: Vec<usize> = owners
            .iter()
            .map(|&i| usize::from(i))
            .filter(|&i| i < map.nodes.len())
            .collect();
        serving.sort_unstable();
        serving.dedup();
        let sole = match serving[..] {
            [only] if owners.iter().all(|&o| usize::from(o) == only) => Some(only),
            _ => None,
        };
        Table {
            map: Arc::new(map),
            owners,
            serving,
            sole,
        }
    }
}

/// What routing needs, rebuilt as a whole whenever the map changes, so a request reads one
/// consistent snapshot.
struct Routing {
    table: Arc<Table>,
    /// Per node of `table.map.nodes`, its pooled connection.
    nodes: Vec<Arc<PoolSlot>>,
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routing")
            .field("epoch", &self.table.map.epoch)
            .field("nodes", &self.table.map.nodes)
            .field("serving", &self.table.serving)
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// The routing of `table`, reusing the pooled connection of every address still in the
    /// map and dropping the others from `pool`.
    fn build(table: Arc<Table>, pool: &mut HashMap<String, Arc<PoolSlot>>) -> Routing {
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
        Routing { table, nodes }
    }

    fn map(&self) -> &Arc<ClusterMap> {
        &self.table.map
    }

    /// The pooled connection of the node serving `slot`.
    fn owner(&self, slot: u16) -> Option<&Arc<PoolSlot>> {
        let index = *self.table.owners.get(usize::from(slot))?;
        self.nodes.get(usize::from(index))
    }

    /// The pooled connection of the node serving `key`: the request path.
    fn owner_of_key(&self, key: &[u8]) -> Option<&Arc<PoolSlot>> {
        match self.table.sole {
            Some(index) => self.nodes.get(index),
            None => self.owner(hash_slot(key)),
        }
    }
}

/// Connection counts for a client's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectStats {
    /// Connections opened successfully (TCP connect, TLS handshake, HELLO).
    pub opened: u64,
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
    /// Held while fetching a map, so that many requests learning at once that the map is
    /// stale cause one fetch. Holds when the last refresh caused by an unreachable node ran.
    refresh: tokio::sync::Mutex<Option<Instant>>,
    opened: AtomicU64,
    open_nanos: AtomicU64,
}

/// A client for a whole cluster: routes each request to the node serving its key. Cheap to
/// clone; clones share the map and the connections. See the [module docs](self).
#[derive(Clone)]
pub struct ClusterClient {
    shared: Arc<Shared>,
}

impl fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let routing = self.shared.routing();
        f.debug_struct("ClusterClient")
            .field("epoch", &routing.map().epoch)
            .field("nodes", &routing.map().nodes)
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// Connect to the cluster through `opts.addr`, or else through each of `seeds` in turn,
    /// fetch that node's map and keep the connection. Any one node's address is enough.
    /// A node too old to serve a map is taken as the owner of every slot.
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
            let mut pool = HashMap::new();
            pool.insert(
                pooled_addr.clone(),
                Arc::new(PoolSlot::new(&pooled_addr, Some(Ok(Arc::new(conn))))),
            );
            let routing = Routing::build(Arc::new(Table::new(map)), &mut pool);
            let client = ClusterClient::assemble(opts, tls, contacts.clone(), routing, pool);
            client.shared.count_open(took);
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
                refresh: tokio::sync::Mutex::new(None),
                opened: AtomicU64::new(0),
                open_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// A new client with the same options and the cached map, but no connections and a TLS
    /// config of its own: its connections resume no session of this client's, so each is a
    /// full handshake (what `skv bench --reconnect-every` measures). Nothing is dialled
    /// until it is used or [`ClusterClient::open_connections`] is called.
    pub fn fresh(&self) -> Result<ClusterClient, ClientError> {
        let s = &self.shared;
        let tls = tls_config(&s.opts.security)?;
        let mut pool = HashMap::new();
        let routing = Routing::build(s.routing().table.clone(), &mut pool);
        Ok(ClusterClient::assemble(
            s.opts.clone(),
            tls,
            s.seeds.clone(),
            routing,
            pool,
        ))
    }

    /// Open (or check) the connection to every node that serves slots, all at once; the
    /// first failure is returned. A connection that failed a moment ago is tried again.
    pub async fn open_connections(&self) -> Result<(), ClientError> {
        let routing = self.shared.routing();
        let opens = routing
            .table
            .serving
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

    /// How many nodes serve at least one slot.
    pub fn serving_nodes(&self) -> usize {
        self.shared.routing().table.serving.len()
    }

    /// Connections this client (and its clones) opened, and the time that took.
    pub fn connect_stats(&self) -> ConnectStats {
        ConnectStats {
            opened: self.shared.opened.load(Ordering::Relaxed),
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

    /// The pooled connection to node `node_id` (for admin requests to one node).
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
        let conn = self.shared.connection(&routing.nodes[index]).await?;
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
    // sends with `Connection::call` directly: each layer of async functions would add one
    // more move of the request's future, and these are the request path.

    /// The value and version of `key`, or `None` if it does not exist.
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
    /// pages, a [`ClusterScan`] from [`ClusterClient::scanner`] fetches less.
    pub async fn scan(
        &self,
        prefix: impl Into<Bytes>,
        limit: u32,
        cursor: Option<Bytes>,
    ) -> Result<ScanPage, ClientError> {
        self.scanner(prefix, cursor).next_page(limit).await
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
        }
    }

    /// Send `op` on `key` to the node serving it, following MOVED, waiting out TRYAGAIN, and
    /// resending after a lost connection only when the op is a read.
    async fn route<T>(
        &self,
        key: Bytes,
        op: KeyOp,
        answer: fn(ResponseBody) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        // The common case, kept small: the owner's connection is open and the owner answers.
        // Everything else is in a boxed future, so that it does not make every request's
        // future larger (each is allocated and moved once per request).
        let failed = match self.shared.pooled_owner(&key) {
            // A copy of the key stays here in case the request must be sent again.
            Some(conn) => match conn.call(op.body(key.clone())).await {
                Ok(body) => return answer(body),
                Err(err) => Some(err),
            },
            None => None,
        };
        Box::pin(self.route_slow(key, op, answer, failed)).await
    }

    /// [`ClusterClient::route`] from its first failure (or from the start, when the owner
    /// had no open connection).
    async fn route_slow<T>(
        &self,
        key: Bytes,
        op: KeyOp,
        answer: fn(ResponseBody) -> Result<T, ClientError>,
        first_failure: Option<ClientError>,
    ) -> Result<T, ClientError> {
        let shared = &*self.shared;
        let slot = hash_slot(&key);
        // Each failure with the node that answered it. The fast path keeps no note of its
        // node (that would cost every request); the slot's owner is the best guess, and it
        // is only used to ask for the map and to complete an unspecified redirect address.
        let mut failed = match first_failure {
            Some(err) => Some((shared.owner(slot)?, err)),
            None => None,
        };
        // Where the last MOVED pointed; `None`: the slot's owner in the map.
        let mut redirected: Option<String> = None;
        let mut retry = Retry::new(op.is_read(), MAX_REDIRECTS);
        loop {
            if let Some((target, err)) = failed.take() {
                match retry.after(shared, &target.addr, err).await? {
                    Next::Redirect(addr) => redirected = Some(addr),
                    Next::Again => {}
                }
            }
            let target = match &redirected {
                None => shared.owner(slot)?,
                Some(addr) => shared.slot_for(addr),
            };
            let conn = match shared.connection(&target).await {
                Ok(conn) => conn,
                Err(err) if is_unreachable(&err) => {
                    retry.unreachable(shared, &target.addr, err).await?;
                    // A newer map: the slot may be served elsewhere now.
                    redirected = None;
                    continue;
                }
                Err(err) => return Err(err),
            };
            match conn.call(op.body(key.clone())).await {
                Ok(body) => return answer(body),
                Err(err) => failed = Some((target, err)),
            }
        }
    }
}

/// The one retry policy of the cluster client, shared by key requests
/// ([`ClusterClient::route`]) and scan pages ([`ClusterScan::next_page`]): what a failed
/// attempt allows next. It keeps the counts and the TRYAGAIN backoff of one request, and does
/// the map refreshes and waits a retry needs; the caller then tries again.
///
/// - MOVED (and a scan page filtered with another epoch's map): at most `max_remaps` in a
///   row. A newer epoch is fetched first; an epoch that is not newer than the cached map
///   means the answering node lags behind, so the retry waits a backoff step for it.
/// - TRYAGAIN: wait 2 ms, doubling up to 100 ms, for up to 10 s in all.
/// - A connection that broke after the request was sent: a read is sent again (at most
///   [`READ_RETRIES`] times); a write may have been applied, so its caller hears about it.
/// - A node that cannot be reached: the map is refreshed once from another node; if it
///   changed, the request is tried with it, otherwise it fails with [`ClientError::NodeDown`].
#[derive(Debug)]
struct Retry {
    read: bool,
    remaps: u32,
    max_remaps: u32,
    lost: u32,
    checked_down: bool,
    backoff: Duration,
    waiting_since: Option<Instant>,
}

/// Where the next attempt goes, after [`Retry::after`].
#[derive(Debug)]
enum Next {
    /// Where a MOVED answer pointed.
    Redirect(String),
    /// Where the last attempt went (a scan restarts over the current map either way).
    Again,
}

impl Retry {
    fn new(read: bool, max_remaps: u32) -> Retry {
        Retry {
            read,
            remaps: 0,
            max_remaps,
            lost: 0,
            checked_down: false,
            backoff: TRY_AGAIN_FIRST,
            waiting_since: None,
        }
    }

    /// After `err` from the node at `at`: `Ok` to try again (the map refreshed or the wait
    /// done), `Err` to give up with that error.
    async fn after(
        &mut self,
        shared: &Shared,
        at: &str,
        err: ClientError,
    ) -> Result<Next, ClientError> {
        match err {
            ClientError::Moved {
                slot,
                epoch,
                node,
                addr,
            } => {
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
            ClientError::Server(wire) if wire.code == ErrorCode::TryAgain => {
                let since = *self.waiting_since.get_or_insert_with(Instant::now);
                if since.elapsed() + self.backoff > TRY_AGAIN_BUDGET {
                    return Err(ClientError::Server(wire));
                }
                self.pause().await;
                Ok(Next::Again)
            }
            // The pool replaces the dead connection at its next use. A read is safe to send
            // again; a write may have been applied, so the caller decides.
            err @ ClientError::Disconnected { .. } if self.read && self.lost < READ_RETRIES => {
                self.lost += 1;
                tracing::debug!("resending a read after a lost connection: {err}");
                Ok(Next::Again)
            }
            err => Err(err),
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
            self.pause().await;
        }
    }

    /// The node at `addr` could not be reached: `Ok` if a map refresh (once per request)
    /// changed the map, so the request may be served elsewhere now; else the node-down error.
    async fn unreachable(
        &mut self,
        shared: &Shared,
        addr: &str,
        err: ClientError,
    ) -> Result<(), ClientError> {
        if !self.checked_down {
            self.checked_down = true;
            if shared.refresh_after_failure(addr).await {
                return Ok(());
            }
        }
        Err(shared.node_down(addr, err))
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(TRY_AGAIN_MAX);
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

    /// Whether sending it twice is harmless.
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

    /// The live pooled connection of the node serving `key`, if it has one: the request
    /// path, with no await and no lock held for longer than a lookup.
    fn pooled_owner(&self, key: &[u8]) -> Option<Arc<Connection>> {
        pooled(read(&self.routing).owner_of_key(key)?)
    }

    /// The pooled connection of the node serving `slot`.
    fn owner(&self, slot: u16) -> Result<Arc<PoolSlot>, ClientError> {
        let routing = read(&self.routing);
        routing.owner(slot).cloned().ok_or_else(|| {
            ClientError::Protocol(format!(
                "the cluster map (epoch {}) assigns slot {slot} to no node",
                routing.map().epoch
            ))
        })
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
            });
        }
        current
    }

    async fn open(&self, addr: &str) -> Attempt {
        let began = Instant::now();
        match Connection::connect_with(&with_addr(&self.opts, addr), self.tls.clone()).await {
            Ok(conn) => {
                self.count_open(began.elapsed());
                Ok(Arc::new(conn))
            }
            Err(err) => Err((err, Instant::now())),
        }
    }

    fn count_open(&self, took: Duration) {
        self.opened.fetch_add(1, Ordering::Relaxed);
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
        let mut pool = lock(&self.pool);
        let routing = Arc::new(Routing::build(table, &mut pool));
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
/// It keeps at most one page per node. Entries come out in key order without duplicates
/// (should two nodes both return a key, during a handover, the first one seen wins), and
/// each page's cursor is its last key, so a scan resumed from it, in this process or another,
/// continues exactly there.
#[derive(Debug)]
pub struct ClusterScan {
    client: ClusterClient,
    prefix: Bytes,
    /// The last key returned (or the starting cursor): where a restart resumes.
    after: Option<Bytes>,
    /// The merge over `nodes`; `None` until started, and after a restart.
    merge: Option<Merge>,
    nodes: Vec<Arc<PoolSlot>>,
    /// Epoch of the map the merge was started with; every page must carry it.
    epoch: u64,
    done: bool,
}

/// Why a round of page fetches could not be used.
enum Trouble {
    /// The node filtered its page with the map of another epoch.
    Epoch { addr: String, epoch: u64 },
    /// The node could not be reached.
    Unreachable { addr: String, err: ClientError },
    /// The node answered the page request with an error (or the connection broke under it).
    Failed { addr: String, err: ClientError },
}

impl ClusterScan {
    /// The next page of at most `limit` entries (0: the maximum, 1000); an empty page with
    /// no cursor once the scan is done.
    pub async fn next_page(&mut self, limit: u32) -> Result<ScanPage, ClientError> {
        let limit = match limit {
            0 => MAX_SCAN_PAGE,
            n => n.min(MAX_SCAN_PAGE),
        } as usize;
        let mut out = Vec::new();
        // A scan only reads, so a page whose connection broke is asked for again.
        let mut retry = Retry::new(true, MAX_SCAN_RESTARTS);
        while !self.done {
            let merge = match &mut self.merge {
                Some(merge) => merge,
                None => {
                    let routing = self.client.shared.routing();
                    self.epoch = routing.map().epoch;
                    self.nodes = routing
                        .table
                        .serving
                        .iter()
                        .map(|&i| routing.nodes[i].clone())
                        .collect();
                    self.merge
                        .insert(Merge::new(self.nodes.len(), self.after.clone()))
                }
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
                let node = self.nodes[i].clone();
                let (client, prefix, cursor) = (&self.client, self.prefix.clone(), merge.cursor(i));
                async move {
                    let result =
                        match client.shared.connection(&node).await {
                            Ok(conn) => conn.scan(prefix, want, cursor).await.map_err(|err| {
                                Trouble::Failed {
                                    addr: node.addr.clone(),
                                    err,
                                }
                            }),
                            Err(err) if is_unreachable(&err) => Err(Trouble::Unreachable {
                                addr: node.addr.clone(),
                                err,
                            }),
                            Err(err) => Err(Trouble::Failed {
                                addr: node.addr.clone(),
                                err,
                            }),
                        };
                    (i, node, result)
                }
            });
            let mut trouble = None;
            for (i, node, result) in join_all(fetches).await {
                match result {
                    Ok(page) if page.epoch == self.epoch => {
                        merge.feed(i, page.entries, page.cursor).map_err(|e| {
                            ClientError::Protocol(format!(
                                "{} sent a bad scan page: {e}",
                                node.addr
                            ))
                        })?;
                    }
                    Ok(page) => {
                        trouble.get_or_insert(Trouble::Epoch {
                            addr: node.addr.clone(),
                            epoch: page.epoch,
                        });
                    }
                    Err(failed) => {
                        trouble.get_or_insert(failed);
                    }
                }
            }
            let Some(trouble) = trouble else { continue };
            // Start over after the last key returned, with whatever map is current then.
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
                Trouble::Unreachable { addr, err } => retry.unreachable(shared, &addr, err).await?,
                // Where a MOVED points does not matter: the merge restarts over every node
                // of the (refreshed) map.
                Trouble::Failed { addr, err } => {
                    retry.after(shared, &addr, err).await?;
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
        let routing = Routing::build(Arc::new(Table::new(map.clone())), &mut pool);
        assert_eq!(routing.table.serving, [0, 1, 2]);
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
        let routing = Routing::build(Arc::new(Table::new(grown)), &mut pool);
        assert_eq!(routing.table.serving, [0, 1, 2]);
        assert_eq!(routing.nodes.len(), 4);
    }

    #[test]
    fn legacy_nodes_own_every_slot_at_epoch_zero() {
        let map = legacy_map("n1", "127.0.0.1:7400");
        assert_eq!(map.epoch, 0);
        let mut pool = HashMap::new();
        let routing = Routing::build(Arc::new(Table::new(map)), &mut pool);
        assert_eq!(routing.table.serving, [0]);
        assert_eq!(routing.table.sole, Some(0));
        assert!((0..SLOT_COUNT).all(|s| routing.table.owners[usize::from(s)] == 0));
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
        use std::sync::atomic::{AtomicU32, AtomicUsize};

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
            accepted: AtomicUsize,
            writes: AtomicUsize,
            moved: AtomicUsize,
        }

        impl Fake {
            fn answer(&self, body: RequestBody) -> Option<ResponseBody> {
                let map = lock(&self.map).clone();
                let key = body.key().cloned();
                if let (Some(map), Some(key)) = (&map, &key) {
                    let slot = hash_slot(key);
                    let owner = map.owner_of_slot(slot).expect("owned");
                    if owner.id != self.name {
                        self.moved.fetch_add(1, Ordering::SeqCst);
                        return Some(ResponseBody::Moved {
                            slot,
                            epoch: map.epoch,
                            node: owner.id.clone(),
                            addr: owner.addr.clone(),
                        });
                    }
                }
                let is_write = matches!(body, RequestBody::Put { .. } | RequestBody::Delete { .. });
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
                    RequestBody::Scan {
                        prefix,
                        limit,
                        cursor,
                    } => {
                        let mine = |k: &Bytes| {
                            map.as_ref().is_none_or(|m| {
                                m.owner_of_slot(hash_slot(k))
                                    .is_some_and(|o| o.id == self.name)
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
                    let body = match request.body {
                        RequestBody::Hello { .. } => ResponseBody::HelloOk {
                            version: PROTOCOL_VERSION,
                            max_frame: DEFAULT_MAX_FRAME as u32,
                            node: self.name.clone(),
                            token: TokenPlacement::None,
                        },
                        body => match self.answer(body) {
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

        #[tokio::test]
        async fn a_lost_write_is_not_replayed_but_a_read_is() {
            let (fakes, _tasks) = cluster(1, even).await;
            let client = client(&fakes[0]).await;
            fakes[0].drop_after_apply.store(1, Ordering::SeqCst);
            let err = client.put("k", "v").await.expect_err("lost");
            assert!(matches!(err, ClientError::Disconnected { .. }), "{err}");
            assert_eq!(fakes[0].writes.load(Ordering::SeqCst), 1, "sent once");
            // The next request reconnects by itself.
            fakes[0].drop_after_apply.store(1, Ordering::SeqCst);
            let got = client.get("k").await.expect("the read is resent");
            assert_eq!(got, Some((1, Bytes::from_static(b"v"))));
            assert_eq!(fakes[0].accepted.load(Ordering::SeqCst), 3);
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
