//! Organisation ids: DNS-style, lower-case names such as `ncsc.example`.

use std::fmt;

/// Why a string is not a valid org id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrgIdError {
    /// The id was empty.
    #[error("org id is empty")]
    Empty,
    /// Longer than a DNS name may be.
    #[error("org id '{0}' is longer than 253 characters")]
    TooLong(String),
    /// Upper-case letters are refused rather than folded, so an operator never
    /// registers two spellings of one partner.
    #[error("org id '{given}' must be lower case{}", did_you_mean(suggestion))]
    NotLowerCase {
        /// What was given.
        given: String,
        /// A valid spelling close to it, if there is one.
        suggestion: Option<String>,
    },
    /// A single label such as `localhost` is too easily confused with a role.
    #[error("org id '{0}' needs at least two DNS labels, e.g. 'cert.example'")]
    SingleLabel(String),
    /// A label broke the DNS letter-digit-hyphen rule.
    #[error(
        "org id '{id}': label '{label}' must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'{}",
        did_you_mean(suggestion)
    )]
    BadLabel {
        /// The whole id.
        id: String,
        /// The offending label.
        label: String,
        /// A valid spelling close to it, if there is one.
        suggestion: Option<String>,
    },
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|s| format!(" (did you mean '{s}'?)"))
        .unwrap_or_default()
}

/// A valid org id close to `s`, if there is one: lower case, with `_` or
/// spaces read as a label separator, else as a hyphen. Only ever a spelling
/// that [`OrgId::parse`] accepts.
fn suggest(s: &str) -> Option<String> {
    let lower = s.trim().to_ascii_lowercase();
    [".", "-"]
        .into_iter()
        .map(|sep| lower.replace(['_', ' '], sep))
        .chain(std::iter::once(lower.clone()))
        .find(|c| c != s && OrgId::parse(c).is_ok())
}

/// A validated organisation id. Constructing one is the only way to get one,
/// so holding an `OrgId` means the name is well-formed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

/// Whether `label` is a lower-case DNS label: 1-63 of a-z, 0-9 and `-`
/// (and `_` when `underscore`), not starting or ending with `-`.
pub(crate) fn is_dns_label(label: &str, underscore: bool) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || (underscore && b == b'_')
        })
}

impl TryFrom<String> for OrgId {
    type Error = OrgIdError;
    fn try_from(s: String) -> Result<Self, OrgIdError> {
        OrgId::parse(&s)
    }
}

impl OrgId {
    /// Parses and validates an org id.
    ///
    /// ```
    /// use threatmesh::model::OrgId;
    /// assert_eq!(OrgId::parse("cert.example").unwrap().as_str(), "cert.example");
    /// assert!(OrgId::parse("CERT.example").is_err());
    /// assert!(OrgId::parse("localhost").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, OrgIdError> {
        if s.is_empty() {
            return Err(OrgIdError::Empty);
        }
        if s.len() > 253 {
            return Err(OrgIdError::TooLong(s.to_string()));
        }
        if s.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(OrgIdError::NotLowerCase {
                given: s.to_string(),
                suggestion: suggest(s),
            });
        }
        let labels: Vec<&str> = s.split('.').collect();
        for label in &labels {
            if !is_dns_label(label, false) {
                return Err(OrgIdError::BadLabel {
                    id: s.to_string(),
                    label: label.to_string(),
                    suggestion: suggest(s),
                });
            }
        }
        if labels.len() < 2 {
            return Err(OrgIdError::SingleLabel(s.to_string()));
        }
        Ok(OrgId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for OrgId {
    type Err = OrgIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrgId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suggested_spelling_is_one_that_is_accepted() {
        for (given, want) in [
            ("CERT_example", Some("cert.example")),
            ("cert_example", Some("cert.example")),
            ("CERT.Example", Some("cert.example")),
            ("Police Unit.example", Some("police.unit.example")),
            ("LOCALHOST", None),
            ("a..b", None),
        ] {
            let e = OrgId::parse(given).unwrap_err().to_string();
            match want {
                Some(w) => {
                    assert!(e.contains(&format!("did you mean '{w}'?")), "{given}: {e}");
                    assert!(OrgId::parse(w).is_ok(), "{w}");
                }
                None => assert!(!e.contains("did you mean"), "{given}: {e}"),
            }
        }
    }

    #[test]
    fn accepts_dns_style_names() {
        for ok in [
            "a.example",
            "cert-eu.europa.example",
            "x1.y2",
            "bka.example",
        ] {
            assert!(OrgId::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_malformed_names_with_reason() {
        assert_eq!(OrgId::parse(""), Err(OrgIdError::Empty));
        assert!(matches!(
            OrgId::parse("Cert.example"),
            Err(OrgIdError::NotLowerCase { .. })
        ));
        assert!(matches!(
            OrgId::parse("example"),
            Err(OrgIdError::SingleLabel(_))
        ));
        for bad in [
            "a..b",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a.b.",
            "spiffe://a.b",
            "a b.c",
        ] {
            assert!(
                matches!(OrgId::parse(bad), Err(OrgIdError::BadLabel { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            OrgId::parse(&format!("{}.b", "a".repeat(64))),
            Err(OrgIdError::BadLabel { .. })
        ));
    }
}
