//! SPIFFE ids: `spiffe://<org>/node`, `spiffe://<org>/admin/<name>`,
//! `spiffe://<org>/publisher/<name>`. The trust domain is the org id; the
//! path is the role.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::IdentityError;
use crate::model::OrgId;

/// What a certificate holder may do, from the path of its SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Role {
    /// An org's node: serves Exchange and subscribes to partners.
    Node,
    /// A named administrator of the org.
    Admin(String),
    /// A named publishing system or person of the org.
    Publisher(String),
}

/// A parsed, well-formed SPIFFE id of ThreatMesh.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// Trust domain = organisation.
    pub org: OrgId,
    /// Role within the organisation.
    pub role: Role,
}

fn valid_name(name: &str) -> bool {
    // "." and ".." are path segments with a meaning of their own (SPIFFE
    // forbids them); a name made only of dots would read as one.
    !name.is_empty()
        && !name.bytes().all(|b| b == b'.')
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl SpiffeId {
    /// The node id of an org.
    pub fn node(org: &OrgId) -> Self {
        Self {
            org: org.clone(),
            role: Role::Node,
        }
    }

    /// An admin id; `name` is 1-64 of `a-z 0-9 - _ .`.
    pub fn admin(org: &OrgId, name: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("spiffe://{org}/admin/{name}"))
    }

    /// A publisher id; `name` is 1-64 of `a-z 0-9 - _ .`.
    pub fn publisher(org: &OrgId, name: &str) -> Result<Self, IdentityError> {
        Self::parse(&format!("spiffe://{org}/publisher/{name}"))
    }

    /// Parses a URI. Only the three role paths are accepted.
    ///
    /// ```
    /// use threatmesh::identity::{Role, SpiffeId};
    /// let id = SpiffeId::parse("spiffe://cert.example/publisher/feed-1").unwrap();
    /// assert_eq!(id.role, Role::Publisher("feed-1".into()));
    /// assert!(SpiffeId::parse("spiffe://cert.example/root").is_err());
    /// ```
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::BadSpiffeId {
            uri: uri.chars().take(200).collect(),
            reason: why.to_string(),
        };
        let rest = uri
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("scheme must be spiffe://"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("no path (expected /node, /admin/<name> or /publisher/<name>)"))?;
        let org = OrgId::parse(domain).map_err(|e| bad(&e.to_string()))?;
        let role = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["node"] => Role::Node,
            ["admin", name] if valid_name(name) => Role::Admin(name.to_string()),
            ["publisher", name] if valid_name(name) => Role::Publisher(name.to_string()),
            _ => {
                return Err(bad(
                    "path must be /node, /admin/<name> or /publisher/<name> (name: a-z 0-9 - _ .)",
                ));
            }
        };
        Ok(Self { org, role })
    }

    /// Extracts the SPIFFE id from a DER certificate: exactly one URI SAN,
    /// which must be a valid id. Does **not** verify the chain.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::CertParse(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::CertParse(e.to_string()))?
            .ok_or(IdentityError::NoSpiffeId)?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [one] => Self::parse(one),
            [] => Err(IdentityError::NoSpiffeId),
            many => Err(IdentityError::SeveralUris(many.len())),
        }
    }

    /// The URI form.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.role {
            Role::Node => write!(f, "spiffe://{}/node", self.org),
            Role::Admin(n) => write!(f, "spiffe://{}/admin/{n}", self.org),
            Role::Publisher(n) => write!(f, "spiffe://{}/publisher/{n}", self.org),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_roles_only() {
        let org = OrgId::parse("a.example").unwrap();
        assert_eq!(
            SpiffeId::parse("spiffe://a.example/node").unwrap(),
            SpiffeId::node(&org)
        );
        assert_eq!(
            SpiffeId::parse("spiffe://a.example/admin/alice")
                .unwrap()
                .role,
            Role::Admin("alice".into())
        );
        for bad in [
            "https://a.example/node",
            "spiffe://a.example",
            "spiffe://a.example/node/x",
            "spiffe://a.example/admin/",
            "spiffe://a.example/admin/Alice",
            "spiffe://A.example/node",
            "spiffe://a.example/superuser",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_that_are_dot_segments_are_refused() {
        let org = OrgId::parse("a.example").unwrap();
        for bad in [".", "..", "..."] {
            assert!(SpiffeId::admin(&org, bad).is_err(), "admin {bad}");
            assert!(SpiffeId::publisher(&org, bad).is_err(), "publisher {bad}");
        }
        assert!(SpiffeId::publisher(&org, "feed.v2").is_ok());
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "spiffe://a.example/node",
            "spiffe://a.example/admin/ops-1",
            "spiffe://a.example/publisher/feed.x",
        ] {
            assert_eq!(SpiffeId::parse(s).unwrap().to_string(), s);
        }
    }
}
