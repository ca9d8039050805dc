//! The checks every delivery from a partner passes, in order: its path, the
//! envelope frame, the signature (before the payload is decoded), that the
//! signed origin starts the path, the content, then our ingress policy.
//! Pure, except [`admit_checked`], which asks the store whether a revoked
//! indicator is held.

use std::sync::Arc;

use prost::Message;

use crate::context::NodeContext;
use crate::model::{MAX_CLOCK_SKEW_MS, OrgId, dated_ahead, validate_content};
use crate::policy::{self, Decision, PartnerPolicy};
use crate::proto::v1::{Delivery, Envelope, Indicator};
use crate::refusal::{Refusal, RefusalKind};
use crate::signing::{
    INDICATOR_PAYLOAD_TYPE, KeyDirectory, KnownKey, open_verified, signer, verify_signature,
    verify_together,
};
use crate::store::{NewIndicator, StoreError};

/// Longest path accepted: more relays than this is a loop or an attack.
pub const MAX_PATH_LEN: usize = 16;

/// An envelope from a partner whose signature, content and path checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The indicator, decoded from exactly the verified bytes.
    pub indicator: Indicator,
    /// The envelope as received, to be stored byte for byte.
    pub envelope: Vec<u8>,
    /// Its path, origin first, ending at the partner that sent it.
    pub path: Vec<String>,
    /// Its sequence number at that partner.
    pub upstream_seq: u64,
}

fn malformed(why: String) -> Refusal {
    Refusal::new(RefusalKind::Malformed, why)
}

