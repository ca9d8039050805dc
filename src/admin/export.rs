//! Admin: exports of what we hold, or of exactly one partner's policy view
//! (`threatmesh export`).

use std::sync::Arc;

use tokio::sync::mpsc;
use tonic::Status;

use super::AdminService;
use crate::audit::AuditEntry;
use crate::context::NodeContext;
use crate::exchange::{Release, decoded, release};
use crate::identity::SpiffeId;
use crate::model::OrgId;
use crate::proto::v1::{Envelope, ExportRequest, ExportResponse, ExportedIndicator};
use crate::rpc::RpcError;
use crate::store::StoredIndicator;

/// Rows read per page.
const PAGE: u32 = 500;

impl AdminService {
    /// Streams the export `req` asks for; the ledger row is written when it
    /// has been read to the end.
    pub(super) async fn export_as(
        &self,
        who: SpiffeId,
        req: ExportRequest,
    ) -> Result<mpsc::Receiver<Result<ExportResponse, Status>>, RpcError> {
        let partner = if req.partner.is_empty() {
            None
        } else {
            let org = OrgId::parse(&req.partner)
                .map_err(|e| RpcError::BadRequest(format!("partner: {e}")))?;
            if !self.ctx.store.peers().await?.iter().any(|p| p.org == org) {
                return Err(RpcError::NotFound(format!(
                    "partner: {org} is not registered (see `threatmesh peer list`)"
                )));
            }
            Some(org)
        };
        if req.since_unix_ms < 0 {
            return Err(RpcError::BadRequest(
                "since_unix_ms: must not be negative".into(),
            ));
        }
        let (tx, rx) = mpsc::channel(2);
        let ctx = self.ctx.clone();
        self.ctx.tasks.spawn(async move {
            if let Err(e) = run(&ctx, &who, &req, partner.as_ref(), &tx).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(rx)
    }
}

async fn run(
    ctx: &Arc<NodeContext>,
    who: &SpiffeId,
    req: &ExportRequest,
    partner: Option<&OrgId>,
    tx: &mpsc::Sender<Result<ExportResponse, Status>>,
) -> Result<(), RpcError> {
    let (mut after, mut count, mut withheld) = (0u64, 0u64, 0u64);
    loop {
        let rows = ctx
            .store
            .latest_versions_after(after, req.since_unix_ms, PAGE)
            .await?;
        let Some(last) = rows.last().map(|r| r.seq) else {
            break;
        };
        after = last;
        let page = match partner {
            None => ExportResponse {
                indicators: rows.iter().filter_map(exported).collect(),
                ..Default::default()
            },
            Some(p) => policy_view(ctx, p, &rows).await?,
        };
        count += page.indicators.len() as u64;
        withheld += page.withheld;
        if tx.send(Ok(page)).await.is_err() {
            // The caller went away: nothing was exported.
            return Ok(());
        }
    }
    // Everything we hold includes the sightings; a partner's view none.
    let mut after = None;
    while partner.is_none() {
        let rows = ctx
            .store
            .sightings_after(after.as_ref(), req.since_unix_ms, PAGE as usize)
            .await?;
        let Some(last) = rows.last().cloned() else {
            break;
        };
        after = Some(last);
        let page = ExportResponse {
            sightings: rows.iter().map(crate::sightings::record_of).collect(),
            ..Default::default()
        };
        if tx.send(Ok(page)).await.is_err() {
            return Ok(());
        }
    }
    let row = AuditEntry::exported(
        &who.to_string(),
        partner.map(OrgId::as_str).unwrap_or(""),
        if req.format.is_empty() {
            "unspecified"
        } else {
            &req.format
        },
        count,
        withheld,
    );
    ctx.store.append_audit(&[row]).await?;
    Ok(())
}

/// The rows `partner`'s policy releases to it now, by the one egress gate
/// (nothing is sent or recorded as sent).
async fn policy_view(
    ctx: &NodeContext,
    partner: &OrgId,
    rows: &[StoredIndicator],
) -> Result<ExportResponse, RpcError> {
    let view = ctx.view.load_full();
    let policy = view.policies.get(partner).map(|p| p.as_ref());
    let revoked: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r.revoked)
        .map(|r| (r.origin_org.clone(), r.indicator_id.clone()))
        .collect();
    let sent_before = ctx.store.sent_before(partner, &revoked).await?;
    let now = ctx.clock.now_ms();
    let mut page = ExportResponse::default();
    for r in rows {
        let before = sent_before.contains(&(r.origin_org.clone(), r.indicator_id.clone()));
        match release(&ctx.own, r, partner, policy, before, now) {
            Release::Send(..) => page.indicators.extend(exported(r)),
            Release::Withhold(_) | Release::Skip => page.withheld += 1,
        }
    }
    Ok(page)
}

/// One stored row as exported; an unreadable row is left out (and logged).
fn exported(r: &StoredIndicator) -> Option<ExportedIndicator> {
    let envelope = <Envelope as prost::Message>::decode(&r.envelope[..]);
    match (decoded(r), envelope) {
        (Ok(ind), Ok(env)) => Some(ExportedIndicator {
            indicator: Some(ind.as_ref().clone()),
            envelope: Some(env),
            path: r.path.clone(),
            seq: r.seq,
            stored_unix_ms: r.stored_ms,
        }),
        _ => {
            tracing::warn!(seq = r.seq, "unreadable stored row left out of an export");
            None
        }
    }
}
