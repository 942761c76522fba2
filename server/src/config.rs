//! Node configuration: the TOML file, the command-line flags that override it, and the
//! validated [`NodeConfig`] the node runs with.
//!
//! Precedence is flag > file > default. Relative paths in a config file are resolved against
//! the file's own directory, so a generated config works from any working directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skv_proto::{DEFAULT_MAX_FRAME, MIN_MAX_FRAME};

/// Default listen address. Loopback, so a node started without thought is not reachable
/// from the network.
pub const DEFAULT_LISTEN: &str = skv_proto::DEFAULT_ADDR;

/// How a write reaches the disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A write is acknowledged only after it is flushed to disk; concurrent writes share one
    /// flush (group commit).
    #[default]
    Sync,
    /// sled flushes in the background every `flush_every_ms`; a crash loses at most that
    /// window of acknowledged writes.
    Async,
}

/// Which storage engine holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// sled on disk in `data_dir`.
    #[default]
    Sled,
    /// In memory only: everything is lost at exit. For benchmarks and tests.
    Memory,
    /// Stores nothing; every GET returns the last value written. Only for measuring the
    /// network stack (the benchmark ladder's null rung).
    Null,
}

/// Where and how often tokens are checked (checkpoint 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// A token in every request frame: fully stateless, optionally with a verified-token cache.
    PerRequest,
    /// A token once, in HELLO; every later request is still checked against its expiry.
    PerConnection,
    /// No token checks: mutual TLS alone admits a client.
    Off,
}

/// Default number of audit files kept (the live one included).
pub const DEFAULT_AUDIT_MAX_FILES: usize = 4;

/// Default size of one audit file before rotation, in MiB.
pub const DEFAULT_AUDIT_MAX_MB: u64 = 64;

/// Default number of verified tokens cached per node.
pub const DEFAULT_TOKEN_CACHE: usize = 10_000;

/// Token checking settings, present when the node has a keyset and auth is not off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Public keyset file (JWKS-style JSON); reloaded on change and on SIGHUP.
    pub keyset: PathBuf,
    /// Token denylist file (`skv token revoke`); reloaded on change and on SIGHUP.
    pub denylist: Option<PathBuf>,
    /// Per request or per connection.
    pub mode: AuthMode,
    /// Entries in the verified-token cache (per-request mode); 0 disables it.
    pub token_cache: usize,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim.
    pub issuer: String,
    /// Clock skew tolerated on exp and nbf.
    pub leeway: Duration,
    /// Refuse tokens without a certificate binding (`cnf`).
    pub require_bound_tokens: bool,
    /// Audit log file; refusals always, allows with `audit_allows`.
    pub audit_log: Option<PathBuf>,
    /// Also log allowed requests.
    pub audit_allows: bool,
    /// Audit files kept: the live one plus `audit_max_files - 1` rotated ones (`FILE.1`, ...).
    pub audit_max_files: usize,
    /// Size at which the live audit file is rotated, in bytes.
    pub audit_max_bytes: u64,
}

/// A configuration problem, reported before the node binds anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for a node config.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (line and column included).
        message: String,
    },
    /// A setting has a value the node cannot run with.
    #[error("invalid setting `{setting}`: {message}")]
    Invalid {
        /// The setting's name as in the config file.
        setting: &'static str,
        /// What is wrong and what would be right.
        message: String,
    },
}

