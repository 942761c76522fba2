//! What the ladder measures: the rungs, the variants, and for each case the node's flags and
//! the client's connection settings.

use std::fmt;
use std::path::Path;

use serde::Serialize;
use skv_certs::issuer::Alg;
use skv_certs::KeyType;

use crate::Workload;
use skv_client::config::{ConnectOptions, Security};

use super::setup::{self, Credentials};

/// One level of security, each adding one layer to the one before (except `Null`, which is
/// L2's transport over a node that stores nothing and checks no token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Rung {
    /// Plaintext TCP (`--insecure-plaintext`).
    L0,
    /// TLS 1.3, the node authenticated, the client anonymous (`--insecure-no-client-auth`).
    L1,
    /// Mutual TLS 1.3: the client presents a certificate (the default).
    L2,
    /// L2 + a JWT verified once per connection, in HELLO (`--auth per-connection`).
    L3,
    /// L2 + a JWT verified on every request, no cache (`--auth per-request --token-cache 0`).
    L4,
    /// L4 with the verified-token cache (`--keyset` alone), the token registered once per
    /// connection and named by its handle (protocol version 2): the full request-path stack.
    /// Expiry, revocation and scopes are still checked on every request.
    L5,
    /// L5 + values encrypted at rest (`--master-key`: AES-256-GCM on every record and log
    /// entry).
    L6,
    /// Mutual TLS and framing in front of `--engine null`: the network stack's ceiling.
    Null,
}

impl Rung {
    /// The main ladder, in the order the report lists it.
    pub const MAIN: [Rung; 8] = [
        Rung::L0,
        Rung::L1,
        Rung::L2,
        Rung::L3,
        Rung::L4,
        Rung::L5,
        Rung::L6,
        Rung::Null,
    ];

    /// The label in results.json and the report: "L0" .. "L6", "null".
    pub fn label(self) -> &'static str {
        match self {
            Rung::L0 => "L0",
            Rung::L1 => "L1",
            Rung::L2 => "L2",
            Rung::L3 => "L3",
            Rung::L4 => "L4",
            Rung::L5 => "L5",
            Rung::L6 => "L6",
            Rung::Null => "null",
        }
    }

    /// What the rung adds, in a few words.
    pub fn adds(self) -> &'static str {
        match self {
            Rung::L0 => "plaintext TCP, no security",
            Rung::L1 => "TLS 1.3, server authenticated only",
            Rung::L2 => "mutual TLS 1.3 (client certificate)",
            Rung::L3 => "L2 + JWT verified once per connection",
            Rung::L4 => "L2 + JWT verified on every request, no cache",
            Rung::L5 => "L4 + verified-token cache + token handles",
            Rung::L6 => "L5 + values encrypted at rest",
            Rung::Null => "L2 transport, no storage, no auth",
        }
    }

    /// Whether skv has this rung yet (every rung of the ladder is built now; the report keeps
    /// the "not built" row kind for rungs to come).
    pub fn built(self) -> bool {
        true
    }

    /// Whether the client sends a token.
    fn uses_token(self) -> bool {
        matches!(self, Rung::L3 | Rung::L4 | Rung::L5 | Rung::L6)
    }
}

