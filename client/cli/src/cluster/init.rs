//! `skv cluster init`: write a complete local cluster into a directory.
//!
//! Everything is generated in a staging directory inside DIR first and only then renamed into
//! place, so a failure halfway (a bad name, a full disk, a key that cannot be generated)
//! leaves DIR as it was.

use std::fs;
use std::path::Path;

use skv_certs::issuer::{keys_init, Alg};
use skv_certs::{InitOptions, KeyType};
use skv_client::exit;
use skv_proto::cluster::{format_ranges, ClusterMap};

use super::files::{init_ports, render_client_profile, render_node_config, write_atomic};
use super::{mint_admin_token, process, ClusterDir, Failure, Result, ADMIN};
use crate::args::ClusterInitArgs;

/// The entries of DIR that make it a cluster; `--force` replaces exactly these.
const CLUSTER_ENTRIES: [&str; 9] = [
    "cluster.json",
    "client.toml",
    "admin.token",
    "nodes",
    "pki",
    "issuer",
    "data",
    "logs",
    "run",
];

pub(super) fn run(args: ClusterInitArgs) -> Result<u8> {
    let ports = init_ports(args.base_port, args.nodes).map_err(Failure::usage)?;
    skv_certs::validate_name("cluster", &args.cluster)
        .map_err(|e| Failure::usage(e.to_string()))?;
    let nodes: Vec<(String, String)> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| (format!("n{}", i + 1), format!("127.0.0.1:{port}")))
        .collect();
    if nodes.len() > skv_proto::cluster::MAX_MAP_NODES {
        return Err(Failure::usage(format!(
            "--nodes {} is more than a cluster map holds ({})",
            nodes.len(),
            skv_proto::cluster::MAX_MAP_NODES
        )));
    }
    let replicas = args
        .replicas
        .map_or_else(|| ClusterMap::default_replicas(nodes.len()), usize::from);
    let map = ClusterMap::even_replicated(&args.cluster, &nodes, replicas).map_err(|_| {
        Failure::usage(format!(
            "--replicas {replicas} does not fit --nodes {}: every replica of a shard is on \
             another node, so choose 1 to {}",
            nodes.len(),
            nodes.len()
        ))
    })?;

    fs::create_dir_all(&args.dir)
        .map_err(|e| Failure::usage(format!("cannot create {}: {e}", args.dir.display())))?;
    let root = args
        .dir
        .canonicalize()
        .map_err(|e| Failure::usage(format!("cannot open {}: {e}", args.dir.display())))?;
    let existing: Vec<&str> = CLUSTER_ENTRIES
        .into_iter()
        .filter(|e| root.join(e).symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() {
        if !args.force {
            return Err(Failure::usage(format!(
                "{} already holds a cluster (found {}); use another --dir, or pass --force to \
                 replace it (its data is deleted)",
                args.dir.display(),
                existing.join(", ")
            )));
        }
        refuse_if_running(&root)?;
    }

    // Staging inside DIR: same file system, so the final renames cannot fail for crossing
    // devices; dropped (deleted) on any error.
    let staging = tempfile::Builder::new()
        .prefix(".skv-cluster-init-")
        .tempdir_in(&root)
        .map_err(|e| Failure::usage(format!("cannot write in {}: {e}", root.display())))?;
    let stage = ClusterDir {
        root: staging.path().to_owned(),
    };
    let addrs: Vec<String> = nodes.iter().map(|(_, addr)| addr.clone()).collect();
    write_everything(&stage, &args.cluster, &nodes, &map, &addrs)?;

    if !existing.is_empty() {
        for entry in &existing {
            remove(&root.join(entry))?;
        }
        println!(
            "removed the previous cluster in {} (--force)",
            args.dir.display()
        );
    }
    for entry in [
        "pki",
        "issuer",
        "nodes",
        "cluster.json",
        "admin.token",
        "client.toml",
    ] {
        fs::rename(stage.root().join(entry), root.join(entry)).map_err(|e| {
            Failure::usage(format!(
                "cannot move {} into place: {e}",
                root.join(entry).display()
            ))
        })?;
    }
    let dir = ClusterDir { root };
    for d in [dir.root().join("data"), dir.logs_dir(), dir.run_dir()] {
        fs::create_dir_all(&d)
            .map_err(|e| Failure::usage(format!("cannot create {}: {e}", d.display())))?;
    }

    let shown = &args.dir;
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
    println!(
        "wrote {} (cluster CA, node certificates {}, client certificate {ADMIN})",
        shown.join("pki").display(),
        ids.join(", ")
    );
    println!(
        "wrote {} (EdDSA token issuer; nodes verify with keyset.json)",
        shown.join("issuer").display()
    );
    println!(
        "wrote {} (map epoch {}, {} shards with {replicas} replica(s) each)",
        shown.join("cluster.json").display(),
        map.epoch,
        map.shards.len()
    );
    for (id, addr) in &nodes {
        let held: Vec<String> = map.shards_of_node(id).map(|s| s.id.to_string()).collect();
        println!(
            "wrote {} (node {id} at {addr}, first replica of slots {}; holds shard(s) {})",
            shown.join("nodes").join(format!("{id}.toml")).display(),
            format_ranges(&map.ranges_of_node(id)),
            held.join(", ")
        );
    }
    println!(
        "wrote {} (admin over every key, valid for 24 h, bound to the admin certificate)",
        shown.join("admin.token").display()
    );
    println!(
        "wrote {} (admin profile; seeds {})",
        shown.join("client.toml").display(),
        addrs.join(", ")
    );
    println!("\nnext: skv cluster up --dir {}", shown.display());
    Ok(exit::OK)
}

