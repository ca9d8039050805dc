//! Sharing policy documents (TOML) as admins apply them. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use threatmesh::policy::parse_policy;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_policy(text);
    }
});
