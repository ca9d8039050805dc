//! The per-organisation trust store. A certificate is accepted for org X only
//! if it chains to **X's own** CA bundle: a certificate signed by partner Y's
//! CA that claims `spiffe://X/...` is refused. Pure: callers load the PEM.

use std::collections::{HashMap, HashSet};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{IdentityError, SpiffeId};
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
}

/// The serial number of a DER certificate, as lower-case hex.
pub fn cert_serial(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::CertParse(e.to_string()))?;
    Ok(crate::signing::hex(cert.raw_serial()))
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

    /// Refuses a certificate of our own org whose serial has been revoked.
    /// Checked at connection time and again on every request.
    pub fn check_revocation(&self, id: &SpiffeId, serial: &str) -> Result<(), IdentityError> {
        if id.org == self.own && self.is_revoked(serial) {
            return Err(IdentityError::Revoked {
                id: id.clone(),
                serial: serial.to_string(),
            });
        }
        Ok(())
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
        cert.verify_for_usage(algs, &anchors, intermediates, now, usage, None, None)
            .map_err(|e| IdentityError::Chain {
                id: id.clone(),
                reason: e.to_string(),
            })?;
        if id.org == self.own {
            self.check_revocation(&id, &cert_serial(end_entity.as_ref())?)?;
        }
        Ok(id)
    }
}
