//! The sharing decision: pure functions, no I/O, no clock (callers pass
//! `now`).
//!
//! [`egress`] decides whether an indicator may go to one partner. It is the
//! **only** way an indicator leaves this node: every exit (Subscribe backlog
//! and live tail today; relay, TAXII and export later) goes through
//! [`crate::exchange::release`], which calls it with the partner's policy as
//! it is at send time. [`ingress`] decides what we accept from a partner.
//!
//! TLP 2.0 is compiled into propagation: RED only to orgs named in the
//! signed recipient list and never relayed; AMBER+STRICT likewise; AMBER to
//! named recipients (or, with no names, to partners whose ceiling admits
//! AMBER), relayed only as the origin's marking allows; GREEN only to
//! partners flagged as community; CLEAR to anyone. A partner without a
//! policy receives nothing; an unknown or inconsistent marking is denied.

mod document;
mod rules;

pub use document::{PolicyError, parse_policy};
pub use rules::{
    EgressRules, IngressRules, Origins, PartnerPolicy, SightingRules, StatisticsRules,
};

use std::fmt;

use crate::model::{OrgId, tlp_name, validate_marking};
use crate::proto::v1::{Indicator, IndicatorKind, Marking, Tlp};

/// The outcome of a sharing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send / accept, under the named rule.
    Allow {
        /// Rule that allowed it.
        rule: &'static str,
    },
    /// Withhold / refuse.
    Deny {
        /// Rule that denied it.
        rule: &'static str,
        /// Explanation naming the label, org, field or limit.
        reason: String,
    },
}

impl Decision {
    /// Whether the decision allows.
    pub fn is_allow(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    /// The deciding rule.
    pub fn rule(&self) -> &'static str {
        match self {
            Decision::Allow { rule } | Decision::Deny { rule, .. } => rule,
        }
    }

    /// Why it denies ("" when it allows).
    pub fn reason(&self) -> &str {
        match self {
            Decision::Allow { .. } => "",
            Decision::Deny { reason, .. } => reason,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow { rule } => write!(f, "allow ({rule})"),
            Decision::Deny { rule, reason } => write!(f, "deny ({rule}): {reason}"),
        }
    }
}

fn deny(rule: &'static str, reason: impl Into<String>) -> Decision {
    Decision::Deny {
        rule,
        reason: reason.into(),
    }
}

/// Nothing goes to a partner without a bound policy, whatever the exit.
fn no_policy(to: &OrgId) -> Decision {
    deny(
        "no-policy",
        format!("no sharing policy is bound to {to}; nothing is sent to it"),
    )
}

fn label(tlp: i32) -> &'static str {
    tlp_name(tlp).unwrap_or("?")
}

/// What the origin's marking says of `ind` having passed `hops` relays:
/// `None` if allowed (no relay at all, or within what the origin allowed),
/// else the refusal. RED and AMBER+STRICT are never relayed; otherwise the
/// origin must allow forwarding and at least `hops` relay hops. Applied by
/// the sender ([`egress`]) and again by every receiver ([`ingress`]), which
/// never relies on the sender's honesty.
fn relay_refusal(ind: &Indicator, m: &Marking, tlp: Tlp, hops: u32) -> Option<Decision> {
    if hops == 0 {
        return None;
    }
    if matches!(tlp, Tlp::Red | Tlp::AmberStrict) {
        return Some(deny(
            "tlp-never-relayed",
            format!("TLP:{} is never relayed", label(m.tlp)),
        ));
    }
    if !m.may_forward || hops > m.hop_limit {
        return Some(deny(
            "hop-limit",
            format!(
                "origin {} allows {} relay hop(s); this would be hop {hops}",
                ind.origin_org,
                if m.may_forward { m.hop_limit } else { 0 }
            ),
        ));
    }
    None
}

