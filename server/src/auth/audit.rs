//! The audit log: one JSON line per authorization decision.
//!
//! Every refusal is written; allows only when enabled (they are one line per request). Lines
//! go through a bounded channel to a dedicated writer thread, so a slow disk never stalls a
//! request and a flood of refusals never grows memory: when the channel is full the line is
//! dropped and counted, and the count is reported in the log and in the next line written.
//!
//! The disk is bounded too: at `max_bytes` the file is rotated (`FILE` becomes `FILE.1`,
//! `FILE.1` becomes `FILE.2`, ...; `max_files` files in all, the oldest deleted), and every file
//! is opened with mode 0600 and set to it, whatever mode an existing file had. Repeated
//! refusals (same peer, subject, operation and reason) within one second are written once,
//! then as one aggregated line carrying `repeated` (the count), `first` and `last`: a flood of
//! refused requests costs a line per second per kind, not a line per request.
//!
//! What a line may contain is fixed here: time, node, peer certificate fingerprint, subject,
//! token id, op, key or prefix, decision and reason. Tokens, signatures and values never reach
//! this module, so they cannot reach the file.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Repeated refusals within this window become one aggregated line.
const AGGREGATE_WINDOW: Duration = Duration::from_secs(1);

/// Kinds of refusal aggregated per window; past it, refusals are written one by one.
const AGGREGATE_KINDS: usize = 4096;

/// Where and how much the audit log may write.
#[derive(Debug, Clone)]
pub struct AuditFiles {
    /// The live file; rotated ones are `PATH.1`, `PATH.2`, ...
    pub path: PathBuf,
    /// Files kept, the live one included (at least 1).
    pub max_files: usize,
    /// Size at which the live file is rotated.
    pub max_bytes: u64,
}

/// One line for the writer: the JSON, and for a refusal what makes it "the same refusal".
struct Queued {
    line: String,
    kind: Option<String>,
    time: String,
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// The request may proceed.
    Allow,
    /// The request was refused.
    Deny,
}

/// One audit record, borrowed from the request path.
#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// RFC 3339 UTC time of the decision.
    pub time: String,
    /// Node name.
    pub node: &'a str,
    /// SHA-256 of the peer's certificate (hex), or "" on a plaintext connection.
    pub peer: &'a str,
    /// Token subject, when a token was read far enough to know it.
    pub sub: Option<&'a str>,
    /// Token id, likewise.
    pub jti: Option<&'a str>,
    /// Operation (`get`, `put`, `hello`, ...).
    pub op: &'a str,
    /// Key or scan prefix, escaped to printable ASCII.
    pub key: Option<String>,
    /// Allow or deny.
    pub decision: Decision,
    /// Precise reason (never the token itself).
    pub reason: &'a str,
    /// Lines dropped since the previous written line because the queue was full.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Opening the audit log failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot open audit log {path}")]
pub struct AuditOpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Handle to the audit log; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
    log_allows: bool,
}

