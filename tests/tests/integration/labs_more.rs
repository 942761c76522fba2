//! Issue 13: the security labs 09 to 16, driven as a student would drive them (`skv lab
//! start`, shell steps in the lab's directory, `skv lab check --json`, `skv lab stop`). For
//! every lab: an empty attempt fails with an explanation, a near-miss fails with one, and the
//! worked solution (`skv lab solution`, executed) passes. Labs 01 to 08 are in labs.rs.

use skv_tests::lab::LabRun;

/// The flags a student uses in lab 09, as its README gives them.
const LAB09_S: &str = "S=\"--addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/tenant-a.pem \
                       --key pki/clients/tenant-a-key.pem --token-file a.token\"\n";

/// Lab 09. Near-misses: a "write outside" that is inside the grant (`a/../ab/flag` is just a
/// key under `a/`), and a scan prefix the student never tried.
#[test]
fn lab09_scope_escape() -> anyhow::Result<()> {
    let lab = LabRun::start("9")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("write outside")
            .contains("there is no escape.toml"),
        "{:?}",
        empty.json
    );

    lab.shell(&format!(
        "{LAB09_S}skv $S put a/../ab/flag x\n\
         printf 'write_key = \"a/../ab/flag\"\\nscan_prefix = \"b/\"\\n' > escape.toml"
    ))?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("write outside")
            .contains("starts with a/, so your grant covers it"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("scan outside")
            .contains("shows no scan of \"b/\" from your certificate"),
        "{:?}",
        near.json
    );
    // That check replayed the scan of b/ with the student's token and certificate; the
    // checker's own request does not count as the student's attempt at the next check.
    let again = lab.check()?;
    assert!(
        again
            .missing("scan outside")
            .contains("shows no scan of \"b/\" from your certificate"),
        "{:?}",
        again.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.part_solved("write outside") && done.part_solved("scan outside"));
    assert!(
        done.notes("scan outside")
            .contains("the checker's replay was refused"),
        "{:?}",
        done.json
    );
    Ok(())
}

