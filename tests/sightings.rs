//! Sightings: reports that an indicator was seen travel back to its origin
//! along the partners that delivered it, only where each hop's policy
//! allows, signed by the sighter; partners' reports are verified, checked
//! against what we sent them, deduplicated and bounded.

mod common;

use common::*;
use prost::Message;
use threatmesh::model::window_of;
use threatmesh::proto::v1::{
    Envelope, ListSightingsRequest, Marking, PublishRequest, ReportSightingsRequest, SightRequest,
    Sighting, Tlp,
};
use threatmesh::signing::{OrgSigningKey, SIGHTING_PAYLOAD_TYPE};
use threatmesh::store::SightingRow;
use tonic::Code;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const E: usize = 4;

/// Relays everything and passes sightings on.
const SIGHTINGS_POLICY: &str = "name = \"relay-sightings\"\n[egress]\ntlp_ceiling = \"RED\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n[sightings]\nsend = true\nrelay = true\naccept = true\n";

/// As [`SIGHTINGS_POLICY`], but sightings of other orgs are not relayed.
const NO_RELAY_POLICY: &str = "name = \"no-sighting-relay\"\n[egress]\ntlp_ceiling = \"RED\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n[sightings]\nsend = true\nrelay = false\naccept = true\n";

/// As [`SIGHTINGS_POLICY`], accepting no sightings.
const NO_ACCEPT_POLICY: &str = "name = \"no-sightings-in\"\n[egress]\ntlp_ceiling = \"RED\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n[sightings]\nsend = true\nrelay = true\n";

