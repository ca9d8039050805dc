//! The key directory's cards of non-partner orgs that travelled through the
//! mesh: accepted (their keys verify indicators) or pending approval.

use super::db::{on, sql};
use super::{Store, StoreError, to_i64};
use crate::audit::AuditEntry;
use crate::identity::VerifiedCard;
use crate::model::OrgId;

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

impl TryFrom<String> for CardState {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        match s.as_str() {
            "accepted" => Ok(CardState::Accepted),
            "pending" => Ok(CardState::Pending),
            other => Err(StoreError::Corrupt(format!("org_cards.state '{other}'"))),
        }
    }
}

/// A card of a non-partner org received through the mesh.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DirectoryRow {
    /// The org.
    #[sqlx(rename = "org_id", try_from = "String")]
    pub org: OrgId,
    /// The card envelope (serialised).
    pub card: Vec<u8>,
    /// Its version.
    #[sqlx(rename = "card_version", try_from = "i64")]
    pub version: u64,
    /// Accepted or pending.
    #[sqlx(try_from = "String")]
    pub state: CardState,
    /// The partner it came through, or the admin who approved it.
    pub via: String,
    /// When last changed.
    pub updated_ms: i64,
}

impl Store {
    /// Cards of non-partner orgs, by org id.
    pub async fn directory(&self) -> Result<Vec<DirectoryRow>, StoreError> {
        self.all(
            "SELECT org_id, card, card_version, state, via, updated_ms FROM org_cards ORDER BY org_id"
        )
        .await
    }

    /// The card held for `org`, if any.
    pub async fn directory_card(&self, org: &OrgId) -> Result<Option<DirectoryRow>, StoreError> {
        Ok(
            on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT org_id, card, card_version, state, via, updated_ms FROM org_cards WHERE org_id = ?1",))
        .bind(org.as_str())
        .fetch_optional(db)
        .await?),
        )
    }

    /// Pending cards that came through partner `via`: (count, bytes).
    pub async fn pending_cards_via(&self, via: &OrgId) -> Result<(u64, u64), StoreError> {
        let (n, bytes): (i64, i64) = on!(Pool, &self.pool, db => sqlx::query_as(sql!("SELECT COUNT(*), CAST(COALESCE(SUM(LENGTH(card)), 0) AS BIGINT) FROM org_cards WHERE state = 'pending' AND via = ?1",))
        .bind(via.as_str())
        .fetch_one(db)
        .await?);
        Ok((n.max(0) as u64, bytes.max(0) as u64))
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
            self.replace_keys(&mut tx, card).await?;
        }
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO org_cards (org_id, card, card_version, state, via, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT (org_id) DO UPDATE SET card = ?2, card_version = ?3, state = ?4, via = ?5, updated_ms = ?6",))
        .bind(card.org.as_str())
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(state.as_str())
        .bind(via)
        .bind(self.now())
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        let key_ids: Vec<&str> = card.keys.iter().map(|k| k.key_id.as_str()).collect();
        self.commit_with(
            tx,
            &[AuditEntry::directory_card(
                event,
                actor,
                card.org.as_str(),
                card.card.version,
                via,
                &key_ids,
            )],
        )
        .await
    }
}
