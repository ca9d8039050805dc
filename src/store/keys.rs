//! Signing keys: our own (current and retired, with rotation and
//! revocation) and every trusted org's, as their cards publish them. One
//! key belongs to one org.

use super::db::{on, sql};
use super::{Store, StoreError, Tx};
use crate::audit::AuditEntry;
use crate::identity::VerifiedCard;
use crate::model::OrgId;
use crate::signing::KnownKey;

/// One of our own signing keys.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// The signed rotation statement by which this key took over from the
    /// one before (a serialised envelope; empty for the first key).
    pub rotation: Vec<u8>,
}

/// A `signing_keys` row as read.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    org_id: String,
    public_key: Vec<u8>,
    not_before_ms: i64,
    not_after_ms: i64,
    revoked: bool,
}

impl TryFrom<KeyRow> for KnownKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        Ok(KnownKey {
            key_id: r.key_id,
            org: OrgId::parse(&r.org_id)
                .map_err(|e| StoreError::Corrupt(format!("signing_keys.org_id: {e}")))?,
            public_key: r.public_key,
            not_before_ms: r.not_before_ms,
            not_after_ms: r.not_after_ms,
            revoked: r.revoked,
        })
    }
}

impl Store {
    /// Our own signing keys (current and retired), oldest first.
    pub async fn own_signing_keys(&self) -> Result<Vec<OwnKeyRow>, StoreError> {
        self.all(
            "SELECT key_id, public_key, not_before_ms, not_after_ms, revoked_ms, rotation FROM own_signing_keys \
             ORDER BY not_before_ms, key_id"
        )
        .await
    }

    /// Records `key` as one of our signing keys if it is not yet (the key
    /// `init` made, on first start).
    pub async fn ensure_own_key(&self, key_id: &str, public_key: &[u8]) -> Result<(), StoreError> {
        on!(Pool, &self.pool, db => sqlx::query(sql!("INSERT INTO own_signing_keys (key_id, public_key, not_before_ms, not_after_ms) \
             VALUES (?, ?, 0, 0) ON CONFLICT DO NOTHING",))
        .bind(key_id)
        .bind(public_key)
        .execute(db)
        .await.map(|r| r.rows_affected())?);
        Ok(())
    }

    /// Retires `old` at `at_ms` and records `new` as our current key from
    /// then on, with `rotation`, the statement (signed by `old`) that hands
    /// over to it.
    pub async fn rotate_own_key(
        &self,
        old: &str,
        new: &str,
        new_public: &[u8],
        rotation: &[u8],
        at_ms: i64,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE own_signing_keys SET not_after_ms = ? WHERE key_id = ?"))
            .bind(at_ms)
            .bind(old)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO own_signing_keys (key_id, public_key, not_before_ms, not_after_ms, rotation) \
             VALUES (?, ?, ?, 0, ?)",))
        .bind(new)
        .bind(new_public)
        .bind(at_ms)
        .bind(rotation)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.commit_with(
            tx,
            &[AuditEntry::signing_key_rotated(actor, old, new, at_ms)],
        )
        .await
    }

    /// Revokes one of our retired signing keys.
    pub async fn revoke_own_key(&self, key_id: &str, actor: &str) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let row: Option<(i64, i64)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT not_after_ms, revoked_ms FROM own_signing_keys WHERE key_id = ?",))
        .bind(key_id)
        .fetch_optional(&mut **db)
        .await?);
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
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE own_signing_keys SET revoked_ms = ? WHERE key_id = ?"))
            .bind(self.now())
            .bind(key_id)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        self.commit_with(tx, &[AuditEntry::signing_key_revoked(actor, key_id)])
            .await
    }

    /// Every trusted org's signing keys (partners' and accepted directory
    /// orgs').
    pub async fn signing_keys(&self) -> Result<Vec<KnownKey>, StoreError> {
        let rows: Vec<KeyRow> = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT key_id, org_id, public_key, not_before_ms, not_after_ms, revoked FROM signing_keys",))
        .fetch_all(db)
        .await?);
        rows.into_iter().map(TryInto::try_into).collect()
    }

    /// Refuses a card carrying a signing key already registered for another
    /// org: one key belongs to one org.
    pub(super) async fn check_key_owners(
        &self,
        tx: &mut Tx,
        card: &VerifiedCard,
    ) -> Result<(), StoreError> {
        for k in &card.keys {
            let owner: Option<String> = on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!("SELECT org_id FROM signing_keys WHERE key_id = ?"))
                    .bind(&k.key_id)
                    .fetch_optional(&mut **db)
                    .await?);
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

    /// Makes `card`'s keys (with validity and revocation) the trusted keys
    /// of its org.
    pub(super) async fn replace_keys(
        &self,
        tx: &mut Tx,
        card: &VerifiedCard,
    ) -> Result<(), StoreError> {
        self.check_key_owners(tx, card).await?;
        on!(Tx, &mut *tx, db => sqlx::query(sql!("DELETE FROM signing_keys WHERE org_id = ?"))
            .bind(card.org.as_str())
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        for k in &card.keys {
            on!(Tx, &mut *tx, db => sqlx::query(sql!("INSERT INTO signing_keys (key_id, org_id, public_key, not_before_ms, not_after_ms, revoked) \
                 VALUES (?, ?, ?, ?, ?, ?)",))
            .bind(&k.key_id)
            .bind(card.org.as_str())
            .bind(&k.public_key)
            .bind(k.not_before_ms)
            .bind(k.not_after_ms)
            .bind(k.revoked)
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        }
        Ok(())
    }
}
