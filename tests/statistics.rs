//! Federated statistics: every node signs counts of what it published,
//! received and sighted; partners share and relay the reports where their
//! policies allow, and each node sums what it holds into a mesh-wide view
//! — without any indicator leaving where it may not.

mod common;

use common::*;
use prost::Message;
use threatmesh::config::Settings;
use threatmesh::proto::v1::{
    Envelope, IndicatorDraft, IndicatorKind, Marking, MeshStatisticsRequest,
    MeshStatisticsResponse, PublishRequest, ShareStatisticsRequest, StatisticsCell,
    StatisticsReport, Tlp,
};
use threatmesh::signing::{OrgSigningKey, STATISTICS_PAYLOAD_TYPE};
use threatmesh::statistics::tally::{Period, noise_bound};
use tonic::Code;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const D: usize = 3;
const E: usize = 4;
const NAMES: [&str; 5] = [
    "a.example",
    "b.example",
    "c.example",
    "d.example",
    "e.example",
];

/// Relays every indicator and every report; exact counts, no cell left out.
fn policy(name: &str, statistics: &str) -> String {
    format!(
        "name = \"{name}\"\n[egress]\ntlp_ceiling = \"RED\"\ncommunity = true\norigins = \"any\"\n\
         [ingress]\naccept_relayed = true\n[statistics]\n{statistics}\n"
    )
}

fn sharing() -> String {
    policy(
        "share-stats",
        "share = true\nrelay = true\naccept = true\nmin_count = 0",
    )
}

fn fast(s: &mut Settings) {
    s.federation.statistics_interval_ms = 100;
}

fn indicator(
    kind: IndicatorKind,
    value: &str,
    tlp: Tlp,
    tags: &[&str],
    places: &[&str],
) -> IndicatorDraft {
    let mut d = draft(kind, value, tlp, &[]);
    d.marking = Some(Marking {
        tlp: tlp as i32,
        recipients: Vec::new(),
        may_forward: true,
        hop_limit: 8,
    });
    d.tags = tags.iter().map(|s| s.to_string()).collect();
    d.jurisdictions = places.iter().map(|s| s.to_string()).collect();
    d
}

