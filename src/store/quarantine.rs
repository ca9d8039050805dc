//! Envelopes signed by a key we do not know yet: held until the key
//! arrives (then stored or refused) or their time runs out.

use std::collections::HashMap;

use super::db::{on, sql};
use super::ingest::{Admitted, Rejection};
use super::log::{NewIndicator, split_path};
use super::{Store, StoreError, Tx, to_i64};
use crate::audit::AuditEntry;
use crate::model::OrgId;

/// An envelope whose signing key is not known yet, to hold in quarantine.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Quarantined {
    /// Its sequence number at the partner that sent it.
    #[sqlx(try_from = "i64")]
    pub upstream_seq: u64,
    /// The unknown key, or (with `due_ms`) the known key of an envelope
    /// dated ahead of our clock.
    pub key_id: String,
    /// 0: waiting for the key. Otherwise when our clock accepts the
    /// envelope's date.
    pub due_ms: i64,
    /// The envelope as received.
    pub envelope: Vec<u8>,
    /// Its path as received, origin first.
    #[sqlx(try_from = "String")]
    pub path: OrgPath,
}

/// A path of org ids as stored ("a.example,b.example"), origin first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgPath(pub Vec<String>);

impl From<String> for OrgPath {
    fn from(s: String) -> Self {
        OrgPath(split_path(&s))
    }
}

impl std::ops::Deref for OrgPath {
    type Target = Vec<String>;
    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

/// A quarantined envelope as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QuarantineRow {
    /// Row id.
    pub id: i64,
    /// Partner it came from.
    #[sqlx(rename = "upstream_org", try_from = "String")]
    pub upstream: OrgId,
    /// The envelope, its key and path.
    #[sqlx(flatten)]
    pub held: Quarantined,
    /// When it arrived.
    pub received_ms: i64,
}

impl Store {
    /// Puts envelopes from `upstream` in quarantine inside `tx`; returns how
    /// many were new.
    pub(super) async fn hold(
        &self,
        tx: &mut Tx,
        upstream: &OrgId,
        envelopes: &[Quarantined],
        audit: &mut Vec<AuditEntry>,
    ) -> Result<u64, StoreError> {
        let mut held = 0;
        for q in envelopes {
            let done = on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO quarantine (upstream_org, upstream_seq, key_id, due_ms, envelope, path, received_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",))
            .bind(upstream.as_str())
            .bind(to_i64(q.upstream_seq))
            .bind(&q.key_id)
            .bind(q.due_ms)
            .bind(&q.envelope)
            .bind(q.path.join(","))
            .bind(self.now())
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
            if done == 1 {
                held += 1;
                audit.push(AuditEntry::quarantined(upstream.as_str(), q));
            }
        }
        Ok(held)
    }

    /// How many envelopes wait in quarantine, per partner they came from.
    pub async fn quarantine_counts(&self) -> Result<HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT upstream_org, COUNT(*) FROM quarantine GROUP BY upstream_org"))
                .fetch_all(db)
                .await?);
        Ok(rows.into_iter().map(|(o, n)| (o, n as u64)).collect())
    }

    /// How many envelopes, and how many bytes of them, `upstream` has
    /// waiting in quarantine.
    pub async fn quarantine_usage(&self, upstream: &OrgId) -> Result<(u64, u64), StoreError> {
        let (rows, bytes): (i64, Option<i64>) = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT COUNT(*), CAST(SUM(LENGTH(envelope)) AS BIGINT) FROM quarantine WHERE upstream_org = ?",))
        .bind(upstream.as_str())
        .fetch_one(db)
        .await?);
        Ok((rows as u64, bytes.unwrap_or(0) as u64))
    }

    /// The distinct signing keys of quarantined envelopes that are not
    /// dated ahead of `now_ms` (those wait for the clock, whatever their key).
    pub async fn quarantined_key_ids(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT DISTINCT key_id FROM quarantine WHERE due_ms <= ?"))
                .bind(now_ms)
                .fetch_all(db)
                .await?),
        )
    }

    /// Every envelope waiting in quarantine, oldest first.
    pub async fn quarantine(&self) -> Result<Vec<QuarantineRow>, StoreError> {
        self.all(
            "SELECT id, upstream_org, upstream_seq, key_id, due_ms, envelope, path, received_ms \
             FROM quarantine ORDER BY id",
        )
        .await
    }

    /// A quarantined envelope found dated ahead of our clock (again): it
    /// waits until `due_ms`.
    pub async fn defer_quarantine(&self, id: i64, due_ms: i64) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE quarantine SET due_ms = ? WHERE id = ?"))
            .bind(due_ms)
            .bind(id)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        tx.commit().await?;
        Ok(())
    }

    /// Settles one quarantined envelope whose key has arrived: stores it (as
    /// received from its upstream) or records the refusal, and removes it
    /// from quarantine, in one transaction. Returns whether it was stored.
    pub async fn resolve_quarantine(
        &self,
        q: &QuarantineRow,
        outcome: Result<NewIndicator, Rejection>,
        keep_rejected: super::RefusalsKept,
    ) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let mut audit = Vec::new();
        let mut stored = None;
        let refused = match outcome {
            Ok(row) => {
                let admitted = self
                    .admit_rows(
                        &mut tx,
                        &q.upstream,
                        std::slice::from_ref(&row),
                        &mut audit,
                        self.now(),
                    )
                    .await?
                    .pop();
                match admitted {
                    Some(Admitted::Stored(seq)) => {
                        stored = Some(seq);
                        None
                    }
                    Some(Admitted::Refused(r)) => Some(r),
                    Some(Admitted::Duplicate) | None => None,
                }
            }
            Err(r) => Some(r),
        };
        self.record_refusals(
            &mut tx,
            &q.upstream,
            &[refused.as_slice()],
            keep_rejected,
            &mut audit,
        )
        .await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM quarantine WHERE id = ?"))
            .bind(q.id)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        self.append_audit_tx(&mut tx, &audit).await?;
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
        if !self
            .any_before(
                "SELECT CAST(1 AS BIGINT) FROM quarantine WHERE received_ms < ? LIMIT 1",
                before_ms,
            )
            .await?
        {
            return Ok(0);
        }
        let (_writing, mut tx) = self.write_tx().await?;
        let rows: Vec<(i64, String, i64, String, i64)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT id, upstream_org, upstream_seq, key_id, due_ms FROM quarantine WHERE received_ms < ?",))
        .bind(before_ms)
        .fetch_all(&mut **db)
        .await?);
        let mut audit = Vec::new();
        for (id, up, seq, key, due_ms) in &rows {
            on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM quarantine WHERE id = ?"))
                .bind(id)
                .execute(&mut **db)
                .await.map(|r| r.rows_affected())?);
            audit.push(AuditEntry::quarantine_expired(
                up,
                *seq as u64,
                key,
                *due_ms,
            ));
        }
        self.append_audit_tx(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }
}
