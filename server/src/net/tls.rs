//! TLS building blocks of the node: TLS 1.3 only, ring as the only crypto provider, and
//! the PEM loaders. The configs themselves (client certificates required and verified
//! against the cluster CA and CRLs: checkpoint 1) are built in [`crate::net::credentials`].

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
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
    /// The certificate verifier could not be built from the CA and CRLs (e.g. a CRL that
    /// does not parse).
    #[error("cannot use the CA and CRLs as trust anchor: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// The CA bundle and CRLs would refuse this node's own certificate for a reason other
    /// than its revocation: a CA that did not sign it, a CRL not signed by the CA, or no CRL
    /// for its issuer.
    #[error("the CA and CRLs do not accept this node's own certificate: {detail}")]
    Untrusted {
        /// webpki's reason.
        detail: String,
    },
}

/// The ring provider, shared by every TLS config in the process: the client library's, so a
/// node and its clients (and a node dialling its peers) prefer the same suites
/// ([`skv_client::tls_provider`] says which and why).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    skv_client::tls_provider()
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
