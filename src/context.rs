//! The shared state of one node — who we are, our keys and certificate, the
//! store, the partner view, link health, open connections — and the
//! operations that change it. Every service and link is handed an
//! `Arc<NodeContext>`; this module imports none of them.

mod links;
mod quota;
mod view;

use std::sync::Arc;

use arc_swap::ArcSwap;
use prost::Message;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{ConfigError, Settings};
use crate::identity::{
    CardInfo, CertifiedKey, IdentityError, Role, SharedTrust, SpiffeId, TrustSource, TrustStore,
    Usage, server_config,
};
use crate::model::OrgId;
use crate::proto::v1::Envelope;
use crate::signing::{KeyDirectory, OrgSigningKey};
use crate::store::{CertRow, OwnKeyRow, PeerRecord, Store, StoreError};

pub use links::{LinkBoard, LinkHealth, LinkState, clock_warning};
pub use quota::{OverLimit, PartnerQuota, StreamSlot};
pub use view::{
    CardMap, PartnerView, PolicyMap, ViewInput, ViewSettings, build_view, card_version,
};

/// Errors starting a node or changing its state.
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
    /// A service could not be set up (says which and why).
    #[error("{0}")]
    Setup(String),
}

/// State shared by the services and links of one node.
pub struct NodeContext {
    /// Our org.
    pub own: OrgId,
    /// Validated settings.
    pub settings: Settings,
    /// Where "now" comes from, for everything the node decides.
    pub clock: Clock,
    /// Our current Ed25519 signing key, swapped when it is rotated.
    pub signing: ArcSwap<OrgSigningKey>,
    /// The store.
    pub store: Store,
    /// Trust, keys, policies and cards, swapped as one whenever partners,
    /// policies, revocations or keys change.
    pub view: Arc<ArcSwap<PartnerView>>,
    /// Health of the outbound partner links.
    pub links: LinkBoard,
    /// Bumped whenever partners or policies change, so open streams re-check
    /// whether their partner may still receive.
    pub peer_changes: watch::Sender<u64>,
    /// Bumped when an operator asks for a `peer resend`: partner streams
    /// look for a pending request of theirs.
    pub resends: watch::Sender<u64>,
    /// Our current signed org card, swapped when our keys change.
    pub card: ArcSwap<Envelope>,
    /// Serialises changes of our own signing keys.
    key_change: tokio::sync::Mutex<()>,
    /// Serialises reloads, so a reload that read the store earlier cannot
    /// swap in its older view after a newer one.
    reload: tokio::sync::Mutex<()>,
    /// Held across a reload and the quarantine release that follows it
    /// (`federation::apply_trust_change`), so whoever applies a change of
    /// keys returns only once what the new keys verify is settled, even when
    /// another task's reload noticed the change first.
    pub trust_change: tokio::sync::Mutex<()>,
    /// Cancelled when the node shuts down; streams and links end on it.
    pub shutdown: CancellationToken,
    /// Every task the node spawns (streams, links, their writers), so
    /// shutdown waits for them before the store closes.
    pub tasks: TaskTracker,
    /// Our CA bundle, kept to rebuild the trust store.
    own_ca_pem: String,
    /// Our node certificate, swappable for rotation without restart.
    pub tls: NodeTls,
    /// Open verified connections, closed when trust in them ends.
    pub conns: crate::net::Connections,
    /// The node's metrics (served on `metrics.listen`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The identity of our log (see `store::identity`), sent with every
    /// Subscribe reply.
    pub log_id: String,
    /// Streams and request rate per partner (`[limits]`).
    pub quota: PartnerQuota,
    /// Woken when sightings are queued for partners, so each link sends
    /// its share at once instead of at its next interval.
    pub sightings_queued: watch::Sender<u64>,
    /// Held while one of our publishers' sightings is added to the day's
    /// report, so additions here queue instead of retrying.
    pub sighting_lock: tokio::sync::Mutex<()>,
    /// Our statistics counts per period, and when they were counted (kept
    /// fresh by `statistics::count_in_background`).
    pub statistics_counted:
        tokio::sync::Mutex<Option<(i64, Arc<crate::statistics::tally::Tallies>)>>,
    /// What the view was last built from (`None` before the first load).
    loaded: std::sync::Mutex<Option<ViewInput>>,
}

