//! The Admin gRPC service, for our own org's admin certificates only. This
//! first cut serves `Tail` and `Status`; peers, policies and certificates
//! follow.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::exchange::{decode_stored, stream_log};
use crate::node::NodeContext;
use crate::proto::v1::admin_server::Admin;
use crate::proto::v1::{
    LinkStatus, StatusRequest, StatusResponse, StoredIndicator, TailRequest, TailResponse,
};
use crate::rpc::{Allowed, RpcError, authorize};

/// The Admin service of one node.
pub struct AdminService {
    /// Shared node state.
    ctx: Arc<NodeContext>,
}

impl AdminService {
    /// A service over the node's context.
    pub fn new(ctx: Arc<NodeContext>) -> Self {
        Self { ctx }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    type TailStream = ReceiverStream<Result<TailResponse, Status>>;

    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<Self::TailStream>, Status> {
        authorize(&req, &self.ctx.own, Allowed::OwnAdmin, "Admin/Tail")?;
        let TailRequest { after_seq, follow } = req.into_inner();
        let stream = stream_log(
            self.ctx.clone(),
            after_seq,
            follow,
            || None,
            |rows, _| {
                let indicators = rows
                .iter()
                .filter_map(|r| match decode_stored(&r.envelope) {
                    Ok(ind) => Some(StoredIndicator {
                        seq: r.seq,
                        received_from: r.received_from.clone().unwrap_or_default(),
                        stored_unix_ms: r.stored_ms,
                        indicator: Some(ind),
                    }),
                    Err(e) => {
                        tracing::warn!(seq = r.seq, error = %e, "unreadable stored row skipped");
                        None
                    }
                })
                .collect();
                (Some(TailResponse { indicators }), Vec::new())
            },
        );
        Ok(Response::new(stream))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        authorize(&req, &self.ctx.own, Allowed::OwnAdmin, "Admin/Status")?;
        Ok(Response::new(self.status_now().await?))
    }
}

impl AdminService {
    async fn status_now(&self) -> Result<StatusResponse, RpcError> {
        let store = &self.ctx.store;
        let board = self.ctx.links.snapshot();
        let mut links = Vec::new();
        for p in store.peers().await? {
            let cursor = store.cursor(&p.org).await?;
            let mut link = LinkStatus {
                partner: p.org.to_string(),
                endpoint: p.endpoint.clone(),
                state: "not-dialled".into(),
                cursor,
                policy: p.policy.clone(),
                ..Default::default()
            };
            if let Some(h) = board.get(&p.org) {
                link.state = h.state.as_str().into();
                link.since_unix_ms = h.since_ms;
                link.last_message_unix_ms = h.last_message_ms;
                link.upstream_latest = h.upstream_latest;
                link.lag = h.upstream_latest.saturating_sub(cursor);
                link.last_error = h.last_error.clone();
            } else if !p.endpoint.is_empty() {
                link.state = "connecting".into();
            }
            links.push(link);
        }
        Ok(StatusResponse {
            org: self.ctx.own.to_string(),
            indicators: store.count_indicators().await?,
            latest_seq: store.latest_seq().await?,
            rejections: store.count_rejections().await?,
            audit_rows: store.count_audit().await?,
            links,
        })
    }
}