/// Would this node send `ind` to partner `recipient`, governed by `policy`?
///
/// `hops` is how many relays the indicator has passed before reaching this
/// node: 0 when we are its origin, 1 when we received it from its origin.
pub fn egress(
    own: &OrgId,
    ind: &Indicator,
    hops: u32,
    recipient: &OrgId,
    policy: Option<&PartnerPolicy>,
    now_ms: i64,
) -> Decision {
    let Some(policy) = policy else {
        return no_policy(recipient);
    };
    let rules = &policy.egress;
    if let Err(e) = validate_marking(ind.marking.as_ref()) {
        return deny("marking-invalid", e.to_string());
    }
    let Some(m) = ind.marking.as_ref() else {
        return deny("marking-invalid", "marking is missing");
    };
    let Ok(tlp) = Tlp::try_from(m.tlp) else {
        return deny("marking-invalid", format!("unknown TLP value {}", m.tlp));
    };
    if recipient == own {
        return deny("recipient-is-self", "a node does not send to itself");
    }
    if rules.origins == Origins::Own && ind.origin_org != own.as_str() {
        return deny(
            "origin-not-own",
            format!(
                "policy {} sends only {own}'s own indicators; this one originates at {}",
                policy.name, ind.origin_org
            ),
        );
    }
    if let Some(refused) = relay_refusal(ind, m, tlp, hops) {
        return refused;
    }
    if m.tlp > rules.tlp_ceiling as i32 {
        return deny(
            "tlp-ceiling",
            format!(
                "TLP:{} is above the TLP:{} ceiling of policy {}",
                label(m.tlp),
                label(rules.tlp_ceiling as i32),
                policy.name
            ),
        );
    }
    let named = m.recipients.iter().any(|r| r == recipient.as_str());
    let allow_rule = match tlp {
        Tlp::Red if !named => {
            return deny(
                "red-not-named",
                format!("TLP:RED goes only to the named recipients; {recipient} is not named"),
            );
        }
        Tlp::AmberStrict if !named => {
            return deny(
                "amber-strict-not-named",
                format!(
                    "TLP:AMBER+STRICT goes only to the named recipients; {recipient} is not named"
                ),
            );
        }
        Tlp::Amber if !m.recipients.is_empty() && !named => {
            return deny(
                "amber-not-named",
                format!("TLP:AMBER is addressed to named recipients; {recipient} is not one"),
            );
        }
        Tlp::Green if !rules.community => {
            return deny(
                "green-not-community",
                format!(
                    "TLP:GREEN goes to community partners; policy {} does not flag {recipient} as community",
                    policy.name
                ),
            );
        }
        Tlp::Red => "tlp-red-named",
        Tlp::AmberStrict => "tlp-amber-strict-named",
        Tlp::Amber => "tlp-amber",
        Tlp::Green => "tlp-green-community",
        Tlp::Clear => "tlp-clear",
        Tlp::Unspecified => return deny("marking-invalid", "TLP is unset"),
    };
    if !rules.kinds.is_empty() && !rules.kinds.iter().any(|k| *k as i32 == ind.kind) {
        return deny(
            "kind-not-allowed",
            format!(
                "kind {} is not in the kinds of policy {}",
                crate::model::kind_name(ind.kind).unwrap_or("?"),
                policy.name
            ),
        );
    }
    if ind.confidence < rules.min_confidence {
        return deny(
            "confidence-below-minimum",
            format!(
                "confidence {} is below the minimum {} of policy {}",
                ind.confidence, rules.min_confidence, policy.name
            ),
        );
    }
    if let Some(t) = ind.tags.iter().find(|t| rules.tags_exclude.contains(t)) {
        return deny(
            "tag-excluded",
            format!("tag '{t}' is excluded by policy {}", policy.name),
        );
    }
    if !rules.tags_include.is_empty() && !ind.tags.iter().any(|t| rules.tags_include.contains(t)) {
        return deny(
            "tag-not-included",
            format!(
                "none of the tags is among those policy {} includes ({})",
                policy.name,
                rules.tags_include.join(", ")
            ),
        );
    }
    if !rules.jurisdictions.is_empty()
        && !ind
            .jurisdictions
            .iter()
            .any(|j| rules.jurisdictions.contains(j))
    {
        return deny(
            "jurisdiction-not-allowed",
            format!(
                "policy {} shares only indicators of jurisdictions {}",
                policy.name,
                rules.jurisdictions.join(", ")
            ),
        );
    }
    if let Some(days) = rules.max_age_days {
        let age_ms = now_ms.saturating_sub(ind.created_unix_ms);
        if age_ms > i64::from(days) * 86_400_000 {
            return deny(
                "too-old",
                format!(
                    "indicator is {} day(s) old; policy {} shares at most {days}",
                    age_ms / 86_400_000,
                    policy.name
                ),
            );
        }
    }
    Decision::Allow { rule: allow_rule }
}

