//! Admin: partners and sharing policies.

use prost::Message;

use super::AdminService;
use crate::exchange::{Identity, assemble, decode_stored};
use crate::identity::{SpiffeId, VerifiedCard, check_endpoint, open_card};
use crate::model::{OrgId, prepare_draft};
use crate::policy::{egress, parse_policy};
use crate::proto::v1::explain_policy_request::Subject;
use crate::proto::v1::{
    AddPeerRequest, ApplyPolicyResponse, Envelope, ExplainPolicyRequest, ExplainPolicyResponse,
    ListPeersResponse, ListPoliciesResponse, Peer, PeerAction, PeerRequest, PeerResponse,
    PolicyVersion, ResendToPeerRequest, ResendToPeerResponse, ResetCursorResponse,
    SetPeerStateRequest, UpdatePeerRequest,
};
use crate::rpc::RpcError;
use crate::store::{PeerChange, PeerRecord, PeerState, PolicyRecord, Store};

/// Parses an org id from request field `field`.
pub(super) fn parse_org(field: &str, s: &str) -> Result<OrgId, RpcError> {
    OrgId::parse(s).map_err(|e| RpcError::BadRequest(format!("{field}: {e}")))
}

/// Verifies a partner's card and registers it in `store` as `actor`. The
/// endpoint is `endpoint` if given, else the card's first. Returns the
/// verified card, whether it was new, and the endpoint used. The one way a
/// partner gets registered: the Admin API, the demo and test set-up use it.
pub async fn register_peer(
    own: &OrgId,
    store: &Store,
    card: &Envelope,
    endpoint: Option<&str>,
    policy: Option<&str>,
    introducer: bool,
    actor: &str,
) -> Result<(VerifiedCard, PeerChange, String), RpcError> {
    let v = open_card(card).map_err(|e| RpcError::BadRequest(format!("card: {e}")))?;
    if &v.org == own {
        return Err(RpcError::BadRequest(format!(
            "card: that is the card of {}, this node's own org; register partners' cards instead",
            v.org
        )));
    }
    let endpoint = match endpoint {
        Some(e) => e.to_string(),
        None => v.card.endpoints.first().cloned().unwrap_or_default(),
    };
    if !endpoint.is_empty() {
        check_endpoint(&endpoint).map_err(|e| RpcError::BadRequest(format!("endpoint: {e}")))?;
    }
    let change = store
        .put_peer(
            &v,
            &card.encode_to_vec(),
            &endpoint,
            policy,
            introducer,
            actor,
        )
        .await?;
    Ok((v, change, endpoint))
}

impl AdminService {
    pub(super) async fn add_peer_as(
        &self,
        who: &SpiffeId,
        r: AddPeerRequest,
    ) -> Result<PeerResponse, RpcError> {
        let card = r.card.ok_or(RpcError::Missing("card"))?;
        let policy = (!r.policy.is_empty()).then_some(r.policy.as_str());
        let (v, change, _) = register_peer(
            &self.ctx.own,
            &self.ctx.store,
            &card,
            r.endpoint.as_deref(),
            policy,
            r.introducer,
            &who.to_string(),
        )
        .await?;
        self.apply_now().await?;
        self.peer_response(&v.org, change == PeerChange::Added, "")
            .await
    }

    pub(super) async fn peer_record(&self, org: &OrgId) -> Result<PeerRecord, RpcError> {
        self.ctx
            .store
            .peers()
            .await?
            .into_iter()
            .find(|p| &p.org == org)
            .ok_or_else(|| RpcError::NotFound(format!("{org} is not a registered partner")))
    }