/// Every file of a new cluster, into `stage`.
pub(super) fn write_everything(
    stage: &ClusterDir,
    cluster: &str,
    nodes: &[(String, String)],
    map: &ClusterMap,
    addrs: &[String],
) -> Result<()> {
    skv_certs::init(&InitOptions {
        dir: stage.pki().dir().to_owned(),
        cluster: cluster.to_owned(),
        nodes: nodes.iter().map(|(id, _)| id.clone()).collect(),
        clients: vec![ADMIN.to_owned()],
        key_type: KeyType::P256,
        force: false,
    })
    .map_err(|e| Failure::usage(format!("cannot create the PKI: {e}")))?;
    keys_init(&stage.issuer_dir(), Alg::EdDSA, None)
        .map_err(|e| Failure::usage(format!("cannot create the token issuer: {e}")))?;
    stage.record_map(map)?;
    fs::create_dir_all(stage.nodes_dir())
        .map_err(|e| Failure::usage(format!("cannot create nodes/: {e}")))?;
    for (id, addr) in nodes {
        write_atomic(
            &stage.node_config(id),
            render_node_config(cluster, id, addr).as_bytes(),
            0o644,
        )
        .map_err(Failure::usage)?;
    }
    let token = mint_admin_token(&stage.issuer_dir(), &stage.pki())?;
    write_atomic(&stage.token_file(), format!("{token}\n").as_bytes(), 0o600)
        .map_err(Failure::usage)?;
    write_atomic(
        &stage.client_profile(),
        render_client_profile(cluster, addrs).as_bytes(),
        0o644,
    )
    .map_err(Failure::usage)
}

/// `--force` must not pull the files out from under running nodes.
fn refuse_if_running(root: &Path) -> Result<()> {
    let dir = ClusterDir {
        root: root.to_owned(),
    };
    let running = process::running_nodes(&dir);
    if let Some((id, pid)) = running.first() {
        return Err(Failure::usage(format!(
            "node {id} (pid {pid}) of the cluster in {} is running; stop it with \
             `skv cluster down --dir {}` before replacing the cluster",
            root.display(),
            root.display()
        )));
    }
    Ok(())
}

