//! The node's live TLS credentials: its certificate and key, the cluster CA bundle and the
//! certificate revocation lists (`--crl`), loaded into one server config (what the listener
//! accepts with) and one client config (what [`crate::net::peer::Dialer`] dials peers with).
//!
//! Reloading follows the keyset's habit ([`crate::auth::checkpoint`]): on SIGHUP and when
//! any of the files changes (polled every second), everything is loaded afresh and swapped
//! in atomically. A set that fails to load, or that would refuse this node's own certificate
//! (a CRL not signed by the CA, a key of another certificate, a CA that did not sign the
//! certificate), is refused and the old credentials stay in force. Established connections
//! keep the config they were accepted or dialled with: only new handshakes see the new one.
//! Connections accepted earlier are re-checked on their next request after a change of trust
//! ([`Credentials::still_trusted`]), so a revocation also reaches them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tokio_util::sync::CancellationToken;

use crate::net::tls::{self, TlsSetupError};

/// How often the credential files are checked for changes.
pub(crate) const CREDENTIALS_POLL: Duration = Duration::from_secs(1);

/// The files the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// Cluster CA bundle (PEM).
    pub ca: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Certificate revocation lists (PEM), for client and node certificates alike.
    pub crl: Option<PathBuf>,
    /// Whether clients must present a certificate (off only for the ladder's L1 rung).
    pub client_auth: bool,
}

/// One consistent load of every file.
struct Loaded {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The verifier inside `server` (also for peers' certificates when mTLS is off), kept to
    /// re-check connections accepted before a change of trust.
    verifier: Arc<dyn ClientCertVerifier>,
    /// The node certificate's serial, hex, for logs and tests.
    serial: String,
    /// The number of CRLs in force.
    crls: usize,
}

/// The node's live TLS credentials. See the module docs.
pub(crate) struct Credentials {
    files: CredentialFiles,
    live: ArcSwap<Loaded>,
    /// Bumped on every successful reload; connections compare it to know when to re-check.
    generation: AtomicU64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("files", &self.files)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The PEM CRLs of a file: at least one, each of which webpki can parse.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
    let pem_err = |detail: String| TlsSetupError::Pem {
        what: "certificate revocation list",
        path: path.display().to_string(),
        detail,
    };
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    // An empty file is most likely a write caught half-way: refuse it rather than run with
    // no revocation at all (`skv cluster init` writes a CRL with no entries, not no CRL).
    if crls.is_empty() {
        return Err(pem_err(
            "no X509 CRL block in the file (create one with `skv certs revoke`)".into(),
        ));
    }
    Ok(crls)
}

fn load(files: &CredentialFiles) -> Result<Loaded, TlsSetupError> {
    let provider = tls::provider();
    let roots: Arc<RootCertStore> = Arc::new(tls::load_roots(&files.ca)?);
    let crls = match &files.crl {
        Some(path) => load_crls(path)?,
        None => Vec::new(),
    };
    let chain = tls::load_certs(&files.cert, "node certificate")?;
    let key = tls::load_key(&files.key)?;
    // The CA is the trust anchor and signs every leaf directly, so only the leaf has a
    // revocation status to check. Unknown status (no CRL from the leaf's issuer) is refused:
    // with --crl, the file must cover every CA of the bundle.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .with_crls(crls.clone())
        .only_check_end_entity_revocation()
        .build()?;
    let server_verifier =
        WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(crls.clone())
            .only_check_end_entity_revocation()
            .build()?;
    // The new trust must still admit this node's own certificate (nodes present it to each
    // other as a client certificate): a CRL signed by someone else, a CA bundle that did not
    // sign the certificate, or a CRL set that does not cover the CA would otherwise take the
    // node out of its own cluster. Its own revocation is let through, loudly: the operator
    // is replacing it, and the peers will refuse it meanwhile.
    let (leaf, intermediates) = chain.split_first().ok_or_else(|| TlsSetupError::Pem {
        what: "node certificate",
        path: files.cert.display().to_string(),
        detail: "no certificate".into(),
    })?;
    match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => {}
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked)) => {
            tracing::warn!(
                cert = %files.cert.display(),
                "this node's own certificate is revoked by --crl: its peers refuse it; \
                 install a new certificate"
            );
        }
        Err(err) => {
            return Err(TlsSetupError::Untrusted {
                detail: err.to_string(),
            })
        }
    }
    let serial = serial_hex(leaf.as_ref());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = if files.client_auth {
        builder.with_client_cert_verifier(verifier.clone())
    } else {
        builder.with_no_client_auth()
    };
    let mut server = builder.with_single_cert(chain.clone(), key.clone_key())?;
    // The protocol is skv's own; ALPN lets a confused HTTP/2 client fail in the handshake.
    server.alpn_protocols = vec![b"skv/1".to_vec()];
    // Stateless TLS 1.3 session tickets: the session state travels in the ticket, sealed
    // (AES-256-GCM, via ring) with a key that rustls rotates every 6 hours (a ticket stays
    // valid for the key's lifetime plus the next one's). No node memory is spent per session
    // and no cache is evicted under churn. Each load makes a new ticketer with new keys, so
    // after any reload (a CRL change included) no ticket sealed before it opens: a revoked
    // certificate cannot resume its way back in. Resumption still runs an (EC)DHE exchange
    // (psk_dhe_ke), so a leaked ticket key does not expose past traffic.
    server.ticketer = rustls::crypto::ring::Ticketer::new()?;
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_webpki_verifier(server_verifier)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"skv/1".to_vec()];
    Ok(Loaded {
        server: Arc::new(server),
        client: Arc::new(client),
        verifier,
        serial,
        crls: crls.len(),
    })
}

