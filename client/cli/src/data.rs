//! The data commands: get, put, delete, scan, cas, ping.

use std::ffi::OsString;
use std::io::{IsTerminal, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skv_client::{
    exit, CasResult, ClientError, ClusterClient, ConnectOptions, Connection, Failover, Profile,
    Security,
};
use skv_proto::ErrorCode;

use crate::args::{Command, ConnArgs};
use crate::output;

/// Run a data command; returns the exit code.
pub(crate) fn run(conn: &ConnArgs, json: bool, command: Command) -> u8 {
    let mut sent_token = false;
    let result = connect_settings(conn).and_then(|(mut opts, seeds)| {
        sent_token = opts.token.is_some();
        // Another node can be tried for the first contact too (the profile's seeds), so one
        // that does not answer costs an attempt, not the whole --timeout.
        opts.connect_timeout = opts.connect_timeout.min(attempt_timeout(conn));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Config(format!("cannot start the async runtime: {e}")))?;
        runtime.block_on(execute(opts, seeds, conn, json, command))
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            let hint = match &err {
                ClientError::Refused(e) if e.code == ErrorCode::Unauthenticated && !sent_token => {
                    " (no token was sent: pass --token, --token-file or SKV_TOKEN)"
                }
                _ => "",
            };
            eprintln!("skv: {err}{hint}");
            err.exit_code()
        }
    }
}

/// Merge flags and environment (already merged by clap) over the profile. Also returns the
/// profile's other node addresses: where a cluster client looks for the cluster when the
/// first contact (`opts.addr`) does not answer.
pub(crate) fn connect_settings(
    conn: &ConnArgs,
) -> Result<(ConnectOptions, Vec<String>), ClientError> {
    let profile = match &conn.profile {
        Some(path) => Profile::load(path)?,
        None => Profile::default(),
    };
    let seeds = profile.nodes.clone().unwrap_or_default();
    let addr = conn
        .addr
        .clone()
        .or(profile.addr)
        .unwrap_or_else(|| skv_client::DEFAULT_ADDR.to_owned());
    check_port(&addr)?;
    let security = if conn.plaintext {
        Security::Plaintext
    } else {
        let ca = conn.ca.clone().or(profile.ca).ok_or_else(|| {
            ClientError::Config(
                "no CA certificate to verify the node with: pass --ca FILE (or SKV_CA, or \
                 --profile FILE); create dev credentials with `skv certs init`"
                    .into(),
            )
        })?;
        let cert = conn.cert.clone().or(profile.cert);
        let key = conn.key.clone().or(profile.key);
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ClientError::Config(
                    "--cert given without --key: pass both, or neither".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(ClientError::Config(
                    "--key given without --cert: pass both, or neither".into(),
                ))
            }
        };
        Security::Tls { ca, identity }
    };
    let token = match (&conn.token, conn.token_file.as_ref().or(profile.token_file.as_ref())) {
        (Some(token), _) => Some(token.trim().to_owned()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    ClientError::Config(format!(
                        "cannot read the token file {}: {e}; write one with `skv token issue ... > FILE`",
                        path.display()
                    ))
                })?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let mut opts = ConnectOptions::new(addr, security);
    opts.token = token;
    opts.token_handles = !conn.token_in_every_request;
    opts.server_name = conn.server_name.clone();
    opts.connect_timeout = Duration::from_secs(conn.timeout.max(1));
    opts.request_timeout = Duration::from_secs(conn.timeout.max(1));
    Ok((opts, seeds))
}

/// A usage error (exit 2) for an address without a port, instead of a connection failure.
fn check_port(addr: &str) -> Result<(), ClientError> {
    // HOST:PORT or [IPv6]:PORT; a bare IPv6 address has colons but no port.
    let port = match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.ends_with(']') => port,
        _ => "",
    };
    if port.is_empty() {
        return Err(ClientError::Config(format!(
            "the node address {addr} has no port: give HOST:PORT, e.g. {}",
            skv_client::DEFAULT_ADDR
        )));
    }
    if port.parse::<u16>().is_err() {
        return Err(ClientError::Config(format!(
            "the node address {addr} has an invalid port {port:?}: give HOST:PORT, e.g. {}",
            skv_client::DEFAULT_ADDR
        )));
    }
    Ok(())
}

