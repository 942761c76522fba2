//! Lab 02 (no-client-auth): the checker's rule.
//!
//! Break it: answer.txt holds this world's flag, which only a read of the node gives (the
//! student has no certificate and no token).
//! Fix it: the node's config requires client certificates, the node's log shows the
//! student's own attempt refused at the handshake since the restart, and the checker's own
//! attempt without a certificate fails at the handshake while the lab's client (with a
//! certificate) is still served.

use crate::lab::check::{Attempt, Ctx, Part, Report};

const NODE: &str = "db";
const KEY: &str = "secret/flag";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut break_it = Part::new("break it");
    if break_it.require(ctx.answer_is_flag("answer.txt")).is_some() {
        break_it.note("answer.txt holds the flag: the node served a client it never identified");
    }

    let mut fix_it = Part::new("fix it");
    if fix_it.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![break_it, fix_it]);
    }
    match ctx.view(NODE) {
        Ok(view) if !view.client_auth => fix_it.miss(format!(
            "nodes/{NODE}.toml still makes client certificates optional \
             (insecure_no_client_auth = true): delete that line and `skv lab restart 2`"
        )),
        Ok(_) => {}
        Err(e) => fix_it.miss(e),
    }
    // The student's own attempt, before the checker adds one of its own to the log.
    let refusals = ctx
        .node_log(NODE)
        .lines()
        .filter(|l| l.contains("TLS handshake failed") && l.contains("no certificates"))
        .count();
    let anonymous = ctx.attempt(NODE, &Attempt::default(), KEY);
    if anonymous.value().is_some() {
        fix_it.miss(
            "the running node still serves a client without a certificate: after editing the \
             config, restart it with `skv lab restart 2`",
        );
    } else if anonymous.handshake_failed() {
        fix_it.note(format!(
            "a connection without a client certificate fails at the handshake ({})",
            anonymous.describe()
        ));
        if refusals == 0 {
            fix_it.miss(
                "the node's log shows no refused handshake since the restart: run your attack \
                 (the same skv command) against the fixed node yourself",
            );
        } else {
            fix_it.note(format!(
                "logs/{NODE}.log: {refusals} refused handshake(s) since the restart"
            ));
        }
        match ctx.admin_get(NODE, KEY).value() {
            Some(_) => fix_it.note("a client with a certificate is still served"),
            None => fix_it.miss(format!(
                "the node no longer serves clients with a valid certificate either; see \
                 logs/{NODE}.log"
            )),
        }
    } else {
        fix_it.miss(format!(
            "the checker's attempt without a certificate failed, but not at the handshake \
             ({}); see logs/{NODE}.log",
            anonymous.describe()
        ));
    }
    Report::of(vec![break_it, fix_it])
}
