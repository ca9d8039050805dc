//! One running node: loads and checks everything before binding, serves
//! Exchange, Admin and gRPC health over mutual TLS on a listener it is given,
//! runs the partner links, and shuts down cleanly when told to.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;

use crate::admin::AdminService;
use crate::config::{ConfigError, Settings};
use crate::exchange::ExchangeService;
use crate::identity::{
    CardInfo, CertifiedKey, IdentityError, Role, SharedTrust, TrustStore, seal_card, server_config,
};
use crate::model::{OrgId, now_unix_ms};
use crate::policy::PartnerPolicy;
use crate::proto::v1::Envelope;
use crate::proto::v1::admin_server::AdminServer;
use crate::proto::v1::exchange_server::ExchangeServer;
use crate::signing::{KeyDirectory, KnownKey, OrgSigningKey};
use crate::store::{CertRow, CrlRow, PeerRecord, PeerState, PolicyRecord, Store, StoreError};

/// What the trust store, keys and policies were last built from: partners,
/// policy versions, revoked serials of our own certificates, partner CRLs.
type Loaded = (Vec<PeerRecord>, Vec<PolicyRecord>, Vec<String>, Vec<CrlRow>);

/// Partner → the latest version of the policy bound to it.
pub type PolicyMap = std::collections::HashMap<OrgId, Arc<PartnerPolicy>>;

/// Errors starting or running a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Bad configuration (the CLI exits 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key problem.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// State shared by the services and links of one node.
pub struct NodeContext {
    /// Our org.
    pub own: OrgId,
    /// Validated settings.
    pub settings: Settings,
    /// Our Ed25519 signing key.
    pub signing: OrgSigningKey,
    /// The store.
    pub store: Store,
    /// Per-org trusted CAs, swapped when partners change.
    pub trust: SharedTrust,
    /// Trusted signing keys (ours and partners'), swapped when partners change.
    pub keys: ArcSwap<KeyDirectory>,
    /// Health of the outbound partner links.
    pub links: crate::federation::LinkBoard,
    /// Bumped whenever partners or policies change, so open streams re-check
    /// whether their partner may still receive.
    pub peer_changes: watch::Sender<u64>,
    /// Each partner's bound policy, swapped when bindings or versions change;
    /// read at send time, so a change applies to everything not yet sent.
    pub policies: ArcSwap<PolicyMap>,
    /// Our current signed org card.
    pub card: Envelope,
    /// Turns true when the node shuts down; streams and links watch it.
    pub shutdown: watch::Receiver<bool>,
    /// Our CA bundle, kept to rebuild the trust store.
    own_ca_pem: String,
    /// Our node certificate, swappable for rotation without restart.
    pub tls: NodeTls,
    /// Open verified connections, closed when trust in them ends.
    pub conns: crate::net::Connections,
    /// The partner records and policy versions the trust store, keys and
    /// policies were last built from (`None` before the first load).
    loaded: std::sync::Mutex<Option<Loaded>>,
}