/// A revocation goes to every partner that was ever sent the indicator,
/// even where the current policy would send it nothing new: a retraction is
/// never withheld from a past recipient. `previously_sent` says whether
/// `recipient` was sent an earlier version. `None`: the ordinary rules of
/// [`egress`] apply.
pub fn retraction(ind: &Indicator, previously_sent: bool) -> Option<Decision> {
    (ind.revoked && previously_sent).then_some(Decision::Allow {
        rule: "retraction-to-past-recipient",
    })
}

/// A revocation of an indicator we hold is accepted from any partner
/// whatever the ingress filters say (its signature already proved it comes
/// from the origin): filters decide what new data we take, not whether we
/// learn that data we hold was withdrawn. `None`: [`ingress`] applies.
pub fn accept_retraction(ind: &Indicator, held_earlier: bool) -> Option<Decision> {
    (ind.revoked && held_earlier).then_some(Decision::Allow {
        rule: "retraction-of-held-indicator",
    })
}

/// Would this node send a sighting by `sighter` to partner `to` (the
/// partner that delivered us the indicator: sightings only travel back
/// towards its origin)? Our own sightings need `[sightings] send`, those
/// we relay `[sightings] relay`, in `to`'s policy.
pub fn sighting_egress(
    own: &OrgId,
    sighter: &str,
    to: &OrgId,
    policy: Option<&PartnerPolicy>,
) -> Decision {
    let Some(p) = policy else {
        return no_policy(to);
    };
    if sighter == own.as_str() {
        if p.sightings.send {
            return Decision::Allow {
                rule: "sightings-send",
            };
        }
        return deny(
            "sightings-send-off",
            format!(
                "policy {} v{} for {to} does not send our sightings ([sightings] send = false)",
                p.name, p.version
            ),
        );
    }
    if p.sightings.relay {
        return Decision::Allow {
            rule: "sightings-relay",
        };
    }
    deny(
        "sightings-relay-off",
        format!(
            "policy {} v{} for {to} does not relay sightings of other orgs ({sighter}) ([sightings] relay = false)",
            p.name, p.version
        ),
    )
}

/// Do we accept sightings partner `from` reports (of indicators we sent
/// it)? Only where its policy says `[sightings] accept = true`.
pub fn sighting_ingress(from: &OrgId, policy: Option<&PartnerPolicy>) -> Decision {
    let accepts = policy.map(|p| p.sightings.accept);
    report_ingress(from, policy, accepts, "sightings")
}

/// Whether `policy` (bound to `from`) takes its reports of `section`
/// (`accepts`: its `[section] accept`).
fn report_ingress(
    from: &OrgId,
    policy: Option<&PartnerPolicy>,
    accepts: Option<bool>,
    section: &'static str,
) -> Decision {
    let (allow, off) = match section {
        "sightings" => ("sightings-accept", "sightings-accept-off"),
        _ => ("statistics-accept", "statistics-accept-off"),
    };
    match (policy, accepts) {
        (Some(_), Some(true)) => Decision::Allow { rule: allow },
        (Some(p), _) => deny(
            off,
            format!(
                "policy {} v{} for {from} accepts no {section} from it ([{section}] accept = false)",
                p.name, p.version
            ),
        ),
        (None, _) => deny(
            "no-policy",
            format!("no sharing policy is bound to {from}; its {section} are not accepted"),
        ),
    }
}

/// Would this node send a statistics report of `reporter` (ours, or one we
/// hold, after `hops` relays already) to partner `to`? Ours need
/// `[statistics] share`, others' `relay` and a hop limit not yet used up;
/// never back to an org the report passed (`path`) or to its reporter.
pub fn statistics_egress(
    own: &OrgId,
    reporter: &str,
    path: &[String],
    hop_limit: u32,
    to: &OrgId,
    policy: Option<&PartnerPolicy>,
) -> Decision {
    let Some(p) = policy else {
        return no_policy(to);
    };
    if reporter == own.as_str() {
        if p.statistics.share {
            return Decision::Allow {
                rule: "statistics-share",
            };
        }
        return deny(
            "statistics-share-off",
            format!(
                "policy {} v{} for {to} shares no statistics ([statistics] share = false)",
                p.name, p.version
            ),
        );
    }
    if !p.statistics.relay {
        return deny(
            "statistics-relay-off",
            format!(
                "policy {} v{} for {to} relays no statistics of other orgs ({reporter}) ([statistics] relay = false)",
                p.name, p.version
            ),
        );
    }
    if reporter == to.as_str() || path.iter().any(|o| o == to.as_str()) {
        return deny("echo", format!("{reporter}'s report already passed {to}"));
    }
    // The path holds the reporter and each relay before us: we would be
    // relay hop `path.len()`.
    let hops = path.len() as u32;
    if hops > hop_limit {
        return deny(
            "hop-limit",
            format!(
                "{reporter} allows {hop_limit} relay hop(s) for its statistics; this would be hop {hops}"
            ),
        );
    }
    Decision::Allow {
        rule: "statistics-relay",
    }
}

