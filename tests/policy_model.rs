//! A reference model of the TLP and sharing-policy rules, written apart from
//! the engine as a list of conditions an allowed send must meet. The engine
//! must allow exactly when the model finds no violated condition, and when it
//! denies, the rule it names must be one the model finds violated.

use std::collections::BTreeSet;

use proptest::prelude::*;
use threatmesh::model::OrgId;
use threatmesh::policy::{EgressRules, IngressRules, Origins, PartnerPolicy, egress};
use threatmesh::proto::v1::{Indicator, IndicatorKind, Marking, Tlp};

const NOW: i64 = 1_800_000_000_000;
const DAY: i64 = 86_400_000;
const OWN: &str = "a.example";

fn is_org_id(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && s.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// The model: every condition an allowed send must meet, as violations.
fn violations(
    ind: &Indicator,
    hops: u32,
    recipient: &str,
    policy: Option<&PartnerPolicy>,
) -> BTreeSet<&'static str> {
    let mut v = BTreeSet::new();
    let Some(p) = policy else {
        v.insert("no-policy");
        return v;
    };
    // Marking well-formed (TLP 2.0 plus our consistency rules).
    let Some(m) = &ind.marking else {
        v.insert("marking-invalid");
        return v;
    };
    let (red, strict, amber, green, clear) =
        (m.tlp == 5, m.tlp == 4, m.tlp == 3, m.tlp == 2, m.tlp == 1);
    let names_required = red || strict;
    let marking_ok = (1..=5).contains(&m.tlp)
        && m.recipients.len() <= 64
        && m.recipients.iter().all(|r| is_org_id(r))
        && m.recipients.iter().collect::<BTreeSet<_>>().len() == m.recipients.len()
        && !(names_required && m.recipients.is_empty())
        && !(names_required && (m.may_forward || m.hop_limit > 0))
        && !((clear || green) && !m.recipients.is_empty())
        && (m.hop_limit == 0 || m.may_forward)
        && m.hop_limit <= 8;
    if !marking_ok {
        v.insert("marking-invalid");
        return v;
    }
    let e = &p.egress;
    let named = m.recipients.iter().any(|r| r == recipient);
    if recipient == OWN {
        v.insert("recipient-is-self");
    }
    if e.origins == Origins::Own && ind.origin_org != OWN {
        v.insert("origin-not-own");
    }
    if hops > 0 && (red || strict) {
        v.insert("tlp-never-relayed");
    }
    if hops > 0 && !(m.may_forward && hops <= m.hop_limit) {
        v.insert("hop-limit");
    }
    if m.tlp > e.tlp_ceiling as i32 {
        v.insert("tlp-ceiling");
    }
    if red && !named {
        v.insert("red-not-named");
    }
    if strict && !named {
        v.insert("amber-strict-not-named");
    }
    if amber && !m.recipients.is_empty() && !named {
        v.insert("amber-not-named");
    }
    if green && !e.community {
        v.insert("green-not-community");
    }
    if !e.kinds.is_empty() && !e.kinds.iter().any(|k| *k as i32 == ind.kind) {
        v.insert("kind-not-allowed");
    }
    if ind.confidence < e.min_confidence {
        v.insert("confidence-below-minimum");
    }
    if ind.tags.iter().any(|t| e.tags_exclude.contains(t)) {
        v.insert("tag-excluded");
    }
    if !e.tags_include.is_empty() && !ind.tags.iter().any(|t| e.tags_include.contains(t)) {
        v.insert("tag-not-included");
    }
    if !e.jurisdictions.is_empty()
        && !ind
            .jurisdictions
            .iter()
            .any(|j| e.jurisdictions.contains(j))
    {
        v.insert("jurisdiction-not-allowed");
    }
    if let Some(days) = e.max_age_days
        && NOW - ind.created_unix_ms > i64::from(days) * DAY
    {
        v.insert("too-old");
    }
    v
}

