//! What one caller can hold open is bounded: connections that never finish
//! the TLS handshake, or finish it without a certificate, cannot use up the
//! node's connections and lock partners and admins out.

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use common::*;
use threatmesh::identity::{SharedTrust, SpiffeId, TrustStore, client_config};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// Whether the node has closed `s` (EOF or a reset), without waiting.
fn closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_certificate_less_connections_cannot_lock_partners_and_admins_out() {
    let mut a = Org::new("a.example");
    a.settings.node.max_unverified_per_address = 8;
    a.settings.node.max_unverified = 12;
    a.settings.node.unverified_grace_ms = 200;
    let node = start(&a).await;

    // 40 connections from 127.0.0.2 that never start the handshake: 8 are
    // held (until the handshake timeout), the other 32 closed at once.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        flood.push(s.connect(node.addr).await.unwrap());
    }
    let ctx = node.ctx.clone();
    wait_until(30, "8 unverified connections held", || {
        let ctx = ctx.clone();
        async move { ctx.conns.unverified() == 8 }
    })
    .await;
    let flood = Arc::new(flood);
    let f = flood.clone();
    wait_until(30, "32 flood connections closed", || {
        let f = f.clone();
        async move { f.iter().filter(|s| closed(s)).count() >= 32 }
    })
    .await;

    // Ten more from 127.0.0.3: 8 (its address limit) are taken, 2 refused,
    // and to stay within the total of 12 the 4 oldest from 127.0.0.2 make
    // room.
    let mut second = Vec::new();
    for _ in 0..10 {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        second.push(s.connect(node.addr).await.unwrap());
    }
    let second = Arc::new(second);
    let (f, s2) = (flood.clone(), second.clone());
    wait_until(30, "36 + 2 flood connections closed", || {
        let (f, s2) = (f.clone(), s2.clone());
        async move {
            f.iter().filter(|s| closed(s)).count() >= 36
                && s2.iter().filter(|s| closed(s)).count() >= 2
        }
    })
    .await;
    assert!(node.ctx.conns.unverified() <= 12);

    // With the total full of idle connections, the admin (from 127.0.0.1)
    // still gets in: the oldest idle one makes room for it.
    let o = cli(&a, &node, &["status", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // A TLS connection without a client certificate that sends nothing is
    // closed after the grace period instead of being kept forever.
    let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(
        TrustStore::new(a.id.clone(), &a.ca_pem()).unwrap(),
    ));
    let tls = client_config(trust, SpiffeId::node(&a.id), None).unwrap();
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("a.example").unwrap();
    let mut conn = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "a certificate-less connection was kept open");
    node.stop().await;
}
