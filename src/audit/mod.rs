//! The audit ledger's hash chain: what every row commits to, and how a
//! sequence of rows is checked. Pure; the store appends and reads rows.
//!
//! Row `n` stores `hash_n = SHA-256("threatmesh-audit-v1" ‖ hash_{n-1} ‖ n ‖
//! at_ms ‖ each field, length-prefixed)`, with 32 zero bytes before row 1. An
//! edited row breaks its own hash; a deleted or reordered row breaks the link
//! of the row after it; a deleted tail no longer matches the recorded head.

mod entries;
pub mod witness;

use ring::digest::{Context, SHA256};

/// Kinds of events the ledger records.
pub mod event {
    /// An indicator was released to a partner.
    pub const SENT: &str = "sent";
    /// An indicator was withheld from a partner.
    pub const WITHHELD: &str = "withheld";
    /// An indicator published here was stored.
    pub const PUBLISHED: &str = "published";
    /// An indicator from a partner was accepted.
    pub const ACCEPTED: &str = "accepted";
    /// An envelope from a partner was refused.
    pub const REJECTED: &str = "rejected";
    /// A policy version was applied.
    pub const POLICY_APPLIED: &str = "policy-applied";
    /// A partner was registered or its card updated.
    pub const PEER_REGISTERED: &str = "peer-registered";
    /// A partner was bound to a policy.
    pub const PEER_POLICY: &str = "peer-policy";
    /// A partner was suspended, resumed or removed.
    pub const PEER_STATE: &str = "peer-state";
    /// One of our certificates was revoked.
    pub const CERT_REVOKED: &str = "cert-revoked";
    /// A certificate of our own org was issued or first seen.
    pub const CERT_ISSUED: &str = "cert-issued";
    /// An envelope signed by an unknown key was put in quarantine.
    pub const QUARANTINED: &str = "quarantined";
    /// A quarantined envelope was dropped: its key never arrived.
    pub const QUARANTINE_EXPIRED: &str = "quarantine-expired";
    /// A card of another org was accepted (from an introducer, or approved).
    pub const CARD_ACCEPTED: &str = "card-accepted";
    /// A card of another org is waiting for approval.
    pub const CARD_PENDING: &str = "card-pending";
    /// A newer card of a known org replaced the one held.
    pub const CARD_UPDATED: &str = "card-updated";
    /// A card was refused (not signed by the org's trusted key).
    pub const CARD_REFUSED: &str = "card-refused";
    /// Our own signing key was rotated or a retired key revoked.
    pub const SIGNING_KEY: &str = "signing-key";
    /// Our CRL was signed for export.
    pub const CRL_SIGNED: &str = "crl-signed";
    /// A partner's CRL was imported.
    pub const CRL_IMPORTED: &str = "crl-imported";
    /// A partner's endpoint or introducer flag was changed.
    pub const PEER_UPDATED: &str = "peer-updated";
    /// An operator reset our cursor in a partner's log.
    pub const CURSOR_RESET: &str = "cursor-reset";
    /// An operator asked to re-decide our log for a partner (`peer resend`).
    pub const RESEND: &str = "resend";
    /// Our store was restored from a backup; our log has a new identity.
    pub const STORE_RESTORED: &str = "store-restored";
    /// A partner's log changed identity; our cursor in it starts again.
    pub const LOG_CHANGED: &str = "log-changed";
    /// A partner's signed ledger head disagreed with one we hold.
    pub const LEDGER_WITNESS: &str = "ledger-witness";
    /// An admin exported indicators (all, or a partner's policy view).
    pub const EXPORTED: &str = "exported";
    /// One of our publishers reported a sighting (our report for the day).
    pub const SIGHTED: &str = "sighted";
    /// A sighting from a partner was accepted.
    pub const SIGHTING_ACCEPTED: &str = "sighting-accepted";
    /// A sighting was sent to a partner (towards the origin).
    pub const SIGHTING_SENT: &str = "sighting-sent";
    /// A sighting was withheld from a partner by its policy.
    pub const SIGHTING_WITHHELD: &str = "sighting-withheld";
    /// A sighting was refused: one a partner sent us, or one of ours the
    /// partner refused.
    pub const SIGHTING_REFUSED: &str = "sighting-refused";
    /// A statistics report was sent to a partner.
    pub const STATISTICS_SENT: &str = "statistics-sent";
    /// A statistics report was withheld from a partner by its policy.
    pub const STATISTICS_WITHHELD: &str = "statistics-withheld";
    /// A statistics report from a partner was accepted.
    pub const STATISTICS_ACCEPTED: &str = "statistics-accepted";
    /// A statistics report was refused (one a partner sent us, or one of
    /// ours the partner refused).
    pub const STATISTICS_REFUSED: &str = "statistics-refused";
}

