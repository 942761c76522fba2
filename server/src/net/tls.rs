//! The node's TLS acceptor: TLS 1.3 only, ring as the only crypto provider, and client
//! certificates required and verified against the cluster CA (checkpoint 1).

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A TLS credential file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// A PEM file could not be read or holds no usable item.
    #[error(
        "cannot load {what} from {path}: {detail} (create dev credentials with `skv certs init`)"
    )]
    Pem {
        /// What the file should hold ("CA certificate", "private key", ...).
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        detail: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("cannot use the CA as client-certificate trust anchor: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The ring provider, shared by every TLS config in the process.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_err = |detail: String| TlsSetupError::Pem {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no CERTIFICATE block in the file".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsSetupError::Pem {
        what: "private key",
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// A trust store holding the certificates of a CA file.
pub fn load_roots(ca: &Path) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca, "CA certificate")? {
        roots.add(cert).map_err(|e| TlsSetupError::Pem {
            what: "CA certificate",
            path: ca.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// Server config for mutual TLS: the node presents `cert`/`key` and requires a client
/// certificate that chains to `ca`. webpki checks the chain, the validity window and, when
/// the certificate lists extended key usages, that clientAuth is among them.
///
/// With `client_auth` false the node asks for no client certificate at all (server-auth TLS,
/// for the benchmark ladder's L1 rung); `ca` is still loaded so a bad path fails early.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    client_auth: bool,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let provider = provider();
    let roots = Arc::new(load_roots(ca)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if client_auth {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider).build()?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config =
        builder.with_single_cert(load_certs(cert, "node certificate")?, load_key(key)?)?;
    // The protocol is skv's own; ALPN lets a confused HTTP/2 client fail in the handshake.
    config.alpn_protocols = vec![b"skv/1".to_vec()];
    Ok(Arc::new(config))
}