/// Engine and model agree, and the stated invariants hold.
fn check(ind: &Indicator, hops: u32, recipient: &str, policy: Option<&PartnerPolicy>) {
    let own = OrgId::parse(OWN).unwrap();
    let to = OrgId::parse(recipient).unwrap();
    let d = egress(&own, ind, hops, &to, policy, NOW);
    let v = violations(ind, hops, recipient, policy);
    assert_eq!(
        d.is_allow(),
        v.is_empty(),
        "engine {d} vs model {v:?}\nindicator {ind:?}\nhops {hops} to {recipient} policy {policy:?}"
    );
    if !d.is_allow() {
        assert!(
            v.contains(d.rule()),
            "engine denied by {} but the model finds {v:?}\n{ind:?}",
            d.rule()
        );
    }
    // Invariants, stated directly.
    let m = ind.marking.as_ref();
    let tlp = m.map(|m| m.tlp).unwrap_or(0);
    let named = m.is_some_and(|m| m.recipients.iter().any(|r| r == recipient));
    if tlp == Tlp::Red as i32 && !named {
        assert!(!d.is_allow(), "RED to a partner not named");
    }
    if tlp == Tlp::AmberStrict as i32 && (hops > 0 || !named) {
        assert!(
            !d.is_allow(),
            "AMBER+STRICT beyond the named first recipient"
        );
    }
    if (tlp == Tlp::Red as i32 || tlp == Tlp::AmberStrict as i32)
        && m.is_some_and(|m| m.recipients.is_empty())
    {
        assert!(!d.is_allow(), "empty recipient list must deny");
    }
    if !(1..=5).contains(&tlp) {
        assert!(!d.is_allow(), "unknown marking must deny");
    }
}

fn base_indicator() -> Indicator {
    Indicator {
        origin_org: OWN.into(),
        id: "0b0e7c32-8a43-4c57-9a4e-3f5a2c6f1d10".into(),
        version: 1,
        created_unix_ms: NOW - DAY,
        modified_unix_ms: NOW - DAY,
        kind: IndicatorKind::Domain as i32,
        value: "evil.example".into(),
        confidence: 70,
        tags: vec!["phishing".into()],
        jurisdictions: vec!["DE".into()],
        ..Default::default()
    }
}

fn policy(ceiling: Tlp, community: bool) -> PartnerPolicy {
    PartnerPolicy {
        name: "p".into(),
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

/// Adjusts a policy and an indicator to exercise one filter.
type Filter = fn(&mut PartnerPolicy, &mut Indicator);

/// Each policy filter, once passing and once failing for `base_indicator`.
fn filters() -> Vec<(&'static str, Filter)> {
    vec![
        ("none", |_, _| {}),
        ("kinds pass", |p, _| {
            p.egress.kinds = vec![IndicatorKind::Domain]
        }),
        ("kinds fail", |p, _| {
            p.egress.kinds = vec![IndicatorKind::Ipv4]
        }),
        ("confidence pass", |p, _| p.egress.min_confidence = 70),
        ("confidence fail", |p, _| p.egress.min_confidence = 71),
        ("include pass", |p, _| {
            p.egress.tags_include = vec!["phishing".into()]
        }),
        ("include fail", |p, _| {
            p.egress.tags_include = vec!["c2".into()]
        }),
        ("exclude hit", |p, _| {
            p.egress.tags_exclude = vec!["phishing".into()]
        }),
        ("exclude miss", |p, _| {
            p.egress.tags_exclude = vec!["c2".into()]
        }),
        ("jurisdiction pass", |p, _| {
            p.egress.jurisdictions = vec!["DE".into()]
        }),
        ("jurisdiction fail", |p, _| {
            p.egress.jurisdictions = vec!["FR".into()]
        }),
        ("age pass", |p, _| p.egress.max_age_days = Some(1)),
        ("age fail", |p, i| {
            p.egress.max_age_days = Some(1);
            i.created_unix_ms = NOW - 2 * DAY - 1;
        }),
        ("relayed origin, own only", |_, i| {
            i.origin_org = "c.example".into()
        }),
        ("relayed origin, any", |p, i| {
            p.egress.origins = Origins::Any;
            i.origin_org = "c.example".into();
        }),
    ]
}

#[test]
fn exhaustive_table_agrees_with_the_model() {
    let tlps = [0, 1, 2, 3, 4, 5, 9];
    let ceilings = [
        Tlp::Clear,
        Tlp::Green,
        Tlp::Amber,
        Tlp::AmberStrict,
        Tlp::Red,
    ];
    let recipient_lists: [&[&str]; 3] = [&[], &["b.example"], &["c.example"]];
    let forwarding = [(false, 0), (true, 1), (true, 2)];
    let mut cases = 0u64;
    let mut allowed = 0u64;
    for tlp in tlps {
        for recipients in recipient_lists {
            for (may_forward, hop_limit) in forwarding {
                for hops in [0, 1, 2] {
                    for community in [false, true] {
                        for ceiling in ceilings {
                            for (_, apply) in filters() {
                                let mut ind = base_indicator();
                                ind.marking = Some(Marking {
                                    tlp,
                                    recipients: recipients.iter().map(|s| s.to_string()).collect(),
                                    may_forward,
                                    hop_limit,
                                });
                                let mut p = policy(ceiling, community);
                                apply(&mut p, &mut ind);
                                check(&ind, hops, "b.example", Some(&p));
                                cases += 1;
                                let own = OrgId::parse(OWN).unwrap();
                                let to = OrgId::parse("b.example").unwrap();
                                if egress(&own, &ind, hops, &to, Some(&p), NOW).is_allow() {
                                    allowed += 1;
                                }
                            }
                        }
                        // And the same without any policy: always denied.
                        let mut ind = base_indicator();
                        ind.marking = Some(Marking {
                            tlp,
                            recipients: recipients.iter().map(|s| s.to_string()).collect(),
                            may_forward,
                            hop_limit,
                        });
                        check(&ind, hops, "b.example", None);
                        cases += 1;
                    }
                }
            }
        }
    }
    // A missing marking.
    let mut ind = base_indicator();
    ind.marking = None;
    check(&ind, 0, "b.example", Some(&policy(Tlp::Red, true)));
    assert!(cases > 20_000, "{cases} cases");
    // The table exercises both outcomes substantially.
    assert!(
        allowed > 1_000 && allowed < cases / 2,
        "{allowed} of {cases} allowed"
    );
}

fn arb_org() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "a.example".to_string(),
        "b.example".to_string(),
        "c.example".to_string(),
        "d.example".to_string(),
        "B.example".to_string(),
        "nodot".to_string(),
    ])
}

