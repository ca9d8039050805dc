//! Counting for statistics reports, pure: periods, the cells one indicator
//! adds to, calibrated noise and suppression, the checks a received report
//! must pass, and the sum of many reports.
//!
//! Noise is the Laplace mechanism, per cell: one indicator changes each
//! cell it falls in by one, so a cell's count has sensitivity 1 and noise
//! of scale 1/epsilon makes that cell epsilon-differentially private. An
//! indicator falls in several cells (its total, kind, TLP, each tag and
//! jurisdiction), so a whole report spends epsilon once per cell the
//! indicator touches. The noise of a cell is drawn from a keyed hash of
//! the node's secret, the period and the cell — the same every time that
//! report is made again — so partners cannot average it away by asking
//! repeatedly, nor two partners with different epsilons by pooling (their
//! noise differs only in scale). Noisy counts are rounded, floored at 0,
//! and cells below the minimum count are left out after the noise (a
//! decision on the exact count would itself leak it).

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{DAY_MS, kind_name, tlp_name};
use crate::proto::v1::{Indicator, StatisticsCell, StatisticsReport};

/// Measures: what was counted.
pub const MEASURES: [&str; 3] = ["published", "received", "sighted"];
/// Dimensions a count is broken down by.
pub const DIMENSIONS: [&str; 5] = ["total", "kind", "tlp", "tag", "jurisdiction"];
/// Most cells in one report.
pub const MAX_CELLS: usize = 4096;
/// Longest cell value (a tag's limit).
pub const MAX_VALUE_LEN: usize = 64;
/// Highest count a cell may hold.
pub const MAX_CELL_COUNT: u64 = 1 << 40;
/// With this probability a cell's noise is within [`noise_bound`].
pub const NOISE_CONFIDENCE: f64 = 0.999_999;

/// A report's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A week from Monday 00:00 UTC.
    Week,
}

impl Period {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
        }
    }

    /// The period named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            _ => None,
        }
    }

    /// Its length.
    pub fn length_ms(self) -> i64 {
        match self {
            Period::Day => DAY_MS,
            Period::Week => 7 * DAY_MS,
        }
    }

    /// The start of the period holding `ms`.
    pub fn start_of(self, ms: i64) -> i64 {
        match self {
            Period::Day => ms.div_euclid(DAY_MS) * DAY_MS,
            // 1970-01-01 was a Thursday: Mondays are 4 days after the epoch.
            Period::Week => {
                let monday = 4 * DAY_MS;
                (ms - monday).div_euclid(7 * DAY_MS) * 7 * DAY_MS + monday
            }
        }
    }
}

/// Counts per (measure, dimension, value).
pub type Tally = BTreeMap<(String, String, String), u64>;

/// Counts per period (kind, start).
pub type Tallies = BTreeMap<(Period, i64), Tally>;

/// Adds `ind` to the cells of `measure`: its total, kind, TLP, each of its
/// tags and jurisdictions (each once).
pub fn count(tally: &mut Tally, measure: &str, ind: &Indicator) {
    let mut add = |dimension: &str, value: &str| {
        *tally
            .entry((measure.into(), dimension.into(), value.into()))
            .or_default() += 1;
    };
    add("total", "");
    add("kind", kind_name(ind.kind).unwrap_or("unknown"));
    add(
        "tlp",
        tlp_name(ind.marking.as_ref().map_or(0, |m| m.tlp)).unwrap_or("unknown"),
    );
    let tags: BTreeSet<&str> = ind.tags.iter().map(String::as_str).collect();
    for t in tags {
        add("tag", t);
    }
    let places: BTreeSet<&str> = ind.jurisdictions.iter().map(String::as_str).collect();
    for j in places {
        add("jurisdiction", j);
    }
}

/// How a report is made for a partner: noise and suppression.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Disclosure {
    /// Laplace noise scale 1/epsilon per cell; 0 = exact.
    pub epsilon: f64,
    /// Cells below this (after noise) are left out.
    pub min_count: u64,
}

