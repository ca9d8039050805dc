//! Admin: the org-card directory, the quarantine, our signing keys.

use prost::Message;

use super::AdminService;
use crate::identity::{SpiffeId, open_card};
use crate::model::OrgId;
use crate::proto::v1::{
    DirectoryCard, Envelope, ListCardsResponse, ListQuarantineResponse, QuarantinedEnvelope,
    SigningKey, SigningKeysResponse,
};
use crate::rpc::RpcError;
use crate::store::{CardState, DirectoryRow, OwnKeyRow};

fn directory_card(d: &DirectoryRow) -> DirectoryCard {
    let v = Envelope::decode(d.card.as_slice())
        .ok()
        .and_then(|e| open_card(&e).ok());
    DirectoryCard {
        org: d.org.to_string(),
        display_name: v
            .as_ref()
            .map(|c| c.card.display_name.clone())
            .unwrap_or_default(),
        card_version: d.version,
        state: d.state.as_str().into(),
        via: d.via.clone(),
        updated_unix_ms: d.updated_ms,
        signing_key_ids: v
            .as_ref()
            .map(|c| c.keys.iter().map(|k| k.key_id.clone()).collect())
            .unwrap_or_default(),
        ca_fingerprints: v.map(|c| c.ca_fingerprints).unwrap_or_default(),
    }
}

fn keys_response(keys: Vec<OwnKeyRow>, card_version: u64) -> SigningKeysResponse {
    SigningKeysResponse {
        keys: keys
            .into_iter()
            .map(|k| SigningKey {
                key_id: k.key_id,
                public_key: k.public_key,
                not_before_unix_ms: k.not_before_ms,
                not_after_unix_ms: k.not_after_ms,
                revoked: k.revoked_ms != 0,
            })
            .collect(),
        card_version,
    }
}

impl AdminService {
    pub(super) async fn list_cards_now(&self) -> Result<ListCardsResponse, RpcError> {
        Ok(ListCardsResponse {
            cards: self
                .ctx
                .store
                .directory()
                .await?
                .iter()
                .map(directory_card)
                .collect(),
        })
    }

    pub(super) async fn approve_card_as(
        &self,
        who: &SpiffeId,
        org: &str,
    ) -> Result<DirectoryCard, RpcError> {
        let org = super::peers::parse_org("org", org)?;
        let row = self.directory_row(&org).await?;
        if row.state == CardState::Accepted {
            return Ok(directory_card(&row));
        }
        let env = Envelope::decode(row.card.as_slice())
            .map_err(|e| RpcError::Precondition(format!("stored card of {org}: {e}")))?;
        let v = open_card(&env).map_err(|e| RpcError::Precondition(e.to_string()))?;
        self.ctx
            .store
            .put_directory_card(
                &v,
                &row.card,
                CardState::Accepted,
                &format!("approved by {who} (came via {})", row.via),
                crate::audit::event::CARD_ACCEPTED,
                &who.to_string(),
            )
            .await?;
        // Its keys are trusted now: quarantined envelopes are settled.
        self.apply_now().await?;
        Ok(directory_card(&self.directory_row(&org).await?))
    }

    async fn directory_row(&self, org: &OrgId) -> Result<DirectoryRow, RpcError> {
        self.ctx
            .store
            .directory()
            .await?
            .into_iter()
            .find(|d| &d.org == org)
            .ok_or_else(|| {
                RpcError::NotFound(format!(
                    "org: no card of {org} has arrived through the mesh (see `threatmesh peer cards`)"
                ))
            })
    }

    pub(super) async fn list_quarantine_now(&self) -> Result<ListQuarantineResponse, RpcError> {
        let ttl = i64::try_from(self.ctx.settings.federation.quarantine_ttl_ms).unwrap_or(i64::MAX);
        Ok(ListQuarantineResponse {
            envelopes: self
                .ctx
                .store
                .quarantine()
                .await?
                .into_iter()
                .map(|q| QuarantinedEnvelope {
                    upstream: q.upstream.to_string(),
                    upstream_seq: q.held.upstream_seq,
                    key_id: q.held.key_id,
                    due_unix_ms: q.held.due_ms,
                    path: q.held.path.0,
                    received_unix_ms: q.received_ms,
                    expires_unix_ms: q.received_ms.saturating_add(ttl),
                })
                .collect(),
        })
    }

    fn card_version(&self) -> u64 {
        crate::proto::v1::OrgCard::decode(self.ctx.card.load().payload.as_slice())
            .map(|c| c.version)
            .unwrap_or(0)
    }

    pub(super) async fn rotate_signing_key_as(
        &self,
        who: &SpiffeId,
    ) -> Result<SigningKeysResponse, RpcError> {
        let keys = self
            .ctx
            .rotate_signing_key(&who.to_string())
            .await
            .map_err(node_error)?;
        Ok(keys_response(keys, self.card_version()))
    }

    pub(super) async fn revoke_signing_key_as(
        &self,
        who: &SpiffeId,
        key_id: &str,
    ) -> Result<SigningKeysResponse, RpcError> {
        if key_id.is_empty() {
            return Err(RpcError::Missing("key_id"));
        }
        let keys = self
            .ctx
            .revoke_signing_key(key_id, &who.to_string())
            .await
            .map_err(node_error)?;
        Ok(keys_response(keys, self.card_version()))
    }
}

fn node_error(e: crate::context::NodeError) -> RpcError {
    match e {
        crate::context::NodeError::Store(s) => RpcError::Store(s),
        other => RpcError::Precondition(other.to_string()),
    }
}
