//! `skv-node`: run one skv node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use skv_server::config::AuthMode;
use skv_server::{Durability, Engine, FileConfig, NodeConfig, RunningNode};
use std::io::{IsTerminal, Write};

/// One skv node: a sled-backed key-value store behind mutual TLS.
///
/// Settings come from flags, then the --config file, then defaults. Once the node accepts
/// connections it prints `listening on HOST:PORT` on stdout. SIGINT or SIGTERM stop it
/// gracefully: no new connections, in-flight requests finish, storage is flushed, exit 0.
#[derive(Debug, Parser)]
#[command(name = "skv-node", version)]
struct Args {
    /// TOML config file; relative paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Node name, shown to clients and in logs.
    #[arg(long)]
    name: Option<String>,
    /// Address to listen on; port 0 picks a free port [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Directory of the sled database [default: ./skv-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Storage engine [default: sled].
    #[arg(long, value_enum)]
    engine: Option<Engine>,
    /// sync: acknowledge writes after they are flushed (group commit); async: sled flushes
    /// every --flush-every-ms and a crash may lose that window [default: sync].
    #[arg(long, value_enum)]
    durability: Option<Durability>,
    /// Background flush interval for --durability async [default: 500].
    #[arg(long, value_name = "MS")]
    flush_every_ms: Option<u64>,
    /// Cluster CA certificate (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// This node's certificate chain (PEM).
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Serve WITHOUT TLS. Only for benchmark baselines and labs; clients need --plaintext.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Serve TLS WITHOUT requiring client certificates (server-auth only). Only for benchmark
    /// baselines and labs.
    #[arg(long)]
    insecure_no_client_auth: bool,
    /// Largest frame payload accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Most connections served at once [default: 1024].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds a client has to complete the TLS handshake and HELLO [default: 10].
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<u64>,
    /// Public keyset (from `skv keys init`) for token checks; reloaded when the file changes
    /// and on SIGHUP. With a keyset, --auth defaults to per-request.
    #[arg(long, value_name = "FILE")]
    keyset: Option<PathBuf>,
    /// Token mode: a token in every request, once per connection, or no token checks.
    #[arg(long, value_enum)]
    auth: Option<AuthMode>,
    /// Verified-token cache entries for per-request mode; 0 disables it [default: 10000].
    #[arg(long, value_name = "N")]
    token_cache: Option<usize>,
    /// Audience tokens must carry [default: skv].
    #[arg(long, value_name = "AUD")]
    aud: Option<String>,
    /// Issuer tokens must carry [default: skv].
    #[arg(long, value_name = "ISS")]
    iss: Option<String>,
    /// Seconds of clock skew tolerated on exp and nbf [default: 5].
    #[arg(long, value_name = "SECS")]
    leeway: Option<u64>,
    /// Refuse tokens that are not bound to the client's certificate.
    #[arg(long)]
    require_bound_tokens: bool,
    /// Append one JSON line per refused request (and per allowed one with --audit-allows).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Log allowed requests in the audit log too.
    #[arg(long)]
    audit_allows: bool,
    /// Cluster name: peers must present `spiffe://NAME/node/<id>` certificates [default: the
    /// trust domain of --cert's SPIFFE ID].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Bootstrap cluster map (JSON, written by `skv cluster init`); a newer map persisted in
    /// the data dir wins. Without one the node owns every slot alone.
    #[arg(long, value_name = "FILE")]
    cluster_map: Option<PathBuf>,
    /// Address clients and peers dial to reach this node, as listed in the cluster map
    /// [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        macro_rules! flag_wins {
            ($($field:ident => $target:ident),* $(,)?) => {
                $(if let Some(v) = self.$field { file.$target = Some(v); })*
            };
        }
        flag_wins!(
            name => name, listen => listen, data_dir => data_dir, engine => engine,
            durability => durability, flush_every_ms => flush_every_ms, ca => ca, cert => cert,
            key => key, max_frame => max_frame, max_connections => max_connections,
            handshake_timeout => handshake_timeout_secs, keyset => keyset, auth => auth,
            token_cache => token_cache, aud => aud, iss => iss, leeway => leeway_secs,
            audit_log => audit_log, cluster => cluster, cluster_map => cluster_map,
            advertise => advertise,
        );
        for (flag, target) in [
            (self.insecure_plaintext, &mut file.insecure_plaintext),
            (
                self.insecure_no_client_auth,
                &mut file.insecure_no_client_auth,
            ),
            (self.require_bound_tokens, &mut file.require_bound_tokens),
            (self.audit_allows, &mut file.audit_allows),
        ] {
            if flag {
                *target = Some(true);
            }
        }
        Ok(NodeConfig::from_file_config(file)?)
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("skv-node: {}", one_line(&err));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause whose text its parent already
/// quotes (several library errors include their source in their own message).
fn one_line(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let name = config.name.clone();
        let mut signals = Signals::install()?;
        let node = RunningNode::start(config).await?;
        let addr = node.local_addr();
        tracing::info!(node = %name, %addr, "node started");
        // Scripts and tests wait for exactly this line.
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        drop(stdout);
        signals.wait_for_stop(&node).await;
        tracing::info!("signal received; shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// The signals a node reacts to. Installed before the node announces `listening on`, so a
/// script that signals right after that line never hits the default (kill) action.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Serve until SIGTERM or SIGINT; SIGHUP reloads the token keyset meanwhile.
    async fn wait_for_stop(&mut self, node: &RunningNode) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the keyset");
                    node.reload_keyset();
                }
            }
        }
    }
}
