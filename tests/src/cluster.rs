//! A local cluster of real `skv-node` processes for the cluster suites: one PKI (nodes
//! `n1..nN`, clients `alice` and `admin`), one token issuer, a bootstrap map on fixed
//! loopback ports, and the nodes started with token checks on (per-request, the default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use skv_certs::issuer::{keys_init, mint, Alg, IssuerKey, TokenSpec};
use skv_certs::{InitOptions, KeyType, Layout};
use skv_client::{ConnectOptions, Security};
use skv_proto::cluster::ClusterMap;
use skv_token::parse_allow;

use crate::Node;

/// Cluster name of every test cluster.
pub const CLUSTER: &str = "itest";

/// `n` free loopback ports (bound, read, released; a port could in theory be taken again
/// before the node binds it, which would fail loudly, not silently).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()?)
}

/// How a stopped node was started, to start it again.
#[derive(Debug, Clone)]
pub struct Stopped {
    args: Vec<String>,
    log: PathBuf,
}

/// A running local cluster. Nodes are killed on drop.
#[derive(Debug)]
pub struct LocalCluster {
    dir: tempfile::TempDir,
    /// PKI layout.
    pub layout: Layout,
    /// Issuer directory (keyset.json inside).
    pub issuer: PathBuf,
    /// Bootstrap map file.
    pub map_file: PathBuf,
    /// Node id → running node (None once killed).
    pub nodes: Vec<(String, Option<Node>)>,
    /// A token granting admin over every key, valid for an hour.
    pub admin_token: String,
    /// Flags every node is started with, beside the ones the cluster needs.
    pub extra_args: Vec<String>,
}

