//! STIX 2.1 from and to ThreatMesh indicators. Pure: no I/O, no clock.
//!
//! An indicator is a STIX `indicator` object whose id is `indicator--` and
//! the indicator's UUID, with a STIX pattern for its kind and value, the
//! TLP 2.0 marking definition of its label (the official ids), its origin
//! as an `identity` (`created_by_ref`), and what STIX has no property for
//! as documented custom properties:
//!
//! | property | meaning |
//! |---|---|
//! | `x_threatmesh_origin` | the origin org id |
//! | `x_threatmesh_version` | the origin's version number |
//! | `x_threatmesh_recipients` | org ids the origin named (RED, AMBER+STRICT) |
//! | `x_threatmesh_may_forward` | recipients may pass it on (subject to TLP) |
//! | `x_threatmesh_hop_limit` | relay hops allowed beyond the first recipient |
//! | `x_threatmesh_jurisdictions` | ISO 3166-1 alpha-2 codes |
//! | `x_threatmesh_envelope` | the origin's signed envelope, as DSSE JSON |
//!
//! Kill-chain phases written `chain:phase` keep their chain; others are
//! phases of the `threatmesh` chain.
//!
//! A sighting report is a STIX `sighting` of the indicator
//! (`sighting_of_ref`), seen by the sighter's `identity`
//! (`where_sighted_refs`, `created_by_ref`), with its count and first and
//! last seen; one object per sighter, indicator and UTC day (a later report
//! of the day is a newer `modified` of the same id), with
//! `x_threatmesh_indicator_version`, `x_threatmesh_sector`,
//! `x_threatmesh_country` and the sighter's signed report as
//! `x_threatmesh_envelope`.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::model::{ValidationError, kind_name};
use crate::proto::v1::{
    Envelope, Indicator, IndicatorDraft, IndicatorKind, Marking, Sighting, Tlp,
};
use crate::signing::DsseJson;

/// The STIX extension that defines TLP 2.0 marking definitions.
pub const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// TLP 2.0 marking definitions: label, official STIX id, `tlp_2_0` value.
pub const TLP2_MARKINGS: [(Tlp, &str, &str); 5] = [
    (
        Tlp::Clear,
        "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
        "clear",
    ),
    (
        Tlp::Green,
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
        "green",
    ),
    (
        Tlp::Amber,
        "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
        "amber",
    ),
    (
        Tlp::AmberStrict,
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
        "amber+strict",
    ),
    (
        Tlp::Red,
        "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
        "red",
    ),
];

/// TLP 1.0 marking definitions (STIX 2.1's predefined ones), read on import
/// (WHITE is CLEAR).
const TLP1_MARKINGS: [(Tlp, &str); 4] = [
    (
        Tlp::Clear,
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
    ),
    (
        Tlp::Green,
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
    ),
    (
        Tlp::Amber,
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
    ),
    (
        Tlp::Red,
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
    ),
];

/// The kill chain of phases written without a `chain:` prefix.
pub const OWN_KILL_CHAIN: &str = "threatmesh";

/// Properties of an `indicator` object this mapping reads; any other is
/// reported as not carried.
const READ_PROPERTIES: [&str; 28] = [
    "type",
    "spec_version",
    "id",
    "created",
    "modified",
    "created_by_ref",
    "pattern",
    "pattern_type",
    "pattern_version",
    "valid_from",
    "valid_until",
    "confidence",
    "labels",
    "kill_chain_phases",
    "description",
    "revoked",
    "object_marking_refs",
    "x_threatmesh_origin",
    "x_threatmesh_version",
    "x_threatmesh_recipients",
    "x_threatmesh_may_forward",
    "x_threatmesh_hop_limit",
    "x_threatmesh_jurisdictions",
    "x_threatmesh_envelope",
    // Descriptive only: nothing of ours corresponds, nothing is lost.
    "name",
    "indicator_types",
    "lang",
    "granular_markings",
];

