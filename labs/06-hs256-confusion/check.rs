//! Lab 06 (hs256-confusion): the checker's rule, shared with lab 05
//! (crate::lab::legacy::forged): the legacy service accepts forged.token with alg HS256 (an
//! HMAC keyed with the public key file) and it grants read on secret/flag; skv refuses the
//! same token from mallory's certificate and audits an algorithm or signature refusal.

use crate::lab::check::{Ctx, Report};
use crate::lab::legacy::forged;

pub(crate) fn check(ctx: &Ctx) -> Report {
    forged::check(
        ctx,
        "hs256",
        &[
            "does not match alg",
            "is not allowed",
            "header has no kid",
            "is not in the keyset",
            "signature does not verify",
        ],
        6,
    )
}
