//! Sightings this node holds — reported here, or received from partners on
//! their way to the origin — one row per sighter, indicator and day, and
//! the outbox of those waiting to go to the partner that delivered us the
//! indicator.

use super::db::{on, sql};
use super::quarantine::OrgPath;
use super::{Store, StoreError, to_i64};
use crate::audit::AuditEntry;
use crate::model::OrgId;

/// The columns of a sighting row (table alias `s`), in [`SightingRow`]'s
/// order, for `concat!` into query texts.
macro_rules! columns {
    () => {
        "s.sighter, s.origin_org, s.indicator_id, s.window_ms, s.indicator_version, \
         s.seen_count, s.first_seen_ms, s.last_seen_ms, s.reported_ms, s.sector, s.country, \
         s.received_from, s.path, s.envelope, s.stored_ms"
    };
}

/// A sighting as stored: the signed report's fields, where it came from,
/// and the envelope as the sighter signed it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SightingRow {
    /// The org that saw the indicator (and signed the report).
    pub sighter: String,
    /// The indicator's origin.
    #[sqlx(rename = "origin_org")]
    pub origin: String,
    /// The indicator's id.
    pub indicator_id: String,
    /// Start of the UTC day reported.
    pub window_ms: i64,
    /// The version the sighter held.
    #[sqlx(try_from = "i64")]
    pub indicator_version: u64,
    /// Times seen that day.
    #[sqlx(rename = "seen_count", try_from = "i64")]
    pub count: u64,
    /// First seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last seen, Unix ms.
    pub last_seen_ms: i64,
    /// When the sighter signed this report (orders reports of a day).
    pub reported_ms: i64,
    /// Sector the sighter disclosed ("" = none).
    pub sector: String,
    /// Country the sighter disclosed ("" = none).
    pub country: String,
    /// The partner it came from; "" = reported here.
    pub received_from: String,
    /// Orgs it passed through before reaching us, sighter first.
    #[sqlx(try_from = "String")]
    pub path: OrgPath,
    /// The serialised, signed envelope.
    pub envelope: Vec<u8>,
    /// When we stored it.
    pub stored_ms: i64,
}

/// A sighting waiting in the outbox, with when it was (re)queued: a report
/// replaced after it was read is queued again, and stays.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutgoingSighting {
    /// The sighting as held now.
    #[sqlx(flatten)]
    pub row: SightingRow,
    /// When it was queued.
    pub queued_ms: i64,
}

/// How our own report is kept (see [`Store::keep_own_sighting`]).
#[derive(Debug, Clone, Copy)]
pub struct OwnSight<'a> {
    /// The reported time of the report it adds to (`None`: none held).
    pub merged_from: Option<i64>,
    /// The publisher and its idempotency key, if it sent one.
    pub key: Option<(&'a str, &'a crate::store::PublishKey)>,
}

/// What keeping our own report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnKept {
    /// Kept.
    Kept,
    /// Another report of the day was kept since ours was made from the one
    /// held: make it again.
    Changed,
    /// The publisher's idempotency key was used meanwhile: nothing kept.
    KeyUsed,
}

/// What keeping a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptReport {
    /// The first report of that sighter, indicator and day.
    New,
    /// It replaced an older report of the same day.
    Replaced,
    /// That report, or a later one of the day, was already held: nothing
    /// changed (a replay, or a report overtaken on its way).
    AlreadyHeld,
    /// The partner it came from already brought the most reports one
    /// partner may make us keep (the count it holds).
    OverLimit(u64),
}

