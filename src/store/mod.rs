//! Durable storage: the append-only indicator log, partners and their keys,
//! per-upstream cursors and rejected envelopes.
//!
//! SQLite (embedded default) in WAL mode with `synchronous=FULL`: a publish
//! is acknowledged, and a cursor advanced, only after the commit is durable.
//! Received rows and the cursor that covers them commit in one transaction.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, watch};

use crate::audit::{
    AuditEntry, AuditEntryOwned, AuditRow, ChainBreak, event, row_hash, verify_chain,
};
use crate::identity::VerifiedCard;
use crate::model::{OrgId, now_unix_ms};
use crate::proto::v1::Indicator;
use crate::signing::KnownKey;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or migrated.
    #[error("cannot open store {path}: {reason}")]
    Open {
        /// The database file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("store: {0}")]
    Database(#[from] sqlx::Error),
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
    /// The change conflicts with what is stored (an older card, an unknown
    /// policy, a removed partner).
    #[error("{0}")]
    Conflict(String),
    /// The named partner, policy or certificate does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A stored row is unreadable (manual edits, corruption).
    #[error("corrupt stored row: {0}")]
    Corrupt(String),
}

/// An indicator version to append.
#[derive(Debug, Clone)]
pub struct NewIndicator {
    /// The decoded (verified) indicator, for the columns.
    pub indicator: Indicator,
    /// The serialised envelope, stored byte for byte.
    pub envelope: Vec<u8>,
    /// The ingress rule that accepted it (recorded in the audit ledger).
    pub rule: &'static str,
    /// Orgs it passed through before reaching us, origin first (empty when
    /// published here).
    pub path: Vec<String>,
    /// Its sequence number at the partner it came from (0 if published here).
    pub upstream_seq: u64,
}

/// A stored indicator version.
#[derive(Debug, Clone)]
pub struct StoredIndicator {
    /// Local sequence number.
    pub seq: u64,
    /// Origin org.
    pub origin_org: String,
    /// Indicator id.
    pub indicator_id: String,
    /// Version.
    pub version: u64,
    /// Partner it came from; `None` if published here.
    pub received_from: Option<String>,
    /// Envelope bytes exactly as signed.
    pub envelope: Vec<u8>,
    /// When this node stored it.
    pub stored_ms: i64,
    /// Orgs it passed through before reaching us, origin first (empty when
    /// published here).
    pub path: Vec<String>,
    /// Whether this version revokes the indicator.
    pub revoked: bool,
    /// The indicator decoded from `envelope`, when a shared read already
    /// did it (live streams); `None` means decode it yourself.
    pub decoded: Option<Arc<Indicator>>,
}

/// A refused envelope to record.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Upstream sequence number of the refused item.
    pub upstream_seq: u64,
    /// gRPC status code name the refusal maps to (e.g. `Unauthenticated`).
    pub code: String,
    /// Why it was refused.
    pub reason: String,
    /// The refused bytes, for forensics.
    pub envelope: Vec<u8>,
}

/// A recorded rejection.
#[derive(Debug, Clone)]
pub struct RejectionRecord {
    /// Partner that sent it.
    pub upstream_org: String,
    /// Upstream sequence number.
    pub upstream_seq: u64,
    /// gRPC status code name.
    pub code: String,
    /// Why.
    pub reason: String,
    /// When.
    pub rejected_ms: i64,
}

/// A registered partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Partner org.
    pub org: OrgId,
    /// Its display name.
    pub display_name: String,
    /// Where we dial it; empty = we do not subscribe to it.
    pub endpoint: String,
    /// Version of the stored card.
    pub card_version: u64,
    /// Its CA bundle.
    pub ca_bundle_pem: String,
    /// When first registered.
    pub added_ms: i64,
    /// Name of the bound sharing policy; empty = none (receives nothing).
    pub policy: String,
    /// Lifecycle state.
    pub state: PeerState,
    /// Whether cards of other orgs relayed by this partner are accepted.
    pub introducer: bool,
    /// Its signed card as registered (serialised envelope).
    pub card: Vec<u8>,
}

/// A certificate of our own org known to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertRow {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Its SPIFFE id.
    pub spiffe_id: String,
    /// Validity start (Unix ms).
    pub not_before_ms: i64,
    /// Validity end (Unix ms).
    pub not_after_ms: i64,
    /// When issued or first seen.
    pub issued_ms: i64,
    /// Who issued it.
    pub issued_by: String,
    /// The certificate (PEM).
    pub pem: String,
    /// (when, why) if revoked.
    pub revoked: Option<(i64, String)>,
}

/// A partner's imported CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRow {
    /// The partner.
    pub org: OrgId,
    /// The CRL (DER).
    pub der: Vec<u8>,
}

/// A partner's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Trusted, dialled, and served under its policy.
    Active,
    /// Nothing is sent, its connections are refused; can be resumed.
    Suspended,
    /// Hard stop; its cursor and history are kept for the audit.
    Removed,
}

impl PeerState {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Active => "active",
            PeerState::Suspended => "suspended",
            PeerState::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(PeerState::Active),
            "suspended" => Ok(PeerState::Suspended),
            "removed" => Ok(PeerState::Removed),
            other => Err(StoreError::Corrupt(format!("peers.state '{other}'"))),
        }
    }
}

impl PolicyRecord {
    /// The policy this record holds, carrying the record's version.
    pub fn to_policy(&self) -> Result<crate::policy::PartnerPolicy, crate::policy::PolicyError> {
        let mut p = crate::policy::parse_policy(&self.document)?;
        p.version = self.version;
        Ok(p)
    }
}

/// One applied version of a named policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    /// Policy name.
    pub name: String,
    /// Version, from 1.
    pub version: u64,
    /// The TOML document as applied.
    pub document: String,
    /// When applied.
    pub applied_ms: i64,
    /// Who applied it.
    pub applied_by: String,
}

/// Result of committing a batch received from a partner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    /// New versions stored.
    pub stored: u64,
    /// Versions already held (idempotent re-delivery).
    pub duplicates: u64,
    /// Envelopes refused and recorded.
    pub rejected: u64,
    /// Envelopes put in quarantine (unknown signing key).
    pub quarantined: u64,
}

/// Whether `put_peer` added or replaced a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// A new partner.
    Added,
    /// A newer card or endpoint for a known partner.
    Updated,
}

/// An envelope whose signing key is not known yet, to hold in quarantine.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Its sequence number at the partner that sent it.
    pub upstream_seq: u64,
    /// The unknown key.
    pub key_id: String,
    /// The envelope as received.
    pub envelope: Vec<u8>,
    /// Its path as received.
    pub path: Vec<String>,
}

/// A quarantined envelope as stored.
#[derive(Debug, Clone)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Partner it came from.
    pub upstream: OrgId,
    /// Its sequence number there.
    pub upstream_seq: u64,
    /// The unknown key.
    pub key_id: String,
    /// The envelope as received.
    pub envelope: Vec<u8>,
    /// Its path as received.
    pub path: Vec<String>,
    /// When it arrived.
    pub received_ms: i64,
}

/// What became of one row offered for storage.
enum Admitted {
    Stored(u64),
    Duplicate,
    Refused(Rejection),
}

/// [`admit_rows_tx`] for one row.
async fn admit_row_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    upstream: &OrgId,
    row: &NewIndicator,
    audit: &mut Vec<AuditEntry>,
) -> Result<Admitted, StoreError> {
    Ok(
        admit_rows_tx(tx, upstream, std::slice::from_ref(row), audit)
            .await?
            .pop()
            .unwrap_or(Admitted::Duplicate),
    )
}