/// A STIX timestamp (RFC 3339, UTC, milliseconds) of a Unix ms time.
pub fn timestamp(ms: i64) -> String {
    crate::clock::rfc3339_millis(ms).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

/// The Unix ms time of a STIX timestamp.
pub fn parse_timestamp(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("'{s}' is not an RFC 3339 timestamp: {e}"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| format!("'{s}' is out of range"))
}

/// The STIX `identity` id of an org: a name-based UUID, so every export of
/// the same org names the same identity.
pub fn identity_id(org: &str) -> String {
    static NAMESPACE: std::sync::LazyLock<uuid::Uuid> = std::sync::LazyLock::new(|| {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            b"https://threatmesh/stix/identity",
        )
    });
    format!(
        "identity--{}",
        uuid::Uuid::new_v5(&NAMESPACE, org.as_bytes())
    )
}

/// The STIX `sighting` object of a sighting report, with the sighter's
/// signed `envelope` as DSSE JSON when given. Its id is the same for every
/// report of one sighter, indicator and day.
pub fn sighting_object(s: &Sighting, envelope: Option<&Envelope>) -> Value {
    static NAMESPACE: std::sync::LazyLock<uuid::Uuid> = std::sync::LazyLock::new(|| {
        uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            b"https://threatmesh/stix/sighting",
        )
    });
    let key = format!(
        "{} {} {} {}",
        s.sighter_org, s.indicator_origin, s.indicator_id, s.window_start_unix_ms
    );
    let mut obj = json!({
        "type": "sighting",
        "spec_version": "2.1",
        "id": format!("sighting--{}", uuid::Uuid::new_v5(&NAMESPACE, key.as_bytes())),
        "created": timestamp(s.first_seen_unix_ms),
        "modified": timestamp(s.reported_unix_ms.max(s.first_seen_unix_ms)),
        "created_by_ref": identity_id(&s.sighter_org),
        "sighting_of_ref": format!("indicator--{}", s.indicator_id),
        "where_sighted_refs": [identity_id(&s.sighter_org)],
        "first_seen": timestamp(s.first_seen_unix_ms),
        "last_seen": timestamp(s.last_seen_unix_ms),
        "count": s.count,
        "x_threatmesh_indicator_origin": s.indicator_origin,
        "x_threatmesh_indicator_version": s.indicator_version,
    });
    if !s.sector.is_empty() {
        obj["x_threatmesh_sector"] = s.sector.clone().into();
    }
    if !s.country.is_empty() {
        obj["x_threatmesh_country"] = s.country.clone().into();
    }
    if let Some(env) = envelope
        && let Ok(v) = serde_json::to_value(DsseJson::from(env))
    {
        obj["x_threatmesh_envelope"] = v;
    }
    obj
}

/// The `identity` object of an origin org, made at `now_ms`.
pub fn identity_object(org: &str, name: &str, now_ms: i64) -> Value {
    let at = timestamp(now_ms);
    json!({
        "type": "identity",
        "spec_version": "2.1",
        "id": identity_id(org),
        "created": at,
        "modified": at,
        "name": if name.is_empty() { org } else { name },
        "identity_class": "organization",
        "x_threatmesh_origin": org,
    })
}

/// The five TLP 2.0 `marking-definition` objects, as the TLP 2.0 extension
/// defines them.
pub fn marking_objects() -> Vec<Value> {
    TLP2_MARKINGS
        .iter()
        .map(|(tlp, id, level)| {
            let mut ext = Map::new();
            ext.insert(
                TLP2_EXTENSION.into(),
                json!({"extension_type": "property-extension", "tlp_2_0": level}),
            );
            json!({
                "type": "marking-definition",
                "spec_version": "2.1",
                "id": id,
                "created": "2022-10-01T00:00:00.000Z",
                "name": format!("TLP:{}", crate::model::tlp_name(*tlp as i32).unwrap_or("")),
                "extensions": ext,
            })
        })
        .collect()
}

/// The TLP label a marking-definition id stands for (TLP 2.0, or 1.0's).
pub fn tlp_of_marking(id: &str) -> Option<Tlp> {
    TLP2_MARKINGS
        .iter()
        .map(|(t, i, _)| (*t, *i))
        .chain(TLP1_MARKINGS)
        .find(|(_, i)| *i == id)
        .map(|(t, _)| t)
}

