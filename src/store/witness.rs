//! Ledger heads partners signed and gave us (we are their witness), and
//! the reads of our own ledger that answering for ours needs.

use prost::Message;

use super::db::{on, sql};
use super::{Store, StoreError, to_i64};
use crate::audit::witness::{self, Witnessed};
use crate::audit::{AuditEntry, GENESIS};
use crate::model::OrgId;
use crate::proto::v1::Envelope;
use crate::signing::{KeyDirectory, KnownKey};

/// Heads kept per partner; older ones are dropped beyond it (the newest
/// carry the most: each extends the ones before).
const HEADS_KEPT_PER_PARTNER: i64 = 1000;

/// A partner's signed ledger head as we keep it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WitnessedHead {
    /// The partner.
    #[sqlx(rename = "org_id", try_from = "String")]
    pub org: OrgId,
    /// Rows in its ledger.
    #[sqlx(try_from = "i64")]
    pub rows: u64,
    /// Hash of its last row.
    pub head_hash: Vec<u8>,
    /// When it signed the head (its clock).
    pub signed_ms: i64,
    /// When we received it (ours).
    pub received_ms: i64,
    /// The signed envelope, serialised.
    pub envelope: Vec<u8>,
}

impl Store {
    /// Our ledger head now: rows and the hash of the last one. Synced to
    /// disk first: a head given to a partner never covers rows a power cut
    /// could still take (which the partner would then see as truncated).
    pub async fn ledger_head(&self) -> Result<Witnessed, StoreError> {
        Ok(self.ledger_head_at(0).await?.0)
    }

    /// [`Store::ledger_head`] and the hash of row `rows` as stored now (the
    /// genesis hash for 0; `None` if there is no such row), both read in one
    /// transaction, so they agree even while the ledger is being changed.
    pub async fn ledger_head_at(
        &self,
        rows: u64,
    ) -> Result<(Witnessed, Option<Vec<u8>>), StoreError> {
        let (head, at) = self.synced_head(Some(rows)).await?;
        let head = match head {
            Some((rows, head_hash)) => Witnessed {
                rows: rows.max(0) as u64,
                head_hash,
            },
            None => Witnessed {
                rows: 0,
                head_hash: GENESIS.to_vec(),
            },
        };
        Ok((head, at))
    }

    /// The hash of our ledger's row `rows` as stored now (the genesis hash
    /// for 0), or `None` if there is no such row.
    pub async fn ledger_hash_at(&self, rows: u64) -> Result<Option<Vec<u8>>, StoreError> {
        if rows == 0 {
            return Ok(Some(GENESIS.to_vec()));
        }
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_scalar(sql!("SELECT hash FROM audit WHERE seq = ?"))
            .bind(to_i64(rows))
            .fetch_optional(db)
            .await?),
        )
    }

    /// The newest head of `org` we hold.
    pub async fn latest_witnessed(&self, org: &OrgId) -> Result<Option<Witnessed>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT rows, head_hash FROM witnessed_heads WHERE org_id = ? ORDER BY rows DESC LIMIT 1",))
        .bind(org.as_str())
        .fetch_optional(db)
        .await?);
        Ok(row.map(|(rows, head_hash)| Witnessed {
            rows: rows.max(0) as u64,
            head_hash,
        }))
    }

    /// Keeps a verified head of `org` (one per row count; the oldest beyond
    /// the per-partner bound are dropped).
    pub async fn keep_witnessed(
        &self,
        org: &OrgId,
        head: &Witnessed,
        signed_ms: i64,
        envelope: &[u8],
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO witnessed_heads (org_id, rows, head_hash, signed_ms, received_ms, envelope) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (org_id, rows) DO NOTHING",))
        .bind(org.as_str())
        .bind(to_i64(head.rows))
        .bind(&head.head_hash)
        .bind(signed_ms)
        .bind(self.now())
        .bind(envelope)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM witnessed_heads WHERE org_id = ?1 AND rows < \
             (SELECT rows FROM witnessed_heads WHERE org_id = ?1 ORDER BY rows DESC LIMIT 1 OFFSET ?2)",))
        .bind(org.as_str())
        .bind(HEADS_KEPT_PER_PARTNER - 1)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        tx.commit().await?;
        Ok(())
    }

    /// Heads we hold, of one partner or all, oldest first per partner.
    pub async fn witnessed_heads(
        &self,
        org: Option<&OrgId>,
    ) -> Result<Vec<WitnessedHead>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT org_id, rows, head_hash, signed_ms, received_ms, envelope FROM witnessed_heads \
             WHERE (?1 IS NULL OR org_id = ?1) ORDER BY org_id, rows",))
        .bind(org.map(|o| o.as_str()))
        .fetch_all(db)
        .await?),
        )
    }

    /// Checks the ledger as a chain ([`Store::verify_audit`]), then heads of
    /// it that partners kept (serialised envelopes): each must be signed by
    /// one of `own`'s keys, and our row at its count must have its hash.
    /// `Ok(Ok(rows))`, or the first problem named.
    pub async fn verify_audit_against(
        &self,
        own: &OrgId,
        heads: &[Vec<u8>],
    ) -> Result<Result<u64, String>, StoreError> {
        let rows = match self.verify_audit().await? {
            Ok(rows) => rows,
            Err(b) => return Ok(Err(b.to_string())),
        };
        let mut keys = KeyDirectory::default();
        for k in self.own_signing_keys().await? {
            // Our own past statements: a key revoked since still made them.
            let _ = keys.insert(KnownKey::unbounded(own.clone(), k.key_id, k.public_key));
        }
        for (i, bytes) in heads.iter().enumerate() {
            let head = Envelope::decode(bytes.as_slice())
                .map_err(|e| format!("head {}: not an envelope: {e}", i + 1))
                .and_then(|env| {
                    witness::open_head(&env, &keys, own).map_err(|e| format!("head {}: {e}", i + 1))
                });
            let head = match head {
                Ok(h) => h,
                Err(e) => return Ok(Err(e)),
            };
            let hash = self.ledger_hash_at(head.rows).await?;
            if let Err(e) = witness::check_own(&head, rows, hash.as_deref()) {
                return Ok(Err(e));
            }
        }
        Ok(Ok(rows))
    }

    /// Puts a disagreement of `org`'s head with the one we hold on record.
    pub async fn record_witness_problem(&self, org: &OrgId, why: &str) -> Result<(), StoreError> {
        self.append_audit(&[AuditEntry::ledger_inconsistent(org.as_str(), why)])
            .await
    }
}
