//! The `lab.toml` format: what a lab says about itself and the world it needs. The world is
//! declarative; [`super::world`] builds it. Every table refuses unknown keys, so a typo in a
//! lab.toml fails the unit test that parses every lab instead of silently building another
//! world.

use serde::Deserialize;

/// One `lab.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LabSpec {
    /// A short title (`skv lab list`).
    pub(crate) title: String,
    /// One line: what the student does and learns.
    pub(crate) summary: String,
    /// Rough time for a first attempt, in minutes.
    pub(crate) minutes: u32,
    /// The section of docs/ the lab is about, e.g. `docs/SECURITY.md#transport-checkpoint-1`.
    pub(crate) docs: String,
    /// What `start` builds.
    #[serde(default)]
    pub(crate) world: WorldSpec,
    /// Hints, revealed one at a time by `skv lab hint`.
    #[serde(default)]
    pub(crate) hints: Vec<String>,
    /// A worked solution: shell commands, run by `bash -eu` from DIR after `. ./world.env`.
    pub(crate) solution: String,
}

/// The lab's world.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorldSpec {
    /// Client certificates handed to the student in DIR/pki/clients/. (The lab's own
    /// identities, `lab-admin` for seeding and checking and `app` for the victim, are always
    /// made and kept in DIR/.lab/pki.)
    #[serde(default)]
    pub(crate) clients: Vec<ClientSpec>,
    /// Node certificates handed to the student in DIR/loot/ (`<name>.pem`, `<name>-key.pem`),
    /// as if stolen: each names `spiffe://skv/node/<name>`, signed by the lab's CA.
    #[serde(default)]
    pub(crate) loot_nodes: Vec<String>,
    /// Make a token issuer (EdDSA): its private key stays in DIR/.lab/issuer, the public
    /// keyset is copied to DIR/public/keyset.json and DIR/public/issuer-public.pem, and every
    /// node gets `keyset` in its config.
    #[serde(default)]
    pub(crate) issuer: bool,
    /// Where the issuer's directory (private key and keyset.json, as `skv keys init` writes
    /// it) lives, relative to DIR [default: .lab/issuer]. A lab about rotating the issuer key
    /// puts it where the student may use it, e.g. `issuer`.
    pub(crate) issuer_dir: Option<String>,
    /// Tokens written into DIR (needs `issuer`).
    #[serde(default)]
    pub(crate) tokens: Vec<TokenSpecToml>,
    /// Keys written through the client library once the nodes run.
    #[serde(default)]
    pub(crate) data: Vec<DataSpec>,
    /// Extra addresses to reserve a free port for (e.g. `wire`, where the victim dials);
    /// exported as `<NAME>_ADDR` in DIR/world.env like the nodes' addresses.
    #[serde(default)]
    pub(crate) addresses: Vec<String>,
    /// The nodes, each a real skv-node process.
    #[serde(default)]
    pub(crate) nodes: Vec<NodeSpec>,
    /// Make the nodes one replicated cluster: a shared map in DIR/cluster.json (as `skv
    /// cluster init` writes it) that every node config names. Without it each node is a
    /// cluster of its own, owning every slot.
    #[serde(default)]
    pub(crate) cluster: bool,
    /// Replicas per shard with `cluster` [default: 3, or the node count if smaller].
    pub(crate) replicas: Option<usize>,
    /// A background client reading a key over and over, like an application would.
    pub(crate) victim: Option<VictimSpec>,
}

/// A client certificate for the student.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClientSpec {
    /// Client name: the certificate's identity is `spiffe://skv/client/<name>`.
    pub(crate) name: String,
    /// File stem in DIR/pki/clients/ [default: the name].
    pub(crate) file: Option<String>,
    /// Issue it already expired: its validity ends a random 2 to 72 hours before `start`.
    #[serde(default)]
    pub(crate) expired: bool,
}

impl ClientSpec {
    pub(crate) fn file_stem(&self) -> &str {
        self.file.as_deref().unwrap_or(&self.name)
    }
}

/// A token the world hands out.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenSpecToml {
    /// Where to write it, relative to DIR.
    pub(crate) file: String,
    /// Subject.
    pub(crate) sub: String,
    /// Grants in the `--allow` form, `read,write:prefix/`.
    pub(crate) allow: Vec<String>,
    /// Lifetime in seconds [default: 86400].
    pub(crate) ttl_secs: Option<u64>,
    /// Bind it to this client's certificate (a name from `clients`, or `app`).
    pub(crate) bind: Option<String>,
    /// Issue it already expired: `exp` lies a random number of seconds in this range
    /// (inclusive) before `start`.
    pub(crate) expired_secs: Option<[u64; 2]>,
}

/// One seeded key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataSpec {
    /// The key.
    pub(crate) key: String,
    /// The value; `{flag}` is replaced by the world's flag, fresh at every start.
    pub(crate) value: String,
    /// Which node to write it through [default: the first].
    pub(crate) node: Option<String>,
}

/// One node.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSpec {
    /// Node name: its certificate, config file (DIR/nodes/<name>.toml), log and the
    /// `<NAME>_ADDR` variable of world.env.
    pub(crate) name: String,
    /// skv-node config keys (the names of `skv-node --help`'s flags with `_`), e.g.
    /// `{ insecure_plaintext = true, auth = "off" }`. The world adds name, listen, data_dir,
    /// ca, cert, key, keyset (with `issuer`) and audit_log unless given here.
    #[serde(default)]
    pub(crate) config: toml::Table,
    /// A spare (with `cluster`): its certificate, port and config are made, but it is not in
    /// the cluster's first map and `start` does not start it; `skv lab add-node N` starts it
    /// and adds it to the running cluster (lab 13).
    #[serde(default)]
    pub(crate) spare: bool,
}

