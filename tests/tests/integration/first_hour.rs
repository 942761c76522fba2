//! The first hour of a new user, through the CLI: the README's walkthrough leaves nothing
//! for git to pick up, `--json` always prints JSON, a plain scan is readable and unambiguous,
//! a mistyped address is a usage error that says what is missing, and output piped into a
//! reader that stops early (`| head`) ends quietly instead of panicking.

use std::path::Path;

use serde_json::Value;
use skv_tests::{code, err_text, skv, strs, with, Node, Pki};

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

#[test]
fn plain_scan_prints_text_as_is_and_escapes_only_what_would_break_a_line() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let alice = pki.alice_args(&node.addr);
    let values: [(&str, &[u8]); 4] = [
        ("s/1json", br#"{"name":"Alice","it's":"ok"}"#),
        ("s/2lines", b"one\ttwo\nthree\r"),
        ("s/3slash", b"a\\nb"),
        ("s/4bytes", b"\x00\xffz"),
    ];
    for (key, value) in values {
        let out = skv(&with(alice.clone(), &["put", key, "-"]), Some(value))?;
        assert_eq!(code(&out), 0, "{}", err_text(&out));
    }
    let out = skv(&with(alice, &["scan", "s/"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let text = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            r#"s/1json	{"name":"Alice","it's":"ok"}"#,
            r"s/2lines	one\ttwo\nthree\r",
            r"s/3slash	a\\nb",
            r"s/4bytes	\x00\xffz",
        ],
        "{text}"
    );
    Ok(())
}

#[test]
fn an_address_without_a_port_is_a_usage_error() -> anyhow::Result<()> {
    for (addr, says) in [
        ("127.0.0.1", "has no port"),
        ("localhost", "has no port"),
        ("::1", "has no port"),
        ("127.0.0.1:http", "invalid port"),
        ("127.0.0.1:99999", "invalid port"),
    ] {
        let out = skv(&strs(&["--addr", addr, "--plaintext", "ping"]), None)?;
        let err = err_text(&out);
        assert_eq!(code(&out), 2, "--addr {addr}: {err}");
        assert!(
            err.contains(says) && err.contains(addr),
            "--addr {addr}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    // With a port, the same command gets as far as connecting (nothing listens: exit 4).
    let unused = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let out = skv(
        &strs(&["--addr", &unused.to_string(), "--plaintext", "ping"]),
        None,
    )?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    Ok(())
}

/// Every file or directory the README's commands create in the checkout (`--dir`,
/// `--data-dir`, `--audit-log`, `--out` values) is ignored by the top-level .gitignore.
#[test]
fn the_readme_walkthrough_leaves_nothing_for_git() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let gitignore = std::fs::read_to_string(root.join(".gitignore"))?;
    let mut created: Vec<String> = Vec::new();
    for words in readme
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        for pair in words.windows(2) {
            if ["--dir", "--data-dir", "--audit-log", "--out"].contains(&pair[0]) {
                // `pki/clients/alice.toml` lives in `pki`: the first component is what appears.
                let first = pair[1].split('/').next().unwrap_or_default();
                if !first.is_empty() && !first.contains(['$', '<', '.']) || first.ends_with(".log")
                {
                    created.push(first.to_owned());
                }
            }
        }
    }
    created.sort();
    created.dedup();
    for must in ["pki", "data", "keys", "c", "audit.log", "skv-ladder"] {
        assert!(
            created.iter().any(|c| c == must),
            "the README no longer creates {must}? found {created:?}"
        );
    }
    let ignored = |name: &str| {
        gitignore.lines().map(str::trim).any(|pattern| {
            let p = pattern.trim_start_matches('/').trim_end_matches('/');
            p == name
        })
    };
    let missing: Vec<&String> = created.iter().filter(|c| !ignored(c)).collect();
    assert!(
        missing.is_empty(),
        ".gitignore does not cover {missing:?}, which the README creates"
    );
    Ok(())
}

#[test]
fn output_into_a_closed_pipe_ends_quietly_like_a_unix_tool() -> anyhow::Result<()> {
    // `skv token inspect T | head -0`: the reader is gone before skv prints. The read end is
    // closed before skv starts, so its first line always meets EPIPE (no race with a reader).
    let keys = tempfile::tempdir()?;
    let dir = keys.path().display().to_string();
    let out = skv(&strs(&["keys", "init", "--dir", &dir]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let key = keys.path().join("issuer-key.pem").display().to_string();
    let out = skv(
        &strs(&[
            "token", "issue", "--key", &key, "--sub", "alice", "--allow", "read:a/", "--ttl", "5m",
        ]),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let token = String::from_utf8(out.stdout)?.trim().to_owned();

    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = std::process::Command::new(skv_tests::bin("skv"))
        .args(["token", "inspect", &token])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "a closed pipe is not a crash: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(141),
        "the status of a SIGPIPE'd tool: {stderr}"
    );
    assert!(
        stderr.is_empty(),
        "nothing to say about it either: {stderr}"
    );
    Ok(())
}
