//! Sightings: "this indicator was seen", flowing back to its origin.
//!
//! A publisher of ours reports seeing an indicator this node holds
//! ([`sight`]); the node adds it to its report of that indicator for the
//! day, signs the report (DSSE, payload type sighting) and queues it for
//! the partner that delivered us the indicator. Each link sends its queue
//! ([`push`]) where that partner's policy allows (`[sightings] send` for
//! ours, `relay` for others'). A partner's reports ([`receive`]) are
//! verified before they are decoded, must come from a partner whose policy
//! accepts them (`[sightings] accept`) and concern an indicator we sent
//! that partner; they are kept (one per sighter, indicator and day, a later
//! report replacing an earlier one, a replay changing nothing) and queued
//! on towards the origin. Only ids travel, never an indicator's value.

pub mod push;

use prost::Message;

use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::federation::reports::{self, Refused};
use crate::model::{
    MAX_SIGHTING_PATH, OrgId, SightingDraft, merge_sighting, prepare_sighting, validate_sighting,
    window_of,
};
use crate::policy::sighting_ingress;
use crate::proto::v1::{
    Envelope, ReportSightingsRequest, ReportSightingsResponse, SightRequest, SightResponse,
    Sighting, SightingRecord, SignedReport,
};
use crate::rpc::RpcError;
use crate::signing::{SIGHTING_PAYLOAD_TYPE, open_sighting};
use crate::store::{KeptReport, OwnKept, OwnSight, PublishKey, SightingRow, StoreError};
use tonic::Code;

/// Records a sighting our publisher `actor` reports: adds it to our report
/// of that indicator for its day, signs it, keeps it and queues it for the
/// partner that delivered us the indicator (none when we are its origin).
pub async fn sight(
    ctx: &NodeContext,
    actor: &str,
    req: SightRequest,
) -> Result<SightResponse, RpcError> {
    let key = sight_key(&req)?;
    // A retry: answer with the day's report as it stands, adding nothing.
    if let Some(key) = &key
        && let Some(earlier) = ctx.store.sighted_under(actor, &key.key).await?
    {
        return replayed(ctx, key, earlier).await;
    }
    // Without an origin, the one holding that id here.
    let origin = if req.indicator_origin.is_empty() {
        match ctx.store.indicator_by_id(&req.indicator_id).await? {
            Some(row) => row.origin_org.clone(),
            None => String::new(),
        }
    } else {
        req.indicator_origin
    };
    if origin.is_empty() {
        return Err(RpcError::NotFound(format!(
            "indicator_id: {} is not held by {}; only indicators this node holds can be sighted (`threatmesh lookup VALUE` shows their ids)",
            req.indicator_id.chars().take(64).collect::<String>(),
            ctx.own
        )));
    }
    let origin = OrgId::parse(&origin)
        .map_err(|e| RpcError::BadRequest(format!("indicator_origin: {e}")))?;
    let draft = prepare_sighting(
        SightingDraft {
            origin,
            id: req.indicator_id,
            count: req.count,
            first_seen_ms: req.first_seen_unix_ms,
            last_seen_ms: req.last_seen_unix_ms,
            sector: req.sector,
            country: req.country,
        },
        ctx.clock.now_ms(),
    )?;
    let origin = draft.origin.as_str();
    let Some((version, from)) = ctx.store.indicator_route(origin, &draft.id).await? else {
        return Err(RpcError::NotFound(format!(
            "indicator {origin}/{} is not held by {}; only indicators this node holds can be sighted (`threatmesh lookup` shows origin and id)",
            draft.id, ctx.own
        )));
    };
    let next_hop = next_hop(ctx, origin, &from);
    let window = window_of(draft.first_seen_ms);
    // Additions here queue; another replica's addition in between makes
    // ours be made again from the report it kept.
    let _adding = ctx.sighting_lock.lock().await;
    for _ in 0..8 {
        let held = ctx
            .store
            .own_sighting(&ctx.own, origin, &draft.id, window)
            .await?;
        let merged_from = held.as_ref().map(|r| r.reported_ms);
        // The merge takes counts and times; the key id is the signer's now.
        let held = held.map(|r| report_with_key(&r, String::new()));
        let now = ctx.clock.now_ms();
        let signer = ctx.signing.load_full();
        let report = merge_sighting(
            &ctx.own,
            signer.key_id(),
            version,
            held.as_ref(),
            &draft,
            now,
        );
        let envelope = signer
            .seal(SIGHTING_PAYLOAD_TYPE, report.encode_to_vec())
            .encode_to_vec();
        let mut row = row_of(&report, envelope, "", Vec::new());
        let audit = [AuditEntry::sighted(
            actor,
            subject(&row),
            draft.count,
            row.count,
        )];
        let own = OwnSight {
            merged_from,
            key: key.as_ref().map(|k| (actor, k)),
        };
        match ctx
            .store
            .keep_own_sighting(&row, next_hop.as_ref(), own, &audit)
            .await?
        {
            OwnKept::Kept => {
                if next_hop.is_some() {
                    ctx.sightings_queued.send_modify(|n| *n += 1);
                }
                row.stored_ms = now;
                tracing::debug!(publisher = actor, indicator = %draft.id, count = row.count, "sighting recorded");
                return Ok(SightResponse {
                    sighting: Some(record_of(&row)),
                    replayed: false,
                });
            }
            OwnKept::Changed => continue,
            OwnKept::KeyUsed => {
                let key = key.as_ref().ok_or(RpcError::Missing("idempotency_key"))?;
                let earlier = ctx
                    .store
                    .sighted_under(actor, &key.key)
                    .await?
                    .ok_or_else(|| {
                        RpcError::Precondition("idempotency_key: in use; retry".into())
                    })?;
                return replayed(ctx, key, earlier).await;
            }
        }
    }
    Err(RpcError::Precondition(format!(
        "the report of {origin}/{} for that day kept changing while this sighting was added (other replicas); retry",
        draft.id
    )))
}

