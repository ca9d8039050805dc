//! Certificate revocation lists of partner orgs: a CRL is trusted only if it
//! is signed by a CA in **that partner's own** bundle, and what happens when
//! it is past its next-update time is an explicit setting ([`StaleCrl`]).
//! Pure: callers read the bytes and the clock.

use std::collections::BTreeSet;

use rustls_pki_types::CertificateRevocationListDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use super::{IdentityError, parse_ca_bundle};
use crate::model::OrgId;

/// What a node does with a partner's certificates once that partner's CRL
/// is past its next-update time (`revocation.stale_crl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleCrl {
    /// Refuse every certificate of that partner until a fresh CRL is
    /// imported (fail closed; the default).
    Refuse,
    /// Keep enforcing the stale list and accept certificates not on it
    /// (fail open; logged).
    Accept,
}

impl StaleCrl {
    /// Parses the setting's value: `refuse` or `accept`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "refuse" => Some(StaleCrl::Refuse),
            "accept" => Some(StaleCrl::Accept),
            _ => None,
        }
    }
}

/// A partner's CRL whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerCrl {
    /// The partner.
    pub org: OrgId,
    /// The CRL as DER, kept to re-check and to show.
    pub der: Vec<u8>,
    /// Its thisUpdate time (Unix ms).
    pub this_update_ms: i64,
    /// Its nextUpdate time (Unix ms), if it has one.
    pub next_update_ms: Option<i64>,
    /// Its CRL number (hex), if it has one.
    pub number: Option<String>,
    /// Serials (lower-case hex, no leading zero bytes) it revokes.
    pub revoked: BTreeSet<String>,
}

/// A certificate serial as lower-case hex without leading zero bytes, so the
/// same number compares equal however it was encoded.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    let trimmed = &raw[start..];
    if trimmed.is_empty() {
        "00".into()
    } else {
        hex::encode(trimmed)
    }
}

/// Reads a CRL given as PEM (`-----BEGIN X509 CRL-----`) or DER and checks
/// that a CA in `org`'s bundle (`ca_pem`) issued and signed it.
pub fn open_crl(org: &OrgId, ca_pem: &str, bytes: &[u8]) -> Result<PartnerCrl, IdentityError> {
    let bad = |why: String| IdentityError::Crl {
        org: org.clone(),
        reason: why,
    };
    let der: Vec<u8> = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(bytes)
            .map_err(|e| bad(format!("bad PEM: {e}")))?
            .as_ref()
            .to_vec()
    } else {
        bytes.to_vec()
    };
    let (_, crl) = CertificateRevocationList::from_der(&der)
        .map_err(|e| bad(format!("does not parse: {e}")))?;
    let cas = parse_ca_bundle(ca_pem)?;
    let mut signed = false;
    for ca in &cas {
        let Ok((_, ca)) = X509Certificate::from_der(ca.as_ref()) else {
            continue;
        };
        if ca.subject().as_raw() == crl.issuer().as_raw()
            && crl.verify_signature(ca.public_key()).is_ok()
        {
            signed = true;
            break;
        }
    }
    if !signed {
        return Err(bad(format!(
            "issued by '{}', not signed by any CA in {org}'s bundle",
            crl.issuer()
        )));
    }
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    Ok(PartnerCrl {
        org: org.clone(),
        this_update_ms: crl.last_update().timestamp().saturating_mul(1000),
        next_update_ms: crl
            .next_update()
            .map(|t| t.timestamp().saturating_mul(1000)),
        number: crl.crl_number().map(|n| hex::encode(n.to_bytes_be())),
        revoked,
        der,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{RevokedEntry, generate_ca, sign_crl};

    #[test]
    fn crl_must_be_signed_by_the_partners_own_ca() {
        let b = OrgId::parse("b.example").unwrap();
        let y = OrgId::parse("y.example").unwrap();
        let b_ca = generate_ca(&b, 30).unwrap();
        let y_ca = generate_ca(&y, 30).unwrap();
        let entries = [RevokedEntry {
            serial: "0a1b".into(),
            revoked_ms: 1_700_000_000_000,
        }];
        let pem = sign_crl(
            &b_ca.cert_pem,
            &b_ca.key_pem,
            &entries,
            7,
            1_800_000_000_000,
            86_400_000,
        )
        .unwrap();
        let crl = open_crl(&b, &b_ca.cert_pem, pem.as_bytes()).unwrap();
        assert_eq!(crl.revoked, BTreeSet::from(["0a1b".to_string()]));
        assert_eq!(crl.this_update_ms, 1_800_000_000_000);
        assert_eq!(crl.next_update_ms, Some(1_800_086_400_000));
        assert_eq!(crl.number.as_deref(), Some("07"));
        // DER works too.
        assert_eq!(open_crl(&b, &b_ca.cert_pem, &crl.der).unwrap(), crl);

        // Y's CA cannot publish a CRL for B.
        let forged = sign_crl(&y_ca.cert_pem, &y_ca.key_pem, &entries, 8, 0, 1).unwrap();
        let err = open_crl(&b, &b_ca.cert_pem, forged.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("not signed by any CA in b.example's bundle"),
            "{err}"
        );
        // A flipped byte breaks the signature.
        let mut tampered = crl.der.clone();
        let n = tampered.len() - 40;
        tampered[n] ^= 1;
        assert!(open_crl(&b, &b_ca.cert_pem, &tampered).is_err());
    }

    #[test]
    fn serials_compare_without_leading_zeros() {
        assert_eq!(serial_hex(&[0, 0x8f, 1]), "8f01");
        assert_eq!(serial_hex(&[0x7f]), "7f");
        assert_eq!(serial_hex(&[0]), "00");
    }
}
