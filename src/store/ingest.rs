//! Batches received from a partner: admitted rows (duplicates ignored,
//! rollbacks and far-ahead versions refused), refusals, quarantined
//! envelopes and the cursor, committed in one transaction.

use std::collections::HashMap;

use super::db::{on, sql};
use super::log::{NewIndicator, StoredIndicator};
use super::quarantine::Quarantined;
use super::{ROWS_PER_STATEMENT, Store, StoreError, Tx, to_i64};
use crate::audit::AuditEntry;
use crate::model::OrgId;
use crate::refusal::{Refusal, RefusalKind};

/// Most a version may jump above the newest one held. The origin numbers
/// versions one by one, so a receiver that was withheld some sees small
/// gaps; a "far-future" version (a bug, or a stolen key) would block every
/// later update by the origin.
pub const MAX_VERSION_STEP: u64 = 1_000;

/// What is kept of the refusals of one partner: the refused envelopes'
/// bytes up to `bytes` in all, and the newest `rows` refusal records (older
/// ones are removed, with a ledger row saying so; the ledger keeps every
/// refusal's own row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalsKept {
    /// Bytes of refused envelopes kept, in all.
    pub bytes: u64,
    /// Refusal records kept.
    pub rows: u64,
}

/// A refused envelope to record.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// Upstream sequence number of the refused item.
    pub upstream_seq: u64,
    /// Why it was refused.
    pub refusal: Refusal,
    /// The refused bytes, for forensics.
    pub envelope: Vec<u8>,
}

/// A recorded rejection.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RejectionRecord {
    /// Partner that sent it.
    pub upstream_org: String,
    /// Upstream sequence number.
    #[sqlx(try_from = "i64")]
    pub upstream_seq: u64,
    /// The kind of refusal.
    #[sqlx(rename = "code", try_from = "String")]
    pub kind: RefusalKind,
    /// Why.
    pub reason: String,
    /// When.
    pub rejected_ms: i64,
    /// Bytes of the refused envelope kept (0 once the partner's share of
    /// kept bytes is used up).
    #[sqlx(try_from = "i64")]
    pub envelope_bytes: u64,
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

/// What became of one row offered for storage.
pub(super) enum Admitted {
    Stored(u64),
    Duplicate,
    Refused(Rejection),
}

impl Admitted {
    /// `row` refused for `refusal`, its envelope kept with the refusal.
    fn refused(row: &NewIndicator, refusal: Refusal) -> Self {
        Admitted::Refused(Rejection {
            upstream_seq: row.upstream_seq,
            refusal,
            envelope: row.envelope.clone(),
        })
    }
}

/// The (origin, id) of each row, in order.
fn indicator_keys(rows: &[NewIndicator]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| (r.indicator.origin_org.clone(), r.indicator.id.clone()))
        .collect()
}

/// Why `version` may not follow the newest version `held`, if it may not.
fn version_refusal(i: &crate::proto::v1::Indicator, held: Option<u64>) -> Option<Refusal> {
    let h = held?;
    if i.version < h {
        Some(Refusal::new(
            RefusalKind::Rollback,
            format!(
                "rollback: {}/{} version {} is older than version {h} held here",
                i.origin_org, i.id, i.version
            ),
        ))
    } else if i.version > h.saturating_add(MAX_VERSION_STEP) {
        Some(Refusal::new(
            RefusalKind::TooFarAhead,
            format!(
                "{}/{} version {} jumps more than {MAX_VERSION_STEP} versions past version {h} held here",
                i.origin_org, i.id, i.version
            ),
        ))
    } else {
        None
    }
}

/// An ingested batch's cursor for its upstream, written with the batch's
/// ledger rows (see [`super::ledger::Lead`]): it moves only forward, and
/// only within the log it counts in.
pub(super) struct CursorMove<'a> {
    /// The partner the batch came from.
    pub(super) upstream: &'a str,
    /// The last sequence number of that partner's log the batch covers.
    pub(super) cursor: i64,
    /// When it moved.
    pub(super) updated_ms: i64,
    /// The identity of the log the cursor counts in.
    pub(super) log_id: &'a str,
}