/// Stores verified, admitted rows from `upstream`, in order, except
/// duplicates, versions older than the one held (rollback) and versions too
/// far ahead; multi-row statements throughout.
async fn admit_rows_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    upstream: &OrgId,
    rows: &[NewIndicator],
    audit: &mut Vec<AuditEntry>,
) -> Result<Vec<Admitted>, StoreError> {
    let keys: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.indicator.origin_org.clone(), r.indicator.id.clone()))
        .collect();
    let mut held = held_versions(tx, &keys).await?;
    let mut verdicts: Vec<Option<Admitted>> = Vec::with_capacity(rows.len());
    let mut candidates = Vec::new();
    for (row, key) in rows.iter().zip(keys) {
        let i = &row.indicator;
        let refusal = match held.get(&key).copied() {
            Some(h) if i.version < h => Some(format!(
                "rollback: {}/{} version {} is older than version {h} held here",
                i.origin_org, i.id, i.version
            )),
            Some(h) if i.version > h.saturating_add(MAX_VERSION_STEP) => Some(format!(
                "{}/{} version {} jumps more than {MAX_VERSION_STEP} versions past version {h} held here",
                i.origin_org, i.id, i.version
            )),
            _ => None,
        };
        match refusal {
            Some(reason) => verdicts.push(Some(Admitted::Refused(Rejection {
                upstream_seq: row.upstream_seq,
                code: "FailedPrecondition".into(),
                reason,
                envelope: row.envelope.clone(),
            }))),
            None => {
                let h = held.entry(key).or_insert(0);
                *h = (*h).max(i.version);
                verdicts.push(None);
                candidates.push(row);
            }
        }
    }
    let mut seqs = insert_indicators(tx, &candidates, upstream.as_str())
        .await?
        .into_iter();
    let mut out = Vec::with_capacity(rows.len());
    for (row, verdict) in rows.iter().zip(verdicts) {
        out.push(match verdict {
            Some(v) => v,
            None => match seqs.next().flatten() {
                Some(seq) => {
                    audit.push(AuditEntry {
                        event: event::ACCEPTED,
                        actor: "node".into(),
                        partner: upstream.to_string(),
                        subject: subject_of(&row.indicator),
                        rule: row.rule.to_string(),
                        detail: format!("path {}", row.path.join(" > ")),
                    });
                    Admitted::Stored(seq)
                }
                None => Admitted::Duplicate,
            },
        });
    }
    Ok(out)
}

/// Stores versions published here (each with the publisher that made it)
/// and their ledger rows; per row its sequence number, or `None` for a
/// version already stored.
async fn insert_local_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[(&NewIndicator, &str)],
) -> Result<Vec<Option<u64>>, StoreError> {
    let indicators: Vec<&NewIndicator> = rows.iter().map(|(r, _)| *r).collect();
    let seqs = insert_indicators(tx, &indicators, "").await?;
    let audit: Vec<AuditEntry> = rows
        .iter()
        .zip(&seqs)
        .filter(|(_, seq)| seq.is_some())
        .map(|((row, actor), _)| AuditEntry {
            event: event::PUBLISHED,
            actor: actor.to_string(),
            partner: String::new(),
            subject: subject_of(&row.indicator),
            rule: String::new(),
            detail: String::new(),
        })
        .collect();
    append_audit_tx(tx, &crate::audit::coalesce(audit)).await?;
    Ok(seqs)
}

/// Records a refused envelope from `upstream`.
async fn reject_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    upstream: &OrgId,
    r: &Rejection,
    now: i64,
    audit: &mut Vec<AuditEntry>,
) -> Result<(), StoreError> {
    audit.push(AuditEntry {
        event: event::REJECTED,
        actor: "node".into(),
        partner: upstream.to_string(),
        subject: format!("{upstream} seq {}", r.upstream_seq),
        rule: r.code.clone(),
        detail: r.reason.clone(),
    });
    sqlx::query(
        "INSERT INTO rejections (upstream_org, upstream_seq, code, reason, envelope, rejected_ms) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(upstream.as_str())
    .bind(to_i64(r.upstream_seq))
    .bind(&r.code)
    .bind(&r.reason)
    .bind(&r.envelope)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Refuses a card carrying a signing key already registered for another
/// org: one key belongs to one org.
async fn check_key_owners_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    card: &VerifiedCard,
) -> Result<(), StoreError> {
    for k in &card.keys {
        let owner: Option<String> =
            sqlx::query_scalar("SELECT org_id FROM signing_keys WHERE key_id = ?")
                .bind(&k.key_id)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some(owner) = owner
            && owner != card.org.as_str()
        {
            return Err(StoreError::Conflict(format!(
                "signing key {} in {}'s card is already registered for {owner}",
                k.key_id, card.org
            )));
        }
    }
    Ok(())
}

/// Makes `card`'s keys (with validity and revocation) the trusted keys of
/// its org.
async fn replace_keys_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    card: &VerifiedCard,
) -> Result<(), StoreError> {
    check_key_owners_tx(tx, card).await?;
    sqlx::query("DELETE FROM signing_keys WHERE org_id = ?")
        .bind(card.org.as_str())
        .execute(&mut **tx)
        .await?;
    for k in &card.keys {
        sqlx::query(
            "INSERT INTO signing_keys (key_id, org_id, public_key, not_before_ms, not_after_ms, revoked) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&k.key_id)
        .bind(card.org.as_str())
        .bind(&k.public_key)
        .bind(k.not_before_ms)
        .bind(k.not_after_ms)
        .bind(k.revoked)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// One of our own signing keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKeyRow {
    /// Key id.
    pub key_id: String,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Valid from (Unix ms; 0 = always).
    pub not_before_ms: i64,
    /// Valid until (Unix ms; 0 = current key).
    pub not_after_ms: i64,
    /// When revoked (0 = not revoked).
    pub revoked_ms: i64,
}

/// Whether a card of a non-partner org is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    /// Its keys verify indicators (it came from an introducer, or an admin
    /// approved it).
    Accepted,
    /// Waiting for `threatmesh peer approve-card`; its keys are not used.
    Pending,
}

impl CardState {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            CardState::Accepted => "accepted",
            CardState::Pending => "pending",
        }
    }
}

/// A card of a non-partner org received through the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryRow {
    /// The org.
    pub org: OrgId,
    /// The card envelope (serialised).
    pub card: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// Accepted or pending.
    pub state: CardState,
    /// The partner it came through, or the admin who approved it.
    pub via: String,
    /// When last changed.
    pub updated_ms: i64,
}

/// The store's durability settings: WAL, `synchronous=FULL`.
fn durable_options(path: &Path) -> Result<SqliteConnectOptions, sqlx::Error> {
    Ok(SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full))
}

