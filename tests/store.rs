//! The store on its own, over a real SQLite file: closing it commits what
//! its group-commit writers already queued, and refuses what comes after.

mod common;

use std::sync::Arc;

use common::*;
use prost::Message;
use threatmesh::clock::Clock;
use threatmesh::proto::v1::Tlp;
use threatmesh::store::{NewIndicator, Store, StoreError};

fn row(key: &threatmesh::signing::OrgSigningKey, i: usize) -> NewIndicator {
    let ind = hand_made(
        "a.example",
        key,
        &format!("host-{i}.evil.example"),
        Tlp::Green,
        now_ms(),
    );
    NewIndicator {
        envelope: seal_indicator(key, &ind).encode_to_vec(),
        indicator: ind,
        rule: "published-here",
        path: Vec::new(),
        upstream_seq: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_every_queued_write_and_refuses_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = Store::open_sqlite(&path, Clock::system()).await.unwrap();
    let (key, _) = threatmesh::signing::OrgSigningKey::generate().unwrap();
    let key = Arc::new(key);
    // Many publishes in flight, then close while they are queued.
    let mut pending = Vec::new();
    for i in 0..200 {
        let (s, k) = (store.clone(), key.clone());
        pending.push(tokio::spawn(async move {
            s.append_local(&row(&k, i), "test").await
        }));
    }
    tokio::task::yield_now().await;
    store.close().await;
    let mut acknowledged = 0;
    for p in pending {
        match p.await.unwrap() {
            Ok(_) => acknowledged += 1,
            Err(StoreError::WriterStopped) => {}
            Err(e) => panic!("a write failed other than by the close: {e}"),
        }
    }
    // After close, a write is refused with the reason.
    let late = store.append_local(&row(&key, 999), "test").await;
    assert!(matches!(late, Err(StoreError::WriterStopped)), "{late:?}");
    // Every acknowledged write is there, and nothing else; the ledger holds.
    let reopened = Store::open_sqlite(&path, Clock::system()).await.unwrap();
    assert_eq!(reopened.count_indicators().await.unwrap(), acknowledged);
    assert!(reopened.verify_audit().await.unwrap().is_ok());
    reopened.close().await;
}

/// A publish of indicator `i` with a 4 KiB description.
async fn publish_big(
    client: &mut threatmesh::proto::v1::exchange_client::ExchangeClient<tonic::transport::Channel>,
    i: u32,
) -> Result<(), tonic::Status> {
    let mut d = ipv4_draft(i, Tlp::Green);
    d.description = format!("{i:08}").repeat(500);
    client
        .publish(threatmesh::proto::v1::PublishRequest { indicator: Some(d) })
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_refuses_publishes_and_takes_the_next_one_once_space_returns() {
    let mut a = Org::new("a.example");
    a.settings.store.max_size_mb = 4;
    let node = start(&a).await;
    // Most of the allowed size taken by something else (as another program
    // would fill a shared disk).
    let url = format!("sqlite://{}", a.settings.store.path.display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE filler (x BLOB)")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO filler VALUES (zeroblob(3 * 1024 * 1024))")
        .execute(&mut db)
        .await
        .unwrap();

    let mut client = publisher(&a, &node);
    let mut full = None;
    for i in 0..2000 {
        if let Err(s) = publish_big(&mut client, i).await {
            full = Some((i, s));
            break;
        }
    }
    let (at, status) = full.expect("the store never filled up");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("full"), "{status:?}");
    // Still full: refused again, nothing half-stored.
    let again = publish_big(&mut client, at).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted, "{again:?}");
    let held = node.ctx.store.count_indicators().await.unwrap();

    // Space returns: the next publish is stored, without a restart.
    sqlx::query("DROP TABLE filler")
        .execute(&mut db)
        .await
        .unwrap();
    publish_big(&mut client, at).await.unwrap();
    publish_big(&mut client, at + 1).await.unwrap();
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), held + 2);
    assert_eq!(
        node.ctx.store.verify_audit().await.unwrap(),
        Ok(node.ctx.store.count_audit().await.unwrap())
    );
    node.stop().await;
}

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl SmallDisk {
    /// Mounts an 8 MiB tmpfs (root only: the test machines run as root).
    fn mount() -> Option<Self> {
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1).map(|u| u == "0"))?;
        if !root {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("disk");
        std::fs::create_dir(&mnt).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs as root failed");
        Some(Self(mnt, dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_resource_exhausted_and_the_next_write_after_space_returns_succeeds() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("not root: cannot mount a small tmpfs here; the test machines run this as root");
        return;
    };
    let mut a = Org::new("a.example");
    a.settings.store.path = disk.0.join("a.db");
    let node = start(&a).await;
    // Another program fills the disk.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 6 << 20]).unwrap();
    let mut client = publisher(&a, &node);
    let mut refused = Vec::new();
    for i in 0..5000 {
        if let Err(s) = publish_big(&mut client, i).await {
            refused.push(s);
            if refused.len() == 6 {
                break;
            }
        }
    }
    assert_eq!(refused.len(), 6, "the disk never filled");
    // Every refusal names the full disk; none is a wedged store.
    for s in &refused {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("disk is full"), "{s:?}");
    }
    let held = node.ctx.store.count_indicators().await.unwrap();
    // Space returns: the next writes succeed, no restart.
    std::fs::remove_file(&filler).unwrap();
    for i in 9000..9005 {
        publish_big(&mut client, i).await.unwrap();
    }
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), held + 5);
    assert_eq!(
        node.ctx.store.verify_audit().await.unwrap(),
        Ok(node.ctx.store.count_audit().await.unwrap())
    );
    node.stop().await;
}

