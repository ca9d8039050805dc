//! Registered partners: their cards, endpoints, bound policy, lifecycle
//! state and introducer flag.

use super::db::{on, sql};
use super::{Store, StoreError, to_i64};
use crate::audit::AuditEntry;
use crate::identity::VerifiedCard;
use crate::model::OrgId;

/// A registered partner.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PeerRecord {
    /// Partner org.
    #[sqlx(rename = "org_id", try_from = "String")]
    pub org: OrgId,
    /// Its display name.
    pub display_name: String,
    /// Where we dial it; empty = we do not subscribe to it.
    pub endpoint: String,
    /// Version of the stored card.
    #[sqlx(try_from = "i64")]
    pub card_version: u64,
    /// Its CA bundle.
    pub ca_bundle_pem: String,
    /// When first registered.
    pub added_ms: i64,
    /// Name of the bound sharing policy; empty = none (receives nothing).
    pub policy: String,
    /// Lifecycle state.
    #[sqlx(try_from = "String")]
    pub state: PeerState,
    /// Whether cards of other orgs relayed by this partner are accepted.
    pub introducer: bool,
    /// Its signed card as registered (serialised envelope).
    pub card: Vec<u8>,
}

/// A partner's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// Trusted, dialled, and served under its policy.
    Active,
    /// Nothing is sent, its connections are refused; can be resumed.
    Suspended,
    /// Hard stop; its cursor and history are kept for the audit.
    Removed,
}

impl PeerState {
    /// Stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Active => "active",
            PeerState::Suspended => "suspended",
            PeerState::Removed => "removed",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "active" => Ok(PeerState::Active),
            "suspended" => Ok(PeerState::Suspended),
            "removed" => Ok(PeerState::Removed),
            other => Err(StoreError::Corrupt(format!("peers.state '{other}'"))),
        }
    }
}

impl TryFrom<String> for PeerState {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        Self::parse(&s)
    }
}

/// Whether `put_peer` added or replaced a partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// A new partner.
    Added,
    /// A newer card or endpoint for a known partner.
    Updated,
}

fn not_a_partner(org: &OrgId) -> StoreError {
    StoreError::NotFound(format!("{org} is not a registered partner"))
}

