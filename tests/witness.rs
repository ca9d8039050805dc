//! The ledger is witnessed: partners keep signed heads of it, so a ledger
//! cut or rewritten and re-chained — which `audit verify` alone cannot tell
//! from an honest one — is detected by the partners that hold its heads and
//! by `audit verify --against` with the heads they export.

mod common;

use common::*;
use sqlx::Connection;
use threatmesh::proto::v1::Tlp;

/// A (witnessed, 100 ms interval) publishes five indicators to B, and B
/// holds a head of A's ledger covering all of A's rows.
async fn witnessed_pair() -> (Org, Org, RunningNode, RunningNode) {
    let mut a = Org::new("a.example");
    let mut b = Org::new("b.example");
    for o in [&mut a, &mut b] {
        o.settings.federation.witness_interval_ms = 100;
    }
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    let drafts = (0..5).map(|i| ipv4_draft(i, Tlp::Green)).collect();
    publish_all(&publisher(&a, &node_a), drafts, 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let rows = node_a.ctx.store.ledger_head().await.unwrap().rows;
    let (store, org) = (node_b.ctx.store.clone(), a.id.clone());
    wait_until(30, "B to witness A's whole ledger", || {
        let (s, o) = (store.clone(), org.clone());
        async move {
            s.latest_witnessed(&o)
                .await
                .unwrap()
                .is_some_and(|h| h.rows >= rows)
        }
    })
    .await;
    (a, b, node_a, node_b)
}

/// B's heads of A, as B's operator exports them for A, in a file.
fn export_heads(a: &Org, b: &Org, node_b: &RunningNode) -> std::path::PathBuf {
    let o = cli(
        b,
        node_b,
        &["audit", "heads", "--org", "a.example", "--json"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let path = a.dir.path().join("b-heads.jsonl");
    std::fs::write(&path, &o.stdout).unwrap();
    path
}

async fn open_db(org: &Org) -> sqlx::AnyConnection {
    org.raw_db().await
}

/// Waits until `node` has put a ledger-inconsistent row about `partner` on
/// its ledger, and returns its detail.
async fn inconsistency(node: &RunningNode, partner: &str) -> String {
    let store = node.ctx.store.clone();
    let p = partner.to_string();
    wait_until(30, "the witness to record the inconsistency", || {
        let (s, p) = (store.clone(), p.clone());
        async move {
            s.audit_rows(Some(&p), None)
                .await
                .unwrap()
                .iter()
                .any(|r| r.entry.rule == "ledger-inconsistent")
        }
    })
    .await;
    let rows = ledger(node, partner).await;
    let row = rows
        .iter()
        .find(|r| r.entry.rule == "ledger-inconsistent")
        .unwrap();
    assert_eq!(row.entry.event, "ledger-witness");
    row.entry.detail.clone()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_ledger_passes_its_own_check_but_not_its_witnesses() {
    let (a, b, node_a, node_b) = witnessed_pair().await;
    let heads = export_heads(&a, &b, &node_b);
    let against = heads.to_str().unwrap();
    let o = cli(&a, &node_a, &["audit", "verify", "--against", against]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("consistent with"));

    // Delete the last three rows and move the head back, as someone with
    // the database file could.
    // In one transaction: a witness asking between the two statements
    // would see a head whose row is gone (a rewrite, not a cut).
    let rows = node_a.ctx.store.ledger_head().await.unwrap().rows as i64;
    let mut db = open_db(&a).await;
    let mut cut = db.begin().await.unwrap();
    sqlx::query("DELETE FROM audit WHERE seq > $1")
        .bind(rows - 3)
        .execute(&mut *cut)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE audit_head SET seq = $1, hash = (SELECT hash FROM audit WHERE seq = $1) WHERE id = 1",
    )
    .bind(rows - 3)
    .execute(&mut *cut)
    .await
    .unwrap();
    cut.commit().await.unwrap();

    // The chain alone still looks intact...
    let o = cli(&a, &node_a, &["audit", "verify"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // ...but not against the heads B kept,
    let o = cli(&a, &node_a, &["audit", "verify", "--against", against]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("were removed"), "{}", stderr(&o));
    // An auditor with the database file finds the same.
    let o = cli(
        &a,
        &node_a,
        &["audit", "verify", "--offline", "--against", against],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("were removed"), "{}", stderr(&o));
    // and B notices by itself at its next request for A's head.
    let why = inconsistency(&node_b, "a.example").await;
    assert!(why.contains("rows were removed"), "{why}");
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_and_rechained_ledger_is_caught_by_its_witnesses() {
    let (a, b, node_a, node_b) = witnessed_pair().await;
    let heads = export_heads(&a, &b, &node_b);

    // Rewrite row 2 and recompute every hash after it and the head.
    let mut db = open_db(&a).await;
    sqlx::query("UPDATE audit SET detail = 'nothing happened here' WHERE seq = 2")
        .execute(&mut db)
        .await
        .unwrap();
    type Row = (
        i64,
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        Vec<u8>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash FROM audit ORDER BY seq",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let mut prev = rows[1].8.clone();
    for (seq, at, event, actor, partner, subject, rule, detail, _) in &rows[1..] {
        let h = threatmesh::audit::row_hash(
            &prev,
            *seq as u64,
            *at,
            event,
            actor,
            partner,
            subject,
            rule,
            detail,
        );
        sqlx::query("UPDATE audit SET prev_hash = $1, hash = $2 WHERE seq = $3")
            .bind(&prev)
            .bind(h.to_vec())
            .bind(seq)
            .execute(&mut db)
            .await
            .unwrap();
        prev = h.to_vec();
    }
    sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
        .bind(&prev)
        .execute(&mut db)
        .await
        .unwrap();

    let o = cli(&a, &node_a, &["audit", "verify"]);
    assert!(o.status.success(), "the re-chained ledger: {}", stderr(&o));
    let o = cli(
        &a,
        &node_a,
        &["audit", "verify", "--against", heads.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("rewritten"), "{}", stderr(&o));
    let why = inconsistency(&node_b, "a.example").await;
    assert!(why.contains("rewritten"), "{why}");
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_ledger_beside_stored_indicators_is_not_intact() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    publish_all(&publisher(&a, &node), vec![ipv4_draft(1, Tlp::Clear)], 1).await;
    node.stop().await;
    let mut db = open_db(&a).await;
    sqlx::query("DELETE FROM audit")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_head")
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .arg("--config")
        .arg(&a.config)
        .args(["audit", "verify", "--offline"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("ledger is empty"), "{}", stderr(&o));
}
