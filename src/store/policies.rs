//! Sharing-policy documents, versioned by name. The store keeps the TOML
//! text as applied; parsing it is the policy module's business.

use super::db::{on, sql};
use super::{Store, StoreError, Tx, to_i64};
use crate::audit::AuditEntry;

/// One applied version of a named policy.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PolicyRecord {
    /// Policy name.
    pub name: String,
    /// Version, from 1.
    #[sqlx(try_from = "i64")]
    pub version: u64,
    /// The TOML document as applied.
    pub document: String,
    /// When applied.
    pub applied_ms: i64,
    /// Who applied it.
    pub applied_by: String,
}

impl Store {
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
        let latest: Option<(i64, String)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT version, document FROM policies WHERE name = ? ORDER BY version DESC LIMIT 1",))
        .bind(name)
        .fetch_optional(&mut **db)
        .await?);
        if let Some((v, doc)) = &latest
            && doc == document
        {
            return Ok((*v as u64, false));
        }
        let version = latest.map(|(v, _)| v as u64).unwrap_or(0) + 1;
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO policies (name, version, document, applied_ms, applied_by) VALUES (?, ?, ?, ?, ?)",))
        .bind(name)
        .bind(to_i64(version))
        .bind(document)
        .bind(self.now())
        .bind(actor)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        let entry = AuditEntry::policy_applied(actor, name, version);
        self.append_audit_tx(&mut tx, &[entry]).await?;
        tx.commit().await?;
        Ok((version, true))
    }

    /// A policy version (the latest when `version` is `None`).
    pub async fn policy(
        &self,
        name: &str,
        version: Option<u64>,
    ) -> Result<Option<PolicyRecord>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT name, version, document, applied_ms, applied_by FROM policies \
             WHERE name = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",))
        .bind(name)
        .bind(version.map(to_i64))
        .fetch_optional(db)
        .await?),
        )
    }

    /// The latest version of every policy, by name.
    pub async fn policies(&self) -> Result<Vec<PolicyRecord>, StoreError> {
        self.all(
            "SELECT p.name, p.version, p.document, p.applied_ms, p.applied_by FROM policies p \
             WHERE p.version = (SELECT MAX(version) FROM policies q WHERE q.name = p.name) ORDER BY p.name"
        )
        .await
    }

    /// Every version of policy `name`, oldest first.
    pub async fn policy_history(&self, name: &str) -> Result<Vec<PolicyRecord>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT name, version, document, applied_ms, applied_by FROM policies \
             WHERE name = ? ORDER BY version",))
        .bind(name)
        .fetch_all(db)
        .await?),
        )
    }

    /// Fails unless a policy named `name` has been applied.
    pub(super) async fn require_policy(&self, tx: &mut Tx, name: &str) -> Result<(), StoreError> {
        let exists: Option<i64> = on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!("SELECT CAST(1 AS BIGINT) FROM policies WHERE name = ? LIMIT 1"))
                .bind(name)
                .fetch_optional(&mut **db)
                .await?);
        if exists.is_none() {
            return Err(StoreError::NotFound(format!(
                "no policy named '{name}' has been applied (use `threatmesh policy apply FILE` first)"
            )));
        }
        Ok(())
    }
}