impl fmt::Display for Rung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A fresh random master key for an L6 node, in a 0600 file beside its data dir (the node's
/// data dir is new for every case, so is its key).
fn master_key_file(data_dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use rand::Rng;
    use std::io::Write;
    let path = data_dir.with_extension("master-key");
    let mut key = [0u8; 32];
    rand::thread_rng().fill(&mut key);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(&path)
        .and_then(|mut f| f.write_all(hex.as_bytes()))
        .map_err(|e| format!("cannot write the L6 master key {}: {e}", path.display()))?;
    Ok(path)
}

/// One measured configuration: a row of the report.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub(crate) rung: Rung,
    /// "" for the main ladder.
    pub(crate) variant: String,
    pub(crate) workload: Workload,
    pub(crate) value_size: usize,
    pub(crate) inflight: usize,
    /// Key type of the CA, node and client certificates.
    pub(crate) key_type: KeyType,
    /// Token signature algorithm (L3–L5).
    pub(crate) alg: Alg,
    /// Replace each connection after this many requests.
    pub(crate) reconnect_every: Option<u64>,
    /// Replacement connections resume the TLS session of the ones they replace (a client
    /// that reconnects), instead of full handshakes.
    pub(crate) resume: bool,
    /// Rungs with a per-request token: register it once per connection and send its handle
    /// (protocol version 2), instead of the whole token in every request. Off at L4, whose
    /// point is a verification on every request.
    pub(crate) token_handles: bool,
    /// Nodes serving the case: 1 is a single node, more a local cluster.
    pub(crate) nodes: usize,
    /// Replicas per shard (1 unless the cluster replicates).
    pub(crate) replicas: usize,
    /// Run `repeat` times, in rounds, keeping the fastest run (the main ladder, and every
    /// case of the replication set); otherwise once.
    pub(crate) repeated: bool,
}

const KIB: usize = 1024;

impl Case {
    pub(crate) fn new(rung: Rung, variant: &str, inflight: usize) -> Case {
        Case {
            rung,
            variant: variant.to_owned(),
            workload: Workload::Get,
            value_size: 100,
            inflight,
            key_type: KeyType::P256,
            alg: Alg::EdDSA,
            reconnect_every: None,
            resume: false,
            token_handles: rung != Rung::L4,
            nodes: 1,
            replicas: 1,
            repeated: variant.is_empty(),
        }
    }

    /// A one-line description for progress output.
    pub(crate) fn title(&self) -> String {
        let variant = if self.variant.is_empty() {
            String::new()
        } else {
            format!(" {}", self.variant)
        };
        format!(
            "{}{variant}: {} {} B, inflight {}",
            self.rung, self.workload, self.value_size, self.inflight
        )
    }

    /// The node's storage engine.
    pub(crate) fn engine(&self) -> &'static str {
        if self.rung == Rung::Null {
            "null"
        } else {
            "sled"
        }
    }

    /// `skv-node` flags for this case (without `--listen`, which the runner adds).
    pub(crate) fn node_args(
        &self,
        creds: &Credentials,
        data_dir: &Path,
        node: &str,
    ) -> Result<Vec<String>, String> {
        let mut args: Vec<String> = vec![
            "--name".into(),
            node.into(),
            // Named explicitly: a plaintext node has no certificate to take it from.
            "--cluster".into(),
            setup::CLUSTER.into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--engine".into(),
            self.engine().into(),
        ];
        if self.workload == Workload::Put {
            // Acknowledge a write only once it is on disk; concurrent writers share a flush.
            args.extend(["--durability".into(), "sync".into()]);
        }
        if self.rung == Rung::L0 {
            // Rungs without tokens say so: a node refuses to start without a keyset otherwise.
            args.extend(["--insecure-plaintext".into(), "--auth".into(), "off".into()]);
            return Ok(args);
        }
        let pki = creds.pki(self.key_type)?;
        args.extend([
            "--ca".into(),
            pki.ca_cert().display().to_string(),
            "--cert".into(),
            pki.node_cert(node).display().to_string(),
            "--key".into(),
            pki.node_key(node).display().to_string(),
        ]);
        if self.rung == Rung::L1 {
            args.push("--insecure-no-client-auth".into());
        }
        if self.rung == Rung::L6 {
            let key = master_key_file(data_dir)?;
            args.extend(["--master-key".into(), key.display().to_string()]);
        }
        if self.rung.uses_token() {
            let issuer = creds.issuer(self.alg)?;
            args.extend(["--keyset".into(), issuer.keyset.display().to_string()]);
            match self.rung {
                Rung::L3 => args.extend(["--auth".into(), "per-connection".into()]),
                Rung::L4 => args.extend([
                    "--auth".into(),
                    "per-request".into(),
                    "--token-cache".into(),
                    "0".into(),
                ]),
                _ => args.extend(["--auth".into(), "per-request".into()]),
            }
        } else {
            args.extend(["--auth".into(), "off".into()]);
        }
        Ok(args)
    }

    /// How the load generator connects to the node at `addr`.
    pub(crate) fn connect(
        &self,
        creds: &Credentials,
        addr: &str,
    ) -> Result<ConnectOptions, String> {
        if self.rung == Rung::L0 {
            return Ok(ConnectOptions::new(addr, Security::Plaintext));
        }
        let pki = creds.pki(self.key_type)?;
        let identity =
            (self.rung != Rung::L1).then(|| (pki.client_cert("alice"), pki.client_key("alice")));
        let mut opts = ConnectOptions::new(
            addr,
            Security::Tls {
                ca: pki.ca_cert(),
                identity,
            },
        );
        if self.rung.uses_token() {
            opts.token = Some(creds.issuer(self.alg)?.token.clone());
        }
        opts.token_handles = self.token_handles;
        Ok(opts)
    }

    /// Whether the load generator drives each connection directly (`skv bench --direct`)
    /// rather than through cluster clients: on a single node, wherever connections are
    /// kept. The cluster client costs the shared machine more CPU per request than the node
    /// spends answering it, so the node would be measured waiting for load while Redis,
    /// driven by redis-benchmark, is measured at its ceiling; the direct path costs about
    /// what redis-benchmark does. Clusters need routing, and churn rows reconnect, so they
    /// keep the cluster client.
    pub(crate) fn direct(&self) -> bool {
        self.nodes == 1 && self.reconnect_every.is_none()
    }

    /// What the case runs, for the report: certificate key type and token algorithm where
    /// they apply.
    pub(crate) fn key_type_label(&self) -> Option<&'static str> {
        (self.rung != Rung::L0).then(|| self.key_type.as_str())
    }

    /// The token algorithm, where a token is sent.
    pub(crate) fn alg_label(&self) -> Option<&'static str> {
        self.rung.uses_token().then(|| self.alg.as_str())
    }
}

