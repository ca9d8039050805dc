//! The Admin gRPC service, for our own org's admin certificates only. This
//! first cut serves `Tail`; peers, policies and certificates follow.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::exchange::{decode_stored, stream_log};
use crate::node::NodeContext;
use crate::proto::v1::admin_server::Admin;
use crate::proto::v1::{StoredIndicator, TailRequest, TailResponse};
use crate::rpc::{Allowed, authorize};

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
        let stream = stream_log(self.ctx.clone(), after_seq, follow, |rows, _| {
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
        });
        Ok(Response::new(stream))
    }
}