/// Lab 10. Near-miss: the old key retired before the application moved to the new one, so
/// the application saw failed reads (downtime) and is refused.
#[test]
fn lab10_key_rotation() -> anyhow::Result<()> {
    let lab = LabRun::start("key-rotation")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("new key in use")
            .contains("still signed by the first key"),
        "{:?}",
        empty.json
    );
    assert!(
        empty
            .missing("old key retired")
            .contains("still works: retire that kid"),
        "{:?}",
        empty.json
    );

    // The wrong order: a new key, the old one retired at once, the application still on it.
    lab.shell(
        "old=$(skv token inspect \"$(cat app.token)\" | grep '\"kid\"' | head -n 1 \
           | sed -E 's/.*\"kid\": \"([^\"]+)\".*/\\1/')\n\
         skv keys init --dir issuer --kid k2 >/dev/null\n\
         skv keys retire --dir issuer --kid \"$old\" >/dev/null\n\
         kill -HUP \"$(cat run/db.pid)\"\n\
         for i in $(seq 1 50); do grep -q failed logs/victim.log && break; sleep 0.1; done",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(near.part_solved("old key retired"), "{:?}", near.json);
    assert!(
        near.missing("no downtime").contains("failed read(s)"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done
        .notes("old key retired")
        .contains("is not in the keyset"));
    Ok(())
}

/// Lab 11. Near-miss: the token's owner named as the attacker's certificate (a bearer token
/// was used from someone else's certificate).
#[test]
fn lab11_audit_hunt() -> anyhow::Result<()> {
    let lab = LabRun::start("audit-hunt")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("name the attacker")
            .contains("there is no answer.toml"),
        "{:?}",
        empty.json
    );

    // The near-miss: the right subject, but "cert" is that subject's own certificate.
    lab.shell(
        "sub=$(grep '\"decision\":\"deny\"' logs/db-audit.log | grep 'not granted' \
           | sed -E 's/.*\"sub\":\"([^\"]+)\".*/\\1/' | sort | uniq -c | sort -rn | head -n 1 \
           | awk '{print $2}')\n\
         printf 'sub = \"%s\"\\ncert = \"%s\"\\ntried = [\"admin/users\"]\\n' \"$sub\" \"$sub\" \
           > answer.toml",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    let why = near.missing("name the attacker");
    assert!(
        why.contains("is the certificate of the token's owner"),
        "{:?}",
        near.json
    );
    assert!(why.contains("attempts named"), "{:?}", near.json);
    assert!(
        !why.contains("sub:"),
        "the subject was right: {:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.notes("name the attacker").contains("tried:"));
    Ok(())
}

/// Lab 12. Near-miss: only the map proposal tried, and the stolen node certificate never
/// presented.
#[test]
fn lab12_node_impersonation() -> anyhow::Result<()> {
    let lab = LabRun::start("12")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("client as a node")
            .contains("shows no propose_map of yours"),
        "{:?}",
        empty.json
    );

    lab.shell(
        "if skv lab peer-call --addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/ops.pem \
           --key pki/clients/ops-key.pem --token-file ops.token propose-map; then exit 1; fi",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    let why = near.missing("client as a node");
    assert!(why.contains("shows no raft of yours"), "{:?}", near.json);
    assert!(!why.contains("propose_map"), "{:?}", near.json);
    assert!(!near.part_solved("node as a client"), "{:?}", near.json);

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done.part_solved("client as a node") && done.part_solved("node as a client"));
    Ok(())
}

/// Lab 14. Near-miss: keys written but no node killed.
#[test]
fn lab14_kill_node() -> anyhow::Result<()> {
    let lab = LabRun::start("kill-node")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(!empty.solved(), "{:?}", empty.json);
    assert!(!empty.missing("kill a node").is_empty(), "{:?}", empty.json);

    lab.shell(
        "A=\"--ca pki/ca.pem --cert pki/clients/alice.pem --key pki/clients/alice-key.pem \
           --token-file alice.token\"\n\
         for i in $(seq 1 12); do skv --addr \"$N1_ADDR\" $A put mine/k$i v$i >/dev/null; done",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(
        near.missing("its requests go to the others")
            .contains("kill a node first"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    Ok(())
}

/// Lab 13. Near-misses: n4 added to the map but never given slots (no rebalance), so it serves
/// nothing and no slot moved under the application's writes; then, after the solution, an
/// acknowledged write the cluster does not hold.
#[test]
fn lab13_rebalance() -> anyhow::Result<()> {
    let lab = LabRun::start("rebalance")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty.missing("add a node").contains("skv lab add-node 13"),
        "{:?}",
        empty.json
    );

    lab.shell("skv lab add-node 13 --dir .")?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(near.missing("add a node").is_empty(), "{:?}", near.json);
    assert!(
        near.missing("the new node serves slots")
            .contains("serves no slot"),
        "{:?}",
        near.json
    );
    assert!(
        near.missing("no acknowledged write lost under load")
            .contains("no slots were moved yet"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);

    // Near-miss two: slots moved, but one write the application was told succeeded is not in
    // the cluster. app/w0 is never written (the writer counts from 1), so the cluster really
    // lacks it; the checker must name it rather than trust the moves.
    lab.shell("echo 'app/w0 0' >> logs/victim-acked.log")?;
    let lost = lab.check()?;
    assert_eq!(lost.code, 1, "{:?}", lost.json);
    assert!(
        lost.missing("no acknowledged write lost under load")
            .contains("app/w0"),
        "{:?}",
        lost.json
    );
    Ok(())
}

/// Lab 16. Near-misses: a figure missing, then L4's and L5's figures swapped (the cache
/// "costs" what it saves), which the checker's own run contradicts.
#[test]
fn lab16_price() -> anyhow::Result<()> {
    let lab = LabRun::start("price")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("measure it")
            .contains("there is no price.toml"),
        "{:?}",
        empty.json
    );

    lab.shell("printf 'l4_ops_per_sec = 1000\\nl5_ops_per_sec = 5000\\n' > price.toml")?;
    let partial = lab.check()?;
    assert_eq!(partial.code, 1);
    assert!(
        partial
            .missing("measure it")
            .contains("has no l4_server_us_per_op"),
        "{:?}",
        partial.json
    );

    // The figures of a real run here, with L4 and L5 swapped.
    lab.shell(
        "skv bench ladder --cases token-cache --quick --warmup 200ms --duration 700ms \
           --out ladder >/dev/null 2>&1\n\
         awk -F': ' '\n\
           /\"rung\":/ { r = ($2 ~ /L4/) ? \"l5\" : \"l4\" }\n\
           /\"ops_per_sec\":/ && !seen[r, \"o\"]++ { v = $2; sub(/,$/, \"\", v); printf \"%s_ops_per_sec = %.0f\\n\", r, v }\n\
           /\"server_cpu_us_per_op\":/ && !seen[r, \"c\"]++ { v = $2; sub(/,$/, \"\", v); printf \"%s_server_us_per_op = %.1f\\n\", r, v }\n\
         ' ladder/results.json > price.toml",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    assert!(near.part_solved("measure it"), "{:?}", near.json);
    let why = near.missing("agrees with the checker's run");
    assert!(
        why.contains("L5/L4 throughput ratio") && why.contains("Were L4 and L5 swapped"),
        "{:?}",
        near.json
    );

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done
        .notes("agrees with the checker's run")
        .contains("within 2.5×"));
    Ok(())
}

/// Lab 15. Near-misses: a node killed instead of frozen, then a follower frozen instead of a
/// leader.
#[test]
fn lab15_partition_leader() -> anyhow::Result<()> {
    let lab = LabRun::start("partition-leader")?;
    let empty = lab.check()?;
    assert_eq!(empty.code, 1);
    assert!(
        empty
            .missing("freeze a leader")
            .contains("every node runs freely"),
        "{:?}",
        empty.json
    );

    // A node that leads nothing: every shard's leader is someone else.
    lab.shell(
        "follower=$(for n in n1 n2 n3; do skv lab leaders 15 --dir . | grep -q \"leader $n \" \
           || { echo $n; break; }; done)\n\
         if [ -n \"$follower\" ]; then kill -STOP \"$(cat run/$follower.pid)\"; \
         else kill -9 \"$(cat run/n2.pid)\"; fi",
    )?;
    let near = lab.check()?;
    assert_eq!(near.code, 1);
    let why = near.missing("freeze a leader");
    assert!(
        why.contains("it led no shard") || why.contains("that is a crash (lab 14)"),
        "{:?}",
        near.json
    );
    assert!(near
        .missing("writes continue")
        .contains("freeze a leader first"));

    lab.reset()?;
    lab.run_solution()?;
    let done = lab.check()?;
    assert_eq!(done.code, 0, "{:?}", done.json);
    assert!(done
        .notes("a new leader took over")
        .contains("leads now, in term"));
    Ok(())
}