impl AuditLog {
    /// Append to `files.path`, created (or tightened) to mode 0600: it names subjects and
    /// keys.
    pub fn open(files: &AuditFiles, log_allows: bool) -> Result<AuditLog, AuditOpenError> {
        let file = open_0600(&files.path).map_err(|source| AuditOpenError {
            path: files.path.clone(),
            source,
        })?;
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            files: AuditFiles {
                max_files: files.max_files.max(1),
                ..files.clone()
            },
            size: file.metadata().map(|m| m.len()).unwrap_or(0),
            out: Some(BufWriter::new(file)),
            dropped: dropped.clone(),
            kinds: HashMap::new(),
        };
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("skv-audit".into())
            .spawn(move || writer.run(rx))
            .map(drop)
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the audit writer"));
        Ok(AuditLog {
            tx,
            dropped,
            log_allows,
        })
    }

    /// Whether allow decisions are logged too.
    pub fn logs_allows(&self) -> bool {
        self.log_allows
    }

    /// Queue a record. Never blocks.
    pub fn record(&self, mut record: AuditRecord<'_>) {
        if record.decision == Decision::Allow && !self.log_allows {
            return;
        }
        record.dropped_before = self.dropped.swap(0, Ordering::Relaxed);
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode an audit record");
                return;
            }
        };
        // The key is left out on purpose: a flood varies it from request to request.
        let kind = (record.decision == Decision::Deny).then(|| {
            format!(
                "{}\0{}\0{}\0{}",
                record.peer,
                record.sub.unwrap_or(""),
                record.op,
                record.reason
            )
        });
        let queued = Queued {
            line,
            kind,
            time: record.time,
        };
        match self.tx.try_send(queued) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if let Some(m) = crate::metrics::get() {
                    m.audit_dropped(1);
                }
                let before = self
                    .dropped
                    .fetch_add(1 + record.dropped_before, Ordering::Relaxed);
                if before == 0 {
                    tracing::warn!("audit log queue full; dropping lines (counted)");
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("audit writer stopped; audit line lost");
            }
        }
    }
}

/// Open (append) or create `path` with mode 0600, and set 0600 on a file that existed with
/// another mode: the mode is enforced at every open, not only at creation.
fn open_0600(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o777 != 0o600 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// A refusal seen in the current window after its first line was written.
struct Repeated {
    /// The first line, parsed, to copy its fields into the aggregated line.
    first: serde_json::Value,
    count: u64,
    last: String,
}

/// The writer thread's state.
struct Writer {
    files: AuditFiles,
    size: u64,
    /// `None` after a failed rotation: lines are counted as dropped until one succeeds.
    out: Option<BufWriter<File>>,
    dropped: Arc<AtomicU64>,
    kinds: HashMap<String, Repeated>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Queued>) {
        let mut window = Instant::now();
        loop {
            let first = match rx.recv_timeout(AGGREGATE_WINDOW) {
                Ok(q) => Some(q),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Drain what is queued before paying for a write syscall.
            for q in first
                .into_iter()
                .chain(std::iter::from_fn(|| rx.try_recv().ok()))
            {
                self.take(q);
            }
            if window.elapsed() >= AGGREGATE_WINDOW {
                self.close_window();
                window = Instant::now();
            }
            self.flush();
        }
        self.close_window();
        self.flush();
    }

    fn take(&mut self, q: Queued) {
        if let Some(kind) = q.kind {
            if let Some(seen) = self.kinds.get_mut(&kind) {
                seen.count += 1;
                seen.last = q.time;
                return;
            }
            if self.kinds.len() < AGGREGATE_KINDS {
                if let Ok(first) = serde_json::from_str(&q.line) {
                    self.kinds.insert(
                        kind,
                        Repeated {
                            first,
                            count: 0,
                            last: q.time,
                        },
                    );
                }
            }
        }
        self.write(&q.line);
    }

    /// One aggregated line per refusal kind repeated in the window that ends.
    fn close_window(&mut self) {
        let kinds = std::mem::take(&mut self.kinds);
        for (_, seen) in kinds {
            if seen.count == 0 {
                continue;
            }
            let mut line = seen.first;
            if let Some(fields) = line.as_object_mut() {
                let first = fields.get("time").cloned().unwrap_or_default();
                fields.insert("time".into(), now_rfc3339().into());
                fields.insert("first".into(), first);
                fields.insert("last".into(), seen.last.into());
                fields.insert("repeated".into(), seen.count.into());
                // The keys differed; the first one is not the others'.
                fields.remove("key");
                fields.remove("dropped_before");
            }
            self.write(&line.to_string());
        }
    }

    fn write(&mut self, line: &str) {
        let len = line.len() as u64 + 1;
        if self.size > 0 && self.size + len > self.files.max_bytes {
            self.rotate();
        }
        let Some(out) = self.out.as_mut() else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if writeln!(out, "{line}").is_ok() {
            self.size += len;
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("cannot write the audit log");
        }
    }

    /// `FILE.n-1` → deleted, ..., `FILE` → `FILE.1`, and a new `FILE`.
    fn rotate(&mut self) {
        if let Some(mut out) = self.out.take() {
            let _ = out.flush();
        }
        let path = &self.files.path;
        let numbered = |n: usize| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        let keep = self.files.max_files - 1;
        let result = (|| {
            if keep == 0 {
                std::fs::remove_file(path)?;
            } else {
                for n in (1..keep).rev() {
                    match std::fs::rename(numbered(n), numbered(n + 1)) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                        _ => {}
                    }
                }
                std::fs::rename(path, numbered(1))?;
            }
            open_0600(path)
        })();
        match result {
            Ok(file) => {
                self.out = Some(BufWriter::new(file));
                self.size = 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot rotate the audit log; lines are dropped (counted)")
            }
        }
    }

    fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if out.flush().is_err() {
                tracing::error!("cannot write the audit log");
            }
        } else {
            // Retry a failed rotation now and then.
            self.rotate();
        }
    }
}

