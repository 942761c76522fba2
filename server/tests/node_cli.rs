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
        "name = \"cfg-node\"\nlisten = \"127.0.0.1:1\"\nengine = \"memory\"\ninsecure_plaintext = true\nmax_connections = 8\nauth = \"off\"\n",
    )?;
    let (child, addr) = start(node().args([
        "--config",
        &config.display().to_string(),
        "--listen",
        "127.0.0.1:0",
    ]))?;
    // Stopped before any assertion, so a failing test leaves no node behind.
    let reached = std::net::TcpStream::connect(&addr).map(drop);
    stop(child)?;
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0") && !addr.ends_with(":1"));
    reached?;
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
    let err = refused(node().args(["--config", &config.display().to_string()]))?;
    assert!(err.contains("max_frame"), "{err}");

    let err = refused(node().args([
        "--listen",
        "127.0.0.1:0",
        "--ca",
        "/nonexistent/ca.pem",
        "--cert",
        "/x",
        "--key",
        "/y",
        "--auth",
        "off",
    ]))?;
    assert!(
        err.contains("/nonexistent/ca.pem") && err.contains("skv certs init"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let err = refused(node().args(["--listen", "not-an-address", "--insecure-plaintext"]))?;
    assert!(err.contains("HOST:PORT"), "{err}");
    Ok(())
}

/// Run a node that must refuse to start; its stderr. A node that starts after all (a broken
/// check) is killed after a while, so the test fails instead of hanging.
fn refused(cmd: &mut Command) -> anyhow::Result<String> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            panic!("the node started instead of refusing");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut err)?;
    assert_eq!(status.code(), Some(1), "{err}");
    Ok(err)
}

/// Start a node and wait for its `listening on` line; the address it names.
fn start(cmd: &mut Command) -> anyhow::Result<(std::process::Child, String)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first)?;
    let Some(addr) = first.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let status = child.wait()?;
        anyhow::bail!("node did not start ({status}); first stdout line: {first:?}");
    };
    Ok((child, addr.to_owned()))
}

fn stop(mut child: std::process::Child) -> anyhow::Result<()> {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(killed.success());
    let status = child.wait()?;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");
    Ok(())
}

#[test]
fn file_settings_hold_unless_a_flag_overrides_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    let config_arg = config.display().to_string();
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nengine = \"memory\"\ninsecure_plaintext = true\nauth = \"off\"\n",
    )?;
    // The file alone: plaintext, so no certificates are needed.
    let (child, _) = start(node().args(["--config", &config_arg]))?;
    stop(child)?;
    // A boolean flag can take back what the file turned on.
    let err = refused(node().args(["--config", &config_arg, "--insecure-plaintext=false"]))?;
    assert!(err.contains("`ca` is missing"), "{err}");
    Ok(())
}

/// Without token checks every client certificate may do anything: a node never falls into
/// that silently. It refuses to start without --keyset, and `--auth off` must say so.
#[test]
fn a_node_without_a_keyset_starts_only_with_auth_off_and_warns() -> anyhow::Result<()> {
    let plain = [
        "--listen",
        "127.0.0.1:0",
        "--engine",
        "memory",
        "--insecure-plaintext",
    ];
    let err = refused(node().args(plain))?;
    assert!(
        err.contains("--keyset") && err.contains("--auth off"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let dir = tempfile::tempdir()?;
    let log = dir.path().join("node.log");
    let mut child = node()
        .args(plain)
        .args(["--auth", "off"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout")).read_line(&mut first)?;
    stop(child)?;
    assert!(first.starts_with("listening on "), "{first:?}");
    let text = std::fs::read_to_string(&log)?;
    assert!(
        text.contains("--auth off: no token checks"),
        "the node warns: {text}"
    );
    Ok(())
}

#[test]
fn relative_paths_in_the_file_follow_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let elsewhere = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\ndata_dir = \"data/n1\"\ninsecure_plaintext = true\nauth = \"off\"\n",
    )?;
    let (child, _) = start(
        node()
            .current_dir(elsewhere.path())
            .args(["--config", &config.display().to_string()]),
    )?;
    stop(child)?;
    assert!(
        dir.path().join("data/n1").is_dir(),
        "sled dir next to the file"
    );
    assert!(
        !elsewhere.path().join("data").exists(),
        "nothing in the cwd"
    );
    Ok(())
}

#[test]
fn config_file_mistakes_are_one_line_naming_the_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("node.toml");
    for (text, key) in [
        (
            "insecure_plaintext = true\nlistne = \"127.0.0.1:0\"\n",
            "listne",
        ),
        (
            "insecure_plaintext = true\nmax_connections = \"lots\"\n",
            "max_connections",
        ),
        (
            "insecure_plaintext = true\nmax_connections = 0\n",
            "max_connections",
        ),
        ("insecure_plaintext = true\nauth = \"sometimes\"\n", "auth"),
    ] {
        std::fs::write(&config, text)?;
        let err = refused(
            node()
                .current_dir(dir.path())
                .args(["--config", &config.display().to_string()]),
        )?;
        assert!(err.contains(key), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    Ok(())
}
