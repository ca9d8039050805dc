//! Five real nodes in a line, a ring and a full mesh: every indicator
//! reaches exactly the nodes its signed marking and the policies allow,
//! relayed hop by hop with the origin's envelope untouched, stored exactly
//! once each, and the traffic stops (loops are harmless).

mod common;

use std::collections::BTreeMap;

use common::*;
use threatmesh::proto::v1::{IndicatorDraft, Marking, Tlp};

const NAMES: [&str; 5] = [
    "a.example",
    "b.example",
    "c.example",
    "d.example",
    "e.example",
];
const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const E: usize = 4;

fn marked(
    i: u32,
    tlp: Tlp,
    recipients: &[&str],
    may_forward: bool,
    hop_limit: u32,
) -> IndicatorDraft {
    let mut d = ipv4_draft(i, tlp);
    d.marking = Some(Marking {
        tlp: tlp as i32,
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
        may_forward,
        hop_limit,
    });
    d
}

/// The test set: (label, publishing node, draft).
fn drafts() -> Vec<(&'static str, usize, IndicatorDraft)> {
    vec![
        (
            "m1 clear, forward 8",
            A,
            marked(1, Tlp::Clear, &[], true, 8),
        ),
        (
            "m2 green, forward 8",
            A,
            marked(2, Tlp::Green, &[], true, 8),
        ),
        (
            "m3 green, no forward",
            A,
            marked(3, Tlp::Green, &[], false, 0),
        ),
        (
            "m4 clear, 1 relay hop",
            A,
            marked(4, Tlp::Clear, &[], true, 1),
        ),
        (
            "m5 amber for b",
            A,
            marked(5, Tlp::Amber, &["b.example"], true, 8),
        ),
        (
            "m6 red for b, c",
            A,
            marked(6, Tlp::Red, &["b.example", "c.example"], false, 0),
        ),
        (
            "m7 amber+strict for e",
            A,
            marked(7, Tlp::AmberStrict, &["e.example"], false, 0),
        ),
        (
            "m8 clear from c, forward 8",
            C,
            marked(8, Tlp::Clear, &[], true, 8),
        ),
    ]
}

/// Publishes the test set; returns label → id.
async fn publish_set(mesh: &Mesh) -> BTreeMap<&'static str, String> {
    let mut ids = BTreeMap::new();
    for (label, at, d) in drafts() {
        let r = publish_all(&publisher(&mesh.orgs[at], &mesh.nodes[at]), vec![d], 1).await;
        ids.insert(label, r[0].id.clone());
    }
    ids
}

