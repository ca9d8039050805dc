//! A partner's log that is replaced — its store re-created, or restored
//! from a backup — reuses sequence numbers. Every log has an identity and a
//! cursor counts in one log, so subscribers notice the change and read the
//! new log from the start: nothing is skipped.

mod common;

use common::*;
use threatmesh::proto::v1::Tlp;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_whose_store_was_recreated_is_read_again_from_the_start() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let addr = node_a.addr;
    let first = (0..100).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), first, 16).await;
    caught_up(&node_b, &a, &node_a).await;
    let old_log = node_a.ctx.log_id.clone();
    node_a.stop().await;

    // A's store is lost and A starts afresh on the same address: its log
    // begins again at seq 1, under a new identity.
    a.wipe_store();
    a.add_peer(&b, None).await;
    let node_a = start_on(&a, TcpListener::bind(addr).await.unwrap()).await;
    assert_ne!(node_a.ctx.log_id, old_log);
    let second = (1000..1600).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), second, 16).await;

    // B reads the new log from its start: all 600 new indicators arrive,
    // not just those beyond its old cursor of 100.
    let store = node_b.ctx.store.clone();
    wait_until(60, "B to hold the 100 old and 600 new indicators", || {
        let s = store.clone();
        async move { s.count_indicators().await.unwrap() >= 700 }
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 700);
    let (log, cursor) = node_b.ctx.store.cursor_in(&a.id).await.unwrap();
    assert_eq!((log.as_str(), cursor), (node_a.ctx.log_id.as_str(), 600));
    let changed: Vec<_> = ledger(&node_b, "a.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "log-changed")
        .collect();
    assert_eq!(changed.len(), 1, "{changed:#?}");
    assert!(changed[0].entry.subject.contains(&old_log));
    node_b.stop().await;
    node_a.stop().await;
}

/// Runs the CLI as `org`'s operator against the node address `addr`.
fn operator(org: &Org, addr: std::net::SocketAddr, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .arg("--config")
        .arg(&org.config)
        .env("THREATMESH_SERVER", addr.to_string())
        .args(args)
        .output()
        .unwrap()
}

fn says(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_a_backup_loses_nothing_at_its_partners() {
    // `store backup` and `restore` copy a SQLite file (PostgreSQL is backed
    // up with its own tools).
    let (a, _b, node_a, node_b) = linked_pair_with(Org::new_sqlite("a.example")).await;
    let addr = node_a.addr;
    let client = publisher(&a, &node_a);
    publish_all(
        &client,
        (0..50).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        16,
    )
    .await;
    // An online backup, then 50 more published after it.
    let backup = a.dir.path().join("backup.db");
    let o = operator(
        &a,
        addr,
        &["store", "backup", "--to", backup.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", says(&o));
    assert!(says(&o).contains("integrity ok"), "{}", says(&o));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is readable by the owner only");
    }
    publish_all(
        &client,
        (50..100).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        16,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 100);

    // Restoring while the node runs is refused.
    let o = operator(
        &a,
        addr,
        &["store", "restore", "--from", backup.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", says(&o));
    assert!(says(&o).contains("stop it"), "{}", says(&o));

    let old_log = node_a.ctx.log_id.clone();
    node_a.stop().await;
    let o = operator(
        &a,
        addr,
        &["store", "restore", "--from", backup.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", says(&o));
    assert!(says(&o).contains("log up to seq 50"), "{}", says(&o));

    // A serves again from the backup and publishes 600 more, reusing
    // sequence numbers 51-100 for other indicators.
    let node_a = start_on(&a, TcpListener::bind(addr).await.unwrap()).await;
    assert_ne!(node_a.ctx.log_id, old_log);
    let second = (1000..1600).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), second, 16).await;
    let store = node_b.ctx.store.clone();
    wait_until(60, "B to hold the 100 from before and the 600 new", || {
        let s = store.clone();
        async move { s.count_indicators().await.unwrap() >= 700 }
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 700);
    // Both ledgers say what happened, and A's still verifies.
    let restored = node_a.ctx.store.audit_rows(None, None).await.unwrap();
    assert!(
        restored
            .iter()
            .any(|r| r.entry.event == "store-restored" && r.entry.subject.contains(&old_log)),
        "no store-restored row"
    );
    assert_eq!(
        node_a.ctx.store.verify_audit().await.unwrap(),
        Ok(node_a.ctx.store.count_audit().await.unwrap())
    );
    assert!(
        ledger(&node_b, "a.example")
            .await
            .iter()
            .any(|r| r.entry.event == "log-changed")
    );
    node_b.stop().await;
    node_a.stop().await;
}

/// How many indicator releases to `partner` `node` has on its ledger.
async fn releases_to(node: &RunningNode, partner: &str) -> usize {
    ledger(node, partner)
        .await
        .iter()
        .filter(|r| r.entry.event == "sent")
        .map(|r| r.entry.subject.split(' ').count())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_can_make_us_read_a_partners_log_again() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let drafts = (0..100).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), drafts, 16).await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(releases_to(&node_a, "b.example").await, 100);

    let o = cli(
        &b,
        &node_b,
        &["peer", "reset-cursor", "--partner", "a.example"],
    );
    assert!(o.status.success(), "{}", says(&o));
    assert!(says(&o).contains("cursor 100 -> 0"), "{}", says(&o));
    // B subscribes again from the start: A releases everything again, B
    // stores nothing twice and its cursor comes back to A's end.
    let node = &node_a;
    wait_until(30, "A to release its log to B again", || async move {
        releases_to(node, "b.example").await >= 200
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 100);
    let reset: Vec<_> = ledger(&node_b, "a.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "cursor-reset")
        .collect();
    assert_eq!(reset.len(), 1);
    assert!(reset[0].entry.actor.contains("/admin/"), "{:?}", reset[0]);

    let o = cli(
        &b,
        &node_b,
        &["peer", "reset-cursor", "--partner", "nobody.example"],
    );
    assert_eq!(o.status.code(), Some(64), "{}", says(&o));
    assert!(
        says(&o).contains("not a registered partner"),
        "{}",
        says(&o)
    );
    node_b.stop().await;
    node_a.stop().await;
}
