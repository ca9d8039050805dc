//! Standard gRPC clients against a node: hostname verification as every
//! TLS stack does it, server reflection, health for every service, gzip.

mod common;

use std::sync::Arc;

use common::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A channel to `node` as a standard client makes one: the org's CA as its
/// only root, ordinary hostname verification of `host` (no SPIFFE
/// knowledge), presenting `org`'s admin certificate.
fn standard_channel(org: &Org, node: &RunningNode, host: &str) -> Channel {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(org.ca_pem().as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let c = &org.settings.client;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&c.admin_cert)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&c.admin_key).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(chain, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    threatmesh::net::mtls_channel(&node.addr.to_string(), host, Arc::new(cfg)).unwrap()
}

async fn health_of(ch: Channel, service: &str) -> Result<i32, tonic::Status> {
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// `init` names the node's hosts in its certificate (here the defaults,
/// localhost and 127.0.0.1): a client doing ordinary hostname verification
/// connects by either name, and a name the certificate does not carry is
/// refused as any TLS client would refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_client_verifies_the_node_by_host_name() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let names = threatmesh::identity::server_names(
        &std::fs::read_to_string(&a.settings.tls.node_cert).unwrap(),
    )
    .unwrap();
    assert_eq!(names, ["localhost", "127.0.0.1"]);
    for host in ["localhost", "127.0.0.1"] {
        let status = health_of(standard_channel(&a, &node, host), "")
            .await
            .unwrap();
        assert_eq!(status, ServingStatus::Serving as i32, "{host}");
    }
    let wrong = health_of(standard_channel(&a, &node, "evil.example"), "")
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unavailable, "{wrong:?}");
    node.stop().await;
}

/// Every service reports its health, reflection lists every service and
/// serves their descriptors, and a gzip-compressed request gets an
/// answer (gzip-compressed too, when the client accepts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_health_and_gzip_work_for_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let a = Org::new("a.example");
    let node = start(&a).await;
    let ch = standard_channel(&a, &node, "localhost");
    let services = [
        "threatmesh.v1.Exchange",
        "threatmesh.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    for s in ["", "threatmesh.v1.Exchange", "threatmesh.v1.Admin"] {
        assert_eq!(
            health_of(ch.clone(), s).await.unwrap(),
            ServingStatus::Serving as i32,
            "{s}"
        );
    }

    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut refl = ServerReflectionClient::new(ch.clone());
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "threatmesh.v1.Exchange".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner();
    let listed = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("{listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for s in services {
        assert!(names.contains(&s), "{s} not in {names:?}");
    }
    let file = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(fd)) = file.message_response else {
        panic!("{file:?}");
    };
    let files: Vec<prost_types::FileDescriptorProto> = fd
        .file_descriptor_proto
        .iter()
        .map(|b| prost::Message::decode(b.as_slice()).unwrap())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.service.iter().any(|s| s.name() == "Exchange")),
        "{:?}",
        files.iter().map(|f| f.name()).collect::<Vec<_>>()
    );

    // gzip both ways, on Exchange and Admin.
    let mut publisher = threatmesh::proto::v1::exchange_client::ExchangeClient::new(channel_with(
        node.addr,
        &a.id,
        &a.ca_pem(),
        Some(&a.publisher_cert()),
    ))
    .send_compressed(CompressionEncoding::Gzip)
    .accept_compressed(CompressionEncoding::Gzip);
    let mut d = ipv4_draft(1, threatmesh::proto::v1::Tlp::Green);
    d.description = "compressible ".repeat(200);
    let p = publisher
        .publish(threatmesh::proto::v1::PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(p.metadata().get("grpc-encoding").unwrap(), "gzip");
    let status = threatmesh::proto::v1::admin_client::AdminClient::new(ch)
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip)
        .status(threatmesh::proto::v1::StatusRequest {})
        .await
        .unwrap();
    assert_eq!(status.into_inner().indicators, 1);
    node.stop().await;
}

