//! Admin: certificates of our own org, our CRL, partners' CRLs.

use super::AdminService;
use crate::identity::{
    RevokedEntry, SpiffeId, issue_for_csr, issue_with_names, open_crl, server_name_san,
    server_names, sign_crl, write_atomic,
};
use crate::proto::v1::revoke_cert_request::Which;
use crate::proto::v1::{
    CertRecord, CertRole, CrlResponse, ImportCrlRequest, IssueCertRequest, ListCertsResponse,
    RevokeCertRequest, RevokeCertResponse, RotateNodeCertRequest,
};
use crate::rpc::RpcError;
use crate::store::CertRow;

/// Validity when a request does not say.
const DEFAULT_DAYS: u32 = 397;

fn days_or_default(days: u32) -> Result<i64, RpcError> {
    let d = if days == 0 { DEFAULT_DAYS } else { days };
    if d > 3650 {
        return Err(RpcError::BadRequest(format!("days: {d} is above 3650")));
    }
    Ok(i64::from(d))
}

fn record(c: CertRow) -> CertRecord {
    let (revoked, revoked_unix_ms, revocation_reason) = match c.revoked {
        Some((at, why)) => (true, at, why),
        None => (false, 0, String::new()),
    };
    CertRecord {
        serial: c.serial,
        spiffe_id: c.spiffe_id,
        not_before_unix_ms: c.not_before_ms,
        not_after_unix_ms: c.not_after_ms,
        issued_unix_ms: c.issued_ms,
        issued_by: c.issued_by,
        cert_pem: c.pem,
        revoked,
        revoked_unix_ms,
        revocation_reason,
    }
}

impl AdminService {
    fn ca(&self) -> Result<(String, String), RpcError> {
        self.ctx.ca_material().map_err(RpcError::Precondition)
    }

    pub(super) async fn issue_cert_as(
        &self,
        who: &SpiffeId,
        r: IssueCertRequest,
    ) -> Result<CertRecord, RpcError> {
        let own = &self.ctx.own;
        let id = match CertRole::try_from(r.role) {
            Ok(CertRole::Admin) => SpiffeId::admin(own, &r.name),
            Ok(CertRole::Publisher) => SpiffeId::publisher(own, &r.name),
            _ => {
                return Err(RpcError::BadRequest(format!(
                    "role: {} is not admin or publisher",
                    r.role
                )));
            }
        }
        .map_err(|e| RpcError::BadRequest(format!("name: {e}")))?;
        if r.csr_pem.is_empty() {
            return Err(RpcError::Missing("csr_pem"));
        }
        let days = days_or_default(r.days)?;
        let (ca_cert, ca_key) = self.ca()?;
        let pem = issue_for_csr(&ca_cert, &ca_key, &id, days, &r.csr_pem)
            .map_err(|e| RpcError::BadRequest(format!("csr_pem: {e}")))?;
        let row = self.ctx.own_cert_row(&pem, &who.to_string()).map_err(|e| {
            RpcError::Precondition(format!("issued certificate does not verify: {e}"))
        })?;
        self.ctx.store.record_cert(&row, &who.to_string()).await?;
        tracing::info!(cert = %id, serial = %row.serial, by = %who, "certificate issued");
        Ok(record(row))
    }

    pub(super) async fn list_certs_now(&self) -> Result<ListCertsResponse, RpcError> {
        Ok(ListCertsResponse {
            certs: self
                .ctx
                .store
                .certs()
                .await?
                .into_iter()
                .map(|mut c| {
                    c.pem.clear();
                    record(c)
                })
                .collect(),
        })
    }

    pub(super) async fn revoke_cert_as(
        &self,
        who: &SpiffeId,
        r: RevokeCertRequest,
    ) -> Result<RevokeCertResponse, RpcError> {
        let actor = who.to_string();
        let reason = if r.reason.trim().is_empty() {
            "unspecified".to_string()
        } else {
            r.reason
        };
        let (serial, spiffe_id) = match r.which {
            Some(Which::Serial(s)) => {
                let s = s.trim().to_ascii_lowercase();
                let known = self.ctx.store.certs().await?;
                let c = known.into_iter().find(|c| c.serial == s).ok_or_else(|| {
                    RpcError::NotFound(format!(
                        "serial: no certificate with serial {s} is known to this node (see `threatmesh certs list`, or give the certificate file with --cert)"
                    ))
                })?;
                (c.serial, c.spiffe_id)
            }
            Some(Which::CertPem(pem)) => {
                // Only certificates our own CA issued can be revoked here.
                let row = self
                    .ctx
                    .own_cert_row(&pem, "seen at revocation")
                    .map_err(|e| RpcError::BadRequest(format!("cert_pem: {e}")))?;
                self.ctx.store.record_cert(&row, &actor).await?;
                (row.serial, row.spiffe_id)
            }
            None => return Err(RpcError::Missing("serial or cert_pem")),
        };
        // Revoking the certificate this node serves would cut it off from
        // every partner that imports our CRL: rotate first.
        let serving = self
            .ctx
            .tls
            .cert
            .load()
            .chain
            .first()
            .and_then(|c| crate::identity::cert_serial(c.as_ref()).ok());
        if serving.as_deref() == Some(serial.as_str()) {
            return Err(RpcError::Precondition(format!(
                "{spiffe_id} (serial {serial}) is the certificate this node serves; rotate it first (threatmesh certs rotate), then revoke the old serial"
            )));
        }
        let newly = self
            .ctx
            .store
            .revoke_cert(&serial, &spiffe_id, &reason, &actor)
            .await?;
        let open = self.ctx.conns.count_where(|_, s| s == serial);
        // Reloading the trust store closes this certificate's connections.
        self.apply_now().await?;
        tracing::warn!(cert = %spiffe_id, serial = %serial, by = %who, connections = open, "certificate revoked");
        Ok(RevokeCertResponse {
            spiffe_id,
            serial,
            newly_revoked: newly,
            connections_closed: u32::try_from(open).unwrap_or(u32::MAX),
        })
    }

