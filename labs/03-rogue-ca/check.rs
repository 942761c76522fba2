//! Lab 03 (rogue-ca): the checker's rule.
//!
//! Forge it: rogue/clients/alice.pem parses, carries exactly spiffe://skv/client/alice, and is
//! not signed by the lab's CA (whose key the student never had).
//! See it refused: the node's log shows a handshake refused for an unknown issuer, and the
//! checker's own replay of that certificate (with its key) fails at the handshake.

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::world;

const NODE: &str = "db";
const KEY: &str = "secret/flag";
const CERT: &str = "rogue/clients/alice.pem";
const CERT_KEY: &str = "rogue/clients/alice-key.pem";
const WANT: &str = "spiffe://skv/client/alice";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut forge = Part::new("forge it");
    let mut refused = Part::new("see it refused");
    if let Some(pem) = forge.require(ctx.artifact(CERT, "your rogue certificate (PEM)")) {
        match inspect(ctx, &pem) {
            Ok(note) => forge.note(note),
            Err(why) => forge.miss(why),
        }
    }
    if !ctx.path(CERT_KEY).is_file() {
        forge.miss(format!(
            "there is no {CERT_KEY}: a certificate is only usable with its private key"
        ));
    }
    if !forge.solved() {
        refused.miss("make the certificate first (see \"forge it\")");
        return Report::of(vec![forge, refused]);
    }
    if refused.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![forge, refused]);
    }
    let log = ctx.node_log(NODE);
    let unknown: Vec<&str> = log
        .lines()
        .filter(|l| {
            // A rogue CA with another name is UnknownIssuer; one that copies the real CA's
            // name (as `skv certs init --cluster skv` does) is found by name and fails its
            // signature check: BadSignature.
            l.contains("TLS handshake failed")
                && (l.contains("UnknownIssuer") || l.contains("BadSignature"))
        })
        .collect();
    if unknown.is_empty() {
        refused.miss(format!(
            "logs/{NODE}.log shows no handshake refused for a certificate of another CA yet: present your \
             certificate to the node yourself (skv --cert {CERT} --key {CERT_KEY} ...)"
        ));
    } else {
        refused.note(format!(
            "logs/{NODE}.log: {} handshake(s) refused for a certificate of another CA ({})",
            unknown.len(),
            if unknown.iter().any(|l| l.contains("BadSignature")) {
                "BadSignature: your CA even copied the real CA's name"
            } else {
                "UnknownIssuer"
            }
        ));
    }
    let replay = ctx.attempt(
        NODE,
        &Attempt {
            identity: Some((ctx.path(CERT), ctx.path(CERT_KEY))),
            ..Attempt::default()
        },
        KEY,
    );
    if replay.value().is_some() {
        refused.miss("the node ACCEPTED the rogue certificate: that must never happen");
    } else if replay.handshake_failed() {
        refused.note(format!(
            "the checker's replay failed at the handshake: {}",
            replay.describe()
        ));
    } else {
        refused.miss(format!(
            "the checker's replay failed, but not at the handshake ({}); does the key match \
             the certificate?",
            replay.describe()
        ));
    }
    Report::of(vec![forge, refused])
}

/// What the certificate is, or why it is not what the lab asks for.
fn inspect(ctx: &Ctx, pem: &[u8]) -> Result<String, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("{CERT} is not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("{CERT} does not parse as X.509: {e}"))?;
    let uris: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if !uris.iter().any(|u| u == WANT) {
        return Err(format!(
            "{CERT} carries {}; an impersonation must carry exactly {WANT} (cluster `skv`, \
             client `alice`)",
            if uris.is_empty() {
                "no URI name".to_owned()
            } else {
                uris.join(", ")
            }
        ));
    }
    let ca_pem =
        std::fs::read(world::ca_cert(&ctx.dir)).map_err(|e| format!("the lab's CA: {e}"))?;
    let (_, ca_pem) =
        x509_parser::pem::parse_x509_pem(&ca_pem).map_err(|e| format!("the lab's CA: {e}"))?;
    let ca = ca_pem
        .parse_x509()
        .map_err(|e| format!("the lab's CA: {e}"))?;
    if cert.verify_signature(Some(ca.public_key())).is_ok() {
        return Err(format!(
            "{CERT} is signed by the lab's own CA, not by a rogue one: make your own CA \
             (skv certs init --dir rogue ...)"
        ));
    }
    Ok(format!(
        "{CERT} carries {WANT}, issued by \"{}\", a CA the node does not trust",
        cert.issuer()
    ))
}