/// One ledger entry before it is chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// One of [`event`].
    pub event: &'static str,
    /// Who acted: `node`, a SPIFFE id, or `cli:<user>`.
    pub actor: String,
    /// The partner concerned, or "".
    pub partner: String,
    /// What it is about: `origin/id#version`, a policy `name@version`, an org.
    pub subject: String,
    /// The deciding rule, or "".
    pub rule: String,
    /// Reason or other detail.
    pub detail: String,
}

/// A stored ledger row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When it was appended (Unix ms).
    pub at_ms: i64,
    /// The entry.
    pub entry: AuditEntryOwned,
    /// Hash of the previous row (zeros for row 1).
    pub prev_hash: Vec<u8>,
    /// This row's hash.
    pub hash: Vec<u8>,
}

/// [`AuditEntry`] as read back (event as owned text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntryOwned {
    /// Event name.
    pub event: String,
    /// Actor.
    pub actor: String,
    /// Partner.
    pub partner: String,
    /// Subject.
    pub subject: String,
    /// Rule.
    pub rule: String,
    /// Detail.
    pub detail: String,
}

/// The hash before the first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash row `seq` commits to.
#[allow(clippy::too_many_arguments)]
pub fn row_hash(
    prev: &[u8],
    seq: u64,
    at_ms: i64,
    event: &str,
    actor: &str,
    partner: &str,
    subject: &str,
    rule: &str,
    detail: &str,
) -> [u8; 32] {
    let mut c = Context::new(&SHA256);
    c.update(b"threatmesh-audit-v1");
    c.update(&(prev.len() as u64).to_be_bytes());
    c.update(prev);
    c.update(&seq.to_be_bytes());
    c.update(&at_ms.to_be_bytes());
    for f in [event, actor, partner, subject, rule, detail] {
        c.update(&(f.len() as u64).to_be_bytes());
        c.update(f.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit ledger broken at row {seq}: {reason}")]
pub struct ChainBreak {
    /// First bad row (for a missing tail: the first missing row).
    pub seq: u64,
    /// What is wrong.
    pub reason: String,
}

/// Checks rows (in stored order) against each other and against the
/// recorded head (`head_seq`, `head_hash`). Returns the number of rows.
pub fn verify_chain(rows: &[AuditRow], head: Option<(u64, Vec<u8>)>) -> Result<u64, ChainBreak> {
    let mut prev: Vec<u8> = GENESIS.to_vec();
    for (i, r) in rows.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        if r.seq != expected_seq {
            return Err(ChainBreak {
                seq: expected_seq.min(r.seq),
                reason: format!(
                    "expected row {expected_seq} but found row {} (a row was deleted or reordered)",
                    r.seq
                ),
            });
        }
        if r.prev_hash != prev {
            return Err(ChainBreak {
                seq: r.seq,
                reason:
                    "does not link to the row before it (a row was deleted, inserted or reordered)"
                        .into(),
            });
        }
        let e = &r.entry;
        let h = row_hash(
            &r.prev_hash,
            r.seq,
            r.at_ms,
            &e.event,
            &e.actor,
            &e.partner,
            &e.subject,
            &e.rule,
            &e.detail,
        );
        if h.as_slice() != r.hash.as_slice() {
            return Err(ChainBreak {
                seq: r.seq,
                reason: "contents do not match its hash (the row was edited)".into(),
            });
        }
        prev = r.hash.clone();
    }
    let n = rows.len() as u64;
    match head {
        Some((seq, hash)) if seq != n || hash != prev => Err(ChainBreak {
            seq: (n + 1).min(seq),
            reason: format!(
                "the ledger head records {seq} rows but {n} remain (rows were removed from the end)"
            ),
        }),
        None if n > 0 => Err(ChainBreak {
            seq: 1,
            reason: "rows exist but the ledger head is missing".into(),
        }),
        _ => Ok(n),
    }
}

/// The ledger records of one batch (released to a partner, accepted from
/// one, published together), one row per distinct decision (event, actor,
/// partner, rule, detail) naming every indicator it covers, in the order
/// first seen: every decision stays on record, at one hash-chained row per
/// decision kind and batch instead of one per indicator.
pub fn coalesce(entries: Vec<AuditEntry>) -> Vec<AuditEntry> {
    let mut out: Vec<AuditEntry> = Vec::new();
    for e in entries {
        match out.iter_mut().find(|o| {
            o.event == e.event
                && o.actor == e.actor
                && o.partner == e.partner
                && o.rule == e.rule
                && o.detail == e.detail
        }) {
            Some(o) => {
                o.subject.push(' ');
                o.subject.push_str(&e.subject);
            }
            None => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntryOwned {
                    event: "sent".into(),
                    actor: "node".into(),
                    partner: "b.example".into(),
                    subject: format!("a.example/{seq}#1"),
                    rule: "tlp-clear".into(),
                    detail: String::new(),
                };
                let h = row_hash(
                    &prev,
                    seq,
                    1000 + seq as i64,
                    &entry.event,
                    &entry.actor,
                    &entry.partner,
                    &entry.subject,
                    &entry.rule,
                    &entry.detail,
                );
                let row = AuditRow {
                    seq,
                    at_ms: 1000 + seq as i64,
                    entry,
                    prev_hash: prev.clone(),
                    hash: h.to_vec(),
                };
                prev = h.to_vec();
                row
            })
            .collect()
    }

    fn head(rows: &[AuditRow]) -> Option<(u64, Vec<u8>)> {
        rows.last().map(|r| (r.seq, r.hash.clone()))
    }

    #[test]
    fn intact_chain_verifies() {
        let rows = chain(5);
        assert_eq!(verify_chain(&rows, head(&rows)), Ok(5));
        assert_eq!(verify_chain(&[], None), Ok(0));
    }

    #[test]
    fn edits_deletions_reorders_and_truncation_are_named() {
        let rows = chain(5);
        let h = head(&rows);
        let mut edited = rows.clone();
        edited[2].entry.rule = "tlp-red-named".into();
        assert_eq!(verify_chain(&edited, h.clone()).unwrap_err().seq, 3);

        let mut deleted = rows.clone();
        deleted.remove(1);
        assert_eq!(verify_chain(&deleted, h.clone()).unwrap_err().seq, 2);

        let mut swapped = rows.clone();
        swapped.swap(1, 3);
        assert_eq!(verify_chain(&swapped, h.clone()).unwrap_err().seq, 2);

        let truncated = rows[..3].to_vec();
        let e = verify_chain(&truncated, h).unwrap_err();
        assert_eq!(e.seq, 4);
        assert!(e.reason.contains("removed from the end"));
    }

    fn entry(event: &'static str, rule: &str, subject: &str) -> AuditEntry {
        AuditEntry {
            event,
            actor: "node".into(),
            partner: "b.example".into(),
            subject: subject.into(),
            rule: rule.into(),
            detail: "policy p@1".into(),
        }
    }

    #[test]
    fn a_batch_has_one_ledger_row_per_decision_naming_every_indicator() {
        let rows = coalesce(vec![
            entry(event::SENT, "tlp-clear", "a/1#1"),
            entry(event::WITHHELD, "tlp-ceiling", "a/2#1"),
            entry(event::SENT, "tlp-clear", "a/3#1"),
            entry(event::SENT, "tlp-green-community", "a/4#1"),
        ]);
        let got: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| (r.event, r.rule.as_str(), r.subject.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (event::SENT, "tlp-clear", "a/1#1 a/3#1"),
                (event::WITHHELD, "tlp-ceiling", "a/2#1"),
                (event::SENT, "tlp-green-community", "a/4#1"),
            ]
        );
    }
}
