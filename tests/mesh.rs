//! Five real nodes in a line, a ring and a full mesh: every indicator
//! reaches exactly the nodes its signed marking and the policies allow,
//! relayed hop by hop with the origin's envelope untouched, stored exactly
//! once each, and the traffic stops (loops are harmless).

mod common;

use std::collections::BTreeMap;

use common::*;
use threatmesh::proto::v1::{IndicatorDraft, Marking, Tlp};
use threatmesh::refusal::RefusalKind;

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
    // Quiet, proven by the ledger rather than by waiting: a marker published
    // after settling goes all the way round; while it does, every node's
    // `sent` rows (each release is recorded before it is sent) name only the
    // marker — nothing older is still circulating.
    let mut ledger_len = Vec::new();
    for n in &mesh.nodes {
        ledger_len.push(n.ctx.store.count_audit().await.unwrap());
    }
    let marker = publish_all(
        &publisher(&mesh.orgs[A], &mesh.nodes[A]),
        vec![marked(99, Tlp::Clear, &[], true, 8)],
        1,
    )
    .await;
    let marker = &marker[0].id;
    mesh.settle().await;
    for (i, n) in mesh.nodes.iter().enumerate() {
        assert!(
            n.ctx.store.indicator_by_id(marker).await.unwrap().is_some(),
            "the marker did not reach {}",
            NAMES[i]
        );
        let rows = n.ctx.store.audit_rows(None, None).await.unwrap();
        for r in rows.iter().filter(|r| r.seq > ledger_len[i]) {
            if r.entry.event == "sent" {
                assert!(
                    r.entry
                        .subject
                        .split(' ')
                        .all(|s| s.contains(marker.as_str())),
                    "{} still sending older indicators: {:?}",
                    NAMES[i],
                    r.entry
                );
            }
        }
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
        && r.entry.subject.contains("#2")));
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
        let now = common::now_ms();
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
    considered(&node_b, &a.id, 2).await;
    let rows = node_b.ctx.store.indicators(None).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].version, 2);
    let rej = node_b.ctx.store.rejections().await.unwrap();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].kind, RefusalKind::Rollback);
    assert!(rej[0].reason.contains("rollback"), "{}", rej[0].reason);
    assert_eq!(rej[0].upstream_seq, 2);
    node_b.stop().await;
}

