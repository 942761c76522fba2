//! `skv bench` against a real node: the JSON report is complete and sane, reconnects really
//! happen, the per-second series adds up and shows a stalled node, and bad options are usage
//! errors.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;
use skv_tests::{bin, code, err_text, skv, with, Node, Pki};

/// Run `skv bench` with `args`, expect exit 0 and exactly one JSON object on stdout.
fn bench_json(base: &[String], args: &[&str]) -> anyhow::Result<Value> {
    let mut all = with(base.to_vec(), &["bench"]);
    all.extend(args.iter().map(|s| s.to_string()));
    let out = skv(&all, None)?;
    assert_eq!(code(&out), 0, "skv {all:?}: {}", err_text(&out));
    let stdout = String::from_utf8(out.stdout)?;
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    Ok(serde_json::from_str(&stdout)?)
}

/// The fields every report has, and the invariants between them.
fn assert_sane(report: &Value) {
    for field in [
        "rung",
        "variant",
        "workload",
        "value_size",
        "inflight",
        "conns",
        "ops_per_sec",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "max_us",
        "errors",
        "requests",
        "duration_secs",
        "server_cpu_us_per_op",
    ] {
        assert!(report.get(field).is_some(), "missing {field}: {report}");
    }
    assert_eq!(report["rung"], "");
    assert_eq!(report["variant"], "");
    assert!(report["server_cpu_us_per_op"].is_null());
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0, "{report}");
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(report["duration_secs"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(
        report["errors"].as_object().map(|e| e.len()),
        Some(0),
        "{report}"
    );
    let p = |f: &str| report[f].as_u64().unwrap();
    assert!(p("p50_us") > 0, "{report}");
    assert!(p("p50_us") <= p("p90_us"), "{report}");
    assert!(p("p90_us") <= p("p99_us"), "{report}");
    assert!(p("p99_us") <= p("p999_us"), "{report}");
    assert!(p("p999_us") <= p("max_us"), "{report}");
}

#[test]
fn bench_reports_mixed_and_reconnecting_runs() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let alice = pki.alice_args(&node.addr);

    let mixed = bench_json(
        &alice,
        &[
            "--workload",
            "mixed:0.9",
            "--conns",
            "4",
            "--inflight",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--keys",
            "200",
            "--json",
        ],
    )?;
    assert_sane(&mixed);
    assert_adds_up(&mixed);
    assert_eq!(mixed["workload"], "mixed:0.9");
    assert_eq!(mixed["conns"], 4);
    assert_eq!(mixed["inflight"], 4);
    assert_eq!(mixed["value_size"], 100);
    assert_eq!(mixed["preloaded_keys"], 200);
    assert_eq!(mixed["not_found"], 0, "every read finds a preloaded key");
    let secs = mixed["duration_secs"].as_f64().unwrap();
    assert!((0.9..5.0).contains(&secs), "measured about 1 s: {mixed}");

    // The preload really wrote the bench's keys.
    let out = skv(&with(alice.clone(), &["get", "bench/k0000000199"]), None)?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    assert_eq!(out.stdout.len(), 100);

    // 500 writes on 2 connections, each replaced every 50 requests.
    let reconnecting = [
        "--workload",
        "put",
        "--requests",
        "500",
        "--conns",
        "2",
        "--reconnect-every",
        "50",
        "--json",
    ];
    let put = bench_json(&alice, &reconnecting)?;
    assert_sane(&put);
    assert_eq!(put["workload"], "put");
    assert_eq!(
        put["requests"], 500,
        "exactly the requested count is measured"
    );
    assert_eq!(
        put["preloaded_keys"], 0,
        "a write workload needs no preload"
    );
    // 250 measured requests per connection replace it at least 4 times each, on top of
    // the 2 initial handshakes (the warmup adds more).
    let handshakes = put["handshakes"].as_u64().unwrap();
    assert!(handshakes >= 10, "reconnects happened: {put}");
    assert_eq!(
        put["handshakes_resumed"], 0,
        "each replacement is a full handshake: {put}"
    );
    assert_adds_up(&put);

    // With --resume a replacement resumes the TLS session of the connection it replaces;
    // only each task's first connection is a full handshake.
    let resumed = bench_json(&alice, &[&reconnecting[..], &["--resume"]].concat())?;
    assert_sane(&resumed);
    let opened = resumed["handshakes"].as_u64().unwrap();
    let again = resumed["handshakes_resumed"].as_u64().unwrap();
    assert!(opened >= 10, "reconnects happened: {resumed}");
    assert!(
        again >= opened - 2 && again < opened,
        "all but the 2 first connections resumed: {resumed}"
    );
    let out = skv(
        &with(alice.clone(), &["bench", "--resume", "--requests", "10"]),
        None,
    )?;
    assert_eq!(
        code(&out),
        2,
        "--resume without --reconnect-every: {}",
        err_text(&out)
    );

    // The people's output: the summary over 2 full seconds, and with --per-second every
    // second as a row.
    let out = skv(
        &with(
            alice,
            &[
                "bench",
                "--workload",
                "put",
                "--conns",
                "2",
                "--duration",
                "2s",
                "--warmup",
                "100ms",
                "--per-second",
                "--quiet",
            ],
        ),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let text = String::from_utf8(out.stdout)?;
    assert!(text.contains("per second  min "), "{text}");
    assert!(text.contains("one mark a second"), "{text}");
    let rows: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("second"))
        .skip(1)
        .collect();
    assert!(rows.len() >= 2, "a row per second: {text}");
    assert!(rows[0].trim_start().starts_with("0 "), "{text}");
    Ok(())
}

