//! The node phases: publish, ingest of a backlog, two-hop latency and
//! fan-out, each over mutual TLS on loopback.

use super::*;

/// A publisher client of `s`'s node at `addr`, after one publish has
/// warmed the connection (and whatever path follows it).
async fn warm_publisher(
    s: &Settings,
    addr: SocketAddr,
) -> Result<ExchangeClient<Channel>, BenchError> {
    let client = publisher(s, addr)?;
    client
        .clone()
        .publish(PublishRequest {
            indicator: Some(draft(u64::MAX >> 40, Tlp::Clear, 70)),
            ..Default::default()
        })
        .await
        .map_err(err)?;
    Ok(client)
}

/// What a phase measured: its rate, and the cores busy in the node's
/// process and in the bench's (the clients) meanwhile.
pub(super) struct Measured {
    pub per_s: f64,
    pub node_cpu: CpuUse,
    pub clients_cpu: CpuUse,
}

/// CPU counters of the node process and of the bench, read together at
/// the start of a timed part.
struct Timed {
    at: Instant,
    node: (f64, f64),
    clients: (f64, f64),
}

impl Timed {
    fn start(node: &NodeProcess) -> Self {
        Self {
            at: Instant::now(),
            node: node.cpu_seconds(),
            clients: cpu_seconds(),
        }
    }

    /// `count` things done since [`Timed::start`].
    fn done(&self, node: &NodeProcess, count: f64) -> Measured {
        let wall = self.at.elapsed().as_secs_f64();
        Measured {
            per_s: count / wall,
            node_cpu: node.busy_since(self.node, wall, crate::signing::cores()),
            clients_cpu: busy_since(self.clients, wall, crate::signing::cores()),
        }
    }
}

/// A node of its own org in its own process, and a publisher client of
/// it whose connection one publish has warmed.
async fn publishing_node(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<(NodeProcess, ExchangeClient<Channel>), BenchError> {
    let a = make_org(dir, "a.bench", opts).await?;
    let node = NodeProcess::start(&a, &tuning(opts)).await?;
    let client = warm_publisher(&a, node.addr).await?;
    Ok((node, client))
}

/// `drafts` published in one PublishBatch: what each became, or the first
/// refusal.
async fn published(
    client: &mut ExchangeClient<Channel>,
    drafts: Vec<IndicatorDraft>,
) -> Result<Vec<crate::proto::v1::PublishResponse>, BenchError> {
    let items = drafts
        .into_iter()
        .map(|d| PublishRequest {
            indicator: Some(d),
            ..Default::default()
        })
        .collect();
    crate::cli::client::publish_batch(client, items)
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|s| err(format!("publish failed: {}", s.message())))
}

/// Unary Publish, [`BenchOptions::in_flight`] at once, to a node in its own
/// process.
pub(super) async fn bench_publish(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<Measured, BenchError> {
    let (node, client) = publishing_node(&dir.join("publish"), opts).await?;
    let timed = Timed::start(&node);
    let results: Vec<Result<(), tonic::Status>> = futures_util::stream::iter(0..opts.publish)
        .map(|i| {
            let mut c = client.clone();
            async move {
                c.publish(PublishRequest {
                    indicator: Some(draft(i, Tlp::Clear, 70)),
                    ..Default::default()
                })
                .await
                .map(drop)
            }
        })
        .buffer_unordered(opts.in_flight)
        .collect()
        .await;
    let measured = timed.done(&node, opts.publish as f64);
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        return Err(err(format!("publish failed: {e}")));
    }
    node.stop().await;
    Ok(measured)
}

/// Drafts in one PublishBatch of the batch publish run (the most a node
/// takes in one request, as `publish --file` and `import` send).
pub const PUBLISH_BATCH: usize = crate::exchange::MAX_BATCH;
/// PublishBatch requests in flight in the batch publish run.
pub const BATCHES_IN_FLIGHT: usize = 8;

