//! `skv cluster ...`: tooling for a cluster of `skv-node` processes on this machine, all of it
//! kept in one directory (see docs/CLUSTER.md for the layout and the cluster model).
//!
//! The commands talk to nodes as the `admin` client of the directory's PKI with the
//! directory's admin token. They build those credentials from the fixed layout rather than
//! from `client.toml`, so they keep working if a person edits the profile.

mod admin;
mod chaos;
mod files;
mod init;
mod process;
pub(crate) mod status;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use skv_certs::issuer::{inspect, mint, IssuerKey, TokenSpec};
use skv_certs::Layout;
use skv_client::{exit, ClientError, ConnectOptions, Connection, Security};
use skv_proto::cluster::ClusterMap;

use crate::args::ClusterCommand;
use files::NodeFile;

/// Lifetime of the admin token `init` writes and `up` renews.
const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// `up` (and every command that talks to nodes) renews the admin token when it has less
/// than this left, so a command started just before expiry does not fail halfway.
const ADMIN_TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(3600);
/// The client identity the tooling uses.
const ADMIN: &str = "admin";

pub(crate) fn run(cmd: ClusterCommand, json: bool) -> u8 {
    let (name, result) = match cmd {
        ClusterCommand::Init(args) => ("init", init::run(args)),
        ClusterCommand::Up(args) => ("up", process::up(&args.dir)),
        ClusterCommand::Status(args) => ("status", status::run(&args.dir, json)),
        ClusterCommand::Down(args) => ("down", process::down(&args.dir)),
        ClusterCommand::AddNode(args) => ("add-node", admin::add_node(&args.dir, args.id)),
        ClusterCommand::Rebalance(args) => ("rebalance", admin::rebalance(&args.dir)),
        ClusterCommand::ReplaceNode(args) => (
            "replace-node",
            admin::replace_node(&args.dir, &args.dead, args.with),
        ),
        ClusterCommand::Chaos(args) => ("chaos", chaos::run(args, json)),
        ClusterCommand::RemoveNode(args) => {
            ("remove-node", admin::remove_node(&args.dir, &args.id))
        }
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("skv cluster {name}: {}", failure.message);
            failure.code
        }
    }
}

