//! Federated statistics: counts without pooling data.
//!
//! Each node counts what it published, received and sighted per period
//! (today, yesterday, this week, last week) by kind, TLP, tag and
//! jurisdiction ([`tally`]), and signs a report of those counts for each
//! partner whose policy shares statistics (`[statistics] share`), with the
//! noise and minimum count that policy sets. Reports travel like
//! indicators: each link offers its partner ours and those it relays
//! (`relay`, within the reporter's hop limit, never back to an org they
//! passed) ([`push`]); a receiver verifies before decoding, requires the
//! signer to be the reporter, accepts only where its policy for the sender
//! says `accept`, keeps the newest report per reporter and period, and
//! bounds what one partner can make it keep ([`receive`]). [`mesh_view`]
//! sums what a node holds, naming who contributed. The raw indicators never
//! leave: an org whose data may not be shared can still be counted.

pub mod push;
pub mod tally;

use std::collections::HashSet;
use std::sync::Arc;

use prost::Message;
use tonic::Code;

use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::federation::reports::{self, Refused};
use crate::model::OrgId;
use crate::policy::statistics_ingress;
use crate::proto::v1::{
    ContributedReport, Envelope, MeshStatisticsRequest, MeshStatisticsResponse,
    ShareStatisticsRequest, ShareStatisticsResponse, SignedReport, StatisticsReport,
    StatisticsRow as ViewRow,
};
use crate::rpc::RpcError;
use crate::signing::{STATISTICS_PAYLOAD_TYPE, open_statistics};
use crate::store::{OrgPath, StatisticsRow, StoreError, Versions};
use tally::{Disclosure, Period, Tallies, count};

/// The name of the noise key among the node's secrets.
const NOISE_SECRET: &str = "statistics-noise";
/// Rows read per page while counting.
const PAGE: u32 = 1000;

/// The periods we report: (kind, start), newest first.
pub fn reported_periods(now: i64) -> [(Period, i64); 4] {
    [
        (Period::Day, Period::Day.start_of(now)),
        (
            Period::Day,
            Period::Day.start_of(now) - Period::Day.length_ms(),
        ),
        (Period::Week, Period::Week.start_of(now)),
        (
            Period::Week,
            Period::Week.start_of(now) - Period::Week.length_ms(),
        ),
    ]
}

/// Our counts for the [`reported_periods`], as [`count_in_background`]
/// keeps them; counted here only when that has not run lately (at start,
/// or if it fails).
pub async fn tallies(ctx: &NodeContext) -> Result<Arc<Tallies>, StoreError> {
    let now = ctx.clock.now_ms();
    let fresh = 2 * ctx.settings.federation.statistics_interval_ms as i64;
    let mut held = ctx.statistics_counted.lock().await;
    if let Some((at, t)) = held.as_ref()
        && now - at < fresh
        && *at <= now
    {
        return Ok(t.clone());
    }
    let t = Arc::new(count_now(ctx, now).await?);
    *held = Some((now, t.clone()));
    Ok(t)
}

/// Counts our statistics every `federation.statistics_interval_ms` until
/// the node shuts down, so the links that offer reports never count on
/// their own tasks (counting reads the last two weeks of the log).
pub async fn count_in_background(ctx: Arc<NodeContext>) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(
        ctx.settings.federation.statistics_interval_ms,
    ));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        let now = ctx.clock.now_ms();
        match count_now(&ctx, now).await {
            Ok(t) => *ctx.statistics_counted.lock().await = Some((now, Arc::new(t))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot count statistics; links count when they need to")
            }
        }
    }
}

