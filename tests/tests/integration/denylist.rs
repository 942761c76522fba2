//! Token revocation without restarts: `skv token revoke` writes the denylist file, the real
//! nodes (`--denylist FILE`) reload it, and a revoked token is refused at every node, on
//! connections that had already verified it too. No test restarts a node and none asserts a
//! time: each polls, under a generous deadline, for the behaviour it expects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use skv_client::{ClientError, ConnectOptions, Connection};
use skv_proto::cluster::ClusterMap;
use skv_proto::{hash_slot, ErrorCode};
use skv_tests::cluster::LocalCluster;
use skv_tests::{code, err_text, skv, strs, Secured};

/// How long a revocation may take to reach a node before the test gives up: the nodes poll
/// the file every second; this leaves room for a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// A temp dir holding an empty denylist, as an operator would create before the first
/// revocation (a node refuses to start on a missing one).
fn empty_denylist() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix("skv-deny-").tempdir()?;
    let path = dir.path().join("denylist.json");
    std::fs::write(&path, "{\"entries\": []}\n")?;
    Ok((dir, path))
}

/// `skv token revoke --denylist FILE ARGS...`, which must succeed.
fn revoke(denylist: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut all = strs(&["token", "revoke", "--denylist"]);
    all.push(denylist.display().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let out = skv(&all, None)?;
    anyhow::ensure!(code(&out) == 0, "token revoke: {}", err_text(&out));
    Ok(String::from_utf8(out.stdout)?)
}

/// The jti a token carries (read without verifying, as the test's own check).
fn jti_of(token: &str) -> anyhow::Result<String> {
    let t = skv_certs::issuer::inspect(token)?;
    Ok(t.claims["jti"].as_str().unwrap_or_default().to_owned())
}

/// A key whose slot `node` serves under `map`.
fn key_on(map: &ClusterMap, node: &str) -> Bytes {
    (0..)
        .map(|i| format!("deny-{i}"))
        .find(|k| {
            map.owner_of_slot(hash_slot(k.as_bytes()))
                .map(|n| n.id.as_str())
                == Some(node)
        })
        .map(Bytes::from)
        .expect("some key lands on every node")
}

/// What one GET with this connection's token came to.
#[derive(Debug, PartialEq)]
enum Outcome {
    Served,
    Revoked,
}

async fn try_get(conn: &Connection, key: &Bytes) -> anyhow::Result<Outcome> {
    match conn.get(key.clone()).await {
        Ok(_) => Ok(Outcome::Served),
        Err(ClientError::Refused(w))
            if w.code == ErrorCode::Unauthenticated && w.message.starts_with("token revoked") =>
        {
            Ok(Outcome::Revoked)
        }
        Err(other) => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// Poll `conn` until a GET of `key` comes to `want`, or fail after [`DEADLINE`].
async fn until(conn: &Connection, key: &Bytes, want: Outcome, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = try_get(conn, key).await?;
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: still {got:?} after {DEADLINE:?}"
        );
        // Not faster: every refused poll counts against the peer's failure budget.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn with_token(mut opts: ConnectOptions, token: &str) -> ConnectOptions {
    opts.token = Some(token.to_owned());
    opts
}

/// The audit lines of the file at `path` that satisfy `pred`, once there is one (the writer
/// is asynchronous), or none after [`DEADLINE`].
fn audit_lines(path: &Path, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v| pred(v))
            .collect();
        if !lines.is_empty() || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_token_revoked_by_jti_is_refused_at_every_node_and_its_subjects_others_work(
) -> anyhow::Result<()> {
    let (_deny_dir, denylist) = empty_denylist()?;
    let deny_arg = denylist.display().to_string();
    let cluster = LocalCluster::start_with(3, 0, 1, &["--denylist", &deny_arg])?;
    let stolen = cluster.token("alice", &["read,write:"])?;
    let spare = cluster.token("alice", &["read,write:"])?;
    let jti = jti_of(&stolen)?;
    let ids = ["n1", "n2", "n3"];
    rt().block_on(async {
        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        let map = admin.cluster_map().await?;
        // One connection per node and token, each verified (and cached) before the revocation:
        // the revocation must reach them, not only new verifications.
        let mut stolen_conns = Vec::new();
        let mut spare_conns = Vec::new();
        for id in ids {
            let opts = cluster.client("alice", &cluster.addr(id));
            let key = key_on(&map, id);
            let conn = Connection::connect(&with_token(opts.clone(), &stolen)).await?;
            assert_eq!(try_get(&conn, &key).await?, Outcome::Served, "{id}");
            stolen_conns.push((id, key.clone(), conn));
            let conn = Connection::connect(&with_token(opts, &spare)).await?;
            assert_eq!(try_get(&conn, &key).await?, Outcome::Served, "{id}");
            spare_conns.push((id, key, conn));
        }

        let token_file = cluster.dir().join("stolen.token");
        std::fs::write(&token_file, format!("{stolen}\n"))?;
        let said = revoke(
            &denylist,
            &["--token-file", &token_file.display().to_string()],
        )?;
        assert!(said.contains(&jti), "{said}");

        for (id, key, conn) in &stolen_conns {
            until(
                conn,
                key,
                Outcome::Revoked,
                &format!("stolen token at {id}"),
            )
            .await?;
            // A new connection (a fresh verification) is refused the same way.
            let opts = with_token(cluster.client("alice", &cluster.addr(id)), &stolen);
            let fresh = Connection::connect(&opts).await?;
            assert_eq!(try_get(&fresh, key).await?, Outcome::Revoked, "{id}");
        }
        for (id, key, conn) in &spare_conns {
            assert_eq!(
                try_get(conn, key).await?,
                Outcome::Served,
                "spare token at {id}"
            );
        }
        anyhow::Ok(())
    })?;
    // Every node audited the refusal with the jti and the sub, never the token.
    for id in ids {
        let lines = audit_lines(&cluster.audit_log(id), |v| {
            v["reason"].as_str().is_some_and(|r| r.contains("revoked"))
        });
        assert!(!lines.is_empty(), "{id} audited no revocation");
        for line in &lines {
            assert_eq!(line["jti"].as_str(), Some(jti.as_str()), "{line}");
            assert_eq!(line["sub"].as_str(), Some("alice"), "{line}");
            assert_eq!(line["decision"].as_str(), Some("deny"), "{line}");
        }
        let text = std::fs::read_to_string(cluster.audit_log(id))?;
        let signature = stolen.rsplit('.').next().unwrap_or_default();
        assert!(
            !text.contains(signature),
            "{id}'s audit log holds the token"
        );
    }
    Ok(())
}

#[test]
fn a_revocation_by_sub_refuses_every_token_of_the_subject() -> anyhow::Result<()> {
    let (_deny_dir, denylist) = empty_denylist()?;
    let deny_arg = denylist.display().to_string();
    let cluster = LocalCluster::start_with(2, 0, 1, &["--denylist", &deny_arg])?;
    let mallory = [
        cluster.token("mallory", &["read:"])?,
        cluster.token("mallory", &["read,write:"])?,
    ];
    let alice = cluster.token("alice", &["read:"])?;
    rt().block_on(async {
        let admin = Connection::connect(&cluster.client("admin", &cluster.addr("n1"))).await?;
        let map = admin.cluster_map().await?;
        let mut conns = Vec::new();
        for id in ["n1", "n2"] {
            let opts = cluster.client("alice", &cluster.addr(id));
            let key = key_on(&map, id);
            for token in &mallory {
                let conn = Connection::connect(&with_token(opts.clone(), token)).await?;
                assert_eq!(try_get(&conn, &key).await?, Outcome::Served);
                conns.push((id, key.clone(), conn));
            }
        }
        let said = revoke(&denylist, &["--sub", "mallory", "--until", "1h"])?;
        assert!(said.contains("sub mallory"), "{said}");
        for (id, key, conn) in &conns {
            until(conn, key, Outcome::Revoked, &format!("mallory at {id}")).await?;
        }
        for id in ["n1", "n2"] {
            let opts = with_token(cluster.client("alice", &cluster.addr(id)), &alice);
            let conn = Connection::connect(&opts).await?;
            assert_eq!(
                try_get(&conn, &key_on(&map, id)).await?,
                Outcome::Served,
                "another subject at {id}"
            );
        }
        anyhow::Ok(())
    })?;
    let file: Value = serde_json::from_slice(&std::fs::read(&denylist)?)?;
    assert_eq!(
        file["entries"][0]["sub"].as_str(),
        Some("mallory"),
        "{file}"
    );
    Ok(())
}

#[test]
fn a_per_connection_session_is_cut_off_on_its_next_request() -> anyhow::Result<()> {
    let (_deny_dir, denylist) = empty_denylist()?;
    let deny_arg = denylist.display().to_string();
    let s = Secured::start(&["--auth", "per-connection", "--denylist", &deny_arg])?;
    let token = s.issue(&["--sub", "alice", "--allow", "read,write:", "--ttl", "1h"])?;
    let jti = jti_of(&token)?;
    let key = Bytes::from_static(b"users/alice/a");
    rt().block_on(async {
        let opts = with_token(s.pki.alice(&s.node.addr), &token);
        // The token travels once, in HELLO; later requests carry none.
        let conn = Connection::connect(&opts).await?;
        conn.put(key.clone(), "1").await?;
        revoke(&denylist, &["--jti", &jti])?;
        until(&conn, &key, Outcome::Revoked, "the HELLO token's session").await?;
        assert!(
            matches!(
                conn.put(key.clone(), "2").await,
                Err(ClientError::Refused(_))
            ),
            "a write after the revocation"
        );
        // A new connection with the token is refused at HELLO.
        match Connection::connect(&opts).await {
            Err(ClientError::Refused(w)) => {
                assert!(w.message.starts_with("token revoked"), "{w}")
            }
            other => panic!("HELLO with a revoked token must be refused, got {other:?}"),
        }
        anyhow::Ok(())
    })
}

#[test]
fn an_entry_past_its_exp_is_dropped() -> anyhow::Result<()> {
    let (_deny_dir, denylist) = empty_denylist()?;
    let deny_arg = denylist.display().to_string();
    // No leeway: an entry lapses at its exp, not five seconds later.
    let s = Secured::start(&["--denylist", &deny_arg, "--leeway", "0"])?;
    let token = s.issue(&["--sub", "dave", "--allow", "read:", "--ttl", "1h"])?;
    let key = Bytes::from_static(b"k");
    rt().block_on(async {
        let conn = Connection::connect(&with_token(s.pki.alice(&s.node.addr), &token)).await?;
        assert_eq!(try_get(&conn, &key).await?, Outcome::Served);
        // Long enough that the node surely reloads before the entry lapses.
        revoke(&denylist, &["--sub", "dave", "--until", "8s"])?;
        until(&conn, &key, Outcome::Revoked, "dave while the entry holds").await?;
        // Nothing is written after this: the node drops the entry by its exp alone.
        until(&conn, &key, Outcome::Served, "dave once the entry lapsed").await?;
        anyhow::Ok(())
    })?;
    // And the next `skv token revoke` leaves the lapsed entry out of the file.
    revoke(&denylist, &["--jti", "another", "--until", "1h"])?;
    let text = std::fs::read_to_string(&denylist)?;
    assert!(!text.contains("dave"), "{text}");
    assert!(text.contains("another"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&denylist)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    Ok(())
}

#[test]
fn a_malformed_or_oversized_denylist_keeps_the_old_list_and_the_node_serving() -> anyhow::Result<()>
{
    let (_deny_dir, denylist) = empty_denylist()?;
    let deny_arg = denylist.display().to_string();
    let s = Secured::start(&["--denylist", &deny_arg])?;
    let revoked_token = s.issue(&["--sub", "alice", "--allow", "read:", "--ttl", "1h"])?;
    let good_token = s.issue(&["--sub", "alice", "--allow", "read:", "--ttl", "1h"])?;
    let key = Bytes::from_static(b"k");
    let failures = || {
        std::fs::read_to_string(&s.node.log)
            .unwrap_or_default()
            .matches("denylist reload failed")
            .count()
    };
    rt().block_on(async {
        let opts = s.pki.alice(&s.node.addr);
        let bad = Connection::connect(&with_token(opts.clone(), &revoked_token)).await?;
        let good = Connection::connect(&with_token(opts.clone(), &good_token)).await?;
        revoke(&denylist, &["--jti", &jti_of(&revoked_token)?])?;
        until(&bad, &key, Outcome::Revoked, "the revoked token").await?;

        let broken: [(&str, Vec<u8>); 3] = [
            ("malformed", b"{\"entries\": [{\"jti\": ".to_vec()),
            (
                "a typo'd member",
                b"{\"entries\": [{\"jit\": \"x\", \"exp\": 1}]}".to_vec(),
            ),
            (
                "oversized",
                vec![b' '; skv_token::denylist::MAX_DENYLIST_BYTES as usize + 1],
            ),
        ];
        for (what, bytes) in broken {
            let before = failures();
            std::fs::write(&denylist, &bytes)?;
            let deadline = Instant::now() + DEADLINE;
            while failures() == before {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no reload failure logged ({what})"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(try_get(&bad, &key).await?, Outcome::Revoked, "{what}");
            let fresh = Connection::connect(&with_token(opts.clone(), &revoked_token)).await?;
            assert_eq!(try_get(&fresh, &key).await?, Outcome::Revoked, "{what}");
            assert_eq!(try_get(&good, &key).await?, Outcome::Served, "{what}");
        }
        // The CLI refuses to merge into a file it cannot read, rather than drop its entries.
        let mut args = strs(&["token", "revoke", "--denylist"]);
        args.push(deny_arg.clone());
        args.extend(strs(&["--sub", "bob"]));
        let out = skv(&args, None)?;
        assert_eq!(code(&out), 2, "{}", err_text(&out));
        assert!(err_text(&out).contains("not changed"), "{}", err_text(&out));
        anyhow::Ok(())
    })
}
