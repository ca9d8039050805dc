//! The Admin gRPC service, for our own org's admin certificates only
//! (`spiffe://<own-org>/admin/<name>`): partners, policies, certificates,
//! CRLs, the audit ledger, tail and status. Every change is written to the
//! audit ledger under the calling admin's SPIFFE id and applied to the
//! running node at once (trust store, links, open streams and connections).

mod export;
mod lookup;
mod mesh;
mod peers;
mod pki;
mod sightings;

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::context::NodeContext;
use crate::exchange::{decode_stored, stream_log};
use crate::identity::SpiffeId;
use crate::proto::v1::admin_server::Admin;
use crate::proto::v1::*;
use crate::rpc::{Allowed, RpcError, authorize};

pub use peers::register_peer;

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

    /// The calling admin, or the refusal.
    fn admin<T>(&self, req: &Request<T>, rpc: &'static str) -> Result<SpiffeId, Status> {
        Ok(authorize(req, &self.ctx.own, Allowed::OwnAdmin, rpc)?)
    }

    /// Applies a stored change to the running node now, rather than at the
    /// next refresh tick.
    async fn apply_now(&self) -> Result<(), RpcError> {
        crate::federation::apply_trust_change(&self.ctx)
            .await
            .map_err(|e| match e {
                crate::context::NodeError::Store(s) => RpcError::Store(s),
                other => RpcError::Precondition(other.to_string()),
            })?;
        Ok(())
    }
}

