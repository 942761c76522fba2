//! Applies one decoded request to storage and builds the answer.
//!
//! This is the only place that maps storage results to wire responses, so every transport
//! (TLS or plaintext) and, later, every auth mode answers identically.

use bytes::Bytes;
use skv_proto::cluster::{hash_slot, SlotSet};
use skv_proto::{
    scan_entry_wire_len, ErrorCode, RequestBody, ResponseBody, ScanEntry, WireError,
    SCAN_PAGE_OVERHEAD,
};

use crate::storage::{CasOutcome, Storage, StorageError};

pub use skv_proto::MAX_SCAN_PAGE;

/// What the connection must do with a handled request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Send this answer now.
    Reply(ResponseBody),
    /// A write was applied: send this answer once the write is durable.
    ReplyWhenDurable(ResponseBody),
}

/// The slots a scan may return and the epoch of the map they come from.
pub(crate) type ScanFilter<'a> = Option<(&'a SlotSet, u64)>;

/// Execute a data operation. HELLO is the connection's business and never reaches here, and
/// the caller has already checked that the node serves the key's slot; a scan returns only
/// keys of the slots in `filter`.
pub(crate) fn execute(
    storage: &dyn Storage,
    body: RequestBody,
    max_frame: usize,
    filter: ScanFilter<'_>,
) -> Outcome {
    match run(storage, body, max_frame, filter) {
        Ok(outcome) => outcome,
        Err(err) => {
            // The detail goes to the node's log; the client learns only the category, since
            // storage errors can name paths on the node.
            tracing::error!(error = ?err, "storage operation failed");
            Outcome::Reply(ResponseBody::Error(WireError::new(
                ErrorCode::Storage,
                "the node's storage failed; the operation may not have been applied",
            )))
        }
    }
}

fn run(
    storage: &dyn Storage,
    body: RequestBody,
    max_frame: usize,
    filter: ScanFilter<'_>,
) -> Result<Outcome, StorageError> {
    Ok(match body {
        RequestBody::Ping => Outcome::Reply(ResponseBody::Pong),
        RequestBody::Get { key } => Outcome::Reply(match storage.get(&key)? {
            Some(v) => ResponseBody::Value {
                version: v.version,
                value: v.value,
            },
            None => ResponseBody::NotFound,
        }),
        RequestBody::Put { key, value } => {
            let version = storage.put(&key, &value)?;
            Outcome::ReplyWhenDurable(ResponseBody::Written { version })
        }
        RequestBody::Delete { key } => {
            let existed = storage.delete(&key)?;
            if existed {
                Outcome::ReplyWhenDurable(ResponseBody::Deleted { existed })
            } else {
                Outcome::Reply(ResponseBody::Deleted { existed })
            }
        }
        RequestBody::Cas {
            key,
            expect_version,
            value,
        } => match storage.cas(&key, expect_version, &value)? {
            CasOutcome::Written { version } => {
                Outcome::ReplyWhenDurable(ResponseBody::Written { version })
            }
            CasOutcome::Conflict { current } => {
                Outcome::Reply(ResponseBody::CasConflict { current })
            }
        },
        RequestBody::Scan {
            prefix,
            limit,
            cursor,
        } => Outcome::Reply(scan(storage, &prefix, limit, cursor, max_frame, filter)?),
        RequestBody::ClusterMap | RequestBody::Control { .. } | RequestBody::Import { .. } => {
            // Routed to the cluster module by the connection; never here.
            Outcome::Reply(ResponseBody::Error(WireError::new(
                ErrorCode::Internal,
                "cluster request reached the data handler",
            )))
        }
        RequestBody::Hello { .. } => Outcome::Reply(ResponseBody::Error(WireError::new(
            ErrorCode::HandshakeRequired,
            "HELLO may only be sent once, as the first request",
        ))),
    })
}

/// One scan page, cut short where it would no longer fit in a frame. The cursor is the last
/// key looked at, so the next page starts strictly after it. Keys of slots outside `filter`
/// (copies left behind by a slot move) are skipped, so a page may hold fewer entries than
/// asked, even none, and still carry a cursor.
fn scan(
    storage: &dyn Storage,
    prefix: &[u8],
    limit: u32,
    cursor: Option<Bytes>,
    max_frame: usize,
    filter: ScanFilter<'_>,
) -> Result<ResponseBody, StorageError> {
    let limit = if limit == 0 {
        MAX_SCAN_PAGE
    } else {
        limit.min(MAX_SCAN_PAGE)
    };
    let page = storage.scan(prefix, cursor.as_deref(), limit as usize)?;
    let last_scanned = page.entries.last().map(|e| e.key.clone());
    let budget = max_frame.saturating_sub(SCAN_PAGE_OVERHEAD);
    let mut used = 0usize;
    let mut entries = Vec::with_capacity(page.entries.len());
    let mut cut_short = false;
    for entry in page.entries {
        if let Some((slots, _)) = filter {
            if !slots.contains(hash_slot(&entry.key)) {
                continue;
            }
        }
        let size = scan_entry_wire_len(entry.key.len(), entry.value.len());
        // Always return at least one entry, or a page of one huge value could never advance.
        if !entries.is_empty() && used + size > budget {
            cut_short = true;
            break;
        }
        used += size;
        entries.push(ScanEntry {
            key: entry.key,
            version: entry.version,
            value: entry.value,
        });
    }
    let cursor = if cut_short {
        entries.last().map(|e: &ScanEntry| e.key.clone())
    } else if page.more {
        last_scanned
    } else {
        None
    };
    Ok(ResponseBody::ScanPage {
        entries,
        cursor,
        epoch: filter.map_or(0, |(_, epoch)| epoch),
    })
}