/// Publishes `n` relayable indicators at `node` (numbered from `first`).
async fn publish_many(org: &Org, node: &RunningNode, first: u32, n: u32) -> Vec<String> {
    let drafts = (first..first + n)
        .map(|i| marked(i, Tlp::Clear, &[], true, 8))
        .collect();
    publish_all(&publisher(org, node), drafts, 8)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_with_nothing_lost_and_nothing_twice() {
    let mesh = Mesh::start_with(
        &NAMES,
        &[(A, B), (B, C), (C, D), (D, E)],
        RELAY_POLICY,
        true,
        &[(B, C)],
    )
    .await;
    let (a, node_a) = (&mesh.orgs[A], &mesh.nodes[A]);
    let mut all = publish_many(a, node_a, 0, 20).await;
    mesh.settle().await;

    // Cut B–C (both directions) while A keeps publishing.
    mesh.partition(true);
    let (node_c, b_id) = (&mesh.nodes[C], &mesh.orgs[B].id);
    wait_until(10, "C's link to B to notice the cut", || async move {
        node_c
            .ctx
            .links
            .snapshot()
            .get(b_id)
            .is_some_and(|h| h.state != threatmesh::federation::LinkState::Connected)
    })
    .await;
    all.extend(publish_many(a, node_a, 100, 30).await);
    let node_b = &mesh.nodes[B];
    wait_until(30, "B to hold all 50", || async move {
        ids_at(node_b).await.len() == 50
    })
    .await;
    for n in &mesh.nodes[C..] {
        assert_eq!(ids_at(n).await.len(), 20, "nothing crosses the cut");
    }

    mesh.partition(false);
    mesh.settle().await;
    let want: std::collections::BTreeSet<String> = all.into_iter().collect();
    for (i, n) in mesh.nodes.iter().enumerate() {
        let rows = n.ctx.store.indicators(None).await.unwrap();
        assert_eq!(rows.len(), 50, "{}: each of the 50 exactly once", NAMES[i]);
        assert_eq!(ids_at(n).await, want, "{}", NAMES[i]);
        assert_eq!(n.ctx.store.count_rejections().await.unwrap(), 0);
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_forge_an_origin_or_downgrade_a_marking() {
    // D subscribes to C, which turns hostile; D knows A's card.
    let a = Org::new("a.example");
    let c = Org::new("c.example");
    let d = Org::new("d.example");
    let a_key = a.signing_key();
    let c_key = c.signing_key();
    let now = common::now_ms();
    let indicator = |origin: &str, key: &threatmesh::signing::OrgSigningKey, value: &str, tlp| {
        hand_made(origin, key, value, tlp, now)
    };
    let seal = seal_indicator;
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // 1: claims origin A, signed by C.
    let forged = seal(
        &c_key,
        &indicator("a.example", &c_key, "forged.example", Tlp::Green),
    );
    // 2: A's genuine GREEN envelope, payload re-encoded by C as CLEAR.
    let genuine = indicator("a.example", &a_key, "green.example", Tlp::Green);
    let mut downgraded = seal(&a_key, &genuine);
    let mut lowered = genuine.clone();
    lowered.marking.as_mut().unwrap().tlp = Tlp::Clear as i32;
    downgraded.payload = prost::Message::encode_to_vec(&lowered);
    // 3 and 4: valid traffic: C's own, and A's genuine envelope relayed.
    let own = seal(
        &c_key,
        &indicator("c.example", &c_key, "own.example", Tlp::Clear),
    );
    let relayed = seal(&a_key, &genuine);
    let rogue = RogueUpstream::start_with_paths(
        &c,
        &[&d],
        vec![
            (bytes(&forged), path(&["a.example", "c.example"])),
            (bytes(&downgraded), path(&["a.example", "c.example"])),
            (bytes(&own), path(&["c.example"])),
            (bytes(&relayed), path(&["a.example", "c.example"])),
        ],
    )
    .await;
    d.add_card(&a.card(), None, None).await;
    let name = d.apply_policy(RELAY_POLICY).await;
    d.add_card(&c.card(), Some(rogue.addr), Some(&name)).await;
    let node_d = start(&d).await;
    let store = node_d.ctx.store.clone();
    considered(&node_d, &c.id, 4).await;

    let rej = store.rejections().await.unwrap();
    let seen = refusals(&node_d).await;
    assert_eq!(
        seen,
        [(1, RefusalKind::Unauthentic), (2, RefusalKind::Unauthentic)],
        "{rej:#?}"
    );
    assert!(
        rej[0]
            .reason
            .contains("claims origin a.example but is signed by a key of c.example"),
        "{}",
        rej[0].reason
    );
    assert!(
        rej[1].reason.contains("does not match the payload"),
        "{}",
        rej[1].reason
    );
    // On D's ledger, and C's valid traffic went on.
    let ledger = store.audit_rows(Some("c.example"), None).await.unwrap();
    assert_eq!(
        ledger
            .iter()
            .filter(|r| r.entry.event == "rejected")
            .count(),
        2
    );
    let stored = store.indicators(None).await.unwrap();
    let envs: Vec<&prost::bytes::Bytes> = stored.iter().map(|r| &r.envelope).collect();
    assert_eq!(envs, [&bytes(&own), &bytes(&relayed)]);
    assert_eq!(stored[1].path, ["a.example", "c.example"]);
    assert_eq!(
        node_d.ctx.links.snapshot()[&c.id].state,
        threatmesh::federation::LinkState::Connected
    );
    node_d.stop().await;
}

fn json_lines(o: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_origin_waits_in_quarantine_until_its_card_is_approved() {
    // Line A–B–C; B is not an introducer for C.
    let mesh = Mesh::start_with(&NAMES[..3], &[(A, B), (B, C)], RELAY_POLICY, false, &[]).await;
    let (a, c) = (&mesh.orgs[A], &mesh.orgs[C]);
    let (node_a, node_c) = (&mesh.nodes[A], &mesh.nodes[C]);
    let first = publish_many(a, node_a, 0, 3).await;
    mesh.settle().await;
    assert!(
        ids_at(node_c).await.is_empty(),
        "nothing unverified is stored"
    );

    // Visible in the CLI: the quarantine, the pending card, the status.
    let q = json_lines(&cli(c, node_c, &["quarantine", "--json"]));
    assert_eq!(q.len(), 3);
    let a_key = a.signing_key().key_id().to_string();
    for e in &q {
        assert_eq!(e["upstream"], "b.example");
        assert_eq!(e["key_id"], a_key.as_str());
        assert_eq!(e["path"], serde_json::json!(["a.example", "b.example"]));
    }
    let cards = json_lines(&cli(c, node_c, &["peer", "cards", "--json"]));
    assert_eq!(cards.len(), 1);
    assert_eq!(
        (cards[0]["org"].as_str(), cards[0]["state"].as_str()),
        (Some("a.example"), Some("pending"))
    );
    let status = json_lines(&cli(c, node_c, &["status", "--json"]));
    assert_eq!(status[0]["quarantined"], 3);

    // Approved: verified and released at once, then new ones flow.
    let o = cli(c, node_c, &["peer", "approve-card", "a.example"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let want: std::collections::BTreeSet<String> = first.iter().cloned().collect();
    assert_eq!(ids_at(node_c).await, want);
    assert!(node_c.ctx.store.quarantine().await.unwrap().is_empty());
    let later = publish_many(a, node_a, 10, 1).await;
    mesh.settle().await;
    assert!(ids_at(node_c).await.contains(&later[0]));
    let ledger = node_c
        .ctx
        .store
        .audit_rows(Some("a.example"), None)
        .await
        .unwrap();
    assert!(
        ledger.iter().any(|r| r.entry.event == "card-accepted"
            && r.entry.actor == "spiffe://c.example/admin/admin")
    );
    mesh.stop().await;
}

/// C's node runs on an anchored clock with the default quarantine time (7
/// days); the test moves it past that on tokio's paused clock, and C's own
/// refresh tick drops what waited. (Current-thread runtime: time can only be
/// paused there.)
#[tokio::test]
async fn quarantined_indicators_are_dropped_with_a_ledger_row_when_no_card_comes() {
    let mut orgs_ttl =
        Mesh::start_with(&NAMES[..3], &[(A, B), (B, C)], RELAY_POLICY, false, &[]).await;
    // Restart C on a clock the test can move.
    let node_c = orgs_ttl.nodes.pop().unwrap();
    node_c.stop().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let clock = threatmesh::clock::Clock::anchored(now_ms());
    let node_c = start_with_clock(&orgs_ttl.orgs[C], listener, clock).await;
    publish_many(&orgs_ttl.orgs[A], &orgs_ttl.nodes[A], 0, 2).await;
    let store = node_c.ctx.store.clone();
    wait_until(30, "two quarantined", || {
        let s = store.clone();
        async move { s.quarantine().await.unwrap().len() == 2 }
    })
    .await;
    let ttl = orgs_ttl.orgs[C].settings.federation.quarantine_ttl_ms;
    assert_eq!(ttl, 7 * 24 * 3_600_000, "the default");
    // Just short of the quarantine time: nothing is dropped by C's ticks.
    let advance = |ms: u64| async move {
        tokio::time::pause();
        tokio::time::advance(std::time::Duration::from_millis(ms)).await;
        tokio::time::resume();
    };
    advance(ttl - 60_000).await;
    threatmesh::federation::quarantine::expire(&node_c.ctx)
        .await
        .unwrap();
    assert_eq!(store.quarantine().await.unwrap().len(), 2);
    // Past it: C's next refresh tick drops both, each with a ledger row.
    advance(120_000).await;
    wait_until(30, "both dropped", || {
        let s = store.clone();
        async move {
            let rows = s.audit_rows(Some("b.example"), None).await.unwrap();
            rows.iter()
                .filter(|r| r.entry.event == "quarantine-expired")
                .count()
                == 2
        }
    })
    .await;
    assert!(store.quarantine().await.unwrap().is_empty());
    assert!(store.indicators(None).await.unwrap().is_empty());
    node_c.stop().await;
    orgs_ttl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_key_rotation_mid_stream_and_the_old_keys_revocation() {
    let mesh = Mesh::start(&NAMES[..3], &[(A, B), (B, C)], RELAY_POLICY).await;
    let (a, node_a, node_c) = (&mesh.orgs[A], &mesh.nodes[A], &mesh.nodes[C]);
    let old_key = a.signing_key();
    let before = publish_many(a, node_a, 0, 2).await;

    // Rotate while indicators flow.
    let o = cli(a, node_a, &["keys", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = publish_many(a, node_a, 10, 2).await;
    assert_ne!(
        a.signing_key().key_id(),
        old_key.key_id(),
        "signing.key replaced"
    );
    mesh.settle().await;
    for n in &mesh.nodes[B..] {
        let ids = ids_at(n).await;
        for id in before.iter().chain(&after) {
            assert!(
                ids.contains(id),
                "old and new indicators verify downstream: {id} missing at {}; quarantine {:?}; rejections {:?}",
                n.ctx.own,
                n.ctx
                    .store
                    .quarantine()
                    .await
                    .unwrap()
                    .iter()
                    .map(|q| (q.upstream.to_string(), q.held.key_id.clone()))
                    .collect::<Vec<_>>(),
                n.ctx.store.rejections().await.unwrap(),
            );
        }
    }
    // C took A's new card through B: both keys, the old one retired.
    let old_at_c = node_c
        .ctx
        .view
        .load()
        .keys
        .get(old_key.key_id())
        .cloned()
        .unwrap();
    assert!(old_at_c.not_after_ms > 0 && !old_at_c.revoked);
    assert!(
        node_c
            .ctx
            .view
            .load()
            .keys
            .get(a.signing_key().key_id())
            .is_some()
    );

    // Revoke the old key; the next card carries it to C.
    let o = cli(a, node_a, &["keys", "revoke", old_key.key_id()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("revoked"));
    publish_many(a, node_a, 20, 1).await;
    mesh.settle().await;
    assert!(
        node_c
            .ctx
            .view
            .load()
            .keys
            .get(old_key.key_id())
            .unwrap()
            .revoked
    );

    // An indicator under the old key, dated before the rotation, relayed to
    // C by a new partner R: refused.
    let r = Org::new("r.example");
    let now = common::now_ms();
    let stale = hand_made(
        "a.example",
        &old_key,
        "backdated.example",
        Tlp::Clear,
        now - 3_600_000,
    );
    let env = seal_indicator(&old_key, &stale);
    let rogue = RogueUpstream::start_with_paths(
        &r,
        &[&mesh.orgs[C]],
        vec![(bytes(&env), vec!["a.example".into(), "r.example".into()])],
    )
    .await;
    let c = &mesh.orgs[C];
    let name = c.apply_policy(RELAY_POLICY).await;
    c.add_card(&r.card(), Some(rogue.addr), Some(&name)).await;
    let store = node_c.ctx.store.clone();
    considered(node_c, &r.id, 1).await;
    let rej = store.rejections().await.unwrap();
    assert_eq!(rej.len(), 1);
    assert_eq!(rej[0].kind, RefusalKind::Unauthentic);
    assert!(
        rej[0].reason.contains("has been revoked"),
        "{}",
        rej[0].reason
    );
    assert!(!ids_at(node_c).await.contains(&stale.id));
    mesh.stop().await;
}

/// The compromise case: A rotates and at once revokes its old key, with
/// nothing published in between, so B never sees the rotation card. A's
/// next card (signed by the new key) must still be taken, the stolen key
/// must be refused whatever its timestamp and whoever relays it, and A's new
/// indicators must flow; replaying the intermediate card changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_right_after_its_rotation_is_refused_by_partners_that_missed_the_rotation() {
    let mesh = Mesh::start(&NAMES[..2], &[(A, B)], RELAY_POLICY).await;
    let (a, b) = (&mesh.orgs[A], &mesh.orgs[B]);
    let (node_a, node_b) = (&mesh.nodes[A], &mesh.nodes[B]);
    let stolen = a.signing_key();
    publish_many(a, node_a, 0, 1).await;
    mesh.settle().await;

    let o = cli(a, node_a, &["keys", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rotation_card = node_a.ctx.card.load().as_ref().clone();
    let o = cli(a, node_a, &["keys", "revoke", stolen.key_id()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = publish_many(a, node_a, 10, 2).await;
    mesh.settle().await;

    // B took the newest card and stored the new indicators.
    let view = node_b.ctx.view.load();
    let old = view.keys.get(stolen.key_id()).expect("old key known");
    assert!(old.revoked, "the stolen key is revoked at B");
    assert!(view.keys.get(a.signing_key().key_id()).is_some());
    let ids = ids_at(node_b).await;
    for id in &after {
        assert!(ids.contains(id), "{id} not stored at B");
    }
    assert!(node_b.ctx.store.quarantine().await.unwrap().is_empty());

    // The intermediate card, replayed, does not bring the stolen key back.
    threatmesh::federation::cards::learn_cards(&node_b.ctx, &[rotation_card], &a.id)
        .await
        .unwrap();
    threatmesh::federation::apply_trust_change(&node_b.ctx)
        .await
        .unwrap();
    assert!(
        node_b
            .ctx
            .view
            .load()
            .keys
            .get(stolen.key_id())
            .unwrap()
            .revoked
    );

    // A back-dated forgery under the stolen key, relayed by R: refused.
    let r = Org::new("r.example");
    let forged = hand_made(
        "a.example",
        &stolen,
        "forged-by-thief.example",
        Tlp::Clear,
        common::now_ms() - 3_600_000,
    );
    let rogue = RogueUpstream::start_with_paths(
        &r,
        &[b],
        vec![(
            bytes(&seal_indicator(&stolen, &forged)),
            vec!["a.example".into(), "r.example".into()],
        )],
    )
    .await;
    let name = b.apply_policy(RELAY_POLICY).await;
    b.add_card(&r.card(), Some(rogue.addr), Some(&name)).await;
    let store = node_b.ctx.store.clone();
    considered(node_b, &r.id, 1).await;
    let rej = store.rejections().await.unwrap();
    assert_eq!(rej.len(), 1, "{rej:#?}");
    assert_eq!(rej[0].kind, RefusalKind::Unauthentic);
    assert!(
        rej[0].reason.contains("has been revoked"),
        "{}",
        rej[0].reason
    );
    assert!(!ids_at(node_b).await.contains(&forged.id));
    drop(rogue);
    mesh.stop().await;
}
