//! The files of a cluster directory: rendering the node configs and the admin profile,
//! reading them back, choosing ports and ids. Pure functions where possible, so the formats
//! are unit-tested without starting anything.

use std::cmp::Ordering;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Port of n1 unless `--base-port` says otherwise.
pub(super) const DEFAULT_BASE_PORT: u16 = 7401;

/// A node config in `DIR/nodes/`, as far as the tooling needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeFile {
    /// Node id: the file stem, which is also its certificate and map name.
    pub(super) id: String,
    /// The config file.
    pub(super) path: PathBuf,
    /// `HOST:PORT` clients dial: `advertise`, else `listen`.
    pub(super) addr: String,
    /// Port of `listen`, for choosing the next free one.
    pub(super) listen_port: Option<u16>,
}

/// The subset of the node's config keys the tooling reads; the node itself validates the
/// rest, so unknown keys are ignored here rather than refused.
#[derive(Debug, Deserialize)]
struct NodeFields {
    listen: Option<String>,
    advertise: Option<String>,
}

/// Parse the node config `text` of node `id`.
pub(super) fn parse_node_file(id: &str, path: &Path, text: &str) -> Result<NodeFile, String> {
    let fields: NodeFields =
        toml::from_str(text).map_err(|e| format!("invalid node config {}: {e}", path.display()))?;
    let listen = fields.listen.ok_or_else(|| {
        format!(
            "node config {} has no `listen` address; the tooling needs one to reach the node",
            path.display()
        )
    })?;
    Ok(NodeFile {
        id: id.to_owned(),
        path: path.to_owned(),
        listen_port: port_of(&listen),
        addr: fields.advertise.unwrap_or(listen),
    })
}

/// Every `*.toml` in `dir`, in natural id order.
pub(super) fn read_node_files(dir: &Path) -> Result<Vec<NodeFile>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut nodes = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        // Editors' and atomic writers' leftovers (`.n1.toml.swp`, `.x.tmp`) are not nodes.
        if id.starts_with('.') {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        nodes.push(parse_node_file(id, &path, &text)?);
    }
    nodes.sort_by(|a, b| natural_cmp(&a.id, &b.id));
    Ok(nodes)
}

/// The port of `HOST:PORT`.
pub(super) fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Order ids so a trailing number compares as a number: n2 < n10.
pub(super) fn natural_cmp(a: &str, b: &str) -> Ordering {
    fn split(s: &str) -> (&str, Option<u64>) {
        let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (head, tail) = s.split_at(s.len() - digits);
        (head, tail.parse().ok())
    }
    split(a).cmp(&split(b)).then_with(|| a.cmp(b))
}

/// Ports of n1..nN: `base`, `base + 1`, ... Refuses 0 nodes, port 0 and ranges past 65535.
pub(super) fn init_ports(base: u16, nodes: u16) -> Result<Vec<u16>, String> {
    if nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    if base == 0 {
        return Err(
            "--base-port must be at least 1 (the map needs every address ahead of time, so \
             port 0 cannot be used)"
                .into(),
        );
    }
    let last = u32::from(base) + u32::from(nodes) - 1;
    if last > u32::from(u16::MAX) {
        return Err(format!(
            "{nodes} nodes from --base-port {base} would need ports up to {last}, past 65535; \
             pick a lower --base-port"
        ));
    }
    Ok((0..nodes).map(|i| base + i).collect())
}

/// The port after the highest one in use (`DEFAULT_BASE_PORT` when none is).
pub(super) fn next_port(used: impl IntoIterator<Item = u16>) -> Result<u16, String> {
    match used.into_iter().max() {
        None => Ok(DEFAULT_BASE_PORT),
        Some(u16::MAX) => Err(
            "the highest port in use is 65535, so there is no next one; pass a node config by \
             hand"
                .into(),
        ),
        Some(max) => Ok(max + 1),
    }
}

/// The first `nI` (I = 1, 2, ...) for which `taken` is false.
pub(super) fn next_free_id(taken: impl Fn(&str) -> bool) -> String {
    (1u32..)
        .map(|i| format!("n{i}"))
        .find(|id| !taken(id))
        .unwrap_or_default()
}

