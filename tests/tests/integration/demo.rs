//! `skv demo`, the README's first command: it runs to the end, exits 0, and walks through the
//! cluster and all three checkpoints.

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
        "is served by node",
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
    // The cluster status at the end is the table `skv cluster status` prints.
    check_status_table(&text, 3)?;
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
