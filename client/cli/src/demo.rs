//! `skv demo`: a narrated tour for newcomers. It makes a dev PKI and a token issuer, starts a
//! three-node cluster in this process (every shard replicated on all three nodes, every node
//! behind all three checkpoints: mutual TLS, token, scope), runs a few operations through the
//! client library (printing the CLI command that does the same), shows keys landing on
//! different shards, a replica naming its shard's leader, a leader killed mid-tour while its
//! keys stay readable and writable and it catches up after a restart, each checkpoint refusing
//! someone, then stops the nodes cleanly.
//!
//! Each node runs on a tokio runtime of its own, so killing one is dropping its runtime: every
//! task, connection and Raft timer of that node ends at once, with no goodbye to its peers or
//! clients, as when a process is killed (the client's runtime and the other nodes' go on).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use skv_certs::issuer::{keys_init, mint, Alg, IssuerKey, TokenSpec};
use skv_certs::{InitOptions, KeyType, Layout};
use skv_client::{
    exit, CasResult, ClientError, ClusterClient, ConnectOptions, Connection, Security,
};
use skv_proto::cluster::{format_ranges, hash_slot, ClusterMap, ControlRequest, NodeEntry};
use skv_server::config::{AuthConfig, AuthMode};
use skv_server::{Durability, Engine, NodeConfig, RunningNode, StartError, TransportConfig};
use skv_token::parse_allow;

use crate::args::DemoArgs;
use crate::cluster::status::{render_table, shard_views, status_of, Health, Row};

const CLUSTER: &str = "demo";
const NODES: [&str; 3] = ["n1", "n2", "n3"];
/// Free ports are picked by binding and releasing them; another process can take one before
/// the node binds it again, so starting is retried with fresh ports a few times.
const START_ATTEMPTS: u32 = 3;
/// Replicas per shard: every node holds every shard, so any one node can fail.
const REPLICAS: usize = 3;
/// How long the failover scene waits for the restarted node to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// A node of the demo on its own runtime (see the module docs).
struct DemoNode {
    id: &'static str,
    config: NodeConfig,
    runtime: tokio::runtime::Runtime,
    node: RunningNode,
}

impl std::fmt::Debug for DemoNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoNode").field("id", &self.id).finish()
    }
}

impl DemoNode {
    /// Start node `id` from `config` on a fresh one-worker runtime.
    async fn start(id: &'static str, config: NodeConfig) -> Result<DemoNode, StartError> {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("skv-demo-{id}"))
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(source) => {
                return Err(StartError::Bind {
                    addr: config.listen,
                    source,
                })
            }
        };
        let started = runtime.spawn(RunningNode::start(config.clone())).await;
        let node = match started {
            Ok(result) => result?,
            Err(join) => {
                return Err(StartError::Bind {
                    addr: config.listen,
                    source: std::io::Error::other(join.to_string()),
                })
            }
        };
        Ok(DemoNode {
            id,
            config,
            runtime,
            node,
        })
    }

    /// A clean stop: the node's own graceful shutdown, then its runtime.
    async fn shutdown(self) {
        let DemoNode { runtime, node, .. } = self;
        let _ = runtime.spawn(node.shutdown()).await;
        drop_runtime(runtime).await;
    }

    /// The crash: drop the runtime with everything on it. Returns the config to restart it.
    async fn kill(self) -> (&'static str, NodeConfig) {
        let DemoNode {
            id,
            config,
            runtime,
            node,
        } = self;
        // Not shut down: the handle only goes with the runtime.
        drop(node);
        drop_runtime(runtime).await;
        (id, config)
    }
}

/// Drop a runtime from async code (which tokio forbids doing directly): on a blocking thread,
/// waiting a little for its blocking tasks (a sled flush) so its files are closed after.
async fn drop_runtime(runtime: tokio::runtime::Runtime) {
    let _ =
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(5))).await;
}

/// Start a killed node again on its data directory. Its old runtime may still be letting go
/// of the sled lock and the port for a moment, so a refused start is retried briefly.
async fn restart(id: &'static str, config: NodeConfig) -> anyhow::Result<DemoNode> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match DemoNode::start(id, config.clone()).await {
            Ok(node) => return Ok(node),
            Err(err) if Instant::now() < deadline => {
                tracing_debug(&err);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => {
                return Err(anyhow::Error::new(err)).context(format!("cannot restart {id}"))
            }
        }
    }
}