/// The node's settings as written by people, in a config file or as flags: every field
/// optional, so that "not given" can fall through to the next layer.
///
/// One struct serves both sources. serde reads it from TOML (`deny_unknown_fields`: a typo is
/// an error naming the key) and clap reads it from the command line: each field's flag is its
/// name with `-`, except that the `_secs` fields' flags drop the unit (`--handshake-timeout`,
/// `--shutdown-timeout`, `--leeway`; the `-secs` spelling works too). Boolean flags take no
/// value (`--insecure-plaintext`) or an explicit one (`--insecure-plaintext=false`, to
/// override a file). The doc comments below are `skv-node --help`.
/// [`FileConfig::merge_flags`] lays the flags over a loaded file; [`NodeConfig`] applies the
/// defaults and validates.
#[derive(Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node name, shown to clients and in logs, and the node id in the map [default: the
    /// `<id>` of the certificate's `spiffe://<cluster>/node/<id>`, else skv-node].
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory of the sled database [default: ./skv-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Storage engine [default: sled].
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// sync: acknowledge writes after they are flushed (group commit); async: sled flushes
    /// every --flush-every-ms and a crash may lose that window [default: sync].
    #[arg(long, value_enum)]
    pub durability: Option<Durability>,
    /// Background flush interval for --durability async [default: 500].
    #[arg(long, value_name = "MS")]
    pub flush_every_ms: Option<u64>,
    /// Cluster CA certificate (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This node's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Certificate revocation lists (PEM, from `skv certs revoke`) for client and node
    /// certificates, checked at every handshake in both directions and, after a change, on
    /// the next request of connections accepted before it. --ca, --cert, --key and --crl are
    /// reloaded when a file changes and on SIGHUP; a set that fails to load keeps the old one.
    #[arg(long, value_name = "FILE")]
    pub crl: Option<PathBuf>,
    /// Serve WITHOUT TLS. Only for benchmark baselines and labs; clients need --plaintext.
    #[arg(long, value_name = "BOOL", num_args = 0..=1)]
    #[arg(require_equals = true, default_missing_value = "true")]
    pub insecure_plaintext: Option<bool>,
    /// Serve TLS WITHOUT requiring client certificates (server-auth only). Only for benchmark
    /// baselines and labs.
    #[arg(long, value_name = "BOOL", num_args = 0..=1)]
    #[arg(require_equals = true, default_missing_value = "true")]
    pub insecure_no_client_auth: Option<bool>,
    /// Largest frame payload accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    pub max_frame: Option<usize>,
    /// Most connections served at once; at the cap the oldest connection still in its TLS
    /// handshake or HELLO is dropped to make room, and with none the newcomer is closed
    /// [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections from one source IP address, in any state [default: 256].
    #[arg(long, value_name = "N")]
    pub max_connections_per_source: Option<usize>,
    /// Most established connections per client certificate; past it HELLO must carry a token
    /// that verifies [default: 256].
    #[arg(long, value_name = "N")]
    pub max_connections_per_identity: Option<usize>,
    /// Seconds a client connection may stay idle (no request, no answer pending) after HELLO
    /// before it is closed (within a quarter more: the check runs four times per timeout);
    /// 0 never closes it [default: 300].
    #[arg(
        long = "idle-timeout",
        visible_alias = "idle-timeout-secs",
        value_name = "SECS"
    )]
    pub idle_timeout_secs: Option<u64>,
    /// Seconds a client has to complete the TLS handshake and HELLO [default: 10].
    #[arg(
        long = "handshake-timeout",
        visible_alias = "handshake-timeout-secs",
        value_name = "SECS"
    )]
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds a graceful shutdown waits for in-flight requests [default: 30].
    #[arg(
        long = "shutdown-timeout",
        visible_alias = "shutdown-timeout-secs",
        value_name = "SECS"
    )]
    pub shutdown_timeout_secs: Option<u64>,
    /// Public keyset (from `skv keys init`) for token checks; reloaded when the file changes
    /// and on SIGHUP. With a keyset, --auth defaults to per-request.
    #[arg(long, value_name = "FILE")]
    pub keyset: Option<PathBuf>,
    /// Token denylist (JSON, written by `skv token revoke`): tokens revoked by jti or sub are
    /// refused though they verify; reloaded when the file changes and on SIGHUP. A file that
    /// is missing or invalid at start stops the node; on reload it keeps the previous list.
    #[arg(long, value_name = "FILE")]
    pub denylist: Option<PathBuf>,
    /// Token mode: a token in every request, once per connection, or no token checks.
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Verified-token cache entries for per-request mode; 0 disables it [default: 10000].
    #[arg(long, value_name = "N")]
    pub token_cache: Option<usize>,
    /// Audience tokens must carry [default: skv].
    #[arg(long, value_name = "AUD")]
    pub aud: Option<String>,
    /// Issuer tokens must carry [default: skv].
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// Seconds of clock skew tolerated on exp and nbf [default: 5].
    #[arg(long = "leeway", visible_alias = "leeway-secs", value_name = "SECS")]
    pub leeway_secs: Option<u64>,
    /// Refuse tokens that are not bound to the client's certificate.
    #[arg(long, value_name = "BOOL", num_args = 0..=1)]
    #[arg(require_equals = true, default_missing_value = "true")]
    pub require_bound_tokens: Option<bool>,
    /// Append one JSON line per refused request (and per allowed one with --audit-allows).
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
    /// Log allowed requests in the audit log too.
    #[arg(long, value_name = "BOOL", num_args = 0..=1)]
    #[arg(require_equals = true, default_missing_value = "true")]
    pub audit_allows: Option<bool>,
    /// Audit files kept, the live one included: at --audit-max-mb the file is renamed to
    /// FILE.1 (FILE.1 to FILE.2, ...) and the oldest is deleted [default: 4].
    #[arg(long, value_name = "N")]
    pub audit_max_files: Option<usize>,
    /// Size of one audit file, in MiB, before it is rotated [default: 64].
    #[arg(long, value_name = "MIB")]
    pub audit_max_mb: Option<u64>,
    /// Cluster name: peers must present `spiffe://NAME/node/<id>` certificates [default: the
    /// trust domain of --cert's SPIFFE ID].
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Bootstrap cluster map (JSON, written by `skv cluster init`); a newer map persisted in
    /// the data dir wins. Without one the node owns every slot alone.
    #[arg(long, value_name = "FILE")]
    pub cluster_map: Option<PathBuf>,
    /// Address clients and peers dial to reach this node, as listed in the cluster map
    /// [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Shortest time a follower waits without hearing from its leader before it stands for
    /// election; each wait is drawn between this and twice this. Leaders heartbeat every fifth
    /// of it. Shorter fails over sooner; too short for the network's delays causes needless
    /// elections [default: 300].
    #[arg(long = "election-timeout-ms", value_name = "MS")]
    pub election_timeout_ms: Option<u64>,
    /// Entries each Raft group appends between snapshots; the log keeps at most half of this
    /// (and at most 1000) entries behind the last snapshot [default: 20000].
    #[arg(long = "snapshot-every", value_name = "ENTRIES")]
    pub snapshot_every: Option<u64>,
    /// Encrypt values at rest (AES-256-GCM) under the 32-byte master key in FILE: 64 hex
    /// characters or 32 raw bytes, mode 0600 or stricter. Without it, `SKV_MASTER_KEY` (hex)
    /// is used when set; with neither, data is stored in the clear. A data dir written
    /// encrypted refuses to open without its key (docs/SECURITY.md, "Encryption at rest").
    #[arg(long = "master-key", value_name = "FILE")]
    pub master_key: Option<PathBuf>,
    /// Bytes of recently read records the node keeps in memory in front of sled (keys, values
    /// and about 128 bytes per entry), shared by all its shards; a full cache drops an
    /// arbitrary half of a part to make room. Cached values are plaintext even with
    /// --master-key. 0: every read goes to sled [default: 64 MiB].
    #[arg(long = "read-cache-bytes", value_name = "BYTES")]
    pub read_cache_bytes: Option<usize>,

    // ---- limits per identity, load shedding, metrics (issue 12, docs/SECURITY.md "Limits")
    /// Requests per second one identity may send (its token's `sub`, or its client
    /// certificate when it sends no token), with a burst of one second's worth; past it a
    /// request is answered `rate limited` with a retry-after. 0: no limit [default: 0].
    #[arg(long, value_name = "N")]
    pub rate_limit_rps: Option<u64>,
    /// Request and answer bytes per second one identity may move, with a burst of one
    /// second's worth (at least one frame). 0: no limit [default: 0].
    #[arg(long, value_name = "BYTES")]
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// Requests in flight across the node (read, not yet answered) past which it is
    /// overloaded: new connections are answered `overloaded` at HELLO (and, past twice this,
    /// closed before their TLS handshake) while established ones keep being served.
    /// 0: never shed [default: 8192].
    #[arg(long, value_name = "N")]
    pub overload_inflight: Option<usize>,
    /// Bytes of requests and answers one client connection may hold in the node while they
    /// wait (durable writes, linearizable reads, scans): a pipelining client that does not
    /// read its answers gets backpressure, not memory; at least twice --max-frame
    /// [default: 16 MiB, or four frames when larger].
    #[arg(long, value_name = "BYTES")]
    pub max_pending_bytes: Option<usize>,
    /// Serve Prometheus metrics over HTTP on GET /metrics at ADDR (HOST:PORT); off unless
    /// given. The endpoint has no TLS or authentication: bind it to a private address.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