/// The largest noise a cell gets with probability [`NOISE_CONFIDENCE`] at
/// `epsilon`: P(|Laplace(1/e)| > t) = exp(-t e).
pub fn noise_bound(epsilon: f64) -> f64 {
    if epsilon <= 0.0 {
        0.0
    } else {
        -(1.0 - NOISE_CONFIDENCE).ln() / epsilon
    }
}

/// The cells of `tally` as disclosed: each count with its noise (drawn by
/// keyed hash of `secret`, `period_key` and the cell), rounded and floored
/// at 0, and cells under the minimum left out.
pub fn disclose(
    tally: &Tally,
    how: Disclosure,
    secret: &[u8],
    period_key: &str,
) -> Vec<StatisticsCell> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    tally
        .iter()
        .filter_map(|((measure, dimension, value), &n)| {
            let n = if how.epsilon > 0.0 {
                let tag = ring::hmac::sign(
                    &key,
                    format!("{period_key}\n{measure}\n{dimension}\n{value}").as_bytes(),
                );
                let mut b = [0u8; 8];
                b.copy_from_slice(&tag.as_ref()[..8]);
                let noisy = n as f64 + laplace(u64::from_be_bytes(b), how.epsilon);
                noisy.round().max(0.0) as u64
            } else {
                n
            };
            (n >= how.min_count.max(1)).then(|| StatisticsCell {
                measure: measure.clone(),
                dimension: dimension.clone(),
                value: value.clone(),
                count: n,
            })
        })
        .collect()
}

/// Laplace(0, 1/epsilon) by inverse transform of 64 random bits.
fn laplace(bits: u64, epsilon: f64) -> f64 {
    // u uniform in (-0.5, 0.5), never exactly ±0.5.
    let u = ((bits >> 11) as f64 + 0.5) / (1u64 << 53) as f64 - 0.5;
    -u.signum() * (1.0 - 2.0 * u.abs()).ln() / epsilon
}

