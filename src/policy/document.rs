//! Policy documents: named TOML files (examples in `config/policies/`).
//! Parsing is strict — unknown keys, unknown labels, kinds or countries are
//! errors that carry the line, column and field — and pure.

use serde::Deserialize;

use super::{EgressRules, IngressRules, Origins, PartnerPolicy, SightingRules, StatisticsRules};
use crate::model::{is_iso3166_alpha2, parse_kind, parse_tlp};
use crate::proto::v1::{IndicatorKind, Tlp};

/// A policy document that cannot be used, with the position and field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    name: PolicyName,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    egress: EgressDoc,
    #[serde(default)]
    ingress: IngressDoc,
    #[serde(default)]
    sightings: SightingsDoc,
    #[serde(default)]
    statistics: StatisticsDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatisticsDoc {
    #[serde(default)]
    share: bool,
    #[serde(default)]
    relay: bool,
    #[serde(default)]
    accept: bool,
    #[serde(default)]
    epsilon: Epsilon,
    #[serde(default = "default_min_count")]
    min_count: u64,
}

impl Default for StatisticsDoc {
    fn default() -> Self {
        Self {
            share: false,
            relay: false,
            accept: false,
            epsilon: Epsilon::default(),
            min_count: default_min_count(),
        }
    }
}

fn default_min_count() -> u64 {
    StatisticsRules::DEFAULT_MIN_COUNT
}

/// Epsilon of the Laplace noise, 0.001 to 10 in steps of 0.001, or 0 for none.
#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "f64")]
struct Epsilon(u32);

