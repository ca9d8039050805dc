//! Releasing quarantined envelopes once their signing key is known, and
//! dropping those whose key never came.

use super::verify::{admit_checked, verify_delivery};
use crate::context::NodeContext;
use crate::model::OrgId;
use crate::proto::v1::Delivery;
use crate::refusal::{Refusal, RefusalKind};
use crate::store::{Quarantined, Rejection, StoreError};

/// What one partner may still put in quarantine.
#[derive(Debug, Clone, Copy)]
pub struct Share {
    /// (envelopes, bytes) it has waiting now.
    pub used: (u64, u64),
    /// Most envelopes it may have waiting.
    pub max_rows: u64,
    /// Most bytes it may have waiting.
    pub max_bytes: u64,
}

/// Splits envelopes `upstream` sent under unknown keys into those its
/// quarantine share still holds, in order, and one refusal for the rest
/// (what a partner can make us keep is bounded; recorded once per batch,
/// not once per envelope, and without their bytes). Pure.
pub fn within_share(
    upstream: &OrgId,
    envelopes: Vec<Quarantined>,
    share: Share,
) -> (Vec<Quarantined>, Option<Rejection>) {
    let (mut rows, mut bytes) = share.used;
    let mut kept = Vec::new();
    let mut over: Vec<u64> = Vec::new();
    for q in envelopes {
        let size = q.envelope.len() as u64;
        if over.is_empty() && rows < share.max_rows && bytes + size <= share.max_bytes {
            rows += 1;
            bytes += size;
            kept.push(q);
        } else {
            over.push(q.upstream_seq);
        }
    }
    let refusal = (!over.is_empty()).then(|| Rejection {
        upstream_seq: over[0],
        refusal: Refusal::new(
            RefusalKind::LimitReached,
            format!(
                "{upstream}'s quarantine share is used up ({} envelopes, {} bytes; limits {} and {}): {} envelope(s) under unknown keys refused, seq {} to {}",
                share.used.0,
                share.used.1,
                share.max_rows,
                share.max_bytes,
                over.len(),
                over[0],
                over[over.len() - 1]
            ),
        ),
        envelope: Vec::new(),
    });
    (kept, refusal)
}

/// Verifies and stores (or refuses) every quarantined envelope whose
/// signing key is known now and whose date our clock has reached; one
/// still dated ahead of our clock (it was held for its key, or our clock
/// went back) waits on. Returns how many were stored.
pub async fn release(ctx: &NodeContext) -> Result<u64, StoreError> {
    let view = ctx.view.load_full();
    let now = ctx.clock.now_ms();
    let mut stored = 0;
    for q in ctx.store.quarantine().await? {
        if view.keys.get(&q.held.key_id).is_none() || q.held.due_ms > now {
            continue;
        }
        let d = Delivery {
            seq: q.held.upstream_seq,
            envelope: q.held.envelope.clone().into(),
            path: q.held.path.0.clone(),
        };
        let policy = view.policies.get(&q.upstream).map(|p| p.as_ref());
        let verified = verify_delivery(&ctx.own, &q.upstream, &d, &view.keys, now);
        if let Err(Refusal {
            due_ms: Some(due_ms),
            ..
        }) = &verified
        {
            ctx.store.defer_quarantine(q.id, *due_ms).await?;
            continue;
        }
        let admitted = admit_checked(ctx, &q.upstream, verified, policy)
            .await?
            .unwrap_or_else(|| {
                Err(Refusal::new(
                    RefusalKind::Malformed,
                    "path: passes through this node",
                ))
            });
        let outcome = admitted.map_err(|refusal| Rejection {
            upstream_seq: q.held.upstream_seq,
            refusal,
            envelope: q.held.envelope.clone(),
        });
        if ctx
            .store
            .resolve_quarantine(&q, outcome, ctx.settings.federation.refusals_kept())
            .await?
        {
            stored += 1;
        }
    }
    if stored > 0 {
        tracing::info!(stored, "quarantined envelopes verified and stored");
    }
    Ok(stored)
}

/// [`release`], if any envelope in quarantine that our clock has reached
/// waits for a key that is known now (or was held only for its date):
/// after a link commits envelopes to quarantine (their key may have
/// arrived while the batch waited to commit — the batch and the card
/// crossed in the pipeline), and at every refresh tick (for what waited
/// across a restart, and for dates our clock reaches).
pub async fn release_if_keys_known(ctx: &NodeContext) -> Result<u64, StoreError> {
    let _settling = ctx.trust_change.lock().await;
    let waiting = ctx.store.quarantined_key_ids(ctx.clock.now_ms()).await?;
    let view = ctx.view.load();
    if waiting.iter().any(|k| view.keys.get(k).is_some()) {
        release(ctx).await
    } else {
        Ok(0)
    }
}

/// Drops quarantined envelopes older than `federation.quarantine_ttl_ms`
/// (by the node's clock), each with a ledger row: their key never came, or
/// our clock never reached their date. Returns how many.
pub async fn expire(ctx: &NodeContext) -> Result<u64, StoreError> {
    let ttl = i64::try_from(ctx.settings.federation.quarantine_ttl_ms).unwrap_or(i64::MAX);
    let dropped = ctx
        .store
        .expire_quarantine(ctx.clock.now_ms().saturating_sub(ttl))
        .await?;
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "quarantined envelopes dropped: their signing key never arrived"
        );
    }
    Ok(dropped)
}