impl FileConfig {
    /// Read and parse a config file, resolving its relative paths against its directory.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: one_line_toml_error(&text, &e),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.data_dir,
            &mut cfg.ca,
            &mut cfg.cert,
            &mut cfg.key,
            &mut cfg.crl,
            &mut cfg.keyset,
            &mut cfg.denylist,
            &mut cfg.audit_log,
            &mut cfg.cluster_map,
            &mut cfg.master_key,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    /// Lay the flags given on the command line over `self`: flag > file. Only flags that were
    /// actually given replace a value (none of them has a clap default); clap's derived
    /// updater does the per-field work, so a new field needs no code here.
    pub fn merge_flags(&mut self, flags: &clap::ArgMatches) -> Result<(), clap::Error> {
        clap::FromArgMatches::update_from_arg_matches(self, flags)
    }
}

/// A TOML error on one line, quoting the offending line so that the key is named even when
/// the parser's own message only describes the value (`invalid type: string "x", expected
/// usize`). The toml crate's `Display` spreads the same over several lines.
fn one_line_toml_error(text: &str, err: &toml::de::Error) -> String {
    let Some(before) = err.span().and_then(|span| text.get(..span.start)) else {
        return err.message().trim().to_owned();
    };
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    let source = text[line_start..].lines().next().unwrap_or("").trim();
    format!(
        "line {line}, column {column} (`{source}`): {}",
        err.message().trim()
    )
}