/// `init --dns-name` and the endpoint's host go into the node certificate;
/// `certs rotate` keeps the names unless given new ones, and refuses a
/// name that is neither a DNS name nor an IP address, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificate_host_names_come_from_init_and_survive_rotation() {
    use threatmesh::identity::server_names;
    use threatmesh::provision::{OrgOptions, provision_org};
    let dir = tempfile::tempdir().unwrap();
    let made = provision_org(&OrgOptions {
        endpoint: Some("node.b.example:7443".into()),
        dns_names: vec!["10.0.0.5".into(), "tm.b.example".into()],
        ..OrgOptions::new("b.example", dir.path())
    })
    .unwrap();
    let settings = threatmesh::config::Settings::load(&made.config).unwrap();
    let pem = std::fs::read_to_string(&settings.tls.node_cert).unwrap();
    assert_eq!(
        server_names(&pem).unwrap(),
        ["10.0.0.5", "tm.b.example", "node.b.example"]
    );
    let bad = provision_org(&OrgOptions {
        dns_names: vec!["not a name".into()],
        ..OrgOptions::new("c.example", dir.path().join("c"))
    })
    .unwrap_err();
    assert!(bad.to_string().contains("dns-name"), "{bad}");

    let a = Org::new("a.example");
    let node = start(&a).await;
    let node_names =
        || server_names(&std::fs::read_to_string(&a.settings.tls.node_cert).unwrap()).unwrap();
    let rotate = |names: &[&str]| {
        let mut adm = admin(&a, &node);
        let req = threatmesh::proto::v1::RotateNodeCertRequest {
            days: 30,
            dns_names: names.iter().map(|s| s.to_string()).collect(),
        };
        async move { adm.rotate_node_cert(req).await }
    };
    rotate(&[]).await.unwrap();
    assert_eq!(node_names(), ["localhost", "127.0.0.1"]);
    rotate(&["node.a.example"]).await.unwrap();
    assert_eq!(node_names(), ["node.a.example"]);
    let e = rotate(&["*.a.example"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("dns_names:"), "{e:?}");
    assert_eq!(node_names(), ["node.a.example"]);
    node.stop().await;
}

/// One draft of every kind, spread over every TLP label, with every field
/// the mappings carry set somewhere.
fn every_kind_and_label() -> Vec<threatmesh::proto::v1::IndicatorDraft> {
    use threatmesh::proto::v1::{IndicatorKind as K, Tlp as T};
    let now = now_ms();
    let cases: [(K, &str, T, &[&str]); 10] = [
        (K::Ipv4, "192.0.2.7", T::Clear, &[]),
        (K::Ipv6, "2001:db8::7", T::Green, &[]),
        (K::Cidr, "198.51.100.0/24", T::Amber, &["b.example"]),
        (K::Cidr, "2001:db8:1::/48", T::Green, &[]),
        (
            K::Domain,
            "login-bank.example",
            T::AmberStrict,
            &["b.example"],
        ),
        (
            K::Url,
            "http://dropper.example/it's\\x",
            T::Red,
            &["b.example"],
        ),
        (K::Email, "ceo@phish.example", T::Green, &[]),
        (K::Sha256, &"ab".repeat(32), T::Green, &[]),
        (K::Sha1, &"cd".repeat(20), T::Clear, &[]),
        (K::Md5, &"ef".repeat(16), T::Clear, &[]),
    ];
    cases
        .into_iter()
        .enumerate()
        .map(|(i, (kind, value, tlp, to))| {
            let mut d = draft(kind, value, tlp, to);
            d.confidence = 60 + i as u32;
            d.tags = vec![format!("tag-{i}"), "shared".into()];
            d.jurisdictions = if i % 2 == 0 {
                vec!["DE".into()]
            } else {
                vec![]
            };
            d.kill_chain_phases = vec!["delivery".into(), "mitre-attack:execution".into()];
            d.valid_from_unix_ms = now - 60_000;
            d.valid_until_unix_ms = if i % 3 == 0 { now + 86_400_000 } else { 0 };
            d.description = format!("case {i}: it's \"quoted\", with, commas\nand a line");
            if let Some(m) = d.marking.as_mut() {
                m.may_forward = i == 6;
                m.hop_limit = if i == 6 { 2 } else { 0 };
            }
            d
        })
        .collect()
}

/// What publishing carries of an indicator, keyed by value: everything but
/// its origin, id, version and times of its own.
async fn content_by_value(node: &RunningNode) -> std::collections::BTreeMap<String, String> {
    node.ctx
        .store
        .indicators(None)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let i = threatmesh::exchange::decode_stored(&r.envelope).unwrap();
            let fields = format!(
                "{:?} {:?} {} {:?} {:?} {:?} {} {} {:?} {}",
                i.kind,
                i.marking,
                i.confidence,
                i.tags,
                i.jurisdictions,
                i.kill_chain_phases,
                i.valid_from_unix_ms,
                i.valid_until_unix_ms,
                i.description,
                i.revoked
            );
            (i.value, fields)
        })
        .collect()
}

