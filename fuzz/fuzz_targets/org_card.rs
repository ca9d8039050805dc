//! Org card parsing: self-signed cards travel through the mesh from
//! partners. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use threatmesh::identity::open_card;
use threatmesh::proto::v1::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = Envelope::decode(data) {
        let _ = open_card(&env);
    }
});
