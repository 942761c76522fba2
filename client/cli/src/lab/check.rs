//! `skv lab check`: the toolkit every lab's check.rs uses, and the report it returns.
//!
//! A checker gets a [`Ctx`] (the lab's DIR, its state, a runtime) and returns a [`Report`]
//! of one or more [`Part`]s ("break it", "fix it"). Each part lists what is still missing as
//! plain sentences; a part with nothing missing is solved. Checkers decide from evidence
//! that cannot be typed into a file: they replay the student's artifact against the running
//! node ([`Ctx::attempt`]), look for the world's flag (fresh at every start, kept only as a
//! salted hash) in what the student captured or read, and read the node's audit log and log.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use skv_client::{exit, ClientError, ClusterClient, ConnectOptions, Security};

use super::state::State;
use super::world::{self, NodeView};
use super::{Lab, Result, NOT_SOLVED};

/// DIR/.lab/own-requests: when the lab itself sent requests (see [`Ctx::own_audit`]).
const OWN_REQUESTS: &str = "own-requests";

/// One part of a lab ("break it", "fix it", or the whole lab).
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub(crate) name: String,
    /// What is still missing; empty when the part is solved.
    pub(crate) missing: Vec<String>,
    /// What the checker saw (shown either way): the evidence behind "solved".
    pub(crate) notes: Vec<String>,
}

impl Part {
    pub(crate) fn new(name: &str) -> Part {
        Part {
            name: name.to_owned(),
            missing: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub(crate) fn miss(&mut self, why: impl Into<String>) {
        self.missing.push(why.into());
    }

    pub(crate) fn note(&mut self, what: impl Into<String>) {
        self.notes.push(what.into());
    }

    /// Record `result`'s error as missing; returns the value if there was one.
    pub(crate) fn require<T>(&mut self, result: std::result::Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(why) => {
                self.miss(why);
                None
            }
        }
    }

    pub(crate) fn solved(&self) -> bool {
        self.missing.is_empty()
    }
}

/// What `check` says.
#[derive(Debug, Clone, Default)]
pub(crate) struct Report {
    pub(crate) parts: Vec<Part>,
}

impl Report {
    pub(crate) fn of(parts: Vec<Part>) -> Report {
        Report { parts }
    }

    pub(crate) fn solved(&self) -> bool {
        !self.parts.is_empty() && self.parts.iter().all(Part::solved)
    }
}

/// What a replayed request got.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The node answered the GET: the value, or `None` for a missing key.
    Value(Option<Bytes>),
    /// The node allowed a request that returns no value (a PUT, a SCAN): what it did.
    Allowed(String),
    /// The node refused or failed it.
    Error(ClientError),
}

/// A request a checker replays with [`Ctx::replay`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op<'a> {
    Get(&'a str),
    Put(&'a str, &'a [u8]),
    /// A scan of this prefix (one page).
    Scan(&'a str),
}

impl Outcome {
    /// The value read, if the request was allowed and the key exists.
    pub(crate) fn value(&self) -> Option<&Bytes> {
        match self {
            Outcome::Value(v) => v.as_ref(),
            Outcome::Allowed(_) | Outcome::Error(_) => None,
        }
    }

    /// The node allowed the request (whatever it found).
    pub(crate) fn allowed(&self) -> bool {
        !matches!(self, Outcome::Error(_))
    }

    /// Refused by the node for the credentials (not a transport failure).
    pub(crate) fn refused(&self) -> bool {
        matches!(self, Outcome::Error(ClientError::Refused(_)))
    }

    /// Failed before any request could be made: the TLS handshake (or the connection right
    /// after it, which is where TLS 1.3 reports a refused client certificate).
    pub(crate) fn handshake_failed(&self) -> bool {
        matches!(
            self,
            Outcome::Error(
                ClientError::Tls(_)
                    | ClientError::Disconnected { .. }
                    | ClientError::Protocol(_)
                    | ClientError::Timeout { .. }
            )
        )
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Outcome::Value(Some(v)) => format!("allowed: it read a {}-byte value", v.len()),
            Outcome::Value(None) => "allowed (the key does not exist)".into(),
            Outcome::Allowed(what) => format!("allowed: {what}"),
            Outcome::Error(e) => format!("refused: {e}"),
        }
    }
}

/// How a replayed request presents itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Attempt {
    /// Speak plaintext (no TLS at all).
    pub(crate) plaintext: bool,
    /// Client certificate and key to present (TLS); `None` presents none.
    pub(crate) identity: Option<(PathBuf, PathBuf)>,
    /// Bearer token to send.
    pub(crate) token: Option<String>,
}

