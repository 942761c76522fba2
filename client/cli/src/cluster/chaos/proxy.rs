//! The fault proxy: every connection to a node of a chaos cluster passes through it, so the
//! fault schedule can cut, delay or one-way-drop the traffic between any two nodes without
//! touching the kernel's network configuration.
//!
//! A node of a chaos cluster listens on its own loopback address (`127.0.0.11`, `127.0.0.12`,
//! …) and the map advertises a proxy port on `127.0.0.1` instead. Nodes dial peers from
//! their listen address (the node's dialer binds it), so the proxy tells which node a
//! connection comes from by its source address, and which node it goes to by the port it
//! arrived on. Anything else (the chaos workload, `skv` commands) is a client, and client
//! traffic is never faulted: the workload observes the cluster from outside the partition.
//!
//! A link that is down stops carrying bytes in that direction, and the proxy stops reading
//! from the sender, so TCP's own flow control pushes back: the sender's writes stall, as
//! they would when a real network drops every packet. When the link comes back, what was
//! held is delivered (TCP would retransmit it), unless a node gave up on the connection
//! first. A slow link delivers each chunk its delay after it arrived. Memory per direction
//! is bounded by [`QUEUED_CHUNKS`] chunks of [`CHUNK`] bytes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes read from a socket at once.
const CHUNK: usize = 64 * 1024;
/// Chunks one direction of a connection may hold while its link is slow or down; past that
/// the proxy stops reading and the sender's TCP window closes.
const QUEUED_CHUNKS: usize = 16;

/// What a link between two nodes does to the bytes on it, in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Link {
    /// Nothing passes.
    pub(crate) down: bool,
    /// Added to every chunk's delivery.
    pub(crate) delay: Duration,
}

/// The fault state every connection consults, and the proxy's listeners.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Which node a source address belongs to.
    sources: HashMap<IpAddr, String>,
    /// `(from, to)` links that are not plain; absent means up with no delay.
    links: Mutex<HashMap<(String, String), Link>>,
    /// Bumped on every change, so held connections look again.
    changed: watch::Sender<u64>,
}

/// One node behind the proxy: where the proxy listens for it and where the node really is.
#[derive(Debug)]
pub(crate) struct Route {
    pub(crate) node: String,
    pub(crate) listener: std::net::TcpListener,
    pub(crate) target: SocketAddr,
}

impl Proxy {
    /// A proxy for `routes`; `sources` maps each node's listen IP to its id. Starts serving
    /// at once on the current tokio runtime.
    pub(crate) fn start(routes: Vec<Route>) -> std::io::Result<Proxy> {
        let sources = routes
            .iter()
            .map(|r| (r.target.ip(), r.node.clone()))
            .collect();
        let (changed, _) = watch::channel(0);
        let proxy = Proxy {
            shared: Arc::new(Shared {
                sources,
                links: Mutex::new(HashMap::new()),
                changed,
            }),
        };
        for route in routes {
            route.listener.set_nonblocking(true)?;
            let listener = TcpListener::from_std(route.listener)?;
            tokio::spawn(proxy.clone().serve(listener, route.node, route.target));
        }
        Ok(proxy)
    }

    /// Set the link from `from` to `to` (one direction).
    pub(crate) fn set(&self, from: &str, to: &str, link: Link) {
        {
            let mut links = self.lock();
            if link == Link::default() {
                links.remove(&(from.to_owned(), to.to_owned()));
            } else {
                links.insert((from.to_owned(), to.to_owned()), link);
            }
        }
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Every link back to plain.
    pub(crate) fn heal(&self) {
        self.lock().clear();
        self.shared.changed.send_modify(|n| *n += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Link>> {
        // A panic while holding this lock cannot leave the map half-written (every update is
        // one insert or remove), so a poisoned lock is still consistent.
        self.shared.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn link(&self, from: Option<&str>, to: &str) -> Link {
        match from {
            Some(from) => self
                .lock()
                .get(&(from.to_owned(), to.to_owned()))
                .copied()
                .unwrap_or_default(),
            None => Link::default(),
        }
    }

    async fn serve(self, listener: TcpListener, node: String, target: SocketAddr) {
        loop {
            let (inbound, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors, or a connection reset before accept: keep serving.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let from = self.shared.sources.get(&peer.ip()).cloned();
            tokio::spawn(self.clone().carry(inbound, from, node.clone(), target));
        }
    }

    /// One connection: `from` (a node, or `None` for a client) to node `to`.
    async fn carry(self, inbound: TcpStream, from: Option<String>, to: String, target: SocketAddr) {
        let Ok(outbound) = TcpStream::connect(target).await else {
            // The node is down: the caller sees its connection closed, as with a refusal.
            return;
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let (in_read, in_write) = inbound.into_split();
        let (out_read, out_write) = outbound.into_split();
        let forward = Direction {
            from: from.clone(),
            to: to.clone(),
        };
        let backward = Direction {
            from: Some(to),
            to: from.unwrap_or_default(),
        };
        let mut there = tokio::spawn(self.clone().pump(in_read, out_write, forward));
        let mut back = tokio::spawn(self.pump(out_read, in_write, backward));
        // A direction that ends cleanly (its sender half-closed) lets the other finish; one
        // that fails (a reset, a killed node) resets both.
        tokio::select! {
            done = &mut there => match done {
                Ok(Ok(())) => { let _ = back.await; }
                _ => back.abort(),
            },
            done = &mut back => match done {
                Ok(Ok(())) => { let _ = there.await; }
                _ => there.abort(),
            },
        }
    }

    /// Carry one direction until the reader ends; `Err` when a socket failed.
    async fn pump(
        self,
        mut read: OwnedReadHalf,
        mut write: OwnedWriteHalf,
        dir: Direction,
    ) -> Result<(), ()> {
        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
        // The reader runs beside the writer and is stopped with it: a writer whose socket
        // failed must not leave a reader blocked on a peer that never sends again.
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; CHUNK];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(_) => return Err(()),
                }
            }
        });
        let mut changed = self.shared.changed.subscribe();
        while let Some((arrived, chunk)) = rx.recv().await {
            loop {
                let link = self.link(dir.from.as_deref(), &dir.to);
                if link.down {
                    // Held until the link changes.
                    if changed.changed().await.is_err() {
                        reader.abort();
                        return Err(());
                    }
                    continue;
                }
                let due = arrived + link.delay;
                if Instant::now() < due {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        _ = changed.changed() => {}
                    }
                    continue;
                }
                break;
            }
            if write.write_all(&chunk).await.is_err() {
                reader.abort();
                return Err(());
            }
        }
        // The reader finished (its side closed or failed): pass the close on.
        let _ = write.shutdown().await;
        match reader.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

/// Which link a direction of a connection crosses. `from` is `None` for a client.
#[derive(Debug, Clone)]
struct Direction {
    from: Option<String>,
    to: String,
}