impl TrustSource for ArcSwap<PartnerView> {
    fn current(&self) -> Arc<TrustStore> {
        self.load().trust.clone()
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

/// What a reload found.
#[derive(Debug)]
pub struct Reloaded {
    /// Every registered partner.
    pub peers: Vec<PeerRecord>,
    /// Whether a new view was swapped in (keys may have arrived).
    pub changed: bool,
}

impl NodeContext {
    /// Loads everything a node needs besides its listener: our CA, node
    /// certificate, store and signing key, and builds the first view.
    /// Nothing is bound yet, so a bad setting fails here with the key named.
    pub async fn open(
        settings: Settings,
        clock: Clock,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, NodeError> {
        crate::identity::install_default_provider();
        settings.check_node_files()?;
        let own = settings.org_id();
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let own_ca_pem = std::fs::read_to_string(&settings.tls.ca_cert).map_err(|e| {
            invalid(
                "tls.ca_cert",
                format!("{}: {e}", settings.tls.ca_cert.display()),
            )
        })?;
        let own_trust = TrustStore::new(own.clone(), &own_ca_pem)
            .map_err(|e| invalid("tls.ca_cert", e.to_string()))?;
        let node_cert = CertifiedKey::load(&settings.tls.node_cert, &settings.tls.node_key)
            .map_err(|e| invalid("tls.node_cert", e.to_string()))?;
        let id = node_cert
            .spiffe_id()
            .map_err(|e| invalid("tls.node_cert", e.to_string()))?;
        if id.org != own || id.role != Role::Node {
            return Err(invalid(
                "tls.node_cert",
                format!("certificate is {id}, expected spiffe://{own}/node"),
            )
            .into());
        }
        let store = Store::open(&settings.store, clock).await?;
        // A store damaged in the middle is refused before it serves (it
        // would acknowledge publishes it may not keep).
        let check = store.quick_check().await?;
        if check != "ok" {
            store.close().await;
            return Err(NodeError::Store(StoreError::Damaged(format!(
                "store.path {} is damaged ({check}); restore a backup with `threatmesh store restore --from FILE`",
                settings.store.path.display()
            ))));
        }
        let log_id = store.log_id().await?;
        let signing = load_current_signing_key(&settings, &store).await?;
        let server_tls = Arc::new(ArcSwap::new(server_config(&node_cert)?));
        let seen = (
            std::fs::read(&settings.tls.node_cert).unwrap_or_default(),
            std::fs::read(&settings.tls.node_key).unwrap_or_default(),
        );
        store
            .ensure_own_key(signing.key_id(), signing.public_key())
            .await?;
        let own_keys = store.own_signing_keys().await?;
        let now = clock.now_ms();
        let card = crate::identity::seal_card_with_keys(
            &card_info(&settings, &own_ca_pem, &own_keys),
            &published_keys(&own_keys),
            &signing,
            now as u64,
            now,
        );
        let first_view = PartnerView {
            trust: Arc::new(own_trust),
            keys: Arc::new(KeyDirectory::default()),
            policies: PolicyMap::new(),
            cards: CardMap::new(),
        };
        let quota = PartnerQuota::new(
            settings.limits.max_streams_per_partner,
            settings.limits.partner_requests_per_second,
        );
        let metrics = Arc::new(crate::metrics::Metrics::new());
        store.observe(metrics.clone());
        let ctx = Arc::new(NodeContext {
            own,
            settings,
            clock,
            signing: ArcSwap::from_pointee(signing),
            store,
            view: Arc::new(ArcSwap::from_pointee(first_view)),
            card: ArcSwap::from_pointee(card),
            key_change: tokio::sync::Mutex::new(()),
            reload: tokio::sync::Mutex::new(()),
            trust_change: tokio::sync::Mutex::new(()),
            shutdown,
            tasks: TaskTracker::new(),
            own_ca_pem,
            links: LinkBoard::new(clock),
            peer_changes: watch::channel(0).0,
            resends: watch::channel(0).0,
            loaded: std::sync::Mutex::new(None),
            conns: crate::net::Connections::with_metrics(metrics.clone()),
            metrics,
            quota,
            sightings_queued: watch::Sender::new(0),
            sighting_lock: tokio::sync::Mutex::new(()),
            statistics_counted: tokio::sync::Mutex::new(None),
            log_id,
            tls: NodeTls {
                cert: ArcSwap::from_pointee(node_cert),
                server: server_tls,
                seen: std::sync::Mutex::new(seen),
            },
        });
        ctx.reload().await?;
        ctx.record_config_certs().await?;
        Ok(ctx)
    }

    /// The trust store source the TLS verifiers and the request gate read.
    pub fn trust(&self) -> SharedTrust {
        self.view.clone()
    }

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
                let id = self.view.load().trust.verify(
                    leaf,
                    &ck.chain[1..],
                    self.clock.unix_time(),
                    Usage::Server,
                    algs,
                )?;
                if id != SpiffeId::node(&self.own) {
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
        let view = self.view.load();
        if let Some(state) = view.trust.blocked(org) {
            return Some(format!("{org} is {state} on {}", self.own));
        }
        (!view.trust.knows(org) || org == &self.own)
            .then(|| format!("{org} is not a registered partner of {}", self.own))
    }

    /// Re-reads partners, policies, revocations, CRLs, cards and keys from
    /// the store and, if anything changed, builds a new view and swaps it in
    /// (one swap) and wakes open streams. Open connections the view no
    /// longer allows (revoked, suspended, removed, stale CRL) are closed,
    /// also when nothing changed, since a CRL can turn stale with time alone.
    pub async fn reload(&self) -> Result<Reloaded, NodeError> {
        let _serial = self.reload.lock().await;
        let input = ViewInput {
            peers: self.store.peers().await?,
            policies: self.store.policies().await?,
            revoked: self.store.revoked_serials().await?,
            crls: self.store.partner_crls().await?,
            directory: self.store.directory().await?,
            own_keys: self.store.own_signing_keys().await?,
            keys: self.store.signing_keys().await?,
            own_card: self.card.load().as_ref().clone(),
        };
        if self.loaded.lock().expect("not poisoned").as_ref() == Some(&input) {
            self.close_refused_connections();
            return Ok(Reloaded {
                peers: input.peers,
                changed: false,
            });
        }
        let settings = ViewSettings {
            own: &self.own,
            own_ca_pem: &self.own_ca_pem,
            stale_crl: self.settings.revocation.stale_crl(),
        };
        let (view, warnings) = build_view(settings, &input)?;
        for w in warnings {
            tracing::error!(problem = %w, "partner view");
        }
        self.view.store(Arc::new(view));
        tracing::info!(
            partners = input.peers.len(),
            "partner trust and policies loaded"
        );
        // Wake open streams so they re-check their partner.
        self.peer_changes.send_modify(|g| *g += 1);
        let peers = input.peers.clone();
        *self.loaded.lock().expect("not poisoned") = Some(input);
        self.close_refused_connections();
        Ok(Reloaded {
            peers,
            changed: true,
        })
    }

    /// Closes open connections the current trust store refuses; returns how
    /// many.
    pub fn close_refused_connections(&self) -> usize {
        let trust = self.view.load().trust.clone();
        let now = self.clock.now_ms();
        self.conns
            .close_refused(|id, serial| trust.check_connection(id, serial, now))
    }

    /// Our card from our current keys, signed by `signer`, at a version
    /// above the current one.
    fn seal_own_card(&self, keys: &[OwnKeyRow], signer: &OrgSigningKey) -> Envelope {
        let now = self.clock.now_ms();
        let version = (now as u64).max(card_version(&self.card.load()) + 1);
        crate::identity::seal_card_with_keys(
            &card_info(&self.settings, &self.own_ca_pem, keys),
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
        let at = self.clock.now_ms();
        let rotation = crate::identity::seal_rotation(&self.own, &old, &new, at).encode_to_vec();
        self.store
            .rotate_own_key(
                old.key_id(),
                new.key_id(),
                new.public_key(),
                &rotation,
                at,
                actor,
            )
            .await?;
        std::fs::rename(&next, path).map_err(|e| io(e, path))?;
        let keys = self.store.own_signing_keys().await?;
        let card = self.seal_own_card(&keys, &old);
        self.card.store(Arc::new(card));
        // The view (the cards streams pass on) carries the new card before
        // anything is signed with the new key, so no partner receives an
        // indicator under a key its card has not announced.
        self.reload().await?;
        self.signing.store(Arc::new(new));
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
        self.reload().await?;
        Ok(keys)
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
        let id = SpiffeId::from_cert_der(der.as_ref())?;
        let usage = if id.role == Role::Node {
            Usage::Server
        } else {
            Usage::Client
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
            issued_ms: self.clock.now_ms(),
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

/// What our card says about us besides keys: who we are, where we serve,
/// and the rotation statements that link our current key to earlier ones.
fn card_info(settings: &Settings, own_ca_pem: &str, keys: &[OwnKeyRow]) -> CardInfo {
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
        rotations: keys
            .iter()
            .filter(|k| !k.rotation.is_empty())
            .filter_map(|k| Envelope::decode(k.rotation.as_slice()).ok())
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
/// recorded in the store), signed by `signer` at `now_ms`; with no recorded
/// keys, just `signer`'s.
pub fn own_card_with_keys(
    settings: &Settings,
    signer: &OrgSigningKey,
    own_ca_pem: &str,
    keys: &[OwnKeyRow],
    now_ms: i64,
) -> Envelope {
    let info = card_info(settings, own_ca_pem, keys);
    if keys.is_empty() {
        return crate::identity::seal_card(&info, signer, now_ms);
    }
    crate::identity::seal_card_with_keys(
        &info,
        &published_keys(keys),
        signer,
        now_ms as u64,
        now_ms,
    )
}

/// Our org card with just `signing`'s key, self-signed at `now_ms`.
pub fn own_card(
    settings: &Settings,
    signing: &OrgSigningKey,
    own_ca_pem: &str,
    now_ms: i64,
) -> Envelope {
    own_card_with_keys(settings, signing, own_ca_pem, &[], now_ms)
}