/// The machine's SQLite write limit with the store's durability settings
/// (WAL, `synchronous=FULL`): rows of `row_bytes` inserted `batch` per
/// transaction (in multi-row statements, as the store writes) into a
/// scratch database at `path`, for about `secs`. Returns rows per second;
/// with `batch` 1 that is durable commits per second.
pub async fn sqlite_insert_rate(
    path: &Path,
    batch: usize,
    row_bytes: usize,
    secs: f64,
) -> Result<f64, StoreError> {
    let open_err = |reason: String| StoreError::Open {
        path: path.display().to_string(),
        reason,
    };
    let opts = durable_options(path).map_err(|e| open_err(e.to_string()))?;
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await
        .map_err(|e| open_err(e.to_string()))?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")
        .execute(&pool)
        .await?;
    let blob = vec![0x5au8; row_bytes];
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let keys: Vec<u64> = (n..n + batch as u64).collect();
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO t (k, v) ");
            q.push_values(chunk, |mut b, k| {
                b.push_bind(format!("{k:016x}")).push_bind(blob.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        n += batch as u64;
        tx.commit().await?;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    pool.close().await;
    Ok(rate)
}

/// A local publish waiting for the group commit.
struct LocalWrite {
    row: NewIndicator,
    actor: String,
    done: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
}

impl std::fmt::Debug for LocalWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWrite").finish_non_exhaustive()
    }
}

/// The ledger rows and recipients of one batch released to a partner,
/// waiting for the group commit.
struct ReleaseWrite {
    entries: Vec<AuditEntry>,
    recipient: OrgId,
    sent: Vec<(String, String)>,
    done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

impl std::fmt::Debug for ReleaseWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseWrite").finish_non_exhaustive()
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Open {
        path: "store".into(),
        reason: "the store's writer has stopped".into(),
    }
}

/// The newest stretch of the log, decoded once and shared by every live
/// subscriber stream, so a new batch costs one store read, not one per
/// subscriber.
#[derive(Debug, Default)]
struct Tail {
    /// Consecutive rows, oldest first.
    rows: std::collections::VecDeque<StoredIndicator>,
}

/// Most rows the tail keeps.
const TAIL_ROWS: usize = 8192;

/// The node's store.
#[derive(Debug, Clone)]
pub struct Store {
    /// Connection pool; writes serialise inside SQLite.
    pool: SqlitePool,
    /// Local publishes, committed in groups by one writer task.
    local: mpsc::Sender<LocalWrite>,
    /// Release records of partner streams, committed in groups.
    releases: mpsc::Sender<ReleaseWrite>,
    /// The newest rows, shared by live streams.
    tail: Arc<tokio::sync::Mutex<Tail>>,
    /// Held for the length of every write transaction of this process.
    writing: Arc<tokio::sync::Mutex<()>>,
    /// Highest local sequence number, so live subscribers wake without polling.
    latest: watch::Sender<u64>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            path: path.display().to_string(),
            reason,
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
        let opts = durable_options(path)
            .map_err(|e| open_err(e.to_string()))?
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        let (local, queue) = mpsc::channel(4096);
        let (releases, release_queue) = mpsc::channel(4096);
        let store = Self {
            pool,
            local,
            releases,
            tail: Default::default(),
            writing: Default::default(),
            latest: watch::channel(0).0,
        };
        let latest = store.latest_seq().await?;
        store.latest.send_replace(latest);
        // The writers hold handles without the queues' senders, so they end
        // when every other handle is dropped.
        let writer = || Self {
            pool: store.pool.clone(),
            local: mpsc::channel(1).0,
            releases: mpsc::channel(1).0,
            tail: store.tail.clone(),
            writing: store.writing.clone(),
            latest: store.latest.clone(),
        };
        tokio::spawn(writer().local_writer(queue));
        tokio::spawn(writer().release_writer(release_queue));
        Ok(store)
    }

    /// Closes the pool, flushing WAL state.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Highest local sequence number (0 if empty).
    pub async fn latest_seq(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM indicators")
            .fetch_one(&self.pool)
            .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// The highest sequence number committed through this handle (no query).
    pub fn latest_known(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Number of refused envelopes recorded.
    pub async fn count_rejections(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rejections")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Number of rows in the audit ledger.
    pub async fn count_audit(&self) -> Result<u64, StoreError> {
        let n: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        Ok(n.unwrap_or(0) as u64)
    }

    /// A receiver that changes whenever new rows are committed.
    pub fn watch_latest(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    fn bump(&self, seq: u64) {
        self.latest.send_if_modified(|cur| {
            if seq > *cur {
                *cur = seq;
                true
            } else {
                false
            }
        });
    }

    /// A write transaction holding SQLite's write lock from its first
    /// statement, so read-then-write sequences (the audit chain head) cannot
    /// interleave with another writer, even in another process.
    async fn write_tx(
        &self,
    ) -> Result<
        (
            tokio::sync::OwnedMutexGuard<()>,
            sqlx::Transaction<'static, sqlx::Sqlite>,
        ),
        StoreError,
    > {
        // Writers queue here rather than in SQLite, whose busy handler
        // sleeps (up to tens of milliseconds) when it finds the lock taken.
        let guard = self.writing.clone().lock_owned().await;
        Ok((guard, self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// Appends entries to the audit ledger in their own transaction.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let (_writing, mut tx) = self.write_tx().await?;
        append_audit_tx(&mut tx, entries).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Queues the ledger entries of one batch released to `recipient`, and
    /// which indicators (origin, id) it was sent, for the next group commit,
    /// and returns at once with what resolves when they are durable, so a
    /// stream can prepare its next batch meanwhile (the batch itself is sent
    /// only after that resolves).
    pub async fn enqueue_release(
        &self,
        entries: Vec<AuditEntry>,
        recipient: &OrgId,
        sent: Vec<(String, String)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let write = ReleaseWrite {
            entries,
            recipient: recipient.clone(),
            sent,
            done,
        };
        self.releases
            .send(write)
            .await
            .map_err(|_| writer_stopped())?;
        Ok(result)
    }

    /// Commits queued release records of every partner stream in groups:
    /// one transaction for all the streams waiting at that moment.
    async fn release_writer(self, mut queue: mpsc::Receiver<ReleaseWrite>) {
        const GROUP: usize = 1024;
        let mut group = Vec::with_capacity(GROUP);
        while queue.recv_many(&mut group, GROUP).await > 0 {
            let attempt = async {
                let (_writing, mut tx) = self.write_tx().await?;
                let now = now_unix_ms();
                let entries: Vec<AuditEntry> = group
                    .iter()
                    .flat_map(|w| w.entries.iter().cloned())
                    .collect();
                append_audit_tx(&mut tx, &entries).await?;
                let sent: Vec<(&str, &str, &str)> = group
                    .iter()
                    .flat_map(|w| {
                        w.sent
                            .iter()
                            .map(move |(o, i)| (o.as_str(), i.as_str(), w.recipient.as_str()))
                    })
                    .collect();
                for chunk in sent.chunks(ROWS_PER_STATEMENT * 4) {
                    let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                        "INSERT INTO sent_to (origin_org, indicator_id, recipient, first_sent_ms) ",
                    );
                    q.push_values(chunk, |mut b, (o, i, r)| {
                        b.push_bind(o.to_string())
                            .push_bind(i.to_string())
                            .push_bind(r.to_string())
                            .push_bind(now);
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok::<(), StoreError>(())
            };
            let result = attempt.await.map_err(|e| e.to_string());
            if let Err(e) = &result {
                tracing::error!(error = %e, "group commit of release records failed");
            }
            for w in group.drain(..) {
                let _ = w
                    .done
                    .send(result.clone().map_err(|reason| StoreError::Open {
                        path: "store".into(),
                        reason,
                    }));
            }
        }
    }

    /// Which of `indicators` (origin, id) were ever sent to `recipient`.
    pub async fn sent_before(
        &self,
        recipient: &OrgId,
        indicators: &[(String, String)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        let mut out = std::collections::HashSet::new();
        for (origin, id) in indicators {
            let hit: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM sent_to WHERE origin_org = ? AND indicator_id = ? AND recipient = ?",
            )
            .bind(origin)
            .bind(id)
            .bind(recipient.as_str())
            .fetch_optional(&self.pool)
            .await?;
            if hit.is_some() {
                out.insert((origin.clone(), id.clone()));
            }
        }
        Ok(out)
    }

    /// Ledger rows, oldest first, optionally for one partner and from a time.
    pub async fn audit_rows(
        &self,
        partner: Option<&str>,
        since_ms: Option<i64>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        read_audit(&mut conn, partner, since_ms).await
    }

    /// Checks the whole ledger; `Ok(rows)` or the first bad row.
    pub async fn verify_audit(&self) -> Result<Result<u64, ChainBreak>, StoreError> {
        // Rows and head from one snapshot, so a concurrent append cannot
        // look like a truncation.
        let mut tx = self.pool.begin().await?;
        let rows = read_audit(&mut tx, None, None).await?;
        let head: Option<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(verify_chain(&rows, head.map(|(s, h)| (s as u64, h))))
    }

    /// Appends a version published here. Durable when this returns.
    /// Concurrent calls are committed together (group commit): one
    /// transaction, one fsync, for every publish waiting at that moment.
    pub async fn append_local(&self, row: &NewIndicator, actor: &str) -> Result<u64, StoreError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let write = LocalWrite {
            row: row.clone(),
            actor: actor.to_string(),
            done,
        };
        if self.local.send(write).await.is_err() {
            return Err(StoreError::Open {
                path: "store".into(),
                reason: "the store's writer has stopped".into(),
            });
        }
        result.await.unwrap_or_else(|_| {
            Err(StoreError::Open {
                path: "store".into(),
                reason: "the store's writer has stopped".into(),
            })
        })
    }

    /// Writes queued local publishes in groups until every handle of the
    /// store is gone.
    async fn local_writer(self, mut queue: mpsc::Receiver<LocalWrite>) {
        const GROUP: usize = 512;
        let mut group = Vec::with_capacity(GROUP);
        while queue.recv_many(&mut group, GROUP).await > 0 {
            let results = self.write_local_group(&group).await;
            for (w, r) in group.drain(..).zip(results) {
                let _ = w.done.send(r);
            }
        }
    }

    async fn write_local_group(&self, group: &[LocalWrite]) -> Vec<Result<u64, StoreError>> {
        let attempt = async {
            let (_writing, mut tx) = self.write_tx().await?;
            let rows: Vec<(&NewIndicator, &str)> =
                group.iter().map(|w| (&w.row, w.actor.as_str())).collect();
            let seqs = insert_local_tx(&mut tx, &rows).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(seqs)
        };
        match attempt.await {
            Ok(seqs) => {
                if let Some(max) = seqs.iter().flatten().max() {
                    self.bump(*max);
                }
                seqs.into_iter()
                    .zip(group)
                    .map(|(seq, w)| {
                        seq.ok_or_else(|| StoreError::Duplicate {
                            origin: w.row.indicator.origin_org.clone(),
                            id: w.row.indicator.id.clone(),
                            version: w.row.indicator.version,
                        })
                    })
                    .collect()
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, rows = group.len(), "group commit of local publishes failed");
                group
                    .iter()
                    .map(|_| {
                        Err(StoreError::Open {
                            path: "store".into(),
                            reason: msg.clone(),
                        })
                    })
                    .collect()
            }
        }
    }

    /// Appends many versions published here in one transaction (each with
    /// its ledger row); returns their sequence numbers. Used to load large
    /// sets (bulk import, the benchmark's backlog).
    pub async fn append_local_batch(
        &self,
        rows: &[NewIndicator],
        actor: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let refs: Vec<(&NewIndicator, &str)> = rows.iter().map(|r| (r, actor)).collect();
        let seqs = insert_local_tx(&mut tx, &refs)
            .await?
            .into_iter()
            .zip(rows)
            .map(|(seq, row)| {
                seq.ok_or_else(|| StoreError::Duplicate {
                    origin: row.indicator.origin_org.clone(),
                    id: row.indicator.id.clone(),
                    version: row.indicator.version,
                })
            })
            .collect::<Result<Vec<u64>, _>>()?;
        tx.commit().await?;
        if let Some(last) = seqs.last() {
            self.bump(*last);
        }
        Ok(seqs)
    }

    /// Highest stored version and creation time of an indicator.
    pub async fn latest_version(
        &self,
        origin: &str,
        id: &str,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let row = sqlx::query(
            "SELECT version, created_ms FROM indicators \
             WHERE origin_org = ? AND indicator_id = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(origin)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get::<i64, _>(0) as u64, r.get::<i64, _>(1))))
    }

    /// Commits a batch from `upstream`: new rows (duplicates ignored, older
    /// or far-future versions refused), rejections, envelopes waiting for
    /// their key, and the cursor, in **one** transaction. The cursor only
    /// moves forward.
    pub async fn ingest_batch(
        &self,
        upstream: &OrgId,
        rows: &[NewIndicator],
        rejections: &[Rejection],
        quarantined: &[Quarantined],
        cursor: u64,
    ) -> Result<IngestOutcome, StoreError> {
        let now = now_unix_ms();
        let mut out = IngestOutcome::default();
        let (_writing, mut tx) = self.write_tx().await?;
        let mut max_seq = 0;
        let mut audit = Vec::new();
        let mut refused: Vec<Rejection> = Vec::new();
        for verdict in admit_rows_tx(&mut tx, upstream, rows, &mut audit).await? {
            match verdict {
                Admitted::Stored(seq) => {
                    out.stored += 1;
                    max_seq = max_seq.max(seq);
                }
                Admitted::Duplicate => out.duplicates += 1,
                Admitted::Refused(r) => refused.push(r),
            }
        }
        for r in rejections.iter().chain(refused.iter()) {
            reject_tx(&mut tx, upstream, r, now, &mut audit).await?;
            out.rejected += 1;
        }
        for q in quarantined {
            let done = sqlx::query(
                "INSERT INTO quarantine (upstream_org, upstream_seq, key_id, envelope, path, received_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            )
            .bind(upstream.as_str())
            .bind(to_i64(q.upstream_seq))
            .bind(&q.key_id)
            .bind(&q.envelope)
            .bind(q.path.join(","))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                out.quarantined += 1;
                audit.push(AuditEntry {
                    event: event::QUARANTINED,
                    actor: "node".into(),
                    partner: upstream.to_string(),
                    subject: format!("{upstream} seq {}", q.upstream_seq),
                    rule: "unknown-signing-key".into(),
                    detail: format!(
                        "signed by unknown key {} (path {})",
                        q.key_id,
                        q.path.join(" > ")
                    ),
                });
            }
        }
        append_audit_tx(&mut tx, &crate::audit::coalesce(audit)).await?;
        sqlx::query(
            "INSERT INTO cursors (upstream_org, cursor, updated_ms) VALUES (?, ?, ?) \
             ON CONFLICT (upstream_org) DO UPDATE SET cursor = excluded.cursor, updated_ms = excluded.updated_ms \
             WHERE excluded.cursor > cursors.cursor",
        )
        .bind(upstream.as_str())
        .bind(to_i64(cursor))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if max_seq > 0 {
            self.bump(max_seq);
        }
        Ok(out)
    }

    /// Replaces a partner's card with a newer one that arrived through the
    /// mesh (the caller checked its succession), keys included; endpoint,
    /// policy, state and introducer flag are kept.
    pub async fn update_peer_card(
        &self,
        card: &VerifiedCard,
        card_bytes: &[u8],
        via: &OrgId,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        replace_keys_tx(&mut tx, card).await?;
        sqlx::query(
            "UPDATE peers SET display_name = ?, card = ?, card_version = ?, ca_bundle_pem = ?, updated_ms = ? \
             WHERE org_id = ?",
        )
        .bind(&card.card.display_name)
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(&card.card.ca_bundle_pem)
        .bind(now_unix_ms())
        .bind(card.org.as_str())
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::CARD_UPDATED,
                actor: "node".into(),
                partner: card.org.to_string(),
                subject: format!("card v{}", card.card.version),
                rule: "signed-by-current-key".into(),
                detail: format!("via {via}"),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Cards of non-partner orgs, by org id.
    pub async fn directory(&self) -> Result<Vec<DirectoryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT org_id, card, card_version, state, via, updated_ms FROM org_cards ORDER BY org_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let org: String = r.get(0);
                let state: String = r.get(3);
                Ok(DirectoryRow {
                    org: OrgId::parse(&org)
                        .map_err(|e| StoreError::Corrupt(format!("org_cards.org_id: {e}")))?,
                    card: r.get(1),
                    version: r.get::<i64, _>(2) as u64,
                    state: match state.as_str() {
                        "accepted" => CardState::Accepted,
                        "pending" => CardState::Pending,
                        other => {
                            return Err(StoreError::Corrupt(format!("org_cards.state '{other}'")));
                        }
                    },
                    via: r.get(4),
                    updated_ms: r.get(5),
                })
            })
            .collect()
    }

    /// Stores a card of a non-partner org in `state` (the caller checked its
    /// signature, and its succession if one was trusted before); an accepted
    /// card's keys become trusted. `event` and `actor` go to the ledger.
    pub async fn put_directory_card(
        &self,
        card: &VerifiedCard,
        card_bytes: &[u8],
        state: CardState,
        via: &str,
        event: &'static str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        if state == CardState::Accepted {
            replace_keys_tx(&mut tx, card).await?;
        }
        sqlx::query(
            "INSERT INTO org_cards (org_id, card, card_version, state, via, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (org_id) DO UPDATE SET card = ?2, card_version = ?3, state = ?4, via = ?5, updated_ms = ?6",
        )
        .bind(card.org.as_str())
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(state.as_str())
        .bind(via)
        .bind(now_unix_ms())
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event,
                actor: actor.to_string(),
                partner: card.org.to_string(),
                subject: format!("card v{}", card.card.version),
                rule: String::new(),
                detail: format!(
                    "via {via}; keys {}",
                    card.keys
                        .iter()
                        .map(|k| k.key_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Our own signing keys (current and retired), oldest first.
    pub async fn own_signing_keys(&self) -> Result<Vec<OwnKeyRow>, StoreError> {
        let rows: Vec<(String, Vec<u8>, i64, i64, i64)> = sqlx::query_as(
            "SELECT key_id, public_key, not_before_ms, not_after_ms, revoked_ms FROM own_signing_keys \
             ORDER BY not_before_ms, key_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(key_id, public_key, not_before_ms, not_after_ms, revoked_ms)| OwnKeyRow {
                    key_id,
                    public_key,
                    not_before_ms,
                    not_after_ms,
                    revoked_ms,
                },
            )
            .collect())
    }

    /// Records `key` as one of our signing keys if it is not yet (the key
    /// `init` made, on first start).
    pub async fn ensure_own_key(&self, key_id: &str, public_key: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO own_signing_keys (key_id, public_key, not_before_ms, not_after_ms) \
             VALUES (?, ?, 0, 0) ON CONFLICT DO NOTHING",
        )
        .bind(key_id)
        .bind(public_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Retires `old` at `at_ms` and records `new` as our current key from
    /// then on.
    pub async fn rotate_own_key(
        &self,
        old: &str,
        new: &str,
        new_public: &[u8],
        at_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        sqlx::query("UPDATE own_signing_keys SET not_after_ms = ? WHERE key_id = ?")
            .bind(at_ms)
            .bind(old)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO own_signing_keys (key_id, public_key, not_before_ms, not_after_ms) VALUES (?, ?, ?, 0)",
        )
        .bind(new)
        .bind(new_public)
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::SIGNING_KEY,
                actor: actor.to_string(),
                partner: String::new(),
                subject: format!("rotated {old} -> {new}"),
                rule: String::new(),
                detail: format!("{old} signs nothing dated from {at_ms} (Unix ms) on"),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Revokes one of our retired signing keys.
    pub async fn revoke_own_key(&self, key_id: &str, actor: &str) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT not_after_ms, revoked_ms FROM own_signing_keys WHERE key_id = ?",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            None => {
                return Err(StoreError::NotFound(format!(
                    "key_id: {key_id} is not one of this org's signing keys"
                )));
            }
            Some((0, _)) => {
                return Err(StoreError::Conflict(format!(
                    "{key_id} is the current signing key; rotate first, then revoke the old key"
                )));
            }
            Some((_, r)) if r != 0 => {
                return Err(StoreError::Conflict(format!("{key_id} is already revoked")));
            }
            Some(_) => {}
        }
        sqlx::query("UPDATE own_signing_keys SET revoked_ms = ? WHERE key_id = ?")
            .bind(now_unix_ms())
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::SIGNING_KEY,
                actor: actor.to_string(),
                partner: String::new(),
                subject: format!("revoked {key_id}"),
                rule: String::new(),
                detail: "nothing newly received under it is accepted".into(),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// How many envelopes wait in quarantine, per partner they came from.
    pub async fn quarantine_counts(
        &self,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT upstream_org, COUNT(*) FROM quarantine GROUP BY upstream_org")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(o, n)| (o, n as u64)).collect())
    }

    /// Every envelope waiting in quarantine, oldest first.
    pub async fn quarantine(&self) -> Result<Vec<QuarantineRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, upstream_org, upstream_seq, key_id, envelope, path, received_ms \
             FROM quarantine ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let up: String = r.get(1);
                Ok(QuarantineRow {
                    id: r.get(0),
                    upstream: OrgId::parse(&up).map_err(|e| {
                        StoreError::Corrupt(format!("quarantine.upstream_org: {e}"))
                    })?,
                    upstream_seq: r.get::<i64, _>(2) as u64,
                    key_id: r.get(3),
                    envelope: r.get(4),
                    path: split_path(&r.get::<String, _>(5)),
                    received_ms: r.get(6),
                })
            })
            .collect()
    }

    /// Settles one quarantined envelope whose key has arrived: stores it (as
    /// received from its upstream) or records the refusal, and removes it
    /// from quarantine, in one transaction. Returns whether it was stored.
    pub async fn resolve_quarantine(
        &self,
        q: &QuarantineRow,
        outcome: Result<NewIndicator, Rejection>,
    ) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let mut audit = Vec::new();
        let mut stored = None;
        match outcome {
            Ok(row) => match admit_row_tx(&mut tx, &q.upstream, &row, &mut audit).await? {
                Admitted::Stored(seq) => stored = Some(seq),
                Admitted::Duplicate => {}
                Admitted::Refused(r) => {
                    reject_tx(&mut tx, &q.upstream, &r, now_unix_ms(), &mut audit).await?
                }
            },
            Err(r) => reject_tx(&mut tx, &q.upstream, &r, now_unix_ms(), &mut audit).await?,
        }
        sqlx::query("DELETE FROM quarantine WHERE id = ?")
            .bind(q.id)
            .execute(&mut *tx)
            .await?;
        append_audit_tx(&mut tx, &audit).await?;
        tx.commit().await?;
        if let Some(seq) = stored {
            self.bump(seq);
        }
        Ok(stored.is_some())
    }

    /// Drops quarantined envelopes received before `before_ms` (their key
    /// never arrived), each with a ledger row. Returns how many.
    pub async fn expire_quarantine(&self, before_ms: i64) -> Result<u64, StoreError> {
        // Runs every refresh tick: only take the write lock when there is
        // something to drop.
        let due: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM quarantine WHERE received_ms < ? LIMIT 1")
                .bind(before_ms)
                .fetch_optional(&self.pool)
                .await?;
        if due.is_none() {
            return Ok(0);
        }
        let (_writing, mut tx) = self.write_tx().await?;
        let rows: Vec<(i64, String, i64, String)> = sqlx::query_as(
            "SELECT id, upstream_org, upstream_seq, key_id FROM quarantine WHERE received_ms < ?",
        )
        .bind(before_ms)
        .fetch_all(&mut *tx)
        .await?;
        let mut audit = Vec::new();
        for (id, up, seq, key) in &rows {
            sqlx::query("DELETE FROM quarantine WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            audit.push(AuditEntry {
                event: event::QUARANTINE_EXPIRED,
                actor: "node".into(),
                partner: up.clone(),
                subject: format!("{up} seq {seq}"),
                rule: "signing-key-never-arrived".into(),
                detail: format!("key {key} unknown until the quarantine time ran out; dropped"),
            });
        }
        append_audit_tx(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The committed cursor for `upstream` (0 if never subscribed).
    pub async fn cursor(&self, upstream: &OrgId) -> Result<u64, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT cursor FROM cursors WHERE upstream_org = ?")
                .bind(upstream.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(0) as u64)
    }

    /// Up to `limit` rows with `seq > after`, in order.
    pub async fn read_after(
        &self,
        after: u64,
        limit: u32,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let limit = limit as usize;
        let tail = self.tail.lock().await;
        let first = tail.rows.front().map(|r| r.seq);
        let last = tail.rows.back().map(|r| r.seq);
        // Served from the shared tail when it covers `after + 1` onwards...
        if let (Some(first), Some(last)) = (first, last)
            && first <= after.saturating_add(1)
            && after < last
        {
            let skip = tail.rows.partition_point(|r| r.seq <= after);
            return Ok(tail.rows.iter().skip(skip).take(limit).cloned().collect());
        }
        // ...else read from the store. Rows that directly follow the tail
        // extend it (a reader beyond the tail starts it afresh), decoded once
        // for every reader; the lock is held meanwhile so concurrent readers
        // of the same new rows wait for this read instead of repeating it.
        // Readers behind the tail (catching up) read without it.
        let mut tail = last.is_none_or(|l| l <= after).then_some(tail);
        let rows = sqlx::query(
            "SELECT seq, origin_org, indicator_id, version, received_from, envelope, stored_ms, path, revoked \
             FROM indicators WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(to_i64(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut rows: Vec<StoredIndicator> = rows.iter().map(stored_from_row).collect();
        if let Some(t) = tail.as_mut()
            && !rows.is_empty()
        {
            if t.rows.back().is_some_and(|r| r.seq != after) {
                t.rows.clear();
            }
            for r in &mut rows {
                r.decoded = decode_indicator(&r.envelope).map(Arc::new);
            }
            t.rows.extend(rows.iter().cloned());
            while t.rows.len() > TAIL_ROWS {
                t.rows.pop_front();
            }
        }
        Ok(rows)
    }

    /// Every stored version of `origin`'s indicators (or all, if `None`), in order.
    pub async fn indicators(
        &self,
        origin: Option<&str>,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, origin_org, indicator_id, version, received_from, envelope, stored_ms, path, revoked \
             FROM indicators WHERE (?1 IS NULL OR origin_org = ?1) ORDER BY seq",
        )
        .bind(origin)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(stored_from_row).collect())
    }

    /// Number of stored indicator versions.
    pub async fn count_indicators(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM indicators")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// Rejected envelopes, oldest first.
    pub async fn rejections(&self) -> Result<Vec<RejectionRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT upstream_org, upstream_seq, code, reason, rejected_ms FROM rejections ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| RejectionRecord {
                upstream_org: r.get(0),
                upstream_seq: r.get::<i64, _>(1) as u64,
                code: r.get(2),
                reason: r.get(3),
                rejected_ms: r.get(4),
            })
            .collect())
    }

    /// Registers or updates a partner from its verified card. A card older
    /// than the stored one is refused (rollback), and a signing key already
    /// registered for another org is refused.
    pub async fn put_peer(
        &self,
        card: &VerifiedCard,
        card_bytes: &[u8],
        endpoint: &str,
        policy: Option<&str>,
        introducer: bool,
        actor: &str,
    ) -> Result<PeerChange, StoreError> {
        let now = now_unix_ms();
        let (_writing, mut tx) = self.write_tx().await?;
        if let Some(name) = policy {
            require_policy(&mut tx, name).await?;
        }
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT card_version FROM peers WHERE org_id = ?")
                .bind(card.org.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(v) = existing
            && (v as u64) > card.card.version
        {
            return Err(StoreError::Conflict(format!(
                "card for {} has version {} but version {v} is already registered",
                card.org, card.card.version
            )));
        }
        check_key_owners_tx(&mut tx, card).await?;
        sqlx::query(
            "INSERT INTO peers (org_id, display_name, endpoint, card, card_version, ca_bundle_pem, added_ms, updated_ms, introducer) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) \
             ON CONFLICT (org_id) DO UPDATE SET display_name = excluded.display_name, \
             endpoint = excluded.endpoint, card = excluded.card, card_version = excluded.card_version, \
             ca_bundle_pem = excluded.ca_bundle_pem, updated_ms = excluded.updated_ms, state = 'active', \
             introducer = excluded.introducer",
        )
        .bind(card.org.as_str())
        .bind(&card.card.display_name)
        .bind(endpoint)
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(&card.card.ca_bundle_pem)
        .bind(now)
        .bind(introducer)
        .execute(&mut *tx)
        .await?;
        replace_keys_tx(&mut tx, card).await?;
        // A partner's card supersedes any copy that came through the mesh.
        sqlx::query("DELETE FROM org_cards WHERE org_id = ?")
            .bind(card.org.as_str())
            .execute(&mut *tx)
            .await?;
        let mut audit = vec![AuditEntry {
            event: event::PEER_REGISTERED,
            actor: actor.to_string(),
            partner: card.org.to_string(),
            subject: format!("card v{}", card.card.version),
            rule: String::new(),
            detail: format!("endpoint '{endpoint}', introducer {introducer}"),
        }];
        if let Some(name) = policy {
            bind_policy(&mut tx, &card.org, name).await?;
            audit.push(policy_binding_entry(&card.org, name, actor));
        }
        append_audit_tx(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(if existing.is_some() {
            PeerChange::Updated
        } else {
            PeerChange::Added
        })
    }

    /// All registered partners, by org id.
    pub async fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT org_id, display_name, endpoint, card_version, ca_bundle_pem, added_ms, policy, state, \
             introducer, card FROM peers ORDER BY org_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let org: String = r.get(0);
                Ok(PeerRecord {
                    org: OrgId::parse(&org)
                        .map_err(|e| StoreError::Corrupt(format!("peers.org_id: {e}")))?,
                    display_name: r.get(1),
                    endpoint: r.get(2),
                    card_version: r.get::<i64, _>(3) as u64,
                    ca_bundle_pem: r.get(4),
                    added_ms: r.get(5),
                    policy: r.get(6),
                    state: PeerState::parse(&r.get::<String, _>(7))?,
                    introducer: r.get::<i64, _>(8) != 0,
                    card: r.get(9),
                })
            })
            .collect()
    }

    /// Stores `document` as the next version of policy `name`, unless it is
    /// identical to the latest version. Returns the version and whether a
    /// new one was written. The caller validates the document first.
    pub async fn apply_policy(
        &self,
        name: &str,
        document: &str,
        actor: &str,
    ) -> Result<(u64, bool), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let latest: Option<(i64, String)> = sqlx::query_as(
            "SELECT version, document FROM policies WHERE name = ? ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((v, doc)) = &latest
            && doc == document
        {
            return Ok((*v as u64, false));
        }
        let version = latest.map(|(v, _)| v as u64).unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO policies (name, version, document, applied_ms, applied_by) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(to_i64(version))
        .bind(document)
        .bind(now_unix_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::POLICY_APPLIED,
                actor: actor.to_string(),
                partner: String::new(),
                subject: format!("{name}@{version}"),
                rule: String::new(),
                detail: String::new(),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok((version, true))
    }

    /// A policy version (the latest when `version` is `None`).
    pub async fn policy(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT name, version, document, applied_ms, applied_by FROM policies \
             WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
        )
        .bind(name)
        .bind(version.map(to_i64))
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(policy_from_row))
    }

    /// The latest version of every policy, by name.
    pub async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.name, p.version, p.document, p.applied_ms, p.applied_by FROM policies p \
             WHERE p.version = (SELECT MAX(version) FROM policies q WHERE q.name = p.name) ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(policy_from_row).collect())
    }

    /// Binds partner `org` to policy `name` (which must exist).
    pub async fn set_peer_policy(
        &self,
        org: &OrgId,
        name: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        require_policy(&mut tx, name).await?;
        bind_policy(&mut tx, org, name).await?;
        append_audit_tx(&mut tx, &[policy_binding_entry(org, name, actor)]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Suspends, resumes or removes a partner. Cursor, history and card are
    /// kept in every state.
    pub async fn set_peer_state(
        &self,
        org: &OrgId,
        state: PeerState,
        actor: &str,
    ) -> Result<PeerState, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let before: Option<String> = sqlx::query_scalar("SELECT state FROM peers WHERE org_id = ?")
            .bind(org.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(before) = before else {
            return Err(StoreError::NotFound(format!(
                "{org} is not a registered partner"
            )));
        };
        let before = PeerState::parse(&before)?;
        if before == PeerState::Removed && state == PeerState::Active {
            return Err(StoreError::Conflict(format!(
                "{org} was removed; register it again with `threatmesh peer add --card FILE`"
            )));
        }
        sqlx::query("UPDATE peers SET state = ?, updated_ms = ? WHERE org_id = ?")
            .bind(state.as_str())
            .bind(now_unix_ms())
            .bind(org.as_str())
            .execute(&mut *tx)
            .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::PEER_STATE,
                actor: actor.to_string(),
                partner: org.to_string(),
                subject: state.as_str().to_string(),
                rule: String::new(),
                detail: format!("was {}", before.as_str()),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(before)
    }

    /// Records one of our own certificates as revoked. Idempotent.
    pub async fn revoke_cert(
        &self,
        serial: &str,
        spiffe_id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO revoked_certs (serial, spiffe_id, reason, revoked_ms, revoked_by) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
        )
        .bind(serial)
        .bind(spiffe_id)
        .bind(reason)
        .bind(now_unix_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        let new = done.rows_affected() == 1;
        if new {
            append_audit_tx(
                &mut tx,
                &[AuditEntry {
                    event: event::CERT_REVOKED,
                    actor: actor.to_string(),
                    partner: String::new(),
                    subject: format!("{spiffe_id} serial {serial}"),
                    rule: String::new(),
                    detail: reason.to_string(),
                }],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Serials of our own revoked certificates, sorted.
    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT serial FROM revoked_certs ORDER BY serial")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The latest stored version of indicator `id` (any origin).
    pub async fn indicator_by_id(&self, id: &str) -> Result<Option<StoredIndicator>, StoreError> {
        let row = sqlx::query(
            "SELECT seq, origin_org, indicator_id, version, received_from, envelope, stored_ms, path, revoked \
             FROM indicators WHERE indicator_id = ? ORDER BY version DESC, seq DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(stored_from_row))
    }

    /// All partners' signing keys.
    pub async fn signing_keys(&self) -> Result<Vec<KnownKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT key_id, org_id, public_key, not_before_ms, not_after_ms, revoked FROM signing_keys",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let org: String = r.get(1);
                Ok(KnownKey {
                    key_id: r.get(0),
                    org: OrgId::parse(&org)
                        .map_err(|e| StoreError::Corrupt(format!("signing_keys.org_id: {e}")))?,
                    public_key: r.get(2),
                    not_before_ms: r.get(3),
                    not_after_ms: r.get(4),
                    revoked: r.get::<bool, _>(5),
                })
            })
            .collect()
    }

    /// Changes a partner's dial endpoint and/or introducer flag.
    pub async fn update_peer(
        &self,
        org: &OrgId,
        endpoint: Option<&str>,
        introducer: Option<bool>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let row: Option<(String, i64)> =
            sqlx::query_as("SELECT endpoint, introducer FROM peers WHERE org_id = ?")
                .bind(org.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        let Some((old_ep, old_intro)) = row else {
            return Err(StoreError::NotFound(format!(
                "{org} is not a registered partner"
            )));
        };
        let ep = endpoint.unwrap_or(&old_ep);
        let intro = introducer.unwrap_or(old_intro != 0);
        sqlx::query(
            "UPDATE peers SET endpoint = ?, introducer = ?, updated_ms = ? WHERE org_id = ?",
        )
        .bind(ep)
        .bind(intro)
        .bind(now_unix_ms())
        .bind(org.as_str())
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::PEER_UPDATED,
                actor: actor.to_string(),
                partner: org.to_string(),
                subject: format!("endpoint '{ep}', introducer {intro}"),
                rule: String::new(),
                detail: format!("was endpoint '{old_ep}', introducer {}", old_intro != 0),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every version of policy `name`, oldest first.
    pub async fn policy_history(&self, name: &str) -> Result<Vec<PolicyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, version, document, applied_ms, applied_by FROM policies \
             WHERE name = ? ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(policy_from_row).collect())
    }

    /// Records a certificate of our own org (issued now, or found in the
    /// configuration). Returns false if it was known already.
    pub async fn record_cert(&self, cert: &CertRow, actor: &str) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let done = sqlx::query(
            "INSERT INTO certificates (serial, spiffe_id, not_before_ms, not_after_ms, issued_ms, issued_by, pem) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",
        )
        .bind(&cert.serial)
        .bind(&cert.spiffe_id)
        .bind(cert.not_before_ms)
        .bind(cert.not_after_ms)
        .bind(cert.issued_ms)
        .bind(&cert.issued_by)
        .bind(&cert.pem)
        .execute(&mut *tx)
        .await?;
        let new = done.rows_affected() == 1;
        if new {
            append_audit_tx(
                &mut tx,
                &[AuditEntry {
                    event: event::CERT_ISSUED,
                    actor: actor.to_string(),
                    partner: String::new(),
                    subject: format!("{} serial {}", cert.spiffe_id, cert.serial),
                    rule: String::new(),
                    detail: format!("valid until {} (Unix ms)", cert.not_after_ms),
                }],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Certificates of our own org, newest first, with their revocation.
    pub async fn certs(&self) -> Result<Vec<CertRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.serial, c.spiffe_id, c.not_before_ms, c.not_after_ms, c.issued_ms, c.issued_by, c.pem, \
             r.revoked_ms, r.reason FROM certificates c LEFT JOIN revoked_certs r ON r.serial = c.serial \
             ORDER BY c.issued_ms DESC, c.serial",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| CertRow {
                serial: r.get(0),
                spiffe_id: r.get(1),
                not_before_ms: r.get(2),
                not_after_ms: r.get(3),
                issued_ms: r.get(4),
                issued_by: r.get(5),
                pem: r.get(6),
                revoked: r
                    .get::<Option<i64>, _>(7)
                    .map(|at| (at, r.get::<Option<String>, _>(8).unwrap_or_default())),
            })
            .collect())
    }

    /// Our revoked certificates with when they were revoked, for our CRL.
    pub async fn revocations(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT serial, revoked_ms FROM revoked_certs ORDER BY serial")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The next number for our own CRL (1, 2, ...), recorded on the ledger
    /// as signed by `actor` with `revoked` entries.
    pub async fn next_crl_number(&self, revoked: usize, actor: &str) -> Result<u64, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let n: i64 = sqlx::query_scalar(
            "INSERT INTO crl_counter (id, number) VALUES (1, 1) \
             ON CONFLICT (id) DO UPDATE SET number = number + 1 RETURNING number",
        )
        .fetch_one(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::CRL_SIGNED,
                actor: actor.to_string(),
                partner: String::new(),
                subject: format!("CRL number {n}"),
                rule: String::new(),
                detail: format!("{revoked} revoked"),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(n as u64)
    }

    /// Stores a partner's verified CRL, replacing the previous one unless the
    /// new one is older (thisUpdate), which is refused as a rollback.
    pub async fn put_partner_crl(
        &self,
        org: &OrgId,
        der: &[u8],
        this_update_ms: i64,
        summary: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM peers WHERE org_id = ?")
            .bind(org.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if known.is_none() {
            return Err(StoreError::NotFound(format!(
                "{org} is not a registered partner"
            )));
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT this_update_ms FROM partner_crls WHERE org_id = ?")
                .bind(org.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(cur) = current
            && cur > this_update_ms
        {
            return Err(StoreError::Conflict(format!(
                "this CRL of {org} (thisUpdate {this_update_ms}) is older than the one already imported (thisUpdate {cur})"
            )));
        }
        sqlx::query(
            "INSERT INTO partner_crls (org_id, der, this_update_ms, imported_ms, imported_by) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (org_id) DO UPDATE SET der = ?2, this_update_ms = ?3, imported_ms = ?4, imported_by = ?5",
        )
        .bind(org.as_str())
        .bind(der)
        .bind(this_update_ms)
        .bind(now_unix_ms())
        .bind(actor)
        .execute(&mut *tx)
        .await?;
        append_audit_tx(
            &mut tx,
            &[AuditEntry {
                event: event::CRL_IMPORTED,
                actor: actor.to_string(),
                partner: org.to_string(),
                subject: format!("thisUpdate {this_update_ms}"),
                rule: String::new(),
                detail: summary.to_string(),
            }],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every partner's imported CRL.
    pub async fn partner_crls(&self) -> Result<Vec<CrlRow>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> =
            sqlx::query_as("SELECT org_id, der FROM partner_crls ORDER BY org_id")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(org, der)| {
                Ok(CrlRow {
                    org: OrgId::parse(&org)
                        .map_err(|e| StoreError::Corrupt(format!("partner_crls.org_id: {e}")))?,
                    der,
                })
            })
            .collect()
    }
}

fn stored_from_row(r: &sqlx::sqlite::SqliteRow) -> StoredIndicator {
    let from: String = r.get(4);
    StoredIndicator {
        seq: r.get::<i64, _>(0) as u64,
        origin_org: r.get(1),
        indicator_id: r.get(2),
        version: r.get::<i64, _>(3) as u64,
        received_from: (!from.is_empty()).then_some(from),
        envelope: r.get(5),
        stored_ms: r.get(6),
        path: split_path(&r.get::<String, _>(7)),
        revoked: r.get::<bool, _>(8),
        decoded: None,
    }
}

/// The indicator inside a stored envelope (stored bytes were verified or
/// signed before they were written).
fn decode_indicator(envelope: &[u8]) -> Option<Indicator> {
    use prost::Message;
    let env = crate::proto::v1::Envelope::decode(envelope).ok()?;
    (env.payload_type == crate::signing::INDICATOR_PAYLOAD_TYPE)
        .then(|| Indicator::decode(env.payload.as_slice()).ok())
        .flatten()
}

/// A stored path ("a.example,b.example") as org ids.
fn split_path(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(str::to_string).collect()
    }
}

/// Most a version may jump above the newest one held (a "far-future"
/// version would block every later update by the origin).
pub const MAX_VERSION_STEP: u64 = 1_000_000;

/// Rows per multi-row statement: each statement is one round trip to the
/// database thread, which is what bounds write throughput, not SQLite.
const ROWS_PER_STATEMENT: usize = 64;

/// Inserts many versions with multi-row statements; per row, its sequence
/// number, or `None` when (origin, id, version) was already stored.
async fn insert_indicators(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[&NewIndicator],
    received_from: &str,
) -> Result<Vec<Option<u64>>, StoreError> {
    let now = now_unix_ms();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO indicators (origin_org, indicator_id, version, received_from, envelope, kind, value, \
             tlp, confidence, created_ms, modified_ms, revoked, stored_ms, path) ",
        );
        q.push_values(chunk, |mut b, row| {
            let i = &row.indicator;
            b.push_bind(i.origin_org.clone())
                .push_bind(i.id.clone())
                .push_bind(to_i64(i.version))
                .push_bind(received_from.to_string())
                .push_bind(row.envelope.clone())
                .push_bind(i.kind)
                .push_bind(i.value.clone())
                .push_bind(i.marking.as_ref().map(|m| m.tlp).unwrap_or(0))
                .push_bind(i64::from(i.confidence))
                .push_bind(i.created_unix_ms)
                .push_bind(i.modified_unix_ms)
                .push_bind(i.revoked)
                .push_bind(now)
                .push_bind(row.path.join(","));
        });
        q.push(
            " ON CONFLICT (origin_org, indicator_id, version) DO NOTHING \
             RETURNING seq, origin_org, indicator_id, version",
        );
        let inserted: Vec<(i64, String, String, i64)> =
            q.build_query_as().fetch_all(&mut **tx).await?;
        let by_key: std::collections::HashMap<(&str, &str, i64), i64> = inserted
            .iter()
            .map(|(seq, o, i, v)| ((o.as_str(), i.as_str(), *v), *seq))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for row in chunk {
            let i = &row.indicator;
            let key = (i.origin_org.as_str(), i.id.as_str(), to_i64(i.version));
            // The same version twice in one statement is stored once.
            let seq = by_key
                .get(&key)
                .filter(|_| seen.insert(key))
                .map(|s| *s as u64);
            out.push(seq);
        }
    }
    Ok(out)
}

/// The newest version held of each (origin, id), looked up in groups.
async fn held_versions(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    keys: &[(String, String)],
) -> Result<std::collections::HashMap<(String, String), u64>, StoreError> {
    let mut out = std::collections::HashMap::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT * 4) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT origin_org, indicator_id, MAX(version) FROM indicators WHERE (origin_org, indicator_id) IN (VALUES ",
        );
        let mut sep = q.separated(", ");
        for (o, i) in chunk {
            sep.push("(")
                .push_bind_unseparated(o.clone())
                .push_unseparated(", ")
                .push_bind_unseparated(i.clone())
                .push_unseparated(")");
        }
        q.push(") GROUP BY origin_org, indicator_id");
        let rows: Vec<(String, String, i64)> = q.build_query_as().fetch_all(&mut **tx).await?;
        for (o, i, v) in rows {
            out.insert((o, i), v as u64);
        }
    }
    Ok(out)
}