async fn count_now(ctx: &NodeContext, now: i64) -> Result<Tallies, StoreError> {
    let periods = reported_periods(now);
    let since = periods.iter().map(|p| p.1).min().unwrap_or(now);
    let mut out: Tallies = periods.iter().map(|p| (*p, Default::default())).collect();
    let within = |ms: i64| {
        periods
            .iter()
            .filter(move |(p, start)| ms >= *start && ms < start + p.length_ms())
            .copied()
    };
    // Each indicator counts once per period and measure, whatever number
    // of its versions arrived in it.
    let mut seen = HashSet::new();
    // From the first row of the oldest period, not from the log's start
    // (none: nothing that recent).
    let first = ctx.store.first_seq_since(since).await?;
    let mut after = first.unwrap_or(0).saturating_sub(1);
    while first.is_some() {
        let rows = ctx
            .store
            .versions_after(Versions::All, after, since, PAGE)
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in &rows {
            let measure = if r.origin_org == ctx.own.as_str() {
                "published"
            } else {
                "received"
            };
            // Decoded only when it counts somewhere it has not yet.
            let new: Vec<_> = within(r.stored_ms)
                .filter(|p| {
                    seen.insert((*p, measure, r.origin_org.clone(), r.indicator_id.clone()))
                })
                .collect();
            if new.is_empty() {
                continue;
            }
            let Ok(ind) = crate::exchange::decoded(r) else {
                continue;
            };
            for p in new {
                count(out.entry(p).or_default(), measure, &ind);
            }
        }
    }
    let sighted = ctx
        .store
        .own_sightings_since(ctx.own.as_str(), since)
        .await?;
    let ids: Vec<&str> = sighted.iter().map(|(_, id, _)| id.as_str()).collect();
    let held = ctx.store.indicators_by_ids(&ids).await?;
    for (origin, id, window) in &sighted {
        let Some(row) = held.get(id).filter(|r| &r.origin_org == origin) else {
            continue;
        };
        let Ok(ind) = crate::exchange::decoded(row) else {
            continue;
        };
        for p in within(*window) {
            if seen.insert((p, "sighted", origin.clone(), id.clone())) {
                count(out.entry(p).or_default(), "sighted", &ind);
            }
        }
    }
    Ok(out)
}

/// Our reports for the [`reported_periods`], disclosed as `how` says, made
/// now; not yet signed ([`seal`] signs the ones that go out).
pub async fn own_reports(
    ctx: &NodeContext,
    how: Disclosure,
) -> Result<Vec<StatisticsReport>, StoreError> {
    let t = tallies(ctx).await?;
    let secret = ctx.store.node_secret(NOISE_SECRET).await?;
    let key_id = ctx.signing.load().key_id().to_string();
    let now = ctx.clock.now_ms();
    Ok(t.iter()
        .map(|((period, start), tally)| {
            let key = format!("{} {start}", period.name());
            StatisticsReport {
                reporter_org: ctx.own.to_string(),
                key_id: key_id.clone(),
                period: period.name().into(),
                period_start_unix_ms: *start,
                made_unix_ms: now,
                epsilon: how.epsilon,
                min_count: how.min_count,
                hop_limit: ctx.settings.federation.statistics_hop_limit,
                cells: tally::disclose(tally, how, &secret, &key),
            }
        })
        .collect())
}

/// One of our reports signed with our current org key.
pub fn seal(ctx: &NodeContext, mut report: StatisticsReport) -> (StatisticsReport, Envelope) {
    let signer = ctx.signing.load_full();
    report.key_id = signer.key_id().to_string();
    let env = signer.seal(STATISTICS_PAYLOAD_TYPE, report.encode_to_vec());
    (report, env)
}

/// Takes the reports partner `from` shared: each verified, checked and kept
/// or refused on its own (a report waiting for its reporter's key is
/// answered `FAILED_PRECONDITION`, for the partner to offer again).
pub async fn receive(
    ctx: &NodeContext,
    from: &OrgId,
    req: ShareStatisticsRequest,
) -> Result<ShareStatisticsResponse, RpcError> {
    reports::check_count(req.reports.len())?;
    let accept = statistics_ingress(from, ctx.view.load().policies.get(from).map(|p| p.as_ref()));
    reports::learn_cards(ctx, &accept, &req.cards, from).await?;
    let view = ctx.view.load_full();
    let bound = reports::Bound {
        rpc: "Exchange/ShareStatistics",
        setting: "federation.statistics_max_per_partner",
        what: "statistics reports",
    };
    let mut outcomes = Vec::with_capacity(req.reports.len());
    for (i, report) in req.reports.into_iter().enumerate() {
        let checked = if accept.is_allow() {
            check(ctx, &view.keys, from, i, report)
        } else {
            Err(Refused::new(Code::PermissionDenied, accept.reason(), None))
        };
        let outcome = match checked {
            Ok((row, subject)) => {
                let audit = [AuditEntry::statistics_accepted(
                    from.as_str(),
                    subject,
                    accept.rule(),
                    &row.path,
                )];
                let max = ctx.settings.federation.statistics_max_per_partner;
                let kept = ctx.store.keep_statistics(&row, max, &audit).await?;
                reports::kept_outcome(ctx, from, kept, bound).await?
            }
            Err(r) => {
                reports::refused_outcome(ctx, from, i, r, AuditEntry::statistics_refused).await?
            }
        };
        outcomes.push(outcome);
    }
    Ok(ShareStatisticsResponse { outcomes })
}

