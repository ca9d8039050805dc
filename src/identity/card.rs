//! Org cards: an organisation's id, CA bundle, signing keys and endpoints,
//! self-signed with its signing key and exchanged out of band. On disk a card
//! is a DSSE JSON envelope (`payloadType`, base64 `payload`, `signatures`).

use prost::Message;
use ring::signature;

use super::{IdentityError, fingerprint, parse_ca_bundle};
use crate::model::OrgId;
use crate::proto::v1::{Envelope, KeyRotation, OrgCard, SigningKey};
use crate::signing::{
    CARD_PAYLOAD_TYPE, DsseJson, KnownKey, MAX_PAYLOAD_LEN, OrgSigningKey, ROTATION_PAYLOAD_TYPE,
    key_id, pae,
};

/// What goes into a new card, besides keys.
#[derive(Debug, Clone)]
pub struct CardInfo {
    /// The org.
    pub org: OrgId,
    /// Human name shown to partners' admins.
    pub display_name: String,
    /// ISO 3166-1 alpha-2, may be empty.
    pub country: String,
    /// Sector (law-enforcement, cert, isp, vendor...), may be empty.
    pub sector: String,
    /// The org's CA bundle, PEM.
    pub ca_bundle_pem: String,
    /// `host:port` endpoints of the org's node(s).
    pub endpoints: Vec<String>,
    /// Every rotation of the org's signing key so far (signed
    /// [`KeyRotation`] envelopes, oldest first).
    pub rotations: Vec<Envelope>,
}

/// The statement that `old` hands over to `new` at `at_ms`, signed by `old`:
/// what lets a partner that missed the card of a rotation link a later
/// card (signed by `new`) to the key it trusts.
pub fn seal_rotation(
    org: &OrgId,
    old: &OrgSigningKey,
    new: &OrgSigningKey,
    at_ms: i64,
) -> Envelope {
    let r = KeyRotation {
        org_id: org.to_string(),
        old_key_id: old.key_id().to_string(),
        new_key_id: new.key_id().to_string(),
        new_public_key: new.public_key().to_vec(),
        at_unix_ms: at_ms,
    };
    old.seal(ROTATION_PAYLOAD_TYPE, r.encode_to_vec())
}

/// The key a rotation statement of `org` introduces, if it is signed by
/// one of `trusted` and well formed.
fn open_rotation(env: &Envelope, org: &OrgId, trusted: &[KnownKey]) -> Option<KnownKey> {
    if env.payload_type != ROTATION_PAYLOAD_TYPE || env.payload.len() > MAX_PAYLOAD_LEN {
        return None;
    }
    let [sig] = env.signatures.as_slice() else {
        return None;
    };
    let signer = trusted.iter().find(|k| k.key_id == sig.keyid)?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &signer.public_key)
        .verify(&pae(&env.payload_type, &env.payload), &sig.sig)
        .ok()?;
    let r = KeyRotation::decode(env.payload.as_slice()).ok()?;
    let well_formed = r.org_id == org.as_str()
        && r.old_key_id == signer.key_id
        && r.new_public_key.len() == 32
        && key_id(&r.new_public_key) == r.new_key_id;
    well_formed.then(|| KnownKey {
        key_id: r.new_key_id,
        org: org.clone(),
        public_key: r.new_public_key,
        not_before_ms: r.at_unix_ms,
        not_after_ms: 0,
        revoked: false,
    })
}

/// Builds and self-signs a card carrying only `key`. The version is the
/// issue time in milliseconds, so a newer card always has a higher version.
pub fn seal_card(info: &CardInfo, key: &OrgSigningKey, now_ms: i64) -> Envelope {
    let only = [SigningKey {
        key_id: key.key_id().to_string(),
        public_key: key.public_key().to_vec(),
        not_before_unix_ms: 0,
        not_after_unix_ms: 0,
        revoked: false,
    }];
    seal_card_with_keys(info, &only, key, now_ms as u64, now_ms)
}

/// Builds a card publishing `keys` (current and retired ones, with their
/// validity and revocation) at `version`, signed by `signer`. After a key
/// rotation the first card is signed by the **old** key, which links it to
/// the card partners already trust.
pub fn seal_card_with_keys(
    info: &CardInfo,
    keys: &[SigningKey],
    signer: &OrgSigningKey,
    version: u64,
    now_ms: i64,
) -> Envelope {
    let card = OrgCard {
        org_id: info.org.to_string(),
        display_name: info.display_name.clone(),
        country: info.country.clone(),
        sector: info.sector.clone(),
        ca_bundle_pem: info.ca_bundle_pem.clone(),
        signing_keys: keys.to_vec(),
        endpoints: info.endpoints.clone(),
        version,
        issued_unix_ms: now_ms,
        rotations: info.rotations.clone(),
    };
    signer.seal(CARD_PAYLOAD_TYPE, card.encode_to_vec())
}

