//! The first hour of a new user, through the CLI: the README's walkthrough leaves nothing
//! for git to pick up, `--json` always prints JSON, a plain scan is readable and unambiguous,
//! and a mistyped address is a usage error that says what is missing.

use serde_json::Value;
use skv_tests::{code, err_text, skv, with, Node, Pki};

#[test]
fn json_get_of_a_missing_key_prints_json_and_exits_1() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let out = skv(
        &with(pki.alice_args(&node.addr), &["--json", "get", "missing"]),
        None,
    )?;
    assert_eq!(code(&out), 1, "{}", err_text(&out));
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("stdout is not JSON ({e}): {:?}", out.stdout))?;
    assert_eq!(json["found"], false, "{json}");
    assert_eq!(json["key"], "missing", "{json}");
    assert_eq!(out.stdout.iter().filter(|b| **b == b'\n').count(), 1);

    // A key that exists says found: true, in the same shape.
    let out = skv(
        &with(pki.alice_args(&node.addr), &["put", "here", "x"]),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let out = skv(
        &with(pki.alice_args(&node.addr), &["--json", "get", "here"]),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let json: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (json["found"].clone(), json["key"].clone()),
        (true.into(), "here".into())
    );
    Ok(())
}
