//! The per-organisation trust store. A certificate is accepted for org X only
//! if it chains to **X's own** CA bundle: a certificate signed by partner Y's
//! CA that claims `spiffe://X/...` is refused. Pure: callers load the PEM.

use std::collections::{HashMap, HashSet};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, PartnerCrl, SpiffeId, StaleCrl, serial_hex};
use crate::model::OrgId;

/// The certificate purpose being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A caller presenting a client certificate.
    Client,
    /// A node we dialled presenting its server certificate.
    Server,
}

/// Parses a PEM bundle of CA certificates; every certificate must be a CA.
pub fn parse_ca_bundle(pem: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let mut out = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = item.map_err(|e| IdentityError::CaBundle(format!("bad PEM: {e}")))?;
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| IdentityError::CaBundle(format!("bad certificate: {e}")))?;
        if !cert.is_ca() {
            return Err(IdentityError::CaBundle(format!(
                "'{}' is not a CA certificate",
                cert.subject()
            )));
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(IdentityError::CaBundle("no certificate in bundle".into()));
    }
    Ok(out)
}

/// SHA-256 fingerprint of a DER certificate, as colon-separated hex, for
/// comparing a partner's CA out of band.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Trusted CA certificates per org: our own and each registered partner's.
#[derive(Debug, Clone)]
pub struct TrustStore {
    /// This node's org.
    own: OrgId,
    /// Org → DER CA certificates. Anchors are derived at verify time (cheap)
    /// so the store owns plain bytes and can be cloned and swapped freely.
    cas: HashMap<OrgId, Vec<CertificateDer<'static>>>,
    /// Registered partners that are not trusted now (suspended, removed), with
    /// their state, so a refusal can say why.
    blocked: HashMap<OrgId, String>,
    /// Serial numbers (lower-case hex) of our own revoked certificates.
    revoked: HashSet<String>,
    /// Each partner's imported CRL, signature already checked.
    crls: HashMap<OrgId, PartnerCrl>,
    /// What a CRL past its next-update time means.
    stale_crl: StaleCrl,
}

/// The serial number of a DER certificate, as lower-case hex.
pub fn cert_serial(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::CertParse(e.to_string()))?;
    Ok(serial_hex(cert.raw_serial()))
}

/// The validity period of a DER certificate as (notBefore, notAfter) in
/// Unix ms.
pub fn cert_validity_ms(der: &[u8]) -> Result<(i64, i64), IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::CertParse(e.to_string()))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().saturating_mul(1000),
        v.not_after.timestamp().saturating_mul(1000),
    ))
}

impl TrustStore {
    /// A store trusting only our own CA bundle.
    pub fn new(own: OrgId, own_ca_pem: &str) -> Result<Self, IdentityError> {
        let mut cas = HashMap::new();
        cas.insert(own.clone(), parse_ca_bundle(own_ca_pem)?);
        Ok(Self {
            own,
            cas,
            blocked: HashMap::new(),
            revoked: HashSet::new(),
            crls: HashMap::new(),
            stale_crl: StaleCrl::Refuse,
        })
    }

    /// Our org.
    pub fn own_org(&self) -> &OrgId {
        &self.own
    }

    /// Adds or replaces a partner's CA bundle. Our own bundle cannot be
    /// replaced through a partner registration.
    pub fn set_partner(&mut self, org: OrgId, ca_pem: &str) -> Result<(), IdentityError> {
        if org == self.own {
            return Err(IdentityError::CaBundle(format!(
                "{org} is this node's own org and cannot be registered as a partner"
            )));
        }
        let bundle = parse_ca_bundle(ca_pem)?;
        self.cas.insert(org, bundle);
        Ok(())
    }

    /// Marks a registered partner as not trusted now (`state` says why).
    pub fn block(&mut self, org: OrgId, state: &str) {
        self.cas.remove(&org);
        self.blocked.insert(org, state.to_string());
    }

    /// Why `org` is blocked, if it is.
    pub fn blocked(&self, org: &OrgId) -> Option<&str> {
        self.blocked.get(org).map(String::as_str)
    }

    /// Replaces the set of our own revoked certificate serials.
    pub fn set_revoked(&mut self, serials: impl IntoIterator<Item = String>) {
        self.revoked = serials.into_iter().collect();
    }

    /// Whether `serial` is one of our own revoked certificates.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }

    /// Sets what a partner CRL past its next-update time means.
    pub fn set_stale_crl(&mut self, policy: StaleCrl) {
        self.stale_crl = policy;
    }

    /// Installs a partner's verified CRL (replacing an earlier one).
    pub fn set_crl(&mut self, crl: PartnerCrl) {
        self.crls.insert(crl.org.clone(), crl);
    }

