//! Issue 13: the security labs 01 to 08, driven as a student would drive them (`skv lab
//! start`, shell steps in the lab's directory, `skv lab check --json`, `skv lab stop`). For
//! every lab: an empty attempt fails with an explanation, a near-miss fails with one, and the
//! worked solution (`skv lab solution`, executed) passes. Labs 09 to 16 are in labs_more.rs.

use anyhow::Context;
use skv_tests::lab::LabRun;
use skv_tests::{code, err_text};

/// Lab 01. Near-miss: a capture of the TLS node saved as the plaintext capture.
#[test]
fn lab01_sniff() -> anyhow::Result<()> {
    let lab = LabRun::start("1")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(!empty.solved());
    assert!(
        empty
            .missing("break it")
            .contains("there is no capture-plain.bin"),
        "{:?}",
        empty.json
    );
    assert!(
        empty
            .missing("fix it")
            .contains("insecure_plaintext = true"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "sed -i '/^insecure_plaintext/d' nodes/db.toml\n\
         skv lab restart 1 --dir .\n\
         skv lab sniff --listen $WIRE_ADDR --to $DB_ADDR --out capture-plain.bin --for 2",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it").contains("holds TLS traffic"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("fix it")
            .contains("there is no capture-tls.bin"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.part_solved("break it") && done.part_solved("fix it"));
    assert!(done.notes("break it").contains("crossed the wire in clear"));
    Ok(())
}

/// Lab 02. Near-miss: the config is fixed but the node was not restarted, and the answer is a
/// flag of another world.
#[test]
fn lab02_no_client_auth() -> anyhow::Result<()> {
    let lab = LabRun::start("no-client-auth")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty.missing("break it").contains("there is no answer.txt"),
        "{:?}",
        empty.json
    );
    assert!(
        empty
            .missing("fix it")
            .contains("insecure_no_client_auth = true"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "echo 'SKV{00000000000000000000000000000000}' > answer.txt\n\
         sed -i '/^insecure_no_client_auth/d' nodes/db.toml",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it").contains("not this world's"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("fix it")
            .contains("still serves a client without a certificate"),
        "{:?}",
        near.json
    );

    // Editing the lab's state does not solve it: a state.json whose flag hash is that of the
    // student's own flag still fails, because the checker compares with the node's data.
    let state_path = lab.dir().join(".lab/state.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path)?)?;
    let salt = state["flag_salt"].as_str().unwrap_or_default().to_owned();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(salt.as_bytes());
    ctx.update(b"SKV{00000000000000000000000000000000}");
    let forged: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    state["flag_hash"] = serde_json::Value::String(forged);
    std::fs::write(&state_path, serde_json::to_vec(&state)?)?;
    let edited = lab.check()?;
    assert!(!edited.part_solved("break it"), "{:?}", edited.json);
    assert!(
        edited.missing("break it").contains("not this world's"),
        "{:?}",
        edited.json
    );

    // `stop` signals only processes whose command line is the one it recorded: a pid that
    // now belongs to something else (here a sleep) is left alone.
    let mut bystander = std::process::Command::new("sleep").arg("60").spawn()?;
    state["procs"]
        .as_array_mut()
        .context("procs")?
        .push(serde_json::json!({
            "name": "recycled",
            "pid": bystander.id(),
            "cmdline": ["/usr/bin/skv-node", "--config", "nodes/db.toml"],
        }));
    std::fs::write(&state_path, serde_json::to_vec(&state)?)?;
    let stopped = lab.lab_cmd("stop", &[])?;
    assert_eq!(code(&stopped), 0, "{}", err_text(&stopped));
    assert!(
        bystander.try_wait()?.is_none(),
        "stop killed a process that is not the lab's"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(String::from_utf8_lossy(&stopped.stdout).contains("stopped db"));

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.notes("fix it").contains("fails at the handshake"));
    Ok(())
}

/// Lab 03. Near-miss: a rogue certificate with the wrong SPIFFE name.
#[test]
fn lab03_rogue_ca() -> anyhow::Result<()> {
    let lab = LabRun::start("3")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("forge it")
            .contains("there is no rogue/clients/alice.pem"),
        "{:?}",
        empty.json
    );
    assert!(empty
        .missing("see it refused")
        .contains("make the certificate first"));

    lab.shell("skv certs init --dir rogue --cluster evil --nodes x --clients alice >/dev/null")?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("forge it")
            .contains("carries spiffe://evil/client/alice"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done
        .notes("see it refused")
        .contains("failed at the handshake"));
    Ok(())
}

/// Lab 04. Near-miss: the answer is the node's verification time, not the notAfter.
#[test]
fn lab04_expired_cert() -> anyhow::Result<()> {
    let lab = LabRun::start("04")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("try it")
            .contains("no handshake refused for an expired certificate"),
        "{:?}",
        empty.json
    );
    assert!(empty
        .missing("explain it")
        .contains("there is no expired-at.txt"));

    lab.shell(
        "skv --addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/alice-old.pem \
             --key pki/clients/alice-old-key.pem get secret/flag && exit 1\n\
         grep 'certificate expired' logs/db.log | tail -n 1 \
             | sed -E 's/.*verification time ([0-9]+).*/\\1/' > expired-at.txt",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(near.part_solved("try it"), "{:?}", near.json);
    assert!(
        near.missing("explain it").contains("when the node checked"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    Ok(())
}

/// Lab 05. Near-miss: alg none, but the claims grant only mallory's own prefix.
#[test]
fn lab05_alg_none() -> anyhow::Result<()> {
    let lab = LabRun::start("alg-none")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("break it")
            .contains("there is no forged.token"),
        "{:?}",
        empty.json
    );
    assert!(empty.missing("fix it").contains("write forged.token first"));

    lab.shell(
        "exp=$(( $(date +%s) + 600 ))\n\
         skv lab forge-jwt --claims '{\"sub\":\"mallory\",\"exp\":'$exp',\"scopes\":[{\"prefix\":\"mallory/\",\"ops\":[\"read\"]}]}' > forged.token",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it")
            .contains("nothing that reads secret/flag"),
        "{:?}",
        near.json
    );
    assert!(near.missing("break it").contains("read:mallory/"));
    assert!(
        near.missing("fix it")
            .contains("send forged.token to the node yourself"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(
        done.notes("fix it").contains("alg \"none\" is not allowed"),
        "{:?}",
        done.json
    );
    Ok(())
}

/// Lab 06. Near-misses: HS256 keyed with the keyset file instead of the PEM the service
/// uses; and an alg none token (lab 05's attack) in this lab.
#[test]
fn lab06_hs256_confusion() -> anyhow::Result<()> {
    let lab = LabRun::start("6")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("break it")
            .contains("there is no forged.token"),
        "{:?}",
        empty.json
    );

    let claims = "exp=$(( $(date +%s) + 600 ))\n\
                  claims='{\"sub\":\"mallory\",\"exp\":'$exp',\"scopes\":[{\"prefix\":\"secret/\",\"ops\":[\"read\"]}]}'\n";
    lab.shell(&format!(
        "{claims}skv lab forge-jwt --header '{{\"alg\":\"HS256\"}}' --claims \"$claims\" \
         --hs256-key public/keyset.json > forged.token"
    ))?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it")
            .contains("HS256 signature does not verify"),
        "{:?}",
        near.json
    );

    lab.shell(&format!(
        "{claims}skv lab forge-jwt --claims \"$claims\" > forged.token"
    ))?;
    let other = lab.check()?;
    assert!(
        other
            .missing("break it")
            .contains("with alg none: this lab is about a token with alg hs256"),
        "{:?}",
        other.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(
        done.notes("fix it").contains("does not match alg EdDSA"),
        "{:?}",
        done.json
    );
    Ok(())
}

/// Lab 07. Near-miss: binding required in the config but the node not restarted; the answer
/// is not the flag.
#[test]
fn lab07_stolen_token() -> anyhow::Result<()> {
    let lab = LabRun::start("7")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty.missing("break it").contains("there is no answer.txt"),
        "{:?}",
        empty.json
    );
    assert!(
        empty
            .missing("fix it")
            .contains("require_bound_tokens = true"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "skv --addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/mallory.pem \
             --key pki/clients/mallory-key.pem --token-file mallory.token get mallory/notes > answer.txt\n\
         echo 'require_bound_tokens = true' >> nodes/db.toml",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("break it").contains("does not hold the flag"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("fix it")
            .contains("still accepts alice's token"),
        "{:?}",
        near.json
    );
    // Restarted with the fix, but the student never replayed the token: each check's own
    // replay (same certificate, same token) is refused, and still does not count as theirs.
    lab.shell("skv lab restart 7 --dir . >/dev/null")?;
    for _ in 0..2 {
        let unreplayed = lab.check()?;
        assert!(
            unreplayed
                .missing("fix it")
                .contains("no refusal of your own replay"),
            "{:?}",
            unreplayed.json
        );
    }

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(
        done.notes("break it")
            .contains("from mallory's certificate"),
        "{:?}",
        done.json
    );
    assert!(
        done.notes("fix it").contains("requires binding"),
        "{:?}",
        done.json
    );
    Ok(())
}

/// Lab 08. Near-miss: the token signed with the right key but expired beyond the leeway.
#[test]
fn lab08_expired_token() -> anyhow::Result<()> {
    let lab = LabRun::start("expired-token")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty.missing("break it").contains("there is no answer.txt"),
        "{:?}",
        empty.json
    );
    assert!(
        empty.missing("fix it").contains("3600 s of leeway"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "skv --addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/mallory.pem \
             --key pki/clients/mallory-key.pem --token-file loot/mallory-ancient.token \
             get secret/flag > answer.txt && exit 1\n\
         true",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    let why = near.missing("break it");
    assert!(why.contains("answer.txt is empty"), "{why}");
    assert!(
        why.contains("expired beyond the node's leeway") && why.contains("(leeway 3600s)"),
        "{why}"
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(
        done.notes("fix it").contains("(leeway 5s)"),
        "{:?}",
        done.json
    );
    Ok(())
}
