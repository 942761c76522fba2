//! Lab 12 (node-impersonation): the checker's rule.
//!
//! Client as a node: the audit log shows the student's own CONTROL propose_map and RAFT vote
//! refused for ops's client certificate (with ops's admin token), and the checker's replays of
//! both with that certificate and token are refused `forbidden`.
//! Node as a client: the audit log shows a data request refused for the stolen node
//! certificate (loot/db.pem), and the checker's replay of a GET with it is refused.

use skv_client::ClientError;

use crate::lab::check::{Attempt, Ctx, Part, Report};
use crate::lab::peer::{self, PeerRequest};
use crate::lab::world;

const NODE: &str = "db";
const STUDENT: &str = "ops";
const STOLEN: &str = "db";
const KEY: &str = "secret/flag";

pub(crate) fn check(ctx: &Ctx) -> Report {
    let mut as_node = Part::new("client as a node");
    let mut as_client = Part::new("node as a client");
    if as_node.require(ctx.require_running(NODE)).is_none() {
        return Report::of(vec![as_node, as_client]);
    }
    let token = std::fs::read_to_string(ctx.path("ops.token"))
        .map(|t| t.trim().to_owned())
        .ok();
    let ops_fp = ctx.fingerprint(STUDENT).unwrap_or_default();
    let (ops_cert, ops_key) = world::student_identity(&ctx.dir, STUDENT);
    let ops = Attempt {
        identity: Some((ops_cert, ops_key)),
        token: token.clone(),
        ..Attempt::default()
    };
    for (op, request, how) in [
        ("propose_map", PeerRequest::ProposeMap, "propose-map"),
        ("raft", PeerRequest::RaftVote, "raft-vote"),
    ] {
        let own = ctx.own_audit(NODE, |l| {
            l["decision"] == "deny"
                && l["op"] == op
                && l["peer"] == ops_fp.as_str()
                && l["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("peer protocol"))
        });
        match own {
            Some(line) => as_node.note(format!(
                "audit: your {op} from ops's certificate was refused: {}",
                line["reason"].as_str().unwrap_or_default()
            )),
            None => as_node.miss(format!(
                "the audit log shows no {op} of yours refused for ops's certificate: send it \
                 (`skv lab peer-call --addr $DB_ADDR --ca pki/ca.pem --cert pki/clients/ops.pem \
                 --key pki/clients/ops-key.pem --token-file ops.token {how}`)"
            )),
        }
        let replay = match ctx.attempt_options(NODE, &ops) {
            Ok(opts) => ctx.block_on(peer::send(&opts, request)),
            Err(e) => Err(ClientError::Config(e)),
        };
        match replay {
            Err(ClientError::Refused(w)) if w.code == skv_proto::ErrorCode::Forbidden => {
                as_node.note(format!("the checker's {op} was refused: {}", w.message));
            }
            other => as_node.miss(format!(
                "the checker's {op} from ops's certificate was not refused as forbidden: {other:?}"
            )),
        }
    }

    let (stolen_cert, stolen_key) = world::loot_identity(&ctx.dir, STOLEN);
    let stolen_fp = match ctx.fingerprint_of(&stolen_cert) {
        Ok(fp) => fp,
        Err(e) => {
            as_client.miss(format!("{e} (`skv lab reset 12` hands it out again)"));
            return Report::of(vec![as_node, as_client]);
        }
    };
    let own = ctx.own_audit(NODE, |l| {
        l["decision"] == "deny"
            && l["peer"] == stolen_fp.as_str()
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("no client rights"))
    });
    match own {
        Some(line) => as_client.note(format!(
            "audit: your {} with the node certificate was refused: {}",
            line["op"].as_str().unwrap_or("request"),
            line["reason"].as_str().unwrap_or_default()
        )),
        None => as_client.miss(
            "the audit log shows no data request of yours refused for the node certificate \
             loot/db.pem: present it as a client (`skv --addr $DB_ADDR --ca pki/ca.pem --cert \
             loot/db.pem --key loot/db-key.pem --token-file ops.token get secret/flag`)",
        ),
    }
    let replay = ctx.attempt(
        NODE,
        &Attempt {
            identity: Some((stolen_cert, stolen_key)),
            token,
            ..Attempt::default()
        },
        KEY,
    );
    if replay.refused() {
        as_client.note(format!(
            "the checker's GET with db's node certificate was {}",
            replay.describe()
        ));
    } else {
        as_client.miss(format!(
            "the checker's GET with db's node certificate was not refused: {}",
            replay.describe()
        ));
    }
    Report::of(vec![as_node, as_client])
}