/// The background client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VictimSpec {
    /// The node whose config decides plaintext or TLS (re-read before every request).
    pub(crate) node: String,
    /// The address it dials: a node name or one of `addresses`.
    pub(crate) dials: String,
    /// The key it reads.
    pub(crate) key: String,
    /// Its token file, relative to DIR (one of `tokens`).
    pub(crate) token: Option<String>,
    /// Milliseconds between two reads [default: 300].
    pub(crate) every_ms: Option<u64>,
    /// Write instead of read: `<key><n>` = `n` for n = 1, 2, ..., through a cluster client
    /// that follows the map; each acknowledged write is appended to DIR/logs/victim-acked.log
    /// (`<key> <value>`), so a checker can read every one of them back.
    #[serde(default)]
    pub(crate) writes: bool,
}

impl WorldSpec {
    /// [`WorldSpec::issuer_dir`] or its default.
    pub(crate) fn issuer_rel(&self) -> &str {
        self.issuer_dir.as_deref().unwrap_or(".lab/issuer")
    }

    /// Consistency checks a parser cannot do: names unique and usable, references resolve.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        names.extend(self.addresses.iter().map(String::as_str));
        for name in &names {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!("node or address name {name:?}: use a-z, 0-9 and -"));
            }
        }
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != names.len() {
            return Err("node and address names must be unique".into());
        }
        if let Some(d) = &self.issuer_dir {
            let path = std::path::Path::new(d);
            if !self.issuer
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "issuer_dir {d:?} needs issuer = true and a plain relative path inside DIR"
                ));
            }
        }
        // A spare joins a running cluster's map; the first node seeds the data and is the
        // one the lab asks, so it is never a spare.
        if self.nodes.iter().any(|n| n.spare)
            && (!self.cluster || self.nodes.first().is_none_or(|n| n.spare))
        {
            return Err(
                "a spare node needs `cluster = true` and a first node that is not a spare".into(),
            );
        }
        let clients: Vec<&str> = self.clients.iter().map(|c| c.name.as_str()).collect();
        for token in &self.tokens {
            if !self.issuer {
                return Err(format!("token {} needs `issuer = true`", token.file));
            }
            if let Some(bind) = &token.bind {
                if bind != "app" && !clients.contains(&bind.as_str()) {
                    return Err(format!(
                        "token {} binds to unknown client {bind}",
                        token.file
                    ));
                }
            }
            if let Some([lo, hi]) = token.expired_secs {
                if lo > hi || lo == 0 {
                    return Err(format!(
                        "token {}: expired_secs must be [lo, hi], 0 < lo <= hi",
                        token.file
                    ));
                }
            }
            for allow in &token.allow {
                skv_token::parse_allow(allow).map_err(|e| format!("token {}: {e}", token.file))?;
            }
        }
        for data in &self.data {
            if let Some(node) = &data.node {
                if !self.nodes.iter().any(|n| &n.name == node) {
                    return Err(format!("data {} names unknown node {node}", data.key));
                }
            }
        }
        if let Some(r) = self.replicas {
            if !self.cluster || r == 0 || r > self.nodes.len() {
                return Err(format!(
                    "replicas = {r} needs cluster = true and 1 to {} (the node count)",
                    self.nodes.len()
                ));
            }
        }
        if self.cluster && self.nodes.is_empty() {
            return Err("cluster = true needs nodes".into());
        }
        if !self.data.is_empty() && self.nodes.is_empty() {
            return Err("seed data needs a node".into());
        }
        if let Some(victim) = &self.victim {
            if !self.nodes.iter().any(|n| n.name == victim.node) {
                return Err(format!("victim names unknown node {}", victim.node));
            }
            if !names.contains(&victim.dials.as_str()) {
                return Err(format!("victim dials unknown address {}", victim.dials));
            }
            if let Some(token) = &victim.token {
                if !self.tokens.iter().any(|t| &t.file == token) {
                    return Err(format!("victim token {token} is not one of `tokens`"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(text: &str) -> WorldSpec {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn worlds_that_cannot_be_built_are_refused() {
        let two = "cluster = true\nnodes = [{ name = \"a\" }, { name = \"b\" }]\n";
        assert!(world(two).validate().is_ok());
        assert!(world(&format!("replicas = 3\n{two}")).validate().is_err());
        assert!(world("replicas = 1\nnodes = [{ name = \"a\" }]")
            .validate()
            .is_err());
        assert!(world("nodes = [{ name = \"a\" }, { name = \"a\" }]")
            .validate()
            .is_err());
        assert!(world("addresses = [\"Wire\"]").validate().is_err());
        assert!(
            world("tokens = [{ file = \"t\", sub = \"s\", allow = [\"read:\"] }]")
                .validate()
                .unwrap_err()
                .contains("issuer")
        );
        assert!(world(
            "issuer = true\ntokens = [{ file = \"t\", sub = \"s\", allow = [\"read:\"], expired_secs = [5, 1] }]"
        )
        .validate()
        .is_err());
        // A spare joins a running cluster, and never seeds it.
        let spare = "nodes = [{ name = \"a\" }, { name = \"b\", spare = true }]\n";
        assert!(world(&format!("cluster = true\n{spare}"))
            .validate()
            .is_ok());
        assert!(world(spare).validate().unwrap_err().contains("spare"));
        assert!(world(
            "cluster = true\nnodes = [{ name = \"a\", spare = true }, { name = \"b\" }]"
        )
        .validate()
        .unwrap_err()
        .contains("spare"));
        assert!(
            toml::from_str::<WorldSpec>("nodez = []").is_err(),
            "typos are refused"
        );
    }
}
