//! `threatmesh bench`: one command that measures, in one run on this
//! machine, the primitives that bound ThreatMesh (Ed25519 sign and verify
//! on one core and all cores, durable SQLite inserts) and the node itself
//! over real mutual TLS on loopback, every acknowledged commit on disk: publish
//! throughput, peer ingest of a backlog, end-to-end latency over two hops,
//! and fan-out to many subscribers with differing policies (with peak RSS
//! and the memory of a subscriber that stops reading). Every node figure is
//! also given as a ratio to the primitive that bounds it, because the
//! machines are shared and noisy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::StreamExt;
use prost::Message;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

use crate::config::Settings;
use crate::exchange::{Identity, assemble};
use crate::identity::{
    CertifiedKey, SpiffeId, TrustStore, client_config, generate_ca, issue, seal_card,
};
use crate::model::{OrgId, prepare_draft};
use crate::node::{Node, NodeContext, load_signing_key};
use crate::policy::{PartnerPolicy, parse_policy};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{
    Envelope, IndicatorDraft, IndicatorKind, Marking, PublishRequest, SubscribeRequest, Tlp,
};
use crate::signing::{INDICATOR_PAYLOAD_TYPE, OrgSigningKey};
use crate::store::{NewIndicator, Store};

mod interop;
mod phases;
mod postgres;
mod primitives;
mod process;

pub use interop::{Import, TaxiiRead};
use interop::{bench_import, bench_taxii};
use phases::*;
use primitives::*;
use process::NodeProcess;

/// Sizes of one run; the defaults finish in a few minutes on 2 cores.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Indicators published through the Publish RPC.
    pub publish: u64,
    /// Publish requests in flight.
    pub in_flight: usize,
    /// Backlog the subscriber catches up on.
    pub backlog: u64,
    /// Publish rate of the latency run (indicators per second).
    pub latency_rate: u64,
    /// Duration of the latency run (seconds).
    pub latency_secs: u64,
    /// Subscribers of the fan-out run.
    pub subscribers: usize,
    /// Indicators published during the fan-out run.
    pub fanout_indicators: u64,
    /// Seconds each primitive is measured for.
    pub primitive_secs: f64,
    /// `federation.batch_size` of the nodes: most envelopes per Subscribe
    /// message.
    pub batch_size: u32,
    /// Indicators a partner reads over TAXII, page by page.
    pub taxii_objects: u64,
    /// Indicators in the STIX bundle `threatmesh import` reads.
    pub import_indicators: u64,
    /// A PostgreSQL server (`postgres://user@host:port`) to keep every
    /// organisation's store in (a database each, made and dropped by the
    /// run); empty: SQLite files.
    pub store: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            publish: 20_000,
            in_flight: 64,
            backlog: 200_000,
            latency_rate: 1_000,
            latency_secs: 10,
            subscribers: 1_000,
            fanout_indicators: 2_000,
            primitive_secs: 2.0,
            batch_size: 1_024,
            taxii_objects: 10_000,
            import_indicators: 1_000_000,
            store: String::new(),
        }
    }
}

/// The machine's limits, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Primitives {
    /// Cores used for the all-core figures.
    pub cores: usize,
    /// The processor, as the kernel names it (`model name` in
    /// /proc/cpuinfo; empty elsewhere): machines of one kind differ.
    pub cpu: String,
    /// Ed25519 signatures per second, one core.
    pub sign_per_s_1core: f64,
    /// Ed25519 signatures per second, all cores.
    pub sign_per_s_all: f64,
    /// Ed25519 verifications per second, one core.
    pub verify_per_s_1core: f64,
    /// Ed25519 verifications per second, all cores.
    pub verify_per_s_all: f64,
    /// Ed25519 signatures verified per second in batches of 64 (as a link
    /// verifies a partner's message), all cores.
    pub verify_batch_per_s_all: f64,
    /// Durable SQLite row inserts per second (batches of 256, WAL, FULL).
    pub sqlite_insert_per_s: f64,
    /// Durable SQLite commits per second of one row each: the latency of
    /// one durable step is its inverse.
    pub sqlite_commit_per_s: f64,
    /// Statements per second handed one after another to one SQLite
    /// connection's thread and answered (`SELECT 1`): the inverse is the
    /// round trip every statement of a write pays.
    pub sqlite_round_trips_per_s: f64,
    /// With `--store postgres://…`: durable PostgreSQL row inserts per
    /// second (batches of 256, `synchronous_commit` as the server has it).
    pub postgres_insert_per_s: Option<f64>,
    /// With `--store postgres://…`: durable PostgreSQL commits per second
    /// of one row each.
    pub postgres_commit_per_s: Option<f64>,
}

