//! Signed envelopes: DSSE pre-authentication encoding, the org's Ed25519
//! signing key (ring), and verification that always happens **before** the
//! payload is decoded. Pure: no I/O; key files are read by callers.

use std::collections::HashMap;

use prost::Message;
use ring::signature::{self, Ed25519KeyPair, KeyPair};

use crate::model::OrgId;
use crate::proto::v1::{Envelope, Indicator, Signature};

mod json;

pub use json::{DsseJson, DsseJsonSignature};

/// `payload_type` of a signed [`Indicator`].
pub const INDICATOR_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.indicator.v1+protobuf";
/// `payload_type` of a signed [`crate::proto::v1::OrgCard`].
pub const CARD_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.org-card.v1+protobuf";
/// `payload_type` of a signed [`crate::proto::v1::KeyRotation`].
pub const ROTATION_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.key-rotation.v1+protobuf";
/// `payload_type` of a signed [`crate::proto::v1::LedgerHead`].
pub const LEDGER_HEAD_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.ledger-head.v1+protobuf";
/// `payload_type` of a signed [`crate::proto::v1::Sighting`].
pub const SIGHTING_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.sighting.v1+protobuf";
/// `payload_type` of a signed [`crate::proto::v1::StatisticsReport`].
pub const STATISTICS_PAYLOAD_TYPE: &str = "application/vnd.threatmesh.statistics.v1+protobuf";
/// Largest sighting payload accepted: a report has a dozen short fields.
pub const MAX_SIGHTING_PAYLOAD_LEN: usize = 2048;
/// Largest payload a receiver will even verify; bigger envelopes are refused
/// unread so a hostile peer cannot make us hash megabytes.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024;

/// Errors from key handling and signing.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The key bytes are not an Ed25519 PKCS#8 document.
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    BadKey(String),
    /// The system random generator failed.
    #[error("could not generate a key: {0}")]
    Generate(String),
}

/// Why an envelope was refused. Every variant names what was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The envelope carries a different document type than the caller expects.
    #[error("payload type '{got}' where '{expected}' was expected")]
    WrongPayloadType {
        /// What the caller expected.
        expected: &'static str,
        /// What the envelope says.
        got: String,
    },
    /// Payload over the limit of its type ([`MAX_PAYLOAD_LEN`],
    /// [`MAX_SIGHTING_PAYLOAD_LEN`]).
    #[error("payload of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
    /// Envelopes carry exactly one signature, by the origin.
    #[error("envelope has {0} signatures; exactly one (the origin's) is required")]
    SignatureCount(usize),
    /// No known org has published this key.
    #[error("signing key {0} is not known to this node (no registered org card carries it)")]
    UnknownKey(String),
    /// The signature does not match the payload: altered bytes or wrong key.
    #[error("signature by key {key_id} of {org} does not match the payload")]
    BadSignature {
        /// The key the signature claims.
        key_id: String,
        /// The org that owns that key.
        org: String,
    },
    /// The verified bytes are not a valid document of the expected type.
    #[error("verified payload does not decode: {0}")]
    Decode(String),
    /// The payload names an origin other than the owner of the signing key.
    #[error("payload claims origin {claimed} but is signed by a key of {signer}")]
    OriginMismatch {
        /// Origin written in the payload.
        claimed: String,
        /// Org that owns the signing key.
        signer: String,
    },
    /// The payload's `key_id` field disagrees with the signature's key id.
    #[error("payload names key {payload} but the signature is by key {signature}")]
    KeyIdMismatch {
        /// Key id inside the signed payload.
        payload: String,
        /// Key id on the signature.
        signature: String,
    },
    /// The key has been revoked by its org: nothing newly received under it
    /// is accepted, whatever time the document claims.
    #[error("signing key {key_id} of {org} has been revoked by {org}")]
    KeyRevoked {
        /// The key.
        key_id: String,
        /// Its org.
        org: String,
    },
    /// The document's timestamp lies outside the key's validity window.
    #[error("key {key_id} was not valid at {at_ms} (document timestamp)")]
    KeyNotValid {
        /// The key.
        key_id: String,
        /// The document timestamp checked.
        at_ms: i64,
    },
}