impl LocalCluster {
    /// `n` nodes `n1..nN` with an even map, plus certificates for `spare` more nodes that are
    /// not in the map (for add-node tests). One replica per shard.
    pub fn start(n: usize, spare: usize) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_replicated(n, spare, 1)
    }

    /// [`LocalCluster::start`] with `replicas` replicas per shard (shard i on nodes i, i+1, …).
    pub fn start_replicated(
        n: usize,
        spare: usize,
        replicas: usize,
    ) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_with(n, spare, replicas, &[])
    }

    /// [`LocalCluster::start_replicated`] with `extra` flags for every node.
    pub fn start_with(
        n: usize,
        spare: usize,
        replicas: usize,
        extra: &[&str],
    ) -> anyhow::Result<LocalCluster> {
        let dir = tempfile::Builder::new().prefix("skv-cluster-").tempdir()?;
        let layout = Layout::new(dir.path().join("pki"));
        let names: Vec<String> = (1..=n + spare).map(|i| format!("n{i}")).collect();
        skv_certs::init(&InitOptions {
            dir: layout.dir().to_owned(),
            cluster: CLUSTER.into(),
            nodes: names.clone(),
            clients: vec!["alice".into(), "admin".into()],
            key_type: KeyType::P256,
            force: false,
        })?;
        let issuer = dir.path().join("issuer");
        keys_init(&issuer, Alg::EdDSA, None)?;
        let key = IssuerKey::load(&issuer)?;
        let admin_token = mint(
            &key,
            &TokenSpec {
                sub: "admin".into(),
                scopes: vec![parse_allow("admin:")?],
                ttl: Duration::from_secs(3600),
                aud: CLUSTER.into(),
                iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
                bind_cert_der: None,
            },
        )?;
        let ports = free_ports(n)?;
        let members: Vec<(String, String)> = names[..n]
            .iter()
            .zip(&ports)
            .map(|(id, port)| (id.clone(), format!("127.0.0.1:{port}")))
            .collect();
        let map = ClusterMap::even_replicated(CLUSTER, &members, replicas)?;
        let map_file = dir.path().join("cluster.json");
        std::fs::write(&map_file, map.to_json())?;
        let mut cluster = LocalCluster {
            dir,
            layout,
            issuer,
            map_file,
            nodes: Vec::new(),
            admin_token,
            extra_args: extra.iter().map(|a| a.to_string()).collect(),
        };
        for (id, addr) in &members {
            let node = cluster.start_node(id, addr)?;
            cluster.nodes.push((id.clone(), Some(node)));
        }
        Ok(cluster)
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Start node `id` listening on `addr` with the bootstrap map, its own data dir and log.
    pub fn start_node(&self, id: &str, addr: &str) -> anyhow::Result<Node> {
        let p = |path: PathBuf| path.display().to_string();
        let mut args = vec![
            "--name".to_owned(),
            id.to_owned(),
            "--listen".to_owned(),
            addr.to_owned(),
            "--data-dir".to_owned(),
            p(self.dir().join("data").join(id)),
            "--ca".to_owned(),
            p(self.layout.ca_cert()),
            "--cert".to_owned(),
            p(self.layout.node_cert(id)),
            "--key".to_owned(),
            p(self.layout.node_key(id)),
            "--keyset".to_owned(),
            p(self.issuer.join("keyset.json")),
            "--aud".to_owned(),
            CLUSTER.to_owned(),
            "--cluster-map".to_owned(),
            p(self.map_file.clone()),
            "--audit-log".to_owned(),
            p(self.audit_log(id)),
        ];
        args.extend(self.extra_args.iter().cloned());
        Node::start(&args, &self.dir().join(format!("{id}.log")))
            .with_context(|| format!("start node {id}"))
    }

    /// Node `id`'s audit log.
    pub fn audit_log(&self, id: &str) -> PathBuf {
        self.dir().join(format!("{id}-audit.log"))
    }

    /// Add a started node under `id`.
    pub fn push(&mut self, id: &str, node: Node) {
        self.nodes.push((id.to_owned(), Some(node)));
    }

    /// The running node `id`.
    pub fn node(&self, id: &str) -> &Node {
        self.nodes
            .iter()
            .find(|(n, _)| n == id)
            .and_then(|(_, node)| node.as_ref())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Address of node `id`.
    pub fn addr(&self, id: &str) -> String {
        self.node(id).addr.clone()
    }

    /// Take node `id` out (to kill or stop it).
    pub fn take(&mut self, id: &str) -> Node {
        self.nodes
            .iter_mut()
            .find(|(n, _)| n == id)
            .and_then(|(_, node)| node.take())
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// SIGKILL node `id`; returns how it was started, for [`LocalCluster::restart`].
    pub fn kill9(&mut self, id: &str) -> anyhow::Result<Stopped> {
        let node = self.take(id);
        let stopped = Stopped {
            args: node.args.clone(),
            log: node.log.clone(),
        };
        node.kill9()?;
        Ok(stopped)
    }

    /// Start node `id` again the way it was started before it stopped (same data dir, port
    /// and flags).
    pub fn restart(&mut self, id: &str, stopped: &Stopped) -> anyhow::Result<()> {
        let node = Node::start(&stopped.args, &stopped.log)?;
        match self.nodes.iter_mut().find(|(n, _)| n == id) {
            Some((_, slot)) => *slot = Some(node),
            None => self.nodes.push((id.to_owned(), Some(node))),
        }
        Ok(())
    }

    /// Connection options for client `who` (alice or admin) at `addr`, with the admin token.
    pub fn client(&self, who: &str, addr: &str) -> ConnectOptions {
        let identity = (self.layout.client_cert(who), self.layout.client_key(who));
        self.options(identity, addr)
    }

    fn options(&self, identity: (PathBuf, PathBuf), addr: &str) -> ConnectOptions {
        let ca = self.layout.ca_cert();
        let mut opts = ConnectOptions::new(
            addr,
            Security::Tls {
                ca,
                identity: Some(identity),
            },
        );
        opts.token = Some(self.admin_token.clone());
        opts
    }

    /// A token for `sub` with the grants `allow` (`OPS:PREFIX` each), valid for an hour.
    pub fn token(&self, sub: &str, allow: &[&str]) -> anyhow::Result<String> {
        let scopes = allow
            .iter()
            .map(|a| parse_allow(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(mint(
            &IssuerKey::load(&self.issuer)?,
            &TokenSpec {
                sub: sub.into(),
                scopes,
                ttl: Duration::from_secs(3600),
                aud: CLUSTER.into(),
                iss: skv_token::DEFAULT_TOKEN_ISSUER.into(),
                bind_cert_der: None,
            },
        )?)
    }

    /// Connection options presenting node `id`'s certificate as if it were a client.
    pub fn as_node(&self, id: &str, addr: &str) -> ConnectOptions {
        let identity = (self.layout.node_cert(id), self.layout.node_key(id));
        self.options(identity, addr)
    }

    /// A client profile for the CLI (admin identity and token) with every node as a seed.
    pub fn write_profile(&self) -> anyhow::Result<PathBuf> {
        let token = self.dir().join("admin.token");
        std::fs::write(&token, &self.admin_token)?;
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(_, n)| n.as_ref().map(|n| format!("\"{}\"", n.addr)))
            .collect();
        let profile = self.dir().join("client.toml");
        std::fs::write(
            &profile,
            format!(
                "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\ntoken_file = \"{}\"\naddr = {}\nnodes = [{}]\n",
                self.layout.ca_cert().display(),
                self.layout.client_cert("admin").display(),
                self.layout.client_key("admin").display(),
                token.display(),
                seeds[0],
                seeds.join(", ")
            ),
        )?;
        Ok(profile)
    }
}