/// Everything a checker may use.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The lab's directory (absolute).
    pub(crate) dir: PathBuf,
    pub(crate) state: State,
    lab: &'static Lab,
    rt: tokio::runtime::Runtime,
    /// The flag as the world's node holds it, read once (see [`Ctx::is_flag`]).
    flag: OnceLock<Option<String>>,
}

impl Ctx {
    pub(crate) fn new(lab: &'static Lab, dir: PathBuf, state: State) -> Result<Ctx> {
        Ok(Ctx {
            dir,
            state,
            lab,
            rt: world::runtime()?,
            flag: OnceLock::new(),
        })
    }

    /// `rel` inside DIR.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The student's artifact at DIR/`rel`, or why it cannot be used.
    pub(crate) fn artifact(&self, rel: &str, what: &str) -> std::result::Result<Vec<u8>, String> {
        let path = self.path(rel);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                Err(format!("{rel} is empty; it should hold {what}"))
            }
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "there is no {rel} in the lab directory; it should hold {what}"
            )),
            Err(e) => Err(format!("cannot read {rel}: {e}")),
        }
    }

    /// The student's artifact as trimmed text.
    pub(crate) fn artifact_text(
        &self,
        rel: &str,
        what: &str,
    ) -> std::result::Result<String, String> {
        let bytes = self.artifact(rel, what)?;
        String::from_utf8(bytes)
            .map(|s| s.trim().to_owned())
            .map_err(|_| format!("{rel} is not text: it should hold {what}"))
    }

    /// Whether `candidate` is this world's flag: it matches the salted hash recorded at
    /// start AND, when the node holding the flag answers, the value it holds. The second
    /// check is what makes an edited state.json (a hash of a flag of one's own) useless.
    pub(crate) fn is_flag(&self, candidate: &str) -> bool {
        let candidate = candidate.trim();
        world::flag_hash(&self.state.flag_salt, candidate) == self.state.flag_hash
            && self.world_flag().is_none_or(|flag| flag == candidate)
    }

    /// The flag read from the node the world seeded it on, as the lab's admin identity; `None`
    /// when that node does not answer.
    fn world_flag(&self) -> Option<&str> {
        self.flag
            .get_or_init(|| {
                let data = self
                    .lab
                    .spec()
                    .world
                    .data
                    .iter()
                    .find(|d| d.value.contains("{flag}"))?;
                let node = data
                    .node
                    .clone()
                    .or_else(|| self.lab.spec().world.nodes.first().map(|n| n.name.clone()))?;
                if !self.node_running(&node) {
                    return None;
                }
                let value = self.admin_get(&node, &data.key).value()?.clone();
                let flag = flag_candidates(&value).next().map(str::to_owned);
                flag
            })
            .as_deref()
    }

    /// Whether `bytes` contain this world's flag anywhere.
    pub(crate) fn contains_flag(&self, bytes: &[u8]) -> bool {
        flag_candidates(bytes).any(|c| self.is_flag(c))
    }

    /// Whether `bytes` contain something shaped like a flag (of this world or another).
    pub(crate) fn contains_flag_shape(bytes: &[u8]) -> bool {
        flag_candidates(bytes).next().is_some()
    }

    /// DIR/`rel` must hold this world's flag (and nothing else but whitespace).
    pub(crate) fn answer_is_flag(&self, rel: &str) -> std::result::Result<(), String> {
        let text = self.artifact_text(rel, "the flag you read, SKV{...}")?;
        if self.is_flag(&text) {
            Ok(())
        } else if Ctx::contains_flag_shape(text.as_bytes()) {
            Err(format!(
                "{rel} holds a flag, but not this world's (flags are new at every start: read \
                 it again from the running world)"
            ))
        } else {
            Err(format!(
                "{rel} does not hold the flag (SKV{{32 hex digits}})"
            ))
        }
    }

    /// Whether the lab started `node` and it still runs.
    pub(crate) fn node_running(&self, node: &str) -> bool {
        self.state
            .procs
            .iter()
            .any(|p| p.name == node && super::process::is_alive(p))
    }

    /// `Err` naming the fix unless `node` runs.
    pub(crate) fn require_running(&self, node: &str) -> std::result::Result<(), String> {
        if self.node_running(node) {
            Ok(())
        } else {
            Err(format!(
                "node {node} is not running (see logs/{node}.log); start it again with `skv lab \
                 restart {}`",
                self.state.lab
            ))
        }
    }

    /// The node's config as it is now.
    pub(crate) fn view(&self, node: &str) -> std::result::Result<NodeView, String> {
        world::node_view(&self.dir, node).map_err(|f| f.message)
    }

    /// The node's config as a TOML table, as it is now.
    pub(crate) fn node_config(&self, node: &str) -> std::result::Result<toml::Table, String> {
        let path = world::node_config(&self.dir, node);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read nodes/{node}.toml: {e}"))?;
        toml::from_str(&text).map_err(|e| format!("nodes/{node}.toml is not valid TOML: {e}"))
    }

    pub(crate) fn addr(&self, name: &str) -> std::result::Result<String, String> {
        self.state
            .addr(name)
            .map(str::to_owned)
            .map_err(|f| f.message)
    }

    /// Replay a GET of `key` on `node` presenting `attempt`.
    pub(crate) fn attempt(&self, node: &str, attempt: &Attempt, key: &str) -> Outcome {
        self.replay(node, attempt, Op::Get(key))
    }

    /// Connection options for `node` presenting `attempt`.
    pub(crate) fn attempt_options(
        &self,
        node: &str,
        attempt: &Attempt,
    ) -> std::result::Result<ConnectOptions, String> {
        let addr = self.addr(node)?;
        let security = if attempt.plaintext {
            Security::Plaintext
        } else {
            Security::Tls {
                ca: world::ca_cert(&self.dir),
                identity: attempt.identity.clone(),
            }
        };
        let mut opts = ConnectOptions::new(addr, security);
        opts.token = attempt.token.clone();
        opts.connect_timeout = Duration::from_secs(5);
        opts.request_timeout = Duration::from_secs(5);
        Ok(opts)
    }

    /// Replay `op` on `node` presenting `attempt`.
    pub(crate) fn replay(&self, node: &str, attempt: &Attempt, op: Op<'_>) -> Outcome {
        match self.attempt_options(node, attempt) {
            Ok(opts) => self.run_op(opts, Vec::new(), op),
            Err(e) => Outcome::Error(ClientError::Config(e)),
        }
    }

    /// Run `op` as the lab's admin identity, entering the cluster at `node` and, when it does
    /// not answer, at `seeds` (other nodes' addresses).
    pub(crate) fn admin_op(&self, node: &str, seeds: Vec<String>, op: Op<'_>) -> Outcome {
        match world::admin_options(&self.dir, &self.state, node) {
            Ok(opts) => self.run_op(opts, seeds, op),
            Err(f) => Outcome::Error(ClientError::Config(f.message)),
        }
    }

    fn run_op(&self, opts: ConnectOptions, seeds: Vec<String>, op: Op<'_>) -> Outcome {
        let result = self.block_on(async move {
            let client = ClusterClient::connect(opts, seeds).await?;
            match op {
                Op::Get(key) => client
                    .get(Bytes::copy_from_slice(key.as_bytes()))
                    .await
                    .map(|v| Outcome::Value(v.map(|(_, value)| value))),
                Op::Put(key, value) => client
                    .put(
                        Bytes::copy_from_slice(key.as_bytes()),
                        Bytes::copy_from_slice(value),
                    )
                    .await
                    .map(|version| Outcome::Allowed(format!("wrote {key} (version {version})"))),
                Op::Scan(prefix) => client
                    .scan(Bytes::copy_from_slice(prefix.as_bytes()), 1000, None)
                    .await
                    .map(|page| {
                        Outcome::Allowed(format!(
                            "the scan of {prefix:?} returned {} key(s)",
                            page.entries.len()
                        ))
                    }),
            }
        });
        result.unwrap_or_else(Outcome::Error)
    }

    /// GET `key` on `node` as the lab's admin identity (to see what the node holds).
    pub(crate) fn admin_get(&self, node: &str, key: &str) -> Outcome {
        match world::admin_options(&self.dir, &self.state, node) {
            Ok(opts) => self.run_op(opts, Vec::new(), Op::Get(key)),
            Err(f) => Outcome::Error(ClientError::Config(f.message)),
        }
    }

    /// Run `f` on the lab's runtime: every request a checker (or a world's setup) sends goes
    /// through here, so its time window is recorded (see [`Ctx::own_audit`]).
    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        let start = time::OffsetDateTime::now_utc();
        let out = self.rt.block_on(f);
        self.record_window(start, time::OffsetDateTime::now_utc());
        out
    }

    /// Append one window of the lab's own requests to DIR/.lab/own-requests. Best effort: a
    /// window that cannot be recorded only means a later check may take the lab's request
    /// for the student's.
    fn record_window(&self, start: time::OffsetDateTime, end: time::OffsetDateTime) {
        use std::io::Write as _;
        let path = self.dir.join(".lab").join(OWN_REQUESTS);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(
                f,
                "{} {}",
                start.unix_timestamp_nanos(),
                end.unix_timestamp_nanos()
            );
        }
    }

    /// The windows [`Ctx::record_window`] wrote. A node stamps an audit line when it decides,
    /// before it answers, so a request's line falls inside the window that sent it.
    fn own_windows(&self) -> Vec<(i128, i128)> {
        let text =
            std::fs::read_to_string(self.dir.join(".lab").join(OWN_REQUESTS)).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect()
    }

    /// Like [`Ctx::wait_audit`], but only lines of requests the student sent: lines timed
    /// inside a window of the lab's own requests (a checker's replay, from this or an earlier
    /// check, made with the student's certificate and token) are skipped, so that a check
    /// that replays an attempt cannot count as the student's attempt at the next check.
    pub(crate) fn own_audit(
        &self,
        node: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let windows = self.own_windows();
        // An aggregated line (the node writes repeats of one refusal within a second as one
        // line) is the student's when its last repeat is: the lab's requests have ended by then.
        let theirs = |l: &serde_json::Value| {
            let at = l["last"]
                .as_str()
                .or_else(|| l["time"].as_str())
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .map(time::OffsetDateTime::unix_timestamp_nanos);
            match at {
                Some(at) => !windows.iter().any(|(a, b)| (*a..=*b).contains(&at)),
                None => true,
            }
        };
        self.wait_audit(node, 0, |l| theirs(l) && pred(l))
    }

    /// SHA-256 (lower-case hex) of the certificate at `path`: the audit log's `peer`.
    pub(crate) fn fingerprint_of(&self, path: &Path) -> std::result::Result<String, String> {
        let der = world::cert_der(path).map_err(|f| f.message)?;
        Ok(ring::digest::digest(&ring::digest::SHA256, &der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Each shard's leader and term as the running nodes report them (STATUS with the lab's
    /// admin credentials, every node asked at once, 2 s each): a node that does not answer
    /// (stopped, frozen) is left out. `(shard, leader, term)`, sorted by shard; shard 0 is the
    /// metadata group. A shard whose replicas that answer know no leader has `None`.
    pub(crate) fn leaders(&self) -> Vec<(u32, Option<String>, u64)> {
        let names: Vec<String> = self
            .lab
            .spec()
            .world
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect();
        let opts: Vec<ConnectOptions> = names
            .iter()
            .filter(|n| self.node_running(n))
            .filter_map(|n| world::admin_options(&self.dir, &self.state, n).ok())
            .map(|mut o| {
                o.connect_timeout = Duration::from_secs(2);
                o.request_timeout = Duration::from_secs(2);
                o
            })
            .collect();
        let reports = self.block_on(futures_util::future::join_all(
            opts.iter().map(crate::cluster::status::status_of),
        ));
        let mut shards: std::collections::BTreeMap<u32, (Option<String>, u64)> =
            std::collections::BTreeMap::new();
        for status in reports.into_iter().flatten() {
            for r in status.replicas {
                let entry = shards.entry(r.shard).or_insert((None, 0));
                // The highest term wins: a replica of an older term may name a deposed leader.
                if r.term > entry.1 || (r.term == entry.1 && entry.0.is_none()) {
                    *entry = (r.leader.clone(), r.term);
                }
            }
        }
        shards
            .into_iter()
            .map(|(shard, (leader, term))| (shard, leader, term))
            .collect()
    }

    /// Every line of the node's audit log, parsed (lines that do not parse are skipped).
    pub(crate) fn audit(&self, node: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(world::audit_log(&self.dir, node)).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Wait (up to 3 s: the audit writer is a background thread) for an audit line of `node`
    /// after the first `skip` lines that satisfies `pred`.
    pub(crate) fn wait_audit(
        &self,
        node: &str,
        skip: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(line) = self.audit(node).into_iter().skip(skip).find(|l| pred(l)) {
                return Some(line);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The node's log since it was last (re)started.
    pub(crate) fn node_log(&self, node: &str) -> String {
        let text = std::fs::read(world::node_log(&self.dir, node)).unwrap_or_default();
        let from = self
            .state
            .log_offsets
            .get(node)
            .copied()
            .and_then(|o| usize::try_from(o).ok())
            .unwrap_or(0)
            .min(text.len());
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// The node's whole log, every run of it.
    pub(crate) fn node_log_all(&self, node: &str) -> String {
        let text = std::fs::read(world::node_log(&self.dir, node)).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    }

    /// SHA-256 (lower-case hex) of the student's certificate `stem` in DIR/pki/clients: the
    /// `peer` the audit log records for connections made with it.
    pub(crate) fn fingerprint(&self, stem: &str) -> std::result::Result<String, String> {
        self.fingerprint_of(&world::student_identity(&self.dir, stem).0)
    }

    /// The `jti` of the token in DIR/`rel` (read without verifying: the world wrote it).
    pub(crate) fn token_jti(&self, rel: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.path(rel)).ok()?;
        let token = skv_certs::issuer::inspect(text.trim()).ok()?;
        token.claims.get("jti")?.as_str().map(str::to_owned)
    }

    /// A fact the world recorded at start (an expiry time, ...).
    pub(crate) fn fact(&self, name: &str) -> Option<&str> {
        self.state.facts.get(name).map(String::as_str)
    }
}

/// Every `SKV{` + 32 lower-case hex digits + `}` in `bytes`.
fn flag_candidates(bytes: &[u8]) -> impl Iterator<Item = &str> {
    const LEN: usize = 4 + 32 + 1;
    bytes.windows(LEN).filter_map(|w| {
        let ok = w.starts_with(b"SKV{")
            && w[LEN - 1] == b'}'
            && w[4..LEN - 1]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        ok.then(|| std::str::from_utf8(w).ok()).flatten()
    })
}

/// `skv lab check`.
/// `skv lab leaders`: each shard's leader and term, as the running nodes report them.
pub(crate) fn leaders_command(lab: &'static Lab, dir: &Path) -> Result<u8> {
    let dir = world::open(lab, dir)?;
    let state = State::load(&dir)?;
    let ctx = Ctx::new(lab, dir, state)?;
    let leaders = ctx.leaders();
    if leaders.is_empty() {
        return Err(super::Failure::connection(
            "no node answered STATUS (are the lab's nodes running? `skv lab restart`)",
        ));
    }
    for (shard, leader, term) in leaders {
        let name = if shard == 0 {
            "meta   ".to_owned()
        } else {
            format!("shard {shard}")
        };
        outln!(
            "{name}  leader {}  term {term}",
            leader.as_deref().unwrap_or("none (an election is running)")
        );
    }
    Ok(exit::OK)
}

pub(crate) fn run(lab: &'static Lab, dir: &Path, json: bool) -> Result<u8> {
    let dir = world::open(lab, dir)?;
    let state = State::load(&dir)?;
    let ctx = Ctx::new(lab, dir, state)?;
    let report = (lab.check)(&ctx);
    let solved = report.solved();
    if json {
        let parts: Vec<serde_json::Value> = report
            .parts
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "solved": p.solved(),
                    "missing": p.missing,
                    "notes": p.notes,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "lab": lab.number,
                "slug": lab.slug(),
                "solved": solved,
                "parts": parts,
            })
        );
    } else {
        outln!(
            "lab {:02} ({}): {}",
            lab.number,
            lab.slug(),
            if solved { "SOLVED" } else { "not solved yet" }
        );
        for part in &report.parts {
            let verdict = if part.solved() {
                "solved"
            } else {
                "not solved"
            };
            outln!("  {}: {verdict}", part.name);
            for why in &part.missing {
                outln!("    - {why}");
            }
            for what in &part.notes {
                outln!("    · {what}");
            }
        }
        if !solved {
            outln!(
                "\n`skv lab hint {}` reveals a hint; fix what is listed and check again.",
                lab.number
            );
        }
    }
    if solved {
        Ok(exit::OK)
    } else {
        Ok(NOT_SOLVED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_found_anywhere_in_binary_data() {
        let flag = format!("SKV{{{}}}", "0123456789abcdef".repeat(2));
        let mut bytes = vec![0u8, 0x17, 0xff];
        bytes.extend_from_slice(flag.as_bytes());
        bytes.push(0);
        assert_eq!(flag_candidates(&bytes).collect::<Vec<_>>(), [flag.as_str()]);
        assert_eq!(flag_candidates(b"SKV{not-hex}").count(), 0);
        assert_eq!(flag_candidates(b"SKV{0123}").count(), 0);
        let upper = flag.to_uppercase();
        assert_eq!(flag_candidates(upper.as_bytes()).count(), 0);
    }

    #[test]
    fn a_part_is_solved_when_nothing_is_missing() {
        let mut part = Part::new("break it");
        assert!(part.solved());
        part.note("saw it");
        assert!(part.solved());
        assert_eq!(part.require::<u8>(Err("no file".into())), None);
        assert!(!part.solved());
        assert!(
            !Report::default().solved(),
            "an empty report is not a solved lab"
        );
    }
}
