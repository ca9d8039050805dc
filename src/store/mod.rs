//! Durable storage, one file per concern behind one `Store` handle:
//!
//! - `log`: the append-only indicator log (local publishes, reads);
//!   `tail`: its newest rows, shared by live streams.
//! - `ingest`: batches from partners with their refusals and the cursor.
//! - `ledger`: the hash-chained audit ledger.
//! - `peers`, `policies`, `pki` (our certificates, CRLs), `keys` (ours and
//!   partners' signing keys), `directory` (cards of non-partner orgs),
//!   `quarantine`, `release` (what was sent to whom), `sightings` (ours
//!   and partners', and those waiting to go towards the origin),
//!   `statistics` (partners' reports, the node's own secrets).
//!
//! SQLite (embedded default) in WAL mode: a publish is acknowledged, a
//! cursor advanced and a row given out to anyone only after its commit is
//! on disk (`wal`: each commit is written under the write lock and synced
//! after it, one sync covering every commit before it). Received rows and
//! the cursor that covers them commit in one transaction.
//!
//! The store stores and queries: it parses no policy, decodes no envelope
//! and knows nothing of gRPC. Its surface is backend-shaped — every
//! operation is a method taking and returning plain domain rows — so a
//! second backend implements the same methods behind the same handle.

mod checkpoint;
mod copy;
pub(crate) mod db;
mod directory;
mod identity;
mod ingest;
mod keys;
mod ledger;
mod log;
mod peers;
mod pki;
mod policies;
mod publish_keys;
mod quarantine;
mod release;
mod replicas;
mod sightings;
mod statistics;
mod tail;
mod wal;
mod witness;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use db::{Pool, on, sql};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditEntry;
use crate::clock::Clock;

pub use copy::CopyReport;
pub use directory::{CardState, DirectoryRow};
pub use ingest::{IngestOutcome, MAX_VERSION_STEP, RefusalsKept, Rejection, RejectionRecord};
pub use keys::OwnKeyRow;
pub use log::{DecodedCell, NewIndicator, StoredIndicator, StoredRow, Versions};
pub use peers::{PeerChange, PeerRecord, PeerState};
pub use pki::{CertRow, CrlRow};
pub use policies::PolicyRecord;
pub use publish_keys::{Appended, PublishKey};
pub use quarantine::{OrgPath, QuarantineRow, Quarantined};
pub use release::{ResendRequest, Sent};
pub use replicas::LinkLease;
pub use sightings::{KeptReport, OutgoingSighting, OwnKept, OwnSight, SightingRow};
pub use statistics::StatisticsRow;
pub(crate) use wal::Unsynced;
pub use witness::WitnessedHead;

/// The store's write lock and the transaction begun under it.
type WriteLock = (tokio::sync::OwnedMutexGuard<Writing>, Tx);

/// What the write lock guards: the right to write. Held for the length
/// of every write transaction of this process.
#[derive(Debug, Default)]
pub(crate) struct Writing;

/// Storage errors, each saying what happened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open store {path}: {reason}")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The disk (or the file system holding the store) is full: nothing of
    /// this write was kept.
    #[error("store: the disk is full; nothing of this write was stored ({0})")]
    DiskFull(String),
    /// The task that commits grouped writes has stopped (the node is
    /// shutting down).
    #[error("store: the writer has stopped")]
    WriterStopped,
    /// A query or commit failed.
    #[error("store: {0}")]
    Database(String),
    /// The (origin, id, version) already exists.
    #[error("{origin}/{id} version {version} is already stored")]
    Duplicate {
        /// Origin org.
        origin: String,
        /// Indicator id.
        id: String,
        /// Version.
        version: u64,
    },
    /// The change conflicts with what is stored (an older card, a key of
    /// another org, a removed partner); says which.
    #[error("{0}")]
    Conflict(String),
    /// The named partner, policy or certificate does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A publisher's idempotency key was used before for other content.
    #[error(
        "idempotency_key: '{key}' was used for another indicator (published as {id} version {version}); use a new key for new content"
    )]
    KeyReused {
        /// The key.
        key: String,
        /// What it published first.
        id: String,
        /// Its version.
        version: u64,
    },
    /// A stored row is unreadable (manual edits, corruption).
    #[error("corrupt stored row: {0}")]
    Corrupt(String),
    /// The database failed its integrity check.
    #[error("{0}")]
    Damaged(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        // SQLITE_FULL (13), also as the I/O error a full disk gives;
        // PostgreSQL's disk_full (53100).
        let full = e
            .as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c == "13" || c == "53100")
            || e.to_string().contains("database or disk is full");
        if full {
            // A pooled connection whose COMMIT this refused is closed when
            // next acquired (see check_after_failure).
            StoreError::DiskFull(e.to_string())
        } else {
            StoreError::Database(e.to_string())
        }
    }
}