/// Why a cluster command failed: one line for stderr and the exit code it maps to.
#[derive(Debug)]
pub(super) struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    /// Bad flags, a directory that is not (or already is) a cluster, unreadable files.
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }

    /// A node that is down, did not start, or cannot be reached.
    fn connection(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::CONNECTION,
            message: message.into(),
        }
    }

    /// A node that reported an error, or a process that would not stop.
    fn server(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::SERVER,
            message: message.into(),
        }
    }

    /// `err` with some context in front, keeping its exit code.
    fn client(context: &str, err: &ClientError) -> Failure {
        Failure {
            code: err.exit_code(),
            message: format!("{context}: {err}"),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// The paths of a cluster directory. Everything the tooling writes lives under `root`, and
/// every path inside a written file is relative, so the directory can be moved as a whole
/// (while its nodes are stopped).
#[derive(Debug, Clone)]
pub(super) struct ClusterDir {
    root: PathBuf,
}

impl ClusterDir {
    /// An existing cluster directory, made absolute (pid files are matched against the
    /// absolute config path the nodes were started with).
    fn open(dir: &Path) -> Result<ClusterDir> {
        let root = dir.canonicalize().map_err(|e| {
            Failure::usage(format!(
                "cannot open {}: {e}; create a cluster with `skv cluster init --dir {} --nodes 3`",
                dir.display(),
                dir.display()
            ))
        })?;
        let cd = ClusterDir { root };
        if !cd.nodes_dir().is_dir() {
            return Err(Failure::usage(format!(
                "{} holds no cluster (no nodes/ directory); create one with \
                 `skv cluster init --dir {} --nodes 3`",
                dir.display(),
                dir.display()
            )));
        }
        Ok(cd)
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn pki(&self) -> Layout {
        Layout::new(self.root.join("pki"))
    }

    fn issuer_dir(&self) -> PathBuf {
        self.root.join("issuer")
    }

    fn map_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }

    fn nodes_dir(&self) -> PathBuf {
        self.root.join("nodes")
    }

    fn node_config(&self, id: &str) -> PathBuf {
        self.nodes_dir().join(format!("{id}.toml"))
    }

    fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    fn node_log(&self, id: &str) -> PathBuf {
        self.logs_dir().join(format!("{id}.log"))
    }

    fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    fn pid_file(&self, id: &str) -> PathBuf {
        self.run_dir().join(format!("{id}.pid"))
    }

    fn token_file(&self) -> PathBuf {
        self.root.join("admin.token")
    }

    fn client_profile(&self) -> PathBuf {
        self.root.join("client.toml")
    }

    /// Every node config in `nodes/`, in natural id order (n2 before n10).
    fn node_files(&self) -> Result<Vec<NodeFile>> {
        files::read_node_files(&self.nodes_dir()).map_err(Failure::usage)
    }

    /// The cluster name, from the bootstrap map.
    fn cluster_name(&self) -> Result<String> {
        Ok(self.bootstrap_map()?.cluster)
    }

    /// `cluster.json` as written by `init` (and refreshed by `add-node` and `rebalance`).
    fn bootstrap_map(&self) -> Result<ClusterMap> {
        let path = self.map_file();
        let json = std::fs::read(&path)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", path.display())))?;
        ClusterMap::from_json(&json).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
    }

    /// Record `map` as the bootstrap map, so a node started later (or a cluster restarted
    /// from scratch) begins from the newest map the tooling has seen. Nodes keep a newer map
    /// persisted in their data dir over this file, so it can never move them backwards.
    fn record_map(&self, map: &ClusterMap) -> Result<()> {
        files::write_atomic(&self.map_file(), &map.to_json(), 0o644).map_err(Failure::usage)
    }

    /// Addresses to try when looking for any running node: the profile's seeds, the
    /// bootstrap map, then every node config; duplicates removed, order kept.
    fn seed_addrs(&self) -> Vec<String> {
        let mut addrs = files::profile_seeds(&self.client_profile());
        if let Ok(map) = self.bootstrap_map() {
            addrs.extend(map.nodes.into_iter().map(|n| n.addr));
        }
        if let Ok(nodes) = self.node_files() {
            addrs.extend(nodes.into_iter().map(|n| n.addr));
        }
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(a.clone()));
        addrs
    }

    /// The admin token, renewed first if it is missing, unreadable or close to expiry. Notes
    /// go to stderr so `status --json` keeps a clean stdout.
    fn admin_token(&self) -> Result<String> {
        let path = self.token_file();
        let now = unix_now();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let token = text.trim().to_owned();
            if !needs_renewal(token_expiry(&token), now) {
                return Ok(token);
            }
        }
        let token = mint_admin_token(&self.issuer_dir(), &self.pki())?;
        files::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)
            .map_err(Failure::usage)?;
        eprintln!(
            "renewed {} (valid for {} h)",
            path.display(),
            ADMIN_TOKEN_TTL.as_secs() / 3600
        );
        Ok(token)
    }

    /// Connection options for talking to the node at `addr` as the admin client.
    fn admin_options(&self, addr: &str, token: &str) -> ConnectOptions {
        let pki = self.pki();
        let mut opts = ConnectOptions::new(
            addr,
            Security::Tls {
                ca: pki.ca_cert(),
                identity: Some((pki.client_cert(ADMIN), pki.client_key(ADMIN))),
            },
        );
        opts.token = Some(token.to_owned());
        opts.connect_timeout = Duration::from_secs(5);
        opts
    }

    /// The current map, from the first seed that answers; also says who answered.
    async fn fetch_map(&self, token: &str) -> Result<(ClusterMap, String)> {
        let seeds = self.seed_addrs();
        let mut errors = Vec::new();
        for addr in &seeds {
            match Connection::connect(&self.admin_options(addr, token)).await {
                Ok(conn) => match conn.cluster_map().await {
                    Ok(map) => return Ok((map, addr.clone())),
                    Err(e) => errors.push(format!("{addr}: {e}")),
                },
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        if errors.is_empty() {
            return Err(Failure::usage(format!(
                "{} names no node address to ask for the cluster map",
                self.root.display()
            )));
        }
        Err(Failure::connection(format!(
            "no node answered ({}); start the cluster with `skv cluster up --dir {}`",
            errors.join("; "),
            self.root.display()
        )))
    }
}

/// Print `text` to stdout. A closed pipe (`skv cluster status | head -3`) is the reader's
/// choice, not a failure, so it is not reported (and must not panic as `println!` would).
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// A current-thread runtime: every command is a short sequence of requests.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::usage(format!("cannot start the async runtime: {e}")))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `exp` claim of a token, read WITHOUT verifying it: only to decide whether to mint a
/// fresh one, never to trust it.
fn token_expiry(token: &str) -> Option<u64> {
    inspect(token).ok()?.claims.get("exp")?.as_u64()
}

/// Whether a token expiring at `exp` (unknown: `None`) should be replaced at `now`.
fn needs_renewal(exp: Option<u64>, now: u64) -> bool {
    match exp {
        Some(exp) => exp <= now.saturating_add(ADMIN_TOKEN_RENEW_BEFORE.as_secs()),
        None => true,
    }
}

/// A token for the admin client: `admin` over the whole keyspace (control requests need it),
/// bound to the admin certificate so a copy of the token alone is useless.
fn mint_admin_token(issuer_dir: &Path, pki: &Layout) -> Result<String> {
    let issuer = IssuerKey::load(issuer_dir).map_err(|e| {
        Failure::usage(format!(
            "cannot load the token issuer in {}: {e}",
            issuer_dir.display()
        ))
    })?;
    let cert = pki.client_cert(ADMIN);
    let bind_cert_der = files::cert_der(&cert).map_err(Failure::usage)?;
    let spec = TokenSpec {
        sub: ADMIN.into(),
        scopes: vec![skv_token::parse_allow("admin:")
            .map_err(|e| Failure::usage(format!("internal: the admin scope: {e}")))?],
        ttl: ADMIN_TOKEN_TTL,
        aud: skv_token::DEFAULT_TOKEN_AUDIENCE.into(),
        iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
        bind_cert_der: Some(bind_cert_der),
    };
    mint(&issuer, &spec).map_err(|e| Failure::usage(format!("cannot mint the admin token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_within_the_last_hour_or_when_unreadable() {
        let now = 1_000_000;
        assert!(!needs_renewal(Some(now + 3601), now));
        assert!(needs_renewal(Some(now + 3600), now));
        assert!(needs_renewal(Some(now - 5), now));
        assert!(needs_renewal(None, now));
        assert_eq!(token_expiry("not a token"), None);
    }
}