/// A TOML string literal (quoted and escaped). Names are validated elsewhere, but the
/// renderer does not rely on it.
fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// `DIR/nodes/<id>.toml`. Paths are relative to the file (the node resolves them so), which
/// keeps the directory movable.
pub(super) fn render_node_config(cluster: &str, id: &str, listen: &str) -> String {
    format!(
        "# skv-node {id} of cluster {cluster}, written by `skv cluster`.\n\
         # Paths are relative to this file. Start it with `skv cluster up --dir ..`,\n\
         # or by hand: skv-node --config <this file>\n\
         name = {name}\n\
         listen = {listen}\n\
         data_dir = {data}\n\
         ca = \"../pki/ca.pem\"\n\
         cert = {cert}\n\
         key = {key}\n\
         crl = \"../pki/crl.pem\"\n\
         keyset = \"../issuer/keyset.json\"\n\
         audit_log = {audit}\n\
         cluster = {cluster_q}\n\
         cluster_map = \"../cluster.json\"\n",
        name = quote(id),
        listen = quote(listen),
        data = quote(&format!("../data/{id}")),
        cert = quote(&format!("../pki/nodes/{id}.pem")),
        key = quote(&format!("../pki/nodes/{id}-key.pem")),
        audit = quote(&format!("../logs/{id}-audit.log")),
        cluster_q = quote(cluster),
    )
}

/// `DIR/client.toml`: the admin profile. `addr` is the first node (for commands that talk to
/// one node); `nodes` lists every node as seeds for the cluster client.
pub(super) fn render_client_profile(cluster: &str, nodes: &[String]) -> String {
    let first = nodes.first().map(String::as_str).unwrap_or_default();
    let seeds = nodes
        .iter()
        .map(|a| quote(a))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "# skv admin profile for cluster {cluster}, written by `skv cluster`.\n\
         # Paths are relative to this file. Use it: skv --profile client.toml put k v\n\
         ca = \"pki/ca.pem\"\n\
         cert = \"pki/clients/admin.pem\"\n\
         key = \"pki/clients/admin-key.pem\"\n\
         token_file = \"admin.token\"\n\
         addr = {first}\n\
         nodes = [{seeds}]\n",
        first = quote(first),
    )
}

/// Seed addresses in a profile: `nodes`, then `addr`. Unreadable profiles give none (the
/// caller has other sources).
pub(super) fn profile_seeds(path: &Path) -> Vec<String> {
    #[derive(Deserialize)]
    struct Seeds {
        addr: Option<String>,
        #[serde(default)]
        nodes: Vec<String>,
    }
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    match toml::from_str::<Seeds>(&text) {
        Ok(seeds) => seeds.nodes.into_iter().chain(seeds.addr).collect(),
        Err(_) => Vec::new(),
    }
}

/// Write `contents` to `path` with `mode`, atomically: a fresh temporary file next to it
/// (created with the mode, so a secret is never readable by others), fsynced, renamed over
/// `path`. A reader (a starting node, a concurrent `skv`) sees the old file or the new one.
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(contents)?;
        // The umask filters the creation mode; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// The DER of the first certificate in a PEM file.
pub(super) fn cert_der(path: &Path) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .map(|der| der.as_ref().to_vec())
        .map_err(|e| format!("cannot read the certificate {}: {e}", path.display()))
}