/// Transport security of the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportConfig {
    /// TLS 1.3: clients must present a certificate that chains to `ca`, unless
    /// `client_auth` is off (server-authenticated TLS only: the ladder's L1 rung).
    Tls {
        /// Cluster CA (PEM).
        ca: PathBuf,
        /// Require and verify client certificates (mutual TLS). Off only with
        /// `--insecure-no-client-auth`.
        client_auth: bool,
        /// Node certificate chain (PEM).
        cert: PathBuf,
        /// Node private key (PEM).
        key: PathBuf,
        /// Certificate revocation lists (PEM); `None`: no revocation checks.
        crl: Option<PathBuf>,
    },
    /// No TLS at all (`--insecure-plaintext`).
    Plaintext,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Listen address.
    pub listen: SocketAddr,
    /// sled directory (unused by the memory engine).
    pub data_dir: PathBuf,
    /// Storage engine.
    pub engine: Engine,
    /// Write durability.
    pub durability: Durability,
    /// Background flush interval for async durability.
    pub flush_every: Duration,
    /// TLS or plaintext.
    pub transport: TransportConfig,
    /// Frame payload limit.
    pub max_frame: usize,
    /// Connection cap.
    pub max_connections: usize,
    /// Connection cap per source IP address.
    pub max_connections_per_source: usize,
    /// Established-connection cap per client certificate (past it, a verified token admits).
    pub max_connections_per_identity: usize,
    /// Idle client connections are closed after this; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Deadline for TLS handshake plus HELLO.
    pub handshake_timeout: Duration,
    /// Deadline for draining in-flight requests at shutdown.
    pub shutdown_timeout: Duration,
    /// Token checks; `None` when auth is off.
    pub auth: Option<AuthConfig>,
    /// Cluster name; `None`: from the node certificate's SPIFFE ID (or `skv` without one).
    pub cluster: Option<String>,
    /// Bootstrap cluster map file; `None`: a one-node map owning every slot.
    pub cluster_map: Option<PathBuf>,
    /// Address written in the map for this node; `None`: the bound listen address.
    pub advertise: Option<String>,
    /// Lower bound of the Raft election timeout (the upper bound is twice it).
    pub election_timeout: Duration,
    /// Entries between snapshots of each Raft group.
    pub snapshot_every: u64,
    /// The master key file of encryption at rest (`None`: `SKV_MASTER_KEY`, else off).
    pub master_key: Option<PathBuf>,
    /// Budget of the read cache in front of sled; 0: off.
    pub read_cache_bytes: usize,
    /// Requests per second per identity; `None`: no limit.
    pub rate_limit_rps: Option<u64>,
    /// Request and answer bytes per second per identity; `None`: no limit.
    pub rate_limit_bytes_per_sec: Option<u64>,
    /// Node-wide requests in flight past which new connections are shed; `None`: never.
    pub overload_inflight: Option<usize>,
    /// Bytes of waiting requests and answers one client connection may hold.
    pub max_pending_bytes: usize,
    /// Where `/metrics` is served; `None`: nowhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl NodeConfig {
    /// Validate a file config (already merged with flags) into a runnable config.
    pub fn from_file_config(cfg: FileConfig) -> Result<NodeConfig, ConfigError> {
        let auth = auth_config(&cfg);
        let listen_text = cfg.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_text.parse().map_err(|_| ConfigError::Invalid {
            setting: "listen",
            message: format!(
                "`{listen_text}` is not HOST:PORT with a numeric IP, e.g. 127.0.0.1:7400"
            ),
        })?;
        let max_frame = cfg.max_frame.unwrap_or(DEFAULT_MAX_FRAME);
        if !(MIN_MAX_FRAME..=u32::MAX as usize).contains(&max_frame) {
            return Err(ConfigError::Invalid {
                setting: "max_frame",
                message: format!(
                    "{max_frame} is outside {MIN_MAX_FRAME}..={} bytes",
                    u32::MAX
                ),
            });
        }
        let max_connections = cfg.max_connections.unwrap_or(1024);
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                setting: "max_connections",
                message: "must be at least 1".into(),
            });
        }
        let max_connections_per_source = cfg
            .max_connections_per_source
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_SOURCE);
        let max_connections_per_identity = cfg
            .max_connections_per_identity
            .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_IDENTITY);
        for (setting, value) in [
            ("max_connections_per_source", max_connections_per_source),
            ("max_connections_per_identity", max_connections_per_identity),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    setting,
                    message: "must be at least 1".into(),
                });
            }
        }
        let idle_timeout = match cfg.idle_timeout_secs.unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        };
        let transport = if cfg.insecure_plaintext.unwrap_or(false) {
            TransportConfig::Plaintext
        } else {
            let missing = |setting: &'static str| ConfigError::Invalid {
                setting,
                message: format!(
                    "TLS needs --ca, --cert and --key (create them with `skv certs init`), \
                     or --insecure-plaintext for a benchmark baseline; `{setting}` is missing"
                ),
            };
            TransportConfig::Tls {
                client_auth: !cfg.insecure_no_client_auth.unwrap_or(false),
                ca: cfg.ca.ok_or_else(|| missing("ca"))?,
                cert: cfg.cert.ok_or_else(|| missing("cert"))?,
                key: cfg.key.ok_or_else(|| missing("key"))?,
                crl: cfg.crl,
            }
        };
        // After the transport, so a config missing everything is first told about TLS.
        let auth = auth?;
        // A TLS node is, to its peers and (since they check it against the map) its clients,
        // the node its certificate names: that is the default name, so a node started without
        // --name does not serve a map that contradicts its own certificate.
        let name = cfg
            .name
            .or_else(|| match &transport {
                TransportConfig::Tls { cert, .. } => crate::net::identity::node_id_of_file(cert),
                TransportConfig::Plaintext => None,
            })
            .unwrap_or_else(|| "skv-node".to_owned());
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid {
                setting: "name",
                message: "must be 1 to 64 printable characters".into(),
            });
        }
        let handshake_secs = cfg.handshake_timeout_secs.unwrap_or(10);
        if handshake_secs == 0 {
            return Err(ConfigError::Invalid {
                setting: "handshake_timeout_secs",
                message: "must be at least 1".into(),
            });
        }
        if let Some(advertise) = &cfg.advertise {
            if advertise.is_empty() || advertise.len() > 255 || !advertise.contains(':') {
                return Err(ConfigError::Invalid {
                    setting: "advertise",
                    message: format!("`{advertise}` is not HOST:PORT"),
                });
            }
        }
        if let Some(cluster) = &cfg.cluster {
            let ok = !cluster.is_empty()
                && cluster.len() <= 63
                && cluster
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
            if !ok {
                return Err(ConfigError::Invalid {
                    setting: "cluster",
                    message: format!(
                        "`{cluster}` is not a cluster name (1-63 of a-z, 0-9, '-', '.', '_')"
                    ),
                });
            }
        }
        let election_ms = cfg
            .election_timeout_ms
            .unwrap_or(DEFAULT_ELECTION_TIMEOUT_MS);
        if !(50..=60_000).contains(&election_ms) {
            return Err(ConfigError::Invalid {
                setting: "election-timeout-ms",
                message: format!(
                    "{election_ms} ms is outside 50..=60000: heartbeats go out every fifth of it"
                ),
            });
        }
        let nonzero = |v: Option<u64>| v.filter(|n| *n > 0);
        let rate_limit_rps = nonzero(cfg.rate_limit_rps);
        let rate_limit_bytes_per_sec = nonzero(cfg.rate_limit_bytes_per_sec);
        let overload_inflight = match cfg.overload_inflight.unwrap_or(DEFAULT_OVERLOAD_INFLIGHT) {
            0 => None,
            n => Some(n),
        };
        let max_pending_bytes = cfg
            .max_pending_bytes
            .unwrap_or_else(|| DEFAULT_MAX_PENDING_BYTES.max(4 * max_frame));
        if max_pending_bytes < 2 * max_frame {
            return Err(ConfigError::Invalid {
                setting: "max_pending_bytes",
                message: format!(
                    "{max_pending_bytes} is below twice max_frame ({}): a read reserves a \
                     frame for its answer",
                    2 * max_frame
                ),
            });
        }
        let metrics_listen = match &cfg.metrics_listen {
            None => None,
            Some(text) => Some(text.parse().map_err(|_| ConfigError::Invalid {
                setting: "metrics_listen",
                message: format!("`{text}` is not HOST:PORT with a numeric IP"),
            })?),
        };
        Ok(NodeConfig {
            rate_limit_rps,
            rate_limit_bytes_per_sec,
            overload_inflight,
            max_pending_bytes,
            metrics_listen,
            cluster: cfg.cluster,
            cluster_map: cfg.cluster_map,
            advertise: cfg.advertise,
            auth,
            name,
            listen,
            data_dir: cfg.data_dir.unwrap_or_else(|| PathBuf::from("skv-data")),
            engine: cfg.engine.unwrap_or_default(),
            durability: cfg.durability.unwrap_or_default(),
            flush_every: Duration::from_millis(cfg.flush_every_ms.unwrap_or(500).max(1)),
            transport,
            max_frame,
            max_connections,
            max_connections_per_source,
            max_connections_per_identity,
            idle_timeout,
            handshake_timeout: Duration::from_secs(handshake_secs),
            shutdown_timeout: Duration::from_secs(cfg.shutdown_timeout_secs.unwrap_or(30)),
            election_timeout: Duration::from_millis(election_ms),
            snapshot_every: cfg.snapshot_every.unwrap_or(DEFAULT_SNAPSHOT_EVERY).max(10),
            master_key: cfg.master_key,
            read_cache_bytes: cfg.read_cache_bytes.unwrap_or(DEFAULT_READ_CACHE_BYTES),
        })
    }
}

