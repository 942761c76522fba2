//! `skv cluster init|up|status|add-node|rebalance|down` as an operator runs them: real node
//! processes in the background, the admin profile for data commands, and `skv bench`
//! targeting the cluster.

use std::path::Path;

use serde_json::Value;
use skv_tests::{check_status_table, code, err_text, skv, strs};

/// `n` consecutive free loopback ports (checked by binding each, then released).
fn free_port_range(n: u16) -> anyhow::Result<u16> {
    let pid = std::process::id() as u16;
    for attempt in 0..200u16 {
        let base = 20_000 + (pid.wrapping_mul(97).wrapping_add(attempt.wrapping_mul(613)) % 40_000);
        let all_free = (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    anyhow::bail!("no {n} consecutive free ports")
}

fn cluster_cmd(dir: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let mut all = strs(&["cluster"]);
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(["--dir".to_owned(), dir.display().to_string()]);
    skv(&all, None)
}

fn status_json(dir: &Path) -> anyhow::Result<(i32, Value)> {
    let mut args = strs(&["--json", "cluster", "status", "--dir"]);
    args.push(dir.display().to_string());
    let out = skv(&args, None)?;
    Ok((code(&out), serde_json::from_slice(&out.stdout)?))
}

/// Stops the cluster even when an assertion fails halfway.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = cluster_cmd(self.0, &["down"]);
    }
}

#[test]
fn cluster_tooling_runs_grows_and_stops_a_local_cluster() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("c");
    let base = free_port_range(4)?.to_string();

    let out = cluster_cmd(&dir, &["init", "--nodes", "3", "--base-port", &base])?;
    assert_eq!(code(&out), 0, "init: {}", err_text(&out));
    for file in [
        "client.toml",
        "admin.token",
        "cluster.json",
        "nodes/n1.toml",
        "nodes/n3.toml",
    ] {
        assert!(dir.join(file).is_file(), "init did not write {file}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("admin.token"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // A second init refuses to overwrite the cluster.
    let again = cluster_cmd(&dir, &["init", "--nodes", "3", "--base-port", &base])?;
    assert_eq!(code(&again), 2, "{}", err_text(&again));

    let out = cluster_cmd(&dir, &["up"])?;
    let _down = Down(&dir);
    assert_eq!(code(&out), 0, "up: {}", err_text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("client.toml"));

    // The admin profile works for data commands against the running cluster.
    let profile = dir.join("client.toml").display().to_string();
    let out = skv(
        &strs(&["--profile", &profile, "put", "users/alice", "hi"]),
        None,
    )?;
    assert_eq!(code(&out), 0, "put: {}", err_text(&out));
    let out = skv(&strs(&["--profile", &profile, "get", "users/alice"]), None)?;
    assert_eq!(
        (code(&out), out.stdout.as_slice()),
        (0, &b"hi"[..]),
        "{}",
        err_text(&out)
    );

    // skv bench targets the cluster: its preload writes 2000 keys over every node, then it
    // reads them back.
    let out = skv(
        &strs(&[
            "--profile",
            &profile,
            "bench",
            "--workload",
            "get",
            "--keys",
            "2000",
            "--requests",
            "2000",
            "--conns",
            "4",
            "--json",
        ]),
        None,
    )?;
    assert_eq!(code(&out), 0, "bench: {}", err_text(&out));
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        report["errors"].as_object().map(|e| e.len()),
        Some(0),
        "{report}"
    );

    let (rc, status) = status_json(&dir)?;
    assert_eq!(rc, 0, "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let keys: Vec<u64> = nodes.iter().map(|n| n["keys"].as_u64().unwrap()).collect();
    assert!(keys.iter().all(|k| *k > 300), "keys per node {keys:?}");
    // The plain table (which `skv demo` prints too).
    let out = cluster_cmd(&dir, &["status"])?;
    assert_eq!(code(&out), 0, "status: {}", err_text(&out));
    check_status_table(&String::from_utf8(out.stdout)?, 3)?;

    // A fourth node joins with no slots, then gets its share with the keys.
    let out = cluster_cmd(&dir, &["add-node"])?;
    assert_eq!(code(&out), 0, "add-node: {}", err_text(&out));
    let out = cluster_cmd(&dir, &["rebalance"])?;
    assert_eq!(code(&out), 0, "rebalance: {}", err_text(&out));
    let (rc, status) = status_json(&dir)?;
    assert_eq!(rc, 0, "{status}");
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let n4 = nodes.iter().find(|n| n["id"] == "n4").unwrap();
    assert!(n4["keys"].as_u64().unwrap() > 200, "{n4}");
    // Each node counts every replica it holds; each shard's leader counts the shard once.
    let shards = status["shards"].as_array().unwrap();
    let total: u64 = shards.iter().map(|s| s["keys"].as_u64().unwrap()).sum();
    assert_eq!(total, 2001, "{status}");
    let out = skv(&strs(&["--profile", &profile, "get", "users/alice"]), None)?;
    assert_eq!(out.stdout, b"hi", "{}", err_text(&out));

    // A clean stop and a restart: every node comes back with the map it persisted.
    let epoch = status["epoch"].as_u64().unwrap();
    let out = cluster_cmd(&dir, &["down"])?;
    assert_eq!(code(&out), 0, "down: {}", err_text(&out));
    let (rc, _) = status_json(&dir)?;
    assert_eq!(rc, 4, "status with every node down");
    let out = cluster_cmd(&dir, &["up"])?;
    assert_eq!(code(&out), 0, "up again: {}", err_text(&out));
    let (rc, status) = status_json(&dir)?;
    assert_eq!(rc, 0, "{status}");
    for node in status["nodes"].as_array().unwrap() {
        assert_eq!(node["epoch"].as_u64(), Some(epoch), "{node}");
    }
    let out = skv(&strs(&["--profile", &profile, "get", "users/alice"]), None)?;
    assert_eq!(out.stdout, b"hi", "{}", err_text(&out));
    let out = cluster_cmd(&dir, &["down"])?;
    assert_eq!(code(&out), 0, "down: {}", err_text(&out));
    Ok(())
}