fn arb_indicator() -> impl Strategy<Value = Indicator> {
    (
        prop::sample::select(vec!["a.example", "b.example", "c.example"]),
        prop::option::weighted(
            0.97,
            (
                -1i32..8,
                prop::collection::vec(arb_org(), 0..4),
                any::<bool>(),
                0u32..11,
            ),
        ),
        0i32..11,
        0u32..121,
        prop::sample::subsequence(vec!["phishing", "c2", "internal", "botnet"], 0..4),
        prop::sample::subsequence(vec!["DE", "FR", "NL", "US"], 0..3),
        0i64..(120 * DAY),
    )
        .prop_map(
            |(origin, marking, kind, confidence, tags, jurisdictions, age)| Indicator {
                origin_org: origin.to_string(),
                marking: marking.map(|(tlp, recipients, may_forward, hop_limit)| Marking {
                    tlp,
                    recipients,
                    may_forward,
                    hop_limit,
                }),
                kind,
                confidence,
                tags: tags.into_iter().map(String::from).collect(),
                jurisdictions: jurisdictions.into_iter().map(String::from).collect(),
                created_unix_ms: NOW - age,
                modified_unix_ms: NOW - age,
                ..base_indicator()
            },
        )
}

fn arb_policy() -> impl Strategy<Value = Option<PartnerPolicy>> {
    let kinds = prop::sample::subsequence(
        vec![
            IndicatorKind::Ipv4,
            IndicatorKind::Domain,
            IndicatorKind::Url,
            IndicatorKind::Sha256,
        ],
        0..3,
    );
    prop::option::weighted(
        0.95,
        (
            prop::sample::select(vec![
                Tlp::Clear,
                Tlp::Green,
                Tlp::Amber,
                Tlp::AmberStrict,
                Tlp::Red,
            ]),
            any::<bool>(),
            kinds,
            prop::sample::subsequence(vec!["phishing", "c2"], 0..2),
            prop::sample::subsequence(vec!["internal", "botnet"], 0..2),
            0u32..101,
            any::<bool>(),
            prop::sample::subsequence(vec!["DE", "FR"], 0..2),
            prop::option::of(0u32..100),
        )
            .prop_map(
                |(ceiling, community, kinds, include, exclude, min, any_origin, juris, age)| {
                    PartnerPolicy {
                        name: "p".into(),
                        version: 1,
                        egress: EgressRules {
                            tlp_ceiling: ceiling,
                            community,
                            kinds,
                            tags_include: include.into_iter().map(String::from).collect(),
                            tags_exclude: exclude.into_iter().map(String::from).collect(),
                            min_confidence: min,
                            origins: if any_origin {
                                Origins::Any
                            } else {
                                Origins::Own
                            },
                            jurisdictions: juris.into_iter().map(String::from).collect(),
                            max_age_days: age,
                        },
                        ingress: IngressRules::default(),
                        sightings: Default::default(),
                        statistics: Default::default(),
                    }
                },
            ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn engine_agrees_with_the_model_on_random_cases(
        ind in arb_indicator(),
        hops in 0u32..4,
        recipient in prop::sample::select(vec!["a.example", "b.example", "c.example"]),
        policy in arb_policy(),
    ) {
        check(&ind, hops, recipient, policy.as_ref());
    }
}