/// `per_second` runs from second 0 without gaps and sums to the report's totals.
fn assert_adds_up(report: &Value) {
    let seconds = report["per_second"].as_array().expect("per_second");
    assert!(!seconds.is_empty(), "{report}");
    for (i, s) in seconds.iter().enumerate() {
        assert_eq!(s["second"].as_u64(), Some(i as u64), "{report}");
    }
    let sum = |field: &str| {
        seconds
            .iter()
            .map(|s| s[field].as_u64().unwrap())
            .sum::<u64>()
    };
    let failed: u64 = report["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        sum("ops") + sum("errors"),
        report["requests"].as_u64().unwrap(),
        "{report}"
    );
    // Request errors only (a failed reconnect is counted under errors but is no request).
    assert!(sum("errors") <= failed, "{report}");
    // The window ends in the last second of the series.
    let window = report["duration_secs"].as_f64().unwrap();
    assert_eq!(window.floor() as usize, seconds.len() - 1, "{report}");
}

/// Run `kill -SIG pid`.
fn signal(sig: &str, pid: u32) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill {sig} {pid}: {status}");
    Ok(())
}

#[test]
fn bench_per_second_shows_a_stalled_node_as_a_dip() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let node = Node::start_tls(&pki, &pki.dir().join("data"), &[])?;
    let args = with(
        pki.alice_args(&node.addr),
        &[
            "bench",
            "--workload",
            "put",
            "--conns",
            "4",
            "--inflight",
            "2",
            "--duration",
            "4s",
            "--warmup",
            "200ms",
            "--json",
        ],
    );
    let mut child = Command::new(bin("skv"))
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Follow the phase notes on stderr, to stop the node inside the measured window.
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    let notes = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("measuring") {
                let _ = tx.send(());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    let measuring = rx.recv_timeout(Duration::from_secs(30));
    if measuring.is_ok() {
        // Frozen, not dead: connections stay open and requests simply go unanswered.
        std::thread::sleep(Duration::from_secs(1));
        signal("-STOP", node.pid())?;
        std::thread::sleep(Duration::from_millis(1500));
        signal("-CONT", node.pid())?;
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_string(&mut stdout)?;
    let status = child.wait()?;
    let notes = notes.join().expect("stderr reader");
    anyhow::ensure!(
        measuring.is_ok(),
        "the bench never started measuring: {notes}"
    );
    assert!(status.success(), "{status}: {notes}");

    let report: Value = serde_json::from_str(stdout.trim())?;
    assert_adds_up(&report);
    let window = report["duration_secs"].as_f64().unwrap();
    let full: Vec<u64> = report["per_second"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| (s["second"].as_u64().unwrap() + 1) as f64 <= window)
        .map(|s| s["ops"].as_u64().unwrap())
        .collect();
    assert!(full.len() >= 4, "{report}");
    let best = *full.iter().max().unwrap();
    let worst = *full.iter().min().unwrap();
    // 1.5 s frozen covers at least 0.75 s of some second: that second completes at most a
    // quarter of what a running one does, plus what the wake-up releases (a few requests).
    assert!(
        worst * 2 < best,
        "no second shows the stall: {full:?} ({report})"
    );
    Ok(())
}

#[test]
fn bench_direct_counts_exactly_and_reports_what_a_token_does_not_grant() -> anyhow::Result<()> {
    let s = skv_tests::Secured::start(&[])?;
    let tokens = s.pki.dir().join("tokens");
    std::fs::create_dir_all(&tokens)?;
    let token_file = |name: &str, allow: &str| -> anyhow::Result<String> {
        let token = s.issue(&["--sub", "alice", "--allow", allow, "--ttl", "10m"])?;
        let path = tokens.join(name);
        std::fs::write(&path, token)?;
        Ok(path.display().to_string())
    };
    let writer = token_file("rw", "read,write:bench/")?;
    let reader = token_file("r", "read:bench/")?;
    let alice = s.pki.alice_args(&s.node.addr);

    // GETs of preloaded keys over 3 directly driven connections, 8 in flight each.
    let get = bench_json(
        &with(alice.clone(), &["--token-file", &writer]),
        &[
            "--direct",
            "--conns",
            "3",
            "--inflight",
            "8",
            "--requests",
            "3001",
            "--keys",
            "300",
            "--warmup",
            "100ms",
            "--json",
        ],
    )?;
    assert_sane(&get);
    assert_eq!(get["requests"], 3001, "exactly the requested count: {get}");
    assert_eq!(
        get["not_found"], 0,
        "every read finds a preloaded key: {get}"
    );
    assert_eq!(get["preloaded_keys"], 300);
    assert_eq!(get["handshakes"], 3, "one connection per task: {get}");

    // --no-preload writes nothing: over twice the key space, the 300 keys written above are
    // found and the others are counted as not found, not as errors.
    let again = bench_json(
        &with(alice.clone(), &["--token-file", &writer]),
        &[
            "--direct",
            "--no-preload",
            "--conns",
            "2",
            "--inflight",
            "4",
            "--requests",
            "1000",
            "--keys",
            "600",
            "--warmup",
            "0s",
            "--json",
        ],
    )?;
    assert_eq!(again["preloaded_keys"], 0, "{again}");
    assert_eq!(again["requests"], 1000, "{again}");
    let not_found = again["not_found"].as_u64().expect("a count");
    assert!(
        (1..1000).contains(&not_found),
        "some keys exist, some do not: {again}"
    );
    assert!(
        again["errors"].as_object().is_some_and(|e| e.is_empty()),
        "{again}"
    );

    // A tenant asking for more than it is granted: every PUT is refused, counted, and the
    // run still reports.
    let put = bench_json(
        &with(alice.clone(), &["--token-file", &reader]),
        &[
            "--direct",
            "--workload",
            "put",
            "--conns",
            "2",
            "--inflight",
            "4",
            "--requests",
            "200",
            "--warmup",
            "0s",
            "--json",
        ],
    )?;
    assert_eq!(put["requests"], 200, "{put}");
    assert_eq!(put["ops_per_sec"], 0.0, "{put}");
    let errors = put["errors"].as_object().expect("errors by kind");
    assert_eq!(
        errors.values().filter_map(Value::as_u64).sum::<u64>(),
        200,
        "{put}"
    );
    assert!(errors.keys().all(|k| k.contains("forbidden")), "{put}");

    // What the direct path cannot do is a usage error, before anything connects.
    for (args, needle) in [
        (&["--direct", "--workload", "scan"][..], "GET and PUT"),
        (&["--direct", "--rate", "100"][..], "cannot be used with"),
        (
            &["--direct", "--reconnect-every", "5"][..],
            "cannot be used with",
        ),
    ] {
        let out = skv(&with(with(alice.clone(), &["bench"]), args), None)?;
        assert_eq!(code(&out), 2, "{args:?}: {}", err_text(&out));
        assert!(
            err_text(&out).contains(needle),
            "{args:?}: {}",
            err_text(&out)
        );
    }
    Ok(())
}

#[test]
fn bench_usage_and_connection_errors() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    // Nothing listens here: the port was free a moment ago.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let alice = pki.alice_args(&addr);

    for (args, needle) in [
        (&["--conns", "0"][..], "--conns"),
        (&["--inflight", "0"][..], "--inflight"),
        (&["--reconnect-every", "0"][..], "--reconnect-every"),
        (&["--workload", "mixed:1.5"][..], "0..=1"),
        (&["--key-dist", "zipf:0"][..], "greater than 0"),
        (&["--duration", "10x"][..], "invalid duration"),
        (
            &["--duration", "1s", "--requests", "5"][..],
            "cannot be used with",
        ),
    ] {
        let out = skv(&with(with(alice.clone(), &["bench"]), args), None)?;
        assert_eq!(code(&out), 2, "{args:?}: {}", err_text(&out));
        assert!(
            err_text(&out).contains(needle),
            "{args:?} should mention {needle:?}: {}",
            err_text(&out)
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }

    // A bench that cannot connect fails like any command: one line, exit 4.
    let out = skv(&with(alice, &["bench", "--conns", "2", "--json"]), None)?;
    assert_eq!(code(&out), 4, "{}", err_text(&out));
    assert!(
        err_text(&out).contains("cannot connect"),
        "{}",
        err_text(&out)
    );
    assert_eq!(err_text(&out).lines().count(), 1, "{}", err_text(&out));
    assert!(out.stdout.is_empty());
    Ok(())
}

#[test]
fn bench_failover_kills_the_leader_and_times_every_try() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("skv-it-failover-")
        .tempdir()?;
    let out_dir = dir.path().join("reports");
    let out_arg = out_dir.display().to_string();
    let out = skv(
        &[
            "bench",
            "failover",
            "--tries",
            "2",
            "--settle",
            "300ms",
            "--writers",
            "2",
            "--out",
            &out_arg,
        ]
        .map(String::from),
        None,
    )?;
    assert_eq!(code(&out), 0, "{}", err_text(&out));
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("failover.json"))?)?;
    let tries = report["tries"].as_array().expect("tries");
    assert_eq!(tries.len(), 2, "{report}");
    for t in tries {
        assert!(t["failover_ms"].as_f64().unwrap() > 0.0, "{t}");
        // The leader was confirmed by its STATUS, killed, and the shard moved on.
        assert_eq!(t["leader_confirmed"], true, "{t}");
        assert_ne!(t["killed"], t["new_leader"], "{t}");
        assert!(t["rejoin_ms"].as_f64().is_some(), "{t}");
    }
    assert!(report["p50_ms"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        report["max_ms"].as_f64().unwrap() >= report["p50_ms"].as_f64().unwrap(),
        "{report}"
    );
    let md = std::fs::read_to_string(out_dir.join("failover.md"))?;
    assert!(md.contains("## Every try"), "{md}");
    Ok(())
}
