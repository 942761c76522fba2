//! The command line: connection flags (given before the command) and one subcommand per
//! operation.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  key not found
  2  usage error (bad flags, missing or unreadable config, profile or credential files)
  3  authentication or authorization refused
  4  connection or TLS failure
  5  server error
  6  compare-and-swap conflict (nothing written)

Connection settings go before the command (`skv --addr H:P get k`). Flags override
environment variables (SKV_ADDR, SKV_CA, SKV_CERT, SKV_KEY, SKV_PROFILE, SKV_TOKEN,
SKV_TOKEN_FILE), which override the profile file. A token given directly (--token or
SKV_TOKEN) wins over a token file.";

/// skv: a secure, sharded key-value store.
#[derive(Debug, Parser)]
#[command(name = "skv", version, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) conn: ConnArgs,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How to reach and authenticate to a node.
#[derive(Debug, Args)]
pub(crate) struct ConnArgs {
    /// Node address, HOST:PORT [default: 127.0.0.1:7400].
    #[arg(long, env = "SKV_ADDR", value_name = "HOST:PORT")]
    pub(crate) addr: Option<String>,
    /// Cluster CA certificate (PEM) used to verify the node.
    #[arg(long, env = "SKV_CA", value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the node.
    #[arg(long, env = "SKV_CERT", value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Client private key (PEM).
    // A distinct id: subcommands have a positional argument called `key` (the data key).
    #[arg(long = "key", id = "key_file", env = "SKV_KEY", value_name = "FILE")]
    pub(crate) key: Option<PathBuf>,
    /// Profile (TOML) naming addr, ca, cert and key; `skv certs init` writes one per client.
    #[arg(long, env = "SKV_PROFILE", value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Talk to a node started with --insecure-plaintext (no TLS).
    #[arg(long)]
    pub(crate) plaintext: bool,
    /// Name to verify in the node's certificate [default: the host of --addr].
    #[arg(long, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// Bearer token (from `skv token issue`) for nodes that check tokens. Prefer SKV_TOKEN or
    /// --token-file: a command line is visible to other users of the machine.
    #[arg(long, env = "SKV_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// File holding the token (used when --token/SKV_TOKEN is not given).
    #[arg(long, env = "SKV_TOKEN_FILE", value_name = "FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Send the whole token in every request instead of registering it once per connection
    /// and naming it by a short handle (the default where the node speaks protocol version 2
    /// and reads tokens per request). The node checks expiry, revocation and scopes on every
    /// request either way.
    #[arg(long)]
    pub(crate) token_in_every_request: bool,
    /// Seconds a command may take in all. A request whose node fails (or whose shard is
    /// electing a new leader) is retried on the shard's other replicas until then, so a
    /// failed leader shows as a delay, not an error.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub(crate) timeout: u64,
    /// Seconds to wait for one node (connecting, or one answer) before trying another
    /// replica of the shard. Shards with a single replica wait up to --timeout instead.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    pub(crate) attempt_timeout: u64,
    /// How fresh reads (get, scan) must be. `linearizable`: answered by the shard's leader
    /// once a majority of its replicas confirm it still leads, so a read sees every write
    /// acknowledged before it. `stale`: answered by any replica from what it has applied, so
    /// it may miss recent writes, but it is served even when the shard has no quorum (when
    /// writes and linearizable reads fail). Writes are always linearizable.
    #[arg(long, value_enum, value_name = "LEVEL", default_value_t = ReadConsistency::Linearizable)]
    pub(crate) consistency: ReadConsistency,
}

/// `--consistency`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReadConsistency {
    /// Read from the shard's leader, confirmed by a quorum.
    Linearizable,
    /// Read from any replica; may miss recent writes.
    Stale,
}

