//! The audit log: one JSON line per authorization decision.
//!
//! Every refusal is written; allows only when enabled (they are one line per request). Lines
//! go through a bounded channel to a dedicated writer thread, so a slow disk never stalls a
//! request and a flood of refusals never grows memory: when the channel is full the line is
//! dropped and counted, and the count is reported in the log and in the next line written.
//!
//! What a line may contain is fixed here: time, node, peer certificate fingerprint, subject,
//! token id, op, key or prefix, decision and reason. Tokens, signatures and values never reach
//! this module, so they cannot reach the file.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use serde::Serialize;

/// Lines queued for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

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
    tx: SyncSender<String>,
    dropped: Arc<AtomicU64>,
    log_allows: bool,
}

impl AuditLog {
    /// Append to `path` (created with mode 0600: it names subjects and keys).
    pub fn open(path: &Path, log_allows: bool) -> Result<AuditLog, AuditOpenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditOpenError {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::start(file, log_allows))
    }

    fn start(file: File, log_allows: bool) -> AuditLog {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("skv-audit".into())
            .spawn(move || write_lines(file, rx))
            .map(drop)
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the audit writer"));
        AuditLog {
            tx,
            dropped: Arc::default(),
            log_allows,
        }
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
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
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

fn write_lines(file: File, rx: Receiver<String>) {
    let mut out = BufWriter::new(file);
    while let Ok(line) = rx.recv() {
        let mut ok = writeln!(out, "{line}").is_ok();
        // Drain what is queued before paying for a write syscall.
        while let Ok(line) = rx.try_recv() {
            ok &= writeln!(out, "{line}").is_ok();
        }
        ok &= out.flush().is_ok();
        if !ok {
            tracing::error!("cannot write the audit log");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_denies_and_only_optionally_allows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, false).unwrap();
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
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
