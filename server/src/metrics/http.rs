//! `GET /metrics` over plain HTTP/1.1: a responder small enough to read in one sitting.
//!
//! Prometheus sends one short GET per scrape and wants one response; a full HTTP stack (hyper)
//! would add a dependency tree larger than the rest of the node's network code for that. Each
//! request is read under a size cap ([`MAX_REQUEST`]) and a deadline, answered, and the
//! connection closed; at most [`MAX_SCRAPES`] are served at once and others wait in the
//! kernel's backlog. Nothing from the request is echoed back or logged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::limits::load::Load;

/// Largest request head read; anything longer is answered 431 and closed.
const MAX_REQUEST: usize = 8 * 1024;

/// Time a scraper has to send its request.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Scrapes answered at once.
const MAX_SCRAPES: usize = 4;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bind `addr` now (so a taken port fails the node's start) and serve until `shutdown`.
pub(crate) async fn serve(
    addr: SocketAddr,
    load: Arc<Load>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let metrics = super::install();
    let turns = Arc::new(Semaphore::new(MAX_SCRAPES));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let Ok(turn) = turns.clone().acquire_owned().await else {
                break;
            };
            let load = load.clone();
            tokio::spawn(async move {
                let _turn = turn;
                let _ = answer(stream, || metrics.encode(load.in_flight())).await;
            });
        }
    });
    Ok(local)
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    MethodNotAllowed,
    Bad,
}

/// Parse the request line of `head` (everything before the blank line).
fn route(head: &[u8]) -> Route {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .unwrap_or("")
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics,
        ("GET", _) => Route::NotFound,
        _ => Route::MethodNotAllowed,
    }
}

async fn answer(mut stream: TcpStream, body: impl FnOnce() -> String) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(READ_DEADLINE, async {
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_REQUEST {
                return Ok(false);
            }
        }
    })
    .await;
    let (status, content_type, text) = match complete {
        Ok(Ok(true)) => match route(&head) {
            Route::Metrics => ("200 OK", CONTENT_TYPE, body()),
            Route::NotFound => ("404 Not Found", "text/plain", "try /metrics\n".into()),
            Route::MethodNotAllowed => (
                "405 Method Not Allowed",
                "text/plain",
                "only GET /metrics\n".into(),
            ),
            Route::Bad => ("400 Bad Request", "text/plain", "bad request\n".into()),
        },
        Ok(Ok(false)) if head.len() > MAX_REQUEST => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".into(),
        ),
        // Closed early or too slow: nothing to answer.
        _ => return Ok(()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // Lingering close: closing with unread bytes would reset the connection and could destroy
    // the answer in flight; read (a bounded amount, briefly) until the client closes.
    let mut rest = (&mut stream).take(64 * 1024);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET /metrics"), Route::Bad);
        assert_eq!(route(b"\xff\xfe"), Route::Bad);
        assert_eq!(route(b"GET /metrics SPDY/3 extra"), Route::Bad);
    }
}
