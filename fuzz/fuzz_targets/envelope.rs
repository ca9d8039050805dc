//! Envelope decode + verify + indicator decode + validation: what a link
//! does with every delivery from a partner. Must never panic; anything it
//! accepts must have been signed by the one known key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use threatmesh::model::{OrgId, validate_indicator};
use threatmesh::proto::v1::Envelope;
use threatmesh::signing::{KeyDirectory, KnownKey, OrgSigningKey, open_indicator};

/// A fixed key (from a fixed PKCS#8 document would tie the corpus to it;
/// a fresh key per process is enough: no input can carry a valid signature
/// of it, so nothing may be accepted).
fn keys() -> &'static KeyDirectory {
    static KEYS: std::sync::OnceLock<KeyDirectory> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let (key, _) = OrgSigningKey::generate().expect("key");
        let mut d = KeyDirectory::default();
        d.insert(KnownKey {
            key_id: key.key_id().into(),
            org: OrgId::parse("a.example").expect("org"),
            public_key: key.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .expect("insert");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(env) = Envelope::decode(data) else {
        return;
    };
    if let Ok(ind) = open_indicator(&env, keys()) {
        panic!("accepted an envelope no one signed: {ind:?}");
    }
    // The validation a verified indicator goes through, on whatever the
    // payload decodes to.
    if let Ok(ind) = threatmesh::proto::v1::Indicator::decode(env.payload.as_slice()) {
        let _ = validate_indicator(&ind, 1_700_000_000_000);
    }
});
