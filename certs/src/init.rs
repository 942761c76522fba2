//! `skv certs init`: the on-disk layout of a cluster's credentials (a stable contract shared
//! with the node, the client and the tests) and the all-or-nothing logic that fills it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::write::{occupied, write_atomic, PUBLIC_MODE, SECRET_MODE};
use crate::{validate_name, Ca, CertsError, KeyType, LeafSpec};

/// What `skv certs init` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// Directory receiving the files (created if missing).
    pub dir: PathBuf,
    /// Cluster name: the trust domain of every SPIFFE ID.
    pub cluster: String,
    /// Node ids to issue certificates for (may be empty; defaults are the CLI's business).
    pub nodes: Vec<String>,
    /// Client names to issue certificates and profiles for (may be empty).
    pub clients: Vec<String>,
    /// Key type of a newly generated CA and of every leaf issued by this run. A reused CA
    /// keeps its own key type.
    pub key_type: KeyType,
    /// Regenerate everything, the CA included, overwriting existing files.
    pub force: bool,
}

/// What [`init`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Every file written, in the order written.
    pub written: Vec<PathBuf>,
    /// True when an existing CA in the directory was loaded and reused (so `ca.pem` and
    /// `ca-key.pem` are not in `written`).
    pub ca_reused: bool,
}

