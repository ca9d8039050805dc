//! Indicator decode + validation, and the draft normalisation publishers'
//! input goes through. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use threatmesh::model::{prepare_draft, validate_indicator};
use threatmesh::proto::v1::{Indicator, IndicatorDraft};

fuzz_target!(|data: &[u8]| {
    if let Ok(ind) = Indicator::decode(data) {
        let _ = validate_indicator(&ind, 1_700_000_000_000);
    }
    if let Ok(draft) = IndicatorDraft::decode(data)
        && let Ok(prepared) = prepare_draft(&draft, 1_700_000_000_000)
    {
        // What normalisation produced must itself be accepted again.
        let again = prepare_draft(&prepared, 1_700_000_000_000);
        assert!(again.is_ok(), "normalised draft refused: {again:?}");
    }
});