impl CursorMove<'_> {
    /// Pushes the cursor's upsert onto `q`.
    pub(super) fn push<DB: sqlx::Database>(&self, q: &mut sqlx::QueryBuilder<DB>)
    where
        for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        q.push("INSERT INTO cursors (upstream_org, cursor, updated_ms, log_id) VALUES (");
        let mut values = q.separated(", ");
        values
            .push_bind(self.upstream)
            .push_bind(self.cursor)
            .push_bind(self.updated_ms)
            .push_bind(self.log_id);
        q.push(
            ") ON CONFLICT (upstream_org) DO UPDATE SET cursor = excluded.cursor, \
             updated_ms = excluded.updated_ms \
             WHERE excluded.cursor > cursors.cursor AND excluded.log_id = cursors.log_id",
        );
    }
}

impl Store {
    /// Stores verified, admitted rows from `upstream`, in order, except
    /// duplicates, versions older than the one held (rollback) and versions
    /// too far ahead; multi-row statements throughout.
    pub(super) async fn admit_rows(
        &self,
        tx: &mut Tx,
        upstream: &OrgId,
        rows: &[NewIndicator],
        audit: &mut Vec<AuditEntry>,
        now: i64,
    ) -> Result<Vec<Admitted>, StoreError> {
        let keys = indicator_keys(rows);
        let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len() == keys.len();
        let all: Vec<&NewIndicator> = rows.iter().collect();
        // Each indicator once (the usual batch): stored where in step in
        // one statement, and only what it did not store is looked at.
        let in_step = if distinct {
            self.insert_indicators_in_step(tx, &all, upstream.as_str(), now)
                .await?
        } else {
            None
        };
        let mut out = match in_step {
            Some(seqs) => self.left_out(tx, rows, keys, seqs).await?,
            None => {
                self.check_then_insert(tx, rows, keys, upstream, now)
                    .await?
            }
        };
        for (row, admitted) in rows.iter().zip(&out) {
            if matches!(admitted, Admitted::Stored(_)) {
                audit.push(AuditEntry::accepted(
                    upstream.as_str(),
                    row.subject(),
                    row.rule,
                    &row.path,
                ));
            }
        }
        self.refuse_conflicting(tx, rows, &mut out).await?;
        Ok(out)
    }

    /// What [`Store::insert_indicators_in_step`] did with each row: its
    /// number where stored; where not, a refusal if its version is out of
    /// step with the one held, else a duplicate.
    async fn left_out(
        &self,
        tx: &mut Tx,
        rows: &[NewIndicator],
        keys: Vec<(String, String)>,
        seqs: Vec<Option<u64>>,
    ) -> Result<Vec<Admitted>, StoreError> {
        let missing: Vec<(String, String)> = keys
            .into_iter()
            .zip(&seqs)
            .filter(|(_, seq)| seq.is_none())
            .map(|(key, _)| key)
            .collect();
        // The statement stored no version of these indicators (each is
        // once in the batch), so what is held now is what it checked.
        let held = if missing.is_empty() {
            HashMap::new()
        } else {
            held_versions(tx, &missing).await?
        };
        Ok(rows
            .iter()
            .zip(seqs)
            .map(|(row, seq)| match seq {
                Some(seq) => Admitted::Stored(seq),
                None => {
                    let i = &row.indicator;
                    let key = (i.origin_org.clone(), i.id.clone());
                    match version_refusal(i, held.get(&key).copied()) {
                        Some(refusal) => Admitted::refused(row, refusal),
                        None => Admitted::Duplicate,
                    }
                }
            })
            .collect())
    }