/// Nothing to print for a retried restart; kept as a function so the reason is not lost
/// when debugging the demo (`RUST_LOG=debug`).
fn tracing_debug(err: &StartError) {
    if std::env::var_os("RUST_LOG").is_some() {
        eprintln!("(restart refused, retrying: {err})");
    }
}

pub(crate) fn run(args: DemoArgs) -> u8 {
    match tour(args) {
        Ok(()) => exit::OK,
        Err(err) => {
            eprintln!("skv demo: {err:#}");
            exit::SERVER
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n== {n}. {text}");
}

fn tour(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let temp_used = args.dir.is_none();
    let dir: PathBuf = match args.dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::Builder::new().prefix("skv-demo-").tempdir()?;
            temp.path().to_owned()
        }
    };
    let layout = Layout::new(dir.join("pki"));

    step(
        1,
        "A development PKI: a cluster CA, three node certificates, client certificates for alice and an admin",
    );
    make_pki(&layout)?;
    println!(
        "wrote {} (CA), {} .. n3.pem (nodes) and {} (alice's profile)",
        layout.ca_cert().display(),
        layout.node_cert("n1").display(),
        layout.client_profile("alice").display()
    );

    step(
        2,
        "A token issuer, and a 15-minute token for alice: read and write under users/, bound to her certificate",
    );
    let keys = dir.join("keys");
    let issuer = if keys.join("keyset.json").exists() {
        IssuerKey::load(&keys).context("cannot load the demo issuer key")?
    } else {
        keys_init(&keys, Alg::EdDSA, None).context("cannot create the demo issuer key")?;
        IssuerKey::load(&keys).context("cannot load the demo issuer key")?
    };
    println!("$ skv keys init --dir {}", keys.display());
    let token = mint_token(&issuer, &layout, "alice", "read,write:users/")?;
    let admin_token = mint_token(&issuer, &layout, "admin", "admin:")?;
    println!(
        "$ export SKV_TOKEN=$(skv token issue --key {} --sub alice --allow read,write:users/ --ttl 15m --bind-cert {})",
        keys.join("issuer-key.pem").display(),
        layout.client_cert("alice").display()
    );
    println!(
        "token: {}...{} ({} bytes; `skv token inspect` shows its claims)",
        &token[..12],
        &token[token.len() - 6..],
        token.len()
    );
    println!("(and an admin token, `--allow admin:`, for the cluster status at the end)");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        step(
            3,
            "A three-node cluster: 16384 hash slots in three shards, each shard a Raft group replicated on all three nodes",
        );
        let (map, nodes) = start_cluster(&dir, &layout, &keys).await?;
        println!("$ skv cluster init --dir DIR --nodes 3 --replicas 3 && skv cluster up --dir DIR   # the same, as processes");
        for entry in &map.nodes {
            println!(
                "{} listening on {}: leads slots {} at first, holds a replica of every shard (mutual TLS 1.3, a token on every request, sled, fsync before every ack)",
                entry.id,
                entry.addr,
                format_ranges(&map.ranges_of_node(&entry.id))
            );
        }
        println!("a write is acknowledged once a majority (2 of 3) of its shard's replicas have it on disk");
        println!(
            "cluster map epoch {}: written to {}, every node and client routes by it",
            map.epoch,
            dir.join("cluster.json").display()
        );

        let mut nodes = nodes;
        let result = operations(&layout, &map, &token, &admin_token, &mut nodes).await;

        step(
            14,
            "Stop the nodes: no new connections, in-flight requests finish, sled is flushed",
        );
        futures_util::future::join_all(nodes.into_iter().map(DemoNode::shutdown)).await;
        println!("nodes n1, n2, n3 stopped cleanly");
        result
    })?;

    step(
        15,
        "The audit logs: one JSON line per refusal, on the node that refused, never a token or a value",
    );
    // The audit writers flush as they go; give the last line a moment.
    std::thread::sleep(Duration::from_millis(100));
    for id in NODES {
        let audit = std::fs::read_to_string(audit_log(&dir, id)).unwrap_or_default();
        for line in tail(&audit, 3) {
            println!("{id}: {line}");
        }
    }

    if temp_used {
        println!("\nDone; the temporary PKI and data are removed. `skv demo --dir DIR` keeps them.\nFor a cluster of real processes: skv cluster init --dir DIR --nodes 3 && skv cluster up --dir DIR");
    } else {
        println!("\nDone; the PKI, keys and data are kept in {}.\nFor a cluster of real processes: skv cluster init --dir DIR --nodes 3 && skv cluster up --dir DIR",
            dir.display());
    }
    Ok(())
}