    async fn to_peer(&self, p: &PeerRecord) -> Result<Peer, RpcError> {
        let card = Envelope::decode(p.card.as_slice())
            .ok()
            .and_then(|e| open_card(&e).ok());
        let trust = self.ctx.view.load().trust.clone();
        let crl = trust.crl(&p.org);
        Ok(Peer {
            org: p.org.to_string(),
            display_name: p.display_name.clone(),
            country: card
                .as_ref()
                .map(|c| c.card.country.clone())
                .unwrap_or_default(),
            sector: card
                .as_ref()
                .map(|c| c.card.sector.clone())
                .unwrap_or_default(),
            endpoint: p.endpoint.clone(),
            policy: p.policy.clone(),
            state: p.state.as_str().into(),
            introducer: p.introducer,
            card_version: p.card_version,
            added_unix_ms: p.added_ms,
            cursor: self.ctx.store.cursor(&p.org).await?,
            ca_fingerprints: card
                .as_ref()
                .map(|c| c.ca_fingerprints.clone())
                .unwrap_or_default(),
            signing_key_ids: card
                .as_ref()
                .map(|c| c.keys.iter().map(|k| k.key_id.clone()).collect())
                .unwrap_or_default(),
            crl_revoked: crl.map(|c| c.revoked.len() as u64).unwrap_or(0),
            crl_next_update_unix_ms: crl.and_then(|c| c.next_update_ms).unwrap_or(0),
        })
    }

    pub(super) async fn peer_response(
        &self,
        org: &OrgId,
        added: bool,
        previous_state: &str,
    ) -> Result<PeerResponse, RpcError> {
        let rec = self.peer_record(org).await?;
        Ok(PeerResponse {
            peer: Some(self.to_peer(&rec).await?),
            added,
            previous_state: previous_state.into(),
        })
    }

    pub(super) async fn list_peers_now(&self) -> Result<ListPeersResponse, RpcError> {
        let mut peers = Vec::new();
        for p in self.ctx.store.peers().await? {
            peers.push(self.to_peer(&p).await?);
        }
        Ok(ListPeersResponse { peers })
    }

    pub(super) async fn update_peer_as(
        &self,
        who: &SpiffeId,
        r: UpdatePeerRequest,
    ) -> Result<PeerResponse, RpcError> {
        let org = parse_org("org", &r.org)?;
        if r.endpoint.is_none() && r.policy.is_none() && r.introducer.is_none() {
            return Err(RpcError::BadRequest(
                "nothing to change: set endpoint, policy or introducer".into(),
            ));
        }
        if let Some(ep) = r.endpoint.as_deref().filter(|e| !e.is_empty()) {
            check_endpoint(ep).map_err(|e| RpcError::BadRequest(format!("endpoint: {e}")))?;
        }
        let actor = who.to_string();
        if let Some(policy) = &r.policy {
            self.ctx.store.set_peer_policy(&org, policy, &actor).await?;
        }
        if r.endpoint.is_some() || r.introducer.is_some() {
            self.ctx
                .store
                .update_peer(&org, r.endpoint.as_deref(), r.introducer, &actor)
                .await?;
        }
        self.apply_now().await?;
        self.peer_response(&org, false, "").await
    }

    pub(super) async fn set_peer_state_as(
        &self,
        who: &SpiffeId,
        r: SetPeerStateRequest,
    ) -> Result<PeerResponse, RpcError> {
        let org = parse_org("org", &r.org)?;
        let state = match PeerAction::try_from(r.action) {
            Ok(PeerAction::Suspend) => PeerState::Suspended,
            Ok(PeerAction::Resume) => PeerState::Active,
            Ok(PeerAction::Remove) => PeerState::Removed,
            _ => {
                return Err(RpcError::BadRequest(format!(
                    "action: {} is not suspend, resume or remove",
                    r.action
                )));
            }
        };
        let before = self
            .ctx
            .store
            .set_peer_state(&org, state, &who.to_string())
            .await?;
        self.apply_now().await?;
        self.peer_response(&org, false, before.as_str()).await
    }

    pub(super) async fn reset_cursor_as(
        &self,
        who: &SpiffeId,
        r: PeerRequest,
    ) -> Result<ResetCursorResponse, RpcError> {
        let org = parse_org("org", &r.org)?;
        let peers = self.ctx.store.peers().await?;
        if !peers.iter().any(|p| p.org == org) {
            return Err(RpcError::NotFound(format!(
                "{org} is not a registered partner"
            )));
        }
        let was = self.ctx.store.reset_cursor(&org, &who.to_string()).await?;
        self.ctx.links.restart(&org);
        tracing::info!(partner = %org, was, by = %who, "cursor reset");
        Ok(ResetCursorResponse { was })
    }