/// "1 node", "3 nodes" (one replica per shard) or "3 nodes × 3 replicas".
pub(crate) fn topology(nodes: usize, replicas: usize) -> String {
    match (nodes, replicas) {
        (1, _) => "1 node".into(),
        (n, 1) => format!("{n} nodes"),
        (n, r) => format!("{n} nodes × {r} replicas"),
    }
}

/// Which cases a ladder run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaseSet {
    /// The security ladder: the main ladder and every variant, all on the run's topology.
    #[default]
    All,
    /// The main ladder only (every rung at inflight 1 and 16, no variants): the rows the
    /// comparison with Redis and most targets read, in a fraction of the time.
    Main,
    /// Replication's cost: GET (linearizable) and durable PUT at L2 and L5, inflight 1 and
    /// 16, each on the run's topology and, interleaved with it, on a single node, so the
    /// ratio compares runs made minutes apart on the same build and machine.
    Replication,
    /// The token cache's price and benefit: the main ladder's L4 (a JWT verified on every
    /// request) and L5 (the same with the verified-token cache), at inflight 16. A short run
    /// for a question about one defence (labs/16-price).
    TokenCache,
}

/// The cases of `set` on `nodes` nodes with `replicas` replicas per shard, in run order.
pub(crate) fn cases(set: CaseSet, nodes: usize, replicas: usize) -> Vec<Case> {
    match set {
        CaseSet::All => all()
            .into_iter()
            .map(|mut case| {
                case.nodes = nodes;
                case.replicas = replicas;
                case
            })
            .collect(),
        CaseSet::Main => all()
            .into_iter()
            .filter(|case| case.variant.is_empty())
            .map(|mut case| {
                case.nodes = nodes;
                case.replicas = replicas;
                case
            })
            .collect(),
        CaseSet::Replication => replication(nodes, replicas),
        // Both with the token in every request, so the pair differs in the cache alone.
        CaseSet::TokenCache => cases(CaseSet::Main, nodes, replicas)
            .into_iter()
            .filter(|case| matches!(case.rung, Rung::L4 | Rung::L5) && case.inflight == 16)
            .map(|mut case| {
                case.token_handles = false;
                case
            })
            .collect(),
    }
}

