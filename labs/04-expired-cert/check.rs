//! Lab 04 (expired-cert): the checker's rule.
//!
//! Try it: the node's log shows a handshake refused for an expired certificate (the
//! student's own attempt), and the checker's replay of pki/clients/alice-old.pem fails at
//! the handshake.
//! Explain it: expired-at.txt holds the certificate's notAfter in Unix seconds, which the
//! world drew at random at start (so it must be read from the certificate or the node's log).

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const KEY: &str = "secret/flag";
const STEM: &str = "alice-old";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut tried = Part::new("try it");
    let mut explained = Part::new("explain it");
    if tried.require(ctx.require_running(NODE)).is_some() {
        let expired = ctx
            .node_log_all(NODE)
            .lines()
            .filter(|l| l.contains("TLS handshake failed") && l.contains("certificate expired"))
            .count();
        if expired == 0 {
            tried.miss(format!(
                "logs/{NODE}.log shows no handshake refused for an expired certificate yet: \
                 present pki/clients/{STEM}.pem (with its key) to the node yourself"
            ));
        } else {
            tried.note(format!(
                "logs/{NODE}.log: {expired} refusal(s) of an expired certificate"
            ));
        }
        let (cert, key) = world::student_identity(&ctx.dir, STEM);
        let replay = ctx.attempt(
            NODE,
            &Attempt {
                identity: Some((cert, key)),
                ..Attempt::default()
            },
            KEY,
        );
        if replay.value().is_some() {
            tried.miss("the node ACCEPTED the expired certificate: that must never happen");
        } else if replay.handshake_failed() {
            tried.note(format!(
                "the checker's replay failed at the handshake: {}",
                replay.describe()
            ));
        } else {
            tried.miss(format!(
                "the checker's replay failed, but not at the handshake: {}",
                replay.describe()
            ));
        }
    }

    let Some(not_after) = ctx
        .fact(&format!("cert.{STEM}.not_after"))
        .and_then(|s| s.parse::<i64>().ok())
    else {
        explained.miss("the lab's state has no expiry for the certificate: `skv lab reset 4`");
        return Report::of(vec![tried, explained]);
    };
    if let Some(text) = explained.require(ctx.artifact_text(
        "expired-at.txt",
        "the certificate's notAfter in Unix seconds",
    )) {
        match text.parse::<i64>() {
            Ok(t) if t == not_after => explained.note(format!(
                "the certificate expired at {t}, {} h before the lab started",
                (i64::try_from(ctx.state.started_at).unwrap_or(0) - t) / 3600
            )),
            // The other number in the node's log line: the node's own clock at the check.
            Ok(t) if t > not_after && t >= i64::try_from(ctx.state.started_at).unwrap_or(0) => {
                explained.miss(format!(
                    "expired-at.txt says {t}: that is around when the node checked (its own \
                     clock), not when the certificate expired"
                ))
            }
            Ok(t) => explained.miss(format!(
                "expired-at.txt says {t}, which is not the certificate's notAfter ({} s off)",
                (t - not_after).abs()
            )),
            Err(_) => explained.miss(format!(
                "expired-at.txt holds {text:?}; write the notAfter as a whole number of Unix \
                 seconds"
            )),
        }
    }
    Report::of(vec![tried, explained])
}