fn subject_of(i: &Indicator) -> String {
    format!("{}/{}#{}", i.origin_org, i.id, i.version)
}

fn policy_from_row(r: &sqlx::sqlite::SqliteRow) -> PolicyRecord {
    PolicyRecord {
        name: r.get(0),
        version: r.get::<i64, _>(1) as u64,
        document: r.get(2),
        applied_ms: r.get(3),
        applied_by: r.get(4),
    }
}

async fn require_policy(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    name: &str,
) -> Result<(), StoreError> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM policies WHERE name = ? LIMIT 1")
        .bind(name)
        .fetch_optional(&mut **tx)
        .await?;
    if exists.is_none() {
        return Err(StoreError::NotFound(format!(
            "no policy named '{name}' has been applied (use `threatmesh policy apply FILE` first)"
        )));
    }
    Ok(())
}

async fn bind_policy(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    org: &OrgId,
    name: &str,
) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE peers SET policy = ?, updated_ms = ? WHERE org_id = ?")
        .bind(name)
        .bind(now_unix_ms())
        .bind(org.as_str())
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!(
            "{org} is not a registered partner"
        )));
    }
    Ok(())
}

fn policy_binding_entry(org: &OrgId, name: &str, actor: &str) -> AuditEntry {
    AuditEntry {
        event: event::PEER_POLICY,
        actor: actor.to_string(),
        partner: org.to_string(),
        subject: name.to_string(),
        rule: String::new(),
        detail: String::new(),
    }
}

