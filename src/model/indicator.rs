//! Indicator validation and normalisation.
//!
//! Publishers send drafts; [`prepare_draft`] turns a draft into normalised
//! content or an error naming the field. Receivers run [`validate_indicator`]
//! on every decoded indicator, so a partner cannot slip in content that our
//! own publish path would have refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::OrgId;
use crate::proto::v1::{Indicator, IndicatorDraft, IndicatorKind, Marking, Tlp};

/// Highest indicator version accepted: a "far-future" version would block
/// every later update by the origin.
pub const MAX_VERSION: u64 = 1 << 32;

/// How far in the future a timestamp may lie before it is refused (clock skew).
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
/// Longest accepted indicator value (long URLs exist; unbounded ones are abuse).
pub const MAX_VALUE_LEN: usize = 2048;
/// Most tags on one indicator.
pub const MAX_TAGS: usize = 32;
/// Longest tag or kill-chain phase.
pub const MAX_TAG_LEN: usize = 64;
/// Longest free-text description.
pub const MAX_DESCRIPTION_LEN: usize = 4096;
/// Most named recipients in a marking.
pub const MAX_RECIPIENTS: usize = 64;
/// Most relay hops an origin may allow.
pub const MAX_HOP_LIMIT: u32 = 8;

/// A field that failed validation and why. `field` uses the proto field path
/// (`marking.recipients[1]`) so an operator can find it in their input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending field.
    pub field: String,
    /// What is wrong and, where possible, what would be right.
    pub message: String,
}

pub(super) fn invalid(field: impl Into<String>, message: impl Into<String>) -> ValidationError {
    ValidationError {
        field: field.into(),
        message: message.into(),
    }
}

/// Names used on the command line, in JSON input and in output.
pub const KIND_NAMES: [(&str, IndicatorKind); 9] = [
    ("ipv4", IndicatorKind::Ipv4),
    ("ipv6", IndicatorKind::Ipv6),
    ("cidr", IndicatorKind::Cidr),
    ("domain", IndicatorKind::Domain),
    ("url", IndicatorKind::Url),
    ("email", IndicatorKind::Email),
    ("sha256", IndicatorKind::Sha256),
    ("sha1", IndicatorKind::Sha1),
    ("md5", IndicatorKind::Md5),
];

/// The name of an indicator kind, or `None` for unspecified/unknown values.
pub fn kind_name(kind: i32) -> Option<&'static str> {
    KIND_NAMES
        .iter()
        .find(|(_, k)| *k as i32 == kind)
        .map(|(n, _)| *n)
}

/// Parses a kind name (`ipv4`, `sha256`, ...), case-insensitively.
pub fn parse_kind(s: &str) -> Option<IndicatorKind> {
    let s = s.trim().to_ascii_lowercase();
    KIND_NAMES.iter().find(|(n, _)| *n == s).map(|(_, k)| *k)
}

/// The kind a bare value most likely is, for look-ups where no kind is
/// given: an address or prefix, an e-mail address, a URL, a hash by its
/// length in hex, else a domain.
pub fn guess_kind(value: &str) -> IndicatorKind {
    let v = value.trim();
    let hex = !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit());
    if v.contains('/') && !v.contains("://") {
        IndicatorKind::Cidr
    } else if v.parse::<Ipv4Addr>().is_ok() {
        IndicatorKind::Ipv4
    } else if v.trim_matches(['[', ']']).parse::<Ipv6Addr>().is_ok() {
        IndicatorKind::Ipv6
    } else if v.contains("://") {
        IndicatorKind::Url
    } else if v.contains('@') {
        IndicatorKind::Email
    } else if hex && v.len() == 64 {
        IndicatorKind::Sha256
    } else if hex && v.len() == 40 {
        IndicatorKind::Sha1
    } else if hex && v.len() == 32 {
        IndicatorKind::Md5
    } else {
        IndicatorKind::Domain
    }
}

/// TLP 2.0 labels as written by people.
pub const TLP_NAMES: [(&str, Tlp); 5] = [
    ("CLEAR", Tlp::Clear),
    ("GREEN", Tlp::Green),
    ("AMBER", Tlp::Amber),
    ("AMBER+STRICT", Tlp::AmberStrict),
    ("RED", Tlp::Red),
];

