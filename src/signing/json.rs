//! DSSE's JSON envelope (`payloadType`, base64 `payload`, `signatures` of
//! `keyid` and base64 `sig`): how envelopes leave a node in files and
//! exports, readable by any DSSE implementation. Pure.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::proto::v1::{Envelope, Signature};

/// An envelope in DSSE's JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseJson {
    /// The payload type.
    #[serde(rename = "payloadType")]
    pub payload_type: String,
    /// The signed bytes, base64.
    pub payload: String,
    /// The signatures.
    pub signatures: Vec<DsseJsonSignature>,
}

/// One signature of a [`DsseJson`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsseJsonSignature {
    /// The signing key's id ("" when unset).
    #[serde(default)]
    pub keyid: String,
    /// The signature, base64.
    pub sig: String,
}

impl From<&Envelope> for DsseJson {
    fn from(env: &Envelope) -> Self {
        Self {
            payload_type: env.payload_type.clone(),
            payload: B64.encode(&env.payload),
            signatures: env
                .signatures
                .iter()
                .map(|s| DsseJsonSignature {
                    keyid: s.keyid.clone(),
                    sig: B64.encode(&s.sig),
                })
                .collect(),
        }
    }
}

impl DsseJson {
    /// The envelope, or which field is not base64.
    pub fn to_envelope(&self) -> Result<Envelope, String> {
        let payload = B64
            .decode(self.payload.as_bytes())
            .map_err(|e| format!("payload is not base64: {e}"))?;
        let mut signatures = Vec::with_capacity(self.signatures.len());
        for (i, s) in self.signatures.iter().enumerate() {
            let sig = B64
                .decode(s.sig.as_bytes())
                .map_err(|e| format!("signatures[{i}].sig is not base64: {e}"))?;
            signatures.push(Signature {
                keyid: s.keyid.clone(),
                sig,
            });
        }
        Ok(Envelope {
            payload_type: self.payload_type.clone(),
            payload,
            signatures,
        })
    }
}