    /// `peer resend`: records the request (and its ledger row) for the
    /// partner's subscription to carry out, and counts what it will send:
    /// the rows of the range the current policy allows and the partner was
    /// never sent.
    pub(super) async fn resend_as(
        &self,
        who: &SpiffeId,
        r: ResendToPeerRequest,
    ) -> Result<ResendToPeerResponse, RpcError> {
        let org = parse_org("partner", &r.partner)?;
        let peer = self.peer_record(&org).await?;
        if peer.state != PeerState::Active {
            return Err(RpcError::Precondition(format!(
                "{org} is {}: only an active partner is sent anything (`threatmesh peer resume {org}`)",
                peer.state.as_str()
            )));
        }
        let store = &self.ctx.store;
        let up_to = store.latest_seq().await?;
        let from = match r.since_unix_ms {
            0 => Some(1),
            ms => store.first_seq_since(ms).await?,
        };
        let Some(from) = from.filter(|f| *f <= up_to) else {
            return Ok(ResendToPeerResponse {
                from_seq: 0,
                up_to_seq: up_to,
                newly_allowed: 0,
            });
        };
        let newly_allowed = self.newly_allowed(&org, from, up_to).await?;
        let entry = crate::audit::AuditEntry::resend(
            &who.to_string(),
            org.as_str(),
            from,
            up_to,
            newly_allowed,
        );
        store
            .request_resend(&org, (from, up_to), &who.to_string(), entry)
            .await?;
        self.ctx.resends.send_modify(|g| *g += 1);
        tracing::info!(partner = %org, from, up_to, newly_allowed, by = %who, "peer resend requested");
        Ok(ResendToPeerResponse {
            from_seq: from,
            up_to_seq: up_to,
            newly_allowed,
        })
    }

    /// How many rows `from..=up_to` the current policy sends `org` that it
    /// was never sent (decided as the send path decides).
    async fn newly_allowed(&self, org: &OrgId, from: u64, up_to: u64) -> Result<u64, RpcError> {
        let (ctx, store) = (&self.ctx, &self.ctx.store);
        let policy = ctx.view.load().policies.get(org).cloned();
        let mut at = from - 1;
        let mut allowed = 0u64;
        while at < up_to {
            let rows = store.read_after(at, 1000).await?;
            let Some(last) = rows.last().map(|r| r.seq) else {
                break;
            };
            let rows: Vec<_> = rows.into_iter().filter(|r| r.seq <= up_to).collect();
            let now = ctx.clock.now_ms();
            for row in store.never_sent(org, rows).await? {
                let d = crate::exchange::decide(&ctx.own, &row, org, policy.as_deref(), false, now);
                if d.is_some_and(|(d, _)| d.is_allow()) {
                    allowed += 1;
                }
            }
            at = last;
        }
        Ok(allowed)
    }

    async fn bound_to(&self, name: &str) -> Result<Vec<String>, RpcError> {
        Ok(self
            .ctx
            .store
            .peers()
            .await?
            .into_iter()
            .filter(|p| p.policy == name)
            .map(|p| p.org.to_string())
            .collect())
    }

    pub(super) async fn apply_policy_as(
        &self,
        who: &SpiffeId,
        document: &str,
    ) -> Result<ApplyPolicyResponse, RpcError> {
        let policy = parse_policy(document).map_err(|e| RpcError::BadRequest(e.to_string()))?;
        let (version, changed) = self
            .ctx
            .store
            .apply_policy(&policy.name, document, &who.to_string())
            .await?;
        self.apply_now().await?;
        Ok(ApplyPolicyResponse {
            bound_partners: self.bound_to(&policy.name).await?,
            name: policy.name,
            version,
            changed,
        })
    }

