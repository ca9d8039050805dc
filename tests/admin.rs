//! The Admin service: own-org admins only, every change on the ledger under
//! the admin's identity, partner CRLs (including what a stale one means),
//! and partner CA bundles replaced while the node runs.

mod common;

use common::*;
use threatmesh::identity::{
    RevokedEntry, SpiffeId, cert_serial, certificate_request, generate_ca, issue, sign_crl,
};
use threatmesh::proto::v1::revoke_cert_request::Which;
use threatmesh::proto::v1::*;

const DAY_MS: i64 = 86_400_000;

/// A CRL of `org`'s CA revoking `serials`, valid from `this_update_ms` for
/// `validity_ms`.
fn crl_of(
    org: &Org,
    serials: &[String],
    number: u64,
    this_update_ms: i64,
    validity_ms: i64,
) -> Vec<u8> {
    let entries: Vec<RevokedEntry> = serials
        .iter()
        .map(|s| RevokedEntry {
            serial: s.clone(),
            revoked_ms: this_update_ms,
        })
        .collect();
    sign_crl(
        &org.ca_pem(),
        &org.ca_key_pem(),
        &entries,
        number,
        this_update_ms,
        validity_ms,
    )
    .unwrap()
    .into_bytes()
}

async fn import_crl(
    a: &Org,
    node: &RunningNode,
    partner: &Org,
    crl: Vec<u8>,
) -> Result<CrlResponse, tonic::Status> {
    admin(a, node)
        .import_crl(ImportCrlRequest {
            partner: partner.id.to_string(),
            crl,
        })
        .await
        .map(|r| r.into_inner())
}

/// Publishes one indicator at A and says whether B has it after A's other
/// partner traffic settled.
/// A certificate of `org` for `role`/`name`, issued through the Admin API
/// from a request made here, valid 30 days; and its private key (PEM).
async fn issue_via_admin(
    al: &mut threatmesh::proto::v1::admin_client::AdminClient<tonic::transport::Channel>,
    org: &Org,
    role: CertRole,
    name: &str,
) -> (CertRecord, String) {
    let id = match role {
        CertRole::Admin => SpiffeId::admin(&org.id, name),
        _ => SpiffeId::publisher(&org.id, name),
    };
    let (csr, key_pem) = certificate_request(&id.unwrap()).unwrap();
    let cert = al
        .issue_cert(IssueCertRequest {
            role: role as i32,
            name: name.into(),
            days: 30,
            csr_pem: csr,
        })
        .await
        .unwrap()
        .into_inner();
    (cert, key_pem)
}

