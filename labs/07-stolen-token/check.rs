//! Lab 07 (stolen-token): the checker's rule.
//!
//! Break it: answer.txt holds the flag, and the audit log shows an allowed read of alice/flag
//! by sub alice with the token from loot/ (its jti) over mallory's certificate.
//! Fix it: the node's config requires bound tokens, the audit log shows the student's own
//! replay refused for binding, the checker's replay of alice's token from mallory's
//! certificate is refused as unbound, and mallory's own bound token still works.

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const KEY: &str = "alice/flag";
const STOLEN: &str = "loot/alice.token";
const STUDENT: &str = "mallory";
const BINDING: &str = "this node requires binding";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut break_it = Part::new("break it");
    let mut fix_it = Part::new("fix it");
    let fingerprint = match ctx.fingerprint(STUDENT) {
        Ok(f) => f,
        Err(e) => {
            break_it.miss(e);
            return Report::of(vec![break_it, fix_it]);
        }
    };
    if break_it.require(ctx.answer_is_flag("answer.txt")).is_some() {
        let jti = ctx.token_jti(STOLEN);
        let theft = ctx.wait_audit(NODE, 0, |l| {
            l["decision"] == "allow"
                && l["sub"] == "alice"
                && l["key"] == KEY
                && l["peer"] == fingerprint.as_str()
                && jti.as_deref().is_some_and(|j| l["jti"] == j)
        });
        match theft {
            Some(line) => break_it.note(format!(
                "audit: sub alice read {KEY} at {} from mallory's certificate ({}...)",
                line["time"].as_str().unwrap_or("?"),
                &fingerprint[..12]
            )),
            None => break_it.miss(format!(
                "the audit log shows no read of {KEY} with alice's token from your certificate: \
                 the flag must come from that read"
            )),
        }
    }

    if fix_it.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![break_it, fix_it]);
    }
    let required = ctx
        .node_config(NODE)
        .map(|t| t.get("require_bound_tokens").and_then(toml::Value::as_bool) == Some(true));
    match required {
        Ok(true) => {}
        Ok(false) => fix_it.miss(format!(
            "nodes/{NODE}.toml does not say require_bound_tokens = true: add it and `skv lab \
             restart 7`"
        )),
        Err(e) => fix_it.miss(e),
    }
    let refused_binding = |l: &serde_json::Value| {
        l["decision"] == "deny"
            && l["peer"] == fingerprint.as_str()
            && l["reason"].as_str().is_some_and(|r| r.contains(BINDING))
    };
    // The evidence is the student's own replay in the audit log (not an earlier check's,
    // which is refused the same way: own_audit leaves those out). The checker's replay then
    // confirms the node refuses this token; its own audit line is not waited for (a repeat
    // of the same refusal within a second is only written, aggregated, after that second).
    let own = ctx.own_audit(NODE, refused_binding);
    let Ok(stolen) = std::fs::read_to_string(ctx.path(STOLEN)) else {
        fix_it.miss(format!(
            "{STOLEN} is gone: `skv lab reset 7` hands it out again"
        ));
        return Report::of(vec![break_it, fix_it]);
    };
    let (cert, key) = world::student_identity(&ctx.dir, STUDENT);
    let as_mallory = |token: String| Attempt {
        identity: Some((cert.clone(), key.clone())),
        token: Some(token),
        ..Attempt::default()
    };
    let replay = ctx.attempt(NODE, &as_mallory(stolen.trim().to_owned()), KEY);
    if replay.value().is_some() {
        fix_it.miss(
            "the running node still accepts alice's token from your certificate: after editing \
             the config, `skv lab restart 7`",
        );
        return Report::of(vec![break_it, fix_it]);
    }
    if replay.refused() && replay.describe().contains("not bound") {
        fix_it.note(format!("the checker's replay was {}", replay.describe()));
    } else {
        fix_it.miss(format!(
            "the replay of alice's token was refused, but not for its missing binding ({})",
            replay.describe()
        ));
    }
    match own {
        Some(line) => fix_it.note(format!(
            "audit: your replay was refused: {}",
            line["reason"].as_str().unwrap_or_default()
        )),
        None => fix_it.miss(
            "the audit log shows no refusal of your own replay yet: replay alice's token \
             against the fixed node yourself",
        ),
    }
    let own_token = std::fs::read_to_string(ctx.path("mallory.token")).unwrap_or_default();
    match ctx
        .attempt(
            NODE,
            &as_mallory(own_token.trim().to_owned()),
            "mallory/notes",
        )
        .value()
    {
        Some(_) => fix_it.note("mallory's own bound token still works"),
        None => fix_it.miss(
            "mallory's own bound token no longer works: the fix must not lock out bound clients",
        ),
    }
    Report::of(vec![break_it, fix_it])
}
