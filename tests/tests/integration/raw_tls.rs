//! A bare rustls client for the tests that must speak to a node below the client library:
//! the handshake itself (revoke.rs: resumption, a revoked certificate), or frames the library
//! never sends (handles.rs: a handle named on the wrong connection, an old protocol version).

use std::path::Path;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use skv_proto::{FrameCodec, Request, Response, DEFAULT_MAX_FRAME};
use skv_tests::Pki;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;

/// A rustls client config for `cert`/`key` (TLS 1.3, the node's ALPN). It keeps the sessions
/// it is given (rustls' default in-memory store), so a second handshake with it offers a
/// resumption ticket.
pub(crate) fn client_config(
    pki: &Pki,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_config_with(
        pki,
        cert,
        key,
        Arc::new(rustls::crypto::ring::default_provider()),
    )
}

/// [`client_config`] with another crypto provider: to offer other cipher suites than a
/// default rustls client does.
pub(crate) fn client_config_with(
    pki: &Pki,
    cert: &Path,
    key: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(pki.layout.ca_cert())? {
        roots.add(ca?)?;
    }
    let chain = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"skv/1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP connection to `addr` with a finished TLS handshake under `config`, the node's
/// certificate checked for 127.0.0.1 (the name every test node is dialled by).
pub(crate) async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: &str,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let socket = TcpStream::connect(addr).await?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("127.0.0.1")?, socket)
        .await?)
}

/// One framed mutual-TLS connection as alice, speaking requests and responses by hand.
pub(crate) struct RawConnection {
    framed: Framed<TlsStream<TcpStream>, FrameCodec>,
}

impl RawConnection {
    /// Connect to `addr` as alice (TLS only: the caller sends HELLO).
    pub(crate) async fn alice(pki: &Pki, addr: &str) -> anyhow::Result<RawConnection> {
        let config = client_config(
            pki,
            &pki.layout.client_cert("alice"),
            &pki.layout.client_key("alice"),
        )?;
        let stream = connect(config, addr).await?;
        Ok(RawConnection {
            framed: Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME)),
        })
    }

    /// Send `request` and read the next response (requests here are sent one at a time).
    pub(crate) async fn call(&mut self, request: &Request) -> anyhow::Result<Response> {
        self.framed.send(request).await?;
        let payload = self
            .framed
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("the node closed the connection"))??;
        Ok(Response::decode(payload)?)
    }
}
