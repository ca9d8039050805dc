//! The domain model: organisation ids, indicator validation and
//! normalisation, TLP labels, sightings. Pure: no I/O, no clock (callers pass `now`).

mod indicator;
mod org;
mod sighting;

pub use indicator::{
    KIND_NAMES, MAX_CLOCK_SKEW_MS, MAX_DESCRIPTION_LEN, MAX_TAGS, TLP_NAMES, ValidationError,
    dated_ahead, guess_kind, is_iso3166_alpha2, kind_name, normalise_value, parse_kind, parse_tlp,
    prepare_draft, tlp_name, validate_content, validate_indicator, validate_marking,
};
pub use org::{OrgId, OrgIdError};
pub use sighting::{
    DAY_MS, MAX_SIGHTING_PATH, SightingDraft, merge_sighting, prepare_sighting, validate_sighting,
    window_of,
};
