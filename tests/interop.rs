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
