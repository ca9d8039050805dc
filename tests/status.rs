//! `Admin.Status` and `threatmesh status`: each link with its state and lag.

mod common;

use common::*;
use threatmesh::proto::v1::admin_client::AdminClient;
use threatmesh::proto::v1::{LinkStatus, StatusRequest, Tlp};

async fn link_at(node: &RunningNode, org: &Org, partner: &str) -> LinkStatus {
    let mut admin = AdminClient::new(channel_with(
        node.addr,
        &org.id,
        &org.ca_pem(),
        Some(&org.admin_cert()),
    ));
    let s = admin.status(StatusRequest {}).await.unwrap().into_inner();
    s.links
        .into_iter()
        .find(|l| l.partner == partner)
        .expect("partner listed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_link_with_state_and_lag() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = listener.local_addr().unwrap();
    let node_a = start_on(&a, listener).await;
    b.add_peer(&a, Some(a_addr)).await;
    let node_b = start(&b).await;
    let client = publisher(&a, &node_a);
    publish_all(
        &client,
        (0..3).map(|i| ipv4_draft(i, Tlp::Green)).collect(),
        1,
    )
    .await;

    let latest = node_a.ctx.store.latest_seq().await.unwrap();
    let (node, org) = (&node_b, &b);
    wait_until(30, "B's link to A connected and caught up", || async move {
        let l = link_at(node, org, "a.example").await;
        l.state == "connected" && l.cursor == latest && l.lag == 0 && l.last_message_unix_ms > 0
    })
    .await;
    let l = link_at(&node_b, &b, "a.example").await;
    assert_eq!(l.upstream_latest, latest);
    assert_eq!(l.policy, "test-open");
    assert_eq!(l.endpoint, a_addr.to_string());

    // A's side: B is a partner A does not dial.
    let l = link_at(&node_a, &a, "b.example").await;
    assert_eq!(l.state, "not-dialled");

    // The CLI shows the same, as a table and as JSON.
    let cli = |json: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"));
        c.args(["status", "--config"]).arg(&b.config);
        if json {
            c.arg("--json");
        }
        c.env("THREATMESH__CLIENT__SERVER", node_b.addr.to_string())
            .output()
            .unwrap()
    };
    let o = cli(false);
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(table.contains("b.example: 3 indicator versions"), "{table}");
    let row = table.lines().find(|l| l.starts_with("a.example")).unwrap();
    assert!(
        row.contains("connected") && row.contains("test-open"),
        "{row}"
    );
    let v: serde_json::Value = serde_json::from_slice(&cli(true).stdout).unwrap();
    assert_eq!(v["links"][0]["lag"], 0);

    // A goes away: B reports the link down, with the reason.
    node_a.stop().await;
    let (node, org) = (&node_b, &b);
    wait_until(30, "B to report the link down", || async move {
        let l = link_at(node, org, "a.example").await;
        l.state != "connected" && !l.last_error.is_empty()
    })
    .await;

    // Only our own admins may ask.
    let mut as_partner = AdminClient::new(channel_with(
        node_b.addr,
        &b.id,
        &b.ca_pem(),
        Some(&a.node_cert()),
    ));
    let err = as_partner.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let mut as_partner_admin = AdminClient::new(channel_with(
        node_b.addr,
        &b.id,
        &b.ca_pem(),
        Some(&a.admin_cert()),
    ));
    let err = as_partner_admin.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message().contains("only spiffe://b.example/admin/"),
        "{}",
        err.message()
    );
    let mut as_publisher = AdminClient::new(channel_with(
        node_b.addr,
        &b.id,
        &b.ca_pem(),
        Some(&b.publisher_cert()),
    ));
    let err = as_publisher.status(StatusRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_from_before_the_link_came_up_is_shown_as_past_with_its_time() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let node_a = start(&a).await;
    // B dials A before A has registered B: refused.
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    link_error(&node_b, &a, "registered", 30).await;
    let l = link_at(&node_b, &b, "a.example").await;
    assert!(!l.last_error_past && l.last_error_unix_ms > 0, "{l:?}");
    // A registers B; the link comes up. The refusal is history now.
    a.add_peer(&b, None).await;
    let (node, org) = (&node_b, &b);
    wait_until(30, "B's link to come up", || async move {
        link_at(node, org, "a.example").await.state == "connected"
    })
    .await;
    let l = link_at(&node_b, &b, "a.example").await;
    assert!(l.last_error_past, "{l:?}");
    assert!(l.last_error.contains("registered"), "{l:?}");
    let o = cli(&b, &node_b, &["status"]);
    let table = String::from_utf8_lossy(&o.stdout);
    let row = table.lines().find(|l| l.starts_with("a.example")).unwrap();
    assert!(
        row.contains("connected") && row.contains("(past, "),
        "{row}"
    );
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_link_is_noticed_by_keepalive_and_recovers() {
    let a = Org::new("a.example");
    let mut b = Org::new("b.example");
    b.settings.node.keepalive_interval_ms = 300;
    b.settings.node.keepalive_timeout_ms = 300;
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    let proxy = FaultProxy::start(node_a.addr).await;
    b.add_peer(&a, Some(proxy.addr)).await;
    let node_b = start(&b).await;
    publish_all(&publisher(&a, &node_a), vec![ipv4_draft(1, Tlp::Green)], 1).await;
    caught_up(&node_b, &a, &node_a).await;

    // The route dies without closing anything: B notices by keepalive, not
    // by waiting for data that never comes, and stops reporting "connected".
    proxy.freeze();
    let (node, org) = (&node_b, &b);
    wait_until(30, "B to notice the frozen link", || async move {
        link_at(node, org, "a.example").await.state != "connected"
    })
    .await;
    let l = link_at(&node_b, &b, "a.example").await;
    assert!(!l.last_error.is_empty() && !l.last_error_past, "{l:?}");

    // The route comes back: B reconnects and what was published meanwhile
    // arrives.
    publish_all(&publisher(&a, &node_a), vec![ipv4_draft(2, Tlp::Green)], 1).await;
    proxy.heal();
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 2);
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_hears_heartbeats_so_its_last_message_stays_true() {
    let mut a = Org::new("a.example");
    a.settings.federation.heartbeat_ms = 100;
    let (a, b, node_a, node_b) = linked_pair_with(a).await;
    publish_all(&publisher(&a, &node_a), vec![ipv4_draft(1, Tlp::Green)], 1).await;
    caught_up(&node_b, &a, &node_a).await;
    let first = link_at(&node_b, &b, "a.example").await;
    let ledger_rows = node_b.ctx.store.count_audit().await.unwrap();
    // Nothing is published; the link still hears from A.
    let (node, org) = (&node_b, &b);
    let seen = first.last_message_unix_ms;
    wait_until(30, "a heartbeat from A", || async move {
        link_at(node, org, "a.example").await.last_message_unix_ms > seen
    })
    .await;
    let l = link_at(&node_b, &b, "a.example").await;
    assert_eq!(
        (l.state.as_str(), l.lag, l.upstream_latest),
        ("connected", 0, 1)
    );
    // Heartbeats store nothing.
    assert_eq!(node_b.ctx.store.count_audit().await.unwrap(), ledger_rows);
    node_b.stop().await;
    node_a.stop().await;
}

/// The sum of the samples of `name` whose labels contain every one of
/// `labels` (e.g. `decision="sent"`).
fn total(scrape: &str, name: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Prometheus metrics and probes, without a client certificate: the named
/// series move under traffic, per partner and rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_follow_publishes_releases_links_and_refused_handshakes() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer_with(
        &b,
        None,
        "name = \"b-ipv4\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\nkinds = [\"ipv4\"]\n",
    )
    .await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;

    let (code, body) = http_get(node_a.metrics, "/livez").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(node_a.metrics, "/readyz").await;
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, before) = http_get(node_a.metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(before.ends_with("# EOF\n"), "{before}");
    assert_eq!(sample(&before, "threatmesh_published_total"), Some(0.0));

    publish_all(
        &publisher(&a, &node_a),
        vec![
            ipv4_draft(1, Tlp::Green),
            ipv4_draft(2, Tlp::Clear),
            draft(
                threatmesh::proto::v1::IndicatorKind::Domain,
                "held.example",
                Tlp::Green,
                &[],
            ),
        ],
        1,
    )
    .await;
    caught_up(&node_b, &a, &node_a).await;
    // The ledger rows of what was sent are durable before it is sent; the
    // counters move with them.
    let (_, after) = http_get(node_a.metrics, "/metrics").await;
    assert_eq!(sample(&after, "threatmesh_published_total"), Some(3.0));
    assert_eq!(
        total(
            &after,
            "threatmesh_releases_total",
            &["partner=\"b.example\"", "decision=\"sent\""]
        ),
        2.0,
        "{after}"
    );
    assert_eq!(
        total(
            &after,
            "threatmesh_releases_total",
            &[
                "partner=\"b.example\"",
                "decision=\"withheld\"",
                "rule=\"kind-not-allowed\""
            ]
        ),
        1.0,
        "{after}"
    );
    assert!(sample(&after, "threatmesh_commit_seconds_count").unwrap() >= 1.0);
    assert_eq!(sample(&after, "threatmesh_log_seq"), Some(3.0));
    assert!(sample(&after, "threatmesh_store_bytes").unwrap() > 0.0);

    // B's link to A: connected, no lag, a clock offset.
    let (_, at_b) = http_get(node_b.metrics, "/metrics").await;
    assert_eq!(
        sample(
            &at_b,
            "threatmesh_link_state{partner=\"a.example\",state=\"connected\"}"
        ),
        Some(1.0),
        "{at_b}"
    );
    assert_eq!(
        sample(&at_b, "threatmesh_link_lag{partner=\"a.example\"}"),
        Some(0.0)
    );
    assert!(
        sample(
            &at_b,
            "threatmesh_link_clock_offset_seconds{partner=\"a.example\"}"
        )
        .is_some(),
        "{at_b}"
    );

    // Something that is not TLS at A's gRPC port: counted by reason.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(node_a.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let _ = s.read_to_end(&mut Vec::new()).await;
    }
    let m = node_a.metrics;
    wait_until(10, "the refused handshake to be counted", || async move {
        let (_, s) = http_get(m, "/metrics").await;
        sample(
            &s,
            "threatmesh_tls_handshake_failures_total{reason=\"not-tls\"}",
        ) == Some(1.0)
    })
    .await;
    node_b.stop().await;
    node_a.stop().await;
}

/// `/readyz` answers 503 with the reason when the store does not answer,
/// while `/livez` still says the process is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_with_the_reason_when_the_store_does_not_answer() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    assert_eq!(http_get(node.metrics, "/readyz").await.0, 200);
    node.ctx.store.close().await;
    let (code, body) = http_get(node.metrics, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("store: "), "{body}");
    assert_eq!(http_get(node.metrics, "/livez").await.0, 200);
}
