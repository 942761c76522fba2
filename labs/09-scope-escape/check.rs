//! Lab 09 (scope-escape): the checker's rule.
//!
//! Write outside: escape.toml names `write_key`, a key the grant `a/` does not cover; the audit
//! log shows the student's own PUT of it refused (their certificate, their token's subject),
//! and the checker's replay of that PUT with the student's token and certificate is refused.
//! Scan outside: likewise for `scan_prefix`, a prefix whose scan could return keys outside
//! `a/`; the checker's replay of the scan is refused as a whole. Both parts also confirm that
//! the same token still writes and scans inside `a/` (the grant works, it is not just broken).

use crate::lab::check::{Attempt, Ctx, Op, Outcome, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const STUDENT: &str = "tenant-a";
const TOKEN: &str = "a.token";
const GRANT: &str = "a/";
const ANSWER: &str = "escape.toml";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut write = Part::new("write outside");
    let mut scan = Part::new("scan outside");
    let answer = match ctx
        .artifact_text(ANSWER, "write_key = \"...\" and scan_prefix = \"...\"")
        .and_then(|t| {
            toml::from_str::<toml::Table>(&t).map_err(|e| format!("{ANSWER} is not TOML: {e}"))
        }) {
        Ok(table) => table,
        Err(why) => {
            write.miss(why.clone());
            scan.miss(why);
            return Report::of(vec![write, scan]);
        }
    };
    let token = match std::fs::read_to_string(ctx.path(TOKEN)) {
        Ok(t) => t.trim().to_owned(),
        Err(_) => {
            write.miss(format!(
                "{TOKEN} is gone: `skv lab reset 9` hands it out again"
            ));
            return Report::of(vec![write, scan]);
        }
    };
    let fingerprint = ctx.fingerprint(STUDENT).unwrap_or_default();
    let (cert, key) = world::student_identity(&ctx.dir, STUDENT);
    let attempt = Attempt {
        identity: Some((cert, key)),
        token: Some(token),
        ..Attempt::default()
    };
    if write.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![write, scan]);
    }
    let field = |part: &mut Part, name: &str| -> Option<String> {
        match answer.get(name).and_then(toml::Value::as_str) {
            Some(v) => Some(v.to_owned()),
            None => {
                part.miss(format!(
                    "{ANSWER} has no {name} = \"...\" (a string: the {} you tried)",
                    if name == "write_key" {
                        "key of the refused write"
                    } else {
                        "prefix of the refused scan"
                    }
                ));
                None
            }
        }
    };

    if let Some(k) = field(&mut write, "write_key") {
        judge(
            ctx,
            &mut write,
            &attempt,
            &fingerprint,
            "put",
            &k,
            Op::Put(&k, b"escape attempt"),
        );
        let inside = format!("{GRANT}checker-probe");
        confirm_inside(
            ctx,
            &mut write,
            &attempt,
            Op::Put(&inside, b"inside the grant"),
        );
    }
    if let Some(p) = field(&mut scan, "scan_prefix") {
        judge(
            ctx,
            &mut scan,
            &attempt,
            &fingerprint,
            "scan",
            &p,
            Op::Scan(&p),
        );
        confirm_inside(ctx, &mut scan, &attempt, Op::Scan(GRANT));
    }
    Report::of(vec![write, scan])
}

/// The attempt `op` (audited as `audit_op` on `target`) must leave the grant, have been
/// refused for the student, and be refused again when the checker replays it.
fn judge(
    ctx: &Ctx,
    part: &mut Part,
    attempt: &Attempt,
    fingerprint: &str,
    audit_op: &str,
    target: &str,
    op: Op<'_>,
) {
    if target.starts_with(GRANT) {
        part.miss(format!(
            "{target:?} starts with {GRANT}, so your grant covers it: a grant is a byte prefix \
             of the key, and keys are bytes, not paths ({:?} is just a key that begins with \
             {GRANT}). Try something that does not begin with {GRANT}",
            target
        ));
        return;
    }
    // The student's own attempt, before the checker adds its replay to the log.
    let own = ctx.own_audit(NODE, |l| {
        l["decision"] == "deny"
            && l["op"] == audit_op
            && l["peer"] == fingerprint
            && l["key"] == target
    });
    match own {
        Some(line) => part.note(format!(
            "audit: your {audit_op} of {target:?} was refused: {}",
            line["reason"].as_str().unwrap_or_default()
        )),
        None => {
            let allowed = ctx.audit(NODE).into_iter().any(|l| {
                l["decision"] == "allow"
                    && l["op"] == audit_op
                    && l["peer"] == fingerprint
                    && l["key"] == target
            });
            part.miss(if allowed {
                format!(
                    "the audit log shows your {audit_op} of {target:?} ALLOWED, not refused: \
                     that cannot be, tell the maintainers"
                )
            } else {
                format!(
                    "the audit log shows no {audit_op} of {target:?} from your certificate: \
                     try it yourself with your token (`skv ... --token-file {TOKEN} {audit_op} \
                     {target}`), then check again"
                )
            });
        }
    }
    match ctx.replay(NODE, attempt, op) {
        Outcome::Error(e @ skv_client::ClientError::Refused(_)) => {
            part.note(format!("the checker's replay was refused: {e}"));
        }
        other => part.miss(format!(
            "the checker's replay of your {audit_op} of {target:?} was not refused: {}",
            other.describe()
        )),
    }
}

fn confirm_inside(ctx: &Ctx, part: &mut Part, attempt: &Attempt, op: Op<'_>) {
    let outcome = ctx.replay(NODE, attempt, op);
    if outcome.allowed() {
        part.note(format!(
            "inside {GRANT} the same token still works ({})",
            outcome.describe()
        ));
    } else {
        part.miss(format!(
            "your token no longer works inside {GRANT} either ({}): the refusal must come from \
             the scope, not from a broken token or node",
            outcome.describe()
        ));
    }
}