impl Primitives {
    /// Each figure the higher of `self` and `other`: the machine's limit
    /// is what it reached when least disturbed.
    pub fn better(&self, other: &Primitives) -> Primitives {
        Primitives {
            cores: self.cores,
            cpu: self.cpu.clone(),
            sign_per_s_1core: self.sign_per_s_1core.max(other.sign_per_s_1core),
            sign_per_s_all: self.sign_per_s_all.max(other.sign_per_s_all),
            verify_per_s_1core: self.verify_per_s_1core.max(other.verify_per_s_1core),
            verify_per_s_all: self.verify_per_s_all.max(other.verify_per_s_all),
            verify_batch_per_s_all: self
                .verify_batch_per_s_all
                .max(other.verify_batch_per_s_all),
            sqlite_insert_per_s: self.sqlite_insert_per_s.max(other.sqlite_insert_per_s),
            sqlite_commit_per_s: self.sqlite_commit_per_s.max(other.sqlite_commit_per_s),
            sqlite_round_trips_per_s: self
                .sqlite_round_trips_per_s
                .max(other.sqlite_round_trips_per_s),
            postgres_insert_per_s: better_of(
                self.postgres_insert_per_s,
                other.postgres_insert_per_s,
            ),
            postgres_commit_per_s: better_of(
                self.postgres_commit_per_s,
                other.postgres_commit_per_s,
            ),
        }
    }
}

fn better_of(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// End-to-end latency figures, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Indicators measured.
    pub samples: usize,
    /// Offered rate (per second).
    pub rate: u64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Worst.
    pub max_ms: f64,
    /// Median of each hop: publish call to A's commit, A's to B's, B's to
    /// C's (where the time goes; the three do not add up to `p50_ms`).
    pub hop_p50_ms: [f64; 3],
    /// CPU time the process (three nodes, the publisher and the watchers)
    /// spent per indicator relayed, in µs: at this rate the path shares
    /// two cores, so a hop's wait grows with it, and it is far less noisy
    /// than the latency.
    pub cpu_us_per_indicator: f64,
    /// Thread switches per indicator relayed (every thread of the process,
    /// voluntary and not): each hand-off to a database thread or the
    /// blocking pool and back is two.
    pub switches_per_indicator: f64,
    /// SQLite commits per indicator relayed, at A, B and C (publishes or
    /// ingests, and release records not folded into one of those).
    pub commits_per_indicator: [f64; 3],
    /// Log syncs per indicator relayed, the three nodes together.
    pub syncs_per_indicator: f64,
}

