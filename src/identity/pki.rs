//! Each organisation's own certificate authority: generating it and issuing
//! certificates whose only URI SAN is a SPIFFE id of that org.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::{IdentityError, Role, SpiffeId};
use crate::model::OrgId;

/// How far back certificates' validity starts: a node whose clock is up to
/// an hour behind the issuer's still accepts a certificate issued just now
/// (the clock-skew section of README).
const BACKDATE: Duration = Duration::hours(1);

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
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(pki_err)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a certificate for `id`, signed by the org's CA, valid `days` days,
/// with a newly generated key. Node certificates may serve and dial (server +
/// client auth); admin and publisher certificates are client-only.
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &SpiffeId,
    days: i64,
) -> Result<IssuedCert, IdentityError> {
    issue_with_names(ca_cert_pem, ca_key_pem, id, days, &[])
}

/// [`issue`], also naming the hosts the certificate serves as (DNS names or
/// IP addresses, node certificates only) so standard gRPC clients, which
/// check the host they dialled, accept it. The SPIFFE id stays the only
/// identity ThreatMesh reads.
pub fn issue_with_names(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &SpiffeId,
    days: i64,
    server_names: &[String],
) -> Result<IssuedCert, IdentityError> {
    if !server_names.is_empty() && id.role != Role::Node {
        return Err(IdentityError::Pki(format!(
            "{id}: only node certificates name the hosts they serve as"
        )));
    }
    let key = KeyPair::generate().map_err(pki_err)?;
    let cert = sign_leaf(ca_cert_pem, ca_key_pem, id, days, &key, server_names)?;
    Ok(IssuedCert {
        cert_pem: cert,
        key_pem: key.serialize_pem(),
    })
}

/// A host name a node certificate may carry: an IP address, or a DNS name
/// (letters, digits, hyphens; labels of 1-63; no wildcard).
pub fn server_name_san(name: &str) -> Result<SanType, IdentityError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let bad = |why: &str| IdentityError::Pki(format!("server name '{name}': {why}"));
    if name.contains('*') {
        return Err(bad("wildcards are not issued"));
    }
    rustls_pki_types::DnsName::try_from(name).map_err(|_| bad("not a DNS name or IP address"))?;
    let ia5 = name
        .to_ascii_lowercase()
        .as_str()
        .try_into()
        .map_err(|_| bad("not ASCII"))?;
    Ok(SanType::DnsName(ia5))
}

/// The DNS names and IP addresses a certificate (PEM) serves as.
pub fn server_names(cert_pem: &str) -> Result<Vec<String>, IdentityError> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|c: rustls_pki_types::CertificateDer<'static>| c)
        .map_err(|e| IdentityError::CertParse(e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| IdentityError::CertParse(e.to_string()))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::CertParse(e.to_string()))?
    else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect())
}

/// Issues a certificate for `id` to the key of a PKCS#10 request (PEM), so
/// the private key never leaves its holder. The request's own signature must
/// verify; everything else it asks for (names, extensions) is ignored: the
/// certificate carries exactly `id` and the role's usages. Returns PEM.
pub fn issue_for_csr(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &SpiffeId,
    days: i64,
    csr_pem: &str,
) -> Result<String, IdentityError> {
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| IdentityError::Pki(format!("certificate request: {e}")))?;
    sign_leaf(ca_cert_pem, ca_key_pem, id, days, &csr.public_key, &[])
}

/// A PKCS#10 request (PEM) for `id` with a newly generated key; returns
/// (request PEM, private key PEM). Used by `certs issue` so the key is made
/// where it will be used.
pub fn certificate_request(id: &SpiffeId) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate().map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.uri().as_str());
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(pki_err)?;
    Ok((csr.pem().map_err(pki_err)?, key.serialize_pem()))
}

fn sign_leaf(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    id: &SpiffeId,
    days: i64,
    public_key: &impl rcgen::PublicKeyData,
    server_names: &[String],
) -> Result<String, IdentityError> {
    if !(1..=3650).contains(&days) {
        return Err(IdentityError::Pki(format!(
            "validity of {days} days: must be 1-3650"
        )));
    }
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(pki_err)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(pki_err)?;
    let uri = id.uri();
    params.subject_alt_names =
        vec![SanType::URI(uri.as_str().try_into().map_err(|_| {
            IdentityError::Pki(format!("{uri} is not an IA5 string"))
        })?)];
    for name in server_names {
        params.subject_alt_names.push(server_name_san(name)?);
    }
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
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(days);
    params.serial_number = Some(random_serial()?);
    let cert = params.signed_by(public_key, &issuer).map_err(pki_err)?;
    Ok(cert.pem())
}

/// One revoked certificate for our CRL.
#[derive(Debug, Clone)]
pub struct RevokedEntry {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// When it was revoked (Unix ms).
    pub revoked_ms: i64,
}

/// Our CRL (PEM), signed by our CA: every revoked certificate, valid from
/// `now_ms` until `now_ms + validity_ms`, numbered `number` (monotonic, so
/// partners can refuse an older CRL).
pub fn sign_crl(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    revoked: &[RevokedEntry],
    number: u64,
    now_ms: i64,
    validity_ms: i64,
) -> Result<String, IdentityError> {
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(pki_err)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(pki_err)?;
    let at = |ms: i64| {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|e| IdentityError::Pki(format!("time {ms}: {e}")))
    };
    let mut entries = Vec::new();
    for r in revoked {
        let bytes = hex::decode(&r.serial)
            .map_err(|_| IdentityError::Pki(format!("serial '{}' is not hex", r.serial)))?;
        entries.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(&bytes),
            revocation_time: at(r.revoked_ms)?,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: at(now_ms)?,
        next_update: at(now_ms.saturating_add(validity_ms))?,
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: entries,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    params
        .signed_by(&issuer)
        .map_err(pki_err)?
        .pem()
        .map_err(pki_err)
}
