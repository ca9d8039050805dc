//! Statistics reports partners shared with us (ours are made on demand),
//! one per reporter and period, and the node's own secrets.

use super::db::{on, sql};
use super::quarantine::OrgPath;
use super::sightings::KeptReport;
use super::{Store, StoreError};
use crate::audit::AuditEntry;

/// A statistics report as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StatisticsRow {
    /// The org that made (and signed) it.
    pub reporter: String,
    /// "day" or "week".
    pub period: String,
    /// Start of the period, Unix ms.
    pub period_start: i64,
    /// When the reporter made it (orders reports of a period).
    pub made_ms: i64,
    /// The partner it came from.
    pub received_from: String,
    /// Orgs it passed through before reaching us, reporter first.
    #[sqlx(try_from = "String")]
    pub path: OrgPath,
    /// The serialised, signed envelope.
    pub envelope: Vec<u8>,
    /// When we stored it.
    pub stored_ms: i64,
}

impl Store {
    /// Keeps a report unless it or a later one of its reporter and period
    /// is held; counts against `received_from`'s `max_from_partner`
    /// reports. `audit` goes on the ledger with it, in one transaction.
    pub async fn keep_statistics(
        &self,
        row: &StatisticsRow,
        max_from_partner: u64,
        audit: &[AuditEntry],
    ) -> Result<KeptReport, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let held: Option<i64> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!(
            "SELECT made_ms FROM statistics_reports WHERE reporter = ? AND period = ? AND period_start = ?"
        ))
        .bind(&row.reporter)
        .bind(&row.period)
        .bind(row.period_start)
        .fetch_optional(&mut **db)
        .await?);
        let kept = match held {
            Some(made) if made >= row.made_ms => return Ok(KeptReport::AlreadyHeld),
            Some(_) => KeptReport::Replaced,
            None => KeptReport::New,
        };
        if kept == KeptReport::New {
            let n: i64 = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!(
                "SELECT COUNT(*) FROM statistics_reports WHERE received_from = ?"
            ))
            .bind(&row.received_from)
            .fetch_one(&mut **db)
            .await?);
            let n = n.max(0) as u64;
            if n >= max_from_partner {
                return Ok(KeptReport::OverLimit(n));
            }
        }
        let now = self.now();
        on!(Tx, &mut tx, db => sqlx::query(sql!(
            "INSERT INTO statistics_reports (reporter, period, period_start, made_ms, received_from, path, envelope, stored_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (reporter, period, period_start) DO UPDATE SET \
             made_ms = ?4, received_from = ?5, path = ?6, envelope = ?7, stored_ms = ?8"
        ))
        .bind(&row.reporter)
        .bind(&row.period)
        .bind(row.period_start)
        .bind(row.made_ms)
        .bind(&row.received_from)
        .bind(row.path.join(","))
        .bind(&row.envelope)
        .bind(now)
        .execute(&mut **db)
        .await
        .map(|r| r.rows_affected())?);
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Reports held whose period starts at or after `since_ms` (of one
    /// period kind, or all), by reporter and period.
    pub async fn statistics_reports(
        &self,
        period: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<StatisticsRow>, StoreError> {
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(
            "SELECT reporter, period, period_start, made_ms, received_from, path, envelope, stored_ms \
             FROM statistics_reports WHERE period_start >= ?1 AND (?2 IS NULL OR period = ?2) \
             ORDER BY reporter, period, period_start"
        ))
        .bind(since_ms)
        .bind(period)
        .fetch_all(db)
        .await?))
    }

    /// The node's secret named `name` (32 random bytes made the first time
    /// it is asked for, then kept).
    pub async fn node_secret(&self, name: &str) -> Result<Vec<u8>, StoreError> {
        let held: Option<Vec<u8>> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!(
            "SELECT secret FROM node_secrets WHERE name = ?"
        ))
        .bind(name)
        .fetch_optional(db)
        .await?);
        if let Some(s) = held {
            return Ok(s);
        }
        let mut fresh = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
            .map_err(|_| StoreError::Database("the system random generator failed".into()))?;
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!(
            "INSERT INTO node_secrets (name, secret) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
        ))
        .bind(name)
        .bind(fresh.as_slice())
        .execute(&mut **db)
        .await
        .map(|r| r.rows_affected())?);
        let kept: Vec<u8> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!(
            "SELECT secret FROM node_secrets WHERE name = ?"
        ))
        .bind(name)
        .fetch_one(&mut **db)
        .await?);
        tx.commit().await?;
        Ok(kept)
    }

    /// Our own sightings (indicator origin, id) of windows starting at or
    /// after `since_ms`, with the window.
    pub async fn own_sightings_since(
        &self,
        own: &str,
        since_ms: i64,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(
            "SELECT origin_org, indicator_id, window_ms FROM sightings WHERE sighter = ? AND window_ms >= ? \
             ORDER BY window_ms"
        ))
        .bind(own)
        .bind(since_ms)
        .fetch_all(db)
        .await?))
    }
}