/// The marking-definition id of a TLP label.
pub fn marking_of_tlp(tlp: i32) -> Option<&'static str> {
    TLP2_MARKINGS
        .iter()
        .find(|(t, _, _)| *t as i32 == tlp)
        .map(|(_, id, _)| *id)
}

/// A STIX string literal: quotes and backslashes escaped.
fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The STIX object path of a kind (a CIDR is an address of its family).
fn object_path(kind: IndicatorKind, value: &str) -> &'static str {
    match kind {
        IndicatorKind::Ipv4 => "ipv4-addr:value",
        IndicatorKind::Ipv6 => "ipv6-addr:value",
        IndicatorKind::Cidr if value.contains(':') => "ipv6-addr:value",
        IndicatorKind::Cidr => "ipv4-addr:value",
        IndicatorKind::Domain => "domain-name:value",
        IndicatorKind::Url => "url:value",
        IndicatorKind::Email => "email-addr:value",
        IndicatorKind::Sha256 => "file:hashes.'SHA-256'",
        IndicatorKind::Sha1 => "file:hashes.'SHA-1'",
        IndicatorKind::Md5 => "file:hashes.MD5",
        IndicatorKind::Unspecified => "x-unknown:value",
    }
}

/// The STIX pattern of an indicator: `[path = 'value']`.
pub fn pattern(kind: IndicatorKind, value: &str) -> String {
    format!("[{} = {}]", object_path(kind, value), literal(value))
}

/// The kind and value of a STIX pattern this mapping carries: one
/// comparison `[object-path = 'value']` on an address, domain, URL, e-mail
/// address or file hash. Anything else is refused, saying what it is.
pub fn parse_pattern(p: &str) -> Result<(IndicatorKind, String), String> {
    let inner = p
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| "not a single [comparison]".to_string())?;
    let (path, rest) = inner
        .split_once('=')
        .ok_or_else(|| "only '=' comparisons are carried".to_string())?;
    let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
    let rest = rest.trim();
    let body = rest
        .strip_prefix('\'')
        .ok_or_else(|| "the value is not a quoted string".to_string())?;
    let mut value = String::new();
    let mut chars = body.chars();
    let mut closed = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\'' | '\\')) => value.push(e),
                _ => return Err("a backslash escapes only ' and \\".into()),
            },
            '\'' => {
                closed = true;
                break;
            }
            c => value.push(c),
        }
    }
    if !closed {
        return Err("the quoted value is not closed".into());
    }
    if !chars.as_str().trim().is_empty() {
        return Err("more than one comparison (AND, OR, qualifiers) is not carried".into());
    }
    let kind = match path.to_ascii_lowercase().as_str() {
        "ipv4-addr:value" if value.contains('/') => IndicatorKind::Cidr,
        "ipv4-addr:value" => IndicatorKind::Ipv4,
        "ipv6-addr:value" if value.contains('/') => IndicatorKind::Cidr,
        "ipv6-addr:value" => IndicatorKind::Ipv6,
        "domain-name:value" => IndicatorKind::Domain,
        "url:value" => IndicatorKind::Url,
        "email-addr:value" => IndicatorKind::Email,
        "file:hashes.'sha-256'" | "file:hashes.sha256" | "file:hashes.'sha256'" => {
            IndicatorKind::Sha256
        }
        "file:hashes.'sha-1'" | "file:hashes.sha1" | "file:hashes.'sha1'" => IndicatorKind::Sha1,
        "file:hashes.md5" | "file:hashes.'md5'" => IndicatorKind::Md5,
        other => return Err(format!("object path {other} is not carried")),
    };
    Ok((kind, value))
}

/// A kill-chain phase of ours as STIX's `{kill_chain_name, phase_name}`.
#[derive(Serialize)]
struct KillChainPhase<'a> {
    kill_chain_name: &'a str,
    phase_name: &'a str,
}

