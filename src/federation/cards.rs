//! Cards of other orgs that arrive through the mesh: a newer card of a
//! known org is taken only if it succeeds the trusted one; the first card
//! of an unknown org is accepted from an introducer or waits for approval.

use prost::Message;

use crate::audit::{AuditEntry, event};
use crate::context::NodeContext;
use crate::identity::{VerifiedCard, check_card_succession, open_card};
use crate::model::OrgId;
use crate::proto::v1::Envelope;
use crate::store::{CardState, PeerState, StoreError};

/// Takes a card that arrived through the mesh from partner `via`. Our own
/// card is ignored; a newer card of a known org (partner or accepted)
/// replaces it only if signed by a key of the card we trust
/// ([`check_card_succession`]); the first card of an unknown org is
/// accepted if `via` is an introducer, else it waits for an admin's
/// `peer approve-card`. Returns whether the node's view must be rebuilt:
/// the card changed what is stored, or the store already held it (another
/// link, or an earlier session of this one, took it) but the view does not
/// carry it yet.
pub async fn learn_card(
    ctx: &NodeContext,
    env: &Envelope,
    via: &OrgId,
) -> Result<bool, StoreError> {
    let v = match open_card(env) {
        Ok(v) => v,
        Err(e) => {
            refuse_card(ctx, "?", via, e.to_string()).await?;
            return Ok(false);
        }
    };
    if v.org == ctx.own {
        return Ok(false);
    }
    let bytes = env.encode_to_vec();
    let peers = ctx.store.peers().await?;
    if let Some(p) = peers.iter().find(|p| p.org == v.org) {
        if v.card.version <= p.card_version {
            return Ok(view_behind(ctx, &v.org, p.card_version));
        }
        if !may_succeed(ctx, &p.card, &v, env, via).await? {
            return Ok(false);
        }
        return match ctx.store.update_peer_card(&v, &bytes, via).await {
            Ok(()) => Ok(true),
            // E.g. a key another org owns: refused on the ledger, and the
            // link goes on with the card already trusted.
            Err(StoreError::Conflict(why)) => {
                refuse_card(ctx, v.org.as_str(), via, why).await?;
                Ok(false)
            }
            Err(e) => Err(e),
        };
    }
    let directory = ctx.store.directory().await?;
    let held = directory.iter().find(|d| d.org == v.org);
    if let Some(d) = held
        && v.card.version <= d.version
    {
        let trusted = d.state == CardState::Accepted;
        return Ok(trusted && view_behind(ctx, &v.org, d.version));
    }
    let introducer = peers
        .iter()
        .any(|p| &p.org == via && p.introducer && p.state == PeerState::Active);
    let (state, event) = match held {
        Some(d) if d.state == CardState::Accepted => {
            if !may_succeed(ctx, &d.card, &v, env, via).await? {
                return Ok(false);
            }
            (CardState::Accepted, event::CARD_UPDATED)
        }
        _ if introducer => (CardState::Accepted, event::CARD_ACCEPTED),
        _ => (CardState::Pending, event::CARD_PENDING),
    };
    let via_text = if introducer && state == CardState::Accepted && held.is_none() {
        format!("introducer {via}")
    } else {
        via.to_string()
    };
    match ctx
        .store
        .put_directory_card(&v, &bytes, state, &via_text, event, "node")
        .await
    {
        Ok(()) => {}
        Err(StoreError::Conflict(why)) => {
            refuse_card(ctx, v.org.as_str(), via, why).await?;
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    tracing::info!(org = %v.org, version = v.card.version, state = state.as_str(), via = %via, "card of another org received");
    Ok(true)
}

/// Whether the view carries an older card of `org` than the `stored`
/// version (its reload has not run yet).
fn view_behind(ctx: &NodeContext, org: &OrgId, stored: u64) -> bool {
    ctx.view
        .load()
        .cards
        .get(org)
        .is_none_or(|(version, _)| *version < stored)
}

/// Whether card `v` (as `env`) may replace the trusted card stored as
/// `stored`: signed by a key of it ([`check_card_succession`]). A refusal
/// goes on the ledger.
async fn may_succeed(
    ctx: &NodeContext,
    stored: &[u8],
    v: &VerifiedCard,
    env: &Envelope,
    via: &OrgId,
) -> Result<bool, StoreError> {
    let current = Envelope::decode(stored)
        .ok()
        .and_then(|e| open_card(&e).ok());
    let Some(current) = current else {
        return Ok(false);
    };
    match check_card_succession(&current, v, env) {
        Ok(()) => Ok(true),
        Err(e) => {
            refuse_card(ctx, v.org.as_str(), via, e.to_string()).await?;
            Ok(false)
        }
    }
}

/// Records a card of `org` that arrived via `via` and was refused.
async fn refuse_card(
    ctx: &NodeContext,
    org: &str,
    via: &OrgId,
    why: String,
) -> Result<(), StoreError> {
    tracing::warn!(org, via = %via, reason = %why, "card refused");
    ctx.store
        .append_audit(&[AuditEntry::card_refused(org, via.as_str(), why)])
        .await
}