/// The cores signing and verifying work is split over. Read once: the
/// standard library reads the cgroup files anew on every call, three file
/// opens per verified message on a busy link.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// DSSE pre-authentication encoding:
/// `"DSSEv1" SP len(type) SP type SP len(body) SP body`.
///
/// ```
/// assert_eq!(threatmesh::signing::pae("t", b"ab"), b"DSSEv1 1 t 2 ab".to_vec());
/// ```
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload_type.len() + 32);
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(payload_type.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

/// Key id of a raw Ed25519 public key: lower-case hex of the first 16 bytes
/// of its SHA-256. Derived from the key, so an id cannot be claimed for
/// another org's key without also holding that key.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..16])
}

/// An organisation's Ed25519 signing key (separate from its TLS keys).
pub struct OrgSigningKey {
    /// The ring key pair; never leaves this struct.
    pair: Ed25519KeyPair,
    /// Cached [`key_id`] of the public half.
    key_id: String,
}

impl std::fmt::Debug for OrgSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("OrgSigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl OrgSigningKey {
    /// Generates a fresh key; returns it with its PKCS#8 v2 document for storage.
    pub fn generate() -> Result<(Self, Vec<u8>), SigningError> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|e| SigningError::Generate(e.to_string()))?;
        let key = Self::from_pkcs8(doc.as_ref())?;
        Ok((key, doc.as_ref().to_vec()))
    }

    /// Loads a key from its PKCS#8 document.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| SigningError::BadKey(e.to_string()))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Self { pair, key_id })
    }

    /// This key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// Signs `payload` as-is and wraps it in an envelope.
    pub fn seal(&self, payload_type: &str, payload: Vec<u8>) -> Envelope {
        let sig = self.pair.sign(&pae(payload_type, &payload));
        Envelope {
            payload_type: payload_type.to_string(),
            payload,
            signatures: vec![Signature {
                keyid: self.key_id.clone(),
                sig: sig.as_ref().to_vec(),
            }],
        }
    }
}

/// A public signing key this node trusts for one org, learnt from its card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownKey {
    /// [`key_id`] of `public_key`.
    pub key_id: String,
    /// The org whose card carries the key.
    pub org: OrgId,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Start of validity (Unix ms).
    pub not_before_ms: i64,
    /// End of validity (Unix ms); 0 = open.
    pub not_after_ms: i64,
    /// Revoked by its org.
    pub revoked: bool,
}

impl KnownKey {
    /// `org`'s key, valid at any time and not revoked: for checking what
    /// that key signed whenever it signed it (our own past statements,
    /// benchmarks, tests).
    pub fn unbounded(org: OrgId, key_id: String, public_key: Vec<u8>) -> Self {
        Self {
            key_id,
            org,
            public_key,
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        }
    }
}

/// The keys this node trusts, by key id. Built from stored org cards.
#[derive(Debug, Clone, Default)]
pub struct KeyDirectory {
    /// Key id → key.
    by_id: HashMap<String, KnownKey>,
}

impl KeyDirectory {
    /// Adds a key. A key id already owned by another org is refused: one key
    /// belongs to one org.
    pub fn insert(&mut self, key: KnownKey) -> Result<(), String> {
        if let Some(existing) = self.by_id.get(&key.key_id)
            && existing.org != key.org
        {
            return Err(format!(
                "key {} is already registered for {}",
                key.key_id, existing.org
            ));
        }
        self.by_id.insert(key.key_id.clone(), key);
        Ok(())
    }

    /// Looks up a key by id.
    pub fn get(&self, key_id: &str) -> Option<&KnownKey> {
        self.by_id.get(key_id)
    }

