//! The cluster's certificate revocation list: the PEM file (`DIR/crl.pem` in the
//! [`Layout`](crate::Layout)) that nodes load with `--crl` and `skv certs revoke` extends.
//!
//! The file holds one CRL signed by the cluster CA. Revoking re-signs it with every serial it
//! already listed plus the new one and a CRL number one higher, and replaces the file
//! atomically, so a node polling it sees the old list or the new one, never half a file.

use std::path::{Path, PathBuf};

use rcgen::{CertificateRevocationListParams, RevokedCertParams, SerialNumber};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::ParsedExtension;

use crate::write::{write_atomic, PUBLIC_MODE};
use crate::{Ca, CertsError};

/// How long a CRL written here claims to be current. Nodes do not refuse a CRL past its
/// nextUpdate (rustls' default), so this only matters to other verifiers; a dev PKI has no
/// publication schedule, so it is long.
const CRL_VALIDITY: Duration = Duration::days(3650);

/// What [`revoke`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReport {
    /// The revoked certificate's serial number, lowercase hex.
    pub serial: String,
    /// True when the CRL already listed it (the file is left as it was).
    pub already_revoked: bool,
    /// How many serials the CRL lists now.
    pub revoked: usize,
    /// The CRL file.
    pub crl: PathBuf,
}

/// A CRL with no entries, signed by `ca`, PEM: what `skv certs init` writes so nodes can be
/// started with `--crl` before anything is revoked.
pub fn empty_crl_pem(ca: &Ca) -> Result<String, CertsError> {
    sign(ca, &[], 1)
}

/// Add the certificate in `cert_path` (PEM) to the CRL at `crl_path` (created if absent),
/// signed by `ca`. Idempotent: a serial already listed leaves the file untouched.
///
/// An existing CRL must be one `ca` issued (same issuer name and, when both carry one, the
/// same key identifier); the certificate must be one `ca` issued too, since a CRL only
/// speaks for its issuer's certificates.
pub fn revoke(ca: &Ca, crl_path: &Path, cert_path: &Path) -> Result<RevokeReport, CertsError> {
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).map_err(|e| {
        CertsError::InvalidCrl {
            path: crl_path.to_owned(),
            reason: format!("the CA certificate does not parse: {e}"),
        }
    })?;
    let (_, ca_x509) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| CertsError::InvalidCrl {
            path: crl_path.to_owned(),
            reason: format!("the CA certificate does not parse: {e}"),
        })?;

    let bad_cert = |reason: String| CertsError::InvalidCertificate {
        path: cert_path.to_owned(),
        reason,
    };
    let cert_pem = std::fs::read(cert_path).map_err(|e| CertsError::io(cert_path, e))?;
    let cert_der = CertificateDer::from_pem_slice(&cert_pem)
        .map_err(|e| bad_cert(format!("no PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
        .map_err(|e| bad_cert(format!("not an X.509 certificate: {e}")))?;
    if cert.issuer().as_raw() != ca_x509.subject().as_raw() {
        return Err(bad_cert(format!(
            "issued by {:?}, not by this CA ({:?}); a CRL only revokes its own CA's certificates",
            cert.issuer().to_string(),
            ca_x509.subject().to_string()
        )));
    }
    let serial = strip_zeros(cert.raw_serial()).to_vec();

    let (mut entries, number) = match std::fs::read(crl_path) {
        Ok(pem) => read_existing(ca, &ca_x509, crl_path, &pem)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0),
        Err(e) => return Err(CertsError::io(crl_path, e)),
    };
    let already_revoked = entries.iter().any(|(s, _)| *s == serial);
    if !already_revoked {
        entries.push((serial.clone(), OffsetDateTime::now_utc()));
        let pem = sign(ca, &entries, number.saturating_add(1))?;
        write_atomic(crl_path, pem.as_bytes(), PUBLIC_MODE)?;
    }
    Ok(RevokeReport {
        serial: hex(&serial),
        already_revoked,
        revoked: entries.len(),
        crl: crl_path.to_owned(),
    })
}

/// A revoked serial (without leading zero bytes) and when it was revoked.
type Entry = (Vec<u8>, OffsetDateTime);

/// The entries and CRL number of an existing CRL file, which `ca` must have issued.
fn read_existing(
    ca: &Ca,
    ca_x509: &x509_parser::certificate::X509Certificate<'_>,
    path: &Path,
    pem: &[u8],
) -> Result<(Vec<Entry>, u64), CertsError> {
    let invalid = |reason: String| CertsError::InvalidCrl {
        path: path.to_owned(),
        reason,
    };
    let der = CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| invalid(format!("no PEM X509 CRL block: {e}")))?;
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| invalid(format!("not an X.509 CRL: {e}")))?;
    if crl.issuer().as_raw() != ca_x509.subject().as_raw() {
        return Err(invalid(format!(
            "issued by {:?}, not by the CA of {} ({:?})",
            crl.issuer().to_string(),
            ca.cluster(),
            ca_x509.subject().to_string()
        )));
    }
    let ski = ca_x509
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    let aki = crl
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        });
    if let (Some(ski), Some(aki)) = (ski, aki) {
        if ski != aki {
            return Err(invalid(
                "signed by another key than this CA's (a CA of the same name made by another \
                 `skv certs init`?)"
                    .into(),
            ));
        }
    }
    let number = crl
        .crl_number()
        .map(|n| {
            let bytes = n.to_bytes_be();
            let bytes = strip_zeros(&bytes);
            if bytes.len() > 8 {
                u64::MAX - 1
            } else {
                bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            }
        })
        .unwrap_or(0);
    let entries = crl
        .iter_revoked_certificates()
        .map(|revoked| {
            let at = revoked.revocation_date.to_datetime();
            (strip_zeros(revoked.raw_serial()).to_vec(), at)
        })
        .collect();
    Ok((entries, number))
}