/// The CA, the three node certificates, and the alice and admin client certificates; what an
/// earlier `--dir` run left is reused, and only what is missing is issued.
fn make_pki(layout: &Layout) -> anyhow::Result<()> {
    let nodes: Vec<String> = NODES
        .iter()
        .filter(|n| !layout.node_cert(n).exists())
        .map(|n| n.to_string())
        .collect();
    let clients: Vec<String> = ["alice", "admin"]
        .iter()
        .filter(|c| !layout.client_profile(c).exists())
        .map(|c| c.to_string())
        .collect();
    if layout.ca_cert().exists() && nodes.is_empty() && clients.is_empty() {
        println!("reusing the PKI in {}", layout.dir().display());
        return Ok(());
    }
    skv_certs::init(&InitOptions {
        dir: layout.dir().to_owned(),
        cluster: CLUSTER.into(),
        nodes: nodes.clone(),
        clients: clients.clone(),
        key_type: KeyType::P256,
        force: false,
    })
    .context("cannot create the demo PKI")?;
    println!(
        "$ skv certs init --dir {} --cluster {CLUSTER} --nodes {} --clients {}",
        layout.dir().display(),
        nodes.join(","),
        clients.join(",")
    );
    Ok(())
}

/// A 15-minute token for `client` with one grant, bound to the client's certificate.
fn mint_token(
    issuer: &IssuerKey,
    layout: &Layout,
    client: &str,
    allow: &str,
) -> anyhow::Result<String> {
    let cert = std::fs::read(layout.client_cert(client))?;
    Ok(mint(
        issuer,
        &TokenSpec {
            sub: client.into(),
            scopes: vec![parse_allow(allow).context("scope")?],
            ttl: Duration::from_secs(15 * 60),
            aud: skv_token::DEFAULT_TOKEN_AUDIENCE.into(),
            iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
            bind_cert_der: Some(pem_to_der(&cert)?),
        },
    )?)
}

fn audit_log(dir: &Path, id: &str) -> PathBuf {
    dir.join("logs").join(format!("{id}-audit.log"))
}

/// Ports the OS says are free right now: bound together (so they differ), then released.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free ports on 127.0.0.1")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// Write a map for three fresh ports and start the nodes on them. The map must name every
/// address before any node starts (each node finds its own slots in it), so the ports are
/// chosen first.
async fn start_cluster(
    dir: &Path,
    layout: &Layout,
    keys: &Path,
) -> anyhow::Result<(ClusterMap, Vec<DemoNode>)> {
    std::fs::create_dir_all(dir.join("logs"))?;
    let map_file = dir.join("cluster.json");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ports = free_ports(NODES.len())?;
        let members: Vec<(String, String)> = NODES
            .iter()
            .zip(&ports)
            .map(|(id, port)| (id.to_string(), format!("127.0.0.1:{port}")))
            .collect();
        let map =
            ClusterMap::even_replicated(CLUSTER, &members, REPLICAS).context("the demo's map")?;
        std::fs::write(&map_file, map.to_json())
            .with_context(|| format!("cannot write {}", map_file.display()))?;
        let mut nodes = Vec::new();
        let mut failure = None;
        for (id, port) in NODES.iter().zip(&ports) {
            let config = node_config(dir, layout, keys, id, *port, &map_file)?;
            match DemoNode::start(id, config).await {
                Ok(node) => nodes.push(node),
                Err(e) => {
                    failure = Some((*id, e));
                    break;
                }
            }
        }
        let Some((id, err)) = failure else {
            return Ok((map, nodes));
        };
        futures_util::future::join_all(nodes.into_iter().map(DemoNode::shutdown)).await;
        let retry = matches!(err, StartError::Bind { .. }) && attempt < START_ATTEMPTS;
        if !retry {
            return Err(anyhow::Error::new(err)).context(format!("cannot start demo node {id}"));
        }
        println!("(a port was taken meanwhile; trying again with others)");
    }
}