/// A certificate's serial number, hex (empty if it does not parse).
pub(crate) fn serial_hex(der: &[u8]) -> String {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.raw_serial_as_string().replace(':', ""))
        .unwrap_or_default()
}

impl Credentials {
    /// Load every file; any failure is a startup error.
    pub(crate) fn load(files: CredentialFiles) -> Result<Credentials, TlsSetupError> {
        let loaded = load(&files)?;
        Ok(Credentials {
            files,
            live: ArcSwap::from_pointee(loaded),
            generation: AtomicU64::new(0),
        })
    }

    /// The config the next accepted connection is served with, and the generation it
    /// belongs to (read first: a reload in between only makes the connection re-check its
    /// certificate once more, never skip a check).
    pub(crate) fn server_config(&self) -> (u64, Arc<ServerConfig>) {
        let generation = self.generation();
        (generation, self.live.load().server.clone())
    }

    /// The config the next peer connection is dialled with.
    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        self.live.load().client.clone()
    }

    /// Bumped by every reload that took effect.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a certificate chain accepted earlier still verifies under the current CA and
    /// CRLs: the check a connection accepted before a reload runs on its next request.
    pub(crate) fn still_trusted(&self, chain: &[CertificateDer<'static>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            // Nothing was verified at the handshake either (no client auth).
            return Ok(());
        };
        self.live
            .load()
            .verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Re-read every file. On any error the current credentials stay in force.
    pub(crate) fn reload(&self) -> Result<(String, usize), TlsSetupError> {
        let loaded = load(&self.files)?;
        let outcome = (loaded.serial.clone(), loaded.crls);
        self.live.store(Arc::new(loaded));
        self.generation.fetch_add(1, Ordering::Release);
        Ok(outcome)
    }

    /// Reload on SIGHUP-style demand, logging the outcome. File names and errors are logged,
    /// never file contents (the key file's bytes appear in no error).
    pub(crate) fn reload_and_log(&self) {
        match self.reload() {
            Ok((serial, crls)) => tracing::info!(
                cert = %self.files.cert.display(),
                serial = %serial,
                crls,
                "TLS credentials reloaded"
            ),
            Err(err) => tracing::warn!(
                error = %err,
                "TLS credentials reload failed; keeping the previous certificate, key, CA and CRLs"
            ),
        }
    }

    fn paths(&self) -> Vec<&Path> {
        let f = &self.files;
        let mut paths = vec![f.ca.as_path(), f.cert.as_path(), f.key.as_path()];
        if let Some(crl) = &f.crl {
            paths.push(crl);
        }
        paths
    }

    /// Watch the files and reload when any changes, until `shutdown`. A certificate and its
    /// key written one after the other may be seen half-way (new certificate, old key): that
    /// load fails the key check and is retried when the key's change is seen a poll later.
    pub(crate) fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            let stamps =
                |c: &Credentials| c.paths().into_iter().map(file_stamp).collect::<Vec<_>>();
            let mut last = stamps(&self);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(CREDENTIALS_POLL) => {}
                }
                let now = stamps(&self);
                if now != last {
                    last = now;
                    self.reload_and_log();
                }
            }
        });
    }
}

/// What identifies a version of a file: modification time, size and inode (an atomic rename
/// changes the inode even within one mtime tick).
pub(crate) fn file_stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> CredentialFiles {
        skv_certs::init(&skv_certs::InitOptions {
            dir: dir.to_owned(),
            cluster: "test".into(),
            nodes: vec!["n1".into()],
            clients: Vec::new(),
            key_type: skv_certs::KeyType::P256,
            force: false,
        })
        .unwrap();
        let layout = skv_certs::Layout::new(dir);
        CredentialFiles {
            ca: layout.ca_cert(),
            cert: layout.node_cert("n1"),
            key: layout.node_key("n1"),
            crl: Some(layout.crl()),
            client_auth: true,
        }
    }

    #[test]
    fn sessions_resume_by_stateless_tickets_whose_keys_change_at_every_reload() {
        let dir = tempfile::tempdir().unwrap();
        let credentials = Credentials::load(files(dir.path())).unwrap();
        let (_, before) = credentials.server_config();
        assert!(before.ticketer.enabled(), "stateless tickets are on");
        assert!(before.send_tls13_tickets > 0);
        credentials.reload().unwrap();
        let (_, after) = credentials.server_config();
        assert!(after.ticketer.enabled());
        // A fresh ticketer, so no ticket of the old one opens (the revocation property
        // `revoke::a_session_resumed_after_its_certificate_is_revoked_is_refused` checks
        // end to end).
        assert!(!Arc::ptr_eq(&before.ticketer, &after.ticketer));
    }
}
