//! The `skv-node` binary's own contract: config file plus flag precedence, the
//! `listening on` line, clear startup errors, and exit 0 on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn node() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skv-node"));
    cmd.env("RUST_LOG", "warn").stdin(Stdio::null());
    cmd
}

#[test]
fn config_file_flags_and_graceful_exit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    // The file asks for port 1 (privileged, would fail); the flag must win.
    std::fs::write(
        &config,
        "name = \"cfg-node\"\nlisten = \"127.0.0.1:1\"\nengine = \"memory\"\ninsecure_plaintext = true\nmax_connections = 8\n",
    )?;
    let mut child = node()
        .args([
            "--config",
            &config.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first)?;
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first stdout line: {first:?}"));
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0") && !addr.ends_with(":1"));
    std::net::TcpStream::connect(addr)?;

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let status = child.wait()?;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    Ok(())
}

#[test]
fn startup_errors_are_one_clear_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nmax_frame = 10\ninsecure_plaintext = true\n",
    )?;
    let out = node()
        .args(["--config", &config.display().to_string()])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(err.contains("max_frame"), "{err}");

    let out = node()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ca",
            "/nonexistent/ca.pem",
            "--cert",
            "/x",
            "--key",
            "/y",
        ])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr)?;
    assert!(
        err.contains("/nonexistent/ca.pem") && err.contains("skv certs init"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = node()
        .args(["--listen", "not-an-address", "--insecure-plaintext"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)?.contains("HOST:PORT"));
    Ok(())
}