    /// Number of keys known.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Verifies an envelope's single signature against the key directory and
/// returns the verified payload bytes with the signer's key. Nothing in the
/// payload is looked at before this succeeds.
pub fn verify<'e, 'k>(
    env: &'e Envelope,
    expected_type: &'static str,
    keys: &'k KeyDirectory,
) -> Result<(&'e [u8], &'k KnownKey), VerifyError> {
    let key = signer(env, expected_type, keys)?;
    verify_signature(env, key)?;
    Ok((&env.payload, key))
}

/// The signature check of [`verify`] alone: `env`'s one signature under
/// `key`, the signer [`signer`] found for it.
pub fn verify_signature(env: &Envelope, key: &KnownKey) -> Result<(), VerifyError> {
    let sig = env
        .signatures
        .first()
        .ok_or(VerifyError::SignatureCount(0))?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &key.public_key)
        .verify(&pae(&env.payload_type, &env.payload), &sig.sig)
        .map_err(|_| VerifyError::BadSignature {
            key_id: key.key_id.clone(),
            org: key.org.to_string(),
        })
}

/// Everything [`verify`] checks before the signature itself: the payload
/// type and size, exactly one signature, by a known key not revoked.
/// Returns that key.
pub fn signer<'k>(
    env: &Envelope,
    expected_type: &'static str,
    keys: &'k KeyDirectory,
) -> Result<&'k KnownKey, VerifyError> {
    if env.payload_type != expected_type {
        return Err(VerifyError::WrongPayloadType {
            expected: expected_type,
            got: env.payload_type.chars().take(100).collect(),
        });
    }
    if env.payload.len() > MAX_PAYLOAD_LEN {
        return Err(VerifyError::TooLarge(env.payload.len(), MAX_PAYLOAD_LEN));
    }
    let [sig] = env.signatures.as_slice() else {
        return Err(VerifyError::SignatureCount(env.signatures.len()));
    };
    let key = keys
        .get(&sig.keyid)
        .ok_or_else(|| VerifyError::UnknownKey(sig.keyid.chars().take(64).collect()))?;
    if key.revoked {
        return Err(VerifyError::KeyRevoked {
            key_id: key.key_id.clone(),
            org: key.org.to_string(),
        });
    }
    Ok(key)
}

/// Whether every envelope's signature verifies under its key (from
/// [`signer`]), checked together: Ed25519 batch verification
/// (ed25519-dalek), about twice as fast per signature as one by one on a
/// batch of dozens. `false` says only that at least one does not; the
/// caller verifies them one by one ([`verify_signature`]) to find which, so
/// every refusal names its envelope.
///
/// Batch and single verification agree on every signature made by an
/// honest signer; a signer that crafts its own signature with a small-order
/// component can make one that passes in a batch and fails alone (or the
/// reverse). That is a choice of the key's holder about its own envelopes,
/// never a forgery: without the private key nothing passes either check.
pub fn verify_together(items: &[(&Envelope, &KnownKey)]) -> bool {
    let mut messages = Vec::with_capacity(items.len());
    let mut signatures = Vec::with_capacity(items.len());
    let mut keys = Vec::with_capacity(items.len());
    // Each distinct key is decompressed once (a point decompression costs
    // about a tenth of a verification; a batch usually carries one key).
    let mut parsed: HashMap<&[u8], ed25519_dalek::VerifyingKey> = HashMap::new();
    for (env, key) in items {
        let Some(sig) = env.signatures.first() else {
            return false;
        };
        let raw = key.public_key.as_slice();
        let k = match parsed.get(raw) {
            Some(k) => Ok(*k),
            None => <&[u8; 32]>::try_from(raw)
                .map_err(|_| ())
                .and_then(|b| ed25519_dalek::VerifyingKey::from_bytes(b).map_err(|_| ()))
                .inspect(|k| {
                    parsed.insert(raw, *k);
                }),
        };
        let (Ok(s), Ok(k)) = (ed25519_dalek::Signature::from_slice(&sig.sig), k) else {
            return false;
        };
        messages.push(pae(&env.payload_type, &env.payload));
        signatures.push(s);
        keys.push(k);
    }
    let messages: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok()
}

