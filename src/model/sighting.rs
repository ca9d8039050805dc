//! Sightings: "we saw this indicator N times on this day". Validation of
//! what a publisher asks to report and of a signed report from a partner,
//! and the merge of a day's reports. Pure: callers pass `now`.

use super::indicator::invalid;
use super::{MAX_CLOCK_SKEW_MS, OrgId, ValidationError, is_iso3166_alpha2};
use crate::proto::v1::Sighting;

/// One window: a UTC day.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;
/// A publisher may report sightings of the last this many days.
pub const MAX_SIGHTING_AGE_DAYS: i64 = 30;
/// A partner's report is refused when its window is older than this
/// (bounds what a partner can make us keep; leaves time for a report that
/// waited for a key on its way).
pub const MAX_RECEIVED_AGE_DAYS: i64 = 90;
/// Highest count in one report (STIX 2.1's limit for a sighting's count).
pub const MAX_COUNT: u64 = 999_999_999;
/// Longest sector text.
pub const MAX_SECTOR_LEN: usize = 64;
/// Most orgs a sighting may pass through (sighter included).
pub const MAX_SIGHTING_PATH: usize = 16;

/// The start of the UTC day holding `ms`.
pub fn window_of(ms: i64) -> i64 {
    ms.div_euclid(DAY_MS) * DAY_MS
}

/// What a publisher reports seeing (the node fills the rest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingDraft {
    /// Origin of the indicator seen.
    pub origin: OrgId,
    /// Its id.
    pub id: String,
    /// Times seen (at least 1).
    pub count: u64,
    /// First and last seen, Unix ms.
    pub first_seen_ms: i64,
    /// Last seen.
    pub last_seen_ms: i64,
    /// Optional sector disclosed.
    pub sector: String,
    /// Optional country disclosed.
    pub country: String,
}

/// Checks a publisher's report at `now`: 0 count means 1, 0 times mean
/// now; both times in one UTC day, not ahead of now, not older than
/// [`MAX_SIGHTING_AGE_DAYS`].
pub fn prepare_sighting(mut d: SightingDraft, now: i64) -> Result<SightingDraft, ValidationError> {
    if d.count == 0 {
        d.count = 1;
    }
    if d.last_seen_ms == 0 {
        d.last_seen_ms = now;
    }
    if d.first_seen_ms == 0 {
        d.first_seen_ms = d.last_seen_ms;
    }
    if d.last_seen_ms > now + MAX_CLOCK_SKEW_MS {
        return Err(invalid(
            "last_seen_unix_ms",
            format!("{} is in the future", d.last_seen_ms),
        ));
    }
    if now - d.first_seen_ms > MAX_SIGHTING_AGE_DAYS * DAY_MS {
        return Err(invalid(
            "first_seen_unix_ms",
            format!("older than {MAX_SIGHTING_AGE_DAYS} days; report recent sightings only"),
        ));
    }
    uuid::Uuid::parse_str(&d.id).map_err(|_| invalid("indicator_id", "is not a UUID"))?;
    check_fields(
        d.count,
        d.first_seen_ms,
        d.last_seen_ms,
        &d.sector,
        &d.country,
    )?;
    Ok(d)
}

fn check_fields(
    count: u64,
    first: i64,
    last: i64,
    sector: &str,
    country: &str,
) -> Result<(), ValidationError> {
    if count == 0 || count > MAX_COUNT {
        return Err(invalid(
            "count",
            format!("{count} is outside 1-{MAX_COUNT}"),
        ));
    }
    if first > last {
        return Err(invalid("first_seen_unix_ms", "is after last_seen_unix_ms"));
    }
    if window_of(first) != window_of(last) {
        return Err(invalid(
            "first_seen_unix_ms",
            "first and last seen fall on different UTC days; report each day on its own",
        ));
    }
    if sector.chars().count() > MAX_SECTOR_LEN || sector.chars().any(char::is_control) {
        return Err(invalid(
            "sector",
            format!("at most {MAX_SECTOR_LEN} characters, no control characters"),
        ));
    }
    if !country.is_empty() && !is_iso3166_alpha2(country) {
        return Err(invalid(
            "country",
            format!("'{country}' is not an ISO 3166-1 alpha-2 code (upper case, e.g. DE)"),
        ));
    }
    Ok(())
}