impl TryFrom<f64> for Epsilon {
    type Error = String;
    fn try_from(v: f64) -> Result<Self, String> {
        let milli = (v * 1000.0).round();
        if !(0.0..=10_000.0).contains(&milli) || (v > 0.0 && milli < 1.0) {
            return Err(format!(
                "{v} is not an epsilon: 0 (no noise) or 0.001 to 10 (smaller = more noise)"
            ));
        }
        Ok(Self(milli as u32))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SightingsDoc {
    #[serde(default)]
    send: bool,
    #[serde(default)]
    relay: bool,
    #[serde(default)]
    accept: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressDoc {
    tlp_ceiling: TlpLabel,
    #[serde(default)]
    community: bool,
    #[serde(default)]
    kinds: Vec<KindName>,
    #[serde(default)]
    tags_include: Vec<Tag>,
    #[serde(default)]
    tags_exclude: Vec<Tag>,
    #[serde(default)]
    min_confidence: Confidence,
    #[serde(default)]
    origins: OriginsDoc,
    #[serde(default)]
    jurisdictions: Vec<Country>,
    #[serde(default)]
    max_age_days: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressDoc {
    #[serde(default)]
    kinds: Vec<KindName>,
    #[serde(default)]
    min_confidence: Confidence,
    #[serde(default)]
    accept_relayed: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OriginsDoc {
    #[default]
    Own,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct PolicyName(String);

impl TryFrom<String> for PolicyName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if valid_policy_name(&s) {
            Ok(Self(s))
        } else {
            Err(format!(
                "'{s}' is not a policy name: 1-64 characters of a-z, 0-9, '-', '_' and '.'"
            ))
        }
    }
}

/// Whether `s` is a valid policy name.
pub fn valid_policy_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct TlpLabel(Tlp);

impl TryFrom<String> for TlpLabel {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_tlp(&s).map(Self).ok_or_else(|| {
            format!("'{s}' is not a TLP 2.0 label (CLEAR, GREEN, AMBER, AMBER+STRICT, RED)")
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct KindName(IndicatorKind);

impl TryFrom<String> for KindName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_kind(&s).map(Self).ok_or_else(|| {
            format!("'{s}' is not an indicator kind (ipv4, ipv6, cidr, domain, url, email, sha256, sha1, md5)")
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Country(String);

impl TryFrom<String> for Country {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if is_iso3166_alpha2(&s) {
            Ok(Self(s))
        } else {
            Err(format!(
                "'{s}' is not an ISO 3166-1 alpha-2 country code (upper case, e.g. DE)"
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(try_from = "String")]
struct Tag(String);

impl TryFrom<String> for Tag {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() || t.len() > 64 || t != s {
            Err(format!(
                "'{s}' is not a tag: 1-64 characters without surrounding spaces"
            ))
        } else {
            Ok(Self(s))
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(try_from = "u32")]
struct Confidence(u32);

impl TryFrom<u32> for Confidence {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if v <= 100 {
            Ok(Self(v))
        } else {
            Err(format!("{v} is outside 0-100"))
        }
    }
}

/// Parses and validates a policy document. The returned policy has
/// version 0; the store assigns versions when it is applied.
///
/// ```
/// let p = threatmesh::policy::parse_policy(
///     "name = \"isp-feed\"\n[egress]\ntlp_ceiling = \"GREEN\"\ncommunity = true\n",
/// ).unwrap();
/// assert_eq!(p.name, "isp-feed");
/// let e = threatmesh::policy::parse_policy("name = \"x\"\n[egress]\ntlp_ceiling = \"PURPLE\"\n")
///     .unwrap_err();
/// assert!(e.to_string().contains("line 3"));
/// ```
pub fn parse_policy(text: &str) -> Result<PartnerPolicy, PolicyError> {
    let doc: Doc = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
    let kinds = |v: Vec<KindName>| v.into_iter().map(|k| k.0).collect();
    let tags = |v: Vec<Tag>| v.into_iter().map(|t| t.0).collect();
    let e = doc.egress;
    Ok(PartnerPolicy {
        name: doc.name.0,
        version: 0,
        egress: EgressRules {
            tlp_ceiling: e.tlp_ceiling.0,
            community: e.community,
            kinds: kinds(e.kinds),
            tags_include: tags(e.tags_include),
            tags_exclude: tags(e.tags_exclude),
            min_confidence: e.min_confidence.0,
            origins: match e.origins {
                OriginsDoc::Own => Origins::Own,
                OriginsDoc::Any => Origins::Any,
            },
            jurisdictions: e.jurisdictions.into_iter().map(|c| c.0).collect(),
            max_age_days: e.max_age_days,
        },
        ingress: IngressRules {
            kinds: kinds(doc.ingress.kinds),
            min_confidence: doc.ingress.min_confidence.0,
            accept_relayed: doc.ingress.accept_relayed,
        },
        sightings: SightingRules {
            send: doc.sightings.send,
            relay: doc.sightings.relay,
            accept: doc.sightings.accept,
        },
        statistics: StatisticsRules {
            share: doc.statistics.share,
            relay: doc.statistics.relay,
            accept: doc.statistics.accept,
            epsilon_milli: doc.statistics.epsilon.0,
            min_count: doc.statistics.min_count,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
name = "agency-partner"
description = "what a police partner receives"

[egress]
tlp_ceiling = "AMBER+STRICT"
community = true
kinds = ["ipv4", "domain"]
tags_include = ["phishing"]
tags_exclude = ["internal"]
min_confidence = 60
origins = "any"
jurisdictions = ["DE", "FR"]
max_age_days = 30

[ingress]
kinds = ["url"]
min_confidence = 10
accept_relayed = true

[sightings]
send = true
relay = false
accept = true

[statistics]
share = true
epsilon = 0.5
min_count = 10
"#;

    #[test]
    fn parses_every_field() {
        let p = parse_policy(FULL).unwrap();
        assert_eq!(p.egress.tlp_ceiling, Tlp::AmberStrict);
        assert_eq!(
            p.egress.kinds,
            vec![IndicatorKind::Ipv4, IndicatorKind::Domain]
        );
        assert_eq!(p.egress.origins, Origins::Any);
        assert_eq!(p.egress.max_age_days, Some(30));
        assert!(p.ingress.accept_relayed);
        assert_eq!(p.ingress.kinds, vec![IndicatorKind::Url]);
        assert_eq!(
            p.sightings,
            SightingRules {
                send: true,
                relay: false,
                accept: true
            }
        );
        assert!(p.statistics.share && !p.statistics.relay && !p.statistics.accept);
        assert_eq!((p.statistics.epsilon(), p.statistics.min_count), (0.5, 10));
        // Absent, nothing flows.
        let bare = parse_policy("name = \"x\"\n[egress]\ntlp_ceiling = \"CLEAR\"\n").unwrap();
        assert_eq!(bare.sightings, SightingRules::default());
        assert_eq!(bare.statistics, StatisticsRules::default());
    }

    #[test]
    fn errors_give_line_and_field() {
        let cases = [
            (
                FULL.replace("\"AMBER+STRICT\"", "\"PURPLE\""),
                "line 6",
                "PURPLE",
            ),
            (
                FULL.replace("\"domain\"]", "\"domian\"]"),
                "line 8",
                "domian",
            ),
            (FULL.replace("\"FR\"", "\"XX\""), "line 13", "XX"),
            (
                FULL.replace("min_confidence = 60", "min_confidence = 160"),
                "line 11",
                "160",
            ),
            (
                FULL.replace("community = true", "comunity = true"),
                "line 7",
                "comunity",
            ),
            (
                FULL.replace("\"agency-partner\"", "\"Agency Partner\""),
                "line 2",
                "policy name",
            ),
            (
                FULL.replace("origins = \"any\"", "origins = \"all\""),
                "line 12",
                "all",
            ),
            (
                FULL.replace("relay = false", "realy = false"),
                "line 23",
                "realy",
            ),
            (
                FULL.replace("epsilon = 0.5", "epsilon = -1.0"),
                "line 28",
                "not an epsilon",
            ),
        ];
        for (text, line, needle) in cases {
            let e = parse_policy(&text).unwrap_err().to_string();
            assert!(
                e.contains(line) && e.contains(needle),
                "{line} {needle}: {e}"
            );
        }
        let e = parse_policy("name = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("egress"), "{e}");
    }
}
