//! Admin: `threatmesh sightings ID` — the sightings this node holds of one
//! indicator: ours, and those partners sent on their way to the origin.

use super::AdminService;
use crate::proto::v1::{ListSightingsRequest, ListSightingsResponse};
use crate::rpc::RpcError;

impl AdminService {
    pub(super) async fn list_sightings_now(
        &self,
        req: &ListSightingsRequest,
    ) -> Result<ListSightingsResponse, RpcError> {
        if uuid::Uuid::parse_str(&req.indicator_id).is_err() {
            return Err(RpcError::BadRequest(format!(
                "indicator_id: '{}' is not a UUID (`threatmesh lookup VALUE` shows an indicator's id)",
                req.indicator_id.chars().take(64).collect::<String>()
            )));
        }
        let origin = (!req.indicator_origin.is_empty()).then_some(req.indicator_origin.as_str());
        let rows = self
            .ctx
            .store
            .sightings_of(origin, &req.indicator_id)
            .await?;
        let total = rows.iter().map(|r| r.count).sum();
        Ok(ListSightingsResponse {
            sightings: rows.iter().map(crate::sightings::record_of).collect(),
            total,
        })
    }
}