impl<'a> KillChainPhase<'a> {
    fn of(label: &'a str) -> Self {
        let (chain, phase) = label.split_once(':').unwrap_or((OWN_KILL_CHAIN, label));
        Self {
            kill_chain_name: chain,
            phase_name: phase,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The STIX `indicator` object of an indicator, ready to serialize: built
/// straight from the indicator's fields, so a TAXII page or an export
/// renders without an intermediate JSON tree. [`indicator_object`] gives it
/// as a [`Value`].
#[derive(Serialize)]
pub struct IndicatorObject<'a> {
    #[serde(rename = "type")]
    object_type: &'static str,
    spec_version: &'static str,
    id: String,
    created: String,
    modified: String,
    created_by_ref: String,
    name: String,
    indicator_types: [&'static str; 1],
    pattern: String,
    pattern_type: &'static str,
    pattern_version: &'static str,
    valid_from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_until: Option<String>,
    confidence: u32,
    #[serde(rename = "labels", skip_serializing_if = "<[_]>::is_empty")]
    tags: &'a [String],
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kill_chain_phases: Vec<KillChainPhase<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "is_false")]
    revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_marking_refs: Option<[&'static str; 1]>,
    x_threatmesh_origin: &'a str,
    x_threatmesh_version: u64,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    x_threatmesh_recipients: &'a [String],
    #[serde(skip_serializing_if = "is_false")]
    x_threatmesh_may_forward: bool,
    #[serde(skip_serializing_if = "is_zero")]
    x_threatmesh_hop_limit: u32,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    x_threatmesh_jurisdictions: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    x_threatmesh_envelope: Option<DsseJson>,
}

impl<'a> IndicatorObject<'a> {
    /// The object of `ind`, with its signed `envelope` as DSSE JSON when
    /// given.
    pub fn new(ind: &'a Indicator, envelope: Option<&Envelope>) -> Self {
        let kind = IndicatorKind::try_from(ind.kind).unwrap_or(IndicatorKind::Unspecified);
        let marking = ind.marking.as_ref();
        let recipients: &[String] = marking.map_or(&[], |m| &m.recipients);
        Self {
            object_type: "indicator",
            spec_version: "2.1",
            id: format!("indicator--{}", ind.id),
            created: timestamp(ind.created_unix_ms),
            modified: timestamp(ind.modified_unix_ms),
            created_by_ref: identity_id(&ind.origin_org),
            name: format!(
                "{} {}",
                kind_name(ind.kind).unwrap_or("indicator"),
                ind.value
            ),
            indicator_types: ["malicious-activity"],
            pattern: pattern(kind, &ind.value),
            pattern_type: "stix",
            pattern_version: "2.1",
            valid_from: timestamp(ind.valid_from_unix_ms),
            valid_until: (ind.valid_until_unix_ms != 0).then(|| timestamp(ind.valid_until_unix_ms)),
            confidence: ind.confidence,
            tags: &ind.tags,
            kill_chain_phases: ind
                .kill_chain_phases
                .iter()
                .map(|p| KillChainPhase::of(p))
                .collect(),
            description: &ind.description,
            revoked: ind.revoked,
            object_marking_refs: marking_of_tlp(marking.map_or(0, |m| m.tlp)).map(|id| [id]),
            x_threatmesh_origin: &ind.origin_org,
            x_threatmesh_version: ind.version,
            x_threatmesh_recipients: recipients,
            x_threatmesh_may_forward: marking.is_some_and(|m| m.may_forward),
            x_threatmesh_hop_limit: marking.map_or(0, |m| m.hop_limit),
            x_threatmesh_jurisdictions: &ind.jurisdictions,
            x_threatmesh_envelope: envelope.map(DsseJson::from),
        }
    }
}

/// The STIX `indicator` object of `ind` as a JSON value, with its signed
/// `envelope` as DSSE JSON when given.
pub fn indicator_object(ind: &Indicator, envelope: Option<&Envelope>) -> Value {
    serde_json::to_value(IndicatorObject::new(ind, envelope)).unwrap_or(Value::Null)
}

/// What one STIX `indicator` object becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    /// The draft to publish (checked again by the node).
    pub draft: IndicatorDraft,
    /// Its idempotency key: the STIX id and modified time, so importing the
    /// same bundle again publishes nothing new.
    pub key: String,
    /// Properties present that nothing of ours carries.
    pub not_carried: Vec<String>,
}

/// Why an entry of an imported file (a STIX object, a MISP attribute, a
/// CSV row) is not published: the property at fault and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct StixError {
    /// The property (`pattern`, `valid_from`, `object_marking_refs[0]`).
    pub field: String,
    /// What is wrong.
    pub problem: String,
    /// Content the mapping deliberately does not carry (another object
    /// type, a compound pattern, a revoked entry, no TLP), as opposed to
    /// invalid input.
    pub unsupported: bool,
}

