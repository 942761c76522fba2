//! Lab 11 (audit-hunt): the world's traffic and the checker's rule.
//!
//! Setup (at start): four applications do their work, each with its own certificate and token
//! (allowed requests, audited); one of them makes one honest mistake (a single refusal from its
//! own certificate); and an attacker, holding one application's leaked bearer token, uses it
//! from another application's certificate to probe four keys or prefixes the token does not
//! grant (a GET, a PUT, a DELETE and a SCAN, so each is its own audit line). Who, from where and
//! what are drawn afresh at every start and recorded in the lab's facts.
//!
//! Check: answer.toml names the attacker's subject, their certificate (file stem, SPIFFE ID or
//! SHA-256) and exactly the keys they tried; and the audit log still shows those refusals (the
//! answer must agree with what the node recorded, not only with the lab's notes).

use rand::seq::SliceRandom;
use rand::Rng;
use skv_client::ClusterClient;

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const ANSWER: &str = "answer.toml";
/// The applications: certificate stem (also the token's subject) and the prefix it owns.
const APPS: [(&str, &str); 4] = [
    ("billing", "billing/"),
    ("ci-runner", "builds/"),
    ("backup", "backup/"),
    ("reporting", "reports/"),
];
/// What an attacker goes for.
const TARGETS: [&str; 8] = [
    "secret/root-password",
    "secret/api-keys",
    "billing/cards",
    "builds/deploy-key",
    "backup/full.tar",
    "reports/salaries",
    "admin/users",
    "backup/index",
];
const SCAN_TARGETS: [&str; 4] = ["secret/", "billing/", "backup/", "admin/"];

fn token_of(ctx: &Ctx, app: &str) -> Result<String, String> {
    std::fs::read_to_string(ctx.path(&format!(".lab/tokens/{app}.token")))
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("cannot read {app}'s token: {e}"))
}

fn client(ctx: &Ctx, cert: &str, token: String) -> Result<ClusterClient, String> {
    let (c, k) = world::student_identity(&ctx.dir, cert);
    let opts = ctx.attempt_options(
        NODE,
        &Attempt {
            identity: Some((c, k)),
            token: Some(token),
            ..Attempt::default()
        },
    )?;
    ctx.block_on(ClusterClient::connect(opts, Vec::new()))
        .map_err(|e| format!("{cert} cannot connect: {e}"))
}