/// A connection whose COMMIT failed (a full disk: SQLite rolled the
/// transaction back itself) is still counted inside it by the driver, which
/// then refuses every BEGIN on it: it is closed instead of handed out again,
/// so the next write after space returns succeeds without a restart.
fn check_after_failure(
    conn: &mut sqlx::SqliteConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    let usable = !sqlx::Connection::is_in_transaction(&*conn);
    if !usable {
        tracing::warn!("closing a store connection left inside a failed transaction");
    }
    Box::pin(std::future::ready(Ok(usable)))
}

/// The store's durability: WAL, each commit on disk before it returns
/// (`synchronous=FULL`; the store's writing connection gets the same by
/// syncing the log after the write lock, see `wal`). Public so the
/// benchmark measures SQLite's durable commit with exactly these.
pub fn durable_options(path: &Path) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full))
}

/// Page cache of the writing connection, KiB: it keeps the index pages
/// that random keys (ids, values, idempotency keys) touch, one per row,
/// between commits. 16 MiB imports 1,000,000 rows as fast as 64 MiB did
/// (28.8k/s against 29.1k/s) and keeps a node serving 1,000 subscribers
/// about 50 MB smaller (BENCHMARKS.md, round two, step 6).
const WRITER_CACHE_KIB: u32 = 16_384;

/// WAL pages between automatic checkpoints (512 MiB of 4 KiB pages): a
/// bulk load's group commits each rewrite most index pages, so the fewer
/// checkpoints, the more of those rewrites reach the database file once
/// (1,000,000 imported rows: 57 s at this size against 68 s at 64 MiB, in a
/// replica of the schema).
const WAL_CHECKPOINT_PAGES: u32 = 131_072;

/// What the WAL file is cut back to after a checkpoint empties it, bytes:
/// the disk a bulk load took is given back.
const WAL_KEPT_BYTES: u64 = 64 << 20;

/// Rows per multi-row statement: each statement is one round trip to the
/// database thread, which is what bounds write throughput, not SQLite.
/// At 14 columns a row that is 7,168 bound values (SQLite allows 32,766).
pub const ROWS_PER_STATEMENT: usize = 512;

/// Where a store's write transactions run.
#[derive(Debug, Clone)]
enum Writer {
    /// The one connection every write transaction of this process uses,
    /// kept between them (opened from `pool` when there is none), and the
    /// write-ahead log its commits are synced through (see `wal`).
    Sqlite {
        pool: SqlitePool,
        held: db::WriterSlot,
        wal: Arc<wal::WalSync>,
    },
    /// The pool reads use too.
    Pg(sqlx::PgPool),
}

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Connections for reads.
    pool: Pool,
    /// Where write transactions run (see [`Store::write_tx`]).
    writer: Writer,
    /// Local publishes, committed in groups by one writer task.
    local: mpsc::Sender<log::LocalWrite>,
    /// Release records of partner streams, committed in groups.
    releases: mpsc::Sender<release::ReleaseWrite>,
    /// Release records waiting for the write lock, which a durable commit
    /// holding it takes (see [`Store::release_writer`]).
    pending_releases: Arc<std::sync::Mutex<Vec<release::ReleaseWrite>>>,
    /// The newest rows, shared by live streams.
    tail: Arc<tokio::sync::Mutex<tail::Tail>>,
    /// Held for the length of every write transaction of this process.
    writing: Arc<tokio::sync::Mutex<Writing>>,
    /// Highest local sequence number, so live subscribers wake without polling.
    latest: watch::Sender<u64>,
    /// Highest sequence number this process has written and put on the
    /// tail, on disk or not yet (at least `latest`): what a stream that
    /// decides while the sync runs wakes for.
    written: watch::Sender<u64>,
    /// What "now" is for every timestamp the store writes.
    clock: Clock,
    /// Cancelled by [`Store::close`]: the writers commit what is queued,
    /// then stop.
    stop: CancellationToken,
    /// The group-commit writers, waited for before the pool closes.
    writers: TaskTracker,
    /// Where commit times and published rows are counted, once the node
    /// has its metrics (see [`Store::observe`]).
    observer: Arc<std::sync::OnceLock<Arc<crate::metrics::Metrics>>>,
    /// PostgreSQL: the partner link leases this process holds.
    leases: Option<Arc<replicas::Leases>>,
    /// The ledger head (rows, hash of the last) as this process last wrote
    /// it: an append moves the stored head from exactly this value in one
    /// statement instead of reading it first, and reads it only when the
    /// stored head is another (a rolled-back transaction, another replica).
    ledger_head: Arc<std::sync::Mutex<Option<crate::audit::witness::Witnessed>>>,
}

