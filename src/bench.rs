//! `threatmesh bench`: one command that measures, in one run on this
//! machine, the primitives that bound ThreatMesh (Ed25519 sign and verify
//! on one core and all cores, durable SQLite inserts) and the node itself
//! over real mutual TLS on loopback with `synchronous=FULL`: publish
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

use crate::cli::init::{InitArgs, init_org};
use crate::config::Settings;
use crate::exchange::{Identity, assemble};
use crate::identity::{
    CertifiedKey, SpiffeId, TrustStore, client_config, generate_ca, issue, seal_card,
};
use crate::model::{OrgId, now_unix_ms, prepare_draft};
use crate::node::{Node, NodeContext, load_signing_key};
use crate::policy::{PartnerPolicy, parse_policy};
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{
    Envelope, IndicatorDraft, IndicatorKind, Marking, PublishRequest, SubscribeRequest, Tlp,
};
use crate::signing::{INDICATOR_PAYLOAD_TYPE, OrgSigningKey};
use crate::store::{NewIndicator, Store};

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
            batch_size: 256,
        }
    }
}

/// The machine's limits, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Primitives {
    /// Cores used for the all-core figures.
    pub cores: usize,
    /// Ed25519 signatures per second, one core.
    pub sign_per_s_1core: f64,
    /// Ed25519 signatures per second, all cores.
    pub sign_per_s_all: f64,
    /// Ed25519 verifications per second, one core.
    pub verify_per_s_1core: f64,
    /// Ed25519 verifications per second, all cores.
    pub verify_per_s_all: f64,
    /// Durable SQLite row inserts per second (batches of 256, WAL, FULL).
    pub sqlite_insert_per_s: f64,
    /// Durable SQLite commits per second of one row each: the latency of
    /// one durable step is its inverse.
    pub sqlite_commit_per_s: f64,
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
    /// Peak resident memory of the process during the fan-out (MB).
    pub peak_rss_mb: f64,
    /// Cores busy during the fan-out.
    pub cpu: CpuUse,
    /// Resident memory before a subscriber that stops reading is fed (MB).
    pub stalled_rss_before_mb: f64,
    /// Resident memory after it was offered as much again (MB).
    pub stalled_rss_after_mb: f64,
}

/// One run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The machine's limits.
    pub primitives: Primitives,
    /// Publishes per second (validated, signed, durable, acknowledged).
    pub publish_per_s: f64,
    /// Publish rate ÷ one-core sign rate.
    pub publish_ratio: f64,
    /// Cores busy during the publish run.
    pub publish_cpu: CpuUse,
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
}

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
#[error("bench: {0}")]
pub struct BenchError(String);

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError(e.to_string())
}

/// Runs every measurement; `progress` gets a line per phase.
pub async fn run(opts: &BenchOptions, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    crate::identity::install_default_provider();
    let dir = tempfile::tempdir().map_err(err)?;
    progress("primitives: Ed25519 sign/verify on one and all cores, SQLite inserts");
    let primitives = primitives(dir.path(), opts.primitive_secs).await?;

    progress(&format!(
        "fan-out: {} subscribers, {} indicators",
        opts.subscribers, opts.fanout_indicators
    ));
    let fanout = bench_fanout(dir.path(), opts).await?;

    progress(&format!(
        "publish: {} indicators, {} in flight",
        opts.publish, opts.in_flight
    ));
    let (publish_per_s, publish_cpu) = bench_publish(dir.path(), opts).await?;

    progress(&format!(
        "ingest: a subscriber catches up on {} indicators",
        opts.backlog
    ));
    let (ingest_per_s, ingest_cpu) = bench_ingest(dir.path(), opts).await?;

    progress(&format!(
        "latency: A -> B -> C at {}/s for {} s",
        opts.latency_rate, opts.latency_secs
    ));
    let latency = bench_latency(dir.path(), opts).await?;

    Ok(Report {
        publish_ratio: publish_per_s / primitives.sign_per_s_1core,
        ingest_ratio: ingest_per_s / primitives.verify_per_s_all,
        primitives,
        publish_per_s,
        publish_cpu,
        ingest_per_s,
        ingest_cpu,
        latency,
        fanout,
    })
}