    pub(super) async fn list_policies_now(&self) -> Result<ListPoliciesResponse, RpcError> {
        let peers = self.ctx.store.peers().await?;
        let policies = self
            .ctx
            .store
            .policies()
            .await?
            .into_iter()
            .map(|p| {
                let bound = peers
                    .iter()
                    .filter(|r| r.policy == p.name)
                    .map(|r| r.org.to_string())
                    .collect();
                PolicyVersion {
                    bound_partners: bound,
                    ..policy_version(p, false)
                }
            })
            .collect();
        Ok(ListPoliciesResponse { policies })
    }

    pub(super) async fn show_policy_now(
        &self,
        name: &str,
        version: u64,
    ) -> Result<PolicyVersion, RpcError> {
        let v = (version != 0).then_some(version);
        let p = self.ctx.store.policy(name, v).await?.ok_or_else(|| {
            RpcError::NotFound(match v {
                Some(v) => format!("policy {name} has no version {v}"),
                None => format!("no policy named {name} (see `threatmesh policy show`)"),
            })
        })?;
        Ok(PolicyVersion {
            bound_partners: self.bound_to(name).await?,
            ..policy_version(p, true)
        })
    }

    pub(super) async fn policy_history_now(
        &self,
        name: &str,
    ) -> Result<ListPoliciesResponse, RpcError> {
        let versions = self.ctx.store.policy_history(name).await?;
        if versions.is_empty() {
            return Err(RpcError::NotFound(format!("no policy named {name}")));
        }
        Ok(ListPoliciesResponse {
            policies: versions
                .into_iter()
                .map(|p| policy_version(p, false))
                .collect(),
        })
    }

    pub(super) async fn explain_now(
        &self,
        r: ExplainPolicyRequest,
    ) -> Result<ExplainPolicyResponse, RpcError> {
        let own = &self.ctx.own;
        let partner = parse_org("partner", &r.partner)?;
        let peer = self.peer_record(&partner).await?;
        let (ind, hops) = match r.subject {
            Some(Subject::IndicatorId(id)) => {
                let row = self.ctx.store.indicator_by_id(&id).await?.ok_or_else(|| {
                    RpcError::NotFound(format!("indicator_id: this node holds no indicator {id}"))
                })?;
                let hops = u32::try_from(row.path.len()).unwrap_or(u32::MAX);
                (
                    decode_stored(&row.envelope).map_err(RpcError::Precondition)?,
                    hops,
                )
            }
            Some(Subject::Draft(d)) => {
                let now = self.ctx.clock.now_ms();
                let d = prepare_draft(&d, now)?;
                let at = Identity {
                    id: String::new(),
                    version: 1,
                    created_unix_ms: now,
                };
                (
                    assemble(own, self.ctx.signing.load().key_id(), at, now, d),
                    0,
                )
            }
            None => return Err(RpcError::Missing("indicator_id or draft")),
        };
        // The policy as the send path would use it: bound, latest version,
        // and only while the partner is active.
        let policy = (peer.state == PeerState::Active)
            .then(|| self.ctx.view.load().policies.get(&partner).cloned())
            .flatten();
        let d = egress(
            own,
            &ind,
            hops,
            &partner,
            policy.as_deref(),
            self.ctx.clock.now_ms(),
        );
        Ok(ExplainPolicyResponse {
            allow: d.is_allow(),
            rule: d.rule().to_string(),
            reason: d.reason().to_string(),
            policy: policy
                .as_ref()
                .map(|p| format!("{}@{}", p.name, p.version))
                .unwrap_or_else(|| "none".into()),
            indicator: Some(ind),
        })
    }
}

fn policy_version(p: PolicyRecord, with_document: bool) -> PolicyVersion {
    PolicyVersion {
        name: p.name,
        version: p.version,
        document: if with_document {
            p.document
        } else {
            String::new()
        },
        applied_unix_ms: p.applied_ms,
        applied_by: p.applied_by,
        bound_partners: Vec::new(),
    }
}