/// Do we accept statistics reports from partner `from`? Only where its
/// policy says `[statistics] accept = true`.
pub fn statistics_ingress(from: &OrgId, policy: Option<&PartnerPolicy>) -> Decision {
    let accepts = policy.map(|p| p.statistics.accept);
    report_ingress(from, policy, accepts, "statistics")
}

/// Do we accept `ind`, received from partner `upstream` after `relay_hops`
/// relays (the orgs between its origin and us: 0 when `upstream` is the
/// origin, and at least 1 otherwise, whatever path the sender claims)?
/// The origin's marking is enforced here too, whatever the sender did.
/// Without a bound policy the default ingress rules apply (all kinds, any
/// confidence, no relayed indicators).
pub fn ingress(
    own: &OrgId,
    ind: &Indicator,
    upstream: &OrgId,
    relay_hops: u32,
    policy: Option<&PartnerPolicy>,
) -> Decision {
    let default = IngressRules::default();
    let rules = policy.map(|p| &p.ingress).unwrap_or(&default);
    if ind.origin_org == own.as_str() {
        return deny(
            "own-origin",
            "indicator originates at this node; its own copy is authoritative",
        );
    }
    if ind.origin_org != upstream.as_str() && !rules.accept_relayed {
        return deny(
            "relayed-not-accepted",
            format!(
                "{upstream} sent an indicator of {}; relayed indicators are not accepted from it",
                ind.origin_org
            ),
        );
    }
    let Some(m) = ind.marking.as_ref() else {
        return deny("marking-invalid", "marking is missing");
    };
    if let Err(e) = validate_marking(Some(m)) {
        return deny("marking-invalid", e.to_string());
    }
    let Ok(tlp) = Tlp::try_from(m.tlp) else {
        return deny("marking-invalid", format!("unknown TLP value {}", m.tlp));
    };
    // A sender that is not the origin is a relay hop however short a path
    // it claims.
    let relay_hops = if ind.origin_org == upstream.as_str() {
        relay_hops
    } else {
        relay_hops.max(1)
    };
    if let Some(refused) = relay_refusal(ind, m, tlp, relay_hops) {
        return refused;
    }
    if matches!(tlp, Tlp::Red | Tlp::AmberStrict) && !m.recipients.iter().any(|r| r == own.as_str())
    {
        return deny(
            "not-a-named-recipient",
            format!(
                "TLP:{} indicator does not name {own} as a recipient",
                label(m.tlp)
            ),
        );
    }
    if !rules.kinds.is_empty() && !rules.kinds.iter().any(|k| *k as i32 == ind.kind) {
        return deny(
            "kind-not-accepted",
            format!(
                "kind {} is not accepted from {upstream}",
                crate::model::kind_name(ind.kind).unwrap_or("?")
            ),
        );
    }
    if ind.confidence < rules.min_confidence {
        return deny(
            "confidence-below-minimum",
            format!(
                "confidence {} is below the minimum {} accepted from {upstream}",
                ind.confidence, rules.min_confidence
            ),
        );
    }
    Decision::Allow {
        rule: "from-partner",
    }
}

