//! Per-partner policy rules: plain data, built from validated documents.

use crate::proto::v1::{IndicatorKind, Tlp};

/// Which origins a partner may receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origins {
    /// Only indicators this org published.
    #[default]
    Own,
    /// Also indicators received from others (relay), as their markings allow.
    Any,
}

/// What may go to the partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRules {
    /// Highest TLP label sent (CLEAR < GREEN < AMBER < AMBER+STRICT < RED).
    pub tlp_ceiling: Tlp,
    /// Whether the partner belongs to our community (receives TLP:GREEN).
    pub community: bool,
    /// Kinds sent; empty = all.
    pub kinds: Vec<IndicatorKind>,
    /// Indicators need at least one of these tags; empty = no requirement.
    pub tags_include: Vec<String>,
    /// Indicators with any of these tags are withheld.
    pub tags_exclude: Vec<String>,
    /// Minimum confidence, 0-100.
    pub min_confidence: u32,
    /// Own indicators only, or relayed ones too.
    pub origins: Origins,
    /// Indicators need one of these ISO 3166-1 alpha-2 jurisdictions; empty = any.
    pub jurisdictions: Vec<String>,
    /// Indicators created longer ago than this are withheld; `None` = no limit.
    pub max_age_days: Option<u32>,
}

impl Default for EgressRules {
    /// The most restrictive rules: CLEAR only, own indicators, no community.
    fn default() -> Self {
        Self {
            tlp_ceiling: Tlp::Clear,
            community: false,
            kinds: Vec::new(),
            tags_include: Vec::new(),
            tags_exclude: Vec::new(),
            min_confidence: 0,
            origins: Origins::Own,
            jurisdictions: Vec::new(),
            max_age_days: None,
        }
    }
}

/// What we accept from the partner.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IngressRules {
    /// Kinds accepted; empty = all.
    pub kinds: Vec<IndicatorKind>,
    /// Minimum confidence accepted.
    pub min_confidence: u32,
    /// Whether indicators the partner relays from other origins are accepted.
    pub accept_relayed: bool,
}

/// Sightings to and from the partner (the `[sightings]` section). Nothing
/// flows unless a rule says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SightingRules {
    /// Our own sightings of indicators the partner delivered to us go back
    /// to it.
    pub send: bool,
    /// Sightings other orgs reported to us go on to the partner when it is
    /// the one that delivered us the indicator (towards the origin).
    pub relay: bool,
    /// Sightings the partner reports, of indicators we sent it, are
    /// accepted.
    pub accept: bool,
}

/// Statistics reports to and from the partner (the `[statistics]`
/// section). Nothing flows unless a rule says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatisticsRules {
    /// Our own reports go to the partner.
    pub share: bool,
    /// Reports of other orgs we hold go on to the partner (within their
    /// hop limit, never back to an org they passed).
    pub relay: bool,
    /// Reports the partner sends (its own and relayed) are accepted.
    pub accept: bool,
    /// Laplace noise in our reports to the partner: epsilon in thousandths
    /// (0 = exact counts).
    pub epsilon_milli: u32,
    /// Cells of our reports to the partner below this count are left out.
    pub min_count: u64,
}

impl StatisticsRules {
    /// The default minimum count: cells of fewer than 5 are left out.
    pub const DEFAULT_MIN_COUNT: u64 = 5;

    /// Epsilon as a number (0 = no noise).
    pub fn epsilon(&self) -> f64 {
        f64::from(self.epsilon_milli) / 1000.0
    }
}

impl Default for StatisticsRules {
    /// Nothing shared, relayed or accepted; exact counts, small cells left out.
    fn default() -> Self {
        Self {
            share: false,
            relay: false,
            accept: false,
            epsilon_milli: 0,
            min_count: Self::DEFAULT_MIN_COUNT,
        }
    }
}

/// A named, versioned policy bound to a partner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerPolicy {
    /// Policy name.
    pub name: String,
    /// Version (1, 2, ... per name), assigned when applied.
    pub version: u64,
    /// Egress rules.
    pub egress: EgressRules,
    /// Ingress rules.
    pub ingress: IngressRules,
    /// Sightings rules.
    pub sightings: SightingRules,
    /// Statistics rules.
    pub statistics: StatisticsRules,
}
