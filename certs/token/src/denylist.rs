//! The token denylist file: which tokens the nodes must refuse before they expire, by `jti`
//! (one token) or by `sub` (every token of a subject), each entry until its own `exp`.
//!
//! `skv token revoke` writes it and every `skv-node --denylist FILE` reads it (and reloads it
//! when it changes), so the format lives here, beside the keyset format both sides share:
//!
//! ```json
//! {"entries": [
//!   {"jti": "3f2a…", "exp": 1767225600},
//!   {"sub": "mallory", "exp": 1767312000}
//! ]}
//! ```
//!
//! Each entry names exactly one of `jti` and `sub`. `exp` (seconds since the Unix epoch) is
//! when the entry stops mattering: for a jti, the token's own `exp` (it is refused as expired
//! after that anyway); for a sub, a time by which every token issued before the revocation has
//! expired. Entries past their `exp` are dropped by readers and writers alike, so the file
//! does not grow with history.
//!
//! The file is bounded ([`MAX_DENYLIST_BYTES`], [`MAX_DENYLIST_ENTRIES`],
//! [`MAX_DENY_ID_LEN`]): a node reads it on every change, and a file past the bounds is
//! refused whole (the node keeps its previous list) rather than read in part. Unknown members
//! are refused too: a typo such as `"jit"` must not turn a revocation into a no-op.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Largest denylist file read, in bytes: about 40 000 entries of 32-hex-digit jtis.
pub const MAX_DENYLIST_BYTES: u64 = 4 << 20;

/// Most entries a denylist may hold.
pub const MAX_DENYLIST_ENTRIES: usize = 50_000;

/// Longest `jti` or `sub` an entry may name, in bytes. skv's jtis are 32 hex digits; the bound
/// keeps a hand-edited file from holding megabyte strings.
pub const MAX_DENY_ID_LEN: usize = 256;

/// What an entry revokes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DenyBy {
    /// One token, by its `jti` claim.
    Jti(String),
    /// Every token whose `sub` claim is this.
    Sub(String),
}

impl DenyBy {
    /// `"jti"` or `"sub"`: the claim the entry matches.
    pub fn claim(&self) -> &'static str {
        match self {
            DenyBy::Jti(_) => "jti",
            DenyBy::Sub(_) => "sub",
        }
    }

    /// The claim's value.
    pub fn value(&self) -> &str {
        match self {
            DenyBy::Jti(v) | DenyBy::Sub(v) => v,
        }
    }
}

/// One revocation: the tokens it covers and when it lapses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    /// The token (jti) or the subject (sub) revoked.
    pub by: DenyBy,
    /// Seconds since the Unix epoch after which the entry is dropped.
    pub exp: i64,
}

/// The entry as written in the file; validated into a [`DenyEntry`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    exp: i64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    entries: Vec<RawEntry>,
}

/// A denylist's contents: at most one entry per jti and per sub (the latest `exp` wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Denylist {
    entries: BTreeMap<DenyBy, i64>,
}

/// What is wrong with a denylist's contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DenylistProblem {
    /// Larger than [`MAX_DENYLIST_BYTES`].
    #[error("{len} bytes is larger than the {max}-byte limit for a denylist")]
    TooLarge {
        /// Size found (at least; reading stops past the limit).
        len: u64,
        /// The limit.
        max: u64,
    },
    /// More than [`MAX_DENYLIST_ENTRIES`] entries.
    #[error("{count} entries is more than the {max}-entry limit for a denylist")]
    TooManyEntries {
        /// Entries found.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON of the form `{"entries": [{"jti"|"sub": "...", "exp": N}, …]}`.
    #[error("not a denylist (expected {{\"entries\": [{{\"jti\" or \"sub\": \"...\", \"exp\": SECONDS}}]}}): {0}")]
    NotDenylist(String),
    /// One entry is unusable.
    #[error("entry {index}: {problem}")]
    Entry {
        /// Position in `entries`, from 0.
        index: usize,
        /// What is wrong.
        problem: &'static str,
    },
}

/// A denylist file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DenylistError {
    /// The file could not be read.
    #[error("cannot read denylist {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a usable denylist.
    #[error("denylist {}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: DenylistProblem,
    },
}

impl Denylist {
    /// An empty list.
    pub fn new() -> Denylist {
        Denylist::default()
    }