    /// A partner's installed CRL, if any.
    pub fn crl(&self, org: &OrgId) -> Option<&PartnerCrl> {
        self.crls.get(org)
    }

    /// Refuses a revoked certificate: one of ours whose serial we revoked, or
    /// a partner's on its CRL; and, with [`StaleCrl::Refuse`], any partner
    /// certificate while that partner's CRL is past its next update at
    /// `now_ms`. Checked at connection time, on every request, and over open
    /// connections whenever revocations change.
    pub fn check_revocation(
        &self,
        id: &SpiffeId,
        serial: &str,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        let revoked = || IdentityError::Revoked {
            id: id.clone(),
            serial: serial.to_string(),
        };
        if id.org == self.own {
            return if self.is_revoked(serial) {
                Err(revoked())
            } else {
                Ok(())
            };
        }
        let Some(crl) = self.crls.get(&id.org) else {
            return Ok(());
        };
        if crl.revoked.contains(serial) {
            return Err(revoked());
        }
        match crl.next_update_ms {
            Some(next) if next < now_ms && self.stale_crl == StaleCrl::Refuse => {
                Err(IdentityError::CrlStale {
                    id: id.clone(),
                    next_update: next,
                })
            }
            _ => Ok(()),
        }
    }

    /// Whether an open connection of `id` with certificate `serial` may go
    /// on: its org is still trusted and the certificate is not revoked.
    pub fn check_connection(
        &self,
        id: &SpiffeId,
        serial: &str,
        now_ms: i64,
    ) -> Result<(), IdentityError> {
        if let Some(state) = self.blocked(&id.org) {
            return Err(IdentityError::Blocked {
                id: id.clone(),
                state: state.to_string(),
            });
        }
        if !self.knows(&id.org) {
            return Err(IdentityError::UnknownOrg(id.clone()));
        }
        self.check_revocation(id, serial, now_ms)
    }

    /// Whether we hold a CA bundle for `org`.
    pub fn knows(&self, org: &OrgId) -> bool {
        self.cas.contains_key(org)
    }

    /// Verifies a presented chain and returns the holder's SPIFFE id. The
    /// org is read from the certificate, then the chain is checked against
    /// **that org's** CAs only.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
        algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
    ) -> Result<SpiffeId, IdentityError> {
        let id = SpiffeId::from_cert_der(end_entity.as_ref())?;
        if let Some(state) = self.blocked(&id.org) {
            return Err(IdentityError::Blocked {
                id: id.clone(),
                state: state.to_string(),
            });
        }
        let cas = self
            .cas
            .get(&id.org)
            .ok_or_else(|| IdentityError::UnknownOrg(id.clone()))?;
        let anchors = cas
            .iter()
            .map(|c| webpki::anchor_from_trusted_cert(c).map(|a| a.to_owned()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::CaBundle(e.to_string()))?;
        let cert = EndEntityCert::try_from(end_entity)
            .map_err(|e| IdentityError::CertParse(e.to_string()))?;
        let usage = match usage {
            Usage::Client => KeyUsage::client_auth(),
            Usage::Server => KeyUsage::server_auth(),
        };
        // webpki keeps only the name and key of a trust anchor, so the
        // partner CA's own path length limit is checked here: a CA of path
        // length 0 may sign leaves only, not sub-CAs.
        let path_lens = cas
            .iter()
            .map(|c| ca_path_len(c.as_ref()))
            .collect::<Vec<_>>();
        let within_path_len = |path: &webpki::VerifiedPath<'_>| {
            let anchor = path.anchor();
            let limit = anchors
                .iter()
                .position(|a| {
                    a.subject == anchor.subject
                        && a.subject_public_key_info == anchor.subject_public_key_info
                })
                .and_then(|i| path_lens[i]);
            match limit {
                Some(max) if path.intermediate_certificates().count() > max as usize => {
                    Err(webpki::Error::PathLenConstraintViolated)
                }
                _ => Ok(()),
            }
        };
        cert.verify_for_usage(
            algs,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            Some(&within_path_len),
        )
        .map_err(|e| IdentityError::Chain {
            id: id.clone(),
            reason: match e {
                webpki::Error::PathLenConstraintViolated => {
                    "the chain has more CAs than a CA's path length limit allows".into()
                }
                e => e.to_string(),
            },
        })?;
        let now_ms = i64::try_from(now.as_secs())
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        self.check_revocation(&id, &cert_serial(end_entity.as_ref())?, now_ms)?;
        Ok(id)
    }
}

/// The path length limit of a CA certificate (`None`: no limit or not
/// readable, which webpki refused already when it mattered).
fn ca_path_len(der: &[u8]) -> Option<u32> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint)
}
