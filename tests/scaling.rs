//! Outgrowing one machine. Replicas: several `serve` processes of one
//! organisation sharing one PostgreSQL database behind a TCP load balancer. Any replica takes
//! publishes; a subscriber on any replica sees every indicator, each once,
//! with no sequence number skipped while the other replica's transactions
//! commit; the ledger stays one chain; each partner link is dialled by one
//! replica, and taken over when it dies. Moving a store between SQLite and
//! PostgreSQL keeps its log, cursors and ledger. These tests need PostgreSQL
//! whatever backend the rest of the suite runs on ([`pg_server`]).

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use prost::Message;
use threatmesh::proto::v1::{Envelope, Indicator, SubscribeRequest, Tlp};
use tokio::process::Child;

/// Ids delivered on a Subscribe stream as `subscriber` to `node` (of
/// `org`), in order, until `want` distinct ids have come; with how many
/// deliveries that took.
async fn collect(
    org: &Org,
    node: &RunningNode,
    subscriber: &Org,
    want: usize,
) -> (Vec<String>, HashSet<String>) {
    let mut client =
        exchange_as(org, node, &subscriber.node_cert()).max_decoding_message_size(64 << 20);
    let mut stream = client
        .subscribe(SubscribeRequest {
            from_cursor: 0,
            log_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut all = Vec::new();
    let mut distinct = HashSet::new();
    while distinct.len() < want {
        let msg = tokio::time::timeout(Duration::from_secs(120), stream.message())
            .await
            .expect("a message within 120 s")
            .unwrap()
            .expect("the stream stays open");
        for d in msg.deliveries {
            let env = Envelope::decode(&d.envelope[..]).unwrap();
            let ind = Indicator::decode(env.payload.as_slice()).unwrap();
            all.push(ind.id.clone());
            distinct.insert(ind.id);
        }
    }
    (all, distinct)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_publishing_concurrently_deliver_every_indicator_once_to_a_subscriber_on_each()
{
    const EACH: u32 = 5_000;
    let a = Org::new_pg("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let r1 = start(&a).await;
    let r2 = start(&a).await;

    // B subscribes on both replicas from the start, before anything is
    // published: everything arrives live, while both replicas' writers
    // commit concurrently.
    let want = 2 * EACH as usize;
    let (a1, b1) = (&a, &b);
    let on_r1 = collect(a1, &r1, b1, want);
    let on_r2 = collect(a1, &r2, b1, want);
    let p1 = publisher(&a, &r1);
    let p2 = publisher(&a, &r2);
    let publishing = async {
        let (x, y) = tokio::join!(
            publish_all(
                &p1,
                (0..EACH).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
                32
            ),
            publish_all(
                &p2,
                (EACH..2 * EACH)
                    .map(|i| ipv4_draft(i, Tlp::Green))
                    .collect(),
                32
            ),
        );
        x.into_iter()
            .chain(y)
            .map(|r| r.id)
            .collect::<HashSet<String>>()
    };
    let (published, (all1, got1), (all2, got2)) = tokio::join!(publishing, on_r1, on_r2);
    assert_eq!(published.len(), want);
    for (replica, all, got) in [("r1", &all1, &got1), ("r2", &all2, &got2)] {
        assert_eq!(got, &published, "{replica}: every indicator, by id");
        assert_eq!(all.len(), want, "{replica}: each delivered exactly once");
    }

    // One log, one ledger chain, whichever replica reads it.
    let store = &r2.ctx.store;
    assert_eq!(store.count_indicators().await.unwrap(), want as u64);
    let rows = store.count_audit().await.unwrap();
    assert_eq!(r1.ctx.store.verify_audit().await.unwrap(), Ok(rows));
    let o = cli(&a, &r1, &["audit", "verify"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    r1.stop().await;
    r2.stop().await;
}

/// A replica of `org` as a real process on `listen`, with its metrics on
/// `metrics` (settings through the environment, as an operator would set
/// them per replica).
fn spawn_replica(org: &Org, listen: std::net::SocketAddr, metrics: std::net::SocketAddr) -> Child {
    serve_command(org)
        .env("THREATMESH__NODE__LISTEN", listen.to_string())
        .env("THREATMESH__METRICS__LISTEN", metrics.to_string())
        .env("THREATMESH__FEDERATION__BATCH_SIZE", "25")
        .spawn()
        .expect("start threatmesh serve")
}

/// `series` in a scrape of the metrics listener at `addr` (0 if the
/// listener does not answer or the series is absent).
async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return 0.0;
    }
    let (_, body) = http_get(addr, "/metrics").await;
    sample(&body, series).unwrap_or(0.0)
}

/// Indicators the replica at `addr` has sent to `partner` since it started.
async fn sent_to(addr: std::net::SocketAddr, partner: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    let prefix = format!("threatmesh_releases_total{{partner=\"{partner}\"");
    body.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains("decision=\"sent\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn link_state_is(metrics: std::net::SocketAddr, partner: &str, state: &str) {
    let series = format!("threatmesh_link_state{{partner=\"{partner}\",state=\"{state}\"}}");
    wait_until(60, &format!("{partner}'s link to be {state}"), || {
        let series = series.clone();
        async move { metric(metrics, &series).await == 1.0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_hands_its_subscriber_and_its_links_to_the_other() {
    const TOTAL: u32 = 2_000;
    let a = Org::new_pg("a.example");
    let b = Org::new("b.example");
    let c = Org::new("c.example");
    // C is a partner A dials (A reads C's log); B reads A's through the
    // balancer in front of A's two replicas.
    c.add_peer(&a, None).await;
    let node_c = start(&c).await;
    a.add_peer(&b, None).await;
    a.add_peer(&c, Some(node_c.addr)).await;
    let (addr1, addr2) = (free_addr(), free_addr());
    let (metrics1, metrics2) = (free_addr(), free_addr());
    let lb = Balancer::start(vec![addr1, addr2]).await;

    // Replica 1 first: it takes the lease on C's link; replica 2 stands by.
    let mut r1 = spawn_replica(&a, addr1, metrics1);
    link_state_is(metrics1, "c.example", "connected").await;
    let _r2 = spawn_replica(&a, addr2, metrics2);
    link_state_is(metrics2, "c.example", "standby").await;
    assert_eq!(
        metric(
            metrics1,
            "threatmesh_link_state{partner=\"c.example\",state=\"connected\"}"
        )
        .await,
        1.0,
        "exactly one replica dials C"
    );

    // Everything published (at replica 2) before B subscribes: B's
    // transfer, through the balancer to replica 1, takes many batches.
    let at_r2 = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
        addr2,
        &a.id,
        &a.ca_pem(),
        Some(&a.publisher_cert()),
    ));
    let published: HashSet<String> = publish_all(
        &at_r2,
        (0..TOTAL).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        32,
    )
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    b.add_peer(&a, Some(lb.addr)).await;
    let node_b = start(&b).await;
    let store_b = node_b.ctx.store.clone();
    wait_until(120, "B to hold some of A's indicators", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() >= 100 }
    })
    .await;
    r1.kill().await.unwrap(); // SIGKILL: no clean shutdown
    let at_kill = store_b.count_indicators().await.unwrap();
    eprintln!("replica 1 killed with B holding {at_kill} of {TOTAL}");
    assert!(at_kill < u64::from(TOTAL), "killed mid-stream");

    // B reconnects through the balancer to replica 2 and resumes from its
    // cursor: everything arrives, each once, and replica 2 sent only what
    // B did not hold yet.
    wait_until(120, "B to hold all of A's indicators", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() >= u64::from(TOTAL) }
    })
    .await;
    let rows = store_b.indicators(None).await.unwrap();
    assert_eq!(rows.len(), TOTAL as usize, "nothing twice");
    let got: HashSet<String> = rows.iter().map(|r| r.indicator_id.clone()).collect();
    assert_eq!(got, published, "nothing lost");
    let resent = sent_to(metrics2, "b.example").await;
    eprintln!("replica 2 sent B {resent} after the kill");
    assert!(
        resent <= f64::from(TOTAL) - at_kill as f64,
        "replica 2 resumed from B's cursor: it sent {resent}, B already held {at_kill}"
    );

    // Replica 2 takes over C's link: what C publishes now reaches A.
    link_state_is(metrics2, "c.example", "connected").await;
    let late = publish_all(
        &publisher(&c, &node_c),
        vec![ipv4_draft(900_000, Tlp::Green)],
        1,
    )
    .await
    .remove(0);
    let store_a = a.store().await;
    wait_until(60, "C's new indicator to reach A", || {
        let (s, id) = (store_a.clone(), late.id.clone());
        async move { s.indicator_by_id(&id).await.unwrap().is_some() }
    })
    .await;
    let by_origin: HashMap<String, usize> =
        store_a
            .indicators(None)
            .await
            .unwrap()
            .iter()
            .fold(HashMap::new(), |mut m, r| {
                *m.entry(r.origin_org.clone()).or_default() += 1;
                m
            });
    assert_eq!(by_origin.get("c.example"), Some(&1));
    assert_eq!(
        store_a.verify_audit().await.unwrap(),
        Ok(store_a.count_audit().await.unwrap())
    );
    store_a.close().await;
    node_b.stop().await;
    node_c.stop().await;
}

/// `threatmesh store copy --from .. --to ..`, run as an operator would.
fn store_copy(org: &Org, from: &str, to: &str) -> std::process::Output {
    operator(org, None, &["store", "copy", "--from", from, "--to", to])
}

/// `threatmesh ARGS` for `org`, as an operator would run it; `node`: where
/// its node answers, if it runs.
fn operator(org: &Org, node: Option<std::net::SocketAddr>, args: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"));
    c.arg("--config").arg(&org.config).args(args);
    if let Some(addr) = node {
        c.env("THREATMESH_SERVER", addr.to_string());
    }
    c.output().unwrap()
}

fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_copied_to_postgres_serves_its_partners_from_their_cursors() {
    // A history in SQLite: a partner, a policy, 50 indicators B has read.
    let (mut a, _b, node_a, node_b) = linked_pair_with(Org::new_sqlite("a.example")).await;
    let addr = node_a.addr;
    let first: HashSet<String> = publish_all(
        &publisher(&a, &node_a),
        (0..50).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        8,
    )
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    caught_up(&node_b, &a, &node_a).await;
    let log_id = node_a.ctx.log_id.clone();
    let cursor = node_b.ctx.store.cursor(&a.id).await.unwrap();
    let db = PgDatabase::create(&pg_server());
    let sqlite = a.settings.store.path.to_str().unwrap().to_string();
    // Not while the node runs (what it writes meanwhile would be missing).
    let o = operator(
        &a,
        Some(addr),
        &["store", "copy", "--from", &sqlite, "--to", &db.url()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(said(&o).contains("stop it"), "{}", said(&o));
    node_a.stop().await;

    // Copied into an empty PostgreSQL database, checked by the copy itself.
    let o = store_copy(&a, &sqlite, &db.url());
    assert!(o.status.success(), "{}", said(&o));
    assert!(said(&o).contains("ledger intact"), "{}", said(&o));
    assert!(
        said(&o).contains(&log_id),
        "the log identity is kept: {}",
        said(&o)
    );
    // A second copy into the same (now full) database is refused.
    let o = store_copy(&a, &sqlite, &db.url());
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(said(&o).contains("not empty"), "{}", said(&o));

    // A now serves from PostgreSQL on the same address: B resumes from
    // its cursor, so A sends only what is new.
    a.settings.store.url = db.url();
    let node_a = start_on(&a, tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    assert_eq!(node_a.ctx.log_id, log_id);
    assert_eq!(node_a.ctx.store.latest_seq().await.unwrap(), cursor);
    let second: HashSet<String> = publish_all(
        &publisher(&a, &node_a),
        (50..80).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        8,
    )
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();
    caught_up(&node_b, &a, &node_a).await;
    let held: HashSet<String> = ids_at(&node_b).await.into_iter().collect();
    assert_eq!(held, first.union(&second).cloned().collect::<HashSet<_>>());
    let sent = sent_to(node_a.metrics, "b.example").await;
    assert_eq!(
        sent, 30.0,
        "only the new indicators were sent after the move"
    );
    let store = &node_a.ctx.store;
    assert_eq!(
        store.verify_audit().await.unwrap(),
        Ok(store.count_audit().await.unwrap())
    );
    node_a.stop().await;

    // And back: PostgreSQL into a new SQLite file, the same log and ledger.
    let back = a.dir.path().join("back.db");
    let o = store_copy(&a, &db.url(), back.to_str().unwrap());
    assert!(o.status.success(), "{}", said(&o));
    let copy = threatmesh::store::Store::open_sqlite(&back, threatmesh::clock::Clock::system())
        .await
        .unwrap();
    assert_eq!(copy.count_indicators().await.unwrap(), 80);
    assert_eq!(copy.log_id().await.unwrap(), log_id);
    assert_eq!(
        copy.verify_audit().await.unwrap(),
        Ok(copy.count_audit().await.unwrap())
    );
    copy.close().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_put_back_from_a_backup_is_read_again_by_its_partners() {
    let (mut a, _b, node_a, node_b) = linked_pair_with(Org::new_pg("a.example")).await;
    let addr = node_a.addr;
    let client = publisher(&a, &node_a);
    publish_all(
        &client,
        (0..50).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        8,
    )
    .await;
    node_a.stop().await;
    // The backup (PostgreSQL's own tools would make it; a copy into a
    // second database stands in for them).
    let backup = PgDatabase::create(&pg_server());
    let o = store_copy(&a, &a.settings.store.url.clone(), &backup.url());
    assert!(o.status.success(), "{}", said(&o));
    let node_a = start_on(&a, tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    publish_all(
        &publisher(&a, &node_a),
        (50..100).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        8,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    let old_log = node_a.ctx.log_id.clone();
    // Not while the node runs.
    let o = operator(&a, Some(addr), &["store", "restored", "--from", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", said(&o));
    assert!(said(&o).contains("stop it"), "{}", said(&o));
    node_a.stop().await;

    // Put back: A now runs on the backup, whose sequence numbers 51-100
    // will be reused. `store restored` gives the log a new identity.
    a.settings.store.url = backup.url();
    let config = std::fs::read_to_string(&a.config).unwrap();
    let old_url = a.pg.as_ref().unwrap().url();
    std::fs::write(&a.config, config.replace(&old_url, &backup.url())).unwrap();
    let o = operator(
        &a,
        Some(addr),
        &["store", "restored", "--from", "the nightly backup"],
    );
    assert!(o.status.success(), "{}", said(&o));
    assert!(said(&o).contains("log up to seq 50"), "{}", said(&o));
    let node_a = start_on(&a, tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    assert_ne!(node_a.ctx.log_id, old_log);
    publish_all(
        &publisher(&a, &node_a),
        (1000..1100).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        8,
    )
    .await;
    // B reads the restored log from its start: the 100 new arrive, not
    // only those beyond its old cursor of 100.
    let store = node_b.ctx.store.clone();
    wait_until(60, "B to hold the 100 from before and the 100 new", || {
        let s = store.clone();
        async move { s.count_indicators().await.unwrap() >= 200 }
    })
    .await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 200);
    let rows = node_a.ctx.store.audit_rows(None, None).await.unwrap();
    assert!(
        rows.iter()
            .any(|r| r.entry.event == "store-restored" && r.entry.detail.contains("nightly")),
        "the ledger records the restore"
    );
    node_b.stop().await;
    node_a.stop().await;
}
