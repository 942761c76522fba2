//! The node's token checkpoints: checkpoint 2 (is the token genuine, current, for this
//! cluster, presented by its client?) and checkpoint 3 (does it allow this op on this key?).
//!
//! Every node verifies tokens itself, with no call to any other service: the signature against
//! the [`Keyset`] it holds, the standard claims and the optional certificate binding under a
//! [`Policy`] ([`Verifier`]), then per-prefix scopes ([`Verified::allows`], [`Grants`]). A
//! bounded [`TokenCache`] lets repeated tokens skip the signature check (security level L5).
//! Refusals carry a precise reason for the audit log and a coarse [`AuthCategory`] for the
//! client ([`AuthError`]).
//!
//! Module map: `checkpoint` is the policy on the request path (which token applies, when it
//! is verified, the per-connection session); [`keyset`] loads and validates keys;
//! [`verifier`] checks tokens; [`scopes`] checks operations against grants; [`cache`]
//! remembers verified tokens; `handles` holds the tokens a connection registered (protocol
//! version 2); [`denylist`] refuses revoked tokens that still verify (by jti or
//! sub, from `--denylist FILE`); [`audit`] writes every refusal; [`error`] says why something
//! was refused. Claim types, the keyset format and the ring crypto provider are in
//! [`skv_proto::token`], shared with the issuer in skv-certs.
//!
//! Time is passed in (`now`, seconds since the Unix epoch; [`unix_now`]) rather than read
//! inside, so one request reads the clock once and tests can move it.

pub mod audit;
pub mod cache;
pub(crate) mod checkpoint;
pub mod denylist;
pub mod error;
pub(crate) mod handles;
pub mod keyset;
pub(crate) mod refusals;
pub mod scopes;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use cache::TokenCache;
pub use denylist::Revocations;
pub use error::{AuthCategory, AuthError, Echo, KeysetError, KeysetProblem, PolicyError};
pub use keyset::{Keyset, MAX_KEYSET_BYTES};
pub use scopes::{Grants, OpSet};
pub use skv_token::{unix_now, Alg, ScopeOp};
pub use verifier::{CertThumbprint, Policy, Verified, Verifier};