/// Asserts every node holds exactly the expected labels (own publications
/// included), each stored once.
async fn assert_exact(mesh: &Mesh, ids: &BTreeMap<&'static str, String>, expected: [&[&str]; 5]) {
    let by_id: BTreeMap<&String, &str> = ids.iter().map(|(l, i)| (i, *l)).collect();
    for (n, want) in expected.iter().enumerate() {
        let rows = mesh.nodes[n].ctx.store.indicators(None).await.unwrap();
        let mut got: Vec<&str> = rows
            .iter()
            .map(|r| by_id.get(&r.indicator_id).copied().unwrap_or("unknown"))
            .collect();
        got.sort();
        let mut want: Vec<&str> = want.to_vec();
        for (label, at, _) in drafts() {
            if at == n {
                want.push(label);
            }
        }
        want.sort();
        assert_eq!(
            got, want,
            "{} holds the wrong set (or a duplicate)",
            NAMES[n]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_relays_exactly_what_markings_and_policies_allow() {
    let mesh = Mesh::start(&NAMES, &[(A, B), (B, C), (C, D), (D, E)], RELAY_POLICY).await;
    let ids = publish_set(&mesh).await;
    mesh.settle().await;
    // Distances from A: B 1, C 2, D 3, E 4. RED and AMBER+STRICT are never
    // relayed; AMBER for b stops at b; "1 relay hop" reaches C (B -> C is
    // the one relay) but not D.
    assert_exact(
        &mesh,
        &ids,
        [
            &["m8 clear from c, forward 8"],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m3 green, no forward",
                "m4 clear, 1 relay hop",
                "m5 amber for b",
                "m6 red for b, c",
                "m8 clear from c, forward 8",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m4 clear, 1 relay hop",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m8 clear from c, forward 8",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m8 clear from c, forward 8",
            ],
        ],
    )
    .await;
    // Relays forwarded A's envelope byte for byte, with the path it took.
    let at_e = mesh.nodes[E]
        .ctx
        .store
        .indicator_by_id(&ids["m1 clear, forward 8"])
        .await
        .unwrap()
        .unwrap();
    let at_a = mesh.nodes[A]
        .ctx
        .store
        .indicator_by_id(&ids["m1 clear, forward 8"])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_e.envelope, at_a.envelope);
    assert_eq!(
        at_e.path,
        ["a.example", "b.example", "c.example", "d.example"]
    );
    assert!(at_a.path.is_empty());
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_converges_with_no_duplicates_and_no_endless_traffic() {
    let mesh = Mesh::start(
        &NAMES,
        &[(A, B), (B, C), (C, D), (D, E), (E, A)],
        RELAY_POLICY,
    )
    .await;
    let ids = publish_set(&mesh).await;
    mesh.settle().await;
    // Distances from A: B 1, E 1, C 2, D 2.
    assert_exact(
        &mesh,
        &ids,
        [
            &["m8 clear from c, forward 8"],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m3 green, no forward",
                "m4 clear, 1 relay hop",
                "m5 amber for b",
                "m6 red for b, c",
                "m8 clear from c, forward 8",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m4 clear, 1 relay hop",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m4 clear, 1 relay hop",
                "m8 clear from c, forward 8",
            ],
            &[
                "m1 clear, forward 8",
                "m2 green, forward 8",
                "m3 green, no forward",
                "m4 clear, 1 relay hop",
                "m7 amber+strict for e",
                "m8 clear from c, forward 8",
            ],
        ],
    )
    .await;
    // Settled means every link caught up and no log grew: the loop is closed.
    let mut latest = Vec::new();
    for n in &mesh.nodes {
        latest.push(n.ctx.store.latest_seq().await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for (i, n) in mesh.nodes.iter().enumerate() {
        assert_eq!(
            n.ctx.store.latest_seq().await.unwrap(),
            latest[i],
            "traffic went on at {}",
            NAMES[i]
        );
        assert_eq!(
            n.ctx.store.count_rejections().await.unwrap(),
            0,
            "refusals at {}",
            NAMES[i]
        );
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_mesh_delivers_each_once() {
    let mut edges = Vec::new();
    for i in 0..5 {
        for j in i + 1..5 {
            edges.push((i, j));
        }
    }
    let mesh = Mesh::start(&NAMES, &edges, RELAY_POLICY).await;
    let ids = publish_set(&mesh).await;
    mesh.settle().await;
    // Everyone is A's neighbour.
    let all_public: &[&str] = &[
        "m1 clear, forward 8",
        "m2 green, forward 8",
        "m3 green, no forward",
        "m4 clear, 1 relay hop",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v: Vec<&'static str> = all_public.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let b = with(&[
        "m5 amber for b",
        "m6 red for b, c",
        "m8 clear from c, forward 8",
    ]);
    let c = with(&["m6 red for b, c"]);
    let d = with(&["m8 clear from c, forward 8"]);
    let e = with(&["m7 amber+strict for e", "m8 clear from c, forward 8"]);
    assert_exact(
        &mesh,
        &ids,
        [&["m8 clear from c, forward 8"], &b, &c, &d, &e],
    )
    .await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_past_recipient_even_under_a_tightened_policy() {
    let mesh = Mesh::start(&NAMES, &[(A, B), (B, C), (C, D), (D, E)], RELAY_POLICY).await;
    let client = publisher(&mesh.orgs[A], &mesh.nodes[A]);
    let x = publish_all(&client, vec![marked(1, Tlp::Clear, &[], true, 8)], 1).await;
    mesh.settle().await;
    for n in &mesh.nodes {
        assert!(ids_at(n).await.contains(&x[0].id));
    }

    // B tightens what C gets: domains only. New ipv4 indicators stop at B.
    let mut admin_b = admin(&mesh.orgs[B], &mesh.nodes[B]);
    admin_b
        .apply_policy(threatmesh::proto::v1::ApplyPolicyRequest {
            document: RELAY_POLICY.replace("test-relay", "domains-only").replace(
                "origins = \"any\"",
                "origins = \"any\"\nkinds = [\"domain\"]",
            ),
        })
        .await
        .unwrap();
    admin_b
        .update_peer(threatmesh::proto::v1::UpdatePeerRequest {
            org: "c.example".into(),
            policy: Some("domains-only".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let y = publish_all(&client, vec![marked(2, Tlp::Clear, &[], true, 8)], 1).await;

    // A revokes X: a new version with revoked = true.
    let mut revoke = marked(1, Tlp::Clear, &[], true, 8);
    revoke.id = x[0].id.clone();
    revoke.revoked = true;
    let r = publish_all(&client, vec![revoke], 1).await;
    assert_eq!(r[0].version, 2);
    mesh.settle().await;

    for (i, n) in mesh.nodes.iter().enumerate() {
        let row = n
            .ctx
            .store
            .indicator_by_id(&x[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.version, 2, "{} lacks the revocation", NAMES[i]);
        assert!(row.revoked);
    }
    // Y (new data) did not pass the tightened policy.
    assert!(ids_at(&mesh.nodes[B]).await.contains(&y[0].id));
    for n in &mesh.nodes[C..] {
        assert!(!ids_at(n).await.contains(&y[0].id));
    }
    // B's ledger says why the revocation went to C.
    let rows = mesh.nodes[B]
        .ctx
        .store
        .audit_rows(Some("c.example"), None)
        .await
        .unwrap();
    assert!(rows.iter().any(|r| r.entry.event == "sent"
        && r.entry.rule == "retraction-to-past-recipient"
        && r.entry.subject.ends_with("#2")));
    assert!(
        rows.iter()
            .any(|r| r.entry.event == "withheld" && r.entry.rule == "kind-not-allowed")
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_an_older_version_is_refused() {
    // B holds version 2 of an indicator of A; a partner offering version 1
    // afterwards is refused and nothing changes.
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let key = a.signing_key();
    let v = |version: u64| {
        let now = threatmesh::model::now_unix_ms();
        let ind = threatmesh::proto::v1::Indicator {
            origin_org: "a.example".into(),
            key_id: key.key_id().into(),
            id: "0b0e7c32-8a43-4c57-9a4e-3f5a2c6f1d10".into(),
            version,
            created_unix_ms: now - 1000,
            modified_unix_ms: now - 1000 + version as i64,
            marking: Some(Marking {
                tlp: Tlp::Clear as i32,
                ..Default::default()
            }),
            kind: threatmesh::proto::v1::IndicatorKind::Domain as i32,
            value: "evil.example".into(),
            valid_from_unix_ms: now - 1000,
            ..Default::default()
        };
        bytes(&key.seal(
            threatmesh::signing::INDICATOR_PAYLOAD_TYPE,
            prost::Message::encode_to_vec(&ind),
        ))
    };
    let rogue = RogueUpstream::start(&a, &[&b], vec![v(2), v(1)]).await;
    b.add_peer(&a, Some(rogue.addr)).await;
    let node_b = start(&b).await;
    let (store, a_id) = (node_b.ctx.store.clone(), a.id.clone());
    wait_until(30, "B to consider both", || {
        let (s, a_id) = (store.clone(), a_id.clone());
        async move { s.cursor(&a_id).await.unwrap() == 2 }
    })
    .await;
    let rows = node_b.ctx.store.indicators(None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].version, 2);
    let rej = node_b.ctx.store.rejections().await.unwrap();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].code, "FailedPrecondition");
    assert!(rej[0].reason.contains("rollback"), "{}", rej[0].reason);
    assert_eq!(rej[0].upstream_seq, 2);
    node_b.stop().await;
}
