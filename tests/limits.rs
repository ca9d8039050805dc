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
    addr: std::net::SocketAddr,
    cert: Option<&threatmesh::identity::CertifiedKey>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(
        TrustStore::new(a.id.clone(), &a.ca_pem()).unwrap(),
    ));
    let tls = client_config(trust, SpiffeId::node(&a.id), cert).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
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
    let mut conn = tls_to(&a, node.addr, None).await;
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
    let rows = ledger(node, partner).await;
    rows.iter()
        .filter(|r| r.entry.rule == "limit-reached" && r.entry.detail.starts_with(setting))
        .count()
}

fn subscribe_from(cursor: u64) -> threatmesh::proto::v1::SubscribeRequest {
    threatmesh::proto::v1::SubscribeRequest {
        from_cursor: cursor,
        ..Default::default()
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
    still_serves(&a, &node, &c).await;
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

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
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
    addr: std::net::SocketAddr,
    cert: &threatmesh::identity::CertifiedKey,
    flood: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (Option<u32>, usize) {
    use tokio::io::AsyncWriteExt;
    let conn = tls_to(a, addr, Some(cert)).await;
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

const STREAMS: u32 = 100_000;

/// HEADERS then RST_STREAM, for 100,000 streams: HTTP/2 rapid reset.
fn rapid_resets() -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let headers = get_card_headers();
    (0..STREAMS).map(move |i| {
        let id = 2 * i + 1;
        let mut f = frame(HEADERS, END_HEADERS, id, &headers);
        f.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
        f
    })
}

const FRAMES: usize = 4096;

/// One header block that never ends: literal "x-pad" headers of 1,000 bytes
/// each, 16 KiB per CONTINUATION frame, 64 MiB offered.
fn endless_headers() -> impl Iterator<Item = Vec<u8>> + Send + 'static {
    let mut pad = vec![0x00, 0x05];
    pad.extend(b"x-pad");
    pad.extend([0x7f, 0xe9, 0x06]); // length 1000 (127 + 873)
    pad.extend([b'a'; 1000]);
    let chunk: Vec<u8> = pad.iter().copied().cycle().take(16 * 1024).collect();
    let first = frame(HEADERS, 0, 1, &get_card_headers());
    std::iter::once(first).chain((0..FRAMES).map(move |_| frame(CONTINUATION, 0, 1, &chunk)))
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
    let flood = rapid_resets();
    let (goaway, written) = flood_h2(&a, node.addr, &b.node_cert(), flood).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "written {written} bytes");
    let one = frame(HEADERS, END_HEADERS, 1, &get_card_headers()).len() * 2;
    assert!(
        written < one * STREAMS as usize,
        "the whole flood of {STREAMS} resets was taken"
    );
    still_serves(&a, &node, &c).await;
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
    let (goaway, written) = flood_h2(&a, node.addr, &b.node_cert(), flood).await;
    assert!(
        goaway.is_some(),
        "closed without GOAWAY after {written} bytes"
    );
    assert!(
        written < FRAMES * 16 * 1024,
        "the whole 64 MiB header block was taken"
    );
    still_serves(&a, &node, &c).await;
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

/// A memory figure of process `pid` from /proc (`RssAnon:` now, `VmHWM:`
/// its peak so far), in bytes (Linux).
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// Anonymous resident memory of process `pid` now: what its buffers use.
fn rss_of(pid: u32) -> u64 {
    memory_of(pid, "RssAnon:")
}

/// `org`'s node as a real `threatmesh serve` process (so its memory is its
/// own), listening on a free port; returns once it answers.
async fn serve_process(org: &Org) -> (tokio::process::Child, std::net::SocketAddr) {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .args(["serve", "--config"])
        .arg(&org.config)
        .env("THREATMESH__NODE__LISTEN", addr.to_string())
        .env("THREATMESH__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let org_ref = &org;
    wait_until(60, "the node process to answer", || async move {
        {
            let cert = org_ref.admin_cert();
            let mut c = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
                addr,
                &org_ref.id,
                &org_ref.ca_pem(),
                Some(&cert),
            ));
            c.get_card(threatmesh::proto::v1::GetCardRequest {})
                .await
                .is_ok()
        }
    })
    .await;
    (child, addr)
}