/// The last `lines` lines of a log file, for explaining a failed start.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = fs::read(path) else {
        return format!("({} is missing or unreadable)", path.display());
    };
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_configs_round_trip_through_the_node_and_the_tooling() {
        let text = render_node_config("prod", "n2", "127.0.0.1:7402");
        // The node's own parser accepts every key we write (it refuses unknown ones).
        let cfg: skv_server::FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.name.as_deref(), Some("n2"));
        assert_eq!(cfg.listen.as_deref(), Some("127.0.0.1:7402"));
        assert_eq!(cfg.data_dir, Some(PathBuf::from("../data/n2")));
        assert_eq!(cfg.cert, Some(PathBuf::from("../pki/nodes/n2.pem")));
        assert_eq!(cfg.key, Some(PathBuf::from("../pki/nodes/n2-key.pem")));
        // `skv certs init` (and the add-node that reuses its CA) always writes it.
        assert_eq!(cfg.crl, Some(PathBuf::from("../pki/crl.pem")));
        assert_eq!(cfg.keyset, Some(PathBuf::from("../issuer/keyset.json")));
        assert_eq!(cfg.audit_log, Some(PathBuf::from("../logs/n2-audit.log")));
        assert_eq!(cfg.cluster.as_deref(), Some("prod"));
        assert_eq!(cfg.cluster_map, Some(PathBuf::from("../cluster.json")));

        let path = Path::new("/c/nodes/n2.toml");
        let node = parse_node_file("n2", path, &text).unwrap();
        assert_eq!(node.addr, "127.0.0.1:7402");
        assert_eq!(node.listen_port, Some(7402));
        let advertised =
            parse_node_file("n2", path, &format!("{text}advertise = \"h:9\"\n")).unwrap();
        assert_eq!(advertised.addr, "h:9");
        assert!(parse_node_file("n2", path, "name = \"n2\"\n")
            .unwrap_err()
            .contains("listen"));
    }

    #[test]
    fn the_admin_profile_names_the_layout_and_every_seed() {
        let nodes = vec!["127.0.0.1:7401".to_owned(), "127.0.0.1:7402".to_owned()];
        let text = render_client_profile("skv", &nodes);
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["ca"].as_str(), Some("pki/ca.pem"));
        assert_eq!(value["cert"].as_str(), Some("pki/clients/admin.pem"));
        assert_eq!(value["key"].as_str(), Some("pki/clients/admin-key.pem"));
        assert_eq!(value["token_file"].as_str(), Some("admin.token"));
        assert_eq!(value["addr"].as_str(), Some("127.0.0.1:7401"));
        let seeds: Vec<&str> = value["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(seeds, ["127.0.0.1:7401", "127.0.0.1:7402"]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        write_atomic(&path, text.as_bytes(), 0o644).unwrap();
        assert_eq!(
            profile_seeds(&path),
            ["127.0.0.1:7401", "127.0.0.1:7402", "127.0.0.1:7401"]
        );
        assert!(profile_seeds(&dir.path().join("missing.toml")).is_empty());
    }

    #[test]
    fn quoting_survives_awkward_text() {
        let text = render_node_config("a\"b", "n1", "x\\y:1");
        let value: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(value["cluster"].as_str(), Some("a\"b"));
        assert_eq!(value["listen"].as_str(), Some("x\\y:1"));
    }

    #[test]
    fn ports_are_allocated_in_range() {
        assert_eq!(init_ports(7401, 3).unwrap(), [7401, 7402, 7403]);
        assert_eq!(init_ports(65535, 1).unwrap(), [65535]);
        assert!(init_ports(65535, 2).unwrap_err().contains("65536"));
        assert!(init_ports(7401, 0).is_err());
        assert!(init_ports(0, 1).is_err());
        assert_eq!(next_port([7401, 7403, 7402]).unwrap(), 7404);
        assert_eq!(next_port([]).unwrap(), DEFAULT_BASE_PORT);
        assert!(next_port([65535]).is_err());
        assert_eq!(port_of("127.0.0.1:7401"), Some(7401));
        assert_eq!(port_of("[::1]:9"), Some(9));
        assert_eq!(port_of("nowhere"), None);
    }

    #[test]
    fn ids_sort_naturally_and_the_next_free_one_fills_gaps() {
        let mut ids = vec!["n10", "n2", "n1", "b", "a7"];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(ids, ["a7", "b", "n1", "n2", "n10"]);
        let taken = ["n1", "n2", "n4"];
        assert_eq!(next_free_id(|id| taken.contains(&id)), "n3");
        assert_eq!(next_free_id(|_| false), "n1");
    }

    #[test]
    fn secrets_are_written_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
    }

    #[test]
    fn node_files_are_listed_in_natural_order() {
        let dir = tempfile::tempdir().unwrap();
        for (id, port) in [("n10", 7410), ("n2", 7402), ("n1", 7401)] {
            let text = render_node_config("skv", id, &format!("127.0.0.1:{port}"));
            fs::write(dir.path().join(format!("{id}.toml")), text).unwrap();
        }
        fs::write(dir.path().join(".n3.toml.tmp"), "junk").unwrap();
        fs::write(dir.path().join("README"), "junk").unwrap();
        let nodes = read_node_files(dir.path()).unwrap();
        let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids, ["n1", "n2", "n10"]);
    }
}