fn bytes_of(arg: OsString) -> Bytes {
    Bytes::from(arg.into_vec())
}

/// A value argument: its bytes, or standard input for `-`.
fn value_of(arg: OsString) -> Result<Bytes, ClientError> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Config(format!("cannot read the value from stdin: {e}")))?;
        Ok(Bytes::from(buf))
    } else {
        Ok(bytes_of(arg))
    }
}

/// `--attempt-timeout`, at least a second and at most `--timeout`.
fn attempt_timeout(conn: &ConnArgs) -> Duration {
    Duration::from_secs(conn.attempt_timeout.clamp(1, conn.timeout.max(1)))
}

/// How the data commands fail over: attempts of `--attempt-timeout` within `--timeout`.
fn failover(conn: &ConnArgs) -> Failover {
    Failover {
        attempt_timeout: attempt_timeout(conn),
        deadline: Duration::from_secs(conn.timeout.max(1)),
        ..Failover::default()
    }
}

async fn execute(
    opts: ConnectOptions,
    seeds: Vec<String>,
    conn: &ConnArgs,
    json: bool,
    command: Command,
) -> Result<u8, ClientError> {
    if let Command::Ping = command {
        return ping(&opts, json).await;
    }
    // Every data command routes by key, so any node of a cluster is a good first contact.
    let client = ClusterClient::connect(opts, seeds)
        .await?
        .with_failover(failover(conn))
        .with_consistency(conn.consistency.into());
    match command {
        Command::Get { key } => {
            let key = bytes_of(key);
            match client.get(key.clone()).await? {
                None => {
                    if json {
                        output::json_line(&serde_json::json!({
                            "key": output::text(&key),
                            "found": false,
                        }));
                    }
                    eprintln!("skv: key not found");
                    Ok(exit::NOT_FOUND)
                }
                Some((version, value)) => {
                    if json {
                        let mut obj = output::entry_json(&key, version, &value);
                        obj["found"] = true.into();
                        output::json_line(&obj);
                    } else {
                        let mut out = std::io::stdout().lock();
                        let is_tty = out.is_terminal();
                        let written = out
                            .write_all(&value)
                            .and_then(|()| if is_tty { out.write_all(b"\n") } else { Ok(()) })
                            .and_then(|()| out.flush());
                        if let Err(e) = written {
                            // A closed pipe (`skv get k | head -c1`) is not the node's fault.
                            if e.kind() != std::io::ErrorKind::BrokenPipe {
                                return Err(ClientError::Config(format!(
                                    "cannot write to stdout: {e}"
                                )));
                            }
                        }
                    }
                    Ok(exit::OK)
                }
            }
        }
        Command::Put { key, value } => {
            let version = client.put(bytes_of(key), value_of(value)?).await?;
            if json {
                output::json_line(&serde_json::json!({ "version": version }));
            } else {
                println!("OK version {version}");
            }
            Ok(exit::OK)
        }
        Command::Delete { key } => {
            let existed = client.delete(bytes_of(key)).await?;
            if json {
                output::json_line(&serde_json::json!({ "deleted": existed }));
            } else if existed {
                println!("deleted");
            } else {
                eprintln!("skv: key not found (nothing deleted)");
            }
            Ok(if existed { exit::OK } else { exit::NOT_FOUND })
        }
        Command::Cas {
            key,
            expect_version,
            value,
        } => match client
            .cas(bytes_of(key), expect_version, value_of(value)?)
            .await?
        {
            CasResult::Written(version) => {
                if json {
                    output::json_line(&serde_json::json!({ "written": true, "version": version }));
                } else {
                    println!("OK version {version}");
                }
                Ok(exit::OK)
            }
            CasResult::Conflict(current) => {
                if json {
                    output::json_line(
                        &serde_json::json!({ "written": false, "current_version": current }),
                    );
                }
                let now = if current == 0 {
                    "the key does not exist".to_owned()
                } else {
                    format!("the key is at version {current}")
                };
                eprintln!("skv: CAS conflict: expected version {expect_version}, but {now}; nothing written");
                Ok(exit::CAS_CONFLICT)
            }
        },
        Command::Scan {
            prefix,
            limit,
            cursor,
            keys_only,
        } => {
            let page = ScanArgs {
                prefix: bytes_of(prefix),
                limit,
                cursor: cursor.map(bytes_of),
                keys_only,
            };
            scan(&client, json, page).await
        }
        Command::Ping
        | Command::Bench(_)
        | Command::Certs(_)
        | Command::CheckHistory(_)
        | Command::Cluster(_)
        | Command::Demo(_)
        | Command::Keys(_)
        | Command::Lab(_)
        | Command::Token(_) => unreachable_command(),
    }
}