/// Verifies a sighting report, then decodes exactly the verified bytes and
/// checks they agree with the signature: the sighter is the key's owner,
/// the key id is the signing key, and the key was valid when the report
/// was made. A payload over [`MAX_SIGHTING_PAYLOAD_LEN`] is refused before
/// any signature work.
pub fn open_sighting(
    env: &Envelope,
    keys: &KeyDirectory,
) -> Result<crate::proto::v1::Sighting, VerifyError> {
    if env.payload_type == SIGHTING_PAYLOAD_TYPE && env.payload.len() > MAX_SIGHTING_PAYLOAD_LEN {
        return Err(VerifyError::TooLarge(
            env.payload.len(),
            MAX_SIGHTING_PAYLOAD_LEN,
        ));
    }
    let (payload, key) = verify(env, SIGHTING_PAYLOAD_TYPE, keys)?;
    let s = crate::proto::v1::Sighting::decode(payload)
        .map_err(|e| VerifyError::Decode(e.to_string()))?;
    if s.sighter_org != key.org.as_str() {
        return Err(VerifyError::OriginMismatch {
            claimed: s.sighter_org.chars().take(253).collect(),
            signer: key.org.to_string(),
        });
    }
    if s.key_id != key.key_id {
        return Err(VerifyError::KeyIdMismatch {
            payload: s.key_id.chars().take(64).collect(),
            signature: key.key_id.clone(),
        });
    }
    let at = s.reported_unix_ms;
    if at < key.not_before_ms || (key.not_after_ms != 0 && at >= key.not_after_ms) {
        return Err(VerifyError::KeyNotValid {
            key_id: key.key_id.clone(),
            at_ms: at,
        });
    }
    Ok(s)
}

/// Verifies a statistics report, then decodes exactly the verified bytes
/// and checks they agree with the signature: the reporter is the key's
/// owner, the key id is the signing key, valid when the report was made.
pub fn open_statistics(
    env: &Envelope,
    keys: &KeyDirectory,
) -> Result<crate::proto::v1::StatisticsReport, VerifyError> {
    let (payload, key) = verify(env, STATISTICS_PAYLOAD_TYPE, keys)?;
    let r = crate::proto::v1::StatisticsReport::decode(payload)
        .map_err(|e| VerifyError::Decode(e.to_string()))?;
    if r.reporter_org != key.org.as_str() {
        return Err(VerifyError::OriginMismatch {
            claimed: r.reporter_org.chars().take(253).collect(),
            signer: key.org.to_string(),
        });
    }
    if r.key_id != key.key_id {
        return Err(VerifyError::KeyIdMismatch {
            payload: r.key_id.chars().take(64).collect(),
            signature: key.key_id.clone(),
        });
    }
    let at = r.made_unix_ms;
    if at < key.not_before_ms || (key.not_after_ms != 0 && at >= key.not_after_ms) {
        return Err(VerifyError::KeyNotValid {
            key_id: key.key_id.clone(),
            at_ms: at,
        });
    }
    Ok(r)
}

/// Decodes the indicator inside a stored envelope. Stored bytes were
/// verified (or signed) before they were written, so this only decodes.
pub fn decode_stored(envelope: &[u8]) -> Result<Indicator, String> {
    let env = Envelope::decode(envelope).map_err(|e| format!("envelope: {e}"))?;
    if env.payload_type != INDICATOR_PAYLOAD_TYPE {
        return Err(format!("unexpected payload type {}", env.payload_type));
    }
    Indicator::decode(env.payload.as_slice()).map_err(|e| format!("payload: {e}"))
}

/// Verifies, then decodes exactly the verified bytes as an [`Indicator`], and
/// checks the payload agrees with the signature: origin = key owner, key id
/// = signing key, timestamp inside the key's validity.
pub fn open_indicator(env: &Envelope, keys: &KeyDirectory) -> Result<Indicator, VerifyError> {
    let (_, key) = verify(env, INDICATOR_PAYLOAD_TYPE, keys)?;
    open_verified(env, key)
}

