//! Our own certificates and their revocations, our CRL counter, and the
//! CRLs partners gave us.

use super::db::{on, sql};
use super::{Store, StoreError};
use crate::audit::AuditEntry;
use crate::model::OrgId;

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

/// A `certificates` row joined with its revocation, as read.
#[derive(sqlx::FromRow)]
struct Row {
    serial: String,
    spiffe_id: String,
    not_before_ms: i64,
    not_after_ms: i64,
    issued_ms: i64,
    issued_by: String,
    pem: String,
    revoked_ms: Option<i64>,
    reason: Option<String>,
}

impl From<Row> for CertRow {
    fn from(r: Row) -> Self {
        Self {
            serial: r.serial,
            spiffe_id: r.spiffe_id,
            not_before_ms: r.not_before_ms,
            not_after_ms: r.not_after_ms,
            issued_ms: r.issued_ms,
            issued_by: r.issued_by,
            pem: r.pem,
            revoked: r.revoked_ms.map(|at| (at, r.reason.unwrap_or_default())),
        }
    }
}

/// A partner's imported CRL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRow {
    /// The partner.
    pub org: OrgId,
    /// The CRL (DER).
    pub der: Vec<u8>,
}

impl Store {
    /// Records a certificate of our own org (issued now, or found in the
    /// configuration). Returns false if it was known already.
    pub async fn record_cert(&self, cert: &CertRow, actor: &str) -> Result<bool, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let done = on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO certificates (serial, spiffe_id, not_before_ms, not_after_ms, issued_ms, issued_by, pem) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",))
        .bind(&cert.serial)
        .bind(&cert.spiffe_id)
        .bind(cert.not_before_ms)
        .bind(cert.not_after_ms)
        .bind(cert.issued_ms)
        .bind(&cert.issued_by)
        .bind(&cert.pem)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        let new = done == 1;
        if new {
            let entry =
                AuditEntry::cert_issued(actor, &cert.spiffe_id, &cert.serial, cert.not_after_ms);
            self.append_audit_tx(&mut tx, &[entry]).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Certificates of our own org, newest first, with their revocation.
    pub async fn certs(&self) -> Result<Vec<CertRow>, StoreError> {
        let rows: Vec<Row> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT c.serial, c.spiffe_id, c.not_before_ms, c.not_after_ms, c.issued_ms, c.issued_by, c.pem, \
             r.revoked_ms, r.reason FROM certificates c LEFT JOIN revoked_certs r ON r.serial = c.serial \
             ORDER BY c.issued_ms DESC, c.serial",))
        .fetch_all(db)
        .await?);
        Ok(rows.into_iter().map(Into::into).collect())
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
        let done = on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO revoked_certs (serial, spiffe_id, reason, revoked_ms, revoked_by) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (serial) DO NOTHING",))
        .bind(serial)
        .bind(spiffe_id)
        .bind(reason)
        .bind(self.now())
        .bind(actor)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        let new = done == 1;
        if new {
            let entry = AuditEntry::cert_revoked(actor, spiffe_id, serial, reason);
            self.append_audit_tx(&mut tx, &[entry]).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Serials of our own revoked certificates, sorted.
    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT serial FROM revoked_certs ORDER BY serial"))
                .fetch_all(db)
                .await?),
        )
    }

    /// Our revoked certificates with when they were revoked, for our CRL.
    pub async fn revocations(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT serial, revoked_ms FROM revoked_certs ORDER BY serial"))
                .fetch_all(db)
                .await?),
        )
    }

    /// The next number for our own CRL (1, 2, ...), recorded on the ledger
    /// as signed by `actor` with `revoked` entries.
    pub async fn next_crl_number(&self, revoked: usize, actor: &str) -> Result<u64, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let n: i64 = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("INSERT INTO crl_counter (id, number) VALUES (1, 1) \
             ON CONFLICT (id) DO UPDATE SET number = crl_counter.number + 1 RETURNING number",))
        .fetch_one(&mut **db)
        .await?);
        let entry = AuditEntry::crl_signed(actor, n, revoked);
        self.append_audit_tx(&mut tx, &[entry]).await?;
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
        self.require_peer(&mut tx, org).await?;
        let current: Option<i64> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT this_update_ms FROM partner_crls WHERE org_id = ?"))
                .bind(org.as_str())
                .fetch_optional(&mut **db)
                .await?);
        if let Some(cur) = current
            && cur > this_update_ms
        {
            return Err(StoreError::Conflict(format!(
                "this CRL of {org} (thisUpdate {this_update_ms}) is older than the one already imported (thisUpdate {cur})"
            )));
        }
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO partner_crls (org_id, der, this_update_ms, imported_ms, imported_by) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (org_id) DO UPDATE SET der = ?2, this_update_ms = ?3, imported_ms = ?4, imported_by = ?5",))
        .bind(org.as_str())
        .bind(der)
        .bind(this_update_ms)
        .bind(self.now())
        .bind(actor)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.commit_with(
            tx,
            &[AuditEntry::crl_imported(
                actor,
                org.as_str(),
                this_update_ms,
                summary,
            )],
        )
        .await
    }

    /// Every partner's imported CRL.
    pub async fn partner_crls(&self) -> Result<Vec<CrlRow>, StoreError> {
        let rows: Vec<(String, Vec<u8>)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT org_id, der FROM partner_crls ORDER BY org_id"))
                .fetch_all(db)
                .await?);
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
