//! Suspending, resuming and removing a partner while it streams, through
//! the Admin API: applied when the call returns, the partner's connections
//! closed within a second.

mod common;

use common::*;
use threatmesh::proto::v1::{PeerAction, Tlp};
use threatmesh::store::PeerState;

async fn has(node: &RunningNode, id: &str) -> bool {
    ids_at(node).await.contains(id)
}

/// A serves B and C; C is the control that keeps receiving.
async fn three() -> (Org, Org, Org, RunningNode, RunningNode, RunningNode) {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let c = Org::new("c.example");
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    c.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let node_c = start(&c).await;
    (a, b, c, node_a, node_b, node_c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_partner_gets_nothing_is_refused_and_resumes_from_its_cursor() {
    let (a, b, _c, node_a, node_b, node_c) = three().await;
    let client = publisher(&a, &node_a);
    let first = publish_all(&client, vec![ipv4_draft(1, Tlp::Green)], 1).await;
    for n in [&node_b, &node_c] {
        let id = first[0].id.clone();
        wait_until(30, "first indicator at B and C", || {
            let id = id.clone();
            async move { has(n, &id).await }
        })
        .await;
    }

    let before = set_peer_state(&a, &node_a, &b, PeerAction::Suspend)
        .await
        .unwrap();
    assert_eq!(before, "active");
    // In force when the call returns.
    assert!(node_a.ctx.partner_refused(&b.id).is_some());
    // B's open stream is closed and its reconnects are refused, with the reason.
    // Within a second.
    link_error(&node_b, &a, "suspended", 1).await;

    let during = publish_all(
        &client,
        vec![ipv4_draft(2, Tlp::Green), ipv4_draft(3, Tlp::Clear)],
        1,
    )
    .await;
    for p in &during {
        let id = p.id.clone();
        wait_until(30, "C (not suspended) to receive", || {
            let id = id.clone();
            let n = &node_c;
            async move { has(n, &id).await }
        })
        .await;
    }
    // C has them. Nothing leaves A without a `sent` row on A's ledger
    // first, and B's streams are closed: no such row means nothing went.
    for p in &during {
        assert_never_sent(&node_a, "b.example", &p.id).await;
        assert!(!has(&node_b, &p.id).await, "suspended B received {}", p.id);
    }
    let rows = node_a
        .ctx
        .store
        .audit_rows(Some("b.example"), None)
        .await
        .unwrap();
    assert!(rows.iter().any(|r| r.entry.event == "peer-state"
        && r.entry.subject == "suspended"
        && r.entry.actor == "spiffe://a.example/admin/admin"));

    // Resume: B continues from its own cursor and gets what it missed.
    set_peer_state(&a, &node_a, &b, PeerAction::Resume)
        .await
        .unwrap();
    for p in &during {
        let id = p.id.clone();
        wait_until(30, "B to catch up after resume", || {
            let id = id.clone();
            let n = &node_b;
            async move { has(n, &id).await }
        })
        .await;
    }
    assert_eq!(ids_at(&node_b).await.len(), 3, "each indicator once");
    node_b.stop().await;
    node_c.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_is_a_hard_stop_that_keeps_cursor_and_history() {
    let (a, b, _c, node_a, node_b, node_c) = three().await;
    let client = publisher(&a, &node_a);
    let first = publish_all(&client, vec![ipv4_draft(1, Tlp::Green)], 1).await;
    let id = first[0].id.clone();
    wait_until(30, "first indicator at B", || {
        let id = id.clone();
        let n = &node_b;
        async move { has(n, &id).await }
    })
    .await;
    let cursor_before = node_b.ctx.store.cursor(&a.id).await.unwrap();

    set_peer_state(&a, &node_a, &b, PeerAction::Remove)
        .await
        .unwrap();
    assert!(
        node_a
            .ctx
            .partner_refused(&b.id)
            .is_some_and(|w| w.contains("removed"))
    );
    // Within a second.
    link_error(&node_b, &a, "removed", 1).await;
    let after = publish_all(&client, vec![ipv4_draft(2, Tlp::Green)], 1).await;
    let id = after[0].id.clone();
    wait_until(30, "C to receive", || {
        let id = id.clone();
        let n = &node_c;
        async move { has(n, &id).await }
    })
    .await;
    assert_never_sent(&node_a, "b.example", &after[0].id).await;
    assert!(!has(&node_b, &after[0].id).await, "removed B received data");

    // Kept for the audit: the partner row, B's own cursor, A's ledger rows.
    let store = a.store().await;
    let peer = store
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.org == b.id)
        .unwrap();
    assert_eq!(peer.state, PeerState::Removed);
    let sent = store
        .audit_rows(Some("b.example"), None)
        .await
        .unwrap()
        .iter()
        .filter(|r| r.entry.event == "sent")
        .count();
    assert_eq!(sent, 1);
    assert!(store.verify_audit().await.unwrap().is_ok());
    store.close().await;
    // Resume cannot undo a removal; registering the card again can.
    let err = set_peer_state(&a, &node_a, &b, PeerAction::Resume)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("peer add"), "{}", err.message());
    assert_eq!(node_b.ctx.store.cursor(&a.id).await.unwrap(), cursor_before);
    node_b.stop().await;
    node_c.stop().await;
    node_a.stop().await;
}
