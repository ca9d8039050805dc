//! The one test harness: organisations made by the project's own `init`,
//! real nodes on 127.0.0.1:0 over real mutual TLS, clients presenting any
//! certificate, and a rogue upstream that serves hand-made envelopes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

use threatmesh::clock::Clock;
use threatmesh::config::Settings;
use threatmesh::identity::{
    CertifiedKey, IssuedCert, SharedTrust, SpiffeId, TrustStore, client_config, issue,
    server_config,
};
use threatmesh::model::OrgId;
use threatmesh::node::{Node, NodeContext, NodeError, load_signing_key, own_card};
use threatmesh::proto::v1::exchange_client::ExchangeClient;
use threatmesh::proto::v1::exchange_server::{Exchange, ExchangeServer};
use threatmesh::proto::v1::{
    Delivery, Envelope, GetCardRequest, GetCardResponse, IndicatorDraft, IndicatorKind, Marking,
    PublishRequest, PublishResponse, SubscribeRequest, SubscribeResponse, Tlp,
};
use threatmesh::provision::{OrgOptions, provision_org};
use threatmesh::signing::OrgSigningKey;
use threatmesh::store::Store;

/// The policy tests bind unless they say otherwise: TLP:CLEAR and GREEN
/// (community), every kind, own indicators.
pub const OPEN_POLICY: &str =
    "name = \"test-open\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n";

/// The PostgreSQL server the tests keep their stores in
/// (`THREATMESH_TEST_PG=postgres://user@host:port`, each organisation in a
/// database of its own); unset: SQLite files. `.ci/run` runs the suite
/// once each way.
pub fn test_pg() -> Option<String> {
    std::env::var("THREATMESH_TEST_PG")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('/').to_string())
}

