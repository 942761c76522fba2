//! The ladder's credentials, all in one temporary directory: a dev PKI per certificate key
//! type, and per token algorithm an issuer keyset and a token for the client.
//!
//! A credential that cannot be made (RSA keys need the `openssl` command) does not stop the
//! ladder: the cases that need it are reported as skipped, with the reason.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use skv_certs::issuer::{keys_init, mint, Alg, IssuerKey, TokenSpec};
use skv_certs::{InitOptions, KeyType, Layout};
use skv_token::parse_allow;

/// Cluster name of the ladder's PKI and maps.
pub(crate) const CLUSTER: &str = "ladder";

/// The grant every ladder token carries: read and write under the bench key prefix, exactly
/// what a real client of one tenant would hold (a prefix check happens on every request).
pub(crate) const TOKEN_SCOPE: &str = "read,write:bench/";

/// A token algorithm's files.
#[derive(Debug)]
pub(crate) struct Issuer {
    /// The keyset the node verifies with.
    pub(crate) keyset: PathBuf,
    /// A token for `alice` of the P-256 PKI, bound to her certificate.
    pub(crate) token: String,
}

/// Everything the ladder's nodes and clients authenticate with.
#[derive(Debug)]
pub(crate) struct Credentials {
    pkis: HashMap<KeyType, Result<Layout, String>>,
    issuers: HashMap<Alg, Result<Issuer, String>>,
}

impl Credentials {
    /// Make what `key_types` and `algs` need under `dir`, with certificates for nodes
    /// `n1..=n{nodes}`. Only the P-256 PKI is required
    /// (the main ladder runs on it, and tokens are bound to its client certificate); every
    /// other failure is kept and reported by the cases that need it.
    pub(crate) fn create(
        dir: &Path,
        key_types: &[KeyType],
        algs: &[Alg],
        token_ttl: Duration,
        nodes: usize,
    ) -> Result<Credentials, String> {
        let mut pkis = HashMap::new();
        for &key_type in key_types {
            let layout = Layout::new(dir.join(format!("pki-{}", key_type.as_str())));
            let made = skv_certs::init(&InitOptions {
                dir: layout.dir().to_owned(),
                cluster: CLUSTER.into(),
                nodes: (1..=nodes.max(1)).map(|i| format!("n{i}")).collect(),
                clients: vec!["alice".into()],
                key_type,
                force: false,
            })
            .map(|_| layout)
            .map_err(|e| format!("cannot make the {} PKI: {e}", key_type.as_str()));
            pkis.insert(key_type, made);
        }
        let main = pkis
            .get(&KeyType::P256)
            .cloned()
            .unwrap_or_else(|| Err("no P-256 PKI was asked for".into()))?;
        let alice = cert_der(&main.client_cert("alice"))?;
        let mut issuers = HashMap::new();
        for &alg in algs {
            let issuer = make_issuer(
                &dir.join(format!("issuer-{}", alg.as_str())),
                alg,
                &alice,
                token_ttl,
            )
            .map_err(|e| format!("cannot make the {} token issuer: {e}", alg.as_str()));
            issuers.insert(alg, issuer);
        }
        Ok(Credentials { pkis, issuers })
    }

    /// The PKI of `key_type`, or why it is missing.
    pub(crate) fn pki(&self, key_type: KeyType) -> Result<&Layout, String> {
        match self.pkis.get(&key_type) {
            Some(Ok(layout)) => Ok(layout),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!("no {} PKI was made", key_type.as_str())),
        }
    }

    /// The issuer of `alg`, or why it is missing.
    pub(crate) fn issuer(&self, alg: Alg) -> Result<&Issuer, String> {
        match self.issuers.get(&alg) {
            Some(Ok(issuer)) => Ok(issuer),
            Some(Err(why)) => Err(why.clone()),
            None => Err(format!("no {} token issuer was made", alg.as_str())),
        }
    }
}

fn make_issuer(dir: &Path, alg: Alg, bind_der: &[u8], ttl: Duration) -> Result<Issuer, String> {
    let report = keys_init(dir, alg, None).map_err(|e| e.to_string())?;
    let key = IssuerKey::load(dir).map_err(|e| e.to_string())?;
    let token = mint(
        &key,
        &TokenSpec {
            sub: "alice".into(),
            scopes: vec![parse_allow(TOKEN_SCOPE).map_err(|e| e.to_string())?],
            ttl,
            aud: skv_token::DEFAULT_TOKEN_AUDIENCE.into(),
            iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
            bind_cert_der: Some(bind_der.to_vec()),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Issuer {
        keyset: report.keyset_file,
        token,
    })
}

/// The DER of the first certificate in a PEM file.
fn cert_der(path: &Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))
}