/// Whether `next` may replace `current` as the trusted card of an org:
/// same org, a higher version, and signed by a key that `current` carries
/// and has not revoked — or by a key reached from one through the key
/// rotations `next` carries, each signed by the key it retires (so a card
/// after a rotation whose own card was missed still links up). This is
/// what lets a card travel through untrusted relays: only the holder of
/// the org's trusted key can make its successor.
pub fn check_card_succession(
    current: &VerifiedCard,
    next: &VerifiedCard,
    next_env: &Envelope,
) -> Result<(), IdentityError> {
    let bad = |why: String| IdentityError::Card(why);
    if next.org != current.org {
        return Err(bad(format!(
            "card of {} cannot replace the card of {}",
            next.org, current.org
        )));
    }
    if next.card.version <= current.card.version {
        return Err(bad(format!(
            "card version {} of {} is not newer than version {} held",
            next.card.version, next.org, current.card.version
        )));
    }
    let signer = next_env
        .signatures
        .first()
        .map(|s| s.keyid.as_str())
        .unwrap_or("");
    match current.keys.iter().find(|k| k.key_id == signer) {
        Some(k) if !k.revoked => return Ok(()),
        Some(_) => {
            return Err(bad(format!(
                "card version {} of {} is signed by key {signer}, which {} revoked",
                next.card.version, next.org, next.org
            )));
        }
        None => {}
    }
    // Follow the rotations from the keys the current card trusts.
    let mut trusted: Vec<KnownKey> = current
        .keys
        .iter()
        .filter(|k| !k.revoked)
        .cloned()
        .collect();
    loop {
        let learnt: Vec<KnownKey> = next
            .card
            .rotations
            .iter()
            .filter_map(|r| open_rotation(r, &next.org, &trusted))
            .filter(|k| !trusted.iter().any(|t| t.key_id == k.key_id))
            .collect();
        if learnt.is_empty() {
            break;
        }
        trusted.extend(learnt);
    }
    if trusted.iter().any(|k| k.key_id == signer) {
        return Ok(());
    }
    Err(bad(format!(
        "card version {} of {} is signed by key {signer}, which its current card (version {}) does not carry and no rotation it carries leads to",
        next.card.version, next.org, current.card.version
    )))
}

/// A card whose self-signature and fields have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedCard {
    /// The decoded card.
    pub card: OrgCard,
    /// Its org id, validated.
    pub org: OrgId,
    /// Its signing keys, ready for the key directory.
    pub keys: Vec<KnownKey>,
    /// SHA-256 fingerprints of the CA certificates, for out-of-band checks.
    pub ca_fingerprints: Vec<String>,
}

/// Checks a card envelope: type, size, that the signature is by one of the
/// card's own keys, each key id derived from its key, and the CA bundle.
///
/// A self-signed card must be decoded to find its key; the bytes are
/// size-limited first and every field is checked before anything is used.
pub fn open_card(env: &Envelope) -> Result<VerifiedCard, IdentityError> {
    let bad = |why: String| IdentityError::Card(why);
    if env.payload_type != CARD_PAYLOAD_TYPE {
        return Err(bad(format!(
            "payload type '{}' is not an org card",
            env.payload_type
        )));
    }
    if env.payload.len() > MAX_PAYLOAD_LEN {
        return Err(bad("card is larger than 64 KiB".into()));
    }
    let [sig] = env.signatures.as_slice() else {
        return Err(bad(format!(
            "card has {} signatures; exactly one is required",
            env.signatures.len()
        )));
    };
    let card = OrgCard::decode(env.payload.as_slice())
        .map_err(|e| bad(format!("card does not decode: {e}")))?;
    let org = OrgId::parse(&card.org_id).map_err(|e| bad(format!("org_id: {e}")))?;
    let mut keys = Vec::new();
    for (i, k) in card.signing_keys.iter().enumerate() {
        if k.public_key.len() != 32 || key_id(&k.public_key) != k.key_id {
            return Err(bad(format!(
                "signing_keys[{i}]: key id does not match a 32-byte Ed25519 key"
            )));
        }
        keys.push(KnownKey {
            key_id: k.key_id.clone(),
            org: org.clone(),
            public_key: k.public_key.clone(),
            not_before_ms: k.not_before_unix_ms,
            not_after_ms: k.not_after_unix_ms,
            revoked: k.revoked,
        });
    }
    let signer = keys.iter().find(|k| k.key_id == sig.keyid).ok_or_else(|| {
        bad(format!(
            "card is signed by key {} which it does not carry",
            sig.keyid
        ))
    })?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &signer.public_key)
        .verify(&pae(&env.payload_type, &env.payload), &sig.sig)
        .map_err(|_| bad(format!("self-signature of {org}'s card does not verify")))?;
    if card.display_name.trim().is_empty() || card.display_name.chars().count() > 128 {
        return Err(bad("display_name must be 1-128 characters".into()));
    }
    for (i, e) in card.endpoints.iter().enumerate() {
        check_endpoint(e).map_err(|why| bad(format!("endpoints[{i}]: {why}")))?;
    }
    let cas = parse_ca_bundle(&card.ca_bundle_pem)?;
    Ok(VerifiedCard {
        ca_fingerprints: cas.iter().map(|c| fingerprint(c)).collect(),
        card,
        org,
        keys,
    })
}

/// Checks a `host:port` endpoint.
pub fn check_endpoint(e: &str) -> Result<(), String> {
    let (host, port) = e
        .rsplit_once(':')
        .ok_or_else(|| format!("'{e}' is not host:port"))?;
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err(format!("'{e}' has no valid host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("'{e}' has no valid port (1-65535)"))?;
    Ok(())
}

/// Writes an envelope as DSSE JSON (pretty, one trailing newline).
pub fn envelope_to_json(env: &Envelope) -> String {
    let mut s = serde_json::to_string_pretty(&DsseJson::from(env)).unwrap_or_default();
    s.push('\n');
    s
}

/// Reads a DSSE JSON envelope.
pub fn envelope_from_json(text: &str) -> Result<Envelope, IdentityError> {
    let j: DsseJson = serde_json::from_str(text)
        .map_err(|e| IdentityError::Card(format!("not a DSSE JSON envelope: {e}")))?;
    j.to_envelope().map_err(IdentityError::Card)
}
