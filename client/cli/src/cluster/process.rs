//! `skv cluster up` and `down`: node processes, their pid files and their logs.
//!
//! A node counts as running when `DIR/run/<id>.pid` names a live process whose command line
//! is `skv-node ... --config <this cluster's config for id>`. Checking the command line, not
//! just that the pid exists, keeps a recycled pid (some unrelated process, or a node of
//! another cluster) from being mistaken for ours, and from being sent SIGTERM by `down`.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use procfs::process::Process;
use std::time::{Duration, Instant};

use skv_client::{exit, Connection};

use super::files::{tail, write_atomic, NodeFile};
use super::{runtime, ClusterDir, Failure, Result};

/// How long `up` and `add-node` wait for started nodes to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits for each node to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines shown when a node fails to start.
const LOG_TAIL_LINES: usize = 20;

pub(super) fn up(dir: &Path) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let nodes = dir.node_files()?;
    if nodes.is_empty() {
        return Err(Failure::usage(format!(
            "{} has no node configs; `skv cluster init` writes them",
            dir.nodes_dir().display()
        )));
    }
    let token = dir.admin_token()?;
    let started = start_missing(&dir, &nodes)?;
    let failed = runtime()?.block_on(wait_ready(&dir, &token, &nodes, started));
    if !failed.is_empty() {
        let ids: Vec<&str> = failed.iter().map(String::as_str).collect();
        let others = nodes.len() - failed.len();
        return Err(Failure::connection(format!(
            "{} did not start (see above); {others} other node(s) left running: fix the \
             cause and run `skv cluster up --dir {root}` again, or stop them with \
             `skv cluster down --dir {root}`",
            ids.join(", "),
            root = dir.root().display()
        )));
    }
    let cluster = dir.cluster_name()?;
    let profile = dir.client_profile();
    println!(
        "cluster {cluster} is up: {} node(s) answer PING",
        nodes.len()
    );
    println!("use it:");
    println!("  skv --profile {} put k v", profile.display());
    println!("  skv --profile {} get k", profile.display());
    println!("  skv --profile {} scan ''", profile.display());
    println!("  skv cluster status --dir {}", dir.root().display());
    println!("  skv cluster down --dir {}", dir.root().display());
    Ok(exit::OK)
}

