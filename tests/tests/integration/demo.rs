//! `skv demo`, the README's first command: it runs to the end, exits 0, and walks through the
//! replicated cluster, a leader's failure and recovery, and all three checkpoints.

use skv_tests::{check_status_table, code, err_text, skv, strs};

#[test]
fn the_demo_runs_a_three_node_cluster_and_every_checkpoint() -> anyhow::Result<()> {
    let out = skv(&strs(&["demo"]), None)?;
    assert_eq!(code(&out), 0, "demo failed: {}", err_text(&out));
    let text = String::from_utf8(out.stdout)?;
    for needle in [
        "slots 0-5460",
        "slots 10922-16383",
        "scan users/",
        "is not the leader of shard",
        "killing",
        "written during the outage",
        "has a new leader: n",
        "is back and caught up",
        "forbidden: the token does not grant write on this key",
        "need a token granting admin",
        "unauthenticated",
        "requires a client certificate",
        "nodes n1, n2, n3 stopped cleanly",
        "\"decision\":\"deny\"",
    ] {
        assert!(
            text.contains(needle),
            "the demo did not show {needle:?}:\n{text}"
        );
    }
    // The write during the outage is read back, from the new leader.
    assert!(
        text.lines()
            .any(|l| l.starts_with("{\"name\":\"Bob\",\"during\":\"outage\"}")),
        "the demo did not read back the write made during the outage:\n{text}"
    );
    // The new leader is one of the two nodes left, not the one killed.
    let killed = text
        .lines()
        .find_map(|l| l.split("; killing ").nth(1)?.split_whitespace().next())
        .expect("a line naming the node killed");
    let new_leader = text
        .lines()
        .find_map(|l| {
            l.split("has a new leader: ")
                .nth(1)?
                .split_whitespace()
                .next()
        })
        .expect("a line naming the new leader");
    assert_ne!(killed, new_leader, "{text}");
    // Once back, the killed node follows every shard with nothing left to copy.
    let caught_up = text
        .lines()
        .filter(|l| {
            l.contains(&format!("{killed} is a follower")) && l.contains(" 0 entries behind")
        })
        .count()
        + text
            .lines()
            .filter(|l| {
                l.trim_start().starts_with("shard ") && l.contains(&format!("{killed} is a leader"))
            })
            .count();
    assert_eq!(
        caught_up, 3,
        "{killed} did not catch up on every shard:\n{text}"
    );
    // The cluster status at the end is the table `skv cluster status` prints, every shard
    // healthy again.
    check_status_table(&text, 3)?;
    let healthy = text
        .lines()
        .filter(|l| l.starts_with("shard ") && l.contains("  healthy  "))
        .count();
    assert_eq!(healthy, 3, "not every shard is healthy at the end:\n{text}");
    // The scan prints as `skv scan` does: JSON values as they are, quotes unescaped.
    assert!(
        text.lines()
            .any(|l| l.starts_with("users/alice\t{\"name\":\"Alice\"")),
        "the demo's scan escapes what `skv scan` does not:\n{text}"
    );
    // The tour prints a token's length and a few characters, never a whole token.
    let whole_token =
        |word: &str| word.starts_with("eyJ") && word.len() > 100 && word.split('.').count() == 3;
    assert!(
        !text.split_whitespace().any(whole_token),
        "a token leaked:\n{text}"
    );
    Ok(())
}
