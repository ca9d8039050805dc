//! Per-partner sharing policies on real nodes, and the audit ledger.

mod common;

use std::collections::BTreeSet;

use common::*;
use threatmesh::proto::v1::{IndicatorDraft, IndicatorKind, Tlp};

const B_AGENCY: &str = r#"
name = "b-agency"
[egress]
tlp_ceiling = "RED"
community = true
"#;

const C_ISP: &str = r#"
name = "c-isp"
[egress]
tlp_ceiling = "GREEN"
community = true
kinds = ["ipv4", "domain"]
min_confidence = 60
tags_exclude = ["internal"]
"#;

fn d(
    kind: IndicatorKind,
    value: &str,
    tlp: Tlp,
    recipients: &[&str],
    confidence: u32,
    tags: &[&str],
) -> IndicatorDraft {
    let mut x = draft(kind, value, tlp, recipients);
    x.confidence = confidence;
    x.tags = tags.iter().map(|t| t.to_string()).collect();
    x
}

/// (draft, reaches B, reaches C) — written out by hand from the policies.
fn mix(prefix: &str) -> Vec<(IndicatorDraft, bool, bool)> {
    use IndicatorKind::*;
    let v = |s: &str| format!("{prefix}-{s}.example");
    vec![
        (d(Domain, &v("clear"), Tlp::Clear, &[], 90, &[]), true, true),
        (
            d(
                Ipv4,
                &format!("198.51.100.{}", prefix.len()),
                Tlp::Green,
                &[],
                80,
                &[],
            ),
            true,
            true,
        ),
        (
            d(
                Url,
                &format!("http://{}/x", v("url")),
                Tlp::Green,
                &[],
                80,
                &[],
            ),
            true,
            false,
        ),
        (
            d(Domain, &v("lowconf"), Tlp::Green, &[], 40, &[]),
            true,
            false,
        ),
        (
            d(Domain, &v("internal"), Tlp::Green, &[], 90, &["internal"]),
            true,
            false,
        ),
        (
            d(Domain, &v("amber"), Tlp::Amber, &[], 90, &[]),
            true,
            false,
        ),
        (
            d(
                Domain,
                &v("strict"),
                Tlp::AmberStrict,
                &["b.example"],
                90,
                &[],
            ),
            true,
            false,
        ),
        (
            d(Domain, &v("red-c"), Tlp::Red, &["c.example"], 90, &[]),
            false,
            false,
        ),
        (
            d(Domain, &v("red-b"), Tlp::Red, &["b.example"], 90, &[]),
            true,
            false,
        ),
        (
            d(Domain, &v("amber-c"), Tlp::Amber, &["c.example"], 90, &[]),
            false,
            false,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_receive_exactly_what_their_policies_allow_backlog_and_live() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let c = Org::new("c.example");
    a.add_peer_with(&b, None, B_AGENCY).await;
    a.add_peer_with(&c, None, C_ISP).await;
    let node_a = start(&a).await;
    let client = publisher(&a, &node_a);

    // Published before B and C subscribe: they get it from the backlog.
    let backlog = mix("early");
    let early = publish_all(&client, backlog.iter().map(|x| x.0.clone()).collect(), 4).await;

    b.add_peer(&a, Some(node_a.addr)).await;
    c.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let node_c = start(&c).await;
    caught_up(&node_b, &a, &node_a).await;
    caught_up(&node_c, &a, &node_a).await;

    // Published while they are subscribed: the live tail.
    let live = mix("late");
    let late = publish_all(&client, live.iter().map(|x| x.0.clone()).collect(), 4).await;
    caught_up(&node_b, &a, &node_a).await;
    caught_up(&node_c, &a, &node_a).await;

    let mut want_b = BTreeSet::new();
    let mut want_c = BTreeSet::new();
    for (resp, (_, to_b, to_c)) in early.iter().chain(&late).zip(backlog.iter().chain(&live)) {
        if *to_b {
            want_b.insert(resp.id.clone());
        }
        if *to_c {
            want_c.insert(resp.id.clone());
        }
    }
    assert_eq!(ids_at(&node_b).await, want_b, "B's set");
    assert_eq!(ids_at(&node_c).await, want_c, "C's set");
    assert_eq!(want_b.len(), 16);
    assert_eq!(want_c.len(), 4);

    // Every decision is on A's ledger, with the rule.
    let rows = node_a
        .ctx
        .store
        .audit_rows(Some("c.example"), None)
        .await
        .unwrap();
    let withheld: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r.entry.event == "withheld")
        .map(|r| r.entry.rule.as_str())
        .collect();
    for rule in [
        "kind-not-allowed",
        "confidence-below-minimum",
        "tag-excluded",
        "tlp-ceiling",
    ] {
        assert!(withheld.contains(rule), "{rule} missing from {withheld:?}");
    }
    // One row per decision kind and batch, naming each indicator it covers.
    let sent: usize = rows
        .iter()
        .filter(|r| r.entry.event == "sent")
        .map(|r| r.entry.subject.split(' ').count())
        .sum();
    assert_eq!(sent, 4);
    assert_eq!(
        node_a.ctx.store.verify_audit().await.unwrap(),
        Ok(node_a.ctx.store.audit_rows(None, None).await.unwrap().len() as u64)
    );

    node_b.stop().await;
    node_c.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_policy_applies_to_the_live_stream_and_the_unsent_backlog() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, B_AGENCY).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let client = publisher(&a, &node_a);

    let first = publish_all(
        &client,
        vec![draft(
            IndicatorKind::Domain,
            "before.example",
            Tlp::Green,
            &[],
        )],
        1,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(ids_at(&node_b).await, BTreeSet::from([first[0].id.clone()]));

    // Tighten while B is subscribed: domains no longer go to B.
    a.apply_policy(&format!("{B_AGENCY}kinds = [\"ipv4\"]\n"))
        .await;
    policy_loaded(&node_a, &b, 2).await;
    let denied_live = publish_all(
        &client,
        vec![draft(
            IndicatorKind::Domain,
            "after.example",
            Tlp::Green,
            &[],
        )],
        1,
    )
    .await;
    let sentinel = publish_all(&client, vec![ipv4_draft(1, Tlp::Green)], 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let at_b = ids_at(&node_b).await;
    assert!(at_b.contains(&sentinel[0].id), "the stream is alive");
    assert!(
        !at_b.contains(&denied_live[0].id),
        "newly denied kind reached B"
    );

    // Backlog B has not received yet is re-checked when it is sent.
    node_b.stop().await;
    let unsent = publish_all(
        &client,
        vec![
            draft(IndicatorKind::Domain, "queued-1.example", Tlp::Green, &[]),
            draft(IndicatorKind::Domain, "queued-2.example", Tlp::Clear, &[]),
            ipv4_draft(2, Tlp::Green),
        ],
        1,
    )
    .await;
    let node_b = start(&b).await;
    caught_up(&node_b, &a, &node_a).await;
    let at_b = ids_at(&node_b).await;
    assert!(at_b.contains(&unsent[2].id));
    assert!(
        !at_b.contains(&unsent[0].id) && !at_b.contains(&unsent[1].id),
        "denied backlog reached B"
    );
    assert_eq!(at_b.len(), 3);
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_after_a_run_and_names_an_edited_row() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let client = publisher(&a, &node_a);
    publish_all(
        &client,
        (0..5).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        1,
    )
    .await;
    publish_all(
        &client,
        vec![draft(
            IndicatorKind::Domain,
            "amber.example",
            Tlp::Amber,
            &[],
        )],
        1,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    node_b.stop().await;
    node_a.stop().await;

    let verify = |org: &Org| {
        std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
            .args(["audit", "verify", "--offline", "--config"])
            .arg(&org.config)
            .output()
            .unwrap()
    };
    for org in [&a, &b] {
        let o = verify(org);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    // Edit one row directly in A's database: the withheld AMBER becomes "sent".
    let store = a.store().await;
    let rows = store.audit_rows(Some("b.example"), None).await.unwrap();
    let target = rows
        .iter()
        .find(|r| r.entry.event == "withheld")
        .unwrap()
        .seq;
    store.close().await;
    let mut conn = a.raw_db().await;
    sqlx::query("UPDATE audit SET event = 'sent', rule = 'tlp-amber' WHERE seq = $1")
        .bind(target as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    let o = verify(&a);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("broken at row {target}")) && err.contains("edited"),
        "{err}"
    );

    // Put it back and delete an earlier row instead.
    sqlx::query("UPDATE audit SET event = 'withheld', rule = 'tlp-ceiling' WHERE seq = $1")
        .bind(target as i64)
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(verify(&a).status.success());
    sqlx::query("DELETE FROM audit WHERE seq = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    let o = verify(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("row 2"), "{err}");
}

/// How many times A's ledger says `id` was sent to `partner`.
async fn times_sent(node: &RunningNode, partner: &str, id: &str) -> usize {
    ledger(node, partner)
        .await
        .iter()
        .filter(|r| r.entry.event == "sent")
        .flat_map(|r| {
            r.entry
                .subject
                .split(' ')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|s| s.contains(id))
        .count()
}

/// A loosened policy applies to what is sent from then on; `peer resend`
/// sends what the old version withheld — exactly that, each once, each
/// decision on the ledger — and a second resend finds nothing to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_resend_after_a_loosened_policy_sends_exactly_what_was_withheld() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer_with(&b, None, &format!("{B_AGENCY}kinds = [\"ipv4\"]\n"))
        .await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let client = publisher(&a, &node_a);
    let published = publish_all(
        &client,
        vec![
            ipv4_draft(1, Tlp::Green),
            draft(IndicatorKind::Domain, "held-1.example", Tlp::Green, &[]),
            ipv4_draft(2, Tlp::Clear),
            draft(IndicatorKind::Domain, "held-2.example", Tlp::Amber, &[]),
            ipv4_draft(3, Tlp::Green),
        ],
        1,
    )
    .await;
    let id = |i: usize| published[i].id.clone();
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(ids_at(&node_b).await, BTreeSet::from([id(0), id(2), id(4)]));

    // Loosened: every kind. What was withheld stays withheld by itself.
    a.apply_policy(B_AGENCY).await;
    policy_loaded(&node_a, &b, 2).await;
    let sentinel = publish_all(&client, vec![ipv4_draft(4, Tlp::Green)], 1).await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(ids_at(&node_b).await.len(), 4, "only the sentinel is new");

    let o = cli(&a, &node_a, &["peer", "resend", "--partner", "b.example"]);
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{said}");
    assert!(
        said.contains("seq 1..=6") && said.contains("2 indicator(s) now allowed"),
        "{said}"
    );
    let store_b = node_b.ctx.store.clone();
    wait_until(30, "B to receive the two withheld domains", || {
        let s = store_b.clone();
        async move { s.indicators(None).await.unwrap().len() >= 6 }
    })
    .await;
    // Each indicator once at B, and once on A's ledger as sent to B.
    let rows = node_b.ctx.store.indicators(None).await.unwrap();
    assert_eq!(rows.len(), 6, "every version stored once at B");
    let mut all: Vec<String> = (0..5).map(id).collect();
    all.push(sentinel[0].id.clone());
    assert_eq!(
        ids_at(&node_b).await,
        all.iter().cloned().collect::<BTreeSet<_>>()
    );
    for i in &all {
        assert_eq!(times_sent(&node_a, "b.example", i).await, 1, "{i}");
    }
    let resend_rows: Vec<_> = ledger(&node_a, "b.example")
        .await
        .into_iter()
        .filter(|r| r.entry.event == "resend")
        .collect();
    assert_eq!(resend_rows.len(), 1);
    assert!(
        resend_rows[0].entry.actor.contains("/admin/"),
        "{:?}",
        resend_rows[0].entry
    );
    // The request is done and gone; B's cursor did not move back.
    let ctx = node_a.ctx.clone();
    let b_id = b.id.clone();
    wait_until(10, "the resend request to be removed", || {
        let (ctx, b_id) = (ctx.clone(), b_id.clone());
        async move { ctx.store.resend_request(&b_id).await.unwrap().is_none() }
    })
    .await;
    assert_eq!(node_b.ctx.store.cursor(&a.id).await.unwrap(), 6);
    // Nothing is left to send.
    let o = cli(&a, &node_a, &["peer", "resend", "--partner", "b.example"]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(said.contains("0 indicator(s) now allowed"), "{said}");
    // --since limits the range to what was stored from then on.
    let o = cli(
        &a,
        &node_a,
        &[
            "peer",
            "resend",
            "--partner",
            "b.example",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success() && said.contains("nothing stored since then"),
        "{said}"
    );

    // A resend asked while the partner is away is carried out when it
    // next subscribes (the request is on the store, not in a stream).
    a.apply_policy(&format!("{B_AGENCY}kinds = [\"ipv4\"]\n"))
        .await;
    policy_loaded(&node_a, &b, 3).await;
    let held = publish_all(
        &client,
        vec![draft(
            IndicatorKind::Domain,
            "held-3.example",
            Tlp::Green,
            &[],
        )],
        1,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    node_b.stop().await;
    a.apply_policy(B_AGENCY).await;
    policy_loaded(&node_a, &b, 4).await;
    let o = cli(&a, &node_a, &["peer", "resend", "--partner", "b.example"]);
    let said = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(said.contains("1 indicator(s) now allowed"), "{said}");
    let node_b = start(&b).await;
    let store_b = node_b.ctx.store.clone();
    let want = held[0].id.clone();
    wait_until(
        30,
        "B to receive what was withheld while it was away",
        || {
            let (s, want) = (store_b.clone(), want.clone());
            async move { s.indicator_by_id(&want).await.unwrap().is_some() }
        },
    )
    .await;
    assert_eq!(times_sent(&node_a, "b.example", &want).await, 1);
    assert_eq!(node_b.ctx.store.indicators(None).await.unwrap().len(), 7);
    node_b.stop().await;
    node_a.stop().await;
}
