//! Publish at A, subscribe at B, over real mutual TLS on loopback.

mod common;

use std::collections::{HashMap, HashSet};

use common::*;
use prost::Message;
use threatmesh::exchange::decode_stored;
use threatmesh::proto::v1::{Envelope, IndicatorKind, Tlp};
use threatmesh::signing::{KeyDirectory, KnownKey, open_indicator};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_indicators_arrive_verified_once_and_byte_identical() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let drafts = (0..1000)
        .map(|i| ipv4_draft(i, if i % 2 == 0 { Tlp::Green } else { Tlp::Clear }))
        .collect();
    let published = publish_all(&publisher(&a, &node_a), drafts, 32).await;
    assert_eq!(published.len(), 1000);
    let ids: HashSet<String> = published.iter().map(|p| p.id.clone()).collect();
    assert_eq!(ids.len(), 1000, "every publish got a fresh id");

    let store_b = node_b.ctx.store.clone();
    wait_until(60, "1,000 indicators at B", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() >= 1000 }
    })
    .await;

    let at_a: HashMap<String, prost::bytes::Bytes> = node_a
        .ctx
        .store
        .indicators(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.indicator_id.clone(), r.envelope.clone()))
        .collect();
    let at_b = store_b.indicators(None).await.unwrap();
    assert_eq!(at_b.len(), 1000, "exactly 1,000 rows at B");
    let mut keys = KeyDirectory::default();
    let key_a = a.signing_key();
    keys.insert(KnownKey {
        key_id: key_a.key_id().into(),
        org: a.id.clone(),
        public_key: key_a.public_key().to_vec(),
        not_before_ms: 0,
        not_after_ms: 0,
        revoked: false,
    })
    .unwrap();
    let mut seen = HashSet::new();
    for row in &at_b {
        assert_eq!(row.received_from.as_deref(), Some("a.example"));
        assert!(seen.insert((
            row.origin_org.clone(),
            row.indicator_id.clone(),
            row.version
        )));
        assert_eq!(
            Some(&row.envelope),
            at_a.get(&row.indicator_id),
            "B stores A's envelope byte for byte"
        );
        // Each stored envelope verifies against A's key, independently of the node.
        let env = Envelope::decode(&row.envelope[..]).unwrap();
        let ind = open_indicator(&env, &keys).unwrap();
        assert!(ids.contains(&ind.id));
    }
    assert!(store_b.rejections().await.unwrap().is_empty());
    assert_eq!(
        store_b.cursor(&a.id).await.unwrap(),
        node_a.ctx.store.latest_seq().await.unwrap()
    );
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amber_amber_strict_and_red_never_reach_the_partner() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let client = publisher(&a, &node_a);
    let withheld = vec![
        draft(IndicatorKind::Domain, "amber.example", Tlp::Amber, &[]),
        draft(
            IndicatorKind::Domain,
            "amber-named.example",
            Tlp::Amber,
            &["b.example"],
        ),
        draft(
            IndicatorKind::Domain,
            "strict.example",
            Tlp::AmberStrict,
            &["b.example"],
        ),
        draft(
            IndicatorKind::Domain,
            "red.example",
            Tlp::Red,
            &["b.example"],
        ),
    ];
    let shared = vec![
        draft(IndicatorKind::Domain, "clear.example", Tlp::Clear, &[]),
        draft(IndicatorKind::Domain, "green.example", Tlp::Green, &[]),
    ];
    // Withheld ones first (backlog for the live stream), then the shareable ones.
    let denied_ids: HashSet<String> = publish_all(&client, withheld.clone(), 1)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    let allowed_ids: HashSet<String> = publish_all(&client, shared, 1)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    // And more withheld ones after, on the live tail.
    let late: HashSet<String> = publish_all(&client, withheld, 1)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    caught_up(&node_b, &a, &node_a).await;
    let store_b = node_b.ctx.store.clone();
    let got: HashSet<String> = store_b
        .indicators(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let ind = decode_stored(&r.envelope).unwrap();
            let tlp = ind.marking.unwrap().tlp;
            assert!(
                tlp == Tlp::Clear as i32 || tlp == Tlp::Green as i32,
                "{} arrived with TLP {tlp}",
                ind.value
            );
            r.indicator_id.clone()
        })
        .collect();
    assert_eq!(got, allowed_ids);
    assert!(got.is_disjoint(&denied_ids) && got.is_disjoint(&late));
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_new_versions_of_the_same_id() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let client = publisher(&a, &node_a);
    let first = publish_all(&client, vec![ipv4_draft(7, Tlp::Green)], 1).await;
    let mut update = ipv4_draft(7, Tlp::Green);
    update.id = first[0].id.clone();
    update.revoked = true;
    let second = publish_all(&client, vec![update], 1).await;
    assert_eq!(second[0].id, first[0].id);
    assert_eq!(second[0].version, 2);
    let store_b = node_b.ctx.store.clone();
    wait_until(30, "both versions at B", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() == 2 }
    })
    .await;
    let rows = store_b.indicators(None).await.unwrap();
    let last = decode_stored(&rows[1].envelope).unwrap();
    assert!(last.revoked && last.version == 2);
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_fetches_the_live_card_and_it_verifies() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let mut client = exchange_as(&a, &node_a, &b.node_cert());
    let card = client
        .get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    let verified = threatmesh::identity::open_card(&card).unwrap();
    assert_eq!(verified.org, a.id);
    assert_eq!(verified.keys[0].key_id, a.signing_key().key_id());
    assert_eq!(verified.card.ca_bundle_pem, a.ca_pem());
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_registered_while_running_are_picked_up_without_restart() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let node_a = start(&a).await;
    let node_b = start(&b).await;
    let published = publish_all(&publisher(&a, &node_a), vec![ipv4_draft(1, Tlp::Green)], 1).await;

    // Before A knows B's CA, B's node certificate is refused by A.
    let mut early = exchange_as(&a, &node_a, &b.node_cert());
    let err = early
        .subscribe(threatmesh::proto::v1::SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Both admins register each other while the nodes run.
    a.add_peer(&b, None).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let store_b = node_b.ctx.store.clone();
    wait_until(30, "B to receive A's indicator after registration", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() == 1 }
    })
    .await;
    let rows = store_b.indicators(None).await.unwrap();
    assert_eq!(rows[0].indicator_id, published[0].id);
    node_b.stop().await;
    node_a.stop().await;
}