/// The world's traffic, the attacker's among it.
pub(crate) fn setup(ctx: &mut Ctx) -> Result<(), String> {
    let mut rng = rand::thread_rng();
    let mut apps: Vec<(&str, &str)> = APPS.to_vec();
    apps.shuffle(&mut rng);
    // The attacker's token is apps[0]'s, used from apps[1]'s certificate; apps[2] errs once.
    let (sub, sub_prefix) = apps[0];
    let (cert, _) = apps[1];
    let (mistaken, _) = apps[2];
    let mut keys: Vec<&str> = TARGETS
        .iter()
        .copied()
        .filter(|k| !k.starts_with(sub_prefix))
        .collect();
    keys.shuffle(&mut rng);
    let scan = *SCAN_TARGETS
        .iter()
        .filter(|p| **p != sub_prefix)
        .collect::<Vec<_>>()
        .choose(&mut rng)
        .ok_or("no scan target")?;
    let (get_key, put_key, delete_key) = (keys[0], keys[1], keys[2]);

    let mut owners = Vec::new();
    for (app, _) in APPS {
        owners.push((app, client(ctx, app, token_of(ctx, app)?)?));
    }
    let attacker = client(ctx, cert, token_of(ctx, sub)?)?;
    let routine = |ctx: &Ctx, rounds: usize| -> Result<(), String> {
        for _ in 0..rounds {
            for ((app, prefix), (_, c)) in APPS.iter().zip(&owners) {
                let key = format!("{prefix}item-{}", rand::thread_rng().gen_range(1..50));
                ctx.block_on(async {
                    if *app == "billing" || *app == "ci-runner" {
                        c.put(key.clone().into_bytes(), b"routine".to_vec()).await?;
                    }
                    c.get(key.into_bytes()).await
                })
                .map_err(|e| format!("{app}'s routine request failed: {e}"))?;
            }
        }
        Ok(())
    };
    let denied = |r: Result<(), skv_client::ClientError>| match r {
        Err(skv_client::ClientError::Refused(_)) => Ok(()),
        Err(e) => Err(format!("an attack request failed unexpectedly: {e}")),
        Ok(()) => Err("an attack request was allowed".to_owned()),
    };
    routine(ctx, 2)?;
    denied(
        ctx.block_on(attacker.get(get_key.as_bytes().to_vec()))
            .map(|_| ()),
    )?;
    routine(ctx, 1)?;
    // The honest mistake: one read of a neighbour's key, from its own certificate.
    let neighbour = APPS
        .iter()
        .find(|(a, _)| *a != mistaken)
        .map_or("reports/", |(_, p)| p);
    let mistake = owners
        .iter()
        .find(|(a, _)| *a == mistaken)
        .map(|(_, c)| c)
        .ok_or("no such app")?;
    denied(
        ctx.block_on(mistake.get(format!("{neighbour}summary").into_bytes()))
            .map(|_| ()),
    )?;
    denied(
        ctx.block_on(attacker.put(put_key.as_bytes().to_vec(), b"pwned".to_vec()))
            .map(|_| ()),
    )?;
    routine(ctx, 1)?;
    denied(
        ctx.block_on(attacker.scan(scan.as_bytes().to_vec(), 100, None))
            .map(|_| ()),
    )?;
    routine(ctx, 1)?;
    denied(
        ctx.block_on(attacker.delete(delete_key.as_bytes().to_vec()))
            .map(|_| ()),
    )?;
    routine(ctx, 2)?;

    let mut tried = [get_key, put_key, delete_key, scan];
    tried.sort_unstable();
    let facts = &mut ctx.state.facts;
    facts.insert("attacker.sub".into(), sub.into());
    facts.insert("attacker.cert".into(), cert.into());
    facts.insert("attacker.tried".into(), tried.join("\n"));
    Ok(())
}

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut part = Part::new("name the attacker");
    let (Some(sub), Some(cert), Some(tried)) = (
        ctx.fact("attacker.sub"),
        ctx.fact("attacker.cert"),
        ctx.fact("attacker.tried"),
    ) else {
        part.miss("the lab's world has no attacker on record: `skv lab reset 11`");
        return Report::of(vec![part]);
    };
    let tried: Vec<&str> = tried.lines().collect();
    let fingerprint = ctx.fingerprint(cert).unwrap_or_default();

    // The node's own record must still show the attack: the answer is judged against it.
    let audit = ctx.audit(NODE);
    let recorded = tried.iter().all(|k| {
        audit.iter().any(|l| {
            l["decision"] == "deny"
                && l["sub"] == sub
                && l["peer"] == fingerprint.as_str()
                && l["key"] == *k
        })
    });
    if !recorded {
        part.miss(
            "logs/db-audit.log no longer shows the attack (was it edited or removed?): `skv lab \
             reset 11` replays the world's traffic",
        );
        return Report::of(vec![part]);
    }

    let table = match ctx
        .artifact_text(
            ANSWER,
            "sub = \"...\", cert = \"...\" and tried = [\"...\"]",
        )
        .and_then(|t| {
            toml::from_str::<toml::Table>(&t).map_err(|e| format!("{ANSWER} is not TOML: {e}"))
        }) {
        Ok(t) => t,
        Err(why) => {
            part.miss(why);
            return Report::of(vec![part]);
        }
    };
    let text = |name: &str| table.get(name).and_then(toml::Value::as_str);

    match text("sub") {
        None => part.miss(format!(
            "{ANSWER} has no sub = \"...\" (the token subject the attacker used)"
        )),
        Some(s) if s == sub => part.note(format!("sub: {sub}, right")),
        Some(s) if s == cert => part.miss(format!(
            "sub: {s:?} is the owner of the certificate the attacker used, not the subject of the \
             token they sent: the audit line's `sub` comes from the token"
        )),
        Some(s) => part.miss(format!(
            "sub: {s:?} is not the subject the attacker's token carried"
        )),
    }
    match text("cert") {
        None => part.miss(format!(
            "{ANSWER} has no cert = \"...\" (the certificate: file stem in pki/clients, SPIFFE ID, \
             or the audit log's peer)"
        )),
        Some(c) => {
            let c = c.trim();
            let hex: String = c
                .chars()
                .filter(|ch| *ch != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            let spiffe = format!("spiffe://{}/client/{cert}", world::CLUSTER);
            if c == cert || c == spiffe || hex == fingerprint {
                part.note(format!("cert: {cert} ({spiffe}), right"));
            } else if c == sub || c.ends_with(&format!("/client/{sub}")) {
                part.miss(format!(
                    "cert: {c:?} is the certificate of the token's owner; the attacker sent that \
                     token from another certificate (a bearer token works from any): read the \
                     `peer` of the attacker's audit lines"
                ));
            } else {
                part.miss(format!(
                    "cert: {c:?} is not the certificate the attacker used (give its file stem in \
                     pki/clients, its SPIFFE ID, or its SHA-256 as the audit log's `peer` shows it)"
                ));
            }
        }
    }
    let given: Option<Vec<String>> = table.get("tried").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    });
    match given {
        None => part.miss(format!(
            "{ANSWER} has no tried = [\"...\", ...] (every key or scan prefix the attacker was \
             refused)"
        )),
        Some(mut given) => {
            given.sort();
            given.dedup();
            let right = given.iter().filter(|g| tried.contains(&g.as_str())).count();
            let wrong = given.len() - right;
            if right == tried.len() && wrong == 0 {
                part.note(format!("tried: {}, right", tried.join(", ")));
            } else {
                part.miss(format!(
                    "tried: {right} of the attacker's {} attempts named{}; list every key and scan \
                     prefix of their refused requests",
                    tried.len(),
                    if wrong > 0 {
                        format!(", and {wrong} that are not theirs")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    Report::of(vec![part])
}
