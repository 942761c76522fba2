//! `skv-node`: run one skv node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser};
use skv_server::{FileConfig, NodeConfig, RunningNode};
use std::io::{IsTerminal, Write};

/// One skv node: a sled-backed key-value store behind mutual TLS.
///
/// Settings come from flags, then the --config file, then defaults. Every setting below is
/// also a config file key: the flag's name with `_` (e.g. `data_dir`, `handshake_timeout_secs`).
/// Once the node accepts connections it prints `listening on HOST:PORT` on stdout. SIGINT or
/// SIGTERM stop it gracefully: no new connections, in-flight requests finish, storage is
/// flushed, exit 0.
#[derive(Debug, Parser)]
#[command(name = "skv-node", version)]
struct Args {
    /// TOML config file; relative paths in it are relative to the file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: FileConfig,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Offline maintenance of a stopped node's data dir.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Rotate the data key of encryption at rest and re-encrypt every record under it (the
    /// node must be stopped). New writes use the new key; afterwards only --master-key opens
    /// the data dir. Prints the new key id and the number of records rewritten.
    Rekey {
        /// The node's data dir.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The master key the data dir is wrapped with from now on (same format as the node's
        /// --master-key; `SKV_MASTER_KEY` when not given).
        #[arg(long, value_name = "FILE")]
        master_key: Option<PathBuf>,
        /// The master key it is wrapped with now, when it changes [default: --master-key].
        #[arg(long, value_name = "FILE")]
        old_master_key: Option<PathBuf>,
        /// Only rotate: keep the old data keys and leave old records as they are (they stay
        /// readable; a later rekey without this flag rewrites them).
        #[arg(long)]
        keep_old: bool,
    },
}

/// `skv-node rekey`.
fn rekey(
    data_dir: &std::path::Path,
    master_key: Option<&std::path::Path>,
    old_master_key: Option<&std::path::Path>,
    keep_old: bool,
) -> anyhow::Result<()> {
    use skv_server::storage::atrest::MasterKey;
    let new = MasterKey::from_flag_or_env(master_key)?
        .context("rekey needs the master key: --master-key FILE or SKV_MASTER_KEY")?;
    let old = match old_master_key {
        Some(path) => Some(MasterKey::from_file(path).context("old master key")?),
        None => None,
    };
    let report = skv_server::rekey::rekey(data_dir, old.as_ref().unwrap_or(&new), &new, keep_old)?;
    println!(
        "data key {} is current; {} records rewritten; keyring holds keys {:?}",
        report.current_key_id, report.rewritten, report.key_ids
    );
    Ok(())
}

impl Args {
    /// The file (if any) with the given flags laid over it, validated.
    fn into_config(self, flags: &clap::ArgMatches) -> anyhow::Result<NodeConfig> {
        let mut settings = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        settings.merge_flags(flags)?;
        Ok(NodeConfig::from_file_config(settings)?)
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
    let flags = Args::command().get_matches();
    let args = Args::from_arg_matches(&flags).unwrap_or_else(|e| e.exit());
    match run(args, &flags) {
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

fn run(args: Args, flags: &clap::ArgMatches) -> anyhow::Result<()> {
    if let Some(Command::Rekey {
        data_dir,
        master_key,
        old_master_key,
        keep_old,
    }) = &args.command
    {
        return rekey(
            data_dir,
            master_key.as_deref(),
            old_master_key.as_deref(),
            *keep_old,
        );
    }
    let config = args.into_config(flags)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let auth_off = config.auth.is_none();
    let outcome = runtime.block_on(async {
        let name = config.name.clone();
        let mut signals = Signals::install()?;
        let node = RunningNode::start(config).await?;
        let addr = node.local_addr();
        tracing::info!(node = %name, %addr, "node started");
        if auth_off {
            tracing::warn!(
                "--auth off: no token checks; every client certificate the CA signed may read, \
                 write and administer everything"
            );
        }
        // Scripts and tests wait for exactly this line.
        let mut stdout = std::io::stdout().lock();
        if let Some(metrics) = node.metrics_addr() {
            // Before `listening on`: whoever waits for that line can scrape at once.
            writeln!(stdout, "metrics on http://{metrics}/metrics")?;
        }
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        drop(stdout);
        let failure = tokio::select! {
            () = signals.wait_for_stop(&node) => None,
            reason = node.failed() => Some(reason),
        };
        match failure {
            None => {
                tracing::info!("signal received; shutting down");
                node.shutdown().await;
                Ok(())
            }
            Some(reason) => {
                // Fail-stop: what is on disk stays as the last successful write left it (a
                // failed append was never acknowledged), and the peers carry on without us.
                tracing::error!(%reason, "stopping: this node cannot write its data");
                // Bounded, unlike a graceful stop: what is still in flight waits on storage
                // that has failed, and a node that lingers half-stopped holds its data
                // directory (and its port) from the operator who restarts it.
                if tokio::time::timeout(FAIL_STOP_GRACE, node.shutdown())
                    .await
                    .is_err()
                {
                    tracing::error!(
                        grace_s = FAIL_STOP_GRACE.as_secs(),
                        "in-flight requests did not finish in time; exiting without them"
                    );
                }
                anyhow::bail!(
                    "stopped because {reason}; nothing acknowledged was lost (the other \
                     replicas have it). Free space or fix the disk, then start the node again"
                )
            }
        }
    });
    // Every task that matters has finished above (or was given up on after a failure);
    // whatever is left must not keep the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    outcome
}

/// How long a node that can no longer write (a full disk) waits for in-flight requests
/// before it exits anyway.
const FAIL_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

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

    /// Serve until SIGTERM or SIGINT; SIGHUP reloads the token keyset, the denylist and
    /// the TLS credentials (certificate, key, CA, CRLs) meanwhile.
    async fn wait_for_stop(&mut self, node: &RunningNode) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading the keyset, the denylist and the TLS credentials");
                    node.reload();
                }
            }
        }
    }
}
