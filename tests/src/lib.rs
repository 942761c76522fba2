//! Harness for the integration suites: a dev PKI in a temp dir, real `skv-node` processes on
//! ephemeral ports (killed on drop), and the real `skv` binary.
//!
//! The binaries are taken from the same target directory as the test executable. The README's
//! test command builds them first (`cargo build --workspace --bins`), because cargo does not
//! build another package's binaries for a test.

#![forbid(unsafe_code)]

pub mod cluster;
pub mod jwt;
pub mod lab;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use skv_certs::{Ca, InitOptions, KeyType, Layout, Leaf, LeafSpec};
use skv_client::{ConnectOptions, Security};

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins` \
         (the README's test command does)",
        path.display()
    );
    path
}

/// A temp dir with a dev PKI: CA, node `n1`, client `alice`.
#[derive(Debug)]
pub struct Pki {
    dir: tempfile::TempDir,
    /// File layout of the PKI.
    pub layout: Layout,
}

impl Pki {
    /// Create the PKI with `skv certs init` semantics.
    pub fn new() -> anyhow::Result<Pki> {
        let dir = tempfile::Builder::new().prefix("skv-it-").tempdir()?;
        let layout = Layout::new(dir.path());
        skv_certs::init(&InitOptions {
            dir: dir.path().to_owned(),
            cluster: "test".into(),
            nodes: vec!["n1".into()],
            clients: vec!["alice".into()],
            key_type: KeyType::P256,
            force: false,
        })?;
        Ok(Pki { dir, layout })
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster CA, for issuing extra (often deliberately wrong) certificates.
    pub fn ca(&self) -> anyhow::Result<Ca> {
        Ok(Ca::load(&self.layout.ca_cert(), &self.layout.ca_key())?)
    }

    /// Write a leaf as `<name>.pem` / `<name>-key.pem` in the temp dir; returns both paths.
    pub fn write_leaf(&self, name: &str, leaf: &Leaf) -> anyhow::Result<(PathBuf, PathBuf)> {
        let cert = self.dir().join(format!("{name}.pem"));
        let key = self.dir().join(format!("{name}-key.pem"));
        std::fs::write(&cert, &leaf.cert_pem)?;
        std::fs::write(&key, &leaf.key_pem)?;
        Ok((cert, key))
    }

    /// Issue a leaf from this PKI's CA and write it.
    pub fn issue(&self, file_name: &str, spec: &LeafSpec) -> anyhow::Result<(PathBuf, PathBuf)> {
        let leaf = self.ca()?.issue(spec)?;
        self.write_leaf(file_name, &leaf)
    }

    /// Flags that make `skv` connect as alice.
    pub fn alice_args(&self, addr: &str) -> Vec<String> {
        vec![
            "--addr".into(),
            addr.into(),
            "--profile".into(),
            self.layout.client_profile("alice").display().to_string(),
        ]
    }

    /// Library connection options for alice.
    pub fn alice(&self, addr: &str) -> ConnectOptions {
        ConnectOptions::new(
            addr,
            Security::Tls {
                ca: self.layout.ca_cert(),
                identity: Some((
                    self.layout.client_cert("alice"),
                    self.layout.client_key("alice"),
                )),
            },
        )
    }
}

/// A running `skv-node` process. Killed (SIGKILL) on drop if still running.
#[derive(Debug)]
pub struct Node {
    child: Child,
    /// `HOST:PORT` it listens on.
    pub addr: String,
    /// The arguments it was started with (to restart it identically).
    pub args: Vec<String>,
    /// Its stderr log file.
    pub log: PathBuf,
}

impl Node {
    /// Start `skv-node` with `args` plus `--listen 127.0.0.1:0` unless args name a listen
    /// address, and wait for its `listening on` line.
    pub fn start(args: &[String], log: &Path) -> anyhow::Result<Node> {
        let mut args = args.to_vec();
        if !args.iter().any(|a| a == "--listen") {
            args.extend(["--listen".into(), "127.0.0.1:0".into()]);
        }
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut child = Command::new(bin("skv-node"))
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("spawn skv-node")?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => Ok(Node {
                child,
                addr,
                args,
                log: log.to_owned(),
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log_text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("skv-node did not print `listening on` within 30 s; its log:\n{log_text}")
            }
        }
    }

    /// Start a node with the PKI's `n1` credentials, sled in `data_dir`, plus `extra` flags.
    /// Unless `extra` names a `--keyset` or an `--auth` mode, the node runs with `--auth off`
    /// (mutual TLS alone): a node refuses to start without an explicit choice.
    pub fn start_tls(pki: &Pki, data_dir: &Path, extra: &[&str]) -> anyhow::Result<Node> {
        let mut args: Vec<String> = vec![
            "--name".into(),
            "n1".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--ca".into(),
            pki.layout.ca_cert().display().to_string(),
            "--cert".into(),
            pki.layout.node_cert("n1").display().to_string(),
            "--key".into(),
            pki.layout.node_key("n1").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if !extra.iter().any(|a| *a == "--keyset" || *a == "--auth") {
            args.extend(["--auth".into(), "off".into()]);
        }
        Node::start(&args, &pki.dir().join("node.log"))
    }

    /// OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS missing")
    }

    /// SIGKILL: the crash case.
    pub fn kill9(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// SIGTERM and wait for the exit status (graceful shutdown).
    pub fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node did not exit within 30 s of SIGTERM")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the `skv` CLI with `args`, optional stdin, a 60 s guard, no inherited SKV_* env.
pub fn skv(args: &[String], stdin: Option<&[u8]>) -> anyhow::Result<Output> {
    let mut cmd = Command::new(bin("skv"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["SKV_ADDR", "SKV_CA", "SKV_CERT", "SKV_KEY", "SKV_PROFILE"] {
        cmd.env_remove(var);
    }
    let mut child = cmd.spawn().context("spawn skv")?;
    if let Some(mut pipe) = child.stdin.take() {
        if let Some(data) = stdin {
            pipe.write_all(data)?;
        }
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // Do not leave a hung client behind to skew every later test.
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            bail!("skv {args:?} hung for 60 s (killed)")
        }
    }
}

/// `args` as owned strings.
pub fn strs(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Concatenate flag lists.
pub fn with(mut base: Vec<String>, more: &[&str]) -> Vec<String> {
    base.extend(more.iter().map(|s| s.to_string()));
    base
}

/// Exit code of a finished CLI run (-1 if killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// stderr as text.
pub fn err_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Columns of the node table `skv cluster status` prints; `skv demo` prints the same table.
pub const STATUS_COLUMNS: [&str; 8] = [
    "NODE",
    "ADDR",
    "STATE",
    "PID",
    "EPOCH",
    "KEYS",
    "SLOTS",
    "MIGRATING",
];

/// Check that `text` holds the status table with `nodes` nodes, all up: the `cluster NAME, map
/// epoch N (...)` heading, the column header, one line per node (id, `HOST:PORT`, `up`, then
/// numbers), and the `N of N node(s) up` summary.
pub fn check_status_table(text: &str, nodes: usize) -> anyhow::Result<()> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.split_whitespace().eq(STATUS_COLUMNS))
        .with_context(|| format!("no status header {STATUS_COLUMNS:?} in:\n{text}"))?;
    let heading = header.checked_sub(1).map(|i| lines[i]).unwrap_or_default();
    if !(heading.starts_with("cluster ") && heading.contains(", map epoch ")) {
        bail!("no `cluster NAME, map epoch N` heading above the table:\n{text}");
    }
    for i in 1..=nodes {
        let line = lines.get(header + i).copied().unwrap_or_default();
        let cells: Vec<&str> = line.split_whitespace().collect();
        let well_formed = cells.len() >= 7
            && cells[1]
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && cells[2] == "up"
            && cells[3].parse::<u32>().is_ok()
            && cells[4].parse::<u64>().is_ok()
            && cells[5].parse::<u64>().is_ok();
        if !well_formed {
            bail!("node line {i} of the status table is {line:?}:\n{text}");
        }
    }
    let summary = format!("{nodes} of {nodes} node(s) up");
    if !lines[header..].contains(&summary.as_str()) {
        bail!("no {summary:?} after the status table:\n{text}");
    }
    Ok(())
}