/// The TLP 2.0 label of a wire value, or `None` for unspecified/unknown.
pub fn tlp_name(tlp: i32) -> Option<&'static str> {
    TLP_NAMES
        .iter()
        .find(|(_, t)| *t as i32 == tlp)
        .map(|(n, _)| *n)
}

/// Parses `CLEAR`, `TLP:GREEN`, `amber+strict` and the like.
pub fn parse_tlp(s: &str) -> Option<Tlp> {
    let up = s.trim().to_ascii_uppercase();
    let up = up.strip_prefix("TLP:").unwrap_or(&up);
    let up = if up == "AMBER-STRICT" || up == "AMBER_STRICT" {
        "AMBER+STRICT"
    } else {
        up
    };
    TLP_NAMES.iter().find(|(n, _)| *n == up).map(|(_, t)| *t)
}

/// Normalises an indicator value of a given kind, or says why it is not one.
///
/// ```
/// use threatmesh::model::normalise_value;
/// use threatmesh::proto::v1::IndicatorKind;
/// assert_eq!(normalise_value(IndicatorKind::Domain, "Evil.EXAMPLE.").unwrap(), "evil.example");
/// assert_eq!(normalise_value(IndicatorKind::Ipv6, "2001:DB8:0:0::1").unwrap(), "2001:db8::1");
/// assert!(normalise_value(IndicatorKind::Cidr, "10.0.0.5/24").is_err());
/// ```
pub fn normalise_value(kind: IndicatorKind, raw: &str) -> Result<String, String> {
    // Values are taken as given, never cleaned: a parser that drops a NUL
    // or another control character would store a different (often
    // broader) indicator than the one the publisher meant.
    if let Some((at, c)) = raw.char_indices().find(|(_, c)| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X} at byte {at}; values are not cleaned, remove it",
            u32::from(c)
        ));
    }
    let v = raw.trim();
    if v.is_empty() {
        return Err("is empty".into());
    }
    if v.len() > MAX_VALUE_LEN {
        return Err(format!("is longer than {MAX_VALUE_LEN} characters"));
    }
    match kind {
        IndicatorKind::Unspecified => Err("kind is not set".into()),
        IndicatorKind::Ipv4 => v
            .parse::<Ipv4Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("'{v}' is not an IPv4 address in dotted-quad form")),
        IndicatorKind::Ipv6 => v
            .parse::<Ipv6Addr>()
            .map(|a| a.to_string())
            .map_err(|_| format!("'{v}' is not an IPv6 address")),
        IndicatorKind::Cidr => normalise_cidr(v),
        IndicatorKind::Domain => normalise_domain(v),
        IndicatorKind::Url => normalise_url(v),
        IndicatorKind::Email => normalise_email(v),
        IndicatorKind::Sha256 => normalise_hex(v, 64, "SHA-256"),
        IndicatorKind::Sha1 => normalise_hex(v, 40, "SHA-1"),
        IndicatorKind::Md5 => normalise_hex(v, 32, "MD5"),
    }
}

