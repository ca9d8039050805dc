//! Every receiver enforces the origin's marking: a partner that is not the
//! origin is at least one relay hop, whatever path it claims, and cannot
//! launder what the origin marked not forwardable.

mod common;

use common::*;
use threatmesh::proto::v1::{Marking, Tlp};
use threatmesh::refusal::RefusalKind;
use threatmesh::rpc::refusal_code;
use tonic::Code;

/// A's indicator with `marking`, genuinely signed by A.
fn marked(a: &Org, value: &str, marking: Marking) -> Vec<u8> {
    let mut ind = hand_made("a.example", &a.signing_key(), value, Tlp::Clear, now_ms());
    ind.marking = Some(marking);
    bytes(&seal_indicator(&a.signing_key(), &ind))
}

fn marking(tlp: Tlp, may_forward: bool, hop_limit: u32, recipients: &[&str]) -> Marking {
    Marking {
        tlp: tlp as i32,
        may_forward,
        hop_limit,
        recipients: recipients.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cannot_launder_what_the_origin_marked_not_forwardable() {
    // D subscribes to C, a registered partner it accepts relayed indicators
    // from; C re-offers A's genuine envelopes against their markings.
    let a = Org::new("a.example");
    let c = Org::new("c.example");
    let d = Org::new("d.example");
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let via_c = path(&["a.example", "c.example"]);
    let cases = vec![
        // 1: AMBER, not forwardable.
        (
            marked(&a, "amber.example", marking(Tlp::Amber, false, 0, &[])),
            via_c.clone(),
        ),
        // 2: CLEAR, not forwardable.
        (
            marked(&a, "clear.example", marking(Tlp::Clear, false, 0, &[])),
            via_c.clone(),
        ),
        // 3: forwardable, but hop limit 0.
        (
            marked(&a, "zero.example", marking(Tlp::Clear, true, 0, &[])),
            via_c.clone(),
        ),
        // 4: hop limit 1, two relay hops claimed.
        (
            marked(&a, "far.example", marking(Tlp::Clear, true, 1, &[])),
            path(&["a.example", "b.example", "c.example"]),
        ),
        // 5: RED naming D, relayed: RED is never relayed.
        (
            marked(
                &a,
                "red.example",
                marking(Tlp::Red, false, 0, &["d.example"]),
            ),
            via_c.clone(),
        ),
        // 6: what the origin allowed: stored.
        (
            marked(&a, "ok.example", marking(Tlp::Clear, true, 8, &[])),
            via_c.clone(),
        ),
    ];
    let rogue = RogueUpstream::start_with_paths(&c, &[&d], cases).await;
    d.add_card(&a.card(), None, None).await;
    let name = d.apply_policy(RELAY_POLICY).await;
    d.add_card(&c.card(), Some(rogue.addr), Some(&name)).await;
    let node_d = start(&d).await;
    let store = node_d.ctx.store.clone();
    considered(&node_d, &c.id, 6).await;

    // Refused, each as denied by the origin's marking (PERMISSION_DENIED
    // to the sending partner), naming the rule; only #6 stored.
    let rej = store.rejections().await.unwrap();
    let seen = refusals(&node_d).await;
    assert_eq!(
        seen,
        (1..=5)
            .map(|s| (s, RefusalKind::DeniedByRule))
            .collect::<Vec<_>>(),
        "{rej:#?}"
    );
    assert!(
        rej.iter()
            .all(|r| refusal_code(r.kind) == Code::PermissionDenied)
    );
    for (r, rule) in rej.iter().zip([
        "hop-limit",
        "hop-limit",
        "hop-limit",
        "hop-limit",
        "tlp-never-relayed",
    ]) {
        assert!(
            r.reason.contains(rule),
            "seq {}: {}",
            r.upstream_seq,
            r.reason
        );
    }
    let stored = store.indicators(None).await.unwrap();
    assert_eq!(stored.len(), 1, "only what the origin allowed is stored");
    assert_eq!(stored[0].path, ["a.example", "c.example"]);
    // On D's ledger: the refusals, against C.
    let ledger = store.audit_rows(Some("c.example"), None).await.unwrap();
    let rejected: Vec<&str> = ledger
        .iter()
        .filter(|r| r.entry.event == "rejected")
        .map(|r| r.entry.subject.as_str())
        .collect();
    for seq in 1..=5 {
        let subject = format!("c.example seq {seq}");
        assert!(
            rejected.iter().any(|r| r.contains(&subject)),
            "no ledger row for {subject}: {rejected:?}"
        );
    }
    node_d.stop().await;
    drop(rogue);
}