async fn publish(org: &Org, node: &RunningNode, drafts: Vec<IndicatorDraft>) {
    let mut p = publisher(org, node);
    for d in drafts {
        p.publish(PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn view(node: &RunningNode, by: &[&str]) -> MeshStatisticsResponse {
    threatmesh::statistics::mesh_view(
        &node.ctx,
        &MeshStatisticsRequest {
            period: "day".into(),
            since_unix_ms: 0,
            by: by.iter().map(|s| s.to_string()).collect(),
        },
    )
    .await
    .unwrap()
}

/// (count, contributors) of a cell of today's view; (0, []) when absent.
fn cell(v: &MeshStatisticsResponse, measure: &str, dim: &str, value: &str) -> (u64, Vec<String>) {
    v.rows
        .iter()
        .find(|r| r.measure == measure && r.dimension == dim && r.value == value)
        .map(|r| (r.count, r.contributors.clone()))
        .unwrap_or_default()
}

/// The known sets: A 2 ipv4 + 1 domain, B 1 ipv4, C 3 url, D 1 sha256,
/// E 2 domain — 10 indicators.
async fn publish_known_sets(orgs: &[Org], nodes: &[RunningNode]) {
    use IndicatorKind::*;
    let sets: [Vec<IndicatorDraft>; 5] = [
        vec![
            indicator(Ipv4, "192.0.2.1", Tlp::Clear, &["phishing"], &["DE"]),
            indicator(Ipv4, "192.0.2.2", Tlp::Clear, &["phishing"], &["DE"]),
            indicator(Domain, "a-phish.example", Tlp::Green, &["phishing"], &[]),
        ],
        vec![indicator(
            Ipv4,
            "198.51.100.1",
            Tlp::Clear,
            &["botnet"],
            &["FR"],
        )],
        vec![
            indicator(Url, "http://c.example/1", Tlp::Clear, &["phishing"], &[]),
            indicator(Url, "http://c.example/2", Tlp::Clear, &["phishing"], &[]),
            indicator(Url, "http://c.example/3", Tlp::Clear, &["phishing"], &[]),
        ],
        vec![indicator(Sha256, &"d".repeat(64), Tlp::Clear, &[], &["DE"])],
        vec![
            indicator(
                Domain,
                "e-bot.example",
                Tlp::Clear,
                &["botnet", "phishing"],
                &[],
            ),
            indicator(
                Domain,
                "e-bot2.example",
                Tlp::Clear,
                &["botnet", "phishing"],
                &[],
            ),
        ],
    ];
    for (i, set) in sets.into_iter().enumerate() {
        publish(&orgs[i], &nodes[i], set).await;
    }
}

/// Five nodes (A-B, A-C, B-D, C-E), each publishing a known set: every
/// node's view equals the totals worked out by hand, each report relayed
/// across the mesh to the nodes it never reached directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_at_every_node_equal_the_hand_computed_totals() {
    let mesh = Mesh::start_tuned(
        &NAMES,
        &[(A, B), (A, C), (B, D), (C, E)],
        &|_, _| sharing(),
        &fast,
    )
    .await;
    publish_known_sets(&mesh.orgs, &mesh.nodes).await;
    mesh.settle().await;
    // By hand: published 10 (A 3, B 1, C 3, D 1, E 2); kinds ipv4 3,
    // domain 3, url 3, sha256 1; CLEAR 9, GREEN 1; tags phishing 8
    // (A 3, C 3, E 2), botnet 3 (B 1, E 2); DE 3, FR 1. Each node receives
    // the 10 less its own: 40 received in all.
    let want: [(&str, &str, &str, u64); 12] = [
        ("published", "total", "", 10),
        ("published", "kind", "ipv4", 3),
        ("published", "kind", "domain", 3),
        ("published", "kind", "url", 3),
        ("published", "kind", "sha256", 1),
        ("published", "tlp", "CLEAR", 9),
        ("published", "tlp", "GREEN", 1),
        ("published", "tag", "phishing", 8),
        ("published", "tag", "botnet", 3),
        ("published", "jurisdiction", "DE", 3),
        ("published", "jurisdiction", "FR", 1),
        ("received", "total", "", 40),
    ];
    for (x, node) in mesh.nodes.iter().enumerate() {
        let what = format!("{}'s view to reach the hand-computed totals", NAMES[x]);
        wait_until(60, &what, || async {
            let v = view(node, &[]).await;
            want.iter()
                .all(|(m, d, val, n)| cell(&v, m, d, val).0 == *n)
        })
        .await;
        let v = view(node, &[]).await;
        let (_, who) = cell(&v, "published", "total", "");
        assert_eq!(who, NAMES, "contributors at {}", NAMES[x]);
        // Nothing more than the known sets: no stray cells.
        let published: u64 = v
            .rows
            .iter()
            .filter(|r| r.measure == "published" && r.dimension == "kind")
            .map(|r| r.count)
            .sum();
        assert_eq!(published, 10);
    }
    // D never talks to E: E's report reached D relayed E > C > A > B.
    let v = view(&mesh.nodes[D], &["total"]).await;
    let e = v
        .reports
        .iter()
        .find(|r| r.reporter_org == "e.example")
        .unwrap();
    assert_eq!(e.path, ["e.example", "c.example", "a.example", "b.example"]);
    assert!(v.rows.iter().all(|r| r.dimension == "total"));
    // The CLI shows the same.
    let out = cli(
        &mesh.orgs[E],
        &mesh.nodes[E],
        &["stats", "--json", "--by", "total"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total = j["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["measure"] == "published")
        .unwrap();
    assert_eq!(total["count"], 10);
    mesh.stop().await;
}

/// A-B-C: C's policy for B leaves out cells under 3, B's policy for A
/// shares none of B's own (but relays C's), and C's RED indicators, which
/// go to no one here, are counted where they never go.
#[tokio::test]
async fn small_cells_are_suppressed_and_an_org_that_shares_nothing_contributes_nothing() {
    let mesh = Mesh::start_tuned(
        &NAMES[..3],
        &[(A, B), (B, C)],
        &|org, partner| match (org, partner) {
            (C, B) => policy(
                "min-3",
                "share = true\nrelay = true\naccept = true\nmin_count = 3",
            ),
            (B, A) => policy(
                "relay-only",
                "share = false\nrelay = true\naccept = true\nmin_count = 0",
            ),
            _ => sharing(),
        },
        &fast,
    )
    .await;
    use IndicatorKind::*;
    let (o, n) = (&mesh.orgs, &mesh.nodes);
    publish(
        &o[C],
        &n[C],
        vec![
            indicator(Ipv4, "192.0.2.31", Tlp::Clear, &[], &[]),
            indicator(Ipv4, "192.0.2.32", Tlp::Clear, &[], &[]),
            indicator(Ipv4, "192.0.2.33", Tlp::Clear, &[], &[]),
            indicator(Url, "http://c.example/x", Tlp::Clear, &[], &[]),
            indicator(Url, "http://c.example/y", Tlp::Clear, &[], &[]),
        ],
    )
    .await;
    // Three RED indicators for an org outside this mesh: they never leave
    // C, but C's counts of them do.
    let red = (0..3)
        .map(|i| {
            let mut d = indicator(Domain, &format!("red-{i}.example"), Tlp::Red, &[], &[]);
            d.marking = Some(Marking {
                tlp: Tlp::Red as i32,
                recipients: vec!["x.example".into()],
                may_forward: false,
                hop_limit: 0,
            });
            d
        })
        .collect();
    publish(&o[C], &n[C], red).await;
    publish(
        &o[B],
        &n[B],
        vec![indicator(Ipv4, "192.0.2.20", Tlp::Clear, &[], &[])],
    )
    .await;
    mesh.settle().await;
    // At A: C's report (relayed by B) without its url cell (2 < 3); B's
    // own report never arrives.
    wait_until(60, "C's report to reach A", || async {
        cell(&view(&n[A], &[]).await, "published", "total", "").0 == 8
    })
    .await;
    let v = view(&n[A], &[]).await;
    assert_eq!(
        cell(&v, "published", "kind", "ipv4"),
        (3, vec!["c.example".into()])
    );
    assert_eq!(
        cell(&v, "published", "kind", "url").0,
        0,
        "a cell of 2 < 3 was shared"
    );
    assert_eq!(
        cell(&v, "published", "total", ""),
        (8, vec!["c.example".into()])
    );
    assert_eq!(
        cell(&v, "published", "tlp", "RED"),
        (3, vec!["c.example".into()])
    );
    // The RED ones were counted at A and B, and never stored there.
    for x in [A, B] {
        let held = n[x].ctx.store.indicators(None).await.unwrap();
        let from_c = held.iter().filter(|r| r.origin_org == "c.example").count();
        assert_eq!(from_c, 5, "{} holds RED indicators of C", NAMES[x]);
    }
    let c = v
        .reports
        .iter()
        .find(|r| r.reporter_org == "c.example")
        .unwrap();
    assert_eq!(
        (c.min_count, c.path.clone()),
        (3, vec!["c.example".into(), "b.example".into()])
    );
    assert!(!v.reports.iter().any(|r| r.reporter_org == "b.example"));
    let withheld = ledger(&n[B], "a.example")
        .await
        .into_iter()
        .find(|r| {
            r.entry.event == "statistics-withheld" && r.entry.subject.contains("of b.example")
        })
        .expect("B's withholding of its own report is on its ledger");
    assert_eq!(withheld.entry.rule, "statistics-share-off");
    // B itself holds C's report and its own exact counts.
    let v = view(&n[B], &[]).await;
    assert_eq!(cell(&v, "published", "kind", "ipv4").0, 4);
    assert_eq!(cell(&v, "published", "kind", "domain").0, 3);
    mesh.stop().await;
}

/// A pair: A shares with B with noise epsilon 0.5. Every noisy cell B
/// holds is within the documented bound of A's exact count.
#[tokio::test]
async fn noisy_reports_stay_within_the_documented_bound() {
    let mut b = Org::new("b.example");
    fast(&mut b.settings);
    let mut a = Org::new("a.example");
    fast(&mut a.settings);
    b.add_peer_with(&a, None, &sharing()).await;
    let node_b = start(&b).await;
    let noisy = policy(
        "noisy",
        "share = true\nrelay = true\naccept = true\nepsilon = 0.5\nmin_count = 0",
    );
    // A does not dial B until it has counted its 40, so the first report it
    // offers holds them all.
    a.add_peer_with(&b, None, &noisy).await;
    let node_a = start(&a).await;
    let drafts = (0..40).map(|i| ipv4_draft(i, Tlp::Clear)).collect();
    publish(&a, &node_a, drafts).await;
    // A's counts (kept by its background counter) hold all 40 before it
    // first offers a report.
    wait_until(60, "A to count its 40", || async {
        cell(&view(&node_a, &[]).await, "published", "total", "").0 == 40
    })
    .await;
    admin(&a, &node_a)
        .update_peer(threatmesh::proto::v1::UpdatePeerRequest {
            org: "b.example".into(),
            endpoint: Some(node_b.addr.to_string()),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_until(60, "A's noisy report to reach B", || async {
        held_report(&node_b).await.is_some()
    })
    .await;
    let exact = view(&node_a, &[]).await;
    assert_eq!(cell(&exact, "published", "total", "").0, 40);
    let noisy_report = held_report(&node_b).await.unwrap();
    assert_eq!(noisy_report.epsilon, 0.5);
    let bound = noise_bound(0.5) + 0.5;
    let mut checked = 0;
    for c in &noisy_report.cells {
        let truth = cell(&exact, &c.measure, &c.dimension, &c.value).0 as f64;
        assert!(
            (c.count as f64 - truth).abs() <= bound,
            "{}/{}/{}: {} against {truth} (bound {bound})",
            c.measure,
            c.dimension,
            c.value,
            c.count
        );
        checked += 1;
    }
    // total, kind ipv4 and TLP CLEAR of 40 each: none floored away.
    assert!(checked >= 3, "{noisy_report:?}");
    node_a.stop().await;
    node_b.stop().await;
}

/// A's report of today as `node` holds it.
async fn held_report(node: &RunningNode) -> Option<StatisticsReport> {
    let today = Period::Day.start_of(now_ms());
    let rows = node
        .ctx
        .store
        .statistics_reports(Some("day"), today)
        .await
        .unwrap();
    let row = rows.into_iter().find(|r| r.reporter == "a.example")?;
    let env = Envelope::decode(row.envelope.as_slice()).unwrap();
    Some(StatisticsReport::decode(env.payload.as_slice()).unwrap())
}

/// Hostile reports, sent straight to A's ShareStatistics as B's node.
struct Pair {
    a: Org,
    b: Org,
    node_a: RunningNode,
}

async fn pair(a: Org, b_policy_at_a: &str) -> Pair {
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, b_policy_at_a).await;
    let node_a = start(&a).await;
    Pair { a, b, node_a }
}

impl Pair {
    fn report(&self, key: &OrgSigningKey, reporter: &str, count: u64) -> StatisticsReport {
        let now = now_ms();
        StatisticsReport {
            reporter_org: reporter.into(),
            key_id: key.key_id().into(),
            period: "day".into(),
            period_start_unix_ms: Period::Day.start_of(now),
            made_unix_ms: now,
            epsilon: 0.0,
            min_count: 0,
            hop_limit: 2,
            cells: vec![StatisticsCell {
                measure: "published".into(),
                dimension: "total".into(),
                value: String::new(),
                count,
            }],
        }
    }

    async fn send(
        &self,
        reports: Vec<(Envelope, Vec<&str>)>,
    ) -> Result<Vec<(Code, String, bool)>, tonic::Status> {
        let mut client = exchange_as(&self.a, &self.node_a, &self.b.node_cert());
        let r = client
            .share_statistics(ShareStatisticsRequest {
                reports: signed_reports(reports),
                cards: Vec::new(),
            })
            .await?;
        Ok(outcomes(r.into_inner().outcomes))
    }

    async fn held(&self) -> Vec<threatmesh::store::StatisticsRow> {
        self.node_a
            .ctx
            .store
            .statistics_reports(None, 0)
            .await
            .unwrap()
    }
}

fn seal(key: &OrgSigningKey, r: &StatisticsReport) -> Envelope {
    key.seal(STATISTICS_PAYLOAD_TYPE, r.encode_to_vec())
}

#[tokio::test]
async fn forged_oversized_and_malformed_reports_are_refused_and_nothing_is_kept() {
    let p = pair(Org::new("a.example"), &sharing()).await;
    let key = p.b.signing_key();
    let forged = seal(&key, &p.report(&key, "d.example", 5));
    let mut tampered = seal(&key, &p.report(&key, "b.example", 5));
    tampered.payload[4] ^= 1;
    let mut big = p.report(&key, "b.example", 1);
    big.cells = (0..5000)
        .map(|i| StatisticsCell {
            measure: "published".into(),
            dimension: "tag".into(),
            value: format!("t{i}"),
            count: 1,
        })
        .collect();
    let mut far = p.report(&key, "b.example", 1);
    far.hop_limit = 0;
    let mut odd = p.report(&key, "b.example", 1);
    odd.cells[0].dimension = "victim".into();
    let out = p
        .send(vec![
            (forged, vec!["d.example", "b.example"]),
            (tampered, vec!["b.example"]),
            (seal(&key, &big), vec!["b.example"]),
            (
                seal(&key, &far),
                vec!["b.example", "c.example", "b.example"],
            ),
            (seal(&key, &odd), vec!["b.example"]),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::Unauthenticated, "{out:?}");
    assert!(out[0].1.contains("signed by a key of b.example"), "{out:?}");
    assert_eq!(out[1].0, Code::Unauthenticated, "{out:?}");
    assert_eq!(out[2].0, Code::InvalidArgument, "{out:?}");
    assert!(out[2].1.contains("65536-byte limit"), "{out:?}");
    assert_eq!(out[3].0, Code::InvalidArgument, "{out:?}");
    assert!(out[3].1.contains("path"), "{out:?}");
    assert_eq!(out[4].0, Code::InvalidArgument, "{out:?}");
    assert!(out[4].1.contains("cells[0].dimension"), "{out:?}");
    assert!(p.held().await.is_empty());
    let refused = ledger(&p.node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "statistics-refused")
        .count();
    assert_eq!(refused, 5);
    let many = vec![
        (
            seal(&key, &p.report(&key, "b.example", 1)),
            vec!["b.example"]
        );
        501
    ];
    let status = p.send(many).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    p.node_a.stop().await;
}

#[tokio::test]
async fn a_replayed_or_older_report_changes_nothing() {
    let p = pair(Org::new("a.example"), &sharing()).await;
    let key = p.b.signing_key();
    let first = p.report(&key, "b.example", 4);
    let mut newer = first.clone();
    newer.made_unix_ms += 1;
    newer.cells[0].count = 9;
    let (first, newer) = (seal(&key, &first), seal(&key, &newer));
    let path = || vec!["b.example"];
    let out = p.send(vec![(first.clone(), path())]).await.unwrap();
    assert_eq!((out[0].0, out[0].2), (Code::Ok, true), "{out:?}");
    let out = p.send(vec![(first.clone(), path())]).await.unwrap();
    assert_eq!((out[0].0, out[0].2), (Code::Ok, false), "a replay: {out:?}");
    let out = p
        .send(vec![(newer, path()), (first, path())])
        .await
        .unwrap();
    assert_eq!((out[0].2, out[1].2), (true, false), "{out:?}");
    let v = view(&p.node_a, &["total"]).await;
    let (n, who) = cell(&v, "published", "total", "");
    assert!(who.contains(&"b.example".to_string()));
    assert_eq!(n, 9, "B's newer report stands, once");
    assert_eq!(p.held().await.len(), 1);
    p.node_a.stop().await;
}

#[tokio::test]
async fn reports_from_a_partner_not_accepted_or_over_its_bound_are_refused() {
    let p = pair(
        Org::new("a.example"),
        &policy("no-stats-in", "share = true\nrelay = true"),
    )
    .await;
    let key = p.b.signing_key();
    let out = p
        .send(vec![(
            seal(&key, &p.report(&key, "b.example", 1)),
            vec!["b.example"],
        )])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::PermissionDenied, "{out:?}");
    assert!(out[0].1.contains("[statistics] accept = false"), "{out:?}");
    assert!(p.held().await.is_empty());
    p.node_a.stop().await;

    let mut a = Org::new("a.example");
    a.settings.federation.statistics_max_per_partner = 1;
    let p = pair(a, &sharing()).await;
    let key = p.b.signing_key();
    let today = p.report(&key, "b.example", 1);
    let mut week = today.clone();
    week.period = "week".into();
    week.period_start_unix_ms = Period::Week.start_of(now_ms());
    let out = p
        .send(vec![
            (seal(&key, &today), vec!["b.example"]),
            (seal(&key, &week), vec!["b.example"]),
        ])
        .await
        .unwrap();
    assert_eq!(out[0].0, Code::Ok, "{out:?}");
    assert_eq!(out[1].0, Code::ResourceExhausted, "{out:?}");
    assert!(
        out[1].1.contains("federation.statistics_max_per_partner"),
        "{out:?}"
    );
    assert_eq!(p.held().await.len(), 1);
    p.node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_sharing_over_its_request_rate_is_refused_resource_exhausted() {
    let mut a = Org::new("a.example");
    a.settings.limits.partner_requests_per_second = 1;
    let p = pair(a, &sharing()).await;
    let as_b = exchange_as(&p.a, &p.node_a, &p.b.node_cert());
    refused_over_rate(|| {
        let mut c = as_b.clone();
        async move { c.share_statistics(ShareStatisticsRequest::default()).await }
    })
    .await;
    p.node_a.stop().await;
}

/// `stats --period week`, `--by` and `--since` as `--help` describes them,
/// and the fields named when they are wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_by_week_by_dimension_and_since_name_what_is_wrong() {
    let mut a = Org::new("a.example");
    fast(&mut a.settings);
    let node_a = start(&a).await;
    let drafts = (0..3).map(|i| ipv4_draft(i, Tlp::Clear)).collect();
    publish(&a, &node_a, drafts).await;
    wait_until(60, "A to count its 3", || async {
        cell(&view(&node_a, &[]).await, "published", "total", "").0 == 3
    })
    .await;
    let out = cli(
        &a,
        &node_a,
        &["stats", "--period", "week", "--by", "kind,tlp", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = j["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .all(|r| r["dimension"] == "kind" || r["dimension"] == "tlp")
    );
    let ipv4 = rows
        .iter()
        .find(|r| r["measure"] == "published" && r["value"] == "ipv4")
        .unwrap();
    assert_eq!(ipv4["count"], 3);
    let weeks: Vec<_> = j["reports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["period"].clone())
        .collect();
    assert!(
        !weeks.is_empty() && weeks.iter().all(|p| p == "week"),
        "{weeks:?}"
    );
    // Nothing starts after next week.
    let later = threatmesh::clock::rfc3339(now_ms() + 8 * threatmesh::model::DAY_MS);
    let out = cli(&a, &node_a, &["stats", "--since", &later, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["rows"].as_array().unwrap().is_empty(), "{j}");
    for (args, said) in [
        (
            vec!["stats", "--by", "victim"],
            "by: 'victim' is not one of",
        ),
        (
            vec!["stats", "--period", "month"],
            "period: 'month' is not day or week",
        ),
    ] {
        let out = cli(&a, &node_a, &args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(said), "{args:?}: {err}");
    }
    node_a.stop().await;
}