    /// Reads a denylist file, refusing it whole if it is over a bound or any entry is bad.
    pub fn read(path: &Path) -> Result<Denylist, DenylistError> {
        let io = |source| DenylistError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut bytes = Vec::new();
        // One byte past the limit tells "at the limit" from "over it" without trusting the
        // metadata, and never reads more than that.
        file.take(MAX_DENYLIST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Denylist::from_json(&bytes).map_err(|problem| DenylistError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parses and validates a denylist from JSON bytes. Expired entries are kept: which are
    /// expired depends on the reader's clock ([`Denylist::drop_expired`]).
    pub fn from_json(bytes: &[u8]) -> Result<Denylist, DenylistProblem> {
        if bytes.len() as u64 > MAX_DENYLIST_BYTES {
            return Err(DenylistProblem::TooLarge {
                len: bytes.len() as u64,
                max: MAX_DENYLIST_BYTES,
            });
        }
        let raw: RawFile = serde_json::from_slice(bytes)
            .map_err(|e| DenylistProblem::NotDenylist(e.to_string()))?;
        if raw.entries.len() > MAX_DENYLIST_ENTRIES {
            return Err(DenylistProblem::TooManyEntries {
                count: raw.entries.len(),
                max: MAX_DENYLIST_ENTRIES,
            });
        }
        let mut list = Denylist::new();
        for (index, entry) in raw.entries.into_iter().enumerate() {
            let bad = |problem| DenylistProblem::Entry { index, problem };
            let by = match (entry.jti, entry.sub) {
                (Some(jti), None) => DenyBy::Jti(jti),
                (None, Some(sub)) => DenyBy::Sub(sub),
                (Some(_), Some(_)) => {
                    return Err(bad("names both jti and sub; write one entry for each"))
                }
                (None, None) => return Err(bad("names neither jti nor sub")),
            };
            if by.value().is_empty() {
                return Err(bad("empty jti or sub"));
            }
            if by.value().len() > MAX_DENY_ID_LEN {
                return Err(bad("jti or sub longer than 256 bytes"));
            }
            list.insert(DenyEntry { by, exp: entry.exp });
        }
        Ok(list)
    }

    /// Adds an entry; an entry for the same jti or sub keeps the later `exp` of the two.
    pub fn insert(&mut self, entry: DenyEntry) {
        let exp = self.entries.entry(entry.by).or_insert(entry.exp);
        *exp = (*exp).max(entry.exp);
    }

    /// Drops every entry whose `exp` is at or before `now`.
    pub fn drop_expired(&mut self, now: i64) {
        self.entries.retain(|_, exp| *exp > now);
    }

    /// The entries, jtis first, each group in order of its value.
    pub fn entries(&self) -> impl Iterator<Item = DenyEntry> + '_ {
        self.entries.iter().map(|(by, &exp)| DenyEntry {
            by: by.clone(),
            exp,
        })
    }

    /// The `exp` of the entry revoking `by`, if there is one (expired or not).
    pub fn get(&self, by: &DenyBy) -> Option<i64> {
        self.entries.get(by).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The file form, one entry per line so that a diff of two versions reads well.
    pub fn to_json(&self) -> String {
        let lines: Vec<String> = self
            .entries()
            .map(|e| {
                let raw = match e.by {
                    DenyBy::Jti(jti) => RawEntry {
                        jti: Some(jti),
                        sub: None,
                        exp: e.exp,
                    },
                    DenyBy::Sub(sub) => RawEntry {
                        jti: None,
                        sub: Some(sub),
                        exp: e.exp,
                    },
                };
                // Serializing a struct of strings and an integer cannot fail.
                serde_json::to_string(&raw).unwrap_or_default()
            })
            .collect();
        if lines.is_empty() {
            return "{\"entries\": []}\n".to_owned();
        }
        format!("{{\"entries\": [\n  {}\n]}}\n", lines.join(",\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(v: &str, exp: i64) -> DenyEntry {
        DenyEntry {
            by: DenyBy::Jti(v.into()),
            exp,
        }
    }

    #[test]
    fn round_trips_and_merges_to_the_later_exp() {
        let text = br#"{"entries": [
            {"jti": "a1", "exp": 100},
            {"sub": "mallory", "exp": 200},
            {"jti": "a1", "exp": 150},
            {"jti": "a1", "exp": 120}
        ]}"#;
        let list = Denylist::from_json(text).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list.get(&DenyBy::Jti("a1".into())), Some(150));
        assert_eq!(list.get(&DenyBy::Sub("mallory".into())), Some(200));
        // A jti and a sub with the same text are different entries.
        assert_eq!(list.get(&DenyBy::Sub("a1".into())), None);
        let again = Denylist::from_json(list.to_json().as_bytes()).unwrap();
        assert_eq!(again, list);
        assert_eq!(
            Denylist::from_json(Denylist::new().to_json().as_bytes()).unwrap(),
            Denylist::new()
        );
    }

    #[test]
    fn expired_entries_are_dropped_at_their_exp() {
        let mut list = Denylist::new();
        list.insert(jti("old", 99));
        list.insert(jti("edge", 100));
        list.insert(jti("live", 101));
        list.drop_expired(100);
        let left: Vec<DenyEntry> = list.entries().collect();
        assert_eq!(left, vec![jti("live", 101)]);
    }

    #[test]
    fn bad_files_are_refused_whole_with_the_reason() {
        let err = |text: &[u8]| Denylist::from_json(text).unwrap_err();
        assert!(matches!(
            err(b"{\"entries\": ["),
            DenylistProblem::NotDenylist(_)
        ));
        assert!(matches!(err(b"[]"), DenylistProblem::NotDenylist(_)));
        // A typo'd member must not make an entry that revokes nothing.
        assert!(matches!(
            err(br#"{"entries": [{"jit": "a", "exp": 1}]}"#),
            DenylistProblem::NotDenylist(_)
        ));
        // exp as a string is refused, not read as "no expiry".
        assert!(matches!(
            err(br#"{"entries": [{"jti": "a", "exp": "1"}]}"#),
            DenylistProblem::NotDenylist(_)
        ));
        assert!(matches!(
            err(br#"{"entries": [{"jti": "a"}]}"#),
            DenylistProblem::NotDenylist(_)
        ));
        assert_eq!(
            err(br#"{"entries": [{"jti": "ok", "exp": 1}, {"jti": "a", "sub": "b", "exp": 1}]}"#),
            DenylistProblem::Entry {
                index: 1,
                problem: "names both jti and sub; write one entry for each"
            }
        );
        assert!(matches!(
            err(br#"{"entries": [{"exp": 1}]}"#),
            DenylistProblem::Entry { index: 0, .. }
        ));
        assert!(matches!(
            err(br#"{"entries": [{"sub": "", "exp": 1}]}"#),
            DenylistProblem::Entry { index: 0, .. }
        ));
        let long = format!(
            r#"{{"entries": [{{"sub": "{}", "exp": 1}}]}}"#,
            "x".repeat(MAX_DENY_ID_LEN + 1)
        );
        assert!(matches!(
            err(long.as_bytes()),
            DenylistProblem::Entry { index: 0, .. }
        ));
    }

    #[test]
    fn bounds_are_enforced() {
        let big = vec![b' '; MAX_DENYLIST_BYTES as usize + 1];
        assert!(matches!(
            Denylist::from_json(&big).unwrap_err(),
            DenylistProblem::TooLarge { .. }
        ));
        let many: Vec<String> = (0..=MAX_DENYLIST_ENTRIES)
            .map(|i| format!(r#"{{"jti":"{i}","exp":1}}"#))
            .collect();
        let text = format!(r#"{{"entries":[{}]}}"#, many.join(","));
        assert!((text.len() as u64) < MAX_DENYLIST_BYTES);
        assert_eq!(
            Denylist::from_json(text.as_bytes()).unwrap_err(),
            DenylistProblem::TooManyEntries {
                count: MAX_DENYLIST_ENTRIES + 1,
                max: MAX_DENYLIST_ENTRIES
            }
        );
    }

    #[test]
    fn read_names_the_file_and_stops_past_the_limit() {
        let tmp = std::env::temp_dir().join(format!("skv-denylist-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let path = tmp.join("denylist.json");
        std::fs::write(&path, vec![b' '; MAX_DENYLIST_BYTES as usize + 100]).unwrap();
        let err = Denylist::read(&path).unwrap_err();
        assert!(err.to_string().contains("denylist.json"), "{err}");
        assert!(matches!(
            err,
            DenylistError::Invalid {
                problem: DenylistProblem::TooLarge { len, .. },
                ..
            } if len == MAX_DENYLIST_BYTES + 1
        ));
        let missing = Denylist::read(&tmp.join("nope.json")).unwrap_err();
        assert!(matches!(missing, DenylistError::Io { .. }));
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
