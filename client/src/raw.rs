//! A secured byte stream to a node with nothing spoken on it yet: for callers that write the
//! frames themselves (the hostile-client tests, labs), with the same TLS policy and
//! credentials as [`crate::Connection`].

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::tls_config;
use crate::{ClientError, ConnectOptions};

/// A TLS stream to a node, the handshake done, no HELLO sent.
pub type RawStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connect to `opts.addr` and complete the TLS handshake with `opts.security` (which must be
/// TLS), under `opts.connect_timeout`.
pub async fn connect_raw(opts: &ConnectOptions) -> Result<RawStream, ClientError> {
    let Some(tls) = tls_config(&opts.security)? else {
        return Err(ClientError::Config(
            "a raw stream needs TLS settings, not --plaintext".into(),
        ));
    };
    let name = opts.server_name()?;
    let connect = async {
        let socket = TcpStream::connect(&opts.addr)
            .await
            .map_err(|e| ClientError::Connect {
                addr: opts.addr.clone(),
                reason: e.to_string(),
            })?;
        TlsConnector::from(tls)
            .connect(name, socket)
            .await
            .map_err(|e| ClientError::from_io(&opts.addr, &e, None))
    };
    match tokio::time::timeout(opts.connect_timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Timeout {
            addr: opts.addr.clone(),
            after: opts.connect_timeout,
            waiting_for: "connect and TLS handshake",
        }),
    }
}
