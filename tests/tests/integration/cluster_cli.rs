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

/// The pid `skv cluster up` recorded for node `id`.
fn node_pid(dir: &Path, id: &str) -> anyhow::Result<u32> {
    Ok(
        std::fs::read_to_string(dir.join("run").join(format!("{id}.pid")))?
            .trim()
            .parse()?,
    )
}

/// Write `n` keys through the admin profile.
fn put_keys(profile: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let (key, value) = (format!("k/{i}"), format!("v{i}"));
        let out = skv(&strs(&["--profile", profile, "put", &key, &value]), None)?;
        assert_eq!(code(&out), 0, "put {key}: {}", err_text(&out));
    }
    Ok(())
}

/// Every key `put_keys` wrote reads back.
fn check_keys(profile: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let key = format!("k/{i}");
        let out = skv(&strs(&["--profile", profile, "get", &key]), None)?;
        assert_eq!(
            (
                code(&out),
                String::from_utf8_lossy(&out.stdout).into_owned()
            ),
            (0, format!("v{i}")),
            "get {key}: {}",
            err_text(&out)
        );
    }
    Ok(())
}

/// Every shard of a status JSON is healthy and none lists `gone`.
fn assert_shards_healthy_without(status: &Value, gone: &str) {
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["health"], "healthy", "{shard}\n{status}");
        let replicas: Vec<&str> = shard["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(!replicas.contains(&gone), "{shard}");
        let followers: Vec<&str> = shard["followers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["node"].as_str())
            .collect();
        assert!(!followers.contains(&gone), "{shard}");
        assert_ne!(shard["leader"], gone, "{shard}");
    }
}

#[test]
fn replace_node_rebuilds_a_killed_node_on_a_new_one() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("c");
    let base = free_port_range(4)?.to_string();
    let out = cluster_cmd(&dir, &["init", "--nodes", "3", "--base-port", &base])?;
    assert_eq!(code(&out), 0, "init: {}", err_text(&out));
    let out = cluster_cmd(&dir, &["up"])?;
    let _down = Down(&dir);
    assert_eq!(code(&out), 0, "up: {}", err_text(&out));
    let profile = dir.join("client.toml").display().to_string();
    put_keys(&profile, 12)?;

    // n3 dies for good: kill -9, no goodbye.
    let pid = node_pid(&dir, "n3")?;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    assert!(killed.success());
    // The shard n3 led is unavailable until the other two elect a leader; then every shard
    // has two of three replicas, a quorum: degraded.
    let mut status = Value::Null;
    for _ in 0..50 {
        let (rc, now) = status_json(&dir)?;
        assert_eq!(rc, 4, "status with n3 down: {now}");
        status = now;
        let degraded = status["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["health"] == "degraded");
        if degraded {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["health"], "degraded", "{shard}");
    }

    let out = cluster_cmd(&dir, &["replace-node", "n3"])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "replace-node: {}\n{stdout}", err_text(&out));
    assert!(stdout.contains("replaced n3 by n4"), "{stdout}");
    assert!(stdout.contains("n4 caught up"), "{stdout}");
    assert!(
        !dir.join("nodes/n3.toml").exists(),
        "n3's config is still there"
    );
    // The profile's seeds name the new node, not the dead one.
    let seeds = std::fs::read_to_string(dir.join("client.toml"))?;
    let n4_port = (base.parse::<u16>()? + 3).to_string();
    let n3_port = (base.parse::<u16>()? + 2).to_string();
    assert!(
        seeds.contains(&n4_port) && !seeds.contains(&n3_port),
        "{seeds}"
    );

    let (rc, status) = status_json(&dir)?;
    assert_eq!(rc, 0, "{status}");
    let ids: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["n1", "n2", "n4"]);
    assert_shards_healthy_without(&status, "n3");
    let n4 = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "n4")
        .unwrap();
    assert_eq!(
        n4["keys"].as_u64(),
        Some(12),
        "n4 holds a copy of every shard: {n4}"
    );
    check_keys(&profile, 12)?;
    // The replaced node cannot be replaced again, and the new one cannot take a used name.
    let out = cluster_cmd(&dir, &["replace-node", "n3", "--with", "n1"])?;
    assert_eq!(code(&out), 2, "{}", err_text(&out));
    Ok(())
}

#[test]
fn remove_node_moves_its_replicas_then_stops_it() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("c");
    let base = free_port_range(4)?.to_string();
    let out = cluster_cmd(&dir, &["init", "--nodes", "4", "--base-port", &base])?;
    assert_eq!(code(&out), 0, "init: {}", err_text(&out));
    let out = cluster_cmd(&dir, &["up"])?;
    let _down = Down(&dir);
    assert_eq!(code(&out), 0, "up: {}", err_text(&out));
    let profile = dir.join("client.toml").display().to_string();
    put_keys(&profile, 12)?;

    // A node the map does not list is a usage error, said plainly.
    let out = cluster_cmd(&dir, &["remove-node", "n9"])?;
    assert_eq!(code(&out), 2, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("n9 is not in the map"),
        "{}",
        err_text(&out)
    );

    let pid = node_pid(&dir, "n2")?;
    let out = cluster_cmd(&dir, &["remove-node", "n2"])?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), 0, "remove-node: {}\n{stdout}", err_text(&out));
    assert!(stdout.contains("removed n2"), "{stdout}");
    assert!(!dir.join("nodes/n2.toml").exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map_or(true, |c| !c.contains("n2.toml")),
        "n2 (pid {pid}) still runs"
    );

    let (rc, status) = status_json(&dir)?;
    assert_eq!(rc, 0, "{status}");
    let ids: Vec<&str> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids, ["n1", "n3", "n4"]);
    assert_shards_healthy_without(&status, "n2");
    for shard in status["shards"].as_array().unwrap() {
        assert_eq!(shard["replicas"].as_array().unwrap().len(), 3, "{shard}");
    }
    check_keys(&profile, 12)?;
    let out = cluster_cmd(&dir, &["status"])?;
    check_status_table(&String::from_utf8(out.stdout)?, 3)?;
    Ok(())
}
