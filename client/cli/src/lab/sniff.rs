//! `skv lab sniff`: a TCP relay that records every byte both ways, the "someone on the
//! network path" of the transport lab. It relays whatever it is given (plaintext or TLS:
//! it never decrypts anything) and writes what passes to a capture file:
//!
//! ```text
//! "LABCAP1\n", then records: direction (1 byte: '>' client to server, '<' server to client),
//! connection number (u32 big-endian), length (u32 big-endian), the bytes.
//! ```
//!
//! The bytes are stored as they are, so `grep -a` and `strings` work on the file. Recording
//! stops (relaying does not) once the file reaches `--max-bytes`.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use skv_client::exit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Failure, Result, SniffArgs};

/// Default bound of a capture file.
pub(crate) const DEFAULT_MAX_BYTES: u64 = 16 << 20;
/// The capture file's first bytes.
pub(crate) const MAGIC: &[u8] = b"LABCAP1\n";
const HEADER: usize = 9;
/// Connections relayed at once.
const MAX_CONNECTIONS: usize = 256;

/// One recorded chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// Client to server (else server to client).
    pub(crate) to_server: bool,
    pub(crate) conn: u32,
    pub(crate) data: Vec<u8>,
}

/// Read a capture file's records; a truncated last record (a full file) is dropped.
pub(crate) fn parse_capture(bytes: &[u8]) -> std::result::Result<Vec<Record>, String> {
    let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
        return Err("it is not a capture written by `skv lab sniff` (no LABCAP1 header)".into());
    };
    let mut records = Vec::new();
    while rest.len() >= HEADER {
        let to_server = match rest[0] {
            b'>' => true,
            b'<' => false,
            other => {
                return Err(format!(
                    "it is damaged (record direction byte {other:#04x})"
                ))
            }
        };
        let conn = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
        let Some(data) = rest.get(HEADER..HEADER + len) else {
            break;
        };
        records.push(Record {
            to_server,
            conn,
            data: data.to_vec(),
        });
        rest = &rest[HEADER + len..];
    }
    Ok(records)
}

/// Everything one side sent on connection `conn`, in order.
pub(crate) fn stream(records: &[Record], conn: u32, to_server: bool) -> Vec<u8> {
    records
        .iter()
        .filter(|r| r.conn == conn && r.to_server == to_server)
        .flat_map(|r| r.data.iter().copied())
        .collect()
}

/// The capture file, shared by every relayed connection.
struct Capture {
    file: std::fs::File,
    written: u64,
    max: u64,
    full: bool,
}

impl Capture {
    fn record(&mut self, to_server: bool, conn: u32, data: &[u8]) {
        use std::io::Write;
        if self.full {
            return;
        }
        let len = data.len() as u64 + HEADER as u64;
        if self.written + len > self.max {
            self.full = true;
            eprintln!(
                "capture file reached {} bytes: recording stops, relaying goes on",
                self.max
            );
            return;
        }
        let mut head = [0u8; HEADER];
        head[0] = if to_server { b'>' } else { b'<' };
        head[1..5].copy_from_slice(&conn.to_be_bytes());
        head[5..9].copy_from_slice(&(data.len() as u32).to_be_bytes());
        if self
            .file
            .write_all(&head)
            .and_then(|()| self.file.write_all(data))
            .is_err()
        {
            self.full = true;
            eprintln!("cannot write the capture file: recording stops");
            return;
        }
        self.written += len;
    }
}

pub(crate) fn run(args: &SniffArgs) -> Result<u8> {
    let rt = super::world::runtime()?;
    rt.block_on(relay(args))
}

async fn relay(args: &SniffArgs) -> Result<u8> {
    let listener = TcpListener::bind(&args.listen).await.map_err(|e| {
        Failure::usage(format!(
            "cannot listen on {}: {e} (is another sniff or program already there?)",
            args.listen
        ))
    })?;
    let file = open_capture(&args.out)?;
    let capture = Arc::new(Mutex::new(Capture {
        file,
        written: MAGIC.len() as u64,
        max: args.max_bytes.max(MAGIC.len() as u64),
        full: false,
    }));
    outln!(
        "relaying {} -> {}, recording both ways to {}{}",
        args.listen,
        args.to,
        args.out.display(),
        match args.for_secs {
            Some(s) => format!(" for {s} s"),
            None => " until Ctrl-C".into(),
        }
    );
    let conns = Arc::new(AtomicU32::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let accept = async {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Past the cap a newcomer is closed at once: the relay never holds more.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(client);
                continue;
            };
            let conn = conns.fetch_add(1, Ordering::Relaxed) + 1;
            let to = args.to.clone();
            let capture = capture.clone();
            let bytes = bytes.clone();
            tokio::spawn(async move {
                match TcpStream::connect(&to).await {
                    Ok(server) => pipe(client, server, conn, capture, bytes).await,
                    Err(e) => eprintln!("connection {conn}: cannot reach {to}: {e}"),
                }
                drop(slot);
            });
        }
    };
    let stop = async {
        match args.for_secs {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = accept => {}
        () = stop => {}
    }
    let capture = capture.lock().unwrap_or_else(PoisonError::into_inner);
    let _ = capture.file.sync_all();
    outln!(
        "stopped: {} connection(s), {} bytes relayed, {} bytes in {}",
        conns.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        capture.written,
        args.out.display()
    );
    Ok(exit::OK)
}

fn open_capture(path: &Path) -> Result<std::fs::File> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(MAGIC)
        .map_err(|e| Failure::usage(format!("cannot write {}: {e}", path.display())))?;
    Ok(file)
}

/// Relay one connection both ways, recording each chunk, until either side closes.
async fn pipe(
    client: TcpStream,
    server: TcpStream,
    conn: u32,
    capture: Arc<Mutex<Capture>>,
    bytes: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = copy(
        &mut client_read,
        &mut server_write,
        true,
        conn,
        &capture,
        &bytes,
    );
    let down = copy(
        &mut server_read,
        &mut client_write,
        false,
        conn,
        &capture,
        &bytes,
    );
    // When one direction ends, the other is finished too: a half-open relay only holds a
    // socket.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    to_server: bool,
    conn: u32,
    capture: &Mutex<Capture>,
    bytes: &AtomicU64,
) where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        capture
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(to_server, conn, &buf[..n]);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_truncated_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.bin");
        let mut capture = Capture {
            file: open_capture(&path).unwrap(),
            written: MAGIC.len() as u64,
            max: 64,
            full: false,
        };
        capture.record(true, 1, b"hello");
        capture.record(false, 1, b"world");
        // Past the bound: not recorded.
        capture.record(true, 2, &[7u8; 64]);
        drop(capture);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() <= 64);
        let records = parse_capture(&bytes).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(stream(&records, 1, true), b"hello");
        assert_eq!(stream(&records, 1, false), b"world");
        assert!(parse_capture(&bytes[..bytes.len() - 2]).unwrap().len() == 1);
        assert!(parse_capture(b"not a capture").is_err());
    }
}
