//! Where and how to connect: the node address, TLS credentials, client profiles.
//!
//! A profile is a small TOML file naming the CA, certificate and key (and optionally the
//! address), written per client by `skv certs init`. Relative paths in it are relative to the
//! profile's own directory, so a PKI directory can be moved as a whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use crate::error::ClientError;

/// Default node address (where a node listens unless told otherwise).
pub use skv_proto::DEFAULT_ADDR;

/// The crypto provider of every TLS config skv builds, client and node alike: ring, with the
/// TLS 1.3 suites in the order skv prefers them.
///
/// AES-128-GCM comes first, ahead of ring's default AES-256-GCM: it offers 128-bit security,
/// as the X25519 exchange and the P-256 certificates in front of it do, so the longer key buys
/// no strength the handshake has not already capped, and its ten rounds instead of fourteen
/// make a record cheaper to seal and open (`cargo bench -p skv-benches --bench tls --
/// record_suite`: 10-12 % per record round trip, at one answer and at sixteen). AES-256-GCM
/// and ChaCha20-Poly1305 stay on offer for peers that insist. A node honours the client's
/// order (rustls' default), so both ends list the same one.
pub fn tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::ring::{cipher_suite, default_provider};
    let mut provider = default_provider();
    let preferred = [
        cipher_suite::TLS13_AES_128_GCM_SHA256,
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    // Whatever else ring offers (its TLS 1.2 suites, unused under TLS 1.3 only) keeps its
    // place behind them.
    provider
        .cipher_suites
        .retain(|s| !preferred.iter().any(|p| p.suite() == s.suite()));
    provider.cipher_suites.splice(0..0, preferred);
    Arc::new(provider)
}

/// A client profile file.
#[derive(Debug, Default, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Node address, `HOST:PORT`: the first node the client contacts (`--addr` overrides it).
    /// Any node of a cluster will do, since every node serves the cluster map.
    pub addr: Option<String>,
    /// More node addresses (`HOST:PORT`), tried in order when the first contact does not
    /// answer, so the client still finds the cluster with that node down. `skv cluster init`
    /// writes every node here; routing itself follows the map the nodes serve, not this list.
    pub nodes: Option<Vec<String>>,
    /// Cluster CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    pub key: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
}

impl Profile {
    /// Read a profile, resolving relative paths against its directory.
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Config(format!(
                "cannot read profile {}: {e}; `skv certs init` writes one per client",
                path.display()
            ))
        })?;
        let mut profile: Profile = toml::from_str(&text)
            .map_err(|e| ClientError::Config(format!("invalid profile {}: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut profile.ca,
            &mut profile.cert,
            &mut profile.key,
            &mut profile.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(profile)
    }
}

/// Transport security of a connection.
#[derive(Debug, Clone)]
pub enum Security {
    /// No TLS: only for nodes started with `--insecure-plaintext`.
    Plaintext,
    /// TLS 1.3, verifying the node against `ca`, presenting `cert`/`key` when given.
    Tls {
        /// Cluster CA.
        ca: PathBuf,
        /// Client certificate and key; without them the node refuses the handshake.
        identity: Option<(PathBuf, PathBuf)>,
    },
}

/// Everything needed to open a connection.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `HOST:PORT` of the node.
    pub addr: String,
    /// TLS or not.
    pub security: Security,
    /// Name to verify in the node's certificate; defaults to the host part of `addr`.
    pub server_name: Option<String>,
    /// Deadline for TCP connect, TLS handshake and HELLO together.
    pub connect_timeout: Duration,
    /// Deadline for each request's answer.
    pub request_timeout: Duration,
    /// Bearer token for nodes that check tokens: in HELLO, and where the node reads tokens
    /// per request, with every request (or, see `token_handles`, registered once).
    pub token: Option<String>,
    /// On a node that reads tokens per request and speaks protocol version 2, register the
    /// token once per connection (REGISTER_TOKEN) and name it by its handle in each request,
    /// instead of sending the whole token every time (docs/PROTOCOL.md, "Token handles").
    /// On by default; a node that refuses the registration gets the full token instead.
    pub token_handles: bool,
    /// The node the certificate must name, beyond the host name: its SPIFFE ID must be
    /// `spiffe://<cluster>/node/<id>`. The cluster client sets it from the map for every
    /// node it dials, so another node's certificate (valid for the same host) is refused.
    /// `None`: only the host name is checked (a first contact, before any map is known).
    pub expect_node: Option<ExpectedNode>,
}

/// A node identity a connection's certificate must carry ([`ConnectOptions::expect_node`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedNode {
    /// The cluster name: the SPIFFE trust domain.
    pub cluster: String,
    /// The node id.
    pub id: String,
}

impl ExpectedNode {
    /// The SPIFFE ID this identity stands for.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}/node/{}", self.cluster, self.id)
    }
}

impl ConnectOptions {
    /// Options for `addr` with the given security and default timeouts.
    pub fn new(addr: impl Into<String>, security: Security) -> Self {
        Self {
            addr: addr.into(),
            security,
            server_name: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            token: None,
            token_handles: true,
            expect_node: None,
        }
    }

    /// The host part of the address (without brackets for IPv6), used as the TLS name.
    pub(crate) fn host(&self) -> &str {
        let host = match self.addr.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.addr,
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// The name the node's certificate must carry.
    pub(crate) fn server_name(&self) -> Result<ServerName<'static>, ClientError> {
        let name = self.server_name.as_deref().unwrap_or_else(|| self.host());
        ServerName::try_from(name.to_owned()).map_err(|_| {
            ClientError::Config(format!(
                "`{name}` is not a valid DNS name or IP address to verify the node's certificate against"
            ))
        })
    }
}

fn read_pem_error(
    what: &str,
    flag: &str,
    path: &Path,
    detail: impl std::fmt::Display,
) -> ClientError {
    ClientError::Config(format!(
        "cannot load the {what} from {} ({flag}): {detail}; create dev credentials with `skv certs init`",
        path.display()
    ))
}

/// Build the rustls client config for `security`, or `None` for plaintext.
pub(crate) fn tls_config(security: &Security) -> Result<Option<Arc<ClientConfig>>, ClientError> {
    let Security::Tls { ca, identity } = security else {
        return Ok(None);
    };
    let mut roots = RootCertStore::empty();
    let ca_certs = load_certs(ca, "CA certificate", "--ca")?;
    for cert in ca_certs {
        roots
            .add(cert)
            .map_err(|e| read_pem_error("CA certificate", "--ca", ca, e))?;
    }
    let builder = ClientConfig::builder_with_provider(tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ClientError::Config(format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = load_certs(cert, "client certificate", "--cert")?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| read_pem_error("private key", "--key", key, e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                ClientError::Config(format!(
                    "the key in {} does not fit the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                ))
            })?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"skv/1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn load_certs(
    path: &Path,
    what: &str,
    flag: &str,
) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_pem_error(what, flag, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_pem_error(what, flag, path, e))?;
    if certs.is_empty() {
        return Err(read_pem_error(
            what,
            flag,
            path,
            "no CERTIFICATE block in the file",
        ));
    }
    Ok(certs)
}
