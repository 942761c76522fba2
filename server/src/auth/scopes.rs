//! Checkpoint 3: does a verified token allow this operation on this key?
//!
//! A token's scopes are compiled once, at verification, into [`Grants`]: one entry per
//! distinct prefix with a bit set of operations, so a check is a short scan of byte-prefix
//! comparisons with no allocation. Deny by default: no matching grant, no access. `admin` on a
//! prefix implies every operation on it.
//!
//! Scans are all or nothing. [`Grants::allows_scan`] is true only when a single read grant's
//! prefix is a prefix of the scan prefix, so every key the scan can return — every key that
//! starts with the scan prefix — is covered by that grant. A scan over a wider prefix (say
//! `users/` by a token that may read `users/alice/` and `users/bob/`) is refused rather than
//! silently filtered: a filtered scan would leak the existence of hidden keys through paging
//! and cursor positions, and would make a scan's result depend on the caller in ways clients
//! cannot see. Clients scan within their grants instead.

use std::fmt;

use skv_token::{Scope, ScopeOp};

/// A set of operations, one bit each.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OpSet(u8);

impl OpSet {
    fn bit(op: ScopeOp) -> u8 {
        match op {
            ScopeOp::Read => 1,
            ScopeOp::Write => 2,
            ScopeOp::Delete => 4,
            ScopeOp::Admin => 8,
        }
    }

    /// Whether this set allows `op`: it holds `op`, or it holds `admin`.
    pub fn allows(self, op: ScopeOp) -> bool {
        self.0 & (OpSet::bit(op) | OpSet::bit(ScopeOp::Admin)) != 0
    }

    /// The operations in the set.
    pub fn ops(self) -> impl Iterator<Item = ScopeOp> {
        ScopeOp::ALL
            .into_iter()
            .filter(move |op| self.0 & OpSet::bit(*op) != 0)
    }
}

impl fmt::Debug for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.ops()).finish()
    }
}

/// A token's scopes, ready for checks.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Distinct prefixes, shortest first (broad grants usually decide fastest).
    entries: Box<[(Box<[u8]>, OpSet)]>,
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.entries
                    .iter()
                    .map(|(p, ops)| (String::from_utf8_lossy(p), ops)),
            )
            .finish()
    }
}

impl Grants {
    /// Compiles scopes: operations of scopes with the same prefix are merged.
    pub fn from_scopes(scopes: &[Scope]) -> Grants {
        let mut entries: Vec<(Box<[u8]>, OpSet)> = Vec::with_capacity(scopes.len());
        for scope in scopes {
            let bits = scope.ops.iter().fold(0, |acc, op| acc | OpSet::bit(*op));
            let prefix = scope.prefix.as_bytes();
            match entries.iter_mut().find(|(p, _)| &p[..] == prefix) {
                Some((_, set)) => set.0 |= bits,
                None => entries.push((prefix.into(), OpSet(bits))),
            }
        }
        entries.retain(|(_, set)| set.0 != 0);
        entries.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
        Grants {
            entries: entries.into_boxed_slice(),
        }
    }

    /// Whether some grant allows `op` on `key`: its prefix is a prefix of `key` and it holds
    /// `op` or `admin`.
    pub fn allows(&self, op: ScopeOp, key: &[u8]) -> bool {
        self.entries
            .iter()
            .any(|(prefix, set)| set.allows(op) && key.starts_with(prefix))
    }

    /// Whether a scan of `prefix` is allowed: one read grant covers every key the scan can
    /// return. A scan over a wider prefix than the grants is refused, not filtered (see the
    /// module docs).
    pub fn allows_scan(&self, prefix: &[u8]) -> bool {
        // Every key a scan returns starts with `prefix`; a grant whose prefix is a prefix of
        // `prefix` therefore covers all of them. That is exactly `allows(Read, prefix)`.
        self.allows(ScopeOp::Read, prefix)
    }

    /// Whether the token grants nothing at all (it can still HELLO and PING).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The compiled grants, as (prefix, operations) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], OpSet)> {
        self.entries.iter().map(|(p, s)| (&p[..], *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_token::parse_allow;

    fn grants(allows: &[&str]) -> Grants {
        let scopes: Vec<Scope> = allows.iter().map(|a| parse_allow(a).unwrap()).collect();
        Grants::from_scopes(&scopes)
    }

    #[test]
    fn deny_by_default() {
        let g = grants(&[]);
        assert!(g.is_empty());
        for op in ScopeOp::ALL {
            assert!(!g.allows(op, b"anything"));
            assert!(!g.allows(op, b""));
        }
        assert!(!g.allows_scan(b""));
    }

    #[test]
    fn prefix_and_op_must_both_match() {
        let g = grants(&["read,write:users/alice/", "delete:tmp/"]);
        assert!(g.allows(ScopeOp::Read, b"users/alice/x"));
        assert!(g.allows(ScopeOp::Write, b"users/alice/"));
        assert!(!g.allows(ScopeOp::Delete, b"users/alice/x"));
        assert!(!g.allows(ScopeOp::Read, b"users/alicex"));
        assert!(!g.allows(ScopeOp::Read, b"users/bob/x"));
        assert!(
            !g.allows(ScopeOp::Read, b"users/alice"),
            "shorter than the prefix"
        );
        assert!(g.allows(ScopeOp::Delete, b"tmp/1"));
        assert!(!g.allows(ScopeOp::Read, b"tmp/1"));
        assert!(!g.allows(ScopeOp::Admin, b"users/alice/x"));
    }

    #[test]
    fn admin_implies_everything_under_its_prefix() {
        let g = grants(&["admin:ops/"]);
        for op in ScopeOp::ALL {
            assert!(g.allows(op, b"ops/x"), "{op}");
            assert!(!g.allows(op, b"other"), "{op}");
        }
    }

    #[test]
    fn empty_prefix_covers_every_key() {
        let g = grants(&["read:"]);
        assert!(g.allows(ScopeOp::Read, b""));
        assert!(g.allows(ScopeOp::Read, &[0xff, 0, 1]));
        assert!(g.allows_scan(b""));
        assert!(!g.allows(ScopeOp::Write, b"x"));
    }

    #[test]
    fn scans_must_stay_inside_one_read_grant() {
        let g = grants(&["read:users/alice/", "read:users/bob/", "write:logs/"]);
        assert!(g.allows_scan(b"users/alice/"));
        assert!(g.allows_scan(b"users/alice/photos/"));
        assert!(!g.allows_scan(b"users/"), "wider than every grant: refused");
        assert!(!g.allows_scan(b"users/al"), "would reach users/alex/");
        assert!(!g.allows_scan(b""));
        assert!(!g.allows_scan(b"logs/"), "write does not allow scanning");
    }

    #[test]
    fn same_prefix_scopes_merge() {
        let g = grants(&["read:a/", "write:a/", "delete:"]);
        let entries: Vec<_> = g
            .iter()
            .map(|(p, s)| (p.to_vec(), s.ops().count()))
            .collect();
        assert_eq!(entries, vec![(b"".to_vec(), 1), (b"a/".to_vec(), 2)]);
        assert_eq!(format!("{g:?}"), r#"{"": {Delete}, "a/": {Read, Write}}"#);
    }
}