/// Appends entries to the chain inside `tx` (which holds the write lock).
async fn append_audit_tx(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    entries: &[AuditEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let head: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (mut seq, mut prev) = head
        .map(|(s, h)| (s as u64, h))
        .unwrap_or((0, crate::audit::GENESIS.to_vec()));
    let now = now_unix_ms();
    let mut rows = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let hash = row_hash(
            &prev, seq, now, e.event, &e.actor, &e.partner, &e.subject, &e.rule, &e.detail,
        )
        .to_vec();
        rows.push((seq, e, std::mem::replace(&mut prev, hash.clone()), hash));
    }
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO audit (seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash) ",
        );
        q.push_values(chunk, |mut b, (seq, e, prev, hash)| {
            b.push_bind(to_i64(*seq))
                .push_bind(now)
                .push_bind(e.event)
                .push_bind(e.actor.clone())
                .push_bind(e.partner.clone())
                .push_bind(e.subject.clone())
                .push_bind(e.rule.clone())
                .push_bind(e.detail.clone())
                .push_bind(prev.clone())
                .push_bind(hash.clone());
        });
        q.build().execute(&mut **tx).await?;
    }
    sqlx::query(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
         ON CONFLICT (id) DO UPDATE SET seq = ?1, hash = ?2",
    )
    .bind(to_i64(seq))
    .bind(prev.as_slice())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn read_audit(
    conn: &mut sqlx::SqliteConnection,
    partner: Option<&str>,
    since_ms: Option<i64>,
) -> Result<Vec<AuditRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, event, actor, partner, subject, rule, detail, prev_hash, hash FROM audit \
         WHERE (?1 IS NULL OR partner = ?1) AND (?2 IS NULL OR at_ms >= ?2) ORDER BY seq",
    )
    .bind(partner)
    .bind(since_ms)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| AuditRow {
            seq: r.get::<i64, _>(0) as u64,
            at_ms: r.get(1),
            entry: AuditEntryOwned {
                event: r.get(2),
                actor: r.get(3),
                partner: r.get(4),
                subject: r.get(5),
                rule: r.get(6),
                detail: r.get(7),
            },
            prev_hash: r.get(8),
            hash: r.get(9),
        })
        .collect())
}