/// Every indicator kind, for policies that name none (= all).
pub const ALL_KINDS: [IndicatorKind; 9] = [
    IndicatorKind::Ipv4,
    IndicatorKind::Ipv6,
    IndicatorKind::Cidr,
    IndicatorKind::Domain,
    IndicatorKind::Url,
    IndicatorKind::Email,
    IndicatorKind::Sha256,
    IndicatorKind::Sha1,
    IndicatorKind::Md5,
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::Marking;

    fn org(s: &str) -> OrgId {
        OrgId::parse(s).unwrap()
    }

    fn ind(origin: &str, tlp: Tlp, recipients: &[&str]) -> Indicator {
        Indicator {
            origin_org: origin.into(),
            marking: Some(Marking {
                tlp: tlp as i32,
                recipients: recipients.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            kind: IndicatorKind::Domain as i32,
            confidence: 50,
            ..Default::default()
        }
    }

    fn open(ceiling: Tlp, community: bool) -> PartnerPolicy {
        PartnerPolicy {
            name: "t".into(),
            version: 1,
            egress: EgressRules {
                tlp_ceiling: ceiling,
                community,
                ..EgressRules::default()
            },
            ingress: IngressRules::default(),
            sightings: Default::default(),
            statistics: Default::default(),
        }
    }

    #[test]
    fn no_policy_means_nothing_is_sent() {
        let (a, b) = (org("a.example"), org("b.example"));
        let d = egress(&a, &ind("a.example", Tlp::Clear, &[]), 0, &b, None, 0);
        assert_eq!(d.rule(), "no-policy");
        let org = OrgId::parse("b.example").unwrap();
        assert_eq!(
            sighting_egress(&org, "b.example", &org, None).rule(),
            "no-policy"
        );
        assert_eq!(sighting_ingress(&org, None).rule(), "no-policy");
    }

    #[test]
    fn tlp_rules_in_brief() {
        let (a, b) = (org("a.example"), org("b.example"));
        let p = open(Tlp::Red, true);
        let e = |i: &Indicator, hops| egress(&a, i, hops, &b, Some(&p), 0);
        assert!(e(&ind("a.example", Tlp::Red, &["b.example"]), 0).is_allow());
        assert_eq!(
            e(&ind("a.example", Tlp::Red, &["c.example"]), 0).rule(),
            "red-not-named"
        );
        assert_eq!(
            e(&ind("a.example", Tlp::Red, &[]), 0).rule(),
            "marking-invalid"
        );
        assert_eq!(
            e(&ind("a.example", Tlp::AmberStrict, &["c.example"]), 0).rule(),
            "amber-strict-not-named"
        );
        assert!(e(&ind("a.example", Tlp::Amber, &[]), 0).is_allow());
        assert_eq!(
            e(&ind("a.example", Tlp::Amber, &["c.example"]), 0).rule(),
            "amber-not-named"
        );
        let with =
            |p: &PartnerPolicy, tlp| egress(&a, &ind("a.example", tlp, &[]), 0, &b, Some(p), 0);
        let closed = open(Tlp::Red, false);
        assert_eq!(with(&closed, Tlp::Green).rule(), "green-not-community");
        assert!(with(&closed, Tlp::Clear).is_allow());
        let green = open(Tlp::Green, true);
        assert_eq!(with(&green, Tlp::Amber).rule(), "tlp-ceiling");
    }

    #[test]
    fn ingress_requires_origin_upstream_and_named_recipient() {
        let (a, b) = (org("a.example"), org("b.example"));
        assert!(ingress(&b, &ind("a.example", Tlp::Green, &[]), &a, 0, None).is_allow());
        assert!(ingress(&b, &ind("a.example", Tlp::Red, &["b.example"]), &a, 0, None).is_allow());
        assert_eq!(
            ingress(&b, &ind("a.example", Tlp::Red, &["c.example"]), &a, 0, None).rule(),
            "not-a-named-recipient"
        );
        assert_eq!(
            ingress(&b, &ind("c.example", Tlp::Green, &[]), &a, 0, None).rule(),
            "relayed-not-accepted"
        );
        assert_eq!(
            ingress(&b, &ind("b.example", Tlp::Green, &[]), &a, 0, None).rule(),
            "own-origin"
        );
        let mut p = open(Tlp::Red, true);
        p.ingress.kinds = vec![IndicatorKind::Ipv4];
        assert_eq!(
            ingress(&b, &ind("a.example", Tlp::Green, &[]), &a, 0, Some(&p)).rule(),
            "kind-not-accepted"
        );
    }

    #[test]
    fn ingress_enforces_the_origins_marking_whatever_path_the_sender_claims() {
        let (a, b, c) = (org("a.example"), org("b.example"), org("c.example"));
        let mut p = open(Tlp::Red, true);
        p.ingress.accept_relayed = true;
        let with = |tlp, may_forward, hop_limit| {
            let named: &[&str] = if tlp == Tlp::Red { &["b.example"] } else { &[] };
            let mut i = ind("a.example", tlp, named);
            let m = i.marking.as_mut().unwrap();
            m.may_forward = may_forward;
            m.hop_limit = hop_limit;
            i
        };
        // From the origin itself: no relay, the marking's relay rules do not apply.
        assert!(ingress(&b, &with(Tlp::Clear, false, 0), &a, 0, Some(&p)).is_allow());
        // Through C: at least one hop, even if the claimed path says none.
        for claimed in [0, 1] {
            assert_eq!(
                ingress(&b, &with(Tlp::Clear, false, 0), &c, claimed, Some(&p)).rule(),
                "hop-limit"
            );
            assert_eq!(
                ingress(&b, &with(Tlp::Red, false, 0), &c, claimed, Some(&p)).rule(),
                "tlp-never-relayed"
            );
            assert!(ingress(&b, &with(Tlp::Clear, true, 1), &c, claimed, Some(&p)).is_allow());
        }
        assert_eq!(
            ingress(&b, &with(Tlp::Clear, true, 1), &c, 2, Some(&p)).rule(),
            "hop-limit"
        );
    }

    #[test]
    fn sightings_flow_only_where_a_rule_says_so() {
        let own = OrgId::parse("c.example").unwrap();
        let to = OrgId::parse("b.example").unwrap();
        let mut p = open(Tlp::Clear, false);
        assert_eq!(
            sighting_egress(&own, "c.example", &to, Some(&p)).rule(),
            "sightings-send-off"
        );
        assert_eq!(
            sighting_egress(&own, "e.example", &to, Some(&p)).rule(),
            "sightings-relay-off"
        );
        assert_eq!(
            sighting_ingress(&to, Some(&p)).rule(),
            "sightings-accept-off"
        );
        p.sightings.send = true;
        assert!(sighting_egress(&own, "c.example", &to, Some(&p)).is_allow());
        assert!(!sighting_egress(&own, "e.example", &to, Some(&p)).is_allow());
        p.sightings.relay = true;
        p.sightings.send = false;
        assert_eq!(
            sighting_egress(&own, "e.example", &to, Some(&p)).rule(),
            "sightings-relay"
        );
        assert!(!sighting_egress(&own, "c.example", &to, Some(&p)).is_allow());
        p.sightings.accept = true;
        assert_eq!(sighting_ingress(&to, Some(&p)).rule(), "sightings-accept");
        let why = sighting_egress(&own, "c.example", &to, Some(&p))
            .reason()
            .to_string();
        assert!(
            why.contains("[sightings] send = false") && why.contains("b.example"),
            "{why}"
        );
    }

    #[test]
    fn statistics_flow_only_where_a_rule_says_so_within_hops_and_never_back() {
        let own = OrgId::parse("c.example").unwrap();
        let to = OrgId::parse("b.example").unwrap();
        let mut p = open(Tlp::Clear, false);
        assert_eq!(
            statistics_egress(&own, "c.example", &[], 2, &to, Some(&p)).rule(),
            "statistics-share-off"
        );
        assert_eq!(
            statistics_ingress(&to, Some(&p)).rule(),
            "statistics-accept-off"
        );
        p.statistics.share = true;
        assert_eq!(
            statistics_egress(&own, "c.example", &[], 2, &to, Some(&p)).rule(),
            "statistics-share"
        );
        let path = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            statistics_egress(&own, "e.example", &path(&["e.example"]), 2, &to, Some(&p)).rule(),
            "statistics-relay-off"
        );
        p.statistics.relay = true;
        assert_eq!(
            statistics_egress(&own, "e.example", &path(&["e.example"]), 2, &to, Some(&p)).rule(),
            "statistics-relay"
        );
        assert_eq!(
            statistics_egress(
                &own,
                "e.example",
                &path(&["e.example", "b.example"]),
                2,
                &to,
                Some(&p)
            )
            .rule(),
            "echo"
        );
        assert_eq!(
            statistics_egress(&own, "b.example", &path(&["b.example"]), 2, &to, Some(&p)).rule(),
            "echo"
        );
        assert_eq!(
            statistics_egress(
                &own,
                "e.example",
                &path(&["e.example", "d.example", "f.example"]),
                2,
                &to,
                Some(&p)
            )
            .rule(),
            "hop-limit"
        );
        p.statistics.accept = true;
        assert!(statistics_ingress(&to, Some(&p)).is_allow());
    }
}
