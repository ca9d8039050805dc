//! A link's share of the sighting outbox: the sightings waiting for its
//! partner (the one that delivered us their indicators), decided by that
//! partner's policy now, sent in one ReportSightings request per batch, and
//! taken out of the outbox once the partner answered for them. What the
//! partner cannot take yet (it does not know the sighter's key, or is over
//! a limit) stays for the next attempt.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use super::subject;
use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::federation::reports::code_name;
use crate::model::OrgId;
use crate::policy::sighting_egress;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{ReportSightingsRequest, SignedReport};
use crate::store::StoreError;

/// Reports per request (the receiver takes up to 500).
const BATCH: usize = 200;

/// Sends what waits for `partner` until its outbox is empty or nothing more
/// moves. A transport failure or refusal of the whole request leaves the
/// rest queued for the next attempt.
pub async fn push(
    ctx: &NodeContext,
    partner: &OrgId,
    client: &mut ExchangeClient<Channel>,
) -> Result<(), StoreError> {
    loop {
        let queued = ctx.store.sighting_outbox(partner, BATCH).await?;
        if queued.is_empty() {
            return Ok(());
        }
        let view = ctx.view.load_full();
        let policy = view.policies.get(partner).map(|p| p.as_ref());
        let mut done = Vec::new();
        let mut audit = Vec::new();
        let mut sending = Vec::new();
        let mut reports = Vec::new();
        let mut cards = Vec::new();
        let mut carded = std::collections::HashSet::new();
        for o in &queued {
            let d = sighting_egress(&ctx.own, &o.row.sighter, partner, policy);
            if !d.is_allow() {
                audit.push(AuditEntry::sighting_withheld(
                    partner.as_str(),
                    subject(&o.row),
                    d.rule(),
                    d.reason().to_string(),
                ));
                done.push(o);
                continue;
            }
            // The sighter's card, for a receiver that does not know it.
            if carded.insert(o.row.sighter.clone()) {
                if o.row.sighter == ctx.own.as_str() {
                    cards.push(ctx.card.load().as_ref().clone());
                } else if let Ok(org) = OrgId::parse(&o.row.sighter)
                    && let Some((_, card)) = view.cards.get(&org)
                {
                    cards.push(card.as_ref().clone());
                }
            }
            let mut path = o.row.path.0.clone();
            path.push(ctx.own.to_string());
            reports.push(SignedReport {
                envelope: o.row.envelope.clone(),
                path,
            });
            sending.push((o, d.rule()));
        }
        if !reports.is_empty() {
            let mut req = tonic::Request::new(ReportSightingsRequest { reports, cards });
            req.set_timeout(Duration::from_secs(10));
            match client.report_sightings(req).await {
                Ok(resp) => {
                    let outcomes = resp.into_inner().outcomes;
                    if outcomes.len() != sending.len() {
                        tracing::warn!(partner = %partner, sent = sending.len(), answered = outcomes.len(), "partner answered for another number of sightings than sent; retrying later");
                        sending.clear();
                    }
                    for ((o, rule), out) in sending.iter().zip(outcomes) {
                        match Code::from(out.code as i32) {
                            Code::Ok => {
                                audit.push(AuditEntry::sighting_sent(
                                    partner.as_str(),
                                    subject(&o.row),
                                    rule,
                                ));
                                done.push(o);
                            }
                            // Curable by waiting: the partner learns the
                            // sighter's key, or its limit frees up.
                            Code::FailedPrecondition
                            | Code::ResourceExhausted
                            | Code::Unavailable => {
                                tracing::debug!(partner = %partner, reason = %out.message, "sighting not taken yet; kept for the next attempt");
                            }
                            c => {
                                tracing::warn!(partner = %partner, code = ?c, reason = %out.message, "partner refused a sighting");
                                audit.push(AuditEntry::sighting_refused(
                                    partner.as_str(),
                                    subject(&o.row),
                                    code_name(c),
                                    &out.message,
                                    true,
                                ));
                                done.push(o);
                            }
                        }
                    }
                }
                Err(status) => {
                    tracing::debug!(partner = %partner, %status, "sightings not delivered; kept for the next attempt");
                    ctx.store.finish_sightings(partner, &done, &audit).await?;
                    return Ok(());
                }
            }
        }
        if done.is_empty() {
            return Ok(());
        }
        ctx.store.finish_sightings(partner, &done, &audit).await?;
        if queued.len() < BATCH {
            return Ok(());
        }
    }
}
