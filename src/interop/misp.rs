//! MISP event JSON to ThreatMesh drafts. Pure.
//!
//! Attribute types map to kinds (`ip-src`/`ip-dst` by address family or
//! prefix, `domain`/`hostname`, `url`, `email*`, hashes; the hash half of
//! `filename|sha256` and the like); the TLP comes from the attribute's
//! `tlp:*` tag, else the event's, else from the distribution level
//! (community only: AMBER, connected communities: GREEN, all: CLEAR; "your
//! organisation only" and sharing groups have no TLP to carry and are
//! refused). Other tags become tags; the comment (else the event's info)
//! the description; `first_seen`/`last_seen` the validity.

use serde_json::Value;

use super::stix::{StixError, not_carried, parse_timestamp, stix_err};
use crate::model::parse_tlp;
use crate::proto::v1::{IndicatorDraft, IndicatorKind, Marking, Tlp};

/// One MISP attribute's draft, or why it is not carried.
pub type AttributeOutcome = Result<(IndicatorDraft, String), StixError>;

/// Every attribute of an event, its objects' attributes included, each
/// with a label naming where it is (`Attribute[3]`, `Object[1].Attribute[0]`).
pub fn attributes(event: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    if let Some(attrs) = event.get("Attribute").and_then(Value::as_array) {
        for (i, a) in attrs.iter().enumerate() {
            out.push((format!("Attribute[{i}]"), a));
        }
    }
    if let Some(objs) = event.get("Object").and_then(Value::as_array) {
        for (o, obj) in objs.iter().enumerate() {
            if let Some(attrs) = obj.get("Attribute").and_then(Value::as_array) {
                for (i, a) in attrs.iter().enumerate() {
                    out.push((format!("Object[{o}].Attribute[{i}]"), a));
                }
            }
        }
    }
    out
}

fn tag_names(v: &Value) -> Vec<String> {
    v.get("Tag")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The TLP of a list of MISP tags (`tlp:amber+strict`, `tlp:white`…).
fn tlp_tag(tags: &[String]) -> Option<Tlp> {
    tags.iter().find_map(|t| {
        let l = t.trim().to_ascii_lowercase();
        let level = l.strip_prefix("tlp:")?;
        if level == "white" {
            return Some(Tlp::Clear);
        }
        parse_tlp(level)
    })
}

/// A MISP distribution level (a number or its string) as a TLP label.
fn tlp_of_distribution(d: &Value) -> Result<Tlp, StixError> {
    let n = d
        .as_u64()
        .or_else(|| d.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| stix_err("distribution", "is not a MISP distribution level"))?;
    match n {
        1 => Ok(Tlp::Amber),
        2 => Ok(Tlp::Green),
        3 => Ok(Tlp::Clear),
        0 => Err(not_carried(
            "distribution",
            "'your organisation only' cannot be shared; tag it tlp:* to import it",
        )),
        4 => Err(not_carried(
            "distribution",
            "sharing groups have no TLP equivalent; tag it tlp:* to import it",
        )),
        other => Err(stix_err(
            "distribution",
            format!("level {other} is not one MISP defines"),
        )),
    }
}

/// The kind of a MISP attribute type and value; the value to publish.
fn kind_of(ty: &str, value: &str) -> Result<(IndicatorKind, String), StixError> {
    // Composite types: the indicator is the half after '|'.
    let (ty, value) = match ty.split_once('|') {
        Some((_, second)) if matches!(second, "md5" | "sha1" | "sha256") && value.contains('|') => {
            (
                second,
                value.split_once('|').map(|(_, v)| v).unwrap_or(value),
            )
        }
        Some(_) => {
            return Err(not_carried(
                "type",
                format!("composite MISP type '{ty}' is not carried"),
            ));
        }
        None => (ty, value),
    };
    let kind = match ty {
        "ip-src" | "ip-dst" if value.contains('/') => IndicatorKind::Cidr,
        "ip-src" | "ip-dst" if value.contains(':') => IndicatorKind::Ipv6,
        "ip-src" | "ip-dst" => IndicatorKind::Ipv4,
        "domain" | "hostname" => IndicatorKind::Domain,
        "url" | "uri" => IndicatorKind::Url,
        "email" | "email-src" | "email-dst" => IndicatorKind::Email,
        "sha256" => IndicatorKind::Sha256,
        "sha1" => IndicatorKind::Sha1,
        "md5" => IndicatorKind::Md5,
        other => {
            return Err(not_carried(
                "type",
                format!("MISP type '{other}' is not carried"),
            ));
        }
    };
    Ok((kind, value.to_string()))
}

fn seen(a: &Value, field: &str) -> Result<i64, StixError> {
    match a.get(field) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => parse_timestamp(s).map_err(|e| stix_err(field, e)),
        Some(_) => Err(stix_err(field, "is not a timestamp string")),
    }
}