/// Subscribes to the node at `addr` as `partner` and reads its whole log
/// (`n` rows), sampling the node's memory as it goes; returns the peak.
async fn catch_up(a: &Org, addr: std::net::SocketAddr, partner: &Org, n: u64, pid: u32) -> u64 {
    let mut client = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
        addr,
        &a.id,
        &a.ca_pem(),
        Some(&partner.node_cert()),
    ))
    .max_decoding_message_size(8 << 20);
    let mut stream = client
        .subscribe(subscribe_from(0))
        .await
        .unwrap()
        .into_inner();
    let mut peak = rss_of(pid);
    let (mut received, mut cursor) = (0u64, 0);
    while cursor < n {
        let m = stream.message().await.unwrap().unwrap();
        received += m.deliveries.len() as u64;
        cursor = m.cursor;
        peak = peak.max(rss_of(pid));
    }
    assert_eq!(received, n, "{} was served the whole log", partner.id);
    peak
}

/// A stream's replies are bounded in bytes, not only in rows: with large
/// envelopes a reply carries a quarter of a MiB of them, so what a stream
/// holds (three replies) does not grow with the batch size in rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_of_large_envelopes_are_bounded_in_bytes() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node = start(&a).await;
    const N: u32 = 600;
    let drafts = (0..N)
        .map(|i| {
            let mut d = ipv4_draft(i, threatmesh::proto::v1::Tlp::Clear);
            d.description = format!("{i:08}").repeat(500);
            d
        })
        .collect();
    publish_all(&publisher(&a, &node), drafts, 32).await;
    let mut stream = exchange_as(&a, &node, &b.node_cert())
        .subscribe(subscribe_from(0))
        .await
        .unwrap()
        .into_inner();
    let (mut received, mut cursor, mut largest, mut replies) = (0u32, 0, 0usize, 0);
    while cursor < u64::from(N) {
        let m = stream.message().await.unwrap().unwrap();
        let bytes: usize = m.deliveries.iter().map(|d| d.envelope.len()).sum();
        let one = m
            .deliveries
            .iter()
            .map(|d| d.envelope.len())
            .max()
            .unwrap_or(0);
        // A reply stops at the first envelope that crosses 256 KiB.
        assert!(
            bytes <= 256 * 1024 + one,
            "a reply carried {bytes} bytes of {} envelopes",
            m.deliveries.len()
        );
        largest = largest.max(m.deliveries.len());
        received += m.deliveries.len() as u32;
        replies += 1;
        cursor = m.cursor;
    }
    assert_eq!(received, N, "b was served the whole log");
    // About 4.3 KB an envelope: some 60 a reply, never the 256 rows of
    // `federation.batch_size`.
    assert!(largest < 100, "largest reply: {largest} envelopes");
    assert!(replies >= 10, "{replies} replies for {N} envelopes");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_costs_bounded_memory_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let a = Org::new("a.example");
    let (s, c1, c2) = (
        Org::new("s.example"),
        Org::new("c1.example"),
        Org::new("c2.example"),
    );
    for p in [&s, &c1, &c2] {
        a.add_peer(p, None).await;
    }
    let (mut node, addr) = serve_process(&a).await;
    let pid = node.id().unwrap();
    // About 40 MB of envelopes in A's log.
    const N: u32 = 10_000;
    let drafts = (0..N)
        .map(|i| {
            let mut d = ipv4_draft(i, threatmesh::proto::v1::Tlp::Clear);
            d.description = format!("{i:08}").repeat(500);
            d
        })
        .collect();
    let client = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
        addr,
        &a.id,
        &a.ca_pem(),
        Some(&a.publisher_cert()),
    ));
    publish_all(&client, drafts, 32).await;
    let store = a.store().await;
    let log_bytes: u64 = store
        .read_after(0, N)
        .await
        .unwrap()
        .iter()
        .map(|r| r.envelope.len() as u64)
        .sum();
    let before = rss_of(pid);
    // C1 alone: what serving one partner the whole log costs.
    let alone = catch_up(&a, addr, &c1, u64::from(N), pid).await;

    // S subscribes from the start over a raw HTTP/2 connection that grants
    // the node an unlimited window, then never reads a byte.
    let conn = tls_to(&a, addr, Some(&s.node_cert())).await;
    let (_rd, mut wr) = tokio::io::split(conn);
    let mut start = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    let mut settings = 4u16.to_be_bytes().to_vec(); // INITIAL_WINDOW_SIZE
    settings.extend(0x7fff_ffffu32.to_be_bytes());
    start.extend(frame(SETTINGS, 0, 0, &settings));
    start.extend(frame(
        WINDOW_UPDATE,
        0,
        0,
        &(0x7fff_ffffu32 - 65_535).to_be_bytes(),
    ));
    let mut headers = get_card_headers();
    let path = b"/threatmesh.v1.Exchange/GetCard";
    let at = headers.windows(path.len()).position(|w| w == path).unwrap();
    let subscribe = b"/threatmesh.v1.Exchange/Subscribe";
    headers.splice(at - 1..at + path.len(), {
        let mut v = vec![subscribe.len() as u8];
        v.extend(subscribe);
        v
    });
    start.extend(frame(HEADERS, END_HEADERS, 1, &headers));
    start.extend(frame(DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]));
    wr.write_all(&start).await.unwrap();
    wr.flush().await.unwrap();

    // The node records each release before sending it: the ledger shows it
    // started sending to S.
    let sent_to_s = |store: threatmesh::store::Store| async move {
        store
            .audit_rows(Some("s.example"), None)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.entry.event == "sent")
            .map(|r| r.entry.subject.split(' ').count())
            .sum::<usize>()
    };
    let st = store.clone();
    wait_until(60, "the node to start sending to S", || {
        let st = st.clone();
        async move { sent_to_s(st).await > 0 }
    })
    .await;
    // With S stalled, C2 is served the whole log just the same.
    let with_s = catch_up(&a, addr, &c2, u64::from(N), pid).await;
    let sent = sent_to_s(store.clone()).await;
    let cost = with_s.saturating_sub(alone);
    eprintln!(
        "log {log_bytes} bytes; S stalled after {sent} of {N}; node memory {before}, \
         peak serving C1 alone {alone}, with S stalled {with_s} (+{cost})"
    );
    assert!(
        (sent as u64) < u64::from(N),
        "S was sent everything without reading"
    );
    // Bounded: a few replies in flight (each under the message limit), not
    // the log it was offered.
    assert!(
        cost < log_bytes * 3 / 5,
        "a subscriber that does not read cost {cost} bytes of a {log_bytes}-byte log"
    );
    assert!(
        alone.saturating_sub(before) < log_bytes,
        "serving the log cost more memory than the log itself"
    );
    store.close().await;
    node.kill().await.unwrap();
}