fn normalise_cidr(v: &str) -> Result<String, String> {
    let Some((addr, len)) = v.split_once('/') else {
        return Err(format!(
            "'{v}' is not a CIDR block: expected address/prefix-length"
        ));
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("'{v}': '{addr}' is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u32 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("'{v}': prefix length must be 0-{max}"))?;
    let network = match addr {
        IpAddr::V4(a) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    };
    // Host bits set usually means a typo; refusing beats silently widening or
    // narrowing what partners will block.
    if network != addr {
        return Err(format!(
            "'{v}' has host bits set; did you mean '{network}/{len}'?"
        ));
    }
    Ok(format!("{network}/{len}"))
}

fn normalise_domain(v: &str) -> Result<String, String> {
    if !v.is_ascii() {
        return Err(format!(
            "'{v}' contains non-ASCII characters; give the IDNA (xn--) form"
        ));
    }
    let d = v.to_ascii_lowercase();
    let d = d.strip_suffix('.').unwrap_or(&d);
    if d.len() > 253 {
        return Err(format!("'{v}' is longer than 253 characters"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(format!(
            "'{v}' needs at least two labels (a bare TLD or host name is not shared)"
        ));
    }
    for label in &labels {
        // Underscores appear in real malicious host names (_dmarc, srv records).
        if !super::org::is_dns_label(label, true) {
            return Err(format!("'{v}': label '{label}' is not a valid DNS label"));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "'{v}' looks like an IP address; use kind ipv4 instead"
        ));
    }
    Ok(d.to_string())
}

fn normalise_url(v: &str) -> Result<String, String> {
    let u = url::Url::parse(v).map_err(|e| format!("'{v}' is not a URL: {e}"))?;
    if u.host_str().is_none() {
        return Err(format!("'{v}' has no host"));
    }
    Ok(u.to_string())
}

fn normalise_email(v: &str) -> Result<String, String> {
    let Some((local, domain)) = v.rsplit_once('@') else {
        return Err(format!("'{v}' is not an e-mail address: no '@'"));
    };
    if local.is_empty() || local.len() > 64 {
        return Err(format!("'{v}': local part must be 1-64 characters"));
    }
    if local
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '@')
    {
        return Err(format!(
            "'{v}': local part has whitespace, control characters or '@'"
        ));
    }
    let domain = normalise_domain(domain).map_err(|e| format!("domain of {e}"))?;
    Ok(format!("{local}@{domain}"))
}

fn normalise_hex(v: &str, len: usize, name: &str) -> Result<String, String> {
    if v.len() != len || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "'{v}' is not a {name} hash: expected {len} hex digits"
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// Checks a marking for the fields TLP 2.0 requires and for contradictions.
/// An inconsistent marking is refused here, and denied again by the policy
/// function, so it can never be interpreted loosely.
pub fn validate_marking(m: Option<&Marking>) -> Result<(), ValidationError> {
    let Some(m) = m else {
        return Err(invalid(
            "marking",
            "is required (TLP 2.0: CLEAR, GREEN, AMBER, AMBER+STRICT or RED)",
        ));
    };
    let tlp = Tlp::try_from(m.tlp)
        .ok()
        .filter(|t| *t != Tlp::Unspecified)
        .ok_or_else(|| {
            invalid(
                "marking.tlp",
                format!(
                    "unknown or unset TLP value {} (use CLEAR, GREEN, AMBER, AMBER+STRICT or RED)",
                    m.tlp
                ),
            )
        })?;
    if m.recipients.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "marking.recipients",
            format!("at most {MAX_RECIPIENTS} recipients"),
        ));
    }
    for (i, r) in m.recipients.iter().enumerate() {
        OrgId::parse(r).map_err(|e| invalid(format!("marking.recipients[{i}]"), e.to_string()))?;
        if m.recipients[..i].contains(r) {
            return Err(invalid(
                format!("marking.recipients[{i}]"),
                format!("'{r}' is listed twice"),
            ));
        }
    }
    match tlp {
        Tlp::Red | Tlp::AmberStrict if m.recipients.is_empty() => {
            return Err(invalid(
                "marking.recipients",
                format!(
                    "TLP:{} requires at least one named recipient org",
                    tlp_name(m.tlp).unwrap_or("?")
                ),
            ));
        }
        Tlp::Red | Tlp::AmberStrict if m.may_forward || m.hop_limit > 0 => {
            return Err(invalid(
                "marking.may_forward",
                format!(
                    "TLP:{} may never be forwarded",
                    tlp_name(m.tlp).unwrap_or("?")
                ),
            ));
        }
        Tlp::Clear | Tlp::Green if !m.recipients.is_empty() => {
            return Err(invalid(
                "marking.recipients",
                format!(
                    "TLP:{} is not addressed to named orgs; use AMBER, AMBER+STRICT or RED to name recipients",
                    tlp_name(m.tlp).unwrap_or("?")
                ),
            ));
        }
        _ => {}
    }
    if m.hop_limit > 0 && !m.may_forward {
        return Err(invalid(
            "marking.hop_limit",
            "is set but may_forward is false",
        ));
    }
    if m.hop_limit > MAX_HOP_LIMIT {
        return Err(invalid(
            "marking.hop_limit",
            format!("at most {MAX_HOP_LIMIT}"),
        ));
    }
    Ok(())
}

/// The content fields shared by drafts and signed indicators.
#[derive(Debug, Clone, PartialEq)]
struct Content {
    kind: i32,
    value: String,
    confidence: u32,
    tags: Vec<String>,
    jurisdictions: Vec<String>,
    valid_from: i64,
    valid_until: i64,
    kill_chain_phases: Vec<String>,
    description: String,
}

