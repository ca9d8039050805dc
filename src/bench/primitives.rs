//! The machine's primitive limits, measured in the same run as the node
//! figures they bound: Ed25519 on one and all cores, SQLite with the
//! store's durability settings, CPU and memory use.

use super::*;
/// Envelopes per batch in the batch-verify primitive.
const BATCH_VERIFY: u64 = 64;

/// Operations per second of `op` on `threads` threads for about `secs`.
pub(super) fn rate_on_threads(threads: usize, secs: f64, op: impl Fn() + Sync) -> f64 {
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

pub(super) async fn primitives(
    dir: &std::path::Path,
    opts: &super::BenchOptions,
) -> Result<Primitives, BenchError> {
    let secs = opts.primitive_secs;
    let cores = crate::signing::cores();
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
    // Batch verification as a link does it: 64 envelopes of one partner
    // at a time, each its own indicator.
    let batch: Vec<Envelope> = (0..BATCH_VERIFY)
        .map(|i| sample_envelope(&key, i))
        .collect();
    let known = crate::signing::KnownKey::unbounded(
        OrgId::parse("a.bench").map_err(err)?,
        key.key_id().into(),
        key.public_key().to_vec(),
    );
    let together: Vec<(&Envelope, &crate::signing::KnownKey)> =
        batch.iter().map(|e| (e, &known)).collect();
    let verify_batch = || {
        std::hint::black_box(crate::signing::verify_together(&together));
    };
    let (s1, sa, v1, va, vb) = tokio::task::block_in_place(|| {
        (
            rate_on_threads(1, secs, sign),
            rate_on_threads(cores, secs, sign),
            rate_on_threads(1, secs, verify),
            rate_on_threads(cores, secs, verify),
            rate_on_threads(cores, secs, verify_batch) * BATCH_VERIFY as f64,
        )
    });
    let sqlite = sqlite_insert_rate(&dir.join("primitive.db"), 256, 400, secs)
        .await
        .map_err(err)?;
    let commits = sqlite_insert_rate(&dir.join("commit.db"), 1, 400, secs)
        .await
        .map_err(err)?;
    let round_trips = sqlite_round_trip_rate(&dir.join("commit.db"), secs).await?;
    let (pg_inserts, pg_commits) = if opts.store.is_empty() {
        (None, None)
    } else {
        (
            Some(super::postgres::insert_rate(&opts.store, 256, 400, secs).await?),
            Some(super::postgres::insert_rate(&opts.store, 1, 400, secs).await?),
        )
    };
    Ok(Primitives {
        cores,
        cpu: cpu_model(),
        sign_per_s_1core: s1,
        sign_per_s_all: sa,
        verify_per_s_1core: v1,
        verify_per_s_all: va,
        verify_batch_per_s_all: vb,
        sqlite_insert_per_s: sqlite,
        sqlite_commit_per_s: commits,
        sqlite_round_trips_per_s: round_trips,
        postgres_insert_per_s: pg_inserts,
        postgres_commit_per_s: pg_commits,
    })
}

/// The processor's name from /proc/cpuinfo (Linux; empty elsewhere).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_default()
}

/// Thread switches (voluntary and not) of this process's live threads so
/// far, from /proc/self/task/*/status (Linux; 0 elsewhere). Threads that
/// ended are not counted: take the difference over a phase whose threads
/// outlive it.
pub(super) fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// CPU seconds this process has used so far, (user, system), from
/// /proc/self/stat (Linux, 100 ticks a second; zeros elsewhere).
pub(super) fn cpu_seconds() -> (f64, f64) {
    cpu_seconds_of("self")
}

/// CPU seconds process `proc` (a pid, or `self`) has used so far.
pub(super) fn cpu_seconds_of(proc: &str) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{proc}/stat")) else {
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
pub(super) fn busy_since(before: (f64, f64), wall: f64, cores: usize) -> CpuUse {
    busy_share(before, cpu_seconds(), wall, cores)
}

/// The CPU used between `before` and `now` over `wall` seconds, as
/// fractions of `cores`.
pub(super) fn busy_share(before: (f64, f64), now: (f64, f64), wall: f64, cores: usize) -> CpuUse {
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

/// Resident memory of process `proc` (a pid, or `self`) now and at its
/// peak, in MB (Linux; 0 elsewhere).
pub(super) fn rss_mb_of(proc: &str) -> (f64, f64) {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{proc}/status")) else {
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

/// Resets the kernel's peak-RSS mark of process `proc` (a pid, or
/// `self`), so a phase's peak is its own and not what came before (Linux;
/// elsewhere a no-op).
pub(super) fn reset_peak_rss_of(proc: &str) {
    let _ = std::fs::write(format!("/proc/{proc}/clear_refs"), "5");
}

/// The machine's SQLite write limit with the store's durability settings
/// (WAL, `synchronous=FULL`): rows of `row_bytes` inserted `batch` per
/// transaction (in multi-row statements, as the store writes) into a
/// scratch database at `path`, for about `secs`. Returns rows per second;
/// with `batch` 1 that is durable commits per second.
pub(super) async fn sqlite_insert_rate(
    path: &std::path::Path,
    batch: usize,
    row_bytes: usize,
    secs: f64,
) -> Result<f64, BenchError> {
    use crate::store::ROWS_PER_STATEMENT;
    let opts = crate::store::durable_options(path).map_err(err)?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(err)?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
        .execute(&pool)
        .await
        .map_err(err)?;
    let blob = vec![0x5au8; row_bytes];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        let keys: Vec<u64> = (n..n + batch as u64).collect();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO t (k, v) ");
            q.push_values(chunk, |mut b, k| {
                b.push_bind(format!("{k:016x}")).push_bind(blob.clone());
            });
            q.build().execute(&mut *tx).await.map_err(err)?;
        }
        n += batch as u64;
        tx.commit().await.map_err(err)?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

/// Statements per second one task gets through on one SQLite connection,
/// one after another, each a `SELECT 1` that touches no page: the cost of
/// handing a statement to the driver's connection thread and its answer
/// back (two thread wake-ups), which every statement of a write pays. It
/// differs between machines more than the CPU figures do (context
/// switches cost what the host's mitigations make them cost), and a relay
/// hop is about a dozen of them plus a sync.
pub(super) async fn sqlite_round_trip_rate(
    path: &std::path::Path,
    secs: f64,
) -> Result<f64, BenchError> {
    let opts = crate::store::durable_options(path).map_err(err)?;
    let mut conn = sqlx::ConnectOptions::connect(&opts).await.map_err(err)?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let one: i64 = sqlx::query_scalar("SELECT 1")
                .fetch_one(&mut conn)
                .await
                .map_err(err)?;
            std::hint::black_box(one);
        }
        n += 64;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = sqlx::Connection::close(conn).await;
    Ok(rate)
}
