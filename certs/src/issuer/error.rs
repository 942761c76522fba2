//! The issuer's error type. Every variant says what went wrong in terms the operator of
//! `skv keys …` / `skv token …` can act on, and names the file involved where there is one.

use std::path::PathBuf;

use skv_token::provider::ProviderConflict;

use crate::CertsError;

/// Everything that can go wrong while creating, rotating, retiring or loading issuer keys, or
/// minting and inspecting tokens.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerError {
    /// Generating a key or writing a file failed in the shared credentials code (this covers
    /// a missing `openssl` for RS256 keys, and I/O while writing atomically).
    #[error(transparent)]
    Certs(#[from] CertsError),

    /// Reading a file or creating the directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A key id given with `--kid` cannot be used. Kids become part of file names
    /// (`issuer-key-<kid>.pem`), so only `[A-Za-z0-9._-]`, starting with a letter or digit, at
    /// most 64 characters, is accepted.
    #[error("invalid kid {kid:?}: {reason}")]
    InvalidKid {
        /// The kid as given.
        kid: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The requested kid is already in the keyset and `force` was not set. Nothing was written.
    #[error(
        "kid {kid:?} is already in {}; choose another --kid (or none, to derive one from the \
         new key) or pass --force to replace that key",
        keyset.display()
    )]
    KidExists {
        /// The kid.
        kid: String,
        /// The keyset file holding it.
        keyset: PathBuf,
    },

    /// `keys_retire` was asked for a kid that is not in the keyset.
    #[error("kid {kid:?} is not in {}", keyset.display())]
    UnknownKid {
        /// The kid.
        kid: String,
        /// The keyset file.
        keyset: PathBuf,
    },

    /// `keys_retire` was asked to remove the kid the issuer currently signs with; every new
    /// token would then be refused. Rotate first (`keys init` with a new kid), then retire.
    #[error(
        "kid {kid:?} is the current signing key; rotate to a new key first, then retire {kid:?}"
    )]
    RetireCurrent {
        /// The kid.
        kid: String,
    },

    /// `keys_retire` would remove the only key in the keyset; nodes refuse an empty keyset.
    #[error("kid {kid:?} is the last key in the keyset; nodes cannot run with an empty keyset")]
    RetireLast {
        /// The kid.
        kid: String,
    },

    /// The directory holds no issuer key (`issuer-key.pem` or `issuer-key.secret`).
    #[error("no issuer key in {}; run `skv keys init --dir {}` first", dir.display(), dir.display())]
    NoIssuerKey {
        /// The directory searched.
        dir: PathBuf,
    },

    /// A key file exists but cannot be used: not PKCS#8 PEM of an Ed25519, P-256 or RSA key, or
    /// (for `.secret`) not base64url of at least 32 bytes.
    #[error("cannot use issuer key {}: {reason}", path.display())]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The keyset file exists but cannot be used: unreadable JSON, an unknown member, a key
    /// that does not validate, or a duplicate kid. It is never overwritten in that state.
    #[error("cannot use keyset {}: {reason}", path.display())]
    InvalidKeyset {
        /// The keyset file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The current key file's public key is not in the keyset (the keyset was edited or
    /// replaced, or a rotation was interrupted in an unexpected way), so no kid can be named
    /// for it and its tokens could not be verified.
    #[error(
        "the key in {} is not in {}; restore the keyset or run `skv keys init --dir … --force` \
         to start a new key",
        key_file.display(),
        keyset.display()
    )]
    KeyNotInKeyset {
        /// The current key file.
        key_file: PathBuf,
        /// The keyset file.
        keyset: PathBuf,
    },

    /// The same key material appears under more than one kid in the keyset, so the kid of
    /// the current key is ambiguous.
    #[error("the key in {} appears in the keyset under several kids: {kids:?}", key_file.display())]
    AmbiguousKid {
        /// The current key file.
        key_file: PathBuf,
        /// The kids that share its key.
        kids: Vec<String>,
    },

    /// A token request is not acceptable (empty subject, audience or issuer, zero lifetime, a
    /// lifetime that overflows).
    #[error("invalid token request: {0}")]
    InvalidSpec(&'static str),

    /// The minted token would be longer than nodes accept (too many or too long scopes).
    #[error(
        "the token would be {len} bytes, over the {max}-byte limit nodes accept; grant fewer \
         or shorter scopes"
    )]
    TokenTooLarge {
        /// Its length.
        len: usize,
        /// The limit ([`skv_proto::MAX_TOKEN_LEN`]).
        max: usize,
    },

    /// Another jsonwebtoken crypto provider is installed in this process.
    #[error(transparent)]
    Provider(#[from] ProviderConflict),

    /// jsonwebtoken refused to sign (a key the ring provider cannot load).
    #[error("signing the token failed: {0}")]
    Signing(String),

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// `inspect` was given something that is not a JWS compact token.
    #[error("not a token: {0}")]
    MalformedToken(&'static str),
}

impl IssuerError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IssuerError::Io {
            path: path.into(),
            source,
        }
    }
}