/// A [`crate::model::ValidationError`] of a draft made from a MISP
/// attribute, with the field named as MISP names it.
pub fn misp_field(e: &crate::model::ValidationError) -> StixError {
    let field = match e.field.as_str() {
        "kind" => "type",
        "valid_from_unix_ms" => "first_seen",
        "valid_until_unix_ms" => "last_seen",
        f if f.starts_with("tags") => "Tag",
        f if f.starts_with("marking") => "Tag",
        "description" => "comment",
        f => f,
    };
    stix_err(field, e.message.clone())
}

/// The draft of one attribute of `event`, and its idempotency key.
pub fn draft_from_attribute(event: &Value, attr: &Value) -> AttributeOutcome {
    let ty = attr
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| stix_err("type", "is missing"))?;
    let value = attr
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| stix_err("value", "is missing"))?;
    let (kind, value) = kind_of(ty, value)?;
    let attr_tags = tag_names(attr);
    let event_tags = tag_names(event);
    let tlp = match tlp_tag(&attr_tags).or_else(|| tlp_tag(&event_tags)) {
        Some(t) => t,
        None => {
            let d = match attr.get("distribution") {
                Some(d) if d.as_u64() != Some(5) && d.as_str() != Some("5") => d,
                _ => event.get("distribution").ok_or_else(|| {
                    not_carried("distribution", "no tlp:* tag and no distribution")
                })?,
            };
            tlp_of_distribution(d)?
        }
    };
    if matches!(tlp, Tlp::Red | Tlp::AmberStrict) {
        return Err(not_carried(
            "Tag",
            "TLP:RED and TLP:AMBER+STRICT need named recipients, which MISP does not carry",
        ));
    }
    let mut tags: Vec<String> = attr_tags
        .iter()
        .chain(&event_tags)
        .filter(|t| !t.to_ascii_lowercase().starts_with("tlp:"))
        .cloned()
        .collect();
    tags.truncate(crate::model::MAX_TAGS);
    let comment = attr.get("comment").and_then(Value::as_str).unwrap_or("");
    let description = if comment.is_empty() {
        event.get("info").and_then(Value::as_str).unwrap_or("")
    } else {
        comment
    };
    let uuid = attr.get("uuid").and_then(Value::as_str).unwrap_or("");
    let stamp = attr
        .get("timestamp")
        .map(|t| t.to_string())
        .unwrap_or_default();
    let key = if uuid.is_empty() {
        format!("misp:{}:{value}", kind as i32)
    } else {
        format!("misp:{uuid}:{}", stamp.trim_matches('"'))
    };
    Ok((
        IndicatorDraft {
            kind: kind as i32,
            value,
            marking: Some(Marking {
                tlp: tlp as i32,
                ..Default::default()
            }),
            confidence: 50,
            tags,
            valid_from_unix_ms: seen(attr, "first_seen")?,
            valid_until_unix_ms: seen(attr, "last_seen")?,
            description: description
                .chars()
                .take(crate::model::MAX_DESCRIPTION_LEN)
                .collect(),
            ..Default::default()
        },
        key,
    ))
}

/// The MISP attribute of an indicator (feeds): type and category by kind,
/// the indicator's id as uuid, its TLP and tags as tags, its description as
/// comment, its validity as first_seen/last_seen.
pub fn attribute(ind: &crate::proto::v1::Indicator) -> Value {
    use IndicatorKind as K;
    let kind = IndicatorKind::try_from(ind.kind).unwrap_or(K::Unspecified);
    let (ty, category) = match kind {
        K::Ipv4 | K::Ipv6 | K::Cidr => ("ip-dst", "Network activity"),
        K::Domain => ("domain", "Network activity"),
        K::Url => ("url", "Network activity"),
        K::Email => ("email-src", "Payload delivery"),
        K::Sha256 => ("sha256", "Payload delivery"),
        K::Sha1 => ("sha1", "Payload delivery"),
        K::Md5 => ("md5", "Payload delivery"),
        K::Unspecified => ("other", "Other"),
    };
    let tlp = ind
        .marking
        .as_ref()
        .and_then(|m| crate::model::tlp_name(m.tlp))
        .unwrap_or("CLEAR")
        .to_ascii_lowercase();
    let mut tags = vec![serde_json::json!({"name": format!("tlp:{tlp}")})];
    tags.extend(ind.tags.iter().map(|t| serde_json::json!({"name": t})));
    let mut a = serde_json::json!({
        "uuid": ind.id,
        "type": ty,
        "category": category,
        "value": ind.value,
        "to_ids": true,
        "timestamp": (ind.modified_unix_ms / 1000).to_string(),
        "comment": ind.description,
        "distribution": "5",
        "deleted": false,
        "Tag": tags,
    });
    if ind.valid_from_unix_ms != 0 {
        a["first_seen"] = super::stix::timestamp(ind.valid_from_unix_ms).into();
    }
    if ind.valid_until_unix_ms != 0 {
        a["last_seen"] = super::stix::timestamp(ind.valid_until_unix_ms).into();
    }
    a
}

