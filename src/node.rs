//! One running node: loads and checks everything before binding, serves
//! Exchange, Admin and gRPC health over mutual TLS on a listener it is given,
//! runs the partner links, and shuts down cleanly when told to.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message;
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
use crate::store::{
    CardState, CertRow, CrlRow, DirectoryRow, OwnKeyRow, PeerRecord, PeerState, PolicyRecord,
    Store, StoreError,
};

/// What the trust store, keys, cards and policies were last built from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    peers: Vec<PeerRecord>,
    policies: Vec<PolicyRecord>,
    revoked: Vec<String>,
    crls: Vec<CrlRow>,
    directory: Vec<DirectoryRow>,
    own_keys: Vec<OwnKeyRow>,
    card_version: u64,
}

/// Cards this node can pass on, by org: its own, its partners' and the
/// accepted cards of other orgs, each with its version.
pub type CardMap = std::collections::HashMap<OrgId, (u64, Arc<Envelope>)>;

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
    /// Our current Ed25519 signing key, swapped when it is rotated.
    pub signing: ArcSwap<OrgSigningKey>,
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
    /// Our current signed org card, swapped when our keys change.
    pub card: ArcSwap<Envelope>,
    /// Cards we pass on with the indicators of their orgs.
    pub cards: ArcSwap<CardMap>,
    /// Serialises changes of our own signing keys.
    key_change: tokio::sync::Mutex<()>,
    /// Serialises reloads, so a reload that read the store earlier cannot
    /// swap in its older view after a newer one.
    reload: tokio::sync::Mutex<()>,
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
        let _serial = self.reload.lock().await;
        let current = Loaded {
            peers: self.store.peers().await?,
            policies: self.store.policies().await?,
            revoked: self.store.revoked_serials().await?,
            crls: self.store.partner_crls().await?,
            directory: self.store.directory().await?,
            own_keys: self.store.own_signing_keys().await?,
            card_version: own_card_version(&self.card.load()),
        };
        if self.loaded.lock().expect("not poisoned").as_ref() == Some(&current) {
            self.close_refused_connections();
            return Ok(current.peers);
        }
        let Loaded {
            peers,
            policies,
            revoked,
            crls,
            directory,
            own_keys,
            ..
        } = current.clone();
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
        for k in &own_keys {
            keys.insert(KnownKey {
                key_id: k.key_id.clone(),
                org: self.own.clone(),
                public_key: k.public_key.clone(),
                not_before_ms: k.not_before_ms,
                not_after_ms: k.not_after_ms,
                revoked: k.revoked_ms != 0,
            })
            .map_err(|e| StoreError::Conflict(e.to_string()))?;
        }
        let mut cards = CardMap::new();
        let own_env = self.card.load_full();
        cards.insert(self.own.clone(), (own_card_version(&own_env), own_env));
        for p in &peers {
            if let Ok(env) = Envelope::decode(p.card.as_slice()) {
                cards.insert(p.org.clone(), (p.card_version, Arc::new(env)));
            }
        }
        for d in directory.iter().filter(|d| d.state == CardState::Accepted) {
            if let Ok(env) = Envelope::decode(d.card.as_slice()) {
                cards.insert(d.org.clone(), (d.version, Arc::new(env)));
            }
        }
        self.cards.store(Arc::new(cards));
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
        *self.loaded.lock().expect("not poisoned") = Some(current);
        self.close_refused_connections();
        // New keys may settle envelopes waiting for them.
        if let Err(e) = self.release_quarantine().await {
            tracing::error!(error = %e, "cannot release quarantined envelopes");
        }
        Ok(peers)
    }

    /// Verifies and stores (or refuses) every quarantined envelope whose
    /// signing key is known now. Returns how many were stored.
    pub async fn release_quarantine(&self) -> Result<u64, StoreError> {
        let keys = self.keys.load();
        let now = now_unix_ms();
        let mut stored = 0;
        for q in self.store.quarantine().await? {
            if keys.get(&q.key_id).is_none() {
                continue;
            }
            let d = crate::proto::v1::Delivery {
                seq: q.upstream_seq,
                envelope: q.envelope.clone(),
                path: q.path.clone(),
            };
            let policies = self.policies.load();
            let policy = policies.get(&q.upstream).map(|p| p.as_ref());
            let verified =
                crate::federation::verify_delivery(&self.own, &q.upstream, &d, &keys, now);
            let admitted = crate::federation::admit_checked(self, &q.upstream, verified, policy)
                .await?
                .unwrap_or_else(|| {
                    Err(crate::federation::Refusal {
                        code: tonic::Code::InvalidArgument,
                        reason: "path: passes through this node".into(),
                        unknown_key: None,
                    })
                });
            let outcome =
                admitted.map_err(|r| r.into_rejection(q.upstream_seq, q.envelope.clone()));
            if self.store.resolve_quarantine(&q, outcome).await? {
                stored += 1;
            }
        }
        if stored > 0 {
            tracing::info!(stored, "quarantined envelopes verified and stored");
        }
        Ok(stored)
    }

    /// Takes a card that arrived through the mesh from partner `via`. Our
    /// own card is ignored; a newer card of a known org (partner or accepted)
    /// replaces it only if signed by a key of the card we trust
    /// ([`crate::identity::check_card_succession`]); the first card of an
    /// unknown org is accepted if `via` is an introducer, else it waits for
    /// an admin's `peer approve-card`. Returns whether anything changed.
    pub async fn learn_card(&self, env: &Envelope, via: &OrgId) -> Result<bool, StoreError> {
        let v = match crate::identity::open_card(env) {
            Ok(v) => v,
            Err(e) => {
                self.refuse_card("?", via, e.to_string()).await?;
                return Ok(false);
            }
        };
        if v.org == self.own {
            return Ok(false);
        }
        let bytes = env.encode_to_vec();
        let peers = self.store.peers().await?;
        if let Some(p) = peers.iter().find(|p| p.org == v.org) {
            if v.card.version <= p.card_version {
                return Ok(false);
            }
            if !self.may_succeed(&p.card, &v, env, via).await? {
                return Ok(false);
            }
            self.store.update_peer_card(&v, &bytes, via).await?;
            return Ok(true);
        }
        let directory = self.store.directory().await?;
        let held = directory.iter().find(|d| d.org == v.org);
        if let Some(d) = held
            && v.card.version <= d.version
        {
            return Ok(false);
        }
        let introducer = peers
            .iter()
            .any(|p| &p.org == via && p.introducer && p.state == PeerState::Active);
        let (state, event) = match held {
            Some(d) if d.state == CardState::Accepted => {
                if !self.may_succeed(&d.card, &v, env, via).await? {
                    return Ok(false);
                }
                (CardState::Accepted, crate::audit::event::CARD_UPDATED)
            }
            _ if introducer => (CardState::Accepted, crate::audit::event::CARD_ACCEPTED),
            _ => (CardState::Pending, crate::audit::event::CARD_PENDING),
        };
        let via_text = if introducer && state == CardState::Accepted && held.is_none() {
            format!("introducer {via}")
        } else {
            via.to_string()
        };
        match self
            .store
            .put_directory_card(&v, &bytes, state, &via_text, event, "node")
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict(why)) => {
                self.refuse_card(v.org.as_str(), via, why).await?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        tracing::info!(org = %v.org, version = v.card.version, state = state.as_str(), via = %via, "card of another org received");
        Ok(true)
    }

    /// Whether card `v` (as `env`) may replace the trusted card stored as
    /// `stored`: signed by a key of it ([`crate::identity::check_card_succession`]).
    /// A refusal goes on the ledger.
    async fn may_succeed(
        &self,
        stored: &[u8],
        v: &crate::identity::VerifiedCard,
        env: &Envelope,
        via: &OrgId,
    ) -> Result<bool, StoreError> {
        let current = Envelope::decode(stored)
            .ok()
            .and_then(|e| crate::identity::open_card(&e).ok());
        let Some(current) = current else {
            return Ok(false);
        };
        match crate::identity::check_card_succession(&current, v, env) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.refuse_card(v.org.as_str(), via, e.to_string()).await?;
                Ok(false)
            }
        }
    }

    /// Records a card of `org` that arrived via `via` and was refused.
    async fn refuse_card(&self, org: &str, via: &OrgId, why: String) -> Result<(), StoreError> {
        tracing::warn!(org, via = %via, reason = %why, "card refused");
        self.store
            .append_audit(&[crate::audit::AuditEntry {
                event: crate::audit::event::CARD_REFUSED,
                actor: "node".into(),
                partner: org.to_string(),
                subject: format!("card via {via}"),
                rule: String::new(),
                detail: why,
            }])
            .await
    }

    /// Our card from our current keys, signed by `signer`, at a version
    /// above the current one.
    fn seal_own_card(&self, keys: &[OwnKeyRow], signer: &OrgSigningKey) -> Envelope {
        let now = now_unix_ms();
        let version = (now as u64).max(own_card_version(&self.card.load()) + 1);
        crate::identity::seal_card_with_keys(
            &card_info(&self.settings, &self.own_ca_pem),
            &published_keys(keys),
            signer,
            version,
            now,
        )
    }

    /// Rotates our signing key: a new key signs from now on; the old one
    /// stays in our card with its validity ending now (what it signed before
    /// stays valid), and the new card is signed by the **old** key so
    /// partners and their partners accept it as our card's successor. The
    /// new private key replaces `signing.key` (mode 0600).
    pub async fn rotate_signing_key(&self, actor: &str) -> Result<Vec<OwnKeyRow>, NodeError> {
        let _guard = self.key_change.lock().await;
        let old = self.signing.load_full();
        let (new, pkcs8) = OrgSigningKey::generate()
            .map_err(|e| IdentityError::Pki(format!("new signing key: {e}")))?;
        let path = &self.settings.signing.key;
        let next = next_key_path(path);
        let pem = crate::identity::pem_encode("PRIVATE KEY", &pkcs8);
        let io = |e: std::io::Error, p: &std::path::Path| IdentityError::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        // The new key is on disk before it is on record, and in place only
        // after: a crash in between is completed or undone at the next start.
        crate::identity::write_atomic(&next, pem.as_bytes(), true).map_err(|e| io(e, &next))?;
        let at = now_unix_ms();
        self.store
            .rotate_own_key(old.key_id(), new.key_id(), new.public_key(), at, actor)
            .await?;
        std::fs::rename(&next, path).map_err(|e| io(e, path))?;
        let keys = self.store.own_signing_keys().await?;
        let card = self.seal_own_card(&keys, &old);
        self.card.store(Arc::new(card));
        self.signing.store(Arc::new(new));
        self.reload_peers().await?;
        tracing::info!(old = %old.key_id(), new = %self.signing.load().key_id(), "signing key rotated");
        Ok(keys)
    }

    /// Revokes one of our retired signing keys: our next card marks it
    /// revoked (signed by the current key), and every node that takes the
    /// card refuses anything newly received under it.
    pub async fn revoke_signing_key(
        &self,
        key_id: &str,
        actor: &str,
    ) -> Result<Vec<OwnKeyRow>, NodeError> {
        let _guard = self.key_change.lock().await;
        self.store.revoke_own_key(key_id, actor).await?;
        let keys = self.store.own_signing_keys().await?;
        let signer = self.signing.load_full();
        let card = self.seal_own_card(&keys, &signer);
        self.card.store(Arc::new(card));
        self.reload_peers().await?;
        Ok(keys)
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
        let store = Store::open_sqlite(&settings.store.path).await?;
        let signing = load_current_signing_key(&settings, &store).await?;
        let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(trust_store));
        let server_tls = Arc::new(ArcSwap::new(server_config(&node_cert)?));
        let seen = (
            std::fs::read(&settings.tls.node_cert).unwrap_or_default(),
            std::fs::read(&settings.tls.node_key).unwrap_or_default(),
        );
        store
            .ensure_own_key(signing.key_id(), signing.public_key())
            .await?;
        let own_keys = store.own_signing_keys().await?;
        let card = crate::identity::seal_card_with_keys(
            &card_info(&settings, &own_ca_pem),
            &published_keys(&own_keys),
            &signing,
            now_unix_ms() as u64,
            now_unix_ms(),
        );
        let (shutdown_tx, shutdown) = watch::channel(false);
        let ctx = Arc::new(NodeContext {
            own,
            settings,
            signing: ArcSwap::from_pointee(signing),
            store,
            trust,
            keys: ArcSwap::from_pointee(KeyDirectory::default()),
            card: ArcSwap::from_pointee(card),
            cards: ArcSwap::from_pointee(CardMap::new()),
            key_change: tokio::sync::Mutex::new(()),
            reload: tokio::sync::Mutex::new(()),
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

/// What our card says about us besides keys.
fn card_info(settings: &Settings, own_ca_pem: &str) -> CardInfo {
    CardInfo {
        org: settings.org_id(),
        display_name: settings.org.display_name.clone(),
        country: settings.org.country.clone(),
        sector: settings.org.sector.clone(),
        ca_bundle_pem: own_ca_pem.to_string(),
        endpoints: (!settings.node.endpoint.is_empty())
            .then(|| settings.node.endpoint.clone())
            .into_iter()
            .collect(),
    }
}

/// Our keys as a card publishes them.
fn published_keys(keys: &[OwnKeyRow]) -> Vec<crate::proto::v1::SigningKey> {
    keys.iter()
        .map(|k| crate::proto::v1::SigningKey {
            key_id: k.key_id.clone(),
            public_key: k.public_key.clone(),
            not_before_unix_ms: k.not_before_ms,
            not_after_unix_ms: k.not_after_ms,
            revoked: k.revoked_ms != 0,
        })
        .collect()
}

/// The version of a card we made (0 if it does not decode).
fn own_card_version(env: &Envelope) -> u64 {
    crate::proto::v1::OrgCard::decode(env.payload.as_slice())
        .map(|c| c.version)
        .unwrap_or(0)
}

/// Where a rotated key waits until the rotation is on record.
fn next_key_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".next");
    std::path::PathBuf::from(p)
}

