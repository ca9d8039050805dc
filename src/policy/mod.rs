//! The sharing decision: one pure function per direction, no I/O.
//!
//! [`egress`] is the **only** way an indicator leaves this node: every exit
//! (Subscribe backlog and live tail today; relay, TAXII and export later)
//! goes through [`crate::exchange::release`], which calls it. [`ingress`]
//! decides what we accept from a partner.
//!
//! Until per-partner sharing policies exist, egress is deliberately narrow:
//! only our own TLP:CLEAR and TLP:GREEN indicators leave, to any registered
//! partner; everything else is denied. Deny is the default for anything not
//! positively allowed.

use std::fmt;

use crate::model::{OrgId, tlp_name, validate_marking};
use crate::proto::v1::{Indicator, Tlp};

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
        /// Explanation naming the label, org or field.
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

/// Would this node send `ind` to partner `recipient`?
pub fn egress(own: &OrgId, ind: &Indicator, recipient: &OrgId) -> Decision {
    if let Err(e) = validate_marking(ind.marking.as_ref()) {
        return deny("marking-invalid", e.to_string());
    }
    if recipient == own {
        return deny("recipient-is-self", "a node does not send to itself");
    }
    if ind.origin_org != own.as_str() {
        return deny(
            "relay-disabled",
            format!(
                "indicator originates at {}; relaying is not enabled on this node",
                ind.origin_org
            ),
        );
    }
    let tlp = ind.marking.as_ref().map(|m| m.tlp).unwrap_or_default();
    match Tlp::try_from(tlp) {
        Ok(Tlp::Clear) => Decision::Allow { rule: "tlp-clear" },
        Ok(Tlp::Green) => Decision::Allow { rule: "tlp-green" },
        Ok(Tlp::Amber | Tlp::AmberStrict | Tlp::Red) => deny(
            "tlp-needs-policy",
            format!(
                "TLP:{} is only shared under a per-partner sharing policy, and {recipient} has none",
                tlp_name(tlp).unwrap_or("?")
            ),
        ),
        _ => deny("marking-invalid", format!("unknown TLP value {tlp}")),
    }
}

/// Do we accept `ind`, received from partner `upstream`?
pub fn ingress(own: &OrgId, ind: &Indicator, upstream: &OrgId) -> Decision {
    if ind.origin_org == own.as_str() {
        return deny(
            "own-origin",
            "indicator originates at this node; its own copy is authoritative",
        );
    }
    if ind.origin_org != upstream.as_str() {
        return deny(
            "relayed-not-accepted",
            format!(
                "{upstream} sent an indicator of {}; relayed indicators are not accepted yet",
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
    match Tlp::try_from(m.tlp) {
        Ok(Tlp::Red | Tlp::AmberStrict) if !m.recipients.iter().any(|r| r == own.as_str()) => deny(
            "not-a-named-recipient",
            format!(
                "TLP:{} indicator does not name {own} as a recipient",
                tlp_name(m.tlp).unwrap_or("?")
            ),
        ),
        _ => Decision::Allow {
            rule: "from-partner",
        },
    }
}

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
            ..Default::default()
        }
    }

    #[test]
    fn egress_sends_only_own_clear_and_green() {
        let (a, b) = (org("a.example"), org("b.example"));
        assert!(egress(&a, &ind("a.example", Tlp::Clear, &[]), &b).is_allow());
        assert!(egress(&a, &ind("a.example", Tlp::Green, &[]), &b).is_allow());
        for (tlp, r) in [
            (Tlp::Amber, vec![]),
            (Tlp::Amber, vec!["b.example"]),
            (Tlp::AmberStrict, vec!["b.example"]),
            (Tlp::Red, vec!["b.example"]),
        ] {
            let d = egress(&a, &ind("a.example", tlp, &r), &b);
            assert_eq!(d.rule(), "tlp-needs-policy", "{tlp:?}");
        }
        assert_eq!(
            egress(&a, &ind("c.example", Tlp::Clear, &[]), &b).rule(),
            "relay-disabled"
        );
        // Inconsistent or unknown markings are denied, never guessed at.
        assert_eq!(
            egress(&a, &ind("a.example", Tlp::Red, &[]), &b).rule(),
            "marking-invalid"
        );
        let mut unknown = ind("a.example", Tlp::Clear, &[]);
        unknown.marking.as_mut().unwrap().tlp = 9;
        assert_eq!(egress(&a, &unknown, &b).rule(), "marking-invalid");
        let mut none = ind("a.example", Tlp::Clear, &[]);
        none.marking = None;
        assert_eq!(egress(&a, &none, &b).rule(), "marking-invalid");
    }

    #[test]
    fn ingress_requires_origin_upstream_and_named_recipient() {
        let (a, b) = (org("a.example"), org("b.example"));
        assert!(ingress(&b, &ind("a.example", Tlp::Green, &[]), &a).is_allow());
        assert!(ingress(&b, &ind("a.example", Tlp::Red, &["b.example"]), &a).is_allow());
        assert_eq!(
            ingress(&b, &ind("a.example", Tlp::Red, &["c.example"]), &a).rule(),
            "not-a-named-recipient"
        );
        assert_eq!(
            ingress(&b, &ind("c.example", Tlp::Green, &[]), &a).rule(),
            "relayed-not-accepted"
        );
        assert_eq!(
            ingress(&b, &ind("b.example", Tlp::Green, &[]), &a).rule(),
            "own-origin"
        );
    }
}