/// Checks the path of a delivery from `upstream`: 1 to [`MAX_PATH_LEN`]
/// valid org ids, no org twice, ending at the authenticated sender. `true`
/// when we are on it (an echo).
fn check_path(own: &OrgId, upstream: &OrgId, path: &[String]) -> Result<bool, Refusal> {
    let bad = |why: String| malformed(format!("path: {why}"));
    if path.is_empty() || path.len() > MAX_PATH_LEN {
        return Err(bad(format!(
            "{} hops; 1 to {MAX_PATH_LEN} are accepted",
            path.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for o in path {
        OrgId::parse(o).map_err(|e| bad(e.to_string()))?;
        if !seen.insert(o.as_str()) {
            return Err(bad(format!("{o} appears twice (a loop)")));
        }
    }
    if path.iter().any(|o| o == own.as_str()) {
        return Ok(true);
    }
    if path.last().map(String::as_str) != Some(upstream.as_str()) {
        return Err(bad(format!(
            "ends at {}, but it was sent by {upstream}",
            path.last().map(String::as_str).unwrap_or("")
        )));
    }
    Ok(false)
}

/// Checks one delivery from `upstream`: its path, then the envelope frame,
/// then the signature against the key directory (before the payload is
/// decoded), that the signed origin starts the path, and the content.
/// `None`: it passed through this node already (we are on its path), a copy
/// coming back round a loop, dropped unopened. Pure.
pub fn verify_delivery(
    own: &OrgId,
    upstream: &OrgId,
    d: &Delivery,
    keys: &KeyDirectory,
    now_ms: i64,
) -> Result<Option<Verified>, Refusal> {
    let Some((env, key)) = framed(own, upstream, d, keys)? else {
        return Ok(None);
    };
    verify_signature(&env, key)?;
    opened(d, &env, key, now_ms).map(Some)
}

/// The checks of [`verify_delivery`] before the signature: the path, the
/// envelope frame, and its signer (known, not revoked). `None`: an echo.
fn framed<'k>(
    own: &OrgId,
    upstream: &OrgId,
    d: &Delivery,
    keys: &'k KeyDirectory,
) -> Result<Option<(Envelope, &'k KnownKey)>, Refusal> {
    if check_path(own, upstream, &d.path)? {
        return Ok(None);
    }
    let env = Envelope::decode(&d.envelope[..])
        .map_err(|e| malformed(format!("envelope does not decode: {e}")))?;
    let key = signer(&env, INDICATOR_PAYLOAD_TYPE, keys)?;
    Ok(Some((env, key)))
}

/// The checks of [`verify_delivery`] after the signature verified: the
/// payload (decoded from exactly the signed bytes) agrees with its signer,
/// its origin starts the path, its content is valid and not dated ahead.
fn opened(d: &Delivery, env: &Envelope, key: &KnownKey, now_ms: i64) -> Result<Verified, Refusal> {
    let indicator = open_verified(env, key)?;
    if d.path.first().map(String::as_str) != Some(indicator.origin_org.as_str()) {
        return Err(malformed(format!(
            "path: starts at {}, but the signed origin is {}",
            d.path.first().map(String::as_str).unwrap_or(""),
            indicator.origin_org
        )));
    }
    validate_content(&indicator)
        .map_err(|e| malformed(format!("indicator {}: {e}", indicator.id)))?;
    if let Some(due_ms) = dated_ahead(&indicator, now_ms) {
        return Err(Refusal::ahead_of_clock(
            &indicator.key_id,
            due_ms,
            format!(
                "indicator {}: modified_unix_ms lies {} s ahead of our clock, more than the {} s \
                 skew allowed ({}'s clock is ahead, or ours behind); it waits until our clock reaches it",
                indicator.id,
                (indicator.modified_unix_ms - now_ms) / 1000,
                MAX_CLOCK_SKEW_MS / 1000,
                indicator.origin_org
            ),
        ));
    }
    Ok(Verified {
        indicator,
        envelope: d.envelope.to_vec(),
        path: d.path.clone(),
        upstream_seq: d.seq,
    })
}

/// [`verify_delivery`] for many deliveries, with their signatures checked
/// together ([`verify_together`]); when that fails (at least one bad
/// signature), each is checked alone, so every refusal is the one
/// [`verify_delivery`] gives. Pure.
pub fn verify_deliveries(
    own: &OrgId,
    upstream: &OrgId,
    deliveries: Vec<Delivery>,
    keys: &KeyDirectory,
    now_ms: i64,
) -> Vec<Checked> {
    let framed: Vec<_> = deliveries
        .iter()
        .map(|d| framed(own, upstream, d, keys))
        .collect();
    let signed: Vec<(&Envelope, &KnownKey)> = framed
        .iter()
        .filter_map(|f| match f {
            Ok(Some((env, key))) => Some((env, *key)),
            _ => None,
        })
        .collect();
    // Two signatures checked together already cost about 0.6 of two
    // checked alone (`threatmesh bench`'s batch primitive; measured with
    // batches of 1, 2, 4 and 8): only a lone one is checked alone.
    const BATCH_FROM: usize = 2;
    let all_good = signed.len() >= BATCH_FROM && verify_together(&signed);
    drop(signed);
    deliveries
        .into_iter()
        .zip(framed)
        .map(|(d, f)| {
            let r = f.and_then(|f| match f {
                Some((env, key)) => {
                    if !all_good {
                        verify_signature(&env, key)?;
                    }
                    opened(&d, &env, key, now_ms).map(Some)
                }
                None => Ok(None),
            });
            (d, r)
        })
        .collect()
}

/// Applies our ingress policy for `upstream` to a verified envelope. A
/// revocation of an indicator we hold (`held_earlier`) is always admitted.
/// Pure.
pub fn admit(
    own: &OrgId,
    upstream: &OrgId,
    v: Verified,
    policy: Option<&PartnerPolicy>,
    held_earlier: bool,
) -> Result<NewIndicator, Refusal> {
    // The path is origin first, sender last: the orgs after the origin are
    // the relay hops it took to reach us.
    let relay_hops = u32::try_from(v.path.len().saturating_sub(1)).unwrap_or(u32::MAX);
    let decision = policy::accept_retraction(&v.indicator, held_earlier)
        .unwrap_or_else(|| policy::ingress(own, &v.indicator, upstream, relay_hops, policy));
    let rule = match decision {
        Decision::Allow { rule } => rule,
        Decision::Deny { rule, reason } => {
            return Err(Refusal::new(
                RefusalKind::DeniedByRule,
                format!("ingress rule {rule}: {reason}"),
            ));
        }
    };
    Ok(NewIndicator {
        indicator: v.indicator,
        envelope: v.envelope,
        rule,
        path: v.path,
        upstream_seq: v.upstream_seq,
    })
}

/// What [`verify_delivery`] found, through [`admit`]: for a revocation it
/// first looks up whether we hold the indicator (a retraction of something
/// held passes ingress filters). `None`: an echo, dropped. The one step from
/// a verified envelope to a row, for live links and the quarantine alike.
pub async fn admit_checked(
    ctx: &NodeContext,
    upstream: &OrgId,
    verified: Result<Option<Verified>, Refusal>,
    policy: Option<&PartnerPolicy>,
) -> Result<Option<Result<NewIndicator, Refusal>>, StoreError> {
    let v = match verified {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(r) => return Ok(Some(Err(r))),
    };
    let held = v.indicator.revoked
        && ctx
            .store
            .latest_version(&v.indicator.origin_org, &v.indicator.id)
            .await?
            .is_some();
    Ok(Some(admit(&ctx.own, upstream, v, policy, held)))
}

/// A delivery with what [`verify_delivery`] found.
pub type Checked = (Delivery, Result<Option<Verified>, Refusal>);

/// Verifies deliveries on every core (signature checks dominate ingest).
pub async fn verify_all(
    own: &OrgId,
    upstream: &OrgId,
    deliveries: Vec<Delivery>,
    keys: Arc<KeyDirectory>,
    now: i64,
) -> Result<Vec<Checked>, tokio::task::JoinError> {
    let cores = crate::signing::cores();
    if deliveries.len() < 64 || cores == 1 {
        return Ok(verify_deliveries(own, upstream, deliveries, &keys, now));
    }
    let per = deliveries.len().div_ceil(cores);
    let mut chunks = Vec::new();
    let mut rest = deliveries;
    while !rest.is_empty() {
        let tail = rest.split_off(per.min(rest.len()));
        chunks.push(std::mem::replace(&mut rest, tail));
    }
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let (own, upstream, keys) = (own.clone(), upstream.clone(), keys.clone());
            tokio::task::spawn_blocking(move || {
                verify_deliveries(&own, &upstream, chunk, &keys, now)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.extend(t.await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`verify_delivery`] then [`admit`] (as for an indicator not held yet);
    /// `None` for an echo.
    fn check_delivery(
        own: &OrgId,
        upstream: &OrgId,
        d: &Delivery,
        keys: &KeyDirectory,
        policy: Option<&PartnerPolicy>,
        now_ms: i64,
    ) -> Result<Option<NewIndicator>, Refusal> {
        match verify_delivery(own, upstream, d, keys, now_ms)? {
            None => Ok(None),
            Some(v) => admit(own, upstream, v, policy, false).map(Some),
        }
    }
    use crate::proto::v1::{IndicatorKind, Marking, Tlp};
    use crate::rpc::refusal_code;
    use crate::signing::{INDICATOR_PAYLOAD_TYPE, KnownKey, OrgSigningKey};
    use tonic::Code;

    /// A domain indicator of `origin`, version 1, made at `now`.
    fn domain(origin: &OrgId, key: &OrgSigningKey, now: i64, tlp: Tlp, value: &str) -> Indicator {
        Indicator {
            origin_org: origin.to_string(),
            key_id: key.key_id().into(),
            id: uuid::Uuid::new_v4().to_string(),
            version: 1,
            created_unix_ms: now,
            modified_unix_ms: now,
            marking: Some(Marking {
                tlp: tlp as i32,
                ..Default::default()
            }),
            kind: IndicatorKind::Domain as i32,
            value: value.into(),
            valid_from_unix_ms: now,
            ..Default::default()
        }
    }

    /// Signatures checked in a batch give what one-by-one checks give: all
    /// verified when all are good; with one bad signature (or one unknown
    /// key, or an echo) among them, exactly that one refused as alone.
    #[test]
    fn deliveries_verified_together_match_one_by_one() {
        let a = OrgId::parse("a.example").unwrap();
        let b = OrgId::parse("b.example").unwrap();
        let (key, _) = OrgSigningKey::generate().unwrap();
        let (stranger, _) = OrgSigningKey::generate().unwrap();
        let mut keys = KeyDirectory::default();
        keys.insert(KnownKey::unbounded(
            a.clone(),
            key.key_id().into(),
            key.public_key().to_vec(),
        ))
        .unwrap();
        let now = 1_700_000_000_000;
        let envelope = |signer: &OrgSigningKey, i: u32| {
            let ind = domain(&a, signer, now, Tlp::Clear, &format!("host{i}.example"));
            signer
                .seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
                .encode_to_vec()
        };
        let delivery = |seq: u64, env: Vec<u8>, path: &[&str]| Delivery {
            seq,
            envelope: env.into(),
            path: path.iter().map(|s| s.to_string()).collect(),
        };
        let good: Vec<Delivery> = (1..=40)
            .map(|i| delivery(i, envelope(&key, i as u32), &["a.example"]))
            .collect();
        let outcome = |ds: Vec<Delivery>| -> Vec<String> {
            verify_deliveries(&b, &a, ds, &keys, now)
                .into_iter()
                .map(|(d, r)| match r {
                    Ok(Some(v)) => {
                        assert_eq!(v.envelope, d.envelope.to_vec());
                        format!("{} ok", d.seq)
                    }
                    Ok(None) => format!("{} echo", d.seq),
                    Err(r) => format!("{} {}", d.seq, r.kind),
                })
                .collect()
        };
        let alone = |ds: &[Delivery]| -> Vec<String> {
            ds.iter()
                .map(|d| match verify_delivery(&b, &a, d, &keys, now) {
                    Ok(Some(_)) => format!("{} ok", d.seq),
                    Ok(None) => format!("{} echo", d.seq),
                    Err(r) => format!("{} {}", d.seq, r.kind),
                })
                .collect()
        };
        assert_eq!(outcome(good.clone()), alone(&good));
        assert!(outcome(good.clone()).iter().all(|o| o.ends_with(" ok")));

        let mut mixed = good.clone();
        let mut bad = Envelope::decode(&mixed[7].envelope[..]).unwrap();
        bad.signatures[0].sig[5] ^= 0x01;
        mixed[7].envelope = bad.encode_to_vec().into();
        // A key we do not know (same key id as ours is not possible: its own).
        mixed[20] = delivery(21, envelope(&stranger, 21), &["a.example"]);
        // An echo: we are on its path.
        mixed[30].path = vec!["a.example".into(), "b.example".into()];
        let got = outcome(mixed.clone());
        assert_eq!(got, alone(&mixed));
        assert_eq!(got.iter().filter(|o| o.ends_with(" ok")).count(), 37);
        assert!(
            got[7].starts_with("8 ") && !got[7].ends_with(" ok"),
            "{got:?}"
        );
        assert_eq!(got[30], "31 echo");

        // The smallest batch: a pair, good and with its second bad.
        let pair = good[..2].to_vec();
        assert_eq!(outcome(pair.clone()), ["1 ok", "2 ok"]);
        let mut pair_bad = pair;
        pair_bad[1].envelope = mixed[7].envelope.clone();
        let got = outcome(pair_bad.clone());
        assert_eq!(got, alone(&pair_bad));
        assert_eq!(got[0], "1 ok");
        assert!(!got[1].ends_with(" ok"), "{got:?}");
    }

    #[test]
    fn delivery_checks_map_to_codes() {
        let a = OrgId::parse("a.example").unwrap();
        let b = OrgId::parse("b.example").unwrap();
        let (key, _) = OrgSigningKey::generate().unwrap();
        let mut keys = KeyDirectory::default();
        keys.insert(KnownKey {
            key_id: key.key_id().into(),
            org: a.clone(),
            public_key: key.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        let now = 1_700_000_000_000;
        let ind = domain(&a, &key, now, Tlp::Green, "evil.example");
        let good = key
            .seal(INDICATOR_PAYLOAD_TYPE, ind.encode_to_vec())
            .encode_to_vec();
        let from = |envelope: &[u8], path: &[&str]| Delivery {
            seq: 1,
            envelope: prost::bytes::Bytes::copy_from_slice(envelope),
            path: path.iter().map(|s| s.to_string()).collect(),
        };
        let row = check_delivery(&b, &a, &from(&good, &["a.example"]), &keys, None, now)
            .unwrap()
            .unwrap();
        assert_eq!(row.envelope, good);
        assert_eq!(row.path, ["a.example"]);

        let code = |d: Delivery, upstream: &OrgId| {
            refusal_code(
                check_delivery(&b, upstream, &d, &keys, None, now)
                    .unwrap_err()
                    .kind,
            )
        };
        assert_eq!(
            code(from(b"\xff\xff", &["a.example"]), &a),
            Code::InvalidArgument
        );
        let mut env = Envelope::decode(good.as_slice()).unwrap();
        env.payload[3] ^= 0x01;
        assert_eq!(
            code(from(&env.encode_to_vec(), &["a.example"]), &a),
            Code::Unauthenticated
        );
        // Arrives from c.example but originates at a.example: relayed data
        // is not accepted without a policy saying so.
        let c = OrgId::parse("c.example").unwrap();
        assert_eq!(
            code(from(&good, &["a.example", "c.example"]), &c),
            Code::PermissionDenied
        );
        // Paths: empty, not ending at the sender, not starting at the signed
        // origin, with a loop — all refused; through us — an echo.
        assert_eq!(code(from(&good, &[]), &a), Code::InvalidArgument);
        assert_eq!(code(from(&good, &["a.example"]), &c), Code::InvalidArgument);
        assert_eq!(code(from(&good, &["c.example"]), &c), Code::InvalidArgument);
        assert_eq!(
            code(from(&good, &["a.example", "c.example", "a.example"]), &a),
            Code::InvalidArgument
        );
        assert!(
            check_delivery(
                &b,
                &c,
                &from(&good, &["a.example", "b.example", "c.example"]),
                &keys,
                None,
                now
            )
            .unwrap()
            .is_none()
        );
        // Dated an hour ahead of our clock: it waits (for the clock, under
        // its known key) until an hour less the allowed skew from now.
        let mut future = ind.clone();
        future.modified_unix_ms = now + 3_600_000;
        future.created_unix_ms = future.modified_unix_ms;
        let env = key
            .seal(INDICATOR_PAYLOAD_TYPE, future.encode_to_vec())
            .encode_to_vec();
        let r = check_delivery(&b, &a, &from(&env, &["a.example"]), &keys, None, now).unwrap_err();
        assert_eq!(
            r.waits(),
            Some(crate::refusal::Wait::Clock {
                key_id: key.key_id(),
                due_ms: now + 3_600_000 - crate::model::MAX_CLOCK_SKEW_MS
            })
        );
        // Once our clock gets there, it passes.
        let later = now + 3_600_000 - crate::model::MAX_CLOCK_SKEW_MS;
        assert!(check_delivery(&b, &a, &from(&env, &["a.example"]), &keys, None, later).is_ok());
    }
}