/// Default cap of connections from one source address: room for a busy client host or a small
/// NAT, a quarter of the node's default cap.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 256;

/// Default node-wide requests in flight past which new connections are shed. Far above what
/// the ladder's heaviest rung keeps in flight (64), and below the point where the shards'
/// own queues refuse writes (`try again`), so shedding new clients comes first.
pub const DEFAULT_OVERLOAD_INFLIGHT: usize = 8192;

/// Default bytes of waiting requests and answers per client connection.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 16 << 20;

/// Default cap of established connections per client certificate.
pub const DEFAULT_MAX_CONNECTIONS_PER_IDENTITY: usize = 256;

/// Default idle timeout of a client connection after HELLO, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 300;

/// Default number of entries between snapshots of a Raft group.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 20_000;

/// Default budget of the read cache in front of sled (`--read-cache-bytes`).
pub const DEFAULT_READ_CACHE_BYTES: usize = 64 << 20;

/// Default lower bound of the election timeout. openraft makes a follower that had a leader
/// wait out the leader's lease (the longest timeout, twice this) plus its own timeout before it
/// stands, so a leader's failure is followed by a new leader after 0.9–1.2 s (1.5–2 s with
/// 500 ms, which measured a failover p50 of 1.9–2.1 s against the 2 s target); heartbeats
/// every 60 ms still leave room for a slow fsync.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = skv_proto::DEFAULT_ELECTION_TIMEOUT_MS;

