//! Lab 08 (expired-token): the checker's rule.
//!
//! Break it: answer.txt holds the flag, and the audit log shows an allowed read of
//! secret/flag with the recently expired token (its jti), which only a long leeway allows.
//! When the answer is missing and the audit log shows the ancient token refused, the
//! explanation says so (the near-miss: a token expired beyond the leeway).
//! Fix it: the node's leeway is back to at most 30 s, the audit log shows the student's own
//! replay refused as expired under that leeway, and the checker's replay is refused as expired.

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const KEY: &str = "secret/flag";
const RECENT: &str = "loot/mallory-recent.token";
const STUDENT: &str = "mallory";
/// The most leeway the fix may leave: clock skew is seconds, not minutes.
const MAX_LEEWAY: i64 = 30;

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut break_it = Part::new("break it");
    let mut fix_it = Part::new("fix it");
    let fingerprint = ctx.fingerprint(STUDENT).unwrap_or_default();
    let expired = |l: &serde_json::Value| {
        l["decision"] == "deny"
            && l["peer"] == fingerprint.as_str()
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("expired at"))
    };
    match ctx.answer_is_flag("answer.txt") {
        Ok(()) => {
            let jti = ctx.token_jti(RECENT);
            let used = ctx.wait_audit(NODE, 0, |l| {
                l["decision"] == "allow"
                    && l["key"] == KEY
                    && jti.as_deref().is_some_and(|j| l["jti"] == j)
            });
            match used {
                Some(line) => break_it.note(format!(
                    "audit: {KEY} read at {} with a token that expired {} s before the lab started",
                    line["time"].as_str().unwrap_or("?"),
                    ctx.fact(&format!("token.{RECENT}.exp"))
                        .and_then(|e| e.parse::<i64>().ok())
                        .map_or(0, |e| i64::try_from(ctx.state.started_at).unwrap_or(0) - e)
                )),
                None => break_it.miss(format!(
                    "the audit log shows no read of {KEY} with {RECENT}: the flag must come from \
                     reading it with the expired token"
                )),
            }
        }
        Err(why) => {
            let refused = ctx.wait_audit(NODE, 0, expired);
            match refused {
                Some(line) => break_it.miss(format!(
                    "{why}; the node refused a token of yours: \"{}\": that one expired beyond \
                     the node's leeway, try the other",
                    line["reason"].as_str().unwrap_or_default()
                )),
                None => break_it.miss(why),
            }
        }
    }

    if fix_it.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![break_it, fix_it]);
    }
    match ctx.node_config(NODE) {
        Ok(table) => {
            let leeway = table
                .get("leeway_secs")
                .and_then(toml::Value::as_integer)
                .unwrap_or(5);
            if leeway > MAX_LEEWAY {
                fix_it.miss(format!(
                    "nodes/{NODE}.toml still allows {leeway} s of leeway: delete leeway_secs (the \
                     default is 5 s) and `skv lab restart 8`"
                ));
            }
        }
        Err(e) => fix_it.miss(e),
    }
    // The evidence is the student's own replay in the audit log, refused under the fixed
    // leeway (the ancient token was refused by the weak node too, and that is not the fix at
    // work). The checker's replay then confirms the node refuses this token; its own audit
    // line is not waited for (a repeat of the same refusal within a second is only written,
    // aggregated, after that second).
    // Only the student's lines: an earlier check's replay is refused the same way.
    let own = ctx.own_audit(NODE, |l| {
        expired(l) && leeway_of(l).is_some_and(|s| s <= MAX_LEEWAY)
    });
    let token = std::fs::read_to_string(ctx.path(RECENT)).unwrap_or_default();
    let (cert, key) = world::student_identity(&ctx.dir, STUDENT);
    let replay = ctx.attempt(
        NODE,
        &Attempt {
            identity: Some((cert, key)),
            token: Some(token.trim().to_owned()),
            ..Attempt::default()
        },
        KEY,
    );
    if replay.value().is_some() {
        fix_it.miss(format!(
            "the running node still accepts {RECENT}: after editing the config, `skv lab restart 8`"
        ));
        return Report::of(vec![break_it, fix_it]);
    }
    if replay.refused() && replay.describe().contains("expired") {
        fix_it.note(format!("the checker's replay was {}", replay.describe()));
    } else {
        fix_it.miss(format!(
            "the replay of {RECENT} was refused, but not as expired ({})",
            replay.describe()
        ));
    }
    match own {
        Some(line) => fix_it.note(format!(
            "audit: your replay was refused: {}",
            line["reason"].as_str().unwrap_or_default()
        )),
        None => fix_it.miss(format!(
            "the audit log shows no expired token of yours refused under a short leeway yet: \
             replay {RECENT} against the fixed node yourself"
        )),
    }
    Report::of(vec![break_it, fix_it])
}

/// The leeway an "expired at E, now N (leeway Ls)" audit reason was decided under.
fn leeway_of(line: &serde_json::Value) -> Option<i64> {
    let reason = line["reason"].as_str()?;
    let (_, rest) = reason.rsplit_once("(leeway ")?;
    rest.strip_suffix("s)")?.parse().ok()
}