/// Fan-out figures.
#[derive(Debug, Clone, Serialize)]
pub struct Fanout {
    /// Subscribers (each its own partner org and mTLS connection).
    pub subscribers: usize,
    /// Indicators published while all were subscribed.
    pub indicators: u64,
    /// Deliveries the policies allowed, all received.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_s: f64,
    /// Peak resident memory of the node's process during the fan-out (MB).
    pub peak_rss_mb: f64,
    /// Cores the node's process kept busy during the fan-out.
    pub cpu: CpuUse,
    /// Cores the subscribers (the bench's process) kept busy meanwhile.
    pub clients_cpu: CpuUse,
    /// The node's resident memory before a subscriber that stops reading is
    /// fed (MB).
    pub stalled_rss_before_mb: f64,
    /// The node's resident memory after it was offered as much again (MB).
    pub stalled_rss_after_mb: f64,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where the nodes kept their stores: `sqlite`, or the PostgreSQL
    /// server (password hidden).
    pub store: String,
    /// The machine's limits: for each primitive, the better of its
    /// measurement before the node phases and after them (a neighbour busy
    /// during one of them would otherwise make every ratio look better
    /// than it is).
    pub primitives: Primitives,
    /// The primitives measured before the node phases.
    pub primitives_before: Primitives,
    /// The primitives measured after them.
    pub primitives_after: Primitives,
    /// Publishes per second (validated, signed, durable, acknowledged).
    pub publish_per_s: f64,
    /// Publish rate ÷ one-core sign rate.
    pub publish_ratio: f64,
    /// Cores the node's process kept busy during the publish run.
    pub publish_cpu: CpuUse,
    /// Cores the publishing clients (the bench's process) kept busy.
    pub publish_clients_cpu: CpuUse,
    /// Publishes per second through PublishBatch ([`PUBLISH_BATCH`] drafts
    /// a request, [`BATCHES_IN_FLIGHT`] requests in flight), as `publish
    /// --file` and `import` send them.
    pub publish_batch_per_s: f64,
    /// Batch publish rate ÷ one-core sign rate.
    pub publish_batch_ratio: f64,
    /// Cores the node's process kept busy during the batch publish run.
    pub publish_batch_cpu: CpuUse,
    /// Cores the publishing clients kept busy during it.
    pub publish_batch_clients_cpu: CpuUse,
    /// Backlog indicators a subscriber verified and stored per second.
    pub ingest_per_s: f64,
    /// Ingest rate ÷ all-core verify rate.
    pub ingest_ratio: f64,
    /// Cores busy during the ingest run.
    pub ingest_cpu: CpuUse,
    /// Publish at A → stored at C via B.
    pub latency: Latency,
    /// Many subscribers.
    pub fanout: Fanout,
    /// A partner's paginated TAXII read.
    pub taxii: TaxiiRead,
    /// `threatmesh import` of a STIX bundle.
    pub import: Import,
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Runs every measurement; `progress` gets a line per phase. With a
/// PostgreSQL `store`, the databases the run made are dropped at its end,
/// whether it succeeded or not.
pub async fn run(opts: &BenchOptions, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    let report = run_phases(opts, progress).await;
    if !opts.store.is_empty() {
        postgres::drop_made(&opts.store).await;
    }
    report
}

/// Writes back to disk what earlier phases left dirty in the page cache
/// (their stores' files, gigabytes after a large backlog), so that the
/// syncs of the phase about to start do not queue behind another phase's
/// writes. Best effort: without `sync(1)` the phase runs as it is.
async fn write_back() {
    let _ = tokio::task::spawn_blocking(|| {
        std::process::Command::new("sync")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    })
    .await;
}

async fn run_phases(opts: &BenchOptions, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    crate::identity::install_default_provider();
    let dir = tempfile::tempdir().map_err(err)?;
    progress(if opts.store.is_empty() {
        "primitives: Ed25519 sign/verify on one and all cores, SQLite inserts"
    } else {
        "primitives: Ed25519 sign/verify on one and all cores, SQLite and PostgreSQL inserts"
    });
    let before = primitives(dir.path(), opts).await?;

    progress(&format!(
        "fan-out: {} subscribers, {} indicators",
        opts.subscribers, opts.fanout_indicators
    ));
    write_back().await;
    let fanout = bench_fanout(dir.path(), opts).await?;

    progress(&format!(
        "publish: {} indicators, {} in flight",
        opts.publish, opts.in_flight
    ));
    write_back().await;
    let publish = bench_publish(dir.path(), opts).await?;

    progress(&format!(
        "publish (batch): {} indicators, {PUBLISH_BATCH} a request, {BATCHES_IN_FLIGHT} requests in flight",
        opts.publish
    ));
    write_back().await;
    let batch = bench_publish_batch(dir.path(), opts).await?;

    progress(&format!(
        "ingest: a subscriber catches up on {} indicators",
        opts.backlog
    ));
    write_back().await;
    let (ingest_per_s, ingest_cpu) = bench_ingest(dir.path(), opts).await?;

    progress(&format!(
        "latency: A -> B -> C at {}/s for {} s",
        opts.latency_rate, opts.latency_secs
    ));
    write_back().await;
    let latency = bench_latency(dir.path(), opts).await?;

    progress(&format!(
        "TAXII: a partner reads {} objects, 1,000 per page",
        opts.taxii_objects
    ));
    write_back().await;
    let taxii = bench_taxii(dir.path(), opts).await?;

    progress(&format!(
        "import: `threatmesh import` of a STIX bundle of {} indicators",
        opts.import_indicators
    ));
    let import = bench_import(dir.path(), opts).await?;

    progress("primitives again, after the node phases: each ratio uses the better of the two");
    let again = dir.path().join("after");
    std::fs::create_dir_all(&again).map_err(err)?;
    let after = primitives(&again, opts).await?;
    let primitives = before.better(&after);

    Ok(Report {
        store: if opts.store.is_empty() {
            "sqlite".into()
        } else {
            crate::store::redact_url(&opts.store)
        },
        primitives_before: before,
        primitives_after: after,
        publish_ratio: publish.per_s / primitives.sign_per_s_1core,
        publish_batch_ratio: batch.per_s / primitives.sign_per_s_1core,
        publish_batch_per_s: batch.per_s,
        publish_batch_cpu: batch.node_cpu,
        publish_batch_clients_cpu: batch.clients_cpu,
        ingest_ratio: ingest_per_s / primitives.verify_per_s_all,
        primitives,
        publish_per_s: publish.per_s,
        publish_cpu: publish.node_cpu,
        publish_clients_cpu: publish.clients_cpu,
        ingest_per_s,
        ingest_cpu,
        latency,
        fanout,
        taxii,
        import,
    })
}

/// A signed indicator of `key`'s org "a.bench", the i-th of its kind.
fn sample_envelope(key: &OrgSigningKey, i: u64) -> Envelope {
    let row = own_row(
        &OrgId::parse("a.bench").expect("valid"),
        key,
        draft(i, Tlp::Clear, 70),
    );
    Envelope::decode(row.envelope.as_slice()).expect("just encoded")
}

/// The i-th distinct IPv4 draft with `tlp` and `confidence`.
fn draft(i: u64, tlp: Tlp, confidence: u32) -> IndicatorDraft {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i as u32));
    IndicatorDraft {
        kind: IndicatorKind::Ipv4 as i32,
        value: ip.to_string(),
        marking: Some(Marking {
            tlp: tlp as i32,
            may_forward: true,
            hop_limit: 2,
            ..Default::default()
        }),
        confidence,
        tags: vec!["bench".into()],
        ..Default::default()
    }
}

