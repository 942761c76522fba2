//! The node's view of the token denylist (`--denylist FILE`): revocations by `jti` or `sub`
//! that refuse a token which still verifies.
//!
//! The file format and its bounds are [`skv_token::denylist`]'s; this module turns a loaded
//! file into what the request path asks: "is this verified token revoked at `now`?". The
//! answer costs two hash lookups, and nothing when the list is empty. The checkpoint holds the
//! live list and swaps it whole on reload, as it does the keyset.
//!
//! An entry is honoured until its `exp` plus the node's leeway: a token is accepted until its
//! own `exp` plus the leeway, so an entry by jti (whose `exp` is the token's) must last as
//! long. Entries past that are dropped at load, and ignored if they lapse between reloads.

use std::collections::HashMap;
use std::path::Path;

use skv_token::denylist::{DenyBy, Denylist, DenylistError};

use super::error::AuthError;
use super::verifier::Verified;

/// The revocations in force on a node.
#[derive(Debug, Default)]
pub struct Revocations {
    /// jti → until (the entry's exp plus the leeway).
    jti: HashMap<String, i64>,
    /// sub → until.
    sub: HashMap<String, i64>,
}

impl Revocations {
    /// No revocations: the list of a node without `--denylist`.
    pub fn none() -> Revocations {
        Revocations::default()
    }

    /// The entries of `list` still in force at `now`, each honoured `leeway` seconds past its
    /// `exp`.
    pub fn from_list(list: &Denylist, now: i64, leeway: i64) -> Revocations {
        let mut out = Revocations::default();
        for entry in list.entries() {
            let until = entry.exp.saturating_add(leeway);
            if until <= now {
                continue;
            }
            match entry.by {
                DenyBy::Jti(jti) => out.jti.insert(jti, until),
                DenyBy::Sub(sub) => out.sub.insert(sub, until),
            };
        }
        out
    }

    /// Reads the denylist file; see [`Revocations::from_list`].
    pub fn load(path: &Path, now: i64, leeway: i64) -> Result<Revocations, DenylistError> {
        Ok(Revocations::from_list(&Denylist::read(path)?, now, leeway))
    }

    /// Entries in force (as of the load).
    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.jti.is_empty() && self.sub.is_empty()
    }

    /// Refuses a verified token that an entry revokes at `now`: by its jti, or by its sub.
    pub fn check(&self, verified: &Verified, now: i64) -> Result<(), AuthError> {
        if self.is_empty() {
            return Ok(());
        }
        fn hit(map: &HashMap<String, i64>, key: &str, now: i64) -> Option<i64> {
            map.get(key).copied().filter(|&until| now < until)
        }
        if let Some(until) = hit(&self.jti, verified.jti(), now) {
            return Err(AuthError::Revoked { by: "jti", until });
        }
        if let Some(until) = hit(&self.sub, verified.sub(), now) {
            return Err(AuthError::Revoked { by: "sub", until });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_token::denylist::DenyEntry;

    #[test]
    fn entries_last_their_exp_plus_the_leeway() {
        let mut list = Denylist::new();
        for (by, exp) in [
            (DenyBy::Jti("gone".into()), 94),
            (DenyBy::Jti("in-leeway".into()), 96),
            (DenyBy::Sub("mallory".into()), 200),
        ] {
            list.insert(DenyEntry { by, exp });
        }
        // At 100 with 5 s of leeway: 94 + 5 has passed, 96 + 5 has not.
        let r = Revocations::from_list(&list, 100, 5);
        assert_eq!(r.len(), 2);
        assert_eq!(r.jti.get("in-leeway"), Some(&101));
        assert!(!r.jti.contains_key("gone"));
        assert_eq!(r.sub.get("mallory"), Some(&205));
        assert!(Revocations::from_list(&list, 300, 5).is_empty());
        assert!(Revocations::none().is_empty());
    }
}