/// Loads our current signing key, first completing or undoing a rotation
/// that was interrupted: a `signing.key.next` whose key is on record as
/// ours replaces `signing.key`; one that is not is discarded.
async fn load_current_signing_key(
    settings: &Settings,
    store: &Store,
) -> Result<OrgSigningKey, NodeError> {
    let next = next_key_path(&settings.signing.key);
    if next.exists() {
        let mut probe = settings.clone();
        probe.signing.key = next.clone();
        let recorded = match load_signing_key(&probe) {
            Ok(k) => store
                .own_signing_keys()
                .await?
                .iter()
                .any(|r| r.key_id == k.key_id()),
            Err(_) => false,
        };
        if recorded {
            tracing::warn!(file = %next.display(), "completing an interrupted signing-key rotation");
            std::fs::rename(&next, &settings.signing.key).map_err(|e| IdentityError::File {
                path: settings.signing.key.display().to_string(),
                reason: e.to_string(),
            })?;
        } else {
            tracing::warn!(file = %next.display(), "discarding the key of a rotation that was never recorded");
            let _ = std::fs::remove_file(&next);
        }
    }
    Ok(load_signing_key(settings)?)
}

/// Our org card publishing every key in `keys` (current and retired, as
/// recorded in the store), signed by `signer`; with no recorded keys, just
/// `signer`'s.
pub fn own_card_with_keys(
    settings: &Settings,
    signer: &OrgSigningKey,
    own_ca_pem: &str,
    keys: &[OwnKeyRow],
) -> Envelope {
    if keys.is_empty() {
        return own_card(settings, signer, own_ca_pem);
    }
    let now = now_unix_ms();
    crate::identity::seal_card_with_keys(
        &card_info(settings, own_ca_pem),
        &published_keys(keys),
        signer,
        now as u64,
        now,
    )
}

/// Our org card, built from settings and self-signed with our signing key.
pub fn own_card(settings: &Settings, signing: &OrgSigningKey, own_ca_pem: &str) -> Envelope {
    seal_card(&card_info(settings, own_ca_pem), signing, now_unix_ms())
}