/// PublishBatch, [`PUBLISH_BATCH`] drafts a request and
/// [`BATCHES_IN_FLIGHT`] requests at once, to a node in its own process.
pub(super) async fn bench_publish_batch(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<Measured, BenchError> {
    let (node, client) = publishing_node(&dir.join("publish-batch"), opts).await?;
    let timed = Timed::start(&node);
    let batches: Vec<Vec<u64>> = (0..opts.publish)
        .collect::<Vec<_>>()
        .chunks(PUBLISH_BATCH)
        .map(<[u64]>::to_vec)
        .collect();
    let results: Vec<Result<usize, BenchError>> = futures_util::stream::iter(batches)
        .map(|batch| {
            let mut c = client.clone();
            async move {
                let drafts = batch.iter().map(|&i| draft(i, Tlp::Clear, 70)).collect();
                Ok(published(&mut c, drafts).await?.len())
            }
        })
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect()
        .await;
    let published: usize = results.into_iter().sum::<Result<usize, _>>()?;
    let measured = timed.done(&node, published as f64);
    node.stop().await;
    Ok(measured)
}

/// Fills `settings`' store with `n` indicators of its org, signed on all
/// cores, in transactions of 2,000.
pub(super) async fn prefill(
    settings: &Settings,
    n: u64,
    tlp_of: impl Fn(u64) -> (Tlp, u32) + Sync,
) -> Result<(), BenchError> {
    let store = Store::open(&settings.store, crate::clock::Clock::system())
        .await
        .map_err(err)?;
    let key = Arc::new(load_signing_key(settings).map_err(err)?);
    let own = settings.org_id();
    let cores = crate::signing::cores() as u64;
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

pub(super) async fn bench_ingest(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<(f64, CpuUse), BenchError> {
    let base = dir.join("ingest");
    let a = make_org(&base, "a.bench", opts).await?;
    let b = make_org(&base, "b.bench", opts).await?;
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
    let cpu = busy_since(cpu0, elapsed, crate::signing::cores());
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

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(super) async fn bench_latency(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<Latency, BenchError> {
    let base = dir.join("latency");
    let a = make_org(&base, "a.bench", opts).await?;
    let b = make_org(&base, "b.bench", opts).await?;
    let c = make_org(&base, "c.bench", opts).await?;
    let (la, lb, lc) = (listener().await?, listener().await?, listener().await?);
    let (a_addr, b_addr) = (la.local_addr().map_err(err)?, lb.local_addr().map_err(err)?);
    link(&a, &b, None, OPEN).await?;
    link(&b, &a, Some(a_addr), OPEN).await?;
    link(&b, &c, None, OPEN).await?;
    link(&c, &b, Some(b_addr), OPEN).await?;
    let node_a = start(&a, la).await?;
    let node_b = start(&b, lb).await?;
    let node_c = start(&c, lc).await?;

    // Arrival times at each node, by indicator value, recorded as rows
    // land: C's end the measurement, A's and B's split it by hop.
    let watch = |node: &super::Running| {
        let store = node.ctx.store.clone();
        let arrivals: Arrivals = Default::default();
        let task = tokio::spawn(record_arrivals(store, arrivals.clone()));
        (arrivals, task)
    };
    let (at_a, watch_a) = watch(&node_a);
    let (at_b, watch_b) = watch(&node_b);
    let (arrivals, watcher) = watch(&node_c);
    // Warm up the path end to end.
    let client = warm_publisher(&a, node_a.addr).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let total = opts.latency_rate * opts.latency_secs;
    let interval = Duration::from_secs_f64(1.0 / opts.latency_rate as f64);
    let sent: Arc<std::sync::Mutex<HashMap<String, Instant>>> = Default::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total as usize);
    let nodes = [&node_a, &node_b, &node_c];
    // Commits at each node, and syncs of all three.
    let disk = || {
        let counts = nodes.map(|n| n.ctx.store.commits_and_syncs());
        (counts.map(|c| c.0), counts.iter().map(|c| c.1).sum::<u64>())
    };
    let (cpu_before, switches_before, disk_before) = (cpu_seconds(), context_switches(), disk());
    for i in 0..total {
        ticker.tick().await;
        let d = draft(i, Tlp::Clear, 70);
        let value = prepare_draft(&d, crate::clock::wall_ms())
            .map_err(err)?
            .value;
        sent.lock()
            .expect("not poisoned")
            .insert(value, Instant::now());
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            c.publish(PublishRequest {
                indicator: Some(d),
                ..Default::default()
            })
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
    let cpu = cpu_seconds();
    let cpu_us = (cpu.0 + cpu.1 - cpu_before.0 - cpu_before.1) * 1e6;
    let switches = context_switches().saturating_sub(switches_before);
    let (commits, syncs) = disk();
    let per = |n: u64| n as f64 / total.max(1) as f64;
    let commits: [f64; 3] = std::array::from_fn(|i| per(commits[i] - disk_before.0[i]));
    let syncs = per(syncs - disk_before.1);
    for w in [watcher, watch_a, watch_b] {
        w.abort();
    }
    let got = arrivals.lock().expect("not poisoned").clone();
    let sent = sent.lock().expect("not poisoned").clone();
    let [at_a, at_b] = [at_a, at_b].map(|m| m.lock().expect("not poisoned").clone());
    let hops = [(&sent, &at_a), (&at_a, &at_b), (&at_b, &got)].map(|(from, to)| {
        let mut ms: Vec<f64> = from
            .iter()
            .filter_map(|(v, t0)| {
                to.get(v)
                    .map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * 1e3)
            })
            .collect();
        ms.sort_by(|x, y| x.total_cmp(y));
        percentile(&ms, 0.50)
    });
    let mut ms: Vec<f64> = sent
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
        hop_p50_ms: hops,
        cpu_us_per_indicator: cpu_us / total.max(1) as f64,
        switches_per_indicator: switches as f64 / total.max(1) as f64,
        commits_per_indicator: commits,
        syncs_per_indicator: syncs,
    })
}

/// When each indicator (by value) was first seen committed at a node.
type Arrivals = Arc<std::sync::Mutex<HashMap<String, Instant>>>;

/// Records in `arrivals` when each row of `store`'s log is first seen, as
/// the log grows.
async fn record_arrivals(store: crate::store::Store, arrivals: Arrivals) {
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
            // The row's shared decode (made by the commit that stored it,
            // or by a stream), not one of the watcher's own.
            if let Ok(ind) = crate::exchange::decoded(&r) {
                map.entry(ind.value.clone()).or_insert(now);
            }
        }
    }
}