/// A row as `own` publishes it: validated, signed, ready to store.
fn own_row(own: &OrgId, key: &OrgSigningKey, d: IndicatorDraft) -> NewIndicator {
    let now = crate::clock::wall_ms();
    let d = prepare_draft(&d, now).expect("bench drafts are valid");
    let ind = assemble(
        own,
        key.key_id(),
        Identity {
            id: uuid::Uuid::new_v4().to_string(),
            version: 1,
            created_unix_ms: now,
        },
        now,
        d,
    );
    crate::exchange::seal(key, ind)
}

/// The settings a bench node runs with besides its `init` config, as the
/// environment variables a `threatmesh serve` of it is given: fast link
/// timings, the run's batch size, and room for every bench client dialling
/// from 127.0.0.1 (up to 1,000 at once).
fn tuning(opts: &BenchOptions) -> HashMap<String, String> {
    [
        ("FEDERATION__PEER_REFRESH_MS", "200".to_string()),
        ("FEDERATION__RECONNECT_MIN_MS", "50".to_string()),
        ("FEDERATION__RECONNECT_MAX_MS", "500".to_string()),
        ("FEDERATION__BATCH_SIZE", opts.batch_size.to_string()),
        ("NODE__MAX_UNVERIFIED_PER_ADDRESS", "8192".to_string()),
        ("NODE__MAX_UNVERIFIED", "8192".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("THREATMESH__{k}"), v))
    .collect()
}

