//! Lab 05 (alg-none): the checker's rule, shared with lab 06 (crate::lab::legacy::forged):
//! the legacy service accepts forged.token with alg none and it grants read on secret/flag;
//! skv refuses the same token from mallory's certificate and audits "alg ... is not allowed"
//! (or a header with no alg), for the student's attempt and for the checker's replay.

use crate::lab::check::{Ctx, Report};
use crate::lab::legacy::forged;

pub(crate) fn check(ctx: &Ctx) -> Report {
    forged::check(ctx, "none", &["is not allowed", "header has no alg"], 5)
}
