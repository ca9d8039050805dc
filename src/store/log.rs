//! The append-only indicator log: versions published here (group commit),
//! reads by sequence number, and the shared tail of the newest rows.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot, watch};

use super::db::{on, sql};
use super::publish_keys::{Appended, PublishKey};
use super::{ROWS_PER_STATEMENT, Store, StoreError, Tx, WriteLock, to_i64};
use crate::audit::AuditEntry;
use crate::proto::v1::Indicator;

/// Which versions of each indicator a read selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The newest held.
    Latest,
    /// The oldest held.
    Earliest,
    /// Every one.
    All,
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

impl NewIndicator {
    /// The ledger subject of this version.
    pub fn subject(&self) -> String {
        let i = &self.indicator;
        AuditEntry::indicator_subject(&i.origin_org, &i.id, i.version)
    }

    fn duplicate(&self) -> StoreError {
        StoreError::Duplicate {
            origin: self.indicator.origin_org.clone(),
            id: self.indicator.id.clone(),
            version: self.indicator.version,
        }
    }
}

/// The indicator decoded from a stored row's envelope, filled in once by
/// the first reader that needs it and shared by every copy of the row (the
/// tail hands the same cell to every live stream).
pub type DecodedCell = Arc<OnceLock<Result<Arc<Indicator>, String>>>;

/// A stored indicator version, as read: cheap to clone (one shared row),
/// because the shared tail hands the same rows to every live stream.
#[derive(Debug, Clone)]
pub struct StoredIndicator(Arc<StoredRow>);

impl std::ops::Deref for StoredIndicator {
    type Target = StoredRow;
    fn deref(&self) -> &StoredRow {
        &self.0
    }
}

/// The columns of a stored indicator version (see [`StoredIndicator`]).
#[derive(Debug)]
pub struct StoredRow {
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
    /// Envelope bytes exactly as signed, shared by every copy of the row
    /// (the tail, each stream, each delivery).
    pub envelope: prost::bytes::Bytes,
    /// When this node stored it.
    pub stored_ms: i64,
    /// Orgs it passed through before reaching us, origin first (empty when
    /// published here).
    pub path: Vec<String>,
    /// Whether this version revokes the indicator.
    pub revoked: bool,
    /// The decoded indicator, once a reader decoded it.
    pub decoded: DecodedCell,
}

/// An `indicators` row as read.
#[derive(sqlx::FromRow)]
pub(super) struct IndicatorRow {
    #[sqlx(try_from = "i64")]
    seq: u64,
    origin_org: String,
    indicator_id: String,
    #[sqlx(try_from = "i64")]
    version: u64,
    received_from: String,
    envelope: Vec<u8>,
    stored_ms: i64,
    path: String,
    revoked: bool,
}

impl From<IndicatorRow> for StoredIndicator {
    fn from(r: IndicatorRow) -> Self {
        Self(Arc::new(StoredRow {
            seq: r.seq,
            origin_org: r.origin_org,
            indicator_id: r.indicator_id,
            version: r.version,
            received_from: (!r.received_from.is_empty()).then_some(r.received_from),
            envelope: r.envelope.into(),
            stored_ms: r.stored_ms,
            path: split_path(&r.path),
            revoked: r.revoked,
            decoded: Default::default(),
        }))
    }
}

impl StoredIndicator {
    /// `row` as stored under `seq` at `stored_ms` by this process (from
    /// `received_from`, "" when published here), its decoded indicator
    /// already known.
    pub(super) fn written(
        seq: u64,
        row: &NewIndicator,
        received_from: &str,
        stored_ms: i64,
    ) -> Self {
        let i = &row.indicator;
        Self(Arc::new(StoredRow {
            seq,
            origin_org: i.origin_org.clone(),
            indicator_id: i.id.clone(),
            version: i.version,
            received_from: (!received_from.is_empty()).then(|| received_from.to_string()),
            envelope: row.envelope.clone().into(),
            stored_ms,
            path: row.path.clone(),
            revoked: i.revoked,
            decoded: Arc::new(OnceLock::from(Ok(Arc::new(i.clone())))),
        }))
    }
}

