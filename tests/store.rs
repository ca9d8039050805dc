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