/// Waits until `node` holds `n` envelopes from `upstream` in quarantine,
/// each dated ahead of its clock (not waiting for a key); returns them.
async fn held_for_clock(
    node: &RunningNode,
    upstream: &threatmesh::model::OrgId,
    n: usize,
) -> Vec<threatmesh::store::QuarantineRow> {
    let store = node.ctx.store.clone();
    wait_until(30, "envelopes held for the clock", || {
        let s = store.clone();
        async move { s.quarantine().await.unwrap().len() >= n }
    })
    .await;
    let held = store.quarantine().await.unwrap();
    assert_eq!(held.len(), n, "{held:#?}");
    assert!(
        held.iter()
            .all(|q| &q.upstream == upstream && q.held.due_ms > 0)
    );
    held
}

/// The publisher's clock runs 5 min 12 s ahead of the subscriber's: its
/// indicators are dated 12 s past what B accepts. They are not refused (on
/// the old main they were refused as malformed and the cursor moved past
/// them for good): B holds them, shows A's clock offset with a warning,
/// and stores every one once its own clock reaches their date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indicators_dated_ahead_of_our_clock_wait_and_arrive_when_it_reaches_them() {
    let (a, b) = (Org::new("a.example"), Org::new("b.example"));
    a.add_peer(&b, None).await;
    let ahead_ms = 5 * 60_000 + 12_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_a = start_with_clock(
        &a,
        listener,
        threatmesh::clock::Clock::anchored(now_ms() + ahead_ms),
    )
    .await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let published = publish_all(
        &publisher(&a, &node_a),
        (0..3).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        1,
    )
    .await;

    considered(&node_b, &a.id, 3).await;
    held_for_clock(&node_b, &a.id, 3).await;
    assert!(ids_at(&node_b).await.is_empty());
    assert!(refusals(&node_b).await.is_empty(), "nothing is refused");
    let rows = ledger(&node_b, "a.example").await;
    assert_eq!(
        rows.iter()
            .filter(|r| r.entry.event == "quarantined" && r.entry.rule == "dated-ahead-of-clock")
            .count(),
        3,
        "{rows:#?}"
    );

    // Status shows A's clock offset and warns.
    let out = cli(&b, &node_b, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let link = &status["links"][0];
    let offset = link["clock_offset_ms"].as_i64().unwrap();
    assert!(
        (ahead_ms - 10_000..=ahead_ms + 10_000).contains(&offset),
        "A's clock offset {offset} ms, expected about {ahead_ms}"
    );
    let warning = link["clock_warning"].as_str().unwrap();
    assert!(
        warning.contains("a.example's clock is 5m1") && warning.contains("ahead of ours"),
        "{warning}"
    );
    let table = cli(&b, &node_b, &["status"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("+5m1") && text.contains("warning: a.example's clock"),
        "{text}"
    );
    let listing = String::from_utf8_lossy(&cli(&b, &node_b, &["quarantine"]).stdout).to_string();
    assert!(listing.contains("our clock to reach"), "{listing}");

    // About 12 s later B's clock reaches their date: every one is stored.
    let want: std::collections::BTreeSet<String> = published.iter().map(|p| p.id.clone()).collect();
    wait_until(90, "the held indicators at B", || async {
        ids_at(&node_b).await == want
    })
    .await;
    assert!(node_b.ctx.store.quarantine().await.unwrap().is_empty());
    assert!(refusals(&node_b).await.is_empty());
    assert!(node_b.ctx.store.verify_audit().await.unwrap().is_ok());
    node_b.stop().await;
    node_a.stop().await;
}

/// The subscriber's clock runs 10 minutes behind: what A publishes now is
/// dated ahead of B's clock and waits at B, across a restart; once B's
/// clock is fixed (it restarts on the right time) everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_whose_clock_was_behind_gets_everything_once_it_is_fixed() {
    let (a, b) = (Org::new("a.example"), Org::new("b.example"));
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let behind = threatmesh::clock::Clock::anchored(now_ms() - 10 * 60_000);
    let node_b = start_with_clock(&b, listener, behind).await;
    let published = publish_all(
        &publisher(&a, &node_a),
        (0..2).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        1,
    )
    .await;
    considered(&node_b, &a.id, 2).await;
    held_for_clock(&node_b, &a.id, 2).await;
    assert!(ids_at(&node_b).await.is_empty());
    let offset = node_b.ctx.links.snapshot()[&a.id].clock_offset_ms.unwrap();
    assert!(
        offset > 9 * 60_000,
        "A is about 10 min ahead of B: {offset}"
    );
    node_b.stop().await;

    // The clock is fixed: B starts again on the system clock.
    let node_b = start(&b).await;
    let want: std::collections::BTreeSet<String> = published.iter().map(|p| p.id.clone()).collect();
    wait_until(30, "the held indicators at B", || async {
        ids_at(&node_b).await == want
    })
    .await;
    assert!(node_b.ctx.store.quarantine().await.unwrap().is_empty());
    assert!(refusals(&node_b).await.is_empty());
    node_b.stop().await;
    node_a.stop().await;
}

