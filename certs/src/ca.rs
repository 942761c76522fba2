//! The cluster CA held in memory and the leaf certificates it issues. This module owns what a
//! certificate says: the CA's constraints, each leaf kind's SANs, EKUs and key usage, and the
//! SPIFFE URI that tells a node certificate from a client certificate.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

use crate::{spiffe_client, spiffe_node, validate_name, CertsError, KeyType};

/// The CA's common name is `skv <cluster> dev CA`; [`Ca::load`] reads the cluster back from it.
const CA_CN_PREFIX: &str = "skv ";
const CA_CN_SUFFIX: &str = " dev CA";

/// A cluster CA in memory, able to issue node and client certificates.
///
/// It remembers its cluster name because every leaf carries a SPIFFE URI built from it.
pub struct Ca {
    cluster: String,
    key_type: KeyType,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// How the CA's own key identifier is derived: CRLs it signs name it in their authority
    /// key identifier, as leaves do.
    key_id: KeyIdMethod,
}

impl fmt::Debug for Ca {
    // Written by hand so the private key can never end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cluster", &self.cluster)
            .field("key_type", &self.key_type)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Generates a new self-signed CA for `cluster`, valid from an hour ago for 10 years.
    ///
    /// The certificate is CA:TRUE with path length 0 (it signs leaves only, never another CA),
    /// key usage keyCertSign + cRLSign, and common name `skv <cluster> dev CA`.
    pub fn generate(cluster: &str, key_type: KeyType) -> Result<Ca, CertsError> {
        let now = OffsetDateTime::now_utc();
        // An hour of slack so a node whose clock is slightly behind still accepts the CA.
        Ca::generate_with_validity(
            cluster,
            key_type,
            now - Duration::hours(1),
            now + Duration::days(3650),
        )
    }

    /// Like [`Ca::generate`] with an explicit validity window, for tests that need an expired
    /// or not-yet-valid CA.
    pub fn generate_with_validity(
        cluster: &str,
        key_type: KeyType,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Ca, CertsError> {
        validate_name("cluster", cluster)?;
        let key = key_type.generate()?;

        let mut params = CertificateParams::default();
        params.distinguished_name = ca_distinguished_name(cluster);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;

        let cert = params
            .self_signed(&key)
            .map_err(|e| CertsError::rcgen(format!("self-signing the {cluster} CA"), e))?;
        Ok(Ca {
            cluster: cluster.to_owned(),
            key_type,
            cert_pem: cert.pem(),
            key_id: params.key_identifier_method.clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a CA written by [`init`](crate::init) (or by [`Ca::cert_pem`] /
    /// [`Ca::key_pem`]).
    ///
    /// The cluster name is read back from the certificate's common name
    /// (`skv <cluster> dev CA`), so a CA not made by this crate is refused. The key must be
    /// PKCS#8 and must match the certificate's public key. Leaves issued afterwards name the
    /// CA by the exact subject bytes and key identifier found in the certificate, so they chain
    /// to it even if it was written by an older version of this crate.
    pub fn load(cert_pem_path: &Path, key_pem_path: &Path) -> Result<Ca, CertsError> {
        let invalid = |path: &Path, reason: String| CertsError::InvalidCa {
            path: path.to_owned(),
            reason,
        };
        let cert_pem =
            std::fs::read_to_string(cert_pem_path).map_err(|e| CertsError::io(cert_pem_path, e))?;
        let key_pem =
            std::fs::read_to_string(key_pem_path).map_err(|e| CertsError::io(key_pem_path, e))?;

        let ders = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(cert_pem_path, format!("bad PEM: {e}")))?;
        let [der] = ders.as_slice() else {
            return Err(invalid(
                cert_pem_path,
                format!("expected exactly one certificate, found {}", ders.len()),
            ));
        };
        let (_, x509) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| invalid(cert_pem_path, format!("not an X.509 certificate: {e}")))?;

        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                cert_pem_path,
                "not a CA certificate (no CA:TRUE basic constraint)".to_owned(),
            ));
        }
        let cluster = cluster_from_subject(x509.subject()).ok_or_else(|| {
            invalid(
                cert_pem_path,
                format!(
                    "subject {:?} is not `CN=skv <cluster> dev CA`; only CAs made by \
                     `skv certs init` can be reloaded",
                    x509.subject().to_string()
                ),
            )
        })?;

        let key = KeyPair::from_pem(&key_pem).map_err(|e| {
            invalid(
                key_pem_path,
                format!("not a PKCS#8 P-256, Ed25519 or RSA private key: {e}"),
            )
        })?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(invalid(
                key_pem_path,
                format!(
                    "this key does not belong to the certificate {}",
                    cert_pem_path.display()
                ),
            ));
        }
        let key_type = KeyType::of(&key).ok_or_else(|| {
            invalid(
                key_pem_path,
                "unsupported key algorithm (expected P-256, Ed25519 or RSA)".to_owned(),
            )
        })?;