/// Report `i` from `from`: an envelope, verified before anything in it is
/// read, well formed, along a path from its reporter to `from` within its
/// hop limit. The row to keep and its ledger subject.
fn check(
    ctx: &NodeContext,
    keys: &crate::signing::KeyDirectory,
    from: &OrgId,
    i: usize,
    report: SignedReport,
) -> Result<(StatisticsRow, String), Refused> {
    let field = format!("reports[{i}]");
    let r = reports::open_report(&report, i, keys, open_statistics)?;
    let subject =
        AuditEntry::statistics_subject(&r.reporter_org, &r.period, r.period_start_unix_ms);
    let invalid = |why: String| Refused::new(Code::InvalidArgument, why, Some(subject.clone()));
    tally::check_report(&r, ctx.clock.now_ms()).map_err(|e| invalid(format!("{field}.{e}")))?;
    reports::check_path(
        &report.path,
        &r.reporter_org,
        from,
        &ctx.own,
        r.hop_limit as usize,
    )
    .map_err(|why| invalid(format!("{field}.path: {why}")))?;
    Ok((
        StatisticsRow {
            reporter: r.reporter_org.clone(),
            period: r.period.clone(),
            period_start: r.period_start_unix_ms,
            made_ms: r.made_unix_ms,
            received_from: from.to_string(),
            path: OrgPath(report.path),
            envelope: report.envelope,
            stored_ms: 0,
        },
        subject,
    ))
}

/// The mesh-wide view at this node: its own exact counts and every report
/// it holds of the asked period, summed per cell, naming contributors.
pub async fn mesh_view(
    ctx: &NodeContext,
    req: &MeshStatisticsRequest,
) -> Result<MeshStatisticsResponse, RpcError> {
    let period = if req.period.is_empty() {
        Period::Day
    } else {
        Period::parse(&req.period).ok_or_else(|| {
            RpcError::BadRequest(format!("period: '{}' is not day or week", req.period))
        })?
    };
    for d in &req.by {
        if !tally::DIMENSIONS.contains(&d.as_str()) {
            return Err(RpcError::BadRequest(format!(
                "by: '{d}' is not one of {}",
                tally::DIMENSIONS.join(", ")
            )));
        }
    }
    let now = ctx.clock.now_ms();
    let since = if req.since_unix_ms > 0 {
        period.start_of(req.since_unix_ms)
    } else {
        reported_periods(now)
            .iter()
            .filter(|p| p.0 == period)
            .map(|p| p.1)
            .min()
            .unwrap_or(now)
    };
    let mut reports = Vec::new();
    let mut contributed = Vec::new();
    // Ours, exact: we know our own data.
    let exact = Disclosure {
        epsilon: 0.0,
        min_count: 0,
    };
    for r in own_reports(ctx, exact).await? {
        if r.period == period.name() && r.period_start_unix_ms >= since {
            contributed.push(contribution(&r, "", &[]));
            reports.push(r);
        }
    }
    for row in ctx
        .store
        .statistics_reports(Some(period.name()), since)
        .await?
    {
        // Verified before it was stored; decoded here only.
        let Some(r) = Envelope::decode(row.envelope.as_slice())
            .ok()
            .and_then(|e| StatisticsReport::decode(e.payload.as_slice()).ok())
        else {
            tracing::warn!(reporter = %row.reporter, "unreadable statistics report left out");
            continue;
        };
        contributed.push(contribution(&r, &row.received_from, &row.path));
        reports.push(r);
    }
    let rows = tally::sum(&reports, &req.by)
        .into_iter()
        .map(|((measure, dimension, value), s)| ViewRow {
            measure,
            dimension,
            value,
            count: s.count,
            contributors: s.contributors.into_iter().collect(),
        })
        .collect();
    Ok(MeshStatisticsResponse {
        rows,
        reports: contributed,
    })
}

fn contribution(r: &StatisticsReport, from: &str, path: &[String]) -> ContributedReport {
    ContributedReport {
        reporter_org: r.reporter_org.clone(),
        period: r.period.clone(),
        period_start_unix_ms: r.period_start_unix_ms,
        made_unix_ms: r.made_unix_ms,
        epsilon: r.epsilon,
        min_count: r.min_count,
        received_from: from.to_string(),
        path: path.to_vec(),
    }
}