impl NodeContext {
    /// Re-reads `tls.node_cert` / `tls.node_key`; if they changed and the new
    /// pair is valid (our node id, chains to our CA, key matches), serves it
    /// to new connections and presents it on new outbound links. Open
    /// connections are unaffected. Returns whether a new certificate was
    /// taken; an invalid pair is logged and the current one kept.
    pub fn reload_node_cert(&self) -> bool {
        let t = &self.settings.tls;
        let (Ok(cert), Ok(key)) = (std::fs::read(&t.node_cert), std::fs::read(&t.node_key)) else {
            return false;
        };
        {
            let mut seen = self.tls.seen.lock().expect("not poisoned");
            if seen.0 == cert && seen.1 == key {
                return false;
            }
            *seen = (cert.clone(), key.clone());
        }
        let checked =
            (|| -> Result<(CertifiedKey, Arc<rustls::ServerConfig>, String), IdentityError> {
                let ck = CertifiedKey::from_pem(
                    &String::from_utf8_lossy(&cert),
                    &String::from_utf8_lossy(&key),
                )?;
                let leaf = ck.chain.first().ok_or(IdentityError::NoSpiffeId)?;
                let algs = crate::identity::provider()
                    .signature_verification_algorithms
                    .all;
                let id = self.trust.load().verify(
                    leaf,
                    &ck.chain[1..],
                    rustls_pki_types::UnixTime::now(),
                    crate::identity::Usage::Server,
                    algs,
                )?;
                if id != crate::identity::SpiffeId::node(&self.own) {
                    return Err(IdentityError::WrongRole {
                        id,
                        expected: "node",
                    });
                }
                let serial = crate::identity::cert_serial(leaf.as_ref())?;
                let server = server_config(&ck)?;
                Ok((ck, server, serial))
            })();
        match checked {
            Ok((ck, server, serial)) => {
                self.tls.server.store(server);
                self.tls.cert.store(Arc::new(ck));
                tracing::info!(serial = %serial, "node certificate reloaded; new connections get it");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "new node certificate files refused; keeping the current certificate");
                false
            }
        }
    }

    /// Why partner `org` may not receive anything now, or `None` if it may.
    pub fn partner_refused(&self, org: &OrgId) -> Option<String> {
        let trust = self.trust.load();
        if let Some(state) = trust.blocked(org) {
            return Some(format!("{org} is {state} on {}", self.own));
        }
        (!trust.knows(org) || org == &self.own)
            .then(|| format!("{org} is not a registered partner of {}", self.own))
    }

    /// Re-reads partners and their keys from the store and, if anything
    /// changed, swaps in a new trust store and key directory. A partner whose
    /// stored CA bundle no longer parses is skipped with an error logged.
    /// Open connections the current trust store no longer allows (revoked,
    /// suspended, removed, stale CRL) are closed, also when nothing changed,
    /// since a CRL can turn stale with time alone.
    pub async fn reload_peers(&self) -> Result<Vec<PeerRecord>, NodeError> {
        let peers = self.store.peers().await?;
        let policies = self.store.policies().await?;
        let revoked = self.store.revoked_serials().await?;
        let crls = self.store.partner_crls().await?;
        let current = (peers, policies, revoked, crls);
        if self.loaded.lock().expect("not poisoned").as_ref() == Some(&current) {
            self.close_refused_connections();
            return Ok(current.0);
        }
        let (peers, policies, revoked, crls) = current;
        let mut bound = PolicyMap::new();
        for p in peers
            .iter()
            .filter(|p| p.state == PeerState::Active && !p.policy.is_empty())
        {
            let Some(rec) = policies.iter().find(|r| r.name == p.policy) else {
                tracing::error!(partner = %p.org, policy = %p.policy, "bound policy not found; partner receives nothing");
                continue;
            };
            match rec.to_policy() {
                Ok(parsed) => {
                    bound.insert(p.org.clone(), Arc::new(parsed));
                }
                Err(e) => tracing::error!(
                    partner = %p.org, policy = %rec.name, version = rec.version, error = %e,
                    "stored policy does not parse; partner receives nothing"
                ),
            }
        }
        self.policies.store(Arc::new(bound));
        let mut trust = TrustStore::new(self.own.clone(), &self.own_ca_pem)?;
        trust.set_revoked(revoked.iter().cloned());
        trust.set_stale_crl(self.settings.revocation.stale_crl());
        for p in &peers {
            if p.state != PeerState::Active {
                trust.block(p.org.clone(), p.state.as_str());
                continue;
            }
            if let Err(e) = trust.set_partner(p.org.clone(), &p.ca_bundle_pem) {
                tracing::error!(partner = %p.org, error = %e, "partner CA bundle unusable; partner skipped");
                continue;
            }
            // Re-checked against the partner's current CA bundle: a CRL
            // that no longer verifies is not silently dropped but refuses
            // the partner, as a revocation we cannot read must.
            if let Some(row) = crls.iter().find(|c| c.org == p.org) {
                match crate::identity::open_crl(&p.org, &p.ca_bundle_pem, &row.der) {
                    Ok(crl) => trust.set_crl(crl),
                    Err(e) => {
                        tracing::error!(partner = %p.org, error = %e, "stored CRL no longer verifies; partner refused until a valid CRL is imported");
                        trust.block(p.org.clone(), "refused (its CRL does not verify)");
                    }
                }
            }
        }
        let mut keys = KeyDirectory::default();
        keys.insert(KnownKey {
            key_id: self.signing.key_id().to_string(),
            org: self.own.clone(),
            public_key: self.signing.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
        })
        .map_err(|e| StoreError::Conflict(e.to_string()))?;
        for k in self.store.signing_keys().await? {
            if let Err(e) = keys.insert(k) {
                tracing::error!(error = %e, "conflicting signing key skipped");
            }
        }
        self.trust.store(Arc::new(trust));
        self.keys.store(Arc::new(keys));
        tracing::info!(partners = peers.len(), "partner trust and policies loaded");
        // Wake open streams so they re-check their partner.
        self.peer_changes.send_modify(|g| *g += 1);
        *self.loaded.lock().expect("not poisoned") = Some((peers.clone(), policies, revoked, crls));
        self.close_refused_connections();
        Ok(peers)
    }

    /// Closes open connections the current trust store refuses; returns how
    /// many.
    pub fn close_refused_connections(&self) -> usize {
        let trust = self.trust.load();
        let now = now_unix_ms();
        self.conns
            .close_refused(|id, serial| trust.check_connection(id, serial, now))
    }

    /// Records the certificates named in our configuration (node, admin,
    /// publisher) in the certificate list, so `certs list` shows them and
    /// they can be revoked by serial. Files that are missing or not ours are
    /// skipped.
    pub async fn record_config_certs(&self) -> Result<(), StoreError> {
        let files = [
            ("tls.node_cert", &self.settings.tls.node_cert),
            ("client.admin_cert", &self.settings.client.admin_cert),
            (
                "client.publisher_cert",
                &self.settings.client.publisher_cert,
            ),
        ];
        for (key, path) in files {
            let Ok(pem) = std::fs::read_to_string(path) else {
                continue;
            };
            match self.own_cert_row(&pem, &format!("config ({key})")) {
                Ok(row) => {
                    self.store
                        .record_cert(&row, &format!("config:{key}"))
                        .await?;
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "certificate not recorded")
                }
            }
        }
        Ok(())
    }

    /// Checks that `pem` is a certificate of our own org issued by our CA
    /// and describes it for the certificate list.
    pub fn own_cert_row(&self, pem: &str, issued_by: &str) -> Result<CertRow, IdentityError> {
        use rustls_pki_types::pem::PemObject;
        let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| IdentityError::CertParse(e.to_string()))?;
        let only_ours = TrustStore::new(self.own.clone(), &self.own_ca_pem)?;
        let id = crate::identity::SpiffeId::from_cert_der(der.as_ref())?;
        let usage = if id.role == Role::Node {
            crate::identity::Usage::Server
        } else {
            crate::identity::Usage::Client
        };
        let algs = crate::identity::provider()
            .signature_verification_algorithms
            .all;
        let (not_before_ms, not_after_ms) = crate::identity::cert_validity_ms(der.as_ref())?;
        // Expired certificates are still ours to list: check the chain at a
        // time inside their validity.
        let at = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_millis(
            u64::try_from(not_before_ms.saturating_add(60_000)).unwrap_or(0),
        ));
        let verified = only_ours.verify(&der, &[], at, usage, algs)?;
        Ok(CertRow {
            serial: crate::identity::cert_serial(der.as_ref())?,
            spiffe_id: verified.to_string(),
            not_before_ms,
            not_after_ms,
            issued_ms: now_unix_ms(),
            issued_by: issued_by.to_string(),
            pem: pem.to_string(),
            revoked: None,
        })
    }

    /// Our CA certificate and key, if this node holds the key
    /// (`tls.ca_key`); needed to issue certificates and sign our CRL.
    pub fn ca_material(&self) -> Result<(String, String), String> {
        let path = &self.settings.tls.ca_key;
        let key = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "this node does not hold its CA key (tls.ca_key = {}: {e}); issue offline or place the key there",
                path.display()
            )
        })?;
        Ok((self.own_ca_pem.clone(), key))
    }
}

