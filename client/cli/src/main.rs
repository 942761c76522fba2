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

/// Exit status for a reader that went away: what a shell reports for a process killed by
/// SIGPIPE (128 + 13), which is how `cat` or `grep` end in the same place.
const BROKEN_PIPE_STATUS: i32 = 141;

fn main() -> ExitCode {
    quiet_when_the_reader_goes_away();
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

/// `skv token inspect T | head -1` closes the pipe after one line. Rust ignores SIGPIPE, so
/// the next `println!` fails with EPIPE and panics, and the user saw a panic message and
/// status 101 for a pipeline that did what they asked. This hook ends such a process quietly
/// with [`BROKEN_PIPE_STATUS`]; every other panic, and every other failure to print (a full
/// disk behind a redirect), still reports as before. It matches the OS error number, which
/// std appends to the message untranslated, rather than its text.
fn quiet_when_the_reader_goes_away() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // EPIPE is 32 on Linux, macOS and the BSDs.
        if message.starts_with("failed printing to stdout") && message.ends_with("(os error 32)") {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        report(info);
    }));
}
