//! The network edge of a node, in request order: the listener ([`listener`]) accepts under a
//! connection cap, the TLS acceptor ([`tls`]) runs checkpoint 1 (mutual TLS against the
//! cluster CA), [`identity`] reads the SPIFFE ID of the peer's certificate, and
//! [`connection`] frames and decodes requests for the router. [`peer`] is the other
//! direction: this node dialing its peers over mutual TLS. [`credentials`] holds the live
//! certificate, key, CA and CRLs both directions use, and reloads them; [`idle`] closes
//! client connections that stopped sending.

pub(crate) mod admission;
pub(crate) mod connection;
pub mod credentials;
pub(crate) mod identity;
pub(crate) mod idle;
pub(crate) mod listener;
pub(crate) mod peer;
pub mod tls;