/// A Sight's idempotency key, with the digest of the rest of the request.
fn sight_key(req: &SightRequest) -> Result<Option<PublishKey>, RpcError> {
    crate::exchange::idempotency_key(&req.idempotency_key, || {
        let mut rest = req.clone();
        rest.idempotency_key.clear();
        rest.encode_to_vec()
    })
}

/// The answer to a retried Sight: the day's report as it stands, if the
/// key was used for this same request.
async fn replayed(
    ctx: &NodeContext,
    key: &PublishKey,
    (digest, origin, id, window): (Vec<u8>, String, String, i64),
) -> Result<SightResponse, RpcError> {
    if digest != key.request_digest {
        return Err(RpcError::BadRequest(format!(
            "idempotency_key: '{}' was used for another sighting (of {origin}/{id}); use a new key for a new sighting",
            key.key
        )));
    }
    let row = ctx
        .store
        .own_sighting(&ctx.own, &origin, &id, window)
        .await?
        .ok_or_else(|| RpcError::NotFound(format!("the report of {origin}/{id} is gone")))?;
    Ok(SightResponse {
        sighting: Some(record_of(&row)),
        replayed: true,
    })
}

/// Where a sighting of an indicator of `origin`, which reached us from
/// `from` ("" = published here), goes next: nowhere when we are its origin.
fn next_hop(ctx: &NodeContext, origin: &str, from: &str) -> Option<OrgId> {
    if origin == ctx.own.as_str() || from.is_empty() {
        return None;
    }
    OrgId::parse(from).ok()
}

/// Takes the reports partner `from` sent: each verified, checked and kept
/// or refused on its own (the ledger has a row for each accepted or
/// refused one; a report waiting for the sighter's key is answered
/// `FAILED_PRECONDITION` for the partner to retry).
pub async fn receive(
    ctx: &NodeContext,
    from: &OrgId,
    req: ReportSightingsRequest,
) -> Result<ReportSightingsResponse, RpcError> {
    reports::check_count(req.reports.len())?;
    let accept = sighting_ingress(from, ctx.view.load().policies.get(from).map(|p| p.as_ref()));
    reports::learn_cards(ctx, &accept, &req.cards, from).await?;
    let view = ctx.view.load_full();
    let bound = reports::Bound {
        rpc: "Exchange/ReportSightings",
        setting: "federation.sightings_max_per_partner",
        what: "sightings",
    };
    let mut outcomes = Vec::with_capacity(req.reports.len());
    let mut queued = false;
    for (i, report) in req.reports.into_iter().enumerate() {
        let checked = if accept.is_allow() {
            check(ctx, &view.keys, from, i, report).await?
        } else {
            Err(Refused::new(Code::PermissionDenied, accept.reason(), None))
        };
        let outcome = match checked {
            Ok((row, next)) => {
                let audit = [AuditEntry::sighting_accepted(
                    from.as_str(),
                    subject(&row),
                    accept.rule(),
                    &row.path,
                )];
                let max = ctx.settings.federation.sightings_max_per_partner;
                let kept = ctx
                    .store
                    .keep_sighting(&row, next.as_ref(), max, &audit)
                    .await?;
                queued |= next.is_some() && matches!(kept, KeptReport::New | KeptReport::Replaced);
                reports::kept_outcome(ctx, from, kept, bound).await?
            }
            Err(r) => {
                reports::refused_outcome(ctx, from, i, r, AuditEntry::sighting_refused).await?
            }
        };
        outcomes.push(outcome);
    }
    if queued {
        ctx.sightings_queued.send_modify(|n| *n += 1);
    }
    Ok(ReportSightingsResponse { outcomes })
}

