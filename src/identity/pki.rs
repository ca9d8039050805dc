//! Each organisation's own certificate authority: generating it and issuing
//! certificates whose only URI SAN is a SPIFFE id of that org.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{IdentityError, Role, SpiffeId};
use crate::model::OrgId;

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM PKCS#8 private key. Write it with mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert").finish_non_exhaustive()
    }
}

fn pki_err(e: rcgen::Error) -> IdentityError {
    IdentityError::Pki(e.to_string())
}

fn random_serial() -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| IdentityError::Pki("system random generator failed".into()))?;
    bytes[0] &= 0x7f; // keep it a positive integer
    Ok(SerialNumber::from_slice(&bytes))
}

/// Makes a new self-signed CA for `org` (ECDSA P-256), valid `days` days.
/// Path length 0: it issues leaf certificates only.
pub fn generate_ca(org: &OrgId, days: i64) -> Result<IssuedCert, IdentityError> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org.as_str());
    dn.push(DnType::CommonName, format!("{org} ThreatMesh CA"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `id`, signed by the org's CA, valid `days` days.
/// Node certificates may serve and dial (server + client auth); admin and
/// publisher certificates are client-only.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &SpiffeId,
    days: i64,
) -> Result<IssuedCert, IdentityError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(pki_err)?;
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let uri = id.uri();
    params.subject_alt_names =
        vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
            IdentityError::Pki(format!("{uri} is not an IA5 string"))
        })?)];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, id.org.as_str());
    dn.push(DnType::CommonName, uri.as_str());
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match id.role {
        Role::Node => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Admin(_) | Role::Publisher(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(&key, &issuer).map_err(pki_err)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