fn node_config(
    dir: &Path,
    layout: &Layout,
    keys: &Path,
    id: &str,
    port: u16,
    map_file: &Path,
) -> anyhow::Result<NodeConfig> {
    Ok(NodeConfig {
        name: id.into(),
        listen: format!("127.0.0.1:{port}").parse()?,
        data_dir: dir.join("data").join(id),
        engine: Engine::Sled,
        durability: Durability::Sync,
        flush_every: Duration::from_millis(500),
        transport: TransportConfig::Tls {
            client_auth: true,
            ca: layout.ca_cert(),
            cert: layout.node_cert(id),
            key: layout.node_key(id),
            crl: None,
        },
        max_frame: skv_proto::DEFAULT_MAX_FRAME,
        max_connections: 64,
        max_connections_per_source: 64,
        max_connections_per_identity: 64,
        idle_timeout: None,
        handshake_timeout: Duration::from_secs(10),
        shutdown_timeout: Duration::from_secs(10),
        election_timeout: Duration::from_millis(skv_server::config::DEFAULT_ELECTION_TIMEOUT_MS),
        snapshot_every: skv_server::config::DEFAULT_SNAPSHOT_EVERY,
        master_key: None,
        read_cache_bytes: skv_server::config::DEFAULT_READ_CACHE_BYTES,
        rate_limit_rps: None,
        rate_limit_bytes_per_sec: None,
        overload_inflight: None,
        max_pending_bytes: 16 << 20,
        metrics_listen: None,
        auth: Some(AuthConfig {
            keyset: keys.join("keyset.json"),
            denylist: None,
            mode: AuthMode::PerRequest,
            token_cache: skv_server::config::DEFAULT_TOKEN_CACHE,
            audience: skv_token::DEFAULT_TOKEN_AUDIENCE.into(),
            issuer: skv_token::DEFAULT_TOKEN_ISSUER.into(),
            leeway: Duration::from_secs(5),
            require_bound_tokens: false,
            audit_log: Some(audit_log(dir, id)),
            audit_allows: false,
            audit_max_files: skv_server::config::DEFAULT_AUDIT_MAX_FILES,
            audit_max_bytes: skv_server::config::DEFAULT_AUDIT_MAX_MB << 20,
        }),
        cluster: Some(CLUSTER.into()),
        cluster_map: Some(map_file.to_owned()),
        advertise: None,
    })
}

/// The slot of `key` and the node serving it under `map` (its shard's first replica, the
/// leader the map starts it with): what the cluster client computes for every request,
/// spelled out so the tour can say where each key went.
fn owner<'m>(map: &'m ClusterMap, key: &str) -> anyhow::Result<(u16, &'m NodeEntry)> {
    let slot = hash_slot(key.as_bytes());
    let node = map
        .owner_of_slot(slot)
        .with_context(|| format!("no node serves slot {slot}"))?;
    Ok((slot, node))
}

/// Every shard healthy, and `node` a follower with nothing left to copy wherever it does
/// not lead (a leader retries a follower that was down with a backoff, so this can take a
/// second after the node answers again).
fn caught_up(views: &[crate::cluster::status::ShardView], node: &str) -> bool {
    !views.is_empty()
        && views.iter().all(|v| {
            v.health == Health::Healthy
                && (v.leader.as_deref() == Some(node)
                    || v.followers
                        .iter()
                        .any(|f| f.node == node && f.state == "follower" && f.lag == Some(0)))
        })
}

/// The shard owning `key` under `map`.
fn shard_of(map: &ClusterMap, key: &str) -> anyhow::Result<u32> {
    let slot = hash_slot(key.as_bytes());
    map.shard_of_slot(slot)
        .map(|s| s.id)
        .with_context(|| format!("no shard owns slot {slot}"))
}

/// Every running node's STATUS as the status table's rows (`pid`: this process).
async fn status_rows(admin: &ConnectOptions, map: &ClusterMap, nodes: &[DemoNode]) -> Vec<Row> {
    let mut rows = Vec::new();
    for entry in &map.nodes {
        let mut opts = admin.clone();
        opts.addr = entry.addr.clone();
        opts.connect_timeout = Duration::from_secs(2);
        opts.request_timeout = Duration::from_secs(5);
        rows.push(Row {
            id: entry.id.clone(),
            addr: entry.addr.clone(),
            in_map: true,
            configured: true,
            pid: nodes
                .iter()
                .any(|n| n.id == entry.id)
                .then(std::process::id),
            report: status_of(&opts).await,
        });
    }
    rows
}

