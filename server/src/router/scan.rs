//! SCAN over every shard this node serves: one page, in key order, cut to fit a frame.
//!
//! A scan reads storage and may take a while, so the router runs it on tokio's blocking pool,
//! never on the async workers that serve every other connection. Each shard loads values under
//! a byte budget of one frame, so a page costs the node at most about one frame per local
//! shard, whatever `limit` asked for.
//!
//! Each local shard returns a page of its own slots and how far it looked (its frontier).
//! The node's page is the merge of those pages up to the smallest frontier: past it, a shard
//! that stopped early may still hold smaller keys than what the others returned. The cursor
//! is the last key considered, so the next page starts strictly after it; a page may hold
//! fewer entries than asked, even none, and still carry a cursor.

use bytes::Bytes;
use skv_proto::{scan_entry_wire_len, ResponseBody, ScanEntry, MAX_SCAN_PAGE, SCAN_PAGE_OVERHEAD};

use crate::cluster::Cluster;
use crate::shard::storage_failed;

/// What one page may hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Page {
    /// Entries asked for (0: the most a page holds).
    pub(crate) limit: u32,
    /// The frame the page must fit.
    pub(crate) max_frame: usize,
    /// Keys and versions only: no value is loaded (or decrypted).
    pub(crate) keys_only: bool,
}

/// One SCAN page of the keys of every local shard.
///
/// The page carries the epoch of the map read *after* the shards answered: a slot that moved
/// away while they scanned then shows as a newer epoch than the client's, and the client
/// refreshes its map and resumes from the cursor, so no key of a moving slot is skipped.
pub(crate) fn scan(
    cluster: &Cluster,
    prefix: &[u8],
    cursor: Option<&[u8]>,
    page: Page,
) -> ResponseBody {
    let Page {
        limit,
        max_frame,
        keys_only,
    } = page;
    let limit = if limit == 0 {
        MAX_SCAN_PAGE
    } else {
        limit.min(MAX_SCAN_PAGE)
    } as usize;
    // Each shard stops loading values at about one frame's worth: a page that can only return
    // one large value no longer loads `limit` of them first (the SCAN amplification of issue
    // 12: one 411-byte request, 1000 values read, 1 GB resident, one entry returned).
    let budget = max_frame.saturating_sub(SCAN_PAGE_OVERHEAD);
    let view = cluster.view();
    let mut entries: Vec<ScanEntry> = Vec::new();
    let mut frontier: Option<Bytes> = None;
    // A replicated node reads every replica it hosts from its own state machine, leader or
    // not: the page may miss writes its followers have not applied yet (docs/CLUSTER.md).
    for replica in view.local_replicas() {
        let (page, more) = match replica
            .reader()
            .scan_within(prefix, cursor, limit, budget, keys_only)
        {
            Ok(page) => page,
            Err(err) => {
                tracing::error!(error = %err, "replica scan failed");
                return ResponseBody::Error(skv_proto::WireError::new(
                    skv_proto::ErrorCode::Storage,
                    "the storage engine failed to scan",
                ));
            }
        };
        if more {
            if let Some(last) = page.last() {
                let f = last.key.clone();
                frontier = Some(match frontier {
                    Some(current) if current <= f => current,
                    _ => f,
                });
            }
        }
        entries.extend(page.into_iter().map(|e| ScanEntry {
            key: e.key,
            version: e.version,
            value: e.value,
        }));
    }
    for shard in view.local_shards() {
        let page = match shard.scan(prefix, cursor, limit, budget, keys_only) {
            Ok(page) => page,
            Err(err) => return storage_failed(&err),
        };
        if let Some(f) = page.frontier {
            frontier = Some(match frontier {
                Some(current) if current <= f => current,
                _ => f,
            });
        }
        entries.extend(page.entries);
    }
    // Slots are disjoint between shards, so no key comes twice.
    entries.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    if let Some(f) = &frontier {
        entries.retain(|e| e.key <= *f);
    }
    let mut used = 0usize;
    let mut kept = 0usize;
    let mut cut_short = false;
    for entry in &entries {
        let size = scan_entry_wire_len(entry.key.len(), entry.value.len());
        // Always return at least one entry, or a page of one huge value could never advance.
        if kept == limit || (kept > 0 && used + size > budget) {
            cut_short = true;
            break;
        }
        used += size;
        kept += 1;
    }
    entries.truncate(kept);
    let cursor = if cut_short {
        entries.last().map(|e| e.key.clone())
    } else {
        frontier
    };
    ResponseBody::ScanPage {
        entries,
        cursor,
        epoch: cluster.view_now().epoch(),
    }
}
