//! The node's token checkpoint on the request path: which token applies to a request (the
//! one in the frame, or the connection's), verifying it (through the cache when enabled),
//! checking its scopes, and writing the audit line.
//!
//! The verification machinery itself lives in [`crate::auth`]; this module owns the policy
//! of *when* it runs, the live keyset (swapped atomically on reload, so requests never take
//! a lock to read it), and the per-connection [`Session`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use skv_proto::{ErrorCode, RequestBody, TokenPlacement};
use skv_token::ScopeOp;
use tokio_util::sync::CancellationToken;

use crate::auth::audit::{self, AuditLog, AuditRecord, Decision};
use crate::auth::refusals::{PeerKey, Refusals};
use crate::auth::{
    unix_now, AuthCategory, AuthError, CertThumbprint, Keyset, KeysetError, Policy, TokenCache,
    Verified, Verifier,
};
use crate::config::{AuthConfig, AuthMode};

/// How often the keyset file is checked for changes.
const KEYSET_POLL: Duration = Duration::from_secs(1);

/// A checkpoint that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The keyset file is missing or invalid.
    #[error(transparent)]
    Keyset(#[from] KeysetError),
    /// The policy cannot be used with this keyset.
    #[error("token policy: {0}")]
    Policy(#[from] crate::auth::PolicyError),
    /// The audit log cannot be opened.
    #[error(transparent)]
    Audit(#[from] audit::AuditOpenError),
}

/// A refused request: what the client is told. The precise reason went to the audit log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: &'static str,
}

impl From<AuthCategory> for Refusal {
    fn from(category: AuthCategory) -> Refusal {
        Refusal {
            code: category.error_code(),
            message: category.client_message(),
        }
    }
}

/// What a client is told when its token's scopes do not cover the request: the grant it
/// lacks, worded for what the request addresses (control requests have no key).
fn scope_refusal(body: &RequestBody) -> &'static str {
    match body {
        RequestBody::Get { .. } => "the token does not grant read on this key",
        RequestBody::Put { .. } | RequestBody::Cas { .. } => {
            "the token does not grant write on this key"
        }
        RequestBody::Delete { .. } => "the token does not grant delete on this key",
        RequestBody::Scan { .. } => "the token does not grant read on this prefix",
        RequestBody::Control { .. } | RequestBody::Import { .. } => {
            "cluster control requests need a token granting admin on every key (--allow admin:)"
        }
        _ => AuthCategory::Forbidden.client_message(),
    }
}

/// Token state of one connection.
#[derive(Debug)]
pub(crate) struct Session {
    /// The client certificate's SHA-256, for bound tokens.
    thumbprint: Option<CertThumbprint>,
    /// The same, hex, for audit lines ("" on plaintext).
    fingerprint: String,
    /// Who failed authentication, for the failure limiter: the certificate and the source
    /// address, when known.
    peers: Vec<PeerKey>,
    /// Per-connection mode: the HELLO token and what it verified to, under which keyset
    /// generation.
    connection_token: Option<(Bytes, Arc<Verified>, u64)>,
    /// Per-request mode with the cache on: the last token seen on this connection. A client
    /// sends the same token request after request, so comparing bytes here skips even the
    /// cache's hash. Dropped when the keyset generation changes.
    last: Option<(Bytes, Arc<Verified>, u64)>,
}

