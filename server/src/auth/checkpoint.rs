//! The node's token checkpoint on the request path: which token applies to a request (the
//! one in the frame, or the connection's), verifying it (through the cache when enabled),
//! checking its scopes, and writing the audit line.
//!
//! The verification machinery itself lives in [`crate::auth`]; this module owns the policy
//! of *when* it runs, the live keyset and denylist (each swapped atomically on reload, so
//! requests never take a lock to read them), and the per-connection [`Session`].
//!
//! The denylist is checked after verification on every path that admits a token: a fresh
//! verification, a cache hit, the connection's memo, and the per-connection HELLO token on
//! each request. So a revocation reaches tokens already verified, not only new ones.

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
use crate::auth::handles::{Handles, RegisterError, Registered};
use crate::auth::refusals::{PeerKey, Refusals};
use crate::auth::{
    unix_now, AuthCategory, AuthError, CertThumbprint, Keyset, KeysetError, Policy, Revocations,
    TokenCache, Verified, Verifier,
};
use crate::config::{AuthConfig, AuthMode};
use skv_token::denylist::DenylistError;

/// How often the keyset and denylist files are checked for changes: the reload interval a
/// revocation takes to reach a node (docs/SECURITY.md, "Revoking a token").
const KEYSET_POLL: Duration = Duration::from_secs(1);

/// A checkpoint that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The keyset file is missing or invalid.
    #[error(transparent)]
    Keyset(#[from] KeysetError),
    /// The denylist file is missing or invalid.
    #[error(transparent)]
    Denylist(#[from] DenylistError),
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
    /// Protocol version 2 and later: the tokens this connection registered. `None` on a
    /// version-1 connection, which may neither register tokens nor name handles.
    handles: Option<Handles>,
    /// The clock of the requests the connection is handling as one batch; see
    /// [`Session::begin_batch`].
    batch_clock: BatchClock,
}

/// What [`Session::now`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BatchClock {
    /// No batch open: every request reads the clock.
    Off,
    /// A batch is open and has not read the clock yet.
    Unread,
    /// A batch is open and read the clock at this second.
    Read(i64),
}

/// What a request presents to say who sends it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Presented<'a> {
    /// The token in the frame, if any.
    Token(Option<&'a Bytes>),
    /// A token handle this connection registered (protocol version 2).
    Handle(u32),
}

/// Who an authorized request proved to be, handed to the per-identity rate limit that runs
/// next.
#[derive(Debug)]
pub(crate) enum Granted {
    /// No token was asked for: PING, or a node without a checkpoint.
    Nothing,
    /// A token verified for this request (carried in it, the connection's HELLO token, or
    /// just registered).
    Token(Arc<Verified>),
    /// A token this connection registered, named by its handle. The verified token stays in
    /// the session and is read from there: every connection presenting the same token shares
    /// one `Arc<Verified>` through the verified-token cache, so cloning it per request would
    /// bounce its reference count between the cores on every request.
    Handle(u32),
}

impl Granted {
    /// The verified token behind this grant, if any.
    pub(crate) fn verified<'a>(&'a self, session: &'a Session) -> Option<&'a Verified> {
        match self {
            Granted::Nothing => None,
            Granted::Token(verified) => Some(verified),
            Granted::Handle(handle) => session
                .handles
                .as_ref()
                .and_then(|h| h.get(*handle))
                .map(|r| &*r.verified),
        }
    }

    /// The verified token behind this grant as a shared handle of its own, for tests that
    /// look at what a request was granted after the session moves on.
    #[cfg(test)]
    pub(crate) fn into_verified(self, session: &Session) -> Option<Arc<Verified>> {
        match self {
            Granted::Nothing => None,
            Granted::Token(verified) => Some(verified),
            Granted::Handle(handle) => session
                .handles
                .as_ref()
                .and_then(|h| h.get(handle))
                .map(|r| Arc::clone(&r.verified)),
        }
    }
}