/// Invalid input at `field`.
pub fn stix_err(field: impl Into<String>, problem: impl Into<String>) -> StixError {
    StixError {
        field: field.into(),
        problem: problem.into(),
        unsupported: false,
    }
}

/// Content at `field` that the mapping does not carry.
pub fn not_carried(field: impl Into<String>, problem: impl Into<String>) -> StixError {
    StixError {
        unsupported: true,
        ..stix_err(field, problem)
    }
}

fn strings(o: &Map<String, Value>, field: &str) -> Result<Vec<String>, StixError> {
    match o.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| stix_err(format!("{field}[{i}]"), "is not a string"))
            })
            .collect(),
        Some(_) => Err(stix_err(field, "is not a list")),
    }
}

fn time_of(o: &Map<String, Value>, field: &str) -> Result<Option<i64>, StixError> {
    match o.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => parse_timestamp(s).map(Some).map_err(|e| stix_err(field, e)),
        Some(_) => Err(stix_err(field, "is not a timestamp string")),
    }
}

/// The TLP label of an object's `object_marking_refs`: exactly one TLP
/// marking (2.0, or 1.0's WHITE/GREEN/AMBER/RED); none is refused (we do not
/// guess a label); other marking definitions are reported as not carried.
fn tlp_of(o: &Map<String, Value>, ignored: &mut Vec<String>) -> Result<Tlp, StixError> {
    let refs = strings(o, "object_marking_refs")?;
    let mut found = None;
    for (i, r) in refs.iter().enumerate() {
        match (tlp_of_marking(r), found) {
            (Some(t), None) => found = Some(t),
            (Some(t), Some(prev)) if t != prev => {
                return Err(stix_err(
                    format!("object_marking_refs[{i}]"),
                    "a second, different TLP marking",
                ));
            }
            (Some(_), Some(_)) => {}
            (None, _) => ignored.push(format!("object_marking_refs[{i}] ({r})")),
        }
    }
    found.ok_or_else(|| {
        not_carried(
            "object_marking_refs",
            "no TLP marking definition (TLP 2.0 or 1.0); the label is not guessed",
        )
    })
}