use db::Tx;

/// How often a replica checks the connection holding its link leases.
const LEASE_CHECK: Duration = Duration::from_secs(2);

/// The advisory lock every PostgreSQL write transaction holds (in every
/// replica sharing the database): writes commit one at a time, so
/// sequence numbers become visible in order and the ledger stays one chain.
pub const PG_WRITE_LOCK: i64 = 0x7468_7265_6174_6d01;

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates
    /// it; timestamps it writes come from `clock`.
    pub async fn open_sqlite(path: &Path, clock: Clock) -> Result<Self, StoreError> {
        Self::open_sqlite_capped(path, clock, 0).await
    }

    /// [`Store::open_sqlite`], the database bounded at `max_bytes` (0 = only
    /// by the disk): past it, writes fail as on a full disk.
    pub async fn open_sqlite_capped(
        path: &Path,
        clock: Clock,
        max_bytes: u64,
    ) -> Result<Self, StoreError> {
        let open_err = |reason: String| {
            // SQLite's own words for a damaged file (SQLITE_CORRUPT,
            // SQLITE_NOTADB): say so, and what to do.
            if reason.contains("malformed") || reason.contains("not a database") {
                return StoreError::Damaged(format!(
                    "store {} is damaged ({reason}); restore a backup with `threatmesh store restore --from FILE`",
                    path.display()
                ));
            }
            StoreError::Open {
                path: path.display().to_string(),
                reason,
            }
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        }
        // The database holds partners' TLP:RED envelopes and the ledger:
        // create it readable by the owner only. SQLite gives its -wal and
        // -shm files the database file's permissions.
        #[cfg(unix)]
        if !path.exists() {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_err(e.to_string()))?;
        }
        let mut opts = durable_options(path)
            .map_err(|e| open_err(e.to_string()))?
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if max_bytes > 0 {
            // SQLite's default page size; the cap is in pages.
            opts = opts.pragma("max_page_count", (max_bytes / 4096).max(1).to_string());
        }
        // Checkpoints copy WAL pages into the database; one every
        // WAL_CHECKPOINT_PAGES instead of SQLite's 1,000 writes a page
        // changed by many commits once instead of once per few commits.
        opts = opts
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
            .pragma("journal_size_limit", WAL_KEPT_BYTES.to_string())
            // Statement journals and sorts in memory: SQLite otherwise
            // creates, writes and unlinks a temporary file for a multi-row
            // statement inside a transaction, several times per commit.
            // Nothing durable lives there.
            .pragma("temp_store", "MEMORY");
        // Every write transaction runs on one connection of its own: in WAL
        // mode a connection drops its page cache whenever another one has
        // written, so writes spread over a pool found their index pages
        // cold and read them again from the file.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .before_acquire(check_after_failure)
            .connect_with(
                opts.clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}"))
                    // Commits write the log; `wal` syncs it after them.
                    .synchronous(SqliteSynchronous::Normal),
            )
            .await
            .map_err(|e| open_err(e.to_string()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        {
            let mut conn = writer
                .acquire()
                .await
                .map_err(|e| open_err(e.to_string()))?;
            let hashed = publish_keys::hash_kept_keys(&mut conn).await.map_err(|e| {
                open_err(format!("migration failed: hashing kept publish keys: {e}"))
            })?;
            if hashed > 0 {
                tracing::info!(
                    keys = hashed,
                    "kept publish idempotency keys hashed for look-up"
                );
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .before_acquire(check_after_failure)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        let writer = Writer::Sqlite {
            pool: writer,
            held: Default::default(),
            wal: Arc::new(wal::WalSync::new(path)),
        };
        Self::start(Pool::Sqlite(pool), writer, clock).await
    }

    /// Opens the store `settings` name: PostgreSQL when `store.url` is
    /// set, else the SQLite file at `store.path`.
    pub async fn open(
        settings: &crate::config::StoreSettings,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        if settings.url.is_empty() {
            Self::open_sqlite_capped(
                &settings.path,
                clock,
                settings.max_size_mb.saturating_mul(1 << 20),
            )
            .await
        } else {
            Self::open_postgres(
                &settings.url,
                clock,
                settings.pool_size,
                settings.statement_timeout_ms,
            )
            .await
        }
    }

    /// Opens the PostgreSQL database at `url` (which must exist) and
    /// migrates it; at most `pool_size` connections, each statement
    /// cancelled after `statement_timeout_ms` (0 = never).
    /// `synchronous_commit` is left as the server has it (on, by default):
    /// a publish is acknowledged after its commit is durable.
    pub async fn open_postgres(
        url: &str,
        clock: Clock,
        pool_size: u32,
        statement_timeout_ms: u64,
    ) -> Result<Self, StoreError> {
        let shown = redact_url(url);
        let open_err = |reason: String| StoreError::Open {
            path: shown.clone(),
            reason,
        };
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| open_err(format!("store.url: {e}")))?
            .application_name("threatmesh")
            .options([("statement_timeout", statement_timeout_ms.to_string())]);
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        // Replicas starting together migrate one at a time.
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        Self::start(Pool::Pg(pool.clone()), Writer::Pg(pool), clock).await
    }

    /// The handle over opened pools, its writers started.
    async fn start(pool: Pool, writer: Writer, clock: Clock) -> Result<Self, StoreError> {
        let (local, queue) = mpsc::channel(4096);
        let (releases, release_queue) = mpsc::channel(4096);
        let store = Self {
            pool,
            writer: writer.clone(),
            local,
            releases,
            pending_releases: Default::default(),
            tail: Default::default(),
            writing: Default::default(),
            latest: watch::channel(0).0,
            written: watch::channel(0).0,
            clock,
            stop: CancellationToken::new(),
            writers: TaskTracker::new(),
            observer: Default::default(),
            leases: match &writer {
                Writer::Pg(p) => Some(Arc::new(replicas::Leases::new(p.clone()))),
                Writer::Sqlite { .. } => None,
            },
            ledger_head: Default::default(),
        };
        // What the log holds from before (a process that stopped between
        // a commit and its sync) is put on disk before anything is read
        // from it and given out.
        store.sync_all().await?;
        let latest = store.latest_seq().await?;
        store.bump(latest);
        // The writers hold handles without the queues' senders, so they end
        // when every other handle is dropped.
        let writer = || Self {
            local: mpsc::channel(1).0,
            releases: mpsc::channel(1).0,
            ..store.clone()
        };
        store.writers.spawn(writer().local_writer(queue));
        store.writers.spawn(writer().release_writer(release_queue));
        if let Some(opts) = store.keeper_options() {
            let alive = store.local.downgrade();
            store
                .writers
                .spawn(writer().keep_log_short(opts, alive, checkpoint::REWIND_FRAMES));
        }
        if let Some(leases) = &store.leases {
            store.writers.spawn(writer().follow_replicas());
            store
                .writers
                .spawn(leases.clone().watch(LEASE_CHECK, store.stop.clone()));
        }
        store.writers.close();
        Ok(store)
    }

    /// Whether the store is PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.pool.is_postgres()
    }

    /// Counts local group commits (their time, and the versions they
    /// stored) in `metrics` from now on; the first call wins.
    pub fn observe(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.observer.set(metrics);
    }

    /// Stops taking writes, lets the writers commit everything already
    /// queued, then closes the pool (flushing WAL state). Writes after this
    /// fail with [`StoreError::WriterStopped`].
    pub async fn close(&self) {
        self.stop.cancel();
        self.writers.wait().await;
        self.pool.close().await;
        match &self.writer {
            Writer::Sqlite { pool, held, .. } => {
                if let Some(conn) = held.take() {
                    let _ = sqlx::Connection::close(conn).await;
                }
                pool.close().await;
            }
            Writer::Pg(pool) => pool.close().await,
        }
    }

    /// The next group for a writer: waits for one queued write, then takes
    /// what else is queued while the group weighs less than `max` (`weight`
    /// of a write: 1 for a write, or its rows); after [`Store::close`], only
    /// what was queued before, then an empty group (the writer's cue to
    /// stop). Returns the number of writes taken.
    async fn next_group<T>(
        &self,
        queue: &mut mpsc::Receiver<T>,
        group: &mut Vec<T>,
        max: usize,
        weight: impl Fn(&T) -> usize,
    ) -> usize {
        let first = tokio::select! {
            w = queue.recv() => w,
            _ = self.stop.cancelled() => {
                queue.close();
                queue.recv().await
            }
        };
        let Some(first) = first else { return 0 };
        let mut weighed = weight(&first);
        group.push(first);
        while weighed < max {
            let Ok(w) = queue.try_recv() else { break };
            weighed += weight(&w);
            group.push(w);
        }
        group.len()
    }

    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether `exists_sql` (`SELECT 1 … WHERE t < ? LIMIT 1`) finds a row
    /// before `before_ms`: the cheap read that lets periodic clean-ups skip
    /// the write lock when there is nothing to remove.
    async fn any_before(
        &self,
        exists_sql: &'static str,
        before_ms: i64,
    ) -> Result<bool, StoreError> {
        let hit: Option<i64> = on!(Pool, &self.pool, p => {
            sqlx::query_scalar(sql!(exists_sql))
                .bind(before_ms)
                .fetch_optional(p)
                .await?
        });
        Ok(hit.is_some())
    }

    /// Appends `entries` to the ledger inside `tx` and commits: the end of
    /// every change that is recorded on the ledger.
    async fn commit_with(&self, mut tx: Tx, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.append_audit_with(&mut tx, entries, &[], ledger::Then::Commit)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every row `sql` (no parameters) selects.
    async fn all<T>(&self, query: &'static str) -> Result<Vec<T>, StoreError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
            + Send
            + Unpin,
    {
        Ok(on!(Pool, &self.pool, p => sqlx::query_as(sql!(query)).fetch_all(p).await?))
    }

    /// A write transaction holding the database's write lock from its
    /// first statement (SQLite's, or [`PG_WRITE_LOCK`]), so read-then-write
    /// sequences (the audit chain head, the next sequence number) cannot
    /// interleave with another writer, even in another process or replica.
    async fn write_tx(&self) -> Result<WriteLock, StoreError> {
        // Writers queue here rather than in the database (SQLite's busy
        // handler sleeps up to tens of milliseconds when it finds the lock
        // taken; each PostgreSQL waiter would hold a connection).
        let guard = self.writing.clone().lock_owned().await;
        self.begin_locked(guard).await
    }

    /// [`Store::write_tx`] with the write lock already taken.
    async fn begin_locked(
        &self,
        guard: tokio::sync::OwnedMutexGuard<Writing>,
    ) -> Result<WriteLock, StoreError> {
        let tx = match &self.writer {
            Writer::Sqlite { pool, held, wal } => {
                // A kept connection whose thread stopped fails the
                // transaction's first statement; it is then closed (one left
                // inside a transaction is never kept) and the next
                // transaction opens a fresh one.
                let conn = match held.take() {
                    Some(conn) => conn,
                    None => pool.acquire().await?.detach(),
                };
                let tx = held.begin(conn, wal.clone());
                Tx::Sqlite(db::SqliteTx::Write(tx))
            }
            Writer::Pg(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_WRITE_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Tx::Pg(tx)
            }
        };
        Ok((guard, tx))
    }

    /// SQLite: how a connection of the log keeper's is opened (the
    /// writer's options, see `checkpoint`); PostgreSQL: none.
    fn keeper_options(&self) -> Option<SqliteConnectOptions> {
        match &self.writer {
            Writer::Sqlite { pool, .. } => Some((*pool.connect_options()).clone()),
            Writer::Pg(_) => None,
        }
    }

    /// SQLite: the write-ahead log its commits are synced through (see
    /// `wal`); PostgreSQL: none (a commit is on disk when it returns).
    fn wal(&self) -> Option<&Arc<wal::WalSync>> {
        match &self.writer {
            Writer::Sqlite { wal, .. } => Some(wal),
            Writer::Pg(_) => None,
        }
    }

    /// Commits written to the log that no sync has put on disk yet
    /// (SQLite; always 0 on PostgreSQL, where every commit is on disk).
    pub fn unsynced_commits(&self) -> u64 {
        self.wal().map_or(0, |w| w.unsynced())
    }

    /// Write transactions committed and log syncs done by this handle so
    /// far (SQLite; `(0, 0)` on PostgreSQL): what a write path costs the
    /// disk, counted rather than timed.
    pub fn commits_and_syncs(&self) -> (u64, u64) {
        self.wal().map_or((0, 0), |w| w.counts())
    }

    /// Puts every commit made so far on disk (SQLite; PostgreSQL's are).
    async fn sync_all(&self) -> Result<(), StoreError> {
        match self.wal() {
            Some(w) => w.sync_now().await.map_err(wal::not_on_disk),
            None => Ok(()),
        }
    }
}

/// `url` with its password (if any) replaced, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable store.url)".to_string(),
    }
}

/// A fresh directory for one unit test's store, named for `tag`.
#[cfg(test)]
pub(crate) fn scratch_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "threatmesh-{tag}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ))
}