/// A partner's new card (here after a signing key rotation) changes
/// neither where we dial it nor whom we trust to answer: the link stays up
/// and keeps its clock estimate. Restarting it on every card change
/// dropped the estimate, and `status` showed the link connecting with no
/// clock for a while after each rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_s_new_card_keeps_its_link_and_clock_estimate() {
    let (a, b, node_a, node_b) = linked_pair().await;
    publish_all(&publisher(&a, &node_a), vec![ipv4_draft(1, Tlp::Green)], 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let link = || node_b.ctx.links.snapshot().get(&a.id).cloned();
    wait_until(
        60,
        "B's link to A connected with a clock estimate",
        || async {
            link().is_some_and(|h| {
                h.state == threatmesh::context::LinkState::Connected && h.clock_offset_ms.is_some()
            })
        },
    )
    .await;
    let before = link().unwrap();
    let card_version = |n: &RunningNode| {
        let store = n.ctx.store.clone();
        let org = a.id.clone();
        async move {
            store
                .peers()
                .await
                .unwrap()
                .into_iter()
                .find(|p| p.org == org)
                .unwrap()
                .card_version
        }
    };
    let old_version = card_version(&node_b).await;

    let o = cli(&a, &node_a, &["keys", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    publish_all(&publisher(&a, &node_a), vec![ipv4_draft(2, Tlp::Green)], 1).await;
    wait_until(60, "A's new card at B", || async {
        card_version(&node_b).await > old_version
    })
    .await;

    // A partner added after the new card: once its link exists, B's
    // supervisor has compared its links with the store holding A's new card.
    let c = Org::new("c.example");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    b.add_peer(&c, Some(nowhere)).await;
    wait_until(60, "B's link to C", || async {
        node_b.ctx.links.snapshot().contains_key(&c.id)
    })
    .await;
    wait_until(60, "B's link to A connected", || async {
        link().is_some_and(|h| h.state == threatmesh::context::LinkState::Connected)
    })
    .await;
    let after = link().unwrap();
    assert_eq!(
        after.since_ms, before.since_ms,
        "the link to A was not restarted: {before:?} then {after:?}"
    );
    assert!(after.clock_offset_ms.is_some(), "{after:?}");
    node_b.stop().await;
    node_a.stop().await;
}