/// The node leading `shard` now, by the nodes' own reports (an election may take a moment
/// after a leader dies: this waits for one, up to a few seconds).
async fn leader_of(
    admin: &ConnectOptions,
    map: &ClusterMap,
    nodes: &[DemoNode],
    shard: u32,
) -> anyhow::Result<(String, u64)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = status_rows(admin, map, nodes).await;
        let found = rows.iter().find_map(|r| {
            let status = r.report.as_ref().ok()?;
            let g = status
                .replicas
                .iter()
                .find(|g| g.shard == shard && g.role == "leader")?;
            Some((r.id.clone(), g.term))
        });
        match found {
            Some(found) => return Ok(found),
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            None => bail!("no node reports leading shard {shard}"),
        }
    }
}

async fn operations(
    layout: &Layout,
    map: &ClusterMap,
    token: &str,
    admin_token: &str,
    nodes: &mut Vec<DemoNode>,
) -> anyhow::Result<()> {
    let first = &map.nodes[0].addr;
    let profile = layout.client_profile("alice");
    let cli = format!("skv --profile {} --addr {first}", profile.display());
    let mut alice = ConnectOptions::new(
        first.as_str(),
        Security::Tls {
            ca: layout.ca_cert(),
            identity: Some((layout.client_cert("alice"), layout.client_key("alice"))),
        },
    );
    alice.token = Some(token.to_owned());
    let mut admin = ConnectOptions::new(
        first.as_str(),
        Security::Tls {
            ca: layout.ca_cert(),
            identity: Some((layout.client_cert("admin"), layout.client_key("admin"))),
        },
    );
    admin.token = Some(admin_token.to_owned());
    // Any node is enough to start from: it serves the map, and the client routes by it.
    let client = ClusterClient::connect(alice.clone(), Vec::new())
        .await
        .context("alice cannot connect")?;
    client
        .open_connections()
        .await
        .context("alice cannot reach every node")?;
    println!(
        "alice's cluster client fetched the map (epoch {}) from n1 and connected to n1, n2 and n3 \
         (her certificate says spiffe://{CLUSTER}/client/alice; theirs, spiffe://{CLUSTER}/node/<id>)",
        client.epoch()
    );

    step(
        4,
        "Put and get: a key's slot is CRC16(key) mod 16384, and the slot's owner stores it",
    );
    println!("$ {cli} put users/alice '{{\"name\":\"Alice\"}}'");
    let v1 = client.put("users/alice", r#"{"name":"Alice"}"#).await?;
    println!("OK version {v1}");
    println!("$ {cli} get users/alice");
    match client.get("users/alice").await? {
        Some((version, value)) => {
            println!("{}    (version {version})", String::from_utf8_lossy(&value))
        }
        None => bail!("the value just written is missing"),
    }
    let people = ["alice", "bob", "carol", "dave", "erin", "frank"];
    for name in &people[1..] {
        let key = format!("users/{name}");
        let mut chars = name.chars();
        let title: String = chars
            .next()
            .map(|c| c.to_ascii_uppercase())
            .into_iter()
            .chain(chars)
            .collect();
        client
            .put(key.clone(), format!(r#"{{"name":"{title}"}}"#))
            .await?;
    }
    println!("(and users/bob .. users/frank the same way); where each key lives:");
    for name in people {
        let key = format!("users/{name}");
        let (slot, node) = owner(map, &key)?;
        println!(
            "  {key:<12} slot {slot:>5} -> shard {}, led by {} at {}",
            shard_of(map, &key)?,
            node.id,
            node.addr
        );
    }
    println!(
        "a hash tag keeps keys together: users/{{alice}}/cart and users/{{alice}}/orders both \
         hash only `alice`, slot {}",
        hash_slot(b"alice")
    );

    step(
        5,
        "Scan a prefix across the cluster: each shard's leader scans its slots, the client merges in byte order",
    );
    println!("$ {cli} scan users/");
    let page = client.scan("users/", 0, None).await?;
    for entry in &page.entries {
        let key = String::from_utf8_lossy(&entry.key);
        let (_, node) = owner(map, &key)?;
        // Printed as `skv scan` prints (crate::output::escape), with the owner after a tab.
        println!(
            "{}\t{}\t(from {})",
            crate::output::escape(&entry.key),
            crate::output::escape(&entry.value),
            node.id
        );
    }

    step(
        6,
        "Compare-and-swap: a write that only lands on the version you read",
    );
    let (current, _) = client
        .get("users/alice")
        .await?
        .context("users/alice vanished")?;
    println!("$ {cli} cas users/alice --expect-version {current} '{{\"name\":\"Alice\",\"admin\":true}}'");
    let v2 = match client
        .cas("users/alice", current, r#"{"name":"Alice","admin":true}"#)
        .await?
    {
        CasResult::Written(v) => {
            println!("OK version {v}");
            v
        }
        CasResult::Conflict(c) => bail!("unexpected conflict at version {c}"),
    };
    println!("$ {cli} cas users/alice --expect-version {current} '{{\"name\":\"Mallory\"}}'   # stale version");
    match client.cas("users/alice", current, r#"{"name":"Mallory"}"#).await? {
        CasResult::Conflict(now) => println!(
            "skv: CAS conflict: expected version {current}, but the key is at version {now}; nothing written   (exit {})",
            exit::CAS_CONFLICT),
        CasResult::Written(_) => bail!("a stale CAS was accepted"),
    }
    debug_assert!(v2 > v1);

    step(
        7,
        "NOT_LEADER: a replica asked for a key of a shard it does not lead names the leader (the cluster client follows it by itself)",
    );
    let (slot, bob_leader) = owner(map, "users/bob")?;
    let bob_shard = shard_of(map, "users/bob")?;
    let wrong = map
        .nodes
        .iter()
        .find(|n| n.id != bob_leader.id)
        .context("a second node")?;
    println!(
        "GET users/bob sent straight to {} at {} over a plain connection (which does not follow \
         redirections); slot {slot} is shard {bob_shard}'s, which {} leads",
        wrong.id, wrong.addr, bob_leader.id
    );
    let direct = client.connection_to(&wrong.id).await?;
    match direct.get("users/bob").await {
        Err(err @ (ClientError::NotLeader { .. } | ClientError::Moved { .. })) => {
            println!("{}: {err}", wrong.id)
        }
        Err(other) => bail!("expected NOT_LEADER, got: {other}"),
        Ok(_) => println!(
            "{} answered itself (it forwards reads of shards it follows)",
            wrong.id
        ),
    }

    step(
        8,
        "Failover: kill a shard's leader mid-tour; its keys stay readable and writable through the other replicas",
    );
    let (victim, term) = leader_of(&admin, map, nodes, bob_shard).await?;
    let Some(at) = nodes.iter().position(|n| n.id == victim) else {
        bail!("shard {bob_shard}'s leader {victim} is not a demo node");
    };
    let killed = nodes.remove(at);
    println!(
        "shard {bob_shard} (users/bob) is led by {victim} (term {term}); killing {victim} abruptly \
         (no shutdown: its sockets close mid-conversation, as with `kill -9`)"
    );
    let (killed_id, killed_config) = killed.kill().await;
    // The CLI finds the map through any node it can reach; name one that is up.
    let alive = map
        .nodes
        .iter()
        .find(|n| n.id != victim)
        .map_or(first.as_str(), |n| n.addr.as_str());
    let cli = format!("skv --profile {} --addr {alive}", profile.display());
    println!(
        "$ {cli} put users/bob '{{\"name\":\"Bob\",\"during\":\"outage\"}}'   # {victim} is down"
    );
    let began = Instant::now();
    let version = client
        .put("users/bob", r#"{"name":"Bob","during":"outage"}"#)
        .await
        .context("the write during the outage failed")?;
    println!(
        "OK version {version}   (written during the outage, {} ms: the client retried on the \
         other replicas while they elected a new leader)",
        began.elapsed().as_millis()
    );
    let (new_leader, new_term) = leader_of(&admin, map, nodes, bob_shard).await?;
    println!(
        "shard {bob_shard} has a new leader: {new_leader} (term {new_term}); {victim} is down"
    );
    println!("$ {cli} get users/bob");
    match client.get("users/bob").await? {
        Some((v, value)) => println!("{}    (version {v})", String::from_utf8_lossy(&value)),
        None => bail!("users/bob is missing after the failover"),
    }
    println!("(2 of 3 replicas are a majority, so every shard still takes writes and linearizable reads)");
    println!("now {victim} restarts on its data and catches up from the leaders:");
    nodes.push(restart(killed_id, killed_config).await?);
    nodes.sort_by_key(|n| n.id);
    let began = Instant::now();
    let rows = loop {
        let rows = status_rows(&admin, map, nodes).await;
        if caught_up(&shard_views(map, &rows), &victim) || began.elapsed() > CATCH_UP_TIMEOUT {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for view in shard_views(map, &rows) {
        if view.shard == 0 {
            continue;
        }
        let mine = rows
            .iter()
            .find(|r| r.id == victim)
            .and_then(|r| r.report.as_ref().ok())
            .and_then(|s| s.replicas.iter().find(|g| g.shard == view.shard));
        let lag = view
            .followers
            .iter()
            .find(|f| f.node == victim)
            .and_then(|f| f.lag)
            .map_or_else(|| "-".to_owned(), |l| l.to_string());
        match mine {
            Some(g) => println!(
                "  shard {}: {victim} is a {}, applied {}, {lag} entries behind leader {} (applied {}): {}",
                view.shard,
                g.role,
                g.applied,
                view.leader.as_deref().unwrap_or("-"),
                view.leader_applied.unwrap_or(0),
                view.health.word()
            ),
            None => println!("  shard {}: {victim} reports no replica yet", view.shard),
        }
    }
    if caught_up(&shard_views(map, &rows), &victim) {
        println!(
            "{victim} is back and caught up ({} ms after its restart)",
            began.elapsed().as_millis()
        );
    } else {
        println!(
            "{victim} is back, still catching up after {} s",
            CATCH_UP_TIMEOUT.as_secs()
        );
    }

    step(
        9,
        "Checkpoint 3: alice's token grants users/ only, so a write elsewhere is refused",
    );
    let (_, refuser) = owner(map, "admin/config")?;
    println!("$ {cli} put admin/config x   # slot owner: {}", refuser.id);
    match client.put("admin/config", "x").await {
        Err(err @ ClientError::Refused(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a scope refusal, got: {other}"),
        Ok(_) => bail!("a write outside the token's scopes was accepted"),
    }

    step(
        10,
        "Checkpoint 2: a valid certificate without a token gets nothing",
    );
    println!("$ {cli} get users/alice   # no token");
    let mut tokenless = alice.clone();
    tokenless.token = None;
    tokenless.addr = owner(map, "users/alice")?.1.addr.clone();
    let bare = Connection::connect(&tokenless)
        .await
        .context("connect without a token")?;
    match bare.get("users/alice").await {
        Err(err @ ClientError::Refused(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a token refusal, got: {other}"),
        Ok(_) => bail!("a request without a token was answered"),
    }

    step(
        11,
        "Checkpoint 1: a client without a certificate is refused in the TLS handshake",
    );
    println!(
        "$ skv --ca {} --addr {first} get users/alice   # no --cert/--key",
        layout.ca_cert().display()
    );
    let anonymous = ConnectOptions::new(
        first.as_str(),
        Security::Tls {
            ca: layout.ca_cert(),
            identity: None,
        },
    );
    match Connection::connect(&anonymous).await {
        Err(err @ ClientError::Tls(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a TLS refusal, got: {other}"),
        Ok(_) => bail!("a client without a certificate was let in"),
    }

    step(
        12,
        "Alice is not an administrator: cluster control requests need the admin scope",
    );
    println!("(alice sends STATUS, a control request, to n1 with her token)");
    match client
        .connection_to(&map.nodes[0].id)
        .await?
        .control(&ControlRequest::Status)
        .await
    {
        Err(err @ ClientError::Refused(_)) => println!("skv: {err}   (exit {})", err.exit_code()),
        Err(other) => bail!("expected a refusal, got: {other}"),
        Ok(_) => bail!("alice's token passed for an admin request"),
    }

    step(
        13,
        "Cluster status, as the admin: each node reports its keys and map epoch, each shard its leader and followers",
    );
    println!("$ skv cluster status --dir DIR   # for a cluster made by `skv cluster init`");
    // The same table `skv cluster status` prints. The demo's nodes run inside this process,
    // so they share its PID.
    let rows = status_rows(&admin, map, nodes).await;
    print!(
        "{}",
        render_table(layout.dir(), map, Some(first.as_str()), &rows)
    );
    if let Some(err) = rows.iter().find_map(|r| r.report.as_ref().err()) {
        bail!("a node did not answer STATUS: {err}");
    }
    Ok(())
}

/// The last `n` lines of `text`, in order.
fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The DER of the first certificate in a PEM file's bytes.
fn pem_to_der(pem: &[u8]) -> anyhow::Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem)
        .context("the client certificate is not PEM")?;
    Ok(der.as_ref().to_vec())
}