fn auth_config(cfg: &FileConfig) -> Result<Option<AuthConfig>, ConfigError> {
    let mode = match (cfg.auth, &cfg.keyset) {
        // A denylist the node would never read must not look like revocation in force.
        (Some(AuthMode::Off), _) if cfg.denylist.is_some() => {
            return Err(ConfigError::Invalid {
                setting: "denylist",
                message: "--auth off checks no tokens, so a token denylist would do nothing".into(),
            })
        }
        (Some(AuthMode::Off), _) => return Ok(None),
        // Without token checks every client certificate the CA signed is an administrator:
        // that must be asked for, never a default.
        (None, None) => {
            return Err(ConfigError::Invalid {
                setting: "keyset",
                message: "a node checks tokens: give --keyset FILE (create one with `skv keys \
                          init`), or --auth off to let every client certificate do anything"
                    .into(),
            })
        }
        (Some(mode), Some(_)) => mode,
        (None, Some(_)) => AuthMode::PerRequest,
        (Some(_), None) => {
            return Err(ConfigError::Invalid {
                setting: "keyset",
                message: "token auth needs --keyset FILE (create one with `skv keys init`)".into(),
            })
        }
    };
    let Some(keyset) = cfg.keyset.clone() else {
        return Ok(None);
    };
    Ok(Some(AuthConfig {
        keyset,
        denylist: cfg.denylist.clone(),
        mode,
        token_cache: cfg.token_cache.unwrap_or(DEFAULT_TOKEN_CACHE),
        audience: cfg
            .aud
            .clone()
            .unwrap_or_else(|| skv_token::DEFAULT_TOKEN_AUDIENCE.to_owned()),
        issuer: cfg
            .iss
            .clone()
            .unwrap_or_else(|| skv_token::DEFAULT_TOKEN_ISSUER.to_owned()),
        leeway: Duration::from_secs(cfg.leeway_secs.unwrap_or(5)),
        require_bound_tokens: cfg.require_bound_tokens.unwrap_or(false),
        audit_log: cfg.audit_log.clone(),
        audit_allows: cfg.audit_allows.unwrap_or(false),
        audit_max_files: audit_max_files(cfg)?,
        audit_max_bytes: audit_max_mb(cfg)? << 20,
    }))
}