async fn reaches_b(a: &Org, node_a: &RunningNode, node_b: &RunningNode, i: u32) -> bool {
    let r = publish_all(&publisher(a, node_a), vec![ipv4_draft(i, Tlp::Green)], 1).await;
    let id = r[0].id.clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        if ids_at(node_b).await.contains(&id) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_publishers_partner_nodes_and_partner_admins() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let audit_before = node_a.ctx.store.count_audit().await.unwrap();
    let own_publisher = cert_serial(a.publisher_cert().chain[0].as_ref()).unwrap();
    let callers = [
        ("A's publisher", a.publisher_cert()),
        ("B's node", b.node_cert()),
        ("B's admin", b.admin_cert()),
    ];
    for (who, cert) in callers {
        let mut c = admin_as(&a, &node_a, &cert);
        let denied = |r: Result<(), tonic::Status>| {
            let e = r.expect_err(who);
            assert_eq!(e.code(), tonic::Code::PermissionDenied, "{who}: {e:?}");
            assert!(
                e.message().contains("only spiffe://a.example/admin/<name>"),
                "{who}: {}",
                e.message()
            );
        };
        denied(c.list_peers(ListPeersRequest {}).await.map(drop));
        denied(
            c.set_peer_state(SetPeerStateRequest {
                org: "b.example".into(),
                action: PeerAction::Suspend as i32,
            })
            .await
            .map(drop),
        );
        denied(
            c.apply_policy(ApplyPolicyRequest {
                document: "name = \"x\"\n[egress]\ntlp_ceiling = \"RED\"\n".into(),
            })
            .await
            .map(drop),
        );
        denied(
            c.revoke_cert(RevokeCertRequest {
                which: Some(Which::Serial(own_publisher.clone())),
                reason: "hostile".into(),
            })
            .await
            .map(drop),
        );
        let (csr, _) = certificate_request(&SpiffeId::admin(&a.id, "mallory").unwrap()).unwrap();
        denied(
            c.issue_cert(IssueCertRequest {
                role: CertRole::Admin as i32,
                name: "mallory".into(),
                days: 30,
                csr_pem: csr,
            })
            .await
            .map(drop),
        );
        denied(
            c.import_crl(ImportCrlRequest {
                partner: "b.example".into(),
                crl: crl_of(&b, &[], 1, now_ms(), DAY_MS),
            })
            .await
            .map(drop),
        );
        denied(
            c.audit_verify(AuditVerifyRequest::default())
                .await
                .map(drop),
        );
    }
    // Nothing changed.
    let store = &node_a.ctx.store;
    let peers = store.peers().await.unwrap();
    assert_eq!(peers[0].state, threatmesh::store::PeerState::Active);
    assert_eq!(store.policies().await.unwrap().len(), 1);
    assert!(store.revoked_serials().await.unwrap().is_empty());
    assert!(store.partner_crls().await.unwrap().is_empty());
    assert_eq!(store.count_audit().await.unwrap(), audit_before);
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_is_on_the_ledger_with_the_admins_identity() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let c = Org::new("c.example");

    // A second admin, issued through the API from a request made here.
    let alice_id = SpiffeId::admin(&a.id, "alice").unwrap();
    let (csr, key) = certificate_request(&alice_id).unwrap();
    let issued = admin(&a, &node_a)
        .issue_cert(IssueCertRequest {
            role: CertRole::Admin as i32,
            name: "alice".into(),
            days: 30,
            csr_pem: csr,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issued.spiffe_id, alice_id.to_string());
    let alice = threatmesh::identity::CertifiedKey::from_pem(&issued.cert_pem, &key).unwrap();
    let mut al = admin_as(&a, &node_a, &alice);

    al.apply_policy(ApplyPolicyRequest {
        document: "name = \"isp\"\n[egress]\ntlp_ceiling = \"CLEAR\"\n".into(),
    })
    .await
    .unwrap();
    let added = al
        .add_peer(AddPeerRequest {
            card: Some(c.card()),
            endpoint: Some(String::new()),
            policy: "isp".into(),
            introducer: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(added.added);
    let p = al
        .update_peer(UpdatePeerRequest {
            org: "c.example".into(),
            endpoint: Some("127.0.0.1:9".into()),
            policy: None,
            introducer: Some(true),
        })
        .await
        .unwrap()
        .into_inner()
        .peer
        .unwrap();
    assert!(p.introducer && p.endpoint == "127.0.0.1:9");
    for action in [PeerAction::Suspend, PeerAction::Resume, PeerAction::Remove] {
        al.set_peer_state(SetPeerStateRequest {
            org: "c.example".into(),
            action: action as i32,
        })
        .await
        .unwrap();
    }
    let (feed, _) = issue_via_admin(&mut al, &a, CertRole::Publisher, "feed").await;
    al.revoke_cert(RevokeCertRequest {
        which: Some(Which::Serial(feed.serial.clone())),
        reason: "test".into(),
    })
    .await
    .unwrap();
    al.import_crl(ImportCrlRequest {
        partner: "b.example".into(),
        crl: crl_of(&b, &[], 1, now_ms(), DAY_MS),
    })
    .await
    .unwrap();
    // The certificate the node serves cannot be revoked before a rotation.
    let served = cert_serial(a.node_cert().chain[0].as_ref()).unwrap();
    let revoke_served = RevokeCertRequest {
        which: Some(Which::Serial(served.clone())),
        reason: "superseded".into(),
    };
    let e = al.revoke_cert(revoke_served.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("rotate it first"), "{}", e.message());
    al.rotate_node_cert(RotateNodeCertRequest {
        days: 30,
        ..Default::default()
    })
    .await
    .unwrap();
    al.revoke_cert(revoke_served).await.unwrap();
    // Our CRL lists both revocations, and a partner can import it.
    let crl = al
        .export_crl(ExportCrlRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut listed = crl.revoked_serials.clone();
    listed.sort();
    let mut expected = vec![feed.serial.clone(), served.clone()];
    expected.sort();
    assert_eq!(listed, expected);
    let at_b = import_crl(&b, &node_b, &a, crl.crl_pem.into_bytes())
        .await
        .unwrap();
    assert_eq!(at_b.issuer_org, "a.example");
    assert_eq!(at_b.revoked_serials.len(), 2);

    // `threatmesh audit log` shows each with alice's identity.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .arg("--config")
        .arg(&a.config)
        .args([
            "audit",
            "log",
            "--server",
            &node_a.addr.to_string(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["actor"] == alice_id.to_string())
        .collect();
    let events: Vec<(String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = [
        ("policy-applied", "isp@1"),
        ("peer-registered", "card v"),
        ("peer-policy", "isp"),
        ("peer-updated", "endpoint '127.0.0.1:9', introducer true"),
        ("peer-state", "suspended"),
        ("peer-state", "active"),
        ("peer-state", "removed"),
        ("cert-issued", "spiffe://a.example/publisher/feed"),
        ("cert-revoked", "spiffe://a.example/publisher/feed"),
        ("crl-imported", "thisUpdate"),
        ("cert-issued", "spiffe://a.example/node"),
        ("cert-revoked", "spiffe://a.example/node"),
        ("crl-signed", "CRL number 1"),
    ];
    // The table: a header, and times in RFC 3339 with milliseconds, the
    // validity of an issued certificate too.
    let o = cli(&a, &node_a, &["audit", "log"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for title in [
        "SEQ", "AT (UTC)", "EVENT", "PARTNER", "SUBJECT", "RULE", "DETAIL",
    ] {
        assert!(header.contains(title), "{header}");
    }
    let feed_issued = lines
        .find(|l| l.contains("cert-issued") && l.contains("publisher/feed"))
        .unwrap();
    let at_col = feed_issued.split_whitespace().nth(1).unwrap();
    assert!(
        at_col.len() == 24 && at_col.ends_with('Z') && at_col.as_bytes()[19] == b'.',
        "{at_col}"
    );
    assert!(
        !table.contains("Unix ms") && feed_issued.contains("valid until 20"),
        "{feed_issued}"
    );
    let mut at = 0;
    for (event, subject) in expect {
        let found = events[at..]
            .iter()
            .position(|(e, s)| e == event && s.contains(subject))
            .unwrap_or_else(|| {
                panic!("{event} {subject} not on the ledger after row {at}: {events:?}")
            });
        at += found + 1;
    }
    // Alice's own certificate was recorded under the admin who issued it.
    let issued_row = node_a
        .ctx
        .store
        .audit_rows(None, None)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.entry.event == "cert-issued" && r.entry.subject.contains("admin/alice"))
        .unwrap();
    assert_eq!(issued_row.entry.actor, "spiffe://a.example/admin/admin");
    assert!(node_a.ctx.store.verify_audit().await.unwrap().is_ok());
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_crl_closes_and_refuses_the_revoked_certificate() {
    let (a, b, node_a, node_b) = linked_pair().await;
    let y = Org::new("y.example");
    assert!(reaches_b(&a, &node_a, &node_b, 1).await);
    let b_node = cert_serial(b.node_cert().chain[0].as_ref()).unwrap();
    let now = now_ms();

    // Not B's CA: refused, nothing stored.
    let forged = crl_of(&y, std::slice::from_ref(&b_node), 1, now, DAY_MS);
    let e = import_crl(&a, &node_a, &b, forged).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message()
            .contains("not signed by any CA in b.example's bundle"),
        "{}",
        e.message()
    );
    assert!(node_a.ctx.store.partner_crls().await.unwrap().is_empty());

    // B's own CRL revoking B's node certificate: the open stream is closed
    // and the reconnect refused, with the reason.
    let r = import_crl(
        &a,
        &node_a,
        &b,
        crl_of(&b, std::slice::from_ref(&b_node), 2, now, DAY_MS),
    )
    .await
    .unwrap();
    assert_eq!(r.revoked_serials, vec![b_node.clone()]);
    link_error(&node_b, &a, "has been revoked by b.example", 5).await;
    assert!(!reaches_b(&a, &node_a, &node_b, 2).await);

    // An older CRL cannot roll the revocation back.
    let older = crl_of(&b, &[], 1, now - DAY_MS, DAY_MS * 2);
    let e = import_crl(&a, &node_a, &b, older).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("older"), "{}", e.message());
    let shown = admin(&a, &node_a)
        .show_peer(PeerRequest {
            org: "b.example".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .peer
        .unwrap();
    assert_eq!(shown.crl_revoked, 1);
    node_b.stop().await;
    node_a.stop().await;
}

/// A CRL that was due for renewal a day ago, revoking nothing.
fn stale_crl(b: &Org) -> Vec<u8> {
    crl_of(b, &[], 1, now_ms() - 2 * DAY_MS, DAY_MS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_partner_crl_refuses_the_partner_by_default() {
    let a = Org::new("a.example");
    assert_eq!(a.settings.revocation.stale_crl, "refuse", "the default");
    let (a, b, node_a, node_b) = linked_pair_with(a).await;
    assert!(reaches_b(&a, &node_a, &node_b, 1).await);
    import_crl(&a, &node_a, &b, stale_crl(&b)).await.unwrap();
    link_error(&node_b, &a, "CRL expired", 5).await;
    assert!(!reaches_b(&a, &node_a, &node_b, 2).await);
    // A fresh CRL lets B back in; it catches up from its cursor.
    import_crl(&a, &node_a, &b, crl_of(&b, &[], 2, now_ms(), DAY_MS))
        .await
        .unwrap();
    assert!(reaches_b(&a, &node_a, &node_b, 3).await);
    assert_eq!(ids_at(&node_b).await.len(), 3);
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_partner_crl_is_still_enforced_but_accepted_when_configured() {
    let mut a = Org::new("a.example");
    a.settings.revocation.stale_crl = "accept".into();
    let (a, b, node_a, node_b) = linked_pair_with(a).await;
    assert!(reaches_b(&a, &node_a, &node_b, 1).await);
    import_crl(&a, &node_a, &b, stale_crl(&b)).await.unwrap();
    assert!(reaches_b(&a, &node_a, &node_b, 2).await);
    assert_eq!(
        node_b.ctx.links.snapshot()[&a.id].state,
        threatmesh::federation::LinkState::Connected
    );
    // The stale list itself still counts.
    let b_node = cert_serial(b.node_cert().chain[0].as_ref()).unwrap();
    let old_revoking = crl_of(&b, &[b_node], 2, now_ms() - DAY_MS, 1000);
    import_crl(&a, &node_a, &b, old_revoking).await.unwrap();
    link_error(&node_b, &a, "has been revoked by b.example", 5).await;
    node_b.stop().await;
    node_a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_new_ca_is_taken_without_restart() {
    let (a, b, node_a, node_b) = linked_pair().await;
    assert!(reaches_b(&a, &node_a, &node_b, 1).await);
    let old_node_cert = b.node_cert();
    node_b.stop().await;

    // B replaces its CA and node certificate (and restarts; A does not).
    let ca = generate_ca(&b.id, 30).unwrap();
    let node = issue(&ca.cert_pem, &ca.key_pem, &SpiffeId::node(&b.id), 30).unwrap();
    let t = &b.settings.tls;
    std::fs::write(&t.ca_cert, &ca.cert_pem).unwrap();
    std::fs::write(b.dir.path().join("certs/ca.key"), &ca.key_pem).unwrap();
    std::fs::write(&t.node_cert, &node.cert_pem).unwrap();
    std::fs::write(&t.node_key, &node.key_pem).unwrap();

    // Until A learns the new card, B's new certificate is refused.
    let node_b = start(&b).await;
    link_error(&node_b, &a, "does not chain to b.example's CA bundle", 5).await;

    let r = admin(&a, &node_a)
        .add_peer(AddPeerRequest {
            card: Some(b.card()),
            endpoint: Some(String::new()),
            policy: "test-open".into(),
            introducer: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.added, "an update of a known partner");
    assert!(reaches_b(&a, &node_a, &node_b, 2).await);

    // The certificate from B's old CA is refused now.
    let err = exchange_as(&a, &node_a, &old_node_cert)
        .subscribe(SubscribeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    node_b.stop().await;
    node_a.stop().await;
}

/// `tail` whose certificate is revoked while it follows: the node closes
/// the connection, and the command says why instead of "h2 protocol error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_whose_certificate_is_revoked_says_so() {
    use tokio::io::AsyncBufReadExt;
    let a = Org::new("a.example");
    let node = start(&a).await;
    let mut al = admin(&a, &node);
    let (ops, key_pem) = issue_via_admin(&mut al, &a, CertRole::Admin, "ops").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ops.pem"), dir.path().join("ops.key"));
    std::fs::write(&cert, &ops.cert_pem).unwrap();
    std::fs::write(&key, &key_pem).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut tail = tokio::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .arg("--config")
        .arg(&a.config)
        .env("THREATMESH_SERVER", node.addr.to_string())
        .arg("tail")
        .arg("--admin-cert")
        .arg(&cert)
        .arg("--admin-key")
        .arg(&key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The header is printed once the node has accepted the stream.
    let mut out = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let header = out.next_line().await.unwrap().unwrap();
    assert!(header.contains("SEQ"), "{header}");
    let revoked = al
        .revoke_cert(RevokeCertRequest {
            which: Some(Which::Serial(ops.serial.clone())),
            reason: "key-compromise".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.connections_closed, 1);
    let done = tail.wait_with_output().await.unwrap();
    let said = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(1), "{said}");
    assert!(
        said.contains("ended the stream") && said.contains("has been revoked"),
        "{said}"
    );
    assert!(!said.contains("h2 protocol error"), "{said}");
    node.stop().await;
}
