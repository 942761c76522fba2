//! Pulling newer maps from peers. A push can miss a node that is down or partitioned; every
//! few seconds each node asks one peer (in turn) for its map and keeps it if it is newer, so
//! every node converges on the newest map without any node being in charge.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Cluster;

/// How often a node asks a peer for its map.
const INTERVAL: Duration = Duration::from_secs(2);

pub(super) async fn run(cluster: Arc<Cluster>, shutdown: CancellationToken) {
    let Some(dialer) = cluster.dialer.clone() else {
        return;
    };
    let mut turn = 0usize;
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let view = cluster.view();
        let peers: Vec<_> = view
            .map
            .nodes
            .iter()
            .filter(|n| n.id != cluster.me)
            .cloned()
            .collect();
        if peers.is_empty() {
            continue;
        }
        let peer = &peers[turn % peers.len()];
        turn = turn.wrapping_add(1);
        let fetched = async {
            let conn = dialer.connect(peer).await?;
            conn.map().await
        };
        match fetched.await {
            Ok(map) if map.epoch > view.epoch() => match cluster.install(map) {
                Ok(true) => tracing::info!(from = %peer.id, "pulled a newer cluster map"),
                Ok(false) => {}
                Err(err) => tracing::warn!(from = %peer.id, error = %err, "refused a peer's map"),
            },
            Ok(_) => {}
            Err(err) => tracing::debug!(peer = %peer.id, error = %err, "map check failed"),
        }
    }
}