/// The replication set: see [`CaseSet::Replication`]. The variant names the topology, so
/// a replicated row and its single-node twin differ in it.
fn replication(nodes: usize, replicas: usize) -> Vec<Case> {
    let mut topologies = vec![(nodes, replicas)];
    if (nodes, replicas) != (1, 1) {
        topologies.push((1, 1));
    }
    let mut cases = Vec::new();
    for workload in [Workload::Get, Workload::Put] {
        for rung in [Rung::L2, Rung::L5] {
            for inflight in [1, 16] {
                for &(nodes, replicas) in &topologies {
                    let mut case = Case::new(rung, &topology(nodes, replicas), inflight);
                    case.workload = workload;
                    case.nodes = nodes;
                    case.replicas = replicas;
                    case.repeated = true;
                    cases.push(case);
                }
            }
        }
    }
    cases
}

/// Every case of a ladder run, main ladder first, in the order they run.
pub(crate) fn all() -> Vec<Case> {
    let mut cases = Vec::new();
    // The main ladder: GET, 100-byte values, unpipelined and pipelined.
    for rung in Rung::MAIN {
        for inflight in [1, 16] {
            cases.push(Case::new(rung, "", inflight));
        }
    }
    // L5 as it was before token handles: the whole token in every request, found in the
    // cache. Beside the main L5 row it prices the handle.
    for inflight in [1, 16] {
        let mut case = Case::new(Rung::L5, "token-in-every-request", inflight);
        case.token_handles = false;
        cases.push(case);
    }
    // JWT algorithms at L4 (EdDSA is the main L4 row): every request pays one verification.
    for alg in [Alg::HS256, Alg::ES256, Alg::RS256] {
        let mut case = Case::new(Rung::L4, &format!("alg={}", alg.as_str()), 1);
        case.alg = alg;
        cases.push(case);
    }
    // Connection churn at L2: a new TCP + mutual TLS handshake every 100 requests, per
    // certificate key type.
    for key_type in KeyType::ALL {
        let mut case = Case::new(Rung::L2, &format!("churn/{}", key_type.as_str()), 1);
        case.key_type = key_type;
        case.reconnect_every = Some(100);
        cases.push(case);
    }
    // A handshake per request: full mutual TLS handshakes per second.
    let mut handshakes = Case::new(Rung::L2, "handshakes/p256", 1);
    handshakes.reconnect_every = Some(1);
    cases.push(handshakes.clone());
    // The same with each replacement resuming its predecessor's TLS session (a stateless
    // TLS 1.3 ticket): no certificates sent or checked, no signatures, one X25519 exchange.
    handshakes.variant = "handshakes/p256/resumed".into();
    handshakes.resume = true;
    cases.push(handshakes);
    // Larger values, with and without the security stack.
    for (size, label) in [(KIB, "value=1KiB"), (16 * KIB, "value=16KiB")] {
        for rung in [Rung::L0, Rung::L5] {
            for inflight in [1, 16] {
                let mut case = Case::new(rung, label, inflight);
                case.value_size = size;
                cases.push(case);
            }
        }
    }
    // Durable writes: sled, acknowledged after the flush, group commit.
    for rung in [Rung::L0, Rung::L5] {
        for inflight in [1, 16] {
            let mut case = Case::new(rung, "put/durable", inflight);
            case.workload = Workload::Put;
            cases.push(case);
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_rows_that_keep_their_connections_are_driven_directly() {
        let main = cases(CaseSet::Main, 1, 1);
        assert!(!main.is_empty());
        assert!(main.iter().all(Case::direct), "every main row of one node");
        let all = cases(CaseSet::All, 1, 1);
        let churn: Vec<&Case> = all.iter().filter(|c| c.reconnect_every.is_some()).collect();
        assert!(!churn.is_empty());
        assert!(churn.iter().all(|c| !c.direct()), "churn rows reconnect");
        assert!(
            cases(CaseSet::Main, 3, 1).iter().all(|c| !c.direct()),
            "clusters route"
        );
    }

    #[test]
    fn l6_is_l5_plus_a_private_random_master_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::create(
            dir.path(),
            &[skv_certs::KeyType::P256],
            &[skv_certs::issuer::Alg::EdDSA],
            std::time::Duration::from_secs(600),
            1,
        )
        .unwrap();
        let l5 = Case::new(Rung::L5, "", 1)
            .node_args(&creds, &dir.path().join("d5"), "n1")
            .unwrap();
        let args = |d: &str| {
            Case::new(Rung::L6, "", 1)
                .node_args(&creds, &dir.path().join(d), "n1")
                .unwrap()
        };
        let l6 = args("d6");
        let at = l6
            .iter()
            .position(|a| a == "--master-key")
            .expect("L6 has a key");
        let mut rest = l6.clone();
        rest.drain(at..at + 2);
        assert_eq!(rest.len(), l5.len(), "L6 = L5 + --master-key");
        let key = std::path::PathBuf::from(&l6[at + 1]);
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let hex = std::fs::read_to_string(&key).unwrap();
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        // A fresh key per node.
        let other = args("d6b");
        let other_key = &other[other.iter().position(|a| a == "--master-key").unwrap() + 1];
        assert_ne!(std::fs::read_to_string(other_key).unwrap(), hex);
    }

    #[test]
    fn the_main_ladder_comes_first_and_is_complete() {
        let cases = all();
        let main: Vec<_> = cases.iter().take_while(|c| c.variant.is_empty()).collect();
        assert_eq!(main.len(), Rung::MAIN.len() * 2);
        for rung in Rung::MAIN {
            for inflight in [1, 16] {
                assert!(main
                    .iter()
                    .any(|c| c.rung == rung && c.inflight == inflight));
            }
        }
        assert!(cases.iter().skip(main.len()).all(|c| !c.variant.is_empty()));
        // Variant labels are unique per (rung, variant, inflight).
        let mut seen = std::collections::HashSet::new();
        for c in &cases {
            assert!(
                seen.insert((c.rung, c.variant.clone(), c.inflight)),
                "{}",
                c.title()
            );
        }
    }

    #[test]
    fn the_replication_set_pairs_every_replicated_case_with_a_single_node_twin() {
        let cases = cases(CaseSet::Replication, 3, 3);
        assert_eq!(cases.len(), 2 * 2 * 2 * 2);
        let mut seen = std::collections::HashSet::new();
        for c in &cases {
            assert!(c.repeated);
            assert!(matches!(c.rung, Rung::L2 | Rung::L5));
            assert!(
                seen.insert((
                    c.rung,
                    c.variant.clone(),
                    c.workload.to_string(),
                    c.inflight
                )),
                "{}",
                c.title()
            );
            if c.nodes == 3 {
                assert_eq!(c.replicas, 3);
                assert!(cases.iter().any(|t| t.nodes == 1
                    && t.rung == c.rung
                    && t.workload == c.workload
                    && t.inflight == c.inflight));
            }
        }
        // A single-node run of the set has no twins.
        assert_eq!(super::cases(CaseSet::Replication, 1, 1).len(), 8);
        let cache = super::cases(CaseSet::TokenCache, 1, 1);
        assert_eq!(
            cache
                .iter()
                .map(|c| (c.rung, c.inflight))
                .collect::<Vec<_>>(),
            [(Rung::L4, 16), (Rung::L5, 16)]
        );
        // The main set is the full ladder's first rows, nothing else.
        let main = super::cases(CaseSet::Main, 1, 1);
        assert_eq!(main.len(), Rung::MAIN.len() * 2);
        assert!(main.iter().all(|c| c.variant.is_empty() && c.repeated));
        // The full ladder keeps every case on the run's topology.
        assert!(super::cases(CaseSet::All, 3, 3)
            .iter()
            .all(|c| c.nodes == 3 && c.replicas == 3));
    }

    #[test]
    fn labels() {
        assert_eq!(Rung::Null.label(), "null");
        assert_eq!(Rung::L6.to_string(), "L6");
        assert!(Rung::L6.built());
        assert!(Rung::L6.uses_token(), "L6 is L5 plus encryption at rest");
    }
}