/// The uuid of the feed event that carries `origin`'s indicators: stable
/// across exports, so MISP updates the event rather than adding another.
pub fn feed_event_uuid(origin: &str) -> String {
    let ns = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        b"https://threatmesh/misp/feed-event",
    );
    uuid::Uuid::new_v5(&ns, origin.as_bytes()).to_string()
}

/// A MISP feed event of `origin`'s attributes, made at `now_ms`, and its
/// manifest entry.
pub fn feed_event(origin: &str, attributes: Vec<Value>, now_ms: i64) -> (Value, Value) {
    let uuid = feed_event_uuid(origin);
    let secs = (now_ms / 1000).to_string();
    let date = super::stix::timestamp(now_ms)[..10].to_string();
    let orgc = serde_json::json!({"name": origin, "uuid": super::stix::identity_id(origin).trim_start_matches("identity--")});
    let info = format!("ThreatMesh indicators of {origin}");
    let event = serde_json::json!({"Event": {
        "uuid": uuid, "info": info, "date": date, "analysis": "2", "threat_level_id": "4",
        "timestamp": secs, "publish_timestamp": secs, "published": true, "extends_uuid": "",
        "Orgc": orgc, "Tag": [], "Attribute": attributes,
    }});
    let manifest = serde_json::json!({
        "info": info, "date": date, "analysis": 2, "threat_level_id": 4, "timestamp": secs,
        "Orgc": orgc, "Tag": [],
    });
    (event, manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_tags_and_distribution_map_or_are_refused_by_name() {
        let event = json!({"Event": {
            "info": "Phishing wave", "distribution": "1",
            "Tag": [{"name": "tlp:green"}, {"name": "phishing"}],
            "Attribute": [
                {"uuid": "u1", "type": "ip-dst", "value": "192.0.2.7", "timestamp": "1700000000"},
                {"uuid": "u2", "type": "domain", "value": "evil.example", "Tag": [{"name": "tlp:amber"}], "comment": "c2"},
                {"uuid": "u3", "type": "filename|sha256", "value": "a.exe|aaaa"},
                {"uuid": "u4", "type": "regkey", "value": "HKLM\\x"},
                {"uuid": "u5", "type": "ip-src", "value": "2001:db8::/32"}
            ],
            "Object": [{"Attribute": [{"uuid": "u6", "type": "url", "value": "http://evil.example/x"}]}]
        }});
        let ev = &event["Event"];
        let attrs = attributes(ev);
        assert_eq!(attrs.len(), 6);
        assert_eq!(attrs[5].0, "Object[0].Attribute[0]");
        let (d, key) = draft_from_attribute(ev, attrs[0].1).unwrap();
        assert_eq!(
            (d.kind, d.value.as_str()),
            (IndicatorKind::Ipv4 as i32, "192.0.2.7")
        );
        assert_eq!(d.marking.unwrap().tlp, Tlp::Green as i32);
        assert_eq!(d.tags, ["phishing"]);
        assert_eq!(d.description, "Phishing wave");
        assert_eq!(key, "misp:u1:1700000000");
        let (d, _) = draft_from_attribute(ev, attrs[1].1).unwrap();
        assert_eq!(d.marking.unwrap().tlp, Tlp::Amber as i32);
        assert_eq!(d.description, "c2");
        let (d, _) = draft_from_attribute(ev, attrs[2].1).unwrap();
        assert_eq!(
            (d.kind, d.value.as_str()),
            (IndicatorKind::Sha256 as i32, "aaaa")
        );
        assert_eq!(
            draft_from_attribute(ev, attrs[3].1).unwrap_err().field,
            "type"
        );
        let (d, _) = draft_from_attribute(ev, attrs[4].1).unwrap();
        assert_eq!(d.kind, IndicatorKind::Cidr as i32);

        // No tag: the distribution decides; org-only cannot leave.
        let bare = json!({"distribution": 0});
        let a = json!({"type": "domain", "value": "x.example", "distribution": 5});
        assert_eq!(
            draft_from_attribute(&bare, &a).unwrap_err().field,
            "distribution"
        );
        let all = json!({"distribution": 3});
        let (d, _) = draft_from_attribute(&all, &a).unwrap();
        assert_eq!(d.marking.unwrap().tlp, Tlp::Clear as i32);
        let red = json!({"Tag": [{"name": "tlp:red"}]});
        assert_eq!(draft_from_attribute(&red, &a).unwrap_err().field, "Tag");
        let white = json!({"Tag": [{"name": "TLP:WHITE"}]});
        assert_eq!(
            draft_from_attribute(&white, &a)
                .unwrap()
                .0
                .marking
                .unwrap()
                .tlp,
            Tlp::Clear as i32
        );
    }
}