/// An organisation made with `init` under `dir`, with [`tuning`];
/// its store in a new PostgreSQL database when the run keeps stores there.
async fn make_org(
    dir: &std::path::Path,
    name: &str,
    opts: &BenchOptions,
) -> Result<Settings, BenchError> {
    let store_url = if opts.store.is_empty() {
        None
    } else {
        Some(postgres::make_database(&opts.store).await?)
    };
    let report = crate::provision::provision_org(&crate::provision::OrgOptions {
        listen: Some("127.0.0.1:0".into()),
        store_url,
        ..crate::provision::OrgOptions::new(name, dir.join(name))
    })
    .map_err(err)?;
    let settings = Settings::load_with_env(&report.config, Some(tuning(opts))).map_err(err)?;
    // Created here, as `init` does: `serve` refuses a store that is missing.
    Store::open(&settings.store, crate::clock::Clock::system())
        .await
        .map_err(err)?
        .close()
        .await;
    Ok(settings)
}

const OPEN: &str = "name = \"bench-open\"\n[egress]\ntlp_ceiling = \"AMBER\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n";

/// Registers `partner`'s card at `org` (store not yet opened by a node).
async fn link(
    org: &Settings,
    partner: &Settings,
    dial: Option<SocketAddr>,
    policy: &str,
) -> Result<(), BenchError> {
    let store = Store::open(&org.store, crate::clock::Clock::system())
        .await
        .map_err(err)?;
    let name = parse_policy(policy).map_err(err)?.name;
    store
        .apply_policy(&name, policy, "bench")
        .await
        .map_err(err)?;
    let ca = std::fs::read_to_string(&partner.tls.ca_cert).map_err(err)?;
    let card = crate::node::own_card(
        partner,
        &load_signing_key(partner).map_err(err)?,
        &ca,
        crate::clock::wall_ms(),
    );
    let ep = dial.map(|a| a.to_string()).unwrap_or_default();
    crate::admin::register_peer(
        &org.org_id(),
        &store,
        &card,
        Some(&ep),
        Some(&name),
        true,
        "bench",
    )
    .await
    .map_err(err)?;
    store.close().await;
    Ok(())
}

/// A node running in this process.
struct Running {
    addr: SocketAddr,
    ctx: Arc<NodeContext>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), crate::node::NodeError>>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn start(settings: &Settings, listener: TcpListener) -> Result<Running, BenchError> {
    start_with(settings, listener, None).await
}

/// [`start`], serving TAXII on `taxii` too when given.
async fn start_with(
    settings: &Settings,
    listener: TcpListener,
    taxii: Option<TcpListener>,
) -> Result<Running, BenchError> {
    let addr = listener.local_addr().map_err(err)?;
    let mut node = Node::open(settings.clone()).await.map_err(err)?;
    if let Some(t) = taxii {
        node = node.with_taxii(t);
    }
    let ctx = node.context();
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(node.serve(listener, async move {
        let _ = rx.await;
    }));
    Ok(Running {
        addr,
        ctx,
        stop,
        task,
    })
}

async fn listener() -> Result<TcpListener, BenchError> {
    TcpListener::bind("127.0.0.1:0").await.map_err(err)
}

/// A channel to `node` of `org` presenting `cert`.
fn channel(
    org: &OrgId,
    ca_pem: &str,
    addr: SocketAddr,
    cert: &CertifiedKey,
) -> Result<Channel, BenchError> {
    let trust = Arc::new(ArcSwap::from_pointee(
        TrustStore::new(org.clone(), ca_pem).map_err(err)?,
    ));
    let tls = client_config(trust, SpiffeId::node(org), Some(cert)).map_err(err)?;
    crate::net::mtls_channel(&addr.to_string(), org.as_str(), tls).map_err(err)
}