impl Session {
    /// A client's write session as the shard's session table keys it: the client id mixed
    /// with this connection's certificate, so a client holding another certificate cannot
    /// replay or pre-empt someone else's (client id, sequence) pair to read its outcome or have
    /// its write skipped as a duplicate. The same certificate gives the same key on every
    /// node, so a retry at a new leader still finds its first outcome. Plaintext connections
    /// (benchmark baselines) keep the id as sent.
    pub(crate) fn scope_write(&self, session: skv_proto::Session) -> skv_proto::Session {
        let Some(thumbprint) = &self.thumbprint else {
            return session;
        };
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"skv write session v1\0");
        ctx.update(thumbprint.as_bytes());
        ctx.update(&session.client.to_be_bytes());
        let digest = ctx.finish();
        let mut client = [0u8; 8];
        client.copy_from_slice(&digest.as_ref()[..8]);
        skv_proto::Session {
            client: u64::from_be_bytes(client),
            seq: session.seq,
        }
    }

    /// The session of a connection from `source`: failed authentication is limited per
    /// address as well as per certificate.
    /// The client certificate's thumbprint (none on plaintext): the identity the rate limit
    /// charges when a request carries no token.
    pub(crate) fn thumbprint(&self) -> Option<&CertThumbprint> {
        self.thumbprint.as_ref()
    }

    /// The client certificate's SHA-256, hex ("" on plaintext), for logs.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn with_source(mut self, source: std::net::IpAddr) -> Session {
        self.peers.push(PeerKey::Source(source));
        self
    }

    /// A session for a peer with this certificate thumbprint (none on plaintext).
    pub(crate) fn new(thumbprint: Option<CertThumbprint>) -> Session {
        let fingerprint = thumbprint.map(|t| t.to_hex()).unwrap_or_default();
        Session {
            thumbprint,
            fingerprint,
            peers: thumbprint.map(PeerKey::Cert).into_iter().collect(),
            connection_token: None,
            last: None,
        }
    }
}

/// Checkpoints 2 and 3 for one node.
#[derive(Debug)]
pub(crate) struct Checkpoint {
    mode: AuthMode,
    node: String,
    keyset_path: PathBuf,
    policy: Policy,
    verifier: ArcSwap<Verifier>,
    /// Bumped on every successful reload; sessions compare it to drop stale memos.
    generation: AtomicU64,
    cache: Option<TokenCache>,
    audit: Option<AuditLog>,
    /// Recently refused tokens and peers that keep failing.
    refusals: Refusals,
}

/// What a peer blocked for repeated failed authentication is told.
const RATE_LIMITED: Refusal = Refusal {
    code: ErrorCode::Unauthenticated,
    message: "too many failed authentications from this certificate or address; retry later",
};

impl Checkpoint {
    /// Load the keyset and open the audit log.
    pub(crate) fn new(config: &AuthConfig, node: &str) -> Result<Checkpoint, CheckpointError> {
        let mut policy = Policy::new(config.audience.clone(), config.issuer.clone());
        policy.leeway = config.leeway;
        policy.require_bound_tokens = config.require_bound_tokens;
        let keyset = Keyset::load(&config.keyset)?;
        warn_if_shared_secrets(&keyset);
        let verifier = Verifier::new(keyset, policy.clone())?;
        let audit = match &config.audit_log {
            Some(path) => Some(AuditLog::open(
                &audit::AuditFiles {
                    path: path.clone(),
                    max_files: config.audit_max_files,
                    max_bytes: config.audit_max_bytes,
                },
                config.audit_allows,
            )?),
            None => None,
        };
        let cache = match (config.mode, config.token_cache) {
            (AuthMode::PerRequest, n) if n > 0 => Some(TokenCache::new(n)),
            _ => None,
        };
        Ok(Checkpoint {
            mode: config.mode,
            node: node.to_owned(),
            keyset_path: config.keyset.clone(),
            policy,
            verifier: ArcSwap::from_pointee(verifier),
            generation: AtomicU64::new(0),
            cache,
            audit,
            refusals: Refusals::default(),
        })
    }

    /// Re-read the keyset file. On any error the current keyset stays in force.
    pub(crate) fn reload(&self) -> Result<usize, CheckpointError> {
        let keyset = Keyset::load(&self.keyset_path)?;
        warn_if_shared_secrets(&keyset);
        let keys = keyset.len();
        let verifier = Verifier::new(keyset, self.policy.clone())?;
        self.verifier.store(Arc::new(verifier));
        // Cache entries carry their verifier's id, so the cache ignores old entries by
        // itself; sessions' memos need this generation bump.
        self.generation.fetch_add(1, Ordering::Release);
        Ok(keys)
    }

