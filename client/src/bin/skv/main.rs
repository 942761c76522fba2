//! `skv`: the skv command-line client.

#![forbid(unsafe_code)]

mod args;
mod certs;
mod data;
mod demo;
mod output;

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
        Command::Certs(cmd) => certs::run(cmd),
        Command::Demo(cmd) => demo::run(cmd),
        command => data::run(&cli.conn, cli.json, command),
    };
    ExitCode::from(code)
}