/// Wraps a handler result as a tonic response.
fn reply<T>(r: Result<T, RpcError>) -> Result<Response<T>, Status> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl Admin for AdminService {
    type TailStream = ReceiverStream<Result<TailResponse, Status>>;

    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<Self::TailStream>, Status> {
        self.admin(&req, "Admin/Tail")?;
        let TailRequest { after_seq, follow } = req.into_inner();
        let stream = stream_log(
            self.ctx.clone(),
            after_seq,
            follow,
            None,
            || None,
            |rows, _, _, _| {
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
                (Some(TailResponse { indicators }), Vec::new(), Vec::new())
            },
            None,
        );
        Ok(Response::new(stream))
    }

    type ExportStream = ReceiverStream<Result<ExportResponse, Status>>;

    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let who = self.admin(&req, "Admin/Export")?;
        let rx = self.export_as(who, req.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn lookup(
        &self,
        req: Request<LookupRequest>,
    ) -> Result<Response<LookupResponse>, Status> {
        self.admin(&req, "Admin/Lookup")?;
        reply(self.lookup_now(req.get_ref()).await)
    }

    async fn list_sightings(
        &self,
        req: Request<crate::proto::v1::ListSightingsRequest>,
    ) -> Result<Response<crate::proto::v1::ListSightingsResponse>, Status> {
        self.admin(&req, "Admin/ListSightings")?;
        reply(self.list_sightings_now(req.get_ref()).await)
    }

    async fn mesh_statistics(
        &self,
        req: Request<crate::proto::v1::MeshStatisticsRequest>,
    ) -> Result<Response<crate::proto::v1::MeshStatisticsResponse>, Status> {
        self.admin(&req, "Admin/MeshStatistics")?;
        reply(crate::statistics::mesh_view(&self.ctx, req.get_ref()).await)
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        self.admin(&req, "Admin/Status")?;
        reply(self.status_now().await)
    }

    async fn add_peer(
        &self,
        req: Request<AddPeerRequest>,
    ) -> Result<Response<PeerResponse>, Status> {
        let who = self.admin(&req, "Admin/AddPeer")?;
        reply(self.add_peer_as(&who, req.into_inner()).await)
    }

    async fn list_peers(
        &self,
        req: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        self.admin(&req, "Admin/ListPeers")?;
        reply(self.list_peers_now().await)
    }

    async fn show_peer(&self, req: Request<PeerRequest>) -> Result<Response<PeerResponse>, Status> {
        self.admin(&req, "Admin/ShowPeer")?;
        let org = peers::parse_org("org", &req.get_ref().org)?;
        reply(self.peer_response(&org, false, "").await)
    }

    async fn update_peer(
        &self,
        req: Request<UpdatePeerRequest>,
    ) -> Result<Response<PeerResponse>, Status> {
        let who = self.admin(&req, "Admin/UpdatePeer")?;
        reply(self.update_peer_as(&who, req.into_inner()).await)
    }

    async fn set_peer_state(
        &self,
        req: Request<SetPeerStateRequest>,
    ) -> Result<Response<PeerResponse>, Status> {
        let who = self.admin(&req, "Admin/SetPeerState")?;
        reply(self.set_peer_state_as(&who, req.into_inner()).await)
    }

    async fn reset_cursor(
        &self,
        req: Request<PeerRequest>,
    ) -> Result<Response<ResetCursorResponse>, Status> {
        let who = self.admin(&req, "Admin/ResetCursor")?;
        reply(self.reset_cursor_as(&who, req.into_inner()).await)
    }

    async fn resend_to_peer(
        &self,
        req: Request<ResendToPeerRequest>,
    ) -> Result<Response<ResendToPeerResponse>, Status> {
        let who = self.admin(&req, "Admin/ResendToPeer")?;
        reply(self.resend_as(&who, req.into_inner()).await)
    }

    async fn apply_policy(
        &self,
        req: Request<ApplyPolicyRequest>,
    ) -> Result<Response<ApplyPolicyResponse>, Status> {
        let who = self.admin(&req, "Admin/ApplyPolicy")?;
        reply(self.apply_policy_as(&who, &req.get_ref().document).await)
    }

    async fn list_policies(
        &self,
        req: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.admin(&req, "Admin/ListPolicies")?;
        reply(self.list_policies_now().await)
    }

    async fn show_policy(
        &self,
        req: Request<ShowPolicyRequest>,
    ) -> Result<Response<PolicyVersion>, Status> {
        self.admin(&req, "Admin/ShowPolicy")?;
        let r = req.into_inner();
        reply(self.show_policy_now(&r.name, r.version).await)
    }

    async fn policy_history(
        &self,
        req: Request<PolicyHistoryRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        self.admin(&req, "Admin/PolicyHistory")?;
        reply(self.policy_history_now(&req.get_ref().name).await)
    }

    async fn explain_policy(
        &self,
        req: Request<ExplainPolicyRequest>,
    ) -> Result<Response<ExplainPolicyResponse>, Status> {
        self.admin(&req, "Admin/ExplainPolicy")?;
        reply(self.explain_now(req.into_inner()).await)
    }

    async fn issue_cert(
        &self,
        req: Request<IssueCertRequest>,
    ) -> Result<Response<CertRecord>, Status> {
        let who = self.admin(&req, "Admin/IssueCert")?;
        reply(self.issue_cert_as(&who, req.into_inner()).await)
    }

    async fn list_certs(
        &self,
        req: Request<ListCertsRequest>,
    ) -> Result<Response<ListCertsResponse>, Status> {
        self.admin(&req, "Admin/ListCerts")?;
        reply(self.list_certs_now().await)
    }

    async fn revoke_cert(
        &self,
        req: Request<RevokeCertRequest>,
    ) -> Result<Response<RevokeCertResponse>, Status> {
        let who = self.admin(&req, "Admin/RevokeCert")?;
        reply(self.revoke_cert_as(&who, req.into_inner()).await)
    }

    async fn rotate_node_cert(
        &self,
        req: Request<RotateNodeCertRequest>,
    ) -> Result<Response<CertRecord>, Status> {
        let who = self.admin(&req, "Admin/RotateNodeCert")?;
        reply(self.rotate_node_cert_as(&who, req.get_ref()).await)
    }

    async fn export_crl(
        &self,
        req: Request<ExportCrlRequest>,
    ) -> Result<Response<CrlResponse>, Status> {
        let who = self.admin(&req, "Admin/ExportCrl")?;
        reply(self.export_crl_as(&who).await)
    }

    async fn import_crl(
        &self,
        req: Request<ImportCrlRequest>,
    ) -> Result<Response<CrlResponse>, Status> {
        let who = self.admin(&req, "Admin/ImportCrl")?;
        reply(self.import_crl_as(&who, req.into_inner()).await)
    }

    async fn list_cards(
        &self,
        req: Request<ListCardsRequest>,
    ) -> Result<Response<ListCardsResponse>, Status> {
        self.admin(&req, "Admin/ListCards")?;
        reply(self.list_cards_now().await)
    }

    async fn approve_card(
        &self,
        req: Request<ApproveCardRequest>,
    ) -> Result<Response<DirectoryCard>, Status> {
        let who = self.admin(&req, "Admin/ApproveCard")?;
        reply(self.approve_card_as(&who, &req.get_ref().org).await)
    }

    async fn list_quarantine(
        &self,
        req: Request<ListQuarantineRequest>,
    ) -> Result<Response<ListQuarantineResponse>, Status> {
        self.admin(&req, "Admin/ListQuarantine")?;
        reply(self.list_quarantine_now().await)
    }

    async fn rotate_signing_key(
        &self,
        req: Request<RotateSigningKeyRequest>,
    ) -> Result<Response<SigningKeysResponse>, Status> {
        let who = self.admin(&req, "Admin/RotateSigningKey")?;
        reply(self.rotate_signing_key_as(&who).await)
    }

    async fn revoke_signing_key(
        &self,
        req: Request<RevokeSigningKeyRequest>,
    ) -> Result<Response<SigningKeysResponse>, Status> {
        let who = self.admin(&req, "Admin/RevokeSigningKey")?;
        reply(
            self.revoke_signing_key_as(&who, &req.get_ref().key_id)
                .await,
        )
    }

    type AuditLogStream = ReceiverStream<Result<AuditLogResponse, Status>>;

    async fn audit_log(
        &self,
        req: Request<AuditLogRequest>,
    ) -> Result<Response<Self::AuditLogStream>, Status> {
        self.admin(&req, "Admin/AuditLog")?;
        let r = req.into_inner();
        let partner = (!r.partner.is_empty()).then_some(r.partner);
        let since = (r.since_unix_ms != 0).then_some(r.since_unix_ms);
        let rows = self
            .ctx
            .store
            .audit_rows(partner.as_deref(), since)
            .await
            .map_err(RpcError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.ctx.tasks.spawn(async move {
            for chunk in rows.chunks(500) {
                let rows = chunk
                    .iter()
                    .map(|r| AuditRow {
                        seq: r.seq,
                        at_unix_ms: r.at_ms,
                        event: r.entry.event.clone(),
                        actor: r.entry.actor.clone(),
                        partner: r.entry.partner.clone(),
                        subject: r.entry.subject.clone(),
                        rule: r.entry.rule.clone(),
                        detail: r.entry.detail.clone(),
                    })
                    .collect();
                if tx.send(Ok(AuditLogResponse { rows })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn audit_verify(
        &self,
        req: Request<AuditVerifyRequest>,
    ) -> Result<Response<AuditVerifyResponse>, Status> {
        self.admin(&req, "Admin/AuditVerify")?;
        let against = req.into_inner().against;
        let r = self
            .ctx
            .store
            .verify_audit_against(&self.ctx.own, &against)
            .await
            .map_err(RpcError::from)?;
        Ok(Response::new(match r {
            Ok(rows) => AuditVerifyResponse {
                intact: true,
                rows,
                problem: String::new(),
                heads_checked: against.len() as u64,
            },
            Err(problem) => AuditVerifyResponse {
                intact: false,
                rows: 0,
                problem,
                heads_checked: 0,
            },
        }))
    }

    async fn list_witnessed_heads(
        &self,
        req: Request<ListWitnessedHeadsRequest>,
    ) -> Result<Response<ListWitnessedHeadsResponse>, Status> {
        self.admin(&req, "Admin/ListWitnessedHeads")?;
        let org = req.into_inner().org;
        let org = if org.is_empty() {
            None
        } else {
            Some(
                crate::model::OrgId::parse(&org)
                    .map_err(|e| RpcError::BadRequest(format!("org: {e}")))?,
            )
        };
        let heads = self
            .ctx
            .store
            .witnessed_heads(org.as_ref())
            .await
            .map_err(RpcError::from)?
            .into_iter()
            .map(|h| WitnessedHead {
                org: h.org.to_string(),
                rows: h.rows,
                head_hash: h.head_hash,
                signed_unix_ms: h.signed_ms,
                received_unix_ms: h.received_ms,
                envelope: h.envelope,
            })
            .collect();
        Ok(Response::new(ListWitnessedHeadsResponse { heads }))
    }
}

impl AdminService {
    async fn status_now(&self) -> Result<StatusResponse, RpcError> {
        let store = &self.ctx.store;
        let board = self.ctx.links.snapshot();
        let quarantine = store.quarantine_counts().await?;
        let waiting =
            |org: &crate::model::OrgId| quarantine.get(org.as_str()).copied().unwrap_or(0);
        let outbox = store.sighting_outbox_counts().await?;
        let mut links = Vec::new();
        for p in store.peers().await? {
            let cursor = store.cursor(&p.org).await?;
            let mut link = LinkStatus {
                partner: p.org.to_string(),
                endpoint: p.endpoint.clone(),
                state: "not-dialled".into(),
                cursor,
                policy: p.policy.clone(),
                quarantined: waiting(&p.org),
                sightings_waiting: outbox.get(p.org.as_str()).copied().unwrap_or(0),
                ..Default::default()
            };
            if p.state != crate::store::PeerState::Active {
                link.state = p.state.as_str().into();
            } else if let Some(h) = board.get(&p.org) {
                link.state = h.state.as_str().into();
                link.since_unix_ms = h.since_ms;
                link.last_message_unix_ms = h.last_message_ms;
                link.upstream_latest = h.upstream_latest;
                link.lag = h.upstream_latest.saturating_sub(cursor);
                link.last_error = h.last_error.clone();
                link.last_error_unix_ms = h.last_error_ms;
                link.retry_in_ms = h.retry_in_ms;
                link.last_error_past = !h.last_error.is_empty() && h.error_is_past();
                if let Some(offset) = h.clock_offset_ms {
                    link.clock_offset_ms = offset;
                    link.clock_offset_known = true;
                    link.clock_warning = crate::context::clock_warning(
                        &p.org,
                        offset,
                        self.ctx.settings.federation.clock_offset_warn_ms,
                    )
                    .unwrap_or_default();
                }
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
            quarantined: quarantine.values().sum(),
            sightings_waiting: outbox.values().sum(),
        })
    }
}
