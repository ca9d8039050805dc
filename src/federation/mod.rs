//! Outbound partner links and what arrives over them. For each registered
//! partner with an endpoint the node dials, subscribes from its committed
//! cursor, verifies every envelope before decoding it, and commits the
//! accepted rows, the refused ones and the cursor in one transaction.
//!
//! - `verify`: the checks every delivery passes (pure, but for one look-up).
//! - `link`: one partner link (dial, receive, commit, backoff).
//! - `cards`: cards of other orgs arriving through the mesh.
//! - `quarantine`: envelopes waiting for their signing key.
//! - `reports`: what signed sightings and statistics from partners share.

pub mod cards;
mod link;
pub mod quarantine;
pub mod reports;
mod verify;
pub mod witness;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::context::{NodeContext, NodeError, Reloaded};
use crate::model::OrgId;
use crate::store::{PeerRecord, PeerState};

pub use crate::context::{LinkHealth, LinkState};
pub use verify::{MAX_PATH_LEN, Verified, admit, admit_checked, verify_delivery};

/// Applies a change of partners, cards, keys or policies to the running
/// node: rebuilds the view ([`NodeContext::reload`]) and, when it changed,
/// settles the quarantined envelopes new keys may verify.
pub async fn apply_trust_change(ctx: &NodeContext) -> Result<Reloaded, NodeError> {
    let _settling = ctx.trust_change.lock().await;
    let reloaded = ctx.reload().await?;
    if reloaded.changed
        && let Err(e) = quarantine::release(ctx).await
    {
        tracing::error!(error = %e, "cannot release quarantined envelopes");
    }
    Ok(reloaded)
}

/// Whether a link dialled for `was` still serves `now`: the same partner,
/// dialled at the same endpoint, answering under the same CA, in the same
/// state. A new card alone (display name, keys, version) or a new policy
/// does not touch the connection, so the link and what it measured (clock
/// offset, retry delay) stay.
fn same_link(now: &PeerRecord, was: &PeerRecord) -> bool {
    now.org == was.org
        && now.endpoint == was.endpoint
        && now.ca_bundle_pem == was.ca_bundle_pem
        && now.state == was.state
}

/// Keeps one link per partner with an endpoint in step with the store: new
/// partners get a link, ones now dialled elsewhere or answering under another CA a fresh link, removed ones none. Also
/// refreshes the partner view, expires quarantine, forgets old publish
/// idempotency keys, and picks up a rotated node certificate. Returns when the node shuts down, after its links.
pub async fn supervise(ctx: Arc<NodeContext>) {
    let mut links: HashMap<OrgId, (PeerRecord, CancellationToken, JoinHandle<()>)> = HashMap::new();
    let period = Duration::from_millis(ctx.settings.federation.peer_refresh_ms);
    loop {
        ctx.reload_node_cert();
        for (org, n) in ctx.conns.take_refused() {
            let detail = format!(
                "{n} connection(s) refused: {org} already held the most one partner may ({})",
                ctx.settings.limits.max_connections_per_partner
            );
            let row = crate::audit::AuditEntry::over_limit(
                org.as_str(),
                "connections",
                "limits.max_connections_per_partner",
                &detail,
            );
            if let Err(e) = ctx.store.append_audit(&[row]).await {
                tracing::error!(error = %e, "cannot record refused connections");
            }
        }
        if let Err(e) = quarantine::expire(&ctx).await {
            tracing::error!(error = %e, "cannot expire quarantined envelopes");
        }
        let kept = i64::try_from(ctx.settings.store.publish_keys_kept_ms).unwrap_or(i64::MAX);
        if let Err(e) = ctx
            .store
            .forget_publish_keys(ctx.clock.now_ms().saturating_sub(kept))
            .await
        {
            tracing::error!(error = %e, "cannot forget old publish idempotency keys");
        }
        if let Err(e) = ctx
            .store
            .forget_sight_keys(ctx.clock.now_ms().saturating_sub(kept))
            .await
        {
            tracing::error!(error = %e, "cannot forget old sighting idempotency keys");
        }
        match apply_trust_change(&ctx).await {
            Ok(Reloaded { peers, .. }) => {
                // What waited in quarantine across a restart, and what was
                // dated ahead of our clock and is due now; a change of keys
                // (apply_trust_change) and each commit to quarantine (the
                // links) release what they allow at once.
                if let Err(e) = quarantine::release_if_keys_known(&ctx).await {
                    tracing::error!(error = %e, "cannot release quarantined envelopes");
                }
                links.retain(|org, (rec, stop_link, _)| {
                    let keep = peers.iter().any(|p| same_link(p, rec));
                    if !keep {
                        tracing::info!(partner = %org, "partner changed or removed; closing link");
                        stop_link.cancel();
                    }
                    keep
                });
                for p in peers
                    .into_iter()
                    .filter(|p| !p.endpoint.is_empty() && p.state == PeerState::Active)
                {
                    if links.contains_key(&p.org) {
                        continue;
                    }
                    let stop_link = ctx.shutdown.child_token();
                    let h =
                        ctx.tasks
                            .spawn(link::run_link(ctx.clone(), p.clone(), stop_link.clone()));
                    links.insert(p.org.clone(), (p, stop_link, h));
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read partners from the store"),
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = ctx.shutdown.cancelled() => break,
        }
    }
    for (_, (_, stop_link, h)) in links {
        stop_link.cancel();
        let _ = h.await;
    }
}