pub(super) fn down(dir: &Path) -> Result<u8> {
    let dir = ClusterDir::open(dir)?;
    let mut ids: Vec<String> = dir.node_files()?.into_iter().map(|n| n.id).collect();
    // Pid files of nodes whose config was deleted still name processes to stop.
    ids.extend(pid_file_ids(&dir.run_dir()));
    ids.sort_by(|a, b| super::files::natural_cmp(a, b));
    ids.dedup();

    let mut stopping = Vec::new();
    for id in &ids {
        match live_pid(&dir, id) {
            Some(pid) => {
                let sent = i32::try_from(pid)
                    .map_err(|_| Errno::ESRCH)
                    .and_then(|raw| signal::kill(Pid::from_raw(raw), Signal::SIGTERM));
                match sent {
                    Ok(()) => stopping.push((id.clone(), pid)),
                    // It exited between the check and the signal: already stopped.
                    Err(_) if live_pid(&dir, id).is_none() => {
                        println!("{id} already stopped");
                        let _ = fs::remove_file(dir.pid_file(id));
                    }
                    Err(e) => {
                        return Err(Failure::server(format!(
                            "cannot send SIGTERM to node {id} (pid {pid}): {e}"
                        )))
                    }
                }
            }
            None => {
                println!("{id} already stopped");
                let _ = fs::remove_file(dir.pid_file(id));
            }
        }
    }

    let mut stuck = Vec::new();
    for (id, pid) in stopping {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while live_pid(&dir, &id) == Some(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if live_pid(&dir, &id) == Some(pid) {
            println!(
                "{id} (pid {pid}) did not stop within {} s",
                STOP_TIMEOUT.as_secs()
            );
            stuck.push(format!("{id} (pid {pid})"));
        } else {
            let _ = fs::remove_file(dir.pid_file(&id));
            println!("stopped {id} (pid {pid})");
        }
    }
    if !stuck.is_empty() {
        return Err(Failure::server(format!(
            "{} still running after SIGTERM; see its log in {}, or force it with `kill -KILL PID`",
            stuck.join(", "),
            dir.logs_dir().display()
        )));
    }
    println!("cluster in {} is down", dir.root().display());
    Ok(exit::OK)
}

/// Stop node `id` if it runs: SIGTERM, up to [`STOP_TIMEOUT`] to exit, then SIGKILL (a node
/// being replaced or removed is leaving for good, so there is nothing to wait out). Removes
/// its pid file. Returns the pid it stopped, if one was running.
pub(super) fn stop_node(dir: &ClusterDir, id: &str) -> Result<Option<u32>> {
    let Some(pid) = live_pid(dir, id) else {
        let _ = fs::remove_file(dir.pid_file(id));
        return Ok(None);
    };
    let target = i32::try_from(pid)
        .map(Pid::from_raw)
        .map_err(|_| Failure::server(format!("node {id} has pid {pid}, out of range")))?;
    let _ = signal::kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while live_pid(dir, id) == Some(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if live_pid(dir, id) == Some(pid) {
        let _ = signal::kill(target, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(200));
        if live_pid(dir, id) == Some(pid) {
            return Err(Failure::server(format!(
                "node {id} (pid {pid}) did not stop, even on SIGKILL"
            )));
        }
    }
    let _ = fs::remove_file(dir.pid_file(id));
    Ok(Some(pid))
}

/// `(id, pid)` of every node of `dir` that is running, in id order.
pub(super) fn running_nodes(dir: &ClusterDir) -> Vec<(String, u32)> {
    let mut ids = pid_file_ids(&dir.run_dir());
    ids.sort_by(|a, b| super::files::natural_cmp(a, b));
    ids.into_iter()
        .filter_map(|id| live_pid(dir, &id).map(|pid| (id, pid)))
        .collect()
}

/// Start every node of `nodes` that is not running. Returns the children it started; the
/// handles let the readiness wait notice a node that dies at once instead of waiting out
/// the timeout.
pub(super) fn start_missing(dir: &ClusterDir, nodes: &[NodeFile]) -> Result<Vec<(String, Child)>> {
    start_nodes(dir, nodes, true)
}

/// [`start_missing`] without the progress lines (`skv cluster chaos` prints its own).
pub(super) fn start_missing_quiet(
    dir: &ClusterDir,
    nodes: &[NodeFile],
) -> Result<Vec<(String, Child)>> {
    start_nodes(dir, nodes, false)
}

fn start_nodes(
    dir: &ClusterDir,
    nodes: &[NodeFile],
    verbose: bool,
) -> Result<Vec<(String, Child)>> {
    let mut started = Vec::new();
    let mut binary = None;
    for node in nodes {
        if let Some(pid) = live_pid(dir, &node.id) {
            if verbose {
                println!("{} already running (pid {pid}) at {}", node.id, node.addr);
            }
            continue;
        }
        let bin = match &binary {
            Some(bin) => bin,
            None => binary.insert(node_binary()?),
        };
        let child = spawn(dir, node, bin)?;
        if verbose {
            println!(
                "started {} (pid {}) at {}, log {}",
                node.id,
                child.id(),
                node.addr,
                dir.node_log(&node.id).display()
            );
        }
        started.push((node.id.clone(), child));
    }
    Ok(started)
}

/// Start one node in the background and record its pid.
fn spawn(dir: &ClusterDir, node: &NodeFile, bin: &Path) -> Result<Child> {
    for d in [dir.logs_dir(), dir.run_dir()] {
        fs::create_dir_all(&d)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", d.display())))?;
    }
    let log_path = dir.node_log(&node.id);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", log_path.display())))?;
    let log_err = log
        .try_clone()
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", log_path.display())))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(dir.node_config(&node.id))
        .current_dir(dir.root())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for the shell's foreground job (this
        // command, or whatever runs next in the terminal) must not stop the cluster.
        .process_group(0);
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    // The log is a file, not a terminal: colour escapes would only garble it (and the tail
    // printed when a node fails to start).
    if std::env::var_os("NO_COLOR").is_none() {
        cmd.env("NO_COLOR", "1");
    }
    let child = cmd.spawn().map_err(|e| {
        Failure::usage(format!(
            "cannot start {} for node {}: {e}",
            bin.display(),
            node.id
        ))
    })?;
    let recorded = write_atomic(
        &dir.pid_file(&node.id),
        format!("{}\n", child.id()).as_bytes(),
        0o644,
    );
    if let Err(e) = recorded {
        // Without a pid file nothing could find the node to stop it: do not leave it behind.
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(Failure::usage(e));
    }
    Ok(child)
}

/// Wait until every node answers PING over mutual TLS as the admin client, up to
/// [`START_TIMEOUT`]. Prints each node as it becomes ready, and the log tail of each one
/// that does not; returns the ids of those.
pub(super) async fn wait_ready(
    dir: &ClusterDir,
    token: &str,
    nodes: &[NodeFile],
    started: Vec<(String, Child)>,
) -> Vec<String> {
    wait_nodes(dir, token, nodes, started, true).await
}

/// [`wait_ready`] without the progress lines; failures are still reported on stderr.
pub(super) async fn wait_ready_quiet(
    dir: &ClusterDir,
    token: &str,
    nodes: &[NodeFile],
    started: Vec<(String, Child)>,
) -> Vec<String> {
    wait_nodes(dir, token, nodes, started, false).await
}

async fn wait_nodes(
    dir: &ClusterDir,
    token: &str,
    nodes: &[NodeFile],
    mut started: Vec<(String, Child)>,
    verbose: bool,
) -> Vec<String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut waiting: Vec<&NodeFile> = nodes.iter().collect();
    let mut failed = Vec::new();
    let mut last_error: std::collections::HashMap<String, String> = Default::default();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for node in waiting {
            // A child of ours that already exited will never answer; one that has not is
            // alive, whatever /proc says of it yet.
            let ours = started.iter_mut().find(|(id, _)| *id == node.id);
            let is_ours = ours.is_some();
            let exited = ours.and_then(|(_, child)| child.try_wait().ok().flatten());
            if let Some(status) = exited {
                let _ = fs::remove_file(dir.pid_file(&node.id));
                report_failure(dir, node, &format!("it exited at once ({status})"));
                failed.push(node.id.clone());
                continue;
            }
            // A node that was already running when we looked can stop while we wait (a
            // fail-stop after a full disk, say): then no node runs under that pid file, and
            // none will answer. Only for nodes we did not start: `try_wait` is the word on
            // our own children (CI once saw a just-started child that `live_pid` did not
            // recognise yet, and its empty log, reported as stopped).
            if !is_ours && live_pid(dir, &node.id).is_none() {
                report_failure(dir, node, "it stopped while we waited for it");
                failed.push(node.id.clone());
                continue;
            }
            let mut opts = dir.admin_options(&node.addr, token);
            opts.connect_timeout = Duration::from_secs(2);
            opts.request_timeout = Duration::from_secs(2);
            let answer = match Connection::connect(&opts).await {
                Ok(conn) => conn.ping().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(()) if verbose => println!("{} ready at {}", node.id, node.addr),
                Ok(()) => {}
                Err(e) => {
                    last_error.insert(node.id.clone(), e.to_string());
                    still.push(node);
                }
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for node in waiting {
                let why = last_error.get(&node.id).cloned().unwrap_or_default();
                report_failure(
                    dir,
                    node,
                    &format!(
                        "no PING answer within {} s (last: {why})",
                        START_TIMEOUT.as_secs()
                    ),
                );
                failed.push(node.id.clone());
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    failed
}

fn report_failure(dir: &ClusterDir, node: &NodeFile, why: &str) {
    let log = dir.node_log(&node.id);
    eprintln!("{} failed to start at {}: {why}", node.id, node.addr);
    eprintln!("--- last lines of {} ---", log.display());
    eprintln!("{}", tail(&log, LOG_TAIL_LINES));
    eprintln!("---");
}

/// The `skv-node` to run: the one next to this `skv` (a cargo target dir or an install
/// prefix ships both), else the first on PATH.
fn node_binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("skv-node")))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("skv-node"))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).ok_or_else(|| {
        Failure::usage(
            "cannot find skv-node next to this skv or on PATH; build it with \
             `cargo build --bins` (or `--release --bins`)",
        )
    })
}