/// The policies subscribers are bound to, in rotation.
pub(super) const FANOUT_POLICIES: [&str; 4] = [
    "name = \"clear-only\"\n[egress]\ntlp_ceiling = \"CLEAR\"\n",
    "name = \"green-community\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n",
    "name = \"amber-ipv4\"\n[egress]\ntlp_ceiling = \"AMBER\"\ncommunity = true\nkinds = [\"ipv4\"]\n",
    "name = \"confident\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\nmin_confidence = 80\n",
];

/// The marking and confidence of the i-th fan-out indicator.
pub(super) fn fanout_mix(i: u64) -> (Tlp, u32) {
    let tlp = match i % 3 {
        0 => Tlp::Clear,
        1 => Tlp::Green,
        _ => Tlp::Amber,
    };
    (tlp, if i.is_multiple_of(2) { 90 } else { 50 })
}

/// A subscriber org: CA, node certificate and card, made in memory.
pub(super) struct SubscriberOrg {
    cert: CertifiedKey,
    card: Envelope,
}

pub(super) fn subscriber_org(i: usize) -> Result<SubscriberOrg, BenchError> {
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
            rotations: Vec::new(),
        },
        &key,
        crate::clock::wall_ms(),
    );
    Ok(SubscriberOrg { cert, card })
}

/// Publishes `drafts` through PublishBatch, 200 a request, one request at
/// a time; returns the highest sequence number they were stored at.
async fn publish_drafts(
    client: &mut ExchangeClient<Channel>,
    drafts: Vec<IndicatorDraft>,
) -> Result<u64, BenchError> {
    let mut last = 0;
    for chunk in drafts.chunks(200) {
        for p in published(client, chunk.to_vec()).await? {
            last = last.max(p.seq);
        }
    }
    Ok(last)
}

