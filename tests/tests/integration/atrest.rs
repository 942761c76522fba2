//! Encryption at rest (docs/SECURITY.md): no plaintext value on disk, a ciphertext moved to
//! another key is refused, a wrong master key stops the node, rotation and rekey.

use std::path::{Path, PathBuf};
use std::process::Command;

use skv_client::Connection;
use skv_tests::{any_file_contains, bin, Node, Pki};

const CANARY: &str = "CANARY-7f3a9c-plaintext-must-not-reach-disk";

/// Writes a 0600 master key file of 32 bytes `byte`, in hex.
fn master_key(dir: &Path, name: &str, byte: u8) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", format!("{byte:02x}").repeat(32)))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

fn start(pki: &Pki, data: &Path, key: Option<&Path>) -> anyhow::Result<Node> {
    let mut extra = vec!["--snapshot-every", "10"];
    let key = key.map(|k| k.display().to_string());
    if let Some(k) = &key {
        extra.extend(["--master-key", k]);
    }
    Node::start_tls(pki, data, &extra)
}

/// Opens a stopped node's sled db, retrying while the exited process's lock lingers.
fn open_db(data: &Path) -> anyhow::Result<sled::Db> {
    for _ in 0..100 {
        match sled::open(data) {
            Ok(db) => return Ok(db),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Ok(sled::open(data)?)
}

/// Writes `CANARY` values (enough to build a snapshot), stops the node gracefully.
fn write_canaries(pki: &Pki, data: &Path, key: Option<&Path>) -> anyhow::Result<()> {
    let node = start(pki, data, key)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for i in 0..30 {
            conn.put(format!("secret/{i}"), format!("{CANARY}-{i}"))
                .await?;
        }
        let (_, v) = conn.get("secret/3".to_string()).await?.expect("written");
        assert_eq!(&v[..], format!("{CANARY}-3").as_bytes());
        anyhow::Ok(())
    })?;
    assert!(node.terminate()?.success());
    Ok(())
}

#[test]
fn no_plaintext_value_reaches_the_data_dir() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let key = master_key(pki.dir(), "master.key", 0x11)?;
    let encrypted = pki.dir().join("encrypted");
    write_canaries(&pki, &encrypted, Some(&key))?;
    assert!(
        !any_file_contains(&encrypted, CANARY.as_bytes())?,
        "a value reached the data dir in the clear"
    );
    // The same writes without a key do leave the canary on disk: the search can fail.
    let plain = pki.dir().join("plain");
    write_canaries(&pki, &plain, None)?;
    assert!(any_file_contains(&plain, CANARY.as_bytes())?);
    Ok(())
}

#[test]
fn a_value_moved_to_another_key_is_refused_and_others_still_served() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let key = master_key(pki.dir(), "master.key", 0x22)?;
    let data = pki.dir().join("data");
    let node = start(&pki, &data, Some(&key))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        conn.put("users/alice".to_string(), "alice's secret".to_string())
            .await?;
        conn.put("users/mallory".to_string(), "mallory's".to_string())
            .await?;
        conn.put("users/bob".to_string(), "bob's".to_string())
            .await?;
        anyhow::Ok(())
    })?;
    assert!(node.terminate()?.success());
    {
        // The attacker with the disk: copy alice's sealed record over mallory's.
        let db = open_db(&data)?;
        let mut moved = false;
        for name in db.tree_names() {
            if !name.starts_with(b"ks/shard-") {
                continue;
            }
            let tree = db.open_tree(&name)?;
            if let Some(raw) = tree.get(b"users/alice")? {
                tree.insert(b"users/mallory", raw)?;
                moved = true;
            }
        }
        assert!(moved, "alice's record not found in any keyspace tree");
        db.flush()?;
    }
    let node = start(&pki, &data, Some(&key))?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        let err = conn
            .get("users/mallory".to_string())
            .await
            .expect_err("a moved ciphertext must not decrypt");
        let text = format!("{err:#}");
        assert!(!text.contains("alice's secret"), "{text}");
        // Nothing crashed: the other keys are served.
        let (_, v) = conn.get("users/alice".to_string()).await?.expect("alice");
        assert_eq!(&v[..], b"alice's secret");
        let (_, v) = conn.get("users/bob".to_string()).await?.expect("bob");
        assert_eq!(&v[..], b"bob's");
        // And the damaged key can be overwritten.
        conn.put("users/mallory".to_string(), "fresh".to_string())
            .await?;
        let (_, v) = conn.get("users/mallory".to_string()).await?.expect("fresh");
        assert_eq!(&v[..], b"fresh");
        anyhow::Ok(())
    })?;
    let log = std::fs::read_to_string(&node.log)?;
    assert!(
        log.contains("failed authentication (AES-GCM)"),
        "the node logs the AEAD failure by name"
    );
    assert!(!log.contains("alice's secret"));
    Ok(())
}