/// Checks a decoded, signature-verified report received at `now`: every
/// field well formed, its window consistent, not dated ahead and not older
/// than [`MAX_RECEIVED_AGE_DAYS`].
pub fn validate_sighting(s: &Sighting, now: i64) -> Result<(), ValidationError> {
    OrgId::parse(&s.sighter_org).map_err(|e| invalid("sighter_org", e.to_string()))?;
    OrgId::parse(&s.indicator_origin).map_err(|e| invalid("indicator_origin", e.to_string()))?;
    uuid::Uuid::parse_str(&s.indicator_id).map_err(|_| invalid("indicator_id", "is not a UUID"))?;
    if s.indicator_version == 0 {
        return Err(invalid("indicator_version", "must be at least 1"));
    }
    check_fields(
        s.count,
        s.first_seen_unix_ms,
        s.last_seen_unix_ms,
        &s.sector,
        &s.country,
    )?;
    if s.window_start_unix_ms != window_of(s.first_seen_unix_ms) {
        return Err(invalid(
            "window_start_unix_ms",
            "is not the start of the UTC day of first_seen_unix_ms",
        ));
    }
    if s.reported_unix_ms < s.last_seen_unix_ms {
        return Err(invalid("reported_unix_ms", "is before last_seen_unix_ms"));
    }
    if s.reported_unix_ms > now + MAX_CLOCK_SKEW_MS {
        return Err(invalid(
            "reported_unix_ms",
            format!("{} is in the future", s.reported_unix_ms),
        ));
    }
    if now - s.window_start_unix_ms > MAX_RECEIVED_AGE_DAYS * DAY_MS {
        return Err(invalid(
            "window_start_unix_ms",
            format!("older than {MAX_RECEIVED_AGE_DAYS} days"),
        ));
    }
    Ok(())
}

