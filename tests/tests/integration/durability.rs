//! Crash and shutdown: what was acknowledged survives.

use std::sync::{Arc, Mutex};

use skv_client::Connection;
use skv_tests::{Node, Pki};

#[test]
fn kill_9_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let data = pki.dir().join("data");
    let node = Node::start_tls(&pki, &data, &["--durability", "sync"])?;
    let addr = node.addr.clone();
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut writers = Vec::new();
        for w in 0..8 {
            let opts = pki.alice(&addr);
            let acked = acked.clone();
            writers.push(tokio::spawn(async move {
                let conn = Connection::connect(&opts).await?;
                for i in 0.. {
                    let key = format!("w{w}/{i}");
                    // Once the node dies, writes fail; only the acknowledged ones count.
                    match conn.put(key.clone(), key.clone()).await {
                        Ok(version) => acked.lock().expect("lock").push((key, version)),
                        Err(_) => break,
                    }
                }
                anyhow::Ok(())
            }));
        }
        // Let writes flow, then crash the node in the middle of them.
        while acked.lock().expect("lock").len() < 300 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        node.kill9()?;
        for w in writers {
            w.await??;
        }
        anyhow::Ok(())
    })?;
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 300);

    let node = Node::start_tls(&pki, &data, &["--durability", "sync"])?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for (key, version) in &acked {
            let (v, value) = conn
                .get(key.clone())
                .await?
                .unwrap_or_else(|| panic!("acknowledged write {key} lost after kill -9"));
            assert_eq!(&value[..], key.as_bytes());
            assert_eq!(v, *version);
        }
        anyhow::Ok(())
    })
}

#[test]
fn sigterm_finishes_and_flushes() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let data = pki.dir().join("data");
    // Async durability: only the shutdown flush makes these writes durable.
    let node = Node::start_tls(
        &pki,
        &data,
        &["--durability", "async", "--flush-every-ms", "600000"],
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for i in 0..200 {
            conn.put(format!("k{i}"), format!("v{i}")).await?;
        }
        anyhow::Ok(())
    })?;
    let status = node.terminate()?;
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    let node = Node::start_tls(&pki, &data, &[])?;
    rt.block_on(async {
        let conn = Connection::connect(&pki.alice(&node.addr)).await?;
        for i in 0..200 {
            let (_, value) = conn
                .get(format!("k{i}"))
                .await?
                .expect("flushed at shutdown");
            assert_eq!(value, format!("v{i}").as_bytes());
        }
        anyhow::Ok(())
    })
}