impl Store {
    /// Our own report of `id` for the day `window_ms`, if we made one.
    pub async fn own_sighting(
        &self,
        own: &OrgId,
        origin: &str,
        id: &str,
        window_ms: i64,
    ) -> Result<Option<SightingRow>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM sightings s WHERE s.sighter = ? AND s.origin_org = ? \
             AND s.indicator_id = ? AND s.window_ms = ?"
        );
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(Q))
            .bind(own.as_str())
            .bind(origin)
            .bind(id)
            .bind(window_ms)
            .fetch_optional(db)
            .await?))
    }

    /// Keeps a partner's report unless it or a later one of its day is
    /// held; it counts against that partner's `max_from_partner` sightings.
    /// When it is kept, `audit` goes on the ledger and, with a `next_hop`,
    /// the sighting is queued for that partner — all in one transaction.
    pub async fn keep_sighting(
        &self,
        row: &SightingRow,
        next_hop: Option<&OrgId>,
        max_from_partner: u64,
        audit: &[AuditEntry],
    ) -> Result<KeptReport, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let held = held_report(&mut tx, row).await?;
        let kept = match held {
            Some(reported) if reported >= row.reported_ms => return Ok(KeptReport::AlreadyHeld),
            Some(_) => KeptReport::Replaced,
            None => KeptReport::New,
        };
        if kept == KeptReport::New && !row.received_from.is_empty() {
            let n: i64 = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!(
                "SELECT COUNT(*) FROM sightings WHERE received_from = ?"
            ))
            .bind(&row.received_from)
            .fetch_one(&mut **db)
            .await?);
            let n = n.max(0) as u64;
            if n >= max_from_partner {
                return Ok(KeptReport::OverLimit(n));
            }
        }
        self.write_sighting(&mut tx, row, next_hop).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(kept)
    }

    /// Keeps our own report of a day, made by adding to the one held when
    /// `own.merged_from` (its reported time; `None`: none was held) — only
    /// if that is still the one held, so no two additions overwrite each
    /// other — and remembers the publisher's idempotency key with it. With
    /// `audit` and the outbox row for `next_hop`, in one transaction.
    pub async fn keep_own_sighting(
        &self,
        row: &SightingRow,
        next_hop: Option<&OrgId>,
        own: OwnSight<'_>,
        audit: &[AuditEntry],
    ) -> Result<OwnKept, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        if held_report(&mut tx, row).await? != own.merged_from {
            return Ok(OwnKept::Changed);
        }
        if let Some((publisher, key)) = own.key {
            let new = on!(Tx, &mut tx, db => sqlx::query(sql!(
                "INSERT INTO sight_keys (publisher, key, request_digest, origin_org, indicator_id, window_ms, created_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (publisher, key) DO NOTHING"
            ))
            .bind(publisher)
            .bind(&key.key)
            .bind(&key.request_digest)
            .bind(&row.origin)
            .bind(&row.indicator_id)
            .bind(row.window_ms)
            .bind(self.now())
            .execute(&mut **db)
            .await
            .map(|r| r.rows_affected())?);
            if new == 0 {
                return Ok(OwnKept::KeyUsed);
            }
        }
        self.write_sighting(&mut tx, row, next_hop).await?;
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(OwnKept::Kept)
    }

    /// What `publisher` sighted under idempotency `key`: the digest of that
    /// request and the report (origin, id, day) it added to.
    pub async fn sighted_under(
        &self,
        publisher: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, String, String, i64)>, StoreError> {
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(
            "SELECT request_digest, origin_org, indicator_id, window_ms FROM sight_keys \
             WHERE publisher = ? AND key = ?"
        ))
        .bind(publisher)
        .bind(key)
        .fetch_optional(db)
        .await?))
    }

    /// Forgets sighting idempotency keys recorded before `before_ms`.
    pub async fn forget_sight_keys(&self, before_ms: i64) -> Result<u64, StoreError> {
        let any: Option<i64> = on!(Pool, &self.pool, db => sqlx::query_scalar(sql!(
            "SELECT CAST(1 AS BIGINT) FROM sight_keys WHERE created_ms < ? LIMIT 1"
        ))
        .bind(before_ms)
        .fetch_optional(db)
        .await?);
        if any.is_none() {
            return Ok(0);
        }
        let (_writing, mut tx) = self.write_tx().await?;
        let done = on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM sight_keys WHERE created_ms < ?"))
            .bind(before_ms)
            .execute(&mut **db)
            .await
            .map(|r| r.rows_affected())?);
        tx.commit().await?;
        Ok(done)
    }

    /// Writes `row` over the one of its day, and queues it for `next_hop`.
    async fn write_sighting(
        &self,
        tx: &mut super::Tx,
        row: &SightingRow,
        next_hop: Option<&OrgId>,
    ) -> Result<(), StoreError> {
        let now = self.now();
        on!(Tx, &mut *tx, db => sqlx::query(sql!(
            "INSERT INTO sightings (sighter, origin_org, indicator_id, window_ms, indicator_version, \
             seen_count, first_seen_ms, last_seen_ms, reported_ms, sector, country, received_from, \
             path, envelope, stored_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15) \
             ON CONFLICT (sighter, origin_org, indicator_id, window_ms) DO UPDATE SET \
             indicator_version = ?5, seen_count = ?6, first_seen_ms = ?7, last_seen_ms = ?8, \
             reported_ms = ?9, sector = ?10, country = ?11, received_from = ?12, path = ?13, \
             envelope = ?14, stored_ms = ?15"
        ))
        .bind(&row.sighter)
        .bind(&row.origin)
        .bind(&row.indicator_id)
        .bind(row.window_ms)
        .bind(to_i64(row.indicator_version))
        .bind(to_i64(row.count))
        .bind(row.first_seen_ms)
        .bind(row.last_seen_ms)
        .bind(row.reported_ms)
        .bind(&row.sector)
        .bind(&row.country)
        .bind(&row.received_from)
        .bind(row.path.join(","))
        .bind(&row.envelope)
        .bind(now)
        .execute(&mut **db)
        .await
        .map(|r| r.rows_affected())?);
        if let Some(partner) = next_hop {
            // A replaced report is queued again, strictly later than when
            // it was read for sending, so finishing that send keeps it.
            on!(Tx, &mut *tx, db => sqlx::query(sql!(
                "INSERT INTO sighting_outbox (partner, sighter, origin_org, indicator_id, window_ms, queued_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (partner, sighter, origin_org, indicator_id, window_ms) DO UPDATE SET \
                 queued_ms = CASE WHEN ?6 > sighting_outbox.queued_ms THEN ?6 \
                 ELSE sighting_outbox.queued_ms + 1 END"
            ))
            .bind(partner.as_str())
            .bind(&row.sighter)
            .bind(&row.origin)
            .bind(&row.indicator_id)
            .bind(row.window_ms)
            .bind(now)
            .execute(&mut **db)
            .await
            .map(|r| r.rows_affected())?);
        }
        Ok(())
    }

    /// Sightings of indicator `id` (of `origin`, or any origin), newest day
    /// first, then by sighter.
    pub async fn sightings_of(
        &self,
        origin: Option<&str>,
        id: &str,
    ) -> Result<Vec<SightingRow>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM sightings s WHERE s.indicator_id = ?1 \
             AND (?2 IS NULL OR s.origin_org = ?2) ORDER BY s.window_ms DESC, s.sighter"
        );
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(Q))
            .bind(id)
            .bind(origin)
            .fetch_all(db)
            .await?))
    }

    /// Up to `limit` sightings stored at or after `since_ms`, in key order
    /// after `after` (sighter, origin, id, day; `None` = from the first).
    pub async fn sightings_after(
        &self,
        after: Option<&SightingRow>,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<SightingRow>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            " FROM sightings s WHERE s.stored_ms >= ?1 AND (?2 IS NULL OR \
             (s.sighter, s.origin_org, s.indicator_id, s.window_ms) > (?2, ?3, ?4, ?5)) \
             ORDER BY s.sighter, s.origin_org, s.indicator_id, s.window_ms LIMIT ?6"
        );
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(Q))
            .bind(since_ms)
            .bind(after.map(|r| r.sighter.as_str()))
            .bind(after.map_or("", |r| r.origin.as_str()))
            .bind(after.map_or("", |r| r.indicator_id.as_str()))
            .bind(after.map_or(0, |r| r.window_ms))
            .bind(limit as i64)
            .fetch_all(db)
            .await?))
    }

    /// Up to `limit` sightings waiting to go to `partner`, oldest queued
    /// first.
    pub async fn sighting_outbox(
        &self,
        partner: &OrgId,
        limit: usize,
    ) -> Result<Vec<OutgoingSighting>, StoreError> {
        const Q: &str = concat!(
            "SELECT ",
            columns!(),
            ", o.queued_ms FROM sighting_outbox o JOIN sightings s \
             ON s.sighter = o.sighter AND s.origin_org = o.origin_org \
             AND s.indicator_id = o.indicator_id AND s.window_ms = o.window_ms \
             WHERE o.partner = ? ORDER BY o.queued_ms LIMIT ?"
        );
        Ok(on!(Pool, &self.pool, db => sqlx::query_as(sql!(Q))
            .bind(partner.as_str())
            .bind(limit as i64)
            .fetch_all(db)
            .await?))
    }

    /// How many sightings wait to go to each partner.
    pub async fn sighting_outbox_counts(
        &self,
    ) -> Result<std::collections::HashMap<String, u64>, StoreError> {
        let rows: Vec<(String, i64)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(
            "SELECT partner, COUNT(*) FROM sighting_outbox GROUP BY partner"
        ))
        .fetch_all(db)
        .await?);
        Ok(rows
            .into_iter()
            .map(|(p, n)| (p, n.max(0) as u64))
            .collect())
    }

    /// Takes the sightings `partner` answered for out of its outbox (each
    /// only if not queued again since it was read) and puts `audit` on the
    /// ledger, in one transaction.
    pub async fn finish_sightings(
        &self,
        partner: &OrgId,
        done: &[&OutgoingSighting],
        audit: &[AuditEntry],
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        for o in done {
            on!(Tx, &mut tx, db => sqlx::query(sql!(
                "DELETE FROM sighting_outbox WHERE partner = ? AND sighter = ? AND origin_org = ? \
                 AND indicator_id = ? AND window_ms = ? AND queued_ms <= ?"
            ))
            .bind(partner.as_str())
            .bind(&o.row.sighter)
            .bind(&o.row.origin)
            .bind(&o.row.indicator_id)
            .bind(o.row.window_ms)
            .bind(o.queued_ms)
            .execute(&mut **db)
            .await
            .map(|r| r.rows_affected())?);
        }
        self.append_audit_tx(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Where a sighting of indicator (`origin`, `id`) goes next: the newest
    /// version we hold and the partner it came from ("" = published here),
    /// or `None` if we hold no version of it.
    pub async fn indicator_route(
        &self,
        origin: &str,
        id: &str,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let row: Option<(i64, String)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!(
            "SELECT version, received_from FROM indicators WHERE indicator_id = ? AND origin_org = ? \
             ORDER BY version DESC LIMIT 1"
        ))
        .bind(id)
        .bind(origin)
        .fetch_optional(db)
        .await?);
        Ok(row.map(|(v, from)| (v.max(0) as u64, from)))
    }
}

/// The reported time of the report held for `row`'s sighter, indicator and
/// day, if any.
async fn held_report(tx: &mut super::Tx, row: &SightingRow) -> Result<Option<i64>, StoreError> {
    Ok(on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!(
        "SELECT reported_ms FROM sightings WHERE sighter = ? AND origin_org = ? \
         AND indicator_id = ? AND window_ms = ?"
    ))
    .bind(&row.sighter)
    .bind(&row.origin)
    .bind(&row.indicator_id)
    .bind(row.window_ms)
    .fetch_optional(&mut **db)
    .await?))
}