impl SmallDisk {
    /// Fills the disk, leaving `free` bytes; the filler is `path`.
    fn fill_leaving(&self, free: usize) -> std::path::PathBuf {
        use std::io::Write;
        let reserve = self.0.join("reserve");
        std::fs::write(&reserve, vec![0u8; free]).unwrap();
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        drop(f);
        std::fs::remove_file(reserve).unwrap();
        filler
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_disk_is_full_backs_off_and_catches_up_once_space_returns() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("not root: cannot mount a small tmpfs here; the test machines run this as root");
        return;
    };
    let a = Org::new("a.example");
    let mut b = Org::new("b.example");
    b.settings.store.path = disk.0.join("b.db");
    b.settings.federation.reconnect_min_ms = 50;
    b.settings.federation.reconnect_max_ms = 3200;
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    let mut client = publisher(&a, &node_a);
    for i in 0..600 {
        publish_big(&mut client, i).await.unwrap();
    }
    b.add_peer(&a, Some(node_a.addr)).await;
    // Another program fills B's disk, leaving too little for A's log.
    let filler = disk.fill_leaving(512 * 1024);
    let node_b = start(&b).await;

    // B's link fails on its own store, again and again: it backs off
    // (the delay grows) instead of retrying at the shortest delay, and
    // says why.
    let (ctx, a_id) = (node_b.ctx.clone(), a.id.clone());
    wait_until(60, "B's link to back off", || {
        let (ctx, a_id) = (ctx.clone(), a_id.clone());
        async move {
            ctx.links
                .snapshot()
                .get(&a_id)
                .is_some_and(|h| h.retry_in_ms >= 800)
        }
    })
    .await;
    let health = node_b.ctx.links.snapshot().get(&a.id).cloned().unwrap();
    assert!(health.last_error.contains("disk is full"), "{health:?}");

    // Space returns: B catches up, nothing lost.
    std::fs::remove_file(filler).unwrap();
    wait_until(60, "B to hold A's 600 indicators", || {
        let s = node_b.ctx.store.clone();
        async move { s.count_indicators().await.unwrap() >= 600 }
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 600);
    node_b.stop().await;
    node_a.stop().await;
}