impl Store {
    /// Registers or updates a partner from its verified card. A card older
    /// than the stored one is refused (rollback), and a signing key already
    /// registered for another org is refused.
    pub async fn put_peer(
        &self,
        card: &VerifiedCard,
        card_bytes: &[u8],
        endpoint: &str,
        policy: Option<&str>,
        introducer: bool,
        actor: &str,
    ) -> Result<PeerChange, StoreError> {
        let now = self.now();
        let (_writing, mut tx) = self.write_tx().await?;
        if let Some(name) = policy {
            self.require_policy(&mut tx, name).await?;
        }
        let existing: Option<i64> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT card_version FROM peers WHERE org_id = ?"))
                .bind(card.org.as_str())
                .fetch_optional(&mut **db)
                .await?);
        if let Some(v) = existing
            && (v as u64) > card.card.version
        {
            return Err(StoreError::Conflict(format!(
                "card for {} has version {} but version {v} is already registered",
                card.org, card.card.version
            )));
        }
        self.check_key_owners(&mut tx, card).await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("INSERT INTO peers (org_id, display_name, endpoint, card, card_version, ca_bundle_pem, added_ms, updated_ms, introducer) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?8) \
             ON CONFLICT (org_id) DO UPDATE SET display_name = excluded.display_name, \
             endpoint = excluded.endpoint, card = excluded.card, card_version = excluded.card_version, \
             ca_bundle_pem = excluded.ca_bundle_pem, updated_ms = excluded.updated_ms, state = 'active', \
             introducer = excluded.introducer",))
        .bind(card.org.as_str())
        .bind(&card.card.display_name)
        .bind(endpoint)
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(&card.card.ca_bundle_pem)
        .bind(now)
        .bind(introducer)
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.replace_keys(&mut tx, card).await?;
        // A partner's card supersedes any copy that came through the mesh.
        on!(Tx, &mut tx, db => sqlx::query(sql!("DELETE FROM org_cards WHERE org_id = ?"))
            .bind(card.org.as_str())
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        let org = card.org.as_str();
        let mut audit = vec![AuditEntry::peer_registered(
            actor,
            org,
            card.card.version,
            endpoint,
            introducer,
        )];
        if let Some(name) = policy {
            self.bind_policy(&mut tx, &card.org, name).await?;
            audit.push(AuditEntry::peer_policy(actor, org, name));
        }
        self.append_audit_tx(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(if existing.is_some() {
            PeerChange::Updated
        } else {
            PeerChange::Added
        })
    }

    /// All registered partners, by org id.
    pub async fn peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        self.all(
            "SELECT org_id, display_name, endpoint, card_version, ca_bundle_pem, added_ms, policy, state, \
             introducer, card FROM peers ORDER BY org_id"
        )
        .await
    }

    /// Replaces a partner's card with a newer one that arrived through the
    /// mesh (the caller checked its succession), keys included; endpoint,
    /// policy, state and introducer flag are kept.
    pub async fn update_peer_card(
        &self,
        card: &VerifiedCard,
        card_bytes: &[u8],
        via: &OrgId,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        self.replace_keys(&mut tx, card).await?;
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE peers SET display_name = ?, card = ?, card_version = ?, ca_bundle_pem = ?, updated_ms = ? \
             WHERE org_id = ?",))
        .bind(&card.card.display_name)
        .bind(card_bytes)
        .bind(to_i64(card.card.version))
        .bind(&card.card.ca_bundle_pem)
        .bind(self.now())
        .bind(card.org.as_str())
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.commit_with(
            tx,
            &[AuditEntry::card_updated(
                card.org.as_str(),
                card.card.version,
                via.as_str(),
            )],
        )
        .await
    }

    /// Binds partner `org` to policy `name` (which must exist).
    pub async fn set_peer_policy(
        &self,
        org: &OrgId,
        name: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        self.require_policy(&mut tx, name).await?;
        self.bind_policy(&mut tx, org, name).await?;
        self.commit_with(tx, &[AuditEntry::peer_policy(actor, org.as_str(), name)])
            .await
    }

    /// Suspends, resumes or removes a partner. Cursor, history and card are
    /// kept in every state.
    pub async fn set_peer_state(
        &self,
        org: &OrgId,
        state: PeerState,
        actor: &str,
    ) -> Result<PeerState, StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let before: Option<String> = on!(Tx, &mut tx, db => sqlx::query_scalar(sql!("SELECT state FROM peers WHERE org_id = ?"))
            .bind(org.as_str())
            .fetch_optional(&mut **db)
            .await?);
        let before = PeerState::parse(&before.ok_or_else(|| not_a_partner(org))?)?;
        if before == PeerState::Removed && state == PeerState::Active {
            return Err(StoreError::Conflict(format!(
                "{org} was removed; register it again with `threatmesh peer add --card FILE`"
            )));
        }
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE peers SET state = ?, updated_ms = ? WHERE org_id = ?"))
            .bind(state.as_str())
            .bind(self.now())
            .bind(org.as_str())
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        let entry = AuditEntry::peer_state(actor, org.as_str(), state.as_str(), before.as_str());
        self.append_audit_tx(&mut tx, &[entry]).await?;
        tx.commit().await?;
        Ok(before)
    }

    /// Changes a partner's dial endpoint and/or introducer flag.
    pub async fn update_peer(
        &self,
        org: &OrgId,
        endpoint: Option<&str>,
        introducer: Option<bool>,
        actor: &str,
    ) -> Result<(), StoreError> {
        let (_writing, mut tx) = self.write_tx().await?;
        let row: Option<(String, bool)> = on!(Tx, &mut tx, db => sqlx::query_as(sql!("SELECT endpoint, introducer FROM peers WHERE org_id = ?"))
                .bind(org.as_str())
                .fetch_optional(&mut **db)
                .await?);
        let (old_ep, old_intro) = row.ok_or_else(|| not_a_partner(org))?;
        let ep = endpoint.unwrap_or(&old_ep);
        let intro = introducer.unwrap_or(old_intro);
        on!(Tx, &mut tx, db => sqlx::query(sql!("UPDATE peers SET endpoint = ?, introducer = ?, updated_ms = ? WHERE org_id = ?",))
        .bind(ep)
        .bind(intro)
        .bind(self.now())
        .bind(org.as_str())
        .execute(&mut **db)
        .await.map(|r| r.rows_affected())?);
        self.commit_with(
            tx,
            &[AuditEntry::peer_updated(
                actor,
                org.as_str(),
                (ep, intro),
                (&old_ep, old_intro),
            )],
        )
        .await
    }

    /// Whether `org` is a registered partner (in any state), inside `tx`.
    pub(super) async fn require_peer(
        &self,
        tx: &mut super::Tx,
        org: &OrgId,
    ) -> Result<(), StoreError> {
        let known: Option<i64> = on!(Tx, &mut *tx, db => sqlx::query_scalar(sql!("SELECT CAST(1 AS BIGINT) FROM peers WHERE org_id = ?"))
            .bind(org.as_str())
            .fetch_optional(&mut **db)
            .await?);
        known.map(|_| ()).ok_or_else(|| not_a_partner(org))
    }

    async fn bind_policy(
        &self,
        tx: &mut super::Tx,
        org: &OrgId,
        name: &str,
    ) -> Result<(), StoreError> {
        let done = on!(Tx, &mut *tx, db => sqlx::query(sql!("UPDATE peers SET policy = ?, updated_ms = ? WHERE org_id = ?"))
            .bind(name)
            .bind(self.now())
            .bind(org.as_str())
            .execute(&mut **db)
            .await.map(|r| r.rows_affected())?);
        if done == 0 {
            return Err(not_a_partner(org));
        }
        Ok(())
    }
}