/// Sign a CRL listing `entries` with CRL number `number`, PEM.
fn sign(ca: &Ca, entries: &[Entry], number: u64) -> Result<String, CertsError> {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + CRL_VALIDITY,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries
            .iter()
            .map(|(serial, at)| RevokedCertParams {
                serial_number: SerialNumber::from_slice(serial),
                revocation_time: *at,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: ca.key_id().clone(),
    };
    let what = || format!("signing the CRL of {}", ca.cluster());
    params
        .signed_by(ca.issuer())
        .and_then(|crl| crl.pem())
        .map_err(|e| CertsError::rcgen(what(), e))
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyType, LeafSpec};

    fn write_leaf(dir: &Path, ca: &Ca, name: &str) -> (PathBuf, String) {
        let leaf = ca.issue(&LeafSpec::client(name)).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, &leaf.cert_pem).unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        (path, hex(strip_zeros(cert.raw_serial())))
    }

    fn listed(crl_path: &Path) -> (Vec<String>, u64) {
        let pem = std::fs::read(crl_path).unwrap();
        let der = CertificateRevocationListDer::from_pem_slice(&pem).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        let number = crl.crl_number().map(|n| n.to_u64_digits()[0]).unwrap();
        let serials = crl
            .iter_revoked_certificates()
            .map(|r| hex(strip_zeros(r.raw_serial())))
            .collect();
        (serials, number)
    }

    #[test]
    fn revoking_appends_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("prod", KeyType::P256).unwrap();
        let crl = dir.path().join("crl.pem");
        std::fs::write(&crl, empty_crl_pem(&ca).unwrap()).unwrap();
        let (alice, alice_serial) = write_leaf(dir.path(), &ca, "alice");
        let (bob, bob_serial) = write_leaf(dir.path(), &ca, "bob");

        let first = revoke(&ca, &crl, &alice).unwrap();
        assert!(!first.already_revoked);
        assert_eq!(first.serial, alice_serial);
        assert_eq!(listed(&crl), (vec![alice_serial.clone()], 2));

        let again = revoke(&ca, &crl, &alice).unwrap();
        assert!(again.already_revoked);
        assert_eq!(listed(&crl), (vec![alice_serial.clone()], 2));

        let second = revoke(&ca, &crl, &bob).unwrap();
        assert_eq!(second.revoked, 2);
        assert_eq!(listed(&crl), (vec![alice_serial, bob_serial], 3));
    }

    #[test]
    fn a_missing_crl_is_created_and_a_foreign_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("prod", KeyType::P256).unwrap();
        let (alice, serial) = write_leaf(dir.path(), &ca, "alice");
        let crl = dir.path().join("crl.pem");
        revoke(&ca, &crl, &alice).unwrap();
        assert_eq!(listed(&crl).0, vec![serial]);

        // Another CA of the same cluster name: same issuer name, other key.
        let other = Ca::generate("prod", KeyType::P256).unwrap();
        let err = revoke(&other, &crl, &alice).unwrap_err();
        assert!(
            matches!(
                err,
                CertsError::InvalidCertificate { .. } | CertsError::InvalidCrl { .. }
            ),
            "{err}"
        );
        let foreign = dir.path().join("foreign.pem");
        std::fs::write(&foreign, empty_crl_pem(&other).unwrap()).unwrap();
        let err = revoke(&ca, &foreign, &alice).unwrap_err();
        assert!(matches!(err, CertsError::InvalidCrl { .. }), "{err}");
    }
}
