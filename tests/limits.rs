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

/// A TLS connection to `node` (of org `a`) presenting `cert`, with
/// nothing sent yet.
async fn tls_to(
    a: &Org,
    node: &RunningNode,
    cert: Option<&threatmesh::identity::CertifiedKey>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(
        TrustStore::new(a.id.clone(), &a.ca_pem()).unwrap(),
    ));
    let tls = client_config(trust, SpiffeId::node(&a.id), cert).unwrap();
    let tcp = TcpStream::connect(node.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(a.id.as_str().to_string()).unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap()
}

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
    let mut conn = tls_to(&a, &node, None).await;
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

/// The ledger rows `node` wrote for `partner` going over `setting`.
async fn limit_rows(node: &RunningNode, partner: &str, setting: &str) -> usize {
    let rows = node
        .ctx
        .store
        .audit_rows(Some(partner), None)
        .await
        .unwrap();
    rows.iter()
        .filter(|r| r.entry.rule == "limit-reached" && r.entry.detail.starts_with(setting))
        .count()
}

fn subscribe_from(cursor: u64) -> threatmesh::proto::v1::SubscribeRequest {
    threatmesh::proto::v1::SubscribeRequest {
        from_cursor: cursor,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_hold_more_subscribe_streams_than_its_share() {
    let mut a = Org::new("a.example");
    a.settings.limits.max_streams_per_partner = 2;
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node = start(&a).await;
    let mut as_b = exchange_as(&a, &node, &b.node_cert());

    let first = as_b.subscribe(subscribe_from(0)).await.unwrap();
    let _second = as_b.subscribe(subscribe_from(0)).await.unwrap();
    let third = as_b.subscribe(subscribe_from(0)).await.unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    assert!(
        third.message().contains("limits.max_streams_per_partner"),
        "{third:?}"
    );
    let _fourth = as_b.subscribe(subscribe_from(0)).await.unwrap_err();
    assert_eq!(
        limit_rows(&node, "b.example", "limits.max_streams_per_partner").await,
        1,
        "one ledger row for repeated hits"
    );

    // Another partner is still served.
    let mut as_c = exchange_as(&a, &node, &c.node_cert());
    as_c.subscribe(subscribe_from(0)).await.unwrap();

    // A stream the partner drops frees its slot while the log is idle.
    drop(first);
    let ctx = node.ctx.clone();
    let b_id = b.id.clone();
    wait_until(30, "b's dropped stream to free its slot", || {
        let (ctx, b_id) = (ctx.clone(), b_id.clone());
        async move { ctx.quota.streams(&b_id) == 1 }
    })
    .await;
    as_b.subscribe(subscribe_from(0)).await.unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_over_its_request_rate_is_refused_and_others_are_served() {
    let mut a = Org::new("a.example");
    a.settings.limits.partner_requests_per_second = 1;
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node = start(&a).await;
    let mut as_b = exchange_as(&a, &node, &b.node_cert());
    let mut refused = 0;
    for _ in 0..50 {
        match as_b
            .get_card(threatmesh::proto::v1::GetCardRequest {})
            .await
        {
            Ok(_) => {}
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
                assert!(s.message().contains("limits.partner_requests_per_second"));
                refused += 1;
            }
        }
    }
    // A burst of 2 at 1/s: 50 requests cannot all pass unless they took
    // 48 s.
    assert!(refused > 0, "no request of the 50 was refused");
    assert_eq!(
        limit_rows(&node, "b.example", "limits.partner_requests_per_second").await,
        1
    );
    // Other partners and our own admins are not charged for b's flood.
    let mut as_c = exchange_as(&a, &node, &c.node_cert());
    as_c.get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap();
    let mut own = exchange_as(&a, &node, &a.admin_cert());
    for _ in 0..5 {
        own.get_card(threatmesh::proto::v1::GetCardRequest {})
            .await
            .unwrap();
    }
    node.stop().await;
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 4;

/// The HPACK block of a GetCard request (literals, no Huffman, no table).
fn get_card_headers() -> Vec<u8> {
    let mut h = vec![0x83, 0x87]; // :method POST, :scheme https
    let mut literal = |name_index: &[u8], value: &str| {
        h.extend(name_index);
        h.push(value.len() as u8);
        h.extend(value.as_bytes());
    };
    literal(&[0x04], "/threatmesh.v1.Exchange/GetCard"); // :path
    literal(&[0x01], "a.example"); // :authority
    literal(&[0x0f, 0x10], "application/grpc"); // content-type
    h.extend([0x00, 0x02]);
    h.extend(b"te");
    h.extend([0x08]);
    h.extend(b"trailers");
    h
}

/// Opens an HTTP/2 connection as `cert`, lets `flood` write frames into it,
/// and reads until the node closes it. Returns the GOAWAY error code the
/// node sent, if any, and how many bytes of the flood were written.
async fn flood_h2(
    a: &Org,
    node: &RunningNode,
    cert: &threatmesh::identity::CertifiedKey,
    flood: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (Option<u32>, usize) {
    use tokio::io::AsyncWriteExt;
    let conn = tls_to(a, node, Some(cert)).await;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        let mut written = 0;
        let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        start.extend(frame(SETTINGS, 0, 0, &[]));
        if wr.write_all(&start).await.is_err() {
            return written;
        }
        for f in flood {
            if wr.write_all(&f).await.is_err() {
                return written;
            }
            written += f.len();
        }
        let _ = wr.flush().await;
        written
    });
    let mut goaway = None;
    // Bounded only so a regression fails instead of hanging the suite.
    let read = tokio::time::timeout(std::time::Duration::from_secs(120), async {
        loop {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return;
            }
            if head[3] == GOAWAY && len >= 8 {
                goaway = Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the node kept the flooding connection open");
    (goaway, writer.await.unwrap())
}

/// ENHANCE_YOUR_CALM, the HTTP/2 error for a peer that is flooding.
const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_rapid_reset_flood_closes_the_connection_and_partners_are_served() {
    let a = Org::new("a.example");
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node = start(&a).await;
    const STREAMS: u32 = 100_000;
    let headers = get_card_headers();
    let flood = (0..STREAMS).map(move |i| {
        let id = 2 * i + 1;
        let mut f = frame(HEADERS, END_HEADERS, id, &headers);
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        f
    });
    let (goaway, written) = flood_h2(&a, &node, &b.node_cert(), flood).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "written {written} bytes");
    let one = frame(HEADERS, END_HEADERS, 1, &get_card_headers()).len() * 2;
    assert!(
        written < one * STREAMS as usize,
        "the whole flood of {STREAMS} resets was taken"
    );
    let mut as_c = exchange_as(&a, &node, &c.node_cert());
    as_c.get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_continuation_flood_closes_the_connection_and_partners_are_served() {
    let a = Org::new("a.example");
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node = start(&a).await;
    // One header block that never ends: literal "x-pad" headers of 1,000
    // bytes each, 16 KiB per CONTINUATION frame, 64 MiB offered.
    let mut pad = vec![0x00, 0x05];
    pad.extend(b"x-pad");
    pad.extend([0x7f, 0xe9, 0x06]); // length 1000 (127 + 873)
    pad.extend([b'a'; 1000]);
    let chunk: Vec<u8> = pad.iter().copied().cycle().take(16 * 1024).collect();
    const FRAMES: usize = 4096;
    let first = frame(HEADERS, 0, 1, &get_card_headers());
    let flood =
        std::iter::once(first).chain((0..FRAMES).map(move |_| frame(CONTINUATION, 0, 1, &chunk)));
    let (goaway, written) = flood_h2(&a, &node, &b.node_cert(), flood).await;
    assert!(
        goaway.is_some(),
        "closed without GOAWAY after {written} bytes"
    );
    assert!(
        written < FRAMES * 16 * 1024,
        "the whole 64 MiB header block was taken"
    );
    let mut as_c = exchange_as(&a, &node, &c.node_cert());
    as_c.get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_cut_below_the_message_limit_so_large_indicators_flow() {
    const LIMIT: usize = 256 * 1024;
    let mut a = Org::new("a.example");
    a.settings.limits.max_message_bytes = LIMIT;
    let mut b = Org::new("b.example");
    b.settings.limits.max_message_bytes = LIMIT;
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    // 120 indicators of about 6 KiB each: 700 KiB, more than one reply of
    // 256 KiB may hold, all waiting before B connects.
    let drafts = (0..120u32)
        .map(|i| {
            let mut d = ipv4_draft(i, threatmesh::proto::v1::Tlp::Clear);
            d.description = format!("{i:04}").repeat(1000);
            d
        })
        .collect();
    publish_all(&publisher(&a, &node_a), drafts, 8).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    caught_up(&node_b, &a, &node_a).await;
    assert_eq!(ids_at(&node_b).await.len(), 120);
    node_b.stop().await;
    node_a.stop().await;
}