fn normalise_content(c: &Content) -> Result<Content, ValidationError> {
    let kind = IndicatorKind::try_from(c.kind)
        .ok()
        .filter(|k| *k != IndicatorKind::Unspecified)
        .ok_or_else(|| {
            invalid(
                "kind",
                format!(
                    "unknown or unset kind {} (use one of: {})",
                    c.kind,
                    KIND_NAMES.map(|(n, _)| n).join(", ")
                ),
            )
        })?;
    let value = normalise_value(kind, &c.value).map_err(|m| invalid("value", m))?;
    if c.confidence > 100 {
        return Err(invalid(
            "confidence",
            format!("{} is outside 0-100", c.confidence),
        ));
    }
    let tags = normalise_labels("tags", &c.tags, MAX_TAGS)?;
    let kill_chain_phases = normalise_labels("kill_chain_phases", &c.kill_chain_phases, 16)?;
    let mut jurisdictions = Vec::with_capacity(c.jurisdictions.len());
    for (i, j) in c.jurisdictions.iter().enumerate() {
        let up = j.trim().to_ascii_uppercase();
        if !is_iso3166_alpha2(&up) {
            return Err(invalid(
                format!("jurisdictions[{i}]"),
                format!("'{j}' is not an ISO 3166-1 alpha-2 country code"),
            ));
        }
        if !jurisdictions.contains(&up) {
            jurisdictions.push(up);
        }
    }
    if c.valid_from < 0 || c.valid_until < 0 {
        return Err(invalid(
            "valid_from_unix_ms",
            "timestamps must not be negative",
        ));
    }
    if c.valid_until != 0 && c.valid_until <= c.valid_from {
        return Err(invalid(
            "valid_until_unix_ms",
            "must be later than valid_from_unix_ms",
        ));
    }
    if c.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(invalid(
            "description",
            format!("longer than {MAX_DESCRIPTION_LEN} characters"),
        ));
    }
    if c.description
        .chars()
        .any(|ch| ch.is_control() && ch != '\n' && ch != '\t')
    {
        return Err(invalid("description", "contains control characters"));
    }
    Ok(Content {
        kind: kind as i32,
        value,
        confidence: c.confidence,
        tags,
        jurisdictions,
        valid_from: c.valid_from,
        valid_until: c.valid_until,
        kill_chain_phases,
        description: c.description.clone(),
    })
}