/// Our report for a day after adding `d` to `held` (the report we already
/// signed for that indicator and day, if any): counts add up, first and
/// last seen widen, disclosures take the newest non-empty value.
pub fn merge_sighting(
    own: &OrgId,
    key_id: &str,
    version: u64,
    held: Option<&Sighting>,
    d: &SightingDraft,
    now: i64,
) -> Sighting {
    let (count, first, last, sector, country) = match held {
        Some(h) => (
            h.count.saturating_add(d.count).min(MAX_COUNT),
            h.first_seen_unix_ms.min(d.first_seen_ms),
            h.last_seen_unix_ms.max(d.last_seen_ms),
            if d.sector.is_empty() {
                h.sector.clone()
            } else {
                d.sector.clone()
            },
            if d.country.is_empty() {
                h.country.clone()
            } else {
                d.country.clone()
            },
        ),
        None => (
            d.count,
            d.first_seen_ms,
            d.last_seen_ms,
            d.sector.clone(),
            d.country.clone(),
        ),
    };
    // Strictly after the report it replaces, even within one millisecond.
    let reported = held
        .map_or(now, |h| now.max(h.reported_unix_ms + 1))
        .max(last);
    Sighting {
        sighter_org: own.to_string(),
        key_id: key_id.to_string(),
        indicator_origin: d.origin.to_string(),
        indicator_id: d.id.clone(),
        indicator_version: version,
        count,
        first_seen_unix_ms: first,
        last_seen_unix_ms: last,
        window_start_unix_ms: window_of(first),
        reported_unix_ms: reported,
        sector,
        country,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;
    const ID: &str = "6f1c0f5e-7d0a-4f53-9a52-0b6c4b1e2d3f";

    fn draft(count: u64, first: i64, last: i64) -> SightingDraft {
        SightingDraft {
            origin: OrgId::parse("a.example").unwrap(),
            id: ID.into(),
            count,
            first_seen_ms: first,
            last_seen_ms: last,
            sector: String::new(),
            country: String::new(),
        }
    }

    #[test]
    fn a_draft_defaults_to_one_sighting_now_and_names_the_field_at_fault() {
        let d = prepare_sighting(draft(0, 0, 0), NOW).unwrap();
        assert_eq!((d.count, d.first_seen_ms, d.last_seen_ms), (1, NOW, NOW));
        let day = window_of(NOW);
        let e = prepare_sighting(draft(1, day - 1, day + 1), NOW).unwrap_err();
        assert_eq!(e.field, "first_seen_unix_ms");
        assert!(e.message.contains("different UTC days"), "{e}");
        let e = prepare_sighting(draft(1, 0, NOW + 3_600_000), NOW).unwrap_err();
        assert_eq!(e.field, "last_seen_unix_ms");
        let e = prepare_sighting(draft(1, 0, NOW - 31 * DAY_MS), NOW).unwrap_err();
        assert_eq!(e.field, "first_seen_unix_ms");
        let mut bad = draft(1, 0, 0);
        bad.country = "XX".into();
        assert_eq!(prepare_sighting(bad, NOW).unwrap_err().field, "country");
        let mut bad = draft(1, 0, 0);
        bad.id = "not-a-uuid".into();
        assert_eq!(
            prepare_sighting(bad, NOW).unwrap_err().field,
            "indicator_id"
        );
        let e = prepare_sighting(draft(MAX_COUNT + 1, 0, 0), NOW).unwrap_err();
        assert_eq!(e.field, "count");
    }

    #[test]
    fn reports_of_one_day_add_up_and_each_replaces_the_one_before() {
        let own = OrgId::parse("d.example").unwrap();
        let day = window_of(NOW);
        let first = merge_sighting(&own, "k", 1, None, &draft(2, day + 10, day + 20), NOW);
        assert_eq!(first.window_start_unix_ms, day);
        validate_sighting(&first, NOW).unwrap();
        let second = merge_sighting(&own, "k", 2, Some(&first), &draft(3, day + 5, day + 8), NOW);
        assert_eq!(second.count, 5);
        assert_eq!(
            (second.first_seen_unix_ms, second.last_seen_unix_ms),
            (day + 5, day + 20)
        );
        assert!(second.reported_unix_ms > first.reported_unix_ms);
        assert_eq!(second.indicator_version, 2);
        validate_sighting(&second, NOW).unwrap();
    }

    #[test]
    fn a_received_report_must_be_consistent() {
        let own = OrgId::parse("d.example").unwrap();
        let good = merge_sighting(&own, "k", 1, None, &draft(1, NOW - 10, NOW - 5), NOW);
        let mut s = good.clone();
        s.window_start_unix_ms += DAY_MS;
        assert_eq!(
            validate_sighting(&s, NOW).unwrap_err().field,
            "window_start_unix_ms"
        );
        let mut s = good.clone();
        s.reported_unix_ms = NOW + 3_600_000;
        assert_eq!(
            validate_sighting(&s, NOW).unwrap_err().field,
            "reported_unix_ms"
        );
        let mut s = good.clone();
        s.sighter_org = "Not An Org".into();
        assert_eq!(validate_sighting(&s, NOW).unwrap_err().field, "sighter_org");
        let mut s = good.clone();
        s.count = 0;
        assert_eq!(validate_sighting(&s, NOW).unwrap_err().field, "count");
        assert_eq!(
            validate_sighting(&good, NOW + 91 * DAY_MS)
                .unwrap_err()
                .field,
            "window_start_unix_ms"
        );
    }
}