/// Checks a decoded, signature-verified report received at `now`; the
/// error names the field.
pub fn check_report(r: &StatisticsReport, now: i64) -> Result<(), String> {
    let period = Period::parse(&r.period)
        .ok_or_else(|| format!("period: '{}' is not day or week", r.period))?;
    if period.start_of(r.period_start_unix_ms) != r.period_start_unix_ms {
        return Err(format!(
            "period_start_unix_ms: {} is not the start of a {}",
            r.period_start_unix_ms, r.period
        ));
    }
    if r.period_start_unix_ms > now + crate::model::MAX_CLOCK_SKEW_MS {
        return Err("period_start_unix_ms: a period that has not begun".into());
    }
    if r.made_unix_ms > now + crate::model::MAX_CLOCK_SKEW_MS {
        return Err(format!("made_unix_ms: {} is in the future", r.made_unix_ms));
    }
    if !(r.epsilon.is_finite() && r.epsilon >= 0.0) {
        return Err("epsilon: must be 0 or positive".into());
    }
    if r.hop_limit > crate::model::MAX_SIGHTING_PATH as u32 {
        return Err(format!(
            "hop_limit: {} is over {}",
            r.hop_limit,
            crate::model::MAX_SIGHTING_PATH
        ));
    }
    if r.cells.len() > MAX_CELLS {
        return Err(format!(
            "cells: {} cells, at most {MAX_CELLS}",
            r.cells.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, c) in r.cells.iter().enumerate() {
        if !MEASURES.contains(&c.measure.as_str()) {
            return Err(format!(
                "cells[{i}].measure: '{}' is not one of {MEASURES:?}",
                c.measure.chars().take(64).collect::<String>()
            ));
        }
        if !DIMENSIONS.contains(&c.dimension.as_str()) {
            return Err(format!(
                "cells[{i}].dimension: '{}' is not one of {DIMENSIONS:?}",
                c.dimension.chars().take(64).collect::<String>()
            ));
        }
        if c.value.len() > MAX_VALUE_LEN || c.value.chars().any(char::is_control) {
            return Err(format!(
                "cells[{i}].value: at most {MAX_VALUE_LEN} bytes, no control characters"
            ));
        }
        if c.count > MAX_CELL_COUNT {
            return Err(format!(
                "cells[{i}].count: {} is over {MAX_CELL_COUNT}",
                c.count
            ));
        }
        if !seen.insert((&c.measure, &c.dimension, &c.value)) {
            return Err(format!(
                "cells[{i}]: {}/{}/{} appears twice",
                c.measure, c.dimension, c.value
            ));
        }
    }
    Ok(())
}

/// One row of the mesh-wide view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summed {
    /// The count summed over the reports.
    pub count: u64,
    /// Who contributed to it.
    pub contributors: BTreeSet<String>,
}

/// The sum of `reports` per (measure, dimension, value), keeping only the
/// dimensions in `by` (all when empty).
pub fn sum(
    reports: &[StatisticsReport],
    by: &[String],
) -> BTreeMap<(String, String, String), Summed> {
    let mut out: BTreeMap<(String, String, String), Summed> = BTreeMap::new();
    for r in reports {
        for c in &r.cells {
            if !by.is_empty() && !by.contains(&c.dimension) {
                continue;
            }
            let e = out
                .entry((c.measure.clone(), c.dimension.clone(), c.value.clone()))
                .or_insert_with(|| Summed {
                    count: 0,
                    contributors: BTreeSet::new(),
                });
            e.count = e.count.saturating_add(c.count);
            e.contributors.insert(r.reporter_org.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::{IndicatorKind, Marking, Tlp};

    fn ind(kind: IndicatorKind, tlp: Tlp, tags: &[&str], places: &[&str]) -> Indicator {
        Indicator {
            kind: kind as i32,
            marking: Some(Marking {
                tlp: tlp as i32,
                ..Default::default()
            }),
            tags: tags.iter().map(|s| s.to_string()).collect(),
            jurisdictions: places.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn cell(t: &Tally, m: &str, d: &str, v: &str) -> u64 {
        t.get(&(m.into(), d.into(), v.into())).copied().unwrap_or(0)
    }

    #[test]
    fn periods_start_at_midnight_and_on_mondays() {
        // 2026-12-06 is a Sunday; its week began on Monday 2026-11-30.
        let sunday_noon = 1_796_558_400_000;
        assert_eq!(Period::Day.start_of(sunday_noon), 1_796_515_200_000);
        assert_eq!(Period::Week.start_of(sunday_noon), 1_795_996_800_000);
        assert_eq!(
            crate::clock::rfc3339(1_795_996_800_000),
            "2026-11-30T00:00:00.000Z"
        );
        assert_eq!(Period::Week.start_of(1_795_996_800_000), 1_795_996_800_000);
    }

    #[test]
    fn an_indicator_adds_one_to_each_cell_it_falls_in() {
        let mut t = Tally::new();
        count(
            &mut t,
            "published",
            &ind(IndicatorKind::Ipv4, Tlp::Red, &["a", "b", "a"], &["DE"]),
        );
        count(
            &mut t,
            "published",
            &ind(IndicatorKind::Domain, Tlp::Red, &["a"], &[]),
        );
        assert_eq!(cell(&t, "published", "total", ""), 2);
        assert_eq!(cell(&t, "published", "tlp", "RED"), 2);
        assert_eq!(cell(&t, "published", "kind", "ipv4"), 1);
        assert_eq!(
            cell(&t, "published", "tag", "a"),
            2,
            "a tag counts once per indicator"
        );
        assert_eq!(cell(&t, "published", "jurisdiction", "DE"), 1);
    }

    #[test]
    fn exact_cells_below_the_minimum_are_left_out() {
        let mut t = Tally::new();
        for _ in 0..5 {
            count(
                &mut t,
                "received",
                &ind(IndicatorKind::Ipv4, Tlp::Clear, &[], &[]),
            );
        }
        count(
            &mut t,
            "received",
            &ind(IndicatorKind::Url, Tlp::Clear, &[], &[]),
        );
        let cells = disclose(
            &t,
            Disclosure {
                epsilon: 0.0,
                min_count: 3,
            },
            b"k",
            "day 0",
        );
        let names: Vec<_> = cells
            .iter()
            .map(|c| (c.dimension.as_str(), c.value.as_str(), c.count))
            .collect();
        assert_eq!(
            names,
            [("kind", "ipv4", 5), ("tlp", "CLEAR", 6), ("total", "", 6)]
        );
    }

    #[test]
    fn noise_stays_within_its_bound_is_centred_and_is_the_same_when_asked_again() {
        let mut t = Tally::new();
        for _ in 0..100 {
            count(
                &mut t,
                "published",
                &ind(IndicatorKind::Ipv4, Tlp::Green, &[], &[]),
            );
        }
        let how = Disclosure {
            epsilon: 0.5,
            min_count: 0,
        };
        let bound = noise_bound(0.5);
        let mut total = 0.0;
        let runs = 2000;
        for run in 0..runs {
            let cells = disclose(&t, how, format!("secret {run}").as_bytes(), "day 0");
            for c in &cells {
                let off = c.count as f64 - 100.0;
                assert!(off.abs() <= bound + 0.5, "{off} beyond {bound}");
                total += off;
            }
            // Made again with the same secret: the same noise.
            assert_eq!(
                cells,
                disclose(&t, how, format!("secret {run}").as_bytes(), "day 0")
            );
        }
        // Mean of 6,000 Laplace(2) draws: standard error about 0.04.
        let mean = total / (runs as f64 * 3.0);
        assert!(mean.abs() < 0.3, "mean noise {mean}");
        // And it is noise: not every draw the same.
        let a = disclose(&t, how, b"one", "day 0");
        let b = disclose(&t, how, b"two", "day 0");
        let c = disclose(&t, how, b"one", "day 1");
        assert!(a != b || a != c);
    }

    #[test]
    fn reports_sum_per_cell_naming_contributors() {
        let r = |org: &str, n: u64| StatisticsReport {
            reporter_org: org.into(),
            cells: vec![
                StatisticsCell {
                    measure: "published".into(),
                    dimension: "total".into(),
                    value: String::new(),
                    count: n,
                },
                StatisticsCell {
                    measure: "published".into(),
                    dimension: "kind".into(),
                    value: "ipv4".into(),
                    count: n,
                },
            ],
            ..Default::default()
        };
        let all = sum(&[r("a.example", 2), r("b.example", 3)], &[]);
        let total = &all[&("published".into(), "total".into(), String::new())];
        assert_eq!(total.count, 5);
        assert_eq!(total.contributors.len(), 2);
        let kinds = sum(&[r("a.example", 2)], &["kind".into()]);
        assert_eq!(kinds.len(), 1);
    }

    #[test]
    fn a_received_report_is_checked_field_by_field() {
        let day = Period::Day.start_of(1_796_558_400_000);
        let good = StatisticsReport {
            reporter_org: "a.example".into(),
            period: "day".into(),
            period_start_unix_ms: day,
            made_unix_ms: day + 10,
            cells: vec![StatisticsCell {
                measure: "published".into(),
                dimension: "total".into(),
                value: String::new(),
                count: 1,
            }],
            ..Default::default()
        };
        let now = day + 1000;
        check_report(&good, now).unwrap();
        let mut r = good.clone();
        r.period = "month".into();
        assert!(check_report(&r, now).unwrap_err().starts_with("period:"));
        let mut r = good.clone();
        r.period_start_unix_ms += 1;
        assert!(
            check_report(&r, now)
                .unwrap_err()
                .starts_with("period_start_unix_ms")
        );
        let mut r = good.clone();
        r.cells[0].measure = "guessed".into();
        assert!(
            check_report(&r, now)
                .unwrap_err()
                .starts_with("cells[0].measure")
        );
        let mut r = good.clone();
        r.cells.push(r.cells[0].clone());
        assert!(check_report(&r, now).unwrap_err().contains("appears twice"));
        let mut r = good.clone();
        r.epsilon = f64::NAN;
        assert!(check_report(&r, now).unwrap_err().starts_with("epsilon"));
    }
}