/// What a request naming a handle this connection does not hold is told.
const UNKNOWN_HANDLE: Refusal = Refusal {
    code: ErrorCode::UnknownHandle,
    message: "this connection holds no such token handle (handles are local to the \
              connection that registered them); register the token again",
};

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
            handles: None,
            batch_clock: BatchClock::Off,
        }
    }

    /// The connection starts handling requests it read off the socket together: until
    /// [`Session::end_batch`], [`Session::now`] reads the clock once and keeps it. Every
    /// request of the batch had arrived when that read happened (the batch is what was already
    /// buffered), so each is still judged, expiry and blocks included, by a time no earlier
    /// than its arrival; what is saved is a clock read per request (2 % of the node's CPU at
    /// inflight 16, docs/BENCHMARKS.md).
    pub(crate) fn begin_batch(&mut self) {
        self.batch_clock = BatchClock::Unread;
    }

    /// The batch begun by [`Session::begin_batch`] is done: the next request reads the clock.
    pub(crate) fn end_batch(&mut self) {
        self.batch_clock = BatchClock::Off;
    }

    /// Seconds since the Unix epoch for the request being decided: the batch's, or the clock.
    fn now(&mut self) -> i64 {
        match self.batch_clock {
            BatchClock::Read(now) => now,
            BatchClock::Unread => {
                let now = unix_now();
                self.batch_clock = BatchClock::Read(now);
                now
            }
            BatchClock::Off => unix_now(),
        }
    }

    /// The connection negotiated protocol version 2 or later: it may register tokens and
    /// name them by handle.
    pub(crate) fn allow_handles(&mut self) {
        self.handles.get_or_insert_with(Handles::default);
    }

    /// Whether [`Session::allow_handles`] was called.
    pub(crate) fn speaks_handles(&self) -> bool {
        self.handles.is_some()
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
    /// `--denylist FILE`, if given.
    denylist_path: Option<PathBuf>,
    /// The file's stamp read just before the first load: the watcher starts from it, so a
    /// change between that load and the watcher's start is not missed.
    denylist_loaded: Option<FileStamp>,
    /// The revocations in force; empty without a denylist.
    revocations: ArcSwap<Revocations>,
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
        // A denylist that was asked for but cannot be read stops the node: starting without
        // the revocations it holds would readmit every revoked token.
        let denylist_loaded = config.denylist.as_deref().and_then(file_stamp);
        let revocations = match &config.denylist {
            Some(path) => Revocations::load(path, unix_now(), leeway_secs(&policy))?,
            None => Revocations::none(),
        };
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
            denylist_path: config.denylist.clone(),
            denylist_loaded,
            revocations: ArcSwap::from_pointee(revocations),
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

    /// Re-read the denylist file, if there is one; returns the entries in force. On any error
    /// the current list stays in force.
    pub(crate) fn reload_denylist(&self) -> Result<Option<usize>, CheckpointError> {
        let Some(path) = &self.denylist_path else {
            return Ok(None);
        };
        let revocations = Revocations::load(path, unix_now(), leeway_secs(&self.policy))?;
        let entries = revocations.len();
        self.revocations.store(Arc::new(revocations));
        Ok(Some(entries))
    }

    /// Reload the denylist, logging the outcome.
    fn reload_denylist_and_log(&self) {
        let path = self.denylist_path.as_deref().unwrap_or(Path::new(""));
        let started = std::time::Instant::now();
        match self.reload_denylist() {
            Ok(Some(entries)) => tracing::info!(
                denylist = %path.display(),
                entries,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "denylist reloaded"
            ),
            Ok(None) => {}
            Err(err) => tracing::error!(
                denylist = %path.display(),
                error = %err,
                "denylist reload failed; keeping the previous denylist"
            ),
        }
    }

    /// Reload on SIGHUP-style demand (the keyset and the denylist), logging the outcome.
    pub(crate) fn reload_and_log(&self) {
        self.reload_keyset_and_log();
        self.reload_denylist_and_log();
    }

    /// Reload the keyset, logging the outcome.
    fn reload_keyset_and_log(&self) {
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

    /// Watch the keyset and denylist files and reload each when it changes, until `shutdown`.
    pub(crate) fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let mut last = file_stamp(&self.keyset_path);
            let denylist_stamp = || self.denylist_path.as_deref().and_then(file_stamp);
            let mut last_denylist = self.denylist_loaded;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(KEYSET_POLL) => {}
                }
                let now = file_stamp(&self.keyset_path);
                if now != last {
                    last = now;
                    self.reload_keyset_and_log();
                }
                let now = denylist_stamp();
                if now != last_denylist {
                    last_denylist = now;
                    // Reading and parsing a full list (4 MiB) takes a while; off the async
                    // workers, so requests are not held up behind it.
                    let this = Arc::clone(&self);
                    let _ =
                        tokio::task::spawn_blocking(move || this.reload_denylist_and_log()).await;
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
        if self.refusals.blocked(&session.peers, unix_now()) {
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
        self.revocations
            .load()
            .check(&verified, now)
            .map_err(|err| {
                self.refusals.failed(&session.peers);
                self.deny(session, Some(&verified), "hello", None, &err);
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
                    Ok(verified) => match self.revocations.load().check(&verified, now) {
                        Ok(()) => true,
                        Err(err) => {
                            self.deny(session, Some(&verified), "hello", None, &err);
                            false
                        }
                    },
                    Err(err) => {
                        self.deny(session, None, "hello", None, &err);
                        false
                    }
                }
            }
        }
    }

    /// Decide one request carrying `token` (or none). PING needs no token: it reveals nothing
    /// and serves health checks.
    #[cfg(test)]
    pub(crate) fn authorize(
        &self,
        session: &mut Session,
        token: Option<&Bytes>,
        body: &RequestBody,
    ) -> Result<Option<Arc<Verified>>, Refusal> {
        let granted = self.authorize_presented(session, Presented::Token(token), body)?;
        Ok(granted.into_verified(session))
    }

    /// Decide one request, by the token it carries or the handle it names.
    pub(crate) fn authorize_presented(
        &self,
        session: &mut Session,
        presented: Presented<'_>,
        body: &RequestBody,
    ) -> Result<Granted, Refusal> {
        let op = body.op();
        let Some(required) = ScopeOp::required_for(op) else {
            return Ok(Granted::Nothing);
        };
        let target = target_of(body);
        // A handle this connection never registered (or a handle on a version-1 connection)
        // names nobody: nothing to verify, and nothing an attacker learns, since handles mean
        // something only on the connection that registered them.
        if let Presented::Handle(handle) = presented {
            if self.mode == AuthMode::PerRequest
                && session
                    .handles
                    .as_mut()
                    .and_then(|h| h.get_mut(handle))
                    .is_none()
            {
                self.deny_unknown_handle(session, op.as_str(), target);
                return Err(UNKNOWN_HANDLE);
            }
        }
        // A blocked peer still gets what costs nothing: a token this connection or the cache
        // already verified. So a client sharing an address with an attacker keeps working
        // with the token it has; only new verifications are refused.
        // One clock read serves the block check and the token's expiry (and, in a batch, the
        // batch's other requests).
        let now = session.now();
        if self.refusals.blocked(&session.peers, now) && !self.already_verified(session, presented)
        {
            self.deny_role(
                session,
                op.as_str(),
                "rate limited after repeated failed authentication",
            );
            return Err(RATE_LIMITED);
        }
        let granted = match (self.mode, presented) {
            (AuthMode::PerConnection, _) => {
                self.connection_verified(session, now).map(Granted::Token)
            }
            (_, Presented::Token(token)) => self
                .request_verified(session, token, now)
                .map(Granted::Token),
            (_, Presented::Handle(handle)) => self
                .handle_verified(session, handle, now)
                .map(|()| Granted::Handle(handle)),
        };
        let granted = match granted {
            Ok(g) => g,
            Err(err) => {
                self.refusals.failed(&session.peers);
                self.deny(session, None, op.as_str(), target, &err);
                return Err(Refusal::from(err.category()));
            }
        };
        // From here on the session is only read, so the token a handle names is borrowed
        // from it rather than cloned.
        let session = &*session;
        let Some(verified) = granted.verified(session) else {
            // `handle_verified` just found the handle; kept total rather than trusted.
            self.deny(session, None, op.as_str(), target, &AuthError::MissingToken);
            return Err(UNKNOWN_HANDLE);
        };
        // After every way of getting `verified` (fresh, cached, memo, HELLO token): a
        // revocation must reach tokens that were verified before it.
        if let Err(err) = self.revocations.load().check(verified, now) {
            self.refusals.failed(&session.peers);
            self.deny(session, Some(verified), op.as_str(), target, &err);
            return Err(Refusal::from(err.category()));
        }
        let scoped = match body {
            RequestBody::Scan { prefix, .. } => verified.authorize_scan(prefix),
            _ => verified.authorize(required, target.unwrap_or_default()),
        };
        match scoped {
            Ok(()) => {
                if let Some(audit) = self.audit.as_ref().filter(|a| a.logs_allows()) {
                    audit.record(self.record(
                        session,
                        Some(verified),
                        op.as_str(),
                        target,
                        Decision::Allow,
                        "allowed",
                    ));
                }
                // Handed back for the per-identity rate limit's subject.
                Ok(granted)
            }
            Err(err) => {
                self.deny(session, Some(verified), op.as_str(), target, &err);
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
    fn already_verified(&self, session: &mut Session, presented: Presented<'_>) -> bool {
        let generation = self.generation.load(Ordering::Acquire);
        let token = match presented {
            Presented::Token(token) => token,
            Presented::Handle(handle) => {
                return self.mode != AuthMode::PerRequest
                    || session
                        .handles
                        .as_mut()
                        .and_then(|h| h.get_mut(handle))
                        .is_some_and(|r| r.generation == generation);
            }
        };
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

    /// Per-request mode, a request naming a handle: the registered token, verified again in
    /// full if the keyset changed since it was last checked, and checked for expiry every
    /// time. The binding was checked against this connection's certificate at registration,
    /// and the connection cannot change certificates.
    fn handle_verified(
        &self,
        session: &mut Session,
        handle: u32,
        now: i64,
    ) -> Result<(), AuthError> {
        let generation = self.generation.load(Ordering::Acquire);
        // Checked by the caller; kept total rather than trusted.
        let Some(entry) = session.handles.as_mut().and_then(|h| h.get_mut(handle)) else {
            return Err(AuthError::MissingToken);
        };
        if entry.generation == generation {
            // The common case: one look at the clock, no copy of the token.
            if let Some(m) = crate::metrics::get() {
                m.token_cache(true);
            }
            return entry.verified.check_live(now);
        }
        // The keyset changed since: verify again in full. A refusal leaves the entry stale,
        // so every later request naming the handle is refused the same way (through the
        // negative cache, at no new verification).
        let token = entry.token.clone();
        let fresh = self.verify_fresh(session, Some(&token), now)?;
        if let Some(r) = session.handles.as_mut().and_then(|h| h.get_mut(handle)) {
            r.verified = fresh;
            r.generation = generation;
        }
        Ok(())
    }

    /// REGISTER_TOKEN (protocol version 2): verify `token` as a request carrying it would be
    /// (signature, claims, the binding to this connection's certificate, the denylist) and
    /// name it by a handle on this connection. The same token bytes registered again get the
    /// handle they already have. Returns the handle and what the token verified to (for the
    /// per-identity rate limit, which charges the registration like any request).
    pub(crate) fn register(
        &self,
        session: &mut Session,
        token: &Bytes,
    ) -> Result<(u32, Arc<Verified>), Refusal> {
        const OP: &str = "register_token";
        if self.mode != AuthMode::PerRequest {
            return Err(Refusal {
                code: ErrorCode::UnknownOp,
                message: "this node does not read tokens per request (--auth per-connection), \
                          so it has no use for token handles",
            });
        }
        if !session.speaks_handles() {
            return Err(Refusal {
                code: ErrorCode::UnknownOp,
                message: "REGISTER_TOKEN needs protocol version 2; this connection negotiated 1",
            });
        }
        if self.refusals.blocked(&session.peers, unix_now())
            && !self.already_verified(session, Presented::Token(Some(token)))
        {
            self.deny_role(
                session,
                OP,
                "rate limited after repeated failed authentication",
            );
            return Err(RATE_LIMITED);
        }
        let now = unix_now();
        let generation = self.generation.load(Ordering::Acquire);
        let verified = match self.request_verified(session, Some(token), now) {
            Ok(v) => v,
            Err(err) => {
                self.refusals.failed(&session.peers);
                self.deny(session, None, OP, None, &err);
                return Err(Refusal::from(err.category()));
            }
        };
        // A revoked token verifies: its audit line names whose it is.
        if let Err(err) = self.revocations.load().check(&verified, now) {
            self.refusals.failed(&session.peers);
            self.deny(session, Some(&verified), OP, None, &err);
            return Err(Refusal::from(err.category()));
        }
        let handles = session.handles.get_or_insert_with(Handles::default);
        let handle = if let Some((handle, r)) = handles.find_token(token) {
            r.verified = verified.clone();
            r.generation = generation;
            handle
        } else {
            let entry = Registered {
                token: token.clone(),
                verified: verified.clone(),
                generation,
            };
            match handles.insert(entry, now) {
                Ok(handle) => handle,
                Err(RegisterError::Full) => {
                    return Err(Refusal {
                        code: ErrorCode::TooManyHandles,
                        message: "this connection holds its maximum of 64 live token handles; \
                                  open another connection",
                    })
                }
                Err(RegisterError::Exhausted) => {
                    return Err(Refusal {
                        code: ErrorCode::TooManyHandles,
                        message: "this connection has used up its token handles; open another \
                                  connection",
                    })
                }
            }
        };
        if let Some(audit) = self.audit.as_ref().filter(|a| a.logs_allows()) {
            audit.record(self.record(
                session,
                Some(&verified),
                OP,
                None,
                Decision::Allow,
                "allowed",
            ));
        }
        Ok((handle, verified))
    }

    fn deny_unknown_handle(&self, session: &Session, op: &str, target: Option<&[u8]>) {
        if let Some(m) = crate::metrics::get() {
            m.refusal("token", "unknown_handle");
        }
        if let Some(audit) = &self.audit {
            audit.record(self.record(
                session,
                None,
                op,
                target,
                Decision::Deny,
                "unknown token handle",
            ));
        }
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
        | RequestBody::Raft { .. }
        | RequestBody::RegisterToken { .. } => None,
    }
}

/// The policy's leeway in whole seconds: how long past its exp a denylist entry is honoured.
fn leeway_secs(policy: &Policy) -> i64 {
    i64::try_from(policy.leeway.as_secs()).unwrap_or(i64::MAX)
}

fn warn_if_shared_secrets(keyset: &Keyset) {
    if keyset.has_shared_secrets() {
        tracing::warn!(
            "the keyset holds HS256 secrets: this node can mint tokens for the whole cluster; \
             prefer EdDSA, ES256 or RS256 (see docs/SECURITY.md)"
        );
    }
}

/// What identifies a version of the keyset or denylist file: modification time, size and
/// inode (an atomic rename changes the inode even within one mtime tick).
type FileStamp = (SystemTime, u64, u64);

fn file_stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skv_certs::issuer::{inspect, mint, IssuerKey, TokenSpec};
    use skv_proto::MAX_HANDLES_PER_CONNECTION;
    use skv_token::{parse_allow, Alg, JwkSet};

    const AUD: &str = "dev";

    struct World {
        _dir: tempfile::TempDir,
        key: IssuerKey,
        denylist: PathBuf,
        config: AuthConfig,
    }

    fn world(mode: AuthMode) -> World {
        let dir = tempfile::tempdir().unwrap();
        let key = IssuerKey::generate(Alg::EdDSA, Some("k1".into())).unwrap();
        let keyset = dir.path().join("keyset.json");
        let jwks = JwkSet {
            keys: vec![key.public_jwk().clone()],
        };
        std::fs::write(&keyset, serde_json::to_vec(&jwks).unwrap()).unwrap();
        let denylist = dir.path().join("denylist.json");
        std::fs::write(&denylist, "{\"entries\": []}").unwrap();
        let config = AuthConfig {
            keyset,
            denylist: Some(denylist.clone()),
            mode,
            token_cache: 16,
            audience: AUD.into(),
            issuer: skv_token::DEFAULT_TOKEN_ISSUER.into(),
            leeway: Duration::from_secs(5),
            require_bound_tokens: false,
            audit_log: None,
            audit_allows: false,
            audit_max_files: 1,
            audit_max_bytes: 1 << 20,
        };
        World {
            _dir: dir,
            key,
            denylist,
            config,
        }
    }

    impl World {
        fn token(&self, sub: &str) -> (Bytes, String) {
            let token = mint(
                &self.key,
                &TokenSpec {
                    sub: sub.into(),
                    scopes: vec![parse_allow("read:").unwrap()],
                    ttl: Duration::from_secs(300),
                    aud: AUD.into(),
                    iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
                    bind_cert_der: None,
                },
            )
            .unwrap();
            let jti = inspect(&token).unwrap().claims["jti"]
                .as_str()
                .unwrap()
                .to_owned();
            (Bytes::from(token), jti)
        }

        fn deny(&self, text: &str) {
            std::fs::write(&self.denylist, text).unwrap();
        }
    }

    fn get() -> RequestBody {
        RequestBody::Get {
            key: Bytes::from_static(b"k"),
        }
    }

    fn revoked(result: Result<Option<Arc<Verified>>, Refusal>) -> bool {
        match result {
            Err(r) => {
                assert_eq!(r.code, ErrorCode::Unauthenticated);
                assert!(r.message.starts_with("token revoked"), "{}", r.message);
                true
            }
            Ok(_) => false,
        }
    }

    #[test]
    fn a_revoked_token_is_refused_through_the_memo_and_the_cache() {
        let w = world(AuthMode::PerRequest);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let (token, jti) = w.token("alice");
        let (other, _) = w.token("alice");
        let mut session = Session::new(None);
        // Verified once, then served from the connection's memo and the shared cache.
        assert!(!revoked(cp.authorize(&mut session, Some(&token), &get())));
        assert!(!revoked(cp.authorize(&mut session, Some(&token), &get())));

        w.deny(&format!(
            "{{\"entries\": [{{\"jti\": \"{jti}\", \"exp\": {}}}]}}",
            unix_now() + 300
        ));
        assert_eq!(cp.reload_denylist().unwrap(), Some(1));
        assert!(revoked(cp.authorize(&mut session, Some(&token), &get())));
        let mut fresh = Session::new(None);
        assert!(revoked(cp.authorize(&mut fresh, Some(&token), &get())));
        // Another token of the same subject is not touched by a jti entry.
        assert!(!revoked(cp.authorize(&mut fresh, Some(&other), &get())));

        // A broken file keeps the list in force.
        w.deny("{\"entries\": [");
        assert!(matches!(
            cp.reload_denylist(),
            Err(CheckpointError::Denylist(_))
        ));
        assert!(revoked(cp.authorize(&mut session, Some(&token), &get())));

        // By sub: every token of the subject.
        w.deny(&format!(
            "{{\"entries\": [{{\"sub\": \"alice\", \"exp\": {}}}]}}",
            unix_now() + 300
        ));
        cp.reload_denylist().unwrap();
        assert!(revoked(cp.authorize(&mut fresh, Some(&other), &get())));
        let (bob, _) = w.token("bob");
        assert!(!revoked(cp.authorize(&mut fresh, Some(&bob), &get())));

        // An entry past its exp (and the leeway) is dropped at load.
        w.deny(&format!(
            "{{\"entries\": [{{\"sub\": \"alice\", \"exp\": {}}}]}}",
            unix_now() - 6
        ));
        assert_eq!(cp.reload_denylist().unwrap(), Some(0));
        assert!(!revoked(cp.authorize(&mut fresh, Some(&other), &get())));
    }

    #[test]
    fn a_per_connection_session_is_cut_off_on_its_next_request() {
        let w = world(AuthMode::PerConnection);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let (token, _) = w.token("carol");
        let mut session = Session::new(None);
        cp.hello(&mut session, Some(&token)).unwrap();
        assert!(!revoked(cp.authorize(&mut session, None, &get())));
        w.deny(&format!(
            "{{\"entries\": [{{\"sub\": \"carol\", \"exp\": {}}}]}}",
            unix_now() + 300
        ));
        cp.reload_denylist().unwrap();
        assert!(revoked(cp.authorize(&mut session, None, &get())));
        // And a new connection with the token is refused at HELLO.
        let mut again = Session::new(None);
        let refusal = cp.hello(&mut again, Some(&token)).unwrap_err();
        assert!(refusal.message.starts_with("token revoked"));
    }

    impl World {
        fn token_for(&self, sub: &str, allow: &str, ttl: Duration) -> Bytes {
            let token = mint(
                &self.key,
                &TokenSpec {
                    sub: sub.into(),
                    scopes: vec![parse_allow(allow).unwrap()],
                    ttl,
                    aud: AUD.into(),
                    iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
                    bind_cert_der: None,
                },
            )
            .unwrap();
            Bytes::from(token)
        }
    }

    fn put(key: &'static [u8]) -> RequestBody {
        RequestBody::Put {
            key: Bytes::from_static(key),
            value: Bytes::from_static(b"v"),
        }
    }

    fn by_handle(
        cp: &Checkpoint,
        session: &mut Session,
        handle: u32,
        body: &RequestBody,
    ) -> Result<Option<Arc<Verified>>, Refusal> {
        let granted = cp.authorize_presented(session, Presented::Handle(handle), body)?;
        Ok(granted.into_verified(session))
    }

    fn handle_session() -> Session {
        let mut session = Session::new(None);
        session.allow_handles();
        session
    }

    #[test]
    fn a_handle_is_checked_for_scopes_and_revocation_on_every_request() {
        let w = world(AuthMode::PerRequest);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let token = w.token_for("dana", "read,write:dana/", Duration::from_secs(300));
        let mut session = handle_session();
        let (handle, _) = cp.register(&mut session, &token).unwrap();
        assert_ne!(handle, 0, "handle 0 is never handed out");
        // The same bytes again: the same handle, no second slot.
        assert_eq!(cp.register(&mut session, &token).unwrap().0, handle);

        let own = put(b"dana/x");
        let verified = by_handle(&cp, &mut session, handle, &own).unwrap().unwrap();
        assert_eq!(verified.sub(), "dana");
        // Outside the grant, refused with the scope's words, request after request.
        for _ in 0..2 {
            let refusal = by_handle(&cp, &mut session, handle, &put(b"erin/x")).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::Forbidden);
            assert_eq!(
                refusal.message,
                "the token does not grant write on this key"
            );
        }
        let delete = RequestBody::Delete {
            key: Bytes::from_static(b"dana/x"),
        };
        assert_eq!(
            by_handle(&cp, &mut session, handle, &delete)
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );

        // A revocation reaches a token registered before it.
        w.deny(&format!(
            "{{\"entries\": [{{\"sub\": \"dana\", \"exp\": {}}}]}}",
            unix_now() + 300
        ));
        cp.reload_denylist().unwrap();
        assert!(revoked(by_handle(&cp, &mut session, handle, &own)));
        assert!(revoked(by_handle(&cp, &mut session, handle, &own)));
        // And a revoked token cannot be registered anew.
        let mut other = handle_session();
        let refusal = cp.register(&mut other, &token).unwrap_err();
        assert!(
            refusal.message.starts_with("token revoked"),
            "{}",
            refusal.message
        );
    }

    #[test]
    fn a_batch_reads_the_clock_once_and_only_its_own_requests_use_that_reading() {
        let w = world(AuthMode::PerRequest);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let (token, _) = w.token("gina");
        let mut session = Session::new(None);
        assert_eq!(session.batch_clock, BatchClock::Off);
        session.begin_batch();
        assert!(cp.authorize(&mut session, Some(&token), &get()).is_ok());
        let BatchClock::Read(read_at) = session.batch_clock else {
            panic!(
                "the batch's first request read no clock: {:?}",
                session.batch_clock
            );
        };
        // The batch's later requests are judged by that reading, not by the clock: had the
        // batch read the clock an hour on, its five-minute token would be expired for all of
        // them, memo and cache notwithstanding.
        session.batch_clock = BatchClock::Read(read_at + 3600);
        for _ in 0..2 {
            let refusal = cp
                .authorize(&mut session, Some(&token), &get())
                .unwrap_err();
            assert_eq!(
                refusal.code,
                ErrorCode::Unauthenticated,
                "{}",
                refusal.message
            );
        }
        // The reading ends with the batch: the next request reads the clock again.
        session.end_batch();
        assert_eq!(session.batch_clock, BatchClock::Off);
        assert!(cp.authorize(&mut session, Some(&token), &get()).is_ok());
        assert_eq!(session.batch_clock, BatchClock::Off);
    }

    #[test]
    fn a_handle_names_nothing_on_another_connection_or_before_version_2() {
        let w = world(AuthMode::PerRequest);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let (token, _) = w.token("frank");
        let mut session = handle_session();
        let (handle, _) = cp.register(&mut session, &token).unwrap();
        let mut thief = handle_session();
        let refusal = by_handle(&cp, &mut thief, handle, &get()).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::UnknownHandle);
        assert_eq!(
            by_handle(&cp, &mut session, handle + 1, &get())
                .unwrap_err()
                .code,
            ErrorCode::UnknownHandle
        );
        // PING needs nothing, whatever handle it names.
        assert!(by_handle(&cp, &mut thief, handle, &RequestBody::Ping)
            .unwrap()
            .is_none());
        let mut v1 = Session::new(None);
        assert_eq!(
            cp.register(&mut v1, &token).unwrap_err().code,
            ErrorCode::UnknownOp
        );
        // A forged token registers nothing, and the refusal is the token's own.
        let forged = Bytes::from(format!("{}x", String::from_utf8_lossy(&token)));
        assert_eq!(
            cp.register(&mut thief, &forged).unwrap_err().code,
            ErrorCode::Unauthenticated
        );
        // Per-connection nodes take the token at HELLO and have no use for handles.
        let pc = Checkpoint::new(&world(AuthMode::PerConnection).config, "n1").unwrap();
        let mut session = handle_session();
        assert_eq!(
            pc.register(&mut session, &token).unwrap_err().code,
            ErrorCode::UnknownOp
        );
    }

    #[test]
    fn a_keyset_change_verifies_the_token_behind_a_handle_again() {
        let w = world(AuthMode::PerRequest);
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let (token, _) = w.token("gina");
        let mut session = handle_session();
        let (handle, _) = cp.register(&mut session, &token).unwrap();
        assert!(by_handle(&cp, &mut session, handle, &get()).is_ok());
        // The token's key is retired: a new keyset without k1.
        let k2 = IssuerKey::generate(Alg::EdDSA, Some("k2".into())).unwrap();
        let jwks = JwkSet {
            keys: vec![k2.public_jwk().clone()],
        };
        std::fs::write(&w.config.keyset, serde_json::to_vec(&jwks).unwrap()).unwrap();
        cp.reload().unwrap();
        for _ in 0..3 {
            let refusal = by_handle(&cp, &mut session, handle, &get()).unwrap_err();
            assert_eq!(refusal.code, ErrorCode::Unauthenticated);
        }
    }

    #[test]
    fn handles_are_bounded_and_expired_ones_make_room() {
        let mut w = world(AuthMode::PerRequest);
        w.config.leeway = Duration::ZERO;
        let cp = Checkpoint::new(&w.config, "n1").unwrap();
        let mut session = handle_session();
        // One token that expires within the test, then live ones up to the cap.
        let short = w.token_for("short", "read:", Duration::from_secs(1));
        let (short_handle, _) = cp.register(&mut session, &short).unwrap();
        let mut handles = vec![short_handle];
        for i in 1..MAX_HANDLES_PER_CONNECTION {
            let token = w.token_for(&format!("u{i}"), "read:", Duration::from_secs(300));
            handles.push(cp.register(&mut session, &token).unwrap().0);
        }
        let mut sorted = handles.clone();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            MAX_HANDLES_PER_CONNECTION,
            "handles are distinct"
        );
        let one_more = w.token_for("late", "read:", Duration::from_secs(300));
        assert_eq!(
            cp.register(&mut session, &one_more).unwrap_err().code,
            ErrorCode::TooManyHandles
        );
        // The short token expires: every request naming it is refused, and its slot is
        // reclaimed by the next registration, under a handle never used before.
        std::thread::sleep(Duration::from_millis(2100));
        let refusal = by_handle(&cp, &mut session, short_handle, &get()).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Unauthenticated);
        assert_eq!(refusal.message, AuthCategory::Expired.client_message());
        let (late, _) = cp.register(&mut session, &one_more).unwrap();
        assert!(!handles.contains(&late));
        assert_eq!(
            session.handles.as_ref().unwrap().len(),
            MAX_HANDLES_PER_CONNECTION
        );
        assert_eq!(
            by_handle(&cp, &mut session, short_handle, &get())
                .unwrap_err()
                .code,
            ErrorCode::UnknownHandle
        );
        assert!(by_handle(&cp, &mut session, handles[1], &get()).is_ok());
    }

    #[test]
    fn a_denylist_that_cannot_be_read_stops_the_start() {
        let w = world(AuthMode::PerRequest);
        w.deny("not json");
        assert!(matches!(
            Checkpoint::new(&w.config, "n1"),
            Err(CheckpointError::Denylist(_))
        ));
        std::fs::remove_file(&w.denylist).unwrap();
        let err = Checkpoint::new(&w.config, "n1").unwrap_err();
        assert!(err.to_string().contains("denylist.json"), "{err}");
    }
}