/// The part of [`open_indicator`] after the signature: decodes exactly the
/// signed bytes of `env`, whose signature by `key` was verified (alone or
/// in a batch), and checks the payload agrees with the signature.
pub fn open_verified(env: &Envelope, key: &KnownKey) -> Result<Indicator, VerifyError> {
    let ind = Indicator::decode(env.payload.as_slice())
        .map_err(|e| VerifyError::Decode(e.to_string()))?;
    if ind.origin_org != key.org.as_str() {
        return Err(VerifyError::OriginMismatch {
            claimed: ind.origin_org.chars().take(253).collect(),
            signer: key.org.to_string(),
        });
    }
    if ind.key_id != key.key_id {
        return Err(VerifyError::KeyIdMismatch {
            payload: ind.key_id.chars().take(64).collect(),
            signature: key.key_id.clone(),
        });
    }
    let at = ind.modified_unix_ms;
    if at < key.not_before_ms || (key.not_after_ms != 0 && at >= key.not_after_ms) {
        return Err(VerifyError::KeyNotValid {
            key_id: key.key_id.clone(),
            at_ms: at,
        });
    }
    Ok(ind)
}

/// Version 1 of one indicator of `origin`, signed with `key`'s id, for
/// unit tests.
#[cfg(test)]
pub(crate) fn test_indicator(origin: &str, key: &OrgSigningKey) -> Indicator {
    Indicator {
        origin_org: origin.into(),
        key_id: key.key_id().into(),
        id: "0b0e7c32-8a43-4c57-9a4e-3f5a2c6f1d10".into(),
        version: 1,
        created_unix_ms: 1000,
        modified_unix_ms: 1000,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(key: &OrgSigningKey, org: &str) -> KeyDirectory {
        let mut d = KeyDirectory::default();
        d.insert(KnownKey {
            key_id: key.key_id().into(),
            org: OrgId::parse(org).unwrap(),
            public_key: key.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        d
    }

    use super::test_indicator as indicator;

    /// DSSE's own schema (secure-systems-lab/dsse `envelope.proto`,
    /// package io.intoto), declared here independently of ours.
    #[derive(Clone, PartialEq, prost::Message)]
    struct DsseEnvelope {
        #[prost(bytes = "vec", tag = "1")]
        payload: Vec<u8>,
        #[prost(string, tag = "2")]
        payload_type: String,
        #[prost(message, repeated, tag = "3")]
        signatures: Vec<DsseSignature>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct DsseSignature {
        #[prost(bytes = "vec", tag = "1")]
        sig: Vec<u8>,
        #[prost(string, tag = "2")]
        keyid: String,
    }

    /// Our envelopes on the wire are DSSE envelopes: a DSSE parser reads
    /// every field, and an envelope it writes is one we verify.
    #[test]
    fn envelopes_are_dsse_envelopes_on_the_wire() {
        use prost::Message;
        let (key, _) = OrgSigningKey::generate().unwrap();
        let env = key.seal("application/x-test", b"hello".to_vec());
        let theirs = DsseEnvelope::decode(env.encode_to_vec().as_slice()).unwrap();
        assert_eq!(theirs.payload, b"hello");
        assert_eq!(theirs.payload_type, "application/x-test");
        assert_eq!(theirs.signatures.len(), 1);
        assert_eq!(theirs.signatures[0].keyid, key.key_id());
        assert_eq!(theirs.signatures[0].sig, env.signatures[0].sig);
        let back = Envelope::decode(theirs.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, env);
        let keys = directory(&key, "a.example");
        assert!(verify(&back, "application/x-test", &keys).is_ok());
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol specification.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let (key, pkcs8) = OrgSigningKey::generate().unwrap();
        let reloaded = OrgSigningKey::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(reloaded.key_id(), key.key_id());
        let dir = directory(&key, "a.example");
        let env = key.seal(
            INDICATOR_PAYLOAD_TYPE,
            indicator("a.example", &key).encode_to_vec(),
        );
        assert_eq!(open_indicator(&env, &dir).unwrap().origin_org, "a.example");

        for i in 0..env.payload.len() {
            let mut bad = env.clone();
            bad.payload[i] ^= 1;
            assert!(
                matches!(
                    open_indicator(&bad, &dir),
                    Err(VerifyError::BadSignature { .. })
                ),
                "flip at byte {i}"
            );
        }
        let mut bad = env.clone();
        bad.payload_type = CARD_PAYLOAD_TYPE.into();
        assert!(matches!(
            open_indicator(&bad, &dir),
            Err(VerifyError::WrongPayloadType { .. })
        ));
        let mut bad = env.clone();
        bad.signatures.push(bad.signatures[0].clone());
        assert_eq!(
            open_indicator(&bad, &dir),
            Err(VerifyError::SignatureCount(2))
        );
    }

    /// A batch signed under two keys, each decompressed once for the
    /// batch, verifies; the same batch with one envelope's key swapped for
    /// the other (or one signature broken) does not.
    #[test]
    fn a_batch_under_several_keys_verifies_together_and_a_mismatched_key_fails_it() {
        let (a, _) = OrgSigningKey::generate().unwrap();
        let (b, _) = OrgSigningKey::generate().unwrap();
        let known = |k: &OrgSigningKey, org: &str| {
            KnownKey::unbounded(
                OrgId::parse(org).unwrap(),
                k.key_id().into(),
                k.public_key().to_vec(),
            )
        };
        let (ka, kb) = (known(&a, "a.example"), known(&b, "b.example"));
        let sealed: Vec<(Envelope, &KnownKey)> = (0..8)
            .map(|n| {
                let (k, kk, org) = if n % 3 == 0 {
                    (&b, &kb, "b.example")
                } else {
                    (&a, &ka, "a.example")
                };
                let env = k.seal(INDICATOR_PAYLOAD_TYPE, indicator(org, k).encode_to_vec());
                (env, kk)
            })
            .collect();
        let items: Vec<(&Envelope, &KnownKey)> = sealed.iter().map(|(e, k)| (e, *k)).collect();
        assert!(verify_together(&items));

        let mut swapped = items.clone();
        swapped[4].1 = &kb;
        assert!(!verify_together(&swapped), "an envelope of a under b's key");
        let mut broken = sealed[5].0.clone();
        broken.signatures[0].sig[0] ^= 1;
        let mut bad = items.clone();
        bad[5].0 = &broken;
        assert!(!verify_together(&bad), "a broken signature");
    }

    #[test]
    fn origin_must_own_the_signing_key() {
        let (a, _) = OrgSigningKey::generate().unwrap();
        let (c, _) = OrgSigningKey::generate().unwrap();
        let mut dir = directory(&a, "a.example");
        dir.insert(KnownKey {
            key_id: c.key_id().into(),
            org: OrgId::parse("c.example").unwrap(),
            public_key: c.public_key().to_vec(),
            not_before_ms: 0,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        // C signs something claiming to come from A.
        let mut forged = indicator("a.example", &c);
        forged.key_id = c.key_id().into();
        let env = c.seal(INDICATOR_PAYLOAD_TYPE, forged.encode_to_vec());
        assert!(matches!(
            open_indicator(&env, &dir),
            Err(VerifyError::OriginMismatch { .. })
        ));
        // An unknown key is refused without looking at the payload.
        let (x, _) = OrgSigningKey::generate().unwrap();
        let env = x.seal(INDICATOR_PAYLOAD_TYPE, b"not even protobuf".to_vec());
        assert!(matches!(
            open_indicator(&env, &dir),
            Err(VerifyError::UnknownKey(_))
        ));
        // One key id cannot be registered for two orgs.
        assert!(
            dir.insert(KnownKey {
                key_id: a.key_id().into(),
                org: OrgId::parse("c.example").unwrap(),
                public_key: a.public_key().to_vec(),
                not_before_ms: 0,
                not_after_ms: 0,
                revoked: false,
            })
            .is_err()
        );
    }

    #[test]
    fn key_validity_window_is_enforced() {
        let (a, _) = OrgSigningKey::generate().unwrap();
        let mut dir = KeyDirectory::default();
        dir.insert(KnownKey {
            key_id: a.key_id().into(),
            org: OrgId::parse("a.example").unwrap(),
            public_key: a.public_key().to_vec(),
            not_before_ms: 2000,
            not_after_ms: 0,
            revoked: false,
        })
        .unwrap();
        let env = a.seal(
            INDICATOR_PAYLOAD_TYPE,
            indicator("a.example", &a).encode_to_vec(),
        );
        assert!(matches!(
            open_indicator(&env, &dir),
            Err(VerifyError::KeyNotValid { .. })
        ));
    }
}