/// Checks report `i` from `from`: an envelope, verified before anything in
/// it is read, well formed, along a path from its sighter to `from`, about
/// an indicator we sent `from`. The row to keep and where it goes next.
async fn check(
    ctx: &NodeContext,
    keys: &crate::signing::KeyDirectory,
    from: &OrgId,
    i: usize,
    report: SignedReport,
) -> Result<Result<(SightingRow, Option<OrgId>), Refused>, StoreError> {
    let field = format!("reports[{i}]");
    let s = match reports::open_report(&report, i, keys, open_sighting) {
        Ok(s) => s,
        Err(r) => return Ok(Err(r)),
    };
    let subject = crate::audit::AuditEntry::sighting_subject(
        &s.sighter_org,
        &s.indicator_origin,
        &s.indicator_id,
        s.window_start_unix_ms,
    );
    let refuse = |code, why: String| Ok(Err(Refused::new(code, why, Some(subject.clone()))));
    if let Err(e) = validate_sighting(&s, ctx.clock.now_ms()) {
        return refuse(Code::InvalidArgument, format!("{field}.{e}"));
    }
    if let Err(why) = reports::check_path(
        &report.path,
        &s.sighter_org,
        from,
        &ctx.own,
        MAX_SIGHTING_PATH - 1,
    ) {
        return refuse(Code::InvalidArgument, format!("{field}.path: {why}"));
    }
    // Only reports of what we sent this partner: no one learns through
    // this whether we hold an indicator it was never given.
    let key = (s.indicator_origin.clone(), s.indicator_id.clone());
    let sent = ctx
        .store
        .sent_before(from, std::slice::from_ref(&key))
        .await?;
    let route = ctx.store.indicator_route(&key.0, &key.1).await?;
    let Some((_, upstream)) = route.filter(|_| sent.contains(&key)) else {
        return refuse(
            Code::NotFound,
            format!(
                "{field}: {} never sent {from} indicator {}/{}; sightings go back only along the way an indicator came",
                ctx.own, key.0, key.1
            ),
        );
    };
    // Never back to the partner it came from (a loop of deliveries).
    let next = next_hop(ctx, &s.indicator_origin, &upstream).filter(|n| n != from);
    Ok(Ok((
        row_of(&s, report.envelope, from.as_str(), report.path),
        next,
    )))
}

/// The ledger subject of a stored sighting.
pub(crate) fn subject(row: &SightingRow) -> String {
    AuditEntry::sighting_subject(&row.sighter, &row.origin, &row.indicator_id, row.window_ms)
}

/// The row that keeps report `s` (signed as `envelope`).
fn row_of(s: &Sighting, envelope: Vec<u8>, from: &str, path: Vec<String>) -> SightingRow {
    SightingRow {
        sighter: s.sighter_org.clone(),
        origin: s.indicator_origin.clone(),
        indicator_id: s.indicator_id.clone(),
        window_ms: s.window_start_unix_ms,
        indicator_version: s.indicator_version,
        count: s.count,
        first_seen_ms: s.first_seen_unix_ms,
        last_seen_ms: s.last_seen_unix_ms,
        reported_ms: s.reported_unix_ms,
        sector: s.sector.clone(),
        country: s.country.clone(),
        received_from: from.to_string(),
        path: crate::store::OrgPath(path),
        envelope,
        stored_ms: 0,
    }
}

/// The report a stored row holds, from its columns (`key_id` is that of
/// its signature).
fn report_with_key(row: &SightingRow, key_id: String) -> Sighting {
    Sighting {
        sighter_org: row.sighter.clone(),
        key_id,
        indicator_origin: row.origin.clone(),
        indicator_id: row.indicator_id.clone(),
        indicator_version: row.indicator_version,
        count: row.count,
        first_seen_unix_ms: row.first_seen_ms,
        last_seen_unix_ms: row.last_seen_ms,
        window_start_unix_ms: row.window_ms,
        reported_unix_ms: row.reported_ms,
        sector: row.sector.clone(),
        country: row.country.clone(),
    }
}

/// A stored row as the Admin API and `sight` answer it.
pub fn record_of(row: &SightingRow) -> SightingRecord {
    let envelope = Envelope::decode(row.envelope.as_slice()).ok();
    let key_id = envelope
        .as_ref()
        .and_then(|e| e.signatures.first().map(|s| s.keyid.clone()))
        .unwrap_or_default();
    SightingRecord {
        sighting: Some(report_with_key(row, key_id)),
        received_from: row.received_from.clone(),
        path: row.path.0.clone(),
        stored_unix_ms: row.stored_ms,
        envelope,
    }
}
