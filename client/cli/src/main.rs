//! `skv`: the skv command-line client (package skv-cli). It owns argument parsing, output
//! and exit codes, and the commands built on the libraries: data commands on skv-client,
//! `certs`/`keys`/`token` on skv-certs and skv-token, `bench` on skv-load, `check-history` on
//! skv-check, `cluster` (local clusters of skv-node processes) and `demo` (three nodes
//! embedded in this process) and `lab` (security labs, labs/README.md).

#![forbid(unsafe_code)]

mod args;
mod bench;
mod certs;
mod check;
mod cluster;
mod data;
mod demo;
mod keys;
mod lab;
mod output;
mod token;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let code = match cli.command {
        Command::Bench(args) => bench::run(&cli.conn, cli.json, args),
        Command::Certs(cmd) => certs::run(cmd),
        Command::CheckHistory(args) => check::run(&args, cli.json),
        Command::Cluster(cmd) => cluster::run(cmd, cli.json),
        Command::Demo(cmd) => demo::run(cmd),
        Command::Keys(cmd) => keys::run(cmd),
        Command::Lab(cmd) => lab::run(cmd, cli.json),
        Command::Token(cmd) => token::run(cmd),
        command => data::run(&cli.conn, cli.json, command),
    };
    ExitCode::from(code)
}
