//! Revoking one of our own certificates while it is connected.

mod common;

use common::*;
use threatmesh::identity::CertifiedKey;
use threatmesh::proto::v1::{PublishRequest, Tlp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_publisher_is_refused_on_its_next_rpc() {
    let a = Org::new("a.example");
    let other = Org::new("y.example");
    let node = start(&a).await;

    // A second publisher, issued with the CLI.
    let out = a.dir.path().join("feeds");
    let o = cli(
        &a,
        &node,
        &[
            "certs",
            "issue",
            "--role",
            "publisher",
            "--name",
            "feed-2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("issued spiffe://a.example/publisher/feed-2")
    );
    let feed2 = CertifiedKey::load(&out.join("feed-2.pem"), &out.join("feed-2.key")).unwrap();

    // The default publisher has an open connection and publishes.
    let mut open = publisher(&a, &node);
    open.publish(PublishRequest {
        indicator: Some(ipv4_draft(1, Tlp::Green)),
        ..Default::default()
    })
    .await
    .unwrap();

    let cert = a
        .settings
        .client
        .publisher_cert
        .to_str()
        .unwrap()
        .to_string();
    let o = cli(
        &a,
        &node,
        &[
            "certs",
            "revoke",
            "--cert",
            &cert,
            "--reason",
            "laptop stolen",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // In force when the command returns, and the open connection was closed.
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("1 open connection(s) closed"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let serial = threatmesh::identity::cert_serial(a.publisher_cert().chain[0].as_ref()).unwrap();
    assert!(node.ctx.view.load().trust.is_revoked(&serial));

    // The same client, next RPC (its connection was closed, so it dials
    // again): refused, with the reason. A call the client sent on the
    // closing connection before it saw the close never reached the node
    // (a transport error, seen once in CI's PostgreSQL pass); it is sent
    // again, as a client would.
    let mut err = None;
    for _ in 0..3 {
        let e = open
            .publish(PublishRequest {
                indicator: Some(ipv4_draft(2, Tlp::Green)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        // The node answers no call Unknown: that is the client's own
        // transport failing.
        let transport = e.code() == tonic::Code::Unknown;
        err = Some(e);
        if !transport {
            break;
        }
    }
    let err = err.expect("at least one attempt");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("has been revoked"),
        "{}",
        err.message()
    );
    // A new connection with it: refused too.
    let err = publisher(&a, &node)
        .publish(PublishRequest {
            indicator: Some(ipv4_draft(3, Tlp::Green)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    // The other publisher is unaffected.
    exchange_as(&a, &node, &feed2)
        .publish(PublishRequest {
            indicator: Some(ipv4_draft(4, Tlp::Green)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 2);

    // On the ledger, with who did it and why; revoking again is a no-op.
    let rows = node.ctx.store.audit_rows(None, None).await.unwrap();
    let r = rows
        .iter()
        .find(|r| r.entry.event == "cert-revoked")
        .unwrap();
    assert!(
        r.entry
            .subject
            .contains("spiffe://a.example/publisher/publisher")
            && r.entry.detail == "laptop stolen"
    );
    assert_eq!(r.entry.actor, "spiffe://a.example/admin/admin");
    let o = cli(&a, &node, &["certs", "revoke", "--cert", &cert]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already revoked"));
    // A certificate from another org's CA cannot be revoked here.
    let foreign = other
        .settings
        .client
        .publisher_cert
        .to_str()
        .unwrap()
        .to_string();
    let o = cli(&a, &node, &["certs", "revoke", "--cert", &foreign]);
    assert_eq!(
        o.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    node.stop().await;
}

/// The serial of the certificate a fresh TLS connection to `node` is served.
async fn served_serial(org: &Org, node: &RunningNode) -> String {
    use std::sync::Arc;
    let trust = Arc::new(arc_swap::ArcSwap::from_pointee(
        threatmesh::identity::TrustStore::new(org.id.clone(), &org.ca_pem()).unwrap(),
    ));
    let cfg = threatmesh::identity::client_config(
        trust,
        threatmesh::identity::SpiffeId::node(&org.id),
        Some(&org.admin_cert()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(org.id.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    threatmesh::identity::cert_serial(leaf.as_ref()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_node_certificate_is_served_without_restart_while_partners_stream() {
    let (a, _b, node_a, node_b) = linked_pair().await;
    let client = publisher(&a, &node_a);
    let before = publish_all(&client, vec![ipv4_draft(1, Tlp::Green)], 1).await;
    let store_b = node_b.ctx.store.clone();
    wait_until(30, "B to receive before rotation", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() == 1 }
    })
    .await;
    let old = served_serial(&a, &node_a).await;
    let links_before = node_b.ctx.links.snapshot()[&a.id].since_ms;

    let o = cli(&a, &node_a, &["certs", "rotate"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (org, node) = (&a, &node_a);
    let old2 = old.clone();
    wait_until(10, "new connections to get the new certificate", || {
        let old = old2.clone();
        async move { served_serial(org, node).await != old }
    })
    .await;

    // B's stream was not interrupted, and keeps delivering.
    let after = publish_all(&client, vec![ipv4_draft(2, Tlp::Green)], 1).await;
    wait_until(30, "B to receive after rotation", || {
        let s = store_b.clone();
        async move { s.count_indicators().await.unwrap() == 2 }
    })
    .await;
    let ids: Vec<String> = store_b
        .indicators(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.indicator_id.clone())
        .collect();
    assert_eq!(ids, vec![before[0].id.clone(), after[0].id.clone()]);
    let h = &node_b.ctx.links.snapshot()[&a.id];
    assert_eq!(h.state, threatmesh::federation::LinkState::Connected);
    assert_eq!(
        h.since_ms, links_before,
        "B's link stayed up through the rotation"
    );

    // A pair that does not belong together is refused; the node keeps serving.
    std::fs::write(
        &a.settings.tls.node_key,
        std::fs::read(&a.settings.client.admin_key).unwrap(),
    )
    .unwrap();
    assert!(!node_a.ctx.reload_node_cert());
    let current = served_serial(&a, &node_a).await;
    assert_ne!(current, old);
    node_b.stop().await;
    node_a.stop().await;
}