/// Peak resident memory of process `pid` so far.
fn peak_rss_of(pid: u32) -> u64 {
    memory_of(pid, "VmHWM:")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_cost_the_node_process_bounded_memory() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let (mut node, addr) = serve_process(&a).await;
    let pid = node.id().unwrap();
    let before = peak_rss_of(pid);
    // 64 MiB of header block, 100,000 reset streams, 40 idle connections.
    let (goaway, _) = flood_h2(&a, addr, &b.node_cert(), endless_headers()).await;
    assert!(goaway.is_some());
    let (goaway, _) = flood_h2(&a, addr, &b.node_cert(), rapid_resets()).await;
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    let mut idle = Vec::new();
    for _ in 0..40 {
        let s = TcpSocket::new_v4().unwrap();
        s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(s.connect(addr).await.unwrap());
    }
    // The node still answers.
    let mut as_b = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
        addr,
        &a.id,
        &a.ca_pem(),
        Some(&b.node_cert()),
    ));
    as_b.get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap();
    let grew = peak_rss_of(pid).saturating_sub(before);
    eprintln!("node peak memory {before} -> +{grew} under the floods");
    assert!(
        grew < 32 << 20,
        "floods of 64 MiB and 100,000 streams grew the node's peak memory by {grew} bytes"
    );
    drop(idle);
    node.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_hold_more_connections_than_its_share() {
    let mut a = Org::new("a.example");
    a.settings.limits.max_connections_per_partner = 2;
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer(&b, None).await;
    a.add_peer(&c, None).await;
    let node = start(&a).await;
    // Each client is its own connection; two are held open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = exchange_as(&a, &node, &b.node_cert());
        client
            .get_card(threatmesh::proto::v1::GetCardRequest {})
            .await
            .unwrap();
        held.push(client);
    }
    let mut third = exchange_as(&a, &node, &b.node_cert());
    let refused = third
        .get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .message()
            .contains("limits.max_connections_per_partner"),
        "{refused:?}"
    );
    // Another partner, and our own admin, still get in.
    still_serves(&a, &node, &c).await;
    let o = cli(&a, &node, &["status"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_until(30, "the refusal to be on the ledger", || async {
        limit_rows(&node, "b.example", "limits.max_connections_per_partner").await == 1
    })
    .await;
    // A connection that closes frees its place.
    drop(held.pop());
    let n = &node;
    wait_until(30, "b's closed connection to be forgotten", || async move {
        n.ctx
            .conns
            .count_where(|id, _| id.org.as_str() == "b.example")
            < 2
    })
    .await;
    exchange_as(&a, &node, &b.node_cert())
        .get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap();
    node.stop().await;
}