/// The pid of node `id` if its pid file names a live skv-node started with its config.
pub(super) fn live_pid(dir: &ClusterDir, id: &str) -> Option<u32> {
    let pid = parse_pid(&fs::read_to_string(dir.pid_file(id)).ok()?)?;
    // A zombie or a vanished process has an empty or missing cmdline: not running. (procfs
    // reads it as UTF-8; a node whose config path is not UTF-8 is not one `init` writes.)
    let cmdline = Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .cmdline()
        .ok()?;
    is_node_cmdline(&cmdline, &dir.node_config(id)).then_some(pid)
}

/// A pid file's content: one positive decimal number (surrounding whitespace allowed).
pub(super) fn parse_pid(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|&pid| pid > 0)
}

/// Whether a process's arguments (`/proc/<pid>/cmdline`) are `skv-node` started with
/// `--config <config>`.
pub(super) fn is_node_cmdline(args: &[String], config: &Path) -> bool {
    let Some(program) = args.first() else {
        return false;
    };
    let is_node = Path::new(program).file_name() == Some("skv-node".as_ref());
    is_node
        && args
            .windows(2)
            .any(|pair| pair[0] == "--config" && Path::new(&pair[1]) == config)
}

/// Node ids with a pid file in `run`.
fn pid_file_ids(run: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(run) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name.strip_suffix(".pid")?;
            (!id.starts_with('.')).then(|| id.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_files_hold_one_positive_number() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid("  42 "), Some(42));
        assert_eq!(parse_pid("0"), None);
        assert_eq!(parse_pid("-5"), None);
        assert_eq!(parse_pid("+5"), None);
        assert_eq!(parse_pid(""), None);
        assert_eq!(parse_pid("12 34"), None);
        assert_eq!(parse_pid("99999999999"), None);
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| (*a).to_owned()).collect()
    }

    #[test]
    fn only_our_node_processes_count_as_running() {
        let config = Path::new("/c/nodes/n1.toml");
        let ours = args(&["/opt/skv/bin/skv-node", "--config", "/c/nodes/n1.toml"]);
        assert!(is_node_cmdline(&ours, config));
        assert!(is_node_cmdline(
            &args(&["skv-node", "--config", "/c/nodes/n1.toml"]),
            config
        ));
        // Another cluster's node, another node of this cluster, something else entirely.
        assert!(!is_node_cmdline(
            &args(&["/bin/skv-node", "--config", "/other/nodes/n1.toml"]),
            config
        ));
        assert!(!is_node_cmdline(
            &args(&["/bin/skv-node", "--config", "/c/nodes/n2.toml"]),
            config
        ));
        assert!(!is_node_cmdline(
            &args(&["/usr/bin/vim", "/c/nodes/n1.toml"]),
            config
        ));
        assert!(!is_node_cmdline(
            &args(&["/usr/bin/not-skv-node", "--config", "/c/nodes/n1.toml"]),
            config
        ));
        // A zombie's cmdline is empty.
        assert!(!is_node_cmdline(&args(&[]), config));
    }

    #[test]
    fn pid_file_ids_skip_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["n1.pid", "n10.pid", ".n2.pid.tmp.7", "notes.txt"] {
            fs::write(dir.path().join(name), "1").unwrap();
        }
        let mut ids = pid_file_ids(dir.path());
        ids.sort();
        assert_eq!(ids, ["n1", "n10"]);
        assert!(pid_file_ids(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn a_live_process_with_a_foreign_command_line_is_not_a_node() {
        let root = tempfile::tempdir().unwrap();
        let dir = ClusterDir {
            root: root.path().to_owned(),
        };
        fs::create_dir_all(dir.run_dir()).unwrap();
        // Our own pid is live, but this test binary is not skv-node.
        fs::write(dir.pid_file("n1"), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(live_pid(&dir, "n1"), None);
        assert_eq!(live_pid(&dir, "n2"), None);
    }
}
