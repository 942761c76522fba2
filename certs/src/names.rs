//! Validation of cluster, node and client names. This is the only gate between user input
//! and the file paths (`nodes/<n>.pem`) and SPIFFE URIs (`spiffe://<cluster>/node/<n>`) built
//! from it, so it is deliberately strict.

use crate::CertsError;

/// Longest accepted name: a DNS label's limit, so a node name is always a valid host label.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a cluster, node or client name; `what` ("cluster", "node", "client") only feeds the
/// error message.
///
/// Accepted: 1 to 63 characters from `[a-z0-9._-]`, the first one a letter or digit. That
/// rules out `/` and `\` (no path separators), `.` and `..` and hidden files (no leading dot),
/// a leading `-` (not mistaken for a CLI flag), upper case (SPIFFE trust domains are lower
/// case, and case-insensitive file systems would merge `Bob` and `bob`), whitespace and
/// anything non-ASCII.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), CertsError> {
    let refuse = |reason| {
        Err(CertsError::InvalidName {
            what,
            name: name.to_owned(),
            reason,
        })
    };
    let Some(first) = name.chars().next() else {
        return refuse("it is empty");
    };
    if name.len() > MAX_NAME_LEN {
        return refuse("it is longer than 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return refuse("it must start with a lower-case letter or a digit");
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c);
    if !name.chars().all(allowed) {
        return refuse("only lower-case letters, digits, '-', '.' and '_' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["n1", "node-1", "alice", "a.b_c", "0", &"a".repeat(63)] {
            validate_name("node", ok).unwrap();
        }
    }

    #[test]
    fn refuses_dangerous_names() {
        for bad in [
            "",
            "../x",
            "..",
            ".",
            ".hidden",
            "a/b",
            "a\\b",
            "Alice",
            "-rf",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            assert!(validate_name("node", bad).is_err(), "{bad:?} was accepted");
        }
    }
}