/// PING the one node at `--addr`: a health check of that node, so it is not routed.
async fn ping(opts: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    let started = Instant::now();
    let conn = Connection::connect(opts).await?;
    let rtt = Instant::now();
    conn.ping().await?;
    let rtt = rtt.elapsed();
    if json {
        output::json_line(&serde_json::json!({
            "node": conn.node(),
            "rtt_us": rtt.as_micros() as u64,
            "connect_us": (started.elapsed() - rtt).as_micros() as u64,
        }));
    } else {
        println!(
            "PONG from {} at {} in {:.2} ms (connect + handshake {:.2} ms)",
            conn.node(),
            conn.addr(),
            rtt.as_secs_f64() * 1e3,
            (started.elapsed() - rtt).as_secs_f64() * 1e3
        );
    }
    Ok(exit::OK)
}

fn unreachable_command() -> Result<u8, ClientError> {
    Err(ClientError::Config(
        "internal: command routed to the wrong handler".into(),
    ))
}

/// Page through a scan of the whole cluster, printing entries as they arrive so a large scan
/// streams.
/// What `skv scan` asks for.
struct ScanArgs {
    prefix: Bytes,
    limit: Option<u64>,
    cursor: Option<Bytes>,
    keys_only: bool,
}

async fn scan(client: &ClusterClient, json: bool, args: ScanArgs) -> Result<u8, ClientError> {
    let ScanArgs {
        prefix,
        limit,
        mut cursor,
        keys_only,
    } = args;
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut entries = Vec::new();
    let mut out = std::io::stdout().lock();
    // One scanner for all pages: it keeps each node's unmerged entries between pages.
    let mut scanner = client.scanner(prefix, cursor.clone()).keys_only(keys_only);
    while remaining > 0 {
        let page_limit = remaining.min(u64::from(skv_proto::MAX_SCAN_PAGE)) as u32;
        let page = scanner.next_page(page_limit).await?;
        remaining -= (page.entries.len() as u64).min(remaining);
        for entry in page.entries {
            if json && keys_only {
                entries.push(serde_json::json!({
                    "key": output::text(&entry.key),
                    "version": entry.version,
                }));
            } else if json {
                entries.push(output::entry_json(&entry.key, entry.version, &entry.value));
            } else if keys_only {
                let _ = writeln!(out, "{}", output::escape(&entry.key));
            } else {
                let _ = writeln!(
                    out,
                    "{}\t{}",
                    output::escape(&entry.key),
                    output::escape(&entry.value)
                );
            }
        }
        cursor = page.cursor;
        if cursor.is_none() {
            break;
        }
    }
    if json {
        output::json_line(&serde_json::json!({
            "entries": entries,
            "cursor": cursor.as_deref().map(output::text),
        }));
    } else if let Some(c) = &cursor {
        eprintln!(
            "skv: more keys follow; continue with --cursor '{}'",
            output::escape(c)
        );
    }
    Ok(exit::OK)
}
