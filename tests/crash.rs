//! B runs as a real `threatmesh serve` process, is killed with SIGKILL while
//! it is receiving, and restarted on the same database.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use threatmesh::proto::v1::Tlp;
use tokio::process::Child;

fn spawn_serve(org: &Org) -> Child {
    spawn_serve_at(org, None)
}

/// `serve` for `org`, on `listen` if given (a relay partners dial), with
/// settings through the environment, as an operator would override them.
fn spawn_serve_at(org: &Org, listen: Option<std::net::SocketAddr>) -> Child {
    let mut serve = serve_command(org);
    if let Some(addr) = listen {
        serve.env("THREATMESH__NODE__LISTEN", addr.to_string());
    }
    serve.spawn().expect("start threatmesh serve")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_killed_mid_stream_resumes_with_nothing_lost_or_duplicated() {
    let mut a = Org::new("a.example");
    // Small batches: many separate commits at B, so the kill lands mid-stream.
    a.settings.federation.batch_size = 10;
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;

    let client = publisher(&a, &node_a);
    let mut ids: HashSet<String> = publish_all(
        &client,
        (0..500).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        32,
    )
    .await
    .into_iter()
    .map(|p| p.id)
    .collect();
    // The other 500 are published while B is receiving, paced so that B is
    // killed while A is still publishing.
    let pacer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut out = Vec::new();
            for chunk in 0..50u32 {
                let drafts = (0..10)
                    .map(|i| ipv4_draft(500 + chunk * 10 + i, Tlp::Clear))
                    .collect();
                out.extend(
                    publish_all(&client, drafts, 10)
                        .await
                        .into_iter()
                        .map(|p| p.id),
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            out
        })
    };

    let store_b = b.store().await;
    let mut child = spawn_serve(&b);
    wait_until(60, "B to start receiving", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() >= 100 }
    })
    .await;
    child.kill().await.unwrap(); // SIGKILL: no clean shutdown, no flush
    let at_kill = store_b.count_indicators().await.unwrap();
    eprintln!("B killed with {at_kill} of 1,000 stored");
    assert!(at_kill < 1000, "B was killed mid-stream (had {at_kill})");

    ids.extend(pacer.await.unwrap());
    assert_eq!(ids.len(), 1000);

    let mut child = spawn_serve(&b);
    wait_until(60, "B to hold all 1,000 after restart", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() >= 1000 }
    })
    .await;
    // Clean shutdown on SIGTERM, with exit status 0.
    let pid = child.id().unwrap().to_string();
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(term.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("B stops within 10 s of SIGTERM")
        .unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status}");

    let rows = store_b.indicators(None).await.unwrap();
    assert_eq!(rows.len(), 1000, "exactly 1,000 rows at B");
    let got: HashSet<String> = rows.iter().map(|r| r.indicator_id.clone()).collect();
    assert_eq!(got, ids, "B holds exactly A's indicators, each once");
    assert!(store_b.rejections().await.unwrap().is_empty());
    assert_eq!(
        store_b.cursor(&a.id).await.unwrap(),
        node_a.ctx.store.latest_seq().await.unwrap()
    );
    store_b.close().await;
    node_a.stop().await;
}

/// A number from the environment (for the long run of the harness), or
/// `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The crash harness: B, a real `serve` process, is SIGKILLed again and
/// again while it receives A's log, each time a little further in; then it
/// must hold every indicator exactly once, with an intact database and
/// ledger. The suite runs 10 kills over 2,000 indicators;
/// `THREATMESH_CRASH_KILLS=50 THREATMESH_CRASH_INDICATORS=20000` runs the
/// long form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_killed_again_and_again_during_a_transfer_loses_and_duplicates_nothing() {
    let kills = env_or("THREATMESH_CRASH_KILLS", 10);
    let total = env_or("THREATMESH_CRASH_INDICATORS", 2000);
    let mut a = Org::new("a.example");
    // Small batches: many commits at B, so kills land between and inside them.
    a.settings.federation.batch_size = 25;
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    // A publishes while B is being killed, in paced chunks, so the
    // transfer spans the kills.
    let client = publisher(&a, &node_a);
    let chunk = (total / (kills * 4)).max(1);
    let pacer = tokio::spawn(async move {
        let mut ids = HashSet::new();
        let mut next = 0u64;
        while next < total {
            let n = chunk.min(total - next);
            let drafts = (next..next + n)
                .map(|i| ipv4_draft(i as u32, Tlp::Green))
                .collect();
            ids.extend(
                publish_all(&client, drafts, 32)
                    .await
                    .into_iter()
                    .map(|p| p.id),
            );
            next += n;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        ids
    });

    let store_b = b.store().await;
    let mut killed_at: Vec<u64> = Vec::new();
    for _ in 0..kills {
        let mut child = spawn_serve(&b);
        // Kill once B has made progress since the last kill.
        let before = killed_at.last().copied().unwrap_or(0);
        let s = store_b.clone();
        wait_until(120, "B to store more since the last kill", || {
            let s = s.clone();
            async move { s.count_indicators().await.unwrap() > before }
        })
        .await;
        child.kill().await.unwrap(); // SIGKILL: no clean shutdown, no flush
        killed_at.push(store_b.count_indicators().await.unwrap());
    }
    eprintln!("B SIGKILLed {kills} times, holding {killed_at:?} of {total}");
    let mid = killed_at.iter().filter(|n| **n < total).count() as u64;
    assert!(
        mid * 10 >= kills * 8,
        "most kills landed mid-transfer: {killed_at:?}"
    );
    let ids = pacer.await.unwrap();
    assert_eq!(ids.len() as u64, total);

    let mut child = spawn_serve(&b);
    let s = store_b.clone();
    wait_until(300, "B to hold everything after the last restart", || {
        let s = s.clone();
        async move { s.count_indicators().await.unwrap() >= total }
    })
    .await;
    child.kill().await.unwrap();
    let rows = store_b.indicators(None).await.unwrap();
    assert_eq!(rows.len() as u64, total, "0 lost, 0 duplicated");
    let got: HashSet<String> = rows.iter().map(|r| r.indicator_id.clone()).collect();
    assert_eq!(got, ids, "B holds exactly A's indicators, each once");
    assert!(store_b.rejections().await.unwrap().is_empty());
    assert_eq!(
        store_b.verify_audit().await.unwrap(),
        Ok(store_b.count_audit().await.unwrap())
    );
    store_b.close().await;

    // SQLite's integrity check of the file the killed process wrote.
    let reopened = b.store().await;
    let check = reopened.integrity_check().await.unwrap();
    reopened.close().await;
    assert_eq!(check, "ok");
    node_a.stop().await;
}

