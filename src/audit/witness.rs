//! Witnessed ledger heads. A node signs "my ledger has N rows ending in
//! hash H" with its org key and gives it to partners, who keep it. A ledger
//! later cut (fewer rows) or rewritten (another hash at a row a partner
//! holds) then disagrees with what its partners hold: they notice when they
//! next ask for a head (each request names the rows they hold, and the
//! answer carries the hash at that row as the ledger holds it now), and the
//! node's own `audit verify --against` notices with heads they export.
//! Pure: verification and comparison only.

use prost::Message;

use crate::model::OrgId;
use crate::proto::v1::{Envelope, LedgerHead};
use crate::signing::{KeyDirectory, LEDGER_HEAD_PAYLOAD_TYPE, OrgSigningKey, verify};

/// A head as a witness keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// Rows in the ledger when it was signed.
    pub rows: u64,
    /// Hash of its last row ([`super::GENESIS`] for an empty ledger).
    pub head_hash: Vec<u8>,
}

/// Signs our ledger head (`rows`, `head_hash`), with the hash of row
/// `checkpoint.0` as our ledger holds it now.
pub fn seal_head(
    key: &OrgSigningKey,
    org: &OrgId,
    head: Witnessed,
    checkpoint: (u64, Vec<u8>),
    now_ms: i64,
) -> Envelope {
    let head = LedgerHead {
        org_id: org.to_string(),
        rows: head.rows,
        head_hash: head.head_hash,
        signed_unix_ms: now_ms,
        checkpoint_rows: checkpoint.0,
        checkpoint_hash: checkpoint.1,
    };
    key.seal(LEDGER_HEAD_PAYLOAD_TYPE, head.encode_to_vec())
}

/// Verifies a head's signature with `keys`, then decodes it and checks it is
/// `org`'s, signed by a key of `org`.
pub fn open_head(env: &Envelope, keys: &KeyDirectory, org: &OrgId) -> Result<LedgerHead, String> {
    let (payload, key) = verify(env, LEDGER_HEAD_PAYLOAD_TYPE, keys).map_err(|e| e.to_string())?;
    if &key.org != org {
        return Err(format!(
            "ledger head of {org} signed by a key of {}",
            key.org
        ));
    }
    let head = LedgerHead::decode(payload).map_err(|e| format!("ledger head: {e}"))?;
    if head.org_id != org.as_str() {
        return Err(format!(
            "ledger head names {} but comes from {org}",
            head.org_id.chars().take(253).collect::<String>()
        ));
    }
    Ok(head)
}

/// Whether `new`, answered to a request naming `asked` rows, agrees with
/// the latest head `held` of the same org: the ledger has not lost rows,
/// and the row we hold has the hash we hold. The error says which.
pub fn check_succession(
    held: Option<&Witnessed>,
    asked: u64,
    new: &LedgerHead,
) -> Result<(), String> {
    let Some(held) = held else {
        return Ok(());
    };
    if new.rows < held.rows {
        return Err(format!(
            "its ledger went back from {} rows to {} (rows were removed)",
            held.rows, new.rows
        ));
    }
    if new.checkpoint_rows != asked {
        return Err(format!(
            "asked for the hash of row {asked}, it answered for row {}",
            new.checkpoint_rows
        ));
    }
    if asked == held.rows && new.checkpoint_hash != held.head_hash {
        return Err(format!(
            "row {} no longer has the hash it signed before (the ledger was rewritten)",
            held.rows
        ));
    }
    if new.rows == held.rows && new.head_hash != held.head_hash {
        return Err(format!(
            "two different ledgers of {} rows were signed (the ledger was rewritten)",
            held.rows
        ));
    }
    Ok(())
}

/// Whether a head of our own ledger that a partner kept agrees with our
/// ledger now: `ours` = (rows now, our hash at the head's row if we still
/// have it).
pub fn check_own(head: &LedgerHead, rows_now: u64, hash_at: Option<&[u8]>) -> Result<(), String> {
    if head.rows > rows_now {
        return Err(format!(
            "a partner holds our head of {} rows but the ledger has {rows_now} (rows {}..{} were removed)",
            head.rows,
            rows_now + 1,
            head.rows
        ));
    }
    match hash_at {
        Some(h) if h == head.head_hash.as_slice() => Ok(()),
        _ => Err(format!(
            "row {} differs from the head we signed for a partner (the ledger was rewritten at or before row {})",
            head.rows, head.rows
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(rows: u64, hash: u8, checkpoint: (u64, u8)) -> LedgerHead {
        LedgerHead {
            org_id: "a.example".into(),
            rows,
            head_hash: vec![hash; 32],
            signed_unix_ms: 0,
            checkpoint_rows: checkpoint.0,
            checkpoint_hash: vec![checkpoint.1; 32],
        }
    }

    #[test]
    fn a_head_must_extend_the_one_held() {
        let held = Witnessed {
            rows: 10,
            head_hash: vec![1; 32],
        };
        assert!(check_succession(None, 0, &head(3, 9, (0, 0))).is_ok());
        assert!(check_succession(Some(&held), 10, &head(12, 2, (10, 1))).is_ok());
        let cut = check_succession(Some(&held), 10, &head(8, 2, (10, 1))).unwrap_err();
        assert!(cut.contains("removed"), "{cut}");
        let rewritten = check_succession(Some(&held), 10, &head(12, 2, (10, 7))).unwrap_err();
        assert!(rewritten.contains("rewritten"), "{rewritten}");
        let dodged = check_succession(Some(&held), 10, &head(12, 2, (0, 0))).unwrap_err();
        assert!(dodged.contains("asked for the hash of row 10"), "{dodged}");
        let forked = check_succession(Some(&held), 10, &head(10, 3, (10, 1))).unwrap_err();
        assert!(forked.contains("two different ledgers"), "{forked}");
    }

    #[test]
    fn our_own_head_must_match_the_ledger_now() {
        let h = head(5, 4, (0, 0));
        assert!(check_own(&h, 9, Some(&[4; 32])).is_ok());
        assert!(check_own(&h, 4, None).unwrap_err().contains("removed"));
        assert!(
            check_own(&h, 9, Some(&[5; 32]))
                .unwrap_err()
                .contains("rewritten")
        );
    }

    #[test]
    fn a_head_opens_only_with_its_orgs_key() {
        let (key, _) = OrgSigningKey::generate().unwrap();
        let org = OrgId::parse("a.example").unwrap();
        let env = seal_head(
            &key,
            &org,
            Witnessed {
                rows: 2,
                head_hash: vec![1; 32],
            },
            (1, vec![2; 32]),
            5,
        );
        let mut keys = KeyDirectory::default();
        keys.insert(crate::signing::KnownKey::unbounded(
            org.clone(),
            key.key_id().into(),
            key.public_key().to_vec(),
        ))
        .unwrap();
        let h = open_head(&env, &keys, &org).unwrap();
        assert_eq!((h.rows, h.checkpoint_rows), (2, 1));
        let other = OrgId::parse("b.example").unwrap();
        assert!(open_head(&env, &keys, &other).is_err());
        let mut tampered = env.clone();
        tampered.payload[3] ^= 1;
        assert!(open_head(&tampered, &keys, &org).is_err());
    }
}
