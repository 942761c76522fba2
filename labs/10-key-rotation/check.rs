//! Lab 10 (key-rotation): the checker's rule.
//!
//! New key: the token in app.token is signed by another kid than the world's first key, and
//! the checker's replay of it (as the application) reads the application's key.
//! Old key retired: the checker's replay of a token of the first key, which the lab kept in
//! .lab/old.token and the student never needed, is refused because its kid is no longer in the
//! node's keyset (so the node reloaded the keyset after the retirement).
//! No downtime: the application, which read app/config every 200 ms throughout, never logged a
//! failed read since the world started, and still runs.

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const KEY: &str = "app/config";
const APP_TOKEN: &str = "app.token";
const OLD_TOKEN: &str = ".lab/old.token";

fn kid_of(text: &str) -> Option<String> {
    let token = skv_certs::issuer::inspect(text.trim()).ok()?;
    token.header.get("kid")?.as_str().map(str::to_owned)
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut new_key = Part::new("new key in use");
    let mut retired = Part::new("old key retired");
    let mut downtime = Part::new("no downtime");
    let old_kid = std::fs::read_to_string(ctx.path(OLD_TOKEN))
        .ok()
        .and_then(|t| kid_of(&t));
    let Some(old_kid) = old_kid else {
        new_key.miss(format!(
            "{OLD_TOKEN} (the lab's own copy of a first-key token) is gone: `skv lab reset 10`"
        ));
        return Report::of(vec![new_key, retired, downtime]);
    };
    if new_key.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![new_key, retired, downtime]);
    }
    let as_app = |token: String| Attempt {
        identity: Some(world::own_identity(&ctx.dir, world::APP)),
        token: Some(token),
        ..Attempt::default()
    };

    match ctx.artifact_text(APP_TOKEN, "the application's token") {
        Err(why) => new_key.miss(why),
        Ok(token) => match kid_of(&token) {
            None => new_key.miss(format!("{APP_TOKEN} does not hold a token")),
            Some(kid) if kid == old_kid => new_key.miss(format!(
                "{APP_TOKEN} is still signed by the first key (kid {old_kid}): issue the \
                 application a token with the new key and put it in {APP_TOKEN}"
            )),
            Some(kid) => {
                let outcome = ctx.attempt(NODE, &as_app(token), KEY);
                if outcome.value().is_some() {
                    new_key.note(format!(
                        "{APP_TOKEN} is signed by kid {kid} and the node serves it"
                    ));
                } else {
                    new_key.miss(format!(
                        "{APP_TOKEN} is signed by kid {kid}, but the node does not serve it ({}): \
                         is that kid in the node's keyset (issuer/keyset.json), and was it \
                         reloaded?",
                        outcome.describe()
                    ));
                }
            }
        },
    }

    let old = std::fs::read_to_string(ctx.path(OLD_TOKEN)).unwrap_or_default();
    let outcome = ctx.attempt(NODE, &as_app(old.trim().to_owned()), KEY);
    if outcome.value().is_some() {
        retired.miss(format!(
            "a token of the first key (kid {old_kid}) still works: retire that kid (`skv keys \
             retire --dir issuer --kid {old_kid}`) once nothing uses it, and let the node reload"
        ));
    } else if outcome.refused() {
        let why = ctx
            .wait_audit(NODE, 0, |l| {
                l["decision"] == "deny"
                    && l["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains(&old_kid) && r.contains("not in the keyset"))
            })
            .and_then(|l| l["reason"].as_str().map(str::to_owned));
        match why {
            Some(reason) => retired.note(format!(
                "the checker's token of the first key was refused; audit: {reason}"
            )),
            None => retired.miss(format!(
                "the first key's token was refused, but the audit log does not say its kid is \
                 unknown ({}); was the key retired, or is the keyset broken?",
                outcome.describe()
            )),
        }
    } else {
        retired.miss(format!(
            "the checker could not replay a token against the node: {}",
            outcome.describe()
        ));
    }

    let victim_running = ctx
        .state
        .procs
        .iter()
        .any(|p| p.name == "victim" && crate::lab::process::is_alive(p));
    let log = std::fs::read_to_string(ctx.path("logs/victim.log")).unwrap_or_default();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("failed")).collect();
    if !victim_running {
        downtime.miss(
            "the application is not running: `skv lab restart 10` starts it again (but the \
             lab is about keeping it served: `skv lab reset 10` starts over)",
        );
    }
    if let Some(first) = failures.first() {
        downtime.miss(format!(
            "the application saw {} failed read(s) (logs/victim.log), the first: {first}. \
             Each step must wait for what it needs: the node must know the new key before the \
             application uses it, and the application must use it before the old key is \
             retired. `skv lab reset 10` starts over",
            failures.len()
        ));
    } else if log.lines().any(|l| l.ends_with(": ok")) {
        downtime.note("the application read app/config throughout with no failed request");
    } else {
        downtime.miss("the application has not read anything yet (logs/victim.log)");
    }
    Report::of(vec![new_key, retired, downtime])
}