/// Operations per second of `op` on `threads` threads for about `secs`.
fn rate_on_threads(threads: usize, secs: f64, op: impl Fn() + Sync) -> f64 {
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while start.elapsed().as_secs_f64() < secs {
                        for _ in 0..64 {
                            op();
                        }
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    total as f64 / start.elapsed().as_secs_f64()
}

async fn primitives(dir: &std::path::Path, secs: f64) -> Result<Primitives, BenchError> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (key, _) = OrgSigningKey::generate().map_err(err)?;
    // A realistic payload: one signed indicator envelope.
    let env = sample_envelope(&key, 0);
    let payload = env.payload.clone();
    let sign = || {
        std::hint::black_box(key.seal(INDICATOR_PAYLOAD_TYPE, payload.clone()));
    };
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ED25519,
        key.public_key().to_vec(),
    );
    let pae = crate::signing::pae(INDICATOR_PAYLOAD_TYPE, &env.payload);
    let sig = env.signatures[0].sig.clone();
    let verify = || {
        std::hint::black_box(public.verify(&pae, &sig).is_ok());
    };
    let (s1, sa, v1, va) = tokio::task::block_in_place(|| {
        (
            rate_on_threads(1, secs, sign),
            rate_on_threads(cores, secs, sign),
            rate_on_threads(1, secs, verify),
            rate_on_threads(cores, secs, verify),
        )
    });
    let sqlite = crate::store::sqlite_insert_rate(&dir.join("primitive.db"), 256, 400, secs)
        .await
        .map_err(err)?;
    let commits = crate::store::sqlite_insert_rate(&dir.join("commit.db"), 1, 400, secs)
        .await
        .map_err(err)?;
    Ok(Primitives {
        cores,
        sign_per_s_1core: s1,
        sign_per_s_all: sa,
        verify_per_s_1core: v1,
        verify_per_s_all: va,
        sqlite_insert_per_s: sqlite,
        sqlite_commit_per_s: commits,
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
    let now = now_unix_ms();
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
    let envelope = key
        .seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
        .encode_to_vec();
    NewIndicator {
        indicator: ind,
        envelope,
        rule: "published-here",
        path: Vec::new(),
        upstream_seq: 0,
    }
}

/// An organisation made with `init` under `dir`, with fast link timings.
fn make_org(dir: &std::path::Path, name: &str, batch_size: u32) -> Result<Settings, BenchError> {
    let report = init_org(&InitArgs {
        org: name.into(),
        dir: dir.join(name),
        endpoint: None,
        listen: "127.0.0.1:0".into(),
        display_name: None,
        country: String::new(),
        sector: String::new(),
        admin_name: "admin".into(),
        publisher_name: "publisher".into(),
        force: false,
    })
    .map_err(err)?;
    let mut s = Settings::load(&report.config).map_err(err)?;
    s.federation.peer_refresh_ms = 200;
    s.federation.reconnect_min_ms = 50;
    s.federation.reconnect_max_ms = 500;
    s.federation.batch_size = batch_size;
    Ok(s)
}

const OPEN: &str = "name = \"bench-open\"\n[egress]\ntlp_ceiling = \"AMBER\"\ncommunity = true\norigins = \"any\"\n[ingress]\naccept_relayed = true\n";

/// Registers `partner`'s card at `org` (store not yet opened by a node).
async fn link(
    org: &Settings,
    partner: &Settings,
    dial: Option<SocketAddr>,
    policy: &str,
) -> Result<(), BenchError> {
    let store = Store::open_sqlite(&org.store.path).await.map_err(err)?;
    let name = parse_policy(policy).map_err(err)?.name;
    store
        .apply_policy(&name, policy, "bench")
        .await
        .map_err(err)?;
    let ca = std::fs::read_to_string(&partner.tls.ca_cert).map_err(err)?;
    let card = crate::node::own_card(partner, &load_signing_key(partner).map_err(err)?, &ca);
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
    let addr = listener.local_addr().map_err(err)?;
    let node = Node::open(settings.clone()).await.map_err(err)?;
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

async fn bench_publish(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<(f64, CpuUse), BenchError> {
    let a = make_org(&dir.join("publish"), "a.bench", opts.batch_size)?;
    let node = start(&a, listener().await?).await?;
    let client = publisher(&a, node.addr)?;
    // Warm the connection.
    client
        .clone()
        .publish(PublishRequest {
            indicator: Some(draft(u64::MAX >> 40, Tlp::Clear, 70)),
        })
        .await
        .map_err(err)?;
    let start_at = Instant::now();
    let cpu0 = cpu_seconds();
    let results: Vec<Result<(), tonic::Status>> = futures_util::stream::iter(0..opts.publish)
        .map(|i| {
            let mut c = client.clone();
            async move {
                c.publish(PublishRequest {
                    indicator: Some(draft(i, Tlp::Clear, 70)),
                })
                .await
                .map(drop)
            }
        })
        .buffer_unordered(opts.in_flight)
        .collect()
        .await;
    let elapsed = start_at.elapsed().as_secs_f64();
    let cpu = busy_since(cpu0, elapsed, cores());
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(err(format!("publish failed: {e}")));
    }
    node.stop().await;
    Ok((opts.publish as f64 / elapsed, cpu))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Fills `settings`' store with `n` indicators of its org, signed on all
/// cores, in transactions of 2,000.
async fn prefill(
    settings: &Settings,
    n: u64,
    tlp_of: impl Fn(u64) -> (Tlp, u32) + Sync,
) -> Result<(), BenchError> {
    let store = Store::open_sqlite(&settings.store.path)
        .await
        .map_err(err)?;
    let key = Arc::new(load_signing_key(settings).map_err(err)?);
    let own = settings.org_id();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    let chunk = 2_000u64;
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        let per = (end - i).div_ceil(cores);
        let rows: Vec<NewIndicator> = tokio::task::block_in_place(|| {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..cores)
                    .map(|t| {
                        let (key, own, tlp_of) = (&key, &own, &tlp_of);
                        s.spawn(move || {
                            let lo = i + t * per;
                            let hi = (lo + per).min(end);
                            (lo..hi)
                                .map(|j| {
                                    let (tlp, conf) = tlp_of(j);
                                    own_row(own, key, draft(j, tlp, conf))
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        });
        store
            .append_local_batch(&rows, "bench")
            .await
            .map_err(err)?;
        i = end;
    }
    store.close().await;
    Ok(())
}

async fn bench_ingest(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<(f64, CpuUse), BenchError> {
    let base = dir.join("ingest");
    let a = make_org(&base, "a.bench", opts.batch_size)?;
    let b = make_org(&base, "b.bench", opts.batch_size)?;
    prefill(&a, opts.backlog, |_| (Tlp::Clear, 70)).await?;
    let la = listener().await?;
    let a_addr = la.local_addr().map_err(err)?;
    link(&a, &b, None, OPEN).await?;
    link(&b, &a, Some(a_addr), OPEN).await?;
    let node_a = start(&a, la).await?;
    let latest = node_a.ctx.store.latest_seq().await.map_err(err)?;
    let start_at = Instant::now();
    let cpu0 = cpu_seconds();
    let node_b = start(&b, listener().await?).await?;
    let a_id = a.org_id();
    loop {
        if node_b.ctx.store.cursor(&a_id).await.map_err(err)? >= latest {
            break;
        }
        if start_at.elapsed() > Duration::from_secs(1_800) {
            return Err(err("ingest did not finish within 30 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    let cpu = busy_since(cpu0, elapsed, cores());
    let stored = node_b.ctx.store.count_indicators().await.map_err(err)?;
    node_b.stop().await;
    node_a.stop().await;
    if stored != opts.backlog {
        return Err(err(format!(
            "ingest stored {stored} of {} indicators",
            opts.backlog
        )));
    }
    Ok((opts.backlog as f64 / elapsed, cpu))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn bench_latency(dir: &std::path::Path, opts: &BenchOptions) -> Result<Latency, BenchError> {
    let base = dir.join("latency");
    let a = make_org(&base, "a.bench", opts.batch_size)?;
    let b = make_org(&base, "b.bench", opts.batch_size)?;
    let c = make_org(&base, "c.bench", opts.batch_size)?;
    let (la, lb, lc) = (listener().await?, listener().await?, listener().await?);
    let (a_addr, b_addr) = (la.local_addr().map_err(err)?, lb.local_addr().map_err(err)?);
    link(&a, &b, None, OPEN).await?;
    link(&b, &a, Some(a_addr), OPEN).await?;
    link(&b, &c, None, OPEN).await?;
    link(&c, &b, Some(b_addr), OPEN).await?;
    let node_a = start(&a, la).await?;
    let node_b = start(&b, lb).await?;
    let node_c = start(&c, lc).await?;

    // Arrival times at C, by indicator value, recorded as rows land.
    let arrivals: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let watcher = {
        let store = node_c.ctx.store.clone();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let mut latest = store.watch_latest();
            let mut cursor = 0;
            loop {
                if latest.changed().await.is_err() {
                    return;
                }
                let Ok(rows) = store.read_after(cursor, 4096).await else {
                    return;
                };
                let now = Instant::now();
                let mut map = arrivals.lock().expect("not poisoned");
                for r in rows {
                    cursor = r.seq;
                    if let Ok(ind) = crate::exchange::decode_stored(&r.envelope) {
                        map.insert(ind.value, now);
                    }
                }
            }
        })
    };
    let client = publisher(&a, node_a.addr)?;
    // Warm up the path end to end.
    client
        .clone()
        .publish(PublishRequest {
            indicator: Some(draft(u64::MAX >> 40, Tlp::Clear, 70)),
        })
        .await
        .map_err(err)?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = opts.latency_rate * opts.latency_secs;
    let interval = Duration::from_secs_f64(1.0 / opts.latency_rate as f64);
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        ticker.tick().await;
        let d = draft(i, Tlp::Clear, 70);
        let value = prepare_draft(&d, now_unix_ms()).map_err(err)?.value;
        sent.lock()
            .expect("not poisoned")
            .insert(value, Instant::now());
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.publish(PublishRequest { indicator: Some(d) })
                .await
                .map(drop)
        }));
    }
    for t in tasks {
        t.await.map_err(err)?.map_err(err)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = {
            let got = arrivals.lock().expect("not poisoned");
            sent.lock()
                .expect("not poisoned")
                .keys()
                .all(|v| got.contains_key(v))
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            return Err(err("not every indicator reached C within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watcher.abort();
    let got = arrivals.lock().expect("not poisoned").clone();
    let mut ms: Vec<f64> = sent
        .lock()
        .expect("not poisoned")
        .iter()
        .filter_map(|(v, t0)| {
            got.get(v)
                .map(|t1| t1.duration_since(*t0).as_secs_f64() * 1e3)
        })
        .collect();
    ms.sort_by(|x, y| x.total_cmp(y));
    node_c.stop().await;
    node_b.stop().await;
    node_a.stop().await;
    Ok(Latency {
        samples: ms.len(),
        rate: opts.latency_rate,
        p50_ms: percentile(&ms, 0.50),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    })
}

/// CPU seconds this process has used so far, (user, system), from
/// /proc/self/stat (Linux, 100 ticks a second; zeros elsewhere).
fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    (tick(11), tick(12))
}

/// How busy the machine's cores were (user and system) between `before`
/// and now over `wall` seconds, as fractions of all cores.
fn busy_since(before: (f64, f64), wall: f64, cores: usize) -> CpuUse {
    let now = cpu_seconds();
    let denom = (wall * cores as f64).max(1e-9);
    CpuUse {
        user: (now.0 - before.0) / denom,
        system: (now.1 - before.1) / denom,
    }
}

/// Share of all cores used during a phase.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct CpuUse {
    /// In user space.
    pub user: f64,
    /// In the kernel.
    pub system: f64,
}

/// Resident memory now and at its peak, in MB (Linux; 0 elsewhere).
fn rss_mb() -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0.0, 0.0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The policies subscribers are bound to, in rotation.
const FANOUT_POLICIES: [&str; 4] = [
    "name = \"clear-only\"\n[egress]\ntlp_ceiling = \"CLEAR\"\n",
    "name = \"green-community\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n",
    "name = \"amber-ipv4\"\n[egress]\ntlp_ceiling = \"AMBER\"\ncommunity = true\nkinds = [\"ipv4\"]\n",
    "name = \"confident\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\nmin_confidence = 80\n",
];

/// The marking and confidence of the i-th fan-out indicator.
fn fanout_mix(i: u64) -> (Tlp, u32) {
    let tlp = match i % 3 {
        0 => Tlp::Clear,
        1 => Tlp::Green,
        _ => Tlp::Amber,
    };
    (tlp, if i.is_multiple_of(2) { 90 } else { 50 })
}

/// A subscriber org: CA, node certificate and card, made in memory.
struct SubscriberOrg {
    cert: CertifiedKey,
    card: Envelope,
}

fn subscriber_org(i: usize) -> Result<SubscriberOrg, BenchError> {
    let id = OrgId::parse(&format!("s{i}.bench")).map_err(err)?;
    let ca = generate_ca(&id, 30).map_err(err)?;
    let node = issue(&ca.cert_pem, &ca.key_pem, &SpiffeId::node(&id), 30).map_err(err)?;
    let cert = CertifiedKey::from_pem(&node.cert_pem, &node.key_pem).map_err(err)?;
    let (key, _) = OrgSigningKey::generate().map_err(err)?;
    let card = seal_card(
        &crate::identity::CardInfo {
            org: id.clone(),
            display_name: format!("subscriber {i}"),
            country: String::new(),
            sector: String::new(),
            ca_bundle_pem: ca.cert_pem,
            endpoints: Vec::new(),
        },
        &key,
        now_unix_ms(),
    );
    Ok(SubscriberOrg { cert, card })
}

/// Resets the kernel's peak-RSS mark, so the fan-out peak is its own and
/// not the earlier phases' (Linux; elsewhere a no-op).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

async fn bench_fanout(dir: &std::path::Path, opts: &BenchOptions) -> Result<Fanout, BenchError> {
    reset_peak_rss();
    let base = dir.join("fanout");
    let a = make_org(&base, "a.bench", opts.batch_size)?;
    let subs: Vec<SubscriberOrg> = (0..opts.subscribers)
        .map(subscriber_org)
        .collect::<Result<_, _>>()?;
    let stalled = subscriber_org(opts.subscribers)?;
    // Register every subscriber at A with its policy.
    let policies: Vec<PartnerPolicy> = FANOUT_POLICIES
        .iter()
        .map(|p| parse_policy(p).map_err(err))
        .collect::<Result<_, _>>()?;
    {
        let store = Store::open_sqlite(&a.store.path).await.map_err(err)?;
        for p in FANOUT_POLICIES {
            let name = parse_policy(p).map_err(err)?.name;
            store.apply_policy(&name, p, "bench").await.map_err(err)?;
        }
        for (i, s) in subs.iter().chain(std::iter::once(&stalled)).enumerate() {
            let name = &policies[i % policies.len()].name;
            crate::admin::register_peer(
                &a.org_id(),
                &store,
                &s.card,
                Some(""),
                Some(name),
                false,
                "bench",
            )
            .await
            .map_err(err)?;
        }
        store.close().await;
    }
    let node = start(&a, listener().await?).await?;
    let ca = std::fs::read_to_string(&a.tls.ca_cert).map_err(err)?;
    let own = a.org_id();

    // The indicators to come, signed now (outside the timed part), and what
    // each policy lets through of them.
    let now = now_unix_ms();
    let key = load_signing_key(&a).map_err(err)?;
    let fan_rows: Vec<NewIndicator> = (0..opts.fanout_indicators)
        .map(|i| {
            let (tlp, conf) = fanout_mix(i);
            own_row(&own, &key, draft(i, tlp, conf))
        })
        .collect();
    let anyone = OrgId::parse("x.bench").map_err(err)?;
    let expected_per_policy: Vec<u64> = policies
        .iter()
        .map(|p| {
            fan_rows
                .iter()
                .filter(|row| {
                    crate::policy::egress(&own, &row.indicator, 0, &anyone, Some(p), now).is_allow()
                })
                .count() as u64
        })
        .collect();

    // Everyone subscribes from the current end of A's log.
    let from = node.ctx.store.latest_seq().await.map_err(err)?;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<u64>(opts.subscribers);
    let ready = Arc::new(tokio::sync::Barrier::new(opts.subscribers + 1));
    for (i, s) in subs.iter().enumerate() {
        let ch = channel(&own, &ca, node.addr, &s.cert)?;
        let want = expected_per_policy[i % policies.len()];
        let (done_tx, ready) = (done_tx.clone(), ready.clone());
        tokio::spawn(async move {
            let mut client = ExchangeClient::new(ch);
            let stream = client
                .subscribe(SubscribeRequest { from_cursor: from })
                .await;
            ready.wait().await;
            let Ok(stream) = stream else {
                return;
            };
            let mut stream = stream.into_inner();
            let mut got = 0u64;
            while got < want {
                match stream.message().await {
                    Ok(Some(m)) => got += m.deliveries.len() as u64,
                    _ => return,
                }
            }
            let _ = done_tx.send(got).await;
        });
    }
    drop(done_tx);
    ready.wait().await;

    let start_at = Instant::now();
    let cpu0 = cpu_seconds();
    {
        let store = node.ctx.store.clone();
        for chunk in fan_rows.chunks(200) {
            store
                .append_local_batch(chunk, "bench")
                .await
                .map_err(err)?;
        }
    }
    let mut deliveries = 0u64;
    let mut finished = 0usize;
    while finished < opts.subscribers {
        match tokio::time::timeout(Duration::from_secs(300), done_rx.recv()).await {
            Ok(Some(n)) => {
                deliveries += n;
                finished += 1;
            }
            Ok(None) => break,
            Err(_) => return Err(err("fan-out did not finish within 5 minutes")),
        }
    }
    let elapsed = start_at.elapsed().as_secs_f64();
    let cpu = busy_since(cpu0, elapsed, cores());
    if finished < opts.subscribers {
        return Err(err(format!(
            "only {finished} of {} subscribers received their share",
            opts.subscribers
        )));
    }
    let (_, peak) = rss_mb();

    // A subscriber that stops reading: offered as much again, it must cost
    // a cursor, not memory.
    let ch = channel(&own, &ca, node.addr, &stalled.cert)?;
    let mut client = ExchangeClient::new(ch);
    let from = node.ctx.store.latest_seq().await.map_err(err)?;
    let held = client
        .subscribe(SubscribeRequest { from_cursor: from })
        .await
        .map_err(err)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = rss_mb();
    {
        let store = node.ctx.store.clone();
        let key = Arc::new(load_signing_key(&a).map_err(err)?);
        let mut i = 0;
        while i < opts.fanout_indicators {
            let end = (i + 200).min(opts.fanout_indicators);
            let rows: Vec<NewIndicator> = (i..end)
                .map(|j| own_row(&own, &key, draft(1_000_000 + j, Tlp::Clear, 90)))
                .collect();
            store
                .append_local_batch(&rows, "bench")
                .await
                .map_err(err)?;
            i = end;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = rss_mb();
    drop(held);
    node.stop().await;
    Ok(Fanout {
        subscribers: opts.subscribers,
        indicators: opts.fanout_indicators,
        deliveries,
        deliveries_per_s: deliveries as f64 / elapsed,
        peak_rss_mb: peak,
        cpu,
        stalled_rss_before_mb: before,
        stalled_rss_after_mb: after,
    })
}

/// Prints a report for people.
pub fn render(r: &Report) -> String {
    let p = &r.primitives;
    let l = &r.latency;
    let f = &r.fanout;
    let mut s = String::new();
    use std::fmt::Write;
    let _ = writeln!(s, "machine ({} cores)", p.cores);
    let _ = writeln!(
        s,
        "  Ed25519 sign       {:>10.0}/s one core   {:>10.0}/s all cores",
        p.sign_per_s_1core, p.sign_per_s_all
    );
    let _ = writeln!(
        s,
        "  Ed25519 verify     {:>10.0}/s one core   {:>10.0}/s all cores",
        p.verify_per_s_1core, p.verify_per_s_all
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
    let _ = writeln!(s, "node (cores busy: user + system)");
    let _ = writeln!(
        s,
        "  publish            {:>10.0}/s   = {:>5.1} % of one-core sign   (target >= 60 %)  cores {:.0}% + {:.0}%",
        r.publish_per_s,
        r.publish_ratio * 100.0,
        r.publish_cpu.user * 100.0,
        r.publish_cpu.system * 100.0
    );
    let _ = writeln!(
        s,
        "  peer ingest        {:>10.0}/s   = {:>5.1} % of all-core verify (target >= 70 %)  cores {:.0}% + {:.0}%",
        r.ingest_per_s,
        r.ingest_ratio * 100.0,
        r.ingest_cpu.user * 100.0,
        r.ingest_cpu.system * 100.0
    );
    let _ = writeln!(
        s,
        "  latency A>B>C      p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms at {}/s, {} samples (target p99 <= 5 ms)",
        l.p50_ms, l.p99_ms, l.max_ms, l.rate, l.samples
    );
    let _ = writeln!(
        s,
        "  fan-out            {:>10.0} deliveries/s to {} subscribers ({} deliveries; target >= 200,000/s)  cores {:.0}% + {:.0}%",
        f.deliveries_per_s,
        f.subscribers,
        f.deliveries,
        f.cpu.user * 100.0,
        f.cpu.system * 100.0
    );
    let _ = writeln!(
        s,
        "  peak RSS           {:>10.1} MB (target <= 256 MB)",
        f.peak_rss_mb
    );
    let _ = writeln!(
        s,
        "  stalled subscriber RSS {:.1} MB before, {:.1} MB after {} more indicators",
        f.stalled_rss_before_mb, f.stalled_rss_after_mb, f.indicators
    );
    s
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
        keys.insert(KnownKey {
            key_id: key.key_id().into(),
            org: org.clone(),
            public_key: key.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        for i in [0, 1, 2, 99_999] {
            let env = sample_envelope(&key, i);
            let ind = crate::signing::open_indicator(&env, &keys).unwrap();
            crate::model::validate_indicator(&ind, now_unix_ms()).unwrap();
        }
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 3.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