        let mut params = CertificateParams::default();
        params.distinguished_name = copy_name(x509.subject()).map_err(|reason| {
            invalid(cert_pem_path, format!("cannot copy the subject: {reason}"))
        })?;
        // Reuse the CA's own subject key identifier so every leaf's authority key identifier
        // matches it, whatever method produced it.
        if let Some(ski) = x509
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
        {
            params.key_identifier_method = KeyIdMethod::PreSpecified(ski);
        }
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];

        Ok(Ca {
            cluster,
            key_type,
            cert_pem,
            key_id: params.key_identifier_method.clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The rcgen issuer (CA name and key), for the CRLs [`crate::crl`] signs.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// How the CA's key identifier is derived (see the field).
    pub(crate) fn key_id(&self) -> &KeyIdMethod {
        &self.key_id
    }

    /// The cluster this CA belongs to (the `<cluster>` of every SPIFFE ID it issues).
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA's own key type (leaves may use another one).
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The CA certificate in PEM: the trust anchor every node and client loads.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key in PKCS#8 PEM. Secret: whoever holds it can mint any identity.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate with a fresh key of `spec.key_type`.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, CertsError> {
        let role = match spec.kind {
            LeafKind::Node | LeafKind::ServerAuthOnly => "node",
            LeafKind::Client => "client",
        };
        validate_name(role, &spec.name)?;
        let what = || format!("issuing the certificate for {role} {}", spec.name);

        let host_names = match (&spec.dns_names, spec.kind) {
            (Some(names), _) => names.clone(),
            (None, LeafKind::Node | LeafKind::ServerAuthOnly) => vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
                spec.name.clone(),
            ],
            (None, LeafKind::Client) => Vec::new(),
        };
        let mut sans = host_names
            .into_iter()
            .map(|name| match name.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ia5String::try_from(name).map(SanType::DnsName),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertsError::rcgen(what(), e))?;
        let spiffe = match spec.kind {
            LeafKind::Node | LeafKind::ServerAuthOnly => spiffe_node(&self.cluster, &spec.name),
            LeafKind::Client => spiffe_client(&self.cluster, &spec.name),
        };
        sans.push(SanType::URI(
            Ia5String::try_from(spiffe).map_err(|e| CertsError::rcgen(what(), e))?,
        ));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, spec.name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, format!("skv {}", self.cluster));
        params.subject_alt_names = sans;
        // An explicit CA:FALSE, so no verifier can be talked into treating a leaf as a CA.
        params.is_ca = IsCa::ExplicitNoCa;
        // digitalSignature is all TLS 1.3 (and ECDHE in TLS 1.2) needs from a leaf key.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match spec.kind {
            // Nodes both accept connections and dial their peers.
            LeafKind::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            LeafKind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            LeafKind::ServerAuthOnly => vec![ExtendedKeyUsagePurpose::ServerAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        // serial_number stays None: rcgen then derives it from a hash of the leaf's fresh
        // public key, so serials are unique without a counter to persist.

        let key = spec.key_type.generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CertsError::rcgen(what(), e))?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_distinguished_name(cluster: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{CA_CN_PREFIX}{cluster}{CA_CN_SUFFIX}"),
    );
    dn.push(DnType::OrganizationName, format!("skv {cluster}"));
    dn
}