/// Runs `skv-node` to completion; returns (success, stdout + stderr).
fn run_node(args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = Command::new(bin("skv-node"))
        .args(args)
        .env_remove("SKV_MASTER_KEY")
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn node_args(pki: &Pki, data: &Path) -> Vec<String> {
    let l = &pki.layout;
    [
        "--name",
        "n1",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.display().to_string(),
        "--ca",
        &l.ca_cert().display().to_string(),
        "--cert",
        &l.node_cert("n1").display().to_string(),
        "--key",
        &l.node_key("n1").display().to_string(),
        // These tests are about the data directory, not tokens.
        "--auth",
        "off",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[test]
fn wrong_missing_or_loose_master_key_refuses_to_start() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let right = master_key(pki.dir(), "right.key", 0x33)?;
    let wrong = master_key(pki.dir(), "wrong.key", 0x44)?;
    let data = pki.dir().join("data");
    write_canaries(&pki, &data, Some(&right))?;
    let base = node_args(&pki, &data);
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        run_node(&a)
    };
    let (ok, text) = with(&["--master-key", &wrong.display().to_string()])?;
    assert!(!ok, "started with a wrong master key");
    assert!(text.contains("wrong master key"), "{text}");
    assert!(!text.contains(&"44".repeat(32)), "the key is never printed");
    assert!(!text.contains("panicked"), "{text}");
    let (ok, text) = with(&[])?;
    assert!(!ok, "an encrypted data dir opened without its key");
    assert!(text.contains("is encrypted at rest"), "{text}");
    // A key file others can read is refused before it is used.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&right, std::fs::Permissions::from_mode(0o644))?;
    }
    let (ok, text) = with(&["--master-key", &right.display().to_string()])?;
    assert!(!ok);
    assert!(text.contains("chmod 600"), "{text}");
    // A plaintext data dir is not silently mixed with encrypted records.
    let plain = pki.dir().join("plain");
    write_canaries(&pki, &plain, None)?;
    let mut a: Vec<String> = node_args(&pki, &plain);
    a.extend(["--master-key".into(), wrong.display().to_string()]);
    let (ok, text) = run_node(&a.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(!ok);
    assert!(
        text.contains("written without encryption at rest"),
        "{text}"
    );
    Ok(())
}

/// The data key ids of every sealed keyspace record (the envelope's bytes 1..5 after the
/// 8-byte version).
fn record_key_ids(data: &Path) -> anyhow::Result<Vec<(Vec<u8>, u32)>> {
    let db = open_db(data)?;
    let mut out = Vec::new();
    for name in db.tree_names() {
        if !name.starts_with(b"ks/shard-") {
            continue;
        }
        for item in db.open_tree(&name)?.iter() {
            let (k, v) = item?;
            assert_eq!(v[8], 0xE1, "an envelope");
            out.push((k.to_vec(), u32::from_be_bytes(v[9..13].try_into()?)));
        }
    }
    Ok(out)
}

#[test]
fn rotation_then_rekey_retires_the_old_master_key() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let a = master_key(pki.dir(), "a.key", 0x55)?;
    let b = master_key(pki.dir(), "b.key", 0x66)?;
    let data = pki.dir().join("data");
    write_canaries(&pki, &data, Some(&a))?;
    assert!(record_key_ids(&data)?.iter().all(|(_, id)| *id == 1));
    let d = data.display().to_string();
    // Rotate to B: the keyring is wrapped with B, new writes use data key 2, old records stay.
    let (ok, text) = run_node(&[
        "rekey",
        "--data-dir",
        &d,
        "--old-master-key",
        &a.display().to_string(),
        "--master-key",
        &b.display().to_string(),
        "--keep-old",
    ])?;
    assert!(ok, "{text}");
    assert!(text.contains("data key 2 is current"), "{text}");
    let node = start(&pki, &data, Some(&b))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        let (_, v) = conn.get("secret/7".to_string()).await?.expect("old value");
        assert_eq!(&v[..], format!("{CANARY}-7").as_bytes());
        conn.put("after/rotation".to_string(), "new".to_string())
            .await?;
        anyhow::Ok(())
    })?;
    assert!(node.terminate()?.success());
    let ids = record_key_ids(&data)?;
    let id_of = |k: &[u8]| ids.iter().find(|(key, _)| key == k).map(|(_, id)| *id);
    assert_eq!(id_of(b"after/rotation"), Some(2));
    assert_eq!(id_of(b"secret/7"), Some(1));
    // A no longer opens the dir.
    let mut args = node_args(&pki, &data);
    args.extend(["--master-key".into(), a.display().to_string()]);
    let (ok, text) = run_node(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(!ok && text.contains("wrong master key"), "{text}");
    // Rekey: every record under the new data key 3, keys 1 and 2 forgotten.
    let (ok, text) = run_node(&[
        "rekey",
        "--data-dir",
        &d,
        "--master-key",
        &b.display().to_string(),
    ])?;
    assert!(ok, "{text}");
    assert!(text.contains("keyring holds keys [3]"), "{text}");
    assert!(record_key_ids(&data)?.iter().all(|(_, id)| *id == 3));
    let node = start(&pki, &data, Some(&b))?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for i in 0..30 {
            let (_, v) = conn
                .get(format!("secret/{i}"))
                .await?
                .expect("rekeyed value");
            assert_eq!(&v[..], format!("{CANARY}-{i}").as_bytes());
        }
        let (_, v) = conn.get("after/rotation".to_string()).await?.expect("new");
        assert_eq!(&v[..], b"new");
        // Writes after the rekey work (and survive the log entries resealed under key 3).
        conn.put("after/rekey".to_string(), "x".to_string()).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}
