//! Callers and envelopes that must be refused, each with a specific status
//! and nothing stored.

mod common;

use common::*;
use prost::Message;
use threatmesh::identity::{CertifiedKey, SpiffeId};
use threatmesh::proto::v1::{
    Envelope, Indicator, IndicatorKind, PublishRequest, SubscribeRequest, Tlp,
};
use threatmesh::refusal::RefusalKind;
use threatmesh::signing::{INDICATOR_PAYLOAD_TYPE, OrgSigningKey};
use tonic::Code;

fn certified(c: &threatmesh::identity::IssuedCert) -> CertifiedKey {
    CertifiedKey::from_pem(&c.cert_pem, &c.key_pem).unwrap()
}

type Client = threatmesh::proto::v1::exchange_client::ExchangeClient<tonic::transport::Channel>;

async fn publish_status(client: &mut Client) -> (Code, String) {
    let e = client
        .publish(PublishRequest {
            indicator: Some(ipv4_draft(1, Tlp::Clear)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    (e.code(), e.message().to_string())
}

async fn publish_code(client: &mut Client) -> Code {
    publish_status(client).await.0
}

async fn subscribe_status(client: &mut Client) -> (Code, String) {
    let e = match client.subscribe(SubscribeRequest::default()).await {
        Ok(mut s) => s.get_mut().message().await.unwrap_err(),
        Err(e) => e,
    };
    (e.code(), e.message().to_string())
}

async fn subscribe_code(client: &mut Client) -> Code {
    subscribe_status(client).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_right_certificate_are_refused() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let y = Org::new("y.example");
    let q = Org::new("q.example"); // never registered at A
    a.add_peer(&b, None).await;
    a.add_peer(&y, None).await;
    let node = start(&a).await;
    let ca = a.ca_pem();
    let conn = |cert: Option<&CertifiedKey>| {
        threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
            node.addr, &a.id, &ca, cert,
        ))
    };

    // No client certificate.
    let (code, msg) = publish_status(&mut conn(None)).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(msg.contains("no client certificate"), "{msg}");
    // A certificate from an unknown CA (q.example is no partner of A).
    let (code, msg) = subscribe_status(&mut conn(Some(&q.node_cert()))).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        msg.contains("q.example") && msg.contains("not a registered partner"),
        "{msg}"
    );
    // Partner Y's CA issues certificates claiming to be A's node and A's publisher.
    let forged_node = certified(&y.issue(&SpiffeId::node(&a.id)));
    let (code, msg) = subscribe_status(&mut conn(Some(&forged_node))).await;
    assert_eq!(code, Code::Unauthenticated);
    assert!(
        msg.contains("claims spiffe://a.example/node but does not chain to a.example's CA bundle"),
        "{msg}"
    );
    let forged_pub = certified(&y.issue(&SpiffeId::publisher(&a.id, "evil").unwrap()));
    assert_eq!(
        publish_code(&mut conn(Some(&forged_pub))).await,
        Code::Unauthenticated
    );
    // The gate stands in front of every service, health included.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel_with(
        node.addr,
        &a.id,
        &ca,
        Some(&forged_node),
    ));
    let err = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // A registered partner's node may subscribe but not publish.
    assert_eq!(
        publish_code(&mut conn(Some(&b.node_cert()))).await,
        Code::PermissionDenied
    );
    // A partner's publisher may do neither.
    assert_eq!(
        publish_code(&mut conn(Some(&b.publisher_cert()))).await,
        Code::PermissionDenied
    );
    // Our own publisher may publish but not subscribe; our admin may not publish.
    assert_eq!(
        subscribe_code(&mut conn(Some(&a.publisher_cert()))).await,
        Code::PermissionDenied
    );
    assert_eq!(
        publish_code(&mut conn(Some(&a.admin_cert()))).await,
        Code::PermissionDenied
    );
    // Our own node certificate is not a partner.
    assert_eq!(
        subscribe_code(&mut conn(Some(&a.node_cert()))).await,
        Code::PermissionDenied
    );

    assert_eq!(
        node.ctx.store.count_indicators().await.unwrap(),
        0,
        "nothing stored"
    );

    // The same connection set-up with the right certificate works, so the
    // refusals above are about the certificates, not the harness.
    let mut ok = conn(Some(&a.publisher_cert()));
    ok.publish(PublishRequest {
        indicator: Some(ipv4_draft(1, Tlp::Clear)),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_publishes_name_the_field_and_store_nothing() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    let cases = [
        (
            draft(IndicatorKind::Ipv4, "300.1.1.1", Tlp::Green, &[]),
            "value",
        ),
        (
            draft(IndicatorKind::Cidr, "10.0.0.5/24", Tlp::Green, &[]),
            "value",
        ),
        (
            draft(IndicatorKind::Domain, "evil.example", Tlp::Red, &[]),
            "marking.recipients",
        ),
        (
            draft(IndicatorKind::Domain, "evil.example", Tlp::Unspecified, &[]),
            "marking.tlp",
        ),
        (
            draft(IndicatorKind::Unspecified, "evil.example", Tlp::Green, &[]),
            "kind",
        ),
        (
            {
                let mut d = draft(IndicatorKind::Domain, "evil.example", Tlp::Green, &[]);
                d.confidence = 150;
                d
            },
            "confidence",
        ),
    ];
    for (d, field) in cases {
        let err = client
            .publish(PublishRequest {
                indicator: Some(d),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        assert!(
            err.message().starts_with(field),
            "'{}' should name {field}",
            err.message()
        );
    }
    let err = client
        .publish(PublishRequest {
            indicator: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut update = ipv4_draft(1, Tlp::Green);
    update.id = uuid::Uuid::new_v4().to_string();
    let err = client
        .publish(PublishRequest {
            indicator: Some(update),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 0);
    node.stop().await;
}

fn signed(origin: &str, key: &OrgSigningKey, value: &str) -> Envelope {
    let now = common::now_ms();
    let ind = Indicator {
        origin_org: origin.into(),
        key_id: key.key_id().into(),
        id: uuid::Uuid::new_v4().to_string(),
        version: 1,
        created_unix_ms: now,
        modified_unix_ms: now,
        marking: Some(threatmesh::proto::v1::Marking {
            tlp: Tlp::Green as i32,
            ..Default::default()
        }),
        kind: IndicatorKind::Domain as i32,
        value: value.into(),
        valid_from_unix_ms: now,
        ..Default::default()
    };
    key.seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_forged_envelopes_are_refused_and_the_link_keeps_going() {
    // R is a registered partner of B that turns hostile; A is another partner.
    let a = Org::new("a.example");
    let r = Org::new("r.example");
    let b = Org::new("b.example");
    let r_key = r.signing_key();

    // 1: R's own indicator with one payload byte flipped after signing.
    let mut altered = signed("r.example", &r_key, "altered.example");
    let n = altered.payload.len() / 2;
    altered.payload[n] ^= 0x01;
    // 2: claims to come from A, but signed with R's key (forged origin).
    let mut forged = signed("a.example", &r_key, "forged.example");
    forged.signatures[0].keyid = r_key.key_id().into();
    // 3: signed by a key no registered card carries.
    let (stray, _) = OrgSigningKey::generate().unwrap();
    let unknown = signed("r.example", &stray, "unknown-key.example");
    // 4: a valid indicator of R, after the bad ones: the link must not stall.
    let good = signed("r.example", &r_key, "good.example");

    let rogue = RogueUpstream::start(
        &r,
        &[&b],
        vec![
            bytes(&altered),
            bytes(&forged),
            bytes(&unknown),
            bytes(&good),
        ],
    )
    .await;
    b.add_peer(&a, None).await;
    b.add_peer(&r, Some(rogue.addr)).await;
    let node_b = start(&b).await;

    let store = node_b.ctx.store.clone();
    wait_until(30, "B to process R's four envelopes", || {
        let s = store.clone();
        let r_id = r.id.clone();
        async move { s.cursor(&r_id).await.unwrap() >= 4 }
    })
    .await;

    let stored = store.indicators(None).await.unwrap();
    assert_eq!(stored.len(), 1, "only the valid envelope is stored");
    assert_eq!(stored[0].envelope, bytes(&good));
    let rejections = store.rejections().await.unwrap();
    let summary: Vec<(u64, RefusalKind)> = rejections
        .iter()
        .map(|r| (r.upstream_seq, r.kind))
        .collect();
    assert_eq!(
        summary,
        vec![(1, RefusalKind::Unauthentic), (2, RefusalKind::Unauthentic)],
        "{rejections:#?}"
    );
    assert!(
        rejections[0].reason.contains("does not match the payload"),
        "{}",
        rejections[0].reason
    );
    assert!(
        rejections[1]
            .reason
            .contains("claims origin a.example but is signed by a key of r.example"),
        "{}",
        rejections[1].reason
    );
    // The envelope under a key nobody has introduced waits in quarantine
    // (not stored, not refused) in case R's card with that key arrives.
    let q = store.quarantine().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].held.upstream_seq, q[0].held.key_id.as_str()),
        (3, stray.key_id())
    );
    let ledger = store.audit_rows(Some("r.example"), None).await.unwrap();
    assert!(ledger.iter().any(|r| r.entry.event == "quarantined"));
    node_b.stop().await;
}

/// Publishes `d` and returns the refusal.
async fn refused(client: &mut Client, d: threatmesh::proto::v1::IndicatorDraft) -> tonic::Status {
    client
        .publish(PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_character_in_a_value_is_refused_not_dropped() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    for (kind, value) in [
        (IndicatorKind::Url, "http://evil.example/payload\0.exe"),
        (IndicatorKind::Url, "http://evil.example/\0"),
        (IndicatorKind::Url, "\0http://evil.example/x"),
        (IndicatorKind::Domain, "evil\0.example"),
        (IndicatorKind::Email, "boss\u{7}@evil.example"),
    ] {
        let err = refused(&mut client, draft(kind, value, Tlp::Green, &[])).await;
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{value:?}: {}",
            err.message()
        );
        assert!(
            err.message().starts_with("value") && err.message().contains("control character"),
            "{value:?}: {}",
            err.message()
        );
    }
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_without_an_id_is_refused() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut client = publisher(&a, &node);
    let mut d = ipv4_draft(7, Tlp::Green);
    d.revoked = true;
    let err = refused(&mut client, d).await;
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().starts_with("id"), "{}", err.message());
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_not_issued_for_dot_segment_names() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let before = node.ctx.store.certs().await.unwrap().len();
    let out = tempfile::tempdir().unwrap();
    for name in ["..", "."] {
        let o = cli(
            &a,
            &node,
            &[
                "certs",
                "issue",
                "--role",
                "admin",
                "--name",
                name,
                "--out",
                out.path().to_str().unwrap(),
            ],
        );
        let text = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "{name}: {text}");
        assert!(text.contains("--name"), "{name}: {text}");
    }
    assert_eq!(node.ctx.store.certs().await.unwrap().len(), before);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_far_ahead_of_the_one_held_is_refused() {
    // B subscribes to A, whose (genuinely signed) stream jumps one
    // indicator from version 1 to 1,000,000: that would block every honest
    // update by the origin, so it is refused.
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let key = a.signing_key();
    let v1 = hand_made(
        "a.example",
        &key,
        "jump.example",
        Tlp::Clear,
        common::now_ms(),
    );
    let mut far = v1.clone();
    far.version = 1_000_000;
    let mut next = v1.clone();
    next.version = 2;
    let rogue = RogueUpstream::start(
        &a,
        &[&b],
        vec![
            bytes(&seal_indicator(&key, &v1)),
            bytes(&seal_indicator(&key, &far)),
            bytes(&seal_indicator(&key, &next)),
        ],
    )
    .await;
    b.add_card(&a.card(), Some(rogue.addr), None).await;
    let node_b = start(&b).await;
    let store = node_b.ctx.store.clone();
    considered(&node_b, &a.id, 3).await;
    let rej = store.rejections().await.unwrap();
    let seen = refusals(&node_b).await;
    assert_eq!(seen, [(2, RefusalKind::TooFarAhead)], "{rej:#?}");
    assert!(
        rej[0].reason.contains("jumps more than"),
        "{}",
        rej[0].reason
    );
    let versions: Vec<u64> = store
        .indicators(None)
        .await
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert_eq!(versions, [1, 2], "the honest next version still applies");
    node_b.stop().await;
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_grow_our_quarantine_beyond_its_share() {
    // R, a registered partner, sends 50 envelopes under a key nobody knows;
    // B keeps 10 (its configured share), refuses the rest in one row, and
    // still serves its other partner A.
    let a = Org::new("a.example");
    let r = Org::new("r.example");
    let mut b = Org::new("b.example");
    b.settings.federation.quarantine_max_per_partner = 10;
    let (stranger, _) = OrgSigningKey::generate().unwrap();
    let now = common::now_ms();
    let flood: Vec<(Vec<u8>, Vec<String>)> = (0..50)
        .map(|i| {
            let ind = hand_made(
                "x.example",
                &stranger,
                &format!("h{i}.flood.example"),
                Tlp::Clear,
                now,
            );
            (
                bytes(&seal_indicator(&stranger, &ind)),
                vec!["x.example".into(), "r.example".into()],
            )
        })
        .collect();
    let rogue = RogueUpstream::start_with_paths(&r, &[&b], flood).await;
    let node_a = start(&a).await;
    let name = b.apply_policy(RELAY_POLICY).await;
    b.add_card(&r.card(), Some(rogue.addr), Some(&name)).await;
    b.add_card(&a.card(), Some(node_a.addr), None).await;
    a.add_card(&b.card(), None, Some(&a.apply_policy(OPEN_POLICY).await))
        .await;
    let node_b = start(&b).await;
    let store = node_b.ctx.store.clone();
    considered(&node_b, &r.id, 50).await;
    assert_eq!(store.quarantine_usage(&r.id).await.unwrap().0, 10);
    let rej = store.rejections().await.unwrap();
    assert!(
        !rej.is_empty() && rej.len() <= 5,
        "one row per batch: {rej:#?}"
    );
    for x in &rej {
        assert_eq!(x.kind, RefusalKind::LimitReached);
        assert_eq!(
            threatmesh::rpc::refusal_code(x.kind),
            Code::ResourceExhausted
        );
        assert!(
            x.reason.contains("quarantine share is used up"),
            "{}",
            x.reason
        );
    }
    let ledger = store.audit_rows(Some("r.example"), None).await.unwrap();
    assert!(
        ledger
            .iter()
            .any(|l| l.entry.event == "rejected" && l.entry.rule == "limit-reached")
    );
    // A legitimate partner is still served.
    let published = publish_all(&publisher(&a, &node_a), vec![ipv4_draft(1, Tlp::Clear)], 1).await;
    let id = published[0].id.clone();
    wait_until(30, "B to receive A's indicator", || {
        let (s, id) = (store.clone(), id.clone());
        async move { s.indicator_by_id(&id).await.unwrap().is_some() }
    })
    .await;
    node_b.stop().await;
    node_a.stop().await;
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflicting_duplicate_is_refused_with_a_ledger_row() {
    // A's stream carries two different contents signed for one (origin,
    // id, version): the first stays, the second is refused on the record.
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let key = a.signing_key();
    let first = hand_made(
        "a.example",
        &key,
        "one.example",
        Tlp::Clear,
        common::now_ms(),
    );
    let mut second = first.clone();
    second.value = "two.example".into();
    let rogue = RogueUpstream::start(
        &a,
        &[&b],
        vec![
            bytes(&seal_indicator(&key, &first)),
            bytes(&seal_indicator(&key, &second)),
        ],
    )
    .await;
    b.add_card(&a.card(), Some(rogue.addr), None).await;
    let node_b = start(&b).await;
    let store = node_b.ctx.store.clone();
    considered(&node_b, &a.id, 2).await;
    let rej = store.rejections().await.unwrap();
    let seen = refusals(&node_b).await;
    assert_eq!(seen, [(2, RefusalKind::ConflictingVersion)], "{rej:#?}");
    assert_eq!(
        threatmesh::rpc::refusal_code(rej[0].kind),
        Code::FailedPrecondition
    );
    let held = store.indicators(None).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].envelope, bytes(&seal_indicator(&key, &first)));
    let ledger = store.audit_rows(Some("a.example"), None).await.unwrap();
    assert!(ledger.iter().any(|l| l.entry.event == "rejected"
        && l.entry.rule == "conflicting-version"
        && l.entry.subject.contains("seq 2")));
    node_b.stop().await;
    drop(rogue);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_claiming_another_orgs_key_is_refused_on_the_ledger_not_by_the_link() {
    // A (a registered partner) sends a newer card of its own, properly
    // signed, that claims C's signing key too.
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    let c = Org::new("c.example");
    b.add_card(&a.card(), None, None).await;
    b.add_card(&c.card(), None, None).await;
    let node_b = start(&b).await;
    let (a_key, c_key) = (a.signing_key(), c.signing_key());
    let entry = |k: &OrgSigningKey| threatmesh::proto::v1::SigningKey {
        key_id: k.key_id().into(),
        public_key: k.public_key().to_vec(),
        ..Default::default()
    };
    let info = threatmesh::identity::CardInfo {
        org: a.id.clone(),
        display_name: "A".into(),
        country: String::new(),
        sector: String::new(),
        ca_bundle_pem: a.ca_pem(),
        endpoints: Vec::new(),
        rotations: Vec::new(),
    };
    let now = common::now_ms();
    let theft = threatmesh::identity::seal_card_with_keys(
        &info,
        &[entry(&a_key), entry(&c_key)],
        &a_key,
        now as u64 + 1_000,
        now,
    );
    let learnt = threatmesh::federation::cards::learn_cards(&node_b.ctx, &[theft], &a.id)
        .await
        .expect("a refused card is not a link error");
    assert!(!learnt, "nothing the view carries changed");
    let ledger = ledger(&node_b, "a.example").await;
    assert!(
        ledger.iter().any(|l| l.entry.event == "card-refused"
            && l.entry.detail.contains("already registered for c.example")),
        "{ledger:#?}"
    );
    // C's key still belongs to C only.
    let keys = node_b.ctx.store.signing_keys().await.unwrap();
    let owner = keys.iter().find(|k| k.key_id == c_key.key_id()).unwrap();
    assert_eq!(owner.org, c.id);
    node_b.stop().await;
}

/// Raw request bytes out, raw reply bytes in: for messages no honest client
/// would build.
#[derive(Default)]
struct RawCodec;

struct RawCoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCoder;
    type Decoder = RawCoder;
    fn encoder(&mut self) -> RawCoder {
        RawCoder
    }
    fn decoder(&mut self) -> RawCoder {
        RawCoder
    }
}

impl tonic::codec::Encoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use prost::bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use prost::bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// The status `node` answers a unary call to `path` whose body is `body`.
async fn raw_call(
    org: &Org,
    node: &RunningNode,
    cert: &CertifiedKey,
    path: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let channel = channel_with(node.addr, &org.id, &org.ca_pem(), Some(cert));
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc
        .server_streaming(tonic::Request::new(body), path, RawCodec)
        .await
    {
        Ok(mut s) => match s.get_mut().message().await {
            Err(e) => e,
            Ok(m) => panic!("accepted: {m:?}"),
        },
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_nested_and_oversized_requests_are_refused_with_the_right_status() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node = start(&a).await;
    let publish = "/threatmesh.v1.Exchange/Publish";
    let as_publisher = a.publisher_cert();

    // Bytes that are not protobuf at all.
    let s = raw_call(&a, &node, &as_publisher, publish, vec![0xff; 16]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("undecodable protobuf"), "{s:?}");
    // 200 nested groups of an unknown field: deeper than prost's recursion
    // limit.
    let mut nested = vec![(99 << 3) | 3; 200];
    nested.extend(vec![(99 << 3) | 4; 200]);
    let nested: Vec<u8> = nested
        .into_iter()
        .flat_map(|tag: u32| {
            let mut v = Vec::new();
            prost::encoding::encode_varint(u64::from(tag), &mut v);
            v
        })
        .collect();
    let s = raw_call(&a, &node, &as_publisher, publish, nested).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // A partner's Subscribe that does not decode.
    let s = raw_call(
        &a,
        &node,
        &b.node_cert(),
        "/threatmesh.v1.Exchange/Subscribe",
        vec![0x0a, 0xff, 0xff],
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    // 5 MiB in an unknown field: over limits.max_message_bytes (4 MiB).
    let mut big = Vec::new();
    prost::encoding::bytes::encode(99, &vec![7u8; 5 << 20], &mut big);
    let s = raw_call(&a, &node, &as_publisher, publish, big).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("limits.max_message_bytes"), "{s:?}");

    assert_eq!(node.ctx.store.latest_seq().await.unwrap(), 0, "stored");
    // The node still serves an honest publish.
    publish_all(&publisher(&a, &node), vec![ipv4_draft(1, Tlp::Clear)], 1).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_under_a_sub_ca_of_a_path_length_zero_partner_ca_is_refused() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node = start(&a).await;
    // B's CA is path length 0: it may sign leaves only. A sub-CA under it,
    // and a node certificate for B under that sub-CA.
    let sub_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "b.example rogue sub-CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &b.ca_pem(),
        rcgen::KeyPair::from_pem(&b.ca_key_pem()).unwrap(),
    )
    .unwrap();
    let sub_pem = params.signed_by(&sub_key, &issuer).unwrap().pem();
    let leaf = threatmesh::identity::issue(
        &sub_pem,
        &sub_key.serialize_pem(),
        &SpiffeId::node(&b.id),
        30,
    )
    .unwrap();
    let chain = format!("{}{}", leaf.cert_pem, sub_pem);
    let cert = CertifiedKey::from_pem(&chain, &leaf.key_pem).unwrap();
    let mut as_rogue = exchange_as(&a, &node, &cert);
    let refused = as_rogue
        .get_card(threatmesh::proto::v1::GetCardRequest {})
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("path length"), "{refused:?}");
    // B's own node certificate is still accepted.
    still_serves(&a, &node, &b).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_make_us_hold_more_pending_cards_than_its_share() {
    // R, a registered partner but no introducer, sends the cards of 50
    // orgs B does not know with one indicator of its own. B holds 20 of
    // them pending (its configured share), refuses the rest with one ledger
    // row, still stores R's indicator and still serves A.
    let a = Org::new("a.example");
    let r = Org::new("r.example");
    let mut b = Org::new("b.example");
    b.settings.federation.pending_cards_max_per_partner = 20;
    let cards: Vec<Envelope> = (0..50)
        .map(|i| Org::new(&format!("o{i}.example")).card())
        .collect();
    let own = hand_made(
        "r.example",
        &r.signing_key(),
        "h.r.example",
        Tlp::Clear,
        common::now_ms(),
    );
    let delivery = (
        bytes(&seal_indicator(&r.signing_key(), &own)),
        vec!["r.example".to_string()],
    );
    let rogue = RogueUpstream::start_with_cards(&r, &[&b], vec![delivery], cards).await;
    let name = b.apply_policy(RELAY_POLICY).await;
    b.add_card(&r.card(), Some(rogue.addr), Some(&name)).await;
    b.add_peer(&a, None).await;
    let node_b = start(&b).await;
    considered(&node_b, &r.id, 1).await;
    let store = node_b.ctx.store.clone();
    let directory = store.directory().await.unwrap();
    assert_eq!(directory.len(), 20, "pending cards held");
    assert_eq!(store.pending_cards_via(&r.id).await.unwrap().0, 20);
    let ledger = store.audit_rows(Some("r.example"), None).await.unwrap();
    let over: Vec<_> = ledger
        .iter()
        .filter(|row| row.entry.rule == "limit-reached")
        .collect();
    assert_eq!(over.len(), 1, "{over:#?}");
    assert!(over[0].entry.detail.contains("30 card(s)"), "{over:#?}");
    assert_eq!(
        ids_at(&node_b).await.len(),
        1,
        "R's own indicator is stored"
    );
    // A, another partner, is still served.
    still_serves(&b, &node_b, &a).await;
    drop(rogue);
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_fill_our_disk_with_envelopes_we_refuse() {
    // R sends 40 envelopes with a flipped payload byte. B records all 40
    // refusals but keeps the bytes of refused envelopes only up to its
    // configured share (here about 10 envelopes' worth).
    let r = Org::new("r.example");
    let mut b = Org::new("b.example");
    let flood = altered(&r, 40);
    let one = flood[0].len() as u64;
    b.settings.federation.rejected_bytes_kept_per_partner = one * 10 + one / 2;
    let rogue = RogueUpstream::start(&r, &[&b], flood).await;
    b.add_peer(&r, Some(rogue.addr)).await;
    let node_b = start(&b).await;
    considered(&node_b, &r.id, 40).await;
    let rej = node_b.ctx.store.rejections().await.unwrap();
    assert_eq!(rej.len(), 40, "every refusal is recorded");
    assert!(rej.iter().all(|x| x.kind == RefusalKind::Unauthentic));
    let kept: u64 = rej.iter().map(|x| x.envelope_bytes).sum();
    assert!(
        kept <= one * 11 && kept >= one * 9,
        "kept {kept} bytes of refused envelopes, share {}",
        one * 10
    );
    assert_eq!(node_b.ctx.store.latest_seq().await.unwrap(), 0);
    drop(rogue);
    node_b.stop().await;
}

/// `n` envelopes of `r` with a flipped payload byte (their signatures fail).
fn altered(r: &Org, n: u32) -> Vec<Vec<u8>> {
    let key = r.signing_key();
    (0..n)
        .map(|i| {
            let mut e = signed(r.id.as_str(), &key, &format!("h{i}.altered.example"));
            let mid = e.payload.len() / 2;
            e.payload[mid] ^= 0x01;
            bytes(&e)
        })
        .collect()
}

/// A partner inventing envelopes we refuse cannot grow our refusal records
/// without end either: the newest `refusals_kept_per_partner` are kept, the
/// older removed with a ledger row, and the ledger keeps every refusal.
/// (Before: one row per refused envelope, forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_cannot_grow_our_refusal_records_without_end() {
    let r = Org::new("r.example");
    let mut b = Org::new("b.example");
    let flood = altered(&r, 40);
    b.settings.federation.refusals_kept_per_partner = 10;
    b.settings.federation.batch_size = 8;
    let rogue = RogueUpstream::start(&r, &[&b], flood).await;
    b.add_peer(&r, Some(rogue.addr)).await;
    let node_b = start(&b).await;
    considered(&node_b, &r.id, 40).await;
    let rej = node_b.ctx.store.rejections().await.unwrap();
    let seqs: Vec<u64> = rej.iter().map(|x| x.upstream_seq).collect();
    assert_eq!(
        seqs,
        (31..=40).collect::<Vec<u64>>(),
        "the newest 10 are kept"
    );
    let rows = node_b
        .ctx
        .store
        .audit_rows(Some("r.example"), None)
        .await
        .unwrap();
    assert!(
        rows.iter().any(|r| r.entry.rule == "limit-reached"
            && r.entry
                .detail
                .contains("federation.refusals_kept_per_partner")),
        "a ledger row says older records were removed"
    );
    // Refusals share a ledger row per batch, each named in its subject.
    let refused_on_ledger: usize = rows
        .iter()
        .filter(|r| r.entry.rule != "limit-reached" && r.entry.event == "rejected")
        .map(|r| r.entry.subject.matches("r.example seq ").count())
        .sum();
    assert_eq!(refused_on_ledger, 40, "the ledger keeps every refusal");
    assert_eq!(
        node_b.ctx.store.verify_audit().await.unwrap(),
        Ok(node_b.ctx.store.count_audit().await.unwrap())
    );
    drop(rogue);
    node_b.stop().await;
}

/// One row of the hostile stream: what R sends, and what B must make of it
/// (`None` = stored, exactly once).
struct Case {
    name: &'static str,
    envelope: Vec<u8>,
    refused_as: Option<RefusalKind>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_envelopes_inside_a_stream_of_good_ones_are_each_refused_on_record() {
    let r = Org::new("r.example");
    let a = Org::new("a.example");
    let mut b = Org::new("b.example");
    b.settings.federation.batch_size = 64;
    let key = r.signing_key();
    let good = signed("r.example", &key, "good.example");
    let indicator = |edit: &dyn Fn(&mut Indicator)| {
        let mut ind = Indicator::decode(good.payload.as_slice()).unwrap();
        ind.id = uuid::Uuid::new_v4().to_string();
        edit(&mut ind);
        ind
    };
    let sealed = |ind: Indicator| bytes(&key.seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec()));
    let card_typed = key.seal(
        threatmesh::signing::CARD_PAYLOAD_TYPE,
        indicator(&|_| {}).encode_to_vec(),
    );
    let mut relabelled = card_typed.clone();
    relabelled.payload_type = INDICATOR_PAYLOAD_TYPE.into();
    let mut two_signatures = key.seal(INDICATOR_PAYLOAD_TYPE, indicator(&|_| {}).encode_to_vec());
    two_signatures
        .signatures
        .push(two_signatures.signatures[0].clone());
    let mut cases = vec![
        Case {
            name: "a good envelope",
            envelope: bytes(&good),
            refused_as: None,
        },
        Case {
            name: "signed as another payload type",
            envelope: bytes(&card_typed),
            refused_as: Some(RefusalKind::Malformed),
        },
        Case {
            name: "a signature made for another payload type, relabelled",
            envelope: bytes(&relabelled),
            refused_as: Some(RefusalKind::Unauthentic),
        },
        Case {
            name: "an unknown TLP value",
            envelope: sealed(indicator(&|i| {
                i.marking.as_mut().unwrap().tlp = 99;
            })),
            refused_as: Some(RefusalKind::Malformed),
        },
        Case {
            name: "10,000 tags",
            envelope: sealed(indicator(&|i| {
                i.tags = (0..10_000).map(|n| format!("t{n}")).collect();
            })),
            refused_as: Some(RefusalKind::Malformed),
        },
        Case {
            name: "a payload over 64 KiB",
            envelope: sealed(indicator(&|i| i.description = "x".repeat(70_000))),
            refused_as: Some(RefusalKind::Malformed),
        },
        Case {
            name: "two signatures",
            envelope: bytes(&two_signatures),
            refused_as: Some(RefusalKind::Unauthentic),
        },
        Case {
            name: "a signed payload that is not an indicator",
            envelope: bytes(&key.seal(INDICATOR_PAYLOAD_TYPE, vec![0xff; 40])),
            refused_as: Some(RefusalKind::Malformed),
        },
        Case {
            name: "bytes that are not an envelope",
            envelope: vec![0x0a, 0xff, 0xff, 0xff],
            refused_as: Some(RefusalKind::Malformed),
        },
    ];
    // Replays: the good envelope again, 200 times (stored once), then
    // another good one after all the poison.
    for _ in 0..200 {
        cases.push(Case {
            name: "a replay of the good envelope",
            envelope: bytes(&good),
            refused_as: None,
        });
    }
    let last = signed("r.example", &key, "last.example");
    cases.push(Case {
        name: "a good envelope after the poison",
        envelope: bytes(&last),
        refused_as: None,
    });

    let rogue = RogueUpstream::start(
        &r,
        &[&b],
        cases.iter().map(|c| c.envelope.clone()).collect(),
    )
    .await;
    b.add_peer(&r, Some(rogue.addr)).await;
    b.add_peer(&a, None).await;
    let node_b = start(&b).await;
    considered(&node_b, &r.id, cases.len() as u64).await;

    let store = node_b.ctx.store.clone();
    let refused: std::collections::HashMap<u64, RefusalKind> =
        refusals(&node_b).await.into_iter().collect();
    let ledger = store.audit_rows(Some("r.example"), None).await.unwrap();
    for (i, case) in cases.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(
            refused.get(&seq).copied(),
            case.refused_as,
            "seq {seq}, {}",
            case.name
        );
        if case.refused_as.is_some() {
            let subject = format!("r.example seq {seq}");
            assert!(
                ledger
                    .iter()
                    .any(|l| l.entry.event == "rejected" && l.entry.subject == subject),
                "no ledger row for seq {seq}, {}",
                case.name
            );
        }
    }
    let stored = store.indicators(None).await.unwrap();
    assert_eq!(stored.len(), 2, "the good envelope once, and the last one");
    assert!(store.quarantine().await.unwrap().is_empty());
    // A, a legitimate partner, is still served.
    still_serves(&b, &node_b, &a).await;
    drop(rogue);
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_serving_where_another_org_should_be_is_refused_when_we_dial() {
    // B dials A's endpoint, but C (another registered partner, with a
    // valid certificate from its own CA) answers there.
    let a = Org::new("a.example");
    let c = Org::new("c.example");
    let b = Org::new("b.example");
    let c_key = c.signing_key();
    let offered = signed("c.example", &c_key, "offered.example");
    let impostor = RogueUpstream::start(&c, &[&b], vec![bytes(&offered)]).await;
    b.add_peer(&a, Some(impostor.addr)).await;
    b.add_peer(&c, None).await;
    let node_b = start(&b).await;
    link_error(&node_b, &a, "c.example", 30).await;
    assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), 0);
    assert_eq!(node_b.ctx.store.cursor(&a.id).await.unwrap(), 0);
    drop(impostor);
    node_b.stop().await;
}