/// A -> B -> C, with B (the relay) a real process SIGKILLed again and again
/// while A publishes: every node ends with exactly A's set, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_again_and_again_leaves_every_node_with_exactly_the_origins_set() {
    let kills = 5;
    let total = 1000u32;
    let (a, b, c) = (
        Org::new("a.example"),
        Org::new("b.example"),
        Org::new("c.example"),
    );
    let relay_at = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    a.add_peer_with(&b, None, RELAY_POLICY).await;
    let node_a = start(&a).await;
    b.add_peer_with(&a, Some(node_a.addr), RELAY_POLICY).await;
    b.add_peer_with(&c, None, RELAY_POLICY).await;
    c.add_peer_with(&b, Some(relay_at), RELAY_POLICY).await;
    // C verifies A's signatures: it holds A's card (trusted, not dialled).
    c.add_card(&a.card(), None, None).await;
    let node_c = start(&c).await;

    let client = publisher(&a, &node_a);
    let pacer = tokio::spawn(async move {
        let mut ids = HashSet::new();
        for chunk in 0..(total / 50) {
            let drafts = (chunk * 50..chunk * 50 + 50)
                .map(|i| {
                    // Relayable: one hop (B) allowed.
                    let mut d = ipv4_draft(i, Tlp::Green);
                    let m = d.marking.as_mut().unwrap();
                    m.may_forward = true;
                    m.hop_limit = 1;
                    d
                })
                .collect();
            ids.extend(
                publish_all(&client, drafts, 16)
                    .await
                    .into_iter()
                    .map(|p| p.id),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ids
    });

    let store_b = b.store().await;
    let mut at_kill = Vec::new();
    for _ in 0..kills {
        let mut relay = spawn_serve_at(&b, Some(relay_at));
        let before = at_kill.last().copied().unwrap_or(0);
        let s = node_c.ctx.store.clone();
        // More through B since the last kill — unless C already holds all
        // of A's set (a relay can carry the whole rest in one lifetime, and
        // then there is no more to wait for).
        wait_until(
            120,
            "C to receive more through B since the last kill",
            || {
                let s = s.clone();
                async move {
                    let held = s.count_indicators().await.unwrap();
                    held > before || held >= u64::from(total)
                }
            },
        )
        .await;
        relay.kill().await.unwrap(); // SIGKILL
        at_kill.push(node_c.ctx.store.count_indicators().await.unwrap());
    }
    eprintln!("relay SIGKILLed {kills} times with C holding {at_kill:?} of {total}");
    let ids = pacer.await.unwrap();
    assert_eq!(ids.len() as u32, total);

    let mut relay = spawn_serve_at(&b, Some(relay_at));
    let s = node_c.ctx.store.clone();
    wait_until(120, "C to hold all of A's indicators", || {
        let s = s.clone();
        async move { s.count_indicators().await.unwrap() >= u64::from(total) }
    })
    .await;
    relay.kill().await.unwrap();
    let held = |rows: Vec<threatmesh::store::StoredIndicator>| {
        let n = rows.len();
        let set: HashSet<String> = rows.into_iter().map(|r| r.indicator_id.clone()).collect();
        (n, set)
    };
    for (name, rows) in [
        ("A", node_a.ctx.store.indicators(None).await.unwrap()),
        ("B", store_b.indicators(None).await.unwrap()),
        ("C", node_c.ctx.store.indicators(None).await.unwrap()),
    ] {
        let (n, set) = held(rows);
        assert_eq!(n as u32, total, "{name} holds each indicator once");
        assert_eq!(set, ids, "{name} holds exactly A's set");
    }
    store_b.close().await;
    node_c.stop().await;
    node_a.stop().await;
}