/// `SELECT` of the columns [`IndicatorRow`] reads, then `$rest`.
macro_rules! select_indicators {
    ($rest:literal) => {
        concat!(
            "SELECT seq, origin_org, indicator_id, version, received_from, envelope, stored_ms, path, revoked \
             FROM indicators ",
            $rest
        )
    };
}
pub(super) use select_indicators;

/// A stored path ("a.example,b.example") as org ids.
pub(super) fn split_path(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(str::to_string).collect()
    }
}

/// Local publishes of one caller waiting for the group commit: the rows,
/// each with its idempotency key, and where to answer, row by row.
pub(super) struct LocalWrite {
    rows: Vec<(NewIndicator, Option<PublishKey>)>,
    actor: String,
    done: oneshot::Sender<Vec<Result<Appended, StoreError>>>,
}

/// Rows one group commit gathers before it stops taking more queued writes.
const GROUP_ROWS: usize = 32_768;

/// One local publish as the group commit sees it: the row, its publisher,
/// its idempotency key.
type LocalRef<'a> = (&'a NewIndicator, &'a str, Option<&'a PublishKey>);

impl std::fmt::Debug for LocalWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWrite").finish_non_exhaustive()
    }
}

impl Store {
    /// Highest local sequence number (0 if empty).
    pub async fn latest_seq(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT MAX(seq) FROM indicators"))
            .fetch_one(db)
            .await?);
        Ok(v.unwrap_or(0) as u64)
    }

    /// The first sequence number stored at or after `since_ms` (`None`: no
    /// row is that recent).
    pub async fn first_seq_since(&self, since_ms: i64) -> Result<Option<u64>, StoreError> {
        let v: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT MIN(seq) FROM indicators WHERE stored_ms >= ?"))
                .bind(since_ms)
                .fetch_one(db)
                .await?);
        Ok(v.map(|s| s.max(0) as u64))
    }

    /// The highest sequence number committed through this handle (no query).
    pub fn latest_known(&self) -> u64 {
        *self.latest.borrow()
    }

    /// A receiver that changes whenever new rows are committed (and on
    /// disk).
    pub fn watch_latest(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The highest sequence number that may be read to be given out: on
    /// SQLite the newest row this process knows to be on disk (a row
    /// committed but not yet synced is left for the next read; one another
    /// process wrote to the file is read once this process's own log moves
    /// past it), on PostgreSQL any committed.
    pub(super) fn given_out_up_to(&self) -> i64 {
        if self.wal().is_some() {
            to_i64(*self.latest.borrow())
        } else {
            i64::MAX
        }
    }

    pub(super) fn bump(&self, seq: u64) {
        self.bump_written(seq);
        raise(&self.latest, seq);
    }

    /// Moves the highest row written (and on the tail) to `seq`, on disk
    /// or not yet: streams that decide while the sync runs wake.
    pub(super) fn bump_written(&self, seq: u64) {
        raise(&self.written, seq);
    }

    /// A receiver that changes whenever rows are written and put on the
    /// tail, before they are on disk: for [`Store::read_written_after`].
    pub fn watch_written(&self) -> watch::Receiver<u64> {
        self.written.subscribe()
    }

    /// Stores a version published here by `actor` (the publisher's
    /// identity); durable when this returns. Concurrent calls are committed
    /// together (group commit): one transaction, one fsync.
    /// With an idempotency `key` the publisher used before, nothing is
    /// stored and the first attempt's outcome is returned (the same key for
    /// other content is [`StoreError::KeyReused`]). A publish whose caller
    /// has gone (its deadline passed, it disconnected) before the group
    /// commits is dropped, not stored.
    pub async fn append_local(
        &self,
        row: NewIndicator,
        actor: &str,
        key: Option<PublishKey>,
    ) -> Result<Appended, StoreError> {
        self.append_local_many(vec![(row, key)], actor)
            .await?
            .pop()
            .unwrap_or(Err(StoreError::WriterStopped))
    }

    /// [`Store::append_local`] for many rows of one publisher, committed
    /// in the same group: per row, in order, what it did.
    pub async fn append_local_many(
        &self,
        rows: Vec<(NewIndicator, Option<PublishKey>)>,
        actor: &str,
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (done, result) = oneshot::channel();
        let write = LocalWrite {
            rows,
            actor: actor.to_string(),
            done,
        };
        self.local
            .send(write)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        result.await.map_err(|_| StoreError::WriterStopped)
    }

    /// Writes queued local publishes in groups until every handle of the
    /// store is gone.
    pub(super) async fn local_writer(self, mut queue: mpsc::Receiver<LocalWrite>) {
        let mut group = Vec::new();
        while self
            .next_group(&mut queue, &mut group, GROUP_ROWS, |w| w.rows.len())
            .await
            > 0
        {
            'group: loop {
                let lock = match self.write_tx().await {
                    Ok(lock) => lock,
                    Err(e) => {
                        tracing::error!(error = %e, writes = group.len(), "group commit of local publishes failed");
                        for w in group.drain(..) {
                            let _ = w.done.send(vec![Err(e.clone()); w.rows.len()]);
                        }
                        break;
                    }
                };
                // With the write lock held: nobody waits for these any more
                // (their caller's deadline passed while the store was busy, or
                // it went away) and they were answered as not stored. (Checked
                // again once SQLite's lock is taken too, see below.)
                let before = group.len();
                group.retain(|w| !w.done.is_closed());
                if group.len() < before {
                    tracing::info!(
                        dropped = before - group.len(),
                        "publishes abandoned by their caller before commit; not stored"
                    );
                }
                if group.is_empty() {
                    break;
                }
                let rows: Vec<LocalRef<'_>> = group
                    .iter()
                    .flat_map(|w| {
                        w.rows
                            .iter()
                            .map(|(row, key)| (row, w.actor.as_str(), key.as_ref()))
                    })
                    .collect();
                let started = std::time::Instant::now();
                // A write transaction takes SQLite's lock with its first
                // statement: publishes whose callers went away while it waited
                // for the lock (held by another process) are left out, and the
                // rest written again.
                let abandoned = || group.iter().any(|w| w.done.is_closed());
                let results = match self.commit_local(lock, &rows, &abandoned).await {
                    Ok(Some(results)) => results,
                    Ok(None) => continue 'group,
                    Err(e) => {
                        tracing::error!(error = %e, rows = rows.len(), "group commit of local publishes failed");
                        vec![Err(e); rows.len()]
                    }
                };
                if let Some(m) = self.observer.get() {
                    m.commit_seconds.observe(started.elapsed().as_secs_f64());
                    let stored = results
                        .iter()
                        .filter(|r| matches!(r, Ok(Appended::New(_))))
                        .count();
                    m.published.inc_by(stored as u64);
                }
                let mut results = results.into_iter();
                for w in group.drain(..) {
                    let mine = results.by_ref().take(w.rows.len()).collect();
                    let _ = w.done.send(mine);
                }
                break;
            }
        }
    }

    /// Stores versions published here, each with the publisher that made
    /// it, its idempotency key and its ledger row, in one transaction; per
    /// row what it did. A key already recorded, or used by an earlier row
    /// of the same group, stores nothing and answers with the original.
    /// `None`, nothing stored, when `abandoned` says (once every statement
    /// before the commit ran, so SQLite's lock is held) that a caller of the
    /// group went away meanwhile.
    async fn commit_local(
        &self,
        (writing, mut tx): WriteLock,
        rows: &[LocalRef<'_>],
        abandoned: &(dyn Fn() -> bool + Sync),
    ) -> Result<Option<Vec<Result<Appended, StoreError>>>, StoreError> {
        let started = std::time::Instant::now();
        let mut outcome: Vec<Option<Result<Appended, StoreError>>> = vec![None; rows.len()];
        // Rows whose key an earlier row of this group carries.
        let mut same_as: Vec<Option<usize>> = vec![None; rows.len()];
        let mut first: std::collections::HashMap<(&str, &str), usize> = Default::default();
        let asked: Vec<(&str, &str)> = rows
            .iter()
            .filter_map(|(_, actor, key)| key.map(|k| (*actor, k.key.as_str())))
            .collect();
        let held = self.key_records(&mut tx, &asked).await?;
        let looked_up = started.elapsed();
        for (i, (_, actor, key)) in rows.iter().enumerate() {
            let Some(key) = key else { continue };
            if let Some(rec) = held.get(&(actor.to_string(), key.key.clone())) {
                outcome[i] = Some(rec.replay(key));
            } else if let Some(&j) = first.get(&(*actor, key.key.as_str())) {
                same_as[i] = Some(j);
            } else {
                first.insert((actor, &key.key), i);
            }
        }
        let fresh: Vec<usize> = (0..rows.len())
            .filter(|&i| outcome[i].is_none() && same_as[i].is_none())
            .collect();
        let indicators: Vec<&NewIndicator> = fresh.iter().map(|&i| rows[i].0).collect();
        let now = self.now();
        let seqs = self
            .insert_indicators(&mut tx, &indicators, "", now)
            .await?;
        let inserted = started.elapsed();
        let mut audit = Vec::new();
        let mut remember = Vec::new();
        for (&i, seq) in fresh.iter().zip(&seqs) {
            let (row, actor, key) = rows[i];
            outcome[i] = Some(match seq {
                Some(seq) => {
                    if let Some(key) = key {
                        let at = (row.indicator.id.as_str(), row.indicator.version, *seq);
                        remember.push((actor, key, at));
                    }
                    audit.push(AuditEntry::published(actor, row.subject()));
                    Ok(Appended::New(*seq))
                }
                None => Err(row.duplicate()),
            });
        }
        self.remember_keys(&mut tx, &remember).await?;
        for i in 0..rows.len() {
            if let Some(j) = same_as[i] {
                let (first_row, _, first_key) = rows[j];
                outcome[i] = Some(match (&outcome[j], rows[i].2, first_key) {
                    (Some(Ok(Appended::New(seq))), Some(k), Some(fk))
                        if k.request_digest == fk.request_digest =>
                    {
                        Ok(Appended::Again {
                            id: first_row.indicator.id.clone(),
                            version: first_row.indicator.version,
                            seq: *seq,
                        })
                    }
                    (Some(Ok(Appended::New(_))), Some(k), _) => Err(StoreError::KeyReused {
                        key: k.key.clone(),
                        id: first_row.indicator.id.clone(),
                        version: first_row.indicator.version,
                    }),
                    (first_outcome, _, _) => first_outcome
                        .clone()
                        .expect("the first row of a key is decided"),
                });
            }
        }
        let remembered = started.elapsed();
        let written = indicators
            .iter()
            .zip(&seqs)
            .filter_map(|(row, seq)| seq.map(|seq| StoredIndicator::written(seq, row, "", now)))
            .collect();
        if abandoned() {
            tx.rollback().await?;
            return Ok(None);
        }
        self.commit_log_rows((writing, tx), crate::audit::coalesce(audit), written, None)
            .await?;
        tracing::debug!(
            rows = rows.len(),
            keys_ms = looked_up.as_millis() as u64,
            insert_ms = (inserted - looked_up).as_millis() as u64,
            remember_ms = (remembered - inserted).as_millis() as u64,
            commit_ms = (started.elapsed() - remembered).as_millis() as u64,
            "group commit of local publishes"
        );
        Ok(Some(
            outcome
                .into_iter()
                .map(|o| o.expect("every row is decided"))
                .collect(),
        ))
    }

    /// Appends many versions published here in one transaction (each with
    /// its ledger row); returns their sequence numbers. Used to load large
    /// sets (bulk import, the benchmark's backlog).
    pub async fn append_local_batch(
        &self,
        rows: &[NewIndicator],
        actor: &str,
    ) -> Result<Vec<u64>, StoreError> {
        let refs: Vec<LocalRef<'_>> = rows.iter().map(|r| (r, actor, None)).collect();
        self.commit_local(self.write_tx().await?, &refs, &|| false)
            .await?
            .unwrap_or_default()
            .into_iter()
            .map(|r| match r? {
                Appended::New(seq) => Ok(seq),
                Appended::Again { .. } => unreachable!("rows without keys are never replays"),
            })
            .collect()
    }

    /// Highest stored version and creation time of an indicator.
    pub async fn latest_version(
        &self,
        origin: &str,
        id: &str,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let row: Option<(i64, i64)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT version, created_ms FROM indicators \
             WHERE origin_org = ? AND indicator_id = ? ORDER BY version DESC LIMIT 1",))
        .bind(origin)
        .bind(id)
        .fetch_optional(db)
        .await?);
        Ok(row.map(|(v, created)| (v as u64, created)))
    }

    /// Every stored version of `origin`'s indicators (or all, if `None`), in order.
    pub async fn indicators(
        &self,
        origin: Option<&str>,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(select_indicators!(
            "WHERE (?1 IS NULL OR origin_org = ?1) ORDER BY seq"
        )))
        .bind(origin)
        .fetch_all(db)
        .await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The latest version of each indicator, for those stored after `after`
    /// (sequence number) and at or after `since_ms`, oldest first, at most
    /// `limit`: what an export pages through. An older version whose
    /// indicator has a newer one is left out.
    pub async fn latest_versions_after(
        &self,
        after: u64,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        self.versions_after(Versions::Latest, after, since_ms, limit)
            .await
    }

    /// The versions `which` selects of the indicators stored after `after`
    /// (sequence number) and at or after `since_ms`, oldest first, at most
    /// `limit` (TAXII's `match[version]`).
    pub async fn versions_after(
        &self,
        which: Versions,
        after: u64,
        since_ms: i64,
        limit: u32,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let sql = match which {
            Versions::All => {
                select_indicators!(
                    "WHERE seq > ?1 AND seq <= ?4 AND stored_ms >= ?2 ORDER BY seq LIMIT ?3"
                )
            }
            Versions::Latest => select_indicators!(
                "WHERE seq > ?1 AND seq <= ?4 AND stored_ms >= ?2 AND version = \
                 (SELECT MAX(j.version) FROM indicators j \
                  WHERE j.origin_org = indicators.origin_org AND j.indicator_id = indicators.indicator_id) \
                 ORDER BY seq LIMIT ?3"
            ),
            Versions::Earliest => select_indicators!(
                "WHERE seq > ?1 AND seq <= ?4 AND stored_ms >= ?2 AND version = \
                 (SELECT MIN(j.version) FROM indicators j \
                  WHERE j.origin_org = indicators.origin_org AND j.indicator_id = indicators.indicator_id) \
                 ORDER BY seq LIMIT ?3"
            ),
        };
        let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(sql))
            .bind(to_i64(after))
            .bind(since_ms)
            .bind(i64::from(limit))
            .bind(self.given_out_up_to())
            .fetch_all(db)
            .await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Every stored version of indicator `id` (any origin), oldest first.
    pub async fn versions_of_id(&self, id: &str) -> Result<Vec<StoredIndicator>, StoreError> {
        let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(select_indicators!("WHERE indicator_id = ? ORDER BY seq")))
                .bind(id)
                .fetch_all(db)
                .await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Every stored version of every indicator whose normalised value is
    /// `value` (of `kind`), whatever its origin, oldest first.
    pub async fn versions_of_value(
        &self,
        kind: i32,
        value: &str,
    ) -> Result<Vec<StoredIndicator>, StoreError> {
        let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(select_indicators!(
            "WHERE value = ?1 AND kind = ?2 ORDER BY seq"
        )))
        .bind(value)
        .bind(kind)
        .fetch_all(db)
        .await?);
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// The latest stored version of indicator `id` (any origin).
    pub async fn indicator_by_id(&self, id: &str) -> Result<Option<StoredIndicator>, StoreError> {
        let row: Option<IndicatorRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(select_indicators!(
            "WHERE indicator_id = ? ORDER BY version DESC, seq DESC LIMIT 1"
        )))
        .bind(id)
        .fetch_optional(db)
        .await?);
        Ok(row.map(Into::into))
    }

    /// [`Store::indicator_by_id`] for many ids at once (a statement per
    /// [`ROWS_PER_STATEMENT`] ids): the newest version of each id that is
    /// stored.
    pub async fn indicators_by_ids(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, StoredIndicator>, StoreError> {
        let mut out: std::collections::HashMap<String, StoredIndicator> = Default::default();
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<IndicatorRow> = on!(Pool, &self.pool, db => {
                let mut q = sqlx::QueryBuilder::<DB>::new(select_indicators!("WHERE indicator_id IN ("));
                let mut wanted = q.separated(", ");
                for id in chunk {
                    wanted.push_bind(*id);
                }
                q.push(")");
                q.build_query_as().fetch_all(db).await?
            });
            for row in rows.into_iter().map(StoredIndicator::from) {
                let newer = out
                    .get(&row.indicator_id)
                    .is_none_or(|held| (row.version, row.seq) > (held.version, held.seq));
                if newer {
                    out.insert(row.indicator_id.clone(), row);
                }
            }
        }
        Ok(out)
    }

    /// Number of stored indicator versions.
    pub async fn count_indicators(&self) -> Result<u64, StoreError> {
        let n: i64 = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT COUNT(*) FROM indicators"))
            .fetch_one(db)
            .await?);
        Ok(n as u64)
    }

    /// Inserts many versions with multi-row statements; per row, its
    /// sequence number, or `None` when (origin, id, version) was already
    /// stored.
    pub(super) async fn insert_indicators(
        &self,
        tx: &mut Tx,
        rows: &[&NewIndicator],
        received_from: &str,
        now: i64,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        self.insert_rows(tx, rows, received_from, now, false).await
    }

    /// [`Store::insert_indicators`] of only the rows whose version may
    /// follow the newest one held of their indicator (none held, or at
    /// most [`super::ingest::MAX_VERSION_STEP`] above it; the ingest's
    /// rollback and far-ahead checks) — in the same statement, so a batch
    /// of new indicators costs one round trip, not a read and then a
    /// write. Per row, its sequence number, or `None` when it was not
    /// stored (held already, or out of step). Every (origin, id) of `rows`
    /// must be distinct (the check sees what was held before the
    /// statement). SQLite only: `None` on PostgreSQL, whose caller checks
    /// first.
    pub(super) async fn insert_indicators_in_step(
        &self,
        tx: &mut Tx,
        rows: &[&NewIndicator],
        received_from: &str,
        now: i64,
    ) -> Result<Option<Vec<Option<u64>>>, StoreError> {
        if matches!(tx, Tx::Pg(_)) {
            return Ok(None);
        }
        self.insert_rows(tx, rows, received_from, now, true)
            .await
            .map(Some)
    }

    /// [`Store::insert_indicators`], and with `in_step` (SQLite) only the
    /// rows [`Store::insert_indicators_in_step`] describes.
    async fn insert_rows(
        &self,
        tx: &mut Tx,
        rows: &[&NewIndicator],
        received_from: &str,
        now: i64,
        in_step: bool,
    ) -> Result<Vec<Option<u64>>, StoreError> {
        let mut out = Vec::with_capacity(rows.len());
        // The statement for one chunk, in either backend's placeholders;
        // with `in_step`, the rows are selected from their list (a 15th
        // column keeps their order) where their version is in step.
        macro_rules! statement {
            ($db:ty, $chunk:expr) => {{
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO indicators (origin_org, indicator_id, version, received_from, envelope, kind, value, \
                     tlp, confidence, created_ms, modified_ms, revoked, stored_ms, path) ",
                );
                if in_step {
                    q.push(
                        "SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6, v.column7, \
                         v.column8, v.column9, v.column10, v.column11, v.column12, v.column13, v.column14 FROM (",
                    );
                }
                q.push_values($chunk.iter().enumerate(), |mut b, (n, row)| {
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
                    if in_step {
                        b.push_bind(n as i64);
                    }
                });
                if in_step {
                    q.push(format!(
                        ") AS v WHERE COALESCE((SELECT MAX(h.version) FROM indicators h \
                         WHERE h.origin_org = v.column1 AND h.indicator_id = v.column2), v.column3) \
                         BETWEEN v.column3 - {} AND v.column3 ORDER BY v.column15",
                        super::ingest::MAX_VERSION_STEP
                    ));
                }
                q.push(" ON CONFLICT (origin_org, indicator_id, version) DO NOTHING");
                q
            }};
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            // Rows this statement stored, when they are not simply the
            // numbers after `before` in order.
            let inserted: Vec<(i64, String, String, i64)> = match &mut *tx {
                Tx::Sqlite(t) => {
                    // The one writer inside its transaction: the rows this
                    // statement stored hold the highest numbers in the
                    // table. When every row went in they are the `n`
                    // numbers up to the last one given, in order; when some
                    // were duplicates (skipped, perhaps after taking a
                    // number) the `k` stored are read back as the `k`
                    // highest. No RETURNING: SQLite buffers its rows, and
                    // the driver hands them over one by one.
                    let done = statement!(sqlx::Sqlite, chunk)
                        .build()
                        .execute(&mut **t)
                        .await?;
                    let (n, k) = (chunk.len() as u64, done.rows_affected());
                    if k == n {
                        let last = done.last_insert_rowid();
                        out.extend((last - n as i64 + 1..=last).map(|seq| Some(seq as u64)));
                        continue;
                    }
                    if k == 0 {
                        out.extend(std::iter::repeat_n(None, chunk.len()));
                        continue;
                    }
                    sqlx::query_as(
                        "SELECT seq, origin_org, indicator_id, version FROM indicators ORDER BY seq DESC LIMIT ?",
                    )
                    .bind(to_i64(k))
                    .fetch_all(&mut **t)
                    .await?
                }
                Tx::Pg(t) => {
                    // Numbers come from the column's sequence, taken under
                    // the write lock, so they rise in commit order (a
                    // skipped duplicate leaves a gap, never a reuse).
                    let mut q = statement!(sqlx::Postgres, chunk);
                    q.push(" RETURNING seq, origin_org, indicator_id, version");
                    let rows: Vec<(i64, String, String, i64)> =
                        q.build_query_as().fetch_all(&mut **t).await?;
                    // Other replicas' streams wake when this commits.
                    if let Some(max) = rows.iter().map(|r| r.0).max() {
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(super::replicas::LOG_CHANNEL)
                            .bind(max.to_string())
                            .execute(&mut **t)
                            .await?;
                    }
                    rows
                }
            };
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
}

/// Raises `watch` to `seq` (waking its receivers) if it is below.
fn raise(watch: &watch::Sender<u64>, seq: u64) {
    watch.send_if_modified(|cur| {
        if seq > *cur {
            *cur = seq;
            true
        } else {
            false
        }
    });
}