    /// Reload on SIGHUP-style demand, logging the outcome.
    pub(crate) fn reload_and_log(&self) {
        match self.reload() {
            Ok(keys) => {
                tracing::info!(keyset = %self.keyset_path.display(), keys, "keyset reloaded")
            }
            Err(err) => tracing::error!(
                keyset = %self.keyset_path.display(),
                error = %err,
                "keyset reload failed; keeping the previous keyset"
            ),
        }
    }

    /// Watch the keyset file and reload when it changes, until `shutdown`.
    pub(crate) fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut last = file_stamp(&self.keyset_path);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(KEYSET_POLL) => {}
                }
                let now = file_stamp(&self.keyset_path);
                if now != last {
                    last = now;
                    self.reload_and_log();
                }
            }
        });
    }

    /// Where clients must put the token, as announced in HELLO_OK.
    pub(crate) fn placement(&self) -> TokenPlacement {
        match self.mode {
            AuthMode::PerRequest => TokenPlacement::PerRequest,
            AuthMode::PerConnection => TokenPlacement::PerConnection,
            AuthMode::Off => TokenPlacement::None,
        }
    }

    /// HELLO: in per-connection mode the token must come here, and is verified once.
    pub(crate) fn hello(
        &self,
        session: &mut Session,
        token: Option<&Bytes>,
    ) -> Result<(), Refusal> {
        if self.mode != AuthMode::PerConnection {
            return Ok(());
        }
        if self.refusals.blocked(&session.peers) {
            self.deny_role(
                session,
                "hello",
                "rate limited after repeated failed authentication",
            );
            return Err(RATE_LIMITED);
        }
        let now = unix_now();
        let verified = self.verify_fresh(session, token, now).map_err(|err| {
            self.refusals.failed(&session.peers);
            self.deny(session, None, "hello", None, &err);
            Refusal::from(err.category())
        })?;
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(token) = token {
            session.connection_token = Some((token.clone(), verified, generation));
        }
        Ok(())
    }

    /// Whether the HELLO's token verifies for this connection: what admits a connection past
    /// its certificate's connection cap. Per-connection mode verified it in [`Self::hello`]
    /// already; per-request mode verifies it here (only a HELLO over the cap pays for that,
    /// through the cache when it is on). A refusal is audited like any other.
    pub(crate) fn hello_proves(&self, session: &mut Session, token: Option<&Bytes>) -> bool {
        match self.mode {
            AuthMode::PerConnection => session.connection_token.is_some(),
            AuthMode::Off => false,
            AuthMode::PerRequest => {
                let now = unix_now();
                match self.request_verified(session, token, now) {
                    Ok(_) => true,
                    Err(err) => {
                        self.deny(session, None, "hello", None, &err);
                        false
                    }
                }
            }
        }
    }

    /// Decide one request. PING needs no token: it reveals nothing and serves health checks.
    pub(crate) fn authorize(
        &self,
        session: &mut Session,
        token: Option<&Bytes>,
        body: &RequestBody,
    ) -> Result<Option<Arc<Verified>>, Refusal> {
        let op = body.op();
        let Some(required) = ScopeOp::required_for(op) else {
            return Ok(None);
        };
        let target = target_of(body);
        // A blocked peer still gets what costs nothing: a token this connection or the cache
        // already verified. So a client sharing an address with an attacker keeps working
        // with the token it has; only new verifications are refused.
        if self.refusals.blocked(&session.peers) && !self.already_verified(session, token) {
            self.deny_role(
                session,
                op.as_str(),
                "rate limited after repeated failed authentication",
            );
            return Err(RATE_LIMITED);
        }
        let now = unix_now();
        let verified = match self.mode {
            AuthMode::PerConnection => self.connection_verified(session, now),
            _ => self.request_verified(session, token, now),
        };
        let verified = match verified {
            Ok(v) => v,
            Err(err) => {
                self.refusals.failed(&session.peers);
                self.deny(session, None, op.as_str(), target, &err);
                return Err(Refusal::from(err.category()));
            }
        };
        let scoped = match body {
            RequestBody::Scan { prefix, .. } => verified.authorize_scan(prefix),
            _ => verified.authorize(required, target.unwrap_or_default()),
        };
        match scoped {
            Ok(()) => {
                if let Some(audit) = self.audit.as_ref().filter(|a| a.logs_allows()) {
                    audit.record(self.record(
                        session,
                        Some(&verified),
                        op.as_str(),
                        target,
                        Decision::Allow,
                        "allowed",
                    ));
                }
                // Handed back (not dropped here) for the per-identity rate limit's subject.
                Ok(Some(verified))
            }
            Err(err) => {
                self.deny(session, Some(&verified), op.as_str(), target, &err);
                let mut refusal = Refusal::from(err.category());
                if err.category() == AuthCategory::Forbidden {
                    refusal.message = scope_refusal(body);
                }
                Err(refusal)
            }
        }
    }

    /// Whether the request's token was verified before, so that admitting it costs no
    /// verification: the connection's HELLO token, the connection's memo, or a cache entry.
    fn already_verified(&self, session: &Session, token: Option<&Bytes>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        match self.mode {
            AuthMode::PerConnection => session
                .connection_token
                .as_ref()
                .is_some_and(|(_, _, seen)| *seen == generation),
            AuthMode::Off => true,
            AuthMode::PerRequest => {
                let Some(token) = token else {
                    return false;
                };
                let memo = session
                    .last
                    .as_ref()
                    .is_some_and(|(last, _, seen)| *seen == generation && last == token);
                memo || self.cache.as_ref().is_some_and(|cache| {
                    cache
                        .get(&TokenCache::key_of(token), unix_now())
                        .is_some_and(|hit| hit.verifier_id() == self.verifier.load().id())
                })
            }
        }
    }

    /// Per-connection mode: the HELLO token, re-verified if the keyset changed since, and
    /// checked for expiry on every request.
    fn connection_verified(
        &self,
        session: &mut Session,
        now: i64,
    ) -> Result<Arc<Verified>, AuthError> {
        let generation = self.generation.load(Ordering::Acquire);
        let Some((token, verified, seen)) = session.connection_token.clone() else {
            return Err(AuthError::MissingToken);
        };
        if seen != generation {
            let fresh = self.verify_fresh(session, Some(&token), now)?;
            session.connection_token = Some((token, fresh.clone(), generation));
            return Ok(fresh);
        }
        verified.check_live(now)?;
        Ok(verified)
    }

    /// Per-request mode: the frame's token, through the connection memo and the cache when
    /// the cache is on.
    fn request_verified(
        &self,
        session: &mut Session,
        token: Option<&Bytes>,
        now: i64,
    ) -> Result<Arc<Verified>, AuthError> {
        let Some(token) = token else {
            return Err(AuthError::MissingToken);
        };
        let Some(cache) = &self.cache else {
            return self.verify_fresh(session, Some(token), now);
        };
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((last, verified, seen)) = &session.last {
            if *seen == generation && last == token {
                // Same bytes, same connection (so the binding was already checked against
                // this certificate), same keyset: only the clock can have changed.
                if let Some(m) = crate::metrics::get() {
                    m.token_cache(true);
                }
                verified.check_live(now)?;
                return Ok(verified.clone());
            }
        }
        if let Some(err) = self.refusals.cached(token, generation) {
            return Err(err);
        }
        let verified = self
            .verifier
            .load()
            .verify_cached(cache, token, session.thumbprint.as_ref(), now)
            .inspect_err(|err| self.refusals.remember(token, err, generation))?;
        session.last = Some((token.clone(), verified.clone(), generation));
        Ok(verified)
    }

    fn verify_fresh(
        &self,
        session: &Session,
        token: Option<&Bytes>,
        now: i64,
    ) -> Result<Arc<Verified>, AuthError> {
        let Some(token) = token else {
            return Err(AuthError::MissingToken);
        };
        // Read before the verifier: a refusal remembered across a reload is filed under the
        // older generation, which no lookup asks for any more.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(err) = self.refusals.cached(token, generation) {
            return Err(err);
        }
        self.verifier
            .load()
            .verify_for_peer(token, session.thumbprint.as_ref(), now)
            .inspect_err(|err| self.refusals.remember(token, err, generation))
            .map(Arc::new)
    }

    /// A refused oversized token that never reached the verifier (the frame decoder stops
    /// it): audited like any other refusal.
    pub(crate) fn deny_oversized_token(&self, session: &Session, len: usize) -> Refusal {
        let err = AuthError::TooLarge {
            len,
            max: skv_proto::MAX_TOKEN_LEN,
        };
        self.deny(session, None, "unknown", None, &err);
        Refusal::from(err.category())
    }

    /// Audit a request refused for the role of the connection's certificate (a client using
    /// the peer protocol, a node certificate asking for client rights), before any token is
    /// looked at.
    pub(crate) fn deny_role(&self, session: &Session, op: &str, reason: &str) {
        if let Some(m) = crate::metrics::get() {
            // The backoff of repeated failures is refused through here too.
            let code = if reason.starts_with("rate limited") {
                "auth_backoff"
            } else {
                "wrong_role"
            };
            m.refusal("role", code);
        }
        if let Some(audit) = &self.audit {
            audit.record(self.record(session, None, op, None, Decision::Deny, reason));
        }
    }

    fn deny(
        &self,
        session: &Session,
        verified: Option<&Verified>,
        op: &str,
        target: Option<&[u8]>,
        err: &AuthError,
    ) {
        if let Some(m) = crate::metrics::get() {
            let checkpoint = match err.category() {
                AuthCategory::Forbidden => "scope",
                _ => "token",
            };
            m.refusal(checkpoint, err.reason_code());
        }
        if let Some(audit) = &self.audit {
            let reason = err.to_string();
            audit.record(self.record(session, verified, op, target, Decision::Deny, &reason));
        }
    }

    fn record<'a>(
        &'a self,
        session: &'a Session,
        verified: Option<&'a Verified>,
        op: &'a str,
        target: Option<&[u8]>,
        decision: Decision,
        reason: &'a str,
    ) -> AuditRecord<'a> {
        AuditRecord {
            time: audit::now_rfc3339(),
            node: &self.node,
            peer: &session.fingerprint,
            sub: verified.map(Verified::sub),
            jti: verified.map(Verified::jti),
            op,
            key: target.map(audit::printable_key),
            decision,
            reason,
            dropped_before: 0,
        }
    }
}

/// The key or scan prefix a request touches.
fn target_of(body: &RequestBody) -> Option<&[u8]> {
    match body {
        RequestBody::Get { key }
        | RequestBody::Put { key, .. }
        | RequestBody::Delete { key }
        | RequestBody::Cas { key, .. } => Some(key),
        RequestBody::Scan { prefix, .. } => Some(prefix),
        RequestBody::Hello { .. }
        | RequestBody::Ping
        | RequestBody::ClusterMap
        | RequestBody::Control { .. }
        | RequestBody::Import { .. }
        | RequestBody::Raft { .. } => None,
    }
}

fn warn_if_shared_secrets(keyset: &Keyset) {
    if keyset.has_shared_secrets() {
        tracing::warn!(
            "the keyset holds HS256 secrets: this node can mint tokens for the whole cluster; \
             prefer EdDSA, ES256 or RS256 (see docs/SECURITY.md)"
        );
    }
}

/// What identifies a version of the keyset file: modification time, size and inode (an
/// atomic rename changes the inode even within one mtime tick).
fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