fn cluster_from_subject(subject: &X509Name<'_>) -> Option<String> {
    let cn = subject.iter_common_name().next()?.as_str().ok()?;
    let cluster = cn.strip_prefix(CA_CN_PREFIX)?.strip_suffix(CA_CN_SUFFIX)?;
    validate_name("cluster", cluster).ok()?;
    Some(cluster.to_owned())
}

/// Copies a subject into rcgen's form keeping each value's ASN.1 string type: verifiers
/// match a leaf's issuer to its CA's subject byte for byte, so re-encoding a PrintableString
/// as a UTF8String would silently break the chain.
fn copy_name(name: &X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("multi-valued or empty RDNs are not supported".to_owned());
        };
        let oid = attr
            .attr_type()
            .iter()
            .ok_or("attribute OID too large")?
            .collect::<Vec<u64>>();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data).map_err(|_| "attribute is not text")?;
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text.try_into()
                    .map_err(|e| format!("bad PrintableString: {e}"))?,
            ),
            Tag::Ia5String => {
                DnValue::Ia5String(text.try_into().map_err(|e| format!("bad IA5String: {e}"))?)
            }
            tag => return Err(format!("unsupported string type {tag}")),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeafKind {
    /// A node: SPIFFE `…/node/<name>`, EKU serverAuth + clientAuth (nodes dial each other),
    /// default SANs `localhost`, `127.0.0.1`, `::1` and the node name.
    Node,
    /// A client: SPIFFE `…/client/<name>`, EKU clientAuth only, no DNS/IP SANs by default.
    Client,
    /// For negative tests: a node-shaped certificate (node SPIFFE ID, node default SANs) with
    /// only the serverAuth EKU, which a peer must refuse as a client certificate.
    ServerAuthOnly,
}

/// Everything [`Ca::issue`] needs to know about one leaf. The fields are public so tests can
/// build deliberately wrong certificates (expired, wrong SANs); the constructors give the
/// values `skv certs init` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Node id or client name; validated like every name (see [`crate::validate_name`]).
    pub name: String,
    /// Node, client or a deliberately limited certificate.
    pub kind: LeafKind,
    /// Key type of the leaf's own key (independent of the CA's).
    pub key_type: KeyType,
    /// `None`: the kind's default DNS/IP SANs. `Some(list)`: exactly these (entries that
    /// parse as IP addresses become IP SANs, the rest DNS SANs). The SPIFFE URI SAN is always
    /// added.
    pub dns_names: Option<Vec<String>>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A spec with the defaults: P-256 key, default SANs, valid from an hour ago (clock skew
    /// between nodes) for one year.
    pub fn new(name: impl Into<String>, kind: LeafKind) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            name: name.into(),
            kind,
            key_type: KeyType::default(),
            dns_names: None,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
        }
    }

    /// A node certificate spec with the defaults of [`LeafSpec::new`].
    pub fn node(name: impl Into<String>) -> LeafSpec {
        LeafSpec::new(name, LeafKind::Node)
    }

    /// A client certificate spec with the defaults of [`LeafSpec::new`].
    pub fn client(name: impl Into<String>) -> LeafSpec {
        LeafSpec::new(name, LeafKind::Client)
    }

    /// Sets the leaf's key type.
    pub fn with_key_type(mut self, key_type: KeyType) -> LeafSpec {
        self.key_type = key_type;
        self
    }

    /// Replaces the default DNS/IP SANs with exactly `names`.
    pub fn with_dns_names<S: Into<String>>(
        mut self,
        names: impl IntoIterator<Item = S>,
    ) -> LeafSpec {
        self.dns_names = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the validity window (tests use a window in the past for an expired certificate).
    pub fn with_validity(
        mut self,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> LeafSpec {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }
}

/// An issued leaf: certificate and private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    /// The leaf certificate (just the leaf; the CA certificate is distributed separately).
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key. Secret.
    pub key_pem: String,
}

impl fmt::Debug for Leaf {
    // By hand so a debug print of a Leaf never leaks the private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leaf")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[secret]")
            .finish()
    }
}