fn publisher(s: &Settings, addr: SocketAddr) -> Result<ExchangeClient<Channel>, BenchError> {
    let ca = std::fs::read_to_string(&s.tls.ca_cert).map_err(err)?;
    let cert =
        CertifiedKey::load(&s.client.publisher_cert, &s.client.publisher_key).map_err(err)?;
    Ok(ExchangeClient::new(channel(&s.org_id(), &ca, addr, &cert)?))
}

/// Prints a report for people.
pub fn render(r: &Report) -> String {
    let p = &r.primitives;
    let l = &r.latency;
    let f = &r.fanout;
    let mut s = String::new();
    use std::fmt::Write;
    let (b, a) = (&r.primitives_before, &r.primitives_after);
    let _ = writeln!(
        s,
        "machine ({} cores{}; the better of before/after the node phases)",
        p.cores,
        if p.cpu.is_empty() {
            String::new()
        } else {
            format!(", {}", p.cpu)
        }
    );
    let _ = writeln!(
        s,
        "  Ed25519 sign       {:>10.0}/s one core   {:>10.0}/s all cores   (before {:.0}/{:.0}, after {:.0}/{:.0})",
        p.sign_per_s_1core,
        p.sign_per_s_all,
        b.sign_per_s_1core,
        b.sign_per_s_all,
        a.sign_per_s_1core,
        a.sign_per_s_all
    );
    let _ = writeln!(
        s,
        "  Ed25519 verify     {:>10.0}/s one core   {:>10.0}/s all cores   (before {:.0}/{:.0}, after {:.0}/{:.0})",
        p.verify_per_s_1core,
        p.verify_per_s_all,
        b.verify_per_s_1core,
        b.verify_per_s_all,
        a.verify_per_s_1core,
        a.verify_per_s_all
    );
    let _ = writeln!(
        s,
        "  Ed25519 batch verify{:>9.0}/s all cores, 64 a batch (before {:.0}, after {:.0})",
        p.verify_batch_per_s_all, b.verify_batch_per_s_all, a.verify_batch_per_s_all
    );
    let _ = writeln!(
        s,
        "  SQLite insert      {:>10.0}/s (WAL, synchronous=FULL, 256 per transaction)",
        p.sqlite_insert_per_s
    );
    let _ = writeln!(
        s,
        "  SQLite commit      {:>10.0}/s (one row each: {:.2} ms per durable step)",
        p.sqlite_commit_per_s,
        1e3 / p.sqlite_commit_per_s
    );
    let _ = writeln!(
        s,
        "  SQLite round trip  {:>10.0}/s (one statement to the connection's thread and back: {:.0} µs; before {:.0}, after {:.0})",
        p.sqlite_round_trips_per_s,
        1e6 / p.sqlite_round_trips_per_s,
        b.sqlite_round_trips_per_s,
        a.sqlite_round_trips_per_s
    );
    if let (Some(ins), Some(com)) = (p.postgres_insert_per_s, p.postgres_commit_per_s) {
        let _ = writeln!(
            s,
            "  PostgreSQL insert  {ins:>10.0}/s (256 per transaction)\n  PostgreSQL commit  {com:>10.0}/s (one row each: {:.2} ms per durable step)",
            1e3 / com
        );
    }
    let _ = writeln!(
        s,
        "node, store {} (cores busy, user + system, of {} cores: the node's; the clients' where the node ran in its own process)",
        r.store, p.cores
    );
    for (label, rate, ratio, of, cpu, clients) in [
        (
            "publish    ",
            r.publish_per_s,
            r.publish_ratio,
            "one-core sign   (target >= 30 %)",
            &r.publish_cpu,
            Some(&r.publish_clients_cpu),
        ),
        (
            "publish batch",
            r.publish_batch_per_s,
            r.publish_batch_ratio,
            "one-core sign   (target >= 60 %)",
            &r.publish_batch_cpu,
            Some(&r.publish_batch_clients_cpu),
        ),
        (
            "peer ingest",
            r.ingest_per_s,
            r.ingest_ratio,
            "all-core verify (target >= 70 %)",
            &r.ingest_cpu,
            None,
        ),
    ] {
        let _ = write!(
            s,
            "  {label:<13}      {rate:>10.0}/s   = {:>5.1} % of {of}  cores {}",
            ratio * 100.0,
            busy(cpu),
        );
        let _ = match clients {
            Some(c) => writeln!(s, ", clients {}", busy(c)),
            None => writeln!(s, " (both nodes, one process)"),
        };
    }
    let _ = writeln!(
        s,
        "  latency A>B>C      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms at {}/s, {} samples (target p50 <= 4 ms, p99 <= 10 ms)",
        l.p50_ms, l.p99_ms, l.max_ms, l.rate, l.samples
    );
    let _ = writeln!(
        s,
        "                     by hop, p50: publish > A {:.2} ms, A > B {:.2} ms, B > C {:.2} ms",
        l.hop_p50_ms[0], l.hop_p50_ms[1], l.hop_p50_ms[2]
    );
    let _ = writeln!(
        s,
        "                     work per indicator (the whole process): {:.0} µs of CPU, {:.1} thread switches, commits {:.2} at A, {:.2} at B, {:.2} at C, {:.2} syncs",
        l.cpu_us_per_indicator,
        l.switches_per_indicator,
        l.commits_per_indicator[0],
        l.commits_per_indicator[1],
        l.commits_per_indicator[2],
        l.syncs_per_indicator
    );
    let _ = writeln!(
        s,
        "  fan-out            {:>10.0} deliveries/s to {} subscribers ({} deliveries; target >= 150,000/s)  cores {}, clients {}",
        f.deliveries_per_s,
        f.subscribers,
        f.deliveries,
        busy(&f.cpu),
        busy(&f.clients_cpu)
    );
    let _ = writeln!(
        s,
        "  node peak RSS      {:>10.1} MB in fan-out (its own process; target <= 256 MB)",
        f.peak_rss_mb
    );
    let _ = writeln!(
        s,
        "  stalled subscriber node RSS {:.1} MB before, {:.1} MB after {} more indicators",
        f.stalled_rss_before_mb, f.stalled_rss_after_mb, f.indicators
    );
    let _ = writeln!(
        s,
        "  TAXII read         {:>10.0} objects/s ({} objects, {} pages of 1,000, a partner's view; target >= 20,000/s)",
        r.taxii.objects_per_s, r.taxii.objects, r.taxii.pages
    );
    let _ = writeln!(
        s,
        "  STIX import        {:>10.1} s for {} indicators ({:.0}/s), peak RSS {:.1} MB (targets <= 60 s for 1,000,000, <= 200 MB)",
        r.import.seconds, r.import.indicators, r.import.per_s, r.import.peak_rss_mb
    );
    s
}

/// "user% + system%" of a [`CpuUse`].
fn busy(c: &CpuUse) -> String {
    format!("{:.0}% + {:.0}%", c.user * 100.0, c.system * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{KeyDirectory, KnownKey};

    #[test]
    fn bench_indicators_are_valid_signed_indicators() {
        let (key, _) = OrgSigningKey::generate().unwrap();
        let org = OrgId::parse("a.bench").unwrap();
        let mut keys = KeyDirectory::default();
        keys.insert(KnownKey::unbounded(
            org.clone(),
            key.key_id().into(),
            key.public_key().to_vec(),
        ))
        .unwrap();
        for i in [0, 1, 2, 99_999] {
            let env = sample_envelope(&key, i);
            let ind = crate::signing::open_indicator(&env, &keys).unwrap();
            crate::model::validate_indicator(&ind, crate::clock::wall_ms()).unwrap();
        }
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 3.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