fn audit_max_files(cfg: &FileConfig) -> Result<usize, ConfigError> {
    let files = cfg.audit_max_files.unwrap_or(DEFAULT_AUDIT_MAX_FILES);
    if !(1..=1000).contains(&files) {
        return Err(ConfigError::Invalid {
            setting: "audit_max_files",
            message: format!("{files} is outside 1..=1000"),
        });
    }
    Ok(files)
}

fn audit_max_mb(cfg: &FileConfig) -> Result<u64, ConfigError> {
    let mb = cfg.audit_max_mb.unwrap_or(DEFAULT_AUDIT_MAX_MB);
    if !(1..=1 << 20).contains(&mb) {
        return Err(ConfigError::Invalid {
            setting: "audit_max_mb",
            message: format!("{mb} is outside 1..=1048576 MiB"),
        });
    }
    Ok(mb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The settings as `skv-node` parses them (it flattens [`FileConfig`] the same way).
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        settings: FileConfig,
    }

    /// `file` written as `DIR/node.toml` and loaded, with `flags` laid over it.
    fn layered(dir: &Path, file: &str, flags: &[&str]) -> FileConfig {
        let path = dir.join("node.toml");
        std::fs::write(&path, file).unwrap();
        let mut cfg = FileConfig::load(&path).unwrap();
        let argv = std::iter::once("skv-node").chain(flags.iter().copied());
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        cfg.merge_flags(&matches).unwrap();
        cfg
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = "listen = \"127.0.0.1:1\"\nhandshake_timeout_secs = 3\nleeway_secs = 9\n\
                    durability = \"async\"\ninsecure_plaintext = true\naudit_allows = true\n\
                    max_connections = 8\nauth = \"off\"\n";
        let cfg = layered(
            dir.path(),
            file,
            &[
                "--listen",
                "127.0.0.1:0",
                "--handshake-timeout",
                "7",
                "--leeway-secs",
                "1",
                "--insecure-plaintext=false",
                "--require-bound-tokens",
                "--engine",
                "memory",
            ],
        );
        // Flag > file, for values and for booleans in both directions.
        assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(cfg.handshake_timeout_secs, Some(7));
        assert_eq!(cfg.leeway_secs, Some(1));
        assert_eq!(cfg.insecure_plaintext, Some(false));
        assert_eq!(cfg.require_bound_tokens, Some(true));
        assert_eq!(cfg.engine, Some(Engine::Memory));
        // A flag not given leaves the file's value, boolean or not.
        assert_eq!(cfg.durability, Some(Durability::Async));
        assert_eq!(cfg.audit_allows, Some(true));
        assert_eq!(cfg.max_connections, Some(8));
        assert_eq!(cfg.name, None);

        // File > default; neither: the default.
        let cfg = layered(dir.path(), file, &[]);
        let node = NodeConfig::from_file_config(cfg).unwrap();
        assert_eq!(node.transport, TransportConfig::Plaintext);
        assert_eq!(node.handshake_timeout, Duration::from_secs(3));
        assert_eq!(node.max_connections, 8);
        assert_eq!(node.durability, Durability::Async);
        assert_eq!(node.name, "skv-node");
        assert_eq!(node.engine, Engine::Sled);
        assert_eq!(node.shutdown_timeout, Duration::from_secs(30));
    }

    #[test]
    fn file_paths_follow_the_file_and_flag_paths_stay_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = layered(
            dir.path(),
            "ca = \"pki/ca.pem\"\ncert = \"n1.pem\"\nkeyset = \"/abs/keyset.json\"\n\
             denylist = \"keys/denylist.json\"\n",
            &["--cert", "flag/n1.pem", "--audit-log", "audit.log"],
        );
        assert_eq!(cfg.ca, Some(dir.path().join("pki/ca.pem")));
        assert_eq!(cfg.denylist, Some(dir.path().join("keys/denylist.json")));
        assert_eq!(cfg.keyset, Some(PathBuf::from("/abs/keyset.json")));
        // Flags are relative to the working directory, as on any command line.
        assert_eq!(cfg.cert, Some(PathBuf::from("flag/n1.pem")));
        assert_eq!(cfg.audit_log, Some(PathBuf::from("audit.log")));
    }

    #[test]
    fn every_file_key_is_a_documented_flag() {
        // serde lists every key it knows when it refuses an unknown one.
        let err = toml::from_str::<FileConfig>("no_such_key = 1").unwrap_err();
        let text = err.to_string();
        let expected = text.split("expected one of").nth(1).expect(&text);
        let mut keys: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let cmd = Cli::command();
        let mut flags: Vec<&str> = cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some())
            .map(|a| a.get_id().as_str())
            .filter(|id| !["help", "version"].contains(id))
            .collect();
        keys.sort_unstable();
        flags.sort_unstable();
        assert_eq!(keys, flags);
        for arg in cmd.get_arguments() {
            assert!(
                arg.get_help().is_some(),
                "--{:?} has no help",
                arg.get_long()
            );
        }
        cmd.debug_assert();
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\nca = \"ca.pem\"\ncert = \"/abs/n1.pem\"\nkey = \"k.pem\"\ncrl = \"crl.pem\"\ndurability = \"async\"\nauth = \"off\"\n",
        )
        .unwrap();
        let cfg = NodeConfig::from_file_config(FileConfig::load(&path).unwrap()).unwrap();
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        assert_eq!(cfg.durability, Durability::Async);
        assert_eq!(
            cfg.transport,
            TransportConfig::Tls {
                client_auth: true,
                ca: dir.path().join("ca.pem"),
                cert: PathBuf::from("/abs/n1.pem"),
                key: dir.path().join("k.pem"),
                crl: Some(dir.path().join("crl.pem")),
            }
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let err = NodeConfig::from_file_config(FileConfig {
            insecure_plaintext: Some(true),
            max_frame: Some(10),
            ..FileConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_frame"), "{err}");

        let err = NodeConfig::from_file_config(FileConfig::default()).unwrap_err();
        assert!(err.to_string().contains("skv certs init"), "{err}");

        // A pending-bytes bound a single read's reservation could not fit is refused.
        let err = NodeConfig::from_file_config(FileConfig {
            insecure_plaintext: Some(true),
            auth: Some(AuthMode::Off),
            max_pending_bytes: Some(1 << 20),
            ..FileConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("max_pending_bytes"), "{err}");
        // The limits' defaults: rates off, shedding on, 16 MiB pending, no metrics.
        let node = NodeConfig::from_file_config(FileConfig {
            insecure_plaintext: Some(true),
            auth: Some(AuthMode::Off),
            rate_limit_rps: Some(0),
            ..FileConfig::default()
        })
        .unwrap();
        assert_eq!(node.rate_limit_rps, None);
        assert_eq!(node.rate_limit_bytes_per_sec, None);
        assert_eq!(node.overload_inflight, Some(DEFAULT_OVERLOAD_INFLIGHT));
        assert_eq!(node.max_pending_bytes, DEFAULT_MAX_PENDING_BYTES);
        assert_eq!(node.metrics_listen, None);
        assert_eq!(node.read_cache_bytes, DEFAULT_READ_CACHE_BYTES);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\nlistne = \"x\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("line 2, column 1 (`listne = \"x\"`): unknown field `listne`"));
        assert_eq!(err.lines().count(), 1, "{err}");

        std::fs::write(&path, "max_connections = \"lots\"\n").unwrap();
        let err = FileConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("max_connections") && err.contains("usize"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