fn normalise_labels(
    field: &str,
    items: &[String],
    max: usize,
) -> Result<Vec<String>, ValidationError> {
    if items.len() > max {
        return Err(invalid(field, format!("at most {max} entries")));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let t = t.trim();
        if t.is_empty() || t.chars().count() > MAX_TAG_LEN || t.chars().any(char::is_control) {
            return Err(invalid(
                format!("{field}[{i}]"),
                format!("must be 1-{MAX_TAG_LEN} printable characters"),
            ));
        }
        if !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Validates and normalises a publisher's draft. `valid_from` 0 becomes `now_ms`.
/// Returns a draft whose content is in normal form.
pub fn prepare_draft(d: &IndicatorDraft, now_ms: i64) -> Result<IndicatorDraft, ValidationError> {
    validate_marking(d.marking.as_ref())?;
    let content = normalise_content(&Content {
        kind: d.kind,
        value: d.value.clone(),
        confidence: d.confidence,
        tags: d.tags.clone(),
        jurisdictions: d.jurisdictions.clone(),
        valid_from: if d.valid_from_unix_ms == 0 {
            now_ms
        } else {
            d.valid_from_unix_ms
        },
        valid_until: d.valid_until_unix_ms,
        kill_chain_phases: d.kill_chain_phases.clone(),
        description: d.description.clone(),
    })?;
    if content.valid_from > now_ms + MAX_CLOCK_SKEW_MS {
        return Err(invalid(
            "valid_from_unix_ms",
            "lies more than 5 minutes in the future",
        ));
    }
    if !d.id.is_empty() && uuid::Uuid::parse_str(&d.id).is_err() {
        return Err(invalid("id", format!("'{}' is not a UUID", d.id)));
    }
    if d.revoked && d.id.is_empty() {
        return Err(invalid(
            "id",
            "a revocation must name the indicator it revokes (its id)",
        ));
    }
    Ok(IndicatorDraft {
        kind: content.kind,
        value: content.value,
        marking: d.marking.clone(),
        confidence: content.confidence,
        tags: content.tags,
        jurisdictions: content.jurisdictions,
        valid_from_unix_ms: content.valid_from,
        valid_until_unix_ms: content.valid_until,
        kill_chain_phases: content.kill_chain_phases,
        description: content.description,
        id: d.id.to_ascii_lowercase(),
        revoked: d.revoked,
    })
}

/// Validates a complete signed indicator, as decoded from verified bytes:
/// [`validate_content`], then [`dated_ahead`] on `now_ms` (one of our own
/// indicators, or a check with no way to wait: the time is an error like any
/// other).
pub fn validate_indicator(ind: &Indicator, now_ms: i64) -> Result<(), ValidationError> {
    validate_content(ind)?;
    match dated_ahead(ind, now_ms) {
        None => Ok(()),
        Some(_) => Err(invalid(
            "modified_unix_ms",
            "lies more than 5 minutes in the future",
        )),
    }
}

/// When an indicator dated ahead of `now_ms` by more than
/// [`MAX_CLOCK_SKEW_MS`] (its origin's clock is ahead of ours, or ours
/// behind) becomes acceptable by our clock; `None` if it is now. Only the
/// time is wrong, and time passes (or a clock is fixed): such an indicator
/// waits rather than being refused.
pub fn dated_ahead(ind: &Indicator, now_ms: i64) -> Option<i64> {
    let acceptable_at = ind.modified_unix_ms.saturating_sub(MAX_CLOCK_SKEW_MS);
    (acceptable_at > now_ms).then_some(acceptable_at)
}

/// Validates everything of a signed indicator that does not depend on the
/// time it is checked at. Content must already be in normal form: a node
/// never rewrites signed data, so anything not normalised by its origin is
/// refused rather than fixed.
pub fn validate_content(ind: &Indicator) -> Result<(), ValidationError> {
    OrgId::parse(&ind.origin_org).map_err(|e| invalid("origin_org", e.to_string()))?;
    if ind.key_id.is_empty() {
        return Err(invalid("key_id", "is empty"));
    }
    match uuid::Uuid::parse_str(&ind.id) {
        Ok(u) if u.hyphenated().to_string() == ind.id => {}
        _ => {
            return Err(invalid(
                "id",
                format!("'{}' is not a lower-case hyphenated UUID", ind.id),
            ));
        }
    }
    if ind.version == 0 || ind.version > MAX_VERSION {
        return Err(invalid(
            "version",
            format!("{} is outside 1-{MAX_VERSION}", ind.version),
        ));
    }
    if ind.created_unix_ms <= 0 || ind.modified_unix_ms < ind.created_unix_ms {
        return Err(invalid(
            "modified_unix_ms",
            "timestamps must be positive and modified must not precede created",
        ));
    }
    validate_marking(ind.marking.as_ref())?;
    let given = Content {
        kind: ind.kind,
        value: ind.value.clone(),
        confidence: ind.confidence,
        tags: ind.tags.clone(),
        jurisdictions: ind.jurisdictions.clone(),
        valid_from: ind.valid_from_unix_ms,
        valid_until: ind.valid_until_unix_ms,
        kill_chain_phases: ind.kill_chain_phases.clone(),
        description: ind.description.clone(),
    };
    let normal = normalise_content(&given)?;
    if normal.value != given.value {
        return Err(invalid(
            "value",
            format!(
                "'{}' is not in normal form ('{}')",
                given.value, normal.value
            ),
        ));
    }
    if normal != given {
        return Err(invalid(
            "tags",
            "tags, jurisdictions or kill-chain phases are not in normal form",
        ));
    }
    Ok(())
}

/// Officially assigned ISO 3166-1 alpha-2 codes.
const ISO3166_ALPHA2: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// Whether `code` (upper case) is an assigned ISO 3166-1 alpha-2 code.
pub fn is_iso3166_alpha2(code: &str) -> bool {
    code.len() == 2 && ISO3166_ALPHA2.split(' ').any(|c| c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marking(tlp: Tlp, recipients: &[&str]) -> Option<Marking> {
        Some(Marking {
            tlp: tlp as i32,
            recipients: recipients.iter().map(|s| s.to_string()).collect(),
            may_forward: false,
            hop_limit: 0,
        })
    }

    fn draft(kind: IndicatorKind, value: &str) -> IndicatorDraft {
        IndicatorDraft {
            kind: kind as i32,
            value: value.into(),
            marking: marking(Tlp::Green, &[]),
            confidence: 80,
            ..Default::default()
        }
    }

    #[test]
    fn bare_values_are_guessed_to_their_kind() {
        use IndicatorKind::*;
        for (v, k) in [
            ("192.0.2.1", Ipv4),
            ("2001:db8::1", Ipv6),
            ("198.51.100.0/24", Cidr),
            ("http://evil.example/a/b", Url),
            ("a@evil.example", Email),
            (&"a".repeat(64)[..], Sha256),
            (&"b".repeat(40)[..], Sha1),
            (&"c".repeat(32)[..], Md5),
            ("Evil.Example.", Domain),
            ("deadbeef", Domain),
        ] {
            assert_eq!(guess_kind(v), k, "{v}");
        }
    }

    #[test]
    fn country_list_is_complete() {
        assert_eq!(ISO3166_ALPHA2.split(' ').count(), 249);
        assert!(is_iso3166_alpha2("DE") && is_iso3166_alpha2("FR"));
        assert!(!is_iso3166_alpha2("XX") && !is_iso3166_alpha2("de"));
    }

    #[test]
    fn normalises_each_kind() {
        use IndicatorKind::*;
        let cases = [
            (Ipv4, " 192.0.2.1 ", "192.0.2.1"),
            (Ipv6, "2001:DB8::0:1", "2001:db8::1"),
            (Cidr, "198.51.100.0/24", "198.51.100.0/24"),
            (Cidr, "2001:db8::/32", "2001:db8::/32"),
            (Domain, "Evil.Example.", "evil.example"),
            (
                Url,
                "HTTP://Evil.Example:80/a b",
                "http://evil.example/a%20b",
            ),
            (Email, "Boss@Evil.Example", "Boss@evil.example"),
            (Sha256, &"AB".repeat(32), &"ab".repeat(32)),
            (Sha1, &"0f".repeat(20), &"0f".repeat(20)),
            (Md5, &"Cd".repeat(16), &"cd".repeat(16)),
        ];
        for (k, input, want) in cases {
            assert_eq!(
                normalise_value(k, input).as_deref(),
                Ok(want),
                "{k:?} {input}"
            );
        }
    }

    #[test]
    fn refuses_bad_values_naming_the_problem() {
        use IndicatorKind::*;
        for (k, v) in [
            (Ipv4, "256.1.1.1"),
            (Ipv4, "::1"),
            (Ipv6, "1.2.3.4"),
            (Cidr, "10.0.0.5/24"),
            (Cidr, "10.0.0.0/33"),
            (Cidr, "10.0.0.0"),
            (Domain, "localhost"),
            (Domain, "bad_-.ex ample"),
            (Domain, "10.0.0.1"),
            (Domain, "bücher.example"),
            (Url, "not a url"),
            (Email, "nobody"),
            (Sha256, "abc"),
            (Md5, &"z".repeat(32)),
            (Unspecified, "x"),
        ] {
            assert!(normalise_value(k, v).is_err(), "{k:?} {v}");
        }
        let e = normalise_value(Cidr, "10.0.0.5/24").unwrap_err();
        assert!(e.contains("10.0.0.0/24"), "{e}");
    }

    #[test]
    fn marking_rules() {
        assert!(validate_marking(None).is_err());
        assert!(validate_marking(marking(Tlp::Clear, &[]).as_ref()).is_ok());
        assert!(validate_marking(marking(Tlp::Red, &["b.example"]).as_ref()).is_ok());
        let e = validate_marking(marking(Tlp::Red, &[]).as_ref()).unwrap_err();
        assert_eq!(e.field, "marking.recipients");
        assert!(validate_marking(marking(Tlp::AmberStrict, &[]).as_ref()).is_err());
        assert!(validate_marking(marking(Tlp::Green, &["b.example"]).as_ref()).is_err());
        let e = validate_marking(marking(Tlp::Red, &["B.example"]).as_ref()).unwrap_err();
        assert_eq!(e.field, "marking.recipients[0]");
        let dup = validate_marking(marking(Tlp::Red, &["b.example", "b.example"]).as_ref());
        assert_eq!(dup.unwrap_err().field, "marking.recipients[1]");
        let mut m = marking(Tlp::Red, &["b.example"]).unwrap();
        m.may_forward = true;
        assert_eq!(
            validate_marking(Some(&m)).unwrap_err().field,
            "marking.may_forward"
        );
        let mut m = marking(Tlp::Amber, &[]).unwrap();
        m.tlp = 42;
        assert_eq!(validate_marking(Some(&m)).unwrap_err().field, "marking.tlp");
        let mut m = marking(Tlp::Green, &[]).unwrap();
        m.hop_limit = 2;
        assert_eq!(
            validate_marking(Some(&m)).unwrap_err().field,
            "marking.hop_limit"
        );
    }

    #[test]
    fn drafts_are_normalised_and_fields_named() {
        let now = 1_700_000_000_000;
        let mut d = draft(IndicatorKind::Domain, "EVIL.example");
        d.tags = vec![" phishing ".into(), "phishing".into()];
        d.jurisdictions = vec!["de".into()];
        let p = prepare_draft(&d, now).unwrap();
        assert_eq!(p.value, "evil.example");
        assert_eq!(p.tags, vec!["phishing"]);
        assert_eq!(p.jurisdictions, vec!["DE"]);
        assert_eq!(p.valid_from_unix_ms, now);

        let mut d = draft(IndicatorKind::Ipv4, "1.2.3.4");
        d.confidence = 101;
        assert_eq!(prepare_draft(&d, now).unwrap_err().field, "confidence");
        let mut d = draft(IndicatorKind::Ipv4, "1.2.3.4");
        d.jurisdictions = vec!["XX".into()];
        assert_eq!(
            prepare_draft(&d, now).unwrap_err().field,
            "jurisdictions[0]"
        );
        let mut d = draft(IndicatorKind::Ipv4, "1.2.3.4");
        d.valid_until_unix_ms = now - 1;
        assert_eq!(
            prepare_draft(&d, now).unwrap_err().field,
            "valid_until_unix_ms"
        );
        let d = draft(IndicatorKind::Ipv4, "nope");
        assert_eq!(prepare_draft(&d, now).unwrap_err().field, "value");
        let mut d = draft(IndicatorKind::Ipv4, "1.2.3.4");
        d.kind = 99;
        assert_eq!(prepare_draft(&d, now).unwrap_err().field, "kind");
    }

    #[test]
    fn received_indicators_must_already_be_normal() {
        let now = 1_700_000_000_000;
        let mut ind = Indicator {
            origin_org: "a.example".into(),
            key_id: "k".into(),
            id: uuid::Uuid::new_v4().to_string(),
            version: 1,
            created_unix_ms: now,
            modified_unix_ms: now,
            marking: marking(Tlp::Clear, &[]),
            kind: IndicatorKind::Domain as i32,
            value: "evil.example".into(),
            valid_from_unix_ms: now,
            ..Default::default()
        };
        assert!(validate_indicator(&ind, now).is_ok());
        ind.value = "EVIL.example".into();
        assert_eq!(validate_indicator(&ind, now).unwrap_err().field, "value");
        ind.value = "evil.example".into();
        ind.modified_unix_ms = now + MAX_CLOCK_SKEW_MS + 1;
        assert_eq!(
            validate_indicator(&ind, now).unwrap_err().field,
            "modified_unix_ms"
        );
        ind.modified_unix_ms = now;
        ind.version = MAX_VERSION + 1;
        assert_eq!(validate_indicator(&ind, now).unwrap_err().field, "version");
        ind.version = 1;
        ind.origin_org = "A".into();
        assert_eq!(
            validate_indicator(&ind, now).unwrap_err().field,
            "origin_org"
        );
    }

    #[test]
    fn tlp_names_parse_loosely_and_print_strictly() {
        assert_eq!(parse_tlp("tlp:amber+strict"), Some(Tlp::AmberStrict));
        assert_eq!(parse_tlp("AMBER-STRICT"), Some(Tlp::AmberStrict));
        assert_eq!(parse_tlp("white"), None);
        // Case and padding variants mean the label they spell, never a
        // weaker one; anything else is refused, not guessed.
        assert_eq!(parse_tlp("  Tlp:Amber "), Some(Tlp::Amber));
        assert_eq!(parse_tlp("amber_strict"), Some(Tlp::AmberStrict));
        for odd in [
            "AMBER STRICT",
            "AMBER+ STRICT",
            "AMBERSTRICT",
            "AMBER+",
            "RED\0",
            "TLP: RED",
            "TLP:TLP:RED",
            "",
        ] {
            assert_eq!(parse_tlp(odd), None, "{odd:?}");
        }
        assert_eq!(tlp_name(Tlp::Red as i32), Some("RED"));
        assert_eq!(tlp_name(77), None);
        assert_eq!(parse_kind("SHA256"), Some(IndicatorKind::Sha256));
    }
}