/// Export from A, import at B: the same indicators, field by field (B is
/// their origin now), through STIX and through CSV; importing again
/// publishes nothing twice; a dry run publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_from_one_org_and_imported_at_another_the_indicators_are_the_same() {
    let (a, b) = (Org::new("a.example"), Org::new("b.example"));
    let (node_a, node_b) = (start(&a).await, start(&b).await);
    publish_all(&publisher(&a, &node_a), every_kind_and_label(), 4).await;
    let want = content_by_value(&node_a).await;
    assert_eq!(want.len(), 10);
    let dir = tempfile::tempdir().unwrap();
    for format in ["stix", "csv"] {
        let file = dir.path().join(format!("a.{format}"));
        let path = file.to_str().unwrap();
        let out = cli(&a, &node_a, &["export", "--format", format, "--out", path]);
        assert!(out.status.success(), "{out:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "an export holds partners' data");
        }
        let before = node_b.ctx.store.count_indicators().await.unwrap();
        let dry = cli(&b, &node_b, &["import", "--dry-run", path]);
        assert!(dry.status.success(), "{dry:?}");
        assert_eq!(node_b.ctx.store.count_indicators().await.unwrap(), before);

        let imported = cli(&b, &node_b, &["import", path]);
        let text = String::from_utf8_lossy(&imported.stderr).to_string();
        assert!(imported.status.success(), "{text}");
        assert!(text.contains("imported 10 indicator(s)"), "{text}");
        assert_eq!(content_by_value(&node_b).await, want, "{format}");
        let again = cli(&b, &node_b, &["import", path]);
        let text = String::from_utf8_lossy(&again.stderr).to_string();
        assert!(
            text.contains("imported 0 indicator(s); 10 already imported earlier"),
            "{text}"
        );
        // The CSV round below brings the same content again under other
        // keys (another source): ten more versions, the same content.
        let held = node_b.ctx.store.count_indicators().await.unwrap();
        assert_eq!(held, if format == "stix" { 10 } else { 20 });
    }
    // --since: only what was stored at or after it.
    let later = cli(
        &a,
        &node_a,
        &[
            "export",
            "--format",
            "csv",
            "--since",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(later.status.success(), "{later:?}");
    assert_eq!(
        String::from_utf8_lossy(&later.stdout).lines().count(),
        1,
        "the header only"
    );
    let exported = ledger(&node_a, "").await;
    assert!(
        exported
            .iter()
            .filter(|r| r.entry.event == "exported")
            .count()
            == 3,
        "{exported:#?}"
    );
    node_a.stop().await;
    node_b.stop().await;
}

/// `export --partner B` is exactly what B's policy releases to B: the same
/// set B holds once its link has caught up; the export is on A's ledger.
/// Blocklists hold what blocks now, one file per kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_export_is_exactly_what_the_partner_receives() {
    let a = Org::new("a.example");
    let b = Org::new("b.example");
    // B gets GREEN and below, network kinds only, confidence 61 or more.
    a.add_peer_with(
        &b,
        None,
        "name = \"b-view\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n\
         kinds = [\"ipv4\", \"ipv6\", \"cidr\", \"domain\", \"url\"]\nmin_confidence = 61\n",
    )
    .await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    publish_all(&publisher(&a, &node_a), every_kind_and_label(), 4).await;
    caught_up(&node_b, &a, &node_a).await;
    let at_b: std::collections::BTreeSet<String> =
        content_by_value(&node_b).await.into_keys().collect();
    assert!(!at_b.is_empty() && at_b.len() < 10, "{at_b:?}");

    let out = cli(
        &a,
        &node_a,
        &["export", "--format", "csv", "--partner", "b.example"],
    );
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut records = threatmesh::interop::csv::Records::new(csv.as_bytes());
    records.next_record().unwrap();
    let mut exported = std::collections::BTreeSet::new();
    while let Some((_, r)) = records.next_record().unwrap() {
        exported.insert(r[4].clone());
    }
    assert_eq!(exported, at_b);
    let note = String::from_utf8_lossy(&out.stderr);
    assert!(
        note.contains(&format!(
            "b.example's policy view; {} withheld",
            10 - at_b.len()
        )),
        "{note}"
    );
    let rows = ledger(&node_a, "b.example").await;
    assert!(rows.iter().any(|r| {
        r.entry.event == "exported"
            && r.entry
                .detail
                .contains(&format!("{} indicator(s) as csv", at_b.len()))
    }));
    let unknown = cli(
        &a,
        &node_a,
        &["export", "--format", "csv", "--partner", "z.example"],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("z.example is not registered"));

    // Blocklists: one file per kind, revoked and expired ones left out.
    let dir = tempfile::tempdir().unwrap();
    let lists = dir.path().join("lists");
    let out = cli(
        &a,
        &node_a,
        &[
            "export",
            "--format",
            "blocklist",
            "--out",
            lists.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let read = |k: &str| std::fs::read_to_string(lists.join(format!("{k}.txt"))).unwrap();
    assert_eq!(read("ipv4"), "192.0.2.7\n");
    assert_eq!(read("cidr"), "198.51.100.0/24\n2001:db8:1::/48\n");
    assert_eq!(read("domain"), "login-bank.example\n");
    let domains = cli(
        &a,
        &node_a,
        &["export", "--format", "blocklist", "--kind", "domain"],
    );
    assert_eq!(
        String::from_utf8_lossy(&domains.stdout),
        "login-bank.example\n"
    );
    node_b.stop().await;
    node_a.stop().await;
}

/// A MISP event: attribute types map to kinds, tlp tags and distribution
/// to labels, other tags to tags; what has no kind or no shareable label is
/// skipped and reported by name; a second import publishes nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_event_imports_with_types_and_labels_mapped_and_the_rest_reported() {
    let a = Org::new("a.example");
    let node = start(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("event.json");
    std::fs::write(
        &file,
        serde_json::json!({"Event": {
            "uuid": "5f1c0000-0000-4000-8000-000000000001",
            "info": "Phishing wave against banks", "distribution": "2",
            "Tag": [{"name": "tlp:green"}, {"name": "phishing"}],
            "Attribute": [
                {"uuid": "a1", "type": "ip-dst", "value": "192.0.2.9", "timestamp": "1700000000", "category": "Network activity", "to_ids": true},
                {"uuid": "a2", "type": "domain", "value": "Bank-Login.example", "timestamp": "1700000000", "Tag": [{"name": "tlp:amber"}]},
                {"uuid": "a3", "type": "filename|md5", "value": "invoice.exe|0123456789abcdef0123456789abcdef", "timestamp": "1700000000"},
                {"uuid": "a4", "type": "regkey", "value": "HKLM\\Software\\Evil", "timestamp": "1700000000"},
                {"uuid": "a5", "type": "url", "value": "http://bank-login.example/x", "timestamp": "1700000000", "Tag": [{"name": "tlp:red"}]},
                {"uuid": "a6", "type": "ip-src", "value": "999.1.1.1", "timestamp": "1700000000"}
            ],
            "Object": [{"name": "email", "Attribute": [
                {"uuid": "a7", "type": "email-src", "value": "ceo@bank-login.example", "timestamp": "1700000000"}
            ]}]
        }})
        .to_string(),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = cli(&a, &node, &["import", path]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    // The invalid address fails the import's status, naming where it is.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Event[0].Attribute[5] a6: value:"), "{err}");
    assert!(err.contains("imported 4 indicator(s)"), "{err}");
    assert!(err.contains("MISP type 'regkey' is not carried"), "{err}");
    assert!(err.contains("need named recipients"), "{err}");
    let got = content_by_value(&node).await;
    let keys: Vec<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "0123456789abcdef0123456789abcdef",
            "192.0.2.9",
            "bank-login.example",
            "ceo@bank-login.example"
        ]
    );
    assert!(
        got["bank-login.example"].contains("tlp: Amber"),
        "{}",
        got["bank-login.example"]
    );
    assert!(got["192.0.2.9"].contains("\"phishing\""));
    let again = cli(&a, &node, &["import", path]);
    assert!(
        String::from_utf8_lossy(&again.stderr)
            .contains("imported 0 indicator(s); 4 already imported earlier")
    );
    node.stop().await;
}

/// `lookup` finds every version of a value, normalised as publish
/// normalises it, with where it came from and each release decision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_shows_versions_origin_path_and_release_decisions() {
    use threatmesh::proto::v1::{IndicatorKind, PublishRequest, Tlp};
    let (a, b, node_a, node_b) = linked_pair().await;
    let mut p = publisher(&a, &node_a);
    let first = p
        .publish(PublishRequest {
            indicator: Some(draft(
                IndicatorKind::Domain,
                "Login-Bank.Example.",
                Tlp::Green,
                &[],
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut update = draft(IndicatorKind::Domain, "login-bank.example", Tlp::Green, &[]);
    update.id = first.id.clone();
    update.confidence = 95;
    p.publish(PublishRequest {
        indicator: Some(update),
        ..Default::default()
    })
    .await
    .unwrap();
    // AMBER is above the open policy's GREEN ceiling: withheld from B.
    p.publish(PublishRequest {
        indicator: Some(draft(
            IndicatorKind::Ipv4,
            "192.0.2.99",
            Tlp::Amber,
            &["b.example"],
        )),
        ..Default::default()
    })
    .await
    .unwrap();
    caught_up(&node_b, &a, &node_a).await;

    let json = |org: &Org, node: &RunningNode, args: &[&str]| -> serde_json::Value {
        let out = cli(org, node, args);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let at_a = json(&a, &node_a, &["lookup", "--json", "LOGIN-bank.example."]);
    assert_eq!(at_a["kind"], "domain");
    assert_eq!(at_a["value"], "login-bank.example");
    let versions = at_a["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["confidence"], 95);
    assert_eq!(versions[0]["received_from"], "");
    let decisions = at_a["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2, "{decisions:#?}");
    assert!(
        decisions
            .iter()
            .all(|d| d["event"] == "sent" && d["partner"] == "b.example")
    );
    assert_eq!(decisions[1]["version"], 2);

    let at_b = json(&b, &node_b, &["lookup", "--json", "login-bank.example"]);
    let v = &at_b["versions"][0];
    assert_eq!(
        (v["origin"].as_str(), v["received_from"].as_str()),
        (Some("a.example"), Some("a.example"))
    );
    assert_eq!(v["path"], serde_json::json!(["a.example"]));

    let withheld = json(&a, &node_a, &["lookup", "--json", "192.0.2.99"]);
    let d = &withheld["decisions"][0];
    assert_eq!(
        (d["event"].as_str(), d["partner"].as_str()),
        (Some("withheld"), Some("b.example"))
    );
    assert!(!d["rule"].as_str().unwrap().is_empty());
    let text = cli(&a, &node_a, &["lookup", "evil.example"]);
    assert_eq!(
        String::from_utf8_lossy(&text.stdout),
        "domain evil.example: not held\n"
    );
    let bad = cli(&a, &node_a, &["lookup", "--kind", "ipv4", "not-an-ip"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("value:"),
        "{bad:?}"
    );
    node_b.stop().await;
    node_a.stop().await;
}

/// A request to the TAXII server as a standard client makes it (ordinary
/// hostname verification against `server_ca`, `client` certificate or
/// none): status, headers, JSON body.
async fn https(
    addr: std::net::SocketAddr,
    server_ca: &str,
    client: Option<(&std::path::Path, &std::path::Path)>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<(String, String)>, serde_json::Value), String> {
    use threatmesh::taxii::client;
    let tls = client::client_tls(server_ca, client)?;
    let payload = body.map(|b| b.to_string());
    let r = client::request(
        addr,
        "localhost",
        tls,
        method,
        path,
        payload.as_deref().map(str::as_bytes),
    )
    .await?;
    Ok((r.status, r.headers.clone(), r.json()?))
}

/// TAXII 2.1 as a partner sees it: discovery, the API root, the one
/// collection, objects page by page (limit/next, added_after) that are
/// exactly its policy view — another partner's differs — each release on
/// the ledger; a request without a certificate is refused; our publisher
/// may POST objects and read the status back; a partner may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_serves_each_partner_exactly_its_policy_view() {
    let a = Org::new("a.example");
    let (b, c) = (Org::new("b.example"), Org::new("c.example"));
    a.add_peer_with(
        &b,
        None,
        "name = \"b-view\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n\
         kinds = [\"ipv4\", \"ipv6\", \"cidr\", \"domain\", \"url\"]\nmin_confidence = 61\n",
    )
    .await;
    a.add_peer(&c, None).await;
    let node_a = start_with_taxii(&a).await;
    let taxii = node_a.taxii.unwrap();
    publish_all(&publisher(&a, &node_a), every_kind_and_label(), 4).await;
    let ca = a.ca_pem();
    let node_cert = |o: &Org| {
        (
            o.settings.tls.node_cert.clone(),
            o.settings.tls.node_key.clone(),
        )
    };
    let (b_cert, b_key) = node_cert(&b);
    let as_b = Some((b_cert.as_path(), b_key.as_path()));
    let get = |path: String, who| {
        let ca = ca.clone();
        async move { https(taxii, &ca, who, "GET", &path, None).await.unwrap() }
    };

    let (status, headers, disc) = get("/taxii2/".into(), as_b).await;
    assert_eq!(status, 200, "{disc}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/taxii+json;version=2.1")
    );
    let root = disc["default"].as_str().unwrap();
    assert!(root.ends_with("/api/"), "{disc}");
    let (_, _, api) = get("/api/".into(), as_b).await;
    assert_eq!(api["versions"][0], "application/taxii+json;version=2.1");
    let (_, _, cols) = get("/api/collections/".into(), as_b).await;
    let col = &cols["collections"][0];
    assert_eq!(
        (col["can_read"].as_bool(), col["can_write"].as_bool()),
        (Some(true), Some(false))
    );
    let cid = col["id"].as_str().unwrap().to_string();

    // Page by page, one object at a time.
    let mut seen = std::collections::BTreeSet::new();
    let mut next = None::<String>;
    let mut pages = 0;
    loop {
        let path = match &next {
            None => format!("/api/collections/{cid}/objects/?limit=1"),
            Some(n) => format!("/api/collections/{cid}/objects/?limit=1&next={n}"),
        };
        let (status, _, page) = get(path, as_b).await;
        assert_eq!(status, 200, "{page}");
        for o in page["objects"].as_array().unwrap() {
            assert_eq!(o["type"], "indicator");
            seen.insert(o["pattern"].as_str().unwrap().to_string());
        }
        pages += 1;
        if page["more"] == true {
            next = Some(page["next"].as_str().unwrap().to_string());
        } else {
            break;
        }
    }
    let out = cli(
        &a,
        &node_a,
        &["export", "--format", "stix", "--partner", "b.example"],
    );
    let bundle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: std::collections::BTreeSet<String> = bundle["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["type"] == "indicator")
        .map(|o| o["pattern"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, want, "B's TAXII view is its policy view");
    assert!(pages >= want.len());
    let sent = ledger(&node_a, "b.example").await;
    assert!(sent.iter().any(|r| r.entry.event == "sent"), "{sent:#?}");

    // C's policy (the open one) gives it another view.
    let (c_cert, c_key) = node_cert(&c);
    let (_, _, c_page) = get(
        format!("/api/collections/{cid}/objects/"),
        Some((c_cert.as_path(), c_key.as_path())),
    )
    .await;
    let c_seen: std::collections::BTreeSet<String> = c_page["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["pattern"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(c_seen, seen);
    assert!(!c_seen.is_empty());

    // added_after the newest: nothing.
    let (_, headers, all) = get(format!("/api/collections/{cid}/objects/"), as_b).await;
    let last = headers
        .iter()
        .find(|(k, _)| k == "x-taxii-date-added-last")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(all["objects"].as_array().unwrap().len(), want.len());
    let (_, _, none) = get(
        format!("/api/collections/{cid}/objects/?added_after={last}"),
        as_b,
    )
    .await;
    assert!(none["objects"].as_array().unwrap().is_empty(), "{none}");

    // One object, its versions, the manifest.
    let first = &all["objects"][0];
    let oid = first["id"].as_str().unwrap();
    let (status, _, one) = get(format!("/api/collections/{cid}/objects/{oid}/"), as_b).await;
    assert_eq!((status, one["objects"][0]["id"].as_str()), (200, Some(oid)));
    let (_, _, vers) = get(
        format!("/api/collections/{cid}/objects/{oid}/versions/"),
        as_b,
    )
    .await;
    assert_eq!(vers["versions"][0], first["modified"]);
    let (_, _, only_malware) = get(
        format!("/api/collections/{cid}/objects/?match[type]=malware"),
        as_b,
    )
    .await;
    assert!(only_malware["objects"].as_array().unwrap().is_empty());
    let (_, _, by_id) = get(
        format!("/api/collections/{cid}/objects/?match[id]={oid}&match[version]=all"),
        as_b,
    )
    .await;
    assert_eq!(by_id["objects"].as_array().unwrap().len(), 1, "{by_id}");
    let (_, _, man) = get(format!("/api/collections/{cid}/manifest/"), as_b).await;
    assert_eq!(man["objects"].as_array().unwrap().len(), want.len());
    // An object B may not read does not exist for B.
    let red = content_ids_with_tlp(&node_a, "RED").await;
    let (status, _, _) = get(
        format!("/api/collections/{cid}/objects/indicator--{red}/"),
        as_b,
    )
    .await;
    assert_eq!(status, 404);

    // Without a client certificate: refused.
    // (or refused in the handshake, which is as good)
    if let Ok((status, _, body)) = https(taxii, &ca, None, "GET", "/taxii2/", None).await {
        assert_eq!(status, 401, "{body}");
    }

    // A certificate of an org that is not our partner: refused.
    let z = Org::new("z.example");
    let (z_cert, z_key) = node_cert(&z);
    if let Ok((status, _, body)) = https(
        taxii,
        &ca,
        Some((z_cert.as_path(), z_key.as_path())),
        "GET",
        "/taxii2/",
        None,
    )
    .await
    {
        assert_eq!(status, 401, "{body}");
    }

    // Our publisher POSTs a bundle; the status resource says what became of it.
    let (p_cert, p_key) = (
        a.settings.client.publisher_cert.clone(),
        a.settings.client.publisher_key.clone(),
    );
    let as_pub = Some((p_cert.as_path(), p_key.as_path()));
    let mut obj = first.clone();
    obj["id"] = "indicator--11111111-2222-4333-8444-555555555555".into();
    obj["pattern"] = "[domain-name:value = 'posted.example']".into();
    let envelope = serde_json::json!({"objects": [obj, {"type": "malware", "id": "malware--1"}]});
    let (status, _, st) = https(
        taxii,
        &ca,
        as_pub,
        "POST",
        &format!("/api/collections/{cid}/objects/"),
        Some(&envelope),
    )
    .await
    .unwrap();
    assert_eq!(status, 202, "{st}");
    assert_eq!(
        (st["success_count"].as_u64(), st["failure_count"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    let (status, _, again) = https(
        taxii,
        &ca,
        as_pub,
        "GET",
        &format!("/api/status/{}/", st["id"].as_str().unwrap()),
        None,
    )
    .await
    .unwrap();
    assert_eq!((status, &again), (200, &st));
    let (status, _, _) = https(
        taxii,
        &ca,
        as_b,
        "POST",
        &format!("/api/collections/{cid}/objects/"),
        Some(&envelope),
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    node_a.stop().await;
}

/// The id of an indicator `node` holds with TLP label `tlp`.
async fn content_ids_with_tlp(node: &RunningNode, tlp: &str) -> String {
    node.ctx
        .store
        .indicators(None)
        .await
        .unwrap()
        .iter()
        .map(|r| threatmesh::exchange::decode_stored(&r.envelope).unwrap())
        .find(|i| threatmesh::model::tlp_name(i.marking.as_ref().unwrap().tlp) == Some(tlp))
        .map(|i| i.id)
        .unwrap()
}

/// `export --format misp-feed` writes a directory MISP adds as a feed; its
/// event, imported elsewhere as MISP, gives the same kinds, values, labels
/// (RED and AMBER+STRICT, which need recipients MISP cannot carry, are
/// skipped and reported), tags and descriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misp_feed_export_imports_as_misp_elsewhere() {
    let (a, b) = (Org::new("a.example"), Org::new("b.example"));
    let (node_a, node_b) = (start(&a).await, start(&b).await);
    publish_all(&publisher(&a, &node_a), every_kind_and_label(), 4).await;
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed");
    let out = cli(
        &a,
        &node_a,
        &[
            "export",
            "--format",
            "misp-feed",
            "--out",
            feed.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(feed.join("manifest.json")).unwrap())
            .unwrap();
    let (uuid, entry) = manifest.as_object().unwrap().iter().next().unwrap();
    assert_eq!(entry["Orgc"]["name"], "a.example");
    let event = feed.join(format!("{uuid}.json"));
    let imported = cli(
        &b,
        &node_b,
        &["import", "--format", "misp", event.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&imported.stderr).to_string();
    assert!(imported.status.success(), "{err}");
    assert!(
        err.contains("imported 8 indicator(s)") && err.contains("skipped 2"),
        "{err}"
    );
    let at_a = misp_view(&node_a).await;
    let at_b = misp_view(&node_b).await;
    assert_eq!(at_b.len(), 8);
    for (value, got) in &at_b {
        assert_eq!(Some(got), at_a.get(value), "{value}");
    }
    node_a.stop().await;
    node_b.stop().await;
}

/// What MISP carries of each indicator `node` holds, by value: kind, TLP
/// label, tags, description.
async fn misp_view(
    node: &RunningNode,
) -> std::collections::BTreeMap<String, (i32, i32, Vec<String>, String)> {
    node.ctx
        .store
        .indicators(None)
        .await
        .unwrap()
        .iter()
        .map(|r| threatmesh::exchange::decode_stored(&r.envelope).unwrap())
        .map(|i| {
            let tlp = i.marking.as_ref().map(|m| m.tlp).unwrap_or(0);
            (i.value, (i.kind, tlp, i.tags, i.description))
        })
        .collect()
}

/// One raw TAXII request with the given headers: status and body text.
async fn taxii_raw(
    addr: std::net::SocketAddr,
    org: &Org,
    who: (&std::path::Path, &std::path::Path),
    (method, path): (&str, &str),
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String) {
    use threatmesh::taxii::client;
    let tls = client::client_tls(&org.ca_pem(), Some(who)).unwrap();
    let r = client::request_with(addr, "localhost", tls, (method, path), headers, body)
        .await
        .unwrap();
    (r.status, String::from_utf8_lossy(&r.body).to_string())
}

/// POSTs `doc` as `content_type` to `path` of `org`'s TAXII server.
async fn taxii_post(
    addr: std::net::SocketAddr,
    org: &Org,
    who: (&std::path::Path, &std::path::Path),
    path: &str,
    content_type: &str,
    doc: &serde_json::Value,
) -> (u16, String) {
    let media = "application/taxii+json;version=2.1";
    let raw = doc.to_string();
    let headers = [("Accept", media), ("Content-Type", content_type)];
    taxii_raw(
        addr,
        org,
        who,
        ("POST", path),
        &headers,
        Some(raw.as_bytes()),
    )
    .await
}

/// What TAXII 2.1 says a server answers, each as a TAXII error message:
/// 406 for an Accept without TAXII, 415 for a POST that is not a TAXII
/// envelope, 413 past `taxii.max_content_length`, 429 past the partner's
/// request rate, 401 for a certificate revoked since it was issued — and
/// nothing is stored by any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taxii_answers_bad_media_oversize_rate_and_revoked_certificates_by_the_standard() {
    let mut a = Org::new("a.example");
    a.settings.taxii.max_content_length = 4096;
    a.settings.limits.partner_requests_per_second = 1;
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node = start_with_taxii(&a).await;
    let taxii = node.taxii.unwrap();
    let media = "application/taxii+json;version=2.1";
    let (p_cert, p_key) = (
        a.settings.client.publisher_cert.clone(),
        a.settings.client.publisher_key.clone(),
    );
    let as_pub = (p_cert.as_path(), p_key.as_path());
    let (_, cols) = taxii_raw(
        taxii,
        &a,
        as_pub,
        ("GET", "/api/collections/"),
        &[("Accept", media)],
        None,
    )
    .await;
    let cols: serde_json::Value = serde_json::from_str(&cols).unwrap();
    let objects = format!(
        "/api/collections/{}/objects/",
        cols["collections"][0]["id"].as_str().unwrap()
    );
    let is_taxii_error = |status: u16, body: &str, want: u16| {
        assert_eq!(status, want, "{body}");
        let e: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("a {want} must be a TAXII error message ({e}): {body}"));
        assert!(
            e["title"].is_string() && e["http_status"].is_string(),
            "{e}"
        );
    };

    // Accept without TAXII 2.1.
    let (status, body) = taxii_raw(
        taxii,
        &a,
        as_pub,
        ("GET", "/taxii2/"),
        &[("Accept", "text/html")],
        None,
    )
    .await;
    is_taxii_error(status, &body, 406);

    // A POST of plain JSON.
    let one = serde_json::json!({"objects": [{
        "type": "indicator", "spec_version": "2.1",
        "id": "indicator--11111111-2222-4333-8444-555555555555",
        "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
        "pattern": "[domain-name:value = 'posted.example']", "pattern_type": "stix",
        "valid_from": "2026-01-01T00:00:00.000Z",
        "object_marking_refs": ["marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"]
    }]});
    let (status, body) = taxii_post(taxii, &a, as_pub, &objects, "application/json", &one).await;
    is_taxii_error(status, &body, 415);

    // A body past taxii.max_content_length.
    let mut big = one.clone();
    big["objects"][0]["description"] = "x".repeat(8192).into();
    let (status, body) = taxii_post(taxii, &a, as_pub, &objects, media, &big).await;
    is_taxii_error(status, &body, 413);

    // A partner past its request rate (1/s, bursts of 2).
    let (b_cert, b_key) = (
        b.settings.tls.node_cert.clone(),
        b.settings.tls.node_key.clone(),
    );
    let mut answers = Vec::new();
    for _ in 0..50 {
        let (status, body) = taxii_raw(
            taxii,
            &a,
            (b_cert.as_path(), b_key.as_path()),
            ("GET", "/taxii2/"),
            &[("Accept", media)],
            None,
        )
        .await;
        if status == 429 {
            is_taxii_error(status, &body, 429);
            assert!(body.contains("partner_requests_per_second"), "{body}");
            break;
        }
        answers.push(status);
    }
    assert!(answers.len() < 50, "never limited: {answers:?}");

    // Our publisher's certificate, revoked: refused from the next request.
    let serial = threatmesh::identity::cert_serial(a.publisher_cert().chain[0].as_ref()).unwrap();
    admin(&a, &node)
        .revoke_cert(threatmesh::proto::v1::RevokeCertRequest {
            which: Some(threatmesh::proto::v1::revoke_cert_request::Which::Serial(
                serial,
            )),
            reason: "key stolen".into(),
        })
        .await
        .unwrap();
    let (status, body) = taxii_post(taxii, &a, as_pub, &objects, media, &one).await;
    is_taxii_error(status, &body, 401);
    assert!(body.contains("revoked"), "{body}");

    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 0);
    node.stop().await;
}

/// A bundle whose indicators carry long descriptions imports whole into a
/// node that takes requests no larger than the smallest allowed
/// `limits.max_message_bytes`: the importer sizes its batches in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_large_indicators_fits_the_node_s_smallest_message_limit() {
    let mut a = Org::new("a.example");
    a.settings.limits.max_message_bytes = threatmesh::config::MIN_MESSAGE_BYTES;
    let node = start(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.stix.json");
    let green = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
    let objects: Vec<serde_json::Value> = (0..300u32)
        .map(|i| {
            serde_json::json!({
                "type": "indicator", "spec_version": "2.1",
                "id": format!("indicator--00000000-0000-4000-8000-{i:012}"),
                "created": "2026-01-01T00:00:00.000Z", "modified": "2026-01-01T00:00:00.000Z",
                "pattern": format!("[domain-name:value = 'host{i}.example']"),
                "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00.000Z",
                // Random text: requests may be compressed.
                "description": (0..110).map(|_| uuid::Uuid::new_v4().to_string()).collect::<String>(),
                "object_marking_refs": [green]
            })
        })
        .collect();
    let bundle = serde_json::json!({
        "type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000001",
        "objects": objects
    });
    std::fs::write(&file, bundle.to_string()).unwrap();
    let out = cli(&a, &node, &["import", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("imported 300 indicator(s)"), "{text}");
    assert_eq!(node.ctx.store.count_indicators().await.unwrap(), 300);
    node.stop().await;
}