async fn publish_one(org: &Org, node: &RunningNode, i: u32) -> String {
    let mut d = ipv4_draft(i, Tlp::Clear);
    d.marking = Some(Marking {
        tlp: Tlp::Clear as i32,
        recipients: Vec::new(),
        may_forward: true,
        hop_limit: 8,
    });
    publisher(org, node)
        .publish(PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

async fn sight(org: &Org, node: &RunningNode, origin: &Org, id: &str, count: u64) {
    publisher(org, node)
        .sight(SightRequest {
            indicator_origin: origin.id.to_string(),
            indicator_id: id.into(),
            count,
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn sightings(node: &RunningNode, id: &str) -> Vec<SightingRow> {
    node.ctx.store.sightings_of(None, id).await.unwrap()
}

/// Waits until `node` holds a sighting of `id` by `sighter` with `count`.
async fn holds(node: &RunningNode, id: &str, sighter: &Org, count: u64) {
    let what = format!(
        "{} to hold {}'s sighting of {id} with count {count}",
        node.ctx.own, sighter.id
    );
    let sighter = sighter.id.to_string();
    wait_until(60, &what, || {
        let sighter = sighter.clone();
        async move {
            sightings(node, id)
                .await
                .iter()
                .any(|s| s.sighter == sighter && s.count == count)
        }
    })
    .await;
}

/// The first ledger row of `event` about `partner` naming `sighter`'s
/// sighting.
async fn find_row(
    node: &RunningNode,
    partner: &str,
    event: &str,
    sighter: &str,
) -> Option<threatmesh::audit::AuditRow> {
    let needle = format!("{sighter} saw");
    ledger(node, partner)
        .await
        .into_iter()
        .find(|r| r.entry.event == event && r.entry.subject.starts_with(&needle))
}

/// Waits for a ledger row of `event` about `partner` naming `sighter`.
async fn ledger_row(
    node: &RunningNode,
    partner: &Org,
    event: &str,
    sighter: &Org,
) -> threatmesh::audit::AuditRow {
    let (partner, sighter) = (partner.id.to_string(), sighter.id.to_string());
    let what = format!(
        "{} to record {event} of {sighter}'s sighting for {partner}",
        node.ctx.own
    );
    wait_until(60, &what, || {
        let (partner, sighter) = (partner.clone(), sighter.clone());
        async move { find_row(node, &partner, event, &sighter).await.is_some() }
    })
    .await;
    find_row(node, &partner, event, &sighter).await.unwrap()
}

/// Five nodes: A-B, A-C, B-D, C-E. An indicator published at A reaches D
/// through B and E through C. D's sighting goes back D > B > A; E's stops
/// at C, whose policy for A relays no sightings of others — until C's
/// operator allows it, when E's next report of the day reaches A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sightings_reach_the_origin_through_each_hop_that_allows_it_and_stop_where_one_denies() {
    let mesh = Mesh::start_with_policies(
        &[
            "a.example",
            "b.example",
            "c.example",
            "d.example",
            "e.example",
        ],
        &[(A, B), (A, C), (B, D), (C, E)],
        &|org, partner| {
            if org == C && partner == A {
                NO_RELAY_POLICY.to_string()
            } else {
                SIGHTINGS_POLICY.to_string()
            }
        },
    )
    .await;
    let (o, n) = (&mesh.orgs, &mesh.nodes);
    let id = publish_one(&o[A], &n[A], 1).await;
    mesh.settle().await;
    for x in [B, C, D, E] {
        assert!(ids_at(&n[x]).await.contains(&id), "{} lacks {id}", o[x].id);
    }
    sight(&o[D], &n[D], &o[A], &id, 2).await;
    sight(&o[D], &n[D], &o[A], &id, 1).await;
    sight(&o[E], &n[E], &o[A], &id, 5).await;

    // D's report (2 + 1 = 3 that day) reaches A through B, with its path.
    holds(&n[A], &id, &o[D], 3).await;
    let at_a = sightings(&n[A], &id).await;
    let d_at_a = at_a.iter().find(|s| s.sighter == "d.example").unwrap();
    assert_eq!(d_at_a.received_from, "b.example");
    assert_eq!(d_at_a.path.0, ["d.example", "b.example"]);
    assert_eq!(d_at_a.window_ms, window_of(d_at_a.first_seen_ms));
    let sent = ledger_row(&n[D], &o[B], "sighting-sent", &o[D]).await;
    assert_eq!(sent.entry.rule, "sightings-send");
    ledger_row(&n[B], &o[D], "sighting-accepted", &o[D]).await;
    let relayed = ledger_row(&n[B], &o[A], "sighting-sent", &o[D]).await;
    assert_eq!(relayed.entry.rule, "sightings-relay");
    let accepted = ledger_row(&n[A], &o[B], "sighting-accepted", &o[D]).await;
    assert!(
        accepted.entry.detail.contains("d.example > b.example"),
        "{accepted:?}"
    );

    // E's stops at C: C holds it, withholds it from A under the rule.
    holds(&n[C], &id, &o[E], 5).await;
    let withheld = ledger_row(&n[C], &o[A], "sighting-withheld", &o[E]).await;
    assert_eq!(withheld.entry.rule, "sightings-relay-off");
    assert!(
        withheld.entry.detail.contains("[sightings] relay = false"),
        "{withheld:?}"
    );
    assert!(
        !sightings(&n[A], &id)
            .await
            .iter()
            .any(|s| s.sighter == "e.example"),
        "E's sighting reached A although C's policy relays none"
    );
    // Nothing of it waits to go either: the decision is final for that report.
    let waiting = n[C].ctx.store.sighting_outbox_counts().await.unwrap();
    assert_eq!(waiting.get("a.example"), None, "{waiting:?}");

    // C's operator allows relaying; E's next report of the day (5 + 1)
    // goes all the way.
    // (C already holds that policy: it binds E by it.)
    admin(&o[C], &n[C])
        .update_peer(threatmesh::proto::v1::UpdatePeerRequest {
            org: "a.example".into(),
            policy: Some("relay-sightings".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    sight(&o[E], &n[E], &o[A], &id, 1).await;
    holds(&n[A], &id, &o[E], 6).await;
    let e_at_a = sightings(&n[A], &id).await;
    let e_at_a = e_at_a.iter().find(|s| s.sighter == "e.example").unwrap();
    assert_eq!(e_at_a.path.0, ["e.example", "c.example"]);

    // The origin's view: lookup, the CLI and the Admin API add them up.
    let looked = admin(&o[A], &n[A])
        .lookup(threatmesh::proto::v1::LookupRequest {
            value: "10.0.0.1".into(),
            kind: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let by_lookup: u64 = looked
        .sightings
        .iter()
        .filter_map(|r| r.sighting.as_ref().map(|s| s.count))
        .sum();
    assert_eq!(by_lookup, 9);
    let total = admin(&o[A], &n[A])
        .list_sightings(ListSightingsRequest {
            indicator_id: id.clone(),
            indicator_origin: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .total;
    assert_eq!(total, 9);
    let out = cli(&o[A], &n[A], &["sightings", &id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 9);
    assert_eq!(v["sightings"].as_array().unwrap().len(), 2);
    // A's STIX export: a `sighting` of the indicator per sighter and day,
    // by the sighter's identity, with its signed report; a partner's view
    // carries none.
    let out = cli(&o[A], &n[A], &["export", "--format", "stix"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let objects = bundle["objects"].as_array().unwrap();
    let of_type = |t: &str| -> Vec<&serde_json::Value> {
        objects.iter().filter(|o| o["type"] == t).collect()
    };
    let mut seen: Vec<(String, u64)> = of_type("sighting")
        .iter()
        .map(|s| {
            assert_eq!(s["sighting_of_ref"], format!("indicator--{id}"));
            assert!(s["x_threatmesh_envelope"]["signatures"].is_array(), "{s}");
            let by = s["where_sighted_refs"][0].as_str().unwrap().to_string();
            (by, s["count"].as_u64().unwrap())
        })
        .collect();
    seen.sort();
    let identity = |org: &str| threatmesh::interop::stix::identity_id(org);
    let mut want = vec![(identity("d.example"), 3), (identity("e.example"), 6)];
    want.sort();
    assert_eq!(seen, want);
    let identities: Vec<_> = of_type("identity")
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    for (by, _) in &want {
        assert!(
            identities.contains(&serde_json::Value::from(by.as_str())),
            "{by}"
        );
    }
    let out = cli(
        &o[A],
        &n[A],
        &["export", "--format", "stix", "--partner", "b.example"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("\"sighting\""));
    for x in [A, B, C, D, E] {
        let v = n[x].ctx.store.verify_audit().await.unwrap();
        assert!(v.is_ok(), "{} ledger: {v:?}", o[x].id);
    }
    mesh.stop().await;
}

/// A and B, B subscribed to A and holding A's indicator; B's node calls A's
/// ReportSightings directly, as a hostile partner could.
struct Pair {
    a: Org,
    b: Org,
    node_a: RunningNode,
    node_b: RunningNode,
    id: String,
}

async fn pair_with(a: Org, policy_at_a: &str) -> Pair {
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, policy_at_a).await;
    let node_a = start(&a).await;
    b.add_peer_with(&a, Some(node_a.addr), SIGHTINGS_POLICY)
        .await;
    let node_b = start(&b).await;
    let id = publish_one(&a, &node_a, 1).await;
    caught_up(&node_b, &a, &node_a).await;
    Pair {
        a,
        b,
        node_a,
        node_b,
        id,
    }
}

impl Pair {
    /// A report of `id` signed by `key` (`signer`'s key id), naming `sighter`.
    fn report(&self, key: &OrgSigningKey, sighter: &str, id: &str, count: u64) -> Sighting {
        let now = now_ms();
        Sighting {
            sighter_org: sighter.into(),
            key_id: key.key_id().into(),
            indicator_origin: "a.example".into(),
            indicator_id: id.into(),
            indicator_version: 1,
            count,
            first_seen_unix_ms: now - 1,
            last_seen_unix_ms: now - 1,
            window_start_unix_ms: window_of(now - 1),
            reported_unix_ms: now,
            sector: String::new(),
            country: String::new(),
        }
    }

    async fn send(
        &self,
        reports: Vec<(Envelope, Vec<&str>)>,
    ) -> Result<Vec<(Code, String, bool)>, tonic::Status> {
        let mut client = exchange_as(&self.a, &self.node_a, &self.b.node_cert());
        let r = client
            .report_sightings(ReportSightingsRequest {
                reports: signed_reports(reports),
                cards: Vec::new(),
            })
            .await?;
        Ok(outcomes(r.into_inner().outcomes))
    }

    async fn held_at_a(&self) -> Vec<SightingRow> {
        sightings(&self.node_a, &self.id).await
    }

    async fn stop(self) {
        self.node_b.stop().await;
        self.node_a.stop().await;
    }
}

fn seal(key: &OrgSigningKey, s: &Sighting) -> Envelope {
    key.seal(SIGHTING_PAYLOAD_TYPE, s.encode_to_vec())
}

#[tokio::test]
async fn a_forged_sighting_is_refused_unauthenticated_and_nothing_is_kept() {
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    let key = p.b.signing_key();
    // B signs a report that claims D saw it.
    let forged = seal(&key, &p.report(&key, "d.example", &p.id, 7));
    // A report whose signature does not match its bytes.
    let mut tampered = seal(&key, &p.report(&key, "b.example", &p.id, 7));
    tampered.payload[5] ^= 1;
    // One signed by a key A has never seen.
    let (stranger, _) = OrgSigningKey::generate().unwrap();
    let unknown = seal(&stranger, &p.report(&stranger, "b.example", &p.id, 7));
    let out = p
        .send(vec![
            (forged, vec!["d.example", "b.example"]),
            (tampered, vec!["b.example"]),
            (unknown, vec!["b.example"]),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::Unauthenticated, "{out:?}");
    assert!(out[0].1.contains("signed by a key of b.example"), "{out:?}");
    assert_eq!(out[1].0, Code::Unauthenticated, "{out:?}");
    assert_eq!(out[2].0, Code::FailedPrecondition, "{out:?}");
    assert!(out.iter().all(|o| !o.2));
    assert!(p.held_at_a().await.is_empty());
    let refused: Vec<_> = ledger(&p.node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "sighting-refused")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert_eq!(refused[0].entry.rule, "UNAUTHENTICATED");
    p.stop().await;
}

#[tokio::test]
async fn an_oversized_or_malformed_report_is_refused_invalid_and_nothing_is_kept() {
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    let key = p.b.signing_key();
    let mut big = p.report(&key, "b.example", &p.id, 1);
    big.sector = "x".repeat(3000);
    let big = seal(&key, &big);
    let mut day_off = p.report(&key, "b.example", &p.id, 1);
    day_off.window_start_unix_ms -= threatmesh::model::DAY_MS;
    let day_off = seal(&key, &day_off);
    let good = seal(&key, &p.report(&key, "b.example", &p.id, 1));
    let out = p
        .send(vec![
            (big, vec!["b.example"]),
            (day_off, vec!["b.example"]),
            (good.clone(), vec!["c.example", "b.example"]),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::InvalidArgument, "{out:?}");
    assert!(out[0].1.contains("2048-byte limit"), "{out:?}");
    assert_eq!(out[1].0, Code::InvalidArgument, "{out:?}");
    assert!(out[1].1.contains("window_start_unix_ms"), "{out:?}");
    assert_eq!(out[2].0, Code::InvalidArgument, "{out:?}");
    assert!(
        out[2].1.contains("path: must start at the signer"),
        "{out:?}"
    );
    // Too many in one request: the whole request is refused.
    let many = vec![(good, vec!["b.example"]); 501];
    let status = p.send(many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("at most 500"), "{status:?}");
    assert!(p.held_at_a().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_report_of_an_indicator_never_sent_to_the_partner_is_not_found_whether_or_not_we_hold_it()
{
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    // An indicator A holds but sent only to another org (RED for c.example).
    let mut red = ipv4_draft(9, Tlp::Red);
    red.marking = Some(Marking {
        tlp: Tlp::Red as i32,
        recipients: vec!["c.example".into()],
        may_forward: false,
        hop_limit: 0,
    });
    let red_id = publisher(&p.a, &p.node_a)
        .publish(PublishRequest {
            indicator: Some(red),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let key = p.b.signing_key();
    let unknown = uuid::Uuid::new_v4().to_string();
    let out = p
        .send(vec![
            (
                seal(&key, &p.report(&key, "b.example", &unknown, 1)),
                vec!["b.example"],
            ),
            (
                seal(&key, &p.report(&key, "b.example", &red_id, 1)),
                vec!["b.example"],
            ),
        ])
        .await
        .unwrap();
    for (code, why, _) in &out {
        assert_eq!(*code, Code::NotFound, "{out:?}");
        assert!(why.contains("never sent b.example indicator"), "{why}");
    }
    assert!(sightings(&p.node_a, &unknown).await.is_empty());
    assert!(sightings(&p.node_a, &red_id).await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn a_replayed_report_changes_nothing_and_an_older_one_does_not_replace_a_newer() {
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    let key = p.b.signing_key();
    let first = p.report(&key, "b.example", &p.id, 4);
    let mut newer = first.clone();
    newer.count = 9;
    newer.reported_unix_ms += 1;
    let (first, newer) = (seal(&key, &first), seal(&key, &newer));
    let path = || vec!["b.example"];
    let out = p.send(vec![(first.clone(), path())]).await.unwrap();
    assert_eq!((out[0].0, out[0].2), (Code::Ok, true), "{out:?}");
    let out = p.send(vec![(first.clone(), path())]).await.unwrap();
    assert_eq!((out[0].0, out[0].2), (Code::Ok, false), "a replay: {out:?}");
    let held = p.held_at_a().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].count, 4, "a replay must not count twice");
    let out = p
        .send(vec![(newer, path()), (first, path())])
        .await
        .unwrap();
    assert_eq!((out[0].0, out[0].2), (Code::Ok, true), "{out:?}");
    assert_eq!((out[1].0, out[1].2), (Code::Ok, false), "{out:?}");
    let held = p.held_at_a().await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].count, 9, "the newer report of the day stands");
    let accepted = ledger(&p.node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "sighting-accepted")
        .count();
    assert_eq!(accepted, 2, "one row per report kept, none for replays");
    p.stop().await;
}

#[tokio::test]
async fn sightings_from_a_partner_whose_policy_accepts_none_are_permission_denied() {
    let p = pair_with(Org::new("a.example"), NO_ACCEPT_POLICY).await;
    let key = p.b.signing_key();
    let out = p
        .send(vec![(
            seal(&key, &p.report(&key, "b.example", &p.id, 1)),
            vec!["b.example"],
        )])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::PermissionDenied, "{out:?}");
    assert!(out[0].1.contains("[sightings] accept = false"), "{out:?}");
    assert!(p.held_at_a().await.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn what_one_partner_can_make_us_keep_is_bounded() {
    let mut a = Org::new("a.example");
    a.settings.federation.sightings_max_per_partner = 1;
    let p = pair_with(a, SIGHTINGS_POLICY).await;
    let key = p.b.signing_key();
    let today = p.report(&key, "b.example", &p.id, 1);
    let mut yesterday = today.clone();
    yesterday.first_seen_unix_ms -= threatmesh::model::DAY_MS;
    yesterday.last_seen_unix_ms = yesterday.first_seen_unix_ms;
    yesterday.window_start_unix_ms -= threatmesh::model::DAY_MS;
    let out = p
        .send(vec![
            (seal(&key, &today), vec!["b.example"]),
            (seal(&key, &yesterday), vec!["b.example"]),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::Ok, "{out:?}");
    assert_eq!(out[1].0, Code::ResourceExhausted, "{out:?}");
    assert!(
        out[1].1.contains("federation.sightings_max_per_partner"),
        "{out:?}"
    );
    assert_eq!(p.held_at_a().await.len(), 1);
    let over = ledger(&p.node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| {
            r.entry.rule == "limit-reached"
                && r.entry
                    .detail
                    .starts_with("federation.sightings_max_per_partner")
        })
        .count();
    assert_eq!(over, 1);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sight_names_the_field_at_fault_and_refuses_an_indicator_not_held() {
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    let mut client = publisher(&p.b, &p.node_b);
    let unknown = uuid::Uuid::new_v4().to_string();
    let e = client
        .sight(SightRequest {
            indicator_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("not held by b.example"), "{e:?}");
    let e = client
        .sight(SightRequest {
            indicator_id: p.id.clone(),
            country: "Germany".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("country:"), "{e:?}");
    // A partner's node may not use the publishers' RPC, nor a publisher
    // the partners' one.
    let e = exchange_as(&p.a, &p.node_a, &p.b.node_cert())
        .sight(SightRequest {
            indicator_id: p.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = publisher(&p.a, &p.node_a)
        .report_sightings(ReportSightingsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The CLI: B sights A's indicator by id alone; it reaches A.
    let out = cli(
        &p.b,
        &p.node_b,
        &["sight", &p.id, "--count", "3", "--country", "DE"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("b.example saw a.example/") && said.contains("3x"),
        "{said}"
    );
    holds(&p.node_a, &p.id, &p.b, 3).await;
    assert_eq!(p.held_at_a().await[0].country, "DE");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_reporting_over_its_request_rate_is_refused_resource_exhausted() {
    let mut a = Org::new("a.example");
    a.settings.limits.partner_requests_per_second = 1;
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, SIGHTINGS_POLICY).await;
    let node_a = start(&a).await;
    let as_b = exchange_as(&a, &node_a, &b.node_cert());
    refused_over_rate(|| {
        let mut c = as_b.clone();
        async move { c.report_sightings(ReportSightingsRequest::default()).await }
    })
    .await;
    node_a.stop().await;
}

/// B sights A's indicator while A is down: the signed report waits in B's
/// outbox (shown by `status`) and reaches A once A is back; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighting_made_while_the_origin_is_down_waits_and_arrives_when_it_is_back() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, SIGHTINGS_POLICY).await;
    let node_a = start(&a).await;
    b.add_peer_with(&a, Some(node_a.addr), SIGHTINGS_POLICY)
        .await;
    let node_b = start(&b).await;
    let id = publish_one(&a, &node_a, 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let addr = node_a.addr;
    node_a.stop().await;
    sight(&b, &node_b, &a, &id, 2).await;
    let waiting = || async {
        let s = admin(&b, &node_b)
            .status(threatmesh::proto::v1::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        let link = s.links.iter().find(|l| l.partner == "a.example").unwrap();
        (s.sightings_waiting, link.sightings_waiting)
    };
    assert_eq!(waiting().await, (1, 1));
    let node_a = start_on(&a, tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    holds(&node_a, &id, &b, 2).await;
    wait_until(60, "B's outbox to empty", || async {
        waiting().await == (0, 0)
    })
    .await;
    node_b.stop().await;
    node_a.stop().await;
}

/// Twenty sightings of one indicator reported at once all count (none
/// overwrites another), and a Sight retried under its idempotency key
/// counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sightings_all_count_and_a_retried_one_counts_once() {
    let p = pair_with(Org::new("a.example"), SIGHTINGS_POLICY).await;
    let at_once = (0..20).map(|_| {
        let mut c = publisher(&p.b, &p.node_b);
        let id = p.id.clone();
        async move {
            c.sight(SightRequest {
                indicator_id: id,
                ..Default::default()
            })
            .await
            .unwrap()
        }
    });
    futures_util::future::join_all(at_once).await;
    let own = |node: &RunningNode| {
        let id = p.id.clone();
        let store = node.ctx.store.clone();
        async move {
            store
                .sightings_of(None, &id)
                .await
                .unwrap()
                .into_iter()
                .find(|s| s.sighter == "b.example")
                .map(|s| s.count)
        }
    };
    assert_eq!(own(&p.node_b).await, Some(20));
    let req = SightRequest {
        indicator_id: p.id.clone(),
        count: 5,
        idempotency_key: "siem-alert-77".into(),
        ..Default::default()
    };
    let mut c = publisher(&p.b, &p.node_b);
    let first = c.sight(req.clone()).await.unwrap().into_inner();
    let again = c.sight(req.clone()).await.unwrap().into_inner();
    assert!(!first.replayed && again.replayed);
    let count = |r: &threatmesh::proto::v1::SightResponse| {
        r.sighting
            .as_ref()
            .unwrap()
            .sighting
            .as_ref()
            .unwrap()
            .count
    };
    assert_eq!((count(&first), count(&again)), (25, 25));
    let mut other = req.clone();
    other.count = 6;
    let e = c.sight(other).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message()
            .contains("idempotency_key: 'siem-alert-77' was used for another sighting"),
        "{e:?}"
    );
    assert_eq!(own(&p.node_b).await, Some(25));
    holds(&p.node_a, &p.id, &p.b, 25).await;
    p.stop().await;
}