/// The PostgreSQL server of the tests that need one whatever the suite
/// runs on (replicas, copying a store across backends): [`test_pg`], or the
/// one these machines run.
pub fn pg_server() -> String {
    test_pg().unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A PostgreSQL database made for one test organisation, dropped (with
/// any connection still open to it) when the organisation is.
pub struct PgDatabase {
    server: String,
    pub name: String,
}

impl PgDatabase {
    /// Creates `t_<uuid>` on `server`.
    pub fn create(server: &str) -> Self {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        Self::admin(server, format!("CREATE DATABASE {name}"));
        Self {
            server: server.to_string(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// Runs `statement` on `server`'s `postgres` database, from a thread
    /// of its own (callers may be inside a runtime, or dropping).
    fn admin(server: &str, statement: String) {
        let url = format!("{server}/postgres");
        let server = server.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                let mut c = sqlx::PgConnection::connect(&url)
                    .await
                    .unwrap_or_else(|e| panic!("THREATMESH_TEST_PG={server}: {e}"));
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{statement}: {e}"));
            })
        })
        .join()
        .unwrap();
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        Self::admin(
            &self.server,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// An organisation created with `threatmesh init` in a temporary directory.
pub struct Org {
    pub id: OrgId,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub settings: Settings,
    /// Its PostgreSQL database, when the suite runs on PostgreSQL.
    pub pg: Option<PgDatabase>,
}

impl Org {
    /// Creates `name` with fast test timings, its store on the backend the
    /// suite runs on ([`test_pg`]).
    pub fn new(name: &str) -> Self {
        Self::create(name, test_pg().map(|server| PgDatabase::create(&server)))
    }

    /// Creates `name` with its store in PostgreSQL whatever the suite runs
    /// on ([`pg_server`]).
    pub fn new_pg(name: &str) -> Self {
        Self::create(name, Some(PgDatabase::create(&pg_server())))
    }

    /// Creates `name` with its store in a SQLite file whatever the suite
    /// runs on: for what only a file store has (its file, its disk).
    pub fn new_sqlite(name: &str) -> Self {
        Self::create(name, None)
    }

    fn create(name: &str, pg: Option<PgDatabase>) -> Self {
        threatmesh::identity::install_default_provider();
        // THREATMESH_TEST_LOG=debug (any filter): the nodes' logs, shown
        // with a failing test's output.
        if let Ok(filter) = std::env::var("THREATMESH_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let report = provision_org(&OrgOptions {
            listen: Some("127.0.0.1:0".into()),
            display_name: Some(format!("Test org {name}")),
            store_url: pg.as_ref().map(PgDatabase::url),
            ..OrgOptions::new(name, dir.path())
        })
        .unwrap();
        let mut settings = Settings::load(&report.config).unwrap();
        settings.federation.peer_refresh_ms = 100;
        settings.federation.reconnect_min_ms = 50;
        settings.federation.reconnect_max_ms = 500;
        // Several nodes of a test share the server's 100 connections.
        settings.store.pool_size = 4;
        Self {
            id: report.org,
            dir,
            config: report.config,
            settings,
            pg,
        }
    }

    /// Loses this org's store (its SQLite files deleted, or its PostgreSQL
    /// database dropped and made again, empty); the node must be stopped.
    pub fn wipe_store(&self) {
        match &self.pg {
            Some(db) => {
                PgDatabase::admin(
                    &db.server,
                    format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
                );
                PgDatabase::admin(&db.server, format!("CREATE DATABASE {}", db.name));
            }
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = self.settings.store.path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    /// A connection to this org's store database from outside the node
    /// (as an intruder or a careless operator would have), on either
    /// backend: write queries with `$1`-style placeholders, which both
    /// read.
    pub async fn raw_db(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        match &self.pg {
            Some(db) => sqlx::AnyConnection::connect(&db.url()).await.unwrap(),
            None => {
                let url = format!("sqlite://{}", self.settings.store.path.display());
                let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
                sqlx::query("PRAGMA busy_timeout = 30000")
                    .execute(&mut c)
                    .await
                    .unwrap();
                c
            }
        }
    }

    fn read(&self, p: &std::path::Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    pub fn ca_pem(&self) -> String {
        self.read(&self.settings.tls.ca_cert)
    }

    pub fn ca_key_pem(&self) -> String {
        self.read(&self.dir.path().join("certs/ca.key"))
    }

    /// Issues a certificate for `id` from this org's CA.
    pub fn issue(&self, id: &SpiffeId) -> IssuedCert {
        issue(&self.ca_pem(), &self.ca_key_pem(), id, 30).unwrap()
    }

    pub fn signing_key(&self) -> OrgSigningKey {
        load_signing_key(&self.settings).unwrap()
    }

    /// This org's signed card.
    pub fn card(&self) -> Envelope {
        own_card(
            &self.settings,
            &self.signing_key(),
            &self.ca_pem(),
            now_ms(),
        )
    }

    pub fn publisher_cert(&self) -> CertifiedKey {
        let c = &self.settings.client;
        CertifiedKey::load(&c.publisher_cert, &c.publisher_key).unwrap()
    }

    pub fn admin_cert(&self) -> CertifiedKey {
        let c = &self.settings.client;
        CertifiedKey::load(&c.admin_cert, &c.admin_key).unwrap()
    }

    pub fn node_cert(&self) -> CertifiedKey {
        let t = &self.settings.tls;
        CertifiedKey::load(&t.node_cert, &t.node_key).unwrap()
    }

    /// Registers `partner`'s card in this org's store bound to
    /// [`OPEN_POLICY`]; `dial` = where to subscribe to it (None = trust it,
    /// but do not dial it).
    pub async fn add_peer(&self, partner: &Org, dial: Option<SocketAddr>) {
        self.add_peer_with(partner, dial, OPEN_POLICY).await;
    }

    /// As [`Org::add_peer`], bound to the policy document `policy`.
    pub async fn add_peer_with(&self, partner: &Org, dial: Option<SocketAddr>, policy: &str) {
        let name = self.apply_policy(policy).await;
        self.add_card(&partner.card(), dial, Some(&name)).await;
    }

    pub async fn add_card(&self, card: &Envelope, dial: Option<SocketAddr>, policy: Option<&str>) {
        self.add_card_as(card, dial, policy, false).await;
    }

    /// Registers a partner card; `introducer`: cards of other orgs it relays
    /// are accepted.
    pub async fn add_card_as(
        &self,
        card: &Envelope,
        dial: Option<SocketAddr>,
        policy: Option<&str>,
        introducer: bool,
    ) {
        let store = Store::open(&self.settings.store, Clock::system())
            .await
            .unwrap();
        let ep = dial.map(|a| a.to_string()).unwrap_or_default();
        threatmesh::admin::register_peer(
            &self.id,
            &store,
            card,
            Some(&ep),
            policy,
            introducer,
            "test",
        )
        .await
        .unwrap();
        store.close().await;
    }

    /// Applies a policy document; returns its name.
    pub async fn apply_policy(&self, doc: &str) -> String {
        let name = threatmesh::policy::parse_policy(doc).unwrap().name;
        let store = Store::open(&self.settings.store, Clock::system())
            .await
            .unwrap();
        store.apply_policy(&name, doc, "test").await.unwrap();
        store.close().await;
        name
    }

    /// Opens this org's store directly (a second handle, as an operator would).
    pub async fn store(&self) -> Store {
        Store::open(&self.settings.store, Clock::system())
            .await
            .unwrap()
    }
}

/// A node running in this process.
pub struct RunningNode {
    pub addr: SocketAddr,
    /// The TAXII server's address, when started with one.
    pub taxii: Option<SocketAddr>,
    /// The metrics and probe listener (every test node has one).
    pub metrics: SocketAddr,
    pub ctx: Arc<NodeContext>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), NodeError>>,
}

impl RunningNode {
    /// Clean shutdown; panics if the node reports an error.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("node stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

/// Binds 127.0.0.1:0 and starts `org`'s node.
pub async fn start(org: &Org) -> RunningNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_on(org, listener).await
}

pub async fn start_on(org: &Org, listener: TcpListener) -> RunningNode {
    start_with_clock(org, listener, Clock::system()).await
}

/// [`start_on`] with the clock the node reads (e.g. [`Clock::anchored`], so
/// a test moves the node's time with `tokio::time::advance`).
pub async fn start_with_clock(org: &Org, listener: TcpListener, clock: Clock) -> RunningNode {
    start_full(org, listener, clock, None).await
}

/// `org`'s node serving TAXII 2.1 too, on another port of 127.0.0.1.
pub async fn start_with_taxii(org: &Org) -> RunningNode {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let taxii = TcpListener::bind("127.0.0.1:0").await.unwrap();
    start_full(org, listener, Clock::system(), Some(taxii)).await
}

async fn start_full(
    org: &Org,
    listener: TcpListener,
    clock: Clock,
    taxii: Option<TcpListener>,
) -> RunningNode {
    let addr = listener.local_addr().unwrap();
    let taxii_addr = taxii.as_ref().map(|l| l.local_addr().unwrap());
    let mut node = Node::open_with_clock(org.settings.clone(), clock)
        .await
        .unwrap();
    if let Some(t) = taxii {
        node = node.with_taxii(t);
    }
    let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    node = node.with_metrics(metrics);
    let ctx = node.context();
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(node.serve(listener, async move {
        let _ = rx.await;
    }));
    RunningNode {
        addr,
        taxii: taxii_addr,
        metrics: metrics_addr,
        ctx,
        stop: Some(tx),
        task,
    }
}

/// A channel to `addr`, expecting the node of `server_org` (trusting the CA
/// `server_ca_pem`), presenting `cert` — or no certificate at all.
pub fn channel_with(
    addr: SocketAddr,
    server_org: &OrgId,
    server_ca_pem: &str,
    cert: Option<&CertifiedKey>,
) -> Channel {
    let trust = Arc::new(ArcSwap::from_pointee(
        TrustStore::new(server_org.clone(), server_ca_pem).unwrap(),
    ));
    let tls = client_config(trust, SpiffeId::node(server_org), cert).unwrap();
    threatmesh::net::mtls_channel(&addr.to_string(), server_org.as_str(), tls).unwrap()
}

/// A client of `node` (run by `org`) presenting `cert`.
pub fn exchange_as(org: &Org, node: &RunningNode, cert: &CertifiedKey) -> ExchangeClient<Channel> {
    ExchangeClient::new(channel_with(node.addr, &org.id, &org.ca_pem(), Some(cert)))
}

/// A client of `node`'s Admin service (run by `org`) presenting `cert`.
pub fn admin_as(
    org: &Org,
    node: &RunningNode,
    cert: &CertifiedKey,
) -> threatmesh::proto::v1::admin_client::AdminClient<Channel> {
    threatmesh::proto::v1::admin_client::AdminClient::new(channel_with(
        node.addr,
        &org.id,
        &org.ca_pem(),
        Some(cert),
    ))
}

/// `org`'s own admin client of its running node.
pub fn admin(
    org: &Org,
    node: &RunningNode,
) -> threatmesh::proto::v1::admin_client::AdminClient<Channel> {
    admin_as(org, node, &org.admin_cert())
}

/// Suspends, resumes or removes `partner` at `org`'s running node through
/// the Admin API; returns the state before.
pub async fn set_peer_state(
    org: &Org,
    node: &RunningNode,
    partner: &Org,
    action: threatmesh::proto::v1::PeerAction,
) -> Result<String, Status> {
    admin(org, node)
        .set_peer_state(threatmesh::proto::v1::SetPeerStateRequest {
            org: partner.id.to_string(),
            action: action as i32,
        })
        .await
        .map(|r| r.into_inner().previous_state)
}

/// `org`'s own publisher client of its running node.
pub fn publisher(org: &Org, node: &RunningNode) -> ExchangeClient<Channel> {
    exchange_as(org, node, &org.publisher_cert())
}

pub fn draft(kind: IndicatorKind, value: &str, tlp: Tlp, recipients: &[&str]) -> IndicatorDraft {
    IndicatorDraft {
        kind: kind as i32,
        value: value.into(),
        marking: Some(Marking {
            tlp: tlp as i32,
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        confidence: 70,
        ..Default::default()
    }
}

/// The i-th distinct IPv4 draft.
pub fn ipv4_draft(i: u32, tlp: Tlp) -> IndicatorDraft {
    let a = 0x0a00_0000u32 + i;
    draft(
        IndicatorKind::Ipv4,
        &std::net::Ipv4Addr::from(a).to_string(),
        tlp,
        &[],
    )
}

/// Publishes drafts with `in_flight` requests outstanding; returns responses in order.
pub async fn publish_all(
    client: &ExchangeClient<Channel>,
    drafts: Vec<IndicatorDraft>,
    in_flight: usize,
) -> Vec<PublishResponse> {
    use futures_util::StreamExt;
    futures_util::stream::iter(drafts)
        .map(|d| {
            let mut c = client.clone();
            async move {
                c.publish(PublishRequest {
                    indicator: Some(d),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
            }
        })
        .buffered(in_flight)
        .collect()
        .await
}

/// A and B linked with the open policy: B subscribes to A; A trusts B's CA
/// so B's node may connect.
pub async fn linked_pair() -> (Org, Org, RunningNode, RunningNode) {
    linked_pair_with(Org::new("a.example")).await
}

/// As [`linked_pair`], with A already made (e.g. with changed settings).
pub async fn linked_pair_with(a: Org) -> (Org, Org, RunningNode, RunningNode) {
    let b = Org::new("b.example");
    a.add_peer(&b, None).await;
    let node_a = start(&a).await;
    b.add_peer(&a, Some(node_a.addr)).await;
    let node_b = start(&b).await;
    (a, b, node_a, node_b)
}

/// Ids of every indicator version `node` holds.
pub async fn ids_at(node: &RunningNode) -> std::collections::BTreeSet<String> {
    node.ctx
        .store
        .indicators(None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.indicator_id.clone())
        .collect()
}

/// Waits until `subscriber`'s cursor covers everything `upstream_node` holds now.
pub async fn caught_up(subscriber: &RunningNode, upstream: &Org, upstream_node: &RunningNode) {
    let latest = upstream_node.ctx.store.latest_seq().await.unwrap();
    let store = subscriber.ctx.store.clone();
    let org = upstream.id.clone();
    wait_until(
        30,
        "subscriber's cursor to reach the upstream's latest",
        || {
            let (s, o) = (store.clone(), org.clone());
            async move { s.cursor(&o).await.unwrap() >= latest }
        },
    )
    .await;
}

/// Waits up to `secs` for `subscriber`'s link to `upstream` to report an
/// error containing `why` (closed and refused, with the reason).
pub async fn link_error(subscriber: &RunningNode, upstream: &Org, why: &str, secs: u64) {
    let org = &upstream.id;
    wait_until(secs, why, || async move {
        subscriber
            .ctx
            .links
            .snapshot()
            .get(org)
            .is_some_and(|h| h.last_error.contains(why))
    })
    .await;
}

/// Polls `f` every 20 ms until it returns true or `secs` pass.
pub async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream that serves fixed deliveries to whoever subscribes, as a
/// compromised or buggy partner node would. Runs over the library's real
/// mTLS acceptor with `org`'s node certificate.
pub struct RogueUpstream {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

#[derive(Clone)]
struct RogueExchange {
    deliveries: Arc<Vec<Delivery>>,
    cards: Arc<Vec<Envelope>>,
}

#[tonic::async_trait]
impl Exchange for RogueExchange {
    async fn publish(
        &self,
        _: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    async fn publish_batch(
        &self,
        _: Request<threatmesh::proto::v1::PublishBatchRequest>,
    ) -> Result<Response<threatmesh::proto::v1::PublishBatchResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    type SubscribeStream = ReceiverStream<Result<SubscribeResponse, Status>>;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let from = req.into_inner().from_cursor;
        let deliveries: Vec<Delivery> = self
            .deliveries
            .iter()
            .filter(|d| d.seq > from)
            .cloned()
            .collect();
        let cursor = self
            .deliveries
            .iter()
            .map(|d| d.seq)
            .max()
            .unwrap_or(0)
            .max(from);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let cards = self.cards.as_ref().clone();
        tokio::spawn(async move {
            let latest = cursor;
            let _ = tx
                .send(Ok(SubscribeResponse {
                    deliveries,
                    cursor,
                    latest,
                    cards,
                    log_id: String::new(),
                    sent_unix_ms: 0,
                    resent: false,
                }))
                .await;
            // Keep the stream open, like a live tail.
            tx.closed().await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_card(
        &self,
        _: Request<GetCardRequest>,
    ) -> Result<Response<GetCardResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    async fn get_ledger_head(
        &self,
        _: Request<threatmesh::proto::v1::GetLedgerHeadRequest>,
    ) -> Result<Response<threatmesh::proto::v1::GetLedgerHeadResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    async fn sight(
        &self,
        _: Request<threatmesh::proto::v1::SightRequest>,
    ) -> Result<Response<threatmesh::proto::v1::SightResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    async fn report_sightings(
        &self,
        _: Request<threatmesh::proto::v1::ReportSightingsRequest>,
    ) -> Result<Response<threatmesh::proto::v1::ReportSightingsResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }

    async fn share_statistics(
        &self,
        _: Request<threatmesh::proto::v1::ShareStatisticsRequest>,
    ) -> Result<Response<threatmesh::proto::v1::ShareStatisticsResponse>, Status> {
        Err(Status::unimplemented("rogue"))
    }
}

impl RogueUpstream {
    /// Serves `envelopes` as seq 1, 2, ... to subscribers trusted by `org`'s
    /// CA plus the CAs of `trusts`, each with the path `[org]` (as if `org`
    /// were the origin).
    pub async fn start(org: &Org, trusts: &[&Org], envelopes: Vec<Vec<u8>>) -> Self {
        let path = vec![org.id.to_string()];
        Self::start_with_paths(
            org,
            trusts,
            envelopes.into_iter().map(|e| (e, path.clone())).collect(),
        )
        .await
    }

    /// As [`RogueUpstream::start`], each envelope with its own path.
    pub async fn start_with_paths(
        org: &Org,
        trusts: &[&Org],
        envelopes: Vec<(Vec<u8>, Vec<String>)>,
    ) -> Self {
        Self::start_with_cards(org, trusts, envelopes, Vec::new()).await
    }

    /// As [`RogueUpstream::start_with_paths`], sending `cards` with the
    /// deliveries.
    pub async fn start_with_cards(
        org: &Org,
        trusts: &[&Org],
        envelopes: Vec<(Vec<u8>, Vec<String>)>,
        cards: Vec<Envelope>,
    ) -> Self {
        let mut trust = TrustStore::new(org.id.clone(), &org.ca_pem()).unwrap();
        for t in trusts {
            trust.set_partner(t.id.clone(), &t.ca_pem()).unwrap();
        }
        let trust: SharedTrust = Arc::new(ArcSwap::from_pointee(trust));
        let gate_trust = trust.clone();
        let tls = Arc::new(ArcSwap::new(server_config(&org.node_cert()).unwrap()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = ReceiverStream::new(threatmesh::net::accept_mtls(
            listener,
            threatmesh::net::ServerTls::grpc(tls),
            trust,
            threatmesh::net::Connections::default(),
            Clock::system(),
            threatmesh::net::ConnLimits::from_settings(&org.settings),
        ));
        let deliveries = envelopes
            .into_iter()
            .enumerate()
            .map(|(i, (e, path))| Delivery {
                seq: i as u64 + 1,
                envelope: e.into(),
                path,
            })
            .collect();
        let svc = RogueExchange {
            deliveries: Arc::new(deliveries),
            cards: Arc::new(cards),
        };
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(
            Server::builder()
                .layer(tonic::service::InterceptorLayer::new(
                    threatmesh::net::request_gate(gate_trust, Clock::system()),
                ))
                .add_service(ExchangeServer::new(svc))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.await;
                }),
        );
        Self {
            addr,
            stop: Some(tx),
        }
    }
}

impl Drop for RogueUpstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serialises an envelope as it travels.
pub fn bytes(env: &Envelope) -> Vec<u8> {
    env.encode_to_vec()
}

/// A policy for relaying partners: every TLP (RED only where named), community, relayed
/// indicators sent and accepted.
pub const RELAY_POLICY: &str = "name = \"test-relay\"\n[egress]\ntlp_ceiling = \"RED\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n";

/// Several organisations on loopback, each edge a two-way link (each side
/// subscribes to the other), all bound to one policy.
pub struct Mesh {
    pub orgs: Vec<Org>,
    pub nodes: Vec<RunningNode>,
    /// (subscriber, upstream) for every link.
    pub links: Vec<(usize, usize)>,
    /// Fault-injecting proxies, by (subscriber, upstream): the subscriber
    /// dials the upstream through it.
    pub proxies: Vec<((usize, usize), FaultProxy)>,
}

impl Mesh {
    /// Every partner is an introducer: cards of other orgs it relays are
    /// accepted.
    pub async fn start(names: &[&str], edges: &[(usize, usize)], policy: &str) -> Mesh {
        Self::start_with(names, edges, policy, true, &[]).await
    }

    /// As [`Mesh::start`]; `introducers` says whether partners are
    /// introducers, and the links of the `proxied` edges run (both ways)
    /// through a [`FaultProxy`].
    pub async fn start_with(
        names: &[&str],
        edges: &[(usize, usize)],
        policy: &str,
        introducers: bool,
        proxied: &[(usize, usize)],
    ) -> Mesh {
        Self::build(
            names,
            edges,
            &|_, _| policy.to_string(),
            introducers,
            proxied,
            &|_| {},
        )
        .await
    }

    /// As [`Mesh::start`], each org binding its partner by the policy
    /// document `policy(org, partner)` (indices into `names`).
    pub async fn start_with_policies(
        names: &[&str],
        edges: &[(usize, usize)],
        policy: &dyn Fn(usize, usize) -> String,
    ) -> Mesh {
        Self::build(names, edges, policy, true, &[], &|_| {}).await
    }

    /// As [`Mesh::start_with_policies`], each org's settings changed by
    /// `tune` before its node starts.
    pub async fn start_tuned(
        names: &[&str],
        edges: &[(usize, usize)],
        policy: &dyn Fn(usize, usize) -> String,
        tune: &dyn Fn(&mut Settings),
    ) -> Mesh {
        Self::build(names, edges, policy, true, &[], tune).await
    }

    async fn build(
        names: &[&str],
        edges: &[(usize, usize)],
        policy: &dyn Fn(usize, usize) -> String,
        introducers: bool,
        proxied: &[(usize, usize)],
        tune: &dyn Fn(&mut Settings),
    ) -> Mesh {
        let orgs: Vec<Org> = names
            .iter()
            .map(|n| {
                let mut o = Org::new(n);
                tune(&mut o.settings);
                o
            })
            .collect();
        let mut listeners = Vec::new();
        for _ in &orgs {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut links = Vec::new();
        let mut proxies = Vec::new();
        for &(i, j) in edges {
            for (x, y) in [(i, j), (j, i)] {
                let name = orgs[x].apply_policy(&policy(x, y)).await;
                let mut dial = addrs[y];
                if proxied.contains(&(i, j)) || proxied.contains(&(j, i)) {
                    let p = FaultProxy::start(addrs[y]).await;
                    dial = p.addr;
                    proxies.push(((x, y), p));
                }
                orgs[x]
                    .add_card_as(&orgs[y].card(), Some(dial), Some(&name), introducers)
                    .await;
            }
            links.push((i, j));
            links.push((j, i));
        }
        let mut nodes = Vec::new();
        for (o, l) in orgs.iter().zip(listeners) {
            nodes.push(start_on(o, l).await);
        }
        Mesh {
            orgs,
            nodes,
            links,
            proxies,
        }
    }

    /// Waits until every link's cursor covers its upstream's log and no
    /// node's log grew meanwhile: nothing is in flight any more.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut before = Vec::new();
            for n in &self.nodes {
                before.push(n.ctx.store.latest_seq().await.unwrap());
            }
            for &(s, u) in &self.links {
                let latest = self.nodes[u].ctx.store.latest_seq().await.unwrap();
                loop {
                    let cursor = self.nodes[s]
                        .ctx
                        .store
                        .cursor(&self.orgs[u].id)
                        .await
                        .unwrap();
                    if cursor >= latest {
                        break;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} stuck at cursor {cursor} of {}'s {latest}: {:?}",
                        self.orgs[s].id,
                        self.orgs[u].id,
                        self.nodes[s].ctx.links.snapshot().get(&self.orgs[u].id)
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut after = Vec::new();
            for n in &self.nodes {
                after.push(n.ctx.store.latest_seq().await.unwrap());
            }
            if before == after {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the mesh did not settle: logs keep growing"
            );
        }
    }

    /// Cuts (true) or heals (false) every proxied link.
    pub fn partition(&self, cut: bool) {
        for (_, p) in &self.proxies {
            if cut { p.cut() } else { p.heal() }
        }
    }

    pub async fn stop(self) {
        for n in self.nodes {
            n.stop().await;
        }
    }
}

/// A TCP proxy in front of `target` that a test can cut — open connections
/// are dropped and new ones closed at once, as a network partition does —
/// freeze — connections stay open but nothing passes, as a dead route or a
/// hung peer looks — and heal.
pub struct FaultProxy {
    pub addr: SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        let (frozen, freeze) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut watch = watch.clone();
                let mut freeze = freeze.clone();
                tokio::spawn(async move {
                    let frozen_now = *freeze.borrow();
                    if frozen_now {
                        // Held open, never answered, until cut or healed.
                        tokio::select! {
                            _ = watch.wait_for(|cut| *cut) => {}
                            _ = freeze.wait_for(|f| !*f) => {}
                        }
                        return;
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let froze = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                        _ = watch.wait_for(|cut| *cut) => false,
                        r = freeze.wait_for(|f| *f) => r.is_ok(),
                    };
                    if froze {
                        // Both sockets stay open; nothing passes.
                        tokio::select! {
                            _ = watch.wait_for(|cut| *cut) => {}
                            _ = freeze.wait_for(|f| !*f) => {}
                        }
                    }
                });
            }
        });
        Self { addr, cut, frozen }
    }

    /// Drops every connection through the proxy and refuses new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Stops passing bytes on every connection, open or new, without
    /// closing any.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Lets connections through again (frozen ones are dropped: what was
    /// in flight is lost).
    pub fn heal(&self) {
        self.frozen.send_replace(false);
        self.cut.send_replace(false);
    }
}

/// A hand-made domain indicator claiming `origin`, naming `key`, dated
/// `at_ms`, relayable up to 8 hops: for envelopes a rogue node serves.
pub fn hand_made(
    origin: &str,
    key: &OrgSigningKey,
    value: &str,
    tlp: Tlp,
    at_ms: i64,
) -> threatmesh::proto::v1::Indicator {
    threatmesh::proto::v1::Indicator {
        origin_org: origin.into(),
        key_id: key.key_id().into(),
        id: uuid::Uuid::new_v4().to_string(),
        version: 1,
        created_unix_ms: at_ms,
        modified_unix_ms: at_ms,
        marking: Some(Marking {
            tlp: tlp as i32,
            may_forward: true,
            hop_limit: 8,
            ..Default::default()
        }),
        kind: IndicatorKind::Domain as i32,
        value: value.into(),
        valid_from_unix_ms: at_ms,
        ..Default::default()
    }
}

/// `ind` signed with `key`, as its origin would.
pub fn seal_indicator(key: &OrgSigningKey, ind: &threatmesh::proto::v1::Indicator) -> Envelope {
    key.seal(
        threatmesh::signing::INDICATOR_PAYLOAD_TYPE,
        ind.encode_to_vec(),
    )
}

/// The `threatmesh` CLI of `org`, talking to its running `node`.
pub fn cli(org: &Org, node: &RunningNode, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"))
        .arg("--config")
        .arg(&org.config)
        .env("THREATMESH_SERVER", node.addr.to_string())
        .args(args)
        .output()
        .unwrap()
}

pub use threatmesh::clock::wall_ms as now_ms;

/// `node`'s ledger rows about `partner`, oldest first.
pub async fn ledger(node: &RunningNode, partner: &str) -> Vec<threatmesh::audit::AuditRow> {
    node.ctx
        .store
        .audit_rows(Some(partner), None)
        .await
        .unwrap()
}

/// Asserts that `node` (run by `org`) still answers `partner`'s node: what
/// one partner did has not cost the others their service.
pub async fn still_serves(org: &Org, node: &RunningNode, partner: &Org) {
    let mut client = exchange_as(org, node, &partner.node_cert());
    client
        .get_card(GetCardRequest {})
        .await
        .unwrap_or_else(|e| panic!("{} no longer serves {}: {e:?}", org.id, partner.id));
}

/// Asserts `node`'s ledger has no `sent` row to `partner` naming indicator
/// `id`: the egress gate records every release before it is sent, so this
/// proves nothing of it left for that partner — no waiting needed.
pub async fn assert_never_sent(node: &RunningNode, partner: &str, id: &str) {
    let rows = ledger(node, partner).await;
    let sent: Vec<_> = rows
        .iter()
        .filter(|r| r.entry.event == "sent" && r.entry.subject.contains(id))
        .collect();
    assert!(sent.is_empty(), "{id} was sent to {partner}: {sent:#?}");
}

/// Waits until `node` has committed its cursor for `upstream` up to `seq`:
/// it has stored, refused or quarantined every envelope up to there.
pub async fn considered(node: &RunningNode, upstream: &OrgId, seq: u64) {
    let (store, up) = (node.ctx.store.clone(), upstream.clone());
    let what = format!("{} to consider {up}'s envelopes up to {seq}", node.ctx.own);
    wait_until(30, &what, || {
        let (s, up) = (store.clone(), up.clone());
        async move { s.cursor(&up).await.unwrap() >= seq }
    })
    .await;
}

/// (upstream seq, kind) of every refusal `node` recorded, oldest first.
pub async fn refusals(node: &RunningNode) -> Vec<(u64, threatmesh::refusal::RefusalKind)> {
    let rej = node.ctx.store.rejections().await.unwrap();
    rej.iter().map(|r| (r.upstream_seq, r.kind)).collect()
}

/// `GET path` on `node`'s metrics listener: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the metric sample `series` (name with labels, exactly as
/// exposed) in a scrape, if present.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

/// Waits until `node` holds version `version` of the policy bound to
/// `partner` (a policy applied by the Admin API reaches the send path).
pub async fn policy_loaded(node: &RunningNode, partner: &Org, version: u64) {
    let (ctx, id) = (node.ctx.clone(), partner.id.clone());
    wait_until(10, "the node to load the new policy version", || {
        let (ctx, id) = (ctx.clone(), id.clone());
        async move {
            ctx.view
                .load()
                .policies
                .get(&id)
                .is_some_and(|p| p.version == version)
        }
    })
    .await;
}

/// A TCP load balancer in front of a node's replicas: each connection goes
/// to the first backend, in order, that accepts it (a dead replica is
/// passed over), as a balancer with health checks would send it.
pub struct Balancer {
    pub addr: SocketAddr,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for b in backends {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(b).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { addr }
    }
}

/// A local address nothing listens on now (for a process to bind).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A bare store (no node) on the backend the suite runs on: a SQLite file
/// in a temporary directory, or a PostgreSQL database of its own. Each
/// [`TestStore::open`] is another handle on the same data.
pub struct TestStore {
    pub settings: threatmesh::config::StoreSettings,
    _dir: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

impl TestStore {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = test_pg().map(|server| PgDatabase::create(&server));
        let settings = threatmesh::config::StoreSettings {
            path: dir.path().join("s.db"),
            url: db.as_ref().map(PgDatabase::url).unwrap_or_default(),
            pool_size: 4,
            statement_timeout_ms: 0,
            max_size_mb: 0,
            publish_keys_kept_ms: 60_000,
        };
        Self {
            settings,
            _dir: dir,
            _db: db,
        }
    }

    pub async fn open(&self) -> Store {
        Store::open(&self.settings, Clock::system()).await.unwrap()
    }
}

/// `threatmesh serve` for `org` as a real process, with fast link timings
/// and settings through the environment as an operator would override
/// them (add more with `.env(..)`), killed when dropped.
pub fn serve_command(org: &Org) -> tokio::process::Command {
    let mut serve = tokio::process::Command::new(env!("CARGO_BIN_EXE_threatmesh"));
    serve
        .args(["serve", "--config"])
        .arg(&org.config)
        .env("THREATMESH__FEDERATION__PEER_REFRESH_MS", "100")
        .env("THREATMESH__FEDERATION__RECONNECT_MIN_MS", "50")
        .env("THREATMESH__FEDERATION__RECONNECT_MAX_MS", "500")
        .env("THREATMESH__LOG__LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true);
    serve
}

/// Signed reports (sightings, statistics) with their paths, as a partner
/// sends them.
pub fn signed_reports(
    reports: Vec<(Envelope, Vec<&str>)>,
) -> Vec<threatmesh::proto::v1::SignedReport> {
    reports
        .into_iter()
        .map(|(env, path)| threatmesh::proto::v1::SignedReport {
            envelope: env.encode_to_vec(),
            path: path.into_iter().map(String::from).collect(),
        })
        .collect()
}

/// Each report's outcome as (code, message, stored).
pub fn outcomes(
    answered: Vec<threatmesh::proto::v1::ReportOutcome>,
) -> Vec<(tonic::Code, String, bool)> {
    answered
        .into_iter()
        .map(|o| (tonic::Code::from(o.code as i32), o.message, o.stored))
        .collect()
}

/// Calls `call` 20 times in a row against a node whose
/// `limits.partner_requests_per_second` is 1 (bursts of 2): some calls must
/// be refused `RESOURCE_EXHAUSTED` naming that setting, and no other way.
pub async fn refused_over_rate<F, Fut, T>(mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut refused = 0;
    for _ in 0..20 {
        if let Err(s) = call().await {
            assert_eq!(s.code(), tonic::Code::ResourceExhausted, "{s:?}");
            assert!(
                s.message().contains("limits.partner_requests_per_second"),
                "{s:?}"
            );
            refused += 1;
        }
    }
    // 20 requests cannot all pass unless they took 18 s.
    assert!(refused > 0, "no request of the 20 was refused");
}
