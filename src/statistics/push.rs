//! A link's share of statistics: at intervals, the reports its partner may
//! have — ours, made with the noise and minimum count of the partner's
//! policy, and those of other orgs we hold where the policy relays them —
//! each sent once per version this session. Policy denials go on the
//! ledger once per report and session.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use prost::Message;
use tonic::Code;
use tonic::transport::Channel;

use super::tally::Disclosure;
use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::federation::reports::code_name;
use crate::model::OrgId;
use crate::policy::statistics_egress;
use crate::proto::v1::exchange_client::ExchangeClient;
use crate::proto::v1::{Envelope, ShareStatisticsRequest, SignedReport, StatisticsReport};
use crate::store::StoreError;

/// What one link session has offered its partner: per (reporter, period,
/// start), the cells (ours) or made time (relayed) last taken, and the
/// reports whose withholding is on record.
#[derive(Debug, Default)]
pub struct Offered {
    sent: HashMap<(String, String, i64), Vec<u8>>,
    withheld: HashSet<(String, String, i64)>,
}

/// A report to offer: its key, what marks it taken, the report, its
/// envelope, the path it came along and the rule that lets it go.
type Offer = (
    (String, String, i64),
    Vec<u8>,
    StatisticsReport,
    Envelope,
    Vec<String>,
    &'static str,
);

/// Offers `partner` what its policy lets it have and it has not taken yet.
pub async fn push(
    ctx: &NodeContext,
    partner: &OrgId,
    client: &mut ExchangeClient<Channel>,
    offered: &mut Offered,
) -> Result<(), StoreError> {
    let view = ctx.view.load_full();
    let policy = view.policies.get(partner).map(|p| p.as_ref());
    let mut audit = Vec::new();
    let mut offer: Vec<Offer> = Vec::new();
    let own = statistics_egress(&ctx.own, ctx.own.as_str(), &[], 0, partner, policy);
    if own.is_allow() {
        let rules = policy.map(|p| p.statistics).unwrap_or_default();
        let how = Disclosure {
            epsilon: rules.epsilon(),
            min_count: rules.min_count,
        };
        for r in super::own_reports(ctx, how).await? {
            let key = (
                r.reporter_org.clone(),
                r.period.clone(),
                r.period_start_unix_ms,
            );
            // Ours is made again at each offer: it goes when its counts
            // (or disclosure) changed.
            let mark = {
                let mut m = r.clone();
                m.made_unix_ms = 0;
                m.encode_to_vec()
            };
            if offered.sent.get(&key) != Some(&mark) {
                let (r, env) = super::seal(ctx, r);
                offer.push((key, mark, r, env, Vec::new(), own.rule()));
            }
        }
    } else {
        for (period, start) in super::reported_periods(ctx.clock.now_ms()) {
            let key = (ctx.own.to_string(), period.name().to_string(), start);
            if offered.withheld.insert(key.clone()) {
                let subject = AuditEntry::statistics_subject(&key.0, &key.1, key.2);
                audit.push(AuditEntry::statistics_withheld(
                    partner.as_str(),
                    subject,
                    own.rule(),
                    own.reason().to_string(),
                ));
            }
        }
    }
    let oldest = super::reported_periods(ctx.clock.now_ms())
        .iter()
        .map(|p| p.1)
        .min()
        .unwrap_or(0);
    for row in ctx.store.statistics_reports(None, oldest).await? {
        let key = (row.reporter.clone(), row.period.clone(), row.period_start);
        let mark = row.made_ms.to_be_bytes().to_vec();
        if offered.sent.get(&key) == Some(&mark) {
            continue;
        }
        // Verified when it was stored; decoded for its hop limit.
        let Some((env, r)) = Envelope::decode(row.envelope.as_slice())
            .ok()
            .and_then(|e| {
                StatisticsReport::decode(e.payload.as_slice())
                    .ok()
                    .map(|r| (e, r))
            })
        else {
            continue;
        };
        let d = statistics_egress(
            &ctx.own,
            &row.reporter,
            &row.path,
            r.hop_limit,
            partner,
            policy,
        );
        if d.is_allow() {
            offer.push((key, mark, r, env, row.path.0.clone(), d.rule()));
        } else if d.rule() != "echo" && offered.withheld.insert(key.clone()) {
            let subject = AuditEntry::statistics_subject(&key.0, &key.1, key.2);
            audit.push(AuditEntry::statistics_withheld(
                partner.as_str(),
                subject,
                d.rule(),
                d.reason().to_string(),
            ));
        }
    }
    for chunk in offer.chunks(crate::federation::reports::MAX_REPORTS_PER_REQUEST) {
        let mut cards = Vec::new();
        let mut carded = HashSet::new();
        let reports = chunk
            .iter()
            .map(|(key, _, _, env, path, _)| {
                if carded.insert(key.0.clone())
                    && let Ok(org) = OrgId::parse(&key.0)
                    && let Some((_, card)) = view.cards.get(&org)
                {
                    cards.push(card.as_ref().clone());
                }
                let mut path = path.clone();
                path.push(ctx.own.to_string());
                SignedReport {
                    envelope: env.encode_to_vec(),
                    path,
                }
            })
            .collect();
        let mut req = tonic::Request::new(ShareStatisticsRequest { reports, cards });
        req.set_timeout(Duration::from_secs(10));
        let outcomes = match client.share_statistics(req).await {
            Ok(r) => r.into_inner().outcomes,
            Err(status) => {
                tracing::debug!(partner = %partner, %status, "statistics not delivered; offered again later");
                break;
            }
        };
        for ((key, mark, r, _, _, rule), out) in chunk.iter().zip(outcomes) {
            let subject = AuditEntry::statistics_subject(&key.0, &key.1, key.2);
            match Code::from(out.code as i32) {
                Code::Ok => {
                    offered.sent.insert(key.clone(), mark.clone());
                    let detail = format!(
                        "{} cell(s), epsilon {}, min count {}",
                        r.cells.len(),
                        r.epsilon,
                        r.min_count
                    );
                    audit.push(AuditEntry::statistics_sent(
                        partner.as_str(),
                        subject,
                        rule,
                        detail,
                    ));
                }
                Code::FailedPrecondition | Code::ResourceExhausted | Code::Unavailable => {
                    tracing::debug!(partner = %partner, reason = %out.message, "statistics report not taken yet");
                }
                c => {
                    tracing::warn!(partner = %partner, code = ?c, reason = %out.message, "partner refused a statistics report");
                    offered.sent.insert(key.clone(), mark.clone());
                    audit.push(AuditEntry::statistics_refused(
                        partner.as_str(),
                        subject,
                        code_name(c),
                        &out.message,
                        true,
                    ));
                }
            }
        }
    }
    ctx.store.append_audit(&audit).await
}
