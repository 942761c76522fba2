//! The command line: global connection flags and one subcommand per operation.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  ok
  1  key not found
  2  usage error (bad flags, missing or unreadable config, profile or credential files)
  3  authentication or authorization refused
  4  connection or TLS failure
  5  server error
  6  compare-and-swap conflict (nothing written)

Connection settings: flags override environment variables (SKV_ADDR, SKV_CA, SKV_CERT,
SKV_KEY, SKV_PROFILE), which override the profile file.";

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
    #[arg(long, env = "SKV_ADDR", global = true, value_name = "HOST:PORT")]
    pub(crate) addr: Option<String>,
    /// Cluster CA certificate (PEM) used to verify the node.
    #[arg(long, env = "SKV_CA", global = true, value_name = "FILE")]
    pub(crate) ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to the node.
    #[arg(long, env = "SKV_CERT", global = true, value_name = "FILE")]
    pub(crate) cert: Option<PathBuf>,
    /// Client private key (PEM).
    // A distinct id: subcommands have a positional argument called `key` (the data key).
    #[arg(
        long = "key",
        id = "key_file",
        env = "SKV_KEY",
        global = true,
        value_name = "FILE"
    )]
    pub(crate) key: Option<PathBuf>,
    /// Profile (TOML) naming addr, ca, cert and key; `skv certs init` writes one per client.
    #[arg(long, env = "SKV_PROFILE", global = true, value_name = "FILE")]
    pub(crate) profile: Option<PathBuf>,
    /// Talk to a node started with --insecure-plaintext (no TLS).
    #[arg(long, global = true)]
    pub(crate) plaintext: bool,
    /// Name to verify in the node's certificate [default: the host of --addr].
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) server_name: Option<String>,
    /// Seconds to wait for a connection and for each answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10)]
    pub(crate) timeout: u64,
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
    Scan {
        /// Only keys starting with this.
        prefix: OsString,
        /// At most this many entries [default: all].
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Resume after this key (the cursor printed by a previous, limited scan).
        #[arg(long, value_name = "KEY")]
        cursor: Option<OsString>,
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
    /// A narrated tour: makes a PKI, starts a node in-process, and uses it.
    Demo(DemoArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create (or extend) a dev PKI: a CA, node certificates and client certificates with a
    /// profile per client. Reuses an existing CA in DIR; never overwrites without --force.
    Init(CertsInitArgs),
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

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the demo's PKI and data here instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}