/// A TLS node with a token keyset and an audit log, and the issuer directory beside it (in
/// the PKI's temporary directory): the setup of every test of the token checkpoint.
#[derive(Debug)]
pub struct Secured {
    /// The node's and the clients' PKI.
    pub pki: Pki,
    /// The issuer directory (`issuer-key.pem`, `keyset.json`).
    pub keys: PathBuf,
    /// The node's audit log.
    pub audit: PathBuf,
    /// The running node.
    pub node: Node,
}

impl Secured {
    /// `skv keys init`, then a node with `--keyset`, `--audit-log` and `extra` flags.
    pub fn start(extra: &[&str]) -> anyhow::Result<Secured> {
        let pki = Pki::new()?;
        let keys = pki.dir().join("keys");
        let out = skv(
            &strs(&["keys", "init", "--dir", &keys.display().to_string()]),
            None,
        )?;
        anyhow::ensure!(code(&out) == 0, "keys init: {}", err_text(&out));
        let audit = pki.dir().join("audit.log");
        let keyset = keys.join("keyset.json").display().to_string();
        let audit_arg = audit.display().to_string();
        let mut flags = vec!["--keyset", &keyset, "--audit-log", &audit_arg];
        flags.extend(extra);
        let node = Node::start_tls(&pki, &pki.dir().join("data"), &flags)?;
        Ok(Secured {
            pki,
            keys,
            audit,
            node,
        })
    }

    /// `skv token issue --key <the issuer key> EXTRA...`: the token alone.
    pub fn issue(&self, extra: &[&str]) -> anyhow::Result<String> {
        let key = self.keys.join("issuer-key.pem").display().to_string();
        let out = skv(&with(strs(&["token", "issue", "--key", &key]), extra), None)?;
        anyhow::ensure!(code(&out) == 0, "token issue: {}", err_text(&out));
        let token = String::from_utf8(out.stdout)?.trim().to_owned();
        anyhow::ensure!(
            token.split('.').count() == 3,
            "token issue printed more than a JWS compact token: {token:?}"
        );
        Ok(token)
    }
}

/// Whether any file under `dir` (recursively) contains the bytes `needle`: how the
/// encryption-at-rest tests look for a plaintext canary in a data directory.
pub fn any_file_contains(dir: &Path, needle: &[u8]) -> anyhow::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if any_file_contains(&path, needle)? {
                return Ok(true);
            }
        } else if std::fs::read(&path)?
            .windows(needle.len())
            .any(|w| w == needle)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
