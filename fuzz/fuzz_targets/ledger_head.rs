//! Signed ledger heads from partners: verify, decode, compare with the head
//! held. Must never panic, and accept nothing no one signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use threatmesh::audit::witness::{Witnessed, check_succession, open_head};
use threatmesh::model::OrgId;
use threatmesh::proto::v1::{Envelope, LedgerHead};
use threatmesh::signing::KeyDirectory;

fuzz_target!(|data: &[u8]| {
    let org = OrgId::parse("a.example").expect("org");
    if let Ok(env) = Envelope::decode(data) {
        assert!(open_head(&env, &KeyDirectory::default(), &org).is_err());
    }
    if let Ok(head) = LedgerHead::decode(data) {
        let held = Witnessed {
            rows: 10,
            head_hash: vec![1; 32],
        };
        let _ = check_succession(Some(&held), 10, &head);
        let _ = threatmesh::audit::witness::check_own(&head, 12, Some(&[1; 32]));
    }
});
