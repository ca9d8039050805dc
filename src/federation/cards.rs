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

/// What taking one card did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learned {
    /// The node's view must be rebuilt (see [`learn_card`]).
    ViewChanged,
    /// Nothing the view carries changed (ignored, refused, or pending).
    Kept,
    /// A new pending card refused: `via` holds its share of pending cards.
    OverLimit,
}

/// Takes the cards of one message from partner `via` ([`learn_card`] each).
/// Pending cards one partner can make us keep are bounded
/// (`federation.pending_cards_max_per_partner`, `..._bytes_...`); those
/// over it are refused with one ledger row per message. Returns whether the
/// node's view must be rebuilt.
pub async fn learn_cards(
    ctx: &NodeContext,
    cards: &[Envelope],
    via: &OrgId,
) -> Result<bool, StoreError> {
    let mut changed = false;
    let mut over = 0usize;
    for card in cards {
        match learn_card(ctx, card, via).await? {
            Learned::ViewChanged => changed = true,
            Learned::Kept => {}
            Learned::OverLimit => over += 1,
        }
    }
    if over > 0 {
        let f = &ctx.settings.federation;
        let detail = format!(
            "{over} card(s) of orgs not yet approved refused: {via} already brought the most pending cards one partner may ({} cards, {} bytes)",
            f.pending_cards_max_per_partner, f.pending_cards_max_bytes_per_partner
        );
        tracing::warn!(partner = %via, "{detail}");
        let row = AuditEntry::over_limit(
            via.as_str(),
            "org cards",
            "federation.pending_cards_max_per_partner",
            &detail,
        );
        ctx.store.append_audit(&[row]).await?;
    }
    Ok(changed)
}

/// Takes a card that arrived through the mesh from partner `via`. Our own
/// card is ignored; a newer card of a known org (partner or accepted)
/// replaces it only if signed by a key of the card we trust
/// ([`check_card_succession`]); the first card of an unknown org is
/// accepted if `via` is an introducer, else it waits for an admin's
/// `peer approve-card`. Returns whether the node's view must be rebuilt:
/// the card changed what is stored, or the store already held it (another
/// link, or an earlier session of this one, took it) but the view does not
/// carry it yet.
async fn learn_card(ctx: &NodeContext, env: &Envelope, via: &OrgId) -> Result<Learned, StoreError> {
    let changed = |yes: bool| {
        if yes {
            Learned::ViewChanged
        } else {
            Learned::Kept
        }
    };
    let v = match open_card(env) {
        Ok(v) => v,
        Err(e) => {
            refuse_card(ctx, "?", via, e.to_string()).await?;
            return Ok(Learned::Kept);
        }
    };
    if v.org == ctx.own {
        return Ok(Learned::Kept);
    }
    let bytes = env.encode_to_vec();
    let peers = ctx.store.peers().await?;
    if let Some(p) = peers.iter().find(|p| p.org == v.org) {
        if v.card.version <= p.card_version {
            return Ok(changed(view_behind(ctx, &v.org, p.card_version)));
        }
        if !may_succeed(ctx, &p.card, &v, env, via).await? {
            return Ok(Learned::Kept);
        }
        return match ctx.store.update_peer_card(&v, &bytes, via).await {
            Ok(()) => Ok(Learned::ViewChanged),
            // E.g. a key another org owns: refused on the ledger, and the
            // link goes on with the card already trusted.
            Err(StoreError::Conflict(why)) => {
                refuse_card(ctx, v.org.as_str(), via, why).await?;
                Ok(Learned::Kept)
            }
            Err(e) => Err(e),
        };
    }
    let held = ctx.store.directory_card(&v.org).await?;
    let held = held.as_ref();
    if let Some(d) = held
        && v.card.version <= d.version
    {
        let trusted = d.state == CardState::Accepted;
        return Ok(changed(trusted && view_behind(ctx, &v.org, d.version)));
    }
    let introducer = peers
        .iter()
        .any(|p| &p.org == via && p.introducer && p.state == PeerState::Active);
    let (state, event) = match held {
        Some(d) if d.state == CardState::Accepted => {
            if !may_succeed(ctx, &d.card, &v, env, via).await? {
                return Ok(Learned::Kept);
            }
            (CardState::Accepted, event::CARD_UPDATED)
        }
        _ if introducer => (CardState::Accepted, event::CARD_ACCEPTED),
        _ => (CardState::Pending, event::CARD_PENDING),
    };
    // A new pending card counts against the share of the partner it came
    // through (a newer version of one already pending replaces it).
    if state == CardState::Pending && held.is_none() {
        let f = &ctx.settings.federation;
        let (n, held_bytes) = ctx.store.pending_cards_via(via).await?;
        if n >= f.pending_cards_max_per_partner
            || held_bytes + bytes.len() as u64 > f.pending_cards_max_bytes_per_partner
        {
            return Ok(Learned::OverLimit);
        }
    }
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
            return Ok(Learned::Kept);
        }
        Err(e) => return Err(e),
    }
    tracing::info!(org = %v.org, version = v.card.version, state = state.as_str(), via = %via, "card of another org received");
    // A pending card's keys are not used: the view is unchanged.
    Ok(changed(state == CardState::Accepted))
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