    /// Reads the newest version held of each indicator, refuses rows out of
    /// step with it (or with an earlier row of the batch), and stores the
    /// rest: a batch carrying an indicator more than once, or PostgreSQL.
    async fn check_then_insert(
        &self,
        tx: &mut Tx,
        rows: &[NewIndicator],
        keys: Vec<(String, String)>,
        upstream: &OrgId,
        now: i64,
    ) -> Result<Vec<Admitted>, StoreError> {
        let mut held = held_versions(tx, &keys).await?;
        let mut verdicts: Vec<Option<Admitted>> = Vec::with_capacity(rows.len());
        let mut candidates = Vec::new();
        for (row, key) in rows.iter().zip(keys) {
            match version_refusal(&row.indicator, held.get(&key).copied()) {
                Some(refusal) => verdicts.push(Some(Admitted::refused(row, refusal))),
                None => {
                    let h = held.entry(key).or_insert(0);
                    *h = (*h).max(row.indicator.version);
                    verdicts.push(None);
                    candidates.push(row);
                }
            }
        }
        let mut seqs = self
            .insert_indicators(tx, &candidates, upstream.as_str(), now)
            .await?
            .into_iter();
        Ok(verdicts
            .into_iter()
            .map(|verdict| match verdict {
                Some(v) => v,
                None => match seqs.next().flatten() {
                    Some(seq) => Admitted::Stored(seq),
                    None => Admitted::Duplicate,
                },
            })
            .collect())
    }