/// Fan-out: A, in its own process, publishes while `opts.subscribers`
/// partners (this process, each its own org and mTLS connection) are
/// subscribed; then a subscriber that stops reading.
pub(super) async fn bench_fanout(
    dir: &std::path::Path,
    opts: &BenchOptions,
) -> Result<Fanout, BenchError> {
    let base = dir.join("fanout");
    let a = make_org(&base, "a.bench", opts).await?;
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
        let store = Store::open(&a.store, crate::clock::Clock::system())
            .await
            .map_err(err)?;
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
    let node = NodeProcess::start(&a, &tuning(opts)).await?;
    let ca = std::fs::read_to_string(&a.tls.ca_cert).map_err(err)?;
    let own = a.org_id();
    let mut publisher = publisher(&a, node.addr)?;

    // What each policy lets through of the indicators to come.
    let now = crate::clock::wall_ms();
    let key = load_signing_key(&a).map_err(err)?;
    let drafts: Vec<IndicatorDraft> = (0..opts.fanout_indicators)
        .map(|i| {
            let (tlp, conf) = fanout_mix(i);
            draft(i, tlp, conf)
        })
        .collect();
    let rows: Vec<NewIndicator> = drafts
        .iter()
        .map(|d| own_row(&own, &key, d.clone()))
        .collect();
    let anyone = OrgId::parse("x.bench").map_err(err)?;
    let expected_per_policy: Vec<u64> = policies
        .iter()
        .map(|p| {
            rows.iter()
                .filter(|row| {
                    crate::policy::egress(&own, &row.indicator, 0, &anyone, Some(p), now).is_allow()
                })
                .count() as u64
        })
        .collect();
    drop(rows);

    // Everyone subscribes from the start of A's log, empty until now.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<u64>(opts.subscribers);
    let ready = Arc::new(tokio::sync::Barrier::new(opts.subscribers + 1));
    for (i, s) in subs.iter().enumerate() {
        let ch = channel(&own, &ca, node.addr, &s.cert)?;
        let want = expected_per_policy[i % policies.len()];
        let (done_tx, ready) = (done_tx.clone(), ready.clone());
        tokio::spawn(async move {
            let mut client = ExchangeClient::new(ch);
            let stream = client
                .subscribe(SubscribeRequest {
                    from_cursor: 0,
                    log_id: String::new(),
                })
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

    // The node's peak from here: the connections of every subscriber and
    // the fan-out itself.
    node.reset_peak_rss();
    let timed = Timed::start(&node);
    let latest = publish_drafts(&mut publisher, drafts).await?;
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
    let measured = timed.done(&node, deliveries as f64);
    if finished < opts.subscribers {
        return Err(err(format!(
            "only {finished} of {} subscribers received their share",
            opts.subscribers
        )));
    }
    let (_, peak) = node.rss_mb();

    // A subscriber that stops reading: offered as much again, it must cost
    // the node a cursor, not memory.
    let ch = channel(&own, &ca, node.addr, &stalled.cert)?;
    let mut client = ExchangeClient::new(ch);
    let held = client
        .subscribe(SubscribeRequest {
            from_cursor: latest,
            log_id: String::new(),
        })
        .await
        .map_err(err)?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, _) = node.rss_mb();
    let again: Vec<IndicatorDraft> = (0..opts.fanout_indicators)
        .map(|j| draft(1_000_000 + j, Tlp::Clear, 90))
        .collect();
    publish_drafts(&mut publisher, again).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (after, _) = node.rss_mb();
    drop(held);
    node.stop().await;
    Ok(Fanout {
        subscribers: opts.subscribers,
        indicators: opts.fanout_indicators,
        deliveries,
        deliveries_per_s: measured.per_s,
        peak_rss_mb: peak,
        cpu: measured.node_cpu,
        clients_cpu: measured.clients_cpu,
        stalled_rss_before_mb: before,
        stalled_rss_after_mb: after,
    })
}
