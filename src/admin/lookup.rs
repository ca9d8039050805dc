//! Admin: `threatmesh lookup VALUE` — what we hold under a value, where it
//! came from, and whom we gave it to under which rule.

use super::AdminService;
use crate::exchange::decoded;
use crate::model::{guess_kind, kind_name, normalise_value, parse_kind};
use crate::proto::v1::{LookupHit, LookupRequest, LookupResponse, ReleaseDecision};
use crate::rpc::RpcError;

impl AdminService {
    pub(super) async fn lookup_now(&self, req: &LookupRequest) -> Result<LookupResponse, RpcError> {
        let kind = if req.kind.is_empty() {
            guess_kind(&req.value)
        } else {
            parse_kind(&req.kind).ok_or_else(|| {
                RpcError::BadRequest(format!("kind: '{}' is not a kind", req.kind))
            })?
        };
        let value = normalise_value(kind, &req.value).map_err(|e| {
            RpcError::BadRequest(format!(
                "value: {e} (looked up as {}; give the kind if it is another)",
                kind_name(kind as i32).unwrap_or("?")
            ))
        })?;
        let store = &self.ctx.store;
        let rows = store.versions_of_value(kind as i32, &value).await?;
        let mut hits = Vec::with_capacity(rows.len());
        let mut indicators: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let Ok(ind) = decoded(r) else {
                tracing::warn!(seq = r.seq, "unreadable stored row left out of a lookup");
                continue;
            };
            let key = (r.origin_org.clone(), r.indicator_id.clone());
            if !indicators.contains(&key) {
                indicators.push(key);
            }
            hits.push(LookupHit {
                indicator: Some(ind.as_ref().clone()),
                seq: r.seq,
                received_from: r.received_from.clone().unwrap_or_default(),
                stored_unix_ms: r.stored_ms,
                path: r.path.clone(),
            });
        }
        let partners: Vec<String> = store
            .peers()
            .await?
            .into_iter()
            .map(|p| p.org.to_string())
            .collect();
        let mut decisions = Vec::new();
        for (origin, id) in &indicators {
            let prefix = format!("{origin}/{id}#");
            for row in store.decisions_about(origin, id, &partners).await? {
                // A row may decide several indicators: one decision per
                // version of this one it names.
                for subject in row.entry.subject.split(' ') {
                    let Some(version) = subject
                        .strip_prefix(&prefix)
                        .and_then(|v| v.parse::<u64>().ok())
                    else {
                        continue;
                    };
                    decisions.push(ReleaseDecision {
                        partner: row.entry.partner.clone(),
                        event: row.entry.event.clone(),
                        rule: row.entry.rule.clone(),
                        version,
                        at_unix_ms: row.at_ms,
                        detail: row.entry.detail.clone(),
                    });
                }
            }
        }
        decisions.sort_by_key(|d| d.at_unix_ms);
        let mut sightings = Vec::new();
        for (origin, id) in &indicators {
            for row in store.sightings_of(Some(origin), id).await? {
                sightings.push(crate::sightings::record_of(&row));
            }
        }
        Ok(LookupResponse {
            kind: kind_name(kind as i32).unwrap_or("").into(),
            value,
            hits,
            sightings,
            decisions,
        })
    }
}