impl From<ReadConsistency> for skv_proto::Consistency {
    fn from(c: ReadConsistency) -> skv_proto::Consistency {
        match c {
            ReadConsistency::Linearizable => skv_proto::Consistency::Linearizable,
            ReadConsistency::Stale => skv_proto::Consistency::Stale,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Print a key's value (its exact bytes); exit 1 if it does not exist.
    Get {
        /// The key.
        key: OsString,
    },
    /// Write a value; prints the new version.
    Put {
        /// The key.
        key: OsString,
        /// The value; `-` reads it from standard input (binary-safe).
        value: OsString,
    },
    /// Remove a key; exit 1 if it did not exist.
    Delete {
        /// The key.
        key: OsString,
    },
    /// List keys under a prefix, in byte order.
    ///
    /// Prints one line per key: KEY, a tab, VALUE. Text is printed as it is, quotes included;
    /// a backslash prints as \\, tab, newline and carriage return as \t, \n and \r, other
    /// control bytes and bytes that are not UTF-8 as \xNN (other control characters as
    /// \u{NNNN}). `--json` prints exact values instead.
    Scan {
        /// Only keys starting with this.
        prefix: OsString,
        /// At most this many entries [default: all].
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Resume after this key (the cursor printed by a previous, limited scan).
        #[arg(long, value_name = "KEY")]
        cursor: Option<OsString>,
        /// Print keys only (one per line; with --json, keys and versions): the nodes never
        /// load the values, so a scan of large values costs what its keys cost.
        #[arg(long)]
        keys_only: bool,
    },
    /// Write a value only if the key is at the expected version (0: only if it does not
    /// exist); exit 6 on conflict.
    Cas {
        /// The key.
        key: OsString,
        /// The version the key must have now.
        #[arg(long, value_name = "V")]
        expect_version: u64,
        /// The value; `-` reads it from standard input.
        value: OsString,
    },
    /// Check that the node answers, and how fast.
    Ping,
    /// Development PKI: CA, node and client certificates.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Load generator: many connections with pipelined requests; reports ops/s, latency
    /// percentiles, errors and throughput per second (`--json`: one object).
    Bench(crate::bench::BenchArgs),
    /// Token issuer keys: create, rotate, retire.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Tokens: issue one, or look inside one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Local cluster tooling: make, start, inspect, grow, rebalance and stop a cluster of
    /// skv-node processes on this machine (docs/CLUSTER.md).
    #[command(subcommand, after_help = CLUSTER_EXIT_CODES)]
    Cluster(ClusterCommand),
    /// A narrated tour: makes a PKI, starts a three-node cluster in-process, and uses it.
    Demo(DemoArgs),
    /// Check a recorded history (JSON lines) for linearizability, key by key; needs no node.
    /// `skv cluster chaos` writes one (DIR/chaos/history.jsonl).
    #[command(after_help = crate::check::HELP)]
    CheckHistory(crate::check::CheckArgs),
    /// Security labs: break a defence on a weak world, fix it, check it (labs/README.md).
    #[command(subcommand, after_help = crate::lab::HELP)]
    Lab(crate::lab::LabCommand),
}

const CHAOS_EXIT_CODES: &str = "\
Exit codes:
  0  the history is linearizable and nothing acknowledged was lost
  1  the checker found an anomaly (the report names it)
  2  usage error: bad flags, DIR holds something else
  4  the cluster did not start, or did not recover after the final heal
  5  a fault could not be injected or healed";

#[derive(Debug, Subcommand)]
pub(crate) enum KeysCommand {
    /// Create the issuer key and keyset in DIR; run again with a new --kid to rotate (the old
    /// key keeps verifying until retired).
    Init {
        /// Issuer directory: issuer-key.pem (secret) and keyset.json (for the nodes).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Signature algorithm: eddsa (default), es256, rs256 (needs `openssl`) or hs256
        /// (shared secret: every node can then mint tokens; see docs/SECURITY.md).
        #[arg(long, default_value = "eddsa")]
        alg: skv_token::Alg,
        /// Key id [default: derived from the key].
        #[arg(long, value_name = "ID")]
        kid: Option<String>,
        /// Replace a key whose kid is already in the keyset.
        #[arg(long)]
        force: bool,
    },
    /// Remove a key from the keyset: tokens it signed are refused once nodes reload it.
    Retire {
        /// Issuer directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The kid to remove (not the current signing key).
        #[arg(long, value_name = "ID")]
        kid: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Mint a token; prints it alone on stdout.
    Issue(IssueArgs),
    /// Print a token's header and claims WITHOUT verifying anything.
    Inspect {
        /// The token, or `-` to read it from stdin.
        token: String,
    },
    /// Revoke tokens before they expire: add an entry to a denylist file that nodes read
    /// with `skv-node --denylist FILE` (and reload within a second of a change).
    #[command(after_help = REVOKE_HELP)]
    Revoke(RevokeArgs),
}

const REVOKE_HELP: &str = "\
The entry is merged into FILE (created if missing; entries past their exp are dropped) and
FILE is replaced atomically (a temp file renamed over it, mode 0644): it holds no secret.
Nodes do not share it: copy FILE to every node's --denylist path (e.g. rsync, config
management); each node reloads it within a second of the change, or on SIGHUP.

How long an entry lasts:
  --token-file  the token's own exp (a revoked token cannot outlive it)
  --jti         --until, default 24h from now: at least the token's remaining lifetime
  --sub         --until, default 24h from now: at least the longest --ttl your issuer grants,
                so every token the subject holds now has expired when the entry lapses.
                Until then new tokens for the subject are refused too.

Examples:
  skv token revoke --denylist keys/denylist.json --token-file stolen.token
  skv token revoke --denylist keys/denylist.json --sub mallory --until 12h";

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).multiple(false))]
pub(crate) struct RevokeArgs {
    /// The denylist file the nodes read (`skv-node --denylist FILE`).
    #[arg(long, value_name = "FILE")]
    pub(crate) denylist: PathBuf,
    /// Revoke the one token with this `jti` claim.
    #[arg(long, value_name = "ID", group = "what")]
    pub(crate) jti: Option<String>,
    /// Revoke every token of this subject (`sub` claim).
    #[arg(long, value_name = "SUB", group = "what")]
    pub(crate) sub: Option<String>,
    /// Revoke the token in this file (or `-` for stdin): its jti, until its exp. The token is
    /// read without verifying it.
    #[arg(long, value_name = "FILE", group = "what", conflicts_with = "until")]
    pub(crate) token_file: Option<PathBuf>,
    /// When the entry lapses: a duration from now (24h, 90m) or `@SECONDS` since the Unix
    /// epoch [default: 24h].
    #[arg(long, value_name = "WHEN")]
    pub(crate) until: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct IssueArgs {
    /// The current issuer key, DIR/issuer-key.pem (DIR/issuer-key.secret for hs256).
    #[arg(long, value_name = "ISSUER_KEY")]
    pub(crate) key: PathBuf,
    /// Who the token is for.
    #[arg(long, value_name = "NAME")]
    pub(crate) sub: String,
    /// A grant, OPS:PREFIX, e.g. `read,write:users/alice/` (ops: read, write, delete, admin;
    /// an empty prefix means every key). Repeat for several.
    #[arg(long, value_name = "OPS:PREFIX")]
    pub(crate) allow: Vec<String>,
    /// Lifetime, e.g. 15m, 1h, 30s. Keep it short: a revocation (`skv token revoke`) by sub
    /// must outlast the longest lifetime you issue.
    #[arg(long, value_name = "DURATION")]
    pub(crate) ttl: String,
    /// Audience: the cluster the token is for.
    #[arg(long, value_name = "AUD", default_value = skv_token::DEFAULT_TOKEN_AUDIENCE)]
    pub(crate) aud: String,
    /// Issuer name nodes require.
    #[arg(long, value_name = "ISS", default_value = skv_token::DEFAULT_TOKEN_ISSUER)]
    pub(crate) iss: String,
    /// Bind the token to this client certificate (PEM): it is then refused over any other.
    #[arg(long, value_name = "CERT.pem")]
    pub(crate) bind_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create (or extend) a dev PKI: a CA, node certificates and client certificates with a
    /// profile per client. Reuses an existing CA in DIR; never overwrites without --force.
    Init(CertsInitArgs),
    /// Revoke a certificate: add its serial to the CA's CRL (DIR/crl.pem, re-signed with the
    /// CA key in DIR). Nodes started with `--crl DIR/crl.pem` refuse it within a second, at
    /// the handshake and on the next request of a connection opened before. Running it again
    /// for the same certificate changes nothing.
    Revoke(CertsRevokeArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["cert", "node", "client"])))]