    /// Turns each duplicate whose envelope differs from the one stored
    /// under the same (origin, id, version) into a refusal: the origin (or
    /// whoever holds its key) signed two contents for one version, and the
    /// first one stays.
    async fn refuse_conflicting(
        &self,
        tx: &mut Tx,
        rows: &[NewIndicator],
        out: &mut [Admitted],
    ) -> Result<(), StoreError> {
        let dups: Vec<usize> = (0..rows.len())
            .filter(|i| matches!(out[*i], Admitted::Duplicate))
            .collect();
        for chunk in dups.chunks(ROWS_PER_STATEMENT) {
            let stored: Vec<(String, String, i64, Vec<u8>)> = on!(Tx, &mut *tx, db => {
            let mut q = sqlx::QueryBuilder::<DB>::new(
                "SELECT origin_org, indicator_id, version, envelope FROM indicators \
                 WHERE (origin_org, indicator_id, version) IN (VALUES ",
            );
            let mut sep = q.separated(", ");
            for i in chunk {
                let ind = &rows[*i].indicator;
                sep.push("(")
                    .push_bind_unseparated(ind.origin_org.clone())
                    .push_unseparated(", ")
                    .push_bind_unseparated(ind.id.clone())
                    .push_unseparated(", ")
                    .push_bind_unseparated(to_i64(ind.version))
                    .push_unseparated(")");
            }
            q.push(")");
            q.build_query_as().fetch_all(&mut **db).await?
            });
            for i in chunk {
                let row = &rows[*i];
                let ind = &row.indicator;
                let differs = stored.iter().any(|(o, id, v, env)| {
                    o == &ind.origin_org
                        && id == &ind.id
                        && *v == to_i64(ind.version)
                        && env != &row.envelope
                });
                if differs {
                    out[*i] = Admitted::refused(
                        row,
                        Refusal::new(
                            RefusalKind::ConflictingVersion,
                            format!(
                                "{}/{} version {} is already held with other content; the first stays",
                                ind.origin_org, ind.id, ind.version
                            ),
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    /// Records envelopes refused from `upstream`, keeping their bytes while
    /// the partner's refused bytes stay within `keep.bytes`, and its newest
    /// `keep.rows` records. Returns how many.
    pub(super) async fn record_refusals(
        &self,
        tx: &mut Tx,
        upstream: &OrgId,
        refusals: &[&[Rejection]],
        keep: RefusalsKept,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<u64, StoreError> {
        let keep_bytes = keep.bytes;
        if refusals.iter().all(|r| r.is_empty()) {
            return Ok(0);
        }
        let kept: i64 = on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!("SELECT COALESCE((SELECT kept_bytes FROM rejected_bytes WHERE upstream_org = ?), 0)",))
        .bind(upstream.as_str())
        .fetch_one(&mut **db)
        .await?);
        let mut left = keep_bytes.saturating_sub(kept.max(0) as u64);
        let before = left;
        let mut n = 0;
        for r in refusals.iter().flat_map(|r| r.iter()) {
            self.reject(tx, upstream, r, &mut left, audit).await?;
            n += 1;
        }
        on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO rejected_bytes (upstream_org, kept_bytes) VALUES (?1, ?2) \
             ON CONFLICT (upstream_org) DO UPDATE SET kept_bytes = rejected_bytes.kept_bytes + ?2",))
        .bind(upstream.as_str())
        .bind(to_i64(before - left))
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.trim_refusals(tx, upstream, keep.rows, audit).await?;
        Ok(n)
    }

    /// Removes `upstream`'s oldest refusal records beyond its newest
    /// `rows` (and their kept bytes from its share), with a ledger row.
    async fn trim_refusals(
        &self,
        tx: &mut Tx,
        upstream: &OrgId,
        rows: u64,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        // The id of the oldest record to keep, if there are more.
        let last_kept: Option<i64> = on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!(
            "SELECT id FROM rejections WHERE upstream_org = ? ORDER BY id DESC LIMIT 1 OFFSET ?"
        ))
        .bind(upstream.as_str())
        .bind(to_i64(rows.saturating_sub(1)))
        .fetch_optional(&mut **db)
        .await?);
        let Some(last_kept) = last_kept else {
            return Ok(());
        };
        let (n, bytes): (i64, Option<i64>) = on!(Tx, &mut *tx, db => sqlx::query_as(sql!(
            "SELECT COUNT(*), CAST(SUM(LENGTH(envelope)) AS BIGINT) FROM rejections \
             WHERE upstream_org = ? AND id < ?"
        ))
        .bind(upstream.as_str())
        .bind(last_kept)
        .fetch_one(&mut **db)
        .await?);
        if n == 0 {
            return Ok(());
        }
        on!(Tx, &mut *tx, db => sqlx::query(sql!(
            "DELETE FROM rejections WHERE upstream_org = ? AND id < ?"
        ))
        .bind(upstream.as_str())
        .bind(last_kept)
        .execute(&mut **db)
        .await
        .map(|r| r.rows_affected())?);
        on!(Tx, &mut *tx, db => sqlx::query(sql!(
            "UPDATE rejected_bytes SET kept_bytes = CASE WHEN kept_bytes > ?2 THEN kept_bytes - ?2 ELSE 0 END \
             WHERE upstream_org = ?1"
        ))
        .bind(upstream.as_str())
        .bind(bytes.unwrap_or(0))
        .execute(&mut **db)
        .await
        .map(|r| r.rows_affected())?);
        audit.push(AuditEntry::over_limit(
            upstream.as_str(),
            "refusals",
            "federation.refusals_kept_per_partner",
            &format!("{n} older refusal record(s) removed; the newest {rows} are kept"),
        ));
        Ok(())
    }

    /// Records a refused envelope from `upstream`, keeping its bytes if
    /// they fit in what is `left` of the partner's share.
    async fn reject(
        &self,
        tx: &mut Tx,
        upstream: &OrgId,
        r: &Rejection,
        left: &mut u64,
        audit: &mut Vec<AuditEntry>,
    ) -> Result<(), StoreError> {
        let len = r.envelope.len() as u64;
        let kept: &[u8] = if len <= *left {
            *left -= len;
            &r.envelope
        } else {
            &[]
        };
        let kind = r.refusal.kind.as_str();
        audit.push(AuditEntry::rejected(
            upstream.as_str(),
            r.upstream_seq,
            kind,
            &r.refusal.reason,
        ));
        on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO rejections (upstream_org, upstream_seq, code, reason, envelope, rejected_ms) \
             VALUES (?, ?, ?, ?, ?, ?)",))
        .bind(upstream.as_str())
        .bind(to_i64(r.upstream_seq))
        .bind(kind)
        .bind(&r.refusal.reason)
        .bind(kept)
        .bind(self.now())
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        Ok(())
    }

    /// Commits a batch from `upstream`: new rows (duplicates ignored, older
    /// or far-future versions refused), rejections, envelopes waiting for
    /// their key, and the cursor, in **one** transaction. The cursor only
    /// moves forward, and only within the log it counts in (`cursor` =
    /// (log identity, seq)): after an operator's reset, what a session of
    /// the old cursor still commits no longer moves it. Refused envelopes'
    /// bytes are kept up to `keep_rejected.bytes` per partner in all
    /// (beyond, only the refusal), and its newest `keep_rejected.rows`
    /// records.
    pub async fn ingest_batch(
        &self,
        upstream: &OrgId,
        rows: &[NewIndicator],
        rejections: &[Rejection],
        quarantined: &[Quarantined],
        cursor: (&str, u64),
        keep_rejected: RefusalsKept,
    ) -> Result<IngestOutcome, StoreError> {
        let (log_id, cursor) = cursor;
        let mut out = IngestOutcome::default();
        let (writing, mut tx) = self.write_tx().await?;
        let mut audit = Vec::new();
        let mut refused: Vec<Rejection> = Vec::new();
        let now = self.now();
        let mut written = Vec::new();
        let verdicts = self
            .admit_rows(&mut tx, upstream, rows, &mut audit, now)
            .await?;
        for (verdict, row) in verdicts.into_iter().zip(rows) {
            match verdict {
                Admitted::Stored(seq) => {
                    out.stored += 1;
                    written.push(StoredIndicator::written(seq, row, upstream.as_str(), now));
                }
                Admitted::Duplicate => out.duplicates += 1,
                Admitted::Refused(r) => refused.push(r),
            }
        }
        out.rejected = self
            .record_refusals(
                &mut tx,
                upstream,
                &[rejections, &refused],
                keep_rejected,
                &mut audit,
            )
            .await?;
        out.quarantined = self
            .hold(&mut tx, upstream, quarantined, &mut audit)
            .await?;
        let cursor = CursorMove {
            upstream: upstream.as_str(),
            cursor: to_i64(cursor),
            updated_ms: self.now(),
            log_id,
        };
        // The rows are given out, and the cursor counted as moved, only
        // once on disk. The cursor is written with the ledger rows.
        self.commit_log_rows(
            (writing, tx),
            crate::audit::coalesce(audit),
            written,
            Some(cursor),
        )
        .await?;
        Ok(out)
    }

    /// The committed cursor for `upstream` (0 if never subscribed).
    pub async fn cursor(&self, upstream: &OrgId) -> Result<u64, StoreError> {
        let v: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT cursor FROM cursors WHERE upstream_org = ?"))
                .bind(upstream.as_str())
                .fetch_optional(db)
                .await?);
        Ok(v.unwrap_or(0) as u64)
    }

    /// Rejected envelopes, oldest first.
    pub async fn rejections(&self) -> Result<Vec<RejectionRecord>, StoreError> {
        self.all(
            "SELECT upstream_org, upstream_seq, code, reason, rejected_ms, CAST(LENGTH(envelope) AS BIGINT) AS envelope_bytes \
             FROM rejections ORDER BY id"
        )
        .await
    }

    /// Number of refused envelopes recorded.
    pub async fn count_rejections(&self) -> Result<u64, StoreError> {
        let n: i64 = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT COUNT(*) FROM rejections"))
            .fetch_one(db)
            .await?);
        Ok(n as u64)
    }
}

/// The newest version held of each (origin, id), looked up in groups.
async fn held_versions(
    tx: &mut Tx,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), u64>, StoreError> {
    let mut out = HashMap::new();
    for chunk in keys.chunks(ROWS_PER_STATEMENT * 4) {
        let rows: Vec<(String, String, i64)> = on!(Tx, &mut *tx, db => {
        let mut q = sqlx::QueryBuilder::<DB>::new(
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
        q.build_query_as().fetch_all(&mut **db).await?
        });
        for (o, i, v) in rows {
            out.insert((o, i), v as u64);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::OrgSigningKey;

    /// Version `v` of indicator `id` of a.example, sealed as its origin
    /// sends it.
    fn version(key: &OrgSigningKey, id: &str, v: u64) -> NewIndicator {
        let mut i = crate::signing::test_indicator("a.example", key);
        i.id = id.into();
        i.version = v;
        crate::exchange::seal(key, i)
    }

    /// A batch naming each indicator once is checked inside its insert;
    /// what it stores, skips and refuses (and the numbers it gives) are
    /// what reading the held versions first and inserting the rest gives,
    /// also when only some rows go in: a rollback, a duplicate, a version
    /// too far ahead, a new indicator, a version in step, and a new
    /// indicator at a high first version.
    #[tokio::test]
    async fn a_batch_of_distinct_indicators_is_checked_in_its_insert_as_by_reading_first() {
        let (key, _) = OrgSigningKey::generate().unwrap();
        let upstream = OrgId::parse("a.example").unwrap();
        let held = [("x", 5), ("y", 1), ("p", 1), ("q", 1)];
        let offered = [
            ("x", 3),
            ("y", 1),
            ("z", 1),
            ("p", 2 + MAX_VERSION_STEP),
            ("q", 3),
            ("r", 5_000),
        ];
        let mut seen = Vec::new();
        for in_step in [true, false] {
            let dir = crate::store::scratch_dir("ingest");
            std::fs::create_dir_all(&dir).unwrap();
            let store = Store::open_sqlite(&dir.join("store.db"), crate::clock::Clock::system())
                .await
                .unwrap();
            let rows: Vec<NewIndicator> =
                held.iter().map(|(id, v)| version(&key, id, *v)).collect();
            let (writing, mut tx) = store.write_tx().await.unwrap();
            let refs: Vec<&NewIndicator> = rows.iter().collect();
            store
                .insert_indicators(&mut tx, &refs, "a.example", 1000)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            drop(writing);

            let batch: Vec<NewIndicator> = offered
                .iter()
                .map(|(id, v)| version(&key, id, *v))
                .collect();
            let keys = indicator_keys(&batch);
            let (writing, mut tx) = store.write_tx().await.unwrap();
            let out = if in_step {
                let refs: Vec<&NewIndicator> = batch.iter().collect();
                let seqs = store
                    .insert_indicators_in_step(&mut tx, &refs, "a.example", 1000)
                    .await
                    .unwrap()
                    .expect("SQLite checks in the insert");
                store.left_out(&mut tx, &batch, keys, seqs).await.unwrap()
            } else {
                store
                    .check_then_insert(&mut tx, &batch, keys, &upstream, 1000)
                    .await
                    .unwrap()
            };
            tx.commit().await.unwrap();
            drop(writing);
            // Each number given is the row's own; numbers skipped by the
            // statement may differ between the two, what went in may not.
            let crate::store::db::Pool::Sqlite(db) = &store.pool else {
                unreachable!("a SQLite store")
            };
            let mut verdicts = Vec::new();
            for (a, (id, v)) in out.iter().zip(offered) {
                verdicts.push(match a {
                    Admitted::Stored(seq) => {
                        let at: (String, i64) = sqlx::query_as(
                            "SELECT indicator_id, version FROM indicators WHERE seq = ?",
                        )
                        .bind(*seq as i64)
                        .fetch_one(db)
                        .await
                        .unwrap();
                        assert_eq!(at, (id.to_string(), v as i64), "row {seq}");
                        "stored".to_string()
                    }
                    Admitted::Duplicate => "duplicate".into(),
                    Admitted::Refused(r) => format!("{:?}", r.refusal.kind),
                });
            }
            assert_eq!(store.count_indicators().await.unwrap(), 7);
            seen.push(verdicts);
            store.close().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        assert_eq!(
            seen[0],
            [
                "Rollback",
                "duplicate",
                "stored",
                "TooFarAhead",
                "stored",
                "stored"
            ]
        );
        assert_eq!(
            seen[0], seen[1],
            "the in-step insert and reading first differ"
        );
    }
}