/// The draft a STIX `indicator` object stands for, to be published by the
/// importing org. Refuses what it cannot carry faithfully (a compound or
/// unknown pattern, no TLP marking, a revoked indicator), naming the
/// property.
pub fn draft_from_object(obj: &Value) -> Result<Imported, StixError> {
    let o = obj
        .as_object()
        .ok_or_else(|| stix_err("(object)", "is not a JSON object"))?;
    match o.get("type").and_then(Value::as_str) {
        Some("indicator") => {}
        Some(other) => {
            return Err(not_carried(
                "type",
                format!("'{other}' objects are not imported (only indicators)"),
            ));
        }
        None => return Err(stix_err("type", "is missing")),
    }
    let id = o
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| stix_err("id", "is missing"))?;
    if o.get("revoked").and_then(Value::as_bool) == Some(true) {
        return Err(not_carried(
            "revoked",
            "the source revoked it; nothing to publish",
        ));
    }
    match o.get("pattern_type").and_then(Value::as_str) {
        Some("stix") => {}
        Some(other) => {
            return Err(not_carried(
                "pattern_type",
                format!("'{other}' patterns are not carried (only stix)"),
            ));
        }
        None => return Err(stix_err("pattern_type", "is missing")),
    }
    let pattern = o
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| stix_err("pattern", "is missing"))?;
    let (kind, value) = parse_pattern(pattern).map_err(|e| not_carried("pattern", e))?;
    let mut not_carried = Vec::new();
    let tlp = tlp_of(o, &mut not_carried)?;
    let confidence = match o.get("confidence") {
        None => 50,
        Some(v) => v
            .as_u64()
            .filter(|c| *c <= 100)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| stix_err("confidence", "is not an integer 0-100"))?,
    };
    let mut kill_chain_phases = Vec::new();
    if let Some(v) = o.get("kill_chain_phases") {
        let items = v
            .as_array()
            .ok_or_else(|| stix_err("kill_chain_phases", "is not a list"))?;
        for (i, p) in items.iter().enumerate() {
            let name = p.get("kill_chain_name").and_then(Value::as_str);
            let phase = p.get("phase_name").and_then(Value::as_str);
            match (name, phase) {
                (Some(OWN_KILL_CHAIN), Some(phase)) => kill_chain_phases.push(phase.to_string()),
                (Some(name), Some(phase)) => kill_chain_phases.push(format!("{name}:{phase}")),
                _ => {
                    return Err(stix_err(
                        format!("kill_chain_phases[{i}]"),
                        "needs kill_chain_name and phase_name",
                    ));
                }
            }
        }
    }
    let hop_limit = match o.get("x_threatmesh_hop_limit") {
        None => 0,
        Some(v) => v
            .as_u64()
            .and_then(|h| u32::try_from(h).ok())
            .ok_or_else(|| stix_err("x_threatmesh_hop_limit", "is not a small integer"))?,
    };
    let may_forward = match o.get("x_threatmesh_may_forward") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| stix_err("x_threatmesh_may_forward", "is not true or false"))?,
    };
    let description = match o.get("description") {
        None => String::new(),
        Some(v) => v
            .as_str()
            .ok_or_else(|| stix_err("description", "is not a string"))?
            .to_string(),
    };
    let valid_from = time_of(o, "valid_from")?
        .ok_or_else(|| stix_err("valid_from", "is missing (required by STIX 2.1)"))?;
    let modified = time_of(o, "modified")?;
    for k in o.keys() {
        if !READ_PROPERTIES.contains(&k.as_str()) {
            not_carried.push(k.clone());
        }
    }
    let draft = IndicatorDraft {
        kind: kind as i32,
        value,
        marking: Some(Marking {
            tlp: tlp as i32,
            recipients: strings(o, "x_threatmesh_recipients")?,
            may_forward,
            hop_limit,
        }),
        confidence,
        tags: strings(o, "labels")?,
        jurisdictions: strings(o, "x_threatmesh_jurisdictions")?,
        valid_from_unix_ms: valid_from,
        valid_until_unix_ms: time_of(o, "valid_until")?.unwrap_or(0),
        kill_chain_phases,
        description,
        id: String::new(),
        revoked: false,
    };
    Ok(Imported {
        draft,
        key: format!("stix:{id}:{}", modified.unwrap_or(0)),
        not_carried,
    })
}