fn remove(path: &Path) -> Result<()> {
    let result = match path.symlink_metadata() {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    };
    result.map_err(|e| Failure::usage(format!("cannot remove {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn args(dir: &Path, nodes: u16, force: bool) -> ClusterInitArgs {
        ClusterInitArgs {
            dir: dir.to_owned(),
            nodes,
            cluster: "t".into(),
            base_port: 7401,
            replicas: None,
            force,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in walk(dir) {
            out.push(
                entry
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        out.sort();
        out
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            }
            out.push(path);
        }
        out
    }

    #[test]
    fn init_writes_the_documented_layout_and_refuses_to_overwrite_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        assert_eq!(run(args(&dir, 2, false)).unwrap(), exit::OK);
        let expected = [
            "admin.token",
            "client.toml",
            "cluster.json",
            "data",
            "issuer",
            "issuer/issuer-key.pem",
            "issuer/keyset.json",
            "logs",
            "nodes",
            "nodes/n1.toml",
            "nodes/n2.toml",
            "pki",
            "pki/ca-key.pem",
            "pki/ca.pem",
            "pki/clients",
            "pki/clients/admin-key.pem",
            "pki/clients/admin.pem",
            "pki/clients/admin.toml",
            "pki/crl.pem",
            "pki/nodes",
            "pki/nodes/n1-key.pem",
            "pki/nodes/n1.pem",
            "pki/nodes/n2-key.pem",
            "pki/nodes/n2.pem",
            "run",
        ];
        assert_eq!(listing(&dir), expected);

        let cd = ClusterDir::open(&dir).unwrap();
        let map = cd.bootstrap_map().unwrap();
        // Two nodes: both hold every shard by default.
        assert_eq!(
            map,
            ClusterMap::even_replicated(
                "t",
                &[
                    ("n1".into(), "127.0.0.1:7401".into()),
                    ("n2".into(), "127.0.0.1:7402".into()),
                ],
                2
            )
            .unwrap()
        );
        // The profile is one the client library accepts, with every node as a seed.
        let profile = skv_client::Profile::load(&cd.client_profile()).unwrap();
        assert_eq!(profile.addr.as_deref(), Some("127.0.0.1:7401"));
        assert_eq!(
            profile.nodes,
            Some(vec!["127.0.0.1:7401".into(), "127.0.0.1:7402".into()])
        );
        assert_eq!(profile.token_file, Some(cd.root().join("admin.token")));
        assert!(profile.ca.unwrap().exists() && profile.key.unwrap().exists());
        // The token is private, for the admin, over everything, and not about to expire.
        let token_path = cd.token_file();
        let mode = fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = fs::read_to_string(&token_path).unwrap();
        let claims = skv_certs::issuer::inspect(&token).unwrap().claims;
        assert_eq!(claims["sub"], "admin");
        assert!(!super::super::needs_renewal(
            super::super::token_expiry(&token),
            super::super::unix_now()
        ));
        assert_eq!(cd.admin_token().unwrap(), token.trim(), "no renewal needed");
        let nodes = cd.node_files().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].addr, "127.0.0.1:7402");

        // Again: refused, nothing changed.
        let before = fs::read(cd.map_file()).unwrap();
        let err = run(args(&dir, 3, false)).unwrap_err();
        assert_eq!(err.code, exit::USAGE);
        assert!(err.message.contains("--force"), "{}", err.message);
        assert_eq!(fs::read(cd.map_file()).unwrap(), before);

        // --force replaces the cluster, data included.
        fs::write(cd.root().join("data/old"), "x").unwrap();
        run(args(&dir, 3, true)).unwrap();
        assert_eq!(cd.node_files().unwrap().len(), 3);
        assert!(!cd.root().join("data/old").exists());
        assert!(!listing(&dir).iter().any(|p| p.starts_with(".skv")));
    }

    #[test]
    fn refused_arguments_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("c");
        for bad in [
            args(&dir, 0, false),
            ClusterInitArgs {
                base_port: 65535,
                ..args(&dir, 2, false)
            },
            ClusterInitArgs {
                cluster: "Bad Name".into(),
                ..args(&dir, 2, false)
            },
            ClusterInitArgs {
                replicas: Some(3),
                ..args(&dir, 2, false)
            },
            ClusterInitArgs {
                replicas: Some(0),
                ..args(&dir, 2, false)
            },
        ] {
            assert_eq!(run(bad).unwrap_err().code, exit::USAGE);
        }
        assert!(!dir.exists());
    }

    #[test]
    fn replicas_default_to_three_and_can_be_chosen() {
        let tmp = tempfile::tempdir().unwrap();
        let five = tmp.path().join("five");
        run(args(&five, 5, false)).unwrap();
        let map = ClusterDir::open(&five).unwrap().bootstrap_map().unwrap();
        assert!(map.shards.iter().all(|s| s.replicas.len() == 3));
        assert_eq!(map.shards[4].replicas, ["n5", "n1", "n2"]);

        let single = tmp.path().join("single");
        run(ClusterInitArgs {
            replicas: Some(1),
            ..args(&single, 3, false)
        })
        .unwrap();
        let map = ClusterDir::open(&single).unwrap().bootstrap_map().unwrap();
        assert!(map.shards.iter().all(|s| s.replicas.len() == 1));
    }
}