/// Our node certificate as currently served and presented, swapped when
/// the files change (rotation without restart).
pub struct NodeTls {
    /// The certificate links present when they connect.
    pub cert: ArcSwap<CertifiedKey>,
    /// The server configuration each new connection is accepted with.
    pub server: Arc<ArcSwap<rustls::ServerConfig>>,
    /// Bytes of the certificate and key files last looked at.
    seen: std::sync::Mutex<(Vec<u8>, Vec<u8>)>,
}

/// A node that has loaded its configuration, keys, certificates and store.
pub struct Node {
    ctx: Arc<NodeContext>,
    shutdown_tx: watch::Sender<bool>,
}

impl Node {
    /// Loads and checks everything `serve` needs. Nothing is bound yet, so a
    /// bad setting fails here with the key named.
    pub async fn open(settings: Settings) -> Result<Self, NodeError> {
        crate::identity::install_default_provider();
        settings.check_node_files()?;
        let own = settings.org_id();
        let own_ca_pem =
            std::fs::read_to_string(&settings.tls.ca_cert).map_err(|e| ConfigError::Invalid {
                key: "tls.ca_cert",
                reason: format!("{}: {e}", settings.tls.ca_cert.display()),
            })?;
        let trust_store =
            TrustStore::new(own.clone(), &own_ca_pem).map_err(|e| ConfigError::Invalid {
                key: "tls.ca_cert",
                reason: e.to_string(),
            })?;
        let node_cert = CertifiedKey::load(&settings.tls.node_cert, &settings.tls.node_key)
            .map_err(|e| ConfigError::Invalid {
                key: "tls.node_cert",
                reason: e.to_string(),
            })?;
        let id = node_cert.spiffe_id().map_err(|e| ConfigError::Invalid {
            key: "tls.node_cert",
            reason: e.to_string(),
        })?;
        if id.org != own || id.role != Role::Node {
            return Err(ConfigError::Invalid {
                key: "tls.node_cert",
                reason: format!("certificate is {id}, expected spiffe://{own}/node"),
            }
            .into());
        }
        let signing = load_signing_key(&settings)?;
        let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(trust_store));
        let server_tls = Arc::new(ArcSwap::new(server_config(&node_cert)?));
        let seen = (
            std::fs::read(&settings.tls.node_cert).unwrap_or_default(),
            std::fs::read(&settings.tls.node_key).unwrap_or_default(),
        );
        let store = Store::open_sqlite(&settings.store.path).await?;
        let card = own_card(&settings, &signing, &own_ca_pem);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ctx = Arc::new(NodeContext {
            own,
            settings,
            signing,
            store,
            trust,
            keys: ArcSwap::from_pointee(KeyDirectory::default()),
            card,
            shutdown,
            own_ca_pem,
            policies: ArcSwap::from_pointee(PolicyMap::new()),
            links: crate::federation::LinkBoard::default(),
            peer_changes: watch::channel(0).0,
            loaded: std::sync::Mutex::new(None),
            conns: crate::net::Connections::default(),
            tls: NodeTls {
                cert: ArcSwap::from_pointee(node_cert),
                server: server_tls,
                seen: std::sync::Mutex::new(seen),
            },
        });
        ctx.reload_peers().await?;
        ctx.record_config_certs().await?;
        Ok(Self { ctx, shutdown_tx })
    }

    /// The node's shared state (store, org, keys), e.g. for tests and the demo.
    pub fn context(&self) -> Arc<NodeContext> {
        self.ctx.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then closes streams
    /// and links and waits for them.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), NodeError> {
        let ctx = self.ctx;
        let addr = listener.local_addr().ok();
        let incoming = ReceiverStream::new(crate::net::accept_mtls(
            listener,
            ctx.tls.server.clone(),
            ctx.trust.clone(),
            ctx.conns.clone(),
        ));
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<ExchangeServer<ExchangeService>>()
            .await;
        let links = tokio::spawn(crate::federation::supervise(
            ctx.clone(),
            ctx.shutdown.clone(),
        ));
        tracing::info!(org = %ctx.own, addr = ?addr, "node serving");
        let shutdown_tx = self.shutdown_tx;
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down");
            shutdown_tx.send_replace(true);
        };
        let served = Server::builder()
            // Deny by default: no request reaches any service, health
            // included, without a verified identity.
            .layer(tonic::service::InterceptorLayer::new(
                crate::net::request_gate(ctx.trust.clone()),
            ))
            .add_service(health_service)
            .add_service(ExchangeServer::new(ExchangeService::new(ctx.clone())))
            .add_service(AdminServer::new(AdminService::new(ctx.clone())))
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        let _ = links.await;
        ctx.store.close().await;
        tracing::info!(org = %ctx.own, "node stopped");
        Ok(served?)
    }
}

/// Loads the org signing key named by `signing.key`.
pub fn load_signing_key(settings: &Settings) -> Result<OrgSigningKey, ConfigError> {
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| ConfigError::Invalid {
        key: "signing.key",
        reason: format!("{}: {reason}", settings.signing.key.display()),
    };
    let der =
        PrivatePkcs8KeyDer::from_pem_file(&settings.signing.key).map_err(|e| bad(e.to_string()))?;
    OrgSigningKey::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| bad(e.to_string()))
}

/// Our org card, built from settings and self-signed with our signing key.
pub fn own_card(settings: &Settings, signing: &OrgSigningKey, own_ca_pem: &str) -> Envelope {
    seal_card(
        &CardInfo {
            org: settings.org_id(),
            display_name: settings.org.display_name.clone(),
            country: settings.org.country.clone(),
            sector: settings.org.sector.clone(),
            ca_bundle_pem: own_ca_pem.to_string(),
            endpoints: (!settings.node.endpoint.is_empty())
                .then(|| settings.node.endpoint.clone())
                .into_iter()
                .collect(),
        },
        signing,
        now_unix_ms(),
    )
}