/// A [`ValidationError`] of a draft made from a STIX object, with the field
/// named as STIX names it.
pub fn stix_field(e: &ValidationError) -> StixError {
    let field = match e.field.as_str() {
        "value" | "kind" => "pattern",
        "valid_from_unix_ms" => "valid_from",
        "valid_until_unix_ms" => "valid_until",
        "tags" => "labels",
        f if f.starts_with("tags[") => "labels",
        f if f.starts_with("marking.recipients") => "x_threatmesh_recipients",
        f if f.starts_with("marking.hop_limit") => "x_threatmesh_hop_limit",
        f if f.starts_with("marking") => "object_marking_refs",
        f if f.starts_with("jurisdictions") => "x_threatmesh_jurisdictions",
        f => f,
    };
    stix_err(field, e.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn indicator(kind: IndicatorKind, value: &str) -> Indicator {
        Indicator {
            origin_org: "a.example".into(),
            key_id: "k".into(),
            id: "6f1c1a8e-1c2b-4c3d-8e4f-5a6b7c8d9e0f".into(),
            version: 3,
            created_unix_ms: 1_700_000_000_123,
            modified_unix_ms: 1_700_000_100_456,
            marking: Some(Marking {
                tlp: Tlp::Red as i32,
                recipients: vec!["b.example".into()],
                may_forward: true,
                hop_limit: 2,
            }),
            kind: kind as i32,
            value: value.into(),
            confidence: 85,
            tags: vec!["phishing".into(), "c2".into()],
            jurisdictions: vec!["DE".into()],
            valid_from_unix_ms: 1_700_000_000_000,
            valid_until_unix_ms: 1_800_000_000_000,
            kill_chain_phases: vec!["delivery".into(), "mitre-attack:initial-access".into()],
            description: "it's a \"test\"".into(),
            revoked: false,
        }
    }

    #[test]
    fn patterns_escape_and_parse_back_for_every_kind() {
        let cases = [
            (
                IndicatorKind::Ipv4,
                "192.0.2.7",
                "[ipv4-addr:value = '192.0.2.7']",
            ),
            (
                IndicatorKind::Ipv6,
                "2001:db8::1",
                "[ipv6-addr:value = '2001:db8::1']",
            ),
            (
                IndicatorKind::Cidr,
                "198.51.100.0/24",
                "[ipv4-addr:value = '198.51.100.0/24']",
            ),
            (
                IndicatorKind::Cidr,
                "2001:db8::/32",
                "[ipv6-addr:value = '2001:db8::/32']",
            ),
            (
                IndicatorKind::Domain,
                "evil.example",
                "[domain-name:value = 'evil.example']",
            ),
            (
                IndicatorKind::Url,
                "http://evil.example/it's\\x",
                "[url:value = 'http://evil.example/it\\'s\\\\x']",
            ),
            (
                IndicatorKind::Email,
                "a@evil.example",
                "[email-addr:value = 'a@evil.example']",
            ),
            (IndicatorKind::Sha256, &"ab".repeat(32), ""),
            (IndicatorKind::Sha1, &"cd".repeat(20), ""),
            (IndicatorKind::Md5, &"ef".repeat(16), ""),
        ];
        for (kind, value, want) in cases {
            let p = pattern(kind, value);
            if !want.is_empty() {
                assert_eq!(p, want);
            }
            assert_eq!(parse_pattern(&p).unwrap(), (kind, value.to_string()), "{p}");
        }
        assert_eq!(
            pattern(IndicatorKind::Sha256, "00"),
            "[file:hashes.'SHA-256' = '00']"
        );
        for bad in [
            "[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '5.6.7.8']",
            "[ipv4-addr:value != '1.2.3.4']",
            "[process:name = 'x']",
            "ipv4-addr:value = '1.2.3.4'",
            "[url:value = 'unclosed]",
            "[url:value = 'a\\b']",
        ] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_indicator_round_trips_through_its_stix_object() {
        let ind = indicator(IndicatorKind::Url, "http://evil.example/x");
        let obj = indicator_object(&ind, None);
        assert_eq!(obj["id"], "indicator--6f1c1a8e-1c2b-4c3d-8e4f-5a6b7c8d9e0f");
        assert_eq!(obj["created"], "2023-11-14T22:13:20.123Z");
        assert_eq!(obj["created_by_ref"], identity_id("a.example"));
        assert_eq!(
            obj["object_marking_refs"][0],
            "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
        );
        assert_eq!(
            obj["kill_chain_phases"][1]["kill_chain_name"],
            "mitre-attack"
        );
        let back = draft_from_object(&obj).unwrap();
        assert!(back.not_carried.is_empty(), "{:?}", back.not_carried);
        let d = back.draft;
        assert_eq!(
            (d.kind, d.value.as_str(), d.confidence),
            (ind.kind, ind.value.as_str(), ind.confidence)
        );
        assert_eq!(d.marking, ind.marking);
        assert_eq!(d.tags, ind.tags);
        assert_eq!(d.jurisdictions, ind.jurisdictions);
        assert_eq!(d.kill_chain_phases, ind.kill_chain_phases);
        assert_eq!(d.description, ind.description);
        assert_eq!(
            (d.valid_from_unix_ms, d.valid_until_unix_ms),
            (ind.valid_from_unix_ms, ind.valid_until_unix_ms)
        );
        assert_eq!(
            back.key,
            "stix:indicator--6f1c1a8e-1c2b-4c3d-8e4f-5a6b7c8d9e0f:1700000100456"
        );
    }

    #[test]
    fn what_cannot_be_carried_is_refused_or_reported_by_name() {
        let ind = indicator(IndicatorKind::Domain, "evil.example");
        let mut obj = indicator_object(&ind, None);
        obj["x_vendor_score"] = 7.into();
        obj["external_references"] = json!([{"source_name": "x"}]);
        let got = draft_from_object(&obj).unwrap();
        assert_eq!(got.not_carried, ["external_references", "x_vendor_score"]);

        let refuse = |f: &dyn Fn(&mut Value), field: &str| {
            let mut o = indicator_object(&ind, None);
            f(&mut o);
            let e = draft_from_object(&o).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        };
        refuse(
            &|o| o["object_marking_refs"] = json!([]),
            "object_marking_refs",
        );
        refuse(&|o| o["pattern"] = "[a:b = 'c']".into(), "pattern");
        refuse(&|o| o["pattern_type"] = "sigma".into(), "pattern_type");
        refuse(&|o| o["revoked"] = true.into(), "revoked");
        refuse(&|o| o["confidence"] = 101.into(), "confidence");
        refuse(&|o| o["type"] = "malware".into(), "type");
        refuse(
            &|o| {
                o.as_object_mut().unwrap().remove("valid_from");
            },
            "valid_from",
        );
        // TLP 1.0's WHITE is CLEAR.
        let mut old = indicator_object(&ind, None);
        old["object_marking_refs"] =
            json!(["marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9"]);
        let d = draft_from_object(&old).unwrap().draft;
        assert_eq!(d.marking.unwrap().tlp, Tlp::Clear as i32);
    }

    #[test]
    fn identities_are_stable_per_org() {
        assert_eq!(identity_id("a.example"), identity_id("a.example"));
        assert_ne!(identity_id("a.example"), identity_id("b.example"));
        assert!(identity_id("a.example").starts_with("identity--"));
    }

    #[test]
    fn a_sighting_is_one_object_per_sighter_indicator_and_day() {
        let s = Sighting {
            sighter_org: "d.example".into(),
            key_id: "k".into(),
            indicator_origin: "a.example".into(),
            indicator_id: "6f1c1a8e-1c2b-4c3d-8e4f-5a6b7c8d9e0f".into(),
            indicator_version: 2,
            count: 3,
            first_seen_unix_ms: 1_700_000_000_000,
            last_seen_unix_ms: 1_700_000_100_000,
            window_start_unix_ms: 1_699_920_000_000,
            reported_unix_ms: 1_700_000_200_000,
            sector: "telecom".into(),
            country: String::new(),
        };
        let o = sighting_object(&s, None);
        assert_eq!(
            o["sighting_of_ref"],
            "indicator--6f1c1a8e-1c2b-4c3d-8e4f-5a6b7c8d9e0f"
        );
        assert_eq!(o["where_sighted_refs"][0], identity_id("d.example"));
        assert_eq!(o["count"], 3);
        assert_eq!(o["x_threatmesh_sector"], "telecom");
        assert!(o.get("x_threatmesh_country").is_none());
        let mut later = s.clone();
        later.count = 5;
        later.reported_unix_ms += 1000;
        let o2 = sighting_object(&later, None);
        assert_eq!(o["id"], o2["id"]);
        assert_ne!(o["modified"], o2["modified"]);
    }
}
