//! Identities without a central authority: each org's own CA and the
//! certificates it issues (SPIFFE ids, path = role), the per-org trust store,
//! rustls configurations and verifiers, and org cards.

mod card;
mod crl;
mod files;
mod pki;
mod spiffe;
mod tls;
mod trust;

use crate::model::OrgId;

pub use card::{
    CardInfo, VerifiedCard, check_card_succession, check_endpoint, envelope_from_json,
    envelope_to_json, open_card, seal_card, seal_card_with_keys, seal_rotation,
};
pub use crl::{PartnerCrl, StaleCrl, open_crl, serial_hex};
pub use files::{pem_encode, write_atomic};
pub use pki::{
    IssuedCert, RevokedEntry, certificate_request, generate_ca, issue, issue_for_csr,
    issue_with_names, server_name_san, server_names, sign_crl,
};
pub use spiffe::{Role, SpiffeId};
pub use tls::{
    CertifiedKey, SharedTrust, TrustSource, client_config, install_default_provider, provider,
    server_config,
};
pub use trust::{TrustStore, Usage, cert_serial, cert_validity_ms, fingerprint, parse_ca_bundle};

/// Identity and certificate errors. Messages name the id, org or file.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentityError {
    /// A URI that is not a ThreatMesh SPIFFE id.
    #[error("'{uri}' is not a valid ThreatMesh SPIFFE id: {reason}")]
    BadSpiffeId {
        /// The URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// The client presented no certificate.
    #[error("no client certificate presented; use a certificate issued by your organisation's CA")]
    NoClientCert,
    /// Certificate without a URI SAN.
    #[error("certificate has no URI SAN with a SPIFFE id")]
    NoSpiffeId,
    /// Certificate with several URI SANs (ambiguous identity).
    #[error("certificate has {0} URI SANs; exactly one SPIFFE id is allowed")]
    SeveralUris(usize),
    /// The certificate could not be parsed.
    #[error("certificate does not parse: {0}")]
    CertParse(String),
    /// The certificate names an org whose CA we do not hold.
    #[error("certificate claims {0}, but that org is not a registered partner")]
    UnknownOrg(SpiffeId),
    /// The named org is a registered partner that is suspended or removed.
    #[error("certificate claims {id}, but {} is {state} on this node", id.org)]
    Blocked {
        /// The id the certificate claims.
        id: SpiffeId,
        /// `suspended` or `removed`.
        state: String,
    },
    /// A certificate revoked by its org: one of ours, or on a partner's CRL.
    #[error("certificate {id} (serial {serial}) has been revoked by {}", id.org)]
    Revoked {
        /// The id in the certificate.
        id: SpiffeId,
        /// Its serial number, hex.
        serial: String,
    },
    /// The chain does not lead to the named org's own CA.
    #[error("certificate claims {id} but does not chain to {}'s CA bundle: {reason}", id.org)]
    Chain {
        /// The id the certificate claims.
        id: SpiffeId,
        /// The path-building failure.
        reason: String,
    },
    /// The dialled node presented another identity.
    #[error("expected to reach {expected} but the server is {got}")]
    UnexpectedPeer {
        /// Whom we dialled.
        expected: SpiffeId,
        /// Whom we reached.
        got: SpiffeId,
    },
    /// A certificate with the wrong role for its use.
    #[error("certificate {id} cannot be used here: a {expected} certificate is required")]
    WrongRole {
        /// The id found.
        id: SpiffeId,
        /// The role required.
        expected: &'static str,
    },
    /// The partner's CRL is past its next-update time and
    /// `revocation.stale_crl = "refuse"`.
    #[error(
        "certificate claims {id}, but {}'s CRL expired at {}; import a fresh one (revocation.stale_crl = \"refuse\")",
        id.org,
        crate::clock::rfc3339(*next_update)
    )]
    CrlStale {
        /// The id the certificate claims.
        id: SpiffeId,
        /// When the CRL's next update was due.
        next_update: i64,
    },
    /// A partner CRL that cannot be trusted.
    #[error("CRL of {org}: {reason}")]
    Crl {
        /// The partner.
        org: OrgId,
        /// Why.
        reason: String,
    },
    /// A bad CA bundle.
    #[error("CA bundle: {0}")]
    CaBundle(String),
    /// A bad or unverifiable org card.
    #[error("org card: {0}")]
    Card(String),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Pki(String),
    /// A rustls configuration error.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A certificate or key file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::UnixTime;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    fn der(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
        CertifiedKey::from_pem(pem, &generate_ca(&org("z.example"), 1).unwrap().key_pem)
            .unwrap()
            .chain
            .remove(0)
    }

    #[test]
    fn cert_valid_only_for_its_own_orgs_ca() {
        let algs = provider().signature_verification_algorithms.all;
        let a = org("a.example");
        let y = org("y.example");
        let a_ca = generate_ca(&a, 30).unwrap();
        let y_ca = generate_ca(&y, 30).unwrap();
        let mut trust = TrustStore::new(a.clone(), &a_ca.cert_pem).unwrap();
        trust.set_partner(y.clone(), &y_ca.cert_pem).unwrap();
        let now = UnixTime::now();

        let good = issue(&a_ca.cert_pem, &a_ca.key_pem, &SpiffeId::node(&a), 30).unwrap();
        let id = trust
            .verify(&der(&good.cert_pem), &[], now, Usage::Client, algs)
            .unwrap();
        assert_eq!(id, SpiffeId::node(&a));
        assert!(
            trust
                .verify(&der(&good.cert_pem), &[], now, Usage::Server, algs)
                .is_ok()
        );

        // Y's CA issues a certificate claiming to be A's node.
        let forged = issue(&y_ca.cert_pem, &y_ca.key_pem, &SpiffeId::node(&a), 30).unwrap();
        let err = trust
            .verify(&der(&forged.cert_pem), &[], now, Usage::Client, algs)
            .unwrap_err();
        assert!(matches!(err, IdentityError::Chain { .. }), "{err}");

        // A publisher certificate cannot act as a server.
        let publ = issue(
            &a_ca.cert_pem,
            &a_ca.key_pem,
            &SpiffeId::publisher(&a, "feed").unwrap(),
            30,
        )
        .unwrap();
        assert!(
            trust
                .verify(&der(&publ.cert_pem), &[], now, Usage::Server, algs)
                .is_err()
        );

        // Unknown org.
        let q = org("q.example");
        let q_ca = generate_ca(&q, 30).unwrap();
        let q_node = issue(&q_ca.cert_pem, &q_ca.key_pem, &SpiffeId::node(&q), 30).unwrap();
        assert!(matches!(
            trust.verify(&der(&q_node.cert_pem), &[], now, Usage::Client, algs),
            Err(IdentityError::UnknownOrg(_))
        ));
        // Our own org cannot be overwritten by a partner registration.
        assert!(trust.set_partner(a.clone(), &y_ca.cert_pem).is_err());
        // A leaf certificate is not a CA bundle.
        assert!(parse_ca_bundle(&good.cert_pem).is_err());
    }

    #[test]
    fn cards_verify_and_detect_tampering() {
        let a = org("a.example");
        let ca = generate_ca(&a, 30).unwrap();
        let (key, _) = crate::signing::OrgSigningKey::generate().unwrap();
        let info = CardInfo {
            org: a.clone(),
            display_name: "Agency A".into(),
            country: "DE".into(),
            sector: "law-enforcement".into(),
            ca_bundle_pem: ca.cert_pem.clone(),
            endpoints: vec!["node.a.example:7443".into()],
            rotations: Vec::new(),
        };
        let env = seal_card(&info, &key, 1_000);
        let json = envelope_to_json(&env);
        let back = envelope_from_json(&json).unwrap();
        assert_eq!(back, env);
        let v = open_card(&back).unwrap();
        assert_eq!(v.org, a);
        assert_eq!(v.keys[0].key_id, key.key_id());

        let mut bad = env.clone();
        let n = bad.payload.len() - 1;
        bad.payload[n] ^= 1;
        assert!(open_card(&bad).is_err());
        let (other, _) = crate::signing::OrgSigningKey::generate().unwrap();
        let resigned = seal_card(&info, &other, 1_000);
        // Signed by its own (different) key: valid, but carries the other key.
        assert_eq!(open_card(&resigned).unwrap().keys[0].key_id, other.key_id());
        let mut mixed = env.clone();
        mixed.signatures = resigned.signatures.clone();
        assert!(open_card(&mixed).is_err());
    }

    #[test]
    fn a_card_after_missed_rotations_links_up_through_the_rotations_it_carries() {
        use crate::proto::v1::SigningKey;
        use crate::signing::OrgSigningKey;
        let a = org("a.example");
        let ca = generate_ca(&a, 30).unwrap();
        let new_key = || OrgSigningKey::generate().unwrap().0;
        let (k1, k2, k3, thief) = (new_key(), new_key(), new_key(), new_key());
        let info = |rotations| CardInfo {
            org: a.clone(),
            display_name: "Agency A".into(),
            country: String::new(),
            sector: String::new(),
            ca_bundle_pem: ca.cert_pem.clone(),
            endpoints: Vec::new(),
            rotations,
        };
        let pub_key = |k: &OrgSigningKey, revoked| SigningKey {
            key_id: k.key_id().into(),
            public_key: k.public_key().to_vec(),
            revoked,
            ..Default::default()
        };
        let held = open_card(&seal_card(&info(Vec::new()), &k1, 1)).unwrap();
        // Two rotations, k1 -> k2 -> k3; the newest card, signed by k3,
        // revokes k1.
        let r12 = seal_rotation(&a, &k1, &k2, 10);
        let r23 = seal_rotation(&a, &k2, &k3, 20);
        let keys = [pub_key(&k1, true), pub_key(&k2, false), pub_key(&k3, false)];
        let next = |rotations: Vec<_>, signer: &OrgSigningKey| {
            let env = seal_card_with_keys(&info(rotations), &keys, signer, 30, 30);
            (open_card(&env).unwrap(), env)
        };
        let (v, env) = next(vec![r12.clone(), r23.clone()], &k3);
        check_card_succession(&held, &v, &env).unwrap();
        // Without the rotations, or with only part of the chain: refused.
        let (v, env) = next(Vec::new(), &k3);
        assert!(check_card_succession(&held, &v, &env).is_err());
        let (v, env) = next(vec![r23.clone()], &k3);
        assert!(check_card_succession(&held, &v, &env).is_err());
        // A rotation signed by a key the holder never trusted leads nowhere.
        let forged = seal_rotation(&a, &thief, &k3, 20);
        let (v, env) = next(vec![r12.clone(), forged], &k3);
        assert!(check_card_succession(&held, &v, &env).is_err());
        // Another org's rotation does not count for this one.
        let other = seal_rotation(&org("b.example"), &k1, &k2, 10);
        let (v, env) = next(vec![other, r23], &k3);
        assert!(check_card_succession(&held, &v, &env).is_err());
    }
}
