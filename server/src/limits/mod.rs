//! Limits that apply across connections: per-identity rates ([`rate`]) and the node's load,
//! which decides when new connections are shed ([`load`]). The per-connection limits
//! (admission, pending answers) live with the connection in [`crate::net`].

pub(crate) mod load;
pub(crate) mod rate;