/// RFC 3339 time for a record.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A key or prefix as printable ASCII, cut to a sane length for a log line.
pub fn printable_key(key: &[u8]) -> String {
    const MAX: usize = 256;
    let shown = &key[..key.len().min(MAX)];
    let mut text = shown.escape_ascii().to_string();
    if key.len() > MAX {
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_denies_and_only_optionally_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // A file that exists with a loose mode is tightened at open.
        std::fs::write(&path, "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = AuditFiles {
            path: path.clone(),
            max_files: 2,
            max_bytes: 1 << 20,
        };
        let log = AuditLog::open(&files, false).unwrap();
        let record = |decision| AuditRecord {
            time: now_rfc3339(),
            node: "n1",
            peer: "ab12",
            sub: Some("alice"),
            jti: None,
            op: "put",
            key: Some(printable_key(b"users/\x00bob")),
            decision,
            reason: "no scope covers the key",
            dropped_before: 0,
        };
        log.record(record(Decision::Allow));
        log.record(record(Decision::Deny));
        drop(log);
        // The writer thread exits once every handle is gone; wait for its flush.
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap();
            if !text.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["decision"], "deny");
        assert_eq!(lines[0]["key"], "users/\\x00bob");
        assert_eq!(lines[0]["sub"], "alice");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn files_rotate_under_their_cap_and_repeats_are_aggregated() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let files = AuditFiles {
            path: path.clone(),
            max_files: 3,
            max_bytes: 4096,
        };
        let log = AuditLog::open(&files, false).unwrap();
        let reasons: Vec<String> = (0..500).map(|i| format!("reason {i}")).collect();
        for (i, reason) in reasons.iter().enumerate() {
            // Every reason twice: the second is folded into an aggregated line.
            for _ in 0..2 {
                log.record(AuditRecord {
                    time: now_rfc3339(),
                    node: "n1",
                    peer: "ab12",
                    sub: None,
                    jti: None,
                    op: "get",
                    key: Some(format!("k{i}")),
                    decision: Decision::Deny,
                    reason,
                    dropped_before: 0,
                });
            }
        }
        drop(log);
        let rotated = dir.path().join("audit.log.2");
        for _ in 0..200 {
            if rotated.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // The writer exits after its final flush; give it a moment.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut total = 0;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            total += meta.len();
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        assert_eq!(names, ["audit.log", "audit.log.1", "audit.log.2"]);
        assert!(total <= 3 * 4096, "{total}");
        // What survives is the newest: the last window's aggregated lines among it.
        let live = std::fs::read_to_string(&path).unwrap();
        let repeated: u64 = live
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|v| v["repeated"].as_u64())
            .sum();
        assert!(repeated > 0, "{live}");
    }
}