    pub(super) async fn rotate_node_cert_as(
        &self,
        who: &SpiffeId,
        req: &RotateNodeCertRequest,
    ) -> Result<CertRecord, RpcError> {
        let days = days_or_default(req.days)?;
        let (ca_cert, ca_key) = self.ca()?;
        let id = SpiffeId::node(&self.ctx.own);
        let t = &self.ctx.settings.tls;
        // The host names carry over unless new ones are given.
        let names = if req.dns_names.is_empty() {
            std::fs::read_to_string(&t.node_cert)
                .ok()
                .and_then(|pem| server_names(&pem).ok())
                .unwrap_or_default()
        } else {
            for n in &req.dns_names {
                server_name_san(n).map_err(|e| RpcError::BadRequest(format!("dns_names: {e}")))?;
            }
            req.dns_names.clone()
        };
        let c = issue_with_names(&ca_cert, &ca_key, &id, days, &names)
            .map_err(|e| RpcError::Precondition(e.to_string()))?;
        let write = |path: &std::path::Path, data: &str, private: bool| {
            write_atomic(path, data.as_bytes(), private).map_err(|e| {
                RpcError::Precondition(format!("cannot write {}: {e}", path.display()))
            })
        };
        // The key first: the node takes the pair only once both match.
        write(&t.node_key, &c.key_pem, true)?;
        write(&t.node_cert, &c.cert_pem, false)?;
        if !self.ctx.reload_node_cert() {
            return Err(RpcError::Precondition(
                "the new node certificate was written but not taken; see the node log".into(),
            ));
        }
        let row = self
            .ctx
            .own_cert_row(&c.cert_pem, &who.to_string())
            .map_err(|e| RpcError::Precondition(e.to_string()))?;
        self.ctx.store.record_cert(&row, &who.to_string()).await?;
        Ok(record(row))
    }

    pub(super) async fn export_crl_as(&self, who: &SpiffeId) -> Result<CrlResponse, RpcError> {
        let (ca_cert, ca_key) = self.ca()?;
        let revoked: Vec<RevokedEntry> = self
            .ctx
            .store
            .revocations()
            .await?
            .into_iter()
            .map(|(serial, revoked_ms)| RevokedEntry { serial, revoked_ms })
            .collect();
        let number = self
            .ctx
            .store
            .next_crl_number(revoked.len(), &who.to_string())
            .await?;
        let now = self.ctx.clock.now_ms();
        let validity = i64::from(self.ctx.settings.revocation.crl_validity_days) * 24 * 3_600_000;
        let pem = sign_crl(&ca_cert, &ca_key, &revoked, number, now, validity)
            .map_err(|e| RpcError::Precondition(e.to_string()))?;
        // Our CRL round-trips through the same check partners apply.
        let crl = open_crl(&self.ctx.own, &ca_cert, pem.as_bytes())
            .map_err(|e| RpcError::Precondition(e.to_string()))?;
        Ok(CrlResponse {
            issuer_org: self.ctx.own.to_string(),
            crl_pem: pem,
            this_update_unix_ms: crl.this_update_ms,
            next_update_unix_ms: crl.next_update_ms.unwrap_or(0),
            revoked_serials: crl.revoked.into_iter().collect(),
        })
    }

    pub(super) async fn import_crl_as(
        &self,
        who: &SpiffeId,
        r: ImportCrlRequest,
    ) -> Result<CrlResponse, RpcError> {
        let org = super::peers::parse_org("partner", &r.partner)?;
        let peer = self.peer_record(&org).await?;
        let crl = open_crl(&org, &peer.ca_bundle_pem, &r.crl)
            .map_err(|e| RpcError::BadRequest(format!("crl: {e}")))?;
        let summary = format!(
            "{} revoked, next update {}",
            crl.revoked.len(),
            crl.next_update_ms
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into())
        );
        self.ctx
            .store
            .put_partner_crl(
                &org,
                &crl.der,
                crl.this_update_ms,
                &summary,
                &who.to_string(),
            )
            .await?;
        self.apply_now().await?;
        tracing::info!(partner = %org, by = %who, %summary, "partner CRL imported");
        Ok(CrlResponse {
            issuer_org: org.to_string(),
            crl_pem: String::new(),
            this_update_unix_ms: crl.this_update_ms,
            next_update_unix_ms: crl.next_update_ms.unwrap_or(0),
            revoked_serials: crl.revoked.into_iter().collect(),
        })
    }
}