pub(crate) struct CertsRevokeArgs {
    /// The PKI directory (`skv certs init --dir`): its CA signs the CRL it holds.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// The certificate to revoke (PEM).
    #[arg(long, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Revoke node NAME's certificate: DIR/nodes/NAME.pem.
    #[arg(long, value_name = "NAME")]
    pub(crate) node: Option<String>,
    /// Revoke client NAME's certificate: DIR/clients/NAME.pem.
    #[arg(long, value_name = "NAME")]
    pub(crate) client: Option<String>,
    /// The CRL file to extend (created if absent).
    #[arg(long, value_name = "FILE", default_value = "DIR/crl.pem")]
    pub(crate) crl: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CertsInitArgs {
    /// Directory to write into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Cluster name, part of every certificate's SPIFFE identity.
    #[arg(long, default_value = "skv")]
    pub(crate) cluster: String,
    /// Node names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "n1")]
    pub(crate) nodes: Vec<String>,
    /// Client names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "alice")]
    pub(crate) clients: Vec<String>,
    /// Key algorithm for every certificate: p256, ed25519 or rsa2048 (needs `openssl`).
    #[arg(long, default_value = "p256")]
    pub(crate) key_type: skv_certs::KeyType,
    /// Overwrite existing files (and make a new CA).
    #[arg(long)]
    pub(crate) force: bool,
}

const CLUSTER_EXIT_CODES: &str = "\
Exit codes:
  0  ok (`status`: every node is up)
  2  usage error: bad flags, DIR holds no cluster (or already holds one, for `init`)
  3  a node refused the admin credentials (DIR/pki/clients/admin.pem, DIR/admin.token)
  4  a node is down, did not start, or cannot be reached
  5  a node reported an error, or did not stop in time";

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// Write a new local cluster into DIR: PKI, token issuer, cluster map, one config per
    /// node, an admin token and an admin client profile. Starts nothing.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Init(ClusterInitArgs),
    /// Start every node of DIR that is not running (as background processes logging to
    /// DIR/logs) and wait until each answers PING.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Up(ClusterDirArg),
    /// Show every node: up or down, slot ranges, keys, map epoch, moves in progress, pid.
    /// Exit 4 if any node is down. `--json` prints one JSON object.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Status(ClusterDirArg),
    /// Stop every running node of DIR (SIGTERM, then wait up to 30 s for each to exit).
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Down(ClusterDirArg),
    /// Create, start and add one more node to the running cluster. It joins with no slots:
    /// `skv cluster rebalance` gives it its share.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    AddNode(ClusterAddNodeArgs),
    /// Even out slot ownership: move slots (and their keys) from nodes above the fair share to
    /// nodes below it, one move at a time. Each move names the map epoch it was planned
    /// against, so when another administrator changes the map meanwhile the move is refused
    /// (and rebalance stops) instead of acting on a stale plan.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    Rebalance(ClusterDirArg),
    /// Put a new node in the place of one that is gone for good: a machine that will not come
    /// back, or a node whose disk was wiped or lost.
    ///
    /// Issues the new node's certificate, writes its config on a free port, asks the cluster
    /// to replace DEAD by it in the map and in every shard's replicas, starts it, and waits
    /// until each of those shards has rebuilt its copy on the new node (from a snapshot and
    /// the log of the surviving replicas). DEAD's config is removed (and its process stopped,
    /// if it still runs).
    ///
    /// DEAD must never come back under its old name afterwards: the cluster has forgotten it,
    /// and its old log and data would disagree with the shards it used to hold. To reuse the
    /// machine, wipe it and add it as a new node (`add-node`). For a node that is merely
    /// restarting, do nothing: it catches up by itself when it is back.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    ReplaceNode(ClusterReplaceNodeArgs),
    /// Build a cluster in DIR whose node-to-node traffic runs through a fault proxy, run a
    /// recorded workload against it while injecting faults (kill -9, SIGSTOP, restarts,
    /// partitions, slow links, a full disk), then heal everything, check the history for
    /// linearizability and report: operations and errors by kind, each shard's
    /// unavailability windows, failover times and the checker's verdict. The history
    /// (DIR/chaos/history.jsonl, checkable again with `skv check-history`), the report
    /// (report.json) and a chart of operations per second (throughput.svg) stay in DIR.
    /// See docs/FAULTS.md.
    #[command(after_help = CHAOS_EXIT_CODES)]
    Chaos(ClusterChaosArgs),
    /// Take a node out of the cluster for good: each shard replica it holds moves to the
    /// nodes holding the fewest, and once those copies are caught up the node leaves the map,
    /// is stopped and its config is removed. Refused (by the cluster) when no other node can
    /// take its replicas, or while a slot move runs.
    #[command(after_help = CLUSTER_EXIT_CODES)]
    RemoveNode(ClusterRemoveNodeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ClusterReplaceNodeArgs {
    /// The cluster directory written by `skv cluster init`.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// The node to replace (it is usually down).
    #[arg(value_name = "DEAD")]
    pub(crate) dead: String,
    /// Id of the new node [default: the first free nI]. Naming the node an interrupted
    /// replace-node already put in the map resumes the wait for it.
    #[arg(long = "with", value_name = "NEW")]
    pub(crate) with: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterRemoveNodeArgs {
    /// The cluster directory written by `skv cluster init`.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// The node to remove.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterChaosArgs {
    /// A directory for the chaos cluster, its logs, history and report: new or empty, or
    /// one an earlier `skv cluster chaos` wrote (its cluster is replaced).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Faults to inject, comma-separated, in turn: kill, kill-leader, kill-follower, pause,
    /// restart, partition, bridge, one-way, slow, disk-full (needs root: the node's data
    /// directory is put on a small tmpfs), or all.
    #[arg(
        long,
        value_name = "LIST",
        default_value = "kill,kill-leader,kill-follower,pause,restart,partition,bridge,one-way,slow"
    )]
    pub(crate) faults: String,
    /// Time from one fault to the next.
    #[arg(long, value_parser = skv_load::parse_duration, default_value = "5s", value_name = "D")]
    pub(crate) every: std::time::Duration,
    /// How long each fault lasts before it is healed [default: half of --every].
    #[arg(long, value_parser = skv_load::parse_duration, value_name = "D")]
    pub(crate) hold: Option<std::time::Duration>,
    /// How long the workload runs with faults (the final heal and reads come after).
    #[arg(long, value_parser = skv_load::parse_duration, default_value = "60s", value_name = "D")]
    pub(crate) duration: std::time::Duration,
    /// Nodes of the chaos cluster.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub(crate) nodes: u16,
    /// Replicas per shard [default: 3, or the node count if smaller].
    #[arg(long, value_name = "R")]
    pub(crate) replicas: Option<u16>,
    /// Concurrent client processes, each with one operation in flight.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub(crate) clients: usize,
    /// Keys the clients share (more keys: less contention, shorter histories per key).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) keys: usize,
    /// Operations per second per client, at most (0: as fast as answers come).
    #[arg(long, default_value_t = 25, value_name = "N")]
    pub(crate) rate: u32,
    /// How long one operation keeps trying (other replicas, elections) before the client
    /// gives up on it. Shorter than the client library's 10 s on purpose: an operation that
    /// gives up mid-failover is recorded as indeterminate, and the checker must then show
    /// that it took effect or that it did not.
    #[arg(long, value_parser = skv_load::parse_duration, default_value = "1500ms", value_name = "D")]
    pub(crate) op_timeout: std::time::Duration,
    /// Seed for the faults' targets and the operation mix [default: random, printed].
    #[arg(long, value_name = "N")]
    pub(crate) seed: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterDirArg {
    /// The cluster directory written by `skv cluster init`.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterInitArgs {
    /// Directory to write the cluster into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Number of nodes, named n1..nN.
    #[arg(long, value_name = "N")]
    pub(crate) nodes: u16,
    /// Cluster name: the trust domain of every certificate's SPIFFE identity.
    #[arg(long, value_name = "NAME", default_value = "skv")]
    pub(crate) cluster: String,
    /// Port of n1; node nI listens on 127.0.0.1:(P + I - 1).
    #[arg(long, value_name = "P", default_value_t = 7401)]
    pub(crate) base_port: u16,
    /// Replicas per shard [default: 3, or every node when there are fewer]. Each of the N
    /// shards is a Raft group over R consecutive nodes, so every node holds R shards and
    /// initially leads one. A shard keeps accepting writes while a majority of its replicas
    /// is up: 3 replicas survive one failed node, 5 survive two; 1 means no replication.
    #[arg(long, value_name = "R")]
    pub(crate) replicas: Option<u16>,
    /// Replace a cluster already in DIR, DELETING its data, logs and credentials. Refused
    /// while any of its nodes runs.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClusterAddNodeArgs {
    /// The cluster directory written by `skv cluster init`.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: PathBuf,
    /// Id of the new node [default: the first free nI]. Naming a node that has a config in
    /// DIR but is not in the map yet resumes an interrupted add.
    #[arg(long, value_name = "ID")]
    pub(crate) id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's PKI and data here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consistency_is_linearizable_unless_stale_is_asked_for() {
        let cli = Cli::try_parse_from(["skv", "get", "k"]).unwrap();
        assert_eq!(cli.conn.consistency, ReadConsistency::Linearizable);
        assert_eq!((cli.conn.timeout, cli.conn.attempt_timeout), (10, 2));
        let cli = Cli::try_parse_from(["skv", "--consistency", "stale", "scan", "p/"]).unwrap();
        assert_eq!(
            skv_proto::Consistency::from(cli.conn.consistency),
            skv_proto::Consistency::Stale
        );
        assert!(Cli::try_parse_from(["skv", "--consistency", "eventual", "get", "k"]).is_err());
        let cli =
            Cli::try_parse_from(["skv", "cluster", "init", "--dir", "d", "--nodes", "5"]).unwrap();
        let Command::Cluster(ClusterCommand::Init(init)) = cli.command else {
            panic!("not init");
        };
        assert_eq!(init.replicas, None);
    }

    #[test]
    fn replace_and_remove_take_the_node_as_a_positional_argument() {
        let cli =
            Cli::try_parse_from(["skv", "cluster", "replace-node", "--dir", "d", "n3"]).unwrap();
        let Command::Cluster(ClusterCommand::ReplaceNode(args)) = cli.command else {
            panic!("not replace-node");
        };
        assert_eq!((args.dead.as_str(), args.with), ("n3", None));
        let cli = Cli::try_parse_from([
            "skv",
            "cluster",
            "replace-node",
            "--dir",
            "d",
            "n3",
            "--with",
            "n9",
        ])
        .unwrap();
        let Command::Cluster(ClusterCommand::ReplaceNode(args)) = cli.command else {
            panic!("not replace-node");
        };
        assert_eq!(args.with.as_deref(), Some("n9"));
        let cli =
            Cli::try_parse_from(["skv", "cluster", "remove-node", "--dir", "d", "n2"]).unwrap();
        let Command::Cluster(ClusterCommand::RemoveNode(args)) = cli.command else {
            panic!("not remove-node");
        };
        assert_eq!(args.id, "n2");
        assert!(Cli::try_parse_from(["skv", "cluster", "remove-node", "--dir", "d"]).is_err());
    }
}