/// Paths of the files `skv certs init` writes, relative to one directory. This layout is a
/// stable contract: nodes, clients, tests and `certs/README.md` all rely on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Layout {
        Layout { dir: dir.into() }
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/ca.pem`: the CA certificate, the trust anchor of every node and client.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `DIR/ca-key.pem`: the CA private key (secret).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// `DIR/crl.pem`: the CA's certificate revocation list, what nodes load with `--crl`
    /// and `skv certs revoke` extends.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.pem")
    }

    /// `DIR/nodes`.
    pub fn nodes_dir(&self) -> PathBuf {
        self.dir.join("nodes")
    }

    /// `DIR/clients`.
    pub fn clients_dir(&self) -> PathBuf {
        self.dir.join("clients")
    }

    /// `DIR/nodes/<node>.pem`.
    pub fn node_cert(&self, node: &str) -> PathBuf {
        self.nodes_dir().join(format!("{node}.pem"))
    }

    /// `DIR/nodes/<node>-key.pem` (secret).
    pub fn node_key(&self, node: &str) -> PathBuf {
        self.nodes_dir().join(format!("{node}-key.pem"))
    }

    /// `DIR/clients/<client>.pem`.
    pub fn client_cert(&self, client: &str) -> PathBuf {
        self.clients_dir().join(format!("{client}.pem"))
    }

    /// `DIR/clients/<client>-key.pem` (secret).
    pub fn client_key(&self, client: &str) -> PathBuf {
        self.clients_dir().join(format!("{client}-key.pem"))
    }

    /// `DIR/clients/<client>.toml`: the client profile.
    pub fn client_profile(&self, client: &str) -> PathBuf {
        self.clients_dir().join(format!("{client}.toml"))
    }
}

/// The client profile. Paths are relative to the profile's own directory so a PKI directory
/// can be moved or copied as a whole. Names are validated to `[a-z0-9._-]`, so they need no
/// TOML escaping.
fn client_profile(cluster: &str, client: &str) -> String {
    format!(
        "# skv client profile for {client} (cluster {cluster}), written by `skv certs init`\n\
         ca = \"../ca.pem\"\n\
         cert = \"{client}.pem\"\n\
         key = \"{client}-key.pem\"\n"
    )
}

struct Pending {
    path: PathBuf,
    contents: String,
    mode: u32,
}

/// Creates or extends a dev PKI in `opts.dir`; see `certs/README.md` for the files.
///
/// Without `force`: an existing CA (`ca.pem` + `ca-key.pem`) is loaded and reused, so a later
/// run can add a client to an existing cluster; any other target file that already exists is
/// an [`CertsError::AlreadyExists`]. All checks, and all key generation, happen before the
/// first write, so a refused or failed run leaves the directory untouched.
///
/// With `force`: everything asked for is regenerated, including a new CA. Certificates from
/// earlier runs that are not regenerated no longer chain to the new CA.
pub fn init(opts: &InitOptions) -> Result<InitReport, CertsError> {
    validate_name("cluster", &opts.cluster)?;
    check_names("node", &opts.nodes)?;
    check_names("client", &opts.clients)?;

    let layout = Layout::new(&opts.dir);
    let (ca_cert, ca_key) = (layout.ca_cert(), layout.ca_key());
    let reuse_ca = !opts.force
        && match (occupied(&ca_cert)?, occupied(&ca_key)?) {
            (true, true) => true,
            (false, false) => false,
            (true, false) => {
                return Err(CertsError::IncompleteCa {
                    present: ca_cert,
                    missing: ca_key,
                })
            }
            (false, true) => {
                return Err(CertsError::IncompleteCa {
                    present: ca_key,
                    missing: ca_cert,
                })
            }
        };

    let mut targets = Vec::new();
    if !reuse_ca {
        targets.extend([ca_cert.clone(), ca_key.clone(), layout.crl()]);
    }
    for node in &opts.nodes {
        targets.extend([layout.node_cert(node), layout.node_key(node)]);
    }
    for client in &opts.clients {
        targets.extend([
            layout.client_cert(client),
            layout.client_key(client),
            layout.client_profile(client),
        ]);
    }
    if !opts.force {
        for path in &targets {
            if occupied(path)? {
                return Err(CertsError::AlreadyExists { path: path.clone() });
            }
        }
    }

    let ca = if reuse_ca {
        let ca = Ca::load(&ca_cert, &ca_key)?;
        if ca.cluster() != opts.cluster {
            return Err(CertsError::ClusterMismatch {
                path: ca_cert,
                found: ca.cluster().to_owned(),
                expected: opts.cluster.clone(),
            });
        }
        ca
    } else {
        Ca::generate(&opts.cluster, opts.key_type)?
    };

    // Build every file in memory first: key generation (openssl for RSA) is the step most
    // likely to fail, and it must not fail halfway through writing.
    let mut pending = Vec::new();
    if !reuse_ca {
        pending.push(Pending {
            path: ca_cert,
            contents: ca.cert_pem(),
            mode: PUBLIC_MODE,
        });
        pending.push(Pending {
            path: ca_key,
            contents: ca.key_pem(),
            mode: SECRET_MODE,
        });
    }
    // A CRL with no entries from the start, so nodes can run with --crl before anything is
    // revoked. A reused CA keeps its CRL (it may list revocations); one missing is created.
    let crl = layout.crl();
    if !reuse_ca || !occupied(&crl)? {
        pending.push(Pending {
            path: crl,
            contents: crate::crl::empty_crl_pem(&ca)?,
            mode: PUBLIC_MODE,
        });
    }
    for node in &opts.nodes {
        let leaf = ca.issue(&LeafSpec::node(node.as_str()).with_key_type(opts.key_type))?;
        pending.push(Pending {
            path: layout.node_cert(node),
            contents: leaf.cert_pem,
            mode: PUBLIC_MODE,
        });
        pending.push(Pending {
            path: layout.node_key(node),
            contents: leaf.key_pem,
            mode: SECRET_MODE,
        });
    }
    for client in &opts.clients {
        let leaf = ca.issue(&LeafSpec::client(client.as_str()).with_key_type(opts.key_type))?;
        pending.push(Pending {
            path: layout.client_cert(client),
            contents: leaf.cert_pem,
            mode: PUBLIC_MODE,
        });
        pending.push(Pending {
            path: layout.client_key(client),
            contents: leaf.key_pem,
            mode: SECRET_MODE,
        });
        pending.push(Pending {
            path: layout.client_profile(client),
            contents: client_profile(&opts.cluster, client),
            mode: PUBLIC_MODE,
        });
    }

    let mut dirs = vec![layout.dir().to_owned()];
    if !opts.nodes.is_empty() {
        dirs.push(layout.nodes_dir());
    }
    if !opts.clients.is_empty() {
        dirs.push(layout.clients_dir());
    }
    for dir in dirs {
        std::fs::create_dir_all(&dir).map_err(|e| CertsError::io(dir, e))?;
    }

    let mut report = InitReport {
        written: Vec::with_capacity(pending.len()),
        ca_reused: reuse_ca,
    };
    for file in pending {
        write_atomic(&file.path, file.contents.as_bytes(), file.mode)?;
        report.written.push(file.path);
    }
    Ok(report)
}

fn check_names(what: &'static str, names: &[String]) -> Result<(), CertsError> {
    let mut seen = HashSet::new();
    for name in names {
        validate_name(what, name)?;
        if !seen.insert(name.as_str()) {
            return Err(CertsError::DuplicateName {
                what,
                name: name.clone(),
            });
        }
    }
    Ok(())
}
