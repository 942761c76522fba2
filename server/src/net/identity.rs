//! Who is on the other end of a connection, from the SPIFFE ID in its certificate.
//!
//! Checkpoint 1 (the TLS handshake) has already proved the certificate chains to the cluster
//! CA. This module only reads the identity out of it: `spiffe://<cluster>/node/<id>` is a
//! node, anything else is a client. The two roles never mix: a node certificate is admitted
//! to the peer protocol (map distribution, slot moves) and to nothing else, and a client
//! certificate is never admitted to the peer protocol, whatever token comes with it.

use x509_parser::extensions::GeneralName;

/// The role a connection's certificate gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerKind {
    /// A node of this cluster: `spiffe://<our cluster>/node/<id>`.
    Peer(String),
    /// A node identity of another cluster (a misconfigured peer): admitted to nothing but
    /// PING and the map.
    ForeignNode,
    /// Everyone else: client certificates, and connections without one (plaintext, or TLS
    /// without client authentication). Subject to the token checkpoints.
    Client,
}

/// Every `spiffe://` URI SAN of a DER certificate. A certificate that does not parse yields
/// none (rustls already verified it, so that would be a parser disagreement, not an attack
/// worth more than "no identity").
pub(crate) fn spiffe_ids(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The node id in `spiffe://<cluster>/node/<id>`, when `uri` has exactly that shape.
pub(crate) fn node_id_in<'a>(uri: &'a str, cluster: &str) -> Option<&'a str> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (domain, path) = rest.split_once('/')?;
    let id = path.strip_prefix("node/")?;
    (domain == cluster && !id.is_empty() && !id.contains('/')).then_some(id)
}

/// The node id of the first `spiffe://<cluster>/node/<id>` of the first certificate in a PEM
/// file, whatever the cluster: a node's default name. `None` if the file holds no such thing
/// (loading it properly reports why, later).
pub(crate) fn node_id_of_file(path: &std::path::Path) -> Option<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(path).ok()?;
    spiffe_ids(der.as_ref()).into_iter().find_map(|uri| {
        let domain = uri.strip_prefix("spiffe://")?.split_once('/')?.0.to_owned();
        node_id_in(&uri, &domain).map(str::to_owned)
    })
}

/// The trust domain of the first SPIFFE ID in a certificate: the cluster a node belongs to.
pub(crate) fn trust_domain(der: &[u8]) -> Option<String> {
    spiffe_ids(der).into_iter().find_map(|uri| {
        let rest = uri.strip_prefix("spiffe://")?;
        rest.split_once('/').map(|(domain, _)| domain.to_owned())
    })
}

/// Classify the leaf certificate of a connection (`None`: the peer presented none).
pub(crate) fn classify(leaf: Option<&[u8]>, cluster: &str) -> PeerKind {
    let Some(der) = leaf else {
        return PeerKind::Client;
    };
    let ids = spiffe_ids(der);
    if let Some(id) = ids.iter().find_map(|uri| node_id_in(uri, cluster)) {
        return PeerKind::Peer(id.to_owned());
    }
    if ids.iter().any(|uri| {
        uri.strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(_, path)| path.starts_with("node/"))
    }) {
        return PeerKind::ForeignNode;
    }
    PeerKind::Client
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use skv_certs::{Ca, KeyType, LeafSpec};

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn node_and_client_certificates_are_told_apart() {
        let ca = Ca::generate("prod", KeyType::P256).unwrap();
        let node = der(&ca.issue(&LeafSpec::node("n2")).unwrap().cert_pem);
        let client = der(&ca.issue(&LeafSpec::client("alice")).unwrap().cert_pem);
        assert_eq!(classify(Some(&node), "prod"), PeerKind::Peer("n2".into()));
        assert_eq!(classify(Some(&node), "staging"), PeerKind::ForeignNode);
        assert_eq!(classify(Some(&client), "prod"), PeerKind::Client);
        assert_eq!(classify(None, "prod"), PeerKind::Client);
        assert_eq!(classify(Some(b"garbage"), "prod"), PeerKind::Client);
        assert_eq!(trust_domain(&node).as_deref(), Some("prod"));
    }

    #[test]
    fn only_the_exact_node_shape_names_a_node() {
        assert_eq!(node_id_in("spiffe://c/node/n1", "c"), Some("n1"));
        for uri in [
            "spiffe://c/node/",
            "spiffe://c/node/n1/extra",
            "spiffe://c/client/n1",
            "spiffe://other/node/n1",
            "https://c/node/n1",
        ] {
            assert_eq!(node_id_in(uri, "c"), None, "{uri}");
        }
    }
}
