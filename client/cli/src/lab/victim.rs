//! The victim: a background "application" that reads one key over and over through the
//! address the lab says (in lab 01, a port on the network path where the student can put
//! `skv lab sniff`). Before each read it looks at the node's config, so once the student
//! turns TLS on, the application speaks TLS too (as a real deployment would be configured
//! to). It identifies with the lab's `app` certificate and token, and writes one log line
//! per change of outcome to DIR/logs/victim.log, never the value or the token.

use std::path::Path;
use std::time::Duration;

use skv_client::{exit, ClusterClient, ConnectOptions, Security};

use super::state::State;
use super::world;
use super::{Failure, Result};

pub(crate) fn run(dir: &Path) -> Result<u8> {
    let state = State::load(dir)?;
    let lab = super::registry::labs()
        .iter()
        .find(|l| l.number == state.lab)
        .ok_or_else(|| Failure::usage(format!("no lab {}", state.lab)))?;
    let Some(victim) = &lab.spec().world.victim else {
        return Err(Failure::usage(format!(
            "lab {:02} has no victim",
            lab.number
        )));
    };
    let addr = state.addr(&victim.dials)?.to_owned();
    // The token is read again before every request, as an application that picks up a
    // renewed token file would (lab 10 replaces it while the application runs).
    let read_token = || -> std::result::Result<Option<String>, String> {
        match &victim.token {
            Some(file) => std::fs::read_to_string(dir.join(file))
                .map(|t| Some(t.trim().to_owned()))
                .map_err(|e| format!("cannot read {file}: {e}")),
            None => Ok(None),
        }
    };
    let every = Duration::from_millis(victim.every_ms.unwrap_or(300).max(50));
    let rt = world::runtime()?;
    let mut last = String::new();
    // A writer goes on from the last write it logged (a restarted victim does not overwrite).
    let acked_log = dir.join("logs").join("victim-acked.log");
    let mut n: u64 =
        std::fs::read_to_string(&acked_log).map_or(0, |t| t.lines().count() as u64) + 1;
    loop {
        // The lab was wiped or reset under us: nothing left to do.
        if !State::path(dir).exists() {
            return Ok(exit::OK);
        }
        let outcome = match world::node_view(dir, &victim.node)
            .map_err(|e| e.message)
            .and_then(|view| read_token().map(|token| (view, token)))
        {
            Ok((view, token)) => {
                let security = if view.plaintext {
                    Security::Plaintext
                } else {
                    Security::Tls {
                        ca: world::ca_cert(dir),
                        identity: Some(world::own_identity(dir, world::APP)),
                    }
                };
                let mut opts = ConnectOptions::new(addr.clone(), security);
                opts.token = token;
                opts.connect_timeout = Duration::from_secs(2);
                opts.request_timeout = Duration::from_secs(2);
                let key = victim.key.clone().into_bytes();
                let tls = if view.plaintext { "plaintext" } else { "TLS" };
                if victim.writes {
                    let key = format!("{}{n}", victim.key);
                    let value = n.to_string();
                    match rt.block_on(async {
                        let client = ClusterClient::connect(opts, Vec::new()).await?;
                        client
                            .put(key.clone().into_bytes(), value.clone().into_bytes())
                            .await
                    }) {
                        Ok(_) => {
                            // Logged only once the cluster acknowledged it.
                            append(&acked_log, &format!("{key} {value}\n"))?;
                            n += 1;
                            format!("writing {}N over {tls} via {addr}: ok", victim.key)
                        }
                        Err(e) => format!("write {key} over {tls} via {addr} failed: {e}"),
                    }
                } else {
                    match rt.block_on(async {
                        let client = ClusterClient::connect(opts, Vec::new()).await?;
                        client.get(key).await
                    }) {
                        Ok(Some(_)) => format!("read {} over {tls} via {addr}: ok", victim.key),
                        Ok(None) => {
                            format!("read {} over {tls} via {addr}: no such key", victim.key)
                        }
                        Err(e) => format!("read {} over {tls} via {addr} failed: {e}", victim.key),
                    }
                }
            }
            Err(e) => format!("read {} failed: {e}", victim.key),
        };
        if outcome != last {
            outln!("{outcome}");
            last = outcome;
        }
        std::thread::sleep(every);
    }
}

fn append(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))
}
